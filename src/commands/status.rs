//! `modelship status [RUN_ID] [--model NAME]`

use std::path::PathBuf;

use clap::Args;

use super::output::{OutputFormat, structured};
use super::run::{image_and_digest, stage_duration, table};
use super::session::{Access, Session, TargetArgs, Where, existing_state_dir};
use super::{CommandError, GlobalArgs, fail};
use crate::error::ExitClass;
use crate::secret::mask;
use crate::state::{RunRecord, StateStore, Status};

/// Show runs and their stages from the state store.
#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship status -f pipelines/weather.yaml --sim /tmp/sim\n  modelship status -f pipelines/weather.yaml --sim /tmp/sim -o wide\n  modelship status RUN_ID -f pipelines/weather.yaml --sim /tmp/sim -o yaml\n  modelship status --state-dir ./state"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship status -f pipelines/weather.yaml\n  modelship status -f pipelines/weather.yaml -n dev=models-dev-2 -o wide\n  modelship status RUN_ID --state-dir ./state -o json"
    )
)]
pub struct StatusArgs {
    /// One run in detail; without it, recent runs.
    #[arg(value_name = "RUN_ID")]
    pub run_id: Option<String>,
    /// Only this model's runs.
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The pipeline file (names the environment that holds state).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Simulated clusters kept in DIR (as `modelship run --sim DIR`); only
    /// their API servers start: nothing is built or deployed.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig", requires = "file")]
    #[cfg_attr(not(feature = "sim"), arg(hide = true))]
    pub sim: Option<PathBuf>,
    /// kubeconfig to use (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Read run records from this directory (as `modelship run --state-dir DIR`) instead of ConfigMaps.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub targets: TargetArgs,
    /// Output format: a table (wide: image digest and trigger too), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(args: StatusArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let text = match (&args.state_dir, &args.file) {
        (Some(dir), _) => {
            existing_state_dir(dir)?;
            show(&args, &crate::state::dir::DirStore::new(dir)).await?
        }
        (None, Some(file)) => {
            let w = Where {
                file: file.clone(),
                kubeconfig: args.kubeconfig.clone(),
                sim: args.sim.clone(),
                state_dir: None,
                targets: args.targets.clone(),
            };
            let session = Session::open(&w, Access::Read).await?;
            let result = async {
                // Where `run` kept the state of a pipeline that needs no cluster.
                let local = args.sim.is_none().then(|| {
                    let catalog = crate::catalog::Catalog::embedded();
                    crate::engine::local_state_dir(&session.pipeline, file, &catalog, args.kubeconfig.as_deref(), None)
                });
                let store = crate::engine::open_state(&session.pipeline, local.flatten().as_deref(), &session.clusters)
                    .await
                    .map_err(fail)?;
                show(&args, store.as_ref()).await
            }
            .await;
            session.close().await;
            result?
        }
        (None, None) => {
            return Err(CommandError::usage(
                "say where runs are kept: --state-dir DIR, or -f PIPELINE (its state environment's ConfigMaps)",
            ));
        }
    };
    println!("{}", mask(&text));
    Ok(())
}

async fn show(args: &StatusArgs, store: &dyn StateStore) -> Result<String, CommandError> {
    let runs = store.list_runs(args.model.as_deref()).await.map_err(fail)?;
    if let Some(model) = &args.model
        && runs.is_empty()
    {
        // A typo in --model reads as "no runs"; say which models there are.
        let all = store.list_runs(None).await.map_err(fail)?;
        let mut models: Vec<&str> = all.iter().map(|r| r.model.as_str()).collect();
        models.sort();
        models.dedup();
        if !models.is_empty() {
            let place = store.describe();
            return Err(CommandError::usage(crate::suggest::not_found("model", model, &place, models)));
        }
    }
    match &args.run_id {
        Some(id) => {
            let run = runs.into_iter().find(|r| &r.run_id == id).ok_or_else(|| {
                CommandError::new(
                    ExitClass::BadInput,
                    std::io::Error::other(format!("no run `{id}` in {}", store.describe())),
                )
            })?;
            let view = RunView {
                promotions: crate::stages::promote::results(&run.stages),
                gate_failures: crate::state::gate_failures(&run.stages),
                run: &run,
            };
            Ok(structured(args.output, &view)?.unwrap_or_else(|| detail(&run)))
        }
        None => Ok(match structured(args.output, &runs)? {
            Some(text) => text,
            None if runs.is_empty() => format!("no runs in {}", store.describe()),
            None => list(&runs, args.output == OutputFormat::Wide),
        }),
    }
}

/// One run's record with what its promote stages did, for `-o json|yaml`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RunView<'a> {
    #[serde(flatten)]
    run: &'a RunRecord,
    promotions: Vec<crate::state::PromotionResult>,
    gate_failures: Vec<String>,
}

fn run_duration(run: &RunRecord) -> String {
    let (Ok(start), end) = (run.created.parse::<jiff::Timestamp>(), run.updated.parse::<jiff::Timestamp>()) else {
        return "-".into();
    };
    let end = match run.status {
        Status::Running | Status::Pending | Status::WaitingApproval => jiff::Timestamp::now(),
        _ => end.unwrap_or(start),
    };
    let ms = end.duration_since(start).as_millis().max(0) as u64;
    stage_duration(Some(ms))
}

/// Whole seconds are enough in a table.
fn short_time(rfc3339: &str) -> String {
    crate::timestamp::display_text(rfc3339)
}

/// `wide` adds the image digest the run made and what triggered it.
fn list(runs: &[RunRecord], wide: bool) -> String {
    let mut head: Vec<String> =
        ["RUN ID", "PIPELINE", "STATUS", "STARTED", "DURATION", "STAGES"].into_iter().map(String::from).collect();
    if wide {
        head.extend(["DIGEST", "TRIGGER", "LABELS"].map(String::from));
    }
    let mut rows = vec![head];
    for r in runs {
        let done = r.stages.iter().filter(|s| s.status.is_terminal()).count();
        let mut row = vec![
            r.run_id.clone(),
            r.pipeline.clone(),
            r.status.to_string(),
            short_time(&r.created),
            run_duration(r),
            format!("{done}/{}", r.stages.len()),
        ];
        if wide {
            let (_, digest) = image_and_digest(&r.stages);
            // `modelship trigger`/`serve` label their runs with the Git host.
            let trigger = r.labels.get("trigger").map_or("-", String::as_str);
            let labels: Vec<String> =
                r.labels.iter().filter(|(k, _)| *k != "trigger").map(|(k, v)| format!("{k}={v}")).collect();
            let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
            row.extend([or_dash(digest), trigger.to_string(), or_dash(labels.join(","))]);
        }
        rows.push(row);
    }
    table(&rows).trim_end().to_string()
}

fn detail(run: &RunRecord) -> String {
    let mut out = format!(
        "run {} of pipeline {} (model {}): {}\nstarted {}, updated {}, took {}\n",
        run.run_id,
        run.pipeline,
        run.model,
        run.status,
        run.created,
        run.updated,
        run_duration(run)
    );
    for (title, map) in [("params", &run.params), ("labels", &run.labels)] {
        if !map.is_empty() {
            let items: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("{title}: {}\n", items.join(", ")));
        }
    }
    for s in &run.stages {
        out.push_str(&format!(
            "\n{} ({}): {}, {} attempt{}, {}\n",
            s.name,
            s.uses,
            s.status,
            s.attempts,
            if s.attempts == 1 { "" } else { "s" },
            stage_duration(s.duration_ms)
        ));
        for (k, v) in &s.outputs {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {k}: {v}\n"));
        }
        if let Some(e) = &s.error {
            out.push_str(&format!("  error: {e}\n"));
        }
        if let Some(g) = &s.gate {
            let back = if s.rolled_back { " (target rolled back)" } else { "" };
            out.push_str(&format!("  stopped by gate: {g}{back}\n"));
        }
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StageRecord;

    fn record() -> RunRecord {
        RunRecord {
            run_id: "20261125-010203-ab12".into(),
            pipeline: "weather".into(),
            model: "weather".into(),
            pipeline_digest: "sha256:00".into(),
            status: Status::Failed,
            created: "2026-11-25T01:02:03Z".into(),
            updated: "2026-11-25T01:04:33Z".into(),
            params: [("tag".to_string(), "v2".to_string())].into(),
            stages: vec![
                StageRecord {
                    name: "fetch".into(),
                    uses: "fetch-model".into(),
                    status: Status::Succeeded,
                    attempts: 1,
                    duration_ms: Some(1200),
                    outputs: [("modelDir".to_string(), serde_json::json!("/ws/fetch/model"))].into(),
                    ..Default::default()
                },
                StageRecord {
                    name: "build".into(),
                    uses: "openshift-build".into(),
                    status: Status::Failed,
                    attempts: 3,
                    duration_ms: Some(95_000),
                    error: Some("build weather-1 failed: Dockerfile step 3".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn list_and_detail_snapshots() {
        insta::assert_snapshot!("status_list", list(&[record()], false));
        // A triggered run whose build succeeded: the wide columns filled.
        let mut built = record();
        built.labels =
            [("trigger".to_string(), "github".to_string()), ("commit".to_string(), "abc123".to_string())].into();
        built.stages[1].status = Status::Succeeded;
        built.stages[1].outputs = [
            ("image".to_string(), serde_json::json!("reg.dev/m/weather@sha256:aa")),
            ("imageDigest".to_string(), serde_json::json!("sha256:aa")),
        ]
        .into();
        insta::assert_snapshot!("status_list_wide", list(&[built, record()], true));
        insta::assert_snapshot!("status_detail", detail(&record()));
    }

    #[tokio::test]
    async fn one_run_by_id_from_a_directory_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::state::dir::DirStore::new(dir.path());
        store.create_run(&record()).await.unwrap();
        let args = StatusArgs {
            run_id: Some("20261125-010203-ab12".into()),
            model: None,
            file: None,
            sim: None,
            kubeconfig: None,
            state_dir: Some(dir.path().into()),
            targets: TargetArgs::default(),
            output: OutputFormat::Text,
        };
        assert!(show(&args, &store).await.unwrap().contains("build (openshift-build): failed, 3 attempts"));
        let missing = StatusArgs { run_id: Some("nope".into()), ..args };
        assert_eq!(show(&missing, &store).await.err().unwrap().class, ExitClass::BadInput);
    }
}
