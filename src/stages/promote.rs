//! Stage `promote`: move the digest this run built and checked from one
//! environment to another (see [`crate::promotion`]), with the gates
//! `approval: required`, `verify: true` and `rollbackOnFailure: true`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fetch_model::{self, FetchModel};
use super::openshift_build::OpenshiftBuild;
use super::prediction_check::PredictionCheck;
use super::seldon_deploy::SeldonDeploy;
use super::{Contract, Gate, Problem, Stage, StageContext, StageError, ValidateCx};
use crate::checks::{self, DurationStr};
use crate::error::HasExitClass;
use crate::promotion::{self, PromoteOutcome, PromoteRequest, PromotionError, RollbackRequest};
use crate::registry::AuthStore;
use crate::state::{Approval, ApprovalPolicy, PromotionResult, StageRecord, Status, now_rfc3339};

const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(60 * 60);
const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5 * 60);

/// `approval:`: `required` (one approval by anyone who may update the run
/// record) or a policy object ([`ApprovalSpec`]).
#[derive(Debug, Clone, Default)]
pub enum ApprovalMode {
    #[default]
    None,
    /// Park the run in `waiting-approval` until `modelship approve|reject`.
    Required,
    Policy(ApprovalSpec),
}

/// `approval: { required: N, approvers: [...], forbidSelfApproval, timeout }`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// Distinct approvals needed (default 1).
    #[serde(default = "one")]
    pub required: u32,
    /// Who may decide: user names and `group:NAME` (default: anyone who may
    /// update the run record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// The run's starter may not approve it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forbid_self_approval: bool,
    /// How long the gate waits (default 1h; `approvalTimeout` is the older spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
}

fn one() -> u32 {
    1
}

const APPROVAL_EXPECTED: &str = "expected `required`, `none` or a policy `{ required: N, approvers: [NAME, group:NAME], forbidSelfApproval: true, timeout: 4h }`";

impl<'de> Deserialize<'de> for ApprovalMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) if s == "required" => Ok(ApprovalMode::Required),
            Value::String(s) if s == "none" => Ok(ApprovalMode::None),
            v @ Value::Object(_) => serde_json::from_value(v).map(ApprovalMode::Policy).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("{APPROVAL_EXPECTED}, found {other}"))),
        }
    }
}

impl Serialize for ApprovalMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ApprovalMode::None => s.serialize_str("none"),
            ApprovalMode::Required => s.serialize_str("required"),
            ApprovalMode::Policy(p) => p.serialize(s),
        }
    }
}

impl ApprovalMode {
    fn is_none(&self) -> bool {
        matches!(self, ApprovalMode::None)
    }

    /// The policy the gate opens with, if there is a gate.
    pub fn policy(&self) -> Option<ApprovalPolicy> {
        match self {
            ApprovalMode::None => None,
            ApprovalMode::Required => Some(ApprovalPolicy::default()),
            ApprovalMode::Policy(p) => Some(ApprovalPolicy {
                required: p.required,
                approvers: p.approvers.clone(),
                forbid_self_approval: p.forbid_self_approval,
            }),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Source environment (where the checks ran).
    pub from: String,
    /// Target environment.
    pub to: String,
    /// Tag in the target registry and ImageStream (default `latest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Digest to promote; default: the latest `openshift-build`'s
    /// `imageDigest`, else `seldon-deploy`'s `deployedDigest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Promote even without passed checks (recorded in the ledger).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    #[serde(default, skip_serializing_if = "ApprovalMode::is_none")]
    pub approval: ApprovalMode,
    /// How long a run waits for a decision (default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_timeout: Option<DurationStr>,
    /// Re-run the pipeline's prediction cases against the target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verify: bool,
    /// Target endpoint for `verify`; default: the target's SeldonDeployment
    /// `status.address.url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_endpoint: Option<String>,
    /// Point the target back at its previous digest if `verify` fails.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback_on_failure: bool,
    /// Wait this long for another runner's lock on the model (default 5m; `0s` fails fast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_wait: Option<DurationStr>,
    /// Move the ImageStream tag (default true; off for targets without image.openshift.io).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_stream: Option<bool>,
}

pub struct Promote;

impl Params {
    /// The gate's timeout and how it was written.
    fn approval_timeout(&self) -> (Duration, String) {
        let set = match &self.approval {
            ApprovalMode::Policy(ApprovalSpec { timeout: Some(t), .. }) => Some(t),
            _ => self.approval_timeout.as_ref(),
        };
        set.map_or((DEFAULT_APPROVAL_TIMEOUT, "1h".into()), |d| (d.0, d.text().to_string()))
    }
}

/// Problems of an `approval:` policy, at `approval.KEY`.
fn policy_problems(p: &ApprovalSpec, legacy_timeout: bool) -> Vec<Problem> {
    let mut out = Vec::new();
    if p.required == 0 {
        out.push(
            Problem::new("approval.required", "`required` must be at least 1")
                .with_hint("leave `approval` out for no gate"),
        );
    }
    for (i, a) in p.approvers.iter().enumerate() {
        let name = a.strip_prefix("group:").unwrap_or(a);
        if name.trim().is_empty() || name.trim() != name {
            out.push(Problem::new(
                format!("approval.approvers[{i}]"),
                format!("`{a}` is not a user name or `group:NAME`"),
            ));
        }
    }
    let users = p
        .approvers
        .iter()
        .filter(|a| !a.starts_with("group:") && !a.trim().is_empty())
        .collect::<std::collections::BTreeSet<_>>();
    let groups = p.approvers.iter().any(|a| a.starts_with("group:"));
    if !p.approvers.is_empty() && !groups && (users.len() as u32) < p.required {
        out.push(
            Problem::new(
                "approval.required",
                format!("{} approvals are required but `approvers` names only {} user(s)", p.required, users.len()),
            )
            .with_hint("name more approvers, or a `group:NAME`"),
        );
    }
    if legacy_timeout && p.timeout.is_some() {
        out.push(
            Problem::new("approvalTimeout", "both `approvalTimeout` and `approval.timeout` are set")
                .with_hint("keep `approval.timeout`"),
        );
    }
    out
}

/// What promote hands later stages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Output {
    pub image: String,
    pub digest: String,
    pub environment: String,
    pub previous_digest: Option<String>,
    pub signature_digest: Option<String>,
    pub attestation_digest: Option<String>,
    pub signature_verified: bool,
}

fn stage_error(e: PromotionError) -> StageError {
    let bad = e.exit_class() == crate::ExitClass::BadInput;
    let transient = matches!(&e, PromotionError::Copy { source, .. } if source.is_transient());
    let unverified = matches!(&e, PromotionError::Unverified { .. });
    let mut err = StageError::failed(e);
    if unverified {
        err = err.at_gate(Gate::Signature);
    }
    if bad {
        err.kind = super::StageErrorKind::BadInput;
    }
    if transient {
        err = err.retryable();
    }
    err
}

impl Contract for Promote {
    const KIND: &'static str = "promote";
    const OUTPUTS: &'static [&'static str] = &[
        "image",
        "digest",
        "environment",
        "previousDigest",
        "signatureDigest",
        "attestationDigest",
        "signatureVerified",
    ];
    type Params = Params;
    type Output = Output;

    fn validate(params: &Params, cx: &ValidateCx<'_>) -> Vec<Problem> {
        let mut out = Vec::new();
        out.extend(cx.environment_problem("from", &params.from));
        out.extend(cx.environment_problem("to", &params.to));
        if params.from == params.to {
            out.push(Problem::new("to", format!("`to` is the same environment as `from` (`{}`)", params.from)));
        }
        if let Some(d) = &params.digest
            && !crate::template::is_template(d)
            && let Err(m) = crate::registry::validate_digest(d)
        {
            out.push(Problem::new("digest", m));
        }
        if params.rollback_on_failure && !params.verify {
            out.push(
                Problem::new("rollbackOnFailure", "rollbackOnFailure needs `verify: true`")
                    .with_hint("without verify nothing can fail after the promotion"),
            );
        }
        if params.verify && !cx.may_link::<PredictionCheck>() {
            out.push(Problem::new(
                "verify",
                "verify re-runs the pipeline's prediction cases, but it has no `prediction-check` stage",
            ));
        }
        if params.approval.is_none() && params.approval_timeout.is_some() {
            out.push(Problem::new("approvalTimeout", "approvalTimeout is set but `approval` is not `required`"));
        }
        if let ApprovalMode::Policy(p) = &params.approval {
            out.extend(policy_problems(p, params.approval_timeout.is_some()));
        }
        out
    }

    fn needs_cluster(_params: &Params, _cx: &ValidateCx<'_>) -> bool {
        true
    }

    fn plan(params: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        let model = &cx.pipeline.spec.model.name;
        let tag = params.tag.as_deref().unwrap_or("latest");
        let ns = |env: &str| cx.pipeline.spec.environments.get(env).map(|e| e.namespace.clone()).unwrap_or_default();
        let mut lines = Vec::new();
        if let Some(v) = cx.pipeline.spec.environments.get(&params.to).and_then(|e| e.verify.as_ref()) {
            let key = match &v.public_key {
                crate::spec::KeyRef::Secret(s) => format!("Secret {}/{s}", ns(&params.to)),
                crate::spec::KeyRef::File(f) => format!("file {f}"),
            };
            lines.push(format!(
                "verify the digest's signature and attestation with {key} first (refuse, copying nothing, if either fails)"
            ));
        }
        lines.push(format!(
            "copy sha256-<hex>.sig and sha256-<hex>.att (if present) to {}/{model}, byte-exact",
            ns(&params.to)
        ));
        lines.push(format!(
            "copy {model}@<digest verified in `{}`> from {}/{model} to {}/{model}:{tag} (by digest)",
            params.from,
            ns(&params.from),
            ns(&params.to)
        ));
        if let Some(policy) = params.approval.policy() {
            let (_, t) = params.approval_timeout();
            let who = if policy.approvers.is_empty() {
                String::new()
            } else {
                format!(" from {}", policy.approvers.join(", "))
            };
            lines.insert(
                0,
                format!(
                    "wait up to {t} for {} `modelship approve`{who}{} (run parks in waiting-approval)",
                    policy.required,
                    if policy.forbid_self_approval { ", not by the run's starter" } else { "" }
                ),
            );
        }
        if params.image_stream.unwrap_or(true) {
            lines.push(format!(
                "ImageStreamTag {}/{model}:{tag} -> the digest (cluster `{}`)",
                ns(&params.to),
                params.to
            ));
        }
        lines.push(format!("ledger ConfigMap of `{model}` in {}: record the promotion", ns(&params.to)));
        if params.verify {
            lines.push(format!(
                "verify: prediction cases against `{}`{}",
                params.to,
                if params.rollback_on_failure { ", roll back on failure" } else { "" }
            ));
        }
        if params.force {
            lines.push("force: promote even without passed checks (recorded)".into());
        }
        lines
    }
}

/// The effectful half, beside the contract above.
impl Stage for Promote {
    async fn run(params: Params, cx: &StageContext) -> Result<Output, StageError> {
        // The target, for the record of a promotion that fails (a succeeded
        // one names it in its outputs): see [`results`].
        cx.save_checkpoint("to", json!(params.to)).await?;
        let model = cx.pipeline.spec.model.name.clone();
        let by = promotion::principal();
        let build = cx.input::<OpenshiftBuild>()?.unwrap_or_default();
        let deploy = cx.input::<SeldonDeploy>()?.unwrap_or_default();
        let nonempty = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        let digest = params
            .digest
            .clone()
            .or_else(|| nonempty(&build.image_digest))
            .or_else(|| nonempty(&deploy.deployed_digest))
            .ok_or_else(|| {
                StageError::bad_input(
                    "no digest to promote: set `with.digest` or run an `openshift-build` or `seldon-deploy` stage first",
                )
            })?;
        crate::registry::validate_digest(&digest)
            .map_err(|m| StageError::bad_input(format!("digest `{digest}`: {m}")))?;

        let from = promotion::resolve_env(&cx.clusters, &params.from, &model).await.map_err(stage_error)?;
        let image = nonempty(&build.image)
            .map(|i| match i.split_once('@') {
                Some((repo, _)) => format!("{repo}@{digest}"),
                None => format!("{}@{digest}", strip_tag(&i)),
            })
            .unwrap_or_else(|| format!("{}@{digest}", from.repository(&model)));

        // The check's verdict travels with the digest in the ledger.
        let check = cx.input::<PredictionCheck>()?.unwrap_or_default();
        let passed = check.passed;
        let mut checks = match check.report {
            Some(report) => Some(report),
            None => Some(json!({ "passed": false, "reason": "no prediction-check stage ran before this promotion" })),
        };
        // The MLflow version travels with the digest in the ledger, so a
        // promotion or rollback by hand can update the registry too.
        let model_version =
            cx.input::<FetchModel>()?.and_then(|f| f.mlflow).map(|m| fetch_model::model_version_json(&m));
        if let (Some(Value::Object(c)), Some(v)) = (checks.as_mut(), &model_version) {
            c.insert("mlflow".into(), v.clone());
        }
        if !passed && !params.force {
            return Err(StageError::bad_input(format!(
                "refused: {digest} has no passed prediction check in `{}`; set `force: true` to promote it anyway (recorded)",
                params.from
            ))
            .at_gate(Gate::Checks));
        }
        let state_dir = state_dir_of(cx);
        let from_store = promotion::ledger_store(&from, state_dir.as_deref());
        promotion::record_check(
            &*from_store,
            &model,
            &params.from,
            &digest,
            &image,
            &cx.run_id,
            &by,
            checks.clone(),
            passed,
        )
        .await
        .map_err(stage_error)?;

        let mut by_for_ledger = by.clone();
        let mut comment = None;
        if let Some(policy) = params.approval.policy() {
            let decision = wait_for_approval(&params, &policy, cx, &digest, checks.clone()).await?;
            by_for_ledger = decision.by.clone().unwrap_or(by.clone());
            comment = decision.comment.clone();
        }

        let req = PromoteRequest {
            model: model.clone(),
            from: params.from.clone(),
            to: params.to.clone(),
            digest: Some(digest.clone()),
            tag: params.tag.clone().unwrap_or_else(|| "latest".into()),
            run_id: cx.run_id.clone(),
            by: by_for_ledger.clone(),
            comment,
            force: params.force,
            lock_wait: params.lock_wait.as_ref().map_or(DEFAULT_LOCK_WAIT, |d| d.0),
            lock_ttl: promotion::LOCK_TTL,
            image_stream: params.image_stream.unwrap_or(true),
            state_dir: state_dir.clone(),
            // An auth file that is there but unreadable is an error, never an anonymous push.
            auth: AuthStore::load(None).map_err(|e| StageError::bad_input(e.to_string()))?,
            pipeline_dir: Some(cx.pipeline_dir.clone()),
        };
        let outcome = tokio::select! {
            r = promotion::promote(&cx.clusters, &req, false) => r.map_err(stage_error)?,
            _ = cx.cancel.cancelled() => {
                release_after_cancel(cx, &req).await;
                return Err(StageError::cancelled());
            }
        };
        // The registry shows what runs where.
        if let Some(v) = outcome.model_version.as_ref().or(model_version.as_ref()) {
            fetch_model::record_in_registry(&cx.clusters, &cx.pipeline, v, &params.to, &outcome.digest)
                .await
                .map_err(|e| registry_error(&params.to, &outcome.digest, e))?;
        }
        if params.verify {
            verify(&params, cx, &req, &outcome).await?;
        }
        let prov = outcome.provenance.clone().unwrap_or_default();
        Ok(Output {
            image: outcome.image.clone(),
            digest: outcome.digest.clone(),
            environment: params.to.clone(),
            previous_digest: outcome.previous.as_ref().map(|p| p.digest.clone()),
            signature_digest: prov.signature,
            attestation_digest: prov.attestation,
            signature_verified: prov.verified,
        })
    }
}

/// The promotion happened, but the registry could not be told: the stage
/// fails (a retry repeats nothing but the registry update).
fn registry_error(env: &str, digest: &str, e: fetch_model::FetchModelError) -> StageError {
    let transient = matches!(&e, fetch_model::FetchModelError::Storage(s) if s.retryable());
    let err = StageError::msg(format!("{digest} is in `{env}`, but recording it in MLflow's registry failed: {e}"));
    if transient { err.retryable() } else { err }
}

fn strip_tag(image: &str) -> &str {
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    }
}

/// The run's state directory when the run keeps state in files (the ledger
/// then lives beside it), else `None` (ConfigMaps per environment).
fn state_dir_of(cx: &StageContext) -> Option<std::path::PathBuf> {
    cx.state.describe().strip_prefix("dir ").map(std::path::PathBuf::from)
}

/// A cancelled promotion dropped its future between lock and release:
/// release here (a no-op if it never took the lock).
async fn release_after_cancel(cx: &StageContext, req: &PromoteRequest) {
    if let Ok(to) = promotion::resolve_env(&cx.clusters, &req.to, &req.model).await {
        let store = promotion::ledger_store(&to, req.state_dir.as_deref());
        let holder = format!("{} (run {})", req.by, req.run_id);
        if let Err(e) = store.release_lock(&req.model, &holder).await {
            tracing::warn!(error = %e, "could not release the promotion lock after cancel; it expires on its own");
        }
    }
}

/// The promote stages of a run that ended (succeeded or failed), in run
/// order: the numbers behind `/metrics` and the `promotions` of `-o json`
/// answers. The target is the stage's `environment` output, or the `to`
/// checkpoint it saves before anything can fail.
pub fn results(stages: &[StageRecord]) -> Vec<PromotionResult> {
    stages
        .iter()
        .filter(|s| s.uses == Promote::KIND && matches!(s.status, Status::Succeeded | Status::Failed))
        .map(|s| {
            let environment = [s.outputs.get("environment"), s.checkpoints.get("to")]
                .into_iter()
                .flatten()
                .find_map(Value::as_str)
                .unwrap_or_default()
                .to_string();
            PromotionResult {
                stage: s.name.clone(),
                environment,
                result: if s.status == Status::Succeeded { "promoted" } else { "failed" },
                gate: s.gate.clone(),
                rolled_back: s.rolled_back,
                finished: s.finished.clone(),
            }
        })
        .collect()
}

/// Open the gate (the run in `waiting-approval`, the policy and deadline in
/// its record) and watch the record until `modelship approve|reject`
/// decides or the deadline passes. With `--park` the stage ends here
/// ([`StageError::parked`]) and a `--resume` picks the gate up again: its
/// approvals and deadline are kept. A gate approved for this digest (or
/// rejected) already is answered at once.
async fn wait_for_approval(
    params: &Params,
    policy: &ApprovalPolicy,
    cx: &StageContext,
    digest: &str,
    checks: Option<Value>,
) -> Result<Approval, StageError> {
    let stage = cx.stage.name.clone();
    let state_err = |e: crate::state::StateError| StageError::failed(e).retryable();
    let (timeout, timeout_text) = params.approval_timeout();
    let existing = cx.state.get_run(&cx.run_key).await.map_err(state_err)?.and_then(|r| r.approval);
    let same = existing.as_ref().filter(|a| a.stage == stage && a.digest.as_deref() == Some(digest));
    match same.map(|a| a.decision.as_str()) {
        Some("approved") => return Ok(same.cloned().unwrap_or_default()),
        Some("rejected") => return Err(rejected(params, digest, same.unwrap())),
        _ => {}
    }
    let open = same.filter(|a| a.decision == "pending").cloned();
    cx.save_checkpoint("approvalChecks", checks.unwrap_or(Value::Null)).await?;
    let now = jiff::Timestamp::now();
    let expires = open.as_ref().and_then(|a| a.expires.clone()).unwrap_or_else(|| {
        now.checked_add(jiff::SignedDuration::try_from(timeout).unwrap_or(jiff::SignedDuration::MAX))
            .unwrap_or(jiff::Timestamp::MAX)
            .to_string()
    });
    let pending = Approval {
        stage: stage.clone(),
        decision: "pending".into(),
        digest: Some(digest.to_string()),
        at: Some(now.to_string()),
        policy: Some(policy.clone()),
        expires: Some(expires.clone()),
        ..Approval::default()
    };
    let opened =
        cx.state
            .update_run(&cx.run_key, &mut |run| {
                run.status = Status::WaitingApproval;
                // A resumed gate keeps the approvals it had.
                let keep = run.approval.as_ref().is_some_and(|a| {
                    a.stage == stage && a.digest.as_deref() == Some(digest) && a.decision == "pending"
                });
                if !keep {
                    run.approval = Some(pending.clone());
                }
                Ok(())
            })
            .await
            .map_err(state_err)?;
    let have = opened.approval.as_ref().map_or(0, |a| a.approvals.len());
    tracing::warn!(
        run_id = %cx.run_id, stage = %stage, digest, required = policy.required, approvals = have,
        "waiting for approval ({have} of {}): modelship approve {} -f PIPELINE --comment TEXT (or reject)",
        policy.required, cx.run_id
    );
    let remaining = expires
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.duration_since(jiff::Timestamp::now()))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::ZERO);
    // A gate whose deadline passed times out below, parked or not.
    if cx.park && !remaining.is_zero() {
        return Err(StageError::parked(format!(
            "run {} parked at the approval gate of stage `{stage}` ({have} of {} approvals); after `modelship approve {}`, continue with `modelship run PIPELINE --resume {}`",
            cx.run_id, policy.required, cx.run_id, cx.run_id
        )));
    }
    let decided_now = |run: &crate::state::RunRecord| {
        run.approval.as_ref().is_some_and(|a| a.stage == stage && a.decision != "pending")
    };
    let mut done = decided_now;
    let watched = tokio::select! {
        r = tokio::time::timeout(remaining, cx.state.watch_run(&cx.run_key, &mut done)) => r,
        _ = cx.cancel.cancelled() => return Err(StageError::cancelled()),
    };
    let decided = match watched {
        Ok(run) => run.map_err(state_err)?.approval,
        Err(_elapsed) => None,
    };
    let decision = decided.clone().map_or("timed-out".to_string(), |a| a.decision);
    cx.state
        .update_run(&cx.run_key, &mut |run| {
            run.status = Status::Running;
            if decision == "timed-out"
                && let Some(a) = run.approval.as_mut()
                && a.decision == "pending"
            {
                a.decision = "timed-out".into();
                a.at = Some(now_rfc3339());
            }
            Ok(())
        })
        .await
        .map_err(state_err)?;
    match decided {
        Some(a) if a.decision == "approved" => Ok(a),
        Some(a) => Err(rejected(params, digest, &a)),
        None => {
            Err(StageError::msg(format!("no approval for promoting {digest} to `{}` within {timeout_text}", params.to))
                .at_gate(Gate::Approval))
        }
    }
}

fn rejected(params: &Params, digest: &str, a: &Approval) -> StageError {
    StageError::msg(format!(
        "promotion of {digest} to `{}` was {} by {}{}",
        params.to,
        a.decision,
        a.by.as_deref().unwrap_or("someone"),
        a.comment.as_deref().map(|c| format!(": {c}")).unwrap_or_default()
    ))
    .at_gate(Gate::Approval)
}

/// Re-run the pipeline's prediction cases against the target; on failure
/// record it and, with `rollbackOnFailure`, point the target back.
async fn verify(
    params: &Params,
    cx: &StageContext,
    req: &PromoteRequest,
    outcome: &PromoteOutcome,
) -> Result<(), StageError> {
    let mut check = cx
        .input_params::<PredictionCheck>()?
        .ok_or_else(|| StageError::bad_input("verify: no prediction-check stage ran before this one"))?;
    check.environment = Some(params.to.clone());
    let endpoint = match &params.verify_endpoint {
        Some(e) => e.clone(),
        None => seldon_address(cx, &params.to, &req.model).await?,
    };
    let report = tokio::select! {
        r = checks::check(&check, &endpoint, Some(&req.model)) => r.map_err(StageError::failed)?,
        _ = cx.cancel.cancelled() => return Err(StageError::cancelled()),
    };
    let json = serde_json::to_value(&report).map_err(StageError::failed)?;
    let to = promotion::resolve_env(&cx.clusters, &params.to, &req.model).await.map_err(stage_error)?;
    let store = promotion::ledger_store(&to, req.state_dir.as_deref());
    promotion::record_check(
        &*store,
        &req.model,
        &params.to,
        &outcome.digest,
        &outcome.image,
        &cx.run_id,
        &req.by,
        Some(json),
        report.passed,
    )
    .await
    .map_err(stage_error)?;
    if report.passed {
        return Ok(());
    }
    let mut message = format!("verification in `{}` failed:\n{}", params.to, report.failure_summary());
    let mut rolled_back = false;
    if params.rollback_on_failure {
        match &outcome.previous {
            Some(prev) => {
                let rb = RollbackRequest {
                    model: req.model.clone(),
                    env: params.to.clone(),
                    to_digest: Some(prev.digest.clone()),
                    tag: req.tag.clone(),
                    run_id: cx.run_id.clone(),
                    by: req.by.clone(),
                    reason: Some(format!("verification of {} failed", outcome.digest)),
                    lock_wait: req.lock_wait,
                    lock_ttl: req.lock_ttl,
                    image_stream: req.image_stream,
                    state_dir: req.state_dir.clone(),
                    auth: req.auth.clone(),
                };
                let done = promotion::rollback(&cx.clusters, &rb).await.map_err(stage_error)?;
                message.push_str(&format!("\nrolled `{}` back to {}", params.to, done.digest));
                rolled_back = true;
                if let Some(v) = &done.model_version {
                    fetch_model::record_in_registry(&cx.clusters, &cx.pipeline, v, &params.to, &done.digest)
                        .await
                        .map_err(|e| registry_error(&params.to, &done.digest, e))?;
                    message.push_str(&format!(
                        " (MLflow: {} version {} again)",
                        v["name"].as_str().unwrap_or_default(),
                        v["version"].as_str().unwrap_or_default()
                    ));
                }
            }
            None => message.push_str(&format!("\nno earlier digest in `{}` to roll back to", params.to)),
        }
    }
    let mut err = StageError::msg(message).at_gate(super::prediction_check::gate_of(&report));
    err.rolled_back = rolled_back;
    Err(err)
}

/// `status.address.url` of the target's SeldonDeployment named after the model.
async fn seldon_address(cx: &StageContext, env: &str, model: &str) -> Result<String, StageError> {
    let ns = cx.clusters.environment(env).map_err(StageError::failed)?.namespace.clone();
    let client = cx.clusters.client(env).await.map_err(StageError::failed)?;
    let url =
        crate::cluster::seldon::address(&client, &ns, model).await.map_err(|e| StageError::failed(e).retryable())?;
    url.ok_or_else(|| {
        StageError::bad_input(format!(
            "verify: SeldonDeployment {ns}/{model} in `{env}` has no status.address.url; set `with.verifyEndpoint`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::spec::Pipeline;

    fn problems(with: Value) -> Vec<String> {
        let pipeline: Pipeline = crate::spec::yaml::from_str(
            r#"
apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: { name: weather }
spec:
  model: { name: weather, source: "file://m" }
  environments:
    dev: { namespace: models-dev }
    prod: { namespace: models-prod }
  stages:
    - { name: promote, uses: promote, with: { from: dev, to: prod } }
"#,
        )
        .unwrap();
        let catalog = Catalog::embedded();
        let cx = ValidateCx { pipeline: &pipeline, stage: &pipeline.spec.stages[0], index: 0, catalog: &catalog };
        let params: Params = serde_json::from_value(with).unwrap();
        Promote::validate(&params, &cx).into_iter().map(|p| format!("{}: {}", p.path, p.message)).collect()
    }

    #[test]
    fn validate_names_each_problem() {
        assert!(problems(json!({ "from": "dev", "to": "prod" })).is_empty());
        let got = problems(json!({
            "from": "dev", "to": "staging", "digest": "sha256:zz",
            "rollbackOnFailure": true, "approvalTimeout": "1h"
        }));
        let paths: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["to", "digest", "rollbackOnFailure", "approvalTimeout"], "{got:?}");
        let got = problems(json!({ "from": "dev", "to": "dev", "verify": true }));
        assert!(got.iter().any(|p| p.contains("same environment")), "{got:?}");
        assert!(got.iter().any(|p| p.starts_with("verify")), "{got:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = serde_json::from_value::<Params>(json!({ "from": "dev", "to": "prod", "aproval": "required" }));
        assert!(err.unwrap_err().to_string().contains("unknown field `aproval`"));
    }

    #[test]
    fn approval_takes_the_shorthand_or_a_policy() {
        let p: Params = serde_json::from_value(json!({ "from": "dev", "to": "prod", "approval": "required" })).unwrap();
        assert_eq!(p.approval.policy(), Some(ApprovalPolicy::default()));
        let p: Params = serde_json::from_value(json!({ "from": "dev", "to": "prod", "approval": {
            "required": 2, "approvers": ["alice", "group:ml-leads"], "forbidSelfApproval": true, "timeout": "4h" } }))
        .unwrap();
        let policy = p.approval.policy().unwrap();
        assert_eq!((policy.required, policy.forbid_self_approval), (2, true));
        assert_eq!(p.approval_timeout(), (Duration::from_secs(4 * 3600), "4h".to_string()));
        assert!(
            serde_json::from_value::<Params>(json!({ "from": "dev", "to": "prod" }))
                .unwrap()
                .approval
                .policy()
                .is_none()
        );
        // The older spelling of the timeout still applies to the shorthand.
        let p: Params = serde_json::from_value(
            json!({ "from": "dev", "to": "prod", "approval": "required", "approvalTimeout": "10m" }),
        )
        .unwrap();
        assert_eq!(p.approval_timeout().1, "10m");
        let bad = |v: Value| {
            serde_json::from_value::<Params>(json!({ "from": "dev", "to": "prod", "approval": v }))
                .unwrap_err()
                .to_string()
        };
        assert!(bad(json!("yes")).contains("expected `required`, `none` or a policy"), "{}", bad(json!("yes")));
        assert!(bad(json!({ "aprovers": ["a"] })).contains("unknown field `aprovers`"));
        assert!(bad(json!({ "timeout": "soon" })).contains("not a duration"));
    }

    #[test]
    fn validate_names_policy_problems() {
        let got = problems(json!({ "from": "dev", "to": "prod", "approvalTimeout": "1h",
            "approval": { "required": 3, "approvers": ["alice", "bob", ""], "timeout": "2h" } }));
        let paths: Vec<&str> = got.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(paths, ["approval.approvers[2]", "approval.required", "approvalTimeout"], "{got:?}");
        assert!(
            problems(json!({ "from": "dev", "to": "prod", "approval": { "required": 0 } }))[0].contains("at least 1")
        );
        // Groups may hold any number of people.
        assert!(
            problems(json!({ "from": "dev", "to": "prod",
            "approval": { "required": 3, "approvers": ["alice", "group:leads"] } }))
            .is_empty()
        );
    }

    #[test]
    fn strip_tag_keeps_registry_ports() {
        assert_eq!(strip_tag("127.0.0.1:5000/ns/m:v1"), "127.0.0.1:5000/ns/m");
        assert_eq!(strip_tag("127.0.0.1:5000/ns/m"), "127.0.0.1:5000/ns/m");
    }

    #[test]
    fn results_read_promote_stages_that_ended() {
        let stage = |name: &str, uses: &str, status, outputs: Value, checkpoints: Value| StageRecord {
            name: name.into(),
            uses: uses.into(),
            status,
            outputs: serde_json::from_value(outputs).unwrap(),
            checkpoints: serde_json::from_value(checkpoints).unwrap(),
            finished: Some("2026-12-02T10:00:00Z".into()),
            ..StageRecord::default()
        };
        let mut failed = stage("to-prod", "promote", Status::Failed, json!({}), json!({ "to": "prod" }));
        failed.gate = Some("approval".into());
        let stages = [
            stage("check", "prediction-check", Status::Succeeded, json!({ "passed": true }), json!({})),
            stage("to-staging", "promote", Status::Succeeded, json!({ "environment": "staging" }), json!({})),
            failed,
            stage("later", "promote", Status::Pending, json!({}), json!({ "to": "eu" })),
        ];
        let got: Vec<(String, &str, Option<String>)> =
            results(&stages).into_iter().map(|p| (p.environment, p.result, p.gate)).collect();
        assert_eq!(
            got,
            [("staging".into(), "promoted", None), ("prod".into(), "failed", Some("approval".to_string()))]
        );
    }
}
