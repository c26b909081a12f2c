//! A Dockerfile parser for the simulated build: enough of the Dockerfile
//! grammar (line continuations, comments, JSON and shell forms, `ARG`
//! substitution) to turn the instructions into an image config and a file
//! layout. RUN steps are kept so the build can log that it skips them.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    From {
        image: String,
    },
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Arg {
        name: String,
        default: Option<String>,
    },
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    User(String),
    Workdir(String),
    Expose(Vec<String>),
    Copy {
        sources: Vec<String>,
        dest: String,
    },
    Run(String),
    /// Parsed but without effect on the simulated image (HEALTHCHECK, ...).
    Other {
        keyword: String,
        args: String,
    },
}

/// One instruction with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    /// The instruction as written (continuations joined), for logs.
    pub text: String,
    pub instruction: Instruction,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

fn err(line: usize, message: impl Into<String>) -> ParseError {
    ParseError { line, message: message.into() }
}

/// Parse a Dockerfile. The first instruction (after `ARG`s) must be FROM.
pub fn parse(text: &str) -> Result<Vec<Step>, ParseError> {
    let mut steps = Vec::new();
    let mut args: BTreeMap<String, String> = BTreeMap::new();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut pending: Option<(usize, String)> = None;
    let lines: Vec<&str> = text.lines().collect();
    let mut logical = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let trimmed = raw.trim();
        if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if pending.is_some() && trimmed.starts_with('#') {
            continue;
        }
        let (start, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            pending = Some((start, acc));
        } else {
            acc.push_str(trimmed);
            logical.push((start, acc));
        }
    }
    if let Some((line, _)) = pending {
        return Err(err(line, "the file ends inside a line continuation"));
    }
    let mut seen_from = false;
    for (line, text) in logical {
        let (keyword, rest) = match text.split_once(char::is_whitespace) {
            Some((k, r)) => (k.to_ascii_uppercase(), r.trim().to_string()),
            None => (text.to_ascii_uppercase(), String::new()),
        };
        if !keyword.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(err(line, format!("unknown instruction: {keyword}")));
        }
        let vars = |s: &str| substitute(s, &args, &env);
        let instruction = match keyword.as_str() {
            "FROM" => {
                let image = rest.split_whitespace().next().ok_or_else(|| err(line, "FROM requires an image"))?;
                seen_from = true;
                Instruction::From { image: vars(image) }
            }
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.trim().to_string(), Some(unquote(d.trim()))),
                    None => (rest.trim().to_string(), None),
                };
                if name.is_empty() {
                    return Err(err(line, "ARG requires a name"));
                }
                args.insert(name.clone(), default.clone().unwrap_or_default());
                Instruction::Arg { name, default }
            }
            _ if !seen_from => {
                return Err(err(line, format!("no build stage in current context: {keyword} before FROM")));
            }
            "ENV" => {
                let pairs = key_values(&rest, true).map_err(|m| err(line, format!("ENV {m}")))?;
                let pairs: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k, vars(&v))).collect();
                for (k, v) in &pairs {
                    env.insert(k.clone(), v.clone());
                }
                Instruction::Env(pairs)
            }
            "LABEL" => {
                let pairs = key_values(&rest, false).map_err(|m| err(line, format!("LABEL {m}")))?;
                Instruction::Label(pairs.into_iter().map(|(k, v)| (k, vars(&v))).collect())
            }
            "CMD" => Instruction::Cmd(command(&rest).map_err(|m| err(line, m))?),
            "ENTRYPOINT" => Instruction::Entrypoint(command(&rest).map_err(|m| err(line, m))?),
            "USER" if !rest.is_empty() => Instruction::User(vars(&rest)),
            "WORKDIR" if !rest.is_empty() => Instruction::Workdir(vars(&rest)),
            "EXPOSE" if !rest.is_empty() => Instruction::Expose(
                rest.split_whitespace()
                    .map(|p| {
                        let p = vars(p);
                        if p.contains('/') { p } else { format!("{p}/tcp") }
                    })
                    .collect(),
            ),
            "COPY" | "ADD" => {
                let mut words: Vec<String> = if rest.starts_with('[') {
                    json_array(&rest).map_err(|m| err(line, m))?
                } else {
                    rest.split_whitespace().map(str::to_string).collect()
                };
                // Flags (--chown, --chmod, --from) do not change the layout
                // the simulation builds, except --from, which it cannot do.
                if words.iter().any(|w| w.starts_with("--from")) {
                    return Err(err(line, "COPY --from (multi-stage builds) is not supported by the simulation"));
                }
                words.retain(|w| !w.starts_with("--"));
                if words.len() < 2 {
                    return Err(err(line, format!("{keyword} requires at least two arguments")));
                }
                let dest = vars(&words.pop().expect("two words"));
                Instruction::Copy { sources: words.iter().map(|w| vars(w)).collect(), dest }
            }
            "RUN" if !rest.is_empty() => Instruction::Run(rest.clone()),
            "USER" | "WORKDIR" | "EXPOSE" | "RUN" => {
                return Err(err(line, format!("{keyword} requires at least one argument")));
            }
            "MAINTAINER" | "HEALTHCHECK" | "SHELL" | "STOPSIGNAL" | "VOLUME" | "ONBUILD" => {
                Instruction::Other { keyword: keyword.clone(), args: rest.clone() }
            }
            _ => return Err(err(line, format!("unknown instruction: {keyword}"))),
        };
        steps.push(Step { line, text: format!("{keyword} {rest}").trim().to_string(), instruction });
    }
    if !seen_from {
        return Err(err(
            steps.last().map(|s| s.line).unwrap_or(1),
            "no FROM instruction: a Dockerfile must start with FROM",
        ));
    }
    Ok(steps)
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\''))) {
        s[1..s.len() - 1].replace("\\\"", "\"")
    } else {
        s.to_string()
    }
}

/// `$NAME` and `${NAME}` from ARG/ENV values; unknown names become empty,
/// as Docker does.
fn substitute(s: &str, args: &BTreeMap<String, String>, env: &BTreeMap<String, String>) -> String {
    let lookup = |n: &str| env.get(n).or_else(|| args.get(n)).cloned().unwrap_or_default();
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'$') {
            out.push('$');
            chars.next();
        } else if c != '$' {
            out.push(c);
        } else if chars.peek() == Some(&'{') {
            chars.next();
            let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
            let name = name.split(":-").next().unwrap_or("").to_string();
            out.push_str(&lookup(&name));
        } else {
            let mut name = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_ascii_alphanumeric() || c == '_' {
                    name.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            if name.is_empty() {
                out.push('$');
            } else {
                out.push_str(&lookup(&name));
            }
        }
    }
    out
}

/// `k=v k2="v 2"`, or the legacy `ENV k v w` form (when `legacy`).
fn key_values(s: &str, legacy: bool) -> Result<Vec<(String, String)>, String> {
    let words = shell_words(s)?;
    if words.is_empty() {
        return Err("requires at least one argument".into());
    }
    if legacy && !words[0].contains('=') {
        let (k, v) = s.split_once(char::is_whitespace).ok_or("must have two arguments")?;
        return Ok(vec![(k.to_string(), unquote(v.trim()))]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("{w:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// Split on whitespace, honouring double and single quotes (removed).
fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn json_array(s: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(s).map_err(|e| format!("invalid JSON array {s}: {e}"))
}

/// Exec form `["a","b"]`, or shell form wrapped in `/bin/sh -c`.
fn command(s: &str) -> Result<Vec<String>, String> {
    if s.starts_with('[') {
        // Docker falls back to shell form when the JSON does not parse.
        if let Ok(v) = json_array(s) {
            return Ok(v);
        }
    }
    if s.is_empty() {
        return Ok(Vec::new());
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), s.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_instructions_the_image_config_needs() {
        let steps = parse(
            "# comment\nARG BASE=python:3.11\nFROM ${BASE}\nENV A=1 B=\"two words\"\nENV LEGACY some value\n\
             LABEL io.k8s.name=weather version=\"1\"\nWORKDIR /microservice\nCOPY . /microservice\n\
             COPY req.txt \\\n  /tmp/\nRUN pip install \\\n  -r req.txt\nEXPOSE 5000 9000/udp\nUSER 1001\n\
             CMD [\"seldon-core-microservice\", \"$MODEL\"]\nENTRYPOINT exec run\n",
        )
        .unwrap();
        let ins: Vec<&Instruction> = steps.iter().map(|s| &s.instruction).collect();
        assert_eq!(ins[1], &Instruction::From { image: "python:3.11".into() });
        assert_eq!(ins[2], &Instruction::Env(vec![("A".into(), "1".into()), ("B".into(), "two words".into())]));
        assert_eq!(ins[3], &Instruction::Env(vec![("LEGACY".into(), "some value".into())]));
        assert_eq!(
            ins[4],
            &Instruction::Label(vec![("io.k8s.name".into(), "weather".into()), ("version".into(), "1".into())])
        );
        assert_eq!(ins[6], &Instruction::Copy { sources: vec![".".into()], dest: "/microservice".into() });
        assert_eq!(ins[7], &Instruction::Copy { sources: vec!["req.txt".into()], dest: "/tmp/".into() });
        assert_eq!(steps[7].line, 9);
        assert_eq!(ins[8], &Instruction::Run("pip install  -r req.txt".into()));
        assert_eq!(ins[9], &Instruction::Expose(vec!["5000/tcp".into(), "9000/udp".into()]));
        assert_eq!(ins[11], &Instruction::Cmd(vec!["seldon-core-microservice".into(), "$MODEL".into()]));
        assert_eq!(ins[12], &Instruction::Entrypoint(vec!["/bin/sh".into(), "-c".into(), "exec run".into()]));
    }

    #[test]
    fn rejects_what_docker_rejects() {
        assert_eq!(parse("ENV A=1\n").unwrap_err().line, 1);
        assert!(parse("").unwrap_err().message.contains("no FROM"));
        assert!(parse("FROM x\nFROBNICATE y\n").unwrap_err().message.contains("unknown instruction: FROBNICATE"));
        assert!(parse("FROM x\nCOPY onlyone\n").unwrap_err().message.contains("two arguments"));
        assert!(parse("FROM x\nRUN a \\").unwrap_err().message.contains("continuation"));
        assert_eq!(parse("FROM x\n\nLABEL a=\"b\n").unwrap_err().line, 3);
    }
}
