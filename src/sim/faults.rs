//! The sim's fault-injection point: a middleware in front of every API
//! request, after the request is resolved to verb/resource/namespace/name.
//! Today it answers `403 Forbidden` for the resources named in
//! [`Faults::forbidden`]; later faults (5xx, 429 with `Retry-After`,
//! delays, dropped connections, cut watches, injected 409s) are decided here
//! from the same [`RequestInfo`].

use std::str::FromStr;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::SimApi;
use super::server::{Query, RequestInfo};
use super::status::ApiError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub forbidden: Vec<ForbiddenRule>,
}

/// Deny `verbs` (all when empty) on a resource, optionally only in one
/// namespace. Written `RESOURCE[.GROUP][:VERB,VERB][@NAMESPACE]`, e.g.
/// `builds.build.openshift.io`, `configmaps:create,update@models-dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForbiddenRule {
    pub resource: String,
    pub group: String,
    pub verbs: Vec<String>,
    pub namespace: Option<String>,
}

impl FromStr for ForbiddenRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, namespace) = match s.split_once('@') {
            Some((r, ns)) if !ns.is_empty() => (r, Some(ns.to_string())),
            Some(_) => return Err(format!("{s:?}: empty namespace after '@'")),
            None => (s, None),
        };
        let (res, verbs) = match rest.split_once(':') {
            Some((r, v)) => (r, v.split(',').filter(|v| !v.is_empty()).map(str::to_string).collect()),
            None => (rest, Vec::new()),
        };
        let (resource, group) = match res.split_once('.') {
            Some((r, g)) => (r.to_string(), g.to_string()),
            None => (res.to_string(), String::new()),
        };
        if resource.is_empty() {
            return Err(format!("{s:?}: expected RESOURCE[.GROUP][:VERB,...][@NAMESPACE]"));
        }
        Ok(ForbiddenRule { resource, group, verbs, namespace })
    }
}

impl ForbiddenRule {
    fn denies(&self, info: &RequestInfo) -> bool {
        let plural = match &info.subresource {
            Some(sub) if self.resource.contains('/') => format!("{}/{sub}", info.plural),
            _ => info.plural.clone(),
        };
        plural == self.resource
            && info.group == self.group
            && (self.verbs.is_empty() || self.verbs.contains(&info.verb))
            && self.namespace.as_ref().is_none_or(|ns| info.namespace.as_ref() == Some(ns))
    }
}

/// The middleware: resolve the request, then inject the configured faults.
pub async fn layer(State(api): State<SimApi>, mut req: Request, next: Next) -> Response {
    let query = Query::parse(req.uri().query()).unwrap_or_default();
    let info = RequestInfo::resolve(&api.table, req.method(), req.uri().path(), &query, req.headers());
    if let Some(rt) = &info.resource
        && api.faults.forbidden.iter().any(|r| r.denies(&info))
    {
        let name = info.name.as_deref().unwrap_or("");
        return ApiError::forbidden(rt, name, &info.verb, info.namespace.as_deref(), &info.user).into_response();
    }
    req.extensions_mut().insert(info);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        let r: ForbiddenRule = "configmaps:create,update@dev".parse().unwrap();
        assert_eq!(
            r,
            ForbiddenRule {
                resource: "configmaps".into(),
                group: String::new(),
                verbs: vec!["create".into(), "update".into()],
                namespace: Some("dev".into())
            }
        );
        let r: ForbiddenRule = "builds.build.openshift.io".parse().unwrap();
        assert_eq!((r.resource.as_str(), r.group.as_str(), r.verbs.len()), ("builds", "build.openshift.io", 0));
        assert!("".parse::<ForbiddenRule>().is_err());
        assert!("x@".parse::<ForbiddenRule>().is_err());
    }
}
