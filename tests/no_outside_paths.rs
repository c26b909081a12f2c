//! Tests, benches, scripts and sources read nothing outside the repository:
//! no file under them names the upstream reference set beside the checkout
//! or a home or work directory of a build machine. The reference data the
//! tests need lives in `fixtures/reference/`, found through
//! `CARGO_MANIFEST_DIR`; a fresh clone in an empty directory must pass
//! (`scripts/fresh-clone-check.sh` proves it).
//!
//! The patterns are assembled from pieces so this file does not name them.

use std::path::{Path, PathBuf};

/// The directories whose files must not point outside the repository.
const SCANNED: &[&str] = &["tests", "benches", "scripts", "src", "fuzz", ".ci"];

/// Substrings that mean "the reference set outside the repository".
const OUTSIDE: &[&str] = &[concat!("shared", "/", "reference"), concat!("..", "/", "shared")];

/// Absolute directories of build machines, matched only where a path starts
/// (so a container path such as `/tekton/` + `home/` is not one).
const MACHINE_ROOTS: &[&str] = &[concat!("/", "work", "/"), concat!("/", "root", "/"), concat!("/", "home", "/")];

/// What `line` names that it must not, if anything.
fn offence(line: &str) -> Option<&'static str> {
    if let Some(p) = OUTSIDE.iter().find(|p| line.contains(*p)) {
        return Some(p);
    }
    MACHINE_ROOTS.iter().copied().find(|root| {
        line.match_indices(root).any(|(at, _)| {
            // A path starts here unless the byte before continues a path or a word.
            !line[..at].bytes().last().is_some_and(|b| b.is_ascii_alphanumeric() || b"/._-~$".contains(&b))
        })
    })
}

/// What cargo-fuzz writes under `fuzz/` (its `.gitignore`): build output
/// and generated inputs, not files of the repository.
const GENERATED: &[&str] = &["fuzz/target", "fuzz/corpus", "fuzz/artifacts", "fuzz/coverage"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if GENERATED.iter().any(|g| entry.path() == root.join(g)) {
                continue;
            }
            files(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

#[test]
fn no_test_bench_script_or_source_names_a_path_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for dir in SCANNED {
        files(&root.join(dir), &mut all);
    }
    assert!(all.iter().any(|f| f.ends_with("tests/no_outside_paths.rs")), "the scan found no tests: {all:?}");
    let mut found = Vec::new();
    for file in &all {
        let bytes = std::fs::read(file).unwrap();
        for (n, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
            if let Some(what) = offence(line) {
                let rel = file.strip_prefix(root).unwrap().display();
                found.push(format!("{rel}:{}: names {what}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "files that point outside the repository (copy the data into fixtures/ and find it via \
         CARGO_MANIFEST_DIR or the script's own directory):\n{}",
        found.join("\n")
    );
}

/// The matcher catches each pattern where it starts a path, and leaves
/// lookalikes that are not one.
#[test]
fn the_matcher_catches_outside_paths_and_only_those() {
    for root in MACHINE_ROOTS {
        for line in [
            format!("let d = PathBuf::from(\"{root}x/reference\");"),
            format!("cd {root}x && ls"),
            format!("{root}x"),
            format!("--data={root}x"),
        ] {
            assert_eq!(offence(&line), Some(*root), "{line}");
        }
        for line in [format!("/tekton{root}event.json"), format!("$HOME{root}x"), format!("./x{root}y")] {
            assert_eq!(offence(&line), None, "{line}");
        }
    }
    for p in OUTSIDE {
        assert_eq!(offence(&format!("root.join(\"{p}/x.json\")")), Some(*p));
    }
    for line in ["fixtures/reference/openshift/x.json", "a shared secret", "mktemp -d -t modelship.XXXXXX"] {
        assert_eq!(offence(line), None, "{line}");
    }
}
