//! `rbac.authorization.k8s.io/v1` (Roles, ClusterRoles, RoleBindings,
//! ClusterRoleBindings), the RBAC authorizer over them, the bootstrap
//! policy a fresh cluster has, and `authorization.k8s.io/v1`
//! SelfSubjectAccessReviews (`kubectl auth can-i`).
//!
//! The authorizer follows kube's `rbac.go`: members of `system:masters` may
//! do anything; otherwise a request is allowed when a ClusterRoleBinding, or
//! a RoleBinding in the request's namespace, binds a subject matching the
//! user to a role with a rule that covers the verb, API group, resource (with
//! `res/sub` and `*/sub` for subresources), resource name, or for
//! non-resource requests the path (`/apis/*` prefix rules).

use serde_json::{Value, json};

use super::resource::{Column, ResourceTable, ResourceType};
use super::status::{ApiError, Cause};
use super::store::Store;

pub const GROUP: &str = "rbac.authorization.k8s.io";

const ROLE_COLUMNS: &[Column] = &[Column::Path { name: "Created At", path: "metadata.creationTimestamp" }];
const BINDING_COLUMNS: &[Column] = &[Column::Path { name: "Role", path: "roleRef.name" }];

pub const ROLES: ResourceType = ResourceType {
    columns: ROLE_COLUMNS,
    validate: Some(validate_role),
    protobuf: Some(super::protobuf::role),
    ..ResourceType::namespaced(GROUP, "v1", "Role", "roles", "role")
};

pub const CLUSTERROLES: ResourceType = ResourceType {
    namespaced: false,
    columns: ROLE_COLUMNS,
    validate: Some(validate_cluster_role),
    protobuf: Some(super::protobuf::clusterrole),
    ..ResourceType::namespaced(GROUP, "v1", "ClusterRole", "clusterroles", "clusterrole")
};

pub const ROLEBINDINGS: ResourceType = ResourceType {
    columns: BINDING_COLUMNS,
    validate: Some(validate_role_binding),
    protobuf: Some(super::protobuf::rolebinding),
    validate_update: Some(role_ref_unchanged),
    ..ResourceType::namespaced(GROUP, "v1", "RoleBinding", "rolebindings", "rolebinding")
};

pub const CLUSTERROLEBINDINGS: ResourceType = ResourceType {
    namespaced: false,
    columns: BINDING_COLUMNS,
    validate: Some(validate_cluster_role_binding),
    protobuf: Some(super::protobuf::clusterrolebinding),
    validate_update: Some(role_ref_unchanged),
    ..ResourceType::namespaced(GROUP, "v1", "ClusterRoleBinding", "clusterrolebindings", "clusterrolebinding")
};

/// `kubectl auth can-i`: created, answered, never stored.
pub const SELFSUBJECTACCESSREVIEWS: ResourceType = ResourceType {
    namespaced: false,
    verbs: &["create"],
    ..ResourceType::namespaced(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
    )
};

pub fn register(table: &mut ResourceTable) {
    table.add(ROLES);
    table.add(CLUSTERROLES);
    table.add(ROLEBINDINGS);
    table.add(CLUSTERROLEBINDINGS);
    table.add(SELFSUBJECTACCESSREVIEWS);
}

// ------------------------------------------------------------- validation

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// kube's `path.ValidatePathSegmentName`, the name rule of RBAC objects.
pub(crate) fn validate_name(name: &str) -> Vec<Cause> {
    super::validation::path_segment_problem(name)
        .map(|msg| vec![Cause::invalid("metadata.name", name, &msg)])
        .unwrap_or_default()
}

fn validate_rules(obj: &Value, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    let Some(rules) = obj.get("rules").filter(|r| !r.is_null()) else { return causes };
    let Some(rules) = rules.as_array() else {
        causes.push(Cause::type_invalid("rules", "a list of rules"));
        return causes;
    };
    for (i, rule) in rules.iter().enumerate() {
        let f = |k: &str| format!("rules[{i}].{k}");
        if strings(rule.get("verbs")).is_empty() {
            causes.push(Cause::required(f("verbs")));
        }
        let urls = strings(rule.get("nonResourceURLs"));
        let resources = strings(rule.get("resources"));
        if !urls.is_empty() {
            if namespaced {
                causes.push(Cause::invalid(
                    f("nonResourceURLs"),
                    &urls.join(","),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !resources.is_empty() || !strings(rule.get("apiGroups")).is_empty() {
                causes.push(Cause::invalid(
                    f("nonResourceURLs"),
                    &urls.join(","),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if rule.get("apiGroups").and_then(Value::as_array).is_none() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value: resource rules must supply at least one api group".into(),
                field: f("apiGroups"),
            });
        }
        if resources.is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                message: "Required value: resource rules must supply at least one resource".into(),
                field: f("resources"),
            });
        }
    }
    causes
}

fn validate_role(obj: &Value) -> Vec<Cause> {
    validate_rules(obj, true)
}

fn validate_cluster_role(obj: &Value) -> Vec<Cause> {
    validate_rules(obj, false)
}

fn unsupported(field: &str, value: &str, supported: &[&str]) -> Cause {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Cause {
        reason: "FieldValueNotSupported",
        message: format!("Unsupported value: {value:?}: supported values: {}", list.join(", ")),
        field: field.into(),
    }
}

fn validate_binding(obj: &Value, namespaced: bool) -> Vec<Cause> {
    let mut causes = Vec::new();
    match obj.get("roleRef").filter(|r| r.is_object()) {
        None => causes.push(Cause::required("roleRef")),
        Some(r) => {
            let kinds: &[&str] = if namespaced { &["Role", "ClusterRole"] } else { &["ClusterRole"] };
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
            if !kinds.contains(&kind) {
                causes.push(unsupported("roleRef.kind", kind, kinds));
            }
            let group = r.get("apiGroup").and_then(Value::as_str).unwrap_or("");
            if group != GROUP {
                causes.push(unsupported("roleRef.apiGroup", group, &[GROUP]));
            }
            if r.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                causes.push(Cause::required("roleRef.name"));
            }
        }
    }
    for (i, s) in obj.get("subjects").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let f = |k: &str| format!("subjects[{i}].{k}");
        if s.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
            causes.push(Cause::required(f("name")));
        }
        match s.get("kind").and_then(Value::as_str).unwrap_or("") {
            "ServiceAccount" => {
                if !namespaced && s.get("namespace").and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push(Cause::required(f("namespace")));
                }
            }
            "User" | "Group" => {}
            other => causes.push(unsupported(&f("kind"), other, &["ServiceAccount", "User", "Group"])),
        }
    }
    causes
}

fn validate_role_binding(obj: &Value) -> Vec<Cause> {
    validate_binding(obj, true)
}

fn validate_cluster_role_binding(obj: &Value) -> Vec<Cause> {
    validate_binding(obj, false)
}

fn role_ref_unchanged(old: &Value, new: &Value) -> Vec<Cause> {
    if old.get("roleRef") == new.get("roleRef") {
        return Vec::new();
    }
    vec![Cause::invalid(
        "roleRef",
        &new.get("roleRef").map(Value::to_string).unwrap_or_default(),
        "cannot change roleRef",
    )]
}

// --------------------------------------------------------------- bootstrap

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({ "verbs": verbs, "apiGroups": groups, "resources": resources })
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> Value {
    json!({ "verbs": verbs, "nonResourceURLs": urls })
}

/// The bootstrap ClusterRoles a default cluster has that matter here
/// (kube's `plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go`, and
/// OpenShift's image-registry roles), with their bindings.
fn bootstrap_roles() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("cluster-admin", vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])]),
        (
            "system:discovery",
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        (
            "system:basic-user",
            vec![
                rule(&["create"], &["authorization.k8s.io"], &["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                rule(&["create"], &["authentication.k8s.io"], &["selfsubjectreviews"]),
            ],
        ),
        (
            "system:public-info-viewer",
            vec![url_rule(&["get"], &["/healthz", "/livez", "/readyz", "/version", "/version/"])],
        ),
        // OpenShift: pull from and push to the integrated registry.
        ("system:image-puller", vec![rule(&["get"], &["", "image.openshift.io"], &["imagestreams/layers"])]),
        ("system:image-pusher", vec![rule(&["get", "update"], &["", "image.openshift.io"], &["imagestreams/layers"])]),
    ]
}

fn bootstrap_bindings() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    vec![
        ("cluster-admin", "cluster-admin", vec!["system:masters"]),
        ("system:discovery", "system:discovery", vec!["system:authenticated"]),
        ("system:basic-user", "system:basic-user", vec!["system:authenticated"]),
        (
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec!["system:authenticated", "system:unauthenticated"],
        ),
    ]
}

/// Create the bootstrap policy objects that are missing (a restarted sim
/// keeps whatever was changed, as the API server's reconciler leaves
/// objects annotated `rbac.authorization.kubernetes.io/autoupdate: "false"`).
pub fn bootstrap(store: &Store) -> Result<(), ApiError> {
    let labels = json!({ "kubernetes.io/bootstrapping": "rbac-defaults" });
    let annotations = json!({ "rbac.authorization.kubernetes.io/autoupdate": "true" });
    for (name, rules) in bootstrap_roles() {
        if store.get(&CLUSTERROLES, "", name).is_none() {
            let obj =
                json!({ "metadata": { "name": name, "labels": labels, "annotations": annotations }, "rules": rules });
            store.create(&CLUSTERROLES, "", obj, false)?;
        }
    }
    for (name, role, groups) in bootstrap_bindings() {
        if store.get(&CLUSTERROLEBINDINGS, "", name).is_none() {
            let subjects: Vec<Value> =
                groups.iter().map(|g| json!({ "kind": "Group", "apiGroup": GROUP, "name": g })).collect();
            let obj = json!({
                "metadata": { "name": name, "labels": labels, "annotations": annotations },
                "roleRef": { "apiGroup": GROUP, "kind": "ClusterRole", "name": role },
                "subjects": subjects,
            });
            store.create(&CLUSTERROLEBINDINGS, "", obj, false)?;
        }
    }
    Ok(())
}

// -------------------------------------------------------------- authorizer

/// What is asked, as kube's `authorizer.Attributes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    /// A resource request (`/api/...`, `/apis/G/V/...` naming a resource);
    /// otherwise a non-resource request for `path`.
    pub resource_request: bool,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub namespace: String,
    pub path: String,
}

impl Attributes {
    /// The attributes of a resolved API request.
    pub fn of(info: &super::server::RequestInfo, path: &str) -> Attributes {
        if info.plural.is_empty() {
            return Attributes { verb: info.verb.clone(), path: path.to_string(), ..Attributes::default() };
        }
        let name = info.name.clone().unwrap_or_default();
        let mut namespace = info.namespace.clone().unwrap_or_default();
        // kube's RequestInfo: `/api/v1/namespaces/NAME` is in namespace NAME.
        if info.plural == "namespaces" && namespace.is_empty() {
            namespace = name.clone();
        }
        Attributes {
            verb: info.verb.clone(),
            resource_request: true,
            group: info.group.clone(),
            resource: info.plural.clone(),
            subresource: info.subresource.clone().unwrap_or_default(),
            name,
            namespace,
            path: path.to_string(),
        }
    }

    /// From a SelfSubjectAccessReview's `spec`.
    pub fn from_review(spec: &Value) -> Option<Attributes> {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
            return Some(Attributes {
                verb: s(r, "verb"),
                resource_request: true,
                group: s(r, "group"),
                resource: s(r, "resource"),
                subresource: s(r, "subresource"),
                name: s(r, "name"),
                namespace: s(r, "namespace"),
                path: String::new(),
            });
        }
        let n = spec.get("nonResourceAttributes").filter(|r| r.is_object())?;
        Some(Attributes { verb: s(n, "verb"), path: s(n, "path"), ..Attributes::default() })
    }
}

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject<'a> {
    pub name: &'a str,
    pub groups: &'a [String],
}

/// The authorizer's answer, with kube's reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(String),
    /// The reason is empty, or `RBAC: ...` naming bindings whose role is missing.
    Deny(String),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|v| v == want || v == "*")
}

fn rule_allows(a: &Attributes, rule: &Value) -> bool {
    let verbs = strings(rule.get("verbs"));
    if !has(&verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return strings(rule.get("nonResourceURLs"))
            .iter()
            .any(|u| u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|prefix| a.path.starts_with(prefix)));
    }
    if !has(&strings(rule.get("apiGroups")), &a.group) {
        return false;
    }
    let combined =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let resource_ok = strings(rule.get("resources"))
        .iter()
        .any(|r| r == "*" || *r == combined || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource)));
    let names = strings(rule.get("resourceNames"));
    resource_ok && (names.is_empty() || names.contains(&a.name))
}

fn subject_matches(s: &Value, user: &Subject<'_>, namespace: &str) -> Option<String> {
    let name = s.get("name").and_then(Value::as_str).unwrap_or("");
    let kind = s.get("kind").and_then(Value::as_str).unwrap_or("");
    let ok = match kind {
        "User" => user.name == name,
        "Group" => user.groups.iter().any(|g| g == name),
        "ServiceAccount" => {
            let ns = s.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()).unwrap_or(namespace);
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    };
    ok.then(|| format!("{kind} {name:?}"))
}

/// kube's RBAC authorizer (plus the `system:masters` short cut that runs
/// before it in kube-apiserver).
pub fn authorize(store: &Store, user: &Subject<'_>, a: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == "system:masters") {
        return Decision::Allow(String::new());
    }
    let mut errors = Vec::new();
    let (crbs, _) = store.list(&CLUSTERROLEBINDINGS, None);
    let mut bindings: Vec<(Value, &str)> = crbs.into_iter().map(|b| (b, "ClusterRoleBinding")).collect();
    if !a.namespace.is_empty() {
        let (rbs, _) = store.list(&ROLEBINDINGS, Some(&a.namespace));
        bindings.extend(rbs.into_iter().map(|b| (b, "RoleBinding")));
    }
    for (binding, binding_kind) in &bindings {
        let binding_ns = binding.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
        let Some(who) = binding
            .get("subjects")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|s| subject_matches(s, user, binding_ns))
        else {
            continue;
        };
        let role_kind = binding.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or("");
        let role_name = binding.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("");
        let role = match role_kind {
            "Role" => store.get(&ROLES, binding_ns, role_name),
            _ => store.get(&CLUSTERROLES, "", role_name),
        };
        let Some(role) = role else {
            let rt = if role_kind == "Role" { "role" } else { "clusterrole" };
            errors.push(format!("{rt}.{GROUP} \"{role_name}\" not found"));
            continue;
        };
        if role.get("rules").and_then(Value::as_array).into_iter().flatten().any(|r| rule_allows(a, r)) {
            let binding_name = binding.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
            let of = if binding_kind == &"RoleBinding" {
                format!("RoleBinding \"{binding_name}/{binding_ns}\"")
            } else {
                format!("ClusterRoleBinding \"{binding_name}\"")
            };
            return Decision::Allow(format!("RBAC: allowed by {of} of {role_kind} \"{role_name}\" to {who}"));
        }
    }
    let reason = match errors.len() {
        0 => String::new(),
        1 => format!("RBAC: {}", errors[0]),
        _ => format!("RBAC: [{}]", errors.join(", ")),
    };
    Decision::Deny(reason)
}

/// The 403 for a refused request, worded as kube-apiserver's
/// `responsewriters.ForbiddenStatusError` words it.
pub fn forbidden(a: &Attributes, user: &str, reason: &str) -> ApiError {
    let mut msg = if !a.resource_request {
        format!("User {user:?} cannot {} path {:?}", a.verb, a.path)
    } else {
        let resource =
            if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        format!("User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}", a.verb, a.group)
    };
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    ApiError::forbidden_message(&a.group, &a.resource, &a.name, msg)
}

/// `POST .../selfsubjectaccessreviews`: the review with `status.allowed`.
pub fn access_review(store: &Store, user: &Subject<'_>, review: &Value) -> Result<Value, ApiError> {
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let Some(attrs) = Attributes::from_review(&spec) else {
        return Err(ApiError::invalid(
            &SELFSUBJECTACCESSREVIEWS,
            "",
            vec![Cause::invalid(
                "spec.resourceAttributes",
                "",
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        ));
    };
    let decision = authorize(store, user, &attrs);
    let mut status = json!({ "allowed": decision.allowed() });
    if let Decision::Allow(r) | Decision::Deny(r) = &decision
        && !r.is_empty()
    {
        status["reason"] = json!(r);
    }
    Ok(json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": { "creationTimestamp": null },
        "spec": spec,
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            namespace: ns.into(),
            path: String::new(),
        }
    }

    #[test]
    fn rules_match_subresources_names_and_url_prefixes() {
        let r = rule(&["get"], &["build.openshift.io"], &["builds/log"]);
        assert!(rule_allows(&attrs("get", "build.openshift.io", "builds", "log", "ns", "b"), &r));
        assert!(!rule_allows(&attrs("get", "build.openshift.io", "builds", "", "ns", "b"), &r));
        let star = rule(&["*"], &["*"], &["*/status"]);
        assert!(rule_allows(&attrs("patch", "x", "builds", "status", "ns", "b"), &star));
        let named = json!({ "verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"] });
        assert!(rule_allows(&attrs("get", "", "configmaps", "", "ns", "a"), &named));
        assert!(!rule_allows(&attrs("get", "", "configmaps", "", "ns", "b"), &named));
        let urls = url_rule(&["get"], &["/apis/*", "/version"]);
        let path = |p: &str| Attributes { verb: "get".into(), path: p.into(), ..Attributes::default() };
        assert!(rule_allows(&path("/apis/build.openshift.io/v1"), &urls));
        assert!(rule_allows(&path("/version"), &urls));
        assert!(!rule_allows(&path("/version/x"), &urls));
    }

    #[test]
    fn forbidden_messages_have_kube_wording() {
        let a = attrs("patch", "build.openshift.io", "builds", "", "ns", "b-1");
        assert_eq!(
            forbidden(&a, "system:serviceaccount:ns:sa", "").message,
            r#"builds.build.openshift.io "b-1" is forbidden: User "system:serviceaccount:ns:sa" cannot patch resource "builds" in API group "build.openshift.io" in the namespace "ns""#
        );
        let a = attrs("list", "", "namespaces", "", "", "");
        assert_eq!(
            forbidden(&a, "u", "").message,
            r#"namespaces is forbidden: User "u" cannot list resource "namespaces" in API group "" at the cluster scope"#
        );
        let a = attrs("create", "build.openshift.io", "buildconfigs", "instantiatebinary", "ns", "w");
        assert!(forbidden(&a, "u", "").message.contains(r#"cannot create resource "buildconfigs/instantiatebinary""#));
        let p = Attributes { verb: "get".into(), path: "/api".into(), ..Attributes::default() };
        assert_eq!(forbidden(&p, "u", "").message, r#"forbidden: User "u" cannot get path "/api""#);
    }

    #[test]
    fn bindings_need_a_role_ref_and_known_subject_kinds() {
        let fields = |c: Vec<Cause>| c.into_iter().map(|c| c.field).collect::<Vec<_>>();
        assert_eq!(fields(validate_role_binding(&json!({"subjects": []}))), ["roleRef"]);
        let crb = json!({
            "roleRef": {"apiGroup": GROUP, "kind": "Role", "name": "x"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "r"}],
        });
        assert_eq!(
            fields(validate_cluster_role_binding(&crb)),
            ["roleRef.kind", "subjects[0].namespace", "subjects[1].kind"]
        );
        let role = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}, {"apiGroups": [""], "resources": ["pods"]}]});
        assert_eq!(fields(validate_role(&role)), ["rules[0].nonResourceURLs", "rules[1].verbs"]);
        assert!(validate_cluster_role(&json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/x"]}]})).is_empty());
    }
}
