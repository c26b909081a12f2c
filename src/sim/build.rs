//! `build.openshift.io/v1`: BuildConfigs, Builds, the `instantiatebinary`
//! and `log` subresources, and the build controller.
//!
//! A binary build: `instantiatebinary` numbers the build (`BC-N`), creates
//! the Build (`New`), streams the uploaded archive to
//! `DATA/builds/NS/NAME/context` and marks it `Pending`. The controller
//! moves it through `Running` to `Complete`/`Failed`: it parses the
//! Dockerfile, logs each step (RUN steps are not executed: this is a
//! simulation), lays the context files out as the COPY instructions say in
//! one gzip layer, writes an OCI image config from the instructions and
//! pushes layer, config and manifest to the sim's registry. The base image is
//! not pulled: the image holds the context layer only, and says so in its
//! history. Cancel by setting `status.cancelled: true`, as `oc cancel-build`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::SimApi;
use super::dockerfile::{self, Instruction};
use super::image::{IMAGESTREAMS, PushedImage, record_push};
use super::resource::{Column, ResourceTable, ResourceType};
use super::server::SubresourceRequest;
use super::status::ApiError;
use super::store::WriteOptions;

pub const GROUP: &str = "build.openshift.io";

pub const BUILDCONFIGS: ResourceType = ResourceType {
    normalize: Some(normalize_build_config),
    default_on_create: Some(default_build_config),
    short_names: &["bc"],
    categories: &["all"],
    subresources: &["instantiate", "instantiatebinary"],
    generation: true,
    columns: &[
        Column::Path { name: "Type", path: "spec.strategy.type" },
        Column::Path { name: "From", path: "spec.source.type" },
        Column::Path { name: "Latest", path: "status.lastVersion" },
    ],
    ..ResourceType::namespaced(GROUP, "v1", "BuildConfig", "buildconfigs", "buildconfig")
};

pub const BUILDS: ResourceType = ResourceType {
    normalize: Some(normalize_build),
    default_on_create: Some(default_build),
    categories: &["all"],
    subresources: &["log"],
    columns: &[
        Column::Path { name: "Type", path: "spec.strategy.type" },
        Column::Path { name: "From", path: "spec.source.type" },
        Column::Path { name: "Status", path: "status.phase" },
        Column::Path { name: "Started", path: "status.startTimestamp" },
    ],
    ..ResourceType::namespaced(GROUP, "v1", "Build", "builds", "build")
};

pub fn register(table: &mut ResourceTable) {
    table.add(BUILDCONFIGS);
    table.add(BUILDS);
    table.subresource(
        GROUP,
        "buildconfigs",
        "instantiatebinary",
        Arc::new(|api, req| Box::pin(instantiate_binary(api, req))),
    );
    table.subresource(GROUP, "builds", "log", Arc::new(|api, req| Box::pin(build_log(api, req))));
}

/// Trigger types openshift-apiserver keeps; others are dropped on write
/// (`dropUnknownTriggers` in pkg/build/apiserver/registry/buildconfig/strategy.go).
const KNOWN_TRIGGERS: &[&str] = &["GitHub", "Generic", "GitLab", "Bitbucket", "ImageChange", "ConfigChange"];

fn object_at<'a>(v: &'a mut Value, key: &str) -> &'a mut serde_json::Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("just made an object")
}

/// What openshift-apiserver fills in a BuildConfig's or Build's `spec`
/// (`CommonSpec`): the defaulters of pkg/build/apis/build/v1/defaults.go
/// (a Binary source gets `binary: {}`, a Docker strategy
/// `dockerStrategy: {}`, an image `from` without kind `ImageStreamTag`),
/// then what encoding the Go types of openshift/api build/v1/types.go
/// writes: struct fields are never omitted (`source`, `output`,
/// `resources: {}`, `postCommit: {}`), `nodeSelector` has no `omitempty`
/// (`null` when unset), and empty `omitempty` lists are left out.
fn default_common_spec(obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    object_at(obj, "spec");
    let spec = &mut obj["spec"];
    let source = object_at(spec, "source");
    if source.get("type").and_then(Value::as_str) == Some("Binary")
        && !source.get("binary").is_some_and(Value::is_object)
    {
        source.insert("binary".into(), json!({}));
    }
    let strategy = object_at(spec, "strategy");
    if strategy.get("type").and_then(Value::as_str) == Some("Docker")
        && !strategy.get("dockerStrategy").is_some_and(Value::is_object)
    {
        strategy.insert("dockerStrategy".into(), json!({}));
    }
    for key in ["dockerStrategy", "sourceStrategy", "customStrategy"] {
        if let Some(from) = strategy.get_mut(key).and_then(|s| s.get_mut("from")).and_then(Value::as_object_mut)
            && from.get("kind").and_then(Value::as_str).is_none_or(str::is_empty)
        {
            from.insert("kind".into(), json!("ImageStreamTag"));
        }
    }
    for key in ["output", "resources", "postCommit"] {
        object_at(spec, key);
    }
    let spec = spec.as_object_mut().expect("made an object above");
    if !spec.get("nodeSelector").is_some_and(Value::is_object) {
        spec.insert("nodeSelector".into(), Value::Null);
    }
    for key in ["triggeredBy", "triggers"] {
        if spec.get(key).is_some_and(|v| v.is_null() || v.as_array().is_some_and(Vec::is_empty)) {
            spec.remove(key);
        }
    }
}

fn normalize_build_config(obj: &mut Value) {
    default_common_spec(obj);
    if !obj.is_object() {
        return;
    }
    let spec = object_at(obj, "spec");
    if spec.get("runPolicy").and_then(Value::as_str).is_none_or(str::is_empty) {
        spec.insert("runPolicy".into(), json!("Serial"));
    }
    if let Some(triggers) = spec.get_mut("triggers").and_then(Value::as_array_mut) {
        triggers.retain(|t| t.get("type").and_then(Value::as_str).is_some_and(|ty| KNOWN_TRIGGERS.contains(&ty)));
        for t in triggers.iter_mut() {
            if t["type"] == "ImageChange" && !t.get("imageChange").is_some_and(Value::is_object) {
                t["imageChange"] = json!({});
            }
        }
        if triggers.is_empty() {
            spec.remove("triggers");
        }
    }
    // `status` and its `lastVersion` have no `omitempty`.
    let status = object_at(obj, "status");
    status.entry("lastVersion").or_insert(json!(0));
}

/// The history limits the group API's BuildConfig strategy sets on create
/// only (`groupStrategy.PrepareForCreate`, same file as [`KNOWN_TRIGGERS`]).
fn default_build_config(obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    let spec = object_at(obj, "spec");
    spec.entry("successfulBuildsHistoryLimit").or_insert(json!(5));
    spec.entry("failedBuildsHistoryLimit").or_insert(json!(5));
}

fn normalize_build(obj: &mut Value) {
    default_common_spec(obj);
    if !obj.is_object() {
        return;
    }
    // `status.output` is a struct (never omitted).
    let status = object_at(obj, "status");
    status.entry("output").or_insert(json!({}));
}

/// A new Build is `New` (pkg/build/apiserver/registry/build/strategy.go,
/// `PrepareForCreate`).
fn default_build(obj: &mut Value) {
    if !obj.is_object() {
        return;
    }
    let status = object_at(obj, "status");
    if status.get("phase").and_then(Value::as_str).is_none_or(str::is_empty) {
        status.insert("phase".into(), json!("New"));
    }
}

fn is_terminal(phase: &str) -> bool {
    matches!(phase, "Complete" | "Failed" | "Error" | "Cancelled")
}

fn phase_of(obj: &Value) -> &str {
    obj.pointer("/status/phase").and_then(Value::as_str).unwrap_or("New")
}

fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

fn build_dir(api: &SimApi, ns: &str, name: &str) -> PathBuf {
    api.data_dir.join("builds").join(ns).join(name)
}

fn set_status(api: &SimApi, ns: &str, name: &str, f: impl FnOnce(&mut Value)) -> Result<Value, ApiError> {
    api.store.modify(&BUILDS, ns, name, &WriteOptions::default(), |old| {
        let mut obj = old.clone();
        if !obj.get("status").is_some_and(Value::is_object) {
            obj["status"] = json!({});
        }
        f(&mut obj["status"]);
        Ok(obj)
    })
}

/// Put the build in a final `phase` with its reason and message.
fn end_build(api: &SimApi, ns: &str, name: &str, phase: &str, reason: &str, message: &str) {
    let _ = set_status(api, ns, name, |s| {
        s["phase"] = json!(phase);
        s["reason"] = json!(reason);
        s["message"] = json!(message);
        s["completionTimestamp"] = json!(now());
    });
}

async fn instantiate_binary(api: SimApi, req: SubresourceRequest) -> Response {
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

fn append_log(dir: &Path, text: &str) {
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("build.log")) {
        let _ = f.write_all(text.as_bytes());
    }
}

async fn build_log(api: SimApi, req: SubresourceRequest) -> Response {
    let ns = req.info.namespace.clone().unwrap_or_default();
    let name = req.info.name.clone().unwrap_or_default();
    if api.store.get(&BUILDS, &ns, &name).is_none() {
        return ApiError::not_found(&BUILDS, &name).into_response();
    }
    let follow = url::form_urlencoded::parse(req.raw_query.as_bytes())
        .any(|(k, v)| k == "follow" && matches!(v.as_ref(), "true" | "1"));
    let path = build_dir(&api, &ns, &name).join("build.log");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut offset = 0usize;
        loop {
            // Read the phase before the file, so the last lines written
            // before the build ended are always sent.
            let done = !follow || api.store.get(&BUILDS, &ns, &name).is_none_or(|b| is_terminal(phase_of(&b)));
            let data = tokio::fs::read(&path).await.unwrap_or_default();
            if data.len() > offset {
                if tx.send(Ok(data[offset..].to_vec())).await.is_err() {
                    return;
                }
                offset = data.len();
            }
            if done {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tx.closed() => return,
                _ = api.shutdown.cancelled() => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .expect("static response parts are valid")
}

/// The build controller. `registry_host` is the sim's own `127.0.0.1:PORT`
/// (known only after bind); `duration` is roughly how long a build takes.
///
/// A `New` Build starts when its BuildConfig's run policy lets it
/// (openshift-controller-manager pkg/build/controller/policy: `Serial`, the
/// default, runs one build of a BuildConfig at a time, oldest first, and a
/// later one stays `New` until the earlier ones are done; `Parallel` builds
/// start at once; `SerialLatestOnly` is treated as `Serial`). It goes
/// `Pending` (the pod is created), `Running` (the pod waits for the binary
/// input `instantiatebinary` streams), then through the Dockerfile.
pub async fn controller(api: SimApi, registry_host: String, duration: Duration) {
    let mut rx = api.store.events();
    let active: Arc<Mutex<HashSet<(String, String)>>> = Arc::default();
    let key = BUILDS.key();
    // Left by a stopped sim: a build whose input was received runs again
    // from it; one still waiting for its input cannot get it any more (the
    // upload ended with the server), as a build pod whose attach broke.
    for b in api.store.list(&BUILDS, None).0 {
        let (ns, name) = ns_name(&b);
        if !is_terminal(phase_of(&b)) && !build_dir(&api, &ns, &name).join("context").exists() {
            append_log(&build_dir(&api, &ns, &name), "error: the binary input was not received\n");
            end_build(&api, &ns, &name, "Failed", "FetchSourceFailed", "Failed to fetch the input source.");
        }
    }
    let consider = |ns: &str| {
        let builds = api.store.list(&BUILDS, Some(ns)).0;
        for b in &builds {
            let (ns, name) = ns_name(b);
            let phase = phase_of(b);
            if b.pointer("/status/cancelled").and_then(Value::as_bool) == Some(true) && !is_terminal(phase) {
                append_log(&build_dir(&api, &ns, &name), "Build cancelled\n");
                end_build(&api, &ns, &name, "Cancelled", "CancelledBuild", "The build was cancelled by the user.");
                continue;
            }
            let startable = match phase {
                "New" => runnable(b, &builds),
                // Interrupted by a sim restart: run it again from its input.
                "Pending" | "Running" => true,
                _ => false,
            };
            if !startable || !active.lock().unwrap_or_else(|e| e.into_inner()).insert((ns.clone(), name.clone())) {
                continue;
            }
            let (api, host, active) = (api.clone(), registry_host.clone(), active.clone());
            tokio::spawn(async move {
                run_build(&api, &ns, &name, &host, duration).await;
                active.lock().unwrap_or_else(|e| e.into_inner()).remove(&(ns, name));
            });
        }
    };
    let namespaces = |api: &SimApi| {
        let mut v: Vec<String> = api.store.list(&BUILDS, None).0.iter().map(|b| ns_name(b).0).collect();
        v.dedup();
        v
    };
    for ns in namespaces(&api) {
        consider(&ns);
    }
    loop {
        tokio::select! {
            _ = api.shutdown.cancelled() => return,
            ev = rx.recv() => match ev {
                Ok(e) if e.resource == key => consider(&e.namespace),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for ns in namespaces(&api) {
                        consider(&ns);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

fn ns_name(obj: &Value) -> (String, String) {
    let get = |k: &str| obj.pointer(&format!("/metadata/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
    (get("namespace"), get("name"))
}

fn build_number_of(b: &Value) -> i64 {
    b.pointer("/metadata/annotations/openshift.io~1build.number")
        .and_then(Value::as_str)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Whether the run policy lets the `New` build `b` start now, among the
/// Builds of its namespace (`IsRunnable` and `GetNextConfigBuild` of
/// openshift-controller-manager pkg/build/controller/policy).
fn runnable(b: &Value, builds: &[Value]) -> bool {
    let config = |x: &Value| {
        x.pointer("/metadata/labels/openshift.io~1build-config.name").and_then(Value::as_str).map(str::to_string)
    };
    let policy = |x: &Value| {
        x.pointer("/metadata/labels/openshift.io~1build.start-policy")
            .and_then(Value::as_str)
            .unwrap_or("Serial")
            .to_string()
    };
    let Some(bc) = config(b) else { return true };
    let same: Vec<&Value> = builds.iter().filter(|x| config(x).as_deref() == Some(bc.as_str())).collect();
    let next = same.iter().filter(|x| phase_of(x) == "New").min_by_key(|x| build_number_of(x));
    match next {
        Some(n) if policy(n) == "Parallel" => policy(b) == "Parallel",
        Some(n) => {
            let running = same.iter().any(|x| matches!(phase_of(x), "Pending" | "Running"));
            !running && ns_name(n) == ns_name(b)
        }
        None => false,
    }
}

/// Move the build from one of `from` to `to` unless it was cancelled or
/// moved on meanwhile; whether it moved.
fn advance(api: &SimApi, ns: &str, name: &str, from: &[&str], to: &str) -> bool {
    let mut moved = false;
    let _ = api.store.modify(&BUILDS, ns, name, &WriteOptions::default(), |old| {
        let mut obj = old.clone();
        if from.contains(&phase_of(old)) && old.pointer("/status/cancelled").and_then(Value::as_bool) != Some(true) {
            obj["status"]["phase"] = json!(to);
            if to == "Running" {
                obj["status"]["startTimestamp"] = json!(now());
            }
            moved = true;
        }
        Ok(obj)
    });
    moved
}

enum Outcome {
    Complete { digest: String, reference: String },
    Failed { reason: &'static str, message: String },
    Cancelled,
}

async fn run_build(api: &SimApi, ns: &str, name: &str, host: &str, duration: Duration) {
    let dir = build_dir(api, ns, name);
    let outcome = tokio::select! {
        o = async {
            // The pod is scheduled, then starts and waits for its input.
            tokio::time::sleep(duration / 8).await;
            advance(api, ns, name, &["New"], "Pending");
            tokio::time::sleep(duration / 8).await;
            advance(api, ns, name, &["New", "Pending"], "Running");
            loop {
                if cancelled(api, ns, name) {
                    return Outcome::Cancelled;
                }
                if dir.join("context").exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            build_steps(api, ns, name, host, duration, &dir).await
        } => o,
        _ = api.shutdown.cancelled() => return,
    };
    let _ = set_status(api, ns, name, |s| {
        let started = s.get("startTimestamp").and_then(Value::as_str).and_then(|t| t.parse::<jiff::Timestamp>().ok());
        match &outcome {
            Outcome::Complete { digest, reference } => {
                s["phase"] = json!("Complete");
                s["output"] = json!({ "to": { "imageDigest": digest } });
                s["outputDockerImageReference"] = json!(reference);
            }
            Outcome::Failed { reason, message } => {
                s["phase"] = json!("Failed");
                s["reason"] = json!(reason);
                s["message"] = json!(message);
            }
            Outcome::Cancelled => return,
        }
        s["completionTimestamp"] = json!(now());
        if let Some(t) = started {
            let nanos = jiff::Timestamp::now().duration_since(t).as_nanos();
            s["duration"] = json!(nanos as i64);
        }
    });
    let _ = tokio::fs::remove_file(dir.join("context")).await;
}

fn cancelled(api: &SimApi, ns: &str, name: &str) -> bool {
    api.store.get(&BUILDS, ns, name).is_none_or(|b| {
        b.pointer("/status/cancelled").and_then(Value::as_bool) == Some(true) || phase_of(&b) == "Cancelled"
    })
}

async fn build_steps(api: &SimApi, ns: &str, name: &str, host: &str, duration: Duration, dir: &Path) -> Outcome {
    let Some(build) = api.store.get(&BUILDS, ns, name) else {
        return Outcome::Cancelled;
    };
    let _ = std::fs::remove_file(dir.join("build.log"));
    let log = |line: &str| append_log(dir, &format!("{line}\n"));
    log("Receiving source from STDIN as archive ...");
    log("This is a simulated OpenShift build: RUN steps are not executed and the base image is not pulled.");
    let dockerfile_path = build
        .pointer("/spec/strategy/dockerStrategy/dockerfilePath")
        .and_then(Value::as_str)
        .unwrap_or("Dockerfile")
        .trim_start_matches("./")
        .to_string();
    let archive = dir.join("context");
    let read = {
        let (archive, path) = (archive.clone(), dockerfile_path.clone());
        tokio::task::spawn_blocking(move || read_dockerfile(&archive, &path)).await
    };
    let text = match read {
        Ok(Ok(Some(t))) => t,
        Ok(Ok(None)) => {
            log(&format!("error: no {dockerfile_path} in the build input"));
            return Outcome::Failed {
                reason: "DockerBuildFailed",
                message: "Docker build strategy has failed.".into(),
            };
        }
        Ok(Err(e)) => {
            log(&format!("error: cannot read the build input: {e}"));
            return Outcome::Failed {
                reason: "FetchSourceFailed",
                message: "Failed to fetch the input source.".into(),
            };
        }
        Err(e) => {
            log(&format!("error: {e}"));
            return Outcome::Failed {
                reason: "GenericBuildFailed",
                message: "Generic Build failure - check logs for details.".into(),
            };
        }
    };
    let steps = match dockerfile::parse(&text) {
        Ok(s) => s,
        Err(e) => {
            log(&format!("error: {dockerfile_path}: {e}"));
            return Outcome::Failed {
                reason: "DockerBuildFailed",
                message: "Docker build strategy has failed.".into(),
            };
        }
    };
    let per_step = (duration / 2) / (steps.len().max(1) as u32);
    let mut image = ImageSpec::default();
    for (i, step) in steps.iter().enumerate() {
        log(&format!("STEP {}/{}: {}", i + 1, steps.len(), step.text));
        match &step.instruction {
            Instruction::Run(_) => log("--> RUN not executed in the simulation"),
            Instruction::From { image: base } => {
                log(&format!(
                    "--> base image {base} is not pulled in the simulation: the image holds the context layer only"
                ));
                image.base = base.clone();
            }
            _ => {}
        }
        image.apply(&step.instruction);
        if cancelled(api, ns, name) {
            return Outcome::Cancelled;
        }
        tokio::time::sleep(per_step).await;
    }
    let Some(to) = build.pointer("/spec/output/to/name").and_then(Value::as_str) else {
        log("error: the build has no output");
        return Outcome::Failed {
            reason: "InvalidOutputReference",
            message: "Output image could not be resolved.".into(),
        };
    };
    let (stream, tag) = to.split_once(':').unwrap_or((to, "latest"));
    if api.store.get(&IMAGESTREAMS, ns, stream).is_none() {
        log(&format!("error: imagestreams.image.openshift.io \"{stream}\" not found in namespace {ns}"));
        return Outcome::Failed {
            reason: "InvalidOutputReference",
            message: "Output image could not be resolved.".into(),
        };
    }
    log("COMMIT");
    let layer_path = dir.join("layer.tar.gz");
    let layer = {
        let (archive, out, copies) = (archive.clone(), layer_path.clone(), image.copies.clone());
        tokio::task::spawn_blocking(move || write_layer(&archive, &out, &copies)).await
    };
    let layer = match layer {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            log(&format!("error: building the layer: {e}"));
            return Outcome::Failed {
                reason: "DockerBuildFailed",
                message: "Docker build strategy has failed.".into(),
            };
        }
        Err(e) => {
            log(&format!("error: {e}"));
            return Outcome::Failed {
                reason: "GenericBuildFailed",
                message: "Generic Build failure - check logs for details.".into(),
            };
        }
    };
    let repo = format!("{ns}/{stream}");
    let repository = format!("{host}/{repo}");
    let pushed = push(api, &repo, &layer_path, &layer, &image, name).await;
    let _ = tokio::fs::remove_file(&layer_path).await;
    let (digest, config) = match pushed {
        Ok(d) => d,
        Err(e) => {
            log(&format!("error: pushing to {repository}:{tag}: {e}"));
            return Outcome::Failed {
                reason: "PushImageToRegistryFailed",
                message: "Failed to push the image to the registry.".into(),
            };
        }
    };
    log(&format!("Pushing image {repository}:{tag} ..."));
    log(&format!("Successfully pushed {repository}@{digest}"));
    if cancelled(api, ns, name) {
        return Outcome::Cancelled;
    }
    let recorded = record_push(
        api,
        ns,
        stream,
        tag,
        &PushedImage { repository: &repository, digest: &digest, config: &config, layer_size: layer.size },
    );
    if let Err(e) = recorded {
        log(&format!("error: updating imagestream {ns}/{stream}: {}", e.message));
        return Outcome::Failed {
            reason: "PushImageToRegistryFailed",
            message: "Failed to push the image to the registry.".into(),
        };
    }
    log("Push successful");
    tokio::time::sleep(duration / 4).await;
    Outcome::Complete { digest, reference: format!("{repository}:{tag}") }
}

/// The image config the Dockerfile's instructions describe.
#[derive(Debug, Default)]
struct ImageSpec {
    base: String,
    env: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    user: Option<String>,
    workdir: String,
    exposed: BTreeSet<String>,
    /// `(sources, absolute destination)` in order.
    copies: Vec<(Vec<String>, String)>,
    history: Vec<String>,
}

impl ImageSpec {
    fn apply(&mut self, ins: &Instruction) {
        match ins {
            Instruction::Env(pairs) => {
                for (k, v) in pairs {
                    self.env.retain(|(ek, _)| ek != k);
                    self.env.push((k.clone(), v.clone()));
                }
            }
            Instruction::Label(pairs) => self.labels.extend(pairs.iter().cloned()),
            Instruction::Cmd(c) => self.cmd = Some(c.clone()),
            Instruction::Entrypoint(e) => {
                self.entrypoint = Some(e.clone());
                // Docker resets CMD inherited from an earlier ENTRYPOINT.
            }
            Instruction::User(u) => self.user = Some(u.clone()),
            Instruction::Workdir(w) => self.workdir = join_abs(&self.workdir, w),
            Instruction::Expose(ports) => self.exposed.extend(ports.iter().cloned()),
            Instruction::Copy { sources, dest } => {
                let mut abs = join_abs(&self.workdir, dest);
                if dest.ends_with('/') && !abs.ends_with('/') {
                    abs.push('/');
                }
                self.copies.push((sources.clone(), abs));
            }
            _ => {}
        }
        if !matches!(ins, Instruction::Arg { .. }) {
            self.history.push(format!("{ins:?}"));
        }
    }
}

fn join_abs(base: &str, p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else if base.is_empty() {
        format!("/{p}")
    } else {
        format!("{}/{p}", base.trim_end_matches('/'))
    }
}

fn open_archive(path: &Path) -> std::io::Result<tar::Archive<Box<dyn Read>>> {
    let mut f = std::fs::File::open(path)?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    let f = std::fs::File::open(path)?;
    let reader: Box<dyn Read> = if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    Ok(tar::Archive::new(reader))
}

fn clean(p: &Path) -> String {
    let s = p.to_string_lossy();
    let s = s.trim_start_matches("./").trim_end_matches('/');
    if s == "." { String::new() } else { s.to_string() }
}

fn read_dockerfile(archive: &Path, name: &str) -> std::io::Result<Option<String>> {
    let mut ar = open_archive(archive)?;
    for entry in ar.entries()? {
        let entry = entry?;
        if clean(&entry.path()?) == name && entry.header().entry_type().is_file() {
            let mut s = String::new();
            entry.take(1024 * 1024).read_to_string(&mut s)?;
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// Where COPY puts the context file `p`, by each instruction in order.
fn destinations(p: &str, copies: &[(Vec<String>, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (sources, dest) in copies {
        let into_dir = dest.ends_with('/') || sources.len() > 1;
        let dest = dest.trim_end_matches('/');
        for src in sources {
            let src = src.trim_start_matches("./").trim_end_matches('/');
            let base = p.rsplit('/').next().unwrap_or(p);
            if src.is_empty() || src == "." {
                out.push(format!("{dest}/{p}"));
            } else if p == src {
                out.push(if into_dir { format!("{dest}/{base}") } else { dest.to_string() });
            } else if let Some(rest) = p.strip_prefix(src).and_then(|r| r.strip_prefix('/')) {
                out.push(format!("{dest}/{rest}"));
            } else if (src.contains('*') || src.contains('?'))
                && globset::Glob::new(src).is_ok_and(|g| g.compile_matcher().is_match(p))
            {
                out.push(format!("{dest}/{base}"));
            }
        }
    }
    out.into_iter().map(|d| d.trim_start_matches('/').to_string()).collect()
}

#[derive(Debug, Clone)]
struct Layer {
    digest: String,
    diff_id: String,
    size: u64,
}

struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The context files placed where the COPY instructions put them, as one
/// gzip tar layer streamed to `out`.
fn write_layer(archive: &Path, out: &Path, copies: &[(Vec<String>, String)]) -> std::io::Result<Layer> {
    // First pass: which files go where, and the directories they need.
    let mut dests: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for entry in open_archive(archive)?.entries()? {
        let entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let p = clean(&entry.path()?);
        let d = destinations(&p, copies);
        for dest in &d {
            let mut cur = Path::new(dest).parent();
            while let Some(parent) = cur.filter(|c| !c.as_os_str().is_empty()) {
                dirs.insert(parent.to_string_lossy().into_owned());
                cur = parent.parent();
            }
        }
        if !d.is_empty() {
            dests.insert(p, d);
        }
    }
    let file = std::fs::File::create(out)?;
    let gz_side = HashWriter { inner: std::io::BufWriter::new(file), hasher: Sha256::new(), count: 0 };
    let gz = flate2::write::GzEncoder::new(gz_side, flate2::Compression::fast());
    let tar_side = HashWriter { inner: gz, hasher: Sha256::new(), count: 0 };
    let mut builder = tar::Builder::new(tar_side);
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        builder.append_data(&mut h, format!("{d}/"), std::io::empty())?;
    }
    for entry in open_archive(archive)?.entries()? {
        let mut entry = entry?;
        let p = clean(&entry.path()?);
        let Some(targets) = dests.get(&p) else { continue };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(entry.header().mode().unwrap_or(0o644));
        h.set_mtime(entry.header().mtime().unwrap_or(0));
        h.set_size(entry.header().size()?);
        if targets.len() == 1 {
            builder.append_data(&mut h, &targets[0], &mut entry)?;
        } else {
            // One input read, several destinations: spool it once.
            let mut tmp = tempfile::tempfile()?;
            std::io::copy(&mut entry, &mut tmp)?;
            for t in targets {
                use std::io::Seek;
                tmp.seek(std::io::SeekFrom::Start(0))?;
                builder.append_data(&mut h.clone(), t, &mut tmp)?;
            }
        }
    }
    let tar_side = builder.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(tar_side.hasher.finalize()));
    let mut gz_side = tar_side.inner.finish()?;
    gz_side.flush()?;
    Ok(Layer { digest: format!("sha256:{}", hex::encode(gz_side.hasher.finalize())), diff_id, size: gz_side.count })
}

/// Push layer, config and manifest; the manifest digest and the config's
/// `config` section.
async fn push(
    api: &SimApi,
    repo: &str,
    layer_path: &Path,
    layer: &Layer,
    image: &ImageSpec,
    build: &str,
) -> Result<(String, Value), String> {
    let (digest, size) = api.registry.put_blob_from_file(repo, layer_path).await.map_err(|e| e.to_string())?;
    if digest != layer.digest || size != layer.size {
        return Err(format!(
            "layer changed while pushing: wrote {} ({} bytes), stored {digest} ({size})",
            layer.digest, layer.size
        ));
    }
    let mut config = json!({
        "Env": image.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "Labels": image.labels,
    });
    if let Some(c) = &image.cmd {
        config["Cmd"] = json!(c);
    }
    if let Some(e) = &image.entrypoint {
        config["Entrypoint"] = json!(e);
    }
    if let Some(u) = &image.user {
        config["User"] = json!(u);
    }
    if !image.workdir.is_empty() {
        config["WorkingDir"] = json!(image.workdir);
    }
    if !image.exposed.is_empty() {
        config["ExposedPorts"] = Value::Object(image.exposed.iter().map(|p| (p.clone(), json!({}))).collect());
    }
    let created = now();
    let mut history: Vec<Value> =
        image.history.iter().map(|h| json!({ "created": created, "created_by": h, "empty_layer": true })).collect();
    history.push(json!({
        "created": created,
        "created_by": format!("modelship sim build {build}: build context layer"),
        "comment": format!("simulated build: base image {} not included, RUN steps not executed", image.base),
    }));
    let blob = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [layer.diff_id] },
        "history": history,
    });
    let config_bytes = serde_json::to_vec(&blob).map_err(|e| e.to_string())?;
    let config_digest = api.registry.put_blob(repo, &config_bytes).await.map_err(|e| e.to_string())?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer.digest,
            "size": layer.size,
        }],
        "annotations": {
            "io.openshift.build.name": build,
            "io.modelship.sim.base-image": image.base,
            "io.modelship.sim.note": "simulated build: base image layers not included",
        },
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    api.registry
        .put_manifest(repo, &digest, "application/vnd.oci.image.manifest.v1+json", &bytes)
        .await
        .map_err(|e| e.to_string())?;
    Ok((digest, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copies(list: &[(&[&str], &str)]) -> Vec<(Vec<String>, String)> {
        list.iter().map(|(s, d)| (s.iter().map(|x| x.to_string()).collect(), d.to_string())).collect()
    }

    #[test]
    fn copy_places_files_as_docker_does() {
        let c = copies(&[(&["."], "/microservice"), (&["requirements.txt"], "/tmp/"), (&["model"], "/opt/m")]);
        assert_eq!(destinations("Model.py", &c), vec!["microservice/Model.py"]);
        assert_eq!(destinations("requirements.txt", &c), vec!["microservice/requirements.txt", "tmp/requirements.txt"]);
        assert_eq!(destinations("model/w.pkl", &c), vec!["microservice/model/w.pkl", "opt/m/w.pkl"]);
        let c = copies(&[(&["a.txt"], "/x/b.txt"), (&["*.py"], "/src/")]);
        assert_eq!(destinations("a.txt", &c), vec!["x/b.txt"]);
        assert_eq!(destinations("m.py", &c), vec!["src/m.py"]);
        assert!(destinations("other", &c).is_empty());
    }
}
