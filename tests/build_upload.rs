//! The build upload (`instantiatebinary`, a streamed gzip tar) goes through
//! the environment's kube client, so what the kubeconfig says about the
//! connection holds for it as for every other call: here a client
//! certificate (the installer's `system:admin` kind of kubeconfig), one
//! from an exec plugin, the cluster's CA, and `proxy-url`. The API server is a TLS server of this
//! test that refuses connections without a certificate its CA signed, and
//! reports what it received. Certificates come from `openssl` (the Debian
//! base image has it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use indexmap::IndexMap;
use modelship::cluster::Clusters;
use modelship::cluster::build::{StartError, instantiate_binary};
use modelship::spec::Environment;
use tokio_rustls::rustls;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl is installed");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate for
/// `system:admin` (group `system:masters`), as PEM files in `dir`.
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca =
        [&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test-ca"]];
    openssl(dir, &ca.concat());
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/O=system:masters/CN=system:admin")] {
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        openssl(dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", subject]].concat());
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// What the server saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    chunked: bool,
    body: Vec<u8>,
}

struct ApiServer {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// TLS handshakes refused (no or a bad client certificate).
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// HTTPS on 127.0.0.1 with `dir`'s server certificate, demanding a client
/// certificate signed by its CA; every request is answered with a Build.
async fn api_server(dir: &Path) -> ApiServer {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca.crt")).unwrap()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build().unwrap();
    let certs: Vec<_> = CertificateDer::pem_file_iter(dir.join("server.crt")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config =
        rustls::ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(certs, key).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, refused) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let (s, r) = (seen.clone(), refused.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen, refused) = (acceptor.clone(), s.clone(), r.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().to_string();
                        let chunked =
                            req.headers().get(http::header::TRANSFER_ENCODING).is_some_and(|v| v == "chunked");
                        let body = req.into_body().collect().await?.to_bytes().to_vec();
                        seen.lock().unwrap().push(Seen { path, chunked, body });
                        let build = r#"{"kind":"Build","apiVersion":"build.openshift.io/v1","metadata":{"name":"weather-1","namespace":"models-dev"},"spec":{},"status":{"phase":"New"}}"#;
                        let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(build)));
                        *resp.status_mut() = http::StatusCode::CREATED;
                        resp.headers_mut().insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            });
        }
    });
    ApiServer { port, seen, refused, task }
}

/// A kubeconfig for the test server with the CA inline; `user` is the
/// user's YAML body, `extra` more lines of the cluster entry.
fn kubeconfig(dir: &Path, port: u16, user: &str, extra: &str) -> PathBuf {
    use base64::Engine;
    let b64 = |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(f)).unwrap());
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: dev\nclusters:\n- name: dev\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {}\n{extra}contexts:\n- name: dev\n  context: {{ cluster: dev, user: admin }}\nusers:\n- name: admin\n  user:\n{user}",
        b64("ca.crt")
    );
    let path = dir.join(format!("kubeconfig-{}", rand_suffix()));
    std::fs::write(&path, text).unwrap();
    path
}

fn rand_suffix() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn client_cert_user(dir: &Path) -> String {
    use base64::Engine;
    let b64 = |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(f)).unwrap());
    format!("    client-certificate-data: {}\n    client-key-data: {}\n", b64("client.crt"), b64("client.key"))
}

fn clusters(kubeconfig: PathBuf) -> Clusters {
    let env = Environment {
        context: Some("dev".into()),
        namespace: "models-dev".into(),
        registry: None,
        insecure_registry: false,
        registry_secret: None,
        verify: None,
    };
    Clusters::new(IndexMap::from([("dev".to_string(), env)]), Some(kubeconfig))
}

/// A build context of a few files, one of them 3 MiB (several chunks).
fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("context");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
    let weights: Vec<u8> = (0..3 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(ctx.join("weights.bin"), weights).unwrap();
    ctx
}

async fn upload(clusters: &Clusters, ctx: &Path) -> Result<String, StartError> {
    let client = clusters.client("dev").await.unwrap();
    let query = [("name".to_string(), "weather".to_string()), ("revision.message".to_string(), "run r1".to_string())];
    instantiate_binary(&client, "models-dev", "weather", modelship::archive::context_stream(ctx.to_path_buf()), &query)
        .await
}

/// The tar the server received holds the context's files.
fn assert_is_the_context(seen: &Seen) {
    assert!(
        seen.path
            .starts_with("/apis/build.openshift.io/v1/namespaces/models-dev/buildconfigs/weather/instantiatebinary?"),
        "{}",
        seen.path
    );
    assert!(seen.path.contains("revision.message=run+r1"), "{}", seen.path);
    assert!(seen.chunked, "the context is streamed (chunked), not sent with a length");
    let tar = flate2::read::GzDecoder::new(&seen.body[..]);
    let mut names: Vec<String> =
        tar::Archive::new(tar).entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    names.sort();
    assert_eq!(names, ["Dockerfile", "weights.bin"]);
}

/// Regression: the upload used its own HTTP client with bearer tokens
/// only, so a client-certificate kubeconfig reached the server without a
/// certificate and every build of `system:admin` failed to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_upload_presents_the_kubeconfig_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let server = api_server(dir.path()).await;
    let ctx = context(dir.path());

    let with_cert = clusters(kubeconfig(dir.path(), server.port, &client_cert_user(dir.path()), ""));
    let text = upload(&with_cert, &ctx).await.unwrap();
    assert!(text.contains(r#""name":"weather-1""#), "{text}");
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_is_the_context(&seen[0]);
    assert_eq!(server.refused.load(Ordering::SeqCst), 0);

    // The server does demand one: a token alone is refused at the handshake.
    let token_only = clusters(kubeconfig(dir.path(), server.port, "    token: not-a-certificate\n", ""));
    let err = upload(&token_only, &ctx).await.unwrap_err();
    assert!(err.status.is_none(), "{err}");
    assert!(server.refused.load(Ordering::SeqCst) >= 1);
    assert_eq!(server.seen.lock().unwrap().len(), 1, "nothing more arrived");
}

/// An exec plugin (as `oc` login helpers and cloud CLIs are) that hands
/// out the client certificate: its credential is used for the upload too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_upload_uses_the_exec_plugin_credential() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let server = api_server(dir.path()).await;
    let ctx = context(dir.path());
    let pem = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let credential = serde_json::json!({
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": { "clientCertificateData": pem("client.crt"), "clientKeyData": pem("client.key") },
    });
    let file = dir.path().join("exec-credential.json");
    std::fs::write(&file, credential.to_string()).unwrap();
    let user = format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: /bin/cat\n      args: [\"{}\"]\n      interactiveMode: Never\n",
        file.display()
    );
    let via_exec = clusters(kubeconfig(dir.path(), server.port, &user, ""));
    upload(&via_exec, &ctx).await.unwrap();
    assert_eq!(server.refused.load(Ordering::SeqCst), 0);
    assert_is_the_context(&server.seen.lock().unwrap()[0]);
}

/// `proxy-url` in the kubeconfig: the upload is tunnelled through the
/// proxy (HTTP CONNECT) like the client's other calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_upload_goes_through_the_kubeconfig_proxy() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let server = api_server(dir.path()).await;
    let ctx = context(dir.path());
    let (proxy, tunnels) = connect_proxy().await;
    let extra = format!("    proxy-url: http://{proxy}\n");
    let via_proxy = clusters(kubeconfig(dir.path(), server.port, &client_cert_user(dir.path()), &extra));
    upload(&via_proxy, &ctx).await.unwrap();
    assert_eq!(tunnels.lock().unwrap().as_slice(), [format!("127.0.0.1:{}", server.port)]);
    assert_is_the_context(&server.seen.lock().unwrap()[0]);
}

/// An HTTP CONNECT proxy on loopback; records each tunnel's target.
async fn connect_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let tunnels = Arc::new(Mutex::new(Vec::new()));
    let t = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let tunnels = t.clone();
            tokio::spawn(async move {
                let mut client = tokio::io::BufReader::new(client);
                let mut line = String::new();
                client.read_line(&mut line).await.unwrap();
                let target = line.split_whitespace().nth(1).unwrap_or_default().to_string();
                assert!(line.starts_with("CONNECT "), "{line}");
                loop {
                    let mut header = String::new();
                    client.read_line(&mut header).await.unwrap();
                    if header == "\r\n" || header.is_empty() {
                        break;
                    }
                }
                tunnels.lock().unwrap().push(target.clone());
                let mut upstream = tokio::net::TcpStream::connect(&target).await.unwrap();
                let mut client = client.into_inner();
                client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, tunnels)
}
