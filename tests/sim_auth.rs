//! The sim authenticates and authorizes like a cluster: `kubectl` against
//! `modelship sim serve` verifies its TLS certificate, is `system:admin` by
//! client certificate or a ServiceAccount by the token `kubectl create token`
//! mints, and RBAC answers `kubectl auth can-i` and refuses writes with
//! kube-apiserver's 403 wording; no credentials, a garbled, expired or
//! orphaned token get a 401 Status; every request is in `DATA/audit.log`.
//! The integrated registry takes the same tokens (skopeo pulls with one
//! that may `get imagestreams/layers`) and refuses anonymous users and
//! pushes without `update`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use openshift_sim::{SimConfig, SimServer};
use serde_json::{Value, json};
use support::registry::{Layout, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, skopeo_output};
use support::sim::ServedSim;
use support::{kubectl, text};

/// `modelship sim serve` in a temp dir, with the kubeconfig it writes.
struct Served {
    /// Stopped before `dir` goes.
    sim: ServedSim,
    dir: tempfile::TempDir,
    data: PathBuf,
    admin: PathBuf,
    url: String,
}

impl Served {
    fn start() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let (data, admin) = (dir.path().join("data"), dir.path().join("admin.kubeconfig"));
        let sim = ServedSim::serve(&data).command(Command::new(support::BIN)).kubeconfig(&admin).start();
        let url = sim.url.clone();
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        Served { sim, dir, data, admin, url }
    }

    fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Output {
        kubectl::at(kubeconfig).home(self.dir.path()).output(args)
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = self.kubectl(&self.admin, args);
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn ca_pem(&self) -> String {
        self.sim.ca_pem()
    }

    /// A kubeconfig for this sim with `user` (YAML lines under `user:`), the CA when `with_ca`.
    fn kubeconfig(&self, name: &str, user: &str, with_ca: bool) -> PathBuf {
        use base64::Engine;
        let ca = if with_ca {
            format!(
                "\n    certificate-authority-data: {}",
                base64::engine::general_purpose::STANDARD.encode(self.ca_pem())
            )
        } else {
            String::new()
        };
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  cluster:\n    server: {}{ca}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:{user}\n",
            self.url
        );
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        self.kubeconfig(name, &format!("\n    token: {token}"), true)
    }

    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.data.join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }
}

fn whoami(served: &Served, kubeconfig: &Path) -> Value {
    let out = served.kubectl(kubeconfig, &["auth", "whoami", "-o", "json"]);
    assert!(out.status.success(), "whoami: {}", text(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["status"]["userInfo"].clone()
}

/// `kubectl auth can-i ...`: its answer, checked against its exit code.
fn can_i(served: &Served, kubeconfig: &Path, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend(args);
    let out = served.kubectl(kubeconfig, &all);
    let answer = text(&out.stdout).trim().to_string();
    assert!(answer == "yes" || answer == "no", "can-i {args:?}: {answer:?} {}", text(&out.stderr));
    assert_eq!(out.status.success(), answer == "yes", "can-i exits 0 for yes only");
    answer == "yes"
}

#[test]
fn kubectl_verifies_tls_authenticates_by_certificate_and_token_and_rbac_decides() {
    let s = Served::start();
    let admin_text = std::fs::read_to_string(&s.admin).unwrap();
    assert!(admin_text.contains("certificate-authority-data:"), "{admin_text}");
    assert!(admin_text.contains("client-certificate-data:") && !admin_text.contains("insecure-skip-tls-verify"));

    // TLS is verified: without the CA kubectl refuses the server's certificate.
    let cert_user = admin_text.rsplit("  user:").next().unwrap().trim_end().to_string();
    let no_ca = s.kubeconfig("no-ca", &cert_user, false);
    let out = s.kubectl(&no_ca, &["get", "namespaces"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("certificate"), "{}", text(&out.stderr));

    // The admin by client certificate.
    let me = whoami(&s, &s.admin);
    assert_eq!(me["username"], "system:admin");
    assert!(me["groups"].as_array().unwrap().contains(&json!("system:masters")), "{me}");
    assert!(can_i(&s, &s.admin, &["delete", "namespaces"]));

    // A ServiceAccount by the token `kubectl create token` mints.
    s.admin(&["create", "serviceaccount", "builder", "-n", "default"]);
    s.admin(&["create", "serviceaccount", "nobody", "-n", "default"]);
    let token = s.admin(&["create", "token", "builder", "-n", "default"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let builder = s.token_kubeconfig("builder", &token);
    let me = whoami(&s, &builder);
    assert_eq!(me["username"], "system:serviceaccount:default:builder");
    assert_eq!(
        me["groups"],
        json!(["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"])
    );

    // RBAC: nothing until bound; then exactly the Role's verbs, names and namespace.
    assert!(!can_i(&s, &builder, &["create", "configmaps", "-n", "default"]));
    s.admin(&["create", "role", "cm-writer", "--verb=get,create", "--resource=configmaps", "-n", "default"]);
    s.admin(&[
        "create",
        "role",
        "one-cm",
        "--verb=delete",
        "--resource=configmaps",
        "--resource-name=mine",
        "-n",
        "default",
    ]);
    for role in ["cm-writer", "one-cm"] {
        s.admin(&[
            "create",
            "rolebinding",
            role,
            &format!("--role={role}"),
            "--serviceaccount=default:builder",
            "-n",
            "default",
        ]);
    }
    assert!(can_i(&s, &builder, &["create", "configmaps", "-n", "default"]));
    assert!(!can_i(&s, &builder, &["update", "configmaps", "-n", "default"]));
    assert!(!can_i(&s, &builder, &["create", "configmaps", "-n", "kube-system"]));
    assert!(can_i(&s, &builder, &["delete", "configmaps/mine", "-n", "default"]));
    assert!(!can_i(&s, &builder, &["delete", "configmaps/other", "-n", "default"]));
    assert!(!can_i(&s, &builder, &["create", "serviceaccounts", "--subresource=token", "-n", "default"]));
    s.admin(&[
        "create",
        "rolebinding",
        "dangling",
        "--role=missing",
        "--serviceaccount=default:builder",
        "-n",
        "default",
    ]);
    let out = s.kubectl(&builder, &["create", "configmap", "made", "--from-literal=a=b", "-n", "default"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A subresource refusal names `resource/subresource`, and a missing role is the reason.
    let out = s.kubectl(&builder, &["create", "token", "nobody", "-n", "default"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(r#"User "system:serviceaccount:default:builder" cannot create resource "serviceaccounts/token" in API group "" in the namespace "default""#),
        "{err}"
    );
    assert!(err.contains(r#"RBAC: role.rbac.authorization.k8s.io "missing" not found"#), "{err}");

    // A token with no bindings is refused every write, with kube's wording.
    let nobody_token = s.admin(&["create", "token", "nobody", "-n", "default"]).trim().to_string();
    let nobody = s.token_kubeconfig("nobody", &nobody_token);
    let manifest = s.dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied, namespace: default}\ndata: {a: b}\n",
    )
    .unwrap();
    let user = r#"User "system:serviceaccount:default:nobody""#;
    // kubectl reads before it labels or patches: those are refused at the read.
    let writes: Vec<(Vec<&str>, &str)> = vec![
        (vec!["create", "configmap", "x", "--from-literal=a=b", "-n", "default"], "create"),
        (vec!["create", "-f", manifest.to_str().unwrap()], "create"),
        (vec!["label", "configmap", "made", "x=y", "-n", "default"], "get"),
        (vec!["patch", "configmap", "made", "-n", "default", "-p", r#"{"data":{"a":"c"}}"#], "get"),
        (vec!["delete", "configmap", "made", "-n", "default"], "delete"),
    ];
    for (args, verb) in &writes {
        let out = s.kubectl(&nobody, args);
        assert!(!out.status.success(), "{args:?} must be refused");
        let err = text(&out.stderr);
        let want = format!(r#"{user} cannot {verb} resource "configmaps" in API group "" in the namespace "default""#);
        assert!(err.to_lowercase().contains("forbidden") && err.contains(&want), "{args:?}: {err}");
    }
    // Every write verb, as the API sees it.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(s.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cm = format!("{}/api/v1/namespaces/default/configmaps", s.url);
    let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"made"},"data":{"a":"c"}}"#;
    for (method, url, verb, ct) in [
        ("POST", cm.clone(), "create", "application/json"),
        ("PUT", format!("{cm}/made"), "update", "application/json"),
        ("PATCH", format!("{cm}/made"), "patch", "application/merge-patch+json"),
        ("DELETE", format!("{cm}/made"), "delete", "application/json"),
        ("DELETE", cm.clone(), "deletecollection", "application/json"),
    ] {
        let request = http
            .request(method.parse().unwrap(), &url)
            .bearer_auth(&nobody_token)
            .header("content-type", ct)
            .body(body);
        let (code, status) = rt.block_on(async {
            let resp = request.send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        });
        assert_eq!(code, 403, "{method} {url}");
        assert_eq!(status["reason"], "Forbidden");
        let message = status["message"].as_str().unwrap();
        assert!(message.contains(&format!(r#"{user} cannot {verb} resource "configmaps""#)), "{message}");
    }
    let out = s.kubectl(&nobody, &["create", "namespace", "mine"]);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(r#"{user} cannot create resource "namespaces" in API group "" at the cluster scope"#)),
        "{err}"
    );
    // Discovery and whoami work for any authenticated user.
    assert_eq!(whoami(&s, &nobody)["username"], "system:serviceaccount:default:nobody");

    // No credentials, a garbled token, a token whose ServiceAccount is gone: 401.
    let garbled = s.token_kubeconfig("garbled", &format!("{token}x"));
    s.admin(&["delete", "serviceaccount", "builder", "-n", "default"]);
    for (who, kc) in [("garbled", &garbled), ("orphaned", &builder)] {
        let out = s.kubectl(kc, &["get", "configmaps", "-n", "default"]);
        assert!(!out.status.success(), "{who}");
        assert!(text(&out.stderr).contains("Unauthorized"), "{who}: {}", text(&out.stderr));
    }
    // Anonymous (kubectl with no credentials would prompt for a password).
    let (code, status) = rt.block_on(async {
        let resp = http.get(&cm).send().await.unwrap();
        (resp.status(), resp.json::<Value>().await.unwrap())
    });
    assert_eq!((code.as_u16(), status["reason"].as_str()), (401, Some("Unauthorized")), "{status}");
    // Anonymous users may read what kube's system:public-info-viewer allows.
    let code = rt.block_on(async { http.get(format!("{}/version", s.url)).send().await.unwrap().status() });
    assert_eq!(code, 200);

    // The audit log: who did what, with the answer; never a token.
    let events = s.audit();
    let find = |user: &str, verb: &str, resource: &str, code: u16| {
        events.iter().find(|e| {
            e["user"]["username"] == user
                && e["verb"] == verb
                && e["objectRef"]["resource"] == resource
                && e["responseStatus"]["code"] == code
        })
    };
    let refused = find("system:serviceaccount:default:nobody", "create", "configmaps", 403).expect("a 403 is audited");
    assert_eq!((refused["kind"].as_str(), refused["apiVersion"].as_str()), (Some("Event"), Some("audit.k8s.io/v1")));
    assert_eq!((refused["level"].as_str(), refused["stage"].as_str()), (Some("Metadata"), Some("ResponseComplete")));
    assert_eq!(refused["objectRef"]["namespace"], "default");
    assert!(refused["auditID"].is_string() && refused["requestReceivedTimestamp"].is_string());
    assert!(refused["user"]["groups"].as_array().unwrap().contains(&json!("system:serviceaccounts:default")));
    let minted = events
        .iter()
        .find(|e| e["objectRef"]["subresource"] == "token" && e["responseStatus"]["code"] == 201)
        .expect("create token is audited");
    assert_eq!((minted["user"]["username"].as_str(), minted["verb"].as_str()), (Some("system:admin"), Some("create")));
    assert!(find("system:serviceaccount:default:builder", "create", "configmaps", 201).is_some());
    assert!(find("system:anonymous", "list", "configmaps", 401).is_some(), "the anonymous 401 is audited");
    let log = std::fs::read_to_string(s.data.join("audit.log")).unwrap();
    assert!(!log.contains(&token) && !log.contains(&nobody_token), "no token in the audit log");
}

/// An in-process sim with an image `models-dev/weather:v1` pushed the way
/// the build controller pushes (in-process, as the cluster's own component).
async fn sim_with_image(dir: &Path) -> (SimServer, String) {
    let sim = openshift_sim::start(SimConfig::new(dir.join("data"), "sim")).await.unwrap();
    let ns = json!({"metadata": {"name": "models-dev"}});
    sim.api().store.create(&openshift_sim::core::NAMESPACES, "", ns, false).unwrap();
    let reg = &sim.api().registry;
    let repo = "models-dev/weather";
    let layer = reg.put_blob(repo, b"weights").await.unwrap();
    let config = r#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = reg.put_blob(repo, config.as_bytes()).await.unwrap();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer, "size": 7}],
    })
    .to_string();
    let digest = reg.put_manifest(repo, "v1", OCI_MANIFEST, manifest.as_bytes()).await.unwrap();
    (sim, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_takes_service_account_tokens_and_authorizes_pull_and_push_by_rbac() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, digest) = sim_with_image(dir.path()).await;
    let host = sim.registry_host();
    let puller = support::sim::SkopeoLogin::in_process(&sim, "system:image-puller");

    // GET /v2/ without credentials: the challenge at the token endpoint.
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let v2 = http.get(format!("{}/v2/", sim.url())).send().await.unwrap();
    assert_eq!(v2.status(), 401);
    assert_eq!(v2.headers()["www-authenticate"], format!(r#"Bearer realm="https://{host}/openshift/token""#).as_str());
    // A client certificate is no registry credential (the admin's is refused
    // too), nor is a token the sim did not sign.
    let openshift_sim::KubeUser::ClientCertificate(pair) = sim.admin_entry().user else {
        panic!("admin by certificate")
    };
    let identity = reqwest::Identity::from_pem(format!("{}{}", pair.cert_pem, pair.key_pem).as_bytes()).unwrap();
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
    let as_admin = reqwest::Client::builder().add_root_certificate(ca).identity(identity).build().unwrap();
    let tags = format!("{}/v2/models-dev/weather/tags/list", sim.url());
    assert_eq!(as_admin.get(&tags).send().await.unwrap().status(), 401);
    assert_eq!(as_admin.get(format!("{}/api/v1/namespaces", sim.url())).send().await.unwrap().status(), 200);
    assert_eq!(http.get(&tags).bearer_auth("not-a-token").send().await.unwrap().status(), 401);

    let image = format!("docker://{host}/models-dev/weather@{digest}");
    let inspect = |extra: Vec<String>| {
        let mut args = vec!["inspect".to_string(), "--raw".to_string()];
        args.extend(extra);
        args.push(image.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| skopeo_output(&refs))
    };
    let out = inspect(puller.args(""));
    assert!(out.status.success(), "pull with a token that may get imagestreams/layers: {}", text(&out.stderr));
    let cert_dir_only: Vec<String> = puller.args("").into_iter().skip(2).collect();
    let out = inspect(cert_dir_only);
    assert!(!out.status.success(), "anonymous pull must be refused");
    let err = text(&out.stderr).to_lowercase();
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");

    // Push: refused with get only; refused for a new image stream without
    // `create imagestreams`; done with both, and the stream appears.
    let mut layout = Layout::new(&dir.path().join("layout"));
    let l = layout.blob(OCI_LAYER, b"pushed layer");
    let app = layout.image(&[l], "amd64");
    layout.tag("app", &app);
    let src = format!("oci:{}:app", layout.dir.display());
    let push = |login: &support::sim::SkopeoLogin, repo: &str| {
        let mut args = vec!["copy".to_string()];
        args.extend(login.args("dest-"));
        args.extend([src.clone(), format!("docker://{host}/{repo}")]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tokio::task::block_in_place(|| skopeo_output(&refs))
    };
    let out = push(&puller, "models-dev/weather:pushed");
    assert!(!out.status.success(), "push with get only must be refused");
    sim.ensure_service_account("default", "pusher", Some("system:image-pusher")).unwrap();
    let pusher =
        support::sim::SkopeoLogin::new(sim.ca_pem(), sim.service_account_token("default", "pusher", 600).unwrap());
    let out = push(&pusher, "models-dev/fresh:v1");
    assert!(!out.status.success(), "creating an image stream needs `create imagestreams`");
    assert!(text(&out.stderr).to_lowercase().contains("denied"), "{}", text(&out.stderr));
    sim.ensure_service_account("default", "pusher", Some("cluster-admin")).unwrap();
    let out = push(&pusher, "models-dev/fresh:v1");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let streams = &openshift_sim::image::IMAGESTREAMS;
    assert!(sim.api().store.get(streams, "models-dev", "fresh").is_some(), "the push created the image stream");

    // Registry requests are audited as the resource they were authorized as.
    let log = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    let events: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let pulled = events
        .iter()
        .find(|e| {
            e["user"]["username"] == "system:serviceaccount:default:skopeo"
                && e["verb"] == "get"
                && e["objectRef"]["resource"] == "imagestreams"
                && e["objectRef"]["subresource"] == "layers"
                && e["responseStatus"]["code"] == 200
        })
        .expect("a pull is audited");
    assert_eq!(
        (pulled["objectRef"]["namespace"].as_str(), pulled["objectRef"]["name"].as_str()),
        (Some("models-dev"), Some("weather"))
    );
    assert!(!log.contains(&puller.token) && !log.contains(&pusher.token));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_and_unauthenticated_discovery_get_a_401_status() {
    let dir = tempfile::tempdir().unwrap();
    let sim = openshift_sim::start(SimConfig::new(dir.path().join("data"), "sim")).await.unwrap();
    sim.ensure_service_account("default", "old", Some("cluster-admin")).unwrap();
    let expired = sim.service_account_token("default", "old", -60).unwrap();
    let fresh = sim.service_account_token("default", "old", 600).unwrap();
    let ca = reqwest::Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut rb = http.get(format!("{}{path}", sim.url()));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401});
    for (path, token) in
        [("/api/v1/namespaces", Some(expired.as_str())), ("/api", None), ("/apis", None), ("/openapi/v2", None)]
    {
        let resp = get(path, token).await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(resp.json::<Value>().await.unwrap(), status, "{path}");
    }
    for path in ["/version", "/healthz", "/readyz", "/livez"] {
        assert_eq!(get(path, None).await.unwrap().status(), 200, "{path} is public");
    }
    assert_eq!(get("/api/v1/namespaces", Some(&fresh)).await.unwrap().status(), 200);
    sim.shutdown().await;
}
