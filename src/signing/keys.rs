//! Signing keys: ECDSA P-256, as cosign writes and reads them.
//!
//! A private key is either cosign's encrypted PEM (`ENCRYPTED SIGSTORE
//! PRIVATE KEY` or the older `ENCRYPTED COSIGN PRIVATE KEY`: a JSON envelope
//! of scrypt parameters, salt, NaCl secretbox nonce and ciphertext around a
//! PKCS#8 DER key; sigstore/cosign `pkg/cosign/keys.go`,
//! secure-systems-lab/go-securesystemslib `encrypted/encrypted.go`), or an
//! unencrypted PKCS#8 `PRIVATE KEY` PEM. A public key is a SPKI `PUBLIC KEY`
//! PEM (what `cosign.pub` holds).
//!
//! Nothing here prints a password or key bytes: errors say which file or
//! Secret and what is wrong with it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crypto_secretbox::aead::{Aead, KeyInit};
use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use serde::{Deserialize, Serialize};

use crate::error::{ExitClass, HasExitClass};
use crate::secret::Secret;

/// PEM types of cosign's encrypted private key (newer, older).
pub const SIGSTORE_PEM: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
pub const COSIGN_PEM: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// The scrypt parameter sets go-securesystemslib accepts (`CheckParams`):
/// legacy 2^15, standard 2^16, OWASP 2^17, r=8, p=1. Anything else is
/// refused rather than run (a crafted N would be a memory bomb).
const SCRYPT_SETS: [(u64, u32, u32); 3] = [(32768, 8, 1), (65536, 8, 1), (131072, 8, 1)];
/// What `modelship keys generate` writes: the legacy set, which every
/// cosign and containers/image (skopeo 1.9 included) decrypts.
const GENERATE_LOG_N: u8 = 15;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {origin}: {reason}")]
    Bad { origin: String, reason: String },
    #[error("signing key {origin}: wrong password (the encrypted key did not decrypt)")]
    WrongPassword { origin: String },
    #[error("signing key {origin} is encrypted: give its password ({how})")]
    NoPassword { origin: String, how: String },
    #[error("public key {origin}: {reason}")]
    BadPublic { origin: String, reason: String },
}

impl HasExitClass for KeyError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::BadInput
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: B64,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: KdfParams,
    salt: B64,
}

#[derive(Serialize, Deserialize)]
struct KdfParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: B64,
}

/// Go's `[]byte` in JSON: standard base64.
struct B64(Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map(B64).map_err(serde::de::Error::custom)
    }
}

/// A loaded private key.
pub struct PrivateKey(SigningKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(****)")
    }
}

impl PrivateKey {
    pub fn signing(&self) -> &SigningKey {
        &self.0
    }
    pub fn public(&self) -> VerifyingKey {
        *self.0.verifying_key()
    }
}

/// Parse a private key PEM. `origin` names where it came from (a file, a
/// Secret) for errors; `password` is needed for cosign's encrypted form and
/// `how` says where a password would come from.
pub fn load_private(pem: &[u8], password: Option<&Secret>, origin: &str, how: &str) -> Result<PrivateKey, KeyError> {
    let bad = |reason: String| KeyError::Bad { origin: origin.to_string(), reason };
    let text = std::str::from_utf8(pem).map_err(|_| bad("is not a PEM file (not UTF-8 text)".into()))?;
    let block = ::pem::parse(text.trim()).map_err(|e| bad(format!("is not a PEM file: {e}")))?;
    let der = match block.tag() {
        SIGSTORE_PEM | COSIGN_PEM => {
            let Some(password) = password else {
                return Err(KeyError::NoPassword { origin: origin.to_string(), how: how.to_string() });
            };
            decrypt(block.contents(), password.expose().as_bytes(), origin)?
        }
        "PRIVATE KEY" => block.contents().to_vec(),
        "EC PRIVATE KEY" => {
            return Err(bad(
                "is a SEC1 `EC PRIVATE KEY`; convert it to PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`) or use a cosign key".into(),
            ));
        }
        other => {
            return Err(bad(format!(
                "has PEM type `{other}`; expected `{SIGSTORE_PEM}`, `{COSIGN_PEM}` or an unencrypted PKCS#8 `PRIVATE KEY`"
            )));
        }
    };
    SigningKey::from_pkcs8_der(&der).map(PrivateKey).map_err(|_| bad(not_p256(&der, "private")))
}

/// Parse a SPKI `PUBLIC KEY` PEM.
pub fn load_public(pem: &[u8], origin: &str) -> Result<VerifyingKey, KeyError> {
    let bad = |reason: String| KeyError::BadPublic { origin: origin.to_string(), reason };
    let text = std::str::from_utf8(pem).map_err(|_| bad("is not a PEM file (not UTF-8 text)".into()))?;
    let block = ::pem::parse(text.trim()).map_err(|e| bad(format!("is not a PEM file: {e}")))?;
    if block.tag() != "PUBLIC KEY" {
        return Err(bad(format!("has PEM type `{}`; expected `PUBLIC KEY` (a cosign.pub)", block.tag())));
    }
    VerifyingKey::from_public_key_der(block.contents()).map_err(|_| bad(not_p256(block.contents(), "public")))
}

/// Why a DER key is not a P-256 ECDSA key, in words.
fn not_p256(der: &[u8], what: &str) -> String {
    // OIDs as DER bytes: P-384, P-521, Ed25519, RSA, secp256k1.
    const KNOWN: [(&[u8], &str); 5] = [
        (&[0x2b, 0x81, 0x04, 0x00, 0x22], "an ECDSA P-384 key"),
        (&[0x2b, 0x81, 0x04, 0x00, 0x23], "an ECDSA P-521 key"),
        (&[0x06, 0x03, 0x2b, 0x65, 0x70], "an Ed25519 key"),
        (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01], "an RSA key"),
        (&[0x2b, 0x81, 0x04, 0x00, 0x0a], "a secp256k1 key"),
    ];
    let kind = KNOWN.iter().find(|(oid, _)| der.windows(oid.len()).any(|w| w == *oid)).map(|(_, k)| *k);
    match kind {
        Some(k) => format!("is {k}; modelship signs and verifies with ECDSA P-256 {what} keys only"),
        None => format!("is not a valid ECDSA P-256 {what} key"),
    }
}

fn decrypt(envelope: &[u8], password: &[u8], origin: &str) -> Result<Vec<u8>, KeyError> {
    let bad = |reason: String| KeyError::Bad { origin: origin.to_string(), reason };
    let env: Envelope =
        serde_json::from_slice(envelope).map_err(|e| bad(format!("encrypted key envelope is not valid: {e}")))?;
    if env.kdf.name != "scrypt" || env.cipher.name != "nacl/secretbox" {
        return Err(bad(format!(
            "encrypted with `{}`/`{}`; expected scrypt/nacl/secretbox",
            env.kdf.name, env.cipher.name
        )));
    }
    let KdfParams { n, r, p } = env.kdf.params;
    if !SCRYPT_SETS.contains(&(n, r, p)) {
        return Err(bad(format!("unsupported scrypt parameters N={n} r={r} p={p}")));
    }
    if env.cipher.nonce.0.len() != 24 {
        return Err(bad("encrypted key has a nonce that is not 24 bytes".into()));
    }
    let key = derive(password, &env.kdf.salt.0, n.trailing_zeros() as u8, r, p);
    let cipher = crypto_secretbox::XSalsa20Poly1305::new((&key).into());
    // NaCl's secretbox: the Poly1305 tag comes first, as crypto_secretbox writes it.
    cipher
        .decrypt(env.cipher.nonce.0.as_slice().into(), env.ciphertext.0.as_slice())
        .map_err(|_| KeyError::WrongPassword { origin: origin.to_string() })
}

fn derive(password: &[u8], salt: &[u8], log_n: u8, r: u32, p: u32) -> [u8; 32] {
    let params = scrypt::Params::new(log_n, r, p).expect("parameters from the accepted sets");
    let mut key = [0u8; 32];
    scrypt::scrypt(password, salt, &params, &mut key).expect("32-byte output");
    key
}

/// A new pair: cosign's encrypted private key PEM (`ENCRYPTED COSIGN
/// PRIVATE KEY`, the name containers/image's own generator still writes
/// for compatibility; signature/sigstore/copied.go) and the SPKI public PEM.
pub fn generate(password: &Secret) -> (String, String) {
    let key = SigningKey::generate_from_rng(&mut rand::rng());
    let der = key.to_pkcs8_der().expect("a P-256 key encodes");
    let salt: [u8; 32] = rand::random();
    let nonce: [u8; 24] = rand::random();
    let box_key = derive(password.expose().as_bytes(), &salt, GENERATE_LOG_N, 8, 1);
    let cipher = crypto_secretbox::XSalsa20Poly1305::new((&box_key).into());
    let ciphertext = cipher.encrypt((&nonce).into(), der.as_bytes()).expect("secretbox seals");
    let env = Envelope {
        kdf: Kdf {
            name: "scrypt".into(),
            params: KdfParams { n: 1 << GENERATE_LOG_N, r: 8, p: 1 },
            salt: B64(salt.into()),
        },
        cipher: Cipher { name: "nacl/secretbox".into(), nonce: B64(nonce.into()) },
        ciphertext: B64(ciphertext),
    };
    let json = serde_json::to_vec(&env).expect("serialisable");
    let private = ::pem::encode_config(
        &::pem::Pem::new(COSIGN_PEM, json),
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    );
    let public = key.verifying_key().to_public_key_pem(LineEnding::LF).expect("a P-256 key encodes");
    (private, public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_round_trips_and_refuses_a_wrong_password() {
        let pw = Secret::new("correct horse battery");
        let (private, public) = generate(&pw);
        assert!(private.starts_with("-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----"), "{private}");
        let key = load_private(private.as_bytes(), Some(&pw), "test", "-").unwrap();
        let pubkey = load_public(public.as_bytes(), "test").unwrap();
        assert_eq!(key.public(), pubkey);
        let wrong = load_private(private.as_bytes(), Some(&Secret::new("hunter2-not-it")), "k", "-").unwrap_err();
        assert!(matches!(wrong, KeyError::WrongPassword { .. }), "{wrong}");
        let none = load_private(private.as_bytes(), None, "k", "COSIGN_PASSWORD").unwrap_err();
        assert!(none.to_string().contains("COSIGN_PASSWORD"), "{none}");
        // The password never appears in an error.
        assert!(!wrong.to_string().contains("hunter2"), "{wrong}");
        assert!(!wrong.to_string().contains("correct horse"), "{wrong}");
    }

    #[test]
    fn plain_pkcs8_and_bad_keys() {
        let key = SigningKey::generate_from_rng(&mut rand::rng());
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert!(load_private(pem.as_bytes(), None, "k", "-").is_ok());
        let e = load_private(b"not a key", None, "file k.pem", "-").unwrap_err();
        assert!(e.to_string().starts_with("signing key file k.pem: is not a PEM file"), "{e}");
        let e = load_private(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", None, "k", "-")
            .unwrap_err();
        assert!(e.to_string().contains("PEM type `CERTIFICATE`"), "{e}");
        // An Ed25519 PKCS#8 key (RFC 8410 example).
        let ed = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let e = load_private(ed.as_bytes(), None, "k", "-").unwrap_err();
        assert!(e.to_string().contains("is an Ed25519 key"), "{e}");
        assert_eq!(e.exit_class(), ExitClass::BadInput);
    }
}
