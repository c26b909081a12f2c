//! Prediction checks: prove a deployed model answers right and fast enough.
//! The `prediction-check` stage runs them before anything is promoted, and
//! `promote` with `verify: true` runs the same cases against the target.
//!
//! It waits until the predictor is ready (Seldon v1 `/health/ping`, or the
//! executor's `/ready`; OIP v2 `/v2/health/ready` and
//! `/v2/models/NAME/ready`), sends each case in order and checks the
//! response with [`expect`] matchers, then optionally runs a load phase and
//! judges it against an SLO. [`check`] is the whole check without the
//! engine; the stage ([`crate::stages::prediction_check`]) wraps it, prints
//! a table on a TTY, and fails (exit 1) with a readable summary when a case
//! or an objective fails. [`Report`] and its parts are what the run record,
//! the ledger and `modelship report` keep of a check.

mod expect;
mod http;
mod load;
mod report;

use std::collections::HashSet;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

pub use self::expect::{JsonPath, Matcher, Missing};
pub use self::http::Target;
pub use self::report::{CaseReport, CheckReport, ErrorCount, LoadReport, Report, SloVerdict, format_ms};
use crate::error::{ExitClass, HasExitClass};
use crate::secret::mask;
use crate::spec::Problem;

const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(120);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A failed case keeps this much of the response body in the report.
const RESPONSE_EXCERPT: usize = 2000;
const MAX_LOAD_REQUESTS: u64 = 1_000_000;
const MAX_CONCURRENCY: u32 = 1024;

/// `with:` of a `prediction-check` stage.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// The environment checked, for messages and the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Base URL of the predictor (`http://HOST:PORT`) or the full prediction
    /// URL. Default: the `endpoint` output of the latest earlier
    /// `seldon-deploy` stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// The v2 model name; default `spec.model.name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// How long to wait for the server to report ready (default 2m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_timeout: Option<DurationStr>,
    /// Per request (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    #[serde(default)]
    pub cases: Vec<Case>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Seldon Core v1: `POST /api/v1.0/predictions`.
    #[default]
    Seldon,
    /// Open Inference Protocol v2 (MLServer, KServe, Triton):
    /// `POST /v2/models/NAME/infer`.
    V2,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Seldon => "seldon",
            Protocol::V2 => "v2",
        }
    }
}

/// One request and what its response must hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The JSON body; a string is sent verbatim.
    pub request: Value,
    /// Dotted path -> matcher (see [`expect`]).
    #[serde(default)]
    pub expect: IndexMap<String, Value>,
    /// Expected HTTP status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// The optional load phase.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Load {
    pub requests: u64,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// A JSON body to send; or `case`; default: the first case's request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    /// The name of a case whose request (and expected status) to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
}

fn default_concurrency() -> u32 {
    4
}

/// Objectives the load phase must meet.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Slo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<DurationStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<DurationStr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<DurationStr>,
    /// Highest acceptable share of failed requests, 0..1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Lowest acceptable successful requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_throughput: Option<f64>,
}

/// A duration written like `250ms`, `30s`, `2m`; keeps its text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationStr(pub Duration, String);

impl DurationStr {
    pub fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(|d| DurationStr(d, text.trim().to_string()))
            .map_err(|e| format!("`{text}` is not a duration like `250ms`, `30s` or `2m`: {e}"))
    }
    pub fn text(&self) -> &str {
        &self.1
    }
}

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DurationStr::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for DurationStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.1)
    }
}

/// Why a check could not produce a verdict. A case that fails is not an
/// error: it is in the [`Report`].
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("invalid prediction-check parameters:\n{}", format_problems(.problems))]
    Invalid { problems: Vec<Problem> },
    #[error("endpoint `{endpoint}`: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(
        "no endpoint to check: set `with.endpoint`, or run a `seldon-deploy` stage before this one (its `endpoint` output is used)"
    )]
    NoEndpoint,
    #[error("model server not ready after {waited}: {url}; last error: {last_error}")]
    NotReady { url: String, waited: String, last_error: String },
    #[error("cannot build the HTTP client")]
    Client {
        #[source]
        source: reqwest::Error,
    },
}

impl HasExitClass for CheckError {
    fn exit_class(&self) -> ExitClass {
        match self {
            CheckError::Invalid { .. } | CheckError::Endpoint { .. } | CheckError::NoEndpoint => ExitClass::BadInput,
            CheckError::NotReady { .. } => ExitClass::Failed,
            CheckError::Client { .. } => ExitClass::Internal,
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| {
            let at = if p.path.is_empty() { "with".to_string() } else { format!("with.{}", p.path) };
            match &p.hint {
                Some(h) => format!("  {at}: {} (hint: {h})", p.message),
                None => format!("  {at}: {}", p.message),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A case ready to send: matchers parsed, body serialized.
struct CompiledCase {
    name: String,
    body: Vec<u8>,
    status: u16,
    checks: Vec<(String, JsonPath, Matcher)>,
}

pub fn case_name(case: &Case, index: usize) -> String {
    case.name.clone().unwrap_or_else(|| format!("case-{}", index + 1))
}

fn request_body(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.clone().into_bytes(),
        other => serde_json::to_vec(other).expect("a serde_json::Value always serializes"),
    }
}

/// Every problem in `params` that needs no network: cases, matchers, paths,
/// the load phase and SLO. Paths are relative to `with`.
pub fn problems(params: &Params) -> Vec<Problem> {
    let mut out = Vec::new();
    if params.cases.is_empty() {
        out.push(
            Problem::new("cases", "at least one case is required")
                .with_hint("a case is `{request: {...}, expect: {PATH: VALUE}}`"),
        );
    }
    let mut names = HashSet::new();
    for (i, case) in params.cases.iter().enumerate() {
        let name = case_name(case, i);
        if !names.insert(name.clone()) {
            out.push(Problem::new(format!("cases[{i}].name"), format!("duplicate case name `{name}`")));
        }
        if let Some(s) = case.status
            && !(100..=599).contains(&s)
        {
            out.push(Problem::new(format!("cases[{i}].status"), format!("{s} is not an HTTP status (100..599)")));
        }
        for (path, spec) in &case.expect {
            let at = format!("cases[{i}].expect.{path}");
            if let Err(e) = JsonPath::parse(path) {
                out.push(
                    Problem::new(&at, format!("invalid path: {e}")).with_hint(
                        "paths look like `meta.tags.weather_state`, `data.ndarray[0]`, `outputs[0].data[0]`",
                    ),
                );
            }
            if let Err(e) = Matcher::parse(spec) {
                let at = match &e.key {
                    Some(k) => format!("{at}.{k}"),
                    None => at,
                };
                let mut p = Problem::new(at, e.message);
                p.hint = e.hint;
                out.push(p);
            }
        }
    }
    let positive = |d: &Option<DurationStr>, at: &str, out: &mut Vec<Problem>| {
        if let Some(d) = d
            && d.0.is_zero()
        {
            out.push(Problem::new(at, "must be longer than zero"));
        }
    };
    positive(&params.timeout, "timeout", &mut out);
    positive(&params.readiness_timeout, "readinessTimeout", &mut out);
    if let Some(endpoint) = &params.endpoint
        && !crate::template::is_template(endpoint)
        && let Err(e) =
            Target::resolve(endpoint, params.protocol, Some(params.model_name.as_deref().unwrap_or("model")))
    {
        out.push(Problem::new("endpoint", e.to_string()));
    }
    if let Some(load) = &params.load {
        if load.requests == 0 || load.requests > MAX_LOAD_REQUESTS {
            out.push(Problem::new("load.requests", format!("must be between 1 and {MAX_LOAD_REQUESTS}")));
        }
        if load.concurrency == 0 || load.concurrency > MAX_CONCURRENCY {
            out.push(Problem::new("load.concurrency", format!("must be between 1 and {MAX_CONCURRENCY}")));
        }
        if load.request.is_some() && load.case.is_some() {
            out.push(Problem::new("load", "give either `request` or `case`, not both"));
        }
        if let Some(case) = &load.case {
            let known: Vec<String> = params.cases.iter().enumerate().map(|(i, c)| case_name(c, i)).collect();
            if !known.contains(case) {
                out.push(
                    Problem::new("load.case", format!("no case is named `{case}`"))
                        .with_hint(format!("cases: {}", known.join(", "))),
                );
            }
        }
    }
    if let Some(slo) = &params.slo {
        if params.load.is_none() {
            out.push(
                Problem::new("slo", "an SLO needs a load phase to measure")
                    .with_hint("add `load: {requests: 100, concurrency: 4}`"),
            );
        }
        if let Some(r) = slo.error_rate
            && !(0.0..=1.0).contains(&r)
        {
            out.push(Problem::new("slo.errorRate", format!("{r} is not a share between 0 and 1")));
        }
        if let Some(t) = slo.min_throughput
            && !(t.is_finite() && t > 0.0)
        {
            out.push(Problem::new("slo.minThroughput", "must be a positive number of requests per second"));
        }
    }
    out
}

fn compile(params: &Params) -> Result<Vec<CompiledCase>, CheckError> {
    let problems = problems(params);
    if !problems.is_empty() {
        return Err(CheckError::Invalid { problems });
    }
    Ok(params
        .cases
        .iter()
        .enumerate()
        .map(|(i, case)| CompiledCase {
            name: case_name(case, i),
            body: request_body(&case.request),
            status: case.status.unwrap_or(200),
            checks: case
                .expect
                .iter()
                .map(|(p, m)| {
                    // Both parse: `problems` above found nothing.
                    (p.clone(), JsonPath::parse(p).expect("checked"), Matcher::parse(m).expect("checked"))
                })
                .collect(),
        })
        .collect())
}

/// Run the whole check against `endpoint` (a base URL or the full
/// prediction URL). `default_model` is the v2 model name when
/// `params.modelName` is unset. Failing cases and SLOs are in the report
/// (`passed: false`); `Err` means no verdict could be reached.
pub async fn check(params: &Params, endpoint: &str, default_model: Option<&str>) -> Result<Report, CheckError> {
    let cases = compile(params)?;
    let model = params.model_name.as_deref().or(default_model);
    let target = Target::resolve(endpoint, params.protocol, model)?;
    let timeout = params.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |d| d.0);
    let concurrency = params.load.as_ref().map_or(1, |l| l.concurrency.max(1));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(concurrency as usize)
        .user_agent(concat!("modelship/", env!("CARGO_PKG_VERSION"), " prediction-check"))
        .build()
        .map_err(|source| CheckError::Client { source })?;

    let readiness = params.readiness_timeout.as_ref().map_or(DEFAULT_READINESS_TIMEOUT, |d| d.0);
    http::wait_ready(&client, &target, readiness).await?;

    let predict = mask(&target.predict);
    let mut reports = Vec::with_capacity(cases.len());
    for case in &cases {
        let r = run_case(&client, &target.predict, case).await;
        log_case(&r, &predict);
        reports.push(r);
    }

    let (load, slo) = match &params.load {
        Some(l) => {
            let (name, body, status) = load_request(params, l, &cases);
            tracing::info!(
                endpoint = %predict, requests = l.requests, concurrency = l.concurrency, request = %name,
                "prediction-check load phase"
            );
            let report = load::run(&client, &target.predict, &body, status, l, &name).await;
            let verdicts = params.slo.as_ref().map(|s| load::verdicts(s, &report)).unwrap_or_default();
            tracing::info!(
                succeeded = report.succeeded,
                failed = report.failed,
                p50_ms = report.p50_ms,
                p95_ms = report.p95_ms,
                p99_ms = report.p99_ms,
                throughput = report.throughput,
                slo_passed = verdicts.iter().all(|v| v.passed),
                "prediction-check load phase done"
            );
            (Some(report), verdicts)
        }
        None => (None, Vec::new()),
    };
    let passed = reports.iter().all(|c| c.passed) && slo.iter().all(|s| s.passed);
    Ok(Report {
        endpoint: predict,
        protocol: params.protocol.name().to_string(),
        environment: params.environment.clone(),
        passed,
        cases: reports,
        load,
        slo,
    })
}

fn load_request(params: &Params, load: &Load, cases: &[CompiledCase]) -> (String, Vec<u8>, u16) {
    if let Some(body) = &load.request {
        return ("request".to_string(), request_body(body), 200);
    }
    let case = match &load.case {
        Some(name) => cases.iter().find(|c| &c.name == name),
        None => cases.first(),
    };
    // `compile` ensured the named case exists and that there is one.
    let case = case.expect("checked by problems()");
    debug_assert!(!params.cases.is_empty());
    (case.name.clone(), case.body.clone(), case.status)
}

async fn run_case(client: &reqwest::Client, url: &str, case: &CompiledCase) -> CaseReport {
    let mut report = CaseReport {
        name: case.name.clone(),
        passed: false,
        status: None,
        expected_status: case.status,
        latency_ms: 0.0,
        checks: Vec::new(),
        error: None,
        response: None,
    };
    let resp = match http::post_json(client, url, &case.body).await {
        Ok(r) => r,
        Err(e) => {
            report.error = Some(mask(&format!("POST {url}: {e}")));
            return report;
        }
    };
    report.status = Some(resp.status);
    report.latency_ms = resp.latency.as_secs_f64() * 1000.0;
    let mut errors = Vec::new();
    if resp.status != case.status {
        errors.push(format!("HTTP {}, expected {}", resp.status, case.status));
    }
    // An expected error status may come with a non-JSON page; a success or
    // any expectation needs a JSON body.
    let needs_json = (200..300).contains(&case.status) || !case.checks.is_empty();
    match &resp.body {
        Ok(body) => {
            for (text, path, matcher) in &case.checks {
                let found = path.lookup(body);
                let verdict = matcher.check(found.as_ref().map(|v| *v));
                report.checks.push(CheckReport {
                    path: text.clone(),
                    expect: mask(&matcher.to_string()),
                    passed: verdict.is_ok(),
                    actual: found.ok().map(mask_value),
                    diff: verdict.err().map(|d| mask(&d)),
                });
            }
        }
        Err(e) if needs_json => errors.push(e.to_string()),
        Err(_) => {}
    }
    report.passed = errors.is_empty() && report.checks.iter().all(|c| c.passed);
    if !errors.is_empty() {
        report.error = Some(mask(&errors.join("; ")));
    }
    if !report.passed {
        // Servers end JSON with a newline (Flask's jsonify does); it is noise in a summary.
        let text = resp.text.trim_end();
        let text = if text.is_empty() { "(empty body)" } else { text };
        report.response = Some(report::truncate(&mask(text), RESPONSE_EXCERPT));
    }
    report
}

/// A response value as stored in the report: masked, and large values cut
/// to a string excerpt so the run record stays small.
fn mask_value(v: &Value) -> Value {
    let text = v.to_string();
    let masked = mask(&text);
    if masked.len() > RESPONSE_EXCERPT {
        return Value::String(report::truncate(&masked, RESPONSE_EXCERPT));
    }
    if masked == text { v.clone() } else { serde_json::from_str(&masked).unwrap_or(Value::String(masked)) }
}

fn log_case(r: &CaseReport, endpoint: &str) {
    if r.passed {
        tracing::info!(
            case = %r.name, passed = true, status = r.status, latency_ms = r.latency_ms, checks = r.checks.len(),
            endpoint, "prediction case passed"
        );
    } else {
        let failed: Vec<String> = r
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.path, c.diff.as_deref().unwrap_or_default().replace('\n', " | ")))
            .collect();
        tracing::warn!(
            case = %r.name, passed = false, status = r.status, latency_ms = r.latency_ms,
            error = r.error.as_deref(), failed_checks = %failed.join("; "), endpoint, "prediction case failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(v: Value) -> Params {
        serde_json::from_value(v).unwrap()
    }

    fn paths(ps: &[Problem]) -> Vec<&str> {
        ps.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn the_seed_case_is_valid() {
        let p = params(json!({
            "environment": "dev",
            "cases": [{
                "request": {"data": {"names": ["temperature"], "ndarray": ["55"]}},
                "expect": {"meta.tags.weather_state": "mild"}
            }]
        }));
        assert_eq!(problems(&p), vec![]);
        assert_eq!(p.protocol, Protocol::Seldon);
    }

    #[test]
    fn malformed_expectations_point_at_their_path() {
        let p = params(json!({
            "cases": [
                {"request": {}, "expect": {"a": 1}},
                {"request": {}, "expect": {
                    "meta.tags.x": {"regex": "(unclosed"},
                    "meta.tags.y": {"regx": "a"},
                    "meta.tags.z": {"tolerance": 0.1},
                    "data..ndarray": 1
                }, "status": 999}
            ]
        }));
        let ps = problems(&p);
        assert_eq!(
            paths(&ps),
            vec![
                "cases[1].status",
                // `with:` arrives as a serde_json map, sorted by key.
                "cases[1].expect.data..ndarray",
                "cases[1].expect.meta.tags.x.regex",
                "cases[1].expect.meta.tags.y.regx",
                "cases[1].expect.meta.tags.z.tolerance",
            ]
        );
        assert!(ps[3].hint.as_deref().unwrap().contains("did you mean `regex`"));
    }

    #[test]
    fn empty_cases_and_load_problems() {
        let p = params(json!({"cases": [], "slo": {"p95": "250ms", "errorRate": 2}}));
        assert_eq!(paths(&problems(&p)), vec!["cases", "slo", "slo.errorRate"]);
        let p = params(json!({
            "cases": [{"name": "a", "request": {}}, {"name": "a", "request": {}}],
            "load": {"requests": 0, "concurrency": 0, "case": "b", "request": {}},
            "timeout": "0s"
        }));
        assert_eq!(
            paths(&problems(&p)),
            vec!["cases[1].name", "timeout", "load.requests", "load.concurrency", "load", "load.case"]
        );
    }

    #[test]
    fn unknown_protocol_and_misspelt_keys_are_rejected_by_serde() {
        let e = serde_json::from_value::<Params>(json!({"protocol": "v3", "cases": []})).unwrap_err();
        assert!(e.to_string().contains("unknown variant `v3`, expected `seldon` or `v2`"), "{e}");
        let e = serde_json::from_value::<Params>(json!({"case": []})).unwrap_err();
        assert!(e.to_string().contains("unknown field `case`"), "{e}");
        let e = serde_json::from_value::<Params>(json!({"cases": [{"request": {}, "expects": {}}]})).unwrap_err();
        assert!(e.to_string().contains("unknown field `expects`"), "{e}");
        let e = serde_json::from_value::<Params>(json!({"timeout": "soon"})).unwrap_err();
        assert!(e.to_string().contains("is not a duration"), "{e}");
    }

    #[test]
    fn a_bad_endpoint_is_a_validation_problem_but_a_template_is_not() {
        let p = params(json!({"endpoint": "ftp://x", "cases": [{"request": {}}]}));
        assert_eq!(paths(&problems(&p)), vec!["endpoint"]);
        let p = params(json!({"endpoint": "{{stages.deploy.outputs.endpoint}}", "cases": [{"request": {}}]}));
        assert!(problems(&p).is_empty());
    }

    #[test]
    fn invalid_params_are_bad_input() {
        let e = CheckError::Invalid { problems: problems(&params(json!({}))) };
        assert_eq!(e.exit_class(), ExitClass::BadInput);
        assert_eq!(
            e.to_string(),
            "invalid prediction-check parameters:\n  with.cases: at least one case is required (hint: a case is `{request: {...}, expect: {PATH: VALUE}}`)"
        );
    }

    #[test]
    fn string_requests_are_sent_verbatim() {
        assert_eq!(request_body(&json!("{not json")), b"{not json");
        assert_eq!(request_body(&json!({"a": [1]})), br#"{"a":[1]}"#);
    }
}
