//! OCI image copy by digest between registries (Distribution API v2).
//!
//! [`copy_image`] copies a manifest or image index (every child manifest),
//! and every blob, keeping the manifest bytes exactly so the digest is the
//! same on both sides. Blobs the target has are skipped (HEAD); within one
//! registry they are mounted across repositories; otherwise they stream from
//! source to target (one GET body piped into one PUT body, hashed on the way,
//! never held whole), several at once, each retried from the start on
//! failure. The manifest (and so the tag) is written only after every blob
//! and child manifest is in place.
//!
//! Written on reqwest rather than `oci-client`: see [`copy`] for why.

pub mod artifact;
mod auth;
mod client;
mod copy;
mod reference;

pub use auth::{AuthStore, Credentials};
pub use client::RegistryClient;
pub(crate) use copy::sha256_digest as sha256_of;
pub use copy::{CopyOptions, CopyStats, copy_image};
pub use reference::{ImageRef, validate_digest, validate_repository};

use std::path::PathBuf;

use crate::error::{ExitClass, HasExitClass};

/// Media types modelship copies.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// What every manifest GET accepts.
    pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image reference `{input}` is not valid: {reason}")]
    BadReference { input: String, reason: String },

    #[error("registry auth file {path}: {message}")]
    AuthFile { path: PathBuf, message: String },

    #[error(
        "cannot reach registry {registry} at {url}{hint}",
        hint = if *insecure { "" } else { " (TLS is verified; if this registry is plain http or self-signed, name it insecure: --src-insecure/--dest-insecure)" }
    )]
    Connect {
        registry: String,
        url: String,
        insecure: bool,
        #[source]
        source: reqwest::Error,
    },

    #[error("registry {registry} answered 401 Unauthorized for {scope}: {detail}")]
    Unauthorized { registry: String, scope: String, detail: String },

    #[error("registry {registry} refused {what} (403 Forbidden): {body}")]
    Denied { registry: String, what: String, body: String },

    #[error("{image} not found in the source registry (manifest unknown)")]
    ManifestNotFound { image: String },

    #[error("manifest of {image} has digest {actual}, expected {expected}; nothing was copied")]
    ManifestDigestMismatch { image: String, expected: String, actual: String },

    #[error(
        "manifest of {image} has media type `{media_type}`, which modelship cannot copy (OCI or Docker schema 2 manifests and indexes only)"
    )]
    UnsupportedManifest { image: String, media_type: String },

    #[error("manifest of {image} is not valid JSON: {message}")]
    BadManifest { image: String, message: String },

    #[error("manifest of {image} is larger than {limit} bytes; refused, nothing was copied")]
    ManifestTooLarge { image: String, limit: usize },

    #[error(
        "blob {digest} read from {source_repo} hashes to {actual}: the source registry returned bytes that do not match their digest; nothing was tagged"
    )]
    BlobDigestMismatch { source_repo: String, digest: String, actual: String },

    #[error("blob {digest} from {source_repo} is {actual} bytes, the manifest says {expected}")]
    BlobSizeMismatch { source_repo: String, digest: String, expected: u64, actual: u64 },

    #[error("{registry}: {what} failed with HTTP {status}: {body}")]
    Http { registry: String, what: String, status: u16, body: String },

    #[error("{registry}: {what}")]
    Transport {
        registry: String,
        what: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("reading blob {digest} from {source_repo} broke off after {read} of {size} bytes")]
    SourceRead {
        source_repo: String,
        digest: String,
        read: u64,
        size: u64,
        #[source]
        source: reqwest::Error,
    },

    #[error("copying blob {digest} to {target} failed after {attempts} attempt(s); no tag was moved")]
    BlobCopy {
        digest: String,
        target: String,
        attempts: u32,
        #[source]
        source: Box<RegistryError>,
    },

    #[error("destination {dst} names digest {dst_digest}, but the source is {src_digest}")]
    DestinationDigest { dst: String, dst_digest: String, src_digest: String },

    #[error("cannot start the copy of {what}: {message}")]
    Runtime { what: String, message: String },
}

impl RegistryError {
    /// Worth another attempt: the network, a 5xx/429, or a 401 on a blob
    /// upload (a token that expired mid-upload; a wrong password fails again
    /// at the token endpoint as [`RegistryError::Unauthorized`]), not a verdict.
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::SourceRead { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500 || matches!(*status, 401 | 408 | 429),
            _ => false,
        }
    }
}

impl HasExitClass for RegistryError {
    fn exit_class(&self) -> ExitClass {
        match self {
            RegistryError::BadReference { .. }
            | RegistryError::AuthFile { .. }
            | RegistryError::ManifestNotFound { .. }
            | RegistryError::DestinationDigest { .. } => ExitClass::BadInput,
            _ => ExitClass::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What users read when a copy fails; the wording is the contract.
    #[test]
    fn error_messages() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let errors = [
            RegistryError::Unauthorized {
                registry: "registry.prod.example.com".into(),
                scope: "repository:models-prod/weather:pull,push".into(),
                detail: "no credentials for registry.prod.example.com were found (looked in: /run/containers/0/auth.json (absent), /opt/app-root/src/.docker/config.json (absent)); pass --authfile with a docker config.json or containers auth.json that has an entry for it".into(),
            },
            RegistryError::ManifestNotFound { image: format!("127.0.0.1:5000/models-dev/weather@{d}") },
            RegistryError::BlobCopy {
                digest: d.clone(),
                target: "127.0.0.1:5001/models-prod/weather".into(),
                attempts: 4,
                source: Box::new(RegistryError::Http {
                    registry: "127.0.0.1:5001".into(),
                    what: format!("PUT blob {d}"),
                    status: 503,
                    body: "unavailable".into(),
                }),
            },
            RegistryError::BlobDigestMismatch {
                source_repo: "127.0.0.1:5000/models-dev/weather".into(),
                digest: d.clone(),
                actual: format!("sha256:{}", "cd".repeat(32)),
            },
            RegistryError::BadReference { input: "weather:v1".into(), reason: "expected HOST[:PORT]/REPO".into() },
        ];
        let text: Vec<String> = errors.into_iter().map(|e| crate::error::chain(&e)).collect();
        insta::assert_snapshot!(text.join("\n"));
    }
}
