//! Compiling `authorization_server:` with the rules of DESIGN: unique client
//! ids, no public client with client credentials, redirect URIs where the
//! browser flows need them (https, or http only on loopback), no
//! never-expiring JWTs, an approval page template that compiles, no
//! client-credentials client named like a user.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::authz::{
    Branding, Client, GrantType, PgTls, PostgresStore, RedirectUri, ScopeDef, Settings,
    TokenFormat, User,
};
use super::context::{Ctx, MAX_DURATION};
use super::diagnostic::{Diagnostic, Origin, Severity};
use super::plain_http::{self, ClearStore};
use super::raw::{self, Location, Scalar, S};
use super::signing_key;

pub fn compile(
    ctx: &mut Ctx,
    entry: &S<raw::AuthorizationServer>,
    ports: &raw::Ports,
) -> Option<Settings> {
    let raw = &entry.value;
    let token_format = match raw
        .token_format
        .as_ref()
        .map(|f| (f.value.0.as_str(), f.referenced))
    {
        None | Some(("jwt", _)) => TokenFormat::Jwt,
        Some(("opaque", _)) => TokenFormat::Opaque,
        Some((other, at)) => {
            ctx.report.error(
                at,
                format!("token_format `{other}` is not supported"),
                "jwt or opaque",
            );
            TokenFormat::Jwt
        }
    };
    let default_port = ports
        .http
        .as_ref()
        .map(|p| p.value.0.clone())
        .unwrap_or_else(|| "4485".into());
    let issuer = match &raw.issuer {
        Some(written) => issuer(ctx, written),
        None => format!("http://localhost:{default_port}"),
    };
    let signing_key = ctx
        .text(&raw.signing_key)
        .unwrap_or_else(|| "data/signing-key.pem".into());
    let signing_key_path = ctx.path(&signing_key);
    let (store_path, postgres) = store(ctx, raw);
    // A PostgreSQL store keeps the keys itself: the file is not read.
    if postgres.is_none() {
        let at = raw
            .signing_key
            .as_ref()
            .map_or(entry.referenced, |k| k.referenced);
        signing_key_file(ctx, at, &signing_key_path);
    }
    let default_lifetime = lifetime(
        ctx,
        &raw.token_lifetime,
        Some(Duration::from_secs(3600)),
        token_format,
    );
    let defaults = ClientDefaults {
        token_lifetime: default_lifetime,
        refresh_limit: refresh_limit(ctx, &raw.refresh_limit, 0),
        // Named by its path: a value from `MCGW_…` is then reported as the
        // variable's.
        refresh_reuse_interval: reuse_interval(
            ctx,
            &raw.refresh_reuse_interval,
            "authorization_server.refresh_reuse_interval",
            Duration::ZERO,
        ),
    };
    let cleanup = ctx.duration(&raw.cleanup_interval, "cleanup_interval", CLEANUP_INTERVAL);
    let approval_page = raw
        .approval_page
        .as_ref()
        .map(|p| (ctx.path(&p.value.0), p.referenced));
    let approval_template = match &approval_page {
        Some((path, at)) => match ctx.read(path).and_then(super::load::utf8) {
            Ok(text) => approval_template(ctx, path, text),
            Err(e) => {
                ctx.report.error(
                    *at,
                    format!("cannot read approval page {}: {e}", path.display()),
                    "a readable HTML template",
                );
                None
            }
        },
        None => None,
    };
    let scopes: Vec<ScopeDef> = raw
        .scopes
        .iter()
        .filter_map(|s| {
            let name = ctx.required(&s.value.name, s.referenced, "name")?;
            ctx.scope_token(name);
            let name = name.value.clone();
            let description = s
                .value
                .description
                .as_ref()
                .map(|d| d.value.clone())
                .unwrap_or_default();
            Some(ScopeDef { name, description })
        })
        .collect();
    let users = users(ctx, &raw.users);
    let known_scopes: HashSet<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
    let mut clients = Vec::new();
    let mut ids = HashSet::new();
    for entry in &raw.clients {
        if let Some(client) = client(ctx, entry, &defaults, token_format, &known_scopes) {
            let at = entry
                .value
                .client_id
                .as_ref()
                .map(|c| c.referenced)
                .unwrap_or(entry.referenced);
            // RFC 9700 §4.15: a client-credentials token's `sub` is the
            // client id (RFC 9068 §2.2), a user's token's the username;
            // were they one name, the client's own token would speak for
            // that user upstream (`userName`) and at introspection.
            if client.allows(GrantType::ClientCredentials)
                && users.iter().any(|u| u.username == client.client_id)
            {
                ctx.report.error(
                    at,
                    format!(
                        "client_id `{}` of a client_credentials client is also a username: \
                         its tokens would speak for that user",
                        client.client_id
                    ),
                    "a client_id that no user has",
                );
            }
            if !ids.insert(client.client_id.clone()) {
                ctx.report.error(
                    at,
                    format!("client_id `{}` is defined twice", client.client_id),
                    "unique client ids",
                );
                continue;
            }
            clients.push(client);
        }
    }
    Some(Settings {
        issuer,
        token_format,
        signing_key_path,
        store_path,
        postgres,
        require_https: ctx.boolean(&raw.require_https, "require_https", false),
        authorization_code_lifetime: code_lifetime(ctx, &raw.authorization_code_lifetime),
        refresh_token_lifetime: refresh_lifetime(
            ctx,
            &raw.refresh_token_lifetime,
            // The longest access token a refresh would otherwise not outlive.
            clients
                .iter()
                .filter_map(|c| c.token_lifetime)
                .chain(default_lifetime)
                .max(),
        ),
        require_pkce: ctx.boolean(&raw.require_pkce, "require_pkce", false),
        cleanup_interval: (!cleanup.is_zero()).then_some(cleanup),
        approval_page: approval_page.map(|(p, _)| p),
        approval_template,
        branding: raw
            .branding
            .as_ref()
            .map(|b| branding(ctx, &b.value))
            .unwrap_or_default(),
        scopes,
        users,
        clients,
        audience: ctx.audience(&raw.audience, "authorization_server.audience"),
    })
}

const STORE_ALLOWED: &str =
    "sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE?sslmode=disable|require|verify-full";

/// An existing `signing_key` file must hold a key the authorization
/// server signs with, judged by the function it reads the file with: else
/// `check` passes what `start` refuses. A missing file is generated on
/// first start.
fn signing_key_file(ctx: &mut Ctx, at: Location, path: &Path) {
    let allowed = format!(
        "{}, or no file (one is generated on first start)",
        signing_key::KINDS
    );
    // Read through `ctx`: the file is followed like every file the
    // configuration names, missing or not.
    let pem = match ctx.read(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            let message = format!("signing_key: cannot read {}: {e}", path.display());
            ctx.report.error(at, message, allowed);
            return;
        }
    };
    if signing_key::parse(&pem).is_none() {
        ctx.report.error(
            at,
            format!(
                "signing_key: {} is not {}",
                path.display(),
                signing_key::KINDS
            ),
            allowed,
        );
    }
}

/// `store:` and `store_pool:`: the SQLite file, or the PostgreSQL database.
fn store(ctx: &mut Ctx, raw: &raw::AuthorizationServer) -> (PathBuf, Option<PostgresStore>) {
    let default_path = ctx.path("data/oauth.db");
    let postgres = match &raw.store {
        None => None,
        Some(store) => {
            let text = store.value.0.trim();
            if let Some(path) = text.strip_prefix("sqlite:").filter(|p| !p.is_empty()) {
                if let Some(pool) = &raw.store_pool {
                    ctx.report.error(
                        pool.referenced,
                        "store_pool is only for a PostgreSQL store",
                        "store: postgres://…",
                    );
                }
                return (ctx.path(path), None);
            }
            if text.starts_with("postgres://") || text.starts_with("postgresql://") {
                match postgres_url(ctx, text) {
                    Ok(pg) => {
                        unencrypted_postgres(ctx, raw, store, &pg);
                        Some(pg)
                    }
                    Err(problem) => {
                        ctx.report.error(
                            store.referenced,
                            format!("store: {problem}"),
                            STORE_ALLOWED,
                        );
                        None
                    }
                }
            } else {
                ctx.report.error(
                    store.referenced,
                    format!("store `{}` is not supported", redact_url(text)),
                    STORE_ALLOWED,
                );
                None
            }
        }
    };
    let Some(mut pg) = postgres else {
        let postgres_written = raw
            .store
            .as_ref()
            .is_some_and(|s| s.value.0.trim().starts_with("postgres"));
        if let Some(pool) = raw.store_pool.as_ref().filter(|_| !postgres_written) {
            ctx.report.error(
                pool.referenced,
                "store_pool is only for a PostgreSQL store",
                "store: postgres://…",
            );
        }
        return (default_path, None);
    };
    if let Some(pool) = &raw.store_pool {
        if let Some(max) = &pool.value.max_connections {
            match ctx.number::<usize>(
                max,
                "store_pool.max_connections",
                "an integer from 1 to 1024",
            ) {
                Some(n) if (1..=1024).contains(&n) => pg.max_connections = n,
                Some(_) => ctx.report.error(
                    max.referenced,
                    "store_pool.max_connections is out of range",
                    "an integer from 1 to 1024",
                ),
                None => {}
            }
        }
        let timeout = ctx.duration(
            &pool.value.connect_timeout,
            "store_pool.connect_timeout",
            pg.connect_timeout,
        );
        if timeout.is_zero() || timeout > Duration::from_secs(60) {
            let at = pool
                .value
                .connect_timeout
                .as_ref()
                .map_or(pool.referenced, |t| t.referenced);
            ctx.report.error(
                at,
                "store_pool.connect_timeout is out of range",
                "a duration from 1ms to 60s",
            );
        } else {
            pg.connect_timeout = timeout;
        }
    }
    (default_path, Some(pg))
}

/// `sslmode=disable` over TCP: the password (or what stands for it) and
/// every token and code the store holds cross the network in clear, so
/// only to a loopback host unless `allow_insecure_store: true`.
fn unencrypted_postgres(
    ctx: &mut Ctx,
    raw: &raw::AuthorizationServer,
    store: &S<Scalar>,
    pg: &PostgresStore,
) {
    // A Unix socket directory never leaves the machine.
    if pg.tls != PgTls::Disable || pg.host.starts_with('/') {
        return;
    }
    let shown = pg.display();
    let clear = ClearStore {
        key: "authorization_server.store",
        shown: &format!("{shown}?sslmode=disable"),
        what: "the store's password and tokens",
        encrypted: Some("sslmode=verify-full (or require)"),
    };
    plain_http::store(
        ctx,
        store.referenced,
        &pg.host,
        &raw.allow_insecure_store,
        clear,
    );
}

/// The URL with its password hidden, for diagnostics.
fn redact_url(text: &str) -> String {
    match (text.find("://"), text.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &text[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:****{}", &text[..scheme + 3], &text[at..]),
                None => text.to_owned(),
            }
        }
        _ => text.to_owned(),
    }
}

/// Where the query of a postgres URL (past its scheme) starts. A `?`
/// followed by the `@` that ends the user info, with no `/` between them,
/// is a character of the password (unencoded), and so is one inside the
/// password's `${…}`: taken for the query's start, part of the password
/// would be read, and quoted, as a parameter.
fn query_start(rest: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = rest[from..].find('?') {
        let q = from + found;
        let after = &rest[q + 1..];
        let in_user_info = after.find('@').is_some_and(|at| !after[..at].contains('/'));
        let in_reference = rest[..q].contains("${") && !rest[..q].contains('}');
        if !in_user_info && !in_reference {
            return Some(q);
        }
        from = q + 1;
    }
    None
}

/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…&sslrootcert=…&host=…]`.
/// The password may use the secrets syntax (`${env:NAME}`, `${file:/path}`,
/// `{encoded}…`) or be percent-encoded. Errors never quote the password.
fn postgres_url(ctx: &mut Ctx, text: &str) -> Result<PostgresStore, String> {
    let rest = text
        .strip_prefix("postgresql://")
        .or_else(|| text.strip_prefix("postgres://"))
        .ok_or("not a postgres:// URL")?;
    let (rest, query) = match query_start(rest) {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    let at = rest.rfind('@').ok_or("the URL names no user (USER@HOST)")?;
    let (userinfo, hostpart) = (&rest[..at], &rest[at + 1..]);
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let user = decode(user).ok_or("the user name is not valid percent-encoded UTF-8")?;
    if user.is_empty() {
        return Err("the URL names no user".into());
    }
    let password = match password {
        None => None,
        Some(p) if p.starts_with("${") || p.starts_with("{encoded}") => Some(
            super::resolve::secret(p, ctx.env, &ctx.base)
                .map(|(secret, file)| {
                    if let Some(content) = file {
                        ctx.note_read(content);
                    }
                    secret
                })
                .map_err(|problem| {
                    ctx.files
                        .extend(super::resolve::referenced_file(p, &ctx.base));
                    format!("password: {problem}")
                })?,
        ),
        // An empty secret, from any source, is an error.
        Some("") => return Err("the password is empty".into()),
        Some(p) => Some(super::Secret::new(
            decode(p).ok_or("the password is not valid percent-encoded UTF-8")?,
        )),
    };
    let (authority, dbname) = hostpart
        .split_once('/')
        .ok_or("the URL names no database (HOST/DATABASE)")?;
    let dbname = decode(dbname).ok_or("the database name is not valid percent-encoded UTF-8")?;
    if dbname.is_empty() {
        return Err("the URL names no database".into());
    }
    let (mut host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        (host.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => 5432,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port `{p}` is not a port number"))?,
    };
    let mut tls = PgTls::VerifyFull;
    let mut ca_bundle = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value).ok_or("a parameter is not valid percent-encoded UTF-8")?;
        match key {
            "sslmode" => {
                tls = match value.as_str() {
                    "disable" => PgTls::Disable,
                    "require" => PgTls::Require,
                    "verify-full" => PgTls::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode `{other}` is not supported (disable, require or verify-full)"
                        ))
                    }
                }
            }
            "sslrootcert" => {
                let path = ctx.path(&value);
                let pem = ctx
                    .read(&path)
                    .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
                if !String::from_utf8_lossy(&pem).contains("CERTIFICATE-----") {
                    return Err(format!(
                        "sslrootcert {} is not a PEM CERTIFICATE",
                        path.display()
                    ));
                }
                ca_bundle = Some(pem.into());
            }
            "host" if value.starts_with('/') => host = value,
            other => {
                return Err(format!(
                "URL parameter `{other}` is not supported (sslmode, sslrootcert, host=/socket/dir)"
            ))
            }
        }
    }
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    Ok(PostgresStore {
        host,
        port,
        user,
        password,
        dbname,
        tls,
        ca_bundle,
        max_connections: 16,
        connect_timeout: Duration::from_secs(2),
    })
}

fn decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The approval page must compile as a minijinja template; a syntax error
/// is reported at its line in the template file.
/// Longest brand name shown.
const MAX_BRAND_NAME: usize = 80;
/// Longest logo or support URL.
const MAX_BRAND_URL: usize = 2048;

/// `branding:`: a short name, `#rrggbb`, and https (or same-server) URLs.
fn branding(ctx: &mut Ctx, raw: &raw::Branding) -> Branding {
    let mut out = Branding::default();
    if let Some(name) = &raw.name {
        let text = name.value.trim();
        if text.is_empty()
            || text.chars().count() > MAX_BRAND_NAME
            || text.chars().any(char::is_control)
        {
            ctx.report.error(
                name.referenced,
                "branding.name is empty, too long or has control characters",
                format!("1 to {MAX_BRAND_NAME} characters of text"),
            );
        } else {
            out.name = Some(text.to_owned());
        }
    }
    if let Some(color) = &raw.primary_color {
        let text = color.value.trim();
        match parse_color(text) {
            Some(rgb) => {
                out.primary_color = Some(text.to_ascii_lowercase());
                out.on_primary_color = Some(on_color(rgb).to_owned());
            }
            None => ctx.report.error(
                color.referenced,
                format!("branding.primary_color `{text}` is not a #rrggbb colour"),
                "#rrggbb, e.g. #1f5fbf",
            ),
        }
    }
    if let Some(logo) = &raw.logo_url {
        match brand_url(&logo.value) {
            Some(origin) => {
                out.logo_url = Some(logo.value.trim().to_owned());
                out.logo_origin = Some(origin.unwrap_or_else(|| "'self'".to_owned()));
            }
            None => ctx.report.error(
                logo.referenced,
                "branding.logo_url is not an https URL or a path on this server",
                format!("https://HOST/PATH or /PATH, at most {MAX_BRAND_URL} characters"),
            ),
        }
    }
    if let Some(support) = &raw.support_url {
        match brand_url(&support.value) {
            Some(_) => out.support_url = Some(support.value.trim().to_owned()),
            None => ctx.report.error(
                support.referenced,
                "branding.support_url is not an https URL or a path on this server",
                format!("https://HOST/PATH or /PATH, at most {MAX_BRAND_URL} characters"),
            ),
        }
    }
    out
}

fn parse_color(text: &str) -> Option<(u8, u8, u8)> {
    let hex = text.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let channel = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    Some((channel(0)?, channel(2)?, channel(4)?))
}

/// Black or white text on `rgb`, by WCAG relative luminance.
fn on_color((r, g, b): (u8, u8, u8)) -> &'static str {
    let linear = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let luminance = 0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b);
    // Contrast with white (1.05 / (L + .05)) against black ((L + .05) / .05).
    if 1.05 / (luminance + 0.05) >= (luminance + 0.05) / 0.05 {
        "#ffffff"
    } else {
        "#000000"
    }
}

/// `Some(Some(origin))` for an `https://` URL, `Some(None)` for a path on
/// this server, `None` when it is neither (or too long, or has characters
/// a CSP source or an HTML attribute should not carry).
fn brand_url(text: &str) -> Option<Option<String>> {
    let text = text.trim();
    let plain = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '<' | '>' | '\\' | '`');
    if text.is_empty() || text.len() > MAX_BRAND_URL || !text.chars().all(plain) {
        return None;
    }
    if text.starts_with('/') {
        return (!text.starts_with("//")).then_some(None);
    }
    let uri: http::Uri = text.parse().ok()?;
    if uri.scheme_str() != Some("https") {
        return None;
    }
    let authority = uri.authority()?.as_str();
    if authority.contains('@') || authority.is_empty() {
        return None;
    }
    let host_ok = authority
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    host_ok.then(|| Some(format!("https://{}", authority.to_ascii_lowercase())))
}

fn approval_template(ctx: &mut Ctx, path: &Path, text: String) -> Option<String> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    let name = path.display().to_string();
    let error = match env.template_from_named_str(&name, &text) {
        Ok(_) => return Some(text),
        Err(error) => error,
    };
    let problem = error.detail().unwrap_or("syntax error").to_owned();
    ctx.report.push(Diagnostic {
        severity: Severity::Error,
        origin: Origin::File {
            path: Arc::from(path),
            line: error.line().unwrap_or(1) as u64,
            column: 1,
        },
        message: format!("approval page template does not compile: {problem}"),
        allowed: Some(
            "a minijinja (Jinja2) template; see config/templates/approval.html".to_owned(),
        ),
    });
    None
}

/// The longest an authorization code may live: RFC 6749 §4.1.2 asks for
/// at most 10 minutes. Also the default.
const MAX_CODE_LIFETIME: Duration = Duration::from_secs(600);

/// `authorization_code_lifetime`: 1s to 10 minutes. Codes expire on whole
/// seconds, so one that lives less than a second could never be redeemed.
fn code_lifetime(ctx: &mut Ctx, value: &Option<S<Scalar>>) -> Duration {
    let key = "authorization_code_lifetime";
    let lifetime = ctx.duration(value, key, MAX_CODE_LIFETIME);
    match value {
        Some(at) if !(Duration::from_secs(1)..=MAX_CODE_LIFETIME).contains(&lifetime) => {
            ctx.report.error(
                at.referenced,
                format!("{key}: `{}` is not between 1s and 600s", at.value.0),
                "a duration from 1s to 600s (RFC 6749 §4.1.2: at most 10 minutes)",
            );
            MAX_CODE_LIFETIME
        }
        _ => lifetime,
    }
}

/// How often expired tokens and codes are removed when `cleanup_interval`
/// is not written: an hour, so that a store nobody cleans by hand stays
/// the size of what is live (`0` turns it off).
const CLEANUP_INTERVAL: Duration = Duration::from_secs(3600);

/// How long a refresh token family lives by default: 30 days, as Ory
/// Hydra's 720h.
const REFRESH_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// `refresh_token_lifetime`: at least a minute, and longer than the
/// longest access token lifetime (the server's or a client's), which a
/// refresh would otherwise not outlive. Not written, 30 days, or that
/// longest lifetime when it is longer.
fn refresh_lifetime(
    ctx: &mut Ctx,
    value: &Option<S<Scalar>>,
    token_lifetime: Option<Duration>,
) -> Duration {
    let key = "refresh_token_lifetime";
    let lifetime = ctx.duration(value, key, REFRESH_LIFETIME);
    // Token lifetimes are at most `MAX_DURATION`: the second added to the
    // longest cannot overflow, and saturates were it ever to.
    let floor = token_lifetime.map_or(Duration::ZERO, |t| t.saturating_add(Duration::from_secs(1)));
    let Some(at) = value else {
        return lifetime.max(floor);
    };
    if lifetime < Duration::from_secs(60) || lifetime < floor {
        ctx.report.error(
            at.referenced,
            format!(
                "{key}: `{}` is shorter than a minute or than token_lifetime",
                at.value.0
            ),
            "a duration of at least 1m and longer than token_lifetime, up to 365d",
        );
        return REFRESH_LIFETIME;
    }
    lifetime
}

fn lifetime(
    ctx: &mut Ctx,
    value: &Option<S<Scalar>>,
    default: Option<Duration>,
    format: TokenFormat,
) -> Option<Duration> {
    let Some(v) = value else { return default };
    if v.value.0.trim() == "-1" {
        if format == TokenFormat::Jwt {
            ctx.report.error(
                v.referenced,
                "token_lifetime -1 (never expires) with token_format jwt",
                "a positive lifetime for JWTs, or token_format: opaque",
            );
        }
        return None;
    }
    // Tokens expire on whole seconds: less than one would be born expired.
    // More than a year is refused as every other duration is: the expiry
    // is the clock plus the lifetime, in the store and in a JWT's `exp`.
    match super::resolve::duration(&v.value.0) {
        Some(d) if d > MAX_DURATION => {
            ctx.report.error(
                v.referenced,
                format!("token_lifetime: `{}` is longer than 365d", v.value.0),
                "from 1s to 365d, or -1 for never (opaque only)",
            );
            default
        }
        Some(d) if d.as_secs() >= 1 => Some(d),
        _ => {
            ctx.report.error(
                v.referenced,
                format!("token_lifetime: `{}` is not valid", v.value.0),
                "seconds (e.g. 3600), a duration (\"1h\"), or -1 for never (opaque only)",
            );
            default
        }
    }
}

/// The longest `refresh_reuse_interval`: long enough for a client to
/// retry a refresh whose answer was lost, short enough that reuse of a
/// stolen rotated token is still detected (RFC 9700 §4.14.2) once it has
/// passed.
const MAX_REUSE_INTERVAL: Duration = Duration::from_secs(300);

/// `refresh_reuse_interval`: whole seconds (the server's clock counts
/// them) from 0s to 5m.
fn reuse_interval(
    ctx: &mut Ctx,
    value: &Option<S<Scalar>>,
    key: &str,
    default: Duration,
) -> Duration {
    let Some(at) = value else { return default };
    match super::resolve::duration(&at.value.0) {
        Some(interval) if interval <= MAX_REUSE_INTERVAL && interval.subsec_nanos() == 0 => {
            interval
        }
        _ => {
            ctx.report.error(
                at.referenced,
                format!("{key}: `{}` is not a duration from 0s to 5m", at.value.0),
                "whole seconds from 0s (off: reuse always revokes the family) to 5m, e.g. 30s",
            );
            default
        }
    }
}

fn refresh_limit(ctx: &mut Ctx, value: &Option<S<Scalar>>, default: u32) -> u32 {
    value
        .as_ref()
        .and_then(|v| {
            ctx.number::<u32>(
                v,
                "refresh_limit",
                "0 (no refresh token) or a positive number of refreshes",
            )
        })
        .unwrap_or(default)
}

fn users(ctx: &mut Ctx, list: &[S<raw::User>]) -> Vec<User> {
    let mut seen = HashSet::new();
    list.iter()
        .filter_map(|u| {
            let name = ctx.required(&u.value.username, u.referenced, "username")?;
            let hash = ctx.required(&u.value.password_hash, u.referenced, "password_hash")?;
            if let Err(problem) = super::password_hashes::parse(&hash.value) {
                ctx.report.error(
                    hash.referenced,
                    problem.to_string(),
                    super::password_hashes::ALLOWED,
                );
                return None;
            }
            if !seen.insert(name.value.clone()) {
                ctx.report.error(
                    name.referenced,
                    format!("user `{}` is defined twice", name.value),
                    "unique usernames",
                );
                return None;
            }
            Some(User {
                username: name.value.clone(),
                password_hash: hash.value.clone(),
            })
        })
        .collect()
}

/// What a client inherits from the server's settings.
struct ClientDefaults {
    token_lifetime: Option<Duration>,
    refresh_limit: u32,
    refresh_reuse_interval: Duration,
}

fn client(
    ctx: &mut Ctx,
    entry: &S<raw::Client>,
    defaults: &ClientDefaults,
    format: TokenFormat,
    known_scopes: &HashSet<&str>,
) -> Option<Client> {
    let raw = &entry.value;
    let written = ctx.required(&raw.client_id, entry.referenced, "client_id")?;
    let client_id = written.value.clone();
    if let Some(problem) = client_id_problem(&client_id) {
        ctx.report.error(
            written.referenced,
            format!(
                "client_id `{}` {problem}: no client could authenticate as it",
                client_id.escape_debug()
            ),
            "a client id of visible characters, such as bookyourticket",
        );
        return None;
    }
    let client_secret = match &raw.client_secret {
        Some(s) => {
            let secret = ctx.secret(s, "client_secret")?;
            // RFC 6749 §10.10: the whole of a confidential client's
            // credential at the token, introspection and revocation endpoints.
            ctx.short_secret(
                s.referenced,
                &secret,
                &format!("client_secret of client `{client_id}`"),
                "at the token endpoint (RFC 6749 §10.10)",
            );
            Some(secret)
        }
        None => None,
    };
    let mut grant_types = Vec::new();
    for g in &raw.grant_types {
        match GrantType::parse(&g.value) {
            Some(grant) => grant_types.push(grant),
            None => ctx.report.error(
                g.referenced,
                format!("grant type `{}` is not supported", g.value),
                "authorization_code, implicit, password, client_credentials, refresh_token",
            ),
        }
    }
    let at_grant = |grant: GrantType| {
        raw.grant_types
            .iter()
            .find(|g| g.value == grant.as_str())
            .map(|g| g.referenced)
            .unwrap_or(entry.referenced)
    };
    if client_secret.is_none() && grant_types.contains(&GrantType::ClientCredentials) {
        ctx.report.error(
            at_grant(GrantType::ClientCredentials),
            format!("public client `{client_id}` (no client_secret) cannot use client_credentials"),
            "a client_secret, or no client_credentials grant",
        );
    }
    if grant_types.contains(&GrantType::Implicit) {
        ctx.report.warning(
            at_grant(GrantType::Implicit),
            format!(
                "client `{client_id}` uses the implicit grant, which RFC 9700 §2.1.2 says not to use: \
                 its access token travels in the redirect URI's fragment, where browser history, \
                 referrers and injected scripts see it, and nothing binds it to the client; \
                 authorization_code with PKCE does the same job"
            ),
        );
    }
    let browser = [GrantType::AuthorizationCode, GrantType::Implicit];
    if let Some(g) = browser.iter().find(|g| grant_types.contains(g)) {
        if raw.redirect_uris.is_empty() {
            ctx.report.error(
                at_grant(*g),
                format!(
                    "client `{client_id}` uses {} without redirect_uris",
                    g.as_str()
                ),
                "at least one redirect URI",
            );
        }
    }
    for uri in &raw.redirect_uris {
        if let Some(problem) = redirect_problem(&uri.value) {
            ctx.report.error(
                uri.referenced,
                format!("redirect URI `{}` {problem}", uri.value),
                "https://…, or http:// on localhost, 127.0.0.1 or [::1]",
            );
        }
    }
    let introspect = ctx.boolean(&raw.introspect, "introspect", false);
    if let (true, None, Some(at)) = (introspect, &client_secret, &raw.introspect) {
        ctx.report.error(
            at.referenced,
            format!("public client `{client_id}` (no client_secret) cannot introspect"),
            "a client_secret, or no `introspect: true` (RFC 7662 §2.1)",
        );
    }
    for scope in &raw.scopes {
        if !ctx.scope_token(scope) {
            continue;
        }
        if !known_scopes.is_empty() && !known_scopes.contains(scope.value.as_str()) {
            ctx.report.error(
                scope.referenced,
                format!(
                    "scope `{}` is not declared in authorization_server.scopes",
                    scope.value
                ),
                format!(
                    "one of: {}",
                    super::context::names(known_scopes.iter().map(|s| s.to_string()))
                ),
            );
        }
    }
    Some(Client {
        name: raw
            .name
            .as_ref()
            .map(|n| n.value.clone())
            .unwrap_or_else(|| client_id.clone()),
        client_id,
        client_secret,
        redirect_uris: raw
            .redirect_uris
            .iter()
            .map(|u| RedirectUri::new(u.value.clone()))
            .collect(),
        grant_types,
        scopes: raw.scopes.iter().map(|s| s.value.clone()).collect(),
        token_lifetime: lifetime(ctx, &raw.token_lifetime, defaults.token_lifetime, format),
        refresh_limit: refresh_limit(ctx, &raw.refresh_limit, defaults.refresh_limit),
        refresh_reuse_interval: reuse_interval(
            ctx,
            &raw.refresh_reuse_interval,
            "refresh_reuse_interval",
            defaults.refresh_reuse_interval,
        ),
        introspect,
    })
}

const ISSUER_ALLOWED: &str = "an absolute https:// URL with a host and no query or fragment, such as https://auth.example.com (RFC 8414 §2)";

/// The issuer as tokens carry it (`iss`) and the metadata's URLs start
/// with it: a trailing `/` is dropped. RFC 8414 §2: an https URL with a
/// host and no query or fragment. Plain http to a host that is not
/// loopback is warned about, not refused: behind a proxy that terminates
/// TLS it is the name the gateway answers to.
fn issuer(ctx: &mut Ctx, written: &S<Scalar>) -> String {
    let text = &written.value.0;
    let at = written.referenced;
    match issuer_problem(text) {
        Some(problem) => ctx.report.error(
            at,
            format!(
                "authorization_server.issuer `{}` {problem}: it is every token's `iss` and the base of the metadata's URLs",
                text.escape_debug()
            ),
            ISSUER_ALLOWED,
        ),
        None if text.starts_with("http:") && !issuer_host_is_loopback(text) => {
            ctx.report.warning(
                at,
                format!(
                    "authorization_server.issuer `{text}` is http on a host that is not loopback: \
                     RFC 8414 §2 asks for https, and clients follow the metadata's http:// \
                     endpoints with their credentials (right only where a proxy in front \
                     terminates TLS under this name)"
                ),
            );
        }
        None => {}
    }
    if let Some(path) = issuer_path(text).filter(|_| issuer_problem(text).is_none()) {
        ctx.report.warning(
            at,
            format!(
                "authorization_server.issuer `{text}` has a path (`{path}`): the metadata names \
                 its endpoints under it, but this gateway serves them at the root \
                 (/oauth2/…, /.well-known/oauth-authorization-server), and the approval \
                 page's session cookie is sent there alone; right only where a proxy in front \
                 strips `{path}`, and clients find the metadata at the root"
            ),
        );
    }
    text.trim_end_matches('/').to_owned()
}

/// The path of an issuer URL, when it has one besides `/`.
fn issuer_path(text: &str) -> Option<&str> {
    let rest = text.split_once("://")?.1;
    let path = rest.find('/').map(|at| &rest[at..])?.trim_end_matches('/');
    (!path.is_empty()).then_some(path)
}

fn issuer_problem(text: &str) -> Option<&'static str> {
    if text.trim().is_empty() {
        return Some("is empty");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains whitespace or a control character");
    }
    if text.contains('#') {
        return Some("has a fragment");
    }
    if text.contains('?') {
        return Some("has a query");
    }
    let Ok(uri) = text.parse::<http::Uri>() else {
        return Some("is not a URL");
    };
    if !matches!(uri.scheme_str(), Some("https" | "http")) {
        return Some("is not an absolute http(s) URL");
    }
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => Some("has user information"),
        Some(authority) if !authority.host().is_empty() => None,
        _ => Some("has no host"),
    }
}

fn issuer_host_is_loopback(text: &str) -> bool {
    text.parse::<http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(plain_http::is_loopback))
        .unwrap_or(false)
}

/// A client id a client can send: RFC 6749 §2.3.1 carries it in HTTP
/// Basic or a form, where surrounding whitespace does not survive the
/// round trip and control characters are not allowed (Appendix A.1,
/// VSCHAR).
fn client_id_problem(id: &str) -> Option<&'static str> {
    if id.trim().is_empty() {
        Some("is empty")
    } else if id.chars().any(char::is_control) {
        Some("contains a control character")
    } else if id.trim() != id {
        Some("starts or ends with whitespace")
    } else {
        None
    }
}

/// RFC 9700 §4.1: exact redirect URIs; plain http only for native-app
/// loopback redirects (RFC 8252 §7.3).
fn redirect_problem(uri: &str) -> Option<&'static str> {
    // RFC 9700 §4.1.3: no patterns; a `*` is a literal character that no
    // client would send, so the URI only looks like it allows something.
    if uri.contains('*') {
        return Some("has a `*`, but redirect URIs are compared exactly (no wildcards)");
    }
    let parsed: http::Uri = match uri.parse() {
        Ok(u) => u,
        Err(_) => return Some("is not a URI"),
    };
    if uri.contains('#') {
        return Some("has a fragment");
    }
    match parsed.scheme_str() {
        Some("https") => None,
        Some("http") => match parsed.host() {
            Some("localhost" | "127.0.0.1" | "[::1]") => None,
            _ => Some("uses http on a non-loopback host"),
        },
        _ => Some("is not an http(s) URI"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_absolute_http_urls_with_a_host_and_no_query_or_fragment() {
        for taken in [
            "https://auth.example",
            "https://auth.example/",
            "https://auth.example:8443/tenant",
            "http://localhost:4485",
            "http://[::1]:4485",
            "http://gateway.example",
        ] {
            assert_eq!(issuer_problem(taken), None, "{taken}");
        }
        for (refused, problem) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("/", "is not an absolute http(s) URL"),
            ("localhost:19300", "is not an absolute http(s) URL"),
            ("https://a.example/?x=1#f", "has a fragment"),
            ("https://a.example/?x=1", "has a query"),
            ("ftp://x y", "contains whitespace or a control character"),
            (
                " https://a.example",
                "contains whitespace or a control character",
            ),
            ("ftp://a.example", "is not an absolute http(s) URL"),
            ("https://u@a.example", "has user information"),
            ("https:///path", "is not a URL"),
        ] {
            assert_eq!(issuer_problem(refused), Some(problem), "{refused}");
        }
        assert!(issuer_host_is_loopback("http://127.0.0.9:1"));
        assert!(!issuer_host_is_loopback("http://gateway.example"));
    }

    #[test]
    fn brand_urls_are_https_or_paths_here() {
        assert_eq!(
            brand_url("https://CDN.example:8443/a/logo.svg?v=2"),
            Some(Some("https://cdn.example:8443".to_owned()))
        );
        assert_eq!(brand_url("/static/logo.svg"), Some(None));
        for refused in [
            "http://cdn.example/logo.svg",
            "//cdn.example/logo.svg",
            "https://user@cdn.example/logo.svg",
            "https://cdn.example/a b.svg",
            "https://cdn.example/\"onerror=x",
            "javascript:alert(1)",
            "data:image/svg+xml,<svg>",
            "logo.svg",
            "",
        ] {
            assert_eq!(brand_url(refused), None, "{refused}");
        }
        let long = format!("/{}", "a".repeat(MAX_BRAND_URL));
        assert_eq!(brand_url(&long), None);
    }

    #[test]
    fn colours_are_rrggbb_with_readable_text_on_them() {
        assert_eq!(parse_color("#1f5FBF"), Some((0x1f, 0x5f, 0xbf)));
        for refused in ["1f5fbf", "#1f5fb", "#1f5fbfa", "#gggggg", "red", "#ééé"] {
            assert_eq!(parse_color(refused), None, "{refused}");
        }
        assert_eq!(on_color((0x1f, 0x5f, 0xbf)), "#ffffff");
        assert_eq!(on_color((0xff, 0xd5, 0x4f)), "#000000");
        assert_eq!(on_color((0, 0, 0)), "#ffffff");
        assert_eq!(on_color((255, 255, 255)), "#000000");
    }
}
