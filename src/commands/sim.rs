//! `modelship sim serve`

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CommandError, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run the simulated OpenShift API; print its address; write a kubeconfig.
    #[command(
        after_help = "Example:\n  modelship sim serve --data /tmp/sim --kubeconfig /tmp/sim/kubeconfig\n  kubectl --kubeconfig /tmp/sim/kubeconfig get configmaps -n default"
    )]
    Serve(SimServeArgs),
}

#[derive(Debug, Args)]
pub struct SimServeArgs {
    /// Where objects and registry blobs persist.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write a kubeconfig pointing at the sim here.
    #[arg(long, value_name = "OUT")]
    pub kubeconfig: Option<PathBuf>,
    /// Cluster/context name in the kubeconfig.
    #[arg(long, default_value = "sim")]
    pub name: String,
}

pub async fn run(_c: SimCommand, _g: &GlobalArgs) -> Result<(), CommandError> {
    todo!("sim helper")
}
