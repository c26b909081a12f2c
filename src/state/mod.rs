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
/// What [`StateStore::watch_run`] waits for.
pub type RunPredicate<'a> = dyn for<'r> FnMut(&'r RunRecord) -> bool + Send + 'a;
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

    /// Take the model's `scope` lock for `holder`, or return
    /// [`StateError::Locked`] naming the current holder. An expired lock is
    /// taken over.
    async fn try_scoped_lock(
        &self,
        scope: LockScope,
        model: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockInfo, StateError>;
    /// Extend a lock this holder has.
    async fn renew_scoped_lock(
        &self,
        scope: LockScope,
        model: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockInfo, StateError>;
    /// Release a lock this holder has; releasing a lock held by another is a no-op.
    async fn release_scoped_lock(&self, scope: LockScope, model: &str, holder: &str) -> Result<(), StateError>;

    /// The promotion lock ([`LockScope::Promotion`]).
    async fn try_lock(&self, model: &str, holder: &str, ttl: Duration) -> Result<LockInfo, StateError> {
        self.try_scoped_lock(LockScope::Promotion, model, holder, ttl).await
    }
    async fn renew_lock(&self, model: &str, holder: &str, ttl: Duration) -> Result<LockInfo, StateError> {
        self.renew_scoped_lock(LockScope::Promotion, model, holder, ttl).await
    }
    async fn release_lock(&self, model: &str, holder: &str) -> Result<(), StateError> {
        self.release_scoped_lock(LockScope::Promotion, model, holder).await
    }

    /// Wait until the run's record satisfies `done` (checked on the current
    /// record first) and return it. No timeout of its own: callers wrap it.
    /// This default re-reads every [`WATCH_POLL`]; the ConfigMap store
    /// watches its ConfigMap instead.
    async fn watch_run(&self, key: &RunKey, done: &mut RunPredicate<'_>) -> Result<RunRecord, StateError> {
        loop {
            match self.get_run(key).await? {
                Some(run) if done(&run) => return Ok(run),
                Some(_) => tokio::time::sleep(WATCH_POLL).await,
                None => {
                    return Err(StateError::NotFound { what: format!("run {}", key.run_id), store: self.describe() });
                }
            }
        }
    }

    /// Who the store's credentials are, as the cluster says
    /// (`SelfSubjectReview`); `None` where the store has no such notion (a
    /// directory: the caller names a local user).
    async fn whoami(&self) -> Result<Option<Identity>, StateError> {
        Ok(None)
    }
}

/// How often the default [`StateStore::watch_run`] (the directory store)
/// re-reads the record.
pub const WATCH_POLL: Duration = Duration::from_millis(250);

/// Which of a model's two locks: the promotion lock (held while a
/// promotion or rollback copies and tags) or the run lock (held for a whole
/// run, so one model never has two runs at once). Separate leases, so a
/// run's own promote stage never waits on its own run lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockScope {
    Promotion,
    Run,
}

impl std::fmt::Display for LockScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockScope::Promotion => "promotion",
            LockScope::Run => "run",
        })
    }
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
    scope: LockScope,
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
        match store.try_scoped_lock(scope, model, holder, ttl).await {
            Err(StateError::Locked { holder: other, expires, .. })
                if tokio::time::Instant::now() + delay <= deadline =>
            {
                // Once, so an operator sees who is in the way.
                if !told {
                    told = true;
                    tracing::info!(model, holder = %other, expires = %expires, wait = %humantime::format_duration(wait), "waiting for the {scope} lock of model {model}, held by {other}");
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
    scope: LockScope,
    task: tokio::task::JoinHandle<()>,
}

impl LockKeeper {
    pub fn start(store: Arc<dyn StateStore>, scope: LockScope, model: &str, holder: &str, ttl: Duration) -> LockKeeper {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (m, h) = (model.to_string(), holder.to_string());
        let task = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(100));
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let why = match store.renew_scoped_lock(scope, &m, &h, ttl).await {
                    Ok(_) => {
                        last_ok = tokio::time::Instant::now();
                        tracing::debug!(model = %m, "{scope} lock renewed");
                        continue;
                    }
                    Err(StateError::Locked { holder, .. }) => format!("it is now held by {holder}"),
                    Err(StateError::NotFound { .. }) => "it was deleted".to_string(),
                    Err(e) if last_ok.elapsed() >= ttl => {
                        format!("no renewal succeeded for {}: {e}", humantime::format_duration(ttl))
                    }
                    Err(e) => {
                        tracing::warn!(model = %m, error = %e, "could not renew the {scope} lock; trying again");
                        continue;
                    }
                };
                tracing::warn!(model = %m, reason = %why, "the {scope} lock was lost");
                let _ = tx.send(Some(why));
                return;
            }
        });
        LockKeeper { lost: rx, model: model.to_string(), scope, task }
    }

    fn lost_error(&self, why: String) -> StateError {
        StateError::LockLost { model: self.model.clone(), scope: self.scope, why }
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
    #[error("{}", locked_message(*scope, model, holder, expires))]
    Locked { scope: LockScope, model: String, holder: String, expires: String },
    #[error("lost the {scope} lock of model `{model}` while holding it ({why}); {}", match scope {
        LockScope::Promotion => "stopped before tagging or recording",
        LockScope::Run => "the run stopped",
    })]
    LockLost { model: String, scope: LockScope, why: String },
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

fn locked_message(scope: LockScope, model: &str, holder: &str, expires: &str) -> String {
    match scope {
        LockScope::Promotion => format!("model `{model}` is locked by {holder} until {expires}"),
        LockScope::Run => format!(
            "model `{model}` has a run in progress: its run lock is held by {holder} until {expires} (renewed while that run lives); wait for it with --lock-wait DURATION"
        ),
    }
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
