//! The generic verbs every kind in the resource table gets, and its
//! `status` subresource.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::super::SimApi;
use super::super::managed::{self, FieldManager};
use super::super::resource::ResourceType;
use super::super::status::{ApiError, delete_success};
use super::super::store::{Preconditions, Scope, labels_of, resource_version_of};
use super::patch::patch;
use super::table::table_response;
use super::{Query, RequestInfo, body, decorate, json_response, list_json, selectors};

fn not_allowed() -> ApiError {
    ApiError::method_not_allowed("the server does not allow this method on the requested resource")
}

/// The Update manager of a write: `fieldManager`, or the User-Agent's
/// first word as the API server derives it.
fn update_manager(rt: &ResourceType, query: &Query, headers: &HeaderMap) -> FieldManager {
    let name = match query.field_manager.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => managed::manager_from_user_agent(headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok())),
    };
    FieldManager { name, apply: false, api_version: rt.api_version() }
}

/// `.../NAME/status`: get, update and patch of the status alone.
pub(super) async fn status(
    api: &SimApi,
    rt: &ResourceType,
    info: &RequestInfo,
    query: &Query,
    req: Request,
) -> Result<Response, ApiError> {
    let ns = info.namespace.clone().unwrap_or_default();
    let name = info.name.clone().unwrap_or_default();
    match req.method().clone() {
        Method::GET => {
            let obj = api.store.get(rt, &ns, &name).ok_or_else(|| ApiError::not_found(rt, &name))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        Method::PUT => {
            let manager = update_manager(rt, query, req.headers());
            let body = body::read_json(req, rt).await?;
            let obj = api.store.update_as(rt, &ns, &name, body, Scope::Status, query.dry_run, Some(manager))?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        Method::PATCH => {
            let ct = body::content_type(req.headers());
            let manager = update_manager(rt, query, req.headers());
            let body = body::bytes(req).await?;
            patch(api, rt, &ns, &name, &ct, &body, Scope::Status, query, manager).map(|(c, o)| json_response(c, &o))
        }
        _ => Err(not_allowed()),
    }
}

/// The object or collection itself, by method and whether a name is given.
pub(super) async fn serve(
    api: SimApi,
    rt: Arc<ResourceType>,
    info: RequestInfo,
    query: Query,
    req: Request,
) -> Result<Response, ApiError> {
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let as_table = accept.contains("as=Table");
    let ns = info.namespace.clone().unwrap_or_default();
    match (req.method().clone(), info.name.clone()) {
        (Method::GET, None) if query.watch => {
            let cut = req.extensions().get::<super::super::faults::CutWatch>().is_some();
            super::watch::watch(api, rt, info.namespace.clone(), query, as_table, cut).await
        }
        (Method::GET, None) => list(&api, &rt, info.namespace.as_deref(), &query, as_table),
        (Method::GET, Some(name)) => get(&api, &rt, &ns, &name, &query, as_table),
        (Method::POST, None) => create(&api, &rt, &ns, &query, req).await,
        (Method::PUT, Some(name)) => replace(&api, &rt, &ns, &name, &query, req).await,
        (Method::PATCH, Some(name)) => {
            let ct = body::content_type(req.headers());
            let manager = update_manager(&rt, &query, req.headers());
            let body = body::bytes(req).await?;
            let (code, mut obj) = patch(&api, &rt, &ns, &name, &ct, &body, Scope::Main, &query, manager)?;
            decorate(&api, &rt, &mut obj);
            Ok(json_response(code, &obj))
        }
        (Method::DELETE, Some(name)) => delete(&api, &rt, &ns, &name, &query, req).await,
        (Method::DELETE, None) => delete_collection(&api, &rt, info.namespace.as_deref(), &query),
        _ => Err(not_allowed()),
    }
}

fn list(
    api: &SimApi,
    rt: &ResourceType,
    ns: Option<&str>,
    query: &Query,
    as_table: bool,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let (items, rv) = api.store.list(rt, ns);
    let mut items: Vec<Value> =
        items.into_iter().filter(|o| labels.matches(&labels_of(o)) && fields.matches(o)).collect();
    items.iter_mut().for_each(|o| decorate(api, rt, o));
    if as_table {
        return Ok(table_response(rt, &items, rv, query.include_object.as_deref(), true));
    }
    Ok(json_response(StatusCode::OK, &list_json(rt, rv, items)))
}

fn get(
    api: &SimApi,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    query: &Query,
    as_table: bool,
) -> Result<Response, ApiError> {
    let mut obj = api.store.get(rt, ns, name).ok_or_else(|| ApiError::not_found(rt, name))?;
    decorate(api, rt, &mut obj);
    if as_table {
        let rv = resource_version_of(&obj).unwrap_or(0);
        return Ok(table_response(rt, &[obj], rv, query.include_object.as_deref(), true));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

async fn create(api: &SimApi, rt: &ResourceType, ns: &str, query: &Query, req: Request) -> Result<Response, ApiError> {
    let manager = update_manager(rt, query, req.headers());
    let body = body::read_json(req, rt).await?;
    if rt.namespaced
        && let Some(body_ns) = body.pointer("/metadata/namespace").and_then(Value::as_str)
        && !body_ns.is_empty()
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut obj = api.store.create_as(rt, ns, body, query.dry_run, Some(&manager))?;
    decorate(api, rt, &mut obj);
    Ok(json_response(StatusCode::CREATED, &obj))
}

/// PUT: update, or create when the object does not exist.
async fn replace(
    api: &SimApi,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    query: &Query,
    req: Request,
) -> Result<Response, ApiError> {
    let manager = update_manager(rt, query, req.headers());
    let body = body::read_json(req, rt).await?;
    let existed = api.store.get(rt, ns, name).is_some();
    let mut obj = api.store.update_as(rt, ns, name, body, Scope::Main, query.dry_run, Some(manager))?;
    decorate(api, rt, &mut obj);
    Ok(json_response(if existed { StatusCode::OK } else { StatusCode::CREATED }, &obj))
}

async fn delete(
    api: &SimApi,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    query: &Query,
    req: Request,
) -> Result<Response, ApiError> {
    let body = body::bytes(req).await?;
    let pre = body::preconditions(&body)?;
    let dry_run = query.dry_run || body::delete_options_dry_run(&body);
    let obj = api.store.delete(rt, ns, name, &pre, dry_run)?;
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
    Ok(json_response(StatusCode::OK, &delete_success(rt, name, uid)))
}

/// DELETE on a collection: every object the selectors match; the deleted
/// objects as a list.
fn delete_collection(api: &SimApi, rt: &ResourceType, ns: Option<&str>, query: &Query) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(query)?;
    let (items, _) = api.store.list(rt, ns);
    let mut deleted = Vec::new();
    for o in items.into_iter().filter(|o| labels.matches(&labels_of(o)) && fields.matches(o)) {
        let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        let ons = o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        match api.store.delete(rt, &ons, &name, &Preconditions::default(), query.dry_run) {
            Ok(o) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(StatusCode::OK, &list_json(rt, api.store.resource_version(), deleted)))
}
