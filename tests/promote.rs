//! Promotion between two in-process sims (dev, prod), each with its own
//! registry under `/v2/`: the image is pushed into dev's registry, the ledger
//! and lock live in ConfigMaps/Leases of each cluster, and results are read
//! back with `skopeo inspect --raw` and `kubectl` (both installed by
//! `scripts/setup.d/10-kubectl.sh` and `30-registry.sh`; run `scripts/test.sh`).

mod support;

use std::process::Command;
use std::time::Duration;

use modelship::cluster::Clusters;
use modelship::promotion::{self, PromoteRequest, PromotionError, RollbackRequest};
use modelship::registry::{AuthStore, RegistryError};
use modelship::spec::Pipeline;
use modelship::state::configmap::{ConfigMapStore, ledger_configmap_name};
use modelship::state::{StateError, StateStore};
use modelship::{ExitClass, HasExitClass};
use openshift_sim::SimServer;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::env::{DevProd, DevProd as Env, MODEL, promote_request, push_image};

fn test_pipeline() -> Pipeline {
    modelship::spec::yaml::from_str(&format!(
        r#"
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{ name: weather }}
spec:
  model: {{ name: {MODEL}, source: "file://model" }}
  environments:
    dev: {{ context: dev, namespace: models-dev }}
    prod: {{ context: prod, namespace: models-prod }}
  stages:
    - name: check
      uses: prediction-check
      with:
        endpoint: "http://127.0.0.1:1"
        cases:
          - request: {{ data: {{ names: [temperature], ndarray: ["55"] }} }}
            expect: {{ meta.tags.weather_state: mild }}
    - {{ name: promote, uses: promote, with: {{ from: dev, to: prod }} }}
"#
    ))
    .unwrap()
}

// `Env`: the two sims (`support::env::DevProd`) with this file's helpers.
impl Env {
    async fn start() -> Env {
        Env::start_with(test_pipeline()).await
    }

    async fn start_with(pipeline: Pipeline) -> Env {
        DevProd::new(&pipeline).await
    }

    /// Push a small two-layer OCI image into dev's registry; returns its digest.
    async fn push(&self, seed: &str) -> String {
        let layers: Vec<Vec<u8>> = (0..2).map(|i| format!("layer {i} of {seed}").repeat(1000).into_bytes()).collect();
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
        push_image(self.dev(), &format!("models-dev/{MODEL}"), "latest", &layers, &config).await
    }

    fn store(&self, env: &str) -> ConfigMapStore {
        let rt = tokio::runtime::Handle::current();
        let client = tokio::task::block_in_place(|| rt.block_on(self.clusters.client(env))).unwrap();
        ConfigMapStore::new(client, format!("models-{env}"), env)
    }

    /// Record `digest` as checked in dev by run `run`.
    async fn verify(&self, digest: &str, run: &str, passed: bool) {
        self.verify_at(&self.dev().registry_host(), digest, run, passed).await
    }

    /// As [`Env::verify`], with the image recorded at registry `host`.
    async fn verify_at(&self, host: &str, digest: &str, run: &str, passed: bool) {
        let image = format!("{host}/models-dev/{MODEL}@{digest}");
        promotion::record_check(
            &self.store("dev"),
            MODEL,
            "dev",
            digest,
            &image,
            run,
            "ci",
            Some(json!({ "passed": passed, "cases": [] })),
            passed,
        )
        .await
        .unwrap();
    }

    /// The sim's image.openshift.io group is tested in
    /// `promotion_moves_the_imagestream_tag`, so without the ImageStream.
    fn request(&self, run: &str) -> PromoteRequest {
        promote_request(run)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        support::kubectl::at(&self.kubeconfig).ok(args)
    }
}

/// `skopeo inspect --raw` of `REPO@REF` in `sim`'s registry, as a
/// ServiceAccount that may pull (TLS verified with the sim's CA).
fn skopeo_raw(sim: &SimServer, image: &str) -> Vec<u8> {
    let login = support::sim::SkopeoLogin::in_process(sim, "system:image-puller");
    let image = format!("{}/{image}", sim.registry_host());
    let out = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .args(login.args(""))
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo missing: run scripts/test.sh (scripts/setup.d/30-registry.sh installs it)");
    assert!(out.status.success(), "skopeo inspect {image}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn ledger_yaml(env: &Env, ns: &str) -> String {
    env.kubectl(&["--context", "prod", "get", "configmap", &ledger_configmap_name(MODEL), "-n", ns, "-o", "yaml"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotes_the_verified_digest_byte_exact_and_records_it_once() {
    let env = Env::start().await;
    let digest = env.push("v1").await;
    env.verify(&digest, "run-1", true).await;

    let out = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap();
    assert_eq!(out.digest, digest);
    assert!(out.recorded);
    assert!(out.previous.is_none());
    let src = skopeo_raw(env.dev(), &format!("models-dev/{MODEL}@{digest}"));
    let dst = skopeo_raw(env.prod(), &format!("models-prod/{MODEL}:latest"));
    assert_eq!(src, dst, "prod must hold the very manifest bytes dev verified");

    let yaml = ledger_yaml(&env, "models-prod");
    assert!(yaml.contains(&digest), "{yaml}");
    assert!(yaml.contains("action: promoted"), "{yaml}");
    assert!(yaml.contains("by: alice"), "{yaml}");

    // Same run again (a retry): copied again (a no-op), no second entry.
    let again = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap();
    assert!(!again.recorded);
    assert_eq!(again.copy.unwrap().blobs_uploaded, 0);
    let ledger = env.store("prod").get_ledger(MODEL).await.unwrap();
    assert_eq!(ledger.history.iter().filter(|e| e.action == "promoted").count(), 1);
    // The lock was released on success.
    env.store("prod").try_lock(MODEL, "someone", Duration::from_secs(5)).await.unwrap();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_failed_and_unknown_digests_unless_forced() {
    let env = Env::start().await;
    let digest = env.push("bad").await;
    env.verify(&digest, "run-1", false).await;

    let err = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap_err();
    assert!(matches!(err, PromotionError::Refused(_)), "{err}");
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    assert!(err.to_string().contains("did not pass its checks"), "{err}");

    let unknown = format!("sha256:{}", "0".repeat(64));
    let mut req = env.request("run-3");
    req.digest = Some(unknown.clone());
    let err = promotion::promote(&env.clusters, &req, false).await.unwrap_err();
    assert!(err.to_string().contains("not recorded as verified"), "{err}");

    // Forced past the ledger, a digest the source registry lacks fails clearly.
    req.force = true;
    let err = promotion::promote(&env.clusters, &req, false).await.unwrap_err();
    assert!(matches!(&err, PromotionError::Copy { source: RegistryError::ManifestNotFound { .. }, .. }), "{err}");
    assert_eq!(err.exit_class(), ExitClass::BadInput);

    // Forced promotion of the failed digest is recorded as forced.
    let mut req = env.request("run-4");
    req.force = true;
    let out = promotion::promote(&env.clusters, &req, false).await.unwrap();
    assert!(out.forced);
    let yaml = ledger_yaml(&env, "models-prod");
    assert!(yaml.contains("forced: true"), "{yaml}");

    // Unknown environment: bad input, before anything connects.
    let mut req = env.request("run-5");
    req.to = "staging".into();
    let err = promotion::promote(&env.clusters, &req, false).await.unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput, "{err}");
    assert!(err.to_string().contains("`staging`"), "{err}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_fails_fast_naming_the_holder_or_is_waited_for() {
    let env = Env::start().await;
    let digest = env.push("v1").await;
    env.verify(&digest, "run-1", true).await;
    let prod = env.store("prod");
    prod.try_lock(MODEL, "bob (run other)", Duration::from_secs(60)).await.unwrap();

    let err = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap_err();
    match &err {
        PromotionError::Ledger { source: StateError::Locked { holder, .. }, .. } => {
            assert_eq!(holder, "bob (run other)")
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains("bob (run other)"), "{err}");

    // With a wait, the promotion proceeds once the holder lets go.
    let mut req = env.request("run-3");
    req.lock_wait = Duration::from_secs(20);
    let waiting = tokio::spawn({
        let clusters = Clusters::new(env.clusters.environments().clone(), Some(env.kubeconfig.clone()));
        async move { promotion::promote(&clusters, &req, false).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    prod.release_lock(MODEL, "bob (run other)").await.unwrap();
    let out = waiting.await.unwrap().unwrap();
    assert!(out.recorded);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ledger_writers_lose_no_entry() {
    let env = Env::start().await;
    let digest = env.push("v1").await;
    // Ten runners record checks on the same ledger at once: each write
    // races the others (409 -> re-read), and every entry survives.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let store = env.store("dev");
        let digest = digest.clone();
        tasks.push(tokio::spawn(async move {
            promotion::record_check(&store, MODEL, "dev", &digest, "r/x@d", &format!("run-{i}"), "ci", None, true).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let ledger = env.store("dev").get_ledger(MODEL).await.unwrap();
    assert_eq!(ledger.history.len(), 10);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_returns_to_the_previous_digest_and_history_is_newest_first() {
    let env = Env::start().await;
    let v1 = env.push("v1").await;
    env.verify(&v1, "run-1", true).await;
    promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap();
    let v2 = env.push("v2").await;
    env.verify(&v2, "run-3", true).await;
    let out = promotion::promote(&env.clusters, &env.request("run-4"), false).await.unwrap();
    assert_eq!(out.previous.as_ref().map(|p| p.digest.as_str()), Some(v1.as_str()));

    let req = RollbackRequest {
        model: MODEL.into(),
        env: "prod".into(),
        to_digest: None,
        tag: "latest".into(),
        run_id: "rollback-1".into(),
        by: "carol".into(),
        reason: Some("bad predictions".into()),
        lock_wait: Duration::ZERO,
        lock_ttl: promotion::LOCK_TTL,
        image_stream: false,
        state_dir: None,
        auth: AuthStore::anonymous(),
    };
    let back = promotion::rollback(&env.clusters, &req).await.unwrap();
    assert_eq!(back.digest, v1);
    let tagged = skopeo_raw(env.prod(), &format!("models-prod/{MODEL}:latest"));
    assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&tagged))), v1);

    let prod_ledger = env.store("prod").get_ledger(MODEL).await.unwrap();
    assert_eq!(prod_ledger.current["prod"].action, "rolled-back");
    assert_eq!(prod_ledger.current["prod"].digest, v1);

    let entries = promotion::history(&env.clusters, MODEL, &["dev".into(), "prod".into()], None).await.unwrap();
    let actions: Vec<(&str, &str)> = entries.iter().map(|e| (e.environment.as_str(), e.action.as_str())).collect();
    assert_eq!(
        actions,
        [("prod", "rolled-back"), ("prod", "promoted"), ("dev", "verified"), ("prod", "promoted"), ("dev", "verified"),]
    );
    // A digest never in prod is refused.
    let mut bad = req.clone();
    bad.to_digest = Some(format!("sha256:{}", "1".repeat(64)));
    bad.run_id = "rollback-2".into();
    let err = promotion::rollback(&env.clusters, &bad).await.unwrap_err();
    assert!(err.to_string().contains("never promoted"), "{err}");
    env.stop().await;
}

/// Read `kind name -n ns -o json` from prod until `ready` holds (the import
/// controller records an image shortly after the tag is written).
fn prod_json_until(env: &Env, args: &[&str], ready: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        let mut all = vec!["--context", "prod", "get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-n", "models-prod", "-o", "json"]);
        let out = support::kubectl::at(&env.kubeconfig).output(&all);
        if out.status.success() {
            last = serde_json::from_slice(&out.stdout).unwrap();
            if ready(&last) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("kubectl get {args:?} never became ready: {last:#}");
}

/// Promotion tags the way `oc tag` does, through the ImageStreamTag API:
/// the tag lands in the ImageStream's `spec.tags` as a DockerImage
/// reference by digest, the import controller records the image, and the
/// ImageStreamTag `weather:prod` then names that digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_moves_the_imagestream_tag() {
    let env = Env::start().await;
    let digest = env.push("v1").await;
    env.verify(&digest, "run-1", true).await;
    let mut req = env.request("run-2");
    req.image_stream = true;
    req.tag = "prod".into();
    let out = promotion::promote(&env.clusters, &req, false).await.unwrap();
    assert!(out.image.ends_with(&format!("/models-prod/{MODEL}@{digest}")));
    let is = env.kubectl(&["--context", "prod", "get", "imagestream", MODEL, "-n", "models-prod", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&is).unwrap();
    let tags = v["spec"]["tags"].as_array().expect("spec.tags");
    let tag = tags.iter().find(|t| t["name"] == "prod").expect("tag prod");
    assert_eq!(tag["from"]["kind"], "DockerImage");
    assert_eq!(tag["from"]["name"], out.image.as_str());
    assert_eq!(tag["referencePolicy"]["type"], "Source");
    let istag =
        prod_json_until(&env, &["istag", &format!("{MODEL}:prod")], |v| v["image"]["metadata"]["name"] == digest);
    assert_eq!(istag["tag"]["from"]["name"], out.image.as_str());
    assert_eq!(istag["image"]["dockerImageReference"], out.image.as_str());

    // A second promotion (v2) moves the same tag; the entry is replaced, not added.
    let v2 = env.push("v2").await;
    env.verify(&v2, "run-3", true).await;
    let mut req = env.request("run-4");
    req.image_stream = true;
    req.tag = "prod".into();
    let out2 = promotion::promote(&env.clusters, &req, false).await.unwrap();
    let is = env.kubectl(&["--context", "prod", "get", "imagestream", MODEL, "-n", "models-prod", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&is).unwrap();
    let tags = v["spec"]["tags"].as_array().unwrap();
    assert_eq!(tags.iter().filter(|t| t["name"] == "prod").count(), 1);
    assert_eq!(tags.iter().find(|t| t["name"] == "prod").unwrap()["from"]["name"], out2.image.as_str());
    prod_json_until(&env, &["istag", &format!("{MODEL}:prod")], |v| v["image"]["metadata"]["name"] == v2);
    env.stop().await;
}

/// The tag goes through the ImageStreamTag API, not the ImageStream
/// fallback (ImageStream writes are forbidden here), and a tag whose import
/// fails (a digest the registry does not hold) leaves a status tag with
/// `items: null` and a condition that the runner's typed reads accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_uses_imagestreamtags_and_a_failed_import_is_readable() {
    use modelship::cluster::openshift::{ImageStream, ImageStreamTag};
    let dir = tempfile::tempdir().unwrap();
    let mut config = openshift_sim::SimConfig::new(dir.path().join("prod"), "prod");
    config.faults.forbidden = vec!["imagestreams.image.openshift.io:create,update,patch".parse().unwrap()];
    let sim = openshift_sim::start(config).await.unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig()).unwrap();
    let client =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    namespaces
        .create(&Default::default(), &serde_json::from_value(json!({"metadata": {"name": "models-prod"}})).unwrap())
        .await
        .unwrap();
    let reg = &sim.api().registry;
    let repo = format!("models-prod/{MODEL}");
    let config_blob = br#"{"architecture":"amd64","os":"linux","config":{}}"#;
    let config_digest = reg.put_blob(&repo, config_blob).await.unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_blob.len() },
        "layers": [],
    }))
    .unwrap();
    let digest = reg.put_manifest(&repo, "v1", "application/vnd.oci.image.manifest.v1+json", &manifest).await.unwrap();
    let image = format!("{}/{repo}@{digest}", sim.registry_host());

    modelship::cluster::tag::point_tag(&client, "models-prod", MODEL, "prod", &image).await.unwrap();
    let istags: kube::Api<ImageStreamTag> = kube::Api::namespaced(client.clone(), "models-prod");
    let mut imported = None;
    for _ in 0..100 {
        if let Some(t) = istags.get_opt(&format!("{MODEL}:prod")).await.unwrap() {
            imported = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let istag = imported.expect("the import recorded the image");
    assert_eq!(istag.image["metadata"]["name"], digest.as_str());
    assert_eq!(istag.tag["from"]["name"], image.as_str());
    // Again: the same spec tag, no error (oc tag repeated).
    modelship::cluster::tag::point_tag(&client, "models-prod", MODEL, "prod", &image).await.unwrap();

    let missing = format!("{}/{repo}@sha256:{}", sim.registry_host(), "0".repeat(64));
    modelship::cluster::tag::point_tag(&client, "models-prod", MODEL, "broken", &missing).await.unwrap();
    let streams: kube::Api<ImageStream> = kube::Api::namespaced(client.clone(), "models-prod");
    let mut failed = None;
    for _ in 0..100 {
        let is = streams.get(MODEL).await.expect("the runner reads the stream");
        if let Some(t) = is.status.tags.iter().find(|t| t.tag == "broken" && !t.conditions.is_empty()) {
            failed = Some(t.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = failed.expect("the failed import is recorded");
    assert!(failed.items.is_empty());
    assert_eq!(failed.conditions[0].type_, "ImportSuccess");
    assert_eq!(failed.conditions[0].status, "False");
    let raw = sim.api().store.get(&openshift_sim::image::IMAGESTREAMS, "models-prod", MODEL).unwrap();
    let broken = raw["status"]["tags"].as_array().unwrap().iter().find(|t| t["tag"] == "broken").unwrap().clone();
    assert_eq!(broken["items"], serde_json::Value::Null, "the server sends items: null: {broken}");
    // No image: the ImageStreamTag is not found, as on a real server.
    assert!(istags.get_opt(&format!("{MODEL}:broken")).await.unwrap().is_none());
    sim.shutdown().await;
}

/// The stage with `approval: required`, run directly with a StageContext
/// whose run state (and so the ledger) is a directory store.
async fn run_stage(
    env: &Env,
    state: &std::path::Path,
    run: &str,
    with: serde_json::Value,
) -> Result<modelship::stages::Outputs, modelship::stages::StageError> {
    let store = std::sync::Arc::new(modelship::state::dir::DirStore::new(state));
    let cx = support::context::stage(&test_pipeline(), "promote", state)
        .run_id(run)
        .workspace(state.join("ws"))
        .output("check", "passed", json!(true))
        .output("check", "report", json!({ "passed": true, "cases": [] }))
        .kubeconfig(&env.kubeconfig)
        .state(store.clone());
    store.create_run(&cx.record()).await.unwrap();
    support::context::run_with(&cx.build(), with.as_object().unwrap().clone()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gate_waits_for_approve_reject_or_timeout() {
    use modelship::state::dir::DirStore;
    use modelship::state::{RunKey, Status};
    let env = Env::start().await;
    let digest = env.push("v1").await;
    let state = tempfile::tempdir().unwrap();
    let with = |timeout: &str| {
        json!({ "from": "dev", "to": "prod", "digest": digest, "approval": "required",
                "approvalTimeout": timeout, "imageStream": false, "lockWait": "0s" })
    };

    // Approved while parked: the run shows waiting-approval, then promotes
    // with the approver in the ledger.
    let store = DirStore::new(state.path());
    let key = RunKey { pipeline: "weather".into(), run_id: "run-a".into() };
    let approver = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Some(r)) = store.get_run(&key).await
                && r.status == Status::WaitingApproval
            {
                assert_eq!(r.approval.as_ref().unwrap().digest.as_deref(), Some(digest.as_str()));
                modelship::commands::approve::decide(
                    &store,
                    &key,
                    true,
                    &modelship::state::Identity { user: "alice".into(), groups: vec![] },
                    Some("ok"),
                )
                .await
                .unwrap();
                break;
            }
        }
    };
    let (out, ()) = tokio::join!(run_stage(&env, state.path(), "run-a", with("30s")), approver);
    let out = out.unwrap();
    assert_eq!(out["digest"], json!(digest));
    let ledger = store.get_ledger(MODEL).await.unwrap();
    let promoted = &ledger.current["prod"];
    assert_eq!((promoted.by.as_str(), promoted.comment.as_deref()), ("alice", Some("ok")));
    assert_eq!(ledger.current["dev"].action, "verified");

    // Rejected: the stage fails naming who rejected; nothing new promoted.
    let key_b = RunKey { pipeline: "weather".into(), run_id: "run-b".into() };
    let rejecter = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(Some(r)) = store.get_run(&key_b).await
                && r.status == Status::WaitingApproval
            {
                modelship::commands::approve::decide(
                    &store,
                    &key_b,
                    false,
                    &modelship::state::Identity { user: "bob".into(), groups: vec![] },
                    Some("not today"),
                )
                .await
                .unwrap();
                break;
            }
        }
    };
    let (res, ()) = tokio::join!(run_stage(&env, state.path(), "run-b", with("30s")), rejecter);
    let err = res.unwrap_err();
    assert!(err.message.contains("rejected by bob: not today"), "{}", err.message);

    // Nobody decides: timed out, recorded on the run.
    let err = run_stage(&env, state.path(), "run-c", with("1s")).await.unwrap_err();
    assert!(err.message.contains("no approval"), "{}", err.message);
    let key_c = RunKey { pipeline: "weather".into(), run_id: "run-c".into() };
    assert_eq!(store.get_run(&key_c).await.unwrap().unwrap().approval.unwrap().decision, "timed-out");
    let promoted: Vec<_> =
        store.get_ledger(MODEL).await.unwrap().history.into_iter().filter(|e| e.action == "promoted").collect();
    assert_eq!(promoted.len(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_verification_rolls_the_target_back() {
    use modelship::state::dir::DirStore;
    let env = Env::start().await;
    let state = tempfile::tempdir().unwrap();
    let store = DirStore::new(state.path());
    let v1 = env.push("v1").await;
    let image = format!("{}/models-dev/{MODEL}@{v1}", env.dev().registry_host());
    promotion::record_check(&store, MODEL, "dev", &v1, &image, "run-1", "ci", None, true).await.unwrap();
    let mut req = env.request("run-1");
    req.state_dir = Some(state.path().to_path_buf());
    promotion::promote(&env.clusters, &req, false).await.unwrap();

    let v2 = env.push("v2").await;
    // Every prediction answered with the wrong class.
    let (endpoint, server) = support::env::model_server("hot").await;
    let with = json!({ "from": "dev", "to": "prod", "digest": v2, "verify": true, "verifyEndpoint": endpoint,
                       "rollbackOnFailure": true, "imageStream": false, "lockWait": "0s" });
    let err = run_stage(&env, state.path(), "run-2", with).await.unwrap_err();
    assert!(err.message.contains("verification in `prod` failed"), "{}", err.message);
    assert!(err.message.contains(&format!("rolled `prod` back to {v1}")), "{}", err.message);
    // What the engine records for the stage, and `/metrics` counts.
    assert_eq!((err.gate, err.rolled_back), (Some(modelship::stages::Gate::Checks), true));
    server.abort();

    let ledger = store.get_ledger(MODEL).await.unwrap();
    let prod: Vec<(&str, &str)> = ledger
        .history
        .iter()
        .filter(|e| e.environment == "prod")
        .map(|e| (e.action.as_str(), e.digest.as_str()))
        .collect();
    assert_eq!(
        prod,
        [
            ("promoted", v1.as_str()),
            ("promoted", v2.as_str()),
            ("check-failed", v2.as_str()),
            ("rolled-back", v1.as_str())
        ]
    );
    let tagged = skopeo_raw(env.prod(), &format!("models-prod/{MODEL}:latest"));
    assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&tagged))), v1);
    env.stop().await;
}

// ------------------------------------------------------------ registrySecret

/// The test pipeline with prod's registry at `registry` (plain HTTP) and
/// its credentials in the Secret `regcred` of models-prod.
fn pipeline_with_registry_secret(registry: &str) -> Pipeline {
    let mut p = test_pipeline();
    let prod = p.spec.environments.get_mut("prod").unwrap();
    prod.registry = Some(registry.to_string());
    prod.insecure_registry = true;
    prod.registry_secret = Some("regcred".into());
    p
}

/// Write the Secret `regcred` in prod's models-prod: `type` with a
/// `.dockerconfigjson` naming `registry` with `user`/`password`.
async fn put_registry_secret(env: &Env, kind: &str, registry: &str, user: &str, password: &str) {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({ "auths": { registry: { "auth": b64(&format!("{user}:{password}")) } } }).to_string();
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": "regcred" },
        "type": kind,
        "data": { ".dockerconfigjson": b64(&config) },
    }))
    .unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(env.clusters.client("prod").await.unwrap(), "models-prod");
    let _ = api.delete("regcred", &Default::default()).await;
    api.create(&Default::default(), &secret).await.unwrap();
}

/// `modelship promote weather --from dev --to prod` on `pipeline` through
/// the env's kubeconfig, with no local registry credentials.
async fn promote_cli(env: &Env, pipeline: &Pipeline) -> std::process::Output {
    let dir = env.dir.path();
    let file = dir.join("pipeline.yaml");
    std::fs::write(&file, modelship::spec::yaml::to_string(pipeline).unwrap()).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_modelship"))
        .args(["promote", MODEL, "--from", "dev", "--to", "prod", "--lock-wait", "0s", "-f"])
        .arg(&file)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .env("REGISTRY_AUTH_FILE", dir.join("no-auth.json"))
        .env("DOCKER_CONFIG", dir.join("no-docker"))
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

/// The credentials live only in the environment's registrySecret (no auth
/// file, anonymous `req.auth`): the promotion reads the Secret through the
/// cluster and pushes with it to a registry that demands them (htpasswd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_pushes_with_the_credentials_of_the_registry_secret() {
    let registry = support::registry::DockerRegistry::start_with_auth("robot", "pw-in-the-secret-1");
    let env = Env::start_with(pipeline_with_registry_secret(&registry.addr)).await;
    let digest = env.push("v1").await;
    env.verify(&digest, "run-1", true).await;

    // Missing Secret: an error naming it, its namespace and environment; nothing pushed.
    let err = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap_err();
    let text = modelship::error::chain(&err);
    assert_eq!(err.exit_class(), ExitClass::Failed, "{text}");
    assert!(
        text.starts_with("environment `prod`: registrySecret `regcred` in namespace models-prod does not exist"),
        "{text}"
    );

    // Of the wrong type: refused before any push.
    put_registry_secret(&env, "Opaque", &registry.addr, "robot", "pw-in-the-secret-1").await;
    let err = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap_err();
    assert!(err.to_string().contains("is of type `Opaque`, expected `kubernetes.io/dockerconfigjson`"), "{err}");

    // A wrong password: the registry's 401, exit 1, naming the registry and user, with the hint.
    put_registry_secret(&env, "kubernetes.io/dockerconfigjson", &registry.addr, "robot", "wrong-password-9").await;
    let err = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap_err();
    let text = modelship::error::chain(&err);
    assert_eq!(err.exit_class(), ExitClass::Failed, "{text}");
    assert!(text.contains(&format!("registry {} answered 401 Unauthorized", registry.addr)), "{text}");
    assert!(text.contains("the credentials of user `robot` were rejected"), "{text}");
    assert!(text.contains("Secret models-prod/regcred"), "{text}");
    assert!(text.contains("registrySecret"), "{text}");
    assert!(!text.contains("wrong-password-9"), "{text}");
    let ledger = env.store("prod").get_ledger(MODEL).await.unwrap();
    assert!(ledger.history.is_empty(), "nothing recorded: {:?}", ledger.history);
    // The same through `modelship promote`: exit 1, one line.
    let out = promote_cli(&env, &pipeline_with_registry_secret(&registry.addr)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("401 Unauthorized") && errors[0].contains("registrySecret"), "{stderr}");
    assert!(!stderr.contains("wrong-password-9"), "{stderr}");

    // The right one: promoted, byte-exact, read back with the same credentials.
    put_registry_secret(&env, "kubernetes.io/dockerconfigjson", &registry.addr, "robot", "pw-in-the-secret-1").await;
    let out = promotion::promote(&env.clusters, &env.request("run-2"), false).await.unwrap();
    assert!(out.recorded);
    let src = skopeo_raw(env.dev(), &format!("models-dev/{MODEL}@{digest}"));
    let dst = support::registry::skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "robot:pw-in-the-secret-1",
        &format!("docker://{}/models-prod/{MODEL}:latest", registry.addr),
    ]);
    assert_eq!(src, dst);
    // Anonymous, the registry refuses (the push above needed the Secret).
    let anon = support::registry::skopeo_output(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/models-prod/{MODEL}:latest", registry.addr),
    ]);
    assert!(!anon.status.success());
    env.stop().await;
}

// ------------------------------------------------------------ lock renewal

/// The Lease of the model's lock in prod, once it exists.
async fn wait_for_lease(env: &Env) -> k8s_openapi::api::coordination::v1::Lease {
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.clusters.client("prod").await.unwrap(), "models-prod");
    let name = modelship::state::configmap::lock_lease_name(MODEL);
    for _ in 0..200 {
        if let Some(lease) = api.get_opt(&name).await.unwrap() {
            return lease;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the promotion never took its lock");
}

/// A promotion (lock duration 3 s) of a digest verified at a gated proxy in
/// front of dev's registry: its copy waits until the gate opens.
async fn promote_through_a_closed_gate(
    env: &Env,
) -> (
    support::registry::GatedProxy,
    tokio::task::JoinHandle<Result<promotion::PromoteOutcome, promotion::PromotionError>>,
) {
    let digest = env.push("v1").await;
    let slow = support::registry::GatedProxy::start(&env.dev().registry_host()).await;
    env.verify_at(&slow.addr, &digest, "run-1", true).await;
    let mut req = env.request("run-2");
    req.lock_ttl = Duration::from_secs(3);
    let clusters = Clusters::new(env.clusters.environments().clone(), Some(env.kubeconfig.clone()));
    (slow, tokio::spawn(async move { promotion::promote(&clusters, &req, false).await }))
}

/// A promotion whose copy outlasts its lock's duration several times
/// keeps the lock (renewed every third of it): another runner is refused
/// throughout, and the promotion records once. Without renewal the Lease
/// expires after 3 s and the other runner would take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_slower_than_the_lock_duration_keeps_the_lock_and_records_once() {
    let env = Env::start().await;
    let (slow, promoting) = promote_through_a_closed_gate(&env).await;
    let first = wait_for_lease(&env).await;
    // Three lock durations pass while the copy waits at the gate.
    let other = env.store("prod");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match other.try_lock(MODEL, "bob (run other)", Duration::from_secs(60)).await {
            Err(StateError::Locked { holder, .. }) => assert_eq!(holder, "alice (run run-2)"),
            other => panic!("another runner got past a held lock: {other:?}"),
        }
    }
    assert!(!promoting.is_finished(), "the copy was to wait at the gate");
    let renewed = wait_for_lease(&env).await;
    assert_ne!(renewed.spec.as_ref().unwrap().renew_time, first.spec.as_ref().unwrap().renew_time, "renewed");
    assert_eq!(renewed.spec.as_ref().unwrap().lease_transitions, Some(0), "never changed hands");
    slow.open();
    let out = promoting.await.unwrap().unwrap();
    assert!(out.recorded);
    let ledger = env.store("prod").get_ledger(MODEL).await.unwrap();
    assert_eq!(ledger.history.iter().filter(|e| e.action == "promoted").count(), 1);
    // Released at the end: the other runner gets it now.
    other.try_lock(MODEL, "bob (run other)", Duration::from_secs(60)).await.unwrap();
    env.stop().await;
}

/// A lock taken away during the copy (here overwritten by hand, as an
/// operator or a runner with a skewed clock might) stops the promotion
/// before it tags or records anything, and the new holder keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_lost_during_the_copy_stops_the_promotion_before_it_tags_or_records() {
    let env = Env::start().await;
    let (slow, promoting) = promote_through_a_closed_gate(&env).await;
    let mut lease = wait_for_lease(&env).await;
    lease.spec.as_mut().unwrap().holder_identity = Some("mallory (run stolen)".into());
    lease.spec.as_mut().unwrap().lease_duration_seconds = Some(600);
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(env.clusters.client("prod").await.unwrap(), "models-prod");
    api.replace(lease.metadata.name.as_deref().unwrap(), &Default::default(), &lease).await.unwrap();

    let err = tokio::time::timeout(Duration::from_secs(60), promoting).await.expect("stopped").unwrap().unwrap_err();
    match &err {
        PromotionError::Ledger { source: StateError::LockLost { why, .. }, .. } => {
            assert!(why.contains("mallory (run stolen)"), "{why}")
        }
        other => panic!("expected LockLost, got {other}"),
    }
    assert!(err.to_string().contains("stopped before tagging or recording"), "{err}");
    slow.open();
    let ledger = env.store("prod").get_ledger(MODEL).await.unwrap();
    assert!(ledger.history.is_empty(), "{:?}", ledger.history);
    assert!(env.prod().api().registry.resolve_manifest(&format!("models-prod/{MODEL}"), "latest").await.is_none());
    match env.store("prod").try_lock(MODEL, "bob", Duration::from_secs(5)).await {
        Err(StateError::Locked { holder, .. }) => assert_eq!(holder, "mallory (run stolen)"),
        other => panic!("the new holder lost its lock: {other:?}"),
    }
    env.stop().await;
}
