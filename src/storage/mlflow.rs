//! MLflow's model registry over its REST API (reqwest): resolve
//! `models:/NAME@ALIAS` or `models:/NAME/VERSION` to a model version and the
//! URI of its artifacts, list the artifacts the tracking server proxies
//! (`mlflow-artifacts:`), and after a promotion tag the version and move an
//! alias. The endpoints and answers are MLflow's `/api/2.0/mlflow/...`
//! (mlflow/protos/model_registry.proto) and `/api/2.0/mlflow-artifacts/...`
//! (mlflow/server/handlers.py).

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Location, PlannedObject};
use crate::error::{ExitClass, HasExitClass};
use crate::secret::Secret;

/// `models:/NAME@ALIAS` or `models:/NAME/VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUri {
    pub name: String,
    pub selector: Selector,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Version(u64),
    Alias(String),
}

impl ModelUri {
    /// `text` without its `models:/` scheme; `None` when it has another.
    pub fn parse(text: &str) -> Option<Result<ModelUri, String>> {
        let rest = text.strip_prefix("models:/")?;
        Some(Self::parse_rest(rest))
    }

    fn parse_rest(rest: &str) -> Result<ModelUri, String> {
        const FORM: &str = "expected models:/NAME@ALIAS or models:/NAME/VERSION";
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        if let Some((name, alias)) = rest.split_once('@') {
            if name.is_empty() || name.contains('/') {
                return Err(format!("no model name before `@` ({FORM})"));
            }
            if alias.is_empty() || alias.contains(['/', '@']) {
                return Err(format!("`{alias}` is not an alias ({FORM})"));
            }
            return Ok(ModelUri { name: name.into(), selector: Selector::Alias(alias.into()) });
        }
        match rest.split_once('/') {
            Some((name, version)) if !name.is_empty() => match version.parse::<u64>() {
                Ok(v) if v > 0 => Ok(ModelUri { name: name.into(), selector: Selector::Version(v) }),
                _ if version == "latest" || version.chars().any(|c| c.is_ascii_alphabetic()) => Err(format!(
                    "`{version}` is not a version number; MLflow's stages are deprecated: name an alias with models:/{name}@ALIAS"
                )),
                _ => Err(format!("`{version}` is not a version number ({FORM})")),
            },
            _ => Err(format!("no version or alias ({FORM})")),
        }
    }
}

impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::Version(v) => write!(f, "models:/{}/{v}", self.name),
            Selector::Alias(a) => write!(f, "models:/{}@{a}", self.name),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error(
        "no MLflow tracking server for `{uri}`: set spec.model.mlflow.trackingUri or the MLFLOW_TRACKING_URI environment variable"
    )]
    NoTrackingUri { uri: String },
    #[error("MLflow tracking URI `{uri}`: {reason}")]
    BadTrackingUri { uri: String, reason: String },
    #[error("MLflow at {server}: registered model `{name}` has no alias `{alias}` ({message})")]
    NoAlias { server: String, name: String, alias: String, message: String },
    #[error("MLflow at {server}: no version {version} of registered model `{name}` ({message})")]
    NoVersion { server: String, name: String, version: String, message: String },
    #[error("MLflow at {server}: {name} version {version} is {status}, not READY: {message}")]
    NotReady { server: String, name: String, version: String, status: String, message: String },
    #[error(
        "MLflow at {server} refused {credentials} (HTTP {status}) for {op}: check MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD"
    )]
    Unauthorized { server: String, op: String, status: u16, credentials: String },
    #[error("MLflow at {server}: {name} version {version} keeps its artifacts at `{uri}`: {reason}")]
    Artifacts { server: String, name: String, version: String, uri: String, reason: String },
    #[error("MLflow at {server}: {op}: {message}")]
    Request {
        server: String,
        op: String,
        message: String,
        retryable: bool,
        #[source]
        source: Option<reqwest::Error>,
    },
}

impl MlflowError {
    pub fn retryable(&self) -> bool {
        matches!(self, MlflowError::Request { retryable: true, .. })
    }
}

impl HasExitClass for MlflowError {
    fn exit_class(&self) -> ExitClass {
        match self {
            MlflowError::Request { .. } => ExitClass::Failed,
            _ => ExitClass::BadInput,
        }
    }
}

/// How to authenticate to the tracking server, as MLflow's own clients do:
/// `MLFLOW_TRACKING_TOKEN` (a bearer token) or
/// `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD` (basic auth).
#[derive(Clone, Debug, Default)]
pub struct MlflowCredentials {
    pub token: Option<Secret>,
    pub basic: Option<(String, Secret)>,
    /// Where they came from, for a refusal: `Secret ns/name`, `the environment`.
    pub from: String,
}

impl MlflowCredentials {
    pub const TOKEN: &'static str = "MLFLOW_TRACKING_TOKEN";
    pub const USERNAME: &'static str = "MLFLOW_TRACKING_USERNAME";
    pub const PASSWORD: &'static str = "MLFLOW_TRACKING_PASSWORD";

    /// From `get(KEY)` (a Secret's data or the environment); values are
    /// registered for masking.
    pub fn from_lookup(from: &str, get: impl Fn(&str) -> Option<String>) -> MlflowCredentials {
        let token = get(Self::TOKEN).filter(|t| !t.is_empty()).map(Secret::new);
        let basic = match (get(Self::USERNAME), get(Self::PASSWORD)) {
            (Some(u), Some(p)) if !u.is_empty() => Some((u, Secret::new(p))),
            _ => None,
        };
        MlflowCredentials { token, basic, from: from.to_string() }
    }

    pub fn from_env() -> MlflowCredentials {
        Self::from_lookup("the environment", |k| std::env::var(k).ok())
    }

    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.basic.is_none()
    }

    fn describe(&self) -> String {
        match (&self.token, &self.basic) {
            (Some(_), _) => format!("the token from {}", self.from),
            (None, Some((user, _))) => format!("user `{user}` (password from {})", self.from),
            (None, None) => "an unauthenticated request (no MLFLOW_TRACKING_TOKEN or USERNAME/PASSWORD given)".into(),
        }
    }
}

/// A model version as the registry answers it (`ModelVersion`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub run_id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub status_message: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

impl ModelVersion {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }
}

/// What the lineage and the attestation keep of an MLflow model version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MlflowLineage {
    pub tracking_uri: String,
    pub name: String,
    pub version: String,
    /// The alias the source named, if it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(default)]
    pub run_id: String,
    /// Where the artifacts were fetched from (`s3://...` or `mlflow-artifacts:/...`).
    pub artifact_uri: String,
}

/// The tag a promotion leaves on the version: `modelship.io/ENV.digest`.
pub fn digest_tag(env: &str) -> String {
    format!("modelship.io/{env}.digest")
}

/// A tracking server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL without a trailing slash.
    base: String,
    credentials: MlflowCredentials,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("mlflow::Client").field("base", &self.base).finish()
    }
}

/// MLflow's JSON error body.
#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    message: String,
}

/// Plain HTTP only when `insecure` says so (credentials travel with every request).
pub fn check_tracking_uri(uri: &str, insecure: bool) -> Result<url::Url, MlflowError> {
    let bad = |reason: String| MlflowError::BadTrackingUri { uri: uri.to_string(), reason };
    let url = url::Url::parse(uri).map_err(|e| bad(format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if insecure => Ok(url),
        "http" => Err(bad(
            "plain HTTP sends the tracking token unencrypted; set `spec.model.mlflow.insecure: true` to allow it"
                .into(),
        )),
        s @ ("databricks" | "file" | "sqlite" | "postgresql" | "mysql") => {
            Err(bad(format!("`{s}:` is not a tracking server modelship can reach over HTTP(S)")))
        }
        s => Err(bad(format!("scheme `{s}` is neither https nor http"))),
    }
}

impl Client {
    pub fn new(tracking_uri: &str, insecure: bool, credentials: MlflowCredentials) -> Result<Client, MlflowError> {
        let url = check_tracking_uri(tracking_uri, insecure)?;
        if url.scheme() == "http" {
            tracing::warn!(tracking_uri = %crate::secret::mask(tracking_uri), "insecure: plain HTTP to the MLflow tracking server");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("modelship/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| MlflowError::BadTrackingUri { uri: tracking_uri.into(), reason: e.to_string() })?;
        Ok(Client { http, base: tracking_uri.trim_end_matches('/').to_string(), credentials })
    }

    /// The server, for messages (masked).
    pub fn server(&self) -> String {
        crate::secret::mask(&self.base)
    }

    pub fn tracking_uri(&self) -> &str {
        &self.base
    }

    fn authorize(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.credentials.token, &self.credentials.basic) {
            (Some(t), _) => req.bearer_auth(t.expose()),
            (None, Some((u, p))) => req.basic_auth(u, Some(p.expose())),
            (None, None) => req,
        }
    }

    /// One API call with MLflow's error body decoded; transient failures
    /// (connection, 429, 5xx) are retried with the API backoff.
    async fn call(
        &self,
        op: &str,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Result<Value, (StatusCode, ApiError)>, MlflowError> {
        let mut url = url::Url::parse(&format!("{}{path}", self.base))
            .map_err(|e| MlflowError::BadTrackingUri { uri: self.server(), reason: e.to_string() })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let backoff = crate::retry::Backoff::API;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.authorize(self.http.request(method.clone(), url.clone()));
            if let Some(b) = body {
                req = req.json(b);
            }
            let failed = |message: String, retryable: bool, source: Option<reqwest::Error>| MlflowError::Request {
                server: self.server(),
                op: op.to_string(),
                message: crate::secret::mask(&message),
                retryable,
                source,
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) if attempt < backoff.attempts => {
                    tracing::warn!(op, attempt, error = %e, "MLflow request failed; retrying");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    continue;
                }
                Err(e) => return Err(failed(crate::error::chain(&e), true, Some(e))),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(MlflowError::Unauthorized {
                    server: self.server(),
                    op: op.to_string(),
                    status: status.as_u16(),
                    credentials: self.credentials.describe(),
                });
            }
            if (status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) && attempt < backoff.attempts {
                tracing::warn!(op, attempt, status = status.as_u16(), "MLflow answered an error; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
                continue;
            }
            let text = resp.text().await.map_err(|e| failed(format!("reading the answer: {e}"), true, Some(e)))?;
            if status.is_success() {
                let value = if text.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str(&text)
                        .map_err(|e| failed(format!("the answer is not JSON ({e}): {}", snippet(&text)), false, None))?
                };
                return Ok(Ok(value));
            }
            let err: ApiError =
                serde_json::from_str(&text).unwrap_or(ApiError { error_code: String::new(), message: snippet(&text) });
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(failed(format!("HTTP {status}: {}", err.message), true, None));
            }
            return Ok(Err((status, err)));
        }
    }

    fn unexpected(&self, op: &str, status: StatusCode, err: &ApiError) -> MlflowError {
        MlflowError::Request {
            server: self.server(),
            op: op.to_string(),
            message: crate::secret::mask(&format!("HTTP {status} {}: {}", err.error_code, err.message)),
            retryable: false,
            source: None,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, op: &str, v: Value, field: &str) -> Result<T, MlflowError> {
        serde_json::from_value(v.get(field).cloned().unwrap_or(Value::Null)).map_err(|e| MlflowError::Request {
            server: self.server(),
            op: op.to_string(),
            message: format!("unexpected answer: `{field}`: {e}"),
            retryable: false,
            source: None,
        })
    }

    /// The version `uri` names, which must be READY.
    pub async fn resolve(&self, uri: &ModelUri) -> Result<ModelVersion, MlflowError> {
        let mv = match &uri.selector {
            Selector::Alias(alias) => {
                let op = format!("resolve alias `{alias}` of `{}`", uri.name);
                let answer = self
                    .call(
                        &op,
                        reqwest::Method::GET,
                        "/api/2.0/mlflow/registered-models/alias",
                        &[("name", &uri.name), ("alias", alias)],
                        None,
                    )
                    .await?;
                match answer {
                    Ok(v) => self.decode::<ModelVersion>(&op, v, "model_version")?,
                    Err((status, e)) if is_missing(status, &e) => {
                        return Err(MlflowError::NoAlias {
                            server: self.server(),
                            name: uri.name.clone(),
                            alias: alias.clone(),
                            message: e.message,
                        });
                    }
                    Err((status, e)) => return Err(self.unexpected(&op, status, &e)),
                }
            }
            Selector::Version(v) => self.version(&uri.name, &v.to_string()).await?,
        };
        if mv.status != "READY" {
            return Err(MlflowError::NotReady {
                server: self.server(),
                name: mv.name.clone(),
                version: mv.version.clone(),
                status: if mv.status.is_empty() { "in no status".into() } else { mv.status.clone() },
                message: if mv.status_message.is_empty() {
                    "MLflow gave no reason".into()
                } else {
                    mv.status_message.clone()
                },
            });
        }
        Ok(mv)
    }

    /// `model-versions/get`.
    pub async fn version(&self, name: &str, version: &str) -> Result<ModelVersion, MlflowError> {
        let op = format!("get version {version} of `{name}`");
        match self
            .call(
                &op,
                reqwest::Method::GET,
                "/api/2.0/mlflow/model-versions/get",
                &[("name", name), ("version", version)],
                None,
            )
            .await?
        {
            Ok(v) => self.decode(&op, v, "model_version"),
            Err((status, e)) if is_missing(status, &e) => Err(MlflowError::NoVersion {
                server: self.server(),
                name: name.into(),
                version: version.into(),
                message: e.message,
            }),
            Err((status, e)) => Err(self.unexpected(&op, status, &e)),
        }
    }

    /// `model-versions/get-download-uri`: where the version's artifacts are.
    pub async fn download_uri(&self, mv: &ModelVersion) -> Result<String, MlflowError> {
        let op = format!("get the download URI of `{}` version {}", mv.name, mv.version);
        match self
            .call(
                &op,
                reqwest::Method::GET,
                "/api/2.0/mlflow/model-versions/get-download-uri",
                &[("name", &mv.name), ("version", &mv.version)],
                None,
            )
            .await?
        {
            Ok(v) => self.decode(&op, v, "artifact_uri"),
            Err((status, e)) => Err(self.unexpected(&op, status, &e)),
        }
    }

    /// Every file under `path` of the artifact proxy (`mlflow-artifacts:/PATH`),
    /// recursively, as objects to fetch from the proxy.
    pub async fn list_proxied(
        &self,
        mv: &ModelVersion,
        uri: &str,
        path: &str,
    ) -> Result<Vec<PlannedObject>, MlflowError> {
        #[derive(Deserialize)]
        struct Listing {
            #[serde(default)]
            files: Vec<FileInfo>,
        }
        #[derive(Deserialize)]
        struct FileInfo {
            path: String,
            #[serde(default)]
            is_dir: bool,
            #[serde(default)]
            file_size: Option<u64>,
        }
        let root = path.trim_matches('/').to_string();
        let mut out = Vec::new();
        let mut dirs = vec![String::new()];
        while let Some(rel_dir) = dirs.pop() {
            let dir = if rel_dir.is_empty() { root.clone() } else { format!("{root}/{rel_dir}") };
            let op = format!("list artifacts under `{dir}`");
            let listing: Listing = match self
                .call(&op, reqwest::Method::GET, "/api/2.0/mlflow-artifacts/artifacts", &[("path", &dir)], None)
                .await?
            {
                Ok(v) => serde_json::from_value(v).map_err(|e| {
                    self.unexpected(
                        &op,
                        StatusCode::OK,
                        &ApiError { error_code: String::new(), message: e.to_string() },
                    )
                })?,
                Err((status, e)) if is_missing(status, &e) => Listing { files: Vec::new() },
                Err((status, e)) => {
                    return Err(MlflowError::Artifacts {
                        server: self.server(),
                        name: mv.name.clone(),
                        version: mv.version.clone(),
                        uri: uri.to_string(),
                        reason: format!(
                            "the tracking server does not proxy them (HTTP {status}: {}); start it with --serve-artifacts",
                            e.message
                        ),
                    });
                }
            };
            for f in listing.files {
                // The server names entries relative to the listed directory
                // (older servers: relative to the root).
                let name = f.path.rsplit('/').next().unwrap_or(&f.path).to_string();
                let rel = if rel_dir.is_empty() { name } else { format!("{rel_dir}/{name}") };
                if f.is_dir {
                    dirs.push(rel);
                } else {
                    let url = format!(
                        "{}/api/2.0/mlflow-artifacts/artifacts/{}",
                        self.base,
                        encode_path(&format!("{root}/{rel}"))
                    );
                    out.push(PlannedObject { rel, size: f.file_size, location: Location::Http { url }, md5: None });
                }
            }
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    /// Authorization for downloads from the artifact proxy.
    pub fn http(&self) -> (reqwest::Client, Option<reqwest::header::HeaderValue>) {
        let header = match (&self.credentials.token, &self.credentials.basic) {
            (Some(t), _) => reqwest::header::HeaderValue::from_str(&format!("Bearer {}", t.expose())).ok(),
            (None, Some((u, p))) => {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", p.expose()));
                reqwest::header::HeaderValue::from_str(&format!("Basic {b}")).ok()
            }
            (None, None) => None,
        }
        .map(|mut h| {
            h.set_sensitive(true);
            h
        });
        (self.http.clone(), header)
    }

    /// Tag `name` version `version` with `key = value` (`model-versions/set-tag`;
    /// setting a tag again is a no-op).
    pub async fn set_tag(&self, name: &str, version: &str, key: &str, value: &str) -> Result<(), MlflowError> {
        let op = format!("tag `{name}` version {version} with {key}");
        let body = json!({ "name": name, "version": version, "key": key, "value": value });
        self.post_on_version(&op, "/api/2.0/mlflow/model-versions/set-tag", &body, name, version).await
    }

    /// Point `alias` of `name` at `version` (`registered-models/alias`; idempotent).
    pub async fn set_alias(&self, name: &str, alias: &str, version: &str) -> Result<(), MlflowError> {
        let op = format!("move alias `{alias}` of `{name}` to version {version}");
        let body = json!({ "name": name, "alias": alias, "version": version });
        self.post_on_version(&op, "/api/2.0/mlflow/registered-models/alias", &body, name, version).await
    }

    /// A POST about one model version; a version MLflow does not have is named.
    async fn post_on_version(
        &self,
        op: &str,
        path: &str,
        body: &Value,
        name: &str,
        version: &str,
    ) -> Result<(), MlflowError> {
        match self.call(op, reqwest::Method::POST, path, &[], Some(body)).await? {
            Ok(_) => Ok(()),
            Err((status, e)) if is_missing(status, &e) => Err(MlflowError::NoVersion {
                server: self.server(),
                name: name.into(),
                version: version.into(),
                message: e.message,
            }),
            Err((status, e)) => Err(self.unexpected(op, status, &e)),
        }
    }

    /// After `digest` reached `env`: tag the version `modelship.io/ENV.digest`
    /// and, when the pipeline names an alias for `env`, move it there.
    pub async fn record_promotion(
        &self,
        name: &str,
        version: &str,
        env: &str,
        digest: &str,
        alias: Option<&str>,
    ) -> Result<(), MlflowError> {
        self.set_tag(name, version, &digest_tag(env), digest).await?;
        if let Some(alias) = alias {
            self.set_alias(name, alias, version).await?;
        }
        tracing::info!(
            model = name,
            version,
            environment = env,
            digest,
            alias = alias.unwrap_or(""),
            "MLflow registry updated"
        );
        Ok(())
    }
}

/// MLflow answers a missing alias with 400 INVALID_PARAMETER_VALUE and a
/// missing version with 404 RESOURCE_DOES_NOT_EXIST.
fn is_missing(status: StatusCode, e: &ApiError) -> bool {
    status == StatusCode::NOT_FOUND
        || e.error_code == "RESOURCE_DOES_NOT_EXIST"
        || (e.error_code == "INVALID_PARAMETER_VALUE" && e.message.contains("not found"))
}

fn snippet(text: &str) -> String {
    let t: String = text.chars().take(200).collect();
    t.trim().to_string()
}

/// Percent-encode each segment of a path, keeping the slashes.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20"))
        .collect::<Vec<_>>()
        .join("/")
}

/// Where a download URI points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactStore {
    /// `s3://BUCKET/PREFIX`
    S3 { bucket: String, prefix: String },
    /// `mlflow-artifacts:/PATH` (or `mlflow-artifacts://HOST/PATH`): through the tracking server.
    Proxy { path: String },
}

impl ArtifactStore {
    pub fn parse(uri: &str) -> Result<ArtifactStore, String> {
        if let Some(rest) = uri.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("names no bucket".into());
            }
            return Ok(ArtifactStore::S3 { bucket: bucket.into(), prefix: prefix.trim_end_matches('/').into() });
        }
        if let Some(rest) = uri.strip_prefix("mlflow-artifacts:") {
            // `mlflow-artifacts://host:port/path` names another server; the
            // path is what the proxy serves.
            let path = match rest.strip_prefix("//") {
                Some(hosted) => hosted.split_once('/').map_or("", |(_, p)| p),
                None => rest,
            };
            return Ok(ArtifactStore::Proxy { path: path.trim_matches('/').into() });
        }
        let scheme = uri.split_once(':').map_or(uri, |(s, _)| s);
        Err(format!(
            "a `{scheme}:` store, which modelship does not read (it reads s3:// and the tracking server's mlflow-artifacts: proxy)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_uris_parse() {
        let p = |t: &str| ModelUri::parse(t).unwrap();
        assert_eq!(
            p("models:/weather@champion").unwrap(),
            ModelUri { name: "weather".into(), selector: Selector::Alias("champion".into()) }
        );
        assert_eq!(
            p("models:/weather/3").unwrap(),
            ModelUri { name: "weather".into(), selector: Selector::Version(3) }
        );
        assert_eq!(p("models:/weather/3").unwrap().to_string(), "models:/weather/3");
        assert!(ModelUri::parse("s3://b/k").is_none());
        for bad in ["models:/", "models:/weather", "models:/@a", "models:/w@", "models:/w/0", "models:/w/x/y"] {
            assert!(p(bad).is_err(), "{bad}");
        }
        assert!(p("models:/w/Production").unwrap_err().contains("stages are deprecated"));
    }

    #[test]
    fn tracking_uris_need_tls_unless_insecure() {
        assert!(check_tracking_uri("https://mlflow.example", false).is_ok());
        assert!(check_tracking_uri("http://127.0.0.1:5000", true).is_ok());
        let err = check_tracking_uri("http://127.0.0.1:5000", false).unwrap_err().to_string();
        assert!(err.contains("spec.model.mlflow.insecure: true"), "{err}");
        assert!(check_tracking_uri("databricks", true).is_err());
        assert!(check_tracking_uri("file:///tmp/mlruns", true).unwrap_err().to_string().contains("`file:`"));
    }

    #[test]
    fn artifact_stores_parse() {
        assert_eq!(
            ArtifactStore::parse("s3://mlflow/1/abc/artifacts/model").unwrap(),
            ArtifactStore::S3 { bucket: "mlflow".into(), prefix: "1/abc/artifacts/model".into() }
        );
        assert_eq!(
            ArtifactStore::parse("mlflow-artifacts:/0/abc/artifacts/model").unwrap(),
            ArtifactStore::Proxy { path: "0/abc/artifacts/model".into() }
        );
        assert_eq!(
            ArtifactStore::parse("mlflow-artifacts://host:5000/0/abc").unwrap(),
            ArtifactStore::Proxy { path: "0/abc".into() }
        );
        assert!(ArtifactStore::parse("gs://b/p").unwrap_err().contains("`gs:` store"));
        assert_eq!(encode_path("0/a b/c#d"), "0/a%20b/c%23d");
    }

    #[test]
    fn credentials_never_print() {
        let c = MlflowCredentials::from_lookup("Secret ns/mlflow", |k| {
            (k == MlflowCredentials::TOKEN).then(|| "tok-very-secret-1".to_string())
        });
        assert_eq!(c.describe(), "the token from Secret ns/mlflow");
        assert_eq!(format!("{c:?}").matches("tok-very-secret-1").count(), 0);
        assert_eq!(crate::secret::mask("x tok-very-secret-1"), "x ****");
    }
}
