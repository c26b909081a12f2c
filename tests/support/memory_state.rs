//! The one in-memory `StateStore`: one run record, for a stage run without
//! the engine (a stage saves checkpoints, e.g. a failed report, into it).
//! Ledger and lock calls are not what these tests are about and panic.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use modelship::state::{
    Ledger, LedgerMutation, LockInfo, LockScope, RunKey, RunMutation, RunRecord, StateError, StateStore,
};

#[derive(Default)]
pub struct MemoryState {
    /// The run, once created.
    pub run: Mutex<Option<RunRecord>>,
}

#[async_trait]
impl StateStore for MemoryState {
    fn describe(&self) -> String {
        "memory".into()
    }
    async fn create_run(&self, run: &RunRecord) -> Result<(), StateError> {
        *self.run.lock().unwrap() = Some(run.clone());
        Ok(())
    }
    async fn get_run(&self, _key: &RunKey) -> Result<Option<RunRecord>, StateError> {
        Ok(self.run.lock().unwrap().clone())
    }
    async fn update_run(&self, _key: &RunKey, f: &mut RunMutation<'_>) -> Result<RunRecord, StateError> {
        let mut guard = self.run.lock().unwrap();
        let run = guard.as_mut().expect("run created");
        f(run)?;
        Ok(run.clone())
    }
    async fn list_runs(&self, _model: Option<&str>) -> Result<Vec<RunRecord>, StateError> {
        Ok(self.run.lock().unwrap().iter().cloned().collect())
    }
    async fn delete_run(&self, _key: &RunKey) -> Result<bool, StateError> {
        unimplemented!("stages do not delete runs")
    }
    async fn get_ledger(&self, _model: &str) -> Result<Ledger, StateError> {
        unimplemented!("the stage under test does not touch the ledger")
    }
    async fn update_ledger(&self, _model: &str, _f: &mut LedgerMutation<'_>) -> Result<Ledger, StateError> {
        unimplemented!("the stage under test does not touch the ledger")
    }
    async fn try_scoped_lock(
        &self,
        _scope: LockScope,
        _model: &str,
        _holder: &str,
        _ttl: Duration,
    ) -> Result<LockInfo, StateError> {
        unimplemented!("the stage under test does not lock")
    }
    async fn renew_scoped_lock(
        &self,
        _scope: LockScope,
        _model: &str,
        _holder: &str,
        _ttl: Duration,
    ) -> Result<LockInfo, StateError> {
        unimplemented!("the stage under test does not lock")
    }
    async fn release_scoped_lock(&self, _scope: LockScope, _model: &str, _holder: &str) -> Result<(), StateError> {
        unimplemented!("the stage under test does not lock")
    }
}
