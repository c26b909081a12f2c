//! The real `modelship` binary against `--sim` (crash_resume, secrets,
//! keras, signing, ...): the fixture layout `--sim` seeds from, the
//! pre-warmed venv cache, and a scan for processes left running.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{BIN, copy_tree, repo, tools};

/// The pre-warmed seldon-core venv cache (`scripts/setup.d/60-sim-venv.sh`);
/// without it the first deploy spends minutes in pip.
pub fn venv_cache() -> PathBuf {
    let cache = tools().join("sim-venvs");
    let lock = std::fs::read(repo().join("fixtures/requirements-lock/weather.txt")).unwrap();
    let hash = &hex::encode(Sha256::digest(&lock))[..16];
    assert!(
        cache.join(hash).join(".complete").is_file(),
        "{} is missing: run scripts/test.sh (scripts/setup.d/60-sim-venv.sh pre-warms the sim's venv cache)",
        cache.join(hash).display()
    );
    cache
}

/// `DIR/pipelines/weather.yaml` (the shipped pipeline with a small load
/// phase, so a run takes seconds) and `DIR/fixtures/weather-model`, where
/// `--sim` seeds its S3 bucket from. `edit` may change the YAML further.
pub fn weather_fixture(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let yaml = std::fs::read_to_string(repo().join("pipelines/weather.yaml")).unwrap();
    let small = yaml.replace("load: { requests: 200, concurrency: 8 }", "load: { requests: 20, concurrency: 2 }");
    assert_ne!(small, yaml, "pipelines/weather.yaml no longer has the load phase this fixture shrinks");
    let pipeline = dir.join("pipelines/weather.yaml");
    std::fs::create_dir_all(pipeline.parent().unwrap()).unwrap();
    std::fs::write(&pipeline, edit(small)).unwrap();
    copy_tree(&repo().join("fixtures/weather-model"), &dir.join("fixtures/weather-model"));
    pipeline
}

/// The binary with the venv cache set and nothing inherited that would
/// change its behaviour (a stray KUBECONFIG, a TTY-dependent log format).
pub fn modelship() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("MODELSHIP_SIM_VENV_CACHE", venv_cache()).env_remove("KUBECONFIG").env_remove("RUST_LOG");
    cmd
}

/// Processes whose working directory is under `dir` (the sim's model
/// processes run in unpacked rootfs dirs there).
pub fn processes_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(dir) = dir.canonicalize() else { return Vec::new() };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let zombie = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            .unwrap_or(true);
        if zombie {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd"))
            && cwd.starts_with(&dir)
        {
            out.push((pid, cwd));
        }
    }
    out
}

/// Wait (up to 10 s, polling) until no process runs under `dir`; the
/// processes still there otherwise. Not a timing assertion: shutdown is
/// asynchronous and this only bounds how long the test waits for it.
pub fn wait_no_processes_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = processes_under(dir);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `data.run.yaml` / `data.ledger.yaml` of a state ConfigMap, parsed.
pub fn cm_yaml(cm: &Value, key: &str) -> Value {
    let text = cm["data"][key].as_str().unwrap_or_else(|| panic!("ConfigMap has no data.{key}: {cm}"));
    serde_yaml::from_str(text).unwrap()
}
