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
//!
//! - `upload`: `instantiatebinary`;
//! - `controller`: the build controller, step by step;
//! - `layer`: the context archive and the image layer made from it;
//! - `push`: the image config and the push to the registry;
//! - `log`: the build log and its subresource.

mod controller;
mod layer;
mod log;
mod push;
mod upload;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

pub use self::controller::controller;
use self::log::build_log;
pub use self::upload::BUILD_START_TIMEOUT;
use self::upload::instantiate_binary;
use super::SimApi;
use super::resource::{Column, ResourceTable, ResourceType};
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
