//! `modelship approve RUN_ID` and `modelship reject RUN_ID`: record a
//! decision on a run parked in `waiting-approval`, under the gate's policy.
//!
//! Who decides is who the cluster says the caller is (SelfSubjectReview
//! through the run's state environment) when state is in ConfigMaps; only
//! with a directory store (`--state-dir`) does `--by` (or `$USER`) name them.

use clap::Args;

use super::session::{Access, Session, Where};
use super::{CommandError, GlobalArgs, fail};
use crate::state::{Identity, RunKey, StateError, Status, Vote, now_rfc3339};

#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "For a run waiting at a promote stage with `approval: required` (or a policy), e.g. one started with\n`modelship run pipelines/weather.yaml --sim /tmp/sim --state-dir ./state --park`.\n\nExamples:\n  modelship approve RUN_ID --by alice -f pipelines/weather.yaml --state-dir ./state \\\n    --comment 'checked the report'\n  modelship reject RUN_ID --by alice -f pipelines/weather.yaml --state-dir ./state"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "For a run waiting at a promote stage with `approval: required` (or a policy).\nThe decider is the cluster's SelfSubjectReview user of your kubeconfig.\n\nExamples:\n  modelship approve RUN_ID -f pipelines/weather.yaml --comment 'checked the report'\n  modelship reject RUN_ID -f pipelines/weather.yaml -n dev=models-dev-2 --comment 'wrong data'"
    )
)]
pub struct DecisionArgs {
    /// The run waiting for approval (`modelship status` lists it as waiting-approval).
    pub run_id: String,
    /// Who decides, with a directory store (`--state-dir`) only; default
    /// `$USER`. With ConfigMap state the cluster names you, and `--by` must
    /// match it.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// Why, kept with the decision.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
    #[command(flatten)]
    pub place: Where,
}

pub async fn run(a: DecisionArgs, approve: bool, _g: &GlobalArgs) -> Result<(), CommandError> {
    let session = Session::open(&a.place, Access::Write).await?;
    let result = async {
        let state = crate::engine::open_state(&session.pipeline, session.state_dir.as_deref(), &session.clusters)
            .await
            .map_err(fail)?;
        let who = identity(&*state, a.by.as_deref()).await?;
        let key = RunKey { pipeline: session.pipeline.metadata.name.clone(), run_id: a.run_id.clone() };
        decide(&*state, &key, approve, &who, a.comment.as_deref()).await.map_err(|e| match e {
            StateError::NotFound { .. } => CommandError::usage(e.to_string()),
            e => fail(e),
        })
    }
    .await;
    session.close().await;
    let d = result?;
    let verb = if approve { "approved" } else { "rejected" };
    match d.decision.as_str() {
        "pending" => println!(
            "approval of run {} by {} recorded ({} of {}; waiting for {} more) ({})",
            a.run_id,
            d.by,
            d.approvals,
            d.required,
            d.required as usize - d.approvals,
            d.digest
        ),
        _ => println!("{verb} run {} ({}) by {}", a.run_id, d.digest, d.by),
    }
    Ok(())
}

/// The decider: the state store's cluster identity, else (a directory
/// store) `--by` or the local user. `--by` naming someone else than the
/// cluster says is refused (exit 2).
pub async fn identity(state: &dyn crate::state::StateStore, by: Option<&str>) -> Result<Identity, CommandError> {
    match state.whoami().await.map_err(fail)? {
        Some(id) => match by {
            Some(b) if b != id.user => Err(CommandError::usage(format!(
                "--by {b}: the cluster identifies you as `{}` (SelfSubjectReview); with run state in ConfigMaps the decider is who your credentials are, so drop --by",
                id.user
            ))),
            _ => Ok(id),
        },
        None => Ok(Identity { user: by.map_or_else(crate::promotion::principal, str::to_string), groups: Vec::new() }),
    }
}

/// What a decision left on the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub digest: String,
    /// `pending` (more approvals needed), `approved` or `rejected`.
    pub decision: String,
    pub approvals: usize,
    pub required: u32,
    pub by: String,
}

/// Record `who`'s decision if the run waits for one and the gate's policy
/// lets them; refusals are [`StateError::Rejected`] (exit 2) and change nothing.
pub async fn decide(
    state: &dyn crate::state::StateStore,
    key: &RunKey,
    approve: bool,
    who: &Identity,
    comment: Option<&str>,
) -> Result<Decided, StateError> {
    if state.get_run(key).await?.is_none() {
        return Err(StateError::NotFound { what: format!("run {}", key.run_id), store: state.describe() });
    }
    let mut out = None;
    state
        .update_run(key, &mut |run| {
            let waiting = run.status == Status::WaitingApproval;
            let (run_id, status, starter) = (run.run_id.clone(), run.status, run.started_by.clone());
            let Some(a) = run.approval.as_mut().filter(|a| waiting && a.decision == "pending") else {
                return Err(StateError::Rejected(format!("run {run_id} is {status} and waits for no approval")));
            };
            let policy = a.policy.clone().unwrap_or_default();
            if let Some(t) = a.expires.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok())
                && t <= jiff::Timestamp::now()
            {
                return Err(StateError::Rejected(format!(
                    "the approval gate of run {run_id} timed out at {t}; nothing was recorded"
                )));
            }
            if !policy.allows(who) {
                return Err(StateError::Rejected(format!(
                    "`{}` may not decide on run {run_id}: the gate of stage `{}` takes approvers {} (you are in groups: {})",
                    who.user,
                    a.stage,
                    policy.approvers.join(", "),
                    if who.groups.is_empty() { "none".to_string() } else { who.groups.join(", ") }
                )));
            }
            let now = now_rfc3339();
            if approve {
                if policy.forbid_self_approval {
                    match &starter {
                        Some(s) if *s == who.user => {
                            return Err(StateError::Rejected(format!(
                                "`{}` started run {run_id} and may not approve it (forbidSelfApproval); someone else must",
                                who.user
                            )));
                        }
                        Some(_) => {}
                        None => {
                            return Err(StateError::Rejected(format!(
                                "run {run_id} does not record who started it, so forbidSelfApproval cannot be checked; reject it and start it again"
                            )));
                        }
                    }
                }
                if a.approvals.iter().any(|v| v.by == who.user) {
                    return Err(StateError::Rejected(format!(
                        "`{}` has approved run {run_id} already; {} of {} approvals are in, each from a different person",
                        who.user,
                        a.approvals.len(),
                        policy.required
                    )));
                }
                a.approvals.push(Vote {
                    by: who.user.clone(),
                    groups: who.groups.clone(),
                    comment: comment.map(str::to_string),
                    at: now.clone(),
                });
                if a.approvals.len() >= policy.required as usize {
                    a.decision = "approved".into();
                    a.by = Some(a.approvals.iter().map(|v| v.by.as_str()).collect::<Vec<_>>().join(", "));
                    let comments: Vec<&str> = a.approvals.iter().filter_map(|v| v.comment.as_deref()).collect();
                    a.comment = (!comments.is_empty()).then(|| comments.join("; "));
                    a.at = Some(now);
                }
            } else {
                a.decision = "rejected".into();
                a.by = Some(who.user.clone());
                a.comment = comment.map(str::to_string);
                a.at = Some(now);
            }
            out = Some(Decided {
                digest: a.digest.clone().unwrap_or_default(),
                decision: a.decision.clone(),
                approvals: a.approvals.len(),
                required: policy.required,
                by: who.user.clone(),
            });
            Ok(())
        })
        .await?;
    out.ok_or_else(|| StateError::Rejected("the run record changed while deciding; try again".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::dir::DirStore;
    use crate::state::{Approval, ApprovalPolicy, RunRecord, StateStore};

    async fn parked(store: &DirStore, id: &str, policy: Option<ApprovalPolicy>) -> RunKey {
        let run = RunRecord {
            run_id: id.into(),
            pipeline: "weather".into(),
            model: "weather".into(),
            status: Status::WaitingApproval,
            started_by: Some("ci".into()),
            approval: Some(Approval {
                stage: "promote".into(),
                decision: "pending".into(),
                digest: Some("sha256:abc".into()),
                policy,
                ..Approval::default()
            }),
            ..RunRecord::default()
        };
        store.create_run(&run).await.unwrap();
        RunKey { pipeline: "weather".into(), run_id: id.into() }
    }

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity { user: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    fn refusal(r: Result<Decided, StateError>) -> String {
        match r {
            Err(StateError::Rejected(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn approve_records_the_approver_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        // An old record: no policy means one approval by anyone.
        let key = parked(&store, "r1", None).await;
        let d = decide(&store, &key, true, &user("alice", &[]), Some("looks good")).await.unwrap();
        assert_eq!((d.digest.as_str(), d.decision.as_str()), ("sha256:abc", "approved"));
        let a = store.get_run(&key).await.unwrap().unwrap().approval.unwrap();
        assert_eq!(
            (a.decision.as_str(), a.by.as_deref(), a.comment.as_deref()),
            ("approved", Some("alice"), Some("looks good"))
        );
        assert_eq!(a.approvals.len(), 1);
        // Decided already: a second decision is refused, not overwritten.
        assert!(refusal(decide(&store, &key, false, &user("bob", &[]), None).await).contains("waits for no approval"));
    }

    #[tokio::test]
    async fn a_policy_needs_distinct_listed_approvers_and_not_the_starter() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let policy = ApprovalPolicy {
            required: 2,
            approvers: vec!["alice".into(), "group:ml-leads".into(), "ci".into()],
            forbid_self_approval: true,
        };
        let key = parked(&store, "r2", Some(policy)).await;
        let m = refusal(decide(&store, &key, true, &user("mallory", &["devs"]), None).await);
        assert!(m.contains("`mallory` may not decide") && m.contains("group:ml-leads"), "{m}");
        let m = refusal(decide(&store, &key, true, &user("ci", &[]), None).await);
        assert!(m.contains("started run r2"), "{m}");
        let d = decide(&store, &key, true, &user("alice", &[]), Some("one")).await.unwrap();
        assert_eq!((d.decision.as_str(), d.approvals, d.required), ("pending", 1, 2));
        let m = refusal(decide(&store, &key, true, &user("alice", &[]), None).await);
        assert!(m.contains("approved run r2 already"), "{m}");
        // A group member completes it.
        let d = decide(&store, &key, true, &user("bob", &["ml-leads"]), Some("two")).await.unwrap();
        assert_eq!(d.decision, "approved");
        let a = store.get_run(&key).await.unwrap().unwrap().approval.unwrap();
        let who: Vec<(&str, &[String])> = a.approvals.iter().map(|v| (v.by.as_str(), v.groups.as_slice())).collect();
        assert_eq!(who, [("alice", &[][..]), ("bob", &["ml-leads".to_string()][..])]);
        assert_eq!((a.by.as_deref(), a.comment.as_deref()), (Some("alice, bob"), Some("one; two")));
    }

    #[tokio::test]
    async fn reject_and_unknown_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let key = parked(&store, "r3", None).await;
        decide(&store, &key, false, &user("bob", &[]), None).await.unwrap();
        assert_eq!(store.get_run(&key).await.unwrap().unwrap().approval.unwrap().decision, "rejected");
        let missing = RunKey { pipeline: "weather".into(), run_id: "nope".into() };
        assert!(matches!(
            decide(&store, &missing, true, &user("a", &[]), None).await,
            Err(StateError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn a_gate_past_its_deadline_takes_no_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let key = parked(&store, "r4", None).await;
        store
            .update_run(&key, &mut |r| {
                r.approval.as_mut().unwrap().expires = Some("2020-01-01T00:00:00Z".into());
                Ok(())
            })
            .await
            .unwrap();
        assert!(refusal(decide(&store, &key, true, &user("alice", &[]), None).await).contains("timed out"));
    }

    #[tokio::test]
    async fn the_directory_store_takes_by() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        assert_eq!(identity(&store, Some("alice")).await.unwrap().user, "alice");
    }
}
