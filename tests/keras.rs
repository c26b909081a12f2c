//! The seed's own model for real: the Keras weather network of
//! `fixtures/weather-keras-model/` taken from S3 to prod by
//! `modelship run pipelines/weather-keras.yaml --sim DIR` (the built binary in
//! a copy of the repository), served by seldon-core 1.17.1 with TensorFlow
//! 2.19.1 in the sim. The sim's venv for that requirements set is pre-warmed
//! by `scripts/setup.d/65-keras-venv.sh`; without it the first deploy spends
//! a minute or more in pip.
//!
//! Also: the model uploaded the seed's way (a boto3 multipart upload to moto,
//! so fetch-model meets a composite ETag), the render stage's generated Keras
//! wrapper on a bare `.keras` file, and the three bad inputs a user meets
//! first (a file that is not a Keras model, a class that fails in
//! `__init__`, a request without the feature): each fails its stage with the
//! model server's own words, exits 1 and promotes nothing.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::cli::{cm_yaml, wait_no_processes_under};
use support::s3::Moto;
use support::sim::ServedSim;
use support::{copy_tree, repo, tools};

const PIPELINE: &str = "pipelines/weather-keras.yaml";
const FIXTURE: &str = "fixtures/weather-keras-model";
const LEDGER: &str = "modelship-ledger-weather-keras";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sim venv cache holding the TensorFlow runtime for
/// `fixtures/requirements-lock/keras.txt`.
fn keras_venv_cache() -> PathBuf {
    let cache = tools().join("sim-venvs");
    let lock = std::fs::read(repo().join("fixtures/requirements-lock/keras.txt")).unwrap();
    let venv = cache.join(&sha256_hex(&lock)[..16]);
    assert!(
        venv.join(".complete").is_file(),
        "{} is missing: run scripts/test.sh (scripts/setup.d/65-keras-venv.sh pre-warms the TensorFlow venv)",
        venv.display()
    );
    cache
}

/// A user's checkout: the shipped pipeline and the fixture the sim seeds its
/// bucket from, in a temporary directory with its own cache.
struct Checkout {
    dir: tempfile::TempDir,
}

impl Checkout {
    fn new() -> Checkout {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("pipelines")).unwrap();
        std::fs::copy(repo().join(PIPELINE), root.join(PIPELINE)).unwrap();
        copy_tree(&repo().join(FIXTURE), &root.join(FIXTURE));
        Checkout { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn sim(&self) -> PathBuf {
        self.dir.path().join("sim")
    }

    /// The simulated bucket prefix `s3://models/weather-keras/`: filled by
    /// the test, `--sim` does not seed it from the fixture.
    fn bucket(&self) -> PathBuf {
        let dir = self.sim().join("s3/models/weather-keras");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Change the checkout's pipeline.
    fn edit(&self, f: impl FnOnce(&mut serde_yaml::Value)) {
        let path = self.root().join(PIPELINE);
        let mut doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        f(&mut doc);
        std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    }

    /// `modelship run pipelines/weather-keras.yaml --sim DIR --output json`:
    /// the exit code, the summary and stderr.
    fn run(&self) -> Run {
        let out: Output = Command::new(env!("CARGO_BIN_EXE_modelship"))
            .args(["run", PIPELINE, "--sim"])
            .arg(self.sim())
            .args(["--output", "json"])
            .current_dir(self.root())
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("MODELSHIP_SIM_VENV_CACHE", keras_venv_cache())
            .env_remove("KUBECONFIG")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("--output json is not JSON ({e}): {}\nstderr:\n{stderr}", String::from_utf8_lossy(&out.stdout))
        });
        // The run stops the model processes it started, whatever the outcome.
        let left = wait_no_processes_under(&self.sim());
        assert!(left.is_empty(), "model processes left running after the run: {left:?}");
        Run { code: out.status.code(), summary, stderr }
    }

    /// The prod sim's promotion ledger for the model, if any.
    fn prod_ledger(&self) -> Option<Value> {
        let prod = ServedSim::start(&self.sim().join("prod"), "prod");
        prod.items(&["get", "configmaps", "-n", "models-prod"])
            .into_iter()
            .find(|cm| cm["metadata"]["name"] == LEDGER)
            .map(|cm| cm_yaml(&cm, "ledger.yaml"))
    }
}

struct Run {
    code: Option<i32>,
    summary: Value,
    stderr: String,
}

impl Run {
    fn stage(&self, name: &str) -> &Value {
        self.summary["stages"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .unwrap_or_else(|| panic!("no stage {name} in {}", self.summary))
    }

    fn assert_succeeded(&self) {
        assert_eq!(self.code, Some(0), "the run failed:\n{}\nstderr:\n{}", self.summary, self.stderr);
        assert_eq!(self.summary["status"], "succeeded", "{}", self.summary);
        for stage in ["fetch", "render", "build", "deploy", "check", "promote"] {
            assert_eq!(self.stage(stage)["status"], "succeeded", "stage {stage}: {}", self.stage(stage));
        }
    }

    /// Exit 1 with `stage` failed; its error (and stderr) name every one of
    /// `needles`; promote never ran.
    fn assert_failed_at(&self, stage: &str, needles: &[&str]) {
        assert_eq!(self.code, Some(1), "exit code; summary:\n{}\nstderr:\n{}", self.summary, self.stderr);
        assert_eq!(self.summary["status"], "failed", "{}", self.summary);
        assert_eq!(self.stage(stage)["status"], "failed", "{}", self.stage(stage));
        let error = self.stage(stage)["error"].as_str().unwrap_or_default();
        for needle in needles {
            assert!(error.contains(needle), "stage {stage}'s error lacks {needle:?}:\n{error}");
            assert!(self.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", self.stderr);
        }
        assert_ne!(self.stage("promote")["status"], "succeeded", "{}", self.summary);
    }

    /// The digest built in dev, checked in dev and promoted to prod.
    fn promoted_digest(&self) -> String {
        let built = self.stage("build")["outputs"]["imageDigest"].as_str().unwrap().to_string();
        assert_eq!(self.stage("deploy")["outputs"]["deployedDigest"], built.as_str(), "{}", self.summary);
        assert_eq!(self.stage("promote")["outputs"]["digest"], built.as_str(), "{}", self.summary);
        built
    }

    /// The check report's cases as (name, passed).
    fn cases(&self) -> Vec<(String, bool)> {
        let report = &self.stage("check")["outputs"]["report"];
        report["cases"]
            .as_array()
            .unwrap_or_else(|| panic!("no check report: {report}"))
            .iter()
            .map(|c| (c["name"].as_str().unwrap_or_default().to_string(), c["passed"] == true))
            .collect()
    }
}

fn assert_promoted(checkout: &Checkout, run: &Run) {
    let digest = run.promoted_digest();
    let ledger = checkout.prod_ledger().expect("the prod ledger exists after a promotion");
    assert_eq!(ledger["current"]["prod"]["digest"], digest.as_str(), "{ledger:?}");
}

fn assert_nothing_promoted(checkout: &Checkout) {
    let promoted = checkout.prod_ledger().and_then(|l| l["current"]["prod"]["digest"].as_str().map(str::to_string));
    assert_eq!(promoted, None, "a failed run promoted an image to prod");
}

/// The pipeline's check stage's `with:`.
fn check_with(doc: &mut serde_yaml::Value) -> &mut serde_yaml::Value {
    &mut stage_mut(doc, "check")["with"]
}

fn stage_mut<'a>(doc: &'a mut serde_yaml::Value, name: &str) -> &'a mut serde_yaml::Value {
    let stages = doc["spec"]["stages"].as_sequence_mut().unwrap();
    stages.iter_mut().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no stage {name}"))
}

fn yaml(text: &str) -> serde_yaml::Value {
    serde_yaml::from_str(text).unwrap()
}

/// The README's command with the shipped file, unchanged: the sim seeds its
/// bucket from the fixture, the five cases and the latency SLO pass, and the
/// digest checked in dev is the one prod's ledger records.
#[test]
fn the_shipped_pipeline_takes_the_keras_model_to_prod() {
    let checkout = Checkout::new();
    let started = std::time::Instant::now();
    let run = checkout.run();
    eprintln!("modelship run {PIPELINE} took {:.1}s", started.elapsed().as_secs_f64());
    run.assert_succeeded();
    assert_eq!(
        run.cases(),
        [("seed request", true), ("freezing", true), ("spring day", true), ("hot day", true), ("not an integer", true)]
            .map(|(n, p)| (n.to_string(), p))
    );
    let report = &run.stage("check")["outputs"]["report"];
    let slo = report["slo"].as_array().unwrap();
    assert!(!slo.is_empty() && slo.iter().all(|s| s["passed"] == true), "{report}");
    assert_eq!(report["load"]["failed"], 0, "{report}");
    assert_promoted(&checkout, &run);
}

/// The seed's upload: boto3's `upload_file` with a multipart threshold below
/// the file's size, to moto. The object's ETag is then an MD5 of part MD5s
/// with a `-1` suffix (not the content's MD5); fetch-model downloads it from
/// moto, and the bytes that reach the image are the ones uploaded.
#[test]
fn a_multipart_upload_through_boto3_to_moto_is_fetched_and_served() {
    let moto = Moto::start();
    let printed =
        moto.boto3(UPLOAD, &[&moto.endpoint, "keras-models", "weather/", &repo().join(FIXTURE).display().to_string()]);
    let etag = printed
        .lines()
        .find_map(|l| l.strip_prefix("weather.keras "))
        .unwrap_or_else(|| panic!("no ETag printed for weather.keras:\n{printed}"))
        .trim_matches('"')
        .to_string();
    let model = std::fs::read(repo().join(FIXTURE).join("weather.keras")).unwrap();
    let (part_md5, parts) = etag.split_once('-').unwrap_or_else(|| panic!("ETag {etag} is not a multipart one"));
    assert_eq!(parts, "1", "{etag}");
    assert_ne!(part_md5, hex::encode(md5::Md5::digest(&model)), "a multipart ETag is not the content's MD5");

    let checkout = Checkout::new();
    checkout.edit(|doc| {
        stage_mut(doc, "fetch")["with"] =
            yaml(&format!("{{source: 's3://keras-models/weather/', endpoint: '{}', insecure: true}}", moto.endpoint));
    });
    let run = checkout.run();
    run.assert_succeeded();
    let manifest = run.stage("fetch")["outputs"]["manifest"].as_array().unwrap().clone();
    let fetched = manifest.iter().find(|e| e["path"] == "weather.keras").expect("weather.keras fetched");
    assert_eq!(fetched["sha256"], sha256_hex(&model).as_str(), "{manifest:?}");
    assert!(run.cases().iter().all(|(_, passed)| *passed), "{:?}", run.cases());
    assert_promoted(&checkout, &run);
}

/// `upload_file` per file of a directory, as the seed's script uploads a
/// model directory; prints `NAME ETAG` per file.
const UPLOAD: &str = r#"
import os, sys
import boto3
from boto3.s3.transfer import TransferConfig

endpoint, bucket, prefix, src = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="seed-access-key", aws_secret_access_key="seed-secret-key")
s3.create_bucket(Bucket=bucket)
# Below every file's size: each is sent as a multipart upload (one part each,
# boto3 never cuts parts smaller than 5 MiB).
config = TransferConfig(multipart_threshold=1024)
for name in sorted(os.listdir(src)):
    if not os.path.isfile(os.path.join(src, name)):
        continue
    s3.upload_file(os.path.join(src, name), bucket, prefix + name, Config=config)
    print(name, s3.head_object(Bucket=bucket, Key=prefix + name)["ETag"])
"#;

/// `framework: keras` without a class of one's own: the render stage
/// generates the wrapper for the bare `.keras` file, with its default
/// TensorFlow pins, and it answers the network's scores.
#[test]
fn the_generated_keras_wrapper_serves_a_bare_model_file() {
    let checkout = Checkout::new();
    std::fs::copy(repo().join(FIXTURE).join("weather.keras"), checkout.bucket().join("weather.keras")).unwrap();
    checkout.edit(|doc| {
        stage_mut(doc, "render")["with"] = yaml("{modelFormat: keras}");
        let with = check_with(doc);
        with["cases"] = yaml(
            r#"
            - name: mild scores
              request: { data: { ndarray: [[55]] } }
              expect: { meta.tags.model_format: keras, "data.ndarray[0][1]": { approx: 1, tolerance: 0.5 } }
            - name: cold scores
              request: { data: { ndarray: [[20]] } }
              expect: { "data.ndarray[0][0]": { approx: 1, tolerance: 0.5 } }
            - name: not a number
              request: { data: { ndarray: [["warm"]] } }
              status: 400
            "#,
        );
    });
    let run = checkout.run();
    run.assert_succeeded();
    let files: Vec<&str> =
        run.stage("render")["outputs"]["files"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(files, ["Dockerfile", "MyModel.py", "requirements.txt", "weather.keras"]);
    assert_eq!(run.cases().len(), 3);
    assert_promoted(&checkout, &run);
}

/// The fixture's class and requirements in the bucket, plus `extra` files.
fn seed_bucket(checkout: &Checkout, extra: &[(&str, &[u8])]) -> PathBuf {
    let bucket = checkout.bucket();
    for name in ["MyModel.py", "requirements.txt", "weather.keras"] {
        std::fs::copy(repo().join(FIXTURE).join(name), bucket.join(name)).unwrap();
    }
    for (name, bytes) in extra {
        std::fs::write(bucket.join(name), bytes).unwrap();
    }
    bucket
}

/// A `weather.keras` that is not a Keras file: the model process dies in
/// `load_model`, the SeldonDeployment goes Failed with its last output, and
/// the deploy stage says what Keras said.
#[test]
fn a_file_that_is_not_a_keras_model_fails_the_deploy_with_the_keras_error() {
    let checkout = Checkout::new();
    seed_bucket(&checkout, &[("weather.keras", b"temperature,state\n55,mild\n")]);
    let run = checkout.run();
    run.assert_failed_at(
        "deploy",
        &["is Failed", "the model process exited", "load_model(MODEL_FILE, compile=False)", "`.keras` zip file"],
    );
    assert_nothing_promoted(&checkout);
}

/// A class whose `__init__` raises: seldon-core-microservice exits before it
/// listens, and the deploy stage carries the traceback's last lines.
#[test]
fn a_class_that_fails_in_init_fails_the_deploy_with_its_traceback() {
    let checkout = Checkout::new();
    let class = std::fs::read_to_string(repo().join(FIXTURE).join("MyModel.py")).unwrap();
    let broken = class.replace(
        "        self.model = load_model(MODEL_FILE, compile=False)\n",
        "        raise RuntimeError(\"weather station offline: no calibration for \" + MODEL_FILE)\n",
    );
    assert_ne!(broken, class, "MyModel.py no longer loads the model where this test breaks it");
    seed_bucket(&checkout, &[("MyModel.py", broken.as_bytes())]);
    let run = checkout.run();
    run.assert_failed_at(
        "deploy",
        &["is Failed", "in __init__", "RuntimeError: weather station offline: no calibration for"],
    );
    assert_nothing_promoted(&checkout);
}

/// A request without `temperature` in `data.names`: the class refuses it
/// with HTTP 400, and the check stage's error carries seldon-core's body.
#[test]
fn a_request_without_the_temperature_feature_fails_the_check_with_the_servers_error() {
    let checkout = Checkout::new();
    checkout.edit(|doc| {
        let with = check_with(doc);
        let cases = with["cases"].as_sequence_mut().unwrap();
        cases.push(yaml(
            "{name: humidity only, request: {data: {names: [humidity], ndarray: ['55']}}, expect: {meta.tags.weather_state: mild}}",
        ));
    });
    let run = checkout.run();
    run.assert_failed_at(
        "check",
        &["case `humidity only`", "HTTP 400", "MICROSERVICE_BAD_DATA", "no `temperature` in data.names ['humidity']"],
    );
    assert_eq!(run.stage("deploy")["status"], "succeeded");
    assert_nothing_promoted(&checkout);
}

/// The committed network was saved by the pinned Keras: retraining with
/// another Keras must move the pins, the lock and the venv together.
#[test]
fn the_fixture_model_was_saved_by_the_pinned_keras() {
    let model = std::fs::read(repo().join(FIXTURE).join("weather.keras")).unwrap();
    let reqs = std::fs::read_to_string(repo().join(FIXTURE).join("requirements.txt")).unwrap();
    let lock = std::fs::read_to_string(repo().join("fixtures/requirements-lock/keras.txt")).unwrap();
    for line in reqs.lines() {
        assert!(lock.lines().any(|l| l == line), "{line} is not in fixtures/requirements-lock/keras.txt");
    }
    let keras = reqs.lines().find_map(|l| l.strip_prefix("keras==")).expect("requirements.txt pins keras");
    // A `.keras` file is a zip whose metadata.json Keras stores uncompressed.
    assert!(model.starts_with(b"PK"), "weather.keras is not a Keras 3 `.keras` zip");
    let needle = format!("\"keras_version\": \"{keras}\"");
    assert!(String::from_utf8_lossy(&model).contains(&needle), "weather.keras was not saved by keras {keras}");
}
