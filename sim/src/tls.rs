//! The sim's PKI and TLS: a CA made once per data directory (`DATA/pki/ca.crt`,
//! `ca.key`, reused on restart, as a cluster keeps its CA), a serving
//! certificate for `127.0.0.1`/`localhost` signed by it (made at each start),
//! client certificates for users (CN = user name, O = groups, as
//! kube-apiserver's x509 authenticator reads them), and the rustls server
//! configuration: the client certificate is asked for but optional, so token
//! and anonymous clients connect too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::SimError;

/// The CA's subject; a restarted sim signs with the same name and key.
const CA_NAME: &str = "modelship-sim-ca";

/// The CA of one data directory.
pub struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").finish_non_exhaustive()
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> SimError {
    SimError::Corrupt { path: path.to_path_buf(), message: what.to_string() }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io { path: path.to_path_buf(), source }
}

/// Write a private key readable by the owner only.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), SimError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))
}

/// `not_before` a day back (clock skew), `not_after` `days` ahead.
fn validity(params: &mut CertificateParams, days: i64) {
    let day = |offset: i64| {
        let now = jiff::tz::Offset::UTC.to_datetime(jiff::Timestamp::now()).date();
        let d = now.checked_add(jiff::Span::new().days(offset)).unwrap_or(now);
        rcgen::date_time_ymd(d.year().into(), d.month() as u8, d.day() as u8)
    };
    params.not_before = day(-1);
    params.not_after = day(days);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 3650);
    params
}

impl Pki {
    /// The CA under `data_dir/pki`, made on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<Pki, SimError> {
        let dir = data_dir.join("pki");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        if !cert_path.exists() || !key_path.exists() {
            let key = KeyPair::generate().map_err(|e| corrupt(&key_path, e))?;
            let cert = ca_params().self_signed(&key).map_err(|e| corrupt(&cert_path, e))?;
            write_private(&key_path, &key.serialize_pem())?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
        }
        let ca_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| corrupt(&key_path, e))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()).map_err(|e| corrupt(&cert_path, e))?;
        let ca_der = CertificateDer::from(pem.contents.clone());
        let issuer = Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| corrupt(&cert_path, e))?;
        Ok(Pki { ca_pem, ca_der, issuer })
    }

    /// The CA certificate, PEM (what a kubeconfig's
    /// `certificate-authority-data` carries, base64).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate for `user` in `groups`, valid for a year.
    pub fn issue_client(&self, user: &str, groups: &[&str]) -> Result<CertPair, SimError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for g in groups {
            params.distinguished_name.push(DnType::OrganizationName, *g);
        }
        params.distinguished_name.push(DnType::CommonName, user);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, 365);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertPair, SimError> {
        let fail = |e: rcgen::Error| SimError::Corrupt { path: PathBuf::from("pki"), message: e.to_string() };
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok(CertPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// The TLS configuration of the listener: a serving certificate for
    /// `127.0.0.1`, `localhost` and `::1`, HTTP/1.1, and client certificates
    /// signed by the CA accepted but not required.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, SimError> {
        let fail = |e: String| SimError::Corrupt { path: PathBuf::from("pki"), message: e };
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into(), "::1".into()])
            .map_err(|e| fail(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, 365);
        let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| fail(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(|e| fail(e.to_string()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone(), self.ca_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(|e| fail(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The user a verified client certificate names: CN is the user name, each
/// O a group (kube-apiserver's `x509.CommonNameUserConversion`).
pub fn certificate_user(cert: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = x509.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    (!name.is_empty()).then_some((name, groups))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_kept_and_client_certificates_name_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path()).unwrap();
        let b = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem(), "a restarted sim keeps its CA");
        let pair = b.issue_client("system:admin", &["system:masters"]).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes()).unwrap();
        let der = CertificateDer::from(pem.contents);
        assert_eq!(certificate_user(&der), Some(("system:admin".into(), vec!["system:masters".into()])));
        assert!(a.server_config().is_ok());
    }
}
