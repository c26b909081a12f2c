//! The build log: written by the controller, served by `.../builds/NAME/log`
//! (`?follow=true` streams it until the build ends).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::super::SimApi;
use super::super::server::SubresourceRequest;
use super::super::status::ApiError;
use super::{BUILDS, build_dir, is_terminal, phase_of};

pub(super) fn append_log(dir: &Path, text: &str) {
    let _ = std::fs::create_dir_all(dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("build.log")) {
        let _ = f.write_all(text.as_bytes());
    }
}

pub(super) async fn build_log(api: SimApi, req: SubresourceRequest) -> Response {
    let ns = req.info.namespace.clone().unwrap_or_default();
    let name = req.info.name.clone().unwrap_or_default();
    if api.store.get(&BUILDS, &ns, &name).is_none() {
        return ApiError::not_found(&BUILDS, &name).into_response();
    }
    let follow = url::form_urlencoded::parse(req.raw_query.as_bytes())
        .any(|(k, v)| k == "follow" && matches!(v.as_ref(), "true" | "1"));
    let path = build_dir(&api, &ns, &name).join("build.log");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut offset = 0usize;
        loop {
            // Read the phase before the file, so the last lines written
            // before the build ended are always sent.
            let done = !follow || api.store.get(&BUILDS, &ns, &name).is_none_or(|b| is_terminal(phase_of(&b)));
            let data = tokio::fs::read(&path).await.unwrap_or_default();
            if data.len() > offset {
                if tx.send(Ok(data[offset..].to_vec())).await.is_err() {
                    return;
                }
                offset = data.len();
            }
            if done {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tx.closed() => return,
                _ = api.shutdown.cancelled() => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .expect("static response parts are valid")
}
