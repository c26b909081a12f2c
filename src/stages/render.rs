//! Stage `render`: turns a model directory into an OpenShift Docker build
//! context that serves the model with `seldon-core-microservice`:
//! `Dockerfile`, `requirements.txt`, the model class (the practitioner's own,
//! or a wrapper generated for the model's format) and the model files.
//!
//! Every template comes from the stage catalog (`stages/render/`), so a
//! pipeline's `templates:` directory overrides any of them. [`manifests`]
//! renders the BuildConfig, ImageStream, SeldonDeployment and Route that the
//! `openshift-build` and `seldon-deploy` stages apply.

mod tree;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fetch_model::FetchModel;
use super::{Contract, Problem, Stage, StageContext, StageError, StageErrorKind, ValidateCx};
use crate::catalog::{Catalog, CatalogError};
use crate::error::{ExitClass, HasExitClass};
use crate::template::safe::{self, Slot, display_value};
use crate::template::{TemplateError, is_template};

pub const DEFAULT_MODEL_CLASS: &str = "MyModel";
pub const DEFAULT_BASE_IMAGE: &str = "registry.access.redhat.com/ubi9/python-311";
/// The last Apache-2.0 release (1.18 is under the Business Source License).
pub const DEFAULT_SELDON_CORE_VERSION: &str = "1.17.1";
use crate::manifests::{GRPC_PORT, HTTP_PORT, METRICS_PORT};

/// Pins added for a generated wrapper unless the model's requirements.txt or
/// `requirements:` name the package. Versions with wheels for Python 3.11
/// that accept seldon-core 1.17's `numpy<2`.
const SKLEARN_PINS: &[&str] = &["scikit-learn==1.5.2", "joblib==1.4.2"];
/// The newest TensorFlow that co-installs with seldon-core 1.17.1
/// (`numpy<2`, `protobuf<4`): 2.20 needs protobuf 5. Keras 3 is pinned with it
/// because a `.keras` file is read by the Keras that wrote it (see the README).
const KERAS_PINS: &[&str] = &["tensorflow-cpu==2.19.1", "keras==3.15.1"];

/// Packages whose pins the stage owns: seldon-core comes from
/// `seldonCoreVersion`, setuptools stays below 70 for gunicorn's `pkg_resources`.
const MANAGED_PACKAGES: &[&str] = &["seldon-core", "setuptools"];

/// Files the stage writes at the context root.
const DOCKERFILE: &str = "Dockerfile";
const REQUIREMENTS: &str = "requirements.txt";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// The user's class if present, else detected from the model files.
    #[default]
    Auto,
    /// The model directory must hold the `modelClass` class.
    Python,
    /// `.joblib` / `.pkl` / `.pickle`, loaded with joblib.
    Sklearn,
    /// A JSON model (`thresholds` or `linear`), plain Python.
    Json,
    /// `.keras` / `.h5`, loaded with Keras.
    Keras,
}

impl ModelFormat {
    fn name(self) -> &'static str {
        match self {
            ModelFormat::Auto => "auto",
            ModelFormat::Python => "python",
            ModelFormat::Sklearn => "sklearn",
            ModelFormat::Json => "json",
            ModelFormat::Keras => "keras",
        }
    }

    fn extensions(self) -> &'static [&'static str] {
        match self {
            ModelFormat::Sklearn => &["joblib", "pkl", "pickle"],
            ModelFormat::Json => &["json"],
            ModelFormat::Keras => &["h5", "keras"],
            ModelFormat::Auto | ModelFormat::Python => &[],
        }
    }

    const WRAPPED: [ModelFormat; 3] = [ModelFormat::Sklearn, ModelFormat::Json, ModelFormat::Keras];
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictMethod {
    #[default]
    Predict,
    PredictProba,
}

impl PredictMethod {
    fn name(self) -> &'static str {
        match self {
            PredictMethod::Predict => "predict",
            PredictMethod::PredictProba => "predict_proba",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// The class seldon-core serves (`MODEL_NAME`): `MyModel` or `module.MyModel`.
    #[serde(default = "default_model_class")]
    pub model_class: String,
    #[serde(default = "default_base_image")]
    pub base_image: String,
    #[serde(default = "default_seldon_core_version")]
    pub seldon_core_version: String,
    /// Default: the `modelDir` output of the latest earlier `fetch-model`.
    /// Relative paths resolve against the pipeline file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_dir: Option<String>,
    #[serde(default)]
    pub model_format: ModelFormat,
    /// The file a generated wrapper loads, relative to the model directory;
    /// needed only when several files of the format are present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_file: Option<String>,
    /// scikit-learn wrapper: `predict` (default) or `predict_proba`.
    #[serde(default)]
    pub predict_method: PredictMethod,
    /// Extra requirements.txt lines; they replace same-named pins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requirements: Vec<String>,
    /// Extra `ENV` in the image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// OCI `org.opencontainers.image.source`; default: the run label
    /// `repository` (or `source`), else the pipeline's `spec.model.source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// OCI `org.opencontainers.image.revision`; default: the run label `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

fn default_model_class() -> String {
    DEFAULT_MODEL_CLASS.into()
}
fn default_base_image() -> String {
    DEFAULT_BASE_IMAGE.into()
}
fn default_seldon_core_version() -> String {
    DEFAULT_SELDON_CORE_VERSION.into()
}

impl Default for Params {
    fn default() -> Self {
        Params {
            model_class: default_model_class(),
            base_image: default_base_image(),
            seldon_core_version: default_seldon_core_version(),
            model_dir: None,
            model_format: ModelFormat::Auto,
            model_file: None,
            predict_method: PredictMethod::Predict,
            requirements: Vec::new(),
            env: BTreeMap::new(),
            source: None,
            revision: None,
        }
    }
}

/// Everything [`render_context`] needs, resolved: no engine, no cluster.
#[derive(Debug, Clone)]
pub struct RenderInput {
    pub params: Params,
    /// `spec.model.name`.
    pub model_name: String,
    pub model_dir: PathBuf,
    /// fetch-model's `contentDigest`; computed from `model_dir` when absent.
    pub model_digest: Option<String>,
    /// Hard-link model files into the context instead of copying them. Only
    /// for a directory the run owns (fetch-model's output, replaced by rename,
    /// never edited in place): a link to a file someone edits later would
    /// change the context behind its digest.
    pub link_model_files: bool,
}

/// How the served class came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ModelClassSource {
    /// The practitioner's class, copied as is.
    User { file: String },
    /// A wrapper generated from `render/wrappers/<format>.py.hbs`.
    Generated { format: &'static str, file: String, model_file: String },
}

impl std::fmt::Display for ModelClassSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelClassSource::User { file } => write!(f, "{file} (yours)"),
            ModelClassSource::Generated { format, file, model_file } => {
                write!(f, "{file} (generated {format} wrapper for {model_file})")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedContext {
    pub dir: PathBuf,
    /// Relative paths, sorted.
    pub files: Vec<String>,
    /// `sha256:` over sorted paths, normalised modes and contents.
    pub digest: String,
    pub model_digest: String,
    pub class: ModelClassSource,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("with.{param}: {reason}")]
    InvalidParam { param: String, reason: String },
    #[error("spec.model.name `{name}` {reason}")]
    InvalidModelName { name: String, reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error(
        "no model directory: set `modelDir`, or run a `fetch-model` stage before this one (its `modelDir` output is the default)"
    )]
    NoModelDir,
    #[error("model directory {path} does not exist or is not a directory")]
    ModelDirMissing { path: PathBuf },
    #[error(
        "model class `{class}` is not in {dir} (no {file} defining `class {short}`) and no known model format to wrap: looked for {looked}"
    )]
    NoModelClass { class: String, short: String, file: String, dir: PathBuf, looked: String },
    #[error("with.modelFormat is `python` but {dir} has no {file} defining `class {short}`")]
    PythonClassMissing { short: String, file: String, dir: PathBuf },
    #[error(
        "{dir}/{file} is not used as the model class (it does not define `class {short}`, or modelFormat asks for a generated wrapper) and a generated wrapper would overwrite it: rename the file or change modelClass"
    )]
    ClassFileClash { short: String, file: String, dir: PathBuf },
    #[error("a generated {format} wrapper needs a plain class name in modelClass, not the dotted `{class}`")]
    DottedWrapperClass { format: &'static str, class: String },
    #[error("{dir} holds several model formats ({found}); set with.modelFormat to pick one")]
    AmbiguousFormat { dir: PathBuf, found: String },
    #[error("{dir} holds several {format} model files ({candidates}); set with.modelFile to pick one")]
    AmbiguousModelFile { dir: PathBuf, format: &'static str, candidates: String },
    #[error("with.modelFile: {file} not found in {dir}")]
    ModelFileMissing { file: String, dir: PathBuf },
    #[error("{dir} has no {format} model file (looked for {looked})")]
    NoModelFile { dir: PathBuf, format: &'static str, looked: String },
    #[error("{file}:{line}: {reason}")]
    BadRequirement { file: PathBuf, line: usize, reason: String },
    #[error("{path}: symlinks and special files cannot go into a build context")]
    SpecialFile { path: PathBuf },
    #[error("{path}: path is not valid UTF-8")]
    NonUtf8Path { path: PathBuf },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HasExitClass for RenderError {
    fn exit_class(&self) -> ExitClass {
        match self {
            RenderError::Io { .. } | RenderError::Cancelled => ExitClass::Failed,
            _ => ExitClass::BadInput,
        }
    }
}

impl From<RenderError> for StageError {
    fn from(e: RenderError) -> Self {
        let kind = match e.exit_class() {
            ExitClass::BadInput => StageErrorKind::BadInput,
            _ => StageErrorKind::Failed,
        };
        StageError { kind, ..StageError::failed(e) }
    }
}

/// Problems with the parameter values themselves: anything that could change
/// the structure of the Dockerfile or requirements.txt is refused, naming the
/// parameter. Values still holding `{{...}}` are skipped when `skip_templated`
/// (the engine renders them before `run`, which checks again).
pub fn param_problems(p: &Params, skip_templated: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut check = |path: String, value: &str, slot: Slot| {
        if skip_templated && is_template(value) {
            return;
        }
        if let Some(reason) = safe::refusal(value, slot) {
            out.push(Problem::new(path, format!("`{}` {reason}", display_value(value))));
        }
    };
    check("modelClass".into(), &p.model_class, Slot::PythonClass);
    check("baseImage".into(), &p.base_image, Slot::ImageRef);
    check("seldonCoreVersion".into(), &p.seldon_core_version, Slot::Version);
    if let Some(d) = &p.model_dir {
        check("modelDir".into(), d, Slot::QuotedText);
    }
    if let Some(f) = &p.model_file {
        check("modelFile".into(), f, Slot::RelPath);
    }
    for (i, r) in p.requirements.iter().enumerate() {
        check(format!("requirements[{i}]"), r, Slot::Requirement);
    }
    for (k, v) in &p.env {
        check(format!("env.{k}"), k, Slot::EnvName);
        check(format!("env.{k}"), v, Slot::QuotedText);
    }
    if let Some(s) = &p.source {
        check("source".into(), s, Slot::Url);
    }
    if let Some(r) = &p.revision {
        check("revision".into(), r, Slot::Revision);
    }
    for (i, r) in p.requirements.iter().enumerate() {
        if let Some(name) = requirement_name(r)
            && MANAGED_PACKAGES.contains(&name.as_str())
        {
            let hint = if name == "seldon-core" {
                "set with.seldonCoreVersion instead"
            } else {
                "the stage pins setuptools<70 (seldon-core's gunicorn imports pkg_resources)"
            };
            out.push(
                Problem::new(format!("requirements[{i}]"), format!("`{name}` is pinned by the stage")).with_hint(hint),
            );
        }
    }
    if matches!(p.model_format, ModelFormat::Python) && p.model_file.is_some() {
        out.push(Problem::new(
            "modelFile",
            "modelFile is used only by generated wrappers, not with modelFormat: python",
        ));
    }
    out
}

/// The PEP 503 normalised project name of a requirements.txt line.
fn requirement_name(line: &str) -> Option<String> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)").expect("static regex"));
    let name = re.captures(line)?.get(1)?.as_str();
    static SEP: OnceLock<Regex> = OnceLock::new();
    let sep = SEP.get_or_init(|| Regex::new(r"[-_.]+").expect("static regex"));
    Some(sep.replace_all(&name.to_ascii_lowercase(), "-").into_owned())
}

/// Distributions that install the same import package: a model's
/// `tensorflow==…` replaces the wrapper's `tensorflow-cpu==…` pin instead of
/// installing both.
fn same_package(name: &str) -> &str {
    match name {
        "tensorflow-cpu" => "tensorflow",
        other => other,
    }
}

/// `module.Class` -> (`module/…/file.py`, `Class`); `Class` -> (`Class.py`, `Class`).
fn class_file(class: &str) -> (String, String) {
    match class.rsplit_once('.') {
        Some((module, short)) => (format!("{}.py", module.replace('.', "/")), short.to_string()),
        None => (format!("{class}.py"), class.to_string()),
    }
}

fn defines_class(path: &Path, short: &str) -> Result<bool, RenderError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Ok(false),
        Err(source) => return Err(RenderError::Io { path: path.to_path_buf(), source }),
    };
    let re = Regex::new(&format!(r"(?m)^class\s+{}\s*[(:]", regex::escape(short))).expect("escaped class name");
    Ok(re.is_match(&text))
}

/// Decide which class is served: the user's, or a wrapper for a detected format.
fn choose_class(p: &Params, dir: &Path, files: &[tree::FileEntry]) -> Result<ModelClassSource, RenderError> {
    let (file, short) = class_file(&p.model_class);
    let present = files.iter().any(|f| f.rel == file);
    let user = present && defines_class(&dir.join(&file), &short)?;
    match p.model_format {
        ModelFormat::Python | ModelFormat::Auto if user => return Ok(ModelClassSource::User { file }),
        ModelFormat::Python => return Err(RenderError::PythonClassMissing { short, file, dir: dir.into() }),
        _ => {}
    }
    if present {
        return Err(RenderError::ClassFileClash { short, file, dir: dir.into() });
    }
    let candidates = |format: ModelFormat| -> Vec<&str> {
        files
            .iter()
            .filter(|f| {
                let ext = f.rel.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
                format.extensions().contains(&ext.as_str())
            })
            .map(|f| f.rel.as_str())
            .collect()
    };
    let format = match p.model_format {
        ModelFormat::Auto => {
            let found: Vec<ModelFormat> =
                ModelFormat::WRAPPED.into_iter().filter(|f| !candidates(*f).is_empty()).collect();
            match found.as_slice() {
                [one] => *one,
                [] => {
                    let looked = ModelFormat::WRAPPED
                        .iter()
                        .flat_map(|f| f.extensions().iter().map(|e| format!("*.{e}")))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(RenderError::NoModelClass {
                        class: p.model_class.clone(),
                        short,
                        file,
                        dir: dir.into(),
                        looked,
                    });
                }
                many => {
                    let found = many.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ");
                    return Err(RenderError::AmbiguousFormat { dir: dir.into(), found });
                }
            }
        }
        f => f,
    };
    if p.model_class.contains('.') {
        return Err(RenderError::DottedWrapperClass { format: format.name(), class: p.model_class.clone() });
    }
    let model_file = match &p.model_file {
        Some(f) => {
            if !files.iter().any(|e| &e.rel == f) {
                return Err(RenderError::ModelFileMissing { file: f.clone(), dir: dir.into() });
            }
            f.clone()
        }
        None => match candidates(format).as_slice() {
            [one] => one.to_string(),
            [] => {
                let looked = format.extensions().iter().map(|e| format!("*.{e}")).collect::<Vec<_>>().join(", ");
                return Err(RenderError::NoModelFile { dir: dir.into(), format: format.name(), looked });
            }
            many => {
                return Err(RenderError::AmbiguousModelFile {
                    dir: dir.into(),
                    format: format.name(),
                    candidates: many.join(", "),
                });
            }
        },
    };
    if let Some(reason) = safe::refusal(&model_file, Slot::RelPath) {
        return Err(RenderError::InvalidParam {
            param: "modelFile".into(),
            reason: format!("`{model_file}` {reason}"),
        });
    }
    Ok(ModelClassSource::Generated { format: format.name(), file, model_file })
}

/// The requirements.txt lines after the two managed pins: format defaults,
/// then the model's own requirements.txt, then `requirements:`; a later line
/// replaces an earlier one naming the same package.
fn merged_requirements(p: &Params, dir: &Path, class: &ModelClassSource) -> Result<Vec<String>, RenderError> {
    let mut lines: Vec<(Option<String>, String)> = Vec::new();
    let mut push = |line: &str| {
        let name = requirement_name(line).map(|n| same_package(&n).to_string());
        if let Some(n) = &name
            && let Some(i) = lines.iter().position(|(m, _)| m.as_deref() == Some(n.as_str()))
        {
            lines.remove(i);
        }
        lines.push((name, line.to_string()));
    };
    if let ModelClassSource::Generated { format, .. } = class {
        let pins: &[&str] = match *format {
            "sklearn" => SKLEARN_PINS,
            "keras" => KERAS_PINS,
            _ => &[],
        };
        pins.iter().for_each(|l| push(l));
    }
    let own = dir.join(REQUIREMENTS);
    if own.is_file() {
        let text = fs::read_to_string(&own).map_err(|source| RenderError::Io { path: own.clone(), source })?;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split_once(" #").map_or(raw, |(l, _)| l).trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(reason) = safe::refusal(line, Slot::Requirement) {
                return Err(RenderError::BadRequirement {
                    file: own,
                    line: i + 1,
                    reason: format!("`{line}` {reason}"),
                });
            }
            match requirement_name(line) {
                Some(n) if MANAGED_PACKAGES.contains(&n.as_str()) => {
                    tracing::warn!(file = %own.display(), line = i + 1, package = %n, "ignoring a pin the render stage manages");
                }
                _ => push(line),
            }
        }
    }
    p.requirements.iter().for_each(|l| push(l));
    Ok(lines.into_iter().map(|(_, l)| l).collect())
}

fn render_file(catalog: &Catalog, file: &str, data: &Value) -> Result<String, RenderError> {
    let t = catalog.template(Render::KIND, file)?;
    Ok(crate::template::render(&t.text, data, &t.origin)?)
}

fn write(path: &Path, text: &str) -> Result<(), RenderError> {
    fs::write(path, text).map_err(|source| RenderError::Io { path: path.to_path_buf(), source })
}

/// Render the build context for `input` into `out` (replaced as a whole:
/// re-rendering the same input gives the same files and digest).
pub fn render_context(catalog: &Catalog, input: &RenderInput, out: &Path) -> Result<RenderedContext, RenderError> {
    render_context_until(catalog, input, out, &|| false)
}

/// [`render_context`] that checks `stop` between files and gives up with
/// [`RenderError::Cancelled`] (leaving only the `.partial` scratch
/// directory, which the next render replaces).
pub fn render_context_until(
    catalog: &Catalog,
    input: &RenderInput,
    out: &Path,
    stop: &dyn Fn() -> bool,
) -> Result<RenderedContext, RenderError> {
    let p = &input.params;
    if let Some(problem) = param_problems(p, false).into_iter().next() {
        return Err(RenderError::InvalidParam { param: problem.path, reason: problem.message });
    }
    if let Some(reason) = safe::refusal(&input.model_name, Slot::DnsSubdomain) {
        return Err(RenderError::InvalidModelName { name: display_value(&input.model_name), reason });
    }
    let dir = &input.model_dir;
    if !dir.is_dir() {
        return Err(RenderError::ModelDirMissing { path: dir.clone() });
    }
    let model_files = tree::walk(dir)?;
    let model_digest = match &input.model_digest {
        Some(d) => d.clone(),
        None => tree::tree_digest(&model_files)?,
    };
    let class = choose_class(p, dir, &model_files)?;
    let requirements = merged_requirements(p, dir, &class)?;

    let env: Vec<Value> =
        p.env.iter().map(|(k, v)| json!({"name": k, "value": v, "quoted": safe::dockerfile_quote(v)})).collect();
    let data = json!({
        "modelName": input.model_name,
        "modelClass": p.model_class,
        "modelDigest": model_digest,
        "baseImage": p.base_image,
        "seldonCoreVersion": p.seldon_core_version,
        "source": p.source,
        "revision": p.revision,
        "serviceType": "MODEL",
        "httpPort": HTTP_PORT,
        "grpcPort": GRPC_PORT,
        "metricsPort": METRICS_PORT,
        "workdir": "/opt/app-root/src",
        "appRoot": "/opt/app-root",
        "env": env,
        "requirements": requirements,
    });
    let dockerfile = render_file(catalog, "Dockerfile.hbs", &data)?;
    let requirements_txt = render_file(catalog, "requirements.txt.hbs", &data)?;
    let wrapper = match &class {
        ModelClassSource::User { .. } => None,
        ModelClassSource::Generated { format, file, model_file } => {
            let mut d = data.clone();
            d["className"] = json!(p.model_class);
            d["modelFile"] = json!(model_file);
            d["predictMethod"] = json!(p.predict_method.name());
            let text = render_file(catalog, &format!("wrappers/{format}.py.hbs"), &d)?;
            Some((file.clone(), text))
        }
    };

    // Build next to `out` and swap it in, so a failed or killed render never
    // leaves a half-written context under the name a later stage reads.
    let partial = out.with_extension("partial");
    remove_dir_if_exists(&partial)?;
    fs::create_dir_all(&partial).map_err(|source| RenderError::Io { path: partial.clone(), source })?;
    for f in &model_files {
        if stop() {
            return Err(RenderError::Cancelled);
        }
        if f.rel == DOCKERFILE || f.rel == REQUIREMENTS {
            if f.rel == DOCKERFILE {
                tracing::warn!(path = %f.abs.display(), "the model directory's Dockerfile is replaced by the rendered one");
            }
            continue;
        }
        tree::place(&f.abs, &partial.join(&f.rel), input.link_model_files)?;
    }
    write(&partial.join(DOCKERFILE), &dockerfile)?;
    write(&partial.join(REQUIREMENTS), &requirements_txt)?;
    if let Some((file, text)) = &wrapper {
        write(&partial.join(file), text)?;
    }
    let entries = tree::walk(&partial)?;
    if stop() {
        return Err(RenderError::Cancelled);
    }
    let digest = tree::tree_digest(&entries)?;
    remove_dir_if_exists(out)?;
    fs::rename(&partial, out).map_err(|source| RenderError::Io { path: out.to_path_buf(), source })?;
    Ok(RenderedContext {
        dir: out.to_path_buf(),
        files: entries.into_iter().map(|e| e.rel).collect(),
        digest,
        model_digest,
        class,
    })
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), RenderError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RenderError::Io { path: dir.to_path_buf(), source }),
    }
}

pub struct Render;

/// What render hands openshift-build.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Output {
    pub context_dir: String,
    pub files: Vec<String>,
    pub context_digest: String,
    /// The model digest the image's `io.modelship.model.digest` label holds.
    pub model_digest: String,
}

impl Contract for Render {
    const KIND: &'static str = "render";
    const OUTPUTS: &'static [&'static str] = &["contextDir", "files", "contextDigest", "modelDigest"];
    type Params = Params;
    type Output = Output;

    fn validate(params: &Params, cx: &ValidateCx<'_>) -> Vec<Problem> {
        let mut out = param_problems(params, true);
        if params.model_dir.is_none() && !cx.may_link::<FetchModel>() {
            out.push(
                Problem::new(
                    "",
                    "no model directory: `modelDir` is not set and no `fetch-model` stage runs before this one",
                )
                .with_hint("add `modelDir: path/to/model` or a `uses: fetch-model` stage earlier"),
            );
        }
        if let Some(problem) = safe::refusal(&cx.pipeline.spec.model.name, Slot::DnsSubdomain) {
            out.push(Problem::new("", format!("spec.model.name {problem}")));
        }
        out
    }

    /// Renders files into the workspace.
    fn needs_cluster(_params: &Params, _cx: &ValidateCx<'_>) -> bool {
        false
    }

    fn plan(params: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        let model_dir = match &params.model_dir {
            Some(d) => d.clone(),
            None => cx
                .linked::<FetchModel>()
                .map(|s| format!("the model fetched by stage `{}`", s.name))
                .unwrap_or_else(|| "(no model directory)".into()),
        };
        let class = match params.model_format {
            ModelFormat::Auto => format!("`{}` from the model directory, else a generated wrapper", params.model_class),
            ModelFormat::Python => format!("`{}` from the model directory", params.model_class),
            f => format!("generated {} wrapper `{}`", f.name(), params.model_class),
        };
        let mut lines = vec![
            format!("render build context in workspace `{}/context` from {model_dir}", cx.stage.name),
            format!("FROM {}, seldon-core=={}, class {class}", params.base_image, params.seldon_core_version),
        ];
        if !params.requirements.is_empty() {
            lines.push(format!("extra requirements: {}", params.requirements.join(", ")));
        }
        lines
    }
}

/// The effectful half, beside the contract above.
impl Stage for Render {
    async fn run(params: Params, cx: &StageContext) -> Result<Output, StageError> {
        let (model_dir, model_digest, owned) = match &params.model_dir {
            Some(d) => (cx.pipeline_dir.join(d), None, false),
            None => {
                let fetched = cx
                    .input::<FetchModel>()?
                    .filter(|f| !f.model_dir.is_empty())
                    .ok_or_else(|| StageError::from(RenderError::NoModelDir))?;
                let digest = Some(fetched.content_digest).filter(|d| !d.is_empty());
                (PathBuf::from(fetched.model_dir), digest, true)
            }
        };
        let mut params = params;
        if params.source.is_none() {
            // Without a Git remote the model's own source is where the
            // image comes from (masked; left out when it is no URL a label
            // may hold, e.g. a path with spaces).
            let model_source = crate::secret::mask(&cx.pipeline.spec.model.source);
            params.source = cx
                .labels
                .get("repository")
                .or_else(|| cx.labels.get("source"))
                .cloned()
                .or_else(|| safe::refusal(&model_source, Slot::Url).is_none().then_some(model_source));
        }
        if params.revision.is_none() {
            params.revision = cx.labels.get("commit").cloned();
        }
        let input = RenderInput {
            params,
            model_name: cx.pipeline.spec.model.name.clone(),
            model_dir,
            model_digest,
            link_model_files: owned,
        };
        let out = cx.stage_dir().map_err(StageError::failed)?.join("context");
        let catalog = cx.catalog.clone();
        let cancel = cx.cancel.clone();
        // Hashing and copying a large model is blocking file work; it checks
        // the token between files, and is awaited even when cancelled so no
        // half-finished render outlives the stage.
        let task = tokio::task::spawn_blocking(move || {
            render_context_until(&catalog, &input, &out, &|| cancel.is_cancelled())
        });
        let rendered = match task.await {
            Ok(Ok(r)) => r,
            Ok(Err(RenderError::Cancelled)) => return Err(StageError::cancelled()),
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(StageError::msg(format!("render task failed: {e} (this is a bug)"))),
        };
        tracing::info!(
            context = %rendered.dir.display(),
            digest = %rendered.digest,
            files = rendered.files.len(),
            class = %rendered.class,
            "rendered build context"
        );
        Ok(Output {
            context_dir: rendered.dir.display().to_string(),
            files: rendered.files,
            context_digest: rendered.digest,
            model_digest: rendered.model_digest,
        })
    }
}

#[cfg(test)]
mod tests;
