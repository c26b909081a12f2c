//! `modelship history MODEL [--env ENV]`

use clap::Args;

use super::promote::{Session, Where};
use super::run::OutputFormat;
use super::{CommandError, GlobalArgs, fail};
use crate::promotion;
use crate::secret::mask;
use crate::state::LedgerEntry;

/// The promotion ledger, newest first.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  modelship history weather -f pipelines/weather.yaml --env prod")]
pub struct HistoryArgs {
    pub model: String,
    /// Only this environment (default: every environment of the pipeline).
    #[arg(long, value_name = "ENV")]
    pub env: Option<String>,
    #[command(flatten)]
    pub place: Where,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(a: HistoryArgs, _g: &GlobalArgs) -> Result<(), CommandError> {
    let session = Session::open(&a.place).await?;
    let result = async {
        session.check_model(&a.model)?;
        if let Some(e) = &a.env {
            session.check_environment("--env", e)?;
        }
        let envs: Vec<String> = match &a.env {
            Some(e) => vec![e.clone()],
            None => session.pipeline.spec.environments.keys().cloned().collect(),
        };
        promotion::history(&session.clusters, &a.model, &envs, session.state_dir.as_deref()).await.map_err(fail)
    }
    .await;
    session.close().await;
    let entries = result?;
    match a.output {
        OutputFormat::Json => println!("{}", mask(&serde_json::to_string_pretty(&entries).unwrap_or_default())),
        OutputFormat::Text => println!("{}", mask(&table(&entries))),
    }
    Ok(())
}

/// One line per entry: when, environment, action, short digest, run, by.
pub fn table(entries: &[LedgerEntry]) -> String {
    if entries.is_empty() {
        return "no ledger entries".into();
    }
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            let short = e
                .digest
                .strip_prefix("sha256:")
                .map_or(e.digest.clone(), |h| format!("sha256:{}", &h[..h.len().min(12)]));
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
            [
                e.at.clone(),
                e.environment.clone(),
                e.action.clone(),
                short,
                e.run_id.clone(),
                e.by.clone(),
                note.trim().to_string(),
            ]
        })
        .collect();
    let head = ["WHEN", "ENV", "ACTION", "DIGEST", "RUN", "BY", "NOTE"];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = vec![line(head.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}
