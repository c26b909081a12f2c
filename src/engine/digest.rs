//! The inputs digest: what a resumed run compares to decide whether a
//! succeeded stage can be skipped. Rendered `with:` values (which may hold
//! secrets) enter only this hash, never the record.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::stages::Outputs;

/// `sha256:<hex>` over canonical JSON of the kind, the rendered `with:` and
/// the outputs of every earlier stage.
pub(crate) fn inputs_digest(
    kind: &str,
    with: &serde_json::Map<String, Value>,
    upstream: &std::collections::BTreeMap<String, Outputs>,
) -> String {
    let mut text = String::new();
    canonical(&serde_json::json!({ "kind": kind, "with": with, "upstream": upstream }), &mut text);
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// JSON with object keys sorted and no whitespace, so equal values always
/// hash equal whatever order their maps were built in.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn key_order_does_not_change_the_digest_but_values_do() {
        let a = json!({"b": 1, "a": {"y": [1, 2], "x": "s"}});
        let b = json!({"a": {"x": "s", "y": [1, 2]}, "b": 1});
        let (mut ta, mut tb) = (String::new(), String::new());
        canonical(&a, &mut ta);
        canonical(&b, &mut tb);
        assert_eq!(ta, r#"{"a":{"x":"s","y":[1,2]},"b":1}"#);
        assert_eq!(ta, tb);

        let with = a.as_object().unwrap().clone();
        let up = BTreeMap::new();
        let d1 = inputs_digest("render", &with, &up);
        assert!(d1.starts_with("sha256:") && d1.len() == 71, "{d1}");
        assert_eq!(d1, inputs_digest("render", b.as_object().unwrap(), &up));
        assert_ne!(d1, inputs_digest("fetch-model", &with, &up));
        let mut up2 = BTreeMap::new();
        up2.insert("fetch".to_string(), Outputs::from([("modelDir".to_string(), json!("/x"))]));
        assert_ne!(d1, inputs_digest("render", &with, &up2));
    }
}
