//! Field ownership (`metadata.managedFields`) and server-side apply, a
//! subset of kubernetes-sigs/structured-merge-diff as the API server uses
//! it (k8s.io/apimachinery/pkg/util/managedfields).
//!
//! The subset: every object is treated as the *deduced* (schemaless) type,
//! as SMD treats custom resources without list-type markers: maps merge by
//! key, field by field; lists and scalars are atomic (a list is owned and
//! replaced as a whole, so there are no `k:{...}` list-item keys: a
//! Deployment's `containers` are one field here, not one per name); an
//! empty map is a leaf. `apiVersion`, `kind`, `status` (on the main
//! resource of a kind with a status subresource; on `/status` only `status`
//! counts) and the server's metadata fields are not tracked.
//!
//! - An Update (create, PUT, merge/JSON patch) by manager M takes every
//!   field whose value it changed (added, modified or removed) from the
//!   other managers and gives M the ones still present.
//! - An Apply by M merges M's configuration into the object. A field of the
//!   configuration another manager owns with a different value is a
//!   conflict: `409` with `Apply failed with 1 conflict: conflict with
//!   "MANAGER": .spec.x` (internal/conflict.go), unless `force=true`, which
//!   takes the field from them. M then owns exactly its configuration's
//!   fields; a field M owned before and no longer sends is removed from the
//!   object unless another manager owns it too.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::status::ApiError;

/// A path of map keys from the object's root.
pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Who writes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldManager {
    pub name: String,
    /// Apply (the writer has set `managedFields` itself through [`apply`])
    /// rather than Update.
    pub apply: bool,
    pub api_version: String,
}

/// Which part of the object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but `status` (kinds with a status subresource).
    Main,
    /// Only `status` (`/status`).
    Status,
    /// Everything (kinds without a status subresource).
    All,
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Value,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    /// The identity conflicts and ownership go by: appliers are one manager
    /// whatever version they applied; updaters are per version.
    fn same_owner(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == "Apply" || self.api_version == other.api_version)
    }

    /// How a conflict names the manager (`printManager`).
    fn printed(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

fn tracked(path: &[&str], part: Part) -> bool {
    match path {
        ["apiVersion"] | ["kind"] => false,
        ["metadata"] => part != Part::Status,
        ["metadata", k] => part != Part::Status && !SERVER_METADATA.contains(k),
        ["status", ..] => part != Part::Main,
        _ => part != Part::Status,
    }
}

/// The leaf paths of `v` this part of the object tracks.
pub fn fields_of(v: &Value, part: Part) -> FieldSet {
    fn walk(v: &Value, path: &mut Vec<String>, part: Part, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    let p: Vec<&str> = path.iter().map(String::as_str).collect();
                    if path.len() > 2 || tracked(&p, part) {
                        walk(child, path, part, out);
                    }
                    path.pop();
                }
            }
            _ if path.is_empty() => {}
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), part, &mut out);
    out
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

/// `.spec.x` as SMD prints a path.
fn printed_path(p: &Path) -> String {
    p.iter().map(|k| format!(".{k}")).collect()
}

fn to_tree(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut cur = &mut root;
        for (i, k) in p.iter().enumerate() {
            let node = cur.entry(format!("f:{k}")).or_insert_with(|| json!({}));
            let node = node.as_object_mut().expect("tree nodes are objects");
            if i + 1 == p.len() && !node.is_empty() {
                node.insert(".".into(), json!({}));
            }
            cur = node;
        }
    }
    Value::Object(root)
}

fn from_tree(tree: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in m {
            if let Some(name) = k.strip_prefix("f:") {
                path.push(name.to_string());
                walk(child, path, out);
                path.pop();
            }
        }
    }
    let mut out = FieldSet::new();
    walk(tree, &mut Vec::new(), &mut out);
    out
}

fn entries_of(obj: Option<&Value>) -> Vec<Entry> {
    let Some(list) = obj.and_then(|o| o.pointer("/metadata/managedFields")).and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|e| {
            Some(Entry {
                manager: e.get("manager")?.as_str()?.to_string(),
                operation: e.get("operation").and_then(Value::as_str).unwrap_or("Update").to_string(),
                api_version: e.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string(),
                time: e.get("time").cloned().unwrap_or(Value::Null),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                fields: from_tree(e.get("fieldsV1").unwrap_or(&Value::Null)),
            })
        })
        .collect()
}

fn entries_json(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .filter(|e| !e.fields.is_empty())
            .map(|e| {
                let mut v = json!({
                    "manager": e.manager,
                    "operation": e.operation,
                    "apiVersion": e.api_version,
                    "time": e.time,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": to_tree(&e.fields),
                });
                if let Some(s) = &e.subresource {
                    v["subresource"] = json!(s);
                }
                v
            })
            .collect(),
    )
}

fn now() -> Value {
    json!(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string())
}

fn subresource(part: Part) -> Option<String> {
    (part == Part::Status).then(|| "status".to_string())
}

/// Whether `p` or a path below or above it is in `set`.
fn overlaps(set: &FieldSet, p: &Path) -> bool {
    set.iter().any(|q| q.starts_with(p) || p.starts_with(q))
}

/// The `managedFields` after an Update by `m` from `old` (`None`: a create)
/// to `new`.
pub fn after_update(old: Option<&Value>, new: &Value, m: &FieldManager, part: Part) -> Value {
    let mut entries = entries_of(old);
    let before = old.map(|o| fields_of(o, part)).unwrap_or_default();
    let after = fields_of(new, part);
    // Changed: present now with another value, or gone.
    let changed: FieldSet = after
        .iter()
        .filter(|p| old.and_then(|o| get(o, p)) != get(new, p))
        .chain(before.iter().filter(|p| !after.contains(*p)))
        .cloned()
        .collect();
    let me = Entry {
        manager: m.name.clone(),
        operation: "Update".into(),
        api_version: m.api_version.clone(),
        time: now(),
        subresource: subresource(part),
        fields: FieldSet::new(),
    };
    for e in entries.iter_mut().filter(|e| !e.same_owner(&me)) {
        e.fields.retain(|p| !overlaps(&changed, p) || (after.contains(p) && !changed.contains(p)));
    }
    let mine: FieldSet = changed.iter().filter(|p| after.contains(*p)).cloned().collect();
    match entries.iter_mut().find(|e| e.same_owner(&me)) {
        Some(e) => {
            let gone: Vec<Path> = e.fields.iter().filter(|p| !after.contains(*p)).cloned().collect();
            for p in gone {
                e.fields.remove(&p);
            }
            if !mine.is_empty() {
                e.fields.extend(mine);
                e.time = me.time.clone();
            }
        }
        None if !mine.is_empty() => entries.push(Entry { fields: mine, ..me }),
        None => {}
    }
    // Whatever disappeared from the object has no owner any more.
    for e in &mut entries {
        e.fields.retain(|p| after.contains(p));
    }
    entries_json(&entries)
}

/// Merge `config` into `into`: maps by key, everything else replaced.
fn merge(into: &mut Value, config: &Value) {
    match (into, config) {
        (Value::Object(a), Value::Object(b)) if !b.is_empty() => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing)
                        if existing.is_object() && v.is_object() && !v.as_object().is_some_and(Map::is_empty) =>
                    {
                        merge(existing, v)
                    }
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (into, config) => *into = config.clone(),
    }
}

/// Remove `path` from `v`, and the maps left empty on the way up unless
/// `keep` holds them.
fn remove(v: &mut Value, path: &[String], keep: &FieldSet) {
    fn go(v: &mut Value, path: &[String], prefix: &mut Path, keep: &FieldSet) {
        let Some(m) = v.as_object_mut() else { return };
        match path {
            [] => {}
            [last] => {
                m.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = m.get_mut(first) {
                    prefix.push(first.clone());
                    go(child, rest, prefix, keep);
                    let emptied = child.as_object().is_some_and(Map::is_empty);
                    if emptied && !keep.contains(prefix) {
                        m.remove(first);
                    }
                    prefix.pop();
                }
            }
        }
    }
    go(v, path, &mut Vec::new(), keep);
}

/// Server-side apply of `config` by `m` to `live` (`None`: the object does
/// not exist yet): the merged object carrying its new `managedFields`, or
/// the 409 of the conflicts.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    m: &FieldManager,
    part: Part,
    force: bool,
) -> Result<Value, ApiError> {
    let mut entries = entries_of(live);
    let config_set = fields_of(config, part);
    let me = Entry {
        manager: m.name.clone(),
        operation: "Apply".into(),
        api_version: m.api_version.clone(),
        time: now(),
        subresource: subresource(part),
        fields: config_set.clone(),
    };
    let mut conflicts: Vec<(Path, String)> = Vec::new();
    if let Some(live) = live {
        for e in entries.iter().filter(|e| !e.same_owner(&me)) {
            for p in config_set.iter().filter(|p| e.fields.contains(*p)) {
                if get(live, p) != get(config, p) {
                    conflicts.push((p.clone(), e.printed()));
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_error(&conflicts));
    }
    for e in entries.iter_mut().filter(|e| !e.same_owner(&me)) {
        e.fields.retain(|p| !conflicts.iter().any(|(c, _)| c == p));
    }
    let previous = entries.iter().find(|e| e.same_owner(&me)).map(|e| e.fields.clone()).unwrap_or_default();
    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    let mut body = config.clone();
    // The server's metadata is the live object's.
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in SERVER_METADATA {
            meta.remove(*k);
        }
    }
    merge(&mut merged, &body);
    let others: FieldSet =
        entries.iter().filter(|e| !e.same_owner(&me)).flat_map(|e| e.fields.iter().cloned()).collect();
    let keep: FieldSet = others.union(&config_set).cloned().collect();
    for p in previous.iter().filter(|p| !config_set.contains(*p) && !others.contains(*p)) {
        remove(&mut merged, p, &keep);
    }
    // Same place, and the old time when its fields did not change: a
    // repeated apply is a no-op (same resourceVersion).
    match entries.iter_mut().find(|e| e.same_owner(&me)) {
        Some(e) => {
            if e.fields != me.fields {
                e.time = me.time;
            }
            e.fields = me.fields;
            e.api_version = me.api_version;
        }
        None => entries.push(me),
    }
    let present = fields_of(&merged, part);
    for e in &mut entries {
        e.fields.retain(|p| present.contains(p));
    }
    if !merged.get("metadata").is_some_and(Value::is_object) {
        merged["metadata"] = json!({});
    }
    merged["metadata"]["managedFields"] = entries_json(&entries);
    Ok(merged)
}

/// apimachinery's `NewConflictError` / `getConflictMessage`.
fn conflict_error(conflicts: &[(Path, String)]) -> ApiError {
    let message = if let [(p, manager)] = conflicts {
        format!("Apply failed with 1 conflict: conflict with {manager}: {}", printed_path(p))
    } else {
        let mut managers: Vec<&String> = conflicts.iter().map(|(_, m)| m).collect();
        managers.sort();
        managers.dedup();
        let mut lines = Vec::new();
        for m in managers {
            lines.push(format!("conflicts with {m}:"));
            for (p, _) in conflicts.iter().filter(|(_, x)| x == m) {
                lines.push(format!("- {}", printed_path(p)));
            }
        }
        format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
    };
    let causes: Vec<(String, String)> = conflicts.iter().map(|(p, m)| (printed_path(p), m.clone())).collect();
    ApiError::apply_conflict(message, &causes)
}

/// The manager of an Update without `fieldManager`: the User-Agent up to
/// its first `/` (`prefixFromUserAgent`), at most 128 characters.
pub fn manager_from_user_agent(user_agent: Option<&str>) -> String {
    let ua = user_agent.unwrap_or("").split('/').next().unwrap_or("");
    let ua = if ua.is_empty() { "unknown" } else { ua };
    ua.chars().take(128).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mgr(name: &str) -> FieldManager {
        FieldManager { name: name.into(), apply: true, api_version: "v1".into() }
    }

    #[test]
    fn dropped_fields_go_and_another_managers_fields_conflict_unless_forced() {
        let first = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a", "labels": {"x": "1"}},
            "spec": {"a": 1, "b": [1, 2]}});
        let live = apply(None, &first, &mgr("m"), Part::All, false).unwrap();
        assert_eq!(live["spec"]["b"], json!([1, 2]));
        // m stops sending spec.b and the label: both go.
        let second = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"a": 1}});
        let live = apply(Some(&live), &second, &mgr("m"), Part::All, false).unwrap();
        assert!(live["spec"].get("b").is_none() && live["metadata"].get("labels").is_none(), "{live}");
        // Another manager setting spec.a differently conflicts.
        let other = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"a": 2}});
        let err = apply(Some(&live), &other, &mgr("k"), Part::All, false).unwrap_err();
        assert_eq!((err.code, err.reason), (409, "Conflict"));
        assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"m\": .spec.a");
        // The same value is shared, not a conflict; forced takes it over.
        let same = json!({"apiVersion": "v1", "kind": "X", "metadata": {"name": "a"}, "spec": {"a": 1}});
        assert!(apply(Some(&live), &same, &mgr("k"), Part::All, false).is_ok());
        let forced = apply(Some(&live), &other, &mgr("k"), Part::All, true).unwrap();
        assert_eq!(forced["spec"]["a"], 2);
        let owners: Vec<&str> = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(owners, ["k"], "m lost its only field");
    }

    #[test]
    fn an_update_takes_the_fields_it_changes() {
        let live = apply(None, &json!({"spec": {"a": 1, "b": 2}}), &mgr("m"), Part::All, false).unwrap();
        let mut edited = live.clone();
        edited["spec"]["a"] = json!(5);
        let u = FieldManager { name: "kubectl-edit".into(), apply: false, api_version: "v1".into() };
        edited["metadata"]["managedFields"] = after_update(Some(&live), &edited, &u, Part::All);
        let err = apply(Some(&edited), &json!({"spec": {"a": 1, "b": 2}}), &mgr("m"), Part::All, false).unwrap_err();
        assert_eq!(err.message, "Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1: .spec.a");
        assert_eq!(from_tree(&to_tree(&fields_of(&edited, Part::All))), fields_of(&edited, Part::All));
    }
}
