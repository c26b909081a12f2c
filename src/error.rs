//! Failure classes shared by every module: each error type says whether it is
//! bad input (exit 2), a stage that failed (exit 1) or a bug.

/// How a failure maps to the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// The user's input (file, flag, payload) is wrong: exit 2.
    BadInput,
    /// The work itself failed (a stage, a cluster, a registry): exit 1.
    Failed,
    /// An invariant broke: exit 1 with a "this is a bug" message.
    Internal,
}

impl ExitClass {
    pub fn code(self) -> i32 {
        match self {
            ExitClass::BadInput => 2,
            ExitClass::Failed | ExitClass::Internal => 1,
        }
    }
}

/// Implemented by every library error so the binary edge can pick an exit code
/// without knowing the module.
pub trait HasExitClass {
    fn exit_class(&self) -> ExitClass;
}

/// The cause chain on one line, `outer: inner: ...`, leaving out a cause
/// the message before it already says (wrappers that keep their source for
/// callers often repeat its text), and kube's API errors by their server
/// message alone (their `Display` is a `Debug` dump of the Status). A
/// refusal reads as [`refusal`] makes it; a registry's 401 ends with a hint.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut unauthorized = matches!(error.downcast_ref(), Some(crate::registry::RegistryError::Unauthorized { .. }));
    let mut cause = error.source();
    while let Some(c) = cause {
        let (message, next) = match c.downcast_ref::<kube::Error>() {
            // Its source is the same Status again.
            Some(kube::Error::Api(s)) => (s.message.clone(), None),
            _ => (c.to_string(), c.source()),
        };
        unauthorized |= matches!(c.downcast_ref(), Some(crate::registry::RegistryError::Unauthorized { .. }));
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = next;
    }
    if let Some(line) = refusal(&text) {
        return line;
    }
    if unauthorized && text.contains("credentials of user `serviceaccount` were rejected") {
        // The cluster's own token: OpenShift's registry answers 401, not
        // 403, when a valid token may not pull or push (image-registry auth.go).
        text.push_str(CLUSTER_TOKEN_401_HINT);
    } else if unauthorized {
        text.push_str(REGISTRY_401_HINT);
        if !text.contains("--authfile") {
            text.push_str(" or pass --authfile");
        }
    }
    text
}

/// Where the runner's RBAC lives, named in every refusal.
pub const ROLE_FILE: &str = ".tekton/rbac/modelship.yaml";

const CLUSTER_TOKEN_401_HINT: &str = "; hint: the integrated registry refuses a token that may not pull or push with 401 too: the identity needs get (pull) and update (push) on imagestreams/layers in the repository's namespace, which the Role in .tekton/rbac/modelship.yaml grants";

const REGISTRY_401_HINT: &str = "; hint: the registry wants valid credentials: name a kubernetes.io/dockerconfigjson Secret with them as the environment's `registrySecret`, or log in first (`oc registry login`)";

/// The Kubernetes authorizer's refusal (`User "X" cannot VERB resource "R"
/// in API group "G" in the namespace "NS"`), as the API server words it.
static REFUSAL: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r#"(?:\S+(?: "[^"]*")? is forbidden: )?User "(?P<user>[^"]*)" cannot (?P<verb>\S+) resource "(?P<resource>[^"]*)"(?: in API group "(?P<group>[^"]*)")?(?: in the namespace "(?P<ns>[^"]*)"| at the cluster scope)?"#,
    )
    .expect("valid regex")
});

/// `text` holding an API server's 403 as one line: what was being done,
/// the server's sentence (identity, verb, resource, API group, namespace),
/// and where the permissions come from; everything after the sentence is
/// dropped (causes that repeat it). `None` when `text` holds no refusal.
pub fn refusal(text: &str) -> Option<String> {
    let m = REFUSAL.captures(text)?;
    let whole = m.get(0)?;
    let sentence = &text[whole.start()..whole.end()];
    let sentence = sentence.find("User \"").map_or(sentence, |i| &sentence[i..]);
    let mut head = text[..whole.start()].trim_end();
    // The wrappers' own "forbidden (403):" adds nothing to the sentence.
    loop {
        let trimmed = head.trim_end_matches(':').trim_end();
        let trimmed = ["forbidden (403)", "(403 Forbidden)", "Forbidden"]
            .iter()
            .find_map(|w| trimmed.strip_suffix(w))
            .unwrap_or(trimmed)
            .trim_end();
        if trimmed == head {
            break;
        }
        head = trimmed;
    }
    let apply = match m.name("ns") {
        Some(ns) => format!("oc apply -n {} -f {ROLE_FILE}", ns.as_str()),
        None => format!("oc apply -f {ROLE_FILE}"),
    };
    let head = if head.is_empty() { String::new() } else { format!("{head}: ") };
    Some(format!(
        "{head}refused (403): {sentence}; hint: the Role in {ROLE_FILE} grants what modelship needs: `{apply}` (it binds the service account modelship; bind another identity to Role modelship with a RoleBinding)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_one_line_with_who_what_where_and_the_role_file() {
        let text = r#"stage `build` (openshift-build) failed: cannot create buildconfigs.build.openshift.io/weather in namespace models-dev: forbidden (403): buildconfigs.build.openshift.io is forbidden: User "system:serviceaccount:models-dev:modelship" cannot create resource "buildconfigs" in API group "build.openshift.io" in the namespace "models-dev": Forbidden"#;
        insta::assert_snapshot!(refusal(text).unwrap(), @r#"stage `build` (openshift-build) failed: cannot create buildconfigs.build.openshift.io/weather in namespace models-dev: refused (403): User "system:serviceaccount:models-dev:modelship" cannot create resource "buildconfigs" in API group "build.openshift.io" in the namespace "models-dev"; hint: the Role in .tekton/rbac/modelship.yaml grants what modelship needs: `oc apply -n models-dev -f .tekton/rbac/modelship.yaml` (it binds the service account modelship; bind another identity to Role modelship with a RoleBinding)"#);
        let cluster = r#"namespaces "x" is forbidden: User "alice" cannot get resource "namespaces" in API group "" at the cluster scope"#;
        assert!(refusal(cluster).unwrap().starts_with(
            r#"refused (403): User "alice" cannot get resource "namespaces" in API group "" at the cluster scope; hint"#
        ));
        assert!(refusal("not found").is_none());
    }

    #[test]
    fn a_kube_api_error_is_its_server_message_once_without_a_debug_dump() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the ledger")]
        struct Outer(#[source] kube::Error);
        let status = kube::core::Status::failure("configmaps \"x\" not found", "NotFound").with_code(404);
        let text = chain(&Outer(kube::Error::Api(Box::new(status))));
        assert!(text.ends_with(r#": configmaps "x" not found"#), "{text}");
        assert!(!text.contains("Status {"), "{text}");
    }
}
