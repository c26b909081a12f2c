//! Approval policies and the per-model run lock, end to end: the real
//! `modelship` binary runs a check-and-promote pipeline against two
//! in-process sims (dev holds the run state in ConfigMaps and the locks in
//! Leases) as the `modelship` ServiceAccount of each namespace with exactly
//! the shipped Role (`.tekton/rbac/modelship.yaml`: the run lock's Lease,
//! the watch on the run's ConfigMap), and people decide with `modelship
//! approve|reject` under their own ServiceAccount tokens, so the sim's
//! SelfSubjectReview names them.
//!
//! Nothing here waits on a clock: a test waits for a record to reach a
//! state (bounded by the run process, which fails the test if it ends
//! first), and ordering is read from the records and the audit log.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};

use modelship::state::configmap::{ConfigMapStore, run_configmap_name, scoped_lease_name};
use modelship::state::{LockScope, RunKey, RunRecord, StateStore, Status};
use openshift_sim::SimServer;
use serde_json::Value;
use support::cli::modelship;
use support::env::{DevProd, push_image};
use support::text;

/// The runner's identity in dev, where the run state is.
const RUNNER: &str = "system:serviceaccount:models-dev:modelship";
const ROLE: &str = include_str!("../.tekton/rbac/modelship.yaml");
const ALICE: &str = "system:serviceaccount:reviewers:alice";
const BOB: &str = "system:serviceaccount:leads:bob";
const MALLORY: &str = "system:serviceaccount:others:mallory";

struct Fixture {
    env: DevProd,
    /// The test's own reads, as `system:admin` (so the audit log tells them
    /// from the runner's).
    admin: modelship::cluster::Clusters,
    /// The model server the check stage asks.
    endpoint: String,
    server: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start() -> Fixture {
        let env = DevProd::new(&support::env::promote_pipeline()).await;
        for (ns, name) in [("reviewers", "alice"), ("leads", "bob"), ("others", "mallory")] {
            // May update run records, as a team's reviewers would.
            for sim in [env.dev(), env.prod()] {
                sim.ensure_service_account(ns, name, Some("cluster-admin")).unwrap();
            }
            let entries =
                [env.dev(), env.prod()].map(|sim: &SimServer| sim.service_account_entry(ns, name, 24 * 3600).unwrap());
            std::fs::write(env.dir.path().join(format!("{name}.kubeconfig")), openshift_sim::kubeconfig_yaml(&entries))
                .unwrap();
        }
        let admin_kubeconfig = env.dir.path().join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            openshift_sim::kubeconfig_yaml(&[env.dev().admin_entry(), env.prod().admin_entry()]),
        )
        .unwrap();
        let admin = modelship::cluster::Clusters::new(env.clusters.environments().clone(), Some(admin_kubeconfig));
        // The runner as an administrator sets it up: the shipped RBAC in
        // each namespace, a token of its ServiceAccount there.
        let docs: Vec<Value> = modelship::spec::yaml::from_str_multi(ROLE).unwrap();
        for (name, ns) in [("dev", "models-dev"), ("prod", "models-prod")] {
            let client = admin.client(name).await.unwrap();
            for doc in &docs {
                modelship::cluster::apply_manifest(&client, ns, doc).await.unwrap();
            }
        }
        let runner = [(env.dev(), "models-dev"), (env.prod(), "models-prod")]
            .map(|(sim, ns)| sim.service_account_entry(ns, "modelship", 24 * 3600).unwrap());
        std::fs::write(env.dir.path().join("runner.kubeconfig"), openshift_sim::kubeconfig_yaml(&runner)).unwrap();
        let (endpoint, server) = support::env::model_server("mild").await;
        Fixture { env, admin, endpoint, server }
    }

    fn dir(&self) -> &Path {
        self.env.dir.path()
    }

    fn kubeconfig(&self, who: &str) -> PathBuf {
        self.dir().join(format!("{who}.kubeconfig"))
    }

    /// Push an image of `model` into dev's registry; its digest.
    async fn push(&self, model: &str) -> String {
        let layers = vec![format!("layer of {model}").repeat(100).into_bytes()];
        let config = format!(r#"{{"architecture":"amd64","os":"linux","model":"{model}"}}"#).into_bytes();
        push_image(self.env.dev(), &format!("models-dev/{model}"), "latest", &layers, &config).await
    }

    /// Pipeline `name` of `model`: a check, then a promotion of `digest`
    /// with `approval` (YAML flow, or none).
    fn pipeline(&self, name: &str, model: &str, digest: &str, approval: Option<&str>) -> PathBuf {
        let approval = approval.map(|a| format!(", approval: {a}")).unwrap_or_default();
        let yaml = format!(
            r#"apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{ name: {name} }}
spec:
  model: {{ name: {model}, source: "file://model" }}
  environments:
    dev: {{ context: dev, namespace: models-dev }}
    prod: {{ context: prod, namespace: models-prod }}
  stages:
    - name: check
      uses: prediction-check
      with:
        endpoint: "{endpoint}"
        cases:
          - request: {{ data: {{ names: [temperature], ndarray: ["55"] }} }}
            expect: {{ meta.tags.weather_state: mild }}
    - name: promote
      uses: promote
      with: {{ from: dev, to: prod, digest: "{digest}", imageStream: false, lockWait: 0s{approval} }}
"#,
            endpoint = self.endpoint
        );
        let path = self.dir().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// `modelship run FILE --kubeconfig RUNNER ARGS...`, started.
    fn spawn(&self, file: &Path, args: &[&str]) -> Child {
        modelship()
            .args(["--log-format", "text", "run"])
            .arg(file)
            .arg("--kubeconfig")
            .arg(self.kubeconfig("runner"))
            .args(args)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// As run `run_id`, started.
    fn spawn_run(&self, file: &Path, run_id: &str, args: &[&str]) -> Child {
        self.spawn(file, &[&["--run-id", run_id], args].concat())
    }

    fn run(&self, file: &Path, run_id: &str, args: &[&str]) -> Output {
        self.spawn_run(file, run_id, args).wait_with_output().unwrap()
    }

    fn resume(&self, file: &Path, run_id: &str, args: &[&str]) -> Output {
        self.spawn(file, &[&["--resume", run_id], args].concat()).wait_with_output().unwrap()
    }

    /// `modelship approve|reject RUN -f FILE --kubeconfig WHO's ARGS...`.
    fn decide(&self, verb: &str, who: &str, file: &Path, run_id: &str, args: &[&str]) -> Output {
        modelship()
            .args([verb, run_id, "-f"])
            .arg(file)
            .arg("--kubeconfig")
            .arg(self.kubeconfig(who))
            .args(args)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn store(&self, env: &str) -> ConfigMapStore {
        let rt = tokio::runtime::Handle::current();
        let client = tokio::task::block_in_place(|| rt.block_on(self.admin.client(env))).unwrap();
        ConfigMapStore::new(client, format!("models-{env}"), env)
    }

    async fn record(&self, pipeline: &str, run_id: &str) -> Option<RunRecord> {
        let key = RunKey { pipeline: pipeline.into(), run_id: run_id.into() };
        self.store("dev").get_run(&key).await.unwrap()
    }

    /// Wait for the run to park at its gate (the record says
    /// waiting-approval); fails if the process ends first.
    async fn parked(&self, child: &mut Child, pipeline: &str, run_id: &str) -> RunRecord {
        loop {
            if let Some(r) = self.record(pipeline, run_id).await
                && r.status == Status::WaitingApproval
            {
                return r;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("run {run_id} ended ({status}) before its approval gate:\n{err}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// The run lock's Lease of `model` in dev, if any.
    async fn run_lease(&self, model: &str) -> Option<k8s_openapi::api::coordination::v1::Lease> {
        let client = self.admin.client("dev").await.unwrap();
        let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client, "models-dev");
        api.get_opt(&scoped_lease_name(LockScope::Run, model)).await.unwrap()
    }

    async fn stop(self) {
        self.server.abort();
        self.env.stop().await;
    }
}

fn finished(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
}

/// Audit events of the dev sim, in the order requests arrived.
fn audit(sim: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(sim.join("audit.log")).unwrap();
    let mut events: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    events.sort_by(|a, b| a["requestReceivedTimestamp"].as_str().cmp(&b["requestReceivedTimestamp"].as_str()));
    events
}

fn about(e: &Value, user: &str, verb: &str) -> bool {
    e["user"]["username"] == user && e["verb"] == verb && e["objectRef"]["resource"] == "configmaps"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_approvers_each_once_not_the_starter_and_the_gate_watches() {
    let f = Fixture::start().await;
    let digest = f.push("weather").await;
    let policy = format!(
        "{{ required: 2, approvers: [\"{ALICE}\", \"{RUNNER}\", \"group:system:serviceaccounts:leads\"], forbidSelfApproval: true, timeout: 2m }}"
    );
    let file = f.pipeline("weather", "weather", &digest, Some(&policy));
    let mut run = f.spawn_run(&file, "gated-1", &[]);
    let parked = f.parked(&mut run, "weather", "gated-1").await;
    assert_eq!(parked.started_by.as_deref(), Some(RUNNER), "the starter is the runner's SelfSubjectReview user");
    let gate = parked.approval.unwrap();
    assert_eq!(gate.policy.as_ref().map(|p| p.required), Some(2));
    let cm = run_configmap_name("weather", "gated-1");
    let is_watch = |e: &Value| {
        about(e, RUNNER, "watch")
            && e["requestURI"].as_str().unwrap().contains(&format!("fieldSelector=metadata.name%3D{cm}"))
    };
    // Decisions come once the run watches (the audit log has a watch when
    // it starts); bounded by the run, which ends when its gate times out.
    while !audit(&f.dir().join("dev")).iter().any(is_watch) {
        assert!(run.try_wait().unwrap().is_none(), "the run ended before it watched its record");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Refused, exit 2, nothing recorded: the starter (forbidSelfApproval).
    let out = f.decide("approve", "runner", &file, "gated-1", &[]);
    assert_exit(&out, 2, "the starter approves");
    assert!(text(&out.stderr).contains("may not approve it (forbidSelfApproval)"), "{}", text(&out.stderr));

    let out = f.decide("approve", "alice", &file, "gated-1", &["--comment", "report read"]);
    assert_exit(&out, 0, "alice approves");
    assert!(text(&out.stdout).contains("(1 of 2; waiting for 1 more)"), "{}", text(&out.stdout));
    // Refused, exit 2, nothing recorded: alice again; not an approver; a
    // `--by` that is not who the cluster says.
    let out = f.decide("approve", "alice", &file, "gated-1", &[]);
    assert_exit(&out, 2, "alice approves again");
    assert!(text(&out.stderr).contains("has approved run gated-1 already"), "{}", text(&out.stderr));
    let out = f.decide("approve", "mallory", &file, "gated-1", &[]);
    assert_exit(&out, 2, "mallory approves");
    assert!(text(&out.stderr).contains(&format!("`{MALLORY}` may not decide on run gated-1")), "{}", text(&out.stderr));
    let out = f.decide("approve", "mallory", &file, "gated-1", &["--by", BOB]);
    assert_exit(&out, 2, "mallory claims to be bob");
    assert!(text(&out.stderr).contains(&format!("the cluster identifies you as `{MALLORY}`")), "{}", text(&out.stderr));
    // Still waiting after one approval of two.
    let record = f.record("weather", "gated-1").await.unwrap();
    assert_eq!((record.status, record.approval.unwrap().approvals.len()), (Status::WaitingApproval, 1));

    // Bob is an approver through his group.
    let out = f.decide("approve", "bob", &file, "gated-1", &["--comment", "ship it"]);
    assert_exit(&out, 0, "bob approves");
    assert!(text(&out.stdout).contains("approved run gated-1"), "{}", text(&out.stdout));
    let out = finished(run);
    assert_exit(&out, 0, "the approved run");

    let record = f.record("weather", "gated-1").await.unwrap();
    assert_eq!(record.status, Status::Succeeded);
    let gate = record.approval.unwrap();
    assert_eq!(gate.decision, "approved");
    let votes: Vec<(&str, Option<&str>)> =
        gate.approvals.iter().map(|v| (v.by.as_str(), v.comment.as_deref())).collect();
    assert_eq!(votes, [(ALICE, Some("report read")), (BOB, Some("ship it"))]);
    assert!(gate.approvals[1].groups.iter().any(|g| g == "system:serviceaccounts:leads"), "{:?}", gate.approvals[1]);
    let ledger = f.store("prod").get_ledger("weather").await.unwrap();
    assert_eq!(ledger.current["prod"].digest, digest);
    assert_eq!(ledger.current["prod"].by, format!("{ALICE}, {BOB}"));

    // Finished: no decision is taken any more.
    let out = f.decide("approve", "bob", &file, "gated-1", &[]);
    assert_exit(&out, 2, "approving a finished run");
    assert!(text(&out.stderr).contains("run gated-1 is succeeded and waits for no approval"), "{}", text(&out.stderr));
    let out = f.decide("approve", "bob", &file, "no-such-run", &[]);
    assert_exit(&out, 2, "approving an unknown run");

    // The waiting run watched its ConfigMap: a watch on it by the runner
    // before the first approval, and no read of it by the runner between
    // alice's approval and bob's, while four `modelship approve` commands
    // ran (a poll would have read it over and over).
    let events = audit(&f.dir().join("dev"));
    let watch = events.iter().position(is_watch).expect("the watch is in the audit log");
    let updates: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| [ALICE, BOB].iter().any(|u| about(e, u, "update")) && e["objectRef"]["name"] == cm.as_str())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(updates.len(), 2, "one update per approval");
    assert!(watch < updates[0], "the watch began after the first approval");
    let reads: Vec<&Value> = events[updates[0]..updates[1]]
        .iter()
        .filter(|e| about(e, RUNNER, "get") && e["objectRef"]["name"] == cm.as_str())
        .collect();
    assert!(reads.is_empty(), "the runner read its record while waiting instead of watching it: {reads:#?}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_ends_the_run() {
    let f = Fixture::start().await;
    let digest = f.push("weather").await;
    let file = f.pipeline("weather", "weather", &digest, Some("required"));
    let mut run = f.spawn_run(&file, "gated-2", &[]);
    f.parked(&mut run, "weather", "gated-2").await;
    let out = f.decide("reject", "alice", &file, "gated-2", &["--comment", "wrong data"]);
    assert_exit(&out, 0, "alice rejects");
    let out = finished(run);
    assert_exit(&out, 1, "the rejected run");
    assert!(text(&out.stderr).contains(&format!("was rejected by {ALICE}: wrong data")), "{}", text(&out.stderr));
    let record = f.record("weather", "gated-2").await.unwrap();
    assert_eq!(record.status, Status::Failed);
    // The gate that stopped it, as `/metrics` counts it.
    let stage = record.stages.iter().find(|s| s.status == Status::Failed).unwrap();
    assert_eq!(stage.gate.as_deref(), Some("approval"), "{stage:?}");
    assert_eq!(record.approval.unwrap().decision, "rejected");
    let promoted =
        f.store("prod").get_ledger("weather").await.unwrap().history.iter().filter(|e| e.action == "promoted").count();
    assert_eq!(promoted, 0);
    // Ended: rejecting or approving it again is refused.
    assert_exit(&f.decide("approve", "bob", &file, "gated-2", &[]), 2, "approving a rejected run");
    // The run lock went with the run.
    assert!(f.run_lease("weather").await.is_none());
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn park_then_approve_then_resume_promotes() {
    let f = Fixture::start().await;
    let digest = f.push("weather").await;
    let file = f.pipeline("weather", "weather", &digest, Some("{ required: 1, forbidSelfApproval: true }"));
    let out = f.run(&file, "parked-1", &["--park"]);
    assert_exit(&out, 0, "run --park");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("modelship approve parked-1 -f"), "{stdout}");
    assert!(stdout.contains("--resume parked-1"), "{stdout}");
    let record = f.record("weather", "parked-1").await.unwrap();
    assert_eq!(record.status, Status::WaitingApproval);
    let promote = record.stages.iter().find(|s| s.name == "promote").unwrap();
    assert_eq!(promote.status, Status::WaitingApproval);
    assert!(f.run_lease("weather").await.is_none(), "a parked run holds no run lock");

    // Resumed before anyone approved, with --park: parked again, saying so.
    let out = f.resume(&file, "parked-1", &["--park"]);
    assert_exit(&out, 0, "resume --park without approvals");
    assert!(text(&out.stderr).contains("(0 of 1 approvals)"), "{}", text(&out.stderr));

    assert_exit(&f.decide("approve", "alice", &file, "parked-1", &["--comment", "ok"]), 0, "alice approves");
    // Approved but not resumed: the record waits for its runner.
    assert_eq!(f.record("weather", "parked-1").await.unwrap().approval.unwrap().decision, "approved");
    let out = f.resume(&file, "parked-1", &[]);
    assert_exit(&out, 0, "resume after the approval");
    assert!(text(&out.stdout).contains(&format!("promoted {digest} to prod")), "{}", text(&out.stdout));
    let record = f.record("weather", "parked-1").await.unwrap();
    assert_eq!(record.status, Status::Succeeded);
    let ledger = f.store("prod").get_ledger("weather").await.unwrap();
    assert_eq!((ledger.current["prod"].by.as_str(), ledger.current["prod"].comment.as_deref()), (ALICE, Some("ok")));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_per_model_at_a_time_and_a_dead_holder_is_taken_over() {
    let f = Fixture::start().await;
    let digest = f.push("weather").await;
    let other_digest = f.push("other").await;
    let gated = f.pipeline("weather", "weather", &digest, Some("required"));
    // Another pipeline of the same model, and one of another model.
    let plain = f.pipeline("weather-plain", "weather", &digest, None);
    let other = f.pipeline("other", "other", &other_digest, None);

    let mut first = f.spawn_run(&gated, "first", &[]);
    f.parked(&mut first, "weather", "first").await;
    let lease = f.run_lease("weather").await.expect("the waiting run holds the run lock");
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert!(holder.starts_with("run first of weather"), "{holder}");

    // Same model, fail fast: exit 1, naming the run in the way; nothing recorded.
    let out = f.run(&plain, "second", &["--lock-wait", "0s"]);
    assert_exit(&out, 1, "a second run of the model with --lock-wait 0s");
    assert!(text(&out.stderr).contains("has a run in progress"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("run first of weather"), "{}", text(&out.stderr));
    assert!(f.record("weather-plain", "second").await.is_none());

    // Another model runs to the end meanwhile (the first still waits).
    assert_exit(&f.run(&other, "other-1", &["--lock-wait", "0s"]), 0, "a run of another model");
    assert_eq!(f.record("weather", "first").await.unwrap().status, Status::WaitingApproval);

    // Same model, waiting: it starts only once the first has ended.
    let third = f.spawn_run(&plain, "third", &[]);
    assert_exit(&f.decide("approve", "alice", &gated, "first", &[]), 0, "alice approves the first");
    assert_exit(&finished(first), 0, "the first run");
    let out = finished(third);
    assert_exit(&out, 0, "the third run");
    assert!(text(&out.stderr).contains("held by run first of weather"), "{}", text(&out.stderr));
    let a = f.record("weather", "first").await.unwrap();
    let b = f.record("weather-plain", "third").await.unwrap();
    let last_end = a.stages.iter().filter_map(|s| s.finished.clone()).max().unwrap();
    let first_start = b.stages.iter().filter_map(|s| s.started.clone()).min().unwrap();
    let ts = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
    assert!(ts(&b.created) >= ts(&last_end), "third created {} before first ended {last_end}", b.created);
    assert!(ts(&first_start) >= ts(&last_end), "third started {first_start} before first ended {last_end}");

    // A runner killed while holding the lock: its Lease expires (ttl 2s) and
    // the next run takes it over.
    let mut dead = f.spawn_run(&gated, "dead", &["--lock-ttl", "2s"]);
    f.parked(&mut dead, "weather", "dead").await;
    dead.kill().unwrap();
    dead.wait().unwrap();
    let before = f.run_lease("weather").await.expect("the killed run's lease stays").spec.unwrap();
    assert!(before.holder_identity.unwrap().starts_with("run dead of weather"));
    let out = f.run(&plain, "after", &["--lock-wait", "2m"]);
    assert_exit(&out, 0, "the run after a dead holder");
    assert!(text(&out.stderr).contains("held by run dead of weather"), "{}", text(&out.stderr));
    assert_eq!(f.record("weather-plain", "after").await.unwrap().status, Status::Succeeded);
    f.stop().await;
}
