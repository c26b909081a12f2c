//! `--sim DIR`: one simulated OpenShift per environment of a pipeline, set up
//! the way an administrator sets up real clusters for modelship — the
//! pipeline's namespaces, the shipped RBAC (`.tekton/rbac/modelship.yaml`) in
//! each, the model's S3 credentials and every `registrySecret` the pipeline
//! names — and a kubeconfig that reaches each cluster as the `modelship`
//! service account with a token from the TokenRequest API. The run then goes
//! the real way: TLS verified against the cluster CA, RBAC enforced, the
//! registry authorized by the service account's token. What `--sim` changes
//! in the pipeline is expressed as [`Overrides`] a user could pass by hand.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

use super::CommandError;
use crate::error::ExitClass;
use crate::spec::{Overrides, Pipeline, RegistryOverride};
pub use openshift_sim::FaultRule;
use openshift_sim::{KubeUser, KubeconfigEntry, SimConfig, SimServer};

/// The RBAC a platform team applies in every namespace modelship uses.
pub const SHIPPED_RBAC: &str = include_str!("../../.tekton/rbac/modelship.yaml");
/// The identity runs take on the simulated clusters.
pub const SERVICE_ACCOUNT: &str = "modelship";
/// Name of the Secret holding the embedded S3 endpoint's credentials, when
/// the pipeline names no `credentialsSecret`.
const SIM_S3_SECRET: &str = "modelship-sim-s3";
/// Tokens minted for the kubeconfig and registry Secrets: long enough for a
/// slow first run (a fresh model venv), short enough to expire like real ones.
const TOKEN_SECONDS: i64 = 6 * 3600;

/// What to set up besides the clusters.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Serve an `s3://` model from `DIR/s3` (seeded from the fixtures).
    pub serve_s3: bool,
    /// RBAC to apply instead of the shipped file (to test a changed Role).
    pub rbac: Option<PathBuf>,
    /// Failures every sim injects once it is set up (`run --sim --fault`).
    pub faults: Vec<FaultRule>,
    /// `run --set`: templated namespaces render with them.
    pub params: Vec<(String, String)>,
    /// The user's overrides (`-n ENV=NS`), applied before the clusters are
    /// set up so the namespaces made and bound are the ones the run uses.
    pub overrides: Overrides,
    /// API servers only, no controllers: no build runs and no model process
    /// starts (`status`, `history`, `report` only read).
    pub read_only: bool,
}

/// The running sims of one pipeline and how to reach them.
pub struct SimClusters {
    pub sims: Vec<SimServer>,
    /// `DIR/kubeconfig`: a context per environment (named after it), as the
    /// `modelship` service account of that environment's namespace.
    pub kubeconfig: PathBuf,
    /// `DIR/admin.kubeconfig`: the same clusters as `system:admin`.
    pub admin_kubeconfig: PathBuf,
    /// What the run must be told: contexts, registries, the model endpoint.
    pub overrides: Overrides,
    s3: Option<crate::storage::embedded::EmbeddedS3>,
}

/// A sim on a free loopback port whose minted tokens this process masks.
pub fn sim_config(data_dir: PathBuf, name: String) -> SimConfig {
    SimConfig {
        on_secret: openshift_sim::SecretSink::new(|token| crate::secret::register(token)),
        ..SimConfig::new(data_dir, name)
    }
}

fn failed(message: String) -> CommandError {
    CommandError::new(ExitClass::Failed, std::io::Error::other(message))
}

/// The overrides `--sim` implies before anything is started (for
/// `--dry-run`), on top of the user's `base`: each environment is the
/// kubeconfig context of its name, its registry the cluster's own.
pub fn overrides_for(pipeline: &Pipeline, base: &Overrides) -> Overrides {
    let mut o = base.clone();
    for name in pipeline.spec.environments.keys() {
        o.contexts.insert(name.clone(), name.clone());
        o.registries.insert(name.clone(), RegistryOverride::Cluster);
    }
    o
}

impl SimClusters {
    /// Start (or restart, on the data they kept) one sim per environment of
    /// the pipeline at `pipeline_path`, under `dir/<env>`, and set them up.
    pub async fn start(pipeline_path: &Path, dir: &Path, opts: &SimOptions) -> Result<SimClusters, CommandError> {
        let mut pipeline = crate::spec::load(pipeline_path).map_err(super::fail)?.pipeline;
        // The namespaces the run will use, rendered as the run renders them.
        let params = crate::spec::environment_params(&pipeline, &opts.params);
        crate::spec::render_environments(&mut pipeline, &params).map_err(CommandError::usage)?;
        opts.overrides.apply(&mut pipeline).map_err(CommandError::usage)?;
        let rbac = match &opts.rbac {
            None => SHIPPED_RBAC.to_string(),
            Some(p) => std::fs::read_to_string(p).map_err(|e| CommandError::usage(format!("{}: {e}", p.display())))?,
        };
        let rbac: Vec<Value> = crate::spec::yaml::from_str_multi(&rbac)
            .map_err(|e| CommandError::usage(format!("RBAC manifests: {e}")))?;
        let mut me = SimClusters {
            sims: Vec::new(),
            kubeconfig: dir.join("kubeconfig"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            overrides: overrides_for(&pipeline, &opts.overrides),
            s3: None,
        };
        match me.set_up(&pipeline, pipeline_path, dir, &rbac, opts).await {
            Ok(()) => Ok(me),
            Err(e) => {
                me.shutdown().await;
                Err(e)
            }
        }
    }

    async fn set_up(
        &mut self,
        pipeline: &Pipeline,
        pipeline_path: &Path,
        dir: &Path,
        rbac: &[Value],
        opts: &SimOptions,
    ) -> Result<(), CommandError> {
        for name in pipeline.spec.environments.keys() {
            // Each comes back on the address its data directory had before.
            let mut config = sim_config(dir.join(name), name.clone());
            config.faults.inject = opts.faults.clone();
            config.controllers = !opts.read_only;
            let sim = openshift_sim::start(config).await.map_err(|e| CommandError::new(ExitClass::Failed, e))?;
            // Setup is the administrator's, not under test: faults from the run on.
            sim.api().fault_counters.arm(false);
            tracing::info!(environment = %name, url = %sim.url(), "simulated cluster started");
            self.sims.push(sim);
        }
        let mut admin = Vec::new();
        let mut user = Vec::new();
        let mut admins = BTreeMap::new();
        for (sim, (name, env)) in self.sims.iter().zip(&pipeline.spec.environments) {
            let kc = Kubeconfig::from_yaml(&sim.kubeconfig())
                .map_err(|e| failed(format!("simulated cluster `{name}`: its kubeconfig: {e}")))?;
            let client = client_for(kc, name).await?;
            ensure_namespace(&client, name, &env.namespace).await?;
            for doc in rbac {
                crate::cluster::apply_manifest(&client, &env.namespace, doc)
                    .await
                    .map_err(|e| failed(format!("environment `{name}`: {e}")))?;
            }
            let token = mint_token(&client, &env.namespace).await.map_err(|e| {
                failed(format!(
                    "environment `{name}`: token for serviceaccount {}/{SERVICE_ACCOUNT}: {e}",
                    env.namespace
                ))
            })?;
            if let Some(secret) = &env.registry_secret {
                // What a platform team stores for a registry modelship pushes
                // to: here the environment's own, with a service-account token.
                let auth = base64::engine::general_purpose::STANDARD.encode(format!("{SERVICE_ACCOUNT}:{token}"));
                let config = json!({ "auths": { sim.registry_host(): { "auth": auth } } });
                let data = BTreeMap::from([(".dockerconfigjson".to_string(), config.to_string())]);
                put_secret(&client, &env.namespace, secret, "kubernetes.io/dockerconfigjson", data)
                    .await
                    .map_err(|e| failed(format!("environment `{name}`: Secret {}/{secret}: {e}", env.namespace)))?;
            }
            // Sims are named after their environment, so are the contexts.
            admin.push(sim.admin_entry());
            user.push(KubeconfigEntry { user: KubeUser::Token(token), ..sim.admin_entry() });
            admins.insert(name.clone(), client);
        }
        write(&self.admin_kubeconfig, &openshift_sim::kubeconfig_yaml(&admin))?;
        write(&self.kubeconfig, &openshift_sim::kubeconfig_yaml(&user))?;
        if opts.serve_s3 {
            self.serve_model(pipeline, pipeline_path, dir, &admins).await?;
        }
        for sim in &self.sims {
            sim.api().fault_counters.arm(true);
        }
        Ok(())
    }

    /// For an `s3://BUCKET/PREFIX` model: serve `DIR/s3` as an S3 endpoint
    /// (`models:/` and `dvc:` sources name their own tracking server and
    /// remote, which the run reaches as written)
    /// in-process, seed `BUCKET/PREFIX` from the fixture model
    /// (`fixtures/<model>-model` beside the pipeline's directory) when it is
    /// empty, and put the endpoint's credentials in the Secret the pipeline
    /// names (or one of our own) in the state environment, where
    /// `fetch-model` reads them.
    async fn serve_model(
        &mut self,
        pipeline: &Pipeline,
        pipeline_path: &Path,
        dir: &Path,
        admins: &BTreeMap<String, kube::Client>,
    ) -> Result<(), CommandError> {
        let model = &pipeline.spec.model;
        let Some(rest) = model.source.strip_prefix("s3://") else { return Ok(()) };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let root = dir.join("s3");
        let target = root.join(bucket).join(prefix.trim_end_matches('/'));
        let seed = pipeline_path
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("fixtures").join(format!("{}-model", model.name)));
        let empty = std::fs::read_dir(&target).map(|mut d| d.next().is_none()).unwrap_or(true);
        if empty {
            match seed.filter(|s| s.is_dir()) {
                Some(seed) => {
                    copy_tree(&seed, &target)
                        .map_err(|e| CommandError::usage(format!("seeding {}: {e}", target.display())))?;
                    tracing::info!(from = %seed.display(), to = %model.source, "seeded the simulated S3 bucket");
                }
                None => tracing::warn!(
                    dir = %target.display(),
                    "simulated S3 has nothing at {}; put the model files there", model.source
                ),
            }
        }
        let s3 = crate::storage::embedded::serve(&root, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(super::fail)?;
        let endpoint = s3.endpoint();
        self.s3 = Some(s3);
        let (state_env, env) =
            pipeline.state_environment().ok_or_else(|| CommandError::usage("the pipeline declares no environment"))?;
        let secret = model.credentials_secret.clone().unwrap_or_else(|| SIM_S3_SECRET.to_string());
        let data = BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".to_string(), crate::storage::embedded::ACCESS_KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), crate::storage::embedded::SECRET_ACCESS_KEY.to_string()),
        ]);
        put_secret(&admins[state_env], &env.namespace, &secret, "Opaque", data)
            .await
            .map_err(|e| failed(format!("environment `{state_env}`: Secret {}/{secret}: {e}", env.namespace)))?;
        // The embedded endpoint is plain HTTP on loopback: named insecure here,
        // as a user would with --model-endpoint URL --model-insecure.
        self.overrides.model_endpoint = Some(endpoint.clone());
        self.overrides.model_insecure = true;
        self.overrides.model_secret = Some(secret);
        tracing::info!(endpoint = %endpoint, "simulated S3 started");
        Ok(())
    }

    /// Stop the sims (their state stays in the directory) and the S3 endpoint.
    pub async fn shutdown(self) {
        for sim in self.sims {
            let api = sim.api();
            if !api.faults.inject.is_empty() {
                // What `GET /sim/faults` served, kept after the sim is gone.
                let report = api.fault_counters.report(&api.faults);
                tracing::info!(sim = %sim.name, injected = %report["injected"], "faults injected");
                let path = api.data_dir.join("faults.json");
                if let Err(e) = std::fs::write(&path, format!("{report:#}\n")) {
                    tracing::warn!(path = %path.display(), "cannot write the fault counts: {e}");
                }
            }
            sim.shutdown().await;
        }
        if let Some(s3) = self.s3 {
            s3.shutdown().await;
        }
    }
}

async fn client_for(kc: Kubeconfig, context: &str) -> Result<kube::Client, CommandError> {
    let fail = |e: String| failed(format!("simulated cluster `{context}`: {e}"));
    let options = KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kc, &options).await.map_err(|e| fail(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
}

async fn ensure_namespace(client: &kube::Client, env: &str, namespace: &str) -> Result<(), CommandError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))
        .map_err(|e| CommandError::new(ExitClass::Internal, e))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(failed(format!("environment `{env}`: namespace {namespace}: {e}"))),
    }
}

async fn mint_token(client: &kube::Client, namespace: &str) -> Result<String, kube::Error> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(TOKEN_SECONDS), ..Default::default() }),
        ..Default::default()
    };
    let answer = api.create_token_request(SERVICE_ACCOUNT, &PostParams::default(), &request).await?;
    let token = answer.status.and_then(|s| s.token).unwrap_or_default();
    crate::secret::register(token.clone());
    Ok(token)
}

async fn put_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    type_: &str,
    data: BTreeMap<String, String>,
) -> Result<(), kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": name },
        "type": type_,
        "stringData": data,
    }))
    .map_err(kube::Error::SerdeError)?;
    match api.get_opt(name).await? {
        None => api.create(&PostParams::default(), &secret).await.map(|_| ()),
        Some(existing) => {
            secret.metadata.resource_version = existing.metadata.resource_version;
            api.replace(name, &PostParams::default(), &secret).await.map(|_| ())
        }
    }
}

/// Written owner-only: it holds credentials.
fn write(path: &Path, text: &str) -> Result<(), CommandError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| CommandError::usage(format!("{}: {e}", path.display())))
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
