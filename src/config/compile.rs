//! Raw model → immutable [`Snapshot`]. Every value is interpreted and checked
//! here (with its file position when it is wrong) and every cross-reference
//! resolved, so the request path never parses or looks anything up by string
//! that could have been decided once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::{HeaderName, HeaderValue, Method};

use super::diagnostic::Report;
use super::raw::{self, Location, Scalar, S};
use super::resolve::{self, Env};
use super::snapshot::*;
use super::{template, Secret};

/// Reads typed values out of raw scalars, reporting what is wrong.
pub struct Ctx<'a> {
    pub report: &'a mut Report,
    pub env: &'a Env,
    pub base: PathBuf,
    pub files: Vec<PathBuf>,
}

impl Ctx<'_> {
    fn at<T>(value: &S<T>) -> Location {
        value.referenced
    }

    pub fn duration(
        &mut self,
        value: &Option<S<Scalar>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        resolve::duration(&value.value.0).unwrap_or_else(|| {
            self.report.error(
                Self::at(value),
                format!("{key}: `{}` is not a duration", value.value.0),
                "\"30s\", \"5m\", \"1h\", \"250ms\" or integer seconds",
            );
            default
        })
    }

    fn size(&mut self, value: &Option<S<Scalar>>, key: &str, default: u64) -> u64 {
        let Some(value) = value else { return default };
        resolve::size(&value.value.0).unwrap_or_else(|| {
            self.report.error(
                Self::at(value),
                format!("{key}: `{}` is not a size", value.value.0),
                "\"32KiB\", \"10MiB\" or integer bytes",
            );
            default
        })
    }

    pub fn boolean(&mut self, value: &Option<S<Scalar>>, key: &str, default: bool) -> bool {
        let Some(value) = value else { return default };
        resolve::boolean(&value.value.0).unwrap_or_else(|| {
            self.report.error(
                Self::at(value),
                format!("{key}: `{}` is not a boolean", value.value.0),
                "true or false",
            );
            default
        })
    }

    pub fn number<T: FromStr>(&mut self, value: &S<Scalar>, key: &str, allowed: &str) -> Option<T> {
        let parsed = value.value.0.trim().parse::<T>().ok();
        if parsed.is_none() {
            self.report.error(
                Self::at(value),
                format!("{key}: `{}` is not valid", value.value.0),
                allowed,
            );
        }
        parsed
    }

    pub fn text(&mut self, value: &Option<S<Scalar>>) -> Option<String> {
        value.as_ref().map(|v| v.value.0.clone())
    }

    pub fn secret(&mut self, value: &S<Scalar>, key: &str) -> Option<Secret> {
        match resolve::secret(&value.value.0, self.env, &self.base) {
            Ok((secret, file)) => {
                self.files.extend(file);
                Some(secret)
            }
            Err(problem) => {
                self.report.error(
                    Self::at(value),
                    format!("{key}: {problem}"),
                    "a value, \"{encoded}BASE64\", \"${env:NAME}\" or \"${file:/path}\"",
                );
                None
            }
        }
    }

    pub fn required<'v, T>(
        &mut self,
        value: &'v Option<S<T>>,
        at: Location,
        key: &str,
    ) -> Option<&'v S<T>> {
        if value.is_none() {
            self.report.error(at, format!("`{key}` is missing"), "");
        }
        value.as_ref()
    }

    pub fn path(&mut self, written: &str) -> PathBuf {
        resolve::relative(&self.base, written)
    }
}

/// Compiles a raw configuration. `source` is the file it came from.
pub fn compile(
    file: &raw::File,
    report: &mut Report,
    env: &Env,
    source: &Path,
    generation: u64,
) -> Option<Snapshot> {
    let base = source
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut ctx = Ctx {
        report,
        env,
        base,
        files: vec![source.to_path_buf()],
    };
    let listen = listen(&mut ctx, file);
    let tls = tls(&mut ctx, file, &listen);
    let admin = admin(&mut ctx, &file.admin);
    let trusted_proxies = trusted_proxies(&mut ctx, &file.trusted_proxies);
    let limits = limits(&mut ctx, &file.limits);
    let timeouts = timeouts(&mut ctx, &file.timeouts);
    let auth_servers = auth_servers(&mut ctx, &file.security_settings.auth_servers);
    let aliases = aliases(&mut ctx, &file.security_settings.aliases);
    let authorization_server = file
        .authorization_server
        .as_ref()
        .and_then(|raw| super::authz_compile::compile(&mut ctx, raw, &file.ports));
    let scope_mappings = scope_mappings(&mut ctx, &file.scope_mappings, &auth_servers, &file.apis);
    let apis = super::api_compile::compile_all(
        &mut ctx,
        &file.apis,
        &super::api_compile::Refs {
            auth_servers: &auth_servers,
            aliases: &aliases,
            scope_mappings: &scope_mappings,
            authorization_server: authorization_server.is_some(),
        },
    );
    let central = file.central.as_ref().map(|c| central(&mut ctx, c));
    let api_gateway = file
        .api_gateway
        .as_ref()
        .and_then(|g| api_gateway(&mut ctx, g));
    if ctx.report.has_errors() {
        return None;
    }
    let files = std::mem::take(&mut ctx.files);
    Some(Snapshot {
        generation,
        loaded_at: SystemTime::now(),
        source: source.to_path_buf(),
        source_text: Arc::from(""),
        files,
        listen,
        tls,
        admin,
        trusted_proxies,
        limits,
        timeouts,
        auth_servers,
        aliases,
        scope_mappings,
        apis,
        authorization_server: authorization_server.map(Arc::new),
        central,
        api_gateway,
    })
}

fn port(ctx: &mut Ctx, value: &Option<S<Scalar>>, key: &str) -> Option<u16> {
    value
        .as_ref()
        .and_then(|v| ctx.number::<u16>(v, key, "a port number 0-65535"))
}

fn ip(ctx: &mut Ctx, value: &Option<S<Scalar>>, key: &str, default: IpAddr) -> IpAddr {
    match value {
        None => default,
        Some(v) if v.value.0 == "localhost" => IpAddr::from([127, 0, 0, 1]),
        Some(v) => ctx
            .number::<IpAddr>(v, key, "an IP address such as 0.0.0.0 or 127.0.0.1")
            .unwrap_or(default),
    }
}

fn listen(ctx: &mut Ctx, file: &raw::File) -> Listen {
    let bind = ip(
        ctx,
        &file.ports.bind,
        "ports.bind",
        IpAddr::from([0, 0, 0, 0]),
    );
    let admin_bind = ip(
        ctx,
        &file.admin.bind,
        "admin.bind",
        IpAddr::from([127, 0, 0, 1]),
    );
    let http = port(ctx, &file.ports.http, "ports.http");
    let https = port(ctx, &file.ports.https, "ports.https");
    let admin = match &file.admin.port {
        Some(_) => port(ctx, &file.admin.port, "admin.port"),
        None => Some(9485),
    };
    Listen {
        http: http.map(|p| SocketAddr::new(bind, p)),
        https: https.map(|p| SocketAddr::new(bind, p)),
        admin: admin.map(|p| SocketAddr::new(admin_bind, p)),
    }
}

fn tls(ctx: &mut Ctx, file: &raw::File, listen: &Listen) -> Option<TlsMaterial> {
    let Some(section) = &file.tls else {
        if let (Some(https), Some(_)) = (&file.ports.https, listen.https) {
            ctx.report.error(
                https.referenced,
                "ports.https is set but there is no `tls:` section",
                "a `tls:` section with `certificate` and `key`, or no ports.https",
            );
        }
        return None;
    };
    let at = section.referenced;
    let cert = ctx.required(&section.value.certificate, at, "tls.certificate")?;
    let key = ctx.required(&section.value.key, at, "tls.key")?;
    let certificate_path = ctx.path(&cert.value.0);
    let key_path = ctx.path(&key.value.0);
    ctx.files.push(certificate_path.clone());
    ctx.files.push(key_path.clone());
    let certificate_pem = read_pem(ctx, cert, &certificate_path, "CERTIFICATE")?;
    let key_pem = read_pem(ctx, key, &key_path, "PRIVATE KEY")?;
    Some(TlsMaterial {
        certificate_path,
        key_path,
        certificate_pem,
        key_pem: Secret::new(String::from_utf8_lossy(&key_pem).into_owned()),
    })
}

pub(super) fn read_pem(ctx: &mut Ctx, at: &S<Scalar>, path: &Path, label: &str) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if String::from_utf8_lossy(&bytes).contains(&format!("{label}-----")) => {
            Some(bytes)
        }
        Ok(_) => {
            ctx.report.error(
                at.referenced,
                format!("{} is not a PEM {label}", path.display()),
                "a PEM file",
            );
            None
        }
        Err(e) => {
            ctx.report.error(
                at.referenced,
                format!("cannot read {}: {e}", path.display()),
                "a readable PEM file",
            );
            None
        }
    }
}

fn admin(ctx: &mut Ctx, admin: &raw::Admin) -> Admin {
    let credentials = match (&admin.user, &admin.password) {
        (Some(user), Some(password)) => ctx
            .secret(password, "admin.password")
            .map(|p| (user.value.0.clone(), p)),
        (Some(user), None) => {
            ctx.report.error(
                user.referenced,
                "admin.user is set without admin.password",
                "both or neither",
            );
            None
        }
        (None, Some(password)) => {
            ctx.report.error(
                password.referenced,
                "admin.password is set without admin.user",
                "both or neither",
            );
            None
        }
        (None, None) => None,
    };
    Admin { credentials }
}

fn trusted_proxies(ctx: &mut Ctx, list: &[S<String>]) -> Vec<ipnet::IpNet> {
    list.iter()
        .filter_map(|cidr| {
            let text = cidr.value.trim();
            let parsed = ipnet::IpNet::from_str(text)
                .ok()
                .or_else(|| IpAddr::from_str(text).ok().map(ipnet::IpNet::from));
            if parsed.is_none() {
                ctx.report.error(
                    cidr.referenced,
                    format!("trusted_proxies: `{text}` is not a CIDR"),
                    "CIDRs such as 10.0.0.0/8 or 127.0.0.1/32",
                );
            }
            parsed
        })
        .collect()
}

fn limits(ctx: &mut Ctx, raw: &raw::Limits) -> Limits {
    let max_headers = raw
        .max_headers
        .as_ref()
        .and_then(|v| ctx.number::<usize>(v, "limits.max_headers", "a positive integer"))
        .unwrap_or(100);
    let max_connections = raw
        .max_connections
        .as_ref()
        .and_then(|v| ctx.number::<usize>(v, "limits.max_connections", "a positive integer"))
        .unwrap_or(10_000);
    Limits {
        max_header_bytes: ctx.size(&raw.max_header_bytes, "limits.max_header_bytes", 32 << 10)
            as usize,
        max_headers,
        max_uri: ctx.size(&raw.max_uri, "limits.max_uri", 8 << 10) as usize,
        max_body: ctx.size(&raw.max_body, "limits.max_body", 10 << 20),
        max_connections,
    }
}

fn timeouts(ctx: &mut Ctx, raw: &raw::Timeouts) -> Timeouts {
    Timeouts {
        header_read: ctx.duration(
            &raw.header_read,
            "timeouts.header_read",
            Duration::from_secs(10),
        ),
        idle: ctx.duration(&raw.idle, "timeouts.idle", Duration::from_secs(60)),
        upstream_connect: ctx.duration(
            &raw.upstream_connect,
            "timeouts.upstream_connect",
            Duration::from_secs(2),
        ),
        drain: ctx.duration(&raw.drain, "timeouts.drain", Duration::from_secs(30)),
    }
}

fn warn_ignored(ctx: &mut Ctx, name: &str, value: &S<raw::Ignored>) {
    if !value.value.is_null {
        ctx.report.warning(
            value.referenced,
            format!("`{name}` is a webMethods setting that has no effect here; ignored"),
        );
    }
}

fn auth_servers(ctx: &mut Ctx, list: &[S<raw::AuthServer>]) -> BTreeMap<Arc<str>, Arc<AuthServer>> {
    let mut servers = BTreeMap::new();
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
        let remote = raw
            .remote_introspection
            .as_ref()
            .and_then(|r| remote_introspection(ctx, r));
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

fn url(ctx: &mut Ctx, value: &S<Scalar>, key: &str) -> Option<String> {
    let text = value.value.0.trim();
    match http::Uri::from_str(text) {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            Some(text.to_owned())
        }
        _ => {
            ctx.report.error(
                value.referenced,
                format!("{key}: `{text}` is not an http(s) URL"),
                "http://host[:port]/path or https://…",
            );
            None
        }
    }
}

fn local_introspection(
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
    let trust_store = raw
        .trust_store_alias
        .as_ref()
        .and_then(|t| t.value.as_ref().map(|p| (t.referenced, p)))
        .map(|(at, p)| {
            let path = ctx.path(p);
            if !path.is_file() {
                ctx.report.error(
                    at,
                    format!("trustStoreAlias: cannot read CA bundle {}", path.display()),
                    "null, or the path of a PEM CA bundle",
                );
            }
            ctx.files.push(path.clone());
            path
        });
    Some(LocalIntrospection {
        issuer,
        jwks_uri,
        audience: ctx.text(&raw.audience),
        clock_skew,
        accept_jwt_typ: ctx.boolean(&raw.accept_jwt_typ, "accept_jwt_typ", false),
        trust_store,
    })
}

fn remote_introspection(
    ctx: &mut Ctx,
    entry: &S<raw::RemoteIntrospection>,
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
    let cache_ttl = ctx.duration(&raw.cache_ttl, "cache_ttl", Duration::from_secs(60));
    let negative_cache_ttl = ctx.duration(
        &raw.negative_cache_ttl,
        "negative_cache_ttl",
        Duration::from_secs(5),
    );
    Some(RemoteIntrospection {
        endpoint: endpoint?,
        client_id: client_id?,
        client_secret: client_secret?,
        client_auth,
        cache_ttl,
        negative_cache_ttl,
    })
}

fn aliases(ctx: &mut Ctx, list: &[S<raw::Alias>]) -> BTreeMap<String, Alias> {
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
                user.zip(password).map(|(u, p)| Alias::Basic {
                    username: u.value.0.clone(),
                    password: p,
                })
            }
            "bearer" => ctx
                .required(&raw.token, entry.referenced, "token")
                .and_then(|t| ctx.secret(t, "token"))
                .map(|token| Alias::Bearer { token }),
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

fn scope_mappings(
    ctx: &mut Ctx,
    list: &[S<raw::ScopeMapping>],
    auth_servers: &BTreeMap<Arc<str>, Arc<AuthServer>>,
    apis: &[S<raw::Api>],
) -> Vec<ScopeMapping> {
    let declared: HashSet<(String, String)> = apis
        .iter()
        .flat_map(|api| {
            let name = api
                .value
                .name
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_default();
            api.value.scopes.iter().filter_map(move |s| {
                s.value
                    .name
                    .as_ref()
                    .map(|n| (name.clone(), n.value.clone()))
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut mappings = Vec::new();
    for entry in list {
        let raw = &entry.value;
        let server = ctx.required(&raw.auth_server, entry.referenced, "auth_server");
        let scope = ctx.required(&raw.scope, entry.referenced, "scope");
        let (Some(server), Some(scope)) = (server, scope) else {
            continue;
        };
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
        for api_scope in &raw.api_scopes {
            let known = api_scope
                .value
                .rsplit_once(':')
                .is_some_and(|(api, s)| declared.contains(&(api.to_owned(), s.to_owned())));
            if known {
                api_scopes.push(api_scope.value.clone());
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
        mappings.push(ScopeMapping {
            auth_server: Arc::from(server.value.as_str()),
            token_scope: scope.value.clone(),
            api_scopes,
        });
    }
    mappings
}

fn central(ctx: &mut Ctx, central: &S<raw::Central>) -> Central {
    let users = central
        .value
        .users
        .iter()
        .filter_map(|u| {
            let user = ctx
                .required(&u.value.user, u.referenced, "user")?
                .value
                .clone();
            let password = ctx.required(&u.value.password, u.referenced, "password")?;
            ctx.secret(password, "password").map(|p| (user, p))
        })
        .collect::<Vec<_>>();
    if users.is_empty() {
        ctx.report.error(
            central.referenced,
            "central: has no users, so no microgateway could download from it",
            "at least one { user, password }",
        );
    }
    Central { users }
}

/// The `api_gateway:` section alone, so a downstream can download its
/// settings before the rest of the file is compiled.
pub fn api_gateway_only(
    file: &raw::File,
    report: &mut Report,
    env: &Env,
    source: &Path,
) -> Option<ApiGateway> {
    let mut ctx = Ctx {
        report,
        env,
        base: source
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        files: Vec::new(),
    };
    let entry = file.api_gateway.as_ref()?;
    api_gateway(&mut ctx, entry)
}

fn api_gateway(ctx: &mut Ctx, entry: &S<raw::ApiGateway>) -> Option<ApiGateway> {
    let raw = &entry.value;
    if let Some(dir) = &raw.dir {
        warn_ignored(ctx, "dir", dir);
    }
    let download_settings = ctx.boolean(&raw.download_settings, "download_settings", false);
    let download_apis = ctx.boolean(&raw.download_apis, "download_apis", false);
    let poll_interval = ctx.duration(&raw.poll_interval, "poll_interval", Duration::from_secs(30));
    let cache_file = raw
        .cache_file
        .as_ref()
        .map(|c| c.value.0.clone())
        .unwrap_or_else(|| "data/downloaded-settings.yaml".to_owned());
    let cache_file = ctx.path(&cache_file);
    // Without a download the central is never contacted, so a section that
    // only tunes polling (say, from an MCGW_ variable) needs no credentials.
    let downloads = download_settings || download_apis;
    if !downloads && (raw.url.is_none() || raw.user.is_none() || raw.password.is_none()) {
        return None;
    }
    let at = entry.referenced;
    let url = ctx
        .required(&raw.url, at, "api_gateway.url")
        .and_then(|u| url(ctx, u, "api_gateway.url"));
    let user = ctx
        .required(&raw.user, at, "api_gateway.user")
        .map(|u| u.value.0.clone());
    let password = ctx
        .required(&raw.password, at, "api_gateway.password")
        .and_then(|p| ctx.secret(p, "api_gateway.password"));
    Some(ApiGateway {
        url: url?,
        user: user?,
        password: password?,
        download_settings,
        download_apis,
        apis: raw.apis.iter().map(|a| a.value.clone()).collect(),
        poll_interval,
        cache_file,
    })
}

/// A comma-separated list for "allowed:" texts.
pub fn names(items: impl Iterator<Item = String>) -> String {
    let mut items: Vec<String> = items.collect();
    items.sort();
    if items.is_empty() {
        "(none defined)".to_owned()
    } else {
        items.join(", ")
    }
}

/// `Basic base64(user:password)` (RFC 7617).
pub fn basic_header(user: &str, password: &Secret) -> Option<HeaderValue> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.expose()));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

pub(super) fn header_name(ctx: &mut Ctx, name: &S<String>) -> Option<HeaderName> {
    let parsed = HeaderName::from_bytes(name.value.as_bytes()).ok();
    if parsed.is_none() {
        ctx.report.error(
            name.referenced,
            format!("`{}` is not a valid header name", name.value),
            "an RFC 9110 token such as X-Client-Id",
        );
    }
    parsed
}

pub(super) fn method(text: &str) -> Option<Method> {
    match text {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => {
            Method::from_str(text).ok()
        }
        _ => None,
    }
}

pub(super) fn value_template(ctx: &mut Ctx, value: &S<Scalar>) -> Option<ValueTemplate> {
    match template::parse(&value.value.0) {
        Ok(parsed) => Some(parsed),
        Err(problem) => {
            ctx.report
                .error(value.referenced, problem, template::ALLOWED);
            None
        }
    }
}

pub(super) type GrantTable = HashMap<Arc<str>, Vec<Vec<String>>>;
