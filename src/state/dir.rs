//! State in a local directory: the same records as YAML files, for local
//! runs. Optimistic updates compare a version stored in each file.

use std::time::Duration;

use async_trait::async_trait;

use super::{Ledger, LedgerMutation, LockInfo, RunKey, RunMutation, RunRecord, StateError, StateStore};

pub struct DirStore {
    root: std::path::PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<std::path::PathBuf>) -> Self {
        DirStore { root: root.into() }
    }
}

#[async_trait]
impl StateStore for DirStore {
    fn describe(&self) -> String {
        format!("dir {}", self.root.display())
    }
    async fn create_run(&self, _run: &RunRecord) -> Result<(), StateError> {
        let _ = &self.root;
        todo!("state helper")
    }
    async fn get_run(&self, _key: &RunKey) -> Result<Option<RunRecord>, StateError> {
        todo!("state helper")
    }
    async fn update_run(&self, _key: &RunKey, _f: &mut RunMutation<'_>) -> Result<RunRecord, StateError> {
        todo!("state helper")
    }
    async fn list_runs(&self, _model: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        todo!("state helper")
    }
    async fn get_ledger(&self, _model: &str) -> Result<Ledger, StateError> {
        todo!("state helper")
    }
    async fn update_ledger(&self, _model: &str, _f: &mut LedgerMutation<'_>) -> Result<Ledger, StateError> {
        todo!("state helper")
    }
    async fn try_lock(&self, _model: &str, _holder: &str, _ttl: Duration) -> Result<LockInfo, StateError> {
        todo!("state helper")
    }
    async fn renew_lock(&self, _model: &str, _holder: &str, _ttl: Duration) -> Result<LockInfo, StateError> {
        todo!("state helper")
    }
    async fn release_lock(&self, _model: &str, _holder: &str) -> Result<(), StateError> {
        todo!("state helper")
    }
}
