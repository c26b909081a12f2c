//! Semantic checks on a parsed pipeline, collecting every problem.
//!
//! Pure: nothing here touches the network, a cluster or any file besides the
//! pipeline's own text (already loaded). `{{env.NAME}}` values are checked at
//! run time only, since the environment of a validating machine is not the
//! one a run sees.

use std::collections::HashMap;

use serde_json::Value;

use super::diagnostic::Diagnostic;
use super::kinds::{Problem, StageKinds, environment_problem};
use super::{API_VERSION, KIND, LoadedPipeline, SpecError};
use crate::catalog::Catalog;

/// Fields under `run.` that the engine provides to templates.
const RUN_FIELDS: &[&str] = &["id", "pipeline", "model"];

/// Check everything that can be checked without a cluster: stage names,
/// `uses`, each kind's `with:`, environments, template references.
/// More stages than anyone writes by hand; beyond it a file is a mistake or an attack.
const MAX_STAGES: usize = 200;
/// Problems reported per file; the rest are counted.
const MAX_PROBLEMS: usize = 100;

pub fn validate(loaded: &LoadedPipeline, catalog: &Catalog, kinds: &dyn StageKinds) -> Result<(), SpecError> {
    let mut c =
        Checker { loaded, kinds, diags: loaded.type_problems.clone(), discarded: Vec::new(), model_reported: false };
    c.duplicate_keys();
    c.header();
    c.model();
    c.environments();
    c.cluster_needed(catalog);
    c.params();
    c.stages(catalog);
    let mut diagnostics = c.diags;
    // Read top to bottom, whatever order the checks ran in.
    diagnostics.sort_by(|a, b| (a.line, a.col, &a.message).cmp(&(b.line, b.col, &b.message)));
    diagnostics.dedup();
    if diagnostics.len() > MAX_PROBLEMS {
        let more = diagnostics.len() - MAX_PROBLEMS;
        diagnostics.truncate(MAX_PROBLEMS);
        diagnostics.push(Diagnostic::file(&loaded.path, format!("{more} more problems not shown")));
    }
    if diagnostics.is_empty() { Ok(()) } else { Err(SpecError { diagnostics }) }
}

struct Checker<'a> {
    loaded: &'a LoadedPipeline,
    kinds: &'a dyn StageKinds,
    diags: Vec<Diagnostic>,
    /// Problems with placeholders the loader put where the file was wrong
    /// (already reported as type problems): found, never shown.
    discarded: Vec<Diagnostic>,
    /// `spec.model` already has a problem: a kind's complaint about the
    /// defaults it inherits from there would only repeat it.
    model_reported: bool,
}

impl Checker<'_> {
    /// A problem with the value at `path`.
    fn at_value(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.loaded.spans.locate_value(path);
        self.push_at(path, pos, message)
    }

    /// A problem with the key at `path` (its presence or name).
    fn at_key(&mut self, path: &str, message: impl Into<String>) -> &mut Diagnostic {
        let pos = self.loaded.spans.locate(path);
        self.push_at(path, pos, message)
    }

    /// A problem about the value at `path`, unless a placeholder stands there.
    fn push_at(&mut self, path: &str, pos: Option<(usize, usize)>, message: impl Into<String>) -> &mut Diagnostic {
        if super::recover::is_within(&self.loaded.synthetic, path) {
            let l = self.loaded;
            self.discarded.push(Diagnostic::at(&l.path, &l.source, pos, message));
            return self.discarded.last_mut().expect("just pushed");
        }
        self.push(pos, message)
    }

    fn push(&mut self, pos: Option<(usize, usize)>, message: impl Into<String>) -> &mut Diagnostic {
        let l = self.loaded;
        self.diags.push(Diagnostic::at(&l.path, &l.source, pos, message));
        self.diags.last_mut().expect("just pushed")
    }

    fn duplicate_keys(&mut self) {
        for dup in self.loaded.spans.duplicates() {
            let d = self.push(Some(dup.again), format!("duplicate key `{}`", dup.key));
            d.hint = Some(format!("first written at line {}; remove one of them", dup.first.0));
        }
    }

    fn header(&mut self) {
        let l = self.loaded;
        let p = &l.pipeline;
        if p.api_version != API_VERSION {
            self.at_value("apiVersion", format!("unsupported apiVersion `{}`", p.api_version)).hint =
                Some(format!("expected `{API_VERSION}`"));
        }
        if p.kind != KIND {
            self.at_value("kind", format!("unsupported kind `{}`", p.kind)).hint = Some(format!("expected `{KIND}`"));
        }
        if let Some(why) = crate::names::label_problem(&p.metadata.name) {
            self.at_value("metadata.name", format!("metadata.name `{}` {why}", p.metadata.name)).hint =
                Some(DNS_LABEL_HINT.into());
        }
    }

    fn model(&mut self) {
        // Placeholders count: their problem was reported by the loader.
        let before = self.diags.len() + self.discarded.len();
        self.model_checks();
        self.model_reported = self.diags.len() + self.discarded.len() > before
            || super::recover::is_within(&self.loaded.synthetic, "spec.model");
    }

    fn model_checks(&mut self) {
        let l = self.loaded;
        let m = &l.pipeline.spec.model;
        if let Some(why) = crate::names::label_problem(&m.name) {
            self.at_value("spec.model.name", format!("model name `{}` {why}", m.name)).hint =
                Some(format!("{DNS_LABEL_HINT}; it names the model's ledger and labels"));
        }
        if let Some(problem) = source_problem(&m.source) {
            self.at_value("spec.model.source", problem).hint =
                Some("use `s3://BUCKET/PREFIX/`, `s3://BUCKET/KEY`, `file://PATH`, `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `dvc:PATH`".into());
        }
        if let Some(endpoint) = &m.endpoint {
            match url::Url::parse(endpoint) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    self.at_value("spec.model.endpoint", format!("endpoint `{endpoint}` is not an http(s) URL")).hint =
                        Some("e.g. `https://s3.example.com` or `http://127.0.0.1:9000`".into())
                }
            }
        }
    }

    fn environments(&mut self) {
        let l = self.loaded;
        let spec = &l.pipeline.spec;
        for (name, env) in &spec.environments {
            if let Some(context) = env.context.as_deref().filter(|c| crate::template::is_template(c)) {
                self.environment_template(&format!("spec.environments.{name}.context"), context, false);
            }
            if crate::template::is_template(&env.namespace) {
                self.environment_template(&format!("spec.environments.{name}.namespace"), &env.namespace, true);
            } else if let Some(why) = crate::names::label_problem(&env.namespace) {
                self.at_value(
                    &format!("spec.environments.{name}.namespace"),
                    format!("namespace `{}` {why}", env.namespace),
                )
                .hint = Some(DNS_LABEL_HINT.into());
            }
        }
        if let Some(state_env) = spec.state.as_ref().and_then(|s| s.environment.as_deref())
            && !spec.environments.contains_key(state_env)
        {
            let declared = spec.environments.keys().cloned().collect::<Vec<_>>();
            let hint = did_you_mean(state_env, declared.iter().map(String::as_str))
                .unwrap_or_else(|| format!("declared: {}", list_or_none(&declared)));
            self.at_value(
                "spec.state.environment",
                format!("environment `{state_env}` is not declared in spec.environments"),
            )
            .hint = Some(hint);
        }
        // 0 would delete the record of the run that just ended.
        if spec.state.as_ref().and_then(|s| s.keep_runs) == Some(0) {
            self.at_value("spec.state.keepRuns", "keepRuns must be at least 1".to_string()).hint =
                Some("the newest N run records of the pipeline are kept; the default is 50".into());
        }
    }

    /// A templated `namespace` or `context` at `path`: only declared params,
    /// and a namespace rendered with the defaults must be a DNS label.
    fn environment_template(&mut self, path: &str, text: &str, namespace: bool) {
        let l = self.loaded;
        let spec = &l.pipeline.spec;
        let refs = match crate::template::references(text) {
            Ok(r) => r,
            Err(e) => {
                self.at_value(path, format!("invalid template: {}", e.message)).hint =
                    Some("e.g. `models-{{params.team}}`".into());
                return;
            }
        };
        let (mut ok, mut defaults) = (true, true);
        let mut seen = std::collections::HashSet::new();
        for raw in refs {
            if !seen.insert(raw.clone()) {
                continue;
            }
            let segs = segments(&raw);
            let pos = self.reference_pos(path, &raw);
            match (segs.first().map(String::as_str), segs.get(1), segs.len()) {
                (Some("params"), Some(name), 2) if spec.params.contains_key(name) => {
                    defaults &= spec.params[name].default.is_some();
                }
                (Some("params"), Some(name), 2) => {
                    ok = false;
                    let declared: Vec<String> = spec.params.keys().cloned().collect();
                    self.push(pos, format!("`{raw}`: parameter `{name}` is not declared in spec.params")).hint =
                        did_you_mean(name, declared.iter().map(String::as_str))
                            .or_else(|| Some(format!("declared: {}", list_or_none(&declared))));
                }
                _ => {
                    ok = false;
                    self.push(pos, format!("`{raw}`: only `{{{{params.NAME}}}}` may be used in {path}")).hint =
                        Some("environments are resolved before any stage runs, from the params and --set".into());
                }
            }
        }
        if !(ok && defaults && namespace) {
            return;
        }
        let params = super::environment_params(&l.pipeline, &[]);
        match super::environments::render_value(text, &params, path) {
            Ok(rendered) => {
                if let Some(why) = crate::names::label_problem(&rendered) {
                    self.at_value(
                        path,
                        format!("namespace `{text}` renders to `{rendered}` with the defaults, which {why}"),
                    )
                    .hint = Some(DNS_LABEL_HINT.into());
                }
            }
            Err(e) => {
                self.at_value(path, format!("cannot render: {e}"));
            }
        }
    }

    /// Without environments, every stage must run without a cluster.
    fn cluster_needed(&mut self, catalog: &Catalog) {
        let l = self.loaded;
        let pipeline = &l.pipeline;
        if !pipeline.spec.environments.is_empty() {
            return;
        }
        // Unknown kinds are reported as such, not as needing a cluster.
        let needs =
            (0..pipeline.spec.stages.len()).find(|&i| self.kinds.needs_cluster(pipeline, i, catalog) == Some(true));
        let Some(i) = needs else { return };
        let (name, uses) = (&pipeline.spec.stages[i].name, &pipeline.spec.stages[i].uses);
        let path = if l.spans.contains("spec.environments") { "spec.environments" } else { "spec" };
        let d = self.at_key(
            path,
            format!(
                "spec.environments declares no environment, but stage `{name}` (`{uses}`, stage {}) needs a cluster",
                i + 1
            ),
        );
        d.hint = Some(
            "declare one, e.g. `environments: { dev: { namespace: models-dev } }`; without environments only \
             local stages run (fetch-model from file:// or without credentialsSecret, render)"
                .into(),
        );
    }

    fn params(&mut self) {
        let l = self.loaded;
        for name in l.pipeline.spec.params.keys() {
            let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                self.at_key(&format!("spec.params.{name}"), format!("parameter name `{name}` cannot be referenced"))
                    .hint = Some("use letters, digits, `_` and `-`, starting with a letter".into());
            }
        }
    }

    fn stages(&mut self, catalog: &Catalog) {
        let l = self.loaded;
        let pipeline = &l.pipeline;
        let stages = &pipeline.spec.stages;
        if stages.is_empty() {
            self.at_key("spec.stages", "a pipeline needs at least one stage").hint =
                Some(format!("e.g. `- {{ name: fetch, uses: fetch-model }}`; stage kinds: {}", self.kinds_list()));
        }
        if stages.len() > MAX_STAGES {
            self.at_value(
                &format!("spec.stages[{MAX_STAGES}]"),
                format!("a pipeline has at most {MAX_STAGES} stages; this one has {}", stages.len()),
            )
            .hint = Some("split it into several pipelines".into());
            return;
        }
        let mut first_index: HashMap<&str, usize> = HashMap::new();
        for (i, stage) in stages.iter().enumerate() {
            let base = format!("spec.stages[{i}]");
            if let Some(why) = crate::names::label_problem(&stage.name) {
                self.at_value(&format!("{base}.name"), format!("stage name `{}` {why}", stage.name))
                    .in_stage_mut(&stage.name)
                    .hint = Some(DNS_LABEL_HINT.into());
            }
            if let Some(&first) = first_index.get(stage.name.as_str()) {
                let line = self.loaded.spans.locate_value(&format!("spec.stages[{first}].name")).map(|p| p.0);
                let d = self
                    .at_value(&format!("{base}.name"), format!("duplicate stage name `{}`", stage.name))
                    .in_stage_mut(&stage.name);
                d.hint = Some(match line {
                    Some(l) => format!("first used by stage {} at line {l}; stage names must be unique", first + 1),
                    None => "stage names must be unique".into(),
                });
            } else {
                first_index.insert(&stage.name, i);
            }

            match self.kinds.validate(pipeline, i, catalog) {
                None => {
                    let names = self.kinds.names();
                    let hint = did_you_mean(&stage.uses, names.iter().copied())
                        .unwrap_or_else(|| format!("stage kinds: {}", self.kinds_list()));
                    self.at_value(&format!("{base}.uses"), format!("unknown stage kind `{}`", stage.uses))
                        .in_stage_mut(&stage.name)
                        .hint = Some(hint);
                }
                Some(problems) => {
                    // Every kind takes `environment`; checking it here keeps the
                    // rule whatever a kind checks itself (duplicates are dropped).
                    if let Some(Value::String(env)) = stage.with.get("environment")
                        && let Some(problem) = environment_problem(pipeline, "environment", env)
                    {
                        self.kind_problem(&base, &stage.name, problem);
                    }
                    for problem in problems {
                        if problem.path.is_empty() && self.model_reported {
                            continue;
                        }
                        self.kind_problem(&base, &stage.name, problem);
                    }
                }
            }

            if let Some(timeout) = &stage.timeout {
                match humantime::parse_duration(timeout) {
                    Ok(d) if d.is_zero() => {
                        self.at_value(&format!("{base}.timeout"), "timeout must be longer than zero")
                            .in_stage_mut(&stage.name);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let d = self
                            .at_value(&format!("{base}.timeout"), format!("timeout `{timeout}` is not a duration: {e}"))
                            .in_stage_mut(&stage.name);
                        d.hint = Some("e.g. `90s`, `10m`, `1h 30m`".into());
                    }
                }
            }

            let mut strings = Vec::new();
            for (k, v) in &stage.with {
                strings_in(v, format!("{base}.with.{k}"), &mut strings);
            }
            if let Some(cond) = &stage.condition {
                strings.push((format!("{base}.if"), cond.as_str()));
            }
            for (path, s) in strings {
                if crate::template::is_template(s) {
                    self.template_refs(i, &path, s);
                }
            }
        }
    }

    /// A problem a stage kind found in `with:`; its path is relative to `with`.
    fn kind_problem(&mut self, base: &str, stage: &str, problem: Problem) {
        let with = format!("{base}.with");
        let full = match problem.path.as_str() {
            "" => with.clone(),
            p if p.starts_with('[') => format!("{with}{p}"),
            p => format!("{with}.{p}"),
        };
        let unknown = unknown_field(&problem.message);
        let spans = &self.loaded.spans;
        let pos = match unknown {
            // serde names the map; point at the misspelt key in it (or the key itself).
            Some(f) if spans.contains(&format!("{full}.{f}")) => spans.locate(&format!("{full}.{f}")),
            Some(_) => spans.locate(&full),
            None if problem.message.starts_with("missing field") => spans.locate(&full),
            None => spans.locate_value(&full),
        };
        let hint = problem.hint.clone().or_else(|| unknown_field_hint(&problem.message));
        let message = if problem.path.is_empty() {
            format!("with: {}", problem.message)
        } else {
            format!("with.{}: {}", problem.path, problem.message)
        };
        let d = self.push_at(&full, pos, message).in_stage_mut(stage);
        d.hint = hint;
    }

    /// Check every reference in the template string at `path` (stage `i`).
    fn template_refs(&mut self, i: usize, path: &str, text: &str) {
        let stage = self.loaded.pipeline.spec.stages[i].name.clone();
        let refs = match crate::template::references(text) {
            Ok(r) => r,
            Err(e) => {
                self.at_value(path, format!("invalid template: {}", e.message)).in_stage_mut(&stage).hint =
                    Some("values use handlebars, e.g. `{{stages.build.outputs.imageDigest}}`".into());
                return;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for raw in refs {
            // One report per distinct reference, and a bounded number in all:
            // a value repeating `{{x}}` fifty thousand times is one mistake.
            if !seen.insert(raw.clone()) || self.diags.len() >= MAX_PROBLEMS {
                continue;
            }
            if let Some((message, hint)) = self.reference_problem(i, &raw) {
                let pos = self.reference_pos(path, &raw);
                let d = self.push(pos, message).in_stage_mut(&stage);
                d.hint = hint;
            }
        }
    }

    /// The position of `raw` inside the value at `path` when it sits on the
    /// value's first line; else the value's start.
    fn reference_pos(&self, path: &str, raw: &str) -> Option<(usize, usize)> {
        let (line, col) = self.loaded.spans.locate_value(path)?;
        let text = self.loaded.source.lines().nth(line - 1)?;
        let from: usize = text.char_indices().nth(col - 1).map(|(b, _)| b)?;
        // The reference as a whole word: `env` must not match in `environment`.
        let word = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '[' | ']' | '/' | '@');
        let rest = &text[from..];
        let found = rest.match_indices(raw).map(|(i, _)| i).find(|&i| {
            !rest[..i].chars().next_back().is_some_and(word) && !rest[i + raw.len()..].chars().next().is_some_and(word)
        })?;
        Some((line, col + rest[..found].chars().count()))
    }

    /// What is wrong with reference `raw` in stage `i`, if anything.
    fn reference_problem(&self, i: usize, raw: &str) -> Option<(String, Option<String>)> {
        let spec = &self.loaded.pipeline.spec;
        let segs = segments(raw);
        let seg = |n: usize| segs.get(n).map(String::as_str);
        let roots = "references start with `stages.`, `params.`, `env.` or `run.`";
        match seg(0) {
            Some("stages") => {
                let (Some(name), Some("outputs"), Some(output)) = (seg(1), seg(2), seg(3)) else {
                    return Some((
                        format!("incomplete reference `{raw}`"),
                        Some("stage outputs are referenced as `{{stages.NAME.outputs.OUTPUT}}`".into()),
                    ));
                };
                let Some(j) = spec.stages.iter().position(|s| s.name == name) else {
                    let earlier = spec.stages[..i].iter().map(|s| s.name.as_str());
                    return Some((
                        format!("`{raw}`: no stage named `{name}`"),
                        did_you_mean(name, earlier)
                            .or_else(|| Some(format!("earlier stages: {}", list_or_none(&earlier_names(spec, i))))),
                    ));
                };
                if j == i {
                    return Some((
                        format!("`{raw}`: a stage cannot use its own outputs"),
                        Some("outputs exist only after the stage has run".into()),
                    ));
                }
                if j > i {
                    return Some((
                        format!("`{raw}`: stage `{name}` comes after this one"),
                        Some(format!(
                            "only earlier stages' outputs exist here; move `{name}` before this stage or drop the reference"
                        )),
                    ));
                }
                let kind = spec.stages[j].uses.as_str();
                let outputs = self.kinds.outputs(kind)?; // unknown kinds are reported apart
                if !outputs.contains(&output) {
                    let hint = did_you_mean(output, outputs.iter().copied()).unwrap_or_else(|| {
                        format!(
                            "`{kind}` outputs: {}",
                            list_or_none(&outputs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                        )
                    });
                    return Some((format!("`{raw}`: stage `{name}` (`{kind}`) has no output `{output}`"), Some(hint)));
                }
                None
            }
            Some("params") => {
                let Some(name) = seg(1) else {
                    return Some((
                        format!("incomplete reference `{raw}`"),
                        Some("parameters are referenced as `{{params.NAME}}`".into()),
                    ));
                };
                if spec.params.contains_key(name) {
                    return None;
                }
                let declared: Vec<String> = spec.params.keys().cloned().collect();
                Some((
                    format!("`{raw}`: parameter `{name}` is not declared in spec.params"),
                    did_you_mean(name, declared.iter().map(String::as_str))
                        .or_else(|| Some(format!("declared: {}", list_or_none(&declared)))),
                ))
            }
            // Process environment: known only at run time.
            Some("env") if segs.len() == 2 => None,
            Some("env") => Some((
                format!("invalid reference `{raw}`"),
                Some("environment variables are referenced as `{{env.NAME}}`".into()),
            )),
            Some("run") if segs.len() == 2 && RUN_FIELDS.contains(&segs[1].as_str()) => None,
            Some("run") => Some((
                format!("invalid reference `{raw}`"),
                Some("run fields: `run.id`, `run.pipeline`, `run.model`".into()),
            )),
            _ => Some((format!("unknown reference `{raw}`"), Some(roots.into()))),
        }
    }
}

trait InStage {
    fn in_stage_mut(&mut self, stage: &str) -> &mut Self;
}

impl InStage for Diagnostic {
    fn in_stage_mut(&mut self, stage: &str) -> &mut Self {
        self.stage = Some(stage.to_string());
        self
    }
}

fn earlier_names(spec: &super::PipelineSpec, i: usize) -> Vec<String> {
    spec.stages[..i].iter().map(|s| s.name.clone()).collect()
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "(none)".into()
    } else {
        items.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
    }
}

impl Checker<'_> {
    fn kinds_list(&self) -> String {
        self.kinds.names().join(", ")
    }
}

/// Every string below `v` with its dotted path.
fn strings_in<'v>(v: &'v Value, path: String, out: &mut Vec<(String, &'v str)>) {
    // Explicit stack: `with:` values can nest as deep as serde_yaml allows.
    let mut todo = vec![(path, v)];
    while let Some((path, v)) = todo.pop() {
        match v {
            Value::String(s) => out.push((path, s)),
            Value::Array(items) => {
                todo.extend(items.iter().enumerate().rev().map(|(n, item)| (format!("{path}[{n}]"), item)))
            }
            Value::Object(map) => todo.extend(map.iter().rev().map(|(k, item)| (format!("{path}.{k}"), item))),
            _ => {}
        }
    }
}

/// Split a handlebars path into segments: `a.b`, `a/b` and `a.[b.c]`.
fn segments(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '[' if cur.is_empty() => {
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '.' | '/' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

const DNS_LABEL_HINT: &str =
    "use at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit";

/// What is wrong with a model source, if anything.
fn source_problem(source: &str) -> Option<String> {
    if let Some(rest) = source.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or_default();
        if bucket.is_empty() {
            return Some(format!("model source `{source}` names no bucket"));
        }
        return None;
    }
    if let Some(rest) = source.strip_prefix("file://").or_else(|| source.strip_prefix("dvc:")) {
        if rest.is_empty() {
            return Some(format!("model source `{source}` names no path"));
        }
        return None;
    }
    // The grammar of `models:/` is fetch-model's to check (storage::mlflow).
    if let Some(rest) = source.strip_prefix("models:/") {
        if rest.is_empty() {
            return Some(format!("model source `{source}` names no model"));
        }
        return None;
    }
    let scheme = source.split_once("://").map(|(s, _)| s);
    Some(match scheme {
        Some(s) => format!("model source `{source}` has unsupported scheme `{s}`"),
        None => format!("model source `{source}` has no scheme"),
    })
}

/// `unknown field `x`, expected ...` -> `x`.
fn unknown_field(message: &str) -> Option<&str> {
    let start = message.find("unknown field `")? + "unknown field `".len();
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// "did you mean `y`?" from serde's "unknown field `x`, expected one of `y`, `z`".
pub(super) fn unknown_field_hint(message: &str) -> Option<String> {
    let field = unknown_field(message)?;
    let (_, expected) = message.split_once("expected ")?;
    let expected = expected.strip_prefix("one of ").unwrap_or(expected);
    let candidates: Vec<&str> =
        expected.split([',', ' ']).map(|s| s.trim_matches('`')).filter(|s| !s.is_empty() && *s != "or").collect();
    // Without a close match the message already lists what is expected.
    did_you_mean(field, candidates.into_iter())
}

/// "did you mean `x`?" for the closest candidate, if one is close enough.
pub(super) fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<String> {
    crate::suggest::did_you_mean(word, candidates)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A valid pipeline using only `with:` keys every kind accepts.
    pub(crate) const GOOD: &str = "\
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata:
  name: weather
spec:
  model:
    name: weather
    source: s3://models/weather/
  params:
    tag:
      default: latest
  environments:
    dev:
      namespace: models-dev
    prod:
      namespace: models-prod
  stages:
    - { name: fetch, uses: fetch-model }
    - { name: render, uses: render }
    - name: build
      uses: openshift-build
      with:
        environment: dev
    - name: deploy
      uses: seldon-deploy
      timeout: 10m
      if: \"{{params.tag}}\"
      with:
        environment: \"{{params.tag}}\"
";

    /// `file:line:col: [stage `x`: ]message` of each problem.
    fn problems(text: &str) -> Vec<String> {
        let loaded = super::super::load_str(Path::new("p.yaml"), text).expect("parses");
        match validate(&loaded, &Catalog::embedded(), &crate::stages::Registry) {
            Ok(()) => Vec::new(),
            Err(e) => e.diagnostics.iter().map(|d| d.to_string().lines().next().unwrap().to_string()).collect(),
        }
    }

    fn hints(text: &str) -> Vec<Option<String>> {
        let loaded = super::super::load_str(Path::new("p.yaml"), text).expect("parses");
        validate(&loaded, &Catalog::embedded(), &crate::stages::Registry)
            .unwrap_err()
            .diagnostics
            .into_iter()
            .map(|d| d.hint)
            .collect()
    }

    #[test]
    fn good_pipeline_is_valid() {
        assert_eq!(problems(GOOD), Vec::<String>::new());
    }

    #[test]
    fn wrong_api_version_and_kind() {
        let t = GOOD.replace("modelship.io/v1alpha1", "modelship.io/v2").replace("kind: Pipeline", "kind: Pipe");
        assert_eq!(
            problems(&t),
            vec!["p.yaml:1:13: unsupported apiVersion `modelship.io/v2`", "p.yaml:2:7: unsupported kind `Pipe`"]
        );
    }

    #[test]
    fn metadata_name_must_be_a_dns_label() {
        let t = GOOD.replace("  name: weather\nspec", "  name: Weather_1\nspec");
        assert_eq!(problems(&t), vec!["p.yaml:4:9: metadata.name `Weather_1` is not a valid name (RFC 1123 label)"]);
    }

    #[test]
    fn empty_stages() {
        let t = GOOD.split("  stages:").next().unwrap().to_string() + "  stages: []\n";
        assert_eq!(problems(&t), vec!["p.yaml:17:3: a pipeline needs at least one stage"]);
    }

    #[test]
    fn duplicate_stage_names_point_at_the_second_and_name_the_first() {
        let t = GOOD.replace("name: build", "name: fetch");
        assert_eq!(problems(&t), vec!["p.yaml:20:13: stage `fetch`: duplicate stage name `fetch`"]);
        assert_eq!(hints(&t), vec![Some("first used by stage 1 at line 18; stage names must be unique".into())]);
    }

    #[test]
    fn unknown_uses_suggests_the_closest_kind() {
        let t = GOOD.replace("uses: openshift-build", "uses: opnshift-build");
        assert_eq!(problems(&t), vec!["p.yaml:21:13: stage `build`: unknown stage kind `opnshift-build`"]);
        assert_eq!(hints(&t), vec![Some("did you mean `openshift-build`?".into())]);
    }

    #[test]
    fn unknown_uses_far_from_any_kind_lists_the_kinds() {
        let t = GOOD.replace("uses: openshift-build", "uses: zzz");
        let h = hints(&t)[0].clone().unwrap();
        assert!(h.starts_with("stage kinds: fetch-model, render"), "{h}");
    }

    #[test]
    fn unknown_with_key_points_at_the_key_with_a_suggestion() {
        let t = GOOD.replace("        environment: dev", "        environmnt: dev");
        let p = problems(&t);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("p.yaml:23:9: stage `build`: with"), "{p:?}");
        assert!(p[0].contains("unknown field `environmnt`"), "{p:?}");
        assert_eq!(hints(&t), vec![Some("did you mean `environment`?".into())]);
    }

    #[test]
    fn wrong_type_in_with_points_at_the_value() {
        let t = GOOD.replace("        environment: dev", "        environment: [dev]");
        let p = problems(&t);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("p.yaml:23:22: stage `build`: with.environment: invalid type"), "{p:?}");
    }

    #[test]
    fn undeclared_environment_points_at_the_value() {
        let t = GOOD.replace("        environment: dev", "        environment: staging");
        assert_eq!(
            problems(&t),
            vec![
                "p.yaml:23:22: stage `build`: with.environment: environment `staging` is not declared in spec.environments"
            ]
        );
        assert_eq!(hints(&t), vec![Some("declared: dev, prod".into())]);
    }

    #[test]
    fn timeout_must_parse() {
        let t = GOOD.replace("timeout: 10m", "timeout: ten minutes");
        let p = problems(&t);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("p.yaml:26:16: stage `deploy`: timeout `ten minutes` is not a duration"), "{p:?}");
        let t = GOOD.replace("timeout: 10m", "timeout: 0s");
        assert_eq!(problems(&t), vec!["p.yaml:26:16: stage `deploy`: timeout must be longer than zero"]);
    }

    #[test]
    fn reference_to_a_later_stage_comes_after() {
        let t = GOOD.replace("uses: fetch-model }", "uses: fetch-model, if: \"{{stages.build.outputs.image}}\" }");
        assert_eq!(
            problems(&t),
            vec!["p.yaml:18:48: stage `fetch`: `stages.build.outputs.image`: stage `build` comes after this one"]
        );
    }

    #[test]
    fn reference_to_a_missing_stage_says_no_stage_named() {
        let t = GOOD.replace("if: \"{{params.tag}}\"", "if: \"{{stages.biuld.outputs.image}}\"");
        assert_eq!(
            problems(&t),
            vec!["p.yaml:27:14: stage `deploy`: `stages.biuld.outputs.image`: no stage named `biuld`"]
        );
        assert_eq!(hints(&t), vec![Some("did you mean `build`?".into())]);
    }

    #[test]
    fn reference_to_an_unknown_output_lists_the_outputs() {
        let t = GOOD.replace("if: \"{{params.tag}}\"", "if: \"x {{stages.build.outputs.digest}}\"");
        assert_eq!(
            problems(&t),
            vec![
                "p.yaml:27:16: stage `deploy`: `stages.build.outputs.digest`: stage `build` (`openshift-build`) has no output `digest`"
            ]
        );
        let t = GOOD.replace("if: \"{{params.tag}}\"", "if: \"{{stages.build.outputs.imageDigets}}\"");
        assert_eq!(hints(&t), vec![Some("did you mean `imageDigest`?".into())]);
    }

    #[test]
    fn reference_to_own_outputs_is_refused() {
        let t = GOOD.replace("if: \"{{params.tag}}\"", "if: \"{{stages.deploy.outputs.endpoint}}\"");
        assert_eq!(
            problems(&t),
            vec!["p.yaml:27:14: stage `deploy`: `stages.deploy.outputs.endpoint`: a stage cannot use its own outputs"]
        );
    }

    #[test]
    fn earlier_output_reference_in_a_nested_with_value_is_fine() {
        let t = GOOD.replace(
            "        environment: \"{{params.tag}}\"",
            "        environment: \"{{#if stages.build.outputs.imageDigest}}dev{{/if}}\"",
        );
        assert_eq!(problems(&t), Vec::<String>::new());
    }

    #[test]
    fn undeclared_param_and_unknown_root_and_env_and_run() {
        let t = GOOD.replace(
            "        environment: \"{{params.tag}}\"",
            "        environment: \"{{params.tga}}{{secrets.x}}{{env.HOME}}{{env}}{{run.id}}{{run.nope}}\"",
        );
        assert_eq!(
            problems(&t),
            vec![
                "p.yaml:29:25: stage `deploy`: `params.tga`: parameter `tga` is not declared in spec.params",
                "p.yaml:29:39: stage `deploy`: unknown reference `secrets.x`",
                "p.yaml:29:64: stage `deploy`: invalid reference `env`",
                "p.yaml:29:81: stage `deploy`: invalid reference `run.nope`",
            ]
        );
        assert_eq!(hints(&t)[0], Some("did you mean `tag`?".into()));
    }

    #[test]
    fn invalid_template_syntax() {
        let t = GOOD.replace("if: \"{{params.tag}}\"", "if: \"{{#if params.tag}}\"");
        let p = problems(&t);
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("p.yaml:27:11: stage `deploy`: invalid template:"), "{p:?}");
    }

    #[test]
    fn each_injection_in_a_value_is_reported_not_rendered() {
        let t = GOOD.replace("if: \"{{params.tag}}\"", "if: \"{{#each stages}}{{this}}{{/each}}\"");
        assert_eq!(problems(&t), vec!["p.yaml:27:20: stage `deploy`: incomplete reference `stages`"]);
    }

    #[test]
    fn model_source_scheme() {
        let t = GOOD.replace("s3://models/weather/", "http://models/weather/");
        assert_eq!(
            problems(&t),
            vec!["p.yaml:8:13: model source `http://models/weather/` has unsupported scheme `http`"]
        );
        let t = GOOD.replace("s3://models/weather/", "s3:///weather/");
        assert_eq!(problems(&t), vec!["p.yaml:8:13: model source `s3:///weather/` names no bucket"]);
        let t = GOOD.replace("s3://models/weather/", "file://./models/weather");
        assert_eq!(problems(&t), Vec::<String>::new());
    }

    /// An approval policy's problems point at their YAML, like any `with:` key's.
    #[test]
    fn approval_policy_problems_have_positions() {
        let t = "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: { name: weather }
spec:
  model: { name: weather, source: 'file://m' }
  environments:
    dev: { namespace: models-dev }
    prod: { namespace: models-prod }
  stages:
    - name: promote
      uses: promote
      with:
        from: dev
        to: prod
        approval:
          required: 3
          approvers: [alice, bob]
";
        assert_eq!(
            problems(t),
            [
                "p.yaml:16:21: stage `promote`: with.approval.required: 3 approvals are required but `approvers` names only 2 user(s)"
            ]
        );
        let misspelt = t.replace("          approvers: [alice, bob]\n", "          aprovers: [alice, bob]\n");
        assert_eq!(hints(&misspelt), vec![Some("did you mean `approvers`?".to_string())]);
    }

    #[test]
    fn state_environment_must_be_declared() {
        let t = GOOD.replace("  stages:\n", "  state:\n    environment: dve\n  stages:\n");
        assert_eq!(problems(&t), vec!["p.yaml:18:18: environment `dve` is not declared in spec.environments"]);
        assert_eq!(hints(&t), vec![Some("did you mean `dev`?".into())]);
    }

    #[test]
    fn duplicate_keys_in_with_are_reported() {
        let t = GOOD.replace("        environment: dev", "        environment: dev\n        environment: prod");
        assert_eq!(problems(&t), vec!["p.yaml:24:9: duplicate key `environment`"]);
    }

    #[test]
    fn all_problems_are_collected_in_source_order() {
        let t = GOOD
            .replace("kind: Pipeline", "kind: Pipe")
            .replace("uses: openshift-build", "uses: opnshift-build")
            .replace("name: deploy", "name: fetch")
            .replace("timeout: 10m", "timeout: soon");
        let p = problems(&t);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert!(p[0].starts_with("p.yaml:2:"));
        assert!(p[1].starts_with("p.yaml:21:"));
        assert!(p[2].starts_with("p.yaml:24:"));
        assert!(p[3].starts_with("p.yaml:26:"));
    }

    #[test]
    fn names_that_become_kubernetes_names_must_be_dns_labels() {
        let t = GOOD.replace("namespace: models-dev", "namespace: Models_Dev").replace("name: build", "name: Build");
        assert_eq!(
            problems(&t),
            vec![
                "p.yaml:14:18: namespace `Models_Dev` is not a valid name (RFC 1123 label)",
                "p.yaml:20:13: stage `Build`: stage name `Build` is not a valid name (RFC 1123 label)",
            ]
        );
        let t = GOOD.replace("    name: weather\n    source", "    name: -weather\n    source");
        assert_eq!(problems(&t), vec!["p.yaml:7:11: model name `-weather` must start and end with a letter or digit"]);
    }

    #[test]
    fn param_names_must_be_referenceable() {
        let t = GOOD.replace("    tag:\n", "    tag:\n      default: x\n    a.b:\n");
        let p = problems(&t);
        assert_eq!(p[0], "p.yaml:12:5: parameter name `a.b` cannot be referenced", "{p:?}");
    }

    #[test]
    fn model_endpoint_must_be_an_http_url() {
        let t = GOOD.replace(
            "    source: s3://models/weather/\n",
            "    source: s3://models/weather/\n    endpoint: s3.local\n",
        );
        assert_eq!(problems(&t), vec!["p.yaml:9:15: endpoint `s3.local` is not an http(s) URL"]);
    }

    #[test]
    fn environments_may_be_left_out_only_when_no_stage_needs_a_cluster() {
        let local = "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: {name: w}\nspec:\n  model: {name: w, source: 'file://m'}\n  stages:\n    - {name: fetch, uses: fetch-model}\n    - {name: render, uses: render}\n";
        assert_eq!(problems(local), Vec::<String>::new());
        let secret = local.replace("source: 'file://m'", "source: 's3://b/m/', credentialsSecret: s3");
        let p = problems(&secret);
        assert!(
            p.iter().any(|l| l.starts_with(
                "p.yaml:4:1: spec.environments declares no environment, but stage `fetch` (`fetch-model`, stage 1) needs a cluster"
            )),
            "{p:#?}"
        );
        let build = format!("{local}    - {{name: build, uses: openshift-build}}\n");
        assert_eq!(
            problems(&build),
            vec![
                "p.yaml:4:1: spec.environments declares no environment, but stage `build` (`openshift-build`, stage 3) needs a cluster"
            ]
        );
    }

    #[test]
    fn a_templated_namespace_takes_declared_params_only() {
        let t = GOOD.replace("namespace: models-dev", "namespace: \"models-{{params.tag}}\"");
        assert_eq!(problems(&t), Vec::<String>::new());
        let t = GOOD.replace("namespace: models-dev", "namespace: \"models-{{run.id}}\"");
        assert_eq!(
            problems(&t),
            vec!["p.yaml:14:28: `run.id`: only `{{params.NAME}}` may be used in spec.environments.dev.namespace"]
        );
        let t = GOOD
            .replace("default: latest", "default: Latest")
            .replace("namespace: models-dev", "namespace: \"models-{{params.tag}}\"");
        assert_eq!(
            problems(&t),
            vec![
                "p.yaml:14:18: namespace `models-{{params.tag}}` renders to `models-Latest` with the defaults, which is not a valid name (RFC 1123 label)"
            ]
        );
    }

    #[test]
    fn did_you_mean_picks_the_closest_within_reach() {
        assert_eq!(did_you_mean("rendr", crate::stages::Kind::names()), Some("did you mean `render`?".into()));
        assert_eq!(did_you_mean("kubernetes", crate::stages::Kind::names()), None);
    }

    #[test]
    fn segments_split_dots_slashes_and_brackets() {
        assert_eq!(segments("stages.[a.b].outputs/x"), vec!["stages", "a.b", "outputs", "x"]);
    }
}
