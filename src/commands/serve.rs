//! `modelship serve`: the webhook endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::sim_runner::SimRunner;
use super::{CommandError, GlobalArgs, fail};
use crate::triggers::TriggerError;
use crate::triggers::runner::{EngineRunner, PipelineRunner};
use crate::triggers::server::{ServerConfig, serve};
use crate::triggers::signature::load_secret;
use crate::triggers::tekton::{DispatchConfig, TektonRunner};

/// Receive GitHub/GitLab push webhooks and run the pipelines they select.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  MODELSHIP_WEBHOOK_SECRET=... modelship serve --listen 127.0.0.1:8080\n\n\
Endpoints: POST /hooks/github, POST /hooks/gitlab, GET /healthz, GET /runs, GET /metrics.\n\
Answers: 202 accepted (or ignored with a reason: ping, tag, deleted branch), 400 malformed,\n\
401 bad signature, 408 body too slow, 409 replayed delivery id, 413 body too large, 422 another repository or\n\
unknown commits, 502 fetching the pushed commits failed, 503 run queue full.")]
pub struct ServeArgs {
    /// Address to listen on (HTTP; put TLS in front, e.g. an OpenShift Route).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of pipeline files, in the checkout.
    #[arg(long, value_name = "DIR", default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// The Git checkout deliveries refer to.
    #[arg(long, value_name = "PATH", default_value = ".")]
    pub repo: PathBuf,
    /// File holding the webhook secret (else MODELSHIP_WEBHOOK_SECRET).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Accept unsigned deliveries (never in production).
    #[arg(long)]
    pub insecure_no_signature: bool,
    /// Repository URL deliveries must be for (repeatable); default: the checkout's remotes.
    #[arg(long, value_name = "URL")]
    pub expect_repo: Vec<String>,
    /// Do not fetch pushed commits missing from the checkout (then such pushes get 422).
    #[arg(long)]
    pub no_fetch: bool,
    /// Larger bodies get 413.
    #[arg(long, value_name = "BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Pipelines running at once; more wait in a queue.
    #[arg(long, visible_alias = "max-parallel", value_name = "N", default_value_t = 2)]
    pub max_concurrent_runs: usize,
    /// Queued runs beyond which deliveries get 503.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_queued_runs: usize,
    /// How many delivery ids to remember against replays.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub replay_window: usize,
    /// How long a delivery id is remembered.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub replay_ttl: Duration,
    /// A client that has not sent its request headers within this is disconnected.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// A body that has not arrived within this is answered 408.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_connections: usize,
    /// On SIGTERM, how long to wait for cancelled runs to record their state.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
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
    /// Where selected pipelines run: here, or as one Tekton PipelineRun each
    /// of the `modelship` Pipeline (.tekton/pipeline.yaml).
    #[arg(long, value_enum, default_value_t = Dispatch::InProcess, conflicts_with_all = ["sim", "state_dir"])]
    pub dispatch: Dispatch,
    /// Namespace of the PipelineRuns (default: the kubeconfig context's, or the pod's).
    #[arg(long, value_name = "NS")]
    pub dispatch_namespace: Option<String>,
    /// The PipelineRuns' `repo-url` (default: the checkout's `origin` remote).
    #[arg(long, value_name = "URL")]
    pub dispatch_repo_url: Option<String>,
    /// The Pipeline the PipelineRuns reference.
    #[arg(long, value_name = "NAME", default_value = "modelship")]
    pub dispatch_pipeline: String,
    /// The service account the PipelineRuns' Tasks run as.
    #[arg(long, value_name = "NAME", default_value = "modelship")]
    pub dispatch_service_account: String,
    /// A Secret (key `config`) to bind to the Pipeline's `kubeconfig` workspace.
    #[arg(long, value_name = "SECRET")]
    pub dispatch_kubeconfig_secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dispatch {
    /// Run the pipelines in this process.
    InProcess,
    /// Create a tekton.dev/v1 PipelineRun per selected pipeline.
    Tekton,
}

impl ServeArgs {
    /// The server configuration; fails without a secret unless insecure.
    pub fn config(&self, env_secret: Option<String>) -> Result<ServerConfig, TriggerError> {
        let secret = load_secret(self.secret_file.as_deref(), env_secret, self.insecure_no_signature)?;
        Ok(ServerConfig {
            repo: self.repo.clone(),
            pipelines: self.pipelines.clone(),
            secret,
            expect_repo: self.expect_repo.clone(),
            fetch: !self.no_fetch,
            max_body_bytes: self.max_body_bytes,
            max_concurrent_runs: self.max_concurrent_runs,
            max_queued_runs: self.max_queued_runs,
            replay_capacity: self.replay_window,
            replay_ttl: self.replay_ttl,
            shutdown_grace: self.shutdown_grace,
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: self.max_connections,
            ..ServerConfig::default()
        })
    }
}

pub async fn run(a: ServeArgs, g: &GlobalArgs) -> Result<(), CommandError> {
    #[cfg(not(feature = "sim"))]
    if a.sim.is_some() {
        return Err(super::without_sim::unavailable("--sim"));
    }
    let config = a.config(std::env::var("MODELSHIP_WEBHOOK_SECRET").ok()).map_err(fail)?;
    if config.secret.is_none() {
        tracing::warn!("--insecure-no-signature: accepting unsigned deliveries; never do this in production");
    }
    // Fail at start, not at the first delivery, if the checkout is unusable.
    crate::triggers::git::open(&config.repo).map_err(fail)?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|source| fail(TriggerError::Bind { addr: a.listen.to_string(), source }))?;
    let runner: Arc<dyn PipelineRunner> = match (a.dispatch, a.sim) {
        (Dispatch::Tekton, _) => {
            let repo_url = match a.dispatch_repo_url {
                Some(url) => url,
                None => origin_url(&config.repo).map_err(CommandError::usage)?,
            };
            let dispatch = DispatchConfig {
                namespace: a.dispatch_namespace,
                kubeconfig: a.kubeconfig,
                repo: config.repo.clone(),
                repo_url,
                pipeline: a.dispatch_pipeline,
                service_account: a.dispatch_service_account,
                kubeconfig_secret: a.dispatch_kubeconfig_secret,
            };
            let runner = TektonRunner::connect(dispatch).await.map_err(fail)?;
            tracing::info!(namespace = %runner.namespace, "dispatching selected pipelines as Tekton PipelineRuns");
            Arc::new(runner)
        }
        (Dispatch::InProcess, sim) => {
            let engine =
                EngineRunner { kubeconfig: a.kubeconfig, state_dir: a.state_dir, stages_dir: g.stages_dir.clone() };
            match sim {
                Some(dir) => Arc::new(SimRunner::new(engine, dir)),
                None => Arc::new(engine),
            }
        }
    };
    serve(listener, config, runner, super::trigger::shutdown_signal()).await.map(drop).map_err(fail)
}

/// The checkout's `origin` remote URL: what the PipelineRuns clone.
fn origin_url(repo: &std::path::Path) -> Result<String, String> {
    let git = git2::Repository::open(repo).map_err(|e| format!("{}: {e}", repo.display()))?;
    let remote = git.find_remote("origin").map_err(|_| {
        format!(
            "--dispatch tekton: the checkout at {} has no `origin` remote; pass --dispatch-repo-url URL",
            repo.display()
        )
    })?;
    remote.url().map(str::to_string).map_err(|e| format!("{}: the `origin` remote: {e}", repo.display()))
}
