//! `trigger --sim DIR` and `serve --sim DIR`: each selected pipeline runs on
//! simulated clusters exactly as `run --sim DIR` runs it — the sims of its
//! environments started over `DIR/<env>` and set up as an administrator
//! would ([`SimClusters`]), then the engine with their kubeconfig and
//! overrides, then the sims stopped (their state stays in `DIR`).
//!
//! One run at a time: two runs sharing an environment would otherwise start
//! two sims over one data directory. Real clusters have no such limit, so
//! `--max-parallel` applies there.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::simulated::{SimClusters, SimOptions};
use crate::state::Status;
use crate::triggers::runner::{EngineRunner, PipelineRunner, RunOutcome, RunRequest, outcome};

pub struct SimRunner {
    pub engine: EngineRunner,
    pub dir: PathBuf,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl SimRunner {
    pub fn new(engine: EngineRunner, dir: PathBuf) -> SimRunner {
        SimRunner { engine, dir, one_at_a_time: tokio::sync::Mutex::new(()) }
    }
}

#[async_trait]
impl PipelineRunner for SimRunner {
    async fn run(&self, req: &RunRequest, cancel: CancellationToken) -> RunOutcome {
        let _turn = tokio::select! {
            turn = self.one_at_a_time.lock() => turn,
            _ = cancel.cancelled() => return not_started(Status::Cancelled, "cancelled before the simulated clusters were free"),
        };
        let mut options = self.engine.options(req, cancel);
        let opts = SimOptions { serve_s3: true, params: options.sets.clone(), ..SimOptions::default() };
        let sims = match SimClusters::start(&req.file, &self.dir, &opts).await {
            Ok(sims) => sims,
            Err(e) => {
                let error = e.error.map(|e| crate::error::chain(&*e)).unwrap_or_default();
                let mut out =
                    not_started(Status::Failed, &format!("simulated clusters for {}: {error}", req.file.display()));
                out.bad_input = e.class == crate::error::ExitClass::BadInput;
                return out;
            }
        };
        options.kubeconfig = Some(sims.kubeconfig.clone());
        options.overrides = sims.overrides.clone();
        let result = crate::engine::run(options).await;
        sims.shutdown().await;
        outcome(result)
    }
}

fn not_started(status: Status, error: &str) -> RunOutcome {
    RunOutcome::without_run(status, Some(crate::secret::mask(error)), false)
}
