//! Push payloads from GitHub and GitLab, read into one shape. Only the fields
//! selection needs are read; everything else in the payload is ignored, so
//! new fields upstream never break parsing.

use serde_json::Value;

use super::TriggerError;

/// Who sent the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    GitHub,
    GitLab,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the event-type header (or `--event-type`) says the payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A branch or tag push: the only kind that can start pipelines.
    Push,
    /// Anything else, with the name as sent (e.g. `ping`, `Merge Request Hook`).
    Other(String),
}

impl EventKind {
    /// GitHub sends `push`, GitLab `Push Hook`; `--event-type` accepts both.
    /// A GitLab `Tag Push Hook` is a push too: it is then ignored as a tag.
    pub fn parse(name: &str) -> EventKind {
        match name.trim() {
            "push" | "Push Hook" | "Tag Push Hook" => EventKind::Push,
            other => EventKind::Other(other.to_string()),
        }
    }
}

/// The all-zero object id Git hosts send for "no commit" (new or deleted ref).
pub fn is_zero_sha(sha: &str) -> bool {
    !sha.is_empty() && sha.bytes().all(|b| b == b'0')
}

/// A push, whatever the host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushEvent {
    pub provider: Provider,
    /// `refs/heads/main`, `refs/tags/v1`.
    pub git_ref: String,
    pub before: String,
    pub after: String,
    /// `owner/name` (GitHub `full_name`, GitLab `path_with_namespace`).
    pub repository: String,
    /// Every URL the payload gives for the repository (clone, SSH, web).
    pub repository_urls: Vec<String>,
    /// Who pushed: GitHub's `sender.login` (else `pusher.name`), GitLab's
    /// `user_username`. The run's starter for `forbidSelfApproval`.
    pub pusher: Option<String>,
}

impl PushEvent {
    /// Parse a payload. `provider` comes from the endpoint the payload was
    /// posted to; `None` (the CLI) guesses from the payload's shape.
    pub fn from_json(bytes: &[u8], provider: Option<Provider>, what: &str) -> Result<PushEvent, TriggerError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|source| TriggerError::Json { what: what.to_string(), source })?;
        let bad = |message: String| TriggerError::Payload { what: what.to_string(), message };
        if !value.is_object() {
            return Err(bad("expected a JSON object (a push payload)".into()));
        }
        let provider = match provider {
            Some(p) => p,
            // GitLab payloads always carry `object_kind`; GitHub's never do.
            None if value.get("object_kind").is_some() => Provider::GitLab,
            None if value.get("repository").and_then(|r| r.get("full_name")).is_some() => Provider::GitHub,
            None => {
                return Err(bad(
                    "not a GitHub or GitLab push payload (no `object_kind`, no `repository.full_name`)".into()
                ));
            }
        };
        if provider == Provider::GitLab
            && let Some(kind) = value.get("object_kind").and_then(Value::as_str)
            && kind != "push"
            && kind != "tag_push"
        {
            return Err(bad(format!("GitLab `object_kind` is `{kind}`, not `push`")));
        }
        let field = |name: &str| -> Result<String, TriggerError> {
            value
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad(format!("missing string field `{name}` (a {provider} push payload has it)")))
        };
        let git_ref = field("ref")?;
        let before = field("before")?;
        let after = field("after")?;
        for (name, sha) in [("before", &before), ("after", &after)] {
            let ok = (sha.len() == 40 || sha.len() == 64) && sha.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(bad(format!("`{name}` is `{sha}`, not a 40- or 64-digit hex commit id")));
            }
        }
        let strs = |obj: Option<&Value>, keys: &[&str]| -> Vec<String> {
            keys.iter()
                .filter_map(|k| obj.and_then(|o| o.get(*k)).and_then(Value::as_str))
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let (repository, mut urls) = match provider {
            Provider::GitHub => {
                let repo = value.get("repository");
                let name = strs(repo, &["full_name"]).into_iter().next();
                (name, strs(repo, &["clone_url", "ssh_url", "git_url", "html_url", "svn_url"]))
            }
            Provider::GitLab => {
                let project = value.get("project");
                let name = strs(project, &["path_with_namespace"]).into_iter().next();
                let mut urls = strs(project, &["git_http_url", "git_ssh_url", "web_url", "http_url", "ssh_url"]);
                urls.extend(strs(value.get("repository"), &["git_http_url", "git_ssh_url", "url", "homepage"]));
                (name, urls)
            }
        };
        let repository = repository.ok_or_else(|| {
            bad(match provider {
                Provider::GitHub => "missing `repository.full_name`".into(),
                Provider::GitLab => "missing `project.path_with_namespace`".into(),
            })
        })?;
        if urls.is_empty() {
            return Err(bad(format!("no clone or web URL for repository {repository}")));
        }
        urls.dedup();
        let pusher = match provider {
            Provider::GitHub => {
                strs(value.get("sender"), &["login"]).into_iter().chain(strs(value.get("pusher"), &["name"])).next()
            }
            Provider::GitLab => strs(Some(&value), &["user_username"]).into_iter().next(),
        };
        Ok(PushEvent { provider, git_ref, before, after, repository, repository_urls: urls, pusher })
    }

    /// The branch name for `refs/heads/...`; `None` for tags and other refs.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/")
    }

    pub fn is_new_ref(&self) -> bool {
        is_zero_sha(&self.before)
    }

    pub fn is_deleted_ref(&self) -> bool {
        is_zero_sha(&self.after)
    }
}

/// Reduce a Git URL to `host/path` (lowercase, no scheme, user, port or
/// `.git`), so `git@github.com:o/n.git`, `https://github.com/o/n` and
/// `ssh://git@github.com:22/o/n.git` compare equal. Local paths are kept as
/// absolute paths.
pub fn normalize_repo_url(url: &str) -> String {
    let url = url.trim();
    let (host, path) = if let Some((_, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit('@').next().unwrap_or(authority);
        let host = host.split(':').next().unwrap_or(host);
        (host.to_string(), path.to_string())
    } else if let Some((userhost, path)) = url.split_once(':').filter(|(h, _)| !h.contains('/')) {
        // scp-like syntax: [user@]host:path
        let host = userhost.rsplit('@').next().unwrap_or(userhost);
        (host.to_string(), path.to_string())
    } else {
        (String::new(), url.to_string())
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_matches('/');
    if host.is_empty() { format!("/{path}") } else { format!("{host}/{path}").to_lowercase() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(path: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/webhooks").join(path);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn github_recorded_push_parses() {
        let ev = PushEvent::from_json(&reference("github/push.recorded-pac-main-2-commits.json"), None, "p").unwrap();
        assert_eq!(ev.provider, Provider::GitHub);
        assert_eq!(ev.branch(), Some("main"));
        assert_eq!(ev.repository, "openshift-pipelines/pipelines-as-code");
        assert_eq!(ev.after, "ef75c7db8a921a8c0adaabe2e309f2f9d7ce5bd4");
        assert_eq!(ev.pusher.as_deref(), Some("chmouel"));
        assert!(ev.repository_urls.contains(&"https://github.com/openshift-pipelines/pipelines-as-code.git".into()));
    }

    #[test]
    fn github_tag_deletion_is_a_deleted_non_branch_ref() {
        let ev = PushEvent::from_json(&reference("github/push.payload.json"), Some(Provider::GitHub), "p").unwrap();
        assert!(ev.is_deleted_ref());
        assert_eq!(ev.branch(), None);
    }

    #[test]
    fn gitlab_push_parses() {
        let ev = PushEvent::from_json(&reference("gitlab/push.json"), None, "p").unwrap();
        assert_eq!(ev.provider, Provider::GitLab);
        assert_eq!(ev.branch(), Some("master"));
        assert_eq!(ev.repository, "mike/diaspora");
        assert_eq!(ev.pusher.as_deref(), Some("jsmith"));
        assert!(ev.repository_urls.contains(&"git@example.com:mike/diaspora.git".into()));
    }

    #[test]
    fn gitlab_tag_push_is_not_a_branch() {
        let ev = PushEvent::from_json(&reference("gitlab/tag_push.json"), None, "p").unwrap();
        assert_eq!(ev.branch(), None);
    }

    #[test]
    fn ping_payload_is_rejected_as_not_a_push() {
        let err =
            PushEvent::from_json(&reference("github/ping.payload.json"), Some(Provider::GitHub), "ping").unwrap_err();
        assert!(err.to_string().contains("missing string field `ref`"), "{err}");
    }

    #[test]
    fn malformed_json_and_bad_shas_are_errors() {
        let err = PushEvent::from_json(b"{not json", None, "event.json").unwrap_err();
        assert!(matches!(err, TriggerError::Json { .. }), "{err}");
        let body = br#"{"ref":"refs/heads/main","before":"abc","after":"def","repository":{"full_name":"o/n","clone_url":"https://x/o/n.git"}}"#;
        let err = PushEvent::from_json(body, None, "event.json").unwrap_err();
        assert!(err.to_string().contains("`before` is `abc`, not a 40- or 64-digit hex commit id"), "{err}");
    }

    #[test]
    fn urls_normalize_across_schemes() {
        let want = "github.com/octo/models";
        for u in [
            "https://github.com/Octo/models.git",
            "git@github.com:octo/models.git",
            "ssh://git@github.com:22/octo/models.git",
            "git://github.com/octo/models.git",
            "https://user:token@github.com/octo/models/",
        ] {
            assert_eq!(normalize_repo_url(u), want, "{u}");
        }
        assert_eq!(normalize_repo_url("/srv/git/models.git"), "/srv/git/models");
    }

    #[test]
    fn event_kinds() {
        assert_eq!(EventKind::parse("push"), EventKind::Push);
        assert_eq!(EventKind::parse("Push Hook"), EventKind::Push);
        assert_eq!(EventKind::parse("ping"), EventKind::Other("ping".into()));
    }
}
