//! `modelship serve`: the webhook endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use super::{CommandError, GlobalArgs};

/// Receive GitHub/GitLab push webhooks and run the pipelines they select.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  MODELSHIP_WEBHOOK_SECRET=... modelship serve --listen 127.0.0.1:8080 --repo . --pipelines pipelines"
)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[arg(long, value_name = "DIR", default_value = "pipelines")]
    pub pipelines: PathBuf,
    #[arg(long, value_name = "PATH", default_value = ".")]
    pub repo: PathBuf,
    /// File holding the webhook secret (else MODELSHIP_WEBHOOK_SECRET).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Accept unsigned deliveries (never in production).
    #[arg(long)]
    pub insecure_no_signature: bool,
}

pub async fn run(_a: ServeArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    todo!("triggers helper")
}
