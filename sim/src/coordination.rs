//! `coordination.k8s.io/v1`: Leases (modelship's per-model lock).

use serde_json::Value;

use super::resource::{Column, ResourceTable, ResourceType};
use super::status::Cause;

pub const LEASES: ResourceType = ResourceType {
    columns: &[Column::Path { name: "Holder", path: "spec.holderIdentity" }],
    validate: Some(validate_lease),
    ..ResourceType::namespaced("coordination.k8s.io", "v1", "Lease", "leases", "lease")
};

pub fn register(table: &mut ResourceTable) {
    table.add(LEASES);
}

fn validate_lease(obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(spec) = obj.get("spec") else { return causes };
    if !spec.is_object() {
        causes.push(Cause::type_invalid("spec", "an object"));
        return causes;
    }
    for f in ["holderIdentity", "strategy", "preferredHolder"] {
        if spec.get(f).is_some_and(|v| !v.is_null() && !v.is_string()) {
            causes.push(Cause::type_invalid(format!("spec.{f}"), "a string"));
        }
    }
    for f in ["leaseDurationSeconds", "leaseTransitions"] {
        match spec.get(f) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_i64() {
                Some(n) if f == "leaseDurationSeconds" && n <= 0 => {
                    causes.push(Cause::invalid(format!("spec.{f}"), &n.to_string(), "must be greater than 0"))
                }
                Some(n) if n < 0 => causes.push(Cause::invalid(
                    format!("spec.{f}"),
                    &n.to_string(),
                    "must be greater than or equal to 0",
                )),
                Some(_) => {}
                None => causes.push(Cause::type_invalid(format!("spec.{f}"), "an integer")),
            },
        }
    }
    for f in ["acquireTime", "renewTime"] {
        match spec.get(f) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.parse::<jiff::Timestamp>().is_ok() => {}
            Some(v) => causes.push(Cause::invalid(
                format!("spec.{f}"),
                &v.to_string(),
                "must be an RFC 3339 time with microseconds",
            )),
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lease_fields_are_type_checked() {
        let ok = json!({"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000001Z"}});
        assert!(validate_lease(&ok).is_empty());
        let bad = json!({"spec": {"holderIdentity": 3, "leaseDurationSeconds": 0, "renewTime": "yesterday"}});
        let fields: Vec<String> = validate_lease(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.holderIdentity", "spec.leaseDurationSeconds", "spec.renewTime"]);
    }
}
