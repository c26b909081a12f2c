//! Credential masking. Every secret the process learns is registered here, and
//! [`mask`] replaces each registered value in any text before it is logged,
//! stored or printed. Values are masked the way uv prints `user:****@host`.

use std::sync::{OnceLock, RwLock};

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remember a secret value so [`mask`] hides it. Very short values are not
/// registered: masking "a" everywhere would garble every message.
pub fn register(value: impl Into<String>) {
    let value = value.into();
    if value.len() < 4 {
        return;
    }
    let mut secrets = registry().write().unwrap_or_else(|e| e.into_inner());
    if !secrets.contains(&value) {
        // Longest first, so a secret that contains another is masked whole.
        secrets.push(value);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Replace every registered secret in `text` with `****`, and the password of
/// any `scheme://user:password@host` URL.
pub fn mask(text: &str) -> String {
    let mut out = text.to_string();
    for s in registry().read().unwrap_or_else(|e| e.into_inner()).iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "****");
        }
    }
    mask_url_userinfo(&out)
}

fn mask_url_userinfo(text: &str) -> String {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@").expect("static regex")
    });
    re.replace_all(text, "${pre}****@").into_owned()
}

/// A string that never prints its value: Debug and Display show `****`.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(value.clone());
        Secret(value)
    }
    /// The value, for the one place that must send it (a request header, an SDK).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_are_masked() {
        register("s3cr3t-value-xyz");
        assert_eq!(mask("key=s3cr3t-value-xyz end"), "key=**** end");
    }

    #[test]
    fn url_passwords_are_masked() {
        assert_eq!(mask("https://bob:hunter22@reg.example/v2/"), "https://bob:****@reg.example/v2/");
    }

    #[test]
    fn secret_debug_hides_value() {
        let s = Secret::new("topsecretvalue");
        assert_eq!(format!("{s:?} {s}"), "Secret(****) ****");
        assert_eq!(s.expose(), "topsecretvalue");
    }
}
