//! `prediction-check` against real model servers on 127.0.0.1:
//! seldon-core 1.17.1's `seldon-core-microservice` serving the weather-like
//! fixture (and a model that raises), MLServer serving a scikit-learn model
//! over the Open Inference Protocol v2, and small loopback servers for the
//! faults no real model server produces on demand (a body that is not JSON,
//! a server that never becomes ready).
//!
//! The model servers live in venvs made by
//! `scripts/setup.d/45-check-runtimes.sh` (run by `scripts/test.sh`).

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use modelship::checks::{CheckError, Params, Report, check};
use modelship::error::{ExitClass, HasExitClass};
use modelship::spec::Pipeline;
use modelship::state::StateStore;
use serde_json::{Value, json};
use support::context;
use support::memory_state::MemoryState;
use support::{free_port, repo};

// ---------------------------------------------------------------- processes

/// A model server's file (`scripts/setup.d/45-check-runtimes.sh` installs them).
fn tool(rel: &str) -> PathBuf {
    support::tool(rel, "45-check-runtimes.sh")
}

fn fixtures() -> PathBuf {
    repo().join("fixtures/check-models")
}

/// A model server process group, killed (with its workers) on drop.
struct Server {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Server {
        use std::os::unix::process::CommandExt;
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // Keep fixtures/ free of __pycache__.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // Own process group: gunicorn and MLServer fork workers.
            .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Server { child, log, _dir: dir }
    }

    /// The server's output, for failure messages.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// `seldon-core-microservice MODEL` from fixtures/check-models on free ports;
/// returns the server and its base URL.
fn seldon(model: &str) -> (Server, String) {
    let http = free_port();
    let mut cmd = Command::new(tool("check-seldon/bin/seldon-core-microservice"));
    cmd.arg(model)
        .args(["--service-type", "MODEL"])
        .args(["--http-port", &http.to_string()])
        .args(["--grpc-port", &free_port().to_string()])
        .args(["--metrics-port", &free_port().to_string()])
        .current_dir(fixtures());
    let server = Server::spawn(cmd, tempfile::tempdir().unwrap());
    (server, format!("http://127.0.0.1:{http}"))
}

/// `mlserver start DIR` with the scikit-learn model the setup script trained.
fn mlserver() -> (Server, String) {
    let dir = tempfile::tempdir().unwrap();
    let model = tool("check-mlserver/model/model.joblib");
    let http = free_port();
    let settings = json!({
        "host": "127.0.0.1",
        "http_port": http,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        // Inference in the main process: one process to start and to kill.
        "parallel_workers": 0,
    });
    let model_settings = json!({
        "name": "weather-sklearn",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": model},
    });
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    std::fs::write(models.join("settings.json"), settings.to_string()).unwrap();
    std::fs::write(models.join("model-settings.json"), model_settings.to_string()).unwrap();
    let mut cmd = Command::new(tool("check-mlserver/bin/mlserver"));
    cmd.arg("start").arg(&models).current_dir(dir.path());
    let server = Server::spawn(cmd, dir);
    (server, format!("http://127.0.0.1:{http}"))
}

/// An axum app on a free loopback port, for the faults real servers do not
/// produce on demand. Stops with the test's runtime.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn params(yaml: &str) -> Params {
    modelship::spec::yaml::from_str(yaml).unwrap_or_else(|e| panic!("test params: {e}"))
}

async fn run_check(params: &Params, endpoint: &str, model: Option<&str>, server: &Server) -> Report {
    match check(params, endpoint, model).await {
        Ok(r) => r,
        Err(e) => panic!("check failed: {e}\n--- server output ---\n{}", server.output()),
    }
}

fn case<'r>(report: &'r Report, name: &str) -> &'r modelship::checks::CaseReport {
    report.cases.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name} in {report:#?}"))
}

fn port_filter() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    s
}

// ------------------------------------------------------- a stage, no engine

/// Run the pipeline's `check` stage the way the engine does, with the
/// `deploy` stage's `endpoint` output set to `endpoint`.
async fn run_stage(
    pipeline_yaml: &str,
    endpoint: &str,
) -> (Result<modelship::stages::Outputs, modelship::stages::StageError>, Arc<MemoryState>) {
    let pipeline: Pipeline = modelship::spec::yaml::from_str(pipeline_yaml).unwrap();
    let state = Arc::new(MemoryState::default());
    let workspace = tempfile::tempdir().unwrap();
    let cx = context::stage(&pipeline, "check", workspace.path())
        .output("deploy", "endpoint", json!(endpoint))
        .state(state.clone());
    state.create_run(&cx.record()).await.unwrap();
    (context::run(&cx.build()).await, state)
}

fn pipeline_with_check(check_with: &str) -> String {
    let indented: String = check_with.lines().map(|l| format!("        {l}\n")).collect();
    format!(
        "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{name: weather}}
spec:
  model: {{name: weather, source: 'file://model'}}
  environments: {{dev: {{namespace: models-dev}}}}
  stages:
    - {{name: deploy, uses: seldon-deploy, with: {{environment: dev}}}}
    - name: check
      uses: prediction-check
      with:
{indented}"
    )
}

// ------------------------------------------------------------------- tests

const SEED_REQUEST: &str = r#"{"meta": {"tags": {}}, "data": {"names": ["temperature"], "ndarray": ["55"]}}"#;

/// The seed's request against seldon-core 1.17.1, a negative case (the
/// model's error tag for a non-integer temperature), a deliberately wrong
/// expectation and a path the response does not have.
#[tokio::test]
async fn seldon_v1_weather_cases() {
    let (server, base) = seldon("WeatherModel");
    let p = params(&format!(
        r#"
environment: dev
readinessTimeout: 90s
timeout: 20s
cases:
  - name: seed
    request: {SEED_REQUEST}
    expect:
      meta.tags.weather_state: mild
      data.ndarray[0]: "55"
  - name: hot
    request: {{data: {{names: [temperature], ndarray: ["90"]}}}}
    expect:
      meta.tags.weather_state: {{oneOf: [warm, hot]}}
      data.ndarray[0]: {{approx: 90, tolerance: 0.5}}
  - name: not-an-integer
    request: {{data: {{names: [temperature], ndarray: ["warm"]}}}}
    expect:
      meta.tags.error: {{regex: "(?i)temperature value as integer"}}
      meta.tags.weather_state: {{exists: false}}
  - name: wrong-expectation
    request: {SEED_REQUEST}
    expect:
      meta.tags.weather_state: cold
  - name: missing-path
    request: {SEED_REQUEST}
    expect:
      meta.tags.humidity: high
"#
    ));
    let report = run_check(&p, &base, None, &server).await;

    assert!(!report.passed);
    for name in ["seed", "hot", "not-an-integer"] {
        let c = case(&report, name);
        assert!(c.passed, "{name}: {c:#?}");
        assert_eq!(c.status, Some(200));
        assert!(c.response.is_none(), "passing cases keep no body");
    }
    let seed = case(&report, "seed");
    let tag = seed.checks.iter().find(|c| c.path == "meta.tags.weather_state").unwrap();
    assert_eq!((tag.actual.as_ref(), tag.expect.as_str()), (Some(&json!("mild")), "= \"mild\""));

    let wrong = case(&report, "wrong-expectation");
    assert!(!wrong.passed);
    assert_eq!(wrong.checks[0].actual, Some(json!("mild")));
    assert_eq!(wrong.checks[0].diff.as_deref(), Some("- expected: \"cold\"\n+ actual:   \"mild\""));
    assert!(wrong.response.as_deref().unwrap().contains(r#""weather_state":"mild""#));

    let missing = case(&report, "missing-path");
    assert!(!missing.passed);
    assert_eq!(missing.checks[0].actual, None);
    assert_eq!(
        missing.checks[0].diff.as_deref(),
        Some("path does not exist: `meta.tags` has no key `humidity` (keys: weather_state)")
    );

    port_filter().bind(|| insta::assert_snapshot!("seldon_failure_summary", report.failure_summary()));
    // The TTY table's layout is snapshotted in the unit tests; latencies vary here.
    let table = report.table();
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().take(3).collect()).collect();
    assert_eq!(
        rows,
        [
            ["seed", "pass", "200"],
            ["hot", "pass", "200"],
            ["not-an-integer", "pass", "200"],
            ["wrong-expectation", "FAIL", "200"],
            ["missing-path", "FAIL", "200"],
        ]
    );

    // The stage around it: endpoint from the seldon-deploy stage, a passing
    // check gives outputs, a failing one exits 1 with the diff and keeps the
    // report in the run record.
    let passing = pipeline_with_check(&format!(
        "environment: dev\ncases:\n  - name: seed\n    request: {SEED_REQUEST}\n    expect: {{meta.tags.weather_state: mild}}"
    ));
    let (outputs, _) = run_stage(&passing, &base).await;
    let outputs = outputs.unwrap_or_else(|e| panic!("{e}\n{}", server.output()));
    assert_eq!(outputs["passed"], json!(true));
    assert_eq!(outputs["report"]["cases"][0]["checks"][0]["actual"], json!("mild"));
    assert_eq!(outputs["report"]["endpoint"], json!(format!("{base}/api/v1.0/predictions")));

    let failing = pipeline_with_check(&format!(
        "environment: dev\ncases:\n  - name: seed\n    request: {SEED_REQUEST}\n    expect: {{meta.tags.weather_state: hot}}"
    ));
    let (result, state) = run_stage(&failing, &base).await;
    let err = result.unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::Failed);
    assert!(err.message.starts_with("prediction check failed in `dev`:"), "{}", err.message);
    assert!(err.message.contains("- expected: \"hot\"\n      + actual:   \"mild\""), "{}", err.message);
    let run = state.run.lock().unwrap().clone().unwrap();
    let saved = &run.stages[0].checkpoints["report"];
    assert_eq!(saved["passed"], json!(false));
    assert_eq!(saved["cases"][0]["checks"][0]["actual"], json!("mild"));
}

/// seldon-core answers 500 when the model raises: a failed case with the
/// response shown, unless the case expects the 500. The load phase counts
/// every 500 as an error and misses `errorRate: 0`.
#[tokio::test]
async fn seldon_model_returning_500() {
    let (server, base) = seldon("Broken");
    let p = params(&format!(
        r#"
readinessTimeout: 90s
cases:
  - name: expects-success
    request: {SEED_REQUEST}
    expect: {{meta.tags.weather_state: mild}}
  - name: expects-the-error
    request: {SEED_REQUEST}
    status: 500
    expect:
      status.reason: MICROSERVICE_INTERNAL_ERROR
      status.info: {{regex: "exploded"}}
load: {{requests: 6, concurrency: 2, case: expects-success}}
slo: {{errorRate: 0}}
"#
    ));
    let report = run_check(&p, &base, None, &server).await;
    let failed = case(&report, "expects-success");
    assert!(!failed.passed);
    assert_eq!(failed.status, Some(500));
    assert_eq!(failed.error.as_deref(), Some("HTTP 500, expected 200"));
    assert!(failed.response.as_deref().unwrap().contains("model exploded while predicting"), "{failed:#?}");
    assert!(case(&report, "expects-the-error").passed, "{report:#?}");

    let load = report.load.as_ref().unwrap();
    assert_eq!((load.requests, load.succeeded, load.failed), (6, 0, 6));
    assert_eq!(load.error_rate, 1.0);
    assert_eq!(load.errors[0].error, "HTTP 500, expected 200");
    assert_eq!(load.errors[0].count, 6);
    assert!(!report.slo[0].passed);
    assert!(report.failure_summary().contains("errorRate <= 0: measured 1 (6 of 6)"), "{}", report.failure_summary());
}

/// A load phase against the weather model: a generous SLO passes, an
/// impossible one (`p95: 0ms`) fails the check.
#[tokio::test]
async fn seldon_load_phase_and_slo() {
    let (server, base) = seldon("WeatherModel");
    let with_slo = |slo: &str| {
        params(&format!(
            r#"
readinessTimeout: 90s
cases:
  - name: seed
    request: {SEED_REQUEST}
    expect: {{meta.tags.weather_state: mild}}
load: {{requests: 60, concurrency: 4}}
slo: {slo}
"#
        ))
    };
    let report =
        run_check(&with_slo("{p50: 30s, p95: 30s, p99: 30s, errorRate: 0, minThroughput: 0.01}"), &base, None, &server)
            .await;
    assert!(report.passed, "{}", report.failure_summary());
    let load = report.load.as_ref().unwrap();
    assert_eq!((load.request.as_str(), load.requests, load.concurrency), ("seed", 60, 4));
    assert_eq!((load.succeeded, load.failed), (60, 0));
    let (p50, p95, p99, max) = (load.p50_ms.unwrap(), load.p95_ms.unwrap(), load.p99_ms.unwrap(), load.max_ms.unwrap());
    assert!(0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max, "{load:#?}");
    assert!(load.throughput > 0.0);
    assert_eq!(report.slo.len(), 5);
    assert!(report.slo.iter().all(|s| s.passed));

    let report = run_check(&with_slo("{p95: 0ms}"), &base, None, &server).await;
    assert!(!report.passed);
    assert!(case(&report, "seed").passed);
    assert_eq!(report.slo[0].objective, "p95");
    assert!(!report.slo[0].passed);
    assert!(
        report.failure_summary().starts_with("SLO missed (1 of 1):\n  p95 <= 0ms: measured "),
        "{}",
        report.failure_summary()
    );
}

/// Open Inference Protocol v2 against MLServer + mlserver-sklearn, by base
/// URL and model name, and by the full infer URL; a request MLServer rejects
/// is a passing negative case when its 422 is expected.
#[tokio::test]
async fn mlserver_v2_cases_pass() {
    let (server, base) = mlserver();
    let p = params(
        r#"
protocol: v2
readinessTimeout: 120s
cases:
  - name: three-temperatures
    request:
      inputs: [{name: temperature, shape: [3, 1], datatype: FP64, data: [30, 55, 90]}]
    expect:
      model_name: weather-sklearn
      outputs[0].name: predict
      outputs[0].data: {equals: [0, 1, 2]}
      outputs[0].data[1]: 1
      outputs[0].shape: [3, 1]
  - name: unknown-datatype
    request:
      inputs: [{name: temperature, shape: [1, 1], datatype: NOPE, data: [1]}]
    status: 422
    expect:
      detail[0].loc[3]: datatype
"#,
    );
    let report = run_check(&p, &base, Some("weather-sklearn"), &server).await;
    assert!(report.passed, "{}\n{report:#?}", report.failure_summary());
    assert_eq!(report.protocol, "v2");
    assert_eq!(report.endpoint, format!("{base}/v2/models/weather-sklearn/infer"));
    let data = report.cases[0].checks.iter().find(|c| c.path == "outputs[0].data").unwrap();
    assert_eq!(data.actual, Some(json!([0, 1, 2])));

    // The full URL names the model; no model name needed.
    let report = run_check(&p, &format!("{base}/v2/models/weather-sklearn/infer"), None, &server).await;
    assert!(report.passed, "{}", report.failure_summary());

    // A model the server does not have never becomes ready.
    let mut missing = p.clone();
    missing.readiness_timeout = Some(modelship::checks::DurationStr::parse("1s").unwrap());
    let err = check(&missing, &base, Some("no-such-model")).await.unwrap_err();
    assert!(err.to_string().contains(&format!("GET {base}/v2/models/no-such-model/ready: HTTP 404")), "{err}");
}

/// Endpoints that never become ready: nothing listening, a server that
/// answers 503, one that accepts and never answers. The error names the
/// URL and the last error, and is not bad input.
#[tokio::test]
async fn never_ready_endpoints_time_out_naming_url_and_last_error() {
    let p = params("readinessTimeout: 1s\ncases: [{request: {}}]");

    let refused = format!("http://127.0.0.1:{}", free_port());
    let err = check(&p, &refused, None).await.unwrap_err();
    assert!(matches!(err, CheckError::NotReady { .. }), "{err:?}");
    assert_eq!(err.exit_class(), ExitClass::Failed);
    let msg = err.to_string();
    assert!(msg.contains(&format!("{refused}/health/ping")), "{msg}");
    assert!(msg.to_lowercase().contains("connection refused"), "{msg}");

    let unavailable = serve(
        axum::Router::new()
            .route(
                "/health/ping",
                axum::routing::get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting") }),
            )
            .route("/v2/health/ready", axum::routing::get(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE })),
    )
    .await;
    let msg = check(&p, &unavailable, None).await.unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "last error: GET {unavailable}/health/ping: HTTP 503; GET {unavailable}/ready: HTTP 404"
        )),
        "{msg}"
    );
    let mut v2 = p.clone();
    v2.protocol = modelship::checks::Protocol::V2;
    let msg = check(&v2, &unavailable, Some("m")).await.unwrap_err().to_string();
    assert!(msg.contains(&format!("last error: GET {unavailable}/v2/health/ready: HTTP 503")), "{msg}");

    // Accepts connections, never answers: the deadline still holds.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let msg = check(&p, &silent_url, None).await.unwrap_err().to_string();
    assert!(msg.contains(&format!("{silent_url}/health/ping")), "{msg}");
    holder.abort();
}

/// A server that is ready but answers predictions with a body that is not
/// JSON: a failed case showing that body, not a crash.
#[tokio::test]
async fn malformed_json_response_is_a_failed_case() {
    let base = serve(axum::Router::new().route("/health/ping", axum::routing::get(|| async { "pong" })).route(
        "/api/v1.0/predictions",
        axum::routing::post(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], r#"{"data": [1,"#) }),
    ))
    .await;
    let p = params("cases: [{name: garbled, request: {data: {ndarray: [1]}}, expect: {data: {exists: true}}}]");
    let report = check(&p, &base, None).await.unwrap();
    assert!(!report.passed);
    let c = &report.cases[0];
    assert_eq!(c.status, Some(200));
    assert!(c.error.as_deref().unwrap().starts_with("response is not valid JSON: EOF while parsing"), "{c:#?}");
    assert_eq!(c.response.as_deref(), Some(r#"{"data": [1,"#));
    assert!(c.checks.is_empty());
}

/// Nothing the stage reports or logs carries a registered secret, even when
/// the model echoes it back.
#[tokio::test]
async fn secrets_in_responses_are_masked() {
    modelship::secret::register("sk-live-0123456789");
    let base = serve(axum::Router::new().route("/health/ping", axum::routing::get(|| async { "pong" })).route(
        "/api/v1.0/predictions",
        axum::routing::post(|body: String| async move {
            let v: Value = serde_json::from_str(&body).unwrap();
            axum::Json(json!({"meta": {"tags": {"echo": v["token"]}}}))
        }),
    ))
    .await;
    let p = params("cases: [{request: {token: sk-live-0123456789}, expect: {meta.tags.echo: nope}}]");
    let report = check(&p, &base, None).await.unwrap();
    let text = serde_json::to_string(&report).unwrap() + &report.failure_summary() + &report.table();
    assert!(!text.contains("sk-live-0123456789"), "{text}");
    assert_eq!(report.cases[0].checks[0].actual, Some(json!("****")));
}
