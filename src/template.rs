//! Strict handlebars rendering with HTML escaping off, shared by the engine
//! (`with:` values) and the stages (Dockerfiles, manifests). A reference to
//! something that does not exist is an error, never a blank.

use handlebars::Handlebars;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct TemplateError {
    /// Template file or the place a value came from (`stage build, with.image`).
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

fn registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    hb.register_escape_fn(handlebars::no_escape);
    hb
}

/// Render `template` against `data`. `origin` names it in errors.
pub fn render<T: Serialize>(template: &str, data: &T, origin: &str) -> Result<String, TemplateError> {
    let hb = registry();
    hb.render_template(template, data).map_err(|e| convert(e, origin))
}

fn convert(e: handlebars::RenderError, origin: &str) -> TemplateError {
    let line = e.line_no;
    let message = match e.reason() {
        handlebars::RenderErrorReason::TemplateError(t) => t.to_string(),
        other => other.to_string(),
    };
    TemplateError { origin: origin.to_string(), line, message }
}

/// True if `s` contains handlebars syntax worth rendering.
pub fn is_template(s: &str) -> bool {
    s.contains("{{")
}

/// The dotted paths a template refers to (`stages.build.outputs.imageDigest`,
/// `params.tag`, `env.HOME`), for validation without rendering. Block helpers
/// and their bodies are reported as paths too; helpers themselves are not.
pub fn references(template: &str) -> Result<Vec<String>, TemplateError> {
    let compiled = handlebars::template::Template::compile(template).map_err(|e| TemplateError {
        origin: String::new(),
        line: e.pos().map(|(l, _)| l),
        message: e.reason().to_string(),
    })?;
    let mut out = Vec::new();
    collect(&compiled, &mut out);
    Ok(out)
}

fn collect(t: &handlebars::template::Template, out: &mut Vec<String>) {
    use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
    fn param(p: &Parameter, out: &mut Vec<String>) {
        match p {
            Parameter::Path(handlebars::Path::Relative((_, raw))) => out.push(raw.clone()),
            Parameter::Subexpression(sub) => {
                for p in sub.params().into_iter().flatten() {
                    param(p, out);
                }
            }
            _ => {}
        }
    }
    fn helper(h: &HelperTemplate, out: &mut Vec<String>) {
        match &h.name {
            Parameter::Name(_) if !h.params.is_empty() || h.block => {}
            p => param(p, out),
        }
        for p in &h.params {
            param(p, out);
        }
        if let Some(body) = &h.template {
            collect(body, out);
        }
        if let Some(inverse) = &h.inverse {
            collect(inverse, out);
        }
    }
    for el in &t.elements {
        match el {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) | TemplateElement::HelperBlock(h) => {
                helper(h, out)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_without_escaping() {
        let out = render("a {{x}}", &json!({"x": "<b>&"}), "t").unwrap();
        assert_eq!(out, "a <b>&");
    }

    #[test]
    fn missing_reference_is_an_error_not_a_blank() {
        let err = render("{{stages.build.outputs.nope}}", &json!({"stages": {}}), "with.image").unwrap_err();
        assert!(err.to_string().starts_with("with.image"), "{err}");
    }

    #[test]
    fn references_lists_paths() {
        let refs = references("{{stages.build.outputs.imageDigest}}-{{params.tag}}").unwrap();
        assert_eq!(refs, vec!["stages.build.outputs.imageDigest", "params.tag"]);
    }
}
