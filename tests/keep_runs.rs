#![recursion_limit = "256"]

//! `spec.state.keepRuns`: 200 short runs (fetch from files, render) against
//! a `--sim` cluster, as the `modelship` service account with the shipped
//! Role, keep the run ConfigMaps bounded at the default 50 — the newest 50 —
//! while the promotion ledger, the lock Lease and a run still in progress
//! (older than all of them) are left alone.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use modelship::commands::simulated::{SimClusters, SimOptions};
use modelship::engine::{self, RunOptions};
use modelship::state::configmap::{ConfigMapStore, lock_lease_name};
use modelship::state::{DEFAULT_KEEP_RUNS, LedgerEntry, RunKey, RunRecord, StateStore, Status};

const NS: &str = "models-dev";

fn pipeline_yaml(model_dir: &Path, keep: Option<usize>) -> String {
    let state = keep.map(|k| format!("  state: {{keepRuns: {k}}}\n")).unwrap_or_default();
    format!(
        "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{name: weather}}
spec:
  model: {{name: weather, source: 'file://{}/'}}
  environments: {{dev: {{namespace: {NS}}}}}
{state}  stages:
    - {{name: fetch, uses: fetch-model}}
    - {{name: render, uses: render, with: {{modelClass: MyModel}}}}
",
        model_dir.display()
    )
}

async fn admin_client(sims: &SimClusters) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&sims.admin_kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

async fn run_configmaps(client: &kube::Client) -> Vec<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=modelship,modelship.io/record=run");
    api.list(&lp).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_runs_keep_the_newest_fifty_and_the_ledger_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/weather-model");
    let pipeline = dir.path().join("weather.yaml");
    std::fs::write(&pipeline, pipeline_yaml(&model, None)).unwrap();
    let sims = SimClusters::start(&pipeline, &dir.path().join("sim"), &SimOptions::default()).await.unwrap();
    let admin = admin_client(&sims).await;
    let store = ConfigMapStore::new(admin.clone(), NS, "dev");

    // What pruning must leave alone: a ledger, a held lock, and a run that
    // is older than every other but has not ended (a runner may resume it).
    let ledger = store
        .update_ledger("weather", &mut |l| {
            l.record(LedgerEntry {
                action: "promoted".into(),
                environment: "prod".into(),
                digest: format!("sha256:{:0>64}", 1),
                image: "registry.example.com/models/weather@sha256:0".into(),
                at: "2026-01-01T00:00:00Z".into(),
                run_id: "old-promotion".into(),
                by: "tester".into(),
                ..Default::default()
            });
            Ok(())
        })
        .await
        .unwrap();
    store.try_lock("weather", "someone-else", Duration::from_secs(3600)).await.unwrap();
    let in_progress = RunRecord {
        run_id: "20000101-000000-live".into(),
        pipeline: "weather".into(),
        model: "weather".into(),
        pipeline_digest: "sha256:0".into(),
        status: Status::Running,
        created: "2000-01-01T00:00:00Z".into(),
        updated: "2000-01-01T00:00:00Z".into(),
        ..Default::default()
    };
    store.create_run(&in_progress).await.unwrap();

    let runs = 200;
    let mut ids = Vec::new();
    let mut most = 0;
    for i in 0..runs {
        let opts = RunOptions {
            pipeline: pipeline.clone(),
            // Ordered ids, so "newest" does not depend on the clock's resolution.
            run_id: Some(format!("20260101-000000-r{i:03}")),
            kubeconfig: Some(sims.kubeconfig.clone()),
            overrides: sims.overrides.clone(),
            ..Default::default()
        };
        let summary = engine::run(opts).await.unwrap_or_else(|e| panic!("run {i}: {e}"));
        assert_eq!(summary.status, Status::Succeeded);
        ids.push(summary.run_id);
        let count = run_configmaps(&admin).await.len();
        most = most.max(count);
        // The finished runs so far, bounded, plus the one in progress.
        assert_eq!(count, (i + 1).min(DEFAULT_KEEP_RUNS) + 1, "after run {i}");
    }

    let kept: Vec<String> = store.list_runs(Some("weather")).await.unwrap().into_iter().map(|r| r.run_id).collect();
    let mut want: Vec<String> = ids[runs - DEFAULT_KEEP_RUNS..].iter().rev().cloned().collect();
    want.push(in_progress.run_id.clone());
    assert_eq!(kept, want, "the newest {DEFAULT_KEEP_RUNS} and the run in progress");
    assert_eq!(store.get_ledger("weather").await.unwrap(), ledger, "the ledger is untouched");
    let lease = Api::<Lease>::namespaced(admin.clone(), NS).get(&lock_lease_name("weather")).await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("someone-else"), "the lock is untouched");
    let key = RunKey { pipeline: "weather".into(), run_id: in_progress.run_id.clone() };
    assert_eq!(store.get_run(&key).await.unwrap().unwrap().status, Status::Running);
    println!(
        "keep-runs: {runs} runs, run ConfigMaps at most {most} during, {} kept after ({DEFAULT_KEEP_RUNS} finished + 1 in progress), ledger entries {} intact, lock intact",
        kept.len(),
        ledger.history.len()
    );
    sims.shutdown().await;
}

/// The directory store honours `keepRuns` too, and 0 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_store_keeps_runs_too() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/weather-model");
    let pipeline = dir.path().join("weather.yaml");
    std::fs::write(&pipeline, pipeline_yaml(&model, Some(3))).unwrap();
    let state = dir.path().join("state");
    for i in 0..7 {
        let opts = RunOptions {
            pipeline: pipeline.clone(),
            run_id: Some(format!("20260101-000000-d{i}")),
            state_dir: Some(state.clone()),
            ..Default::default()
        };
        engine::run(opts).await.unwrap();
    }
    let mut files: Vec<String> = std::fs::read_dir(state.join("runs/weather"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // The kept records' lock sidecars stay; the deleted ones' went with them.
    let locks = files.iter().filter(|f| f.starts_with('.')).count();
    files.retain(|f| !f.starts_with('.'));
    assert_eq!(locks, 3, "{files:?}");
    files.sort();
    assert_eq!(files, ["20260101-000000-d4.yaml", "20260101-000000-d5.yaml", "20260101-000000-d6.yaml"]);

    std::fs::write(&pipeline, pipeline_yaml(&model, Some(0))).unwrap();
    let opts = RunOptions { pipeline: pipeline.clone(), state_dir: Some(state.clone()), ..Default::default() };
    let err = engine::run(opts).await.unwrap_err().to_string();
    assert!(err.contains("keepRuns must be at least 1"), "{err}");
}
