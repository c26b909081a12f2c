//! OCI image layouts written to disk (streamed, for large layers), real
//! `docker-registry` processes on loopback (killed on drop), skopeo, and
//! TCP proxies that cut or hold connections.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::free_port;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Copy options for loopback registries over plain HTTP, with a short
/// backoff so a test that meets retries takes milliseconds.
pub fn copy_opts() -> modelship::registry::CopyOptions {
    modelship::registry::CopyOptions {
        src_insecure: true,
        dest_insecure: true,
        backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

/// A tool the tests need, or a failure that says how to get it.
pub fn require_tool(path: &str) -> String {
    let found = if path.contains('/') {
        Path::new(path).is_file()
    } else {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(path).is_file()))
    };
    assert!(found, "`{path}` is missing: run scripts/test.sh (scripts/setup.d/30-registry.sh installs it)");
    path.to_string()
}

pub fn wait_for_port(addr: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {addr} within 20 s");
}

// ------------------------------------------------------------ OCI layout

/// A descriptor: digest and size (and media type) of content in a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Desc {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// Writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/`).
pub struct Layout {
    pub dir: PathBuf,
    refs: Vec<(String, Desc)>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout { dir: dir.to_path_buf(), refs: vec![] }
    }

    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Desc {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        std::fs::write(self.dir.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
        Desc { media_type: media_type.into(), digest, size: bytes.len() as u64 }
    }

    /// A layer of `size` pseudo-random bytes written in 1 MiB pieces (never
    /// whole in memory); `seed` makes layers differ.
    pub fn big_layer(&self, size: u64, seed: u64) -> Desc {
        let tmp = self.dir.join(format!("blobs/tmp-{seed}"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        let mut block = vec![0u8; 1 << 20];
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let mut hasher = Sha256::new();
        let mut left = size;
        let mut n = 0u64;
        while left > 0 {
            // Each block differs from the last in its first 16 bytes.
            block[..8].copy_from_slice(&n.to_le_bytes());
            block[8..16].copy_from_slice(&seed.to_le_bytes());
            let len = left.min(block.len() as u64) as usize;
            hasher.update(&block[..len]);
            f.write_all(&block[..len]).unwrap();
            left -= len as u64;
            n += 1;
        }
        f.flush().unwrap();
        drop(f);
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        std::fs::rename(&tmp, self.dir.join("blobs/sha256").join(&digest[7..])).unwrap();
        Desc { media_type: OCI_LAYER.into(), digest, size }
    }

    /// An image manifest over `layers` with a config for `arch`.
    pub fn image(&self, layers: &[Desc], arch: &str) -> Desc {
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>()},
        });
        let config = self.blob(OCI_CONFIG, serde_json::to_string(&config).unwrap().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": layers.iter().map(Desc::json).collect::<Vec<_>>(),
        });
        // Pretty-printed on purpose: a copy that re-serialised would change the digest.
        self.blob(OCI_MANIFEST, serde_json::to_string_pretty(&manifest).unwrap().as_bytes())
    }

    pub fn index(&self, manifests: &[(Desc, &str)]) -> Desc {
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests.iter().map(|(d, arch)| {
                let mut j = d.json();
                j["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
                j
            }).collect::<Vec<_>>(),
        });
        self.blob(OCI_INDEX, serde_json::to_string_pretty(&index).unwrap().as_bytes())
    }

    /// Name `desc` as `tag` in `index.json` (what `oci:DIR:tag` reads).
    pub fn tag(&mut self, tag: &str, desc: &Desc) {
        self.refs.push((tag.into(), desc.clone()));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": self.refs.iter().map(|(t, d)| {
                let mut j = d.json();
                j["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": t});
                j
            }).collect::<Vec<_>>(),
        });
        std::fs::write(self.dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

pub fn sha256_file(path: &Path) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

// ------------------------------------------------------------ processes

/// `skopeo ARGS`, which must succeed; returns stdout.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = skopeo_output(args);
    assert!(out.status.success(), "skopeo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub fn skopeo_output(args: &[&str]) -> std::process::Output {
    let skopeo = require_tool("skopeo");
    // No policy.json in a fresh container: accept anything, as the tests only
    // move their own images.
    let policy = std::env::temp_dir().join("modelship-test-skopeo-policy.json");
    if !policy.exists() {
        std::fs::write(&policy, br#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
    }
    Command::new(skopeo)
        .arg("--policy")
        .arg(&policy)
        .args(args)
        .env("REGISTRY_AUTH_FILE", std::env::temp_dir().join("modelship-test-no-auth.json"))
        .output()
        .unwrap()
}

/// Push `tag` of a layout into a plain-http registry as `dest`
/// (`HOST/REPO:TAG`) with skopeo, digests preserved.
pub fn push(layout: &Layout, tag: &str, dest: &str) {
    push_dir(&layout.dir, tag, dest)
}

/// As [`push`], for the layout in `dir`.
pub fn push_dir(dir: &Path, tag: &str, dest: &str) {
    let src = format!("oci:{}:{tag}", dir.display());
    skopeo(&["copy", "--all", "--preserve-digests", "--dest-tls-verify=false", &src, &format!("docker://{dest}")]);
}

/// `skopeo inspect --raw` of a plain-http registry image: the manifest bytes.
pub fn raw_manifest(image: &str) -> Vec<u8> {
    skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{image}")])
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Debian's `docker-registry` (distribution 2.8) on a free loopback port,
/// with its own storage directory; killed on drop.
pub struct DockerRegistry {
    child: Child,
    pub addr: String,
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    pub fn start() -> DockerRegistry {
        Self::start_with(None)
    }

    /// With htpasswd basic auth for `user`/`password`.
    pub fn start_with_auth(user: &str, password: &str) -> DockerRegistry {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> DockerRegistry {
        let bin = require_tool("/usr/bin/docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new(require_tool("htpasswd")).args(["-Bbn", user, password]).output().unwrap();
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, out.stdout).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: basic-realm\n    path: {}\n", htpasswd.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new(bin);
        // distribution reads every REGISTRY_* variable as a config override
        // (REGISTRY_AUTH_FILE, set for skopeo/podman, would break `auth:`).
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(&addr, &mut child, "docker-registry");
        DockerRegistry { child, addr, storage, _dir: dir }
    }

    /// Where distribution keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = &digest[7..];
        self.storage.join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every blob of `image` (manifest or index, recursively) read back from a
/// plain-http registry and hashed: returns the digests checked.
pub async fn verify_all_blobs(registry: &str, repo: &str, manifest: &[u8]) -> Vec<String> {
    let client = reqwest::Client::new();
    let json: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let mut checked = vec![];
    if let Some(children) = json.get("manifests").and_then(|m| m.as_array()) {
        for c in children {
            let d = c["digest"].as_str().unwrap();
            let bytes = raw_manifest(&format!("{registry}/{repo}@{d}"));
            assert_eq!(sha256_digest(&bytes), d, "child manifest digest");
            checked.extend(Box::pin(verify_all_blobs(registry, repo, &bytes)).await);
        }
        return checked;
    }
    let descs = std::iter::once(&json["config"]).chain(json["layers"].as_array().unwrap().iter());
    for d in descs {
        let digest = d["digest"].as_str().unwrap();
        let mut resp = client.get(format!("http://{registry}/v2/{repo}/blobs/{digest}")).send().await.unwrap();
        assert!(resp.status().is_success(), "GET blob {digest} from {registry}/{repo}: {}", resp.status());
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.unwrap() {
            n += chunk.len() as u64;
            h.update(&chunk);
        }
        assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), digest, "blob read back from {registry}/{repo}");
        assert_eq!(n, d["size"].as_u64().unwrap());
        checked.push(digest.to_string());
    }
    checked
}

/// The in-toto statements of every `.att` tag of `repo` in a sim's registry
/// store at `root` (read from disk, so no second client is involved).
pub fn attestations(root: &Path, repo: &str) -> Vec<serde_json::Value> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use base64::Engine;
        use tokio::io::AsyncReadExt;
        let store = openshift_sim::registry::RegistryStore::new(root);
        let mut out = Vec::new();
        for tag in store.tags(repo).await.unwrap().iter().filter(|t| t.ends_with(".att")) {
            let (_, _, manifest) = store.get_manifest(repo, tag).await.unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
            let layer = manifest["layers"][0]["digest"].as_str().unwrap();
            let mut bytes = Vec::new();
            store.open_blob(repo, layer).await.unwrap().read_to_end(&mut bytes).await.unwrap();
            let envelope: modelship::signing::Envelope = serde_json::from_slice(&bytes).unwrap();
            let payload = base64::engine::general_purpose::STANDARD.decode(envelope.payload).unwrap();
            out.push(serde_json::from_slice(&payload).unwrap());
        }
        out
    })
}

// ------------------------------------------------------------ fault proxies

/// A loopback TCP relay to `upstream`. Each chunk coming back from
/// upstream goes through `pass(sent_so_far, chunk_len)`, which may wait and
/// answers how many of its bytes to pass; fewer than all cuts the
/// connection after them. Stops accepting when the task is aborted.
async fn relay<F, Fut>(upstream: &str, pass: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: Fn(u64, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = usize> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = upstream.to_string();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, pass) = (upstream.clone(), pass.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    let _ = sw.shutdown().await;
                });
                let mut sent = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let keep = pass(sent, n).await.min(n);
                    if cw.write_all(&buf[..keep]).await.is_err() || keep < n {
                        break;
                    }
                    sent += n as u64;
                }
                up.abort();
            });
        }
    });
    (addr, task)
}

/// A loopback TCP proxy that, while `cuts` is above zero, drops a
/// connection once more than `cut_after` bytes went from upstream to the
/// client on it (each cut uses one). A negative `cuts` cuts forever.
pub struct CuttingProxy {
    pub addr: String,
    pub cuts: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    pub async fn start(upstream: &str, cut_after: u64, cuts: i64) -> CuttingProxy {
        let cuts = Arc::new(AtomicI64::new(cuts));
        let c = cuts.clone();
        let (addr, task) = relay(upstream, move |sent, n| {
            let cuts = c.clone();
            async move {
                if sent + n as u64 > cut_after {
                    let left = cuts.load(Ordering::SeqCst);
                    if left != 0 {
                        if left > 0 {
                            cuts.fetch_sub(1, Ordering::SeqCst);
                        }
                        return (cut_after - sent) as usize;
                    }
                }
                n
            }
        })
        .await;
        CuttingProxy { addr, cuts, task }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback TCP proxy that holds every byte coming back from upstream
/// while its gate is closed (it starts closed): a server as slow as the
/// test wants, without timing.
/// Bytes per connection a closed [`GatedProxy`] still passes.
const GATE_AFTER: u64 = 4096;

pub struct GatedProxy {
    pub addr: String,
    gate: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedProxy {
    pub async fn start(upstream: &str) -> GatedProxy {
        let (gate, open) = tokio::sync::watch::channel(false);
        let (addr, task) = relay(upstream, move |sent, n| {
            let mut open = open.clone();
            async move {
                // A connection's first bytes (the TLS handshake, a ping)
                // pass, so the client is connected and waits for its data
                // rather than failing to connect.
                if sent + n as u64 <= GATE_AFTER {
                    return n;
                }
                // A dropped gate (the proxy is going away) passes nothing.
                if open.wait_for(|o| *o).await.is_ok() { n } else { 0 }
            }
        })
        .await;
        GatedProxy { addr, gate, task }
    }

    pub fn open(&self) {
        self.gate.send_replace(true);
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
