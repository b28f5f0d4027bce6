//! JSON views of a snapshot for the admin REST endpoints. Secrets are
//! always `****` here.

use serde_json::{json, Value};

use std::sync::Arc;

use crate::central::shown_url;
use crate::config::snapshot::{
    Alias, Authentication, Balance, Balanced, OnStoreError, Outbound, ThrottleStore, Throttling,
    Upstream,
};
use crate::config::Snapshot;
use crate::proxy::balance::Health;
use crate::reload::Bound;

const REDACTED: &str = "****";

/// The serving configuration. Ports, `limits` and `timeouts` are those in
/// effect, the listeners' since they started; `restart_needed` names
/// those the configuration has changed since (a restart applies them).
pub fn settings(s: &Snapshot, bound: &Bound) -> Value {
    let auth_servers: Vec<Value> = s
        .auth_servers
        .values()
        .map(|a| {
            json!({
                "id": &*a.id,
                "name": a.name,
                // User information in a URL is a password like the others.
                "localIntrospectionConfig": a.local.as_ref().map(|l| json!({
                    "issuer": shown_url(&l.issuer), "jwksuri": l.jwks_uri.as_deref().map(shown_url), "audience": l.audience,
                    "clockSkew": l.clock_skew.as_secs(), "accept_jwt_typ": l.accept_jwt_typ,
                })),
                "remoteIntrospectionConfig": a.remote.as_ref().map(|r| json!({
                    "introspectionEndpoint": shown_url(&r.endpoint), "clientId": r.client_id, "clientSecret": REDACTED,
                    "audience": r.audience, "cache_ttl": r.cache_ttl.as_secs(), "negative_cache_ttl": r.negative_cache_ttl.as_secs(),
                })),
            })
        })
        .collect();
    let aliases: Vec<Value> = s
        .aliases
        .iter()
        .map(|(name, alias)| match alias {
            Alias::Basic { username, .. } => {
                json!({"name": name, "type": "basic", "username": username, "password": REDACTED})
            }
            Alias::Bearer { .. } => json!({"name": name, "type": "bearer", "token": REDACTED}),
        })
        .collect();
    let (limits, timeouts) = (&bound.limits, &bound.timeouts);
    json!({
        "generation": s.generation,
        "source": s.source.display().to_string(),
        "ports": {
            "http": bound.listen.http.map(|a| a.port()),
            "https": bound.listen.https.map(|a| a.port()),
            "admin": bound.listen.admin.map(|a| a.port()),
            "bind": bound.listen.http.or(bound.listen.https).map(|a| a.ip().to_string()),
        },
        "admin": {
            "bind": bound.listen.admin.map(|a| a.ip().to_string()),
            "user": s.admin.credentials.as_ref().map(|(u, _)| u),
            "password": s.admin.credentials.as_ref().map(|_| REDACTED),
        },
        "limits": {
            "max_header_bytes": limits.max_header_bytes, "max_headers": limits.max_headers,
            "max_uri": limits.max_uri, "max_body": limits.max_body, "max_connections": limits.max_connections,
            "max_tunnels": limits.max_tunnels, "max_streams": limits.max_streams,
        },
        "timeouts": {
            "header_read": timeouts.header_read.as_secs_f64(), "idle": timeouts.idle.as_secs_f64(),
            "upstream_connect": timeouts.upstream_connect.as_secs_f64(), "drain": timeouts.drain.as_secs_f64(),
            "body_read": timeouts.body_read.as_secs_f64(), "send": timeouts.send.as_secs_f64(),
            // A tunnel's bound is the snapshot's it opened under: a reload
            // changes it for the tunnels opened after.
            "tunnel_idle": s.timeouts.tunnel_idle.as_secs_f64(),
        },
        "restart_needed": bound.restart_needed(s),
        "trusted_proxies": s.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "security_settings": { "auth_servers": auth_servers, "aliases": aliases },
        "api_gateway": s.api_gateway.as_ref().map(|g| json!({
            "url": shown_url(&g.url), "user": g.user, "password": REDACTED, "download_settings": g.download_settings,
            "download_apis": g.download_apis, "apis": g.apis, "poll_interval": g.poll_interval.as_secs(),
        })),
        "authorization_server": s.authorization_server.as_ref().map(|a| json!({
            "issuer": a.issuer,
            "clients": a.clients.iter().map(|c| json!({
                "client_id": c.client_id, "name": c.name,
                "client_secret": c.client_secret.as_ref().map(|_| REDACTED),
                "scopes": c.scopes,
            })).collect::<Vec<_>>(),
        })),
        "throttling": throttling(&s.throttling),
        "apis": assets(s, None)["apis"].clone(),
        "applications": applications(s),
    })
}

/// `throttling:`; a Redis URL may carry a password, so it is never shown.
fn throttling(t: &Throttling) -> Value {
    json!({
        "store": match &t.store {
            ThrottleStore::Memory => "memory",
            ThrottleStore::Redis { url, .. } if url.expose().starts_with("rediss://") => "rediss://****",
            ThrottleStore::Redis { .. } => "redis://****",
        },
        "on_store_error": match t.on_store_error {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        },
        "timeout": t.timeout.as_secs_f64(),
        "max_keys": t.max_keys,
    })
}

/// The APIs, resources, scopes and mappings of `s`; with `health`, the
/// state of each endpoint of a balanced upstream too.
pub fn assets(s: &Snapshot, health: Option<&Health>) -> Value {
    let apis: Vec<Value> = s
        .apis
        .iter()
        .map(|api| {
            json!({
                "name": api.name,
                "version": api.version,
                "base_path": api.base_path,
                "upstream": match &api.upstream {
                    Upstream::Echo => json!({"echo": true}),
                    Upstream::Url { scheme, authority, path, timeout, .. } => json!({"url": format!("{scheme}://{authority}{path}"), "timeout": timeout.as_secs_f64()}),
                    Upstream::Balanced(b) => balanced(&api.name, b, health),
                },
                "authentication": match &api.authentication {
                    Authentication::None => json!({"type": "none"}),
                    Authentication::Identify(i) => json!({
                        "type": match i.types.as_slice() {
                            [one] => json!(one.label()),
                            many => json!(many.iter().map(|t| t.label()).collect::<Vec<_>>()),
                        },
                        "auth_server": i.auth_server.as_deref(),
                        "api_key_header": i.types.contains(&crate::config::snapshot::CredentialType::ApiKey).then(|| i.api_key_header.as_str()),
                        "applications": if i.registered_only { "registered" } else { "any" },
                    }),
                },
                "scopes": api.api_scopes,
                "resources": api.resources.iter().map(|r| json!({
                    "method": r.method.as_str(),
                    "path": r.template.text,
                    "scopes": r.api_scopes.iter().map(|&i| api.api_scopes[i].clone()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "outbound_auth": match &api.outbound {
                    Outbound::None => "none",
                    Outbound::Header(_) => "credentials",
                    Outbound::Delegate => "incoming_token",
                },
                "throttle": api.throttle.iter().map(|t| json!({
                    "name": t.name, "limit": t.limit, "per": t.per.as_secs_f64(),
                    "scope": t.api_scope.map(|i| api.api_scopes[i].clone()),
                    "per_application": t.per_application, "per_client_ip": t.per_client_ip,
                })).collect::<Vec<_>>(),
                "ip_filter": api.ip_filter.as_ref().map(|f| json!({
                    "allow": f.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "deny": f.deny.iter().map(ToString::to_string).collect::<Vec<_>>(),
                })),
                "upstream_requests": api.upstream_bound.as_ref().map(|b| json!({
                    "max": b.max(), "in_flight": b.in_flight(),
                })),
            })
        })
        .collect();
    let mappings: Vec<Value> = s
        .scope_mappings
        .iter()
        .map(|m| json!({"auth_server": &*m.auth_server, "scope": m.token_scope, "api_scopes": m.api_scopes}))
        .collect();
    json!({ "apis": apis, "scope_mappings": mappings, "applications": applications(s) })
}

/// The applications; API keys and password hashes only as `****`.
fn applications(s: &Snapshot) -> Vec<Value> {
    s.applications
        .list
        .iter()
        .map(|app| {
            json!({
                "name": &*app.name,
                "client_ids": app.client_ids,
                "auth_servers": app.auth_servers.iter().map(|s| &**s).collect::<Vec<_>>(),
                "api_keys": vec![REDACTED; app.api_keys],
                "basic_users": app.basic_users.iter().map(|u| json!({"username": u, "password_hash": REDACTED})).collect::<Vec<_>>(),
                "certificates": app.certificates.iter().map(|fp| {
                    let hex: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
                    format!("sha256:{}", hex.join(":"))
                }).collect::<Vec<_>>(),
                "ip_ranges": app.ip_ranges.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "apis": app.apis,
                "api_scopes": app.api_scopes,
            })
        })
        .collect()
}

/// A balanced upstream: its settings, and each endpoint's state when the
/// runtime's health is at hand.
fn balanced(api: &str, b: &Arc<Balanced>, health: Option<&Health>) -> Value {
    let states = health.map(|h| h.describe(api, b));
    let endpoints: Vec<Value> = b
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut entry = json!({"url": &*e.url, "weight": e.weight});
            if let Some((_, in_flight, state)) = states.as_ref().and_then(|s| s.get(i)) {
                entry["state"] = json!(state);
                entry["in_flight"] = json!(in_flight);
            }
            entry
        })
        .collect();
    let retry_on: Vec<&str> = [
        b.retry.connect_failure.then_some("connect_failure"),
        b.retry.refused_stream.then_some("refused_stream"),
    ]
    .into_iter()
    .flatten()
    .collect();
    json!({
        "endpoints": endpoints,
        "balance": match b.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequests => "least_requests",
        },
        "timeout": b.timeout.as_secs_f64(),
        "health": {
            "passive": {
                "consecutive_failures": b.passive.consecutive_failures,
                "eject_for": b.passive.eject_for.as_secs_f64(),
                "max_ejected": format!("{}%", b.passive.max_ejected_percent),
            },
            "active": b.active.as_ref().map(|a| json!({
                "path": a.path, "interval": a.interval.as_secs_f64(), "timeout": a.timeout.as_secs_f64(),
                "healthy": a.healthy, "unhealthy": a.unhealthy,
            })),
        },
        "retry": {
            "attempts": b.retry.attempts,
            "on": retry_on,
        },
        "dns_ttl": b.dns_ttl.as_secs_f64(),
    })
}
