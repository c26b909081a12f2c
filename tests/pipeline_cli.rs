//! The weather pipeline through the real binary on `--sim`: fetch from the
//! embedded S3, render, build on the simulated OpenShift (the digest read
//! back with skopeo, one Build counted with kubectl), a second run that
//! does not build again, deploy with real seldon-core and the checks; then
//! a deliberately wrong expectation that fails the stage with exit 1 and a
//! readable diff.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::sim::ServedSim;
use support::{repo, text};

const NS: &str = "models-dev";

fn modelship(args: &[&str], cwd: &Path) -> Output {
    Command::new(support::BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("MODELSHIP_STAGES_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run modelship")
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
struct Cluster(ServedSim);

impl std::ops::Deref for Cluster {
    type Target = ServedSim;
    fn deref(&self) -> &ServedSim {
        &self.0
    }
}

impl Cluster {
    fn serve(sim: &Path, env: &str) -> Cluster {
        let data = sim.join(env);
        let addr = std::fs::read_to_string(data.join("address")).expect("the run records the sim's address");
        Cluster(
            ServedSim::serve(&data)
                .command(Command::new(support::BIN))
                .listen(addr.trim())
                .kubeconfig(sim.join(format!("{env}.kubeconfig")))
                .name(env)
                .start(),
        )
    }

    fn builds(&self) -> Vec<String> {
        self.kubectl(&["get", "builds", "-n", NS, "-o", "name"]).lines().map(str::to_string).collect()
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
