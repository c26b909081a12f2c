//! Reading a pipeline file into typed form, with a span index for later
//! diagnostics.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::diagnostic::Diagnostic;
use super::{Pipeline, SpanIndex, SpecError};

/// Pipeline files are small; anything bigger is refused before it is read
/// whole into memory.
pub const MAX_FILE_BYTES: u64 = 8 << 20;

/// A parsed pipeline and what validation needs to point into its source.
#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    pub path: PathBuf,
    pub source: String,
    pub pipeline: Pipeline,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    pub spans: SpanIndex,
    /// Type problems (missing keys, wrong types, unknown keys) found while
    /// reading on past them ([`load_lenient`]); [`load`] refuses a file
    /// with any, and [`super::validate`] reports them with its own.
    pub type_problems: Vec<Diagnostic>,
    /// Dotted paths where `pipeline` holds placeholders for what the file
    /// got wrong; validation says nothing about them.
    pub synthetic: Vec<String>,
}

/// Read and parse `path`. Type errors (unknown keys, wrong types, malformed
/// YAML) come back with file, line and column, every one of them.
pub fn load(path: &Path) -> Result<LoadedPipeline, SpecError> {
    strict(load_lenient(path)?)
}

/// As [`load`], but a file with type problems still loads when they can be
/// read past, with placeholders, so [`super::validate`] can report them
/// together with every other problem. Only for validation: never run what
/// this returns unless validation passed.
pub fn load_lenient(path: &Path) -> Result<LoadedPipeline, SpecError> {
    load_str_lenient(path, &read(path)?)
}

fn strict(loaded: LoadedPipeline) -> Result<LoadedPipeline, SpecError> {
    if loaded.type_problems.is_empty() { Ok(loaded) } else { Err(SpecError { diagnostics: loaded.type_problems }) }
}

/// The file's text, or why it cannot be read as a pipeline file.
fn read(path: &Path) -> Result<String, SpecError> {
    let fail = |msg: String| SpecError::one(Diagnostic::file(path, msg));
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read pipeline file: {}", io_reason(&e))))?;
    if meta.is_dir() {
        return Err(fail("is a directory, expected a pipeline file (YAML)".into()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!("pipeline file is {} bytes; the limit is {} bytes", meta.len(), MAX_FILE_BYTES)));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read pipeline file: {}", io_reason(&e))))?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            // Valid up to here, so the prefix decodes.
            let before = std::str::from_utf8(&bytes[..valid]).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
            let shown = String::from_utf8_lossy(bytes);
            let d = Diagnostic::at(
                path,
                &shown,
                Some((line, col)),
                format!("not valid UTF-8 (byte {valid} is {:#04x})", bytes[valid]),
            )
            .with_hint("pipeline files must be UTF-8 text");
            return Err(SpecError::one(d));
        }
    };
    Ok(text)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Parse `text` as if read from `path`.
pub fn load_str(path: &Path, text: &str) -> Result<LoadedPipeline, SpecError> {
    strict(load_str_lenient(path, text)?)
}

/// As [`load_str`], reading on past type problems ([`load_lenient`]).
pub fn load_str_lenient(path: &Path, text: &str) -> Result<LoadedPipeline, SpecError> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())));
    if text.trim().is_empty() {
        return Err(SpecError::one(
            Diagnostic::file(path, "the file is empty")
                .with_hint("a pipeline starts with `apiVersion: modelship.io/v1alpha1` and `kind: Pipeline`"),
        ));
    }
    let spans = SpanIndex::build(text);
    if let Some(pos) = spans.too_deep() {
        let d = Diagnostic::at(path, text, Some(pos), format!("nested deeper than {} levels", super::spans::MAX_DEPTH))
            .with_hint("a pipeline needs only a few levels of nesting");
        return Err(SpecError::one(d));
    }
    let loaded = |pipeline, type_problems, synthetic| LoadedPipeline {
        path: path.to_path_buf(),
        source: text.to_string(),
        pipeline,
        digest: digest.clone(),
        spans: spans.clone(),
        type_problems,
        synthetic,
    };
    let e = match super::yaml::from_str::<Pipeline>(text) {
        Ok(pipeline) => return Ok(loaded(pipeline, Vec::new(), Vec::new())),
        Err(e) => e,
    };
    // Well-formed YAML of the wrong shape: find every problem, not just this one.
    if let Ok(tree) = super::yaml::from_str::<serde_json::Value>(text) {
        let r = super::recover::recover(path, text, &spans, tree);
        match r.pipeline {
            Some(pipeline) if !r.problems.is_empty() => return Ok(loaded(pipeline, r.problems, r.synthetic)),
            None if !r.problems.is_empty() => return Err(SpecError { diagnostics: r.problems }),
            // The untyped tree parses where the text did not (or the other
            // way round): serde_yaml's own error is the one to show.
            _ => {}
        }
    }
    Err(SpecError::one(type_error(path, text, &spans, &e)))
}

/// Turn serde_yaml's error into a diagnostic. Its message reads
/// `spec.stages[0]: unknown field `uses_`, expected one of ...`; the path
/// and field name let the span index point at the offending key itself.
fn type_error(path: &Path, text: &str, spans: &SpanIndex, e: &super::yaml::YamlError) -> Diagnostic {
    let (field_path, rest) = split_path(&e.message);
    let mut pos = match (e.line, e.col) {
        (Some(l), Some(c)) => Some((l, c)),
        _ => None,
    };
    let mut hint = None;
    if let Some(field) = backticked(rest, "unknown field `") {
        let key = super::spans::join(field_path.unwrap_or(""), field);
        if spans.contains(&key) {
            pos = spans.locate(&key);
        }
        hint = super::validate::unknown_field_hint(rest);
    } else if let (Some(fp), Some(_)) = (field_path, backticked(rest, "missing field `")) {
        // Point at the mapping that lacks it.
        if pos.is_none() || spans.contains(fp) {
            pos = spans.locate(fp).or(pos);
        }
    }
    let mut d = Diagnostic::at(path, text, pos, e.message.clone());
    if e.message.contains("more than one document") {
        d = d.with_hint("a pipeline file holds exactly one YAML document; remove the `---` separators");
    }
    if let Some(h) = hint {
        d = d.with_hint(h);
    }
    d
}

/// `spec.stages[0]: message` -> (Some("spec.stages[0]"), "message").
fn split_path(message: &str) -> (Option<&str>, &str) {
    match message.split_once(": ") {
        Some((p, rest)) if !p.is_empty() && !p.contains(' ') => (Some(p), rest),
        _ => (None, message),
    }
}

/// The text between `prefix` and the next backtick (serde's messages quote
/// field names so; the recovery pass reads them too).
pub(super) fn backticked<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let start = s.find(prefix)? + prefix.len();
    let len = s[start..].find('`')?;
    Some(&s[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata:
  name: weather
spec:
  model:
    name: weather
    source: s3://models/weather/
  environments:
    dev:
      namespace: models-dev
  stages:
    - name: fetch
      uses: fetch-model
";

    fn first(text: &str) -> Diagnostic {
        load_str(Path::new("p.yaml"), text).unwrap_err().diagnostics.remove(0)
    }

    #[test]
    fn loads_and_digests_the_bytes() {
        let l = load_str(Path::new("p.yaml"), GOOD).unwrap();
        assert_eq!(l.pipeline.spec.stages[0].uses, "fetch-model");
        assert_eq!(l.digest, format!("sha256:{}", hex::encode(Sha256::digest(GOOD.as_bytes()))));
        assert_eq!(l.spans.locate("spec.stages[0].uses"), Some((14, 7)));
    }

    #[test]
    fn misspelt_top_level_key_is_rejected_at_its_position() {
        let d = first(&GOOD.replace("  stages:", "  stges:"));
        assert_eq!((d.line, d.col), (12, 3), "{d}");
        assert!(d.message.contains("unknown field `stges`"), "{d}");
        assert_eq!(d.hint.as_deref(), Some("did you mean `stages`?"));
    }

    #[test]
    fn misspelt_stage_key_is_rejected_at_its_position() {
        let d = first(&GOOD.replace("      uses:", "      uses_:"));
        assert_eq!((d.line, d.col), (14, 7), "{d}");
        assert!(d.message.contains("unknown field `uses_`"), "{d}");
        assert_eq!(d.hint.as_deref(), Some("did you mean `uses`?"));
    }

    #[test]
    fn wrong_type_has_a_position() {
        let d = first(&GOOD.replace("  stages:\n    - name: fetch\n      uses: fetch-model\n", "  stages: 3\n"));
        assert_eq!(d.line, 12, "{d}");
        assert!(d.message.contains("invalid type"), "{d}");
    }

    #[test]
    fn missing_field_points_at_the_mapping_lacking_it() {
        let d = first(&GOOD.replace("      uses: fetch-model\n", ""));
        assert!(d.message.contains("missing field `uses`"), "{d}");
        assert_eq!(d.line, 13, "{d}");
    }

    #[test]
    fn every_type_problem_is_reported_not_just_the_first() {
        let t = GOOD
            .replace("      namespace: models-dev\n", "      namespace: 123\n      registry: [x]\n")
            .replace("      uses: fetch-model\n", "      retries: many\n    - uses: render\n      nam: r\n");
        let e = load_str(Path::new("p.yaml"), &t).unwrap_err();
        let got: Vec<String> = e.diagnostics.iter().map(|d| format!("{}:{} {}", d.line, d.col, d.message)).collect();
        assert_eq!(
            got,
            vec![
                "12:17 spec.environments.dev.registry: invalid type: sequence, expected a string",
                "14:7 spec.stages[0]: missing field `uses`",
                "15:16 spec.stages[0].retries: invalid type: string \"many\", expected u32",
                "17:7 spec.stages[1]: unknown field `nam`, expected one of `name`, `uses`, `with`, `timeout`, `retries`, `if`",
            ],
            "{e}"
        );
        // A number where a string is expected reads as the string, as the typed parse does.
        let ok = GOOD.replace("namespace: models-dev", "namespace: 123");
        assert_eq!(load_str(Path::new("p.yaml"), &ok).unwrap().pipeline.spec.environments["dev"].namespace, "123");
    }

    #[test]
    fn a_lenient_load_keeps_what_parsed_and_marks_the_placeholders() {
        let t = GOOD.replace("      uses: fetch-model\n", "");
        let l = load_str_lenient(Path::new("p.yaml"), &t).unwrap();
        assert_eq!(l.type_problems.len(), 1);
        assert_eq!(l.pipeline.spec.stages[0].name, "fetch");
        assert_eq!(l.synthetic, vec!["spec.stages[0].uses".to_string()]);
        assert!(load_str(Path::new("p.yaml"), &t).is_err());
    }

    #[test]
    fn malformed_yaml_has_a_position() {
        let d = first("apiVersion: [\nkind: Pipeline\n");
        assert!(d.line > 0, "{d}");
    }

    #[test]
    fn empty_file_is_refused() {
        let d = first("  \n");
        assert_eq!(d.message, "the file is empty");
    }

    /// A billion laughs: ten levels of ten aliases each. serde_yaml must
    /// refuse to expand it rather than allocate 10^10 nodes.
    pub(crate) fn alias_bomb(indent: &str) -> String {
        let mut t = format!("{indent}x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            t.push_str(&format!("{indent}x{i}: &a{i} [{refs}]\n"));
        }
        t
    }

    #[test]
    fn alias_bomb_is_refused_not_expanded() {
        let bomb = GOOD.replace(
            "      uses: fetch-model\n",
            &format!("      uses: fetch-model\n      with:\n{}", alias_bomb("        ")),
        );
        let d = first(&bomb);
        assert!(d.message.contains("repetition limit"), "{d}");
    }

    #[test]
    fn deep_nesting_is_refused_without_blowing_the_stack() {
        let deep = format!("      with: {{ x: {}{} }}\n", "[".repeat(50_000), "]".repeat(50_000));
        let d = first(&GOOD.replace("      uses: fetch-model\n", &format!("      uses: fetch-model\n{deep}")));
        assert_eq!(d.message, "nested deeper than 128 levels");
        assert_eq!(d.line, 15);
    }

    #[test]
    fn missing_file_and_directory_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("nope.yaml")).unwrap_err();
        assert_eq!(e.diagnostics[0].message, "cannot read pipeline file: no such file");
        assert_eq!(e.diagnostics[0].file, dir.path().join("nope.yaml"));
        let e = load(dir.path()).unwrap_err();
        assert!(e.diagnostics[0].message.starts_with("is a directory"));
    }

    #[test]
    fn non_utf8_names_the_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.yaml");
        std::fs::write(&p, b"apiVersion: x\nkind: Pi\xffpe\n").unwrap();
        let d = load(&p).unwrap_err().diagnostics.remove(0);
        assert_eq!((d.line, d.col), (2, 9));
        assert!(d.message.starts_with("not valid UTF-8"), "{d}");
    }
}
