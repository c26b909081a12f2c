use serde_json::json;

use super::*;
use crate::checks::{CaseReport, CheckReport, LoadReport, SloVerdict};

const DIGEST: &str = "sha256:4f0c5b2e8a1d3c7b9e6f0a2d4c8b1e3f5a7c9d0b2e4f6a8c0d1e3f5a7b9c2d4e";
const MODEL: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const CONTEXT: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

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
            stage(
                "fetch",
                "fetch-model",
                "2026-11-25T06:15:00.100Z",
                127,
                json!({"source": "s3://models/weather/", "modelDir": "/ws/fetch/model", "contentDigest": MODEL,
                    "objects": [{"path": "MyModel.py", "url": "s3://models/weather/MyModel.py", "key": "weather/MyModel.py",
                        "size": 2031, "sha256": "ab".repeat(32), "versionId": "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY", "etag": "9b2cf535f27731c974343645a3985328"}]}),
            ),
            stage(
                "render",
                "render",
                "2026-11-25T06:15:00.250Z",
                40,
                json!({"contextDir": "/ws/render/context", "contextDigest": CONTEXT, "modelDigest": MODEL}),
            ),
            stage(
                "build",
                "openshift-build",
                "2026-11-25T06:15:00.300Z",
                1200,
                json!({"buildName": "weather-2", "namespace": "models-dev", "image": dev, "imageDigest": DIGEST}),
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

/// The run a comparison looks back at: another model (so other context and
/// image digests), one case failing, slower under load.
fn earlier() -> RunRecord {
    let mut run = record();
    run.run_id = "20261124-220000-zz01".into();
    let old = "sha256:3333333333333333333333333333333333333333333333333333333333333333";
    run.stages[0].outputs.insert("contentDigest".into(), json!(old));
    run.stages[1].outputs.insert("modelDigest".into(), json!(old));
    run.stages[1].outputs.insert("contextDigest".into(), json!(old.replace('3', "4")));
    run.stages[2].outputs.insert("buildName".into(), json!("weather-1"));
    run.stages[2].outputs.insert("imageDigest".into(), json!(old.replace('3', "5")));
    let mut r = check_report();
    r.cases[1].passed = false;
    r.passed = false;
    r.load.as_mut().unwrap().p95_ms = Some(40.0);
    run.stages[4].outputs.insert("report".into(), serde_json::to_value(r).unwrap());
    run
}

#[test]
fn markdown_report() {
    let history = current();
    let extras = Extras { history: &history, compare: None };
    insta::assert_snapshot!(render_with(&record(), &current(), &extras, Format::Markdown).unwrap());
}

#[test]
fn html_report() {
    let (history, other) = (current(), earlier());
    let extras = Extras { history: &history, compare: Some(Baseline { run: &other, since: Some("prod") }) };
    insta::assert_snapshot!(render_with(&record(), &current(), &extras, Format::Html).unwrap());
}

#[test]
fn the_lineage_links_source_to_environments() {
    let l = Lineage::of(&record(), &current());
    assert_eq!(l.source.as_deref(), Some("s3://models/weather/"));
    assert_eq!(l.objects[0].version_id.as_deref(), Some("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"));
    assert_eq!((l.model_digest.as_deref(), l.context_digest.as_deref()), (Some(MODEL), Some(CONTEXT)));
    assert_eq!(l.build, Some(BuildRef { name: "weather-2".into(), namespace: "models-dev".into() }));
    assert_eq!(l.image_digest.as_deref(), Some(DIGEST));
    let envs: Vec<(&str, &str)> = l.environments.iter().map(|p| (p.environment.as_str(), p.action.as_str())).collect();
    assert_eq!(envs, [("dev", "verified"), ("prod", "promoted")]);
    // Another run's entries are not this run's placements.
    assert!(Lineage::of(&earlier(), &current()).environments.is_empty());
    // A run that never fetched or built shows no lineage section at all.
    let mut bare = record();
    bare.stages.retain(|s| s.uses == "prediction-check");
    let md = render(&bare, &[], Format::Markdown).unwrap();
    assert!(!md.contains("## Lineage"), "{md}");
}

#[test]
fn markdown_comparison_names_what_changed() {
    let other = earlier();
    let extras = Extras { history: &[], compare: Some(Baseline { run: &other, since: None }) };
    let md = render_with(&record(), &current(), &extras, Format::Markdown).unwrap();
    insta::assert_snapshot!(&md[md.find("## Compared with").unwrap()..]);
    let c = Comparison::of(&record(), &Baseline { run: &other, since: None });
    let changed: Vec<&str> = c.digests.iter().filter(|d| d.changed).map(|d| d.what.as_str()).collect();
    assert_eq!(changed, ["model digest", "context digest", "Build", "image digest"]);
    let flipped: Vec<&str> = c.cases.iter().filter(|k| k.changed).map(|k| k.case.as_str()).collect();
    assert_eq!(flipped, ["not an integer"]);
    assert_eq!((c.cases[1].now.as_str(), c.cases[1].before.as_str()), ("pass", "FAIL"));
    assert_eq!(c.changed, 4);
    let p95 = c.latency.iter().find(|l| l.percentile == "p95").unwrap();
    assert_eq!((p95.now.as_str(), p95.before.as_str(), p95.delta.as_str()), ("34.8ms", "40.0ms", "-5.2ms"));
    // The same run against itself: nothing changed.
    let same = record();
    let c = Comparison::of(&record(), &Baseline { run: &same, since: None });
    assert_eq!(c.changed, 0);
    assert!(c.digests.iter().all(|d| !d.changed) && c.cases.iter().all(|k| !k.changed));
}

#[test]
fn since_picks_the_newest_other_run_put_into_the_environment() {
    let entry = |action: &str, env: &str, run: &str| LedgerEntry {
        action: action.into(),
        environment: env.into(),
        run_id: run.into(),
        digest: format!("sha256:{run}"),
        ..Default::default()
    };
    let history = [
        entry("promoted", "prod", "r1"),
        entry("verified", "dev", "r2"),
        entry("rolled-back", "prod", "r0"),
        entry("promoted", "prod", "r3"),
    ];
    assert_eq!(since_candidates(&history, "prod", "r4").first(), Some(&"r3"));
    assert_eq!(since_candidates(&history, "prod", "r3").first(), Some(&"r1"));
    assert_eq!(since_candidates(&history, "dev", "r4").first(), Some(&"r2"));
    assert!(since_candidates(&history, "qa", "r4").is_empty());
}

#[test]
fn since_a_promotion_by_hand_stands_for_the_run_that_verified_its_digest() {
    let entry = |action: &str, env: &str, run: &str, digest: &str| LedgerEntry {
        action: action.into(),
        environment: env.into(),
        run_id: run.into(),
        digest: digest.into(),
        ..Default::default()
    };
    let history = [
        entry("verified", "dev", "r1", "sha256:a"),
        entry("verified", "dev", "r2", "sha256:b"),
        entry("promoted", "prod", "promote-20261202-1", "sha256:a"),
    ];
    assert_eq!(since_candidates(&history, "prod", "r2"), ["promote-20261202-1", "r1"]);
}

/// A case name is user input: it must not become markup in the page or
/// break a Markdown table.
#[test]
fn user_text_is_escaped() {
    let mut run = record();
    let mut r = check_report();
    r.cases[0].name = "<script>x</script> | y".into();
    run.stages[4].outputs.insert("report".into(), serde_json::to_value(r).unwrap());
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
    let check = &mut run.stages[4];
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
    let promote = &mut run.stages[5];
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
