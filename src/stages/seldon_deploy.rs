//! Stage `seldon-deploy`: apply a SeldonDeployment running the image built
//! earlier (pinned by digest), optionally a Route, wait until it serves the
//! new image, and output its endpoint.
//!
//! Apply is server-side apply with field manager `modelship`, so a re-run
//! with the same digest changes nothing (same generation, same
//! resourceVersion) and a new digest updates the spec. A v1
//! SeldonDeployment can stay `Available` during a rolling update, so success
//! also requires the predictor's Deployment (`<sdep>-<predictor>-0-<container>`,
//! or `seldon-<md5>` over 63 characters, as the operator names it and reports
//! it in `status.deploymentStatus`) to run the new image with all replicas
//! updated and available for its current generation.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::openshift_build::OpenshiftBuild;
use super::{Contract, Problem, Stage, StageContext, StageError, ValidateCx};
use crate::cluster::ClusterError;
use crate::cluster::seldon::{self, predictor_deployment_name, route_resource, seldon_deployment_resource};
use crate::error::{ExitClass, HasExitClass};
use crate::manifests::{self, DeployVars, ManifestError, RouteVars};
use crate::registry::ImageRef;

const FIELD_MANAGER: &str = "modelship";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// The environment (cluster and namespace) to deploy to.
    pub environment: String,
    /// `REPO@sha256:...`; default: the `image` output of the latest
    /// `openshift-build` stage. A tag is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// SeldonDeployment name; default: the model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesParam>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Also apply a Route to the predictor's Service.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub route: bool,
    /// Output the Route's host as the endpoint (implies `route`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_route: bool,
    /// How long to wait for the rollout, e.g. `10m` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesParam {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(
        "no image to deploy: set `image`, or run an `openshift-build` stage before this one (its `image` output is the default)"
    )]
    NoImage,
    #[error(
        "image `{image}` is not pinned by digest: deploy `REPO@sha256:<digest>` so dev runs exactly what is promoted"
    )]
    NotPinned { image: String },
    #[error("image `{image}`: {reason}")]
    BadImage { image: String, reason: String },
    #[error("timeout `{value}`: {reason}")]
    BadTimeout { value: String, reason: String },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("rendered {what} is not valid YAML: {message}")]
    Rendered { what: &'static str, message: String },
    #[error("cannot {verb} {resource} {namespace}/{name}: {}", api_message(.source))]
    Api {
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("SeldonDeployment {namespace}/{name} is Failed: {description}")]
    Failed { namespace: String, name: String, description: String },
    #[error("SeldonDeployment {namespace}/{name} did not roll out within {waited}: {last}")]
    Timeout { namespace: String, name: String, waited: String, last: String },
    #[error("Route {namespace}/{name} was not admitted within {waited} (no status.ingress host)")]
    RouteTimeout { namespace: String, name: String, waited: String },
    #[error("cancelled while deploying {namespace}/{name}")]
    Cancelled { namespace: String, name: String },
}

/// The API server's message with its reason (`Forbidden`, `NotFound`, ...).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            let hint = match s.code {
                403 => " (the runner's service account needs RBAC for this verb and resource)",
                404 => " (is the Seldon Core operator / OpenShift router installed in this cluster?)",
                _ => "",
            };
            format!("{} {}: {}{hint}", s.code, s.reason, s.message)
        }
        other => other.to_string(),
    }
}

impl HasExitClass for DeployError {
    fn exit_class(&self) -> ExitClass {
        match self {
            DeployError::NoImage
            | DeployError::NotPinned { .. }
            | DeployError::BadImage { .. }
            | DeployError::BadTimeout { .. }
            | DeployError::Manifest(_)
            | DeployError::Rendered { .. } => ExitClass::BadInput,
            DeployError::Cluster(e) => e.exit_class(),
            _ => ExitClass::Failed,
        }
    }
}

impl From<DeployError> for StageError {
    fn from(e: DeployError) -> StageError {
        let retryable = match &e {
            DeployError::Api { source, .. } if matches!(**source, kube::Error::Api(_)) => {
                matches!(&**source, kube::Error::Api(s) if s.code >= 500 || s.code == 429 || s.code == 409)
            }
            DeployError::Api { .. } => true,
            _ => false,
        };
        let kind = match (&e, e.exit_class()) {
            (DeployError::Cancelled { .. }, _) => super::StageErrorKind::Cancelled,
            (_, ExitClass::BadInput) => super::StageErrorKind::BadInput,
            _ => super::StageErrorKind::Failed,
        };
        let mut se = StageError::failed(e);
        se.kind = kind;
        se.retryable = retryable;
        se
    }
}

fn parse_timeout(p: &Params) -> Result<Duration, DeployError> {
    match &p.timeout {
        None => Ok(DEFAULT_TIMEOUT),
        Some(t) => match humantime::parse_duration(t.trim()) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(DeployError::BadTimeout { value: t.clone(), reason: "must be more than zero".into() }),
            Err(e) => Err(DeployError::BadTimeout { value: t.clone(), reason: e.to_string() }),
        },
    }
}

/// Refuse anything but `HOST/REPO@sha256:<64 hex>`.
fn check_image(image: &str) -> Result<ImageRef, DeployError> {
    let r = ImageRef::parse(image)
        .map_err(|e| DeployError::BadImage { image: image.to_string(), reason: e.to_string() })?;
    if r.digest.is_none() || r.tag.is_some() {
        return Err(DeployError::NotPinned { image: image.to_string() });
    }
    Ok(r)
}

fn deploy_vars(p: &Params, name: &str, namespace: &str, image: &str) -> DeployVars {
    let mut v = DeployVars::new(name, namespace, image);
    v.replicas = p.replicas.unwrap_or(1);
    v.env = p.env.clone();
    if let Some(r) = &p.resources {
        v.resources.requests = r.requests.clone();
        v.resources.limits = r.limits.clone();
    }
    v
}

pub struct SeldonDeploy;

/// What seldon-deploy hands prediction-check and promote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Output {
    pub endpoint: String,
    pub deployed_digest: String,
    pub deployment_name: String,
}

impl Contract for SeldonDeploy {
    const KIND: &'static str = "seldon-deploy";
    const OUTPUTS: &'static [&'static str] = &["endpoint", "deployedDigest", "deploymentName"];
    type Params = Params;
    type Output = Output;

    fn validate(p: &Params, cx: &ValidateCx<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        problems.extend(cx.environment_problem("environment", &p.environment));
        match &p.image {
            Some(image) if !crate::template::is_template(image) => {
                if let Err(e) = check_image(image) {
                    problems.push(Problem::new("image", e.to_string()));
                }
            }
            Some(_) => {}
            None => {
                if !cx.may_link::<OpenshiftBuild>() {
                    problems.push(Problem::new("", DeployError::NoImage.to_string()));
                }
            }
        }
        if p.timeout.as_deref().is_some_and(|t| !crate::template::is_template(t))
            && let Err(e) = parse_timeout(p)
        {
            problems.push(Problem::new("timeout", e.to_string()).with_hint("a duration such as `90s` or `10m`"));
        }
        if p.replicas.is_some_and(|r| r > 1000) {
            problems.push(Problem::new("replicas", "at most 1000"));
        }
        problems
    }

    fn needs_cluster(_params: &Params, _cx: &ValidateCx<'_>) -> bool {
        true
    }

    fn plan(p: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        let name = p.name.clone().unwrap_or_else(|| cx.pipeline.spec.model.name.clone());
        let ns = cx.pipeline.spec.environments.get(&p.environment).map(|e| e.namespace.as_str()).unwrap_or("?");
        let image = match &p.image {
            Some(i) => crate::secret::mask(i),
            None => match cx.linked::<OpenshiftBuild>() {
                Some(s) => format!("the `image` output of stage `{}`", s.name),
                None => "(no image)".into(),
            },
        };
        let mut lines = vec![format!(
            "apply SeldonDeployment {ns}/{name} (environment `{}`, field manager `{FIELD_MANAGER}`) running {image}, {} replica(s)",
            p.environment,
            p.replicas.unwrap_or(1)
        )];
        if p.route || p.use_route {
            lines.push(format!(
                "apply Route {ns}/{name} to Service {}",
                manifests::seldon_service_name(&name, "default")
            ));
        }
        let timeout = p.timeout.as_deref().unwrap_or("10m");
        lines.push(format!(
            "wait up to {timeout} for Available and Deployment {}",
            predictor_deployment_name(&name, "default", "model")
        ));
        lines
    }
}

/// The effectful half, beside the contract above.
impl Stage for SeldonDeploy {
    async fn run(p: Params, cx: &StageContext) -> Result<Output, StageError> {
        let built = cx.input::<OpenshiftBuild>()?;
        Ok(deploy(&p, built, cx).await?)
    }
}

async fn deploy(
    p: &Params,
    built: Option<super::openshift_build::Output>,
    cx: &StageContext,
) -> Result<Output, DeployError> {
    let timeout = parse_timeout(p)?;
    let image = match &p.image {
        Some(i) => i.clone(),
        None => built.map(|b| b.image).filter(|i| !i.is_empty()).ok_or(DeployError::NoImage)?,
    };
    let image_ref = check_image(&image)?;
    let digest = image_ref.digest.clone().unwrap_or_default();
    let env = cx.clusters.environment(&p.environment)?;
    let namespace = env.namespace.clone();
    let name = p.name.clone().unwrap_or_else(|| cx.pipeline.spec.model.name.clone());
    let vars = deploy_vars(p, &name, &namespace, &image);
    let sdep_yaml = manifests::seldon_deployment_yaml(&cx.catalog, &vars)?;
    let sdep_obj: Value = crate::spec::yaml::from_str(&sdep_yaml)
        .map_err(|e| DeployError::Rendered { what: "SeldonDeployment", message: e.to_string() })?;
    let client = cx.clusters.client(&p.environment).await?;
    let api_err = |verb, resource, n: &str| {
        let (namespace, name) = (namespace.clone(), n.to_string());
        move |source| DeployError::Api { verb, resource, namespace, name, source: Box::new(source) }
    };
    let applied = seldon::apply(&client, &namespace, &seldon_deployment_resource(), &name, &sdep_obj, FIELD_MANAGER)
        .await
        .map_err(api_err("apply", "SeldonDeployment", &name))?;
    tracing::info!(
        namespace = %namespace,
        sdep = %name,
        generation = applied.metadata.generation.unwrap_or(0),
        resource_version = applied.metadata.resource_version.as_deref().unwrap_or(""),
        image = %image,
        "SeldonDeployment applied"
    );

    let dname = predictor_deployment_name(&name, &vars.predictor, &vars.container);
    let started = tokio::time::Instant::now();
    let mut last = String::from("no status yet");
    let rollout = seldon::Rollout { sdep: &name, deployment: &dname, image: &image };
    let status = tokio::select! {
        _ = cx.cancel.cancelled() => return Err(DeployError::Cancelled { namespace, name }),
        r = tokio::time::timeout(timeout, seldon::await_rollout(&client, &namespace, rollout, &mut last)) => match r {
            Ok(r) => r.map_err(|e| wait_error(e, &namespace, &name))?,
            Err(_) => return Err(DeployError::Timeout {
                namespace,
                name,
                waited: humantime::format_duration(timeout).to_string(),
                last,
            }),
        },
    };

    let mut endpoint = status.base_url();
    if p.route || p.use_route {
        let mut rv = RouteVars::new(&name, &namespace, manifests::seldon_service_name(&name, &vars.predictor));
        rv.labels = BTreeMap::new();
        let route_yaml = manifests::route_yaml(&cx.catalog, &rv)?;
        let route_obj: Value = crate::spec::yaml::from_str(&route_yaml)
            .map_err(|e| DeployError::Rendered { what: "Route", message: e.to_string() })?;
        seldon::apply(&client, &namespace, &route_resource(), &name, &route_obj, FIELD_MANAGER)
            .await
            .map_err(api_err("apply", "Route", &name))?;
        if p.use_route {
            let remaining = timeout.saturating_sub(started.elapsed());
            endpoint = Some(tokio::select! {
                _ = cx.cancel.cancelled() => return Err(DeployError::Cancelled { namespace, name }),
                r = tokio::time::timeout(remaining, seldon::await_route(&client, &namespace, &name)) => match r {
                    Ok(r) => r.map_err(|e| wait_error(e, &namespace, &name))?,
                    Err(_) => return Err(DeployError::RouteTimeout {
                        namespace, name, waited: humantime::format_duration(timeout).to_string(),
                    }),
                },
            });
        }
    }
    // A real operator always publishes an address; fall back to the Service DNS name.
    let endpoint = endpoint.unwrap_or_else(|| {
        format!("http://{}.{namespace}.svc.cluster.local:8000", manifests::seldon_service_name(&name, &vars.predictor))
    });
    tracing::info!(namespace = %namespace, sdep = %name, %endpoint, digest = %digest, "SeldonDeployment serving");
    Ok(Output { endpoint, deployed_digest: digest, deployment_name: name })
}

fn wait_error(e: seldon::WaitError, namespace: &str, name: &str) -> DeployError {
    match e {
        seldon::WaitError::Failed { description } => {
            DeployError::Failed { namespace: namespace.to_string(), name: name.to_string(), description }
        }
        seldon::WaitError::Watch(w) => DeployError::Api {
            verb: "watch",
            resource: w.resource,
            namespace: namespace.to_string(),
            name: w.name,
            source: Box::new(w.source),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tags_are_refused_digests_accepted() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert!(check_image(&format!("registry.example.com/ns/weather@{digest}")).is_ok());
        assert!(matches!(check_image("registry.example.com/ns/weather:latest"), Err(DeployError::NotPinned { .. })));
        assert!(matches!(check_image("weather"), Err(DeployError::BadImage { .. })));
    }

    #[test]
    fn timeout_defaults_to_ten_minutes_and_rejects_nonsense() {
        assert_eq!(parse_timeout(&Params::default()).unwrap(), DEFAULT_TIMEOUT);
        let p = Params { timeout: Some("soon".into()), ..Default::default() };
        assert!(matches!(parse_timeout(&p), Err(DeployError::BadTimeout { .. })));
    }

    /// `validate` is what `modelship validate` shows: an undeclared
    /// environment, a tag, and no image source at all are each reported.
    #[test]
    fn validate_reports_environment_tag_and_missing_image() {
        let pipeline: crate::spec::Pipeline = crate::spec::yaml::from_str(
            "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {name: weather}
spec:
  model: {name: weather, source: 'file://model'}
  environments: {dev: {namespace: models-dev}}
  stages:
    - {name: deploy, uses: seldon-deploy, with: {environment: dev}}
",
        )
        .unwrap();
        let catalog = crate::catalog::Catalog::embedded();
        let cx = ValidateCx { pipeline: &pipeline, stage: &pipeline.spec.stages[0], index: 0, catalog: &catalog };
        let p =
            Params { environment: "prod".into(), image: Some("r.example.com/w:latest".into()), ..Default::default() };
        let paths: Vec<String> = SeldonDeploy::validate(&p, &cx).into_iter().map(|p| p.path).collect();
        assert_eq!(paths, ["environment", "image"]);
        let p = Params { environment: "dev".into(), ..Default::default() };
        let problems = SeldonDeploy::validate(&p, &cx);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("openshift-build"), "{problems:?}");
    }

    #[test]
    fn misspelt_param_is_rejected() {
        let with = json!({"environment": "dev", "replica": 2});
        let e = super::super::kind::parse_params::<SeldonDeploy>(with.as_object().unwrap()).unwrap_err();
        assert!(e.message.contains("unknown field `replica`"), "{e:?}");
    }
}
