//! `modelship serve --dispatch tekton` against served sims (real
//! processes): a signed GitHub push creates exactly one `tekton.dev/v1`
//! PipelineRun per selected pipeline, as the service account with the
//! shipped `.tekton/rbac/serve.yaml` Role; a redelivery (to the same
//! server: 409; to a restarted one, which forgot the id: found by label)
//! creates none; each PipelineRun validates against the Tekton v1 schema;
//! and the `modelship-run` step it leads to, resolved from it as Tekton
//! does and run in a real checkout of the pushed commit, completes the
//! pipeline on the sims, with the commit in the run record and in the
//! Build's `spec.revision`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git2::{Oid, Repository};
use serde_json::Value;
use support::cli::modelship;
use support::kubectl::{self, Kubectl};
use support::sim::ServedSim;
use support::triggers::{GITHUB_REMOTE, github_push, github_signature, model_repo};
use support::{BIN, free_port, repo, text};

const SECRET: &str = "tekton-dispatch-webhook-secret";
const CI: &str = "ci";

fn pipeline(name: &str, full: bool) -> String {
    let stages = if full {
        "    - { name: build, uses: openshift-build, with: { environment: dev } }
    - { name: deploy, uses: seldon-deploy, with: { environment: dev, useRoute: true } }
    - name: check
      uses: prediction-check
      with:
        environment: dev
        cases:
          - name: hot day
            request: { data: { names: [temperature], ndarray: [\"95\"] } }
            expect: { meta.tags.weather_state: hot }
    - { name: promote, uses: promote, with: { from: dev, to: prod } }
"
    } else {
        ""
    };
    format!(
        "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{ name: {name} }}
spec:
  model:
    name: weather
    source: file://../models/weather
  params:
    commit: {{ description: the pushed commit }}
  environments:
    dev: {{ context: dev, namespace: models-dev }}
    prod: {{ context: prod, namespace: models-prod }}
  stages:
    - {{ name: fetch, uses: fetch-model }}
    - {{ name: render, uses: render, with: {{ modelClass: MyModel }} }}
{stages}  triggers:
    push: {{ branches: [main], paths: [\"models/weather/**\"] }}
"
    )
}

/// The model repository: two pipelines watching `models/weather/` (the
/// whole path, and one that only renders), the model in the repository,
/// then a pushed commit under `models/weather/`.
struct ModelRepo {
    dir: tempfile::TempDir,
    base: Oid,
    pushed: Oid,
}

impl ModelRepo {
    fn new() -> ModelRepo {
        let dir = tempfile::tempdir().unwrap();
        let git =
            Repository::init_opts(dir.path().join("repo"), git2::RepositoryInitOptions::new().initial_head("main"))
                .unwrap();
        git.remote("origin", GITHUB_REMOTE).unwrap();
        let files = vec![
            ("pipelines/weather.yaml".to_string(), pipeline("weather", true)),
            ("pipelines/weather-render.yaml".to_string(), pipeline("weather-render", false)),
        ];
        let (base, pushed) = model_repo(&git, files, "models/weather");
        ModelRepo { dir, base, pushed }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
}

/// Add context `context` to `into`: `sim`'s cluster, a token of
/// ServiceAccount `ns/sa`, and `ns` as the context's namespace.
fn add_context(sim: &ServedSim, context: &str, ns: &str, sa: &str, into: &Path) {
    let token = kubectl::at(&sim.kubeconfig).ok(&["create", "token", sa, "-n", ns, "--duration=2h"]).trim().to_string();
    let config = |args: &[&str]| {
        let out =
            Command::new(kubectl::path()).arg("--kubeconfig").arg(into).arg("config").args(args).output().unwrap();
        assert!(out.status.success(), "kubectl config {args:?}: {}", text(&out.stderr));
    };
    let ca = sim.data.join("pki/ca.crt");
    config(&[
        "set-cluster",
        context,
        &format!("--server={}", sim.url),
        &format!("--certificate-authority={}", ca.display()),
        "--embed-certs",
    ]);
    config(&["set-credentials", &format!("{sa}@{context}"), &format!("--token={token}")]);
    config(&[
        "set-context",
        context,
        &format!("--cluster={context}"),
        &format!("--user={sa}@{context}"),
        &format!("--namespace={ns}"),
    ]);
    config(&["use-context", context]);
}

/// As an administrator would: the environments' namespaces with the
/// shipped Role for the Tasks' account, and on dev the CI namespace with
/// serve's Role (`rbac` as given).
fn set_up(dev: &ServedSim, prod: &ServedSim, serve_rbac: &str) {
    let modelship_rbac = std::fs::read_to_string(repo().join(".tekton/rbac/modelship.yaml")).unwrap();
    for (sim, ns) in [(dev, "models-dev"), (prod, "models-prod")] {
        let k = kubectl::at(&sim.kubeconfig);
        k.ok(&["create", "namespace", ns]);
        apply(&k, ns, &modelship_rbac);
    }
    let k = kubectl::at(&dev.kubeconfig);
    k.ok(&["create", "namespace", CI]);
    apply(&k, CI, serve_rbac);
}

fn apply(k: &Kubectl, ns: &str, manifest: &str) {
    let out = k
        .command(&["apply", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(manifest.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "kubectl apply -n {ns}: {}", text(&out.stderr));
}

struct Served {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Served {
    fn start(model: &ModelRepo, kubeconfig: &Path) -> Served {
        let secret = model.dir.path().join("webhook-secret");
        std::fs::write(&secret, SECRET).unwrap();
        let port = free_port();
        let log = model.dir.path().join(format!("serve-{port}.log"));
        let child = modelship()
            .args(["serve", "--dispatch", "tekton", "--listen", &format!("127.0.0.1:{port}"), "--no-fetch", "--repo"])
            .arg(model.path())
            .arg("--pipelines")
            .arg(model.path().join("pipelines"))
            .arg("--secret-file")
            .arg(&secret)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--dispatch-kubeconfig-secret", "modelship-kubeconfig"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Served { child, base: format!("http://127.0.0.1:{port}"), log }
    }

    async fn get(&self, path: &str) -> reqwest::Result<String> {
        reqwest::get(format!("{}{path}", self.base)).await?.text().await
    }

    /// Bounds the wait for the listener; times nothing.
    async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.get("/healthz").await.is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serve exited {status}: {}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "serve did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn push(&self, delivery: &str, body: &[u8]) -> (u16, Value) {
        let answer = reqwest::Client::new()
            .post(format!("{}/hooks/github", self.base))
            .header("Content-Type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-GitHub-Delivery", delivery)
            .header("X-Hub-Signature-256", github_signature(SECRET, body))
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }

    /// The `n` runs of `delivery`, once none is queued or running.
    async fn finished_runs(&self, delivery: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let runs: Value = serde_json::from_str(&self.get("/runs").await.unwrap()).unwrap();
            let mine: Vec<Value> =
                runs["runs"].as_array().into_iter().flatten().filter(|r| r["delivery"] == delivery).cloned().collect();
            if mine.len() == n && mine.iter().all(|r| !matches!(r["status"].as_str(), Some("queued" | "running"))) {
                return mine;
            }
            assert!(
                Instant::now() < deadline,
                "the runs of delivery {delivery} did not finish: {runs}\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        support::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    modelship::spec::yaml::from_str_multi::<Value>(&text).unwrap().into_iter().filter(|d| !d.is_null()).collect()
}

fn pipeline_runs(dev: &ServedSim) -> Vec<Value> {
    dev.items(&["get", "pipelineruns.tekton.dev", "-n", CI])
}

/// Run the `modelship-run` step of `run` in a fresh checkout of its
/// revision, with the modelship binary on PATH; its exit status, stderr,
/// checkout and results directory.
fn run_step(run: &Value, model: &ModelRepo, task_kubeconfig: &Path, at: &Path) -> (bool, String, PathBuf, PathBuf) {
    let param = |name: &str| {
        run["spec"]["params"].as_array().unwrap().iter().find(|p| p["name"] == name).map(|p| p["value"].clone())
    };
    // The `clone` pipeline task, as git-clone does it: the URL's repository
    // (here the local one the push is for) at REVISION.
    let source = at.join("source");
    let git = Repository::clone(model.path().to_str().unwrap(), &source).unwrap();
    let revision = Oid::from_str(param("revision").unwrap().as_str().unwrap()).unwrap();
    git.set_head_detached(revision).unwrap();
    git.checkout_head(Some(git2::build::CheckoutBuilder::new().force())).unwrap();
    // The kubeconfig workspace is the Secret's volume: a file `config`.
    let kubeconfig_ws = at.join("kubeconfig");
    std::fs::create_dir_all(&kubeconfig_ws).unwrap();
    std::fs::copy(task_kubeconfig, kubeconfig_ws.join("config")).unwrap();
    let results = at.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let dirs = BTreeMap::from([("source".to_string(), source.clone()), ("kubeconfig".to_string(), kubeconfig_ws)]);
    let pipeline = docs(".tekton/pipeline.yaml").remove(0);
    let task = docs(".tekton/task.yaml").remove(0);
    let step = support::tekton::resolve(run, &pipeline, "run", &task, &dirs, &results);
    let script = at.join("script");
    std::fs::write(&script, &step.script).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin = at.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("modelship")).unwrap();
    let home = at.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new(&script)
        .args(&step.args)
        .env_clear()
        .envs(step.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        // The pod's writable home; the image's PATH.
        .env("HOME", &home)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .current_dir(&step.working_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(step.working_dir, source);
    (out.status.success(), text(&out.stderr), source, results)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_dispatched_to_tekton_creates_one_pipelinerun_per_pipeline_and_its_step_completes_the_run() {
    let model = ModelRepo::new();
    let root = model.dir.path();
    let dev = ServedSim::serve(&root.join("dev")).name("dev").command(modelship()).start();
    let prod = ServedSim::serve(&root.join("prod")).name("prod").command(modelship()).start();
    set_up(&dev, &prod, &std::fs::read_to_string(repo().join(".tekton/rbac/serve.yaml")).unwrap());
    // serve's kubeconfig: its service account, the context's namespace `ci`.
    let serve_kubeconfig = root.join("serve.kubeconfig");
    add_context(&dev, "dev", CI, "modelship-serve", &serve_kubeconfig);
    // The Tasks' kubeconfig (the Secret behind the `kubeconfig` workspace).
    let task_kubeconfig = root.join("task.kubeconfig");
    add_context(&prod, "prod", "models-prod", "modelship", &task_kubeconfig);
    add_context(&dev, "dev", "models-dev", "modelship", &task_kubeconfig);

    let delivery = "3d5b8c1e-4f7a-11ef-8a2b-9c1d0e3f5a77";
    let body = github_push("refs/heads/main", &model.base.to_string(), &model.pushed.to_string());
    let mut served = Served::start(&model, &serve_kubeconfig);
    served.ready().await;
    let (code, accepted) = served.push(delivery, &body).await;
    assert_eq!(code, 202, "{accepted}");
    assert_eq!(accepted["runs"].as_array().map(Vec::len), Some(2), "{accepted}");
    let runs = served.finished_runs(delivery, 2).await;
    for r in &runs {
        assert_eq!(r["status"], "dispatched", "{r}");
    }
    let prs = pipeline_runs(&dev);
    assert_eq!(prs.len(), 2, "{prs:#?}");
    let mut names: Vec<String> = runs.iter().map(|r| r["runId"].as_str().unwrap().to_string()).collect();
    names.sort();
    let mut created: Vec<String> = prs.iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    created.sort();
    assert_eq!(names, created, "GET /runs names the PipelineRuns");
    let metrics = served.get("/metrics").await.unwrap();
    for line in [
        r#"modelship_runs_dispatched_total{pipeline="weather"} 1"#,
        r#"modelship_runs_dispatched_total{pipeline="weather-render"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }

    // The same delivery again: the server remembers it.
    let (code, answer) = served.push(delivery, &body).await;
    assert_eq!(code, 409, "{answer}");
    // A restarted server does not; the PipelineRuns' labels do.
    drop(served);
    let mut served = Served::start(&model, &serve_kubeconfig);
    served.ready().await;
    let (code, answer) = served.push(delivery, &body).await;
    assert_eq!(code, 202, "{answer}");
    let again = served.finished_runs(delivery, 2).await;
    let mut again_names: Vec<String> = again.iter().map(|r| r["runId"].as_str().unwrap().to_string()).collect();
    again_names.sort();
    assert_eq!(again_names, created, "a redelivery names the PipelineRuns made before");
    assert_eq!(pipeline_runs(&dev).len(), 2, "a redelivery created a PipelineRun");
    drop(served);

    let bundle = support::schema::tekton();
    let pushed = model.pushed.to_string();
    for pr in &prs {
        let errors = bundle.check("v1.PipelineRun", pr);
        assert!(errors.is_empty(), "{} is invalid:\n{}", pr["metadata"]["name"], errors.join("\n"));
        let labels = &pr["metadata"]["labels"];
        assert_eq!(labels["modelship.io/commit"], pushed.as_str());
        assert_eq!(labels["modelship.io/delivery"], delivery);
        assert_eq!(labels["modelship.io/model"], "weather");
        assert_eq!(pr["spec"]["pipelineRef"]["name"], "modelship");
        assert_eq!(pr["spec"]["taskRunTemplate"]["serviceAccountName"], "modelship");
        assert_eq!(pr["spec"]["timeouts"]["pipeline"], "1h0m0s", "Tekton's default, filled by the sim's webhook");
    }

    // Each PipelineRun's step, run as Tekton would run it.
    let mut completed = 0;
    for (i, pr) in prs.iter().enumerate() {
        let pipeline_name = pr["metadata"]["labels"]["modelship.io/pipeline"].as_str().unwrap().to_string();
        let at = root.join(format!("taskrun-{i}"));
        let (ok, stderr, source, results) = run_step(pr, &model, &task_kubeconfig, &at);
        assert!(ok, "the step of {} failed:\n{stderr}", pr["metadata"]["name"]);
        let result =
            |name: &str| std::fs::read_to_string(results.join(name)).unwrap_or_else(|e| panic!("result {name}: {e}"));
        assert_eq!(result("status"), "succeeded");
        let run_id = result("run-id");
        let out = modelship()
            .args(["status", &run_id, "-f"])
            .arg(source.join(format!("pipelines/{pipeline_name}.yaml")))
            .arg("--kubeconfig")
            .arg(&task_kubeconfig)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "status {run_id}: {}", text(&out.stderr));
        let record: Value = serde_json::from_slice(&out.stdout).unwrap();
        let record = record.as_array().map(|a| a[0].clone()).unwrap_or(record);
        assert_eq!(record["status"], "succeeded", "{record}");
        assert_eq!(record["labels"]["commit"], pushed.as_str(), "{record}");
        assert_eq!(record["labels"]["delivery"], delivery, "{record}");
        assert_eq!(
            record["labels"]["taskrun"],
            format!("{}-run", pr["metadata"]["name"].as_str().unwrap()),
            "{record}"
        );
        if pipeline_name == "weather" {
            assert!(!result("IMAGE_DIGEST").is_empty());
            let builds = dev.items(&["get", "builds", "-n", "models-dev"]);
            assert!(
                builds.iter().any(|b| b["spec"]["revision"]["git"]["commit"] == pushed.as_str()),
                "no Build with revision {pushed}: {builds:#?}"
            );
        }
        completed += 1;
    }
    eprintln!("PipelineRuns created: {}, validated: {}, run to completion: {completed}", prs.len(), prs.len());
    assert_eq!(completed, 2);
}

/// Every verb of serve's Role is needed: without it the delivery's run
/// fails with one error naming the verb, the resource and the namespace,
/// and nothing is created.
#[tokio::test(flavor = "multi_thread")]
async fn every_verb_of_the_serve_role_is_needed_and_a_refusal_names_it() {
    let model = ModelRepo::new();
    let root = model.dir.path();
    let role = std::fs::read_to_string(repo().join(".tekton/rbac/serve.yaml")).unwrap();
    let full = "    verbs: [list, create]\n";
    assert!(role.contains(full), "the serve Role's verbs changed: {role}");
    for (i, (kept, refused)) in [("create", "list"), ("list", "create")].into_iter().enumerate() {
        let dev = ServedSim::serve(&root.join(format!("dev-{i}"))).name("dev").command(modelship()).start();
        let k = kubectl::at(&dev.kubeconfig);
        k.ok(&["create", "namespace", CI]);
        apply(&k, CI, &role.replace(full, &format!("    verbs: [{kept}]\n")));
        let kubeconfig = root.join(format!("serve-{i}.kubeconfig"));
        add_context(&dev, "dev", CI, "modelship-serve", &kubeconfig);
        let mut served = Served::start(&model, &kubeconfig);
        served.ready().await;
        let delivery = format!("0b9e1d52-8c3f-4a6e-b7d1-00000000000{i}");
        let body = github_push("refs/heads/main", &model.base.to_string(), &model.pushed.to_string());
        let (code, answer) = served.push(&delivery, &body).await;
        assert_eq!(code, 202, "{answer}");
        for run in served.finished_runs(&delivery, 2).await {
            assert_eq!(run["status"], "failed", "{run}");
            let error = run["error"].as_str().unwrap_or_default();
            assert!(error.starts_with(&format!("{refused} pipelineruns.tekton.dev in namespace {CI}: ")), "{error}");
            assert!(error.contains("system:serviceaccount:ci:modelship-serve"), "{error}");
            assert!(error.contains(".tekton/rbac/serve.yaml"), "{error}");
        }
        assert!(pipeline_runs(&dev).is_empty());
    }
}
