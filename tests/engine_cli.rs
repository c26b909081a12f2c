//! Black-box tests of `modelship run` and `modelship status`: the real
//! binary in a temp dir, checking exit codes, stdout and stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SECRET: &str = "planted-s3cr3t-Zq9xW";

/// A pipeline in the shape of DESIGN.md; the prediction check's request
/// reads a credential-looking environment variable.
const PIPELINE: &str = r#"apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata:
  name: weather
spec:
  model:
    name: weather
    source: file://model
  params:
    tag:
      default: v1
  environments:
    dev:
      namespace: models-dev
    prod:
      namespace: models-prod
  stages:
    - name: fetch
      uses: fetch-model
    - name: check
      uses: prediction-check
      with:
        environment: dev
        endpoint: http://127.0.0.1:1
        readinessTimeout: 1s
        cases:
          - request: { data: { names: [token], ndarray: ["{{env.MODELSHIP_TEST_API_TOKEN}}", "{{params.tag}}"] } }
            expect: { meta.tags.weather_state: mild }
"#;

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        let cli = Cli { dir: tempfile::tempdir().unwrap() };
        std::fs::write(cli.path("weather.yaml"), PIPELINE).unwrap();
        cli
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_modelship"))
            .args(args)
            .current_dir(self.dir.path())
            // Keep generated workspaces inside the test dir, and logs plain.
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("MODELSHIP_TEST_API_TOKEN", SECRET)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env_remove("MODELSHIP_LOG")
            .env_remove("MODELSHIP_RESULTS_DIR")
            .output()
            .expect("run modelship")
    }

    fn nothing_written(&self) -> bool {
        !self.path("state").exists() && !self.path("cache").exists() && !self.path("results").exists()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(o), stderr(o));
}

#[test]
fn a_set_without_equals_is_bad_input() {
    let cli = Cli::new();
    let o = cli.run(&["run", "weather.yaml", "--state-dir", "state", "--set", "tag"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--set tag: expected KEY=VALUE"), "{}", stderr(&o));
    assert!(cli.nothing_written());
}

#[test]
fn an_undeclared_set_key_is_bad_input() {
    let cli = Cli::new();
    let o = cli.run(&["run", "weather.yaml", "--state-dir", "state", "--set", "colour=red"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("declares no parameter `colour`"), "{}", stderr(&o));
    assert!(cli.nothing_written());
}

#[test]
fn an_unknown_until_stage_is_bad_input_with_a_suggestion() {
    let cli = Cli::new();
    let o = cli.run(&["run", "weather.yaml", "--state-dir", "state", "--until", "fetc"]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("--until fetc: no stage `fetc` in ") && err.contains("; did you mean `fetch`?"), "{err}");
    assert!(cli.nothing_written());
}

#[test]
fn a_missing_file_or_a_directory_is_bad_input_naming_it() {
    let cli = Cli::new();
    let o = cli.run(&["run", "nope.yaml", "--state-dir", "state"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("nope.yaml"), "{}", stderr(&o));
    std::fs::create_dir(cli.path("adir")).unwrap();
    let o = cli.run(&["run", "adir", "--state-dir", "state"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("adir"), "{}", stderr(&o));
    assert!(cli.nothing_written());
}

#[test]
fn a_bad_run_id_is_bad_input() {
    let cli = Cli::new();
    let o = cli.run(&["run", "weather.yaml", "--state-dir", "state", "--run-id", "Not_DNS"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("run id `Not_DNS` is not valid"), "{}", stderr(&o));
    assert!(cli.nothing_written());
}

/// Guards the promise that a plan can be pasted into a ticket: values from
/// the environment (where credentials live) are never resolved into it.
#[test]
fn dry_run_prints_the_plan_hides_env_secrets_and_touches_nothing() {
    let cli = Cli::new();
    for (format, needle) in [("text", "Dry run: nothing was written."), ("json", "\"stages\"")] {
        let o = cli.run(&[
            "run",
            "weather.yaml",
            "--dry-run",
            "--state-dir",
            "state",
            "--results-dir",
            "results",
            "--set",
            "tag=v7",
            "--output",
            format,
            "--log-format",
            "json",
        ]);
        assert_exit(&o, 0);
        let (out, err) = (stdout(&o), stderr(&o));
        assert!(out.contains(needle), "{out}");
        assert!(out.contains("v7"), "params are resolved: {out}");
        assert!(out.contains("{{env.MODELSHIP_TEST_API_TOKEN}}"), "{out}");
        assert!(!out.contains(SECRET) && !err.contains(SECRET), "secret leaked:\n{out}\n{err}");
        if format == "json" {
            let plan: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
            let names: Vec<&str> =
                plan["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
            assert_eq!(names, ["fetch", "check"]);
            assert_eq!(plan["state"], format!("dir {}", Path::new("state").display()));
        }
    }
    assert!(cli.nothing_written());
}

/// A run whose first stage fails (the model directory does not exist): a
/// non-zero exit, one JSON object on stdout, JSON log lines on stderr, the
/// record in the state dir, Tekton results, and `status` showing it.
#[test]
fn a_failed_run_is_recorded_reported_and_shown_by_status() {
    let cli = Cli::new();
    let o = cli.run(&[
        "run",
        "weather.yaml",
        "--state-dir",
        "state",
        "--run-id",
        "fail-1",
        "--label",
        "commit=abc123",
        "--results-dir",
        "results",
        "--output",
        "json",
        "--log-format",
        "json",
    ]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let summary: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON object");
    assert_eq!(summary["runId"], "fail-1");
    assert_eq!(summary["status"], "failed");
    assert_eq!(summary["stages"][0]["name"], "fetch");
    assert_eq!(summary["stages"][0]["status"], "failed");
    assert_eq!(summary["stages"][0]["attempts"], 1);
    assert_eq!(summary["stages"][1]["status"], "pending");
    let err = stderr(&o);
    let log_lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("error:")).collect();
    assert!(!log_lines.is_empty());
    for line in &log_lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        // Lifecycle events carry the run; a dependency's own task may not.
        if v.get("event").is_some() {
            assert_eq!(v["span"]["run_id"], "fail-1", "{line}");
        }
    }
    assert!(err.contains(r#""event":"failed""#), "{err}");
    assert!(!out.contains(SECRET) && !err.contains(SECRET));

    let record = std::fs::read_to_string(cli.path("state/runs/weather/fail-1.yaml")).unwrap();
    assert!(record.contains("commit: abc123"), "{record}");
    assert!(!record.contains(SECRET));
    assert_eq!(std::fs::read_to_string(cli.path("results/status")).unwrap(), "failed");
    assert_eq!(std::fs::read_to_string(cli.path("results/run-id")).unwrap(), "fail-1");

    let o = cli.run(&["status", "--state-dir", "state"]);
    assert_exit(&o, 0);
    let row: Vec<String> = stdout(&o).lines().nth(1).unwrap().split_whitespace().map(String::from).collect();
    assert_eq!(row[..3], ["fail-1", "weather", "failed"], "{}", stdout(&o));
    let o = cli.run(&["status", "fail-1", "--state-dir", "state"]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("fetch (fetch-model): failed, 1 attempt"), "{}", stdout(&o));

    // The same id again is refused; --resume continues it.
    let o = cli.run(&["run", "weather.yaml", "--state-dir", "state", "--run-id", "fail-1"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--resume fail-1"), "{}", stderr(&o));
    let o = cli.run(&["run", "weather.yaml", "--state-dir", "state", "--resume", "fail-1", "--output", "json"]);
    assert_ne!(o.status.code(), Some(0));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(summary["runId"], "fail-1");
}

#[test]
fn status_needs_to_know_where_runs_are_kept() {
    let cli = Cli::new();
    let o = cli.run(&["status"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--state-dir"), "{}", stderr(&o));
    // A mistyped directory is not an empty store.
    let o = cli.run(&["status", "--state-dir", "state"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("--state-dir state: no such directory"), "{}", stderr(&o));
    std::fs::create_dir(cli.path("state")).unwrap();
    let o = cli.run(&["status", "--state-dir", "state"]);
    assert_exit(&o, 0);
    assert!(stdout(&o).starts_with("no runs in dir state"), "{}", stdout(&o));
    let o = cli.run(&["status", "nope", "--state-dir", "state"]);
    assert_exit(&o, 2);
}

#[test]
fn run_help_shows_an_example() {
    let cli = Cli::new();
    let o = cli.run(&["run", "--help"]);
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("modelship run pipelines/weather.yaml --sim /tmp/sim"));
}
