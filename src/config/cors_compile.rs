//! Compiling an API's `policies.cors`: origins checked as serialized
//! origins (RFC 6454 §6.2) and normalised, methods and header names
//! checked, and every field value the gateway sends joined once, here, so
//! that a request only compares and copies. `*` never goes with
//! credentials (Fetch standard, CORS protocol: a credentialed answer names
//! the origin).

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use super::context::{header_name, method, Ctx};
use super::raw::{self, S};
use super::snapshot::{Cors, Origins, Resource};

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
    let exposed = header_names(ctx, &raw.expose_headers, "cors.expose_headers");
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

/// `scheme://host[:port]` as a browser serializes it (RFC 6454 §6.2):
/// scheme and host in lower case, the scheme's default port left out.
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
        (&rest[..inside.len() + 2], port)
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
        (host, port)
    };
    let scheme = scheme.to_ascii_lowercase();
    let mut serialized = format!("{scheme}://{}", host.to_ascii_lowercase());
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
        serialized.push_str(port);
    }
    Ok(serialized)
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
        ] {
            assert!(origin(bad).is_err(), "{bad} was accepted");
        }
    }
}
