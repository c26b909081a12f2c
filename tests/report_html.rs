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
        record(&store, RUN, env, action, DIGEST, "2026-11-25T07:00:04Z").await;
    }
}

/// One ledger entry of the weather model.
async fn record(store: &DirStore, run: &str, env: &str, action: &str, digest: &str, at: &str) {
    let entry = LedgerEntry {
        action: action.into(),
        environment: env.into(),
        digest: digest.into(),
        image: format!("127.0.0.1:40001/models-{env}/weather@{digest}"),
        at: at.into(),
        run_id: run.into(),
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

const OLD_RUN: &str = "20261124-180000-aa01";
const NEW_RUN: &str = "20261125-090000-bb02";

/// Two runs of the weather model with their lineage: the older one promoted
/// to prod first, the newer one with another model (so other digests), a
/// case that now fails and slower percentiles.
async fn seed_lineage(dir: &std::path::Path) -> [String; 3] {
    let store = DirStore::new(dir);
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let stage = |name: &str, uses: &str, outputs: serde_json::Value| StageRecord {
        name: name.into(),
        uses: uses.into(),
        status: Status::Succeeded,
        attempts: 1,
        duration_ms: Some(100),
        outputs: serde_json::from_value(outputs).unwrap(),
        ..Default::default()
    };
    let run = |id: &str, model: &str, context: &str, image: &str, build: &str, report: Report| RunRecord {
        run_id: id.into(),
        pipeline: "weather".into(),
        model: "weather".into(),
        pipeline_digest: "sha256:00".into(),
        status: Status::Succeeded,
        created: "2026-11-25T09:00:00Z".into(),
        updated: "2026-11-25T09:00:04Z".into(),
        stages: vec![
            stage(
                "fetch",
                "fetch-model",
                json!({"source": "s3://models/weather/", "contentDigest": model, "objects": [
                    {"path": "weather.json", "url": "s3://models/weather/weather.json", "key": "weather/weather.json",
                     "size": 263, "sha256": "c".repeat(64), "versionId": format!("v-{id}"), "etag": format!("etag-{id}")}]}),
            ),
            stage("render", "render", json!({"contextDigest": context, "modelDigest": model})),
            stage(
                "build",
                "openshift-build",
                json!({"buildName": build, "namespace": "models-dev", "imageDigest": image,
                    "image": format!("127.0.0.1:40001/models-dev/weather@{image}")}),
            ),
            stage("check", "prediction-check", json!({"passed": report.passed, "report": report})),
        ],
        ..Default::default()
    };
    let old = run(OLD_RUN, &digest('1'), &digest('2'), &digest('3'), "weather-1", report());
    let mut newer = report();
    newer.cases[0].passed = false;
    newer.passed = false;
    newer.load.as_mut().unwrap().p95_ms = Some(48.0);
    let (model, image) = (digest('4'), digest('6'));
    let new = run(NEW_RUN, &model, &digest('5'), &image, "weather-2", newer);
    store.create_run(&old).await.unwrap();
    store.create_run(&new).await.unwrap();
    for (run, env, action, image) in
        [(OLD_RUN, "prod", "promoted", digest('3')), (NEW_RUN, "dev", "verified", image.clone())]
    {
        record(&store, run, env, action, &image, "2026-11-25T09:00:04Z").await;
    }
    [model, digest('1'), image]
}

/// The lineage chain and `--since prod` (the run promoted there before) as
/// headless Chromium renders them.
#[tokio::test]
async fn html_report_shows_the_lineage_and_what_changed_since_prod_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let [model, old_model, image] = seed_lineage(&state).await;
    let page = dir.path().join("report.html");
    let out = modelship(&[
        "report",
        NEW_RUN,
        "--state-dir",
        state.to_str().unwrap(),
        "--format",
        "html",
        "--since",
        "prod",
        "--out",
        page.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let dom = support::chromium::rendered_dom(&page);
    let text =
        |marker: &str| support::chromium::text_of(&dom, marker).unwrap_or_else(|| panic!("no {marker} in\n{dom}"));
    assert_eq!(text("class=\"lineage-source\""), "s3://models/weather/");
    assert_eq!(text("class=\"lineage-model-digest\""), model);
    assert_eq!(text("class=\"lineage-context-digest\""), format!("sha256:{}", "5".repeat(64)));
    assert_eq!(text("class=\"lineage-build\""), "weather-2");
    assert_eq!(text("class=\"lineage-build-namespace\""), "models-dev");
    assert_eq!(text("class=\"lineage-image\""), format!("127.0.0.1:40001/models-dev/weather@{image}"));
    assert!(text("class=\"lineage-environments\"").starts_with("dev (verified "), "{dom}");
    assert_eq!(text("class=\"version-id\""), format!("v-{NEW_RUN}"));
    assert_eq!(text("class=\"etag\""), format!("etag-{NEW_RUN}"));

    assert_eq!(text("id=\"compare\""), format!("Compared with run {OLD_RUN}, last promoted to prod"));
    assert_eq!(text("data-what=\"model digest\""), format!("model digest{model}{old_model}changed"));
    assert!(dom.contains("<tr data-what=\"model digest\" class=\"changed\">"), "{dom}");
    assert!(dom.contains("<tr data-what=\"source\">"), "an unchanged source is not marked: {dom}");
    assert_eq!(text("data-case=\"check/seed request\""), "checkseed requestFAILpasschanged21.4ms21.4ms");
    assert!(dom.contains("<tr data-case=\"check/seed request\" class=\"changed\">"), "{dom}");
    assert_eq!(text("data-latency=\"check p95\""), "checkp9548.0ms37.8ms+10.2ms");
    // Four digests (model, context, Build aside, image) and one case.
    assert_eq!(text("id=\"compare-changed\""), "4");
}
