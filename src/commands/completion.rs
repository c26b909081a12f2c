//! `modelship completion bash|zsh|fish`: shell completion scripts, made
//! from the same clap definitions the binary parses with.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, CommandError};

/// Print a shell completion script.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  source <(modelship completion bash)  # in ~/.bashrc\n  modelship completion zsh > _modelship  # into a directory on $fpath\n  modelship completion fish > modelship.fish  # into ~/.config/fish/completions/"
)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

pub fn run(a: CompletionArgs) -> Result<(), CommandError> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "modelship", &mut std::io::stdout());
    Ok(())
}
