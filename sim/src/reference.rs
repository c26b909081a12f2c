//! Image references and digests as the registry and the cluster read them.
//!
//! The grammar follows github.com/distribution/reference `regexp.go`
//! (domain, path components with `.`/`_`/`__`/`-+` separators, tag) and its
//! `normalize.go` (`ParseNormalizedNamed`: a first component is a domain
//! only when it holds a `.` or a `:`, is `localhost`, or has an upper-case
//! letter; otherwise the image is on `docker.io`, under `library/` when it
//! has one component). Digests follow github.com/opencontainers/go-digest
//! (`Digest.Validate`): a registered algorithm and its exact encoded form.
//! Written from those sources for the sim alone: the runner has its own
//! parser, and the sim must not judge it with the same code.

use std::fmt;
use std::sync::OnceLock;

use regex::Regex;

/// distribution/reference `NameTotalLengthMax`.
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";

// The productions of regexp.go, composed the same way.
const ALPHANUMERIC: &str = "[a-z0-9]+";
const SEPARATOR: &str = "(?:[._]|__|[-]+)";
const DOMAIN_NAME_COMPONENT: &str = "(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const IPV6_ADDRESS: &str = r"\[(?:[a-fA-F0-9:]+)\]";
const OPTIONAL_PORT: &str = "(?::[0-9]+)?";
// `\w` is ASCII in Go's regexp.
const TAG: &str = "[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
const DIGEST: &str = "[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][[:xdigit:]]{32,}";

fn path_component() -> String {
    format!("{ALPHANUMERIC}(?:{SEPARATOR}{ALPHANUMERIC})*")
}

fn remote_name() -> String {
    let c = path_component();
    format!("{c}(?:/{c})*")
}

fn domain_and_port() -> String {
    let domain_name = format!("{DOMAIN_NAME_COMPONENT}(?:\\.{DOMAIN_NAME_COMPONENT})*");
    format!("(?:{domain_name}|{IPV6_ADDRESS}){OPTIONAL_PORT}")
}

/// `referencePat`: anchored name (domain optional), then `:tag`, then `@digest`.
fn reference_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        let name = format!("(?:{}/)?{}", domain_and_port(), remote_name());
        Regex::new(&format!("^({name})(?::({TAG}))?(?:@({DIGEST}))?$")).expect("static grammar")
    })
}

/// `anchoredNamePat`: the name split into domain and remote name.
fn name_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(&format!("^(?:({})/)?({})$", domain_and_port(), remote_name())).expect("static grammar")
    })
}

fn remote_name_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(&format!("^{}$", remote_name())).expect("static grammar"))
}

fn identifier_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new("^[a-f0-9]{64}$").expect("static grammar"))
}

/// Why a reference was refused, in distribution's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

/// A parsed, normalized reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`; `docker.io` when the reference named none.
    pub domain: String,
    /// The repository within the registry (`ns/name`).
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// `ParseNormalizedNamed`: what a pod's `image:`, a Build's `from` or an
    /// ImageStream tag's `DockerImage` means, with the default domain filled in.
    pub fn parse_normalized(input: &str) -> Result<Reference, ReferenceError> {
        let bad = |reason: String| ReferenceError { input: input.to_string(), reason };
        if identifier_regex().is_match(input) {
            return Err(bad(format!("invalid repository name ({input}), cannot specify 64-byte hexadecimal strings")));
        }
        let (domain, remainder) = split_docker_domain(input);
        let remote = remainder.split_once(':').map_or(remainder.as_str(), |(r, _)| r);
        if remote.to_lowercase() != remote {
            return Err(bad(format!("invalid reference format: repository name ({remote}) must be lowercase")));
        }
        Reference::parse_qualified(&format!("{domain}/{remainder}")).map_err(|e| bad(e.reason))
    }

    /// `Parse` of a name that already carries its domain.
    fn parse_qualified(input: &str) -> Result<Reference, ReferenceError> {
        let bad = |reason: &str| ReferenceError { input: input.to_string(), reason: reason.to_string() };
        if input.is_empty() {
            return Err(bad("repository name must have at least one component"));
        }
        let caps = reference_regex().captures(input).ok_or_else(|| bad("invalid reference format"))?;
        let name = &caps[1];
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(bad("repository name must not be more than 255 characters"));
        }
        let parts = name_regex().captures(name).ok_or_else(|| bad("invalid reference format"))?;
        let domain = parts.get(1).map(|m| m.as_str().to_string()).unwrap_or_default();
        let path = parts[2].to_string();
        let digest = caps.get(3).map(|m| m.as_str().to_string());
        if let Some(d) = &digest {
            validate_digest(d).map_err(|r| bad(&r))?;
        }
        Ok(Reference { domain, path, tag: caps.get(2).map(|m| m.as_str().to_string()), digest })
    }
}

impl Reference {
    /// What a pull asks the registry for: the digest, else the tag, else `latest`.
    pub fn reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// normalize.go `splitDockerDomain`.
fn split_docker_domain(name: &str) -> (String, String) {
    let Some((maybe_domain, maybe_remote)) = name.split_once('/') else {
        return (DEFAULT_DOMAIN.to_string(), format!("library/{name}"));
    };
    let (domain, remote) = if maybe_domain == "localhost"
        || maybe_domain.contains(['.', ':'])
        || maybe_domain.to_lowercase() != maybe_domain
    {
        let domain = if maybe_domain == LEGACY_DEFAULT_DOMAIN { DEFAULT_DOMAIN } else { maybe_domain };
        (domain.to_string(), maybe_remote.to_string())
    } else {
        (DEFAULT_DOMAIN.to_string(), name.to_string())
    };
    if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        return (domain, format!("library/{remote}"));
    }
    (domain, remote)
}

/// A repository name as the registry's `/v2/<name>/` routes take it: the
/// remote-name production, at most 255 characters.
pub fn validate_repository(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("repository name must have at least one component".into());
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err("repository name must not be more than 255 characters".into());
    }
    if !remote_name_regex().is_match(name) {
        return Err(format!("invalid repository name: {name}"));
    }
    Ok(())
}

/// go-digest `Digest.Validate` for the algorithms a registry registers
/// (sha256, sha384, sha512), each with its exact lower-case hex length; the
/// sim's storage is sha256 only, so the others are valid but unsupported.
pub fn validate_digest(d: &str) -> Result<(), String> {
    let Some((algorithm, encoded)) = d.split_once(':') else {
        return Err(format!("invalid checksum digest format: {d}"));
    };
    let size = match algorithm {
        "sha256" => 64,
        "sha384" | "sha512" => {
            return Err(format!("unsupported digest algorithm: {algorithm} (this registry stores sha256)"));
        }
        _ => return Err(format!("unsupported digest algorithm: {algorithm}")),
    };
    if encoded.len() != size || !encoded.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(format!("invalid checksum digest length or characters: {d}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_as_docker_does() {
        let r = Reference::parse_normalized("ubuntu").unwrap();
        assert_eq!((r.domain.as_str(), r.path.as_str(), r.tag.as_deref()), ("docker.io", "library/ubuntu", None));
        let r = Reference::parse_normalized("me/app:v1").unwrap();
        assert_eq!((r.domain.as_str(), r.path.as_str(), r.tag.as_deref()), ("docker.io", "me/app", Some("v1")));
        let r = Reference::parse_normalized("index.docker.io/app").unwrap();
        assert_eq!((r.domain.as_str(), r.path.as_str()), ("docker.io", "library/app"));
        let r = Reference::parse_normalized(&format!("127.0.0.1:5000/ns/app:t@{D}")).unwrap();
        assert_eq!(
            (r.domain.as_str(), r.path.as_str(), r.tag.as_deref(), r.digest.as_deref()),
            ("127.0.0.1:5000", "ns/app", Some("t"), Some(D))
        );
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/ns/app:t@{D}"));
        let r = Reference::parse_normalized("localhost/app").unwrap();
        assert_eq!(r.domain, "localhost");
        let r = Reference::parse_normalized("Registry/app").unwrap();
        assert_eq!(r.domain, "Registry", "an upper-case first component is a domain");
        let r = Reference::parse_normalized("image-registry.openshift-image-registry.svc:5000/ns/a").unwrap();
        assert_eq!(r.domain, "image-registry.openshift-image-registry.svc:5000");
    }

    #[test]
    fn refuses_what_distribution_refuses() {
        for input in [
            "reg.io/App",
            "reg.io/a._b",
            "reg.io/a.-b",
            "reg.io/a___b",
            "reg.io/a/",
            "reg.io/app:-bad",
            "reg.io/app@sha256:abc",
            "reg.io/app@md5:0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "",
        ] {
            assert!(Reference::parse_normalized(input).is_err(), "{input}");
        }
        assert!(Reference::parse_normalized(&format!("reg.io/{}", "a".repeat(250))).is_err(), "name over 255");
        for ok in ["reg.io/a__b", "reg.io/a---b", "reg.io/a.b_c", "[::1]:5000/a"] {
            assert!(Reference::parse_normalized(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn repositories_and_digests() {
        assert!(validate_repository("ns/app").is_ok());
        assert!(validate_repository("ns/a__b-c.d").is_ok());
        for bad in ["", "Ns/app", "ns//app", "ns/a._b", "ns/-a", "ns/a_"] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
        assert!(validate_digest(D).is_ok());
        assert!(validate_digest(&D.to_uppercase().replace("SHA256", "sha256")).is_err(), "upper-case hex");
        assert!(validate_digest("sha512:00").unwrap_err().contains("unsupported"));
        assert!(validate_digest("sha256").is_err());
    }
}
