//! `modelship trigger --event FILE`

use std::path::PathBuf;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::output::{OutputFormat, structured};
use super::sim_runner::SimRunner;
use super::{CommandError, GlobalArgs, fail};
use crate::error::ExitClass;
use crate::state::Status;
use crate::triggers::runner::{EngineRunner, PipelineRunner, RunRequest};
use crate::triggers::select::{TriggerRequest, plan, render_plan};

/// Select and run the pipelines a Git push payload triggers.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  modelship trigger --event push.json --repo . --pipelines pipelines --dry-run\n\nExit codes: 0 nothing failed (also when nothing matched), 1 a run failed, 2 bad payload, repository or pipeline file."
)]
pub struct TriggerArgs {
    /// A GitHub or GitLab push payload (JSON).
    #[arg(long, value_name = "FILE")]
    pub event: PathBuf,
    /// The event type as the host sent it (`push`, `Push Hook`); others are ignored.
    #[arg(long, default_value = "push")]
    pub event_type: String,
    /// The Git checkout the payload refers to.
    #[arg(long, value_name = "PATH", default_value = ".")]
    pub repo: PathBuf,
    /// Directory of pipeline files.
    #[arg(long, value_name = "DIR", default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// Repository URL the payload must be for (repeatable); default: the checkout's remotes.
    #[arg(long, value_name = "URL")]
    pub expect_repo: Vec<String>,
    /// Fetch the pushed commits from the payload's remote if the checkout lacks them.
    #[arg(long)]
    pub fetch: bool,
    /// List what would run and why; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format: the plan as text, json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// kubeconfig for the runs (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Keep run state in this directory instead of ConfigMaps.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run the selected pipelines on simulated clusters kept in DIR, as
    /// `modelship run --sim DIR` does (one run at a time).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kubeconfig", "state_dir"])]
    #[cfg_attr(not(feature = "sim"), arg(hide = true))]
    pub sim: Option<PathBuf>,
    /// The host's delivery id (`X-GitHub-Delivery`, `X-Gitlab-Event-UUID`),
    /// recorded with each run as the label `delivery`.
    #[arg(long, value_name = "ID")]
    pub delivery: Option<String>,
}

pub async fn run(a: TriggerArgs, g: &GlobalArgs) -> Result<(), CommandError> {
    #[cfg(not(feature = "sim"))]
    if a.sim.is_some() {
        return Err(super::without_sim::unavailable("--sim"));
    }
    let payload = std::fs::read(&a.event)
        .map_err(|source| fail(crate::triggers::TriggerError::Io { path: a.event.clone(), source }))?;
    let req = TriggerRequest {
        event_type: a.event_type.clone(),
        provider: None,
        repo: a.repo.clone(),
        pipelines: a.pipelines.clone(),
        expect_repo: a.expect_repo.clone(),
        source: a.event.display().to_string(),
        fetch: a.fetch,
    };
    let plan = plan(&payload, &req).map_err(fail)?;
    match structured(a.output, &plan)? {
        Some(text) => println!("{text}"),
        None => print!("{}", render_plan(&plan, a.dry_run)),
    }
    if a.dry_run {
        return Ok(());
    }
    let Some(event) = plan.event.as_ref() else { return Ok(()) };
    let engine = EngineRunner { kubeconfig: a.kubeconfig, state_dir: a.state_dir, stages_dir: g.stages_dir.clone() };
    let runner: Box<dyn PipelineRunner> = match a.sim {
        Some(dir) => Box::new(SimRunner::new(engine, dir)),
        None => Box::new(engine),
    };
    let cancel = CancellationToken::new();
    spawn_signal_canceller(cancel.clone());
    let mut worst = None;
    // One after another: a push rarely selects many pipelines, and sequential
    // runs keep the CLI's output readable.
    for d in plan.selected() {
        if cancel.is_cancelled() {
            break;
        }
        let req = RunRequest {
            pipeline: d.pipeline.clone(),
            model: d.model.clone(),
            file: d.file.clone(),
            commit: event.after.clone(),
            branch: event.branch().unwrap_or_default().to_string(),
            source: event.provider.to_string(),
            set_commit: d.declares_commit,
            delivery: a.delivery.clone(),
            pushed_by: event.pusher.clone(),
        };
        let outcome = runner.run(&req, cancel.clone()).await;
        let id = outcome.run_id.as_deref().unwrap_or("-");
        match outcome.status {
            Status::Succeeded => eprintln!("{}: run {id} succeeded", d.pipeline),
            status => {
                eprintln!("{}: run {id} {status}: {}", d.pipeline, outcome.error.as_deref().unwrap_or(""));
                let class = if outcome.bad_input { ExitClass::BadInput } else { ExitClass::Failed };
                worst = Some(match worst {
                    Some(ExitClass::Failed) => ExitClass::Failed,
                    _ => class,
                });
            }
        }
    }
    match worst {
        Some(class) => Err(CommandError::silent(class)),
        None => Ok(()),
    }
}

/// Cancel `token` on SIGINT or SIGTERM (a Tekton task timeout sends SIGTERM).
pub(crate) fn spawn_signal_canceller(token: CancellationToken) {
    tokio::spawn(async move {
        shutdown_signal().await;
        token.cancel();
    });
}

/// Resolves on the first SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
