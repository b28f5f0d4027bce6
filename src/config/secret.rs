//! A secret value (password, client secret, key material) that never prints.
//!
//! `Debug` and `Display` show `****`; the clear value is only reachable
//! through [`Secret::expose`], and comparison is constant-time, the
//! length included ([`constant_eq`]). A URL,
//! whose user information may hold a password, is printed through
//! [`shown_url`].

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The clear value: for sending it where it belongs, never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with a presented value.
    pub fn matches(&self, presented: &[u8]) -> bool {
        constant_eq(self.0.as_bytes(), presented)
    }
}

/// Byte equality whose time depends neither on where the inputs differ
/// nor on their lengths: both are digested (SHA-256) and the digests
/// compared in constant time. Comparing the bytes themselves ends at once
/// when the lengths differ, which tells a caller trying lengths the
/// length of a secret.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.as_slice().ct_eq(b.as_slice()).into()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// `url` as it may be shown (admin views, logs, diagnostics): user
/// information (`user:password@`) masked, as the password beside it is,
/// and so are the values of its query (`?key=****`: an upstream's API key
/// often travels there) and its fragment.
pub fn shown_url(url: &str) -> String {
    let shown = match user_information(url).or_else(|| maybe_user_information(url)) {
        Some((scheme, after)) => format!("{scheme}://****@{after}"),
        None => url.to_owned(),
    };
    masked_query(shown)
}

/// `url` with each value of its query and its fragment shown as `****`
/// (the names stay: they say what was set).
fn masked_query(url: String) -> String {
    let Some((scheme, _, authority_end)) = split(&url) else {
        return url;
    };
    let path_start = scheme.len() + "://".len() + authority_end;
    let Some(from) = url[path_start..].find(['?', '#']).map(|at| path_start + at) else {
        return url;
    };
    let (head, tail) = url.split_at(from);
    let (query, fragment) = match tail.split_once('#') {
        Some((query, _)) => (query, true),
        None => (tail, false),
    };
    let mut shown = String::from(head);
    if let Some(pairs) = query.strip_prefix('?') {
        shown.push('?');
        let masked: Vec<String> = pairs
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) => format!("{name}=****"),
                None if pair.is_empty() => String::new(),
                None => "****".to_owned(),
            })
            .collect();
        shown.push_str(&masked.join("&"));
    }
    if fragment {
        shown.push_str("#****");
    }
    shown
}

/// The scheme of `url`, what follows its `://`, and where the authority
/// ends in that (at the first `/`, `?` or `#`).
fn split(url: &str) -> Option<(&str, &str, usize)> {
    let (scheme, rest) = url.split_once("://")?;
    Some((
        scheme,
        rest,
        rest.find(['/', '?', '#']).unwrap_or(rest.len()),
    ))
}

/// A "port" of digits followed by a `/`, `?` or `#` and an `@` further on
/// may be a password that begins with digits (`redis://:2024/Summer@host`)
/// as well as a port and a path: shown, it is masked up to the last `@`
/// (what is lost is part of a path, never a password).
fn maybe_user_information(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest, authority_end) = split(url)?;
    let authority = &rest[..authority_end];
    let port = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .is_some_and(|(_, p)| p.starts_with(':')),
        None => authority.contains(':'),
    };
    let at = rest.rfind('@').filter(|&at| port && at > authority_end)?;
    Some((scheme, &rest[at + 1..]))
}

/// Whether the authority of `url` (`scheme://authority/…`) holds user
/// information.
pub fn has_user_information(url: &str) -> bool {
    user_information(url).is_some()
}

/// The scheme of `url` and what follows its user information, when its
/// authority holds any.
fn user_information(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest, authority_end) = split(url)?;
    let authority = &rest[..authority_end];
    if let Some(at) = authority.rfind('@') {
        return Some((scheme, &rest[at + 1..]));
    }
    // A "port" that is no number is a password whose `/`, `?` or `#` was
    // not percent-encoded (`user:pa/ss@host`): up to the last `@`, all of
    // it is user information.
    let text_port = !authority.starts_with('[')
        && authority
            .rsplit_once(':')
            .is_some_and(|(_, port)| !port.bytes().all(|b| b.is_ascii_digit()));
    let at = rest.rfind('@').filter(|_| text_port)?;
    Some((scheme, &rest[at + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "**** ****");
        assert!(s.matches(b"hunter2"));
        assert!(!s.matches(b"hunter"));
    }

    #[test]
    fn constant_eq_compares_bytes_whatever_their_lengths() {
        assert!(constant_eq(b"", b""));
        assert!(constant_eq(b"fleet", b"fleet"));
        assert!(!constant_eq(b"fleet", b"fleet "));
        assert!(!constant_eq(b"fleet", b"fleeT"));
        assert!(!constant_eq(b"", b"\0"));
    }

    #[test]
    fn a_shown_url_masks_the_values_of_its_query_and_its_fragment() {
        assert_eq!(
            shown_url("https://backend.example/v1?api_key=s3cret&region=eu"),
            "https://backend.example/v1?api_key=****&region=****"
        );
        assert_eq!(
            shown_url("https://backend.example?token#frag"),
            "https://backend.example?****#****"
        );
        assert_eq!(
            shown_url("https://u:p@backend.example/x?k=v"),
            "https://****@backend.example/x?k=****"
        );
        assert_eq!(
            shown_url("https://backend.example/a/b"),
            "https://backend.example/a/b"
        );
    }

    #[test]
    fn a_shown_url_masks_its_user_information() {
        assert_eq!(
            shown_url("https://fleet:pw-123@central.example:9485/x?a=b@c"),
            "https://****@central.example:9485/x?a=****"
        );
        assert_eq!(
            shown_url("https://a@b@central.example"),
            "https://****@central.example"
        );
        for plain in [
            "https://central.example:9485",
            "http://127.0.0.1/a@b",
            "central",
        ] {
            assert_eq!(shown_url(plain), plain);
            assert!(!has_user_information(plain));
        }
        assert!(has_user_information("http://svc@upstream.example"));
        assert!(!has_user_information("http://upstream.example/x#a@b"));
        // A password with an unencoded `/`: its "port" is no number.
        assert_eq!(
            shown_url("https://gw:Zm9v/YmFy@idp.example/introspect"),
            "https://****@idp.example/introspect"
        );
        assert!(has_user_information("https://gw:Zm9v/YmFy@idp.example/x"));
        assert_eq!(shown_url("http://[::1]/a@b"), "http://[::1]/a@b");
        // A password of digits before its `/`: as a port and a path, it
        // would be shown.
        assert_eq!(
            shown_url("redis://:2024/Summer@redis.internal:6379/0"),
            "redis://****@redis.internal:6379/0"
        );
        assert_eq!(
            shown_url("redis://default:2024?x#y@redis.internal"),
            "redis://****@redis.internal"
        );
        assert_eq!(
            shown_url("http://[::1]:8080/a@b"),
            "http://****@b",
            "over-masked: a path is lost, never a password"
        );
    }
}
