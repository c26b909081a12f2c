//! Pipeline selection from real push payloads against a real Git repository
//! (see `support/triggers.rs`).

mod support;

use modelship::error::{ExitClass, HasExitClass};
use modelship::triggers::select::render_plan;
use modelship::triggers::{ChangeKind, TriggerError, TriggerPlan, TriggerRequest, plan};
use support::triggers::{self as fixture, Fixture, GITHUB_REMOTE, ZERO, build, github_push, gitlab_push};

fn request(f: &Fixture, event_type: &str) -> TriggerRequest {
    TriggerRequest {
        event_type: event_type.into(),
        provider: None,
        repo: f.repo(),
        pipelines: f.pipelines(),
        expect_repo: Vec::new(),
        source: "event.json".into(),
        fetch: false,
    }
}

fn selected(p: &TriggerPlan) -> Vec<&str> {
    p.selected().map(|d| d.pipeline.as_str()).collect()
}

/// Stable text for snapshots: temp paths and commit ids filtered.
fn rendered(f: &Fixture, p: &TriggerPlan, dry_run: bool) -> String {
    let mut text = render_plan(p, dry_run).replace(&f.repo().display().to_string(), "[REPO]");
    for (i, sha) in f.c.iter().enumerate() {
        text = text.replace(&sha[..12], &format!("[c{i}]"));
    }
    text.replace(&f.feature[..12], "[feature]").replace(&f.rewritten[..12], "[rewritten]")
}

#[test]
fn github_push_to_main_selects_the_models_it_touched() {
    let f = build();
    let p = plan(&github_push("refs/heads/main", &f.c[1], &f.c[3]), &request(&f, "push")).unwrap();
    let changes = p.changes.as_ref().unwrap();
    assert_eq!(changes.kind, ChangeKind::Update);
    assert_eq!(changes.commits, 2);
    assert_eq!(selected(&p), ["iris", "weather"]);
    insta::assert_snapshot!(rendered(&f, &p, true), @r#"
    github push to refs/heads/main (openshift-pipelines/pipelines-as-code): [c1] -> [c3]
    update: 2 commit(s), 3 file(s) changed
         skip ghost ([REPO]/pipelines/ghost.yaml): none of the 3 changed file(s) match paths ["models/ghost/**"]
    would run iris ([REPO]/pipelines/iris.yaml): 1 changed file(s) match paths ["models/iris/**"]
              - models/iris/model.pkl
         skip manual ([REPO]/pipelines/manual.yaml): no `triggers.push` in the pipeline
    would run weather ([REPO]/pipelines/weather.yaml): 1 changed file(s) match paths ["models/weather/**"]
              - models/weather/requirements.txt
    "#);
    let weather = p.decisions.iter().find(|d| d.pipeline == "weather").unwrap();
    assert!(weather.declares_commit, "weather declares a `commit` param: the run gets --set commit=SHA");
}

#[test]
fn one_model_changed_selects_only_that_model() {
    let f = build();
    let p = plan(&github_push("refs/heads/main", &f.c[0], &f.c[1]), &request(&f, "push")).unwrap();
    assert_eq!(selected(&p), ["weather"]);
}

#[test]
fn gitlab_push_hook_selects_the_same_way() {
    let f = build();
    let p = plan(&gitlab_push("refs/heads/main", &f.c[2], &f.c[3]), &request(&f, "Push Hook")).unwrap();
    assert_eq!(p.event.as_ref().unwrap().provider, modelship::triggers::Provider::GitLab);
    assert_eq!(selected(&p), ["weather"]);
    assert_eq!(
        p.changes.as_ref().unwrap().files.iter().cloned().collect::<Vec<_>>(),
        ["docs/notes.md", "models/weather/requirements.txt"]
    );
}

#[test]
fn new_branch_counts_only_the_branch_own_commits() {
    let f = build();
    let p = plan(&github_push("refs/heads/feature/iris-tuning", ZERO, &f.feature), &request(&f, "push")).unwrap();
    let changes = p.changes.as_ref().unwrap();
    assert_eq!(changes.kind, ChangeKind::NewBranch);
    assert_eq!(changes.commits, 1, "c0 and c1 are on main already");
    assert_eq!(changes.files.iter().cloned().collect::<Vec<_>>(), ["models/iris/params.yaml"]);
    // iris allows feature/*; weather only main.
    assert_eq!(selected(&p), ["iris"]);
    let weather = p.decisions.iter().find(|d| d.pipeline == "weather").unwrap();
    assert_eq!(weather.reason, "branch `feature/iris-tuning` does not match branches [\"main\"]");
}

#[test]
fn new_branch_at_an_existing_commit_changes_nothing() {
    let f = build();
    let p = plan(&github_push("refs/heads/feature/empty", ZERO, &f.c[3]), &request(&f, "push")).unwrap();
    assert!(p.changes.as_ref().unwrap().files.is_empty());
    assert!(selected(&p).is_empty());
    let iris = p.decisions.iter().find(|d| d.pipeline == "iris").unwrap();
    assert!(iris.reason.contains("the push changed no files"), "{}", iris.reason);
    assert!(render_plan(&p, true).ends_with("no pipeline matches this push; nothing runs\n"));
}

#[test]
fn force_push_compares_old_and_new_trees() {
    let f = build();
    let p = plan(&github_push("refs/heads/main", &f.c[3], &f.rewritten), &request(&f, "push")).unwrap();
    let changes = p.changes.as_ref().unwrap();
    assert_eq!(changes.kind, ChangeKind::ForcePush);
    // Dropped commits' files count too: the deployed state had them.
    assert_eq!(
        changes.files.iter().cloned().collect::<Vec<_>>(),
        ["docs/notes.md", "models/iris/model.pkl", "models/weather/model.joblib", "models/weather/requirements.txt"]
    );
    assert_eq!(selected(&p), ["iris", "weather"]);
    assert!(
        rendered(&f, &p, true)
            .contains("force push: 0 commit(s), 4 file(s) changed (before is not an ancestor of after")
    );
}

#[test]
fn deleted_branch_runs_nothing() {
    let f = build();
    let p = plan(&github_push("refs/heads/main", &f.c[3], ZERO), &request(&f, "push")).unwrap();
    assert_eq!(p.ignored.as_deref(), Some("branch `main` was deleted; nothing runs"));
    assert!(p.decisions.is_empty());
}

#[test]
fn tag_push_runs_nothing() {
    let f = build();
    let mut v = fixture::fixture_json("gitlab/tag_push.json");
    v["project"]["git_ssh_url"] = fixture::GITLAB_REMOTE.into();
    v["before"] = ZERO.into();
    v["after"] = f.c[3].clone().into();
    let p = plan(&serde_json::to_vec(&v).unwrap(), &request(&f, "Tag Push Hook")).unwrap();
    assert_eq!(
        p.ignored.as_deref(),
        Some("`refs/tags/v1.0.0` is not a branch (tags do not trigger pipelines); nothing runs")
    );
}

#[test]
fn other_event_types_are_ignored_with_a_reason() {
    let f = build();
    let ping = serde_json::to_vec(&fixture::fixture_json("github/ping.payload.json")).unwrap();
    let p = plan(&ping, &request(&f, "ping")).unwrap();
    assert_eq!(p.ignored.as_deref(), Some("event type `ping` is not a push; nothing runs"));
}

#[test]
fn shas_missing_from_the_repository_are_a_clear_error() {
    let f = build();
    let unknown = "1111111111111111111111111111111111111111";
    let err = plan(&github_push("refs/heads/main", &f.c[3], unknown), &request(&f, "push")).unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    let text = err.to_string().replace(&f.repo().display().to_string(), "[REPO]");
    insta::assert_snapshot!(text, @"commit 1111111111111111111111111111111111111111 (`after` of the push to refs/heads/main) is not in the repository at [REPO]; fetch it first (e.g. `git -C [REPO] fetch --all`)");
    let err = plan(&github_push("refs/heads/main", unknown, &f.c[3]), &request(&f, "push")).unwrap_err();
    assert!(matches!(err, TriggerError::MissingCommit { field: "before", .. }), "{err}");
}

#[test]
fn payload_for_another_repository_is_refused() {
    let f = build();
    // octokit's example push comes from Codertocat/Hello-World.
    let mut v = fixture::fixture_json("github/push.with-new-branch.payload.json");
    v["before"] = f.c[1].clone().into();
    v["after"] = f.c[3].clone().into();
    let err = plan(&serde_json::to_vec(&v).unwrap(), &request(&f, "push")).unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    let text = err.to_string();
    assert!(text.starts_with("the payload is for repository Codertocat/Hello-World"), "{text}");
    assert!(text.contains(GITHUB_REMOTE), "{text}");
    // Told explicitly which repository to expect, the same payload passes.
    let mut req = request(&f, "push");
    req.expect_repo = vec!["git@github.com:Codertocat/Hello-World.git".into()];
    assert!(plan(&serde_json::to_vec(&v).unwrap(), &req).is_ok());
}

#[test]
fn checkout_without_remotes_needs_expect_repo() {
    let f = build();
    let repo = git2::Repository::open(f.repo()).unwrap();
    repo.remote_delete("origin").unwrap();
    repo.remote_delete("gitlab").unwrap();
    let body = github_push("refs/heads/main", &f.c[1], &f.c[3]);
    let err = plan(&body, &request(&f, "push")).unwrap_err();
    assert!(matches!(err, TriggerError::NoRepositoryIdentity { .. }), "{err}");
    let mut req = request(&f, "push");
    req.expect_repo = vec![GITHUB_REMOTE.into()];
    assert_eq!(selected(&plan(&body, &req).unwrap()), ["iris", "weather"]);
}

#[test]
fn malformed_payloads_and_pipelines_are_bad_input() {
    let f = build();
    let err = plan(b"{\"ref\": ", &request(&f, "push")).unwrap_err();
    assert!(matches!(err, TriggerError::Json { .. }), "{err}");
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    std::fs::write(
        f.pipelines().join("broken.yaml"),
        "apiVersion: modelship.io/v1alpha1\nkind: Pipeline\nmetdata: {}\n",
    )
    .unwrap();
    let err = plan(&github_push("refs/heads/main", &f.c[1], &f.c[3]), &request(&f, "push")).unwrap_err();
    assert_eq!(err.exit_class(), ExitClass::BadInput);
    assert!(err.to_string().contains("broken.yaml"), "{err}");
}

#[tokio::test]
async fn trigger_command_dry_run_runs_nothing_and_exits_zero() {
    let f = build();
    let event = f.dir.path().join("event.json");
    std::fs::write(&event, github_push("refs/heads/main", &f.c[1], &f.c[3])).unwrap();
    let args = modelship::commands::trigger::TriggerArgs {
        event: event.clone(),
        event_type: "push".into(),
        repo: f.repo(),
        pipelines: f.pipelines(),
        expect_repo: Vec::new(),
        fetch: false,
        dry_run: true,
        output: modelship::commands::output::OutputFormat::Json,
        kubeconfig: None,
        state_dir: None,
        sim: None,
        delivery: None,
    };
    let g = modelship::commands::GlobalArgs {
        log_format: modelship::logging::LogFormat::Json,
        color: modelship::logging::ColorChoice::Never,
        verbose: 0,
        quiet: false,
        stages_dir: None,
    };
    // --dry-run never reaches the engine (a stub on this branch): Ok proves it.
    modelship::commands::trigger::run(args, &g).await.unwrap();
    std::fs::write(&event, "not json").unwrap();
    let args = modelship::commands::trigger::TriggerArgs {
        event,
        event_type: "push".into(),
        repo: f.repo(),
        pipelines: f.pipelines(),
        expect_repo: Vec::new(),
        fetch: false,
        dry_run: true,
        output: modelship::commands::output::OutputFormat::Text,
        kubeconfig: None,
        state_dir: None,
        sim: None,
        delivery: None,
    };
    let err = modelship::commands::trigger::run(args, &g).await.unwrap_err();
    assert_eq!(err.class, ExitClass::BadInput);
}

#[test]
fn pushed_commits_missing_from_the_checkout_are_fetched_from_the_remote() {
    let f = build();
    // The checkout is a clone; the fixture repository plays the Git host.
    let (checkout, pushed) = f.checkout_behind(("models/iris/model.pkl", "iris v2"), "retrain iris");
    let body = github_push("refs/heads/main", &f.c[3], &pushed.to_string());
    let mut req = request(&f, "push");
    req.repo = checkout.clone();
    req.pipelines = checkout.join("pipelines");
    // The clone's origin is a local path, so say which repository it is.
    req.expect_repo = vec![GITHUB_REMOTE.into()];
    let err = plan(&body, &req).unwrap_err();
    assert!(matches!(err, TriggerError::MissingCommit { field: "after", .. }), "{err}");
    req.fetch = true;
    let p = plan(&body, &req).unwrap();
    assert_eq!(selected(&p), ["iris"]);
    // Fetched into the remote-tracking ref, not into the working tree.
    let repo = git2::Repository::open(&checkout).unwrap();
    assert_eq!(repo.refname_to_id("refs/remotes/origin/main").unwrap(), pushed);
    assert_eq!(repo.head().unwrap().target().unwrap().to_string(), f.c[3]);
}
