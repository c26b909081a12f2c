//! Image copy by digest between two real registries (Debian's
//! `docker-registry`, distribution 2.8) standing for two clusters. Images are
//! pushed into the source with `skopeo copy oci:DIR:tag` from layouts made
//! here, and every result is checked with `skopeo inspect --raw` and by
//! reading every blob back.

mod support;

use std::process::Command;

use modelship::registry::{AuthStore, CopyOptions, CopyStats, ImageRef, RegistryError, copy_image};
use support::registry::*;

fn image(s: &str) -> ImageRef {
    ImageRef::parse(s).unwrap()
}

fn tag_absent(registry: &str, repo: &str, tag: &str) -> bool {
    let out = skopeo_output(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{registry}/{repo}:{tag}")]);
    !out.status.success()
}

/// A three-layer image with one layer over 100 MB, and a two-platform index
/// sharing a layer. Returns (image manifest, index).
fn build_images(layout: &mut Layout) -> (Desc, Desc) {
    let big = layout.big_layer(105 << 20, 1);
    let small = layout.blob(OCI_LAYER, b"model weights v1\n");
    let mid = layout.big_layer(3 << 20, 2);
    let app = layout.image(&[mid.clone(), big, small.clone()], "amd64");
    layout.tag("app", &app);
    let arm_only = layout.blob(OCI_LAYER, b"arm64 binaries\n");
    let amd = layout.image(&[mid.clone(), small.clone()], "amd64");
    let arm = layout.image(&[mid, arm_only], "arm64");
    let index = layout.index(&[(amd, "amd64"), (arm, "arm64")]);
    layout.tag("multi", &index);
    (app, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_images_and_indexes_by_digest_between_registries() {
    let a = DockerRegistry::start();
    let b = DockerRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(dir.path());
    let (app, index) = build_images(&mut layout);
    push(&layout, "app", &format!("{}/models/weather:v1", a.addr));
    push(&layout, "multi", &format!("{}/models/multi:v1", a.addr));
    let src_raw = raw_manifest(&format!("{}/models/weather@{}", a.addr, app.digest));
    assert_eq!(sha256_digest(&src_raw), app.digest, "skopeo kept the layout's manifest bytes");

    // Cold copy by digest to another cluster's registry, tagged there.
    let src = image(&format!("docker://{}/models/weather@{}", a.addr, app.digest));
    let dst = image(&format!("docker://{}/prod/weather:prod", b.addr));
    let stats = copy_image(&src, &dst, &copy_opts()).await.unwrap();
    assert_eq!(stats.digest, app.digest);
    assert_eq!((stats.blobs, stats.blobs_uploaded, stats.blobs_skipped, stats.blobs_mounted), (4, 4, 0, 0));
    assert_eq!(stats.bytes_uploaded, (105 << 20) + (3 << 20) + 17 + config_size(&src_raw));
    let dst_raw = raw_manifest(&format!("{}/prod/weather:prod", b.addr));
    assert_eq!(dst_raw, src_raw, "manifest bytes are identical, so is the digest");
    assert_eq!(verify_all_blobs(&b.addr, "prod/weather", &dst_raw).await.len(), 4);

    // Again: everything is there, nothing is uploaded.
    let again = copy_image(&src, &dst, &copy_opts()).await.unwrap();
    assert_eq!((again.blobs_skipped, again.blobs_uploaded, again.bytes_uploaded), (4, 0, 0));
    assert_eq!(again.digest, app.digest);

    // By tag works too and lands on the same digest.
    let by_tag = image(&format!("{}/models/weather:v1", a.addr));
    let stats = copy_image(&by_tag, &image(&format!("{}/prod/weather:by-tag", b.addr)), &copy_opts()).await.unwrap();
    assert_eq!(stats.digest, app.digest);

    // A multi-arch index: every child manifest and its blobs come along.
    let src = image(&format!("{}/models/multi@{}", a.addr, index.digest));
    let stats = copy_image(&src, &image(&format!("{}/prod/multi:prod", b.addr)), &copy_opts()).await.unwrap();
    assert_eq!(stats.digest, index.digest);
    assert_eq!(stats.manifests, 3);
    // mid (shared), small, arm-only, and two configs.
    assert_eq!(stats.blobs, 5);
    let dst_index = raw_manifest(&format!("{}/prod/multi:prod", b.addr));
    assert_eq!(sha256_digest(&dst_index), index.digest);
    assert_eq!(verify_all_blobs(&b.addr, "prod/multi", &dst_index).await.len(), 6, "2 children x (config + 2 layers)");
}

fn config_size(manifest: &[u8]) -> u64 {
    let j: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    j["config"]["size"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_registry_promotion_mounts_every_blob() {
    let a = DockerRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path());
    let l1 = layout.big_layer(2 << 20, 7);
    let l2 = layout.blob(OCI_LAYER, b"layer two");
    let app = layout.image(&[l1, l2], "amd64");
    let mut layout = layout;
    layout.tag("app", &app);
    push(&layout, "app", &format!("{}/dev/app:v1", a.addr));

    let stats = copy_image(
        &image(&format!("{}/dev/app@{}", a.addr, app.digest)),
        &image(&format!("{}/prod/app:v1", a.addr)),
        &copy_opts(),
    )
    .await
    .unwrap();
    assert_eq!((stats.blobs_mounted, stats.blobs_uploaded, stats.bytes_uploaded), (3, 0, 0));
    let raw = raw_manifest(&format!("{}/prod/app:v1", a.addr));
    assert_eq!(sha256_digest(&raw), app.digest);
    assert_eq!(verify_all_blobs(&a.addr, "prod/app", &raw).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_not_in_the_source_is_a_clear_error() {
    let a = DockerRegistry::start();
    let b = DockerRegistry::start();
    let missing = format!("sha256:{}", "ab".repeat(32));
    let err = copy_image(
        &image(&format!("{}/models/weather@{missing}", a.addr)),
        &image(&format!("{}/prod/weather:prod", b.addr)),
        &copy_opts(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}/models/weather@{missing} not found in the source registry (manifest unknown)", a.addr)
    );

    // TLS is verified unless the registry is named insecure: a plain-http
    // registry is then unreachable, and the message says which flag fixes it.
    let err = copy_image(
        &image(&format!("{}/models/weather@{missing}", a.addr)),
        &image(&format!("{}/prod/weather:prod", b.addr)),
        &CopyOptions { src_insecure: false, ..copy_opts() },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot reach registry {} at https://{}/v2/", a.addr, a.addr)), "{text}");
    assert!(text.contains("--src-insecure"), "{text}");
}

/// A small image in `a` as `repo:v1`; returns its manifest descriptor.
fn small_image(a: &DockerRegistry, repo: &str, layer_size: u64) -> Desc {
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(dir.path());
    let l1 = layout.big_layer(layer_size, 3);
    let l2 = layout.blob(OCI_LAYER, b"second");
    let app = layout.image(&[l1, l2], "amd64");
    layout.tag("app", &app);
    push(&layout, "app", &format!("{}/{repo}:v1", a.addr));
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_rejects_auth_gives_a_clear_401_without_credentials() {
    let a = DockerRegistry::start();
    let b = DockerRegistry::start_with_auth("promoter", "correct-horse-battery");
    let app = small_image(&a, "dev/app", 1 << 20);
    let src = image(&format!("{}/dev/app@{}", a.addr, app.digest));
    let dst = image(&format!("{}/prod/app:v1", b.addr));

    // No credentials at all.
    let err = copy_image(&src, &dst, &CopyOptions { auth: AuthStore::anonymous(), ..copy_opts() }).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(text.contains(&format!("registry {} answered 401 Unauthorized", b.addr)), "{text}");
    assert!(text.contains("no credentials were given"), "{text}");

    // Wrong credentials from an auth file: named by user, password never shown.
    let dir = tempfile::tempdir().unwrap();
    let authfile = dir.path().join("auth.json");
    let write_auth = |password: &str| {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("promoter:{password}"));
        std::fs::write(&authfile, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, b.addr)).unwrap();
    };
    write_auth("wrong-password-123");
    let auth = AuthStore::from_file(&authfile).unwrap();
    let err = copy_image(&src, &dst, &CopyOptions { auth, ..copy_opts() }).await.unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains("the credentials of user `promoter` were rejected"), "{text}");
    assert!(!text.contains("wrong-password-123"), "{text}");

    // Through the binary: exit 1, the 401 on stderr, no password anywhere.
    let out = Command::new(env!("CARGO_BIN_EXE_modelship"))
        .args(["image", "copy", &format!("docker://{src}"), &format!("docker://{dst}")])
        .args(["--src-insecure", "--dest-insecure", "--authfile"])
        .arg(&authfile)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401 Unauthorized") && stderr.contains("promoter"), "{stderr}");
    assert!(
        !stderr.contains("wrong-password-123") && !String::from_utf8_lossy(&out.stdout).contains("wrong-password-123")
    );

    // The right credentials: the copy goes through and the binary prints the digest.
    write_auth("correct-horse-battery");
    let out = Command::new(env!("CARGO_BIN_EXE_modelship"))
        .args(["image", "copy", &format!("docker://{src}"), &format!("docker://{dst}")])
        .args(["--src-insecure", "--dest-insecure", "--authfile"])
        .arg(&authfile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), app.digest);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("correct-horse-battery"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_dropped_mid_blob_is_retried_and_then_fails_without_moving_the_tag() {
    let a = DockerRegistry::start();
    let b = DockerRegistry::start();
    let app = small_image(&a, "dev/app", 8 << 20);

    // One cut: the blob is restarted and the copy succeeds.
    let proxy = CuttingProxy::start(&a.addr, 2 << 20, 1).await;
    let src = image(&format!("{}/dev/app@{}", proxy.addr, app.digest));
    let stats: CopyStats = copy_image(&src, &image(&format!("{}/prod/app:v1", b.addr)), &copy_opts()).await.unwrap();
    assert_eq!(stats.digest, app.digest);
    assert_eq!(stats.retries, 1);
    let raw = raw_manifest(&format!("{}/prod/app:v1", b.addr));
    verify_all_blobs(&b.addr, "prod/app", &raw).await;

    // Every attempt cut: a clear error after the retries, and no tag.
    let proxy = CuttingProxy::start(&a.addr, 2 << 20, -1).await;
    let src = image(&format!("{}/dev/app@{}", proxy.addr, app.digest));
    let err =
        copy_image(&src, &image(&format!("{}/prod/other:v1", b.addr)), &CopyOptions { retries: 2, ..copy_opts() })
            .await
            .unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains("failed after 3 attempt(s); no tag was moved"), "{text}");
    assert!(text.contains("broke off after"), "{text}");
    assert!(tag_absent(&b.addr, "prod/other", "v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_bytes_that_do_not_match_their_digest_are_detected_and_nothing_is_tagged() {
    let a = DockerRegistry::start();
    let b = DockerRegistry::start();
    let app = small_image(&a, "dev/app", 1 << 20);
    let raw = raw_manifest(&format!("{}/dev/app@{}", a.addr, app.digest));
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    // Same length, different bytes: only a digest check can tell.
    let path = a.blob_data(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let err = copy_image(
        &image(&format!("{}/dev/app@{}", a.addr, app.digest)),
        &image(&format!("{}/prod/app:v1", b.addr)),
        &copy_opts(),
    )
    .await
    .unwrap_err();
    let text = format!("{:#}", anyhow::Error::from(err));
    assert!(text.contains(&format!("blob {layer} read from {}/dev/app hashes to", a.addr)), "{text}");
    assert!(text.contains("failed after 1 attempt(s)"), "a digest mismatch is not retried: {text}");
    assert!(tag_absent(&b.addr, "prod/app", "v1"));
    let head =
        reqwest::Client::new().head(format!("http://{}/v2/prod/app/blobs/{layer}", b.addr)).send().await.unwrap();
    assert_eq!(head.status(), 404, "the corrupt blob never landed in the target");
}
