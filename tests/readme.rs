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

/// Repository paths a document names: link targets `](path)` and
/// backticked paths under the top-level folders, without `#anchors`.
fn named_paths(text: &str) -> Vec<String> {
    const TOP: [&str; 13] = [
        "src/",
        "sim/",
        "stages/",
        "catalog/",
        "tests/",
        "docs/",
        "scripts/",
        "fixtures/",
        "benches/",
        "pipelines/",
        ".tekton/",
        "fuzz/",
        ".ci/",
    ];
    let mut out = Vec::new();
    for (open, close) in [("](", ')'), ("`", '`')] {
        let mut rest = text;
        while let Some(i) = rest.find(open) {
            rest = &rest[i + open.len()..];
            let Some(end) = rest.find(close) else { break };
            let candidate = rest[..end].split('#').next().unwrap_or("").trim();
            if open == "`" {
                rest = &rest[end + 1..];
            }
            let plain = candidate.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c));
            if plain && TOP.iter().any(|t| candidate.starts_with(t) || candidate.starts_with(&format!("../{t}"))) {
                out.push(candidate.to_string());
            }
        }
    }
    out
}

#[test]
fn every_path_the_readme_and_docs_name_exists() {
    // Files move (issue 31 moved the sim to sim/ and the catalog to
    // stages/); a document that still names the old place misleads.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md")];
    for dir in ["docs", "stages"] {
        for entry in walk(&root.join(dir)) {
            if entry.extension().is_some_and(|e| e == "md") {
                docs.push(entry);
            }
        }
    }
    let mut missing = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        for p in named_paths(&text) {
            // Links resolve from the document's folder; backticked paths
            // from the repository root (how the docs write them).
            let from_doc = doc.parent().unwrap().join(&p);
            let from_root = root.join(p.trim_start_matches("../"));
            if !from_doc.exists() && !from_root.exists() && !is_pattern(&p) {
                missing.push(format!("{}: {p}", doc.strip_prefix(root).unwrap().display()));
            }
        }
    }
    assert!(missing.is_empty(), "documents name paths that do not exist:\n{}", missing.join("\n"));
}

/// `stages/<kind>/`-style placeholders are patterns, not paths.
fn is_pattern(p: &str) -> bool {
    p.contains('<') || p.contains('*') || p.contains("NAME") || p.contains("RUN")
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_path_scanner_finds_links_and_backticked_paths() {
    let text = "see [x](docs/sim.md#faults) and `sim/src/lib.rs`, not `cargo run` or https://a/b";
    assert_eq!(named_paths(text), ["docs/sim.md", "sim/src/lib.rs"]);
}
