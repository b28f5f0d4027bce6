//! HTTP/1.1 on the wire, for both sides of the gateway: the request heads
//! clients send (`request_head`) and the response heads the gateway
//! writes back (`response_encode`); the request heads the gateway sends
//! upstream (`request_encode`) and the response heads upstreams answer
//! (`response_head`); bodies delimited by length or by the chunked coding
//! (`chunked`); the fields of an upstream's answer that passes unread
//! (`raw_fields`); the maps of those heads, used again on their thread
//! (`spares`); and how a connection is read and written.
//!
//! One room for one wire protocol: `server` (the gateway's ports) and
//! `proxy` (its upstream client) use this module; it uses neither of
//! them. It parses, frames and encodes, and does no I/O of its own beyond
//! the two helpers below, which the drivers of both sides call.

pub mod chunked;
pub mod raw_fields;
pub mod request_encode;
pub mod request_head;
pub mod response_encode;
pub mod response_head;
pub mod spares;

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// What a field's name means to the framing and forwarding of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldName {
    TransferEncoding,
    Connection,
    ContentLength,
    Date,
    /// Any other hop-by-hop field (RFC 9110 §7.6.1, and the proxy-only
    /// ones): it describes one connection and ends with it.
    HopByHop,
    /// An end-to-end field the codec has nothing to do with.
    Other,
}

/// The meaning of the field name `name` (a token, as `httparse` admits),
/// in whatever case it is written.
pub fn field_name(name: &[u8]) -> FieldName {
    // The known names are lower-case letters and `-`: a token byte with
    // the 0x20 bit set is one of them exactly when the byte is that
    // letter, in either case, or `-`.
    let is = |known: &str| {
        name.iter()
            .zip(known.as_bytes())
            .all(|(&b, &k)| b | 0x20 == k)
    };
    // On the length first: most names are told apart without a comparison.
    match name.len() {
        2 if is("te") => FieldName::HopByHop,
        4 if is("date") => FieldName::Date,
        7 if is("trailer") || is("upgrade") => FieldName::HopByHop,
        10 if is("connection") => FieldName::Connection,
        10 if is("keep-alive") => FieldName::HopByHop,
        14 if is("content-length") => FieldName::ContentLength,
        16 if is("proxy-connection") => FieldName::HopByHop,
        17 if is("transfer-encoding") => FieldName::TransferEncoding,
        18 if is("proxy-authenticate") => FieldName::HopByHop,
        19 if is("proxy-authorization") => FieldName::HopByHop,
        _ => FieldName::Other,
    }
}

/// What an `Expect` value asks (RFC 9110 §10.1.1, a list): whether it
/// names `100-continue`; `None` when it names any other expectation,
/// which is answered 417. Empty members are no expectation (§5.6.1).
pub fn expects_continue(value: &[u8]) -> Option<bool> {
    let mut continues = false;
    for member in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if member.eq_ignore_ascii_case(b"100-continue") {
            continues = true;
        } else if !member.is_empty() {
            return None;
        }
    }
    Some(continues)
}

/// Hop-by-hop headers: they describe one connection and end with it.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        field_name(name.as_str().as_bytes()),
        FieldName::Connection | FieldName::TransferEncoding | FieldName::HopByHop
    )
}

/// The value of a field `httparse` parsed, at `range` of the frozen
/// `head`, sharing its bytes (or of a text the gateway wrote of hex digits
/// and `-`, `proxy::correlate`'s, all valid in a `HeaderValue` too).
///
/// `httparse` admits in a field value exactly the bytes a `HeaderValue`
/// may hold (HTAB, SP to `~`, 0x80 to 0xFF), as
/// `tests::httparse_admits_what_header_values_do` checks byte by byte:
/// checking them again would read every byte of every value a second time
/// (the kilobyte of a bearer token, for one).
pub fn parsed_value(head: &Bytes, range: Range<usize>) -> HeaderValue {
    let value = head.slice(range);
    debug_assert!(HeaderValue::from_bytes(&value).is_ok());
    // SAFETY: no memory safety rests on it; the bytes are ones `httparse`
    // admitted in a field value, all valid in a `HeaderValue` (above).
    #[allow(unsafe_code)]
    unsafe {
        HeaderValue::from_maybe_shared_unchecked(value)
    }
}

/// Reads what the peer has sent into `buf` (up to `READ_SIZE` more):
/// the bytes read, 0 at the end of the stream. Both sides of the gateway
/// read their connections this way.
pub fn poll_fill<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes and flushes everything in `out`.
pub fn poll_write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !out.is_empty() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, out))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        out.drain(..n);
    }
    Pin::new(io).poll_flush(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each byte in a value of a request head and of a response head:
    /// `httparse` takes it exactly when a `HeaderValue` may hold it.
    #[test]
    fn httparse_admits_what_header_values_do() {
        let head = |start: &[u8], value: &[u8]| [start, value, b"\r\n\r\n"].concat();
        let complete = |parsed| matches!(parsed, Ok(httparse::Status::Complete(_)));
        for byte in 0..=u8::MAX {
            let value = [b'a', byte, b'a'];
            let valid = HeaderValue::from_bytes(&value).is_ok();
            let request = head(b"GET / HTTP/1.1\r\nx-field: ", &value);
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Request::new(&mut fields).parse(&request);
            assert_eq!(complete(parsed), valid, "request, byte {byte:#04x}");
            let response = head(b"HTTP/1.1 200 OK\r\nx-field: ", &value);
            let mut fields = [httparse::EMPTY_HEADER; 4];
            let parsed = httparse::Response::new(&mut fields).parse(&response);
            assert_eq!(complete(parsed), valid, "response, byte {byte:#04x}");
        }
    }

    #[test]
    fn field_names_are_known_in_any_case() {
        let known = [
            ("Transfer-Encoding", FieldName::TransferEncoding),
            ("CONNECTION", FieldName::Connection),
            ("content-length", FieldName::ContentLength),
            ("Date", FieldName::Date),
            ("te", FieldName::HopByHop),
            ("Trailer", FieldName::HopByHop),
            ("upgrade", FieldName::HopByHop),
            ("Keep-Alive", FieldName::HopByHop),
            ("Proxy-Connection", FieldName::HopByHop),
            ("Proxy-Authenticate", FieldName::HopByHop),
            ("Proxy-Authorization", FieldName::HopByHop),
            ("content-type", FieldName::Other),
            ("dates", FieldName::Other),
            ("x-connection", FieldName::Other),
            ("", FieldName::Other),
        ];
        for (name, meaning) in known {
            assert_eq!(field_name(name.as_bytes()), meaning, "{name}");
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                let hop = !matches!(
                    meaning,
                    FieldName::ContentLength | FieldName::Date | FieldName::Other
                );
                assert_eq!(is_hop_by_hop(&name), hop, "{name}");
            }
        }
    }

    #[test]
    fn a_parsed_value_shares_the_heads_bytes() {
        let head = Bytes::from_static(b"x-field: value\r\n");
        let value = parsed_value(&head, 9..14);
        assert_eq!(value, "value");
        assert_eq!(value.as_bytes().as_ptr(), head[9..].as_ptr());
    }
}
