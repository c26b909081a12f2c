#![allow(dead_code)]
//! Two in-process sims, `dev` and `prod`, under `dir`, and a kubeconfig with
//! a context for each (shared by the promotion, race and integrity tests).
//! Its user is the ServiceAccount `default/modelship` by token, which the
//! integrated registry needs (it takes no client certificates), bound to
//! `cluster-admin`: these library-level tests exercise promotion logic, not
//! the Role (`tests/sim_rbac.rs` runs the CLI with exactly the shipped one).

use std::path::{Path, PathBuf};

use modelship::sim::{SimConfig, SimServer};

pub async fn dev_and_prod(dir: &Path) -> (SimServer, SimServer, PathBuf) {
    let dev = modelship::sim::start(SimConfig::new(dir.join("dev"), "dev")).await.unwrap();
    let prod = modelship::sim::start(SimConfig::new(dir.join("prod"), "prod")).await.unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let entry = |sim: &SimServer| {
        sim.ensure_service_account("default", "modelship", Some("cluster-admin")).unwrap();
        sim.service_account_entry("default", "modelship", 24 * 3600).unwrap()
    };
    std::fs::write(&kubeconfig, modelship::sim::kubeconfig_yaml(&[entry(&dev), entry(&prod)])).unwrap();
    (dev, prod, kubeconfig)
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
    pub fn with_kubectl(kubectl: &Path, admin: &Path, data: &Path) -> SkopeoLogin {
        let run = |args: &[&str], tolerate_exists: bool| {
            let out = std::process::Command::new(kubectl).arg("--kubeconfig").arg(admin).args(args).output().unwrap();
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
