//! `modelship status [RUN_ID] [--model NAME]`

use std::path::PathBuf;

use clap::Args;

use super::{CommandError, GlobalArgs};

/// Show runs and their stages from the state store.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  modelship status -f pipelines/weather.yaml --sim /tmp/sim\n  modelship status 20261125-0102-ab12 --state-dir ./state"
)]
pub struct StatusArgs {
    /// One run in detail; without it, recent runs.
    #[arg(value_name = "RUN_ID")]
    pub run_id: Option<String>,
    /// Only this model's runs.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The pipeline file (names the environment that holds state).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub sim: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// `json` prints the records.
    #[arg(long, value_enum, default_value_t = super::run::OutputFormat::Text)]
    pub output: super::run::OutputFormat,
}

pub async fn run(_args: StatusArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    todo!("engine helper")
}
