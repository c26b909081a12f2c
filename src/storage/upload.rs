//! `modelship model push DIR s3://BUCKET/PREFIX/`: every file under a
//! directory into S3, as the notebook upload the practitioner starts with,
//! done right. Files up to the multipart threshold go up in one PUT; bigger
//! ones as a multipart upload whose parts go up in parallel. Every object
//! carries the SHA-256 of its bytes as metadata (`x-amz-meta-sha256`), and
//! the manifest ends with the model's content digest: the one `fetch-model`
//! computes for the same files ([`super::content_digest`]).
//!
//! A PUT's SHA-256 is computed as the file is read for it. A multipart
//! upload takes its metadata when it is created, so a big file is read once
//! first for its SHA-256 (SHA-NI: a fraction of the upload's time), and its
//! parts are then read again, from the page cache, each hashed with MD5 on
//! its own blocking thread and sent with that Content-MD5 (the check S3
//! makes; the SDK adds no other checksum). An open multipart upload is
//! recorded as its parts complete (upload id, part size, the file's SHA-256
//! and each part's ETag) under `$XDG_CACHE_HOME/modelship/push/`, so the
//! same command after an interruption continues that upload: a recorded
//! part is kept only when its ETag is the MD5 of the local part now, and
//! only the rest is sent (S3 has no call that names an upload's metadata,
//! and moto, which the tests use, answers ListParts with a root element the
//! SDK refuses).
//! After each file a HEAD checks the object: its size, its `sha256`
//! metadata, and for a multipart object its ETag (the MD5 of the parts'
//! MD5s). A file already in S3 with the same size and `sha256` is skipped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};
use md5::Digest as _;
use serde::Serialize;
use tokio::sync::Semaphore;

use super::{Filter, ManifestEntry, S3Options, StorageError, s3::Remote};

/// S3's smallest part (all but the last), and its most parts per upload.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PART_SIZE: u64 = 5 << 30;
const MAX_PARTS: u64 = 10_000;
pub const DEFAULT_THRESHOLD: u64 = 20 << 20;
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;
/// The metadata key of an object's SHA-256 (`x-amz-meta-sha256`).
pub const SHA256_METADATA: &str = "sha256";

/// What to push where.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub dir: PathBuf,
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    pub s3: S3Options,
    pub exclude: Vec<String>,
    /// Files bigger than this go up as multipart uploads.
    pub multipart_threshold: u64,
    pub part_size: u64,
    /// Requests in flight at once, across all files.
    pub concurrency: usize,
    pub progress: bool,
}

/// One file of the manifest `model push` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushedFile {
    pub path: String,
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub etag: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// 0 for a single PUT.
    pub parts: u32,
    /// `uploaded`, `resumed` (some parts were in S3 already) or `unchanged`.
    pub action: &'static str,
}

/// What `model push` did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushManifest {
    pub destination: String,
    pub files: Vec<PushedFile>,
    pub total_bytes: u64,
    pub bytes_uploaded: u64,
    /// The digest `fetch-model` computes for these files.
    pub content_digest: String,
    pub seconds: f64,
}

/// One local file to push.
struct Local {
    rel: String,
    path: PathBuf,
    size: u64,
}

struct Push {
    remote: Remote,
    req: PushRequest,
    requests: Semaphore,
    bar: Option<indicatif::ProgressBar>,
    uploaded: std::sync::atomic::AtomicU64,
}

impl Push {
    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.req.bucket)
    }
    fn sent(&self, n: u64) {
        self.uploaded.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
}

/// Check the sizes a push takes (S3's limits on parts).
pub fn check_sizes(threshold: u64, part_size: u64) -> Result<(), String> {
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&part_size) {
        return Err(format!("--part-size must be between 5MiB (S3's smallest part) and 5GiB, found {part_size} bytes"));
    }
    if threshold < part_size.min(MIN_PART_SIZE) {
        return Err(format!("--multipart-threshold must be at least 5MiB, found {threshold} bytes"));
    }
    Ok(())
}

/// Push every file under `req.dir` (less `exclude`) to `s3://bucket/prefix`.
pub async fn push(req: PushRequest) -> Result<PushManifest, StorageError> {
    let started = Instant::now();
    let destination = format!("s3://{}/{}", req.bucket, req.prefix);
    let bad = |reason: String| StorageError::BadSource { source_url: req.dir.display().to_string(), reason };
    check_sizes(req.multipart_threshold, req.part_size).map_err(bad)?;
    let filter = Filter::new(&[], &req.exclude).map_err(|(_, e)| bad(format!("--exclude {e}")))?;
    let meta = std::fs::metadata(&req.dir).map_err(|e| StorageError::io("read", &req.dir, e))?;
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    let listed = super::local::list(&req.dir).await?;
    let any = !listed.is_empty();
    let files: Vec<Local> = listed
        .into_iter()
        .filter(|e| filter.matches(&e.rel))
        .map(|e| Local {
            path: match e.origin {
                super::Origin::File { path } => path,
                _ => unreachable!("local listing"),
            },
            rel: e.rel,
            size: e.size,
        })
        .collect();
    if files.is_empty() {
        return Err(StorageError::Empty { url: format!("file://{}", req.dir.display()), filtered: any });
    }
    for f in &files {
        if f.size > req.part_size.saturating_mul(MAX_PARTS) {
            return Err(bad(format!(
                "`{}` ({} bytes) needs more than {MAX_PARTS} parts of {} bytes: raise --part-size",
                f.rel, f.size, req.part_size
            )));
        }
    }
    let total: u64 = files.iter().map(|f| f.size).sum();
    let remote = Remote::connect(&req.s3).await?;
    let bar = req.progress.then(|| super::progress_bar(total, "push"));
    let concurrency = req.concurrency.max(1);
    let job = Arc::new(Push { remote, requests: Semaphore::new(concurrency), bar, uploaded: 0.into(), req });
    let mut pushed: Vec<PushedFile> = futures::stream::iter(files)
        .map(|f| {
            let job = job.clone();
            async move { push_file(&job, &f).await }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    if let Some(b) = &job.bar {
        b.finish_and_clear();
    }
    pushed.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest: Vec<ManifestEntry> =
        pushed.iter().map(|p| ManifestEntry { path: p.path.clone(), size: p.size, sha256: p.sha256.clone() }).collect();
    let seconds = started.elapsed().as_secs_f64();
    let uploaded = job.uploaded.load(std::sync::atomic::Ordering::Relaxed);
    let out = PushManifest {
        destination,
        files: pushed,
        total_bytes: total,
        bytes_uploaded: uploaded,
        content_digest: super::content_digest(&manifest),
        seconds,
    };
    tracing::info!(
        destination = %out.destination, files = out.files.len(), total_bytes = total, uploaded,
        seconds = format!("{seconds:.2}"), mib_per_sec = format!("{:.1}", uploaded as f64 / 1048576.0 / seconds.max(1e-9)),
        digest = %out.content_digest, "model pushed"
    );
    Ok(out)
}

/// What S3 has at a key: size, ETag, `sha256` metadata, version.
struct Head {
    size: u64,
    etag: String,
    sha256: Option<String>,
    version_id: Option<String>,
}

async fn head(job: &Push, key: &str) -> Result<Option<Head>, StorageError> {
    let _permit = job.requests.acquire().await.expect("semaphore never closed");
    match job.remote.client().head_object().bucket(&job.req.bucket).key(key).send().await {
        Ok(h) => Ok(Some(Head {
            size: h.content_length().unwrap_or(0).max(0) as u64,
            etag: h.e_tag().unwrap_or_default().trim_matches('"').to_string(),
            sha256: h.metadata().and_then(|m| m.get(SHA256_METADATA)).cloned(),
            version_id: h.version_id().filter(|v| *v != "null").map(str::to_string),
        })),
        Err(e) => match job.remote.map_error("HEAD", &job.req.bucket, key, e) {
            StorageError::NotFound { .. } => Ok(None),
            other => Err(other),
        },
    }
}

async fn push_file(job: &Push, f: &Local) -> Result<PushedFile, StorageError> {
    let key = format!("{}{}", job.req.prefix, f.rel);
    let multipart = f.size > job.req.multipart_threshold;
    // The first read: SHA-256 of the file (a PUT's bytes are kept in memory
    // here and sent as they are).
    let (path, size) = (f.path.clone(), f.size);
    let (sha256, body) = tokio::task::spawn_blocking(move || hash_file(&path, size, !multipart))
        .await
        .expect("hashing does not panic")
        .map_err(|e| StorageError::io("read", &f.path, e))?;
    if let Some(h) = head(job, &key).await?
        && h.size == f.size
        && h.sha256.as_deref() == Some(sha256.as_str())
    {
        tracing::info!(path = %f.rel, key = %key, "unchanged in S3 (same size and sha256); not uploaded");
        if let Some(b) = &job.bar {
            b.inc(f.size);
        }
        let parts = h.etag.rsplit_once('-').and_then(|(_, n)| n.parse().ok()).unwrap_or(0);
        return Ok(PushedFile {
            path: f.rel.clone(),
            key,
            size: f.size,
            sha256,
            etag: h.etag,
            version_id: h.version_id,
            parts,
            action: "unchanged",
        });
    }
    let (etag, parts, action) = if multipart {
        multipart_upload(job, f, &key, &sha256).await?
    } else {
        let (body, md5) = body.expect("read for the PUT");
        let _permit = job.requests.acquire().await.expect("semaphore never closed");
        let out = job
            .remote
            .client()
            .put_object()
            .bucket(&job.req.bucket)
            .key(&key)
            .metadata(SHA256_METADATA, &sha256)
            .content_md5(base64_of_hex(&md5))
            .body(ByteStream::from(body))
            .customize()
            .config_override(md5_only())
            .send()
            .await
            .map_err(|e| job.remote.map_error("PUT", &job.req.bucket, &key, e))?;
        job.sent(f.size);
        (out.e_tag().unwrap_or_default().trim_matches('"').to_string(), 0, "uploaded")
    };
    // What S3 now holds must be what was read.
    let h = head(job, &key).await?.ok_or_else(|| StorageError::NotFound { url: job.url(&key), endpoint: None })?;
    let mismatch = |what: &str, expected: String, actual: String| StorageError::Mismatch {
        url: job.url(&key),
        what: what.into(),
        expected,
        actual,
    };
    if h.size != f.size {
        return Err(mismatch("size after upload", format!("{} bytes", f.size), format!("{} bytes", h.size)));
    }
    if h.sha256.as_deref() != Some(sha256.as_str()) {
        return Err(mismatch(
            "sha256 metadata after upload",
            sha256.clone(),
            h.sha256.unwrap_or_else(|| "none".into()),
        ));
    }
    if !etag.is_empty() && h.etag != etag {
        return Err(mismatch("ETag after upload", etag.clone(), h.etag.clone()));
    }
    tracing::info!(path = %f.rel, key = %key, size = f.size, parts, sha256 = %sha256, action, "pushed");
    Ok(PushedFile { path: f.rel.clone(), key, size: f.size, sha256, etag, version_id: h.version_id, parts, action })
}

fn base64_of_hex(hex_md5: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_md5).unwrap_or_default())
}

/// A file's bytes and their hex MD5.
type Kept = (Vec<u8>, String);

/// SHA-256 of the file; with `keep` (a PUT), its bytes and their hex MD5.
fn hash_file(path: &Path, size: u64, keep: bool) -> std::io::Result<(String, Option<Kept>)> {
    let mut file = std::fs::File::open(path)?;
    let mut sha = sha2::Sha256::new();
    let mut kept = keep.then(|| Vec::with_capacity(size as usize));
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut sha, &buf[..n]);
        if let Some(k) = kept.as_mut() {
            k.extend_from_slice(&buf[..n]);
        }
        read += n as u64;
    }
    if read != size {
        return Err(std::io::Error::other(format!(
            "the file changed while it was read ({size} bytes listed, {read} read)"
        )));
    }
    let kept = kept.map(|k| {
        let md5 = hex::encode(md5::Md5::digest(&k));
        (k, md5)
    });
    Ok((hex::encode(sha2::Digest::finalize(sha)), kept))
}

/// Part `n` (1-based) of `f` in memory, and its hex MD5 (what S3 names it by).
async fn read_part(f: &Local, part_size: u64, n: u32) -> Result<(Vec<u8>, String), StorageError> {
    let offset = u64::from(n - 1) * part_size;
    let (path, len) = (f.path.clone(), (f.size - offset).min(part_size));
    tokio::task::spawn_blocking(move || {
        let bytes = read_at(&path, offset, len)?;
        let md5 = hex::encode(md5::Md5::digest(&bytes));
        Ok::<_, std::io::Error>((bytes, md5))
    })
    .await
    .expect("read does not panic")
    .map_err(|e| StorageError::io("read", &f.path, e))
}

/// Content-MD5 is the integrity check of every PUT and part here, so the
/// SDK computes no other checksum over the body.
fn md5_only() -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default()
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
}

/// The multipart upload of `f` to `key`, or the continuation of the one an
/// interrupted push of the same bytes recorded. Its ETag, part count and
/// whether it resumed. Each part is read, hashed (MD5, on a blocking
/// thread, so parts hash in parallel) and sent with its Content-MD5.
async fn multipart_upload(
    job: &Push,
    f: &Local,
    key: &str,
    sha256: &str,
) -> Result<(String, u32, &'static str), StorageError> {
    let (bucket, part_size) = (job.req.bucket.as_str(), job.req.part_size);
    let client = job.remote.client();
    let parts = f.size.div_ceil(part_size).max(1) as u32;

    // An open upload of this key, recorded by an earlier, interrupted push
    // of the same bytes in the same parts; a recorded part is kept only if
    // its ETag is the MD5 of the local part now.
    let record_path = record_path(bucket, key);
    let recorded = record_path
        .as_deref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<OpenUpload>(&b).ok())
        .filter(|r| r.sha256 == sha256 && r.size == f.size && r.part_size == part_size);
    let mut md5s: std::collections::BTreeMap<u32, String> = Default::default();
    let mut done: Vec<CompletedPart> = Vec::new();
    let upload_id = match recorded {
        Some(r) => {
            for (n, etag) in r.parts.iter().filter(|(n, _)| (1..=parts).contains(*n)) {
                let (_, md5) = read_part(f, part_size, *n).await?;
                if etag.trim_matches('"') == md5 {
                    done.push(CompletedPart::builder().part_number(*n as i32).e_tag(etag.clone()).build());
                    md5s.insert(*n, md5);
                    if let Some(b) = &job.bar {
                        b.inc((f.size - u64::from(n - 1) * part_size).min(part_size));
                    }
                }
            }
            tracing::info!(key, upload_id = %r.upload_id, parts_kept = done.len(), parts, "resuming an interrupted multipart upload");
            Some(r.upload_id)
        }
        None => None,
    };
    let resumed = upload_id.is_some();
    let upload_id = match upload_id {
        Some(id) => id,
        None => client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .metadata(SHA256_METADATA, sha256)
            .send()
            .await
            .map_err(|e| job.remote.map_error("start the multipart upload of", bucket, key, e))?
            .upload_id()
            .unwrap_or_default()
            .to_string(),
    };
    let record = std::sync::Mutex::new(OpenUpload {
        upload_id: upload_id.clone(),
        sha256: sha256.to_string(),
        size: f.size,
        part_size,
        parts: done.iter().filter_map(|p| Some((p.part_number()? as u32, p.e_tag()?.to_string()))).collect(),
    });
    let save = |r: &OpenUpload| {
        if let Some(path) = &record_path {
            let _ = path.parent().map(std::fs::create_dir_all);
            let tmp = path.with_extension("tmp");
            let written = std::fs::write(&tmp, serde_json::to_vec(r).expect("serialisable"));
            if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
                tracing::warn!(path = %path.display(), error = %e, "cannot record the open upload; an interruption will start it over");
            }
        }
    };
    save(&record.lock().unwrap_or_else(|e| e.into_inner()));
    let todo: Vec<u32> = (1..=parts).filter(|n| !md5s.contains_key(n)).collect();
    let sent = futures::stream::iter(todo)
        .map(|n| {
            let upload_id = upload_id.clone();
            let (record, save) = (&record, &save);
            async move {
                let _permit = job.requests.acquire().await.expect("semaphore never closed");
                let (bytes, md5) = read_part(f, part_size, n).await?;
                let len = bytes.len() as u64;
                let out = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(n as i32)
                    .content_md5(base64_of_hex(&md5))
                    .body(ByteStream::from(bytes))
                    .customize()
                    .config_override(md5_only())
                    .send()
                    .await
                    .map_err(|e| job.remote.map_error("upload a part of", bucket, key, e))?;
                job.sent(len);
                let etag = out.e_tag().unwrap_or_default().to_string();
                {
                    let mut r = record.lock().unwrap_or_else(|e| e.into_inner());
                    r.parts.insert(n, etag.clone());
                    save(&r);
                }
                Ok::<_, StorageError>((n, md5, CompletedPart::builder().part_number(n as i32).e_tag(etag).build()))
            }
        })
        .buffer_unordered(job.req.concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut failed = None;
    for r in sent {
        match r {
            Ok((n, md5, p)) => {
                md5s.insert(n, md5);
                done.push(p);
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        // The upload stays open: the same command resumes it.
        return Err(StorageError::PushInterrupted {
            url: job.url(key),
            done: done.len() as u32,
            parts,
            source: Box::new(e),
        });
    }
    done.sort_by_key(|p| p.part_number());
    let completed = client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(done)).build())
        .send()
        .await;
    let completed = match completed {
        Ok(c) => c,
        Err(e) => {
            let err = job.remote.map_error("complete the multipart upload of", bucket, key, e);
            // An upload that is gone (aborted, expired) cannot be resumed.
            if matches!(err, StorageError::NotFound { .. })
                && let Some(p) = &record_path
            {
                let _ = std::fs::remove_file(p);
            }
            return Err(err);
        }
    };
    if let Some(p) = &record_path {
        let _ = std::fs::remove_file(p);
    }
    let etag = completed.e_tag().unwrap_or_default().trim_matches('"').to_string();
    let md5s: Vec<String> = md5s.into_values().collect();
    let want = super::verify::composite_of(&md5s).unwrap_or_default();
    if etag != want {
        return Err(StorageError::Mismatch {
            url: job.url(key),
            what: "multipart ETag (MD5 of the parts' MD5s)".into(),
            expected: want,
            actual: etag,
        });
    }
    Ok((etag, parts, if resumed { "resumed" } else { "uploaded" }))
}

/// An open multipart upload, as recorded for a resume.
#[derive(Debug, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenUpload {
    upload_id: String,
    sha256: String,
    size: u64,
    part_size: u64,
    /// Part number -> ETag.
    parts: std::collections::BTreeMap<u32, String>,
}

/// `$XDG_CACHE_HOME/modelship/push/<sha256 of s3://bucket/key>.json`.
fn record_path(bucket: &str, key: &str) -> Option<PathBuf> {
    let name = hex::encode(sha2::Sha256::digest(format!("s3://{bucket}/{key}").as_bytes()));
    dirs::cache_dir().map(|d| d.join("modelship/push").join(format!("{name}.json")))
}

fn read_at(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_follow_s3s_limits() {
        assert!(check_sizes(DEFAULT_THRESHOLD, DEFAULT_PART_SIZE).is_ok());
        assert!(check_sizes(DEFAULT_THRESHOLD, 4 << 20).unwrap_err().contains("5MiB"));
        assert!(check_sizes(1 << 20, DEFAULT_PART_SIZE).unwrap_err().contains("--multipart-threshold"));
    }

    #[test]
    fn a_file_hashes_as_read_and_its_parts_as_s3_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let (sha, kept) = hash_file(&path, 25, true).unwrap();
        assert_eq!(sha, hex::encode(sha2::Sha256::digest(&data)));
        assert_eq!(kept, Some((data.clone(), hex::encode(md5::Md5::digest(&data)))));
        assert_eq!(hash_file(&path, 25, false).unwrap().1, None);
        assert!(hash_file(&path, 30, false).is_err(), "a size that changed is an error");
        let f = Local { rel: "f".into(), path, size: 25 };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (bytes, md5) = rt.block_on(read_part(&f, 10, 3)).unwrap();
        assert_eq!((bytes.as_slice(), md5), (&data[20..], hex::encode(md5::Md5::digest(&data[20..]))));
    }
}
