//! Prometheus text exposition (format 0.0.4), written by hand: a handful of
//! counters and one histogram do not justify a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use super::runner::RunOutcome;

/// Stage duration buckets, in seconds: builds and rollouts take minutes.
const BUCKETS: &[f64] = &[1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// (provider, result, reason) -> count
    deliveries: BTreeMap<(String, String, String), u64>,
    /// (pipeline, outcome) -> count; outcome: started | succeeded | failed | cancelled | superseded
    runs: BTreeMap<(String, &'static str), u64>,
    /// (pipeline, stage) -> histogram
    stages: BTreeMap<(String, String), Histogram>,
    /// (model, environment, result) -> count; result: promoted | failed
    promotions: BTreeMap<(String, String, &'static str), u64>,
    /// (model, gate) -> count
    gate_failures: BTreeMap<(String, String), u64>,
    /// (model, environment) -> count
    rollbacks: BTreeMap<(String, String), u64>,
    /// (model, environment) -> seconds from the push's arrival to the promotion
    push_to_promotion: BTreeMap<(String, String), Histogram>,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.counts[i] += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (le, n) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// The server's metrics. Gauges (queued, running) are passed in when
/// rendering, since the server owns those numbers.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// How a delivery ended, for `modelship_webhook_deliveries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Verified and scheduled (possibly zero runs).
    Accepted,
    /// Verified, but not something that runs pipelines (e.g. `ping`).
    Ignored,
    Rejected(&'static str),
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn delivery(&self, provider: &str, d: Delivery) {
        let (result, reason) = match d {
            Delivery::Accepted => ("accepted", ""),
            Delivery::Ignored => ("ignored", ""),
            Delivery::Rejected(reason) => ("rejected", reason),
        };
        *self.lock().deliveries.entry((provider.into(), result.into(), reason.into())).or_default() += 1;
    }

    pub fn run(&self, pipeline: &str, outcome: &'static str) {
        *self.lock().runs.entry((pipeline.into(), outcome)).or_default() += 1;
    }

    pub fn stage_duration(&self, pipeline: &str, stage: &str, seconds: f64) {
        self.lock().stages.entry((pipeline.into(), stage.into())).or_default().observe(seconds);
    }

    /// A run's promotions and gate failures; `received` is when its push
    /// arrived, the start of the push-to-promotion time.
    pub fn promotions(&self, model: &str, outcome: &RunOutcome, received: jiff::Timestamp) {
        let mut inner = self.lock();
        for p in &outcome.promotions {
            let key = (model.to_string(), p.environment.clone());
            *inner.promotions.entry((key.0.clone(), key.1.clone(), p.result)).or_default() += 1;
            if p.rolled_back {
                *inner.rollbacks.entry(key.clone()).or_default() += 1;
            }
            if p.result == "promoted"
                && let Some(done) = p.finished.as_deref().and_then(|f| f.parse::<jiff::Timestamp>().ok())
            {
                let seconds = done.duration_since(received).as_secs_f64().max(0.0);
                inner.push_to_promotion.entry(key).or_default().observe(seconds);
            }
        }
        for gate in &outcome.gate_failures {
            *inner.gate_failures.entry((model.to_string(), gate.clone())).or_default() += 1;
        }
    }

    /// The exposition text for `GET /metrics`.
    pub fn render(&self, queued: usize, running: usize) -> String {
        let inner = self.lock();
        let mut out = String::new();
        header(
            &mut out,
            "modelship_webhook_deliveries_total",
            "counter",
            "Webhook deliveries by provider and result (accepted, ignored, rejected with a reason).",
        );
        for ((provider, result, reason), n) in &inner.deliveries {
            let _ = writeln!(
                out,
                "modelship_webhook_deliveries_total{{provider=\"{}\",result=\"{}\",reason=\"{}\"}} {n}",
                esc(provider),
                esc(result),
                esc(reason)
            );
        }
        for (outcome, help) in [
            ("started", "Pipeline runs started by triggers."),
            ("succeeded", "Pipeline runs that succeeded."),
            ("failed", "Pipeline runs that failed."),
            ("cancelled", "Pipeline runs cancelled (shutdown)."),
            ("superseded", "Queued runs replaced by a newer push's run of the same pipeline before they started."),
            ("dispatched", "Runs handed to Tekton as PipelineRuns (serve --dispatch tekton)."),
        ] {
            let name = format!("modelship_runs_{outcome}_total");
            header(&mut out, &name, "counter", help);
            for ((pipeline, o), n) in &inner.runs {
                if *o == outcome {
                    let _ = writeln!(out, "{name}{{pipeline=\"{}\"}} {n}", esc(pipeline));
                }
            }
        }
        header(
            &mut out,
            "modelship_stage_duration_seconds",
            "histogram",
            "Duration of pipeline stages run by triggers.",
        );
        for ((pipeline, stage), h) in &inner.stages {
            let labels = format!("pipeline=\"{}\",stage=\"{}\"", esc(pipeline), esc(stage));
            h.write(&mut out, "modelship_stage_duration_seconds", &labels);
        }
        header(
            &mut out,
            "modelship_promotions_total",
            "counter",
            "Promote stages of runs started by triggers, by model, target environment and result (promoted, failed).",
        );
        for ((model, env, result), n) in &inner.promotions {
            let _ = writeln!(
                out,
                "modelship_promotions_total{{model=\"{}\",environment=\"{}\",result=\"{result}\"}} {n}",
                esc(model),
                esc(env)
            );
        }
        header(
            &mut out,
            "modelship_gate_failures_total",
            "counter",
            "Stages stopped by a promotion gate (checks, slo, signature, approval), by model and gate.",
        );
        for ((model, gate), n) in &inner.gate_failures {
            let _ =
                writeln!(out, "modelship_gate_failures_total{{model=\"{}\",gate=\"{}\"}} {n}", esc(model), esc(gate));
        }
        header(
            &mut out,
            "modelship_rollbacks_total",
            "counter",
            "Targets pointed back at their earlier digest after a failed verification, by model and environment.",
        );
        for ((model, env), n) in &inner.rollbacks {
            let _ =
                writeln!(out, "modelship_rollbacks_total{{model=\"{}\",environment=\"{}\"}} {n}", esc(model), esc(env));
        }
        header(
            &mut out,
            "modelship_push_to_promotion_seconds",
            "histogram",
            "Time from a push's arrival to its run's promotion, by model and target environment.",
        );
        for ((model, env), h) in &inner.push_to_promotion {
            let labels = format!("model=\"{}\",environment=\"{}\"", esc(model), esc(env));
            h.write(&mut out, "modelship_push_to_promotion_seconds", &labels);
        }
        header(
            &mut out,
            "modelship_runs_queued",
            "gauge",
            "Selected runs waiting for a concurrency slot or for their model's running run.",
        );
        let _ = writeln!(out, "modelship_runs_queued {queued}");
        header(&mut out, "modelship_runs_running", "gauge", "Runs in progress.");
        let _ = writeln!(out, "modelship_runs_running {running}");
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label value escaping of the text format: backslash, quote, newline.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.delivery("github", Delivery::Accepted);
        m.delivery("github", Delivery::Rejected("bad_signature"));
        m.delivery("github", Delivery::Rejected("bad_signature"));
        m.run("weather", "started");
        m.run("weather", "succeeded");
        m.stage_duration("weather", "build", 42.0);
        m.stage_duration("we\"ird\\", "x\ny", 0.5);
        let text = m.render(1, 2);
        assert!(text.contains("modelship_webhook_deliveries_total{provider=\"github\",result=\"rejected\",reason=\"bad_signature\"} 2\n"), "{text}");
        assert!(text.contains("modelship_runs_succeeded_total{pipeline=\"weather\"} 1\n"));
        assert!(
            text.contains(
                "modelship_stage_duration_seconds_bucket{pipeline=\"weather\",stage=\"build\",le=\"30\"} 0\n"
            )
        );
        assert!(
            text.contains(
                "modelship_stage_duration_seconds_bucket{pipeline=\"weather\",stage=\"build\",le=\"60\"} 1\n"
            )
        );
        assert!(text.contains("modelship_stage_duration_seconds_sum{pipeline=\"weather\",stage=\"build\"} 42\n"));
        assert!(text.contains("pipeline=\"we\\\"ird\\\\\",stage=\"x\\ny\""), "{text}");
        assert!(text.contains("modelship_runs_running 2\n"));
    }

    #[test]
    fn counts_promotions_gates_rollbacks_and_the_time_from_push() {
        use crate::state::{PromotionResult, Status};
        let m = Metrics::default();
        let pushed: jiff::Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let promotion = |env: &str, result, gate: Option<&str>, rolled_back, finished: &str| PromotionResult {
            stage: "promote".into(),
            environment: env.into(),
            result,
            gate: gate.map(str::to_string),
            rolled_back,
            finished: Some(finished.into()),
        };
        let mut ok = RunOutcome::without_run(Status::Succeeded, None, false);
        ok.promotions = vec![promotion("prod", "promoted", None, false, "2026-12-02T10:02:00Z")];
        m.promotions("weather", &ok, pushed);
        let mut bad = RunOutcome::without_run(Status::Failed, None, false);
        bad.promotions = vec![promotion("prod", "failed", Some("checks"), true, "2026-12-02T10:05:00Z")];
        bad.gate_failures = vec!["checks".into()];
        m.promotions("weather", &bad, pushed);
        let mut refused = RunOutcome::without_run(Status::Failed, None, false);
        refused.gate_failures = vec!["approval".into()];
        m.promotions("weather", &refused, pushed);
        let text = m.render(0, 0);
        for line in [
            r#"modelship_promotions_total{model="weather",environment="prod",result="promoted"} 1"#,
            r#"modelship_promotions_total{model="weather",environment="prod",result="failed"} 1"#,
            r#"modelship_gate_failures_total{model="weather",gate="checks"} 1"#,
            r#"modelship_gate_failures_total{model="weather",gate="approval"} 1"#,
            r#"modelship_rollbacks_total{model="weather",environment="prod"} 1"#,
            // Only the promotion that happened is timed: 120 s after the push.
            r#"modelship_push_to_promotion_seconds_bucket{model="weather",environment="prod",le="60"} 0"#,
            r#"modelship_push_to_promotion_seconds_bucket{model="weather",environment="prod",le="120"} 1"#,
            r#"modelship_push_to_promotion_seconds_sum{model="weather",environment="prod"} 120"#,
            r#"modelship_push_to_promotion_seconds_count{model="weather",environment="prod"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
