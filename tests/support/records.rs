//! Records the state-store tests write: a ledger entry per run.

use modelship::state::LedgerEntry;

/// `promoted` to `prod` by `tester` in run `run_id` (the digest differs
/// with the length of the run id only; these tests count entries).
pub fn entry(run_id: &str) -> LedgerEntry {
    LedgerEntry {
        action: "promoted".into(),
        environment: "prod".into(),
        digest: format!("sha256:{:0>64}", run_id.len()),
        image: "registry.example.com/models/weather@sha256:0".into(),
        at: "2026-01-01T00:00:00Z".into(),
        run_id: run_id.into(),
        by: "tester".into(),
        ..Default::default()
    }
}
