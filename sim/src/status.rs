//! Failures as the API server reports them: a `kind: Status` body whose
//! `reason`, `code`, `message` and `details` match what client-go, kube-rs
//! and kubectl expect (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`,
//! `BadRequest`, `Forbidden`, `Expired`, ...).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use super::resource::ResourceType;

/// One field error inside an `Invalid` Status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueTooLong`, ...
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {detail}", Value::String(value.to_string())),
            field: field.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Cause { reason: "FieldValueRequired", message: "Required value".into(), field: field.into() }
    }
    pub fn type_invalid(field: impl Into<String>, expected: &str) -> Self {
        Cause {
            reason: "FieldValueTypeInvalid",
            message: format!("Invalid value: must be {expected}"),
            field: field.into(),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {max} bytes"),
            field: field.into(),
        }
    }
}

/// A failed API call, rendered as a Status body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds, for 429/503 (`Retry-After` header and `details.retryAfterSeconds`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String, details: Option<Value>) -> Self {
        ApiError { code, reason, message, details, retry_after: None }
    }

    fn details(rt: &ResourceType, name: &str) -> Value {
        let mut d = json!({ "name": name, "kind": rt.plural });
        if !rt.group.is_empty() {
            d["group"] = json!(rt.group);
        }
        d
    }

    pub fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{} \"{name}\" not found", rt.qualified()), Some(Self::details(rt, name)))
    }

    /// Create in a namespace that does not exist.
    pub fn namespace_not_found(ns: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("namespaces \"{ns}\" not found"),
            Some(json!({"name": ns, "kind": "namespaces"})),
        )
    }

    /// A path the sim does not serve.
    pub fn no_route() -> Self {
        Self::new(404, "NotFound", "the server could not find the requested resource".into(), Some(json!({})))
    }

    pub fn already_exists(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", rt.qualified()),
            Some(Self::details(rt, name)),
        )
    }

    pub fn conflict(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                rt.qualified()
            ),
            Some(Self::details(rt, name)),
        )
    }

    /// A failed delete/patch precondition (uid or resourceVersion).
    pub fn precondition_conflict(rt: &ResourceType, name: &str, what: &str, want: &str, have: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {what}: {want}, {what} in object meta: {have}",
                rt.qualified()
            ),
            Some(Self::details(rt, name)),
        )
    }

    pub fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> Self {
        let summary: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let message = if summary.len() == 1 {
            format!("{} \"{name}\" is invalid: {}", rt.kind, summary[0])
        } else {
            format!("{} \"{name}\" is invalid: [{}]", rt.kind, summary.join(", "))
        };
        let mut details = json!({ "name": name, "kind": rt.kind, "causes": causes });
        if !rt.group.is_empty() {
            details["group"] = json!(rt.group);
        }
        Self::new(422, "Invalid", message, Some(details))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message.into(), None)
    }

    /// A 403 as kube's `errors.NewForbidden` shapes it: `RESOURCE.GROUP
    /// "NAME" is forbidden: MESSAGE` (see [`super::rbac::forbidden`] for the
    /// message); for a non-resource request just `forbidden: MESSAGE`.
    pub fn forbidden_message(group: &str, resource: &str, name: &str, message: String) -> Self {
        let qualified = if group.is_empty() { resource.to_string() } else { format!("{resource}.{group}") };
        let text = if resource.is_empty() {
            format!("forbidden: {message}")
        } else if name.is_empty() {
            format!("{qualified} is forbidden: {message}")
        } else {
            format!("{qualified} \"{name}\" is forbidden: {message}")
        };
        let mut details = json!({ "name": name, "kind": resource });
        if !group.is_empty() {
            details["group"] = json!(group);
        }
        Self::new(403, "Forbidden", text, Some(details))
    }

    /// No credentials where they are needed, or credentials that do not
    /// authenticate: kube-apiserver's bare 401.
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized".into(), None)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message.into(), Some(json!({})))
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format ({content_type}) - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml, and protobuf for namespaces, configmaps and secrets"
            ),
            None,
        )
    }

    pub fn gone(requested: u64, oldest: u64) -> Self {
        Self::new(410, "Expired", format!("too old resource version: {requested} ({oldest})"), None)
    }

    /// An injected failure (fault rules): 500, 503, 429 with `Retry-After`, 409.
    pub fn injected(code: u16, message: impl Into<String>, retry_after: Option<u32>) -> Self {
        let reason = match code {
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            409 => "Conflict",
            _ => "InternalError",
        };
        let details = retry_after.map(|_| json!({}));
        ApiError { code, reason, message: message.into(), details, retry_after }
    }

    /// `422 Invalid` of request options (`PatchOptions.meta.k8s.io "" is
    /// invalid: fieldManager: Required value: ...`).
    pub fn options_invalid(kind: &str, field: &str, reason: &'static str, detail: String) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind}.meta.k8s.io \"\" is invalid: {field}: {detail}"),
            Some(json!({ "group": "meta.k8s.io", "kind": kind,
                "causes": [{ "reason": reason, "message": detail, "field": field }] })),
        )
    }

    /// `504 Timeout` (apimachinery's `NewTimeoutError(message, 0)`).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", format!("Timeout: {}", message.into()), Some(json!({})))
    }

    /// `409 Conflict` of a server-side apply (apimachinery's
    /// `NewApplyConflict`): `causes` are `(field, manager as printed)`.
    pub fn apply_conflict(message: String, causes: &[(String, String)]) -> Self {
        let causes: Vec<Value> = causes
            .iter()
            .map(|(field, manager)| {
                json!({ "reason": "FieldManagerConflict", "message": format!("conflict with {manager}"), "field": field })
            })
            .collect();
        Self::new(409, "Conflict", message, Some(json!({ "causes": causes })))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message.into(), None)
    }

    pub fn body(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut d = d.clone();
            if let Some(secs) = self.retry_after {
                d["retryAfterSeconds"] = json!(secs);
            }
            v["details"] = d;
        }
        v
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (code, [(header::CONTENT_TYPE, "application/json")], self.body().to_string()).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// A successful delete of an object whose kind does not return the object.
pub fn delete_success(rt: &ResourceType, name: &str, uid: &str) -> Value {
    let mut details = json!({ "name": name, "kind": rt.plural, "uid": uid });
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}
