//! Just enough of the Kubernetes protobuf encoding to accept what typed
//! client-go clients send (`kubectl create namespace|configmap|secret`
//! posts `application/vnd.kubernetes.protobuf`). Bodies are decoded into
//! the same JSON the rest of the sim stores; responses stay JSON, which
//! those clients also accept.
//!
//! Wire format: the magic `k8s\0`, then a `runtime.Unknown` message
//! (1: typeMeta {1: apiVersion, 2: kind}, 2: raw, 3: contentEncoding,
//! 4: contentType) whose `raw` is the object in the field numbers of
//! `k8s.io/api/.../generated.proto`. Fields the sim does not know are
//! skipped.

use base64::Engine;
use serde_json::{Map, Value, json};

pub const MAGIC: &[u8] = b"k8s\0";
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// A decoder for one kind's `raw` bytes.
pub type Decoder = fn(&[u8]) -> Result<Value, String>;

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skip,
}

/// Iterate `(field number, value)` over one message.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u64, Field<'_>), String>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let r = (|| {
            let key = varint(&mut buf)?;
            let (num, wire) = (key >> 3, key & 7);
            let f = match wire {
                0 => Field::Varint(varint(&mut buf)?),
                1 => {
                    take(&mut buf, 8)?;
                    Field::Skip
                }
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).map_err(|_| "length overflow".to_string())?;
                    Field::Bytes(take(&mut buf, len)?)
                }
                5 => {
                    take(&mut buf, 4)?;
                    Field::Skip
                }
                w => return Err(format!("unsupported protobuf wire type {w}")),
            };
            Ok((num, f))
        })();
        if r.is_err() {
            buf = &[];
        }
        Some(r)
    })
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if buf.len() < n {
        return Err("truncated protobuf message".into());
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *take(buf, 1)?.first().expect("one byte");
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

fn string(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// A `map<string, string>` entry (1: key, 2: value); with `base64` the
/// value is bytes and encoded as the JSON form does.
fn map_entry(b: &[u8], base64: bool) -> Result<(String, Value), String> {
    let (mut k, mut v) = (String::new(), Vec::new());
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => k = string(x)?,
            (2, Field::Bytes(x)) => v = x.to_vec(),
            _ => {}
        }
    }
    let v = if base64 { base64::engine::general_purpose::STANDARD.encode(v) } else { string(&v)? };
    Ok((k, json!(v)))
}

fn insert_entry(obj: &mut Map<String, Value>, field: &str, b: &[u8], base64: bool) -> Result<(), String> {
    let (k, v) = map_entry(b, base64)?;
    obj.entry(field).or_insert_with(|| json!({}))[k] = v;
    Ok(())
}

/// ObjectMeta: the fields a client may set.
fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => _ = m.insert("name".into(), json!(string(x)?)),
            (2, Field::Bytes(x)) => _ = m.insert("generateName".into(), json!(string(x)?)),
            (3, Field::Bytes(x)) => _ = m.insert("namespace".into(), json!(string(x)?)),
            (6, Field::Bytes(x)) => _ = m.insert("resourceVersion".into(), json!(string(x)?)),
            (11, Field::Bytes(x)) => insert_entry(&mut m, "labels", x, false)?,
            (12, Field::Bytes(x)) => insert_entry(&mut m, "annotations", x, false)?,
            (14, Field::Bytes(x)) => m
                .entry("finalizers")
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("array")
                .push(json!(string(x)?)),
            _ => {}
        }
    }
    Ok(Value::Object(m))
}

fn object(api_version: &str, kind: &str) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("apiVersion".into(), json!(api_version));
    o.insert("kind".into(), json!(kind));
    o
}

pub fn configmap(b: &[u8]) -> Result<Value, String> {
    let mut o = object("v1", "ConfigMap");
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => _ = o.insert("metadata".into(), object_meta(x)?),
            (2, Field::Bytes(x)) => insert_entry(&mut o, "data", x, false)?,
            (3, Field::Bytes(x)) => insert_entry(&mut o, "binaryData", x, true)?,
            (4, Field::Varint(v)) => _ = o.insert("immutable".into(), json!(v != 0)),
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

pub fn secret(b: &[u8]) -> Result<Value, String> {
    let mut o = object("v1", "Secret");
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => _ = o.insert("metadata".into(), object_meta(x)?),
            (2, Field::Bytes(x)) => insert_entry(&mut o, "data", x, true)?,
            (3, Field::Bytes(x)) => _ = o.insert("type".into(), json!(string(x)?)),
            (4, Field::Bytes(x)) => insert_entry(&mut o, "stringData", x, false)?,
            (5, Field::Varint(v)) => _ = o.insert("immutable".into(), json!(v != 0)),
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

pub fn namespace(b: &[u8]) -> Result<Value, String> {
    let mut o = object("v1", "Namespace");
    for f in fields(b) {
        if let (1, Field::Bytes(x)) = f? {
            o.insert("metadata".into(), object_meta(x)?);
        }
    }
    Ok(Value::Object(o))
}

fn strings_into(o: &mut Map<String, Value>, field: &str, x: &[u8]) -> Result<(), String> {
    o.entry(field).or_insert_with(|| json!([])).as_array_mut().expect("array").push(json!(string(x)?));
    Ok(())
}

/// A message of string fields only, `(number, JSON name)`.
fn strings_message(b: &[u8], names: &[(u64, &str)]) -> Result<Value, String> {
    let mut o = Map::new();
    for f in fields(b) {
        if let (n, Field::Bytes(x)) = f?
            && let Some((_, name)) = names.iter().find(|(k, _)| *k == n)
        {
            o.insert((*name).into(), json!(string(x)?));
        }
    }
    Ok(Value::Object(o))
}

pub fn serviceaccount(b: &[u8]) -> Result<Value, String> {
    let mut o = object("v1", "ServiceAccount");
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => _ = o.insert("metadata".into(), object_meta(x)?),
            (4, Field::Varint(v)) => _ = o.insert("automountServiceAccountToken".into(), json!(v != 0)),
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

/// `rbac/v1` PolicyRule.
fn policy_rule(b: &[u8]) -> Result<Value, String> {
    let mut o = Map::new();
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => strings_into(&mut o, "verbs", x)?,
            (2, Field::Bytes(x)) => strings_into(&mut o, "apiGroups", x)?,
            (3, Field::Bytes(x)) => strings_into(&mut o, "resources", x)?,
            (4, Field::Bytes(x)) => strings_into(&mut o, "resourceNames", x)?,
            (5, Field::Bytes(x)) => strings_into(&mut o, "nonResourceURLs", x)?,
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn rbac_role(b: &[u8], kind: &str) -> Result<Value, String> {
    let mut o = object("rbac.authorization.k8s.io/v1", kind);
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => _ = o.insert("metadata".into(), object_meta(x)?),
            (2, Field::Bytes(x)) => {
                o.entry("rules").or_insert_with(|| json!([])).as_array_mut().expect("array").push(policy_rule(x)?)
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn rbac_binding(b: &[u8], kind: &str) -> Result<Value, String> {
    let mut o = object("rbac.authorization.k8s.io/v1", kind);
    for f in fields(b) {
        match f? {
            (1, Field::Bytes(x)) => _ = o.insert("metadata".into(), object_meta(x)?),
            (2, Field::Bytes(x)) => {
                let s = strings_message(x, &[(1, "kind"), (2, "apiGroup"), (3, "name"), (4, "namespace")])?;
                o.entry("subjects").or_insert_with(|| json!([])).as_array_mut().expect("array").push(s)
            }
            (3, Field::Bytes(x)) => {
                _ = o.insert("roleRef".into(), strings_message(x, &[(1, "apiGroup"), (2, "kind"), (3, "name")])?)
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

pub fn role(b: &[u8]) -> Result<Value, String> {
    rbac_role(b, "Role")
}

pub fn clusterrole(b: &[u8]) -> Result<Value, String> {
    rbac_role(b, "ClusterRole")
}

pub fn rolebinding(b: &[u8]) -> Result<Value, String> {
    rbac_binding(b, "RoleBinding")
}

pub fn clusterrolebinding(b: &[u8]) -> Result<Value, String> {
    rbac_binding(b, "ClusterRoleBinding")
}

/// `authentication/v1` TokenRequest (`kubectl create token`): its spec.
pub fn token_request(b: &[u8]) -> Result<Value, String> {
    let mut o = object("authentication.k8s.io/v1", "TokenRequest");
    for f in fields(b) {
        if let (2, Field::Bytes(spec)) = f? {
            let mut s = Map::new();
            for f in fields(spec) {
                match f? {
                    (1, Field::Bytes(x)) => strings_into(&mut s, "audiences", x)?,
                    (4, Field::Varint(v)) => _ = s.insert("expirationSeconds".into(), json!(v as i64)),
                    (3, Field::Bytes(x)) => {
                        let r = strings_message(x, &[(1, "kind"), (2, "apiVersion"), (3, "name"), (4, "uid")])?;
                        s.insert("boundObjectRef".into(), r);
                    }
                    _ => {}
                }
            }
            o.insert("spec".into(), Value::Object(s));
        }
    }
    Ok(Value::Object(o))
}

/// `authorization/v1` SelfSubjectAccessReview (`kubectl auth can-i`): its spec.
pub fn self_subject_access_review(b: &[u8]) -> Result<Value, String> {
    let mut o = object("authorization.k8s.io/v1", "SelfSubjectAccessReview");
    for f in fields(b) {
        if let (2, Field::Bytes(spec)) = f? {
            let mut s = Map::new();
            for f in fields(spec) {
                match f? {
                    (1, Field::Bytes(x)) => {
                        let names = [
                            (1, "namespace"),
                            (2, "verb"),
                            (3, "group"),
                            (4, "version"),
                            (5, "resource"),
                            (6, "subresource"),
                            (7, "name"),
                        ];
                        s.insert("resourceAttributes".into(), strings_message(x, &names)?);
                    }
                    (2, Field::Bytes(x)) => {
                        s.insert("nonResourceAttributes".into(), strings_message(x, &[(1, "path"), (2, "verb")])?);
                    }
                    _ => {}
                }
            }
            o.insert("spec".into(), Value::Object(s));
        }
    }
    Ok(Value::Object(o))
}

/// A request body in JSON, or protobuf decoded with `decode`: for the
/// handlers that read their own bodies (TokenRequest, the reviews).
pub fn json_or_protobuf(content_type: Option<&str>, bytes: &[u8], decode: Decoder) -> Result<Value, String> {
    let ct = content_type.unwrap_or("").split(';').next().unwrap_or("").trim();
    if ct == CONTENT_TYPE {
        let (_, _, raw) = envelope(bytes)?;
        return decode(raw);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("the body of the request is not valid JSON: {e}"))
}

/// Unwrap the envelope: `(apiVersion, kind, raw)`.
pub fn envelope(body: &[u8]) -> Result<(String, String, &[u8]), String> {
    let inner = body.strip_prefix(MAGIC).ok_or("protobuf body without the k8s\\0 prefix")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for f in fields(inner) {
        match f? {
            (1, Field::Bytes(tm)) => {
                for f in fields(tm) {
                    match f? {
                        (1, Field::Bytes(x)) => api_version = string(x)?,
                        (2, Field::Bytes(x)) => kind = string(x)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            (3, Field::Bytes(x)) if !x.is_empty() => {
                return Err(format!("unsupported protobuf content encoding {:?}", string(x)?));
            }
            _ => {}
        }
    }
    Ok((api_version, kind, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(num: u64, wire: u64, out: &mut Vec<u8>) {
        put_varint((num << 3) | wire, out);
    }
    fn put_varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes(num: u64, b: &[u8], out: &mut Vec<u8>) {
        key(num, 2, out);
        put_varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes(1, k.as_bytes(), &mut e);
        bytes(2, v, &mut e);
        e
    }

    /// The bytes client-go sends for
    /// `kubectl create configmap a --from-literal=x=1` (labelled), built
    /// field by field from generated.proto's numbering.
    #[test]
    fn decodes_a_configmap_envelope() {
        let mut meta = Vec::new();
        bytes(1, b"a", &mut meta);
        bytes(11, &entry("app", b"web"), &mut meta);
        let mut cm = Vec::new();
        bytes(1, &meta, &mut cm);
        bytes(2, &entry("x", b"1"), &mut cm);
        bytes(3, &entry("bin", &[0, 1, 2]), &mut cm);
        key(4, 0, &mut cm);
        put_varint(1, &mut cm);
        let mut tm = Vec::new();
        bytes(1, b"v1", &mut tm);
        bytes(2, b"ConfigMap", &mut tm);
        let mut body = MAGIC.to_vec();
        bytes(1, &tm, &mut body);
        bytes(2, &cm, &mut body);
        bytes(4, b"", &mut body);

        let (av, kind, raw) = envelope(&body).unwrap();
        assert_eq!((av.as_str(), kind.as_str()), ("v1", "ConfigMap"));
        assert_eq!(
            configmap(raw).unwrap(),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "labels": {"app": "web"}},
                "data": {"x": "1"}, "binaryData": {"bin": "AAEC"}, "immutable": true,
            })
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert!(envelope(b"k8s\0\x0a\x05ab").is_err());
        assert!(envelope(b"nope").is_err());
        assert!(configmap(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }
}
