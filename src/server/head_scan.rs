//! Finds HTTP/1 request heads that carry both `Content-Length` and
//! `Transfer-Encoding`, which are refused with 400 (the classic request
//! smuggling vector, RFC 9112 §6.1).
//!
//! hyper frames such a request by its chunked coding, drops the
//! `Content-Length` before the gateway sees the request, and closes the
//! connection afterwards. That is safe, but it hides the conflict; so the
//! connection's reads are watched here. Only the field names at the start
//! of each head line are looked at (`memchr` from line to line), and only
//! for reads made while the connection has no request in flight, which is
//! where a head starts on a connection that does not pipeline. A head this
//! misses (pipelined behind another request) still gets hyper's safe
//! handling.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Activity;

/// What a connection's reads and its requests share.
#[derive(Default)]
pub struct Sightings {
    /// Set when a head with both fields has been read; taken by the next
    /// request (see [`Sightings::take_conflict`]).
    conflict: AtomicBool,
}

impl Sightings {
    /// Whether the head of the request now being dispatched carried both
    /// `Content-Length` and `Transfer-Encoding`. hyper keeps only the
    /// latter, so only a request with `Transfer-Encoding` can be one
    /// (`chunked` is asked only after a sighting).
    pub fn take_conflict(&self, chunked: impl FnOnce() -> bool) -> bool {
        self.conflict.load(Ordering::Acquire)
            && self.conflict.swap(false, Ordering::AcqRel)
            && chunked()
    }
}

/// The longest field-name prefix looked at: `transfer-encoding:`.
const PREFIX: usize = 18;

/// Reads the field names of one head as its bytes arrive in pieces.
#[derive(Debug, Default)]
struct Scanner {
    state: State,
    /// The start of the current line, up to [`PREFIX`] bytes.
    line: [u8; PREFIX],
    len: usize,
    length: bool,
    coding: bool,
    /// The connection began with the HTTP/2 preface.
    http2: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum State {
    /// In the request line.
    #[default]
    RequestLine,
    /// Collecting the start of a field line.
    LineStart,
    /// The line's name is known; skipping to its end.
    RestOfLine,
    /// The head has ended, or this is no HTTP/1 head.
    Done,
}

impl Scanner {
    /// Feeds the next bytes; `Some(conflict)` once the head has ended.
    fn feed(&mut self, bytes: &[u8]) -> Option<bool> {
        // Where the first whole line of `bytes` starts.
        let first = match self.state {
            State::Done => return None,
            State::RequestLine if bytes.starts_with(b"PRI * HTTP/2") => {
                // An HTTP/2 preface: no HTTP/1 heads follow.
                self.http2 = true;
                self.state = State::Done;
                return None;
            }
            State::RequestLine | State::RestOfLine => memchr::memchr(b'\n', bytes)? + 1,
            State::LineStart if self.len > 0 => match self.complete_line(bytes)? {
                Ok(next) => next,
                Err(verdict) => return Some(verdict),
            },
            State::LineStart => 0,
        };
        self.lines(bytes, first)
    }

    /// Goes through the lines of `bytes` from `start`, a line start, with
    /// one pass of `memchr` over them.
    fn lines(&mut self, bytes: &[u8], mut start: usize) -> Option<bool> {
        let from = start;
        let mut ends = memchr::memchr_iter(b'\n', &bytes[from..]).map(move |end| end + from);
        loop {
            let line = &bytes[start..];
            match line {
                [] => {
                    self.state = State::LineStart;
                    return None;
                }
                [b'\n', ..] | [b'\r', b'\n', ..] => return Some(self.end()),
                [b'\r'] => return self.carry(line),
                [b'c' | b'C' | b't' | b'T', ..] => {
                    let prefix = &line[..line.len().min(PREFIX)];
                    match memchr::memchr(b'\n', prefix) {
                        Some(end) => self.classify(&prefix[..end]),
                        None if prefix.len() == PREFIX => self.classify(prefix),
                        // The name goes on in the next read.
                        None => return self.carry(prefix),
                    }
                }
                _ => {}
            }
            match ends.next() {
                Some(end) => start = end + 1,
                None => {
                    self.state = State::RestOfLine;
                    return None;
                }
            }
        }
    }

    /// Keeps the start of a line that the next read goes on with.
    fn carry(&mut self, start: &[u8]) -> Option<bool> {
        self.line[..start.len()].copy_from_slice(start);
        self.len = start.len();
        self.state = State::LineStart;
        None
    }

    /// Completes a line start carried over from the last read: where the
    /// next line starts in `bytes`, or the verdict if the head ended.
    fn complete_line(&mut self, bytes: &[u8]) -> Option<Result<usize, bool>> {
        let take = bytes.len().min(PREFIX - self.len);
        let end = memchr::memchr(b'\n', &bytes[..take]);
        let piece = &bytes[..end.unwrap_or(take)];
        self.line[self.len..self.len + piece.len()].copy_from_slice(piece);
        self.len += piece.len();
        let line = self.line;
        let line = &line[..self.len];
        if let Some(end) = end {
            self.len = 0;
            if matches!(line, b"" | b"\r") {
                return Some(Err(self.end()));
            }
            self.classify(line);
            return Some(Ok(end + 1));
        }
        if self.len < PREFIX {
            return None;
        }
        self.len = 0;
        self.classify(line);
        self.state = State::RestOfLine;
        let rest = &bytes[take..];
        Some(Ok(take + memchr::memchr(b'\n', rest)? + 1))
    }

    fn end(&mut self) -> bool {
        self.state = State::Done;
        self.length && self.coding
    }

    fn classify(&mut self, line: &[u8]) {
        let named =
            |name: &[u8]| line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name);
        self.length |= named(b"content-length:");
        self.coding |= named(b"transfer-encoding:");
    }
}

/// A connection's stream, its reads watched for conflicting heads.
pub(super) struct HeadScan<S> {
    inner: S,
    /// The connection's requests (in flight, dispatched) and sightings.
    activity: Arc<Activity>,
    /// `served` when the scanner started its head.
    scanning_after: u64,
    scanner: Scanner,
}

impl<S> HeadScan<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> HeadScan<S> {
        HeadScan {
            inner,
            activity,
            scanning_after: 0,
            scanner: Scanner::default(),
        }
    }

    fn watch(&mut self, read: &[u8]) {
        let activity = &self.activity;
        if read.is_empty() || activity.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        let served = activity.served.load(Ordering::Acquire);
        if served != self.scanning_after && !self.scanner.http2 {
            // A request was dispatched since: what comes now is a new head.
            self.scanner = Scanner::default();
            self.scanning_after = served;
        }
        if self.scanner.feed(read) == Some(true) {
            activity.heads.conflict.store(true, Ordering::Release);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadScan<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.watch(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadScan<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict on `head` fed in pieces of `size` bytes.
    fn verdict(head: &[u8], size: usize) -> Option<bool> {
        let mut scanner = Scanner::default();
        let mut verdict = None;
        for piece in head.chunks(size) {
            verdict = verdict.or(scanner.feed(piece));
        }
        verdict
    }

    fn every_split(head: &str) -> Option<bool> {
        let head = head.as_bytes();
        let first = verdict(head, head.len());
        for size in 1..head.len() {
            assert_eq!(verdict(head, size), first, "pieces of {size}");
        }
        first
    }

    #[test]
    fn both_fields_in_either_order_and_case_are_a_conflict() {
        for head in [
            "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\nHost: gw\r\ncontent-length:4\r\n\r\n",
            "POST /a HTTP/1.1\nTRANSFER-ENCODING: chunked\nCONTENT-LENGTH: 4\n\n",
            "PUT /b HTTP/1.1\r\nAuthorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln\r\nTransfer-Encoding: gzip, chunked\r\nX: y\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(every_split(head), Some(true), "{head}");
        }
    }

    #[test]
    fn one_of_them_or_lookalikes_are_not() {
        for head in [
            "POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\n\r\nabcd",
            "POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nContent-Length: 4\r\n",
            "GET /content-length:/transfer-encoding: HTTP/1.1\r\nHost: gw\r\n\r\n",
            "POST /a HTTP/1.1\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\nX: content-length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /a HTTP/1.1\r\nte: trailers\r\nContent-Type: text/plain\r\ncontent-lengthy: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\nPOST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(every_split(head), Some(false), "{head}");
        }
    }

    #[test]
    fn an_unfinished_head_or_an_http2_preface_gives_no_verdict() {
        assert_eq!(
            every_split("POST /a HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"),
            None
        );
        let mut scanner = Scanner::default();
        assert_eq!(scanner.feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        assert!(scanner.http2);
        assert_eq!(scanner.feed(b"\r\ncontent-length: 1\r\n\r\n"), None);
    }

    #[test]
    fn a_conflict_is_taken_once_and_only_by_a_chunked_request() {
        let sightings = Sightings::default();
        sightings.conflict.store(true, Ordering::Release);
        assert!(!sightings.take_conflict(|| false));
        assert!(!sightings.take_conflict(|| true));
        sightings.conflict.store(true, Ordering::Release);
        assert!(sightings.take_conflict(|| true));
        assert!(!sightings.take_conflict(|| panic!("asked without a sighting")));
    }
}
