//! Authorization: does a token's set of scopes grant one of the API scopes
//! of the matched resource? Pure; the grant table was built at compile time.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::identity::Identity;
use crate::auth::Principal;
use crate::config::snapshot::{Application, Authentication, CredentialType};

use super::route::Route;

/// Proof that a request may be forwarded; only [`authorize`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The API scope granted (`None` for open resources or `type: none`).
    api_scope: Option<String>,
    /// The application the caller was identified as, if any.
    application: Option<Arc<str>>,
}

impl Grant {
    pub(crate) fn open() -> Grant {
        Grant {
            api_scope: None,
            application: None,
        }
    }

    pub fn api_scope(&self) -> Option<&str> {
        self.api_scope.as_deref()
    }

    /// The calling application's name (per-application policies key on it).
    pub fn application(&self) -> Option<&str> {
        self.application.as_deref()
    }
}

/// A valid token without a scope the resource needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("insufficient scope")]
pub struct InsufficientScope {
    /// Token scopes of the auth server that would have granted access.
    pub would_grant: Vec<String>,
}

/// Why an identified caller may not call the route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A token without a scope the resource needs (RFC 6750 `insufficient_scope`).
    #[error("insufficient scope")]
    Scope(InsufficientScope),
    /// `applications: registered` and the caller is no application.
    #[error("the caller is not a registered application")]
    NotRegistered,
    #[error("application {0} is not subscribed to this API")]
    NotSubscribed(Arc<str>),
    #[error("application {0} called from outside its ip_ranges")]
    OutsideIpRanges(Arc<str>),
    /// An application credential whose application is granted no API scope of the resource.
    #[error("application {0} is granted no API scope of this resource")]
    NoApiScope(Arc<str>),
}

impl Denied {
    /// Stable label for logs and `auth_decisions_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            Denied::Scope(_) => "insufficient_scope",
            Denied::NotRegistered => "not_registered",
            Denied::NotSubscribed(_) => "not_subscribed",
            Denied::OutsideIpRanges(_) => "outside_ip_ranges",
            Denied::NoApiScope(_) => "no_api_scope",
        }
    }
}

/// The token scopes that grant each API scope of the route's resource, for
/// `auth_server`, in declaration order without duplicates.
pub fn granting_scopes(route: &Route<'_>, auth_server: &str) -> Vec<String> {
    let Some(table) = route.api.grants.get(auth_server) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for &index in &route.resource().api_scopes {
        for scope in &table[index] {
            if !out.contains(scope) {
                out.push(scope.clone());
            }
        }
    }
    out
}

/// Decides whether the caller, identified as `who` and calling from
/// `client_ip`, may call the route. A token keeps the rules of OAuth2
/// scopes; an application's own credential (API key, Basic, certificate)
/// carries no token scope: it may call the resources in no scope, and
/// those of the API scopes its application is granted. An application
/// credential is only good on the APIs its application subscribes to;
/// `applications: registered` asks the same of a token's client.
pub fn authorize(
    route: &Route<'_>,
    who: Option<&Identity>,
    client_ip: IpAddr,
) -> Result<Grant, Denied> {
    let grant = authorize_resource(route, who, client_ip)?;
    if let Some(other) = route.other_reading() {
        // The path's other reading must allow it too.
        authorize_resource(&other, who, client_ip)?;
    }
    Ok(grant)
}

/// [`authorize`] for the route's resource alone.
fn authorize_resource(
    route: &Route<'_>,
    who: Option<&Identity>,
    client_ip: IpAddr,
) -> Result<Grant, Denied> {
    let identification = match &route.api.authentication {
        Authentication::None => return Ok(Grant::open()),
        Authentication::Identify(identification) => identification,
    };
    // Fail closed: an API with authentication never grants without a caller.
    let Some(who) = who else {
        let would_grant = identification
            .auth_server
            .as_ref()
            .map(|server| granting_scopes(route, server))
            .unwrap_or_default();
        return Err(Denied::Scope(InsufficientScope { would_grant }));
    };
    let application = who.application.as_ref();
    let name = application.map(|app| app.name.clone());
    if let Some(app) = application {
        if !app.admits(client_ip) {
            return Err(Denied::OutsideIpRanges(app.name.clone()));
        }
    }
    let token = who
        .principal
        .as_deref()
        .filter(|_| who.kind == CredentialType::OAuth2);
    let subscribed = |app: &Application| {
        route
            .api
            .access
            .get(app.index)
            .is_some_and(|access| access.subscribed)
    };
    if token.is_none() || identification.registered_only {
        match application {
            None => return Err(Denied::NotRegistered),
            Some(app) if !subscribed(app) => return Err(Denied::NotSubscribed(app.name.clone())),
            Some(_) => {}
        }
    }
    let resource = route.resource();
    if resource.api_scopes.is_empty() {
        return Ok(Grant {
            api_scope: None,
            application: name,
        });
    }
    let granted = match token {
        Some(principal) => token_grants(route, principal),
        None => application.and_then(|app| {
            let access = route.api.access.get(app.index)?;
            resource
                .api_scopes
                .iter()
                .find(|index| access.api_scopes.contains(index))
                .copied()
        }),
    };
    match (granted, token, name) {
        (Some(index), _, application) => Ok(Grant {
            api_scope: Some(route.api.api_scopes[index].clone()),
            application,
        }),
        (None, Some(principal), _) => Err(Denied::Scope(InsufficientScope {
            would_grant: granting_scopes(route, &principal.auth_server),
        })),
        (None, None, Some(name)) => Err(Denied::NoApiScope(name)),
        (None, None, None) => Err(Denied::NotRegistered),
    }
}

/// The first API scope of the resource (by index) that the token's scopes grant.
fn token_grants(route: &Route<'_>, principal: &Principal) -> Option<usize> {
    let table = route.api.grants.get(&*principal.auth_server)?;
    route.resource().api_scopes.iter().copied().find(|&index| {
        table[index]
            .iter()
            .any(|scope| principal.token_scopes.contains(scope))
    })
}
