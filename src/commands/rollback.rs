//! `modelship rollback MODEL --env ENV [--to DIGEST]`

use clap::Args;

use super::promote::{Session, Where, manual_run_id, parse_wait, print_outcome};
use super::run::OutputFormat;
use super::{CommandError, GlobalArgs, fail};
use crate::promotion::{self, RollbackRequest};
use crate::registry::AuthStore;

/// Point an environment back at its previous (or a named) digest from the ledger.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  modelship rollback weather --env prod -f pipelines/weather.yaml")]
pub struct RollbackArgs {
    pub model: String,
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// Roll back to this digest (it must have been in ENV); default: the one before the current.
    #[arg(long = "to", value_name = "sha256:...")]
    pub to_digest: Option<String>,
    #[command(flatten)]
    pub place: Where,
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Why (recorded in the ledger).
    #[arg(long)]
    pub comment: Option<String>,
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub lock_wait: String,
    #[arg(long)]
    pub no_image_stream: bool,
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<std::path::PathBuf>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(a: RollbackArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let lock_wait = parse_wait(&a.lock_wait)?;
    let auth = AuthStore::load(a.authfile.as_deref()).map_err(fail)?;
    let session = Session::open(&a.place).await?;
    let result = async {
        session.check_model(&a.model)?;
        session.check_environment("--env", &a.env)?;
        let req = RollbackRequest {
            model: a.model.clone(),
            env: a.env.clone(),
            to_digest: a.to_digest.clone(),
            tag: a.tag.clone(),
            run_id: manual_run_id("rollback"),
            by: promotion::principal(),
            reason: a.comment.clone(),
            lock_wait,
            lock_ttl: promotion::LOCK_TTL,
            image_stream: !a.no_image_stream,
            state_dir: session.state_dir.clone(),
            auth,
        };
        promotion::rollback(&session.clusters, &req).await.map_err(fail)
    }
    .await;
    session.close().await;
    print_outcome(&result?, a.output, "rolled back to");
    Ok(())
}
