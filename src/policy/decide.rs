//! The decision function: from (snapshot, method, path, token scopes, auth
//! server) to a [`Verdict`] — what matched, which API scopes it needs, which
//! token scopes grant them, and allow/deny with the reason. The data path
//! and `microgateway explain` both answer with it, so they cannot disagree.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use http::Method;
use serde_json::Map;

use super::route::{route, Route, RouteProblem};
use super::scope::{authorize, granting_scopes, Denied};
use crate::auth::identity::Identity;
use crate::auth::Principal;
use crate::config::snapshot::{Authentication, Balance, Cors, CredentialType, Origins, Upstream};
use crate::config::Snapshot;
use crate::path::{canonicalize, PathProblem};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    BadPath(PathProblem),
    /// The method or the query names what the data path refuses
    /// (`CONNECT`; `_method` on a method other than GET or HEAD;
    /// `access_token` where a token is read).
    BadRequest(&'static str),
    NoRoute(RouteProblem),
    /// An oauth2 API and no token was presented.
    NeedsToken,
    InsufficientScope,
    /// `ip_filter` refuses the client address.
    IpFiltered,
    /// No credential of a type the API accepts (it accepts other types than oauth2).
    NeedsCredentials,
    /// A wrong API key or password, or an unknown certificate.
    BadCredentials(CredentialType),
    /// The caller is identified but may not call the resource.
    Denied(Denied),
    /// A token of another auth server than the one the API validates
    /// tokens with: not valid there.
    OtherAuthServer {
        named: String,
        own: Arc<str>,
    },
}

impl Outcome {
    /// The status the data path answers with.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Allow => 200,
            Outcome::BadPath(_)
            | Outcome::BadRequest(_)
            | Outcome::NoRoute(
                RouteProblem::EncodedSlash { .. } | RouteProblem::AboveBasePath { .. },
            ) => 400,
            Outcome::NoRoute(RouteProblem::MethodNotAllowed { .. }) => 405,
            Outcome::NoRoute(RouteProblem::NoApi | RouteProblem::NoResource { .. }) => 404,
            Outcome::NeedsToken
            | Outcome::NeedsCredentials
            | Outcome::BadCredentials(_)
            | Outcome::OtherAuthServer { .. } => 401,
            Outcome::InsufficientScope | Outcome::IpFiltered | Outcome::Denied(_) => 403,
        }
    }
}

/// Whom a decided request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    Nobody,
    /// A valid token with these scopes, of `auth_server` (the API's own
    /// when `None`), issued to `client_id` (for `applications`).
    Token {
        scopes: Vec<String>,
        auth_server: Option<String>,
        client_id: Option<String>,
    },
    /// An application credential that was checked: its identity.
    Identified(Identity),
    /// An application credential of this type that matched no application.
    Refused(CredentialType),
}

#[derive(Debug, Clone)]
pub struct Verdict<'s> {
    pub route: Option<Route<'s>>,
    pub auth_server: Option<Arc<str>>,
    /// API scopes (`API:scope`) of the matched resource; empty = any valid token.
    pub required_api_scopes: Vec<String>,
    /// Token scopes of the auth server that grant one of them.
    pub granting_token_scopes: Vec<String>,
    pub granted_api_scope: Option<String>,
    /// The throttle policies that count the request (those of both of a
    /// trailing slash's readings).
    pub throttle: Vec<String>,
    /// A trailing slash's other reading, when it matched another resource:
    /// authorization asks both.
    pub other_reading: Option<OtherReading>,
    /// The identified caller: credential type and application, if any.
    pub caller: Option<(CredentialType, Option<Arc<str>>)>,
    pub outcome: Outcome,
}

/// The resource a path's other reading (with or without its trailing
/// slash) matched, and what it needs: the request must be allowed by it
/// too.
#[derive(Debug, Clone)]
pub struct OtherReading {
    /// `METHOD /template`.
    pub resource: String,
    /// Its API scopes (`API:scope`); empty = any valid token.
    pub required_api_scopes: Vec<String>,
    /// Token scopes of the auth server that grant one of them.
    pub granting_token_scopes: Vec<String>,
}

/// Decides a request without any network: `token_scopes` stand for a valid
/// token of `auth_server` (the API's own when `None`); `None` scopes = no token.
pub fn decide<'s>(
    snapshot: &'s Snapshot,
    method: &Method,
    raw_path: &str,
    token_scopes: Option<&[String]>,
    auth_server: Option<&str>,
) -> Verdict<'s> {
    let caller = match token_scopes {
        None => Caller::Nobody,
        Some(scopes) => Caller::Token {
            scopes: scopes.to_vec(),
            auth_server: auth_server.map(str::to_owned),
            client_id: None,
        },
    };
    decide_for(
        snapshot,
        method,
        raw_path,
        &caller,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )
}

/// Decides a request from `caller` at `client_ip` as the data path does:
/// route, `ip_filter`, credential, then authorization.
pub fn decide_for<'s>(
    snapshot: &'s Snapshot,
    method: &Method,
    target: &str,
    caller: &Caller,
    client_ip: IpAddr,
) -> Verdict<'s> {
    let mut verdict = Verdict {
        route: None,
        auth_server: None,
        required_api_scopes: Vec::new(),
        granting_token_scopes: Vec::new(),
        granted_api_scope: None,
        throttle: Vec::new(),
        other_reading: None,
        caller: None,
        outcome: Outcome::Allow,
    };
    if method == Method::CONNECT {
        verdict.outcome = Outcome::BadRequest(crate::path::CONNECT_REFUSED);
        return verdict;
    }
    // The target as the data path reads it: a fragment is no part of it,
    // an absolute-form target is its origin form, and its query is not
    // part of the path routed on.
    let parsed = http::Uri::try_from(target).ok();
    let (raw_path, query) = match &parsed {
        Some(uri) if uri.scheme().is_some() => {
            if crate::path::served_authority(uri).is_none() {
                verdict.outcome = Outcome::BadRequest(crate::path::ABSOLUTE_FORM_REFUSED);
                return verdict;
            }
            (uri.path(), uri.query())
        }
        Some(uri) => (uri.path(), uri.query()),
        // Not a target the data path parses: refused before anything else.
        None => {
            verdict.outcome = Outcome::BadRequest(crate::path::MALFORMED_TARGET);
            return verdict;
        }
    };
    if crate::path::overrides_method(method, query) {
        verdict.outcome = Outcome::BadRequest(crate::path::METHOD_OVERRIDE_REFUSED);
        return verdict;
    }
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
    verdict.throttle = api
        .throttle_counting(matched.resource, matched.also)
        .iter()
        .map(|&i| api.throttle[i].describe())
        .collect();
    verdict.required_api_scopes = required_api_scopes(&matched);
    let server = match &api.authentication {
        Authentication::Identify(identification) => identification.auth_server.as_deref(),
        Authentication::None => None,
    };
    if let Some(server) = server {
        verdict.granting_token_scopes = granting_scopes(&matched, server);
    }
    verdict.other_reading = matched.other_reading().map(|other| {
        let resource = other.resource();
        OtherReading {
            resource: format!("{} {}", resource.method, resource.template.text),
            required_api_scopes: required_api_scopes(&other),
            granting_token_scopes: server
                .map(|server| granting_scopes(&other, server))
                .unwrap_or_default(),
        }
    });
    let filtered = api.ip_filter.as_ref().is_some_and(|f| !f.admits(client_ip));
    if let Authentication::Identify(identification) = &api.authentication {
        // The data path validates tokens with the API's auth server only:
        // a token of another is refused, whatever its scopes.
        let server = identification.auth_server.clone();
        let other = match (caller, &server) {
            (
                Caller::Token {
                    auth_server: Some(named),
                    ..
                },
                Some(own),
            ) if **own != **named => Some(Outcome::OtherAuthServer {
                named: named.clone(),
                own: own.clone(),
            }),
            _ => None,
        };
        let oauth2_only = identification.types == [CredentialType::OAuth2];
        let missing = if oauth2_only {
            Outcome::NeedsToken
        } else {
            Outcome::NeedsCredentials
        };
        let who = match caller {
            Caller::Nobody => Err(missing),
            Caller::Token { .. } if other.is_some() => Err(other.unwrap_or(missing)),
            Caller::Token {
                scopes, client_id, ..
            } => match &server {
                Some(server) => Ok(Identity::of_token(
                    Arc::new(Principal {
                        auth_server: server.clone(),
                        token_scopes: scopes.clone(),
                        client_id: client_id.clone(),
                        user_name: None,
                        issuer: None,
                        audience: Vec::new(),
                        expires_at: None,
                        claims: Map::new(),
                    }),
                    &snapshot.applications,
                )),
                None => Err(missing),
            },
            Caller::Identified(who) if identification.accepts(who.kind) => Ok(who.clone()),
            Caller::Refused(kind) if identification.accepts(*kind) => {
                Err(Outcome::BadCredentials(*kind))
            }
            Caller::Identified(_) | Caller::Refused(_) => Err(missing),
        };
        if let Ok(who) = &who {
            verdict.caller = Some((who.kind, who.application.as_ref().map(|a| a.name.clone())));
        }
        // Read with the token, after `ip_filter` (RFC 6750 §2.3: refused).
        let token_in_query = identification.accepts(CredentialType::OAuth2)
            && crate::auth::extract::token_in_query(query);
        verdict.outcome = match who {
            _ if filtered => Outcome::IpFiltered,
            _ if token_in_query => Outcome::BadRequest(crate::auth::extract::TOKEN_IN_QUERY),
            Err(outcome) => outcome,
            Ok(who) => match authorize(&matched, Some(&who), client_ip) {
                Ok(grant) => {
                    verdict.granted_api_scope = grant
                        .api_scope()
                        .map(|scope| format!("{}:{scope}", api.name));
                    Outcome::Allow
                }
                Err(Denied::Scope(_)) => Outcome::InsufficientScope,
                Err(denied) => Outcome::Denied(denied),
            },
        };
        verdict.auth_server = server;
    } else if filtered {
        verdict.outcome = Outcome::IpFiltered;
    }
    verdict.route = Some(matched);
    verdict
}

/// The API scopes (`API:scope`) of the route's resource.
fn required_api_scopes(route: &Route<'_>) -> Vec<String> {
    route
        .resource()
        .api_scopes
        .iter()
        .map(|&i| format!("{}:{}", route.api.name, route.api.api_scopes[i]))
        .collect()
}

/// One line on an API's CORS policy.
fn describe_cors(cors: &Cors) -> String {
    let origins = match &cors.origins {
        Origins::Any => "any origin".to_owned(),
        Origins::List(list) => list
            .iter()
            .map(|origin| String::from_utf8_lossy(origin.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let methods = String::from_utf8_lossy(cors.allow_methods.as_bytes()).into_owned();
    let credentials = if cors.credentials {
        ", with credentials"
    } else {
        ""
    };
    format!(
        "origins {origins}; methods {methods}{credentials} (preflights answered by the gateway)"
    )
}

impl Verdict<'_> {
    /// The `api scopes:` and `granted by:` lines of one resource.
    fn write_scopes(
        &self,
        f: &mut fmt::Formatter<'_>,
        required: &[String],
        granting: &[String],
    ) -> fmt::Result {
        if required.is_empty() {
            return writeln!(f, "api scopes: (none: any valid token)");
        }
        writeln!(f, "api scopes: {} (any one)", required.join(", "))?;
        if self.auth_server.is_some() {
            let granting = if granting.is_empty() {
                "(none: no token scope maps to them)".to_owned()
            } else {
                granting.join(", ")
            };
            writeln!(f, "granted by: token scopes {granting}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Verdict<'_> {
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
            // The verdict holds on the ports the API is served on: on the
            // other, the path is no API's (404).
            match (route.api.transport.http, route.api.transport.https) {
                (true, false) => writeln!(f, "transport:  http only (404 over https)")?,
                (false, true) => writeln!(f, "transport:  https only (404 over http)")?,
                _ => {}
            }
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
            match (&route.api.authentication, &self.auth_server) {
                (Authentication::Identify(i), server)
                    if i.types != [CredentialType::OAuth2] || i.registered_only =>
                {
                    let types: Vec<&str> = i.types.iter().map(|t| t.label()).collect();
                    write!(f, "auth:       {}", types.join(", "))?;
                    if let Some(server) = server {
                        write!(f, ", auth server {server}")?;
                    }
                    if i.registered_only {
                        write!(f, ", registered applications only")?;
                    }
                    writeln!(f)?;
                }
                (_, Some(server)) => writeln!(f, "auth:       oauth2, auth server {server}")?,
                (_, None) => writeln!(f, "auth:       none")?,
            }
            if let Some((kind, application)) = self
                .caller
                .as_ref()
                .filter(|(k, _)| *k != CredentialType::OAuth2)
            {
                let name = application
                    .as_deref()
                    .unwrap_or("(no registered application)");
                writeln!(f, "caller:     {name}, by {}", kind.label())?;
            }
            if let Some(cors) = &route.api.cors {
                writeln!(f, "cors:       {}", describe_cors(cors))?;
            }
            self.write_scopes(f, &self.required_api_scopes, &self.granting_token_scopes)?;
            if let Some(other) = &self.other_reading {
                writeln!(
                    f,
                    "and:        {} (the path's other reading: it must allow the request too)",
                    other.resource
                )?;
                self.write_scopes(f, &other.required_api_scopes, &other.granting_token_scopes)?;
            }
            for (at, policy) in self.throttle.iter().enumerate() {
                let label = if at == 0 { "throttle:" } else { "" };
                writeln!(f, "{label:<11} {policy}")?;
            }
        }
        let verdict = match &self.outcome {
            Outcome::Allow => match &self.granted_api_scope {
                Some(scope) => format!("ALLOW (grants {scope})"),
                None => "ALLOW".to_owned(),
            },
            Outcome::BadPath(problem) => format!("DENY 400: {problem}"),
            Outcome::BadRequest(problem) => format!("DENY 400: {problem}"),
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
            Outcome::IpFiltered => "DENY 403: the client address is refused by ip_filter".to_owned(),
            Outcome::NeedsCredentials => {
                "DENY 401: a credential is required (pass --scopes, --api-key, --basic or --client-cert)"
                    .to_owned()
            }
            Outcome::BadCredentials(kind) => {
                format!("DENY 401: the {} credential is not valid", kind.label())
            }
            Outcome::Denied(denied) => format!("DENY 403: {} ({denied})", denied.label()),
            Outcome::OtherAuthServer { named, own } => format!(
                "DENY 401: invalid_token (the API validates tokens of auth server {own}, not {named})"
            ),
        };
        write!(f, "verdict:    {verdict}")
    }
}
