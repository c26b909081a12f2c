//! The core group (`v1`): Namespaces, ConfigMaps, Secrets, ServiceAccounts
//! (their `token` subresource, the TokenRequest API, is served by
//! [`super::authn`]).

use base64::Engine;
use serde_json::{Value, json};

use super::resource::{Column, ResourceTable, ResourceType, STANDARD_VERBS};
use super::status::Cause;

/// The API server's limit on ConfigMap and Secret payloads.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

pub const NAMESPACES: ResourceType = ResourceType {
    namespaced: false,
    short_names: &["ns"],
    subresources: &["status"],
    verbs: &["create", "delete", "get", "list", "patch", "update", "watch"],
    columns: &[Column::Path { name: "Status", path: "status.phase" }],
    normalize: Some(normalize_namespace),
    protobuf: Some(super::protobuf::namespace),
    ..ResourceType::namespaced("", "v1", "Namespace", "namespaces", "namespace")
};

pub const CONFIGMAPS: ResourceType = ResourceType {
    short_names: &["cm"],
    columns: &[Column::Count { name: "Data", paths: &["data", "binaryData"] }],
    validate: Some(validate_configmap),
    validate_update: Some(immutable_data),
    protobuf: Some(super::protobuf::configmap),
    ..ResourceType::namespaced("", "v1", "ConfigMap", "configmaps", "configmap")
};

pub const SECRETS: ResourceType = ResourceType {
    columns: &[Column::Path { name: "Type", path: "type" }, Column::Count { name: "Data", paths: &["data"] }],
    validate: Some(validate_secret),
    validate_update: Some(immutable_data),
    normalize: Some(normalize_secret),
    protobuf: Some(super::protobuf::secret),
    verbs: STANDARD_VERBS,
    ..ResourceType::namespaced("", "v1", "Secret", "secrets", "secret")
};

pub const SERVICEACCOUNTS: ResourceType = ResourceType {
    short_names: &["sa"],
    subresources: &["token"],
    protobuf: Some(super::protobuf::serviceaccount),
    ..ResourceType::namespaced("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount")
};

pub fn register(table: &mut ResourceTable) {
    table.add(NAMESPACES);
    table.add(CONFIGMAPS);
    table.add(SECRETS);
    table.add(SERVICEACCOUNTS);
}

fn normalize_namespace(obj: &mut Value) {
    if obj.pointer("/spec/finalizers").is_none() {
        obj["spec"] = json!({ "finalizers": ["kubernetes"] });
    }
    if obj.pointer("/status/phase").is_none() {
        obj["status"] = json!({ "phase": "Active" });
    }
}

fn is_config_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

const KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// Checks a `data`-like map: valid keys, string values (base64 when
/// `base64`); returns the payload size.
fn check_map(obj: &Value, field: &str, base64: bool, causes: &mut Vec<Cause>) -> usize {
    let mut size = 0;
    match obj.get(field) {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                if !is_config_key(k) {
                    causes.push(Cause::invalid(format!("{field}[{k}]"), k, KEY_MSG));
                }
                match v.as_str() {
                    Some(s) if base64 => match base64::engine::general_purpose::STANDARD.decode(s) {
                        Ok(b) => size += k.len() + b.len(),
                        Err(_) => {
                            causes.push(Cause::invalid(format!("{field}[{k}]"), "<value>", "must be base64-encoded"))
                        }
                    },
                    Some(s) => size += k.len() + s.len(),
                    None => causes.push(Cause::type_invalid(format!("{field}[{k}]"), "a string")),
                }
            }
        }
        Some(_) => causes.push(Cause::type_invalid(field, "a map of strings")),
    }
    size
}

fn validate_configmap(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let size = check_map(obj, "data", false, &mut causes) + check_map(obj, "binaryData", true, &mut causes);
    if let (Some(d), Some(b)) =
        (obj.get("data").and_then(Value::as_object), obj.get("binaryData").and_then(Value::as_object))
    {
        for k in d.keys().filter(|k| b.contains_key(*k)) {
            causes.push(Cause::invalid(format!("data[{k}]"), k, "duplicate of key present in binaryData"));
        }
    }
    if size > MAX_DATA_BYTES {
        causes.push(Cause::too_long("data", MAX_DATA_BYTES));
    }
    causes
}

/// A ConfigMap or Secret marked `immutable: true` keeps its data and the
/// mark for good.
fn immutable_data(old: &Value, new: &Value) -> Vec<Cause> {
    if old.get("immutable") != Some(&Value::Bool(true)) {
        return Vec::new();
    }
    let mut causes = Vec::new();
    if new.get("immutable") != Some(&Value::Bool(true)) {
        causes.push(Cause {
            reason: "FieldValueForbidden",
            message: "Forbidden: field is immutable when `immutable` is set".into(),
            field: "immutable".into(),
        });
    }
    for f in ["data", "binaryData"] {
        if old.get(f) != new.get(f) {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: field is immutable when `immutable` is set".into(),
                field: f.into(),
            });
        }
    }
    causes
}

/// `stringData` is write-only: folded into `data` (base64) on write.
fn normalize_secret(obj: &mut Value) {
    if let Some(Value::Object(sd)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        if !obj.get("data").is_some_and(Value::is_object) {
            obj["data"] = json!({});
        }
        for (k, v) in sd {
            if let Some(s) = v.as_str() {
                obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
            }
        }
    }
    if obj.get("type").is_none_or(|t| t.is_null() || t == "") {
        obj["type"] = json!("Opaque");
    }
}

fn validate_secret(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if check_map(obj, "data", true, &mut causes) > MAX_DATA_BYTES {
        causes.push(Cause::too_long("data", MAX_DATA_BYTES));
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmap_rejects_non_string_values_and_oversized_data() {
        let bad = json!({"data": {"a": 1, "bad key": "x"}});
        let fields: Vec<String> = validate_configmap(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["data[a]", "data[bad key]"]);
        let big = json!({"data": {"a": "x".repeat(MAX_DATA_BYTES)}});
        assert_eq!(validate_configmap(&big)[0].reason, "FieldValueTooLong");
        assert!(validate_configmap(&json!({"data": {"a": "b"}, "binaryData": {"c": "ZA=="}})).is_empty());
    }

    #[test]
    fn immutable_configmaps_keep_their_data() {
        let old = json!({"immutable": true, "data": {"a": "1"}});
        assert!(
            immutable_data(&old, &json!({"immutable": true, "data": {"a": "1"}, "metadata": {"labels": {"x": "y"}}}))
                .is_empty()
        );
        let fields: Vec<String> =
            immutable_data(&old, &json!({"data": {"a": "2"}})).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["immutable", "data"]);
        assert!(immutable_data(&json!({"data": {}}), &json!({"data": {"a": "2"}})).is_empty());
    }

    #[test]
    fn secret_string_data_becomes_base64_data() {
        let mut s = json!({"stringData": {"token": "abc"}});
        normalize_secret(&mut s);
        assert_eq!(s, json!({"data": {"token": "YWJj"}, "type": "Opaque"}));
        assert!(validate_secret(&s).is_empty());
        assert_eq!(validate_secret(&json!({"data": {"t": "not base64!"}})).len(), 1);
    }
}
