//! The check's result: what the stage outputs as `report`, what the promote
//! stage copies into the ledger, and its two human renderings (the TTY table
//! and the failure summary).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything a check found. Serialized camelCase into the `report` output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The prediction URL, credentials masked.
    pub endpoint: String,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub passed: bool,
    pub cases: Vec<CaseReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadReport>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slo: Vec<SloVerdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseReport {
    pub name: String,
    pub passed: bool,
    /// HTTP status, absent when no response came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub expected_status: u16,
    pub latency_ms: f64,
    pub checks: Vec<CheckReport>,
    /// Why the case failed before its checks could run (transport error,
    /// unexpected status, a body that is not JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The response body (masked, truncated) when the case failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub path: String,
    /// The matcher, e.g. `= "mild"`, `matches /Integer/`.
    pub expect: String,
    pub passed: bool,
    /// The value found at `path` (absent when the path does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<Value>,
    /// For a failed check: why, with a `-`/`+` diff for equality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    /// The case whose request was sent, or `request` for an inline body.
    pub request: String,
    pub requests: u64,
    pub concurrency: u32,
    pub succeeded: u64,
    pub failed: u64,
    pub error_rate: f64,
    /// Latency percentiles of successful requests (nearest rank, exact).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// Successful requests per second of wall time.
    pub throughput: f64,
    pub duration_ms: f64,
    /// Up to five distinct failure reasons with their counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorCount>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorCount {
    pub error: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SloVerdict {
    /// `p50`, `p95`, `p99`, `errorRate` or `minThroughput`.
    pub objective: String,
    /// The limit as written, e.g. `<= 250ms`.
    pub limit: String,
    /// The measured value, e.g. `12.3ms`, or `none` without data.
    pub actual: String,
    pub passed: bool,
}

impl Report {
    pub fn failed_cases(&self) -> impl Iterator<Item = &CaseReport> {
        self.cases.iter().filter(|c| !c.passed)
    }

    /// Why the check failed, for the stage error: each failed case with its
    /// reasons and diffs, each missed SLO. Empty when it passed.
    pub fn failure_summary(&self) -> String {
        let mut out = Vec::new();
        let failed = self.failed_cases().count();
        if failed > 0 {
            out.push(format!("{failed} of {} case(s) failed against {}:", self.cases.len(), self.endpoint));
            for case in self.failed_cases() {
                out.push(format!("  case `{}`:", case.name));
                if let Some(e) = &case.error {
                    out.push(indent(e, "    "));
                }
                for check in case.checks.iter().filter(|c| !c.passed) {
                    out.push(format!("    {} (expected {}):", check.path, check.expect));
                    if let Some(d) = &check.diff {
                        out.push(indent(d, "      "));
                    }
                }
                if let Some(body) = &case.response {
                    out.push(format!("    response: {}", truncate(body, 500)));
                }
            }
        }
        let missed: Vec<&SloVerdict> = self.slo.iter().filter(|s| !s.passed).collect();
        if !missed.is_empty() {
            out.push(format!("SLO missed ({} of {}):", missed.len(), self.slo.len()));
            for s in missed {
                out.push(format!("  {} {}: measured {}", s.objective, s.limit, s.actual));
            }
            if let Some(load) = &self.load {
                for e in &load.errors {
                    out.push(format!("  {} request(s) failed: {}", e.count, e.error));
                }
            }
        }
        out.join("\n")
    }

    /// The table shown on a TTY.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 5]> =
            vec![["CASE".into(), "RESULT".into(), "STATUS".into(), "LATENCY".into(), "DETAIL".into()]];
        for c in &self.cases {
            let detail = if c.passed {
                format!("{} check(s)", c.checks.len())
            } else if let Some(e) = &c.error {
                first_line(e)
            } else {
                let bad: Vec<&str> = c.checks.iter().filter(|k| !k.passed).map(|k| k.path.as_str()).collect();
                format!("failed: {}", bad.join(", "))
            };
            rows.push([
                c.name.clone(),
                if c.passed { "pass" } else { "FAIL" }.into(),
                c.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                format_ms(c.latency_ms),
                truncate(&detail, 80),
            ]);
        }
        let mut out = render_rows(&rows);
        if let Some(l) = &self.load {
            out.push_str(&format!(
                "\nload: {} request(s) at concurrency {} in {}: p50 {} p95 {} p99 {}, {:.1} req/s, error rate {:.2}%\n",
                l.requests,
                l.concurrency,
                format_ms(l.duration_ms),
                opt_ms(l.p50_ms),
                opt_ms(l.p95_ms),
                opt_ms(l.p99_ms),
                l.throughput,
                l.error_rate * 100.0
            ));
        }
        if !self.slo.is_empty() {
            let mut rows: Vec<[String; 5]> =
                vec![["SLO".into(), "RESULT".into(), "LIMIT".into(), "MEASURED".into(), String::new()]];
            for s in &self.slo {
                rows.push([
                    s.objective.clone(),
                    if s.passed { "pass" } else { "FAIL" }.into(),
                    s.limit.clone(),
                    s.actual.clone(),
                    String::new(),
                ]);
            }
            out.push('\n');
            out.push_str(&render_rows(&rows));
        }
        out
    }
}

fn render_rows(rows: &[[String; 5]]) -> String {
    let mut widths = [0usize; 5];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}")).collect::<Vec<_>>().join("\n")
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_string()
}

/// Milliseconds for people: `850µs`, `12.3ms`, `1.20s`.
pub fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn opt_ms(ms: Option<f64>) -> String {
    ms.map(format_ms).unwrap_or_else(|| "-".into())
}

/// Cut `text` to at most `max` characters, saying how much was cut.
pub fn truncate(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}… ({} more characters)", count - max)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> Report {
        Report {
            endpoint: "http://127.0.0.1:9000/api/v1.0/predictions".into(),
            protocol: "seldon".into(),
            environment: Some("dev".into()),
            passed: false,
            cases: vec![
                CaseReport {
                    name: "mild".into(),
                    passed: true,
                    status: Some(200),
                    expected_status: 200,
                    latency_ms: 4.25,
                    checks: vec![CheckReport {
                        path: "meta.tags.weather_state".into(),
                        expect: "= \"mild\"".into(),
                        passed: true,
                        actual: Some(json!("mild")),
                        diff: None,
                    }],
                    error: None,
                    response: None,
                },
                CaseReport {
                    name: "wrong".into(),
                    passed: false,
                    status: Some(200),
                    expected_status: 200,
                    latency_ms: 0.8,
                    checks: vec![CheckReport {
                        path: "meta.tags.weather_state".into(),
                        expect: "= \"hot\"".into(),
                        passed: false,
                        actual: Some(json!("mild")),
                        diff: Some("- expected: \"hot\"\n+ actual:   \"mild\"".into()),
                    }],
                    error: None,
                    response: Some(r#"{"meta":{"tags":{"weather_state":"mild"}}}"#.into()),
                },
                CaseReport {
                    name: "down".into(),
                    passed: false,
                    status: Some(500),
                    expected_status: 200,
                    latency_ms: 1500.0,
                    checks: vec![],
                    error: Some("HTTP 500, expected 200".into()),
                    response: Some(r#"{"status":{"code":500}}"#.into()),
                },
            ],
            load: Some(LoadReport {
                request: "mild".into(),
                requests: 100,
                concurrency: 4,
                succeeded: 99,
                failed: 1,
                error_rate: 0.01,
                p50_ms: Some(3.0),
                p95_ms: Some(7.5),
                p99_ms: Some(12.0),
                max_ms: Some(20.0),
                throughput: 250.0,
                duration_ms: 400.0,
                errors: vec![ErrorCount { error: "HTTP 503".into(), count: 1 }],
            }),
            slo: vec![
                SloVerdict { objective: "p95".into(), limit: "<= 250ms".into(), actual: "7.5ms".into(), passed: true },
                SloVerdict {
                    objective: "errorRate".into(),
                    limit: "<= 0".into(),
                    actual: "0.01".into(),
                    passed: false,
                },
            ],
        }
    }

    #[test]
    fn table_on_a_tty() {
        insta::assert_snapshot!(sample().table());
    }

    #[test]
    fn failure_summary_shows_diffs_responses_and_missed_slos() {
        insta::assert_snapshot!(sample().failure_summary());
    }

    #[test]
    fn report_json_is_camel_case_and_round_trips() {
        let r = sample();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cases"][0]["expectedStatus"], 200);
        assert_eq!(v["load"]["p95Ms"], 7.5);
        assert_eq!(v["load"]["errorRate"], 0.01);
        assert_eq!(serde_json::from_value::<Report>(v).unwrap(), r);
    }

    #[test]
    fn truncate_says_how_much_was_cut() {
        assert_eq!(truncate("abcdef", 10), "abcdef");
        assert_eq!(truncate("abcdef", 3), "abc… (3 more characters)");
        assert_eq!(format_ms(0.25), "250µs");
        assert_eq!(format_ms(12.34), "12.3ms");
        assert_eq!(format_ms(1500.0), "1.50s");
    }
}
