//! Shared by the tests that drive the real `modelship` binary against `--sim`
//! (crash_resume, secrets): the fixture layout `--sim` seeds from, the
//! pre-warmed venv cache, a `sim serve` to inspect a sim's data directory
//! with `kubectl`, and a scan for processes left running.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_modelship");

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn tools() -> PathBuf {
    match std::env::var_os("MODELSHIP_TEST_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/modelship-test-tools"),
    }
}

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

pub fn kubectl() -> PathBuf {
    let local = tools().join("kubectl/venv/bin/kubectl");
    if local.exists() {
        return local;
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join("kubectl")).find(|k| k.exists()))
        .unwrap_or_else(|| panic!("kubectl not found: run scripts/test.sh (scripts/setup.d/10-kubectl.sh installs it)"))
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

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// The binary with the venv cache set and nothing inherited that would
/// change its behaviour (a stray KUBECONFIG, a TTY-dependent log format).
pub fn modelship() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("MODELSHIP_SIM_VENV_CACHE", venv_cache()).env_remove("KUBECONFIG").env_remove("RUST_LOG");
    cmd
}

/// Send a signal with the shell's `kill` builtin (no libc in the tests).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("sh").args(["-c", &format!("kill -{sig} {pid}")]).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid} failed");
}

/// A `modelship sim serve` over an existing data directory, so `kubectl`
/// can look at what runs left there. Stopped (SIGTERM, then waited) on drop.
pub struct Served {
    child: Child,
    pub kubeconfig: PathBuf,
}

impl Served {
    pub fn start(data: &Path, name: &str) -> Served {
        Served::start_with(data, name, &[])
    }

    /// With more `sim serve` flags (`--forbid RULE`, `--fault RULE`).
    pub fn start_with(data: &Path, name: &str, flags: &[&str]) -> Served {
        let kubeconfig = data.with_file_name(format!("kubeconfig-served-{name}"));
        let mut child = modelship()
            .args(["sim", "serve", "--log-format", "json", "--name", name, "--data"])
            .arg(data)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // `listening on URL` then `kubeconfig: PATH`: the file is written.
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("kubeconfig:") => break,
                Some(Ok(_)) => {}
                _ => panic!("sim serve --data {} exited before writing its kubeconfig", data.display()),
            }
        }
        Served { child, kubeconfig }
    }

    /// `kubectl ARGS -o json` against this sim.
    pub fn get_json(&self, args: &[&str]) -> Value {
        let out = Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `kubectl ARGS` raw stdout (for greps).
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(kubectl()).arg("--kubeconfig").arg(&self.kubeconfig).args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl apply -f -` with `manifest` (JSON or YAML).
    pub fn apply(&self, manifest: &str) {
        use std::io::Write as _;
        let mut child = Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.get_json(args)["items"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
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
