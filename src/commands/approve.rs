//! `modelship approve RUN_ID --by NAME` and `modelship reject RUN_ID --by NAME`:
//! record a decision on a run parked in `waiting-approval`.

use clap::Args;

use super::session::{Access, Session, Where};
use super::{CommandError, GlobalArgs, fail};
use crate::state::{RunKey, StateError, Status, now_rfc3339};

#[derive(Debug, Args)]
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "For a run waiting at a promote stage with `approval: required`, e.g. one started with\n`modelship run pipelines/weather.yaml --sim /tmp/sim --state-dir ./state`.\n\nExamples:\n  modelship approve RUN_ID --by alice -f pipelines/weather.yaml --state-dir ./state \\\n    --comment 'checked the report'\n  modelship reject RUN_ID --by alice -f pipelines/weather.yaml --state-dir ./state"
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "For a run waiting at a promote stage with `approval: required`.\n\nExamples:\n  modelship approve RUN_ID --by alice -f pipelines/weather.yaml --comment 'checked the report'\n  modelship reject RUN_ID --by alice -f pipelines/weather.yaml -n dev=models-dev-2"
    )
)]
pub struct DecisionArgs {
    /// The run waiting for approval (`modelship status` lists it as waiting-approval).
    pub run_id: String,
    /// Who decides (kept in the run record and the ledger).
    #[arg(long, value_name = "NAME")]
    pub by: String,
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
        let key = RunKey { pipeline: session.pipeline.metadata.name.clone(), run_id: a.run_id.clone() };
        decide(&*state, &key, approve, &a.by, a.comment.as_deref()).await.map_err(fail)
    }
    .await;
    session.close().await;
    let digest = result?;
    println!("{} run {} ({digest})", if approve { "approved" } else { "rejected" }, a.run_id);
    Ok(())
}

/// Record the decision if the run waits for one; returns the digest decided on.
pub async fn decide(
    state: &dyn crate::state::StateStore,
    key: &RunKey,
    approve: bool,
    by: &str,
    comment: Option<&str>,
) -> Result<String, StateError> {
    if state.get_run(key).await?.is_none() {
        return Err(StateError::NotFound { what: format!("run {}", key.run_id), store: state.describe() });
    }
    let mut digest = String::new();
    state
        .update_run(key, &mut |run| {
            let waiting = run.status == Status::WaitingApproval;
            let Some(a) = run.approval.as_mut().filter(|a| waiting && a.decision == "pending") else {
                return Err(StateError::Rejected(format!(
                    "run {} is {} and waits for no approval",
                    run.run_id, run.status
                )));
            };
            a.decision = if approve { "approved" } else { "rejected" }.into();
            a.by = Some(by.to_string());
            a.comment = comment.map(str::to_string);
            a.at = Some(now_rfc3339());
            digest = a.digest.clone().unwrap_or_default();
            Ok(())
        })
        .await?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::dir::DirStore;
    use crate::state::{Approval, RunRecord, StateStore};

    async fn parked(store: &DirStore, id: &str) -> RunKey {
        let run = RunRecord {
            run_id: id.into(),
            pipeline: "weather".into(),
            model: "weather".into(),
            status: Status::WaitingApproval,
            approval: Some(Approval {
                stage: "promote".into(),
                decision: "pending".into(),
                digest: Some("sha256:abc".into()),
                ..Approval::default()
            }),
            ..RunRecord::default()
        };
        store.create_run(&run).await.unwrap();
        RunKey { pipeline: "weather".into(), run_id: id.into() }
    }

    #[tokio::test]
    async fn approve_records_the_approver_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let key = parked(&store, "r1").await;
        assert_eq!(decide(&store, &key, true, "alice", Some("looks good")).await.unwrap(), "sha256:abc");
        let a = store.get_run(&key).await.unwrap().unwrap().approval.unwrap();
        assert_eq!(
            (a.decision.as_str(), a.by.as_deref(), a.comment.as_deref()),
            ("approved", Some("alice"), Some("looks good"))
        );
        // Decided already: a second decision is refused, not overwritten.
        let err = decide(&store, &key, false, "bob", None).await.unwrap_err();
        assert!(matches!(err, StateError::Rejected(_)), "{err}");
    }

    #[tokio::test]
    async fn reject_and_unknown_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::new(dir.path());
        let key = parked(&store, "r2").await;
        decide(&store, &key, false, "bob", None).await.unwrap();
        assert_eq!(store.get_run(&key).await.unwrap().unwrap().approval.unwrap().decision, "rejected");
        let missing = RunKey { pipeline: "weather".into(), run_id: "nope".into() };
        assert!(matches!(decide(&store, &missing, true, "a", None).await, Err(StateError::NotFound { .. })));
    }
}
