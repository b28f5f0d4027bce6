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
        let (Some(id), Some(local)) = (&server.value.id, &server.value.local_introspection) else {
            continue;
        };
        let unchecked = compiled
            .get(id.value.as_str())
            .and_then(|s| s.local.as_ref())
            .is_some_and(|l| l.audience.is_none());
        if !unchecked {
            continue;
        }
        let mut names: Vec<String> = apis
            .iter()
            .filter(|api| {
                api.authentication
                    .auth_server()
                    .is_some_and(|s| **s == *id.value)
            })
            .map(|api| format!("`{}`", api.name))
            .collect();
        // Versions of one API share its name.
        names.sort();
        names.dedup();
        if names.is_empty() {
            continue;
        }
        let noun = if names.len() == 1 { "API" } else { "APIs" };
        ctx.report.warning(
            local.referenced,
            format!(
                "auth server `{}` validates JWTs for {noun} {} without an `audience`: a token its issuer made for another resource server is accepted (RFC 9068 §4: a resource server checks `aud`); set localIntrospectionConfig.audience",
                id.value,
                names.join(", ")
            ),
        );
    }
}
