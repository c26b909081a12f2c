//! The layering docs/ARCHITECTURE.md promises, checked on the sources:
//! which top-level modules each part of `src/` may name. Unit tests
//! (`#[cfg(test)] mod tests`) are left out: a test may reach anywhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit-test module and comments.
fn production_code(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The top-level modules a file names as `crate::X`, with `use crate::{X, Y}` too.
fn crate_modules(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            out.insert(name);
        }
    }
    out
}

/// Every (file, module) pair where a file under `src/<part>` names one of `forbidden`.
fn violations(part: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let dir = root.join(part);
    if dir.is_dir() {
        rust_files(&dir, &mut files);
    }
    let file = root.join(format!("{part}.rs"));
    if file.is_file() {
        files.push(file);
    }
    assert!(!files.is_empty(), "no sources for src/{part}");
    let mut out = Vec::new();
    for f in files {
        let code = production_code(&std::fs::read_to_string(&f).unwrap());
        for m in crate_modules(&code) {
            if forbidden.contains(&m.as_str()) {
                out.push(format!("{} names crate::{m}", f.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    out
}

#[test]
fn engine_stages_and_state_never_import_the_sim() {
    let mut found = Vec::new();
    for part in ["engine", "stages", "state", "cluster", "storage", "registry", "promotion", "checks", "spec"] {
        found.extend(violations(part, &["sim"]));
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_sim_never_imports_the_engine_or_the_stages() {
    let found = violations("sim", &["engine", "stages", "commands", "state", "promotion"]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn spec_validation_imports_nothing_that_does_io() {
    let io = [
        "cluster",
        "storage",
        "registry",
        "engine",
        "stages",
        "state",
        "sim",
        "commands",
        "promotion",
        "signing",
        "triggers",
        "checks",
        "report",
    ];
    let found = violations("spec", &io);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn nothing_imports_the_cli() {
    let mut found = Vec::new();
    for part in [
        "engine",
        "stages",
        "state",
        "cluster",
        "storage",
        "registry",
        "promotion",
        "checks",
        "spec",
        "sim",
        "signing",
        "report",
        "triggers",
        "manifests",
        "template",
    ] {
        found.extend(violations(part, &["commands"]));
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn kubernetes_clients_are_made_only_in_cluster() {
    // Raw requests and watches belong in src/cluster; stages use its functions and typed `Api`s.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in ["stages", "engine", "promotion", "state", "commands"] {
        rust_files(&root.join(part), &mut files);
    }
    let mut found = Vec::new();
    for f in files {
        let code = production_code(&std::fs::read_to_string(&f).unwrap());
        for needle in ["DynamicObject", "WatchParams", "request_stream(", "request_text(", ".send(req)"] {
            if code.contains(needle) {
                found.push(format!("{}: {needle}", f.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn times_are_formatted_only_by_the_timestamp_module() {
    // One format in every output: src/timestamp.rs. Run ids (a name, not a
    // time anyone reads as one) are made in engine/prepare.rs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let allowed = [root.join("timestamp.rs"), root.join("engine/prepare.rs")];
    let mut found = Vec::new();
    for f in files.iter().filter(|f| !allowed.contains(f) && !f.starts_with(root.join("sim"))) {
        let code = production_code(&std::fs::read_to_string(f).unwrap());
        if code.contains(".strftime(") {
            found.push(f.strip_prefix(&root).unwrap().display().to_string());
        }
    }
    assert!(found.is_empty(), "format times with modelship::timestamp: {found:#?}");
}

#[test]
fn the_scanner_sees_imports() {
    let m = crate_modules("use crate::{sim, engine::x};\nlet a = crate::stages::Kind::ALL;");
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["engine", "sim", "stages"]);
    assert_eq!(production_code("a\n// crate::sim\n#[cfg(test)]\nmod tests { crate::sim }"), "a");
}
