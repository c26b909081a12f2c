//! The cluster manifests the `openshift-build` and `seldon-deploy` stages
//! apply, rendered from the stage catalog (`stages/openshift-build/`,
//! `stages/seldon-deploy/`) so a pipeline's `templates:` may override them.
//!
//! One pure function per manifest: it checks every value against what its
//! slot allows (names, image references, quantities — refusing anything that
//! would add YAML structure), renders the template and parses the result to
//! make sure it is one object of the expected kind. The variables each
//! template receives are documented in that stage's README.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use crate::catalog::{Catalog, CatalogError};
use crate::error::{ExitClass, HasExitClass};
use crate::template::TemplateError;
use crate::template::safe::{self, Slot};

/// seldon-core-microservice's default ports (REST, gRPC, metrics): the
/// Dockerfile exposes them and the manifests point at them.
pub const HTTP_PORT: u16 = 9000;
pub const GRPC_PORT: u16 = 5000;
pub const METRICS_PORT: u16 = 6000;

pub const BUILD_KIND: &str = "openshift-build";
pub const DEPLOY_KIND: &str = "seldon-deploy";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{manifest}: {var} `{value}` {reason}")]
    InvalidVar { manifest: &'static str, var: String, value: String, reason: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{origin}: the rendered manifest is not valid YAML{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    NotYaml { origin: String, line: Option<usize>, message: String },
    #[error("{origin}: rendered `{found}`, expected one {expected} object")]
    WrongKind { origin: String, expected: &'static str, found: String },
}

impl HasExitClass for ManifestError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::BadInput
    }
}

/// Inputs of `buildconfig.yaml.hbs` and `imagestream.yaml.hbs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildVars {
    /// BuildConfig and ImageStream name (usually the model name).
    pub name: String,
    pub namespace: String,
    /// Output ImageStreamTag is `name:tag`.
    pub tag: String,
    /// Merged over `app: <name>` and `app.kubernetes.io/managed-by: modelship`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `spec.output.imageLabels`: labels the builder adds to the image it
    /// pushes, after the Dockerfile's own (same key wins).
    pub image_labels: BTreeMap<String, String>,
}

impl BuildVars {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        BuildVars {
            name: name.into(),
            namespace: namespace.into(),
            tag: "latest".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            image_labels: BTreeMap::new(),
        }
    }
}

/// CPU/memory requests and limits of the model container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub requests: BTreeMap<String, String>,
    pub limits: BTreeMap<String, String>,
}

/// Inputs of `seldondeployment.yaml.hbs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployVars {
    /// SeldonDeployment name.
    pub name: String,
    pub namespace: String,
    /// Predictor name (default `default`); the operator's Service is `<name>-<predictor>`.
    pub predictor: String,
    /// Container and graph node name (they must match).
    pub container: String,
    /// The model image, pinned by digest (`REPO@sha256:...`).
    pub image: String,
    pub replicas: u32,
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl DeployVars {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, image: impl Into<String>) -> Self {
        DeployVars {
            name: name.into(),
            namespace: namespace.into(),
            predictor: "default".into(),
            container: "model".into(),
            image: image.into(),
            replicas: 1,
            env: BTreeMap::new(),
            resources: Resources::default(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }
}

/// A Route's target port: the Service port's number or name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// Inputs of `route.yaml.hbs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteVars {
    pub name: String,
    pub namespace: String,
    /// The Service to expose; for a SeldonDeployment see [`seldon_service_name`].
    pub service: String,
    /// Default `http`, the Seldon predictor Service's REST port (8000).
    pub target_port: PortRef,
    /// Absent: the router assigns one.
    pub host: Option<String>,
    /// Edge TLS termination, plain HTTP redirected.
    pub tls: bool,
    pub labels: BTreeMap<String, String>,
}

impl RouteVars {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, service: impl Into<String>) -> Self {
        RouteVars {
            name: name.into(),
            namespace: namespace.into(),
            service: service.into(),
            target_port: PortRef::Name("http".into()),
            host: None,
            tls: false,
            labels: BTreeMap::new(),
        }
    }
}

/// The Service the Seldon operator creates for a predictor (hashed as the
/// operator hashes names over 63 characters).
pub fn seldon_service_name(deployment: &str, predictor: &str) -> String {
    crate::cluster::seldon::predictor_service_name(deployment, predictor)
}

/// Collects invalid values of one manifest.
struct Checker {
    manifest: &'static str,
    first: Option<ManifestError>,
}

impl Checker {
    fn new(manifest: &'static str) -> Self {
        Checker { manifest, first: None }
    }
    fn check(&mut self, var: &str, value: &str, slot: Slot) {
        if self.first.is_none()
            && let Some(reason) = safe::refusal(value, slot)
        {
            self.first = Some(ManifestError::InvalidVar {
                manifest: self.manifest,
                var: var.into(),
                value: safe::display_value(value),
                reason,
            });
        }
    }
    /// Label/annotation keys and values, as `[{key, value}]` with the value
    /// pre-quoted for YAML.
    fn pairs(&mut self, var: &str, map: &BTreeMap<String, String>, value_slot: Slot) -> Vec<Value> {
        map.iter()
            .map(|(k, v)| {
                self.check(&format!("{var}.{k}"), k, Slot::LabelKey);
                self.check(&format!("{var}.{k}"), v, value_slot);
                json!({"key": k, "value": safe::yaml_quote(v)})
            })
            .collect()
    }
    fn done(self) -> Result<(), ManifestError> {
        self.first.map_or(Ok(()), Err)
    }
}

fn default_labels(name: &str, extra: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app".to_string(), name.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), "modelship".to_string()),
    ]);
    labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

fn render_manifest(
    catalog: &Catalog,
    kind: &str,
    file: &str,
    data: &impl Serialize,
    expected: &'static str,
) -> Result<String, ManifestError> {
    let t = catalog.template(kind, file)?;
    let text = crate::template::render(&t.text, data, &t.origin)?;
    let parsed: Value = crate::spec::yaml::from_str(&text).map_err(|e| ManifestError::NotYaml {
        origin: t.origin.clone(),
        line: e.line,
        message: e.message,
    })?;
    let found = parsed.get("kind").and_then(Value::as_str).unwrap_or("(no kind)");
    if found != expected {
        return Err(ManifestError::WrongKind { origin: t.origin, expected, found: found.to_string() });
    }
    Ok(text)
}

fn build_data(manifest: &'static str, vars: &BuildVars) -> Result<Value, ManifestError> {
    let mut c = Checker::new(manifest);
    c.check("name", &vars.name, Slot::DnsLabel);
    c.check("namespace", &vars.namespace, Slot::DnsLabel);
    c.check("tag", &vars.tag, Slot::Tag);
    let labels = c.pairs("labels", &default_labels(&vars.name, &vars.labels), Slot::LabelValue);
    let annotations = c.pairs("annotations", &vars.annotations, Slot::QuotedText);
    let image_labels = c.pairs("imageLabels", &vars.image_labels, Slot::QuotedText);
    c.done()?;
    Ok(json!({
        "name": vars.name,
        "namespace": vars.namespace,
        "tag": vars.tag,
        "labels": labels,
        "annotations": annotations,
        "imageLabels": image_labels,
    }))
}

/// `openshift-build/buildconfig.yaml.hbs`: Docker strategy, binary source,
/// output to the ImageStreamTag `name:tag`.
pub fn build_config_yaml(catalog: &Catalog, vars: &BuildVars) -> Result<String, ManifestError> {
    let data = build_data("BuildConfig", vars)?;
    render_manifest(catalog, BUILD_KIND, "buildconfig.yaml.hbs", &data, "BuildConfig")
}

/// `openshift-build/imagestream.yaml.hbs`.
pub fn image_stream_yaml(catalog: &Catalog, vars: &BuildVars) -> Result<String, ManifestError> {
    let data = build_data("ImageStream", vars)?;
    render_manifest(catalog, BUILD_KIND, "imagestream.yaml.hbs", &data, "ImageStream")
}

/// `seldon-deploy/seldondeployment.yaml.hbs`: one predictor, one MODEL node
/// with a REST endpoint, the image pinned by digest.
pub fn seldon_deployment_yaml(catalog: &Catalog, vars: &DeployVars) -> Result<String, ManifestError> {
    let mut c = Checker::new("SeldonDeployment");
    c.check("name", &vars.name, Slot::DnsLabel);
    c.check("namespace", &vars.namespace, Slot::DnsLabel);
    c.check("predictor", &vars.predictor, Slot::DnsLabel);
    c.check("container", &vars.container, Slot::DnsLabel);
    c.check("image", &vars.image, Slot::ImageDigestRef);
    let env: Vec<Value> = vars
        .env
        .iter()
        .map(|(k, v)| {
            c.check(&format!("env.{k}"), k, Slot::EnvName);
            c.check(&format!("env.{k}"), v, Slot::QuotedText);
            json!({"name": k, "value": safe::yaml_quote(v)})
        })
        .collect();
    let mut quantities = |var: &str, map: &BTreeMap<String, String>| -> Vec<Value> {
        map.iter()
            .map(|(k, v)| {
                c.check(&format!("{var}.{k}"), k, Slot::LabelKey);
                c.check(&format!("{var}.{k}"), v, Slot::Quantity);
                json!({"key": k, "value": safe::yaml_quote(v)})
            })
            .collect()
    };
    let requests = quantities("resources.requests", &vars.resources.requests);
    let limits = quantities("resources.limits", &vars.resources.limits);
    let labels = c.pairs("labels", &default_labels(&vars.name, &vars.labels), Slot::LabelValue);
    let annotations = c.pairs("annotations", &vars.annotations, Slot::QuotedText);
    if vars.replicas > 1000 {
        c.first.get_or_insert(ManifestError::InvalidVar {
            manifest: "SeldonDeployment",
            var: "replicas".into(),
            value: vars.replicas.to_string(),
            reason: "is more than 1000".into(),
        });
    }
    c.done()?;
    let data = json!({
        "name": vars.name,
        "namespace": vars.namespace,
        "predictor": vars.predictor,
        "container": vars.container,
        "image": vars.image,
        "replicas": vars.replicas,
        "env": env,
        "requests": requests,
        "limits": limits,
        "labels": labels,
        "annotations": annotations,
        "httpPort": HTTP_PORT,
    });
    render_manifest(catalog, DEPLOY_KIND, "seldondeployment.yaml.hbs", &data, "SeldonDeployment")
}

/// `seldon-deploy/route.yaml.hbs`: exposes the predictor's Service outside
/// the cluster, as the seed's `oc expose` did.
pub fn route_yaml(catalog: &Catalog, vars: &RouteVars) -> Result<String, ManifestError> {
    let mut c = Checker::new("Route");
    c.check("name", &vars.name, Slot::DnsLabel);
    c.check("namespace", &vars.namespace, Slot::DnsLabel);
    c.check("service", &vars.service, Slot::DnsLabel);
    if let Some(h) = &vars.host {
        c.check("host", h, Slot::DnsSubdomain);
    }
    let target_port = match &vars.target_port {
        PortRef::Number(n) => n.to_string(),
        PortRef::Name(name) => {
            c.check("targetPort", name, Slot::DnsLabel);
            safe::yaml_quote(name)
        }
    };
    let labels = c.pairs("labels", &default_labels(&vars.name, &vars.labels), Slot::LabelValue);
    c.done()?;
    let data = json!({
        "name": vars.name,
        "namespace": vars.namespace,
        "service": vars.service,
        "targetPort": target_port,
        "host": vars.host,
        "tls": vars.tls,
        "labels": labels,
    });
    render_manifest(catalog, DEPLOY_KIND, "route.yaml.hbs", &data, "Route")
}
