//! Compiling an API's `policies.response_transformation`: header names and
//! values checked once, here. Values are plain text (no `${…}`: an
//! upstream's answer is no place for token properties). Fields that frame
//! the message or belong to one connection (RFC 9110 §7.6.1, §8.6; RFC
//! 9112 §6) are refused: the gateway sets those itself; so are the CORS
//! fields, which are `policies.cors`'s, and `Date`, the clock's. Fields
//! the gateway writes on an
//! answer after the transformation (`X-Request-Id`, the `RateLimit`
//! fields) are warned about: its value replaces the one set here.

use http::{HeaderName, HeaderValue};

use super::context::{header_name, is_connection_field, is_plain_value, Ctx, CONNECTION_FIELDS};
use super::raw::{self, S};
use super::snapshot::ResponseTransform;

pub fn compile(ctx: &mut Ctx, policies: &raw::Policies) -> ResponseTransform {
    let Some(entry) = &policies.response_transformation else {
        return ResponseTransform::default();
    };
    let mut transform = ResponseTransform::default();
    let mut names: Vec<(HeaderName, &S<String>)> = Vec::new();
    for (written, value) in &entry.value.set_headers.0 {
        let name = end_to_end(ctx, written)
            .and_then(|name| not_cors(ctx, written, name))
            .and_then(|name| not_date(ctx, written, name));
        let text = &value.value.0;
        if text.contains("${") {
            ctx.report.error(
                value.referenced,
                format!("response_transformation value `{text}` has a `${{…}}` variable"),
                "plain text (variables are for request_transformation)",
            );
            continue;
        }
        let value = match HeaderValue::from_str(text) {
            Ok(value) if is_plain_value(text.as_bytes()) => value,
            _ => {
                ctx.report.error(
                    value.referenced,
                    format!(
                        "response_transformation value `{}` is not a plain header value",
                        text.escape_debug()
                    ),
                    "visible ASCII text, spaces and tabs, neither first nor last (HTTP/2 clients refuse a value padded so, HTTP/1.1 ones strip it)",
                );
                continue;
            }
        };
        let Some(name) = name else { continue };
        // `X-A` and `x-a` would both be written, one over the other: the
        // last would win, whatever the file seems to say.
        if let Some((_, first)) = names.iter().find(|(set, _)| *set == name) {
            ctx.report.error(
                written.referenced,
                format!(
                    "response_transformation set_headers names `{}` twice (also as `{}`)",
                    written.value, first.value
                ),
                "each header once, in any case",
            );
            continue;
        }
        names.push((name.clone(), written));
        transform.set.push((name, value));
    }
    for name in &entry.value.remove_headers {
        if let Some(name) = end_to_end(ctx, name) {
            if !transform.remove.contains(&name) {
                transform.remove.push(name);
            }
        }
    }
    transform
}

/// The CORS fields are `policies.cors`'s to write: one set here would be
/// sent on every answer whatever the origin, past every rule of CORS
/// (`Access-Control-Allow-Origin: null` with credentials). Removing them
/// stays allowed: it takes nothing away that CORS grants.
fn not_cors(ctx: &mut Ctx, written: &S<String>, name: HeaderName) -> Option<HeaderName> {
    if name.as_str().starts_with("access-control-") {
        ctx.report.error(
            written.referenced,
            format!("response_transformation cannot set `{}`", written.value),
            "a header outside Access-Control-*; the CORS fields come from policies.cors",
        );
        return None;
    }
    Some(name)
}

/// `Date` is the moment the answer was made (RFC 9110 §6.6.1), the
/// upstream's or the gateway's clock: a value written here would be the
/// same on every answer, and caches compute ages from it. Removing it
/// stays allowed (the gateway then writes its own).
fn not_date(ctx: &mut Ctx, written: &S<String>, name: HeaderName) -> Option<HeaderName> {
    if name == http::header::DATE {
        ctx.report.error(
            written.referenced,
            format!(
                "response_transformation cannot set `{}`: one fixed date would go out on every answer",
                written.value
            ),
            "leave Date to the upstream's clock and the gateway's",
        );
        return None;
    }
    Some(name)
}

fn end_to_end(ctx: &mut Ctx, written: &S<String>) -> Option<HeaderName> {
    let name = header_name(ctx, written)?;
    if is_connection_field(&name) {
        ctx.report.error(
            written.referenced,
            format!(
                "response_transformation cannot set or remove `{}`",
                written.value
            ),
            format!("an end-to-end header name; {CONNECTION_FIELDS} are the gateway's"),
        );
        return None;
    }
    Some(name)
}

/// What the gateway writes on an API's answers after its transformation.
pub struct OwnFields {
    /// `X-Request-Id` (`forwarding.request_id`).
    pub request_id: bool,
    /// `RateLimit` and `RateLimit-Policy` (throttle policies).
    pub throttled: bool,
}

/// Warns about a `set_headers` name the gateway's own field replaces, and
/// a `remove_headers` name it writes all the same.
pub fn overwritten(ctx: &mut Ctx, policies: &raw::Policies, own: OwnFields) {
    let Some(entry) = &policies.response_transformation else {
        return;
    };
    let set = entry
        .value
        .set_headers
        .0
        .iter()
        .map(|(written, _)| (written, true));
    let removed = entry
        .value
        .remove_headers
        .iter()
        .map(|written| (written, false));
    for (written, setting) in set.chain(removed) {
        let Ok(name) = HeaderName::from_bytes(written.value.as_bytes()) else {
            continue;
        };
        let (by, instead) = match name.as_str() {
            "x-request-id" if own.request_id => (
                "on every answer (forwarding.request_id)",
                "forwarding.request_id: false sends none, to the upstream either",
            ),
            "ratelimit" | "ratelimit-policy" if own.throttled => (
                "on the answers its throttle policies count",
                "the throttle policies tell every client its quota",
            ),
            _ => continue,
        };
        let message = match setting {
            true => format!(
                "response_transformation sets `{}`, which the gateway writes {by}: its own value replaces this one",
                written.value
            ),
            false => format!(
                "response_transformation removes `{}`, which the gateway writes {by}, after the transformation: it stays ({instead})",
                written.value
            ),
        };
        ctx.report.warning(written.referenced, message);
    }
}
