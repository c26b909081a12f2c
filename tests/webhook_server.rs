//! The webhook server on 127.0.0.1, called over real HTTP with deliveries
//! signed the way GitHub signs them, against a real Git repository. Runs go
//! through a test [`PipelineRunner`] that records what it was asked to run
//! (the seam where production calls the engine).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use http::{Request, StatusCode};
use modelship::secret::Secret;
use modelship::state::Status;
use modelship::triggers::server::RunEntry;
use modelship::triggers::signature::github_signature;
use modelship::triggers::{PipelineRunner, RunOutcome, RunRequest, ServerConfig, serve};
use serde_json::Value;
use support::triggers::{self as fixture, Fixture, build, github_push, gitlab_push};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "It's a Secret to Everybody";

/// Records every run; optionally holds runs until the test releases them,
/// or until cancelled (then reports `Cancelled`, as the engine does).
#[derive(Default)]
struct TestRunner {
    calls: Mutex<Vec<RunRequest>>,
    /// When set, each run takes one permit before finishing.
    gate: Option<Arc<Semaphore>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// model -> (runs of it in flight now, most at once)
    per_model: Mutex<HashMap<String, (usize, usize)>>,
    cancelled: AtomicUsize,
}

impl TestRunner {
    fn gated(gate: &Arc<Semaphore>) -> TestRunner {
        TestRunner { gate: Some(gate.clone()), ..TestRunner::default() }
    }

    /// The most runs of `model` that were in flight at once.
    fn most_at_once(&self, model: &str) -> usize {
        self.per_model.lock().unwrap().get(model).map_or(0, |m| m.1)
    }
}

#[async_trait]
impl PipelineRunner for TestRunner {
    async fn run(&self, req: &RunRequest, cancel: CancellationToken) -> RunOutcome {
        self.calls.lock().unwrap().push(req.clone());
        {
            let mut per_model = self.per_model.lock().unwrap();
            let m = per_model.entry(req.model.clone()).or_default();
            m.0 += 1;
            m.1 = m.1.max(m.0);
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let status = match &self.gate {
            Some(gate) => tokio::select! {
                p = gate.acquire() => { p.unwrap().forget(); Status::Succeeded }
                _ = cancel.cancelled() => { self.cancelled.fetch_add(1, Ordering::SeqCst); Status::Cancelled }
            },
            None => Status::Succeeded,
        };
        self.per_model.lock().unwrap().get_mut(&req.model).unwrap().0 -= 1;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        RunOutcome {
            run_id: Some(format!("run-{}-{}", req.pipeline, &req.commit[..7])),
            status,
            stages: vec![("fetch".into(), 0.25), ("build".into(), 42.0)],
            ..RunOutcome::without_run(status, None, false)
        }
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<Vec<RunEntry>, modelship::triggers::TriggerError>>,
    runner: Arc<TestRunner>,
}

impl Server {
    async fn start(f: &Fixture, runner: TestRunner, tweak: impl FnOnce(&mut ServerConfig)) -> Server {
        let mut config = ServerConfig {
            repo: f.repo(),
            pipelines: f.pipelines(),
            secret: Some(Secret::new(SECRET)),
            // The fixture's remotes point at github.com: never reach out from tests.
            fetch: false,
            shutdown_grace: Duration::from_secs(10),
            ..ServerConfig::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let runner = Arc::new(runner);
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(serve(listener, config, runner.clone(), async move {
            let _ = stopped.await;
        }));
        Server { addr, stop: Some(stop), done, runner }
    }

    /// Stop the server; every run as it last recorded it.
    async fn shutdown(mut self) -> Vec<RunEntry> {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), &mut self.done).await.expect("server stops").unwrap().unwrap()
    }

    fn calls(&self) -> Vec<RunRequest> {
        self.runner.calls.lock().unwrap().clone()
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        send(self.addr, Request::get(path).body(Body::empty()).unwrap()).await
    }

    async fn github(
        &self,
        event: &str,
        delivery: &str,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::post("/hooks/github")
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery);
        if let Some(sig) = signature {
            req = req.header("X-Hub-Signature-256", sig);
        }
        let (status, text) = send(self.addr, req.body(Body::from(body)).unwrap()).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Signed like GitHub signs: HMAC-SHA256 of the raw body.
    async fn github_signed(&self, delivery: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let sig = github_signature(SECRET.as_bytes(), &body);
        self.github("push", delivery, body, Some(sig)).await
    }

    async fn gitlab(&self, delivery: &str, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::post("/hooks/gitlab")
            .header("Content-Type", "application/json")
            .header("X-Gitlab-Event", "Push Hook")
            .header("X-Gitlab-Event-UUID", delivery)
            .header("X-Gitlab-Token", token)
            .body(Body::from(body))
            .unwrap();
        let (status, text) = send(self.addr, req).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn runs(&self) -> Vec<Value> {
        let (_, text) = self.get("/runs").await;
        serde_json::from_str::<Value>(&text).unwrap()["runs"].as_array().unwrap().clone()
    }

    /// One run of `GET /runs`, by the id the delivery's answer gave it.
    async fn run(&self, id: &str) -> Value {
        self.runs().await.into_iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("no run {id}"))
    }

    /// A sample of `GET /metrics`, read with the reference parser.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = self.get("/metrics").await;
        parse_prometheus(&text)
            .iter()
            .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"))["value"]
            .as_f64()
            .unwrap()
    }

    /// Poll `GET /runs` until every run is finished.
    async fn settled_runs(&self) -> Vec<Value> {
        // Generous: the machine is shared; this bounds a hang, it times nothing.
        for _ in 0..2400 {
            let (_, text) = self.get("/runs").await;
            let runs: Value = serde_json::from_str(&text).unwrap();
            let runs = runs["runs"].as_array().unwrap().clone();
            if runs.iter().all(|r| r["status"] != "queued" && r["status"] != "running") {
                return runs;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("runs did not settle");
    }
}

async fn wait_for_a_running_pipeline(s: &Server) {
    wait_for(s, "a run to start", |r| r.in_flight.load(Ordering::SeqCst) > 0).await;
}

/// Poll the runner until `cond` holds (bounds a hang, times nothing).
async fn wait_for(s: &Server, what: &str, cond: impl Fn(&TestRunner) -> bool) {
    for _ in 0..6000 {
        if cond(&s.runner) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("waited in vain for {what}");
}

/// The ids of a delivery's runs, in the answer's order.
fn ids_of(v: &Value) -> Vec<String> {
    v["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

/// One HTTP/1.1 request on a fresh connection (hyper's client).
async fn send(addr: SocketAddr, mut req: Request<Body>) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    req.headers_mut().insert("Host", addr.to_string().parse().unwrap());
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(Body::new(resp.into_body()), usize::MAX).await.unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

fn pipelines_of(v: &Value) -> Vec<String> {
    let mut p: Vec<String> =
        v["runs"].as_array().unwrap().iter().map(|r| r["pipeline"].as_str().unwrap().to_string()).collect();
    p.sort();
    p
}

#[tokio::test]
async fn signed_github_push_runs_the_selected_pipelines_in_the_background() {
    let f = build();
    let s = Server::start(&f, TestRunner::default(), |_| {}).await;
    let (status, body) = s.github_signed("d-1", github_push("refs/heads/main", &f.c[1], &f.c[3])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(pipelines_of(&body), ["iris", "weather"]);
    assert_eq!(body["changedFiles"], 3);
    let ghost = body["decisions"].as_array().unwrap().iter().find(|d| d["pipeline"] == "ghost").unwrap();
    assert_eq!(ghost["run"], false);
    assert_eq!(ghost["reason"], "none of the 3 changed file(s) match paths [\"models/ghost/**\"]");

    let runs = s.settled_runs().await;
    assert_eq!(runs.len(), 2);
    for r in &runs {
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["commit"], f.c[3].as_str());
        assert_eq!(r["delivery"], "d-1");
        assert!(r["runId"].as_str().unwrap().starts_with("run-"));
    }
    let mut calls = s.calls();
    calls.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].pipeline.as_str(), calls[0].set_commit), ("iris", false));
    assert_eq!((calls[1].pipeline.as_str(), calls[1].set_commit), ("weather", true));
    assert!(calls.iter().all(|c| c.commit == f.c[3] && c.branch == "main" && c.source == "github"));
    assert!(calls[1].file.ends_with("pipelines/weather.yaml"));
    s.shutdown().await;
}

#[tokio::test]
async fn bad_or_missing_signature_is_401_and_nothing_runs() {
    let f = build();
    let s = Server::start(&f, TestRunner::default(), |_| {}).await;
    let body = github_push("refs/heads/main", &f.c[1], &f.c[3]);
    let wrong = github_signature(b"not the secret", &body);
    let (status, v) = s.github("push", "d-1", body.clone(), Some(wrong)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"], "X-Hub-Signature-256 does not match the payload and the configured secret");
    let (status, _) = s.github("push", "d-2", body.clone(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Signed, then one byte changed in transit.
    let sig = github_signature(SECRET.as_bytes(), &body);
    let mut tampered = body.clone();
    *tampered.last_mut().unwrap() = b' ';
    let (status, _) = s.github("push", "d-3", tampered, Some(sig)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A refused delivery id is not burnt: the genuine one still goes through.
    let (status, _) = s.github_signed("d-1", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    s.settled_runs().await;
    assert_eq!(s.calls().len(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn replayed_delivery_is_refused() {
    let f = build();
    let s = Server::start(&f, TestRunner::default(), |_| {}).await;
    let body = github_push("refs/heads/main", &f.c[0], &f.c[1]);
    let (status, _) = s.github_signed("3f1a5c2e-0001", body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, v) = s.github_signed("3f1a5c2e-0001", body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(v["error"], "delivery 3f1a5c2e-0001 was already received; ignoring the replay");
    s.settled_runs().await;
    assert_eq!(s.calls().len(), 1, "weather ran once");
    s.shutdown().await;
}

#[tokio::test]
async fn gitlab_token_is_checked() {
    let f = build();
    let s = Server::start(&f, TestRunner::default(), |_| {}).await;
    let body = gitlab_push("refs/heads/main", &f.c[2], &f.c[3]);
    let (status, _) = s.gitlab("uuid-1", "wrong token", body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, v) = s.gitlab("uuid-2", SECRET, body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(pipelines_of(&v), ["weather"]);
    s.settled_runs().await;
    assert_eq!(s.calls()[0].source, "gitlab");
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_the_documented_answers() {
    let f = build();
    let s = Server::start(&f, TestRunner::default(), |c| c.max_body_bytes = 64 * 1024).await;

    // Wrong event type: 202 with the reason (GitHub pings every new webhook).
    let ping = serde_json::to_vec(&fixture::fixture_json("github/ping.payload.json")).unwrap();
    let sig = github_signature(SECRET.as_bytes(), &ping);
    let (status, v) = s.github("ping", "p-1", ping, Some(sig)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(v["ignored"], "event type `ping` is not a push; nothing runs");

    // Malformed JSON, correctly signed: 400.
    let (status, v) = s.github_signed("m-1", b"{\"ref\": \"refs/heads/main\",".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"].as_str().unwrap().contains("malformed JSON"), "{v}");

    // Huge body: 413 before any signature work.
    let huge = vec![b' '; 200 * 1024];
    let (status, _) = s.github("push", "h-1", huge, None).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // Another repository's push: 422.
    let mut other = fixture::fixture_json("github/push.with-new-branch.payload.json");
    other["before"] = f.c[1].clone().into();
    other["after"] = f.c[3].clone().into();
    let (status, v) = s.github_signed("o-1", serde_json::to_vec(&other).unwrap()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().starts_with("the payload is for repository Codertocat/Hello-World"), "{v}");

    // Commits the checkout lacks: 422, and the same delivery may be redelivered.
    let unknown = "2222222222222222222222222222222222222222";
    for _ in 0..2 {
        let (status, v) = s.github_signed("u-1", github_push("refs/heads/main", &f.c[3], unknown)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(v["error"].as_str().unwrap().contains(&format!("commit {unknown} (`after`")), "{v}");
    }

    // A push that matches one pipeline: only that one runs.
    let (status, v) = s.github_signed("n-1", github_push("refs/heads/main", &f.c[1], &f.c[2])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(pipelines_of(&v), ["iris"]);

    // Deleted branch: 202, ignored.
    let (status, v) = s.github_signed("x-1", github_push("refs/heads/main", &f.c[3], fixture::ZERO)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(v["ignored"], "branch `main` was deleted; nothing runs");

    // Missing delivery id: 400.
    let body = github_push("refs/heads/main", &f.c[1], &f.c[3]);
    let sig = github_signature(SECRET.as_bytes(), &body);
    let req = Request::post("/hooks/github")
        .header("X-GitHub-Event", "push")
        .header("X-Hub-Signature-256", sig)
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(s.addr, req).await.0, StatusCode::BAD_REQUEST);

    s.settled_runs().await;
    assert_eq!(s.calls().iter().map(|c| c.pipeline.as_str()).collect::<Vec<_>>(), ["iris"]);
    s.shutdown().await;
}

#[tokio::test]
async fn runs_are_bounded_by_the_concurrency_limit() {
    let f = build();
    let gate = Arc::new(Semaphore::new(0));
    let runner = TestRunner { gate: Some(gate.clone()), ..TestRunner::default() };
    let s = Server::start(&f, runner, |c| c.max_concurrent_runs = 1).await;
    // Three deliveries selecting four runs in all.
    let (st1, _) = s.github_signed("c-1", github_push("refs/heads/main", &f.c[1], &f.c[3])).await;
    let (st2, _) = s.github_signed("c-2", github_push("refs/heads/main", &f.c[0], &f.c[1])).await;
    let (st3, _) = s.github_signed("c-3", github_push("refs/heads/main", &f.c[1], &f.c[2])).await;
    assert_eq!([st1, st2, st3], [StatusCode::ACCEPTED; 3], "answered at once, before any run finished");
    let (_, text) = s.get("/runs").await;
    let runs: Value = serde_json::from_str(&text).unwrap();
    let statuses: HashMap<String, usize> = runs["runs"].as_array().unwrap().iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r["status"].as_str().unwrap().to_string()).or_default() += 1;
        m
    });
    assert_eq!(statuses.values().sum::<usize>(), 4);
    // iris (c-1) holds the one slot; c-1's queued weather run is superseded by c-2's.
    assert_eq!(statuses.get("running"), Some(&1), "{statuses:?}");
    assert_eq!(statuses.get("queued"), Some(&2), "{statuses:?}");
    assert_eq!(statuses.get("superseded"), Some(&1), "{statuses:?}");
    gate.add_permits(3);
    let runs = s.settled_runs().await;
    assert_eq!(runs.iter().filter(|r| r["status"] == "succeeded").count(), 3, "{runs:?}");
    assert_eq!(s.runner.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(s.calls().len(), 3);
    s.shutdown().await;
}

#[tokio::test]
async fn full_queue_is_503_and_the_delivery_can_be_retried() {
    let f = build();
    let gate = Arc::new(Semaphore::new(0));
    let runner = TestRunner { gate: Some(gate.clone()), ..TestRunner::default() };
    let s = Server::start(&f, runner, |c| {
        c.max_concurrent_runs = 1;
        c.max_queued_runs = 2;
    })
    .await;
    let (status, _) = s.github_signed("q-1", github_push("refs/heads/main", &f.c[0], &f.c[1])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Wait until that run holds the only slot; the next one queues.
    wait_for_a_running_pipeline(&s).await;
    let (status, _) = s.github_signed("q-2", github_push("refs/heads/main", &f.c[1], &f.c[2])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, v) = s.github_signed("q-3", github_push("refs/heads/main", &f.c[1], &f.c[3])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "1 queued + 2 more exceed a queue of 2: {v}");
    assert_eq!(v["error"], "1 runs are already queued (limit 2); redeliver later");
    gate.add_permits(2);
    s.settled_runs().await;
    let (status, _) = s.github_signed("q-3", github_push("refs/heads/main", &f.c[1], &f.c[3])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the refused delivery id was not remembered");
    gate.add_permits(2);
    s.settled_runs().await;
    assert_eq!(s.calls().len(), 4);
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_cancels_running_pipelines_and_waits_for_them() {
    let f = build();
    let gate = Arc::new(Semaphore::new(0));
    let runner = TestRunner { gate: Some(gate), ..TestRunner::default() };
    let s = Server::start(&f, runner, |c| c.max_concurrent_runs = 1).await;
    let (status, _) = s.github_signed("s-1", github_push("refs/heads/main", &f.c[1], &f.c[3])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_for_a_running_pipeline(&s).await;
    let runner = s.runner.clone();
    let runs = s.shutdown().await;
    // The running pipeline saw the cancellation and returned (recording its
    // state); the queued one never started.
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.status == "cancelled" && r.finished_at.is_some()), "{runs:?}");
    assert_eq!(runner.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(runner.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(runner.calls.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn healthz_and_prometheus_metrics() {
    let f = build();
    let s = Server::start(&f, TestRunner::default(), |_| {}).await;
    assert_eq!(s.get("/healthz").await, (StatusCode::OK, "ok\n".to_string()));
    s.github_signed("m-1", github_push("refs/heads/main", &f.c[1], &f.c[3])).await;
    s.github("push", "m-2", b"{}".to_vec(), Some("sha256=00".into())).await;
    s.settled_runs().await;
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    // Parsed by the reference Python client's own text-format parser.
    let families = parse_prometheus(&text);
    let sample = |name: &str, labels: &[(&str, &str)]| -> f64 {
        families
            .iter()
            .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{text}"))["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(sample("modelship_webhook_deliveries_total", &[("result", "accepted"), ("provider", "github")]), 1.0);
    assert_eq!(
        sample("modelship_webhook_deliveries_total", &[("result", "rejected"), ("reason", "bad_signature")]),
        1.0
    );
    assert_eq!(sample("modelship_runs_started_total", &[("pipeline", "weather")]), 1.0);
    assert_eq!(sample("modelship_runs_succeeded_total", &[("pipeline", "iris")]), 1.0);
    assert_eq!(sample("modelship_stage_duration_seconds_count", &[("pipeline", "weather"), ("stage", "build")]), 1.0);
    assert_eq!(
        sample("modelship_stage_duration_seconds_bucket", &[("pipeline", "weather"), ("stage", "build"), ("le", "60")]),
        1.0
    );
    assert_eq!(
        sample("modelship_stage_duration_seconds_bucket", &[("pipeline", "weather"), ("stage", "build"), ("le", "30")]),
        0.0
    );
    assert_eq!(sample("modelship_runs_running", &[]), 0.0);
    s.shutdown().await;
}

fn parse_prometheus(text: &str) -> Vec<Value> {
    use std::io::Write;
    let tools = std::env::var_os("MODELSHIP_TEST_TOOLS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dirs::home_dir().unwrap().join(".cache/modelship-test-tools"));
    let python = tools.join("lint/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test.sh (scripts/setup.d/50-lint.sh installs it)",
        python.display()
    );
    let script = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families\n\
        print(json.dumps([{'name': s.name, 'labels': s.labels, 'value': s.value} for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]))";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus parser rejected the exposition:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn serve_refuses_to_start_without_a_secret() {
    use clap::Parser;
    use modelship::commands::{Cli, Command};
    let dir = tempfile::tempdir().unwrap();
    let parse = |extra: &[&str]| {
        let mut argv = vec!["modelship", "serve", "--listen", "127.0.0.1:0"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a,
            _ => unreachable!(),
        }
    };
    let err = parse(&[]).config(None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "webhook secret: no secret: pass --secret-file PATH or set MODELSHIP_WEBHOOK_SECRET (or --insecure-no-signature, never in production)"
    );
    assert_eq!(modelship::HasExitClass::exit_class(&err), modelship::ExitClass::BadInput);
    assert!(parse(&["--insecure-no-signature"]).config(None).unwrap().secret.is_none());
    assert!(parse(&[]).config(Some("from-the-environment".into())).unwrap().secret.is_some());
    let file = dir.path().join("secret");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let config = parse(&["--secret-file", file.to_str().unwrap()]).config(Some("ignored-env".into())).unwrap();
    assert_eq!(config.secret.unwrap().expose(), "from-a-file");
}

#[tokio::test]
async fn pushed_commits_are_fetched_before_selection() {
    let f = build();
    let (checkout, pushed) = f.checkout_behind(("models/weather/model.joblib", "v3"), "retrain");
    let s = Server::start(&f, TestRunner::default(), |c| {
        c.repo = checkout.clone();
        c.pipelines = checkout.join("pipelines");
        c.expect_repo = vec![fixture::GITHUB_REMOTE.into()];
        c.fetch = true;
    })
    .await;
    let (status, v) = s.github_signed("f-1", github_push("refs/heads/main", &f.c[3], &pushed.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(pipelines_of(&v), ["weather"]);
    // A remote that cannot be reached: 502 with git's reason.
    let repo = git2::Repository::open(&checkout).unwrap();
    repo.remote_set_url("origin", f.dir.path().join("gone").to_str().unwrap()).unwrap();
    let unknown = "3333333333333333333333333333333333333333";
    let (status, v) = s.github_signed("f-2", github_push("refs/heads/main", &f.c[3], unknown)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("fetching from remote `origin`"), "{v}");
    s.settled_runs().await;
    s.shutdown().await;
}

/// The load benchmark's claims at a small count (benches/webhook-load.sh
/// sends 1,000): a burst of deliveries, each sent twice at once, some for
/// another repository and some badly signed, with two runs at a time. Every
/// accepted delivery ends in exactly one run, none runs twice, and the
/// duplicates, foreign and unsigned ones are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_duplicated_deliveries_ends_in_one_run_per_accepted_delivery() {
    let f = build();
    let s = Arc::new(
        Server::start(&f, TestRunner::default(), |c| {
            c.max_concurrent_runs = 2;
            c.max_queued_runs = 1000;
        })
        .await,
    );
    let push = github_push("refs/heads/main", &f.c[0], &f.c[1]);
    let foreign =
        String::from_utf8(push.clone()).unwrap().replace("openshift-pipelines/pipelines-as-code", "someone/else");
    assert_ne!(foreign.as_bytes(), push.as_slice());
    let unique = 60;
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..unique {
        // Each delivery twice, the copies racing each other.
        for _copy in 0..2 {
            let s = s.clone();
            let (push, foreign) = (push.clone(), foreign.clone().into_bytes());
            sends.spawn(async move {
                let id = format!("burst-{i}");
                let (status, _) = match i % 10 {
                    0 => s.github("push", &id, push.clone(), Some(github_signature(b"wrong", &push))).await,
                    1 => s.github_signed(&id, foreign).await,
                    _ => s.github_signed(&id, push).await,
                };
                (i, status)
            });
        }
    }
    let mut answers: HashMap<StatusCode, usize> = HashMap::new();
    let mut by_id: HashMap<usize, Vec<u16>> = HashMap::new();
    while let Some(r) = sends.join_next().await {
        let (i, status) = r.unwrap();
        *answers.entry(status).or_default() += 1;
        by_id.entry(i).or_default().push(status.as_u16());
    }
    let valid = (0..unique).filter(|i| i % 10 >= 2).count();
    for (i, statuses) in &mut by_id {
        statuses.sort();
        match i % 10 {
            0 => assert_eq!(statuses, &[401, 401], "badly signed {i}"),
            // The copy that raced the first one while it was being looked at
            // is a replay (409); the first is another repository's push.
            1 => assert!(statuses == &[409, 422] || statuses == &[422, 422], "foreign {i}: {statuses:?}"),
            _ => assert_eq!(statuses, &[202, 409], "delivery {i}: accepted once, its copy refused"),
        }
    }
    assert_eq!(answers.get(&StatusCode::ACCEPTED).copied(), Some(valid), "{answers:?}");

    let runs = s.settled_runs().await;
    let deliveries: std::collections::BTreeSet<&str> = runs.iter().map(|r| r["delivery"].as_str().unwrap()).collect();
    assert_eq!(runs.len(), valid, "one run per accepted delivery");
    assert_eq!(deliveries.len(), valid, "no delivery queued twice");
    assert!(runs.iter().all(|r| r["pipeline"] == "weather"), "{runs:?}");
    // One model: one run at a time, and a queued run is replaced by the next delivery's.
    let number = |id: &Value| id.as_str().unwrap().trim_start_matches('t').parse::<u64>().unwrap();
    let succeeded = runs.iter().filter(|r| r["status"] == "succeeded").count();
    let superseded: Vec<&Value> = runs.iter().filter(|r| r["status"] == "superseded").collect();
    assert_eq!(succeeded + superseded.len(), valid, "{runs:?}");
    for r in &superseded {
        assert!(number(&r["supersededBy"]) > number(&r["id"]), "superseded by a newer run: {r}");
        assert!(runs.iter().any(|n| n["id"] == r["supersededBy"]), "{r}");
    }
    let calls = s.calls();
    assert_eq!(calls.len(), succeeded);
    let ran: std::collections::BTreeSet<_> = calls.iter().map(|c| c.delivery.clone()).collect();
    assert_eq!(ran.len(), succeeded, "no delivery ran twice");
    assert_eq!(s.runner.most_at_once("weather"), 1);
    println!(
        "burst: {} deliveries sent ({unique} ids, each twice), {valid} accepted, {} refused as replays, {} bad signatures, {} foreign; {succeeded} runs, {} superseded, 0 duplicated",
        2 * unique,
        answers[&StatusCode::CONFLICT],
        answers[&StatusCode::UNAUTHORIZED],
        answers[&StatusCode::UNPROCESSABLE_ENTITY],
        superseded.len()
    );
    Arc::into_inner(s).expect("no sender left").shutdown().await;
}

/// A second pipeline of the weather model (`spec.model.name: weather`),
/// selected only by changes to its requirements.
const WEATHER_CANARY: &str = "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetadata:\n  name: weather-canary\nspec:\n  model:\n    name: weather\n    source: s3://models/weather/\n  environments:\n    dev:\n      namespace: models-canary\n  stages:\n    - name: fetch\n      uses: fetch-model\n  triggers:\n    push: { branches: [main], paths: [\"models/weather/requirements.txt\"] }\n";

#[tokio::test]
async fn runs_of_one_model_wait_for_each_other_even_with_free_slots() {
    let f = build();
    std::fs::write(f.pipelines().join("weather-canary.yaml"), WEATHER_CANARY).unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let s = Server::start(&f, TestRunner::gated(&gate), |c| c.max_concurrent_runs = 2).await;
    let (status, first) = s.github_signed("w-1", github_push("refs/heads/main", &f.c[0], &f.c[1])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(pipelines_of(&first), ["weather"]);
    wait_for_a_running_pipeline(&s).await;
    // Both pipelines of the model: queued behind the running run, a slot free or not.
    let (status, second) = s.github_signed("w-2", github_push("refs/heads/main", &f.c[2], &f.c[3])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(pipelines_of(&second), ["weather", "weather-canary"]);
    assert!(second["runs"].as_array().unwrap().iter().all(|r| r["model"] == "weather"), "{second}");
    // Queued in the order of the pipeline files: weather-canary.yaml, weather.yaml.
    let [canary, weather] = <[String; 2]>::try_from(ids_of(&second)).unwrap();
    assert_eq!(second["runs"][0]["pipeline"], "weather-canary");
    assert_eq!(s.run(&weather).await["status"], "queued");
    assert_eq!(s.run(&canary).await["status"], "queued");
    assert_eq!(s.calls().len(), 1);

    // The first finishes: the next run of the model starts, the other still waits.
    gate.add_permits(1);
    wait_for(&s, "the second run", |r| r.calls.lock().unwrap().len() == 2).await;
    assert_eq!(s.run(&ids_of(&first)[0]).await["status"], "succeeded");
    assert_eq!(s.run(&canary).await["status"], "running");
    assert_eq!(s.run(&weather).await["status"], "queued");
    gate.add_permits(2);
    let runs = s.settled_runs().await;
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:?}");
    let order: Vec<(String, String)> = s.calls().into_iter().map(|c| (c.pipeline, c.commit)).collect();
    assert_eq!(
        order,
        [
            ("weather".into(), f.c[1].clone()),
            ("weather-canary".into(), f.c[3].clone()),
            ("weather".into(), f.c[3].clone())
        ]
    );
    assert_eq!(s.runner.most_at_once("weather"), 1);
    assert_eq!(s.runner.max_in_flight.load(Ordering::SeqCst), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn runs_of_different_models_run_at_once() {
    let f = build();
    let gate = Arc::new(Semaphore::new(0));
    let s = Server::start(&f, TestRunner::gated(&gate), |c| c.max_concurrent_runs = 2).await;
    let (st1, v1) = s.github_signed("m-1", github_push("refs/heads/main", &f.c[0], &f.c[1])).await;
    let (st2, v2) = s.github_signed("m-2", github_push("refs/heads/main", &f.c[1], &f.c[2])).await;
    assert_eq!([st1, st2], [StatusCode::ACCEPTED; 2]);
    assert_eq!((pipelines_of(&v1), pipelines_of(&v2)), (vec!["weather".to_string()], vec!["iris".to_string()]));
    // Both are in the runner together: neither waits for the other.
    wait_for(&s, "two runs at once", |r| r.in_flight.load(Ordering::SeqCst) == 2).await;
    gate.add_permits(2);
    let runs = s.settled_runs().await;
    assert!(runs.iter().all(|r| r["status"] == "succeeded"), "{runs:?}");
    assert_eq!(s.runner.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!((s.runner.most_at_once("weather"), s.runner.most_at_once("iris")), (1, 1));
    s.shutdown().await;
}

#[tokio::test]
async fn a_newer_push_supersedes_the_queued_run_of_its_model() {
    let f = build();
    let gate = Arc::new(Semaphore::new(0));
    let s = Server::start(&f, TestRunner::gated(&gate), |c| c.max_concurrent_runs = 2).await;
    let (_, a1) = s.github_signed("a-1", github_push("refs/heads/main", &f.c[0], &f.c[1])).await;
    wait_for_a_running_pipeline(&s).await;
    let (_, a2) = s.github_signed("a-2", github_push("refs/heads/main", &f.c[2], &f.c[3])).await;
    let (status, a3) = s.github_signed("a-3", github_push("refs/heads/main", &f.c[1], &f.rewritten)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{a3}");
    let [a1, a2, a3] = [&a1, &a2, &a3].map(|v| {
        assert_eq!(pipelines_of(v), ["weather"], "{v}");
        ids_of(v).remove(0)
    });
    let replaced = s.run(&a2).await;
    assert_eq!(replaced["status"], "superseded", "{replaced}");
    assert_eq!(replaced["supersededBy"], a3.as_str());
    assert!(replaced["finishedAt"].is_string() && replaced["startedAt"].is_null(), "{replaced}");
    assert_eq!(s.run(&a1).await["status"], "running", "a running run is never superseded");
    assert_eq!(s.run(&a3).await["status"], "queued");
    assert_eq!(s.metric("modelship_runs_queued", &[]).await, 1.0);

    gate.add_permits(2);
    let runs = s.settled_runs().await;
    assert_eq!(runs.iter().filter(|r| r["status"] == "succeeded").count(), 2, "{runs:?}");
    // A1 then A3; A2's commit never reached the runner.
    let commits: Vec<String> = s.calls().into_iter().map(|c| c.commit).collect();
    assert_eq!(commits, [f.c[1].clone(), f.rewritten.clone()]);
    assert_eq!(s.runner.most_at_once("weather"), 1);
    assert_eq!(s.metric("modelship_runs_superseded_total", &[("pipeline", "weather")]).await, 1.0);
    assert_eq!(s.metric("modelship_runs_started_total", &[("pipeline", "weather")]).await, 2.0);
    // The replay protection still holds for a superseded delivery.
    let (status, _) = s.github_signed("a-2", github_push("refs/heads/main", &f.c[2], &f.c[3])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_records_the_running_and_the_queued_run_of_a_model() {
    let f = build();
    let gate = Arc::new(Semaphore::new(0));
    let s = Server::start(&f, TestRunner::gated(&gate), |c| c.max_concurrent_runs = 2).await;
    let (_, first) = s.github_signed("z-1", github_push("refs/heads/main", &f.c[0], &f.c[1])).await;
    wait_for_a_running_pipeline(&s).await;
    let (_, second) = s.github_signed("z-2", github_push("refs/heads/main", &f.c[2], &f.c[3])).await;
    let (running, queued) = (ids_of(&first).remove(0), ids_of(&second).remove(0));
    assert_eq!(s.run(&queued).await["status"], "queued");
    let runner = s.runner.clone();
    let runs = s.shutdown().await;
    let by_id = |id: &str| runs.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("{id} not recorded: {runs:?}"));
    let (r, q) = (by_id(&running), by_id(&queued));
    assert_eq!(
        (r.status.as_str(), r.run_id.as_deref()),
        ("cancelled", Some(&*format!("run-weather-{}", &f.c[1][..7])))
    );
    assert_eq!(q.status, "cancelled");
    assert_eq!(q.error.as_deref(), Some("server shut down before the run started"));
    assert!(q.started_at.is_none() && q.finished_at.is_some(), "{q:?}");
    assert_eq!(runner.cancelled.load(Ordering::SeqCst), 1);
    assert_eq!(runner.calls.lock().unwrap().len(), 1, "the queued run never started");
}

/// Read until the server closes the connection; what it sent, if anything.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    // Bounds a hang (the server closing is what is awaited), times nothing.
    let read = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&buf).into_owned()
}

/// Clients that send their headers or body slowly (or never) are cut off
/// and cannot hold the server: with every connection slot taken by
/// clients that stall in their headers, a genuine delivery still gets in
/// once they are disconnected; a stalled body is answered 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_cannot_hold_the_server() {
    use tokio::io::AsyncWriteExt;
    let f = build();
    let s = Server::start(&f, TestRunner::default(), |c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.body_read_timeout = Duration::from_millis(300);
        c.max_connections = 2;
    })
    .await;
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: pu").await.unwrap();
        stalled.push(c);
    }
    let (status, body) = s.github_signed("after-the-slow-ones", github_push("refs/heads/main", &f.c[0], &f.c[1])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    for mut c in stalled {
        let answer = read_to_close(&mut c).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }

    // Headers complete, 10 of 1,000 body bytes, then nothing.
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(
        b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: slow-body\r\nContent-Length: 1000\r\n\r\n{\"ref\": 1,",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut c).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("the body did not arrive within 300ms"), "{answer}");
    s.settled_runs().await;
    assert_eq!(s.calls().len(), 1);
    s.shutdown().await;
}
