//! `POST .../buildconfigs/NAME/instantiatebinary`: number and create the
//! Build, then receive the uploaded archive once the controller has it
//! `Running`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::super::SimApi;
use super::super::server::SubresourceRequest;
use super::super::status::ApiError;
use super::super::store::WriteOptions;
use super::log::append_log;
use super::{BUILDCONFIGS, BUILDS, GROUP, build_dir, end_build, phase_of, set_status};

pub(super) async fn instantiate_binary(api: SimApi, req: SubresourceRequest) -> Response {
    match instantiate_inner(api, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn instantiate_inner(api: SimApi, req: SubresourceRequest) -> Result<Response, ApiError> {
    if req.method != Method::POST {
        return Err(ApiError::method_not_allowed("instantiatebinary accepts POST only"));
    }
    let ns = req.info.namespace.clone().unwrap_or_default();
    let bc_name = req.info.name.clone().unwrap_or_default();
    if !api.store.namespace_exists(&ns) {
        return Err(ApiError::namespace_not_found(&ns));
    }
    let bc = api.store.get(&BUILDCONFIGS, &ns, &bc_name).ok_or_else(|| ApiError::not_found(&BUILDCONFIGS, &bc_name))?;
    if bc.pointer("/spec/source/type").and_then(Value::as_str) != Some("Binary") {
        return Err(ApiError::bad_request(format!(
            "build config {ns}/{bc_name} does not support binary builds: spec.source.type must be Binary"
        )));
    }
    let revision = revision_of(&req.raw_query);
    // Number the build atomically with the BuildConfig's lastVersion.
    let bc = api.store.modify(&BUILDCONFIGS, &ns, &bc_name, &WriteOptions::default(), |old| {
        let mut obj = old.clone();
        let n = old.pointer("/status/lastVersion").and_then(Value::as_i64).unwrap_or(0) + 1;
        obj["status"] = json!({ "lastVersion": n });
        Ok(obj)
    })?;
    let number = bc.pointer("/status/lastVersion").and_then(Value::as_i64).unwrap_or(1);
    let name = format!("{bc_name}-{number}");
    let mut spec = json!({
        "serviceAccount": "builder",
        "source": { "type": "Binary", "binary": {} },
        "strategy": bc.pointer("/spec/strategy").cloned().unwrap_or(json!({ "type": "Docker", "dockerStrategy": {} })),
        "output": bc.pointer("/spec/output").cloned().unwrap_or(json!({})),
        "triggeredBy": [{ "message": "Binary build triggered" }],
    });
    if let Some(revision) = revision {
        spec["revision"] = revision;
    }
    let build = json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "Build",
        "metadata": {
            "name": name,
            "labels": {
                "buildconfig": bc_name,
                "openshift.io/build-config.name": bc_name,
                "openshift.io/build.start-policy": bc.pointer("/spec/runPolicy").and_then(Value::as_str).unwrap_or("Serial"),
            },
            "annotations": {
                "openshift.io/build-config.name": bc_name,
                "openshift.io/build.number": number.to_string(),
            },
            "ownerReferences": [{
                "apiVersion": format!("{GROUP}/v1"), "kind": "BuildConfig", "name": bc_name,
                "uid": bc.pointer("/metadata/uid").cloned().unwrap_or(json!("")), "controller": true,
            }],
        },
        "spec": spec,
        "status": { "phase": "New", "config": { "kind": "BuildConfig", "namespace": ns, "name": bc_name } },
    });
    api.store.create(&BUILDS, &ns, build, false)?;

    // Waiting for the build to run, then the upload, run in their own task
    // so a client that goes away still leaves the Build in a final state
    // (the handler future is dropped with the connection).
    let (tx, rx) = tokio::sync::oneshot::channel();
    let body = req.body;
    tokio::spawn(async move {
        let _ = tx.send(wait_and_upload(&api, &ns, &name, body).await);
    });
    let obj = rx.await.map_err(|_| ApiError::internal("the upload task ended without an answer"))??;
    Ok((StatusCode::CREATED, [(header::CONTENT_TYPE, "application/json")], obj.to_string()).into_response())
}

/// How long openshift-apiserver's `instantiatebinary` waits for the Build
/// to run (`NewBinaryStorage`: `Timeout: 5 * time.Minute`).
pub const BUILD_START_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// As openshift-apiserver's binary instantiate handler
/// (pkg/build/apiserver/registry/buildconfiginstantiate/rest.go,
/// `binaryInstantiateHandler.handle`): wait until the Build runs (its pod
/// attached; a Serial BuildConfig runs one build at a time), at most
/// [`SimApi::build_start_timeout`] (then `504 Timeout` and the Build is
/// cancelled); a Build that ends or vanishes first is a `400`; then stream
/// the body into the build as its stdin and answer with the running Build.
async fn wait_and_upload(api: &SimApi, ns: &str, name: &str, body: Body) -> Result<Value, ApiError> {
    let timeout = api.build_start_timeout;
    let waited = tokio::time::timeout(timeout, async {
        loop {
            match api.store.get(&BUILDS, ns, name) {
                None => return None,
                Some(b) if phase_of(&b) != "New" && phase_of(&b) != "Pending" => return Some(b),
                Some(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = api.shutdown.cancelled() => return None,
            }
        }
    })
    .await;
    let no_logs = "No logs are available.";
    let latest = match waited {
        Err(_) => {
            // The handler's deferred cancelBuild.
            let _ = set_status(api, ns, name, |s| s["cancelled"] = json!(true));
            let after = humantime::format_duration(timeout);
            return Err(ApiError::timeout(format!("timed out waiting for build {name} to start after {after}")));
        }
        Ok(None) => {
            return Err(ApiError::bad_request(format!("build {name} was deleted before it started: {no_logs}")));
        }
        Ok(Some(b)) => b,
    };
    match phase_of(&latest) {
        "Running" => {}
        "Error" => return Err(ApiError::bad_request(format!("build {name} encountered an error: {no_logs}"))),
        "Failed" => {
            let st =
                |k: &str| latest.pointer(&format!("/status/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(ApiError::bad_request(format!("build {name} failed: {}: {}", st("reason"), st("message"))));
        }
        "Cancelled" => return Err(ApiError::bad_request(format!("build {name} was cancelled: {no_logs}"))),
        other => return Err(ApiError::bad_request(format!("cannot upload file to build {name} with status {other}"))),
    }
    let dir = build_dir(api, ns, name);
    match receive_archive(body, &dir).await {
        Ok(size) => {
            tracing::info!(namespace = %ns, build = %name, bytes = size, "sim: binary build input received");
            Ok(api.store.get(&BUILDS, ns, name).unwrap_or(latest))
        }
        Err(e) => {
            tracing::warn!(namespace = %ns, build = %name, error = %e, "sim: binary upload failed");
            append_log(&dir, &format!("error: receiving the binary input failed: {e}\n"));
            end_build(api, ns, name, "Failed", "FetchSourceFailed", "Failed to fetch the input source.");
            Err(ApiError::internal(format!("error streaming binary content to build {ns}/{name}: {e}")))
        }
    }
}

/// `spec.revision` from the `BinaryBuildRequestOptions` query parameters,
/// as openshift-apiserver builds it (pkg/build/apiserver/registry/
/// buildconfiginstantiate/rest.go, `binaryInstantiateHandler.handle`): only
/// when `revision.commit` is non-empty; without a commit the message and
/// author are dropped with it.
fn revision_of(raw_query: &str) -> Option<Value> {
    let params: BTreeMap<String, String> = url::form_urlencoded::parse(raw_query.as_bytes()).into_owned().collect();
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    if get("revision.commit").is_empty() {
        return None;
    }
    // SourceControlUser and the revision's strings are `omitempty`.
    let user = |name: &str, email: &str| {
        let mut u = serde_json::Map::new();
        for (k, v) in [("name", get(name)), ("email", get(email))] {
            if !v.is_empty() {
                u.insert(k.into(), json!(v));
            }
        }
        Value::Object(u)
    };
    let mut git = serde_json::Map::new();
    git.insert("commit".into(), json!(get("revision.commit")));
    git.insert("author".into(), user("revision.authorName", "revision.authorEmail"));
    git.insert("committer".into(), user("revision.committerName", "revision.committerEmail"));
    if !get("revision.message").is_empty() {
        git.insert("message".into(), json!(get("revision.message")));
    }
    Some(json!({ "type": "Git", "git": git }))
}

/// Stream the request body to `dir/context` (via a temp name); its size.
async fn receive_archive(body: Body, dir: &Path) -> std::io::Result<u64> {
    tokio::fs::create_dir_all(dir).await?;
    let part = dir.join("context.part");
    let mut file = tokio::fs::File::create(&part).await?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(std::io::Error::other)?;
        size += chunk.len() as u64;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    drop(file);
    if size == 0 {
        return Err(std::io::Error::other("the request body is empty"));
    }
    tokio::fs::rename(&part, dir.join("context")).await?;
    Ok(size)
}
