//! `kubectl`'s Table view of a list or watch (`Accept: ...;as=Table`).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::super::resource::{Column, ResourceType};
use super::json_response;

/// `kubectl`'s short age: `42s`, `5m`, `3h`, `2d`, `1y`.
pub fn short_age(created: Option<&str>) -> String {
    let Some(ts) = created.and_then(|c| c.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - ts.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s if s < 365 * 86400 => format!("{}d", s / 86400),
        s => format!("{}y", s / (365 * 86400)),
    }
}

fn cell(obj: &Value, col: &Column) -> Value {
    match col {
        Column::Path { path, .. } => {
            let mut cur = obj;
            for seg in path.split('.') {
                cur = cur.get(seg).unwrap_or(&Value::Null);
            }
            match cur {
                Value::Null => json!(""),
                v => v.clone(),
            }
        }
        Column::Count { paths, .. } => {
            json!(paths.iter().map(|p| obj.get(*p).and_then(Value::as_object).map_or(0, |m| m.len())).sum::<usize>())
        }
    }
}

pub(super) fn table(rt: &ResourceType, items: &[Value], rv: u64, include: Option<&str>, headers: bool) -> Value {
    let mut defs = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    for c in rt.columns {
        let name = match c {
            Column::Path { name, .. } | Column::Count { name, .. } => *name,
        };
        defs.push(json!({"name": name, "type": "string", "format": "", "description": "", "priority": 0}));
    }
    defs.push(json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0}));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(json!(""))];
            cells.extend(rt.columns.iter().map(|c| cell(o, c)));
            cells.push(json!(short_age(o.pointer("/metadata/creationTimestamp").and_then(Value::as_str))));
            let mut row = json!({ "cells": cells });
            match include.unwrap_or("Metadata") {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": { "resourceVersion": rv.to_string() },
        "columnDefinitions": if headers { Value::Array(defs) } else { json!([]) },
        "rows": rows,
    })
}

pub(crate) fn table_response(
    rt: &ResourceType,
    items: &[Value],
    rv: u64,
    include: Option<&str>,
    headers: bool,
) -> Response {
    json_response(StatusCode::OK, &table(rt, items, rv, include, headers))
}
