//! A real `moto_server` on loopback (`scripts/setup.d/20-s3.sh` installs
//! it), stopped on drop, and boto3 from its venv to put objects in it.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::tools;

pub struct Moto {
    child: Child,
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
                return Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("moto_server exited early with {status}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("moto_server did not listen on port {port} within 30s");
    }

    /// boto3 (moto's venv) running `script` with `args`; its stdout.
    pub fn boto3(&self, script: &str, args: &[&str]) -> String {
        let out = Command::new(tools().join("moto/bin/python")).arg("-c").arg(script).args(args).output().unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "boto3 failed:\n{printed}{}", String::from_utf8_lossy(&out.stderr));
        printed
    }

    /// Create `bucket` and put each file of `dir` (not recursive) under `prefix`.
    pub fn put_dir(&self, bucket: &str, prefix: &str, dir: &Path) {
        self.boto3(PUT_DIR, &[&self.endpoint, bucket, prefix, &dir.display().to_string()]);
    }
}

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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
