//! Where a remote name may land locally: relative-path normalisation that
//! refuses anything escaping the model directory, and include/exclude globs.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Why a remote name cannot become a local path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsafePath {
    #[error("it is an absolute path")]
    Absolute,
    #[error("it climbs out of the model directory with `..`")]
    Escapes,
    #[error("it is empty after normalisation")]
    Empty,
    #[error("it contains a NUL or backslash character")]
    BadChar,
}

/// Normalise `rel` (a key below the source prefix, `/`-separated) into a
/// relative path that stays inside the model directory: empty and `.`
/// segments drop, `..` pops a segment and may never climb above the root.
/// Absolute names are refused outright rather than re-rooted, so a key such
/// as `prefix//etc/passwd` is an error, not a surprise.
pub fn safe_relative(rel: &str) -> Result<String, UnsafePath> {
    if rel.starts_with('/') {
        return Err(UnsafePath::Absolute);
    }
    // A backslash is a separator on Windows and a NUL ends a C string: both
    // make the name mean something else than it says.
    if rel.contains('\0') || rel.contains('\\') {
        return Err(UnsafePath::BadChar);
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(UnsafePath::Escapes);
                }
            }
            s => out.push(s),
        }
    }
    if out.is_empty() {
        return Err(UnsafePath::Empty);
    }
    Ok(out.join("/"))
}

/// Include/exclude globs over relative paths. `*` does not cross `/`; use
/// `**/` for any depth. No include means everything is included.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

/// A glob that does not compile, with its index in the list.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{pattern}`: {message}")]
pub struct BadGlob {
    pub index: usize,
    pub pattern: String,
    pub message: String,
}

fn compile(patterns: &[String]) -> Result<Option<GlobSet>, BadGlob> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for (index, pattern) in patterns.iter().enumerate() {
        set.add(glob(pattern).map_err(|e| BadGlob {
            index,
            pattern: pattern.clone(),
            message: e.kind().to_string(),
        })?);
    }
    set.build().map(Some).map_err(|e| BadGlob { index: 0, pattern: patterns.join(", "), message: e.to_string() })
}

fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

impl Filter {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, (&'static str, BadGlob)> {
        Ok(Filter {
            include: compile(include).map_err(|e| ("include", e))?,
            exclude: compile(exclude).map_err(|e| ("exclude", e))?,
        })
    }

    pub fn matches(&self, rel: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(rel)) && !self.exclude.as_ref().is_some_and(|s| s.is_match(rel))
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_nested_names_pass() {
        assert_eq!(safe_relative("model.pkl").unwrap(), "model.pkl");
        assert_eq!(safe_relative("a/b/c.bin").unwrap(), "a/b/c.bin");
        assert_eq!(safe_relative("a//b/./c").unwrap(), "a/b/c");
        // Climbing inside the tree is harmless.
        assert_eq!(safe_relative("a/b/../c").unwrap(), "a/c");
    }

    #[test]
    fn traversal_is_refused() {
        assert_eq!(safe_relative("../x"), Err(UnsafePath::Escapes));
        assert_eq!(safe_relative("a/../../x"), Err(UnsafePath::Escapes));
        assert_eq!(safe_relative("a/./../.././x"), Err(UnsafePath::Escapes));
        assert_eq!(safe_relative("/etc/passwd"), Err(UnsafePath::Absolute));
        assert_eq!(safe_relative("a\\..\\x"), Err(UnsafePath::BadChar));
        assert_eq!(safe_relative("a/.."), Err(UnsafePath::Empty));
        assert_eq!(safe_relative(""), Err(UnsafePath::Empty));
    }

    #[test]
    fn globs_do_not_cross_separators() {
        let f = Filter::new(&["*.pkl".into(), "sub/**".into()], &["**/*.tmp".into()]).unwrap();
        assert!(f.matches("model.pkl"));
        assert!(!f.matches("x/model.pkl"));
        assert!(f.matches("sub/deep/a.bin"));
        assert!(!f.matches("sub/deep/a.tmp"));
        assert!(Filter::default().matches("anything/at/all"));
    }

    #[test]
    fn bad_glob_names_its_list_and_index() {
        let (list, err) = Filter::new(&[], &["ok".into(), "a[".into()]).unwrap_err();
        assert_eq!(list, "exclude");
        assert_eq!(err.index, 1);
        assert_eq!(err.pattern, "a[");
    }
}
