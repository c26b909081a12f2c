//! Running a prepared pipeline: the state record, the stage loop, retries,
//! timeouts, cancellation and resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::Instrument;

use super::digest::inputs_digest;
use super::events::{Event, Events};
use super::prepare::{
    Prepared, StagePlan, check_run_id, check_until, generate_run_id, local_state_dir, resolve_params, stage_plans,
};
use super::render::{self, RenderData};
use super::{EngineError, RunOptions, RunSummary};
use crate::cluster::Clusters;
use crate::retry::Backoff;
use crate::spec::{Pipeline, StageSpec};
use crate::stages::{Links, Outputs, StageContext, StageError, StageErrorKind};
use crate::state::configmap::ConfigMapStore;
use crate::state::dir::DirStore;
use crate::state::{
    LockKeeper, LockScope, RunKey, RunRecord, StageRecord, StateError, StateStore, Status, lock_with_wait, now_rfc3339,
};

/// How long a run's lock lives without renewal (default of
/// `RunOptions::lock_ttl`); renewed every third of it while the run lives,
/// so a crashed runner's lock is taken over after at most this.
pub const RUN_LOCK_TTL: Duration = Duration::from_secs(2 * 60);
/// How long a run waits for another run of its model (default of
/// `RunOptions::lock_wait`).
pub const RUN_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// The run lock's holder identity: the run id first, so a waiting run's
/// log names the run in its way.
pub fn run_lock_holder(key: &RunKey) -> String {
    let at = hostname().map(|h| format!(" on {h}")).unwrap_or_default();
    format!("run {} of {} (pid {}{at})", key.run_id, key.pipeline, std::process::id())
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// A run lock held by this very run from a process on this host that is
/// gone (killed, crashed): a `--resume` may take it over at once instead of
/// waiting out its TTL. Anything else (another run, another host, a process
/// still alive, no `/proc` to tell) is left to expire.
fn dead_local_holder(holder: &str, key: &RunKey) -> bool {
    let Some(rest) = holder.strip_prefix(&format!("run {} of {} (pid ", key.run_id, key.pipeline)) else {
        return false;
    };
    let Some((pid, host)) = rest.trim_end_matches(')').split_once(" on ") else { return false };
    let proc_fs = Path::new("/proc/self").exists();
    proc_fs
        && hostname().as_deref() == Some(host)
        && pid.parse::<u32>().is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

/// The wait before a stage's retry number `attempt` (1-based: after the
/// first failed attempt), by [`Backoff::STAGE`].
pub fn backoff_delay(attempt: u32) -> Duration {
    Backoff::STAGE.delay(attempt)
}

/// After a cancel, how long a stage may take to notice its own token and
/// leave things tidy (release a lock, cancel a Build) before it is dropped.
/// Tekton's default termination grace is 30s; this leaves time to record.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// Knobs tests turn down so retries take milliseconds, not seconds. (The
/// crate's tokio has no `test-util`, so tests cannot pause the clock;
/// enabling it would rebuild every tokio dependent.)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub cancel_grace: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning { backoff_base: Backoff::STAGE.base, backoff_cap: Backoff::STAGE.cap, cancel_grace: CANCEL_GRACE }
    }
}

/// Where a run keeps its files without `--workspace`: a stable directory per
/// run under the user cache (`$XDG_CACHE_HOME/modelship/runs/<pipeline>/<run-id>`,
/// falling back to the temp dir), not a random temp dir, because `--resume`
/// must find what the earlier attempt fetched and rendered. It is removed when
/// the run succeeds to the end, and kept after a failure, a cancel or
/// `--until` so a resume can pick it up.
pub fn default_workspace(pipeline: &str, run_id: &str) -> PathBuf {
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("modelship").join("runs").join(pipeline).join(run_id)
}

/// The state store a pipeline's runs live in: `state_dir` if given, else
/// ConfigMaps in the pipeline's state environment.
pub async fn open_state(
    pipeline: &Pipeline,
    state_dir: Option<&Path>,
    clusters: &Clusters,
) -> Result<Arc<dyn StateStore>, EngineError> {
    if let Some(dir) = state_dir {
        return Ok(Arc::new(DirStore::new(dir)));
    }
    let (name, env) = pipeline.state_environment().ok_or_else(|| {
        EngineError::BadInput(format!(
            "pipeline `{}` declares no environment to hold run state",
            pipeline.metadata.name
        ))
    })?;
    let client = clusters.client(name).await?;
    Ok(Arc::new(ConfigMapStore::new(client, env.namespace.clone(), name)))
}

/// A run whose stages need a cluster, with none configured, stops before
/// anything is written (a resume may skip those stages, so it goes on).
fn no_cluster_needed_or_configured(p: &Prepared, opts: &RunOptions) -> Result<(), EngineError> {
    use crate::cluster::{NO_CLUSTER_HINT, Source, Surroundings};
    if Source::decide(&Surroundings::detect(opts.kubeconfig.as_deref())) != Source::Nothing {
        return Ok(());
    }
    let until = opts.until.as_deref();
    match crate::spec::first_cluster_stage(&crate::stages::Registry, &p.pipeline, &p.catalog, until) {
        None => Ok(()),
        Some((_, name, uses)) => Err(EngineError::BadInput(format!(
            "stage `{name}` ({uses}) needs a cluster, and there is no cluster configuration: no --kubeconfig, no file named by $KUBECONFIG, no ~/.kube/config, and not in a pod; {NO_CLUSTER_HINT}"
        ))),
    }
}

/// The local state directory sits beside the user's pipeline, usually in a
/// Git checkout: `.modelship/.gitignore` keeps it out of commits. Best
/// effort: the state store reports a directory it cannot write.
fn ignore_in_git(state_dir: &Path) {
    if let Some(top) = state_dir.parent() {
        let ignore = top.join(".gitignore");
        if !ignore.exists() && std::fs::create_dir_all(top).is_ok() {
            let _ = std::fs::write(ignore, "# modelship's local run state\n*\n");
        }
    }
}

pub(crate) async fn run_prepared(p: Prepared, opts: RunOptions) -> Result<RunSummary, EngineError> {
    run_tuned(p, opts, Tuning::default()).await
}

pub(crate) async fn run_tuned(p: Prepared, opts: RunOptions, tuning: Tuning) -> Result<RunSummary, EngineError> {
    let pipeline = p.pipeline.clone();
    let plans = stage_plans(&pipeline)?;
    check_until(&pipeline, &p.path, opts.until.as_deref())?;
    let run_id = opts.resume.clone().or_else(|| opts.run_id.clone()).unwrap_or_else(generate_run_id);
    check_run_id(&run_id)?;
    if opts.resume.is_none() {
        // Params are checked before anything is written; a resume checks
        // them once the recorded values are read.
        resolve_params(&pipeline, None, &opts.sets)?;
    }
    let clusters = Arc::new(
        Clusters::new(pipeline.spec.environments.clone(), opts.kubeconfig.clone())
            .with_context_origins(opts.overrides.context_origins(&pipeline, &p.path)),
    );
    if opts.resume.is_none() {
        no_cluster_needed_or_configured(&p, &opts)?;
    }
    let local = match &opts.state_dir {
        Some(_) => None,
        None => local_state_dir(&pipeline, &p.path, &p.catalog, opts.kubeconfig.as_deref(), opts.until.as_deref()),
    };
    if let Some(dir) = &local {
        tracing::info!(
            state_dir = %dir.display(),
            "no stage of this run needs a cluster: run state kept in {} (--state-dir DIR puts it elsewhere)",
            dir.display()
        );
        ignore_in_git(dir);
    }
    let state = open_state(&pipeline, opts.state_dir.as_deref().or(local.as_deref()), &clusters).await?;
    let key = RunKey { pipeline: pipeline.metadata.name.clone(), run_id: run_id.clone() };

    // One run of a model at a time, across runners: the run lock, held from
    // before the record is written until the run ends.
    let model = pipeline.spec.model.name.clone();
    let mut holder = run_lock_holder(&key);
    let ttl = opts.lock_ttl.unwrap_or(RUN_LOCK_TTL);
    let wait = opts.lock_wait.unwrap_or(RUN_LOCK_WAIT);
    if opts.resume.is_some()
        && let Err(StateError::Locked { holder: other, .. }) =
            state.try_scoped_lock(LockScope::Run, &model, &holder, ttl).await
        && dead_local_holder(&other, &key)
    {
        // Renewing under its name takes it over through the same CAS.
        tracing::info!(model = %model, holder = %other, "taking over the run lock this run's killed process left");
        holder = other;
    }
    tokio::select! {
        r = lock_with_wait(&*state, LockScope::Run, &model, &holder, ttl, wait) => { r?; }
        _ = opts.cancel.cancelled() => {
            return Err(EngineError::CancelledWaiting { run_id, model });
        }
    }
    let keeper = LockKeeper::start(state.clone(), LockScope::Run, &model, &holder, ttl);
    let cancel = opts.cancel.clone();
    let (store, lock_model) = (state.clone(), model.clone());
    let result: Result<RunSummary, EngineError> = async move {
        let resumed = match &opts.resume {
            None => None,
            Some(id) => Some(state.get_run(&key).await?.ok_or_else(|| {
                EngineError::BadInput(format!(
                    "--resume {id}: no run `{id}` of pipeline `{}` in {}",
                    pipeline.metadata.name,
                    state.describe()
                ))
            })?),
        };
        let params = resolve_params(&pipeline, resumed.as_ref().map(|r| &r.params), &opts.sets)?;
        for stage in &pipeline.spec.stages {
            for name in render::env_references(&stage.with, stage.condition.as_deref()) {
                if render::looks_secret(&name)
                    && let Ok(v) = std::env::var(&name)
                {
                    crate::secret::register(v);
                }
            }
        }

        let workspace = opts.workspace.clone().unwrap_or_else(|| default_workspace(&key.pipeline, &run_id));
        std::fs::create_dir_all(&workspace).map_err(|source| EngineError::Io { path: workspace.clone(), source })?;

        let stage_names: Vec<(String, String)> =
            pipeline.spec.stages.iter().map(|s| (s.name.clone(), s.uses.clone())).collect();
        let previous: BTreeMap<String, StageRecord> = match resumed {
            None => {
                let started_by = started_by(&*state, &opts).await;
                let now = now_rfc3339();
                let record = RunRecord {
                    run_id: run_id.clone(),
                    pipeline: key.pipeline.clone(),
                    model: pipeline.spec.model.name.clone(),
                    pipeline_digest: p.digest.clone(),
                    params: params.clone(),
                    labels: opts.labels.clone(),
                    status: Status::Running,
                    created: now.clone(),
                    updated: now,
                    stages: stage_names
                        .iter()
                        .map(|(name, uses)| StageRecord {
                            name: name.clone(),
                            uses: uses.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    approval: None,
                    started_by,
                };
                state.create_run(&record).await.map_err(|e| match e {
                StateError::AlreadyExists { .. } => EngineError::BadInput(format!(
                    "run `{run_id}` already exists in {}; continue it with --resume {run_id} or pick another --run-id",
                    state.describe()
                )),
                e => e.into(),
            })?;
                BTreeMap::new()
            }
            Some(prev) => {
                let previous: BTreeMap<String, StageRecord> =
                    prev.stages.iter().map(|s| (s.name.clone(), s.clone())).collect();
                let (digest, params, labels) = (p.digest.clone(), params.clone(), opts.labels.clone());
                state
                    .update_run(&key, &mut |r| {
                        r.status = Status::Running;
                        r.pipeline_digest = digest.clone();
                        r.params = params.clone();
                        r.labels.extend(labels.clone());
                        // Align with the pipeline as it is now: keep what is known
                        // about each stage, add new ones, drop removed ones.
                        let mut old: BTreeMap<String, StageRecord> =
                            r.stages.drain(..).map(|s| (s.name.clone(), s)).collect();
                        r.stages = stage_names
                            .iter()
                            .map(|(name, uses)| {
                                old.remove(name).unwrap_or_else(|| StageRecord {
                                    name: name.clone(),
                                    uses: uses.clone(),
                                    ..Default::default()
                                })
                            })
                            .collect();
                        Ok(())
                    })
                    .await?;
                previous
            }
        };

        let env = render::process_env();
        let runner = Runner {
            data: RenderData::new(params.clone(), env, &run_id, &key.pipeline, &pipeline.spec.model.name),
            pipeline_dir: p.pipeline_dir(),
            catalog: p.catalog.clone(),
            pipeline,
            plans,
            key,
            state,
            clusters,
            workspace,
            params,
            previous,
            opts,
            tuning,
        };
        let span = tracing::info_span!("run", run_id = %runner.key.run_id, pipeline = %runner.key.pipeline);
        let run = runner.run().instrument(span);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => r,
            lost = keeper.lost() => {
                // Another runner has the model now: stop as on a signal, recorded.
                tracing::error!(error = %lost, "stopping the run: its run lock was lost");
                cancel.cancel();
                run.await
            }
        }
    }
    .await;
    if let Err(e) = store.release_scoped_lock(LockScope::Run, &lock_model, &holder).await {
        tracing::warn!(model = %lock_model, error = %e, "could not release the run lock; it expires on its own");
    }
    result
}

/// Who starts the run: `RunOptions::started_by`, else the state store's
/// cluster identity (SelfSubjectReview), else the local user for a
/// directory store. Unknown (the review failed) is recorded as absent: a
/// `forbidSelfApproval` gate then refuses every approval rather than guess.
async fn started_by(state: &dyn StateStore, opts: &RunOptions) -> Option<String> {
    if let Some(who) = &opts.started_by {
        return Some(who.clone());
    }
    match state.whoami().await {
        Ok(Some(id)) => Some(id.user),
        Ok(None) => Some(crate::promotion::principal()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot tell who starts this run; it is recorded without a starter");
            None
        }
    }
}

struct Runner {
    pipeline: Arc<Pipeline>,
    pipeline_dir: PathBuf,
    catalog: Arc<crate::catalog::Catalog>,
    plans: Vec<StagePlan>,
    key: RunKey,
    state: Arc<dyn StateStore>,
    clusters: Arc<Clusters>,
    workspace: PathBuf,
    params: BTreeMap<String, String>,
    data: RenderData,
    /// Stage records of the run being resumed, by name.
    previous: BTreeMap<String, StageRecord>,
    opts: RunOptions,
    tuning: Tuning,
}

/// How a stage ended when it did not succeed.
enum StageEnd {
    Failed(StageError),
    /// Ended at an approval gate by `--park`.
    Parked(String),
    Cancelled,
    State(StateError),
}

impl From<StateError> for StageEnd {
    fn from(e: StateError) -> Self {
        StageEnd::State(e)
    }
}

impl Runner {
    async fn run(self) -> Result<RunSummary, EngineError> {
        let mut events = Events::new(self.opts.interactive);
        let mut outputs: BTreeMap<String, Outputs> = BTreeMap::new();
        // Rendered `with:` and outputs of each stage that ran or was reused:
        // what the registry's default links resolve against.
        let mut done: BTreeMap<String, (serde_json::Map<String, Value>, Outputs)> = BTreeMap::new();
        let mut reached_end = true;
        tracing::info!(state = %self.state.describe(), workspace = %self.workspace.display(), "run started");
        for (index, stage) in self.pipeline.spec.stages.iter().enumerate() {
            if self.opts.cancel.is_cancelled() {
                let summary = self.finish(Status::Cancelled, true).await?;
                return Err(EngineError::Cancelled {
                    run_id: self.key.run_id.clone(),
                    stage: stage.name.clone(),
                    summary: Box::new(summary),
                });
            }
            let result = self.stage(index, stage, &outputs, &done, &mut events).await;
            match result {
                Ok(Some((with, o))) => {
                    outputs.insert(stage.name.clone(), o.clone());
                    done.insert(stage.name.clone(), (with, o));
                }
                Ok(None) => {}
                Err(StageEnd::Failed(source)) => {
                    let summary = self.finish(Status::Failed, true).await?;
                    return Err(EngineError::StageFailed {
                        stage: stage.name.clone(),
                        uses: stage.uses.clone(),
                        source,
                        summary: Box::new(summary),
                    });
                }
                Err(StageEnd::Parked(message)) => {
                    tracing::info!(stage = %stage.name, "{message}");
                    return self.finish(Status::WaitingApproval, true).await;
                }
                Err(StageEnd::Cancelled) => {
                    let summary = self.finish(Status::Cancelled, true).await?;
                    return Err(EngineError::Cancelled {
                        run_id: self.key.run_id.clone(),
                        stage: stage.name.clone(),
                        summary: Box::new(summary),
                    });
                }
                Err(StageEnd::State(e)) => {
                    // The store itself failed: try to leave the run marked,
                    // but report the original error.
                    let _ = self.finish(Status::Failed, true).await;
                    return Err(e.into());
                }
            }
            if self.opts.until.as_deref() == Some(stage.name.as_str()) {
                reached_end = index + 1 == self.pipeline.spec.stages.len();
                if !reached_end {
                    tracing::info!(stage = %stage.name, "stopping after stage {} (--until)", stage.name);
                }
                break;
            }
        }
        let summary = self.finish(Status::Succeeded, !reached_end).await?;
        Ok(summary)
    }

    /// One stage: `if:`, render, resume check, then execute. `Ok(None)`: skipped.
    async fn stage(
        &self,
        index: usize,
        stage: &StageSpec,
        outputs: &BTreeMap<String, Outputs>,
        done: &BTreeMap<String, (serde_json::Map<String, Value>, Outputs)>,
        events: &mut Events,
    ) -> Result<Option<(serde_json::Map<String, Value>, Outputs)>, StageEnd> {
        let data = self.data.with_outputs(outputs);
        if let Some(condition) = &stage.condition {
            match render::condition_holds(&stage.name, condition, &data) {
                Ok(true) => {}
                Ok(false) => {
                    let now = now_rfc3339();
                    self.update_stage(&stage.name, move |r| {
                        *r = StageRecord { name: r.name.clone(), uses: r.uses.clone(), ..Default::default() };
                        r.status = Status::Skipped;
                        r.finished = Some(now.clone());
                    })
                    .await?;
                    events.emit(&stage.name, &stage.uses, Event::Skipped { condition });
                    return Ok(None);
                }
                Err(e) => {
                    return Err(self.fail_before_start(stage, StageError::bad_input(e.to_string()), events).await);
                }
            }
        }
        let with = match render::render_with(&stage.name, &stage.with, &data) {
            Ok(w) => w,
            Err(e) => return Err(self.fail_before_start(stage, StageError::bad_input(e.to_string()), events).await),
        };
        let plan = &self.plans[index];
        let digest = inputs_digest(plan.kind.name(), &with, outputs);
        let prev = self.previous.get(&stage.name);
        if let Some(prev) = prev
            && prev.status == Status::Succeeded
            && prev.inputs_digest.as_deref() == Some(digest.as_str())
        {
            if self.files_present(&prev.outputs) {
                events.emit(&stage.name, &stage.uses, Event::Reused);
                return Ok(Some((with, prev.outputs.clone())));
            }
            tracing::info!(stage = %stage.name, "re-running stage {}: files it made are gone from the workspace", stage.name);
        }
        let links = Links::resolve(&self.pipeline, index, done);
        let out = self.execute(stage, plan, with.clone(), digest, prev.cloned(), outputs, links, events).await?;
        Ok(Some((with, out)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        stage: &StageSpec,
        plan: &StagePlan,
        with: serde_json::Map<String, Value>,
        digest: String,
        resumed: Option<StageRecord>,
        outputs: &BTreeMap<String, Outputs>,
        links: Links,
        events: &mut Events,
    ) -> Result<Outputs, StageEnd> {
        let name = stage.name.as_str();
        let uses = stage.uses.as_str();
        let clock = Instant::now();
        let started = now_rfc3339();
        let cancel = &self.opts.cancel;
        for attempt in 1..=plan.max_attempts {
            let (started, digest2) = (started.clone(), digest.clone());
            let record = self
                .update_stage(name, move |r| {
                    r.status = Status::Running;
                    r.attempts = attempt;
                    r.inputs_digest = Some(digest2.clone());
                    if attempt == 1 {
                        r.started = Some(started.clone());
                        r.finished = None;
                        r.duration_ms = None;
                        r.error = None;
                        r.gate = None;
                        r.rolled_back = false;
                        r.outputs.clear();
                    }
                })
                .await?;
            // The record as an earlier attempt or run left it: checkpoints
            // let the stage find what it started.
            let previous = if attempt == 1 { resumed.clone() } else { record };
            events.emit(name, uses, Event::Started { attempt, max_attempts: plan.max_attempts });
            let cx = StageContext {
                run_id: self.key.run_id.clone(),
                pipeline: self.pipeline.clone(),
                pipeline_dir: self.pipeline_dir.clone(),
                stage: stage.clone(),
                attempt,
                workspace: self.workspace.clone(),
                outputs: outputs.clone(),
                links: links.clone(),
                params: self.params.clone(),
                labels: self.opts.labels.clone(),
                previous,
                clusters: self.clusters.clone(),
                state: self.state.clone(),
                run_key: self.key.clone(),
                catalog: self.catalog.clone(),
                cancel: cancel.child_token(),
                interactive: self.opts.interactive,
                park: self.opts.park,
            };
            let span = tracing::info_span!("stage", run_id = %self.key.run_id, stage = name, uses, attempt);
            let work = tokio::time::timeout(plan.timeout, plan.kind.run(with.clone(), &cx)).instrument(span);
            tokio::pin!(work);
            let result = tokio::select! {
                biased;
                // The stage's own token (a child) is cancelled too; give it
                // the grace period to wind down, then drop it.
                _ = cancel.cancelled() => match tokio::time::timeout(self.tuning.cancel_grace, &mut work).await {
                    Ok(Ok(Ok(out))) => Some(Ok(Ok(out))),
                    _ => None,
                },
                r = &mut work => Some(r),
            };
            let err = match result {
                None => return Err(self.cancelled(name, uses, clock, events).await),
                Some(Ok(Ok(out))) => {
                    let (finished, duration) = (now_rfc3339(), clock.elapsed());
                    let out2 = out.clone();
                    self.update_stage(name, move |r| {
                        r.status = Status::Succeeded;
                        r.finished = Some(finished.clone());
                        r.duration_ms = Some(duration.as_millis() as u64);
                        r.outputs = out2.clone();
                        r.error = None;
                    })
                    .await?;
                    events.emit(name, uses, Event::Succeeded { attempts: attempt, duration });
                    return Ok(out);
                }
                Some(Ok(Err(e))) if e.kind == StageErrorKind::Cancelled && cancel.is_cancelled() => {
                    return Err(self.cancelled(name, uses, clock, events).await);
                }
                Some(Ok(Err(e))) if e.kind == StageErrorKind::Parked => {
                    self.update_stage(name, |r| r.status = Status::WaitingApproval).await?;
                    return Err(StageEnd::Parked(e.message));
                }
                Some(Ok(Err(e))) => e,
                // A stage that outran its budget is not retried: another
                // attempt would most likely hang the same way, and retrying
                // would multiply the wall time the author capped.
                Some(Err(_elapsed)) => StageError::msg(format!(
                    "timed out after {} (timeout of stage `{name}`)",
                    humantime::format_duration(plan.timeout)
                )),
            };
            let message = error_chain(&err);
            if err.retryable && attempt < plan.max_attempts {
                let policy = Backoff {
                    base: self.tuning.backoff_base,
                    cap: self.tuning.backoff_cap,
                    attempts: plan.max_attempts,
                };
                let delay = policy.delay(attempt);
                let m = message.clone();
                self.update_stage(name, move |r| r.error = Some(m.clone())).await?;
                events.emit(name, uses, Event::Retrying { attempt, delay, error: &message });
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(self.cancelled(name, uses, clock, events).await),
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            let (finished, duration) = (now_rfc3339(), clock.elapsed());
            let m = message.clone();
            let (gate, rolled_back) = (err.gate.map(|g| g.as_str().to_string()), err.rolled_back);
            self.update_stage(name, move |r| {
                r.status = Status::Failed;
                r.finished = Some(finished.clone());
                r.duration_ms = Some(duration.as_millis() as u64);
                r.error = Some(m.clone());
                r.gate = gate.clone();
                r.rolled_back = rolled_back;
            })
            .await?;
            events.emit(name, uses, Event::Failed { attempts: attempt, duration, error: &message });
            return Err(StageEnd::Failed(err));
        }
        unreachable!("max_attempts is at least 1")
    }

    /// Record the running stage as cancelled.
    async fn cancelled(&self, name: &str, uses: &str, clock: Instant, events: &mut Events) -> StageEnd {
        let (finished, duration) = (now_rfc3339(), clock.elapsed());
        let result = self
            .update_stage(name, move |r| {
                r.status = Status::Cancelled;
                r.finished = Some(finished.clone());
                r.duration_ms = Some(duration.as_millis() as u64);
                r.error = Some("cancelled by signal".into());
            })
            .await;
        events.emit(name, uses, Event::Cancelled { duration });
        match result {
            Ok(_) => StageEnd::Cancelled,
            Err(e) => StageEnd::State(e),
        }
    }

    /// A stage that cannot even start (its `with:` or `if:` does not render).
    async fn fail_before_start(&self, stage: &StageSpec, err: StageError, events: &mut Events) -> StageEnd {
        let message = error_chain(&err);
        let (m, now) = (message.clone(), now_rfc3339());
        if let Err(e) = self
            .update_stage(&stage.name, move |r| {
                r.status = Status::Failed;
                r.finished = Some(now.clone());
                r.error = Some(m.clone());
            })
            .await
        {
            return StageEnd::State(e);
        }
        events.emit(&stage.name, &stage.uses, Event::Failed { attempts: 0, duration: Duration::ZERO, error: &message });
        StageEnd::Failed(err)
    }

    /// Apply `f` to this stage's record; returns the record as written.
    async fn update_stage<F>(&self, name: &str, mut f: F) -> Result<Option<StageRecord>, StateError>
    where
        F: FnMut(&mut StageRecord) + Send,
    {
        let run = self
            .state
            .update_run(&self.key, &mut |r| {
                if let Some(rec) = r.stages.iter_mut().find(|s| s.name == name) {
                    f(rec);
                }
                Ok(())
            })
            .await?;
        Ok(run.stages.into_iter().find(|s| s.name == name))
    }

    /// Set the run's final status and build the summary. `keep_workspace`:
    /// something may still resume this run.
    async fn finish(&self, status: Status, keep_workspace: bool) -> Result<RunSummary, EngineError> {
        let record = self
            .state
            .update_run(&self.key, &mut |r| {
                r.status = status;
                Ok(())
            })
            .await?;
        self.prune_runs().await;
        let ours = self.opts.workspace.is_none();
        let workspace = if status == Status::Succeeded && !keep_workspace && ours {
            if let Err(e) = std::fs::remove_dir_all(&self.workspace) {
                tracing::warn!(workspace = %self.workspace.display(), "cannot remove the run's workspace: {e}");
            }
            None
        } else {
            Some(self.workspace.clone())
        };
        tracing::info!(status = %status, "run {status}");
        Ok(RunSummary {
            run_id: record.run_id,
            pipeline: record.pipeline,
            model: record.model,
            status,
            stages: record.stages,
            workspace,
            state: self.state.describe(),
        })
    }

    /// `spec.state.keepRuns`: delete the pipeline's oldest finished run
    /// records. The run itself is over, so a refusal (a Role without
    /// `delete` on configmaps) is a warning, not a failed run.
    async fn prune_runs(&self) {
        let keep = self.pipeline.keep_runs();
        match crate::state::prune_runs(self.state.as_ref(), &self.key.pipeline, keep).await {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(keep, deleted = deleted.len(), oldest = %deleted[deleted.len() - 1], "deleted old run records (spec.state.keepRuns)");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(keep, error = %e, "cannot delete old run records (spec.state.keepRuns); they stay")
            }
        }
    }

    /// False if an output names a path inside the workspace that no longer
    /// exists (a resume on another machine or after cleanup): the stage that
    /// made it must run again.
    fn files_present(&self, outputs: &Outputs) -> bool {
        let root = self.workspace.to_string_lossy();
        outputs.values().all(|v| match v {
            Value::String(s) if s.starts_with(root.as_ref()) => Path::new(s).exists(),
            _ => true,
        })
    }
}

/// The error and its causes on one line, masked.
fn error_chain(err: &StageError) -> String {
    crate::secret::mask(&crate::error::chain(err))
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn only_a_dead_process_of_the_same_run_on_this_host_is_taken_over() {
        let key = RunKey { pipeline: "weather".into(), run_id: "r1".into() };
        let Some(host) = hostname() else { return };
        // No process has the largest pid; ours is alive.
        let dead = format!("run r1 of weather (pid 4294967295 on {host})");
        assert_eq!(dead_local_holder(&dead, &key), Path::new("/proc/self").exists());
        assert!(!dead_local_holder(&run_lock_holder(&key), &key), "a live holder (this process)");
        assert!(!dead_local_holder(&format!("run r2 of weather (pid 4294967295 on {host})"), &key), "another run");
        assert!(!dead_local_holder("run r1 of weather (pid 4294967295 on elsewhere)", &key), "another host");
    }
}
