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
