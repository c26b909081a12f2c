//! Small artifacts pushed and read whole: cosign's signature and attestation
//! manifests (a config, one layer per signature). Everything here is a few
//! KiB, so bodies are buffered (capped); images go through [`super::copy_image`].

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::client::RegistryClient;
use super::copy::{http_error, read_limited, sha256_digest};
use super::{RegistryError, media};

/// Largest artifact blob or manifest read (signatures are a few hundred
/// bytes; an attestation with many cases a few KiB).
pub const MAX_ARTIFACT: usize = 4 << 20;

fn pull(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

fn push(repository: &str) -> String {
    format!("repository:{repository}:pull,push")
}

/// A manifest by tag or digest: `(bytes, media type, digest)`, or `None` when
/// the registry has no such manifest (404).
pub async fn get_manifest(
    client: &RegistryClient,
    repository: &str,
    reference: &str,
) -> Result<Option<(Bytes, String, String)>, RegistryError> {
    let url = client.url(repository, &format!("manifests/{reference}"));
    let what = format!("GET manifest {repository}:{reference}");
    let resp = client.send(&pull(repository), &what, |c| c.get(url.clone()).header("Accept", media::ACCEPT)).await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        return Err(http_error(client, what, resp).await);
    }
    let media_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = read_limited(resp, MAX_ARTIFACT, client, &what).await?;
    let digest = sha256_digest(&bytes);
    if reference.starts_with("sha256:") && digest != reference {
        return Err(RegistryError::ManifestDigestMismatch {
            image: format!("{}/{repository}", client.registry),
            expected: reference.to_string(),
            actual: digest,
        });
    }
    Ok(Some((bytes, media_type, digest)))
}

/// A blob, checked against its digest.
pub async fn get_blob(client: &RegistryClient, repository: &str, digest: &str) -> Result<Bytes, RegistryError> {
    super::validate_digest(digest)
        .map_err(|reason| RegistryError::BadReference { input: digest.to_string(), reason })?;
    let url = client.url(repository, &format!("blobs/{digest}"));
    let what = format!("GET blob {repository}@{digest}");
    let resp = client.send(&pull(repository), &what, |c| c.get(url.clone())).await?;
    if !resp.status().is_success() {
        return Err(http_error(client, what, resp).await);
    }
    let bytes = read_limited(resp, MAX_ARTIFACT, client, &what).await?;
    let actual = sha256_digest(&bytes);
    if actual != digest {
        return Err(RegistryError::BlobDigestMismatch {
            source_repo: format!("{}/{repository}", client.registry),
            digest: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// Upload `bytes` as a blob (monolithic POST-then-PUT) unless the repository
/// has it already. Returns its digest.
pub async fn put_blob(client: &RegistryClient, repository: &str, bytes: Bytes) -> Result<String, RegistryError> {
    let digest = sha256_digest(&bytes);
    let scope = push(repository);
    let head = client.url(repository, &format!("blobs/{digest}"));
    let resp = client.send(&scope, "blob HEAD", |c| c.head(head.clone())).await?;
    if resp.status().is_success() {
        return Ok(digest);
    }
    let start = client.url(repository, "blobs/uploads/");
    let what = format!("POST blob upload to {repository}");
    let resp = client.send(&scope, &what, |c| c.post(start.clone()).header(CONTENT_LENGTH, 0)).await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(http_error(client, what, resp).await);
    }
    let location = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut url = client.resolve(&location).map_err(|e| RegistryError::Http {
        registry: client.registry.clone(),
        what: format!("upload location `{location}`: {e}"),
        status: 202,
        body: String::new(),
    })?;
    url.query_pairs_mut().append_pair("digest", &digest);
    let what = format!("PUT blob {digest} to {repository}");
    let resp = client
        .send(&scope, &what, |c| {
            c.put(url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, bytes.len())
                .body(bytes.clone())
        })
        .await?;
    if !resp.status().is_success() {
        return Err(http_error(client, what, resp).await);
    }
    Ok(digest)
}

/// PUT a manifest under `reference`; returns its digest.
pub async fn put_manifest(
    client: &RegistryClient,
    repository: &str,
    reference: &str,
    media_type: &str,
    bytes: Bytes,
) -> Result<String, RegistryError> {
    let digest = sha256_digest(&bytes);
    let url = client.url(repository, &format!("manifests/{reference}"));
    let what = format!("PUT manifest {repository}:{reference}");
    let resp = client
        .send(&push(repository), &what, |c| c.put(url.clone()).header(CONTENT_TYPE, media_type).body(bytes.clone()))
        .await?;
    if !resp.status().is_success() {
        return Err(http_error(client, what, resp).await);
    }
    if let Some(d) = resp.headers().get("Docker-Content-Digest").and_then(|v| v.to_str().ok())
        && d != digest
    {
        return Err(RegistryError::ManifestDigestMismatch {
            image: format!("{}/{repository}:{reference} (as stored)", client.registry),
            expected: digest,
            actual: d.to_string(),
        });
    }
    Ok(digest)
}
