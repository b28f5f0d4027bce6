//! Compiling an API's `authentication`: `none`, or the credential types it
//! accepts (one or a list of `oauth2`, `api_key`, `basic`, `certificate`),
//! the auth server that validates its tokens, the API key header and
//! whether only registered applications may call. Nothing is open by
//! omission: an API without `authentication` is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;

use super::context::{
    gateway_request_field, header_name, names, Ctx, CONNECTION_FIELDS, GATEWAY_REQUEST_FIELDS,
};
use super::raw::{self, Location, S};
use super::snapshot::{AuthServer, Authentication, CredentialType, FoldedName, Identification};

/// The auth servers an `auth_server` may name.
pub type AuthServers = BTreeMap<Arc<str>, Arc<AuthServer>>;

/// What `authentication` may say.
const AUTHENTICATION_ALLOWED: &str =
    "authentication: { type: oauth2, auth_server: ID }, a type or list of oauth2, api_key, basic, certificate, or { type: none } for an API open to anyone";

/// What an API's credentials are judged against.
pub(super) struct Refs<'a> {
    /// The auth servers an `auth_server` may name.
    pub auth_servers: &'a AuthServers,
    /// Why no client certificate is ever asked for on the API's ports,
    /// when none is (no `tls.client_ca`, no HTTPS port, or a transport
    /// without https): type `certificate` then identifies no one.
    pub certificates_unasked: Option<&'static str>,
}

/// `at` is where findings about the API as a whole point.
pub(super) fn authentication(
    ctx: &mut Ctx,
    entry: &S<raw::Api>,
    at: Location,
    refs: &Refs,
) -> Option<Authentication> {
    // Fail closed: an API is served without credentials only when its
    // file says so (`type: none`), never because a block is missing.
    let Some(auth) = &entry.value.authentication else {
        ctx.report.error(
            at,
            "API has no `authentication`; it would be served without credentials",
            AUTHENTICATION_ALLOWED,
        );
        return None;
    };
    let Some(kind) = &auth.value.kind else {
        ctx.report.error(
            auth.referenced,
            "authentication has no `type`",
            AUTHENTICATION_ALLOWED,
        );
        return None;
    };
    if kind.value.0 == ["none"] {
        // Scopes under `type: none` only declare routes (the contract):
        // said loudly, since a reader of the file could believe the API
        // is protected.
        if let Some(scope) = entry.value.scopes.first() {
            ctx.report.warning(
                scope.referenced,
                "API has `scopes:` but authentication type none: they only declare routes, \
                 and anyone may call them (type: oauth2 with auth_server enforces them)",
            );
        }
        // Nor would anything apply the keys that restrict who may call:
        // `applications: registered` beside `type: none` opens the API
        // to anyone while it reads as closed.
        let restricting = [
            (
                "auth_server",
                auth.value.auth_server.as_ref().map(|v| v.referenced),
            ),
            (
                "api_key_header",
                auth.value.api_key_header.as_ref().map(|v| v.referenced),
            ),
            (
                "applications",
                auth.value.applications.as_ref().map(|v| v.referenced),
            ),
        ];
        let mut refused = false;
        for (key, at) in restricting {
            if let Some(at) = at {
                ctx.report.error(
                    at,
                    format!("`{key}` beside authentication type none; nothing would apply it"),
                    "type: oauth2, api_key, basic or certificate to restrict callers, or type: none alone",
                );
                refused = true;
            }
        }
        if refused {
            return None;
        }
        return Some(Authentication::None);
    }
    let mut types = Vec::new();
    for name in &kind.value.0 {
        match CredentialType::ALL.iter().find(|t| t.label() == name) {
            Some(t) if !types.contains(t) => types.push(*t),
            Some(_) => ctx.report.error(
                kind.referenced,
                format!("authentication type `{name}` is listed twice"),
                "each type once",
            ),
            None => ctx.report.error(
                kind.referenced,
                format!("authentication type `{name}` is not supported"),
                "oauth2, api_key, basic, certificate (one or a list), or none alone",
            ),
        }
    }
    if types.is_empty() {
        if kind.value.0.is_empty() {
            ctx.report.error(
                kind.referenced,
                "authentication type is an empty list",
                AUTHENTICATION_ALLOWED,
            );
        }
        return None;
    }
    // Warned about, not refused, as a transport naming no open port is:
    // an API downloaded from a central may accept what this instance does
    // not set up, and a refusal would stop every later download. Such an
    // API fails closed (401).
    if let (true, Some(why)) = (
        types.contains(&CredentialType::Certificate),
        refs.certificates_unasked,
    ) {
        let outcome = if types == [CredentialType::Certificate] {
            "the API can never be called (every request gets 401)"
        } else {
            "that type identifies no caller"
        };
        ctx.report.warning(
            kind.referenced,
            format!(
                "authentication type certificate, but no client certificate is ever asked for \
                 ({why}): {outcome}"
            ),
        );
    }
    let auth_server = if types.contains(&CredentialType::OAuth2) {
        Some(auth_server(ctx, auth, refs.auth_servers)?)
    } else {
        if let Some(server) = &auth.value.auth_server {
            ctx.report.error(
                server.referenced,
                "`auth_server` without authentication type oauth2; no token would be validated by it",
                "oauth2 among the types, or no auth_server",
            );
            return None;
        }
        None
    };
    let api_key_header = match &auth.value.api_key_header {
        Some(name) => api_key_header(ctx, name)?,
        None => HeaderName::from_static("x-api-key"),
    };
    let registered_only = match auth
        .value
        .applications
        .as_ref()
        .map(|a| (a.value.as_str(), a))
    {
        None | Some(("any", _)) => false,
        Some(("registered", _)) => true,
        Some((other, at)) => {
            ctx.report.error(
                at.referenced,
                format!("applications `{other}` is not known"),
                "any (default) or registered",
            );
            return None;
        }
    };
    Some(Authentication::Identify(Arc::new(Identification {
        types,
        auth_server,
        api_key_folded: FoldedName::new(api_key_header.as_str()),
        api_key_header,
        registered_only,
    })))
}

/// The field API keys are read from: one of the client's own.
fn api_key_header(ctx: &mut Ctx, written: &S<String>) -> Option<HeaderName> {
    let name = header_name(ctx, written)?;
    if let Some(why) = gateway_request_field(&name) {
        ctx.report.error(
            written.referenced,
            format!(
                "api_key_header `{}` cannot carry API keys: {why}",
                written.value
            ),
            format!(
                "a header of the client's own such as X-API-Key; not {GATEWAY_REQUEST_FIELDS} or {CONNECTION_FIELDS}"
            ),
        );
        return None;
    }
    Some(name)
}

fn auth_server(
    ctx: &mut Ctx,
    auth: &S<raw::Authentication>,
    auth_servers: &AuthServers,
) -> Option<Arc<str>> {
    let known = || names(auth_servers.keys().map(|k| k.to_string()));
    let Some(server) = &auth.value.auth_server else {
        ctx.report.error(
            auth.referenced,
            "authentication type oauth2 needs `auth_server`",
            format!("one of: {}", known()),
        );
        return None;
    };
    match auth_servers.get_key_value(server.value.as_str()) {
        Some((id, _)) => Some(id.clone()),
        None => {
            ctx.report.error(
                server.referenced,
                format!("auth server `{}` is not defined", server.value),
                format!("one of: {}", known()),
            );
            None
        }
    }
}
