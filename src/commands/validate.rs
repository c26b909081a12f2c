//! `modelship validate FILE...`

use std::path::PathBuf;

use clap::Args;

use super::{CommandError, GlobalArgs};

/// Parse and check pipeline files; exit 0 if all are valid, 2 otherwise.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  modelship validate pipelines/*.yaml")]
pub struct ValidateArgs {
    /// Pipeline files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

pub async fn run(_args: ValidateArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    todo!("spec helper")
}
