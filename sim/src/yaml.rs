//! YAML request bodies (`application/yaml`, server-side apply's
//! `application/apply-patch+yaml`) decoded to JSON values, as the API server
//! converts YAML to JSON before decoding (sigs.k8s.io/yaml `YAMLToJSON`).
//! The sim's own door to a YAML library, apart from the runner's.

use serde_json::Value;

/// One YAML document as a JSON value; the error says where it broke.
pub fn to_json(text: &str) -> Result<Value, String> {
    serde_yaml::from_str::<Value>(text).map_err(|e| format!("error converting YAML to JSON: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_and_locates_errors() {
        let v = super::to_json("kind: ConfigMap\ndata:\n  a: \"1\"\n").unwrap();
        assert_eq!(v["data"]["a"], "1");
        let e = super::to_json("a: [1,\nb: 2\n").unwrap_err();
        assert!(e.contains("line"), "{e}");
    }
}
