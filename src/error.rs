//! Failure classes shared by every module: each error type says whether it is
//! bad input (exit 2), a stage that failed (exit 1) or a bug.

/// How a failure maps to the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// The user's input (file, flag, payload) is wrong: exit 2.
    BadInput,
    /// The work itself failed (a stage, a cluster, a registry): exit 1.
    Failed,
    /// An invariant broke: exit 1 with a "this is a bug" message.
    Internal,
}

impl ExitClass {
    pub fn code(self) -> i32 {
        match self {
            ExitClass::BadInput => 2,
            ExitClass::Failed | ExitClass::Internal => 1,
        }
    }
}

/// Implemented by every library error so the binary edge can pick an exit code
/// without knowing the module.
pub trait HasExitClass {
    fn exit_class(&self) -> ExitClass;
}

/// The cause chain on one line, `outer: inner: ...`, leaving out a cause
/// the message before it already says (wrappers that keep their source for
/// callers often repeat its text).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let message = c.to_string();
        if !text.ends_with(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = c.source();
    }
    text
}
