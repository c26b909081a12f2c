//! The crate's only door to a YAML library. Everything that reads or writes
//! YAML (pipeline files, state records, rendered manifests) calls these.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A YAML error with its 1-based position, when the parser knows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub message: String,
    pub line: Option<usize>,
    pub col: Option<usize>,
}

impl From<serde_yaml::Error> for YamlError {
    fn from(e: serde_yaml::Error) -> Self {
        let loc = e.location();
        let mut message = e.to_string();
        // serde_yaml appends " at line L column C"; the position is reported apart.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        YamlError { message, line: loc.as_ref().map(|l| l.line()), col: loc.as_ref().map(|l| l.column()) }
    }
}

pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    serde_yaml::from_str(text).map_err(YamlError::from)
}

/// Every document of a multi-document stream (`---` separated).
pub fn from_str_multi<T: DeserializeOwned>(text: &str) -> Result<Vec<T>, YamlError> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| <T as serde::Deserialize>::deserialize(doc).map_err(YamlError::from))
        .collect()
}

pub fn to_string<T: Serialize>(value: &T) -> Result<String, YamlError> {
    serde_yaml::to_string(value).map_err(YamlError::from)
}
