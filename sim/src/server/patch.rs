//! PATCH: JSON merge, JSON patch and server-side apply, with the
//! `PatchOptions` checks of the API server.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::super::SimApi;
use super::super::managed::{self, FieldManager};
use super::super::resource::ResourceType;
use super::super::status::ApiError;
use super::super::store::{Scope, WriteOptions};
use super::Query;

/// `PatchOptions`/`CreateOptions` checks of the API server
/// (apimachinery's ValidatePatchOptions, ValidateFieldManager).
fn check_options(query: &Query, apply: bool) -> Result<(), ApiError> {
    let field =
        |f: &str, reason: &'static str, detail: String| ApiError::options_invalid("PatchOptions", f, reason, detail);
    if apply && query.field_manager.as_deref().is_none_or(str::is_empty) {
        return Err(field("fieldManager", "FieldValueRequired", "Required value: is required for apply patch".into()));
    }
    if !apply && query.force.is_some() {
        return Err(field(
            "force",
            "FieldValueForbidden",
            "Forbidden: may not be specified for non-apply patch".into(),
        ));
    }
    if let Some(m) = &query.field_manager {
        if m.len() > 128 {
            return Err(field("fieldManager", "FieldValueTooLong", "Too long: must have at most 128 bytes".into()));
        }
        if m.chars().any(|c| !(' '..='~').contains(&c) && !c.is_alphanumeric()) {
            return Err(field(
                "fieldManager",
                "FieldValueInvalid",
                format!("Invalid value: {m:?}: must only contain printable characters"),
            ));
        }
    }
    Ok(())
}

/// PATCH in the content types clients send. Strategic merge is applied as a
/// JSON merge patch (the kinds the sim serves have no list merge keys that
/// modelship relies on). Server-side apply (`application/apply-patch+yaml`)
/// tracks field ownership ([`managed`]): it creates the object if missing,
/// removes fields its manager stopped sending and refuses, with 409, fields
/// another manager owns unless `force=true`.
#[allow(clippy::too_many_arguments)]
pub(super) fn patch(
    api: &SimApi,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
    scope: Scope,
    query: &Query,
    manager: FieldManager,
) -> Result<(StatusCode, Value), ApiError> {
    enum Kind {
        Merge(Value),
        Json(json_patch::Patch),
        Apply(Value),
    }
    let apply = content_type == "application/apply-patch+yaml";
    check_options(query, apply)?;
    let kind = match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => Kind::Merge(
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid merge patch: {e}")))?,
        ),
        "application/json-patch+json" => Kind::Json(
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?,
        ),
        "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(body).map_err(|_| ApiError::bad_request("apply body is not UTF-8"))?;
            let v: Value = crate::yaml::to_json(text)
                .map_err(|e| ApiError::bad_request(format!("invalid apply configuration: {e}")))?;
            if !v.is_object() {
                return Err(ApiError::bad_request("the apply configuration must be an object"));
            }
            for (key, what) in [("kind", "Kind"), ("apiVersion", "APIVersion")] {
                if v.get(key).and_then(Value::as_str).is_none_or(str::is_empty) {
                    return Err(ApiError::bad_request(format!("Object '{what}' is missing in '{v}'")));
                }
            }
            if let Some(n) = v.pointer("/metadata/name").and_then(Value::as_str).filter(|n| *n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            Kind::Apply(v)
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let force = query.force.unwrap_or(false);
    let applier = FieldManager { apply: true, ..manager.clone() };
    let part = super::super::store::part(rt, scope);
    if let Kind::Apply(config) = &kind
        && scope == Scope::Main
        && api.store.get(rt, ns, name).is_none()
    {
        let mut obj = managed::apply(None, config, &applier, part, force)?;
        obj["metadata"]["name"] = json!(name);
        return Ok((StatusCode::CREATED, api.store.create_as(rt, ns, obj, query.dry_run, Some(&applier))?));
    }
    let writer = if apply { applier.clone() } else { manager };
    let opts = WriteOptions { precondition_rv: None, scope, dry_run: query.dry_run, manager: Some(writer) };
    let obj = api.store.modify(rt, ns, name, &opts, |old| {
        let mut new = old.clone();
        match &kind {
            Kind::Apply(config) => {
                new = managed::apply(Some(old), config, &applier, part, force)?;
            }
            Kind::Merge(p) => {
                json_patch::merge(&mut new, p);
                // A resourceVersion in the patch is a precondition.
                if let Some(want) = p.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                    && Some(want) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                {
                    return Err(ApiError::conflict(rt, name));
                }
            }
            Kind::Json(p) => {
                json_patch::patch(&mut new, p).map_err(|e| match e.kind {
                    json_patch::PatchErrorKind::TestFailed => ApiError::invalid(
                        rt,
                        name,
                        vec![super::super::status::Cause::invalid("", "test", &e.to_string())],
                    ),
                    _ => ApiError::internal(format!(
                        "the server rejected our request due to an error in our request: {e}"
                    )),
                })?;
            }
        }
        Ok(new)
    })?;
    Ok((StatusCode::OK, obj))
}
