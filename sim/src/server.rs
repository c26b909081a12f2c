//! The HTTP side: resolves each request to a [`RequestInfo`] (as the API
//! server's RequestInfoResolver does), then serves the generic verbs for
//! every kind in the resource table: get, list (JSON or `kubectl`'s Table),
//! watch, create, update, patch, delete, deletecollection, and `status`.
//!
//! - [`request`]: what a request asks for (path, verb, query);
//! - `verbs`: the generic verbs and the `status` subresource;
//! - `body`: reading request bodies (JSON, YAML, protobuf, DeleteOptions);
//! - `patch`: merge, JSON and apply patches;
//! - `table`: `kubectl`'s Table view;
//! - `watch`: watch streams.

mod body;
mod patch;
pub mod request;
mod table;
mod verbs;
mod watch;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

pub use self::request::{Query, RequestInfo, SubresourceRequest};
pub use self::table::short_age;
pub(crate) use self::table::table_response;
use super::SimApi;
use super::resource::ResourceType;
use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;

/// Bodies above this are refused (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// The router for everything but the registry: fixed paths, discovery,
/// then the generic resource handler.
pub fn router(api: SimApi) -> Router {
    Router::new()
        .route("/version", get(super::discovery::version))
        .route("/healthz", get(ok))
        .route("/sim/faults", get(super::faults::report))
        .route("/readyz", get(ok))
        .route("/livez", get(ok))
        .route("/api", get(super::discovery::api_versions))
        .route("/api/{version}", get(super::discovery::core_resources))
        .route("/apis", get(super::discovery::api_groups))
        .route("/apis/{group}", get(super::discovery::api_group))
        .route("/apis/{group}/{version}", get(super::discovery::group_resources))
        .route("/openapi/v2", get(super::discovery::openapi_v2))
        .route("/openapi/v3", get(super::discovery::openapi_v3_root))
        .route("/openapi/v3/{*path}", get(super::discovery::openapi_v3_doc))
        .fallback(handle)
        .with_state(api)
}

async fn ok() -> &'static str {
    "ok"
}

/// The generic resource handler.
async fn handle(State(api): State<SimApi>, req: Request) -> Response {
    match handle_inner(api, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// What the API server adds to every object of `rt` it returns.
fn decorate(api: &SimApi, rt: &ResourceType, obj: &mut Value) {
    if let Some(f) = rt.decorate {
        f(api, obj);
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// The `labelSelector` and `fieldSelector` of a list, watch or deletecollection.
fn selectors(query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(&query.label_selector)
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(&query.field_selector, &[]).map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

/// A `<Kind>List` of `items` at resourceVersion `rv`.
fn list_json(rt: &ResourceType, rv: u64, items: Vec<Value>) -> Value {
    json!({
        "kind": rt.list_kind(),
        "apiVersion": rt.api_version(),
        "metadata": { "resourceVersion": rv.to_string() },
        "items": items,
    })
}

/// Resolve the request, check that its kind is served at that path with
/// that verb, then hand it to a custom subresource handler, the `status`
/// subresource or the generic verbs.
async fn handle_inner(api: SimApi, req: Request) -> Result<Response, ApiError> {
    let query = Query::parse(req.uri().query())?;
    let info = match req.extensions().get::<RequestInfo>() {
        Some(i) => i.clone(),
        None => RequestInfo::resolve(&api.table, req.method(), req.uri().path(), &query),
    };
    let rt = routed(&info)?;
    // A kind's own handler for the object itself (`""`) or a subresource.
    let sub = info.subresource.clone().unwrap_or_default();
    if let Some(handler) = api.table.subresource_handler(rt.group, rt.plural, &sub) {
        let (parts, body) = req.into_parts();
        let raw_query = parts.uri.query().unwrap_or("").to_string();
        let sr = SubresourceRequest { info, query, method: parts.method, headers: parts.headers, raw_query, body };
        return Ok(handler(api.clone(), sr).await);
    }
    if info.subresource.is_some() {
        if sub != "status" || !rt.subresources.contains(&"status") {
            return Err(ApiError::no_route());
        }
        return verbs::status(&api, &rt, &info, &query, req).await;
    }
    verbs::serve(api, rt, info, query, req).await
}

/// The kind `info` names, if it is served at that path with that verb.
fn routed(info: &RequestInfo) -> Result<Arc<ResourceType>, ApiError> {
    let Some(rt) = info.resource.clone() else {
        return Err(ApiError::no_route());
    };
    if rt.namespaced != info.namespace.is_some() && (info.name.is_some() || !rt.namespaced) {
        // A namespaced kind addressed without a namespace (other than a
        // cross-namespace list/watch), or a cluster-scoped one with one.
        return Err(ApiError::no_route());
    }
    if rt.namespaced && info.namespace.is_none() && info.verb == "create" {
        return Err(ApiError::method_not_allowed(format!(
            "create {} needs a namespace: POST to /namespaces/NAMESPACE/{}",
            rt.qualified(),
            rt.plural
        )));
    }
    if !rt.supports(&info.verb) {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            info.verb,
            rt.qualified()
        )));
    }
    Ok(rt)
}
