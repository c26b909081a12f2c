//! Authentication and the request entry path: who is asking (a client
//! certificate signed by the sim's CA, a ServiceAccount token, or nobody),
//! then the RBAC decision ([`super::rbac`]) before anything is dispatched.
//!
//! - Client certificates: CN is the user, each O a group (see
//!   [`super::tls`]); the accept loop puts the verified certificate's user
//!   on every request of the connection as a [`PeerUser`].
//! - ServiceAccount tokens: ES256 JWTs signed with `DATA/pki/sa.key`, minted
//!   by the TokenRequest API (`POST .../serviceaccounts/NAME/token`, what
//!   `kubectl create token` calls) with the claims kube-apiserver puts in
//!   them; valid while unexpired and while the ServiceAccount exists with
//!   the uid the token names.
//! - No credentials: `system:anonymous`, allowed only what the bootstrap
//!   policy grants `system:unauthenticated` (`/version`, `/healthz`,
//!   `/readyz`, `/livez`); anything else, and any bad or expired token, is a
//!   bare `401 Unauthorized` Status as kube-apiserver answers it.
//! - `authentication.k8s.io/v1` SelfSubjectReview (`kubectl auth whoami`) and
//!   `authorization.k8s.io/v1` SelfSubjectAccessReview (`kubectl auth
//!   can-i`) are answered here, after authorization, never stored.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::audit::{AuditSlot, LongRunning, ObjectRef};
use super::rbac::{self, Attributes, Decision, Subject};
use super::resource::{ResourceTable, ResourceType};
use super::server::{Query, RequestInfo, SubresourceRequest};
use super::status::{ApiError, Cause};
use super::{SimApi, SimError, core, protobuf};

/// The issuer and the API audience of every token (what kube-apiserver's
/// `--service-account-issuer` is on OpenShift).
pub const ISSUER: &str = "https://kubernetes.default.svc";
/// TokenRequest's default lifetime, and the least it accepts.
const DEFAULT_EXPIRATION: i64 = 3600;
const MIN_EXPIRATION: i64 = 600;

pub const SELFSUBJECTREVIEWS: ResourceType = ResourceType {
    namespaced: false,
    verbs: &["create"],
    ..ResourceType::namespaced(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        "selfsubjectreview",
    )
};

pub fn register(table: &mut ResourceTable) {
    table.add(SELFSUBJECTREVIEWS);
    table.subresource("", "serviceaccounts", "token", Arc::new(|api, req| Box::pin(token_request(api, req))));
}

/// An authenticated (or anonymous) user, as kube's `user.Info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    pub fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            uid: None,
            groups: vec!["system:unauthenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == "system:anonymous"
    }

    pub fn subject(&self) -> Subject<'_> {
        Subject { name: &self.name, groups: &self.groups }
    }

    fn info_json(&self) -> Value {
        let mut v = json!({ "username": self.name, "groups": self.groups });
        if let Some(uid) = &self.uid {
            v["uid"] = json!(uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }

    /// Record this user in the request's audit record.
    pub(crate) fn audit(&self, slot: Option<&AuditSlot>) {
        if let Some(slot) = slot {
            slot.fill(|f| {
                f.username = Some(self.name.clone());
                f.uid = self.uid.clone();
                f.groups = self.groups.clone();
            });
        }
    }
}

/// The user of the connection's verified client certificate.
#[derive(Debug, Clone)]
pub struct PeerUser {
    pub name: String,
    pub groups: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ServiceAccountRef {
    name: String,
    uid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: ServiceAccountRef,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    aud: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    iss: String,
    jti: String,
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

/// Signs and verifies ServiceAccount tokens with the key in `DATA/pki/sa.key`.
pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenIssuer {
    pub fn load_or_create(data_dir: &Path) -> Result<TokenIssuer, SimError> {
        let path = data_dir.join("pki/sa.key");
        let corrupt = |m: String| SimError::Corrupt { path: path.clone(), message: m };
        if !path.exists() {
            let key = rcgen::KeyPair::generate().map_err(|e| corrupt(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| SimError::Io { path: dir.to_path_buf(), source })?;
            }
            super::tls::write_private(&path, &key.serialize_pem())?;
        }
        let pem = std::fs::read_to_string(&path).map_err(|source| SimError::Io { path: path.clone(), source })?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(|e| corrupt(e.to_string()))?;
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| corrupt(e.to_string()))?;
        let decoding = DecodingKey::from_ec_pem(key.public_key_pem().as_bytes()).map_err(|e| corrupt(e.to_string()))?;
        // kube's key id: a hash of the public key.
        use sha2::Digest;
        let kid = base64_url(&sha2::Sha256::digest(key.public_key_raw()));
        Ok(TokenIssuer { encoding, decoding, kid })
    }

    /// A token for ServiceAccount `namespace/name` (uid `uid`), for
    /// `audiences`, expiring in `seconds`. Returns the token and its expiry.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: &[String],
        seconds: i64,
    ) -> Result<(String, jiff::Timestamp), ApiError> {
        let now = jiff::Timestamp::now().as_second();
        let claims = Claims {
            aud: audiences.to_vec(),
            exp: now + seconds,
            iat: now,
            nbf: now,
            iss: ISSUER.into(),
            jti: super::store::new_uid(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            kubernetes: KubernetesClaims {
                namespace: namespace.into(),
                serviceaccount: ServiceAccountRef { name: name.into(), uid: uid.into() },
            },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
        let exp = jiff::Timestamp::from_second(now + seconds).unwrap_or_else(|_| jiff::Timestamp::now());
        Ok((token, exp))
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[ISSUER]);
        v.validate_nbf = true;
        v.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok().map(|d| d.claims)
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The user a ServiceAccount token names, if it is valid now: signed by
/// this sim, unexpired, for the API audience, and its ServiceAccount still
/// exists with the same uid.
pub fn token_user(api: &SimApi, token: &str) -> Option<User> {
    let claims = api.tokens.verify(token)?;
    let k = &claims.kubernetes;
    let sa = api.store.get(&core::SERVICEACCOUNTS, &k.namespace, &k.serviceaccount.name)?;
    if sa.pointer("/metadata/uid").and_then(Value::as_str) != Some(k.serviceaccount.uid.as_str()) {
        return None;
    }
    let mut extra = BTreeMap::new();
    extra.insert("authentication.kubernetes.io/credential-id".to_string(), vec![format!("JTI={}", claims.jti)]);
    Some(User {
        name: format!("system:serviceaccount:{}:{}", k.namespace, k.serviceaccount.name),
        uid: Some(k.serviceaccount.uid.clone()),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", k.namespace),
            "system:authenticated".into(),
        ],
        extra,
    })
}

/// Who sent `req`: its client certificate, else its bearer token (a bad one
/// is an error: 401), else anonymous.
pub fn authenticate(api: &SimApi, req: &Request) -> Result<User, ApiError> {
    if let Some(peer) = req.extensions().get::<PeerUser>() {
        let mut groups = peer.groups.clone();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        return Ok(User { name: peer.name.clone(), uid: None, groups, extra: BTreeMap::new() });
    }
    let auth = req.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth {
        None => Ok(User::anonymous()),
        Some(value) => {
            let token = value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty());
            token.and_then(|t| token_user(api, t)).ok_or_else(ApiError::unauthorized)
        }
    }
}

/// The request entry path of the API: resolve, authenticate, authorize,
/// answer the review kinds, then dispatch with the [`RequestInfo`] and the
/// [`User`] in the request's extensions.
pub async fn layer(State(api): State<SimApi>, mut req: Request, next: Next) -> Response {
    let slot = req.extensions().get::<AuditSlot>().cloned();
    let query = Query::parse(req.uri().query()).unwrap_or_default();
    let mut info = RequestInfo::resolve(&api.table, req.method(), req.uri().path(), &query);
    let path = req.uri().path().to_string();
    let attrs = Attributes::of(&info, &path);
    if let Some(slot) = &slot {
        slot.fill(|f| {
            f.verb = Some(info.verb.clone());
            if attrs.resource_request {
                f.object = Some(ObjectRef {
                    resource: info.plural.clone(),
                    subresource: info.subresource.clone(),
                    namespace: info.namespace.clone(),
                    name: info.name.clone(),
                    api_group: info.group.clone(),
                    api_version: info.version.clone(),
                });
            }
        });
    }
    let user = match authenticate(&api, &req) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    user.audit(slot.as_ref());
    info.user = user.name.clone();
    match rbac::authorize(&api.store, &user.subject(), &attrs) {
        Decision::Allow(_) => {}
        // Anonymous requests outside the public paths are not authenticated
        // at all (kube's anonymous-auth conditions): 401, not 403.
        Decision::Deny(_) if user.is_anonymous() => return ApiError::unauthorized().into_response(),
        Decision::Deny(reason) => return rbac::forbidden(&attrs, &user.name, &reason).into_response(),
    }
    if info.verb == "create" && info.subresource.is_none() {
        let review = match (info.group.as_str(), info.plural.as_str()) {
            ("authentication.k8s.io", "selfsubjectreviews") => Some(Review::Subject),
            ("authorization.k8s.io", "selfsubjectaccessreviews") => Some(Review::Access),
            _ => None,
        };
        if let Some(review) = review {
            return answer_review(&api, &user, review, req).await.unwrap_or_else(IntoResponse::into_response);
        }
    }
    let watch = info.verb == "watch";
    req.extensions_mut().insert(info);
    req.extensions_mut().insert(user);
    let mut resp = next.run(req).await;
    if watch {
        resp.extensions_mut().insert(LongRunning);
    }
    resp
}

enum Review {
    Subject,
    Access,
}

/// A handler's own JSON (or protobuf, as typed client-go clients send) body.
async fn read_body(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    decode: protobuf::Decoder,
) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    protobuf::json_or_protobuf(ct, &bytes, decode).map_err(ApiError::bad_request)
}

async fn answer_review(api: &SimApi, user: &User, review: Review, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, protobuf::self_subject_access_review).await?;
    let out = match review {
        Review::Subject => json!({
            "kind": "SelfSubjectReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": { "creationTimestamp": null },
            "status": { "userInfo": user.info_json() },
        }),
        Review::Access => rbac::access_review(&api.store, &user.subject(), &body)?,
    };
    Ok((StatusCode::CREATED, [(axum::http::header::CONTENT_TYPE, "application/json")], out.to_string()).into_response())
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: a TokenRequest
/// answered with a signed token in `status`.
async fn token_request(api: SimApi, req: SubresourceRequest) -> Response {
    token_request_inner(api, req).await.unwrap_or_else(IntoResponse::into_response)
}

async fn token_request_inner(api: SimApi, req: SubresourceRequest) -> Result<Response, ApiError> {
    if req.method != axum::http::Method::POST {
        return Err(ApiError::method_not_allowed("the server does not allow this method on the requested resource"));
    }
    let ns = req.info.namespace.clone().unwrap_or_default();
    let name = req.info.name.clone().unwrap_or_default();
    let body = read_body(&req.headers, req.body, protobuf::token_request).await?;
    let sa = api
        .store
        .get(&core::SERVICEACCOUNTS, &ns, &name)
        .ok_or_else(|| ApiError::not_found(&core::SERVICEACCOUNTS, &name))?;
    let uid = sa.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_string();
    let seconds = body.pointer("/spec/expirationSeconds").and_then(Value::as_i64).unwrap_or(DEFAULT_EXPIRATION);
    if seconds < MIN_EXPIRATION {
        return Err(ApiError::invalid(
            &TOKEN_REQUESTS,
            &name,
            vec![Cause::invalid(
                "spec.expirationSeconds",
                &seconds.to_string(),
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    let mut audiences: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if audiences.is_empty() {
        audiences.push(ISSUER.into());
    }
    let (token, exp) = api.tokens.issue(&ns, &name, &uid, &audiences, seconds)?;
    api.on_secret.issued(&token);
    let out = json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": { "name": name, "namespace": ns, "creationTimestamp": null },
        "spec": {
            "audiences": audiences,
            "expirationSeconds": seconds,
            "boundObjectRef": body.pointer("/spec/boundObjectRef").cloned().unwrap_or(Value::Null),
        },
        "status": { "token": token, "expirationTimestamp": exp.round(jiff::Unit::Second).unwrap_or(exp).to_string() },
    });
    Ok((StatusCode::CREATED, [(axum::http::header::CONTENT_TYPE, "application/json")], out.to_string()).into_response())
}

/// For messages about a TokenRequest (it is not a stored kind).
const TOKEN_REQUESTS: ResourceType =
    ResourceType::namespaced("authentication.k8s.io", "v1", "TokenRequest", "tokenrequests", "tokenrequest");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_kube_claims_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TokenIssuer::load_or_create(dir.path()).unwrap();
        let (token, _) = issuer.issue("ns", "sa", "uid-1", &[ISSUER.into()], 600).unwrap();
        let c = issuer.verify(&token).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.kubernetes.serviceaccount.uid.as_str()),
            ("system:serviceaccount:ns:sa", "uid-1")
        );
        // The same key after a restart verifies it; an expired or other-audience token does not.
        assert!(TokenIssuer::load_or_create(dir.path()).unwrap().verify(&token).is_some());
        let (old, _) = issuer.issue("ns", "sa", "uid-1", &[ISSUER.into()], -10).unwrap();
        assert!(issuer.verify(&old).is_none());
        let (other, _) = issuer.issue("ns", "sa", "uid-1", &["vault".into()], 600).unwrap();
        assert!(issuer.verify(&other).is_none());
        assert!(issuer.verify("garbage").is_none());
    }
}
