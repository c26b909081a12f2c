//! The copy itself.
//!
//! Why not `oci-client` (0.18, evaluated): it can stream a blob in
//! (`pull_blob_stream`) and out (`push_blob_stream`) and keeps raw manifest
//! bytes, but its streamed push is either a PATCH per chunk (one request per
//! chunk) or a global monolithic mode, it picks http/https per client rather
//! than per registry with skopeo's insecure https-then-http fallback, it reads
//! no auth files, and it brings `oci-spec`, `chrono`, `olpc-cjson` and
//! `http-auth` to compile. What a copy needs — HEAD, mount, one streamed PUT per
//! blob with its digest checked before the upload is committed, and byte
//! counts — is a few requests on reqwest, which the project builds anyway.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;

use crate::retry::Backoff;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use sha2::{Digest, Sha256};

use super::client::{RegistryClient, body_excerpt, describe};
use super::{AuthStore, ImageRef, RegistryError, media};

/// Why one attempt at a blob failed. Only a failure of the streamed part
/// (the source body, the PUT) is `resumable` by restarting the blob: a
/// request [`super::RegistryClient::send`] already retried is not repeated
/// on top of its retries.
struct BlobFailure {
    error: RegistryError,
    resumable: bool,
}

impl BlobFailure {
    fn retried(error: RegistryError) -> Self {
        BlobFailure { error, resumable: false }
    }
}

impl From<RegistryError> for BlobFailure {
    fn from(error: RegistryError) -> Self {
        BlobFailure { error, resumable: true }
    }
}
/// Largest manifest accepted (distribution's own limit is 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;

/// How to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Source registry is plain http or has an unverifiable certificate.
    pub src_insecure: bool,
    pub dest_insecure: bool,
    /// CA certificates (DER) trusted for a registry host besides the system
    /// roots: a cluster's CA for its own integrated registry.
    pub roots: BTreeMap<String, Vec<Vec<u8>>>,
    pub auth: AuthStore,
    /// Blobs in flight at once.
    pub concurrency: usize,
    /// Extra attempts per blob after the first fails transiently.
    pub retries: u32,
    /// First backoff between attempts (doubles each time).
    pub backoff: Duration,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            src_insecure: false,
            dest_insecure: false,
            roots: BTreeMap::new(),
            auth: AuthStore::anonymous(),
            concurrency: 4,
            retries: 3,
            backoff: Duration::from_millis(200),
        }
    }
}

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CopyStats {
    /// Digest of the top manifest (or index) copied: the same on both sides.
    pub digest: String,
    pub media_type: String,
    /// Manifests written (the top one and every child of an index).
    pub manifests: usize,
    /// Distinct blobs referenced.
    pub blobs: usize,
    pub blobs_uploaded: usize,
    pub blobs_skipped: usize,
    pub blobs_mounted: usize,
    /// Blob bytes sent to the target (including retried attempts).
    pub bytes_uploaded: u64,
    /// Blob attempts that failed and were retried.
    pub retries: u32,
}

/// A manifest as fetched: exact bytes, and what it references.
#[derive(Debug)]
struct Node {
    digest: String,
    media_type: String,
    bytes: Bytes,
    children: Vec<Node>,
    blobs: Vec<Blob>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Blob {
    digest: String,
    size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Skipped,
    Mounted,
    Uploaded,
}

struct Copier<'a> {
    src: &'a ImageRef,
    dst: &'a ImageRef,
    from: RegistryClient,
    to: RegistryClient,
    same_registry: bool,
    opts: &'a CopyOptions,
    bytes_uploaded: Arc<AtomicU64>,
    retries: AtomicU32,
}

/// Copy `src` (by tag or digest) to `dst` (by tag, or by digest when it names
/// the same digest). Returns the digest copied and what it took.
///
/// The copy runs on a thread of its own ([`crate::runtime::on_own_thread`]),
/// as the fetch does: up to `opts.concurrency` blobs stream at once through
/// both registries' connections, each hashed as its chunks pass.
pub async fn copy_image(src: &ImageRef, dst: &ImageRef, opts: &CopyOptions) -> Result<CopyStats, RegistryError> {
    let (src, dst, opts) = (src.clone(), dst.clone(), opts.clone());
    let what = format!("{src} to {dst}");
    crate::runtime::on_own_thread("modelship-copy", async move { copy_here(&src, &dst, &opts).await })
        .await
        .unwrap_or_else(|e| Err(RegistryError::Runtime { what, message: e.to_string() }))
}

async fn copy_here(src: &ImageRef, dst: &ImageRef, opts: &CopyOptions) -> Result<CopyStats, RegistryError> {
    let sources = opts.auth.sources.clone();
    // Both ends at once: with an insecure registry each costs a failed TLS
    // handshake before plain http.
    let (from, to) = tokio::join!(
        RegistryClient::connect(
            &src.registry,
            opts.src_insecure,
            opts.roots.get(&src.registry).map_or(&[][..], Vec::as_slice),
            opts.auth.lookup(&src.registry, &src.repository).cloned(),
            sources.clone(),
        ),
        RegistryClient::connect(
            &dst.registry,
            opts.dest_insecure,
            opts.roots.get(&dst.registry).map_or(&[][..], Vec::as_slice),
            opts.auth.lookup(&dst.registry, &dst.repository).cloned(),
            sources,
        )
    );
    let (from, to) = (from?, to?);
    let copier = Copier {
        src,
        dst,
        from,
        to,
        same_registry: src.registry == dst.registry,
        opts,
        bytes_uploaded: Arc::new(AtomicU64::new(0)),
        retries: AtomicU32::new(0),
    };
    copier.run().await
}

impl Copier<'_> {
    fn src_scope(&self) -> String {
        format!("repository:{}:pull", self.src.repository)
    }

    fn dst_scope(&self) -> String {
        if self.same_registry && self.src.repository != self.dst.repository {
            // One token that can also read the repository blobs are mounted from.
            format!("repository:{}:pull,push repository:{}:pull", self.dst.repository, self.src.repository)
        } else {
            format!("repository:{}:pull,push", self.dst.repository)
        }
    }

    async fn run(&self) -> Result<CopyStats, RegistryError> {
        let root = self.fetch_tree(self.src.reference().to_string(), self.src.digest.clone(), 0).await?;
        if let Some(d) = &self.dst.digest
            && *d != root.digest
        {
            return Err(RegistryError::DestinationDigest {
                dst: self.dst.to_string(),
                dst_digest: d.clone(),
                src_digest: root.digest.clone(),
            });
        }
        let mut blobs: Vec<Blob> = Vec::new();
        collect_blobs(&root, &mut blobs);
        tracing::info!(
            src = %self.src, dst = %self.dst, digest = %root.digest, blobs = blobs.len(),
            "copying image"
        );

        self.to.authorize(&self.dst_scope()).await?;
        // Collected first (futures are lazy): a `map` closure inside the
        // stream type keeps the future from being provably `Send`, which a
        // stage future nested in the engine needs.
        let copies: Vec<_> = blobs.iter().map(|b| self.copy_blob(b)).collect();
        let outcomes: Vec<Outcome> =
            futures::stream::iter(copies).buffer_unordered(self.opts.concurrency.max(1)).try_collect().await?;

        let mut manifests = 0;
        self.put_children(&root, &mut manifests).await?;
        let reference = self.dst.tag.clone().or(self.dst.digest.clone()).unwrap_or_else(|| "latest".into());
        self.put_manifest(&root, &reference).await?;
        manifests += 1;

        let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
        let stats = CopyStats {
            digest: root.digest.clone(),
            media_type: root.media_type.clone(),
            manifests,
            blobs: blobs.len(),
            blobs_uploaded: count(Outcome::Uploaded),
            blobs_skipped: count(Outcome::Skipped),
            blobs_mounted: count(Outcome::Mounted),
            bytes_uploaded: self.bytes_uploaded.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        };
        tracing::info!(
            digest = %stats.digest, blobs_uploaded = stats.blobs_uploaded, blobs_skipped = stats.blobs_skipped,
            blobs_mounted = stats.blobs_mounted, bytes_uploaded = stats.bytes_uploaded, retries = stats.retries,
            "image copied"
        );
        Ok(stats)
    }

    /// GET a manifest (and, for an index, every child), verifying each digest.
    fn fetch_tree(
        &self,
        reference: String,
        expected: Option<String>,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Node, RegistryError>> + Send + '_>> {
        Box::pin(async move {
            let image = format!("{}/{}@{}", self.src.registry, self.src.repository, reference);
            if depth > 4 {
                return Err(RegistryError::BadManifest { image, message: "indexes nested more than 4 deep".into() });
            }
            let url = self.from.url(&self.src.repository, &format!("manifests/{reference}"));
            let resp = self
                .from
                .send(&self.src_scope(), "manifest GET", |c| c.get(url.clone()).header("Accept", media::ACCEPT))
                .await?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::ManifestNotFound { image: self.image_name(&reference) });
            }
            if !status.is_success() {
                return Err(http_error(&self.from, format!("GET manifest {image}"), resp).await);
            }
            let header_digest =
                resp.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok()).map(str::to_string);
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
            let bytes = read_limited(resp, MAX_MANIFEST, &self.from, &image).await?;
            let actual = sha256_digest(&bytes);
            let expected = expected.or(header_digest);
            if let Some(e) = &expected
                && *e != actual
            {
                return Err(RegistryError::ManifestDigestMismatch { image, expected: e.clone(), actual });
            }
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::BadManifest { image: image.clone(), message: e.to_string() })?;
            let media_type = json
                .get("mediaType")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .or(content_type)
                .filter(|m| !m.is_empty() && m != "application/json")
                .unwrap_or_else(|| {
                    if json.get("manifests").is_some() { media::OCI_INDEX.into() } else { media::OCI_MANIFEST.into() }
                });
            let mut node =
                Node { digest: actual, media_type: media_type.clone(), bytes, children: vec![], blobs: vec![] };
            match media_type.as_str() {
                media::OCI_INDEX | media::DOCKER_LIST => {
                    for d in descriptors(json.get("manifests"), &image)? {
                        node.children.push(self.fetch_tree(d.digest.clone(), Some(d.digest), depth + 1).await?);
                    }
                }
                media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
                    let config = json.get("config").map(std::slice::from_ref).unwrap_or(&[]);
                    let config = serde_json::Value::Array(config.to_vec());
                    node.blobs.extend(descriptors(Some(&config), &image)?);
                    node.blobs.extend(descriptors(json.get("layers"), &image)?);
                }
                other => return Err(RegistryError::UnsupportedManifest { image, media_type: other.to_string() }),
            }
            Ok(node)
        })
    }

    fn image_name(&self, reference: &str) -> String {
        let sep = if reference.starts_with("sha256:") { '@' } else { ':' };
        format!("{}/{}{sep}{reference}", self.src.registry, self.src.repository)
    }

    /// Make one blob present in the target: skip, mount, or stream it.
    async fn copy_blob(&self, blob: &Blob) -> Result<Outcome, RegistryError> {
        if self.blob_exists(blob).await? {
            tracing::debug!(digest = %blob.digest, "blob already in target; skipped");
            return Ok(Outcome::Skipped);
        }
        let mut session = None;
        if self.same_registry && self.src.repository != self.dst.repository {
            match self.mount(blob).await? {
                Mount::Mounted => return Ok(Outcome::Mounted),
                Mount::Session(url) => session = Some(url),
            }
        }
        let attempts = self.opts.retries + 1;
        let policy = Backoff { base: self.opts.backoff, attempts, ..Backoff::REGISTRY };
        for attempt in 1..=attempts {
            match self.upload(blob, session.take()).await {
                Ok(()) => return Ok(Outcome::Uploaded),
                Err(BlobFailure { error: e, resumable: true }) if e.is_transient() && attempt < attempts => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        digest = %blob.digest, attempt, error = %crate::secret::mask(&crate::error::chain(&e)),
                        "blob copy failed; restarting it"
                    );
                    tokio::time::sleep(policy.delay(attempt)).await;
                }
                Err(BlobFailure { error: e, .. }) => {
                    return Err(RegistryError::BlobCopy {
                        digest: blob.digest.clone(),
                        target: format!("{}/{}", self.dst.registry, self.dst.repository),
                        attempts: attempt,
                        source: Box::new(e),
                    });
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn blob_exists(&self, blob: &Blob) -> Result<bool, RegistryError> {
        let url = self.to.url(&self.dst.repository, &format!("blobs/{}", blob.digest));
        let resp = self.to.send(&self.dst_scope(), "blob HEAD", |c| c.head(url.clone())).await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(http_error(&self.to, describe(&reqwest::Method::HEAD, &url), resp).await),
        }
    }

    /// `POST /v2/<dst>/blobs/uploads/?mount=<digest>&from=<src>`: 201 when
    /// mounted, 202 with an upload session when the registry declines.
    async fn mount(&self, blob: &Blob) -> Result<Mount, RegistryError> {
        let mut url = self.to.url(&self.dst.repository, "blobs/uploads/");
        url.query_pairs_mut().append_pair("mount", &blob.digest).append_pair("from", &self.src.repository);
        let resp =
            self.to.send(&self.dst_scope(), "blob mount", |c| c.post(url.clone()).header(CONTENT_LENGTH, "0")).await?;
        match resp.status() {
            StatusCode::CREATED => {
                tracing::debug!(digest = %blob.digest, from = %self.src.repository, "blob mounted");
                Ok(Mount::Mounted)
            }
            StatusCode::ACCEPTED => Ok(Mount::Session(self.location(&resp, &url)?)),
            _ => Err(http_error(&self.to, "blob mount".into(), resp).await),
        }
    }

    async fn start_upload(&self) -> Result<url::Url, RegistryError> {
        let url = self.to.url(&self.dst.repository, "blobs/uploads/");
        let resp = self
            .to
            .send(&self.dst_scope(), "blob upload start", |c| c.post(url.clone()).header(CONTENT_LENGTH, "0"))
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(http_error(&self.to, format!("POST {}", url.path()), resp).await);
        }
        self.location(&resp, &url)
    }

    fn location(&self, resp: &reqwest::Response, url: &url::Url) -> Result<url::Url, RegistryError> {
        let loc = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| RegistryError::Http {
            registry: self.to.registry.clone(),
            what: format!("POST {} (no Location header)", url.path()),
            status: resp.status().as_u16(),
            body: String::new(),
        })?;
        self.to.resolve(loc).map_err(|e| RegistryError::Http {
            registry: self.to.registry.clone(),
            what: format!("upload Location `{loc}` is not a URL: {e}"),
            status: resp.status().as_u16(),
            body: String::new(),
        })
    }

    /// One attempt: open (or reuse) an upload session, GET the source blob and
    /// pipe its body into one PUT with the digest. The piped stream holds back
    /// its last chunk until the digest checks out, so a registry never
    /// receives a complete wrong blob.
    async fn upload(&self, blob: &Blob, session: Option<url::Url>) -> Result<(), BlobFailure> {
        let location = match session {
            Some(s) => s,
            None => self.start_upload().await.map_err(BlobFailure::retried)?,
        };
        let src_url = self.from.url(&self.src.repository, &format!("blobs/{}", blob.digest));
        let resp = self
            .from
            .send(&self.src_scope(), "blob GET", |c| c.get(src_url.clone()))
            .await
            .map_err(BlobFailure::retried)?;
        if !resp.status().is_success() {
            // `send` already asked again on a transient status.
            let e = http_error(&self.from, format!("GET blob {}", blob.digest), resp).await;
            self.cancel(&location).await;
            return Err(BlobFailure::retried(e));
        }
        if let Some(len) = resp.content_length()
            && len != blob.size
        {
            self.cancel(&location).await;
            return Err(RegistryError::BlobSizeMismatch {
                source_repo: self.src_repo(),
                digest: blob.digest.clone(),
                expected: blob.size,
                actual: len,
            }
            .into());
        }
        let verdict: Arc<std::sync::Mutex<Option<RegistryError>>> = Arc::default();
        let body = Verified {
            inner: Box::pin(resp.bytes_stream()),
            hasher: Sha256::new(),
            held: None,
            read: 0,
            blob: blob.clone(),
            source_repo: self.src_repo(),
            verdict: verdict.clone(),
            sent: self.bytes_uploaded.clone(),
            done: false,
        };
        let mut put = location.clone();
        put.query_pairs_mut().append_pair("digest", &blob.digest);
        // A streamed body cannot be replayed after a 401, so the token must be
        // in place first (another blob may just have dropped an expired one).
        self.to.authorize(&self.dst_scope()).await.map_err(BlobFailure::retried)?;
        let header = self.to.auth_header(&self.dst_scope()).await.map_err(BlobFailure::retried)?;
        let mut req = self
            .to
            .http()
            .put(put.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, blob.size)
            .body(reqwest::Body::wrap_stream(body));
        if let Some(h) = header {
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        let result = req.send().await;
        let verdict = verdict.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(e) = verdict {
            self.cancel(&location).await;
            return Err(e.into());
        }
        let resp = match result {
            Ok(r) => r,
            Err(source) => {
                self.cancel(&location).await;
                return Err(RegistryError::Transport {
                    registry: self.to.registry.clone(),
                    what: format!("uploading blob {} to {}", blob.digest, self.dst.repository),
                    source,
                }
                .into());
            }
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            // A token that expired during a long upload: drop it so the
            // retry of this blob authenticates afresh.
            self.cancel(&location).await;
            self.to.forget(&self.dst_scope()).await;
            return Err(RegistryError::Http {
                registry: self.to.registry.clone(),
                what: format!("PUT blob {} (credentials expired or rejected mid-upload)", blob.digest),
                status: 401,
                body: body_excerpt(resp).await,
            }
            .into());
        }
        if resp.status() != StatusCode::CREATED {
            let e = http_error(&self.to, format!("PUT blob {}", blob.digest), resp).await;
            self.cancel(&location).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Abandon an upload session (best effort: the registry expires it anyway).
    async fn cancel(&self, location: &url::Url) {
        let header = self.to.auth_header(&self.dst_scope()).await.ok().flatten();
        let mut req = self.to.http().delete(location.clone());
        if let Some(h) = header {
            req = req.header(reqwest::header::AUTHORIZATION, h);
        }
        let _ = req.send().await;
    }

    fn src_repo(&self) -> String {
        format!("{}/{}", self.src.registry, self.src.repository)
    }

    /// Child manifests of an index, by digest, deepest first.
    fn put_children<'s>(
        &'s self,
        node: &'s Node,
        count: &'s mut usize,
    ) -> Pin<Box<dyn Future<Output = Result<(), RegistryError>> + Send + 's>> {
        Box::pin(async move {
            for child in &node.children {
                self.put_children(child, count).await?;
                if !self.manifest_exists(&child.digest).await? {
                    self.put_manifest(child, &child.digest).await?;
                }
                *count += 1;
            }
            Ok(())
        })
    }

    async fn manifest_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.to.url(&self.dst.repository, &format!("manifests/{digest}"));
        let resp = self
            .to
            .send(&self.dst_scope(), "manifest HEAD", |c| c.head(url.clone()).header("Accept", media::ACCEPT))
            .await?;
        Ok(resp.status().is_success())
    }

    /// PUT the exact manifest bytes; the registry's digest must be ours.
    async fn put_manifest(&self, node: &Node, reference: &str) -> Result<(), RegistryError> {
        let url = self.to.url(&self.dst.repository, &format!("manifests/{reference}"));
        let resp = self
            .to
            .send(&self.dst_scope(), "manifest PUT", |c| {
                c.put(url.clone()).header(CONTENT_TYPE, node.media_type.as_str()).body(node.bytes.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(http_error(&self.to, format!("PUT manifest {}:{reference}", self.dst.repository), resp).await);
        }
        if let Some(d) = resp.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok())
            && d != node.digest
        {
            return Err(RegistryError::ManifestDigestMismatch {
                image: format!("{}/{}:{reference} (as stored by the target)", self.dst.registry, self.dst.repository),
                expected: node.digest.clone(),
                actual: d.to_string(),
            });
        }
        Ok(())
    }
}

enum Mount {
    Mounted,
    Session(url::Url),
}

fn collect_blobs(node: &Node, out: &mut Vec<Blob>) {
    for b in &node.blobs {
        if !out.iter().any(|o| o.digest == b.digest) {
            out.push(b.clone());
        }
    }
    for c in &node.children {
        collect_blobs(c, out);
    }
}

fn descriptors(list: Option<&serde_json::Value>, image: &str) -> Result<Vec<Blob>, RegistryError> {
    let bad = |message: String| RegistryError::BadManifest { image: image.to_string(), message };
    let Some(list) = list else { return Ok(vec![]) };
    let items = list.as_array().ok_or_else(|| bad("a descriptor list is not an array".into()))?;
    items
        .iter()
        .map(|d| {
            let digest =
                d.get("digest").and_then(|v| v.as_str()).ok_or_else(|| bad("a descriptor has no digest".into()))?;
            super::validate_digest(digest).map_err(bad)?;
            let size = d
                .get("size")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| bad(format!("descriptor {digest} has no size")))?;
            Ok(Blob { digest: digest.to_string(), size })
        })
        .collect()
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(super) async fn read_limited(
    resp: reqwest::Response,
    limit: usize,
    client: &RegistryClient,
    image: &str,
) -> Result<Bytes, RegistryError> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| RegistryError::Transport {
            registry: client.registry.clone(),
            what: format!("reading manifest {image}"),
            source,
        })?;
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(RegistryError::ManifestTooLarge { image: image.to_string(), limit });
        }
    }
    Ok(Bytes::from(out))
}

pub(super) async fn http_error(client: &RegistryClient, what: String, resp: reqwest::Response) -> RegistryError {
    let status = resp.status();
    let body = body_excerpt(resp).await;
    match status {
        StatusCode::UNAUTHORIZED => client.unauthorized(&what),
        StatusCode::FORBIDDEN => RegistryError::Denied { registry: client.registry.clone(), what, body },
        s => RegistryError::Http { registry: client.registry.clone(), what, status: s.as_u16(), body },
    }
}

/// The source body on its way to the target: hashed and counted as it
/// passes, with the last chunk held back until the digest and size are
/// known good. On a mismatch or a read error the stream ends in an error, so
/// the PUT is aborted before the target has every byte, and `verdict` says why.
struct Verified {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    hasher: Sha256,
    held: Option<Bytes>,
    read: u64,
    blob: Blob,
    source_repo: String,
    verdict: Arc<std::sync::Mutex<Option<RegistryError>>>,
    sent: Arc<AtomicU64>,
    done: bool,
}

impl Verified {
    fn fail(&mut self, e: RegistryError) -> Poll<Option<std::io::Result<Bytes>>> {
        let msg = e.to_string();
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.done = true;
        Poll::Ready(Some(Err(std::io::Error::other(msg))))
    }

    fn release(&mut self, chunk: Bytes) -> Poll<Option<std::io::Result<Bytes>>> {
        self.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(chunk)))
    }
}

impl Stream for Verified {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    self.hasher.update(&chunk);
                    self.read += chunk.len() as u64;
                    if self.read > self.blob.size {
                        let e = RegistryError::BlobSizeMismatch {
                            source_repo: self.source_repo.clone(),
                            digest: self.blob.digest.clone(),
                            expected: self.blob.size,
                            actual: self.read,
                        };
                        return self.fail(e);
                    }
                    match self.held.replace(chunk) {
                        Some(prev) => return self.release(prev),
                        None => continue,
                    }
                }
                Poll::Ready(Some(Err(source))) => {
                    let e = RegistryError::SourceRead {
                        source_repo: self.source_repo.clone(),
                        digest: self.blob.digest.clone(),
                        read: self.read,
                        size: self.blob.size,
                        source,
                    };
                    return self.fail(e);
                }
                Poll::Ready(None) => {
                    let actual = format!("sha256:{}", hex::encode(std::mem::take(&mut self.hasher).finalize()));
                    if self.read != self.blob.size {
                        let e = RegistryError::BlobSizeMismatch {
                            source_repo: self.source_repo.clone(),
                            digest: self.blob.digest.clone(),
                            expected: self.blob.size,
                            actual: self.read,
                        };
                        return self.fail(e);
                    }
                    if actual != self.blob.digest {
                        let e = RegistryError::BlobDigestMismatch {
                            source_repo: self.source_repo.clone(),
                            digest: self.blob.digest.clone(),
                            actual,
                        };
                        return self.fail(e);
                    }
                    self.done = true;
                    return match self.held.take() {
                        Some(last) => self.release(last),
                        None => Poll::Ready(None),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(
        chunks: Vec<&'static [u8]>,
        digest: String,
        size: u64,
    ) -> (Verified, Arc<std::sync::Mutex<Option<RegistryError>>>) {
        let verdict: Arc<std::sync::Mutex<Option<RegistryError>>> = Arc::default();
        let inner = futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))));
        let v = Verified {
            inner: Box::pin(inner),
            hasher: Sha256::new(),
            held: None,
            read: 0,
            blob: Blob { digest, size },
            source_repo: "src/repo".into(),
            verdict: verdict.clone(),
            sent: Arc::default(),
            done: false,
        };
        (v, verdict)
    }

    #[tokio::test]
    async fn verified_stream_passes_good_bytes_through() {
        let (v, verdict) = verified(vec![b"hello ", b"", b"world"], sha256_digest(b"hello world"), 11);
        let sent = v.sent.clone();
        let out: Vec<Bytes> = v.try_collect().await.unwrap();
        assert_eq!(out.concat(), b"hello world");
        assert_eq!(sent.load(Ordering::Relaxed), 11);
        assert!(verdict.lock().unwrap().is_none());
    }

    // Guards the promise that a target never receives every byte of a blob
    // whose digest is wrong: the last chunk must be withheld.
    #[tokio::test]
    async fn verified_stream_withholds_last_chunk_on_digest_mismatch() {
        let (mut v, verdict) = verified(vec![b"hello ", b"w0rld"], sha256_digest(b"hello world"), 11);
        let mut passed = Vec::new();
        let mut failed = false;
        while let Some(item) = v.next().await {
            match item {
                Ok(b) => passed.extend_from_slice(&b),
                Err(_) => failed = true,
            }
        }
        assert!(failed);
        assert_eq!(passed, b"hello ");
        assert!(matches!(verdict.lock().unwrap().take(), Some(RegistryError::BlobDigestMismatch { .. })));
    }

    #[tokio::test]
    async fn verified_stream_rejects_wrong_sizes() {
        let (v, verdict) = verified(vec![b"hello world!"], sha256_digest(b"hello world"), 11);
        assert!(v.try_collect::<Vec<Bytes>>().await.is_err());
        assert!(matches!(verdict.lock().unwrap().take(), Some(RegistryError::BlobSizeMismatch { actual: 12, .. })));
        let (v, verdict) = verified(vec![b"hello"], sha256_digest(b"hello world"), 11);
        assert!(v.try_collect::<Vec<Bytes>>().await.is_err());
        assert!(matches!(verdict.lock().unwrap().take(), Some(RegistryError::BlobSizeMismatch { actual: 5, .. })));
    }
}
