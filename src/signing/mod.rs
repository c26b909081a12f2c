//! Image signatures and model provenance, in cosign's key-based formats so
//! cosign, skopeo and policy engines read what modelship writes.
//!
//! - Signature: a simple-signing payload naming the repository and
//!   `docker-manifest-digest`, signed with ECDSA P-256 / SHA-256, stored as a
//!   layer (`application/vnd.dev.cosign.simplesigning.v1+json`, signature in
//!   the `dev.cosignproject.cosign/signature` annotation) of the OCI manifest
//!   tagged `sha256-<hex>.sig` in the image's repository (sigstore/cosign
//!   `pkg/oci/static`, containers/image `docker/docker_image_dest.go`
//!   `putSignaturesToSigstoreAttachments`, `internal/signature/sigstore.go`).
//! - Attestation: an in-toto Statement v1 in a DSSE envelope signed over its
//!   PAE, a layer (`application/vnd.dsse.envelope.v1+json`, annotation
//!   `predicateType`) of the manifest tagged `sha256-<hex>.att`, as
//!   `cosign attest --key` writes it.
//!
//! Both manifests gain a layer per new signature, as cosign and
//! containers/image append; a layer already there is not written twice, so
//! a retried stage changes nothing.

pub mod keys;
pub mod source;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{DerSignature, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ExitClass, HasExitClass};
use crate::registry::{RegistryClient, RegistryError, artifact, media};
pub use keys::{KeyError, PrivateKey};

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const DSSE: &str = "application/vnd.dsse.envelope.v1+json";
pub const PREDICATE_ANNOTATION: &str = "predicateType";
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// modelship's predicate: what was fetched, built and checked.
pub const PREDICATE_TYPE: &str = "https://modelship.io/provenance/v1";
const SIGNATURE_TYPE: &str = "cosign container image signature";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{what}: {source}")]
    Registry {
        what: String,
        #[source]
        source: RegistryError,
    },
    /// The signature or attestation does not hold for this digest and key.
    #[error("{0}")]
    Unverified(String),
    /// A key Secret that could not be read (RBAC, the API server).
    #[error("{0}")]
    Access(String),
}

impl HasExitClass for SigningError {
    fn exit_class(&self) -> ExitClass {
        match self {
            SigningError::Key(e) => e.exit_class(),
            SigningError::Registry { source, .. } => match source {
                RegistryError::BadReference { .. } | RegistryError::AuthFile { .. } => ExitClass::BadInput,
                _ => ExitClass::Failed,
            },
            SigningError::Unverified(_) | SigningError::Access(_) => ExitClass::Failed,
        }
    }
}

impl SigningError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SigningError::Registry { source, .. } if source.is_transient())
    }
}

fn reg(what: impl Into<String>) -> impl FnOnce(RegistryError) -> SigningError {
    let what = what.into();
    move |source| SigningError::Registry { what, source }
}

/// `sha256:<hex>` -> `sha256-<hex>.<suffix>` (cosign's attachment tag;
/// containers/image `sigstoreAttachmentTag`).
pub fn attachment_tag(digest: &str, suffix: &str) -> String {
    format!("{}.{suffix}", digest.replacen(':', "-", 1))
}

/// The simple-signing payload cosign signs (`pkg/cosign/payload`):
/// containers/image accepts exactly these fields (signature/internal/sigstore_payload.go).
pub fn simple_signing_payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": { "docker-reference": docker_reference },
            "image": { "docker-manifest-digest": digest },
            "type": SIGNATURE_TYPE,
        },
        "optional": null,
    }))
    .expect("serialisable")
}

/// Base64 of the ASN.1 DER ECDSA signature over SHA-256 of `message`.
pub fn sign_bytes(key: &PrivateKey, message: &[u8]) -> String {
    let sig: DerSignature = key.signing().sign(message);
    STANDARD.encode(sig.as_bytes())
}

fn verify_bytes(key: &VerifyingKey, message: &[u8], b64: &str) -> bool {
    let Ok(raw) = STANDARD.decode(b64.trim()) else { return false };
    let Ok(sig) = DerSignature::try_from(raw.as_slice()) else { return false };
    key.verify(message, &sig).is_ok()
}

/// DSSE's pre-authentication encoding (secure-systems-lab/dsse protocol.md).
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: String,
    pub sig: String,
}

/// The in-toto Statement v1 of `digest` in `repository` with `predicate`.
pub fn statement(repository: &str, digest: &str, predicate: Value) -> Value {
    json!({
        "_type": STATEMENT_V1,
        "subject": [{ "name": repository, "digest": { "sha256": digest.strip_prefix("sha256:").unwrap_or(digest) } }],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    })
}

/// A DSSE envelope around `statement`, signed with `key`.
pub fn envelope(key: &PrivateKey, statement: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(statement).expect("serialisable");
    let sig = sign_bytes(key, &pae(IN_TOTO, &body));
    serde_json::to_vec(&Envelope {
        payload_type: IN_TOTO.into(),
        payload: STANDARD.encode(&body),
        signatures: vec![EnvelopeSignature { keyid: String::new(), sig }],
    })
    .expect("serialisable")
}

/// What [`sign_image`] wrote: digests of the `.sig` and `.att` manifests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signed {
    pub signature: String,
    pub attestation: String,
}

/// Sign `digest` in `repository` (`NS/NAME` on `client`'s registry) and
/// attach the attestation of `predicate`. `docker_reference` is the
/// repository as users name it (`HOST/NS/NAME`).
pub async fn sign_image(
    client: &RegistryClient,
    repository: &str,
    docker_reference: &str,
    digest: &str,
    key: &PrivateKey,
    predicate: Value,
) -> Result<Signed, SigningError> {
    let payload = simple_signing_payload(docker_reference, digest);
    let sig = sign_bytes(key, &payload);
    let signature = append_layer(
        client,
        repository,
        &attachment_tag(digest, "sig"),
        SIMPLE_SIGNING,
        payload,
        json!({ SIGNATURE_ANNOTATION: sig }),
    )
    .await?;
    let envelope = envelope(key, &statement(docker_reference, digest, predicate));
    let attestation = append_layer(
        client,
        repository,
        &attachment_tag(digest, "att"),
        DSSE,
        envelope,
        json!({ PREDICATE_ANNOTATION: PREDICATE_TYPE }),
    )
    .await?;
    Ok(Signed { signature, attestation })
}

/// Add a layer to the attachment manifest `tag` (creating it), as cosign
/// does; an identical layer already there leaves the manifest as it is.
/// Returns the manifest's digest.
pub async fn append_layer(
    client: &RegistryClient,
    repository: &str,
    tag: &str,
    media_type: &str,
    bytes: Vec<u8>,
    annotations: Value,
) -> Result<String, SigningError> {
    let image = format!("{}/{repository}:{tag}", client.registry);
    let bytes = Bytes::from(bytes);
    let layer_digest = crate::registry::sha256_of(&bytes);
    let mut layers: Vec<Value> = Vec::new();
    if let Some((existing, mt, digest)) =
        artifact::get_manifest(client, repository, tag).await.map_err(reg(format!("reading {image}")))?
    {
        let manifest: Value = serde_json::from_slice(&existing)
            .map_err(|e| SigningError::Unverified(format!("{image} is not a valid manifest: {e}")))?;
        if mt != media::OCI_MANIFEST && manifest.get("mediaType").and_then(Value::as_str) != Some(media::OCI_MANIFEST) {
            return Err(SigningError::Unverified(format!("{image} has media type `{mt}`, not an OCI manifest")));
        }
        layers = manifest.get("layers").and_then(Value::as_array).cloned().unwrap_or_default();
        let same = |l: &Value| {
            l.get("digest").and_then(Value::as_str) == Some(layer_digest.as_str())
                && l.get("annotations") == Some(&annotations)
        };
        if layers.iter().any(same) {
            return Ok(digest);
        }
    }
    let size = bytes.len();
    artifact::put_blob(client, repository, bytes).await.map_err(reg(format!("uploading a layer of {image}")))?;
    layers.push(json!({ "mediaType": media_type, "size": size, "digest": layer_digest, "annotations": annotations }));
    let diff_ids: Vec<Value> = layers.iter().filter_map(|l| l.get("digest").cloned()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .expect("serialisable");
    let config_size = config.len();
    let config_digest = artifact::put_blob(client, repository, Bytes::from(config))
        .await
        .map_err(reg(format!("uploading the config of {image}")))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": { "mediaType": OCI_CONFIG, "size": config_size, "digest": config_digest },
        "layers": layers,
    }))
    .expect("serialisable");
    artifact::put_manifest(client, repository, tag, media::OCI_MANIFEST, Bytes::from(manifest))
        .await
        .map_err(reg(format!("writing {image}")))
}

/// A verified image: the attachment manifests checked and the provenance.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// `HOST/NS/NAME@sha256:...`
    pub image: String,
    pub digest: String,
    /// Digest of the `.sig` manifest and the repository its payload names.
    pub signature: String,
    pub signed_reference: String,
    /// Digest of the `.att` manifest.
    pub attestation: String,
    /// The in-toto Statement whose envelope verified.
    pub statement: Value,
}

/// Layers of the attachment manifest `tag`, with its digest; `None` if absent.
async fn attachment_layers(
    client: &RegistryClient,
    repository: &str,
    tag: &str,
) -> Result<Option<(String, Vec<Value>)>, SigningError> {
    let image = format!("{}/{repository}:{tag}", client.registry);
    let Some((bytes, _mt, digest)) =
        artifact::get_manifest(client, repository, tag).await.map_err(reg(format!("reading {image}")))?
    else {
        return Ok(None);
    };
    let manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| SigningError::Unverified(format!("{image} is not a valid manifest: {e}")))?;
    Ok(Some((digest, manifest.get("layers").and_then(Value::as_array).cloned().unwrap_or_default())))
}

/// Check that `digest` in `repository` carries a signature by `key` for
/// this exact digest and an attestation by `key` whose subject is the digest
/// and whose checks all passed. The error says, in one line, which failed.
pub async fn verify_image(
    client: &RegistryClient,
    repository: &str,
    digest: &str,
    key: &VerifyingKey,
) -> Result<Verification, SigningError> {
    let (signature, signed_reference) = verify_signature(client, repository, digest, key).await?;
    let (attestation, statement) = verify_attestation(client, repository, digest, key).await?;
    Ok(Verification {
        image: format!("{}/{repository}@{digest}", client.registry),
        digest: digest.to_string(),
        signature,
        signed_reference,
        attestation,
        statement,
    })
}

/// The signature alone (what cosign and skopeo write): the `.sig`
/// manifest's digest and the repository its payload names.
pub async fn verify_signature(
    client: &RegistryClient,
    repository: &str,
    digest: &str,
    key: &VerifyingKey,
) -> Result<(String, String), SigningError> {
    crate::registry::validate_digest(digest)
        .map_err(|m| SigningError::Unverified(format!("digest `{digest}`: {m}")))?;
    let image = format!("{}/{repository}@{digest}", client.registry);
    let unverified = |m: String| SigningError::Unverified(m);

    // The signature.
    let sig_tag = attachment_tag(digest, "sig");
    let Some((signature, layers)) = attachment_layers(client, repository, &sig_tag).await? else {
        return Err(unverified(format!("{image} is not signed (no {sig_tag} in {}/{repository})", client.registry)));
    };
    let mut reasons = Vec::new();
    let mut signed_reference = None;
    for layer in layers.iter().filter(|l| l.get("mediaType").and_then(Value::as_str) == Some(SIMPLE_SIGNING)) {
        let (Some(d), Some(sig)) = (
            layer.get("digest").and_then(Value::as_str),
            layer.pointer(&format!("/annotations/{}", SIGNATURE_ANNOTATION.replace('/', "~1"))).and_then(Value::as_str),
        ) else {
            reasons.push("a signature layer has no signature annotation".to_string());
            continue;
        };
        let payload = artifact::get_blob(client, repository, d).await.map_err(reg(format!("reading {sig_tag}")))?;
        if !verify_bytes(key, &payload, sig) {
            reasons.push("a signature does not verify with this public key".into());
            continue;
        }
        let parsed: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        let signed = parsed.pointer("/critical/image/docker-manifest-digest").and_then(Value::as_str);
        if parsed.pointer("/critical/type").and_then(Value::as_str) != Some(SIGNATURE_TYPE) {
            reasons.push("a signed payload is not a cosign container image signature".into());
        } else if signed != Some(digest) {
            reasons.push(format!("the signature is for {}, not {digest}", signed.unwrap_or("no digest")));
        } else {
            let r = parsed.pointer("/critical/identity/docker-reference").and_then(Value::as_str);
            signed_reference = Some(r.unwrap_or_default().to_string());
            break;
        }
    }
    let Some(signed_reference) = signed_reference else {
        let why = if reasons.is_empty() { "it holds no simple-signing layer".to_string() } else { dedup(reasons) };
        return Err(unverified(format!("signature of {image} refused: {why}")));
    };
    Ok((signature, signed_reference))
}

/// The attestation alone: the `.att` manifest's digest and the Statement.
pub async fn verify_attestation(
    client: &RegistryClient,
    repository: &str,
    digest: &str,
    key: &VerifyingKey,
) -> Result<(String, Value), SigningError> {
    let image = format!("{}/{repository}@{digest}", client.registry);
    let unverified = |m: String| SigningError::Unverified(m);
    let att_tag = attachment_tag(digest, "att");
    let Some((attestation, layers)) = attachment_layers(client, repository, &att_tag).await? else {
        return Err(unverified(format!(
            "{image} has no attestation (no {att_tag} in {}/{repository})",
            client.registry
        )));
    };
    let mut reasons = Vec::new();
    let mut found = None;
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    for layer in layers.iter().filter(|l| l.get("mediaType").and_then(Value::as_str) == Some(DSSE)) {
        let Some(d) = layer.get("digest").and_then(Value::as_str) else { continue };
        let bytes = artifact::get_blob(client, repository, d).await.map_err(reg(format!("reading {att_tag}")))?;
        match check_envelope(key, &bytes, hex) {
            Ok(statement) => {
                found = Some(statement);
                break;
            }
            Err(why) => reasons.push(why),
        }
    }
    let Some(statement) = found else {
        let why = if reasons.is_empty() { "it holds no DSSE envelope".to_string() } else { dedup(reasons) };
        return Err(unverified(format!("attestation of {image} refused: {why}")));
    };
    Ok((attestation, statement))
}

fn dedup(mut reasons: Vec<String>) -> String {
    reasons.dedup();
    reasons.join("; ")
}

/// One DSSE envelope: signed by `key` over its PAE, an in-toto v1
/// Statement of modelship's predicate whose subject is `hex` and whose
/// checks passed.
fn check_envelope(key: &VerifyingKey, bytes: &[u8], hex: &str) -> Result<Value, String> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("an envelope is not valid DSSE JSON: {e}"))?;
    let body =
        STANDARD.decode(env.payload.as_bytes()).map_err(|_| "an envelope's payload is not base64".to_string())?;
    let message = pae(&env.payload_type, &body);
    if !env.signatures.iter().any(|s| verify_bytes(key, &message, &s.sig)) {
        return Err("the attestation's envelope signature does not verify with this public key (tampered, or signed by another key)".into());
    }
    if env.payload_type != IN_TOTO {
        return Err(format!("the envelope's payloadType is `{}`, not `{IN_TOTO}`", env.payload_type));
    }
    let st: Value = serde_json::from_slice(&body).map_err(|e| format!("the statement is not JSON: {e}"))?;
    if st.get("_type").and_then(Value::as_str) != Some(STATEMENT_V1) {
        return Err(format!("the statement's _type is not `{STATEMENT_V1}`"));
    }
    if st.get("predicateType").and_then(Value::as_str) != Some(PREDICATE_TYPE) {
        return Err(format!("the statement's predicateType is not `{PREDICATE_TYPE}`"));
    }
    let subjects: Vec<&str> = st
        .get("subject")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.pointer("/digest/sha256").and_then(Value::as_str)).collect())
        .unwrap_or_default();
    if !subjects.contains(&hex) {
        let named = subjects.iter().map(|s| format!("sha256:{s}")).collect::<Vec<_>>().join(", ");
        return Err(format!(
            "the attestation's subject is {}, not sha256:{hex}",
            if named.is_empty() { "empty".to_string() } else { named }
        ));
    }
    let checks = st.pointer("/predicate/checks");
    if checks.and_then(|c| c.get("passed")).and_then(Value::as_bool) != Some(true) {
        let failed: Vec<String> = checks
            .and_then(|c| c.get("cases"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter(|c| c.get("passed").and_then(Value::as_bool) != Some(true))
                    .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        return Err(if failed.is_empty() {
            "the attestation records checks that did not pass".to_string()
        } else {
            format!("the attestation records failed checks: {}", failed.join(", "))
        });
    }
    Ok(st)
}

/// The provenance of a verified statement as a person reads it.
pub fn describe(v: &Verification) -> String {
    let p = v.statement.get("predicate").cloned().unwrap_or(Value::Null);
    let s = |ptr: &str| p.pointer(ptr).and_then(Value::as_str).unwrap_or("-").to_string();
    let mut out = vec![
        format!("{}: signature and attestation verified", v.image),
        format!("  signature     {} (signed as {})", v.signature, v.signed_reference),
        format!("  attestation   {} ({PREDICATE_TYPE})", v.attestation),
        format!("  model         {} from {}", s("/model/name"), s("/model/source")),
        format!("  model digest  {}", s("/model/contentDigest")),
    ];
    if let Some(objects) = p.pointer("/model/objects").and_then(Value::as_array) {
        for o in objects {
            let f = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
            let mut line =
                format!("    {}  {} bytes  sha256:{}", f("path"), o.get("size").unwrap_or(&Value::Null), f("sha256"));
            if let Some(v) = o.get("versionId").and_then(Value::as_str) {
                line.push_str(&format!("  version {v}"));
            }
            if let Some(e) = o.get("etag").and_then(Value::as_str) {
                line.push_str(&format!("  etag {e}"));
            }
            out.push(line);
        }
    }
    out.push(format!("  build         {} (context {})", s("/build/name"), s("/build/contextDigest")));
    out.push(format!("  pipeline      {} (file {})", s("/pipeline/name"), s("/pipeline/digest")));
    out.push(format!("  run           {}", s("/runId")));
    if let Some(checks) = p.get("checks") {
        let passed = checks.get("passed").and_then(Value::as_bool) == Some(true);
        out.push(format!(
            "  checks        {} against {}",
            if passed { "passed" } else { "FAILED" },
            checks.get("endpoint").and_then(Value::as_str).unwrap_or("-")
        ));
        for c in checks.get("cases").and_then(Value::as_array).into_iter().flatten() {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("-");
            let ok = if c.get("passed").and_then(Value::as_bool) == Some(true) { "ok  " } else { "FAIL" };
            out.push(format!("    {ok} {name}"));
            for k in c.get("checks").and_then(Value::as_array).into_iter().flatten() {
                let f = |key: &str| match k.get(key) {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => "-".into(),
                };
                out.push(format!("         {} {} (actual {})", f("path"), f("expect"), f("actual")));
            }
        }
        if let Some(load) = checks.get("load") {
            let f = |k: &str| load.get(k).map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            out.push(format!("    load: p50 {} ms, p95 {} ms, p99 {} ms", f("p50Ms"), f("p95Ms"), f("p99Ms")));
        }
        for slo in checks.get("slo").and_then(Value::as_array).into_iter().flatten() {
            let ok = if slo.get("passed").and_then(Value::as_bool) == Some(true) { "ok  " } else { "FAIL" };
            let f = |k: &str| slo.get(k).and_then(Value::as_str).unwrap_or("-");
            out.push(format!("    {ok} slo {} {} (measured {})", f("objective"), f("limit"), f("actual")));
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn key() -> PrivateKey {
        let (private, _) = keys::generate(&Secret::new("test-password-1"));
        keys::load_private(private.as_bytes(), Some(&Secret::new("test-password-1")), "t", "-").unwrap()
    }

    #[test]
    fn envelope_verifies_and_tampering_is_caught() {
        let k = key();
        let hex = "ab".repeat(32);
        let st = statement("r/ns/m", &format!("sha256:{hex}"), json!({ "checks": { "passed": true } }));
        let env = envelope(&k, &st);
        assert_eq!(check_envelope(&k.public(), &env, &hex).unwrap(), st);
        // Another subject.
        let other = "cd".repeat(32);
        assert!(check_envelope(&k.public(), &env, &other).unwrap_err().contains("subject"));
        // A payload changed after signing.
        let mut e: Envelope = serde_json::from_slice(&env).unwrap();
        let mut body: Value = serde_json::from_slice(&STANDARD.decode(&e.payload).unwrap()).unwrap();
        body["predicate"]["checks"]["passed"] = json!(true);
        body["subject"][0]["name"] = json!("evil/ns/m");
        e.payload = STANDARD.encode(serde_json::to_vec(&body).unwrap());
        let tampered = serde_json::to_vec(&e).unwrap();
        assert!(check_envelope(&k.public(), &tampered, &hex).unwrap_err().contains("does not verify"));
        // Failed checks, even when properly signed.
        let st = statement(
            "r/ns/m",
            &format!("sha256:{hex}"),
            json!({ "checks": { "passed": false, "cases": [{"name": "mild", "passed": false}] } }),
        );
        assert!(check_envelope(&k.public(), &envelope(&k, &st), &hex).unwrap_err().contains("failed checks: mild"));
    }

    #[test]
    fn describe_reads_as_a_person_reads_it() {
        let hex = "ab".repeat(32);
        let predicate = json!({
            "model": { "name": "weather", "source": "s3://models/weather/", "contentDigest": "sha256:cd",
                       "objects": [{ "path": "model.joblib", "size": 42, "sha256": "ef" }] },
            "build": { "name": "weather-3", "contextDigest": "sha256:01" },
            "pipeline": { "name": "weather", "digest": "sha256:02" },
            "runId": "weather-20261202-abcd",
            "checks": {
                "endpoint": "http://weather.models-dev.svc", "passed": true,
                "cases": [{ "name": "seed request", "passed": true,
                            "checks": [{ "path": "meta.tags.weather_state", "expect": "= \"mild\"", "passed": true, "actual": "mild" }] }],
                "load": { "p50Ms": 12.5, "p95Ms": 30.0, "p99Ms": 41.0 },
                "slo": [{ "objective": "p95", "limit": "<= 250ms", "actual": "30.0ms", "passed": true }],
            },
        });
        let v = Verification {
            image: format!("r/ns/weather@sha256:{hex}"),
            digest: format!("sha256:{hex}"),
            signature: "sha256:11".into(),
            signed_reference: "r/ns/weather".into(),
            attestation: "sha256:22".into(),
            statement: statement("r/ns/weather", &format!("sha256:{hex}"), predicate),
        };
        let text = describe(&v);
        for want in [
            "model         weather from s3://models/weather/",
            "    model.joblib  42 bytes  sha256:ef",
            "build         weather-3 (context sha256:01)",
            "run           weather-20261202-abcd",
            "checks        passed against http://weather.models-dev.svc",
            "    ok   seed request",
            "meta.tags.weather_state = \"mild\" (actual mild)",
            "load: p50 12.5 ms, p95 30.0 ms, p99 41.0 ms",
            "ok   slo p95 <= 250ms (measured 30.0ms)",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // secure-systems-lab/dsse protocol.md: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(
            attachment_tag(&format!("sha256:{}", "0f".repeat(32)), "sig"),
            format!("sha256-{}.sig", "0f".repeat(32))
        );
    }
}
