//! Integrity end to end: servers that return bytes not matching what they
//! claim. A small HTTP proxy in front of a real `docker-registry` or moto
//! rewrites answers (a flipped byte in a blob or object, another manifest
//! in place of the one asked for by digest, an oversized manifest); the sim's
//! registry is corrupted on disk for a whole promotion. Every case is
//! detected with an error naming what was wrong, and nothing is tagged,
//! promoted, recorded or left under its final name.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, Method, header};
use modelship::promotion;
use modelship::registry::{ImageRef, RegistryError, copy_image};
use modelship::secret::Secret;
use modelship::spec::ModelSpec;
use modelship::stages::fetch_model::{self, FetchModelError, Params};
use modelship::state::StateStore;
use modelship::state::configmap::ConfigMapStore;
use modelship::storage::{StaticCredentials, StorageError};
use serde_json::{Value, json};
use support::env::{DevProd, promote_pipeline, promote_request};
use support::registry::{DockerRegistry, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, copy_opts, sha256_digest};

// ------------------------------------------------------------ the proxy

/// Rewrites an answer: (method, path and query, response headers, body).
type Mangle = Arc<dyn Fn(&Method, &str, &mut HeaderMap, &mut Vec<u8>) + Send + Sync>;

/// An HTTP proxy to `upstream` that passes requests as they are (the Host
/// header included, for signatures) and hands each whole answer to `mangle`.
struct Proxy {
    addr: SocketAddr,
    /// Answers `mangle` changed.
    mangled: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn proxy(upstream: &str, mangle: Mangle) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let upstream = upstream.to_string();
    let mangled = Arc::new(AtomicU64::new(0));
    let counter = mangled.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (client, upstream, mangle, counter) = (client.clone(), upstream.clone(), mangle.clone(), counter.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let pq = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
            let mut rb = client.request(parts.method.clone(), format!("http://{upstream}{pq}")).body(body);
            for (k, v) in &parts.headers {
                if k != header::CONTENT_LENGTH {
                    rb = rb.header(k, v);
                }
            }
            let resp = rb.send().await.unwrap();
            let status = resp.status();
            let mut headers = resp.headers().clone();
            let mut bytes = resp.bytes().await.unwrap().to_vec();
            let (h0, b0) = (headers.clone(), bytes.clone());
            mangle(&parts.method, &pq, &mut headers, &mut bytes);
            if h0 != headers || b0 != bytes {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            if parts.method != Method::HEAD {
                headers.remove(header::CONTENT_LENGTH);
            }
            headers.remove(header::TRANSFER_ENCODING);
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            r
        }
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Proxy { addr, mangled, task }
}

/// Flip the middle byte: same length, different content; only a digest or
/// checksum can tell.
fn flip(bytes: &mut [u8]) {
    if !bytes.is_empty() {
        let i = bytes.len() / 2;
        bytes[i] ^= 0xff;
    }
}

// ------------------------------------------------------------ registry

/// A registry as this test's own HTTP client reaches it: a docker-registry
/// by plain HTTP without credentials, or a sim's over TLS (verified with its
/// CA) with a ServiceAccount token.
struct Reg {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Reg {
    fn plain(addr: &str) -> Reg {
        Reg { base: format!("http://{addr}"), http: reqwest::Client::new(), token: None }
    }

    /// As `default/modelship` (which `support::env::dev_and_prod` binds to cluster-admin).
    fn sim(sim: &openshift_sim::SimServer) -> Reg {
        let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
        let http = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
        let token = sim.service_account_token("default", "modelship", 3600).unwrap();
        Reg { base: sim.url(), http, token: Some(token) }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let url = if url.starts_with("http") { url.to_string() } else { format!("{}{url}", self.base) };
        let rb = self.http.request(method, url);
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }
}

/// Push a one-layer OCI image through the distribution API; its digest.
async fn push_image(reg: &Reg, repo: &str, seed: &str) -> (String, String) {
    use reqwest::Method;
    let put_blob = |bytes: Vec<u8>| async move {
        {
            let digest = sha256_digest(&bytes);
            let start = reg.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.unwrap();
            assert_eq!(start.status(), 202);
            let url = start.headers()["location"].to_str().unwrap().to_string();
            let sep = if url.contains('?') { '&' } else { '?' };
            let put = reg
                .request(Method::PUT, &format!("{url}{sep}digest={digest}"))
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
            (digest, bytes.len())
        }
    };
    let (layer, layer_size) = put_blob(format!("model weights {seed}\n").repeat(20_000).into_bytes()).await;
    let (config, config_size) =
        put_blob(format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes()).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "digest": config, "size": config_size },
        "layers": [{ "mediaType": OCI_LAYER, "digest": layer, "size": layer_size }],
    }))
    .unwrap();
    let put = reg
        .request(Method::PUT, &format!("/v2/{repo}/manifests/{seed}"))
        .header(header::CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    (sha256_digest(&manifest), layer)
}

async fn manifest_status(reg: &Reg, repo: &str, reference: &str) -> u16 {
    reg.request(reqwest::Method::HEAD, &format!("/v2/{repo}/manifests/{reference}"))
        .header(header::ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn copy_through(proxy: &Proxy, digest: &str, target: &DockerRegistry, tag: &str) -> String {
    let src = ImageRef::parse(&format!("{}/dev/app@{digest}", proxy.addr)).unwrap();
    let dst = ImageRef::parse(&format!("{}/prod/app:{tag}", target.addr)).unwrap();
    let err: RegistryError = copy_image(&src, &dst, &copy_opts()).await.unwrap_err();
    assert!(proxy.mangled.load(Ordering::SeqCst) > 0, "the proxy changed nothing");
    assert_eq!(manifest_status(&Reg::plain(&target.addr), "prod/app", tag).await, 404, "the tag was not moved");
    format!("{:#}", anyhow::Error::from(err))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_returning_wrong_bytes_is_detected_and_nothing_is_tagged() {
    let a = DockerRegistry::start();
    let b = DockerRegistry::start();
    let (digest, layer) = push_image(&Reg::plain(&a.addr), "dev/app", "v1").await;
    let (other, _) = push_image(&Reg::plain(&a.addr), "dev/app", "v2").await;

    // 1. A blob whose bytes do not hash to its digest.
    let want = format!("/blobs/{layer}");
    let p = proxy(
        &a.addr,
        Arc::new(move |m, path, _, body| {
            if m == Method::GET && path.ends_with(&want) {
                flip(body)
            }
        }),
    )
    .await;
    let text = copy_through(&p, &digest, &b, "blob").await;
    println!("integrity: {text}");
    assert!(text.contains(&format!("blob {layer} read from")) && text.contains("hashes to"), "{text}");
    assert!(text.contains("nothing was tagged"), "{text}");
    let head =
        reqwest::Client::new().head(format!("http://{}/v2/prod/app/blobs/{layer}", b.addr)).send().await.unwrap();
    assert_eq!(head.status(), 404, "the corrupt blob never landed in the target");

    // 2. Asked for one manifest by digest, given another (valid, with its
    //    own Docker-Content-Digest header): the bytes are what is checked.
    let swapped = reqwest::Client::new()
        .get(format!("http://{}/v2/dev/app/manifests/{other}", a.addr))
        .header(header::ACCEPT, OCI_MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let (wanted, swap) = (digest.clone(), other.clone());
    let p = proxy(
        &a.addr,
        Arc::new(move |m, path, headers, body| {
            if m == Method::GET && path.ends_with(&format!("/manifests/{wanted}")) {
                *body = swapped.clone();
                headers.insert("docker-content-digest", swap.parse().unwrap());
            }
        }),
    )
    .await;
    let text = copy_through(&p, &digest, &b, "manifest").await;
    println!("integrity: {text}");
    assert!(text.contains(&format!("has digest {other}, expected {digest}; nothing was copied")), "{text}");

    // 3. A manifest far over the 4 MiB limit: refused while reading.
    let wanted = digest.clone();
    let p = proxy(
        &a.addr,
        Arc::new(move |m, path, _, body| {
            if m == Method::GET && path.ends_with(&format!("/manifests/{wanted}")) {
                let pad = " ".repeat(6 << 20);
                *body = format!(r#"{{"schemaVersion":2,"pad":"{pad}"}}"#).into_bytes();
            }
        }),
    )
    .await;
    let text = copy_through(&p, &digest, &b, "huge").await;
    println!("integrity: {text}");
    assert!(text.contains("is larger than 4194304 bytes; refused, nothing was copied"), "{text}");

    // The untouched source copies fine: the checks do not refuse good bytes.
    let src = ImageRef::parse(&format!("{}/dev/app@{digest}", a.addr)).unwrap();
    let dst = ImageRef::parse(&format!("{}/prod/app:good", b.addr)).unwrap();
    assert_eq!(copy_image(&src, &dst, &copy_opts()).await.unwrap().digest, digest);
}

// ------------------------------------------------------------ promotion

/// A promotion whose source blob is corrupt on disk in dev's registry:
/// it fails, prod's tag is not moved, the prod ledger records no promotion,
/// and the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_source_image_is_not_promoted_or_recorded() {
    let DevProd { dir, dev, prod, clusters, .. } = DevProd::new(&promote_pipeline()).await;
    let (digest, layer) = push_image(&Reg::sim(&dev), "models-dev/weather", "v1").await;
    let dev_store = ConfigMapStore::new(clusters.client("dev").await.unwrap(), "models-dev", "dev");
    let image = format!("{}/models-dev/weather@{digest}", dev.registry_host());
    promotion::record_check(&dev_store, "weather", "dev", &digest, &image, "run-1", "ci", None, true).await.unwrap();

    // Same length, one byte changed, in the sim registry's blob store.
    let blob = dir.path().join("dev/registry/blobs/sha256").join(&layer[7..]);
    let mut bytes = std::fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
    flip(&mut bytes);
    std::fs::write(&blob, bytes).unwrap();

    let request = promote_request("run-2");
    let err = promotion::promote(&clusters, &request, false).await.unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    println!("integrity: {text}");
    assert!(text.contains(&format!("blob {layer}")) && text.contains("hashes to"), "{text}");
    assert_eq!(manifest_status(&Reg::sim(&prod), "models-prod/weather", "latest").await, 404);
    let prod_store = ConfigMapStore::new(clusters.client("prod").await.unwrap(), "models-prod", "prod");
    let ledger = prod_store.get_ledger("weather").await.unwrap();
    assert!(ledger.history.iter().all(|e| e.action != "promoted"), "{:?}", ledger.history);
    assert!(!ledger.current.contains_key("prod"));
    prod_store.try_lock("weather", "someone", Duration::from_secs(5)).await.expect("the lock was released");
    dev.shutdown().await;
    prod.shutdown().await;
}

// ------------------------------------------------------------ S3

const BUCKET: &str = "models";

struct Moto {
    endpoint: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Moto {
    let tools = std::env::var_os("MODELSHIP_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs::home_dir().unwrap().join(".cache/modelship-test-tools"));
    let bin = tools.join("moto/bin/moto_server");
    assert!(bin.exists(), "{} is missing: run scripts/test.sh (scripts/setup.d/20-s3.sh)", bin.display());
    let port = support::free_port();
    let mut child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Moto { endpoint: format!("127.0.0.1:{port}"), child };
        }
        assert!(child.try_wait().unwrap().is_none(), "moto_server exited early");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not come up");
}

fn s3(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(format!("http://{endpoint}"))
        .credentials_provider(Credentials::new("ak", "sk", None, None, "test"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

async fn fetch(endpoint: &str, source: &str, with: Value, dest: &Path) -> Result<(), StorageError> {
    let mut params = json!({ "insecure": true, "partSize": 64 * 1024 });
    params.as_object_mut().unwrap().extend(with.as_object().unwrap().clone());
    let params: Params = serde_json::from_value(params).unwrap();
    let model: ModelSpec = serde_json::from_value(
        json!({ "name": "weather", "source": source, "endpoint": format!("http://{endpoint}") }),
    )
    .unwrap();
    let creds = StaticCredentials {
        access_key_id: Secret::new("ak"),
        secret_access_key: Secret::new("sk"),
        session_token: None,
    };
    match fetch_model::fetch(&params, &model, dest, dest, Some(creds), false).await {
        Ok(_) => Ok(()),
        Err(FetchModelError::Storage(e)) => Err(e),
        Err(other) => panic!("expected a storage error, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_server_returning_wrong_bytes_is_detected_and_nothing_is_kept() {
    let server = moto().await;
    let c = s3(&server.endpoint);
    c.create_bucket().bucket(BUCKET).send().await.unwrap();
    // Single-part: its ETag is the MD5 of its bytes. Small and ranged sizes.
    let small = data(10_000);
    let big = data(300_000);
    for (key, body) in [("single/model.bin", &small), ("ranged/model.bin", &big)] {
        c.put_object().bucket(BUCKET).key(key).body(ByteStream::from(body.clone())).send().await.unwrap();
    }
    // Multipart: its ETag is not the body's MD5 and moto stores no checksum;
    // the composite ETag (MD5 of the parts' MD5s, parts sized by a HEAD per
    // part number) and `expectSha256` catch a corrupted body.
    let multi = data(6 << 20);
    let key = "multi/model.bin";
    let up = c.create_multipart_upload().bucket(BUCKET).key(key).send().await.unwrap();
    let id = up.upload_id().unwrap();
    let mut parts = Vec::new();
    for (i, chunk) in multi.chunks(5 << 20).enumerate() {
        let n = i as i32 + 1;
        let out = c
            .upload_part()
            .bucket(BUCKET)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .unwrap();
        parts.push(CompletedPart::builder().part_number(n).e_tag(out.e_tag().unwrap()).build());
    }
    c.complete_multipart_upload()
        .bucket(BUCKET)
        .key(key)
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .unwrap();

    // Object GETs (not listings, not HEADs) come back with a byte flipped.
    let p = proxy(
        &server.endpoint,
        Arc::new(|m, path, _, body| {
            if m == Method::GET && path.contains("/model.bin") {
                flip(body)
            }
        }),
    )
    .await;
    let via = p.addr.to_string();
    let tmp = tempfile::tempdir().unwrap();

    for prefix in ["single", "ranged"] {
        let dest = tmp.path().join(prefix);
        let err = fetch(&via, &format!("s3://{BUCKET}/{prefix}/"), json!({}), &dest).await.unwrap_err();
        println!("integrity: {err}");
        assert!(matches!(err, StorageError::Mismatch { .. }), "{prefix}: {err}");
        let text = err.to_string();
        assert!(text.contains(&format!("s3://{BUCKET}/{prefix}/model.bin")), "{text}");
        // The SDK's response checksum (moto keeps the CRC32 the SDK sent on
        // upload) or the ETag's MD5, whichever sees it first.
        assert!(text.contains("checksum mismatch") || text.contains("ETag (MD5) mismatch"), "{text}");
        assert!(!dest.join("model/model.bin").exists(), "{prefix}: a corrupt file was kept under its name");
    }

    let dest = tmp.path().join("multi-etag");
    let err = fetch(&via, &format!("s3://{BUCKET}/multi/"), json!({}), &dest).await.unwrap_err();
    println!("integrity: {err}");
    assert!(matches!(err, StorageError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("multipart ETag (MD5 of the parts' MD5s) mismatch"), "{err}");
    assert!(!dest.join("model/model.bin").exists());

    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&multi));
    let dest = tmp.path().join("multi");
    let err = fetch(&via, &format!("s3://{BUCKET}/multi/"), json!({ "expectSha256": { "model.bin": sha } }), &dest)
        .await
        .unwrap_err();
    println!("integrity: {err}");
    assert!(matches!(err, StorageError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains(&format!("s3://{BUCKET}/multi/model.bin")), "{err}");
    assert!(!dest.join("model/model.bin").exists());
    assert!(p.mangled.load(Ordering::SeqCst) > 0);

    // Straight from moto, the same fetches pass: the checks refuse only bad bytes.
    fetch(&server.endpoint, &format!("s3://{BUCKET}/multi/"), json!({ "expectSha256": { "model.bin": sha } }), &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest.join("model/model.bin")).unwrap(), multi);
    fetch(&server.endpoint, &format!("s3://{BUCKET}/ranged/"), json!({}), &tmp.path().join("ok")).await.unwrap();
}
