//! Kubernetes object-name rules, checked the way apimachinery's
//! `pkg/util/validation` does (IsDNS1123Label, IsDNS1123Subdomain): one
//! place for the spec validator, the stages, the state store and the sim.

/// An RFC 1123 label: namespaces, Services, label values used as names.
pub fn is_dns_label(s: &str) -> bool {
    label_problem(s).is_none()
}

/// An RFC 1123 subdomain as the API server checks it: at most 253
/// characters of dot-separated parts; unlike DNS proper, one part may be
/// longer than 63.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_part)
}

/// Why `s` is not an RFC 1123 label, for a message that says what to fix.
pub fn label_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("is empty");
    }
    if s.len() > 63 {
        return Some("is longer than 63 characters");
    }
    if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Some("is not a valid name (RFC 1123 label)");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Some("must start and end with a letter or digit");
    }
    None
}

fn is_dns_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns_label("weather-1"));
        assert!(!is_dns_label("-a") && !is_dns_label("a-") && !is_dns_label("A") && !is_dns_label(""));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("registry.example.com"));
        assert!(is_dns_subdomain(&"a".repeat(70)), "one part may exceed 63");
        assert!(!is_dns_subdomain("a..b") && !is_dns_subdomain(&"a".repeat(254)));
    }
}
