//! Objects served over plain HTTP GETs (MLflow's artifact proxy): one
//! streamed GET per file into its partial file. The proxy answers no
//! ranges, so a dropped connection starts the file over (up to the
//! download profile's attempts); finished files are kept across calls as
//! any other source's are.

use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use super::verify::Checks;
use super::{Entry, Job, StorageError};

/// A body that sends nothing for this long counts as dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) async fn download(job: &Job, entry: &Entry, url: &str, partial: &Path) -> Result<Checks, StorageError> {
    let backoff = crate::retry::Backoff::DOWNLOAD;
    let (client, auth) = job.http();
    let mut last: Option<String> = None;
    for attempt in 1..=backoff.attempts {
        if attempt > 1 {
            tracing::warn!(url = %entry.url(), attempt, error = %last.as_deref().unwrap_or(""), "download interrupted; starting the file over");
            tokio::time::sleep(backoff.delay(attempt - 1)).await;
        }
        let _permit = job.requests.acquire().await.expect("semaphore never closed");
        let mut req = client.get(url);
        if let Some(a) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, a.clone());
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                last = Some(crate::error::chain(&e));
                continue;
            }
        };
        let status = resp.status();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            last = Some(format!("HTTP {status}"));
            continue;
        }
        if !status.is_success() {
            let op = "GET";
            return Err(match status.as_u16() {
                401 | 403 => StorageError::AccessDenied { url: entry.url(), code: format!("HTTP {status}") },
                404 => StorageError::NotFound { url: entry.url(), endpoint: None },
                _ => StorageError::Request {
                    op,
                    url: entry.url(),
                    message: format!("HTTP {status}"),
                    retryable: false,
                    source: None,
                },
            });
        }
        let mut file = tokio::fs::File::create(partial).await.map_err(|e| StorageError::io("create", partial, e))?;
        let mut body = resp.bytes_stream();
        let mut written = 0u64;
        let broke = loop {
            match tokio::time::timeout(IDLE_TIMEOUT, body.try_next()).await {
                Err(_) => break Some(format!("no data for {}s", IDLE_TIMEOUT.as_secs())),
                Ok(Err(e)) => break Some(crate::error::chain(&e)),
                Ok(Ok(None)) => break None,
                Ok(Ok(Some(bytes))) => {
                    written += bytes.len() as u64;
                    if written > entry.size {
                        return Err(StorageError::Mismatch {
                            url: entry.url(),
                            what: "size".into(),
                            expected: format!("{} bytes (as listed)", entry.size),
                            actual: "more".into(),
                        });
                    }
                    file.write_all(&bytes).await.map_err(|e| StorageError::io("write", partial, e))?;
                    job.progress.add(bytes.len() as u64);
                }
            }
        };
        file.flush().await.map_err(|e| StorageError::io("write", partial, e))?;
        match broke {
            None => return Ok(Checks::default()),
            Some(why) => last = Some(why),
        }
    }
    Err(StorageError::Interrupted {
        url: entry.url(),
        offset: 0,
        size: entry.size,
        attempts: backoff.attempts,
        source: last.unwrap_or_else(|| "interrupted".into()).into(),
    })
}
