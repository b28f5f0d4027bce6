//! Connection-level headers between client and upstream: hop-by-hop headers
//! dropped (RFC 9110 §7.6.1, including those named in `Connection`), and
//! `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239) set from the
//! connection — client-sent values kept only from trusted proxies; headers
//! reserved to the gateway removed in every spelling a CGI-style upstream
//! reads as theirs (`Proxy` among them: "httpoxy"), and so are the fields
//! naming the client's address (`X-Real-IP` and its kin) unless a trusted
//! proxy sent them; HTTP/2 `cookie` fields joined for HTTP/1.1 upstreams.

use std::cell::RefCell;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use http::header::{HeaderName, HeaderValue, CONNECTION, COOKIE, FORWARDED, HOST};
use http::HeaderMap;
use ipnet::IpNet;

use super::forwarded_list::{
    self, address_of, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
};
use crate::config::snapshot::{fold, folds_to, Forwarding};
use crate::http1::request_encode::AddedFields;
use crate::http1::{field_name, FieldName};

static FORWARDED_FIELD: HeaderName = FORWARDED;

/// Method- and path-override headers (folded): never honoured, never
/// passed on, in any spelling. An upstream that routes on `X-Original-URL`
/// or `X-Rewrite-URL` (IIS, older Symfony and Zend) would serve another
/// resource than the one authorized.
const OVERRIDES: [&str; 5] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
];

/// The forwarding headers [`set_forwarded`] writes (folded): a client's
/// other spellings of them (`X_Forwarded_For`) would reach a CGI-style
/// upstream as the same variable, beside or instead of the gateway's.
const FORWARDING: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    // Set by `correlate`: no other spelling reaches the upstream beside it.
    "x-request-id",
];

/// Fields in which upstreams read the client's address (folded): nginx's
/// `X-Real-IP`, the CDNs' (Akamai's `True-Client-IP`, Cloudflare's,
/// Fastly's, Google App Engine's) and the others client-address libraries
/// try before `X-Forwarded-For`; and those in which they read how the
/// client reached the proxy (Rack takes `X-Forwarded-Ssl: on` for HTTPS
/// before `X-Forwarded-Proto`, Spring builds links from the port and the
/// prefix), or the certificate the client showed it (Envoy's
/// `X-Forwarded-Client-Cert`, nginx's and ASP.NET's usual names, AWS's).
/// Only a trusted proxy may vouch for them, so a client's own go
/// nowhere, in any spelling. Each starts with one of
/// [`CLIENT_ADDRESS_STARTS`].
const CLIENT_ADDRESS: [&str; 20] = [
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "x-appengine-user-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "forwarded-for",
    "x-forwarded-ssl",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-url-scheme",
    "front-end-https",
    "x-forwarded-client-cert",
    "x-ssl-client-cert",
    "x-client-cert",
    "x-amzn-mtls-clientcert",
];
const CLIENT_ADDRESS_STARTS: [u8; 4] = [b'x', b't', b'c', b'f'];

/// `Proxy` (folded), a field no standard defines: CGI-style upstreams
/// (RFC 3875 §4.1.18) read it as `HTTP_PROXY`, the variable their HTTP
/// clients take an outgoing proxy from, so a client's would send the
/// upstream's own calls through the client's host ("httpoxy",
/// CVE-2016-5385). Passed on from nobody, a trusted proxy included.
const HTTPOXY: &str = "proxy";

/// Hop-by-hop headers (RFC 9110 §7.6.1, and the proxy-only ones).
pub use crate::http1::is_hop_by_hop;

/// Fields the gateway reads before the request is stripped, and writes
/// again or passes on itself: a `Connection` list naming them does not
/// remove them. A trusted proxy's `Connection: X-Forwarded-For` would
/// otherwise tell the upstream the proxy's own address for the client the
/// gateway judged by the chain, and a client's `Connection: traceparent`
/// leave the upstream no trace context at all.
/// Besides [`FORWARDING`], which it writes again.
const READ_BY_THE_GATEWAY: [&str; 4] = ["host", "forwarded", "traceparent", "tracestate"];

/// Whether `TE` lists `trailers` (RFC 9110 §10.1.4).
pub fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        })
}

/// Removes, from a request on its way upstream, in one pass over its
/// names (most requests carry none of these): the hop-by-hop fields and
/// those `Connection` names (RFC 9110 §7.6.1); method-override fields and
/// `Proxy` in every spelling; the forwarding fields in every spelling but their
/// own (which [`set_forwarded`] replaces or, from a trusted proxy,
/// extends); and, unless the peer is a trusted proxy, the client address
/// fields in every spelling. No allocation unless one is present.
pub fn strip_request(headers: &mut HeaderMap, from_trusted: bool) {
    strip(headers, |name| reserved(name, from_trusted));
}

/// Removes the hop-by-hop fields, those `Connection` names, and those
/// `also` picks.
fn strip(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    let mut hop_by_hop = false;
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let hop = is_hop_by_hop(name);
            hop_by_hop |= hop;
            hop || also(name)
        })
        .cloned()
        .collect();
    if doomed.is_empty() {
        return;
    }
    if hop_by_hop {
        doomed.extend(
            // Read as bytes: a value with an octet above 0x7F still names
            // the fields its other members list (RFC 9110 §7.6.1).
            headers
                .get_all(CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                // Names a header the list above has covered already.
                .filter(|name| !name.eq_ignore_ascii_case(b"keep-alive"))
                .filter(|name| {
                    !READ_BY_THE_GATEWAY
                        .iter()
                        .chain(&FORWARDING)
                        .any(|kept| name.eq_ignore_ascii_case(kept.as_bytes()))
                })
                .filter_map(|name| HeaderName::from_bytes(name).ok()),
        );
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes every field whose name `doomed` picks (all its lines). Nothing
/// is allocated when no name is picked.
pub fn remove_matching(headers: &mut HeaderMap, doomed: impl Fn(&HeaderName) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| doomed(name))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

fn reserved(name: &HeaderName, from_trusted: bool) -> bool {
    // Most names stop at their first byte (every reserved name starts
    // with one of nine), and `folds_to` compares lengths before bytes.
    let bytes = name.as_str().as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    let client_address = || {
        !from_trusted
            && CLIENT_ADDRESS_STARTS.contains(&first)
            && CLIENT_ADDRESS.iter().any(|a| folds_to(name, a.as_bytes()))
    };
    match first {
        b'x' => {
            OVERRIDES.iter().any(|o| folds_to(name, o.as_bytes()))
                || FORWARDING
                    .iter()
                    .any(|f| name.as_str() != *f && folds_to(name, f.as_bytes()))
                || client_address()
        }
        b'p' => folds_to(name, HTTPOXY.as_bytes()) || spells_framing_otherwise(bytes),
        b't' | b'c' | b'k' | b'u' => spells_framing_otherwise(bytes) || client_address(),
        _ => client_address(),
    }
}

/// A framing or hop-by-hop field's name in another spelling
/// (`Transfer_Encoding`, `Content.Length`, `Proxy_Authorization`): a
/// CGI-style upstream reads it as the field itself
/// (`HTTP_TRANSFER_ENCODING`), and may frame the body by it where the
/// gateway framed it by `Content-Length` — a request smuggled past every
/// check. Passed on from nobody.
fn spells_framing_otherwise(name: &[u8]) -> bool {
    /// The longest such name, `proxy-authorization`.
    const LONGEST: usize = 19;
    // Only the lengths of those names (most fields stop here), and only a
    // name with a `_` or `.` (its own spelling is stripped as hop-by-hop).
    if !matches!(name.len(), 2 | 7 | 10 | 14 | 16 | 17 | 18 | 19)
        || !name.iter().any(|&b| b == b'_' || b == b'.')
    {
        return false;
    }
    let mut folded = [0u8; LONGEST];
    for (to, &from) in folded.iter_mut().zip(name) {
        *to = fold(from);
    }
    matches!(
        field_name(&folded[..name.len()]),
        FieldName::Connection
            | FieldName::TransferEncoding
            | FieldName::ContentLength
            | FieldName::HopByHop
    )
}

/// RFC 9113 §8.2.3: an HTTP/2 client may split `cookie` into one field per
/// pair; before the request goes out over HTTP/1.1 they are joined with
/// `"; "` into one field (RFC 6265 §5.4 allows one `Cookie` line).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = Vec::with_capacity(first.len() * 4);
    for value in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Valid values joined by "; " make a valid value; were it not so, the
    // fields would go on as sent.
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(joined)) {
        headers.insert(COOKIE, value);
    }
}

/// The address of the client: the peer's, or, from a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not itself a trusted
/// proxy (read right to left, over every line: entries further left are
/// the client's to write, and are never read). Each entry is read alone,
/// from its bytes, so that what a client wrote further left (obs-text,
/// garbage) cannot change which entry names it. An address is taken as
/// written or with a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`, as
/// some proxies write it); an IPv4-mapped IPv6 address is its IPv4
/// address. `peer` is canonical already (see `server`).
///
/// `None` when the entry that should name the client is not an address (a
/// trusted proxy wrote `unknown`, an obfuscated name or garbage): the
/// client is unknown. It is never taken to be the proxy, whose address an
/// `ip_filter` or a per-address limit would then judge in its place.
pub fn client_ip(headers: &HeaderMap, peer: SocketAddr, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(&client) {
        return Some(client);
    }
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in line.as_bytes().rsplit(|b| *b == b',') {
            let entry = entry.trim_ascii();
            // RFC 9110 §5.6.1: empty list elements are ignored.
            if entry.is_empty() {
                continue;
            }
            client = address_of(entry)?;
            if !is_trusted(&client) {
                return Some(client);
            }
        }
    }
    // Every entry is a trusted proxy: the farthest one sent the request.
    Some(client)
}

/// Sets the forwarding headers for a request from `ip`, a trusted proxy
/// or not: the gateway's go to `added`, the lines they replace leave
/// `headers` (a trusted proxy's `X-Forwarded-For` and `Forwarded` are
/// carried into the new values, its `X-Forwarded-Proto/-Host` kept).
/// What `make` turns off is not added, and only a trusted proxy's lines
/// of it go on.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    added: &mut AddedFields,
    ip: IpAddr,
    tls: bool,
    from_trusted: bool,
    trusted: &[IpNet],
    make: Forwarding,
) {
    let proto = if tls { "https" } else { "http" };
    let host = headers.get(HOST).cloned();
    // Which of the four the request carries, in one pass over its names:
    // most carry none, and a removal costs a lookup.
    let (mut sent_for, mut sent_forwarded, mut sent_proto, mut sent_host) =
        (false, false, false, false);
    for name in headers.keys() {
        if *name == FORWARDED {
            sent_forwarded = true;
        } else if name.as_str().starts_with("x-forwarded-") {
            sent_for |= *name == X_FORWARDED_FOR;
            sent_proto |= *name == X_FORWARDED_PROTO;
            sent_host |= *name == X_FORWARDED_HOST;
        }
    }
    if !make.x_forwarded {
        if !from_trusted {
            for (sent, name) in [
                (sent_for, &X_FORWARDED_FOR),
                (sent_proto, &X_FORWARDED_PROTO),
                (sent_host, &X_FORWARDED_HOST),
            ] {
                if sent {
                    headers.remove(name);
                }
            }
        }
        sent_for = false; // a trusted proxy's goes on as sent
    }
    if !make.forwarded {
        if sent_forwarded && !from_trusted {
            headers.remove(FORWARDED);
        }
        sent_forwarded = false; // likewise
    }
    if !(make.x_forwarded || make.forwarded) {
        return;
    }
    let (forwarded_for, forwarded) = if from_trusted {
        // A chain is joined only for the field that is made; one sent
        // only in `X-Forwarded-*` (or with a broken `Forwarded`) is carried
        // into `Forwarded` as well.
        let chain = forwarded_list::members(headers, &X_FORWARDED_FOR);
        compose(
            make.x_forwarded
                .then(|| forwarded_list::joined(&chain))
                .flatten(),
            make.forwarded
                .then(|| {
                    forwarded_list::forwarded_chain(headers)
                        .or_else(|| forwarded_list::in_forwarded_terms(headers, &chain, trusted))
                })
                .flatten(),
            ip,
            proto,
            host.as_ref(),
        )
    } else {
        from_this_peer(ip, tls, host.as_ref())
    };
    if sent_for {
        headers.remove(&X_FORWARDED_FOR);
    }
    if sent_forwarded {
        headers.remove(FORWARDED);
    }
    if let Some(value) = forwarded_for.filter(|_| make.x_forwarded) {
        added.add(&X_FORWARDED_FOR, value);
    }
    if let Some(value) = forwarded.filter(|_| make.forwarded) {
        added.add(&FORWARDED_FIELD, value);
    }
    if !make.x_forwarded {
        return;
    }
    if !(from_trusted && sent_proto) {
        if sent_proto {
            headers.remove(&X_FORWARDED_PROTO);
        }
        added.add(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(from_trusted && sent_host) {
        if sent_host {
            headers.remove(&X_FORWARDED_HOST);
        }
        if let Some(host) = host {
            added.add(&X_FORWARDED_HOST, host);
        }
    }
}

/// `X-Forwarded-For` and `Forwarded` for a peer whose own values are
/// dropped. They depend on the peer, the scheme and `Host` only, which
/// stay the same request after request on a connection: each thread keeps
/// the last ones it composed.
fn from_this_peer(
    ip: IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    struct Last {
        ip: IpAddr,
        tls: bool,
        host: Option<HeaderValue>,
        values: (Option<HeaderValue>, Option<HeaderValue>),
    }
    thread_local! {
        static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(hit) = last
            .as_ref()
            .filter(|l| l.ip == ip && l.tls == tls && l.host.as_ref() == host)
        {
            return hit.values.clone();
        }
        let proto = if tls { "https" } else { "http" };
        let values = compose(None, None, ip, proto, host);
        *last = Some(Last {
            ip,
            tls,
            host: host.cloned(),
            values: values.clone(),
        });
        values
    })
}

/// The values of `X-Forwarded-For` and `Forwarded`: the prior ones (from a
/// trusted proxy), then this hop's.
fn compose(
    prior_for: Option<Vec<u8>>,
    prior_forwarded: Option<Vec<u8>>,
    ip: IpAddr,
    proto: &str,
    host: Option<&HeaderValue>,
) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let mut client = String::with_capacity(40);
    // Writing into a String cannot fail.
    let _ = write!(client, "{ip}");
    let mut forwarded_for = prior_for.unwrap_or_default();
    let mut forwarded = prior_forwarded.unwrap_or_default();
    forwarded_for.reserve(client.len() + 2);
    forwarded.reserve(96);
    if !forwarded_for.is_empty() {
        forwarded_for.extend_from_slice(b", ");
    }
    if !forwarded.is_empty() {
        forwarded.extend_from_slice(b", ");
    }
    forwarded_for.extend_from_slice(client.as_bytes());
    match ip {
        IpAddr::V6(_) => {
            forwarded.extend_from_slice(b"for=\"[");
            forwarded.extend_from_slice(client.as_bytes());
            forwarded.extend_from_slice(b"]\"");
        }
        IpAddr::V4(_) => {
            forwarded.extend_from_slice(b"for=");
            forwarded.extend_from_slice(client.as_bytes());
        }
    }
    forwarded.extend_from_slice(b";proto=");
    forwarded.extend_from_slice(proto.as_bytes());
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        forwarded.extend_from_slice(b";host=\"");
        forwarded.extend(host.bytes().filter(|b| *b != b'"'));
        forwarded.push(b'"');
    }
    (
        HeaderValue::from_maybe_shared(Bytes::from(forwarded_for)).ok(),
        HeaderValue::from_maybe_shared(Bytes::from(forwarded)).ok(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::TE;

    /// `set_forwarded`, its added fields put into the map as the upstream
    /// receives them.
    fn forwarded_into(headers: &mut HeaderMap, peer: SocketAddr, tls: bool, trusted: &[IpNet]) {
        let all = Forwarding {
            forwarded: true,
            ..Forwarding::default()
        };
        forwarded_making(headers, peer, tls, trusted, all);
    }

    fn forwarded_making(
        headers: &mut HeaderMap,
        peer: SocketAddr,
        tls: bool,
        trusted: &[IpNet],
        make: Forwarding,
    ) {
        let mut added = AddedFields::new();
        let from_trusted = trusted.iter().any(|net| net.contains(&peer.ip()));
        set_forwarded(
            headers,
            &mut added,
            peer.ip(),
            tls,
            from_trusted,
            trusted,
            make,
        );
        added.insert_into(headers);
    }

    #[test]
    fn a_field_switched_off_is_not_added_and_goes_on_only_from_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let stranger: SocketAddr = "5.5.5.5:4000".parse().unwrap();
        let sent = || {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static("api.example"));
            headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("6.6.6.6"));
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
            headers.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil"));
            headers.insert(FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
            headers
        };
        let no_x = Forwarding {
            x_forwarded: false,
            forwarded: true,
            ..Forwarding::default()
        };
        let mut headers = sent();
        forwarded_making(&mut headers, stranger, false, &trusted, no_x);
        for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
            assert!(!headers.contains_key(name), "{name} from a stranger");
        }
        assert_eq!(
            headers.get(FORWARDED).unwrap(),
            "for=5.5.5.5;proto=http;host=\"api.example\""
        );
        let mut headers = sent();
        forwarded_making(&mut headers, proxy, false, &trusted, no_x);
        assert_eq!(headers.get(&X_FORWARDED_FOR).unwrap(), "6.6.6.6");
        assert_eq!(headers.get(&X_FORWARDED_HOST).unwrap(), "evil");
        let none = Forwarding {
            x_forwarded: false,
            forwarded: false,
            ..Forwarding::default()
        };
        let mut headers = sent();
        forwarded_making(&mut headers, stranger, false, &trusted, none);
        assert_eq!(headers.len(), 1, "only Host: {headers:?}");
        let mut headers = sent();
        forwarded_making(&mut headers, proxy, false, &trusted, none);
        assert_eq!(headers, sent(), "a trusted proxy's go on as sent");
    }

    #[test]
    fn the_client_address_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 1.2.3.4"),
        );
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.7"));
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let stranger: SocketAddr = "5.5.5.5:4000".parse().unwrap();
        // The nearest entry that is not a trusted proxy; what is left of it
        // is the client's to write.
        assert_eq!(
            client_ip(&headers, proxy, &trusted),
            Some("1.2.3.4".parse::<IpAddr>().unwrap())
        );
        assert_eq!(client_ip(&headers, stranger, &trusted), Some(stranger.ip()));
        assert_eq!(
            client_ip(&HeaderMap::new(), proxy, &trusted),
            Some(proxy.ip())
        );
    }

    #[test]
    fn each_entry_is_read_alone_and_one_that_is_no_address_leaves_the_client_unknown() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let client_of = |lines: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append(&X_FORWARDED_FOR, HeaderValue::from_bytes(line).unwrap());
            }
            client_ip(&headers, proxy, &trusted).map(|ip| ip.to_string())
        };
        let known = |ip: &str| Some(ip.to_owned());
        // What the client wrote left of the entry naming it is not read.
        assert_eq!(client_of(&[b"\xff, 203.0.113.1"]), known("203.0.113.1"));
        assert_eq!(client_of(&[b"\xff", b"203.0.113.1"]), known("203.0.113.1"));
        assert_eq!(
            client_of(&[b"bogus, 203.0.113.1, 10.0.0.7"]),
            known("203.0.113.1")
        );
        assert_eq!(
            client_of(&[b"1.2.3.4,, 203.0.113.1 ,"]),
            known("203.0.113.1")
        );
        // As some proxies write it, and IPv4-mapped IPv6.
        assert_eq!(client_of(&[b"203.0.113.1:4711"]), known("203.0.113.1"));
        assert_eq!(client_of(&[b"[2001:db8::1]:4711"]), known("2001:db8::1"));
        assert_eq!(client_of(&[b"[2001:db8::1]"]), known("2001:db8::1"));
        assert_eq!(client_of(&[b"::ffff:203.0.113.1"]), known("203.0.113.1"));
        assert_eq!(
            client_of(&[b"::ffff:10.0.0.7, ::ffff:10.0.0.8"]),
            known("10.0.0.7")
        );
        // An entry a trusted proxy wrote that is no address: unknown, never
        // the proxy.
        for garbled in [
            &b"1.2.3.4, bogus"[..],
            b"1.2.3.4, unknown, 10.0.0.7",
            b"\xff",
        ] {
            assert_eq!(client_of(&[garbled]), None, "{garbled:?}");
        }
        // From a peer that is not trusted, the header is not read at all.
        let mut headers = HeaderMap::new();
        headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("bogus"));
        let stranger: SocketAddr = "5.5.5.5:4000".parse().unwrap();
        assert_eq!(client_ip(&headers, stranger, &trusted), Some(stranger.ip()));
    }

    #[test]
    fn every_hop_by_hop_header_is_dropped() {
        let hop = [
            "connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
        ];
        let mut h = HeaderMap::new();
        for name in hop {
            h.insert(name, HeaderValue::from_static("x"));
        }
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_request(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_request(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(TE).is_none());
        assert!(h.get("x-kept").is_some());
        // A member with an octet above 0x7F does not hide the others.
        let mut h = HeaderMap::new();
        let listed = HeaderValue::from_bytes(b"X-Hop, caf\xE9").unwrap(); // a valid field value
        h.insert(CONNECTION, listed);
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_request(&mut h, false);
        assert!(h.get("x-hop").is_none(), "{h:?}");
        assert!(h.get("x-kept").is_some());
    }

    /// What the gateway read before stripping (a trusted proxy's chain, the
    /// request id, the trace context, the host) stays what it read.
    #[test]
    fn connection_cannot_name_away_what_the_gateway_read() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static(
                "X-Request-Id, x-forwarded-for, Forwarded, X-Forwarded-Host, \
                 X-Forwarded-Proto, traceparent, tracestate, host, X-Hop",
            ),
        );
        let kept = [
            "x-request-id",
            "x-forwarded-for",
            "forwarded",
            "x-forwarded-host",
            "x-forwarded-proto",
            "traceparent",
            "tracestate",
            "host",
        ];
        for name in kept.iter().chain(&["x-hop"]) {
            h.insert(*name, HeaderValue::from_static("1"));
        }
        strip_request(&mut h, true);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        let mut expected = kept.to_vec();
        expected.sort_unstable();
        assert_eq!(left, expected);
    }

    /// `Transfer_Encoding: chunked` beside the gateway's `Content-Length`
    /// would frame the body another way at a CGI-style upstream.
    #[test]
    fn framing_and_hop_by_hop_names_go_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "transfer_encoding",
            "Transfer.Encoding",
            "content_length",
            "CONTENT.LENGTH",
            "proxy_authorization",
            "keep_alive",
            "proxy_connection",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_static("chunked"));
        }
        for kept in [
            "connection_",
            "upgrade_",
            "x_transfer_encoding",
            "content_type",
            "te_x",
        ] {
            h.insert(kept, HeaderValue::from_static("1"));
        }
        strip_request(&mut h, true);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "connection_",
                "content_type",
                "te_x",
                "upgrade_",
                "x_transfer_encoding"
            ]
        );
    }

    #[test]
    fn client_values_replaced_unless_trusted() {
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(HOST, HeaderValue::from_static("gw.example"));
        forwarded_into(&mut h, peer, false, &[]);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "gw.example");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        forwarded_into(&mut h, peer, false, &["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn values_kept_from_the_last_request_follow_peer_scheme_and_host() {
        let forwarded = |peer: &str, tls: bool, host: Option<&'static str>| {
            let mut h = HeaderMap::new();
            if let Some(host) = host {
                h.insert(HOST, HeaderValue::from_static(host));
            }
            forwarded_into(&mut h, peer.parse().unwrap(), tls, &[]);
            let text = |name| h[name].to_str().unwrap().to_owned();
            (text("x-forwarded-for"), text("forwarded"))
        };
        for _ in 0..2 {
            let (xff, fwd) = forwarded("10.0.0.1:1", false, Some("a.example"));
            assert_eq!(xff, "10.0.0.1");
            assert_eq!(fwd, "for=10.0.0.1;proto=http;host=\"a.example\"");
            let (_, fwd) = forwarded("10.0.0.1:2", false, Some("b.example"));
            assert_eq!(fwd, "for=10.0.0.1;proto=http;host=\"b.example\"");
            let (_, fwd) = forwarded("10.0.0.1:2", true, Some("b.example"));
            assert_eq!(fwd, "for=10.0.0.1;proto=https;host=\"b.example\"");
            let (xff, fwd) = forwarded("[::1]:3", true, None);
            assert_eq!(xff, "::1");
            assert_eq!(fwd, "for=\"[::1]\";proto=https");
        }
    }

    #[test]
    fn reserved_headers_go_in_every_spelling() {
        let mut h = HeaderMap::new();
        for name in [
            "x-http-method-override",
            "x_http_method_override",
            "X-HTTP-Method_Override",
            "x.http.method.override",
            "X_HTTP_METHOD",
            "x-method_override",
            "x_forwarded_for",
            "X.Forwarded.Host",
            "x-forwarded_proto",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_static("spoofed"));
        }
        for kept in ["x-forwarded-for", "x-http-methods", "x-kept", "cookie"] {
            h.insert(kept, HeaderValue::from_static("1"));
        }
        strip_request(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["cookie", "x-forwarded-for", "x-http-methods", "x-kept"]
        );
    }

    /// httpoxy (CVE-2016-5385): a CGI-style upstream reads `Proxy` as
    /// `HTTP_PROXY`, its own HTTP clients' outgoing proxy.
    #[test]
    fn the_proxy_field_goes_in_every_spelling_from_anyone() {
        let sent = || {
            let mut h = HeaderMap::new();
            for name in ["Proxy", "PROXY", "proxy"] {
                let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                h.append(name, HeaderValue::from_static("http://evil.example:8080"));
            }
            for kept in ["proxy-status", "proxyx", "x-proxy", "p"] {
                h.insert(kept, HeaderValue::from_static("1"));
            }
            h
        };
        for from_trusted in [false, true] {
            let mut h = sent();
            strip_request(&mut h, from_trusted);
            let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            assert_eq!(left, ["p", "proxy-status", "proxyx", "x-proxy"]);
        }
    }

    /// Every spelling of the client address fields, on several lines, and
    /// names that only resemble them.
    fn claiming_a_client_address() -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in [
            "x-real-ip",
            "X_Real_IP",
            "x.real.ip",
            "true-client-ip",
            "True_Client_Ip",
            "x-client-ip",
            "X-Client_IP",
            "x-cluster-client-ip",
            "X-Forwarded",
            "x-appengine-user-ip",
            "CF-Connecting-IP",
            "fastly-client-ip",
            "Forwarded_For",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(&name, HeaderValue::from_static("6.6.6.6"));
            h.append(name, HeaderValue::from_static("6.6.6.7"));
        }
        for kept in [
            "x-real-ips",
            "true-client",
            "traceparent",
            "x-client-id",
            "forwarded",
            "fastly-debug",
        ] {
            h.insert(kept, HeaderValue::from_static("1"));
        }
        h
    }

    #[test]
    fn a_client_address_field_goes_on_only_from_a_trusted_proxy() {
        let mut h = claiming_a_client_address();
        strip_request(&mut h, false);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "fastly-debug",
                "forwarded",
                "traceparent",
                "true-client",
                "x-client-id",
                "x-real-ips"
            ]
        );
        let mut h = claiming_a_client_address();
        strip_request(&mut h, true);
        assert_eq!(
            h,
            claiming_a_client_address(),
            "as a trusted proxy sent them"
        );
        assert_eq!(h.get_all("x-real-ip").iter().count(), 2);
    }

    #[test]
    fn a_trusted_proxy_is_still_denied_what_no_client_may_send() {
        let mut h = claiming_a_client_address();
        h.insert("x_http_method", HeaderValue::from_static("DELETE"));
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        h.insert(CONNECTION, HeaderValue::from_static("x-real-ip"));
        strip_request(&mut h, true);
        for gone in [
            "x_http_method",
            "x_forwarded_for",
            "connection",
            "x-real-ip",
        ] {
            assert!(!h.contains_key(gone), "{gone}: {h:?}");
        }
        assert_eq!(h.get_all("true-client-ip").iter().count(), 2);
    }

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        h.append(COOKIE, HeaderValue::from_static("c=3; d=4"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h[COOKIE], "a=1; b=2; c=3; d=4");
        let mut one = HeaderMap::new();
        one.append(COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[COOKIE], "a=1");
    }

    /// A client's own line with an octet above 0x7F, before its proxy's
    /// entry, goes on with the chain: the upstream sees the client the
    /// gateway judged, not the proxy alone.
    #[test]
    fn a_chain_with_a_byte_above_0x7f_is_kept_whole() {
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        let sent = HeaderValue::from_bytes(b"\xff, 203.0.113.1").unwrap();
        h.append("x-forwarded-for", sent);
        h.append(
            FORWARDED,
            HeaderValue::from_bytes(b"for=\"\xff\", for=203.0.113.1").unwrap(),
        );
        forwarded_into(&mut h, peer, false, &["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            h["x-forwarded-for"].as_bytes(),
            b"\xff, 203.0.113.1, 10.1.2.3"
        );
        assert_eq!(
            h[FORWARDED].as_bytes(),
            b"for=\"\xff\", for=203.0.113.1, for=10.1.2.3;proto=http"
        );
    }

    #[test]
    fn a_chain_written_only_in_x_forwarded_is_carried_into_forwarded() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let forwarded_for = |fields: &[(&HeaderName, &'static str)]| {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static("internal:8080"));
            for (name, value) in fields {
                headers.append(*name, HeaderValue::from_static(value));
            }
            forwarded_into(&mut headers, proxy, false, &trusted);
            headers[FORWARDED].to_str().unwrap().to_owned()
        };
        let own = "for=10.0.0.1;proto=http;host=\"internal:8080\"";
        // A TLS-terminating load balancer: the client's scheme and host
        // are the first element's, not the gateway's hop.
        assert_eq!(
            forwarded_for(&[
                (&X_FORWARDED_FOR, "203.0.113.9"),
                (&X_FORWARDED_PROTO, "https"),
                (&X_FORWARDED_HOST, "api.example.com"),
            ]),
            format!("for=203.0.113.9;proto=https;host=\"api.example.com\", {own}")
        );
        // The client's element is the entry the gateway judges the client
        // (the nearest that is no trusted proxy), the trusted proxies after
        // it one each; what the client wrote before it is not carried. An
        // IPv6 address is quoted and bracketed, a port dropped; empty
        // members are none.
        assert_eq!(
            forwarded_for(&[
                (&X_FORWARDED_FOR, "not-an-ip, 6.6.6.6,, "),
                (&X_FORWARDED_FOR, "[2001:db8::7]:5555, 10.0.0.7"),
                (&X_FORWARDED_PROTO, ", https"),
            ]),
            format!("for=\"[2001:db8::7]\";proto=https, for=10.0.0.7, {own}")
        );
        // A `Forwarded` line that is empty, or broken (the gateway's
        // element would land inside its open quotes), is as none.
        for broken in ["", "for=6.6.6.6;host=\"evil", "for=1.1.1.1;by=\\", ";;=,"] {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, HeaderValue::from_static("internal:8080"));
            headers.insert(&X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
            headers.insert(FORWARDED, HeaderValue::from_str(broken).unwrap());
            forwarded_into(&mut headers, proxy, false, &trusted);
            assert_eq!(
                headers.get_all(FORWARDED).iter().collect::<Vec<_>>(),
                [format!("for=203.0.113.9, {own}").as_str()],
                "{broken:?}"
            );
        }
        // A scheme that is none, a host that would leave its quotes: left out.
        assert_eq!(
            forwarded_for(&[(&X_FORWARDED_PROTO, "ht tp"), (&X_FORWARDED_HOST, "a\"b"),]),
            own
        );
        assert_eq!(
            forwarded_for(&[(&X_FORWARDED_PROTO, "https, http")]),
            format!("proto=https, {own}")
        );
        // A chain that has a `Forwarded` goes on as it was sent.
        assert_eq!(
            forwarded_for(&[
                (&X_FORWARDED_FOR, "203.0.113.9"),
                (&FORWARDED, "for=192.0.2.1"),
            ]),
            format!("for=192.0.2.1, {own}")
        );
    }

    #[test]
    fn every_line_from_a_trusted_proxy_is_kept() {
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append("x-forwarded-for", HeaderValue::from_static("2.2.2.2"));
        h.append(FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        h.append(FORWARDED, HeaderValue::from_static("for=2.2.2.2"));
        forwarded_into(&mut h, peer, false, &["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(
            h[FORWARDED],
            "for=1.1.1.1, for=2.2.2.2, for=10.1.2.3;proto=http"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
    }
}
