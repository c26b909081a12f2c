//! Rendering `with:` values and `if:` conditions against the run's context.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::stages::Outputs;
use crate::template::{self, TemplateError};

/// What `{{...}}` in a pipeline can see: `params`, `stages.NAME.outputs`,
/// `env`, `run.{id,pipeline,model}`.
pub(crate) struct RenderData {
    pub params: BTreeMap<String, String>,
    pub env: Map<String, Value>,
    pub run: Value,
}

impl RenderData {
    pub fn new(
        params: BTreeMap<String, String>,
        env: Map<String, Value>,
        run_id: &str,
        pipeline: &str,
        model: &str,
    ) -> Self {
        RenderData { params, env, run: json!({ "id": run_id, "pipeline": pipeline, "model": model }) }
    }

    /// The handlebars data with the outputs of the stages so far.
    pub fn with_outputs(&self, outputs: &BTreeMap<String, Outputs>) -> Value {
        let stages: Map<String, Value> =
            outputs.iter().map(|(name, o)| (name.clone(), json!({ "outputs": o }))).collect();
        json!({ "params": self.params, "stages": stages, "env": self.env, "run": self.run })
    }
}

/// The process environment as template data.
pub(crate) fn process_env() -> Map<String, Value> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, Value::String(v.into_string().ok()?))))
        .collect()
}

/// Every string in `with` rendered strictly; keys are left alone. Errors name
/// the stage and the key path (`stage `build`, with.image`).
pub(crate) fn render_with(
    stage: &str,
    with: &Map<String, Value>,
    data: &Value,
) -> Result<Map<String, Value>, TemplateError> {
    let mut out = Map::new();
    for (k, v) in with {
        out.insert(k.clone(), render_value(v, data, &format!("with.{k}"), stage)?);
    }
    Ok(out)
}

fn render_value(v: &Value, data: &Value, path: &str, stage: &str) -> Result<Value, TemplateError> {
    Ok(match v {
        Value::String(s) if template::is_template(s) => {
            Value::String(template::render(s, data, &format!("stage `{stage}`, {path}"))?)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| render_value(item, data, &format!("{path}[{i}]"), stage))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, item)| Ok((k.clone(), render_value(item, data, &format!("{path}.{k}"), stage)?)))
                .collect::<Result<_, TemplateError>>()?,
        ),
        other => other.clone(),
    })
}

/// `if:` rendered; the stage runs unless it renders to "", "false" or "0".
pub(crate) fn condition_holds(stage: &str, condition: &str, data: &Value) -> Result<bool, TemplateError> {
    let rendered = template::render(condition, data, &format!("stage `{stage}`, if"))?;
    Ok(!matches!(rendered.trim(), "" | "false" | "0"))
}

/// Environment variable names referenced as `{{env.NAME}}` anywhere in a
/// stage's `with:` or `if:`.
pub(crate) fn env_references(with: &Map<String, Value>, condition: Option<&str>) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => push(s, out),
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(m) => m.values().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    fn push(s: &str, out: &mut Vec<String>) {
        if !template::is_template(s) {
            return;
        }
        for r in template::references(s).unwrap_or_default() {
            if let Some(name) = r.strip_prefix("env.") {
                out.push(name.to_string());
            }
        }
    }
    let mut out = Vec::new();
    with.values().for_each(|v| walk(v, &mut out));
    if let Some(c) = condition {
        push(c, &mut out);
    }
    out
}

/// Names of variables that by convention hold credentials; their values
/// are registered with [`crate::secret`] when a pipeline reads them.
pub(crate) fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["SECRET", "TOKEN", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL", "AUTH", "PRIVATE"].iter().any(|w| upper.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Value {
        let rd = RenderData::new(BTreeMap::from([("tag".into(), "v2".into())]), Map::new(), "r1", "weather", "weather");
        let outputs =
            BTreeMap::from([("build".to_string(), Outputs::from([("imageDigest".into(), json!("sha256:ab"))]))]);
        rd.with_outputs(&outputs)
    }

    #[test]
    fn nested_strings_render_and_others_pass_through() {
        let with = json!({"image": "x@{{stages.build.outputs.imageDigest}}", "n": 3,
            "cases": [{"tag": "{{params.tag}}-{{run.id}}"}]});
        let out = render_with("deploy", with.as_object().unwrap(), &data()).unwrap();
        assert_eq!(Value::Object(out), json!({"image": "x@sha256:ab", "n": 3, "cases": [{"tag": "v2-r1"}]}));
    }

    #[test]
    fn strict_error_names_stage_and_key() {
        let with = json!({"cases": [{"x": "{{stages.nope.outputs.y}}"}]});
        let err = render_with("deploy", with.as_object().unwrap(), &data()).unwrap_err();
        assert!(err.to_string().starts_with("stage `deploy`, with.cases[0].x"), "{err}");
    }

    #[test]
    fn conditions() {
        assert!(!condition_holds("s", "{{#if false}}yes{{/if}}", &data()).unwrap());
        assert!(condition_holds("s", "{{params.tag}}", &data()).unwrap());
        assert!(!condition_holds("s", " false ", &data()).unwrap());
        assert!(!condition_holds("s", "0", &data()).unwrap());
    }

    #[test]
    fn env_references_and_secret_names() {
        let with = json!({"a": "{{env.AWS_SECRET_ACCESS_KEY}}", "b": ["{{env.HOME}}"]});
        let refs = env_references(with.as_object().unwrap(), Some("{{env.FLAG}}"));
        assert_eq!(refs, ["AWS_SECRET_ACCESS_KEY", "HOME", "FLAG"]);
        assert!(looks_secret("AWS_SECRET_ACCESS_KEY") && looks_secret("gh_token") && !looks_secret("HOME"));
    }
}
