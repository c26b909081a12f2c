//! The resource table: every kind the sim serves, with what discovery
//! reports about it (names, scope, verbs, subresources), how `kubectl get`
//! prints it, and the kind-specific checks and defaults applied on write.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::status::Cause;

/// The verbs a plain stored resource supports.
pub const STANDARD_VERBS: &[&str] =
    &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];

/// One column of the table `kubectl get` prints (`Accept: ...;as=Table`).
#[derive(Debug, Clone, Copy)]
pub enum Column {
    /// A string or number at a dotted path, blank when absent.
    Path { name: &'static str, path: &'static str },
    /// How many keys the maps at these paths hold together (ConfigMap DATA).
    Count { name: &'static str, paths: &'static [&'static str] },
}

/// Kind-specific checks on an object about to be stored: field errors,
/// reported as one `Invalid` (422) Status like the API server's validation.
pub type Validator = fn(&Value) -> Vec<Cause>;

/// Kind-specific checks of an update against the stored object (fields
/// that may not change).
pub type UpdateValidator = fn(old: &Value, new: &Value) -> Vec<Cause>;

/// Kind-specific normalisation before validation (e.g. Secret `stringData`
/// folded into `data`).
pub type Normalizer = fn(&mut Value);
/// An admission webhook for the kind (after the built-in validation, on
/// create and on spec updates): its denial is the whole error.
pub type Admission = fn(&Value) -> Result<(), super::status::ApiError>;
/// Fills what the API server computes on every object it returns (its REST
/// storage's `Decorator`), from the sim's own settings; never stored.
pub type Decorator = fn(&super::SimApi, &mut Value);

#[derive(Debug, Clone)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    pub verbs: &'static [&'static str],
    /// Subresources listed in discovery (`status`, `log`, ...). `status` is
    /// served generically; others need a handler registered with
    /// [`ResourceTable::subresource`].
    pub subresources: &'static [&'static str],
    /// `metadata.generation` is kept (1 on create, +1 when `spec` changes),
    /// as the API server does for kinds with a spec/status split.
    pub generation: bool,
    /// PUT on a missing object creates it (false for most built-in kinds).
    pub create_on_update: bool,
    pub columns: &'static [Column],
    pub validate: Option<Validator>,
    pub validate_update: Option<UpdateValidator>,
    pub normalize: Option<Normalizer>,
    /// Defaults the API server fills on create only (its strategy's
    /// `PrepareForCreate`), after `normalize`.
    pub default_on_create: Option<Normalizer>,
    pub decorate: Option<Decorator>,
    pub admission: Option<Admission>,
    /// Accepts `application/vnd.kubernetes.protobuf` bodies (typed
    /// client-go clients) through this decoder.
    pub protobuf: Option<super::protobuf::Decoder>,
}

impl ResourceType {
    /// A namespaced kind with the standard verbs and no extras; adjust the
    /// fields that differ with struct update syntax.
    pub const fn namespaced(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
        singular: &'static str,
    ) -> Self {
        ResourceType {
            group,
            version,
            kind,
            plural,
            singular,
            short_names: &[],
            categories: &[],
            namespaced: true,
            verbs: STANDARD_VERBS,
            subresources: &[],
            generation: false,
            create_on_update: false,
            columns: &[],
            validate: None,
            validate_update: None,
            normalize: None,
            default_on_create: None,
            decorate: None,
            admission: None,
            protobuf: None,
        }
    }

    /// `v1` or `coordination.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    /// How the API server names the resource in messages: `configmaps`,
    /// `leases.coordination.k8s.io`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.plural.to_string() } else { format!("{}.{}", self.plural, self.group) }
    }

    /// The store key for objects of this resource: `core/configmaps`,
    /// `coordination.k8s.io/leases`.
    pub fn key(&self) -> String {
        format!("{}/{}", if self.group.is_empty() { "core" } else { self.group }, self.plural)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }
}

/// A handler for a custom subresource (`builds/log`,
/// `buildconfigs/instantiatebinary`): gets the sim's API and the request,
/// answers with any response.
pub type SubresourceHandler = Arc<
    dyn Fn(
            super::SimApi,
            super::server::SubresourceRequest,
        ) -> futures::future::BoxFuture<'static, axum::response::Response>
        + Send
        + Sync,
>;

/// Every kind the sim serves, built once at start by each API group file's
/// `register`.
#[derive(Clone, Default)]
pub struct ResourceTable {
    types: Vec<Arc<ResourceType>>,
    subresources: BTreeMap<(String, String, String), SubresourceHandler>,
}

impl std::fmt::Debug for ResourceTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceTable").field("types", &self.types).finish_non_exhaustive()
    }
}

impl ResourceTable {
    pub fn add(&mut self, t: ResourceType) {
        assert!(self.find(t.group, t.version, t.plural).is_none(), "resource {} registered twice", t.qualified());
        self.types.push(Arc::new(t));
    }

    /// Serve `/<plural>/<name>/<sub>` of `group` with `handler`.
    pub fn subresource(&mut self, group: &str, plural: &str, sub: &str, handler: SubresourceHandler) {
        self.subresources.insert((group.to_string(), plural.to_string(), sub.to_string()), handler);
    }

    /// Serve every verb of `group`/`plural` itself with `handler` (kinds the
    /// API server computes instead of storing, such as ImageStreamTags).
    pub fn resource_handler(&mut self, group: &str, plural: &str, handler: SubresourceHandler) {
        self.subresource(group, plural, "", handler);
    }

    pub fn subresource_handler(&self, group: &str, plural: &str, sub: &str) -> Option<&SubresourceHandler> {
        self.subresources.get(&(group.to_string(), plural.to_string(), sub.to_string()))
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceType>> {
        self.types.iter().find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<&Arc<ResourceType>> {
        self.types.iter().find(|t| t.api_version() == api_version && t.kind == kind)
    }

    pub fn all(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// Group name -> versions, in registration order; the core group is `""`.
    pub fn groups(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
        for t in &self.types {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version),
                Some(_) => {}
                None => out.push((t.group, vec![t.version])),
            }
        }
        out
    }

    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<&Arc<ResourceType>> {
        self.types.iter().filter(|t| t.group == group && t.version == version).collect()
    }
}
