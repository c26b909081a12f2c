//! What the integration tests share, written once. Every file in `tests/`
//! is its own crate and declares `mod support;`; each uses only part of it,
//! hence `dead_code` is allowed for the whole tree.
//!
//! - [`kubectl`]: the one `kubectl` (found as `scripts/setup.d/10-kubectl.sh`
//!   leaves it) against a kubeconfig.
//! - [`sim`]: a served sim (`modelship sim serve`, stopped on drop), a sim's
//!   kubeconfig on disk, skopeo's login to a sim's registry.
//! - [`env`]: two in-process sims, `dev` and `prod`, with their namespaces.
//! - [`context`]: the one `StageContext` builder, for running a stage
//!   without the engine.
//! - [`memory_state`]: the one in-memory `StateStore`; [`records`]: the
//!   ledger entry the state-store tests write.
//! - [`build`]: the pipeline and rendered context the build stage runs on.
//! - [`cli`]: the real binary on `--sim` (fixtures, venv cache, processes).
//! - [`registry`]: OCI layouts, `docker-registry`, skopeo, fault proxies.
//! - [`chromium`]: headless Chromium for the HTML report.
//! - [`s3`]: a real moto_server and boto3 to fill it; a proxy that cuts uploads.
//! - [`registries`]: an MLflow tracking server and its client, DVC repositories.
//! - [`triggers`]: a Git repository and webhook payloads for the triggers.
//! - [`schema`]: the upstream definition bundles as strict validators.
//! - [`tekton`]: a Task's step resolved from a PipelineRun as Tekton does.
#![allow(dead_code)]

pub mod build;
pub mod chromium;
pub mod cli;
pub mod context;
pub mod env;
pub mod kubectl;
pub mod memory_state;
pub mod records;
pub mod registries;
pub mod registry;
pub mod s3;
pub mod schema;
pub mod sim;
pub mod tekton;
pub mod triggers;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_modelship");

/// The repository's root (the fixtures are found from here).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `scripts/test.sh` installs the test tools (`MODELSHIP_TEST_TOOLS`,
/// else `~/.cache/modelship-test-tools`).
pub fn tools() -> PathBuf {
    match std::env::var_os("MODELSHIP_TEST_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/modelship-test-tools"),
    }
}

/// `rel` under [`tools`], which must be there: else a failure naming the
/// setup script (`scripts/setup.d/SETUP`) that installs it.
pub fn tool(rel: &str, setup: &str) -> PathBuf {
    let path = tools().join(rel);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh (its scripts/setup.d/{setup} installs it)",
        path.display()
    );
    path
}

/// `name` in a directory of `PATH`, if there is one.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|k| k.exists()))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Send a signal with the shell's `kill` builtin.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("sh").args(["-c", &format!("kill -{sig} {pid}")]).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid} failed");
}
