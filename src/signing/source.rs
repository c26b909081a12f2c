//! Where keys come from: `{ secret: NAME }` (read through the cluster, the
//! layout `cosign generate-key-pair k8s://NS/NAME` writes: `cosign.key`,
//! `cosign.password`, `cosign.pub`; sigstore/cosign `pkg/cosign/kubernetes/secret.go`)
//! or `{ file: PATH }` (relative to the pipeline file; its password from
//! `COSIGN_PASSWORD`). Passwords are registered as secrets the moment they
//! are read, so nothing logged or stored can show them.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret as KubeSecret;
use p256::ecdsa::VerifyingKey;

use super::SigningError;
use super::keys::{self, KeyError, PrivateKey};
use crate::secret::Secret;
use crate::spec::KeyRef;

pub const PASSWORD_ENV: &str = "COSIGN_PASSWORD";

/// Where a key Secret lives.
pub struct SecretScope<'a> {
    pub client: &'a kube::Client,
    pub namespace: &'a str,
    pub env: &'a str,
}

/// `COSIGN_PASSWORD`, if set (an empty value is a password too: cosign
/// allows keys without one).
pub fn env_password() -> Option<Secret> {
    std::env::var(PASSWORD_ENV).ok().map(Secret::new)
}

/// Load the private key `key`.
pub async fn private_key(
    key: &KeyRef,
    scope: Option<SecretScope<'_>>,
    base_dir: &Path,
) -> Result<PrivateKey, SigningError> {
    let (pem, password, origin, how) = match key {
        KeyRef::File(path) => {
            let path = base_dir.join(path);
            let origin = format!("file {}", path.display());
            let pem = std::fs::read(&path)
                .map_err(|e| KeyError::Bad { origin: origin.clone(), reason: format!("cannot be read: {e}") })?;
            (pem, env_password(), origin, format!("set {PASSWORD_ENV}"))
        }
        KeyRef::Secret(name) => {
            let scope = scope.ok_or_else(|| SigningError::Access(format!("key Secret `{name}` needs a cluster")))?;
            let data = read_secret(&scope, name).await?;
            let origin = format!("Secret {}/{name}", scope.namespace);
            let pem = data
                .get("cosign.key")
                .cloned()
                .ok_or_else(|| KeyError::Bad { origin: origin.clone(), reason: "has no `cosign.key` key".into() })?;
            let password = match data.get("cosign.password") {
                Some(p) => Some(Secret::new(String::from_utf8_lossy(p).into_owned())),
                None => env_password(),
            };
            (pem, password, origin, format!("the Secret's `cosign.password` key, or {PASSWORD_ENV}"))
        }
    };
    // scrypt takes a while by design: off the async threads.
    tokio::task::spawn_blocking(move || keys::load_private(&pem, password.as_ref(), &origin, &how))
        .await
        .map_err(|e| SigningError::Access(format!("loading the signing key: {e}")))?
        .map_err(SigningError::from)
}

/// Load the public key `key`.
pub async fn public_key(
    key: &KeyRef,
    scope: Option<SecretScope<'_>>,
    base_dir: &Path,
) -> Result<VerifyingKey, SigningError> {
    match key {
        KeyRef::File(path) => {
            let path = base_dir.join(path);
            let origin = format!("file {}", path.display());
            let pem = std::fs::read(&path)
                .map_err(|e| KeyError::BadPublic { origin: origin.clone(), reason: format!("cannot be read: {e}") })?;
            Ok(keys::load_public(&pem, &origin)?)
        }
        KeyRef::Secret(name) => {
            let scope = scope.ok_or_else(|| SigningError::Access(format!("key Secret `{name}` needs a cluster")))?;
            let data = read_secret(&scope, name).await?;
            let origin = format!("Secret {}/{name}", scope.namespace);
            let pem = data.get("cosign.pub").ok_or_else(|| KeyError::BadPublic {
                origin: origin.clone(),
                reason: "has no `cosign.pub` key".into(),
            })?;
            Ok(keys::load_public(pem, &origin)?)
        }
    }
}

/// The Secret's data; a missing Secret is bad input, a refused read a failure.
async fn read_secret(
    scope: &SecretScope<'_>,
    name: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, SigningError> {
    let api: kube::Api<KubeSecret> = kube::Api::namespaced(scope.client.clone(), scope.namespace);
    let found = api.get_opt(name).await.map_err(|e| {
        let msg = match &e {
            kube::Error::Api(s) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
            other => other.to_string(),
        };
        SigningError::Access(format!(
            "key Secret {}/{name} of environment `{}` cannot be read: {msg}",
            scope.namespace, scope.env
        ))
    })?;
    let Some(found) = found else {
        return Err(KeyError::Bad {
            origin: format!("Secret {}/{name}", scope.namespace),
            reason: format!(
                "does not exist in environment `{}`; create it with `cosign generate-key-pair k8s://{}/{name}` or `oc create secret generic {name} --from-file=cosign.key --from-file=cosign.pub --from-literal=cosign.password=...`",
                scope.env, scope.namespace
            ),
        }
        .into());
    };
    let data: std::collections::BTreeMap<String, Vec<u8>> =
        found.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    if let Some(p) = data.get("cosign.password") {
        crate::secret::register(String::from_utf8_lossy(p).into_owned());
    }
    Ok(data)
}
