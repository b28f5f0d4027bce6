//! The list fields a trusted proxy sends (`X-Forwarded-*`, RFC 7239
//! `Forwarded`) as the gateway carries them on: their members over every
//! line (RFC 9110 §5.6.1: empty members are none, and a sender makes
//! none), a `Forwarded` whose syntax is broken refused rather than
//! appended to (the gateway's element would end up inside its open
//! quotes), an `X-Forwarded-*` chain put in `Forwarded`'s terms, and the
//! address an `X-Forwarded-For` entry names.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{HeaderName, FORWARDED};
use http::HeaderMap;
use ipnet::IpNet;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The non-empty members of every line of `name`, trimmed, split at the
/// commas outside quoted strings (RFC 9110 §5.6.4).
pub fn members<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Vec<&'h [u8]> {
    let mut out = Vec::new();
    for line in headers.get_all(name) {
        let line = line.as_bytes();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (at, byte) in line.iter().enumerate() {
            match (*byte, quoted, escaped) {
                (_, true, true) => escaped = false,
                (b'\\', true, false) => escaped = true,
                (b'"', _, false) => quoted = !quoted,
                (b',', false, _) => {
                    out.push(&line[start..at]);
                    start = at + 1;
                }
                _ => {}
            }
        }
        out.push(&line[start..]);
    }
    out.retain_mut(|member| {
        *member = member.trim_ascii();
        !member.is_empty()
    });
    out
}

/// Members joined as one value, `", "` between them; `None` for none.
pub fn joined(members: &[&[u8]]) -> Option<Vec<u8>> {
    let (first, rest) = members.split_first()?;
    let mut out = Vec::with_capacity(members.iter().map(|m| m.len() + 2).sum());
    out.extend_from_slice(first);
    for member in rest {
        out.extend_from_slice(b", ");
        out.extend_from_slice(member);
    }
    Some(out)
}

/// A trusted proxy's `Forwarded` to carry on, its members joined: `None`
/// when it sent none with a member, or one that is not RFC 7239 syntax
/// (then the gateway's `Forwarded` is made as if it had sent none).
pub fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<u8>> {
    let members = members(headers, &FORWARDED);
    if members.iter().all(|member| is_element(member)) {
        joined(&members)
    } else {
        None
    }
}

/// RFC 7239 §4: `forwarded-element = [ pair ] *( ";" [ pair ] )`, `pair =
/// token "=" ( token / quoted-string )`; whitespace around a pair is
/// taken, as some proxies write it.
fn is_element(member: &[u8]) -> bool {
    let mut rest = member;
    loop {
        rest = rest.trim_ascii_start();
        if let Some(after) = rest.strip_prefix(b";") {
            rest = after; // an empty pair
            continue;
        }
        if rest.is_empty() {
            return true;
        }
        let name = rest.iter().take_while(|b| is_tchar(**b)).count();
        if name == 0 || rest.get(name) != Some(&b'=') {
            return false;
        }
        rest = &rest[name + 1..];
        let value = if rest.first() == Some(&b'"') {
            match quoted_len(rest) {
                Some(len) => len,
                None => return false,
            }
        } else {
            rest.iter().take_while(|b| is_tchar(**b)).count()
        };
        if value == 0 {
            return false;
        }
        rest = rest[value..].trim_ascii_start();
        match rest.split_first() {
            None => return true,
            Some((b';', after)) => rest = after,
            Some(_) => return false,
        }
    }
}

/// The length of the quoted string `text` starts with, quotes included.
fn quoted_len(text: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (at, byte) in text.iter().enumerate().skip(1) {
        match byte {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(at + 1),
            b'\t' | b' '..=b'~' | 0x80.. => {}
            _ => return None,
        }
    }
    None
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A trusted proxy's `X-Forwarded-*` in `Forwarded`'s terms, for a chain
/// that sent no `Forwarded` (a load balancer that writes only the former):
/// an element for the client — the entry the gateway judges the client,
/// the nearest `X-Forwarded-For` entry that is not a trusted proxy — with
/// the first `X-Forwarded-Proto` and `-Host` (a value that is no scheme or
/// would break out of its quotes is left out), then one for each trusted
/// proxy after it. The entries before the client's are the client's own
/// to write and are not carried (nor multiplied into `for=unknown`s).
pub fn in_forwarded_terms(
    headers: &HeaderMap,
    x_forwarded_for: &[&[u8]],
    trusted: &[IpNet],
) -> Option<Vec<u8>> {
    let first = |name: &HeaderName| members(headers, name).first().copied();
    let proto = first(&X_FORWARDED_PROTO).filter(|proto| {
        proto[0].is_ascii_alphabetic()
            && proto
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    let host = first(&X_FORWARDED_HOST).filter(|host| {
        host.iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\'))
    });
    let addresses: Vec<Option<IpAddr>> = x_forwarded_for.iter().map(|e| address_of(e)).collect();
    let client = addresses
        .iter()
        .rposition(|ip| !ip.is_some_and(|ip| trusted.iter().any(|net| net.contains(&ip))))
        .unwrap_or(0);
    let mut hops = addresses.get(client..).unwrap_or_default().iter();
    let mut out = Vec::with_capacity(64 + 24 * hops.len());
    let node = |out: &mut Vec<u8>, ip: &Option<IpAddr>| {
        out.extend_from_slice(b"for=");
        match ip {
            Some(IpAddr::V4(ip)) => out.extend_from_slice(ip.to_string().as_bytes()),
            Some(IpAddr::V6(ip)) => out.extend_from_slice(format!("\"[{ip}]\"").as_bytes()),
            None => out.extend_from_slice(b"unknown"),
        }
    };
    if let Some(ip) = hops.next() {
        node(&mut out, ip);
    }
    for (key, value, quoted) in [(b"proto=", proto, false), (b"host=\"", host, true)] {
        let Some(value) = value else { continue };
        if !out.is_empty() {
            out.push(b';');
        }
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        if quoted {
            out.push(b'"');
        }
    }
    if out.is_empty() {
        return None;
    }
    for ip in hops {
        out.extend_from_slice(b", ");
        node(&mut out, ip);
    }
    Some(out)
}

/// The address an `X-Forwarded-For` entry names, canonical
/// ([`IpAddr::to_canonical`]).
pub(super) fn address_of(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    let ip = text
        .parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|at| at.ip()))
        .or_else(|| {
            let bracketed = text.strip_prefix('[')?.strip_suffix(']')?;
            bracketed.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn lines(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn members_skip_empty_ones_and_keep_quoted_commas() {
        let headers = lines(
            "forwarded",
            &["for=1.1.1.1,, ", "", r#"host="a,b" , for=2.2.2.2"#],
        );
        assert_eq!(
            members(&headers, &FORWARDED),
            [&b"for=1.1.1.1"[..], br#"host="a,b""#, b"for=2.2.2.2"]
        );
        assert_eq!(
            joined(&members(&headers, &FORWARDED)).unwrap(),
            br#"for=1.1.1.1, host="a,b", for=2.2.2.2"#
        );
        assert_eq!(
            joined(&members(&lines("forwarded", &["", " , "]), &FORWARDED)),
            None
        );
    }

    #[test]
    fn a_forwarded_chain_is_carried_only_when_each_element_is_one() {
        for good in [
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            r#"for="[2001:db8:cafe::17]:4711""#,
            "for=192.0.2.43, for=198.51.100.17",
            "for=1.1.1.1; proto=https",
            ";for=1.1.1.1;",
            r#"host="a\"b""#,
        ] {
            let headers = lines("forwarded", &[good]);
            assert!(forwarded_chain(&headers).is_some(), "{good}");
        }
        for bad in [
            r#"for=6.6.6.6;host="evil"#,
            r"for=1.1.1.1;by=\",
            ";;=,",
            "for",
            "for=",
            "for=a b",
            "=x",
            r#"for="a"b"#,
        ] {
            let headers = lines("forwarded", &[bad]);
            assert_eq!(forwarded_chain(&headers), None, "{bad}");
        }
    }
}
