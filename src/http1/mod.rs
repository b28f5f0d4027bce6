//! HTTP/1.1 on the wire, for both sides of the gateway: the request heads
//! clients send (`request_head`) and the response heads the gateway
//! writes back (`response_encode`); the request heads the gateway sends
//! upstream (`request_encode`) and the response heads upstreams answer
//! (`response_head`); bodies delimited by length or by the chunked coding
//! (`chunked`); and how a connection is read and written.
//!
//! One room for one wire protocol: `server` (the gateway's ports) and
//! `proxy` (its upstream client) use this module; it uses neither of
//! them. It parses, frames and encodes, and does no I/O of its own beyond
//! the two helpers below, which the drivers of both sides call.

pub mod chunked;
pub mod request_encode;
pub mod request_head;
pub mod response_encode;
pub mod response_head;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use http::HeaderName;
use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// Hop-by-hop headers (RFC 9110 §7.6.1, and the proxy-only ones): they
/// describe one connection and end with it.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    // A match on the (lowercase) name compiles to a switch on its length.
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "proxy-authenticate"
    )
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
