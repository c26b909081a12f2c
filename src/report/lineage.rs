//! Where a run's image came from and where it went, from the run record's
//! stage outputs and the promotion ledger: source (URI, each object's
//! version id and ETag) → model digest → build-context digest → Build →
//! image digest → environments.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::promotion::{PROMOTED, ROLLED_BACK, VERIFIED};
use crate::stages::{fetch_model, openshift_build, render};
use crate::state::{LedgerEntry, RunRecord, StageRecord};
use crate::storage::ObjectSource;

/// One run's lineage; a link the run did not produce (no fetch-model stage,
/// a run that stopped early) is `None` or empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// The URI fetch-model read (masked).
    pub source: Option<String>,
    /// Each file of the model: key, size, sha256, version id, ETag.
    pub objects: Vec<ObjectSource>,
    pub model_digest: Option<String>,
    pub context_digest: Option<String>,
    pub build: Option<BuildRef>,
    /// `REPOSITORY@sha256:...` as the build pushed it.
    pub image: Option<String>,
    pub image_digest: Option<String>,
    /// Where the ledger says this run's image went, oldest first, one entry
    /// per environment (its newest).
    pub environments: Vec<Placement>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildRef {
    pub name: String,
    pub namespace: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub environment: String,
    /// `verified`, `promoted` or `rolled-back`.
    pub action: String,
    pub digest: String,
    pub image: String,
    pub at: String,
}

/// The typed outputs of the last stage of kind `uses` that has outputs.
fn outputs<T: DeserializeOwned>(stages: &[StageRecord], uses: &str) -> Option<T> {
    let s = stages.iter().rev().find(|s| s.uses == uses && !s.outputs.is_empty())?;
    let map: serde_json::Map<String, serde_json::Value> =
        s.outputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    serde_json::from_value(serde_json::Value::Object(map)).ok()
}

fn some(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

impl Lineage {
    /// `history`: ledger entries of the run's model, any environment, oldest first.
    pub fn of(run: &RunRecord, history: &[LedgerEntry]) -> Lineage {
        let fetched: Option<fetch_model::Output> = outputs(&run.stages, "fetch-model");
        let rendered: Option<render::Output> = outputs(&run.stages, "render");
        let built: Option<openshift_build::Output> = outputs(&run.stages, "openshift-build");
        let (source, objects, content_digest) = match fetched {
            Some(f) => (some(f.source), f.objects, some(f.content_digest)),
            None => (None, Vec::new(), None),
        };
        let (model_digest, context_digest) = match rendered {
            Some(r) => (some(r.model_digest).or(content_digest), some(r.context_digest)),
            None => (content_digest, None),
        };
        let (build, image, image_digest) = match built {
            Some(b) => (
                some(b.build_name.clone()).map(|name| BuildRef { name, namespace: b.namespace.clone() }),
                some(b.image),
                some(b.image_digest),
            ),
            None => (None, None, None),
        };
        let mut environments: Vec<Placement> = Vec::new();
        for e in history.iter().filter(|e| e.run_id == run.run_id) {
            if ![VERIFIED, PROMOTED, ROLLED_BACK].contains(&e.action.as_str()) {
                continue;
            }
            environments.retain(|p| p.environment != e.environment);
            environments.push(Placement {
                environment: e.environment.clone(),
                action: e.action.clone(),
                digest: e.digest.clone(),
                image: e.image.clone(),
                at: e.at.clone(),
            });
        }
        Lineage { source, objects, model_digest, context_digest, build, image, image_digest, environments }
    }
}

/// The runs `report --since ENV` may compare with, best first: for each
/// entry that put a digest into `env` (newest first), the run it names and
/// then the runs that verified that digest anywhere. A promotion by hand
/// (`modelship promote`) names no pipeline run, so the run that built and
/// checked its digest stands for it.
pub fn since_candidates<'a>(history: &'a [LedgerEntry], env: &str, not_run: &str) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for e in history.iter().rev().filter(|e| e.environment == env && (e.action == PROMOTED || e.action == VERIFIED)) {
        let verified = history.iter().rev().filter(|v| v.action == VERIFIED && v.digest == e.digest);
        for id in std::iter::once(e.run_id.as_str()).chain(verified.map(|v| v.run_id.as_str())) {
            if id != not_run && !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}
