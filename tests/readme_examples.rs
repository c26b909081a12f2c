//! Every `modelship` command in the README's `sh` blocks (the walkthrough
//! has its own test) runs as written against the sims the first command
//! leaves, with only the sim directory, the run id and output paths put in.
//! The few that need something the sim cannot stand in for are listed in
//! `ELSEWHERE` with the test that covers them; a new README command that is
//! neither run here nor listed fails this test.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::cli::{modelship, weather_fixture};
use support::sim::ServedSim;
use support::{repo, text};

/// README commands not run here, and where they are exercised instead.
const ELSEWHERE: &[(&str, &str)] = &[
    (
        "modelship trigger --event push.json --event-type 'Push Hook' --repo . --pipelines pipelines --sim /tmp/modelship-sim --delivery 8a3c0f3e-1d2b-4c5e-9f00-0123456789ab",
        "tests/triggers_sim.rs (needs a Git checkout and a push payload for it)",
    ),
    (
        "modelship serve --listen 127.0.0.1:8080 --repo . --pipelines pipelines --sim /tmp/modelship-sim",
        "tests/triggers_sim.rs (a server that runs until stopped)",
    ),
    (
        "modelship trigger --event push.json --repo . --pipelines pipelines --dry-run",
        "tests/triggers.rs (needs a Git checkout and a push payload for it)",
    ),
    (
        "modelship serve --dispatch tekton --listen 0.0.0.0:8080 --repo /srv/models --pipelines /srv/models/pipelines --dispatch-namespace ci --dispatch-kubeconfig-secret modelship-kubeconfig",
        "tests/tekton_dispatch.rs (a server that needs a cluster serving tekton.dev/v1)",
    ),
    (
        "modelship serve --listen 0.0.0.0:8080 --repo /srv/models --pipelines /srv/models/pipelines",
        "tests/webhook_server.rs (a server that runs until stopped)",
    ),
    (
        "modelship verify docker://registry.example.com/models-prod/weather@sha256:... --key keys/cosign.pub",
        "tests/signing.rs (needs a signed image in a registry)",
    ),
    (
        "modelship run pipelines/weather.yaml --park",
        "tests/approvals.rs (a pipeline with an approval gate, on a cluster)",
    ),
    (
        "modelship approve RUN_ID -f pipelines/weather.yaml --comment 'report read'",
        "tests/approvals.rs (approvers with their own cluster identities)",
    ),
    ("modelship run pipelines/weather.yaml --resume RUN_ID", "tests/approvals.rs (a parked, approved run)"),
    (
        "modelship run pipelines/weather-mlflow.yaml --sim /tmp/modelship-sim",
        "tests/model_sources.rs (needs an MLflow tracking server with a registered version)",
    ),
    (
        "modelship model push ./weather-model s3://models/weather/ --exclude '**/*.ipynb' -o json",
        "tests/model_sources.rs (needs an S3 endpoint and credentials)",
    ),
];

/// The `modelship ...` lines of the README's `sh` blocks outside the
/// walkthrough, continuation lines joined, comments and `VAR=...` prefixes dropped.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut out = Vec::new();
    let (mut in_sh, mut in_walkthrough) = (false, false);
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("## ") {
            in_walkthrough = line.starts_with("## Walkthrough");
        }
        match line.trim_end() {
            "```sh" if !in_sh => in_sh = true,
            "```" if in_sh => in_sh = false,
            l if in_sh && !in_walkthrough => {
                pending.push_str(l.trim_end_matches('\\'));
                if l.ends_with('\\') {
                    continue;
                }
                let full = std::mem::take(&mut pending);
                let command = full.split(" # ").next().unwrap().trim();
                let words: Vec<&str> = command.split_whitespace().skip_while(|w| w.contains('=')).collect();
                if words.first() == Some(&"modelship") {
                    out.push(words.join(" "));
                }
            }
            _ => {}
        }
    }
    out
}

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn sim(&self) -> String {
        self.dir.path().join("sim").display().to_string()
    }

    fn command(&self, args: &[String]) -> Command {
        let mut cmd = modelship();
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path().join("cache"))
            .env("COSIGN_PASSWORD", "readme-example-password")
            .stdin(Stdio::null());
        cmd
    }

    fn ok(&self, args: &[String]) -> String {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "modelship {} exited {:?}\n{}\n{}",
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn run_weather(&self) -> String {
        let args: Vec<String> =
            ["run", "pipelines/weather.yaml", "--sim", &self.sim()].iter().map(|s| s.to_string()).collect();
        let summary = self.ok(&args);
        let last = summary.lines().last().unwrap();
        assert!(last.ends_with("of weather: succeeded (state: configmaps in dev/models-dev)"), "{summary}");
        last.split_whitespace().nth(1).unwrap().to_string()
    }
}

#[test]
fn every_readme_command_runs_as_written() {
    let commands = readme_commands();
    assert!(commands.len() >= 10, "{commands:#?}");
    let sandbox = Sandbox { dir: tempfile::tempdir().unwrap() };
    weather_fixture(sandbox.dir.path(), |y| y);
    // Two runs with different models, so prod has a digest to roll back to:
    // the second adds an object to the bucket, as a new upload would.
    let first = sandbox.run_weather();
    std::fs::write(sandbox.dir.path().join("sim/s3/models/weather/NOTES.md"), "retrained\n").unwrap();
    let second = sandbox.run_weather();
    assert_ne!(first, second);

    let mut ran = 0;
    for command in &commands {
        if let Some((_, why)) = ELSEWHERE.iter().find(|(c, _)| c == command) {
            eprintln!("not run here: {command} ({why})");
            continue;
        }
        let line = command
            .replace("/tmp/modelship-sim", &sandbox.sim())
            .replace("RUN_ID", &first)
            .replace("20261125-064117-yblk", &first)
            .replace("--out report.html", &format!("--out {}", sandbox.dir.path().join("report.html").display()));
        let args: Vec<String> = line.split_whitespace().skip(1).map(str::to_string).collect();
        if args.first().map(String::as_str) == Some("sim") {
            // A server: it must come up on the persisted data and answer.
            let data = args.iter().skip_while(|a| *a != "--data").nth(1).unwrap();
            let served = ServedSim::serve(Path::new(data)).command(modelship()).start();
            assert!(served.kubectl(&["get", "namespaces"]).contains("models-prod"), "{command}");
        } else {
            sandbox.ok(&args);
        }
        ran += 1;
    }
    for (listed, _) in ELSEWHERE {
        assert!(commands.iter().any(|c| c == listed), "ELSEWHERE names a command the README no longer has: {listed}");
    }
    assert_eq!(ran + ELSEWHERE.len(), commands.len());
    assert!(sandbox.dir.path().join("report.html").is_file());
    assert!(sandbox.dir.path().join("keys/cosign.pub").is_file());
}
