//! What a request asks for: [`RequestInfo`] (resolved from method, path and
//! query, as the API server's RequestInfoResolver does), the [`Query`]
//! parameters the generic verbs honour, and [`SubresourceRequest`] for the
//! handlers of custom subresources.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method};

use super::super::resource::{ResourceTable, ResourceType};
use super::super::status::ApiError;

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
    /// Who is asking: `system:anonymous` until [`crate::authn::layer`]
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
