//! `dvc:PATH` sources: a path DVC tracks in the pipeline's Git repository,
//! read at the commit being run (git2, never the working tree): its `.dvc`
//! file or `dvc.lock` stage, the remote from `.dvc/config`, and the
//! content-addressed objects the entry names in that remote, each verified
//! against the md5 DVC recorded.
//!
//! Layouts (dvc_data/hashfile/db and dvc/cachemgr.py): DVC 3 entries
//! (`hash: md5`) live at `REMOTE/files/md5/AB/CDEF...` and hash the bytes;
//! older entries (no `hash:`) live at `REMOTE/AB/CDEF...` and hash text files
//! with CRLF as LF (`md5-dos2unix`). A directory is a `.dir` object, a JSON
//! list of `{md5, relpath}`, itself addressed by the md5 of its bytes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Location, Md5Check, PlannedObject, S3Options, StorageError};
use crate::error::{ExitClass, HasExitClass};

#[derive(Debug, thiserror::Error)]
pub enum DvcError {
    #[error(
        "dvc:{path}: {dir} is not in a Git repository (dvc: sources are read from the pipeline's repository at the commit being run)"
    )]
    NotInGit { path: String, dir: String },
    #[error("dvc:{path}: commit `{commit}` is not in the repository at {repo}: {message}")]
    BadCommit { path: String, commit: String, repo: String, message: String },
    #[error("dvc:{path}: no .dvc file or dvc.lock stage tracks it at commit {commit} (looked for {looked})")]
    NotTracked { path: String, commit: String, looked: String },
    #[error("{file} at commit {commit}: {message}")]
    BadFile { file: String, commit: String, message: String },
    #[error(
        "dvc:{path}: {file} at commit {commit} names no remote and .dvc/config has no `core.remote`; add one with `dvc remote add -d NAME s3://BUCKET/PATH`"
    )]
    NoRemote { path: String, file: String, commit: String },
    #[error("dvc:{path}: DVC remote `{name}` is `{url}`, which is not S3: modelship reads s3:// remotes only")]
    NotS3 { path: String, name: String, url: String },
    #[error(
        "dvc:{path}: {file} at commit {commit} has no md5 for `{out}` (is it a DVC 1 file? run `dvc commit` with DVC 3)"
    )]
    NoHash { path: String, file: String, commit: String, out: String },
    #[error(
        "dvc:{path}: `{path}` is a part of `{out}`, which {file} tracks, but its directory listing has nothing at `{sub}`"
    )]
    NotInDir { path: String, out: String, file: String, sub: String },
}

impl HasExitClass for DvcError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::BadInput
    }
}

/// A `dvc:` path: relative to the repository's root, inside it.
pub fn check_path(path: &str) -> Result<(), String> {
    let p = path.trim_start_matches("./").trim_end_matches('/');
    if p.is_empty() {
        return Err("no path after dvc: (expected dvc:PATH, relative to the Git repository's root)".into());
    }
    if p.starts_with('/') {
        return Err(format!("`{p}` is absolute; a dvc: path is relative to the Git repository's root"));
    }
    if p.split('/').any(|s| s == "..") {
        return Err(format!("`{p}` leaves the repository (`..`); a dvc: path names a path inside it"));
    }
    if p.split('/').any(|s| s.is_empty() || s == ".") {
        return Err(format!("`{p}` has an empty or `.` segment"));
    }
    Ok(())
}

/// The files that can track `path`: `P.dvc` for it and each directory above
/// it, and `D/dvc.lock` in each directory above it (the root's included),
/// nearest first. A push touching one of them may change what `dvc:PATH` is.
pub fn tracking_files(path: &str) -> Vec<String> {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    let mut out = Vec::new();
    let mut p = path;
    loop {
        out.push(format!("{p}.dvc"));
        match p.rsplit_once('/') {
            Some((parent, _)) => p = parent,
            None => break,
        }
    }
    let mut d = path;
    while let Some((parent, _)) = d.rsplit_once('/') {
        out.push(format!("{parent}/dvc.lock"));
        d = parent;
    }
    out.push("dvc.lock".into());
    out
}

/// One output of a `.dvc` file or a `dvc.lock` stage.
#[derive(Debug, Clone, Default, Deserialize)]
struct Out {
    path: String,
    #[serde(default)]
    md5: Option<String>,
    /// `md5` for DVC 3 entries; absent for older ones.
    #[serde(default)]
    hash: Option<String>,
    /// A per-output remote (`dvc add --remote`).
    #[serde(default)]
    remote: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DvcFile {
    #[serde(default)]
    outs: Vec<Out>,
}

#[derive(Debug, Deserialize)]
struct DvcLock {
    #[serde(default)]
    stages: std::collections::BTreeMap<String, LockStage>,
}

#[derive(Debug, Deserialize)]
struct LockStage {
    #[serde(default)]
    outs: Vec<Out>,
}

#[derive(Debug, Deserialize)]
struct DirEntry {
    md5: String,
    relpath: String,
}

/// What the lineage and the attestation keep of a DVC-tracked model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DvcLineage {
    /// The path asked for (`dvc:PATH`).
    pub path: String,
    /// The Git commit the tracking file was read at.
    pub commit: String,
    /// The `.dvc` file or `dvc.lock` that tracks it, relative to the repository root.
    pub file: String,
    /// The tracked output (`PATH` or a directory above it) and its md5.
    pub out: String,
    pub md5: String,
    /// `md5` (DVC 3) or `md5-dos2unix` (older entries).
    pub hash: String,
    /// The remote's name and URL.
    pub remote: String,
    pub remote_url: String,
}

/// The repository, the commit and the objects `dvc:PATH` stands for.
pub struct Plan {
    pub objects: Vec<PlannedObject>,
    pub lineage: DvcLineage,
    /// The remote's endpoint and region (`endpointurl`, `region`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

/// A Git repository at one commit.
struct Tree<'r> {
    repo: &'r git2::Repository,
    tree: git2::Tree<'r>,
    commit: String,
}

impl Tree<'_> {
    fn read(&self, path: &str) -> Option<Vec<u8>> {
        let entry = self.tree.get_path(Path::new(path)).ok()?;
        let blob = entry.to_object(self.repo).ok()?.into_blob().ok()?;
        Some(blob.content().to_vec())
    }
}

/// Read what tracks `path` in the repository holding `pipeline_dir`, at
/// `commit` (else HEAD), and plan the objects to fetch; the `.dir`
/// listing (when the output is a directory) is read from the remote here.
pub async fn plan(pipeline_dir: &Path, path: &str, commit: Option<&str>, s3: &S3Options) -> Result<Plan, StorageError> {
    let (located, remote_name, remote_url, endpoint, region) = {
        let dir = std::path::absolute(pipeline_dir).unwrap_or_else(|_| pipeline_dir.to_path_buf());
        let repo = git2::Repository::discover(&dir)
            .map_err(|_| DvcError::NotInGit { path: path.into(), dir: dir.display().to_string() })?;
        let repo_dir = repo.workdir().map(Path::to_path_buf).unwrap_or_else(|| repo.path().to_path_buf());
        let spec = commit.unwrap_or("HEAD");
        let c = repo.revparse_single(spec).and_then(|o| o.peel_to_commit()).map_err(|e| DvcError::BadCommit {
            path: path.into(),
            commit: spec.into(),
            repo: repo_dir.display().to_string(),
            message: e.message().to_string(),
        })?;
        let tree = Tree {
            repo: &repo,
            tree: c.tree().map_err(|e| DvcError::BadCommit {
                path: path.into(),
                commit: spec.into(),
                repo: repo_dir.display().to_string(),
                message: e.message().to_string(),
            })?,
            commit: c.id().to_string(),
        };
        let located = locate(&tree, path)?;
        let config = tree.read(".dvc/config").map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        let (name, url, endpoint, region) =
            remote(&config, located.out.remote.as_deref(), path, &located, &tree.commit)?;
        (located, name, url, endpoint, region)
    };
    let Located { file, out, out_path, sub, commit } = located;
    let md5 = out.md5.clone().filter(|m| !m.is_empty()).ok_or_else(|| DvcError::NoHash {
        path: path.into(),
        file: file.clone(),
        commit: commit.clone(),
        out: out.path.clone(),
    })?;
    let v3 = out.hash.as_deref() == Some("md5");
    let (bucket, prefix) =
        remote_url.strip_prefix("s3://").map(|r| r.split_once('/').unwrap_or((r, ""))).expect("checked s3");
    let prefix = prefix.trim_matches('/');
    let key_of = |hash: &str| {
        let (ab, rest) = hash.split_at(2.min(hash.len()));
        let layout = if v3 { "files/md5/" } else { "" };
        if prefix.is_empty() { format!("{layout}{ab}/{rest}") } else { format!("{prefix}/{layout}{ab}/{rest}") }
    };
    let check = |h: &str| if v3 { Md5Check::Plain(h.to_string()) } else { Md5Check::Dos2Unix(h.to_string()) };
    let name_of = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    let mut objects = Vec::new();
    if let Some(dir_md5) = md5.strip_suffix(".dir") {
        let mut opts = s3.clone();
        opts.endpoint = opts.endpoint.or(endpoint.clone());
        opts.region = opts.region.or(region.clone());
        let remote = super::s3::Remote::connect(&opts).await?;
        let key = key_of(&md5);
        let bytes = remote.get_bytes(bucket, &key, 64 << 20).await?;
        let got = super::verify::md5_of(&bytes[..], false).map_err(|e| StorageError::io("hash", &key, e))?;
        if got != dir_md5 {
            return Err(StorageError::Mismatch {
                url: format!("s3://{bucket}/{key}"),
                what: format!("md5 (the directory listing of `{}` in {file})", out.path),
                expected: dir_md5.to_string(),
                actual: got,
            });
        }
        let entries: Vec<DirEntry> = serde_json::from_slice(&bytes).map_err(|e| DvcError::BadFile {
            file: format!("s3://{bucket}/{key} (the .dir listing {file} names)"),
            commit: commit.clone(),
            message: e.to_string(),
        })?;
        for e in entries {
            let rel = match &sub {
                None => e.relpath.clone(),
                Some(s) if e.relpath == *s => name_of(s),
                Some(s) => match e.relpath.strip_prefix(&format!("{s}/")) {
                    Some(r) => r.to_string(),
                    None => continue,
                },
            };
            objects.push(PlannedObject {
                rel,
                size: None,
                location: Location::S3 { bucket: bucket.into(), key: key_of(&e.md5) },
                md5: Some(check(&e.md5)),
            });
        }
        if objects.is_empty()
            && let Some(s) = &sub
        {
            return Err(DvcError::NotInDir {
                path: path.into(),
                out: out_path.clone(),
                file: file.clone(),
                sub: s.clone(),
            }
            .into());
        }
    } else {
        objects.push(PlannedObject {
            rel: name_of(&out_path),
            size: None,
            location: Location::S3 { bucket: bucket.into(), key: key_of(&md5) },
            md5: Some(check(&md5)),
        });
    }
    Ok(Plan {
        objects,
        lineage: DvcLineage {
            path: path.into(),
            commit,
            file,
            out: out_path,
            md5,
            hash: if v3 { "md5".into() } else { "md5-dos2unix".into() },
            remote: remote_name,
            remote_url: remote_url.clone(),
        },
        endpoint,
        region,
    })
}

/// The tracking file and output found for a path.
struct Located {
    file: String,
    out: Out,
    /// The output's path from the repository root.
    out_path: String,
    /// `path` below the output, when the output is a directory above it.
    sub: Option<String>,
    commit: String,
}

fn join(dir: &str, rel: &str) -> String {
    let rel = rel.trim_start_matches("./").trim_end_matches('/');
    if dir.is_empty() { rel.to_string() } else { format!("{dir}/{rel}") }
}

fn covers(out_path: &str, path: &str) -> Option<Option<String>> {
    if out_path == path {
        return Some(None);
    }
    path.strip_prefix(&format!("{out_path}/")).map(|s| Some(s.to_string()))
}

fn locate(tree: &Tree<'_>, path: &str) -> Result<Located, DvcError> {
    let bad =
        |file: &str, message: String| DvcError::BadFile { file: file.into(), commit: tree.commit.clone(), message };
    let candidates = tracking_files(path);
    for file in &candidates {
        let Some(bytes) = tree.read(file) else { continue };
        let text = String::from_utf8(bytes).map_err(|_| bad(file, "not UTF-8".into()))?;
        let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
        let outs: Vec<Out> = if file.ends_with(".dvc") {
            crate::spec::yaml::from_str::<DvcFile>(&text).map_err(|e| bad(file, e.to_string()))?.outs
        } else {
            let lock = crate::spec::yaml::from_str::<DvcLock>(&text).map_err(|e| bad(file, e.to_string()))?;
            lock.stages.into_values().flat_map(|s| s.outs).collect()
        };
        for out in outs {
            let out_path = join(dir, &out.path);
            if let Some(sub) = covers(&out_path, path) {
                return Ok(Located { file: file.clone(), out, out_path, sub, commit: tree.commit.clone() });
            }
        }
    }
    Err(DvcError::NotTracked { path: path.into(), commit: tree.commit.clone(), looked: candidates.join(", ") })
}

/// The remote `wanted` (else `core.remote`) of a `.dvc/config`: its name,
/// URL, `endpointurl` and `region`. S3 only.
fn remote(
    config: &str,
    wanted: Option<&str>,
    path: &str,
    at: &Located,
    commit: &str,
) -> Result<(String, String, Option<String>, Option<String>), DvcError> {
    let bad = |message: String| DvcError::BadFile { file: ".dvc/config".into(), commit: commit.into(), message };
    let ini = ini::Ini::load_from_str(config).map_err(|e| bad(e.to_string()))?;
    // configobj writes `['remote "NAME"']`; DVC reads `[remote "NAME"]` too.
    let section = |s: &str| s.trim_matches('\'').to_string();
    let core_remote = ini
        .iter()
        .find(|(s, _)| s.map(section).as_deref() == Some("core"))
        .and_then(|(_, p)| p.get("remote").map(str::to_string));
    let name = wanted.map(str::to_string).or(core_remote).ok_or_else(|| DvcError::NoRemote {
        path: path.into(),
        file: at.file.clone(),
        commit: commit.into(),
    })?;
    let want = format!("remote \"{name}\"");
    let props = ini.iter().find(|(s, _)| s.map(section).as_deref() == Some(want.as_str())).map(|(_, p)| p).ok_or_else(
        || {
            bad(format!(
                "no section [remote \"{name}\"] for the remote {} names",
                if wanted.is_some() { at.file.as_str() } else { "core.remote" }
            ))
        },
    )?;
    let url = props.get("url").ok_or_else(|| bad(format!("remote `{name}` has no url")))?.to_string();
    if !url.starts_with("s3://") || url.len() <= "s3://".len() {
        return Err(DvcError::NotS3 { path: path.into(), name, url });
    }
    let endpoint = props.get("endpointurl").map(str::to_string);
    let region = props.get("region").map(str::to_string);
    Ok((name, url, endpoint, region))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_repository() {
        assert!(check_path("models/weather").is_ok());
        assert!(check_path("./models/weather/").is_ok());
        for (bad, why) in [
            ("", "no path"),
            ("/etc/passwd", "absolute"),
            ("models/../../x", "leaves the repository"),
            ("a//b", "empty"),
        ] {
            let err = check_path(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn tracking_files_are_the_dvc_files_and_locks_above_a_path() {
        assert_eq!(
            tracking_files("models/weather"),
            ["models/weather.dvc", "models.dvc", "models/dvc.lock", "dvc.lock"]
        );
        assert_eq!(tracking_files("m"), ["m.dvc", "dvc.lock"]);
    }

    #[test]
    fn remotes_come_from_the_config_and_must_be_s3() {
        let at =
            Located { file: "m.dvc".into(), out: Out::default(), out_path: "m".into(), sub: None, commit: "c".into() };
        let config = "[core]\n    remote = store\n['remote \"store\"']\n    url = s3://dvc/cache\n    endpointurl = http://127.0.0.1:9000\n['remote \"gcs\"']\n    url = gs://b/p\n";
        let (name, url, ep, region) = remote(config, None, "m", &at, "c").unwrap();
        assert_eq!(
            (name.as_str(), url.as_str(), ep.as_deref(), region),
            ("store", "s3://dvc/cache", Some("http://127.0.0.1:9000"), None)
        );
        let err = remote(config, Some("gcs"), "m", &at, "c").unwrap_err();
        assert_eq!(
            err.to_string(),
            "dvc:m: DVC remote `gcs` is `gs://b/p`, which is not S3: modelship reads s3:// remotes only"
        );
        assert!(matches!(remote("", None, "m", &at, "c"), Err(DvcError::NoRemote { .. })));
    }

    #[test]
    fn an_output_covers_itself_and_what_is_below_it() {
        assert_eq!(covers("models/weather", "models/weather"), Some(None));
        assert_eq!(covers("models", "models/weather"), Some(Some("weather".into())));
        assert_eq!(covers("models/w", "models/weather"), None);
    }
}
