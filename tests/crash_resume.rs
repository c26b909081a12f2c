//! Crash and resume: the real binary runs the weather pipeline with `--sim`,
//! is SIGKILLed when a chosen JSON log line appears (each stage boundary and
//! inside each long stage), and is resumed with `--resume`. The sim keeps its
//! state (and its address) in the data directory, so the resumed runner
//! meets the cluster the killed one left. Afterwards, inspected with
//! `kubectl` through `modelship sim serve`: the run succeeded with every
//! stage recorded; exactly one Build per context digest and one
//! SeldonDeployment; one ledger entry per check and per promotion; the
//! promotion lock free; no model process of the killed runner left; and the
//! run record equal to an uninterrupted run's (ports, workspace paths and
//! the build's image digest normalised: the sim, like a real build, stamps
//! the image with the time it was built; the model's and the build
//! context's content digests are compared as they are).
//!
//! Also SIGTERM (Tekton's timeout): the stage in progress is recorded as
//! cancelled, the promotion lock is released, the exit code is non-zero, and
//! a resume completes.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use support::cli::{cm_yaml, modelship, wait_no_processes_under, weather_fixture};
use support::signal;
use support::sim::ServedSim;

const RUN: &str = "crash-1";

/// Where to interrupt: the first JSON log line whose `message` starts with
/// `message` (and whose `target` starts with `target`, if given).
#[derive(Debug, Clone, Copy)]
struct Point {
    message: &'static str,
    target: Option<&'static str>,
}

const fn at(message: &'static str) -> Point {
    Point { message, target: None }
}

impl Point {
    fn matches(&self, line: &Value) -> bool {
        line["message"].as_str().is_some_and(|m| m.starts_with(self.message))
            && self.target.is_none_or(|t| line["target"].as_str().is_some_and(|x| x.starts_with(t)))
    }
}

struct Case {
    dir: tempfile::TempDir,
    pipeline: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = weather_fixture(dir.path(), |y| y);
        Case { dir, pipeline }
    }
    fn sim(&self) -> PathBuf {
        self.dir.path().join("sim")
    }
    fn workspace(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    fn command(&self, run: &[&str]) -> std::process::Command {
        let mut cmd = modelship();
        cmd.args(["--log-format", "json", "run"])
            .arg(&self.pipeline)
            .arg("--sim")
            .arg(self.sim())
            .arg("--workspace")
            .arg(self.workspace())
            .args(run);
        cmd
    }

    /// Start a fresh run; at `point` send `sig`. Returns the exit status and
    /// the log lines up to the signal.
    fn interrupt(&self, point: Point, sig: &str) -> (std::process::ExitStatus, Vec<String>) {
        self.interrupt_run(&["--run-id", RUN], point, sig)
    }

    fn interrupt_run(&self, run: &[&str], point: Point, sig: &str) -> (std::process::ExitStatus, Vec<String>) {
        let mut child = self.command(run).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut seen = Vec::new();
        let mut hit = false;
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let line = line.unwrap();
            let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            seen.push(line);
            if !hit && point.matches(&parsed) {
                hit = true;
                signal(child.id(), sig);
                if sig == "KILL" {
                    break;
                }
            }
        }
        let status = child.wait().unwrap();
        assert!(hit, "the run never logged {point:?}; its log:\n{}", seen.join("\n"));
        (status, seen)
    }

    /// `--resume RUN` (or a fresh `--run-id RUN`); must exit 0.
    fn complete(&self, flag: &str) -> Value {
        let out = self.command(&[flag, RUN, "--output", "json"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flag} {RUN} exited {:?}:\n{stderr}", out.status.code());
        let summary: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("--output json is not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(summary["status"], "succeeded", "{summary}");
        summary
    }

    /// Everything the run left in both sims, checked for the invariants a
    /// crash must not break; returns the normalised run record.
    fn inspect(&self) -> Final {
        let (dev, prod) =
            (ServedSim::start(&self.sim().join("dev"), "dev"), ServedSim::start(&self.sim().join("prod"), "prod"));
        let builds = dev.items(&["get", "builds", "-n", "models-dev"]);
        let cancelled_builds = builds.iter().filter(|b| b["status"]["phase"] == "Cancelled").count();
        let builds: Vec<Value> = builds.into_iter().filter(|b| b["status"]["phase"] != "Cancelled").collect();
        let mut per_context: BTreeMap<String, usize> = BTreeMap::new();
        for b in &builds {
            let ctx = b["metadata"]["annotations"]["modelship.io/context-digest"].as_str().unwrap_or("(none)");
            *per_context.entry(ctx.to_string()).or_default() += 1;
        }
        let sdeps = dev.items(&["get", "seldondeployments", "-n", "models-dev"]);
        let run_cm = dev.get_json(&["get", "configmap", "-n", "models-dev", &format!("modelship-run-weather-{RUN}")]);
        let record = cm_yaml(&run_cm, "run.yaml");
        let dev_ledger =
            cm_yaml(&dev.get_json(&["get", "cm", "-n", "models-dev", "modelship-ledger-weather"]), "ledger.yaml");
        let prod_ledger =
            cm_yaml(&prod.get_json(&["get", "cm", "-n", "models-prod", "modelship-ledger-weather"]), "ledger.yaml");
        let entries = |ledger: &Value, action: &str| {
            ledger["history"]
                .as_array()
                .map(|h| h.iter().filter(|e| e["action"] == action && e["runId"] == RUN).count())
                .unwrap_or(0)
        };
        let leases = prod.items(&["get", "leases", "-n", "models-prod"]);
        let held: Vec<String> = leases
            .iter()
            .filter_map(|l| l["spec"]["holderIdentity"].as_str().filter(|h| !h.is_empty()).map(str::to_string))
            .collect();
        Final {
            builds: builds.len(),
            cancelled_builds,
            per_context,
            build_digests: builds
                .iter()
                .filter_map(|b| b["status"]["output"]["to"]["imageDigest"].as_str().map(str::to_string))
                .collect(),
            sdeps: sdeps.len(),
            sdep_images: sdeps
                .iter()
                .flat_map(|s| s["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"].as_array().cloned())
                .flatten()
                .filter_map(|c| c["image"].as_str().map(str::to_string))
                .collect(),
            verified: entries(&dev_ledger, "verified"),
            promoted: entries(&prod_ledger, "promoted"),
            prod_current: prod_ledger["current"]["prod"]["digest"].as_str().unwrap_or_default().to_string(),
            locks_held: held,
            record,
        }
    }
}

#[derive(Debug)]
struct Final {
    /// Builds not cancelled (a SIGTERM cancels the Build it interrupts).
    builds: usize,
    cancelled_builds: usize,
    per_context: BTreeMap<String, usize>,
    build_digests: Vec<String>,
    sdeps: usize,
    sdep_images: Vec<String>,
    verified: usize,
    promoted: usize,
    prod_current: String,
    locks_held: Vec<String>,
    record: Value,
}

impl Final {
    /// After SIGKILL nothing was cancelled: every Build there is counts.
    fn assert_killed_sound(&self, what: &str) {
        assert_eq!(self.cancelled_builds, 0, "{what}: cancelled Builds after a SIGKILL");
        self.assert_sound(what);
    }

    fn assert_sound(&self, what: &str) {
        assert_eq!(self.builds, 1, "{what}: Builds {:?}", self.per_context);
        assert!(self.per_context.values().all(|&n| n == 1), "{what}: Builds per context digest {:?}", self.per_context);
        assert_eq!(self.sdeps, 1, "{what}: SeldonDeployments");
        assert_eq!(self.verified, 1, "{what}: `verified` ledger entries of run {RUN} in dev");
        assert_eq!(self.promoted, 1, "{what}: `promoted` ledger entries of run {RUN} in prod");
        assert!(self.locks_held.is_empty(), "{what}: promotion lock still held by {:?}", self.locks_held);
        assert_eq!(self.record["status"], "succeeded", "{what}: run status");
        let stages = self.record["stages"].as_array().unwrap();
        let names: Vec<&str> = stages.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(names, ["fetch", "render", "build", "deploy", "check", "promote"], "{what}: stages recorded");
        for s in stages {
            assert_eq!(s["status"], "succeeded", "{what}: stage {}", s["name"]);
            assert!(s["inputsDigest"].is_string() && s["finished"].is_string(), "{what}: stage record {s}");
        }
        // The digest tested in dev is the one built, deployed and promoted.
        let digest = self.image_digest();
        assert_eq!(self.build_digests, std::slice::from_ref(&digest), "{what}: Build output digest");
        assert!(
            self.sdep_images.len() == 1 && self.sdep_images[0].ends_with(&format!("@{digest}")),
            "{what}: SeldonDeployment image {:?} is not {digest}",
            self.sdep_images
        );
        assert_eq!(self.prod_current, digest, "{what}: prod ledger's current digest");
    }

    fn stage(&self, name: &str) -> &Value {
        self.record["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
    }

    fn image_digest(&self) -> String {
        self.stage("build")["outputs"]["imageDigest"].as_str().unwrap().to_string()
    }

    /// The run record as comparable across runs: per stage its name, kind,
    /// status and outputs, with loopback ports, the workspace and the image
    /// digest replaced and the check report reduced to its verdicts.
    fn normalised(&self, workspace: &Path) -> Value {
        let digest = self.image_digest();
        let port = regex::Regex::new(r"127\.0\.0\.1:\d+").unwrap();
        let stages: Vec<Value> = self.record["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let mut outputs = s["outputs"].clone();
                if let Some(report) = outputs.get_mut("report") {
                    let verdicts: Vec<Value> = report["cases"]
                        .as_array()
                        .map(|c| c.iter().map(|c| serde_json::json!([c["name"], c["passed"]])).collect())
                        .unwrap_or_default();
                    *report = serde_json::json!({"passed": report["passed"], "cases": verdicts});
                }
                let text = serde_json::to_string(&outputs).unwrap();
                let text = port
                    .replace_all(&text, "HOST")
                    .replace(&*workspace.to_string_lossy(), "WS")
                    .replace(&digest, "IMAGE");
                serde_json::json!({
                    "name": s["name"], "uses": s["uses"], "status": s["status"],
                    "outputs": serde_json::from_str::<Value>(&text).unwrap(),
                })
            })
            .collect();
        serde_json::json!({
            "pipelineDigest": self.record["pipelineDigest"],
            "params": self.record["params"],
            "status": self.record["status"],
            "stages": stages,
        })
    }
}

/// An uninterrupted run in its own directory: the state a resumed run must
/// end in.
fn reference() -> Value {
    let case = Case::new();
    case.complete("--run-id");
    let fin = case.inspect();
    fin.assert_killed_sound("uninterrupted run");
    let normalised = fin.normalised(&case.workspace());
    assert_no_leftover_processes(&case);
    normalised
}

fn assert_no_leftover_processes(case: &Case) {
    let left = wait_no_processes_under(case.dir.path());
    assert!(left.is_empty(), "model processes left running after the sims stopped: {left:?}");
}

fn kill_and_resume(point: Point) {
    let expected = reference();
    let case = Case::new();
    let (status, _) = case.interrupt(point, "KILL");
    assert!(!status.success(), "SIGKILLed runner exited {status:?}");
    let summary = case.complete("--resume");
    let stages = summary["stages"].as_array().unwrap();
    assert!(stages.iter().all(|s| s["status"] == "succeeded"), "resumed run: {summary}");
    let fin = case.inspect();
    fin.assert_killed_sound(&format!("killed at {point:?}, resumed"));
    assert_eq!(
        fin.normalised(&case.workspace()),
        expected,
        "killed at {point:?}: the resumed run's record differs from an uninterrupted run's"
    );
    assert_no_leftover_processes(&case);
}

macro_rules! kill_points {
    ($($name:ident: $point:expr;)*) => {$(
        #[test]
        fn $name() {
            kill_and_resume($point);
        }
    )*};
}

kill_points! {
    kill_at_fetch_start: at("stage fetch started");
    kill_during_fetch_download: at("fetched");
    kill_after_fetch: at("stage fetch succeeded");
    kill_inside_render: at("rendered build context");
    kill_at_build_start: at("stage build started");
    kill_during_build_upload: at("starting a binary build");
    kill_during_build_follow: at("STEP 6/12");
    kill_after_build_push: at("Push successful");
    kill_after_build: at("stage build succeeded");
    kill_while_waiting_for_seldon: at("SeldonDeployment applied");
    kill_after_model_process_start: at("sim seldon: model process started");
    kill_after_deploy: at("stage deploy succeeded");
    kill_during_check_cases: at("prediction case passed");
    kill_during_check_load: at("prediction-check load phase");
    kill_at_promote_start: at("stage promote started");
    kill_during_promote_copy: at("copying image");
    kill_after_copy_before_ledger: Point { message: "image copied", target: Some("modelship::promotion") };
    kill_after_promote: at("stage promote succeeded");
}

/// SIGTERM (Tekton's timeout) inside a long stage: the stage is recorded as
/// cancelled, the run exits non-zero, and `--resume` completes. `run` starts
/// or resumes the run that gets the signal.
fn terminate_and_resume(case: &Case, run: &[&str], point: Point, stage: &str) {
    let (status, log) = case.interrupt_run(run, point, "TERM");
    assert!(!status.success(), "SIGTERMed run exited 0; log:\n{}", log.join("\n"));
    {
        let dev = ServedSim::start(&case.sim().join("dev"), "dev");
        let run_cm = dev.get_json(&["get", "configmap", "-n", "models-dev", &format!("modelship-run-weather-{RUN}")]);
        let record = cm_yaml(&run_cm, "run.yaml");
        assert_eq!(record["status"], "cancelled", "run after SIGTERM: {record}");
        let st = record["stages"].as_array().unwrap().iter().find(|s| s["name"] == stage).unwrap();
        assert_eq!(st["status"], "cancelled", "stage `{stage}` after SIGTERM: {st}");
    }
    case.complete("--resume");
    case.inspect().assert_sound(&format!("SIGTERM at {point:?}, resumed"));
    assert_no_leftover_processes(case);
}

#[test]
fn sigterm_during_build_records_cancelled() {
    let case = Case::new();
    terminate_and_resume(&case, &["--run-id", RUN], at("starting a binary build"), "build");
}

#[test]
fn sigterm_while_waiting_for_seldon_records_cancelled() {
    let case = Case::new();
    terminate_and_resume(&case, &["--run-id", RUN], at("SeldonDeployment applied"), "deploy");
}

/// Another runner holds the promotion lock; SIGTERM while this run waits
/// for it: promote is recorded as cancelled, the other holder's lock is
/// left alone (not stolen, not released), and once it is gone the resume
/// promotes.
#[test]
fn sigterm_while_waiting_for_the_promotion_lock() {
    let case = Case::new();
    case.command(&["--run-id", RUN, "--until", "check"]).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
    let other = "someone (run other-runner)";
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "modelship-lock-weather", "namespace": "models-prod"},
        "spec": {
            "holderIdentity": other, "leaseDurationSeconds": 900,
            "acquireTime": jiff_now(), "renewTime": jiff_now(), "leaseTransitions": 0,
        }
    });
    {
        let prod = ServedSim::start(&case.sim().join("prod"), "prod");
        prod.apply(&lease.to_string());
    }
    let point = at("waiting for the promotion lock");
    let (status, log) = case.interrupt_run(&["--resume", RUN], point, "TERM");
    assert!(!status.success(), "SIGTERMed run exited 0; log:\n{}", log.join("\n"));
    {
        let dev = ServedSim::start(&case.sim().join("dev"), "dev");
        let prod = ServedSim::start(&case.sim().join("prod"), "prod");
        let record = cm_yaml(
            &dev.get_json(&["get", "configmap", "-n", "models-dev", &format!("modelship-run-weather-{RUN}")]),
            "run.yaml",
        );
        assert_eq!(record["status"], "cancelled", "run after SIGTERM: {record}");
        let st = record["stages"].as_array().unwrap().iter().find(|s| s["name"] == "promote").unwrap();
        assert_eq!(st["status"], "cancelled", "promote after SIGTERM: {st}");
        let held = prod.get_json(&["get", "lease", "-n", "models-prod", "modelship-lock-weather"]);
        assert_eq!(held["spec"]["holderIdentity"], other, "the other runner's lock after our SIGTERM: {held}");
        // The other runner finishes and lets go.
        prod.kubectl(&["delete", "lease", "-n", "models-prod", "modelship-lock-weather"]);
    }
    case.complete("--resume");
    case.inspect().assert_sound("SIGTERM while waiting for the lock, resumed");
    assert_no_leftover_processes(&case);
}

/// RFC 3339 with microseconds, as a Lease's MicroTime wants it.
fn jiff_now() -> String {
    let out = std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
