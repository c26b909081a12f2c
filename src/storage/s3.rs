//! S3-compatible storage through aws-sdk-s3: client setup, listing, and
//! downloads as (parallel, resumable) ranged GETs written at their offsets.

use std::io::{Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{ChecksumMode, ChecksumType, ServerSideEncryption};
use aws_smithy_checksums::ChecksumAlgorithm;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Mutex;

use super::verify::{self, Checks, CompositeEtag, RangeState};
use super::{Entry, Job, Origin, S3Options, Served, StorageError, UnsafePath, safe_relative};

/// [`checks_of`] for a GET or HEAD answer: the SDK gives both output types
/// the same accessors but no shared trait.
macro_rules! checks_of_answer {
    ($out:expr, $etag:expr) => {
        checks_of(
            $etag,
            $out.server_side_encryption(),
            $out.sse_customer_algorithm(),
            $out.checksum_type(),
            [
                (ChecksumAlgorithm::Sha256, $out.checksum_sha256()),
                (ChecksumAlgorithm::Sha1, $out.checksum_sha1()),
                (ChecksumAlgorithm::Crc32, $out.checksum_crc32()),
                (ChecksumAlgorithm::Crc32c, $out.checksum_crc32_c()),
                (ChecksumAlgorithm::Crc64Nvme, $out.checksum_crc64_nvme()),
            ],
        )
    };
}

/// Attempts per range before a dropped connection becomes an error.
const MAX_ATTEMPTS: u32 = crate::retry::Backoff::DOWNLOAD.attempts;
/// Bytes gathered from the body before one positioned write.
const WRITE_CHUNK: usize = 1 << 20;
/// Bytes the hasher reads back at a time.
const HASH_CHUNK: usize = 1 << 20;
/// Multipart parts up to this size are fetched one range per part.
const MAX_PART_RANGE: u64 = 64 << 20;
/// A body that sends nothing for this long counts as dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct Remote {
    client: aws_sdk_s3::Client,
    endpoint: Option<String>,
}

/// A plain-HTTP endpoint is refused unless `insecure` is set; it is named in
/// the log when it is used.
pub fn check_endpoint(endpoint: &str, insecure: bool) -> Result<(), StorageError> {
    let bad = |reason: &str| StorageError::BadEndpoint { endpoint: endpoint.into(), reason: reason.into() };
    let url = url::Url::parse(endpoint).map_err(|e| bad(&format!("not a URL ({e})")))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if insecure => Ok(()),
        "http" => Err(bad("plain HTTP sends credentials and data unencrypted; set `insecure: true` to allow it")),
        other => Err(bad(&format!("scheme `{other}` is neither https nor http"))),
    }
}

/// What a listing or HEAD says about one object.
struct Listed {
    size: u64,
    etag: Option<String>,
    /// Last-Modified, as the server formats it.
    modified: Option<String>,
    version_id: Option<String>,
}

impl Remote {
    pub async fn connect(opts: &S3Options) -> Result<Remote, StorageError> {
        // Without an explicit endpoint the SDK reads these itself; they get
        // the same plain-HTTP rule.
        let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()));
        let endpoint = opts.endpoint.clone().or(env_endpoint);
        if let Some(ep) = &endpoint {
            check_endpoint(ep, opts.insecure)?;
            if ep.starts_with("http://") {
                tracing::warn!(endpoint = %ep, "insecure: using plain HTTP to the S3 endpoint");
            }
        }
        let fallback = aws_config::Region::from_static(super::DEFAULT_REGION);
        let region = match (&opts.region, &endpoint) {
            (Some(r), _) => RegionProviderChain::first_try(aws_config::Region::new(r.clone())),
            // An S3-compatible endpoint (Ceph RGW, MinIO, ...) takes any
            // region; asking EC2's metadata service for one only stalls off EC2.
            (None, Some(_)) => {
                RegionProviderChain::first_try(aws_config::environment::EnvironmentVariableRegionProvider::new())
                    .or_else(fallback)
            }
            (None, None) => RegionProviderChain::default_provider().or_else(fallback),
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region).timeout_config(
            aws_config::timeout::TimeoutConfig::builder().connect_timeout(Duration::from_secs(10)).build(),
        );
        if let Some(ep) = &opts.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if let Some(c) = &opts.credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                c.access_key_id.expose(),
                c.secret_access_key.expose(),
                c.session_token.as_ref().map(|t| t.expose().to_string()),
                None,
                "modelship-static",
            ));
        }
        let shared = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if endpoint.is_some() {
            // Ceph, MinIO and OCS route by path, not by bucket host names.
            conf = conf.force_path_style(true);
        }
        Ok(Remote { client: aws_sdk_s3::Client::from_conf(conf.build()), endpoint })
    }

    fn url(bucket: &str, key: &str) -> String {
        format!("s3://{bucket}/{key}")
    }

    /// The objects of `s3://bucket/key`: one object, or every object under
    /// the prefix (a key ending in `/`, or a key that is no object but has
    /// objects under `key/`).
    pub async fn list(&self, bucket: &str, key: &str, version_id: Option<&str>) -> Result<Vec<Entry>, StorageError> {
        if !(key.is_empty() || key.ends_with('/')) {
            let mut head = self.client.head_object().bucket(bucket).key(key);
            if let Some(v) = version_id {
                head = head.version_id(v);
            }
            match head.send().await {
                Ok(out) => {
                    let name = key.rsplit('/').next().unwrap_or(key);
                    let size = out.content_length().unwrap_or(0).max(0) as u64;
                    let etag = out.e_tag().map(|e| e.trim_matches('"').to_string());
                    let version = version_id.map(str::to_string).or(out.version_id().map(str::to_string));
                    let modified = out.last_modified().map(|t| t.to_string());
                    return Ok(vec![self.entry(
                        bucket,
                        key,
                        name,
                        Listed { size, etag, modified, version_id: version },
                    )?]);
                }
                Err(e) if status(&e) == Some(404) && version_id.is_none() => {
                    let under = format!("{key}/");
                    let found = self.list_prefix(bucket, &under).await?;
                    if found.is_empty() {
                        return Err(StorageError::NotFound {
                            url: Self::url(bucket, key),
                            endpoint: self.endpoint.clone(),
                        });
                    }
                    tracing::info!(url = %Self::url(bucket, &under), "no such object; fetching the prefix");
                    return Ok(found);
                }
                Err(e) => return Err(self.error("HEAD", bucket, key, e)),
            }
        }
        self.list_prefix(bucket, key).await
    }

    async fn list_prefix(&self, bucket: &str, prefix: &str) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("list", bucket, prefix, e))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                let size = obj.size().unwrap_or(0).max(0) as u64;
                // Zero-byte "folder" markers made by consoles are not files.
                if key.ends_with('/') && size == 0 {
                    continue;
                }
                let rel = &key[prefix.len()..];
                let etag = obj.e_tag().map(|e| e.trim_matches('"').to_string());
                let modified = obj.last_modified().map(|t| t.to_string());
                out.push(self.entry(bucket, key, rel, Listed { size, etag, modified, version_id: None })?);
            }
        }
        Ok(out)
    }

    fn entry(&self, bucket: &str, key: &str, rel: &str, listed: Listed) -> Result<Entry, StorageError> {
        let Listed { size, etag, modified, version_id } = listed;
        let safe = safe_relative(rel).map_err(|reason: UnsafePath| StorageError::UnsafeKey {
            url: Self::url(bucket, key),
            rel: rel.to_string(),
            reason,
        })?;
        // The ETag (with size and version) names the content, wherever it is
        // served from. Servers that list no ETag (s3s-fs) still give the
        // modification time, which every overwrite changes: size plus that
        // time is what `aws s3 sync` trusts. With neither, nothing proves a
        // local copy current, so the identity never matches a record.
        let version = version_id.as_deref().unwrap_or("");
        let identity = match (&etag, &modified) {
            (Some(etag), _) => format!("s3|etag={etag}|size={size}|version={version}"),
            (None, Some(modified)) => format!("s3|modified={modified}|size={size}|version={version}"),
            (None, None) => format!("s3|unidentified|{}", rand::random::<u64>()),
        };
        Ok(Entry {
            rel: safe,
            size,
            origin: Origin::S3 { bucket: bucket.into(), key: key.into(), version_id },
            etag,
            identity,
            md5: None,
        })
    }

    fn error<E>(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let url = Self::url(bucket, key);
        let code = err.code().map(str::to_string);
        let st = status(&err);
        match (code.as_deref(), st) {
            (Some("NoSuchBucket"), _) => {
                return StorageError::NoSuchBucket { bucket: bucket.into(), endpoint: self.endpoint.clone() };
            }
            (Some("NoSuchKey" | "NoSuchVersion"), _) | (_, Some(404)) => {
                return StorageError::NotFound { url, endpoint: self.endpoint.clone() };
            }
            (Some("PreconditionFailed"), _) | (_, Some(412)) => return StorageError::Changed { url },
            (Some(c @ ("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "ExpiredToken")), _) => {
                return StorageError::AccessDenied { url, code: c.to_string() };
            }
            (_, Some(401 | 403)) => {
                return StorageError::AccessDenied {
                    url,
                    code: code.unwrap_or_else(|| format!("HTTP {}", st.unwrap_or(0))),
                };
            }
            _ => {}
        }
        let retryable = match &err {
            SdkError::ServiceError(_) => {
                matches!(st, Some(429 | 500..=599)) || matches!(code.as_deref(), Some("SlowDown" | "RequestTimeout"))
            }
            SdkError::ConstructionFailure(_) => false,
            _ => true,
        };
        let message = DisplayErrorContext(&err).to_string();
        StorageError::Request { op, url, message, retryable, source: Some(Box::new(err)) }
    }

    /// A small object's bytes in memory (a DVC `.dir` listing), refused
    /// above `limit` bytes.
    pub async fn get_bytes(&self, bucket: &str, key: &str, limit: u64) -> Result<Vec<u8>, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("GET", bucket, key, e))?;
        let url = Self::url(bucket, key);
        if out.content_length().is_some_and(|n| n as u64 > limit) {
            return Err(StorageError::Mismatch {
                url,
                what: "size".into(),
                expected: format!("at most {limit} bytes"),
                actual: format!("{} bytes", out.content_length().unwrap_or(0)),
            });
        }
        let bytes = out.body.collect().await.map_err(|e| StorageError::Request {
            op: "GET",
            url: url.clone(),
            message: DisplayErrorContext(&e).to_string(),
            retryable: true,
            source: Some(Box::new(e)),
        })?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// The SDK client, for the upload (`model push`).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Map an SDK error the way every other call here does.
    pub fn map_error<E>(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        err: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.error(op, bucket, key, err)
    }

    /// Download `entry` into `partial`: one GET for small objects, ranged GETs
    /// for bigger ones, each retried from the byte where its connection
    /// dropped. Completed ranges are recorded so another call continues from
    /// them. A ranged download is hashed while it arrives (see [`Frontier`]);
    /// the digests come back with the checks unless an earlier call wrote
    /// part of the file, which is then hashed after the fact.
    pub async fn download(&self, job: &Job, entry: &Entry, partial: &Path) -> Result<Downloaded, StorageError> {
        let Origin::S3 { bucket, key, version_id } = &entry.origin else { unreachable!("S3 entry") };
        let size = entry.size;
        let whole = size <= job.req.part_size.max(1);
        let mut checks = Checks::default();
        let mut served = Served::default();
        if !whole {
            // Ranged responses carry no whole-object checksum: ask for it once.
            let mut head = self.client.head_object().bucket(bucket).key(key).checksum_mode(ChecksumMode::Enabled);
            if let Some(v) = version_id {
                head = head.version_id(v);
            }
            let out = head.send().await.map_err(|e| self.error("HEAD", bucket, key, e))?;
            served = Served::of(out.e_tag(), out.version_id());
            let etag = out.e_tag().map(|e| e.trim_matches('"'));
            if let (Some(listed), Some(now)) = (entry.etag.as_deref(), etag)
                && listed != now
            {
                return Err(StorageError::Changed { url: entry.url() });
            }
            checks = checks_of_answer!(out, etag);
            if let Some(c) = checks.composite_etag.as_mut() {
                c.part_sizes = self.part_sizes(job, entry, c.parts).await;
            }
        }
        // A multipart object is fetched part by part when its parts are of a
        // size that keeps every request busy: each range then hashes its own
        // part's MD5 as it arrives, on as many cores as there are ranges,
        // instead of one sequential MD5 over the whole file.
        let by_parts = checks
            .composite_etag
            .as_ref()
            .filter(|c| c.parts > 1 && c.ready(size) && c.part_sizes.iter().all(|&p| p > 0 && p <= MAX_PART_RANGE))
            .map(|c| c.part_sizes.clone());
        let (part_size, ranges): (u64, Vec<(u64, u64)>) = match &by_parts {
            Some(sizes) => {
                let mut at = 0;
                (
                    0,
                    sizes
                        .iter()
                        .map(|&n| {
                            (at, {
                                at += n;
                                at
                            })
                        })
                        .collect(),
                )
            }
            None if whole => (job.req.part_size.max(1), vec![(0, size)]),
            None => {
                let part = job.req.part_size.max(1);
                (part, (0..size.div_ceil(part)).map(|i| (i * part, ((i + 1) * part).min(size))).collect())
            }
        };

        let previous = verify::load_ranges(&job.ranges_path(&entry.rel)).await;
        let mut state = RangeState {
            identity: entry.identity.clone(),
            part_size,
            done: Default::default(),
            part_md5: Default::default(),
        };
        let resumable = !whole
            && previous.as_ref().is_some_and(|p| p.identity == state.identity && p.part_size == part_size)
            && tokio::fs::metadata(partial).await.is_ok_and(|m| m.len() == size);
        if resumable {
            let p = previous.expect("checked");
            state.done = p.done;
            state.part_md5 = p.part_md5;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(!resumable)
            .open(partial)
            .map_err(|e| StorageError::io("open", partial, e))?;
        file.set_len(size).map_err(|e| StorageError::io("resize", partial, e))?;
        let file = Arc::new(file);

        let skipped: u64 = ranges.iter().filter(|(s, _)| state.done.contains(s)).map(|(s, e)| e - s).sum();
        if skipped > 0 {
            tracing::info!(path = %entry.rel, bytes = skipped, "resuming partial download");
            job.progress.skip(skipped);
        }
        // Bytes written by an earlier call are read back from disk by the
        // follower; that is the resume's one extra pass.
        let frontier = (!whole).then(|| Arc::new(Frontier::new(&ranges, &state.done)));
        // However this call ends (an error, or its future dropped because
        // another file failed), the follower must not wait forever.
        let _stop = frontier.clone().map(StopOnDrop);
        let follower = frontier.clone().map(|f| {
            let hashes = verify::Hashes::new(&checks, size, by_parts.is_none());
            let (file, ranges) = (file.clone(), ranges.clone());
            tokio::task::spawn_blocking(move || f.follow(&ranges, &file, hashes))
        });
        let todo: Vec<(usize, (u64, u64))> =
            ranges.iter().copied().enumerate().filter(|(_, (s, _))| !state.done.contains(s)).collect();
        let state = Mutex::new(state);
        let first_checks: Mutex<Option<(Checks, Served)>> = Mutex::new(None);
        let result = futures::stream::iter(todo)
            .map(|(index, (start, end))| {
                let (state, first_checks) = (&state, &first_checks);
                let mut sink = Sink {
                    index,
                    frontier: frontier.clone(),
                    md5: by_parts.as_ref().map(|_| <md5::Md5 as md5::Digest>::new()),
                    out: None,
                };
                async move {
                    let got = self.fetch_range(job, entry, (start, end), whole, &mut sink).await?;
                    if whole {
                        *first_checks.lock().await = got;
                    } else {
                        let mut st = state.lock().await;
                        st.done.insert(start);
                        if let Some(m) = sink.md5 {
                            st.part_md5.insert(start, hex::encode(md5::Digest::finalize(m)));
                        }
                        verify::save_ranges(job, &entry.rel, &st).await?;
                    }
                    Ok::<_, StorageError>(())
                }
            })
            .buffer_unordered(job.req.concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await;
        result?;
        if whole {
            (checks, served) = first_checks.into_inner().unwrap_or_default();
            if size == 0 {
                checks.etag_md5 = Checks::md5_etag(entry.etag.as_deref());
            }
            if let Some(c) = checks.composite_etag.as_mut() {
                c.part_sizes = self.part_sizes(job, entry, c.parts).await;
            }
            return Ok(Downloaded { checks, served, digests: None });
        }
        let hashed = match follower {
            Some(h) => h.await.expect("hashing does not panic").map_err(|e| StorageError::io("read", partial, e))?,
            None => None,
        };
        let digests = hashed.and_then(|mut d| {
            if let Some(sizes) = &by_parts {
                let st = state.into_inner();
                let md5s: Option<Vec<String>> = ranges.iter().map(|(s, _)| st.part_md5.get(s).cloned()).collect();
                d.composite = verify::composite_of(&md5s?);
                debug_assert_eq!(sizes.len(), ranges.len());
            }
            Some(d)
        });
        Ok(Downloaded { checks, served, digests })
    }

    /// The sizes of a multipart object's parts, so its composite ETag can be
    /// recomputed: one part is the whole object; more take a HEAD per part
    /// number (`x-amz-mp-parts-count` confirms the server answers by part).
    /// Empty, and the ETag unchecked, when the server does not tell.
    async fn part_sizes(&self, job: &Job, entry: &Entry, parts: u32) -> Vec<u64> {
        if parts == 1 {
            return vec![entry.size];
        }
        let Origin::S3 { bucket, key, version_id } = &entry.origin else { unreachable!("S3 entry") };
        let expected = i32::try_from(parts).ok();
        let sizes: Result<Vec<u64>, String> = futures::stream::iter(1..=parts)
            .map(|n| async move {
                let mut head = self.client.head_object().bucket(bucket).key(key).part_number(n as i32);
                if let Some(v) = version_id {
                    head = head.version_id(v);
                }
                let out = head.send().await.map_err(|e| DisplayErrorContext(&e).to_string())?;
                if out.parts_count() != expected {
                    return Err(format!("part {n}: parts count {:?}", out.parts_count()));
                }
                out.content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .ok_or_else(|| format!("part {n}: no Content-Length"))
            })
            .buffered(job.req.concurrency.max(1))
            .try_collect()
            .await;
        sizes.unwrap_or_else(|reason| {
            tracing::debug!(url = %entry.url(), %reason, "multipart ETag not checked: part sizes unknown");
            Vec::new()
        })
    }

    /// Write bytes `[start, end)` of the object at their offsets, resuming
    /// with a ranged GET from the first missing byte when the body breaks
    /// off. `whole`: the range is the whole object, so the first request is
    /// a plain GET whose response carries the object's checksums.
    async fn fetch_range(
        &self,
        job: &Job,
        entry: &Entry,
        (start, end): (u64, u64),
        whole: bool,
        sink: &mut Sink,
    ) -> Result<Option<(Checks, Served)>, StorageError> {
        let Origin::S3 { bucket, key, version_id } = &entry.origin else { unreachable!("S3 entry") };
        let mut pos = start;
        let mut checks = None;
        let mut last_err: Option<Box<dyn std::error::Error + Send + Sync>> = None;
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                let backoff = crate::retry::Backoff::DOWNLOAD.delay(attempt - 1);
                tracing::warn!(
                    url = %entry.url(), offset = pos, attempt, error = %last_err.as_ref().map(|e| e.to_string()).unwrap_or_default(),
                    "download interrupted; resuming with a ranged GET"
                );
                tokio::time::sleep(backoff).await;
            }
            let _permit = job.requests.acquire().await.expect("semaphore never closed");
            let mut req = self.client.get_object().bucket(bucket).key(key);
            if let Some(v) = version_id {
                req = req.version_id(v);
            }
            let ranged = !(whole && pos == 0);
            if ranged {
                req = req.range(format!("bytes={pos}-{}", end - 1));
                if let Some(etag) = &entry.etag {
                    req = req.if_match(format!("\"{etag}\""));
                }
            } else {
                req = req.checksum_mode(ChecksumMode::Enabled);
            }
            // This loop resumes from the byte the connection dropped at; the
            // SDK's own retries would restart the range and stack on ours.
            let no_sdk_retries =
                aws_sdk_s3::config::Builder::default().retry_config(aws_smithy_types::retry::RetryConfig::disabled());
            let out = match req.customize().config_override(no_sdk_retries).send().await {
                Ok(out) => out,
                Err(e) => {
                    let err = self.error("GET", bucket, key, e);
                    if err.retryable() {
                        last_err = Some(Box::new(err));
                        continue;
                    }
                    return Err(err);
                }
            };
            let want = end - pos;
            if let Some(len) = out.content_length()
                && len as u64 != want
            {
                return Err(StorageError::Mismatch {
                    url: entry.url(),
                    what: "response length".into(),
                    expected: format!("{want} bytes"),
                    actual: format!("{len} bytes"),
                });
            }
            if !ranged {
                if let (Some(listed), Some(now)) = (entry.etag.as_deref(), out.e_tag().map(|e| e.trim_matches('"')))
                    && listed != now
                {
                    return Err(StorageError::Changed { url: entry.url() });
                }
                let served = Served::of(out.e_tag(), out.version_id());
                checks = Some((checks_of_answer!(out, out.e_tag()), served));
            }
            let mut body = out.body;
            // The SDK's chunks are written as they are, gathered into one
            // vectored write per WRITE_CHUNK: no copy into a buffer, and one
            // system call per megabyte instead of one per received chunk.
            let mut pending: Vec<bytes::Bytes> = Vec::new();
            let mut pending_len = 0usize;
            let broke = loop {
                let next = match tokio::time::timeout(IDLE_TIMEOUT, body.try_next()).await {
                    Ok(next) => next,
                    Err(_) => break Some(format!("no data for {}s", IDLE_TIMEOUT.as_secs()).into()),
                };
                match next {
                    Ok(Some(bytes)) => {
                        if pos + (pending_len + bytes.len()) as u64 > end {
                            return Err(StorageError::Mismatch {
                                url: entry.url(),
                                what: "response length".into(),
                                expected: format!("{want} bytes"),
                                actual: "more".into(),
                            });
                        }
                        pending_len += bytes.len();
                        pending.push(bytes);
                        if pending_len >= WRITE_CHUNK {
                            pos = write_at(job, entry, pos, std::mem::take(&mut pending), sink).await?;
                            pending_len = 0;
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => {
                        if is_checksum_failure(&e) {
                            return Err(StorageError::Mismatch {
                                url: entry.url(),
                                what: "response checksum".into(),
                                expected: "the checksum the server sent".into(),
                                actual: DisplayErrorContext(&e).to_string(),
                            });
                        }
                        break Some(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
                    }
                }
            };
            // Bytes that arrived before a break are good: keep them.
            if pending_len > 0 {
                pos = write_at(job, entry, pos, pending, sink).await?;
            }
            if pos == end {
                return Ok(checks);
            }
            last_err = Some(broke.unwrap_or_else(|| "the body ended early".into()));
        }
        Err(StorageError::Interrupted {
            url: entry.url(),
            offset: pos,
            size: entry.size,
            attempts: MAX_ATTEMPTS,
            source: last_err.unwrap_or_else(|| "interrupted".into()),
        })
    }
}

/// Where a range's bytes go besides the file: the MD5 of its part (when the
/// ranges are the object's parts) and the frontier the hasher follows.
pub(crate) struct Sink {
    index: usize,
    frontier: Option<Arc<Frontier>>,
    md5: Option<md5::Md5>,
    /// The range's own handle on the partial file (opened at its first
    /// write), so its writes are sequential `writev`s from the range's offset.
    out: Option<std::fs::File>,
}

/// What a download verified or computed on the way.
pub(crate) struct Downloaded {
    pub checks: Checks,
    /// The object's ETag and version id as the GET (or HEAD) answered.
    pub served: Served,
    /// Hashes of the file computed while it arrived; `None` when they must
    /// be computed from the file.
    pub digests: Option<verify::Digests>,
}

async fn write_at(
    job: &Job,
    entry: &Entry,
    pos: u64,
    chunks: Vec<bytes::Bytes>,
    sink: &mut Sink,
) -> Result<u64, StorageError> {
    let partial = job.partial_path(&entry.rel);
    let mut md5 = sink.md5.take();
    let out = sink.out.take();
    let path = partial.clone();
    let (written, md5, out) = tokio::task::spawn_blocking(move || {
        let mut out = match out {
            Some(f) => f,
            None => std::fs::OpenOptions::new().write(true).open(&path)?,
        };
        out.seek(std::io::SeekFrom::Start(pos))?;
        if let Some(m) = md5.as_mut() {
            for c in &chunks {
                md5::Digest::update(m, c);
            }
        }
        write_all_vectored(&mut out, &chunks)?;
        let len: usize = chunks.iter().map(bytes::Bytes::len).sum();
        Ok::<_, std::io::Error>((pos + len as u64, md5, out))
    })
    .await
    .expect("write does not panic")
    .map_err(|e| StorageError::io("write", partial, e))?;
    sink.md5 = md5;
    sink.out = Some(out);
    if let Some(f) = &sink.frontier {
        f.advance(sink.index, written);
    }
    job.progress.add(written - pos);
    Ok(written)
}

/// `chunks`, in order, at the file's position (writev until all is written).
fn write_all_vectored(out: &mut std::fs::File, chunks: &[bytes::Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct StopOnDrop(Arc<Frontier>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How far each range of a ranged download is written, for the hasher that
/// follows the file's contiguous prefix: it hashes bytes in order a moment
/// after they land (from the page cache), so verification overlaps the
/// download instead of reading the whole file again after it.
pub(crate) struct Frontier {
    written: std::sync::Mutex<(Vec<u64>, bool)>,
    moved: std::sync::Condvar,
}

impl Frontier {
    fn new(ranges: &[(u64, u64)], done: &std::collections::BTreeSet<u64>) -> Frontier {
        let written = ranges.iter().map(|&(s, e)| if done.contains(&s) { e } else { s }).collect();
        Frontier { written: std::sync::Mutex::new((written, false)), moved: std::sync::Condvar::new() }
    }

    fn advance(&self, index: usize, pos: u64) {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.0[index] = pos;
        self.moved.notify_all();
    }

    /// The download failed: stop following.
    fn abort(&self) {
        self.written.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.moved.notify_all();
    }

    /// Hash `file` in order as its ranges are written (a blocking thread);
    /// `None` if the download was aborted.
    fn follow(
        &self,
        ranges: &[(u64, u64)],
        file: &std::fs::File,
        mut hashes: verify::Hashes,
    ) -> std::io::Result<Option<verify::Digests>> {
        let mut buf = vec![0u8; HASH_CHUNK];
        let mut at = 0u64;
        for (i, &(_, end)) in ranges.iter().enumerate() {
            while at < end {
                let upto = {
                    let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
                    while w.0[i] <= at && !w.1 {
                        w = self.moved.wait(w).unwrap_or_else(|e| e.into_inner());
                    }
                    if w.1 {
                        return Ok(None);
                    }
                    w.0[i]
                };
                while at < upto {
                    let n = (upto - at).min(HASH_CHUNK as u64) as usize;
                    file.read_exact_at(&mut buf[..n], at)?;
                    hashes.update(&buf[..n]);
                    at += n as u64;
                }
            }
        }
        Ok(Some(hashes.finish()))
    }
}

fn status<E, R: HasStatus>(err: &SdkError<E, R>) -> Option<u16> {
    err.raw_response().map(HasStatus::status_code)
}

trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Whether a body error is the SDK's response-checksum validation failing
/// (corrupt bytes: never resume from them) rather than a broken connection.
fn is_checksum_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.downcast_ref::<aws_smithy_checksums::body::validate::Error>().is_some() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// What a HEAD or GET response lets us verify the whole object against.
fn checks_of(
    etag: Option<&str>,
    sse: Option<&ServerSideEncryption>,
    sse_customer: Option<&str>,
    checksum_type: Option<&ChecksumType>,
    sums: [(ChecksumAlgorithm, Option<&str>); 5],
) -> Checks {
    // SSE-KMS and SSE-C ETags are not MD5s of the content.
    let kms = matches!(sse, Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse));
    let not_md5 = kms || sse_customer.is_some();
    let etag_md5 = if not_md5 { None } else { Checks::md5_etag(etag) };
    let composite_etag = if not_md5 { None } else { CompositeEtag::parse(etag) };
    // Composite (per-part) checksums end in `-N` and cannot be recomputed
    // without the part boundaries.
    let composite = matches!(checksum_type, Some(ChecksumType::Composite));
    let checksum = if composite {
        None
    } else {
        sums.into_iter().find_map(|(alg, v)| v.filter(|v| !v.contains('-')).map(|v| (alg, v.to_string())))
    };
    Checks { etag_md5, checksum, composite_etag }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_insecure() {
        assert!(check_endpoint("https://s3.example", false).is_ok());
        assert!(check_endpoint("http://127.0.0.1:9000", true).is_ok());
        let err = check_endpoint("http://127.0.0.1:9000", false).unwrap_err();
        assert!(err.to_string().contains("set `insecure: true`"), "{err}");
        assert!(check_endpoint("ftp://x", true).is_err());
        assert!(check_endpoint("not a url", true).is_err());
    }

    #[test]
    fn checks_skip_kms_etags_and_composite_sums() {
        let md5 = "0123456789abcdef0123456789abcdef";
        let c = checks_of(
            Some(md5),
            None,
            None,
            None,
            [
                (ChecksumAlgorithm::Sha256, None),
                (ChecksumAlgorithm::Sha1, None),
                (ChecksumAlgorithm::Crc32, Some("AAAAAA==")),
                (ChecksumAlgorithm::Crc32c, None),
                (ChecksumAlgorithm::Crc64Nvme, None),
            ],
        );
        assert_eq!(c.etag_md5.as_deref(), Some(md5));
        assert_eq!(c.checksum, Some((ChecksumAlgorithm::Crc32, "AAAAAA==".into())));
        let kms = checks_of(
            Some(md5),
            Some(&ServerSideEncryption::AwsKms),
            None,
            Some(&ChecksumType::Composite),
            [
                (ChecksumAlgorithm::Sha256, Some("x-2")),
                (ChecksumAlgorithm::Sha1, None),
                (ChecksumAlgorithm::Crc32, None),
                (ChecksumAlgorithm::Crc32c, None),
                (ChecksumAlgorithm::Crc64Nvme, None),
            ],
        );
        assert!(kms.etag_md5.is_none() && kms.checksum.is_none() && kms.composite_etag.is_none());
        let none = [
            (ChecksumAlgorithm::Sha256, None),
            (ChecksumAlgorithm::Sha1, None),
            (ChecksumAlgorithm::Crc32, None),
            (ChecksumAlgorithm::Crc32c, None),
            (ChecksumAlgorithm::Crc64Nvme, None),
        ];
        let multipart = checks_of(Some(&format!("\"{md5}-2\"")), None, None, None, none);
        assert_eq!(multipart.etag_md5, None);
        let composite = multipart.composite_etag.expect("a multipart ETag is checked once its parts are known");
        assert_eq!((composite.md5_of_md5s.as_str(), composite.parts), (md5, 2));
        assert!(composite.part_sizes.is_empty());
    }
}
