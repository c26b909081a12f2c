//! tracing setup: human logs on a TTY, JSON with `--log-format json` (or when
//! stderr is not a TTY and the format is `auto`). Every message passes
//! through [`crate::secret::mask`]. All output goes to stderr, so stdout stays
//! for results (`--output json`, tables).
//!
//! Progress bars and log lines share stderr: log lines are written while the
//! bars are suspended ([`progress`]), so neither garbles the other.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a TTY, JSON otherwise (what a Tekton step wants).
    #[default]
    Auto,
    Text,
    Json,
}

impl LogFormat {
    /// `Auto` resolved against stderr.
    pub fn is_text(self) -> bool {
        match self {
            LogFormat::Text => true,
            LogFormat::Json => false,
            LogFormat::Auto => std::io::stderr().is_terminal(),
        }
    }
}

/// The environment variable whose filter (tracing `EnvFilter` syntax, e.g.
/// `modelship=debug,kube=info`) overrides `-v`/`-q`.
pub const FILTER_ENV: &str = "MODELSHIP_LOG";

/// The progress bars on stderr. Bars added here are hidden while a log line
/// is written.
pub fn progress() -> &'static indicatif::MultiProgress {
    static BARS: OnceLock<indicatif::MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr()))
}

/// The default filter for a verbosity: -1 quiet, 0 info, 1 debug, 2+ trace.
/// Dependencies stay one level quieter than modelship until `-vvv`.
fn default_filter(verbosity: i8) -> &'static str {
    match verbosity {
        i8::MIN..=-1 => "warn",
        0 => "info",
        1 => "modelship=debug,info",
        2 => "modelship=trace,debug",
        _ => "trace",
    }
}

/// Install the global subscriber. `verbosity`: -1 quiet, 0 info, 1 debug, 2+ trace.
/// A second call (tests) leaves the first subscriber in place.
pub fn init(format: LogFormat, verbosity: i8) {
    let filter = match std::env::var(FILTER_ENV) {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring {FILTER_ENV}={spec:?}: {e}");
            EnvFilter::new(default_filter(verbosity))
        }),
        _ => EnvFilter::new(default_filter(verbosity)),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(MaskedStderr);
    let _ = if format.is_text() {
        builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init()
    } else {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    };
}

/// Hands tracing a fresh [`MaskedLine`] per event.
#[derive(Clone, Copy)]
struct MaskedStderr;

impl<'a> MakeWriter<'a> for MaskedStderr {
    type Writer = MaskedLine<std::io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        MaskedLine { buf: Vec::new(), out: std::io::stderr() }
    }
}

/// Collects one formatted event and writes it masked when dropped (tracing
/// drops the writer at the end of each event), so a secret split across
/// several `write` calls is still seen whole.
struct MaskedLine<W: Write> {
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> Write for MaskedLine<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for MaskedLine<W> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = crate::secret::mask(&String::from_utf8_lossy(&self.buf));
        let out = &mut self.out;
        progress().suspend(|| {
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_is_masked_even_when_written_in_pieces() {
        crate::secret::register("pieces-secret-9f3");
        let mut sink = Vec::new();
        {
            let mut line = MaskedLine { buf: Vec::new(), out: &mut sink };
            line.write_all(b"token=pieces-").unwrap();
            line.write_all(b"secret-9f3 ok\n").unwrap();
        }
        assert_eq!(String::from_utf8(sink).unwrap(), "token=**** ok\n");
    }

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(default_filter(-1), "warn");
        assert_eq!(default_filter(0), "info");
        assert!(default_filter(1).contains("modelship=debug"));
        assert_eq!(default_filter(5), "trace");
    }
}
