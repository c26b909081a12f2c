//! Kubernetes clients per environment (each behind the [`retry`] layer), and
//! typed OpenShift and Seldon resources (one file per API group, added by
//! the stages that use them).

pub mod openshift;
pub mod retry;

use std::collections::HashMap;
use std::path::PathBuf;

use indexmap::IndexMap;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::Mutex;

use crate::error::{ExitClass, HasExitClass};
use crate::spec::Environment;

pub mod seldon;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("environment `{0}` is not declared in the pipeline")]
    UnknownEnvironment(String),
    #[error("environment `{env}`: cannot load kubeconfig{}: {source}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Kubeconfig {
        env: String,
        path: Option<PathBuf>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("environment `{env}`: no cluster configuration (no kubeconfig and not in a cluster): {source}")]
    Infer {
        env: String,
        #[source]
        source: kube::config::InferConfigError,
    },
    #[error("environment `{env}`: cannot build a client: {source}")]
    Client {
        env: String,
        #[source]
        source: kube::Error,
    },
}

impl HasExitClass for ClusterError {
    fn exit_class(&self) -> ExitClass {
        match self {
            ClusterError::UnknownEnvironment(_) => ExitClass::BadInput,
            _ => ExitClass::Failed,
        }
    }
}

/// Lazily connected clients, one per environment of the pipeline.
pub struct Clusters {
    environments: IndexMap<String, Environment>,
    /// `--kubeconfig`; absent: `$KUBECONFIG`, `~/.kube/config`, in-cluster.
    kubeconfig: Option<PathBuf>,
    clients: Mutex<HashMap<String, kube::Client>>,
    retry: retry::RetryConfig,
}

impl Clusters {
    pub fn new(environments: IndexMap<String, Environment>, kubeconfig: Option<PathBuf>) -> Self {
        Clusters { environments, kubeconfig, clients: Mutex::new(HashMap::new()), retry: Default::default() }
    }

    /// How API requests are retried (default [`retry::RetryConfig::default`]).
    pub fn with_retry(mut self, retry: retry::RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    pub fn retry_config(&self) -> retry::RetryConfig {
        self.retry
    }

    pub fn environment(&self, name: &str) -> Result<&Environment, ClusterError> {
        self.environments.get(name).ok_or_else(|| ClusterError::UnknownEnvironment(name.to_string()))
    }

    pub fn environments(&self) -> &IndexMap<String, Environment> {
        &self.environments
    }

    /// The connection settings of environment `name` (for raw HTTP that kube's
    /// client cannot send, such as a streamed request body).
    pub async fn config(&self, name: &str) -> Result<kube::Config, ClusterError> {
        let env = self.environment(name)?;
        let options = KubeConfigOptions { context: env.context.clone(), ..Default::default() };
        Ok(match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
                    env: name.to_string(),
                    path: Some(path.clone()),
                    source,
                })?;
                kube::Config::from_custom_kubeconfig(kc, &options).await.map_err(|source| ClusterError::Kubeconfig {
                    env: name.to_string(),
                    path: Some(path.clone()),
                    source,
                })?
            }
            None if env.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|source| ClusterError::Kubeconfig { env: name.to_string(), path: None, source })?,
            None => {
                kube::Config::infer().await.map_err(|source| ClusterError::Infer { env: name.to_string(), source })?
            }
        })
    }

    /// The client for environment `name`, using its `context` if set; its
    /// requests are retried as [`retry`] describes.
    pub async fn client(&self, name: &str) -> Result<kube::Client, ClusterError> {
        let mut clients = self.clients.lock().await;
        if let Some(c) = clients.get(name) {
            return Ok(c.clone());
        }
        let mut config = self.config(name).await?;
        // kube's own retry repeats every request on 503, POSTs included,
        // with waits of up to 1000s; ours knows what is safe to repeat.
        config.default_retry = false;
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(|source| ClusterError::Client { env: name.to_string(), source })?
            .with_layer(&retry::RetryLayer::new(self.retry))
            .build();
        clients.insert(name.to_string(), client.clone());
        Ok(client)
    }
}
