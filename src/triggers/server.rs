//! `modelship serve`: the webhook endpoint.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /hooks/github`, `POST /hooks/gitlab` | 202 with what runs and why (runs go on in the background) |
//! | bad or missing signature/token | 401, nothing runs |
//! | body above `max_body_bytes` | 413 |
//! | body not received within `body_read_timeout` | 408 |
//! | malformed JSON, missing event or delivery header, not a push payload | 400 |
//! | delivery id seen within the replay window | 409 |
//! | another repository's push, commits the checkout lacks, a bad pipeline file | 422 |
//! | the pushed commits could not be fetched from the repository's remote | 502 |
//! | more selected runs than the queue holds, or the server is shutting down | 503 (the delivery may be redelivered) |
//! | event type other than push (`ping`, ...), tag push, deleted branch | 202 with `ignored` and the reason |
//!
//! A wrong event type is answered 202 rather than 400 because GitHub sends
//! `ping` when a webhook is created and shows any 4xx as a failed delivery.
//! Deliveries are authenticated before anything else is looked at.
//!
//! Limits a server facing the internet needs: headers not received within
//! `header_read_timeout` close the connection (hyper's http1 timer), a body
//! not received within `body_read_timeout` is 408, and at most
//! `max_connections` connections are served at once (more wait in the
//! listen backlog) — so slow or idle clients hold a connection for a
//! bounded time and cannot starve the others.
//!
//! Runs are queued per model (`spec.model.name`): at most one run of a
//! model at a time, since two would race on the same deployment, and runs
//! of different models in parallel up to `max_concurrent_runs`. A run still
//! queued when a newer delivery selects the same pipeline is `superseded`
//! (the newer commit contains its changes) and never starts; a running run
//! always finishes.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::TriggerError;
use super::event::{EventKind, Provider};
use super::metrics::{Delivery, Metrics};
use super::replay::ReplayGuard;
use super::runner::{PipelineRunner, RunRequest};
use super::select::{TriggerRequest, plan};
use super::signature::{self, GITHUB_HEADER, GITLAB_HEADER};
use crate::error::{ExitClass, HasExitClass};
use crate::secret::Secret;
use crate::state::{PromotionResult, Status};

/// How the server behaves; see `modelship serve --help` for the flags.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub repo: std::path::PathBuf,
    pub pipelines: std::path::PathBuf,
    /// `None` only with `--insecure-no-signature`.
    pub secret: Option<Secret>,
    /// Repository URLs payloads must come from; empty: the checkout's remotes.
    pub expect_repo: Vec<String>,
    /// Fetch pushed commits the checkout lacks from the payload's remote.
    pub fetch: bool,
    pub max_body_bytes: usize,
    pub max_concurrent_runs: usize,
    /// Runs waiting for a slot, beyond which deliveries get 503.
    pub max_queued_runs: usize,
    pub replay_capacity: usize,
    pub replay_ttl: Duration,
    /// How long shutdown waits for cancelled runs to record their state.
    pub shutdown_grace: Duration,
    /// How many finished runs `GET /runs` remembers.
    pub recent_runs: usize,
    /// A client that has not sent its request headers by then is disconnected.
    pub header_read_timeout: Duration,
    /// A body not received by then is answered 408.
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            repo: ".".into(),
            pipelines: "pipelines".into(),
            secret: None,
            expect_repo: Vec::new(),
            fetch: true,
            // GitHub caps payloads at 25 MB; push payloads are far smaller.
            max_body_bytes: 5 * 1024 * 1024,
            max_concurrent_runs: 2,
            max_queued_runs: 64,
            replay_capacity: 10_000,
            replay_ttl: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(30),
            recent_runs: 200,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 256,
        }
    }
}

/// One run as `GET /runs` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunEntry {
    pub id: String,
    pub delivery: String,
    pub provider: String,
    pub pipeline: String,
    pub model: String,
    pub commit: String,
    pub branch: String,
    /// queued, running, succeeded, failed, cancelled, superseded, dispatched
    pub status: String,
    /// The id of the newer run that replaced this queued one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub queued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What the run's promote stages did, once it finished.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<PromotionResult>,
    /// The gates that stopped its stages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gate_failures: Vec<String>,
}

/// A selected run that has not started.
struct Waiting {
    id: String,
    req: RunRequest,
    /// When its push arrived: the start of `modelship_push_to_promotion_seconds`.
    received: jiff::Timestamp,
}

/// The models with a run in progress and the runs waiting, oldest first.
/// Lock order: `queue`, then `runs`, then `tasks`.
#[derive(Default)]
struct Queue {
    busy: HashSet<String>,
    waiting: VecDeque<Waiting>,
}

struct App {
    config: ServerConfig,
    runner: Arc<dyn PipelineRunner>,
    queue: Mutex<Queue>,
    /// Bounds concurrent selections (git work on blocking threads).
    selecting: Semaphore,
    replay: Mutex<ReplayGuard>,
    runs: Mutex<VecDeque<RunEntry>>,
    metrics: Metrics,
    cancel: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl App {
    fn counts(&self) -> (usize, usize) {
        let runs = lock(&self.runs);
        let queued = runs.iter().filter(|r| r.status == "queued").count();
        let running = runs.iter().filter(|r| r.status == "running").count();
        (queued, running)
    }

    fn add_run(&self, entry: RunEntry) {
        let mut runs = lock(&self.runs);
        runs.push_front(entry);
        // Forget the oldest finished runs; queued and running ones always stay.
        while runs.len() > self.config.recent_runs {
            match runs.iter().rposition(|r| r.status != "queued" && r.status != "running") {
                Some(i) => {
                    runs.remove(i);
                }
                None => break,
            }
        }
    }

    fn update_run(&self, id: &str, f: impl FnOnce(&mut RunEntry)) {
        if let Some(r) = lock(&self.runs).iter_mut().find(|r| r.id == id) {
            f(r);
        }
    }

    /// Queue `w`, replacing a waiting run of the same pipeline from an
    /// earlier delivery.
    fn enqueue(&self, q: &mut Queue, w: Waiting) {
        let (older, kept) = std::mem::take(&mut q.waiting)
            .into_iter()
            .partition::<VecDeque<_>, _>(|o| o.req.model == w.req.model && o.req.pipeline == w.req.pipeline);
        q.waiting = kept;
        for old in older {
            self.metrics.run(&old.req.pipeline, "superseded");
            info!(
                id = %old.id,
                pipeline = %old.req.pipeline,
                commit = %old.req.commit,
                by = %w.id,
                "queued run superseded by a newer push; it will not start"
            );
            self.update_run(&old.id, |r| {
                r.status = "superseded".into();
                r.superseded_by = Some(w.id.clone());
                r.finished_at = Some(now());
            });
        }
        q.waiting.push_back(w);
    }

    /// Start the oldest waiting runs whose model is idle, while slots are
    /// free. Nothing starts once shutdown has begun.
    fn dispatch(self: &Arc<Self>, q: &mut Queue) {
        let limit = self.config.max_concurrent_runs.max(1);
        while !self.cancel.is_cancelled() && q.busy.len() < limit {
            let Some(i) = q.waiting.iter().position(|w| !q.busy.contains(&w.req.model)) else {
                break;
            };
            let w = q.waiting.remove(i).expect("the position is in the queue");
            q.busy.insert(w.req.model.clone());
            self.update_run(&w.id, |r| {
                r.status = "running".into();
                r.started_at = Some(now());
            });
            // No parent: a run dispatched when another finishes is not part of that
            // one, so the span names its own delivery.
            let span = info_span!(parent: None, "trigger_run", id = %w.id, delivery = w.req.delivery.as_deref().unwrap_or(""), pipeline = %w.req.pipeline, model = %w.req.model, commit = %w.req.commit);
            let mut tasks = lock(&self.tasks);
            while tasks.try_join_next().is_some() {}
            tasks.spawn(run_one(self.clone(), w).instrument(span));
        }
    }

    /// On shutdown: every run that has not started ends `cancelled`.
    fn cancel_waiting(&self) {
        let left = std::mem::take(&mut lock(&self.queue).waiting);
        if !left.is_empty() {
            info!(runs = left.len(), "cancelling queued runs that never started");
        }
        for w in left {
            self.metrics.run(&w.req.pipeline, "cancelled");
            self.update_run(&w.id, |r| {
                r.status = "cancelled".into();
                r.error = Some("server shut down before the run started".into());
                r.finished_at = Some(now());
            });
        }
    }
}

/// Serve until `shutdown` resolves; then stop accepting, cancel queued runs
/// and running pipelines, and wait up to `shutdown_grace` for them to
/// record their state. Returns every run as `GET /runs` last showed it.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    runner: Arc<dyn PipelineRunner>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Vec<RunEntry>, TriggerError> {
    let grace = config.shutdown_grace;
    let app = Arc::new(App {
        queue: Mutex::new(Queue::default()),
        selecting: Semaphore::new(4),
        replay: Mutex::new(ReplayGuard::new(config.replay_capacity, config.replay_ttl)),
        runs: Mutex::new(VecDeque::new()),
        metrics: Metrics::default(),
        cancel: CancellationToken::new(),
        tasks: Mutex::new(JoinSet::new()),
        next_id: AtomicU64::new(1),
        config,
        runner,
    });
    let router = Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/gitlab", post(gitlab))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/runs", get(runs))
        .route("/metrics", get(metrics))
        .with_state(app.clone());
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "webhook server listening");
    }
    let limits = (app.config.header_read_timeout, app.config.max_connections);
    let stopping = app.clone();
    let served = accept_loop(listener, router, limits, async move {
        shutdown.await;
        info!("shutting down: no new deliveries; cancelling queued runs and running pipelines");
        // Cancelled first: a delivery still being answered queues nothing after this.
        stopping.cancel.cancel();
        stopping.cancel_waiting();
    })
    .await;
    app.cancel.cancel();
    app.cancel_waiting();
    let mut tasks = std::mem::take(&mut *lock(&app.tasks));
    let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(grace = %humantime::format_duration(grace), left = tasks.len(), "runs did not finish within the shutdown grace period; abandoning them");
        tasks.abort_all();
        // Aborted tasks record themselves (`Release`) as they are dropped.
        while tasks.join_next().await.is_some() {}
    }
    served.map_err(TriggerError::Server)?;
    Ok(lock(&app.runs).iter().cloned().collect())
}

/// Serve connections until `shutdown`, then let open ones finish their
/// current request. axum's `serve` has no header timeout or connection
/// bound, so connections are served by hyper's http1 builder here.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    (header_timeout, max_connections): (Duration, usize),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::ServiceExt;
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.cancel();
    });
    let open = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = open.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                router.clone().oneshot(req.map(Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, "connection closed");
                },
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn github(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    hook(app, Provider::GitHub, headers, body).await
}

async fn gitlab(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    hook(app, Provider::GitLab, headers, body).await
}

async fn runs(State(app): State<Arc<App>>) -> Response {
    let runs: Vec<RunEntry> = lock(&app.runs).iter().cloned().collect();
    axum::Json(json!({ "runs": runs })).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let (queued, running) = app.counts();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render(queued, running))
        .into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Read the body, refusing past `limit` without buffering more than that.
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, (StatusCode, String)> {
    let too_large = || (StatusCode::PAYLOAD_TOO_LARGE, format!("body is larger than the limit of {limit} bytes"));
    if let Some(len) = header_str(headers, header::CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| (StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn hook(app: Arc<App>, provider: Provider, headers: HeaderMap, body: Body) -> Response {
    let received = jiff::Timestamp::now();
    let p = provider.as_str();
    let metrics_app = app.clone();
    let reject = move |status: StatusCode, reason: &'static str, message: String| {
        metrics_app.metrics.delivery(p, Delivery::Rejected(reason));
        let message = crate::secret::mask(&message);
        warn!(provider = p, status = status.as_u16(), reason, "{message}");
        (status, axum::Json(json!({ "error": message }))).into_response()
    };
    // GitLab's token does not depend on the body: refuse before reading it.
    if let (Provider::GitLab, Some(secret)) = (provider, &app.config.secret)
        && let Err(e) = signature::verify_gitlab(secret.expose().as_bytes(), header_str(&headers, GITLAB_HEADER))
    {
        return reject(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string());
    }
    let read =
        tokio::time::timeout(app.config.body_read_timeout, read_limited(&headers, body, app.config.max_body_bytes));
    let read = read.await.unwrap_or_else(|_| {
        let limit = humantime::format_duration(app.config.body_read_timeout);
        Err((StatusCode::REQUEST_TIMEOUT, format!("the body did not arrive within {limit}")))
    });
    let body = match read {
        Ok(b) => b,
        Err((StatusCode::REQUEST_TIMEOUT, message)) => {
            return reject(StatusCode::REQUEST_TIMEOUT, "slow_body", message);
        }
        Err((status, message)) => {
            let reason = if status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "malformed" };
            return reject(status, reason, message);
        }
    };
    if let (Provider::GitHub, Some(secret)) = (provider, &app.config.secret)
        && let Err(e) = signature::verify_github(secret.expose().as_bytes(), &body, header_str(&headers, GITHUB_HEADER))
    {
        return reject(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string());
    }
    let (event_header, delivery_header) = match provider {
        Provider::GitHub => ("X-GitHub-Event", "X-GitHub-Delivery"),
        Provider::GitLab => ("X-Gitlab-Event", "X-Gitlab-Event-UUID"),
    };
    let Some(event_type) = header_str(&headers, event_header).map(str::to_string) else {
        return reject(StatusCode::BAD_REQUEST, "missing_header", format!("missing {event_header} header"));
    };
    let Some(delivery) = header_str(&headers, delivery_header).map(str::to_string).filter(|d| !d.is_empty()) else {
        return reject(StatusCode::BAD_REQUEST, "missing_header", format!("missing {delivery_header} header"));
    };
    let span = info_span!("delivery", provider = p, delivery = %delivery, event = %event_type);
    async move {
        if let EventKind::Other(kind) = EventKind::parse(&event_type) {
            app.metrics.delivery(p, Delivery::Ignored);
            let reason = format!("event type `{kind}` is not a push; nothing runs");
            info!("{reason}");
            return (StatusCode::ACCEPTED, axum::Json(json!({ "delivery": delivery, "ignored": reason, "runs": [] })))
                .into_response();
        }
        if !lock(&app.replay).check_and_insert(&delivery, Instant::now()) {
            return reject(
                StatusCode::CONFLICT,
                "replay",
                format!("delivery {delivery} was already received; ignoring the replay"),
            );
        }
        let req = TriggerRequest {
            event_type,
            provider: Some(provider),
            repo: app.config.repo.clone(),
            pipelines: app.config.pipelines.clone(),
            expect_repo: app.config.expect_repo.clone(),
            source: format!("{p} delivery {delivery}"),
            fetch: app.config.fetch,
        };
        // git2 and file reads block: keep them off the async workers, a few at a time.
        let planned = {
            let _permit = app.selecting.acquire().await;
            tokio::task::spawn_blocking(move || plan(&body, &req)).await
        };
        let plan = match planned {
            Ok(Ok(plan)) => plan,
            Ok(Err(e)) => {
                // Nothing ran: let a redelivery (same id) through once the cause is fixed.
                lock(&app.replay).forget(&delivery);
                return match (&e, e.exit_class()) {
                    (TriggerError::Json { .. } | TriggerError::Payload { .. }, _) => {
                        reject(StatusCode::BAD_REQUEST, "malformed", e.to_string())
                    }
                    (_, ExitClass::BadInput) => {
                        reject(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", e.to_string())
                    }
                    (TriggerError::Fetch { .. }, _) => reject(StatusCode::BAD_GATEWAY, "fetch_failed", e.to_string()),
                    _ => reject(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
                };
            }
            Err(join) => {
                lock(&app.replay).forget(&delivery);
                return reject(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("selection task failed: {join}"));
            }
        };
        let decisions: Vec<_> = plan
            .decisions
            .iter()
            .map(|d| json!({ "pipeline": d.pipeline, "run": d.run, "reason": d.reason, "matched": d.matched }))
            .collect();
        if let Some(reason) = &plan.ignored {
            app.metrics.delivery(p, Delivery::Ignored);
            info!("{reason}");
            return (StatusCode::ACCEPTED, axum::Json(json!({ "delivery": delivery, "ignored": reason, "runs": [] })))
                .into_response();
        }
        let selected: Vec<_> = plan.selected().cloned().collect();
        // Checked and queued under one lock, so racing deliveries cannot overfill it.
        let mut q = lock(&app.queue);
        if app.cancel.is_cancelled() {
            drop(q);
            lock(&app.replay).forget(&delivery);
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; redeliver later".into(),
            );
        }
        let queued = q.waiting.len();
        if queued + selected.len() > app.config.max_queued_runs {
            drop(q);
            lock(&app.replay).forget(&delivery);
            return reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                format!("{queued} runs are already queued (limit {}); redeliver later", app.config.max_queued_runs),
            );
        }
        let event = plan.event.as_ref().expect("a non-ignored plan has its event");
        let branch = event.branch().unwrap_or_default().to_string();
        let mut ids = Vec::new();
        for d in &selected {
            let id = format!("t{}", app.next_id.fetch_add(1, Ordering::Relaxed));
            let req = RunRequest {
                pipeline: d.pipeline.clone(),
                model: d.model.clone(),
                file: d.file.clone(),
                commit: event.after.clone(),
                branch: branch.clone(),
                source: p.to_string(),
                set_commit: d.declares_commit,
                delivery: Some(delivery.clone()),
                pushed_by: event.pusher.clone(),
            };
            app.add_run(RunEntry {
                id: id.clone(),
                delivery: delivery.clone(),
                provider: p.to_string(),
                pipeline: d.pipeline.clone(),
                model: d.model.clone(),
                commit: event.after.clone(),
                branch: branch.clone(),
                status: "queued".into(),
                superseded_by: None,
                run_id: None,
                error: None,
                queued_at: now(),
                started_at: None,
                finished_at: None,
                promotions: Vec::new(),
                gate_failures: Vec::new(),
            });
            ids.push(json!({ "id": id, "pipeline": d.pipeline, "model": d.model, "status": "queued" }));
            app.enqueue(&mut q, Waiting { id, req, received });
        }
        app.dispatch(&mut q);
        drop(q);
        app.metrics.delivery(p, Delivery::Accepted);
        info!(runs = ids.len(), "delivery accepted");
        let changed = plan.changes.as_ref().map(|c| c.files.len()).unwrap_or(0);
        let body = json!({
            "delivery": delivery,
            "ref": event.git_ref,
            "after": event.after,
            "changedFiles": changed,
            "runs": ids,
            "decisions": decisions,
        });
        (StatusCode::ACCEPTED, axum::Json(body)).into_response()
    }
    .instrument(span)
    .await
}

/// Frees the model when its run ends, however it ends: a runner that
/// panics, or a run abandoned after the shutdown grace, must not hold the
/// model or stay `running` in `GET /runs`.
struct Release {
    app: Arc<App>,
    id: String,
    model: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.app.update_run(&self.id, |r| {
            if r.status == "running" {
                r.status = "failed".into();
                r.error = Some("the run ended without a result (it panicked or was abandoned at shutdown)".into());
                r.finished_at = Some(now());
            }
        });
        let mut q = lock(&self.app.queue);
        q.busy.remove(&self.model);
        // The model is free: its next queued run (or another model's) may start.
        self.app.dispatch(&mut q);
    }
}

async fn run_one(app: Arc<App>, w: Waiting) {
    let Waiting { id, req, received } = w;
    let _release = Release { app: app.clone(), id: id.clone(), model: req.model.clone() };
    app.metrics.run(&req.pipeline, "started");
    info!("run started");
    let outcome = app.runner.run(&req, app.cancel.child_token()).await;
    for (stage, secs) in &outcome.stages {
        app.metrics.stage_duration(&req.pipeline, stage, *secs);
    }
    let status = match outcome.status {
        // Handed to Tekton: its PipelineRun is the run id.
        _ if outcome.dispatched.is_some() => "dispatched",
        Status::Succeeded => "succeeded",
        Status::Cancelled => "cancelled",
        _ => "failed",
    };
    app.metrics.run(&req.pipeline, status);
    app.metrics.promotions(&req.model, &outcome, received);
    info!(status, run_id = outcome.run_id.as_deref().unwrap_or(""), "run finished");
    app.update_run(&id, |r| {
        r.status = status.into();
        r.run_id = outcome.run_id.clone();
        r.error = outcome.error.clone();
        r.finished_at = Some(now());
        r.promotions = outcome.promotions.clone();
        r.gate_failures = outcome.gate_failures.clone();
    });
}
