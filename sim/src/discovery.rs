//! `/version`, API discovery (`/api`, `/api/v1`, `/apis`, `/apis/G`,
//! `/apis/G/V`) and a minimal OpenAPI v3 (`/openapi/v3`), all generated from
//! the resource table.
//!
//! Aggregated discovery (`Accept: ...;as=APIGroupDiscoveryList`) is answered
//! with the plain documents and `Content-Type: application/json`, which
//! client-go takes as "not supported" and falls back to per-group discovery.
//! The OpenAPI v3 documents hold only the paths and the query parameters
//! kubectl checks before it sends `fieldValidation` (its default
//! `--validate=strict` refuses to run without them); they carry no schemas.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::SimApi;
use super::resource::ResourceType;
use super::status::ApiError;

fn json_ok(v: Value) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

pub async fn version() -> Response {
    json_ok(json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0+modelship-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    }))
}

pub async fn api_versions(headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    json_ok(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": host }],
    }))
}

fn group_json(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({ "groupVersion": format!("{group}/{v}"), "version": v })).collect();
    json!({ "name": group, "versions": vs, "preferredVersion": vs[0] })
}

pub async fn api_groups(State(api): State<SimApi>) -> Response {
    let groups: Vec<Value> =
        api.table.groups().into_iter().filter(|(g, _)| !g.is_empty()).map(|(g, vs)| group_json(g, &vs)).collect();
    json_ok(json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }))
}

pub async fn api_group(State(api): State<SimApi>, Path(group): Path<String>) -> Response {
    match api.table.groups().into_iter().find(|(g, _)| !g.is_empty() && *g == group) {
        Some((g, vs)) => {
            let mut v = group_json(g, &vs);
            v["kind"] = json!("APIGroup");
            v["apiVersion"] = json!("v1");
            json_ok(v)
        }
        None => ApiError::no_route().into_response(),
    }
}

fn resource_list(api: &SimApi, group: &str, version: &str) -> Response {
    let types = api.table.in_group_version(group, version);
    if types.is_empty() {
        return ApiError::no_route().into_response();
    }
    let mut resources = Vec::new();
    for t in types {
        resources.push(json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs,
            "shortNames": t.short_names,
            "categories": t.categories,
            "storageVersionHash": storage_hash(t),
        }));
        for sub in t.subresources {
            resources.push(json!({
                "name": format!("{}/{sub}", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": if *sub == "status" { t.kind } else { "Status" },
                "verbs": if *sub == "status" { json!(["get", "patch", "update"]) } else { json!(["get", "create"]) },
            }));
        }
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    json_ok(json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources }))
}

fn storage_hash(t: &ResourceType) -> String {
    let d = Sha256::digest(format!("{}/{}/{}", t.group, t.version, t.kind));
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &d[..8])
}

pub async fn core_resources(State(api): State<SimApi>, Path(version): Path<String>) -> Response {
    resource_list(&api, "", &version)
}

pub async fn group_resources(State(api): State<SimApi>, Path((group, version)): Path<(String, String)>) -> Response {
    resource_list(&api, &group, &version)
}

/// The sim publishes no OpenAPI v2; clients use v3.
pub async fn openapi_v2() -> Response {
    ApiError::no_route().into_response()
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") }
}

fn param(name: &str) -> Value {
    json!({ "name": name, "in": "query", "schema": { "type": "string", "uniqueItems": true } })
}

/// The OpenAPI v3 document of one group/version: operations with their
/// `x-kubernetes-group-version-kind` and query parameters.
fn openapi_doc(api: &SimApi, group: &str, version: &str) -> Option<Value> {
    let types = api.table.in_group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut paths = serde_json::Map::new();
    for t in types {
        let gvk = json!({ "group": t.group, "version": t.version, "kind": t.kind });
        let op = |action: &str, params: &[&str]| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
                "responses": { "200": { "description": "OK" } },
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let base = format!("/{}", gv_path(t.group, t.version));
        let collection = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{base}/{}", t.plural)
        };
        let list_params = [
            "labelSelector",
            "fieldSelector",
            "resourceVersion",
            "timeoutSeconds",
            "watch",
            "allowWatchBookmarks",
            "sendInitialEvents",
        ];
        paths.insert(
            collection.clone(),
            json!({
                "get": op("list", &list_params),
                "post": op("post", &["dryRun", "fieldManager", "fieldValidation"]),
                "delete": op("deletecollection", &["labelSelector", "fieldSelector", "dryRun"]),
            }),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": op("get", &[]),
                "put": op("put", &["dryRun", "fieldManager", "fieldValidation"]),
                "patch": op("patch", &["dryRun", "fieldManager", "fieldValidation", "force"]),
                "delete": op("delete", &["dryRun"]),
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": { "title": "Kubernetes (modelship sim)", "version": "v1.32.0" },
        "paths": paths,
        "components": { "schemas": {} },
    }))
}

pub async fn openapi_v3_root(State(api): State<SimApi>) -> Response {
    let mut paths = serde_json::Map::new();
    for (group, versions) in api.table.groups() {
        for v in versions {
            let Some(doc) = openapi_doc(&api, group, v) else { continue };
            let hash = hex::encode(&Sha256::digest(doc.to_string().as_bytes())[..16]);
            let p = gv_path(group, v);
            paths.insert(p.clone(), json!({ "serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}") }));
        }
    }
    json_ok(json!({ "paths": paths }))
}

pub async fn openapi_v3_doc(State(api): State<SimApi>, Path(path): Path<String>) -> Response {
    let segs: Vec<&str> = path.split('/').collect();
    let doc = match segs.as_slice() {
        ["api", v] => openapi_doc(&api, "", v),
        ["apis", g, v] => openapi_doc(&api, g, v),
        _ => None,
    };
    match doc {
        Some(d) => json_ok(d),
        None => ApiError::no_route().into_response(),
    }
}
