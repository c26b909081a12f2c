//! The HTTP side: resolves each request to a [`RequestInfo`] (as the API
//! server's RequestInfoResolver does), then serves the generic verbs for
//! every kind in the resource table: get, list (JSON or `kubectl`'s Table),
//! watch, create, update, patch, delete, deletecollection, and `status`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;

use super::SimApi;
use super::managed::{self, FieldManager};
use super::resource::{Column, ResourceTable, ResourceType};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{ApiError, delete_success};
use super::store::{Event, EventType, Preconditions, Scope, WriteOptions, labels_of, resource_version_of};

/// Bodies above this are refused (the API server's limit is 3 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Watches without `timeoutSeconds` end after this, as the API server's
/// `--min-request-timeout` does; clients re-watch.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// What a request asks for, resolved from method, path and query.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`; for non-resource paths the lowercase method.
    pub verb: String,
    pub group: String,
    pub version: String,
    /// `None` for non-resource paths (`/version`, discovery) and unknown
    /// resources.
    pub resource: Option<Arc<ResourceType>>,
    /// The plural named in the path, known or not.
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// Who is asking: `system:anonymous` until [`super::authn::layer`]
    /// authenticates the request and sets it.
    pub user: String,
}

impl RequestInfo {
    pub fn resolve(table: &ResourceTable, method: &Method, path: &str, query: &Query) -> Self {
        let user = "system:anonymous".to_string();
        let mut info = RequestInfo {
            verb: method.as_str().to_lowercase(),
            group: String::new(),
            version: String::new(),
            resource: None,
            plural: String::new(),
            namespace: None,
            name: None,
            subresource: None,
            user,
        };
        let segs: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        let rest: &[&str] = match segs.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => {
                info.version = v.to_string();
                rest
            }
            ["apis", g, v, rest @ ..] if !rest.is_empty() => {
                info.group = g.to_string();
                info.version = v.to_string();
                rest
            }
            _ => return info,
        };
        let lookup = |plural: &str| table.find(&info.group, &info.version, plural).cloned();
        let (ns, plural, name, sub) = match rest {
            ["namespaces", ns, plural, tail @ ..] if lookup(plural).is_some_and(|t| t.namespaced) || tail.len() > 2 => {
                (Some(*ns), *plural, tail.first().copied(), tail.get(1).copied())
            }
            [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
            [] => return info,
        };
        info.namespace = ns.map(str::to_string);
        info.plural = plural.to_string();
        info.name = name.map(str::to_string);
        info.subresource = sub.map(str::to_string);
        info.resource = lookup(plural);
        info.verb = match (method.clone(), info.name.is_some()) {
            (Method::GET, _) if query.watch => "watch".into(),
            (Method::GET, true) => "get".into(),
            (Method::GET, false) => "list".into(),
            (Method::POST, _) => "create".into(),
            (Method::PUT, _) => "update".into(),
            (Method::PATCH, _) => "patch".into(),
            (Method::DELETE, true) => "delete".into(),
            (Method::DELETE, false) => "deletecollection".into(),
            (m, _) => m.as_str().to_lowercase(),
        };
        info
    }
}

/// The query parameters the generic verbs honour.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub label_selector: String,
    pub field_selector: String,
    pub watch: bool,
    pub resource_version: Option<String>,
    pub timeout_seconds: Option<u64>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub dry_run: bool,
    pub include_object: Option<String>,
    pub field_manager: Option<String>,
    /// `force` (apply only).
    pub force: Option<bool>,
}

impl Query {
    pub fn parse(q: Option<&str>) -> Result<Self, ApiError> {
        let mut out = Query::default();
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            let truthy = |v: &str| matches!(v, "1" | "true" | "True" | "TRUE" | "t");
            match k.as_ref() {
                "labelSelector" => out.label_selector = v.into_owned(),
                "fieldSelector" => out.field_selector = v.into_owned(),
                "watch" => out.watch = truthy(&v),
                "resourceVersion" => out.resource_version = Some(v.into_owned()),
                "timeoutSeconds" => {
                    out.timeout_seconds =
                        Some(v.parse().map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {v:?}")))?)
                }
                "allowWatchBookmarks" => out.allow_bookmarks = truthy(&v),
                "sendInitialEvents" => out.send_initial_events = truthy(&v),
                "dryRun" => {
                    if v != "All" {
                        return Err(ApiError::bad_request(format!(
                            "dryRun: Unsupported value: {v:?}: supported values: \"All\""
                        )));
                    }
                    out.dry_run = true
                }
                "includeObject" => out.include_object = Some(v.into_owned()),
                "fieldManager" => out.field_manager = Some(v.into_owned()),
                "force" => out.force = Some(truthy(&v)),
                _ => {}
            }
        }
        Ok(out)
    }
}

/// A request for a custom subresource, handed to its handler.
pub struct SubresourceRequest {
    pub info: RequestInfo,
    pub query: Query,
    pub method: Method,
    pub headers: HeaderMap,
    /// The query string as sent (subresources read their own parameters).
    pub raw_query: String,
    pub body: Body,
}

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

async fn handle_inner(api: SimApi, req: Request) -> Result<Response, ApiError> {
    let query = Query::parse(req.uri().query())?;
    let info = match req.extensions().get::<RequestInfo>() {
        Some(i) => i.clone(),
        None => RequestInfo::resolve(&api.table, req.method(), req.uri().path(), &query),
    };
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
    let ns = info.namespace.clone().unwrap_or_default();
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let as_table = accept.contains("as=Table");
    let method = req.method().clone();

    if info.subresource.is_none()
        && let Some(handler) = api.table.subresource_handler(rt.group, rt.plural, "")
    {
        let (parts, body) = req.into_parts();
        let raw_query = parts.uri.query().unwrap_or("").to_string();
        let sr = SubresourceRequest { info, query, method: parts.method, headers: parts.headers, raw_query, body };
        return Ok(handler(api.clone(), sr).await);
    }
    if let Some(sub) = info.subresource.clone() {
        let name = info.name.clone().unwrap_or_default();
        if let Some(handler) = api.table.subresource_handler(rt.group, rt.plural, &sub) {
            let (parts, body) = req.into_parts();
            let raw_query = parts.uri.query().unwrap_or("").to_string();
            let sr = SubresourceRequest { info, query, method: parts.method, headers: parts.headers, raw_query, body };
            return Ok(handler(api.clone(), sr).await);
        }
        if sub != "status" || !rt.subresources.contains(&"status") {
            return Err(ApiError::no_route());
        }
        return match method {
            Method::GET => {
                let obj = api.store.get(&rt, &ns, &name).ok_or_else(|| ApiError::not_found(&rt, &name))?;
                Ok(json_response(StatusCode::OK, &obj))
            }
            Method::PUT => {
                let manager = update_manager(&rt, &query, req.headers());
                let body = read_json(req, &rt).await?;
                let obj = api.store.update_as(&rt, &ns, &name, body, Scope::Status, query.dry_run, Some(manager))?;
                Ok(json_response(StatusCode::OK, &obj))
            }
            Method::PATCH => {
                let ct = content_type(req.headers());
                let manager = update_manager(&rt, &query, req.headers());
                let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
                patch(&api, &rt, &ns, &name, &ct, &body, Scope::Status, &query, manager)
                    .map(|(c, o)| json_response(c, &o))
            }
            _ => Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource")),
        };
    }

    match (method, info.name.clone()) {
        (Method::GET, None) if query.watch => {
            let cut = req.extensions().get::<super::faults::CutWatch>().is_some();
            watch(api, rt, info.namespace.clone(), query, as_table, cut).await
        }
        (Method::GET, None) => {
            let labels = LabelSelector::parse(&query.label_selector)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
            let fields = FieldSelector::parse(&query.field_selector, &[]).map_err(ApiError::bad_request)?;
            let (items, rv) = api.store.list(&rt, info.namespace.as_deref());
            let mut items: Vec<Value> =
                items.into_iter().filter(|o| labels.matches(&labels_of(o)) && fields.matches(o)).collect();
            items.iter_mut().for_each(|o| decorate(&api, &rt, o));
            if as_table {
                return Ok(table_response(&rt, &items, rv, query.include_object.as_deref(), true));
            }
            let list = json!({
                "kind": rt.list_kind(),
                "apiVersion": rt.api_version(),
                "metadata": { "resourceVersion": rv.to_string() },
                "items": items,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        (Method::GET, Some(name)) => {
            let mut obj = api.store.get(&rt, &ns, &name).ok_or_else(|| ApiError::not_found(&rt, &name))?;
            decorate(&api, &rt, &mut obj);
            if as_table {
                let rv = resource_version_of(&obj).unwrap_or(0);
                return Ok(table_response(&rt, &[obj], rv, query.include_object.as_deref(), true));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        (Method::POST, None) => {
            let manager = update_manager(&rt, &query, req.headers());
            let body = read_json(req, &rt).await?;
            if rt.namespaced
                && let Some(body_ns) = body.pointer("/metadata/namespace").and_then(Value::as_str)
                && !body_ns.is_empty()
                && body_ns != ns
            {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            let mut obj = api.store.create_as(&rt, &ns, body, query.dry_run, Some(&manager))?;
            decorate(&api, &rt, &mut obj);
            Ok(json_response(StatusCode::CREATED, &obj))
        }
        (Method::PUT, Some(name)) => {
            let manager = update_manager(&rt, &query, req.headers());
            let body = read_json(req, &rt).await?;
            let existed = api.store.get(&rt, &ns, &name).is_some();
            let mut obj = api.store.update_as(&rt, &ns, &name, body, Scope::Main, query.dry_run, Some(manager))?;
            decorate(&api, &rt, &mut obj);
            Ok(json_response(if existed { StatusCode::OK } else { StatusCode::CREATED }, &obj))
        }
        (Method::PATCH, Some(name)) => {
            let ct = content_type(req.headers());
            let manager = update_manager(&rt, &query, req.headers());
            let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
                .await
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            let (code, mut obj) = patch(&api, &rt, &ns, &name, &ct, &body, Scope::Main, &query, manager)?;
            decorate(&api, &rt, &mut obj);
            Ok(json_response(code, &obj))
        }
        (Method::DELETE, Some(name)) => {
            let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
                .await
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            let pre = preconditions(&body)?;
            let dry_run = query.dry_run || delete_options_dry_run(&body);
            let obj = api.store.delete(&rt, &ns, &name, &pre, dry_run)?;
            let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("");
            Ok(json_response(StatusCode::OK, &delete_success(&rt, &name, uid)))
        }
        (Method::DELETE, None) => {
            let labels = LabelSelector::parse(&query.label_selector)
                .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
            let fields = FieldSelector::parse(&query.field_selector, &[]).map_err(ApiError::bad_request)?;
            let (items, _) = api.store.list(&rt, info.namespace.as_deref());
            let mut deleted = Vec::new();
            for o in items.into_iter().filter(|o| labels.matches(&labels_of(o)) && fields.matches(o)) {
                let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                let ons = o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
                match api.store.delete(&rt, &ons, &name, &Preconditions::default(), query.dry_run) {
                    Ok(o) => deleted.push(o),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let list = json!({
                "kind": rt.list_kind(),
                "apiVersion": rt.api_version(),
                "metadata": { "resourceVersion": api.store.resource_version().to_string() },
                "items": deleted,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource")),
    }
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

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

/// The body of a create/update: JSON, YAML, or protobuf for the kinds that
/// have a decoder (what typed client-go clients such as `kubectl create
/// configmap` send); anything else is refused with 415.
async fn read_json(req: Request, rt: &ResourceType) -> Result<Value, ApiError> {
    let ct = content_type(req.headers());
    let proto = ct == super::protobuf::CONTENT_TYPE;
    if !ct.is_empty() && ct != "application/json" && ct != "application/yaml" && !(proto && rt.protobuf.is_some()) {
        return Err(ApiError::unsupported_media_type(&ct));
    }
    if proto {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        let decode = rt.protobuf.expect("checked above");
        let bad = |e: String| ApiError::bad_request(format!("the protobuf body is not a valid {}: {e}", rt.kind));
        let (api_version, kind, raw) = super::protobuf::envelope(&bytes).map_err(bad)?;
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
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if yaml {
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        return crate::spec::yaml::from_str(text)
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

fn preconditions(body: &Bytes) -> Result<Preconditions, ApiError> {
    let opts = delete_options(body)?;
    let get = |k: &str| opts.pointer(&format!("/preconditions/{k}")).and_then(Value::as_str).map(str::to_string);
    Ok(Preconditions { uid: get("uid"), resource_version: get("resourceVersion") })
}

fn delete_options_dry_run(body: &Bytes) -> bool {
    delete_options(body)
        .ok()
        .and_then(|o| o.get("dryRun").and_then(Value::as_array).map(|a| a.iter().any(|v| v == "All")))
        .unwrap_or(false)
}

/// PATCH in the content types clients send. Strategic merge is applied as a
/// JSON merge patch (the kinds the sim serves have no list merge keys that
/// modelship relies on). Server-side apply (`application/apply-patch+yaml`)
/// tracks field ownership ([`managed`]): it creates the object if missing,
/// removes fields its manager stopped sending and refuses, with 409, fields
/// another manager owns unless `force=true`.
#[allow(clippy::too_many_arguments)]
fn patch(
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
            let v: Value = crate::spec::yaml::from_str(text)
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
    let part = super::store::part(rt, scope);
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
                    json_patch::PatchErrorKind::TestFailed => {
                        ApiError::invalid(rt, name, vec![super::status::Cause::invalid("", "test", &e.to_string())])
                    }
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

/// `kubectl`'s short age: `42s`, `5m`, `3h`, `2d`, `1y`.
pub fn short_age(created: Option<&str>) -> String {
    let Some(ts) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

fn cell(obj: &Value, col: &Column) -> Value {
    match col {
        Column::Path { path, .. } => {
            let mut cur = obj;
            for seg in path.split('.') {
                cur = cur.get(seg).unwrap_or(&Value::Null);
            }
            match cur {
                Value::Null => json!(""),
                v => v.clone(),
            }
        }
        Column::Count { paths, .. } => {
            json!(paths.iter().map(|p| obj.get(*p).and_then(Value::as_object).map_or(0, |m| m.len())).sum::<usize>())
        }
    }
}

fn table(rt: &ResourceType, items: &[Value], rv: u64, include: Option<&str>, headers: bool) -> Value {
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in rt.columns {
        let name = match c {
            Column::Path { name, .. } | Column::Count { name, .. } => *name,
        };
        defs.push(json!({"name": name, "type": "string", "format": "", "description": "", "priority": 0}));
    }
    defs.push(json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            cells.extend(rt.columns.iter().map(|c| cell(o, c)));
            cells.push(json!(short_age(o.pointer("/metadata/creationTimestamp").and_then(Value::as_str))));
            let mut row = json!({ "cells": cells });
            match include.unwrap_or("Metadata") {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": rv.to_string() },
        "columnDefinitions": if headers { Value::Array(defs) } else { json!([]) },
        "rows": rows,
    })
}

pub(crate) fn table_response(
    rt: &ResourceType,
    items: &[Value],
    rv: u64,
    include: Option<&str>,
    headers: bool,
) -> Response {
    json_response(StatusCode::OK, &table(rt, items, rv, include, headers))
}

/// `?watch=1`: newline-delimited watch events, from `resourceVersion` (or
/// the current state first when it is unset or `0`), until the client goes,
/// `timeoutSeconds` passes or the sim stops.
async fn watch(
    api: SimApi,
    rt: Arc<ResourceType>,
    ns: Option<String>,
    query: Query,
    as_table: bool,
    cut: bool,
) -> Result<Response, ApiError> {
    let labels = LabelSelector::parse(&query.label_selector)
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(&query.field_selector, &[]).map_err(ApiError::bad_request)?;
    let from = match query.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => {
            Some(s.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))?)
        }
    };
    let from = if query.send_initial_events { None } else { from };
    let (backlog, current_rv, mut rx) = match api.store.subscribe(&rt.key(), ns.as_deref(), from) {
        Ok(s) => s,
        // As the API server does: a watch from a compacted version is
        // answered 200 with one ERROR event carrying the 410 Status; the
        // client re-lists.
        Err(e) if e.code == 410 => {
            let line = format!("{}\n", json!({ "type": "ERROR", "object": e.body() }));
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(line))
                .expect("static response parts are valid"));
        }
        Err(e) => return Err(e),
    };
    let timeout = query.timeout_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let shutdown = api.shutdown.clone();
    let resource = rt.key();
    tokio::spawn(async move {
        let matches = |o: &Value| labels.matches(&labels_of(o)) && fields.matches(o);
        let mut first_table = true;
        let mut encode = |kind: &str, obj: &Value| -> Bytes {
            let object = if as_table && kind != "BOOKMARK" {
                let t = table(
                    &rt,
                    std::slice::from_ref(obj),
                    resource_version_of(obj).unwrap_or(0),
                    query.include_object.as_deref(),
                    first_table,
                );
                first_table = false;
                t
            } else {
                obj.clone()
            };
            let mut line = json!({ "type": kind, "object": object }).to_string();
            line.push('\n');
            Bytes::from(line)
        };
        // What a filtered watcher sees of a change.
        let view = |e: &Event| -> Option<&'static str> {
            let now = matches(&e.object);
            let before = e.previous.as_deref().is_some_and(matches);
            match (e.kind, before, now) {
                (EventType::Deleted, true, _) => Some("DELETED"),
                (EventType::Deleted, false, _) => None,
                (_, false, true) => Some("ADDED"),
                (_, true, true) => Some("MODIFIED"),
                (_, true, false) => Some("DELETED"),
                (_, false, false) => None,
            }
        };
        let bookmark = |rv: u64, initial_end: bool| {
            let mut meta = json!({ "resourceVersion": rv.to_string() });
            if initial_end {
                meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
            }
            json!({ "kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta })
        };
        let mut last_rv = from.unwrap_or(0);
        for e in &backlog {
            let kind = if from.is_none() { if matches(&e.object) { Some("ADDED") } else { None } } else { view(e) };
            if let Some(kind) = kind
                && tx.send(Ok(encode(kind, &e.object))).await.is_err()
            {
                return;
            }
            last_rv = last_rv.max(e.rv);
        }
        // Everything up to the subscription point has been seen.
        last_rv = last_rv.max(if from.is_none() { current_rv } else { last_rv });
        if query.send_initial_events
            && query.allow_bookmarks
            && tx.send(Ok(encode("BOOKMARK", &bookmark(current_rv, true)))).await.is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if query.allow_bookmarks => {
                    if tx.send(Ok(encode("BOOKMARK", &bookmark(last_rv, false)))).await.is_err() {
                        return;
                    }
                }
                r = rx.recv() => match r {
                    Ok(e) => {
                        if e.rv <= last_rv || e.resource != resource || ns.as_deref().is_some_and(|n| n != e.namespace) {
                            continue;
                        }
                        last_rv = e.rv;
                        if let Some(kind) = view(&e)
                            && tx.send(Ok(encode(kind, &e.object))).await.is_err() {
                                return;
                            }
                    }
                    // Too slow a reader: end the watch; the client resumes
                    // from its last resourceVersion (or re-lists on 410).
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                }
            }
        }
    });
    let events = ReceiverStream::new(out);
    let body = if cut {
        // An injected cut: after the first event the stream breaks (hyper
        // aborts the chunked body), as when a proxy drops a long watch.
        use futures::StreamExt;
        // The pause lets hyper flush the first event before it aborts.
        let broken = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("sim: injected watch cut"))
        });
        Body::from_stream(events.take(1).chain(broken))
    } else {
        Body::from_stream(events)
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("static response parts are valid"))
}
