//! A Task's step as Tekton would run it for a PipelineRun: the PipelineRun's
//! params (or the Pipeline's defaults) substituted into the pipeline task's
//! params, those (or the Task's defaults) into the step, with the
//! workspaces' paths, `bound`, `$(context.taskRun.name)` and the results'
//! paths. The rules are tektoncd/pipeline's: `pkg/substitution`
//! (`ApplyReplacements`: every `$(KEY)` in one pass; `ApplyArrayReplacements`:
//! an element that is exactly `$(params.X[*])` or `$(params.X)` becomes the
//! array's items), `pkg/reconciler/taskrun/resources/apply.go` (the
//! `params.X` / `params["X"]` / `params['X']` forms, defaults,
//! `workspaces.X.path|bound` with an unbound optional workspace `false` and
//! `""`, `results.X.path` = `/tekton/results/X`, `context.taskRun.name`).
//! A step with `script` gets its `args` as the script's arguments.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// String and array replacements, keyed without `$( )`.
#[derive(Default, Debug)]
pub struct Replacements {
    strings: BTreeMap<String, String>,
    arrays: BTreeMap<String, Vec<String>>,
}

impl Replacements {
    fn param(&mut self, name: &str, value: &Value) {
        let keys = [format!("params.{name}"), format!("params[\"{name}\"]"), format!("params['{name}']")];
        match value {
            Value::String(s) => keys.into_iter().for_each(|k| {
                self.strings.insert(k, s.clone());
            }),
            Value::Array(items) => {
                let items: Vec<String> =
                    items.iter().map(|v| v.as_str().expect("array params hold strings").to_string()).collect();
                for k in keys {
                    for (i, v) in items.iter().enumerate() {
                        self.strings.insert(format!("{k}[{i}]"), v.clone());
                    }
                    self.arrays.insert(k, items.clone());
                }
            }
            other => panic!("param {name}: object params are not used here: {other}"),
        }
    }

    /// `ApplyReplacements`: one pass, longest key first at each position.
    pub fn apply(&self, input: &str) -> String {
        let mut out = String::new();
        let mut rest = input;
        'outer: while let Some(i) = rest.find("$(") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let mut keys: Vec<&String> = self.strings.keys().collect();
            keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
            for k in keys {
                if after.starts_with(k.as_str()) && after[k.len()..].starts_with(')') {
                    out.push_str(&self.strings[k]);
                    rest = &after[k.len() + 1..];
                    continue 'outer;
                }
            }
            out.push_str("$(");
            rest = after;
        }
        out.push_str(rest);
        out
    }

    /// `ApplyArrayReplacements` over a list.
    pub fn apply_list(&self, items: &[Value]) -> Vec<String> {
        let mut out = Vec::new();
        for item in items {
            let s = item.as_str().expect("list items are strings");
            let whole = self.arrays.iter().find(|(k, _)| s == format!("$({k})") || s == format!("$({k}[*])"));
            match whole {
                Some((_, v)) => out.extend(v.iter().cloned()),
                None => out.push(self.apply(s)),
            }
        }
        out
    }
}

fn params_of(v: &Value) -> Vec<(String, Value)> {
    v.as_array().into_iter().flatten().map(|p| (p["name"].as_str().unwrap().to_string(), p["value"].clone())).collect()
}

/// Declared params (`spec.params`) with the given values, else defaults.
fn declared(spec: &Value, given: &[(String, Value)], what: &str) -> Replacements {
    let mut r = Replacements::default();
    for decl in spec["params"].as_array().into_iter().flatten() {
        let name = decl["name"].as_str().unwrap();
        let value = given
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| decl.get("default").cloned())
            .unwrap_or_else(|| panic!("{what}: param {name} has no value and no default"));
        r.param(name, &value);
    }
    for (name, _) in given {
        assert!(
            spec["params"].as_array().into_iter().flatten().any(|d| d["name"] == name.as_str()),
            "{what}: param {name} is not declared"
        );
    }
    r
}

/// The step, ready to run.
#[derive(Debug)]
pub struct Step {
    pub script: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: PathBuf,
}

/// Step `step` of the Task `task`, run as pipeline task `pipeline_task` of
/// `pipeline` for `run`; workspace `W` of the Pipeline is at `dirs[W]` when
/// the PipelineRun binds it, results go to `results/NAME`.
pub fn resolve(
    run: &Value,
    pipeline: &Value,
    pipeline_task: &str,
    task: &Value,
    dirs: &BTreeMap<String, PathBuf>,
    results: &Path,
) -> Step {
    let run_name = run["metadata"]["name"].as_str().expect("a created PipelineRun has a name");
    let pspec = &pipeline["spec"];
    let pipeline_params = declared(pspec, &params_of(&run["spec"]["params"]), "Pipeline");
    let pt = pspec["tasks"].as_array().unwrap().iter().find(|t| t["name"] == pipeline_task).expect("the pipeline task");
    assert_eq!(pt["taskRef"]["name"], task["metadata"]["name"], "pipeline task {pipeline_task} runs another Task");
    // The pipeline task's params with the PipelineRun's values in them.
    let mut given = Vec::new();
    for (name, value) in params_of(&pt["params"]) {
        let v = match &value {
            Value::String(s) => Value::String(pipeline_params.apply(s)),
            Value::Array(items) => {
                Value::Array(pipeline_params.apply_list(items).into_iter().map(Value::String).collect())
            }
            other => other.clone(),
        };
        assert!(!v.to_string().contains("$("), "{name}: unresolved {v} (only params are resolved here)");
        given.push((name, v));
    }
    let tspec = &task["spec"];
    let mut r = declared(tspec, &given, "Task");
    // Workspaces: the task's name -> the pipeline's -> bound by the run?
    let bound: Vec<&str> =
        run["spec"]["workspaces"].as_array().into_iter().flatten().map(|w| w["name"].as_str().unwrap()).collect();
    for decl in tspec["workspaces"].as_array().into_iter().flatten() {
        let name = decl["name"].as_str().unwrap();
        let mapped = pt["workspaces"].as_array().into_iter().flatten().find(|w| w["name"] == name);
        let pipeline_ws = mapped.and_then(|w| w["workspace"].as_str());
        let dir = pipeline_ws
            .filter(|w| bound.contains(w))
            .map(|w| dirs.get(w).unwrap_or_else(|| panic!("no dir for workspace {w}")));
        let optional = decl["optional"].as_bool().unwrap_or(false);
        match dir {
            Some(d) => {
                r.strings.insert(format!("workspaces.{name}.bound"), "true".into());
                r.strings.insert(format!("workspaces.{name}.path"), d.display().to_string());
            }
            None => {
                assert!(optional, "workspace {name} of the Task is required and not bound");
                r.strings.insert(format!("workspaces.{name}.bound"), "false".into());
                r.strings.insert(format!("workspaces.{name}.path"), String::new());
            }
        }
    }
    for res in tspec["results"].as_array().into_iter().flatten() {
        let name = res["name"].as_str().unwrap();
        r.strings.insert(format!("results.{name}.path"), results.join(name).display().to_string());
    }
    // The TaskRun the PipelineRun makes for the pipeline task: `<run>-<task>`.
    r.strings.insert("context.taskRun.name".into(), format!("{run_name}-{pipeline_task}"));
    let step = &tspec["steps"][0];
    let env = step["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap().to_string(), r.apply(e["value"].as_str().unwrap_or(""))))
        .collect();
    let args = r.apply_list(step["args"].as_array().map(Vec::as_slice).unwrap_or(&[]));
    Step {
        script: r.apply(step["script"].as_str().expect("a script step")),
        args,
        env,
        working_dir: PathBuf::from(r.apply(step["workingDir"].as_str().unwrap_or("/workspace"))),
    }
}
