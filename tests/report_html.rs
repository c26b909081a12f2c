//! `modelship report` from a directory state store, and its HTML page as
//! headless Chromium renders it.

mod support;

use std::process::Command;

use modelship::checks::{CaseReport, CheckReport, LoadReport, Report, SloVerdict};
use modelship::state::dir::DirStore;
use modelship::state::{LedgerEntry, RunRecord, StageRecord, StateStore, Status};
use serde_json::json;

const RUN: &str = "20261125-070000-qz9k";
const DIGEST: &str = "sha256:9a1f0e3d5c7b2a4f6e8d0c1b3a5f7e9d2c4b6a8f0e1d3c5b7a9f2e4d6c8b0a1f";

fn report() -> Report {
    let case = |name: &str, value: &str, latency_ms: f64| CaseReport {
        name: name.into(),
        passed: true,
        status: Some(200),
        expected_status: 200,
        latency_ms,
        checks: vec![CheckReport {
            path: "meta.tags.weather_state".into(),
            expect: format!("= {value:?}"),
            passed: true,
            actual: Some(json!(value)),
            diff: None,
        }],
        error: None,
        response: None,
    };
    Report {
        endpoint: "http://127.0.0.1:40000/api/v1.0/predictions".into(),
        protocol: "seldon".into(),
        environment: Some("dev".into()),
        passed: true,
        cases: vec![case("seed request", "mild", 21.4), case("freezing <20°F>", "cold", 9.7)],
        load: Some(LoadReport {
            request: "seed request".into(),
            requests: 200,
            concurrency: 8,
            succeeded: 200,
            failed: 0,
            error_rate: 0.0,
            p50_ms: Some(12.5),
            p95_ms: Some(37.8),
            p99_ms: Some(42.9),
            max_ms: Some(45.1),
            throughput: 460.0,
            duration_ms: 434.0,
            errors: vec![],
        }),
        slo: vec![SloVerdict {
            objective: "p95".into(),
            limit: "<= 250ms".into(),
            actual: "37.8ms".into(),
            passed: true,
        }],
    }
}

async fn seed(dir: &std::path::Path) {
    let store = DirStore::new(dir);
    let stage = |name: &str, uses: &str, ms: u64, outputs: serde_json::Value| StageRecord {
        name: name.into(),
        uses: uses.into(),
        status: Status::Succeeded,
        attempts: 1,
        duration_ms: Some(ms),
        outputs: serde_json::from_value(outputs).unwrap(),
        ..Default::default()
    };
    let prod_image = format!("127.0.0.1:40001/models-prod/weather@{DIGEST}");
    let run = RunRecord {
        run_id: RUN.into(),
        pipeline: "weather".into(),
        model: "weather".into(),
        pipeline_digest: "sha256:00".into(),
        status: Status::Succeeded,
        created: "2026-11-25T07:00:00Z".into(),
        updated: "2026-11-25T07:00:04Z".into(),
        stages: vec![
            stage("build", "openshift-build", 1114, json!({"imageDigest": DIGEST})),
            stage("check", "prediction-check", 434, json!({"passed": true, "report": report()})),
            stage("promote", "promote", 186, json!({"image": prod_image, "digest": DIGEST, "environment": "prod"})),
        ],
        ..Default::default()
    };
    store.create_run(&run).await.unwrap();
    for (env, action) in [("dev", "verified"), ("prod", "promoted")] {
        let entry = LedgerEntry {
            action: action.into(),
            environment: env.into(),
            digest: DIGEST.into(),
            image: format!("127.0.0.1:40001/models-{env}/weather@{DIGEST}"),
            at: "2026-11-25T07:00:04Z".into(),
            run_id: RUN.into(),
            by: "ci".into(),
            ..Default::default()
        };
        store
            .update_ledger("weather", &mut |l| {
                l.record(entry.clone());
                Ok(())
            })
            .await
            .unwrap();
    }
}

fn modelship(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_modelship")).args(args).output().unwrap()
}

#[tokio::test]
async fn html_report_renders_the_runs_numbers_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    seed(&state).await;
    let page = dir.path().join("report.html");
    let out = modelship(&[
        "report",
        RUN,
        "--state-dir",
        state.to_str().unwrap(),
        "--format",
        "html",
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dom = support::chromium::rendered_dom(&page);
    let text =
        |marker: &str| support::chromium::text_of(&dom, marker).unwrap_or_else(|| panic!("no {marker} in\n{dom}"));
    assert_eq!(text("id=\"run-id\""), RUN);
    assert_eq!(text("id=\"run-status\""), "succeeded");
    assert_eq!(text("class=\"num p50\""), "12.5ms");
    assert_eq!(text("class=\"num p95\""), "37.8ms");
    assert_eq!(text("class=\"num p99\""), "42.9ms");
    // A case name with markup characters arrives as text, not as elements.
    assert!(dom.contains("<td class=\"case-name\">freezing &lt;20°F&gt;</td>"), "{dom}");
    assert_eq!(text("class=\"case-name\""), "seed request");
    let envs = text("id=\"environments\"");
    assert!(envs.contains(&format!("dev{DIGEST}verified")), "{envs}");
    assert!(envs.contains(&format!("prod{DIGEST}promoted")), "{envs}");
    // Both charts were parsed as SVG with one bar per stage / percentile.
    let timeline = &dom[dom.find("id=\"timeline\"").unwrap()..];
    assert_eq!(timeline[..timeline.find("</svg>").unwrap()].matches("<rect").count(), 3);
    let chart = &dom[dom.find("class=\"latency-chart\"").unwrap()..];
    let chart = &chart[..chart.find("</svg>").unwrap()];
    assert_eq!(chart.matches("<rect").count(), 4);
    assert!(chart.contains("SLO p95 &lt;= 250ms"), "{chart}");
}

#[tokio::test]
async fn markdown_report_goes_to_stdout_and_an_unknown_run_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    seed(dir.path()).await;
    let state = dir.path().to_str().unwrap();
    let out = modelship(&["report", RUN, "--state-dir", state]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.starts_with(&format!("# Run {RUN} of weather\n")), "{md}");
    assert!(md.contains("| 12.5ms | 37.8ms | 42.9ms | 45.1ms |"), "{md}");
    assert!(md.contains(&format!("| prod | `{DIGEST}` | promoted |")), "{md}");

    let out = modelship(&["report", "no-such-run", "--state-dir", state]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no run `no-such-run`"));
}
