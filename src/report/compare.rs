//! What changed between a run and another one (`report --compare RUN`, or
//! `--since ENV`: the run last promoted there): the lineage digests, each
//! check case's result and latency, the load percentiles.

use serde::Serialize;

use super::lineage::Lineage;
use super::{CheckResult, checks, pass_fail};
use crate::checks::format_ms;
use crate::state::RunRecord;

/// The run a report compares with, and why that one.
#[derive(Debug, Clone, Copy)]
pub struct Baseline<'a> {
    pub run: &'a RunRecord,
    /// How it was chosen, for the heading: `--compare` names it; `--since
    /// prod` says "last promoted to prod".
    pub since: Option<&'a str>,
}

/// Text ready for the templates; `-` where one side has no value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comparison {
    pub other_run: String,
    /// `run X`, or `run X, last promoted to ENV`.
    pub basis: String,
    pub digests: Vec<Change>,
    pub cases: Vec<CaseChange>,
    pub latency: Vec<LatencyChange>,
    /// How many digest rows and case results differ.
    pub changed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub what: String,
    /// This run's value.
    pub now: String,
    /// The other run's.
    pub before: String,
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseChange {
    pub check: String,
    pub case: String,
    /// `pass`, `FAIL`, or `-` when that run had no such case.
    pub now: String,
    pub before: String,
    pub changed: bool,
    pub now_latency: String,
    pub before_latency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyChange {
    pub check: String,
    /// `p50`, `p95`, `p99`, `max`.
    pub percentile: String,
    pub now: String,
    pub before: String,
    /// `+1.2ms`, `-0.4ms`, `0`; `-` when one side is missing.
    pub delta: String,
}

fn text(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

fn signed_ms(d: f64) -> String {
    match d {
        0.0 => "0".into(),
        d if d < 0.0 => format!("-{}", format_ms(-d)),
        d => format!("+{}", format_ms(d)),
    }
}

impl Comparison {
    pub fn of(this: &RunRecord, other: &Baseline<'_>) -> Comparison {
        let (a, b) = (Lineage::of(this, &[]), Lineage::of(other.run, &[]));
        let build = |l: &Lineage| l.build.as_ref().map(|b| format!("{} in {}", b.name, b.namespace));
        let digests: Vec<Change> = [
            ("source", a.source.clone(), b.source.clone()),
            ("model digest", a.model_digest.clone(), b.model_digest.clone()),
            ("context digest", a.context_digest.clone(), b.context_digest.clone()),
            ("Build", build(&a), build(&b)),
            ("image digest", a.image_digest.clone(), b.image_digest.clone()),
        ]
        .into_iter()
        .map(|(what, x, y)| Change { what: what.into(), changed: x != y, now: text(&x), before: text(&y) })
        .collect();
        let (ours, theirs) = (checks(&this.stages), checks(&other.run.stages));
        let cases = case_changes(&ours, &theirs);
        let latency = latency_changes(&ours, &theirs);
        // A Build name differs on every rebuild; what changed is what it built.
        let changed = digests.iter().filter(|c| c.changed && c.what != "Build").count()
            + cases.iter().filter(|c| c.changed).count();
        Comparison {
            other_run: other.run.run_id.clone(),
            basis: match other.since {
                Some(env) => format!("run {}, last promoted to {env}", other.run.run_id),
                None => format!("run {}", other.run.run_id),
            },
            digests,
            cases,
            latency,
            changed,
        }
    }
}

/// Cases by check stage and case name: this run's in order, then those only
/// the other run had.
fn case_changes(ours: &[CheckResult], theirs: &[CheckResult]) -> Vec<CaseChange> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for c in ours.iter().chain(theirs) {
        for k in &c.report.cases {
            let key = (c.stage.clone(), k.name.clone());
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let find = |results: &[CheckResult], stage: &str, case: &str| {
        results.iter().filter(|c| c.stage == stage).flat_map(|c| &c.report.cases).find(|k| k.name == case).cloned()
    };
    keys.into_iter()
        .map(|(stage, case)| {
            let (x, y) = (find(ours, &stage, &case), find(theirs, &stage, &case));
            let result = |k: &Option<crate::checks::CaseReport>| k.as_ref().map_or("-".into(), |k| pass_fail(k.passed));
            let latency =
                |k: &Option<crate::checks::CaseReport>| k.as_ref().map_or("-".into(), |k| format_ms(k.latency_ms));
            CaseChange {
                changed: result(&x) != result(&y),
                now: result(&x),
                before: result(&y),
                now_latency: latency(&x),
                before_latency: latency(&y),
                check: stage,
                case,
            }
        })
        .collect()
}

/// Load percentiles of each check stage either run measured under load.
fn latency_changes(ours: &[CheckResult], theirs: &[CheckResult]) -> Vec<LatencyChange> {
    let mut stages: Vec<&str> = Vec::new();
    for c in ours.iter().chain(theirs).filter(|c| c.report.load.is_some()) {
        if !stages.contains(&c.stage.as_str()) {
            stages.push(&c.stage);
        }
    }
    let load = |results: &[CheckResult], stage: &str| {
        results.iter().find(|c| c.stage == stage).and_then(|c| c.report.load.clone())
    };
    let mut out = Vec::new();
    for stage in stages {
        let (x, y) = (load(ours, stage), load(theirs, stage));
        for name in ["p50", "p95", "p99", "max"] {
            let pick = |l: &Option<crate::checks::LoadReport>| {
                l.as_ref().and_then(|l| match name {
                    "p50" => l.p50_ms,
                    "p95" => l.p95_ms,
                    "p99" => l.p99_ms,
                    _ => l.max_ms,
                })
            };
            let (a, b) = (pick(&x), pick(&y));
            out.push(LatencyChange {
                check: stage.to_string(),
                percentile: name.into(),
                now: a.map_or("-".into(), format_ms),
                before: b.map_or("-".into(), format_ms),
                delta: match (a, b) {
                    (Some(a), Some(b)) => signed_ms(a - b),
                    _ => "-".into(),
                },
            });
        }
    }
    out
}
