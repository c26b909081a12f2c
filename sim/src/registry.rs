//! The sim's internal registry: the OCI distribution API under `/v2/` (blob
//! HEAD/GET with Range, uploads — POST, chunked PATCH, PUT with digest
//! check, monolithic POST — cross-repository mount, manifest GET/HEAD/PUT by
//! tag and digest, tags list), blobs stored by digest in the data dir.
//!
//! On disk, under [`RegistryStore::root`]:
//! - `blobs/sha256/<hex>`: content (blobs and manifests), written once by rename;
//! - `uploads/<id>`: upload sessions in progress;
//! - `repositories/<name>/_layers/sha256/<hex>`: blob linked into a repository;
//! - `repositories/<name>/_manifests/revisions/sha256/<hex>`: manifest in a
//!   repository (file holds its media type);
//! - `repositories/<name>/_manifests/tags/<tag>`: tag -> digest.
//!
//! Bodies are streamed to and from files; only manifests (at most 4 MiB) are
//! held in memory.
//!
//! [`router`] is the bare protocol. Inside the sim it is served behind
//! [`authorized_router`], the access controller of OpenShift's integrated
//! registry (openshift/image-registry `pkg/dockerregistry/server/auth.go`,
//! `token.go`): credentials are an API token only (`Bearer TOKEN`, or Basic
//! with any user name and the token as password; client certificates are
//! not looked at); no `Authorization` header is answered 401 with a
//! `Bearer realm=".../openshift/token"` challenge, whose endpoint hands
//! back the token it was given (or `anonymous`); a pull needs `get` and a
//! push `get` and `update` on `imagestreams/layers` of the repository
//! `NAMESPACE/NAME` (exactly two parts), decided by the sim's RBAC; a push
//! that creates an image stream needs `create imagestreams` (the registry
//! creates it with the user's client). A refusal is 401 with a Basic
//! challenge, as the real registry answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::reference::{validate_digest, validate_repository};

const MAX_MANIFEST: usize = 4 << 20;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Content-addressed storage shared by the registry routes and the build
/// controller (which pushes the images it builds).
///
/// Stateless apart from the files under `root`: an upload session survives a
/// restart of the sim, and two stores on one root see the same content.
#[derive(Debug, Clone)]
pub struct RegistryStore {
    pub root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("registry store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("repository `{name}` is not valid: {reason}")]
    BadName { name: String, reason: String },
    #[error("`{reference}` is neither a tag nor a sha256 digest")]
    BadReference { reference: String },
    #[error("content has digest {actual}, not {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("manifest for {name} is not valid: {reason}")]
    BadManifest { name: String, reason: String },
    #[error("manifest for {name} references {digest}, which is not in the repository")]
    MissingReference { name: String, digest: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn is_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl RegistryStore {
    pub fn new(root: impl Into<PathBuf>) -> RegistryStore {
        RegistryStore { root: root.into() }
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }
    fn upload_path(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }
    fn repo_dir(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }
    fn layer_link(&self, name: &str, digest: &str) -> PathBuf {
        self.repo_dir(name).join("_layers/sha256").join(hex_of(digest))
    }
    fn revision(&self, name: &str, digest: &str) -> PathBuf {
        self.repo_dir(name).join("_manifests/revisions/sha256").join(hex_of(digest))
    }
    fn tag_path(&self, name: &str, tag: &str) -> PathBuf {
        self.repo_dir(name).join("_manifests/tags").join(tag)
    }

    /// Whether `digest` is a blob of repository `name`.
    pub async fn has_blob(&self, name: &str, digest: &str) -> bool {
        tokio::fs::try_exists(self.layer_link(name, digest)).await.unwrap_or(false)
            && tokio::fs::try_exists(self.blob_path(digest)).await.unwrap_or(false)
    }

    async fn link_blob(&self, name: &str, digest: &str) -> Result<(), StoreError> {
        write_atomic(&self.layer_link(name, digest), b"").await
    }

    /// Move a fully written, verified temp file into the store as `digest`
    /// and link it into `name`.
    async fn commit_blob(&self, name: &str, tmp: &Path, digest: &str) -> Result<(), StoreError> {
        let dest = self.blob_path(digest);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            let _ = tokio::fs::remove_file(tmp).await;
        } else {
            let parent = dest.parent().expect("blob path has a parent");
            tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
            tokio::fs::rename(tmp, &dest).await.map_err(io(&dest))?;
        }
        self.link_blob(name, digest).await
    }

    fn new_upload_id() -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let h = Sha256::digest(format!("{nanos}-{n}-{}", std::process::id()));
        hex::encode(&h[..16])
    }

    /// Copy a local file into repository `name` as a blob (streamed, hashed
    /// on the way). Returns its digest and size. For the build controller.
    pub async fn put_blob_from_file(&self, name: &str, path: &Path) -> Result<(String, u64), StoreError> {
        check_name(name)?;
        let mut src = tokio::fs::File::open(path).await.map_err(io(path))?;
        let tmp = self.upload_path(&Self::new_upload_id());
        let mut out = create_file(&tmp).await?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = src.read(&mut buf).await.map_err(io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).await.map_err(io(&tmp))?;
            size += n as u64;
        }
        out.flush().await.map_err(io(&tmp))?;
        drop(out);
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        self.commit_blob(name, &tmp, &digest).await?;
        Ok((digest, size))
    }

    /// Store small content (an image config) as a blob of `name`.
    pub async fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<String, StoreError> {
        check_name(name)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let tmp = self.upload_path(&Self::new_upload_id());
        write_atomic(&tmp, bytes).await?;
        self.commit_blob(name, &tmp, &digest).await?;
        Ok(digest)
    }

    /// Store a manifest under `reference` (a tag, or its own digest) after
    /// checking that everything it references is in the repository. Returns
    /// its digest. Used by the routes and by the build controller.
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, StoreError> {
        check_name(name)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let tag = if reference.starts_with("sha256:") {
            if reference != digest {
                return Err(StoreError::DigestMismatch { expected: reference.to_string(), actual: digest });
            }
            None
        } else if is_tag(reference) {
            Some(reference)
        } else {
            return Err(StoreError::BadReference { reference: reference.to_string() });
        };
        let json: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| StoreError::BadManifest { name: name.to_string(), reason: e.to_string() })?;
        let list = |key: &str| -> Vec<String> {
            json.get(key)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|d| d.get("digest")?.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        if json.get("manifests").is_some() {
            for d in list("manifests") {
                if !tokio::fs::try_exists(self.revision(name, &d)).await.unwrap_or(false) {
                    return Err(StoreError::MissingReference { name: name.to_string(), digest: d });
                }
            }
        } else {
            let config = json.get("config").and_then(|c| c.get("digest")).and_then(|d| d.as_str());
            let Some(config) = config else {
                return Err(StoreError::BadManifest { name: name.to_string(), reason: "no config descriptor".into() });
            };
            for d in std::iter::once(config.to_string()).chain(list("layers")) {
                if !self.has_blob(name, &d).await {
                    return Err(StoreError::MissingReference { name: name.to_string(), digest: d });
                }
            }
        }
        let blob = self.blob_path(&digest);
        if !tokio::fs::try_exists(&blob).await.unwrap_or(false) {
            write_atomic(&blob, bytes).await?;
        }
        write_atomic(&self.revision(name, &digest), media_type.as_bytes()).await?;
        if let Some(tag) = tag {
            write_atomic(&self.tag_path(name, tag), digest.as_bytes()).await?;
        }
        Ok(digest)
    }

    /// The digest a tag or digest reference names in `name`, if present.
    pub async fn resolve_manifest(&self, name: &str, reference: &str) -> Option<String> {
        let digest = if reference.starts_with("sha256:") {
            validate_digest(reference).ok()?;
            reference.to_string()
        } else if is_tag(reference) {
            tokio::fs::read_to_string(self.tag_path(name, reference)).await.ok()?.trim().to_string()
        } else {
            return None;
        };
        tokio::fs::try_exists(self.revision(name, &digest)).await.ok()?.then_some(digest)
    }

    /// Manifest bytes and media type.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> Option<(String, String, Vec<u8>)> {
        let digest = self.resolve_manifest(name, reference).await?;
        let media_type = tokio::fs::read_to_string(self.revision(name, &digest)).await.ok()?;
        let bytes = tokio::fs::read(self.blob_path(&digest)).await.ok()?;
        Some((digest, media_type, bytes))
    }

    /// Open a blob of repository `name` for streaming (controllers unpack
    /// image layers in-process with it).
    pub async fn open_blob(&self, name: &str, digest: &str) -> Result<tokio::fs::File, StoreError> {
        validate_digest(digest).map_err(|_| StoreError::BadReference { reference: digest.to_string() })?;
        if !self.has_blob(name, digest).await {
            return Err(StoreError::MissingReference { name: name.to_string(), digest: digest.to_string() });
        }
        let path = self.blob_path(digest);
        tokio::fs::File::open(&path).await.map_err(io(&path))
    }

    /// Tags of a repository, sorted.
    pub async fn tags(&self, name: &str) -> Option<Vec<String>> {
        let dir = self.repo_dir(name).join("_manifests/tags");
        let mut rd = tokio::fs::read_dir(&dir).await.ok()?;
        let mut tags = Vec::new();
        while let Ok(Some(e)) = rd.next_entry().await {
            if let Some(n) = e.file_name().to_str()
                && is_tag(n)
            {
                tags.push(n.to_string());
            }
        }
        tags.sort();
        Some(tags)
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    validate_repository(name).map_err(|reason| StoreError::BadName { name: name.to_string(), reason })
}

async fn create_file(path: &Path) -> Result<tokio::fs::File, StoreError> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
    }
    tokio::fs::File::create(path).await.map_err(io(path))
}

/// Write a small file by temp + rename so readers never see half of it.
async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    // A dot-name is never a tag or a digest, so listings skip it.
    let tmp = path.with_file_name(format!(".tmp-{}", RegistryStore::new_upload_id()));
    let mut f = create_file(&tmp).await?;
    f.write_all(bytes).await.map_err(io(&tmp))?;
    f.flush().await.map_err(io(&tmp))?;
    drop(f);
    tokio::fs::rename(&tmp, path).await.map_err(io(path))
}

// ---------------------------------------------------------- access control

use super::SimApi;
use super::audit::{AuditSlot, ObjectRef};
use super::authn::{User, token_user};
use super::rbac::{Attributes, authorize};

/// The token endpoint's path (the realm of the Bearer challenge).
pub const TOKEN_PATH: &str = "/openshift/token";
/// The token the endpoint hands to a request without credentials.
const ANONYMOUS_TOKEN: &str = "anonymous";

/// [`router`] behind the integrated registry's access controller, and the
/// token endpoint.
pub fn authorized_router(api: SimApi, store: RegistryStore) -> Router {
    router(store)
        // Inside the access controller, as the API's faults are inside authentication.
        .layer(axum::middleware::from_fn_with_state(api.clone(), super::faults::registry_layer))
        .layer(axum::middleware::from_fn_with_state(api.clone(), access))
        .merge(Router::new().route(TOKEN_PATH, get(token_endpoint)).with_state(api))
}

enum Credential {
    /// No `Authorization` header (or an unknown scheme).
    Missing,
    /// Basic without a password.
    Invalid,
    /// The API token; empty for `Bearer anonymous`.
    Token(String),
}

fn credential(headers: &HeaderMap) -> Credential {
    use base64::Engine;
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Credential::Missing;
    };
    let Some((scheme, rest)) = value.split_once(' ') else { return Credential::Missing };
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" if rest.trim() == ANONYMOUS_TOKEN => Credential::Token(String::new()),
        "bearer" => Credential::Token(rest.trim().to_string()),
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok();
            let text = decoded.and_then(|d| String::from_utf8(d).ok());
            match text.as_deref().and_then(|t| t.split_once(':')) {
                Some((_, password)) if !password.is_empty() => Credential::Token(password.to_string()),
                _ => Credential::Invalid,
            }
        }
        _ => Credential::Missing,
    }
}

fn host_of(headers: &HeaderMap) -> String {
    headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1").to_string()
}

/// 401 `UNAUTHORIZED` with the challenge the real registry sends: Bearer at
/// the token endpoint when no credentials came, Basic when they were bad or
/// not enough.
fn challenge(headers: &HeaderMap, bearer: bool, detail: serde_json::Value) -> Response {
    let body = serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": detail}]});
    let value = if bearer {
        format!("Bearer realm=\"https://{}{TOKEN_PATH}\"", host_of(headers))
    } else {
        "Basic realm=openshift".to_string()
    };
    let mut resp =
        (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json"), api_header()], body.to_string())
            .into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&value).expect("ASCII challenge"));
    resp
}

fn layers(verb: &str, namespace: &str, name: &str) -> Attributes {
    Attributes {
        verb: verb.into(),
        resource_request: true,
        group: super::image::GROUP.into(),
        resource: "imagestreams".into(),
        subresource: "layers".into(),
        name: name.into(),
        namespace: namespace.into(),
        path: String::new(),
    }
}

/// The access controller in front of `/v2/`.
async fn access(State(api): State<SimApi>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let slot = req.extensions().get::<AuditSlot>().cloned();
    let headers = req.headers().clone();
    let token = match credential(&headers) {
        Credential::Missing => return challenge(&headers, true, serde_json::Value::Null),
        Credential::Invalid => return challenge(&headers, false, serde_json::Value::Null),
        Credential::Token(t) => t,
    };
    let user = if token.is_empty() {
        User::anonymous()
    } else {
        match token_user(&api, &token) {
            Some(u) => u,
            None => return challenge(&headers, false, serde_json::Value::Null),
        }
    };
    user.audit(slot.as_ref());
    let path = req.uri().path().trim_start_matches("/v2").trim_start_matches('/').to_string();
    if path.is_empty() {
        return next.run(req).await;
    }
    let Some(r) = route(&path) else { return next.run(req).await };
    let name = match &r {
        Route::Tags(n) | Route::Manifest(n, _) | Route::Upload(n, _) | Route::Blob(n, _) => n.to_string(),
    };
    let Some((ns, stream)) = name.split_once('/').filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name: {name}: it must be of the format <project>/<name>"),
        );
    };
    let method = req.method().clone();
    let push = matches!(method, Method::POST | Method::PUT | Method::PATCH);
    let verb = if method == Method::DELETE {
        "delete"
    } else if push {
        "update"
    } else {
        "get"
    };
    if let Some(slot) = &slot {
        slot.fill(|f| {
            f.verb = Some(verb.into());
            f.object = Some(ObjectRef {
                resource: "imagestreams".into(),
                subresource: Some("layers".into()),
                namespace: Some(ns.to_string()),
                name: Some(stream.to_string()),
                api_group: super::image::GROUP.into(),
                api_version: "v1".into(),
            });
        });
    }
    let subject = user.subject();
    let allowed = |verb: &str| authorize(&api.store, &subject, &layers(verb, ns, stream)).allowed();
    let denied = |action: &str| {
        challenge(&headers, false, serde_json::json!([{"Type": "repository", "Name": name, "Action": action}]))
    };
    // distribution asks pull for every request, push for writes, `*` for deletes.
    if !allowed("get") {
        return denied("pull");
    }
    if push && !allowed("update") {
        return denied("push");
    }
    if method == Method::DELETE {
        let prune = Attributes {
            verb: "delete".into(),
            resource_request: true,
            group: super::image::GROUP.into(),
            resource: "images".into(),
            ..Attributes::default()
        };
        if !authorize(&api.store, &subject, &prune).allowed() {
            return denied("*");
        }
    }
    let mut req = req;
    // A cross-repository mount from a repository the user cannot pull is
    // not an error: the mount is skipped and an ordinary upload starts.
    if let (Route::Upload(_, ""), Some(query)) = (&r, req.uri().query()) {
        let pairs: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        if let Some(from) = pairs.get("from")
            && let Some((fns, fname)) = from.split_once('/')
            && !authorize(&api.store, &subject, &layers("get", fns, fname)).allowed()
        {
            let kept: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs.iter().filter(|(k, _)| k.as_str() != "mount" && k.as_str() != "from"))
                .finish();
            let pq =
                if kept.is_empty() { req.uri().path().to_string() } else { format!("{}?{kept}", req.uri().path()) };
            if let Ok(uri) = pq.parse() {
                *req.uri_mut() = uri;
            }
        }
    }
    // A manifest pushed to an image stream that does not exist creates it,
    // with the user's own rights.
    let creates_stream = matches!(r, Route::Manifest(..))
        && method == Method::PUT
        && api.store.get(&super::image::IMAGESTREAMS, ns, stream).is_none();
    if creates_stream {
        let create = Attributes {
            verb: "create".into(),
            resource_request: true,
            group: super::image::GROUP.into(),
            resource: "imagestreams".into(),
            namespace: ns.to_string(),
            ..Attributes::default()
        };
        // No project, or no right to create the stream in it: denied.
        if !api.store.namespace_exists(ns) || !authorize(&api.store, &subject, &create).allowed() {
            return error(StatusCode::FORBIDDEN, "DENIED", "requested access to the resource is denied");
        }
    }
    let resp = next.run(req).await;
    if creates_stream && resp.status() == StatusCode::CREATED {
        let obj = serde_json::json!({ "metadata": { "name": stream } });
        match api.store.create(&super::image::IMAGESTREAMS, ns, obj, false) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => {
                tracing::warn!(namespace = ns, stream, error = %e, "sim registry: cannot create the image stream")
            }
        }
    }
    resp
}

/// `GET /openshift/token`: the docker token protocol as the integrated
/// registry serves it — the API token given as Basic password comes back
/// as the bearer token once it authenticates; no credentials get `anonymous`.
async fn token_endpoint(State(api): State<SimApi>, req: axum::extract::Request) -> Response {
    let headers = req.headers();
    let token = match credential(headers) {
        Credential::Missing if headers.get(header::AUTHORIZATION).is_none() => ANONYMOUS_TOKEN.to_string(),
        Credential::Token(t) if !t.is_empty() => match token_user(&api, &t) {
            Some(user) => {
                user.audit(req.extensions().get::<AuditSlot>());
                t
            }
            None => return (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")]).into_response(),
        },
        _ => return (StatusCode::UNAUTHORIZED, [(header::CONTENT_TYPE, "application/json")]).into_response(),
    };
    let body = serde_json::json!({ "token": token, "access_token": token });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

// ---------------------------------------------------------------- HTTP side

/// The `/v2/` routes, to be nested by the sim server.
pub fn router(store: RegistryStore) -> Router {
    Router::new()
        .route("/v2", get(version).head(version))
        .route("/v2/", get(version).head(version))
        .route("/v2/{*path}", any(dispatch))
        .with_state(store)
}

async fn version() -> Response {
    ([(header::CONTENT_TYPE, "application/json"), api_header()], "{}").into_response()
}

fn api_header() -> (header::HeaderName, &'static str) {
    (header::HeaderName::from_static("docker-distribution-api-version"), "registry/2.0")
}

/// A distribution error body: `{"errors":[{"code","message","detail"}]}`.
fn error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message.to_string(), "detail": null}]});
    (status, [(header::CONTENT_TYPE, "application/json"), api_header()], body.to_string()).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Io { .. } => {
            tracing::error!(error = %e, "sim registry storage error");
            error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e)
        }
        StoreError::BadName { .. } => error(StatusCode::BAD_REQUEST, "NAME_INVALID", e),
        StoreError::BadReference { .. } => error(StatusCode::BAD_REQUEST, "TAG_INVALID", e),
        StoreError::DigestMismatch { .. } => error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e),
        StoreError::BadManifest { .. } => error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e),
        StoreError::MissingReference { .. } => error(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", e),
    }
}

pub(super) enum Route<'a> {
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    Upload(&'a str, &'a str),
    Blob(&'a str, &'a str),
}

pub(super) fn route(path: &str) -> Option<Route<'_>> {
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags(name));
    }
    if let Some((name, r)) = path.rsplit_once("/manifests/") {
        return Some(Route::Manifest(name, r));
    }
    if let Some(name) = path.strip_suffix("/blobs/uploads").or_else(|| path.strip_suffix("/blobs/uploads/")) {
        return Some(Route::Upload(name, ""));
    }
    if let Some((name, id)) = path.rsplit_once("/blobs/uploads/") {
        return Some(Route::Upload(name, id));
    }
    if let Some((name, d)) = path.rsplit_once("/blobs/") {
        return Some(Route::Blob(name, d));
    }
    None
}

async fn dispatch(
    State(store): State<RegistryStore>,
    method: Method,
    UrlPath(path): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(r) = route(&path) else {
        return error(StatusCode::NOT_FOUND, "UNSUPPORTED", format!("no such API: /v2/{path}"));
    };
    let name = match &r {
        Route::Tags(n) | Route::Manifest(n, _) | Route::Upload(n, _) | Route::Blob(n, _) => *n,
    };
    if let Err(reason) = validate_repository(name) {
        return error(StatusCode::BAD_REQUEST, "NAME_INVALID", reason);
    }
    let mut resp = match (r, method) {
        (Route::Tags(name), Method::GET) => tags(&store, name, &query).await,
        (Route::Manifest(name, r), m) if m == Method::GET || m == Method::HEAD => {
            get_manifest(&store, name, r, m == Method::HEAD).await
        }
        (Route::Manifest(name, r), Method::PUT) => put_manifest(&store, name, r, &headers, body).await,
        (Route::Blob(name, d), m) if m == Method::GET || m == Method::HEAD => {
            get_blob(&store, name, d, &headers, m == Method::HEAD).await
        }
        (Route::Upload(name, ""), Method::POST) => start_upload(&store, name, &query, body).await,
        (Route::Upload(name, id), Method::PATCH) => patch_upload(&store, name, id, body).await,
        (Route::Upload(name, id), Method::PUT) => finish_upload(&store, name, id, &query, body).await,
        (Route::Upload(name, id), Method::GET) => upload_status(&store, name, id).await,
        (Route::Upload(_, id), Method::DELETE) => cancel_upload(&store, id).await,
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "method not supported here"),
    };
    let (k, v) = api_header();
    resp.headers_mut().insert(k, HeaderValue::from_static(v));
    resp
}

async fn tags(store: &RegistryStore, name: &str, query: &HashMap<String, String>) -> Response {
    let Some(mut tags) = store.tags(name).await else {
        return error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", format!("repository {name} not known"));
    };
    if let Some(last) = query.get("last") {
        tags.retain(|t| t > last);
    }
    if let Some(n) = query.get("n").and_then(|n| n.parse::<usize>().ok()) {
        tags.truncate(n);
    }
    let body = serde_json::json!({"name": name, "tags": tags});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn get_manifest(store: &RegistryStore, name: &str, reference: &str, head: bool) -> Response {
    let Some((digest, media_type, bytes)) = store.get_manifest(name, reference).await else {
        return error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("manifest unknown: {name}:{reference}"));
    };
    let mut resp = Response::new(if head { Body::empty() } else { Body::from(bytes.clone()) });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&media_type).unwrap_or(HeaderValue::from_static(OCI_MANIFEST)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    h.insert("Docker-Content-Digest", HeaderValue::from_str(&digest).expect("digest is ASCII"));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{digest}\"")).expect("digest is ASCII"));
    resp
}

async fn put_manifest(store: &RegistryStore, name: &str, reference: &str, headers: &HeaderMap, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_MANIFEST).await {
        Ok(b) => b,
        Err(e) => return error(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", format!("manifest body: {e}")),
    };
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty() && s != "application/json")
        .or_else(|| {
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            v.get("mediaType")?.as_str().map(str::to_string)
        })
        .unwrap_or_else(|| {
            if bytes.windows(11).any(|w| w == b"\"manifests\"") { OCI_INDEX.into() } else { OCI_MANIFEST.into() }
        });
    match store.put_manifest(name, reference, &media_type, &bytes).await {
        Ok(digest) => created(&format!("/v2/{name}/manifests/{digest}"), &digest),
        Err(e) => store_error(e),
    }
}

fn created(location: &str, digest: &str) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_str(location).expect("ASCII location"));
    h.insert("Docker-Content-Digest", HeaderValue::from_str(digest).expect("digest is ASCII"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// `bytes=START-END` / `bytes=START-` into an inclusive range within `len`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 =
        if b.trim().is_empty() { len.checked_sub(1)? } else { b.trim().parse::<u64>().ok()?.min(len.checked_sub(1)?) };
    (start <= end && start < len).then_some((start, end))
}

async fn get_blob(store: &RegistryStore, name: &str, digest: &str, headers: &HeaderMap, head: bool) -> Response {
    if let Err(e) = validate_digest(digest) {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e);
    }
    if !store.has_blob(name, digest).await {
        return error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", format!("blob unknown to registry: {digest}"));
    }
    let path = store.blob_path(digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return store_error(StoreError::Io { path, source: e }),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return store_error(StoreError::Io { path, source: e }),
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(r) => match parse_range(r, len) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => {
                let mut resp =
                    error(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN", format!("range {r} not satisfiable"));
                resp.headers_mut()
                    .insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{len}")).expect("ASCII"));
                return resp;
            }
        },
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let body = if head || count == 0 {
        Body::empty()
    } else {
        if start > 0
            && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await
        {
            return store_error(StoreError::Io { path, source: e });
        }
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file.take(count), 256 * 1024))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("Docker-Content-Digest", HeaderValue::from_str(digest).expect("digest is ASCII"));
    h.insert(header::ETAG, HeaderValue::from_str(&format!("\"{digest}\"")).expect("digest is ASCII"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ASCII"));
    }
    resp
}

/// Append a request body to an upload file, feeding `hasher` when given.
/// Returns the new size.
async fn append(path: &Path, body: Body, mut hasher: Option<&mut Sha256>) -> Result<u64, Response> {
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(|_| error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown"))?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| error(StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID", format!("reading the body: {e}")))?;
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| store_error(StoreError::Io { path: path.to_path_buf(), source: e }))?;
    }
    file.flush().await.map_err(|e| store_error(StoreError::Io { path: path.to_path_buf(), source: e }))?;
    let len =
        file.metadata().await.map_err(|e| store_error(StoreError::Io { path: path.to_path_buf(), source: e }))?.len();
    Ok(len)
}

fn upload_session_response(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v2/{name}/blobs/uploads/{id}")).expect("ASCII location"),
    );
    // An empty upload reports `0-0`, as distribution does.
    h.insert(header::RANGE, HeaderValue::from_str(&format!("0-{}", size.saturating_sub(1))).expect("ASCII"));
    h.insert("Docker-Upload-UUID", HeaderValue::from_str(id).expect("ASCII id"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

async fn start_upload(store: &RegistryStore, name: &str, query: &HashMap<String, String>, body: Body) -> Response {
    if let (Some(digest), Some(from)) = (query.get("mount"), query.get("from"))
        && validate_digest(digest).is_ok()
        && validate_repository(from).is_ok()
        && store.has_blob(from, digest).await
    {
        return match store.link_blob(name, digest).await {
            Ok(()) => created(&format!("/v2/{name}/blobs/{digest}"), digest),
            Err(e) => store_error(e),
        };
    }
    let id = RegistryStore::new_upload_id();
    let path = store.upload_path(&id);
    if let Err(e) = create_file(&path).await {
        return store_error(e);
    }
    if let Some(digest) = query.get("digest") {
        // Monolithic upload: the whole blob in this POST.
        let mut hasher = Sha256::new();
        if let Err(resp) = append(&path, body, Some(&mut hasher)).await {
            let _ = tokio::fs::remove_file(&path).await;
            return resp;
        }
        return commit_upload(store, name, &path, digest, hasher).await;
    }
    upload_session_response(StatusCode::ACCEPTED, name, &id, 0)
}

/// The hash of what a session holds so far. Sessions are files only (no
/// in-memory state), so this reads back what earlier PATCHes wrote; a
/// monolithic PUT or POST starts from an empty file and costs nothing extra.
async fn session_hasher(store: &RegistryStore, id: &str) -> Result<Sha256, Response> {
    let path = store.upload_path(id);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(|e| store_error(StoreError::Io { path: path.clone(), source: e }))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn patch_upload(store: &RegistryStore, name: &str, id: &str, body: Body) -> Response {
    if !valid_id(id) {
        return error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown");
    }
    match append(&store.upload_path(id), body, None).await {
        Ok(size) => upload_session_response(StatusCode::ACCEPTED, name, id, size),
        Err(r) => r,
    }
}

async fn upload_status(store: &RegistryStore, name: &str, id: &str) -> Response {
    if !valid_id(id) {
        return error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown");
    }
    match tokio::fs::metadata(store.upload_path(id)).await {
        Ok(m) => upload_session_response(StatusCode::NO_CONTENT, name, id, m.len()),
        Err(_) => error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown"),
    }
}

async fn cancel_upload(store: &RegistryStore, id: &str) -> Response {
    if !valid_id(id) {
        return error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown");
    }
    match tokio::fs::remove_file(store.upload_path(id)).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown"),
    }
}

async fn finish_upload(
    store: &RegistryStore,
    name: &str,
    id: &str,
    query: &HashMap<String, String>,
    body: Body,
) -> Response {
    if !valid_id(id) {
        return error(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "upload session unknown");
    }
    let Some(digest) = query.get("digest") else {
        return error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "the digest query parameter is required");
    };
    let mut hasher = match session_hasher(store, id).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let path = store.upload_path(id);
    if let Err(r) = append(&path, body, Some(&mut hasher)).await {
        // A broken body leaves a broken session: drop it.
        let _ = tokio::fs::remove_file(&path).await;
        return r;
    }
    commit_upload(store, name, &path, digest, hasher).await
}

async fn commit_upload(store: &RegistryStore, name: &str, path: &Path, digest: &str, hasher: Sha256) -> Response {
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if validate_digest(digest).is_err() || actual != digest {
        let _ = tokio::fs::remove_file(path).await;
        return error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("provided digest {digest} did not match uploaded content ({actual})"),
        );
    }
    match store.commit_blob(name, path, digest).await {
        Ok(()) => created(&format!("/v2/{name}/blobs/{digest}"), digest),
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_names_with_slashes() {
        assert!(matches!(route("a/b/tags/list"), Some(Route::Tags("a/b"))));
        assert!(matches!(route("ns/app/manifests/v1"), Some(Route::Manifest("ns/app", "v1"))));
        assert!(matches!(route("ns/app/blobs/uploads/"), Some(Route::Upload("ns/app", ""))));
        assert!(matches!(route("ns/app/blobs/uploads/abc"), Some(Route::Upload("ns/app", "abc"))));
        assert!(matches!(route("ns/blobs/app/blobs/sha256:1"), Some(Route::Blob("ns/blobs/app", "sha256:1"))));
        assert!(route("ns/app").is_none());
    }

    #[test]
    fn parses_ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=90-500", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[tokio::test]
    async fn manifests_must_reference_present_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = RegistryStore::new(dir.path());
        let config = store.put_blob("ns/app", b"{}").await.unwrap();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"x","digest":"sha256:{}","size":1}}]}}"#,
            "0".repeat(64)
        );
        let e = store.put_manifest("ns/app", "v1", OCI_MANIFEST, manifest.as_bytes()).await.unwrap_err();
        assert!(matches!(e, StoreError::MissingReference { .. }), "{e}");
        let layer = store.put_blob("ns/app", b"x").await.unwrap();
        let manifest = manifest.replace(&format!("sha256:{}", "0".repeat(64)), &layer);
        let digest = store.put_manifest("ns/app", "v1", OCI_MANIFEST, manifest.as_bytes()).await.unwrap();
        assert_eq!(store.resolve_manifest("ns/app", "v1").await.as_deref(), Some(digest.as_str()));
        let (_, mt, bytes) = store.get_manifest("ns/app", &digest).await.unwrap();
        assert_eq!((mt.as_str(), bytes.as_slice()), (OCI_MANIFEST, manifest.as_bytes()));
        assert_eq!(store.tags("ns/app").await.unwrap(), vec!["v1".to_string()]);
        // A blob of another repository is not visible until mounted.
        assert!(!store.has_blob("other/app", &layer).await);
    }
}
