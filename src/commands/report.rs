//! `modelship report RUN_ID --format md|html [--out FILE]`

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

/// Write a run's report: stage timeline, check results, latency percentiles
/// against the SLO, digests per environment.
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
        after_help = "Examples:\n  modelship report RUN_ID -f pipelines/weather.yaml --format html --out report.html\n  modelship report RUN_ID -f pipelines/weather.yaml -n prod=models-prod-2 -o yaml\n  modelship report RUN_ID --state-dir ./state --format md"
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
}

/// What the report is made of, for `-o json|yaml`.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportData {
    pub run: RunRecord,
    pub promotions: Vec<crate::report::Promotion>,
    /// Each environment's current ledger entry.
    pub environments: Vec<LedgerEntry>,
}

pub async fn run(args: ReportArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    if args.output == OutputFormat::Wide {
        return Err(CommandError::usage("report has no wide output: -o json|yaml for its data, --format md|html"));
    }
    let (run, current) = match (&args.state_dir, &args.file) {
        (Some(dir), _) => {
            existing_state_dir(dir)?;
            let store = crate::state::dir::DirStore::new(dir);
            let run = find_run(&store, &args.run_id).await?;
            let ledger = store.get_ledger(&run.model).await.map_err(fail)?;
            (run, ledger.current.into_values().collect())
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
    let promotions = crate::report::promotions(&run.stages);
    let data = ReportData { run, promotions, environments: current };
    let text = match structured(args.output, &data)? {
        Some(text) => format!("{}\n", mask(&text)),
        None => mask(&crate::report::render(&data.run, &data.environments, format).map_err(fail)?),
    };
    match &args.out {
        Some(path) => std::fs::write(path, text).map_err(|e| {
            CommandError::new(ExitClass::Failed, std::io::Error::other(format!("{}: {e}", path.display())))
        })?,
        None => print!("{text}"),
    }
    Ok(())
}

/// The run from its state environment, and each environment's current
/// ledger entry from that environment's namespace.
async fn from_clusters(
    args: &ReportArgs,
    file: &std::path::Path,
) -> Result<(RunRecord, Vec<LedgerEntry>), CommandError> {
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
        let store = crate::engine::open_state(pipeline, None, clusters).await.map_err(fail)?;
        let run = find_run(store.as_ref(), &args.run_id).await?;
        let mut current = Vec::new();
        for (name, env) in &pipeline.spec.environments {
            let client = clusters.client(name).await.map_err(fail)?;
            let ledger = crate::state::configmap::ConfigMapStore::new(client, env.namespace.clone(), name.clone());
            let l = ledger.get_ledger(&run.model).await.map_err(fail)?;
            current.extend(l.current.get(name).cloned());
        }
        Ok((run, current))
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
