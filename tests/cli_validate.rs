//! Black-box tests of `modelship validate`: the real binary in a temp dir,
//! stdout, stderr and exit code compared with snapshots.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Output {
    /// What a user sees, for a snapshot.
    fn transcript(&self) -> String {
        format!("exit: {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// A temp dir holding copies of the fixture pipelines (`good/`, `bad/`).
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipelines");
        for sub in ["good", "bad"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            for entry in std::fs::read_dir(fixtures.join(sub)).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
        std::fs::copy(fixtures.join("weather.yaml"), dir.path().join("weather.yaml")).unwrap();
        Sandbox { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: impl AsRef<[u8]>) {
        std::fs::write(self.path(rel), text).unwrap();
    }

    fn validate(&self, files: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_modelship"))
            .arg("validate")
            .args(files)
            .current_dir(self.dir.path())
            .env_remove("MODELSHIP_STAGES_DIR")
            .output()
            .expect("run modelship");
        let tmp = self.dir.path().display().to_string();
        let clean = |b: &[u8]| String::from_utf8_lossy(b).replace(&tmp, "[TMP]");
        Output {
            code: out.status.code().expect("exited, not killed"),
            stdout: clean(&out.stdout),
            stderr: clean(&out.stderr),
        }
    }

    /// Files in the sandbox: validation must write nothing.
    fn listing(&self) -> Vec<PathBuf> {
        let mut all = Vec::new();
        let mut todo = vec![self.dir.path().to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p.clone());
                }
                all.push(p);
            }
        }
        all.sort();
        all
    }
}

/// A run that must end in exit 2 with diagnostics and no panic.
fn assert_bad(out: &Output) {
    assert_eq!(out.code, 2, "{}", out.transcript());
    assert!(out.stdout.is_empty(), "{}", out.transcript());
    assert!(!out.stderr.contains("panicked"), "{}", out.transcript());
}

#[test]
fn valid_file_prints_ok_and_exits_zero() {
    let s = Sandbox::new();
    let out = s.validate(&["good/minimal.yaml"]);
    insta::assert_snapshot!(out.transcript());
}

#[test]
fn malformed_yaml() {
    let s = Sandbox::new();
    let out = s.validate(&["bad/malformed.yaml"]);
    assert_bad(&out);
    insta::assert_snapshot!(out.transcript());
}

#[test]
fn wrong_type() {
    let s = Sandbox::new();
    let out = s.validate(&["bad/wrong-type.yaml"]);
    assert_bad(&out);
    assert!(out.stderr.starts_with("bad/wrong-type.yaml:15:16: "), "{}", out.stderr);
    insta::assert_snapshot!(out.transcript());
}

#[test]
fn misspelt_key_is_rejected_with_its_position() {
    let s = Sandbox::new();
    let out = s.validate(&["bad/unknown-key.yaml"]);
    assert_bad(&out);
    assert!(out.stderr.starts_with("bad/unknown-key.yaml:12:3: "), "{}", out.stderr);
    insta::assert_snapshot!(out.transcript());
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let s = Sandbox::new();
    let out = s.validate(&["bad/many-problems.yaml"]);
    assert_bad(&out);
    insta::assert_snapshot!(out.transcript());
}

#[test]
fn missing_file_and_directory() {
    let s = Sandbox::new();
    let out = s.validate(&["nope.yaml", "good"]);
    assert_bad(&out);
    insta::assert_snapshot!(out.transcript());
}

#[test]
fn mixed_files_report_each_and_exit_two() {
    let s = Sandbox::new();
    let out = s.validate(&["good/minimal.yaml", "bad/unknown-key.yaml", "good/minimal.yaml"]);
    assert_eq!(out.code, 2);
    assert_eq!(out.stdout, "good/minimal.yaml: ok\ngood/minimal.yaml: ok\n");
    assert!(out.stderr.ends_with("1 of 3 files invalid\n"), "{}", out.stderr);
}

#[test]
fn validation_writes_nothing() {
    let s = Sandbox::new();
    let before = s.listing();
    s.validate(&["good/minimal.yaml", "bad/many-problems.yaml", "nope.yaml"]);
    assert_eq!(s.listing(), before);
}

#[test]
fn non_utf8_file() {
    let s = Sandbox::new();
    s.write("latin1.yaml", b"apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: caf\xe9\n");
    let out = s.validate(&["latin1.yaml"]);
    assert_bad(&out);
    insta::assert_snapshot!(out.transcript());
}

#[test]
fn adversarial_template_values() {
    let s = Sandbox::new();
    let out = s.validate(&["bad/adversarial.yaml"]);
    assert_bad(&out);
    insta::assert_snapshot!(out.transcript());
}

/// Header of a pipeline whose only stage's `with:` takes the generated value.
fn with_value(value: &str) -> String {
    format!(
        "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: weather\nspec:\n  model:\n    name: weather\n    source: s3://m/w/\n  environments:\n    dev:\n      namespace: models-dev\n  stages:\n    - name: fetch\n      uses: fetch-model\n      with:\n        source: {value}\n"
    )
}

#[test]
fn alias_bomb_is_refused_without_expanding() {
    let s = Sandbox::new();
    // A billion laughs under `with:`, which takes any value until the kind checks it.
    let mut bomb = String::from("dev\n");
    bomb.push_str("        x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("        x{i}: &a{i} [{refs}]\n"));
    }
    s.write("bomb.yaml", with_value(&bomb));
    let out = s.validate(&["bomb.yaml"]);
    assert_bad(&out);
    assert!(out.stderr.starts_with("bomb.yaml:"), "{}", out.stderr);
    assert!(out.stderr.contains("repetition limit exceeded"), "{}", out.stderr);
}

#[test]
fn deep_nesting_is_refused_without_a_stack_overflow() {
    let s = Sandbox::new();
    s.write("deep.yaml", with_value(&format!("{}{}", "[".repeat(100_000), "]".repeat(100_000))));
    s.write("deep-blocks.yaml", with_value(&format!("\"{}{}\"", "{{#if a}}".repeat(20_000), "{{/if}}".repeat(20_000))));
    let out = s.validate(&["deep.yaml", "deep-blocks.yaml"]);
    assert_bad(&out);
    assert!(out.stderr.starts_with("deep.yaml:16:"), "{}", out.stderr);
    assert!(out.stderr.contains(": nested deeper than 128 levels"), "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "deep-blocks.yaml:16:17: stage `fetch`: invalid template: blocks or subexpressions nested deeper than 64"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn huge_scalar_is_shown_as_a_window() {
    let s = Sandbox::new();
    s.write("huge.yaml", with_value(&format!("\"{}{{{{nope}}}}\"", "x".repeat(2 << 20))));
    let out = s.validate(&["huge.yaml"]);
    assert_bad(&out);
    assert!(
        out.stderr.starts_with("huge.yaml:16:2097172: stage `fetch`: unknown reference `nope`"),
        "{}",
        &out.stderr[..200.min(out.stderr.len())]
    );
    assert!(out.stderr.len() < 2_000, "the source line is windowed, not printed whole: {} bytes", out.stderr.len());
}

#[test]
fn oversized_file_is_refused_before_reading() {
    let s = Sandbox::new();
    s.write("big.yaml", vec![b'#'; 9 << 20]);
    let out = s.validate(&["big.yaml"]);
    assert_bad(&out);
    assert_eq!(out.stderr, "big.yaml: pipeline file is 9437184 bytes; the limit is 8388608 bytes\n\n");
}

#[test]
fn no_panic_on_odd_documents() {
    let s = Sandbox::new();
    let cases: &[(&str, &str)] = &[
        ("scalar.yaml", "just a string\n"),
        ("list.yaml", "- a\n- b\n"),
        ("null.yaml", "~\n"),
        ("two-docs.yaml", "a: 1\n---\nb: 2\n"),
        ("tabs.yaml", "apiVersion:\tx\n\tkind: y\n"),
        ("bom.yaml", "\u{feff}apiVersion: modelship.io/v1alpha1\n"),
        ("binary.yaml", "\u{0}\u{1}\u{2}"),
        ("anchors.yaml", "&a a: *a\n"),
        ("empty.yaml", ""),
    ];
    let mut names = Vec::new();
    for (name, text) in cases {
        s.write(name, text);
        names.push(*name);
    }
    let out = s.validate(&names);
    assert_bad(&out);
    for name in names {
        assert!(out.stderr.contains(name), "{name} not reported:\n{}", out.stderr);
    }
    insta::assert_snapshot!(out.transcript());
}
