//! What the engine hands a stage, and what a stage hands back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::{Contract, Kind};
use crate::catalog::Catalog;
use crate::cluster::Clusters;
use crate::error::{ExitClass, HasExitClass};
use crate::spec::{Pipeline, Problem, StageSpec};
use crate::state::{RunKey, StageRecord, StateStore};

/// A stage's outputs: name -> JSON value.
pub type Outputs = BTreeMap<String, Value>;

/// Serialize a kind's typed output into the map templates and the run record see.
pub fn to_outputs<T: serde::Serialize>(output: &T) -> Result<Outputs, StageError> {
    match serde_json::to_value(output) {
        Ok(Value::Object(map)) => Ok(map.into_iter().collect()),
        Ok(other) => Err(StageError::msg(format!("stage output is not an object: {other} (this is a bug)"))),
        Err(e) => Err(StageError::msg(format!("cannot serialise the stage's outputs: {e} (this is a bug)"))),
    }
}

/// One resolved default link: the earlier stage, its rendered `with:` and its outputs.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub stage: String,
    pub with: Map<String, Value>,
    pub outputs: Outputs,
}

/// The default links of one stage, by the kind they come from.
#[derive(Debug, Clone, Default)]
pub struct Links(BTreeMap<Kind, Link>);

impl Links {
    /// For stage `index` of `pipeline`: for each kind it reads by default
    /// ([`Kind::inputs`]), the latest earlier stage of that kind, if that
    /// stage has outputs in `done` (a stage skipped by its `if:` has none).
    /// `done` maps stage names to their rendered `with:` and outputs.
    pub fn resolve(pipeline: &Pipeline, index: usize, done: &BTreeMap<String, (Map<String, Value>, Outputs)>) -> Links {
        let stages = &pipeline.spec.stages;
        let Some(kind) = stages.get(index).and_then(|s| Kind::from_name(&s.uses)) else { return Links::default() };
        let mut links = BTreeMap::new();
        for input in kind.inputs() {
            let Some(spec) = stages[..index].iter().rev().find(|s| s.uses == input.name()) else { continue };
            if let Some((with, outputs)) = done.get(&spec.name) {
                links.insert(*input, Link { stage: spec.name.clone(), with: with.clone(), outputs: outputs.clone() });
            }
        }
        Links(links)
    }

    /// For a stage run outside the engine (tests, benchmarks): as
    /// [`Links::resolve`], taking each earlier stage's `with:` as written.
    pub fn from_outputs(pipeline: &Pipeline, stage: &str, outputs: &BTreeMap<String, Outputs>) -> Links {
        let stages = &pipeline.spec.stages;
        let Some(index) = stages.iter().position(|s| s.name == stage) else { return Links::default() };
        let done = stages[..index]
            .iter()
            .filter_map(|s| outputs.get(&s.name).map(|o| (s.name.clone(), (s.with.clone(), o.clone()))))
            .collect();
        Links::resolve(pipeline, index, &done)
    }

    pub fn get(&self, kind: Kind) -> Option<&Link> {
        self.0.get(&kind)
    }
}

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

    /// The stage a stage of this kind reads `S`'s outputs from by default
    /// (the latest earlier one; see the registry's default wiring).
    pub fn linked<S: Contract>(&self) -> Option<&StageSpec> {
        let kind = Kind::of::<S>();
        debug_assert!(self.reads(kind), "`{}` does not read `{kind}` by default (kind.rs)", self.stage.uses);
        self.earlier().iter().rev().find(|s| s.uses == kind.name())
    }

    /// Whether a run may find `S`'s outputs: a linked stage exists, or an
    /// earlier stage of unknown kind might be one. That unknown kind is
    /// reported on its own, and a misspelt `openshift-build` must not also
    /// make every later stage complain that no build comes first.
    pub fn may_link<S: Contract>(&self) -> bool {
        self.linked::<S>().is_some() || self.earlier().iter().any(|s| Kind::from_name(&s.uses).is_none())
    }

    fn reads(&self, kind: Kind) -> bool {
        Kind::from_name(&self.stage.uses).is_none_or(|k| k.inputs().contains(&kind))
    }

    /// A problem at `path` if `name` is not a declared environment.
    pub fn environment_problem(&self, path: &str, name: &str) -> Option<Problem> {
        crate::spec::environment_problem(self.pipeline, path, name)
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
    /// Outputs of the stages that ran (or were skipped on resume) before
    /// this one, by stage name: what `{{stages.X.outputs.Y}}` saw.
    pub outputs: BTreeMap<String, Outputs>,
    /// The earlier stages this one reads by default, resolved by the engine
    /// from the registry's wiring ([`Links::resolve`]).
    pub links: Links,
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
    /// `run --park`: end the run at an approval gate instead of waiting there.
    pub park: bool,
}

impl StageContext {
    /// This stage's own directory in the workspace (created on demand).
    pub fn stage_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.workspace.join(&self.stage.name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The typed outputs of the stage this one reads `S`'s outputs from by
    /// default (see the registry's default wiring), if it ran.
    pub fn input<S: Contract>(&self) -> Result<Option<S::Output>, StageError> {
        let Some(link) = self.link::<S>() else { return Ok(None) };
        serde_json::from_value(Value::Object(link.outputs.clone().into_iter().collect()))
            .map(Some)
            .map_err(|e| StageError::msg(format!("outputs of stage `{}` ({}): {e}", link.stage, S::KIND)))
    }

    /// The rendered `with:` of that stage, typed.
    pub fn input_params<S: Contract>(&self) -> Result<Option<S::Params>, StageError> {
        let Some(link) = self.link::<S>() else { return Ok(None) };
        super::kind::parse_params::<S>(&link.with)
            .map(Some)
            .map_err(|p| StageError::bad_input(format!("stage `{}` with.{}: {}", link.stage, p.path, p.message)))
    }

    fn link<S: Contract>(&self) -> Option<&Link> {
        let kind = Kind::of::<S>();
        debug_assert!(
            Kind::from_name(&self.stage.uses).is_none_or(|k| k.inputs().contains(&kind)),
            "`{}` does not read `{kind}` by default (add it to its line in kind.rs)",
            self.stage.uses
        );
        self.links.get(kind)
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
    /// Stopped at an approval gate on purpose (`run --park`): the run is
    /// recorded as `waiting-approval`, not failed.
    Parked,
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
    /// The promotion gate that stopped the stage, recorded in its
    /// [`crate::state::StageRecord::gate`] for metrics and reports.
    pub gate: Option<Gate>,
    /// The stage pointed its target back at the earlier digest before failing.
    pub rolled_back: bool,
}

/// The gates a digest passes on its way to an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Prediction cases (status, body checks).
    Checks,
    /// Latency and error-rate objectives under load.
    Slo,
    /// Signature and attestation the target requires.
    Signature,
    /// A person's approval (rejected or timed out).
    Approval,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Checks => "checks",
            Gate::Slo => "slo",
            Gate::Signature => "signature",
            Gate::Approval => "approval",
        }
    }
}

impl StageError {
    pub fn failed<E: std::error::Error + Send + Sync + 'static>(err: E) -> Self {
        StageError {
            kind: StageErrorKind::Failed,
            retryable: false,
            message: crate::secret::mask(&err.to_string()),
            source: Some(Box::new(err)),
            gate: None,
            rolled_back: false,
        }
    }
    pub fn msg(message: impl Into<String>) -> Self {
        StageError {
            kind: StageErrorKind::Failed,
            retryable: false,
            message: crate::secret::mask(&message.into()),
            source: None,
            gate: None,
            rolled_back: false,
        }
    }
    pub fn bad_input(message: impl Into<String>) -> Self {
        StageError { kind: StageErrorKind::BadInput, ..StageError::msg(message) }
    }
    pub fn cancelled() -> Self {
        StageError { kind: StageErrorKind::Cancelled, ..StageError::msg("cancelled") }
    }
    pub fn parked(message: impl Into<String>) -> Self {
        StageError { kind: StageErrorKind::Parked, ..StageError::msg(message) }
    }
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }
    pub fn at_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }
}

impl HasExitClass for StageError {
    fn exit_class(&self) -> ExitClass {
        match self.kind {
            StageErrorKind::BadInput => ExitClass::BadInput,
            StageErrorKind::Failed | StageErrorKind::Cancelled => ExitClass::Failed,
            StageErrorKind::Parked => ExitClass::Failed,
        }
    }
}
