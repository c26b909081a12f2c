//! Registry credentials from a docker `config.json`, a containers
//! `auth.json`, or a Kubernetes `kubernetes.io/dockerconfigjson` Secret. Every
//! password is registered with [`crate::secret`] as soon as it is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::RegistryError;
use crate::secret::Secret;

/// A username and password (or token) for one registry.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// Credentials by registry key, and where they came from (for messages).
#[derive(Clone, Debug, Default)]
pub struct AuthStore {
    /// Key: `host[:port]` or `host[:port]/repo/prefix`, normalised.
    entries: BTreeMap<String, Credentials>,
    /// Files (or "Secret data") read, in order of precedence.
    pub sources: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: Option<BTreeMap<String, AuthEntry>>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl AuthStore {
    /// No credentials: anonymous access everywhere.
    pub fn anonymous() -> AuthStore {
        AuthStore::default()
    }

    /// Credentials from `--authfile PATH` when given (it must exist), else from
    /// the first of `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
    /// `$DOCKER_CONFIG/config.json` / `~/.docker/config.json` that exists,
    /// merged so an earlier file wins for a registry both name.
    pub fn load(authfile: Option<&Path>) -> Result<AuthStore, RegistryError> {
        if let Some(path) = authfile {
            return AuthStore::from_file(path);
        }
        let mut store = AuthStore::default();
        for path in default_auth_files() {
            // Only a file that is not there is skipped: one that is there but
            // cannot be read or parsed is an error, never an anonymous push.
            match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    store.sources.push(format!("{} (absent)", path.display()));
                }
                _ => store = store.with_last(AuthStore::from_file(&path)?),
            }
        }
        Ok(store)
    }

    /// These credentials, then `more`'s for registries these do not name.
    fn with_last(mut self, more: AuthStore) -> AuthStore {
        self.sources.extend(more.sources);
        for (k, v) in more.entries {
            self.entries.entry(k).or_insert(v);
        }
        self
    }

    /// `first`'s credentials ahead of these: for a key both name, `first`
    /// wins, and its sources are listed first.
    pub fn with_first(self, first: AuthStore) -> AuthStore {
        first.with_last(self)
    }

    /// The registry keys (`host[:port]` or `host[:port]/prefix`) with credentials.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// One auth file (docker `config.json` or containers `auth.json`).
    pub fn from_file(path: &Path) -> Result<AuthStore, RegistryError> {
        let bytes = std::fs::read(path)
            .map_err(|source| RegistryError::AuthFile { path: path.to_path_buf(), message: source.to_string() })?;
        let mut store =
            parse(&bytes).map_err(|message| RegistryError::AuthFile { path: path.to_path_buf(), message })?;
        store.sources = vec![path.display().to_string()];
        Ok(store)
    }

    /// The decoded `.dockerconfigjson` (or legacy `.dockercfg`) value of a
    /// Kubernetes image pull Secret.
    pub fn from_dockerconfigjson(json: &[u8]) -> Result<AuthStore, RegistryError> {
        let mut store = parse(json)
            .map_err(|message| RegistryError::AuthFile { path: PathBuf::from("<dockerconfigjson Secret>"), message })?;
        store.sources = vec!["dockerconfigjson Secret".into()];
        Ok(store)
    }

    /// Add or replace the credentials for a registry (or `host/repo` prefix).
    pub fn insert(&mut self, key: &str, credentials: Credentials) {
        self.entries.insert(normalise_key(key), credentials);
    }

    /// The most specific entry for `registry`/`repository`: `host/ns/app`,
    /// then `host/ns`, then `host` (what containers-auth.json does).
    pub fn lookup(&self, registry: &str, repository: &str) -> Option<&Credentials> {
        let mut key = format!("{registry}/{repository}");
        loop {
            if let Some(c) = self.entries.get(&key) {
                return Some(c);
            }
            match key.rfind('/') {
                Some(i) => key.truncate(i),
                None => return None,
            }
        }
    }

    /// The API token of environment `env`'s cluster for that cluster's own
    /// integrated registry `host` (what `oc registry login` writes), unless
    /// an explicit credential for `host` exists: those win.
    pub fn add_cluster_token(&mut self, host: &str, env: &str, token: Secret) {
        let key = normalise_key(host);
        if self.has_registry(&key) {
            return;
        }
        self.entries.insert(key, Credentials { username: "serviceaccount".into(), password: token });
        self.sources.push(format!("the API token of environment `{env}` for its integrated registry {host}"));
    }

    /// Whether any credentials are known for `registry` at all.
    pub fn has_registry(&self, registry: &str) -> bool {
        self.entries.keys().any(|k| k == registry || k.starts_with(&format!("{registry}/")))
    }
}

fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(p).join("containers/auth.json"));
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(p).join("config.json"));
    } else if let Some(home) = dirs::home_dir() {
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// `https://host:5000/v1/` and `host:5000` name the same registry.
fn normalise_key(key: &str) -> String {
    let k = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let k = k.trim_end_matches('/');
    // Docker's legacy keys carry an API path (`/v1`, `/v2`) that is not a repository.
    let k = k.strip_suffix("/v1").or_else(|| k.strip_suffix("/v2")).unwrap_or(k);
    k.to_string()
}

fn parse(bytes: &[u8]) -> Result<AuthStore, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    // `.dockercfg` (legacy) is the `auths` map itself.
    let auths: BTreeMap<String, AuthEntry> = if value.get("auths").is_some() {
        let file: ConfigFile =
            serde_json::from_value(value).map_err(|e| format!("`auths` is not a map of entries: {e}"))?;
        file.auths.unwrap_or_default()
    } else if value.is_object() && value.as_object().is_some_and(|o| o.values().all(|v| v.get("auth").is_some())) {
        serde_json::from_value(value).map_err(|e| format!("not an auth map: {e}"))?
    } else {
        BTreeMap::new()
    };
    let mut store = AuthStore::default();
    for (key, entry) in auths {
        let (username, password) = match (entry.username, entry.password, entry.auth) {
            (Some(u), Some(p), _) => (u, p),
            (_, _, Some(auth)) if !auth.is_empty() => {
                // base64 of `user:password`: as secret as the password.
                crate::secret::register(auth.trim());
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| format!("the `auth` value for `{key}` is not base64"))?;
                let text =
                    String::from_utf8(decoded).map_err(|_| format!("the `auth` value for `{key}` is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| format!("the `auth` value for `{key}` is not base64 of `user:password`"))?;
                (u.to_string(), p.to_string())
            }
            // Entries with only an identity token or a credential helper are not usable here.
            _ => continue,
        };
        store.entries.insert(normalise_key(&key), Credentials { username, password: Secret::new(password) });
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_docker_config_and_masks_passwords() {
        let json = format!(
            r#"{{"auths": {{"https://reg.example.com/v1/": {{"auth": "{}"}},
                "reg.example.com/team/app": {{"username": "robot", "password": "pw-for-team-app"}}}}}}"#,
            b64("alice:pw-alice-123")
        );
        let store = AuthStore::from_dockerconfigjson(json.as_bytes()).unwrap();
        let c = store.lookup("reg.example.com", "other/app").unwrap();
        assert_eq!((c.username.as_str(), c.password.expose()), ("alice", "pw-alice-123"));
        let c = store.lookup("reg.example.com", "team/app").unwrap();
        assert_eq!(c.username, "robot");
        assert!(store.lookup("other.example.com", "team/app").is_none());
        assert_eq!(crate::secret::mask("x pw-alice-123 y"), "x **** y");
        assert!(!format!("{store:?}").contains("pw-alice-123"));
    }

    #[test]
    fn a_cluster_token_is_offered_only_where_no_explicit_credential_exists() {
        let json = r#"{"auths": {"reg.example.com": {"username": "robot", "password": "pw-robot-1"}}}"#;
        let mut store = AuthStore::from_dockerconfigjson(json.as_bytes()).unwrap();
        store.add_cluster_token("reg.example.com", "prod", Secret::new("tok-a"));
        store.add_cluster_token("127.0.0.1:5000", "dev", Secret::new("tok-b"));
        assert_eq!(store.lookup("reg.example.com", "ns/app").unwrap().username, "robot");
        assert_eq!(store.lookup("127.0.0.1:5000", "ns/app").unwrap().password.expose(), "tok-b");
        assert!(store.sources.iter().any(|s| s.contains("environment `dev`")), "{:?}", store.sources);
    }

    #[test]
    fn an_auth_file_that_is_there_but_unreadable_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("auth.json");
        std::fs::write(&bad, "{ not json").unwrap();
        let e = AuthStore::from_file(&bad).unwrap_err();
        assert!(e.to_string().starts_with(&format!("registry auth file {}: not valid JSON", bad.display())), "{e}");
        // A directory where a file should be cannot be read either.
        let e = AuthStore::from_file(dir.path()).unwrap_err();
        assert!(matches!(e, RegistryError::AuthFile { .. }), "{e}");
    }

    #[test]
    fn with_first_prefers_the_first_store_for_a_registry_both_name() {
        let a = AuthStore::from_dockerconfigjson(br#"{"auths": {"r:1": {"username": "a", "password": "pw-aaaa"}}}"#);
        let b = AuthStore::from_dockerconfigjson(
            br#"{"auths": {"r:1": {"username": "b", "password": "pw-bbbb"}, "r:2": {"username": "c", "password": "pw-cccc"}}}"#,
        );
        let merged = b.unwrap().with_first(a.unwrap());
        assert_eq!(merged.lookup("r:1", "ns/m").unwrap().username, "a");
        assert_eq!(merged.lookup("r:2", "ns/m").unwrap().username, "c");
        assert_eq!(merged.keys().collect::<Vec<_>>(), ["r:1", "r:2"]);
    }

    #[test]
    fn legacy_dockercfg_and_bad_auth_values() {
        let json = format!(r#"{{"127.0.0.1:5000": {{"auth": "{}"}}}}"#, b64("u:legacy-pw"));
        let store = AuthStore::from_dockerconfigjson(json.as_bytes()).unwrap();
        assert!(store.has_registry("127.0.0.1:5000"));
        let e = AuthStore::from_dockerconfigjson(br#"{"auths": {"h:1": {"auth": "!!"}}}"#).unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
    }
}
