//! Stage `fetch-model`.

use serde::{Deserialize, Serialize};

use super::{Outputs, Stage, StageContext, StageError, ValidateCx};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

pub struct FetchModel;

impl Stage for FetchModel {
    const KIND: &'static str = "fetch-model";
    const OUTPUTS: &'static [&'static str] = &["modelDir", "manifest", "totalBytes", "contentDigest"];
    type Params = Params;

    fn plan(_params: &Params, _cx: &ValidateCx<'_>) -> Vec<String> {
        Vec::new()
    }

    async fn run(_params: Params, _cx: &StageContext) -> Result<Outputs, StageError> {
        Err(StageError::msg("stage `fetch-model` is not implemented yet"))
    }
}
