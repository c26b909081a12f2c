//! `?watch=1`: the watch stream of one kind.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;

use super::super::SimApi;
use super::super::resource::ResourceType;
use super::super::status::ApiError;
use super::super::store::{Event, EventType, labels_of, resource_version_of};
use super::table::table;
use super::{Query, selectors};

/// Watches without `timeoutSeconds` end after this, as the API server's
/// `--min-request-timeout` does; clients re-watch.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);

/// `?watch=1`: newline-delimited watch events, from `resourceVersion` (or
/// the current state first when it is unset or `0`), until the client goes,
/// `timeoutSeconds` passes or the sim stops.
pub(super) async fn watch(
    api: SimApi,
    rt: Arc<ResourceType>,
    ns: Option<String>,
    query: Query,
    as_table: bool,
    cut: bool,
) -> Result<Response, ApiError> {
    let (labels, fields) = selectors(&query)?;
    let from = match query.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => {
            Some(s.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))?)
        }
    };
    let from = if query.send_initial_events { None } else { from };
    let (backlog, current_rv, mut rx) = match api.store.subscribe(&rt.key(), ns.as_deref(), from) {
        Ok(s) => s,
        // As the API server does: a watch from a compacted version is
        // answered 200 with one ERROR event carrying the 410 Status; the
        // client re-lists.
        Err(e) if e.code == 410 => {
            let line = format!("{}\n", json!({ "type": "ERROR", "object": e.body() }));
            return Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(line))
                .expect("static response parts are valid"));
        }
        Err(e) => return Err(e),
    };
    let timeout = query.timeout_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let (tx, out) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let shutdown = api.shutdown.clone();
    let resource = rt.key();
    tokio::spawn(async move {
        let matches = |o: &Value| labels.matches(&labels_of(o)) && fields.matches(o);
        let mut first_table = true;
        let mut encode = |kind: &str, obj: &Value| -> Bytes {
            let object = if as_table && kind != "BOOKMARK" {
                let t = table(
                    &rt,
                    std::slice::from_ref(obj),
                    resource_version_of(obj).unwrap_or(0),
                    query.include_object.as_deref(),
                    first_table,
                );
                first_table = false;
                t
            } else {
                obj.clone()
            };
            let mut line = json!({ "type": kind, "object": object }).to_string();
            line.push('\n');
            Bytes::from(line)
        };
        // What a filtered watcher sees of a change.
        let view = |e: &Event| -> Option<&'static str> {
            let now = matches(&e.object);
            let before = e.previous.as_deref().is_some_and(matches);
            match (e.kind, before, now) {
                (EventType::Deleted, true, _) => Some("DELETED"),
                (EventType::Deleted, false, _) => None,
                (_, false, true) => Some("ADDED"),
                (_, true, true) => Some("MODIFIED"),
                (_, true, false) => Some("DELETED"),
                (_, false, false) => None,
            }
        };
        let bookmark = |rv: u64, initial_end: bool| {
            let mut meta = json!({ "resourceVersion": rv.to_string() });
            if initial_end {
                meta["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
            }
            json!({ "kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta })
        };
        let mut last_rv = from.unwrap_or(0);
        for e in &backlog {
            let kind = if from.is_none() { if matches(&e.object) { Some("ADDED") } else { None } } else { view(e) };
            if let Some(kind) = kind
                && tx.send(Ok(encode(kind, &e.object))).await.is_err()
            {
                return;
            }
            last_rv = last_rv.max(e.rv);
        }
        // Everything up to the subscription point has been seen.
        last_rv = last_rv.max(if from.is_none() { current_rv } else { last_rv });
        if query.send_initial_events
            && query.allow_bookmarks
            && tx.send(Ok(encode("BOOKMARK", &bookmark(current_rv, true)))).await.is_err()
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if query.allow_bookmarks => {
                    if tx.send(Ok(encode("BOOKMARK", &bookmark(last_rv, false)))).await.is_err() {
                        return;
                    }
                }
                r = rx.recv() => match r {
                    Ok(e) => {
                        if e.rv <= last_rv || e.resource != resource || ns.as_deref().is_some_and(|n| n != e.namespace) {
                            continue;
                        }
                        last_rv = e.rv;
                        if let Some(kind) = view(&e)
                            && tx.send(Ok(encode(kind, &e.object))).await.is_err() {
                                return;
                            }
                    }
                    // Too slow a reader: end the watch; the client resumes
                    // from its last resourceVersion (or re-lists on 410).
                    Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                }
            }
        }
    });
    let events = ReceiverStream::new(out);
    let body = if cut {
        // An injected cut: after the first event the stream breaks (hyper
        // aborts the chunked body), as when a proxy drops a long watch.
        use futures::StreamExt;
        // The pause lets hyper flush the first event before it aborts.
        let broken = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::other("sim: injected watch cut"))
        });
        Body::from_stream(events.take(1).chain(broken))
    } else {
        Body::from_stream(events)
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("static response parts are valid"))
}
