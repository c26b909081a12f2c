//! The one `kubectl`: from the test tools dir if `scripts/setup.d/10-kubectl.sh`
//! put one there, else from `PATH`, run against one kubeconfig.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::text;

/// The `kubectl` binary the tests run.
pub fn path() -> PathBuf {
    let local = super::tools().join("kubectl/venv/bin/kubectl");
    if local.exists() {
        return local;
    }
    super::on_path("kubectl")
        .unwrap_or_else(|| panic!("kubectl not found: run scripts/test.sh (scripts/setup.d/10-kubectl.sh installs it)"))
}

/// `kubectl --kubeconfig KUBECONFIG`, optionally with its own `HOME` and
/// cache directory (so nothing is written to the user's `~/.kube`).
#[derive(Debug, Clone)]
pub struct Kubectl {
    kubeconfig: PathBuf,
    home: Option<PathBuf>,
}

/// `kubectl` against `kubeconfig`.
pub fn at(kubeconfig: impl AsRef<Path>) -> Kubectl {
    Kubectl { kubeconfig: kubeconfig.as_ref().to_path_buf(), home: None }
}

impl Kubectl {
    /// With `HOME=home` and `--cache-dir home/kube-cache`.
    pub fn home(mut self, home: &Path) -> Kubectl {
        self.home = Some(home.to_path_buf());
        self
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The command, not started (stdin closed).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(path());
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(home) = &self.home {
            cmd.arg("--cache-dir").arg(home.join("kube-cache")).env("HOME", home);
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    /// Run it, whatever the outcome.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    }

    /// Run it; it must succeed. Its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// The `items` of `kubectl ARGS -o json`.
    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.json(args)["items"].as_array().cloned().unwrap_or_default()
    }

    /// `kubectl apply -f -` with `manifest` (JSON or YAML).
    pub fn apply(&self, manifest: &str) {
        use std::io::Write as _;
        let mut child = self
            .command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply: {}", text(&out.stderr));
    }

    /// As [`Kubectl::ok`], repeated (up to 30 times, 50 ms apart) while it
    /// fails: against a sim that injects faults, which apply to kubectl too
    /// (kubectl itself does not retry 5xx).
    pub fn retrying(&self, args: &[&str]) -> String {
        let mut last = String::new();
        for _ in 0..30 {
            let out = self.output(args);
            if out.status.success() {
                return text(&out.stdout);
            }
            last = text(&out.stderr);
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kubectl {args:?}: {last}");
    }
}
