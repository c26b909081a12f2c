//! `modelship run FILE ...`

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::output::{OutputFormat, structured};
use super::session::TargetArgs;
use super::simulated::{self, SimClusters, SimOptions};
use super::{CommandError, GlobalArgs, fail};
use crate::engine::{self, EngineError, Plan, RunOptions, RunSummary};
use crate::error::{ExitClass, HasExitClass};
use crate::secret::mask;
use crate::state::Status;

/// Run a pipeline.
#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship run pipelines/weather.yaml --sim /tmp/sim\n  modelship run pipelines/weather.yaml --sim /tmp/sim --until render --workspace ./ws\n  modelship run pipelines/weather.yaml --sim /tmp/sim --dry-run -o yaml\n  modelship run pipelines/weather.yaml --sim /tmp/sim -n dev=models-dev-2 --dry-run\n  modelship run pipelines/weather.yaml --sim /tmp/sim --state-dir ./state --until render"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship run pipelines/weather.yaml --kubeconfig ~/.kube/config\n  modelship run pipelines/weather.yaml --until render --workspace ./ws\n  modelship run pipelines/weather.yaml --context dev=dev-cluster -n dev=models-dev-2 --dry-run -o yaml"
    )
)]
pub struct RunArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Set a pipeline parameter (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Use this run id instead of a generated one.
    #[arg(long, value_name = "ID", conflicts_with = "resume")]
    pub run_id: Option<String>,
    /// Resume run ID: skip stages that succeeded with unchanged inputs.
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Keep the run's files (model, build context) in DIR.
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Run against simulated clusters (one per environment) kept in DIR, as
    /// the `modelship` service account with the shipped RBAC.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kubeconfig", "contexts", "registries", "model_endpoint", "model_secret"])]
    #[cfg_attr(not(feature = "sim"), arg(hide = true))]
    pub sim: Option<PathBuf>,
    /// With --sim: apply these RBAC manifests instead of .tekton/rbac/modelship.yaml.
    #[arg(long, value_name = "FILE", requires = "sim")]
    #[cfg_attr(not(feature = "sim"), arg(hide = true))]
    pub sim_rbac: Option<PathBuf>,
    /// With --sim: the sims inject this failure (repeatable; the rules of
    /// `modelship sim serve --fault`, e.g. `503/3`, `cut-body/2=registry/blobs`)
    /// from the run's first request on (their setup is not faulted). Counts:
    /// `DIR/ENV/faults.json` after the run.
    #[arg(long, value_name = "RULE", requires = "sim")]
    #[cfg_attr(not(feature = "sim"), arg(hide = true))]
    pub fault: Vec<simulated::FaultRule>,
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Use registry HOST for environment ENV (`cluster`: its integrated registry).
    #[arg(long = "registry", value_name = "ENV=HOST")]
    pub registries: Vec<String>,
    /// Read the model from this S3 endpoint instead of `spec.model.endpoint`.
    #[arg(long, value_name = "URL")]
    pub model_endpoint: Option<String>,
    /// Allow a plain-HTTP --model-endpoint.
    #[arg(long, requires = "model_endpoint")]
    pub model_insecure: bool,
    /// Read the model's S3 credentials from this Secret instead of `spec.model.credentialsSecret`.
    #[arg(long, value_name = "NAME")]
    pub model_secret: Option<String>,
    /// kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Keep run state in this directory instead of ConfigMaps.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print the resolved plan and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format: `json`/`yaml` end with one object describing the run
    /// (with --dry-run: the plan); `wide` is text.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Write Tekton results (run-id, status, IMAGE_URL, IMAGE_DIGEST) here.
    #[arg(long, value_name = "DIR", env = "MODELSHIP_RESULTS_DIR")]
    pub results_dir: Option<PathBuf>,
    /// Extra run label (repeatable), e.g. `commit=abc123`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// End the process when the run reaches an approval gate: the run is
    /// recorded as waiting-approval, its lock released, exit 0; continue it
    /// with `--resume RUN_ID` once approved.
    #[arg(long)]
    pub park: bool,
    /// How long to wait while another run of the same model holds its run
    /// lock (`0s`: fail at once, exit 1).
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = humantime::parse_duration)]
    pub lock_wait: std::time::Duration,
    /// How long the run lock outlives a runner that stops renewing it (it
    /// is renewed every third of this while the run lives).
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub lock_ttl: std::time::Duration,
}

pub async fn run(args: RunArgs, g: &GlobalArgs) -> Result<(), CommandError> {
    #[cfg(not(feature = "sim"))]
    if args.sim.is_some() {
        return Err(super::without_sim::unavailable("--sim"));
    }
    let sets = parse_pairs("--set", &args.sets)?;
    let labels: BTreeMap<String, String> = parse_pairs("--label", &args.labels)?.into_iter().collect();
    let cancel = CancellationToken::new();
    let mut opts = RunOptions {
        pipeline: args.file.clone(),
        sets,
        run_id: args.run_id.clone(),
        resume: args.resume.clone(),
        until: args.until.clone(),
        workspace: args.workspace.clone(),
        kubeconfig: args.kubeconfig.clone(),
        state_dir: args.state_dir.clone(),
        stages_dir: g.stages_dir.clone(),
        labels,
        dry_run: args.dry_run,
        interactive: std::io::stderr().is_terminal() && g.log_format.is_text() && !g.quiet,
        cancel: cancel.clone(),
        overrides: overrides(&args)?,
        park: args.park,
        lock_wait: Some(args.lock_wait),
        lock_ttl: Some(args.lock_ttl.max(std::time::Duration::from_secs(1))),
        started_by: None,
    };

    if args.dry_run {
        if args.sim.is_some() {
            let pipeline = crate::spec::load(&args.file).map_err(fail)?.pipeline;
            opts.overrides = simulated::overrides_for(&pipeline, &opts.overrides);
        }
        let plan = engine::plan(&opts).map_err(fail)?;
        let text = structured(args.output, &plan)?.unwrap_or_else(|| plan_text(&plan));
        println!("{}", mask(&text));
        return Ok(());
    }

    let sims = match &args.sim {
        Some(dir) => {
            let sim_opts = SimOptions {
                serve_s3: true,
                rbac: args.sim_rbac.clone(),
                faults: args.fault.clone(),
                params: opts.sets.clone(),
                overrides: opts.overrides.clone(),
                read_only: false,
            };
            let sims = SimClusters::start(&args.file, dir, &sim_opts).await?;
            opts.kubeconfig = Some(sims.kubeconfig.clone());
            opts.overrides = sims.overrides.clone();
            Some(sims)
        }
        None => None,
    };
    let signals = tokio::spawn(cancel_on_signals(cancel.clone()));
    let result = engine::run(opts).await;
    signals.abort();
    if let Some(sims) = sims {
        sims.shutdown().await;
    }

    let summary = match &result {
        Ok(s) => Some(s),
        Err(EngineError::StageFailed { summary, .. } | EngineError::Cancelled { summary, .. }) => Some(&**summary),
        Err(_) => None,
    };
    // In a Tekton step without --results-dir, results go where Tekton reads them.
    let results_dir = args.results_dir.clone().or_else(|| {
        let tekton = Path::new(TEKTON_RESULTS);
        tekton.is_dir().then(|| tekton.to_path_buf())
    });
    if let (Some(dir), Some(summary)) = (&results_dir, summary) {
        write_results(dir, summary).map_err(|e| CommandError::new(ExitClass::Failed, e))?;
    }
    match (args.output.is_structured(), summary) {
        (true, Some(s)) => println!("{}", mask(&structured(args.output, s)?.unwrap_or_default())),
        (true, None) => {
            let err = result.as_ref().err().map(|e| crate::error::chain(e)).unwrap_or_default();
            let class = result.as_ref().err().map_or(ExitClass::Failed, |e| e.exit_class());
            let obj = serde_json::json!({ "status": "error", "error": err, "exitCode": class.code() });
            println!("{}", mask(&structured(args.output, &obj)?.unwrap_or_default()));
        }
        (false, Some(s)) => {
            println!("{}", mask(&summary_table(s, &rerun_args(&args))));
            if s.status == Status::WaitingApproval {
                println!("{}", mask(&parked_text(s, &args)));
            }
        }
        (false, None) => {}
    }
    result.map(|_| ()).map_err(fail)
}

/// `KEY=VALUE` pairs; anything else is a usage error (exit 2).
pub fn parse_pairs(flag: &str, raw: &[String]) -> Result<Vec<(String, String)>, CommandError> {
    raw.iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(CommandError::usage(format!("{flag} {}: expected KEY=VALUE", mask(item)))),
        })
        .collect()
}

/// The `--context`, `-n/--namespace`, `--registry` and `--model-*` flags.
fn overrides(args: &RunArgs) -> Result<crate::spec::Overrides, CommandError> {
    Ok(crate::spec::Overrides {
        registries: parse_pairs("--registry", &args.registries)?
            .into_iter()
            .map(|(env, host)| (env, crate::spec::RegistryOverride::parse(&host)))
            .collect(),
        model_endpoint: args.model_endpoint.clone(),
        model_insecure: args.model_insecure,
        model_secret: args.model_secret.clone(),
        ..args.targets.overrides()?
    })
}

/// SIGINT or SIGTERM (Tekton's timeout) cancels the run, which records the
/// running stage as cancelled; a second signal exits at once.
async fn cancel_on_signals(cancel: CancellationToken) {
    let mut first = true;
    loop {
        let got = wait_for_signal().await;
        if !first {
            eprintln!("second {got}: exiting without waiting for the run to record its state");
            std::process::exit(130);
        }
        first = false;
        tracing::warn!(signal = got, "{got} received: cancelling the run (send again to exit at once)");
        cancel.cancel();
    }
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

fn plan_text(plan: &Plan) -> String {
    let mut out = format!("Plan for pipeline `{}`, run {}\nstate: {}\n", plan.pipeline, plan.run_id, plan.state);
    for (i, stage) in plan.stages.iter().enumerate() {
        out.push_str(&format!("\n{}. {} ({})\n", i + 1, stage.name, stage.uses));
        if !stage.with.is_empty() {
            out.push_str("   with:\n");
            let yaml = crate::spec::yaml::to_string(&stage.with).unwrap_or_default();
            for line in yaml.lines() {
                out.push_str(&format!("     {line}\n"));
            }
        }
        for t in &stage.targets {
            out.push_str(&format!("   -> {t}\n"));
        }
    }
    out.push_str("\nDry run: nothing was written.");
    out
}

use crate::report::duration_text;

/// Rows of cells as aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(c, s)| format!("{s:<w$}", w = widths[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn stage_duration(ms: Option<u64>) -> String {
    duration_text(ms)
}

/// What `resume with:` repeats so the resumed run finds the same clusters.
fn rerun_args(args: &RunArgs) -> String {
    let mut out = args.file.display().to_string();
    for (flag, value) in [
        ("--sim", &args.sim),
        ("--sim-rbac", &args.sim_rbac),
        ("--kubeconfig", &args.kubeconfig),
        ("--workspace", &args.workspace),
    ] {
        if let Some(v) = value {
            out.push_str(&format!(" {flag} {}", v.display()));
        }
    }
    out
}

/// What to do with a parked run: approve it, then resume it.
fn parked_text(s: &RunSummary, args: &RunArgs) -> String {
    let mut place = format!("-f {}", args.file.display());
    for (flag, value) in [("--sim", &args.sim), ("--kubeconfig", &args.kubeconfig), ("--state-dir", &args.state_dir)] {
        if let Some(v) = value {
            place.push_str(&format!(" {flag} {}", v.display()));
        }
    }
    let mut rerun = rerun_args(args);
    if let Some(dir) = &args.state_dir {
        rerun.push_str(&format!(" --state-dir {}", dir.display()));
    }
    format!(
        "parked at its approval gate; approve it with\n  modelship approve {id} {place} --comment TEXT\nthen continue it with\n  modelship run {rerun} --resume {id}",
        id = s.run_id
    )
}

fn summary_table(s: &RunSummary, rerun: &str) -> String {
    let mut rows = vec![vec!["STAGE".into(), "STATUS".into(), "ATTEMPTS".into(), "DURATION".into()]];
    for st in &s.stages {
        rows.push(vec![st.name.clone(), st.status.to_string(), st.attempts.to_string(), duration_text(st.duration_ms)]);
    }
    let mut out = table(&rows);
    out.push_str(&checks_text(&s.stages));
    for p in crate::report::promotions(&s.stages) {
        out.push_str(&format!("\npromoted {} to {}: {}", p.digest, p.environment, p.image));
        match &p.previous_digest {
            Some(prev) if *prev == p.digest => out.push_str(" (unchanged)"),
            Some(prev) => out.push_str(&format!(" (was {prev})")),
            None => {}
        }
        out.push_str(&format!("\n  provenance: {}", p.provenance));
    }
    out.push_str(&format!("\nrun {} of {}: {} (state: {})", s.run_id, s.pipeline, s.status, s.state));
    if let Some(ws) = &s.workspace {
        out.push_str(&format!("\nworkspace: {}", ws.display()));
    }
    if matches!(s.status, Status::Failed | Status::Cancelled) {
        out.push_str(&format!("\nresume with: modelship run {rerun} --resume {}", s.run_id));
    }
    out
}

/// Each check stage's cases (result and the value found) and its load
/// percentiles against the SLO, after the stage table.
fn checks_text(stages: &[crate::state::StageRecord]) -> String {
    use crate::checks::format_ms;
    let mut out = String::new();
    for c in crate::report::checks(stages) {
        let r = &c.report;
        let env = r.environment.as_deref().map(|e| format!(" in {e}")).unwrap_or_default();
        let passed = r.cases.iter().filter(|k| k.passed).count();
        out.push_str(&format!("\ncheck `{}`{env}: {passed}/{} cases passed\n", c.stage, r.cases.len()));
        let mut rows = vec![vec!["  CASE".into(), "RESULT".into(), "ACTUAL".into()]];
        for k in &r.cases {
            let actual = match &k.error {
                Some(e) => e.lines().next().unwrap_or_default().to_string(),
                None => k
                    .checks
                    .iter()
                    .map(|ch| format!("{} = {}", ch.path, crate::report::actual_text(ch.actual.as_ref())))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            rows.push(vec![format!("  {}", k.name), if k.passed { "pass" } else { "FAIL" }.into(), actual]);
        }
        out.push_str(&table(&rows));
        if let Some(l) = &r.load {
            let p = |v: Option<f64>| v.map_or_else(|| "-".into(), format_ms);
            out.push_str(&format!(
                "  load: {} requests at concurrency {}: p50 {}, p95 {}, p99 {}, error rate {:.2}%\n",
                l.requests,
                l.concurrency,
                p(l.p50_ms),
                p(l.p95_ms),
                p(l.p99_ms),
                l.error_rate * 100.0
            ));
        }
        for v in &r.slo {
            let verdict = if v.passed { "pass" } else { "FAIL" };
            out.push_str(&format!("  SLO {} {}: {verdict} (measured {})\n", v.objective, v.limit, v.actual));
        }
    }
    out
}

const TEKTON_RESULTS: &str = "/tekton/results";

/// Tekton caps all results of a step together at 4096 bytes.
const RESULTS_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("Tekton results would take {0} bytes, over the {RESULTS_LIMIT}-byte limit")]
    TooLarge(usize),
    #[error("cannot write Tekton result {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The Tekton results of a run: `run-id`, `status`, `image-digest`, and
/// `IMAGE_URL`/`IMAGE_DIGEST` for Tekton Chains, from the last promote stage
/// or else the last build stage.
pub fn results(s: &RunSummary) -> Vec<(&'static str, String)> {
    let (image, digest) = image_and_digest(&s.stages);
    // Chains wants the repository in IMAGE_URL and the digest apart.
    let url = image.split_once('@').map_or(image.as_str(), |(repo, _)| repo).to_string();
    vec![
        ("run-id", s.run_id.clone()),
        ("status", s.status.to_string()),
        ("image-digest", digest.clone()),
        ("IMAGE_URL", url),
        ("IMAGE_DIGEST", digest),
    ]
}

/// The image a run made and its digest (empty when none): the last
/// succeeded promote stage's, else the last build's.
pub fn image_and_digest(stages: &[crate::state::StageRecord]) -> (String, String) {
    let image_stage = ["promote", "openshift-build"].iter().find_map(|kind| {
        stages
            .iter()
            .rev()
            .find(|st| st.uses == *kind && st.status == Status::Succeeded && st.outputs.contains_key("image"))
    });
    let out = |key: &str| -> Option<String> {
        image_stage.and_then(|st| st.outputs.get(key)).and_then(|v| v.as_str()).map(str::to_string)
    };
    let image = out("image").unwrap_or_default();
    let digest = out("imageDigest")
        .or_else(|| out("digest"))
        .or_else(|| image.split_once('@').map(|(_, d)| d.to_string()))
        .unwrap_or_default();
    (image, digest)
}

pub fn write_results(dir: &Path, s: &RunSummary) -> Result<(), ResultsError> {
    let files = results(s);
    let total: usize = files.iter().map(|(_, v)| v.len()).sum();
    if total > RESULTS_LIMIT {
        return Err(ResultsError::TooLarge(total));
    }
    std::fs::create_dir_all(dir).map_err(|source| ResultsError::Io { path: dir.to_path_buf(), source })?;
    for (name, value) in files {
        let path = dir.join(name);
        std::fs::write(&path, value).map_err(|source| ResultsError::Io { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::state::StageRecord;

    fn check_report() -> serde_json::Value {
        json!({
            "endpoint": "http://127.0.0.1:9/api/v1.0/predictions", "protocol": "seldon", "environment": "dev",
            "passed": false,
            "cases": [
                {"name": "seed request", "passed": true, "status": 200, "expectedStatus": 200, "latencyMs": 30.0,
                 "checks": [{"path": "meta.tags.weather_state", "expect": "= \"mild\"", "passed": true, "actual": "mild"}]},
                {"name": "hot day", "passed": false, "status": 200, "expectedStatus": 200, "latencyMs": 9.5,
                 "checks": [{"path": "meta.tags.weather_state", "expect": "= \"hot\"", "passed": false, "actual": "mild"}]},
                {"name": "down", "passed": false, "expectedStatus": 200, "latencyMs": 1.0, "checks": [],
                 "error": "connection refused\nsecond line"}
            ],
            "load": {"request": "seed request", "requests": 200, "concurrency": 8, "succeeded": 200, "failed": 0,
                     "errorRate": 0.0, "p50Ms": 28.8, "p95Ms": 34.8, "p99Ms": 38.2, "maxMs": 40.0,
                     "throughput": 270.0, "durationMs": 740.0},
            "slo": [{"objective": "p95", "limit": "<= 250ms", "actual": "34.8ms", "passed": true}]
        })
    }

    fn summary() -> RunSummary {
        let stage = |name: &str, uses: &str, outputs: serde_json::Value| StageRecord {
            name: name.into(),
            uses: uses.into(),
            status: Status::Succeeded,
            attempts: 1,
            duration_ms: Some(1500),
            outputs: serde_json::from_value(outputs).unwrap(),
            ..Default::default()
        };
        RunSummary {
            run_id: "20261125-010203-ab12".into(),
            pipeline: "weather".into(),
            model: "weather".into(),
            status: Status::Succeeded,
            stages: vec![
                stage(
                    "build",
                    "openshift-build",
                    json!({"image": "reg.dev/m/weather@sha256:aa", "imageDigest": "sha256:aa"}),
                ),
                stage("check", "prediction-check", json!({"passed": true, "report": check_report()})),
                stage(
                    "promote",
                    "promote",
                    json!({"image": "reg.prod/m/weather@sha256:aa", "digest": "sha256:aa", "environment": "prod"}),
                ),
            ],
            workspace: None,
            state: "dir /tmp/s".into(),
        }
    }

    #[test]
    fn results_prefer_the_promoted_image_and_split_url_from_digest() {
        let dir = tempfile::tempdir().unwrap();
        write_results(dir.path(), &summary()).unwrap();
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read("IMAGE_URL"), "reg.prod/m/weather");
        assert_eq!(read("IMAGE_DIGEST"), "sha256:aa");
        assert_eq!(read("image-digest"), "sha256:aa");
        assert_eq!(read("status"), "succeeded");
        assert_eq!(read("run-id"), "20261125-010203-ab12");
    }

    #[test]
    fn oversized_results_are_refused() {
        let mut s = summary();
        s.stages[2].outputs.insert("image".into(), json!(format!("r/{}@sha256:aa", "x".repeat(5000))));
        assert!(matches!(write_results(Path::new("/nonexistent"), &s), Err(ResultsError::TooLarge(_))));
    }

    #[test]
    fn pairs_need_an_equals_sign_and_a_key() {
        assert_eq!(parse_pairs("--set", &["a=b=c".into()]).unwrap(), [("a".to_string(), "b=c".to_string())]);
        assert!(parse_pairs("--set", &["novalue".into()]).is_err());
        assert!(parse_pairs("--set", &["=x".into()]).is_err());
    }

    /// Guards the Tekton timeout path: SIGTERM must cancel the run's token.
    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_cancels_the_run() {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(cancel_on_signals(cancel.clone()));
        // Let the handler register before the signal is sent.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let status =
            // The shell's builtin `kill`: no procps needed.
            std::process::Command::new("sh").args(["-c", &format!("kill -TERM {}", std::process::id())]).status().unwrap();
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), cancel.cancelled()).await.expect("token cancelled");
        task.abort();
    }

    #[test]
    fn plan_text_snapshot() {
        let plan = Plan {
            pipeline: "weather".into(),
            run_id: "(generated at run time)".into(),
            state: "configmaps in dev/models-dev".into(),
            stages: vec![
                engine::PlannedStage {
                    name: "fetch".into(),
                    uses: "fetch-model".into(),
                    with: serde_json::Map::new(),
                    targets: vec!["s3://models/weather/ -> workspace".into()],
                },
                engine::PlannedStage {
                    name: "deploy".into(),
                    uses: "seldon-deploy".into(),
                    with: json!({"environment": "dev", "image": "{{stages.build.outputs.image}}"})
                        .as_object()
                        .unwrap()
                        .clone(),
                    targets: vec!["SeldonDeployment weather in dev/models-dev".into()],
                },
            ],
        };
        insta::assert_snapshot!(plan_text(&plan));
    }

    #[test]
    fn summary_table_snapshot() {
        insta::assert_snapshot!(summary_table(&summary(), "pipelines/weather.yaml"));
    }
}
