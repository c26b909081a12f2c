//! Span-carrying problems, printed like just/uv: `file:line:col: message`,
//! the source line, a caret, and a hint.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{ExitClass, HasExitClass};

/// Source lines longer than this are shown as a window around the column.
const MAX_SHOWN: usize = 120;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no position (e.g. unreadable file).
    pub line: usize,
    /// 1-based.
    pub col: usize,
    /// The stage the problem belongs to, printed as a prefix.
    pub stage: Option<String>,
    pub message: String,
    /// The offending source line (or a window of a long one), shown under
    /// the message with a caret.
    pub source_line: Option<String>,
    /// 1-based column of the caret within `source_line`.
    pub caret: usize,
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem with the file as a whole (unreadable, not UTF-8, ...).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
            stage: None,
            message: shorten(message.into()),
            source_line: None,
            caret: 0,
            hint: None,
        }
    }

    /// A problem at `pos` (1-based line, column) of `source`; no position
    /// degrades to [`Diagnostic::file`].
    pub fn at(file: &Path, source: &str, pos: Option<(usize, usize)>, message: impl Into<String>) -> Self {
        let mut d = Diagnostic::file(file, message);
        let Some((line, col)) = pos.filter(|(l, _)| *l > 0) else {
            return d;
        };
        d.line = line;
        d.col = col.max(1);
        if let Some(text) = source.lines().nth(line - 1) {
            let (shown, caret) = window(text.trim_end_matches('\r'), d.col);
            d.source_line = Some(shown);
            d.caret = caret;
        }
        d
    }

    pub fn in_stage(mut self, stage: impl Into<String>) -> Self {
        self.stage = Some(stage.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// `file:line:col` (or just `file` without a position).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.display().to_string()
        } else {
            format!("{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
}

/// Messages quote what they found (a parser's `invalid type: string
/// "..."`); a 200 KB key must not come back whole.
const MAX_MESSAGE: usize = 400;

fn shorten(message: String) -> String {
    // Quoted input may hold control characters; never send them to a terminal.
    let message: String = message.chars().map(|c| if c.is_control() && c != '\n' { '\u{fffd}' } else { c }).collect();
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let cut = |mut i: usize| {
        while !message.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let head = cut(MAX_MESSAGE * 2 / 3);
    let tail = cut(message.len() - MAX_MESSAGE / 4);
    format!("{} [... {} bytes ...] {}", &message[..head], tail - head, &message[tail..])
}

/// The part of `line` to show and the caret's column in it. Tabs become
/// spaces so the caret lines up (columns count characters); control
/// characters become U+FFFD.
fn window(line: &str, col: usize) -> (String, usize) {
    let chars: Vec<char> = line
        .chars()
        .map(|c| match c {
            '\t' => ' ',
            // Never send raw control characters to a terminal.
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect();
    if chars.len() <= MAX_SHOWN {
        return (chars.into_iter().collect(), col);
    }
    let start = col.saturating_sub(1).saturating_sub(MAX_SHOWN / 3).min(chars.len());
    let end = (start + MAX_SHOWN).min(chars.len());
    let mut shown = String::new();
    let mut caret = col - start;
    if start > 0 {
        shown.push_str("...");
        caret += 3;
    }
    shown.extend(&chars[start..end]);
    if end < chars.len() {
        shown.push_str("...");
    }
    (shown, caret)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location())?;
        if let Some(stage) = &self.stage {
            write!(f, "stage `{stage}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(src) = &self.source_line {
            let gutter = self.line.to_string().len();
            write!(f, "\n{:gutter$} |\n{} | {}", "", self.line, src)?;
            write!(f, "\n{:gutter$} | {:>caret$}", "", "^", caret = self.caret.max(1))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in one or more pipeline files. Always bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub diagnostics: Vec<Diagnostic>,
}

impl SpecError {
    pub fn one(d: Diagnostic) -> Self {
        SpecError { diagnostics: vec![d] }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        if self.diagnostics.len() > 1 {
            write!(f, "\n{} problems found", self.diagnostics.len())?;
        }
        Ok(())
    }
}

impl HasExitClass for SpecError {
    fn exit_class(&self) -> ExitClass {
        ExitClass::BadInput
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_location_source_caret_and_hint() {
        let src = "a: 1\nspec:\n  uses: rendr\n";
        let d = Diagnostic::at(Path::new("p.yaml"), src, Some((3, 9)), "unknown stage kind `rendr`")
            .in_stage("r")
            .with_hint("did you mean `render`?");
        assert_eq!(
            d.to_string(),
            "p.yaml:3:9: stage `r`: unknown stage kind `rendr`\n  |\n3 |   uses: rendr\n  |         ^\n  = hint: did you mean `render`?"
        );
    }

    #[test]
    fn long_lines_are_windowed_with_the_caret_kept_on_the_column() {
        let line = format!("k: {}X{}", "a".repeat(500), "b".repeat(500));
        let d = Diagnostic::at(Path::new("p.yaml"), &line, Some((1, 504)), "here");
        let shown = d.source_line.clone().unwrap();
        assert!(shown.len() < 140, "{}", shown.len());
        assert_eq!(shown.chars().nth(d.caret - 1), Some('X'));
        assert_eq!(d.col, 504);
    }

    #[test]
    fn no_position_prints_only_the_file() {
        let d = Diagnostic::at(Path::new("p.yaml"), "", None, "cannot read");
        assert_eq!(d.to_string(), "p.yaml: cannot read");
    }
}
