//! Image references: `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` or the same
//! without the transport prefix. The host is required: modelship copies
//! between named registries and never guesses Docker Hub.

use std::fmt;

use super::RegistryError;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`, as used in URLs and auth files.
    pub registry: String,
    /// `ns/name` (one or more path components).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parse a reference; `what` names the argument in errors ("source").
    pub fn parse(input: &str) -> Result<ImageRef, RegistryError> {
        let bad = |reason: &str| RegistryError::BadReference { input: input.to_string(), reason: reason.to_string() };
        let rest = input.strip_prefix("docker://").unwrap_or(input);
        if let Some((scheme, _)) = rest.split_once("://") {
            return Err(bad(&format!("transport `{scheme}://` is not supported; use docker://HOST/REPO")));
        }
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("expected HOST[:PORT]/REPO"))?;
        if host.is_empty() || !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad("the first component must be a registry host (with a dot or a port, or `localhost`)"));
        }
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')) {
            return Err(bad("the registry host has characters a host cannot have"));
        }
        if !host.ends_with(']')
            && let Some((name, port)) = host.rsplit_once(':')
            && (name.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0))
        {
            return Err(bad("expected HOST[:PORT]/REPO (the port must be a number from 1 to 65535)"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => {
                validate_digest(d).map_err(|r| bad(&r))?;
                (p, Some(d.to_string()))
            }
            None => (path, None),
        };
        // A tag follows the last ':' only if that ':' is after the last '/'.
        let (repository, tag) = match path.rfind(':') {
            Some(i) if !path[i..].contains('/') => (&path[..i], Some(path[i + 1..].to_string())),
            _ => (path, None),
        };
        validate_repository(repository).map_err(|r| bad(&r))?;
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(bad(&format!("`{t}` is not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")));
            }
        }
        Ok(ImageRef { registry: host.to_string(), repository: repository.to_string(), tag, digest })
    }

    /// What to ask the registry for: the digest when pinned, else the tag,
    /// else `latest` (what skopeo and docker do).
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef { digest: Some(digest.to_string()), tag: None, ..self.clone() }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` followed by 64 lowercase hex digits (the only algorithm used here).
pub fn validate_digest(d: &str) -> Result<(), String> {
    match d.split_once(':') {
        Some(("sha256", hex))
            if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        Some((alg, _)) if alg != "sha256" => Err(format!("digest algorithm `{alg}` is not supported (only sha256)")),
        _ => Err(format!("`{d}` is not a digest (sha256: and 64 lowercase hex digits)")),
    }
}

/// Distribution's repository grammar: lowercase path components separated by
/// `/`, each `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
pub fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository is empty".into());
    }
    if repo.len() > 255 {
        return Err("the repository is longer than 255 characters".into());
    }
    for comp in repo.split('/') {
        if !is_path_component(comp) {
            return Err(format!(
                "repository component `{comp}` is not valid (lowercase letters and digits, joined by one `.`, one or two `_`, or dashes)"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+` runs joined by exactly one separator: `.`, `_`, `__` or any
/// number of `-` (so `a._b`, `a___b`, `a.-b` are not names).
fn is_path_component(comp: &str) -> bool {
    let mut chars = comp.bytes().peekable();
    loop {
        let mut run = 0;
        while chars.next_if(|b| b.is_ascii_lowercase() || b.is_ascii_digit()).is_some() {
            run += 1;
        }
        if run == 0 {
            return false;
        }
        match chars.next() {
            None => return true,
            Some(b'.') => {}
            Some(b'_') => {
                chars.next_if_eq(&b'_');
            }
            Some(b'-') => while chars.next_if_eq(&b'-').is_some() {},
            Some(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_tag_digest_port_and_plain_forms() {
        let r = ImageRef::parse("docker://127.0.0.1:5000/ns/app:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref(), r.digest.as_deref()),
            ("127.0.0.1:5000", "ns/app", Some("v1"), None)
        );
        let r = ImageRef::parse(&format!("registry.example.com/a/b/c@{D}")).unwrap();
        assert_eq!((r.repository.as_str(), r.digest.as_deref(), r.tag.as_deref()), ("a/b/c", Some(D), None));
        assert_eq!(r.reference(), D);
        let r = ImageRef::parse(&format!("localhost/app:t@{D}")).unwrap();
        assert_eq!((r.tag.as_deref(), r.digest.as_deref()), (Some("t"), Some(D)));
        assert_eq!(r.to_string(), format!("localhost/app:t@{D}"));
        for ok in ["reg.io/a__b", "reg.io/a---b.c_d", "reg.io/0"] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        let r = ImageRef::parse("localhost:5000/app").unwrap();
        assert_eq!((r.tag.as_deref(), r.reference()), (None, "latest"));
    }

    #[test]
    fn rejects_bad_references_with_a_reason() {
        for (input, needle) in [
            ("app:v1", "HOST[:PORT]/REPO"),
            ("ns/app:v1", "registry host"),
            ("oci:/tmp/x", "HOST[:PORT]/REPO"),
            ("oci-archive://x/y", "not supported"),
            ("reg.io/App", "not valid"),
            // Distribution's separators: one `.`, one or two `_`, or dashes.
            ("reg.io/a._b", "not valid"),
            ("reg.io/a___b", "not valid"),
            ("reg.io/a.-b", "not valid"),
            ("reg.io/a_", "not valid"),
            ("reg.io/app:-bad", "valid tag"),
            ("reg.io/app@sha256:abc", "is not a digest"),
            ("reg.io/app@md5:abc", "only sha256"),
        ] {
            let e = ImageRef::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }
}
