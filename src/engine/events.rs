//! The one place stage lifecycle events are logged: one structured line per
//! transition, plus an indicatif spinner per running stage when interactive.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A stage transition.
pub(crate) enum Event<'a> {
    Started {
        attempt: u32,
        max_attempts: u32,
    },
    Retrying {
        attempt: u32,
        delay: Duration,
        error: &'a str,
    },
    Succeeded {
        attempts: u32,
        duration: Duration,
    },
    Failed {
        attempts: u32,
        duration: Duration,
        error: &'a str,
    },
    Cancelled {
        duration: Duration,
    },
    /// `if:` was false.
    Skipped {
        condition: &'a str,
    },
    /// Resume: succeeded earlier with the same inputs.
    Reused,
}

/// Emits events for one run; owns the spinners.
pub(crate) struct Events {
    interactive: bool,
    bar: Option<ProgressBar>,
}

impl Events {
    pub fn new(interactive: bool) -> Self {
        Events { interactive, bar: None }
    }

    pub fn emit(&mut self, stage: &str, uses: &str, event: Event<'_>) {
        match event {
            Event::Started { attempt, max_attempts } => {
                tracing::info!(stage, uses, attempt, max_attempts, event = "started", "stage {stage} started");
                self.spin(stage, uses, attempt);
            }
            Event::Retrying { attempt, delay, error } => {
                let delay_ms = delay.as_millis() as u64;
                tracing::warn!(
                    stage,
                    uses,
                    attempt,
                    delay_ms,
                    error,
                    event = "retrying",
                    "stage {stage} attempt {attempt} failed, retrying in {}",
                    humantime::format_duration(round(delay))
                );
            }
            Event::Succeeded { attempts, duration } => {
                self.stop();
                let duration_ms = duration.as_millis() as u64;
                tracing::info!(
                    stage,
                    uses,
                    attempts,
                    duration_ms,
                    event = "succeeded",
                    "stage {stage} succeeded in {}",
                    humantime::format_duration(round(duration))
                );
            }
            Event::Failed { attempts, duration, error } => {
                self.stop();
                let duration_ms = duration.as_millis() as u64;
                tracing::error!(
                    stage,
                    uses,
                    attempts,
                    duration_ms,
                    error,
                    event = "failed",
                    "stage {stage} failed: {error}"
                );
            }
            Event::Cancelled { duration } => {
                self.stop();
                let duration_ms = duration.as_millis() as u64;
                tracing::warn!(stage, uses, duration_ms, event = "cancelled", "stage {stage} cancelled");
            }
            Event::Skipped { condition } => {
                tracing::info!(stage, uses, condition, event = "skipped", "stage {stage} skipped: `if` is false");
            }
            Event::Reused => {
                tracing::info!(
                    stage,
                    uses,
                    event = "skipped",
                    reason = "unchanged",
                    "stage {stage} skipped: succeeded earlier with the same inputs"
                );
            }
        }
    }

    fn spin(&mut self, stage: &str, uses: &str, attempt: u32) {
        if !self.interactive {
            return;
        }
        self.stop();
        let bar = crate::logging::progress().add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let retry = if attempt > 1 { format!(" (attempt {attempt})") } else { String::new() };
        bar.set_message(format!("{stage} ({uses}){retry}"));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
    }

    fn stop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            crate::logging::progress().remove(&bar);
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Milliseconds are noise in a human line.
fn round(d: Duration) -> Duration {
    if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64)
    }
}
