//! Watching one object by name with `kube::runtime`'s watcher (list, watch
//! from that resourceVersion, re-list when the watch is cut or expires),
//! failures backing off by [`Backoff::WATCH`]: what every wait in
//! `cluster/` uses instead of polling.

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};

use crate::retry::Backoff;

/// One object's states as they change.
pub struct Watch<K> {
    events: BoxStream<'static, Result<Option<K>, watcher::Error>>,
    resource: &'static str,
    name: String,
    last: Option<kube::Error>,
}

/// Watch `resource` (a name for messages) `name` through `api`.
pub fn object<K>(api: Api<K>, resource: &'static str, name: &str) -> Watch<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let events = watcher::watch_object(api, name).backoff(Backoff::WATCH.waits()).boxed();
    Watch { events, resource, name: name.to_string(), last: None }
}

impl<K> Watch<K> {
    /// The object's next state (`None` once it is gone). A transient failure
    /// is logged and waited out; a refusal, or failures until the backoff
    /// gives up, end the watch with the last error. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<K>, WatchFailed> {
        loop {
            match self.events.next().await {
                Some(Ok(obj)) => {
                    self.last = None;
                    return Ok(obj);
                }
                Some(Err(e)) => {
                    let e = request_error(e);
                    if is_refusal(&e) {
                        return Err(self.failed(e));
                    }
                    tracing::warn!(resource = self.resource, name = %self.name, error = %e, "watch failed; retrying");
                    self.last = Some(e);
                }
                None => {
                    let e = self.last.take().unwrap_or_else(|| kube::Error::Service("the watch ended".into()));
                    return Err(self.failed(e));
                }
            }
        }
    }

    fn failed(&self, source: kube::Error) -> WatchFailed {
        WatchFailed { resource: self.resource, name: self.name.clone(), source }
    }
}

/// A watch that failed for good: refused, or still failing when its
/// backoff gave up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {resource} {name}: {source}")]
pub struct WatchFailed {
    pub resource: &'static str,
    pub name: String,
    #[source]
    pub source: kube::Error,
}

/// A watcher failure as the request error inside it.
fn request_error(e: watcher::Error) -> kube::Error {
    match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            e
        }
        watcher::Error::WatchError(s) => kube::Error::Api(s),
        other => kube::Error::Service(Box::new(other)),
    }
}

/// 4xx but 409, 410 and 429: asking again does not help.
fn is_refusal(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code < 500 && !matches!(s.code, 409 | 410 | 429))
}
