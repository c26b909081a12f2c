//! The engine: loads and validates a pipeline, opens the state store, runs
//! stages in order (outputs forward, strict `with:` rendering, per-stage
//! timeout and retries with jittered backoff for retryable errors),
//! cancels cleanly on SIGINT/SIGTERM, and resumes a run by skipping stages
//! that succeeded with unchanged inputs. Stage lifecycle events (started,
//! retried, succeeded, failed, cancelled, skipped) are logged here and
//! nowhere else.
//!
//! - `prepare`: everything checked before anything is written (file, params,
//!   `--until`, timeouts, run id) and the `--dry-run` plan.
//! - `exec`: the run record, the stage loop, retries, timeouts, cancellation
//!   with a grace period, resume, the per-run workspace.
//! - `render`: `with:`/`if:` rendering against params, outputs, env, run.
//! - `digest`: the inputs digest a resume compares.
//! - `events`: lifecycle log lines and progress spinners.

mod digest;
mod events;
mod exec;
mod prepare;
mod render;
#[cfg(test)]
pub(crate) mod testkind;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{ExitClass, HasExitClass};
use crate::spec::SpecError;
use crate::stages::StageError;
use crate::state::{StageRecord, StateError, Status};

/// Everything `modelship run` can be told.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub pipeline: PathBuf,
    /// `--set KEY=VALUE`, in order.
    pub sets: Vec<(String, String)>,
    pub run_id: Option<String>,
    /// `--resume ID`: re-run that run, skipping stages that succeeded with
    /// unchanged inputs.
    pub resume: Option<String>,
    /// Stop after this stage.
    pub until: Option<String>,
    /// Keep the run's files here instead of a temporary directory.
    pub workspace: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    /// Use the directory state backend here instead of ConfigMaps.
    pub state_dir: Option<PathBuf>,
    pub stages_dir: Option<PathBuf>,
    /// Extra run labels (e.g. `commit` from a trigger).
    pub labels: BTreeMap<String, String>,
    pub dry_run: bool,
    /// Progress bars allowed (stderr is a TTY and logs are text).
    pub interactive: bool,
    /// Cancelled on SIGINT/SIGTERM.
    pub cancel: CancellationToken,
    /// Where environments and the model source are, when not as the file
    /// says (`--context`, `--registry`, `--model-endpoint`, `--model-secret`;
    /// `--sim` sets them for the clusters it starts).
    pub overrides: crate::spec::Overrides,
    /// `--park`: end the run at an approval gate (recorded
    /// `waiting-approval`, the run lock released) instead of waiting there.
    pub park: bool,
    /// How long to wait for another run of the model ([`RUN_LOCK_WAIT`]; zero fails fast).
    pub lock_wait: Option<std::time::Duration>,
    /// How long the run lock lives without renewal ([`RUN_LOCK_TTL`]).
    pub lock_ttl: Option<std::time::Duration>,
    /// Who starts the run, when the caller knows better than the state
    /// store's credentials (a push's sender).
    pub started_by: Option<String>,
}

/// What a run ended as; `--output json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub run_id: String,
    pub pipeline: String,
    pub model: String,
    pub status: Status,
    pub stages: Vec<StageRecord>,
    /// Where the run's files are (only when kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workspace: Option<PathBuf>,
    pub state: String,
}

/// The resolved plan `--dry-run` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub pipeline: String,
    pub run_id: String,
    pub state: String,
    pub stages: Vec<PlannedStage>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStage {
    pub name: String,
    pub uses: String,
    /// `with:` with params and env resolved; references to outputs of
    /// earlier stages stay as written (they do not exist yet).
    pub with: serde_json::Map<String, serde_json::Value>,
    /// Targets: cluster, namespace, resources.
    pub targets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{0}")]
    BadInput(String),
    #[error("state: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The reason is the source, printed by the binary's cause chain.
    #[error("stage `{stage}` ({uses}) failed")]
    StageFailed {
        stage: String,
        uses: String,
        #[source]
        source: StageError,
        summary: Box<RunSummary>,
    },
    #[error("run {run_id} cancelled during stage `{stage}`")]
    Cancelled { run_id: String, stage: String, summary: Box<RunSummary> },
    #[error("run {run_id} cancelled while waiting for the run lock of model `{model}`")]
    CancelledWaiting { run_id: String, model: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HasExitClass for EngineError {
    fn exit_class(&self) -> ExitClass {
        match self {
            EngineError::Spec(_) | EngineError::BadInput(_) => ExitClass::BadInput,
            EngineError::StageFailed { source, .. } => source.exit_class(),
            EngineError::State(e) => e.exit_class(),
            EngineError::Cluster(e) => e.exit_class(),
            EngineError::Cancelled { .. } | EngineError::CancelledWaiting { .. } | EngineError::Io { .. } => {
                ExitClass::Failed
            }
        }
    }
}

pub use exec::{RUN_LOCK_TTL, RUN_LOCK_WAIT, backoff_delay, default_workspace, open_state, run_lock_holder};
pub use prepare::{LOCAL_STATE_DIR, generate_run_id, local_state_dir};

/// Run a pipeline to the end (or `--until`): load and validate the file,
/// then [`exec::run_prepared`].
pub async fn run(opts: RunOptions) -> Result<RunSummary, EngineError> {
    if opts.dry_run {
        // A caller that asked for a dry run must never get a real one.
        return Err(EngineError::BadInput(
            "--dry-run: resolve the plan with engine::plan; run touches clusters".into(),
        ));
    }
    let prepared = prepare::prepare(&opts)?;
    exec::run_prepared(prepared, opts).await
}

/// Resolve the plan `--dry-run` prints. Touches nothing: no state store, no
/// cluster, no workspace.
pub fn plan(opts: &RunOptions) -> Result<Plan, EngineError> {
    let prepared = prepare::prepare(opts)?;
    prepare::plan_prepared(&prepared, opts)
}
