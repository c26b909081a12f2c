//! The mission end to end, the way a new user meets it: the README's first
//! command in a fresh directory (a copy of the repository's pipelines and
//! fixtures, an empty cache), then the promoted digest read back from the
//! persisted simulated clusters with kubectl and skopeo, the run's HTML
//! report rendered in headless Chromium, and `status`/`history` against the
//! same sims. Slow the first time on a machine: the sim's Seldon controller
//! needs a seldon-core venv (`scripts/setup.d/60-sim-venv.sh` prepares it).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::sim::ServedSim;
use support::{copy_tree, repo, tools};

/// The README's first command; `the_readme_commands_are_the_tested_ones`
/// holds the README to it.
const FIRST_COMMAND: &str = "cargo run --release -- run pipelines/weather.yaml --sim /tmp/modelship-sim";
/// The README's second command, the one `.ci/run` calls.
const SECOND_COMMAND: &str = "scripts/test.sh";

/// A fresh user's directory: the repository's pipelines and fixtures, an
/// empty XDG cache (run workspaces), the prepared venv cache when there is one.
struct User {
    dir: tempfile::TempDir,
}

impl User {
    fn new() -> User {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["pipelines", "fixtures"] {
            copy_tree(&repo().join(sub), &dir.path().join("repo").join(sub));
        }
        User { dir }
    }

    fn checkout(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn sim(&self) -> PathBuf {
        self.dir.path().join("sim")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(support::BIN);
        c.current_dir(self.checkout()).env("XDG_CACHE_HOME", self.dir.path().join("cache")).stdin(Stdio::null());
        let venvs = tools().join("sim-venvs");
        if venvs.is_dir() {
            c.env("MODELSHIP_SIM_VENV_CACHE", venvs);
        }
        c
    }

    fn modelship(&self, args: &[&str]) -> Output {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "modelship {args:?} exited {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `modelship sim serve` on one environment's persisted data.
    fn serve(&self, env: &str) -> ServedSim {
        let kubeconfig = self.dir.path().join(format!("{env}.kubeconfig"));
        ServedSim::serve(&self.sim().join(env)).command(self.command()).kubeconfig(kubeconfig).start()
    }
}

/// The arguments the README's first command gives modelship, with the sim
/// directory moved into the test's fresh directory.
fn first_command_args(sim: &Path) -> Vec<String> {
    let args =
        FIRST_COMMAND.strip_prefix("cargo run --release -- ").expect("the first command runs modelship via cargo");
    let mut args: Vec<String> = args.split_whitespace().map(str::to_string).collect();
    let at = args.iter().position(|a| a == "--sim").expect("the first command uses --sim") + 1;
    args[at] = sim.display().to_string();
    args
}

fn digest_of(image: &str) -> &str {
    image.rsplit_once('@').map(|(_, d)| d).unwrap_or_else(|| panic!("{image} is not pinned by digest"))
}

#[test]
fn the_first_command_takes_the_weather_model_from_s3_to_prod() {
    let user = User::new();
    let args = first_command_args(&user.sim());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let out = user.modelship(&arg_refs);
    eprintln!("first command took {:.1}s", started.elapsed().as_secs_f64());
    let summary = String::from_utf8(out.stdout).unwrap();

    // The summary: every stage of the pipeline succeeded, every case passed.
    let pipeline = modelship::spec::load(&repo().join("pipelines/weather.yaml")).unwrap().pipeline;
    for stage in &pipeline.spec.stages {
        let row = summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(stage.name.as_str()))
            .unwrap_or_else(|| panic!("no row for stage {} in\n{summary}", stage.name));
        assert_eq!(row.split_whitespace().nth(1), Some("succeeded"), "{summary}");
    }
    let last = summary.lines().last().unwrap();
    assert!(last.starts_with("run ") && last.contains(" of weather: succeeded"), "{summary}");
    let run_id = last.split_whitespace().nth(1).unwrap().to_string();
    let check = pipeline.spec.stages.iter().find(|s| s.uses == "prediction-check").expect("a check stage");
    let cases = check.with["cases"].as_array().unwrap().len();
    assert!(summary.contains(&format!("check `check` in dev: {cases}/{cases} cases passed")), "{summary}");
    assert!(summary.contains("SLO p95 <= 250ms: pass"), "{summary}");
    let promoted = summary.lines().find(|l| l.starts_with("promoted ")).expect("a promoted line");
    let summary_digest = promoted.split_whitespace().nth(1).unwrap().to_string();
    assert!(promoted.contains(" to prod: ") && promoted.ends_with(&format!("/models-prod/weather@{summary_digest}")));

    // The run record, from the dev sim's ConfigMaps: the digest deployed and checked in dev.
    let sim = user.sim();
    let sim = sim.to_str().unwrap();
    let out = user.modelship(&["status", &run_id, "-f", "pipelines/weather.yaml", "--sim", sim, "--output", "json"]);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    let stage = |name: &str| record["stages"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone();
    let checked = stage("deploy")["outputs"]["deployedDigest"].as_str().unwrap().to_string();
    let report = &stage("check")["outputs"]["report"];
    assert_eq!(report["passed"], true);
    assert_eq!(report["environment"], "dev");
    assert_eq!(checked, summary_digest, "the summary's digest is the one deployed and checked in dev");

    // Read back from the persisted clusters, as an operator would.
    {
        let dev = user.serve("dev");
        let image = dev.kubectl(&[
            "get",
            "seldondeployment",
            "weather",
            "-n",
            "models-dev",
            "-o",
            "jsonpath={.spec.predictors[0].componentSpecs[0].spec.containers[0].image}",
        ]);
        assert_eq!(digest_of(&image), checked, "dev runs {image}");
        // The reference the sim recorded resolves: a restarted sim listens where it did.
        assert!(image.starts_with(&format!("{}/", dev.address)), "{image} vs {}", dev.address);
        assert_eq!(dev.skopeo_reference(&image), checked);
        // The build pushes by digest (no registry tag in dev): skopeo fetches
        // that manifest and verifies it hashes to the digest.
        assert_eq!(dev.skopeo_digest(&format!("models-dev/weather@{checked}")), checked);
    }
    {
        let prod = user.serve("prod");
        let tagged = prod.kubectl(&[
            "get",
            "imagestream",
            "weather",
            "-n",
            "models-prod",
            "-o",
            "jsonpath={.spec.tags[?(@.name==\"latest\")].from.name}",
        ]);
        assert_eq!(digest_of(&tagged), checked, "prod's ImageStream tag latest is {tagged}");
        assert_eq!(prod.skopeo_reference(&tagged), checked);
        assert_eq!(
            prod.skopeo_digest("models-prod/weather:latest"),
            checked,
            "prod registry serves the checked digest"
        );
    }

    // The report, rendered by a browser.
    let page = user.dir.path().join("report.html");
    user.modelship(&[
        "report",
        &run_id,
        "-f",
        "pipelines/weather.yaml",
        "--sim",
        sim,
        "--format",
        "html",
        "--out",
        page.to_str().unwrap(),
    ]);
    let dom = support::chromium::rendered_dom(&page);
    let text =
        |marker: &str| support::chromium::text_of(&dom, marker).unwrap_or_else(|| panic!("no {marker} in\n{dom}"));
    assert_eq!(text("id=\"run-id\""), run_id);
    assert_eq!(text("id=\"run-status\""), "succeeded");
    let p95 = modelship::checks::format_ms(report["load"]["p95Ms"].as_f64().unwrap());
    assert_eq!(text("class=\"num p95\""), p95);
    for case in report["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        assert!(dom.contains(&format!("<td class=\"case-name\">{name}</td>")), "case {name} missing");
    }
    let envs = text("id=\"environments\"");
    assert!(envs.contains(&format!("dev{checked}verified")), "{envs}");
    assert!(envs.contains(&format!("prod{checked}promoted")), "{envs}");

    // status and history read the same records from the sims.
    let out = user.modelship(&["status", "-f", "pipelines/weather.yaml", "--sim", sim]);
    let list = String::from_utf8(out.stdout).unwrap();
    let row = list.lines().find(|l| l.starts_with(&run_id)).unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains(" succeeded ") && row.trim_end().ends_with("6/6"), "{row}");
    let out = user.modelship(&["history", "weather", "-f", "pipelines/weather.yaml", "--sim", sim]);
    let history = String::from_utf8(out.stdout).unwrap();
    let short = &checked[..checked.len().min("sha256:".len() + 12)];
    let newest = history.lines().nth(1).unwrap_or_default();
    for field in ["prod", "promoted", short, run_id.as_str(), "from dev"] {
        assert!(newest.contains(field), "newest ledger entry lacks {field}:\n{history}");
    }
    let out = user.modelship(&["history", "weather", "-f", "pipelines/weather.yaml", "--sim", sim, "--output", "json"]);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(entries.iter().any(|e| e["action"] == "verified" && e["environment"] == "dev" && e["digest"] == checked));

    // Guards a second run of the same command: it reuses the first run's
    // build, whose image names the dev sim's registry by address, so the
    // restarted sims must come back where they were.
    let out = user.modelship(&arg_refs);
    let again = String::from_utf8(out.stdout).unwrap();
    assert!(again.lines().last().unwrap().contains(" of weather: succeeded"), "{again}");
    assert!(again.contains(&format!("promoted {checked} to prod: ")) && again.contains("(unchanged)"), "{again}");
}

/// The README's two commands are the ones tested: the first is what the
/// test above runs, the second what `.ci/run` calls.
#[test]
fn the_readme_commands_are_the_tested_ones() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut commands = Vec::new();
    let mut fenced = false;
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let line = line.trim();
        if fenced && !line.is_empty() && !line.starts_with('#') {
            commands.push(line.to_string());
        }
    }
    assert_eq!(commands.get(..2), Some(&[FIRST_COMMAND.to_string(), SECOND_COMMAND.to_string()][..]));
    let ci = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    let calls: Vec<&str> = ci.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert!(
        calls.contains(&format!("exec {SECOND_COMMAND}").as_str()),
        ".ci/run does not call {SECOND_COMMAND}:\n{ci}"
    );
    assert!(repo().join(SECOND_COMMAND).is_file());
}
