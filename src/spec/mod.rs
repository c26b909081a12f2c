//! The pipeline file: types, loading and validation.
//!
//! All YAML parsing in the crate goes through [`yaml`], so the YAML library
//! (serde_yaml today, archived upstream) can be swapped in one place.

mod diagnostic;
mod kinds;
mod load;
mod overrides;
mod spans;
mod types;
mod validate;
pub mod yaml;

pub use diagnostic::{Diagnostic, SpecError};
pub use kinds::{Problem, StageKinds, environment_problem};
pub use load::{LoadedPipeline, load, load_str};
pub use overrides::{Overrides, RegistryOverride};
pub use spans::SpanIndex;
pub use types::*;
pub use validate::validate;
