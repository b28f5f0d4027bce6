//! Auth servers whose JWTs an API accepts with no `audience` to check.
//! RFC 9068 §4: a resource server validating a JWT access token checks
//! that its `aud` names it; without that, a token its issuer made for
//! another resource server is accepted here. `audience` stays optional
//! (an issuer may serve this gateway alone), so `check` warns rather
//! than refuses.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::context::Ctx;
use super::raw::{self, S};
use super::snapshot::{Api, AuthServer};

pub(super) fn check(
    ctx: &mut Ctx,
    servers: &[S<raw::AuthServer>],
    compiled: &BTreeMap<Arc<str>, Arc<AuthServer>>,
    apis: &[Arc<Api>],
) {
    for server in servers {
        let Some(id) = &server.value.id else {
            continue;
        };
        let compiled = compiled.get(id.value.as_str());
        let Some((count, names)) = served(apis, &id.value) else {
            continue;
        };
        let noun = if count == 1 { "API" } else { "APIs" };
        if let Some(local) = &server.value.local_introspection {
            if compiled
                .and_then(|s| s.local.as_ref())
                .is_some_and(|l| l.audience.is_none())
            {
                ctx.report.warning(
                    local.referenced,
                    format!(
                        "auth server `{}` validates JWTs for {noun} {names} without an `audience`: a token its issuer made for another resource server is accepted (RFC 9068 §4: a resource server checks `aud`); set localIntrospectionConfig.audience",
                        id.value,
                    ),
                );
            }
        }
        if let Some(remote) = &server.value.remote_introspection {
            if compiled
                .and_then(|s| s.remote.as_ref())
                .is_some_and(|r| r.audience.is_none())
            {
                ctx.report.warning(
                    remote.referenced,
                    format!(
                        "auth server `{}` introspects tokens for {noun} {names} without an `audience`: an active token its issuer made for another resource server is accepted (RFC 7662 §4: the resource server judges `aud`); set remoteIntrospectionConfig.audience",
                        id.value,
                    ),
                );
            }
        }
    }
}

/// How many APIs `auth_server` validates tokens for, and their names
/// listed (versions of one API once); `None` when it validates for none.
fn served(apis: &[Arc<Api>], auth_server: &str) -> Option<(usize, String)> {
    let mut names: Vec<String> = apis
        .iter()
        .filter(|api| {
            api.authentication
                .auth_server()
                .is_some_and(|s| **s == *auth_server)
        })
        .map(|api| format!("`{}`", api.name))
        .collect();
    names.sort();
    names.dedup();
    (!names.is_empty()).then(|| (names.len(), names.join(", ")))
}
