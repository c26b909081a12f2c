//! What the `openshift-build` tests (openshift_build, faults) run the stage
//! on: the weather pipeline's render and build stages, the weather fixture
//! rendered into a build context, and that context as render's outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modelship::catalog::Catalog;
use modelship::spec::Pipeline;
use modelship::stages::Outputs;
use modelship::stages::render::{self, Params as RenderParams, RenderInput};
use serde_json::json;

/// The dev environment's namespace.
pub const NS: &str = "models-dev";

/// `weather` with environment `dev` (namespace [`NS`]) and the stages
/// `render` (`modelClass: MyModel`) and `build` (`openshift-build` on dev).
pub fn pipeline() -> Pipeline {
    modelship::spec::yaml::from_str(&format!(
        "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{name: weather}}
spec:
  model: {{name: weather, source: 'file://model'}}
  environments: {{dev: {{namespace: {NS}}}}}
  stages:
    - {{name: render, uses: render, with: {{modelClass: MyModel}}}}
    - {{name: build, uses: openshift-build, with: {{environment: dev}}}}
"
    ))
    .unwrap()
}

/// `fixtures/weather-model` rendered with `modelClass: MyModel` into
/// `root/context`: the context directory and its digest.
pub fn weather_context(root: &Path) -> (PathBuf, String) {
    let input = RenderInput {
        params: RenderParams { model_class: "MyModel".into(), ..RenderParams::default() },
        model_name: "weather".into(),
        model_dir: super::repo().join("fixtures/weather-model"),
        model_digest: None,
        link_model_files: false,
    };
    let rendered = render::render_context(&Catalog::embedded(), &input, &root.join("context")).unwrap();
    (rendered.dir, rendered.digest)
}

/// The render stage's outputs for a context directory and its digest.
pub fn render_outputs(context: &Path, digest: &str) -> Outputs {
    BTreeMap::from([
        ("contextDir".to_string(), json!(context.display().to_string())),
        ("contextDigest".to_string(), json!(digest)),
    ])
}
