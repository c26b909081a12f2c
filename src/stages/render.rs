//! Stage `render`.

use serde::{Deserialize, Serialize};

use super::{Outputs, Stage, StageContext, StageError, ValidateCx};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

pub struct Render;

impl Stage for Render {
    const KIND: &'static str = "render";
    const OUTPUTS: &'static [&'static str] = &["contextDir", "files", "contextDigest"];
    type Params = Params;

    fn plan(_params: &Params, _cx: &ValidateCx<'_>) -> Vec<String> {
        Vec::new()
    }

    async fn run(_params: Params, _cx: &StageContext) -> Result<Outputs, StageError> {
        Err(StageError::msg("stage `render` is not implemented yet"))
    }
}
