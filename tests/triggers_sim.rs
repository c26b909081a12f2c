//! Pushes that really run: `modelship serve --sim DIR` and `modelship
//! trigger --sim DIR` take a signed GitHub push and a GitLab push for a real
//! Git repository through selection to the production runner, which runs
//! the weather pipeline on simulated clusters as `run --sim` does; the run
//! records carry the commit and the delivery id, `status` reads them back and
//! `/metrics` counts the runs, their promotion and the gate that stopped
//! the run of a second pipeline whose check the model fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};
use serde_json::Value;
use support::cli::modelship;
use support::triggers::{GITHUB_REMOTE, GITLAB_REMOTE, commit, github_push, github_signature, gitlab_push, model_repo};
use support::{free_port, repo, text};

const SECRET: &str = "triggers-sim-webhook-secret";

/// A model repository: the shipped weather pipeline (small load phase) and
/// the model fixture the sim's S3 is seeded from, then a commit under
/// `models/weather/`, which the pipeline's `triggers.push.paths` watches.
struct ModelRepo {
    dir: tempfile::TempDir,
    base: Oid,
    pushed: Oid,
}

impl ModelRepo {
    /// `strict`: a second pipeline of the same model with a check the model
    /// fails, so its run stops at the checks gate.
    fn new(strict: bool) -> ModelRepo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        let git = Repository::init_opts(&path, git2::RepositoryInitOptions::new().initial_head("main")).unwrap();
        git.remote("origin", GITHUB_REMOTE).unwrap();
        git.remote("gitlab", GITLAB_REMOTE).unwrap();
        let pipeline = std::fs::read_to_string(repo().join("pipelines/weather.yaml"))
            .unwrap()
            .replace("load: { requests: 200, concurrency: 8 }", "load: { requests: 20, concurrency: 2 }");
        let strict_pipeline = pipeline
            .replace("metadata:\n  name: weather\n", "metadata:\n  name: weather-strict\n")
            .replace("expect: { meta.tags.weather_state: hot }", "expect: { meta.tags.weather_state: tepid }");
        assert_ne!(strict_pipeline, pipeline);
        let mut files = vec![("pipelines/weather.yaml".to_string(), pipeline)];
        if strict {
            files.push(("pipelines/weather-strict.yaml".to_string(), strict_pipeline));
        }
        let (base, pushed) = model_repo(&git, files, "fixtures/weather-model");
        ModelRepo { dir, base, pushed }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn pipeline(&self) -> PathBuf {
        self.path().join("pipelines/weather.yaml")
    }

    /// Another commit on main under models/weather/; it and its parent.
    fn push_again(&self, content: &str) -> (Oid, Oid) {
        let git = Repository::open(self.path()).unwrap();
        let head = git.head().unwrap().peel_to_commit().unwrap();
        let next = commit(
            &git,
            Some(&head),
            &[("models/weather/notes.md", content)],
            "weather again",
            Some("refs/heads/main"),
        );
        git.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).unwrap();
        (head.id(), next)
    }
}

/// `modelship status -f FILE --sim DIR --output json`: the records, newest first.
fn records(pipeline: &Path, sim: &Path) -> Vec<Value> {
    let out = modelship()
        .args(["status", "-f"])
        .arg(pipeline)
        .arg("--sim")
        .arg(sim)
        .args(["--output", "json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().cloned().unwrap()
}

fn record<'a>(records: &'a [Value], run_id: &str) -> &'a Value {
    records.iter().find(|r| r["runId"] == run_id).unwrap_or_else(|| panic!("no record of run {run_id}: {records:#?}"))
}

struct Served {
    child: Child,
    base: String,
}

impl Served {
    fn start(model: &ModelRepo, sim: &Path) -> Served {
        let secret = model.dir.path().join("webhook-secret");
        std::fs::write(&secret, SECRET).unwrap();
        let port = free_port();
        let child = modelship()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--no-fetch", "--repo"])
            .arg(model.path())
            .arg("--pipelines")
            .arg(model.path().join("pipelines"))
            .arg("--secret-file")
            .arg(&secret)
            .arg("--sim")
            .arg(sim)
            .env("XDG_CACHE_HOME", model.dir.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Served { child, base: format!("http://127.0.0.1:{port}") }
    }

    async fn get(&self, path: &str) -> reqwest::Result<String> {
        reqwest::get(format!("{}{path}", self.base)).await?.text().await
    }

    /// Bounds the wait for the listener; times nothing.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/healthz").await.is_err() {
            assert!(Instant::now() < deadline, "serve did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `n` runs the server reports for `delivery`, once all have finished.
    async fn finished_runs(&self, delivery: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let runs: Value = serde_json::from_str(&self.get("/runs").await.unwrap()).unwrap();
            let mine: Vec<Value> =
                runs["runs"].as_array().into_iter().flatten().filter(|r| r["delivery"] == delivery).cloned().collect();
            if mine.len() == n && mine.iter().all(|r| !matches!(r["status"].as_str(), Some("queued" | "running"))) {
                return mine;
            }
            assert!(Instant::now() < deadline, "the runs of delivery {delivery} did not finish: {runs}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        support::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_github_push_to_serve_runs_the_pipeline_on_the_sim() {
    let model = ModelRepo::new(true);
    let sim = model.dir.path().join("sim");
    let served = Served::start(&model, &sim);
    served.ready().await;
    let delivery = "6f1d3a10-8f2b-11ef-9f3e-2b0c6d1c7a55";
    let body = github_push("refs/heads/main", &model.base.to_string(), &model.pushed.to_string());
    let answer = reqwest::Client::new()
        .post(format!("{}/hooks/github", served.base))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", delivery)
        .header("X-Hub-Signature-256", github_signature(SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 202);
    let accepted: Value = answer.json().await.unwrap();
    assert_eq!(accepted["runs"].as_array().map(Vec::len), Some(2), "{accepted}");

    let runs = served.finished_runs(delivery, 2).await;
    let of = |pipeline: &str| runs.iter().find(|r| r["pipeline"] == pipeline).unwrap_or_else(|| panic!("{runs:?}"));
    let run = of("weather");
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["promotions"][0]["environment"], "prod", "{run}");
    assert_eq!(run["promotions"][0]["result"], "promoted", "{run}");
    let strict = of("weather-strict");
    assert_eq!(strict["status"], "failed", "{strict}");
    assert_eq!(strict["gateFailures"], serde_json::json!(["checks"]), "{strict}");
    assert!(strict.get("promotions").is_none(), "a run stopped at its checks promotes nothing: {strict}");
    let run_id = run["runId"].as_str().unwrap_or_else(|| panic!("{run}")).to_string();
    let metrics = served.get("/metrics").await.unwrap();
    eprintln!("/metrics after the runs:\n{metrics}");
    for line in [
        r#"modelship_runs_succeeded_total{pipeline="weather"} 1"#,
        r#"modelship_runs_failed_total{pipeline="weather-strict"} 1"#,
        r#"modelship_promotions_total{model="weather",environment="prod",result="promoted"} 1"#,
        r#"modelship_gate_failures_total{model="weather",gate="checks"} 1"#,
        r#"modelship_push_to_promotion_seconds_count{model="weather",environment="prod"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    assert!(!metrics.contains("modelship_rollbacks_total{"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("modelship_webhook_deliveries_total{") && l.contains(r#"result="accepted""#)),
        "{metrics}"
    );
    drop(served);

    let records = records(&model.pipeline(), &sim);
    let r = record(&records, &run_id);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["labels"]["commit"], model.pushed.to_string(), "{r}");
    assert_eq!(r["labels"]["delivery"], delivery, "{r}");
    assert_eq!(r["labels"]["trigger"], "github", "{r}");
    // The payload's `sender.login` started it (for `forbidSelfApproval`).
    assert_eq!(r["startedBy"], "chmouel", "{r}");
    let strict = records.iter().find(|r| r["pipeline"] == "weather-strict").unwrap_or_else(|| panic!("{records:#?}"));
    let check = strict["stages"].as_array().unwrap().iter().find(|s| s["status"] == "failed").unwrap();
    assert_eq!(check["gate"], "checks", "{strict}");
}

#[test]
fn a_gitlab_push_through_trigger_runs_the_pipeline_on_the_sim() {
    let model = ModelRepo::new(false);
    let sim = model.dir.path().join("sim");
    let event = model.dir.path().join("push.json");
    let delivery = "a4a3c5d2-77e1-4c3b-9f0e-8f5a2d7b1c90";
    let run = |before: Oid, after: Oid| {
        std::fs::write(&event, gitlab_push("refs/heads/main", &before.to_string(), &after.to_string())).unwrap();
        let out = modelship()
            .args(["trigger", "--event-type", "Push Hook", "--delivery", delivery, "--event"])
            .arg(&event)
            .arg("--repo")
            .arg(model.path())
            .arg("--pipelines")
            .arg(model.path().join("pipelines"))
            .arg("--sim")
            .arg(&sim)
            .env("XDG_CACHE_HOME", model.dir.path().join("cache"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "trigger exited {:?}\n{}\n{stderr}", out.status.code(), text(&out.stdout));
        let line = stderr.lines().find(|l| l.starts_with("weather: run ")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(line.ends_with(" succeeded"), "{line}");
        line.split_whitespace().nth(2).unwrap().to_string()
    };
    let first = run(model.base, model.pushed);
    // The same sims, a second push: a second run, found beside the first.
    let (before, after) = model.push_again("retrained again\n");
    let second = run(before, after);
    assert_ne!(first, second);
    let records = records(&model.pipeline(), &sim);
    for (id, commit) in [(&first, model.pushed), (&second, after)] {
        let r = record(&records, id);
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["labels"]["commit"], commit.to_string(), "{r}");
        assert_eq!(r["labels"]["trigger"], "gitlab", "{r}");
        assert_eq!(r["startedBy"], "jsmith", "the payload's user_username: {r}");
        assert_eq!(r["labels"]["delivery"], delivery, "{r}");
    }
}
