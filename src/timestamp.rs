//! The one timestamp format of every output modelship prints (tables,
//! reports, messages): RFC 3339 in UTC, to the second, e.g.
//! `2026-12-02T15:30:51Z`. Records keep full precision; log lines add
//! milliseconds. A leaf: anything may use it.

/// `t` as `2026-12-02T15:30:51Z`.
pub fn display(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// [`display`] of a stored RFC 3339 text; text that does not parse is shown as is.
pub fn display_text(rfc3339: &str) -> String {
    rfc3339.parse::<jiff::Timestamp>().map_or_else(|_| rfc3339.to_string(), display)
}

/// A log line's time: as [`display`], with milliseconds.
pub fn log_line(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// [`log_line`] of a stored RFC 3339 text (a stage's start in a timeline,
/// where seconds are too coarse); text that does not parse is shown as is.
pub fn log_line_text(rfc3339: &str) -> String {
    rfc3339.parse::<jiff::Timestamp>().map_or_else(|_| rfc3339.to_string(), log_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc_to_the_second() {
        assert_eq!(display_text("2026-12-02T15:30:51.123456789Z"), "2026-12-02T15:30:51Z");
        assert_eq!(display_text("2026-12-02T16:30:51+01:00"), "2026-12-02T15:30:51Z");
        assert_eq!(display_text("yesterday"), "yesterday");
        let line = log_line("2026-12-02T15:30:51.5Z".parse().unwrap());
        assert_eq!(line, "2026-12-02T15:30:51.500Z");
        assert!(line.parse::<jiff::Timestamp>().is_ok());
    }
}
