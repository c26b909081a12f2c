//! A transfer on a thread of its own.
//!
//! The data path's transfers (model fetch, image copy) run on a dedicated
//! thread with a single-threaded runtime: their HTTP connections' tasks and
//! the bodies those feed are then polled by one thread instead of being
//! handed between the caller's workers and the thread that awaits. Profiled
//! on the fetch: a futex wake and a context switch per received chunk, a
//! third of the download's CPU on two cores (docs/benchmarks.md).

use std::future::Future;

/// Run `work` on a new thread named `name` with a single-threaded runtime,
/// in the caller's tracing span, and await its output. Dropping the returned
/// future drops `work` too (a cancelled stage stops its transfer). `Err` when
/// the thread or its runtime cannot be started; a panic in `work` panics here.
pub async fn on_own_thread<F>(name: &str, work: F) -> std::io::Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    use tracing::Instrument;
    let span = tracing::Span::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = done_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            tokio::select! {
                out = work.instrument(span) => { let _ = done_tx.send(Ok(out)); }
                _ = stop_rx => {}
            }
        });
    })?;
    let out = done_rx.await;
    drop(stop_tx);
    out.unwrap_or_else(|_| panic!("thread {name} panicked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_elsewhere_and_returns() {
        let caller = std::thread::current().id();
        let (id, name) = on_own_thread("modelship-test", async {
            tokio::task::yield_now().await;
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_string))
        })
        .await
        .unwrap();
        assert_ne!(id, caller);
        assert_eq!(name.as_deref(), Some("modelship-test"));
    }

    #[tokio::test]
    async fn dropping_the_future_stops_the_work() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let guard = async move {
            let _tx = tx; // dropped when the work is dropped
            std::future::pending::<()>().await
        };
        let run = on_own_thread("modelship-test", guard);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), run).await.is_err());
        // The sender went with the dropped work: the receiver sees it closed.
        assert!(rx.await.is_err());
    }
}
