//! A served sim (`modelship sim serve` over a data directory, what it
//! prints parsed, stopped on drop), a sim's kubeconfig written to disk, and
//! skopeo's login to a sim's integrated registry.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use openshift_sim::SimServer;
use serde_json::Value;

use super::kubectl::{self, Kubectl};

/// Write `sim`'s kubeconfig to `dir/kubeconfig`; its path.
pub fn kubeconfig_file(sim: &SimServer, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(&path, sim.kubeconfig()).unwrap();
    path
}

/// `modelship sim serve --data DATA --kubeconfig KUBECONFIG ...`, started
/// by [`Serve::start`].
pub struct Serve {
    cmd: Command,
    data: PathBuf,
    kubeconfig: Option<PathBuf>,
    name: Option<String>,
    args: Vec<OsString>,
}

impl Serve {
    /// The binary to run (e.g. with the venv cache, a working directory or
    /// an XDG cache set); by default [`super::cli::modelship`].
    pub fn command(mut self, cmd: Command) -> Serve {
        self.cmd = cmd;
        self
    }

    /// Where it writes its kubeconfig; by default `kubeconfig-served-NAME`
    /// beside the data directory.
    pub fn kubeconfig(mut self, path: impl AsRef<Path>) -> Serve {
        self.kubeconfig = Some(path.as_ref().to_path_buf());
        self
    }

    /// `--name NAME` (the cluster's name in the kubeconfig).
    pub fn name(mut self, name: &str) -> Serve {
        self.name = Some(name.to_string());
        self
    }

    /// `--listen ADDR`.
    pub fn listen(self, addr: &str) -> Serve {
        self.args(&["--listen", addr])
    }

    /// More flags (`--forbid RULE`, `--fault RULE`).
    pub fn args(mut self, args: &[&str]) -> Serve {
        self.args.extend(args.iter().map(OsString::from));
        self
    }

    /// Start it and wait until it has written its kubeconfig.
    pub fn start(mut self) -> ServedSim {
        let name = self.name.clone().unwrap_or_else(|| "sim".into());
        let kubeconfig =
            self.kubeconfig.clone().unwrap_or_else(|| self.data.with_file_name(format!("kubeconfig-served-{name}")));
        self.cmd.args(["sim", "serve", "--data"]).arg(&self.data).arg("--kubeconfig").arg(&kubeconfig);
        if let Some(name) = &self.name {
            self.cmd.args(["--name", name]);
        }
        let mut child = self
            .cmd
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // `listening on URL` then `kubeconfig: PATH`: then the file is written.
        let mut url = None;
        loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("kubeconfig:") => break,
                Some(Ok(l)) => {
                    if let Some(u) = l.strip_prefix("listening on ") {
                        url = Some(u.trim().to_string());
                    }
                }
                _ => panic!("sim serve --data {} exited before writing its kubeconfig", self.data.display()),
            }
        }
        let url = url.unwrap_or_else(|| panic!("sim serve --data {} printed no `listening on`", self.data.display()));
        let address = url.strip_prefix("https://").unwrap_or_else(|| panic!("sim serve listens on {url}")).to_string();
        ServedSim { child, url, address, kubeconfig, data: self.data }
    }
}

/// A running `modelship sim serve`; stopped (SIGTERM, so the sim stops the
/// model processes it started, then waited for) on drop.
pub struct ServedSim {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`: the API and, under `/v2/`, the registry.
    pub address: String,
    /// The kubeconfig it wrote (`system:admin` by client certificate).
    pub kubeconfig: PathBuf,
    /// Its data directory (the CA is in `pki/ca.crt`).
    pub data: PathBuf,
}

impl ServedSim {
    /// `sim serve` over `data`, to be configured and started.
    pub fn serve(data: &Path) -> Serve {
        Serve { cmd: super::cli::modelship(), data: data.to_path_buf(), kubeconfig: None, name: None, args: Vec::new() }
    }

    /// Over an existing data directory, so `kubectl` can look at what runs
    /// left there, as cluster `name`.
    pub fn start(data: &Path, name: &str) -> ServedSim {
        ServedSim::serve(data).name(name).start()
    }

    /// With more `sim serve` flags (`--forbid RULE`, `--fault RULE`).
    pub fn start_with(data: &Path, name: &str, flags: &[&str]) -> ServedSim {
        ServedSim::serve(data).name(name).args(flags).start()
    }

    /// `kubectl` with this sim's kubeconfig.
    pub fn kubectl_at(&self) -> Kubectl {
        kubectl::at(&self.kubeconfig)
    }

    /// `kubectl ARGS`, which must succeed: its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl_at().ok(args)
    }

    /// `kubectl ARGS -o json` against this sim.
    pub fn get_json(&self, args: &[&str]) -> Value {
        self.kubectl_at().json(args)
    }

    pub fn items(&self, args: &[&str]) -> Vec<Value> {
        self.kubectl_at().items(args)
    }

    /// `kubectl apply -f -` with `manifest` (JSON or YAML).
    pub fn apply(&self, manifest: &str) {
        self.kubectl_at().apply(manifest)
    }

    /// Its CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data.join("pki/ca.crt")).unwrap()
    }

    /// skopeo's login to its registry, set up with `kubectl` as an
    /// administrator would (see [`SkopeoLogin::with_kubectl`]).
    pub fn skopeo_login(&self) -> SkopeoLogin {
        SkopeoLogin::with_kubectl(&self.kubeconfig, &self.data)
    }

    /// The manifest digest skopeo reads for a full image `reference`: as a
    /// ServiceAccount that may pull, TLS verified with this sim's CA.
    pub fn skopeo_reference(&self, reference: &str) -> String {
        let login = self.skopeo_login();
        let image = format!("docker://{reference}");
        let out = Command::new(super::registry::require_tool("skopeo"))
            .args(["inspect", "--no-tags"])
            .args(login.args(""))
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect {image}: {}", super::text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Digest"].as_str().unwrap().to_string()
    }

    /// As [`ServedSim::skopeo_reference`] for `image` (`REPO:TAG` or
    /// `REPO@DIGEST`) in this sim's registry.
    pub fn skopeo_digest(&self, image: &str) -> String {
        self.skopeo_reference(&format!("{}/{image}", self.address))
    }

    /// The image config blob of `image` (`REPO:TAG` or `REPO@DIGEST`) in
    /// this sim's registry, as skopeo reads it (`inspect --config`).
    pub fn skopeo_config(&self, image: &str) -> Value {
        let login = self.skopeo_login();
        let image = format!("docker://{}/{image}", self.address);
        let out = Command::new(super::registry::require_tool("skopeo"))
            .args(["inspect", "--config"])
            .args(login.args(""))
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect --config {image}: {}", super::text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for ServedSim {
    fn drop(&mut self) {
        // SAFETY: the pid is our child's, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// skopeo's login to a sim's integrated registry: a ServiceAccount token
/// (`--creds x:TOKEN`) and the sim's CA (`--cert-dir`, a directory holding
/// only `ca.crt`).
pub struct SkopeoLogin {
    pub token: String,
    cert_dir: tempfile::TempDir,
}

impl SkopeoLogin {
    pub fn new(ca_pem: &str, token: String) -> SkopeoLogin {
        let cert_dir = tempfile::tempdir().unwrap();
        std::fs::write(cert_dir.path().join("ca.crt"), ca_pem).unwrap();
        SkopeoLogin { token, cert_dir }
    }

    /// For an in-process sim: ServiceAccount `default/skopeo`, bound to
    /// `cluster_role` (e.g. `system:image-puller`).
    pub fn in_process(sim: &SimServer, cluster_role: &str) -> SkopeoLogin {
        sim.ensure_service_account("default", "skopeo", Some(cluster_role)).unwrap();
        SkopeoLogin::new(sim.ca_pem(), sim.service_account_token("default", "skopeo", 3600).unwrap())
    }

    /// For a sim served from `data` (its CA is `data/pki/ca.crt`), set up
    /// as an administrator would with `kubectl --kubeconfig ADMIN`: the
    /// ServiceAccount `default/skopeo` bound to `system:image-puller`, and
    /// a token from `kubectl create token`.
    pub fn with_kubectl(admin: &Path, data: &Path) -> SkopeoLogin {
        let kubectl = kubectl::at(admin);
        let run = |args: &[&str], tolerate_exists: bool| {
            let out = kubectl.output(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() || (tolerate_exists && err.contains("already exists")),
                "kubectl {args:?}: {err}"
            );
            String::from_utf8(out.stdout).unwrap()
        };
        run(&["create", "serviceaccount", "skopeo", "-n", "default"], true);
        run(
            &[
                "create",
                "clusterrolebinding",
                "skopeo-image-puller",
                "--clusterrole=system:image-puller",
                "--serviceaccount=default:skopeo",
            ],
            true,
        );
        let token = run(&["create", "token", "skopeo", "-n", "default"], false).trim().to_string();
        SkopeoLogin::new(&std::fs::read_to_string(data.join("pki/ca.crt")).unwrap(), token)
    }

    /// `--creds x:TOKEN --cert-dir DIR`, or with `prefix` `src-`/`dest-`.
    pub fn args(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--{prefix}creds"),
            format!("modelship:{}", self.token),
            format!("--{prefix}cert-dir"),
            self.cert_dir.path().display().to_string(),
        ]
    }
}
