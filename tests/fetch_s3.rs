//! `fetch-model` against real S3 servers on loopback: `moto_server` and the
//! `s3s-fs` binary (installed by `scripts/setup.d/20-s3.sh`), plus the
//! in-process embedded endpoint. A small TCP proxy in front of a server cuts
//! connections mid-body to exercise ranged resume.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use modelship::error::{ExitClass, HasExitClass};
use modelship::secret::Secret;
use modelship::spec::ModelSpec;
use modelship::stages::fetch_model::{self, FetchModelError, Params};
use modelship::storage::{self, Fetched, ManifestEntry, StaticCredentials, StorageError};
use serde_json::json;
use sha2::Digest;
use support::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUCKET: &str = "models";
const AK: &str = "modelship-test-ak";
const SK: &str = "modelship-test-secret-key";
/// Small enough that test objects cross the ranged-GET threshold.
const PART: u64 = 64 * 1024;

// ---------- processes ----------

/// An S3 server's file (`scripts/setup.d/20-s3.sh` installs them).
fn tool(rel: &str) -> PathBuf {
    support::tool(rel, "20-s3.sh")
}

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(port: u16, child: &mut Child) {
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("server exited early with {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server on port {port} did not come up in 30s");
}

struct Server {
    endpoint: String,
    port: u16,
    _proc: Proc,
}

async fn moto() -> Server {
    let port = free_port();
    let mut child = Command::new(tool("moto/bin/moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    wait_ready(port, &mut child).await;
    Server { endpoint: format!("http://127.0.0.1:{port}"), port, _proc: Proc(child) }
}

async fn s3s_fs(root: &Path) -> Server {
    let port = free_port();
    let mut child = Command::new(tool("s3s-fs/bin/s3s-fs"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", AK, "--secret-key", SK])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start s3s-fs");
    wait_ready(port, &mut child).await;
    Server { endpoint: format!("http://127.0.0.1:{port}"), port, _proc: Proc(child) }
}

// ---------- data ----------

/// Deterministic bytes (xorshift), so expected digests need no fixtures.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The model every server is seeded with: relative path -> content.
fn model_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("model.joblib", data(300 * 1024 + 7, 1)), // over the threshold: ranged
        ("small.bin", data(40 * 1024, 2)),         // one GET
        ("empty.txt", Vec::new()),
        ("sub/deep/config.json", b"{\"classes\": [\"mild\", \"hot\"]}\n".to_vec()),
        ("multi.bin", data(5 * 1024 * 1024 + 1000, 3)), // uploaded as two parts
    ]
}

fn expected_manifest() -> Vec<ManifestEntry> {
    let mut m: Vec<ManifestEntry> = model_files()
        .into_iter()
        .map(|(p, d)| ManifestEntry { path: p.into(), size: d.len() as u64, sha256: sha(&d) })
        .collect();
    m.sort_by(|a, b| a.path.cmp(&b.path));
    m
}

fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(AK, SK, None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn put(c: &aws_sdk_s3::Client, key: &str, body: Vec<u8>) {
    c.put_object().bucket(BUCKET).key(key).body(ByteStream::from(body)).send().await.expect("put_object");
}

async fn seed(endpoint: &str, prefix: &str) {
    let c = client(endpoint);
    let _ = c.create_bucket().bucket(BUCKET).send().await;
    for (rel, body) in model_files() {
        let key = format!("{prefix}{rel}");
        if rel == "multi.bin" {
            // Parts of 5 MiB (the S3 minimum) and the rest.
            let up = c.create_multipart_upload().bucket(BUCKET).key(&key).send().await.expect("create multipart");
            let id = up.upload_id().unwrap();
            let mut parts = Vec::new();
            for (i, chunk) in body.chunks(5 * 1024 * 1024).enumerate() {
                let n = i as i32 + 1;
                let out = c
                    .upload_part()
                    .bucket(BUCKET)
                    .key(&key)
                    .upload_id(id)
                    .part_number(n)
                    .body(ByteStream::from(chunk.to_vec()))
                    .send()
                    .await
                    .expect("upload part");
                parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build());
            }
            c.complete_multipart_upload()
                .bucket(BUCKET)
                .key(&key)
                .upload_id(id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .expect("complete multipart");
        } else {
            put(&c, &key, body).await;
        }
    }
    // A console-made "folder" marker is not a file.
    put(&c, &format!("{prefix}sub/folder/"), Vec::new()).await;
}

// ---------- running the stage's fetch ----------

fn model(source: &str, endpoint: &str) -> ModelSpec {
    serde_json::from_value(json!({"name": "weather", "source": source, "endpoint": endpoint})).unwrap()
}

fn params(extra: serde_json::Value) -> Params {
    let mut with = json!({"insecure": true, "partSize": PART, "concurrency": 4});
    with.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value(with).expect("with: parses")
}

fn creds(ak: &str, sk: &str) -> Option<StaticCredentials> {
    Some(StaticCredentials { access_key_id: Secret::new(ak), secret_access_key: Secret::new(sk), session_token: None })
}

async fn fetch(
    source: &str,
    endpoint: &str,
    extra: serde_json::Value,
    dest: &Path,
    sk: &str,
) -> Result<Fetched, FetchModelError> {
    fetch_model::fetch(&params(extra), &model(source, endpoint), dest, dest, creds(AK, sk), false).await
}

/// Every regular file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn assert_model(fetched: &Fetched) {
    assert_eq!(fetched.manifest, expected_manifest());
    assert_eq!(fetched.content_digest, storage::content_digest(&expected_manifest()));
    assert_eq!(fetched.total_bytes, expected_manifest().iter().map(|m| m.size).sum::<u64>());
    for (rel, body) in model_files() {
        assert_eq!(std::fs::read(fetched.model_dir.join(rel)).unwrap(), body, "{rel}");
    }
    let mut want: Vec<String> = model_files().iter().map(|(p, _)| p.to_string()).collect();
    want.sort();
    assert_eq!(files_under(&fetched.model_dir), want, "nothing but the model under modelDir");
}

fn storage_err(e: FetchModelError) -> StorageError {
    match e {
        FetchModelError::Storage(s) => s,
        other => panic!("expected a storage error, got {other}"),
    }
}

/// A full fetch, a second call that reuses everything, and a filter change
/// that removes what is no longer part of the model.
async fn fetch_reuse_and_prune(endpoint: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("fetch");
    let src = "s3://models/weather/v1/";
    let first = fetch(src, endpoint, json!({}), &dest, SK).await.expect("first fetch");
    assert_model(&first);
    assert_eq!((first.fetched_files, first.reused_files), (5, 0));
    assert_eq!(first.bytes_transferred, first.total_bytes);

    // The lineage of each object: its key, size and digest, and an ETag
    // (listed by moto; s3s-fs lists none, so the one its GET answered).
    assert_eq!(first.objects.len(), first.manifest.len());
    for (o, m) in first.objects.iter().zip(&first.manifest) {
        assert_eq!((&o.path, o.size, &o.sha256), (&m.path, m.size, &m.sha256), "{o:?}");
        assert_eq!(o.key, format!("weather/v1/{}", o.path), "{o:?}");
        assert!(o.etag.as_deref().is_some_and(|e| !e.is_empty() && !e.contains('"')), "{o:?}");
    }

    let again = fetch(src, endpoint, json!({}), &dest, SK).await.expect("second fetch");
    assert_eq!(again.content_digest, first.content_digest);
    assert_eq!((again.fetched_files, again.reused_files, again.bytes_transferred), (0, 5, 0));
    // Reused files keep what their download recorded.
    assert_eq!(again.objects, first.objects);

    // A file touched locally is not trusted: it is fetched again.
    std::fs::write(dest.join("model/small.bin"), b"tampered").unwrap();
    let healed = fetch(src, endpoint, json!({}), &dest, SK).await.expect("third fetch");
    assert_model(&healed);
    assert_eq!(healed.fetched_files, 1);

    let filtered = fetch(src, endpoint, json!({"exclude": ["**/*.json", "multi.bin"]}), &dest, SK).await.unwrap();
    assert_eq!(files_under(&filtered.model_dir), vec!["empty.txt", "model.joblib", "small.bin"]);
    assert_ne!(filtered.content_digest, first.content_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_fetch_nested_empty_multipart_and_ranged_objects() {
    let server = moto().await;
    seed(&server.endpoint, "weather/v1/").await;
    fetch_reuse_and_prune(&server.endpoint).await;

    // One object by key (not a prefix), and a key that is a "directory".
    let tmp = tempfile::tempdir().unwrap();
    let one = fetch("s3://models/weather/v1/multi.bin", &server.endpoint, json!({}), tmp.path(), SK).await.unwrap();
    assert_eq!(one.manifest.len(), 1);
    assert_eq!(one.manifest[0].path, "multi.bin");
    assert_eq!(one.manifest[0].sha256, sha(&data(5 * 1024 * 1024 + 1000, 3)));
    let tmp = tempfile::tempdir().unwrap();
    let dir = fetch("s3://models/weather/v1", &server.endpoint, json!({}), tmp.path(), SK).await.unwrap();
    assert_eq!(dir.content_digest, storage::content_digest(&expected_manifest()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs_fetch_nested_empty_multipart_and_ranged_objects() {
    let root = tempfile::tempdir().unwrap();
    let server = s3s_fs(root.path()).await;
    seed(&server.endpoint, "weather/v1/").await;
    fetch_reuse_and_prune(&server.endpoint).await;

    // s3s-fs lists no ETags: reuse rests on size and Last-Modified, so an
    // overwrite with the same size must still be fetched again. The pause
    // only makes sure the new modification time differs at the listing's
    // one-second precision.
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("fetch");
    let src = "s3://models/weather/v1/";
    let first = fetch(src, &server.endpoint, json!({}), &dest, SK).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    put(&client(&server.endpoint), "weather/v1/small.bin", data(40 * 1024, 9)).await;
    let after = fetch(src, &server.endpoint, json!({}), &dest, SK).await.unwrap();
    assert_eq!((after.fetched_files, after.reused_files), (1, 4));
    assert_ne!(after.content_digest, first.content_digest);
    assert_eq!(std::fs::read(dest.join("model/small.bin")).unwrap(), data(40 * 1024, 9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_keys_are_refused_and_nothing_is_written_outside() {
    let server = moto().await;
    let c = client(&server.endpoint);
    c.create_bucket().bucket(BUCKET).send().await.unwrap();
    for (prefix, key) in
        [("evil/", "evil/a/../../../escape.txt"), ("abs/", "abs//etc/passwd-copy"), ("dots/", "dots/./../../x")]
    {
        put(&c, key, b"owned".to_vec()).await;
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("ws/fetch");
        let err = storage_err(
            fetch(&format!("s3://models/{prefix}"), &server.endpoint, json!({}), &dest, SK).await.unwrap_err(),
        );
        assert!(matches!(err, StorageError::UnsafeKey { .. }), "{key}: {err}");
        assert!(err.to_string().contains(&format!("s3://models/{key}")), "{err}");
        assert_eq!(err.exit_class(), ExitClass::BadInput);
        // Nothing anywhere in the temp tree but the empty work directories.
        assert_eq!(files_under(tmp.path()), Vec::<String>::new(), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_missing_bucket_key_empty_prefix_and_sha_mismatch() {
    let server = moto().await;
    seed(&server.endpoint, "weather/v1/").await;
    let ep = &server.endpoint;
    let tmp = tempfile::tempdir().unwrap();

    let err = storage_err(fetch("s3://no-such-bucket/x/", ep, json!({}), tmp.path(), SK).await.unwrap_err());
    assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{err}");
    assert!(err.to_string().contains("no-such-bucket"), "{err}");
    assert_eq!(err.exit_class(), ExitClass::BadInput);

    let err = storage_err(fetch("s3://models/weather/v1/nope.pkl", ep, json!({}), tmp.path(), SK).await.unwrap_err());
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("s3://models/weather/v1/nope.pkl"), "{err}");

    let err = storage_err(fetch("s3://models/weather/v2/", ep, json!({}), tmp.path(), SK).await.unwrap_err());
    assert!(matches!(err, StorageError::Empty { filtered: false, .. }), "{err}");
    let err = storage_err(
        fetch("s3://models/weather/v1/", ep, json!({"include": ["*.onnx"]}), tmp.path(), SK).await.unwrap_err(),
    );
    assert!(matches!(err, StorageError::Empty { filtered: true, .. }), "{err}");
    assert_eq!(err.exit_class(), ExitClass::BadInput);

    // A wrong pinned digest: error names the object, and the file never
    // appears under its final name (nor as a leftover partial).
    let dest = tmp.path().join("mismatch");
    let wrong = "0".repeat(64);
    let err = storage_err(
        fetch("s3://models/weather/v1/", ep, json!({"expectSha256": {"model.joblib": wrong}}), &dest, SK)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, StorageError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("s3://models/weather/v1/model.joblib"), "{err}");
    assert!(!dest.join("model/model.joblib").exists());
    assert!(!dest.join(".fetch/partial/model.joblib").exists());

    // The right digests, from a sha256sum file that is part of the model.
    let sums: String = model_files().iter().map(|(p, d)| format!("{}  {p}\n", sha(d))).collect();
    put(&client(ep), "weather/v3/SHA256SUMS", sums.into_bytes()).await;
    for (rel, body) in model_files() {
        put(&client(ep), &format!("weather/v3/{rel}"), body).await;
    }
    let ok = fetch("s3://models/weather/v3/", ep, json!({"expectSha256": "SHA256SUMS"}), &tmp.path().join("sums"), SK)
        .await
        .expect("verified against SHA256SUMS");
    assert_eq!(ok.manifest.len(), 6);
    let err = storage_err(
        fetch(
            "s3://models/weather/v1/",
            ep,
            json!({"expectSha256": {"not-there.bin": wrong}}),
            &tmp.path().join("m"),
            SK,
        )
        .await
        .unwrap_err(),
    );
    assert!(matches!(err, StorageError::ExpectMissing { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_refused_naming_the_bucket() {
    let root = tempfile::tempdir().unwrap();
    let server = s3s_fs(root.path()).await;
    seed(&server.endpoint, "weather/v1/").await;
    let tmp = tempfile::tempdir().unwrap();
    let err = storage_err(
        fetch("s3://models/weather/v1/", &server.endpoint, json!({}), tmp.path(), "wrong-secret-key-value")
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, StorageError::AccessDenied { .. }), "{err}");
    assert!(err.to_string().contains("s3://models/weather/v1/"), "{err}");
    assert!(!err.to_string().contains("wrong-secret-key-value"));
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    // Plain HTTP without `insecure` is refused before any request.
    let err = fetch_model::fetch(
        &serde_json::from_value(json!({})).unwrap(),
        &model("s3://models/weather/v1/", &server.endpoint),
        tmp.path(),
        tmp.path(),
        creds(AK, SK),
        false,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("insecure: true"), "{err}");
}

// ---------- a proxy that drops connections mid-body ----------

#[derive(Clone, Copy)]
enum Cut {
    /// The first `connections` connections are cut after `after` bytes from
    /// the server; later ones pass everything.
    First { connections: usize, after: usize },
    /// Everything passes until `budget` bytes went through in total; then
    /// every connection is cut `after` bytes later.
    AfterBudget { budget: i64, after: usize },
}

struct Proxy {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(upstream_port: u16, cut: Cut) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let budget = Arc::new(AtomicI64::new(match cut {
        Cut::AfterBudget { budget, .. } => budget,
        Cut::First { .. } => i64::MAX,
    }));
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let index = seen.fetch_add(1, Ordering::SeqCst);
            let budget = budget.clone();
            conns.spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut limit = match cut {
                    Cut::First { connections, after } if index < connections => Some(after),
                    _ => None,
                };
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut n = n;
                    if let Cut::AfterBudget { after, .. } = cut
                        && limit.is_none()
                        && budget.fetch_sub(n as i64, Ordering::SeqCst) - (n as i64) < 0
                    {
                        limit = Some(after);
                    }
                    if let Some(left) = limit.as_mut() {
                        n = n.min(*left);
                        *left -= n;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if limit == Some(0) {
                        break; // cut: both halves drop, the client sees the body end early
                    }
                }
                up.abort();
            });
        }
    });
    Proxy { addr, task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_resume_with_ranged_gets() {
    let root = tempfile::tempdir().unwrap();
    let server = s3s_fs(root.path()).await;
    seed(&server.endpoint, "weather/v1/").await;
    // Cut the first connections mid-body (both the ranged object and the
    // single-GET one are in flight on them).
    let p = proxy(server.port, Cut::First { connections: 3, after: 30_000 }).await;
    let tmp = tempfile::tempdir().unwrap();
    let fetched = fetch("s3://models/weather/v1/", &format!("http://{}", p.addr), json!({}), tmp.path(), SK)
        .await
        .expect("resumed after drops");
    assert_model(&fetched);
    // Resumed from the byte where each cut happened, not restarted.
    assert_eq!(fetched.bytes_transferred, fetched.total_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_keeps_dropping_gives_a_clear_error_then_the_next_run_resumes() {
    let root = tempfile::tempdir().unwrap();
    let server = s3s_fs(root.path()).await;
    seed(&server.endpoint, "big/").await;
    let big = data(1024 * 1024, 9);
    put(&client(&server.endpoint), "big/model.joblib", big.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("fetch");
    let src = "s3://models/big/model.joblib";

    // ~half the object gets through, then every connection dies after 2 KB.
    let p = proxy(server.port, Cut::AfterBudget { budget: 512 * 1024, after: 2048 }).await;
    let err =
        storage_err(fetch(src, &format!("http://{}", p.addr), json!({"concurrency": 1}), &dest, SK).await.unwrap_err());
    assert!(matches!(err, StorageError::Interrupted { .. }), "{err}");
    assert!(err.to_string().contains("s3://models/big/model.joblib"), "{err}");
    assert!(err.retryable());
    assert_eq!(err.exit_class(), ExitClass::Failed);
    assert!(!dest.join("model/model.joblib").exists(), "no half-written file under the final name");
    assert!(dest.join(".fetch/partial/model.joblib").exists());

    // The next attempt (server healthy) continues from the completed ranges.
    let fetched = fetch(src, &server.endpoint, json!({"concurrency": 1}), &dest, SK).await.expect("resumed");
    assert_eq!(fetched.manifest[0].sha256, sha(&big));
    assert_eq!(std::fs::read(dest.join("model/model.joblib")).unwrap(), big);
    assert!(
        fetched.bytes_transferred <= big.len() as u64 - 6 * PART,
        "transferred {} of {}: completed ranges were fetched again",
        fetched.bytes_transferred,
        big.len()
    );
    assert!(!dest.join(".fetch/partial/model.joblib").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_endpoint_and_file_source_give_the_same_digest() {
    // The embedded endpoint serves a plain directory: bucket/prefix/files.
    let root = tempfile::tempdir().unwrap();
    let model_root = root.path().join("models/weather");
    for (rel, body) in model_files() {
        let p = model_root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let server = storage::embedded::serve(root.path(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let opts = server.s3_options();
    assert!(opts.insecure && opts.endpoint.as_deref() == Some(server.endpoint().as_str()));
    assert_eq!(modelship::secret::mask(storage::embedded::SECRET_ACCESS_KEY), "****");

    let tmp = tempfile::tempdir().unwrap();
    let p = params(json!({}));
    let m = model("s3://models/weather/", &server.endpoint());
    let via_s3 = fetch_model::fetch(&p, &m, tmp.path(), &tmp.path().join("s3"), Some(server.credentials()), false)
        .await
        .expect("fetch from the embedded endpoint");
    assert_model(&via_s3);

    let wrong = fetch_model::fetch(&p, &m, tmp.path(), &tmp.path().join("bad"), creds(AK, "nope-nope"), false).await;
    assert!(matches!(wrong, Err(FetchModelError::Storage(StorageError::AccessDenied { .. }))));

    // file:// relative to the pipeline directory: same manifest, same digest.
    let m = model("file://models/weather", "https://unused.example");
    let via_file = fetch_model::fetch(&p, &m, root.path(), &tmp.path().join("file"), None, false).await.unwrap();
    assert_model(&via_file);
    assert_eq!(via_file.content_digest, via_s3.content_digest);
    server.shutdown().await;
}

/// A versioned bucket: a prefix listing names no versions, so each object's
/// version id is the one its GET answered, the latest; pinning an older
/// version of one object fetches that version and names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_bucket_names_each_objects_version() {
    use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};
    const VERSIONED: &str = "versioned-models";
    let server = moto().await;
    let c = client(&server.endpoint);
    c.create_bucket().bucket(VERSIONED).send().await.expect("create bucket");
    let on = VersioningConfiguration::builder().status(BucketVersioningStatus::Enabled).build();
    c.put_bucket_versioning().bucket(VERSIONED).versioning_configuration(on).send().await.expect("versioning");
    let put = |key: &'static str, body: &'static [u8]| {
        let c = c.clone();
        async move {
            let out = c.put_object().bucket(VERSIONED).key(key).body(ByteStream::from_static(body)).send().await;
            out.expect("put_object").version_id().expect("a versioned bucket names the version").to_string()
        }
    };
    let old = put("weather/model.joblib", b"old weights").await;
    let new = put("weather/model.joblib", b"new weights").await;
    let meta = put("weather/meta.json", b"{}").await;
    assert_ne!(old, new);

    let tmp = tempfile::tempdir().unwrap();
    let got = fetch(&format!("s3://{VERSIONED}/weather/"), &server.endpoint, json!({}), tmp.path(), SK).await.unwrap();
    let versions: Vec<(&str, Option<&str>)> =
        got.objects.iter().map(|o| (o.path.as_str(), o.version_id.as_deref())).collect();
    assert_eq!(versions, [("meta.json", Some(meta.as_str())), ("model.joblib", Some(new.as_str()))]);
    assert_eq!(std::fs::read(got.model_dir.join("model.joblib")).unwrap(), b"new weights");

    let tmp = tempfile::tempdir().unwrap();
    let key = format!("s3://{VERSIONED}/weather/model.joblib");
    let pinned = fetch(&key, &server.endpoint, json!({ "versionId": old }), tmp.path(), SK).await.unwrap();
    assert_eq!(pinned.objects[0].version_id.as_deref(), Some(old.as_str()));
    assert_eq!(std::fs::read(pinned.model_dir.join("model.joblib")).unwrap(), b"old weights");
}
