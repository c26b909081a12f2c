//! The load phase: N requests at bounded concurrency, exact latency
//! percentiles, and the SLO verdicts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::http::{BodyError, post_json};
use super::report::{ErrorCount, LoadReport, SloVerdict, format_ms};
use super::{Load, Slo};
use crate::secret::mask;

/// Send `load.requests` copies of `body` with at most `load.concurrency` in
/// flight. A request succeeds when it answers `expected_status` with JSON.
pub async fn run(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    expected_status: u16,
    load: &Load,
    request_name: &str,
) -> LoadReport {
    let started = Instant::now();
    let concurrency = load.concurrency.max(1) as usize;
    // Fold as results arrive: a million requests keep a million durations,
    // not a million result values with error strings.
    let (mut latencies, errors) = futures::stream::iter(0..load.requests)
        .map(|_| async move {
            match post_json(client, url, body).await {
                Ok(r) if r.status != expected_status => Err(format!("HTTP {}, expected {expected_status}", r.status)),
                Ok(r) => match r.body {
                    Ok(_) => Ok(r.latency),
                    Err(BodyError::TooLarge) => Err(BodyError::TooLarge.to_string()),
                    // The parser's position differs per body; group by kind.
                    Err(BodyError::NotJson(_)) => Err("response is not valid JSON".to_string()),
                },
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(concurrency)
        .fold(
            (Vec::with_capacity(load.requests.min(1 << 20) as usize), BTreeMap::<String, u64>::new()),
            |(mut latencies, mut errors), r| async move {
                match r {
                    Ok(d) => latencies.push(d),
                    Err(e) => *errors.entry(mask(&e)).or_default() += 1,
                }
                (latencies, errors)
            },
        )
        .await;
    let elapsed = started.elapsed();

    latencies.sort_unstable();
    let failed: u64 = errors.values().sum();
    let succeeded = latencies.len() as u64;
    let mut errors: Vec<ErrorCount> = errors.into_iter().map(|(error, count)| ErrorCount { error, count }).collect();
    errors.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.error.cmp(&b.error)));
    errors.truncate(5);
    let secs = elapsed.as_secs_f64();
    LoadReport {
        request: request_name.to_string(),
        requests: load.requests,
        concurrency: load.concurrency,
        succeeded,
        failed,
        error_rate: if load.requests == 0 { 0.0 } else { failed as f64 / load.requests as f64 },
        p50_ms: percentile(&latencies, 50.0).map(ms),
        p95_ms: percentile(&latencies, 95.0).map(ms),
        p99_ms: percentile(&latencies, 99.0).map(ms),
        max_ms: latencies.last().copied().map(ms),
        throughput: if secs > 0.0 { succeeded as f64 / secs } else { 0.0 },
        duration_ms: ms(elapsed),
        errors,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted values: the smallest value with at
/// least `p`% of the values at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Judge `load` against `slo`. Latency objectives fail when no request
/// succeeded: there is nothing to show they hold.
pub fn verdicts(slo: &Slo, load: &LoadReport) -> Vec<SloVerdict> {
    let mut out = Vec::new();
    let mut latency = |name: &str, limit: &Option<super::DurationStr>, actual: Option<f64>| {
        if let Some(limit) = limit {
            let limit_ms = ms(limit.0);
            out.push(SloVerdict {
                objective: name.to_string(),
                limit: format!("<= {}", limit.text()),
                actual: actual.map(format_ms).unwrap_or_else(|| "none (no successful request)".into()),
                passed: actual.is_some_and(|a| a <= limit_ms),
            });
        }
    };
    latency("p50", &slo.p50, load.p50_ms);
    latency("p95", &slo.p95, load.p95_ms);
    latency("p99", &slo.p99, load.p99_ms);
    if let Some(max) = slo.error_rate {
        out.push(SloVerdict {
            objective: "errorRate".into(),
            limit: format!("<= {max}"),
            actual: format!("{} ({} of {})", round4(load.error_rate), load.failed, load.requests),
            passed: load.error_rate <= max,
        });
    }
    if let Some(min) = slo.min_throughput {
        out.push(SloVerdict {
            objective: "minThroughput".into(),
            limit: format!(">= {min} req/s"),
            actual: format!("{:.1} req/s", load.throughput),
            passed: load.throughput >= min,
        });
    }
    out
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::DurationStr;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(d).collect();
        assert_eq!(percentile(&v, 50.0), Some(d(50)));
        assert_eq!(percentile(&v, 95.0), Some(d(95)));
        assert_eq!(percentile(&v, 99.0), Some(d(99)));
        assert_eq!(percentile(&v, 100.0), Some(d(100)));
        assert_eq!(percentile(&[d(7)], 99.0), Some(d(7)));
        let v: Vec<Duration> = (1..=10).map(d).collect();
        // 95% of 10 values = rank 9.5 -> 10th value.
        assert_eq!(percentile(&v, 95.0), Some(d(10)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    fn report(p95: Option<f64>, error_rate: f64, throughput: f64) -> LoadReport {
        LoadReport {
            request: "r".into(),
            requests: 100,
            concurrency: 4,
            succeeded: 100 - (error_rate * 100.0) as u64,
            failed: (error_rate * 100.0) as u64,
            error_rate,
            p50_ms: p95,
            p95_ms: p95,
            p99_ms: p95,
            max_ms: p95,
            throughput,
            duration_ms: 1000.0,
            errors: vec![],
        }
    }

    #[test]
    fn slo_verdicts() {
        let slo = Slo {
            p50: None,
            p95: Some(DurationStr::parse("250ms").unwrap()),
            p99: None,
            error_rate: Some(0.0),
            min_throughput: Some(10.0),
        };
        let ok = verdicts(&slo, &report(Some(12.0), 0.0, 80.0));
        assert!(ok.iter().all(|v| v.passed), "{ok:?}");
        let bad = verdicts(&slo, &report(Some(300.0), 0.02, 5.0));
        assert_eq!(bad.iter().filter(|v| !v.passed).count(), 3, "{bad:?}");
        assert_eq!(bad[0].limit, "<= 250ms");
        assert_eq!(bad[0].actual, "300.0ms");
        assert_eq!(bad[1].actual, "0.02 (2 of 100)");
        // No successful request: latency objectives cannot be shown to hold.
        let none = verdicts(&slo, &report(None, 1.0, 0.0));
        assert!(!none[0].passed);
        assert!(none[0].actual.starts_with("none"));
    }
}
