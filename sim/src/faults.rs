//! The sim's fault-injection point: a middleware in front of every API
//! request, after the request is resolved to verb/resource/namespace/name.
//! It answers `403 Forbidden` for the resources named in
//! [`Faults::forbidden`], and injects the failures of [`Faults::inject`]:
//! 500, 503, 429 with `Retry-After`, a dropped connection (before or after
//! the request is processed), a delay, a watch cut mid-stream, a 409 on
//! update, a body cut halfway. Rules fire on every Nth matching request, so
//! a test run is repeatable; what fired is counted and served at
//! `GET /sim/faults`.
//!
//! The integrated registry (`/v2/`) is behind the same rules
//! ([`registry_layer`], inside its access controller as this layer is
//! inside authentication): a registry request is resource `registry`, its
//! subresource `blobs`, `manifests`, `uploads` or `tags`, verb `get`
//! (GET/HEAD), `update` (POST/PUT/PATCH) or `delete`, namespace the
//! repository's project. Only rules whose selector names `registry` apply
//! to it (`503/3=registry`, `cut-body/2=registry/blobs:get@models-dev`), so
//! an API rule never changes what the registry does.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::SimApi;
use super::server::{Query, RequestInfo};
use super::status::ApiError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub forbidden: Vec<ForbiddenRule>,
    /// Injected failures, checked in order; the first rule that fires wins.
    pub inject: Vec<FaultRule>,
}

/// What an injected fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `500 InternalError`, nothing processed.
    Internal,
    /// `503 ServiceUnavailable`, nothing processed.
    Unavailable,
    /// `429 TooManyRequests` with `Retry-After: SECS`, nothing processed.
    TooMany { retry_after: u32 },
    /// Close the connection without an answer, nothing processed.
    Drop,
    /// Process the request, then close the connection without its answer
    /// (the client cannot tell whether its write happened).
    Lose,
    /// Answer after this long.
    Delay(Duration),
    /// A watch: send the first event, then break the stream.
    CutWatch,
    /// `409 Conflict` on update/patch, nothing processed.
    Conflict,
    /// Process the request, send the headers and the first half of the
    /// body (of a blob, say), then close the connection.
    CutBody,
}

impl FaultKind {
    /// The name in `--fault` rules and `/sim/faults` counts.
    pub fn label(&self) -> &'static str {
        match self {
            FaultKind::Internal => "500",
            FaultKind::Unavailable => "503",
            FaultKind::TooMany { .. } => "429",
            FaultKind::Drop => "drop",
            FaultKind::Lose => "lose",
            FaultKind::Delay(_) => "delay",
            FaultKind::CutWatch => "cut-watch",
            FaultKind::Conflict => "conflict",
            FaultKind::CutBody => "cut-body",
        }
    }
}

/// One injection rule, written `KIND[+ARG][/EVERY][*TIMES][=SELECTOR]`:
/// KIND is `500`, `503`, `429` (ARG: Retry-After seconds, default 1),
/// `drop`, `lose`, `delay` (ARG: a duration, default 200ms), `cut-watch`,
/// `conflict` or `cut-body`; it fires on every EVERY-th matching request (default 1: all),
/// at most TIMES times; SELECTOR is a [`ForbiddenRule`]
/// (`RESOURCE[.GROUP][:VERB,...][@NAMESPACE]`, RESOURCE `*` for any),
/// default every API resource (`registry[/SUB]` selects registry requests).
/// E.g. `503/3`, `429+2/4=configmaps`, `lose*1=buildconfigs/instantiatebinary.build.openshift.io`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    pub kind: FaultKind,
    pub every: u64,
    pub times: Option<u64>,
    pub on: Option<ForbiddenRule>,
    /// The rule as written, for `/sim/faults`.
    pub text: String,
}

impl FromStr for FaultRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected KIND[+ARG][/EVERY][*TIMES][=SELECTOR], KIND one of 500, 503, 429, drop, lose, delay, cut-watch, conflict, cut-body";
        let (rest, on) = match s.split_once('=') {
            Some((r, sel)) => (r, Some(sel.parse::<ForbiddenRule>()?)),
            None => (s, None),
        };
        let (rest, times) = match rest.split_once('*') {
            Some((r, n)) => (r, Some(n.parse::<u64>().map_err(|_| format!("{s:?}: TIMES {n:?} is not a number"))?)),
            None => (rest, None),
        };
        let (rest, every) = match rest.split_once('/') {
            Some((r, n)) => match n.parse::<u64>() {
                Ok(n) if n > 0 => (r, n),
                _ => return Err(format!("{s:?}: EVERY {n:?} is not a number above 0")),
            },
            None => (rest, 1),
        };
        let (kind, arg) = match rest.split_once('+') {
            Some((k, a)) => (k, Some(a)),
            None => (rest, None),
        };
        let kind = match (kind, arg) {
            ("500", None) => FaultKind::Internal,
            ("503", None) => FaultKind::Unavailable,
            ("429", a) => FaultKind::TooMany {
                retry_after: a
                    .map_or(Ok(1), str::parse)
                    .map_err(|_| format!("{s:?}: Retry-After {a:?} is not seconds"))?,
            },
            ("drop", None) => FaultKind::Drop,
            ("lose", None) => FaultKind::Lose,
            ("delay", a) => FaultKind::Delay(
                a.map_or(Ok(Duration::from_millis(200)), humantime::parse_duration)
                    .map_err(|e| format!("{s:?}: delay: {e}"))?,
            ),
            ("cut-watch", None) => FaultKind::CutWatch,
            ("conflict", None) => FaultKind::Conflict,
            ("cut-body", None) => FaultKind::CutBody,
            _ => return Err(format!("{s:?}: {usage}")),
        };
        Ok(FaultRule { kind, every, times, on, text: s.to_string() })
    }
}

impl FaultRule {
    /// Whether the rule names the registry (and applies only to it).
    fn on_registry(&self) -> bool {
        self.on.as_ref().is_some_and(|r| r.resource.split('/').next() == Some(REGISTRY))
    }

    /// Whether the rule applies to this request at all (before counting).
    fn selects(&self, info: &RequestInfo, registry: bool) -> bool {
        let kind_fits = match self.kind {
            FaultKind::CutWatch => !registry && info.verb == "watch",
            FaultKind::Conflict => !registry && matches!(info.verb.as_str(), "update" | "patch"),
            _ => true,
        };
        kind_fits && self.on_registry() == registry && self.on.as_ref().is_none_or(|r| r.denies(info))
    }
}

/// The resource name registry requests go by in fault selectors.
const REGISTRY: &str = "registry";

/// Per-rule match and injection counters (the sim's only fault state).
#[derive(Debug, Default)]
pub struct FaultCounters {
    matched: Vec<AtomicU64>,
    injected: Vec<AtomicU64>,
    /// Off while `--sim` sets the clusters up (the administrator's work,
    /// not under test); on from the start otherwise.
    disarmed: AtomicBool,
}

impl FaultCounters {
    pub fn new(faults: &Faults) -> Self {
        let n = faults.inject.len();
        FaultCounters {
            matched: (0..n).map(|_| AtomicU64::new(0)).collect(),
            injected: (0..n).map(|_| AtomicU64::new(0)).collect(),
            disarmed: AtomicBool::new(false),
        }
    }

    /// Stop (`false`) or start (`true`) injecting; nothing is counted meanwhile.
    pub fn arm(&self, on: bool) {
        self.disarmed.store(!on, Ordering::SeqCst);
    }

    /// The first rule that fires for this request, counted.
    fn fire(&self, faults: &Faults, info: &RequestInfo, registry: bool) -> Option<FaultKind> {
        if self.disarmed.load(Ordering::SeqCst) {
            return None;
        }
        for (i, rule) in faults.inject.iter().enumerate() {
            if !rule.selects(info, registry) {
                continue;
            }
            let k = self.matched[i].fetch_add(1, Ordering::Relaxed) + 1;
            if !k.is_multiple_of(rule.every) {
                continue;
            }
            let fired = self.injected[i]
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    rule.times.is_none_or(|t| n < t).then_some(n + 1)
                })
                .is_ok();
            if fired {
                return Some(rule.kind);
            }
        }
        None
    }

    /// Injected counts per kind and per rule, as served at `/sim/faults`.
    pub fn report(&self, faults: &Faults) -> Value {
        let mut by_kind = serde_json::Map::new();
        let mut rules = Vec::new();
        for (i, rule) in faults.inject.iter().enumerate() {
            let injected = self.injected[i].load(Ordering::Relaxed);
            let e = by_kind.entry(rule.kind.label()).or_insert(json!(0));
            *e = json!(e.as_u64().unwrap_or(0) + injected);
            rules.push(json!({
                "rule": rule.text,
                "matched": self.matched[i].load(Ordering::Relaxed),
                "injected": injected,
            }));
        }
        json!({ "injected": by_kind, "rules": rules })
    }
}

/// Marks a response whose connection the server must close without
/// sending it (`drop`, `lose`); see the accept loop in [`super::start`].
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

/// The service error that makes hyper close a connection unanswered.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
pub struct DroppedByFault;

/// Marks a watch request whose stream is cut after its first event.
#[derive(Debug, Clone, Copy)]
pub struct CutWatch;

/// `GET /sim/faults`
pub async fn report(State(api): State<SimApi>) -> Response {
    axum::Json(api.fault_counters.report(&api.faults)).into_response()
}

/// Deny `verbs` (all when empty) on a resource, optionally only in one
/// namespace. Written `RESOURCE[.GROUP][:VERB,VERB][@NAMESPACE]`, e.g.
/// `builds.build.openshift.io`, `configmaps:create,update@models-dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForbiddenRule {
    pub resource: String,
    pub group: String,
    pub verbs: Vec<String>,
    pub namespace: Option<String>,
}

impl FromStr for ForbiddenRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, namespace) = match s.split_once('@') {
            Some((r, ns)) if !ns.is_empty() => (r, Some(ns.to_string())),
            Some(_) => return Err(format!("{s:?}: empty namespace after '@'")),
            None => (s, None),
        };
        let (res, verbs) = match rest.split_once(':') {
            Some((r, v)) => (r, v.split(',').filter(|v| !v.is_empty()).map(str::to_string).collect()),
            None => (rest, Vec::new()),
        };
        let (resource, group) = match res.split_once('.') {
            Some((r, g)) => (r.to_string(), g.to_string()),
            None => (res.to_string(), String::new()),
        };
        if resource.is_empty() {
            return Err(format!("{s:?}: expected RESOURCE[.GROUP][:VERB,...][@NAMESPACE]"));
        }
        Ok(ForbiddenRule { resource, group, verbs, namespace })
    }
}

impl ForbiddenRule {
    pub(crate) fn denies(&self, info: &RequestInfo) -> bool {
        let plural = match &info.subresource {
            Some(sub) if self.resource.contains('/') => format!("{}/{sub}", info.plural),
            _ => info.plural.clone(),
        };
        // `*` (fault selectors): any resource.
        let any = self.resource == "*";
        (any || plural == self.resource)
            && (info.group == self.group || (any && self.group.is_empty()))
            && (self.verbs.is_empty() || self.verbs.contains(&info.verb))
            && self.namespace.as_ref().is_none_or(|ns| info.namespace.as_ref() == Some(ns))
    }
}

/// The middleware: resolve the request, then inject the configured faults.
pub async fn layer(State(api): State<SimApi>, mut req: Request, next: Next) -> Response {
    // Authentication resolved the request already (see `super::authn::layer`).
    let info = match req.extensions().get::<RequestInfo>() {
        Some(info) => info.clone(),
        None => {
            let query = Query::parse(req.uri().query()).unwrap_or_default();
            RequestInfo::resolve(&api.table, req.method(), req.uri().path(), &query)
        }
    };
    if info.resource.is_some() && api.faults.forbidden.iter().any(|r| r.denies(&info)) {
        let attrs = super::rbac::Attributes::of(&info, req.uri().path());
        return super::rbac::forbidden(&attrs, &info.user, "").into_response();
    }
    let fault = info.resource.as_ref().and_then(|_| api.fault_counters.fire(&api.faults, &info, false));
    if let Some(kind) = fault {
        tracing::info!(fault = kind.label(), verb = %info.verb, resource = %info.plural, name = ?info.name, "sim: injecting a fault");
    }
    let what = match &info.subresource {
        Some(sub) => format!("{} {}/{sub}", info.verb, info.plural),
        None => format!("{} {}", info.verb, info.plural),
    };
    req.extensions_mut().insert(info);
    let injected = |code, retry_after| {
        ApiError::injected(code, format!("sim: injected fault on {what}"), retry_after).into_response()
    };
    match fault {
        None => next.run(req).await,
        Some(FaultKind::Internal) => injected(500, None),
        Some(FaultKind::Unavailable) => injected(503, None),
        Some(FaultKind::TooMany { retry_after }) => injected(429, Some(retry_after)),
        Some(FaultKind::Conflict) => injected(409, None),
        Some(FaultKind::Drop) => {
            let mut r = Response::default();
            r.extensions_mut().insert(DropConnection);
            r
        }
        Some(FaultKind::Lose) => {
            let mut r = next.run(req).await;
            r.extensions_mut().insert(DropConnection);
            r
        }
        Some(FaultKind::Delay(d)) => {
            tokio::time::sleep(d).await;
            next.run(req).await
        }
        Some(FaultKind::CutWatch) => {
            req.extensions_mut().insert(CutWatch);
            next.run(req).await
        }
        Some(FaultKind::CutBody) => cut_body(next.run(req).await),
    }
}

/// A registry request as fault selectors see it (see the module docs);
/// `None` for `/v2/` itself and paths that are no registry route.
fn registry_info(method: &axum::http::Method, path: &str) -> Option<RequestInfo> {
    use super::registry::Route;
    use axum::http::Method;
    let rest = path.strip_prefix("/v2/")?;
    let (repo, sub) = match super::registry::route(rest)? {
        Route::Tags(n) => (n, "tags"),
        Route::Manifest(n, _) => (n, "manifests"),
        Route::Upload(n, _) => (n, "uploads"),
        Route::Blob(n, _) => (n, "blobs"),
    };
    let verb = match *method {
        Method::GET | Method::HEAD => "get",
        Method::DELETE => "delete",
        _ => "update",
    };
    Some(RequestInfo {
        verb: verb.into(),
        group: String::new(),
        version: String::new(),
        resource: None,
        plural: REGISTRY.into(),
        namespace: repo.split_once('/').map(|(ns, _)| ns.to_string()),
        name: Some(repo.to_string()),
        subresource: Some(sub.to_string()),
        user: String::new(),
    })
}

/// An error in the distribution API's shape (`{"errors": [...]}`), as
/// docker/distribution's `registry/api/errcode` writes it.
fn registry_error(code: u16, retry_after: Option<u32>, what: &str) -> Response {
    let name = match code {
        503 => "UNAVAILABLE",
        429 => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    };
    let body = json!({"errors": [{"code": name, "message": format!("sim: injected fault on {what}")}]});
    let status = axum::http::StatusCode::from_u16(code).expect("a valid status");
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
    }
    resp
}

/// The middleware in front of the registry routes (inside the registry's
/// access controller): the rules that name `registry`.
pub async fn registry_layer(State(api): State<SimApi>, req: Request, next: Next) -> Response {
    let Some(info) = registry_info(req.method(), req.uri().path()) else { return next.run(req).await };
    let Some(kind) = api.fault_counters.fire(&api.faults, &info, true) else { return next.run(req).await };
    let what = format!("{} {}", req.method(), req.uri().path());
    tracing::info!(fault = kind.label(), request = %what, "sim: injecting a registry fault");
    let dropped = || {
        let mut r = Response::default();
        r.extensions_mut().insert(DropConnection);
        r
    };
    match kind {
        FaultKind::Internal => registry_error(500, None, &what),
        FaultKind::Unavailable => registry_error(503, None, &what),
        FaultKind::TooMany { retry_after } => registry_error(429, Some(retry_after), &what),
        FaultKind::Drop => dropped(),
        FaultKind::Lose => {
            let mut r = next.run(req).await;
            r.extensions_mut().insert(DropConnection);
            r
        }
        FaultKind::Delay(d) => {
            tokio::time::sleep(d).await;
            next.run(req).await
        }
        FaultKind::CutBody => cut_body(next.run(req).await),
        // Not selected for the registry (see `FaultRule::selects`).
        FaultKind::CutWatch | FaultKind::Conflict => next.run(req).await,
    }
}

/// Send the headers (with the full Content-Length) and the first half of
/// the body, then fail the body so hyper closes the connection: the client
/// sees a response cut short. An empty body: the connection is dropped.
fn cut_body(resp: Response) -> Response {
    use futures::StreamExt;
    let (parts, body) = resp.into_parts();
    let len: u64 = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len == 0 {
        let mut r = Response::default();
        r.extensions_mut().insert(DropConnection);
        return r;
    }
    let keep = (len / 2).max(1);
    let stream = futures::stream::unfold((body.into_data_stream(), 0u64), move |(mut body, sent)| async move {
        if sent >= keep {
            let cut = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "body cut by an injected fault");
            return Some((Err(cut), (body, u64::MAX)));
        }
        if sent == u64::MAX {
            return None;
        }
        match body.next().await {
            Some(Ok(mut chunk)) => {
                let room = usize::try_from(keep - sent).unwrap_or(usize::MAX);
                if chunk.len() > room {
                    chunk.truncate(room);
                }
                let n = chunk.len() as u64;
                Some((Ok(chunk), (body, sent + n)))
            }
            Some(Err(e)) => Some((Err(std::io::Error::other(e)), (body, u64::MAX))),
            None => None,
        }
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let r: ForbiddenRule = "configmaps:create,update@dev".parse().unwrap();
        assert_eq!(
            r,
            ForbiddenRule {
                resource: "configmaps".into(),
                group: String::new(),
                verbs: vec!["create".into(), "update".into()],
                namespace: Some("dev".into())
            }
        );
        let r: ForbiddenRule = "builds.build.openshift.io".parse().unwrap();
        assert_eq!((r.resource.as_str(), r.group.as_str(), r.verbs.len()), ("builds", "build.openshift.io", 0));
        assert!("".parse::<ForbiddenRule>().is_err());
        assert!("x@".parse::<ForbiddenRule>().is_err());
    }

    #[test]
    fn fault_rules_parse() {
        let r: FaultRule = "429+2/4*3=configmaps:update@dev".parse().unwrap();
        assert_eq!(r.kind, FaultKind::TooMany { retry_after: 2 });
        assert_eq!((r.every, r.times), (4, Some(3)));
        assert_eq!(r.on.unwrap().namespace.as_deref(), Some("dev"));
        let r: FaultRule = "delay+50ms".parse().unwrap();
        assert_eq!((r.kind, r.every, r.on), (FaultKind::Delay(Duration::from_millis(50)), 1, None));
        let r: FaultRule = "lose*1=buildconfigs/instantiatebinary.build.openshift.io".parse().unwrap();
        assert_eq!(r.on.unwrap().resource, "buildconfigs/instantiatebinary");
        for bad in ["", "404", "503/0", "drop+1", "503/x", "500*y"] {
            assert!(bad.parse::<FaultRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_nth_and_times() {
        let table = crate::build_table();
        let info = |m: &str, path: &str| RequestInfo::resolve(&table, &m.parse().unwrap(), path, &Query::default());
        let faults = Faults { forbidden: vec![], inject: vec!["503/2*2=configmaps".parse().unwrap()] };
        let c = FaultCounters::new(&faults);
        let cm = info("GET", "/api/v1/namespaces/a/configmaps/x");
        let fired: Vec<bool> = (0..6).map(|_| c.fire(&faults, &cm, false).is_some()).collect();
        assert_eq!(fired, [false, true, false, true, false, false]);
        assert!(c.fire(&faults, &info("GET", "/api/v1/namespaces/a/secrets/x"), false).is_none());
        assert_eq!(c.report(&faults)["injected"]["503"], 2);
        let faults = Faults { forbidden: vec![], inject: vec!["conflict".parse().unwrap()] };
        let c = FaultCounters::new(&faults);
        assert!(c.fire(&faults, &cm, false).is_none(), "conflict only on update/patch");
        assert!(c.fire(&faults, &info("PUT", "/api/v1/namespaces/a/configmaps/x"), false).is_some());
    }

    #[test]
    fn registry_requests_meet_only_registry_rules() {
        let get = |p: &str| registry_info(&axum::http::Method::GET, p).unwrap();
        let blob = get("/v2/models-dev/weather/blobs/sha256:ab");
        assert_eq!((blob.plural.as_str(), blob.subresource.as_deref()), ("registry", Some("blobs")));
        assert_eq!(blob.namespace.as_deref(), Some("models-dev"));
        let put = registry_info(&axum::http::Method::PUT, "/v2/a/b/blobs/uploads/123").unwrap();
        assert_eq!((put.verb.as_str(), put.subresource.as_deref()), ("update", Some("uploads")));
        assert_eq!(get("/v2/a/b/manifests/v1").subresource.as_deref(), Some("manifests"));
        assert_eq!(get("/v2/a/b/tags/list").subresource.as_deref(), Some("tags"));
        assert!(registry_info(&axum::http::Method::GET, "/v2/").is_none());
        assert_eq!(get("/v2/ns/blobs/app/blobs/sha256:1").name.as_deref(), Some("ns/blobs/app"));

        let faults = Faults {
            forbidden: vec![],
            inject: vec!["503".parse().unwrap(), "500=registry/blobs:get@models-dev".parse().unwrap()],
        };
        let c = FaultCounters::new(&faults);
        assert_eq!(c.fire(&faults, &blob, true), Some(FaultKind::Internal), "the unscoped 503 is the API's");
        assert_eq!(c.fire(&faults, &get("/v2/a/b/manifests/v1"), true), None);
        assert_eq!(c.fire(&faults, &get("/v2/models-prod/w/blobs/sha256:ab"), true), None);
        c.arm(false);
        assert_eq!(c.fire(&faults, &blob, true), None, "disarmed");
        c.arm(true);
        assert!("cut-body/2=registry/blobs".parse::<FaultRule>().is_ok());
    }
}
