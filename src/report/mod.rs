//! What a run found, for people: the facts the end-of-run summary prints
//! (checks, load percentiles against the SLO, the promoted digest) and the
//! `modelship report` page (Markdown or a static HTML file with inline SVG
//! charts: no script, no network).
//!
//! Everything is read from the run record's stage outputs (`prediction-check`
//! writes its `report`, `promote` its `image`/`digest`/`environment`,
//! fetch-model, render and openshift-build the [`Lineage`]) and from the
//! promotion ledger; nothing here talks to a cluster. A report may compare
//! the run with another ([`Comparison`]).

mod compare;
mod lineage;

pub use compare::{Baseline, CaseChange, Change, Comparison, LatencyChange};
pub use lineage::{BuildRef, Lineage, Placement, since_candidates};

use serde::Serialize;
use serde_json::Value;

use crate::checks::{LoadReport, Report, SloVerdict, format_ms};
use crate::state::{LedgerEntry, RunRecord, StageRecord, Status};
use crate::template::{self, TemplateError};

const MD_TEMPLATE: &str = include_str!("report.md.hbs");
const HTML_TEMPLATE: &str = include_str!("report.html.hbs");

/// A check stage's result, parsed back from its `report` output.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub stage: String,
    pub report: Report,
}

/// A promote stage's result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    pub stage: String,
    pub environment: String,
    /// Where the image is now: the target registry's reference, by digest.
    pub image: String,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    /// `signed+verified`, `signed` (carried, the target does not verify) or `unsigned`.
    pub provenance: String,
}

/// Check reports of the succeeded or failed check stages, in stage order. A
/// failed check saves its report as a checkpoint, so it is shown too.
pub fn checks(stages: &[StageRecord]) -> Vec<CheckResult> {
    stages
        .iter()
        .filter(|s| s.uses == "prediction-check")
        .filter_map(|s| {
            let raw = s.outputs.get("report").or_else(|| s.checkpoints.get("report"))?;
            let report = serde_json::from_value::<Report>(raw.clone()).ok()?;
            Some(CheckResult { stage: s.name.clone(), report })
        })
        .collect()
}

/// Digests the run's succeeded promote stages moved.
pub fn promotions(stages: &[StageRecord]) -> Vec<Promotion> {
    stages
        .iter()
        .filter(|s| s.uses == "promote" && s.status == Status::Succeeded)
        .filter_map(|s| {
            let text = |k: &str| s.outputs.get(k).and_then(Value::as_str).map(str::to_string);
            Some(Promotion {
                stage: s.name.clone(),
                environment: text("environment")?,
                image: text("image")?,
                digest: text("digest")?,
                previous_digest: text("previousDigest"),
                provenance: match (text("signatureDigest"), s.outputs.get("signatureVerified")) {
                    (Some(_), Some(Value::Bool(true))) => "signed+verified".into(),
                    (Some(_), _) => "signed".into(),
                    (None, _) => "unsigned".into(),
                },
            })
        })
        .collect()
}

/// Milliseconds for a stage or run: `850ms`, `1.2s`, `1m 5s`; `-` unknown.
pub fn duration_text(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string(),
    }
}

/// The value a check found, short enough for a table cell.
pub fn actual_text(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

/// The `--format` of `modelship report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Html,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("rendering the {format} report: {source}")]
    Template {
        format: &'static str,
        #[source]
        source: TemplateError,
    },
}

impl crate::error::HasExitClass for ReportError {
    fn exit_class(&self) -> crate::error::ExitClass {
        // The templates are embedded: a failure to render them is a bug.
        crate::error::ExitClass::Internal
    }
}

/// What a report may show beside the run and the current digests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// Ledger entries of the model in any environment, oldest first: where
    /// the run's image went.
    pub history: &'a [LedgerEntry],
    /// The run to compare with.
    pub compare: Option<Baseline<'a>>,
}

/// Render the report of `run`; `current` is the promotion ledger's current
/// entry of each environment.
pub fn render(run: &RunRecord, current: &[LedgerEntry], format: Format) -> Result<String, ReportError> {
    render_with(run, current, &Extras::default(), format)
}

/// [`render`] with the run's placements from the ledger history and,
/// optionally, a comparison with another run.
pub fn render_with(
    run: &RunRecord,
    current: &[LedgerEntry],
    extras: &Extras<'_>,
    format: Format,
) -> Result<String, ReportError> {
    let mut view = View::new(run, current);
    view.lineage = lineage_view(&Lineage::of(run, extras.history));
    view.compare = extras.compare.as_ref().map(|b| Comparison::of(run, b));
    match format {
        Format::Markdown => {
            let mut data = serde_json::to_value(&view).unwrap_or(Value::Null);
            md_escape(&mut data);
            template::render(MD_TEMPLATE, &data, "report.md.hbs")
                .map_err(|source| ReportError::Template { format: "md", source })
        }
        Format::Html => template::render_html(HTML_TEMPLATE, &view, "report.html.hbs")
            .map_err(|source| ReportError::Template { format: "html", source }),
    }
}

/// Table cells must not break a Markdown table.
fn md_escape(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.replace('|', "\\|").replace('\n', " "),
        Value::Array(a) => a.iter_mut().for_each(md_escape),
        Value::Object(o) => o.values_mut().for_each(md_escape),
        _ => {}
    }
}

/// Everything the templates show, precomputed (handlebars does no arithmetic).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct View {
    run_id: String,
    pipeline: String,
    model: String,
    status: String,
    succeeded: bool,
    created: String,
    updated: String,
    duration: String,
    labels: Vec<Pair>,
    params: Vec<Pair>,
    stages: Vec<StageRow>,
    timeline: Timeline,
    checks: Vec<CheckView>,
    promotions: Vec<Promotion>,
    environments: Vec<EnvRow>,
    lineage: Option<LineageView>,
    compare: Option<Comparison>,
}

/// [`Lineage`] as table text; `None` when the run produced none of it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LineageView {
    source: String,
    objects: Vec<ObjectRow>,
    model_digest: String,
    context_digest: String,
    build_name: String,
    build_namespace: String,
    image: String,
    image_digest: String,
    environments: Vec<PlacementRow>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRow {
    path: String,
    key: String,
    size: u64,
    sha256: String,
    version_id: String,
    etag: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PlacementRow {
    environment: String,
    action: String,
    at: String,
}

fn lineage_view(l: &Lineage) -> Option<LineageView> {
    if *l == Lineage::default() {
        return None;
    }
    let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    Some(LineageView {
        source: text(&l.source),
        objects: l
            .objects
            .iter()
            .map(|o| ObjectRow {
                path: o.path.clone(),
                key: o.key.clone(),
                size: o.size,
                sha256: if o.sha256.is_empty() { "-".into() } else { o.sha256.clone() },
                version_id: o.version_id.clone().unwrap_or_else(|| "-".into()),
                etag: o.etag.clone().unwrap_or_else(|| "-".into()),
            })
            .collect(),
        model_digest: text(&l.model_digest),
        context_digest: text(&l.context_digest),
        build_name: l.build.as_ref().map_or_else(|| "-".into(), |b| b.name.clone()),
        build_namespace: l.build.as_ref().map_or_else(|| "-".into(), |b| b.namespace.clone()),
        image: text(&l.image),
        image_digest: text(&l.image_digest),
        environments: l
            .environments
            .iter()
            .map(|p| PlacementRow {
                environment: p.environment.clone(),
                action: p.action.clone(),
                at: crate::timestamp::display_text(&p.at),
            })
            .collect(),
    })
}

#[derive(Debug, Serialize)]
struct Pair {
    key: String,
    value: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StageRow {
    name: String,
    uses: String,
    status: String,
    ok: bool,
    attempts: u32,
    started: String,
    duration: String,
    error: Option<String>,
}

/// A Gantt chart of the stages: one bar per stage at its start offset.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Timeline {
    width: u32,
    height: u32,
    label_width: u32,
    axis_y: u32,
    total: String,
    bars: Vec<Bar>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Bar {
    label: String,
    value: String,
    x: String,
    y: u32,
    w: String,
    text_x: String,
    text_y: u32,
    class: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckView {
    stage: String,
    environment: String,
    endpoint: String,
    protocol: String,
    passed: bool,
    result: String,
    cases: Vec<CaseRow>,
    load: Option<LoadView>,
    slo: Vec<SloRow>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CaseRow {
    name: String,
    passed: bool,
    result: String,
    status: String,
    latency: String,
    /// `path expect` for each check, `; `-joined.
    expected: String,
    /// What was found at each path.
    actual: String,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadView {
    request: String,
    requests: u64,
    concurrency: u32,
    succeeded: u64,
    failed: u64,
    error_rate: String,
    throughput: String,
    duration: String,
    p50: String,
    p95: String,
    p99: String,
    max: String,
    chart: LatencyChart,
}

/// Horizontal bars for p50/p95/p99/max, with the latency SLO as a line.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LatencyChart {
    width: u32,
    height: u32,
    label_width: u32,
    bars: Vec<Bar>,
    slo: Option<SloLine>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SloLine {
    x: String,
    label: String,
    text_x: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SloRow {
    objective: String,
    limit: String,
    actual: String,
    passed: bool,
    result: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EnvRow {
    environment: String,
    action: String,
    digest: String,
    image: String,
    run_id: String,
    this_run: bool,
    at: String,
    by: String,
}

const CHART_WIDTH: u32 = 640;
const LABEL_WIDTH: u32 = 120;
const ROW: u32 = 26;

fn pass_fail(ok: bool) -> String {
    if ok { "pass" } else { "FAIL" }.into()
}

fn px(v: f64) -> String {
    format!("{v:.1}")
}

fn ms_since(from: &str, to: &str) -> Option<f64> {
    let (a, b) = (from.parse::<jiff::Timestamp>().ok()?, to.parse::<jiff::Timestamp>().ok()?);
    Some(b.duration_since(a).as_secs_f64() * 1000.0)
}

impl View {
    fn new(run: &RunRecord, current: &[LedgerEntry]) -> View {
        let stages = run
            .stages
            .iter()
            .map(|s| StageRow {
                name: s.name.clone(),
                uses: s.uses.clone(),
                status: s.status.to_string(),
                ok: matches!(s.status, Status::Succeeded | Status::Skipped),
                attempts: s.attempts,
                started: s.started.as_deref().map_or_else(|| "-".into(), crate::timestamp::log_line_text),
                duration: duration_text(s.duration_ms),
                error: s.error.clone(),
            })
            .collect();
        let duration = ms_since(&run.created, &run.updated)
            .map_or_else(|| "-".into(), |ms| duration_text(Some(ms.max(0.0) as u64)));
        let pairs = |m: &std::collections::BTreeMap<String, String>| {
            m.iter().map(|(k, v)| Pair { key: k.clone(), value: v.clone() }).collect()
        };
        View {
            run_id: run.run_id.clone(),
            pipeline: run.pipeline.clone(),
            model: run.model.clone(),
            status: run.status.to_string(),
            succeeded: run.status == Status::Succeeded,
            created: crate::timestamp::display_text(&run.created),
            updated: crate::timestamp::display_text(&run.updated),
            duration,
            labels: pairs(&run.labels),
            params: pairs(&run.params),
            stages,
            timeline: timeline(run),
            checks: checks(&run.stages).into_iter().map(check_view).collect(),
            promotions: promotions(&run.stages),
            environments: current
                .iter()
                .map(|e| EnvRow {
                    environment: e.environment.clone(),
                    action: e.action.clone(),
                    digest: e.digest.clone(),
                    image: e.image.clone(),
                    run_id: e.run_id.clone(),
                    this_run: e.run_id == run.run_id,
                    at: crate::timestamp::display_text(&e.at),
                    by: e.by.clone(),
                })
                .collect(),
            lineage: None,
            compare: None,
        }
    }
}

fn timeline(run: &RunRecord) -> Timeline {
    // Offsets from the run's start; a stage without a start time (never
    // started, or skipped) follows the previous one with no width.
    let mut spans = Vec::new();
    let mut cursor = 0.0f64;
    for s in &run.stages {
        let start = s.started.as_deref().and_then(|t| ms_since(&run.created, t)).unwrap_or(cursor).max(0.0);
        let len = s.duration_ms.map(|d| d as f64).unwrap_or(0.0);
        cursor = start + len;
        spans.push((s, start, len));
    }
    let total = spans.iter().map(|(_, a, l)| a + l).fold(0.0, f64::max).max(1.0);
    let plot = f64::from(CHART_WIDTH - LABEL_WIDTH - 80);
    let bars = spans
        .iter()
        .enumerate()
        .map(|(i, (s, start, len))| {
            let x = f64::from(LABEL_WIDTH) + start / total * plot;
            // Visible even when a stage took a millisecond.
            let w = (len / total * plot).max(2.0);
            Bar {
                label: s.name.clone(),
                value: duration_text(s.duration_ms),
                x: px(x),
                y: i as u32 * ROW + 4,
                w: px(w),
                text_x: px(x + w + 6.0),
                text_y: i as u32 * ROW + 19,
                class: match s.status {
                    Status::Succeeded => "ok",
                    Status::Skipped => "skip",
                    _ => "bad",
                }
                .into(),
            }
        })
        .collect::<Vec<_>>();
    let height = bars.len() as u32 * ROW + 24;
    Timeline {
        width: CHART_WIDTH,
        height,
        label_width: LABEL_WIDTH,
        axis_y: height - 16,
        total: duration_text(Some(total as u64)),
        bars,
    }
}

fn check_view(c: CheckResult) -> CheckView {
    let r = c.report;
    let cases = r
        .cases
        .iter()
        .map(|k| CaseRow {
            name: k.name.clone(),
            passed: k.passed,
            result: pass_fail(k.passed),
            status: k.status.map_or_else(|| "-".into(), |s| s.to_string()),
            latency: format_ms(k.latency_ms),
            expected: k.checks.iter().map(|ch| format!("{} {}", ch.path, ch.expect)).collect::<Vec<_>>().join("; "),
            actual: k.checks.iter().map(|ch| actual_text(ch.actual.as_ref())).collect::<Vec<_>>().join("; "),
            error: k.error.clone(),
        })
        .collect();
    let load = r.load.as_ref().map(|l| {
        let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), format_ms);
        LoadView {
            request: l.request.clone(),
            requests: l.requests,
            concurrency: l.concurrency,
            succeeded: l.succeeded,
            failed: l.failed,
            error_rate: format!("{:.2}%", l.error_rate * 100.0),
            throughput: format!("{:.1} req/s", l.throughput),
            duration: format_ms(l.duration_ms),
            p50: opt(l.p50_ms),
            p95: opt(l.p95_ms),
            p99: opt(l.p99_ms),
            max: opt(l.max_ms),
            chart: latency_chart(l, &r.slo),
        }
    });
    CheckView {
        stage: c.stage,
        environment: r.environment.clone().unwrap_or_default(),
        endpoint: r.endpoint.clone(),
        protocol: r.protocol.clone(),
        passed: r.passed,
        result: pass_fail(r.passed),
        cases,
        load,
        slo: r
            .slo
            .iter()
            .map(|s| SloRow {
                objective: s.objective.clone(),
                limit: s.limit.clone(),
                actual: s.actual.clone(),
                passed: s.passed,
                result: pass_fail(s.passed),
            })
            .collect(),
    }
}

/// The latency limit of a verdict like `<= 250ms`, in milliseconds.
fn limit_ms(limit: &str) -> Option<f64> {
    let text = limit.strip_prefix("<=")?.trim();
    humantime::parse_duration(text).ok().map(|d| d.as_secs_f64() * 1000.0)
}

fn latency_chart(l: &LoadReport, slo: &[SloVerdict]) -> LatencyChart {
    let values: Vec<(&str, f64)> = [("p50", l.p50_ms), ("p95", l.p95_ms), ("p99", l.p99_ms), ("max", l.max_ms)]
        .into_iter()
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect();
    // The line is the tightest latency objective; p95 when several.
    let line = slo
        .iter()
        .filter(|s| matches!(s.objective.as_str(), "p50" | "p95" | "p99"))
        .filter_map(|s| limit_ms(&s.limit).map(|ms| (s, ms)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let top = values.iter().map(|(_, v)| *v).chain(line.map(|(_, ms)| ms)).fold(0.0, f64::max).max(0.001) * 1.1;
    let plot = f64::from(CHART_WIDTH - LABEL_WIDTH - 80);
    let bars: Vec<Bar> = values
        .iter()
        .enumerate()
        .map(|(i, (name, v))| {
            let w = (v / top * plot).max(2.0);
            Bar {
                label: (*name).into(),
                value: format_ms(*v),
                x: px(f64::from(LABEL_WIDTH)),
                y: i as u32 * ROW + 4,
                w: px(w),
                text_x: px(f64::from(LABEL_WIDTH) + w + 6.0),
                text_y: i as u32 * ROW + 19,
                class: match line {
                    Some((_, ms)) if *v > ms && *name != "max" => "bad",
                    _ => "ok",
                }
                .into(),
            }
        })
        .collect();
    let height = bars.len() as u32 * ROW + 24;
    LatencyChart {
        width: CHART_WIDTH,
        height,
        label_width: LABEL_WIDTH,
        bars,
        slo: line.map(|(s, ms)| {
            let x = f64::from(LABEL_WIDTH) + ms / top * plot;
            SloLine { x: px(x), label: format!("SLO {} {}", s.objective, s.limit), text_x: px(x - 4.0) }
        }),
    }
}

#[cfg(test)]
mod tests;
