//! The pipeline file: types, loading and validation.
//!
//! All YAML parsing in the crate goes through [`yaml`], so the YAML library
//! (serde_yaml today, archived upstream) can be swapped in one place.

mod diagnostic;
mod environments;
mod kinds;
mod load;
mod overrides;
mod recover;
mod spans;
mod types;
mod validate;
pub mod yaml;

pub use diagnostic::{Diagnostic, SpecError};
pub use environments::{environment_params, has_templated_environments, render_environments};
pub use kinds::{Problem, StageKinds, environment_problem, first_cluster_stage};
pub use load::{LoadedPipeline, load, load_lenient, load_str, load_str_lenient};
pub use overrides::{Overrides, RegistryOverride};
pub use spans::SpanIndex;
pub use types::*;
pub use validate::validate;
