//! Key and token material over plain HTTP. A JWK Set, discovery document
//! or introspection answer read over `http://` can be replaced by anyone
//! on the path (and with it, every token accepted); credentials sent to an
//! upstream or a central gateway over `http://` can be read. Such a URL is
//! an error unless its host is loopback (127.0.0.0/8, ::1, `localhost`) or
//! the entry says `allow_insecure_http: true`, which makes it a warning.
//! Reads the raw file after the sections are compiled (and the
//! `download-settings` command's flags, as `api_gateway:`). The stores
//! (the authorization server's PostgreSQL, the throttling Redis) follow
//! the same rule for their unencrypted connections, asked by their
//! sections with [`store`] and opted into with `allow_insecure_store`.
//! Decides nothing else.

use std::net::IpAddr;

use super::context::Ctx;
use super::raw::{self, Location, Scalar, S};

/// How plain HTTP to a host that is not loopback is allowed where a URL
/// is given: the setting's name (in the warning) and how to set it (in
/// the error's "allowed:").
#[derive(Debug, Clone, Copy)]
pub struct OptIn {
    pub name: &'static str,
    pub how: &'static str,
}

/// `allow_insecure_http: true` beside the URL in the file.
pub const ENTRY: OptIn = OptIn {
    name: "allow_insecure_http",
    how: "`allow_insecure_http: true` on this entry",
};

/// `allow_insecure_store: true` beside a store's URL.
pub const STORE: OptIn = OptIn {
    name: "allow_insecure_store",
    how: "`allow_insecure_store: true` beside the store",
};

/// A store reached without TLS, as a diagnostic names it.
pub(super) struct ClearStore<'a> {
    /// The setting, `authorization_server.store`.
    pub key: &'a str,
    /// The URL as it may be shown (no password).
    pub shown: &'a str,
    /// What the connection carries, `the store's password and tokens`.
    pub what: &'a str,
    /// How to encrypt it, for "allowed:", where the store can be.
    pub encrypted: Option<&'a str>,
}

/// A store connection without TLS to `host`: an error unless the host is
/// loopback, a warning when `setting` (`allow_insecure_store`) is true.
pub(super) fn store(
    ctx: &mut Ctx,
    at: Location,
    host: &str,
    setting: &Option<S<Scalar>>,
    store: ClearStore,
) {
    let allow = ctx.boolean(setting, STORE.name, false);
    if is_loopback(host) {
        return;
    }
    let ClearStore {
        key,
        shown,
        what,
        encrypted,
    } = store;
    if allow {
        ctx.report.warning(
            at,
            format!(
                "{key}: `{shown}` carries {what} unencrypted ({})",
                STORE.name
            ),
        );
    } else {
        ctx.report.error(
            at,
            format!(
                "{key}: `{shown}` would carry {what} unencrypted to a host that is not loopback"
            ),
            format!(
                "{}a host that is localhost, 127.0.0.0/8 or [::1], or {}",
                encrypted.map_or(String::new(), |e| format!("{e}, ")),
                STORE.how
            ),
        );
    }
}

/// The setting that allows plain HTTP where a URL is given, and how it is named.
struct Allowance<'a> {
    setting: &'a Option<S<Scalar>>,
    opt_in: OptIn,
}

/// The `allow_insecure_http` of a file's entry.
fn entry(setting: &Option<S<Scalar>>) -> Allowance<'_> {
    Allowance {
        setting,
        opt_in: ENTRY,
    }
}

/// Checks every URL of `file` that carries keys, tokens or credentials.
/// `own_issuer` is this instance's authorization server's issuer, whose
/// keys are taken in-process (no HTTP at all).
pub(super) fn check(ctx: &mut Ctx, file: &raw::File, own_issuer: Option<&str>) {
    for server in &file.security_settings.auth_servers {
        if let Some(local) = &server.value.local_introspection {
            local_introspection(ctx, &local.value, own_issuer);
        }
        if let Some(remote) = &server.value.remote_introspection {
            let remote = &remote.value;
            if let Some(endpoint) = &remote.introspection_endpoint {
                let allowed = &remote.allow_insecure_http;
                let what = "introspection (tokens and the client secret)";
                url(ctx, endpoint, "introspectionEndpoint", what, entry(allowed));
            }
        }
    }
    for api in &file.apis {
        let api = &api.value;
        let (Some(upstream), Some(_)) = (&api.upstream, &api.policies.outbound_auth) else {
            continue;
        };
        let allowed = &upstream.value.allow_insecure_http;
        let what = "outbound credentials (outbound_auth)";
        if let Some(target) = &upstream.value.url {
            url(ctx, target, "upstream.url", what, entry(allowed));
        }
        let endpoints = upstream.value.endpoints.iter().flat_map(|e| &e.value);
        for target in endpoints.filter_map(|e| e.value.url.as_ref()) {
            url(
                ctx,
                target,
                "upstream.endpoints[].url",
                what,
                entry(allowed),
            );
        }
    }
}

fn local_introspection(ctx: &mut Ctx, local: &raw::LocalIntrospection, own_issuer: Option<&str>) {
    let issuer = local.issuer.as_ref();
    let in_process = issuer
        .zip(own_issuer)
        .is_some_and(|(i, own)| i.value.0.trim().trim_end_matches('/') == own);
    if in_process {
        return;
    }
    let allowed = entry(&local.allow_insecure_http);
    match (&local.jwksuri, issuer) {
        (Some(jwks), _) => url(ctx, jwks, "jwksuri", "the JWK Set", allowed),
        (None, Some(issuer)) => url(
            ctx,
            issuer,
            "localIntrospectionConfig.issuer",
            "discovery of the JWK Set",
            allowed,
        ),
        (None, None) => {}
    }
}

/// The `api_gateway.url` a downstream downloads its settings from (with
/// its password, and secrets in clear in the answer), named `key`.
pub(super) fn api_gateway(ctx: &mut Ctx, gateway: &raw::ApiGateway, key: &str, opt_in: OptIn) {
    if let Some(target) = &gateway.url {
        let what = "the central's settings and the download password";
        let allowed = Allowance {
            setting: &gateway.allow_insecure_http,
            opt_in,
        };
        url(ctx, target, key, what, allowed);
    }
}

fn url(ctx: &mut Ctx, value: &S<Scalar>, key: &str, what: &str, allowed: Allowance) {
    let opt_in = allowed.opt_in;
    let allow = ctx.boolean(allowed.setting, opt_in.name, false);
    let text = value.value.0.trim();
    // A URL that does not parse is reported by the section that reads it.
    let Ok(uri) = text.parse::<http::Uri>() else {
        return;
    };
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(is_loopback) {
        return;
    }
    let at: Location = value.referenced;
    let text = super::secret::shown_url(text);
    if allow {
        ctx.report.warning(
            at,
            format!(
                "{key}: `{text}` carries {what} over plain HTTP ({})",
                opt_in.name
            ),
        );
    } else {
        ctx.report.error(
            at,
            format!(
                "{key}: `{text}` would carry {what} over plain HTTP to a host that is not loopback"
            ),
            format!(
                "https://…, http:// only to localhost, 127.0.0.0/8 or [::1], or {}",
                opt_in.how
            ),
        );
    }
}

/// 127.0.0.0/8, ::1 or `localhost`: traffic that never leaves the machine.
pub fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_127_slash_8_ipv6_one_and_localhost() {
        for host in ["localhost", "LocalHost", "127.0.0.1", "127.1.2.3", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "10.0.0.1",
            "localhost.example",
            "128.0.0.1",
            "[::2]",
            "example.com",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
