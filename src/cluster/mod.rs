//! Kubernetes clients per environment (each behind the [`retry`] layer), and
//! typed OpenShift and Seldon resources (one file per API group, added by
//! the stages that use them).

pub mod build;
pub mod openshift;
pub mod retry;
pub mod tag;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::Mutex;

use crate::error::{ExitClass, HasExitClass};
use crate::spec::Environment;

pub mod seldon;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("environment `{name}` is not declared in the pipeline; {hint}")]
    UnknownEnvironment {
        name: String,
        /// "did you mean" or the declared environments.
        hint: String,
    },
    #[error("environment `{env}`: cannot load kubeconfig{}: {source}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Kubeconfig {
        env: String,
        path: Option<PathBuf>,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "environment `{env}`: context `{context}`{} is not in kubeconfig {} (it has: {}); {}",
        origin.as_ref().map(|o| format!(" (from {o})")).unwrap_or_default(),
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "),
        if available.is_empty() { "no contexts".to_string() } else { available.join(", ") },
        context_hint(env, context, available)
    )]
    NoContext {
        env: String,
        context: String,
        /// Where the context name came from (`spec.environments.dev.context
        /// in FILE`, `--context dev=CTX`).
        origin: Option<String>,
        files: Vec<PathBuf>,
        available: Vec<String>,
    },
    #[error(
        "environment `{env}`: no cluster configuration: no --kubeconfig, no file named by $KUBECONFIG, no ~/.kube/config, and not in a pod (KUBERNETES_SERVICE_HOST/PORT unset or {SERVICE_ACCOUNT_TOKEN} unreadable); {NO_CLUSTER_HINT}"
    )]
    NoConfig { env: String },
    #[error("environment `{env}`: cannot use the in-cluster service account: {source}")]
    InCluster {
        env: String,
        #[source]
        source: kube::config::InClusterError,
    },
    #[error("environment `{env}`: cannot build a client: {source}")]
    Client {
        env: String,
        #[source]
        source: kube::Error,
    },
}

/// The three ways out when there is no cluster to talk to.
pub const NO_CLUSTER_HINT: &str = "hint: pass --kubeconfig PATH, run against simulated clusters with --sim DIR, or keep run state in --state-dir DIR and run only stages that need no cluster (e.g. --until render)";

/// "did you mean" a context the kubeconfig has, or how to pick another.
fn context_hint(env: &str, context: &str, available: &[String]) -> String {
    match crate::suggest::did_you_mean(context, available.iter().map(String::as_str)) {
        Some(h) => format!("hint: {h} (--context {env}=CTX picks another)"),
        None => format!("hint: pass --kubeconfig PATH to one that has it, or --context {env}=CTX to use another"),
    }
}

impl HasExitClass for ClusterError {
    /// What the user configured (kubeconfig, context, environment) is bad
    /// input: no stage failed.
    fn exit_class(&self) -> ExitClass {
        match self {
            ClusterError::UnknownEnvironment { .. }
            | ClusterError::Kubeconfig { .. }
            | ClusterError::NoContext { .. }
            | ClusterError::NoConfig { .. } => ExitClass::BadInput,
            ClusterError::InCluster { .. } | ClusterError::Client { .. } => ExitClass::Failed,
        }
    }
}

/// The token the kubelet mounts into every pod for its service account.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// What exists where the runner runs: the inputs of [`Source::decide`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surroundings {
    /// `--kubeconfig`.
    pub flag: Option<PathBuf>,
    /// The files `$KUBECONFIG` names (or `~/.kube/config` when it is unset
    /// or empty) that exist.
    pub kubeconfigs: Vec<PathBuf>,
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` are set and
    /// [`SERVICE_ACCOUNT_TOKEN`] is readable.
    pub in_pod: bool,
}

impl Surroundings {
    /// Look at this process's environment and files.
    pub fn detect(flag: Option<&Path>) -> Surroundings {
        let named: Vec<PathBuf> = match std::env::var_os("KUBECONFIG") {
            Some(v) => std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect(),
            None => Vec::new(),
        };
        let candidates = if named.is_empty() {
            dirs::home_dir().map(|h| h.join(".kube/config")).into_iter().collect()
        } else {
            named
        };
        let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
        Surroundings {
            flag: flag.map(Path::to_path_buf),
            kubeconfigs: candidates.into_iter().filter(|p| p.is_file()).collect(),
            in_pod: set("KUBERNETES_SERVICE_HOST")
                && set("KUBERNETES_SERVICE_PORT")
                && std::fs::File::open(SERVICE_ACCOUNT_TOKEN).is_ok(),
        }
    }
}

/// Where an environment's connection settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// These kubeconfig files, merged (the first to name something wins).
    Kubeconfig(Vec<PathBuf>),
    /// The pod's service account.
    InCluster,
    /// Nothing usable.
    Nothing,
}

impl Source {
    /// `--kubeconfig` when given (it must exist and hold the environment's
    /// context); else the kubeconfig files that exist (as kubectl, files
    /// `$KUBECONFIG` names that do not exist are skipped, and
    /// `~/.kube/config` is read only when `$KUBECONFIG` is unset); else,
    /// in a pod, its service account, also for an environment that names a
    /// `context:` (a Tekton task has no kubeconfig; client-go falls back
    /// the same way when its config is empty).
    pub fn decide(s: &Surroundings) -> Source {
        match (&s.flag, s.kubeconfigs.is_empty(), s.in_pod) {
            (Some(flag), _, _) => Source::Kubeconfig(vec![flag.clone()]),
            (None, false, _) => Source::Kubeconfig(s.kubeconfigs.clone()),
            (None, true, true) => Source::InCluster,
            (None, true, false) => Source::Nothing,
        }
    }
}

/// Read and merge `files`; the environment's context must be in them.
async fn from_kubeconfigs(
    name: &str,
    env: &Environment,
    origin: Option<&str>,
    files: &[PathBuf],
) -> Result<kube::Config, ClusterError> {
    let load_err = |path: &Path| {
        let (env, path) = (name.to_string(), path.to_path_buf());
        move |source| ClusterError::Kubeconfig { env, path: Some(path), source }
    };
    let mut merged = Kubeconfig::default();
    for file in files {
        let kc = Kubeconfig::read_from(file).map_err(load_err(file))?;
        merged = merged.merge(kc).map_err(load_err(file))?;
    }
    if let Some(context) = &env.context
        && !merged.contexts.iter().any(|c| &c.name == context)
    {
        return Err(ClusterError::NoContext {
            env: name.to_string(),
            context: context.clone(),
            origin: origin.map(str::to_string),
            files: files.to_vec(),
            available: merged.contexts.iter().map(|c| c.name.clone()).collect(),
        });
    }
    let options = KubeConfigOptions { context: env.context.clone(), ..Default::default() };
    kube::Config::from_custom_kubeconfig(merged, &options).await.map_err(load_err(&files[0]))
}

/// Lazily connected clients, one per environment of the pipeline.
pub struct Clusters {
    environments: IndexMap<String, Environment>,
    /// `--kubeconfig`; absent: `$KUBECONFIG`, `~/.kube/config`, in-cluster
    /// (see [`Source::decide`]).
    kubeconfig: Option<PathBuf>,
    clients: Mutex<HashMap<String, kube::Client>>,
    retry: retry::RetryConfig,
    /// Environments whose in-cluster fallback was logged (once each).
    told_in_cluster: std::sync::Mutex<HashSet<String>>,
    /// Environment -> where its `context` came from, for errors.
    context_origins: HashMap<String, String>,
}

impl Clusters {
    pub fn new(environments: IndexMap<String, Environment>, kubeconfig: Option<PathBuf>) -> Self {
        Clusters {
            environments,
            kubeconfig,
            clients: Mutex::new(HashMap::new()),
            retry: Default::default(),
            told_in_cluster: Default::default(),
            context_origins: HashMap::new(),
        }
    }

    /// Say where each environment's `context` came from (see
    /// [`crate::spec::Overrides::context_origins`]), so a context the
    /// kubeconfig lacks is reported with its source.
    pub fn with_context_origins(mut self, origins: impl IntoIterator<Item = (String, String)>) -> Self {
        self.context_origins = origins.into_iter().collect();
        self
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
        self.environments.get(name).ok_or_else(|| ClusterError::UnknownEnvironment {
            name: name.to_string(),
            hint: crate::suggest::hint(name, self.environments.keys().map(String::as_str)),
        })
    }

    pub fn environments(&self) -> &IndexMap<String, Environment> {
        &self.environments
    }

    /// The connection settings of environment `name` (its API server's
    /// address, for one), from what [`Source::decide`] picks.
    pub async fn config(&self, name: &str) -> Result<kube::Config, ClusterError> {
        let env = self.environment(name)?;
        match Source::decide(&Surroundings::detect(self.kubeconfig.as_deref())) {
            Source::Kubeconfig(files) => {
                from_kubeconfigs(name, env, self.context_origins.get(name).map(String::as_str), &files).await
            }
            Source::InCluster => {
                if self.told_in_cluster.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string()) {
                    tracing::info!(
                        environment = name,
                        context = env.context.as_deref().unwrap_or("(current)"),
                        "environment {name}: no kubeconfig; using the in-cluster service account"
                    );
                }
                kube::Config::incluster_env()
                    .map_err(|source| ClusterError::InCluster { env: name.to_string(), source })
            }
            Source::Nothing => Err(ClusterError::NoConfig { env: name.to_string() }),
        }
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
        // `instantiatebinary` holds its answer until the build runs, up to
        // five minutes behind a Serial queue (openshift-apiserver
        // buildconfiginstantiate/rest.go); kube's 295 s read timeout would
        // cut that wait short and make a queued build look like a lost answer.
        config.read_timeout = Some(std::time::Duration::from_secs(330));
        let client = kube::client::ClientBuilder::try_from(config)
            .map_err(|source| ClusterError::Client { env: name.to_string(), source })?
            .with_layer(&retry::RetryLayer::new(self.retry))
            .build();
        clients.insert(name.to_string(), client.clone());
        Ok(client)
    }
}

/// Create `doc` in `namespace`, or replace what is there (so a changed Role
/// takes effect), as `kubectl apply` would.
pub async fn apply_manifest(client: &kube::Client, namespace: &str, doc: &serde_json::Value) -> Result<(), String> {
    use kube::api::{Api, DynamicObject, PostParams};
    let mut obj: DynamicObject = serde_json::from_value(doc.clone()).map_err(|e| format!("manifest: {e}"))?;
    let types = obj.types.clone().ok_or("a manifest without apiVersion/kind")?;
    let gvk = kube::api::GroupVersionKind::try_from(&types).map_err(|e| e.to_string())?;
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await.map_err(|e| format!("{}: {e}", types.kind))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let name = obj.metadata.name.clone().ok_or("a manifest without a name")?;
    let what = format!("{} {namespace}/{name}", types.kind);
    obj.metadata.namespace = Some(namespace.to_string());
    match api.get_opt(&name).await.map_err(|e| format!("{what}: {e}"))? {
        None => api.create(&PostParams::default(), &obj).await.map(|_| ()).map_err(|e| format!("{what}: {e}")),
        Some(existing) => {
            // A ServiceAccount keeps its uid (tokens are bound to it).
            if types.kind == "ServiceAccount" {
                return Ok(());
            }
            obj.metadata.resource_version = existing.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &obj).await.map(|_| ()).map_err(|e| format!("{what}: {e}"))
        }
    }
}

/// Who `client`'s credentials are: `authentication.k8s.io/v1`
/// SelfSubjectReview (what `kubectl auth whoami` asks), answered from the
/// request's authentication, so nobody can claim another identity.
pub async fn whoami(client: &kube::Client) -> Result<crate::state::Identity, kube::Error> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = api.create(&kube::api::PostParams::default(), &SelfSubjectReview::default()).await?;
    let info = review.status.and_then(|s| s.user_info).unwrap_or_default();
    Ok(crate::state::Identity { user: info.username.unwrap_or_default(), groups: info.groups.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(context: Option<&str>) -> Environment {
        Environment {
            context: context.map(str::to_string),
            namespace: "models-dev".into(),
            registry: None,
            insecure_registry: false,
            registry_secret: None,
            verify: None,
        }
    }

    #[test]
    fn a_named_context_without_any_kubeconfig_falls_back_to_the_pod_service_account() {
        let pod = Surroundings { flag: None, kubeconfigs: vec![], in_pod: true };
        assert_eq!(Source::decide(&pod), Source::InCluster);
        let laptop = Surroundings { flag: None, kubeconfigs: vec![], in_pod: false };
        assert_eq!(Source::decide(&laptop), Source::Nothing);
        // A kubeconfig that exists is used even in a pod (it may name other clusters).
        let both = Surroundings { flag: None, kubeconfigs: vec!["/k/a".into(), "/k/b".into()], in_pod: true };
        assert_eq!(Source::decide(&both), Source::Kubeconfig(vec!["/k/a".into(), "/k/b".into()]));
        // --kubeconfig wins, and is used (and must exist) even when it does not.
        let flag = Surroundings { flag: Some("/f".into()), kubeconfigs: vec!["/k/a".into()], in_pod: true };
        assert_eq!(Source::decide(&flag), Source::Kubeconfig(vec!["/f".into()]));
    }

    #[test]
    fn detect_skips_kubeconfig_files_that_do_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let s = Surroundings::detect(Some(&dir.path().join("missing")));
        assert_eq!(s.flag.as_deref(), Some(dir.path().join("missing").as_path()));
        assert!(s.kubeconfigs.iter().all(|p| p.is_file()), "{s:?}");
    }

    #[tokio::test]
    async fn a_kubeconfig_without_the_named_context_is_an_error_naming_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kubeconfig");
        let mut kc = String::from("apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n");
        for (n, port) in [("a", 1), ("b", 2)] {
            kc.push_str(&format!("- name: {n}\n  cluster:\n    server: https://127.0.0.1:{port}\n"));
        }
        kc.push_str("contexts:\n");
        for n in ["a", "b"] {
            kc.push_str(&format!("- name: {n}\n  context:\n    cluster: {n}\n    user: {n}\n"));
        }
        kc.push_str("users:\n- name: a\n  user:\n    token: t\n- name: b\n  user:\n    token: t\n");
        std::fs::write(&file, kc).unwrap();
        let origin = Some("spec.environments.dev.context in p.yaml");
        let e =
            from_kubeconfigs("dev", &env(Some("dev-cluster")), origin, std::slice::from_ref(&file)).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "environment `dev`: context `dev-cluster` (from spec.environments.dev.context in p.yaml) is not in kubeconfig {} (it has: a, b); hint: pass --kubeconfig PATH to one that has it, or --context dev=CTX to use another",
                file.display()
            )
        );
        assert!(!e.to_string().contains("failed to load"), "{e}");
        assert_eq!(e.exit_class(), ExitClass::BadInput);
        let e = from_kubeconfigs("dev", &env(Some("bb")), None, std::slice::from_ref(&file)).await.unwrap_err();
        assert!(e.to_string().ends_with("hint: did you mean `b`? (--context dev=CTX picks another)"), "{e}");
        let ok = from_kubeconfigs("dev", &env(Some("b")), None, std::slice::from_ref(&file)).await.unwrap();
        assert_eq!(ok.cluster_url.port_u16(), Some(2));
        // No context: the current one.
        let ok = from_kubeconfigs("dev", &env(None), None, &[file]).await.unwrap();
        assert_eq!(ok.cluster_url.port_u16(), Some(1));
    }

    #[test]
    fn an_undeclared_environment_gets_a_suggestion() {
        let envs = [("dev".to_string(), env(None)), ("prod".to_string(), env(None))].into_iter().collect();
        let clusters = Clusters::new(envs, None);
        let e = clusters.environment("prdo").unwrap_err();
        assert_eq!(e.to_string(), "environment `prdo` is not declared in the pipeline; did you mean `prod`?");
        assert_eq!(e.exit_class(), ExitClass::BadInput);
    }

    #[tokio::test]
    async fn nothing_to_connect_with_says_what_was_looked_for() {
        let e = ClusterError::NoConfig { env: "dev".into() };
        assert_eq!(
            e.to_string(),
            "environment `dev`: no cluster configuration: no --kubeconfig, no file named by $KUBECONFIG, no ~/.kube/config, and not in a pod (KUBERNETES_SERVICE_HOST/PORT unset or /var/run/secrets/kubernetes.io/serviceaccount/token unreadable); hint: pass --kubeconfig PATH, run against simulated clusters with --sim DIR, or keep run state in --state-dir DIR and run only stages that need no cluster (e.g. --until render)"
        );
        assert_eq!(e.exit_class(), ExitClass::BadInput);
    }
}
