//! `modelship report RUN_ID --format md|html [--out FILE] [--compare RUN_ID | --since ENV]`

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::output::{OutputFormat, structured};
use super::session::{Access, Session, TargetArgs, Where, existing_state_dir};
use super::{CommandError, GlobalArgs, fail};
use crate::error::ExitClass;
use crate::report::Format;
use crate::secret::mask;
use crate::state::{LedgerEntry, RunRecord, StateStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown (GitHub tables).
    Md,
    /// One static HTML file: inline CSS and SVG charts, no script, no network.
    Html,
}

/// Write a run's report: lineage (source, model and context digests, Build,
/// image, environments), stage timeline, check results, latency percentiles
/// against the SLO, digests per environment; with `--compare`/`--since`,
/// what changed against another run.
#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship report RUN_ID -f pipelines/weather.yaml --sim /tmp/sim --format html --out report.html\n  modelship report RUN_ID -f pipelines/weather.yaml --sim /tmp/sim -o json\n  modelship report RUN_ID -f pipelines/weather.yaml --sim /tmp/sim --format md --out report.md"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship report RUN_ID -f pipelines/weather.yaml --format html --out report.html\n  modelship report RUN_ID -f pipelines/weather.yaml -n prod=models-prod-2 -o yaml\n  modelship report RUN_ID -f pipelines/weather.yaml --since prod"
    )
)]
pub struct ReportArgs {
    /// The run to report on (`modelship status` lists them).
    #[arg(value_name = "RUN_ID")]
    pub run_id: String,
    /// The document to write (with `-o text`, the default).
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// Write here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The pipeline file (names the environment that holds state, and the
    /// environments whose ledgers hold the digests).
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
    /// Run records and the ledger in this directory instead of ConfigMaps.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub targets: TargetArgs,
    /// `json` or `yaml`: the report's data (the run record, its checks and
    /// promotions, each environment's current digest) instead of --format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Show what changed against this run: digests, check results, latency.
    #[arg(long, value_name = "RUN_ID", conflicts_with = "since")]
    pub compare: Option<String>,
    /// Show what changed against the run last promoted to ENV, or verified
    /// there by its checks (other than this one), from ENV's promotion ledger.
    #[arg(long, value_name = "ENV")]
    pub since: Option<String>,
}

/// What the report is made of, for `-o json|yaml`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportData {
    pub run: RunRecord,
    pub promotions: Vec<crate::report::Promotion>,
    /// Each environment's current ledger entry.
    pub environments: Vec<LedgerEntry>,
    /// The run compared with (`--compare`, `--since`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compared_with: Option<RunRecord>,
}

/// The run, the ledgers' current entries and history, and the run compared with.
struct Loaded {
    run: RunRecord,
    current: Vec<LedgerEntry>,
    history: Vec<LedgerEntry>,
    other: Option<RunRecord>,
}

pub async fn run(args: ReportArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    if args.output == OutputFormat::Wide {
        return Err(CommandError::usage("report has no wide output: -o json|yaml for its data, --format md|html"));
    }
    let loaded = match (&args.state_dir, &args.file) {
        (Some(dir), _) => {
            existing_state_dir(dir)?;
            let store = crate::state::dir::DirStore::new(dir);
            let run = find_run(&store, &args.run_id).await?;
            let ledger = store.get_ledger(&run.model).await.map_err(fail)?;
            let other = other_run(&store, &args, &run, &ledger.history).await?;
            Loaded { run, current: ledger.current.into_values().collect(), history: ledger.history, other }
        }
        (None, Some(file)) => from_clusters(&args, file).await?,
        (None, None) => {
            return Err(CommandError::usage(
                "say where runs are kept: --state-dir DIR, or -f PIPELINE (its state environment's ConfigMaps)",
            ));
        }
    };
    let format = match args.format {
        ReportFormat::Md => Format::Markdown,
        ReportFormat::Html => Format::Html,
    };
    let promotions = crate::report::promotions(&loaded.run.stages);
    let text = if args.output == OutputFormat::Text {
        let extras = crate::report::Extras {
            history: &loaded.history,
            compare: loaded.other.as_ref().map(|run| crate::report::Baseline { run, since: args.since.as_deref() }),
        };
        mask(&crate::report::render_with(&loaded.run, &loaded.current, &extras, format).map_err(fail)?)
    } else {
        let data =
            ReportData { run: loaded.run, promotions, environments: loaded.current, compared_with: loaded.other };
        let text = structured(args.output, &data)?.unwrap_or_default();
        format!("{}\n", mask(&text))
    };
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|e| {
            CommandError::new(ExitClass::Failed, std::io::Error::other(format!("{}: {e}", path.display())))
        })?,
        None => print!("{text}"),
    }
    Ok(())
}

/// The run `--compare` names, or the one `--since ENV` finds in the ledger history.
async fn other_run(
    store: &dyn StateStore,
    args: &ReportArgs,
    run: &RunRecord,
    history: &[LedgerEntry],
) -> Result<Option<RunRecord>, CommandError> {
    match (&args.compare, &args.since) {
        (Some(id), _) => find_run(store, id).await.map(Some),
        (None, Some(env)) => {
            let runs = store.list_runs(None).await.map_err(fail)?;
            let candidates = crate::report::since_candidates(history, env, &run.run_id);
            let found = candidates.iter().find_map(|id| runs.iter().find(|r| r.run_id == *id));
            found.cloned().map(Some).ok_or_else(|| {
                CommandError::usage(format!(
                    "--since {env}: the promotion ledger of `{}` names no run other than {} that put a digest into `{env}` and is still recorded in {}",
                    run.model,
                    run.run_id,
                    store.describe()
                ))
            })
        }
        (None, None) => Ok(None),
    }
}

/// The run from its state environment, and each environment's current
/// ledger entry and history from that environment's namespace.
async fn from_clusters(args: &ReportArgs, file: &std::path::Path) -> Result<Loaded, CommandError> {
    let w = Where {
        file: file.to_path_buf(),
        kubeconfig: args.kubeconfig.clone(),
        sim: args.sim.clone(),
        state_dir: None,
        targets: args.targets.clone(),
    };
    let session = Session::open(&w, Access::Read).await?;
    let result = async {
        let (pipeline, clusters) = (&session.pipeline, &session.clusters);
        if let Some(env) = args.since.as_deref().filter(|e| !pipeline.spec.environments.contains_key(*e)) {
            return Err(CommandError::usage(format!("--since {env}: the pipeline has no environment `{env}`")));
        }
        let store = crate::engine::open_state(pipeline, None, clusters).await.map_err(fail)?;
        let run = find_run(store.as_ref(), &args.run_id).await?;
        let (mut current, mut history) = (Vec::new(), Vec::new());
        for (name, env) in &pipeline.spec.environments {
            let client = clusters.client(name).await.map_err(fail)?;
            let ledger = crate::state::configmap::ConfigMapStore::new(client, env.namespace.clone(), name.clone());
            let l = ledger.get_ledger(&run.model).await.map_err(fail)?;
            current.extend(l.current.get(name).cloned());
            history.extend(l.history.into_iter().filter(|e| &e.environment == name));
        }
        // One history across the environments' ledgers, oldest first.
        history.sort_by_key(|e| e.at.parse::<jiff::Timestamp>().ok());
        let other = other_run(store.as_ref(), args, &run, &history).await?;
        Ok(Loaded { run, current, history, other })
    }
    .await;
    session.close().await;
    result
}

async fn find_run(store: &dyn StateStore, id: &str) -> Result<RunRecord, CommandError> {
    // By id alone, as `status` finds it: a run key also needs the pipeline.
    let runs = store.list_runs(None).await.map_err(fail)?;
    runs.into_iter()
        .find(|r| r.run_id == id)
        .ok_or_else(|| CommandError::usage(format!("no run `{id}` in {}", store.describe())))
}
