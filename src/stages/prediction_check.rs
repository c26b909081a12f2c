//! Stage `prediction-check`: runs the [`crate::checks`] against the linked
//! `seldon-deploy`'s endpoint (or `with.endpoint`) before anything is
//! promoted; prints a table on a TTY and fails (exit 1) with a readable
//! summary when a case or an objective fails.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::seldon_deploy::SeldonDeploy;
use super::{Contract, Gate, Problem, Stage, StageContext, StageError, StageErrorKind, ValidateCx};
pub use crate::checks::Params;
use crate::checks::{CheckError, Protocol, case_name, check, problems};
use crate::error::{ExitClass, HasExitClass};
use crate::secret::mask;

pub struct PredictionCheck;

/// What a passed prediction-check hands sign and promote.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Output {
    pub passed: bool,
    /// The [`Report`], as JSON.
    pub report: Option<Value>,
}

impl PredictionCheck {
    /// The endpoint a run will use: `with.endpoint`, else the linked
    /// `seldon-deploy` stage's `endpoint` output.
    fn endpoint(params: &Params, cx: &StageContext) -> Result<String, StageError> {
        if let Some(e) = &params.endpoint {
            return Ok(e.clone());
        }
        cx.input::<SeldonDeploy>()?
            .map(|d| d.endpoint)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| stage_error(CheckError::NoEndpoint))
    }
}

fn stage_error(e: CheckError) -> StageError {
    let kind = match e.exit_class() {
        ExitClass::BadInput => StageErrorKind::BadInput,
        ExitClass::Failed | ExitClass::Internal => StageErrorKind::Failed,
    };
    let retryable = matches!(e, CheckError::NotReady { .. });
    StageError { kind, retryable, ..StageError::failed(e) }
}

impl Contract for PredictionCheck {
    const KIND: &'static str = "prediction-check";
    const OUTPUTS: &'static [&'static str] = &["passed", "report"];
    type Params = Params;
    type Output = Output;

    fn validate(params: &Params, cx: &ValidateCx<'_>) -> Vec<Problem> {
        let mut out = problems(params);
        if let Some(env) = &params.environment
            && let Some(p) = cx.environment_problem("environment", env)
        {
            out.push(p);
        }
        if params.endpoint.is_none() && !cx.may_link::<SeldonDeploy>() {
            out.push(
                Problem::new("endpoint", "no endpoint: no `seldon-deploy` stage runs before this one")
                    .with_hint("set `endpoint: http://HOST:PORT` or add a seldon-deploy stage earlier"),
            );
        }
        out
    }

    /// It sends requests to an endpoint (`with.endpoint` or seldon-deploy's
    /// output) and reads nothing from the cluster itself.
    fn needs_cluster(_params: &Params, _cx: &ValidateCx<'_>) -> bool {
        false
    }

    fn plan(params: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        let mut lines = Vec::new();
        let endpoint = match &params.endpoint {
            Some(e) => mask(e),
            None => match cx.linked::<SeldonDeploy>() {
                Some(s) => format!("the `endpoint` output of stage `{}`", s.name),
                None => "(no endpoint)".to_string(),
            },
        };
        let env = params.environment.as_deref().map(|e| format!(" in environment `{e}`")).unwrap_or_default();
        let proto = match params.protocol {
            Protocol::Seldon => "Seldon v1, POST /api/v1.0/predictions".to_string(),
            Protocol::V2 => {
                let model = params.model_name.as_deref().unwrap_or(&cx.pipeline.spec.model.name);
                format!("Open Inference Protocol v2, POST /v2/models/{model}/infer")
            }
        };
        lines.push(format!("check {endpoint}{env} ({proto})"));
        let readiness = params.readiness_timeout.as_ref().map_or("2m", |d| d.text());
        lines.push(format!("wait up to {readiness} for readiness"));
        for (i, case) in params.cases.iter().enumerate() {
            let status = case.status.map(|s| format!(", HTTP {s}")).unwrap_or_default();
            lines.push(format!("case `{}`: {} expectation(s){status}", case_name(case, i), case.expect.len()));
        }
        if let Some(l) = &params.load {
            lines.push(format!("load: {} request(s) at concurrency {}", l.requests, l.concurrency));
        }
        if let Some(s) = &params.slo {
            let mut parts = Vec::new();
            for (n, d) in [("p50", &s.p50), ("p95", &s.p95), ("p99", &s.p99)] {
                if let Some(d) = d {
                    parts.push(format!("{n} <= {}", d.text()));
                }
            }
            if let Some(r) = s.error_rate {
                parts.push(format!("errorRate <= {r}"));
            }
            if let Some(t) = s.min_throughput {
                parts.push(format!("throughput >= {t} req/s"));
            }
            lines.push(format!("slo: {}", parts.join(", ")));
        }
        lines
    }
}

/// The effectful half, beside the contract above.
impl Stage for PredictionCheck {
    async fn run(params: Params, cx: &StageContext) -> Result<Output, StageError> {
        let endpoint = Self::endpoint(&params, cx)?;
        let model = cx.pipeline.spec.model.name.clone();
        let report = tokio::select! {
            r = check(&params, &endpoint, Some(&model)) => r.map_err(stage_error)?,
            _ = cx.cancel.cancelled() => return Err(StageError::cancelled()),
        };
        if cx.interactive {
            eprintln!("{}", report.table());
        }
        let json = serde_json::to_value(&report).map_err(StageError::failed)?;
        if !report.passed {
            // The stage fails, so it has no outputs; keep the report in the run
            // record so `modelship status` can show what failed.
            if let Err(e) = cx.save_checkpoint("report", json).await {
                tracing::warn!(error = %e, "could not record the failed check's report");
            }
            let env = params.environment.as_deref().map(|e| format!(" in `{e}`")).unwrap_or_default();
            return Err(StageError::msg(format!("prediction check failed{env}:\n{}", report.failure_summary()))
                .at_gate(gate_of(&report)));
        }
        Ok(Output { passed: true, report: Some(json) })
    }
}

/// The gate a failed report stopped at: its cases, or (all cases passing)
/// its objectives under load.
pub(super) fn gate_of(report: &crate::checks::Report) -> Gate {
    if report.failed_cases().next().is_some() { Gate::Checks } else { Gate::Slo }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_not_ready_yet_is_retryable() {
        let e = stage_error(CheckError::NotReady { url: "u".into(), waited: "1s".into(), last_error: "x".into() });
        assert_eq!((e.kind, e.retryable), (StageErrorKind::Failed, true));
    }

    fn paths(ps: &[Problem]) -> Vec<&str> {
        ps.iter().map(|p| p.path.as_str()).collect()
    }

    fn pipeline(stages: &str) -> crate::spec::Pipeline {
        crate::spec::yaml::from_str(&format!(
            "apiVersion: modelship.io/v1alpha1
kind: Pipeline
metadata: {{name: weather}}
spec:
  model: {{name: weather, source: 'file://m'}}
  environments: {{dev: {{namespace: models-dev}}}}
  stages:
{stages}"
        ))
        .unwrap()
    }

    fn with_cx<T>(p: &crate::spec::Pipeline, f: impl FnOnce(&Params, &ValidateCx<'_>) -> T) -> T {
        let index = p.spec.stages.iter().position(|s| s.uses == "prediction-check").unwrap();
        let stage = &p.spec.stages[index];
        let params: Params = serde_json::from_value(Value::Object(stage.with.clone())).unwrap();
        let catalog = crate::catalog::Catalog::embedded();
        let cx = ValidateCx { pipeline: p, stage, index, catalog: &catalog };
        f(&params, &cx)
    }

    #[test]
    fn plan_lists_endpoint_and_cases() {
        let p = pipeline(
            "    - {name: deploy, uses: seldon-deploy, with: {environment: dev}}
    - name: check
      uses: prediction-check
      with:
        environment: dev
        cases:
          - {name: seed, request: {}, expect: {meta.tags.weather_state: mild}}
          - {request: {}, status: 500}
        load: {requests: 50, concurrency: 2}
        slo: {p95: 250ms, errorRate: 0}
",
        );
        let plan = with_cx(&p, |params, cx| {
            assert_eq!(PredictionCheck::validate(params, cx), vec![]);
            PredictionCheck::plan(params, cx)
        });
        assert_eq!(
            plan,
            [
                "check the `endpoint` output of stage `deploy` in environment `dev` (Seldon v1, POST /api/v1.0/predictions)",
                "wait up to 2m for readiness",
                "case `seed`: 1 expectation(s)",
                "case `case-2`: 0 expectation(s), HTTP 500",
                "load: 50 request(s) at concurrency 2",
                "slo: p95 <= 250ms, errorRate <= 0",
            ]
        );
    }

    #[test]
    fn validate_needs_an_endpoint_and_a_declared_environment() {
        let p = pipeline(
            "    - name: check
      uses: prediction-check
      with: {environment: prod, protocol: v2, cases: [{request: {}}]}
",
        );
        let problems = with_cx(&p, PredictionCheck::validate);
        assert_eq!(paths(&problems), vec!["environment", "endpoint"]);
        let p = pipeline(
            "    - name: check
      uses: prediction-check
      with: {endpoint: 'http://10.0.0.5:8080', protocol: v2, cases: [{request: {}}]}
",
        );
        let (problems, plan) =
            with_cx(&p, |params, cx| (PredictionCheck::validate(params, cx), PredictionCheck::plan(params, cx)));
        assert_eq!(problems, vec![]);
        assert_eq!(plan[0], "check http://10.0.0.5:8080 (Open Inference Protocol v2, POST /v2/models/weather/infer)");
    }
}
