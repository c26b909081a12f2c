//! The audit log, `DATA/audit.log`: one JSON object a request, shaped like
//! kube-apiserver's `audit.k8s.io/v1` Event at level `Metadata` (who, what
//! verb on which object, the response code; never a body or a credential).
//! Appended and flushed line by line; API and registry requests alike.
//!
//! The outermost middleware ([`layer`]) opens a record for each request;
//! authentication and authorization (API: [`super::authn`], registry:
//! [`super::registry`]) fill in the user and the object through the
//! [`AuditSlot`] in the request's extensions; the code is taken from the
//! response. A watch is logged when its stream ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::SimError;

/// The file every record goes to.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).finish()
    }
}

impl AuditLog {
    pub fn open(data_dir: &Path) -> Result<AuditLog, SimError> {
        let path = data_dir.join("audit.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| SimError::Io { path: path.clone(), source })?;
        Ok(AuditLog { path, file: Mutex::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, event: &Value) {
        let mut line = event.to_string();
        line.push('\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.flush()) {
            tracing::warn!(path = %self.path.display(), error = %e, "sim: cannot write the audit log");
        }
    }
}

/// What the request is, as authentication and authorization learn it.
#[derive(Debug, Clone, Default)]
pub struct AuditFacts {
    pub username: Option<String>,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub verb: Option<String>,
    /// `objectRef`; absent for non-resource requests.
    pub object: Option<ObjectRef>,
}

#[derive(Debug, Clone, Default)]
pub struct ObjectRef {
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub api_group: String,
    pub api_version: String,
}

/// Shared between the audit layer and the layers inside it.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(pub Arc<Mutex<AuditFacts>>);

impl AuditSlot {
    pub fn fill(&self, f: impl FnOnce(&mut AuditFacts)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Set on responses that are long-running (watches): logged at stream end.
#[derive(Debug, Clone, Copy)]
pub struct LongRunning;

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

struct Pending {
    log: Arc<AuditLog>,
    base: Value,
    slot: AuditSlot,
    code: u16,
}

impl Pending {
    fn finish(&self, stage: &str) {
        let facts = self.slot.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut ev = self.base.clone();
        ev["stage"] = json!(stage);
        ev["stageTimestamp"] = json!(now());
        ev["responseStatus"] = json!({ "metadata": {}, "code": self.code });
        let mut user = json!({ "username": facts.username.unwrap_or_else(|| "system:anonymous".into()) });
        if let Some(uid) = facts.uid {
            user["uid"] = json!(uid);
        }
        if !facts.groups.is_empty() {
            user["groups"] = json!(facts.groups);
        }
        ev["user"] = user;
        if let Some(v) = facts.verb {
            ev["verb"] = json!(v);
        }
        if let Some(o) = facts.object {
            let mut r = json!({ "resource": o.resource, "apiVersion": o.api_version });
            if !o.api_group.is_empty() {
                r["apiGroup"] = json!(o.api_group);
            }
            for (k, v) in [("subresource", o.subresource), ("namespace", o.namespace), ("name", o.name)] {
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    r[k] = json!(v);
                }
            }
            ev["objectRef"] = r;
        }
        self.log.write(&ev);
    }
}

/// Logs a long-running response when its body is dropped (ended or cut).
struct OnDrop(Pending);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.finish("ResponseComplete");
    }
}

/// The outermost middleware: one record a request.
pub async fn layer(State(log): State<Arc<AuditLog>>, mut req: Request, next: Next) -> Response {
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let uri = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let method = req.method().as_str().to_lowercase();
    slot.fill(|f| f.verb = Some(method));
    let mut base = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": super::store::new_uid(),
        "requestURI": uri,
        "sourceIPs": ["127.0.0.1"],
        "requestReceivedTimestamp": now(),
    });
    if let Some(ua) = req.headers().get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        base["userAgent"] = json!(ua);
    }
    let resp = next.run(req).await;
    let pending = Pending { log, base, slot, code: resp.status().as_u16() };
    if resp.extensions().get::<LongRunning>().is_none() {
        pending.finish("ResponseComplete");
        return resp;
    }
    pending.finish("ResponseStarted");
    use futures::StreamExt;
    let (parts, body) = resp.into_parts();
    let guard = OnDrop(pending);
    let stream = body.into_data_stream().map(move |chunk| {
        let _ = &guard;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}
