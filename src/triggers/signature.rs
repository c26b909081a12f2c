//! Webhook authentication. GitHub signs the raw body with HMAC-SHA256 and
//! sends `X-Hub-Signature-256: sha256=<hex>`; GitLab sends the shared secret
//! itself in `X-Gitlab-Token`. Both are compared in constant time.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::TriggerError;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("{0} header is not `sha256=<64 hex digits>`")]
    Malformed(&'static str),
    #[error("{0} does not match the payload and the configured secret")]
    Mismatch(&'static str),
}

pub const GITHUB_HEADER: &str = "X-Hub-Signature-256";
pub const GITLAB_HEADER: &str = "X-Gitlab-Token";

/// `sha256=<hex>` as GitHub computes it.
pub fn github_signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, body)))
}

fn hmac_sha256(secret: &[u8], body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

pub fn verify_github(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing(GITHUB_HEADER))?;
    let hex_part = header.trim().strip_prefix("sha256=").ok_or(SignatureError::Malformed(GITHUB_HEADER))?;
    let given = hex::decode(hex_part).map_err(|_| SignatureError::Malformed(GITHUB_HEADER))?;
    if given.len() != 32 {
        return Err(SignatureError::Malformed(GITHUB_HEADER));
    }
    let expected = hmac_sha256(secret, body);
    if bool::from(expected.ct_eq(&given)) { Ok(()) } else { Err(SignatureError::Mismatch(GITHUB_HEADER)) }
}

pub fn verify_gitlab(secret: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let given = header.ok_or(SignatureError::Missing(GITLAB_HEADER))?;
    // Compare digests, not the strings, so the time taken does not reveal the
    // secret's length either.
    let a = Sha256::digest(secret);
    let b = Sha256::digest(given.as_bytes());
    if bool::from(a.as_slice().ct_eq(b.as_slice())) { Ok(()) } else { Err(SignatureError::Mismatch(GITLAB_HEADER)) }
}

/// The webhook secret: `--secret-file` wins over `MODELSHIP_WEBHOOK_SECRET`.
/// A trailing newline in the file is not part of the secret. `None` only with
/// `insecure`; otherwise a missing or empty secret is an error.
pub fn load_secret(file: Option<&Path>, env: Option<String>, insecure: bool) -> Result<Option<Secret>, TriggerError> {
    let value = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| TriggerError::Io { path: path.to_path_buf(), source })?;
            Some(text.trim_end_matches(['\r', '\n']).to_string())
        }
        None => env,
    };
    match value {
        Some(v) if v.is_empty() => Err(TriggerError::Secret("the secret is empty".into())),
        Some(v) => Ok(Some(Secret::new(v))),
        None if insecure => Ok(None),
        None => Err(TriggerError::Secret(
            "no secret: pass --secret-file PATH or set MODELSHIP_WEBHOOK_SECRET (or --insecure-no-signature, never in production)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        secret: String,
        payload: String,
        x_hub_signature_256: String,
    }

    fn vector() -> Vector {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/webhooks/github/signature-test-vector.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    #[test]
    fn github_documented_test_vector() {
        let v = vector();
        assert_eq!(github_signature(v.secret.as_bytes(), v.payload.as_bytes()), v.x_hub_signature_256);
        verify_github(v.secret.as_bytes(), v.payload.as_bytes(), Some(&v.x_hub_signature_256)).unwrap();
    }

    #[test]
    fn github_rejects_tampering_and_garbage() {
        let v = vector();
        let s = v.secret.as_bytes();
        let h = Some(v.x_hub_signature_256.as_str());
        assert_eq!(verify_github(s, b"Hello, World?", h), Err(SignatureError::Mismatch(GITHUB_HEADER)));
        assert_eq!(verify_github(b"other", v.payload.as_bytes(), h), Err(SignatureError::Mismatch(GITHUB_HEADER)));
        assert_eq!(verify_github(s, b"x", None), Err(SignatureError::Missing(GITHUB_HEADER)));
        assert_eq!(verify_github(s, b"x", Some("sha1=abcd")), Err(SignatureError::Malformed(GITHUB_HEADER)));
        assert_eq!(verify_github(s, b"x", Some("sha256=zz")), Err(SignatureError::Malformed(GITHUB_HEADER)));
        assert_eq!(verify_github(s, b"x", Some("sha256=abcd")), Err(SignatureError::Malformed(GITHUB_HEADER)));
    }

    #[test]
    fn gitlab_token() {
        verify_gitlab(b"tok3n-value", Some("tok3n-value")).unwrap();
        assert_eq!(verify_gitlab(b"tok3n-value", Some("tok3n-valuf")), Err(SignatureError::Mismatch(GITLAB_HEADER)));
        assert_eq!(verify_gitlab(b"tok3n-value", Some("")), Err(SignatureError::Mismatch(GITLAB_HEADER)));
        assert_eq!(verify_gitlab(b"tok3n-value", None), Err(SignatureError::Missing(GITLAB_HEADER)));
    }

    #[test]
    fn secret_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "from-file-secret\n").unwrap();
        let s = load_secret(Some(&f), Some("from-env-secret".into()), false).unwrap().unwrap();
        assert_eq!(s.expose(), "from-file-secret");
        let s = load_secret(None, Some("from-env-secret".into()), false).unwrap().unwrap();
        assert_eq!(s.expose(), "from-env-secret");
        assert!(load_secret(None, None, true).unwrap().is_none());
        let err = load_secret(None, None, false).unwrap_err();
        assert!(err.to_string().contains("--secret-file"), "{err}");
        assert!(load_secret(None, Some(String::new()), false).is_err());
    }
}
