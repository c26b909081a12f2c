//! `modelship sim serve`

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::{CommandError, GlobalArgs};
use crate::error::ExitClass;
use openshift_sim::{Faults, SimConfig};

/// The simulated OpenShift (the cargo feature `sim`).
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run the simulated OpenShift API; print its address; write a kubeconfig.
    #[command(
        after_help = "Examples (the dev cluster of `modelship run --sim /tmp/sim`):\n  modelship sim serve --data /tmp/sim/dev\n  kubectl --kubeconfig /tmp/sim/dev/kubeconfig get configmaps -n models-dev"
    )]
    Serve(SimServeArgs),
}

#[derive(Debug, Args)]
pub struct SimServeArgs {
    /// Where objects and registry blobs persist.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Default: the address this data directory had last time when free
    /// (its image references name it), else a free loopback port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write a kubeconfig pointing at the sim here (default: DIR/kubeconfig).
    #[arg(long, value_name = "OUT")]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster/context name in the kubeconfig.
    #[arg(long, value_name = "NAME", default_value = "sim")]
    pub name: String,
    /// Answer 403 Forbidden for a resource: RESOURCE[.GROUP][:VERB,...][@NAMESPACE]
    /// (repeatable), e.g. `builds.build.openshift.io:create@models-dev`.
    #[arg(long, value_name = "RULE")]
    pub forbid: Vec<openshift_sim::ForbiddenRule>,
    /// Inject a failure: KIND[+ARG][/EVERY][*TIMES][=SELECTOR] (repeatable).
    /// KIND: 500, 503, 429[+RETRY_AFTER_SECS], drop (close unanswered), lose
    /// (process, then close unanswered), delay[+DURATION], cut-watch,
    /// conflict (409 on update/patch), cut-body (half the body, then close).
    /// Fires on every EVERY-th request the SELECTOR (as for --forbid; default:
    /// every API request; `registry[/blobs|manifests|uploads|tags]` for the
    /// registry) matches, at most TIMES times, e.g. `503/3`,
    /// `429+2/4=configmaps`, `cut-body/2=registry/blobs:get`.
    /// Counts: `GET /sim/faults`.
    #[arg(long, value_name = "RULE")]
    pub fault: Vec<openshift_sim::FaultRule>,
}

pub async fn run(c: SimCommand, _g: &GlobalArgs) -> Result<(), CommandError> {
    match c {
        SimCommand::Serve(a) => serve(a).await,
    }
}

async fn serve(a: SimServeArgs) -> Result<(), CommandError> {
    refuse_a_sim_root(&a.data)?;
    let config = SimConfig {
        data_dir: a.data.clone(),
        listen: a.listen,
        name: a.name.clone(),
        faults: Faults { forbidden: a.forbid.clone(), inject: a.fault.clone() },
        ..super::simulated::sim_config(a.data.clone(), a.name.clone())
    };
    let server = openshift_sim::start(config).await.map_err(|e| CommandError::new(ExitClass::Failed, e))?;
    let kubeconfig = a.kubeconfig.clone().unwrap_or_else(|| a.data.join("kubeconfig"));
    if let Err(e) = write_kubeconfig(&kubeconfig, &server.kubeconfig()) {
        server.shutdown().await;
        return Err(CommandError::new(ExitClass::Failed, e));
    }
    // Scripts wait for these two lines, so flush them at once.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {}", server.url());
    let _ = writeln!(out, "kubeconfig: {}", kubeconfig.display());
    let _ = out.flush();
    drop(out);
    wait_for_signal().await;
    tracing::info!("sim stopping");
    server.shutdown().await;
    Ok(())
}

/// `--data` names one cluster's data. The directory of `run --sim DIR` holds
/// one per environment (`DIR/dev`, `DIR/prod`): serving DIR itself would
/// start an empty cluster beside them, so say which to pass instead.
fn refuse_a_sim_root(data: &Path) -> Result<(), CommandError> {
    if data.join(openshift_sim::ADDRESS_FILE).is_file() {
        return Ok(());
    }
    let mut clusters: Vec<String> = std::fs::read_dir(data)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join(openshift_sim::ADDRESS_FILE).is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    if clusters.is_empty() {
        return Ok(());
    }
    clusters.sort();
    Err(CommandError::usage(format!(
        "--data {}: holds the simulated clusters of `--sim {0}` ({}), not one cluster's data; \
         pass one of them, e.g. --data {}",
        data.display(),
        clusters.join(", "),
        data.join(&clusters[0]).display()
    )))
}

fn write_kubeconfig(path: &Path, text: &str) -> Result<(), std::io::Error> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot write kubeconfig {}: {e}", path.display())))
}

/// SIGINT (Ctrl-C) or SIGTERM (what Tekton and `kill` send).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
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
