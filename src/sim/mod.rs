//! The simulated OpenShift: an HTTP server speaking the real Kubernetes and
//! OpenShift REST API for the resources modelship uses, with controllers that
//! move builds and deployments through their real phases, and an OCI registry
//! under `/v2/`. State persists in a data directory. It is a simulation and
//! says so: a build does not execute the Dockerfile's RUN steps.
//!
//! The runner never imports this module; it reaches the sim over HTTP like a
//! real cluster. One file per simulated API group or controller.

pub mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Objects, registry blobs and controller work dirs live here.
    pub data_dir: PathBuf,
    /// `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// The cluster/context name written into the kubeconfig.
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sim data in {path} is not valid: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// A running sim. Dropping it does not stop it; call [`SimServer::shutdown`].
pub struct SimServer {
    pub addr: SocketAddr,
    pub name: String,
}

impl SimServer {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Registry host for image references: `127.0.0.1:PORT`.
    pub fn registry_host(&self) -> String {
        self.addr.to_string()
    }

    /// Stop serving, stop controllers and their processes, flush state.
    pub async fn shutdown(self) {
        todo!("sim helper")
    }
}

/// Start a sim in this process.
pub async fn start(_config: SimConfig) -> Result<SimServer, SimError> {
    todo!("sim helper")
}

/// A kubeconfig with one cluster/context/user per `(name, url)`; the current
/// context is the first. The sim accepts any bearer token.
pub fn kubeconfig_yaml(clusters: &[(String, String)]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Config\npreferences: {}\n");
    s.push_str(&format!("current-context: {}\nclusters:\n", clusters.first().map(|c| c.0.as_str()).unwrap_or("sim")));
    for (name, url) in clusters {
        s.push_str(&format!("- name: {name}\n  cluster:\n    server: {url}\n"));
    }
    s.push_str("contexts:\n");
    for (name, _) in clusters {
        s.push_str(&format!("- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"));
    }
    s.push_str("users:\n");
    for (name, _) in clusters {
        s.push_str(&format!("- name: {name}\n  user:\n    token: sim-{name}\n"));
    }
    s
}
