//! Span-carrying problems, printed like just/uv: `file:line:col: message`,
//! the source line, a caret, and a hint.

use std::fmt;
use std::path::PathBuf;

use crate::error::{ExitClass, HasExitClass};

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
    /// The offending source line, shown under the message with a caret.
    pub source_line: Option<String>,
    pub hint: Option<String>,
}

impl Diagnostic {
    /// `file:line:col` (or just `file` without a position).
    pub fn location(&self) -> String {
        if self.line == 0 {
            self.file.display().to_string()
        } else {
            format!("{}:{}:{}", self.file.display(), self.line, self.col)
        }
    }
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
            write!(f, "\n{:gutter$} | {:>col$}", "", "^", col = self.col.max(1))?;
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
