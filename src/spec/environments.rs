//! `{{params.NAME}}` in an environment's `namespace` and `context`: one
//! pipeline file for many namespaces (`models-{{params.team}}`), rendered
//! with the pipeline's params (defaults, then `--set`) before anything
//! connects. Only params may be used: environments are resolved before any
//! stage runs, and `{{env.X}}` would make the target depend on the shell.

use std::collections::BTreeMap;

use super::Pipeline;
use crate::template::is_template;

/// True if any environment's `namespace` or `context` is a template.
pub fn has_templated_environments(pipeline: &Pipeline) -> bool {
    pipeline
        .spec
        .environments
        .values()
        .any(|e| is_template(&e.namespace) || e.context.as_deref().is_some_and(is_template))
}

/// The params an environment sees without the engine: defaults, then
/// `sets` for declared names (the engine reports undeclared ones).
pub fn environment_params(pipeline: &Pipeline, sets: &[(String, String)]) -> BTreeMap<String, String> {
    let declared = &pipeline.spec.params;
    let mut params: BTreeMap<String, String> =
        declared.iter().filter_map(|(k, p)| p.default.clone().map(|d| (k.clone(), d))).collect();
    for (k, v) in sets {
        if declared.contains_key(k) {
            params.insert(k.clone(), v.clone());
        }
    }
    params
}

/// Render `text` (the value at `path`) with `params`.
pub(super) fn render_value(text: &str, params: &BTreeMap<String, String>, path: &str) -> Result<String, String> {
    crate::template::render(text, &serde_json::json!({ "params": params }), path).map_err(|e| e.to_string())
}

/// Replace each templated `namespace` and `context` with its rendering.
/// A rendered namespace must be an RFC 1123 label.
pub fn render_environments(pipeline: &mut Pipeline, params: &BTreeMap<String, String>) -> Result<(), String> {
    for (name, env) in pipeline.spec.environments.iter_mut() {
        if is_template(&env.namespace) {
            let path = format!("spec.environments.{name}.namespace");
            let rendered = render_value(&env.namespace, params, &path)?;
            if let Some(why) = crate::names::label_problem(&rendered) {
                return Err(format!("{path}: `{}` renders to `{rendered}`, which {why}", env.namespace));
            }
            env.namespace = rendered;
        }
        if let Some(context) = env.context.as_mut().filter(|c| is_template(c)) {
            *context = render_value(context, params, &format!("spec.environments.{name}.context"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(namespace: &str) -> Pipeline {
        let text = format!(
            "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata: {{name: p}}\nspec:\n  model: {{name: m, source: 'file://m'}}\n  params:\n    ns: {{default: team-a}}\n  environments:\n    dev: {{namespace: '{namespace}', context: 'ctx-{{{{params.ns}}}}'}}\n  stages: [{{name: r, uses: render}}]\n"
        );
        crate::spec::load_str(std::path::Path::new("p.yaml"), &text).unwrap().pipeline
    }

    #[test]
    fn namespace_and_context_render_with_defaults_then_sets() {
        let mut p = pipeline("models-{{params.ns}}");
        assert!(has_templated_environments(&p));
        let params = environment_params(&p, &[("ns".into(), "b".into()), ("other".into(), "x".into())]);
        render_environments(&mut p, &params).unwrap();
        assert_eq!(p.spec.environments["dev"].namespace, "models-b");
        assert_eq!(p.spec.environments["dev"].context.as_deref(), Some("ctx-b"));
        assert!(!has_templated_environments(&p));
    }

    #[test]
    fn a_rendered_namespace_must_be_a_dns_label() {
        let mut p = pipeline("models-{{params.ns}}");
        let params = environment_params(&p, &[("ns".into(), "Team_B".into())]);
        let err = render_environments(&mut p, &params).unwrap_err();
        assert_eq!(
            err,
            "spec.environments.dev.namespace: `models-{{params.ns}}` renders to `models-Team_B`, which is not a valid name (RFC 1123 label)"
        );
    }
}
