//! `run --sim --fault`: the weather pipeline end to end (build, deploy,
//! check, promotion dev -> prod) while both sims' integrated registries
//! (`/v2/`) and API servers inject one kind of fault — 500, 503, 429 with
//! `Retry-After`, dropped connections, lost answers, blob bodies cut
//! halfway. Each run must succeed with one Build, one promotion ledger
//! entry, one tag in prod pointing at the digest built in dev, and the
//! manifest and every blob in prod byte-for-byte what their digests say.
//!
//! Each test prints a `faults:` line with what the sims injected (their
//! `faults.json`, written when `run --sim` stops them).

mod support;

use std::path::Path;

use modelship::state::StateStore;
use modelship::state::configmap::ConfigMapStore;
use openshift_sim::registry::RegistryStore;
use openshift_sim::{self as sim, SimConfig};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::cli::{modelship, weather_fixture};
use tokio::io::AsyncReadExt;

fn injected(sim: &Path, env: &str) -> Value {
    let path = sim.join(env).join("faults.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn total(report: &Value, registry: bool) -> u64 {
    report["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["rule"].as_str().unwrap().contains("=registry") == registry)
        .map(|r| r["injected"].as_u64().unwrap())
        .sum()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn blob_digest(store: &RegistryStore, repo: &str, digest: &str) -> (String, u64) {
    let mut f = store.open_blob(repo, digest).await.unwrap_or_else(|e| panic!("{repo}@{digest}: {e}"));
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).await.unwrap();
    (sha256(&bytes), bytes.len() as u64)
}

/// Run the weather pipeline under `rules`; check what it left.
async fn survives(kind: &str, rules: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = weather_fixture(dir.path(), |y| y);
    let sim = dir.path().join("sim");
    let mut cmd = modelship();
    cmd.args(["--log-format", "text", "run"]).arg(&pipeline).arg("--sim").arg(&sim);
    for r in rules {
        cmd.args(["--fault", r]);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{kind} {rules:?}: run failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let promoted = stdout.lines().find(|l| l.starts_with("promoted ")).unwrap_or_else(|| panic!("{stdout}"));
    let digest = promoted.split_whitespace().nth(1).unwrap().to_string();

    let (dev, prod) = (injected(&sim, "dev"), injected(&sim, "prod"));
    let registry = total(&dev, true) + total(&prod, true);
    let api = total(&dev, false) + total(&prod, false);
    println!(
        "faults: {kind} {rules:?}: registry {registry} injected (dev {}, prod {}), API {api} injected; survived, 1 build, 1 ledger entry, 1 tag, digest {digest} byte-exact",
        dev["injected"], prod["injected"]
    );
    assert!(registry > 0, "{kind}: no registry fault fired: {dev} {prod}");
    assert!(api > 0, "{kind}: no API fault fired: {dev} {prod}");

    // The sims again, on the data the run left (no faults now).
    let dev_sim = sim::start(SimConfig::new(sim.join("dev"), "dev")).await.unwrap();
    let prod_sim = sim::start(SimConfig::new(sim.join("prod"), "prod")).await.unwrap();
    let builds = dev_sim.api().store.list(&sim::build::BUILDS, Some("models-dev")).0;
    assert_eq!(builds.len(), 1, "{kind}: one Build, never two");

    // Each environment's ledger: dev's check once, prod's promotion once.
    for (server, ns, action) in [(&dev_sim, "models-dev", "verified"), (&prod_sim, "models-prod", "promoted")] {
        let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let store = ConfigMapStore::new(kube::Client::try_from(config).unwrap(), ns, &server.name);
        let ledger = store.get_ledger("weather").await.unwrap();
        let entries: Vec<_> = ledger.history.iter().filter(|e| e.action == action).collect();
        let actions: Vec<&str> = ledger.history.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(entries.len(), 1, "{kind}: one `{action}` entry in {ns}'s ledger: {actions:?}");
        assert_eq!(entries[0].digest, digest);
    }

    // The built image, in dev's registry; the promoted one in prod's.
    let dev_store = RegistryStore::new(sim.join("dev/registry"));
    let prod_store = RegistryStore::new(sim.join("prod/registry"));
    let (dev_digest, _, dev_bytes) = dev_store.get_manifest("models-dev/weather", &digest).await.expect("built image");
    let (prod_digest, _, prod_bytes) =
        prod_store.get_manifest("models-prod/weather", &digest).await.expect("promoted image");
    assert_eq!((dev_digest.as_str(), prod_digest.as_str()), (digest.as_str(), digest.as_str()));
    assert_eq!(prod_bytes, dev_bytes, "{kind}: the manifest is byte-exact");
    assert_eq!(sha256(&prod_bytes), digest);
    let manifest: Value = serde_json::from_slice(&prod_bytes).unwrap();
    let mut blobs = vec![manifest["config"].clone()];
    blobs.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    for b in &blobs {
        let d = b["digest"].as_str().unwrap();
        let (actual, size) = blob_digest(&prod_store, "models-prod/weather", d).await;
        assert_eq!((actual.as_str(), size), (d, b["size"].as_u64().unwrap()), "{kind}: blob in prod");
    }
    // No tag twice, none pointing anywhere else.
    let tags = prod_store.tags("models-prod/weather").await.unwrap_or_default();
    assert!(!tags.is_empty(), "{kind}: nothing tagged in prod");
    for t in &tags {
        let (d, _, _) = prod_store.get_manifest("models-prod/weather", t).await.unwrap();
        assert_eq!(d, digest, "{kind}: tag {t}");
    }
    let streams = prod_sim.api().store.list(&sim::image::IMAGESTREAMS, Some("models-prod")).0;
    for s in &streams {
        for tag in s.pointer("/status/tags").and_then(Value::as_array).into_iter().flatten() {
            let items = tag["items"].as_array().map(Vec::len).unwrap_or(0);
            assert_eq!(
                items, 1,
                "{kind}: tag {} of {} points at one image, once: {tag}",
                tag["tag"], s["metadata"]["name"]
            );
        }
    }
    dev_sim.shutdown().await;
    prod_sim.shutdown().await;
}

/// (Every third registry request: with every second one, each blob attempt
/// — an upload POST that is retried, then one streamed PUT that cannot be —
/// falls into step with the rule and every PUT meets the 503.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_503s() {
    survives("503", &["503/3=registry", "503/4"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_500s() {
    survives("500", &["500/3=registry", "500/5"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_429s_with_retry_after() {
    survives("429", &["429+1/3=registry", "429+1/6"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_dropped_connections() {
    survives("drop", &["drop/3=registry", "drop/6"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_lost_answers() {
    survives("lose", &["lose/3=registry", "lose/7"]).await;
}

/// Every blob GET cut halfway (three times): the copy restarts the blob,
/// and what lands in prod is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_survives_blobs_cut_mid_body() {
    survives("cut-body", &["cut-body*3=registry/blobs:get", "503/5"]).await;
}
