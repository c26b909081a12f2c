//! Everything checked before a run touches anything: the file, params,
//! `--until`, timeouts, the run id. Also the `--dry-run` plan, which stops
//! here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::render::{self, RenderData};
use super::{EngineError, Plan, PlannedStage, RunOptions};
use crate::catalog::Catalog;
use crate::spec::{self, Pipeline};
use crate::stages::{Kind, ValidateCx};

/// A stage without `timeout:` gets this long.
pub const DEFAULT_STAGE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A loaded, validated pipeline ready to run.
pub(crate) struct Prepared {
    pub pipeline: Arc<Pipeline>,
    /// The pipeline file.
    pub path: PathBuf,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    pub catalog: Arc<Catalog>,
}

impl Prepared {
    pub fn pipeline_dir(&self) -> PathBuf {
        pipeline_dir(&self.path)
    }
}

/// The directory of the pipeline file `path` (`.` for a bare file name).
fn pipeline_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Where a run that needs no cluster keeps its state, below the pipeline
/// file's directory.
pub const LOCAL_STATE_DIR: &str = ".modelship/state";

/// The directory state goes to when none is named (`--state-dir`) and no
/// cluster can hold it: the pipeline declares no environments, or no
/// cluster is configured (no kubeconfig, not in a pod) and no stage of this
/// run (up to `until`) needs one. `None`: ConfigMaps in the state
/// environment, as always.
pub fn local_state_dir(
    pipeline: &Pipeline,
    file: &Path,
    catalog: &Catalog,
    kubeconfig: Option<&Path>,
    until: Option<&str>,
) -> Option<PathBuf> {
    use crate::cluster::{Source, Surroundings};
    let local = pipeline.spec.environments.is_empty()
        || (Source::decide(&Surroundings::detect(kubeconfig)) == Source::Nothing
            && spec::first_cluster_stage(&crate::stages::Registry, pipeline, catalog, until).is_none());
    local.then(|| pipeline_dir(file).join(LOCAL_STATE_DIR))
}

/// Per-stage facts resolved up front, so a bad value stops the run before
/// anything is written.
pub(crate) struct StagePlan {
    pub kind: Kind,
    pub timeout: Duration,
    pub max_attempts: u32,
}

pub(crate) fn prepare(opts: &RunOptions) -> Result<Prepared, EngineError> {
    // Read past type problems so the run reports them with every other one.
    let loaded = spec::load_lenient(&opts.pipeline)?;
    let catalog = catalog_for(opts, &loaded.path, &loaded.pipeline);
    spec::validate(&loaded, &catalog, &crate::stages::Registry)?;
    from_pipeline(loaded.pipeline, loaded.path, loaded.digest, catalog, opts)
}

/// The seam tests use to run a pipeline parsed in memory.
pub(crate) fn from_pipeline(
    mut pipeline: Pipeline,
    path: PathBuf,
    digest: String,
    catalog: Catalog,
    opts: &RunOptions,
) -> Result<Prepared, EngineError> {
    opts.overrides.apply(&mut pipeline).map_err(EngineError::BadInput)?;
    if spec::has_templated_environments(&pipeline) {
        // Before any client or state store exists: they use the namespaces.
        let params = resolve_params(&pipeline, None, &opts.sets)?;
        spec::render_environments(&mut pipeline, &params).map_err(EngineError::BadInput)?;
    }
    Ok(Prepared { pipeline: Arc::new(pipeline), path, digest, catalog: Arc::new(catalog) })
}

/// Lookups: the pipeline's `templates:` directory, then `--stages-dir`, then
/// the embedded catalog.
fn catalog_for(opts: &RunOptions, path: &Path, pipeline: &Pipeline) -> Catalog {
    let mut catalog = Catalog::embedded();
    if let Some(dir) = &opts.stages_dir {
        catalog = catalog.with_override(dir);
    }
    if let Some(t) = &pipeline.spec.templates {
        let base = path.parent().unwrap_or(Path::new("."));
        catalog = catalog.with_override(base.join(t));
    }
    catalog
}

/// Defaults from `spec.params`, then `recorded` (a resumed run's values),
/// then `--set`. An undeclared `--set` key or a param left without a value is
/// bad input.
pub(crate) fn resolve_params(
    pipeline: &Pipeline,
    recorded: Option<&BTreeMap<String, String>>,
    sets: &[(String, String)],
) -> Result<BTreeMap<String, String>, EngineError> {
    let declared = &pipeline.spec.params;
    let mut params = BTreeMap::new();
    for (name, p) in declared {
        if let Some(d) = &p.default {
            params.insert(name.clone(), d.clone());
        }
    }
    for (k, v) in recorded.into_iter().flatten() {
        if declared.contains_key(k) {
            params.insert(k.clone(), v.clone());
        }
    }
    for (k, v) in sets {
        if !declared.contains_key(k) {
            let known: Vec<&str> = declared.keys().map(String::as_str).collect();
            let guess = crate::suggest::did_you_mean(k, known.iter().copied()).map(|h| format!("; {h}"));
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(EngineError::BadInput(format!(
                "--set {k}: the pipeline `{}` declares no parameter `{k}` (declared: {known}){}",
                pipeline.metadata.name,
                guess.unwrap_or_default()
            )));
        }
        params.insert(k.clone(), v.clone());
    }
    if let Some(missing) = declared.keys().find(|k| !params.contains_key(*k)) {
        return Err(EngineError::BadInput(format!("parameter `{missing}` has no default; pass --set {missing}=VALUE")));
    }
    Ok(params)
}

pub(crate) fn check_until(pipeline: &Pipeline, file: &Path, until: Option<&str>) -> Result<(), EngineError> {
    let Some(until) = until else { return Ok(()) };
    if pipeline.spec.stages.iter().any(|s| s.name == until) {
        return Ok(());
    }
    let names = pipeline.spec.stages.iter().map(|s| s.name.as_str());
    let place = file.display().to_string();
    Err(EngineError::BadInput(format!("--until {until}: {}", crate::suggest::not_found("stage", until, &place, names))))
}

pub(crate) fn stage_plans(pipeline: &Pipeline) -> Result<Vec<StagePlan>, EngineError> {
    pipeline
        .spec
        .stages
        .iter()
        .map(|s| {
            let kind = Kind::from_name(&s.uses)
                .ok_or_else(|| EngineError::BadInput(format!("stage `{}`: unknown stage kind `{}`", s.name, s.uses)))?;
            let timeout = match &s.timeout {
                None => DEFAULT_STAGE_TIMEOUT,
                Some(t) => humantime::parse_duration(t).map_err(|e| {
                    EngineError::BadInput(format!("stage `{}`: timeout `{t}`: {e} (e.g. `90s`, `10m`)", s.name))
                })?,
            };
            Ok(StagePlan { kind, timeout, max_attempts: s.retries.unwrap_or(0).saturating_add(1) })
        })
        .collect()
}

/// Run ids name ConfigMaps and files: lowercase DNS labels, short enough to
/// sit next to a pipeline name.
pub(crate) fn check_run_id(id: &str) -> Result<(), EngineError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(EngineError::BadInput(format!(
            "run id `{id}` is not valid: use 1-63 lowercase letters, digits and `-`, not at either end"
        )))
    }
}

/// `YYYYMMDD-HHMMSS-xxxx` (UTC, four random lowercase letters/digits):
/// sorts by time, DNS-safe, unlikely to collide.
pub fn generate_run_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let now = jiff::Timestamp::now();
    let suffix: String = (0..4).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect();
    format!("{}-{suffix}", now.strftime("%Y%m%d-%H%M%S"))
}

/// Where state would live, without connecting anywhere.
pub(crate) fn describe_state(p: &Prepared, opts: &RunOptions) -> String {
    let pipeline = &p.pipeline;
    let local = || local_state_dir(pipeline, &p.path, &p.catalog, opts.kubeconfig.as_deref(), opts.until.as_deref());
    match opts.state_dir.clone().or_else(local) {
        Some(d) => format!("dir {}", d.display()),
        None => match pipeline.state_environment() {
            Some((name, env)) => format!("configmaps in {name}/{}", env.namespace),
            None => "no state environment".to_string(),
        },
    }
}

/// The resolved plan. Params are filled in; references to stage outputs stay
/// as written (they do not exist yet) and so do `{{env.NAME}}` references,
/// because environment variables are where credentials usually come from
/// and a plan is printed and pasted.
pub(crate) fn plan_prepared(p: &Prepared, opts: &RunOptions) -> Result<Plan, EngineError> {
    let pipeline = &p.pipeline;
    let params = resolve_params(pipeline, None, &opts.sets)?;
    check_until(pipeline, &p.path, opts.until.as_deref())?;
    let kinds = stage_plans(pipeline)?;
    if let Some(id) = opts.run_id.as_deref().or(opts.resume.as_deref()) {
        check_run_id(id)?;
    }
    let run_id =
        opts.run_id.clone().or_else(|| opts.resume.clone()).unwrap_or_else(|| "(generated at run time)".into());
    let env: Map<String, Value> = render::process_env()
        .into_iter()
        .map(|(k, _)| (k.clone(), Value::String(format!("{{{{env.{k}}}}}"))))
        .collect();
    let data = RenderData::new(params, env, &run_id, &pipeline.metadata.name, &pipeline.spec.model.name);
    let mut placeholders: BTreeMap<String, crate::stages::Outputs> = BTreeMap::new();
    let mut stages = Vec::new();
    for (index, (stage, sp)) in pipeline.spec.stages.iter().zip(&kinds).enumerate() {
        let ctx = data.with_outputs(&placeholders);
        let with =
            render::render_with(&stage.name, &stage.with, &ctx).map_err(|e| EngineError::BadInput(e.to_string()))?;
        let cx = ValidateCx { pipeline, stage, index, catalog: &p.catalog };
        let mut targets = match sp.kind.plan(&with, &cx) {
            Ok(lines) => lines,
            Err(problem) => vec![format!("cannot plan with.{}: {}", problem.path, problem.message)],
        };
        if let Some(c) = &stage.condition {
            targets.push(format!("runs only if `{c}`"));
        }
        let outputs = sp
            .kind
            .outputs()
            .iter()
            .map(|o| (o.to_string(), Value::String(format!("{{{{stages.{}.outputs.{o}}}}}", stage.name))))
            .collect();
        placeholders.insert(stage.name.clone(), outputs);
        stages.push(PlannedStage { name: stage.name.clone(), uses: stage.uses.clone(), with, targets });
        if opts.until.as_deref() == Some(stage.name.as_str()) {
            break;
        }
    }
    Ok(Plan { pipeline: pipeline.metadata.name.clone(), run_id, state: describe_state(p, opts), stages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_run_ids_are_dns_safe_and_time_ordered() {
        let id = generate_run_id();
        check_run_id(&id).unwrap();
        assert_eq!(id.len(), "20261125-010203-ab12".len(), "{id}");
        assert!(check_run_id("Bad_ID").is_err());
        assert!(check_run_id("-x").is_err());
    }
}
