//! Planted secrets never come back: S3 keys (from the environment and the
//! `--sim` credentials Secret), a bearer token in the kubeconfig, a registry
//! password in an auth file and a webhook secret. Every line the binary
//! prints (text and JSON logs at `-v`), every error, `--dry-run` output and
//! every ConfigMap the run left in the sims is searched: zero occurrences.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;

const AWS_KEY_ID: &str = "AKIAPLANTEDKEYID4242";
const AWS_SECRET: &str = "planted-aws-secret-Zq9x1Lw8";
const KUBE_TOKEN: &str = "planted-kube-token-Hh3kP0";
const REGISTRY_PASSWORD: &str = "planted-registry-pass-Vv72";
const WEBHOOK_SECRET: &str = "planted-webhook-secret-Ra55";

fn planted() -> Vec<&'static str> {
    vec![
        AWS_KEY_ID,
        AWS_SECRET,
        KUBE_TOKEN,
        REGISTRY_PASSWORD,
        WEBHOOK_SECRET,
        // What `--sim` puts in its credentials Secret for the embedded S3.
        modelship::storage::embedded::SECRET_ACCESS_KEY,
    ]
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn modelship(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelship"))
        .args(args)
        .current_dir(cwd)
        .env("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env_remove("MODELSHIP_STAGES_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run modelship")
}

/// Every occurrence of a planted value in `text`, named by where it was.
fn hits(place: &str, text: &str) -> Vec<String> {
    planted().into_iter().filter(|s| text.contains(s)).map(|s| format!("{place}: {s}")).collect()
}

fn output_hits(place: &str, out: &Output) -> Vec<String> {
    let mut h = hits(&format!("{place} stdout"), &String::from_utf8_lossy(&out.stdout));
    h.extend(hits(&format!("{place} stderr"), &String::from_utf8_lossy(&out.stderr)));
    h
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// A kubeconfig whose only user carries a planted bearer token, for a
/// cluster nobody listens on.
fn token_kubeconfig(dir: &Path) -> PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: {KUBE_TOKEN}\ncontexts:\n- name: dev-cluster\n  context: {{cluster: c, user: u}}\n- name: prod-cluster\n  context: {{cluster: c, user: u}}\ncurrent-context: dev-cluster\n"
    );
    write(&dir.join("kubeconfig"), &text)
}

#[test]
fn planted_secrets_never_appear_in_output_state_or_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pipeline = repo().join("pipelines/weather.yaml");
    let pipeline = pipeline.to_str().unwrap();
    let sim = dir.join("sim");
    let sim_arg = sim.to_str().unwrap();
    let mut found = Vec::new();
    let mut searched = 0usize;

    // A whole run on the sims, with text and then JSON logs at -v; the
    // fetch reads its keys from the credentials Secret `--sim` creates.
    for (i, format) in ["text", "json"].iter().enumerate() {
        let id = format!("secrets-{i}");
        let out = modelship(&["-v", "--log-format", format, "run", pipeline, "--sim", sim_arg, "--run-id", &id], dir);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        searched += out.stdout.len() + out.stderr.len();
        found.extend(output_hits(&format!("run --log-format {format}"), &out));
    }
    for format in ["text", "json"] {
        let out = modelship(&["run", pipeline, "--sim", sim_arg, "--dry-run", "--output", format], dir);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        searched += out.stdout.len() + out.stderr.len();
        found.extend(output_hits(&format!("--dry-run --output {format}"), &out));
    }

    // The state the run left: every ConfigMap in every namespace of both sims.
    for env in ["dev", "prod"] {
        let data = sim.join(env);
        let addr = std::fs::read_to_string(data.join("address")).unwrap();
        let kubeconfig = dir.join(format!("{env}.kubeconfig"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_modelship"))
            .args(["sim", "serve", "--data", data.to_str().unwrap(), "--listen", addr.trim()])
            .args(["--kubeconfig", kubeconfig.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let first = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
        assert!(first.starts_with("listening on"), "{first}");
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "configmaps", "-A", "-o", "yaml"])
            .output()
            .expect("kubectl is missing: run scripts/test.sh");
        // SAFETY: our child's pid; SIGTERM lets the sim stop cleanly.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = child.wait();
        assert!(out.status.success(), "kubectl: {}", String::from_utf8_lossy(&out.stderr));
        let yaml = String::from_utf8_lossy(&out.stdout);
        assert!(yaml.contains("modelship"), "no state ConfigMaps in {env}: {yaml}");
        searched += yaml.len();
        found.extend(hits(&format!("configmaps in {env}"), &yaml));
    }

    // A cluster that refuses: the error and the logs around it, and the
    // dry run that names the clusters, with the token's kubeconfig.
    let kubeconfig = token_kubeconfig(dir);
    let kc = kubeconfig.to_str().unwrap();
    let out = modelship(&["-v", "run", pipeline, "--kubeconfig", kc, "--run-id", "secrets-fail"], dir);
    assert_ne!(out.status.code(), Some(0));
    searched += out.stdout.len() + out.stderr.len();
    found.extend(output_hits("run against a refusing cluster", &out));
    let out = modelship(&["-v", "--log-format", "json", "run", pipeline, "--kubeconfig", kc, "--dry-run"], dir);
    searched += out.stdout.len() + out.stderr.len();
    found.extend(output_hits("--dry-run with a token kubeconfig", &out));

    // A registry password in an auth file, for a copy that cannot connect.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("robot:{REGISTRY_PASSWORD}"));
    let authfile = write(&dir.join("auth.json"), &format!("{{\"auths\":{{\"127.0.0.1:1\":{{\"auth\":\"{auth}\"}}}}}}"));
    let out = modelship(
        &[
            "-v",
            "image",
            "copy",
            "docker://127.0.0.1:1/ns/app:v1",
            "docker://127.0.0.1:1/ns/app:v2",
            "--src-insecure",
            "--dest-insecure",
            "--authfile",
            authfile.to_str().unwrap(),
        ],
        dir,
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    searched += out.stdout.len() + out.stderr.len();
    found.extend(output_hits("image copy", &out));

    // The webhook server with a secret: a delivery signed with the wrong
    // key and one signed right, then SIGTERM; all its logs.
    let git = dir.join("git");
    git2::Repository::init(&git).unwrap();
    let empty = dir.join("no-pipelines");
    std::fs::create_dir_all(&empty).unwrap();
    let secret_file = write(&dir.join("webhook-secret"), WEBHOOK_SECRET);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_modelship"))
        .args(["-v", "--log-format", "json", "serve", "--listen", &listen])
        .args(["--secret-file", secret_file.to_str().unwrap(), "--repo", git.to_str().unwrap()])
        .args(["--pipelines", empty.to_str().unwrap(), "--state-dir", dir.join("state").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = std::fs::read(repo().join("fixtures/webhooks/github/push.payload.json")).unwrap();
    let statuses: Vec<String> = [b"not-the-secret".as_slice(), WEBHOOK_SECRET.as_bytes()]
        .iter()
        .map(|key| post(&listen, &body, &modelship::triggers::signature::github_signature(key, &body)))
        .collect();
    assert!(statuses[0].starts_with("401"), "a wrong signature was not refused: {statuses:?}");
    // Past the signature, this delivery is for another repository (422).
    assert!(!statuses[1].starts_with("401"), "a signed delivery was refused: {statuses:?}");
    // SAFETY: our child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.stderr.is_empty(), "the server logged nothing");
    searched += out.stdout.len() + out.stderr.len();
    found.extend(output_hits("serve", &out));

    eprintln!("searched {searched} bytes for {} planted secrets: {} hits", planted().len(), found.len());
    assert_eq!(found, Vec::<String>::new(), "planted secrets leaked");
}

/// POST a GitHub delivery, retrying while the server starts; the status line's code and reason.
fn post(addr: &str, body: &[u8], signature: &str) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let head = format!(
                "POST /hooks/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: d-{}\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                &signature[signature.len() - 8..],
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut answer);
            assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
            return answer["HTTP/1.1 ".len()..].lines().next().unwrap_or_default().to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the webhook server never listened on {addr}");
}
