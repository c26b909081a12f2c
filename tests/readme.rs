//! The README's pipeline file reference names every key the parser
//! accepts: a key added to `src/spec/types.rs` without a README line fails
//! here.

use serde_json::{Value, json};

fn readme_section(title: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find(&format!("\n## {title}\n")).unwrap_or_else(|| panic!("README has no `## {title}`"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

fn minimal() -> Value {
    json!({
        "apiVersion": "modelship.io/v1alpha1",
        "kind": "Pipeline",
        "metadata": {"name": "weather"},
        "spec": {
            "model": {"name": "weather", "source": "s3://models/weather/"},
            "params": {"tag": {}},
            "environments": {"dev": {"namespace": "models-dev"}},
            "stages": [{"name": "fetch", "uses": "fetch-model"}],
            "triggers": {"push": {}},
            "state": {}
        }
    })
}

/// The fields serde accepts at `pointer`, from its unknown-field error.
fn accepted_fields(pointer: &str) -> Vec<String> {
    let mut doc = minimal();
    doc.pointer_mut(pointer).unwrap().as_object_mut().unwrap().insert("zzUnknownKey".into(), json!(true));
    let err =
        serde_json::from_value::<modelship::spec::Pipeline>(doc).expect_err("an unknown key is refused").to_string();
    let list = err.split_once("expected ").map(|(_, l)| l).unwrap_or_else(|| panic!("{pointer}: {err}"));
    let fields: Vec<String> = list.split('`').skip(1).step_by(2).map(str::to_string).collect();
    assert!(!fields.is_empty(), "{pointer}: {err}");
    fields
}

fn has_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let part = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !part(before) && !part(after)
    })
}

#[derive(Clone, Copy)]
enum Naming {
    Prefixed(&'static str),
    InRow(&'static str),
}

#[test]
fn the_pipeline_file_reference_names_every_key_the_parser_accepts() {
    let section = readme_section("The pipeline file");
    let row = |key: &str| -> String {
        section
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}`")))
            .unwrap_or_else(|| panic!("no README row for `{key}`"))
            .to_string()
    };
    // Where in the document, and where the README names that level's keys:
    // anywhere in the section with a prefix, or in the level's table row.
    let levels = [
        ("", Naming::Prefixed("")),
        ("/metadata", Naming::Prefixed("metadata.")),
        ("/spec", Naming::Prefixed("spec.")),
        ("/spec/model", Naming::InRow("spec.model")),
        ("/spec/params/tag", Naming::InRow("spec.params")),
        ("/spec/environments/dev", Naming::InRow("spec.environments")),
        ("/spec/stages/0", Naming::InRow("spec.stages[]")),
        ("/spec/triggers", Naming::Prefixed("spec.triggers.")),
        ("/spec/triggers/push", Naming::InRow("spec.triggers.push")),
        ("/spec/state", Naming::InRow("spec.state")),
    ];
    let mut missing = Vec::new();
    for (pointer, naming) in levels {
        for field in accepted_fields(pointer) {
            let (text, name) = match naming {
                Naming::Prefixed(prefix) => (section.clone(), format!("{prefix}{field}")),
                Naming::InRow(key) => (row(key), field.clone()),
            };
            if !has_word(&text, &name) {
                missing.push(format!("{pointer}/{field} (as `{name}`)"));
            }
        }
    }
    assert!(missing.is_empty(), "README's pipeline file reference does not name: {missing:?}");
}
