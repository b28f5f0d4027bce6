//! Compiling `security_settings` (auth servers with their webMethods keys,
//! aliases) and `scope_mappings`, with every reference checked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::context::{names, Ctx};
use super::raw::{self, Scalar, S};
use super::snapshot::*;
use super::Secret;

/// The longest an introspection answer is cached (`cache_ttl`,
/// `negative_cache_ttl`).
const MAX_CACHE_LIFETIME: Duration = Duration::from_secs(86_400);

pub(super) fn warn_ignored(ctx: &mut Ctx, name: &str, value: &S<raw::Ignored>) {
    if !value.value.is_null {
        ctx.report.warning(
            value.referenced,
            format!("`{name}` is a webMethods setting that has no effect here; ignored"),
        );
    }
}

pub(super) fn auth_servers(
    ctx: &mut Ctx,
    list: &[S<raw::AuthServer>],
) -> BTreeMap<Arc<str>, Arc<AuthServer>> {
    let mut servers = BTreeMap::new();
    // Issuer → (auth server id, its key source) of the first to name it.
    let mut issuers: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for entry in list {
        let raw = &entry.value;
        for (name, value) in raw.ignored_keys() {
            warn_ignored(ctx, name, value);
        }
        if let Some(kind) = &raw.kind {
            if kind.value != "authServerAlias" {
                ctx.report.error(
                    kind.referenced,
                    format!("auth server type `{}` is not supported", kind.value),
                    "authServerAlias",
                );
            }
        }
        let Some(id) = ctx.required(&raw.id, entry.referenced, "id") else {
            continue;
        };
        if id.value.trim().is_empty() {
            ctx.report.error(
                id.referenced,
                "auth server id is empty",
                "an id such as `local`, which an API's `auth_server` names",
            );
            continue;
        }
        let id_text: Arc<str> = Arc::from(id.value.as_str());
        if servers.contains_key(&id_text) {
            ctx.report.error(
                id.referenced,
                format!("auth server id `{}` is defined twice", id.value),
                "unique ids",
            );
            continue;
        }
        let local = raw
            .local_introspection
            .as_ref()
            .and_then(|l| local_introspection(ctx, l));
        let local_audience = local.as_ref().and_then(|l| l.audience.as_deref());
        let remote = raw
            .remote_introspection
            .as_ref()
            .and_then(|r| remote_introspection(ctx, r, local_audience));
        if let (Some(config), Some(compiled)) = (&raw.local_introspection, &local) {
            let source = compiled.jwks_uri.clone();
            match issuers.get(&compiled.issuer) {
                Some((first, first_source)) if *first_source != source => {
                    let at = config
                        .value
                        .issuer
                        .as_ref()
                        .map(|i| i.referenced)
                        .unwrap_or(config.referenced);
                    ctx.report.warning(
                        at,
                        format!(
                            "issuer `{}` is also configured by auth server `{first}` with another key source ({} here, {} there); its tokens verify differently depending on the API",
                            super::secret::shown_url(&compiled.issuer),
                            key_source(&source),
                            key_source(first_source),
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    issuers.insert(compiled.issuer.clone(), (id.value.clone(), source));
                }
            }
        }
        if raw.local_introspection.is_none() && raw.remote_introspection.is_none() {
            ctx.report.error(
                entry.referenced,
                format!("auth server `{}` has neither localIntrospectionConfig nor remoteIntrospectionConfig", id.value),
                "at least one of them",
            );
        }
        let name = raw
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| id.value.clone());
        servers.insert(
            id_text.clone(),
            Arc::new(AuthServer {
                id: id_text,
                name,
                local,
                remote,
            }),
        );
    }
    servers
}

fn key_source(jwks_uri: &Option<String>) -> String {
    match jwks_uri {
        Some(uri) => format!("jwksuri {}", super::secret::shown_url(uri)),
        None => "discovery from the issuer".to_owned(),
    }
}

pub(super) fn url(ctx: &mut Ctx, value: &S<Scalar>, key: &str) -> Option<String> {
    let text = value.value.0.trim();
    match http::Uri::from_str(text) {
        // A port must be a number: a "port" of text is an unencoded
        // password (`user:pa/ss@host`), and the URL is not what it says.
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some_and(|a| {
                    let text = a.as_str();
                    let no_port = !text.contains(':') || text.ends_with(']');
                    no_port || a.port_u16().is_some()
                }) =>
        {
            Some(text.to_owned())
        }
        _ => {
            ctx.report.error(
                value.referenced,
                format!(
                    "{key}: `{}` is not an http(s) URL",
                    super::secret::shown_url(text)
                ),
                "http://host[:port]/path or https://…",
            );
            None
        }
    }
}

pub(super) fn local_introspection(
    ctx: &mut Ctx,
    entry: &S<raw::LocalIntrospection>,
) -> Option<LocalIntrospection> {
    let raw = &entry.value;
    for (name, value) in [
        ("certificateAlias", &raw.certificate_alias),
        ("description", &raw.description),
        ("useLocalClockSkew", &raw.use_local_clock_skew),
    ] {
        if let Some(value) = value {
            warn_ignored(ctx, name, value);
        }
    }
    let issuer = ctx.required(
        &raw.issuer,
        entry.referenced,
        "localIntrospectionConfig.issuer",
    )?;
    let issuer = issuer.value.0.clone();
    let jwks_uri = raw.jwksuri.as_ref().and_then(|u| url(ctx, u, "jwksuri"));
    let clock_skew = ctx.duration(&raw.clock_skew, "clockSkew", Duration::from_secs(60));
    if clock_skew > Duration::from_secs(60) {
        if let Some(at) = &raw.clock_skew {
            ctx.report
                .error(at.referenced, "clockSkew is more than 60s", "at most 60s");
        }
    }
    let trust_store = raw.trust_store_alias.as_ref().and_then(|at| {
        let path = ctx.path(at.value.as_ref()?);
        let pem = super::listener_compile::read_ca_bundle(ctx, at, &path)?;
        Some(CaBundle {
            path,
            pem: pem.into(),
        })
    });
    let audience = ctx.audience(&raw.audience, "localIntrospectionConfig.audience");
    let accept_jwt_typ = ctx.boolean(&raw.accept_jwt_typ, "accept_jwt_typ", false);
    if let (true, None, Some(at)) = (accept_jwt_typ, &audience, &raw.accept_jwt_typ) {
        // An OpenID Connect ID token is a `typ: JWT` of the same issuer:
        // only an audience tells it from an access token.
        ctx.report.warning(
            at.referenced,
            "accept_jwt_typ: true without an audience: the issuer's ID tokens (typ JWT) pass as access tokens on resources that need no scope",
        );
    }
    Some(LocalIntrospection {
        issuer,
        jwks_uri,
        audience,
        clock_skew,
        accept_jwt_typ,
        trust_store,
        // A value that is no boolean is reported by `plain_http`.
        allow_insecure_http: raw
            .allow_insecure_http
            .as_ref()
            .and_then(|v| super::resolve::boolean(&v.value.0))
            .unwrap_or(false),
    })
}

/// `remoteIntrospectionConfig`; without an `audience` of its own, answers
/// must name `local_audience`: the JWTs and the opaque tokens of one auth
/// server are for the same API.
pub(super) fn remote_introspection(
    ctx: &mut Ctx,
    entry: &S<raw::RemoteIntrospection>,
    local_audience: Option<&str>,
) -> Option<RemoteIntrospection> {
    let raw = &entry.value;
    if let Some(user) = &raw.user {
        warn_ignored(ctx, "user", user);
    }
    let at = entry.referenced;
    let endpoint = ctx.required(&raw.introspection_endpoint, at, "introspectionEndpoint");
    let endpoint = endpoint.and_then(|e| url(ctx, e, "introspectionEndpoint"));
    let client_id = ctx
        .required(&raw.client_id, at, "clientId")
        .map(|c| c.value.0.clone());
    let client_secret = ctx
        .required(&raw.client_secret, at, "clientSecret")
        .and_then(|s| ctx.secret(s, "clientSecret"));
    let client_auth = match &raw.client_auth {
        None => ClientAuth::Basic,
        Some(v) if v.value.0 == "client_secret_basic" => ClientAuth::Basic,
        Some(v) if v.value.0 == "client_secret_post" => ClientAuth::Post,
        Some(v) => {
            ctx.report.error(
                v.referenced,
                format!("client_auth `{}` is not supported", v.value.0),
                "client_secret_basic or client_secret_post",
            );
            ClientAuth::Basic
        }
    };
    let audience = match &raw.audience {
        Some(_) => ctx.audience(&raw.audience, "remoteIntrospectionConfig.audience"),
        None => local_audience.map(str::to_owned),
    };
    let cache_ttl = cache_lifetime(ctx, &raw.cache_ttl, "cache_ttl", Duration::from_secs(60));
    let negative_cache_ttl = cache_lifetime(
        ctx,
        &raw.negative_cache_ttl,
        "negative_cache_ttl",
        Duration::from_secs(5),
    );
    Some(RemoteIntrospection {
        endpoint: endpoint?,
        client_id: client_id?,
        client_secret: client_secret?,
        client_auth,
        audience,
        cache_ttl,
        negative_cache_ttl,
    })
}

/// How long an introspection answer may be served from the cache: at
/// most [`MAX_CACHE_LIFETIME`] (an answer outlives a revocation by as much).
fn cache_lifetime(
    ctx: &mut Ctx,
    value: &Option<S<Scalar>>,
    key: &str,
    default: Duration,
) -> Duration {
    let lifetime = ctx.duration(value, key, default);
    match value {
        Some(at) if lifetime > MAX_CACHE_LIFETIME => {
            ctx.report.error(
                at.referenced,
                format!("{key}: `{}` is longer than 24h", at.value.0),
                "a duration up to 24h",
            );
            default
        }
        _ => lifetime,
    }
}

pub(super) fn aliases(ctx: &mut Ctx, list: &[S<raw::Alias>]) -> BTreeMap<String, Alias> {
    let mut aliases = BTreeMap::new();
    for entry in list {
        let raw = &entry.value;
        let Some(name) = ctx.required(&raw.name, entry.referenced, "name") else {
            continue;
        };
        if aliases.contains_key(&name.value) {
            ctx.report.error(
                name.referenced,
                format!("alias `{}` is defined twice", name.value),
                "unique alias names",
            );
            continue;
        }
        // Judged where a download is merged (`central::merge`); checked here.
        ctx.boolean(&raw.allow_downloaded_apis, "allow_downloaded_apis", false);
        let kind = raw
            .kind
            .as_ref()
            .map(|k| k.value.as_str())
            .unwrap_or("basic");
        let alias = match kind {
            "basic" => {
                let user = ctx.required(&raw.username, entry.referenced, "username");
                let password = ctx
                    .required(&raw.password, entry.referenced, "password")
                    .and_then(|p| ctx.secret(p, "password"));
                let user = user.and_then(|u| ctx.basic_user(u.referenced, &u.value.0, "username"));
                user.zip(password)
                    .map(|(username, password)| Alias::Basic { username, password })
            }
            "bearer" => ctx
                .required(&raw.token, entry.referenced, "token")
                .and_then(|t| Some((t, ctx.secret(t, "token")?)))
                .and_then(|(t, token)| bearer_token(ctx, t, &name.value, token)),
            other => {
                let at = raw
                    .kind
                    .as_ref()
                    .map(|k| k.referenced)
                    .unwrap_or(entry.referenced);
                ctx.report.error(
                    at,
                    format!("alias type `{other}` is not supported"),
                    "basic or bearer",
                );
                None
            }
        };
        if let Some(alias) = alias {
            aliases.insert(name.value.clone(), alias);
        }
    }
    aliases
}

/// A bearer alias's token, as RFC 6750 §2.1 has it: `b64token`, one or
/// more of ALPHA, DIGIT, `-`, `.`, `_`, `~`, `+`, `/`, then `=` only. One
/// with a space, a comma or a byte outside ASCII passes as a header value
/// and is then read by the upstream as another token, or as none. The
/// error says what is wrong and where, never the token.
fn bearer_token(ctx: &mut Ctx, written: &S<Scalar>, alias: &str, token: Secret) -> Option<Alias> {
    let Some((at, what)) = b64token_problem(token.expose()) else {
        return Some(Alias::Bearer { token });
    };
    ctx.report.error(
        Ctx::at(written),
        format!("alias `{alias}`: the bearer token has {what} at character {at}"),
        "an RFC 6750 token: letters, digits, - . _ ~ + /, then only = (as padding)",
    );
    None
}

/// The first character (counted from 1) that keeps `token` from being an
/// RFC 6750 `b64token`, and what kind it is.
fn b64token_problem(token: &str) -> Option<(usize, &'static str)> {
    let body = token.trim_end_matches('=');
    if body.is_empty() {
        return Some((1, "`=` (padding) with nothing before it"));
    }
    let (at, c) = body.chars().enumerate().find(|(_, c)| {
        !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/'))
    })?;
    let what = match c {
        '=' => "`=` (padding) before its end",
        ' ' => "a space",
        c if c.is_control() => "a control character (a line break or tab, say)",
        c if !c.is_ascii() => "a character outside ASCII",
        _ => "a punctuation mark other than - . _ ~ + /",
    };
    Some((at + 1, what))
}

pub(super) fn scope_mappings(
    ctx: &mut Ctx,
    list: &[S<raw::ScopeMapping>],
    auth_servers: &BTreeMap<Arc<str>, Arc<AuthServer>>,
    apis: &[S<raw::Api>],
) -> Vec<ScopeMapping> {
    // The (API name, scope name) pairs of every version, and the auth
    // servers each API name's versions validate tokens with.
    let mut declared: HashSet<(String, String)> = HashSet::new();
    let mut validated_by: HashMap<String, Vec<String>> = HashMap::new();
    for api in apis {
        let name = api
            .value
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_default();
        for scope in &api.value.scopes {
            if let Some(scope) = &scope.value.name {
                declared.insert((name.clone(), scope.value.clone()));
            }
        }
        let server = api
            .value
            .authentication
            .as_ref()
            .and_then(|a| a.value.auth_server.as_ref())
            .map(|s| s.value.clone());
        validated_by.entry(name).or_default().extend(server);
    }
    let mut seen = HashSet::new();
    let mut mappings = Vec::new();
    for entry in list {
        let raw = &entry.value;
        let server = ctx.required(&raw.auth_server, entry.referenced, "auth_server");
        let scope = ctx.required(&raw.scope, entry.referenced, "scope");
        let (Some(server), Some(scope)) = (server, scope) else {
            continue;
        };
        if !ctx.scope_token(scope) {
            continue;
        }
        if !auth_servers.contains_key(server.value.as_str()) {
            ctx.report.error(
                server.referenced,
                format!(
                    "scope mapping names auth server `{}`, which is not defined",
                    server.value
                ),
                format!(
                    "one of: {}",
                    names(auth_servers.keys().map(|k| k.to_string()))
                ),
            );
            continue;
        }
        if !seen.insert((server.value.clone(), scope.value.clone())) {
            ctx.report.error(
                scope.referenced,
                format!(
                    "scope `{}` of auth server `{}` is mapped twice",
                    scope.value, server.value
                ),
                "one mapping per (auth_server, scope); list several api_scopes in it",
            );
        }
        let mut api_scopes = Vec::new();
        let mut named = Vec::new();
        for api_scope in &raw.api_scopes {
            // Compared whole: an API or a scope name may hold a `:` too.
            let mut readings: Vec<&(String, String)> = declared
                .iter()
                .filter(|(api, s)| api_scope.value == format!("{api}:{s}"))
                .collect();
            readings.sort();
            readings.dedup();
            if readings.len() > 1 {
                // `Shop:Orders:Admin` as scope `Orders:Admin` of `Shop` and
                // scope `Admin` of `Shop:Orders`: granting both would give
                // a token what its mapping may not have meant.
                let readings = readings.iter().map(|(api, s)| (api.as_str(), s.as_str()));
                super::context::ambiguous_api_scope(ctx, api_scope, readings);
                continue;
            }
            let of: Vec<&String> = readings.into_iter().map(|(api, _)| api).collect();
            // A mapping for tokens the API never sees applies to nothing
            // (webMethods exports carry such mappings of other aliases);
            // a server meant and not written is told.
            let elsewhere = of.iter().find(|api| {
                !validated_by
                    .get(api.as_str())
                    .is_some_and(|servers| servers.contains(&server.value))
            });
            if let Some(api) = elsewhere {
                let servers = validated_by.get(api.as_str()).cloned().unwrap_or_default();
                ctx.report.warning(
                    api_scope.referenced,
                    format!(
                        "api scope `{}` is mapped for auth server `{}`, but API `{api}` validates tokens of {}; the mapping never applies",
                        api_scope.value,
                        server.value,
                        if servers.is_empty() {
                            "no auth server".to_owned()
                        } else {
                            names(servers.iter().map(|s| format!("`{s}`")))
                        }
                    ),
                );
            }
            if !of.is_empty() {
                api_scopes.push(api_scope.value.clone());
                named.extend(of.into_iter().cloned());
            } else {
                ctx.report.error(
                    api_scope.referenced,
                    format!("api scope `{}` is not declared by any API", api_scope.value),
                    format!(
                        "\"API name:scope name\", one of: {}",
                        names(declared.iter().map(|(a, s)| format!("{a}:{s}")))
                    ),
                );
            }
        }
        named.sort();
        named.dedup();
        mappings.push(ScopeMapping {
            auth_server: Arc::from(server.value.as_str()),
            token_scope: scope.value.clone(),
            api_scopes,
            apis: named,
        });
    }
    warn_unreachable_scopes(ctx, apis, &mappings);
    mappings
}

/// An API no mapping names grants its scopes by a token's scopes of the
/// same names; a token scope that a mapping of its auth server sends to
/// another API (`read` → `Shop:Read`) then grants this API's `read` too,
/// which its mapping did not say: told where the scope is named.
fn warn_literal_reading(
    ctx: &mut Ctx,
    api: &S<raw::Api>,
    (name, server): (&str, &str),
    mapped: &HashMap<(&str, &str), &ScopeMapping>,
) {
    for scope in &api.value.scopes {
        let Some(scope) = &scope.value.name else {
            continue;
        };
        let Some(mapping) = mapped.get(&(server, scope.value.as_str())) else {
            continue;
        };
        ctx.report.warning(
            scope.referenced,
            format!(
                "token scope `{}` of auth server `{server}` is mapped to {}, and also grants scope `{}` of API `{name}` by its name (no mapping names the API): map `{name}:{}` explicitly, or rename the scope",
                scope.value,
                mapping.api_scopes.join(", "),
                scope.value,
                scope.value
            ),
        );
    }
}

/// Where a mapping names the API (one of the API's auth server, or of
/// another for any version of it), a token's own scope no longer grants
/// the API's scopes: one that no mapping of that
/// server grants can be granted by no token, and its resources are
/// refused to every caller (403 for ever). Told where the scope is named.
fn warn_unreachable_scopes(ctx: &mut Ctx, apis: &[S<raw::Api>], mappings: &[ScopeMapping]) {
    // Indexed once: a webMethods export may carry thousands of each.
    let mut named: HashSet<(&str, &str)> = HashSet::new();
    let mut named_by_any: HashSet<&str> = HashSet::new();
    let mut granted: HashSet<(&str, &str)> = HashSet::new();
    // Each auth server's token scopes a mapping sends somewhere.
    let mut mapped: HashMap<(&str, &str), &ScopeMapping> = HashMap::new();
    for mapping in mappings {
        let server = &*mapping.auth_server;
        named.extend(mapping.apis.iter().map(|api| (server, api.as_str())));
        named_by_any.extend(mapping.apis.iter().map(String::as_str));
        granted.extend(mapping.api_scopes.iter().map(|s| (server, s.as_str())));
        mapped.insert((server, mapping.token_scope.as_str()), mapping);
    }
    for api in apis {
        let Some(name) = api.value.name.as_ref().map(|n| &n.value) else {
            continue;
        };
        let Some(server) = api
            .value
            .authentication
            .as_ref()
            .and_then(|a| a.value.auth_server.as_ref())
        else {
            continue;
        };
        let server_name = server.value.as_str();
        // Any mapping naming the API (of any server, to any version) ends
        // the literal reading of its scope names.
        let own = named.contains(&(server_name, name.as_str()));
        if !own && !named_by_any.contains(name.as_str()) {
            warn_literal_reading(ctx, api, (name, &server.value), &mapped);
            continue;
        }
        for scope in &api.value.scopes {
            let Some(scope) = &scope.value.name else {
                continue;
            };
            let api_scope = format!("{name}:{}", scope.value);
            if granted.contains(&(server_name, api_scope.as_str())) {
                continue;
            }
            let whose = if own {
                format!("whose mappings name API `{name}`")
            } else {
                format!("while mappings of other auth servers name API `{name}`")
            };
            ctx.report.warning(
                scope.referenced,
                format!(
                    "API scope `{}` is granted by no scope mapping of auth server `{}`, {whose} (so a token's own scope `{}` does not grant it): no token may call its resources",
                    scope.value, server.value, scope.value
                ),
            );
        }
    }
}
