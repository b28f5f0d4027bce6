//! What the section compilers share: [`Ctx`] (typed reads of raw scalars,
//! every problem reported with its position, the files named on the way
//! and what those read held)
//! and small helpers for "allowed:" texts, header names and methods.
//! Imports none of the section compilers; they all import it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderName, HeaderValue, Method};

use super::contents::{Content, Contents};
use super::diagnostic::Report;
use super::raw::{Location, Scalar, S};
use super::resolve::{self, Env};
use super::Secret;

/// The longest duration any setting takes. Durations are added to clock
/// readings (deadlines, cache expiries) on the data path, where an
/// overflow would panic; no setting means anything past a year.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Reads typed values out of raw scalars, reporting what is wrong.
pub struct Ctx<'a> {
    pub report: &'a mut Report,
    pub env: &'a Env,
    pub base: PathBuf,
    /// The files the configuration names (read or not).
    pub files: Vec<PathBuf>,
    /// What each file read held when it was read.
    pub contents: Contents,
}

impl Ctx<'_> {
    /// Reads a file the configuration names, within the bound of
    /// [`read_bounded`](super::load::read_bounded), noting it as named and
    /// what it held.
    pub fn read(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        let bytes = super::load::read_bounded(path);
        self.note_read(Content::of(path, bytes.as_deref().ok()));
        bytes
    }

    /// Notes a file read on the way (a `${file:}` secret) as named, and
    /// what it held.
    pub fn note_read(&mut self, content: Content) {
        if !self.files.contains(&content.path) {
            self.files.push(content.path.clone());
        }
        self.contents.note(content);
    }

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
        match resolve::duration(&value.value.0) {
            Some(duration) if duration <= MAX_DURATION => duration,
            Some(_) => {
                self.report.error(
                    Self::at(value),
                    format!("{key}: `{}` is longer than 365d", value.value.0),
                    "a duration up to 365d",
                );
                default
            }
            None => {
                self.report.error(
                    Self::at(value),
                    format!("{key}: `{}` is not a duration", value.value.0),
                    "\"30s\", \"5m\", \"1h\", \"250ms\" or integer seconds",
                );
                default
            }
        }
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

    /// Refuses a list written empty where leaving it out means "any":
    /// written, `[]` reads as "none" (how a template that rendered nothing
    /// writes it) while it would let everything through. `what` says
    /// what it would let through, `allowed` what to write instead.
    pub fn refuse_written_empty<T>(
        &mut self,
        list: &S<Vec<T>>,
        key: &str,
        what: &str,
        allowed: String,
    ) {
        if list.is_written() && list.value.is_empty() {
            self.report.error(
                list.referenced,
                format!("{key} is an empty list, which would {what}"),
                allowed,
            );
        }
    }

    /// An audience a token's `aud` is to name: an empty one (or only
    /// whitespace) names none, and would refuse every token.
    pub fn audience(&mut self, value: &Option<S<Scalar>>, key: &str) -> Option<String> {
        let value = value.as_ref()?;
        if value.value.0.trim().is_empty() {
            self.report.error(
                Self::at(value),
                format!("{key} is empty: no token's `aud` names it"),
                "an audience such as `time-travels`, or no key (no audience check)",
            );
            return None;
        }
        Some(value.value.0.clone())
    }

    pub fn secret(&mut self, value: &S<Scalar>, key: &str) -> Option<Secret> {
        match resolve::secret(&value.value.0, self.env, &self.base) {
            Ok((secret, file)) => {
                if let Some(content) = file {
                    self.note_read(content);
                }
                if resolve::encoded_with_line_break(&value.value.0, &secret) {
                    self.report.warning(
                        Self::at(value),
                        format!("{key}: the decoded {{encoded}} secret ends with a line break, which is part of the secret (`echo pw | base64` adds one; `printf %s pw | base64` does not)"),
                    );
                }
                Some(secret)
            }
            Err(problem) => {
                // Named though not read: its appearance is a change to watch for.
                self.files
                    .extend(resolve::referenced_file(&value.value.0, &self.base));
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
    /// Warns about a secret a person set that is short enough to be
    /// guessed by trying candidates `where_tried` (RFC 6749 §10.10 for
    /// client secrets; failed logins are locked out only for a while).
    pub fn short_secret(&mut self, at: Location, secret: &Secret, whose: &str, where_tried: &str) {
        let chars = secret.expose().chars().count();
        if chars < MIN_SECRET_CHARS {
            self.report.warning(
                at,
                format!(
                    "{whose} has {chars} characters: a secret this short can be guessed by \
                     trying candidates {where_tried}; use at least {MIN_SECRET_CHARS} random \
                     characters (e.g. `openssl rand -base64 24`)"
                ),
            );
        }
    }

    pub fn basic_user(&mut self, at: Location, user: &str, key: &str) -> Option<String> {
        if let Some((name, _)) = user.split_once(':') {
            // What follows the colon is not shown: written as `user:password`,
            // it is a password.
            self.report.error(
                at,
                format!("{key}: `{name}:…` contains `:`, which Basic authentication cannot carry in a user name"),
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

    /// Whether `scope` is one RFC 6749 §3.3 scope token; reported where it
    /// is written when it is not.
    pub fn scope_token(&mut self, scope: &S<String>) -> bool {
        if is_scope_token(&scope.value) {
            return true;
        }
        self.report.error(
            Self::at(scope),
            format!(
                "scope `{}` is no scope token: no token can carry it",
                scope.value.escape_debug()
            ),
            "one scope token: visible ASCII characters but `\"` and `\\`, no space (RFC 6749 §3.3)",
        );
        false
    }
}

/// RFC 6749 §3.3: `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )`. Tokens
/// split their scopes on the space, so anything else is carried by no
/// token: a scope mapping of it grants nothing (and the 403 challenge
/// would offer it as a scope to ask for), a client of the local
/// authorization server could never be granted it.
fn is_scope_token(scope: &str) -> bool {
    !scope.is_empty()
        && scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
}

/// Shortest secret [`Ctx::short_secret`] does not warn about.
const MIN_SECRET_CHARS: usize = 16;

/// Reports an `API:scope` entry that reads as scopes of several APIs (an
/// API or a scope name holding a `:`).
pub(super) fn ambiguous_api_scope<'r>(
    ctx: &mut Ctx,
    written: &super::raw::S<String>,
    readings: impl Iterator<Item = (&'r str, &'r str)>,
) {
    ctx.report.error(
        written.referenced,
        format!(
            "api scope `{}` reads as {}",
            written.value,
            names(readings.map(|(api, s)| format!("scope `{s}` of API `{api}`")))
        ),
        "an \"API name:scope name\" that reads one way: rename the API or the scope",
    );
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

/// Text every recipient reads as written in a field value: visible ASCII,
/// spaces and tabs (RFC 9110 §5.5; bytes past ASCII are `obs-text`, read
/// as Latin-1 by browsers, as UTF-8 or refused by others).
pub fn is_portable_text(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// A whole field value read alike by every recipient: portable text
/// ([`is_portable_text`]) that neither begins nor ends with a space or a
/// tab, which parsers strip (RFC 9110 §5.5) and HTTP/2 forbids (RFC 9113
/// §8.2.1).
pub fn is_plain_value(bytes: &[u8]) -> bool {
    is_portable_text(bytes)
        && !bytes.first().copied().is_some_and(is_padding)
        && !bytes.last().copied().is_some_and(is_padding)
}

/// A space or a tab: what may not begin or end a plain value.
pub fn is_padding(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
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

/// The fields of [`is_connection_field`], for "allowed:" texts.
pub(super) const CONNECTION_FIELDS: &str =
    "Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Content-Length and the Proxy- fields";

/// Fields that belong to one connection or frame the message (RFC 9110
/// §7.6.1, §8.6; RFC 9112 §6, §7.1.2): the gateway writes them itself on
/// each side, so neither transformation may name them. One added to a
/// request after the client's hop-by-hop fields were stripped would reach
/// the upstream as the gateway's word.
pub(super) fn is_connection_field(name: &HeaderName) -> bool {
    CONNECTION_FIELD_NAMES.contains(&name.as_str())
}

/// [`is_connection_field`] in every spelling that folds to one of them
/// (`Content_Length`, `transfer.encoding`): a CGI-style upstream reads
/// those as the field itself (RFC 3875 §4.1.18).
pub(super) fn is_connection_field_in_any_spelling(name: &HeaderName) -> bool {
    CONNECTION_FIELD_NAMES
        .iter()
        .any(|field| super::snapshot::folds_to(name, field.as_bytes()))
}

const CONNECTION_FIELD_NAMES: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "proxy-authenticate",
    "proxy-authorization",
];

/// What the gateway does with a request field an API key must not be
/// read from, or `None` for a field of the client's own. The key is
/// taken out of the request (in every spelling) before it is forwarded:
/// read from one of these, it would take the field's own meaning with it,
/// or be a value the gateway or a proxy wrote, not the client's key.
pub(super) fn gateway_request_field(name: &HeaderName) -> Option<&'static str> {
    let field = |folded: &str| super::snapshot::folds_to(name, folded.as_bytes());
    if field("host") || is_connection_field_in_any_spelling(name) {
        return Some("the gateway writes it itself (Host and the connection and framing fields)");
    }
    if field("authorization") {
        Some("it carries the bearer token or Basic credentials")
    } else if field("cookie") {
        Some("it carries the browser's cookies")
    } else if [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
    ]
    .into_iter()
    .any(field)
    {
        Some("it says whom a request was forwarded for, written by the gateway or a trusted proxy")
    } else if ["x-request-id", "traceparent", "tracestate"]
        .into_iter()
        .any(field)
    {
        Some("it correlates the request, written by the gateway or passed on")
    } else {
        None
    }
}

/// The fields of [`gateway_request_field`], for "allowed:" texts.
pub(super) const GATEWAY_REQUEST_FIELDS: &str =
    "Host, Authorization, Cookie, Forwarded, X-Forwarded-For/-Proto/-Host, X-Request-Id, traceparent, tracestate";

pub(super) fn method(text: &str) -> Option<Method> {
    match text {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => {
            Method::from_str(text).ok()
        }
        _ => None,
    }
}

pub(super) type GrantTable = HashMap<Arc<str>, Vec<Vec<String>>>;
