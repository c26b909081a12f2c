//! `modelship promote MODEL --from ENV --to ENV -f PIPELINE`, and the
//! cluster setup `rollback`, `history` and `approve` share with it.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::run::OutputFormat;
use super::simulated::{SimClusters, SimOptions};
use super::{CommandError, GlobalArgs, fail};
use crate::cluster::Clusters;
use crate::promotion::{self, PromoteOutcome, PromoteRequest};
use crate::registry::AuthStore;
use crate::secret::mask;
use crate::spec::Pipeline;

/// Where the environments are: flags every promotion command takes.
#[derive(Debug, Clone, Args)]
pub struct Where {
    /// The pipeline file declaring the environments.
    #[arg(short = 'f', long = "file", value_name = "PIPELINE")]
    pub file: PathBuf,
    /// kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, in-cluster);
    /// each environment uses its own `context`.
    #[arg(long, value_name = "PATH", conflicts_with = "sim")]
    pub kubeconfig: Option<PathBuf>,
    /// Simulated clusters kept in DIR (as `modelship run --sim DIR`), reached
    /// as the `modelship` service account.
    #[arg(long, value_name = "DIR")]
    #[cfg_attr(not(feature = "sim"), arg(hide = true))]
    pub sim: Option<PathBuf>,
    /// Ledger (and run records) in this directory instead of ConfigMaps.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The pipeline and its clusters; sims (with `--sim`) stop on [`Session::close`].
pub struct Session {
    pub pipeline: Pipeline,
    /// The pipeline file, named in errors.
    pub file: PathBuf,
    pub clusters: Clusters,
    pub state_dir: Option<PathBuf>,
    sims: Option<SimClusters>,
}

impl Session {
    pub async fn open(w: &Where) -> Result<Session, CommandError> {
        let mut pipeline = crate::spec::load(&w.file).map_err(fail)?.pipeline;
        let params = crate::spec::environment_params(&pipeline, &[]);
        crate::spec::render_environments(&mut pipeline, &params).map_err(CommandError::usage)?;
        let mut kubeconfig = w.kubeconfig.clone();
        let mut sims = None;
        if let Some(dir) = &w.sim {
            let s = SimClusters::start(&w.file, dir, &SimOptions::default()).await?;
            kubeconfig = Some(s.kubeconfig.clone());
            s.overrides.apply(&mut pipeline).map_err(CommandError::usage)?;
            sims = Some(s);
        }
        let clusters = Clusters::new(pipeline.spec.environments.clone(), kubeconfig)
            .with_context_origins(crate::spec::Overrides::default().context_origins(&pipeline, &w.file));
        Ok(Session { pipeline, file: w.file.clone(), clusters, state_dir: w.state_dir.clone(), sims })
    }

    pub async fn close(self) {
        if let Some(s) = self.sims {
            s.shutdown().await;
        }
    }

    /// Fail with exit 2 unless `model` is this pipeline's model.
    pub fn check_model(&self, model: &str) -> Result<(), CommandError> {
        let declared = &self.pipeline.spec.model.name;
        if model != declared {
            let guess = crate::suggest::did_you_mean(model, [declared.as_str()]).unwrap_or_default();
            return Err(CommandError::usage(
                format!(
                    "model `{model}` is not the model of pipeline `{}` (`{declared}`) in {}; {guess}",
                    self.pipeline.metadata.name,
                    self.file.display()
                )
                .trim_end_matches("; ")
                .to_string(),
            ));
        }
        Ok(())
    }

    /// Fail with exit 2 unless `name` (given as `flag`) is an environment
    /// of this pipeline, suggesting the closest one.
    pub fn check_environment(&self, flag: &str, name: &str) -> Result<(), CommandError> {
        let envs = &self.pipeline.spec.environments;
        if envs.contains_key(name) {
            return Ok(());
        }
        let place = self.file.display().to_string();
        let candidates = envs.keys().map(String::as_str);
        Err(CommandError::usage(format!(
            "{flag} {name}: {}",
            crate::suggest::not_found("environment", name, &place, candidates)
        )))
    }
}

pub fn parse_wait(text: &str) -> Result<Duration, CommandError> {
    humantime::parse_duration(text).map_err(|e| CommandError::usage(format!("--lock-wait {text}: {e}")))
}

/// Promote the digest verified (or current) in one environment to another.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  modelship promote weather --from dev --to prod -f pipelines/weather.yaml\n  modelship promote weather --from dev --to prod -f pipelines/weather.yaml --digest sha256:... --force\n\nExit codes: 0 promoted, 1 failed, 2 bad input or refused."
)]
pub struct PromoteArgs {
    /// The model (the pipeline's `spec.model.name`).
    pub model: String,
    #[arg(long, value_name = "ENV")]
    pub from: String,
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
    /// Recorded in the ledger.
    #[arg(long)]
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
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(a: PromoteArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let lock_wait = parse_wait(&a.lock_wait)?;
    let auth = AuthStore::load(a.authfile.as_deref()).map_err(fail)?;
    let session = Session::open(&a.place).await?;
    let result = async {
        session.check_model(&a.model)?;
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
        promotion::promote(&session.clusters, &req, a.dry_run).await.map_err(fail)
    }
    .await;
    session.close().await;
    let outcome = result?;
    print_outcome(&outcome, a.output, "promoted");
    Ok(())
}

/// Manual promotions get their own run id in the ledger: `promote-<time>-<rand>`.
pub fn manual_run_id(what: &str) -> String {
    format!("{what}-{}", crate::engine::generate_run_id())
}

pub fn print_outcome(o: &PromoteOutcome, format: OutputFormat, verb: &str) {
    match format {
        OutputFormat::Json => println!("{}", mask(&serde_json::to_string_pretty(o).unwrap_or_default())),
        OutputFormat::Text => {
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
        }
    }
}
