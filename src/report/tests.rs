use serde_json::json;

use super::*;
use crate::checks::{CaseReport, CheckReport, LoadReport, SloVerdict};

const DIGEST: &str = "sha256:4f0c5b2e8a1d3c7b9e6f0a2d4c8b1e3f5a7c9d0b2e4f6a8c0d1e3f5a7b9c2d4e";

fn check_report() -> Report {
    let case = |name: &str, tag: &str, value: &str, latency: f64| CaseReport {
        name: name.into(),
        passed: true,
        status: Some(200),
        expected_status: 200,
        latency_ms: latency,
        checks: vec![CheckReport {
            path: format!("meta.tags.{tag}"),
            expect: format!("= {value:?}"),
            passed: true,
            actual: Some(json!(value)),
            diff: None,
        }],
        error: None,
        response: None,
    };
    Report {
        endpoint: "http://127.0.0.1:41000/api/v1.0/predictions".into(),
        protocol: "seldon".into(),
        environment: Some("dev".into()),
        passed: true,
        cases: vec![
            case("seed request", "weather_state", "mild", 31.5),
            case("not an integer", "error", "Please provide temperature value as Integer", 12.25),
        ],
        load: Some(LoadReport {
            request: "seed request".into(),
            requests: 200,
            concurrency: 8,
            succeeded: 200,
            failed: 0,
            error_rate: 0.0,
            p50_ms: Some(28.8),
            p95_ms: Some(34.8),
            p99_ms: Some(38.2),
            max_ms: Some(41.0),
            throughput: 270.3,
            duration_ms: 740.0,
            errors: vec![],
        }),
        slo: vec![
            SloVerdict { objective: "p95".into(), limit: "<= 250ms".into(), actual: "34.8ms".into(), passed: true },
            SloVerdict { objective: "errorRate".into(), limit: "<= 0".into(), actual: "0".into(), passed: true },
        ],
    }
}

fn stage(name: &str, uses: &str, started: &str, ms: u64, outputs: serde_json::Value) -> StageRecord {
    StageRecord {
        name: name.into(),
        uses: uses.into(),
        status: Status::Succeeded,
        attempts: 1,
        started: Some(started.into()),
        duration_ms: Some(ms),
        outputs: serde_json::from_value(outputs).unwrap(),
        ..Default::default()
    }
}

pub(crate) fn record() -> RunRecord {
    let dev = format!("image-registry.openshift-image-registry.svc:5000/models-dev/weather@{DIGEST}");
    let prod = format!("127.0.0.1:40123/models-prod/weather@{DIGEST}");
    RunRecord {
        run_id: "20261125-061500-ab12".into(),
        pipeline: "weather".into(),
        model: "weather".into(),
        pipeline_digest: "sha256:00".into(),
        status: Status::Succeeded,
        created: "2026-11-25T06:15:00Z".into(),
        updated: "2026-11-25T06:16:00.500Z".into(),
        labels: [("commit".to_string(), "abc123".to_string())].into(),
        stages: vec![
            stage("fetch", "fetch-model", "2026-11-25T06:15:00.100Z", 127, json!({"modelDir": "/ws/fetch/model"})),
            stage(
                "build",
                "openshift-build",
                "2026-11-25T06:15:00.300Z",
                1200,
                json!({"image": dev, "imageDigest": DIGEST}),
            ),
            stage("deploy", "seldon-deploy", "2026-11-25T06:15:01.600Z", 55_100, json!({"deployedDigest": DIGEST})),
            stage(
                "check",
                "prediction-check",
                "2026-11-25T06:15:56.800Z",
                856,
                json!({"passed": true, "report": serde_json::to_value(check_report()).unwrap()}),
            ),
            stage(
                "promote",
                "promote",
                "2026-11-25T06:15:57.700Z",
                388,
                json!({"image": prod, "digest": DIGEST, "environment": "prod", "previousDigest": null}),
            ),
        ],
        ..Default::default()
    }
}

pub(crate) fn current() -> Vec<LedgerEntry> {
    let entry = |env: &str, action: &str, image: &str| LedgerEntry {
        action: action.into(),
        environment: env.into(),
        digest: DIGEST.into(),
        image: image.into(),
        at: "2026-11-25T06:15:58Z".into(),
        run_id: "20261125-061500-ab12".into(),
        by: "ci".into(),
        ..Default::default()
    };
    vec![
        entry("dev", "verified", &format!("127.0.0.1:40100/models-dev/weather@{DIGEST}")),
        entry("prod", "promoted", &format!("127.0.0.1:40123/models-prod/weather@{DIGEST}")),
    ]
}

#[test]
fn facts_come_from_the_stage_outputs() {
    let run = record();
    let c = checks(&run.stages);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].stage, "check");
    assert_eq!(c[0].report.load.as_ref().unwrap().p95_ms, Some(34.8));
    let p = promotions(&run.stages);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].environment.as_str(), p[0].digest.as_str()), ("prod", DIGEST));
    assert_eq!(p[0].previous_digest, None);
}

#[test]
fn markdown_report() {
    insta::assert_snapshot!(render(&record(), &current(), Format::Markdown).unwrap());
}

#[test]
fn html_report() {
    insta::assert_snapshot!(render(&record(), &current(), Format::Html).unwrap());
}

/// A case name is user input: it must not become markup in the page or
/// break a Markdown table.
#[test]
fn user_text_is_escaped() {
    let mut run = record();
    let mut r = check_report();
    r.cases[0].name = "<script>x</script> | y".into();
    run.stages[3].outputs.insert("report".into(), serde_json::to_value(r).unwrap());
    let html = render(&run, &[], Format::Html).unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("&lt;script&gt;x&lt;/script&gt; | y"));
    assert!(!html.contains("<script"));
    let md = render(&run, &[], Format::Markdown).unwrap();
    assert!(md.contains("<script>x</script> \\| y"), "{md}");
    assert!(md.contains("The promotion ledger has no entries"));
}

#[test]
fn the_slo_line_sits_at_the_limit_and_a_bar_over_it_is_marked() {
    let mut r = check_report();
    let l = r.load.as_mut().unwrap();
    l.p95_ms = Some(300.0);
    l.p99_ms = Some(320.0);
    l.max_ms = Some(330.0);
    let chart = latency_chart(r.load.as_ref().unwrap(), &r.slo);
    let slo = chart.slo.unwrap();
    // 250 of a 330 * 1.1 scale over the 440 px plot, after the labels.
    let expected = f64::from(LABEL_WIDTH) + 250.0 / (330.0 * 1.1) * f64::from(CHART_WIDTH - LABEL_WIDTH - 80);
    assert_eq!(slo.x, px(expected));
    let classes: Vec<&str> = chart.bars.iter().map(|b| b.class.as_str()).collect();
    assert_eq!(classes, ["ok", "bad", "bad", "ok"]);
    assert_eq!(limit_ms("<= 1.5s"), Some(1500.0));
    assert_eq!(limit_ms(">= 10 req/s"), None);
}

#[test]
fn a_failed_check_shows_its_checkpointed_report() {
    let mut run = record();
    let check = &mut run.stages[3];
    check.status = Status::Failed;
    let report = check.outputs.remove("report").unwrap();
    check.outputs.clear();
    check.checkpoints.insert("report".into(), report);
    assert_eq!(checks(&run.stages).len(), 1);
}

#[test]
fn a_failed_run_names_the_stage_and_its_error_and_promotes_nothing() {
    let mut run = record();
    run.status = Status::Failed;
    let promote = &mut run.stages[4];
    promote.status = Status::Failed;
    promote.outputs.clear();
    promote.error = Some("cannot reach registry 127.0.0.1:1".into());
    let md = render(&run, &[], Format::Markdown).unwrap();
    assert!(md.contains("**failed** · model `weather`"), "{md}");
    assert!(md.contains("\n**promote** failed: cannot reach registry 127.0.0.1:1\n"), "{md}");
    assert!(!md.contains("## Promoted"), "{md}");
    let html = render(&run, &[], Format::Html).unwrap();
    assert!(html.contains(r#"<td colspan="5" class="failed">cannot reach registry 127.0.0.1:1</td>"#), "{html}");
    assert!(html.contains(r#"<rect class="bad""#), "{html}");
}
