//! `modelship --version`: the crate version and the Git revision it was
//! built from, `0.1.0 (abc1234 2026-12-02)`. From `git` when the source is
//! a checkout, else `$MODELSHIP_GIT_REV` (a source tarball has no `.git`;
//! packagers set it), else `unknown`. Reruns only when HEAD moves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MODELSHIP_GIT_REV");
    let rev = git_revision().or_else(|| std::env::var("MODELSHIP_GIT_REV").ok().filter(|s| !s.trim().is_empty()));
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let rev = rev.unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=MODELSHIP_LONG_VERSION={version} ({})", rev.trim());
}

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// `abc1234 2026-12-02` (short hash, commit date), watching HEAD and the
/// branch it points to (a worktree keeps HEAD in its own git dir and the
/// branches in the common one).
fn git_revision() -> Option<String> {
    let git_dir = PathBuf::from(git(&["rev-parse", "--absolute-git-dir"])?);
    let common = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from).map(|p| absolute(&git_dir, p));
    let common = common.unwrap_or_else(|| git_dir.clone());
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Some(reference) =
        std::fs::read_to_string(&head).ok().and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_string()))
    {
        for dir in [&git_dir, &common] {
            let path = dir.join(&reference);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
        // A branch may live only in packed-refs (after `git gc`).
        let packed = common.join("packed-refs");
        if packed.exists() {
            println!("cargo:rerun-if-changed={}", packed.display());
        }
    }
    git(&["log", "-1", "--format=%h %cs", "HEAD"])
}

/// `--git-common-dir` may answer relative to the working directory.
fn absolute(git_dir: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        return p;
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|_| git_dir.to_path_buf());
    manifest.join(p)
}
