//! `modelship status [RUN_ID] [--model NAME]`

use std::path::PathBuf;

use clap::Args;

use super::promote::{Session, Where};
use super::run::{OutputFormat, stage_duration, table};
use super::{CommandError, GlobalArgs, fail};
use crate::error::ExitClass;
use crate::secret::mask;
use crate::state::{RunRecord, StateStore, Status};

/// Show runs and their stages from the state store.
#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship status -f pipelines/weather.yaml --sim /tmp/sim\n  modelship status 20261125-0102-ab12 --state-dir ./state"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship status -f pipelines/weather.yaml\n  modelship status 20261125-0102-ab12 --state-dir ./state"
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
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    #[cfg_attr(not(feature = "sim"), arg(hide = true))]
    pub sim: Option<PathBuf>,
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// `json` prints the records.
    #[arg(long, value_enum, default_value_t = super::run::OutputFormat::Text)]
    pub output: super::run::OutputFormat,
}

pub async fn run(args: StatusArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let text = match (&args.state_dir, &args.file) {
        (Some(dir), _) => show(&args, &crate::state::dir::DirStore::new(dir)).await?,
        (None, Some(file)) => {
            let w = Where {
                file: file.clone(),
                kubeconfig: args.kubeconfig.clone(),
                sim: args.sim.clone(),
                state_dir: None,
            };
            let session = Session::open(&w).await?;
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
            Ok(match args.output {
                OutputFormat::Json => serde_json::to_string_pretty(&run).unwrap_or_default(),
                OutputFormat::Text => detail(&run),
            })
        }
        None => Ok(match args.output {
            OutputFormat::Json => serde_json::to_string_pretty(&runs).unwrap_or_default(),
            OutputFormat::Text if runs.is_empty() => format!("no runs in {}", store.describe()),
            OutputFormat::Text => list(&runs),
        }),
    }
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
    rfc3339
        .parse::<jiff::Timestamp>()
        .map_or_else(|_| rfc3339.to_string(), |t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
}

fn list(runs: &[RunRecord]) -> String {
    let mut rows = vec![vec![
        "RUN ID".into(),
        "PIPELINE".into(),
        "STATUS".into(),
        "STARTED".into(),
        "DURATION".into(),
        "STAGES".into(),
    ]];
    for r in runs {
        let done = r.stages.iter().filter(|s| s.status.is_terminal()).count();
        rows.push(vec![
            r.run_id.clone(),
            r.pipeline.clone(),
            r.status.to_string(),
            short_time(&r.created),
            run_duration(r),
            format!("{done}/{}", r.stages.len()),
        ]);
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
        insta::assert_snapshot!("status_list", list(&[record()]));
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
            output: OutputFormat::Text,
        };
        assert!(show(&args, &store).await.unwrap().contains("build (openshift-build): failed, 3 attempts"));
        let missing = StatusArgs { run_id: Some("nope".into()), ..args };
        assert_eq!(show(&missing, &store).await.err().unwrap().class, ExitClass::BadInput);
    }
}
