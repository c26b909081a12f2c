//! The ConfigMap/Lease state backend through the kube client against the
//! simulated API server on 127.0.0.1: records, optimistic concurrency under
//! many writers, the ledger's bound, and the per-model lock.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams};
use modelship::state::configmap::{
    ConfigMapStore, LEDGER_KEY, LEDGER_MAX_BYTES, RUN_KEY, ledger_configmap_name, lock_lease_name, run_configmap_name,
};
use modelship::state::{RunKey, RunRecord, StageRecord, StateError, StateStore, Status};
use openshift_sim::{self as sim, SimConfig, SimServer};

use support::records::entry;

const NS: &str = "models-dev";

struct Fixture {
    server: SimServer,
    client: kube::Client,
    store: Arc<ConfigMapStore>,
    _dir: tempfile::TempDir,
}

async fn fixture_with(config: impl FnOnce(&mut SimConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SimConfig::new(dir.path().join("data"), "dev");
    config(&mut cfg);
    let server = sim::start(cfg).await.unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig()).unwrap();
    let client =
        kube::Client::try_from(kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap()).unwrap();
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": NS}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let store = Arc::new(ConfigMapStore::new(client.clone(), NS, "dev"));
    Fixture { server, client, store, _dir: dir }
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

fn run(pipeline: &str, model: &str, id: &str, created: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        pipeline: pipeline.into(),
        model: model.into(),
        pipeline_digest: "sha256:abc".into(),
        status: Status::Running,
        created: created.into(),
        updated: created.into(),
        stages: vec![StageRecord { name: "fetch".into(), uses: "fetch-model".into(), ..Default::default() }],
        ..Default::default()
    }
}

fn key(pipeline: &str, id: &str) -> RunKey {
    RunKey { pipeline: pipeline.into(), run_id: id.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_records_create_get_update_list() {
    let f = fixture().await;
    let s = &f.store;
    let r1 = run("weather", "weather", "r1", "2026-01-01T00:00:01Z");
    s.create_run(&r1).await.unwrap();
    s.create_run(&run("weather", "weather", "r2", "2026-01-01T00:00:02Z")).await.unwrap();
    s.create_run(&run("Other Pipeline", "other", "R_3", "2026-01-01T00:00:03Z")).await.unwrap();
    assert!(matches!(s.create_run(&r1).await, Err(StateError::AlreadyExists { .. })));

    assert_eq!(s.get_run(&key("weather", "r1")).await.unwrap(), Some(r1.clone()));
    assert_eq!(s.get_run(&key("weather", "nope")).await.unwrap(), None);
    assert!(matches!(s.update_run(&key("weather", "nope"), &mut |_| Ok(())).await, Err(StateError::NotFound { .. })));

    let updated = s
        .update_run(&key("weather", "r1"), &mut |r| {
            r.stages[0].status = Status::Succeeded;
            r.stages[0].attempts += 1;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(updated.stages[0].status, Status::Succeeded);
    assert_eq!(s.get_run(&key("weather", "r1")).await.unwrap(), Some(updated));
    // A mutation's refusal is passed through and nothing is written.
    let refused = s.update_run(&key("weather", "r1"), &mut |_| Err(StateError::Rejected("no".into()))).await;
    assert!(matches!(refused, Err(StateError::Rejected(_))));

    let all: Vec<String> = s.list_runs(None).await.unwrap().into_iter().map(|r| r.run_id).collect();
    assert_eq!(all, ["R_3", "r2", "r1"], "newest first");
    let weather: Vec<String> = s.list_runs(Some("weather")).await.unwrap().into_iter().map(|r| r.run_id).collect();
    assert_eq!(weather, ["r2", "r1"]);

    // What is in the cluster: one labelled ConfigMap per run, YAML inside.
    let cms: Api<ConfigMap> = Api::namespaced(f.client.clone(), NS);
    let cm = cms.get(&run_configmap_name("weather", "r1")).await.unwrap();
    let labels = cm.metadata.labels.unwrap();
    assert_eq!(labels["modelship.io/pipeline"], "weather");
    assert_eq!(labels["modelship.io/model"], "weather");
    assert_eq!(labels["modelship.io/run"], "r1");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "modelship");
    assert!(cm.data.unwrap()[RUN_KEY].contains("runId: r1"));
    let listed = cms.list(&ListParams::default().labels("modelship.io/run=R_3")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    f.server.shutdown().await;
}

/// Guards "no lost update": 20 writers each add their own stage to one
/// record at the same time; every one must be there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_run_updates_lose_nothing() {
    let f = fixture().await;
    f.store.create_run(&run("weather", "weather", "r1", "2026-01-01T00:00:00Z")).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .update_run(&key("weather", "r1"), &mut |r| {
                    r.stages.push(StageRecord { name: format!("s{i}"), uses: "render".into(), ..Default::default() });
                    r.params.insert(format!("p{i}"), i.to_string());
                    Ok(())
                })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = f.store.get_run(&key("weather", "r1")).await.unwrap().unwrap();
    let names: BTreeSet<String> = r.stages.iter().map(|s| s.name.clone()).collect();
    assert_eq!(names.len(), 21, "fetch + 20 added: {names:?}");
    assert_eq!(r.params.len(), 20);
    f.server.shutdown().await;
}

/// Guards the promotion ledger: 100 runners recording at once lose no entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_ledger_writers_lose_no_entry() {
    let f = fixture().await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .update_ledger("weather", &mut |l| {
                    l.limit = 200;
                    l.record(entry(&format!("run-{i}")));
                    Ok(())
                })
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ledger = f.store.get_ledger("weather").await.unwrap();
    let ids: BTreeSet<String> = ledger.history.iter().map(|e| e.run_id.clone()).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(ledger.history.len(), 100, "no entry recorded twice");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_is_bounded_by_count_and_far_below_a_mebibyte() {
    let f = fixture().await;
    assert_eq!(f.store.get_ledger("weather").await.unwrap().history.len(), 0, "absent ledger reads as empty");
    for i in 0..60 {
        f.store
            .update_ledger("weather", &mut |l| {
                l.record(entry(&format!("r{i}")));
                Ok(())
            })
            .await
            .unwrap();
    }
    let l = f.store.get_ledger("weather").await.unwrap();
    assert_eq!(l.history.len(), l.limit, "trimmed to the default limit");
    assert_eq!(l.history.first().unwrap().run_id, "r10", "oldest dropped first");
    assert_eq!(l.current["prod"].run_id, "r59");

    // Large check results: trimmed by size, newest kept.
    for i in 0..15 {
        f.store
            .update_ledger("big", &mut |l| {
                let mut e = entry(&format!("b{i}"));
                e.checks = Some(serde_json::json!({ "report": "x".repeat(30_000) }));
                l.record(e);
                Ok(())
            })
            .await
            .unwrap();
    }
    let cm = Api::<ConfigMap>::namespaced(f.client.clone(), NS).get(&ledger_configmap_name("big")).await.unwrap();
    let yaml_len = cm.data.as_ref().unwrap()[LEDGER_KEY].len();
    assert!(yaml_len <= LEDGER_MAX_BYTES && LEDGER_MAX_BYTES <= 1024 * 1024 / 4, "{yaml_len} bytes");
    let l = f.store.get_ledger("big").await.unwrap();
    assert!(l.history.len() < 15, "{}", l.history.len());
    assert_eq!(l.history.last().unwrap().run_id, "b14");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_excludes_others_and_is_taken_over_only_after_expiry() {
    let f = fixture().await;
    let s = &f.store;
    let long = Duration::from_secs(60);
    let a = s.try_lock("weather", "runner-a", long).await.unwrap();
    assert_eq!(a.holder, "runner-a");
    match s.try_lock("weather", "runner-b", long).await {
        Err(StateError::Locked { holder, .. }) => assert_eq!(holder, "runner-a"),
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(matches!(s.renew_lock("weather", "runner-b", long).await, Err(StateError::Locked { .. })));
    // Releasing someone else's lock does nothing.
    s.release_lock("weather", "runner-b").await.unwrap();
    assert!(matches!(s.try_lock("weather", "runner-b", long).await, Err(StateError::Locked { .. })));
    let renewed = s.renew_lock("weather", "runner-a", long).await.unwrap();
    assert_eq!(renewed.acquired, a.acquired, "renewing keeps the acquire time");
    s.release_lock("weather", "runner-a").await.unwrap();
    assert!(
        Api::<Lease>::namespaced(f.client.clone(), NS).get_opt(&lock_lease_name("weather")).await.unwrap().is_none()
    );

    // A holder that stops renewing loses the lock once its TTL has passed.
    s.try_lock("weather", "runner-b", Duration::from_secs(1)).await.unwrap();
    assert!(matches!(s.try_lock("weather", "runner-c", long).await, Err(StateError::Locked { .. })));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let c = s.try_lock("weather", "runner-c", long).await.unwrap();
    assert_eq!(c.holder, "runner-c");
    let lease = Api::<Lease>::namespaced(f.client.clone(), NS).get(&lock_lease_name("weather")).await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("runner-c"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert_eq!(spec.lease_duration_seconds, Some(60));
    f.server.shutdown().await;
}

/// Many runners racing for a free lock: exactly one gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lock_attempts_admit_exactly_one() {
    let f = fixture().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            store.try_lock("weather", &format!("runner-{i}"), Duration::from_secs(60)).await
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(info) => winners.push(info.holder),
            Err(StateError::Locked { .. }) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    f.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_status_stays_reachable_in_errors() {
    // A namespace that does not exist: 404 from the server.
    let f = fixture().await;
    let missing = ConfigMapStore::new(f.client.clone(), "no-such-ns", "dev");
    let err = missing.create_run(&run("weather", "weather", "r1", "2026-01-01T00:00:00Z")).await.unwrap_err();
    let status = err.kube_status().expect("a Kube error");
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(
        err.to_string(),
        "run weather/r1 (configmap modelship-run-weather-r1) in configmaps in dev/no-such-ns: namespaces \"no-such-ns\" not found (NotFound, HTTP 404)"
    );
    f.server.shutdown().await;

    // No permission on configmaps: 403.
    let f = fixture_with(|c| c.faults.forbidden = vec!["configmaps".parse().unwrap()]).await;
    let err = f.store.get_ledger("weather").await.unwrap_err();
    assert_eq!(err.kube_status().map(|s| s.code), Some(403));
    f.server.shutdown().await;
}
