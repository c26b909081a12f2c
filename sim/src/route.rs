//! `route.openshift.io/v1`: Routes. The sim's router admits a Route whose
//! `spec.to` names a Seldon predictor's Service (`<sdep>-<predictor>`, hashed
//! as the operator hashes names over 63 characters) once
//! that predictor serves, publishing `status.ingress[0].host` as the
//! loopback `127.0.0.1:PORT` the model process listens on (there is no
//! router in front; the host is where a client reaches the Service).

use serde_json::{Value, json};

use super::SimApi;
use super::resource::{Column, ResourceTable, ResourceType};
use super::store::{Scope, WriteOptions};

pub const ROUTES: ResourceType = ResourceType {
    subresources: &["status"],
    columns: &[
        Column::Path { name: "Host/Port", path: "spec.host" },
        Column::Path { name: "Services", path: "spec.to.name" },
    ],
    ..ResourceType::namespaced("route.openshift.io", "v1", "Route", "routes", "route")
};

pub fn register(table: &mut ResourceTable) {
    table.add(ROUTES);
}

/// `host:port` of a URL like `http://127.0.0.1:PORT/api/v1.0/predictions`.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// Admit every Route in `ns` whose target Service is a serving predictor
/// (and clear the ingress of one whose target stopped serving). Writes only
/// what changed, so calling it on every event converges.
pub fn reconcile_namespace(api: &SimApi, ns: &str) {
    let (routes, _) = api.store.list(&ROUTES, Some(ns));
    let (sdeps, _) = api.store.list(&super::seldon::SELDON_DEPLOYMENTS, Some(ns));
    for route in routes {
        let Some(name) = route.pointer("/metadata/name").and_then(Value::as_str) else { continue };
        let target = route.pointer("/spec/to/name").and_then(Value::as_str).unwrap_or("");
        let host = sdeps.iter().find_map(|s| {
            let sname = s.pointer("/metadata/name")?.as_str()?;
            let predictor = s.pointer("/spec/predictors/0/name")?.as_str()?;
            if super::seldon::predictor_service(sname, predictor) != target
                || s.pointer("/status/state").and_then(Value::as_str) != Some("Available")
            {
                return None;
            }
            host_of(s.pointer("/status/address/url")?.as_str()?).map(str::to_string)
        });
        let status = match host {
            Some(h) => json!({ "ingress": [{
                "host": h,
                "routerName": "default",
                "wildcardPolicy": "None",
                "conditions": [{ "type": "Admitted", "status": "True" }],
            }]}),
            None => json!({}),
        };
        if route.get("status").unwrap_or(&json!({})) == &status {
            continue;
        }
        let opts = WriteOptions { scope: Scope::Status, ..Default::default() };
        let written = api.store.modify(&ROUTES, ns, name, &opts, |old| {
            let mut new = old.clone();
            new["status"] = status.clone();
            Ok(new)
        });
        if let Err(e) = written {
            tracing::warn!(namespace = ns, route = name, error = %e.body(), "sim router cannot update a Route");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_strips_scheme_and_path() {
        assert_eq!(super::host_of("http://127.0.0.1:4000/api/v1.0/predictions"), Some("127.0.0.1:4000"));
        assert_eq!(super::host_of("nonsense"), None);
    }
}
