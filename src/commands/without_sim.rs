//! A build without the cargo feature `sim` (`--no-default-features`, the
//! production binary): the simulated OpenShift is not compiled in. The CLI
//! keeps its shape so that `modelship sim ...` and every `--sim DIR` are
//! refused with one line naming the feature and exit code 2, rather than with
//! clap's bare "unexpected argument"; these stand-ins are hidden from `--help`.

use super::{CommandError, GlobalArgs};

/// The error for `what` (`--sim`, `` `modelship sim` ``): a usage error, exit 2.
pub fn unavailable(what: &str) -> CommandError {
    CommandError::usage(format!(
        "{what} needs the simulated OpenShift, which this modelship was built without: \
         rebuild with the cargo feature `sim` (on by default; `cargo build --features sim`)"
    ))
}

/// `modelship sim ...`: accepts any arguments and refuses them.
pub mod sim {
    use clap::Args;

    use super::{CommandError, GlobalArgs, unavailable};

    #[derive(Debug, Args)]
    pub struct SimCommand {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        rest: Vec<String>,
    }

    pub async fn run(_c: SimCommand, _g: &GlobalArgs) -> Result<(), CommandError> {
        Err(unavailable("`modelship sim`"))
    }
}

/// `--sim DIR` on `run`, `status`, `report` and the promotion commands.
pub mod simulated {
    use std::path::{Path, PathBuf};

    use super::{CommandError, unavailable};
    use crate::spec::{Overrides, Pipeline};

    /// `run --fault RULE` parses as text here; `--fault` requires `--sim`.
    pub type FaultRule = String;

    #[derive(Debug, Clone, Default)]
    pub struct SimOptions {
        pub serve_s3: bool,
        pub rbac: Option<PathBuf>,
        pub faults: Vec<FaultRule>,
        pub params: Vec<(String, String)>,
        pub overrides: Overrides,
        pub read_only: bool,
    }

    /// Never constructed: [`SimClusters::start`] always refuses.
    pub struct SimClusters {
        pub kubeconfig: PathBuf,
        pub overrides: Overrides,
    }

    impl SimClusters {
        pub async fn start(_pipeline: &Path, _dir: &Path, _opts: &SimOptions) -> Result<SimClusters, CommandError> {
            Err(unavailable("--sim"))
        }

        pub async fn shutdown(self) {}
    }

    /// Not reached: `run` refuses `--sim` before its dry run.
    pub fn overrides_for(_pipeline: &Pipeline, base: &Overrides) -> Overrides {
        base.clone()
    }
}
