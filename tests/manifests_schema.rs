//! The manifests the render stage's templates produce, validated against the
//! upstream schemas in fixtures/reference: the strict OpenShift 4.15 schemas
//! (a misspelt field fails) and the SeldonDeployment v1 CRD schema of
//! seldon-core 1.17.1.

use std::path::{Path, PathBuf};

use modelship::catalog::Catalog;
use modelship::manifests::{self, BuildVars, DeployVars, PortRef, RouteVars};
use serde_json::{Value, json};

/// A file of the upstream reference schemas kept in `fixtures/reference/`
/// (its README names each file's upstream source and licence).
fn reference(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/reference").join(rel)
}

fn schema(rel: &str) -> jsonschema::Validator {
    let path = reference(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft7::new(&schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(text: &str) -> Value {
    modelship::spec::yaml::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

/// Every schema error, one per line, or "" when valid.
fn errors(validator: &jsonschema::Validator, instance: &Value) -> String {
    validator.iter_errors(instance).map(|e| format!("{}: {e}\n", e.instance_path())).collect()
}

#[track_caller]
fn assert_valid(validator: &jsonschema::Validator, text: &str) {
    let errs = errors(validator, &yaml(text));
    assert!(errs.is_empty(), "schema errors:\n{errs}\nin:\n{text}");
}

const BUILDCONFIG: &str = "openshift/schemas-4.15-strict/buildconfig_build.openshift.io_v1.json";
const IMAGESTREAM: &str = "openshift/schemas-4.15-strict/imagestream_image.openshift.io_v1.json";
const ROUTE: &str = "openshift/schemas-4.15-strict/route_route.openshift.io_v1.json";
const SELDON: &str = "seldon/seldondeployment-v1.schema.json";

fn digest_image() -> String {
    format!("image-registry.openshift-image-registry.svc:5000/models-dev/weather@sha256:{}", "0".repeat(64))
}

fn full_build_vars() -> BuildVars {
    let mut v = BuildVars::new("weather", "models-dev");
    v.tag = "v1.2".into();
    v.labels.insert("modelship.io/model".into(), "weather".into());
    v.annotations.insert("modelship.io/context-digest".into(), format!("sha256:{}", "1".repeat(64)));
    v.annotations.insert("modelship.io/run".into(), "run-20260101-abc".into());
    v.image_labels.insert("org.opencontainers.image.created".into(), "2026-01-01T00:00:00Z".into());
    v
}

#[test]
fn buildconfig_matches_the_strict_openshift_schema() {
    let v = schema(BUILDCONFIG);
    let cat = Catalog::embedded();
    assert_valid(&v, &manifests::build_config_yaml(&cat, &BuildVars::new("weather", "models-dev")).unwrap());
    let text = manifests::build_config_yaml(&cat, &full_build_vars()).unwrap();
    assert_valid(&v, &text);
    let obj = yaml(&text);
    assert_eq!(obj["spec"]["source"]["type"], "Binary");
    assert_eq!(obj["spec"]["strategy"]["type"], "Docker");
    assert_eq!(obj["spec"]["output"]["to"], json!({"kind": "ImageStreamTag", "name": "weather:v1.2"}));
    assert_eq!(
        obj["spec"]["output"]["imageLabels"],
        json!([{"name": "org.opencontainers.image.created", "value": "2026-01-01T00:00:00Z"}])
    );
}

#[test]
fn imagestream_matches_the_strict_openshift_schema() {
    let v = schema(IMAGESTREAM);
    let cat = Catalog::embedded();
    assert_valid(&v, &manifests::image_stream_yaml(&cat, &BuildVars::new("weather", "models-dev")).unwrap());
    assert_valid(&v, &manifests::image_stream_yaml(&cat, &full_build_vars()).unwrap());
}

#[test]
fn seldondeployment_matches_the_seldon_v1_schema() {
    let v = schema(SELDON);
    let cat = Catalog::embedded();
    let minimal =
        manifests::seldon_deployment_yaml(&cat, &DeployVars::new("weather", "models-dev", digest_image())).unwrap();
    assert_valid(&v, &minimal);
    let mut full = DeployVars::new("weather", "models-dev", digest_image());
    full.predictor = "main".into();
    full.container = "classifier".into();
    full.replicas = 3;
    full.env.insert("SELDON_LOG_LEVEL".into(), "DEBUG".into());
    full.env.insert("GUNICORN_WORKERS".into(), "2".into());
    full.resources.requests.insert("cpu".into(), "250m".into());
    full.resources.limits.insert("memory".into(), "1Gi".into());
    full.labels.insert("modelship.io/model".into(), "weather".into());
    full.annotations.insert("modelship.io/image-digest".into(), format!("sha256:{}", "0".repeat(64)));
    let text = manifests::seldon_deployment_yaml(&cat, &full).unwrap();
    assert_valid(&v, &text);
    let obj = yaml(&text);
    let predictor = &obj["spec"]["predictors"][0];
    assert_eq!(predictor["graph"]["type"], "MODEL");
    assert_eq!(predictor["graph"]["endpoint"]["type"], "REST");
    let container = &predictor["componentSpecs"][0]["spec"]["containers"][0];
    assert_eq!(container["name"], predictor["graph"]["name"], "container and graph node must match");
    assert_eq!(container["image"], digest_image());
    assert_eq!(
        container["env"],
        json!([{"name": "GUNICORN_WORKERS", "value": "2"}, {"name": "SELDON_LOG_LEVEL", "value": "DEBUG"}])
    );
    // Only limits: the resources block still has the right shape.
    let mut limits_only = DeployVars::new("weather", "models-dev", digest_image());
    limits_only.resources.limits.insert("cpu".into(), "1".into());
    assert_valid(&v, &manifests::seldon_deployment_yaml(&cat, &limits_only).unwrap());
}

#[test]
fn route_matches_the_strict_openshift_schema() {
    let v = schema(ROUTE);
    let cat = Catalog::embedded();
    let service = manifests::seldon_service_name("weather", "default");
    assert_valid(&v, &manifests::route_yaml(&cat, &RouteVars::new("weather", "models-dev", &service)).unwrap());
    let mut full = RouteVars::new("weather", "models-dev", &service);
    full.host = Some("weather-models-dev.apps.cluster.example.com".into());
    full.tls = true;
    full.target_port = PortRef::Number(8000);
    full.labels.insert("modelship.io/model".into(), "weather".into());
    assert_valid(&v, &manifests::route_yaml(&cat, &full).unwrap());
}

/// Guards the test itself: the strict schemas must reject what a typo in a
/// template would produce, or the checks above prove nothing.
#[test]
fn schemas_reject_misspelt_and_mistyped_fields() {
    let cat = Catalog::embedded();
    let mut bc = yaml(&manifests::build_config_yaml(&cat, &BuildVars::new("weather", "models-dev")).unwrap());
    bc["spec"]["strategy"]["dockerStrategy"]["dockerFilePath"] = json!("Dockerfile");
    assert!(errors(&schema(BUILDCONFIG), &bc).contains("dockerFilePath"));

    let mut route =
        yaml(&manifests::route_yaml(&cat, &RouteVars::new("weather", "models-dev", "weather-default")).unwrap());
    route["spec"]["to"]["weight"] = json!("heavy");
    assert!(!errors(&schema(ROUTE), &route).is_empty());

    let mut sdep = yaml(
        &manifests::seldon_deployment_yaml(&cat, &DeployVars::new("weather", "models-dev", digest_image())).unwrap(),
    );
    sdep["spec"]["predictors"][0].as_object_mut().unwrap().remove("graph");
    assert!(errors(&schema(SELDON), &sdep).contains("graph"));
}
