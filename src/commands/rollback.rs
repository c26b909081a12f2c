//! `modelship rollback MODEL --env ENV [--to DIGEST]`

use clap::Args;

use super::output::OutputFormat;
use super::promote::{manual_run_id, parse_wait, print_outcome};
use super::session::{Access, Session, Where};
use super::{CommandError, GlobalArgs, fail};
use crate::promotion::{self, RollbackRequest};
use crate::registry::AuthStore;

/// Point an environment back at its previous (or a named) digest from the ledger.
#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship rollback weather --env prod -f pipelines/weather.yaml --sim /tmp/sim --to DIGEST \\\n    --comment 'back to the checked digest'\n  modelship rollback weather --env prod -f pipelines/weather.yaml --sim /tmp/sim -o yaml --to DIGEST"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship rollback weather --env prod -f pipelines/weather.yaml\n  modelship rollback weather --env prod -f pipelines/weather.yaml --to sha256:... -n prod=models-prod-2"
    )
)]
pub struct RollbackArgs {
    /// The model (the pipeline's `spec.model.name`).
    pub model: String,
    /// The environment to roll back.
    #[arg(long, value_name = "ENV")]
    pub env: String,
    /// Roll back to this digest (it must have been in ENV); default: the one before the current.
    #[arg(long = "to", value_name = "sha256:...")]
    pub to_digest: Option<String>,
    #[command(flatten)]
    pub place: Where,
    /// Tag in the registry and ImageStream to point at the digest.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Why (recorded in the ledger).
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    /// Wait this long for another runner's lock (`0s`: fail fast).
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub lock_wait: String,
    /// Do not move the ImageStream tag (targets without image.openshift.io).
    #[arg(long)]
    pub no_image_stream: bool,
    /// docker config.json / containers auth.json with registry credentials.
    #[arg(long, value_name = "PATH")]
    pub authfile: Option<std::path::PathBuf>,
    /// Output format: the outcome as text, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(a: RollbackArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let lock_wait = parse_wait(&a.lock_wait)?;
    let auth = AuthStore::load(a.authfile.as_deref()).map_err(fail)?;
    let session = Session::open(&a.place, Access::Write).await?;
    let result = async {
        session.model(Some(&a.model))?;
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
        let outcome = promotion::rollback(&session.clusters, &req).await.map_err(fail)?;
        super::promote::record_in_registry(&session, &outcome, &a.env).await?;
        Ok(outcome)
    }
    .await;
    session.close().await;
    print_outcome(&result?, a.output, "rolled back to")
}
