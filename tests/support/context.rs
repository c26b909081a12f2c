//! The one `StageContext` builder, for running one stage the way the engine
//! does but without it: sensible defaults (run `run-1`, attempt 1, no
//! earlier outputs, an in-memory state store, the embedded catalog) and a
//! setter for what a test is about. The only place in `tests/` that writes
//! the `StageContext` struct, so a field added there is added here once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use modelship::catalog::Catalog;
use modelship::cluster::Clusters;
use modelship::spec::{Pipeline, StageSpec};
use modelship::stages::{Kind, Links, Outputs, StageContext, StageError};
use modelship::state::{RunKey, RunRecord, StageRecord, StateStore, Status};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::memory_state::MemoryState;

pub struct ContextBuilder {
    pipeline: Arc<Pipeline>,
    stage: StageSpec,
    run_id: String,
    pipeline_dir: PathBuf,
    workspace: PathBuf,
    attempt: u32,
    outputs: BTreeMap<String, Outputs>,
    previous: Option<StageRecord>,
    kubeconfig: Option<PathBuf>,
    clusters: Option<Arc<Clusters>>,
    state: Option<Arc<dyn StateStore>>,
}

/// A context for `pipeline`'s stage `name`, with the pipeline directory
/// and the workspace both `dir`.
pub fn stage(pipeline: &Pipeline, name: &str, dir: &Path) -> ContextBuilder {
    let stage = pipeline
        .spec
        .stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("the test pipeline has no stage {name}"))
        .clone();
    ContextBuilder {
        pipeline: Arc::new(pipeline.clone()),
        stage,
        run_id: "run-1".into(),
        pipeline_dir: dir.to_path_buf(),
        workspace: dir.to_path_buf(),
        attempt: 1,
        outputs: BTreeMap::new(),
        previous: None,
        kubeconfig: None,
        clusters: None,
        state: None,
    }
}

impl ContextBuilder {
    pub fn run_id(mut self, run_id: &str) -> Self {
        self.run_id = run_id.into();
        self
    }

    pub fn workspace(mut self, dir: impl AsRef<Path>) -> Self {
        self.workspace = dir.as_ref().to_path_buf();
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The earlier stage `stage`'s output `key`.
    pub fn output(mut self, stage: &str, key: &str, value: Value) -> Self {
        self.outputs.entry(stage.into()).or_default().insert(key.into(), value);
        self
    }

    /// The earlier stage `stage`'s outputs.
    pub fn outputs(mut self, stage: &str, outputs: Outputs) -> Self {
        self.outputs.insert(stage.into(), outputs);
        self
    }

    /// This stage's record from an earlier attempt.
    pub fn previous(mut self, previous: Option<StageRecord>) -> Self {
        self.previous = previous;
        self
    }

    /// `Clusters` for the pipeline's environments through `kubeconfig`
    /// (by default, through none).
    pub fn kubeconfig(mut self, kubeconfig: impl AsRef<Path>) -> Self {
        self.kubeconfig = Some(kubeconfig.as_ref().to_path_buf());
        self
    }

    /// These `Clusters` (e.g. with a retry policy of the test's).
    pub fn clusters(mut self, clusters: Arc<Clusters>) -> Self {
        self.clusters = Some(clusters);
        self
    }

    /// The run's state store (by default a fresh [`MemoryState`]).
    pub fn state(mut self, state: Arc<dyn StateStore>) -> Self {
        self.state = Some(state);
        self
    }

    pub fn run_key(&self) -> RunKey {
        RunKey { pipeline: self.pipeline.metadata.name.clone(), run_id: self.run_id.clone() }
    }

    /// The record of this run as the engine creates it: `running`, with
    /// this stage in it.
    pub fn record(&self) -> RunRecord {
        RunRecord {
            run_id: self.run_id.clone(),
            pipeline: self.pipeline.metadata.name.clone(),
            model: self.pipeline.spec.model.name.clone(),
            pipeline_digest: "sha256:0".into(),
            status: Status::Running,
            created: "2026-01-01T00:00:00Z".into(),
            updated: "2026-01-01T00:00:00Z".into(),
            stages: vec![StageRecord {
                name: self.stage.name.clone(),
                uses: self.stage.uses.clone(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    pub fn build(self) -> StageContext {
        let run_key = self.run_key();
        // The engine resolves the registry's default links; here from the
        // earlier stages' `with:` as written.
        let links = Links::from_outputs(&self.pipeline, &self.stage.name, &self.outputs);
        let clusters = self.clusters.unwrap_or_else(|| {
            Arc::new(Clusters::new(self.pipeline.spec.environments.clone(), self.kubeconfig.clone()))
        });
        StageContext {
            run_id: self.run_id,
            pipeline: self.pipeline,
            pipeline_dir: self.pipeline_dir,
            stage: self.stage,
            attempt: self.attempt,
            workspace: self.workspace,
            links,
            outputs: self.outputs,
            params: BTreeMap::new(),
            labels: BTreeMap::new(),
            previous: self.previous,
            clusters,
            state: self.state.unwrap_or_else(|| Arc::new(MemoryState::default())),
            run_key,
            catalog: Arc::new(Catalog::embedded()),
            cancel: CancellationToken::new(),
            interactive: false,
            park: false,
        }
    }
}

/// Run `cx`'s stage with its own `with:` from the pipeline.
pub async fn run(cx: &StageContext) -> Result<Outputs, StageError> {
    run_with(cx, cx.stage.with.clone()).await
}

/// Run `cx`'s stage with `with` (a JSON object).
pub async fn run_with(cx: &StageContext, with: serde_json::Map<String, Value>) -> Result<Outputs, StageError> {
    Kind::from_name(&cx.stage.uses).unwrap_or_else(|| panic!("no stage kind {}", cx.stage.uses)).run(with, cx).await
}
