//! `tekton.dev/v1`: PipelineRuns, as a cluster with OpenShift Pipelines
//! installed serves them (discovery, CRUD, label selectors, watch; RBAC as
//! for any resource). Tekton's defaulting and validating webhooks are
//! modelled for what a PipelineRun's author writes; nothing runs them (no
//! controller: a PipelineRun stays as created).
//!
//! Upstream (tektoncd/pipeline):
//! - `cmd/webhook/main.go`: both webhooks decode with unknown fields
//!   disallowed (knative `webhook/json/decode.go`: everything but
//!   `metadata`), so a misspelt key is a denial, not pruned.
//! - `pkg/apis/pipeline/v1/pipelinerun_defaults.go`: `timeouts.pipeline`
//!   (60m, `config/default.go` DefaultTimeoutMinutes) and
//!   `taskRunTemplate.serviceAccountName` (`default`).
//! - `pkg/apis/pipeline/v1/pipelinerun_validation.go`: the name
//!   (`validate/metadata.go`: at most 63 characters), exactly one of
//!   `pipelineRef`/`pipelineSpec`, `validateRef` (container_validation.go),
//!   param names unique case-insensitively (`ValidateParameters`,
//!   taskrun_validation.go), workspace bindings with exactly one volume
//!   source and unique names (workspace_validation.go), timeouts >= 0, the
//!   `status` values.
//!
//! A denial is what the API server makes of a webhook's answer: 400,
//! `admission webhook "NAME" denied the request: MESSAGE` (apiserver
//! `admission/plugin/webhook/errors/statuserror.go`), with knative's
//! FieldError wording (`expected exactly one, got both: spec.params[x].name`).

use serde_json::{Map, Value, json};

use super::resource::{ResourceTable, ResourceType};
use super::status::ApiError;

pub const GROUP: &str = "tekton.dev";

pub const PIPELINERUNS: ResourceType = ResourceType {
    short_names: &["pr", "prs"],
    categories: &["tekton", "tekton-pipelines"],
    subresources: &["status"],
    generation: true,
    default_on_create: Some(set_defaults),
    admission: Some(admit),
    ..ResourceType::namespaced(GROUP, "v1", "PipelineRun", "pipelineruns", "pipelinerun")
};

pub fn register(table: &mut ResourceTable) {
    table.add(PIPELINERUNS);
}

fn set_defaults(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else { return };
    let timeouts = spec.entry("timeouts").or_insert_with(|| json!({}));
    if let Some(t) = timeouts.as_object_mut() {
        t.entry("pipeline").or_insert_with(|| json!("1h0m0s"));
    }
    let template = spec.entry("taskRunTemplate").or_insert_with(|| json!({}));
    if let Some(t) = template.as_object_mut()
        && t.get("serviceAccountName").and_then(Value::as_str).is_none_or(str::is_empty)
    {
        t.insert("serviceAccountName".into(), json!("default"));
    }
}

/// The fields a PipelineRun may have, as Go's decoder sees the v1 types.
/// `Any`: any content (checked no deeper here).
enum Shape {
    Object(&'static [(&'static str, Shape)]),
    List(&'static Shape),
    Str,
    Any,
}

use Shape::{Any, List, Object, Str};

const PARAM: Shape = Object(&[("name", Str), ("value", Any)]);
// v1.PipelineRef: `name`, `apiVersion` and the embedded ResolverRef.
const REF: Shape = Object(&[("name", Str), ("apiVersion", Str), ("resolver", Str), ("params", List(&PARAM))]);
const CLAIM_SPEC: Shape = Object(&[
    ("accessModes", List(&Str)),
    ("dataSource", Any),
    ("dataSourceRef", Any),
    ("resources", Object(&[("limits", Any), ("requests", Any)])),
    ("selector", Any),
    ("storageClassName", Str),
    ("volumeAttributesClassName", Str),
    ("volumeMode", Str),
    ("volumeName", Str),
]);
const CLAIM_TEMPLATE: Shape =
    Object(&[("apiVersion", Str), ("kind", Str), ("metadata", Any), ("spec", CLAIM_SPEC), ("status", Any)]);
const WORKSPACE: Shape = Object(&[
    ("name", Str),
    ("subPath", Str),
    ("volumeClaimTemplate", CLAIM_TEMPLATE),
    ("persistentVolumeClaim", Object(&[("claimName", Str), ("readOnly", Any)])),
    ("emptyDir", Any),
    ("configMap", Any),
    ("secret", Object(&[("secretName", Str), ("items", Any), ("defaultMode", Any), ("optional", Any)])),
    ("projected", Any),
    ("csi", Any),
]);
const SPEC: Shape = Object(&[
    ("pipelineRef", REF),
    ("pipelineSpec", Any),
    ("params", List(&PARAM)),
    ("status", Str),
    ("timeouts", Object(&[("pipeline", Str), ("tasks", Str), ("finally", Str)])),
    ("taskRunTemplate", Object(&[("podTemplate", Any), ("serviceAccountName", Str)])),
    ("workspaces", List(&WORKSPACE)),
    ("taskRunSpecs", Any),
    ("managedBy", Str),
]);
const PIPELINERUN: Shape =
    Object(&[("apiVersion", Str), ("kind", Str), ("metadata", Any), ("spec", SPEC), ("status", Any)]);

/// The first decoding error, worded like Go's `encoding/json`.
fn decode(shape: &Shape, v: &Value, at: &str) -> Option<String> {
    match (shape, v) {
        (Any, _) | (_, Value::Null) => None,
        (Str, Value::String(_)) => None,
        (Str, other) => {
            Some(format!("json: cannot unmarshal {} into Go struct field {at} of type string", kind(other)))
        }
        (List(item), Value::Array(items)) => items.iter().find_map(|i| decode(item, i, at)),
        (List(_), other) => {
            Some(format!("json: cannot unmarshal {} into Go struct field {at} of type []", kind(other)))
        }
        (Object(fields), Value::Object(map)) => {
            map.iter().find_map(|(k, v)| match fields.iter().find(|(f, _)| f == k) {
                Some((_, s)) => decode(s, v, &if at.is_empty() { k.clone() } else { format!("{at}.{k}") }),
                None => Some(format!("json: unknown field {}", Value::String(k.clone()))),
            })
        }
        (Object(_), other) => {
            Some(format!("json: cannot unmarshal {} into Go value of type object at {at}", kind(other)))
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

fn denied(webhook: &str, message: String) -> ApiError {
    ApiError::bad_request(format!("admission webhook \"{webhook}\" denied the request: {message}"))
}

fn admit(obj: &Value) -> Result<(), ApiError> {
    // The defaulting webhook decodes first (and so refuses first).
    if let Some(e) = decode(&PIPELINERUN, obj, "") {
        return Err(denied("webhook.pipeline.tekton.dev", format!("cannot decode incoming new object: {e}")));
    }
    let errors = validate(obj);
    if errors.is_empty() { Ok(()) } else { Err(denied("validation.webhook.pipeline.tekton.dev", errors.join("\n"))) }
}

fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Knative FieldErrors, `MESSAGE: PATH`.
fn validate(obj: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    if name.len() > 63 {
        errs.push("Invalid resource name: length must be no more than 63 characters: metadata.name".to_string());
    }
    let empty = Map::new();
    let spec = obj.get("spec").and_then(Value::as_object).unwrap_or(&empty);
    match (spec.get("pipelineRef"), spec.get("pipelineSpec")) {
        (None, None) => errs.push("expected exactly one, got neither: spec.pipelineRef, spec.pipelineSpec".into()),
        (Some(_), Some(_)) => errs.push("expected exactly one, got both: spec.pipelineRef, spec.pipelineSpec".into()),
        (Some(r), None) => errs.extend(validate_ref(r, "spec.pipelineRef")),
        (None, Some(_)) => {}
    }
    errs.extend(unique_params(spec.get("params"), "spec.params"));
    if let Some(t) = spec.get("timeouts") {
        for field in ["pipeline", "tasks", "finally"] {
            let d = str_at(t, field);
            if d.starts_with('-') {
                errs.push(format!("invalid value: {d} should be >= 0: spec.timeouts.{field}"));
            }
        }
    }
    let status = spec.get("status").and_then(Value::as_str).unwrap_or("");
    if !matches!(status, "" | "PipelineRunPending" | "Cancelled" | "CancelledRunFinally" | "StoppedRunFinally") {
        errs.push(format!(
            "invalid value: {status} should be Cancelled, CancelledRunFinally, StoppedRunFinally or PipelineRunPending: spec.status"
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    for (i, ws) in spec.get("workspaces").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = format!("spec.workspaces[{i}]");
        let sources =
            ["volumeClaimTemplate", "persistentVolumeClaim", "emptyDir", "configMap", "secret", "projected", "csi"];
        let n = sources.iter().filter(|s| ws.get(**s).is_some_and(|v| !v.is_null())).count();
        let all = sources.iter().map(|s| format!("{at}.{}", s.to_lowercase())).collect::<Vec<_>>().join(", ");
        match n {
            0 => errs.push(format!("expected exactly one, got neither: {all}")),
            1 => {}
            _ => errs.push(format!("expected exactly one, got both: {all}")),
        }
        if ws.get("persistentVolumeClaim").is_some_and(|c| str_at(c, "claimName").is_empty()) {
            errs.push(format!("missing field(s): {at}.persistentvolumeclaim.claimname"));
        }
        if ws.get("secret").is_some_and(|c| str_at(c, "secretName").is_empty()) {
            errs.push(format!("missing field(s): {at}.secret.secretName"));
        }
        let name = str_at(ws, "name").to_string();
        if let Some(prev) = seen.iter().position(|n| *n == name) {
            errs.push(format!(
                "workspace \"{name}\" provided by pipelinerun more than once, at index {prev} and {i}: {at}.name"
            ));
        }
        seen.push(name);
    }
    errs
}

/// `validateRef`: a resolver with params, or a name that is a qualified name.
fn validate_ref(r: &Value, at: &str) -> Vec<String> {
    let (name, resolver) = (str_at(r, "name"), str_at(r, "resolver"));
    let mut errs = Vec::new();
    if !resolver.is_empty() || r.get("params").is_some() {
        if r.get("params").is_some() {
            if !name.is_empty() {
                errs.push(format!("expected exactly one, got both: {at}.name, {at}.params"));
            }
            if resolver.is_empty() {
                errs.push(format!("missing field(s): {at}.resolver"));
            }
            errs.extend(unique_params(r.get("params"), &format!("{at}.params")));
        }
    } else if name.is_empty() {
        errs.push(format!("missing field(s): {at}.name"));
    } else if !super::validation::is_qualified_name(name) {
        errs.push(format!("invalid value: {name}: {at}.name"));
    }
    errs
}

/// `validateNoDuplicateNames(names, false)`: case-insensitive, by key.
fn unique_params(params: Option<&Value>, at: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut errs = Vec::new();
    for p in params.and_then(Value::as_array).into_iter().flatten() {
        let name = str_at(p, "name");
        if seen.contains(&name.to_lowercase()) {
            errs.push(format!("expected exactly one, got both: {at}[{name}].name"));
        }
        seen.push(name.to_lowercase());
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: Value) -> Value {
        json!({ "apiVersion": "tekton.dev/v1", "kind": "PipelineRun", "metadata": { "name": "modelship-x2k4d" }, "spec": spec })
    }

    #[test]
    fn the_webhooks_deny_what_tekton_denies() {
        let ok = run(json!({
            "pipelineRef": { "name": "modelship" },
            "params": [{ "name": "revision", "value": "abc" }, { "name": "sets", "value": ["a=b"] }],
            "workspaces": [{ "name": "source", "volumeClaimTemplate": { "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } } } }],
        }));
        assert_eq!(admit(&ok), Ok(()));
        let e = admit(&run(json!({ "params": [] }))).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("validation.webhook.pipeline.tekton.dev\" denied the request: expected exactly one, got neither: spec.pipelineRef, spec.pipelineSpec"), "{}", e.message);
        let dup = run(
            json!({ "pipelineRef": { "name": "modelship" }, "params": [{ "name": "a", "value": "1" }, { "name": "A", "value": "2" }] }),
        );
        assert!(admit(&dup).unwrap_err().message.contains("expected exactly one, got both: spec.params[A].name"));
        let unknown = run(json!({ "pipelineRef": { "name": "modelship" }, "workspace": [] }));
        let e = admit(&unknown).unwrap_err();
        assert!(e.message.contains("webhook.pipeline.tekton.dev\" denied the request: cannot decode incoming new object: json: unknown field \"workspace\""), "{}", e.message);
        let nested = run(json!({ "pipelineRef": { "name": "modelship", "kind": "Pipeline", "bundle": "x" } }));
        assert!(admit(&nested).unwrap_err().message.contains("unknown field \"bundle\""));
        let two = run(
            json!({ "pipelineRef": { "name": "m" }, "workspaces": [{ "name": "s", "emptyDir": {}, "secret": { "secretName": "k" } }] }),
        );
        assert!(
            admit(&two)
                .unwrap_err()
                .message
                .contains("expected exactly one, got both: spec.workspaces[0].volumeclaimtemplate")
        );
        let typed = run(json!({ "pipelineRef": { "name": "m" }, "params": [{ "name": 3 }] }));
        assert!(admit(&typed).unwrap_err().message.contains("cannot unmarshal number"));
    }

    #[test]
    fn defaults_fill_the_timeout_and_the_service_account() {
        let mut obj = run(json!({ "pipelineRef": { "name": "modelship" } }));
        set_defaults(&mut obj);
        assert_eq!(obj["spec"]["timeouts"]["pipeline"], "1h0m0s");
        assert_eq!(obj["spec"]["taskRunTemplate"]["serviceAccountName"], "default");
        let mut obj =
            run(json!({ "pipelineRef": { "name": "m" }, "taskRunTemplate": { "serviceAccountName": "modelship" } }));
        set_defaults(&mut obj);
        assert_eq!(obj["spec"]["taskRunTemplate"]["serviceAccountName"], "modelship");
    }
}
