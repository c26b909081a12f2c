//! The sim's internal registry served standalone on loopback: skopeo pushes
//! to it and reads from it, modelship's own client copies into and within
//! it, and the in-process push the build controller uses is readable by
//! skopeo.

mod support;

use modelship::registry::{CopyOptions, ImageRef, copy_image};
use openshift_sim::registry::{RegistryStore, router};
use support::registry::*;

struct Sim {
    addr: String,
    store: RegistryStore,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn sim() -> Sim {
    let dir = tempfile::tempdir().unwrap();
    let store = RegistryStore::new(dir.path().join("registry"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let app = router(store.clone());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Sim { addr, store, task, _dir: dir }
}

fn opts() -> CopyOptions {
    CopyOptions { src_insecure: true, dest_insecure: true, ..CopyOptions::default() }
}

/// skopeo is a blocking process; keep it off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_pushes_to_and_reads_back_from_the_sim_registry() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&dir.path().join("layout"));
    let big = layout.big_layer(6 << 20, 11);
    let small = layout.blob(OCI_LAYER, b"weights");
    let app = layout.image(&[big.clone(), small], "amd64");
    layout.tag("app", &app);
    let arm = layout.image(&[big, layout.blob(OCI_LAYER, b"arm")], "arm64");
    let index = layout.index(&[(app.clone(), "amd64"), (arm, "arm64")]);
    layout.tag("multi", &index);

    let (addr, ldir) = (sim.addr.clone(), layout.dir.clone());
    let out = dir.path().join("back");
    let (raw_app, raw_index) = blocking(move || {
        for (tag, repo) in [("app", "ns/app:v1"), ("multi", "ns/multi:v1")] {
            push_dir(&ldir, tag, &format!("{addr}/{repo}"));
        }
        // And back out into a fresh layout: every blob is read and checked by skopeo.
        skopeo(&[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{addr}/ns/multi:v1"),
            &format!("oci:{}:x", out.display()),
        ]);
        (raw_manifest(&format!("{addr}/ns/app:v1")), raw_manifest(&format!("{addr}/ns/multi:v1")))
    })
    .await;
    assert_eq!(sha256_digest(&raw_app), app.digest);
    assert_eq!(sha256_digest(&raw_index), index.digest);
    assert_eq!(verify_all_blobs(&sim.addr, "ns/app", &raw_app).await.len(), 3);
    assert_eq!(verify_all_blobs(&sim.addr, "ns/multi", &raw_index).await.len(), 6);

    let tags: serde_json::Value =
        reqwest::get(format!("http://{}/v2/ns/app/tags/list", sim.addr)).await.unwrap().json().await.unwrap();
    assert_eq!(tags, serde_json::json!({"name": "ns/app", "tags": ["v1"]}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn modelship_copies_into_and_within_the_sim_registry() {
    let a = sim().await;
    let b = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(dir.path());
    let app = layout.image(&[layout.big_layer(3 << 20, 5), layout.blob(OCI_LAYER, b"x")], "amd64");
    layout.tag("app", &app);
    let (addr, ldir) = (a.addr.clone(), layout.dir.clone());
    blocking(move || push_dir(&ldir, "app", &format!("{addr}/dev/app:v1"))).await;

    let src = ImageRef::parse(&format!("{}/dev/app@{}", a.addr, app.digest)).unwrap();
    // Another sim: every blob streamed across.
    let stats = copy_image(&src, &ImageRef::parse(&format!("{}/prod/app:v1", b.addr)).unwrap(), &opts()).await.unwrap();
    assert_eq!((stats.digest.as_str(), stats.blobs_uploaded), (app.digest.as_str(), 3));
    let again = copy_image(&src, &ImageRef::parse(&format!("{}/prod/app:v1", b.addr)).unwrap(), &opts()).await.unwrap();
    assert_eq!((again.blobs_skipped, again.bytes_uploaded), (3, 0));
    // The same sim, another repository: mounted, nothing uploaded.
    let stats = copy_image(&src, &ImageRef::parse(&format!("{}/prod/app:v1", a.addr)).unwrap(), &opts()).await.unwrap();
    assert_eq!((stats.blobs_mounted, stats.bytes_uploaded), (3, 0));
    let raw = blocking({
        let addr = b.addr.clone();
        move || raw_manifest(&format!("{addr}/prod/app:v1"))
    })
    .await;
    assert_eq!(sha256_digest(&raw), app.digest);
    verify_all_blobs(&b.addr, "prod/app", &raw).await;
    verify_all_blobs(&a.addr, "prod/app", &raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_pushed_in_process_is_readable_by_skopeo() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let context = dir.path().join("context.tar");
    std::fs::write(&context, vec![7u8; 300_000]).unwrap();
    let (layer, size) = sim.store.put_blob_from_file("models-dev/weather", &context).await.unwrap();
    assert_eq!((layer.as_str(), size), (sha256_file(&context).as_str(), 300_000));
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["MODEL_NAME=weather"], "Cmd": ["seldon-core-microservice", "MyModel"], "WorkingDir": "/app"},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    })
    .to_string();
    let config_digest = sim.store.put_blob("models-dev/weather", config.as_bytes()).await.unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": size}],
    })
    .to_string();
    let digest =
        sim.store.put_manifest("models-dev/weather", "latest", OCI_MANIFEST, manifest.as_bytes()).await.unwrap();
    assert_eq!(digest, sha256_digest(manifest.as_bytes()));

    let addr = sim.addr.clone();
    let d = digest.clone();
    let inspect = blocking(move || {
        skopeo(&["inspect", "--tls-verify=false", &format!("docker://{addr}/models-dev/weather@{d}")])
    })
    .await;
    let inspect: serde_json::Value = serde_json::from_slice(&inspect).unwrap();
    assert_eq!(inspect["Digest"], digest);
    assert_eq!(inspect["Env"], serde_json::json!(["MODEL_NAME=weather"]));
    assert_eq!(inspect["Layers"], serde_json::json!([layer]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_edges_ranges_chunked_uploads_and_rejections() {
    let sim = sim().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", sim.addr);

    let v2 = http.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(v2.status(), 200);
    assert_eq!(v2.headers()["docker-distribution-api-version"], "registry/2.0");

    // Chunked: POST, two PATCHes, PUT with the digest.
    let start = http.post(format!("{base}/v2/ns/app/blobs/uploads/")).send().await.unwrap();
    assert_eq!(start.status(), 202);
    let loc = start.headers()["location"].to_str().unwrap().to_string();
    let p1 = http.patch(format!("{base}{loc}")).body("hello ").send().await.unwrap();
    assert_eq!((p1.status().as_u16(), p1.headers()["range"].to_str().unwrap()), (202, "0-5"));
    let loc = p1.headers()["location"].to_str().unwrap().to_string();
    http.patch(format!("{base}{loc}")).body("world").send().await.unwrap();
    let digest = sha256_digest(b"hello world");
    let put = http.put(format!("{base}{loc}?digest={digest}")).send().await.unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(put.headers()["docker-content-digest"].to_str().unwrap(), digest);

    // Range reads.
    let part = http.get(format!("{base}/v2/ns/app/blobs/{digest}")).header("Range", "bytes=6-").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 6-10/11");
    assert_eq!(part.text().await.unwrap(), "world");
    let head = http.head(format!("{base}/v2/ns/app/blobs/{digest}")).send().await.unwrap();
    assert_eq!((head.status().as_u16(), head.headers()["content-length"].to_str().unwrap()), (200, "11"));

    // A monolithic POST whose bytes do not match the digest is refused and not stored.
    let wrong = sha256_digest(b"something else");
    let r =
        http.post(format!("{base}/v2/ns/app/blobs/uploads/?digest={wrong}")).body("hello world").send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("DIGEST_INVALID"));
    assert_eq!(http.head(format!("{base}/v2/ns/app/blobs/{wrong}")).send().await.unwrap().status(), 404);

    // A manifest naming a blob the repository lacks is refused.
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest, "size": 11},
        "layers": [{"mediaType": OCI_LAYER, "digest": wrong, "size": 14}],
    });
    let r = http
        .put(format!("{base}/v2/ns/app/manifests/v1"))
        .header("Content-Type", OCI_MANIFEST)
        .body(manifest.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("MANIFEST_BLOB_UNKNOWN"));

    // Mount from a repository that has the blob; not from one that lacks it.
    let m = http.post(format!("{base}/v2/other/app/blobs/uploads/?mount={digest}&from=ns/app")).send().await.unwrap();
    assert_eq!(m.status(), 201);
    let m = http.post(format!("{base}/v2/third/app/blobs/uploads/?mount={digest}&from=nope/app")).send().await.unwrap();
    assert_eq!(m.status(), 202, "no such blob in `from`: an ordinary upload session starts");

    let missing = http.get(format!("{base}/v2/ns/app/manifests/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("MANIFEST_UNKNOWN"));
}

/// The sim registry behind a docker-style token server: `/token` hands out
/// a bearer token for the requested scopes to `robot` (basic auth), and
/// every `/v2/` request needs a token whose scope covers it. The first blob
/// PUT is refused once, as if its token had expired mid-upload.
async fn bearer_sim(password: &'static str) -> (Sim, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::Request;
    use axum::http::{StatusCode, header};
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use base64::Engine;

    let scopes_seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let store = RegistryStore::new(dir.path().join("registry"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{addr}/token");
    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("robot:{password}")));
    let seen = scopes_seen.clone();
    let token = move |req: Request| {
        let ok = req.headers().get(header::AUTHORIZATION).is_some_and(|v| *v == *expected);
        let scopes: Vec<String> = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .collect();
        seen.lock().unwrap().extend(scopes.iter().cloned());
        async move {
            if !ok {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let body = serde_json::json!({"token": format!("tok.{}", scopes.join("|"))});
            axum::Json(body).into_response()
        }
    };
    let expire_once = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let guard = move |req: Request, next: Next| {
        let realm = realm.clone();
        let expire_once = expire_once.clone();
        async move {
            let path = req.uri().path().to_string();
            let bearer =
                req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let repo = path.strip_prefix("/v2/").and_then(|p| {
                ["/blobs/", "/manifests/", "/tags/"].iter().find_map(|m| p.split_once(m).map(|(r, _)| r.to_string()))
            });
            let action = if req.method() == "GET" || req.method() == "HEAD" { "pull" } else { "push" };
            let allowed = match &repo {
                None => bearer.starts_with("Bearer tok."),
                Some(r) => bearer.strip_prefix("Bearer tok.").is_some_and(|scopes| {
                    scopes.split('|').any(|s| {
                        s.strip_prefix(&format!("repository:{r}:"))
                            .is_some_and(|acts| acts.split(',').any(|a| a == action))
                    })
                }),
            };
            let expired = req.method() == "PUT"
                && path.contains("/blobs/uploads/")
                && expire_once.swap(false, std::sync::atomic::Ordering::SeqCst);
            if allowed && !expired {
                return next.run(req).await;
            }
            let scope = repo.map(|r| format!(",scope=\"repository:{r}:{action}\"")).unwrap_or_default();
            let challenge = format!("Bearer realm=\"{realm}\",service=\"sim\"{scope}");
            let mut resp: Response =
                (StatusCode::UNAUTHORIZED, r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#).into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
            resp
        }
    };
    let app = router(store.clone()).layer(middleware::from_fn(guard)).route("/token", axum::routing::get(token));
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (Sim { addr, store, task, _dir: dir }, scopes_seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bearer_token_challenge_with_credentials_from_an_auth_file_or_a_pull_secret() {
    use base64::Engine;
    use modelship::registry::{AuthStore, RegistryError};

    let a = sim().await;
    let (b, scopes) = bearer_sim("s3cret-robot-pw").await;
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(dir.path());
    let app = layout.image(&[layout.big_layer(1 << 20, 9)], "amd64");
    layout.tag("app", &app);
    let (addr, ldir) = (a.addr.clone(), layout.dir.clone());
    blocking(move || push_dir(&ldir, "app", &format!("{addr}/dev/app:v1"))).await;
    let src = ImageRef::parse(&format!("{}/dev/app@{}", a.addr, app.digest)).unwrap();
    let dst = ImageRef::parse(&format!("{}/prod/app:v1", b.addr)).unwrap();

    // Anonymous: the token server refuses, and the error says what to do.
    let err = copy_image(&src, &dst, &opts()).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(err.to_string().contains(&format!("registry {} answered 401 Unauthorized", b.addr)), "{err}");

    // An auth file (containers auth.json shape) with the robot's password.
    let auth = base64::engine::general_purpose::STANDARD.encode("robot:s3cret-robot-pw");
    let authfile = dir.path().join("auth.json");
    std::fs::write(&authfile, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, b.addr)).unwrap();
    let store = AuthStore::from_file(&authfile).unwrap();
    let stats = copy_image(&src, &dst, &CopyOptions { auth: store, ..opts() }).await.unwrap();
    assert_eq!((stats.digest.as_str(), stats.blobs_uploaded), (app.digest.as_str(), 2));
    assert_eq!(stats.retries, 1, "the blob whose token 'expired' was restarted with a new token");
    assert!(
        scopes.lock().unwrap().iter().any(|s| s == "repository:prod/app:pull,push"),
        "{:?}",
        scopes.lock().unwrap()
    );

    // The same credentials as a Kubernetes dockerconfigjson pull Secret's data.
    let secret = format!(r#"{{"auths":{{"http://{}":{{"username":"robot","password":"s3cret-robot-pw"}}}}}}"#, b.addr);
    let store = AuthStore::from_dockerconfigjson(secret.as_bytes()).unwrap();
    let dst2 = ImageRef::parse(&format!("{}/prod/app:v2", b.addr)).unwrap();
    let stats = copy_image(&src, &dst2, &CopyOptions { auth: store, ..opts() }).await.unwrap();
    assert_eq!(stats.blobs_skipped, 2);
    let raw = b.store.get_manifest("prod/app", "v2").await.unwrap().2;
    assert_eq!(sha256_digest(&raw), app.digest);
}
