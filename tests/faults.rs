//! A flaky API server: the in-process sim injects 500, 503, 429 with
//! `Retry-After`, dropped connections, lost answers (the request applied, the
//! answer never sent), delays, cut watches and 409s on every Nth request.
//! The openshift-build stage and the ConfigMap state store (run records and
//! the promotion ledger) must succeed through them with nothing done twice,
//! and give up with a clear error once the retry budget is spent.
//!
//! Each test prints a `faults:` line with what the sim injected (its
//! `/sim/faults` counts), for the reliability note.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use modelship::cluster::Clusters;
use modelship::cluster::retry::RetryConfig;
use modelship::stages::{Outputs, StageError};
use modelship::state::configmap::ConfigMapStore;
use modelship::state::{RunKey, RunRecord, StageRecord, StateStore, Status, dir::DirStore};
use openshift_sim::{self as sim, FaultRule, Faults, SimConfig, SimServer};
use serde_json::{Value, json};
use support::build::{NS, pipeline, render_outputs, weather_context};
use support::context;
use support::records::entry;

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    /// Taken out to restart the sim with other faults.
    sim: std::sync::Mutex<Option<SimServer>>,
    kubeconfig: PathBuf,
    context: PathBuf,
    digest: String,
    state: Arc<DirStore>,
    retry: RetryConfig,
}

/// A sim with `rules` injected (the namespace is made before they apply),
/// a rendered weather context, a directory state store for the stage.
async fn setup(rules: &[&str]) -> Env {
    setup_with(rules, Duration::from_millis(800)).await
}

fn sim_config(root: &Path, rules: &[&str], build_duration: Duration) -> SimConfig {
    let mut config = SimConfig::new(root.join("sim"), "dev");
    config.faults =
        Faults { inject: rules.iter().map(|r| r.parse::<FaultRule>().unwrap()).collect(), ..Faults::default() };
    // Namespace creation is setup, not under test.
    config.faults.inject.iter_mut().for_each(|r| {
        if r.on.is_none() {
            r.on = Some(format!("*@{NS}").parse().unwrap());
        }
    });
    config.build_duration = build_duration;
    config
}

async fn setup_with(rules: &[&str], build_duration: Duration) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let sim = sim::start(sim_config(&root, rules, build_duration)).await.unwrap();
    let kubeconfig = support::sim::kubeconfig_file(&sim, &root);
    kubectl(&kubeconfig, &["create", "namespace", NS]);
    let (context, digest) = weather_context(&root);
    let state = Arc::new(DirStore::new(root.join("state")));
    // Short waits so a test takes seconds; the attempts are the defaults.
    let retry = RetryConfig {
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(1),
        ..RetryConfig::default()
    };
    Env { root, sim: std::sync::Mutex::new(Some(sim)), kubeconfig, context, digest, state, retry, _tmp: tmp }
}

/// kubectl against the sim; the faults apply to it too, so a failed call is
/// repeated (kubectl itself does not retry 5xx).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    support::kubectl::at(kubeconfig).retrying(args)
}

impl Env {
    fn clusters(&self) -> Arc<Clusters> {
        Arc::new(
            Clusters::new(pipeline().spec.environments.clone(), Some(self.kubeconfig.clone())).with_retry(self.retry),
        )
    }

    async fn build(&self, run_id: &str) -> Result<Outputs, StageError> {
        let cx = context::stage(&pipeline(), "build", &self.root)
            .run_id(run_id)
            .workspace(self.root.join("ws"))
            .outputs("render", render_outputs(&self.context, &self.digest))
            .clusters(self.clusters())
            .state(self.state.clone());
        if self.state.get_run(&cx.run_key()).await.unwrap().is_none() {
            self.state.create_run(&cx.record()).await.unwrap();
        }
        let with = json!({ "environment": "dev" }).as_object().cloned().unwrap();
        context::run_with(&cx.build(), with).await
    }

    fn builds(&self) -> Vec<String> {
        kubectl(&self.kubeconfig, &["get", "builds", "-n", NS, "-o", "name"]).lines().map(str::to_string).collect()
    }

    /// The sim's `/sim/faults` report, read in-process.
    fn injected(&self) -> Value {
        let sim = self.sim.lock().unwrap();
        let api = sim.as_ref().unwrap().api();
        api.fault_counters.report(&api.faults)
    }

    fn total(&self) -> u64 {
        self.injected()["injected"].as_object().unwrap().values().filter_map(Value::as_u64).sum()
    }
}

/// Builds once under `rules`: success, exactly one Build, faults injected.
async fn build_survives(rules: &[&str]) -> Env {
    let env = setup(rules).await;
    let out = env.build("run-1").await.unwrap_or_else(|e| panic!("{rules:?}: {e}"));
    assert_eq!(out["buildName"], json!("weather-1"), "{rules:?}");
    assert!(out["imageDigest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(env.builds(), vec!["build.build.openshift.io/weather-1"], "{rules:?}: one Build, never two");
    let report = env.injected();
    // The same counts over HTTP, as `modelship sim serve` users read them.
    let served: Value = serde_json::from_str(&kubectl(&env.kubeconfig, &["get", "--raw", "/sim/faults"])).unwrap();
    assert_eq!(served["injected"], report["injected"]);
    println!("faults: build {rules:?} injected {} survived: {}", report["injected"], report["rules"]);
    assert!(env.total() > 0, "{rules:?}: nothing was injected: {report}");
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_503_every_third_request() {
    build_survives(&["503/3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_500_every_fourth_request() {
    build_survives(&["500/4"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_429_with_retry_after() {
    let env = build_survives(&["429+1/3"]).await;
    assert!(env.injected()["injected"]["429"].as_u64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_dropped_connections() {
    build_survives(&["drop/4"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_delays() {
    build_survives(&["delay+150ms/2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_cut_watches() {
    let env = build_survives(&["cut-watch=builds.build.openshift.io"]).await;
    assert!(env.injected()["injected"]["cut-watch"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_409_on_updates() {
    build_survives(&["conflict/2"]).await;
}

/// The POST that starts the build is applied but its answer is lost, then
/// the next one fails with 503: the stage finds the Build it started rather
/// than starting a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_instantiatebinary_answer_does_not_start_a_second_build() {
    let env = build_survives(&["lose*1=buildconfigs/instantiatebinary.build.openshift.io"]).await;
    assert_eq!(env.injected()["injected"]["lose"], 1);
    let env = build_survives(&["503*2=buildconfigs/instantiatebinary.build.openshift.io"]).await;
    assert_eq!(env.injected()["injected"]["503"], 2);
}

/// Everything at once, including lost answers on every kind of write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_survives_every_fault_kind_at_once() {
    build_survives(&["cut-watch", "conflict/3", "lose/5", "503/7", "500/11", "429/9", "drop/13", "delay+50ms/6"]).await;
}

/// Run records and the promotion ledger in ConfigMaps, 20 writers at once,
/// every kind of fault on configmaps: no entry lost, none recorded twice
/// (a lost answer to a compare-and-swap write must not be applied again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_store_and_ledger_survive_faults_without_loss_or_duplicates() {
    // About one request in four fails; 20 writers make them land at random
    // on each other's retries, so the budget is raised from 6 to 10 attempts
    // (a default run meets far fewer faults).
    let mut env = setup(&["conflict/5", "lose/11", "503/17", "500/19", "429+1/23", "drop/29", "delay+20ms/13"]).await;
    env.retry.attempts = 10;
    let client = env.clusters().client("dev").await.unwrap();
    let store = Arc::new(ConfigMapStore::new(client, NS, "dev"));
    let writers = 20;
    let mut tasks = Vec::new();
    for i in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("run-{i}");
            let record = RunRecord {
                run_id: id.clone(),
                pipeline: "weather".into(),
                model: "weather".into(),
                pipeline_digest: "sha256:abc".into(),
                status: Status::Running,
                created: "2026-01-01T00:00:00Z".into(),
                updated: "2026-01-01T00:00:00Z".into(),
                stages: vec![StageRecord {
                    name: "build".into(),
                    uses: "openshift-build".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            store.create_run(&record).await.unwrap_or_else(|e| panic!("create {id}: {e}"));
            let key = RunKey { pipeline: "weather".into(), run_id: id.clone() };
            store
                .update_run(&key, &mut |r| {
                    r.status = Status::Succeeded;
                    Ok(())
                })
                .await
                .unwrap_or_else(|e| panic!("update {id}: {e}"));
            store
                .update_ledger("weather", &mut |l| {
                    l.limit = 200;
                    l.record(entry(&id));
                    Ok(())
                })
                .await
                .unwrap_or_else(|e| panic!("ledger {id}: {e}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ledger = store.get_ledger("weather").await.unwrap();
    let ids: BTreeSet<String> = ledger.history.iter().map(|e| e.run_id.clone()).collect();
    assert_eq!(ids.len(), writers, "no entry lost");
    assert_eq!(ledger.history.len(), writers, "no entry recorded twice");
    let runs = store.list_runs(Some("weather")).await.unwrap();
    assert_eq!(runs.len(), writers);
    assert!(runs.iter().all(|r| r.status == Status::Succeeded));
    let report = env.injected();
    println!(
        "faults: state store, {writers} writers, entries lost 0, duplicated 0, injected {} survived: {}",
        report["injected"], report["rules"]
    );
    for kind in ["503", "500", "429", "drop", "lose", "conflict", "delay"] {
        assert!(report["injected"][kind].as_u64().unwrap() > 0, "{kind} never fired: {report}");
    }
}

/// 100% 503: the stage gives up after its budget, naming resource,
/// namespace, verb, last status and the attempts; nothing was built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_names_resource_namespace_verb_and_status() {
    let env = setup(&["503=imagestreams.image.openshift.io"]).await;
    let err = env.build("run-1").await.unwrap_err();
    let msg = err.to_string();
    println!("exhausted: {msg}");
    assert!(msg.contains("cannot get imagestreams.image.openshift.io/weather in namespace models-dev"), "{msg}");
    assert!(msg.contains("503") && msg.contains("gave up after 6 attempts"), "{msg}");
    assert!(msg.contains("GET /apis/image.openshift.io/v1/namespaces/models-dev/imagestreams/weather"), "{msg}");
    assert_eq!(env.injected()["injected"]["503"], 6);

    // The start itself: 503 every time; it looks for a Build after each, finds none.
    let env = setup(&["503=buildconfigs/instantiatebinary.build.openshift.io"]).await;
    let msg = env.build("run-1").await.unwrap_err().to_string();
    println!("exhausted: {msg}");
    assert!(
        msg.contains("cannot start a build of buildconfigs.build.openshift.io/weather in namespace models-dev"),
        "{msg}"
    );
    assert!(msg.contains("503") && msg.contains("gave up after 6 attempts"), "{msg}");
    assert!(env.builds().is_empty(), "no Build was started");

    // Connections dropped every time: the transport error, with the attempts.
    let env = setup(&["drop=buildconfigs.build.openshift.io"]).await;
    let msg = env.build("run-1").await.unwrap_err().to_string();
    println!("exhausted: {msg}");
    assert!(msg.contains("buildconfigs.build.openshift.io/weather") && msg.contains(NS), "{msg}");
    assert!(msg.contains("no answer after 6 attempts"), "{msg}");

    // The promotion ledger: the state store's error names the ConfigMap.
    let env = setup(&["503=configmaps"]).await;
    let store = ConfigMapStore::new(env.clusters().client("dev").await.unwrap(), NS, "dev");
    let msg = store
        .update_ledger("weather", &mut |l| {
            l.record(entry("run-1"));
            Ok(())
        })
        .await
        .unwrap_err()
        .to_string();
    println!("exhausted: {msg}");
    assert!(msg.contains("ledger of model weather (configmap modelship-ledger-weather)"), "{msg}");
    assert!(msg.contains(NS) && msg.contains("gave up after 6 attempts") && msg.contains("GET "), "{msg}");
    assert!(msg.contains("ServiceUnavailable") || msg.contains("503"), "{msg}");
}

/// A POST that is not named (generateName) is not repeated on a 503: the
/// layer cannot tell whether it was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_without_a_name_is_not_repeated_on_503() {
    let env = setup(&["503*1=configmaps:create"]).await;
    let client = env.clusters().client("dev").await.unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, NS);
    let cm = serde_json::from_value(json!({"metadata": {"generateName": "x-"}, "data": {"k": "v"}})).unwrap();
    let err = api.create(&Default::default(), &cm).await.unwrap_err();
    assert!(matches!(&err, kube::Error::Api(s) if s.code == 503), "{err}");
    // A named one is: the 503 above was the only one to inject.
    let env = setup(&["503*1=configmaps:create"]).await;
    let client = env.clusters().client("dev").await.unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, NS);
    let cm = serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"k": "v"}})).unwrap();
    api.create(&Default::default(), &cm).await.unwrap();
    assert_eq!(env.injected()["injected"]["503"], 1);
}

/// A DELETE applied but unanswered: the repeat finds nothing, which is the
/// success it was after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delete_answer_is_a_success() {
    let env = setup(&["lose*1=configmaps:delete"]).await;
    let client = env.clusters().client("dev").await.unwrap();
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, NS);
    let cm = serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"k": "v"}})).unwrap();
    api.create(&Default::default(), &cm).await.unwrap();
    api.delete("x", &Default::default()).await.unwrap();
    assert!(api.get_opt("x").await.unwrap().is_none());
    assert_eq!(env.injected()["injected"]["lose"], 1);
}

/// The API server goes bad while the stage follows its Build (the sim
/// restarts, on the same port and data, answering every list of Builds
/// 503): the stage gives up after its budget, naming the Build; it started
/// one Build and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_cannot_be_followed_gives_up_naming_it() {
    let env = setup_with(&[], Duration::from_secs(20)).await;
    let run = env.build("run-1");
    tokio::pin!(run);
    let key = RunKey { pipeline: "weather".into(), run_id: "run-1".into() };
    loop {
        tokio::select! {
            r = &mut run => panic!("the stage ended before the sim went bad: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                let rec = env.state.get_run(&key).await.unwrap().unwrap();
                if rec.stages[0].checkpoints.contains_key("buildName") { break; }
            }
        }
    }
    let old = env.sim.lock().unwrap().take().unwrap();
    let addr = old.addr;
    old.shutdown().await;
    // Lists and watches both: a watch resumed from its resourceVersion
    // follows the Build without a list.
    let rules = ["503=builds.build.openshift.io:list", "503=builds.build.openshift.io:watch"];
    let mut config = sim_config(&env.root, &rules, Duration::from_secs(20));
    config.listen = addr;
    *env.sim.lock().unwrap() = Some(sim::start(config).await.unwrap());
    let msg = run.await.unwrap_err().to_string();
    println!("exhausted: {msg}");
    assert!(msg.contains("cannot list builds.build.openshift.io/weather-1 in namespace models-dev"), "{msg}");
    assert!(msg.contains("gave up after 6 attempts") && msg.contains("503"), "{msg}");
    let injected = env.injected()["injected"]["503"].as_u64().unwrap();
    // 10 watch attempts of 6 requests each; the first may have met the restart instead.
    assert!((54..=60).contains(&injected), "{injected}");
    let builds = env.sim.lock().unwrap().as_ref().unwrap().api().store.list(&openshift_sim::build::BUILDS, Some(NS)).0;
    assert_eq!(builds.len(), 1);
}

/// The runner dies right after its POST was applied and its answer lost
/// (before it could look for the Build or record it): the next attempt of
/// the same run finds that Build by its revision message and attaches to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_killed_after_a_lost_start_attaches_to_that_build() {
    // The third list of Builds is the look-up after the lost POST (the
    // first two come before it); delaying it leaves time to kill the runner.
    let env = setup_with(
        &["lose*1=buildconfigs/instantiatebinary.build.openshift.io", "delay+3s/3*1=builds.build.openshift.io:list"],
        Duration::from_secs(2),
    )
    .await;
    {
        let run = env.build("run-1");
        tokio::pin!(run);
        loop {
            tokio::select! {
                r = &mut run => panic!("the stage ended before the runner was killed: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if env.injected()["injected"]["delay"] == 1 { break; }
                }
            }
        }
        // Dropped here: the runner is gone, its Build unrecorded and unannotated.
    }
    let builds =
        || env.sim.lock().unwrap().as_ref().unwrap().api().store.list(&openshift_sim::build::BUILDS, Some(NS)).0;
    assert_eq!(builds().len(), 1, "the lost POST did start a Build");
    assert!(builds()[0].pointer("/metadata/annotations/modelship.io~1run").is_none());
    let out = env.build("run-1").await.unwrap();
    assert_eq!(out["buildName"], json!("weather-1"));
    assert_eq!(env.builds(), vec!["build.build.openshift.io/weather-1"], "one Build, never two");
}
