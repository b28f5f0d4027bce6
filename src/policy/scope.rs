//! Authorization: does a token's set of scopes grant one of the API scopes
//! of the matched resource? Pure; the grant table was built at compile time.

use crate::auth::Principal;
use crate::config::snapshot::Authentication;

use super::route::Route;

/// Proof that a request may be forwarded; only [`authorize`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The API scope granted (`None` for open resources or `type: none`).
    api_scope: Option<String>,
}

impl Grant {
    pub(crate) fn open() -> Grant {
        Grant { api_scope: None }
    }

    pub fn api_scope(&self) -> Option<&str> {
        self.api_scope.as_deref()
    }
}

/// A valid token without a scope the resource needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("insufficient scope")]
pub struct InsufficientScope {
    /// Token scopes of the auth server that would have granted access.
    pub would_grant: Vec<String>,
}

/// The token scopes that grant each API scope of the route's resource, for
/// `auth_server`, in declaration order without duplicates.
pub fn granting_scopes(route: &Route, auth_server: &str) -> Vec<String> {
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

/// Decides whether the principal may call the route.
pub fn authorize(route: &Route, who: Option<&Principal>) -> Result<Grant, InsufficientScope> {
    let who = match (&route.api.authentication, who) {
        (Authentication::None, _) => return Ok(Grant::open()),
        // Fail closed: an oauth2 API never grants without a principal.
        (Authentication::OAuth2 { auth_server }, None) => {
            return Err(InsufficientScope {
                would_grant: granting_scopes(route, auth_server),
            })
        }
        (Authentication::OAuth2 { .. }, Some(who)) => who,
    };
    let resource = route.resource();
    if resource.api_scopes.is_empty() {
        return Ok(Grant::open());
    }
    let table = route.api.grants.get(&*who.auth_server);
    for &index in &resource.api_scopes {
        let granted = table.is_some_and(|t| {
            t[index]
                .iter()
                .any(|scope| who.token_scopes.contains(scope))
        });
        if granted {
            return Ok(Grant {
                api_scope: Some(route.api.api_scopes[index].clone()),
            });
        }
    }
    Err(InsufficientScope {
        would_grant: granting_scopes(route, &who.auth_server),
    })
}
