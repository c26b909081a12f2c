//! tracing setup: human logs on a TTY, JSON with `--log-format json` (or when
//! stderr is not a TTY and the format is `auto`). Every message passes
//! through [`crate::secret::mask`]. All output goes to stderr, so stdout stays
//! for results (`--output json`, tables).
//!
//! Progress bars and log lines share stderr: log lines are written while the
//! bars are suspended ([`progress`]), so neither garbles the other.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a TTY, JSON otherwise (what a Tekton step wants).
    #[default]
    Auto,
    /// One line per event for a person: time, level, stage, message, fields.
    Text,
    /// One JSON object per line with every field of the run and stage.
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

/// `--color`: whether text output (log levels) is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when stderr is a terminal and `NO_COLOR` is unset or empty.
    #[default]
    Auto,
    /// Colour even when not on a terminal (e.g. `less -R`).
    Always,
    /// No colour.
    Never,
}

impl ColorChoice {
    /// Resolved against stderr and `NO_COLOR` (<https://no-color.org>: any
    /// non-empty value turns colour off; an explicit `--color always` wins).
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
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
pub fn init(format: LogFormat, verbosity: i8, color: ColorChoice) {
    let filter = match std::env::var(FILTER_ENV) {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: ignoring {FILTER_ENV}={spec:?}: {e}");
            EnvFilter::new(default_filter(verbosity))
        }),
        _ => EnvFilter::new(default_filter(verbosity)),
    };
    let _ = if format.is_text() {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(MaskedStderr)
            .with_ansi(color.enabled())
            .event_format(TextLine);
        tracing_subscriber::registry().with(filter).with(SpanLabels).with(fmt).try_init()
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(MaskedStderr)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false);
        tracing_subscriber::registry().with(filter).with(fmt).try_init()
    };
}

/// A span's short name on a text log line: the stage for `stage` spans, the
/// run id for `run`; computed once when the span opens.
struct SpanLabel(String);

/// Stores a [`SpanLabel`] on the spans that name what a line is about, so a
/// text line shows `[render]` instead of the whole span chain with every
/// field (JSON lines keep all fields).
struct SpanLabels;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanLabels {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let key = match attrs.metadata().name() {
            "stage" => "stage",
            "run" => "run_id",
            "trigger_run" => "pipeline",
            "delivery" => "delivery",
            _ => return,
        };
        let mut v = FieldPick { key, value: None, attempt: None };
        attrs.record(&mut v);
        let Some(mut label) = v.value else { return };
        if let Some(n) = v.attempt.filter(|n| *n > 1) {
            let _ = write!(label, " #{n}");
        }
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanLabel(label));
        }
    }
}

struct FieldPick {
    key: &'static str,
    value: Option<String>,
    attempt: Option<u64>,
}

impl Visit for FieldPick {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.key {
            self.value = Some(value.to_string());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "attempt" {
            self.attempt = Some(value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "attempt" {
            self.attempt = u64::try_from(value).ok();
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.key {
            // `%value` fields arrive here formatted with Display.
            self.value = Some(format!("{value:?}"));
        }
    }
}

/// `2026-12-02T15:30:51.123Z  INFO [render] message key=value`: one
/// timestamp format, then what the line is about once: the event's own
/// `stage` field, else the innermost labelled span (the stage, or the run).
struct TextLine;

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let level = *event.metadata().level();
        let ansi = w.has_ansi_escapes();
        write!(w, "{} ", crate::timestamp::log_line(jiff::Timestamp::now()))?;
        let color = match level {
            tracing::Level::ERROR => "31",
            tracing::Level::WARN => "33",
            tracing::Level::INFO => "32",
            tracing::Level::DEBUG => "34",
            tracing::Level::TRACE => "35",
        };
        if ansi {
            write!(w, "\x1b[{color}m{level:>5}\x1b[0m ")?;
        } else {
            write!(w, "{level:>5} ")?;
        }
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let label = fields.stage.clone().or_else(|| {
            ctx.event_scope().and_then(|scope| {
                scope.into_iter().find_map(|span| span.extensions().get::<SpanLabel>().map(|l| l.0.clone()))
            })
        });
        if let Some(label) = label {
            if ansi {
                write!(w, "\x1b[1m[{label}]\x1b[0m ")?;
            } else {
                write!(w, "[{label}] ")?;
            }
        }
        w.write_str(&fields.message)?;
        for (key, value) in &fields.rest {
            if ansi {
                write!(w, " \x1b[2m{key}=\x1b[0m{value}")?;
            } else {
                write!(w, " {key}={value}")?;
            }
        }
        writeln!(w)
    }
}

/// An event's fields for a text line. `stage` becomes the label; `event`
/// (the machine-readable transition name) is for JSON only.
#[derive(Default)]
struct EventFields {
    message: String,
    stage: Option<String>,
    rest: Vec<(&'static str, String)>,
}

impl EventFields {
    fn add(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "stage" => self.stage = Some(value),
            "event" => {}
            key => self.rest.push((key, quoted(value))),
        }
    }
}

/// Bare unless the value is not one word; then in quotes, its own text
/// unescaped (a line for a person: a refusal quoting `resource "builds"`
/// reads as the server wrote it; JSON lines are for machines).
fn quoted(value: String) -> String {
    if value.is_empty() || value.chars().any(char::is_whitespace) { format!("\"{value}\"") } else { value }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `message` and `%value` fields arrive here, formatted with Display.
        self.add(field, format!("{value:?}"));
    }
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

    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn text_lines(ansi: bool, f: impl FnOnce()) -> String {
        let out = Capture::default();
        let sink = out.clone();
        let fmt =
            tracing_subscriber::fmt::layer().with_writer(move || sink.clone()).with_ansi(ansi).event_format(TextLine);
        let subscriber = tracing_subscriber::registry().with(SpanLabels).with(fmt);
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_text_line_names_the_stage_once_with_an_rfc3339_time() {
        let text = text_lines(false, || {
            let run = tracing::info_span!("run", run_id = %"20261202-1530-ab12", pipeline = %"weather");
            let _r = run.enter();
            tracing::info!("run started");
            let stage = tracing::info_span!("stage", run_id = %"20261202-1530-ab12", stage = "render", uses = "render", attempt = 2u32);
            let _s = stage.enter();
            let inner = tracing::info_span!("openshift-build", namespace = %"models-dev");
            let _i = inner.enter();
            tracing::warn!(files = 3, "context rendered");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in &lines {
            let time = line.split(' ').next().unwrap();
            assert!(time.parse::<jiff::Timestamp>().is_ok() && time.ends_with('Z') && time.contains('T'), "{line}");
            assert!(!line.contains("run{") && !line.contains("stage{"), "span chain printed: {line}");
        }
        assert!(lines[0].ends_with(" INFO [20261202-1530-ab12] run started"), "{}", lines[0]);
        assert!(lines[1].ends_with(" WARN [render #2] context rendered files=3"), "{}", lines[1]);
        assert_eq!(lines[1].matches("render").count(), 2, "{}", lines[1]);
    }

    #[test]
    fn an_event_about_a_stage_is_labelled_with_it_and_values_are_bare_words() {
        let text = text_lines(false, || {
            let run = tracing::info_span!("run", run_id = %"r1", pipeline = %"weather");
            let _r = run.enter();
            tracing::info!(stage = "fetch", uses = "fetch-model", event = "started", "stage fetch started");
            tracing::info!(path = "My Model.py", seconds = "0.13", empty = "", "fetched");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with(" INFO [fetch] stage fetch started uses=fetch-model"), "{}", lines[0]);
        assert!(lines[1].ends_with(r#" INFO [r1] fetched path="My Model.py" seconds=0.13 empty="""#), "{}", lines[1]);
    }

    #[test]
    fn colour_only_when_asked() {
        let plain = text_lines(false, || tracing::error!("boom"));
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let coloured = text_lines(true, || tracing::error!("boom"));
        assert!(coloured.contains("\x1b[31mERROR\x1b[0m"), "{coloured:?}");
        assert!(!ColorChoice::Never.enabled() && ColorChoice::Always.enabled());
    }

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(default_filter(-1), "warn");
        assert_eq!(default_filter(0), "info");
        assert!(default_filter(1).contains("modelship=debug"));
        assert_eq!(default_filter(5), "trace");
    }
}
