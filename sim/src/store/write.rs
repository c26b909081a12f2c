//! Writes: create, update, read-modify-write and delete, with the checks
//! and bookkeeping the API server does on each.

use serde_json::{Value, json};

use super::super::managed::{self, FieldManager};
use super::super::resource::ResourceType;
use super::super::status::ApiError;
use super::{
    EventType, Preconditions, Scope, Store, WriteOptions, meta, meta_mut, meta_str, new_uid, now, part, random_suffix,
    set_managed, strip_server_fields, validate_meta,
};

impl Store {
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
            // apiserver storage/names/generate.go: the base is cut to
            // 58 (63 - 5) characters before the random suffix.
            let base: String = prefix.chars().take(58).collect();
            let name = format!("{base}{}", random_suffix());
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
                let managed = managed::after_update(None, &obj, m, part(rt, Scope::Main));
                set_managed(&mut obj, Some(managed));
            }
            None => {}
        }
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        validate(rt, &name, &obj)?;
        if let Some(admit) = rt.admission {
            admit(&obj)?;
        }

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
        if let (Some(admit), Scope::Main) = (rt.admission, scope) {
            admit(&obj)?;
        }
        if let Some(check) = rt.validate_update {
            let causes = check(&old, &obj);
            if !causes.is_empty() {
                return Err(ApiError::invalid(rt, name, causes));
            }
        }
        match manager {
            Some(m) if m.apply => set_managed(&mut obj, applied),
            Some(m) => {
                let managed = managed::after_update(Some(&old), &obj, m, part(rt, scope));
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
