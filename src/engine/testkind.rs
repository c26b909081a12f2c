//! A stage kind for engine tests only (`uses: test-step`): echoes a value,
//! fails on demand (retryable or not), sleeps, writes a file to its
//! workspace, saves and reports a checkpoint, and counts its calls per run.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::stages::{Contract, Stage, StageContext, StageError, ValidateCx};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// Echoed as `outputs.value`.
    #[serde(default)]
    pub value: Option<String>,
    /// The first N calls (per run and stage, across invocations) fail.
    #[serde(default)]
    pub fail_first: u32,
    /// Whether those failures are retryable.
    #[serde(default)]
    pub retryable: bool,
    /// Sleep this long before answering (timeouts, cancellation).
    #[serde(default)]
    pub sleep_ms: u64,
    /// While sleeping, watch the stage's cancel token; on cancel save the
    /// checkpoint `cleanedUp` and return cancelled.
    #[serde(default)]
    pub clean_up_on_cancel: bool,
    /// Fail as bad input.
    #[serde(default)]
    pub bad_input: bool,
}

pub struct TestStep;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Output {
    pub value: Option<String>,
    pub calls: u32,
    pub file: String,
    pub previous_checkpoint: serde_json::Value,
}

fn calls() -> &'static Mutex<HashMap<String, u32>> {
    static CALLS: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    CALLS.get_or_init(Default::default)
}

/// How many times stage `stage` of run `run_id` has been called.
pub fn call_count(run_id: &str, stage: &str) -> u32 {
    calls().lock().unwrap().get(&format!("{run_id}/{stage}")).copied().unwrap_or(0)
}

impl Contract for TestStep {
    const KIND: &'static str = "test-step";
    const OUTPUTS: &'static [&'static str] = &["value", "calls", "file", "previousCheckpoint"];
    type Params = Params;
    type Output = Output;

    fn needs_cluster(_params: &Params, _cx: &ValidateCx<'_>) -> bool {
        false
    }

    fn plan(params: &Params, cx: &ValidateCx<'_>) -> Vec<String> {
        vec![format!("test step {} echoing {:?}", cx.stage.name, params.value)]
    }
}

/// The effectful half, beside the contract above.
impl Stage for TestStep {
    async fn run(params: Params, cx: &StageContext) -> Result<Output, StageError> {
        let n = {
            let mut map = calls().lock().unwrap();
            let n = map.entry(format!("{}/{}", cx.run_id, cx.stage.name)).or_default();
            *n += 1;
            *n
        };
        let previous_checkpoint = cx.checkpoint("mark").cloned().unwrap_or(serde_json::Value::Null);
        cx.save_checkpoint("mark", json!(format!("call {n}"))).await?;
        if params.sleep_ms > 0 {
            let sleep = tokio::time::sleep(std::time::Duration::from_millis(params.sleep_ms));
            if params.clean_up_on_cancel {
                tokio::select! {
                    _ = cx.cancel.cancelled() => {
                        cx.save_checkpoint("cleanedUp", json!(true)).await?;
                        return Err(StageError::cancelled());
                    }
                    _ = sleep => {}
                }
            } else {
                sleep.await;
            }
        }
        if params.bad_input {
            return Err(StageError::bad_input("test-step told to reject its input"));
        }
        if n <= params.fail_first {
            let e = StageError::msg(format!("test-step failing call {n}"));
            return Err(if params.retryable { e.retryable() } else { e });
        }
        let file = cx.stage_dir().map_err(StageError::failed)?.join("out.txt");
        std::fs::write(&file, params.value.as_deref().unwrap_or("")).map_err(StageError::failed)?;
        Ok(Output { value: params.value, calls: n, file: file.to_string_lossy().into_owned(), previous_checkpoint })
    }
}
