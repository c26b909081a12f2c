//! Semantic checks on a parsed pipeline, collecting every problem.

use super::{LoadedPipeline, SpecError};
use crate::catalog::Catalog;

/// Check everything that can be checked without a cluster: stage names,
/// `uses`, each kind's `with:`, environments, template references.
pub fn validate(_loaded: &LoadedPipeline, _catalog: &Catalog) -> Result<(), SpecError> {
    todo!("spec helper")
}
