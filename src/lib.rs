//! modelship: takes a trained ML model from object storage to a verified,
//! promoted container image on OpenShift.
//!
//! # Layout
//!
//! docs/ARCHITECTURE.md draws the parts and the rules between them.
//!
//! - [`spec`]: the pipeline file — serde types, the YAML loader (the only
//!   place that parses YAML), span-carrying diagnostics and validation.
//! - [`archive`]: a build context directory as a streamed tar.gz (and its digest).
//! - [`catalog`]: the stage catalog (`stages/<kind>/`: README + templates),
//!   embedded in the binary and overridable with `--stages-dir`.
//! - [`checks`]: prediction checks (cases, expectations, load, SLO) and
//!   their report; run by the `prediction-check` stage and `promote --verify`.
//! - [`template`]: strict handlebars rendering shared by the engine (`with:`
//!   values) and the stages (Dockerfiles, manifests).
//! - [`manifests`]: the BuildConfig, ImageStream, SeldonDeployment and Route
//!   the stages apply, rendered from the catalog's templates (pure).
//! - [`engine`]: ordering, outputs, retries, timeouts, cancellation, resume,
//!   and the one place stage lifecycle events are logged.
//! - [`stages`]: the closed set of stage kinds, one module per kind: its
//!   pure [`stages::Contract`] (params, typed output, validate, plan) and its
//!   [`stages::Stage`] run; the registry with each kind's default inputs.
//! - [`state`]: run records, the promotion ledger and the per-model lock
//!   behind [`state::StateStore`], with ConfigMap and directory backends.
//! - [`cluster`]: all Kubernetes and OpenShift I/O: kube clients per
//!   environment, with the retry layer that repeats only what is safe to
//!   repeat; typed OpenShift and Seldon resources; the build upload, watches
//!   through `kube::runtime`, ImageStream tags.
//! - [`storage`]: model sources (S3, file, MLflow's model registry, DVC) and
//!   the upload of a model directory (`model push`).
//! - [`registry`]: OCI image copy by digest.
//! - [`promotion`]: promote, roll back and list a model's digests across
//!   environments (ledger, lock, ImageStream tags); used by the `promote`
//!   stage and commands.
//! - [`signing`]: cosign-format image signatures and in-toto attestations
//!   (keys, sign, verify); used by the `sign` stage, `promote` and `modelship verify`.
//! - [`report`]: what a run found, for people — the end-of-run summary's
//!   checks and promotions, and `modelship report` (Markdown, static HTML).
//! - [`triggers`]: Git push selection and the webhook server.
//! - `sim` (cargo feature `sim`, on by default): the simulated OpenShift,
//!   reached by the runner only over HTTP; nothing outside it and the CLI
//!   imports it, so `--no-default-features` builds without it.
//! - [`commands`]: one function per CLI subcommand; `main.rs` only parses.
//! - [`retry`]: the one backoff policy, in named profiles.
//! - [`logging`], [`secret`]: tracing setup and credential masking.
//! - [`names`]: Kubernetes name rules (RFC 1123), shared by all of the above.
//! - [`suggest`]: "did you mean" for names a user typed, used everywhere one is named.

// Stage futures nest deeply (engine -> kind dispatch -> stage -> SDK calls).
#![recursion_limit = "256"]

pub mod archive;
pub mod catalog;
pub mod checks;
pub mod cluster;
pub mod commands;
pub mod engine;
pub mod error;
pub mod logging;
pub mod manifests;
pub mod names;
pub mod promotion;
pub mod registry;
pub mod report;
pub mod retry;
pub mod runtime;
pub mod secret;
pub mod signing;
pub mod spec;
pub mod stages;
pub mod state;
pub mod storage;
pub mod suggest;
pub mod template;
pub mod timestamp;
pub mod triggers;

pub use error::{ExitClass, HasExitClass};
