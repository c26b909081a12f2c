//! `seldon-deploy` against the sim in this process: the sim's Seldon
//! controller pulls the image from the sim registry, unpacks it, runs its
//! `CMD` with real seldon-core 1.17.1 in the venv
//! `scripts/setup.d/60-sim-venv.sh` pre-warmed, and the stage waits for
//! `Available` plus the predictor Deployment's rollout.
//!
//! The openshift-build stage is not used here: `push_image` packs the
//! rendered weather build context as one layer at the Dockerfile's WORKDIR
//! (what its `COPY . ./` does) with an OCI image config carrying the
//! Dockerfile's ENV, CMD and WORKDIR, and pushes it through the sim's
//! `RegistryStore` — the same shape the build controller produces.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use modelship::catalog::Catalog;
use modelship::error::{ExitClass, HasExitClass};
use modelship::spec::Pipeline;
use modelship::stages::render::{self, RenderInput};
use modelship::stages::{Outputs, StageError};
use modelship::state::StateStore;
use openshift_sim::{self as sim, Faults, SimConfig, SimServer};
use serde_json::{Value, json};
use support::cli::processes_under;
use support::memory_state::MemoryState;
use support::{context, kubectl};

const NS: &str = "models-dev";
const SEED_REQUEST: &str = r#"{"meta": {"tags": {}}, "data": {"names": ["temperature"], "ndarray": ["55"]}}"#;

/// Point the sim's venv cache at the pre-warmed one (same value from every
/// test, set before any sim starts a model).
fn use_prewarmed_venvs() {
    let cache = support::cli::venv_cache();
    // SAFETY: every test sets the same value; nothing reads it concurrently
    // with a different one.
    unsafe { std::env::set_var("MODELSHIP_SIM_VENV_CACHE", &cache) };
}

async fn start_sim(data: &Path, faults: Faults) -> SimServer {
    let mut config = SimConfig::new(data, "dev");
    config.faults = faults;
    let sim = sim::start(config).await.unwrap();
    if !sim.api().store.namespace_exists(NS) {
        sim.api().store.create(&sim::core::NAMESPACES, "", json!({"metadata": {"name": NS}}), false).unwrap();
    }
    sim
}

/// The digest directories (`seldon/<ns>/<name>/<hex>`) processes run in.
fn digests_running(dir: &Path) -> std::collections::BTreeSet<String> {
    processes_under(dir)
        .into_iter()
        .filter_map(|(_, cwd)| {
            let s = cwd.to_string_lossy().into_owned();
            let rest = s.split_once("/seldon/")?.1;
            Some(rest.split('/').take(3).collect::<Vec<_>>().join("/"))
        })
        .collect()
}

/// An image config as the build controller writes it.
fn image_config(env: &[(&str, &str)], cmd: &[&str], workdir: &str, diff_id: &str) -> Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "Cmd": cmd,
            "WorkingDir": workdir,
            "User": "1001",
            "ExposedPorts": {"9000/tcp": {}, "5001/tcp": {}, "6000/tcp": {}},
            "Labels": {"io.modelship.model.name": "weather"},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    })
}

/// Pack `context` as one uncompressed layer at `workdir`, add the config and
/// manifest to repository `repo` of the sim registry; returns
/// `HOST/REPO@sha256:...`.
async fn push_image(sim: &SimServer, repo: &str, context: &Path, env: &[(&str, &str)], cmd: &[&str]) -> String {
    let workdir = "/opt/app-root/src";
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&layer).unwrap());
        b.mode(tar::HeaderMode::Deterministic);
        b.append_dir_all(workdir.trim_start_matches('/'), context).unwrap();
        b.finish().unwrap();
    }
    let reg = &sim.api().registry;
    let (layer_digest, layer_size) = reg.put_blob_from_file(repo, &layer).await.unwrap();
    let config = serde_json::to_vec(&image_config(env, cmd, workdir, &layer_digest)).unwrap();
    let config_digest = reg.put_blob(repo, &config).await.unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let digest = reg
        .put_manifest(
            repo,
            "latest",
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .await
        .unwrap();
    format!("{}/{repo}@{digest}", sim.registry_host())
}

/// The rendered weather build context (the Dockerfile's ENV and CMD below
/// mirror `stages/render/Dockerfile.hbs`).
fn weather_context(out: &Path) -> PathBuf {
    let input = RenderInput {
        params: Default::default(),
        model_name: "weather".into(),
        model_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/weather-model"),
        model_digest: None,
        link_model_files: false,
    };
    render::render_context(&Catalog::embedded(), &input, &out.join("context")).unwrap().dir
}

const WEATHER_ENV: &[(&str, &str)] = &[
    ("MODEL_NAME", "MyModel"),
    ("SERVICE_TYPE", "MODEL"),
    ("PREDICTIVE_UNIT_HTTP_SERVICE_PORT", "9000"),
    ("PREDICTIVE_UNIT_GRPC_SERVICE_PORT", "5001"),
    ("PREDICTIVE_UNIT_METRICS_SERVICE_PORT", "6000"),
    ("PYTHONUNBUFFERED", "1"),
];
const WEATHER_CMD: &[&str] =
    &["/bin/sh", "-c", "exec seldon-core-microservice $MODEL_NAME --service-type $SERVICE_TYPE"];

// ------------------------------------------------------------ a stage, no engine

/// Run a `deploy` stage with `with` (a YAML flow map) against `sim`, the way
/// the engine does.
async fn run_deploy(sim: &SimServer, with: &str) -> Result<Outputs, StageError> {
    let yaml = format!(
        "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{name: weather}}
spec:
  model: {{name: weather, source: 'file://model'}}
  environments: {{dev: {{namespace: {NS}}}}}
  stages:
    - {{name: deploy, uses: seldon-deploy, with: {with}}}
"
    );
    let pipeline: Pipeline = modelship::spec::yaml::from_str(&yaml).unwrap();
    let workspace = tempfile::tempdir().unwrap();
    let kubeconfig = support::sim::kubeconfig_file(sim, workspace.path());
    let state = Arc::new(MemoryState::default());
    let cx = context::stage(&pipeline, "deploy", workspace.path()).kubeconfig(kubeconfig).state(state.clone());
    state.create_run(&cx.record()).await.unwrap();
    context::run(&cx.build()).await
}

fn sdep(sim: &SimServer, name: &str) -> Value {
    sim.api().store.get(&sim::seldon::SELDON_DEPLOYMENTS, NS, name).expect("the SeldonDeployment exists")
}

fn sim_output(sim: &SimServer, name: &str) -> String {
    sdep(sim, name).pointer("/status/description").and_then(Value::as_str).unwrap_or("").to_string()
}

async fn predict(endpoint: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{endpoint}/api/v1.0/predictions"))
        .header("content-type", "application/json")
        .body(SEED_REQUEST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {endpoint}: {e}"));
    assert!(resp.status().is_success(), "{endpoint}: {}", resp.status());
    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
}

fn out<'o>(o: &'o Outputs, key: &str) -> &'o str {
    o.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("no output {key} in {o:?}"))
}

/// `kubectl get RESOURCE -n NS` against `sim` (kubectl from
/// scripts/setup.d/10-kubectl.sh, or PATH).
fn kubectl_get(sim: &SimServer, resource: &str) -> String {
    let out = kubectl(sim, &["get", resource, "-n", NS]);
    assert!(out.status.success(), "kubectl get {resource}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn kubectl(sim: &SimServer, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    kubectl::at(support::sim::kubeconfig_file(sim, dir.path())).home(dir.path()).output(args)
}

// ------------------------------------------------------------------- tests

/// The weather image served by real seldon-core; a re-run changes nothing;
/// a new digest rolls (old process gone, new one serving); a Route gives
/// the endpoint; a restarted sim serves again; nothing outlives the sim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weather_deploys_rolls_and_stops() {
    use_prewarmed_venvs();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("sim");
    let sim = start_sim(&data, Faults::default()).await;
    let context = weather_context(work.path());
    let image_a = push_image(&sim, "models-dev/weather", &context, WEATHER_ENV, WEATHER_CMD).await;
    let digest_a = image_a.split_once('@').unwrap().1.to_string();

    let with = format!("{{environment: dev, image: '{image_a}', timeout: 3m}}");
    let first = match run_deploy(&sim, &with).await {
        Ok(o) => o,
        Err(e) => panic!("deploy failed: {e}\nsim status: {}", sim_output(&sim, "weather")),
    };
    assert_eq!(out(&first, "deployedDigest"), digest_a);
    assert_eq!(out(&first, "deploymentName"), "weather");
    let endpoint_a = out(&first, "endpoint").to_string();
    assert!(endpoint_a.starts_with("http://127.0.0.1:"), "{endpoint_a}");
    let answer = predict(&endpoint_a).await;
    assert_eq!(answer.pointer("/meta/tags/weather_state"), Some(&json!("mild")), "{answer}");
    let dep = sim.api().store.get(&sim::apps::DEPLOYMENTS, NS, "weather-default-0-model").unwrap();
    assert_eq!(dep.pointer("/spec/template/spec/containers/0/image"), Some(&json!(image_a)));
    // seldon-core's gunicorn forks workers: one process group, one image.
    assert_eq!(digests_running(&data).len(), 1, "{:?}", processes_under(&data));

    // The short name works as with the real CRD.
    let table = kubectl_get(&sim, "sdep");
    assert!(table.lines().any(|l| l.starts_with("weather ") && l.contains("Available")), "{table}");
    let table = kubectl_get(&sim, "deploy");
    assert!(table.contains("weather-default-0-model"), "{table}");

    // Same digest: no new generation, no new resourceVersion, same process.
    let before = sdep(&sim, "weather");
    let again = run_deploy(&sim, &with).await.unwrap();
    let after = sdep(&sim, "weather");
    assert_eq!(before.pointer("/metadata/generation"), after.pointer("/metadata/generation"));
    assert_eq!(before.pointer("/metadata/resourceVersion"), after.pointer("/metadata/resourceVersion"));
    assert_eq!(out(&again, "endpoint"), endpoint_a);

    // A new digest (one more file in the context) rolls the deployment.
    std::fs::write(context.join("VERSION"), "2\n").unwrap();
    let image_b = push_image(&sim, "models-dev/weather", &context, WEATHER_ENV, WEATHER_CMD).await;
    assert_ne!(image_a, image_b);
    let with_b = format!("{{environment: dev, image: '{image_b}', timeout: 3m, useRoute: true}}");
    let rolled = match run_deploy(&sim, &with_b).await {
        Ok(o) => o,
        Err(e) => panic!("rollout failed: {e}\nsim status: {}", sim_output(&sim, "weather")),
    };
    assert_eq!(
        sdep(&sim, "weather").pointer("/metadata/generation"),
        Some(&json!(before.pointer("/metadata/generation").unwrap().as_i64().unwrap() + 1))
    );
    let endpoint_b = out(&rolled, "endpoint").to_string();
    // The predictor keeps its address across a rollout, as a Service does;
    // that the old process is gone and the new digest runs is checked below.
    assert_eq!(endpoint_b, endpoint_a, "the Route host is the predictor's stable address");
    let answer = predict(&endpoint_b).await;
    assert_eq!(answer.pointer("/meta/tags/weather_state"), Some(&json!("mild")));
    let hex_b = image_b.split_once("sha256:").unwrap().1;
    let running = digests_running(&data);
    assert_eq!(running.len(), 1, "{:?}", processes_under(&data));
    assert!(running.iter().all(|d| d.ends_with(hex_b)), "{running:?}");
    let route = sim.api().store.get(&sim::route::ROUTES, NS, "weather").unwrap();
    assert_eq!(route.pointer("/spec/to/name"), Some(&json!("weather-default")));

    // A restarted sim starts the stored deployment again.
    sim.shutdown().await;
    assert_eq!(processes_under(&data), vec![], "processes outlived the sim");
    let sim = start_sim(&data, Faults::default()).await;
    let restarted = run_deploy(&sim, &with_b).await.unwrap();
    let answer = predict(out(&restarted, "endpoint")).await;
    assert_eq!(answer.pointer("/meta/tags/weather_state"), Some(&json!("mild")));
    sim.shutdown().await;
    assert_eq!(processes_under(&data), vec![], "processes outlived the restarted sim");
}

/// A model that exits at start: the stage fails with the sim's `Failed`
/// description, which carries the process's last output.
#[tokio::test]
async fn crashing_model_fails_with_its_output() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("sim");
    let sim = start_sim(&data, Faults::default()).await;
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Model.py"), "raise ImportError('no module named weather')\n").unwrap();
    let cmd = ["/bin/sh", "-c", "echo starting; echo 'ImportError: no module named weather' >&2; exit 3"];
    let image = push_image(&sim, "models-dev/crash", &ctx, &[("MODEL_NAME", "Model")], &cmd).await;
    let err = run_deploy(&sim, &format!("{{environment: dev, name: crash, image: '{image}', timeout: 60s}}"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("SeldonDeployment models-dev/crash is Failed"), "{msg}");
    assert!(msg.contains("ImportError: no module named weather"), "{msg}");
    assert_eq!(err.exit_class(), ExitClass::Failed);
    sim.shutdown().await;
    assert_eq!(processes_under(&data), vec![]);
}

/// A process that never answers `/health/ping`: the stage times out naming
/// the deployment and what it last saw; the sim's shutdown kills it.
#[tokio::test]
async fn never_healthy_times_out_naming_the_deployment() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("sim");
    let sim = start_sim(&data, Faults::default()).await;
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("README"), "sleeps\n").unwrap();
    let image = push_image(&sim, "models-dev/sleepy", &ctx, &[], &["/bin/sh", "-c", "exec sleep 600"]).await;
    let err = run_deploy(&sim, &format!("{{environment: dev, name: sleepy, image: '{image}', timeout: 3s}}"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("SeldonDeployment models-dev/sleepy did not roll out within 3s"), "{msg}");
    assert!(msg.contains("state Creating"), "{msg}");
    assert!(msg.contains("sleepy-default-0-model"), "{msg}");
    assert_eq!(digests_running(&data).len(), 1, "the sleeper runs until the sim stops");
    sim.shutdown().await;
    assert_eq!(processes_under(&data), vec![], "sim shutdown leaves the sleeper running");
}

/// RBAC denies SeldonDeployments: the error names the verb, resource,
/// namespace and the 403. A tag instead of a digest is bad input.
#[tokio::test]
async fn forbidden_and_unpinned_are_reported() {
    let work = tempfile::tempdir().unwrap();
    let faults =
        Faults { forbidden: vec!["seldondeployments.machinelearning.seldon.io".parse().unwrap()], ..Faults::default() };
    let sim = start_sim(&work.path().join("sim"), faults).await;
    let image = format!("{}/models-dev/weather@sha256:{}", sim.registry_host(), "a".repeat(64));
    let err = run_deploy(&sim, &format!("{{environment: dev, image: '{image}', timeout: 5s}}")).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("cannot apply SeldonDeployment models-dev/weather: 403 Forbidden"), "{msg}");
    assert_eq!(err.exit_class(), ExitClass::Failed);

    let tagged = format!("{}/models-dev/weather:latest", sim.registry_host());
    let err = run_deploy(&sim, &format!("{{environment: dev, image: '{tagged}'}}")).await.unwrap_err();
    assert!(err.to_string().contains("is not pinned by digest"), "{err}");
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    sim.shutdown().await;
}

/// Guards finding the operator's Deployment when names pass 63 characters:
/// seldon-core 1.17.1 names the predictor's Deployment and Service
/// `seldon-<md5>` then, so the rollout check must not look for
/// `<sdep>-<predictor>-0-<container>` (it reads `status.deploymentStatus`).
/// A small HTTP server stands in for the model (it answers `/health/ping`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_name_rolls_out_under_the_operators_hashed_names() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("sim");
    let sim = start_sim(&data, Faults::default()).await;
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("health")).unwrap();
    std::fs::write(ctx.join("health/ping"), "pong\n").unwrap();
    let cmd = ["/bin/sh", "-c", "exec python3 -m http.server \"$PREDICTIVE_UNIT_HTTP_SERVICE_PORT\" --bind 127.0.0.1"];
    let image = push_image(&sim, "models-dev/pinger", &ctx, &[], &cmd).await;
    let name = "a-model-whose-name-is-long-enough-to-pass-the-label-limits";
    let with = format!("{{environment: dev, name: {name}, image: '{image}', timeout: 60s, route: true}}");
    let done = match run_deploy(&sim, &with).await {
        Ok(o) => o,
        Err(e) => panic!("deploy failed: {e}\nsim status: {}", sim_output(&sim, name)),
    };
    assert_eq!(out(&done, "deploymentName"), name);
    let guessed = format!("{name}-default-0-model");
    assert!(guessed.len() > 63);
    let status = sdep(&sim, name)["status"].clone();
    let deployments: Vec<&String> = status["deploymentStatus"].as_object().unwrap().keys().collect();
    assert_eq!(deployments.len(), 1, "{status}");
    let hashed = deployments[0];
    assert!(hashed.starts_with("seldon-") && hashed.len() == "seldon-".len() + 32, "{hashed}");
    let dep = sim.api().store.get(&sim::apps::DEPLOYMENTS, NS, hashed).expect("the hashed Deployment");
    assert_eq!(dep.pointer("/spec/template/spec/containers/0/image"), Some(&json!(image)));
    assert!(sim.api().store.get(&sim::apps::DEPLOYMENTS, NS, &guessed).is_none());
    // The Route targets the predictor's Service under its hashed name too.
    let service = status["serviceStatus"].as_object().unwrap().keys().next().unwrap().clone();
    assert!(service.starts_with("seldon-"), "{status}");
    let route = sim.api().store.get(&sim::route::ROUTES, NS, name).unwrap();
    assert_eq!(route.pointer("/spec/to/name"), Some(&json!(service)));

    // Server-side apply ownership: the runner (field manager `modelship`)
    // owns the predictors; someone else's apply of other replicas conflicts
    // with it, and the runner's next deploy (forced) takes them back.
    let mut edited = sdep(&sim, name);
    edited["spec"]["predictors"][0]["replicas"] = json!(3);
    let manifest = json!({ "apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
        "metadata": { "name": name, "namespace": NS }, "spec": { "predictors": edited["spec"]["predictors"] } });
    let file = work.path().join("sdep.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    let out = kubectl(&sim, &["apply", "--server-side", "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("conflict with \"modelship\": .spec.predictors"), "{stderr}");
    let out = kubectl(&sim, &["apply", "--server-side", "--force-conflicts", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sdep(&sim, name).pointer("/spec/predictors/0/replicas"), Some(&json!(3)));
    run_deploy(&sim, &with).await.unwrap();
    let back = sdep(&sim, name);
    assert_eq!(back.pointer("/spec/predictors/0/replicas"), Some(&json!(1)));
    let owners: Vec<&str> = back["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.pointer("/fieldsV1/f:spec/f:predictors").is_some())
        .map(|e| e["manager"].as_str().unwrap())
        .collect();
    assert_eq!(owners, ["modelship"]);
    sim.shutdown().await;
    assert_eq!(processes_under(&data), vec![]);
}
