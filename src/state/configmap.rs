//! State in the cluster: one ConfigMap per run, one ledger ConfigMap per
//! model, and a Lease per model as the lock. Talks to the API server through
//! `kube` only, so it works the same against OpenShift and the sim.

use std::time::Duration;

use async_trait::async_trait;

use super::{Ledger, LedgerMutation, LockInfo, RunKey, RunMutation, RunRecord, StateError, StateStore};

pub struct ConfigMapStore {
    client: kube::Client,
    namespace: String,
    /// For messages: the environment name.
    label: String,
}

impl ConfigMapStore {
    pub fn new(client: kube::Client, namespace: impl Into<String>, label: impl Into<String>) -> Self {
        ConfigMapStore { client, namespace: namespace.into(), label: label.into() }
    }
}

#[async_trait]
impl StateStore for ConfigMapStore {
    fn describe(&self) -> String {
        format!("configmaps in {}/{}", self.label, self.namespace)
    }
    async fn create_run(&self, _run: &RunRecord) -> Result<(), StateError> {
        let _ = &self.client;
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
