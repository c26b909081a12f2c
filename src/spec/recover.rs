//! Every type problem of a pipeline file, not just the first. The file is
//! read into an untyped tree, deserialized with the path of each error
//! (serde_path_to_error), and after each error the tree is patched where it
//! went wrong — an unknown key removed, a wrong value or a missing key
//! replaced by a placeholder of the expected type — and deserialized again.
//! Placeholders are marked so validation says nothing about them, and
//! validation then runs on what parsed: a file missing a key and naming an
//! unknown stage kind reports both.

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

use super::diagnostic::Diagnostic;
use super::load::backticked;
use super::{Pipeline, SpanIndex};

/// More patches than this and the file is too broken to be worth reading on.
const MAX_REPAIRS: usize = 64;

/// What deserializing with repairs found.
pub(super) struct Recovered {
    /// The pipeline with placeholders where the file was wrong.
    pub pipeline: Option<Pipeline>,
    pub problems: Vec<Diagnostic>,
    /// Dotted paths holding placeholders (nothing below them is the user's).
    pub synthetic: Vec<String>,
}

/// Deserialize `tree` (the file as read) into a [`Pipeline`], reporting each
/// type problem once with its position.
pub(super) fn recover(path: &Path, text: &str, spans: &SpanIndex, mut tree: Value) -> Recovered {
    let mut problems = Vec::new();
    let mut synthetic: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    // Keys a misspelt key was taken for ("did you mean `x`?").
    let mut meant_for: HashSet<String> = HashSet::new();
    // Mapping path -> (its "missing field" problem, the fields named in it).
    let mut missing: std::collections::HashMap<String, (usize, Vec<String>)> = Default::default();
    if !tree.is_object() {
        // Not a mapping at all: the typed parse's one error says it best.
        return Recovered { pipeline: None, problems, synthetic };
    }
    for _ in 0..MAX_REPAIRS {
        let error = match serde_path_to_error::deserialize::<_, Pipeline>(&tree) {
            Ok(pipeline) => return Recovered { pipeline: Some(pipeline), problems: in_order(problems), synthetic },
            Err(e) => e,
        };
        let at = error.path().to_string();
        let at = if at == "." { String::new() } else { at };
        let message = error.into_inner().to_string();
        if !seen.insert((at.clone(), message.clone())) {
            // The same error again: a patch did not take. Stop here.
            break;
        }
        let quiet = is_within(&synthetic, &at);
        let shown = if at.is_empty() { message.clone() } else { format!("{at}: {message}") };
        if let Some(field) = backticked(&message, "unknown field `") {
            // The path may or may not end with the key itself.
            let parent = at.strip_suffix(field).map(|p| p.trim_end_matches('.')).unwrap_or(&at).to_string();
            let key = super::spans::join(&parent, field);
            let shown = if parent.is_empty() { message.clone() } else { format!("{parent}: {message}") };
            if !quiet {
                let pos = if spans.contains(&key) { spans.locate(&key) } else { spans.locate(&parent) };
                let mut d = Diagnostic::at(path, text, pos.or(root_pos(&parent)), shown);
                if let Some(h) = super::validate::unknown_field_hint(&message) {
                    if let Some(meant) = backticked(&h, "did you mean `") {
                        meant_for.insert(super::spans::join(&parent, meant));
                    }
                    d = d.with_hint(h);
                }
                problems.push(d);
            }
            if !remove(&mut tree, &parent, field) {
                break;
            }
        } else if let Some(field) = backticked(&message, "missing field `") {
            // `stges:` is reported with "did you mean `stages`?"; the
            // missing `stages` is the same mistake.
            if !quiet && !meant_for.contains(&super::spans::join(&at, field)) {
                // Several keys missing from one mapping are one problem.
                match missing.get_mut(&at) {
                    Some((i, fields)) => {
                        fields.push(format!("`{field}`"));
                        let d: &mut Diagnostic = &mut problems[*i];
                        let prefix = if at.is_empty() { String::new() } else { format!("{at}: ") };
                        d.message = format!("{prefix}missing fields {}", fields.join(", "));
                    }
                    None => {
                        let pos = spans.locate(&at).or(root_pos(&at));
                        problems.push(Diagnostic::at(path, text, pos, shown));
                        missing.insert(at.clone(), (problems.len() - 1, vec![format!("`{field}`")]));
                    }
                }
            }
            let key = super::spans::join(&at, field);
            if !set(&mut tree, &at, field, Value::Null) {
                break;
            }
            if !is_within(&synthetic, &key) {
                synthetic.push(key);
            }
        } else {
            let current = get(&tree, &at).cloned();
            let expected = message.rsplit_once("expected ").map(|(_, e)| e).unwrap_or_default();
            // serde_yaml reads `namespace: 123` as the string "123"; the tree
            // holds a number there, so do as the typed parse would.
            if expected.contains("string")
                && let Some(v @ (Value::Number(_) | Value::Bool(_))) = &current
            {
                let s = Value::String(v.to_string());
                if !replace(&mut tree, &at, s) {
                    break;
                }
                continue;
            }
            if !quiet {
                let pos = spans.locate_value(&at).or(root_pos(&at));
                problems.push(Diagnostic::at(path, text, pos, shown));
            }
            let Some(placeholder) = placeholder(expected) else { break };
            if !replace(&mut tree, &at, placeholder) {
                break;
            }
            if !is_within(&synthetic, &at) {
                synthetic.push(at);
            }
        }
    }
    Recovered { pipeline: None, problems: in_order(problems), synthetic }
}

/// Top to bottom, as the file reads.
fn in_order(mut problems: Vec<Diagnostic>) -> Vec<Diagnostic> {
    problems.sort_by_key(|d| (d.line, d.col));
    problems
}

/// True if `path` is one of `paths` or below one.
pub(super) fn is_within(paths: &[String], path: &str) -> bool {
    paths.iter().any(|s| {
        s.is_empty()
            || path == s
            || path.strip_prefix(s.as_str()).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// Problems at the document's root point at its first line.
fn root_pos(path: &str) -> Option<(usize, usize)> {
    path.is_empty().then_some((1, 1))
}

/// A value of the type serde's "expected ..." names; `None` when it names
/// no type (a custom message).
fn placeholder(expected: &str) -> Option<Value> {
    let e = expected.trim();
    Some(if e.contains("string") || e.contains("char") {
        Value::String(String::new())
    } else if e.contains("sequence") || e.starts_with("a vec") || e.contains("list") {
        Value::Array(Vec::new())
    } else if e.starts_with("struct ") || e.contains("map") {
        Value::Object(Default::default())
    } else if e.contains("bool") {
        Value::Bool(false)
    } else if ["u8", "u16", "u32", "u64", "usize", "i32", "i64", "integer", "number"].iter().any(|t| e.contains(t)) {
        Value::from(0)
    } else {
        return None;
    })
}

/// Segments of a serde_path_to_error path: `spec.stages[0].with` ->
/// [Key(spec), Key(stages), Index(0), Key(with)].
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Option<Vec<Seg<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            out.push(Seg::Index(r[..end].parse().ok()?));
            rest = &r[end + 1..];
        }
    }
    Some(out)
}

fn get<'v>(tree: &'v Value, path: &str) -> Option<&'v Value> {
    let mut v = tree;
    for seg in segments(path)? {
        v = match seg {
            Seg::Key(k) => v.as_object()?.get(k)?,
            Seg::Index(i) => v.as_array()?.get(i)?,
        };
    }
    Some(v)
}

fn get_mut<'v>(tree: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut v = tree;
    for seg in segments(path)? {
        v = match seg {
            Seg::Key(k) => v.as_object_mut()?.get_mut(k)?,
            Seg::Index(i) => v.as_array_mut()?.get_mut(i)?,
        };
    }
    Some(v)
}

fn replace(tree: &mut Value, path: &str, value: Value) -> bool {
    get_mut(tree, path).map(|v| *v = value).is_some()
}

fn set(tree: &mut Value, parent: &str, key: &str, value: Value) -> bool {
    get_mut(tree, parent).and_then(Value::as_object_mut).map(|m| m.insert(key.to_string(), value)).is_some()
}

fn remove(tree: &mut Value, parent: &str, key: &str) -> bool {
    get_mut(tree, parent).and_then(Value::as_object_mut).and_then(|m| m.remove(key)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indices() {
        let tree = serde_json::json!({"spec": {"stages": [{"name": "a"}, {"name": "b", "with": {"x": [1, 2]}}]}});
        assert_eq!(get(&tree, "spec.stages[1].with.x[1]"), Some(&Value::from(2)));
        assert_eq!(get(&tree, "spec.stages[2]"), None);
        assert_eq!(get(&tree, ""), Some(&tree));
    }

    #[test]
    fn synthetic_paths_cover_what_is_below_them() {
        let s = vec!["spec.stages[0].uses".to_string(), "spec.model".to_string()];
        assert!(is_within(&s, "spec.model.name"));
        assert!(is_within(&s, "spec.stages[0].uses"));
        assert!(!is_within(&s, "spec.stages[0].name"));
        assert!(!is_within(&s, "spec.modelx"));
    }

    #[test]
    fn placeholders_follow_the_expected_type() {
        assert_eq!(placeholder("a string"), Some(Value::String(String::new())));
        assert_eq!(placeholder("a sequence"), Some(Value::Array(vec![])));
        assert_eq!(placeholder("struct ModelSpec"), Some(Value::Object(Default::default())));
        assert_eq!(placeholder("u32"), Some(Value::from(0)));
        assert_eq!(placeholder("exactly one of `secret: NAME` or `file: PATH`"), None);
    }
}
