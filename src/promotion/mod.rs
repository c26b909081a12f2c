//! Promotion: move the exact verified digest from one environment to
//! another, recorded in the target's ledger, under the model's lock. Shared
//! by the `promote` stage and `modelship promote|rollback|history`.
//!
//! - [`resolve_env`]: an environment's namespace, client, registry and
//!   whether that registry is plain HTTP.
//! - [`promote`]: pick the digest from the source's ledger (refusing failed
//!   or unknown checks unless forced), copy it byte-exact, move the
//!   ImageStream tag (only after the copy succeeded), record it.
//! - [`rollback`]: point an environment back at an earlier digest.
//! - [`history`]: ledger entries, newest first.
//! - [`tag`]: the ImageStreamTag client (`oc tag` semantics).
//!
//! Where each environment's ledger lives: a ConfigMap in that environment's
//! namespace on its own cluster, or one directory (`--state-dir`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::cluster::{ClusterError, Clusters};
use crate::error::{ExitClass, HasExitClass};
use crate::registry::{AuthStore, CopyOptions, CopyStats, ImageRef, RegistryError, copy_image};
use crate::state::configmap::ConfigMapStore;
use crate::state::dir::DirStore;
use crate::state::{LedgerEntry, LockKeeper, LockScope, StateError, StateStore, lock_with_wait, now_rfc3339};

/// Ledger actions.
pub const VERIFIED: &str = "verified";
pub const CHECK_FAILED: &str = "check-failed";
pub const PROMOTED: &str = "promoted";
pub const ROLLED_BACK: &str = "rolled-back";

/// How long a promotion's lock lives without renewal (the default of
/// [`PromoteRequest::lock_ttl`]); a crashed runner's lock is taken over
/// after this. The holder renews it every third of this while it works.
pub const LOCK_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum PromotionError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(
        "environment `{env}` has no registry: set `spec.environments.{env}.registry` (the cluster serves no ImageStream `{stream}` with a public repository either)"
    )]
    NoRegistry { env: String, stream: String },
    #[error("ledger of `{model}` in {store}: {source}")]
    Ledger {
        model: String,
        store: String,
        #[source]
        source: StateError,
    },
    #[error("refused: {0}")]
    Refused(String),
    #[error("copying {src} to {dst}{credentials}: {source}")]
    Copy {
        src: String,
        dst: String,
        /// For a 401: where credentials were looked up (` (credentials from: ...)`).
        credentials: String,
        #[source]
        source: RegistryError,
    },
    #[error("{what}: {}", kube_message(source))]
    Tag {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("environment `{env}`: registrySecret `{secret}` in namespace {namespace} {problem}")]
    RegistrySecret {
        env: String,
        secret: String,
        namespace: String,
        problem: String,
        #[source]
        source: Option<kube::Error>,
    },
    #[error("{what}: gave up after {attempts} conflicting writes")]
    Contended { what: String, attempts: u32 },
    /// The target verifies what it receives and this digest did not pass.
    #[error("refused: `{env}` accepts only signed, attested digests: {source}")]
    Unverified {
        env: String,
        #[source]
        source: crate::signing::SigningError,
    },
    #[error("image reference {image} recorded in the ledger is not valid: {source}")]
    BadImage {
        image: String,
        #[source]
        source: RegistryError,
    },
}

fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
        other => other.to_string(),
    }
}

impl From<crate::cluster::tag::TagError> for PromotionError {
    fn from(e: crate::cluster::tag::TagError) -> Self {
        match e {
            crate::cluster::tag::TagError::Api { what, source } => PromotionError::Tag { what, source },
            crate::cluster::tag::TagError::Contended { what, attempts } => PromotionError::Contended { what, attempts },
        }
    }
}

impl HasExitClass for PromotionError {
    fn exit_class(&self) -> ExitClass {
        match self {
            PromotionError::Cluster(e) => e.exit_class(),
            PromotionError::NoRegistry { .. } | PromotionError::Refused(_) => ExitClass::BadInput,
            PromotionError::Copy { source, .. } => source.exit_class(),
            PromotionError::RegistrySecret { .. } => ExitClass::Failed,
            PromotionError::Unverified { source, .. } => source.exit_class(),
            PromotionError::Ledger { source, .. } => match source {
                StateError::Locked { .. } => ExitClass::Failed,
                other => other.exit_class(),
            },
            _ => ExitClass::Failed,
        }
    }
}

/// One environment, resolved for promotion.
#[derive(Clone)]
pub struct EnvTarget {
    pub name: String,
    pub namespace: String,
    pub client: kube::Client,
    /// `host[:port]` of its registry.
    pub registry: String,
    /// Plain HTTP / unverified TLS.
    pub insecure: bool,
    /// Set when `registry` is this cluster's own integrated registry: how
    /// to reach it as `oc registry login` would.
    pub cluster_access: Option<ClusterRegistryAccess>,
    /// Credentials from the environment's `registrySecret` (none without one).
    pub auth: AuthStore,
}

/// The cluster's CA certificates (DER: the kubeconfig's
/// `certificate-authority(-data)`, or in a pod the service account's
/// `ca.crt` and OpenShift's `service-ca.crt`, which signs the integrated
/// registry's certificate) and its API token (kubeconfig `token` or
/// `tokenFile`, or the pod's token), for its own integrated registry.
#[derive(Clone, Default)]
pub struct ClusterRegistryAccess {
    pub roots: Vec<Vec<u8>>,
    pub token: Option<crate::secret::Secret>,
}

impl std::fmt::Debug for ClusterRegistryAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRegistryAccess")
            .field("roots", &self.roots.len())
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// Where OpenShift mounts the service CA bundle in a pod.
const SERVICE_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt";
/// The integrated registry's in-cluster address on OpenShift.
const INTERNAL_REGISTRY: &str = "image-registry.openshift-image-registry.svc:5000";

/// The CA and token of environment `name`'s cluster connection.
pub async fn cluster_registry_access(clusters: &Clusters, name: &str) -> Result<ClusterRegistryAccess, PromotionError> {
    use secrecy::ExposeSecret;
    let config = clusters.config(name).await?;
    let mut roots = config.root_cert.clone().unwrap_or_default();
    if let Ok(pem) = std::fs::read(SERVICE_CA) {
        for p in x509_parser::pem::Pem::iter_from_buffer(&pem).flatten() {
            roots.push(p.contents);
        }
    }
    let token = match (&config.auth_info.token, &config.auth_info.token_file) {
        (Some(t), _) => Some(t.expose_secret().to_string()),
        (None, Some(file)) => std::fs::read_to_string(file).ok().map(|t| t.trim().to_string()),
        (None, None) => None,
    };
    let token = token.filter(|t| !t.is_empty()).map(|t| {
        crate::secret::register(t.clone());
        crate::secret::Secret::new(t)
    });
    Ok(ClusterRegistryAccess { roots, token })
}

/// Copy options between `from` and `to`: each one's integrated registry is
/// trusted with its cluster's CA and offered its cluster's token where no
/// explicit credential names it; `insecure` stays the explicit opt-out.
///
/// The hosts are those of the references copied: the source image as the
/// `from` environment recorded it (its registry, or an address in front of
/// it) and the destination in `to`.
fn copy_options(auth: &AuthStore, from: &EnvTarget, to: &EnvTarget, src: &ImageRef, dst: &ImageRef) -> CopyOptions {
    let mut auth = copy_auth(auth, from, to);
    let mut roots = std::collections::BTreeMap::<String, Vec<Vec<u8>>>::new();
    for (env, host) in [(from, &src.registry), (to, &dst.registry)] {
        if let Some(access) = &env.cluster_access {
            roots.entry(host.clone()).or_default().extend(access.roots.iter().cloned());
            if let Some(token) = &access.token {
                auth.add_cluster_token(host, &env.name, token.clone());
            }
        }
    }
    CopyOptions { src_insecure: from.insecure, dest_insecure: to.insecure, roots, auth, ..CopyOptions::default() }
}

impl EnvTarget {
    /// `REG/NS/MODEL`
    pub fn repository(&self, model: &str) -> String {
        format!("{}/{}/{}", self.registry, self.namespace, model)
    }
}

/// Resolve environment `name`: its registry is `registry` from the pipeline,
/// else the host of the cluster's integrated registry as its ImageStream for
/// `model` reports it. The cluster's own integrated registry (the one its
/// ImageStreams report, or OpenShift's in-cluster address) is reached with
/// the cluster's CA and token ([`ClusterRegistryAccess`]).
/// `insecureRegistry: true` marks the registry insecure.
pub async fn resolve_env(clusters: &Clusters, name: &str, model: &str) -> Result<EnvTarget, PromotionError> {
    let env = clusters.environment(name)?.clone();
    let client = clusters.client(name).await?;
    let reported = crate::cluster::tag::public_repository(&client, &env.namespace, model)
        .await?
        .map(|repo| repo.split('/').next().unwrap_or_default().to_string());
    let (registry, integrated) = match (env.registry.clone(), reported) {
        (Some(r), reported) => {
            let integrated = reported.as_deref() == Some(r.as_str()) || r == INTERNAL_REGISTRY;
            (r, integrated)
        }
        (None, Some(host)) => (host, true),
        (None, None) => return Err(PromotionError::NoRegistry { env: name.to_string(), stream: model.to_string() }),
    };
    let auth = match &env.registry_secret {
        Some(secret) => registry_secret(&client, name, &env.namespace, secret, &registry).await?,
        None => AuthStore::anonymous(),
    };
    let cluster_access = if integrated { Some(cluster_registry_access(clusters, name).await?) } else { None };
    Ok(EnvTarget {
        name: name.to_string(),
        namespace: env.namespace,
        client,
        registry,
        insecure: env.insecure_registry,
        cluster_access,
        auth,
    })
}

/// The `kubernetes.io/dockerconfigjson` Secret `secret` in `namespace`, read
/// through the cluster; it must hold credentials for `registry`. Missing,
/// of another type or unparsable: an error, never an anonymous push.
async fn registry_secret(
    client: &kube::Client,
    env: &str,
    namespace: &str,
    secret: &str,
    registry: &str,
) -> Result<AuthStore, PromotionError> {
    use k8s_openapi::api::core::v1::Secret;
    let err = |problem: String, source: Option<kube::Error>| PromotionError::RegistrySecret {
        env: env.to_string(),
        secret: secret.to_string(),
        namespace: namespace.to_string(),
        problem,
        source,
    };
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let found = match api.get_opt(secret).await {
        Ok(found) => found,
        Err(e) => return Err(err(format!("cannot be read: {}", kube_message(&e)), Some(e))),
    };
    let Some(found) = found else {
        return Err(err(
            format!(
                "does not exist; create it with `oc create secret docker-registry {secret} -n {namespace} --docker-server={registry} ...`"
            ),
            None,
        ));
    };
    const TYPE: &str = "kubernetes.io/dockerconfigjson";
    let kind = found.type_.as_deref().unwrap_or("Opaque");
    if kind != TYPE {
        return Err(err(format!("is of type `{kind}`, expected `{TYPE}`"), None));
    }
    let Some(json) = found.data.as_ref().and_then(|d| d.get(".dockerconfigjson")) else {
        return Err(err("has no `.dockerconfigjson` key".into(), None));
    };
    let mut store = AuthStore::from_dockerconfigjson(&json.0).map_err(|e| {
        let message = match e {
            RegistryError::AuthFile { message, .. } => message,
            other => other.to_string(),
        };
        err(format!("is not a valid `.dockerconfigjson`: {message}"), None)
    })?;
    if !store.has_registry(registry) {
        let names: Vec<&str> = store.keys().collect();
        let names = if names.is_empty() { "none".to_string() } else { names.join(", ") };
        return Err(err(format!("holds no credentials for registry {registry} (it names: {names})"), None));
    }
    store.sources = vec![format!("Secret {namespace}/{secret} (registrySecret of environment `{env}`)")];
    Ok(store)
}

/// The copy's credentials: each environment's registrySecret ahead of the
/// local auth files (the target's first, for the push).
fn copy_auth(req_auth: &AuthStore, from: &EnvTarget, to: &EnvTarget) -> AuthStore {
    req_auth.clone().with_first(from.auth.clone()).with_first(to.auth.clone())
}

/// The ledger store of `env`: its namespace's ConfigMaps, or `state_dir`.
pub fn ledger_store(env: &EnvTarget, state_dir: Option<&Path>) -> Arc<dyn StateStore> {
    match state_dir {
        Some(dir) => Arc::new(DirStore::new(dir)),
        None => Arc::new(ConfigMapStore::new(env.client.clone(), env.namespace.clone(), env.name.clone())),
    }
}

fn ledger_err(model: &str, store: &dyn StateStore) -> impl Fn(StateError) -> PromotionError {
    let (model, store) = (model.to_string(), store.describe());
    move |source| PromotionError::Ledger { model: model.clone(), store: store.clone(), source }
}

/// Who acts: `$MODELSHIP_USER`, `$USER`, else `modelship`.
pub fn principal() -> String {
    std::env::var("MODELSHIP_USER")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "modelship".into())
}

/// Record the checks of `digest` in `env` (`verified` when they passed,
/// `check-failed` otherwise); a second call for the same digest, run and
/// environment records nothing.
#[allow(clippy::too_many_arguments)]
pub async fn record_check(
    store: &dyn StateStore,
    model: &str,
    env: &str,
    digest: &str,
    image: &str,
    run_id: &str,
    by: &str,
    checks: Option<Value>,
    passed: bool,
) -> Result<(), PromotionError> {
    let action = if passed { VERIFIED } else { CHECK_FAILED };
    let entry = LedgerEntry {
        action: action.into(),
        environment: env.into(),
        digest: digest.into(),
        image: image.into(),
        at: now_rfc3339(),
        run_id: run_id.into(),
        by: by.into(),
        checks,
        ..LedgerEntry::default()
    };
    store
        .update_ledger(model, &mut |l| {
            if !has_entry(&l.history, action, env, digest, run_id) {
                l.record(LedgerEntry { at: now_rfc3339(), ..entry.clone() });
            }
            Ok(())
        })
        .await
        .map(|_| ())
        .map_err(ledger_err(model, store))
}

fn has_entry(history: &[LedgerEntry], action: &str, env: &str, digest: &str, run_id: &str) -> bool {
    history.iter().any(|e| e.action == action && e.environment == env && e.digest == digest && e.run_id == run_id)
}

/// What to promote and how.
#[derive(Debug, Clone)]
pub struct PromoteRequest {
    pub model: String,
    pub from: String,
    pub to: String,
    /// Promote this digest (it must be recorded in `from`'s ledger unless
    /// forced); default: `from`'s current digest.
    pub digest: Option<String>,
    /// Tag in the target registry and ImageStream.
    pub tag: String,
    pub run_id: String,
    pub by: String,
    pub comment: Option<String>,
    /// Promote even if the checks did not pass (recorded as `forced`).
    pub force: bool,
    /// How long to wait for another runner's lock; zero fails fast.
    pub lock_wait: Duration,
    /// How long the lock lives without renewal ([`LOCK_TTL`]); renewed every
    /// third of it while the promotion runs.
    pub lock_ttl: Duration,
    /// Move the ImageStream tag (off for targets without image.openshift.io).
    pub image_stream: bool,
    pub state_dir: Option<PathBuf>,
    pub auth: AuthStore,
    /// Where `{ file: PATH }` keys of the pipeline resolve (its directory);
    /// `None`: the working directory.
    pub pipeline_dir: Option<PathBuf>,
}

/// What a promotion did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromoteOutcome {
    pub model: String,
    pub from: String,
    pub to: String,
    pub digest: String,
    pub source: String,
    /// Target image pinned by digest.
    pub image: String,
    pub tag: String,
    /// The target's digest before this promotion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<LedgerEntry>,
    pub forced: bool,
    /// False when the ledger already had this run's entry (a repeat).
    pub recorded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyStats>,
    /// Signature and attestation carried along (and whether they were verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// The model-registry version the digest was built from, as its
    /// ledger entry carries it (`checks.mlflow`): for a promotion the
    /// source entry's, for a rollback the entry rolled back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<Value>,
    pub dry_run: bool,
}

/// `checks.mlflow` of a ledger entry: where the digest's model came from
/// in MLflow's registry (`{trackingUri, name, version}`), recorded by the
/// promote stage so promotions and rollbacks by hand can update the registry.
pub fn model_version_of(checks: Option<&Value>) -> Option<Value> {
    checks?.get("mlflow").filter(|v| v.is_object()).cloned()
}

/// The `.sig` and `.att` manifests that travelled with a promoted digest;
/// recorded in the ledger entry's `checks.provenance`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// Checked against the target's `verify` key before anything was copied.
    #[serde(default)]
    pub verified: bool,
}

impl Provenance {
    /// What a ledger entry says about it.
    pub fn of(entry: &LedgerEntry) -> Option<Provenance> {
        entry.checks.as_ref()?.get("provenance").and_then(|p| serde_json::from_value(p.clone()).ok())
    }
}

/// A client for the registry of `image`, reached as environment `env`
/// reaches it (as [`copy_options`] sets up a copy).
pub async fn registry_client(
    auth: &AuthStore,
    env: &EnvTarget,
    image: &ImageRef,
) -> Result<crate::registry::RegistryClient, RegistryError> {
    let mut auth = auth.clone().with_first(env.auth.clone());
    let mut roots = Vec::new();
    if let Some(access) = &env.cluster_access {
        roots.extend(access.roots.iter().cloned());
        if let Some(token) = &access.token {
            auth.add_cluster_token(&image.registry, &env.name, token.clone());
        }
    }
    crate::registry::RegistryClient::connect(
        &image.registry,
        env.insecure,
        &roots,
        auth.lookup(&image.registry, &image.repository).cloned(),
        auth.sources.clone(),
    )
    .await
}

/// Verify `digest` at `source` with the `verify` key of environment `to`,
/// if it has one.
async fn verify_for(
    clusters: &Clusters,
    req: &PromoteRequest,
    from: &EnvTarget,
    to: &EnvTarget,
    source: &ImageRef,
    digest: &str,
) -> Result<Option<crate::signing::Verification>, PromotionError> {
    use crate::signing::source::{SecretScope, public_key};
    let Some(verify) = clusters.environment(&req.to)?.verify.clone() else { return Ok(None) };
    let unverified = |source| PromotionError::Unverified { env: req.to.clone(), source };
    let scope = SecretScope { client: &to.client, namespace: &to.namespace, env: &req.to };
    let base = req.pipeline_dir.clone().unwrap_or_default();
    let key = public_key(&verify.public_key, Some(scope), &base).await.map_err(unverified)?;
    let client = registry_client(&req.auth, from, source).await.map_err(|e| PromotionError::Copy {
        src: source.to_string(),
        dst: format!("verification for `{}`", req.to),
        credentials: String::new(),
        source: e,
    })?;
    let verified = crate::signing::verify_image(&client, &source.repository, digest, &key).await.map_err(unverified)?;
    tracing::info!(
        model = %req.model, to = %req.to, digest, signature = %verified.signature, attestation = %verified.attestation,
        "signature and attestation verified"
    );
    Ok(Some(verified))
}

/// The entry of `from`'s ledger that `digest` (or the current digest) is
/// promoted on, and whether its checks allow it.
fn pick_source(ledger: &crate::state::Ledger, from: &str, digest: Option<&str>) -> Option<LedgerEntry> {
    match digest {
        Some(d) => ledger.history.iter().rev().find(|e| e.environment == from && e.digest == d).cloned(),
        None => ledger.current.get(from).cloned(),
    }
}

fn checks_passed(entry: &LedgerEntry) -> bool {
    let passed = entry.checks.as_ref().and_then(|c| c.get("passed")).and_then(Value::as_bool);
    entry.action != CHECK_FAILED && passed != Some(false)
}

/// Promote: see the module doc. With `dry_run` nothing is locked, copied,
/// tagged or recorded.
pub async fn promote(
    clusters: &Clusters,
    req: &PromoteRequest,
    dry_run: bool,
) -> Result<PromoteOutcome, PromotionError> {
    if req.from == req.to {
        return Err(PromotionError::Refused(format!("--from and --to are both `{}`", req.from)));
    }
    // Unknown environments are bad input before anything connects.
    clusters.environment(&req.from)?;
    clusters.environment(&req.to)?;
    if let Some(d) = &req.digest {
        crate::registry::validate_digest(d).map_err(|m| PromotionError::Refused(format!("digest `{d}`: {m}")))?;
    }
    let from = resolve_env(clusters, &req.from, &req.model).await?;
    let to = resolve_env(clusters, &req.to, &req.model).await?;
    let from_store = ledger_store(&from, req.state_dir.as_deref());
    let to_store = ledger_store(&to, req.state_dir.as_deref());

    let source_ledger = from_store.get_ledger(&req.model).await.map_err(ledger_err(&req.model, &*from_store))?;
    let entry = pick_source(&source_ledger, &req.from, req.digest.as_deref());
    let (digest, source, checks) = match (&entry, &req.digest) {
        (Some(e), _) => {
            if !checks_passed(e) && !req.force {
                return Err(PromotionError::Refused(format!(
                    "{} in `{}` did not pass its checks (run {}); pass --force to promote it anyway (recorded)",
                    e.digest, req.from, e.run_id
                )));
            }
            let src = ImageRef::parse(&e.image)
                .map_err(|source| PromotionError::BadImage { image: e.image.clone(), source })?
                .with_digest(&e.digest);
            (e.digest.clone(), src, e.checks.clone())
        }
        (None, Some(d)) if req.force => {
            let src = ImageRef::parse(&format!("{}@{d}", from.repository(&req.model)))
                .map_err(|source| PromotionError::BadImage { image: from.repository(&req.model), source })?;
            (d.clone(), src, None)
        }
        (None, Some(d)) => {
            return Err(PromotionError::Refused(format!(
                "{d} is not recorded as verified in `{}` (ledger in {}); pass --force to promote it anyway (recorded)",
                req.from,
                from_store.describe()
            )));
        }
        (None, None) => {
            return Err(PromotionError::Refused(format!(
                "the ledger of `{}` in {} records no verified digest in `{}`; run the pipeline's checks first or name one with --digest and --force",
                req.model,
                from_store.describe(),
                req.from
            )));
        }
    };
    let forced = req.force && entry.as_ref().is_none_or(|e| !checks_passed(e));
    let model_version = model_version_of(checks.as_ref());
    let dst = ImageRef::parse(&format!("{}:{}", to.repository(&req.model), req.tag))
        .map_err(|source| PromotionError::BadImage { image: to.repository(&req.model), source })?;
    let pinned = dst.with_digest(&digest).to_string();
    let mut outcome = PromoteOutcome {
        model: req.model.clone(),
        from: req.from.clone(),
        to: req.to.clone(),
        digest: digest.clone(),
        source: source.to_string(),
        image: pinned.clone(),
        tag: req.tag.clone(),
        previous: None,
        forced,
        recorded: false,
        copy: None,
        provenance: None,
        model_version,
        dry_run,
    };
    if dry_run {
        let target_ledger = to_store.get_ledger(&req.model).await.ok();
        outcome.previous = target_ledger.and_then(|l| l.current.get(&req.to).cloned());
        return Ok(outcome);
    }

    // Before anything is locked, copied or tagged: a target that verifies
    // refuses a digest whose signature or attestation does not hold.
    let verified = verify_for(clusters, req, &from, &to, &source, &digest).await?.is_some();

    let holder = format!("{} (run {})", req.by, req.run_id);
    let lock_err = ledger_err(&req.model, &*to_store);
    lock_with_wait(&*to_store, LockScope::Promotion, &req.model, &holder, req.lock_ttl, req.lock_wait)
        .await
        .map_err(&lock_err)?;
    // Released on every path; a cancelled caller drops this future, so the
    // stage releases again after its select (release by the holder is idempotent).
    let keeper = LockKeeper::start(to_store.clone(), LockScope::Promotion, &req.model, &holder, req.lock_ttl);
    let result =
        locked_promote(req, &from, &to, &*to_store, &keeper, &source, &dst, checks, forced, verified, outcome).await;
    drop(keeper);
    if let Err(e) = to_store.release_lock(&req.model, &holder).await {
        tracing::warn!(model = %req.model, error = %e, "could not release the promotion lock; it expires on its own");
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn locked_promote(
    req: &PromoteRequest,
    from: &EnvTarget,
    to: &EnvTarget,
    to_store: &dyn StateStore,
    keeper: &LockKeeper,
    source: &ImageRef,
    dst: &ImageRef,
    checks: Option<Value>,
    forced: bool,
    verified: bool,
    mut outcome: PromoteOutcome,
) -> Result<PromoteOutcome, PromotionError> {
    let lock_err = ledger_err(&req.model, to_store);
    let opts = copy_options(&req.auth, from, to, source, dst);
    // Signature and attestation first, byte-exact, so the tag never names
    // a digest whose provenance is not beside it yet.
    let mut provenance = Provenance { verified, ..Provenance::default() };
    for (suffix, slot) in [("sig", &mut provenance.signature), ("att", &mut provenance.attestation)] {
        let tag = crate::signing::attachment_tag(&outcome.digest, suffix);
        let src = ImageRef { tag: Some(tag.clone()), digest: None, ..source.clone() };
        let dst = ImageRef { tag: Some(tag), digest: None, ..dst.clone() };
        match copy_while_locked(keeper, &src, &dst, &opts).await.map_err(&lock_err)? {
            Ok(stats) => *slot = Some(stats.digest),
            Err(PromotionError::Copy { source: RegistryError::ManifestNotFound { .. }, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let stats = copy_while_locked(keeper, source, dst, &opts).await.map_err(&lock_err)??;
    tracing::info!(
        model = %req.model, from = %req.from, to = %req.to, digest = %stats.digest,
        uploaded = stats.blobs_uploaded, skipped = stats.blobs_skipped, mounted = stats.blobs_mounted,
        "image copied"
    );
    // The tag moves only now: every blob and the manifest are in place,
    // and the lock is still ours.
    keeper.check().map_err(&lock_err)?;
    if req.image_stream {
        crate::cluster::tag::point_tag(&to.client, &to.namespace, &req.model, &req.tag, &outcome.image).await?;
    }
    let signed = provenance.signature.is_some() || provenance.attestation.is_some();
    let checks = if signed {
        let mut c = match checks {
            Some(Value::Object(m)) => m,
            Some(other) => serde_json::Map::from_iter([("result".to_string(), other)]),
            None => serde_json::Map::new(),
        };
        c.insert("provenance".into(), serde_json::to_value(&provenance).expect("serialisable"));
        Some(Value::Object(c))
    } else {
        checks
    };
    let entry = LedgerEntry {
        action: PROMOTED.into(),
        environment: req.to.clone(),
        digest: outcome.digest.clone(),
        image: outcome.image.clone(),
        at: now_rfc3339(),
        run_id: req.run_id.clone(),
        by: req.by.clone(),
        from: Some(req.from.clone()),
        checks,
        forced,
        comment: req.comment.clone(),
    };
    let mut previous = None;
    let mut recorded = false;
    let env = req.to.clone();
    to_store
        .update_ledger(&req.model, &mut |l| {
            keeper.check()?;
            // Re-evaluated on every retry after a 409: decide from this read.
            previous = l.current.get(&env).cloned();
            recorded = !has_entry(&l.history, PROMOTED, &env, &entry.digest, &entry.run_id);
            if recorded {
                l.record(LedgerEntry { at: now_rfc3339(), ..entry.clone() });
            }
            Ok(())
        })
        .await
        .map_err(ledger_err(&req.model, to_store))?;
    // A repeat's "previous" is this promotion itself; report the one before.
    outcome.previous = previous.filter(|p| !(p.digest == outcome.digest && p.run_id == req.run_id));
    outcome.recorded = recorded;
    outcome.copy = Some(stats);
    outcome.provenance = signed.then_some(provenance);
    Ok(outcome)
}

/// The copy, given up as soon as the lock is lost (the outer error); the
/// manifest, and so the tag, is written last, so nothing is half-tagged.
async fn copy_while_locked(
    keeper: &LockKeeper,
    src: &ImageRef,
    dst: &ImageRef,
    opts: &CopyOptions,
) -> Result<Result<CopyStats, PromotionError>, StateError> {
    tokio::select! {
        r = copy_image(src, dst, opts) => Ok(r.map_err(|e| PromotionError::Copy {
            src: src.to_string(),
            dst: dst.to_string(),
            credentials: match &e {
                RegistryError::Unauthorized { .. } if !opts.auth.sources.is_empty() => {
                    format!(" (credentials from: {})", opts.auth.sources.join(", "))
                }
                _ => String::new(),
            },
            source: e,
        })),
        lost = keeper.lost() => Err(lost),
    }
}

/// What to roll back.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub model: String,
    pub env: String,
    /// Default: the newest digest in the environment's history that differs
    /// from the current one.
    pub to_digest: Option<String>,
    pub tag: String,
    pub run_id: String,
    pub by: String,
    pub reason: Option<String>,
    pub lock_wait: Duration,
    /// As [`PromoteRequest::lock_ttl`].
    pub lock_ttl: Duration,
    pub image_stream: bool,
    pub state_dir: Option<PathBuf>,
    pub auth: AuthStore,
}

/// Point `env` back at an earlier digest, recorded as `rolled-back`. The
/// image is already in the environment's registry (it was promoted there);
/// the tag is re-pointed in the registry and the ImageStream.
pub async fn rollback(clusters: &Clusters, req: &RollbackRequest) -> Result<PromoteOutcome, PromotionError> {
    clusters.environment(&req.env)?;
    let target = resolve_env(clusters, &req.env, &req.model).await?;
    let store = ledger_store(&target, req.state_dir.as_deref());
    let holder = format!("{} (run {})", req.by, req.run_id);
    lock_with_wait(&*store, LockScope::Promotion, &req.model, &holder, req.lock_ttl, req.lock_wait)
        .await
        .map_err(ledger_err(&req.model, &*store))?;
    let keeper = LockKeeper::start(store.clone(), LockScope::Promotion, &req.model, &holder, req.lock_ttl);
    let result = locked_rollback(req, &target, &*store, &keeper).await;
    drop(keeper);
    if let Err(e) = store.release_lock(&req.model, &holder).await {
        tracing::warn!(model = %req.model, error = %e, "could not release the rollback lock; it expires on its own");
    }
    result
}

async fn locked_rollback(
    req: &RollbackRequest,
    target: &EnvTarget,
    store: &dyn StateStore,
    keeper: &LockKeeper,
) -> Result<PromoteOutcome, PromotionError> {
    let lock_err = ledger_err(&req.model, store);
    let ledger = store.get_ledger(&req.model).await.map_err(ledger_err(&req.model, store))?;
    let current = ledger.current.get(&req.env).cloned();
    let deployed = |e: &&LedgerEntry| e.environment == req.env && (e.action == PROMOTED || e.action == ROLLED_BACK);
    let wanted = match &req.to_digest {
        Some(d) => ledger.history.iter().rev().filter(deployed).find(|e| &e.digest == d).cloned().ok_or_else(|| {
            PromotionError::Refused(format!("{d} was never promoted to `{}` (ledger in {})", req.env, store.describe()))
        })?,
        None => {
            let now = current.as_ref().map(|c| c.digest.as_str());
            ledger.history.iter().rev().filter(deployed).find(|e| Some(e.digest.as_str()) != now).cloned().ok_or_else(
                || {
                    PromotionError::Refused(format!(
                        "`{}` has no earlier digest to roll back to (ledger in {})",
                        req.env,
                        store.describe()
                    ))
                },
            )?
        }
    };
    let repo = target.repository(&req.model);
    let src = ImageRef::parse(&format!("{repo}@{}", wanted.digest))
        .map_err(|source| PromotionError::BadImage { image: repo.clone(), source })?;
    let dst = ImageRef::parse(&format!("{repo}:{}", req.tag))
        .map_err(|source| PromotionError::BadImage { image: repo.clone(), source })?;
    let opts = copy_options(&req.auth, target, target, &src, &dst);
    let stats = copy_while_locked(keeper, &src, &dst, &opts).await.map_err(&lock_err)??;
    let pinned = src.to_string();
    keeper.check().map_err(&lock_err)?;
    if req.image_stream {
        crate::cluster::tag::point_tag(&target.client, &target.namespace, &req.model, &req.tag, &pinned).await?;
    }
    let entry = LedgerEntry {
        action: ROLLED_BACK.into(),
        environment: req.env.clone(),
        digest: wanted.digest.clone(),
        image: pinned.clone(),
        at: now_rfc3339(),
        run_id: req.run_id.clone(),
        by: req.by.clone(),
        from: current.as_ref().map(|c| c.digest.clone()),
        checks: wanted.checks.clone(),
        forced: false,
        comment: req.reason.clone(),
    };
    let mut recorded = false;
    store
        .update_ledger(&req.model, &mut |l| {
            keeper.check()?;
            recorded = !has_entry(&l.history, ROLLED_BACK, &entry.environment, &entry.digest, &entry.run_id);
            if recorded {
                l.record(LedgerEntry { at: now_rfc3339(), ..entry.clone() });
            }
            Ok(())
        })
        .await
        .map_err(ledger_err(&req.model, store))?;
    Ok(PromoteOutcome {
        model: req.model.clone(),
        from: req.env.clone(),
        to: req.env.clone(),
        digest: wanted.digest,
        source: src.to_string(),
        image: pinned,
        tag: req.tag.clone(),
        previous: current,
        forced: false,
        recorded,
        copy: Some(stats),
        provenance: None,
        model_version: model_version_of(wanted.checks.as_ref()),
        dry_run: false,
    })
}

/// Ledger entries of `model` in `envs` (each read from its own store),
/// newest first; an entry seen in two stores (a shared `--state-dir`) once.
pub async fn history(
    clusters: &Clusters,
    model: &str,
    envs: &[String],
    state_dir: Option<&Path>,
) -> Result<Vec<LedgerEntry>, PromotionError> {
    let mut all: Vec<LedgerEntry> = Vec::new();
    for env in envs {
        clusters.environment(env)?;
        let store: Arc<dyn StateStore> = match state_dir {
            Some(dir) => Arc::new(DirStore::new(dir)),
            None => {
                let e = clusters.environment(env)?;
                Arc::new(ConfigMapStore::new(clusters.client(env).await?, e.namespace.clone(), env.clone()))
            }
        };
        let ledger = store.get_ledger(model).await.map_err(ledger_err(model, &*store))?;
        for e in ledger.history {
            if &e.environment == env && !all.contains(&e) {
                all.push(e);
            }
        }
    }
    // RFC 3339 UTC timestamps of one format sort as strings; stable for ties.
    all.sort_by(|a, b| b.at.cmp(&a.at));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Ledger;

    fn entry(action: &str, env: &str, digest: &str, passed: Option<bool>) -> LedgerEntry {
        LedgerEntry {
            action: action.into(),
            environment: env.into(),
            digest: digest.into(),
            image: format!("127.0.0.1:1/ns/m@{digest}"),
            run_id: "r1".into(),
            checks: passed.map(|p| serde_json::json!({ "passed": p })),
            ..LedgerEntry::default()
        }
    }

    #[test]
    fn a_failed_check_is_not_promotable() {
        assert!(checks_passed(&entry(VERIFIED, "dev", "sha256:a", Some(true))));
        assert!(checks_passed(&entry(PROMOTED, "dev", "sha256:a", None)));
        assert!(!checks_passed(&entry(VERIFIED, "dev", "sha256:a", Some(false))));
        assert!(!checks_passed(&entry(CHECK_FAILED, "dev", "sha256:a", None)));
    }

    #[test]
    fn pick_source_prefers_the_named_digest_and_else_the_current_one() {
        let mut l = Ledger::new("m");
        l.record(entry(VERIFIED, "dev", "sha256:a", Some(true)));
        l.record(entry(CHECK_FAILED, "dev", "sha256:b", Some(false)));
        l.record(entry(PROMOTED, "prod", "sha256:a", None));
        assert_eq!(pick_source(&l, "dev", None).unwrap().digest, "sha256:b");
        assert_eq!(pick_source(&l, "dev", Some("sha256:a")).unwrap().action, VERIFIED);
        assert!(pick_source(&l, "dev", Some("sha256:c")).is_none());
        assert!(pick_source(&l, "qa", None).is_none());
    }
}
