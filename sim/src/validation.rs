//! Name and label rules as the API server checks them, written from
//! k8s.io/apimachinery `pkg/util/validation/validation.go` (IsDNS1123Label,
//! IsDNS1123Subdomain, IsQualifiedName, IsValidLabelValue) and
//! `pkg/api/validation/path/name.go` (IsValidPathSegmentName). The sim's own:
//! the runner checks names with its code, and the judge must not reuse it.

/// `DNS1123LabelMaxLength`
const LABEL_MAX: usize = 63;
/// `DNS1123SubdomainMaxLength`
const SUBDOMAIN_MAX: usize = 253;
/// `qualifiedNameMaxLength` and `LabelValueMaxLength`
const QUALIFIED_NAME_MAX: usize = 63;

pub const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` without a length bound.
fn label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]) && b.iter().all(|&c| alnum(c) || c == b'-')
}

/// IsDNS1123Label: namespaces, most generated names.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= LABEL_MAX && label_shape(s)
}

/// IsDNS1123Subdomain: at most 253 characters of `.`-joined label shapes
/// (each part unbounded, as the regex is).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= SUBDOMAIN_MAX && s.split('.').all(label_shape)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, the name part of a qualified
/// name and a non-empty label value.
fn qualified_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// IsQualifiedName: `[prefix/]name`, the prefix a DNS-1123 subdomain, the
/// name at most 63 characters (label and annotation keys).
pub fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns1123_subdomain(p))
        && name.len() <= QUALIFIED_NAME_MAX
        && qualified_shape(name)
}

/// IsValidLabelValue: empty, or a qualified name part of at most 63 characters.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || (s.len() <= QUALIFIED_NAME_MAX && qualified_shape(s))
}

/// IsValidPathSegmentName: why `s` cannot be one segment of a URL path
/// (names of RBAC objects, which may hold `:`), or `None`.
pub fn path_segment_problem(s: &str) -> Option<String> {
    match s {
        "." | ".." => Some(format!("may not be '{s}'")),
        _ if s.contains('/') => Some("may not contain '/'".to_string()),
        _ if s.contains('%') => Some("may not contain '%'".to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_subdomains_and_qualified_names() {
        assert!(is_dns1123_label("weather-1") && is_dns1123_label("0"));
        for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
        assert!(is_dns1123_subdomain("registry.example.com"));
        assert!(is_dns1123_subdomain(&"a".repeat(70)), "one part may exceed 63");
        for bad in ["a..b", ".a", "a.", "A.b", &"a".repeat(254)] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
        assert!(is_qualified_name("app.kubernetes.io/name") && is_qualified_name("My_Name.1"));
        for bad in ["/a", "a/", "Ex.com/a", "a/b/c", "-a", &"a".repeat(64)] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
        assert!(is_label_value("") && is_label_value("v1.2_3"));
        assert!(!is_label_value("a b") && !is_label_value("-a"));
        assert!(path_segment_problem("system:admin").is_none());
        assert!(path_segment_problem("..").is_some() && path_segment_problem("a/b").is_some());
    }
}
