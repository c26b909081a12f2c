//! Prometheus text exposition (format 0.0.4), written by hand: a handful of
//! counters and one histogram do not justify a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

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
        let mut inner = self.lock();
        let h = inner.stages.entry((pipeline.into(), stage.into())).or_default();
        if h.counts.is_empty() {
            h.counts = vec![0; BUCKETS.len()];
        }
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.counts[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
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
            for (le, n) in BUCKETS.iter().zip(&h.counts) {
                let _ = writeln!(out, "modelship_stage_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}");
            }
            let _ = writeln!(out, "modelship_stage_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "modelship_stage_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "modelship_stage_duration_seconds_count{{{labels}}} {}", h.count);
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
}
