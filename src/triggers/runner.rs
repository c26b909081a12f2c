//! The seam between "this push selects pipeline P at commit C" and running
//! it. Production runs go through [`EngineRunner`] to [`crate::engine::run`];
//! the server and `modelship trigger` only see the trait, so selection,
//! verification, replay protection, concurrency and metrics are testable
//! without a cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::engine::{self, EngineError, RunOptions};
use crate::error::HasExitClass;
use crate::state::{PromotionResult, StageRecord, Status, gate_failures};

/// One selected pipeline at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub pipeline: String,
    /// The pipeline's `spec.model.name`.
    pub model: String,
    pub file: PathBuf,
    /// The pushed commit (`after`).
    pub commit: String,
    pub branch: String,
    /// `github`, `gitlab` or `cli`.
    pub source: String,
    /// Pass the commit as `--set commit=SHA` (the pipeline declares the param).
    pub set_commit: bool,
    /// The host's delivery id (`X-GitHub-Delivery`, `X-Gitlab-Event-UUID`),
    /// kept as the run label `delivery`.
    pub delivery: Option<String>,
    /// The Git host's name of who pushed ([`super::event::PushEvent::pusher`]):
    /// the run's starter, whom `forbidSelfApproval` keeps from approving it.
    pub pushed_by: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The engine's run id, when it got as far as making one.
    pub run_id: Option<String>,
    /// `Succeeded`, `Failed` or `Cancelled`.
    pub status: Status,
    /// (stage, seconds) for the stages that ran.
    pub stages: Vec<(String, f64)>,
    pub error: Option<String>,
    /// Exit class of the failure (bad input vs failed), for the CLI.
    pub bad_input: bool,
    /// What the run's promote stages did.
    pub promotions: Vec<PromotionResult>,
    /// The gates that stopped its stages (`checks`, `slo`, `signature`, `approval`).
    pub gate_failures: Vec<String>,
    /// Handed to Tekton instead of run here: the PipelineRun's name.
    pub dispatched: Option<String>,
}

impl RunOutcome {
    /// An outcome with no run behind it (it never started, or not here).
    pub fn without_run(status: Status, error: Option<String>, bad_input: bool) -> RunOutcome {
        RunOutcome {
            run_id: None,
            status,
            stages: Vec::new(),
            error,
            bad_input,
            promotions: Vec::new(),
            gate_failures: Vec::new(),
            dispatched: None,
        }
    }

    fn of(summary: &engine::RunSummary, status: Status, error: Option<String>, bad_input: bool) -> RunOutcome {
        RunOutcome {
            run_id: Some(summary.run_id.clone()),
            status,
            stages: durations(&summary.stages),
            error,
            bad_input,
            promotions: crate::stages::promote::results(&summary.stages),
            gate_failures: gate_failures(&summary.stages),
            dispatched: None,
        }
    }
}

#[async_trait]
pub trait PipelineRunner: Send + Sync {
    /// Run to the end. `cancel` fires on shutdown; the run must then record
    /// its state as cancelled and return.
    async fn run(&self, req: &RunRequest, cancel: CancellationToken) -> RunOutcome;
}

/// Runs pipelines with the engine, against real clusters (or `state_dir`).
#[derive(Debug, Clone, Default)]
pub struct EngineRunner {
    pub kubeconfig: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub stages_dir: Option<PathBuf>,
}

impl EngineRunner {
    /// The engine options for `req`: commit in the labels, and as a param
    /// when the pipeline declares one.
    pub fn options(&self, req: &RunRequest, cancel: CancellationToken) -> RunOptions {
        let mut labels = BTreeMap::new();
        labels.insert("commit".to_string(), req.commit.clone());
        labels.insert("trigger".to_string(), req.source.clone());
        if let Some(delivery) = &req.delivery {
            labels.insert("delivery".to_string(), delivery.clone());
        }
        RunOptions {
            pipeline: req.file.clone(),
            sets: if req.set_commit { vec![("commit".to_string(), req.commit.clone())] } else { Vec::new() },
            kubeconfig: self.kubeconfig.clone(),
            state_dir: self.state_dir.clone(),
            stages_dir: self.stages_dir.clone(),
            labels,
            cancel,
            started_by: req.pushed_by.clone(),
            ..RunOptions::default()
        }
    }
}

fn durations(stages: &[StageRecord]) -> Vec<(String, f64)> {
    stages.iter().filter_map(|s| s.duration_ms.map(|ms| (s.name.clone(), ms as f64 / 1000.0))).collect()
}

#[async_trait]
impl PipelineRunner for EngineRunner {
    async fn run(&self, req: &RunRequest, cancel: CancellationToken) -> RunOutcome {
        outcome(engine::run(self.options(req, cancel)).await)
    }
}

/// How an engine run ended, for the server and the CLI.
pub fn outcome(result: Result<engine::RunSummary, EngineError>) -> RunOutcome {
    match result {
        Ok(summary) => RunOutcome::of(&summary, summary.status, None, false),
        Err(err) => {
            let bad_input = err.exit_class() == crate::ExitClass::BadInput;
            let error = Some(crate::secret::mask(&ErrorChain(&err).to_string()));
            match &err {
                EngineError::StageFailed { summary, .. } => RunOutcome::of(summary, Status::Failed, error, bad_input),
                EngineError::Cancelled { summary, .. } => RunOutcome::of(summary, Status::Cancelled, error, bad_input),
                _ => RunOutcome::without_run(Status::Failed, error, bad_input),
            }
        }
    }
}

/// Display an error with its causes, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(set_commit: bool) -> RunRequest {
        RunRequest {
            pipeline: "weather".into(),
            model: "weather".into(),
            file: "pipelines/weather.yaml".into(),
            commit: "ef75c7db8a921a8c0adaabe2e309f2f9d7ce5bd4".into(),
            branch: "main".into(),
            source: "github".into(),
            set_commit,
            delivery: Some("72d3162e-cc78-11e3-81ab-4c9367dc0958".into()),
            pushed_by: Some("octocat".into()),
        }
    }

    #[test]
    fn engine_options_carry_the_commit() {
        let runner = EngineRunner { state_dir: Some("/state".into()), ..EngineRunner::default() };
        let cancel = CancellationToken::new();
        let opts = runner.options(&req(true), cancel.clone());
        assert_eq!(opts.pipeline, PathBuf::from("pipelines/weather.yaml"));
        assert_eq!(opts.labels.get("commit").map(String::as_str), Some("ef75c7db8a921a8c0adaabe2e309f2f9d7ce5bd4"));
        assert_eq!(opts.labels.get("trigger").map(String::as_str), Some("github"));
        assert_eq!(opts.labels.get("delivery").map(String::as_str), Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert_eq!(opts.sets, [("commit".to_string(), "ef75c7db8a921a8c0adaabe2e309f2f9d7ce5bd4".to_string())]);
        assert_eq!(opts.state_dir, Some(PathBuf::from("/state")));
        assert!(!opts.dry_run);
        assert_eq!(opts.started_by.as_deref(), Some("octocat"), "the pusher started the run");
        cancel.cancel();
        assert!(opts.cancel.is_cancelled(), "shutdown reaches the engine");
        // A pipeline without a `commit` param gets no --set (the engine would reject it).
        assert!(runner.options(&req(false), CancellationToken::new()).sets.is_empty());
    }
}
