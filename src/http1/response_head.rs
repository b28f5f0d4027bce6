//! An upstream's response head, parsed from the connection's read buffer,
//! and how its body is framed (RFC 9112 §6.3).
//!
//! A response that can be framed two ways is refused, or framed the one
//! safe way and its connection not used again: a proxy that guessed would
//! let an upstream's bytes become a second response.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, UPGRADE};
use http::{HeaderMap, Method, StatusCode};

use super::raw_fields::{Field, Kind, RawFields};
use super::{field_name, FieldName};

/// The most header fields in a response head.
const MAX_HEADERS: usize = 128;
/// The most bytes of a response head (informational heads included).
pub const MAX_HEAD: usize = 64 * 1024;

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A final response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    /// The end-to-end fields; only room for the gateway's own when they
    /// are in `raw`.
    pub headers: HeaderMap,
    /// The end-to-end fields as the head holds them, when the caller asked
    /// for them so ([`Scratch::as_sent`]).
    pub raw: Option<RawFields>,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

/// The upstream's response head cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Malformed(#[from] httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("unexpected 101 Switching Protocols")]
    Upgrade,
    #[error("invalid header field")]
    Field,
    /// A coding other than `chunked` (`gzip, chunked`): passed on without
    /// it, the client would take coded bytes for the content.
    #[error("transfer coding other than chunked")]
    TransferCoding,
    /// A line of the head ends in a bare LF: a reader that takes it as
    /// part of a field's value (an upstream reflecting `a\nContent-Length: 3`
    /// into a field) frames the answer another way.
    #[error("a line of the response head ends in a bare LF")]
    BareLf,
    /// RFC 9110 §15: a status code is 100-599.
    #[error("status code {0} outside 100-599")]
    Status(u16),
}

/// A connection's room for the heads it reads, used again for each.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The end-to-end fields of the head being read, as places in it.
    end_to_end: Vec<Field>,
    /// Fields the gateway may add to the answer: the head's map is made
    /// with room for them, so that adding them never grows it.
    pub room: usize,
    /// The final head's fields are wanted as the head holds them
    /// ([`RawFields`]), not in a map: nothing will read or change them.
    pub as_sent: bool,
    /// Bytes of the informational heads skipped before the final one
    /// (they count toward [`MAX_HEAD`]).
    interim: usize,
}

impl Scratch {
    /// Whether the response being read has begun: an informational head
    /// (`100`, `103`) was taken before its final one. The upstream has
    /// answered, and may have begun the work.
    pub fn began(&self) -> bool {
        self.interim > 0
    }
}

/// Parses the head at the front of `buf`, consuming it: `None` while it
/// is incomplete. An informational (1xx) head is consumed and skipped.
pub fn parse(
    buf: &mut BytesMut,
    method: &Method,
    scratch: &mut Scratch,
) -> Result<Option<Head>, HeadError> {
    parse_head(buf, method, scratch, false)
}

/// Like [`parse`], for a request that asked to switch protocols
/// (`Upgrade`): a `101` is a final head, with its `Upgrade` field kept
/// and no body; the bytes after it are the new protocol's.
pub fn parse_switching(
    buf: &mut BytesMut,
    method: &Method,
    scratch: &mut Scratch,
) -> Result<Option<Head>, HeadError> {
    parse_head(buf, method, scratch, true)
}

fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    scratch: &mut Scratch,
    switching: bool,
) -> Result<Option<Head>, HeadError> {
    let parsed = parse_interim_and_final(buf, method, scratch, switching);
    if !matches!(parsed, Ok(None)) {
        scratch.interim = 0; // the next head is another response's
    }
    parsed
}

fn parse_interim_and_final(
    buf: &mut BytesMut,
    method: &Method,
    scratch: &mut Scratch,
    switching: bool,
) -> Result<Option<Head>, HeadError> {
    loop {
        let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut storage,
        )?;
        // A head arriving in one read may be complete and still too large.
        let seen = match parsed {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial => buf.len(),
        };
        if scratch.interim.saturating_add(seen) > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let httparse::Status::Complete(len) = parsed else {
            return Ok(None);
        };
        if has_bare_lf(&buf[..len], response.headers) {
            return Err(HeadError::BareLf);
        }
        let Some(code) = response.code else {
            return Err(HeadError::Malformed(httparse::Error::Status));
        };
        if code > 599 {
            return Err(HeadError::Status(code));
        }
        let http11 = response.version == Some(1);
        if (100..200).contains(&code) {
            if code == 101 && switching {
                let upgrade = response
                    .headers
                    .iter()
                    .find(|field| field.name.eq_ignore_ascii_case("upgrade"))
                    .map(|field| HeaderValue::from_bytes(field.value))
                    .transpose()
                    .map_err(|_| HeadError::Field)?
                    .ok_or(HeadError::Upgrade)?;
                let fields = Fields::scan(response.headers, buf.as_ptr() as usize, scratch)?;
                let head = buf.split_to(len).freeze();
                let mut headers = fields.header_map(&head, false)?;
                headers.insert(UPGRADE, upgrade);
                return Ok(Some(Head {
                    status: StatusCode::SWITCHING_PROTOCOLS,
                    headers,
                    raw: None,
                    framing: Framing::Empty,
                    keep_alive: false,
                }));
            }
            if code == 101 {
                return Err(HeadError::Upgrade);
            }
            // RFC 9110 §15.2: informational responses precede the final one.
            let _ = buf.split_to(len);
            scratch.interim += len;
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| HeadError::Field)?;
        let fields = Fields::scan(response.headers, buf.as_ptr() as usize, scratch)?;
        let head = buf.split_to(len).freeze();
        return framed(status, fields, head, http11, method).map(Some);
    }
}

/// Whether a line of `head` ends in LF alone (RFC 9112 §2.2 lets a
/// recipient take it as a line's end; a proxy that does reads a head that
/// the upstream's own framing may hold as one field). `httparse` ends a
/// line at each LF, so a field name begins right after each line's end
/// but the last two, which end the head: the byte two before each name,
/// and the head's last four, tell every line's end.
fn has_bare_lf(head: &[u8], fields: &[httparse::Header<'_>]) -> bool {
    let base = head.as_ptr() as usize;
    !head.ends_with(b"\r\n\r\n")
        || fields.iter().any(|field| {
            let at = (field.name.as_ptr() as usize).wrapping_sub(base);
            at < 2 || at > head.len() || head[at - 2..at] != *b"\r\n"
        })
}

/// A head's fields, sorted on the way: the end-to-end ones (as places in
/// the head, which once frozen their values share), and what the
/// hop-by-hop ones said. Hop-by-hop fields end here (RFC 9110 §7.6.1).
struct Fields<'a> {
    end_to_end: &'a mut Vec<Field>,
    /// See [`Scratch::room`].
    room: usize,
    /// See [`Scratch::as_sent`].
    as_sent: bool,
    /// `Some(true)` when `Transfer-Encoding` said `chunked` (the only
    /// coding taken).
    chunked: Option<bool>,
    /// What the `Content-Length` fields said.
    length: Option<u64>,
    /// The length was said more than once (several fields, or a list):
    /// passed on as one field of its own, never as sent (RFC 9110 §8.6;
    /// a list is malformed in HTTP/2).
    length_repeated: bool,
    close: bool,
    /// `Transfer-Encoding` named a coding other than `chunked`, or
    /// `chunked` twice: a body so framed is refused (a HEAD, 204 or 304
    /// answer has none, and may state the codings a GET would have had,
    /// RFC 9112 §6.1).
    odd_coding: bool,
    /// Further names `Connection` listed (RFC 9110 §7.6.1), as places in
    /// the head.
    listed: Vec<(u32, u32)>,
}

impl<'a> Fields<'a> {
    fn scan(
        headers: &[httparse::Header<'_>],
        base: usize,
        scratch: &'a mut Scratch,
    ) -> Result<Fields<'a>, HeadError> {
        scratch.end_to_end.clear();
        let mut fields = Fields {
            end_to_end: &mut scratch.end_to_end,
            room: scratch.room,
            as_sent: scratch.as_sent,
            chunked: None,
            length: None,
            length_repeated: false,
            close: false,
            odd_coding: false,
            listed: Vec::new(),
        };
        // Where a slice of the head is in it (within `MAX_HEAD`).
        let at = |bytes: &[u8]| {
            let start = (bytes.as_ptr() as usize - base) as u32;
            (start, start + bytes.len() as u32)
        };
        for header in headers {
            let name = header.name.as_bytes();
            let kind = match field_name(name) {
                FieldName::TransferEncoding => {
                    // `chunked` once, and no other coding: the gateway
                    // removes the chunked framing, and could not pass
                    // another coding on with it.
                    let mut listed = false;
                    for coding in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if coding.is_empty() {
                            continue;
                        }
                        listed = true;
                        if !coding.eq_ignore_ascii_case(b"chunked") || fields.chunked.is_some() {
                            fields.odd_coding = true;
                        }
                        fields.chunked = Some(true);
                    }
                    // Present but naming no coding: it outranks a length
                    // all the same (RFC 9112 §6.3), and says nothing of the
                    // framing: refused, as a request's is, never framed by
                    // the length on a connection kept for the next request.
                    if !listed {
                        fields.odd_coding = true;
                    }
                    continue;
                }
                FieldName::Connection => {
                    for token in header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                        if token.eq_ignore_ascii_case(b"close") {
                            fields.close = true;
                        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                            fields.listed.push(at(token));
                        }
                    }
                    continue;
                }
                FieldName::HopByHop => continue,
                FieldName::ContentLength => {
                    fields.length_repeated |=
                        fields.length.is_some() || header.value.contains(&b',');
                    add_length(&mut fields.length, header.value)?;
                    Kind::ContentLength
                }
                FieldName::Date => Kind::Date,
                FieldName::Other => Kind::Other,
            };
            fields.end_to_end.push(Field {
                name: at(name),
                value: at(header.value),
                kind,
            });
        }
        Ok(fields)
    }

    /// The end-to-end fields to keep: not named by `Connection`, and
    /// without `Content-Length` if `drop_length`.
    fn kept<'f>(&'f self, head: &'f Bytes, drop_length: bool) -> impl Iterator<Item = Field> + 'f {
        let bytes = |(start, end): (u32, u32)| &head[start as usize..end as usize];
        self.end_to_end.iter().copied().filter(move |field| {
            let dropped = drop_length && field.kind == Kind::ContentLength;
            let listed = self
                .listed
                .iter()
                .any(|&token| bytes(token).eq_ignore_ascii_case(bytes(field.name)));
            !dropped && !listed
        })
    }

    /// The end-to-end fields in a map, their values sharing `head`'s bytes.
    fn header_map(&self, head: &Bytes, drop_length: bool) -> Result<HeaderMap, HeadError> {
        let mut headers = super::spares::take(self.end_to_end.len() + self.room);
        for field in self.kept(head, drop_length) {
            let (start, end) = field.name;
            let name = HeaderName::from_bytes(&head[start as usize..end as usize])
                .map_err(|_| HeadError::Field)?;
            let (start, end) = field.value;
            headers.append(
                name,
                super::parsed_value(head, start as usize..end as usize),
            );
        }
        Ok(headers)
    }

    /// The answer's fields: in a map, or as sent when that was asked for
    /// (the map then only has room for the gateway's own).
    fn answer(
        &self,
        head: Bytes,
        drop_length: bool,
    ) -> Result<(HeaderMap, Option<RawFields>), HeadError> {
        if !self.as_sent {
            return Ok((self.header_map(&head, drop_length)?, None));
        }
        let mut kept = Vec::with_capacity(self.end_to_end.len());
        kept.extend(self.kept(&head, drop_length));
        let headers = super::spares::take(self.room);
        Ok((headers, Some(RawFields::new(head, kept))))
    }
}

/// Decides the body's framing and whether the connection can be reused.
fn framed(
    status: StatusCode,
    fields: Fields,
    head: Bytes,
    http11: bool,
    method: &Method,
) -> Result<Head, HeadError> {
    let mut keep_alive = http11 && !fields.close;
    let (chunked, length) = (fields.chunked, fields.length);
    // RFC 9110 §8.6: no length in a 204, whatever the upstream said; a
    // length said more than once goes on as one field.
    let mut drop_length = status == StatusCode::NO_CONTENT || fields.length_repeated;
    let restated = length.filter(|_| fields.length_repeated && chunked.is_none());
    // RFC 9112 §6.3, in its order.
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        if (chunked.is_some() || fields.odd_coding) && length.is_some() {
            // Framed two ways, though without a body: as after a body
            // (§6.3 item 3), the connection is not trusted again.
            keep_alive = false;
        }
        Framing::Empty
    } else if fields.odd_coding {
        return Err(HeadError::TransferCoding);
    } else if let Some(chunked) = chunked {
        if length.is_some() {
            // §6.3 item 3: the coding wins; such a response may be an
            // attempt at splitting, so its connection is not trusted again.
            drop_length = true;
            keep_alive = false;
        }
        if http11 && chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::UntilClose
        }
    } else if let Some(length) = length {
        match length {
            0 => Framing::Empty,
            n => Framing::Length(n),
        }
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    let (mut headers, raw) = fields.answer(head, drop_length)?;
    if let Some(length) = restated.filter(|_| status != StatusCode::NO_CONTENT) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    Ok(Head {
        status,
        headers,
        raw,
        framing,
        keep_alive,
    })
}

/// Adds a `Content-Length` field to the one length every such field (and
/// list member) states (RFC 9110 §8.6: differing or invalid values are an
/// error).
fn add_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), HeadError> {
    for member in value.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() || member.len() > 19 || !member.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::ContentLength);
        }
        let n = member
            .iter()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .ok_or(HeadError::ContentLength)?;
        if length.is_some_and(|seen| seen != n) {
            return Err(HeadError::ContentLength);
        }
        *length = Some(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::header::CONTENT_LENGTH;

    use super::*;

    fn head(raw: &str, method: Method) -> Result<Option<Head>, HeadError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse(&mut buf, &method, &mut Scratch::default())
    }

    fn framing(raw: &str) -> (Framing, bool) {
        let head = head(raw, Method::GET).expect("valid").expect("complete");
        (head.framing, head.keep_alive)
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                (Framing::Length(5), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                (Framing::Length(5), true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                (Framing::Empty, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                (Framing::Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
                (Framing::Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: , chunked,\r\n\r\n",
                (Framing::Chunked, true),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                (Framing::Chunked, false),
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", (Framing::UntilClose, false)),
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
                (Framing::Empty, true),
            ),
            ("HTTP/1.1 304 Not Modified\r\n\r\n", (Framing::Empty, true)),
            // Framed two ways, though bodiless: not trusted again.
            (
                "HTTP/1.1 204 No Content\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
                (Framing::Empty, false),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
                (Framing::Empty, false),
            ),
            (
                "HTTP/1.1 204 No Content\r\nTransfer-Encoding:\r\nContent-Length: 9\r\n\r\n",
                (Framing::Empty, false),
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 1\r\n\r\n",
                (Framing::Length(1), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                (Framing::Length(1), false),
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                (Framing::UntilClose, false),
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(framing(raw), expected, "{raw}");
        }
        let to_head = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            Method::HEAD,
        );
        let to_head = to_head.expect("valid").expect("complete");
        assert_eq!(to_head.framing, Framing::Empty);
        assert_eq!(to_head.headers[CONTENT_LENGTH], "1234");
    }

    #[test]
    fn hop_by_hop_fields_end_here_with_those_connection_lists() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private, bad name\r\n\
                   Keep-Alive: timeout=5\r\nX-Private: secret\r\nUpgrade: h2c\r\n\
                   Transfer-Encoding: chunked\r\nX-Kept: 1\r\nProxy-Authenticate: Basic\r\n\r\n";
        let head = head(raw, Method::GET).expect("valid").expect("complete");
        let names: Vec<&str> = head.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!((head.framing, head.keep_alive), (Framing::Chunked, true));
    }

    #[test]
    fn unframeable_heads_are_refused() {
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HELLO\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
            // A bare LF anywhere in the head: an upstream that put
            // `bob\nContent-Length: 3` in a field frames the answer as one.
            "HTTP/1.1 200 OK\r\nX-User: bob\nContent-Length: 3\r\n\r\nabc",
            "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nok",
            "HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\nX-A: 1\r\n\r\nok",
            "HTTP/1.1 204 No Content\n\r\n",
            "HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            // RFC 9110 §15: 100-599.
            "HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
        ] {
            assert!(head(raw, Method::GET).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn transfer_codings_other_than_chunked_once_are_refused() {
        for te in [
            "gzip, chunked",
            "chunked, gzip",
            "gzip",
            "identity",
            "chunked, chunked",
            "",
            " , ",
        ] {
            let raw =
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\nContent-Length: 5\r\n\r\n");
            assert!(
                matches!(head(&raw, Method::GET), Err(HeadError::TransferCoding)),
                "{te:?}"
            );
        }
        let split =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            head(split, Method::GET),
            Err(HeadError::TransferCoding)
        ));
        let twice =
            "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            head(twice, Method::GET),
            Err(HeadError::TransferCoding)
        ));
        // RFC 9112 §6.1: an answer with no body may state the codings a
        // GET would have had; it is passed on, empty, its connection kept.
        for (status, method) in [(200, Method::HEAD), (304, Method::GET), (204, Method::GET)] {
            let raw = format!("HTTP/1.1 {status} X\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
            let answer = head(&raw, method.clone())
                .expect("no body to frame")
                .expect("a whole head");
            assert_eq!(answer.framing, Framing::Empty, "{status} {method}");
            assert!(answer.keep_alive, "{status} {method}");
        }
    }

    #[test]
    fn informational_heads_are_skipped_and_partial_ones_wait() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                   HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Id: 7\r\n\r\nhi";
        let mut buf = BytesMut::from(raw.as_bytes());
        let created = parse(&mut buf, &Method::POST, &mut Scratch::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(created.status, StatusCode::CREATED);
        assert_eq!(created.headers["x-id"], "7");
        assert!(created.headers.get("link").is_none());
        assert_eq!(&buf[..], b"hi");
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
            .expect("valid")
            .is_none());
    }

    #[test]
    fn a_101_to_a_request_that_asked_for_it_keeps_upgrade_and_what_follows() {
        let raw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Accept: abc\r\nKeep-Alive: 5\r\n\r\n\x01\x01a";
        let mut buf = BytesMut::from(raw.as_bytes());
        let switched = parse_switching(&mut buf, &Method::GET, &mut Scratch::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(switched.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(switched.headers["upgrade"], "websocket");
        assert_eq!(switched.headers["sec-websocket-accept"], "abc");
        assert!(switched.headers.get("connection").is_none());
        assert!(switched.headers.get("keep-alive").is_none());
        assert!(!switched.keep_alive);
        assert_eq!(&buf[..], b"\x01\x01a", "the new protocol's bytes stay");
        // A 101 without Upgrade switches to nothing.
        let mut bare = BytesMut::from("HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(matches!(
            parse_switching(&mut bare, &Method::GET, &mut Scratch::default()),
            Err(HeadError::Upgrade)
        ));
    }

    #[test]
    fn fields_wanted_as_sent_stay_in_the_head_and_the_map_keeps_room() {
        let raw = "HTTP/1.1 200 OK\r\nServer: up\r\nConnection: X-Gone\r\nx-gone: 1\r\n\
                   Content-Length: 2\r\nWWW-Authenticate: Bearer\r\n\r\nok";
        let mut buf = BytesMut::from(raw.as_bytes());
        let mut scratch = Scratch::default();
        (scratch.room, scratch.as_sent) = (3, true);
        let head = parse(&mut buf, &Method::GET, &mut scratch)
            .expect("valid")
            .expect("complete");
        assert!(head.headers.is_empty());
        assert!(head.headers.capacity() >= 3);
        assert_eq!((head.framing, head.keep_alive), (Framing::Length(2), true));
        assert_eq!(&buf[..], b"ok");
        let raw = head.raw.expect("as sent");
        let fields: Vec<(&[u8], &[u8], Kind)> = raw.iter().collect();
        assert_eq!(
            fields,
            [
                (&b"Server"[..], &b"up"[..], Kind::Other),
                (b"Content-Length", b"2", Kind::ContentLength),
                (b"WWW-Authenticate", b"Bearer", Kind::Other),
            ]
        );
        assert_eq!(
            raw.values("www-authenticate").collect::<Vec<_>>(),
            [&b"Bearer"[..]]
        );
    }

    #[test]
    fn heads_are_bounded() {
        let mut raw = String::from("HTTP/1.1 200 OK\r\n");
        while raw.len() <= MAX_HEAD {
            raw.push_str("X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        assert!(matches!(
            head(&raw, Method::GET),
            Err(HeadError::TooLarge | HeadError::Malformed(httparse::Error::TooManyHeaders))
        ));
        let long_value = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(
            head(&long_value, Method::GET),
            Err(HeadError::TooLarge)
        ));
        // Complete in one read, and too large all the same.
        let complete = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            head(&complete, Method::GET),
            Err(HeadError::TooLarge)
        ));
    }

    #[test]
    fn informational_heads_count_toward_the_bound_across_reads() {
        let interim = "HTTP/1.1 100 Continue\r\n\r\n";
        let mut scratch = Scratch::default();
        let mut buf = BytesMut::new();
        let mut refused = false;
        // Arriving a few at a time, each read parsed as it comes.
        for _ in 0..(MAX_HEAD / interim.len() / 8 + 1) {
            buf.extend_from_slice(interim.repeat(8).as_bytes());
            match parse(&mut buf, &Method::GET, &mut scratch) {
                Ok(None) => {}
                Err(HeadError::TooLarge) => {
                    refused = true;
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(refused, "{} bytes of interim heads taken", scratch.interim);
        // Another response on another exchange starts from nothing.
        let mut scratch = Scratch::default();
        let mut buf = BytesMut::from(format!("{interim}HTTP/1.1 204 No Content\r\n\r\n").as_str());
        assert!(parse(&mut buf, &Method::GET, &mut scratch)
            .expect("valid")
            .is_some());
        assert_eq!(scratch.interim, 0);
    }
}
