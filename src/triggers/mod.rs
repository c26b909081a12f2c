//! Git push triggers: from a GitHub or GitLab push payload to the pipelines
//! it selects, and the webhook server that does this for every delivery.
//!
//! - [`event`]: the push payload, read into one provider-neutral shape.
//! - [`git`]: what the push changed, computed with git2 from `before`/`after`
//!   (new branch, force push, deleted branch).
//! - [`select`]: which pipelines' `triggers.push` branch and path globs match,
//!   and why each does or does not run.
//! - [`signature`]: GitHub's `X-Hub-Signature-256` and GitLab's
//!   `X-Gitlab-Token`, both compared in constant time.
//! - [`replay`]: recently seen delivery ids, bounded.
//! - [`runner`]: the seam between selection and the engine.
//! - [`tekton`]: `--dispatch tekton`, a PipelineRun per selected pipeline.
//! - [`metrics`]: Prometheus text exposition.
//! - [`server`]: `modelship serve` (axum).

pub mod event;
pub mod git;
pub mod metrics;
pub mod replay;
pub mod runner;
pub mod select;
pub mod server;
pub mod signature;
pub mod tekton;

use std::path::PathBuf;

use crate::error::{ExitClass, HasExitClass};

pub use event::{Provider, PushEvent};
pub use git::{ChangeKind, ChangeSet};
pub use runner::{EngineRunner, PipelineRunner, RunOutcome, RunRequest};
pub use select::{Decision, TriggerPlan, TriggerRequest, plan};
pub use server::{ServerConfig, serve};

/// Everything that can go wrong between a payload and a list of runs.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: malformed JSON: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: {message}")]
    Payload { what: String, message: String },
    #[error("cannot open the Git repository at {path}: {source}")]
    OpenRepo {
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("git ({repo}): {action}: {source}")]
    Git {
        repo: PathBuf,
        action: String,
        #[source]
        source: git2::Error,
    },
    #[error(
        "commit {sha} (`{field}` of the push to {git_ref}) is not in the repository at {repo}; fetch it first (e.g. `git -C {repo} fetch --all`)",
        repo = repo.display()
    )]
    MissingCommit { repo: PathBuf, sha: String, field: &'static str, git_ref: String },
    #[error(
        "the payload is for repository {payload} ({payload_urls}), but the checkout at {repo} has remotes [{remotes}]; refusing to act on another repository's push",
        repo = repo.display(),
        payload_urls = payload_urls.join(", "),
        remotes = remotes.join(", ")
    )]
    OtherRepository { payload: String, payload_urls: Vec<String>, repo: PathBuf, remotes: Vec<String> },
    #[error(
        "cannot tell which repository the checkout at {repo} is: it has no remotes; add one (`git remote add origin URL`) or pass --expect-repo URL",
        repo = repo.display()
    )]
    NoRepositoryIdentity { repo: PathBuf },
    #[error("git ({repo}): fetching from remote `{remote}` ({url}) failed: {message}", repo = repo.display())]
    Fetch { repo: PathBuf, remote: String, url: String, message: String },
    #[error("{path}: {message}", path = path.display())]
    Pipeline { path: PathBuf, message: String },
    #[error("webhook secret: {0}")]
    Secret(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("webhook server: {0}")]
    Server(#[source] std::io::Error),
}

impl HasExitClass for TriggerError {
    fn exit_class(&self) -> ExitClass {
        match self {
            TriggerError::Io { .. }
            | TriggerError::Json { .. }
            | TriggerError::Payload { .. }
            | TriggerError::OpenRepo { .. }
            | TriggerError::MissingCommit { .. }
            | TriggerError::OtherRepository { .. }
            | TriggerError::NoRepositoryIdentity { .. }
            | TriggerError::Pipeline { .. }
            | TriggerError::Secret(_)
            | TriggerError::Bind { .. } => ExitClass::BadInput,
            TriggerError::Git { .. } | TriggerError::Fetch { .. } | TriggerError::Server(_) => ExitClass::Failed,
        }
    }
}
