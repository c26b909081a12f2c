//! `modelship promote MODEL --from ENV --to ENV -f PIPELINE`, and what
//! `rollback` shares with it (lock wait, run ids, the outcome's text).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::output::{OutputFormat, structured};
use super::session::{Access, Session, Where};
use super::{CommandError, GlobalArgs, fail};
use crate::promotion::{self, PromoteOutcome, PromoteRequest};
use crate::registry::AuthStore;
use crate::secret::mask;

pub fn parse_wait(text: &str) -> Result<Duration, CommandError> {
    humantime::parse_duration(text).map_err(|e| CommandError::usage(format!("--lock-wait {text}: {e}")))
}

/// Promote the digest verified (or current) in one environment to another.
#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship promote weather --from dev --to prod -f pipelines/weather.yaml --sim /tmp/sim --dry-run\n  modelship promote weather --from dev --to prod -f pipelines/weather.yaml --sim /tmp/sim \\\n    --comment 'release 3' -o json\n\nExit codes: 0 promoted, 1 failed, 2 bad input or refused."
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship promote weather --from dev --to prod -f pipelines/weather.yaml --dry-run\n  modelship promote weather --from dev --to prod -f pipelines/weather.yaml --digest sha256:... --force\n\nExit codes: 0 promoted, 1 failed, 2 bad input or refused."
    )
)]
pub struct PromoteArgs {
    /// The model (the pipeline's `spec.model.name`).
    pub model: String,
    /// The environment whose verified (or current) digest is promoted.
    #[arg(long, value_name = "ENV")]
    pub from: String,
    /// The environment promoted into.
    #[arg(long, value_name = "ENV")]
    pub to: String,
    #[command(flatten)]
    pub place: Where,
    /// Promote this digest (default: the current one in --from).
    #[arg(long, value_name = "sha256:...")]
    pub digest: Option<String>,
    /// Tag in the target registry and ImageStream.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Promote even if its checks did not pass (recorded in the ledger).
    #[arg(long)]
    pub force: bool,
    /// Show what would be promoted; copy, tag and record nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Why, recorded in the ledger.
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
    pub authfile: Option<PathBuf>,
    /// Output format: the outcome as text, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(a: PromoteArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let lock_wait = parse_wait(&a.lock_wait)?;
    let auth = AuthStore::load(a.authfile.as_deref()).map_err(fail)?;
    let session = Session::open(&a.place, Access::Write).await?;
    let result = async {
        session.model(Some(&a.model))?;
        session.check_environment("--from", &a.from)?;
        session.check_environment("--to", &a.to)?;
        let req = PromoteRequest {
            model: a.model.clone(),
            from: a.from.clone(),
            to: a.to.clone(),
            digest: a.digest.clone(),
            tag: a.tag.clone(),
            run_id: manual_run_id("promote"),
            by: promotion::principal(),
            comment: a.comment.clone(),
            force: a.force,
            lock_wait,
            lock_ttl: promotion::LOCK_TTL,
            image_stream: !a.no_image_stream,
            state_dir: session.state_dir.clone(),
            auth,
            pipeline_dir: a.place.file.parent().map(std::path::Path::to_path_buf),
        };
        let outcome = promotion::promote(&session.clusters, &req, a.dry_run).await.map_err(fail)?;
        if !a.dry_run {
            record_in_registry(&session, &outcome, &a.to).await?;
        }
        Ok(outcome)
    }
    .await;
    session.close().await;
    let outcome = result?;
    print_outcome(&outcome, a.output, "promoted")
}

/// Manual promotions get their own run id in the ledger: `promote-<time>-<rand>`.
/// A digest built from an MLflow model version (its ledger entry says
/// which) tags that version and moves the environment's alias, as the
/// promote stage does.
pub async fn record_in_registry(session: &Session, outcome: &PromoteOutcome, env: &str) -> Result<(), CommandError> {
    let Some(version) = &outcome.model_version else { return Ok(()) };
    crate::stages::fetch_model::record_in_registry(&session.clusters, &session.pipeline, version, env, &outcome.digest)
        .await
        .map_err(|e| {
            CommandError::new(
                crate::ExitClass::Failed,
                std::io::Error::other(format!(
                    "{} is in `{env}`, but recording it in MLflow's registry failed: {}",
                    outcome.digest,
                    crate::error::chain(&e)
                )),
            )
        })
}

pub fn manual_run_id(what: &str) -> String {
    format!("{what}-{}", crate::engine::generate_run_id())
}

pub fn print_outcome(o: &PromoteOutcome, format: OutputFormat, verb: &str) -> Result<(), CommandError> {
    if let Some(text) = structured(format, o)? {
        println!("{}", mask(&text));
        return Ok(());
    }
    let mut s = if o.dry_run {
        format!(
            "would promote {} from `{}` to `{}`\n  source: {}\n  target: {}",
            o.digest, o.from, o.to, o.source, o.image
        )
    } else {
        format!("{verb} {} to `{}`\n  image: {}", o.digest, o.to, o.image)
    };
    if let Some(p) = &o.previous {
        s.push_str(&format!("\n  previous: {} (run {})", p.digest, p.run_id));
    }
    if let Some(c) = &o.copy {
        s.push_str(&format!(
            "\n  blobs: {} uploaded, {} already there, {} mounted ({} bytes)",
            c.blobs_uploaded, c.blobs_skipped, c.blobs_mounted, c.bytes_uploaded
        ));
    }
    if o.forced {
        s.push_str("\n  forced: its checks had not passed (recorded)");
    }
    if !o.dry_run && !o.recorded {
        s.push_str("\n  (already recorded: nothing new in the ledger)");
    }
    println!("{}", mask(&s));
    Ok(())
}
