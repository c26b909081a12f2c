//! Planted secrets that are really used never come back. Each travels the
//! path that carries it in production, to a server that checks it:
//! - S3 keys in the pipeline's `credentialsSecret`, read by `fetch-model`
//!   through the cluster, against `s3s-fs` started with those keys (a
//!   wrong secret key is refused: the server checks them);
//! - a registry password in prod's `registrySecret`, against
//!   `docker-registry` with htpasswd auth (bcrypt, made by `htpasswd -B`),
//!   which the promotion pushes to (a wrong one is refused with 401);
//! - the `modelship` service-account tokens `--sim` minted into its
//!   kubeconfig, which the sims verify on every request (their audit logs
//!   show the service account answered);
//! - a webhook secret, which `serve` checks deliveries against;
//! - the embedded S3 keys `--sim` sets up, used by the setup run.
//!
//! Each is asserted used, then searched for in: text and JSON logs at `-v`,
//! errors, `--dry-run` in both formats, every ConfigMap of both sims, both
//! sims' audit logs, the run report (Markdown and HTML) and `serve`'s
//! `/metrics`. Zero occurrences expected.
//!
//! A planted secret is one entry of [`PLANTED`] (plus where it is used).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine;
use serde_json::Value;
use support::cli::weather_fixture;
use support::registry::DockerRegistry;
use support::sim::ServedSim;
use support::{copy_tree, free_port, repo};

const AWS_KEY_ID: &str = "AKIAPLANTEDKEYID4242";
const AWS_SECRET: &str = "planted-aws-secret-Zq9x1Lw8";
const WRONG_AWS_SECRET: &str = "planted-wrong-aws-secret-Kk31";
const REGISTRY_USER: &str = "robot";
const REGISTRY_PASSWORD: &str = "planted-registry-pass-Vv72";
const WRONG_REGISTRY_PASSWORD: &str = "planted-wrong-registry-pass-Tt08";
const WEBHOOK_SECRET: &str = "planted-webhook-secret-Ra55";

/// Every planted value the test chooses, by what it is.
const PLANTED: &[(&str, &str)] = &[
    ("S3 access key id", AWS_KEY_ID),
    ("S3 secret key", AWS_SECRET),
    ("S3 secret key (refused)", WRONG_AWS_SECRET),
    ("registry password", REGISTRY_PASSWORD),
    ("registry password (refused)", WRONG_REGISTRY_PASSWORD),
    ("webhook secret", WEBHOOK_SECRET),
    // What `--sim` puts in its credentials Secret for the embedded S3.
    ("--sim S3 secret key", modelship::storage::embedded::SECRET_ACCESS_KEY),
];

struct Search {
    /// (what, value): [`PLANTED`] and the values read at run time.
    planted: Vec<(String, String)>,
    found: Vec<String>,
    searched: usize,
    places: usize,
}

impl Search {
    fn text(&mut self, place: &str, text: &str) {
        self.searched += text.len();
        self.places += 1;
        for (what, value) in &self.planted {
            if text.contains(value.as_str()) {
                self.found.push(format!("{place}: {what}"));
            }
        }
    }

    fn output(&mut self, place: &str, out: &Output) {
        self.text(&format!("{place} stdout"), &String::from_utf8_lossy(&out.stdout));
        self.text(&format!("{place} stderr"), &String::from_utf8_lossy(&out.stderr));
    }
}

fn modelship(args: &[&str], dir: &Path) -> Output {
    support::cli::modelship()
        .args(args)
        .current_dir(dir)
        // Keys come from the Secrets only; no local registry credentials.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("REGISTRY_AUTH_FILE", dir.join("no-auth.json"))
        .env("DOCKER_CONFIG", dir.join("no-docker"))
        .env_remove("MODELSHIP_STAGES_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run modelship")
}

fn ok(what: &str, out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The S3 credentials Secret `fetch-model` reads, in dev.
fn s3_secret(dev: &ServedSim, secret_key: &str) {
    dev.apply(
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "planted-s3", "namespace": "models-dev"},
            "data": {"AWS_ACCESS_KEY_ID": b64(AWS_KEY_ID), "AWS_SECRET_ACCESS_KEY": b64(secret_key)},
        })
        .to_string(),
    );
}

/// prod's `registrySecret` for the htpasswd registry.
fn registry_secret(prod: &ServedSim, registry: &str, password: &str) {
    let config = serde_json::json!({"auths": {registry: {"auth": b64(&format!("{REGISTRY_USER}:{password}"))}}});
    prod.apply(
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "planted-registry", "namespace": "models-prod"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": b64(&config.to_string())},
        })
        .to_string(),
    );
}

/// The weather pipeline with the model behind `s3` (keys in `planted-s3`)
/// and prod's registry at `registry` (password in `planted-registry`); the
/// contexts are the ones `--sim` wrote.
fn planted_pipeline(dir: &Path, s3: &str, registry: &str) -> PathBuf {
    let yaml = std::fs::read_to_string(repo().join("pipelines/weather.yaml")).unwrap();
    let edited = yaml
        .replace("load: { requests: 200, concurrency: 8 }", "load: { requests: 20, concurrency: 2 }")
        .replace(
            "    source: s3://models/weather/\n",
            &format!(
                "    source: s3://models/weather/\n    endpoint: {s3}\n    insecure: true\n    credentialsSecret: planted-s3\n"
            ),
        )
        .replace("context: dev-cluster", "context: dev")
        .replace("      registry: image-registry.openshift-image-registry.svc:5000\n", "")
        .replace("context: prod-cluster", "context: prod")
        .replace(
            "      registry: registry.prod.example.com\n",
            &format!("      registry: {registry}\n      insecureRegistry: true\n      registrySecret: planted-registry\n"),
        );
    for needle in ["credentialsSecret", "registrySecret", "context: dev\n", "context: prod\n", "requests: 20"] {
        assert!(edited.contains(needle), "pipelines/weather.yaml changed shape ({needle}):\n{edited}");
    }
    let path = dir.join("pipelines/planted.yaml");
    std::fs::write(&path, edited).unwrap();
    path
}

/// The `modelship` service-account tokens in the kubeconfig `--sim` wrote.
fn service_account_tokens(kubeconfig: &Path) -> Vec<String> {
    let kc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    kc["users"].as_sequence().unwrap().iter().filter_map(|u| u["user"]["token"].as_str().map(str::to_string)).collect()
}

fn audit_users_answered(audit: &str) -> Vec<String> {
    audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e.pointer("/responseStatus/code").and_then(Value::as_u64).is_some_and(|c| c < 400))
        .filter_map(|e| e.pointer("/user/username").and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[test]
fn planted_secrets_are_used_and_never_appear_in_output_state_or_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sim = dir.join("sim");

    // The clusters, set up by `--sim` (namespaces, the shipped Role, the
    // service account and its tokens); its fetch uses the embedded S3.
    let setup = weather_fixture(dir, |y| y);
    let setup_out =
        modelship(&["-v", "run", setup.to_str().unwrap(), "--sim", sim.to_str().unwrap(), "--until", "fetch"], dir);
    ok("run --sim --until fetch", &setup_out);
    let kubeconfig = sim.join("kubeconfig");
    let tokens = service_account_tokens(&kubeconfig);
    assert_eq!(tokens.len(), 2, "a token per cluster");
    let mut search = Search {
        planted: PLANTED.iter().map(|(w, v)| (w.to_string(), v.to_string())).collect(),
        found: Vec::new(),
        searched: 0,
        places: 0,
    };
    for (i, t) in tokens.iter().enumerate() {
        search.planted.push((format!("service-account token {i}"), t.clone()));
    }
    search.output("run --sim --until fetch -v", &setup_out);

    // The servers that check the planted values.
    let s3_root = dir.join("s3");
    copy_tree(&repo().join("fixtures/weather-model"), &s3_root.join("models/weather"));
    let s3_port = free_port();
    let s3s = Command::new(support::tools().join("s3s-fs/bin/s3s-fs"))
        .args(["--host", "127.0.0.1", "--port", &s3_port.to_string(), "--access-key", AWS_KEY_ID])
        .args(["--secret-key", AWS_SECRET])
        .arg(&s3_root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("s3s-fs is missing: run scripts/test.sh (scripts/setup.d/20-s3.sh)");
    let _s3s = Killed(s3s);
    let s3 = format!("http://127.0.0.1:{s3_port}");
    let registry = DockerRegistry::start_with_auth(REGISTRY_USER, REGISTRY_PASSWORD);
    let dev = ServedSim::start(&sim.join("dev"), "dev");
    let prod = ServedSim::start(&sim.join("prod"), "prod");
    s3_secret(&dev, AWS_SECRET);
    registry_secret(&prod, &registry.addr, REGISTRY_PASSWORD);
    let pipeline = planted_pipeline(dir, &s3, &registry.addr);
    let p = pipeline.to_str().unwrap();
    let kc = kubeconfig.to_str().unwrap();

    // Whole runs, text and JSON logs at -v: fetched with the S3 keys,
    // promoted with the registry password, as the service account.
    let mut run_ids = Vec::new();
    for format in ["text", "json"] {
        let id = format!("secrets-{format}");
        let out = modelship(
            &["-v", "--log-format", format, "run", p, "--kubeconfig", kc, "--registry", "dev=cluster", "--run-id", &id],
            dir,
        );
        ok(&format!("run --log-format {format}"), &out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("{}/models-prod/weather", registry.addr)),
            "promoted to the htpasswd registry:\n{stdout}"
        );
        search.output(&format!("run -v --log-format {format}"), &out);
        run_ids.push(id);
    }
    // The registry holds the image, read back with the password (and
    // refuses a read without it).
    let tags = |auth: &str| {
        let mut c = std::net::TcpStream::connect(&registry.addr).unwrap();
        let head = format!(
            "GET /v2/models-prod/weather/tags/list HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            registry.addr
        );
        c.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut answer);
        answer
    };
    let basic = format!("Authorization: Basic {}\r\n", b64(&format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}")));
    let answer = tags(&basic);
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"tags\""), "{answer}");
    assert!(tags("").starts_with("HTTP/1.1 401"), "the registry does not check credentials");
    // The tokens were checked and answered as the service account.
    for env in ["dev", "prod"] {
        let audit = std::fs::read_to_string(sim.join(env).join("audit.log")).unwrap();
        let ns = format!("system:serviceaccount:models-{env}:modelship");
        assert!(audit_users_answered(&audit).contains(&ns), "{env}: no request answered for {ns}");
    }

    // --dry-run in both formats.
    for format in ["text", "json"] {
        let out = modelship(
            &["run", p, "--kubeconfig", kc, "--registry", "dev=cluster", "--dry-run", "--output", format],
            dir,
        );
        ok(&format!("--dry-run --output {format}"), &out);
        search.output(&format!("--dry-run --output {format}"), &out);
    }

    // Errors: a wrong S3 secret key (the server refuses it), a wrong
    // registry password (401); both at -v, in JSON too.
    s3_secret(&dev, WRONG_AWS_SECRET);
    let out = modelship(
        &["-v", "--log-format", "json", "run", p, "--kubeconfig", kc, "--registry", "dev=cluster", "--until", "fetch"],
        dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("SignatureDoesNotMatch"), "a wrong S3 key was accepted: {stderr}");
    search.output("run with a refused S3 key", &out);
    s3_secret(&dev, AWS_SECRET);
    registry_secret(&prod, &registry.addr, WRONG_REGISTRY_PASSWORD);
    let out = modelship(
        &[
            "-v",
            "promote",
            "weather",
            "--from",
            "dev",
            "--to",
            "prod",
            "--force",
            "-f",
            p,
            "--kubeconfig",
            kc,
            "--lock-wait",
            "0s",
        ],
        dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "a wrong registry password was accepted: {stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    search.output("promote with a refused registry password", &out);
    registry_secret(&prod, &registry.addr, REGISTRY_PASSWORD);

    // The report of each run, in Markdown and HTML.
    for id in &run_ids {
        for format in ["md", "html"] {
            let out = modelship(&["report", id, "-f", p, "--kubeconfig", kc, "--format", format], dir);
            ok(&format!("report {id} --format {format}"), &out);
            search.output(&format!("report {id} --format {format}"), &out);
        }
    }

    // The state: every ConfigMap in every namespace of both sims.
    for (env, served) in [("dev", &dev), ("prod", &prod)] {
        let yaml = served.kubectl(&["get", "configmaps", "-A", "-o", "yaml"]);
        assert!(yaml.contains("modelship-ledger-weather"), "no ledger in {env}");
        search.text(&format!("configmaps in {env}"), &yaml);
    }
    drop((dev, prod));
    // Both sims' audit logs (every request of every run above).
    for env in ["dev", "prod"] {
        let audit = std::fs::read_to_string(sim.join(env).join("audit.log")).unwrap();
        search.text(&format!("audit log of {env}"), &audit);
    }

    // The webhook server: a delivery signed with the wrong key (401), one
    // signed right (past the signature), its /metrics; all its logs.
    let git = dir.join("git");
    git2::Repository::init(&git).unwrap();
    let empty = dir.join("no-pipelines");
    std::fs::create_dir_all(&empty).unwrap();
    let secret_file = dir.join("webhook-secret");
    std::fs::write(&secret_file, WEBHOOK_SECRET).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let child = Command::new(support::BIN)
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
        .map(|key| http(&listen, "POST", &body, &modelship::triggers::signature::github_signature(key, &body)))
        .collect();
    assert!(statuses[0].starts_with("HTTP/1.1 401"), "a wrong signature was not refused: {statuses:?}");
    // Past the signature, this delivery is for another repository (422).
    assert!(statuses[1].starts_with("HTTP/1.1 422"), "a signed delivery was refused: {statuses:?}");
    let metrics = http(&listen, "GET", b"", "");
    assert!(metrics.contains("reason=\"bad_signature\"} 1"), "{metrics}");
    search.text("serve /metrics", &metrics);
    support::signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(!out.stderr.is_empty(), "the server logged nothing");
    search.output("serve -v --log-format json", &out);

    // The search finds what is there: the kubeconfig holds both tokens.
    let mut control = Search { planted: search.planted.clone(), found: Vec::new(), searched: 0, places: 0 };
    control.text("kubeconfig", &std::fs::read_to_string(&kubeconfig).unwrap());
    assert_eq!(control.found.len(), 2, "{:?}", control.found);

    eprintln!(
        "secrets: {} planted ({} used and accepted by the server that checks them, 2 refused by it), searched {} bytes in {} places: {} hits",
        search.planted.len(),
        search.planted.len() - 2,
        search.searched,
        search.places,
        search.found.len()
    );
    assert_eq!(search.found, Vec::<String>::new(), "planted secrets leaked");
}

/// Killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A POST of a GitHub delivery (or a GET of /metrics), retrying while the
/// server starts; the whole answer.
fn http(addr: &str, method: &str, body: &[u8], signature: &str) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            let head = if method == "POST" {
                format!(
                    "POST /hooks/github HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: d-{}\r\nX-Hub-Signature-256: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    &signature[signature.len() - 8..],
                    body.len()
                )
            } else {
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
            };
            s.write_all(head.as_bytes()).unwrap();
            s.write_all(body).unwrap();
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut answer);
            assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
            return answer;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the webhook server never listened on {addr}");
}
