//! `modelship trigger --event FILE`

use std::path::PathBuf;

use clap::Args;

use super::{CommandError, GlobalArgs};

/// Select and run the pipelines a Git push payload triggers.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  modelship trigger --event push.json --repo . --pipelines pipelines --dry-run")]
pub struct TriggerArgs {
    /// A GitHub or GitLab push payload (JSON).
    #[arg(long, value_name = "FILE")]
    pub event: PathBuf,
    #[arg(long, default_value = "push")]
    pub event_type: String,
    /// The Git checkout the payload refers to.
    #[arg(long, value_name = "PATH", default_value = ".")]
    pub repo: PathBuf,
    /// Directory of pipeline files.
    #[arg(long, value_name = "DIR", default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// List what would run and why.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(_a: TriggerArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    todo!("triggers helper")
}
