//! What the engine hands a stage, and what a stage hands back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::cluster::Clusters;
use crate::error::{ExitClass, HasExitClass};
use crate::spec::{Pipeline, StageSpec};
use crate::state::{RunKey, StageRecord, StateStore};

/// A stage's outputs: name -> JSON value.
pub type Outputs = BTreeMap<String, Value>;

/// Inputs to a kind's pure `validate`/`plan`.
pub struct ValidateCx<'a> {
    pub pipeline: &'a Pipeline,
    pub stage: &'a StageSpec,
    /// Index of `stage` in `spec.stages`.
    pub index: usize,
    pub catalog: &'a Catalog,
}

impl ValidateCx<'_> {
    /// Stages before this one, in order.
    pub fn earlier(&self) -> &[StageSpec] {
        &self.pipeline.spec.stages[..self.index]
    }

    /// Whether a stage of kind `uses` may run before this one. An earlier
    /// stage of unknown kind counts: it is reported on its own, and a
    /// misspelt `openshift-build` must not also make every later stage
    /// complain that no build comes first.
    pub fn may_follow(&self, uses: &str) -> bool {
        self.earlier().iter().any(|s| s.uses == uses || super::Kind::from_name(&s.uses).is_none())
    }

    /// A problem at `path` if `name` is not a declared environment (templated
    /// values are checked after rendering, at run time).
    pub fn environment_problem(&self, path: &str, name: &str) -> Option<Problem> {
        if crate::template::is_template(name) || self.pipeline.spec.environments.contains_key(name) {
            return None;
        }
        let declared: Vec<&str> = self.pipeline.spec.environments.keys().map(String::as_str).collect();
        let mut p = Problem::new(path, format!("environment `{name}` is not declared in spec.environments"));
        p.hint = Some(format!("declared: {}", declared.join(", ")));
        Some(p)
    }
}

/// One problem in a stage's `with:`; the spec validator turns `path` into a
/// file position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path below `with`, e.g. `cases[0].expect`; empty for `with` itself.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem { path: path.into(), message: message.into(), hint: None }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// Everything a running stage may use. Built by the engine per attempt.
pub struct StageContext {
    pub run_id: String,
    pub pipeline: Arc<Pipeline>,
    /// Directory of the pipeline file; relative paths resolve against it.
    pub pipeline_dir: PathBuf,
    pub stage: StageSpec,
    /// 1-based attempt number within this invocation.
    pub attempt: u32,
    /// The run's workspace; a stage keeps its files under `workspace/<stage>`.
    pub workspace: PathBuf,
    /// Outputs of the stages that ran (or were skipped on resume) before this one.
    pub outputs: BTreeMap<String, Outputs>,
    /// Pipeline params after `--set`.
    pub params: BTreeMap<String, String>,
    /// Extra run labels (e.g. `commit` from a trigger).
    pub labels: BTreeMap<String, String>,
    /// This stage's record from an earlier attempt or run, if any: its
    /// checkpoints let a resumed stage find what it started.
    pub previous: Option<StageRecord>,
    pub clusters: Arc<Clusters>,
    pub state: Arc<dyn StateStore>,
    pub run_key: RunKey,
    pub catalog: Arc<Catalog>,
    pub cancel: CancellationToken,
    /// Show progress bars (stderr is a TTY and logs are text).
    pub interactive: bool,
}

impl StageContext {
    /// This stage's own directory in the workspace (created on demand).
    pub fn stage_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.workspace.join(&self.stage.name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Outputs of the most recent earlier stage of `kind` (e.g. render reads
    /// fetch-model's model directory without the author wiring it).
    pub fn outputs_of_kind(&self, kind: &str) -> Option<&Outputs> {
        let stages = &self.pipeline.spec.stages;
        let idx = stages.iter().position(|s| s.name == self.stage.name)?;
        stages[..idx].iter().rev().find(|s| s.uses == kind).and_then(|s| self.outputs.get(&s.name))
    }

    /// A checkpoint value recorded by an earlier attempt of this stage.
    pub fn checkpoint(&self, key: &str) -> Option<&Value> {
        self.previous.as_ref().and_then(|r| r.checkpoints.get(key))
    }

    /// Durably record a checkpoint (e.g. the name of a Build just started)
    /// in the run record before acting on it, so a killed runner resumes there.
    pub async fn save_checkpoint(&self, key: &str, value: Value) -> Result<(), StageError> {
        let stage = self.stage.name.clone();
        let key = key.to_string();
        self.state
            .update_run(&self.run_key, &mut |run| {
                if let Some(rec) = run.stages.iter_mut().find(|s| s.name == stage) {
                    rec.checkpoints.insert(key.clone(), value.clone());
                }
                Ok(())
            })
            .await
            .map(|_| ())
            .map_err(|e| StageError::failed(e).retryable())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageErrorKind {
    /// The stage's work failed (exit 1).
    Failed,
    /// The stage's input is wrong and no retry helps (exit 2).
    BadInput,
    /// Cancelled by SIGINT/SIGTERM or the stage timeout.
    Cancelled,
}

/// A stage failure. Modules keep their own `thiserror` enums and wrap them
/// here; `retryable` marks errors worth another attempt (network, 5xx, 429).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    pub kind: StageErrorKind,
    pub retryable: bool,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StageError {
    pub fn failed<E: std::error::Error + Send + Sync + 'static>(err: E) -> Self {
        StageError {
            kind: StageErrorKind::Failed,
            retryable: false,
            message: crate::secret::mask(&err.to_string()),
            source: Some(Box::new(err)),
        }
    }
    pub fn msg(message: impl Into<String>) -> Self {
        StageError {
            kind: StageErrorKind::Failed,
            retryable: false,
            message: crate::secret::mask(&message.into()),
            source: None,
        }
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        StageError { kind: StageErrorKind::BadInput, ..StageError::msg(message) }
    }
    pub fn cancelled() -> Self {
        StageError { kind: StageErrorKind::Cancelled, ..StageError::msg("cancelled") }
    }
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
}

impl HasExitClass for StageError {
    fn exit_class(&self) -> ExitClass {
        match self.kind {
            StageErrorKind::BadInput => ExitClass::BadInput,
            StageErrorKind::Failed | StageErrorKind::Cancelled => ExitClass::Failed,
        }
    }
}
