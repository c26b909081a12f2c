//! Engine behaviour with the cfg(test) `test-step` kind and the directory
//! state backend.

use std::path::PathBuf;
use std::time::Duration;

use super::testkind::call_count;
use super::*;
use crate::catalog::Catalog;
use crate::spec::Pipeline;
use crate::state::StateStore;
use crate::state::dir::DirStore;

fn pipeline(stages: &str) -> Pipeline {
    let text = format!(
        "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{name: demo}}
spec:
  model: {{name: demo, source: 'file://model'}}
  params:
    tag: {{default: v1}}
  environments:
    dev: {{namespace: models-dev}}
  stages:
{stages}"
    );
    crate::spec::yaml::from_str(&text).unwrap()
}

struct Harness {
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        Harness { dir: tempfile::tempdir().unwrap() }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn workspace(&self) -> PathBuf {
        self.dir.path().join("ws")
    }

    fn opts(&self, run_id: &str) -> RunOptions {
        RunOptions {
            pipeline: self.dir.path().join("pipeline.yaml"),
            run_id: Some(run_id.to_string()),
            state_dir: Some(self.state_dir()),
            workspace: Some(self.workspace()),
            ..Default::default()
        }
    }

    fn resume(&self, run_id: &str) -> RunOptions {
        RunOptions { run_id: None, resume: Some(run_id.to_string()), ..self.opts(run_id) }
    }

    async fn run(&self, p: &Pipeline, opts: RunOptions) -> Result<RunSummary, EngineError> {
        let prepared =
            prepare::from_pipeline(p.clone(), opts.pipeline.clone(), "sha256:test".into(), Catalog::embedded(), &opts)
                .unwrap();
        let tuning = exec::Tuning {
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_secs(1),
            cancel_grace: Duration::from_secs(2),
        };
        exec::run_tuned(prepared, opts, tuning).await
    }

    async fn record(&self, run_id: &str) -> crate::state::RunRecord {
        let key = crate::state::RunKey { pipeline: "demo".into(), run_id: run_id.into() };
        DirStore::new(self.state_dir()).get_run(&key).await.unwrap().expect("run record")
    }

    fn nothing_written(&self) -> bool {
        !self.state_dir().join("runs").exists()
    }
}

fn stage<'a>(s: &'a RunSummary, name: &str) -> &'a crate::state::StageRecord {
    s.stages.iter().find(|r| r.name == name).unwrap()
}

fn summary_of(e: EngineError) -> RunSummary {
    match e {
        EngineError::StageFailed { summary, .. } | EngineError::Cancelled { summary, .. } => *summary,
        other => panic!("no summary in {other}"),
    }
}

#[tokio::test]
async fn stages_run_in_order_and_outputs_flow_forward() {
    let h = Harness::new();
    let p = pipeline(
        "    - {name: a, uses: test-step, with: {value: '{{params.tag}}'}}
    - {name: skipped, uses: test-step, if: '{{#if false}}yes{{/if}}'}
    - {name: b, uses: test-step, with: {value: '{{stages.a.outputs.value}}-{{run.id}}'}}
",
    );
    let mut opts = h.opts("order-1");
    opts.sets = vec![("tag".into(), "v2".into())];
    let s = h.run(&p, opts).await.unwrap();
    assert_eq!(s.status, Status::Succeeded);
    let names: Vec<&str> = s.stages.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "skipped", "b"]);
    assert_eq!(stage(&s, "b").outputs["value"], "v2-order-1");
    assert_eq!(stage(&s, "skipped").status, Status::Skipped);
    assert_eq!(call_count("order-1", "skipped"), 0);
    let rec = h.record("order-1").await;
    assert_eq!(rec.status, Status::Succeeded);
    assert_eq!(rec.params["tag"], "v2");
    assert_eq!(rec.stages[2].attempts, 1);
    assert!(rec.stages[2].inputs_digest.as_deref().unwrap().starts_with("sha256:"));
    // An explicit --workspace is kept.
    assert_eq!(s.workspace.as_deref(), Some(h.workspace().as_path()));
}

#[tokio::test]
async fn a_dangling_reference_fails_the_stage_naming_stage_and_key() {
    let h = Harness::new();
    let p = pipeline(
        "    - {name: a, uses: test-step, with: {value: x}}
    - {name: b, uses: test-step, with: {value: '{{stages.nope.outputs.value}}'}}
",
    );
    let err = h.run(&p, h.opts("strict-1")).await.unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    let reason = std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default();
    assert!(err.to_string().contains("stage `b`"), "{err}");
    assert!(reason.contains("stage `b`, with.value"), "{reason}");
    let rec = h.record("strict-1").await;
    assert_eq!(rec.status, Status::Failed);
    assert_eq!(rec.stages[0].status, Status::Succeeded);
    assert_eq!(rec.stages[1].status, Status::Failed);
    assert!(rec.stages[1].error.as_deref().unwrap().contains("with.value"));
    assert_eq!(call_count("strict-1", "b"), 0, "a stage whose with: does not render never runs");
}

#[tokio::test]
async fn retryable_errors_are_retried_and_others_are_not() {
    let h = Harness::new();
    let p = pipeline(
        "    - {name: flaky, uses: test-step, retries: 3, with: {failFirst: 2, retryable: true}}
    - {name: broken, uses: test-step, retries: 3, with: {failFirst: 1}}
",
    );
    let err = h.run(&p, h.opts("retry-1")).await.unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::Failed);
    let s = summary_of(err);
    assert_eq!(stage(&s, "flaky").status, Status::Succeeded);
    assert_eq!(stage(&s, "flaky").attempts, 3);
    assert_eq!(stage(&s, "broken").status, Status::Failed);
    assert_eq!(stage(&s, "broken").attempts, 1, "a non-retryable error is not retried");
    assert_eq!(call_count("retry-1", "broken"), 1);
    assert!(stage(&s, "broken").error.as_deref().unwrap().contains("failing call 1"));
}

#[tokio::test]
async fn retries_back_off_exponentially_with_jitter() {
    for attempt in 1..=8 {
        let full = Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(60));
        let d = backoff_delay(attempt);
        assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
    }
    assert!(backoff_delay(40) <= Duration::from_secs(60));

    let h = Harness::new();
    let p = pipeline("    - {name: flaky, uses: test-step, retries: 3, with: {failFirst: 3, retryable: true}}\n");
    let start = std::time::Instant::now();
    let s = h.run(&p, h.opts("backoff-1")).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(stage(&s, "flaky").attempts, 4);
    // Three waits on 20ms, 40ms, 80ms steps, each at least half its step.
    assert!(waited >= Duration::from_millis(70), "{waited:?}");
}

#[tokio::test]
async fn a_stage_that_outruns_its_timeout_fails_without_retry() {
    let h = Harness::new();
    let p = pipeline("    - {name: slow, uses: test-step, timeout: 200ms, retries: 2, with: {sleepMs: 600000}}\n");
    let err = h.run(&p, h.opts("timeout-1")).await.unwrap_err();
    let s = summary_of(err);
    let slow = stage(&s, "slow");
    assert_eq!((slow.status, slow.attempts), (Status::Failed, 1));
    assert!(slow.error.as_deref().unwrap().contains("timed out after 200ms"), "{:?}", slow.error);
}

#[tokio::test]
async fn cancellation_is_recorded_on_the_running_stage_and_the_run() {
    let h = Harness::new();
    let p = pipeline(
        "    - {name: a, uses: test-step}
    - {name: long, uses: test-step, with: {sleepMs: 600000}}
    - {name: after, uses: test-step}
",
    );
    let opts = h.opts("cancel-1");
    let cancel = opts.cancel.clone();
    let run = h.run(&p, opts);
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(run, canceller);
    let err = result.unwrap_err();
    assert!(matches!(&err, EngineError::Cancelled { stage, .. } if stage == "long"), "{err}");
    assert_eq!(err.exit_class(), ExitClass::Failed);
    let rec = h.record("cancel-1").await;
    assert_eq!(rec.status, Status::Cancelled);
    let statuses: Vec<Status> = rec.stages.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [Status::Succeeded, Status::Cancelled, Status::Pending]);
    assert_eq!(call_count("cancel-1", "after"), 0);
}

/// A cancelled stage gets a grace period to clean up (Tekton's SIGTERM
/// before the kill), e.g. to release the promotion lock; one that ignores
/// its token is dropped once the grace period ends.
#[tokio::test]
async fn a_cancelled_stage_may_clean_up_within_the_grace_period() {
    let h = Harness::new();
    let p = pipeline("    - {name: tidy, uses: test-step, with: {sleepMs: 600000, cleanUpOnCancel: true}}\n");
    let opts = h.opts("grace-1");
    let cancel = opts.cancel.clone();
    let canceller = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    };
    let (result, ()) = tokio::join!(h.run(&p, opts), canceller);
    assert!(matches!(result, Err(EngineError::Cancelled { .. })));
    let rec = h.record("grace-1").await;
    assert_eq!(rec.stages[0].status, Status::Cancelled);
    assert_eq!(rec.stages[0].checkpoints.get("cleanedUp"), Some(&serde_json::json!(true)));
}

#[tokio::test]
async fn resume_skips_unchanged_stages_and_reruns_the_rest() {
    let h = Harness::new();
    let p = pipeline(
        "    - {name: a, uses: test-step, with: {value: '{{params.tag}}'}}
    - {name: b, uses: test-step, with: {value: '{{stages.a.outputs.value}}', failFirst: 1}}
    - {name: c, uses: test-step, with: {value: fixed}}
",
    );
    let err = h.run(&p, h.opts("resume-1")).await.unwrap_err();
    assert_eq!(summary_of(err).status, Status::Failed);

    // Same inputs: a is reused, b runs again and sees its earlier checkpoint.
    let s = h.run(&p, h.resume("resume-1")).await.unwrap();
    assert_eq!(s.status, Status::Succeeded);
    assert_eq!(call_count("resume-1", "a"), 1);
    assert_eq!(call_count("resume-1", "b"), 2);
    assert_eq!(stage(&s, "b").outputs["previousCheckpoint"], "call 1");
    assert_eq!(stage(&s, "b").outputs["value"], "v1");

    // A changed param changes a's inputs, and through a's outputs, b's and
    // c's: every earlier stage's outputs are inputs, because stages may read
    // them without a reference in `with:` (render reads fetch's model dir).
    let mut opts = h.resume("resume-1");
    opts.sets = vec![("tag".into(), "v2".into())];
    let s = h.run(&p, opts).await.unwrap();
    assert_eq!((call_count("resume-1", "a"), call_count("resume-1", "b"), call_count("resume-1", "c")), (2, 3, 2));
    assert_eq!(stage(&s, "b").outputs["value"], "v2");
    assert_eq!(h.record("resume-1").await.params["tag"], "v2");

    // The recorded params carry over to a later resume without --set.
    h.run(&p, h.resume("resume-1")).await.unwrap();
    assert_eq!(call_count("resume-1", "a"), 2);
}

/// A resume on another machine (or after the cache was cleaned) must not
/// trust outputs that point at files that are gone.
#[tokio::test]
async fn resume_reruns_a_stage_whose_workspace_files_are_gone() {
    let h = Harness::new();
    let p = pipeline("    - {name: a, uses: test-step, with: {value: x}}\n");
    let s = h.run(&p, h.opts("files-1")).await.unwrap();
    let file = stage(&s, "a").outputs["file"].as_str().unwrap().to_string();
    h.run(&p, h.resume("files-1")).await.unwrap();
    assert_eq!(call_count("files-1", "a"), 1);
    std::fs::remove_file(&file).unwrap();
    h.run(&p, h.resume("files-1")).await.unwrap();
    assert_eq!(call_count("files-1", "a"), 2);
}

#[tokio::test]
async fn until_stops_after_the_named_stage() {
    let h = Harness::new();
    let p = pipeline(
        "    - {name: a, uses: test-step}
    - {name: b, uses: test-step}
    - {name: c, uses: test-step}
",
    );
    let mut opts = h.opts("until-1");
    opts.until = Some("b".into());
    let s = h.run(&p, opts).await.unwrap();
    assert_eq!(s.status, Status::Succeeded);
    let statuses: Vec<Status> = s.stages.iter().map(|s| s.status).collect();
    assert_eq!(statuses, [Status::Succeeded, Status::Succeeded, Status::Pending]);
    assert_eq!(call_count("until-1", "c"), 0);
    // The rest can follow with a resume.
    h.run(&p, h.resume("until-1")).await.unwrap();
    assert_eq!((call_count("until-1", "a"), call_count("until-1", "c")), (1, 1));
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_written() {
    let h = Harness::new();
    let p = pipeline("    - {name: a, uses: test-step}\n");
    let cases: Vec<(RunOptions, &str)> = vec![
        (RunOptions { until: Some("nope".into()), ..h.opts("bad-1") }, "--until nope"),
        (RunOptions { sets: vec![("colour".into(), "red".into())], ..h.opts("bad-2") }, "no parameter `colour`"),
        (h.opts("Bad_Id"), "run id `Bad_Id`"),
        (h.resume("never-ran"), "no run `never-ran`"),
    ];
    for (opts, expected) in cases {
        let err = h.run(&p, opts).await.unwrap_err();
        assert_eq!(err.exit_class(), ExitClass::BadInput, "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert!(h.nothing_written(), "{expected}: state written");
    }
    let p = pipeline("    - {name: a, uses: test-step, timeout: soon}\n");
    let err = h.run(&p, h.opts("bad-3")).await.unwrap_err();
    assert!(err.to_string().contains("stage `a`: timeout `soon`"), "{err}");
    assert!(h.nothing_written());
}

#[tokio::test]
async fn an_existing_run_id_is_not_overwritten() {
    let h = Harness::new();
    let p = pipeline("    - {name: a, uses: test-step}\n");
    h.run(&p, h.opts("dup-1")).await.unwrap();
    let err = h.run(&p, h.opts("dup-1")).await.unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    assert!(err.to_string().contains("--resume dup-1"), "{err}");
    assert_eq!(call_count("dup-1", "a"), 1);
}

#[tokio::test]
async fn stage_errors_are_masked_in_the_record() {
    crate::secret::register("hunter2-engine-secret");
    let h = Harness::new();
    let p = pipeline("    - {name: a, uses: test-step, with: {value: '{{stages.hunter2-engine-secret.x}}'}}\n");
    let err = h.run(&p, h.opts("mask-1")).await.unwrap_err();
    let text = std::fs::read_to_string(h.state_dir().join("runs/demo/mask-1.yaml")).unwrap();
    assert!(!text.contains("hunter2-engine-secret"), "{text}");
    assert!(text.contains("****"), "{text}");
    drop(err);
}

#[test]
fn the_plan_resolves_params_and_keeps_outputs_and_env_as_written() {
    let h = Harness::new();
    let p = pipeline(
        "    - {name: a, uses: test-step, with: {value: '{{params.tag}}/{{env.PATH}}'}}
    - {name: b, uses: test-step, with: {value: 'x-{{stages.a.outputs.value}}'}, if: '{{params.tag}}'}
    - {name: c, uses: test-step}
",
    );
    let mut opts = h.opts("plan-1");
    opts.until = Some("b".into());
    let prepared =
        prepare::from_pipeline(p, opts.pipeline.clone(), "sha256:t".into(), Catalog::embedded(), &opts).unwrap();
    let plan = prepare::plan_prepared(&prepared, &opts).unwrap();
    assert_eq!(plan.stages.len(), 2);
    assert_eq!(plan.stages[0].with["value"], "v1/{{env.PATH}}");
    assert_eq!(plan.stages[1].with["value"], "x-{{stages.a.outputs.value}}");
    assert_eq!(
        plan.stages[1].targets,
        ["test step b echoing Some(\"x-{{stages.a.outputs.value}}\")", "runs only if `{{params.tag}}`"]
    );
    assert!(plan.state.starts_with("dir "));
    assert!(h.nothing_written());
}

#[test]
fn the_run_future_can_be_spawned() {
    // The webhook server and trigger run pipelines on spawned tasks.
    fn assert_send<T: Send>(_: &T) {}
    let fut = run(RunOptions::default());
    assert_send(&fut);
}

/// Without --workspace a run keeps its files in a stable per-run directory
/// (so --resume finds them) and removes it only once nothing is left to resume.
#[tokio::test]
async fn the_default_workspace_is_kept_until_the_run_completes() {
    let h = Harness::new();
    let p = pipeline("    - {name: a, uses: test-step}\n    - {name: b, uses: test-step}\n");
    let id = format!("ws-{}", generate_run_id());
    let dir = default_workspace("demo", &id);
    let opts = RunOptions { workspace: None, until: Some("a".into()), ..h.opts(&id) };
    let s = h.run(&p, opts).await.unwrap();
    assert_eq!(s.workspace.as_deref(), Some(dir.as_path()));
    assert!(dir.join("a/out.txt").exists());
    let s = h.run(&p, RunOptions { workspace: None, ..h.resume(&id) }).await.unwrap();
    assert_eq!(call_count(&id, "a"), 1, "the resumed run found a's files");
    assert_eq!(s.workspace, None);
    assert!(!dir.exists());
}

#[tokio::test]
async fn run_refuses_a_dry_run() {
    let err = run(RunOptions { dry_run: true, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput);
}

/// The run lock: held for the whole run (a second run of the model is
/// refused while another holds it, nothing recorded), released at the end,
/// and recorded with the starter.
#[tokio::test]
async fn a_run_holds_its_models_run_lock_and_releases_it() {
    use crate::state::LockScope;
    let h = Harness::new();
    let p = pipeline("    - {name: a, uses: test-step, with: {value: x}}\n");
    let store = DirStore::new(h.state_dir());
    store.try_scoped_lock(LockScope::Run, "demo", "run other of demo (pid 1)", Duration::from_secs(60)).await.unwrap();
    let opts = RunOptions { lock_wait: Some(Duration::ZERO), ..h.opts("lock-1") };
    match h.run(&p, opts).await.unwrap_err() {
        EngineError::State(e @ StateError::Locked { scope: LockScope::Run, .. }) => {
            let m = e.to_string();
            assert!(m.contains("has a run in progress") && m.contains("run other of demo"), "{m}");
        }
        other => panic!("expected the run lock refusal, got {other}"),
    }
    assert!(h.nothing_written());
    // The promotion lock is another lock: held, it does not stop a run.
    store.release_scoped_lock(LockScope::Run, "demo", "run other of demo (pid 1)").await.unwrap();
    store.try_lock("demo", "someone (run p)", Duration::from_secs(60)).await.unwrap();
    let opts = RunOptions { started_by: Some("alice".into()), ..h.opts("lock-2") };
    assert_eq!(h.run(&p, opts).await.unwrap().status, Status::Succeeded);
    assert_eq!(h.record("lock-2").await.started_by.as_deref(), Some("alice"));
    // Released: another holder takes it at once.
    store.try_scoped_lock(LockScope::Run, "demo", "next", Duration::from_secs(60)).await.unwrap();
}
