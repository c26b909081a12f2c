//! Reading a pipeline file into typed form, with a span index for later
//! diagnostics.

use std::path::{Path, PathBuf};

use super::{Pipeline, SpanIndex, SpecError};

/// A parsed pipeline and what validation needs to point into its source.
#[derive(Debug, Clone)]
pub struct LoadedPipeline {
    pub path: PathBuf,
    pub source: String,
    pub pipeline: Pipeline,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    pub spans: SpanIndex,
}

/// Read and parse `path`. Type errors (unknown keys, wrong types, malformed
/// YAML) come back with file, line and column.
pub fn load(_path: &Path) -> Result<LoadedPipeline, SpecError> {
    todo!("spec helper")
}

/// Parse `text` as if read from `path`.
pub fn load_str(_path: &Path, _text: &str) -> Result<LoadedPipeline, SpecError> {
    todo!("spec helper")
}
