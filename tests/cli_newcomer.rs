//! A newcomer's first steps through the real binary, with no cluster at
//! all (HOME and KUBECONFIG point into an empty temp dir): a local-only
//! pipeline runs and keeps its state beside the file; what needs a cluster
//! says how to get one (exit 2); validation lists every problem at once;
//! namespaces take `{{params.X}}`; typos in names get a "did you mean".

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{copy_tree, repo, text};

/// fetch-model from a local directory and render: nothing needs a cluster,
/// so no `environments:`.
const LOCAL: &str = "\
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata:
  name: weather
spec:
  model:
    name: weather
    source: file://model
  stages:
    - name: fetch
      uses: fetch-model
    - name: render
      uses: render
      with: { modelClass: MyModel }
";

/// One environment and a stage that builds on it.
const CLUSTER: &str = "\
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata:
  name: weather
spec:
  model:
    name: weather
    source: file://model
  params:
    ns:
      default: team-a
  environments:
    dev:
      context: dev-cluster
      namespace: models-{{params.ns}}
    prod:
      namespace: models-prod
  stages:
    - name: fetch
      uses: fetch-model
    - name: render
      uses: render
      with: { modelClass: MyModel }
    - name: build
      uses: openshift-build
      with: { environment: dev }
";

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    /// `p.yaml` holding `pipeline`, the fixture model in `model/`, and an
    /// empty `home/` standing in for the user's home.
    fn new(pipeline: &str) -> Sandbox {
        let s = Sandbox { dir: tempfile::tempdir().unwrap() };
        std::fs::write(s.path("p.yaml"), pipeline).unwrap();
        copy_tree(&repo().join("fixtures/weather-model"), &s.path("model"));
        std::fs::create_dir_all(s.path("home")).unwrap();
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The binary with no cluster to be found: no kubeconfig file, not in a pod.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(support::BIN)
            .args(args)
            .current_dir(self.dir.path())
            .env("HOME", self.path("home"))
            .env("KUBECONFIG", self.path("home/.kube/config"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("DOCKER_CONFIG", self.path("home/.docker"))
            .env("REGISTRY_AUTH_FILE", self.path("home/auth.json"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("MODELSHIP_STAGES_DIR")
            .env_remove("MODELSHIP_RESULTS_DIR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run modelship")
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed")
}

fn transcript(o: &Output) -> String {
    format!("exit {:?}\nstdout:\n{}\nstderr:\n{}", o.status.code(), text(&o.stdout), text(&o.stderr))
}

#[test]
fn a_local_only_pipeline_runs_without_environments_or_a_cluster() {
    let s = Sandbox::new(LOCAL);
    let o = s.run(&["validate", "p.yaml"]);
    assert_eq!(code(&o), 0, "{}", transcript(&o));

    let o = s.run(&["run", "p.yaml", "--run-id", "first"]);
    assert_eq!(code(&o), 0, "{}", transcript(&o));
    let state = s.path(".modelship/state");
    let err = text(&o.stderr);
    // One line says why and where (the run's own start line names the store too).
    let said: Vec<&str> = err.lines().filter(|l| l.contains("needs a cluster")).collect();
    assert_eq!(said.len(), 1, "one line explains the local state:\n{err}");
    assert!(
        said[0].contains("no stage of this run needs a cluster: run state kept in ./.modelship/state"),
        "{}",
        said[0]
    );
    assert!(state.join("runs").is_dir(), "{}", transcript(&o));
    assert!(text(&o.stdout).contains("run first of weather: succeeded"), "{}", transcript(&o));
    // Kept out of Git beside the user's pipeline.
    assert!(s.path(".modelship/.gitignore").is_file());

    // `status -f` finds the run where `run` put it.
    let o = s.run(&["status", "-f", "p.yaml"]);
    assert_eq!(code(&o), 0, "{}", transcript(&o));
    assert!(text(&o.stdout).contains("first"), "{}", transcript(&o));
}

#[test]
fn a_stage_that_needs_a_cluster_names_the_three_ways_out_with_exit_2() {
    let s = Sandbox::new(CLUSTER);
    let o = s.run(&["run", "p.yaml"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    let err = text(&o.stderr);
    assert!(err.contains("no cluster configuration"), "{err}");
    for way in ["--kubeconfig PATH", "--sim DIR", "--state-dir DIR"] {
        assert!(err.contains(way), "{way} missing from:\n{err}");
    }
    assert!(!s.path(".modelship").exists(), "nothing local when the run needs a cluster");

    // Up to render nothing needs one: the plan keeps state locally.
    let o = s.run(&["run", "p.yaml", "--until", "render", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", transcript(&o));
    assert!(text(&o.stdout).contains(&format!("state: dir {}", Path::new(".").join(".modelship/state").display())));
}

#[test]
fn a_context_missing_from_the_kubeconfig_says_where_it_came_from() {
    let s = Sandbox::new(CLUSTER);
    let kc = s.path("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\ncurrent-context: dev-clustr\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: dev-clustr\n  context:\n    cluster: c\n    user: u\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    let o = s.run(&["run", "p.yaml", "--kubeconfig", kc.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains(&format!(
            "environment `dev`: context `dev-cluster` (from spec.environments.dev.context in p.yaml) is not in kubeconfig {} (it has: dev-clustr)",
            kc.display()
        )),
        "{err}"
    );
    assert!(err.contains("did you mean `dev-clustr`?"), "{err}");
    assert!(!err.contains("failed to load current context"), "{err}");
}

#[test]
fn validate_lists_every_problem_at_once_with_its_position() {
    let s = Sandbox::new(
        "\
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata:
  name: weather
spec:
  model:
    name: weather
  stages:
    - name: fetch
      uses: fetch-model
      retries: lots
    - name: render
      uses: rendr
    - name: build
      uses: openshift-build
      with: { environment: dve }
",
    );
    let o = s.run(&["validate", "p.yaml"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    let err = text(&o.stderr);
    let expected = [
        "p.yaml:5:1: spec.environments declares no environment, but stage `build` (`openshift-build`, stage 3) needs a cluster",
        "p.yaml:6:3: spec.model: missing field `source`",
        "p.yaml:11:16: spec.stages[0].retries: invalid type: string \"lots\", expected u32",
        "p.yaml:13:13: stage `render`: unknown stage kind `rendr`",
        "p.yaml:16:28: stage `build`: with.environment: environment `dve` is not declared in spec.environments",
    ];
    let found: Vec<&str> = err.lines().filter(|l| l.starts_with("p.yaml:")).collect();
    assert_eq!(found, expected, "{err}");
    assert!(err.contains("did you mean `render`?"), "{err}");
    assert!(err.contains("5 problems found"), "{err}");

    // A run reports the same, before touching anything.
    let o = s.run(&["run", "p.yaml", "--state-dir", "state"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    assert!(text(&o.stderr).contains("5 problems found"), "{}", transcript(&o));
    assert!(!s.path("state").exists());
}

#[test]
fn a_namespace_may_take_params_and_a_bad_one_is_reported() {
    let s = Sandbox::new(CLUSTER);
    let o = s.run(&["validate", "p.yaml"]);
    assert_eq!(code(&o), 0, "{}", transcript(&o));

    let o = s.run(&["run", "p.yaml", "--dry-run", "--set", "ns=team-b"]);
    assert_eq!(code(&o), 0, "{}", transcript(&o));
    let out = text(&o.stdout);
    assert!(out.contains("state: configmaps in dev/models-team-b"), "{out}");
    assert!(out.contains("environment dev, namespace models-team-b"), "{out}");

    let o = s.run(&["run", "p.yaml", "--dry-run", "--set", "ns=Team_B"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    assert!(
        text(&o.stderr).contains(
            "spec.environments.dev.namespace: `models-{{params.ns}}` renders to `models-Team_B`, which is not a valid name (RFC 1123 label)"
        ),
        "{}",
        transcript(&o)
    );

    // An undeclared param and a bad default, each at its place in the file.
    std::fs::write(
        s.path("p.yaml"),
        CLUSTER
            .replace("models-{{params.ns}}", "models-{{params.nz}}")
            .replace("namespace: models-prod", "namespace: \"{{params.ns}}_prod\""),
    )
    .unwrap();
    let o = s.run(&["validate", "p.yaml"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    let err = text(&o.stderr);
    assert!(err.contains("p.yaml:15:27: `params.nz`: parameter `nz` is not declared in spec.params"), "{err}");
    assert!(err.contains("did you mean `ns`?"), "{err}");
    assert!(
        err.contains(
            "p.yaml:17:18: namespace `{{params.ns}}_prod` renders to `team-a_prod` with the defaults, which is not a valid name (RFC 1123 label)"
        ),
        "{err}"
    );
}

#[test]
fn typos_in_environment_and_stage_names_get_a_suggestion() {
    let s = Sandbox::new(CLUSTER);
    let o = s.run(&["promote", "weather", "--from", "dev", "--to", "prdo", "-f", "p.yaml", "--state-dir", "state"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    assert!(
        text(&o.stderr).contains("--to prdo: no environment `prdo` in p.yaml; did you mean `prod`?"),
        "{}",
        transcript(&o)
    );

    let o = s.run(&["run", "p.yaml", "--until", "rendr", "--state-dir", "state"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    assert!(
        text(&o.stderr).contains("--until rendr: no stage `rendr` in p.yaml; did you mean `render`?"),
        "{}",
        transcript(&o)
    );

    let o = s.run(&["run", "p.yaml", "--dry-run", "--set", "nz=x"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    assert!(
        text(&o.stderr).contains("declares no parameter `nz` (declared: ns); did you mean `ns`?"),
        "{}",
        transcript(&o)
    );

    // A reading command needs its --state-dir to exist; a wrong model then
    // writes nothing into it.
    std::fs::create_dir_all(s.path("state")).unwrap();
    let o = s.run(&["history", "wether", "-f", "p.yaml", "--state-dir", "state"]);
    assert_eq!(code(&o), 2, "{}", transcript(&o));
    assert!(text(&o.stderr).contains("did you mean `weather`?"), "{}", transcript(&o));
    assert_eq!(std::fs::read_dir(s.path("state")).unwrap().count(), 0);
}

/// What a person reads on a terminal (`--log-format text`, as on a TTY):
/// each line an RFC 3339 time, a level, what it is about once (`[fetch]`,
/// not the span chain with the run id on every line), and no Rust `Debug`
/// text; `--color never` and `NO_COLOR` keep escape codes out.
#[test]
fn text_logs_name_the_stage_once_in_one_time_format_without_debug_text() {
    let s = Sandbox::new(LOCAL);
    for colour in [&["--color", "never"][..], &[][..]] {
        let mut args = vec!["--log-format", "text"];
        args.extend_from_slice(colour);
        args.extend(["run", "p.yaml"]);
        let o = Command::new(support::BIN)
            .args(&args)
            .current_dir(s.dir.path())
            .env("HOME", s.path("home"))
            .env("KUBECONFIG", s.path("home/.kube/config"))
            .env("XDG_CACHE_HOME", s.path("cache"))
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", transcript(&o));
        let err = text(&o.stderr);
        assert!(!err.contains('\x1b'), "colour codes with {colour:?} and NO_COLOR:\n{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines.len() >= 4, "{err}");
        for line in &lines {
            let mut words = line.split_whitespace();
            let time = words.next().unwrap();
            assert!(time.contains('T') && time.ends_with('Z') && time.parse::<jiff::Timestamp>().is_ok(), "{line}");
            assert!(matches!(words.next(), Some("INFO" | "WARN" | "ERROR" | "DEBUG")), "{line}");
            for debug in ["run{", "stage{", " {", "Some(", "User {", "Generated {"] {
                assert!(!line.contains(debug), "`{debug}` in {line}");
            }
        }
        let fetch: Vec<&&str> = lines.iter().filter(|l| l.contains(" [fetch] ")).collect();
        assert!(!fetch.is_empty(), "{err}");
        // The run id and the stage are the label, not fields repeated on every line.
        for line in &lines {
            assert!(!line.contains("run_id=") && !line.contains(" stage="), "{line}");
        }
        let render = lines.iter().find(|l| l.contains("rendered build context")).expect("render's line");
        assert!(render.contains(" [render] ") && render.contains("class=\"MyModel.py (yours)\""), "{render}");
    }
}
