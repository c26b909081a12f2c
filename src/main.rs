//! The `modelship` binary: parse, set up logging, dispatch, map the outcome
//! to an exit code (0 success, 1 a stage failed, 2 bad input or usage).

#![recursion_limit = "256"]

use clap::Parser;
use modelship::ExitClass;
use modelship::commands::{Cli, dispatch};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    modelship::logging::init(cli.global.log_format, cli.global.verbosity(), cli.global.color);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome = runtime.block_on(dispatch(cli));
    // Sim processes and servers stop with their owners; do not wait on stray tasks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            if let Some(error) = err.error {
                let error = anyhow::Error::from_boxed(error);
                let text = modelship::secret::mask(&modelship::error::chain(error.as_ref()));
                if err.class == ExitClass::Internal {
                    eprintln!("error: {text}\nthis is a bug in modelship; please report it with the command you ran");
                } else {
                    eprintln!("error: {text}");
                }
            }
            std::process::exit(err.class.code());
        }
    }
}
