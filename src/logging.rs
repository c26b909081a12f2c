//! tracing setup: human logs on a TTY, JSON with `--log-format json` (or when
//! stderr is not a TTY and the format is `auto`). Every message passes
//! through [`crate::secret::mask`].

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a TTY, JSON otherwise (what a Tekton step wants).
    #[default]
    Auto,
    Text,
    Json,
}

/// Install the global subscriber. `verbosity`: -1 quiet, 0 info, 1 debug, 2+ trace.
pub fn init(_format: LogFormat, _verbosity: i8) {
    todo!("engine helper")
}
