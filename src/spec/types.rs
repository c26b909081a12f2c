//! Serde types of the pipeline file. Key names are the contract of
//! DESIGN.md; every struct rejects unknown fields.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// Run records kept per pipeline when `spec.state.keepRuns` is not set.
pub const DEFAULT_KEEP_RUNS: usize = 50;
pub const API_VERSION: &str = "modelship.io/v1alpha1";
pub const KIND: &str = "Pipeline";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pipeline {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PipelineSpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PipelineSpec {
    pub model: ModelSpec,
    /// Parameters referenced as `{{params.NAME}}`; `--set NAME=VALUE` overrides.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, ParamSpec>,
    /// Declared order matters: the first environment holds run state unless
    /// `state.environment` names another. May be left out when no stage
    /// needs a cluster (state then lives in a local directory).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub environments: IndexMap<String, Environment>,
    pub stages: Vec<StageSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggers: Option<Triggers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
    /// A directory (relative to the pipeline file) whose templates override
    /// the stage catalog's, file by file (`render/Dockerfile.hbs`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<String>,
    /// The key the `sign` stage signs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningSpec>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SigningSpec {
    /// The private key: a Secret in the signing environment's namespace with
    /// `cosign.key` (and `cosign.password`), or a PEM file.
    pub key: KeyRef,
}

/// Where a key is: `{ secret: NAME }` or `{ file: PATH }` (relative to the
/// pipeline file).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "KeyRefFields", into = "KeyRefFields")]
pub enum KeyRef {
    Secret(String),
    File(String),
}

/// The YAML shape of [`KeyRef`]: a map with exactly one of the two keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRefFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

impl TryFrom<KeyRefFields> for KeyRef {
    type Error = String;
    fn try_from(f: KeyRefFields) -> Result<Self, String> {
        match (f.secret, f.file) {
            (Some(s), None) if !s.is_empty() => Ok(KeyRef::Secret(s)),
            (None, Some(p)) if !p.is_empty() => Ok(KeyRef::File(p)),
            _ => Err("expected exactly one of `secret: NAME` or `file: PATH`".into()),
        }
    }
}

impl From<KeyRef> for KeyRefFields {
    fn from(k: KeyRef) -> Self {
        match k {
            KeyRef::Secret(s) => KeyRefFields { secret: Some(s), file: None },
            KeyRef::File(p) => KeyRefFields { secret: None, file: Some(p) },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifySpec {
    /// The public key signatures must verify with: a Secret in the
    /// environment's namespace with `cosign.pub`, or a PEM file.
    pub public_key: KeyRef,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelSpec {
    pub name: String,
    /// `s3://BUCKET/PREFIX/`, `s3://BUCKET/KEY`, `file://PATH`,
    /// `models:/NAME@ALIAS`, `models:/NAME/VERSION` (MLflow) or `dvc:PATH`.
    pub source: String,
    /// S3-compatible endpoint (Ceph, MinIO, OCS); path-style addressing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Allow a plain-HTTP `endpoint` (a lab MinIO, the `--sim` S3). Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Kubernetes Secret (in the state environment) with S3 credentials
    /// (and, for `models:/`, `MLFLOW_TRACKING_TOKEN` or
    /// `MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// For `models:/` sources: the tracking server, and what a promotion
    /// leaves in MLflow's registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<MlflowSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MlflowSpec {
    /// The tracking server's URL; default `$MLFLOW_TRACKING_URI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_uri: Option<String>,
    /// Allow a plain-HTTP `trackingUri`. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// Environment -> the alias a promotion to it moves to the promoted
    /// version (e.g. `prod: champion`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aliases: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Environment {
    /// kubeconfig context; absent: the current context or in-cluster config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    pub namespace: String,
    /// Registry host (and optional port); absent: the cluster's integrated
    /// registry, as the ImageStream reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// Skip TLS verification for this environment's registry. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_registry: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret in `namespace` with
    /// credentials for `registry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_secret: Option<String>,
    /// Promotions into this environment must carry a signature and an
    /// attestation that verify with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
}

/// The fields every stage has, around the kind-specific `with:`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StageSpec {
    pub name: String,
    pub uses: String,
    /// Kind-specific parameters, checked against the kind's params struct.
    /// Strings may hold handlebars references to params and earlier outputs.
    #[serde(default, rename = "with", skip_serializing_if = "serde_json::Map::is_empty")]
    pub with: serde_json::Map<String, serde_json::Value>,
    /// e.g. `10m`, `90s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Extra attempts for retryable errors (0 = one attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// A handlebars expression; the stage is skipped when it renders to
    /// "", "false" or "0".
    #[serde(default, rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Triggers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushTrigger>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PushTrigger {
    #[serde(default)]
    pub branches: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StateSpec {
    /// Environment whose namespace holds run ConfigMaps and the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// How many ledger entries to keep per model (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<usize>,
    /// How many run records to keep per pipeline (default
    /// [`DEFAULT_KEEP_RUNS`]); older finished ones are deleted
    /// when a run ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_runs: Option<usize>,
}

impl Pipeline {
    /// `spec.state.keepRuns`, or the default.
    pub fn keep_runs(&self) -> usize {
        self.spec.state.as_ref().and_then(|s| s.keep_runs).unwrap_or(DEFAULT_KEEP_RUNS)
    }

    /// The environment that holds run state.
    pub fn state_environment(&self) -> Option<(&str, &Environment)> {
        let named = self.spec.state.as_ref().and_then(|s| s.environment.as_deref());
        match named {
            Some(n) => self.spec.environments.get_key_value(n).map(|(k, v)| (k.as_str(), v)),
            None => self.spec.environments.first().map(|(k, v)| (k.as_str(), v)),
        }
    }
}
