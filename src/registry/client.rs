//! One registry endpoint: scheme selection (TLS verified, or skopeo's
//! insecure https-then-http), and the auth flows — anonymous, basic, and the
//! bearer-token challenge (`WWW-Authenticate: Bearer realm=..,service=..`).
//! Tokens are cached per scope and registered as secrets.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio::sync::Mutex;
use url::Url;

use super::RegistryError;
use super::auth::Credentials;
use crate::retry::Backoff;
use crate::secret::{Secret, register};

/// Tries of one [`RegistryClient::send`] request that meets transient answers.
const SEND_ATTEMPTS: u32 = Backoff::REGISTRY.attempts;
/// The longest `Retry-After` honoured as given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

fn is_transient_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by registries).
fn retry_after(resp: &Response) -> Option<Duration> {
    let secs = resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs))
}

/// How the registry asked to be authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

#[derive(Debug, Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope string.
    tokens: HashMap<String, Secret>,
}

/// A client for one registry host.
#[derive(Debug)]
pub struct RegistryClient {
    pub registry: String,
    base: Url,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    /// Where credentials were looked for, for the 401 message.
    auth_sources: Vec<String>,
    state: Mutex<AuthState>,
}

impl RegistryClient {
    /// Reach `registry` (`host[:port]`): https with verified TLS (the
    /// system roots, plus `roots`: DER certificates such as the CA of the
    /// cluster whose integrated registry this is), or when `insecure`, https
    /// without verification and then plain http (what skopeo's
    /// `--tls-verify=false` does).
    pub async fn connect(
        registry: &str,
        insecure: bool,
        roots: &[Vec<u8>],
        credentials: Option<Credentials>,
        auth_sources: Vec<String>,
    ) -> Result<RegistryClient, RegistryError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("modelship/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Blobs take as long as they take; a stalled read is still caught.
            .read_timeout(Duration::from_secs(120))
            .tls_danger_accept_invalid_certs(insecure);
        for der in roots {
            match reqwest::Certificate::from_der(der) {
                Ok(cert) => builder = builder.add_root_certificate(cert),
                Err(e) => tracing::warn!(registry, error = %e, "ignoring a CA certificate that does not parse"),
            }
        }
        let http = builder.build().map_err(|source| RegistryError::Transport {
            registry: registry.to_string(),
            what: "building the HTTP client".into(),
            source,
        })?;
        let schemes: &[&str] = if insecure { &["https", "http"] } else { &["https"] };
        let mut last_err = None;
        for scheme in schemes {
            let base = Url::parse(&format!("{scheme}://{registry}/"))
                .map_err(|e| RegistryError::BadReference { input: registry.to_string(), reason: e.to_string() })?;
            let ping = base.join("v2/").expect("static path");
            match http.get(ping.clone()).send().await {
                Ok(resp) => {
                    let challenge = parse_challenge(resp.headers().get(WWW_AUTHENTICATE));
                    let status = resp.status();
                    if !(status.is_success() || status == StatusCode::UNAUTHORIZED) {
                        return Err(RegistryError::Http {
                            registry: registry.to_string(),
                            what: "API version check (GET /v2/)".into(),
                            status: status.as_u16(),
                            body: body_excerpt(resp).await,
                        });
                    }
                    tracing::debug!(registry, %base, "registry reachable");
                    return Ok(RegistryClient {
                        registry: registry.to_string(),
                        base,
                        http,
                        credentials,
                        auth_sources,
                        state: Mutex::new(AuthState { challenge, tokens: HashMap::new() }),
                    });
                }
                Err(e) => last_err = Some((ping, e)),
            }
        }
        let (url, source) = last_err.expect("at least one scheme tried");
        Err(RegistryError::Connect { registry: registry.to_string(), url: url.to_string(), insecure, source })
    }

    /// `https://host/v2/<repo>/<rest>`.
    pub fn url(&self, repository: &str, rest: &str) -> Url {
        self.base.join(&format!("v2/{repository}/{rest}")).expect("repository and path were validated")
    }

    /// Resolve an upload `Location` (absolute or relative to the registry).
    pub fn resolve(&self, location: &str) -> Result<Url, url::ParseError> {
        self.base.join(location)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Send a request built by `build` with the auth `scope` needs; on a 401
    /// learn the challenge, authenticate, and send it once more (so `build`
    /// must be able to rebuild the request: bodies here are small or are
    /// streamed only after [`RegistryClient::authorize`] for the same scope).
    ///
    /// A transient answer (no answer, 500/502/503/504, 429) is asked again
    /// up to [`SEND_ATTEMPTS`] times, after `Retry-After` when the registry
    /// gives one: every request sent here is replayable and idempotent in
    /// effect (a GET/HEAD, a manifest PUT by digest or tag, a mount, an
    /// upload session that is abandoned if its answer is lost).
    pub async fn send(
        &self,
        scope: &str,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let policy = Backoff::REGISTRY;
        for attempt in 1..SEND_ATTEMPTS {
            let delay = policy.delay(attempt);
            let wait = match self.send_authorized(scope, what, &build).await {
                Ok(resp) if is_transient_status(resp.status()) => {
                    policy.delay_after(attempt, retry_after(&resp), MAX_RETRY_AFTER)
                }
                Err(e @ RegistryError::Transport { .. }) => {
                    tracing::debug!(registry = %self.registry, what, attempt, error = %crate::error::chain(&e), "no answer; asking again");
                    delay
                }
                other => return other,
            };
            tracing::debug!(registry = %self.registry, what, attempt, wait = ?wait, "transient registry answer; asking again");
            tokio::time::sleep(wait).await;
        }
        self.send_authorized(scope, what, &build).await
    }

    async fn send_authorized(
        &self,
        scope: &str,
        what: &str,
        build: &impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let header = self.auth_header(scope).await?;
        let resp = self.send_once(build, header, what).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = parse_challenge(resp.headers().get(WWW_AUTHENTICATE));
        self.learn(challenge, scope).await;
        let header = self.authenticate(scope).await?;
        let resp = self.send_once(build, header, what).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.unauthorized(scope));
        }
        Ok(resp)
    }

    /// Make sure a token (or basic credentials) for `scope` is ready, so a
    /// following non-replayable request (a streamed blob) is sent authorized.
    pub async fn authorize(&self, scope: &str) -> Result<(), RegistryError> {
        let needs = {
            let st = self.state.lock().await;
            match &st.challenge {
                Some(Challenge::Bearer { .. }) => !st.tokens.contains_key(scope),
                _ => false,
            }
        };
        if needs {
            self.authenticate(scope).await?;
        }
        Ok(())
    }

    /// Drop the token for `scope` (it was refused); the next request gets a new one.
    pub async fn forget(&self, scope: &str) {
        self.state.lock().await.tokens.remove(scope);
    }

    /// The `Authorization` header to send for `scope`, if one is known.
    pub async fn auth_header(&self, scope: &str) -> Result<Option<HeaderValue>, RegistryError> {
        let st = self.state.lock().await;
        Ok(match &st.challenge {
            Some(Challenge::Basic) => self.basic_header(),
            Some(Challenge::Bearer { .. }) => st.tokens.get(scope).map(bearer_header),
            None => None,
        })
    }

    async fn send_once(
        &self,
        build: &impl Fn(&reqwest::Client) -> RequestBuilder,
        header: Option<HeaderValue>,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let mut req = build(&self.http);
        if let Some(h) = header {
            req = req.header(AUTHORIZATION, h);
        }
        req.send().await.map_err(|source| RegistryError::Transport {
            registry: self.registry.clone(),
            what: what.to_string(),
            source,
        })
    }

    async fn learn(&self, challenge: Option<Challenge>, scope: &str) {
        let mut st = self.state.lock().await;
        if challenge.is_some() {
            st.challenge = challenge;
        }
        // A token that earned a 401 is stale.
        st.tokens.remove(scope);
    }

    /// Get credentials in place for `scope` after a challenge.
    async fn authenticate(&self, scope: &str) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = self.state.lock().await.challenge.clone();
        match challenge {
            None => Err(self.unauthorized(scope)),
            Some(Challenge::Basic) => match self.basic_header() {
                Some(h) => Ok(Some(h)),
                None => Err(self.unauthorized(scope)),
            },
            Some(Challenge::Bearer { realm, service }) => {
                let token = self.fetch_token(&realm, service.as_deref(), scope).await?;
                let header = bearer_header(&token);
                self.state.lock().await.tokens.insert(scope.to_string(), token);
                Ok(Some(header))
            }
        }
    }

    /// The token endpoint of the bearer flow (docker's token spec): GET realm
    /// with `service` and one `scope` per requested scope, with basic
    /// credentials when we have them, anonymously otherwise.
    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<Secret, RegistryError> {
        let mut url = Url::parse(realm).map_err(|e| RegistryError::Http {
            registry: self.registry.clone(),
            what: format!("token realm `{realm}` is not a URL: {e}"),
            status: 401,
            body: String::new(),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            for s in scope.split(' ').filter(|s| !s.is_empty()) {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.http.get(url);
        if let Some(h) = self.basic_header() {
            req = req.header(AUTHORIZATION, h);
        }
        let resp = req.send().await.map_err(|source| RegistryError::Transport {
            registry: self.registry.clone(),
            what: format!("token request to {realm}"),
            source,
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(self.unauthorized(scope));
        }
        if !resp.status().is_success() {
            return Err(RegistryError::Http {
                registry: self.registry.clone(),
                what: format!("token request to {realm}"),
                status: resp.status().as_u16(),
                body: body_excerpt(resp).await,
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        // Parsed with serde_json: reqwest's `json` feature is not enabled.
        let bytes = resp.bytes().await.map_err(|source| RegistryError::Transport {
            registry: self.registry.clone(),
            what: format!("reading the token from {realm}"),
            source,
        })?;
        let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| RegistryError::Http {
            registry: self.registry.clone(),
            what: format!("token response from {realm} is not JSON: {e}"),
            status: 200,
            body: String::new(),
        })?;
        let token = body.token.or(body.access_token).filter(|t| !t.is_empty()).ok_or_else(|| RegistryError::Http {
            registry: self.registry.clone(),
            what: format!("token response from {realm} has no token"),
            status: 200,
            body: String::new(),
        })?;
        Ok(Secret::new(token))
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let c = self.credentials.as_ref()?;
        let raw = format!("{}:{}", c.username, c.password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        register(encoded.clone());
        let mut h = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        h.set_sensitive(true);
        Some(h)
    }

    /// The 401 error: which registry and scope, and whether credentials were
    /// tried (by user name only) or where they were looked for.
    pub fn unauthorized(&self, scope: &str) -> RegistryError {
        let detail = match &self.credentials {
            Some(c) => format!("the credentials of user `{}` were rejected", c.username),
            None if self.auth_sources.is_empty() => "no credentials were given".to_string(),
            None => format!(
                "no credentials for {} were found (looked in: {}); pass --authfile with a docker config.json or containers auth.json that has an entry for it",
                self.registry,
                self.auth_sources.join(", ")
            ),
        };
        RegistryError::Unauthorized { registry: self.registry.clone(), scope: scope.to_string(), detail }
    }
}

fn bearer_header(token: &Secret) -> HeaderValue {
    let mut h = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    h.set_sensitive(true);
    h
}

/// The first ~300 bytes of an error body (registries explain themselves there).
pub(crate) async fn body_excerpt(resp: Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    let mut t: String = text.trim().chars().take(300).collect();
    if text.trim().chars().count() > 300 {
        t.push('…');
    }
    crate::secret::mask(&t)
}

/// Parse `WWW-Authenticate`: `Basic realm="x"` or
/// `Bearer realm="https://auth/token",service="reg",scope="repository:a:pull,push"`.
pub(crate) fn parse_challenge(value: Option<&HeaderValue>) -> Option<Challenge> {
    let text = value?.to_str().ok()?.trim();
    let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let realm = params.get("realm")?.clone();
    Some(Challenge::Bearer { realm, service: params.get("service").cloned() })
}

/// `k="v, with comma",k2=v2` into a map (quoted values may hold commas).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

/// Method and URL for log fields.
pub(crate) fn describe(method: &Method, url: &Url) -> String {
    format!("{method} {}", url.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge_with_commas_in_scope() {
        let h = HeaderValue::from_static(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:ns/app:pull,push""#,
        );
        assert_eq!(
            parse_challenge(Some(&h)),
            Some(Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: Some("registry.example.com".into())
            })
        );
        assert_eq!(
            parse_params(r#"scope="repository:ns/app:pull,push", x=y"#).get("scope").unwrap(),
            "repository:ns/app:pull,push"
        );
        assert_eq!(
            parse_challenge(Some(&HeaderValue::from_static(r#"Basic realm="basic-realm""#))),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge(Some(&HeaderValue::from_static("Negotiate"))), None);
    }
}
