//! Run records, the promotion ledger and the per-model lock, behind one
//! trait with two backends: Kubernetes ConfigMaps/Leases ([`configmap`]) and a
//! directory of YAML files ([`dir`]).
//!
//! Every write is optimistic: read with a version, apply the change, write
//! with that version; on conflict re-read and re-apply. Never a blind
//! overwrite.

pub mod configmap;
pub mod dir;
mod record;

pub use record::*;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{ExitClass, HasExitClass};

/// Identifies one run record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RunKey {
    pub pipeline: String,
    pub run_id: String,
}

/// A change applied to a record inside an optimistic update loop. It may run
/// more than once (after a conflict), so it must be a pure function of the
/// record it is given.
pub type RunMutation<'a> = dyn FnMut(&mut RunRecord) -> Result<(), StateError> + Send + 'a;
pub type LedgerMutation<'a> = dyn FnMut(&mut Ledger) -> Result<(), StateError> + Send + 'a;

#[async_trait]
pub trait StateStore: Send + Sync {
    /// Where records live, for messages: `configmaps in dev/models-dev`, `dir /x`.
    fn describe(&self) -> String;

    /// Create the run record; fails with [`StateError::AlreadyExists`] if present.
    async fn create_run(&self, run: &RunRecord) -> Result<(), StateError>;
    async fn get_run(&self, key: &RunKey) -> Result<Option<RunRecord>, StateError>;
    /// Optimistic read-modify-write; returns the record as written.
    async fn update_run(&self, key: &RunKey, f: &mut RunMutation<'_>) -> Result<RunRecord, StateError>;
    /// Runs, newest first, optionally only one model's.
    async fn list_runs(&self, model: Option<&str>) -> Result<Vec<RunRecord>, StateError>;
    /// Delete a run's record if it is finished (re-read and checked while
    /// deleting, so a run resumed meanwhile is kept). `Ok(false)`: it is not
    /// finished, or is gone already. Never touches a ledger or a lock.
    async fn delete_run(&self, key: &RunKey) -> Result<bool, StateError>;

    async fn get_ledger(&self, model: &str) -> Result<Ledger, StateError>;
    /// Optimistic read-modify-write of the model's ledger (created on first
    /// write); history is trimmed to the ledger's bound after `f`.
    async fn update_ledger(&self, model: &str, f: &mut LedgerMutation<'_>) -> Result<Ledger, StateError>;

    /// Take the model's lock for `holder`, or return [`StateError::Locked`]
    /// naming the current holder. An expired lock is taken over.
    async fn try_lock(&self, model: &str, holder: &str, ttl: Duration) -> Result<LockInfo, StateError>;
    /// Extend a lock this holder has.
    async fn renew_lock(&self, model: &str, holder: &str, ttl: Duration) -> Result<LockInfo, StateError>;
    /// Release a lock this holder has; releasing a lock held by another is a no-op.
    async fn release_lock(&self, model: &str, holder: &str) -> Result<(), StateError>;
}

pub use crate::spec::DEFAULT_KEEP_RUNS;

/// Keep the newest `keep` run records of `pipeline` and delete the older
/// finished ones (a running or waiting run is never deleted, and counts
/// toward `keep`). Returns the ids deleted, oldest last.
pub async fn prune_runs(store: &dyn StateStore, pipeline: &str, keep: usize) -> Result<Vec<String>, StateError> {
    let runs = store.list_runs(None).await?;
    let mut deleted = Vec::new();
    for run in runs.iter().filter(|r| r.pipeline == pipeline).skip(keep.max(1)) {
        if !run.status.is_terminal() {
            continue;
        }
        let key = RunKey { pipeline: run.pipeline.clone(), run_id: run.run_id.clone() };
        if store.delete_run(&key).await? {
            deleted.push(run.run_id.clone());
        }
    }
    Ok(deleted)
}

/// Wait for the lock up to `wait`, polling with backoff; `Duration::ZERO`
/// fails fast.
pub async fn lock_with_wait(
    store: &dyn StateStore,
    model: &str,
    holder: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<LockInfo, StateError> {
    let deadline = tokio::time::Instant::now() + wait;
    let policy = crate::retry::Backoff::POLL.with_cap(Duration::from_secs(5));
    let mut retry = 1;
    let mut delay = policy.delay(retry);
    let mut told = false;
    loop {
        match store.try_lock(model, holder, ttl).await {
            Err(StateError::Locked { holder: other, expires, .. })
                if tokio::time::Instant::now() + delay <= deadline =>
            {
                // Once, so an operator sees who is in the way.
                if !told {
                    told = true;
                    tracing::info!(model, holder = %other, expires = %expires, wait = %humantime::format_duration(wait), "waiting for the promotion lock");
                }
                tokio::time::sleep(delay).await;
                retry += 1;
                delay = policy.delay(retry);
            }
            other => return other,
        }
    }
}

/// Keeps a held lock alive: renews it every `ttl / 3` on a background task
/// until dropped (drop it before releasing the lock). When a renewal finds
/// the lock held by someone else (or gone), or none succeeds for a whole
/// `ttl`, the lock is lost: [`LockKeeper::check`] fails from then on and
/// [`LockKeeper::lost`] resolves, so the holder stops before it writes.
pub struct LockKeeper {
    lost: tokio::sync::watch::Receiver<Option<String>>,
    model: String,
    task: tokio::task::JoinHandle<()>,
}

impl LockKeeper {
    pub fn start(store: Arc<dyn StateStore>, model: &str, holder: &str, ttl: Duration) -> LockKeeper {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (m, h) = (model.to_string(), holder.to_string());
        let task = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(100));
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let why = match store.renew_lock(&m, &h, ttl).await {
                    Ok(_) => {
                        last_ok = tokio::time::Instant::now();
                        tracing::debug!(model = %m, "promotion lock renewed");
                        continue;
                    }
                    Err(StateError::Locked { holder, .. }) => format!("it is now held by {holder}"),
                    Err(StateError::NotFound { .. }) => "it was deleted".to_string(),
                    Err(e) if last_ok.elapsed() >= ttl => {
                        format!("no renewal succeeded for {}: {e}", humantime::format_duration(ttl))
                    }
                    Err(e) => {
                        tracing::warn!(model = %m, error = %e, "could not renew the promotion lock; trying again");
                        continue;
                    }
                };
                tracing::warn!(model = %m, reason = %why, "the promotion lock was lost");
                let _ = tx.send(Some(why));
                return;
            }
        });
        LockKeeper { lost: rx, model: model.to_string(), task }
    }

    fn lost_error(&self, why: String) -> StateError {
        StateError::LockLost { model: self.model.clone(), why }
    }

    /// `Err(LockLost)` once the lock is known to be lost.
    pub fn check(&self) -> Result<(), StateError> {
        match self.lost.borrow().clone() {
            Some(why) => Err(self.lost_error(why)),
            None => Ok(()),
        }
    }

    /// Resolves (with [`StateError::LockLost`]) when the lock is lost; never
    /// while it is held.
    pub async fn lost(&self) -> StateError {
        let mut rx = self.lost.clone();
        let why = rx.wait_for(Option::is_some).await.ok().and_then(|why| why.clone());
        match why {
            Some(why) => self.lost_error(why),
            // The task ended without losing it (it never does): wait forever.
            None => std::future::pending().await,
        }
    }
}

impl Drop for LockKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} already exists in {store}")]
    AlreadyExists { what: String, store: String },
    #[error("{what} not found in {store}")]
    NotFound { what: String, store: String },
    #[error("model `{model}` is locked by {holder} until {expires}")]
    Locked { model: String, holder: String, expires: String },
    #[error("lost the lock of model `{model}` while holding it ({why}); stopped before tagging or recording")]
    LockLost { model: String, why: String },
    #[error("gave up on {what} after {attempts} conflicting writes")]
    TooManyConflicts { what: String, attempts: u32 },
    #[error("record {what} in {store} is not valid: {message}")]
    Corrupt { what: String, store: String, message: String },
    #[error("{what} in {store}: {}", kube_message(source))]
    Kube {
        what: String,
        store: String,
        #[source]
        source: kube::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Refused by the caller's mutation (e.g. promoting an unverified digest).
    #[error("{0}")]
    Rejected(String),
}

/// kube's own Display of an API error is a Rust debug dump; users get the
/// server's message and reason instead.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
        other => other.to_string(),
    }
}

impl StateError {
    /// The Kubernetes Status behind this error, if any (404/409/403 stay distinguishable).
    pub fn kube_status(&self) -> Option<&kube::core::Status> {
        match self {
            StateError::Kube { source: kube::Error::Api(status), .. } => Some(status),
            _ => None,
        }
    }
}

impl HasExitClass for StateError {
    fn exit_class(&self) -> ExitClass {
        match self {
            StateError::Rejected(_) => ExitClass::BadInput,
            StateError::Corrupt { .. } => ExitClass::Failed,
            _ => ExitClass::Failed,
        }
    }
}
