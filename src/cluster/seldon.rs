//! Typed views of the Seldon and OpenShift Route resources the
//! `seldon-deploy` stage applies and watches (dynamic objects with typed
//! status, so no CRD types need generating).

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde::Deserialize;
use serde_json::Value;

/// `machinelearning.seldon.io/v1` SeldonDeployment.
pub fn seldon_deployment_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("machinelearning.seldon.io", "v1", "SeldonDeployment"),
        "seldondeployments",
    )
}

/// `route.openshift.io/v1` Route.
pub fn route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("route.openshift.io", "v1", "Route"), "routes")
}

/// The Deployment the Seldon operator makes for predictor `predictor`'s
/// first component spec (index 0) and its container `container`.
pub fn predictor_deployment_name(sdep: &str, predictor: &str, container: &str) -> String {
    format!("{sdep}-{predictor}-0-{container}")
}

/// `status` of a v1 SeldonDeployment (the fields modelship reads).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SeldonStatus {
    /// `Creating`, `Available`, `Failed` (`Unknown` until the operator reacts).
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub address: Option<Address>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Address {
    #[serde(default)]
    pub url: Option<String>,
}

impl SeldonStatus {
    pub fn of(obj: &DynamicObject) -> SeldonStatus {
        obj.data.get("status").cloned().and_then(|s| serde_json::from_value(s).ok()).unwrap_or_default()
    }

    /// The endpoint's base URL: `status.address.url` without the Seldon v1
    /// predictions path.
    pub fn base_url(&self) -> Option<String> {
        let url = self.address.as_ref()?.url.as_deref()?;
        Some(url.strip_suffix("/api/v1.0/predictions").unwrap_or(url).trim_end_matches('/').to_string())
    }
}

/// The first admitted host of a Route (`status.ingress[].host`).
pub fn route_host(obj: &DynamicObject) -> Option<String> {
    obj.data.pointer("/status/ingress")?.as_array()?.iter().find_map(|i| i.get("host")?.as_str().map(str::to_string))
}

/// Whether a Route's spec asks for TLS (the endpoint is then `https://`).
pub fn route_tls(obj: &DynamicObject) -> bool {
    obj.data.pointer("/spec/tls").is_some_and(|t| !t.is_null() && t != &Value::Object(Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_drops_the_predictions_path() {
        let s = SeldonStatus {
            address: Some(Address {
                url: Some("http://weather-default.models-dev.svc.cluster.local:8000/api/v1.0/predictions".into()),
            }),
            ..Default::default()
        };
        assert_eq!(s.base_url().as_deref(), Some("http://weather-default.models-dev.svc.cluster.local:8000"));
        assert_eq!(predictor_deployment_name("weather", "default", "model"), "weather-default-0-model");
    }
}
