//! Model sources: S3-compatible object storage (aws-sdk-s3) and local files.
//!
//! [`fetch`] brings every object of a [`Source`] into `<dest>/model/`,
//! keeping relative paths, and returns a [`Fetched`] manifest with one
//! content digest. The work directory next to the model holds what makes a
//! retry cheap and safe:
//!
//! - `.fetch/partial/<path>`: a file being written (never under its final name),
//! - `.fetch/ranges/<path>`: which byte ranges of that partial file are complete,
//! - `.fetch/done/<path>`: what a finished file was verified as (remote
//!   identity, sha256, local size and mtime), so a resumed run skips it.
//!
//! [`embedded`] serves a directory as an S3 endpoint in-process (for `--sim`).
//!
//! Model registries resolve to objects here: [`mlflow`] (a model version's
//! artifacts in S3 or behind the tracking server's proxy) and [`dvc`] (the
//! content-addressed files a `.dvc` entry names, md5-verified); [`upload`]
//! is the other direction, `modelship model push`.

pub mod dvc;
#[cfg(feature = "sim")]
pub mod embedded;
mod http;
mod local;
pub mod mlflow;
mod paths;
mod s3;
pub mod upload;
mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::Semaphore;

use crate::error::{ExitClass, HasExitClass};
use crate::secret::Secret;

pub use paths::{BadGlob, Filter, UnsafePath, safe_relative};
pub use s3::check_endpoint;

/// Objects larger than this are fetched as parallel ranged GETs of this size.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Requests in flight at once, across all files.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Region when neither the pipeline nor the AWS chain names one.
pub const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("source `{source_url}`: {reason}")]
    BadSource { source_url: String, reason: String },
    #[error("endpoint `{endpoint}`: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    #[error("bucket `{bucket}` does not exist{}", at(endpoint))]
    NoSuchBucket { bucket: String, endpoint: Option<String> },
    #[error("no object `{url}` and no objects under `{url}/`{}", at(endpoint))]
    NotFound { url: String, endpoint: Option<String> },
    #[error("`{url}` holds no objects{}: refusing to produce an empty model", if *.filtered { " that match include/exclude" } else { "" })]
    Empty { url: String, filtered: bool },
    #[error("access to `{url}` refused ({code}): check the credentials and the bucket policy")]
    AccessDenied { url: String, code: String },
    #[error("object `{url}` cannot be stored: its path `{rel}` is unsafe: {reason}")]
    UnsafeKey { url: String, rel: String, reason: UnsafePath },
    #[error("objects `{first}` and `{second}` map to conflicting local paths")]
    PathConflict { first: String, second: String },
    #[error("{op} `{url}` failed: {message}")]
    Request {
        op: &'static str,
        url: String,
        message: String,
        retryable: bool,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error(
        "object `{url}`: the connection dropped at byte {offset} of {size} and {attempts} ranged resumes did not finish it"
    )]
    Interrupted {
        url: String,
        offset: u64,
        size: u64,
        attempts: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("object `{url}` changed while it was being downloaded (ETag no longer matches)")]
    Changed { url: String },
    #[error("object `{url}`: {what} mismatch: expected {expected}, got {actual}")]
    Mismatch { url: String, what: String, expected: String, actual: String },
    #[error("expectSha256 names `{path}`, which is not among the fetched files")]
    ExpectMissing { path: String },
    #[error("{path}:{line}: {message}")]
    BadManifest { path: String, line: usize, message: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upload of `{url}` stopped after {done} of {parts} parts: run the same command again to resume it")]
    PushInterrupted {
        url: String,
        done: u32,
        parts: u32,
        #[source]
        source: Box<StorageError>,
    },
    #[error(transparent)]
    Mlflow(Box<mlflow::MlflowError>),
    #[error(transparent)]
    Dvc(Box<dvc::DvcError>),
    #[error("embedded S3 endpoint on {addr}: {source}")]
    Serve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

// Boxed: the registries' errors carry several names each, and every
// storage result would otherwise be as large as the largest of them.
impl From<mlflow::MlflowError> for StorageError {
    fn from(e: mlflow::MlflowError) -> Self {
        StorageError::Mlflow(Box::new(e))
    }
}

impl From<dvc::DvcError> for StorageError {
    fn from(e: dvc::DvcError) -> Self {
        StorageError::Dvc(Box::new(e))
    }
}

fn at(endpoint: &Option<String>) -> String {
    endpoint.as_ref().map(|e| format!(" at {e}")).unwrap_or_default()
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io { op, path: path.into(), source }
    }

    /// Worth another attempt of the stage: network trouble, 5xx, an object
    /// that changed or arrived corrupted (its partial file is discarded).
    pub fn retryable(&self) -> bool {
        match self {
            StorageError::Request { retryable, .. } => *retryable,
            StorageError::Interrupted { .. } | StorageError::Changed { .. } => true,
            StorageError::Mismatch { what, .. } => what != "expectSha256",
            StorageError::Mlflow(e) => e.retryable(),
            _ => false,
        }
    }
}

impl HasExitClass for StorageError {
    fn exit_class(&self) -> ExitClass {
        match self {
            StorageError::BadSource { .. }
            | StorageError::BadEndpoint { .. }
            | StorageError::NoSuchBucket { .. }
            | StorageError::NotFound { .. }
            | StorageError::Empty { .. }
            | StorageError::AccessDenied { .. }
            | StorageError::UnsafeKey { .. }
            | StorageError::PathConflict { .. }
            | StorageError::ExpectMissing { .. }
            | StorageError::BadManifest { .. } => ExitClass::BadInput,
            StorageError::Mlflow(e) => e.exit_class(),
            StorageError::Dvc(e) => e.exit_class(),
            _ => ExitClass::Failed,
        }
    }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `s3://BUCKET/PREFIX/` (`prefix`: every object below, keeping relative
    /// paths) or `s3://BUCKET/KEY` (one object; if there is no such object but
    /// there are objects under `KEY/`, that prefix).
    S3 { bucket: String, key: String },
    /// `file://PATH`: a file or a directory tree; relative paths resolve
    /// against the pipeline file's directory.
    File { path: PathBuf },
    /// `models:/NAME@ALIAS` or `models:/NAME/VERSION`: a version in MLflow's
    /// model registry, resolved to its artifacts ([`mlflow`]).
    Mlflow(mlflow::ModelUri),
    /// `dvc:PATH`: a path tracked by DVC in the pipeline's Git repository
    /// (relative to its root), fetched from the DVC remote ([`dvc`]).
    Dvc { path: String },
}

impl Source {
    pub fn parse(text: &str) -> Result<Source, StorageError> {
        let bad = |reason: &str| StorageError::BadSource { source_url: text.to_string(), reason: reason.to_string() };
        // A NUL ends the name at the OS boundary, so it would fetch something
        // else than it says; no S3 key or path needs control characters.
        if text.chars().any(char::is_control) {
            return Err(bad("it contains control characters"));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name (expected s3://BUCKET/PREFIX/ or s3://BUCKET/KEY)"));
            }
            if !bucket.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
                return Err(bad("bucket names hold only letters, digits, `.`, `-` and `_`"));
            }
            if key.starts_with('/') {
                return Err(bad("the key starts with `/` (a double slash after the bucket)"));
            }
            Ok(Source::S3 { bucket: bucket.to_string(), key: key.to_string() })
        } else if let Some(rest) = text.strip_prefix("file://") {
            if rest.is_empty() {
                return Err(bad("no path after file://"));
            }
            Ok(Source::File { path: PathBuf::from(rest) })
        } else if let Some(parsed) = mlflow::ModelUri::parse(text) {
            parsed.map(Source::Mlflow).map_err(|reason| bad(&reason))
        } else if let Some(rest) = text.strip_prefix("dvc:") {
            dvc::check_path(rest).map_err(|reason| bad(&reason))?;
            Ok(Source::Dvc { path: rest.trim_start_matches("./").trim_end_matches('/').to_string() })
        } else {
            Err(bad(
                "unknown scheme: expected s3://BUCKET/PREFIX/, s3://BUCKET/KEY, file://PATH, models:/NAME@ALIAS, models:/NAME/VERSION or dvc:PATH",
            ))
        }
    }

    /// `s3://b/p/` names a prefix (so does a bare bucket).
    pub fn is_prefix(&self) -> bool {
        matches!(self, Source::S3 { key, .. } if key.is_empty() || key.ends_with('/'))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Source::File { path } => write!(f, "file://{}", path.display()),
            Source::Mlflow(uri) => uri.fmt(f),
            Source::Dvc { path } => write!(f, "dvc:{path}"),
        }
    }
}

/// Static S3 credentials (from a Kubernetes Secret or the embedded endpoint).
#[derive(Clone, Debug)]
pub struct StaticCredentials {
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// How to reach S3. Absent fields fall back to the AWS SDK's own chain
/// (`AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`, `AWS_REGION`, profile, env
/// credentials, web identity).
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub credentials: Option<StaticCredentials>,
    /// Allow a plain-HTTP endpoint. Off unless the pipeline says so.
    pub insecure: bool,
}

/// Expected sha256 digests, per file or from a `sha256sum`-style manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Expect {
    #[default]
    Nothing,
    /// relative path -> lowercase hex sha256
    Map(BTreeMap<String, String>),
    /// A manifest: an object of the model by that relative path, else a file
    /// relative to the pipeline's directory.
    Manifest(String),
}

/// Everything [`fetch`] needs; the stage builds it from `with:` and `spec.model`.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub source: Source,
    /// Directory that relative `file://` sources and manifest files resolve against.
    pub base_dir: PathBuf,
    pub s3: S3Options,
    pub version_id: Option<String>,
    pub filter: Filter,
    pub expect: Expect,
    pub concurrency: usize,
    pub part_size: u64,
    /// Stage directory: the model goes to `<dest>/model/`.
    pub dest: PathBuf,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The objects a registry resolved the source to, fetched as they are
    /// instead of listing `source` (which then only names them).
    pub objects: Option<Vec<PlannedObject>>,
    /// Client and `Authorization` for [`Location::Http`] objects.
    pub http: Option<(reqwest::Client, Option<reqwest::header::HeaderValue>)>,
}

/// One object a registry resolved: where it is, its path in the model, and
/// what its bytes must hash to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedObject {
    pub rel: String,
    /// Known from the registry's listing; else asked of the store (a HEAD).
    pub size: Option<u64>,
    pub location: Location,
    /// The md5 DVC recorded for the file.
    pub md5: Option<Md5Check>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    S3 {
        bucket: String,
        key: String,
    },
    /// A plain GET (MLflow's artifact proxy), with the request's authorization.
    Http {
        url: String,
    },
}

/// An md5 a file must have, computed as the tool that recorded it does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Md5Check {
    /// Of the bytes (DVC 3's `hash: md5`).
    Plain(String),
    /// Of the bytes with CRLF turned into LF when the file looks like text
    /// (DVC 2's md5, kept by DVC 3 as `md5-dos2unix` for old entries).
    Dos2Unix(String),
}

impl FetchRequest {
    pub fn new(source: Source, dest: impl Into<PathBuf>) -> Self {
        FetchRequest {
            source,
            base_dir: PathBuf::from("."),
            s3: S3Options::default(),
            version_id: None,
            filter: Filter::default(),
            expect: Expect::Nothing,
            concurrency: DEFAULT_CONCURRENCY,
            part_size: DEFAULT_PART_SIZE,
            dest: dest.into(),
            progress: false,
            objects: None,
            http: None,
        }
    }
}

/// One file of the model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Where one file of the model came from: the lineage a provenance record
/// keeps beside its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectSource {
    pub path: String,
    /// `s3://bucket/key` or `file://path`.
    pub url: String,
    /// The S3 object key, or the local file's path.
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub size: u64,
    /// Hex sha256 of the bytes fetched (as in the manifest).
    #[serde(default)]
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// What the server's answer named an object by, when its listing did not
/// (a prefix listing carries no version ids; some servers list no ETags).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Served {
    pub etag: Option<String>,
    pub version_id: Option<String>,
}

impl Served {
    /// `null` is the version id S3 answers for an object stored before
    /// versioning was enabled on its bucket: no version to pin.
    pub fn of(etag: Option<&str>, version_id: Option<&str>) -> Served {
        Served {
            etag: etag.map(|e| e.trim_matches('"').to_string()).filter(|e| !e.is_empty()),
            version_id: version_id.filter(|v| !v.is_empty() && *v != "null").map(str::to_string),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fetched {
    pub model_dir: PathBuf,
    /// Sorted by path.
    pub manifest: Vec<ManifestEntry>,
    /// The source object of each manifest entry, sorted by path.
    pub objects: Vec<ObjectSource>,
    pub total_bytes: u64,
    pub content_digest: String,
    /// Files transferred by this call (the rest were complete and verified already).
    pub fetched_files: usize,
    pub reused_files: usize,
    pub bytes_transferred: u64,
}

/// Bytes: a number, or a number with a K/M/G suffix (`Ki`/`KiB` binary, `KB` decimal too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is not a size (e.g. 8388608, 8Mi, 8MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "Ki" | "KiB" => 1 << 10,
        "M" | "Mi" | "MiB" => 1 << 20,
        "G" | "Gi" | "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("unknown size unit `{u}` (use Ki, Mi, Gi, KB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{text}` is too large"))
}

/// `sha256:<hex>` over the manifest sorted by path, serialised as compact
/// JSON (`[{"path":..,"size":..,"sha256":..},..]`): JSON quoting keeps any
/// byte of a path unambiguous, and the sort makes the digest independent of
/// listing order.
pub fn content_digest(manifest: &[ManifestEntry]) -> String {
    let mut sorted: Vec<&ManifestEntry> = manifest.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let json = serde_json::to_vec(&sorted).expect("manifest serialises");
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&json)))
}

/// Where a listed object comes from.
#[derive(Clone, Debug)]
pub(crate) enum Origin {
    S3 { bucket: String, key: String, version_id: Option<String> },
    File { path: PathBuf },
    Http { url: String },
}

/// One object to bring in.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub rel: String,
    pub size: u64,
    pub origin: Origin,
    /// ETag without quotes, as listed.
    pub etag: Option<String>,
    /// What must stay the same for a finished or partial file to be reused.
    pub identity: String,
    /// An md5 the registry recorded for the file.
    pub md5: Option<Md5Check>,
}

impl Entry {
    pub fn url(&self) -> String {
        match &self.origin {
            Origin::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
            Origin::File { path } => format!("file://{}", path.display()),
            Origin::Http { url } => crate::secret::mask(url),
        }
    }
}

/// Byte counters and the optional bar, shared by every transfer.
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    transferred: std::sync::atomic::AtomicU64,
}

/// A byte-counting bar on stderr for a transfer named `verb` (`fetch`, `push`).
pub(crate) fn progress_bar(total: u64, verb: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {verb} {{bytes}}/{{total_bytes}} [{{wide_bar}}] {{bytes_per_sec}} eta {{eta}}"
        ))
        .expect("static template")
        .progress_chars("=> "),
    );
    bar
}

impl Progress {
    fn new(total: u64, draw: bool) -> Self {
        let bar = draw.then(|| progress_bar(total, "fetch"));
        Progress { bar, transferred: 0.into() }
    }

    pub fn add(&self, n: u64) {
        self.transferred.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Bytes already on disk from an earlier attempt count toward the bar only.
    fn skip(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn transferred(&self) -> u64 {
        self.transferred.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Shared state of one [`fetch`] call.
pub(crate) struct Job {
    pub req: FetchRequest,
    pub model_dir: PathBuf,
    pub work_dir: PathBuf,
    pub requests: Semaphore,
    pub progress: Progress,
    pub s3: Option<s3::Remote>,
}

impl Job {
    fn http(&self) -> &(reqwest::Client, Option<reqwest::header::HeaderValue>) {
        self.req.http.as_ref().expect("HTTP entries come with a client")
    }
}

impl Job {
    pub fn partial_path(&self, rel: &str) -> PathBuf {
        self.work_dir.join("partial").join(rel)
    }
    pub fn ranges_path(&self, rel: &str) -> PathBuf {
        self.work_dir.join("ranges").join(rel)
    }
    pub fn done_path(&self, rel: &str) -> PathBuf {
        self.work_dir.join("done").join(rel)
    }
    pub fn final_path(&self, rel: &str) -> PathBuf {
        self.model_dir.join(rel)
    }
}

/// Bring the model into `<dest>/model/`, verified, and describe it.
///
/// Idempotent: files already complete and verified by an earlier call are
/// kept; partially downloaded big objects continue from their completed
/// ranges; files that are no longer part of the source are removed. Cancel
/// by dropping the future: every await leaves the work directory consistent.
///
/// The transfer runs on a thread of its own ([`crate::runtime::on_own_thread`]);
/// hashing and disk writes keep their own blocking threads, and hashing caps
/// a file's speed anyway.
pub async fn fetch(req: FetchRequest) -> Result<Fetched, StorageError> {
    let dest = req.dest.clone();
    crate::runtime::on_own_thread("modelship-fetch", fetch_here(req))
        .await
        .unwrap_or_else(|e| Err(StorageError::io("start the download thread for", &dest, e)))
}

async fn fetch_here(req: FetchRequest) -> Result<Fetched, StorageError> {
    let started = Instant::now();
    let model_dir = req.dest.join("model");
    let work_dir = req.dest.join(".fetch");
    for dir in [&model_dir, &work_dir] {
        tokio::fs::create_dir_all(dir).await.map_err(|e| StorageError::io("create directory", dir, e))?;
    }
    let (remote, entries) = match (&req.objects, &req.source) {
        (Some(planned), _) => planned_entries(&req, planned).await?,
        (None, Source::S3 { bucket, key }) => {
            let remote = s3::Remote::connect(&req.s3).await?;
            let listed = remote.list(bucket, key, req.version_id.as_deref()).await?;
            (Some(remote), listed)
        }
        (None, Source::File { path }) => {
            let root = if path.is_absolute() { path.clone() } else { req.base_dir.join(path) };
            (None, local::list(&root).await?)
        }
        (None, other) => {
            return Err(StorageError::BadSource {
                source_url: other.to_string(),
                reason: "a registry source must be resolved before it is fetched (this is a bug)".into(),
            });
        }
    };
    let source_url = req.source.to_string();
    let listed_any = !entries.is_empty();
    let entries: Vec<Entry> = entries.into_iter().filter(|e| req.filter.matches(&e.rel)).collect();
    if entries.is_empty() {
        return Err(StorageError::Empty { url: source_url, filtered: listed_any });
    }
    check_conflicts(&entries)?;
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let mut objects: Vec<ObjectSource> = entries
        .iter()
        .map(|e| ObjectSource {
            path: e.rel.clone(),
            url: e.url(),
            key: match &e.origin {
                Origin::S3 { key, .. } => key.clone(),
                Origin::File { path } => path.display().to_string(),
                Origin::Http { url } => crate::secret::mask(url),
            },
            size: e.size,
            sha256: String::new(),
            version_id: match &e.origin {
                Origin::S3 { version_id, .. } => version_id.clone(),
                Origin::File { .. } | Origin::Http { .. } => None,
            },
            etag: e.etag.clone(),
        })
        .collect();
    objects.sort_by(|a, b| a.path.cmp(&b.path));
    let concurrency = req.concurrency.max(1);
    let job = Arc::new(Job {
        progress: Progress::new(total, req.progress),
        requests: Semaphore::new(concurrency),
        model_dir: model_dir.clone(),
        work_dir,
        s3: remote,
        req,
    });

    // A manifest that is part of the model is fetched first, so every other
    // file can be checked against it before it gets its final name.
    let mut expect = BTreeMap::new();
    let mut manifest: Vec<ManifestEntry> = Vec::with_capacity(entries.len());
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let mut fetched_files = 0;
    let mut rest = entries;
    match &job.req.expect {
        Expect::Nothing => {}
        Expect::Map(map) => expect = map.clone(),
        Expect::Manifest(name) => {
            let rel = safe_relative(name).map_err(|reason| StorageError::UnsafeKey {
                url: name.clone(),
                rel: name.clone(),
                reason,
            })?;
            let path = if let Some(i) = rest.iter().position(|e| e.rel == rel) {
                let entry = rest.remove(i);
                let (m, fetched, s) = ensure(&job, &entry, None).await?;
                fetched_files += usize::from(fetched);
                served.insert(m.path.clone(), s);
                manifest.push(m);
                job.final_path(&rel)
            } else {
                job.req.base_dir.join(name)
            };
            expect = verify::read_sha256sums(&path).await?;
        }
    }
    {
        let in_model: std::collections::HashSet<&str> = rest.iter().map(|e| e.rel.as_str()).collect();
        for path in expect.keys() {
            let norm = safe_relative(path).unwrap_or_else(|_| path.clone());
            if !in_model.contains(norm.as_str()) && !manifest.iter().any(|m| m.path == norm) {
                return Err(StorageError::ExpectMissing { path: path.clone() });
            }
        }
    }
    let expect: BTreeMap<String, String> =
        expect.into_iter().map(|(k, v)| (safe_relative(&k).unwrap_or(k), v.to_ascii_lowercase())).collect();

    let expect = Arc::new(expect);
    let results: Vec<(ManifestEntry, bool, Served)> = futures::stream::iter(rest)
        .map(|entry| {
            let (job, expect) = (job.clone(), expect.clone());
            async move { ensure(&job, &entry, expect.get(&entry.rel).map(String::as_str)).await }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    for (m, fetched, s) in results {
        fetched_files += usize::from(fetched);
        served.insert(m.path.clone(), s);
        manifest.push(m);
    }
    manifest.sort_by(|a, b| a.path.cmp(&b.path));
    // The lineage of each object: its digest, and the ETag and version id
    // the server answered with where the listing named none.
    let sha: BTreeMap<&str, &str> = manifest.iter().map(|m| (m.path.as_str(), m.sha256.as_str())).collect();
    for o in &mut objects {
        o.sha256 = sha.get(o.path.as_str()).copied().unwrap_or_default().to_string();
        if let Some(s) = served.remove(&o.path) {
            o.etag = o.etag.take().or(s.etag);
            o.version_id = o.version_id.take().or(s.version_id);
        }
    }
    remove_stale(&model_dir, &manifest).await?;
    if let Some(bar) = &job.progress.bar {
        bar.finish_and_clear();
    }
    let fetched = Fetched {
        model_dir,
        content_digest: content_digest(&manifest),
        total_bytes: total,
        reused_files: manifest.len() - fetched_files,
        fetched_files,
        bytes_transferred: job.progress.transferred(),
        manifest,
        objects,
    };
    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        source = %source_url,
        files = fetched.manifest.len(),
        fetched = fetched.fetched_files,
        reused = fetched.reused_files,
        total_bytes = fetched.total_bytes,
        transferred = fetched.bytes_transferred,
        seconds = format!("{secs:.2}"),
        mib_per_sec = format!("{:.1}", fetched.bytes_transferred as f64 / 1048576.0 / secs.max(1e-9)),
        digest = %fetched.content_digest,
        "model fetched"
    );
    Ok(fetched)
}

/// Entries for objects a registry resolved: S3 objects without a listed
/// size are asked for it (a HEAD each, `concurrency` at once).
async fn planned_entries(
    req: &FetchRequest,
    planned: &[PlannedObject],
) -> Result<(Option<s3::Remote>, Vec<Entry>), StorageError> {
    let remote = match planned.iter().any(|p| matches!(p.location, Location::S3 { .. })) {
        true => Some(s3::Remote::connect(&req.s3).await?),
        false => None,
    };
    let remote_ref = remote.as_ref();
    let entries = futures::stream::iter(planned.to_vec())
        .map(|p: PlannedObject| {
            let remote = remote_ref;
            async move {
                let rel = safe_relative(&p.rel).map_err(|reason| StorageError::UnsafeKey {
                    url: p.rel.clone(),
                    rel: p.rel.clone(),
                    reason,
                })?;
                let md5 = match &p.md5 {
                    Some(Md5Check::Plain(h)) => format!("|md5={h}"),
                    Some(Md5Check::Dos2Unix(h)) => format!("|md5-dos2unix={h}"),
                    None => String::new(),
                };
                let mut entry = match &p.location {
                    Location::S3 { bucket, key } => {
                        let remote = remote.expect("connected above");
                        let mut listed = remote.list(bucket, key, None).await?;
                        if listed.len() != 1 {
                            let url = format!("s3://{bucket}/{key}");
                            return Err(StorageError::NotFound { url, endpoint: req.s3.endpoint.clone() });
                        }
                        listed.remove(0)
                    }
                    Location::Http { url } => Entry {
                        rel: String::new(),
                        size: p.size.unwrap_or(0),
                        origin: Origin::Http { url: url.clone() },
                        etag: None,
                        identity: format!("http|{}|size={}", crate::secret::mask(url), p.size.unwrap_or(0)),
                        md5: None,
                    },
                };
                if let Some(size) = p.size
                    && size != entry.size
                {
                    return Err(StorageError::Mismatch {
                        url: entry.url(),
                        what: "size".into(),
                        expected: format!("{size} bytes (as the registry lists it)"),
                        actual: format!("{} bytes", entry.size),
                    });
                }
                entry.rel = rel;
                entry.identity.push_str(&md5);
                entry.md5 = p.md5.clone();
                Ok::<_, StorageError>(entry)
            }
        })
        .buffered(req.concurrency.max(1))
        .try_collect()
        .await?;
    Ok((remote, entries))
}

/// Two keys normalising to one path, or a file where another key needs a
/// directory, would overwrite each other: refuse before writing anything.
fn check_conflicts(entries: &[Entry]) -> Result<(), StorageError> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.rel.cmp(&b.rel));
    let mut seen: BTreeMap<&str, &Entry> = BTreeMap::new();
    for e in &sorted {
        if let Some(prev) = seen.insert(e.rel.as_str(), e) {
            return Err(StorageError::PathConflict { first: prev.url(), second: e.url() });
        }
    }
    for e in &sorted {
        let mut parent = e.rel.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            if let Some(file) = seen.get(p) {
                return Err(StorageError::PathConflict { first: file.url(), second: e.url() });
            }
            parent = p;
        }
    }
    Ok(())
}

/// Make sure `entry` sits complete and verified under its final name;
/// returns its manifest line and whether it had to be transferred.
async fn ensure(job: &Job, entry: &Entry, expect: Option<&str>) -> Result<(ManifestEntry, bool, Served), StorageError> {
    let final_path = job.final_path(&entry.rel);
    if let Some((sha256, served)) = verify::reusable(job, entry).await? {
        if let Some(want) = expect
            && want != sha256
        {
            // The file was verified against its source, but the pipeline now
            // pins another digest: report it as the mismatch it is.
            return Err(StorageError::Mismatch {
                url: entry.url(),
                what: "expectSha256".into(),
                expected: want.into(),
                actual: sha256,
            });
        }
        job.progress.skip(entry.size);
        tracing::info!(path = %entry.rel, size = entry.size, sha256 = %sha256, "kept (already complete and verified)");
        return Ok((ManifestEntry { path: entry.rel.clone(), size: entry.size, sha256 }, false, served));
    }
    let partial = job.partial_path(&entry.rel);
    for p in [&partial, &final_path] {
        let dir = p.parent().expect("joined path has a parent");
        tokio::fs::create_dir_all(dir).await.map_err(|e| StorageError::io("create directory", dir, e))?;
    }
    let (checks, digests, served) = match &entry.origin {
        Origin::S3 { .. } => {
            let remote = job.s3.as_ref().expect("S3 entries come with a client");
            let got = remote.download(job, entry, &partial).await?;
            (got.checks, got.digests, got.served)
        }
        Origin::File { path } => (local::copy(job, path, &partial, entry.size).await?, None, Served::default()),
        Origin::Http { url } => (http::download(job, entry, url, &partial).await?, None, Served::default()),
    };
    let verified = match &digests {
        Some(d) => verify::check_digests(&partial, entry, &checks, d, expect).await,
        None => verify::check(&partial, entry, &checks, expect).await,
    };
    let verified = match (verified, &entry.md5) {
        (Ok(sha), Some(md5)) => verify::check_md5(&partial, entry, md5).await.map(|()| sha),
        (other, _) => other,
    };
    let sha256 = match verified {
        Ok(sha) => sha,
        Err(e) => {
            // Corrupt bytes must not be resumed from: start over next time.
            verify::discard(job, &entry.rel).await;
            return Err(e);
        }
    };
    verify::commit(job, entry, &partial, &final_path, &sha256, &served).await?;
    tracing::info!(path = %entry.rel, size = entry.size, sha256 = %sha256, "fetched");
    Ok((ManifestEntry { path: entry.rel.clone(), size: entry.size, sha256 }, true, served))
}

/// Remove files under the model directory that the manifest does not list
/// (left by an earlier run with another source or filter), and emptied dirs.
async fn remove_stale(model_dir: &Path, manifest: &[ManifestEntry]) -> Result<(), StorageError> {
    let keep: std::collections::HashSet<PathBuf> = manifest.iter().map(|m| model_dir.join(&m.path)).collect();
    let root = model_dir.to_path_buf();
    tokio::task::spawn_blocking(move || prune(&root, &keep, true).map(|_| ())).await.expect("prune does not panic")
}

/// Returns whether `dir` is empty afterwards.
fn prune(dir: &Path, keep: &std::collections::HashSet<PathBuf>, root: bool) -> Result<bool, StorageError> {
    let mut empty = true;
    let rd = std::fs::read_dir(dir).map_err(|e| StorageError::io("read directory", dir, e))?;
    for item in rd {
        let item = item.map_err(|e| StorageError::io("read directory", dir, e))?;
        let path = item.path();
        let ft = item.file_type().map_err(|e| StorageError::io("stat", &path, e))?;
        if ft.is_dir() {
            if prune(&path, keep, false)? {
                std::fs::remove_dir(&path).map_err(|e| StorageError::io("remove directory", &path, e))?;
            } else {
                empty = false;
            }
        } else if keep.contains(&path) {
            empty = false;
        } else {
            tracing::info!(path = %path.display(), "removing file that is no longer part of the model");
            std::fs::remove_file(&path).map_err(|e| StorageError::io("remove", &path, e))?;
        }
    }
    Ok(empty && !root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, size: u64, sha: &str) -> ManifestEntry {
        ManifestEntry { path: path.into(), size, sha256: sha.into() }
    }

    #[test]
    fn digest_is_stable_over_order_and_sensitive_to_content() {
        let a = vec![e("a", 1, "aa"), e("b/c", 2, "bb")];
        let b = vec![e("b/c", 2, "bb"), e("a", 1, "aa")];
        assert_eq!(content_digest(&a), content_digest(&b));
        assert!(content_digest(&a).starts_with("sha256:"));
        assert_ne!(content_digest(&a), content_digest(&[e("a", 1, "aa"), e("b/c", 2, "bc")]));
        assert_ne!(content_digest(&a), content_digest(&[e("a", 1, "aa"), e("b/d", 2, "bb")]));
    }

    #[test]
    fn a_served_identity_drops_quotes_and_the_null_version() {
        assert_eq!(
            Served::of(Some("\"abc-2\""), Some("3HL4kqtJ")),
            Served { etag: Some("abc-2".into()), version_id: Some("3HL4kqtJ".into()) }
        );
        // `null`: stored before the bucket was versioned, nothing to pin.
        assert_eq!(Served::of(Some(""), Some("null")), Served::default());
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            Source::parse("s3://models/weather/").unwrap(),
            Source::S3 { bucket: "models".into(), key: "weather/".into() }
        );
        assert!(Source::parse("s3://models/weather/").unwrap().is_prefix());
        assert!(Source::parse("s3://models").unwrap().is_prefix());
        assert!(!Source::parse("s3://models/w.pkl").unwrap().is_prefix());
        assert_eq!(Source::parse("file://./m").unwrap(), Source::File { path: "./m".into() });
        for bad in ["s3:///k", "http://x/y", "s3://bu cket/k", "file://", "s3://b//k"] {
            let err = Source::parse(bad).unwrap_err();
            assert!(matches!(err, StorageError::BadSource { .. }), "{bad}: {err}");
            assert_eq!(err.exit_class(), ExitClass::BadInput);
        }
    }

    fn entry(rel: &str) -> Entry {
        Entry {
            rel: rel.into(),
            size: 0,
            origin: Origin::S3 { bucket: "b".into(), key: rel.into(), version_id: None },
            etag: None,
            identity: String::new(),
            md5: None,
        }
    }

    #[test]
    fn conflicting_paths_are_refused() {
        assert!(check_conflicts(&[entry("a"), entry("b/c")]).is_ok());
        assert!(matches!(check_conflicts(&[entry("a"), entry("a")]), Err(StorageError::PathConflict { .. })));
        let err = check_conflicts(&[entry("a/b/c"), entry("a")]).unwrap_err();
        assert_eq!(err.to_string(), "objects `s3://b/a` and `s3://b/a/b/c` map to conflicting local paths");
    }
}
