//! Expectations on a response: dotted paths (`meta.tags.weather_state`,
//! `data.ndarray[0]`, `outputs[0].data[0]`, `meta.tags["a.b"]`) and the
//! matchers a case may put on them.
//!
//! In `expect:` a plain value (string, number, bool, null, list) means
//! equality; a map is always a matcher, so every key of it must be one this
//! module knows — a misspelt matcher is an error, never a silent literal.
//! Compare a whole object with `{equals: {...}}`.

use std::fmt;

use regex::Regex;
use serde_json::Value;

/// Matcher keys a map in `expect:` may hold.
pub const MATCHER_KEYS: &[&str] = &["equals", "oneOf", "regex", "approx", "tolerance", "exists"];

/// Absolute tolerance of `approx` when none is given.
pub const DEFAULT_TOLERANCE: f64 = 1e-6;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A parsed dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    pub segments: Vec<Segment>,
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.segments.iter().enumerate() {
            match s {
                Segment::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Key(k) => write!(f, "[{}]", Value::String(k.clone()))?,
                Segment::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

impl JsonPath {
    /// Parse `a.b[0]["c.d"]`. Errors say what is wrong at which character.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut segments = Vec::new();
        let mut i = 0;
        // Whether the previous token allows a `.` / requires one before a key.
        let mut expect_key = true;
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    if expect_key {
                        return Err(format!("empty key at character {}", i + 1));
                    }
                    expect_key = true;
                    i += 1;
                    if i == chars.len() {
                        return Err("path ends with `.`".into());
                    }
                }
                '[' => {
                    let close = chars[i..].iter().position(|&c| c == ']').map(|p| p + i);
                    // A quoted key may itself contain `]`: find the closing quote first.
                    if chars.get(i + 1) == Some(&'"') {
                        let mut j = i + 2;
                        let mut key = String::new();
                        loop {
                            match chars.get(j) {
                                None => return Err(format!("unclosed quote starting at character {}", i + 2)),
                                Some('\\') => {
                                    match chars.get(j + 1) {
                                        Some(c) => key.push(*c),
                                        None => return Err("path ends inside an escape".into()),
                                    }
                                    j += 2;
                                }
                                Some('"') => break,
                                Some(c) => {
                                    key.push(*c);
                                    j += 1;
                                }
                            }
                        }
                        if chars.get(j + 1) != Some(&']') {
                            return Err(format!("expected `]` at character {}", j + 2));
                        }
                        segments.push(Segment::Key(key));
                        i = j + 2;
                    } else {
                        let Some(close) = close else {
                            return Err(format!("unclosed `[` at character {}", i + 1));
                        };
                        let inner: String = chars[i + 1..close].iter().collect();
                        let n: usize = inner.trim().parse().map_err(|_| {
                            format!(
                                "`[{inner}]` at character {} is not an index (a key is written `[\"{inner}\"]`)",
                                i + 1
                            )
                        })?;
                        segments.push(Segment::Index(n));
                        i = close + 1;
                    }
                    expect_key = false;
                }
                _ => {
                    if !expect_key {
                        return Err(format!("expected `.` or `[` at character {}", i + 1));
                    }
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        if chars[i] == ']' || chars[i] == '"' {
                            return Err(format!("unexpected `{}` at character {}", chars[i], i + 1));
                        }
                        i += 1;
                    }
                    segments.push(Segment::Key(chars[start..i].iter().collect()));
                    expect_key = false;
                }
            }
        }
        if segments.is_empty() {
            return Err("empty path".into());
        }
        Ok(JsonPath { segments })
    }

    /// The value at this path, or why there is none.
    pub fn lookup<'v>(&self, root: &'v Value) -> Result<&'v Value, Missing> {
        let mut cur = root;
        for (depth, seg) in self.segments.iter().enumerate() {
            let here = || JsonPath { segments: self.segments[..depth].to_vec() };
            cur = match (seg, cur) {
                (Segment::Key(k), Value::Object(map)) => match map.get(k) {
                    Some(v) => v,
                    None => {
                        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
                        keys.truncate(20);
                        return Err(Missing::NoKey { at: here(), key: k.clone(), keys: keys.join(", ") });
                    }
                },
                (Segment::Index(n), Value::Array(items)) => match items.get(*n) {
                    Some(v) => v,
                    None => return Err(Missing::OutOfRange { at: here(), index: *n, len: items.len() }),
                },
                (seg, other) => {
                    return Err(Missing::WrongType {
                        at: here(),
                        wanted: match seg {
                            Segment::Key(_) => "an object",
                            Segment::Index(_) => "a list",
                        },
                        found: type_name(other),
                    });
                }
            };
        }
        Ok(cur)
    }
}

/// Why a path has no value in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Missing {
    NoKey { at: JsonPath, key: String, keys: String },
    OutOfRange { at: JsonPath, index: usize, len: usize },
    WrongType { at: JsonPath, wanted: &'static str, found: &'static str },
}

fn at_name(at: &JsonPath) -> String {
    if at.segments.is_empty() { "the response".to_string() } else { format!("`{at}`") }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Missing::NoKey { at, key, keys } if keys.is_empty() => {
                write!(f, "{} has no key `{key}` (it is an empty object)", at_name(at))
            }
            Missing::NoKey { at, key, keys } => write!(f, "{} has no key `{key}` (keys: {keys})", at_name(at)),
            Missing::OutOfRange { at, index, len } => {
                write!(f, "{} has {len} element(s); index {index} is out of range", at_name(at))
            }
            Missing::WrongType { at, wanted, found } => write!(f, "{} is {found}, not {wanted}", at_name(at)),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// What a path's value must satisfy.
#[derive(Debug, Clone)]
pub enum Matcher {
    Equals(Value),
    OneOf(Vec<Value>),
    Regex(Regex),
    Approx { value: f64, tolerance: f64 },
    Exists(bool),
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Equals(v) => write!(f, "= {}", compact(v)),
            Matcher::OneOf(vs) => {
                let items: Vec<String> = vs.iter().map(compact).collect();
                write!(f, "one of [{}]", items.join(", "))
            }
            Matcher::Regex(re) => write!(f, "matches /{}/", re.as_str()),
            Matcher::Approx { value, tolerance } => write!(f, "≈ {value} ± {tolerance}"),
            Matcher::Exists(true) => f.write_str("exists"),
            Matcher::Exists(false) => f.write_str("does not exist"),
        }
    }
}

/// A matcher's definition error; `key` names the offending matcher key
/// (appended to the Problem path) when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatcherError {
    pub key: Option<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl MatcherError {
    fn new(key: Option<&str>, message: impl Into<String>) -> Self {
        MatcherError { key: key.map(str::to_string), message: message.into(), hint: None }
    }
}

impl Matcher {
    /// Parse one `expect:` value.
    pub fn parse(spec: &Value) -> Result<Matcher, MatcherError> {
        let Value::Object(map) = spec else {
            return Ok(Matcher::Equals(spec.clone()));
        };
        for key in map.keys() {
            if !MATCHER_KEYS.contains(&key.as_str()) {
                let mut e = MatcherError::new(
                    Some(key),
                    format!("unknown matcher key `{key}`; a map in `expect` is a matcher"),
                );
                e.hint = Some(match closest(key) {
                    Some(k) => format!("did you mean `{k}`? To compare a whole object write `{{equals: {{...}}}}`"),
                    None => format!(
                        "matchers: {}; to compare a whole object write `{{equals: {{...}}}}`",
                        MATCHER_KEYS.join(", ")
                    ),
                });
                return Err(e);
            }
        }
        let primary: Vec<&str> =
            ["equals", "oneOf", "regex", "approx", "exists"].into_iter().filter(|k| map.contains_key(*k)).collect();
        if map.contains_key("tolerance") && !map.contains_key("approx") {
            return Err(MatcherError::new(Some("tolerance"), "`tolerance` without `approx`"));
        }
        let key = match primary.as_slice() {
            [one] => *one,
            [] => return Err(MatcherError::new(None, "empty matcher")),
            many => {
                return Err(MatcherError::new(
                    None,
                    format!(
                        "one matcher per path, found {}",
                        many.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        };
        let v = &map[key];
        match key {
            "equals" => Ok(Matcher::Equals(v.clone())),
            "oneOf" => match v {
                Value::Array(items) if !items.is_empty() => Ok(Matcher::OneOf(items.clone())),
                Value::Array(_) => Err(MatcherError::new(Some(key), "`oneOf` needs at least one value")),
                other => Err(MatcherError::new(Some(key), format!("`oneOf` takes a list, not {}", type_name(other)))),
            },
            "regex" => match v {
                Value::String(s) => Regex::new(s)
                    .map(Matcher::Regex)
                    .map_err(|e| MatcherError::new(Some(key), format!("invalid regex: {}", one_line(&e.to_string())))),
                other => Err(MatcherError::new(Some(key), format!("`regex` takes a string, not {}", type_name(other)))),
            },
            "approx" => {
                let value = v.as_f64().ok_or_else(|| {
                    MatcherError::new(Some(key), format!("`approx` takes a number, not {}", type_name(v)))
                })?;
                let tolerance = match map.get("tolerance") {
                    None => DEFAULT_TOLERANCE,
                    Some(t) => match t.as_f64() {
                        Some(t) if t >= 0.0 && t.is_finite() => t,
                        _ => {
                            return Err(MatcherError::new(
                                Some("tolerance"),
                                format!("`tolerance` takes a non-negative number, not {}", compact(t)),
                            ));
                        }
                    },
                };
                Ok(Matcher::Approx { value, tolerance })
            }
            "exists" => match v {
                Value::Bool(b) => Ok(Matcher::Exists(*b)),
                other => {
                    Err(MatcherError::new(Some(key), format!("`exists` takes true or false, not {}", compact(other))))
                }
            },
            _ => unreachable!("primary keys are listed above"),
        }
    }

    /// Check `actual` (the lookup result). `Ok(())` or a readable reason.
    pub fn check(&self, actual: Result<&Value, &Missing>) -> Result<(), String> {
        match (self, actual) {
            (Matcher::Exists(true), Ok(_)) | (Matcher::Exists(false), Err(_)) => Ok(()),
            (Matcher::Exists(true), Err(m)) => Err(format!("path does not exist: {m}")),
            (Matcher::Exists(false), Ok(v)) => Err(format!("expected no value, found {}", compact(v))),
            (_, Err(m)) => Err(format!("path does not exist: {m}")),
            (Matcher::Equals(want), Ok(got)) => {
                if json_eq(want, got) {
                    Ok(())
                } else {
                    Err(diff(want, got))
                }
            }
            (Matcher::OneOf(wants), Ok(got)) => {
                if wants.iter().any(|w| json_eq(w, got)) {
                    Ok(())
                } else {
                    Err(format!(
                        "{} is not one of [{}]",
                        compact(got),
                        wants.iter().map(compact).collect::<Vec<_>>().join(", ")
                    ))
                }
            }
            (Matcher::Regex(re), Ok(got)) => {
                let text = match got {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => got.to_string(),
                    other => {
                        return Err(format!("expected a string matching /{}/, got {}", re.as_str(), type_name(other)));
                    }
                };
                if re.is_match(&text) {
                    Ok(())
                } else {
                    Err(format!("{} does not match /{}/", compact(got), re.as_str()))
                }
            }
            (Matcher::Approx { value, tolerance }, Ok(got)) => {
                // Seldon's ndarray often carries numbers as strings ("55").
                let n = match got {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                let Some(n) = n else {
                    return Err(format!("expected a number ≈ {value}, got {}", compact(got)));
                };
                let delta = (n - value).abs();
                if delta <= *tolerance {
                    Ok(())
                } else {
                    Err(format!("{n} is {delta} away from {value}, more than the tolerance {tolerance}"))
                }
            }
        }
    }
}

fn closest(key: &str) -> Option<&'static str> {
    MATCHER_KEYS
        .iter()
        .map(|k| (k, strsim::damerau_levenshtein(&key.to_lowercase(), &k.to_lowercase())))
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| *k)
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Equality where numbers compare by value (`1` equals `1.0`).
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// A value on one line, cut at 200 characters.
pub fn compact(v: &Value) -> String {
    super::report::truncate(&v.to_string(), 200)
}

/// A readable diff of an expected and an actual value: scalars side by side,
/// structures line by line (`-` expected, `+` actual).
pub fn diff(want: &Value, got: &Value) -> String {
    let scalar = |v: &Value| !matches!(v, Value::Array(_) | Value::Object(_));
    if scalar(want) || scalar(got) {
        return format!("- expected: {}\n+ actual:   {}", compact(want), compact(got));
    }
    let a = pretty_lines(want);
    let b = pretty_lines(got);
    // Values in checks are small; past this, LCS is not worth its quadratic cost.
    const MAX_LINES: usize = 400;
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        return format!("- expected: {}\n+ actual:   {}", compact(want), compact(got));
    }
    line_diff(&a, &b)
}

fn pretty_lines(v: &Value) -> Vec<String> {
    serde_json::to_string_pretty(v).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Longest-common-subsequence line diff.
fn line_diff(a: &[String], b: &[String]) -> String {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!("  {}", a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    #[test]
    fn parses_dotted_indexed_and_quoted_paths() {
        assert_eq!(
            path("outputs[0].data[1]").segments,
            vec![Segment::Key("outputs".into()), Segment::Index(0), Segment::Key("data".into()), Segment::Index(1)]
        );
        assert_eq!(
            path(r#"meta.tags["a.b"]"#).segments,
            vec![Segment::Key("meta".into()), Segment::Key("tags".into()), Segment::Key("a.b".into())]
        );
        assert_eq!(path("data.ndarray[0][2]").to_string(), "data.ndarray[0][2]");
        assert_eq!(path(r#"meta["a.b"].c"#).to_string(), r#"meta["a.b"].c"#);
    }

    #[test]
    fn rejects_malformed_paths() {
        for (bad, why) in [
            ("", "empty path"),
            ("a..b", "empty key at character 3"),
            ("a.", "path ends with `.`"),
            ("a[x]", "is not an index"),
            ("a[0", "unclosed `[`"),
            ("a[0]b", "expected `.` or `[` at character 5"),
            (r#"a["x"#, "unclosed quote"),
        ] {
            let err = JsonPath::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn lookup_reports_where_a_path_stops() {
        let v = json!({"meta": {"tags": {"weather_state": "mild"}}, "data": {"ndarray": ["55"]}});
        assert_eq!(path("meta.tags.weather_state").lookup(&v), Ok(&json!("mild")));
        assert_eq!(path("data.ndarray[0]").lookup(&v), Ok(&json!("55")));
        assert_eq!(
            path("meta.tags.error").lookup(&v).unwrap_err().to_string(),
            "`meta.tags` has no key `error` (keys: weather_state)"
        );
        assert_eq!(
            path("data.ndarray[3]").lookup(&v).unwrap_err().to_string(),
            "`data.ndarray` has 1 element(s); index 3 is out of range"
        );
        assert_eq!(
            path("data.ndarray.x").lookup(&v).unwrap_err().to_string(),
            "`data.ndarray` is a list, not an object"
        );
        assert_eq!(
            path("nope").lookup(&v).unwrap_err().to_string(),
            "the response has no key `nope` (keys: data, meta)"
        );
    }

    #[test]
    fn plain_values_are_equality_and_numbers_compare_by_value() {
        let m = Matcher::parse(&json!(1)).unwrap();
        assert!(m.check(Ok(&json!(1.0))).is_ok());
        assert!(m.check(Ok(&json!("1"))).is_err());
        let m = Matcher::parse(&json!({"equals": {"a": [1, 2]}})).unwrap();
        assert!(m.check(Ok(&json!({"a": [1.0, 2]}))).is_ok());
    }

    #[test]
    fn matchers_accept_and_reject() {
        let one_of = Matcher::parse(&json!({"oneOf": ["mild", "hot"]})).unwrap();
        assert!(one_of.check(Ok(&json!("hot"))).is_ok());
        assert_eq!(one_of.check(Ok(&json!("cold"))).unwrap_err(), r#""cold" is not one of ["mild", "hot"]"#);

        let re = Matcher::parse(&json!({"regex": "(?i)integer"})).unwrap();
        assert!(re.check(Ok(&json!("Please provide temperature value as Integer"))).is_ok());
        assert!(re.check(Ok(&json!({"x": 1}))).unwrap_err().contains("got an object"));

        let approx = Matcher::parse(&json!({"approx": 0.5, "tolerance": 0.01})).unwrap();
        assert!(approx.check(Ok(&json!(0.505))).is_ok());
        assert!(approx.check(Ok(&json!("0.495"))).is_ok());
        assert!(approx.check(Ok(&json!(0.52))).unwrap_err().contains("more than the tolerance 0.01"));

        let missing = Missing::NoKey { at: path("meta"), key: "x".into(), keys: String::new() };
        assert!(Matcher::parse(&json!({"exists": false})).unwrap().check(Err(&missing)).is_ok());
        assert!(Matcher::parse(&json!({"exists": true})).unwrap().check(Err(&missing)).is_err());
        assert_eq!(
            Matcher::parse(&json!("mild")).unwrap().check(Err(&missing)).unwrap_err(),
            "path does not exist: `meta` has no key `x` (it is an empty object)"
        );
    }

    #[test]
    fn malformed_matchers_name_the_key() {
        let e = Matcher::parse(&json!({"regx": "a"})).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("regx"));
        assert!(e.hint.unwrap().contains("did you mean `regex`"));
        let e = Matcher::parse(&json!({"regex": "(unclosed"})).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("regex"));
        assert!(e.message.starts_with("invalid regex"), "{}", e.message);
        let e = Matcher::parse(&json!({"tolerance": 0.1})).unwrap_err();
        assert_eq!((e.key.as_deref(), e.message.as_str()), (Some("tolerance"), "`tolerance` without `approx`"));
        let e = Matcher::parse(&json!({"regex": "a", "exists": true})).unwrap_err();
        assert_eq!(e.message, "one matcher per path, found `regex`, `exists`");
        assert!(Matcher::parse(&json!({"oneOf": []})).is_err());
        assert!(Matcher::parse(&json!({"approx": "x"})).is_err());
        assert!(Matcher::parse(&json!({"approx": 1, "tolerance": -1})).is_err());
        assert!(Matcher::parse(&json!({})).is_err());
    }

    #[test]
    fn structured_diff_marks_changed_lines() {
        let d = diff(&json!({"a": 1, "b": [1, 2]}), &json!({"a": 1, "b": [1, 3]}));
        insta::assert_snapshot!(d, @r#"
          {
            "a": 1,
            "b": [
              1,
        -     2
        +     3
            ]
          }
        "#);
        assert_eq!(diff(&json!("cold"), &json!("mild")), "- expected: \"cold\"\n+ actual:   \"mild\"");
    }
}
