//! State in the cluster: one ConfigMap per run, one ledger ConfigMap per
//! model, and a Lease per model as the lock. Talks to the API server through
//! `kube` only, so it works the same against OpenShift and the sim.
//!
//! Every write is a compare-and-swap on `metadata.resourceVersion`: read,
//! apply the change, write with the version read; a 409 re-reads and
//! re-applies (bounded attempts, jittered backoff). Nothing is overwritten
//! blindly, and the lock changes hands only through the same CAS.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use sha2::{Digest, Sha256};

use super::{
    Identity, Ledger, LedgerMutation, LockInfo, LockScope, RunKey, RunMutation, RunPredicate, RunRecord, StateError,
    StateStore, now_rfc3339,
};

/// ConfigMap key of a run record.
pub const RUN_KEY: &str = "run.yaml";
/// ConfigMap key of a model's ledger.
pub const LEDGER_KEY: &str = "ledger.yaml";
/// A ledger is trimmed (oldest history first) until its YAML fits here: a
/// quarter of the 1 MiB ConfigMap limit.
pub const LEDGER_MAX_BYTES: usize = 256 * 1024;

pub const LABEL_PIPELINE: &str = "modelship.io/pipeline";
pub const LABEL_MODEL: &str = "modelship.io/model";
pub const LABEL_RUN: &str = "modelship.io/run";
/// `run` or `ledger`, so a list of runs never picks up a ledger.
pub const LABEL_RECORD: &str = "modelship.io/record";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Conflicting writes tolerated before giving up ([`Backoff::CONFLICT`]):
/// enough for 100 writers racing on one ledger.
const MAX_ATTEMPTS: u32 = crate::retry::Backoff::CONFLICT.attempts;

pub struct ConfigMapStore {
    client: kube::Client,
    namespace: String,
    /// For messages: the environment name.
    label: String,
}

impl ConfigMapStore {
    pub fn new(client: kube::Client, namespace: impl Into<String>, label: impl Into<String>) -> Self {
        ConfigMapStore { client, namespace: namespace.into(), label: label.into() }
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn kube_err(&self, what: &str, source: kube::Error) -> StateError {
        StateError::Kube { what: what.to_string(), store: self.describe(), source }
    }

    fn corrupt(&self, what: &str, message: impl Into<String>) -> StateError {
        StateError::Corrupt { what: what.to_string(), store: self.describe(), message: message.into() }
    }

    fn run_what(&self, key: &RunKey) -> String {
        format!("run {}/{} (configmap {})", key.pipeline, key.run_id, run_configmap_name(&key.pipeline, &key.run_id))
    }

    fn run_configmap(&self, run: &RunRecord, resource_version: Option<String>) -> Result<ConfigMap, StateError> {
        let name = run_configmap_name(&run.pipeline, &run.run_id);
        let yaml = crate::spec::yaml::to_string(run)
            .map_err(|e| self.corrupt(&format!("run {}/{}", run.pipeline, run.run_id), e.to_string()))?;
        let labels = BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), "modelship".to_string()),
            (LABEL_RECORD.to_string(), "run".to_string()),
            (LABEL_PIPELINE.to_string(), label_value(&run.pipeline)),
            (LABEL_MODEL.to_string(), label_value(&run.model)),
            (LABEL_RUN.to_string(), label_value(&run.run_id)),
        ]);
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                resource_version,
                ..Default::default()
            },
            data: Some(BTreeMap::from([(RUN_KEY.to_string(), yaml)])),
            ..Default::default()
        })
    }

    fn decode_run(&self, what: &str, cm: &ConfigMap) -> Result<RunRecord, StateError> {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(RUN_KEY))
            .ok_or_else(|| self.corrupt(what, format!("no `{RUN_KEY}` in data")))?;
        crate::spec::yaml::from_str(text).map_err(|e| {
            self.corrupt(what, format!("{RUN_KEY}:{}: {e}", e.line.map(|l| l.to_string()).unwrap_or_default()))
        })
    }

    fn decode_ledger(&self, what: &str, cm: &ConfigMap) -> Result<Ledger, StateError> {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(LEDGER_KEY))
            .ok_or_else(|| self.corrupt(what, format!("no `{LEDGER_KEY}` in data")))?;
        crate::spec::yaml::from_str(text).map_err(|e| {
            self.corrupt(what, format!("{LEDGER_KEY}:{}: {e}", e.line.map(|l| l.to_string()).unwrap_or_default()))
        })
    }

    fn ledger_configmap(
        &self,
        what: &str,
        ledger: &mut Ledger,
        resource_version: Option<String>,
    ) -> Result<ConfigMap, StateError> {
        let yaml = fit_ledger(ledger).map_err(|m| match m {
            FitError::Yaml(e) => self.corrupt(what, e),
            FitError::TooLarge(n) => StateError::Rejected(format!(
                "{what}: one ledger entry needs {n} bytes, over the {LEDGER_MAX_BYTES}-byte budget; record smaller check results"
            )),
        })?;
        let labels = BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), "modelship".to_string()),
            (LABEL_RECORD.to_string(), "ledger".to_string()),
            (LABEL_MODEL.to_string(), label_value(&ledger.model)),
        ]);
        Ok(ConfigMap {
            metadata: ObjectMeta {
                name: Some(ledger_configmap_name(&ledger.model)),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                resource_version,
                ..Default::default()
            },
            data: Some(BTreeMap::from([(LEDGER_KEY.to_string(), yaml)])),
            ..Default::default()
        })
    }

    fn lock_info(model: &str, lease: &Lease) -> LockInfo {
        let spec = lease.spec.clone().unwrap_or_default();
        let renew = spec.renew_time.or(spec.acquire_time.clone()).map(|t| t.0);
        let expires = renew.and_then(|r| {
            r.checked_add(jiff02::SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(0).into())).ok()
        });
        LockInfo {
            model: model.to_string(),
            holder: spec.holder_identity.unwrap_or_default(),
            acquired: spec.acquire_time.map(|t| t.0.to_string()).unwrap_or_default(),
            expires: expires.map(|t| t.to_string()).unwrap_or_default(),
        }
    }

    fn lease_spec(holder: &str, ttl: Duration, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(jiff02::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            // Whole seconds, rounded up: a lock never expires early.
            lease_duration_seconds: Some(ttl.as_secs_f64().ceil().max(1.0) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

use k8s_openapi::jiff as jiff02;

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn is_conflict(e: &kube::Error) -> bool {
    is_status(e, 409)
}

/// The wait after conflict number `attempt` (0-based): [`Backoff::CONFLICT`].
async fn backoff(attempt: u32) {
    tokio::time::sleep(crate::retry::Backoff::CONFLICT.delay(attempt + 1)).await;
}

enum FitError {
    Yaml(String),
    TooLarge(usize),
}

/// Trim the ledger's history to its limit, then further (oldest first)
/// until its YAML fits [`LEDGER_MAX_BYTES`]; the YAML as written.
fn fit_ledger(ledger: &mut Ledger) -> Result<String, FitError> {
    let limit = ledger.limit.max(1);
    if ledger.history.len() > limit {
        let excess = ledger.history.len() - limit;
        ledger.history.drain(..excess);
    }
    loop {
        let yaml = crate::spec::yaml::to_string(ledger).map_err(|e| FitError::Yaml(e.to_string()))?;
        if yaml.len() <= LEDGER_MAX_BYTES {
            return Ok(yaml);
        }
        if ledger.history.is_empty() {
            return Err(FitError::TooLarge(yaml.len()));
        }
        // Drop about the share of history that is over budget (at least one).
        let over = yaml.len() - LEDGER_MAX_BYTES;
        let per = yaml.len() / (ledger.history.len() + 1);
        let n = (over / per.max(1)).clamp(1, ledger.history.len());
        ledger.history.drain(..n);
    }
}

/// Lowercase, invalid characters to `-`, no leading/trailing separators.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..5])
}

/// `PREFIX-part-part`, a valid DNS-1123 subdomain of at most 253
/// characters. When sanitising changed a part or the name had to be cut, a
/// hash of the original parts is appended so distinct inputs stay distinct.
fn object_name(prefix: &str, parts: &[&str]) -> String {
    let clean: Vec<String> = parts.iter().map(|p| sanitize(p)).collect();
    let mut name = std::iter::once(prefix.to_string()).chain(clean.iter().cloned()).collect::<Vec<_>>().join("-");
    let lossy = parts.iter().zip(&clean).any(|(p, c)| *p != c) || name.len() > 253;
    if lossy {
        let suffix = short_hash(parts);
        name.truncate(253 - suffix.len() - 1);
        let mut name = name.trim_end_matches('-').to_string();
        name.push('-');
        name.push_str(&suffix);
        return name;
    }
    name
}

pub fn run_configmap_name(pipeline: &str, run_id: &str) -> String {
    object_name("modelship-run", &[pipeline, run_id])
}

pub fn ledger_configmap_name(model: &str) -> String {
    object_name("modelship-ledger", &[model])
}

pub fn lock_lease_name(model: &str) -> String {
    object_name("modelship-lock", &[model])
}

/// The Lease of a model's lock of `scope`: the promotion lock keeps its
/// name, the run lock is `modelship-run-lock-MODEL`.
pub fn scoped_lease_name(scope: LockScope, model: &str) -> String {
    match scope {
        LockScope::Promotion => lock_lease_name(model),
        LockScope::Run => object_name("modelship-run-lock", &[model]),
    }
}

/// A valid label value (<= 63 characters of `[A-Za-z0-9-_.]`, alphanumeric
/// at both ends) for `s`: itself when already valid, else a sanitised prefix
/// and a hash. The record itself keeps the exact value.
pub fn label_value(s: &str) -> String {
    let valid = s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        return s.to_string();
    }
    let suffix = short_hash(&[s]);
    let mut v = sanitize(s);
    v.truncate(63 - suffix.len() - 1);
    let v = v.trim_end_matches('-');
    if v.is_empty() { suffix } else { format!("{v}-{suffix}") }
}

#[async_trait]
impl StateStore for ConfigMapStore {
    fn describe(&self) -> String {
        format!("configmaps in {}/{}", self.label, self.namespace)
    }

    async fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        let key = RunKey { pipeline: run.pipeline.clone(), run_id: run.run_id.clone() };
        let what = self.run_what(&key);
        let cm = self.run_configmap(run, None)?;
        match self.configmaps().create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Err(StateError::AlreadyExists { what, store: self.describe() }),
            Err(e) => Err(self.kube_err(&what, e)),
        }
    }

    async fn get_run(&self, key: &RunKey) -> Result<Option<RunRecord>, StateError> {
        let what = self.run_what(key);
        let name = run_configmap_name(&key.pipeline, &key.run_id);
        match self.configmaps().get_opt(&name).await.map_err(|e| self.kube_err(&what, e))? {
            Some(cm) => self.decode_run(&what, &cm).map(Some),
            None => Ok(None),
        }
    }

    async fn update_run(&self, key: &RunKey, f: &mut RunMutation<'_>) -> Result<RunRecord, StateError> {
        let what = self.run_what(key);
        let name = run_configmap_name(&key.pipeline, &key.run_id);
        let api = self.configmaps();
        for attempt in 0..MAX_ATTEMPTS {
            let Some(cm) = api.get_opt(&name).await.map_err(|e| self.kube_err(&what, e))? else {
                return Err(StateError::NotFound { what, store: self.describe() });
            };
            let mut run = self.decode_run(&what, &cm)?;
            f(&mut run)?;
            // As the directory store does: `status` and `report` show how long a run took.
            run.updated = now_rfc3339();
            let new = self.run_configmap(&run, cm.metadata.resource_version.clone())?;
            match api.replace(&name, &PostParams::default(), &new).await {
                Ok(_) => return Ok(run),
                Err(e) if is_conflict(&e) => backoff(attempt).await,
                Err(e) if is_status(&e, 404) => return Err(StateError::NotFound { what, store: self.describe() }),
                Err(e) => return Err(self.kube_err(&what, e)),
            }
        }
        Err(StateError::TooManyConflicts { what, attempts: MAX_ATTEMPTS })
    }

    async fn list_runs(&self, model: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        let mut selector = format!("{LABEL_MANAGED_BY}=modelship,{LABEL_RECORD}=run");
        if let Some(m) = model {
            selector.push_str(&format!(",{LABEL_MODEL}={}", label_value(m)));
        }
        let what = format!("runs{}", model.map(|m| format!(" of model {m}")).unwrap_or_default());
        let list = self
            .configmaps()
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.kube_err(&what, e))?;
        let mut runs = Vec::new();
        for cm in &list.items {
            let cm_what = format!("configmap {}", cm.metadata.name.as_deref().unwrap_or("?"));
            match self.decode_run(&cm_what, cm) {
                // The label may be a hashed form of the model name.
                Ok(run) if model.is_none_or(|m| run.model == m) => runs.push(run),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable run record"),
            }
        }
        runs.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.run_id.cmp(&a.run_id)));
        Ok(runs)
    }

    async fn delete_run(&self, key: &RunKey) -> Result<bool, StateError> {
        let what = self.run_what(key);
        let name = run_configmap_name(&key.pipeline, &key.run_id);
        let api = self.configmaps();
        let Some(cm) = api.get_opt(&name).await.map_err(|e| self.kube_err(&what, e))? else { return Ok(false) };
        if !self.decode_run(&what, &cm)?.status.is_terminal() {
            return Ok(false);
        }
        // Only the version just read: a resume that wrote since wins.
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: cm.metadata.resource_version.clone(),
                uid: cm.metadata.uid.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) || is_conflict(&e) => Ok(false),
            Err(e) => Err(self.kube_err(&format!("deleting {what}"), e)),
        }
    }

    async fn get_ledger(&self, model: &str) -> Result<Ledger, StateError> {
        let name = ledger_configmap_name(model);
        let what = format!("ledger of model {model} (configmap {name})");
        match self.configmaps().get_opt(&name).await.map_err(|e| self.kube_err(&what, e))? {
            Some(cm) => self.decode_ledger(&what, &cm),
            None => Ok(Ledger::new(model)),
        }
    }

    async fn update_ledger(&self, model: &str, f: &mut LedgerMutation<'_>) -> Result<Ledger, StateError> {
        let name = ledger_configmap_name(model);
        let what = format!("ledger of model {model} (configmap {name})");
        let api = self.configmaps();
        for attempt in 0..MAX_ATTEMPTS {
            let current = api.get_opt(&name).await.map_err(|e| self.kube_err(&what, e))?;
            let (mut ledger, rv) = match &current {
                Some(cm) => (self.decode_ledger(&what, cm)?, cm.metadata.resource_version.clone()),
                None => (Ledger::new(model), None),
            };
            f(&mut ledger)?;
            let cm = self.ledger_configmap(&what, &mut ledger, rv)?;
            let written = match current {
                // Two first writers: one creates, the other gets 409
                // AlreadyExists and re-reads like any conflict.
                None => api.create(&PostParams::default(), &cm).await,
                Some(_) => api.replace(&name, &PostParams::default(), &cm).await,
            };
            match written {
                Ok(_) => return Ok(ledger),
                Err(e) if is_conflict(&e) || is_status(&e, 404) => backoff(attempt).await,
                Err(e) => return Err(self.kube_err(&what, e)),
            }
        }
        Err(StateError::TooManyConflicts { what, attempts: MAX_ATTEMPTS })
    }

    async fn try_scoped_lock(
        &self,
        scope: LockScope,
        model: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockInfo, StateError> {
        let name = scoped_lease_name(scope, model);
        let what = format!("{scope} lock of model {model} (lease {name})");
        let api = self.leases();
        for attempt in 0..MAX_ATTEMPTS {
            let current = api.get_opt(&name).await.map_err(|e| self.kube_err(&what, e))?;
            let written = match current {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(BTreeMap::from([
                                (LABEL_MANAGED_BY.to_string(), "modelship".to_string()),
                                (LABEL_MODEL.to_string(), label_value(model)),
                            ])),
                            ..Default::default()
                        },
                        spec: Some(Self::lease_spec(holder, ttl, None, 0)),
                    };
                    api.create(&PostParams::default(), &lease).await
                }
                Some(mut lease) => {
                    let info = Self::lock_info(model, &lease);
                    let spec = lease.spec.clone().unwrap_or_default();
                    let held_by = spec.holder_identity.clone().filter(|h| !h.is_empty());
                    let expired = expired(&info);
                    let (acquired, transitions) = match held_by.as_deref() {
                        // Ours already: extend it.
                        Some(h) if h == holder => (spec.acquire_time.clone(), spec.lease_transitions.unwrap_or(0)),
                        Some(h) if !expired => {
                            return Err(StateError::Locked {
                                scope,
                                model: model.to_string(),
                                holder: h.to_string(),
                                expires: info.expires,
                            });
                        }
                        // Free, or its holder let it expire: take it over.
                        _ => (None, spec.lease_transitions.unwrap_or(0) + 1),
                    };
                    lease.spec = Some(Self::lease_spec(holder, ttl, acquired, transitions));
                    api.replace(&name, &PostParams::default(), &lease).await
                }
            };
            match written {
                Ok(lease) => return Ok(Self::lock_info(model, &lease)),
                Err(e) if is_conflict(&e) || is_status(&e, 404) => backoff(attempt).await,
                Err(e) => return Err(self.kube_err(&what, e)),
            }
        }
        Err(StateError::TooManyConflicts { what, attempts: MAX_ATTEMPTS })
    }

    async fn renew_scoped_lock(
        &self,
        scope: LockScope,
        model: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<LockInfo, StateError> {
        let name = scoped_lease_name(scope, model);
        let what = format!("{scope} lock of model {model} (lease {name})");
        let api = self.leases();
        for attempt in 0..MAX_ATTEMPTS {
            let Some(mut lease) = api.get_opt(&name).await.map_err(|e| self.kube_err(&what, e))? else {
                return Err(StateError::NotFound { what, store: self.describe() });
            };
            let spec = lease.spec.clone().unwrap_or_default();
            let held_by = spec.holder_identity.clone().unwrap_or_default();
            if held_by != holder {
                let info = Self::lock_info(model, &lease);
                return Err(StateError::Locked {
                    scope,
                    model: model.to_string(),
                    holder: held_by,
                    expires: info.expires,
                });
            }
            lease.spec =
                Some(Self::lease_spec(holder, ttl, spec.acquire_time.clone(), spec.lease_transitions.unwrap_or(0)));
            match api.replace(&name, &PostParams::default(), &lease).await {
                Ok(lease) => return Ok(Self::lock_info(model, &lease)),
                Err(e) if is_conflict(&e) => backoff(attempt).await,
                Err(e) => return Err(self.kube_err(&what, e)),
            }
        }
        Err(StateError::TooManyConflicts { what, attempts: MAX_ATTEMPTS })
    }

    async fn release_scoped_lock(&self, scope: LockScope, model: &str, holder: &str) -> Result<(), StateError> {
        let name = scoped_lease_name(scope, model);
        let what = format!("{scope} lock of model {model} (lease {name})");
        let api = self.leases();
        for attempt in 0..MAX_ATTEMPTS {
            let Some(lease) = api.get_opt(&name).await.map_err(|e| self.kube_err(&what, e))? else {
                return Ok(());
            };
            if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(holder) {
                return Ok(());
            }
            // Delete only the version we read: if it changed hands in
            // between, the precondition fails and we look again.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: lease.metadata.resource_version.clone(),
                    uid: lease.metadata.uid.clone(),
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(e) if is_conflict(&e) => backoff(attempt).await,
                Err(e) => return Err(self.kube_err(&what, e)),
            }
        }
        Err(StateError::TooManyConflicts { what, attempts: MAX_ATTEMPTS })
    }

    /// A watch on the run's ConfigMap by name ([`crate::cluster::watch`]:
    /// list, watch from that resourceVersion, re-list when the watch is cut
    /// or its version is too old), until `done` holds.
    async fn watch_run(&self, key: &RunKey, done: &mut RunPredicate<'_>) -> Result<RunRecord, StateError> {
        let what = self.run_what(key);
        let name = run_configmap_name(&key.pipeline, &key.run_id);
        let mut watch = crate::cluster::watch::object(self.configmaps(), "configmap", &name);
        loop {
            match watch.next().await {
                Ok(Some(cm)) => {
                    let run = self.decode_run(&what, &cm)?;
                    if done(&run) {
                        return Ok(run);
                    }
                }
                Ok(None) => return Err(StateError::NotFound { what, store: self.describe() }),
                Err(e) => return Err(self.kube_err(&format!("watching {what}"), e.source)),
            }
        }
    }

    async fn whoami(&self) -> Result<Option<Identity>, StateError> {
        crate::cluster::whoami(&self.client)
            .await
            .map(Some)
            .map_err(|e| self.kube_err("SelfSubjectReview (who the credentials are)", e))
    }
}

fn expired(info: &LockInfo) -> bool {
    match info.expires.parse::<jiff02::Timestamp>() {
        Ok(t) => t <= jiff02::Timestamp::now(),
        // No renew time or duration: nobody can be relying on it.
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains_and_distinct() {
        assert_eq!(run_configmap_name("weather", "r-1"), "modelship-run-weather-r-1");
        let odd = run_configmap_name("Weather_Model", "Run 1");
        assert!(odd.starts_with("modelship-run-weather-model-run-1-"), "{odd}");
        assert_ne!(odd, run_configmap_name("weather-model", "run-1"));
        let long = run_configmap_name(&"p".repeat(300), "r");
        assert!(long.len() <= 253);
        // The API server's DNS-1123 subdomain rule, as Kubernetes writes it.
        let subdomain =
            regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap();
        for n in [odd, long, ledger_configmap_name("..."), lock_lease_name("A/B")] {
            assert!(n.len() <= 253 && subdomain.is_match(&n), "{n}");
        }
    }

    #[test]
    fn label_values_are_valid() {
        assert_eq!(label_value("weather"), "weather");
        assert_eq!(label_value(""), "");
        for s in ["a b", &"x".repeat(80), "-lead", "UPPER_ok.1"] {
            let v = label_value(s);
            assert!(v.len() <= 63, "{v}");
            assert!(v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')), "{v}");
        }
        assert_eq!(label_value("UPPER_ok.1"), "UPPER_ok.1");
    }

    #[test]
    fn ledger_fits_its_budget_dropping_oldest_first() {
        let mut l = Ledger::new("m");
        l.limit = 1000;
        for i in 0..400 {
            l.history.push(super::super::LedgerEntry {
                action: "promoted".into(),
                environment: "prod".into(),
                digest: format!("sha256:{i:064}"),
                checks: Some(serde_json::json!({ "blob": "x".repeat(2000) })),
                ..Default::default()
            });
        }
        let yaml = fit_ledger(&mut l).unwrap_or_else(|_| panic!("fits"));
        assert!(yaml.len() <= LEDGER_MAX_BYTES);
        assert!(l.history.len() < 400 && l.history.len() > 50, "{}", l.history.len());
        assert_eq!(l.history.last().unwrap().digest, format!("sha256:{:064}", 399), "newest kept");
    }
}
