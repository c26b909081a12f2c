//! The command line: clap definitions and one function per subcommand.
//! `main.rs` parses, sets up logging and calls [`dispatch`]; each subcommand
//! lives in its own file and returns a [`CommandError`] carrying its exit class.

pub mod approve;
pub mod completion;
pub mod history;
pub mod image;
pub mod model;
pub mod output;
pub mod promote;
pub mod report;
pub mod rollback;
pub mod run;
pub mod serve;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
pub mod sim_runner;
#[cfg(feature = "sim")]
pub mod simulated;
pub mod status;
pub mod trigger;
pub mod validate;
pub mod verify;
#[cfg(not(feature = "sim"))]
mod without_sim;

#[cfg(not(feature = "sim"))]
pub use without_sim::{sim, simulated};

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::{ExitClass, HasExitClass};
use crate::logging::{ColorChoice, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "modelship",
    // The version and the Git revision it was built from (build.rs).
    version = env!("MODELSHIP_LONG_VERSION"),
    about = "Take a trained ML model from S3 to a verified, promoted image on OpenShift"
)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Examples:\n  modelship validate pipelines/weather.yaml\n  modelship run pipelines/weather.yaml --sim /tmp/sim\n  modelship status -f pipelines/weather.yaml --sim /tmp/sim -o wide\n  modelship report RUN_ID -f pipelines/weather.yaml --sim /tmp/sim --format html --out report.html\n\nExit codes: 0 success, 1 a stage failed, 2 bad input or usage."
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Examples:\n  modelship validate pipelines/weather.yaml\n  modelship run pipelines/weather.yaml --kubeconfig ~/.kube/config\n  modelship status -f pipelines/weather.yaml -o wide\n  modelship report RUN_ID -f pipelines/weather.yaml --format html --out report.html\n\nExit codes: 0 success, 1 a stage failed, 2 bad input or usage."
    )
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Log format: text on a TTY and JSON otherwise (auto), or forced.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Colour in text output: auto (a terminal, and `NO_COLOR` unset), always, never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// More output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output: warnings and errors only.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Override the embedded stage catalog (`stages/<kind>/<file>`) with this directory.
    #[arg(long, visible_alias = "catalog-dir", global = true, value_name = "DIR", env = "MODELSHIP_STAGES_DIR")]
    pub stages_dir: Option<PathBuf>,
}

impl GlobalArgs {
    pub fn verbosity(&self) -> i8 {
        if self.quiet { -1 } else { self.verbose.min(3) as i8 }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Validate(validate::ValidateArgs),
    Run(run::RunArgs),
    Status(status::StatusArgs),
    /// The simulated OpenShift behind `--sim`: serve one cluster on its own.
    #[cfg_attr(feature = "sim", command(subcommand))]
    #[cfg_attr(not(feature = "sim"), command(hide = true))]
    Sim(sim::SimCommand),
    /// Container images: copy between registries by digest.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Models in object storage: upload a model directory to S3.
    #[command(subcommand)]
    Model(model::ModelCommand),
    Trigger(trigger::TriggerArgs),
    Serve(serve::ServeArgs),
    /// Promote a model's verified digest from one environment to another.
    Promote(promote::PromoteArgs),
    /// Point an environment back at an earlier digest.
    Rollback(rollback::RollbackArgs),
    /// A model's promotion ledger, newest first.
    History(history::HistoryArgs),
    Report(report::ReportArgs),
    /// Approve a run waiting for approval.
    Approve(approve::DecisionArgs),
    /// Reject a run waiting for approval.
    Reject(approve::DecisionArgs),
    /// Check an image's signature and attestation; print its provenance.
    Verify(verify::VerifyArgs),
    /// Signing keys.
    #[command(subcommand)]
    Keys(verify::KeysCommand),
    Completion(completion::CompletionArgs),
}

/// Run the parsed command.
pub async fn dispatch(cli: Cli) -> Result<(), CommandError> {
    let g = cli.global;
    match cli.command {
        Command::Validate(a) => validate::run(a, &g).await,
        Command::Run(a) => run::run(a, &g).await,
        Command::Status(a) => status::run(a, &g).await,
        Command::Sim(c) => sim::run(c, &g).await,
        Command::Image(c) => image::run(c, &g).await,
        Command::Model(c) => model::run(c, &g).await,
        Command::Trigger(a) => trigger::run(a, &g).await,
        Command::Serve(a) => serve::run(a, &g).await,
        Command::Promote(a) => promote::run(a, &g).await,
        Command::Rollback(a) => rollback::run(a, &g).await,
        Command::History(a) => history::run(a, &g).await,
        Command::Report(a) => report::run(a, &g).await,
        Command::Approve(a) => approve::run(a, true, &g).await,
        Command::Reject(a) => approve::run(a, false, &g).await,
        Command::Verify(a) => verify::run(a, &g).await,
        Command::Keys(c) => verify::keys(c, &g).await,
        Command::Completion(a) => completion::run(a),
    }
}

/// A failed command: its exit class and the error to print (none when the
/// command already printed everything, e.g. validation diagnostics).
#[derive(Debug)]
pub struct CommandError {
    pub class: ExitClass,
    pub error: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CommandError {
    pub fn new<E: std::error::Error + Send + Sync + 'static>(class: ExitClass, error: E) -> Self {
        CommandError { class, error: Some(Box::new(error)) }
    }
    /// Already reported; only the exit code remains.
    pub fn silent(class: ExitClass) -> Self {
        CommandError { class, error: None }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        CommandError { class: ExitClass::BadInput, error: Some(message.into().into()) }
    }
}

/// `?` on any library error picks its exit class.
pub fn fail<E: HasExitClass + std::error::Error + Send + Sync + 'static>(e: E) -> CommandError {
    CommandError::new(e.exit_class(), e)
}
