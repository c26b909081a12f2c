//! The simulated API server against real clients: `kubectl` (found as
//! `scripts/setup.d/10-kubectl.sh` leaves it) and the kube client, over
//! HTTP on 127.0.0.1.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use openshift_sim::{self as sim, ForbiddenRule, SimConfig, SimServer};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

struct Sim {
    server: Option<SimServer>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Sim {
    async fn start() -> Sim {
        Self::start_with(SimConfig::new(PathBuf::new(), "sim"), None).await
    }

    /// Start a sim; with `dir`, on that data dir (a restart).
    async fn start_with(mut config: SimConfig, dir: Option<tempfile::TempDir>) -> Sim {
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        config.data_dir = dir.path().join("data");
        let server = sim::start(config).await.expect("sim starts");
        let kubeconfig = support::sim::kubeconfig_file(&server, dir.path());
        Sim { server: Some(server), dir, kubeconfig }
    }

    async fn stop(mut self) -> tempfile::TempDir {
        self.server.take().unwrap().shutdown().await;
        self.dir
    }

    async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::from_yaml(&self.server.as_ref().unwrap().kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        kube::Client::try_from(config).unwrap()
    }

    fn kubectl_cmd(&self, args: &[&str]) -> tokio::process::Command {
        let cmd = support::kubectl::at(&self.kubeconfig).home(self.dir.path()).command(args);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    /// Run kubectl; (exit ok, stdout, stderr).
    async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_in(args, None).await
    }

    async fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = self.kubectl_cmd(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut s = child.stdin.take().unwrap();
            s.write_all(input.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("kubectl finishes")
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?} failed:\n{err}");
        out
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }
}

fn names(table: &str) -> Vec<String> {
    table.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect()
}

const CM_B: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n  labels: {app: web}\ndata:\n  k: v1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_delete_configmaps_and_leases() {
    let sim = Sim::start().await;
    let f = sim.write("b.yaml", CM_B);
    assert_eq!(sim.ok(&["apply", "-f", &f]).await.trim(), "configmap/b created");
    assert_eq!(sim.ok(&["apply", "-f", &f]).await.trim(), "configmap/b unchanged");
    let f = sim.write("b.yaml", &CM_B.replace("k: v1", "k: v2"));
    assert_eq!(sim.ok(&["apply", "-f", &f]).await.trim(), "configmap/b configured");
    assert_eq!(sim.ok(&["get", "configmap", "b", "-o", "jsonpath={.data.k}"]).await, "v2");

    // The table kubectl prints comes from the sim's Table rows.
    let table = sim.ok(&["get", "configmaps"]).await;
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().next().unwrap().contains("DATA"), "{table}");
    assert_eq!(names(&table), ["b"]);
    assert_eq!(names(&sim.ok(&["get", "cm", "-n", "default"]).await), ["b"]);
    assert_eq!(sim.ok(&["get", "cm", "-o", "name"]).await.trim(), "configmap/b");

    let lease = sim.write(
        "lease.yaml",
        "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: lock-weather\nspec:\n  holderIdentity: runner-1\n  leaseDurationSeconds: 30\n",
    );
    assert_eq!(sim.ok(&["apply", "-f", &lease]).await.trim(), "lease.coordination.k8s.io/lock-weather created");
    let table = sim.ok(&["get", "leases"]).await;
    assert!(table.lines().next().unwrap().contains("HOLDER"), "{table}");
    assert!(table.contains("lock-weather") && table.contains("runner-1"), "{table}");
    assert_eq!(sim.ok(&["get", "lease", "lock-weather", "-o", "jsonpath={.spec.holderIdentity}"]).await, "runner-1");
    sim.ok(&["patch", "lease", "lock-weather", "--type", "merge", "-p", r#"{"spec":{"holderIdentity":"runner-2"}}"#])
        .await;
    sim.ok(&[
        "patch",
        "lease",
        "lock-weather",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/leaseDurationSeconds","value":5}]"#,
    ])
    .await;
    let got: Value = serde_json::from_str(&sim.ok(&["get", "lease", "lock-weather", "-o", "json"]).await).unwrap();
    assert_eq!(got["spec"], json!({"holderIdentity": "runner-2", "leaseDurationSeconds": 5}));

    // kubectl >= 1.33 adds " from default namespace".
    let deleted = sim.ok(&["delete", "configmap", "b"]).await;
    assert!(deleted.starts_with("configmap \"b\" deleted"), "{deleted}");
    let (ok, _, err) = sim.kubectl(&["get", "configmap", "b"]).await;
    assert!(!ok);
    insta::assert_snapshot!(err.trim(), @r#"Error from server (NotFound): configmaps "b" not found"#);
    let (ok, _, err) = sim.kubectl(&["delete", "lease", "nope"]).await;
    assert!(!ok);
    insta::assert_snapshot!(err.trim(), @r#"Error from server (NotFound): leases.coordination.k8s.io "nope" not found"#);
    sim.stop().await;
}

/// Guards the optimistic-concurrency contract everything else relies on:
/// a write carrying an old resourceVersion must fail, never overwrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_replace_with_stale_resource_version_fails_with_conflict() {
    let sim = Sim::start().await;
    let f = sim.write("b.yaml", CM_B);
    sim.ok(&["apply", "-f", &f]).await;
    let stale = sim.ok(&["get", "cm", "b", "-o", "yaml"]).await;
    sim.ok(&["patch", "cm", "b", "--type", "merge", "-p", r#"{"data":{"k":"newer"}}"#]).await;
    let (ok, _, err) = sim.kubectl_in(&["replace", "-f", "-"], Some(&stale.replace("k: v1", "k: stale"))).await;
    assert!(!ok);
    insta::assert_snapshot!(err.trim(), @r#"Error from server (Conflict): error when replacing "STDIN": Operation cannot be fulfilled on configmaps "b": the object has been modified; please apply your changes to the latest version and try again"#);
    assert_eq!(sim.ok(&["get", "cm", "b", "-o", "jsonpath={.data.k}"]).await, "newer");

    // With the current version, replace succeeds.
    let current = sim.ok(&["get", "cm", "b", "-o", "yaml"]).await;
    let (ok, out, err) =
        sim.kubectl_in(&["replace", "-f", "-"], Some(&current.replace("k: newer", "k: replaced"))).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "configmap/b replaced");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_label_and_field_selectors() {
    let sim = Sim::start().await;
    let mut docs = String::new();
    for (name, labels) in [("a", "{app: web, tier: front}"), ("b", "{app: db}"), ("c", "{}")] {
        docs.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels: {labels}\ndata: {{}}\n"
        ));
    }
    let f = sim.write("all.yaml", &docs);
    sim.ok(&["apply", "-f", &f]).await;
    let cases: &[(&str, &[&str])] = &[
        ("app=web", &["a"]),
        ("app==db", &["b"]),
        ("app!=web", &["b", "c"]),
        ("app in (web,db)", &["a", "b"]),
        ("app notin (web)", &["b", "c"]),
        ("app", &["a", "b"]),
        ("!app", &["c"]),
        ("app,tier=front", &["a"]),
    ];
    for (selector, want) in cases {
        let out = sim.ok(&["get", "cm", "-l", selector, "-o", "name"]).await;
        let got: Vec<&str> = out.lines().map(|l| l.trim_start_matches("configmap/")).collect();
        assert_eq!(&got, want, "selector {selector}");
    }
    let out = sim.ok(&["get", "cm", "--field-selector", "metadata.name=b", "-o", "name"]).await;
    assert_eq!(out.trim(), "configmap/b");
    let out = sim.ok(&["get", "cm", "-A", "--field-selector", "metadata.namespace!=default", "-o", "name"]).await;
    assert_eq!(out.trim(), "");
    let (ok, _, err) = sim.kubectl(&["get", "cm", "--field-selector", "data.k=v"]).await;
    assert!(!ok);
    assert!(err.contains("field label not supported: data.k"), "{err}");
    sim.stop().await;
}

/// Reads concatenated JSON documents from a stream until `n` have arrived
/// (each call starts after what earlier calls consumed).
async fn read_json_docs(out: &mut tokio::process::ChildStdout, n: usize) -> Vec<Value> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let docs: Vec<Value> =
            serde_json::Deserializer::from_slice(&buf).into_iter::<Value>().map_while(Result::ok).collect();
        if docs.len() >= n {
            return docs;
        }
        let read = tokio::time::timeout(Duration::from_secs(30), out.read(&mut chunk))
            .await
            .expect("watch events arrive")
            .unwrap();
        assert!(read > 0, "kubectl get -w ended early; got {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_streams_added_modified_deleted() {
    let sim = Sim::start().await;
    let f = sim.write("b.yaml", CM_B);
    sim.ok(&["apply", "-f", &f]).await;
    let mut child = sim
        .kubectl_cmd(&["get", "cm", "-w", "-o", "json", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    // The existing object first, so the watch is established before changes.
    let first = read_json_docs(&mut out, 1).await;
    assert_eq!(
        (first[0]["type"].as_str(), first[0]["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );

    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    let c: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"x": "1"}})).unwrap();
    cms.create(&PostParams::default(), &c).await.unwrap();
    sim.ok(&["patch", "cm", "c", "--type", "merge", "-p", r#"{"data":{"x":"2"}}"#]).await;
    sim.ok(&["delete", "cm", "c"]).await;

    // (The first document was consumed above.)
    let docs = read_json_docs(&mut out, 3).await;
    let seen: Vec<(String, String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["type"].as_str().unwrap().to_string(),
                d["object"]["metadata"]["name"].as_str().unwrap().to_string(),
                d["object"]["data"]["x"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ADDED".into(), "c".into(), "1".into()),
            ("MODIFIED".into(), "c".into(), "2".into()),
            ("DELETED".into(), "c".into(), "2".into())
        ]
    );
    child.kill().await.unwrap();
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_and_resource_version_persist_across_a_restart() {
    let sim = Sim::start().await;
    let f = sim.write("b.yaml", CM_B);
    sim.ok(&["apply", "-f", &f]).await;
    let before: Value = serde_json::from_str(&sim.ok(&["get", "cm", "b", "-o", "json"]).await).unwrap();
    let dir = sim.stop().await;

    let sim = Sim::start_with(SimConfig::new(PathBuf::new(), "sim"), Some(dir)).await;
    let after: Value = serde_json::from_str(&sim.ok(&["get", "cm", "b", "-o", "json"]).await).unwrap();
    assert_eq!(before, after, "same object, same uid and resourceVersion");
    let f = sim.write("c.yaml", &CM_B.replace("name: b", "name: c"));
    sim.ok(&["apply", "-f", &f]).await;
    let rv = |v: &str| v.parse::<u64>().unwrap();
    let c_rv = sim.ok(&["get", "cm", "c", "-o", "jsonpath={.metadata.resourceVersion}"]).await;
    assert!(
        rv(&c_rv) > rv(before["metadata"]["resourceVersion"].as_str().unwrap()),
        "resourceVersion continues after a restart"
    );
    // Watch history does not survive a restart: resuming from before it is
    // a 410 ERROR event (the client re-lists), as after etcd compaction.
    use futures::StreamExt;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    let mut events = cms.watch(&WatchParams::default().timeout(5), "1").await.unwrap().boxed();
    match events.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    // Two sims never share a data dir.
    let again = SimConfig::new(sim.dir.path().join("data"), "sim");
    let err = sim::start(again).await.err().expect("second sim on the same dir is refused");
    assert!(err.to_string().contains("another sim is using this data directory"), "{err}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_errors_for_missing_namespace_invalid_objects_and_forbidden_resources() {
    let mut config = SimConfig::new(PathBuf::new(), "sim");
    config.faults.forbidden = vec!["secrets:create,get".parse::<ForbiddenRule>().unwrap()];
    let sim = Sim::start_with(config, None).await;
    let f = sim.write("b.yaml", CM_B);
    let (ok, _, err) = sim.kubectl(&["apply", "-n", "nope", "-f", &f]).await;
    assert!(!ok);
    assert!(err.contains(r#"namespaces "nope" not found"#), "{err}");

    let bad = sim.write("bad.yaml", &CM_B.replace("name: b", "name: Bad_Name"));
    let (ok, _, err) = sim.kubectl(&["apply", "-f", &bad]).await;
    assert!(!ok);
    assert!(err.contains(r#"ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name""#), "{err}");

    let secret = sim.write("s.yaml", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\nstringData:\n  token: x\n");
    let (ok, _, err) = sim.kubectl(&["apply", "-f", &secret]).await;
    assert!(!ok);
    assert!(err.contains("Forbidden") && err.contains(r#"cannot get resource "secrets" in API group """#), "{err}");
    // Other verbs and resources are not affected.
    assert_eq!(sim.ok(&["get", "secrets", "-o", "name"]).await, "");
    sim.stop().await;
}

/// The kube client's typed view of the sim: Status bodies, and a watch from
/// a resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_sees_status_bodies_and_watch_from_resource_version() {
    let sim = Sim::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "a"}, "data": {"k": "1"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let status = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("not a Status: {other}"),
    };
    assert_eq!(
        status(cms.create(&PostParams::default(), &cm).await.unwrap_err()),
        (409, "AlreadyExists".into(), r#"configmaps "a" already exists"#.into())
    );
    assert_eq!(status(cms.get("zz").await.unwrap_err()).0, 404);
    let mut stale = created.clone();
    stale.data = Some([("k".to_string(), "2".to_string())].into());
    cms.replace("a", &PostParams::default(), &stale).await.unwrap();
    assert_eq!(status(cms.replace("a", &PostParams::default(), &stale).await.unwrap_err()).1, "Conflict");

    let rv = created.metadata.resource_version.clone().unwrap();
    use futures::StreamExt;
    let events = cms.watch(&WatchParams::default().timeout(2), &rv).await.unwrap();
    let events: Vec<_> = events.collect().await;
    let kinds: Vec<String> = events
        .into_iter()
        .map(|e| match e.unwrap() {
            WatchEvent::Added(o) => format!("ADDED {}", o.metadata.name.unwrap()),
            WatchEvent::Modified(o) => format!("MODIFIED {}", o.data.unwrap()["k"]),
            WatchEvent::Deleted(o) => format!("DELETED {}", o.metadata.name.unwrap()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["MODIFIED 2"], "only what happened after {rv}, then the timeout ends the stream");

    // A filtered watch sees an object leave and enter its selection.
    let rv = cms.get("a").await.unwrap().metadata.resource_version.unwrap();
    let label = |v: &str| json!({"metadata": {"labels": {"app": v}}});
    for app in ["web", "db", "web"] {
        cms.patch("a", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(label(app))).await.unwrap();
    }
    cms.delete("a", &Default::default()).await.unwrap();
    let events: Vec<_> =
        cms.watch(&WatchParams::default().labels("app=web").timeout(1), &rv).await.unwrap().collect().await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e.as_ref().unwrap() {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            _ => "OTHER",
        })
        .collect();
    assert_eq!(kinds, ["ADDED", "DELETED", "ADDED", "DELETED"]);
    sim.stop().await;
}

/// kube-runtime's watcher (list, then watch from the list's version, with
/// bookmarks) sees the initial state and later changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_watcher_lists_then_follows_changes() {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let sim = Sim::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    let mk = |name: &str| -> ConfigMap { serde_json::from_value(json!({"metadata": {"name": name}})).unwrap() };
    cms.create(&PostParams::default(), &mk("before")).await.unwrap();
    let mut stream = watcher::watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut next =
        async || tokio::time::timeout(Duration::from_secs(30), stream.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(next().await, Event::Init));
    assert!(matches!(next().await, Event::InitApply(c) if c.metadata.name.as_deref() == Some("before")));
    assert!(matches!(next().await, Event::InitDone));
    cms.create(&PostParams::default(), &mk("after")).await.unwrap();
    assert!(matches!(next().await, Event::Apply(c) if c.metadata.name.as_deref() == Some("after")));
    cms.delete("before", &Default::default()).await.unwrap();
    assert!(matches!(next().await, Event::Delete(c) if c.metadata.name.as_deref() == Some("before")));
    drop(stream);
    sim.stop().await;
}

/// `kubectl create namespace|configmap|secret` send protobuf bodies (typed
/// client-go); the sim decodes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_typed_objects_sent_as_protobuf() {
    let sim = Sim::start().await;
    sim.ok(&["create", "namespace", "models-dev"]).await;
    sim.ok(&["create", "configmap", "a", "-n", "models-dev", "--from-literal=x=1", "--from-literal=y=2"]).await;
    sim.ok(&["create", "secret", "generic", "s", "-n", "models-dev", "--from-literal=token=abc"]).await;
    let cm: Value = serde_json::from_str(&sim.ok(&["get", "cm", "a", "-n", "models-dev", "-o", "json"]).await).unwrap();
    assert_eq!(cm["data"], json!({"x": "1", "y": "2"}));
    let s: Value =
        serde_json::from_str(&sim.ok(&["get", "secret", "s", "-n", "models-dev", "-o", "json"]).await).unwrap();
    assert_eq!((s["data"]["token"].as_str(), s["type"].as_str()), (Some("YWJj"), Some("Opaque")));
    let (ok, _, err) = sim.kubectl(&["create", "configmap", "a", "-n", "models-dev"]).await;
    assert!(!ok);
    assert!(err.contains(r#"configmaps "a" already exists"#), "{err}");
    // Deleting the namespace takes its objects with it.
    sim.ok(&["delete", "namespace", "models-dev"]).await;
    assert_eq!(sim.ok(&["get", "cm", "-A", "-o", "name"]).await, "");
    sim.stop().await;
}

/// Plain `kubectl get -w` asks for Table rows in the watch too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_watch_prints_table_rows() {
    use tokio::io::AsyncBufReadExt;
    let sim = Sim::start().await;
    let f = sim.write("b.yaml", CM_B);
    sim.ok(&["apply", "-f", &f]).await;
    let mut child = sim.kubectl_cmd(&["get", "cm", "-w"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap();
    assert!(next().await.unwrap().starts_with("NAME"));
    assert!(next().await.unwrap().starts_with("b "));
    let f = sim.write("c.yaml", &CM_B.replace("name: b", "name: c"));
    sim.ok(&["apply", "-f", &f]).await;
    let row = next().await.unwrap();
    assert!(row.starts_with("c "), "{row}");
    child.kill().await.unwrap();
    sim.stop().await;
}

/// Server-side apply with field ownership, as the API server does it:
/// another manager's field with a different value is a 409 naming manager
/// and field (kubectl's and the kube client's), unless forced; a field the
/// applier stops sending is removed; apply without a field manager is 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_tracks_owners_conflicts_and_removals() {
    use kube::api::{Patch, PatchParams};
    let sim = Sim::start().await;
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: '1'\n  b: '2'\n";
    let f = sim.write("ssa.yaml", cm);
    assert_eq!(sim.ok(&["apply", "--server-side", "-f", &f]).await.trim(), "configmap/ssa serverside-applied");
    let got: Value =
        serde_json::from_str(&sim.ok(&["get", "cm", "ssa", "-o", "json", "--show-managed-fields"]).await).unwrap();
    let managers: Vec<&str> =
        got["metadata"]["managedFields"].as_array().unwrap().iter().map(|e| e["manager"].as_str().unwrap()).collect();
    assert_eq!(managers, ["kubectl"]);

    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await, "default");
    let mine = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "9"}});
    let err = cms.patch("ssa", &PatchParams::apply("modelship"), &Patch::Apply(&mine)).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"));
            assert_eq!(s.message, "Apply failed with 1 conflict: conflict with \"kubectl\": .data.a");
        }
        other => panic!("not a Status: {other}"),
    }
    let forced = cms.patch("ssa", &PatchParams::apply("modelship").force(), &Patch::Apply(&mine)).await.unwrap();
    assert_eq!(forced.data.as_ref().unwrap()["a"], "9");
    assert_eq!(forced.data.as_ref().unwrap()["b"], "2", "still kubectl's");

    // kubectl now conflicts with modelship over .data.a, unless it forces.
    let (ok, _, stderr) = sim.kubectl(&["apply", "--server-side", "-f", &f]).await;
    assert!(!ok && stderr.contains("conflict with \"modelship\": .data.a"), "{stderr}");
    sim.ok(&["apply", "--server-side", "--force-conflicts", "-f", &f]).await;
    // kubectl stops sending b: it goes; modelship's a stays as kubectl set it.
    let f = sim.write("ssa.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: '1'\n");
    sim.ok(&["apply", "--server-side", "-f", &f]).await;
    let data = cms.get("ssa").await.unwrap().data.unwrap();
    assert_eq!(data.into_iter().collect::<Vec<_>>(), [("a".to_string(), "1".to_string())]);

    // A repeated apply changes nothing (same resourceVersion).
    let rv = cms.get("ssa").await.unwrap().metadata.resource_version;
    sim.ok(&["apply", "--server-side", "-f", &f]).await;
    assert_eq!(cms.get("ssa").await.unwrap().metadata.resource_version, rv);

    // Apply needs a field manager.
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/ssa")
        .header("content-type", "application/apply-patch+yaml")
        .body(serde_json::to_vec(&mine).unwrap())
        .unwrap();
    let err = sim.client().await.request::<ConfigMap>(req).await.unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(s.message.contains("fieldManager: Required value: is required for apply patch"), "{}", s.message);
        }
        other => panic!("not a Status: {other}"),
    }
    sim.stop().await;
}

/// ImageStreamTags as `oc tag` and kubectl use them: create (a spec tag;
/// twice is AlreadyExists), get once the import recorded the image,
/// replace, list, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_updates_gets_and_deletes_imagestreamtags() {
    let sim = Sim::start().await;
    let server = sim.server.as_ref().unwrap();
    let reg = &server.api().registry;
    let mut digests = Vec::new();
    for seed in ["one", "two"] {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","config":{{"Labels":{{"seed":"{seed}"}}}}}}"#);
        let config_digest = reg.put_blob("default/app", config.as_bytes()).await.unwrap();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [],
        }))
        .unwrap();
        digests.push(
            reg.put_manifest("default/app", seed, "application/vnd.oci.image.manifest.v1+json", &manifest)
                .await
                .unwrap(),
        );
    }
    let istag = |digest: &str| {
        format!(
            "apiVersion: image.openshift.io/v1\nkind: ImageStreamTag\nmetadata:\n  name: app:v1\ntag:\n  from:\n    kind: DockerImage\n    name: {}/default/app@{digest}\n  referencePolicy:\n    type: Source\n",
            server.registry_host()
        )
    };
    let f = sim.write("istag.yaml", &istag(&digests[0]));
    assert_eq!(sim.ok(&["create", "-f", &f]).await.trim(), "imagestreamtag.image.openshift.io/app:v1 created");
    let (ok, _, stderr) = sim.kubectl(&["create", "-f", &f]).await;
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    let simr = &sim;
    let imported = |want: String| async move {
        for _ in 0..100 {
            let (ok, out, _) = simr.kubectl(&["get", "istag", "app:v1", "-o", "jsonpath={.image.metadata.name}"]).await;
            if ok && out == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("app:v1 never named {want}");
    };
    imported(digests[0].clone()).await;
    let f = sim.write("istag.yaml", &istag(&digests[1]));
    sim.ok(&["replace", "-f", &f]).await;
    imported(digests[1].clone()).await;
    let table = sim.ok(&["get", "istag"]).await;
    assert_eq!(names(&table), ["app:v1"], "{table}");
    let is: Value = serde_json::from_str(&sim.ok(&["get", "is", "app", "-o", "json"]).await).unwrap();
    assert_eq!(is["status"]["tags"][0]["items"].as_array().unwrap().len(), 2, "both imports kept: {is:#}");
    assert_eq!(
        sim.ok(&["delete", "istag", "app:v1"]).await.trim(),
        "imagestreamtag.image.openshift.io \"app:v1\" deleted"
    );
    let (ok, _, stderr) = sim.kubectl(&["get", "istag", "app:v1"]).await;
    assert!(!ok && stderr.contains("not found"), "{stderr}");
    sim.stop().await;
}
