//! The weather pipeline through the real binary on `--sim`: fetch from the
//! embedded S3, render, build on the simulated OpenShift (the digest read
//! back with skopeo, one Build counted with kubectl), a second run that
//! does not build again, deploy with real seldon-core and the checks; then
//! a deliberately wrong expectation that fails the stage with exit 1 and a
//! readable diff.

mod sim_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

const NS: &str = "models-dev";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn modelship(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelship"))
        .args(args)
        .current_dir(cwd)
        .env_remove("MODELSHIP_STAGES_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run modelship")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `--output json`'s last line: the run summary.
fn summary(out: &Output) -> Value {
    let stdout = text(&out.stdout);
    // The object starts on the last line that opens one at column 0.
    let start = stdout.rfind("\n{").map(|i| i + 1).or_else(|| stdout.starts_with('{').then_some(0));
    let parsed = start.and_then(|i| serde_json::from_str(&stdout[i..]).ok());
    parsed.unwrap_or_else(|| panic!("no JSON summary\nstdout:\n{stdout}\nstderr:\n{}", text(&out.stderr)))
}

fn stage<'a>(summary: &'a Value, name: &str) -> &'a Value {
    summary["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| {
        panic!("no stage {name} in {summary:#}");
    })
}

/// The persisted dev cluster of a `--sim` directory, served again by
/// `modelship sim serve` on the address the run used, so kubectl and skopeo
/// can read what the run left behind.
struct Cluster {
    child: Child,
    kubeconfig: PathBuf,
    addr: String,
    data: PathBuf,
}

impl Cluster {
    fn serve(sim: &Path, env: &str) -> Cluster {
        let data = sim.join(env);
        let addr = std::fs::read_to_string(data.join("address")).expect("the run records the sim's address");
        let kubeconfig = sim.join(format!("{env}.kubeconfig"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_modelship"))
            .args(["sim", "serve", "--data", data.to_str().unwrap(), "--listen", addr.trim()])
            .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "--name", env])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("sim serve prints its address").unwrap();
        assert!(first.starts_with("listening on https://"), "{first}");
        Cluster { child, kubeconfig, addr: addr.trim().to_string(), data }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl is missing: run scripts/test.sh (scripts/setup.d/10-kubectl.sh installs it)");
        assert!(out.status.success(), "kubectl {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    fn builds(&self) -> Vec<String> {
        self.kubectl(&["get", "builds", "-n", NS, "-o", "name"]).lines().map(str::to_string).collect()
    }

    /// The manifest digest skopeo reads for `repo@digest` in this registry.
    /// As a ServiceAccount that may pull, TLS verified with the sim's CA.
    fn skopeo_digest(&self, image: &str) -> String {
        let login = sim_support::SkopeoLogin::with_kubectl(Path::new("kubectl"), &self.kubeconfig, &self.data);
        let out = Command::new("skopeo")
            .args(["inspect", "--no-tags"])
            .args(login.args(""))
            .arg(format!("docker://{}/{image}", self.addr))
            .output()
            .expect("skopeo is missing: run scripts/test.sh (scripts/setup.d/30-registry.sh installs it)");
        assert!(out.status.success(), "skopeo: {}", text(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Digest"].as_str().unwrap().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGTERM lets the sim stop its controllers; then reap it.
        // SAFETY: the pid is our child's, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[test]
fn weather_builds_once_deploys_and_checks_on_the_sim_and_a_wrong_expectation_fails_with_a_diff() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = tmp.path().join("sim");
    let sim_arg = sim.to_str().unwrap();
    let pipeline = repo().join("pipelines/weather.yaml");
    let pipeline_arg = pipeline.to_str().unwrap();

    // fetch → render → build.
    let args = ["run", pipeline_arg, "--sim", sim_arg, "--until", "build", "--run-id", "build-1", "--output", "json"];
    let out = modelship(&args, tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let first = summary(&out);
    assert_eq!(first["status"], "succeeded", "{first:#}");
    let built = stage(&first, "build")["outputs"].clone();
    let digest = built["imageDigest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{built}");
    {
        let dev = Cluster::serve(&sim, "dev");
        assert_eq!(dev.skopeo_digest(&format!("{NS}/weather@{digest}")), digest);
        assert_eq!(dev.builds(), vec!["build.build.openshift.io/weather-1"]);
    }

    // The same model again, as a new run: no second Build, the same digest.
    let args = ["run", pipeline_arg, "--sim", sim_arg, "--until", "build", "--run-id", "build-2", "--output", "json"];
    let out = modelship(&args, tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let second = summary(&out);
    assert_eq!(stage(&second, "build")["outputs"]["imageDigest"], digest.as_str(), "{second:#}");
    assert_eq!(stage(&second, "fetch")["outputs"]["contentDigest"], stage(&first, "fetch")["outputs"]["contentDigest"]);
    {
        let dev = Cluster::serve(&sim, "dev");
        assert_eq!(dev.builds().len(), 1, "a second Build was made");
    }

    // Deploy that digest and check it: the seed's request answered by
    // seldon-core running the image the sim built.
    let args = ["run", pipeline_arg, "--sim", sim_arg, "--until", "check", "--run-id", "check-1", "--output", "json"];
    let out = modelship(&args, tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let checked = summary(&out);
    let deploy = &stage(&checked, "deploy")["outputs"];
    assert_eq!(deploy["deployedDigest"], digest.as_str(), "{deploy}");
    let check = stage(&checked, "check");
    assert_eq!(check["status"], "succeeded", "{check:#}");
    let report = serde_json::to_string(&check["outputs"]).unwrap();
    for case in ["seed request", "freezing", "hot day", "not an integer"] {
        assert!(report.contains(case), "case {case} missing from {report}");
    }
    {
        let dev = Cluster::serve(&sim, "dev");
        assert_eq!(dev.builds().len(), 1);
        let sdep = dev.kubectl(&["get", "seldondeployments", "-n", NS, "-o", "json"]);
        assert!(sdep.contains(&digest), "the SeldonDeployment runs another image: {sdep}");
    }

    // A wrong expectation: exit 1, the case named, what was expected and
    // what came back.
    let wrong = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace("expect: { meta.tags.weather_state: mild }", "expect: { meta.tags.weather_state: sunny }");
    assert!(wrong.contains("sunny"));
    let wrong_file = tmp.path().join("weather-wrong.yaml");
    std::fs::write(&wrong_file, wrong).unwrap();
    let args = ["run", wrong_file.to_str().unwrap(), "--sim", sim_arg, "--until", "check", "--run-id", "wrong-1"];
    let out = modelship(&args, tmp.path());
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("seed request"), "the failing case is not named:\n{all}");
    assert!(all.contains("sunny") && all.contains("mild"), "no expected/actual diff:\n{all}");
    assert!(all.contains("meta.tags.weather_state"), "the path is not named:\n{all}");
}
