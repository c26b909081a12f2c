//! The Build calls that are not plain typed get/list/patch: the binary
//! upload (`instantiatebinary`, as `oc start-build --from-dir`), following a
//! Build to its end with `kube::runtime`'s watcher, and the build log.

use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use kube::Api;
use serde_json::Value;

use super::openshift::Build;

/// `instantiatebinary` did not answer with a Build.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartError {
    pub message: String,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    pub retry_after: Option<Duration>,
}

/// `POST .../buildconfigs/NAME/instantiatebinary` with `body` (a gzip tar)
/// streamed chunked; the answer's body. Sent through the environment's own
/// kube `client`, so its credentials (client certificates, tokens, exec
/// plugins), TLS settings and `proxy-url` apply as to every other call; the
/// retry layer sends a streamed body once (the caller decides about
/// repeats: the POST names its Build server-side).
pub async fn instantiate_binary<S>(
    client: &kube::Client,
    namespace: &str,
    bc: &str,
    body: S,
    query: &[(String, String)],
) -> Result<String, StartError>
where
    S: futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let serr = |status: Option<u16>, message: String| StartError { message, status, retry_after: None };
    let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
    let path =
        format!("/apis/build.openshift.io/v1/namespaces/{namespace}/buildconfigs/{bc}/instantiatebinary?{query}");
    let body = streaming_body(body).await.map_err(|e| serr(None, format!("cannot stream the build context: {e}")))?;
    let req = http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .map_err(|e| serr(None, e.to_string()))?;
    let resp = client.send(req).await.map_err(|e| serr(None, crate::secret::mask(&crate::error::chain(&e))))?;
    let status = resp.status();
    let retry_after = super::retry::retry_after(resp.headers());
    let bytes = resp.into_body().collect_bytes().await.map_err(|e| serr(Some(status.as_u16()), e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if !status.is_success() {
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(text);
        return Err(StartError {
            message: format!("{message} ({status})"),
            status: Some(status.as_u16()),
            retry_after,
        });
    }
    Ok(text)
}

/// `stream` as a request body for a [`kube::Client`]. kube 5 keeps its
/// body-wrapping constructor to itself (`Body::wrap_body` in kube-client's
/// `src/client/body.rs` is `pub(crate)`; the public ones take whole bytes),
/// but a `Client` hands every response body back wrapped: a client over a
/// service that answers with the stream yields it as a `Body`, still
/// streamed (nothing is collected, so at most a few chunks are in memory).
async fn streaming_body<S>(stream: S) -> Result<kube::client::Body, kube::Error>
where
    S: futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let body = http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data));
    let slot = std::sync::Mutex::new(Some(body));
    let service = tower::service_fn(move |_: http::Request<kube::client::Body>| {
        let body = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        async move { body.map(http::Response::new).ok_or_else(|| tower::BoxError::from("the body was taken")) }
    });
    let wrapper = kube::Client::new(service, "default");
    Ok(wrapper.send(http::Request::new(kube::client::Body::empty())).await?.into_body())
}

/// Why a Build could not be followed to its end.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("deleted while modelship followed it")]
    Vanished,
    /// The last failure of the watch (after the backoff gave up, or one no
    /// retry helps, such as 403).
    #[error(transparent)]
    Api(kube::Error),
}

/// Follow Build `name` to a final phase, watching it ([`super::watch`]).
/// The API server restarting for a moment is survived; the build goes on
/// without us meanwhile.
pub async fn follow(builds: &Api<Build>, name: &str) -> Result<Build, FollowError> {
    let mut events = super::watch::object(builds.clone(), "builds.build.openshift.io", name);
    loop {
        match events.next().await {
            Ok(Some(b)) => {
                tracing::info!(build = name, phase = b.phase(), "build phase");
                if b.is_finished() {
                    return Ok(b);
                }
            }
            Ok(None) => return Err(FollowError::Vanished),
            Err(failed) => {
                tracing::warn!(build = name, "the build cannot be followed; giving up (it goes on without us)");
                return Err(FollowError::Api(failed.source));
            }
        }
    }
}

/// `builds/NAME/log?follow=true` line by line into tracing, until it ends.
pub async fn stream_log(client: kube::Client, ns: String, name: String) {
    let path = format!("/apis/build.openshift.io/v1/namespaces/{ns}/builds/{name}/log?follow=true");
    let Ok(req) = http::Request::get(&path).body(Vec::new()) else { return };
    match client.request_stream(req).await {
        Ok(reader) => {
            let mut lines = reader.lines();
            while let Some(Ok(line)) = lines.next().await {
                tracing::info!(target: "modelship::build_log", build = %name, "{}", crate::secret::mask(&line));
            }
        }
        // The build goes on without its log; say why in one line.
        Err(e) => tracing::warn!(build = %name, "cannot stream the build log: {}", crate::error::chain(&e)),
    }
}

/// The last 20 lines of the build log, masked.
pub async fn log_tail(client: &kube::Client, ns: &str, name: &str) -> String {
    let path = format!("/apis/build.openshift.io/v1/namespaces/{ns}/builds/{name}/log");
    let Ok(req) = http::Request::get(&path).body(Vec::new()) else { return String::new() };
    match client.request_text(req).await {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            crate::secret::mask(&lines[lines.len().saturating_sub(20)..].join("\n"))
        }
        Err(e) => format!("(log unavailable: {e})"),
    }
}
