//! State in a local directory: the same records as YAML files, for local
//! runs and tests.
//!
//! Layout under the root: `runs/<pipeline>/<run-id>.yaml`,
//! `ledgers/<model>.yaml`, `locks/<model>.yaml`. Each file carries a
//! `version` that grows by one per write. An update reads the file and its
//! version, applies the mutation without holding anything, then takes an
//! exclusive lock on a sidecar `.<name>.lock` file, checks the version on disk
//! is still the one it read (compare), and replaces the file by atomic rename
//! (swap). A changed version means another writer got there first: re-read,
//! re-apply, retry. Readers never see a half-written file because of the
//! rename, and the sidecar lock works across processes, not just tasks.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{
    Ledger, LedgerMutation, LockInfo, LockScope, RunKey, RunMutation, RunRecord, StateError, StateStore, now_rfc3339,
};
use crate::spec::yaml;

/// Give up after this many lost races on one record; 20+ concurrent writers
/// on one record still finish well inside it.
const MAX_CONFLICTS: u32 = crate::retry::Backoff::LOCAL_CONFLICT.attempts;

pub struct DirStore {
    root: PathBuf,
}

/// On-disk form: the record with a version next to its fields.
#[derive(Serialize, Deserialize)]
struct Versioned<T> {
    version: u64,
    #[serde(flatten)]
    record: T,
}

enum Outcome<T> {
    Written(T),
    Conflict,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn run_path(&self, key: &RunKey) -> Result<PathBuf, StateError> {
        Ok(self.root.join("runs").join(safe_name(&key.pipeline)?).join(format!("{}.yaml", safe_name(&key.run_id)?)))
    }

    fn ledger_path(&self, model: &str) -> Result<PathBuf, StateError> {
        Ok(self.root.join("ledgers").join(format!("{}.yaml", safe_name(model)?)))
    }

    fn lock_path(&self, scope: LockScope, model: &str) -> Result<PathBuf, StateError> {
        let dir = match scope {
            LockScope::Promotion => "locks",
            LockScope::Run => "run-locks",
        };
        Ok(self.root.join(dir).join(format!("{}.yaml", safe_name(model)?)))
    }

    fn corrupt(&self, path: &Path, message: impl Into<String>) -> StateError {
        StateError::Corrupt { what: path.display().to_string(), store: self.describe(), message: message.into() }
    }

    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<Versioned<T>>, StateError> {
        match std::fs::read_to_string(path) {
            Ok(text) => yaml::from_str::<Versioned<T>>(&text).map(Some).map_err(|e| {
                let at = e.line.map(|l| format!(" at line {l}")).unwrap_or_default();
                self.corrupt(path, format!("{}{at}", e.message))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path: path.to_path_buf(), source }),
        }
    }

    /// Write `record` as version `expected + 1` if the file is still at
    /// `expected` (`None`: must not exist yet).
    fn compare_and_swap<T: Serialize + DeserializeOwned>(
        &self,
        path: &Path,
        expected: Option<u64>,
        record: &T,
    ) -> Result<Outcome<()>, StateError> {
        let dir = path.parent().expect("record paths have a parent");
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io { path: dir.to_path_buf(), source })?;
        let _guard = FileLock::exclusive(&sidecar(path, "lock"))?;
        let current = self.read::<serde_json::Value>(path)?.map(|v| v.version);
        if current != expected {
            return Ok(Outcome::Conflict);
        }
        let body = Versioned { version: expected.map_or(1, |v| v + 1), record };
        let text = yaml::to_string(&body).map_err(|e| self.corrupt(path, e.message))?;
        write_atomic(path, text.as_bytes())?;
        Ok(Outcome::Written(()))
    }

    /// The optimistic loop shared by every update: read, mutate, CAS, retry.
    async fn update<T, F>(
        &self,
        path: &Path,
        what: &str,
        mut init: F,
        f: &mut (dyn FnMut(&mut T) -> Result<(), StateError> + Send),
    ) -> Result<T, StateError>
    where
        T: Serialize + DeserializeOwned + Send,
        F: FnMut() -> Result<T, StateError> + Send,
    {
        for attempt in 0..MAX_CONFLICTS {
            let (version, mut record) = match self.read::<T>(path)? {
                Some(v) => (Some(v.version), v.record),
                None => (None, init()?),
            };
            f(&mut record)?;
            match self.compare_and_swap(path, version, &record)? {
                Outcome::Written(()) => return Ok(record),
                Outcome::Conflict => {
                    // Spread the losers out so they do not collide again in step.
                    tokio::time::sleep(crate::retry::Backoff::LOCAL_CONFLICT.delay(attempt + 1)).await;
                }
            }
        }
        Err(StateError::TooManyConflicts { what: what.to_string(), attempts: MAX_CONFLICTS })
    }
}

#[async_trait]
impl StateStore for DirStore {
    fn describe(&self) -> String {
        format!("dir {}", self.root.display())
    }

    async fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        let key = RunKey { pipeline: run.pipeline.clone(), run_id: run.run_id.clone() };
        let path = self.run_path(&key)?;
        match self.compare_and_swap(&path, None, run)? {
            Outcome::Written(()) => Ok(()),
            Outcome::Conflict => Err(StateError::AlreadyExists {
                what: format!("run {}/{}", run.pipeline, run.run_id),
                store: self.describe(),
            }),
        }
    }

    async fn get_run(&self, key: &RunKey) -> Result<Option<RunRecord>, StateError> {
        Ok(self.read::<RunRecord>(&self.run_path(key)?)?.map(|v| v.record))
    }

    async fn update_run(&self, key: &RunKey, f: &mut RunMutation<'_>) -> Result<RunRecord, StateError> {
        let path = self.run_path(key)?;
        let what = format!("run {}/{}", key.pipeline, key.run_id);
        let store = self.describe();
        let mut f = |r: &mut RunRecord| {
            f(r)?;
            r.updated = now_rfc3339();
            Ok(())
        };
        self.update(&path, &what, || Err(StateError::NotFound { what: what.clone(), store: store.clone() }), &mut f)
            .await
    }

    async fn list_runs(&self, model: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        let runs_dir = self.root.join("runs");
        let mut out = Vec::new();
        let pipelines = match std::fs::read_dir(&runs_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(source) => return Err(StateError::Io { path: runs_dir, source }),
        };
        for entry in pipelines {
            let entry = entry.map_err(|source| StateError::Io { path: runs_dir.clone(), source })?;
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let files = std::fs::read_dir(&dir).map_err(|source| StateError::Io { path: dir.clone(), source })?;
            for file in files {
                let path = file.map_err(|source| StateError::Io { path: dir.clone(), source })?.path();
                let is_record = path.extension().is_some_and(|e| e == "yaml")
                    && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if !is_record {
                    continue;
                }
                if let Some(v) = self.read::<RunRecord>(&path)?
                    && model.is_none_or(|m| v.record.model == m)
                {
                    out.push(v.record);
                }
            }
        }
        // RFC 3339 UTC strings sort chronologically; the id breaks ties.
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.run_id.cmp(&a.run_id)));
        Ok(out)
    }

    async fn delete_run(&self, key: &RunKey) -> Result<bool, StateError> {
        let path = self.run_path(key)?;
        let lock = sidecar(&path, "lock");
        let guard = match FileLock::exclusive(&lock) {
            Ok(g) => g,
            Err(_) if !path.exists() => return Ok(false),
            Err(e) => return Err(e),
        };
        match self.read::<RunRecord>(&path)? {
            Some(v) if v.record.status.is_terminal() => {}
            _ => return Ok(false),
        }
        std::fs::remove_file(&path).map_err(|source| StateError::Io { path: path.clone(), source })?;
        // The record is gone, so a writer waiting on this lock finds nothing
        // to update either way; the sidecar goes too, or they would pile up.
        let _ = std::fs::remove_file(&lock);
        drop(guard);
        Ok(true)
    }

    async fn get_ledger(&self, model: &str) -> Result<Ledger, StateError> {
        Ok(self.read::<Ledger>(&self.ledger_path(model)?)?.map(|v| v.record).unwrap_or_else(|| Ledger::new(model)))
    }

    async fn update_ledger(&self, model: &str, f: &mut LedgerMutation<'_>) -> Result<Ledger, StateError> {
        let path = self.ledger_path(model)?;
        let mut f = |l: &mut Ledger| {
            f(l)?;
            let limit = l.limit.max(1);
            if l.history.len() > limit {
                let excess = l.history.len() - limit;
                l.history.drain(..excess);
            }
            Ok(())
        };
        self.update(&path, &format!("ledger {model}"), || Ok(Ledger::new(model)), &mut f).await
    }

    async fn try_scoped_lock(
        &self,
        scope: LockScope,
        model: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockInfo, StateError> {
        let path = self.lock_path(scope, model)?;
        let mut refused = None;
        let mut take = |lock: &mut Option<LockInfo>| -> Result<(), StateError> {
            let now = jiff::Timestamp::now();
            if let Some(l) = lock.as_ref()
                && l.holder != holder
                && !expired(l, now)
            {
                refused = Some(StateError::Locked {
                    scope,
                    model: model.to_string(),
                    holder: l.holder.clone(),
                    expires: l.expires.clone(),
                });
                return Ok(());
            }
            let acquired = match lock.as_ref() {
                Some(l) if l.holder == holder && !expired(l, now) => l.acquired.clone(),
                _ => now.to_string(),
            };
            *lock = Some(LockInfo {
                model: model.to_string(),
                holder: holder.to_string(),
                acquired,
                expires: expiry(now, ttl),
            });
            Ok(())
        };
        let lock = self.update_lock(&path, model, &mut take).await?;
        if let Some(e) = refused {
            return Err(e);
        }
        lock.ok_or_else(|| self.corrupt(&path, "lock vanished while taking it"))
    }

    async fn renew_scoped_lock(
        &self,
        scope: LockScope,
        model: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockInfo, StateError> {
        let path = self.lock_path(scope, model)?;
        let mut refused = None;
        let mut renew = |lock: &mut Option<LockInfo>| -> Result<(), StateError> {
            match lock.as_mut() {
                Some(l) if l.holder == holder => {
                    l.expires = expiry(jiff::Timestamp::now(), ttl);
                }
                other => {
                    refused = Some(match other {
                        Some(l) => StateError::Locked {
                            scope,
                            model: model.to_string(),
                            holder: l.holder.clone(),
                            expires: l.expires.clone(),
                        },
                        None => StateError::NotFound { what: format!("lock {model}"), store: self.describe() },
                    });
                }
            }
            Ok(())
        };
        let lock = self.update_lock(&path, model, &mut renew).await?;
        if let Some(e) = refused {
            return Err(e);
        }
        lock.ok_or_else(|| self.corrupt(&path, "lock vanished while renewing it"))
    }

    async fn release_scoped_lock(&self, scope: LockScope, model: &str, holder: &str) -> Result<(), StateError> {
        let path = self.lock_path(scope, model)?;
        let mut release = |lock: &mut Option<LockInfo>| -> Result<(), StateError> {
            if lock.as_ref().is_some_and(|l| l.holder == holder) {
                *lock = None;
            }
            Ok(())
        };
        self.update_lock(&path, model, &mut release).await.map(|_| ())
    }
}

impl DirStore {
    /// Locks are files holding `lock: null` when free, so that taking and
    /// releasing go through the same versioned compare-and-swap.
    async fn update_lock(
        &self,
        path: &Path,
        model: &str,
        f: &mut (dyn FnMut(&mut Option<LockInfo>) -> Result<(), StateError> + Send),
    ) -> Result<Option<LockInfo>, StateError> {
        #[derive(Serialize, Deserialize, Default)]
        struct LockFile {
            lock: Option<LockInfo>,
        }
        let mut g = |file: &mut LockFile| f(&mut file.lock);
        self.update(path, &format!("lock {model}"), || Ok(LockFile::default()), &mut g).await.map(|f| f.lock)
    }
}

fn expired(lock: &LockInfo, now: jiff::Timestamp) -> bool {
    // An unreadable expiry is treated as expired: a lock nobody can interpret
    // must not wedge the model forever.
    lock.expires.parse::<jiff::Timestamp>().map_or(true, |t| t <= now)
}

fn expiry(now: jiff::Timestamp, ttl: Duration) -> String {
    let ttl = jiff::SignedDuration::try_from(ttl).unwrap_or(jiff::SignedDuration::from_hours(24));
    now.checked_add(ttl).unwrap_or(now).to_string()
}

/// Names become file names: refuse anything that could leave the directory.
fn safe_name(name: &str) -> Result<&str, StateError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(name)
    } else {
        Err(StateError::Rejected(format!(
            "`{name}` cannot name a state record: use letters, digits, `-`, `_` and `.` (not first)"
        )))
    }
}

fn sidecar(path: &Path, ext: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{ext}"))
}

/// Write to a temporary file next to `path`, flush it to disk, rename over.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = sidecar(path, &format!("tmp-{}-{:08x}", std::process::id(), rand::random::<u32>()));
    let io = |source| StateError::Io { path: tmp.clone(), source };
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        StateError::Io { path: path.to_path_buf(), source }
    })
}

/// An exclusive advisory lock on a sidecar file, released on drop. The
/// sidecar is never deleted: deleting it would let two writers lock two
/// different inodes under the same name.
struct FileLock(File);

impl FileLock {
    fn exclusive(path: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io { path: path.to_path_buf(), source };
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io)?;
        // Held only for a read, a compare and a rename: blocking here is brief.
        f.lock().map_err(io)?;
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::state::{LedgerEntry, StageRecord, Status};

    fn run(pipeline: &str, id: &str, model: &str, created: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            pipeline: pipeline.into(),
            model: model.into(),
            pipeline_digest: "sha256:00".into(),
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

    #[tokio::test]
    async fn create_get_update_round_trip_with_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        store.create_run(&run("weather", "r1", "weather", "2026-01-01T00:00:00Z")).await.unwrap();
        let err = store.create_run(&run("weather", "r1", "weather", "2026-01-01T00:00:00Z")).await.unwrap_err();
        assert!(matches!(err, StateError::AlreadyExists { .. }), "{err}");

        let updated = store
            .update_run(&key("weather", "r1"), &mut |r| {
                r.status = Status::Succeeded;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(updated.status, Status::Succeeded);
        assert_eq!(store.get_run(&key("weather", "r1")).await.unwrap().unwrap(), updated);

        let text = std::fs::read_to_string(dir.path().join("runs/weather/r1.yaml")).unwrap();
        assert!(text.starts_with("version: 2\n"), "{text}");
        assert!(text.contains("status: succeeded"), "{text}");
        assert!(store.get_run(&key("weather", "nope")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn updating_a_missing_run_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let err = store.update_run(&key("weather", "ghost"), &mut |_| Ok(())).await.unwrap_err();
        assert!(matches!(err, StateError::NotFound { .. }), "{err}");
    }

    /// Guards the compare-and-swap: 20 writers appending to one record at
    /// once must all land, none overwriting another's change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn twenty_concurrent_updaters_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(dir.path()));
        store.create_run(&run("weather", "r1", "weather", "2026-01-01T00:00:00Z")).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for j in 0..5 {
                    store
                        .update_run(&key("weather", "r1"), &mut |r| {
                            r.labels.insert(format!("w{i}-{j}"), "x".into());
                            Ok(())
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rec = store.get_run(&key("weather", "r1")).await.unwrap().unwrap();
        assert_eq!(rec.labels.len(), 100);
        let text = std::fs::read_to_string(dir.path().join("runs/weather/r1.yaml")).unwrap();
        assert!(text.starts_with("version: 101\n"), "{}", &text[..20]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_ledger_writers_lose_no_entry_and_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(dir.path()));
        let mut tasks = Vec::new();
        for i in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .update_ledger("weather", &mut |l| {
                        l.limit = 1000;
                        l.record(LedgerEntry {
                            action: "promoted".into(),
                            environment: format!("env{}", i % 3),
                            digest: format!("sha256:{i:02}"),
                            run_id: format!("r{i}"),
                            ..Default::default()
                        });
                        Ok(())
                    })
                    .await
                    .unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ledger = store.get_ledger("weather").await.unwrap();
        assert_eq!(ledger.history.len(), 20);
        assert_eq!(ledger.current.len(), 3);

        let trimmed = store
            .update_ledger("weather", &mut |l| {
                l.limit = 5;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(trimmed.history.len(), 5);
        assert_eq!(store.get_ledger("other").await.unwrap(), Ledger::new("other"));
    }

    #[tokio::test]
    async fn list_runs_newest_first_and_by_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        store.create_run(&run("weather", "a", "weather", "2026-01-01T00:00:00Z")).await.unwrap();
        store.create_run(&run("weather", "b", "weather", "2026-01-02T00:00:00Z")).await.unwrap();
        store.create_run(&run("iris", "c", "iris", "2026-01-03T00:00:00Z")).await.unwrap();
        let all: Vec<String> = store.list_runs(None).await.unwrap().into_iter().map(|r| r.run_id).collect();
        assert_eq!(all, ["c", "b", "a"]);
        let weather: Vec<String> =
            store.list_runs(Some("weather")).await.unwrap().into_iter().map(|r| r.run_id).collect();
        assert_eq!(weather, ["b", "a"]);
        assert!(DirStore::new(dir.path().join("empty")).list_runs(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn lock_names_its_holder_and_expired_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let hour = Duration::from_secs(3600);
        let first = store.try_lock("weather", "runner-a", hour).await.unwrap();
        assert_eq!(first.holder, "runner-a");
        // Re-taking our own lock keeps its acquisition time.
        assert_eq!(store.try_lock("weather", "runner-a", hour).await.unwrap().acquired, first.acquired);
        match store.try_lock("weather", "runner-b", hour).await.unwrap_err() {
            StateError::Locked { holder, .. } => assert_eq!(holder, "runner-a"),
            e => panic!("{e}"),
        }
        assert!(matches!(store.renew_lock("weather", "runner-b", hour).await, Err(StateError::Locked { .. })));
        store.renew_lock("weather", "runner-a", hour).await.unwrap();
        // Releasing someone else's lock does nothing.
        store.release_lock("weather", "runner-b").await.unwrap();
        assert!(store.try_lock("weather", "runner-b", hour).await.is_err());
        store.release_lock("weather", "runner-a").await.unwrap();
        store.try_lock("weather", "runner-b", Duration::ZERO).await.unwrap();
        // runner-b's zero-ttl lock has already expired: a live runner takes over.
        let taken = store.try_lock("weather", "runner-c", hour).await.unwrap();
        assert_eq!(taken.holder, "runner-c");
    }

    #[tokio::test]
    async fn names_that_escape_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        for bad in ["../x", "a/b", ".hidden", ""] {
            let err = store.get_run(&key("weather", bad)).await.unwrap_err();
            assert!(matches!(err, StateError::Rejected(_)), "{bad}: {err}");
        }
        assert!(store.get_ledger("../../etc").await.is_err());
    }

    #[tokio::test]
    async fn a_damaged_record_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        std::fs::create_dir_all(dir.path().join("runs/weather")).unwrap();
        std::fs::write(dir.path().join("runs/weather/r1.yaml"), "version: [\n").unwrap();
        let err = store.get_run(&key("weather", "r1")).await.unwrap_err();
        assert!(err.to_string().contains("runs/weather/r1.yaml"), "{err}");
    }
}
