//! Stage `seldon-deploy`.

use serde::{Deserialize, Serialize};

use super::{Outputs, Stage, StageContext, StageError, ValidateCx};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

pub struct SeldonDeploy;

impl Stage for SeldonDeploy {
    const KIND: &'static str = "seldon-deploy";
    const OUTPUTS: &'static [&'static str] = &["endpoint", "deployedDigest", "deploymentName"];
    type Params = Params;

    fn plan(_params: &Params, _cx: &ValidateCx<'_>) -> Vec<String> {
        Vec::new()
    }

    async fn run(_params: Params, _cx: &StageContext) -> Result<Outputs, StageError> {
        Err(StageError::msg("stage `seldon-deploy` is not implemented yet"))
    }
}
