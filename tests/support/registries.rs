//! Model registries on loopback (`scripts/setup.d/25-model-registries.sh`
//! installs them): a real MLflow tracking server (its artifacts in moto's
//! S3, or proxied by the server), MLflow's own client to register versions,
//! and the `dvc` command line pushing to moto.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::s3::Moto;
use super::tool;

/// The keys the tests' moto accepts (moto accepts any; these are what
/// MLflow, DVC and modelship are given).
pub const AK: &str = "AKIAMODELREGISTRY01";
pub const SK: &str = "model-registry-secret-key-0123456789";

/// An `mlflow server` (killed on drop).
pub struct Mlflow {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub uri: String,
    /// The moto endpoint its S3 artifacts live in.
    pub s3: String,
    pub dir: tempfile::TempDir,
    /// Basic-auth admin password, when the server demands auth.
    pub admin_password: Option<String>,
}

/// How the server keeps artifacts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Artifacts {
    /// `--default-artifact-root s3://mlflow/art --no-serve-artifacts`: clients
    /// read and write S3 themselves.
    S3,
    /// `--artifacts-destination s3://mlflow/proxied --serve-artifacts`:
    /// `mlflow-artifacts:` URIs served by the tracking server.
    Proxied,
}

fn python(venv: &str) -> PathBuf {
    tool(&format!("{venv}/bin/python"), "25-model-registries.sh")
}

impl Mlflow {
    /// A server over `moto` (its bucket `mlflow` is created here); with
    /// `auth`, MLflow's basic-auth app with user `admin` and that password.
    pub fn start(moto: &Moto, artifacts: Artifacts, auth: Option<&str>) -> Mlflow {
        moto.create_bucket("mlflow", false);
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let mlflow = tool("mlflow/bin/mlflow", "25-model-registries.sh");
        // A migrated empty database: the server skips MLflow's migrations.
        std::fs::copy(tool("mlflow/template.db", "25-model-registries.sh"), dir.path().join("mlflow.db")).unwrap();
        let mut cmd = Command::new(mlflow);
        cmd.current_dir(dir.path())
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string(), "--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}", dir.path().join("mlflow.db").display()));
        match artifacts {
            Artifacts::S3 => cmd.args(["--default-artifact-root", "s3://mlflow/art", "--no-serve-artifacts"]),
            Artifacts::Proxied => cmd.args(["--artifacts-destination", "s3://mlflow/proxied", "--serve-artifacts"]),
        };
        if let Some(password) = auth {
            let ini = dir.path().join("basic_auth.ini");
            std::fs::write(
                &ini,
                format!(
                    "[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{}\nadmin_username = admin\nadmin_password = {password}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
                    dir.path().join("auth.db").display()
                ),
            )
            .unwrap();
            cmd.args(["--app-name", "basic-auth"])
                .env("MLFLOW_AUTH_CONFIG_PATH", &ini)
                .env("MLFLOW_FLASK_SERVER_SECRET_KEY", "modelship-test-csrf-key");
        }
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        // Its own process group: `mlflow server` starts uvicorn and a job
        // runner with workers, which must go when the test ends.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .envs(s3_env(&moto.endpoint))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("mlflow server (scripts/setup.d/25-model-registries.sh installs it): {e}"));
        let uri = format!("http://127.0.0.1:{port}");
        // The server answers /health once its workers are up: seconds on a
        // quiet machine, minutes on one running the whole suite (it imports
        // all of MLflow). The bound only keeps a broken server from hanging
        // the test.
        for _ in 0..6000 {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
                panic!("mlflow server exited early with {status}:\n{log}");
            }
            if health(port) {
                return Mlflow { child, uri, s3: moto.endpoint.clone(), dir, admin_password: auth.map(str::to_string) };
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("mlflow server did not answer on port {port} within 600s");
    }

    /// MLflow's own client (`MlflowClient`) running `script` with `args`
    /// against this server; its stdout.
    pub fn client(&self, script: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(python("mlflow"));
        cmd.arg("-c").arg(script).args(args).envs(s3_env(&self.s3)).env("MLFLOW_TRACKING_URI", &self.uri);
        if let Some(p) = &self.admin_password {
            cmd.env("MLFLOW_TRACKING_USERNAME", "admin").env("MLFLOW_TRACKING_PASSWORD", p);
        }
        let out = cmd.output().unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "mlflow client failed:\n{printed}{}", String::from_utf8_lossy(&out.stderr));
        printed
    }

    /// Log `dir` as run artifacts under `model/` and register them as a new
    /// version of `name` (creating the registered model), optionally
    /// setting `alias` on it; the version and the run id.
    pub fn register(&self, name: &str, dir: &Path, alias: Option<&str>) -> (String, String) {
        let out = self.client(REGISTER, &[name, &dir.display().to_string(), alias.unwrap_or("")]);
        let last = out.lines().last().unwrap_or_default().to_string();
        let (version, run) = last.split_once(' ').unwrap_or_else(|| panic!("register printed {out}"));
        (version.to_string(), run.to_string())
    }

    /// A version's tags and aliases, as MLflow's client reads them.
    pub fn version_info(&self, name: &str, version: &str) -> serde_json::Value {
        let out = self.client(VERSION_INFO, &[name, version]);
        serde_json::from_str(out.lines().last().unwrap()).unwrap()
    }
}

fn health(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200")
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        // The server, uvicorn and the job runner's workers: the whole group
        // this test started (killing `mlflow` alone orphans them).
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) on a process group this test created; no memory is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// What MLflow, DVC and boto3 need to reach moto.
pub fn s3_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MLFLOW_S3_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", AK.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SK.to_string()),
        ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
        ("GIT_PYTHON_REFRESH", "quiet".to_string()),
    ]
}

const REGISTER: &str = r#"
import sys, mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
name, src, alias = sys.argv[1], sys.argv[2], sys.argv[3]
with mlflow.start_run() as run:
    if src:
        mlflow.log_artifacts(src, artifact_path="model")
c = MlflowClient()
try:
    c.create_registered_model(name)
except MlflowException as e:
    if e.error_code != "RESOURCE_ALREADY_EXISTS":
        raise
mv = c.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
if alias:
    c.set_registered_model_alias(name, alias, mv.version)
print(mv.version, run.info.run_id)
"#;

const VERSION_INFO: &str = r#"
import sys, json
from mlflow import MlflowClient
mv = MlflowClient().get_model_version(sys.argv[1], sys.argv[2])
print(json.dumps({"tags": mv.tags, "aliases": list(mv.aliases)}))
"#;

/// A Git repository with DVC initialised and an S3 remote on moto.
pub struct DvcRepo {
    pub dir: tempfile::TempDir,
    pub s3: String,
}

impl DvcRepo {
    /// `git init`, `dvc init`, `dvc remote add -d store s3://BUCKET/cache`
    /// with moto's endpoint (bucket created), committed.
    pub fn new(moto: &Moto, bucket: &str) -> DvcRepo {
        moto.create_bucket(bucket, false);
        let repo = DvcRepo { dir: tempfile::tempdir().unwrap(), s3: moto.endpoint.clone() };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.git(&["config", "user.email", "ci@example.com"]);
        repo.git(&["config", "user.name", "CI"]);
        repo.dvc(&["init", "-q"]);
        repo.dvc(&["remote", "add", "-d", "store", &format!("s3://{bucket}/cache")]);
        repo.dvc(&["remote", "modify", "store", "endpointurl", &moto.endpoint]);
        repo.commit("dvc init");
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn git(&self, args: &[&str]) -> String {
        run(Command::new("git").args(args).current_dir(self.path()), "git")
    }

    pub fn dvc(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(tool("dvc/bin/dvc", "25-model-registries.sh"));
        cmd.args(args).current_dir(self.path()).envs(s3_env(&self.s3)).env("DVC_NO_ANALYTICS", "1");
        run(&mut cmd, "dvc")
    }

    /// `git add -A && git commit`; the new commit's id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// The DVC venv's Python running `script` in the repository.
    pub fn python(&self, script: &str, args: &[&str]) -> String {
        run(Command::new(python("dvc")).arg("-c").arg(script).args(args).current_dir(self.path()), "python")
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} {:?} failed:\n{printed}{}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    printed
}
