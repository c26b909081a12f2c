//! The README's real-cluster walkthrough, run as written: every `sh` block
//! of its section, in order, in one bash, with `oc` being kubectl (the
//! subcommands it uses are kubectl's own) and `modelship` the built binary,
//! against two simulated clusters and a moto S3 endpoint on loopback.
//!
//! What stands in for the user's side: `oc login` lines are left out, and
//! instead each cluster's kubeconfig context holds a token, as `oc login`
//! leaves one (a ServiceAccount bound to `cluster-admin` plays the user:
//! the sim issues tokens only to ServiceAccounts); the model is put in the
//! bucket beforehand; and the endpoint being plain HTTP, the file's
//! `insecure: false` becomes `true` (the one edit, as the comment beside it
//! says). Everything else is the README's text.

mod support;

use std::path::Path;
use std::process::Command;

use support::s3::Moto;
use support::sim::ServedSim;
use support::{BIN, kubectl, repo, text};

fn walkthrough_script() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("\n## Walkthrough: a real OpenShift cluster\n").expect("README has the walkthrough");
    let rest = &readme[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut script = String::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim_end() {
            "```sh" if !in_sh => in_sh = true,
            "```" if in_sh => in_sh = false,
            l if in_sh && !l.starts_with("oc login ") => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(!in_sh, "an unclosed sh block in the walkthrough");
    let edited = script.replace("insecure: false", "insecure: true");
    assert_ne!(edited, script, "the walkthrough's pipeline file no longer says `insecure: false`");
    edited
}

/// A kubeconfig whose context `context` is a token of ServiceAccount
/// `default/me` (bound to cluster-admin), verified with the sim's CA: what
/// `oc login` and a context rename leave behind.
fn login(sim: &ServedSim, context: &str, into: &Path) {
    let admin = kubectl::at(&sim.kubeconfig);
    admin.ok(&["create", "serviceaccount", "me", "-n", "default"]);
    admin.ok(&[
        "create",
        "clusterrolebinding",
        "me-admin",
        "--clusterrole=cluster-admin",
        "--serviceaccount=default:me",
    ]);
    let token = admin.ok(&["create", "token", "me", "-n", "default", "--duration=2h"]).trim().to_string();
    let ca = sim.data.join("pki/ca.crt");
    let config = |args: &[&str]| {
        let out =
            Command::new(kubectl::path()).arg("--kubeconfig").arg(into).arg("config").args(args).output().unwrap();
        assert!(out.status.success(), "kubectl config {args:?}: {}", text(&out.stderr));
    };
    config(&[
        "set-cluster",
        context,
        &format!("--server={}", sim.url),
        &format!("--certificate-authority={}", ca.display()),
        "--embed-certs",
    ]);
    config(&["set-credentials", &format!("me@{context}"), &format!("--token={token}")]);
    config(&["set-context", context, &format!("--cluster={context}"), &format!("--user=me@{context}")]);
}

#[test]
fn the_readme_walkthrough_promotes_a_model_from_dev_to_prod() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let dev = ServedSim::serve(&root.join("dev")).name("dev").command(support::cli::modelship()).start();
    let prod = ServedSim::serve(&root.join("prod")).name("prod").command(support::cli::modelship()).start();
    let home = root.join("home");
    std::fs::create_dir_all(home.join(".kube")).unwrap();
    let kubeconfig = home.join(".kube/config");
    login(&dev, "dev-cluster", &kubeconfig);
    login(&prod, "prod-cluster", &kubeconfig);

    let moto = Moto::start();
    moto.put_dir("models", "weather/", &repo().join("fixtures/weather-model"));

    // The user's checkout: the walkthrough applies .tekton/rbac/modelship.yaml from it.
    let work = root.join("work");
    support::copy_tree(&repo().join(".tekton"), &work.join(".tekton"));
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // A script, not a symlink: kubectl may look at the name it was called by.
    std::fs::write(bin.join("oc"), format!("#!/bin/sh\nexec '{}' \"$@\"\n", kubectl::path().display())).unwrap();
    std::fs::set_permissions(bin.join("oc"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("modelship")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let script = walkthrough_script();
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("MODELSHIP_SIM_VENV_CACHE", support::cli::venv_cache())
        .env("S3_ENDPOINT", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "walkthrough-access-key")
        .env("AWS_SECRET_ACCESS_KEY", "walkthrough-secret-key")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "the walkthrough failed:\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );

    // The run succeeded and promoted; the manual promotion found it done.
    assert!(stdout.contains(" of weather: succeeded"), "{stdout}");
    let promoted: Vec<&str> = stdout.lines().filter(|l| l.starts_with("promoted sha256:")).collect();
    assert!(!promoted.is_empty(), "{stdout}");
    let digest = promoted[0].split_whitespace().nth(1).unwrap();
    // prod's ImageStream tag points at the digest built and checked in dev.
    let tag = kubectl::at(&prod.kubeconfig).json(&["get", "imagestreamtag", "weather:latest", "-n", "models-prod"]);
    assert_eq!(tag["image"]["metadata"]["name"].as_str(), Some(digest), "{tag}");
    // The S3 keys went into the Secret and nowhere else a user would look.
    let leak = "walkthrough-secret-key";
    assert!(!stdout.contains(leak) && !stderr.contains(leak), "the S3 secret key was printed");
    let run_cms = kubectl::at(&dev.kubeconfig).ok(&["get", "configmaps", "-n", "models-dev", "-o", "yaml"]);
    assert!(run_cms.contains("modelship.io/run") && !run_cms.contains("walkthrough-secret-key"));
}
