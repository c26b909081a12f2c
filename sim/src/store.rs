//! The object store behind every simulated resource: objects as JSON keyed
//! by resource, namespace and name; one global `resourceVersion` counter;
//! write-through persistence (one file per object, written to a temporary
//! name and renamed so a crash never leaves half an object); and a change
//! feed (tokio broadcast plus a bounded history) that serves watches from a
//! given resourceVersion and lets in-process controllers react to changes.
//!
//! Every mutation happens under one lock, so resourceVersions are strictly
//! increasing in commit order and events are broadcast in that order.
//!
//! - `disk`: loading and persisting objects;
//! - `write`: create, update, modify and delete;
//! - `feed`: commits, the change history and watch subscriptions.

mod disk;
mod feed;
mod write;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::SimError;
use super::managed::{FieldManager, Part};
use super::resource::ResourceType;
use super::status::Cause;
use super::validation::{
    DNS1123_LABEL_MSG, DNS1123_SUBDOMAIN_MSG, is_dns1123_label, is_dns1123_subdomain, is_label_value, is_qualified_name,
};

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

/// Metadata checks every kind gets: name, labels, annotations.
fn validate_meta(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = meta_str(obj, "name").unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else if rt.kind == "Namespace" {
        if !is_dns1123_label(name) {
            causes.push(Cause::invalid("metadata.name", name, DNS1123_LABEL_MSG));
        }
    } else if rt.kind == "ImageStreamTag" {
        // `STREAM:TAG`, as image.openshift.io names them.
        if !name.split_once(':').is_some_and(|(s, t)| is_dns1123_subdomain(s) && !t.is_empty() && t.len() <= 128) {
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
    } else if rt.group != super::rbac::GROUP && !is_dns1123_subdomain(name) {
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
                if !is_qualified_name(k) {
                    causes.push(Cause::invalid(&field, k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'); a prefix must be a DNS subdomain; the name part must be no more than 63 characters"));
                }
                match v.as_str() {
                    Some(s) if is_label_value(s) => {}
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
                // ValidateAnnotations checks the lower-cased key.
                if !is_qualified_name(&k.to_lowercase()) {
                    causes.push(Cause::invalid("metadata.annotations", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character; a prefix must be a DNS subdomain; the name part must be no more than 63 characters"));
                }
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
