//! Stage `openshift-build`: a binary Docker build on OpenShift, as
//! `oc start-build --from-dir --wait` does it, never duplicated.
//!
//! 1. Ensure the ImageStream and BuildConfig (catalog templates), created or
//!    updated idempotently.
//! 2. Reuse before building: a Build this stage started earlier (checkpoint),
//!    an image the ImageStream already holds for this context digest, or a
//!    Build of the same run and context digest (running: attach; complete:
//!    reuse; failed: build again).
//! 3. Start: `POST .../buildconfigs/NAME/instantiatebinary` with the context
//!    as a gzip tar produced on the fly and sent chunked, through the
//!    environment's kube client like every other call.
//! 4. Follow: list by name, watch from that resourceVersion, re-list when the
//!    watch ends; stream the build log into tracing; cancel the Build when
//!    the run is cancelled.

// Failed builds carry their log tail; errors are returned once per stage, so
// their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::render::Render;
use super::{Contract, Problem, Stage, StageContext, StageError, ValidateCx};
use crate::cluster;
use crate::cluster::openshift::{Build, BuildConfig, ImageStream};
use crate::manifests::{BuildVars, build_config_yaml, image_stream_yaml};

/// Annotations modelship puts on the Builds it starts.
pub const RUN_ANNOTATION: &str = "modelship.io/run";
pub const DIGEST_ANNOTATION: &str = "modelship.io/context-digest";
/// On the ImageStream: JSON map context digest -> image digest, newest first.
pub const IMAGES_ANNOTATION: &str = "modelship.io/context-images";
const IMAGES_KEPT: usize = 20;
/// OCI annotation key of the time the image was built (RFC 3339).
pub const CREATED_LABEL: &str = "org.opencontainers.image.created";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const DEFAULT_MAX_CONTEXT: u64 = 8 * 1024 * 1024 * 1024;
const FIELD_MANAGER: &str = "modelship";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Where to build; default: the pipeline's first environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// The build context; default: the latest `render` stage's `contextDir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_dir: Option<String>,
    /// Default: render's `contextDigest` (computed when `contextDir` is given alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_digest: Option<String>,
    /// ImageStream and BuildConfig name; default: the model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_stream: Option<String>,
    /// Default `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// How long to wait for the build, e.g. `20m`; default 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Refuse contexts larger than this many bytes; default 8 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot {action} {resource} in namespace {namespace}: {}", api_message(source))]
    Api {
        action: &'static str,
        resource: String,
        namespace: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cannot start a build of buildconfigs.build.openshift.io/{name} in namespace {namespace}: {message}")]
    Start { name: String, namespace: String, message: String, status: Option<u16>, retry_after: Option<Duration> },
    #[error("build context {dir}: {message}")]
    Context { dir: PathBuf, message: String },
    #[error("build context {dir} is {size} bytes, over maxContextBytes {max}")]
    TooLarge { dir: PathBuf, size: u64, max: u64 },
    #[error(
        "build {name} in namespace {namespace} ended {phase}: {reason}: {message}\n--- last lines of the build log ---\n{log_tail}"
    )]
    Failed { name: String, namespace: String, phase: String, reason: String, message: String, log_tail: String },
    #[error("build {name} in namespace {namespace} did not finish within {after:?} (last phase {phase})")]
    Timeout { name: String, namespace: String, after: Duration, phase: String },
    #[error("build {name} in namespace {namespace} was deleted while modelship followed it")]
    Vanished { name: String, namespace: String },
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!("forbidden ({}): {}", s.code, s.message),
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

impl BuildError {
    fn into_stage(self) -> StageError {
        let retryable = match &self {
            BuildError::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(s) => s.code >= 500 || s.code == 429,
                _ => true,
            },
            BuildError::Start { status, .. } => status.is_none_or(|c| c >= 500 || c == 429),
            BuildError::Timeout { .. } => false,
            _ => false,
        };
        let bad_input = matches!(self, BuildError::TooLarge { .. } | BuildError::Context { .. });
        let e = if bad_input { StageError::bad_input(self.to_string()) } else { StageError::failed(self) };
        if retryable { e.retryable() } else { e }
    }
}

impl From<crate::archive::ArchiveError> for BuildError {
    fn from(e: crate::archive::ArchiveError) -> Self {
        BuildError::Context { dir: e.dir, message: e.message }
    }
}

fn api_err(action: &'static str, resource: String, namespace: &str) -> impl FnOnce(kube::Error) -> BuildError {
    let namespace = namespace.to_string();
    move |source| BuildError::Api { action, resource, namespace, source: Box::new(source) }
}

pub struct OpenshiftBuild;

/// What openshift-build hands seldon-deploy, sign and promote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Output {
    pub build_name: String,
    /// Where the Build ran.
    pub namespace: String,
    /// `REPOSITORY@sha256:...`
    pub image: String,
    pub image_digest: String,
    pub image_stream_tag: String,
}

impl Contract for OpenshiftBuild {
    const KIND: &'static str = "openshift-build";
    const OUTPUTS: &'static [&'static str] = &["buildName", "namespace", "image", "imageDigest", "imageStreamTag"];
    type Params = Params;
    type Output = Output;

    fn validate(p: &Params, cx: &ValidateCx<'_>) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Some(env) = &p.environment
            && let Some(problem) = cx.environment_problem("environment", env)
        {
            problems.push(problem);
        }
        if let Some(t) = p.timeout.as_deref().filter(|t| !crate::template::is_template(t))
            && humantime::parse_duration(t).is_err()
        {
            problems.push(Problem::new("timeout", format!("`{t}` is not a duration")).with_hint("e.g. 20m or 1h30m"));
        }
        if let Some(s) = p.image_stream.as_deref().filter(|s| !crate::template::is_template(s))
            && !crate::names::is_dns_label(s)
        {
            problems.push(Problem::new(
                "imageStream",
                format!("`{s}` is not a valid ImageStream name (lowercase RFC 1123 label)"),
            ));
        }
        if let Some(t) = p.tag.as_deref().filter(|t| !crate::template::is_template(t))
            && !is_tag(t)
        {
            problems.push(Problem::new("tag", format!("`{t}` is not a valid image tag")));
        }
        if p.max_context_bytes == Some(0) {
            problems.push(Problem::new("maxContextBytes", "must be above 0"));
        }
        if p.context_dir.is_none() && !cx.may_link::<Render>() {
            problems.push(Problem::new(
                "contextDir",
                "no build context: set contextDir or run a `render` stage before this one",
            ));
        }
        problems
    }

    fn needs_cluster(_params: &Params, _cx: &ValidateCx<'_>) -> bool {
        true
    }

    fn plan(p: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        let env =
            p.environment.clone().or_else(|| cx.pipeline.spec.environments.keys().next().cloned()).unwrap_or_default();
        let ns = cx.pipeline.spec.environments.get(&env).map(|e| e.namespace.clone()).unwrap_or_default();
        let stream = p.image_stream.clone().unwrap_or_else(|| cx.pipeline.spec.model.name.clone());
        let tag = p.tag.clone().unwrap_or_else(|| "latest".into());
        vec![
            format!("environment {env}, namespace {ns}"),
            format!("ensure imagestreams.image.openshift.io/{stream} and buildconfigs.build.openshift.io/{stream}"),
            format!(
                "start a binary build of {stream} (unless an image of the same context digest exists) -> {stream}:{tag}"
            ),
        ]
    }
}

/// The effectful half, beside the contract above.
impl Stage for OpenshiftBuild {
    async fn run(params: Params, cx: &StageContext) -> Result<Output, StageError> {
        run_build(params, cx).await.map_err(|e| {
            if cx.cancel.is_cancelled() {
                tracing::warn!(error = %e, "openshift-build cancelled");
                StageError::cancelled()
            } else {
                e.into_stage()
            }
        })
    }
}

fn is_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// What the stage works on, resolved from params, earlier outputs and the
/// pipeline.
struct Target {
    env: String,
    namespace: String,
    stream: String,
    tag: String,
    context_dir: PathBuf,
    context_digest: String,
    timeout: Duration,
    max_context: u64,
}

fn resolve(p: &Params, cx: &StageContext) -> Result<Target, BuildError> {
    let env =
        p.environment.clone().or_else(|| cx.pipeline.spec.environments.keys().next().cloned()).unwrap_or_default();
    let namespace = cx
        .clusters
        .environment(&env)
        .map(|e| e.namespace.clone())
        .map_err(|e| BuildError::Context { dir: PathBuf::new(), message: e.to_string() })?;
    let render = cx
        .input::<Render>()
        .map_err(|e| BuildError::Context { dir: PathBuf::new(), message: e.to_string() })?
        .unwrap_or_default();
    let context_dir = match (&p.context_dir, Some(render.context_dir.as_str()).filter(|d| !d.is_empty())) {
        (Some(d), _) => cx.pipeline_dir.join(d),
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => {
            return Err(BuildError::Context {
                dir: PathBuf::new(),
                message: "no build context: set contextDir or run a `render` stage first".into(),
            });
        }
    };
    let digest = p.context_digest.clone().or_else(|| {
        p.context_dir.is_none().then(|| Some(render.context_digest.clone()).filter(|d| !d.is_empty())).flatten()
    });
    let context_digest = match digest {
        Some(d) => d,
        None => crate::archive::digest_dir(&context_dir).map_err(BuildError::from)?,
    };
    let timeout = match &p.timeout {
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| BuildError::Context { dir: context_dir.clone(), message: format!("timeout `{t}`: {e}") })?,
        None => DEFAULT_TIMEOUT,
    };
    Ok(Target {
        env,
        namespace,
        stream: p.image_stream.clone().unwrap_or_else(|| cx.pipeline.spec.model.name.clone()),
        tag: p.tag.clone().unwrap_or_else(|| "latest".into()),
        context_dir,
        context_digest,
        timeout,
        max_context: p.max_context_bytes.unwrap_or(DEFAULT_MAX_CONTEXT),
    })
}

async fn run_build(params: Params, cx: &StageContext) -> Result<Output, BuildError> {
    let t = resolve(&params, cx)?;
    let ns = t.namespace.clone();
    let client = cx
        .clusters
        .client(&t.env)
        .await
        .map_err(|e| BuildError::Context { dir: PathBuf::new(), message: e.to_string() })?;
    let streams: Api<ImageStream> = Api::namespaced(client.clone(), &ns);
    let configs: Api<BuildConfig> = Api::namespaced(client.clone(), &ns);
    let builds: Api<Build> = Api::namespaced(client.clone(), &ns);
    let span = tracing::info_span!("openshift-build", namespace = %ns, imagestream = %t.stream);
    let _enter = span.enter();
    drop(_enter);

    // A context over the limit is refused before anything is written.
    let size: u64 = crate::archive::files(&t.context_dir)?.iter().map(|(_, s)| s).sum();
    if size > t.max_context {
        return Err(BuildError::TooLarge { dir: t.context_dir.clone(), size, max: t.max_context });
    }

    let mut vars = BuildVars::new(t.stream.clone(), ns.clone());
    vars.tag = t.tag.clone();
    vars.labels.insert("modelship.io/model".into(), cx.pipeline.spec.model.name.clone());
    let is_obj = manifest(&image_stream_yaml(&cx.catalog, &vars).map_err(|e| ctx_err(&t, e))?)?;
    let bc_obj = manifest(&build_config_yaml(&cx.catalog, &vars).map_err(|e| ctx_err(&t, e))?)?;
    ensure(&streams, &t.stream, is_obj, "imagestreams.image.openshift.io", &ns).await?;
    ensure(&configs, &t.stream, bc_obj, "buildconfigs.build.openshift.io", &ns).await?;

    // 1. A Build this stage started before (the runner was killed).
    let mut started: Option<Build> = None;
    if let Some(name) = cx.checkpoint("buildName").and_then(Value::as_str) {
        match builds.get_opt(name).await.map_err(api_err("get", format!("builds.build.openshift.io/{name}"), &ns))? {
            Some(b) if !matches!(b.phase(), "Failed" | "Error" | "Cancelled") => {
                tracing::info!(build = name, phase = b.phase(), "attaching to the build started before");
                started = Some(b);
            }
            _ => {}
        }
    }
    // 2. The stream already holds an image of this context.
    if started.is_none() {
        let is = streams.get(&t.stream).await.map_err(api_err(
            "get",
            format!("imagestreams.image.openshift.io/{}", t.stream),
            &ns,
        ))?;
        if let Some(digest) = images_of(&is).get(&t.context_digest).cloned()
            && is.has_image(&digest)
        {
            tracing::info!(image = %digest, "the image stream already holds an image of this context; not building");
            let build = find_builds(&builds, &t).await?.into_iter().find(|b| b.image_digest() == Some(digest.as_str()));
            let name = build.and_then(|b| b.metadata.name).unwrap_or_default();
            return Ok(outputs(&t, &is, &name, &digest));
        }
    }
    // 3. A Build of this context: running -> attach, complete -> reuse.
    if started.is_none() {
        let mut candidates = find_builds(&builds, &t).await?;
        candidates.sort_by_key(|b| std::cmp::Reverse(build_number(b)));
        if let Some(b) = candidates.iter().find(|b| b.phase() == "Complete" && b.image_digest().is_some()) {
            tracing::info!(
                build = b.metadata.name.as_deref().unwrap_or_default(),
                "a build of this context is complete; reusing its image"
            );
            started = Some(b.clone());
        } else if let Some(b) =
            candidates.iter().find(|b| !b.is_finished() && run_of(b, &t.context_digest) == Some(cx.run_id.as_str()))
        {
            tracing::info!(
                build = b.metadata.name.as_deref().unwrap_or_default(),
                "attaching to a running build of this run"
            );
            started = Some(b.clone());
        }
    }
    let build = match started {
        Some(b) => b,
        None => {
            // The image's `created` label is per build, and a binary build
            // takes its spec from the BuildConfig at instantiate
            // (openshift-apiserver's buildconfiginstantiate), so it goes
            // there just before the start; the builder appends
            // `spec.output.imageLabels` after the Dockerfile's own labels
            // (openshift/builder pkg/build/builder/common.go, buildLabels).
            // Reused images keep the time they were built; two runs starting
            // builds of one BuildConfig at the same moment may swap their
            // (near-equal) times, which is why only the time goes there.
            vars.image_labels.insert(CREATED_LABEL.into(), crate::timestamp::display(jiff::Timestamp::now()));
            let bc_obj = manifest(&build_config_yaml(&cx.catalog, &vars).map_err(|e| ctx_err(&t, e))?)?;
            ensure(&configs, &t.stream, bc_obj, "buildconfigs.build.openshift.io", &ns).await?;
            let b = start(cx, &t, &builds).await?;
            let name = b.metadata.name.clone().unwrap_or_default();
            cx.save_checkpoint("buildName", json!(name)).await.map_err(|e| BuildError::Context {
                dir: PathBuf::new(),
                message: format!("build {name} started but cannot be recorded: {e}"),
            })?;
            let patch = json!({ "metadata": { "annotations": {
                RUN_ANNOTATION: cx.run_id, DIGEST_ANNOTATION: t.context_digest,
            } } });
            builds.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(api_err(
                "annotate",
                format!("builds.build.openshift.io/{name}"),
                &ns,
            ))?
        }
    };
    let name = build.metadata.name.clone().unwrap_or_default();
    let log_task = (!build.is_finished()).then(|| {
        tokio::spawn(tracing::Instrument::in_current_span(cluster::build::stream_log(
            client.clone(),
            ns.clone(),
            name.clone(),
        )))
    });
    let follow = cluster::build::follow(&builds, &name);
    let followed = tokio::select! {
        r = tokio::time::timeout(t.timeout, follow) => match r {
            Ok(r) => r.map_err(|e| match e {
                cluster::build::FollowError::Vanished => BuildError::Vanished { name: name.clone(), namespace: ns.clone() },
                cluster::build::FollowError::Api(e) => api_err("list", format!("builds.build.openshift.io/{name}"), &ns)(e),
            }),
            Err(_) => {
                let phase = builds.get(&name).await.map(|b| b.phase().to_string()).unwrap_or_default();
                Err(BuildError::Timeout { name: name.clone(), namespace: ns.clone(), after: t.timeout, phase })
            }
        },
        _ = cx.cancel.cancelled() => {
            // As `oc cancel-build`: mark the Build cancelled.
            let patch = json!({ "status": { "cancelled": true } });
            let r = builds.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
            tracing::warn!(build = %name, ok = r.is_ok(), "run cancelled: cancelling the build");
            if let Some(t) = log_task { t.abort(); }
            return Err(BuildError::Failed {
                name, namespace: ns, phase: "Cancelled".into(), reason: "CancelledBuild".into(),
                message: "cancelled by modelship".into(), log_tail: String::new(),
            });
        }
    };
    if let Some(task) = log_task {
        // The log ends with the build; do not wait long for the last bytes.
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let done = followed?;
    if done.phase() != "Complete" {
        let log_tail = cluster::build::log_tail(&client, &ns, &name).await;
        return Err(BuildError::Failed {
            name,
            namespace: ns,
            phase: done.phase().to_string(),
            reason: done.status.reason.clone().unwrap_or_default(),
            message: done.status.message.clone().unwrap_or_default(),
            log_tail,
        });
    }
    let digest = done.image_digest().unwrap_or_default().to_string();
    let is = remember_image(&streams, &t, &digest).await?;
    Ok(outputs(&t, &is, &name, &digest))
}

fn ctx_err(t: &Target, e: impl std::fmt::Display) -> BuildError {
    BuildError::Context { dir: t.context_dir.clone(), message: e.to_string() }
}

fn manifest(yaml: &str) -> Result<Value, BuildError> {
    crate::spec::yaml::from_str::<Value>(yaml)
        .map_err(|e| BuildError::Context { dir: PathBuf::new(), message: format!("rendered manifest: {e}") })
}

fn build_number(b: &Build) -> i64 {
    b.annotation("openshift.io/build.number").and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn images_of(is: &ImageStream) -> BTreeMap<String, String> {
    is.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(IMAGES_ANNOTATION))
        .and_then(|s| serde_json::from_str::<Vec<(String, String)>>(s).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

fn outputs(t: &Target, is: &ImageStream, build: &str, digest: &str) -> Output {
    let repo = if is.status.docker_image_repository.is_empty() {
        format!("image-registry.openshift-image-registry.svc:5000/{}/{}", t.namespace, t.stream)
    } else {
        is.status.docker_image_repository.clone()
    };
    Output {
        build_name: build.to_string(),
        namespace: t.namespace.clone(),
        image: format!("{repo}@{digest}"),
        image_digest: digest.to_string(),
        image_stream_tag: format!("{}:{}", t.stream, t.tag),
    }
}

/// Create `obj`, or bring the stored one's labels and spec to it.
async fn ensure<K>(api: &Api<K>, name: &str, obj: Value, resource: &str, ns: &str) -> Result<(), BuildError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    let what = format!("{resource}/{name}");
    match api.get_opt(name).await.map_err(api_err("get", what.clone(), ns))? {
        None => {
            let k: K = serde_json::from_value(obj)
                .map_err(|e| BuildError::Context { dir: PathBuf::new(), message: format!("rendered {what}: {e}") })?;
            match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, &k).await
            {
                Ok(_) => Ok(()),
                // Another runner made it between our get and create.
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(api_err("create", what, ns)(e)),
            }
        }
        Some(current) => {
            let current = serde_json::to_value(&current).unwrap_or_default();
            let mut wanted_labels = current.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            if let (Some(w), Some(add)) =
                (wanted_labels.as_object_mut(), obj.pointer("/metadata/labels").and_then(Value::as_object))
            {
                w.extend(add.clone());
            }
            // Only what the template sets counts: the server fills defaults
            // (`runPolicy`, `resources: {}`, `nodeSelector: null`, ...) and
            // drops empty lists, which must not make every run patch.
            if covers(current.get("spec").unwrap_or(&Value::Null), obj.get("spec").unwrap_or(&Value::Null))
                && current.pointer("/metadata/labels") == Some(&wanted_labels)
            {
                return Ok(());
            }
            let patch = json!({ "metadata": { "labels": wanted_labels }, "spec": obj.get("spec") });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(api_err("update", what, ns))
        }
    }
}

/// Whether the stored `current` already holds every field of `wanted`
/// with the same value. An empty value (`null`, `{}`, `[]`) in `wanted`
/// also matches an absent or empty field: the API server omits empty
/// `omitempty` lists and writes unset structs as `{}` or `null`.
fn covers(current: &Value, wanted: &Value) -> bool {
    let empty = |v: &Value| {
        v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) || v.as_array().is_some_and(|a| a.is_empty())
    };
    match (current, wanted) {
        (Value::Object(c), Value::Object(w)) => w.iter().all(|(k, wv)| match c.get(k) {
            Some(cv) => covers(cv, wv) || (empty(wv) && empty(cv)),
            None => empty(wv),
        }),
        (Value::Array(c), Value::Array(w)) => c.len() == w.len() && c.iter().zip(w).all(|(cv, wv)| covers(cv, wv)),
        (c, w) => c == w || (empty(w) && empty(c)),
    }
}

async fn find_builds(builds: &Api<Build>, t: &Target) -> Result<Vec<Build>, BuildError> {
    let lp = ListParams::default().labels(&format!("openshift.io/build-config.name={}", t.stream));
    let list = builds.list(&lp).await.map_err(api_err("list", "builds.build.openshift.io".into(), &t.namespace))?;
    Ok(list.items.into_iter().filter(|b| run_of(b, &t.context_digest).is_some()).collect())
}

/// The message a Build this stage starts carries in `spec.revision.git`,
/// from the POST itself (the annotations come with a later patch).
fn revision_message(run_id: &str, context_digest: &str) -> String {
    format!("modelship run {run_id} context {context_digest}")
}

/// The `revision.commit` a build is started with: the pushed commit when
/// the run has one (`modelship trigger`), otherwise 40 hex digits of
/// `sha256("modelship run RUN context DIGEST")`, the same for every attempt
/// of the run on this context (never a real commit; the message says what
/// it stands for).
fn revision_commit(pushed: Option<&String>, run_id: &str, context_digest: &str) -> String {
    use sha2::{Digest, Sha256};
    match pushed.filter(|c| !c.is_empty()) {
        Some(c) => c.clone(),
        None => hex::encode(Sha256::digest(revision_message(run_id, context_digest)))[..40].to_string(),
    }
}

/// The run that started `b` for this context digest, from its annotations,
/// or from its revision message when a runner died (or lost the answer)
/// between starting it and annotating it.
fn run_of<'a>(b: &'a Build, context_digest: &str) -> Option<&'a str> {
    if b.annotation(DIGEST_ANNOTATION) == Some(context_digest) {
        return Some(b.annotation(RUN_ANNOTATION).unwrap_or(""));
    }
    let message = b.spec.pointer("/revision/git/message").and_then(Value::as_str)?;
    message.strip_prefix("modelship run ")?.strip_suffix(&format!(" context {context_digest}"))
}

/// Record context digest -> image digest on the ImageStream, so a later run
/// of the same context skips the build.
async fn remember_image(streams: &Api<ImageStream>, t: &Target, digest: &str) -> Result<ImageStream, BuildError> {
    let what = format!("imagestreams.image.openshift.io/{}", t.stream);
    for _ in 0..5 {
        let is = streams.get(&t.stream).await.map_err(api_err("get", what.clone(), &t.namespace))?;
        let mut list: Vec<(String, String)> =
            images_of(&is).into_iter().filter(|(c, _)| *c != t.context_digest).collect();
        list.insert(0, (t.context_digest.clone(), digest.to_string()));
        list.truncate(IMAGES_KEPT);
        let patch = json!({ "metadata": {
            "resourceVersion": is.metadata.resource_version,
            "annotations": { IMAGES_ANNOTATION: serde_json::to_string(&list).unwrap_or_default() },
        } });
        match streams.patch(&t.stream, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(is) => return Ok(is),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(api_err("annotate", what, &t.namespace)(e)),
        }
    }
    streams.get(&t.stream).await.map_err(api_err("get", what, &t.namespace))
}

/// POST instantiatebinary with the streamed context; the Build it created.
///
/// The POST names its Build server-side, so it is never simply repeated:
/// after a failure that may have created a Build (a 5xx, a connection lost
/// before the answer) the Builds of the BuildConfig are searched for one
/// carrying this run's revision message that was not there before; only if
/// none is found is the POST sent again (a 429 was not processed at all).
async fn start(cx: &StageContext, t: &Target, builds: &Api<Build>) -> Result<Build, BuildError> {
    let client = cx.clusters.client(&t.env).await.map_err(|e| BuildError::Start {
        name: t.stream.clone(),
        namespace: t.namespace.clone(),
        message: e.to_string(),
        status: None,
        retry_after: None,
    })?;
    let message = revision_message(&cx.run_id, &t.context_digest);
    let mut query = vec![
        ("name".to_string(), t.stream.clone()),
        ("namespace".to_string(), t.namespace.clone()),
        ("revision.message".to_string(), message.clone()),
    ];
    // openshift-apiserver records `spec.revision` (and so the message the
    // recovery below searches by) only when `revision.commit` is non-empty.
    query
        .push(("revision.commit".to_string(), revision_commit(cx.labels.get("commit"), &cx.run_id, &t.context_digest)));
    let before: Vec<String> =
        builds_with_message(builds, t, &message).await?.into_iter().filter_map(|b| b.metadata.name).collect();
    let retry = cx.clusters.retry_config();
    let mut attempt = 0;
    loop {
        attempt += 1;
        tracing::info!(bc = %t.stream, namespace = %t.namespace, attempt, "starting a binary build");
        let body = crate::archive::context_stream(t.context_dir.clone());
        let started = cluster::build::instantiate_binary(&client, &t.namespace, &t.stream, body, &query).await;
        let err = match started.map_err(|e| start_err(t, e)) {
            Ok(text) => {
                return serde_json::from_str(&text).map_err(|e| BuildError::Start {
                    name: t.stream.clone(),
                    namespace: t.namespace.clone(),
                    message: format!("the answer is not a Build: {e}"),
                    status: Some(201),
                    retry_after: None,
                });
            }
            Err(e) => e,
        };
        let BuildError::Start { status, retry_after, .. } = &err else { return Err(err) };
        // openshift-apiserver waits (5 minutes) for the Build to run before
        // it takes the upload; then it answers 504 and cancels the Build.
        // Not a lost answer: say so instead of attaching to that Build.
        if *status == Some(504) {
            let BuildError::Start { name, namespace, message, status, retry_after } = err else { unreachable!() };
            return Err(BuildError::Start {
                message: format!(
                    "the build did not start running in time and the server cancelled it; another build of this \
                     BuildConfig may still be running (runPolicy Serial runs one at a time) or its pod could not be \
                     scheduled: {message}"
                ),
                name,
                namespace,
                status,
                retry_after,
            });
        }
        // A success whose body was cut is a lost answer too.
        if status.is_some_and(|c| !crate::cluster::retry::retryable_status(c) && !(200..300).contains(&c)) {
            return Err(err);
        }
        if *status != Some(429) {
            let created = builds_with_message(builds, t, &message).await?;
            if let Some(b) = created.into_iter().find(|b| b.metadata.name.as_ref().is_some_and(|n| !before.contains(n)))
            {
                tracing::info!(build = b.metadata.name.as_deref().unwrap_or_default(), error = %err, "the build was started although its answer was lost");
                return Ok(b);
            }
        }
        if attempt >= retry.attempts {
            return Err(match err {
                BuildError::Start { name, namespace, message, status, retry_after } => BuildError::Start {
                    message: format!("{message} (gave up after {attempt} attempts)"),
                    name,
                    namespace,
                    status,
                    retry_after,
                },
                other => other,
            });
        }
        tracing::warn!(error = %err, attempt, "starting the build failed and it did not start; retrying");
        tokio::time::sleep(retry.delay(attempt, *retry_after)).await;
    }
}

fn start_err(t: &Target, e: cluster::build::StartError) -> BuildError {
    BuildError::Start {
        name: t.stream.clone(),
        namespace: t.namespace.clone(),
        message: e.message,
        status: e.status,
        retry_after: e.retry_after,
    }
}

/// Builds of the BuildConfig whose revision message is `message`.
async fn builds_with_message(builds: &Api<Build>, t: &Target, message: &str) -> Result<Vec<Build>, BuildError> {
    let lp = ListParams::default().labels(&format!("openshift.io/build-config.name={}", t.stream));
    let list = builds.list(&lp).await.map_err(api_err("list", "builds.build.openshift.io".into(), &t.namespace))?;
    Ok(list
        .items
        .into_iter()
        .filter(|b| b.spec.pointer("/revision/git/message").and_then(Value::as_str) == Some(message))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_of_reads_annotations_or_the_revision_message() {
        let d = "sha256:ab";
        let b: Build = serde_json::from_value(json!({
            "metadata": { "annotations": { DIGEST_ANNOTATION: d, RUN_ANNOTATION: "r1" } },
        }))
        .unwrap();
        assert_eq!(run_of(&b, d), Some("r1"));
        assert_eq!(run_of(&b, "sha256:cd"), None);
        let lost: Build = serde_json::from_value(json!({
            "metadata": {},
            "spec": { "revision": { "git": { "message": revision_message("r2", d) } } },
        }))
        .unwrap();
        assert_eq!(run_of(&lost, d), Some("r2"));
        assert_eq!(run_of(&lost, "sha256:cd"), None);
    }

    /// Guards lost-answer recovery on a real server: without a non-empty
    /// `revision.commit` openshift-apiserver drops the revision message the
    /// recovery searches by, so a commit is always sent.
    #[test]
    fn revision_commit_is_the_pushed_one_or_derived_from_run_and_context() {
        let pushed = "0123456789abcdef0123456789abcdef01234567".to_string();
        assert_eq!(revision_commit(Some(&pushed), "r1", "sha256:ab"), pushed);
        let derived = revision_commit(None, "r1", "sha256:ab");
        assert_eq!(derived.len(), 40);
        assert!(derived.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(derived, revision_commit(Some(&String::new()), "r1", "sha256:ab"), "deterministic");
        assert_ne!(derived, revision_commit(None, "r2", "sha256:ab"));
        assert_ne!(derived, revision_commit(None, "r1", "sha256:cd"));
    }

    #[test]
    fn covers_ignores_server_defaults_but_not_changes() {
        let wanted = json!({ "runPolicy": "Serial", "triggers": [], "source": { "type": "Binary", "binary": {} },
            "strategy": { "type": "Docker", "dockerStrategy": { "dockerfilePath": "Dockerfile" } } });
        let stored = json!({ "runPolicy": "Serial", "source": { "type": "Binary", "binary": {} },
            "strategy": { "type": "Docker", "dockerStrategy": { "dockerfilePath": "Dockerfile" } },
            "nodeSelector": null, "resources": {}, "postCommit": {}, "output": {} });
        assert!(covers(&stored, &wanted));
        let mut changed = stored.clone();
        changed["strategy"]["dockerStrategy"]["dockerfilePath"] = json!("Containerfile");
        assert!(!covers(&changed, &wanted));
        let mut lost = stored.clone();
        lost.as_object_mut().unwrap().remove("runPolicy");
        assert!(!covers(&lost, &wanted));
    }
}
