//! The CLI's conventions, kubectl's where it has them: `-o json|yaml|wide`,
//! `--context`/`-n ENV=...` overrides, shell completion, `--version` with
//! the Git revision, help on every flag, and every `Examples:` line in
//! `--help` running as printed (against the sim in a temp dir).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use clap::CommandFactory;
use modelship::commands::Cli;
use serde_json::Value;
use support::cli::{modelship, processes_under, wait_no_processes_under, weather_fixture};
use support::{repo, text};

fn run_in(dir: &Path, args: &[&str]) -> Output {
    modelship().current_dir(dir).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn usage_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "stdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
    text(&out.stderr)
}

/// A temp dir with `pipelines/weather.yaml` and its fixture model.
fn workdir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = weather_fixture(dir.path(), |y| y);
    (dir, pipeline)
}

#[test]
fn dry_run_plans_print_as_json_yaml_and_text() {
    let (dir, _) = workdir();
    let json: Value =
        serde_json::from_str(&ok(&run_in(dir.path(), &["run", "pipelines/weather.yaml", "--dry-run", "-o", "json"])))
            .unwrap();
    let yaml_text = ok(&run_in(dir.path(), &["run", "pipelines/weather.yaml", "--dry-run", "--output", "yaml"]));
    let yaml: Value = modelship::spec::yaml::from_str(&yaml_text).unwrap();
    assert_eq!(json["pipeline"], "weather");
    // The same plan either way (the run id is generated at run time in both).
    assert_eq!(json, yaml);
    let wide = ok(&run_in(dir.path(), &["run", "pipelines/weather.yaml", "--dry-run", "-o", "wide"]));
    assert!(wide.starts_with("Plan for pipeline `weather`"), "{wide}");
}

#[test]
fn a_namespace_override_moves_every_target_of_the_environment() {
    let (dir, _) = workdir();
    let plan = |extra: &[&str]| {
        let mut args = vec!["run", "pipelines/weather.yaml", "--dry-run", "-o", "json"];
        args.extend(extra);
        serde_json::from_str::<Value>(&ok(&run_in(dir.path(), &args))).unwrap()
    };
    let targets = |p: &Value| {
        p["stages"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["targets"].as_array().unwrap().clone())
            .map(|t| t.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let before = targets(&plan(&[]));
    assert!(before.iter().any(|t| t.contains("models-dev")), "{before:?}");
    let moved = plan(&["-n", "dev=team-a", "--namespace", "prod=team-a-prod"]);
    let after = targets(&moved);
    assert!(!after.iter().any(|t| t.contains("models-dev") || t.contains("models-prod")), "{after:?}");
    assert!(after.iter().any(|t| t.contains("team-a")) && after.iter().any(|t| t.contains("team-a-prod")), "{after:?}");
    // The state lives in the state environment's (overridden) namespace too.
    assert!(moved["state"].as_str().unwrap().contains("team-a"), "{moved}");

    let err = usage_error(&run_in(dir.path(), &["run", "pipelines/weather.yaml", "--dry-run", "-n", "staging=x"]));
    assert!(err.contains("--namespace staging") && err.contains("declared: dev, prod"), "{err}");
    let err = usage_error(&run_in(dir.path(), &["run", "pipelines/weather.yaml", "--dry-run", "-n", "dev=Not_A_Name"]));
    assert!(err.contains("--namespace dev=Not_A_Name"), "{err}");
    let err = usage_error(&run_in(dir.path(), &["status", "-f", "pipelines/weather.yaml", "-n", "dev"]));
    assert!(err.contains("--namespace dev: expected KEY=VALUE"), "{err}");
}

#[test]
fn every_cluster_command_takes_the_same_overrides_and_output_flag() {
    for cmd in ["run", "status", "history", "report", "promote", "rollback", "approve", "reject"] {
        let help = ok(&modelship().args([cmd, "--help"]).output().unwrap());
        for flag in ["--context <ENV=CTX>", "-n, --namespace <ENV=NS>"] {
            assert!(help.contains(flag), "`{cmd} --help` has no {flag}:\n{help}");
        }
    }
    for cmd in ["run", "status", "history", "report", "promote", "rollback", "trigger", "verify"] {
        let help = ok(&modelship().args([cmd, "--help"]).output().unwrap());
        assert!(help.contains("-o, --output <OUTPUT>"), "`{cmd} --help` has no -o:\n{help}");
    }
}

#[test]
fn status_of_a_missing_state_dir_names_it_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-state");
    let err = usage_error(&modelship().args(["status", "--state-dir"]).arg(&missing).output().unwrap());
    assert!(err.contains(&missing.display().to_string()) && err.contains("no such directory"), "{err}");
    // An existing, empty one is simply empty.
    let empty = ok(&modelship().args(["status", "--state-dir"]).arg(dir.path()).output().unwrap());
    assert!(empty.starts_with("no runs in"), "{empty}");
    let runs: Value = serde_json::from_str(&ok(&modelship()
        .args(["status", "-o", "json", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap()))
    .unwrap();
    assert_eq!(runs, serde_json::json!([]));
}

#[test]
fn history_takes_its_model_from_the_pipeline() {
    let (dir, _) = workdir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let args = ["history", "-f", "pipelines/weather.yaml", "--state-dir", "state"];
    assert_eq!(ok(&run_in(dir.path(), &args)).trim(), "no ledger entries");
    let named =
        ok(&run_in(dir.path(), &["history", "weather", "-f", "pipelines/weather.yaml", "--state-dir", "state"]));
    assert_eq!(named.trim(), "no ledger entries");
    let err = usage_error(&run_in(
        dir.path(),
        &["history", "wether", "-f", "pipelines/weather.yaml", "--state-dir", "state"],
    ));
    assert!(err.contains("model `wether` is not the model of pipeline `weather`"), "{err}");
    let yaml =
        ok(&run_in(dir.path(), &["history", "-f", "pipelines/weather.yaml", "--state-dir", "state", "-o", "yaml"]));
    assert_eq!(yaml.trim(), "[]");
}

#[test]
fn sim_serve_on_a_sim_root_says_which_cluster_to_pass() {
    let dir = tempfile::tempdir().unwrap();
    // The layout `run --sim DIR` leaves: one data directory per environment.
    for env in ["dev", "prod"] {
        std::fs::create_dir_all(dir.path().join(env)).unwrap();
        std::fs::write(dir.path().join(env).join("address"), "127.0.0.1:1").unwrap();
    }
    let err = usage_error(&modelship().args(["sim", "serve", "--data"]).arg(dir.path()).output().unwrap());
    let expected = format!("--data {}", dir.path().join("dev").display());
    assert!(err.contains("dev, prod") && err.contains(&expected), "{err}");
    assert!(!dir.path().join("objects").exists() && !dir.path().join("kubeconfig").exists(), "nothing started");
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    for (shell, marker) in [("bash", "complete -F"), ("zsh", "#compdef modelship"), ("fish", "complete -c modelship")] {
        let script = ok(&modelship().args(["completion", shell]).output().unwrap());
        assert!(script.contains(marker), "{shell}: no `{marker}`");
        // Subcommands and their flags are completed.
        assert!(script.contains("rollback") && script.contains("namespace"), "{shell}");
    }
    usage_error(&modelship().args(["completion", "tcsh"]).output().unwrap());
}

#[test]
fn version_names_the_git_revision() {
    let out = ok(&modelship().arg("--version").output().unwrap());
    let re = regex::Regex::new(r"^modelship \d+\.\d+\.\d+ \(([0-9a-f]{7,} \d{4}-\d\d-\d\d|unknown|\S.*)\)\n$").unwrap();
    assert!(re.is_match(&out), "{out:?}");
    assert!(out.starts_with(&format!("modelship {} (", env!("CARGO_PKG_VERSION"))), "{out:?}");
}

/// Every subcommand, depth first, with its path (`["sim", "serve"]`).
fn walk(cmd: &clap::Command, path: Vec<String>, out: &mut Vec<(Vec<String>, clap::Command)>) {
    out.push((path.clone(), cmd.clone()));
    // clap's own `help` subcommand tree only repeats the others' help.
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut p = path.clone();
        p.push(sub.get_name().to_string());
        walk(sub, p, out);
    }
}

fn commands() -> Vec<(Vec<String>, clap::Command)> {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = Vec::new();
    walk(&cmd, Vec::new(), &mut out);
    out
}

#[test]
fn every_flag_has_help_and_every_subcommand_a_description_and_examples() {
    let mut missing = Vec::new();
    for (path, cmd) in commands() {
        let name = format!("modelship {}", path.join(" "));
        if cmd.is_hide_set() {
            continue;
        }
        if !path.is_empty() && cmd.get_about().is_none() {
            missing.push(format!("{name}: no description"));
        }
        let leaf = cmd.get_subcommands().next().is_none();
        if leaf && examples_of(&cmd).is_empty() {
            missing.push(format!("{name}: no `Examples:` in its --help"));
        }
        // As printed (clap wraps at 100 columns off a terminal): an example
        // wrapped by clap cannot be pasted; a long one continues with `\`.
        let rendered = cmd.clone().render_long_help().to_string();
        for line in example_lines(&cmd) {
            if !rendered.lines().any(|l| l.trim() == line) {
                missing.push(format!("{name}: example wrapped in --help: {line}"));
            }
        }
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{name}: {} has no help", arg.get_id()));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The lines of a command's `Examples:` paragraph (up to the blank line),
/// as written: a long command continues after a trailing `\`.
fn example_lines(cmd: &clap::Command) -> Vec<String> {
    let Some(after) = cmd.get_after_help() else { return Vec::new() };
    let mut lines = Vec::new();
    let mut inside = false;
    for line in after.to_string().lines() {
        if line.starts_with("Example") && line.trim_end().ends_with(':') {
            inside = true;
        } else if inside && line.trim().is_empty() {
            inside = false;
        } else if inside {
            lines.push(line.trim().to_string());
        }
    }
    lines
}

/// The commands of a command's `Examples:`, continuation lines joined.
fn examples_of(cmd: &clap::Command) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut continued = false;
    for line in example_lines(cmd) {
        let (text, more) = match line.strip_suffix('\\') {
            Some(t) => (t.trim_end().to_string(), true),
            None => (line, false),
        };
        match out.last_mut() {
            Some(last) if continued => {
                last.push(' ');
                last.push_str(&text);
            }
            _ => out.push(text),
        }
        continued = more;
    }
    out
}

/// Lines that need more than a pipeline and the sim: each says what. Every
/// one must still be printed somewhere (a stale entry fails the test).
const NOT_RUN: &[(&str, &str)] = &[("modelship verify ", "a signed image in a registry")];

/// `modelship run` of the gated pipeline in the background (its own sims,
/// state in `./state`), once its record says it waits for approval.
fn park(shell: &dyn Fn(&str) -> Command, gated: &Path, run_id: &str) -> std::process::Child {
    let mut run = shell(&format!("modelship run pipelines/weather.yaml --sim sim --state-dir state --run-id {run_id}"))
        .current_dir(gated)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Bounded by the run itself: it ends (and fails the test) if it never parks.
    loop {
        let out =
            shell(&format!("modelship status {run_id} --state-dir state -o json")).current_dir(gated).output().unwrap();
        if out.status.success() {
            let record: Value = serde_json::from_slice(&out.stdout).unwrap();
            if record["status"] == "waiting-approval" {
                return run;
            }
        }
        if let Some(status) = run.try_wait().unwrap() {
            panic!("run {run_id} ended ({status}) without waiting for approval");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The SeldonDeployment process records (`DATA/seldon/NS/NAME/DIGEST/pgid`)
/// under a `--sim` directory, with what they hold.
fn model_process_records(sim: &Path) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if e.file_name() == "pgid" {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(sim, &mut out);
    out.sort();
    out
}

/// What the examples that are not about the sim need: a Git checkout with a
/// push payload for `trigger` and `serve`, two registries for `image copy`.
struct Services {
    git: support::triggers::Fixture,
    registries: [support::registry::DockerRegistry; 2],
    /// `model push` examples upload to it (bucket `models`).
    s3: support::s3::Moto,
}

impl Services {
    fn start(work: &Path) -> Services {
        let git = support::triggers::build();
        let payload = support::triggers::github_push("refs/heads/main", &git.c[0], &git.c[1]);
        std::fs::write(git.repo().join("push.json"), payload).unwrap();
        let registries = [support::registry::DockerRegistry::start(), support::registry::DockerRegistry::start()];
        let mut layout = support::registry::Layout::new(&work.join("oci"));
        let layer = layout.blob(support::registry::OCI_LAYER, b"not really a tar, but a registry does not look");
        let image = layout.image(&[layer], "amd64");
        layout.tag("v1", &image);
        support::registry::push(&layout, "v1", &format!("{}/ns/app:v1", registries[0].addr));
        let s3 = support::s3::Moto::start();
        s3.create_bucket("models", false);
        Services { git, registries, s3 }
    }

    /// The example's placeholders, replaced by what stands for them here.
    fn substitute(&self, line: &str, sim: &Path, webhook: &str) -> String {
        line.replace("/tmp/sim", &sim.display().to_string())
            .replace("127.0.0.1:5000", &self.registries[0].addr)
            .replace("127.0.0.1:5001", &self.registries[1].addr)
            .replace("127.0.0.1:8080", webhook)
            .replace("http://127.0.0.1:9000", &self.s3.endpoint)
    }
}

/// Every `Examples:` line of every `--help` (the `sim` build's), run as
/// printed by bash in a directory holding the weather pipeline (`trigger`
/// and `serve` in a Git checkout): `/tmp/sim` is a temp dir, `RUN_ID` the
/// run the first `run` example makes, `DIGEST` the digest it promoted,
/// loopback registries and ports free ones. `sim serve` and `serve` run
/// until stopped: each is started, the lines after it run against it, and
/// SIGTERM must end it with exit 0. The run also shows that
/// `status`/`history`/`report --sim` start no model process.
#[test]
fn every_example_in_help_runs() {
    let (dir, _) = workdir();
    let work = dir.path();
    let sim = work.join("sim");
    let bin = work.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(support::BIN, bin.join("modelship")).unwrap();
    let kubectl_dir = support::kubectl::path().parent().unwrap().to_path_buf();
    let path = std::env::join_paths([bin.clone(), kubectl_dir, "/usr/bin".into(), "/bin".into()]).unwrap();
    let home = work.join("home");
    std::fs::create_dir(&home).unwrap();

    let mut lines: Vec<String> = Vec::new();
    for (_, cmd) in commands() {
        for l in examples_of(&cmd) {
            if !lines.contains(&l) {
                lines.push(l);
            }
        }
    }
    for (prefix, _) in NOT_RUN {
        assert!(lines.iter().any(|l| l.starts_with(prefix)), "NOT_RUN names `{prefix}`, which no example starts with");
    }
    assert!(lines.iter().any(|l| l.starts_with("modelship run ") && l.contains("--sim /tmp/sim")), "{lines:?}");

    let services = Services::start(work);
    let webhook = format!("127.0.0.1:{}", support::free_port());
    // `approve`/`reject` decide on a run waiting at an approval gate: the
    // weather pipeline with `approval: required` on its promote stage.
    let gated_dir = tempfile::tempdir().unwrap();
    let gated = gated_dir.path();
    weather_fixture(gated, |y| {
        let edited = y.replace("with: { from: dev, to: prod }", "with: { from: dev, to: prod, approval: required }");
        assert_ne!(edited, y, "pipelines/weather.yaml's promote stage changed");
        edited
    });
    let mut parked = 0;
    let shell = |line: &str| {
        // `trigger` and `serve` read a Git checkout: `--repo .`.
        let git = line.contains("modelship trigger ") || line.contains("modelship serve ");
        let decision = line.starts_with("modelship approve ") || line.starts_with("modelship reject ");
        let dir = if git {
            services.git.repo()
        } else if decision {
            gated.to_path_buf()
        } else {
            work.to_path_buf()
        };
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(line)
            .current_dir(dir)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &home)
            .env("MODELSHIP_SIM_VENV_CACHE", support::cli::venv_cache());
        if line.starts_with("modelship model push ") {
            // The AWS chain, as a user's shell has it.
            cmd.env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEPUSH").env("AWS_SECRET_ACCESS_KEY", "example-push-secret");
        }
        cmd
    };
    let (mut run_id, mut digest) = (None::<String>, None::<String>);
    let mut records_after_run = None;
    let run_re = regex::Regex::new(r"(?m)^run (\S+) of weather: succeeded").unwrap();
    let promoted_re = regex::Regex::new(r"(?m)^promoted (sha256:[0-9a-f]{64}) to prod").unwrap();
    let mut i = 0;
    while i < lines.len() {
        let original = &lines[i];
        i += 1;
        if let Some((_, why)) = NOT_RUN.iter().find(|(p, _)| original.starts_with(p)) {
            eprintln!("not run (needs {why}): {original}");
            continue;
        }
        let decision = ["modelship approve ", "modelship reject "].iter().any(|p| original.starts_with(p));
        if decision {
            parked += 1;
            let id = format!("gated-{parked}");
            let line = services.substitute(original, &sim, &webhook).replace("RUN_ID", &id);
            let mut run = park(&shell, gated, &id);
            eprintln!("$ {line}");
            ok(&shell(&line).output().unwrap());
            // The run goes on: approved, it promotes; rejected, its stage fails.
            let status = run.wait().unwrap();
            let expected = if original.starts_with("modelship approve ") { 0 } else { 1 };
            assert_eq!(status.code(), Some(expected), "the run decided on by `{line}`");
            continue;
        }
        let mut line = services.substitute(original, &sim, &webhook);
        for (placeholder, value) in [("RUN_ID", &run_id), ("DIGEST", &digest)] {
            if line.contains(placeholder) {
                let value = value.as_ref().unwrap_or_else(|| panic!("`{original}` comes before the first run"));
                line = line.replace(placeholder, value);
            }
        }
        eprintln!("$ {line}");
        if original.starts_with("modelship sim serve") {
            // Runs until stopped: the lines after it (kubectl) run against it.
            let mut server = shell(&line).stdout(Stdio::piped()).spawn().unwrap();
            let mut out = BufReader::new(server.stdout.take().unwrap());
            let mut seen = String::new();
            while !seen.contains("kubeconfig:") {
                let mut l = String::new();
                assert!(out.read_line(&mut l).unwrap() > 0, "`{line}` ended before it was ready: {seen}");
                seen.push_str(&l);
            }
            while i < lines.len() && !lines[i].starts_with("modelship ") {
                let client = services.substitute(&lines[i], &sim, &webhook);
                eprintln!("$ {client}");
                ok(&shell(&client).output().unwrap());
                i += 1;
            }
            support::signal(server.id(), "TERM");
            let status = server.wait().unwrap();
            assert!(status.success(), "`{line}` on SIGTERM: {status}");
            continue;
        }
        if original.contains("modelship serve ") {
            // bash execs a lone command: the signal reaches modelship.
            let mut server = shell(&line).spawn().unwrap();
            support::registry::wait_for_port(&webhook, &mut server, "modelship serve");
            support::signal(server.id(), "TERM");
            let status = server.wait().unwrap();
            assert!(status.success(), "`{line}` on SIGTERM: {status}");
            continue;
        }
        let stdout = ok(&shell(&line).output().unwrap());
        let is_sim_run = original.starts_with("modelship run ")
            && original.contains("--sim")
            && !original.contains("--until")
            && !original.contains("--dry-run");
        if is_sim_run && run_id.is_none() {
            run_id = Some(run_re.captures(&stdout).unwrap_or_else(|| panic!("no run id in:\n{stdout}"))[1].to_string());
            digest = Some(
                promoted_re.captures(&stdout).unwrap_or_else(|| panic!("no promotion in:\n{stdout}"))[1].to_string(),
            );
            let records = model_process_records(&sim);
            assert!(!records.is_empty(), "the run deployed a model, so the sim recorded its process group");
            assert!(wait_no_processes_under(&sim).is_empty(), "the run stopped its model processes");
            records_after_run = Some(records);
        }
        let read_only =
            ["modelship status ", "modelship history ", "modelship report "].iter().any(|p| original.starts_with(p));
        if read_only && original.contains("--sim") {
            // A starting Seldon controller first clears these records, then
            // restarts each model: neither may happen for a read.
            let before = records_after_run.as_ref().expect("a read-only example before the first run");
            assert_eq!(&model_process_records(&sim), before, "`{line}` touched the model processes");
            assert!(processes_under(&sim).is_empty(), "`{line}` left a process running");
        } else if records_after_run.is_some() && original.contains("--sim") {
            // A command that writes runs the controllers: its restarts are its own.
            assert!(wait_no_processes_under(&sim).is_empty(), "`{line}` left a process running");
            records_after_run = Some(model_process_records(&sim));
        }
    }
    assert!(run_id.is_some(), "no example made a run");
    assert!(work.join("report.html").is_file() && work.join("report.md").is_file());
    let copied = support::registry::raw_manifest(&format!("{}/ns/app:prod", services.registries[1].addr));
    assert_eq!(copied, support::registry::raw_manifest(&format!("{}/ns/app:v1", services.registries[0].addr)));
    assert!(repo().join("pipelines/weather.yaml").is_file());
}
