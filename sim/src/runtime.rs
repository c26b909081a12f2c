//! What stands in for a container runtime in the sim: pull an image by
//! digest from the sim's registry (in-process), unpack its layers into a
//! directory, prepare a Python venv from the image's `requirements.txt`
//! (the RUN steps a build does not execute), and run the image's
//! `ENTRYPOINT`+`CMD` with its `ENV` and `WORKDIR` as a local process in its
//! own process group.
//!
//! Venvs are cached by the sha256 of the requirements (first 16 hex digits)
//! under [`venv_cache_dir`], shared by every sim data dir: `<cache>/<hash>/`
//! with a `.complete` marker written last, created under an exclusive lock
//! on `<cache>/.<hash>.lock` so two sims never build one venv at once.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::reference::Reference;
use super::registry::{RegistryStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("image {image} is not in the sim registry")]
    NotFound { image: String },
    #[error("image {image}: {reason}")]
    BadImage { image: String, reason: String },
    #[error("image {image}: {source}")]
    Registry {
        image: String,
        #[source]
        source: StoreError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the Python venv {venv} failed ({command}): {output}")]
    Venv { venv: PathBuf, command: String, output: String },
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_path_buf(), source }
}

/// An unpacked image: its root filesystem and the config the process needs.
#[derive(Debug, Clone)]
pub struct Image {
    pub rootfs: PathBuf,
    pub env: Vec<(String, String)>,
    /// `Entrypoint` followed by `Cmd`.
    pub argv: Vec<String>,
    /// The image's `WorkingDir` (absolute inside the image, `/` if unset).
    pub workdir: String,
}

impl Image {
    /// An absolute image path mapped into the unpacked rootfs.
    pub fn host_path(&self, image_path: &str) -> PathBuf {
        self.rootfs.join(image_path.trim_start_matches('/'))
    }

    /// `requirements.txt` in the working directory, else the first one found
    /// in the rootfs (a COPY destination elsewhere).
    pub fn requirements(&self) -> Option<PathBuf> {
        let in_workdir = self.host_path(&self.workdir).join("requirements.txt");
        if in_workdir.is_file() {
            return Some(in_workdir);
        }
        find_file(&self.rootfs, "requirements.txt", 6)
    }
}

fn find_file(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in &entries {
        if e.file_name() == name && e.file_type().is_ok_and(|t| t.is_file()) {
            return Some(e.path());
        }
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find_file(&e.path(), name, depth - 1))
}

/// Pull `image` (pinned by digest) from `registry` and unpack it into
/// `dir/rootfs`; `dir/.unpacked` marks a finished unpack so a restarted sim
/// reuses it.
pub async fn unpack(registry: &RegistryStore, image: &Reference, dir: &Path) -> Result<Image, RuntimeError> {
    let shown = image.to_string();
    let bad = |reason: String| RuntimeError::BadImage { image: shown.clone(), reason };
    let digest = image.digest.as_deref().ok_or_else(|| bad("not pinned by digest".into()))?;
    let (_, media_type, bytes) = registry
        .get_manifest(&image.path, digest)
        .await
        .ok_or_else(|| RuntimeError::NotFound { image: shown.clone() })?;
    let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest: {e}")))?;
    if manifest.get("manifests").is_some() || media_type.contains("index") || media_type.contains("list") {
        return Err(bad("is an image index; the sim runs single-platform images".into()));
    }
    let config_digest = manifest
        .pointer("/config/digest")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("manifest has no config".into()))?;
    let config = read_blob(registry, &image.path, config_digest, &shown).await?;
    let config: Value = serde_json::from_slice(&config).map_err(|e| bad(format!("image config: {e}")))?;
    let c = config.get("config").cloned().unwrap_or(Value::Null);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    let env = strings(c.get("Env"))
        .into_iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let mut argv = strings(c.get("Entrypoint"));
    argv.extend(strings(c.get("Cmd")));
    if argv.is_empty() {
        return Err(bad("the image config has neither Entrypoint nor Cmd".into()));
    }
    let workdir = c.get("WorkingDir").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("/").to_string();
    let rootfs = dir.join("rootfs");
    let marker = dir.join(".unpacked");
    if !marker.is_file() {
        if rootfs.exists() {
            std::fs::remove_dir_all(&rootfs).map_err(io(&rootfs))?;
        }
        std::fs::create_dir_all(&rootfs).map_err(io(&rootfs))?;
        let layers = manifest.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
        for layer in layers {
            let d = layer.get("digest").and_then(Value::as_str).ok_or_else(|| bad("layer without digest".into()))?;
            let mt = layer.get("mediaType").and_then(Value::as_str).unwrap_or("").to_string();
            let file = registry
                .open_blob(&image.path, d)
                .await
                .map_err(|source| RuntimeError::Registry { image: shown.clone(), source })?
                .into_std()
                .await;
            let rootfs = rootfs.clone();
            let layer_name = d.to_string();
            // tar is synchronous; the layer streams from its blob file.
            tokio::task::spawn_blocking(move || unpack_layer(file, &mt, &rootfs))
                .await
                .map_err(|e| bad(format!("unpacking layer {layer_name}: {e}")))?
                .map_err(|e| bad(format!("unpacking layer {layer_name}: {e}")))?;
        }
        std::fs::write(&marker, b"").map_err(io(&marker))?;
    }
    Ok(Image { rootfs, env, argv, workdir })
}

async fn read_blob(registry: &RegistryStore, repo: &str, digest: &str, image: &str) -> Result<Vec<u8>, RuntimeError> {
    use tokio::io::AsyncReadExt;
    let mut f = registry
        .open_blob(repo, digest)
        .await
        .map_err(|source| RuntimeError::Registry { image: image.to_string(), source })?;
    let mut buf = Vec::new();
    // Configs are small; `take` bounds a hostile one.
    (&mut f).take(16 << 20).read_to_end(&mut buf).await.map_err(io(Path::new(digest)))?;
    Ok(buf)
}

fn unpack_layer(file: std::fs::File, media_type: &str, rootfs: &Path) -> std::io::Result<()> {
    let reader: Box<dyn Read> = if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // OCI whiteouts: a `.wh.NAME` removes NAME from lower layers.
        if let Some(gone) = name.strip_prefix(".wh.") {
            if gone != ".wh..opq" {
                let target = rootfs.join(path.with_file_name(gone));
                let _ = std::fs::remove_dir_all(&target).or_else(|_| std::fs::remove_file(&target));
            }
            continue;
        }
        // `unpack_in` refuses paths that escape the rootfs.
        entry.unpack_in(rootfs)?;
    }
    Ok(())
}

/// Where venvs are cached: `$MODELSHIP_SIM_VENV_CACHE`, else
/// `${XDG_CACHE_HOME:-~/.cache}/modelship/venvs`.
pub fn venv_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MODELSHIP_SIM_VENV_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    dirs::cache_dir().unwrap_or_else(|| std::env::temp_dir().join("modelship-cache")).join("modelship/venvs")
}

/// The cache key of a requirements file.
pub fn requirements_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))[..16].to_string()
}

/// The Python that makes venvs: `$MODELSHIP_SIM_PYTHON`, else python3.11
/// (seldon-core 1.17.1's), else python3.
fn python() -> String {
    if let Some(p) = std::env::var_os("MODELSHIP_SIM_PYTHON").filter(|p| !p.is_empty()) {
        return p.to_string_lossy().into_owned();
    }
    let on_path = |name: &str| {
        std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(name).is_file()))
    };
    if on_path("python3.11") { "python3.11".into() } else { "python3".into() }
}

/// The venv for `requirements` (blocking: may run pip for minutes the first
/// time). Returns the venv directory.
pub fn prepare_venv(requirements: &Path) -> Result<PathBuf, RuntimeError> {
    let bytes = std::fs::read(requirements).map_err(io(requirements))?;
    let hash = requirements_hash(&bytes);
    let cache = venv_cache_dir();
    let venv = cache.join(&hash);
    if venv.join(".complete").is_file() {
        return Ok(venv);
    }
    std::fs::create_dir_all(&cache).map_err(io(&cache))?;
    let lock_path = cache.join(format!(".{hash}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    // Another sim may have finished it while this one waited for the lock.
    if venv.join(".complete").is_file() {
        return Ok(venv);
    }
    tracing::info!(venv = %venv.display(), requirements = %requirements.display(), "preparing Python venv for the model server (first time only; pip may take a few minutes)");
    if venv.exists() {
        std::fs::remove_dir_all(&venv).map_err(io(&venv))?;
    }
    let run = |program: &str, args: &[&std::ffi::OsStr]| -> Result<(), RuntimeError> {
        let command = format!("{program} {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn { command: command.clone(), source })?;
        if !out.status.success() {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            return Err(RuntimeError::Venv { venv: venv.clone(), command, output: last_lines(&text, 15) });
        }
        Ok(())
    };
    let py = python();
    run(&py, &["-m".as_ref(), "venv".as_ref(), venv.as_os_str()])?;
    let venv_py = venv.join("bin/python");
    run(
        &venv_py.to_string_lossy(),
        &[
            "-m".as_ref(),
            "pip".as_ref(),
            "install".as_ref(),
            "--disable-pip-version-check".as_ref(),
            "--quiet".as_ref(),
            "-r".as_ref(),
            requirements.as_os_str(),
        ],
    )?;
    std::fs::copy(requirements, venv.join("requirements.txt")).map_err(io(&venv))?;
    let marker = venv.join(".complete");
    std::fs::write(&marker, b"").map_err(io(&marker))?;
    drop(lock);
    Ok(venv)
}

/// The last `n` non-empty lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A model process running in its own process group, output to a log file.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    pub pid: u32,
    pub log: PathBuf,
    /// Set once [`Process::kill`] ran; otherwise drop kills the group.
    pid_killed: bool,
}

impl Drop for Process {
    /// A sim dropped without shutdown (a panicking test, an aborted task)
    /// still takes the whole group down, not just the leader.
    fn drop(&mut self) {
        if !self.pid_killed && self.pid != 0 {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pid)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What a process gets besides the image.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Extra environment (the container's `env`, the operator's ports).
    pub env: Vec<(String, String)>,
    pub venv: Option<PathBuf>,
    pub log: PathBuf,
}

impl Process {
    /// Start the image's command: the image `Env` then `launch.env`, the
    /// venv's `bin` first on `PATH`, the working directory mapped into the
    /// rootfs. An absolute program that exists in the rootfs runs from
    /// there; otherwise the host's (`/bin/sh`).
    pub fn spawn(image: &Image, launch: &Launch) -> Result<Process, RuntimeError> {
        use std::os::unix::process::CommandExt as _;
        let program = &image.argv[0];
        let in_rootfs = image.host_path(program);
        let program_path =
            if program.starts_with('/') && in_rootfs.is_file() { in_rootfs } else { PathBuf::from(program) };
        let cwd = image.host_path(&image.workdir);
        std::fs::create_dir_all(&cwd).map_err(io(&cwd))?;
        let log = std::fs::File::create(&launch.log).map_err(io(&launch.log))?;
        let log_err = log.try_clone().map_err(io(&launch.log))?;
        let host_path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let mut path = Vec::new();
        if let Some(v) = &launch.venv {
            path.push(v.join("bin"));
        }
        path.extend(std::env::split_paths(&host_path));
        let mut cmd = std::process::Command::new(&program_path);
        cmd.args(&image.argv[1..])
            .current_dir(&cwd)
            .env_clear()
            .envs(image.env.iter().map(|(k, v)| (k, v)))
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env(
                "PATH",
                std::env::join_paths(path)
                    .map_err(|e| RuntimeError::Spawn { command: program.clone(), source: std::io::Error::other(e) })?,
            )
            .env("HOME", &cwd)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        if let Some(v) = &launch.venv {
            cmd.env("VIRTUAL_ENV", v);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        // If the sim itself dies, at least the group leader goes too.
        cmd.kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| RuntimeError::Spawn { command: image.argv.join(" "), source })?;
        let pid = child.id().unwrap_or(0);
        Ok(Process { child, pid, log: launch.log.clone(), pid_killed: false })
    }

    /// The process's last output lines.
    pub fn output_tail(&self, n: usize) -> String {
        last_lines(&std::fs::read_to_string(&self.log).unwrap_or_default(), n)
    }

    /// Wait for the group leader to exit.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Kill the whole process group (servers fork workers) and reap the leader.
    pub async fn kill(mut self) {
        self.pid_killed = true;
        if self.pid != 0 {
            let _ = tokio::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.pid)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        // SIGKILL is delivered asynchronously: wait (bounded) until no live
        // member of the group is left, so "stopped" means gone.
        for _ in 0..100 {
            if self.pid == 0 || !group_alive(self.pid) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// Whether a process of group `pgid` is still running (zombies, dead but
/// not yet reaped by init, do not count).
fn group_alive(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    dir.flatten().any(|e| {
        if !e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { return false };
        // `pid (comm) state ppid pgrp ...`; comm may contain spaces or ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else { return false };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 3 && fields[0] != "Z" && fields[0] != "X" && fields[2] == pgid.to_string()
    })
}

/// The file beside a model's rootfs that records its process group, so a
/// sim restarted after its process was SIGKILLed (no drop, no shutdown) can
/// stop what the dead one left running.
pub const PGID_FILE: &str = "pgid";

/// Stop every process group recorded in a `PGID_FILE` under `root` whose
/// members still run in a working directory under `root` (a pid reused by
/// an unrelated process is left alone), and remove the files. Returns the
/// groups killed.
pub fn kill_recorded_groups(root: &Path) -> Vec<u32> {
    let Ok(canonical) = root.canonicalize() else { return Vec::new() };
    let mut files = Vec::new();
    // `<ns>/<name>/<digest>/pgid`
    collect_named(root, PGID_FILE, 3, &mut files);
    let mut killed = Vec::new();
    for file in files {
        let pgid = std::fs::read_to_string(&file).ok().and_then(|t| t.trim().parse::<u32>().ok());
        if let Some(pgid) = pgid.filter(|&p| p > 1)
            && group_members(pgid)
                .iter()
                .any(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(&canonical)))
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            killed.push(pgid);
        }
        let _ = std::fs::remove_file(&file);
    }
    // Wait (bounded) until they are gone, so their ports are free again.
    for _ in 0..50 {
        if killed.iter().all(|&g| !group_alive(g)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    killed
}

fn collect_named(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_name() == name && path.is_file() {
            out.push(path);
        } else if depth > 0 && e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_named(&path, name, depth - 1, out);
        }
    }
}

/// Live (not zombie) processes of group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            (fields.len() > 3 && fields[0] != "Z" && fields[0] != "X" && fields[2] == pgid.to_string()).then_some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_skips_blank_lines() {
        assert_eq!(last_lines("a\n\nb\nc\n\n", 2), "b\nc");
        assert_eq!(last_lines("", 3), "");
    }

    #[test]
    fn requirements_hash_is_16_hex() {
        assert_eq!(requirements_hash(b"seldon-core==1.17.1\n").len(), 16);
    }
}
