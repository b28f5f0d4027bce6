//! The decision function: from (snapshot, method, path, token scopes, auth
//! server) to a [`Verdict`] — what matched, which API scopes it needs, which
//! token scopes grant them, and allow/deny with the reason. The data path
//! and `microgateway explain` both answer with it, so they cannot disagree.

use std::fmt;
use std::sync::Arc;

use http::Method;
use serde_json::Map;

use super::path::{canonicalize, PathProblem};
use super::route::{route, Route, RouteProblem};
use super::scope::{authorize, granting_scopes};
use crate::auth::Principal;
use crate::config::snapshot::{Authentication, Balance, Upstream};
use crate::config::Snapshot;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    BadPath(PathProblem),
    NoRoute(RouteProblem),
    /// An oauth2 API and no token was presented.
    NeedsToken,
    InsufficientScope,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub route: Option<Route>,
    pub auth_server: Option<Arc<str>>,
    /// API scopes (`API:scope`) of the matched resource; empty = any valid token.
    pub required_api_scopes: Vec<String>,
    /// Token scopes of the auth server that grant one of them.
    pub granting_token_scopes: Vec<String>,
    pub granted_api_scope: Option<String>,
    pub outcome: Outcome,
}

/// Decides a request without any network: `token_scopes` stand for a valid
/// token of `auth_server` (the API's own when `None`); `None` scopes = no token.
pub fn decide(
    snapshot: &Snapshot,
    method: &Method,
    raw_path: &str,
    token_scopes: Option<&[String]>,
    auth_server: Option<&str>,
) -> Verdict {
    let mut verdict = Verdict {
        route: None,
        auth_server: None,
        required_api_scopes: Vec::new(),
        granting_token_scopes: Vec::new(),
        granted_api_scope: None,
        outcome: Outcome::Allow,
    };
    let path = match canonicalize(raw_path) {
        Ok(p) => p,
        Err(problem) => {
            verdict.outcome = Outcome::BadPath(problem);
            return verdict;
        }
    };
    let matched = match route(snapshot, method, &path) {
        Ok(r) => r,
        Err(problem) => {
            verdict.outcome = Outcome::NoRoute(problem);
            return verdict;
        }
    };
    let api = &matched.api;
    verdict.required_api_scopes = matched
        .resource()
        .api_scopes
        .iter()
        .map(|&i| format!("{}:{}", api.name, api.api_scopes[i]))
        .collect();
    if let Authentication::OAuth2 { auth_server: own } = &api.authentication {
        let server: Arc<str> = auth_server.map(Arc::from).unwrap_or_else(|| own.clone());
        verdict.granting_token_scopes = granting_scopes(&matched, &server);
        verdict.outcome = match token_scopes {
            None => Outcome::NeedsToken,
            Some(scopes) => {
                let principal = Principal {
                    auth_server: server.clone(),
                    token_scopes: scopes.to_vec(),
                    client_id: None,
                    user_name: None,
                    issuer: None,
                    audience: Vec::new(),
                    expires_at: None,
                    claims: Map::new(),
                };
                match authorize(&matched, Some(&principal)) {
                    Ok(grant) => {
                        verdict.granted_api_scope = grant
                            .api_scope()
                            .map(|scope| format!("{}:{scope}", api.name));
                        Outcome::Allow
                    }
                    Err(_) => Outcome::InsufficientScope,
                }
            }
        };
        verdict.auth_server = Some(server);
    }
    verdict.route = Some(matched);
    verdict
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(route) = &self.route {
            let resource = route.resource();
            writeln!(
                f,
                "api:        {} {} (base path {})",
                route.api.name, route.api.version, route.api.base_path
            )?;
            writeln!(
                f,
                "resource:   {} {}",
                resource.method, resource.template.text
            )?;
            if let Upstream::Balanced(balanced) = &route.api.upstream {
                let endpoints: Vec<String> = balanced
                    .endpoints
                    .iter()
                    .map(|e| format!("{} (weight {})", e.url, e.weight))
                    .collect();
                let balance = match balanced.balance {
                    Balance::RoundRobin => "round_robin",
                    Balance::LeastRequests => "least_requests",
                };
                writeln!(f, "endpoints:  {} ({balance})", endpoints.join(", "))?;
            }
            match &self.auth_server {
                Some(server) => writeln!(f, "auth:       oauth2, auth server {server}")?,
                None => writeln!(f, "auth:       none")?,
            }
            if self.required_api_scopes.is_empty() {
                writeln!(f, "api scopes: (none: any valid token)")?;
            } else {
                writeln!(
                    f,
                    "api scopes: {} (any one)",
                    self.required_api_scopes.join(", ")
                )?;
            }
            if self.auth_server.is_some() && !self.required_api_scopes.is_empty() {
                let granting = if self.granting_token_scopes.is_empty() {
                    "(none: no token scope maps to them)".to_owned()
                } else {
                    self.granting_token_scopes.join(", ")
                };
                writeln!(f, "granted by: token scopes {granting}")?;
            }
        }
        let verdict = match &self.outcome {
            Outcome::Allow => match &self.granted_api_scope {
                Some(scope) => format!("ALLOW (grants {scope})"),
                None => "ALLOW".to_owned(),
            },
            Outcome::BadPath(problem) => format!("DENY 400: {problem}"),
            Outcome::NoRoute(problem @ RouteProblem::MethodNotAllowed { .. }) => {
                format!("DENY 405: {problem}")
            }
            Outcome::NoRoute(
                problem @ (RouteProblem::EncodedSlash { .. } | RouteProblem::AboveBasePath { .. }),
            ) => {
                format!("DENY 400: {problem}")
            }
            Outcome::NoRoute(problem) => format!("DENY 404: {problem}"),
            Outcome::NeedsToken => {
                "DENY 401: a bearer token is required (pass --scopes to decide for a token)"
                    .to_owned()
            }
            Outcome::InsufficientScope => "DENY 403: insufficient_scope".to_owned(),
        };
        write!(f, "verdict:    {verdict}")
    }
}
