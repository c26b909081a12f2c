//! Stage `openshift-build` against the in-process sim: a rendered weather
//! context is built into a real OCI image that skopeo reads back; reuse,
//! resume after a killed runner, a failing Dockerfile, and the faults.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use modelship::stages::{Kind, Outputs, StageContext, StageError};
use modelship::state::{StateStore, dir::DirStore};
use openshift_sim::{self as sim, Faults, SimConfig, SimServer};
use serde_json::{Value, json};
use support::build::{NS, pipeline, render_outputs, weather_context};
use support::context;

/// One sim (stopped with the test's runtime, which ends its tasks), a
/// rendered weather context and a directory state store.
struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    sim: Option<SimServer>,
    kubeconfig: PathBuf,
    context: PathBuf,
    digest: String,
    state: Arc<DirStore>,
}

async fn setup(faults: Faults, make_ns: bool) -> Env {
    setup_with(faults, make_ns, |_| {}).await
}

async fn setup_with(faults: Faults, make_ns: bool, configure: impl FnOnce(&mut SimConfig)) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let mut config = SimConfig::new(root.join("sim"), "dev");
    config.faults = faults;
    config.build_duration = Duration::from_millis(1500);
    configure(&mut config);
    let sim = sim::start(config).await.unwrap();
    let kubeconfig = support::sim::kubeconfig_file(&sim, &root);
    if make_ns {
        kubectl(&kubeconfig, &["create", "namespace", NS]);
    }
    let (context, digest) = weather_context(&root);
    let state = Arc::new(DirStore::new(root.join("state")));
    Env { root, sim: Some(sim), kubeconfig, context, digest, state, _tmp: tmp }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    support::kubectl::at(kubeconfig).ok(args)
}

impl Env {
    async fn context(&self, run_id: &str, with: Value) -> (StageContext, serde_json::Map<String, Value>) {
        let cx = context::stage(&pipeline(), "build", &self.root)
            .run_id(run_id)
            .workspace(self.root.join("ws"))
            .outputs("render", render_outputs(&self.context, &self.digest))
            .kubeconfig(&self.kubeconfig)
            .state(self.state.clone());
        let previous = match self.state.get_run(&cx.run_key()).await.unwrap() {
            Some(r) => r.stages.into_iter().find(|s| s.name == "build"),
            None => {
                self.state.create_run(&cx.record()).await.unwrap();
                None
            }
        };
        (cx.previous(previous).build(), with.as_object().cloned().unwrap_or_default())
    }

    async fn run(&self, run_id: &str, with: Value) -> Result<Outputs, StageError> {
        let (cx, with) = self.context(run_id, with).await;
        Kind::from_name("openshift-build").unwrap().run(with, &cx).await
    }

    fn builds(&self) -> Vec<String> {
        kubectl(&self.kubeconfig, &["get", "builds", "-n", NS, "-o", "name"]).lines().map(str::to_string).collect()
    }

    fn sim(&self) -> &SimServer {
        self.sim.as_ref().unwrap()
    }
}

/// The phase of `build` once it is `want` (or the last one seen, after a
/// few seconds).
async fn phase_when(env: &Env, build: &str, want: &str) -> String {
    let mut phase = String::new();
    for _ in 0..50 {
        phase = kubectl(&env.kubeconfig, &["get", "build", build, "-n", NS, "-o", "jsonpath={.status.phase}"]);
        if phase == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    phase
}

/// The image config skopeo reads from `sim`'s registry as a ServiceAccount
/// that may pull (TLS verified with the sim's CA).
fn skopeo_config(sim: &SimServer, image: &str) -> Value {
    let login = support::sim::SkopeoLogin::in_process(sim, "system:image-puller");
    let out = Command::new("skopeo")
        .args(["inspect", "--config"])
        .args(login.args(""))
        .arg(format!("docker://{}/{image}", sim.registry_host()))
        .output()
        .expect("skopeo is missing: run scripts/test.sh (scripts/setup.d/30-registry.sh installs it)");
    assert!(out.status.success(), "skopeo: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_an_image_skopeo_reads_back_and_does_not_build_twice() {
    let env = setup(Faults::default(), true).await;
    let out = env.run("run-1", json!({ "environment": "dev" })).await.unwrap();
    let digest = out["imageDigest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"));
    assert_eq!(out["buildName"], json!("weather-1"));
    assert_eq!(out["imageStreamTag"], json!("weather:latest"));
    let host = env.sim().registry_host();
    assert_eq!(out["image"], json!(format!("{host}/{NS}/weather@{digest}")));

    let config = skopeo_config(env.sim(), &format!("{NS}/weather@{digest}"));
    assert_eq!(config["architecture"], "amd64");
    let cmd = config["config"]["Cmd"].as_array().expect("the Dockerfile's CMD is in the image config");
    assert!(!cmd.is_empty());
    assert!(config["config"]["Env"].as_array().is_some_and(|e| !e.is_empty()), "{config}");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);

    // kubectl sees every kind, with short names.
    let got = kubectl(&env.kubeconfig, &["get", "bc,builds,is,istag", "-n", NS]);
    assert!(got.contains("weather-1") && got.contains("Complete") && got.contains("weather:latest"), "{got}");
    let is: Value =
        serde_json::from_str(&kubectl(&env.kubeconfig, &["get", "is", "weather", "-n", NS, "-o", "json"])).unwrap();
    assert_eq!(is["status"]["tags"][0]["items"][0]["image"], json!(digest));
    let log = kubectl(
        &env.kubeconfig,
        &["get", "--raw", &format!("/apis/build.openshift.io/v1/namespaces/{NS}/builds/weather-1/log")],
    );
    assert!(log.contains("RUN not executed in the simulation"), "{log}");

    // Same context, new run: no second build, same digest.
    let again = env.run("run-2", json!({ "environment": "dev" })).await.unwrap();
    assert_eq!(again["imageDigest"], json!(digest));
    assert_eq!(env.builds(), vec!["build.build.openshift.io/weather-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_runner_resumes_on_the_same_build() {
    let env = setup(Faults::default(), true).await;
    let (cx, with) = env.context("run-1", json!({ "environment": "dev" })).await;
    // The runner dies once the Build exists and is recorded.
    let kind = Kind::from_name("openshift-build").unwrap();
    let state = env.state.clone();
    let key = cx.run_key.clone();
    tokio::select! {
        r = kind.run(with.clone(), &cx) => panic!("the build finished before the runner was killed: {r:?}"),
        _ = async {
            loop {
                let run = state.get_run(&key).await.unwrap().unwrap();
                if run.stages[0].checkpoints.contains_key("buildName") { break; }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        } => {}
    }
    drop(cx);
    let out = env.run("run-1", json!({ "environment": "dev" })).await.unwrap();
    assert_eq!(out["buildName"], json!("weather-1"));
    assert_eq!(env.builds(), vec!["build.build.openshift.io/weather-1"]);
}

/// Guards "a watch that drops mid-build": the sim restarts (same port, same
/// data) while the stage follows the build, so the watch and the log stream
/// drop and lists fail for a moment; the stage must re-list and re-watch the
/// same Build, never start a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_is_followed_by_a_relist_not_a_second_build() {
    let mut env = setup(Faults::default(), true).await;
    let (cx, with) = env.context("run-1", json!({ "environment": "dev" })).await;
    let kind = Kind::from_name("openshift-build").unwrap();
    let run = kind.run(with, &cx);
    tokio::pin!(run);
    loop {
        tokio::select! {
            r = &mut run => panic!("the build finished before the watch was dropped: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let rec = env.state.get_run(&cx.run_key).await.unwrap().unwrap();
                if rec.stages[0].checkpoints.contains_key("buildName") { break; }
            }
        }
    }
    let old = env.sim.take().unwrap();
    let addr = old.addr;
    old.shutdown().await;
    let mut config = SimConfig::new(env.root.join("sim"), "dev");
    config.listen = addr;
    config.build_duration = Duration::from_millis(1500);
    env.sim = Some(sim::start(config).await.unwrap());
    let out = run.await.unwrap();
    assert_eq!(out["buildName"], json!("weather-1"));
    assert_eq!(env.builds(), vec!["build.build.openshift.io/weather-1"]);
}

/// SIGTERM during a build cancels the Build, as `oc cancel-build` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_run_cancels_the_build() {
    let env = setup(Faults::default(), true).await;
    let (cx, with) = env.context("run-1", json!({ "environment": "dev" })).await;
    let (cancel, state, key) = (cx.cancel.clone(), env.state.clone(), cx.run_key.clone());
    tokio::spawn(async move {
        loop {
            let rec = state.get_run(&key).await.unwrap().unwrap();
            if rec.stages[0].checkpoints.contains_key("buildName") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
    });
    let err = Kind::from_name("openshift-build").unwrap().run(with, &cx).await.unwrap_err();
    assert_eq!(err.kind, modelship::stages::StageErrorKind::Cancelled);
    assert_eq!(phase_when(&env, "weather-1", "Cancelled").await, "Cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dockerfile_surfaces_reason_message_and_log() {
    let env = setup(Faults::default(), true).await;
    std::fs::write(env.context.join("Dockerfile"), "# no FROM here\nRUN echo hi\n").unwrap();
    let err = env
        .run("run-1", json!({ "environment": "dev", "contextDir": env.context.display().to_string() }))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("build weather-1 in namespace models-dev ended Failed"), "{msg}");
    assert!(msg.contains("DockerBuildFailed") && msg.contains("Docker build strategy has failed."), "{msg}");
    assert!(msg.contains("before FROM"), "the log tail names the problem: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_name_resource_and_namespace() {
    // No namespace.
    let env = setup(Faults::default(), false).await;
    let msg = env.run("run-1", json!({ "environment": "dev" })).await.unwrap_err().to_string();
    assert!(
        msg.contains("imagestreams.image.openshift.io/weather") && msg.contains(NS) && msg.contains("not found"),
        "{msg}"
    );

    // Over the size limit: refused before anything is created.
    let msg = env.run("run-1", json!({ "environment": "dev", "maxContextBytes": 10 })).await.unwrap_err().to_string();
    assert!(msg.contains("over maxContextBytes 10"), "{msg}");

    // Forbidden to start builds.
    let faults = Faults {
        forbidden: vec!["buildconfigs/instantiatebinary.build.openshift.io".parse().unwrap()],
        ..Faults::default()
    };
    let env = setup(faults, true).await;
    let err = env.run("run-1", json!({ "environment": "dev" })).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("buildconfigs.build.openshift.io/weather") && msg.contains(NS) && msg.contains("403"),
        "{msg}"
    );
}

/// Let every typed property of a schema also be `null`. The strict
/// schemas come from OpenAPI v2, which cannot say `nullable`, but
/// openshift-apiserver sends `null` for unset fields without `omitempty`
/// (`spec.nodeSelector`, `status.tags[].items`, an ImageStreamTag's `tag`).
fn nullable(schema: &mut Value) {
    match schema {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get_mut("properties") {
                for p in props.values_mut() {
                    match p.get("type").cloned() {
                        Some(Value::String(t)) => p["type"] = json!([t, "null"]),
                        Some(Value::Array(mut ts)) if !ts.contains(&json!("null")) => {
                            ts.push(json!("null"));
                            p["type"] = Value::Array(ts);
                        }
                        _ => {}
                    }
                }
            }
            for v in m.values_mut() {
                nullable(v);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(nullable),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_manifests_match_the_openshift_schemas() {
    let env = setup(Faults::default(), true).await;
    env.run("run-1", json!({ "environment": "dev" })).await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference/openshift/schemas-4.15-strict");
    for (kind, file) in [
        ("bc", "buildconfig_build.openshift.io_v1.json"),
        ("is", "imagestream_image.openshift.io_v1.json"),
        ("builds", "build_build.openshift.io_v1.json"),
        ("istag", "imagestreamtag_image.openshift.io_v1.json"),
    ] {
        let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
        nullable(&mut schema);
        let validator = jsonschema::validator_for(&schema).unwrap();
        let list: Value =
            serde_json::from_str(&kubectl(&env.kubeconfig, &["get", kind, "-n", NS, "-o", "json"])).unwrap();
        for item in list["items"].as_array().unwrap() {
            let errors: Vec<String> =
                validator.iter_errors(item).map(|e| format!("{} at {}", e, e.instance_path())).collect();
            assert!(errors.is_empty(), "{kind}: {errors:?}\n{item:#}");
        }
    }
}

/// A copy of the rendered context with one more file (another digest).
fn changed_context(env: &Env, tag: &str) -> String {
    let dir = env.root.join(format!("context-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in walk(&env.context) {
        let rel = entry.strip_prefix(&env.context).unwrap();
        let to = dir.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    std::fs::write(dir.join("VERSION"), format!("{tag}\n")).unwrap();
    dir.display().to_string()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

fn bc_json(env: &Env) -> Value {
    serde_json::from_str(&kubectl(&env.kubeconfig, &["get", "bc", "weather", "-n", NS, "-o", "json"])).unwrap()
}

/// Guards "the BuildConfig is patched on every run": openshift-apiserver
/// fills defaults (`runPolicy`, `resources: {}`, `postCommit: {}`,
/// `nodeSelector: null`) and drops the empty `triggers`, so comparing the
/// rendered spec with the stored one must look only at the rendered fields.
/// Two builds of the same BuildConfig (two contexts) write it once each:
/// the build's `org.opencontainers.image.created` in
/// `spec.output.imageLabels`, set just before it starts; a third run of the
/// second context reuses the image and writes nothing (PATCH and PUT
/// counted by a no-op fault rule on those verbs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_builds_write_the_buildconfig_only_for_their_created_label() {
    let faults = Faults {
        inject: vec!["delay+1ms=buildconfigs.build.openshift.io:patch,update".parse().unwrap()],
        ..Faults::default()
    };
    let env = setup(faults, true).await;
    env.run("run-1", json!({ "environment": "dev" })).await.unwrap();
    let bc = bc_json(&env);
    assert_eq!(bc["spec"]["runPolicy"], "Serial");
    assert_eq!(bc["spec"]["nodeSelector"], Value::Null);
    assert!(bc["spec"].as_object().unwrap().contains_key("nodeSelector"), "{bc:#}");
    assert_eq!(bc["spec"]["resources"], json!({}));
    assert_eq!(bc["spec"]["postCommit"], json!({}));
    assert!(bc["spec"].get("triggers").is_none(), "empty triggers are omitted: {bc:#}");
    assert_eq!(bc["spec"]["successfulBuildsHistoryLimit"], 5);
    let second = changed_context(&env, "2");
    let out = env.run("run-2", json!({ "environment": "dev", "contextDir": second })).await.unwrap();
    assert_eq!(out["buildName"], json!("weather-2"));
    assert_eq!(bc_json(&env)["status"]["lastVersion"], 2);
    let report = env.sim().api().fault_counters.report(&env.sim().api().faults);
    assert_eq!(report["rules"][0]["matched"], 2, "the BuildConfig was written other than for the labels: {report}");
    let labels = &bc_json(&env)["spec"]["output"]["imageLabels"];
    assert_eq!(labels[0]["name"], "org.opencontainers.image.created", "{labels}");
    let created = labels[0]["value"].as_str().unwrap();
    assert!(created.parse::<jiff::Timestamp>().is_ok(), "created is RFC 3339: {created}");
    let out = env.run("run-3", json!({ "environment": "dev", "contextDir": second })).await.unwrap();
    assert_eq!(out["buildName"], json!("weather-2"), "the image of this context is reused");
    let report = env.sim().api().fault_counters.report(&env.sim().api().faults);
    assert_eq!(report["rules"][0]["matched"], 2, "a run without a build wrote the BuildConfig: {report}");
    // The Builds carry the same defaults, and the revision (commit sent).
    let b: Value =
        serde_json::from_str(&kubectl(&env.kubeconfig, &["get", "build", "weather-2", "-n", NS, "-o", "json"]))
            .unwrap();
    assert_eq!(b["spec"]["nodeSelector"], Value::Null);
    assert_eq!(b["spec"]["postCommit"], json!({}));
    assert_eq!(
        b["spec"]["output"]["imageLabels"][0]["value"], created,
        "the Build took its labels from the BuildConfig"
    );
    let commit = b["spec"]["revision"]["git"]["commit"].as_str().expect("spec.revision.git.commit");
    assert_eq!(commit.len(), 40, "{b:#}");
}

/// `(build, phase)` in the order the phases were committed.
type PhaseLog = Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// The Build phases in commit order, from the sim's change feed.
fn phase_log(sim: &SimServer) -> (tokio::task::JoinHandle<()>, PhaseLog) {
    let log: PhaseLog = Arc::default();
    let mut rx = sim.api().store.events();
    let sink = log.clone();
    let task = tokio::spawn(async move {
        while let Ok(e) = rx.recv().await {
            if e.resource != "build.openshift.io/builds" {
                continue;
            }
            let name = e.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
            let phase = e.object.pointer("/status/phase").and_then(Value::as_str).unwrap_or("").to_string();
            let mut l = sink.lock().unwrap();
            if l.iter().rev().find(|(n, _)| *n == name).is_none_or(|(_, p)| *p != phase) {
                l.push((name, phase));
            }
        }
    });
    (task, log)
}

/// `runPolicy: Serial`: a second build of the BuildConfig stays `New`
/// until the first is complete (its `instantiatebinary` waits meanwhile);
/// the stage follows it to the end instead of treating it as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_builds_wait_for_the_earlier_one() {
    let env = setup(Faults::default(), true).await;
    let (task, log) = phase_log(env.sim());
    let second = changed_context(&env, "2");
    let first = env.run("run-1", json!({ "environment": "dev" }));
    let later = async {
        // Start the second once the first is running.
        loop {
            if log.lock().unwrap().iter().any(|(n, p)| n == "weather-1" && p == "Running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        env.run("run-2", json!({ "environment": "dev", "contextDir": second })).await
    };
    let (a, b) = tokio::join!(first, later);
    assert_eq!(a.unwrap()["buildName"], json!("weather-1"));
    assert_eq!(b.unwrap()["buildName"], json!("weather-2"));
    task.abort();
    let log = log.lock().unwrap().clone();
    let at = |name: &str, phase: &str| {
        log.iter().position(|(n, p)| n == name && p == phase).unwrap_or_else(|| panic!("{name} {phase}: {log:?}"))
    };
    assert!(at("weather-2", "New") < at("weather-1", "Complete"), "{log:?}");
    assert!(at("weather-1", "Complete") < at("weather-2", "Pending"), "weather-2 started early: {log:?}");
}

/// openshift-apiserver's `instantiatebinary` waits (5 minutes; here 300ms)
/// for the build to run; then it answers 504 and cancels the Build. The
/// stage reports that plainly rather than as a lost answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_never_starts_is_a_504_and_cancelled() {
    let env = setup_with(Faults::default(), true, |c| c.build_start_timeout = Duration::from_millis(300)).await;
    // A build of the BuildConfig that never ends (it waits for an input
    // nobody sends) keeps the Serial queue busy.
    let blocker = json!({
        "apiVersion": "build.openshift.io/v1", "kind": "Build",
        "metadata": { "name": "weather-blocker", "labels": { "openshift.io/build-config.name": "weather" },
            "annotations": { "openshift.io/build.number": "100" } },
        "spec": { "source": { "type": "Binary" }, "strategy": { "type": "Docker" } },
        "status": { "phase": "Running" },
    });
    let file = env.root.join("blocker.json");
    std::fs::write(&file, blocker.to_string()).unwrap();
    kubectl(&env.kubeconfig, &["create", "-f", file.to_str().unwrap(), "-n", NS]);
    let err = env.run("run-1", json!({ "environment": "dev" })).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("did not start running in time and the server cancelled it"), "{msg}");
    assert!(msg.contains("timed out waiting for build weather-1 to start after 300ms"), "{msg}");
    assert!(msg.contains("504"), "{msg}");
    assert_eq!(phase_when(&env, "weather-1", "Cancelled").await, "Cancelled");
}
