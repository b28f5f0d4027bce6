//! A client's request head, parsed from the front of the connection's read
//! buffer: the request the handler gets, and how its body is framed
//! (RFC 9112 §6).
//!
//! Whatever could let two parsers frame a request differently is refused
//! before anything is dispatched (400, and the connection closed):
//! `Content-Length` together with `Transfer-Encoding`, lengths that differ
//! or are not plain digits, a transfer coding whose last coding is not
//! `chunked`, `chunked` applied twice, `Transfer-Encoding` in HTTP/1.0.
//! A transfer coding other than `chunked` (`gzip, chunked`) is answered
//! 501 (RFC 9112 §6.1): the gateway would have to decode it to frame the
//! body, and passing it on undecoded would change what the body is.
//! Header values share the head's bytes; only the field names are copied.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{HeaderName, CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{Method, Request, Uri, Version};

use crate::config::snapshot::Limits;

/// Header fields parsed at most (`limits.max_headers` is at most this):
/// the parser's slots live on the stack.
const HEADER_SLOTS: usize = crate::config::snapshot::MAX_HEADERS;

/// Room for fields a policy sets on the request (outbound auth, request
/// transformation) without regrowing the map. The gateway's own fields
/// (correlation, forwarding) never enter it: they are written beside the
/// request's (`request_encode::AddedFields`).
const POLICY_FIELDS: usize = 2;

/// The connection preface of HTTP/2 (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A complete request head.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// The client lets the connection carry another request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` with a body to come.
    pub expect_continue: bool,
}

/// Why a head is refused; the connection is answered and closed.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request head larger than the limit")]
    HeadTooLarge,
    #[error("request target longer than the limit")]
    UriTooLong,
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// An expectation other than `100-continue` (RFC 9110 §10.1.1): a
    /// client waiting for a `100` it will never get would hold its body.
    #[error("expectation other than 100-continue")]
    ExpectationFailed,
}

/// What the front of the buffer holds.
// Moved once per request, straight to its use: boxing the head would
// cost an allocation per request instead.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    Head(Head),
    /// Not a whole head yet: read more.
    Partial,
    /// The HTTP/2 connection preface.
    Http2,
}

/// A head's fields between parsing and the request: each name, and where
/// its value is in the head. Kept by the connection, to be used again.
pub type FieldScratch = Vec<(HeaderName, usize, usize)>;

/// Parses the head at the front of `buf`, consuming it when complete.
pub fn parse(
    buf: &mut BytesMut,
    limits: &Limits,
    first: bool,
    scratch: &mut FieldScratch,
) -> Result<Parsed, Refusal> {
    if first && buf.starts_with(&H2_PREFACE[..buf.len().min(H2_PREFACE.len())]) {
        return Ok(if buf.len() >= H2_PREFACE.len() {
            Parsed::Http2
        } else {
            Parsed::Partial
        });
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let slots = &mut slots[..limits.max_headers.clamp(1, HEADER_SLOTS)];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_header_bytes => {
            return Ok(Parsed::Partial)
        }
        Ok(httparse::Status::Partial) if memchr::memchr(b'\n', buf).is_none() => {
            return Err(Refusal::UriTooLong)
        }
        Ok(httparse::Status::Partial) => return Err(Refusal::HeadTooLarge),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::HeadTooLarge),
        Err(httparse::Error::Version) => {
            return Err(Refusal::BadRequest("unsupported HTTP version"))
        }
        Err(_) => return Err(Refusal::BadRequest("malformed request head")),
    };
    if len > limits.max_header_bytes {
        return Err(Refusal::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(Refusal::BadRequest("malformed request head"));
    };
    if target.len() > limits.max_uri {
        return Err(Refusal::UriTooLong);
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::BadRequest("malformed method"))?;
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    // Offsets into the buffer: the values are sliced from the frozen head.
    let base = buf.as_ptr() as usize;
    let target_at = target.as_ptr() as usize - base;
    let target_range = target_at..target_at + target.len();
    scratch.clear();
    let mut fields = Fields::new(scratch);
    for header in request.headers.iter() {
        fields.add(header, base, version)?;
    }
    let framing = fields.framing()?;
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_range))
        .map_err(|_| Refusal::BadRequest(crate::path::MALFORMED_TARGET))?;
    let mut headers = super::spares::take(fields.entries.len() + POLICY_FIELDS);
    for (name, start, end) in fields.entries.drain(..) {
        headers.append(name, super::parsed_value(&head, start..end));
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let keep_alive = match version {
        Version::HTTP_11 => !fields.close,
        _ => fields.keep_alive && !fields.close,
    };
    Ok(Parsed::Head(Head {
        request,
        framing,
        keep_alive,
        expect_continue: fields.expect_continue
            && version == Version::HTTP_11
            && framing != Framing::None,
    }))
}

/// The fields of a head, and what its framing fields said.
struct Fields<'a> {
    /// Name, and the value's offsets in the head.
    entries: &'a mut FieldScratch,
    length: Option<u64>,
    /// `chunked` codings seen, and whether the last coding was `chunked`.
    chunked: u32,
    chunked_last: bool,
    coded: bool,
    /// A coding other than `chunked` was named.
    other_coding: bool,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl<'a> Fields<'a> {
    fn new(entries: &'a mut FieldScratch) -> Fields<'a> {
        Fields {
            entries,
            length: None,
            chunked: 0,
            chunked_last: false,
            coded: false,
            other_coding: false,
            close: false,
            keep_alive: false,
            expect_continue: false,
        }
    }

    fn add(
        &mut self,
        header: &httparse::Header<'_>,
        base: usize,
        version: Version,
    ) -> Result<(), Refusal> {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| Refusal::BadRequest("malformed header name"))?;
        let value = header.value;
        if name == CONTENT_LENGTH {
            let length = digits(value).ok_or(Refusal::BadRequest("invalid Content-Length"))?;
            if self.length.is_some_and(|seen| seen != length) {
                return Err(Refusal::BadRequest("conflicting Content-Length headers"));
            }
            self.length = Some(length);
        } else if name == TRANSFER_ENCODING {
            if version != Version::HTTP_11 {
                return Err(Refusal::BadRequest("Transfer-Encoding in HTTP/1.0"));
            }
            for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                // RFC 9110 §5.6.1 lets a recipient skip empty list
                // elements, but a framing field is no place for leniency:
                // `chunked,` or an empty field beside `Content-Length` is
                // read literally by other parsers (hyper refuses both).
                if coding.is_empty() {
                    return Err(Refusal::BadRequest("empty transfer coding"));
                }
                self.coded = true;
                self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                self.chunked += u32::from(self.chunked_last);
                self.other_coding |= !self.chunked_last;
            }
        } else if name == CONNECTION {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == EXPECT {
            // RFC 9110 §10.1.1: HTTP/1.0 expectations are ignored.
            if version == Version::HTTP_11 {
                self.expect_continue |=
                    super::expects_continue(value).ok_or(Refusal::ExpectationFailed)?;
            }
        }
        let start = value.as_ptr() as usize - base;
        self.entries.push((name, start, start + value.len()));
        Ok(())
    }

    /// RFC 9112 §6.3, for requests.
    fn framing(&self) -> Result<Framing, Refusal> {
        match (self.coded, self.length) {
            (true, Some(_)) => Err(Refusal::BadRequest(
                "both Content-Length and Transfer-Encoding",
            )),
            // §6.3: without `chunked` last, once, the body cannot be framed.
            (true, None) if self.chunked != 1 || !self.chunked_last => {
                Err(Refusal::BadRequest("unsupported transfer coding"))
            }
            (true, None) if self.other_coding => Err(Refusal::NotImplemented(
                "transfer codings other than chunked",
            )),
            (true, None) => Ok(Framing::Chunked),
            (false, Some(0) | None) => Ok(Framing::None),
            (false, Some(n)) => Ok(Framing::Length(n)),
        }
    }
}

/// A `Content-Length` value: decimal digits only, no sign, no list.
fn digits(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 1024,
            max_headers: 8,
            max_uri: 64,
            max_body: 1 << 20,
            max_connections: 10,
            max_tunnels: 10,
            max_streams: 10,
        }
    }

    fn parse_all(text: &str) -> Result<Parsed, Refusal> {
        parse(&mut BytesMut::from(text), &limits(), false, &mut Vec::new())
    }

    fn head(text: &str) -> Head {
        match parse_all(text) {
            Ok(Parsed::Head(head)) => head,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_head_becomes_a_request_and_leaves_what_follows() {
        let mut buf = BytesMut::from(
            "GET /a/b?c=1 HTTP/1.1\r\nHost: gw\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        );
        let Ok(Parsed::Head(head)) = parse(&mut buf, &limits(), true, &mut Vec::new()) else {
            panic!("no head");
        };
        let request = head.request;
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/a/b");
        assert_eq!(request.uri().query(), Some("c=1"));
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "gw");
        assert_eq!(request.headers().get_all("x-two").iter().count(), 2);
        assert_eq!(head.framing, Framing::None);
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn empty_lines_before_a_request_line_are_skipped() {
        // RFC 9112 §2.2: a client may send CRLF after a body.
        let head = head("\r\nGET /a HTTP/1.1\r\nHost: gw\r\n\r\n");
        assert_eq!(head.request.uri().path(), "/a");
    }

    #[test]
    fn framing_and_persistence_follow_rfc_9112() {
        let post = head("POST / HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(post.framing, Framing::Length(12));
        let chunked = head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(chunked.framing, Framing::Chunked);
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").framing,
            Framing::None
        );
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            head("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(!head("GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    /// RFC 9110 §10.1.1: another expectation is 417, not a client left
    /// waiting for a `100` that never comes; HTTP/1.0 expectations are
    /// ignored.
    #[test]
    fn expectations_other_than_100_continue_are_refused() {
        for text in [
            "PUT / HTTP/1.1\r\nExpect: 100-continue, foo\r\nContent-Length: 1\r\n\r\n",
            "PUT / HTTP/1.1\r\nExpect: foo\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: , foo\r\n\r\n",
        ] {
            assert_eq!(
                parse_all(text).map(|_| ()),
                Err(Refusal::ExpectationFailed),
                "{text:?}"
            );
        }
        assert!(
            head("PUT / HTTP/1.1\r\nExpect: 100-Continue \r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        // A list: empty members are none, `100-continue` twice is one.
        for listed in [
            "100-continue,",
            "100-continue, 100-continue",
            ", 100-continue",
        ] {
            let text = format!("PUT / HTTP/1.1\r\nExpect: {listed}\r\nContent-Length: 1\r\n\r\n");
            assert!(head(&text).expect_continue, "{listed}");
        }
        assert!(!head("GET / HTTP/1.1\r\nExpect:\r\n\r\n").expect_continue);
        let old = head("PUT / HTTP/1.0\r\nExpect: foo\r\nContent-Length: 1\r\n\r\n");
        assert!(!old.expect_continue);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(text), Err(Refusal::BadRequest(_))),
                "{text:?}: {:?}",
                parse_all(text)
            );
        }
        assert!(matches!(
            parse_all("GET / HTTP/2.0\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn codings_other_than_chunked_are_not_implemented() {
        for text in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(text), Err(Refusal::NotImplemented(_))),
                "{text:?}: {:?}",
                parse_all(text)
            );
        }
    }

    #[test]
    fn an_empty_transfer_coding_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: , chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n\r\nhello",
        ] {
            assert_eq!(
                parse_all(text).unwrap_err(),
                Refusal::BadRequest("empty transfer coding"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn heads_are_bounded() {
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            parse_all(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            Refusal::HeadTooLarge
        );
        let big = "v".repeat(1100);
        assert_eq!(
            parse_all(&format!("GET / HTTP/1.1\r\nX: {big}\r\n\r\n")).unwrap_err(),
            Refusal::HeadTooLarge
        );
        assert_eq!(
            parse_all(&format!("GET / HTTP/1.1\r\nX: {big}")).unwrap_err(),
            Refusal::HeadTooLarge
        );
        let long = "a".repeat(1100);
        assert_eq!(
            parse_all(&format!("GET /{long}")).unwrap_err(),
            Refusal::UriTooLong
        );
        assert_eq!(
            parse_all(&format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(70))).unwrap_err(),
            Refusal::UriTooLong
        );
        assert!(matches!(
            parse_all("GET / HTTP/1.1\r\nX: "),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn the_http2_preface_is_recognised_only_first() {
        let mut buf = BytesMut::from(&H2_PREFACE[..10]);
        assert!(matches!(
            parse(&mut buf, &limits(), true, &mut Vec::new()),
            Ok(Parsed::Partial)
        ));
        let mut buf = BytesMut::from(H2_PREFACE);
        assert!(matches!(
            parse(&mut buf, &limits(), true, &mut Vec::new()),
            Ok(Parsed::Http2)
        ));
        let mut buf = BytesMut::from(H2_PREFACE);
        assert!(parse(&mut buf, &limits(), false, &mut Vec::new()).is_err());
    }
}
