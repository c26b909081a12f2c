//! Signed images and provenance against real parts: promotion between two
//! in-process sims (their integrated registries take the `sha256-<hex>.sig`
//! and `.att` tags as OpenShift's does), Debian's docker-registry, and
//! skopeo 1.9 as the independent signer and verifier (`sigstoreSigned`
//! policy, `use-sigstore-attachments`). Tools come from
//! `scripts/setup.d/30-registry.sh` (docker-registry, skopeo) and
//! `10-kubectl.sh`; run `scripts/test.sh`.

mod support;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;

use modelship::cluster::Clusters;
use modelship::promotion::{self, PromoteRequest, PromotionError, Provenance};
use modelship::registry::{AuthStore, ImageRef, RegistryClient};
use modelship::secret::Secret;
use modelship::signing::{self, keys, source};
use modelship::spec::KeyRef;
use modelship::state::StateStore;
use modelship::state::configmap::ConfigMapStore;
use modelship::{ExitClass, HasExitClass};
use serde_json::{Value, json};
use support::env::{DevProd, MODEL, promote_request};
use support::registry::{DockerRegistry, Layout, OCI_LAYER, skopeo};
const PASSWORD: &str = "s3cret-signing-pw";
/// An Ed25519 PKCS#8 private key and its SPKI public key (RFC 8410 §10.3).
const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";

/// `modelship keys generate --out DIR` with `password`: (cosign.key, cosign.pub).
fn generate(dir: &Path, password: &str) -> (PathBuf, PathBuf) {
    let out = Command::new(support::BIN)
        .args(["keys", "generate", "--out"])
        .arg(dir)
        .env("COSIGN_PASSWORD", password)
        .output()
        .unwrap();
    assert!(out.status.success(), "keys generate: {}", String::from_utf8_lossy(&out.stderr));
    (dir.join("cosign.key"), dir.join("cosign.pub"))
}

fn load_key(path: &Path, password: &str) -> keys::PrivateKey {
    keys::load_private(&std::fs::read(path).unwrap(), Some(&Secret::new(password)), "test", "-").unwrap()
}

fn load_pub(path: &Path) -> p256::ecdsa::VerifyingKey {
    keys::load_public(&std::fs::read(path).unwrap(), "test").unwrap()
}

fn predicate(passed: bool) -> Value {
    json!({
        "model": { "name": MODEL, "source": "s3://models/weather/", "contentDigest": "sha256:00" },
        "checks": { "passed": passed, "cases": [{ "name": "seed request", "passed": passed }] },
    })
}

// ------------------------------------------------------------------ sims

struct Env {
    sims: DevProd,
    /// The key the pipeline signs with, and prod's `verify` public key file.
    key: keys::PrivateKey,
    verify_pub: PathBuf,
}

impl Deref for Env {
    type Target = DevProd;
    fn deref(&self) -> &DevProd {
        &self.sims
    }
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (signer, verify_pub) = generate(&dir.path().join("keys"), PASSWORD);
        let pipeline: modelship::spec::Pipeline = modelship::spec::yaml::from_str(&format!(
            r#"
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{ name: weather }}
spec:
  model: {{ name: {MODEL}, source: "file://model" }}
  signing: {{ key: {{ secret: cosign }} }}
  environments:
    dev: {{ context: dev, namespace: models-dev }}
    prod: {{ context: prod, namespace: models-prod, verify: {{ publicKey: {{ file: "{}" }} }} }}
  stages:
    - {{ name: promote, uses: promote, with: {{ from: dev, to: prod }} }}
"#,
            verify_pub.display()
        ))
        .unwrap();
        let sims = DevProd::new_in(dir, &pipeline).await;
        let key = load_key(&signer, PASSWORD);
        Env { sims, key, verify_pub }
    }

    /// Push a small OCI image into dev's registry and record its check as
    /// passed in dev's ledger; returns its digest.
    async fn push(&self, seed: &str) -> String {
        let repo = format!("models-dev/{MODEL}");
        let layer = format!("layer of {seed}").repeat(100).into_bytes();
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
        let digest = support::env::push_image(self.dev(), &repo, seed, &[layer], &config).await;
        let image = format!("{}/{repo}@{digest}", self.dev().registry_host());
        promotion::record_check(
            &self.store("dev").await,
            MODEL,
            "dev",
            &digest,
            &image,
            &format!("check-{seed}"),
            "ci",
            Some(json!({ "passed": true, "cases": [] })),
            true,
        )
        .await
        .unwrap();
        digest
    }

    async fn store(&self, env: &str) -> ConfigMapStore {
        ConfigMapStore::new(self.clusters.client(env).await.unwrap(), format!("models-{env}"), env)
    }

    /// A registry client for dev's registry as the `sign` stage makes it.
    async fn dev_client(&self) -> (RegistryClient, ImageRef) {
        let target = promotion::resolve_env(&self.clusters, "dev", MODEL).await.unwrap();
        let image = ImageRef::parse(&target.repository(MODEL)).unwrap();
        let client = promotion::registry_client(&AuthStore::anonymous(), &target, &image).await.unwrap();
        (client, image)
    }

    async fn sign(&self, digest: &str, key: &keys::PrivateKey, predicate: Value) -> signing::Signed {
        let (client, image) = self.dev_client().await;
        let reference = format!("{}/{}", image.registry, image.repository);
        signing::sign_image(&client, &image.repository, &reference, digest, key, predicate).await.unwrap()
    }

    /// Attach a layer to dev's `.sig`/`.att` of `digest` as-is.
    async fn attach(&self, digest: &str, suffix: &str, media: &str, bytes: Vec<u8>, annotations: Value) {
        let (client, image) = self.dev_client().await;
        let tag = signing::attachment_tag(digest, suffix);
        signing::append_layer(&client, &image.repository, &tag, media, bytes, annotations).await.unwrap();
    }

    fn request(&self, run: &str, digest: &str) -> PromoteRequest {
        PromoteRequest { digest: Some(digest.into()), ..promote_request(run) }
    }

    /// Prod has nothing of `digest`: no tag, no attachment, no ledger entry.
    async fn assert_nothing_promoted(&self, digest: &str) {
        let reg = &self.prod().api().registry;
        let repo = format!("models-prod/{MODEL}");
        assert_eq!(reg.resolve_manifest(&repo, "latest").await, None, "prod was tagged");
        for suffix in ["sig", "att"] {
            let tag = signing::attachment_tag(digest, suffix);
            assert_eq!(reg.resolve_manifest(&repo, &tag).await, None, "{tag} was copied to prod");
        }
        let ledger = self.store("prod").await.get_ledger(MODEL).await.unwrap();
        assert!(ledger.history.iter().all(|e| e.action != "promoted"), "{:?}", ledger.history);
    }

    async fn stop(self) {
        self.sims.stop().await
    }
}

/// A refused promotion: exit 1, one line naming `want`, nothing in prod.
async fn refused(env: &Env, run: &str, digest: &str, want: &str) {
    let err = promotion::promote(&env.clusters, &env.request(run, digest), false).await.unwrap_err();
    let text = modelship::error::chain(&err);
    assert!(matches!(err, PromotionError::Unverified { .. }), "{text}");
    assert_eq!(err.exit_class(), ExitClass::Failed, "{text}");
    assert!(text.contains(want), "expected `{want}` in: {text}");
    assert!(!text.contains('\n'), "one line: {text}");
    env.assert_nothing_promoted(digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_verifies_and_carries_signature_and_attestation_byte_exact() {
    let env = Env::start().await;
    let digest = env.push("v1").await;
    let signed = env.sign(&digest, &env.key, predicate(true)).await;
    // Signing again (a retried stage) writes nothing new.
    assert_eq!(env.sign(&digest, &env.key, predicate(true)).await, signed);

    // Into an environment without `verify`: carried, not verified.
    let mut envs = env.clusters.environments().clone();
    envs.get_mut("prod").unwrap().verify = None;
    let unverifying = Clusters::new(envs, Some(env.dir.path().join("kubeconfig")));
    let mut req = env.request("run-0", &digest);
    req.tag = "carried".into();
    let out = promotion::promote(&unverifying, &req, false).await.unwrap();
    let prov = out.provenance.expect("provenance carried");
    assert!(!prov.verified && prov.signature.as_deref() == Some(signed.signature.as_str()), "{prov:?}");
    let ledger = env.store("prod").await.get_ledger(MODEL).await.unwrap();
    assert!(modelship::commands::history::table(&ledger.history).contains(" signed"));

    let out = promotion::promote(&env.clusters, &env.request("run-1", &digest), false).await.unwrap();
    let prov = out.provenance.clone().expect("provenance carried");
    assert!(prov.verified);
    assert_eq!(prov.signature.as_deref(), Some(signed.signature.as_str()));
    assert_eq!(prov.attestation.as_deref(), Some(signed.attestation.as_str()));
    // Byte-exact: the same manifests (so digests) under the same tags in prod.
    let (dev, prod) = (&env.dev().api().registry, &env.prod().api().registry);
    for suffix in ["sig", "att"] {
        let tag = signing::attachment_tag(&digest, suffix);
        let a = dev.get_manifest(&format!("models-dev/{MODEL}"), &tag).await.unwrap();
        let b = prod.get_manifest(&format!("models-prod/{MODEL}"), &tag).await.unwrap();
        assert_eq!(a.2, b.2, "{tag} differs between dev and prod");
    }
    // What was copied verifies in prod as well, with the public key alone.
    let target = promotion::resolve_env(&env.clusters, "prod", MODEL).await.unwrap();
    let image = ImageRef::parse(&target.repository(MODEL)).unwrap();
    let client = promotion::registry_client(&AuthStore::anonymous(), &target, &image).await.unwrap();
    let v = signing::verify_image(&client, &image.repository, &digest, &load_pub(&env.verify_pub)).await.unwrap();
    assert_eq!(v.statement["predicate"]["model"]["source"], "s3://models/weather/");
    assert_eq!(v.statement["subject"][0]["digest"]["sha256"], digest.strip_prefix("sha256:").unwrap());
    // The ledger entry records both digests and the verification.
    let ledger = env.store("prod").await.get_ledger(MODEL).await.unwrap();
    let entry = ledger.history.iter().find(|e| e.action == "promoted" && e.run_id == "run-1").unwrap();
    assert_eq!(Provenance::of(entry), Some(prov));
    assert!(modelship::commands::history::table(&ledger.history).contains("signed+verified"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_refuses_each_bad_signature_or_attestation() {
    let env = Env::start().await;
    let other = load_key(&generate(&env.dir.path().join("other"), "another-pw").0, "another-pw");
    let reference = format!("{}/models-dev/{MODEL}", env.dev().registry_host());

    // Unsigned.
    let d = env.push("unsigned").await;
    refused(&env, "r1", &d, "is not signed").await;

    // Signed with another pair's private key.
    let d = env.push("otherkey").await;
    env.sign(&d, &other, predicate(true)).await;
    refused(&env, "r2", &d, "does not verify with this public key").await;

    // A valid signature, but on another digest, stored under this one's tag.
    let d = env.push("elsewhere").await;
    let wrong = format!("sha256:{}", "e".repeat(64));
    let payload = signing::simple_signing_payload(&reference, &wrong);
    let sig = signing::sign_bytes(&env.key, &payload);
    env.attach(&d, "sig", signing::SIMPLE_SIGNING, payload, json!({ signing::SIGNATURE_ANNOTATION: sig })).await;
    refused(&env, "r3", &d, &format!("the signature is for {wrong}, not {d}")).await;

    // Signed, but the attestation's subject is another digest.
    let d = env.push("subject").await;
    let (client, image) = env.dev_client().await;
    let payload = signing::simple_signing_payload(&reference, &d);
    let sig = signing::sign_bytes(&env.key, &payload);
    env.attach(&d, "sig", signing::SIMPLE_SIGNING, payload, json!({ signing::SIGNATURE_ANNOTATION: sig })).await;
    let statement = signing::statement(&reference, &wrong, predicate(true));
    let ann = json!({ signing::PREDICATE_ANNOTATION: signing::PREDICATE_TYPE });
    env.attach(&d, "att", signing::DSSE, signing::envelope(&env.key, &statement), ann.clone()).await;
    refused(&env, "r4", &d, "the attestation's subject is").await;
    // (The signature on its own is fine: only the attestation is refused.)
    signing::verify_signature(&client, &image.repository, &d, &load_pub(&env.verify_pub)).await.unwrap();

    // Properly signed and attested, but the checks failed.
    let d = env.push("failed").await;
    env.sign(&d, &env.key, predicate(false)).await;
    refused(&env, "r5", &d, "the attestation records failed checks: seed request").await;

    // A tampered envelope: the statement edited after signing.
    let d = env.push("tampered").await;
    let payload = signing::simple_signing_payload(&reference, &d);
    let sig = signing::sign_bytes(&env.key, &payload);
    env.attach(&d, "sig", signing::SIMPLE_SIGNING, payload, json!({ signing::SIGNATURE_ANNOTATION: sig })).await;
    let honest = signing::envelope(&env.key, &signing::statement(&reference, &d, predicate(false)));
    let mut e: signing::Envelope = serde_json::from_slice(&honest).unwrap();
    let edited = signing::statement(&reference, &d, predicate(true));
    e.payload = base64_encode(&serde_json::to_vec(&edited).unwrap());
    env.attach(&d, "att", signing::DSSE, serde_json::to_vec(&e).unwrap(), ann).await;
    refused(&env, "r6", &d, "envelope signature does not verify").await;

    // A verify key that is not a key, or not P-256: bad input (exit 2), nothing promoted.
    let d = env.push("goodsig").await;
    env.sign(&d, &env.key, predicate(true)).await;
    for (text, want) in [("garbage", "is not a PEM file"), (ED25519_PUBLIC, "is an Ed25519 key")] {
        std::fs::write(&env.verify_pub, text).unwrap();
        let err = promotion::promote(&env.clusters, &env.request("r7", &d), false).await.unwrap_err();
        let text = modelship::error::chain(&err);
        assert_eq!(err.exit_class(), ExitClass::BadInput, "{text}");
        assert!(text.contains(want) && text.contains("public key file"), "{text}");
        env.assert_nothing_promoted(&d).await;
    }
    env.stop().await;
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `spec.signing.key: { secret: cosign }` in dev's namespace, as
/// `cosign generate-key-pair k8s://models-dev/cosign` writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_keys_from_a_secret_and_every_bad_key() {
    let env = Env::start().await;
    let client = env.clusters.client("dev").await.unwrap();
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), "models-dev");
    let private = std::fs::read_to_string(env.dir.path().join("keys/cosign.key")).unwrap();
    let put = |name: &str, key: &str, password: &str| {
        serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(json!({
            "metadata": { "name": name },
            "stringData": { "cosign.key": key, "cosign.password": password },
        }))
        .unwrap()
    };
    let pkcs8 = {
        use p256::pkcs8::EncodePrivateKey;
        let k = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        k.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap().to_string()
    };
    for (name, key, pw) in [
        ("cosign", private.as_str(), PASSWORD),
        ("wrong-pw", private.as_str(), "not-the-password"),
        ("garbage", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", ""),
        ("ed25519", ED25519_PRIVATE, ""),
        ("plain", pkcs8.as_str(), ""),
    ] {
        secrets.create(&Default::default(), &put(name, key, pw)).await.unwrap();
    }
    let scope = || source::SecretScope { client: &client, namespace: "models-dev", env: "dev" };
    let load = |name: &str| {
        let key = KeyRef::Secret(name.into());
        let scope = scope();
        async move { source::private_key(&key, Some(scope), Path::new(".")).await }
    };
    let good = load("cosign").await.unwrap();
    assert_eq!(good.public(), load_pub(&env.verify_pub));
    assert!(load("plain").await.is_ok(), "an unencrypted PKCS#8 P-256 key is accepted");
    for (name, want) in [
        ("wrong-pw", "wrong password"),
        ("garbage", "is not a valid ECDSA P-256 private key"),
        ("ed25519", "is an Ed25519 key"),
        ("missing", "does not exist in environment `dev`"),
    ] {
        let err = load(name).await.unwrap_err();
        let text = err.to_string();
        assert_eq!(err.exit_class(), ExitClass::BadInput, "{name}: {text}");
        assert!(text.contains(want) && text.contains(&format!("Secret models-dev/{name}")), "{name}: {text}");
        assert!(!text.contains("not-the-password") && !text.contains(PASSWORD), "a password leaked: {text}");
    }
    // Both passwords are masked wherever text is logged or stored.
    let masked = modelship::secret::mask(&format!("{PASSWORD} not-the-password"));
    assert_eq!(masked, "**** ****");
    env.stop().await;
}

// ------------------------------------------------- docker-registry + skopeo

/// A one-layer OCI image in a layout under `dir`, pushed to `reg` as
/// `repo:v1`; returns its digest.
fn push_image(dir: &Path, reg: &DockerRegistry, repo: &str, extra: &[&str]) -> String {
    let mut layout = Layout::new(&dir.join(format!("layout-{}", repo.replace('/', "-"))));
    let layer = layout.blob(OCI_LAYER, format!("the {repo} layer").as_bytes());
    let image = layout.image(&[layer], "amd64");
    layout.tag("v1", &image);
    let src = format!("oci:{}:v1", layout.dir.display());
    let dst = format!("docker://{}/{repo}:v1", reg.addr);
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend([src.as_str(), dst.as_str()]);
    skopeo(&args);
    // skopeo compresses the layer on the way, so the pushed manifest is not the layout's.
    let _ = image;
    support::registry::sha256_digest(&support::registry::raw_manifest(&format!("{}/{repo}:v1", reg.addr)))
}

/// The skopeo for the sigstore cross-checks: `$MODELSHIP_SIGSTORE_SKOPEO`,
/// else the one on PATH. Debian's skopeo 1.9.3 (bookworm) is built with
/// sigstore disabled (both `--sign-by-sigstore-private-key` and a
/// `sigstoreSigned` policy fail with "Debian-local change: sigstore
/// disabled"), so these tests are ignored by default; run them with
/// `--run-ignored all` and an upstream skopeo >= 1.9.
fn sigstore_skopeo() -> String {
    std::env::var("MODELSHIP_SIGSTORE_SKOPEO").unwrap_or_else(|_| support::registry::require_tool("skopeo"))
}

/// skopeo with a policy that requires a sigstore signature by `pubkey`
/// (containers/image `signature/policy_eval_sigstore.go`), attachments on.
fn skopeo_verified_copy(dir: &Path, pubkey: &Path, image: &str) -> std::process::Output {
    let policy = dir.join("policy-verify.json");
    std::fs::write(
        &policy,
        serde_json::to_vec(&json!({
            // cosign's (and so modelship's) payload names the repository
            // only; containers-policy.json(5): such signatures are accepted
            // with `matchRepository`, not the default `matchRepoDigestOrExact`
            // (containers/image signature/policy_reference_match.go refuses
            // a name-only identity there).
            "default": [{ "type": "sigstoreSigned", "keyPath": pubkey, "signedIdentity": { "type": "matchRepository" } }],
            "transports": { "dir": { "": [{ "type": "insecureAcceptAnything" }] } },
        }))
        .unwrap(),
    )
    .unwrap();
    let out_dir = tempfile::tempdir_in(dir).unwrap();
    Command::new(sigstore_skopeo())
        .arg("--policy")
        .arg(&policy)
        .arg("--registries.d")
        .arg(registries_d(dir))
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{image}"))
        .arg(format!("dir:{}", out_dir.path().display()))
        .env("REGISTRY_AUTH_FILE", dir.join("no-auth.json"))
        .output()
        .unwrap()
}

fn registries_d(dir: &Path) -> PathBuf {
    let d = dir.join("registries.d");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("default.yaml"), "default-docker:\n  use-sigstore-attachments: true\n").unwrap();
    d
}

/// An image in a real docker-registry, signed by modelship: `(dir, registry,
/// image@digest, digest, cosign.pub, another pair's cosign.pub)`.
async fn signed_in_docker_registry() -> (tempfile::TempDir, DockerRegistry, String, String, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let reg = DockerRegistry::start();
    let digest = push_image(dir.path(), &reg, "ns/app", &[]);
    let (private, public) = generate(&dir.path().join("keys"), PASSWORD);
    let (_, other_pub) = generate(&dir.path().join("other"), "other-pw");
    let client = RegistryClient::connect(&reg.addr, true, &[], None, vec![]).await.unwrap();
    let reference = format!("{}/ns/app", reg.addr);
    signing::sign_image(&client, "ns/app", &reference, &digest, &load_key(&private, PASSWORD), predicate(true))
        .await
        .unwrap();
    let image = format!("{reference}@{digest}");
    (dir, reg, image, digest, public, other_pub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a sigstore-enabled skopeo (MODELSHIP_SIGSTORE_SKOPEO); Debian's has sigstore disabled"]
async fn skopeo_accepts_what_modelship_signed_and_refuses_another_key() {
    let (dir, _reg, image, _digest, public, other_pub) = signed_in_docker_registry().await;
    let ok = skopeo_verified_copy(dir.path(), &public, &image);
    assert!(ok.status.success(), "skopeo refused modelship's signature: {}", String::from_utf8_lossy(&ok.stderr));
    let bad = skopeo_verified_copy(dir.path(), &other_pub, &image);
    assert!(!bad.status.success(), "skopeo accepted a signature with another pair's public key");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("cryptographic signature verification failed"), "{err}");
}

/// `modelship verify` against docker-registry: text for people, JSON for
/// tools, exit 1 with another pair's key, 2 with a key that is not P-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modelship_verify_prints_the_provenance_and_refuses_another_key() {
    let (dir, _reg, image, digest, public, other_pub) = signed_in_docker_registry().await;
    let verify = |key: &Path, extra: &[&str]| {
        Command::new(support::BIN)
            .args(["verify", &format!("docker://{image}"), "--insecure", "--key"])
            .arg(key)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&public, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("signature and attestation verified"), "{text}");
    assert!(text.contains("model         weather from s3://models/weather/"), "{text}");
    assert!(text.contains("ok   seed request"), "{text}");
    let out = verify(&public, &["--output", "json"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["digest"], digest);
    assert_eq!(json["statement"]["predicateType"], signing::PREDICATE_TYPE);
    let out = verify(&other_pub, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify with this public key"));
    std::fs::write(dir.path().join("bad.pub"), ED25519_PUBLIC).unwrap();
    let out = verify(&dir.path().join("bad.pub"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is an Ed25519 key"));
    // A tag instead of a digest: usage error.
    let out = Command::new(support::BIN)
        .args(["verify", &format!("docker://{}", image.split('@').next().unwrap()), "--key"])
        .arg(&public)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a sigstore-enabled skopeo (MODELSHIP_SIGSTORE_SKOPEO); Debian's has sigstore disabled"]
async fn modelship_verifies_what_skopeo_signed() {
    let dir = tempfile::tempdir().unwrap();
    let reg = DockerRegistry::start();
    let (private, public) = generate(&dir.path().join("keys"), PASSWORD);
    let (_, other_pub) = generate(&dir.path().join("other"), "other-pw");
    let pass = dir.path().join("passphrase");
    std::fs::write(&pass, PASSWORD).unwrap();
    // skopeo signs with modelship's generated cosign key while pushing.
    let registries = registries_d(dir.path());
    let (key_arg, pass_arg, reg_arg) =
        (private.display().to_string(), pass.display().to_string(), format!("--registries.d={}", registries.display()));
    let policy = dir.path().join("accept.json");
    std::fs::write(&policy, br#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    let policy_arg = format!("--policy={}", policy.display());
    let sign = |args: &[&str]| Command::new(sigstore_skopeo()).args(args).output().unwrap();
    let out = sign(&[
        &policy_arg,
        &reg_arg,
        "copy",
        "--dest-tls-verify=false",
        "--sign-by-sigstore-private-key",
        &key_arg,
        "--sign-passphrase-file",
        &pass_arg,
        &format!("oci:{}:v1", {
            let mut layout = Layout::new(&dir.path().join("layout"));
            let layer = layout.blob(OCI_LAYER, b"signed by skopeo");
            let image = layout.image(&[layer], "amd64");
            layout.tag("v1", &image);
            layout.dir.display().to_string()
        }),
        &format!("docker://{}/ns/skopeo:v1", reg.addr),
    ]);
    assert!(out.status.success(), "skopeo sign: {}", String::from_utf8_lossy(&out.stderr));
    let raw = support::registry::raw_manifest(&format!("{}/ns/skopeo:v1", reg.addr));
    let digest = support::registry::sha256_digest(&raw);

    let client = RegistryClient::connect(&reg.addr, true, &[], None, vec![]).await.unwrap();
    let (_, signed_as) = signing::verify_signature(&client, "ns/skopeo", &digest, &load_pub(&public)).await.unwrap();
    assert_eq!(signed_as, format!("{}/ns/skopeo:v1", reg.addr));
    let err = signing::verify_signature(&client, "ns/skopeo", &digest, &load_pub(&other_pub)).await.unwrap_err();
    assert!(err.to_string().contains("does not verify with this public key"), "{err}");
    // skopeo attaches no attestation: `modelship verify` says so, exit 1.
    let out = Command::new(support::BIN)
        .args(["verify", &format!("docker://{}/ns/skopeo@{digest}", reg.addr), "--insecure", "--key"])
        .arg(&public)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no attestation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_generate_needs_a_password_and_keeps_an_existing_pair() {
    let dir = tempfile::tempdir().unwrap();
    let run = |pw: Option<&str>, extra: &[&str]| {
        let mut cmd = Command::new(support::BIN);
        cmd.args(["keys", "generate", "--out"]).arg(dir.path()).args(extra).env_remove("COSIGN_PASSWORD");
        if let Some(pw) = pw {
            cmd.env("COSIGN_PASSWORD", pw);
        }
        cmd.output().unwrap()
    };
    let out = run(None, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set COSIGN_PASSWORD"));
    assert!(run(Some(PASSWORD), &[]).status.success());
    let first = std::fs::read(dir.path().join("cosign.pub")).unwrap();
    let out = run(Some(PASSWORD), &[]);
    assert_eq!(out.status.code(), Some(2), "an existing pair is not overwritten");
    assert_eq!(std::fs::read(dir.path().join("cosign.pub")).unwrap(), first);
    assert!(run(Some(PASSWORD), &["--force"]).status.success());
    assert_ne!(std::fs::read(dir.path().join("cosign.pub")).unwrap(), first);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("cosign.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

// ----------------------------------------------------- the weather pipeline

/// `pipelines/weather.yaml` under `--sim` with a `sign` stage and `verify`
/// on prod: a wrong password stops the run at `sign` (exit 2, nothing
/// promoted); resumed with the right one it signs, promotes after
/// verifying, and history and the report say so. Neither password is
/// anywhere in the output or the sims' state.
#[test]
fn the_weather_pipeline_signs_and_prod_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = support::cli::weather_fixture(dir.path(), |y| {
        let y = y.replacen("spec:\n", "spec:\n  signing:\n    key: { file: keys/cosign.key }\n", 1);
        let y = y.replacen(
            "      registry: registry.prod.example.com\n",
            "      registry: registry.prod.example.com\n      verify: { publicKey: { file: keys/cosign.pub } }\n",
            1,
        );
        y.replacen("    - name: promote\n", "    - name: sign\n      uses: sign\n    - name: promote\n", 1)
    });
    generate(&pipeline.parent().unwrap().join("keys"), PASSWORD);
    let sim = dir.path().join("sim");
    let run = |password: &str, extra: &[&str]| {
        support::cli::modelship()
            .arg("run")
            .arg(&pipeline)
            .arg("--sim")
            .arg(&sim)
            .args(extra)
            .env("COSIGN_PASSWORD", password)
            .output()
            .unwrap()
    };
    let out = run("wrong-password-123", &[]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("wrong password"), "{stderr}");
    let run_id = stdout
        .split("--resume ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no resume hint in:\n{stdout}"))
        .to_string();

    let out = run(PASSWORD, &["--resume", &run_id]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("\n  provenance: signed+verified"), "{stdout}");

    let cli = |args: &[&str]| {
        let out = support::cli::modelship().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (p, s) = (pipeline.to_str().unwrap(), sim.to_str().unwrap());
    let history = cli(&["history", "weather", "-f", p, "--sim", s, "--env", "prod"]);
    assert!(history.contains("signed+verified"), "{history}");
    let report = cli(&["report", &run_id, "-f", p, "--sim", s]);
    assert!(report.contains("| signed+verified |"), "{report}");

    // What the run attested, as carried to prod's registry (read from the
    // sim's store on disk, so no second client is involved).
    let statement = prod_attestation(&sim.join("prod/registry"));
    let p = &statement["predicate"];
    assert_eq!(p["model"]["source"], "s3://models/weather/", "{p}");
    assert!(p["model"]["contentDigest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{p}");
    assert!(p["model"]["objects"].as_array().is_some_and(|o| !o.is_empty()), "{p}");
    // Each object names the S3 object it was fetched from (lineage), with
    // its digest.
    for o in p["model"]["objects"].as_array().unwrap() {
        let url = o["url"].as_str().unwrap_or_default();
        assert!(url.starts_with("s3://") && url.ends_with(o["path"].as_str().unwrap()), "{o}");
        assert_eq!(o["sha256"].as_str().map(str::len), Some(64), "{o}");
    }
    assert!(p["build"]["name"].as_str().is_some_and(|b| b.starts_with("weather-")), "{p}");
    assert!(p["build"]["contextDigest"].as_str().is_some_and(|d| d.starts_with("sha256:")), "{p}");
    assert!(p["pipeline"]["digest"].as_str().is_some_and(|d| !d.is_empty()), "{p}");
    assert_eq!(p["runId"], run_id.as_str());
    assert_eq!(p["checks"]["passed"], true);
    let cases: Vec<&str> =
        p["checks"]["cases"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(cases, ["seed request", "freezing", "hot day", "not an integer", "not a number"]);
    assert!(p["checks"]["load"].is_object() && p["checks"]["slo"].is_array(), "{p}");

    for text in [stdout.as_ref(), stderr.as_ref(), history.as_str(), report.as_str()] {
        assert!(!text.contains(PASSWORD) && !text.contains("wrong-password-123"), "a password leaked:\n{text}");
    }
    let leaked = grep_tree(&sim, &[PASSWORD.as_bytes(), b"wrong-password-123"]);
    assert!(leaked.is_empty(), "a password is stored in {leaked:?}");
}

/// The in-toto Statement in the one `sha256-<hex>.att` of prod's
/// `models-prod/weather` in the sim registry stored at `root`.
fn prod_attestation(root: &Path) -> Value {
    let all = support::registry::attestations(root, "models-prod/weather");
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

/// Files under `dir` holding any of `needles`.
fn grep_tree(dir: &Path, needles: &[&[u8]]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return hits };
    for e in entries.flatten() {
        let path = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            hits.extend(grep_tree(&path, needles));
        } else if let Ok(bytes) = std::fs::read(&path)
            && needles.iter().any(|n| bytes.windows(n.len()).any(|w| w == *n))
        {
            hits.push(path);
        }
    }
    hits
}

// ------------------------------------------- independent implementations

/// `fixtures/signing/crosscheck.py` in the venv of
/// `scripts/setup.d/35-signing-crosscheck.sh` (securesystemslib, PyNaCl).
fn crosscheck(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let python = support::tools().join("signing-py/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test.sh (scripts/setup.d/35-signing-crosscheck.sh)",
        python.display()
    );
    Command::new(python).arg(support::repo().join("fixtures/signing/crosscheck.py")).args(args).output().unwrap()
}

fn crosscheck_ok(args: &[&std::ffi::OsStr]) -> String {
    let out = crosscheck(args);
    assert!(out.status.success(), "crosscheck {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The layer bytes and annotations of `digest`'s `.sig`/`.att` in `repo`.
async fn attachment(client: &RegistryClient, repo: &str, digest: &str, suffix: &str) -> (Vec<u8>, Value) {
    let tag = signing::attachment_tag(digest, suffix);
    let (manifest, _, _) = modelship::registry::artifact::get_manifest(client, repo, &tag).await.unwrap().unwrap();
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = &manifest["layers"][0];
    let bytes = modelship::registry::artifact::get_blob(client, repo, layer["digest"].as_str().unwrap()).await.unwrap();
    (bytes.to_vec(), layer["annotations"].clone())
}

/// What modelship writes, OpenSSL, libsodium and securesystemslib read; what
/// they write, modelship reads: the encrypted key (both PEM types and scrypt
/// sets), the simple-signing signature and the DSSE envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_implementations_read_and_write_the_same_formats() {
    let (dir, reg, _image, digest, public, other_pub) = signed_in_docker_registry().await;
    let d = dir.path();
    let pass = d.join("pass");
    std::fs::write(&pass, PASSWORD).unwrap();
    let os = |p: &Path| p.as_os_str().to_owned();

    // Keys: ours decrypts with hashlib scrypt + libsodium; theirs loads here.
    let theirs = crosscheck_ok(&[&os(Path::new("decrypt")), &os(&d.join("keys/cosign.key")), &os(&pass)]);
    assert_eq!(theirs, std::fs::read_to_string(&public).unwrap());
    let py_key = d.join("py.key");
    let py_pub = crosscheck_ok(&[&os(Path::new("encrypt")), &os(&pass), &os(&py_key)]);
    let loaded = load_key(&py_key, PASSWORD);
    assert_eq!(loaded.public(), keys::load_public(py_pub.as_bytes(), "python").unwrap());

    // Our signature and envelope verify with OpenSSL and securesystemslib.
    let client = RegistryClient::connect(&reg.addr, true, &[], None, vec![]).await.unwrap();
    let (payload, ann) = attachment(&client, "ns/app", &digest, "sig").await;
    std::fs::write(d.join("payload"), &payload).unwrap();
    let sig = ann[signing::SIGNATURE_ANNOTATION].as_str().unwrap().to_string();
    let verify_payload = |key: &Path| {
        crosscheck(&[&os(Path::new("verify-payload")), &os(key), &os(&d.join("payload")), std::ffi::OsStr::new(&sig)])
    };
    assert!(verify_payload(&public).status.success());
    assert!(!verify_payload(&other_pub).status.success(), "another pair's key verified our signature");
    let (envelope, _) = attachment(&client, "ns/app", &digest, "att").await;
    std::fs::write(d.join("envelope"), &envelope).unwrap();
    let statement: Value =
        serde_json::from_str(&crosscheck_ok(&[&os(Path::new("verify-dsse")), &os(&public), &os(&d.join("envelope"))]))
            .unwrap();
    assert_eq!(statement["_type"], signing::STATEMENT_V1);
    assert_eq!(statement["subject"][0]["digest"]["sha256"], digest.strip_prefix("sha256:").unwrap());
    assert!(!crosscheck(&[&os(Path::new("verify-dsse")), &os(&other_pub), &os(&d.join("envelope"))]).status.success());

    // Their signature and envelope (with their key) pass `modelship verify`.
    let d2 = push_image(d, &reg, "ns/py", &[]);
    let reference = format!("{}/ns/py", reg.addr);
    std::fs::write(d.join("payload2"), signing::simple_signing_payload(&reference, &d2)).unwrap();
    let sig = crosscheck_ok(&[&os(Path::new("sign-payload")), &os(&py_key), &os(&pass), &os(&d.join("payload2"))]);
    let statement = signing::statement(&reference, &d2, predicate(true));
    std::fs::write(d.join("statement2"), serde_json::to_vec(&statement).unwrap()).unwrap();
    let envelope = crosscheck_ok(&[&os(Path::new("sign-dsse")), &os(&py_key), &os(&pass), &os(&d.join("statement2"))]);
    let (sig_tag, att_tag) = (signing::attachment_tag(&d2, "sig"), signing::attachment_tag(&d2, "att"));
    signing::append_layer(
        &client,
        "ns/py",
        &sig_tag,
        signing::SIMPLE_SIGNING,
        std::fs::read(d.join("payload2")).unwrap(),
        json!({ signing::SIGNATURE_ANNOTATION: sig.trim() }),
    )
    .await
    .unwrap();
    signing::append_layer(
        &client,
        "ns/py",
        &att_tag,
        signing::DSSE,
        envelope.trim().as_bytes().to_vec(),
        json!({ signing::PREDICATE_ANNOTATION: signing::PREDICATE_TYPE }),
    )
    .await
    .unwrap();
    std::fs::write(d.join("py.pub"), &py_pub).unwrap();
    let out = Command::new(support::BIN)
        .args(["verify", &format!("docker://{reference}@{d2}"), "--insecure", "--key"])
        .arg(d.join("py.pub"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature and attestation verified"));
    let out = Command::new(support::BIN)
        .args(["verify", &format!("docker://{reference}@{d2}"), "--insecure", "--key"])
        .arg(&public)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "their signature verified with our key");
}
