//! Races on one model: 20 concurrent promotions against two in-process sims
//! (dev, prod) with the lock failing fast or waited for; 100 concurrent
//! ledger writers on each state backend; and a lock whose holder died,
//! taken over only after it expired. The Lease is watched while the
//! promotions race, so "one at a time" is read from the cluster's own
//! record of who held the lock, not inferred from results.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, WatchEvent, WatchParams};
use modelship::promotion::{self, PromoteRequest, PromotionError};
use modelship::state::configmap::{ConfigMapStore, lock_lease_name};
use modelship::state::dir::DirStore;
use modelship::state::{StateError, StateStore};
use sha2::{Digest, Sha256};
use support::env::{DevProd, DevProd as Env, MODEL, promote_pipeline, promote_request, push_image};

const RUNNERS: usize = 20;
const WRITERS: usize = 100;

// `Env`: the two sims (`support::env::DevProd`) with this file's helpers.
impl Env {
    async fn start() -> Env {
        DevProd::new(&promote_pipeline()).await
    }

    async fn store(&self, env: &str) -> ConfigMapStore {
        ConfigMapStore::new(self.clusters.client(env).await.unwrap(), format!("models-{env}"), env)
    }

    /// Push a small image into dev's registry and record it as verified.
    async fn verified_image(&self) -> String {
        let repo = format!("models-dev/{MODEL}");
        let layer = b"the one layer".repeat(100);
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let digest = push_image(&self.dev, &repo, "latest", &[layer], config).await;
        let image = format!("{}/models-dev/{MODEL}@{digest}", self.dev.registry_host());
        let store = self.store("dev").await;
        promotion::record_check(&store, MODEL, "dev", &digest, &image, "build-1", "ci", None, true).await.unwrap();
        digest
    }

    fn request(&self, i: usize, lock_wait: Duration) -> PromoteRequest {
        PromoteRequest { by: "ci".into(), lock_wait, ..promote_request(&format!("run-{i}")) }
    }
}

fn holder(i: usize) -> String {
    format!("ci (run run-{i})")
}

/// Every change to the model's Lease in prod from now on, as
/// `(event, holder)`; stops when `stop` is cancelled.
fn watch_lock(
    api: Api<Lease>,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let name = lock_lease_name(MODEL);
        let wp = WatchParams::default().fields(&format!("metadata.name={name}"));
        let mut seen = Vec::new();
        let mut stream = api.watch(&wp, "0").await.unwrap().boxed();
        loop {
            let ev = tokio::select! {
                _ = stop.cancelled() => break,
                ev = stream.next() => ev,
            };
            let Some(ev) = ev else { break };
            let holder_of = |l: &Lease| l.spec.as_ref().and_then(|s| s.holder_identity.clone()).unwrap_or_default();
            match ev.unwrap() {
                WatchEvent::Added(l) => seen.push(("ADDED".into(), holder_of(&l))),
                WatchEvent::Modified(l) => seen.push(("MODIFIED".into(), holder_of(&l))),
                WatchEvent::Deleted(l) => seen.push(("DELETED".into(), holder_of(&l))),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => panic!("lease watch: {e:?}"),
            }
        }
        seen
    })
}

/// From the Lease's event history: each holding as `holder`, checking that
/// a holder only ever takes a lock nobody holds (created after a delete, or
/// modified by the same holder).
fn holdings(events: &[(String, String)]) -> Vec<String> {
    let mut current: Option<String> = None;
    let mut out = Vec::new();
    for (kind, h) in events {
        match kind.as_str() {
            "ADDED" => {
                assert!(current.is_none(), "lease created for {h} while {current:?} held it: {events:?}");
                current = Some(h.clone());
                out.push(h.clone());
            }
            "MODIFIED" => {
                assert_eq!(current.as_deref(), Some(h.as_str()), "lease changed hands without a release: {events:?}")
            }
            "DELETED" => {
                assert_eq!(current.as_deref(), Some(h.as_str()), "lease released by a non-holder: {events:?}");
                current = None;
            }
            _ => unreachable!(),
        }
    }
    assert!(current.is_none(), "lease still held at the end by {current:?}");
    out
}

/// 20 runners promote the same model at once and wait for the lock: all
/// promote, one at a time (the Lease goes from one holder to none to the
/// next, 20 holdings), and the ledger has exactly one entry per runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_promotions_waiting_for_the_lock_go_one_at_a_time() {
    let env = Env::start().await;
    let digest = env.verified_image().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let watch = watch_lock(Api::namespaced(env.clusters.client("prod").await.unwrap(), "models-prod"), stop.clone());
    // Let the watch register before anyone locks.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tasks = Vec::new();
    for i in 0..RUNNERS {
        let (clusters, req) = (env.runner_clusters(), env.request(i, Duration::from_secs(300)));
        tasks.push(tokio::spawn(async move { promotion::promote(&clusters, &req, false).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap_or_else(|e| panic!("runner {i}: {e}"));
        assert!(out.recorded && out.digest == digest, "runner {i}: {out:?}");
    }
    // The last DELETED reaches the watch after the last release returned.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let events = watch.await.unwrap();
    let held = holdings(&events);
    let expected: BTreeSet<String> = (0..RUNNERS).map(holder).collect();
    assert_eq!(held.len(), RUNNERS, "holdings {held:?}");
    assert_eq!(held.iter().cloned().collect::<BTreeSet<_>>(), expected, "every runner held the lock once");

    let ledger = env.store("prod").await.get_ledger(MODEL).await.unwrap();
    let runs: Vec<&str> = ledger.history.iter().filter(|e| e.action == "promoted").map(|e| e.run_id.as_str()).collect();
    assert_eq!(runs.len(), RUNNERS, "promoted entries: {runs:?}");
    assert_eq!(runs.iter().copied().collect::<BTreeSet<_>>().len(), RUNNERS, "one entry per runner: {runs:?}");
    env.stop().await;
}

/// 20 runners at once with `lock_wait: 0`: each either promotes or fails
/// at once with `Locked` naming a holder that is one of the other runners;
/// the ledger records exactly the ones that promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_promotions_failing_fast_name_the_holder() {
    let env = Env::start().await;
    env.verified_image().await;
    let mut tasks = Vec::new();
    for i in 0..RUNNERS {
        let (clusters, req) = (env.runner_clusters(), env.request(i, Duration::ZERO));
        tasks.push(tokio::spawn(async move { promotion::promote(&clusters, &req, false).await }));
    }
    let mut promoted = BTreeSet::new();
    let mut refused = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(out) => {
                assert!(out.recorded, "runner {i}: {out:?}");
                promoted.insert(format!("run-{i}"));
            }
            Err(e @ PromotionError::Ledger { source: StateError::Locked { .. }, .. }) => {
                let PromotionError::Ledger { source: StateError::Locked { holder: h, .. }, .. } = &e else {
                    unreachable!()
                };
                assert!(h != &holder(i) && (0..RUNNERS).any(|j| &holder(j) == h), "runner {i} refused by {h}");
                assert!(e.to_string().contains(h.as_str()), "the error names the holder: {e}");
                refused += 1;
            }
            Err(e) => panic!("runner {i}: expected success or Locked, got {e}"),
        }
    }
    assert!(!promoted.is_empty(), "nobody promoted");
    assert_eq!(promoted.len() + refused, RUNNERS);
    let ledger = env.store("prod").await.get_ledger(MODEL).await.unwrap();
    let recorded: BTreeSet<String> =
        ledger.history.iter().filter(|e| e.action == "promoted").map(|e| e.run_id.clone()).collect();
    assert_eq!(recorded, promoted, "the ledger records exactly the runners that promoted");
    let lease = Api::<Lease>::namespaced(env.clusters.client("prod").await.unwrap(), "models-prod")
        .get_opt(&lock_lease_name(MODEL))
        .await
        .unwrap();
    assert!(lease.is_none(), "lock left behind: {lease:?}");
    eprintln!("fail-fast race: {} promoted, {refused} refused naming the holder", promoted.len());
    env.stop().await;
}

/// 100 writers append to one ledger at once; with the history limit above
/// 100, every entry must be there.
async fn hundred_writers(store: std::sync::Arc<dyn StateStore>) {
    store
        .update_ledger(MODEL, &mut |l| {
            l.limit = 2 * WRITERS;
            Ok(())
        })
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(i.to_string())));
            promotion::record_check(&*store, MODEL, "dev", &digest, "r/x@d", &format!("writer-{i}"), "ci", None, true)
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        t.await.unwrap().unwrap_or_else(|e| panic!("writer {i}: {e}"));
    }
    let ledger = store.get_ledger(MODEL).await.unwrap();
    let runs: BTreeSet<&str> = ledger.history.iter().map(|e| e.run_id.as_str()).collect();
    let lost: Vec<String> =
        (0..WRITERS).map(|i| format!("writer-{i}")).filter(|r| !runs.contains(r.as_str())).collect();
    assert!(lost.is_empty(), "{} of {WRITERS} entries lost ({}): {lost:?}", lost.len(), store.describe());
    assert_eq!(ledger.history.len(), WRITERS, "duplicated entries in {}", store.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_ledger_writers_lose_no_entry_in_configmaps() {
    let env = Env::start().await;
    hundred_writers(std::sync::Arc::new(env.store("dev").await)).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_ledger_writers_lose_no_entry_in_a_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    hundred_writers(std::sync::Arc::new(DirStore::new(dir.path()))).await;
}

/// A runner died holding the lock (its Lease is never renewed): another
/// runner is refused before the Lease expires, naming the dead holder, and
/// takes the lock over only after the expiry, as the Lease it writes shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_holders_lock_is_taken_over_only_after_expiry() {
    let env = Env::start().await;
    env.verified_image().await;
    let store = env.store("prod").await;
    let dead = "ci (run died-mid-promotion)";
    let ttl = Duration::from_secs(4);
    let taken = store.try_lock(MODEL, dead, ttl).await.unwrap();
    let expires: jiff::Timestamp = taken.expires.parse().unwrap();

    // Before expiry: refused, naming the dead holder.
    let err = promotion::promote(&env.clusters, &env.request(1, Duration::ZERO), false).await.unwrap_err();
    assert!(
        matches!(&err, PromotionError::Ledger { source: StateError::Locked { holder, .. }, .. } if holder == dead),
        "{err}"
    );
    // Waiting: proceeds once the Lease has expired, and not before.
    let out = promotion::promote(&env.clusters, &env.request(2, Duration::from_secs(60)), false).await.unwrap();
    assert!(out.recorded);
    let ledger = store.get_ledger(MODEL).await.unwrap();
    let entry = ledger.history.iter().find(|e| e.run_id == "run-2" && e.action == "promoted").unwrap();
    let at: jiff::Timestamp = entry.at.parse().unwrap();
    assert!(at >= expires, "promoted at {at}, before the dead holder's lock expired at {expires}");
    assert!(
        !ledger.history.iter().any(|e| e.run_id == "run-1"),
        "the refused runner recorded something: {:?}",
        ledger.history
    );
    env.stop().await;
}
