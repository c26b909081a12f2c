//! The closed set of stage kinds. Each kind is one module: first its
//! [`Contract`] (the `with:` params struct, the typed `Output`, a pure
//! `validate` and a `plan` for `--dry-run`), then its [`Stage`] impl, the
//! async `run`. Adding a kind touches its own file plus one line in the
//! registry (`for_each_kind!` in `kind.rs`), which also names the kinds it
//! reads by default (see [`Links`]).

pub mod fetch_model;
pub mod openshift_build;
pub mod prediction_check;
pub mod promote;
pub mod render;
pub mod seldon_deploy;
pub mod sign;

mod context;
mod kind;

pub use crate::spec::Problem;
pub use context::{Gate, Link, Links, Outputs, StageContext, StageError, StageErrorKind, ValidateCx, to_outputs};
pub use kind::{Kind, Registry};

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a stage kind accepts and hands on: its `with:` params, its typed
/// outputs, and pure checks and plans. No network, no credentials, no
/// files outside the spec; spec validation and `--dry-run` use only this.
pub trait Contract {
    /// The name used in `uses:`.
    const KIND: &'static str;
    /// Output names later stages may reference as `{{stages.NAME.outputs.X}}`:
    /// exactly the fields of [`Contract::Output`] (a test checks it).
    const OUTPUTS: &'static [&'static str];
    /// The `with:` block; `#[serde(deny_unknown_fields)]`.
    type Params: DeserializeOwned + Serialize + Send + Sync + 'static;
    /// What a run hands later stages. Later kinds read it typed through
    /// [`StageContext::input`]; fields default so a record written by an
    /// older modelship still reads.
    type Output: DeserializeOwned + Serialize + Default + Send + 'static;

    /// Pure checks beyond the types. Paths in [`Problem`] are relative to `with`.
    fn validate(_params: &Self::Params, _cx: &ValidateCx<'_>) -> Vec<Problem> {
        Vec::new()
    }

    /// What a run would touch, for `--dry-run`: target cluster, namespace,
    /// resources, in a few human-readable lines. Pure, like `validate`.
    fn plan(params: &Self::Params, cx: &ValidateCx<'_>) -> Vec<String>;

    /// Whether a stage with these params talks to a cluster. A pipeline
    /// whose stages all answer no runs without one (state in a local
    /// directory) and needs no `spec.environments`. Every kind says so
    /// itself: there is no default to forget.
    fn needs_cluster(params: &Self::Params, cx: &ValidateCx<'_>) -> bool;
}

/// Running a stage kind: the effectful half of its module.
pub trait Stage: Contract {
    /// Do the work. Long work races `cx.cancel`; every await leaves state
    /// consistent. Side effects are keyed by `cx.run_id` so a retry or resume
    /// finds what an earlier attempt made.
    fn run(params: Self::Params, cx: &StageContext) -> impl Future<Output = Result<Self::Output, StageError>> + Send;
}
