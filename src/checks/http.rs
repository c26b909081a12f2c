//! HTTP side of the check: where to send (per protocol), waiting until the
//! server is ready, and one request with a bounded response body.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;

use super::{CheckError, Protocol};
use crate::secret::mask;

/// Seldon v1 prediction path (model container on 9000 and executor on 8000).
pub const SELDON_PREDICT: &str = "/api/v1.0/predictions";

/// Response bodies above this are not read further: a check needs a verdict,
/// not a multi-GB download.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Where a check sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub protocol: Protocol,
    /// Base URL of the predictor without a trailing slash.
    pub base: String,
    /// The prediction URL.
    pub predict: String,
    /// Readiness probes, in order. For Seldon the second is a fallback tried
    /// when the first answers 404; for v2 all must answer 2xx.
    pub ready: Vec<String>,
    pub model_name: Option<String>,
}

impl Target {
    /// Resolve `endpoint` (a base URL like `http://HOST:PORT`, or the full
    /// prediction URL) for `protocol`. `model_name` is the v2 model, used
    /// unless the URL names one.
    pub fn resolve(endpoint: &str, protocol: Protocol, model_name: Option<&str>) -> Result<Target, CheckError> {
        let bad = |reason: &str| CheckError::Endpoint { endpoint: mask(endpoint), reason: reason.to_string() };
        let url = url::Url::parse(endpoint.trim()).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("only http and https URLs are supported"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("the URL has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("the URL must not have a query or fragment"));
        }
        let full = url.as_str().trim_end_matches('/').to_string();
        match protocol {
            Protocol::Seldon => {
                let base = full.strip_suffix(SELDON_PREDICT).unwrap_or(&full).to_string();
                Ok(Target {
                    protocol,
                    predict: format!("{base}{SELDON_PREDICT}"),
                    // /health/ping is the python wrapper's (seldon_core/wrapper.py);
                    // /ready is the executor's, in front of it on port 8000.
                    ready: vec![format!("{base}/health/ping"), format!("{base}/ready")],
                    base,
                    model_name: model_name.map(str::to_string),
                })
            }
            Protocol::V2 => {
                let (base, name) = match split_v2_infer(&full) {
                    Some((base, name)) => (base.to_string(), name.to_string()),
                    None => {
                        if full.contains("/v2/") || full.ends_with("/v2") {
                            return Err(bad("a v2 endpoint is the server's base URL or ends in /v2/models/NAME/infer"));
                        }
                        let name = model_name.filter(|n| !n.is_empty()).ok_or_else(|| {
                            bad("protocol v2 needs a model name: set with.modelName or use a URL ending in /v2/models/NAME/infer")
                        })?;
                        (full.clone(), name.to_string())
                    }
                };
                Ok(Target {
                    protocol,
                    predict: format!("{base}/v2/models/{name}/infer"),
                    ready: vec![format!("{base}/v2/health/ready"), format!("{base}/v2/models/{name}/ready")],
                    base,
                    model_name: Some(name),
                })
            }
        }
    }
}

/// `BASE/v2/models/NAME[/versions/V]/infer` -> (BASE, NAME).
fn split_v2_infer(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_suffix("/infer")?;
    let idx = rest.rfind("/v2/models/")?;
    let name = &rest[idx + "/v2/models/".len()..];
    let name = name.split("/versions/").next()?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    Some((&url[..idx], name))
}

/// Poll the readiness probes until they answer or `timeout` passes.
pub async fn wait_ready(client: &reqwest::Client, target: &Target, timeout: Duration) -> Result<(), CheckError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut retry = 0;
    let mut last_error = "no probe finished yet".to_string();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        // A probe is cut at the deadline so the timeout holds even when the
        // server accepts connections and never answers.
        let probe_timeout = remaining.min(Duration::from_secs(5));
        match tokio::time::timeout(probe_timeout, probe(client, target, probe_timeout)).await {
            Ok(Ok(())) => {
                tracing::debug!(url = %mask(&target.ready[0]), waited_ms = started.elapsed().as_millis() as u64, "model server ready");
                return Ok(());
            }
            Ok(Err(e)) => last_error = e,
            Err(_) => last_error = format!("no answer within {}", humantime::format_duration(probe_timeout)),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        retry += 1;
        tokio::time::sleep(crate::retry::Backoff::POLL.delay(retry).min(remaining)).await;
    }
    Err(CheckError::NotReady {
        url: mask(&target.ready.join(" and ")),
        waited: humantime::format_duration(round_ms(started.elapsed())).to_string(),
        last_error: mask(&last_error),
    })
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// One round of readiness probes; `Err` holds the reason, URL first.
async fn probe(client: &reqwest::Client, target: &Target, timeout: Duration) -> Result<(), String> {
    let get = |url: &str| {
        let url = url.to_string();
        async move {
            match client.get(&url).timeout(timeout).send().await {
                Ok(resp) => Ok(resp.status()),
                Err(e) => Err(format!("GET {url}: {}", error_chain(&e))),
            }
        }
    };
    match target.protocol {
        Protocol::Seldon => {
            // The wrapper answers /health/ping; an executor in front of it
            // answers /ready. Either one ready is enough. A transport error
            // on the first means the host itself is not answering.
            let first = &target.ready[0];
            let status = get(first).await?;
            if status.is_success() {
                return Ok(());
            }
            let fallback = &target.ready[1];
            let s2 = get(fallback).await?;
            if s2.is_success() {
                return Ok(());
            }
            Err(format!("GET {first}: HTTP {}; GET {fallback}: HTTP {}", status.as_u16(), s2.as_u16()))
        }
        Protocol::V2 => {
            for url in &target.ready {
                let status = get(url).await?;
                if !status.is_success() {
                    return Err(format!("GET {url}: HTTP {}", status.as_u16()));
                }
            }
            Ok(())
        }
    }
}

/// What one prediction request got back.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub latency: Duration,
    pub body: Result<Value, BodyError>,
    /// The body as text (lossy UTF-8, at most [`MAX_BODY`]).
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BodyError {
    TooLarge,
    NotJson(String),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => write!(f, "response body is larger than {} MiB", MAX_BODY / (1024 * 1024)),
            BodyError::NotJson(e) => write!(f, "response is not valid JSON: {e}"),
        }
    }
}

/// POST `body` to `url`. `Err` is a transport failure (connect, timeout,
/// reset) with its cause chain; any HTTP answer is `Ok`.
pub async fn post_json(client: &reqwest::Client, url: &str, body: &[u8]) -> Result<Response, String> {
    let started = Instant::now();
    let mut resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let mut buf = BytesMut::new();
    let mut too_large = false;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("reading the response: {}", error_chain(&e)))? {
        if buf.len() + chunk.len() > MAX_BODY {
            too_large = true;
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    let latency = started.elapsed();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let body = if too_large {
        Err(BodyError::TooLarge)
    } else {
        serde_json::from_slice(&buf).map_err(|e| BodyError::NotJson(e.to_string()))
    };
    Ok(Response { status, latency, body, text })
}

/// reqwest's Display hides the cause ("error sending request"); the chain
/// says "connection refused".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seldon_base_and_full_urls_resolve_alike() {
        let a = Target::resolve("http://10.0.0.1:8000", Protocol::Seldon, None).unwrap();
        let b = Target::resolve("http://10.0.0.1:8000/api/v1.0/predictions", Protocol::Seldon, None).unwrap();
        let c = Target::resolve("http://10.0.0.1:8000/", Protocol::Seldon, None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.predict, "http://10.0.0.1:8000/api/v1.0/predictions");
        assert_eq!(a.ready, ["http://10.0.0.1:8000/health/ping", "http://10.0.0.1:8000/ready"]);
        // A Route or ingress prefix is kept.
        let r = Target::resolve("https://route.example/seldon/ns/weather/api/v1.0/predictions", Protocol::Seldon, None)
            .unwrap();
        assert_eq!(r.base, "https://route.example/seldon/ns/weather");
    }

    #[test]
    fn v2_takes_the_model_from_the_url_or_the_name() {
        let a = Target::resolve("http://h:8080", Protocol::V2, Some("weather")).unwrap();
        assert_eq!(a.predict, "http://h:8080/v2/models/weather/infer");
        assert_eq!(a.ready, ["http://h:8080/v2/health/ready", "http://h:8080/v2/models/weather/ready"]);
        let b = Target::resolve("http://h:8080/v2/models/iris/infer", Protocol::V2, Some("weather")).unwrap();
        assert_eq!((b.base.as_str(), b.model_name.as_deref()), ("http://h:8080", Some("iris")));
        let c = Target::resolve("http://h:8080/v2/models/iris/versions/3/infer", Protocol::V2, None).unwrap();
        assert_eq!(c.model_name.as_deref(), Some("iris"));
    }

    #[test]
    fn bad_endpoints_say_why() {
        for (url, proto, why) in [
            ("not a url", Protocol::Seldon, "relative URL"),
            ("ftp://h/x", Protocol::Seldon, "only http and https"),
            ("http://h:1/?a=b", Protocol::Seldon, "query"),
            ("http://h:1", Protocol::V2, "needs a model name"),
            ("http://h:1/v2/models/x", Protocol::V2, "ends in /v2/models/NAME/infer"),
        ] {
            let err = Target::resolve(url, proto, None).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn endpoint_errors_mask_credentials() {
        let err = Target::resolve("ftp://bob:hunter22@h/x", Protocol::Seldon, None).unwrap_err().to_string();
        assert!(!err.contains("hunter22"), "{err}");
    }
}
