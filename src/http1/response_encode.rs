//! A response head as the client receives it, and how its body follows.
//!
//! The framing and connection fields are the encoder's alone: whatever
//! `Content-Length`, `Transfer-Encoding` or `Connection` the handler's
//! response carries is replaced by what the body and the connection are.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{Method, StatusCode};
use http_body::SizeHint;

use super::chunked::itoa;
use super::raw_fields::RawFields;

/// How the response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BodyFraming {
    /// No body bytes are written (HEAD, 1xx, 204, 304, or an empty body).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// What the request said about the response.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub method: &'a Method,
    /// The client spoke HTTP/1.1 (and can read the chunked coding).
    pub http11: bool,
    /// Another request may follow on the connection.
    pub keep_alive: bool,
}

/// Room for the status line, `Date`, `Content-Length` or
/// `Transfer-Encoding` and `Connection`, beyond the response's own fields.
const HEAD_EXTRA: usize = 160;

/// Most of a body with a known length that the head's allocation makes
/// room for (the body is written after the head, in the same buffer).
const BODY_ROOM: usize = 16 * 1024;

/// Appends the head of `parts` to `out`; says how the body follows, and
/// whether the connection stays open after it. An upstream's fields kept
/// as sent ([`RawFields`] in the extensions) go first, but for those the
/// map of `parts` replaces.
pub fn head(
    parts: &Parts,
    size: &SizeHint,
    exchange: Exchange<'_>,
    out: &mut Vec<u8>,
) -> (BodyFraming, bool) {
    let status = parts.status;
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let head_only = bodiless_status || exchange.method == Method::HEAD;
    let mut keep_alive = exchange.keep_alive;
    let framing = if head_only {
        BodyFraming::None
    } else {
        match size.exact() {
            Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
            None if exchange.http11 => BodyFraming::Chunked,
            None => {
                keep_alive = false;
                BodyFraming::UntilClose
            }
        }
    };
    // One allocation for the head and a small body after it: a connection
    // between requests keeps no buffer, so `out` usually starts empty.
    let raw = parts.extensions.get::<RawFields>();
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + raw.map_or(0, RawFields::wire_len);
    let body = match framing {
        BodyFraming::Length(n) => usize::try_from(n).unwrap_or(usize::MAX).min(BODY_ROOM),
        _ => 0,
    };
    out.reserve(fields + HEAD_EXTRA + body);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut had_length = false;
    let mut had_date = false;
    // HEAD and 304 tell the length of what a GET would have got.
    let keep_length = head_only && status != StatusCode::NO_CONTENT && !status.is_informational();
    if let Some(raw) = raw {
        (had_length, had_date) = raw.write(&parts.headers, keep_length, out);
    }
    for (name, value) in &parts.headers {
        if raw.is_some_and(|raw| raw.adds(name)) {
            continue; // the gateway's own, written with the upstream's
        }
        if *name == CONTENT_LENGTH {
            had_length = true;
            if !keep_length {
                continue;
            }
        } else if *name == TRANSFER_ENCODING || *name == CONNECTION {
            continue;
        }
        had_date |= *name == DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        BodyFraming::Length(n) => length(n, out),
        BodyFraming::None if !head_only => length(0, out),
        // A HEAD answered by the gateway itself: the length its GET body
        // has. (A forwarded HEAD has an empty body: its length is unknown.)
        BodyFraming::None if exchange.method == Method::HEAD && !had_length => {
            if let Some(n) = size.exact().filter(|n| *n > 0) {
                length(n, out);
            }
        }
        BodyFraming::None | BodyFraming::UntilClose => {}
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !had_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection becomes the protocol `Upgrade` names.
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !exchange.http11 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

fn length(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa(n, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
}

/// The current time as an IMF-fixdate (RFC 9110 §5.6.7), formatted once
/// per second and thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != second {
            let rounded = UNIX_EPOCH + Duration::from_secs(second);
            *last = (second, httpdate::fmt_http_date(rounded));
        }
        out.extend_from_slice(last.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use http::Response;

    use super::*;

    fn encoded(
        response: Response<()>,
        size: SizeHint,
        method: Method,
        http11: bool,
        keep_alive: bool,
    ) -> (String, BodyFraming, bool) {
        let (parts, ()) = response.into_parts();
        let mut out = Vec::new();
        let exchange = Exchange {
            method: &method,
            http11,
            keep_alive,
        };
        let (framing, keep) = head(&parts, &size, exchange, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        // The date changes; everything else is checked exactly.
        let text = text
            .lines()
            .filter(|line| !line.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\n");
        (text, framing, keep)
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("response")
    }

    #[test]
    fn framing_fields_say_what_the_body_is() {
        let lying = response(
            200,
            &[
                ("content-type", "text/plain"),
                ("content-length", "99"),
                ("transfer-encoding", "chunked"),
                ("connection", "upgrade"),
            ],
        );
        assert_eq!(
            encoded(lying, SizeHint::with_exact(5), Method::GET, true, true),
            (
                "HTTP/1.1 200 OK\ncontent-type: text/plain\ncontent-length: 5\n".into(),
                BodyFraming::Length(5),
                true
            )
        );
        let streamed = response(201, &[]);
        assert_eq!(
            encoded(streamed, SizeHint::default(), Method::POST, true, false),
            (
                "HTTP/1.1 201 Created\ntransfer-encoding: chunked\nconnection: close\n".into(),
                BodyFraming::Chunked,
                false
            )
        );
        let old_client = response(200, &[]);
        assert_eq!(
            encoded(old_client, SizeHint::default(), Method::GET, false, true),
            (
                "HTTP/1.1 200 OK\nconnection: close\n".into(),
                BodyFraming::UntilClose,
                false
            )
        );
        let kept = response(404, &[]);
        assert_eq!(
            encoded(kept, SizeHint::with_exact(0), Method::GET, false, true),
            (
                "HTTP/1.1 404 Not Found\ncontent-length: 0\nconnection: keep-alive\n".into(),
                BodyFraming::None,
                true
            )
        );
    }

    #[test]
    fn bodiless_answers_keep_the_length_they_describe() {
        let head = response(200, &[("content-length", "42")]);
        assert_eq!(
            encoded(head, SizeHint::with_exact(0), Method::HEAD, true, true).0,
            "HTTP/1.1 200 OK\ncontent-length: 42\n"
        );
        let own = response(401, &[]);
        assert_eq!(
            encoded(own, SizeHint::with_exact(17), Method::HEAD, true, true).0,
            "HTTP/1.1 401 Unauthorized\ncontent-length: 17\n"
        );
        let not_modified = response(304, &[("content-length", "42"), ("etag", "\"a\"")]);
        assert_eq!(
            encoded(
                not_modified,
                SizeHint::with_exact(0),
                Method::GET,
                true,
                true
            )
            .0,
            "HTTP/1.1 304 Not Modified\ncontent-length: 42\netag: \"a\"\n"
        );
        let no_content = response(204, &[("content-length", "0")]);
        assert_eq!(
            encoded(no_content, SizeHint::default(), Method::DELETE, true, true),
            ("HTTP/1.1 204 No Content\n".into(), BodyFraming::None, true)
        );
    }

    /// `raw` parsed as an upstream's head, its fields in a map or as sent,
    /// with the gateway's `own` fields set on it as the gateway sets them
    /// ([`set_own`](super::super::raw_fields::set_own)); encoded for a
    /// `method` request, without the date the encoder adds.
    fn forwarded(
        raw: &str,
        as_sent: bool,
        own: &[(&'static http::HeaderName, &str)],
        method: &Method,
    ) -> String {
        let mut buf = bytes::BytesMut::from(raw.as_bytes());
        let mut scratch = super::super::response_head::Scratch::default();
        scratch.as_sent = as_sent;
        let head = super::super::response_head::parse(&mut buf, method, &mut scratch)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.raw.is_some(), as_sent);
        let mut response = Response::new(());
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        if let Some(raw) = head.raw {
            response.extensions_mut().insert(raw);
        }
        for (name, value) in own {
            let value = http::HeaderValue::from_str(value).expect("value");
            super::super::raw_fields::set_own(&mut response, name, value);
        }
        let size = match head.framing {
            super::super::response_head::Framing::Length(n) => SizeHint::with_exact(n),
            super::super::response_head::Framing::Empty => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        };
        let (text, _, _) = encoded(response, size, method.clone(), true, true);
        let mut lines: Vec<&str> = text.lines().collect();
        // Fields of one name keep their order; others may come in any.
        lines[1..].sort_by_key(|line| line.split(':').next().map(str::to_owned));
        lines.join("\n")
    }

    #[test]
    fn fields_kept_as_sent_are_written_as_a_map_of_them_would_be() {
        let heads = [
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
             Content-Type: application/json\r\nContent-Length: 5\r\n\
             Connection: keep-alive\r\nX-Request-Id: upstream\r\nRateLimit: upstream\r\n\r\n",
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nVary: Accept\r\nset-cookie: b=2\r\n\
             Keep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
             Connection: X-Hop, keep-alive\r\nX-HOP: secret\r\nUpgrade: h2c\r\n\
             Proxy-Authenticate: Basic\r\nTrailer: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\
             ETag: \"x\"\r\n\r\n",
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: \"a\"\r\n\r\n",
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\n\
             WWW-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.0 200 OK\r\nCache-Control:no-store\r\nContent-Length: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nServer: spaced\r\nX-Two:  spaced \r\nContent-Length: 0\r\n\r\n",
        ];
        static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
        static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");
        let own = [(&X_REQUEST_ID, "gateway"), (&RATELIMIT, "\"api\";r=9;t=1")];
        for raw in heads {
            for method in [Method::GET, Method::HEAD] {
                let map = forwarded(raw, false, &own, &method);
                assert_eq!(forwarded(raw, true, &own, &method), map, "{raw}");
            }
        }
        let first = forwarded(heads[0], true, &own, &Method::GET);
        assert!(first.contains("\nx-request-id: gateway"), "{first}");
        assert!(first.contains("\nratelimit: \"api\";r=9;t=1"), "{first}");
        assert!(!first.contains("upstream"), "{first}");
        assert!(!first.contains("connection"), "{first}");
        let second = forwarded(heads[1], true, &[], &Method::GET);
        assert!(
            second.contains("set-cookie: a=1\nset-cookie: b=2"),
            "{second}"
        );
        for hop in [
            "keep-alive",
            "te:",
            "x-hop",
            "upgrade",
            "proxy-authenticate",
            "trailer",
        ] {
            assert!(
                !second.to_ascii_lowercase().contains(hop),
                "{hop} in {second}"
            );
        }
    }

    #[test]
    fn a_date_is_added_unless_the_response_has_one() {
        let (parts, ()) = response(200, &[]).into_parts();
        let exchange = Exchange {
            method: &Method::GET,
            http11: true,
            keep_alive: true,
        };
        let mut out = Vec::new();
        head(&parts, &SizeHint::with_exact(0), exchange, &mut out);
        let text = String::from_utf8(out).expect("ascii");
        let date = text
            .lines()
            .find_map(|line| line.strip_prefix("date: "))
            .expect("a date");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let (parts, ()) = response(200, &[("date", "Tue, 01 Jan 2030 00:00:00 GMT")]).into_parts();
        let mut out = Vec::new();
        head(&parts, &SizeHint::with_exact(0), exchange, &mut out);
        assert_eq!(
            String::from_utf8(out)
                .expect("ascii")
                .matches("date: ")
                .count(),
            1
        );
    }
}
