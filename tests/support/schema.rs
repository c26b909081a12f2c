//! The upstream definition bundles in fixtures/reference (OpenAPI v2), as
//! validators that also report unknown fields (the bundles do not forbid
//! them, so a misspelt key would otherwise pass).

use serde_json::{Value, json};

fn read_json(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A definition bundle: `{"$ref": "#/definitions/NAME", "definitions": ...}`.
pub struct Bundle {
    defs: Value,
}

impl Bundle {
    pub fn load(rel: &str) -> Bundle {
        let file = read_json(&super::repo().join("fixtures/reference").join(rel));
        Bundle { defs: file["definitions"].clone() }
    }

    /// Schema errors plus unknown fields; empty when valid.
    pub fn check(&self, def: &str, doc: &Value) -> Vec<String> {
        assert!(self.defs.get(def).is_some(), "no definition {def}");
        let schema = json!({ "$ref": format!("#/definitions/{def}"), "definitions": self.defs });
        let validator = jsonschema::draft4::new(&schema).expect("schema compiles");
        let mut errors: Vec<String> =
            validator.iter_errors(doc).map(|e| format!("{}: {}", e.instance_path(), e)).collect();
        unknown_fields(&self.defs, &json!({ "$ref": format!("#/definitions/{def}") }), doc, "", &mut errors);
        errors
    }
}

fn resolve<'a>(defs: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/definitions/").expect("local ref");
        schema = &defs[name];
    }
    schema
}

/// Report object keys that the (resolved) schema does not declare, where the
/// schema declares properties and allows nothing else.
pub fn unknown_fields(defs: &Value, schema: &Value, doc: &Value, at: &str, out: &mut Vec<String>) {
    let schema = resolve(defs, schema);
    match doc {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, v) in map {
                let path = format!("{at}/{k}");
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) => unknown_fields(defs, s, v, &path, out),
                    (None, Some(a)) if a.is_object() => unknown_fields(defs, a, v, &path, out),
                    (None, None) if props.is_some() => out.push(format!("{path}: unknown field `{k}`")),
                    _ => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    unknown_fields(defs, item, v, &format!("{at}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

pub fn tekton() -> Bundle {
    let mut b = Bundle::load("tekton/tekton-v1-resolved.schema.json");
    // TaskRef and PipelineRef embed ResolverRef inline in the Go types
    // (fields `resolver` and `params`, tagged `json:",omitempty"`); the swagger
    // generator drops embedded structs, so add its properties back.
    let resolver = b.defs["v1.ResolverRef"]["properties"].as_object().expect("v1.ResolverRef").clone();
    for def in ["v1.TaskRef", "v1.PipelineRef"] {
        let props = b.defs[def]["properties"].as_object_mut().expect(def);
        for (k, v) in &resolver {
            props.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    b
}
