//! Auth servers that validate the tokens of this instance's own
//! authorization server (their `issuer` is its issuer, a trailing `/`
//! aside). `aud` is compared exactly (RFC 9068 §4): an `audience` other
//! than the one its tokens carry (`authorization_server.audience`, else
//! its issuer) accepts none of them. That fails closed, every token refused with 401; `check` says
//! so rather than leave it to the first caller.

use super::authz::Settings;
use super::context::Ctx;
use super::raw::{self, S};

pub(super) fn check(ctx: &mut Ctx, servers: &[S<raw::AuthServer>], own: &Settings) {
    let own_audience = own.token_audience();
    let named = if own.audience.is_some() {
        "authorization_server.audience"
    } else {
        "the audience of this instance's tokens (authorization_server.audience left out: its issuer)"
    };
    for server in servers {
        let Some(local) = &server.value.local_introspection else {
            continue;
        };
        let reads_own = local
            .value
            .issuer
            .as_ref()
            .is_some_and(|i| i.value.0.trim().trim_end_matches('/') == own.issuer);
        let Some(audience) = local.value.audience.as_ref().filter(|_| reads_own) else {
            continue;
        };
        if audience.value.0 != own_audience {
            ctx.report.warning(
                audience.referenced,
                format!(
                    "audience `{}` is not {named} `{own_audience}`, which this instance's tokens carry: none of them is accepted",
                    audience.value.0
                ),
            );
        }
    }
}
