//! Strict handlebars rendering with HTML escaping off, shared by the engine
//! (`with:` values) and the stages (Dockerfiles, manifests). A reference to
//! something that does not exist is an error, never a blank.

pub mod safe;

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
    precheck(template, origin)?;
    let hb = registry();
    hb.render_template(template, data).map_err(|e| convert(e, origin))
}

/// As [`render`], but every `{{value}}` is HTML-escaped (pages, not files).
pub fn render_html<T: Serialize>(template: &str, data: &T, origin: &str) -> Result<String, TemplateError> {
    let mut hb = registry();
    hb.register_escape_fn(handlebars::html_escape);
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
/// `params.tag`, `env.HOME`), for validation without rendering. Paths are as
/// written, with a leading `@root.` removed. Helper names are not paths; the
/// arguments of helpers and block helpers are. Bodies of `each` and `with`
/// are not reported: there paths are relative to the item, not the root.
/// Partials and decorators are errors: values cannot include templates.
pub fn references(template: &str) -> Result<Vec<String>, TemplateError> {
    precheck(template, "")?;
    let compiled = handlebars::template::Template::compile(template).map_err(|e| TemplateError {
        origin: String::new(),
        line: e.pos().map(|(l, _)| l),
        message: e.reason().to_string(),
    })?;
    let mut out = Vec::new();
    collect(&compiled, &mut out)?;
    Ok(out)
}

/// Refuse, before parsing, what would make the parser pay too much.
fn precheck(template: &str, origin: &str) -> Result<(), TemplateError> {
    let refuse = |message: String| Err(TemplateError { origin: origin.to_string(), line: None, message });
    if nesting(template) > MAX_NESTING {
        return refuse(format!("blocks or subexpressions nested deeper than {MAX_NESTING}"));
    }
    // Partials and decorators can recurse without bound (an inline partial
    // that includes itself overflows the stack); no template here needs them.
    if template.contains("{{>") || template.contains("{{#>") {
        return refuse("partials (`{{> name}}`) are not available here".into());
    }
    if template.contains("{{*") || template.contains("{{#*") {
        return refuse("decorators (`{{* name}}`) are not available here".into());
    }
    // The handlebars parser finds each element's line and column by scanning
    // from the start, so its cost grows with the square of the expressions.
    let expressions = template.matches("{{").count();
    if expressions > MAX_EXPRESSIONS {
        return refuse(format!("{expressions} expressions; a template holds at most {MAX_EXPRESSIONS}"));
    }
    Ok(())
}

/// Far more than any Dockerfile template or `with:` value needs.
const MAX_EXPRESSIONS: usize = 2000;

/// Deeper nesting is refused before parsing: the parser and the walk below
/// recurse, and a hostile value must not exhaust the stack.
const MAX_NESTING: usize = 64;

/// An upper bound on block (`{{#`) and subexpression (`(`) nesting.
fn nesting(template: &str) -> usize {
    let b = template.as_bytes();
    let (mut depth, mut max) = (0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"{{#") || b[i] == b'(' {
            depth += 1;
            max = max.max(depth);
        } else if b[i..].starts_with(b"{{/") || b[i] == b')' {
            depth = depth.saturating_sub(1);
        }
        i += 1;
    }
    max
}

/// Built-in helpers that may appear without arguments.
const ARGLESS_HELPERS: &[&str] = &["else", "this"];

fn collect(t: &handlebars::template::Template, out: &mut Vec<String>) -> Result<(), TemplateError> {
    use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
    fn path(raw: &str, out: &mut Vec<String>) {
        let raw = raw.strip_prefix("@root.").unwrap_or(raw);
        if raw != "this" && !raw.starts_with("this.") && !raw.starts_with('@') {
            out.push(raw.to_string());
        }
    }
    fn param(p: &Parameter, out: &mut Vec<String>) {
        match p {
            Parameter::Path(handlebars::Path::Relative((_, raw))) => path(raw, out),
            Parameter::Subexpression(sub) => {
                for p in sub.params().into_iter().flatten() {
                    param(p, out);
                }
                for p in sub.hash().into_iter().flat_map(|h| h.values()) {
                    param(p, out);
                }
            }
            // `@index`, `@key`, `../x`: local to a block.
            _ => {}
        }
    }
    fn helper(h: &HelperTemplate, out: &mut Vec<String>) -> Result<(), TemplateError> {
        let mut name_of_block = None;
        match &h.name {
            Parameter::Name(n) if !h.params.is_empty() || !h.hash.is_empty() || h.block => {
                name_of_block = Some(n.as_str())
            }
            // `{{foo}}` is either a zero-argument helper or a lookup; none of
            // ours take no arguments, so it is a lookup.
            Parameter::Name(n) if !ARGLESS_HELPERS.contains(&n.as_str()) => path(n, out),
            p => param(p, out),
        }
        for p in h.params.iter().chain(h.hash.values()) {
            param(p, out);
        }
        let changes_context = matches!(name_of_block, Some("each" | "with")) && h.block;
        if let Some(body) = &h.template {
            if changes_context {
                // Walked for partials and decorators; its paths are not the root's.
                collect(body, &mut Vec::new())?;
            } else {
                collect(body, out)?;
            }
        }
        if let Some(inverse) = &h.inverse {
            collect(inverse, out)?;
        }
        Ok(())
    }
    for el in &t.elements {
        match el {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) | TemplateElement::HelperBlock(h) => {
                helper(h, out)?
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                return Err(TemplateError {
                    origin: String::new(),
                    line: None,
                    message: "partials (`{{> name}}`) are not available here".into(),
                });
            }
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                return Err(TemplateError {
                    origin: String::new(),
                    line: None,
                    message: "decorators (`{{* name}}`) are not available here".into(),
                });
            }
            _ => {}
        }
    }
    Ok(())
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

    #[test]
    fn references_include_helper_arguments_and_bare_names_but_not_helpers() {
        let refs =
            references(r#"{{#if (eq params.env "prod")}}{{stages.a.outputs.x}}{{else}}{{name}}{{/if}}"#).unwrap();
        assert_eq!(refs, vec!["params.env", "stages.a.outputs.x", "name"]);
    }

    #[test]
    fn each_body_is_relative_to_the_item_so_only_its_argument_is_reported() {
        let refs = references("{{#each stages}}{{this}}{{@key}}{{outputs.x}}{{/each}}{{@root.params.a}}").unwrap();
        assert_eq!(refs, vec!["stages", "params.a"]);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let t = format!("{}x{}", "{{#if a}}".repeat(10_000), "{{/if}}".repeat(10_000));
        let err = references(&t).unwrap_err();
        assert!(err.message.contains("nested deeper"), "{err}");
    }

    #[test]
    fn dashed_stage_names_stay_one_segment() {
        assert_eq!(references("{{stages.fetch-model.outputs.x}}").unwrap(), vec!["stages.fetch-model.outputs.x"]);
    }

    #[test]
    fn partials_are_refused() {
        assert!(references("{{> secret}}").is_err());
        assert!(references("{{#> layout}}x{{/layout}}").is_err());
        assert!(references("{{#each stages}}{{> secret}}{{/each}}").is_err());
    }

    #[test]
    fn unbalanced_blocks_are_a_syntax_error() {
        assert!(references("{{#each stages}}").is_err());
    }
}
