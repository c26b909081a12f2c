//! `modelship history [MODEL] -f PIPELINE [--env ENV]`

use clap::Args;

use super::output::{OutputFormat, structured};
use super::session::{Access, Session, Where, existing_state_dir};
use super::{CommandError, GlobalArgs, fail};
use crate::promotion;
use crate::secret::mask;
use crate::state::LedgerEntry;

/// The promotion ledger, newest first.
#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship history -f pipelines/weather.yaml --sim /tmp/sim --env prod\n  modelship history -f pipelines/weather.yaml --sim /tmp/sim -o wide"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship history -f pipelines/weather.yaml --env prod\n  modelship history -f pipelines/weather.yaml -n prod=models-prod-2 -o yaml"
    )
)]
pub struct HistoryArgs {
    /// The model (default: the pipeline's `spec.model.name`, the only one it has).
    pub model: Option<String>,
    /// Only this environment (default: every environment of the pipeline).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    #[command(flatten)]
    pub place: Where,
    /// Output format: a table (wide: full digests and the pipeline run), json or yaml.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(a: HistoryArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    if let Some(dir) = &a.place.state_dir {
        existing_state_dir(dir)?;
    }
    let session = Session::open(&a.place, Access::Read).await?;
    let result = async {
        let model = session.model(a.model.as_deref())?;
        if let Some(e) = &a.env {
            session.check_environment("--env", e)?;
        }
        let envs: Vec<String> = match &a.env {
            Some(e) => vec![e.clone()],
            None => session.pipeline.spec.environments.keys().cloned().collect(),
        };
        promotion::history(&session.clusters, &model, &envs, session.state_dir.as_deref()).await.map_err(fail)
    }
    .await;
    session.close().await;
    let entries = result?;
    let text = match structured(a.output, &entries)? {
        Some(text) => text,
        None if a.output == OutputFormat::Wide => wide_table(&entries),
        None => table(&entries),
    };
    println!("{}", mask(&text));
    Ok(())
}

/// One line per entry: when, environment, action, short digest, run, by.
pub fn table(entries: &[LedgerEntry]) -> String {
    render(entries, false)
}

/// [`table`] with the whole digest and the image it was deployed as.
pub fn wide_table(entries: &[LedgerEntry]) -> String {
    render(entries, true)
}

fn render(entries: &[LedgerEntry], wide: bool) -> String {
    if entries.is_empty() {
        return "no ledger entries".into();
    }
    let mut head = vec!["WHEN", "ENV", "ACTION", "DIGEST", "RUN", "BY", "NOTE"];
    if wide {
        head.push("IMAGE");
    }
    let mut rows = vec![head.into_iter().map(String::from).collect::<Vec<_>>()];
    for e in entries {
        let digest = match e.digest.strip_prefix("sha256:") {
            Some(h) if !wide => format!("sha256:{}", &h[..h.len().min(12)]),
            _ => e.digest.clone(),
        };
        let mut row = vec![
            e.at.clone(),
            e.environment.clone(),
            e.action.clone(),
            digest,
            e.run_id.clone(),
            e.by.clone(),
            note(e),
        ];
        if wide {
            row.push(e.image.clone());
        }
        rows.push(row);
    }
    super::run::table(&rows).trim_end().to_string()
}

/// Where it came from, whether forced, its provenance, the comment.
fn note(e: &LedgerEntry) -> String {
    let mut note = e.from.as_ref().map(|f| format!("from {f}")).unwrap_or_default();
    if e.forced {
        note.push_str(" forced");
    }
    if let Some(p) = promotion::Provenance::of(e) {
        note.push_str(if p.verified {
            " signed+verified"
        } else if p.signature.is_some() {
            " signed"
        } else {
            " attested"
        });
    } else if e.action == promotion::PROMOTED {
        note.push_str(" unsigned");
    }
    if let Some(c) = &e.comment {
        note.push_str(&format!(" \"{c}\""));
    }
    note.trim().to_string()
}
