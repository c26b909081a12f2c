//! Lineage, black box: the weather pipeline run twice on `--sim`, the model
//! changed in the simulated bucket between the runs. The run record keeps
//! the source URI and each object's key, size, sha256 and ETag; the image
//! in the sim's registry carries the OCI labels and the model digest (read
//! back from its config blob with skopeo); `report --compare` and `--since`
//! name the changed digests, in Markdown and in the page Chromium renders.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use md5::Digest as _;
use serde_json::Value;
use support::cli::{cm_yaml, modelship, wait_no_processes_under, weather_fixture};
use support::sim::ServedSim;

const FIRST: &str = "lineage-1";
const SECOND: &str = "lineage-2";

struct Checkout {
    dir: tempfile::TempDir,
}

impl Checkout {
    fn new() -> Checkout {
        let dir = tempfile::tempdir().unwrap();
        weather_fixture(dir.path(), |y| y);
        Checkout { dir }
    }

    fn sim(&self) -> PathBuf {
        self.dir.path().join("sim")
    }

    fn bucket(&self) -> PathBuf {
        self.sim().join("s3/models/weather")
    }

    fn modelship(&self, args: &[&str]) -> Output {
        modelship()
            .current_dir(self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .stdin(Stdio::null())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.modelship(args);
        assert!(
            out.status.success(),
            "modelship {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            support::text(&out.stdout),
            support::text(&out.stderr)
        );
        support::text(&out.stdout)
    }

    fn run(&self, id: &str) {
        let sim = self.sim();
        let summary: Value = serde_json::from_str(&self.ok(&[
            "run",
            "pipelines/weather.yaml",
            "--sim",
            sim.to_str().unwrap(),
            "--run-id",
            id,
            "--output",
            "json",
        ]))
        .unwrap();
        assert_eq!(summary["status"], "succeeded", "{summary}");
        let left = wait_no_processes_under(&sim);
        assert!(left.is_empty(), "model processes left running after the run: {left:?}");
    }

    fn report(&self, args: &[&str]) -> Output {
        let sim = self.sim();
        let mut all = vec!["report", SECOND, "-f", "pipelines/weather.yaml", "--sim", sim.to_str().unwrap()];
        all.extend_from_slice(args);
        self.modelship(&all)
    }
}

fn outputs(record: &Value, stage: &str) -> Value {
    let s = record["stages"].as_array().unwrap().iter().find(|s| s["name"] == stage);
    s.unwrap_or_else(|| panic!("no stage {stage} in {record}"))["outputs"].clone()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn two_runs_keep_their_lineage_label_their_images_and_report_what_changed() {
    let c = Checkout::new();
    c.run(FIRST);
    // A new version of the model in the bucket: one file changes.
    let readme = c.bucket().join("README.md");
    let before = std::fs::read_to_string(&readme).unwrap();
    std::fs::write(&readme, format!("{before}\nRetrained on the 2026 readings.\n")).unwrap();
    c.run(SECOND);

    let (first, second, labels, first_labels) = {
        let dev = ServedSim::start(&c.sim().join("dev"), "dev");
        let cm =
            |id: &str| dev.get_json(&["get", "configmap", "-n", "models-dev", &format!("modelship-run-weather-{id}")]);
        let second_cm = cm(SECOND);
        // The record holds no credential of the simulated S3.
        let raw = second_cm.to_string();
        for secret in [modelship::storage::embedded::SECRET_ACCESS_KEY, modelship::storage::embedded::ACCESS_KEY_ID] {
            assert!(!raw.contains(secret), "the run record holds an S3 credential");
        }
        let (first, second) = (cm_yaml(&cm(FIRST), "run.yaml"), cm_yaml(&second_cm, "run.yaml"));
        let config = |record: &Value| {
            let digest = text(&outputs(record, "build"), "imageDigest").to_string();
            dev.skopeo_config(&format!("models-dev/weather@{digest}"))["config"]["Labels"].clone()
        };
        let (labels, first_labels) = (config(&second), config(&first));
        (first, second, labels, first_labels)
    };

    // The fetch outputs in the record: the source and each object as fetched.
    let fetch = outputs(&second, "fetch");
    assert_eq!(fetch["source"], "s3://models/weather/");
    let objects = fetch["objects"].as_array().unwrap();
    let names: Vec<&str> = objects.iter().map(|o| text(o, "path")).collect();
    assert_eq!(names, files(&c.bucket()));
    for o in objects {
        let path = text(o, "path");
        let bytes = std::fs::read(c.bucket().join(path)).unwrap();
        assert_eq!(o["key"], format!("weather/{path}"), "{o}");
        assert_eq!(o["url"], format!("s3://models/weather/{path}"), "{o}");
        assert_eq!(o["size"], bytes.len() as u64, "{o}");
        assert_eq!(o["sha256"], hex::encode(sha2::Sha256::digest(&bytes)), "{o}");
        // s3s-fs lists no ETags; the GET's answer (the MD5 of a single-part
        // object) is what the record keeps.
        assert_eq!(o["etag"], hex::encode(md5::Md5::digest(&bytes)), "{o}");
        // The simulated bucket is not versioned: S3 names no version.
        assert!(o.get("versionId").is_none(), "{o}");
    }

    // The digest chain follows the new model.
    let (old_fetch, render, build) = (outputs(&first, "fetch"), outputs(&second, "render"), outputs(&second, "build"));
    let model = text(&fetch, "contentDigest");
    assert_ne!(model, text(&old_fetch, "contentDigest"));
    assert_eq!(render["modelDigest"], model);
    assert_ne!(render["contextDigest"], outputs(&first, "render")["contextDigest"]);
    assert_eq!((text(&build, "buildName"), text(&build, "namespace")), ("weather-2", "models-dev"));

    // The image labels, from the config blob in the sim's registry.
    assert_eq!(labels["io.modelship.model.digest"], model, "{labels}");
    assert_eq!(first_labels["io.modelship.model.digest"], old_fetch["contentDigest"], "{first_labels}");
    assert_eq!(labels["org.opencontainers.image.source"], "s3://models/weather/", "{labels}");
    assert_eq!(labels["io.openshift.build.name"], "weather-2", "{labels}");
    assert_eq!(labels["io.openshift.build.namespace"], "models-dev", "{labels}");
    let created: jiff::Timestamp = text(&labels, "org.opencontainers.image.created").parse().unwrap();
    let started: jiff::Timestamp = text(&second, "created").parse().unwrap();
    let ended: jiff::Timestamp = text(&second, "updated").parse().unwrap();
    // Second precision: the label may round down below the run's start.
    assert!(created.as_second() >= started.as_second() && created <= ended, "{created} outside {started}..{ended}");
    assert!(labels.get("org.opencontainers.image.revision").is_none(), "no commit, no revision: {labels}");

    // `report --compare`: the lineage and what changed.
    let out = c.report(&["--compare", FIRST]);
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let md = support::text(&out.stdout);
    let old_model = text(&old_fetch, "contentDigest");
    assert!(md.contains("| source | `s3://models/weather/` |"), "{md}");
    assert!(md.contains(&format!("| model digest | `{model}` |")), "{md}");
    assert!(md.contains("| Build | `weather-2` in namespace `models-dev` |"), "{md}");
    assert!(md.contains("| environments | dev (verified "), "{md}");
    assert!(md.contains(", prod (promoted "), "{md}");
    assert!(md.contains(&format!("## Compared with run {FIRST}\n")), "{md}");
    assert!(md.contains(&format!("| model digest | `{model}` | `{old_model}` | **changed** |")), "{md}");
    let image = text(&build, "imageDigest");
    let old_build = outputs(&first, "build");
    let old_image = text(&old_build, "imageDigest");
    assert!(md.contains(&format!("| image digest | `{image}` | `{old_image}` | **changed** |")), "{md}");
    assert!(md.contains("| check | seed request | pass | pass |  |"), "{md}");
    assert!(md.contains("| check | p95 |"), "{md}");

    // The same as a page, as Chromium renders it.
    let page = c.dir.path().join("report.html");
    let out = c.report(&["--compare", FIRST, "--format", "html", "--out", page.to_str().unwrap()]);
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let dom = support::chromium::rendered_dom(&page);
    let cell =
        |marker: &str| support::chromium::text_of(&dom, marker).unwrap_or_else(|| panic!("no {marker} in\n{dom}"));
    assert_eq!(cell("class=\"lineage-model-digest\""), model);
    assert_eq!(cell("class=\"lineage-build\""), "weather-2");
    assert_eq!(cell("data-what=\"model digest\""), format!("model digest{model}{old_model}changed"));
    assert!(dom.contains("<tr data-what=\"model digest\" class=\"changed\">"), "{dom}");

    // `--since prod`: the run promoted there before this one.
    let out = c.report(&["--since", "prod"]);
    assert!(out.status.success(), "{}", support::text(&out.stderr));
    let md = support::text(&out.stdout);
    assert!(md.contains(&format!("## Compared with run {FIRST}, last promoted to prod\n")), "{md}");
    assert!(md.contains(&format!("| model digest | `{model}` | `{old_model}` | **changed** |")), "{md}");

    // Asking for what is not there is the user's input, exit 2.
    let out = c.report(&["--since", "qa"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::text(&out.stderr));
    assert!(support::text(&out.stderr).contains("the pipeline has no environment `qa`"));
    let out = c.report(&["--compare", "no-such-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::text(&out.stderr));
}
