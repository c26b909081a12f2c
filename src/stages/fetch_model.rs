//! Stage `fetch-model`: bring a model version from S3-compatible storage,
//! `file://`, MLflow's model registry (`models:/`) or a DVC-tracked path
//! (`dvc:`) into the run's workspace, verified, with a manifest and one
//! content digest that later stages key the build on.
//!
//! Every `with:` field defaults from `spec.model` where the model spec has
//! it. The work itself is [`crate::storage::fetch`]; this module resolves
//! parameters, reads credentials from a Kubernetes Secret when named, and
//! turns the result into outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use serde::{Deserialize, Serialize};

use super::{Contract, Problem, Stage, StageContext, StageError, ValidateCx};
use crate::cluster::Clusters;
use crate::error::{ExitClass, HasExitClass};
use crate::secret::Secret;
use crate::spec::{ModelSpec, Pipeline};
use crate::storage::dvc::DvcLineage;
use crate::storage::mlflow::{self, MlflowCredentials, MlflowError, MlflowLineage};
use crate::storage::{self, Expect, FetchRequest, Fetched, Filter, S3Options, Source, StaticCredentials, StorageError};
use crate::template::is_template;

/// `with:` of `fetch-model`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// `s3://BUCKET/PREFIX/`, `s3://BUCKET/KEY`, `file://PATH`, `models:/NAME@ALIAS`,
    /// `models:/NAME/VERSION` or `dvc:PATH`; default `spec.model.source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// S3-compatible endpoint URL (path-style addressing); default `spec.model.endpoint`,
    /// then the SDK's `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Pin one object version (single-object sources only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<String>>,
    /// Relative path -> hex sha256, or the name of a `sha256sum`-style manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_sha256: Option<ExpectSha256>,
    /// Kubernetes Secret in the state environment's namespace with
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (or `accessKeyId`/`secretAccessKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// Requests in flight at once (default 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Scalar>,
    /// Range size and ranged-GET threshold, bytes or `8Mi`/`8MiB`/`8MB` (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<Scalar>,
    /// Allow a plain-HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure: Option<Scalar>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ExpectSha256 {
    Files(BTreeMap<String, String>),
    Manifest(String),
}

/// A number or boolean that may also arrive as a string (after templating).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Number(u64),
    Text(String),
}

const MIN_PART_SIZE: u64 = 4 * 1024;
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
const MAX_CONCURRENCY: u64 = 256;

impl Scalar {
    fn templated(&self) -> bool {
        matches!(self, Scalar::Text(t) if is_template(t))
    }

    fn count(&self) -> Result<u64, String> {
        match self {
            Scalar::Number(n) => Ok(*n),
            Scalar::Text(t) => t.trim().parse().map_err(|_| format!("`{t}` is not a whole number")),
            Scalar::Bool(b) => Err(format!("expected a number, found `{b}`")),
        }
    }

    /// Bytes: a number, or a number with a K/M/G suffix ([`storage::parse_size`]).
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Scalar::Text(t) => storage::parse_size(t),
            other => other.count(),
        }
    }

    fn flag(&self) -> Result<bool, String> {
        match self {
            Scalar::Bool(b) => Ok(*b),
            Scalar::Text(t) if t == "true" => Ok(true),
            Scalar::Text(t) if t == "false" => Ok(false),
            other => {
                Err(format!("expected true or false, found `{}`", serde_json::to_string(other).unwrap_or_default()))
            }
        }
    }
}

/// `with:` merged with `spec.model` defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub source: String,
    /// Where `source` came from, for messages.
    pub source_field: &'static str,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub version_id: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub credentials_secret: Option<String>,
}

impl Params {
    pub fn resolve(&self, model: &ModelSpec) -> Resolved {
        Resolved {
            source_field: if self.source.is_some() { "with.source" } else { "spec.model.source" },
            source: self.source.clone().unwrap_or_else(|| model.source.clone()),
            endpoint: self.endpoint.clone().or_else(|| model.endpoint.clone()),
            region: self.region.clone().or_else(|| model.region.clone()),
            version_id: self.version_id.clone().or_else(|| model.version_id.clone()),
            include: self.include.clone().unwrap_or_else(|| model.include.clone()),
            exclude: self.exclude.clone().unwrap_or_else(|| model.exclude.clone()),
            credentials_secret: self.credentials_secret.clone().or_else(|| model.credentials_secret.clone()),
        }
    }

    fn insecure(&self) -> Result<bool, String> {
        self.insecure.as_ref().map_or(Ok(false), Scalar::flag)
    }

    fn concurrency(&self) -> Result<usize, String> {
        let n = self.concurrency.as_ref().map_or(Ok(storage::DEFAULT_CONCURRENCY as u64), Scalar::count)?;
        if !(1..=MAX_CONCURRENCY).contains(&n) {
            return Err(format!("must be between 1 and {MAX_CONCURRENCY}, found {n}"));
        }
        Ok(n as usize)
    }

    fn part_size(&self) -> Result<u64, String> {
        let n = self.part_size.as_ref().map_or(Ok(storage::DEFAULT_PART_SIZE), Scalar::bytes)?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&n) {
            return Err(format!("must be between {MIN_PART_SIZE} bytes and 5Gi, found {n}"));
        }
        Ok(n)
    }

    fn expect(&self) -> Expect {
        match &self.expect_sha256 {
            None => Expect::Nothing,
            Some(ExpectSha256::Files(map)) => Expect::Map(map.clone()),
            Some(ExpectSha256::Manifest(name)) => Expect::Manifest(name.clone()),
        }
    }
}

/// Errors of this stage beyond the storage layer's own.
#[derive(Debug, thiserror::Error)]
pub enum FetchModelError {
    #[error("with.{field}: {message}")]
    Param { field: &'static str, message: String },
    #[error("credentialsSecret `{name}`: no state environment to read it from (spec.environments is empty)")]
    NoStateEnvironment { name: String },
    #[error("credentialsSecret `{name}` in namespace `{namespace}` (environment `{env}`): {message}")]
    Secret { name: String, namespace: String, env: String, message: String },
    #[error("credentialsSecret `{name}` in namespace `{namespace}` (environment `{env}`): {source}")]
    Kube {
        name: String,
        namespace: String,
        env: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<MlflowError> for FetchModelError {
    fn from(e: MlflowError) -> Self {
        FetchModelError::Storage(e.into())
    }
}

impl HasExitClass for FetchModelError {
    fn exit_class(&self) -> ExitClass {
        match self {
            FetchModelError::Param { .. }
            | FetchModelError::NoStateEnvironment { .. }
            | FetchModelError::Secret { .. } => ExitClass::BadInput,
            // A Secret the pipeline names that is not there is its
            // configuration; a refusal to read it is the cluster's (exit 1,
            // like every other 403).
            FetchModelError::Kube { source: kube::Error::Api(s), .. } if s.code == 404 => ExitClass::BadInput,
            FetchModelError::Kube { .. } => ExitClass::Failed,
            FetchModelError::Cluster(e) => e.exit_class(),
            FetchModelError::Storage(e) => e.exit_class(),
        }
    }
}

impl From<FetchModelError> for StageError {
    fn from(err: FetchModelError) -> StageError {
        let retryable = match &err {
            FetchModelError::Storage(e) => e.retryable(),
            FetchModelError::Kube { source: kube::Error::Api(s), .. } => s.code >= 500 || s.code == 429,
            FetchModelError::Kube { .. } => true,
            _ => false,
        };
        let class = err.exit_class();
        let mut e = StageError::failed(err);
        if class == ExitClass::BadInput {
            e.kind = super::StageErrorKind::BadInput;
        }
        e.retryable = retryable;
        e
    }
}

/// Build the storage request from `with:` (defaults from `model`) and fetch
/// into `<dest>/model/`. `credentials` (from a Secret, resolved by the
/// caller) override the AWS default chain. Cancel by dropping the future.
/// S3 and `file://` sources only need this; [`fetch_from`] takes registries.
pub async fn fetch(
    params: &Params,
    model: &ModelSpec,
    base_dir: &Path,
    dest: &Path,
    credentials: Option<StaticCredentials>,
    progress: bool,
) -> Result<Fetched, FetchModelError> {
    let access = Access { s3: credentials, ..Access::default() };
    fetch_from(params, model, base_dir, dest, &access, progress).await.map(|(f, _)| f)
}

/// What a fetch may authenticate with and where a `dvc:` source is read.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// S3 keys from a Secret; `None`: the AWS default chain.
    pub s3: Option<StaticCredentials>,
    /// MLflow credentials from a Secret; `None`: `MLFLOW_TRACKING_*` from the environment.
    pub mlflow: Option<MlflowCredentials>,
    /// The Git commit a `dvc:` source is read at (a triggered run's); `None`: HEAD.
    pub commit: Option<String>,
}

/// Where a registry source resolved to, for the lineage and the attestation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub mlflow: Option<MlflowLineage>,
    pub dvc: Option<DvcLineage>,
}

/// [`fetch`] for every source: a `models:/` version is resolved through
/// MLflow's REST API and its artifacts fetched from S3 (the same ranged,
/// verified, resumable path) or through the tracking server's proxy; a
/// `dvc:` path is read from the pipeline's Git repository and its objects
/// fetched from the DVC remote, md5-verified.
pub async fn fetch_from(
    params: &Params,
    model: &ModelSpec,
    base_dir: &Path,
    dest: &Path,
    access: &Access,
    progress: bool,
) -> Result<(Fetched, Lineage), FetchModelError> {
    let r = params.resolve(model);
    let param = |field: &'static str| move |message: String| FetchModelError::Param { field, message };
    let source = Source::parse(&r.source)?;
    if r.version_id.is_some() && !matches!(source, Source::S3 { .. }) {
        return Err(param("versionId")(format!("pins an S3 object version, but the source is `{}`", r.source)));
    }
    if r.version_id.is_some() && source.is_prefix() {
        return Err(param("versionId")("pins one object, but the source is a prefix".into()));
    }
    let filter = Filter::new(&r.include, &r.exclude)
        .map_err(|(list, e)| FetchModelError::Param { field: list, message: e.to_string() })?;
    let mut req = FetchRequest::new(source.clone(), std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf()));
    req.base_dir = base_dir.to_path_buf();
    req.s3 = S3Options {
        endpoint: r.endpoint,
        region: r.region,
        credentials: access.s3.clone(),
        insecure: params.insecure().map_err(param("insecure"))? || model.insecure,
    };
    req.version_id = r.version_id;
    req.filter = filter;
    req.expect = params.expect();
    req.concurrency = params.concurrency().map_err(param("concurrency"))?;
    req.part_size = params.part_size().map_err(param("partSize"))?;
    req.progress = progress;
    let mut lineage = Lineage::default();
    match &source {
        Source::S3 { .. } | Source::File { .. } => {}
        Source::Mlflow(uri) => {
            let (found, registry) = resolve_mlflow(model, uri, access, &mut req).await?;
            lineage.mlflow = Some(found);
            // An empty artifact directory is the version's problem: say which.
            return match storage::fetch(req).await {
                Ok(f) => Ok((f, lineage)),
                Err(StorageError::Empty { .. } | StorageError::NotFound { .. }) => {
                    let m = lineage.mlflow.expect("set above");
                    Err(MlflowError::Artifacts {
                        server: registry,
                        name: m.name,
                        version: m.version,
                        uri: m.artifact_uri,
                        reason: "no files are there: refusing to produce an empty model".into(),
                    }
                    .into())
                }
                Err(e) => Err(e.into()),
            };
        }
        Source::Dvc { path } => {
            let plan = storage::dvc::plan(base_dir, path, access.commit.as_deref(), &req.s3).await?;
            req.s3.endpoint = req.s3.endpoint.or(plan.endpoint);
            req.s3.region = req.s3.region.or(plan.region);
            if let Some(ep) = &req.s3.endpoint {
                storage::check_endpoint(ep, req.s3.insecure)?;
            }
            req.objects = Some(plan.objects);
            lineage.dvc = Some(plan.lineage);
        }
    }
    Ok((storage::fetch(req).await?, lineage))
}

/// The tracking server of `model` (`spec.model.mlflow.trackingUri`, else
/// `$MLFLOW_TRACKING_URI`) with the credentials of `access`.
pub fn mlflow_client(model: &ModelSpec, credentials: Option<MlflowCredentials>) -> Result<mlflow::Client, MlflowError> {
    let spec = model.mlflow.clone().unwrap_or_default();
    let uri = spec
        .tracking_uri
        .or_else(|| std::env::var("MLFLOW_TRACKING_URI").ok().filter(|v| !v.is_empty()))
        .ok_or_else(|| MlflowError::NoTrackingUri { uri: model.source.clone() })?;
    mlflow::Client::new(&uri, spec.insecure, credentials.unwrap_or_else(MlflowCredentials::from_env))
}

/// Resolve `uri` and point `req` at the version's artifacts; the lineage
/// and the server (for messages).
async fn resolve_mlflow(
    model: &ModelSpec,
    uri: &mlflow::ModelUri,
    access: &Access,
    req: &mut FetchRequest,
) -> Result<(MlflowLineage, String), FetchModelError> {
    let client = mlflow_client(model, access.mlflow.clone())?;
    let mv = client.resolve(uri).await?;
    let artifact_uri = client.download_uri(&mv).await?;
    tracing::info!(
        model = %mv.name, version = %mv.version, run_id = %mv.run_id, artifacts = %crate::secret::mask(&artifact_uri),
        "resolved {uri}"
    );
    match mlflow::ArtifactStore::parse(&artifact_uri) {
        Ok(mlflow::ArtifactStore::S3 { bucket, prefix }) => {
            req.source = Source::S3 { bucket, key: if prefix.is_empty() { prefix } else { format!("{prefix}/") } };
            // Where MLflow's own clients reach the store.
            if req.s3.endpoint.is_none() {
                req.s3.endpoint = std::env::var("MLFLOW_S3_ENDPOINT_URL").ok().filter(|v| !v.is_empty());
            }
            if let Some(ep) = &req.s3.endpoint {
                storage::check_endpoint(ep, req.s3.insecure)?;
            }
        }
        Ok(mlflow::ArtifactStore::Proxy { path }) => {
            req.objects = Some(client.list_proxied(&mv, &artifact_uri, &path).await?);
            req.http = Some(client.http());
        }
        Err(reason) => {
            return Err(MlflowError::Artifacts {
                server: client.server(),
                name: mv.name,
                version: mv.version,
                uri: artifact_uri,
                reason,
            }
            .into());
        }
    }
    let alias = match &uri.selector {
        mlflow::Selector::Alias(a) => Some(a.clone()),
        mlflow::Selector::Version(_) => None,
    };
    Ok((
        MlflowLineage {
            tracking_uri: client.server(),
            name: mv.name,
            version: mv.version,
            alias,
            run_id: mv.run_id,
            artifact_uri: crate::secret::mask(&artifact_uri),
        },
        client.server(),
    ))
}

/// `{trackingUri, name, version}`: what a ledger entry keeps of the MLflow
/// version a digest was built from (`checks.mlflow`, see
/// [`crate::promotion::model_version_of`]).
pub fn model_version_json(m: &MlflowLineage) -> serde_json::Value {
    serde_json::json!({ "trackingUri": m.tracking_uri, "name": m.name, "version": m.version })
}

/// After `digest` reached `env`: tag the MLflow version it was built from
/// (`version`, as [`model_version_json`] wrote it) `modelship.io/ENV.digest`
/// and, when `spec.model.mlflow.aliases.ENV` names an alias, move it to that
/// version; a rollback calls it with the version rolled back to. Reaches the
/// pipeline's tracking server with its `credentialsSecret` (else the
/// environment's `MLFLOW_TRACKING_*`). Idempotent.
pub async fn record_in_registry(
    clusters: &Clusters,
    pipeline: &Pipeline,
    version: &serde_json::Value,
    env: &str,
    digest: &str,
) -> Result<(), FetchModelError> {
    let (Some(name), Some(number)) = (version["name"].as_str(), version["version"].as_str()) else {
        return Ok(());
    };
    let model = &pipeline.spec.model;
    let credentials = match &model.credentials_secret {
        Some(secret) => {
            let (_, m) = registry_access(clusters, pipeline, secret).await?;
            (!m.is_empty()).then_some(m)
        }
        None => None,
    };
    let client = mlflow_client(model, credentials)?;
    let alias = model.mlflow.as_ref().and_then(|m| m.aliases.get(env)).map(String::as_str);
    client.record_promotion(name, number, env, digest, alias).await?;
    Ok(())
}

/// Access keys from a Secret's data, registered for masking.
pub fn credentials_from_secret(data: &BTreeMap<String, Vec<u8>>) -> Result<StaticCredentials, String> {
    let get = |names: &[&str]| -> Result<Option<Secret>, String> {
        for n in names {
            if let Some(v) = data.get(*n) {
                let s = String::from_utf8(v.clone()).map_err(|_| format!("key `{n}` is not UTF-8"))?;
                return Ok(Some(Secret::new(s.trim().to_string())));
            }
        }
        Ok(None)
    };
    let access = get(&["AWS_ACCESS_KEY_ID", "accessKeyId"])?;
    let secret = get(&["AWS_SECRET_ACCESS_KEY", "secretAccessKey"])?;
    let token = get(&["AWS_SESSION_TOKEN", "sessionToken"])?;
    match (access, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Ok(StaticCredentials { access_key_id, secret_access_key, session_token: token })
        }
        _ => {
            let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
            keys.sort_unstable();
            Err(format!(
                "expected keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or accessKeyId and secretAccessKey); it has: {}",
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
            ))
        }
    }
}

/// Read S3 credentials from Secret `name` in the state environment's
/// namespace, through that environment's cluster.
pub async fn secret_credentials(
    clusters: &Clusters,
    pipeline: &Pipeline,
    name: &str,
) -> Result<StaticCredentials, FetchModelError> {
    let (data, namespace, env) = secret_data(clusters, pipeline, name).await?;
    credentials_from_secret(&data).map_err(|message| FetchModelError::Secret {
        name: name.into(),
        namespace,
        env,
        message,
    })
}

/// What a registry source authenticates with, from Secret `name`: MLflow's
/// `MLFLOW_TRACKING_*` keys and the S3 keys, each when present (an MLflow
/// artifact proxy needs no S3 keys; a DVC remote may use the AWS chain).
pub async fn registry_access(
    clusters: &Clusters,
    pipeline: &Pipeline,
    name: &str,
) -> Result<(Option<StaticCredentials>, MlflowCredentials), FetchModelError> {
    let (data, namespace, env) = secret_data(clusters, pipeline, name).await?;
    let text = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).trim().to_string());
    let mlflow = MlflowCredentials::from_lookup(&format!("Secret {namespace}/{name}"), text);
    let has_s3 = ["AWS_ACCESS_KEY_ID", "accessKeyId"].iter().any(|k| data.contains_key(*k));
    let s3 = if has_s3 {
        Some(credentials_from_secret(&data).map_err(|message| FetchModelError::Secret {
            name: name.into(),
            namespace: namespace.clone(),
            env: env.clone(),
            message,
        })?)
    } else {
        None
    };
    if s3.is_none() && mlflow.is_empty() {
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort_unstable();
        return Err(FetchModelError::Secret {
            name: name.into(),
            namespace,
            env,
            message: format!(
                "expected MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; it has: {}",
                if keys.is_empty() { "none".to_string() } else { keys.join(", ") }
            ),
        });
    }
    Ok((s3, mlflow))
}

/// Secret `name`'s data, its namespace and environment.
async fn secret_data(
    clusters: &Clusters,
    pipeline: &Pipeline,
    name: &str,
) -> Result<(BTreeMap<String, Vec<u8>>, String, String), FetchModelError> {
    let (env, environment) =
        pipeline.state_environment().ok_or_else(|| FetchModelError::NoStateEnvironment { name: name.into() })?;
    let client = clusters.client(env).await?;
    let namespace = environment.namespace.clone();
    let api: kube::Api<KubeSecret> = kube::Api::namespaced(client, &namespace);
    let secret = api.get(name).await.map_err(|source| FetchModelError::Kube {
        name: name.into(),
        namespace: namespace.clone(),
        env: env.into(),
        source,
    })?;
    let data: BTreeMap<String, Vec<u8>> = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    Ok((data, namespace, env.to_string()))
}

/// What fetch-model hands later stages (render reads `modelDir` and
/// `contentDigest`, sign and the report the lineage: `source` and each
/// object's key, size, sha256, version id and ETag).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Output {
    /// The source URI fetched (`s3://...` or `file://...`), masked.
    pub source: String,
    pub model_dir: String,
    pub manifest: Vec<storage::ManifestEntry>,
    pub total_bytes: u64,
    pub content_digest: String,
    pub objects: Vec<storage::ObjectSource>,
    /// For a `models:/` source: tracking server, name, version, alias, run
    /// id and the artifact URI fetched.
    pub mlflow: Option<MlflowLineage>,
    /// For a `dvc:` source: commit, tracking file, output, md5 and remote.
    pub dvc: Option<DvcLineage>,
}

impl Output {
    /// The outputs of `fetched` from `source`. URIs are masked: a source
    /// may carry a value registered as secret, and outputs land in the run
    /// record.
    pub fn new(source: &str, fetched: &Fetched) -> Output {
        Output::with_lineage(source, fetched, Lineage::default())
    }

    /// With where a registry source resolved to.
    pub fn with_lineage(source: &str, fetched: &Fetched, lineage: Lineage) -> Output {
        let mut objects = fetched.objects.clone();
        for o in &mut objects {
            o.url = crate::secret::mask(&o.url);
            o.key = crate::secret::mask(&o.key);
        }
        Output {
            source: crate::secret::mask(source),
            model_dir: fetched.model_dir.display().to_string(),
            manifest: fetched.manifest.clone(),
            total_bytes: fetched.total_bytes,
            content_digest: fetched.content_digest.clone(),
            objects,
            mlflow: lineage.mlflow,
            dvc: lineage.dvc,
        }
    }
}

pub struct FetchModel;

impl Contract for FetchModel {
    const KIND: &'static str = "fetch-model";
    const OUTPUTS: &'static [&'static str] =
        &["source", "modelDir", "manifest", "totalBytes", "contentDigest", "objects", "mlflow", "dvc"];
    type Params = Params;
    type Output = Output;

    fn validate(params: &Params, cx: &ValidateCx<'_>) -> Vec<Problem> {
        let r = params.resolve(&cx.pipeline.spec.model);
        let mut problems = Vec::new();
        let at = |field: &str, from_with: bool| if from_with { field.to_string() } else { String::new() };
        let source_in_with = params.source.is_some();
        let mut source = None;
        if !is_template(&r.source) {
            match Source::parse(&r.source) {
                Ok(s) => source = Some(s),
                // A problem in `with:` is prefixed with its path already.
                Err(e) if source_in_with => problems.push(Problem::new("source", e.to_string())),
                Err(e) => problems.push(Problem::new("", format!("{}: {e}", r.source_field))),
            }
        }
        if let (Some(_), Some(Source::Mlflow(_) | Source::Dvc { .. } | Source::File { .. })) = (&r.version_id, &source)
        {
            problems.push(Problem::new(
                at("versionId", params.version_id.is_some()),
                format!("versionId pins an S3 object version, but the source is `{}`", r.source),
            ));
        } else if let (Some(_), Some(s)) = (&r.version_id, &source)
            && s.is_prefix()
        {
            problems.push(
                Problem::new(
                    at("versionId", params.version_id.is_some()),
                    "versionId pins one object, but the source is a prefix",
                )
                .with_hint("name the object (s3://BUCKET/KEY) or drop versionId"),
            );
        }
        let insecure = match &params.insecure {
            Some(s) if s.templated() => None,
            _ => match params.insecure() {
                Ok(b) => Some(b || cx.pipeline.spec.model.insecure),
                Err(m) => {
                    problems.push(Problem::new("insecure", m));
                    None
                }
            },
        };
        if let (Some(ep), Some(insecure)) = (&r.endpoint, insecure)
            && !is_template(ep)
            && let Err(e) = storage::check_endpoint(ep, insecure)
        {
            let field = if params.endpoint.is_some() { "endpoint" } else { "" };
            problems.push(Problem::new(field, e.to_string()));
        }
        for (list, globs, from_with) in
            [("include", &r.include, params.include.is_some()), ("exclude", &r.exclude, params.exclude.is_some())]
        {
            for (i, g) in globs.iter().enumerate() {
                if is_template(g) {
                    continue;
                }
                if let Err((_, e)) = Filter::new(std::slice::from_ref(g), &[]) {
                    let path = if from_with { format!("{list}[{i}]") } else { String::new() };
                    let prefix = if from_with { String::new() } else { format!("spec.model.{list}[{i}]: ") };
                    problems.push(Problem::new(path, format!("{prefix}glob {e}")));
                }
            }
        }
        match &params.expect_sha256 {
            Some(ExpectSha256::Files(map)) => {
                for (path, hex) in map {
                    if let Err(e) = storage::safe_relative(path) {
                        problems.push(Problem::new(format!("expectSha256.{path}"), format!("path `{path}`: {e}")));
                    }
                    if !is_template(hex) && (hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit())) {
                        problems.push(Problem::new(
                            format!("expectSha256.{path}"),
                            format!("`{hex}` is not a sha256 (64 hex digits)"),
                        ));
                    }
                }
            }
            Some(ExpectSha256::Manifest(name)) if !is_template(name) => {
                if let Err(e) = storage::safe_relative(name) {
                    problems.push(Problem::new("expectSha256", format!("manifest name `{name}`: {e}")));
                }
            }
            _ => {}
        }
        for (field, scalar, check) in [
            ("concurrency", &params.concurrency, Params::concurrency as fn(&Params) -> Result<usize, String>),
            ("partSize", &params.part_size, |p: &Params| p.part_size().map(|n| n as usize)),
        ] {
            if let Some(s) = scalar
                && !s.templated()
                && let Err(m) = check(params)
            {
                problems.push(Problem::new(field, m));
            }
        }
        problems.extend(mlflow_problems(cx, source.as_ref()));
        if let Some(name) = &r.credentials_secret
            && !is_template(name)
        {
            if !crate::names::is_dns_subdomain(name) {
                problems.push(Problem::new(
                    at("credentialsSecret", params.credentials_secret.is_some()),
                    format!("`{name}` is not a valid Secret name (lowercase letters, digits, `-` and `.`)"),
                ));
            }
            if cx.pipeline.state_environment().is_none() {
                problems.push(Problem::new(
                    at("credentialsSecret", params.credentials_secret.is_some()),
                    "a credentials Secret is read from the state environment, but no environment is declared",
                ));
            }
        }
        problems
    }

    /// Only to read a credentials Secret; `file://` and the AWS default
    /// chain need none.
    fn needs_cluster(params: &Params, cx: &ValidateCx<'_>) -> bool {
        params.resolve(&cx.pipeline.spec.model).credentials_secret.is_some()
    }

    fn plan(params: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        let r = params.resolve(&cx.pipeline.spec.model);
        let parsed = Source::parse(&r.source);
        let kind = match &parsed {
            Ok(s @ Source::S3 { .. }) if s.is_prefix() => "every object under",
            Ok(Source::S3 { .. }) => "object",
            Ok(Source::File { .. }) => "local files from",
            Ok(Source::Mlflow(_)) => "the artifacts of MLflow model version",
            Ok(Source::Dvc { .. }) => "the DVC-tracked",
            Err(_) => "",
        };
        let mut lines = vec![format!("fetch {kind} {} into <workspace>/{}/model/", r.source, cx.stage.name)];
        match &parsed {
            Ok(Source::Mlflow(_)) => {
                let m = cx.pipeline.spec.model.mlflow.clone().unwrap_or_default();
                lines.push(format!(
                    "resolve it at the tracking server {} (registered-models/alias, model-versions/get, get-download-uri); artifacts from S3 or the server's mlflow-artifacts: proxy",
                    m.tracking_uri.as_deref().unwrap_or("$MLFLOW_TRACKING_URI")
                ));
                for (env, alias) in &m.aliases {
                    lines.push(format!("after a promotion to `{env}`: tag the version modelship.io/{env}.digest and move alias `{alias}` to it"));
                }
            }
            Ok(Source::Dvc { path }) => lines.push(format!(
                "read the .dvc file or dvc.lock tracking {path} and .dvc/config from the pipeline's Git repository at the run's commit (label `commit`, else HEAD); fetch from the S3 remote, md5-verified"
            )),
            _ => {}
        }
        if r.source.starts_with("s3://") {
            let insecure = params.insecure().unwrap_or(false) || cx.pipeline.spec.model.insecure;
            lines.push(match &r.endpoint {
                Some(ep) => format!(
                    "endpoint {ep} (path-style{})",
                    if ep.starts_with("http://") && insecure { ", plain HTTP allowed by insecure" } else { "" }
                ),
                None => "endpoint: AWS (or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)".to_string(),
            });
            lines.push(format!("region {}", r.region.as_deref().unwrap_or("from the AWS chain, else us-east-1")));
            lines.push(match (&r.credentials_secret, cx.pipeline.state_environment()) {
                (Some(name), Some((env, e))) => {
                    format!("credentials from Secret {name} in namespace {} (environment {env})", e.namespace)
                }
                _ => "credentials from the AWS default chain".to_string(),
            });
            if let Some(v) = &r.version_id {
                lines.push(format!("version {v}"));
            }
            lines.push(format!(
                "ranged GETs of {} bytes above that size, {} requests at once",
                params.part_size().unwrap_or(storage::DEFAULT_PART_SIZE),
                params.concurrency().unwrap_or(storage::DEFAULT_CONCURRENCY)
            ));
        }
        if !r.include.is_empty() {
            lines.push(format!("include {}", r.include.join(", ")));
        }
        if !r.exclude.is_empty() {
            lines.push(format!("exclude {}", r.exclude.join(", ")));
        }
        match &params.expect_sha256 {
            Some(ExpectSha256::Files(m)) => lines.push(format!("verify sha256 of {} file(s)", m.len())),
            Some(ExpectSha256::Manifest(n)) => lines.push(format!("verify sha256 against manifest {n}")),
            None => {}
        }
        lines
    }
}

/// `spec.model.mlflow`: only beside a `models:/` source, aliases for
/// declared environments, a tracking URI MLflow can be reached at.
fn mlflow_problems(cx: &ValidateCx<'_>, source: Option<&Source>) -> Vec<Problem> {
    let Some(m) = &cx.pipeline.spec.model.mlflow else { return Vec::new() };
    let mut out = Vec::new();
    if source.is_some_and(|s| !matches!(s, Source::Mlflow(_))) {
        out.push(Problem::new("", "spec.model.mlflow is set, but the model source is not `models:/...`"));
    }
    if let Some(uri) = &m.tracking_uri
        && !is_template(uri)
        && let Err(e) = mlflow::check_tracking_uri(uri, m.insecure)
    {
        out.push(Problem::new("", format!("spec.model.mlflow.trackingUri: {e}")));
    }
    for (env, alias) in &m.aliases {
        if let Some(p) = crate::spec::environment_problem(cx.pipeline, &format!("spec.model.mlflow.aliases.{env}"), env)
        {
            out.push(Problem::new("", format!("{}: {}", p.path, p.message)));
        }
        if alias.is_empty() || alias.contains(['/', '@']) {
            out.push(Problem::new("", format!("spec.model.mlflow.aliases.{env}: `{alias}` is not an alias")));
        }
    }
    out
}

/// The effectful half, beside the contract above.
impl Stage for FetchModel {
    async fn run(params: Params, cx: &StageContext) -> Result<Output, StageError> {
        let dest = cx.stage_dir().map_err(|e| StageError::failed(StorageError::io("create", &cx.workspace, e)))?;
        let registry = !matches!(
            Source::parse(&params.resolve(&cx.pipeline.spec.model).source),
            Ok(Source::S3 { .. } | Source::File { .. })
        );
        let work = async {
            let mut access = Access { commit: cx.labels.get("commit").cloned(), ..Access::default() };
            match params.resolve(&cx.pipeline.spec.model).credentials_secret {
                Some(name) if registry => {
                    let (s3, mlflow) = registry_access(&cx.clusters, &cx.pipeline, &name).await?;
                    access.s3 = s3;
                    access.mlflow = (!mlflow.is_empty()).then_some(mlflow);
                }
                Some(name) => access.s3 = Some(secret_credentials(&cx.clusters, &cx.pipeline, &name).await?),
                None => {}
            }
            fetch_from(&params, &cx.pipeline.spec.model, &cx.pipeline_dir, &dest, &access, cx.interactive).await
        };
        let (fetched, lineage) = tokio::select! {
            r = work => r?,
            () = cx.cancel.cancelled() => return Err(StageError::cancelled()),
        };
        let manifest_path: PathBuf = dest.join("manifest.json");
        let json = serde_json::to_vec_pretty(&fetched.manifest).expect("serialisable");
        tokio::fs::write(&manifest_path, json)
            .await
            .map_err(|e| StageError::failed(StorageError::io("write", &manifest_path, e)))?;
        let source = params.resolve(&cx.pipeline.spec.model).source;
        Ok(Output::with_lineage(&source, &fetched, lineage))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::catalog::Catalog;
    use crate::spec::Pipeline;

    fn pipeline(model_extra: &str, with: &str) -> Pipeline {
        let text = format!(
            "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: {{name: w}}\nspec:\n  model:\n    name: w\n    source: s3://models/weather/\n{model_extra}  environments:\n    dev: {{namespace: models-dev}}\n  stages:\n    - name: fetch\n      uses: fetch-model\n      with: {with}\n"
        );
        crate::spec::yaml::from_str(&text).expect("test pipeline parses")
    }

    fn check(p: &Pipeline) -> Vec<Problem> {
        let catalog = Catalog::embedded();
        let cx = ValidateCx { pipeline: p, stage: &p.spec.stages[0], index: 0, catalog: &catalog };
        match super::super::kind::parse_params::<FetchModel>(&p.spec.stages[0].with) {
            Ok(params) => FetchModel::validate(&params, &cx),
            Err(problem) => vec![problem],
        }
    }

    fn plan(p: &Pipeline) -> Vec<String> {
        let catalog = Catalog::embedded();
        let cx = ValidateCx { pipeline: p, stage: &p.spec.stages[0], index: 0, catalog: &catalog };
        let params = super::super::kind::parse_params::<FetchModel>(&p.spec.stages[0].with).unwrap();
        FetchModel::plan(&params, &cx)
    }

    #[test]
    fn defaults_come_from_spec_model() {
        let p = pipeline("    endpoint: https://ceph.example\n    region: eu-1\n    include: ['*.pkl']\n", "{}");
        let r = Params::default().resolve(&p.spec.model);
        assert_eq!(r.source, "s3://models/weather/");
        assert_eq!(r.endpoint.as_deref(), Some("https://ceph.example"));
        assert_eq!(r.include, vec!["*.pkl".to_string()]);
        let over = Params { source: Some("file://m".into()), include: Some(vec![]), ..Params::default() };
        let r = over.resolve(&p.spec.model);
        assert_eq!((r.source.as_str(), r.source_field, r.include.len()), ("file://m", "with.source", 0));
        assert!(check(&p).is_empty());
    }

    #[test]
    fn misspelt_key_is_rejected() {
        let problems = check(&pipeline("", "{sourec: s3://a/b}"));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("unknown field `sourec`"), "{:?}", problems);
    }

    #[test]
    fn bad_values_are_reported_with_their_field() {
        let with = "{source: 'ftp://x', endpoint: 'http://127.0.0.1:9000', include: ['a[', 'ok'], partSize: 12, concurrency: 0, expectSha256: {'../x': 'abc'}, credentialsSecret: 'Bad_Name'}";
        let problems = check(&pipeline("", with));
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        insta::assert_debug_snapshot!(paths);
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        insta::assert_debug_snapshot!(messages);
    }

    #[test]
    fn version_on_a_prefix_and_templates() {
        let problems = check(&pipeline("", "{versionId: abc}"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "versionId");
        // Templated values are checked after rendering, at run time.
        assert!(check(&pipeline("", "{source: '{{params.src}}', partSize: '{{params.p}}'}")).is_empty());
        assert!(check(&pipeline("", "{endpoint: 'http://127.0.0.1:1', insecure: true, partSize: 8Mi}")).is_empty());
    }

    #[test]
    fn plan_names_source_endpoint_and_secret_without_values() {
        let p = pipeline(
            "    endpoint: http://127.0.0.1:9000\n    credentialsSecret: s3-creds\n",
            "{insecure: true, include: ['**/*.pkl'], expectSha256: SHA256SUMS}",
        );
        insta::assert_snapshot!(plan(&p).join("\n"));
    }

    #[test]
    fn registry_sources_validate_their_own_settings() {
        let mlflow = |source: &str, extra: &str| {
            let text = format!(
                "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: {{name: w}}\nspec:\n  model:\n    name: w\n    source: '{source}'\n{extra}  environments:\n    dev: {{namespace: models-dev}}\n  stages:\n    - name: fetch\n      uses: fetch-model\n"
            );
            crate::spec::yaml::from_str::<Pipeline>(&text).expect("test pipeline parses")
        };
        let ok = mlflow(
            "models:/weather@champion",
            "    mlflow: {trackingUri: 'https://mlflow.example', aliases: {dev: staging}}\n",
        );
        assert!(check(&ok).is_empty(), "{:?}", check(&ok));
        assert!(plan(&ok).iter().any(|l| l.contains("move alias `staging`")), "{:?}", plan(&ok));
        let bad =
            mlflow("s3://b/m/", "    mlflow: {trackingUri: 'http://127.0.0.1:5000', aliases: {prod: champion}}\n");
        let messages: Vec<String> = check(&bad).into_iter().map(|p| p.message).collect();
        assert_eq!(messages.len(), 3, "{messages:?}");
        assert!(messages[0].contains("the model source is not `models:/...`"), "{messages:?}");
        assert!(messages[1].contains("spec.model.mlflow.insecure: true"), "{messages:?}");
        assert!(messages[2].starts_with("spec.model.mlflow.aliases.prod"), "{messages:?}");
        let pinned = mlflow("dvc:models/weather", "    versionId: abc\n");
        assert!(check(&pinned)[0].message.contains("pins an S3 object version"), "{:?}", check(&pinned));
        for bad in ["models:/weather", "dvc:../up"] {
            assert_eq!(check(&mlflow(bad, "")).len(), 1, "{bad}");
        }
    }

    #[test]
    fn sizes_and_flags_parse() {
        assert_eq!(Scalar::Text("8Mi".into()).bytes(), Ok(8 << 20));
        assert_eq!(Scalar::Text("64KiB".into()).bytes(), Ok(64 << 10));
        assert_eq!(Scalar::Text("5MB".into()).bytes(), Ok(5_000_000));
        assert_eq!(Scalar::Number(4096).bytes(), Ok(4096));
        assert!(Scalar::Text("8 parsecs".into()).bytes().is_err());
        assert_eq!(Scalar::Text("true".into()).flag(), Ok(true));
        assert!(Scalar::Number(1).flag().is_err());
    }

    #[test]
    fn secret_keys_in_both_spellings() {
        let mut data = BTreeMap::new();
        data.insert("accessKeyId".to_string(), b"AKIAEXAMPLEKEY".to_vec());
        data.insert("secretAccessKey".to_string(), b"very-secret-value-123\n".to_vec());
        let c = credentials_from_secret(&data).unwrap();
        assert_eq!(c.secret_access_key.expose(), "very-secret-value-123");
        // Registered for masking the moment it is read.
        assert_eq!(crate::secret::mask("x very-secret-value-123 y"), "x **** y");
        data.remove("secretAccessKey");
        let err = credentials_from_secret(&data).unwrap_err();
        assert!(err.ends_with("it has: accessKeyId"), "{err}");
    }

    /// The Secret is read with the real kube client from the state
    /// environment's namespace; a missing Secret is bad input naming it.
    #[tokio::test]
    async fn credentials_secret_is_read_from_the_state_namespace() {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(|axum::extract::Path((ns, name)): axum::extract::Path<(String, String)>| async move {
                if ns == "models-dev" && name == "s3-creds" {
                    let body = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                        "data": {"AWS_ACCESS_KEY_ID": "QUtJQVNFQ1JFVEtFWQ==", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0LWZyb20ta3ViZQ=="}});
                    (axum::http::StatusCode::OK, axum::Json(body))
                } else {
                    let body = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "reason": "NotFound",
                        "message": format!("secrets \"{name}\" not found"), "code": 404});
                    (axum::http::StatusCode::NOT_FOUND, axum::Json(body))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://{addr}'}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
            ),
        )
        .unwrap();
        let p = pipeline("", "{}");
        let clusters = Clusters::new(p.spec.environments.clone(), Some(kubeconfig));
        let c = secret_credentials(&clusters, &p, "s3-creds").await.unwrap();
        assert_eq!(c.access_key_id.expose(), "AKIASECRETKEY");
        assert_eq!(c.secret_access_key.expose(), "secret-from-kube");
        assert_eq!(crate::secret::mask("secret-from-kube"), "****");
        let err = secret_credentials(&clusters, &p, "missing").await.unwrap_err();
        assert_eq!(err.exit_class(), ExitClass::BadInput);
        assert!(
            err.to_string().starts_with("credentialsSecret `missing` in namespace `models-dev` (environment `dev`)"),
            "{err}"
        );
        server.abort();
    }

    #[test]
    fn outputs_have_the_contract_names() {
        let fetched = Fetched {
            model_dir: "/w/fetch/model".into(),
            manifest: vec![storage::ManifestEntry { path: "a".into(), size: 1, sha256: "00".into() }],
            total_bytes: 1,
            content_digest: "sha256:ab".into(),
            fetched_files: 1,
            reused_files: 0,
            bytes_transferred: 1,
            objects: vec![storage::ObjectSource {
                path: "a".into(),
                url: "s3://b/m/a".into(),
                key: "m/a".into(),
                size: 1,
                sha256: "00".into(),
                version_id: Some("v1".into()),
                etag: Some("e".into()),
            }],
        };
        let out = crate::stages::to_outputs(&Output::new("s3://b/m/", &fetched)).unwrap();
        let keys: Vec<&str> = out.keys().map(String::as_str).collect();
        let mut want = FetchModel::OUTPUTS.to_vec();
        want.sort_unstable();
        assert_eq!(keys, want);
        assert_eq!(out["manifest"], json!([{"path": "a", "size": 1, "sha256": "00"}]));
        assert_eq!(out["source"], json!("s3://b/m/"));
        assert_eq!(
            out["objects"],
            json!([{"path": "a", "url": "s3://b/m/a", "key": "m/a", "size": 1, "sha256": "00", "versionId": "v1", "etag": "e"}])
        );
    }
}
