//! A real `moto_server` on loopback (`scripts/setup.d/20-s3.sh` installs
//! it), stopped on drop, and boto3 from its venv to put objects in it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::tools;

pub struct Moto {
    /// `None` for a handle on an endpoint another value owns ([`Moto::at`]).
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = super::free_port();
        let mut child = Command::new(tools().join("moto/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("moto_server (scripts/setup.d/20-s3.sh installs it): {e}"));
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Moto { child: Some(child), endpoint: format!("http://127.0.0.1:{port}") };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("moto_server exited early with {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("moto_server did not listen on port {port} within 30s");
    }

    /// A handle on an S3 endpoint (a proxy in front of a moto) that stops nothing when dropped.
    pub fn at(endpoint: &str) -> Moto {
        Moto { child: None, endpoint: endpoint.to_string() }
    }

    /// boto3 (moto's venv) running `script` with `args`; its stdout.
    pub fn boto3(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(tools().join("moto/bin/python")).arg("-c").arg(script).args(args).output().unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "boto3 failed:\n{printed}{}", String::from_utf8_lossy(&out.stderr));
        printed
    }

    /// Create `bucket` (if it is not there), with object versioning when `versioned`.
    pub fn create_bucket(&self, bucket: &str, versioned: bool) {
        self.boto3(CREATE_BUCKET, &[&self.endpoint, bucket, if versioned { "versioned" } else { "" }]);
    }

    /// Create `bucket` and put each file of `dir` (not recursive) under `prefix`.
    pub fn put_dir(&self, bucket: &str, prefix: &str, dir: &Path) {
        self.boto3(PUT_DIR, &[&self.endpoint, bucket, prefix, &dir.display().to_string()]);
    }
}

const CREATE_BUCKET: &str = r#"
import sys
import boto3
endpoint, bucket, versioned = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="seed-access-key", aws_secret_access_key="seed-secret-key")
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
if versioned:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
"#;

const PUT_DIR: &str = r#"
import os, sys
import boto3
endpoint, bucket, prefix, src = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="seed-access-key", aws_secret_access_key="seed-secret-key")
s3.create_bucket(Bucket=bucket)
for name in sorted(os.listdir(src)):
    path = os.path.join(src, name)
    if os.path.isfile(path):
        s3.upload_file(path, bucket, prefix + name)
"#;

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback TCP proxy in front of an S3 endpoint that passes `budget`
/// bytes from clients to the server, summed over all its connections, and
/// then drops every connection (and every new one): an upload that breaks
/// off partway, the same way every time it is retried.
pub struct UploadCutter {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl UploadCutter {
    pub async fn start(upstream: &str, budget: u64) -> UploadCutter {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_string();
        let used = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, used) = (upstream.clone(), used.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let down = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let before = used.fetch_add(n as u64, Ordering::SeqCst);
                        if before + n as u64 > budget {
                            break;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Both directions go: the client sees its connection reset.
                    down.abort();
                });
            }
        });
        UploadCutter { addr, task }
    }
}

impl Drop for UploadCutter {
    fn drop(&mut self) {
        self.task.abort();
    }
}
