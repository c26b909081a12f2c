//! Where a pipeline's environments are, for every command that talks to
//! their clusters: the flags ([`Where`], [`TargetArgs`]) and the open
//! connection ([`Session`], which starts the sims under `--sim`).

use std::path::{Path, PathBuf};

use clap::Args;

use super::run::parse_pairs;
use super::simulated::{SimClusters, SimOptions};
use super::{CommandError, fail};
use crate::cluster::Clusters;
use crate::spec::{Overrides, Pipeline};

/// `--context ENV=CTX` and `-n/--namespace ENV=NS`: an environment
/// elsewhere than its pipeline file says, kubectl's way.
#[derive(Debug, Clone, Default, Args)]
pub struct TargetArgs {
    /// Use kubeconfig context CTX for environment ENV (repeatable).
    #[arg(long = "context", value_name = "ENV=CTX", conflicts_with = "sim")]
    pub contexts: Vec<String>,
    /// Use namespace NS for environment ENV (repeatable); state, ledger,
    /// builds and deployments of ENV all go there.
    #[arg(short = 'n', long = "namespace", value_name = "ENV=NS")]
    pub namespaces: Vec<String>,
}

impl TargetArgs {
    /// The overrides these flags make (applied by [`Overrides::apply`]).
    pub fn overrides(&self) -> Result<Overrides, CommandError> {
        Ok(Overrides {
            contexts: parse_pairs("--context", &self.contexts)?.into_iter().collect(),
            namespaces: parse_pairs("--namespace", &self.namespaces)?.into_iter().collect(),
            ..Overrides::default()
        })
    }
}

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
    #[command(flatten)]
    pub targets: TargetArgs,
}

/// What a command does to the clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only reads (`status`, `history`, `report`): under `--sim` the API
    /// servers start without their controllers, so no model process runs.
    Read,
    /// Writes (promote, rollback, approve): the sims run their controllers.
    Write,
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
    pub async fn open(w: &Where, access: Access) -> Result<Session, CommandError> {
        let mut pipeline = crate::spec::load(&w.file).map_err(fail)?.pipeline;
        // Templated namespaces and contexts, with the params' defaults.
        let params = crate::spec::environment_params(&pipeline, &[]);
        crate::spec::render_environments(&mut pipeline, &params).map_err(CommandError::usage)?;
        let user = w.targets.overrides()?;
        let mut overrides = user.clone();
        // Refused before any sim starts.
        overrides.apply(&mut pipeline.clone()).map_err(CommandError::usage)?;
        let mut kubeconfig = w.kubeconfig.clone();
        let mut sims = None;
        if let Some(dir) = &w.sim {
            let opts =
                SimOptions { overrides: overrides.clone(), read_only: access == Access::Read, ..SimOptions::default() };
            let s = SimClusters::start(&w.file, dir, &opts).await?;
            kubeconfig = Some(s.kubeconfig.clone());
            overrides = s.overrides.clone();
            sims = Some(s);
        }
        if let Err(e) = overrides.apply(&mut pipeline) {
            if let Some(s) = sims {
                s.shutdown().await;
            }
            return Err(CommandError::usage(e));
        }
        let clusters = Clusters::new(pipeline.spec.environments.clone(), kubeconfig)
            .with_context_origins(user.context_origins(&pipeline, &w.file));
        Ok(Session { pipeline, file: w.file.clone(), clusters, state_dir: w.state_dir.clone(), sims })
    }

    pub async fn close(self) {
        if let Some(s) = self.sims {
            s.shutdown().await;
        }
    }

    /// The model asked for: `model` if given (exit 2 unless it is this
    /// pipeline's), else the pipeline's own.
    pub fn model(&self, model: Option<&str>) -> Result<String, CommandError> {
        let declared = &self.pipeline.spec.model.name;
        match model {
            Some(m) if m != declared => {
                let guess = crate::suggest::did_you_mean(m, [declared.as_str()]).unwrap_or_default();
                Err(CommandError::usage(
                    format!(
                        "model `{m}` is not the model of pipeline `{}` (`{declared}`) in {}; {guess}",
                        self.pipeline.metadata.name,
                        self.file.display()
                    )
                    .trim_end_matches("; ")
                    .to_string(),
                ))
            }
            _ => Ok(declared.clone()),
        }
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

/// `--state-dir DIR` for a command that reads: DIR must exist, else the
/// user mistyped it (an empty store would say "no runs" and hide that).
pub fn existing_state_dir(dir: &Path) -> Result<(), CommandError> {
    if dir.is_dir() {
        return Ok(());
    }
    Err(CommandError::usage(format!(
        "--state-dir {}: no such directory (runs write their state there with `modelship run --state-dir DIR`)",
        dir.display()
    )))
}
