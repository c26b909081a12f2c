//! Stage `sign`: sign the digest the prediction check passed, in cosign's
//! key-based format, and attach an in-toto attestation of what was fetched,
//! built and checked (see [`crate::signing`]). The key is
//! `spec.signing.key`; `promote` carries both to the target and, when the
//! target has `verify`, checks them first.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fetch_model::FetchModel;
use super::openshift_build::OpenshiftBuild;
use super::prediction_check::PredictionCheck;
use super::render::Render;
use super::{Contract, Problem, Stage, StageContext, StageError, StageErrorKind, ValidateCx};
use crate::error::HasExitClass;
use crate::registry::{AuthStore, ImageRef};
use crate::signing::SigningError;
use crate::signing::source::{SecretScope, private_key};
use crate::spec::KeyRef;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Where the image is (and the key Secret); default: the
    /// `openshift-build` stage's environment, else the first environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Image to sign (`HOST/NS/NAME[@DIGEST]`); default: the latest
    /// `openshift-build`'s `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Default: the latest `openshift-build`'s `imageDigest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

pub struct Sign;

fn key_text(key: &KeyRef, namespace: &str) -> String {
    match key {
        KeyRef::Secret(name) => format!("Secret {namespace}/{name}"),
        KeyRef::File(path) => format!("file {path}"),
    }
}

fn stage_error(e: SigningError) -> StageError {
    let transient = e.is_transient();
    let bad = e.exit_class() == crate::ExitClass::BadInput;
    let mut err = StageError::failed(e);
    if bad {
        err.kind = StageErrorKind::BadInput;
    }
    if transient {
        err = err.retryable();
    }
    err
}

/// The environment the image was built in: `with.environment`, else the
/// linked build's, else the pipeline's first.
fn environment(params: &Params, build_env: Option<String>, pipeline: &crate::spec::Pipeline) -> Option<String> {
    params.environment.clone().or(build_env).or_else(|| pipeline.spec.environments.keys().next().cloned())
}

/// What sign hands later stages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Output {
    pub image: String,
    pub digest: String,
    pub signature_digest: String,
    pub attestation_digest: String,
}

impl Contract for Sign {
    const KIND: &'static str = "sign";
    const OUTPUTS: &'static [&'static str] = &["image", "digest", "signatureDigest", "attestationDigest"];
    type Params = Params;
    type Output = Output;

    fn validate(params: &Params, cx: &ValidateCx<'_>) -> Vec<Problem> {
        let mut out = Vec::new();
        if cx.pipeline.spec.signing.is_none() {
            out.push(Problem::new("", "stage `sign` needs `spec.signing.key`").with_hint(
                "e.g. `signing: { key: { secret: cosign } }`; `modelship keys generate --out DIR` makes a pair",
            ));
        }
        if !cx.may_link::<PredictionCheck>() {
            out.push(Problem::new(
                "",
                "stage `sign` signs the digest a `prediction-check` passed: put it after a `prediction-check` stage",
            ));
        }
        if let Some(env) = &params.environment {
            out.extend(cx.environment_problem("environment", env));
        }
        if let Some(d) = &params.digest
            && !crate::template::is_template(d)
            && let Err(m) = crate::registry::validate_digest(d)
        {
            out.push(Problem::new("digest", m));
        }
        out
    }

    fn needs_cluster(_params: &Params, _cx: &ValidateCx<'_>) -> bool {
        true
    }

    fn plan(params: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        let build_env = cx
            .linked::<OpenshiftBuild>()
            .and_then(|s| s.with.get("environment"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let env = environment(params, build_env, cx.pipeline).unwrap_or_default();
        let ns = cx.pipeline.spec.environments.get(&env).map(|e| e.namespace.clone()).unwrap_or_default();
        let key = cx.pipeline.spec.signing.as_ref().map_or("(no key)".to_string(), |s| key_text(&s.key, &ns));
        let model = &cx.pipeline.spec.model.name;
        vec![
            format!("sign {model}@<checked digest> in `{env}` with {key}: push sha256-<hex>.sig (cosign simple signing)"),
            "attach sha256-<hex>.att: in-toto Statement v1 (model source and digest, MLflow version or DVC commit, build, pipeline, run, checks) in a DSSE envelope".into(),
        ]
    }
}

/// The effectful half, beside the contract above.
impl Stage for Sign {
    async fn run(params: Params, cx: &StageContext) -> Result<Output, StageError> {
        let model = cx.pipeline.spec.model.name.clone();
        let signing = cx
            .pipeline
            .spec
            .signing
            .clone()
            .ok_or_else(|| StageError::bad_input("stage `sign` needs `spec.signing.key`"))?;
        let build = cx.input::<OpenshiftBuild>()?.unwrap_or_default();
        let nonempty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        let digest = params.digest.clone().or_else(|| nonempty(&build.image_digest)).ok_or_else(|| {
            StageError::bad_input("no digest to sign: set `with.digest` or run an `openshift-build` stage first")
        })?;
        crate::registry::validate_digest(&digest)
            .map_err(|m| StageError::bad_input(format!("digest `{digest}`: {m}")))?;

        // Only what passed its checks is signed.
        let check = cx.input::<PredictionCheck>()?.unwrap_or_default();
        if !check.passed {
            return Err(StageError::msg(format!(
                "refused to sign {digest}: no passed prediction check ran before this stage"
            )));
        }

        let build_env = cx.input_params::<OpenshiftBuild>()?.and_then(|p| p.environment);
        let env_name = environment(&params, build_env, &cx.pipeline)
            .ok_or_else(|| StageError::bad_input("no environment to sign in: set `with.environment`"))?;
        let env = crate::promotion::resolve_env(&cx.clusters, &env_name, &model).await.map_err(|e| {
            let bad = e.exit_class() == crate::ExitClass::BadInput;
            let mut err = StageError::failed(e);
            if bad {
                err.kind = StageErrorKind::BadInput;
            }
            err
        })?;
        let image = params.image.clone().or_else(|| nonempty(&build.image)).unwrap_or_else(|| env.repository(&model));
        let image = ImageRef::parse(&image).map_err(|e| StageError::bad_input(e.to_string()))?.with_digest(&digest);

        let scope = SecretScope { client: &env.client, namespace: &env.namespace, env: &env_name };
        let key = private_key(&signing.key, Some(scope), &cx.pipeline_dir).await.map_err(stage_error)?;

        let auth = AuthStore::load(None).map_err(|e| StageError::bad_input(e.to_string()))?;
        let client = crate::promotion::registry_client(&auth, &env, &image)
            .await
            .map_err(|e| StageError::failed(e).retryable())?;
        let predicate = predicate(cx, &digest, &build, &check).await?;
        let docker_reference = format!("{}/{}", image.registry, image.repository);
        let signed = tokio::select! {
            r = crate::signing::sign_image(&client, &image.repository, &docker_reference, &digest, &key, predicate) => r.map_err(stage_error)?,
            _ = cx.cancel.cancelled() => return Err(StageError::cancelled()),
        };
        tracing::info!(
            image = %image, signature = %signed.signature, attestation = %signed.attestation,
            "signed and attested"
        );
        Ok(Output {
            image: image.to_string(),
            digest,
            signature_digest: signed.signature,
            attestation_digest: signed.attestation,
        })
    }
}

/// Each manifest entry with its source object's URL, version id and ETag.
fn objects(manifest: Value, sources: Value) -> Value {
    let Value::Array(mut entries) = manifest else { return manifest };
    let sources = sources.as_array().cloned().unwrap_or_default();
    for e in &mut entries {
        let Some(src) = sources.iter().find(|s| s.get("path") == e.get("path")) else { continue };
        if let (Value::Object(e), Value::Object(src)) = (e, src) {
            for key in ["url", "versionId", "etag"] {
                if let Some(v) = src.get(key) {
                    let v = if key == "url" {
                        json!(crate::secret::mask(v.as_str().unwrap_or_default()))
                    } else {
                        v.clone()
                    };
                    e.insert(key.into(), v);
                }
            }
        }
    }
    Value::Array(entries)
}

/// modelship's provenance predicate, from what earlier stages output.
async fn predicate(
    cx: &StageContext,
    digest: &str,
    build: &super::openshift_build::Output,
    check: &super::prediction_check::Output,
) -> Result<Value, StageError> {
    let spec = &cx.pipeline.spec;
    let fetched = cx.input::<FetchModel>()?;
    let run = cx.state.get_run(&cx.run_key).await.map_err(|e| StageError::failed(e).retryable())?;
    let text = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    let context_digest = match cx.input::<Render>()? {
        Some(r) if !r.context_digest.is_empty() => json!(r.context_digest),
        _ => cx.input_params::<OpenshiftBuild>()?.and_then(|p| p.context_digest).map_or(Value::Null, Value::String),
    };
    let (content_digest, objects) = match &fetched {
        Some(f) => (
            text(&f.content_digest),
            objects(
                serde_json::to_value(&f.manifest).unwrap_or_default(),
                serde_json::to_value(&f.objects).unwrap_or_default(),
            ),
        ),
        None => (Value::Null, Value::Null),
    };
    // Which registry version (MLflow) or Git commit and .dvc entry (DVC) it is.
    let mlflow = fetched.as_ref().and_then(|f| f.mlflow.as_ref()).map_or(Value::Null, |m| json!(m));
    let dvc = fetched.as_ref().and_then(|f| f.dvc.as_ref()).map_or(Value::Null, |d| json!(d));
    Ok(json!({
        "model": {
            "name": spec.model.name,
            "source": crate::secret::mask(&spec.model.source),
            "versionId": spec.model.version_id,
            "contentDigest": content_digest,
            "objects": objects,
            "mlflow": mlflow,
            "dvc": dvc,
        },
        "image": { "digest": digest },
        "build": {
            "name": text(&build.build_name),
            "contextDigest": context_digest,
        },
        "pipeline": {
            "name": cx.pipeline.metadata.name,
            "digest": run.map(|r| r.pipeline_digest),
        },
        "runId": cx.run_id,
        "checks": check.report.clone().unwrap_or(Value::Null),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::spec::Pipeline;

    fn pipeline(signing: &str, stages: &str) -> Pipeline {
        crate::spec::yaml::from_str(&format!(
            r#"
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{ name: weather }}
spec:
  model: {{ name: weather, source: "file://m" }}
{signing}
  environments:
    dev: {{ namespace: models-dev }}
  stages:
{stages}
"#
        ))
        .unwrap()
    }

    fn problems(p: &Pipeline, with: Value) -> Vec<String> {
        let catalog = Catalog::embedded();
        let index = p.spec.stages.iter().position(|s| s.uses == "sign").unwrap();
        let cx = ValidateCx { pipeline: p, stage: &p.spec.stages[index], index, catalog: &catalog };
        let params: Params = serde_json::from_value(with).unwrap();
        Sign::validate(&params, &cx).into_iter().map(|p| format!("{}: {}", p.path, p.message)).collect()
    }

    #[test]
    fn needs_a_key_and_a_prediction_check_before_it() {
        let check = "    - { name: check, uses: prediction-check, with: { endpoint: 'http://x', cases: [{ request: {}, expect: { a: b } }] } }";
        let sign = "    - { name: sign, uses: sign }";
        let ok = pipeline("  signing: { key: { secret: cosign } }", &format!("{check}\n{sign}"));
        assert!(problems(&ok, json!({})).is_empty());
        let got =
            problems(&pipeline("", &format!("{sign}\n{check}")), json!({ "environment": "qa", "digest": "sha256:1" }));
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].contains("needs `spec.signing.key`"), "{got:?}");
        assert!(got[1].contains("after a `prediction-check`"), "{got:?}");
        assert!(got[2].starts_with("environment:"), "{got:?}");
        assert!(got[3].starts_with("digest:"), "{got:?}");
    }

    #[test]
    fn a_key_is_a_secret_or_a_file_never_both() {
        let p = pipeline("  signing: { key: { file: keys/cosign.key } }", "    - { name: sign, uses: sign }");
        assert_eq!(p.spec.signing.unwrap().key, KeyRef::File("keys/cosign.key".into()));
        for bad in ["{ secret: a, file: b }", "{}", "{ secrit: a }"] {
            let err = crate::spec::yaml::from_str::<Pipeline>(&format!(
                "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: {{ name: w }}\nspec:\n  model: {{ name: w, source: 'file://m' }}\n  signing: {{ key: {bad} }}\n  environments: {{ dev: {{ namespace: d }} }}\n  stages: []\n"
            ))
            .unwrap_err();
            assert!(err.to_string().contains("spec.signing"), "{bad}: {err}");
        }
    }

    #[test]
    fn plan_names_the_key_never_its_contents() {
        let p = pipeline("  signing: { key: { secret: cosign } }", "    - { name: sign, uses: sign }");
        let catalog = Catalog::embedded();
        let cx = ValidateCx { pipeline: &p, stage: &p.spec.stages[0], index: 0, catalog: &catalog };
        let plan = Sign::plan(&Params::default(), &cx).join("\n");
        assert!(plan.contains("in `dev` with Secret models-dev/cosign"), "{plan}");
        assert!(plan.contains("sha256-<hex>.att"), "{plan}");
    }
}
