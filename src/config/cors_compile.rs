//! Compiling an API's `policies.cors`: origins checked as serialized
//! origins (RFC 6454 §6.2) and normalised, methods and header names
//! checked, and every field value the gateway sends joined once, here, so
//! that a request only compares and copies. `*` never goes with
//! credentials (Fetch standard, CORS protocol: a credentialed answer names
//! the origin).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::context::{header_name, method, Ctx};
use super::raw::{self, S};
use super::snapshot::{Cors, Origins, Resource};
use super::throttle_compile::{RATELIMIT, RATELIMIT_POLICY};

/// Browsers keep a preflight at most this long (Firefox: 24 h).
const MAX_AGE_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

const ORIGIN_ALLOWED: &str =
    "a serialized origin such as https://app.example.com or http://localhost:8080 (scheme://host[:port], no path, no default port), or [\"*\"] alone";

/// The compiled policy; `None` when the API has none or it is invalid
/// (then a finding was reported).
pub fn compile(ctx: &mut Ctx, policies: &raw::Policies, resources: &[Resource]) -> Option<Cors> {
    let entry = policies.cors.as_ref()?;
    let raw = &entry.value;
    let credentials = ctx.boolean(&raw.allow_credentials, "cors.allow_credentials", false);
    let origins = origins(ctx, entry, credentials);
    let methods = methods(ctx, raw, resources);
    let headers = header_names(ctx, &raw.allow_headers, "cors.allow_headers");
    let mut exposed = header_names(ctx, &raw.expose_headers, "cors.expose_headers");
    // The fields the gateway's own throttle adds are the application's to
    // read, on answers and refusals alike.
    if !policies.throttle.is_empty() {
        for name in [&RATELIMIT, &RATELIMIT_POLICY] {
            if !exposed.contains(name) {
                exposed.push(name.clone());
            }
        }
    }
    let max_age = raw.max_age.as_ref().and_then(|written| {
        let age = ctx.duration(&raw.max_age, "cors.max_age", Duration::ZERO);
        if age > MAX_AGE_LIMIT {
            ctx.report.error(
                written.referenced,
                format!("cors.max_age `{}` is longer than 24h", written.value.0),
                "a duration up to 24h (browsers cap it lower still)",
            );
            return None;
        }
        Some(HeaderValue::from(age.as_secs()))
    });
    let mut on_rejection = exposed.clone();
    for name in [http::header::WWW_AUTHENTICATE, http::header::RETRY_AFTER] {
        if !on_rejection.contains(&name) {
            on_rejection.push(name);
        }
    }
    let origins = origins?;
    let any_origin = (origins == Origins::Any).then(|| HeaderValue::from_static("*"));
    Some(Cors {
        origins,
        allow_methods: joined(methods.iter().map(Method::as_str))?,
        methods,
        allow_headers: (!headers.is_empty())
            .then(|| joined(headers.iter().map(HeaderName::as_str)))
            .flatten(),
        headers,
        credentials,
        any_origin,
        max_age,
        expose: (!exposed.is_empty())
            .then(|| joined(exposed.iter().map(HeaderName::as_str)))
            .flatten(),
        expose_on_rejection: joined(on_rejection.iter().map(HeaderName::as_str))?,
    })
}

fn origins(ctx: &mut Ctx, entry: &S<raw::Cors>, credentials: bool) -> Option<Origins> {
    let list = &entry.value.allow_origins;
    if list.is_empty() {
        ctx.report.error(
            entry.referenced,
            "cors has no `allow_origins`",
            ORIGIN_ALLOWED,
        );
        return None;
    }
    if let Some(star) = list.iter().find(|o| o.value == "*") {
        if list.len() > 1 {
            ctx.report.error(
                star.referenced,
                "cors.allow_origins: `*` is mixed with other origins",
                ORIGIN_ALLOWED,
            );
            return None;
        }
        if credentials {
            ctx.report.error(
                star.referenced,
                "cors.allow_origins `*` with allow_credentials: true; browsers refuse credentialed answers to any origin",
                "the origins listed one by one, or allow_credentials: false",
            );
            return None;
        }
        return Some(Origins::Any);
    }
    let mut origins = Vec::with_capacity(list.len());
    let mut valid = true;
    for written in list {
        let problem = match origin(&written.value).map(HeaderValue::try_from) {
            Ok(Ok(value)) => {
                if !origins.contains(&value) {
                    origins.push(value);
                }
                continue;
            }
            Ok(Err(_)) => "is not a valid header value",
            Err(problem) => problem,
        };
        ctx.report.error(
            written.referenced,
            format!("cors.allow_origins: `{}` {problem}", written.value),
            ORIGIN_ALLOWED,
        );
        valid = false;
    }
    valid.then_some(Origins::List(origins))
}

/// `scheme://host[:port]` as a browser serializes it (RFC 6454 §6.2, the
/// URL Standard's origin serialization): scheme and host in lower case,
/// an IPv6 host in its shortest form, the port as a number (`08080` is
/// `8080`). A scheme's default port, which browsers leave out, and an
/// IPv4 host written otherwise than `a.b.c.d` in decimal (`127.1`,
/// `0x7f.0.0.1`, which browsers turn into another text) are refused.
pub fn origin(text: &str) -> Result<String, &'static str> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or("is not scheme://host[:port]")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("has no valid scheme");
    }
    if rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace) {
        return Err("has a path, query, fragment or user info; an origin has none");
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or("has an unclosed `[`")?;
        let host_ok = !inside.is_empty()
            && inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '.'));
        if !host_ok {
            return Err("has no valid IPv6 host");
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("has text after its host")?),
        };
        let ip = inside
            .parse::<Ipv6Addr>()
            .map_err(|_| "has no valid IPv6 host")?;
        (ipv6_host(ip), port)
    } else {
        let (host, port) = match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !host_ok {
            return Err("has no valid host");
        }
        if ends_in_a_number(host) && host.parse::<Ipv4Addr>().is_err() {
            return Err("has an IPv4 host not written as four decimal numbers (a.b.c.d)");
        }
        (host.to_ascii_lowercase(), port)
    };
    let scheme = scheme.to_ascii_lowercase();
    let mut serialized = format!("{scheme}://{host}");
    if let Some(port) = port {
        let number = port
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && port.bytes().all(|b| b.is_ascii_digit()))
            .ok_or("has no valid port")?;
        let default = match scheme.as_str() {
            "http" | "ws" => Some(80),
            "https" | "wss" => Some(443),
            _ => None,
        };
        if default == Some(number) {
            return Err("names its scheme's default port, which browsers leave out");
        }
        serialized.push(':');
        serialized.push_str(&number.to_string());
    }
    Ok(serialized)
}

/// Whether the URL Standard's host parser takes `host` for an IPv4
/// address: its last label (a final empty one aside) is a number, in
/// decimal or `0x` hexadecimal.
fn ends_in_a_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    let hex = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

/// An IPv6 host as the URL Standard serializes it: `[`, the eight pieces
/// in lower-case hexadecimal without leading zeros, the first longest run
/// of two or more zero pieces as `::`, `]` (an IPv4-mapped address too:
/// `[::ffff:7f00:1]`).
fn ipv6_host(ip: Ipv6Addr) -> String {
    let pieces = ip.segments();
    // The first longest run of zero pieces, when it is two or more long.
    let mut longest: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < pieces.len() {
        let run = pieces[i..].iter().take_while(|p| **p == 0).count();
        if run >= 2 && longest.is_none_or(|(_, length)| run > length) {
            longest = Some((i, run));
        }
        i += run.max(1);
    }
    let mut host = String::from("[");
    let mut i = 0;
    while i < pieces.len() {
        if let Some((start, length)) = longest.filter(|(start, _)| *start == i) {
            host.push_str(if start == 0 { "::" } else { ":" });
            i += length;
            continue;
        }
        host.push_str(&format!("{:x}", pieces[i]));
        if i + 1 < pieces.len() {
            host.push(':');
        }
        i += 1;
    }
    host.push(']');
    host
}

/// `allow_methods`, or the methods the API's resources serve.
fn methods(ctx: &mut Ctx, raw: &raw::Cors, resources: &[Resource]) -> Vec<Method> {
    let mut methods: Vec<Method> = Vec::new();
    let mut add = |m: Method| {
        if !methods.contains(&m) {
            methods.push(m);
        }
    };
    if raw.allow_methods.is_empty() {
        for resource in resources {
            if resource.method == Method::GET {
                add(Method::GET);
                add(Method::HEAD);
            } else {
                add(resource.method.clone());
            }
        }
    }
    for written in &raw.allow_methods {
        match method(&written.value) {
            Some(m) => add(m),
            None => ctx.report.error(
                written.referenced,
                format!("cors.allow_methods: `{}` is not a method", written.value),
                "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS (upper case)",
            ),
        }
    }
    methods
}

fn header_names(ctx: &mut Ctx, list: &[S<String>], key: &str) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for written in list {
        if written.value == "*" {
            ctx.report.error(
                written.referenced,
                format!("{key}: `*` is not supported (it never covers Authorization)"),
                "header names listed one by one",
            );
            continue;
        }
        if let Some(name) = header_name(ctx, written) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// A list field value (RFC 9110 §5.6.1).
fn joined<'a>(items: impl Iterator<Item = &'a str>) -> Option<HeaderValue> {
    HeaderValue::try_from(items.collect::<Vec<_>>().join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn origins_are_serialized_as_browsers_send_them() {
        assert_eq!(
            origin("https://App.Example.com"),
            Ok("https://app.example.com".into())
        );
        assert_eq!(
            origin("http://localhost:8080"),
            Ok("http://localhost:8080".into())
        );
        assert_eq!(origin("HTTP://[::1]:3000"), Ok("http://[::1]:3000".into()));
        // A port as its number, an IPv6 host in its shortest form.
        assert_eq!(
            origin("http://localhost:08080"),
            Ok("http://localhost:8080".into())
        );
        for (written, sent) in [
            ("http://[0:0::1]", "http://[::1]"),
            ("http://[0:0:0:0:0:0:0:1]:03000", "http://[::1]:3000"),
            (
                "http://[2001:DB8:0:0:1:0:0:1]",
                "http://[2001:db8::1:0:0:1]",
            ),
            (
                "http://[2001:db8:0:1:1:1:1:1]",
                "http://[2001:db8:0:1:1:1:1:1]",
            ),
            ("http://[1::]", "http://[1::]"),
            ("http://[::]", "http://[::]"),
            ("http://[::ffff:127.0.0.1]", "http://[::ffff:7f00:1]"),
        ] {
            assert_eq!(origin(written).as_deref(), Ok(sent), "{written}");
        }
        assert_eq!(
            origin("http://127.0.0.1:3000"),
            Ok("http://127.0.0.1:3000".into())
        );
        assert_eq!(origin("http://1a.example"), Ok("http://1a.example".into()));
        assert_eq!(
            origin("chrome-extension://abcdef"),
            Ok("chrome-extension://abcdef".into())
        );
    }

    #[test]
    fn paths_default_ports_and_non_origins_are_refused() {
        for bad in [
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://app.example.com?q",
            "https://user@app.example.com",
            "https://app.example.com:443",
            "http://app.example.com:80",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://app.example.com:8a",
            "https://",
            "app.example.com",
            "null",
            "1https://a.com",
            "https://[::1",
            "https://a b.com",
            "http://app.example.com:0080",
            "http://[::1]:80",
            "http://[::g]",
            "http://127.1",
            "http://0x7f.0.0.1",
            "http://127.0.0.01:3000",
            "http://example.0x10",
            "http://1.2.3.4.5",
        ] {
            assert!(origin(bad).is_err(), "{bad} was accepted");
        }
    }
}
