//! `modelship validate FILE...`

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{CommandError, GlobalArgs};
use crate::catalog::Catalog;
use crate::error::ExitClass;

/// Parse and check pipeline files; exit 0 if all are valid, 2 otherwise.
#[derive(Debug, Args)]
#[command(after_help = "Prints `FILE: ok` for each valid file on stdout and every problem, with its \
file:line:col, on stderr. Nothing is written anywhere else.\n\nExample:\n  modelship validate pipelines/*.yaml")]
pub struct ValidateArgs {
    /// Pipeline files.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

pub async fn run(args: ValidateArgs, g: &GlobalArgs) -> Result<(), CommandError> {
    let catalog = match &g.stages_dir {
        Some(dir) => Catalog::embedded().with_override(dir),
        None => Catalog::embedded(),
    };
    // Locked once: a thousand files should not take a thousand locks.
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut invalid = 0usize;
    for file in &args.files {
        match crate::spec::load_lenient(file)
            .and_then(|loaded| crate::spec::validate(&loaded, &catalog, &crate::stages::Registry))
        {
            Ok(()) => {
                let _ = writeln!(out, "{}: ok", file.display());
            }
            Err(e) => {
                invalid += 1;
                let _ = writeln!(err, "{}\n", crate::secret::mask(&e.to_string()));
            }
        }
    }
    let _ = out.flush();
    if invalid == 0 {
        return Ok(());
    }
    if args.files.len() > 1 {
        let _ = writeln!(err, "{invalid} of {} files invalid", args.files.len());
    }
    Err(CommandError::silent(ExitClass::BadInput))
}
