//! `modelship run FILE ...`

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::{CommandError, GlobalArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// Run a pipeline.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  modelship run pipelines/weather.yaml --sim /tmp/sim\n  modelship run pipelines/weather.yaml --until render --workspace ./ws\n  modelship run pipelines/weather.yaml --dry-run --set tag=v2"
)]
pub struct RunArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Set a pipeline parameter (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Use this run id instead of a generated one.
    #[arg(long, value_name = "ID", conflicts_with = "resume")]
    pub run_id: Option<String>,
    /// Resume run ID: skip stages that succeeded with unchanged inputs.
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Keep the run's files (model, build context) in DIR.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Run against simulated clusters (one per environment) kept in DIR.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub sim: Option<PathBuf>,
    /// kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Keep run state in this directory instead of ConfigMaps.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the resolved plan and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// `json` ends with one JSON object describing the run.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Write Tekton results (run-id, status, IMAGE_URL, IMAGE_DIGEST) here.
    #[arg(long, value_name = "DIR", env = "MODELSHIP_RESULTS_DIR")]
    pub results_dir: Option<PathBuf>,
    /// Extra run label (repeatable), e.g. `commit=abc123`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
}

pub async fn run(_args: RunArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    todo!("engine helper")
}
