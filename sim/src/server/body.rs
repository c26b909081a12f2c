//! Request bodies: objects (JSON, YAML, protobuf) and `DeleteOptions`.

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, header};
use serde_json::Value;

use super::super::resource::ResourceType;
use super::super::status::ApiError;
use super::super::store::Preconditions;
use super::MAX_BODY;

/// The whole body, up to [`MAX_BODY`].
pub(super) async fn bytes(req: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))
}

pub(super) fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// The body of a create/update: JSON, YAML, or protobuf for the kinds that
/// have a decoder (what typed client-go clients such as `kubectl create
/// configmap` send); anything else is refused with 415.
pub(super) async fn read_json(req: Request, rt: &ResourceType) -> Result<Value, ApiError> {
    let ct = content_type(req.headers());
    let proto = ct == super::super::protobuf::CONTENT_TYPE;
    if !ct.is_empty() && ct != "application/json" && ct != "application/yaml" && !(proto && rt.protobuf.is_some()) {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    if proto {
        let bytes = bytes(req).await?;
        let decode = rt.protobuf.expect("checked above");
        let bad = |e: String| ApiError::bad_request(format!("the protobuf body is not a valid {}: {e}", rt.kind));
        let (api_version, kind, raw) = super::super::protobuf::envelope(&bytes).map_err(bad)?;
        if api_version != rt.api_version() || kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the protobuf body is a {api_version} {kind}, expected a {} {}",
                rt.api_version(),
                rt.kind
            )));
        }
        return decode(raw).map_err(bad);
    }
    let yaml = ct == "application/yaml";
    let bytes = bytes(req).await?;
    if yaml {
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        return crate::yaml::to_json(text)
            .map_err(|e| ApiError::bad_request(format!("the body of the request is not valid YAML: {e}")));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body of the request is not valid JSON: {e}")))
}

fn delete_options(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))
}

pub(super) fn preconditions(body: &Bytes) -> Result<Preconditions, ApiError> {
    let opts = delete_options(body)?;
    let get = |k: &str| opts.pointer(&format!("/preconditions/{k}")).and_then(Value::as_str).map(str::to_string);
    Ok(Preconditions { uid: get("uid"), resource_version: get("resourceVersion") })
}

pub(super) fn delete_options_dry_run(body: &Bytes) -> bool {
    delete_options(body)
        .ok()
        .and_then(|o| o.get("dryRun").and_then(Value::as_array).map(|a| a.iter().any(|v| v == "All")))
        .unwrap_or(false)
}
