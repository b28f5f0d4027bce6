//! Raw model → immutable [`Snapshot`]. Every value is interpreted and checked
//! here (with its file position when it is wrong) and every cross-reference
//! resolved, so the request path never parses or looks anything up by string
//! that could have been decided once.

use std::collections::HashMap;
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
use super::{fleet_compile, listener_compile, security_compile, template, Secret};

/// Reads typed values out of raw scalars, reporting what is wrong.
pub struct Ctx<'a> {
    pub report: &'a mut Report,
    pub env: &'a Env,
    pub base: PathBuf,
    pub files: Vec<PathBuf>,
}

impl Ctx<'_> {
    pub(super) fn at<T>(value: &S<T>) -> Location {
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

    pub fn size(&mut self, value: &Option<S<Scalar>>, key: &str, default: u64) -> u64 {
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
        let text = &value.value.0;
        resolve::boolean(text).unwrap_or_else(|| {
            let message = if resolve::is_yaml11_boolean(text) {
                format!("{key}: `{text}` is a YAML 1.1 boolean, which this file does not accept")
            } else {
                format!("{key}: `{text}` is not a boolean")
            };
            self.report.error(Self::at(value), message, "true or false");
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

    /// A Basic user name: RFC 7617 §2 splits user-id and password at the
    /// first colon, so a user-id with one would be read as another user.
    pub fn basic_user(&mut self, at: Location, user: &str, key: &str) -> Option<String> {
        if user.contains(':') {
            self.report.error(
                at,
                format!("{key}: `{user}` contains `:`, which Basic authentication cannot carry in a user name"),
                "a user name without `:` (RFC 7617 §2)",
            );
            return None;
        }
        Some(user.to_owned())
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
    let listen = listener_compile::listen(&mut ctx, file);
    let tls = listener_compile::tls(&mut ctx, file, &listen);
    let admin = listener_compile::admin(&mut ctx, &file.admin);
    let trusted_proxies = listener_compile::trusted_proxies(&mut ctx, &file.trusted_proxies);
    let limits = listener_compile::limits(&mut ctx, &file.limits);
    let timeouts = listener_compile::timeouts(&mut ctx, &file.timeouts);
    let auth_servers =
        security_compile::auth_servers(&mut ctx, &file.security_settings.auth_servers);
    let aliases = security_compile::aliases(&mut ctx, &file.security_settings.aliases);
    let authorization_server = file
        .authorization_server
        .as_ref()
        .and_then(|raw| super::authz_compile::compile(&mut ctx, raw, &file.ports));
    let scope_mappings =
        security_compile::scope_mappings(&mut ctx, &file.scope_mappings, &auth_servers, &file.apis);
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
    let own_issuer = authorization_server.as_ref().map(|a| a.issuer.as_str());
    super::plain_http::check(&mut ctx, file, own_issuer);
    let central = file
        .central
        .as_ref()
        .map(|c| fleet_compile::central(&mut ctx, c));
    let api_gateway = file
        .api_gateway
        .as_ref()
        .and_then(|g| fleet_compile::api_gateway(&mut ctx, g));
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
