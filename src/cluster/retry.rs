//! A tower layer on the kube [`Client`](kube::Client) that retries what is
//! safe to retry, on 5xx, 429 and connection errors, with jittered
//! exponential backoff and `Retry-After`:
//!
//! - GET (get, list, watch), PUT, PATCH and DELETE: a repeat does no harm
//!   (also on 409 for a PUT or merge/JSON PATCH without resourceVersion;
//!   a repeated DELETE that finds nothing after a lost answer succeeded)
//!   (a PUT carries its resourceVersion; a merge patch sets the same values
//!   again; a repeated DELETE finds nothing).
//! - POST of an object with a fixed `metadata.name`: a repeat is answered
//!   409 AlreadyExists when the first one was applied. Other POSTs
//!   (`generateName`, subresources such as `instantiatebinary`, which names
//!   its Build server-side) are repeated only on 429, which the API server
//!   sends before doing anything; their callers look for the result.
//!
//! When an answer was lost (connection error or 5xx) and the repeat gets
//! 409, the first attempt may have been applied: the layer reads the object
//! back and, when it holds what was sent, answers as the write would have.
//! So a compare-and-swap write (state store, ledger) is applied once.
//!
//! After the budget, the last answer is returned with its Status message
//! naming the attempts, verb and path (or the last connection error,
//! likewise), so the caller's error names resource, namespace, verb and
//! last status.
//!
//! kube-rs has a `RetryPolicy` for tower's `RetryLayer`, but it retries
//! every method (POST included) on 503, never on connection errors, and
//! cannot read an object back; hence this service.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use kube::client::Body;
use serde_json::Value;
use tower::{BoxError, Layer, Service, ServiceExt};

use crate::retry::Backoff;

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The first wait; each further one doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A longer `Retry-After` is cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryConfig {
    /// [`Backoff::API`]: 6 attempts over about 3 to 6 seconds.
    fn default() -> Self {
        let b = Backoff::API;
        RetryConfig {
            attempts: b.attempts,
            base_delay: b.base,
            max_delay: b.cap,
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    pub fn backoff(&self) -> Backoff {
        Backoff { base: self.base_delay, cap: self.max_delay, attempts: self.attempts }
    }

    /// The wait before retry `retry` (1-based), at least `Retry-After`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        self.backoff().delay_after(retry, retry_after, self.max_retry_after)
    }
}

/// Whether an HTTP status is worth another try: the server could not
/// answer now, but may later.
pub fn retryable_status(code: u16) -> bool {
    matches!(code, 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the API server never sends the date form).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok().map(Duration::from_secs)
}

#[derive(Debug, Clone, Default)]
pub struct RetryLayer {
    config: RetryConfig,
}

impl RetryLayer {
    pub fn new(config: RetryConfig) -> Self {
        RetryLayer { config }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;
    fn layer(&self, inner: S) -> RetryService<S> {
        RetryService { inner: Arc::new(tokio::sync::Mutex::new(inner)), config: self.config }
    }
}

/// The service [`RetryLayer`] makes. The inner service (kube's boxed,
/// non-`Clone` stack) is shared behind a lock held only to dispatch.
pub struct RetryService<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    config: RetryConfig,
}

impl<S> Clone for RetryService<S> {
    fn clone(&self) -> Self {
        RetryService { inner: self.inner.clone(), config: self.config }
    }
}

pub type RetryBody = UnsyncBoxBody<Bytes, BoxError>;

/// A transport error that outlasted the budget.
#[derive(Debug, thiserror::Error)]
#[error("{method} {path}: no answer after {attempts} attempts in {elapsed:.1?}: {source}")]
pub struct GaveUp {
    pub method: Method,
    pub path: String,
    pub attempts: u32,
    pub elapsed: Duration,
    #[source]
    pub source: BoxError,
}

/// What may be repeated, decided from the request alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Safety {
    /// Any retryable failure.
    Idempotent,
    /// Only 429 (not processed).
    NotProcessedOnly,
    /// A streamed body: once.
    Never,
}

fn safety(method: &Method, body: Option<&Bytes>) -> Safety {
    let Some(body) = body else { return Safety::Never };
    match *method {
        Method::GET | Method::HEAD | Method::PUT | Method::PATCH | Method::DELETE => Safety::Idempotent,
        Method::POST => {
            let v: Option<Value> = serde_json::from_slice(body).ok();
            let named = v.as_ref().and_then(|v| v.pointer("/metadata/name")).and_then(Value::as_str);
            if named.is_some_and(|n| !n.is_empty()) { Safety::Idempotent } else { Safety::NotProcessedOnly }
        }
        _ => Safety::NotProcessedOnly,
    }
}

impl<S, B> Service<Request<Body>> for RetryService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<RetryBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RetryBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is awaited per attempt, under the lock.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.run(req).await })
    }
}

impl<S, B> RetryService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    async fn send(&self, req: Request<Body>) -> Result<Response<B>, BoxError> {
        let fut = {
            let mut inner = self.inner.lock().await;
            inner.ready().await.map_err(Into::into)?;
            inner.call(req)
        };
        fut.await.map_err(Into::into)
    }

    async fn run(&self, req: Request<Body>) -> Result<Response<RetryBody>, BoxError> {
        let (parts, body) = req.into_parts();
        // Bodies kube sends whole can be sent again; streamed ones cannot.
        let bytes = match body.try_clone() {
            Some(b) => Some(b.collect().await.map_err(BoxError::from)?.to_bytes()),
            None => None,
        };
        let safety = safety(&parts.method, bytes.as_ref());
        if safety == Safety::Never {
            let resp = self.send(Request::from_parts(parts, body)).await?;
            return Ok(resp.map(box_body));
        }
        let bytes = bytes.unwrap_or_default();
        let build = || {
            let mut r = Request::new(Body::from(bytes.clone()));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts.uri.clone();
            *r.version_mut() = parts.version;
            *r.headers_mut() = parts.headers.clone();
            *r.extensions_mut() = parts.extensions.clone();
            r
        };
        // A 409 on an update without resourceVersion is the server's own
        // conflict (it gave up retrying internally), not the caller's
        // precondition: another try is what the caller would do.
        // (Not server-side apply: its 409 is a field-ownership conflict.)
        let apply = parts.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| v == "application/apply-patch+yaml");
        let unconditional = matches!(parts.method, Method::PUT | Method::PATCH)
            && !apply
            && serde_json::from_slice::<Value>(&bytes)
                .map_or(true, |v| v.pointer("/metadata/resourceVersion").is_none());
        let started = Instant::now();
        let path = parts.uri.path().to_string();
        // An earlier attempt may have been applied without our hearing it.
        let mut maybe_applied = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.config.attempts;
            let wait = match self.send(build()).await {
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::CONFLICT
                        && maybe_applied
                        && matches!(parts.method, Method::POST | Method::PUT)
                        && let Some(found) = self.read_back(&parts, &bytes).await
                    {
                        tracing::info!(method = %parts.method, path, "the write whose answer was lost was applied");
                        return Ok(found);
                    }
                    if status == StatusCode::NOT_FOUND && maybe_applied && parts.method == Method::DELETE {
                        // The first DELETE did it; answer as the API server does.
                        let done = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}"#;
                        let mut r =
                            Response::new(box_body(http_body_util::Full::new(Bytes::from_static(done.as_bytes()))));
                        r.headers_mut()
                            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                        return Ok(r);
                    }
                    let code = status.as_u16();
                    let may_retry = (retryable_status(code) && (safety == Safety::Idempotent || code == 429))
                        || (code == 409 && unconditional);
                    if !may_retry {
                        return Ok(resp.map(box_body));
                    }
                    if last {
                        return Ok(self.exhausted(resp, &parts.method, &path, attempt, started).await);
                    }
                    maybe_applied |= code != 429;
                    let ra = retry_after(resp.headers());
                    tracing::debug!(method = %parts.method, path, status = code, attempt, "API request failed; retrying");
                    self.config.delay(attempt, ra)
                }
                Err(e) => {
                    if safety != Safety::Idempotent {
                        return Err(e);
                    }
                    if last {
                        return Err(Box::new(GaveUp {
                            method: parts.method.clone(),
                            path,
                            attempts: attempt,
                            elapsed: started.elapsed(),
                            source: e,
                        }));
                    }
                    maybe_applied = true;
                    tracing::debug!(method = %parts.method, path, error = %e, attempt, "API request failed; retrying");
                    self.config.delay(attempt, None)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// After a 409 on a repeated write: GET the object; when it holds what
    /// was sent, the answer to the write.
    async fn read_back(&self, parts: &http::request::Parts, sent: &Bytes) -> Option<Response<RetryBody>> {
        let sent: Value = serde_json::from_slice(sent).ok()?;
        let name = sent.pointer("/metadata/name")?.as_str()?;
        let base = parts.uri.path().trim_end_matches('/');
        let path = if parts.method == Method::POST { format!("{base}/{name}") } else { base.to_string() };
        // Above kube's base-URI layer the URI is usually the path alone.
        let mut uri = http::Uri::builder();
        if let (Some(scheme), Some(authority)) = (parts.uri.scheme(), parts.uri.authority()) {
            uri = uri.scheme(scheme.clone()).authority(authority.clone());
        }
        let uri = uri.path_and_query(path).build().ok()?;
        let mut headers = parts.headers.clone();
        headers.remove(http::header::CONTENT_TYPE);
        headers.remove(http::header::CONTENT_LENGTH);
        // The GET may meet the same flaky server: the same budget.
        let mut attempt = 0;
        let resp = loop {
            attempt += 1;
            let mut get = Request::new(Body::empty());
            *get.uri_mut() = uri.clone();
            *get.headers_mut() = headers.clone();
            let wait = match self.send(get).await {
                Ok(r) if r.status().is_success() => break r,
                Ok(r) if retryable_status(r.status().as_u16()) => retry_after(r.headers()),
                Ok(_) => return None,
                Err(_) => None,
            };
            if attempt >= self.config.attempts {
                return None;
            }
            tokio::time::sleep(self.config.delay(attempt, wait)).await;
        };
        let (mut head, body) = resp.into_parts();
        let stored = body.collect().await.ok()?.to_bytes();
        let value: Value = serde_json::from_slice(&stored).ok()?;
        if !holds(&value, &sent) {
            return None;
        }
        head.status = if parts.method == Method::POST { StatusCode::CREATED } else { StatusCode::OK };
        head.headers.remove(http::header::CONTENT_LENGTH);
        Some(Response::from_parts(head, box_body(http_body_util::Full::new(stored))))
    }

    /// The last failed answer, its Status message saying what was tried.
    async fn exhausted(
        &self,
        resp: Response<B>,
        method: &Method,
        path: &str,
        attempts: u32,
        started: Instant,
    ) -> Response<RetryBody> {
        let (mut head, body) = resp.into_parts();
        let bytes = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let note = format!("gave up after {attempts} attempts in {:.1?}: {method} {path}", started.elapsed());
        let mut status: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": String::from_utf8_lossy(&bytes).trim(), "code": head.status.as_u16(),
            })
        });
        let message = status.get("message").and_then(Value::as_str).unwrap_or("").to_string();
        status["message"] = Value::from(if message.is_empty() { note } else { format!("{message} ({note})") });
        head.headers.remove(http::header::CONTENT_LENGTH);
        head.headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Response::from_parts(head, box_body(http_body_util::Full::new(Bytes::from(status.to_string()))))
    }
}

fn box_body<B>(b: B) -> RetryBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    b.map_err(Into::into).boxed_unsync()
}

/// Whether `stored` holds what `sent` wrote: every top-level field but
/// metadata and status equal, and the labels and annotations sent present.
fn holds(stored: &Value, sent: &Value) -> bool {
    let Some(fields) = sent.as_object() else { return false };
    let same_fields = fields
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"))
        .all(|(k, v)| stored.get(k) == Some(v));
    let same_meta = ["labels", "annotations"].iter().all(|m| {
        let Some(want) = sent.pointer(&format!("/metadata/{m}")).and_then(Value::as_object) else { return true };
        want.iter().all(|(k, v)| stored.pointer(&format!("/metadata/{m}")).and_then(|o| o.get(k)) == Some(v))
    });
    same_fields && same_meta
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_may_be_repeated() {
        let named = Bytes::from(json!({"metadata": {"name": "a"}}).to_string());
        let generated = Bytes::from(json!({"metadata": {"generateName": "a-"}}).to_string());
        assert_eq!(safety(&Method::GET, Some(&Bytes::new())), Safety::Idempotent);
        assert_eq!(safety(&Method::PUT, Some(&named)), Safety::Idempotent);
        assert_eq!(safety(&Method::POST, Some(&named)), Safety::Idempotent);
        assert_eq!(safety(&Method::POST, Some(&generated)), Safety::NotProcessedOnly);
        assert_eq!(safety(&Method::POST, Some(&Bytes::new())), Safety::NotProcessedOnly);
        assert_eq!(safety(&Method::POST, None), Safety::Never);
    }

    #[test]
    fn read_back_compares_content_and_metadata_sent() {
        let sent = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {"x": "1"}, "resourceVersion": "5"}, "data": {"k": "v"}});
        let stored = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {"x": "1", "y": "2"}, "resourceVersion": "6"}, "data": {"k": "v"}});
        assert!(holds(&stored, &sent));
        let other = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "w"}});
        assert!(!holds(&other, &sent));
        let relabelled = json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "data": {"k": "v"}});
        assert!(!holds(&relabelled, &sent));
    }

    #[test]
    fn delays_grow_and_honour_retry_after() {
        let c = RetryConfig::default();
        assert!(c.delay(1, None) <= Duration::from_millis(200));
        assert!(c.delay(3, None) >= Duration::from_millis(400));
        assert!(c.delay(1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        assert_eq!(c.delay(1, Some(Duration::from_secs(3600))), Duration::from_secs(30));
        assert!(retryable_status(503) && retryable_status(429) && !retryable_status(409));
    }
}
