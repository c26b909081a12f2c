//! The object store behind every simulated resource: objects as JSON keyed
//! by resource, namespace and name; one global `resourceVersion` counter;
//! write-through persistence (one file per object, written to a temporary
//! name and renamed so a crash never leaves half an object); and a change
//! feed (tokio broadcast plus a bounded history) that serves watches from a
//! given resourceVersion and lets in-process controllers react to changes.
//!
//! Every mutation happens under one lock, so resourceVersions are strictly
//! increasing in commit order and events are broadcast in that order.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::SimError;
use super::managed::{FieldManager, Part};
use super::resource::ResourceType;
use super::status::{ApiError, Cause};

/// Watch events kept for clients that resume from an older resourceVersion;
/// older ones get `410 Expired` and re-list, as with etcd compaction.
const HISTORY: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    /// [`ResourceType::key`] of the object's resource.
    pub resource: String,
    pub namespace: String,
    pub kind: EventType,
    /// The object after the change (for `Deleted`, its last state with the
    /// deletion's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change (`None` for `Added`), so a filtered
    /// watch can tell "stopped matching" (sent as DELETED) from "changed".
    pub previous: Option<Arc<Value>>,
}

/// Which part of an object a write may change, for kinds with a `status`
/// subresource: the main resource keeps the old status, `/status` keeps
/// everything but the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Main,
    Status,
}

/// How a write is made: only over this resourceVersion (409 otherwise),
/// to which part of the object, and whether to persist it.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub precondition_rv: Option<String>,
    pub scope: Scope,
    pub dry_run: bool,
    /// Who writes, for `managedFields` (see [`super::managed`]): an Update
    /// is recorded here; an Apply has set `managedFields` itself. `None`
    /// (the sim's controllers) leaves ownership as it was.
    pub manager: Option<FieldManager>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { precondition_rv: None, scope: Scope::Main, dry_run: false, manager: None }
    }
}

/// The part of `rt`'s objects a write in `scope` owns fields of.
pub fn part(rt: &ResourceType, scope: Scope) -> Part {
    match (rt.subresources.contains(&"status"), scope) {
        (false, _) => Part::All,
        (true, Scope::Main) => Part::Main,
        (true, Scope::Status) => Part::Status,
    }
}

/// Set (or, when empty, drop) `metadata.managedFields`.
fn set_managed(obj: &mut Value, managed: Option<Value>) {
    let m = meta_mut(obj);
    match managed.filter(|v| v.as_array().is_some_and(|a| !a.is_empty())) {
        Some(v) => m.insert("managedFields".into(), v),
        None => m.remove("managedFields"),
    };
}

/// Conditions a delete must meet (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

type Objects = BTreeMap<String, BTreeMap<(String, String), Value>>;

struct Inner {
    rv: u64,
    objects: Objects,
    history: VecDeque<Event>,
    /// Every event with a resourceVersion above this is in `history`.
    history_from: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
    root: PathBuf,
    /// An exclusive lock on `objects/.lock`: two sims writing one data dir
    /// would interleave resourceVersions and lose objects.
    dir_lock: Mutex<Option<std::fs::File>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io { path: path.to_path_buf(), source }
}

fn now() -> String {
    jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string()
}

pub(crate) fn new_uid() -> String {
    use rand::RngExt;
    let b: [u8; 16] = rand::rng().random();
    let h = hex::encode(b);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

fn random_suffix() -> String {
    use rand::RngExt;
    // The API server's alphabet for generateName: no vowels, no look-alikes.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(key)).and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata is an object")
}

/// Labels of an object as a map (non-string values are ignored; validation
/// rejects them before they are stored).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    meta(obj)
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .map(|l| l.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

pub fn resource_version_of(obj: &Value) -> Option<u64> {
    meta_str(obj, "resourceVersion").and_then(|s| s.parse().ok())
}

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_part(s)
}

fn is_dns_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// As the API server checks it: at most 253 characters matching the regex;
/// unlike DNS proper, single parts may be longer than 63.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_part)
}

fn is_label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Metadata checks every kind gets: name, labels, annotations.
fn validate_meta(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta_str(obj, "name").unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if rt.kind == "Namespace" {
        if !is_dns_label(name) {
            causes.push(Cause::invalid("metadata.name", name, DNS1123_LABEL_MSG));
        }
    } else if rt.kind == "ImageStreamTag" {
        // `STREAM:TAG`, as image.openshift.io names them.
        if !name.split_once(':').is_some_and(|(s, t)| is_dns_subdomain(s) && !t.is_empty() && t.len() <= 128) {
            causes.push(Cause::invalid("metadata.name", name, "must be of the form <stream_name>:<tag>"));
        }
    } else if rt.kind == "Image" && rt.group == "image.openshift.io" {
        // Images are named by their digest (`sha256:<hex>`).
        if !name
            .split_once(':')
            .is_some_and(|(a, h)| !a.is_empty() && h.len() >= 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            causes.push(Cause::invalid("metadata.name", name, "must be of the form <algorithm>:<hex digest>"));
        }
    } else if rt.group != super::rbac::GROUP && !is_dns_subdomain(name) {
        causes.push(Cause::invalid("metadata.name", name, DNS1123_SUBDOMAIN_MSG));
    }
    // RBAC objects are named like path segments (`system:discovery`).
    if rt.group == super::rbac::GROUP {
        causes.extend(super::rbac::validate_name(name));
    }
    let m = meta(obj);
    match m.and_then(|m| m.get("labels")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                let field = "metadata.labels".to_string();
                let (prefix, key_name) = match k.split_once('/') {
                    Some((p, n)) => (Some(p), n),
                    None => (None, k.as_str()),
                };
                if prefix.is_some_and(|p| !is_dns_subdomain(p)) || !is_label_name(key_name) {
                    causes.push(Cause::invalid(&field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'); a prefix must be a DNS subdomain; the name part must be no more than 63 characters"));
                }
                match v.as_str() {
                    Some("") => {}
                    Some(s) if is_label_name(s) => {}
                    Some(s) => causes.push(Cause::invalid(&field, s, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?'); must be no more than 63 characters")),
                    None => causes.push(Cause::type_invalid(format!("metadata.labels.{k}"), "a string")),
                }
            }
        }
        Some(_) => causes.push(Cause::type_invalid("metadata.labels", "a map of strings")),
    }
    match m.and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(a)) => {
            let mut total = 0;
            for (k, v) in a {
                total += k.len();
                match v.as_str() {
                    Some(s) => total += s.len(),
                    None => causes.push(Cause::type_invalid(format!("metadata.annotations.{k}"), "a string")),
                }
            }
            if total > 256 * 1024 {
                causes.push(Cause::too_long("metadata.annotations", 256 * 1024));
            }
        }
        Some(_) => causes.push(Cause::type_invalid("metadata.annotations", "a map of strings")),
    }
    causes
}

/// Keep only what a client may set on metadata; the server owns the rest.
fn strip_server_fields(obj: &mut Value) {
    let m = meta_mut(obj);
    for k in
        ["uid", "creationTimestamp", "resourceVersion", "generation", "managedFields", "selfLink", "deletionTimestamp"]
    {
        m.remove(k);
    }
}

impl Store {
    /// Load the objects persisted under `root` (if any).
    pub fn open(root: &Path) -> Result<Store, SimError> {
        let objects_dir = root.join("objects");
        std::fs::create_dir_all(&objects_dir).map_err(io_err(&objects_dir))?;
        let lock_path = objects_dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(SimError::Corrupt {
                    path: root.to_path_buf(),
                    message: "another sim is using this data directory".into(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(SimError::Io { path: lock_path, source: e }),
        }
        let mut objects: Objects = BTreeMap::new();
        let mut max_rv = 0u64;
        // Layout: objects/<group>/<plural>/<namespace or _cluster>/<name>.json
        for group in read_dirs(&objects_dir)? {
            for plural in read_dirs(&group)? {
                let key = format!("{}/{}", file_name(&group), file_name(&plural));
                for ns_dir in read_dirs(&plural)? {
                    let ns = file_name(&ns_dir);
                    let ns = if ns == "_cluster" { String::new() } else { ns };
                    let entries = std::fs::read_dir(&ns_dir).map_err(io_err(&ns_dir))?;
                    for entry in entries {
                        let path = entry.map_err(io_err(&ns_dir))?.path();
                        if path.extension().and_then(|e| e.to_str()) != Some("json") {
                            // Leftover temporary files from a crash mid-write.
                            if file_name(&path).starts_with('.') {
                                let _ = std::fs::remove_file(&path);
                            }
                            continue;
                        }
                        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
                        let obj: Value = serde_json::from_str(&text)
                            .map_err(|e| SimError::Corrupt { path: path.clone(), message: e.to_string() })?;
                        let name = meta_str(&obj, "name")
                            .ok_or_else(|| SimError::Corrupt {
                                path: path.clone(),
                                message: "no metadata.name".into(),
                            })?
                            .to_string();
                        max_rv = max_rv.max(resource_version_of(&obj).unwrap_or(0));
                        objects.entry(key.clone()).or_default().insert((ns.clone(), name), obj);
                    }
                }
            }
        }
        let state_path = root.join("objects").join("state.json");
        let saved_rv = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("resourceVersion")?.as_str()?.parse::<u64>().ok())
                .ok_or_else(|| SimError::Corrupt { path: state_path.clone(), message: "no resourceVersion".into() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(SimError::Io { path: state_path, source: e }),
        };
        let rv = max_rv.max(saved_rv);
        let (tx, _) = broadcast::channel(4096);
        Ok(Store {
            inner: Mutex::new(Inner { rv, objects, history: VecDeque::new(), history_from: rv }),
            tx,
            root: root.to_path_buf(),
            dir_lock: Mutex::new(Some(lock)),
        })
    }

    /// Let another sim open the data dir (at shutdown; also on drop).
    pub fn release(&self) {
        let lock = self.dir_lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = lock {
            let _ = f.unlock();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change
        // (files are written before memory is touched), so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<Value> {
        self.lock().objects.get(&rt.key()).and_then(|m| m.get(&(ns.to_string(), name.to_string()))).cloned()
    }

    /// Objects of `rt` (in `ns`, or everywhere when `None`) sorted by
    /// namespace and name, with the store's resourceVersion.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(&rt.key())
            .map(|m| m.iter().filter(|((n, _), _)| ns.is_none_or(|ns| n == ns)).map(|(_, v)| v.clone()).collect())
            .unwrap_or_default();
        (items, inner.rv)
    }

    pub fn namespace_exists(&self, ns: &str) -> bool {
        self.lock().objects.get("core/namespaces").is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
    }

    /// Create `obj` in `ns` (`""` for cluster-scoped kinds).
    pub fn create(&self, rt: &ResourceType, ns: &str, obj: Value, dry_run: bool) -> Result<Value, ApiError> {
        self.create_as(rt, ns, obj, dry_run, None)
    }

    /// [`Store::create`] by `manager`: an Update manager owns every field of
    /// the new object; an Apply manager's `managedFields` are kept as given.
    pub fn create_as(
        &self,
        rt: &ResourceType,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
        manager: Option<&FieldManager>,
    ) -> Result<Value, ApiError> {
        check_type(rt, &mut obj)?;
        let applied = obj.pointer("/metadata/managedFields").cloned();
        strip_server_fields(&mut obj);
        let m = meta_mut(&mut obj);
        if rt.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        let has_name = m.get("name").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
        if !has_name && let Some(prefix) = m.get("generateName").and_then(Value::as_str) {
            let name = format!("{prefix}{}", random_suffix());
            m.insert("name".into(), json!(name));
        }
        if let Some(f) = rt.normalize {
            f(&mut obj);
        }
        if let Some(f) = rt.default_on_create {
            f(&mut obj);
        }
        match manager {
            Some(m) if m.apply => set_managed(&mut obj, applied),
            Some(m) => {
                let managed = super::managed::after_update(None, &obj, m, part(rt, Scope::Main));
                set_managed(&mut obj, Some(managed));
            }
            None => {}
        }
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        validate(rt, &name, &obj)?;

        let mut inner = self.lock();
        if rt.namespaced
            && !inner.objects.get("core/namespaces").is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
        {
            return Err(ApiError::namespace_not_found(ns));
        }
        let key = (ns.to_string(), name.clone());
        if inner.objects.get(&rt.key()).is_some_and(|m| m.contains_key(&key)) {
            return Err(ApiError::already_exists(rt, &name));
        }
        let rv = inner.rv + 1;
        let m = meta_mut(&mut obj);
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now()));
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        if rt.generation {
            m.insert("generation".into(), json!(1));
        }
        if dry_run {
            return Ok(obj);
        }
        self.commit(&mut inner, rt, ns, &name, EventType::Added, obj)
    }

    /// PUT semantics: replace the object; a non-empty
    /// `metadata.resourceVersion` must match the stored one (else 409).
    pub fn update(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        obj: Value,
        scope: Scope,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.update_as(rt, ns, name, obj, scope, dry_run, None)
    }

    /// [`Store::update`] by `manager` (an Update in `managedFields`).
    #[allow(clippy::too_many_arguments)]
    pub fn update_as(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        mut obj: Value,
        scope: Scope,
        dry_run: bool,
        manager: Option<FieldManager>,
    ) -> Result<Value, ApiError> {
        check_type(rt, &mut obj)?;
        match meta_str(&obj, "name") {
            Some(n) if n == name => {}
            Some(n) if !n.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            _ => {
                meta_mut(&mut obj).insert("name".into(), json!(name));
            }
        }
        if rt.namespaced {
            match meta_str(&obj, "namespace") {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    meta_mut(&mut obj).insert("namespace".into(), json!(ns));
                }
            }
        }
        let precondition = meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty()).map(str::to_string);
        let exists = self.get(rt, ns, name).is_some();
        if !exists && rt.create_on_update && scope == Scope::Main {
            return self.create_as(rt, ns, obj, dry_run, manager.as_ref());
        }
        let opts = WriteOptions { precondition_rv: precondition, scope, dry_run, manager };
        self.modify(rt, ns, name, &opts, move |_old| Ok(obj))
    }

    /// Read-modify-write under the store lock: `f` gets the current object
    /// and returns the new one. Used by PATCH and by in-process controllers;
    /// no other write can slip in between the read and the write.
    pub fn modify(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &WriteOptions,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let WriteOptions { precondition_rv, scope, dry_run, manager } = opts;
        let (scope, dry_run) = (*scope, *dry_run);
        let mut inner = self.lock();
        let Some(old) = inner.objects.get(&rt.key()).and_then(|m| m.get(&(ns.to_string(), name.to_string()))).cloned()
        else {
            return Err(ApiError::not_found(rt, name));
        };
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        if let Some(want) = precondition_rv
            && *want != old_rv
        {
            return Err(ApiError::conflict(rt, name));
        }
        let mut obj = f(&old)?;
        let mut applied = None;
        check_type(rt, &mut obj)?;
        if meta_str(&obj, "name").is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&obj, "name").unwrap_or("")
            )));
        }
        // The server owns identity and bookkeeping fields.
        {
            let old_meta = meta(&old).cloned().unwrap_or_default();
            let m = meta_mut(&mut obj);
            for k in ["uid", "creationTimestamp", "generation", "name"] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            // Clients cannot write managedFields; an Apply computed them.
            let given = m.remove("managedFields");
            if manager.as_ref().is_some_and(|m| m.apply) {
                applied = given;
            }
            match old_meta.get("managedFields") {
                Some(v) => m.insert("managedFields".into(), v.clone()),
                None => m.remove("managedFields"),
            };
            if rt.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
        }
        if rt.subresources.contains(&"status") {
            match scope {
                Scope::Main => copy_field(&old, &mut obj, "status"),
                Scope::Status => {
                    let status = obj.get("status").cloned();
                    let mut kept = old.clone();
                    match status {
                        Some(s) => kept["status"] = s,
                        None => {
                            kept.as_object_mut().map(|o| o.remove("status"));
                        }
                    }
                    obj = kept;
                }
            }
        }
        if let Some(f) = rt.normalize {
            f(&mut obj);
        }
        validate(rt, name, &obj)?;
        if let Some(check) = rt.validate_update {
            let causes = check(&old, &obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(rt, name, causes));
            }
        }
        match manager {
            Some(m) if m.apply => set_managed(&mut obj, applied),
            Some(m) => {
                let managed = super::managed::after_update(Some(&old), &obj, m, part(rt, scope));
                set_managed(&mut obj, Some(managed));
            }
            None => {}
        }
        if rt.generation && old.get("spec") != obj.get("spec") {
            let g = meta(&old).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(0);
            meta_mut(&mut obj).insert("generation".into(), json!(g + 1));
        }
        // A write that changes nothing is a no-op, as in the API server:
        // same resourceVersion, no event.
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(old_rv));
        if obj == old || dry_run {
            return Ok(obj);
        }
        let rv = inner.rv + 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.commit(&mut inner, rt, ns, name, EventType::Modified, obj)
    }

    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        pre: &Preconditions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let Some(mut obj) =
            inner.objects.get(&rt.key()).and_then(|m| m.get(&(ns.to_string(), name.to_string()))).cloned()
        else {
            return Err(ApiError::not_found(rt, name));
        };
        let uid = meta_str(&obj, "uid").unwrap_or("").to_string();
        let rv_now = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
        if let Some(want) = pre.uid.as_deref().filter(|s| !s.is_empty())
            && want != uid
        {
            return Err(ApiError::precondition_conflict(rt, name, "UID", want, &uid));
        }
        if let Some(want) = pre.resource_version.as_deref().filter(|s| !s.is_empty())
            && want != rv_now
        {
            return Err(ApiError::precondition_conflict(rt, name, "ResourceVersion", want, &rv_now));
        }
        if dry_run {
            return Ok(obj);
        }
        let rv = inner.rv + 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        let obj = self.commit(&mut inner, rt, ns, name, EventType::Deleted, obj)?;
        if rt.kind == "Namespace" && rt.group.is_empty() {
            // The API server empties a namespace (phase Terminating) before
            // removing it; the sim removes its contents at once.
            let keys: Vec<(String, String)> = inner
                .objects
                .iter()
                .flat_map(|(res, m)| m.keys().filter(|(n, _)| n == name).map(move |(_, o)| (res.clone(), o.clone())))
                .collect();
            for (res, oname) in keys {
                let Some(mut child) =
                    inner.objects.get(&res).and_then(|m| m.get(&(name.to_string(), oname.clone()))).cloned()
                else {
                    continue;
                };
                let rv = inner.rv + 1;
                meta_mut(&mut child).insert("resourceVersion".into(), json!(rv.to_string()));
                self.commit_key(&mut inner, &res, name, &oname, EventType::Deleted, child)?;
            }
        }
        Ok(obj)
    }

    /// Changes to `resource` (in `ns`, or all namespaces) after `from_rv`,
    /// the store's resourceVersion, and a receiver for the changes still to
    /// come, taken atomically. `None` means "current state first": every
    /// existing object as a synthetic `Added` event, as a watch without a
    /// resourceVersion gets from the API server.
    pub fn subscribe(
        &self,
        resource: &str,
        ns: Option<&str>,
        from_rv: Option<u64>,
    ) -> Result<(Vec<Event>, u64, broadcast::Receiver<Event>), ApiError> {
        let inner = self.lock();
        let rx = self.tx.subscribe();
        let mut backlog = Vec::new();
        if from_rv.is_none()
            && let Some(m) = inner.objects.get(resource)
        {
            for ((n, _), obj) in m {
                if ns.is_none_or(|ns| n == ns) {
                    backlog.push(Event {
                        rv: resource_version_of(obj).unwrap_or(0),
                        resource: resource.to_string(),
                        namespace: n.clone(),
                        kind: EventType::Added,
                        object: Arc::new(obj.clone()),
                        previous: None,
                    });
                }
            }
        }
        if let Some(from) = from_rv {
            if from < inner.history_from {
                return Err(ApiError::gone(from, inner.history_from + 1));
            }
            backlog.extend(
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > from && e.resource == resource && ns.is_none_or(|ns| e.namespace == ns))
                    .cloned(),
            );
        }
        Ok((backlog, inner.rv, rx))
    }

    /// Every change to any resource from now on (for controllers).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    fn commit(
        &self,
        inner: &mut Inner,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        kind: EventType,
        obj: Value,
    ) -> Result<Value, ApiError> {
        self.commit_key(inner, &rt.key(), ns, name, kind, obj)
    }

    /// Persist, then apply in memory, then announce. `obj` carries its new
    /// resourceVersion (`inner.rv + 1`).
    fn commit_key(
        &self,
        inner: &mut Inner,
        resource: &str,
        ns: &str,
        name: &str,
        kind: EventType,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let rv = inner.rv + 1;
        let path = self.object_path(resource, ns, name);
        let persisted = match kind {
            EventType::Deleted => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            _ => write_atomic(&path, obj.to_string().as_bytes()),
        }
        .and_then(|()| {
            write_atomic(
                &self.root.join("objects").join("state.json"),
                json!({ "resourceVersion": rv.to_string() }).to_string().as_bytes(),
            )
        });
        if let Err(e) = persisted {
            return Err(ApiError::internal(format!("sim store cannot write {}: {e}", path.display())));
        }
        inner.rv = rv;
        let key = (ns.to_string(), name.to_string());
        let previous = match kind {
            EventType::Deleted => inner.objects.get_mut(resource).and_then(|m| m.remove(&key)),
            _ => inner.objects.entry(resource.to_string()).or_default().insert(key, obj.clone()),
        };
        let event = Event {
            rv,
            resource: resource.to_string(),
            namespace: ns.to_string(),
            kind,
            object: Arc::new(obj.clone()),
            previous: previous.map(Arc::new),
        };
        inner.history.push_back(event.clone());
        while inner.history.len() > HISTORY {
            if let Some(e) = inner.history.pop_front() {
                inner.history_from = e.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(event);
        Ok(obj)
    }

    fn object_path(&self, resource: &str, ns: &str, name: &str) -> PathBuf {
        let ns = if ns.is_empty() { "_cluster" } else { ns };
        self.root.join("objects").join(resource).join(ns).join(format!("{name}.json"))
    }
}

fn copy_field(from: &Value, to: &mut Value, field: &str) {
    match from.get(field) {
        Some(v) => to[field] = v.clone(),
        None => {
            to.as_object_mut().map(|o| o.remove(field));
        }
    }
}

/// `apiVersion`/`kind` default to the resource's and must match it if set.
fn check_type(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let Some(o) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the body of the request must be a JSON object"));
    };
    let api_version = rt.api_version();
    match o.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match o.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            o.insert("kind".into(), json!(rt.kind));
        }
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    Ok(())
}

fn validate(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    let mut causes = validate_meta(rt, obj);
    if let Some(v) = rt.validate {
        causes.extend(v(obj));
    }
    if causes.is_empty() { Ok(()) } else { Err(ApiError::invalid(rt, name, causes)) }
}

fn read_dirs(dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_type().map_err(io_err(dir))?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Write to a temporary file beside `path`, then rename over it: readers
/// and a restarted sim see the old or the new object, never a torn one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("object paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", file_name(path)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDGETS: ResourceType = ResourceType {
        generation: true,
        subresources: &["status"],
        ..ResourceType::namespaced("example.io", "v1", "Widget", "widgets", "widget")
    };
    const NAMESPACES: ResourceType = ResourceType {
        namespaced: false,
        ..ResourceType::namespaced("", "v1", "Namespace", "namespaces", "namespace")
    };

    fn store(dir: &Path) -> Store {
        let s = Store::open(dir).unwrap();
        if !s.namespace_exists("ns") {
            s.create(&NAMESPACES, "", json!({"metadata": {"name": "ns"}}), false).unwrap();
        }
        s
    }

    #[test]
    fn generation_follows_spec_and_status_is_separate() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let w = s.create(&WIDGETS, "ns", json!({"metadata": {"name": "w"}, "spec": {"a": 1}}), false).unwrap();
        assert_eq!(w["metadata"]["generation"], 1);
        let mut w2 = w.clone();
        w2["metadata"]["labels"] = json!({"x": "y"});
        w2["status"] = json!({"phase": "ignored on the main resource"});
        let w2 = s.update(&WIDGETS, "ns", "w", w2, Scope::Main, false).unwrap();
        assert_eq!(w2["metadata"]["generation"], 1);
        assert!(w2.get("status").is_none());
        let mut w3 = w2.clone();
        w3["spec"]["a"] = json!(2);
        let w3 = s.update(&WIDGETS, "ns", "w", w3, Scope::Main, false).unwrap();
        assert_eq!(w3["metadata"]["generation"], 2);
        let mut w4 = w3.clone();
        w4["status"] = json!({"phase": "Done"});
        w4["spec"]["a"] = json!(99);
        let w4 = s.update(&WIDGETS, "ns", "w", w4, Scope::Status, false).unwrap();
        assert_eq!(w4["status"]["phase"], "Done");
        assert_eq!(w4["spec"]["a"], 2, "a status write does not change spec");
    }

    #[test]
    fn stale_update_conflicts_and_noop_update_keeps_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let w = s.create(&WIDGETS, "ns", json!({"metadata": {"name": "w"}, "spec": {}}), false).unwrap();
        let same = s.update(&WIDGETS, "ns", "w", w.clone(), Scope::Main, false).unwrap();
        assert_eq!(same["metadata"]["resourceVersion"], w["metadata"]["resourceVersion"]);
        let mut changed = w.clone();
        changed["spec"] = json!({"b": true});
        s.update(&WIDGETS, "ns", "w", changed.clone(), Scope::Main, false).unwrap();
        let err = s.update(&WIDGETS, "ns", "w", changed, Scope::Main, false).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
    }

    #[test]
    fn restart_keeps_objects_and_resource_version() {
        let dir = tempfile::tempdir().unwrap();
        let rv = {
            let s = store(dir.path());
            s.create(&WIDGETS, "ns", json!({"metadata": {"name": "a"}}), false).unwrap();
            s.create(&WIDGETS, "ns", json!({"metadata": {"name": "b"}}), false).unwrap();
            s.delete(&WIDGETS, "ns", "b", &Preconditions::default(), false).unwrap();
            s.resource_version()
        };
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.resource_version(), rv, "a deleted object's version is not reused");
        assert!(s.get(&WIDGETS, "ns", "a").is_some());
        assert!(s.get(&WIDGETS, "ns", "b").is_none());
        // Watching from before the restart cannot be served: re-list.
        assert_eq!(s.subscribe(&WIDGETS.key(), None, Some(1)).unwrap_err().code, 410);
    }

    /// What a controller sees: every committed change, in commit order,
    /// with the state before it; and a status write through `modify`.
    #[tokio::test]
    async fn controllers_follow_the_event_feed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut events = s.events();
        s.create(&WIDGETS, "ns", json!({"metadata": {"name": "w"}, "spec": {"n": 1}}), false).unwrap();
        let e = events.recv().await.unwrap();
        assert_eq!((e.kind, e.resource.as_str(), e.namespace.as_str()), (EventType::Added, "example.io/widgets", "ns"));
        let opts = WriteOptions { scope: Scope::Status, ..Default::default() };
        s.modify(&WIDGETS, "ns", "w", &opts, |old| {
            let mut new = old.clone();
            new["status"] = json!({"phase": "Running"});
            Ok(new)
        })
        .unwrap();
        let e2 = events.recv().await.unwrap();
        assert_eq!(e2.kind, EventType::Modified);
        assert!(e2.rv > e.rv);
        assert_eq!(e2.object["status"]["phase"], "Running");
        assert!(e2.previous.as_ref().unwrap().get("status").is_none());
    }

    #[test]
    fn a_data_dir_serves_one_sim_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another sim is using this data directory"), "{err}");
        first.release();
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn deleting_a_namespace_removes_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        s.create(&WIDGETS, "ns", json!({"metadata": {"name": "a"}}), false).unwrap();
        s.delete(&NAMESPACES, "", "ns", &Preconditions::default(), false).unwrap();
        assert!(s.get(&WIDGETS, "ns", "a").is_none());
        let err = s.create(&WIDGETS, "ns", json!({"metadata": {"name": "a"}}), false).unwrap_err();
        assert_eq!(err.message, "namespaces \"ns\" not found");
    }

    #[test]
    fn invalid_names_and_labels_are_rejected_with_causes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let err = s
            .create(&WIDGETS, "ns", json!({"metadata": {"name": "Bad_Name", "labels": {"ok": "has space"}}}), false)
            .unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        let causes = err.details.unwrap()["causes"].as_array().unwrap().len();
        assert_eq!(causes, 2);
    }
}
