//! `-o/--output`: the one output-format flag every command that prints
//! records takes, kubectl's way (`-o json`, `-o yaml`, `-o wide`).

use clap::ValueEnum;
use serde::Serialize;

use super::CommandError;
use crate::error::ExitClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// Tables and sentences for a person.
    #[default]
    Text,
    /// The records as JSON.
    Json,
    /// The records as YAML.
    Yaml,
    /// Text with more columns (image digest, duration, who triggered it)
    /// where the command prints a table; plain text elsewhere.
    Wide,
}

impl OutputFormat {
    /// `json` or `yaml`: a machine reads the output.
    pub fn is_structured(self) -> bool {
        matches!(self, OutputFormat::Json | OutputFormat::Yaml)
    }
}

/// `value` as JSON or YAML, or `None` for the text formats (the caller
/// renders those itself).
pub fn structured<T: Serialize>(format: OutputFormat, value: &T) -> Result<Option<String>, CommandError> {
    let internal = |e: String| CommandError::new(ExitClass::Internal, std::io::Error::other(e));
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(value).map(Some).map_err(|e| internal(e.to_string())),
        // The YAML library is reached through the spec module only.
        OutputFormat::Yaml => crate::spec::yaml::to_string(value)
            .map(|s| Some(s.trim_end().to_string()))
            .map_err(|e| internal(e.to_string())),
        OutputFormat::Text | OutputFormat::Wide => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_yaml_render_the_same_record_text_does_not() {
        let v = serde_json::json!({"runId": "r1", "stages": [1, 2]});
        let json = structured(OutputFormat::Json, &v).unwrap().unwrap();
        let yaml = structured(OutputFormat::Yaml, &v).unwrap().unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap(), v);
        assert_eq!(crate::spec::yaml::from_str::<serde_json::Value>(&yaml).unwrap(), v);
        assert!(structured(OutputFormat::Wide, &v).unwrap().is_none());
    }
}
