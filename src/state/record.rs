//! The records themselves: human-readable YAML in ConfigMap `data` or files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default bound on ledger history entries per model.
pub const DEFAULT_LEDGER_HISTORY: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Skipped,
    WaitingApproval,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled | Status::Skipped)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Skipped => "skipped",
            Status::WaitingApproval => "waiting-approval",
        };
        f.write_str(s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub run_id: String,
    pub pipeline: String,
    pub model: String,
    /// sha256 of the pipeline file's bytes.
    pub pipeline_digest: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub status: Status,
    /// RFC 3339.
    pub created: String,
    pub updated: String,
    #[serde(default)]
    pub stages: Vec<StageRecord>,
    /// Set while parked in `waiting-approval`, and once decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Who started the run: the cluster's SelfSubjectReview user of the
    /// runner's credentials (a CLI or Tekton run on ConfigMap state), else
    /// the local user. Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<String>,
}

/// Who someone is, as the cluster authenticated them (`SelfSubjectReview`
/// `status.userInfo`), or a local user name without groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Identity {
    pub user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StageRecord {
    pub name: String,
    pub uses: String,
    pub status: Status,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Digest of the rendered `with:` and upstream outputs; a resumed run
    /// skips a succeeded stage whose inputs digest is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_digest: Option<String>,
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    /// Progress a stage saved mid-way (e.g. the Build it started).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checkpoints: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The promotion gate that stopped the stage: `checks`, `slo`,
    /// `signature` or `approval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    /// A promote stage that pointed its target back at the earlier digest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
}

/// What one promote stage of a run did, read from its record: the numbers
/// behind `/metrics` and the `promotions` of `-o json` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionResult {
    pub stage: String,
    pub environment: String,
    /// `promoted` or `failed`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rolled_back: bool,
    /// When the stage ended (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
}

/// The gates that stopped stages of a run (any kind: a prediction check
/// stops a run before its promotion does).
pub fn gate_failures(stages: &[StageRecord]) -> Vec<String> {
    stages.iter().filter(|s| s.status == Status::Failed).filter_map(|s| s.gate.clone()).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub stage: String,
    /// `pending`, `approved`, `rejected` or `timed-out`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The policy the gate was opened with (absent in older records: one
    /// approval by anyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ApprovalPolicy>,
    /// Approvals so far, oldest first; `approved` once `policy.required`
    /// distinct people are in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<Vote>,
    /// When the gate times out (RFC 3339), so a resumed run keeps the
    /// deadline its gate opened with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// Who may decide and how many must approve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalPolicy {
    pub required: u32,
    /// Users and `group:NAME`; empty: anyone who can update the run record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forbid_self_approval: bool,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy { required: 1, approvers: Vec::new(), forbid_self_approval: false }
    }
}

impl ApprovalPolicy {
    /// Whether `who` is one of `approvers` by name or by a group.
    pub fn allows(&self, who: &Identity) -> bool {
        self.approvers.is_empty()
            || self.approvers.iter().any(|a| match a.strip_prefix("group:") {
                Some(g) => who.groups.iter().any(|have| have == g),
                None => *a == who.user,
            })
    }
}

/// One approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Vote {
    pub by: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub at: String,
}

/// One model's promotion ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    pub model: String,
    /// Environment -> the entry that put its current digest there.
    #[serde(default)]
    pub current: BTreeMap<String, LedgerEntry>,
    /// Newest last; trimmed to `limit`.
    #[serde(default)]
    pub history: Vec<LedgerEntry>,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    DEFAULT_LEDGER_HISTORY
}

impl Ledger {
    pub fn new(model: &str) -> Self {
        Ledger {
            model: model.to_string(),
            current: BTreeMap::new(),
            history: Vec::new(),
            limit: DEFAULT_LEDGER_HISTORY,
        }
    }

    /// Append an entry, make it current for its environment, trim history.
    /// An entry already in the history is not recorded again: a write whose
    /// answer was lost may have been applied before the writer re-reads and
    /// re-applies its change (and a newer entry must stay current).
    pub fn record(&mut self, entry: LedgerEntry) {
        if self.history.contains(&entry) {
            return;
        }
        self.current.insert(entry.environment.clone(), entry.clone());
        self.history.push(entry);
        let limit = self.limit.max(1);
        if self.history.len() > limit {
            let excess = self.history.len() - limit;
            self.history.drain(..excess);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// `verified` (checks passed in an environment), `promoted`, `rolled-back`.
    pub action: String,
    pub environment: String,
    /// `sha256:...`
    pub digest: String,
    /// Full image reference pinned by digest.
    pub image: String,
    pub at: String,
    pub run_id: String,
    /// Who: user, service account or approver.
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Check results that travelled with the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockInfo {
    pub model: String,
    pub holder: String,
    pub acquired: String,
    pub expires: String,
}

/// Now as RFC 3339 UTC, the timestamp format of every record.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}
