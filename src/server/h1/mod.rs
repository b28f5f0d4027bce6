//! HTTP/1.1 connections of the gateway's ports, served by its own codec:
//! heads parsed by `httparse` straight into the request the handler gets,
//! responses encoded into one buffer with their body and written with one
//! system call where they fit.
//!
//! One exchange at a time, in order: read a head (`http1::request_head`), hand the
//! request to the handler, its body read from the connection as the
//! handler takes it, then write the response (`http1::response_encode`) as its body
//! comes. A connection carries another request only after an exchange
//! whose request body was read to its end; pipelined heads wait in the
//! read buffer meanwhile.
//!
//! Every wait on the client is bounded where it is made. A head that
//! starts but does not end within `timeouts.header_read` is answered 408;
//! waiting for a first byte is bounded by the connection's watchdog
//! (`server::Conn::supervise`). A request body whose client stays silent
//! for `timeouts.body_read` fails with [`BodyFault::Stalled`] (the handler
//! answers 408, or the connection is cut if the answer has begun); a body
//! whose framing breaks or that ends early fails with its own
//! [`BodyFault`], so that the upstream exchange it feeds is aborted and
//! the fault is the client's. A write the client takes nothing of for
//! `timeouts.send` ends the connection. While a response body waits for
//! its source (an event stream, a long poll), a client that closes the
//! connection ends the exchange at once.
//!
//! The request body may be read on a task of its own (an HTTP/2
//! upstream's client polls it so) while the exchange writes the answer:
//! once the answer has begun, only the exchange writes to the client and
//! the body only reads, so that each task is the one woken for what it
//! waits on. An exchange that ends before its request body has been read
//! to its end ends the body for good: its reader gets an error at its next
//! poll and lets the connection go.
//!
//! A `101` answer carries its tunnel (`proxy::tunnel`): once its head is
//! written, the connection, with what the client sent after its
//! handshake, leaves the codec ([`Ending::Upgraded`]).
//!
//! A head read after a reload replaced the client-certificate setting the
//! TLS connection was verified under is not served: the connection closes
//! (`server::verified`).

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::slots::Pace;
use super::verified::Verification;
use super::{Activity, InFlight, Port};
use crate::http1;
use crate::http1::chunked::{self, Chunked, Decoded, Delimited};
use crate::http1::request_head::{self as head, Framing, Head, Parsed, Refusal};
use crate::http1::response_encode::{self as encode, BodyFraming, Exchange};
use crate::proxy::{tunnel, BadGateway, Body, BodyFault, BoxError, Rejection};
use crate::timer::Deadline;

/// Response body bytes encoded before they are written.
const WRITE_BATCH: usize = 64 * 1024;
/// Bytes a connection waiting for its next request reads at once, into
/// a buffer on the stack: between requests it holds no read buffer.
const IDLE_READ: usize = 4 * 1024;
/// How long a closing connection reads what the client still sends, so
/// that the kernel does not answer it with a reset that could destroy the
/// last response before the client has read it.
const LINGER: Duration = Duration::from_secs(1);
/// Bytes a client may send ahead while its answer streams; past them its
/// connection is not watched for a close until the answer has ended.
const WATCHED_BYTES: usize = 64 * 1024;
/// Bytes read and dropped at most while lingering. With [`LINGER`] it
/// bounds what a closing connection can ask of the gateway; it is high
/// enough that a client still sending a large body after an early answer
/// (a 413, an upstream's refusal) has it read and dropped rather than
/// reset, so that it reads the answer.
const LINGER_BYTES: usize = 64 * 1024 * 1024;
/// Bytes read while lingering before the task yields: a client sending as
/// fast as it can neither holds the thread nor keeps [`LINGER`] from ending
/// the drain.
const LINGER_TURN: usize = 256 * 1024;

/// How a connection's exchanges ended.
pub enum Ending {
    Closed,
    /// It began with the HTTP/2 preface: the stream, with what was read
    /// of it ([`Connection::into_parts`]), goes to the HTTP/2 server.
    Http2,
    /// A `101` was written: the stream, with what the client sent after
    /// its handshake, goes to the tunnel. (Boxed: a rare ending that
    /// would otherwise make every connection's future larger.)
    Upgraded(Box<tunnel::Switch>),
}

/// An HTTP/1.1 connection of the gateway's ports. It outlives the future
/// that serves its exchanges ([`serve`]): a connection idle for a while
/// drops that future and waits for its next request with
/// [`Connection::poll_wake`] alone, holding nothing more.
pub(super) struct Connection<S>(Arc<Mutex<Wire<S>>>);

impl<S: AsyncRead + AsyncWrite + Reset + Unpin + Send + 'static> Connection<S> {
    pub(super) fn new(
        io: S,
        activity: &Arc<Activity>,
        port: &Arc<Port>,
        verification: Option<Arc<Verification>>,
    ) -> Connection<S> {
        Connection(Arc::new(Mutex::new(Wire {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            body: Delimited::Done,
            failed: None,
            write_failed: false,
            cut: false,
            continue_due: false,
            answering: false,
            first: matches!(port.transport, super::Transport::Plain),
            waiting: false,
            fields: Vec::new(),
            waits: None,
            pace: None,
            activity: activity.clone(),
            port: port.clone(),
            verification,
        })))
    }

    /// Whether it waits for a next head of which nothing has come: the
    /// future serving it can then be dropped and made again later.
    pub(super) fn waits_idle(&self) -> bool {
        let wire = lock(&self.0);
        wire.waiting && wire.buf.is_empty()
    }

    /// Frees what the connection keeps for its next exchange (the scratch
    /// its heads are parsed with): it is parked.
    pub(super) fn shed(&self) {
        let mut wire = lock(&self.0);
        wire.fields = Vec::new();
        if wire.out.is_empty() {
            wire.out = Vec::new();
        }
    }

    /// Waits for the client to send (what it sends is kept for the next
    /// head) or close: `Ready(true)` when it sent.
    pub(super) fn poll_wake(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut wire = lock(&self.0);
        if !wire.buf.is_empty() {
            return Poll::Ready(true);
        }
        match ready!(wire.poll_fill_idle(cx)) {
            Ok(n) => Poll::Ready(n > 0),
            Err(_) => Poll::Ready(false),
        }
    }

    /// Closes it while it waits idle.
    pub(super) async fn close_idle(&self) {
        close(&self.0, false).await;
    }

    /// The stream and what was read of it, to be carried on by HTTP/2 or
    /// a tunnel; `None` while a request body still reads from it.
    pub(super) fn into_parts(self) -> Option<(S, Bytes)> {
        let wire = Arc::try_unwrap(self.0).ok()?;
        let wire = wire.into_inner().unwrap_or_else(PoisonError::into_inner);
        Some((wire.io, wire.buf.freeze()))
    }
}

/// A client connection that can be cut with a reset: closed then, it
/// sends no end of stream (a FIN, a TLS `close_notify`), which is how a
/// body delimited by the close would say it is whole.
pub(crate) trait Reset {
    /// Makes the stream's close a reset (`SO_LINGER` 0): it is then
    /// dropped without being shut down.
    fn reset(&self);
}

impl Reset for tokio::net::TcpStream {
    fn reset(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl<S: Reset> Reset for tokio_rustls::server::TlsStream<S> {
    fn reset(&self) {
        self.get_ref().0.reset();
    }
}

#[cfg(test)]
impl Reset for tokio::io::DuplexStream {
    fn reset(&self) {}
}

/// The connection: the stream and its buffers, shared by the exchange
/// and the request body that reads from it.
struct Wire<S> {
    io: S,
    /// Read, not yet used.
    buf: BytesMut,
    /// Encoded, not yet written.
    out: Vec<u8>,
    body: Delimited,
    /// The body broke, was cut off or stalled: the connection cannot be
    /// read again.
    failed: Option<BodyFault>,
    /// A write failed or made no progress for `timeouts.send`: nothing
    /// more is written.
    write_failed: bool,
    /// An answer whose body ends only with the connection (an HTTP/1.0
    /// client's, of no known length) broke: the connection is reset, not
    /// closed, so that the client cannot take the part for the whole
    /// (RFC 9112 §8).
    cut: bool,
    /// `100 Continue` is sent when the body is first asked for.
    continue_due: bool,
    /// The handler's answer has begun: the exchange alone writes from
    /// then on, the request body only reads.
    answering: bool,
    /// No head has been read yet on a cleartext connection: only its
    /// first may be HTTP/2's preface (prior knowledge). Over TLS, HTTP/2 is
    /// what ALPN chose (RFC 9113 §3.2), and never begins here.
    first: bool,
    /// It waits for a next head, nothing of which has come.
    waiting: bool,
    /// Used by each head parsed, so that parsing allocates nothing.
    fields: head::FieldScratch,
    /// Set only while it waits for its client.
    waits: Option<Box<Waits>>,
    /// The request body's pace, once it is read for.
    pace: Option<Pace>,
    /// Its watchdog wakes a body waiting for the client when the port
    /// runs out of slots.
    activity: Arc<Activity>,
    /// Its settings; under pressure a body may wait less
    /// (`server::slots`).
    port: Arc<Port>,
    /// The client-certificate setting its TLS handshake verified under:
    /// once it is replaced, no further request is served.
    verification: Option<Arc<Verification>>,
}

/// The deadlines of a connection waiting for its client. (Boxed: rarely
/// set, and every connection holds its state, idle ones included.)
#[derive(Default)]
struct Waits {
    /// Since when the request body waits for the client, and until when
    /// it may.
    read: Option<(Instant, Deadline)>,
    /// Armed while a write waits for the client to take bytes.
    write: Option<Deadline>,
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the client closed the connection before the request body ended")]
    Truncated,
    #[error("request body: {0}")]
    Chunk(#[from] chunked::ChunkError),
    #[error("request body: {0}")]
    Io(#[from] io::Error),
    #[error("the client sent nothing for {0:?} while its request body was due")]
    Stalled(Duration),
    #[error("the client sent its request body too slowly while others waited for its slot")]
    TooSlow,
}

impl BodyError {
    fn fault(&self) -> BodyFault {
        match self {
            BodyError::Truncated | BodyError::Io(_) => BodyFault::Truncated,
            BodyError::Chunk(_) => BodyFault::Malformed,
            BodyError::Stalled(_) | BodyError::TooSlow => BodyFault::Stalled,
        }
    }
}

fn lock<S>(wire: &Mutex<Wire<S>>) -> MutexGuard<'_, Wire<S>> {
    wire.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        http1::poll_fill(&mut self.io, &mut self.buf, cx)
    }

    /// Reads the first bytes of the next head into a buffer on the stack,
    /// so that a connection waiting for its client holds no read buffer;
    /// they are copied into one only when they come.
    fn poll_fill_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        let mut stack = [const { MaybeUninit::<u8>::uninit() }; IDLE_READ];
        let mut read = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// Writes what is encoded; fails once the client has taken nothing
    /// for `timeouts.send` (a client that does not read its answers, or
    /// pipelines requests and never reads, holds no slot longer).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let before = self.out.len();
        let written = match http1::poll_write_all(&mut self.io, &mut self.out, cx) {
            Poll::Ready(written) => written,
            Poll::Pending => {
                if self.out.len() != before {
                    self.end_write_wait();
                }
                let send = self.port.settings.timeouts.send;
                let deadline = self
                    .waits
                    .get_or_insert_with(Box::default)
                    .write
                    .get_or_insert_with(|| Deadline::after(send));
                ready!(Pin::new(deadline).poll(cx));
                crate::metrics::client_error("send_timeout");
                Err(io::ErrorKind::TimedOut.into())
            }
        };
        self.end_write_wait();
        if written.is_err() {
            self.write_failed = true;
            self.out.clear();
        }
        Poll::Ready(written)
    }

    /// The next piece of the request body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.answering {
            if std::mem::take(&mut self.continue_due) {
                self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            match self.poll_write_out(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return self.fail(error.into()),
                // Should the answer begin meanwhile, its writing is the
                // exchange's: this task is woken to read on.
                Poll::Pending => {
                    self.activity.body_waker.register(cx.waker());
                    return Poll::Pending;
                }
            }
        }
        loop {
            if let Some(fault) = self.failed {
                return Poll::Ready(Some(Err(Box::new(fault))));
            }
            match self.body.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => {
                    self.end_read_wait();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(error) => return self.fail(error.into()),
            }
            let mut pace = *self.pace.get_or_insert_with(Pace::start);
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return self.fail(BodyError::Truncated),
                Poll::Ready(Ok(n)) => {
                    self.end_read_wait();
                    let too_slow = pace.too_slow_after(n as u64, self.port.slots.pressure());
                    self.pace = Some(pace);
                    if too_slow {
                        return self.fail(BodyError::TooSlow);
                    }
                }
                Poll::Ready(Err(error)) => return self.fail(error.into()),
                // The client is due to send: its silence is bounded, more
                // tightly while the port has no free slot.
                Poll::Pending => {
                    self.activity.body_waker.register(cx.waker());
                    let wait = self
                        .port
                        .slots
                        .pressure()
                        .body_silence(self.port.settings.timeouts.body_read);
                    let (since, deadline) = self
                        .waits
                        .get_or_insert_with(Box::default)
                        .read
                        .get_or_insert_with(|| (Instant::now(), Deadline::after(wait)));
                    // Only ever earlier: a body cut short under pressure
                    // stays so when a slot frees.
                    if *since + wait < deadline.when() {
                        *deadline = Deadline::at(*since + wait);
                    }
                    ready!(Pin::new(deadline).poll(cx));
                    return self.fail(BodyError::Stalled(wait));
                }
            }
        }
    }

    fn end_read_wait(&mut self) {
        if let Some(waits) = &mut self.waits {
            waits.read = None;
            if waits.write.is_none() {
                self.waits = None;
            }
        }
    }

    fn end_write_wait(&mut self) {
        if let Some(waits) = &mut self.waits {
            waits.write = None;
            if waits.read.is_none() {
                self.waits = None;
            }
        }
    }

    /// The exchange has ended before its request body: the body ends for
    /// good (cut short, as the upstream sees it), so that a task still
    /// reading it gets an error at once and drops it, and nothing more of
    /// it is decoded from the buffer of the closing connection.
    fn abandon_body(&mut self) {
        if self.body.is_done() || self.failed.is_some() {
            return;
        }
        self.failed = Some(BodyFault::Truncated);
        self.end_read_wait();
        self.activity.body_waker.wake();
    }

    /// The body ends in error, for good: the client's fault, counted once.
    fn fail(&mut self, error: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let fault = error.fault();
        tracing::debug!(%error, "request body failed");
        crate::metrics::client_error(fault.cause());
        self.failed = Some(fault);
        self.end_read_wait();
        Poll::Ready(Some(Err(Box::new(fault))))
    }
}

/// A request body, read from the connection as the handler takes it.
struct RequestBody<S> {
    wire: Arc<Mutex<Wire<S>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> HttpBody for RequestBody<S> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        lock(&self.wire).poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.wire).body.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        let wire = lock(&self.wire);
        if wire.failed.is_some() {
            SizeHint::default()
        } else {
            wire.body.size_hint()
        }
    }
}

/// What waiting for a head gave.
enum HeadRead {
    Head(Head),
    Http2,
    Refused(Rejection),
    /// The client closed, or the connection is closing while idle.
    Closed,
    /// A head came after the client-certificate setting the connection
    /// was verified under was replaced: it is not served.
    Unverified,
}

/// Serves the exchanges of one connection until it closes, or hands it
/// over to HTTP/2. `closing` asks it to end after the exchange in
/// progress (at once when it waits for a head that has not begun).
///
/// This future is dropped while the connection is parked (see
/// [`Connection`]), so it may be large: nothing of it is allocated per
/// exchange.
pub(super) async fn serve<S, H, F>(
    conn: &Connection<S>,
    peer: SocketAddr,
    closing: &AtomicBool,
    activity: &Arc<Activity>,
    handler: &H,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Reset + Unpin + Send + 'static,
    H: Fn(Request<Body>, SocketAddr) -> F,
    F: Future<Output = Response<Body>>,
{
    let wire = &conn.0;
    let end = loop {
        let head = match read_head(wire, closing).await {
            HeadRead::Head(head) => head,
            HeadRead::Closed => break End::Close { linger: false },
            HeadRead::Http2 => return Ending::Http2,
            HeadRead::Refused(rejection) => break End::Refuse(rejection),
            // As when a connection closes while the client's next request
            // is on its way: nothing of it was processed, and a client may
            // send it again on a new connection (RFC 9112 §9.3.1), whose
            // handshake verifies it under the setting in force. Lingering
            // lets the client read the close rather than a reset.
            HeadRead::Unverified => {
                tracing::debug!(%peer, "request not served: the client-certificate settings its connection was verified under were replaced");
                break End::Close { linger: true };
            }
        };
        let exchanged = exchange(wire, head, peer, closing, activity, handler).await;
        match exchanged {
            Exchanged::Kept => {}
            Exchanged::Ended { linger } => break End::Close { linger },
            Exchanged::Upgraded(switch) => return Ending::Upgraded(switch),
        }
    };
    finish(wire, end, peer).await;
    Ending::Closed
}

/// How a connection's last exchange went.
enum End {
    /// Its head was refused: the refusal is the last answer.
    Refuse(Rejection),
    Close {
        linger: bool,
    },
}

/// Answers a refused head, then closes the connection.
async fn finish<S: AsyncRead + AsyncWrite + Reset + Unpin>(
    wire: &Mutex<Wire<S>>,
    end: End,
    peer: SocketAddr,
) {
    let linger = match end {
        End::Refuse(rejection) => {
            tracing::debug!(%peer, cause = %rejection, "request head refused");
            let exchange = Exchange {
                method: &Method::GET,
                http11: true,
                keep_alive: false,
            };
            let response = rejection.into_response();
            // No request to count for an API: the client's fault is
            // counted, and logged with what is known of it (no method,
            // path or request id: the head did not make a request).
            let status = response.status().as_u16();
            if crate::access_log::is_on() {
                crate::access_log::write(&crate::access_log::Entry {
                    client: peer.ip().to_canonical(),
                    request_id: "-",
                    method: "-",
                    path: "-",
                    api: "-",
                    status,
                    micros: 0,
                });
            }
            crate::metrics::client_error(match status {
                408 => "head_timeout",
                414 => "uri_too_long",
                431 => "head_too_large",
                501 => "transfer_coding",
                417 => "expectation",
                _ => "head_malformed",
            });
            let _ = respond(wire, response, exchange).await;
            true
        }
        End::Close { linger } => linger,
    };
    close(wire, linger).await;
}

/// How an exchange left its connection.
enum Exchanged {
    /// Ready for the next one.
    Kept,
    /// To be closed, lingering or not.
    Ended { linger: bool },
    /// A `101` was written: the tunnel takes the connection.
    Upgraded(Box<tunnel::Switch>),
}

/// One exchange: the handler's answer to the request `head` begins, then
/// its writing.
async fn exchange<S, H, F>(
    wire: &Arc<Mutex<Wire<S>>>,
    head: Head,
    peer: SocketAddr,
    closing: &AtomicBool,
    activity: &Arc<Activity>,
    handler: &H,
) -> Exchanged
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Body>, SocketAddr) -> F,
    F: Future<Output = Response<Body>>,
{
    let Head {
        request,
        framing,
        keep_alive,
        expect_continue,
    } = head;
    let method = request.method().clone();
    let http11 = request.version() == Version::HTTP_11;
    let body = match framing {
        Framing::None => crate::proxy::empty(),
        Framing::Length(n) => read_body(wire, Delimited::Length(n), expect_continue),
        Framing::Chunked => read_body(wire, Delimited::Chunked(Chunked::new()), expect_continue),
    };
    let guard = InFlight::begin(activity);
    let answer = handler(request.map(|()| body), peer);
    let Some(mut response) = answer_unless_gone(wire, answer).await else {
        // The client left: the answer (and the upstream exchange) is
        // dropped, and nobody is there to read anything more.
        drop(guard);
        return Exchanged::Ended { linger: false };
    };
    let guard = guard.answered();
    let switch = switching(&mut response);
    // The rest of a request body the handler did not read would be
    // taken for the next head: the connection ends instead.
    let read_all = {
        let mut wire = lock(wire);
        // Too late to ask for the body: the answer is given, and written
        // by this task alone.
        wire.continue_due = false;
        wire.answering = true;
        let read_all = wire.body.is_done() && wire.failed.is_none();
        if !wire.body.is_done() {
            // A body waiting to write its `100 Continue` reads on.
            wire.activity.body_waker.wake();
        }
        read_all
    };
    if let Some(switch) = switch {
        let exchange = Exchange {
            method: &method,
            http11,
            keep_alive: true,
        };
        let written = read_all && respond(wire, response, exchange).await;
        drop(guard);
        if written {
            return Exchanged::Upgraded(switch);
        }
        lock(wire).abandon_body();
        return Exchanged::Ended { linger: false };
    }
    let exchange = Exchange {
        method: &method,
        http11,
        keep_alive: keep_alive && read_all && !closing.load(Ordering::Acquire),
    };
    let kept = respond(wire, response, exchange).await;
    drop(guard);
    let mut wire = lock(wire);
    if kept {
        // A connection waiting for its next request keeps no buffer
        // (thousands of them may wait between requests), unless the client
        // has already sent it.
        if wire.buf.is_empty() {
            wire.out = Vec::new();
        }
        return Exchanged::Kept;
    }
    // What is encoded and not yet written (an answer whose body failed
    // before its head went out: the head) goes out as the connection
    // closes: the client sees an answer it cannot read to its end, not
    // no answer at all.
    wire.abandon_body();
    // Lingering lets a client read its last answer; one that stopped
    // reading gets no such grace.
    Exchanged::Ended {
        linger: (!read_all || !wire.buf.is_empty()) && !wire.write_failed,
    }
}

/// The handler's answer, or `None` if the client closes its connection
/// first. Once the request has nothing more to read (most have no body),
/// the connection is watched while the answer is awaited — a long poll, an
/// upstream slow to answer — as it is while an answer's body waits
/// ([`respond`]): a client that went away no longer holds its slot, its
/// upstream connection and the upstream's work for `upstream.timeout`.
/// What it sends meanwhile (a next request) is kept. The watch reads only
/// when the socket says there is something: a connection the head was
/// read from to its end costs no system call here.
async fn answer_unless_gone<S, F>(wire: &Mutex<Wire<S>>, answer: F) -> Option<Response<Body>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response<Body>>,
{
    let mut answer = std::pin::pin!(answer);
    poll_fn(|cx| {
        if let Poll::Ready(response) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        let mut wire = lock(wire);
        while wire.body.is_done() && wire.failed.is_none() && wire.buf.len() < WATCHED_BYTES {
            // An empty buffer reads on the stack: the connection holds no
            // read buffer for a request that sent nothing more.
            let filled = if wire.buf.is_empty() {
                wire.poll_fill_idle(cx)
            } else {
                wire.poll_fill(cx)
            };
            match filled {
                Poll::Ready(Ok(0) | Err(_)) => {
                    tracing::debug!("the client closed the connection before the answer");
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

fn read_body<S>(wire: &Arc<Mutex<Wire<S>>>, body: Delimited, expect_continue: bool) -> Body
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    {
        let mut guard = lock(wire);
        guard.body = body;
        guard.continue_due = expect_continue;
        guard.answering = false;
        guard.pace = None;
    }
    RequestBody { wire: wire.clone() }.boxed()
}

/// Waits for the next head. One that has begun must be complete within
/// `timeouts.header_read`.
async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &Mutex<Wire<S>>,
    closing: &AtomicBool,
) -> HeadRead {
    let mut deadline: Option<Deadline> = None;
    poll_fn(|cx| {
        let mut wire = lock(wire);
        let read = poll_head(&mut wire, closing, &mut deadline, cx);
        wire.waiting = read.is_pending() && wire.buf.is_empty();
        if let Poll::Ready(HeadRead::Head(_)) = read {
            wire.first = false;
        }
        read
    })
    .await
}

fn poll_head<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &mut Wire<S>,
    closing: &AtomicBool,
    deadline: &mut Option<Deadline>,
    cx: &mut Context<'_>,
) -> Poll<HeadRead> {
    loop {
        if !wire.buf.is_empty() {
            let limits = &wire.port.settings.limits;
            match head::parse(&mut wire.buf, limits, wire.first, &mut wire.fields) {
                // The one look per request at the setting (TLS only).
                Ok(Parsed::Head(_))
                    if wire.verification.as_ref().is_some_and(|v| v.is_retired()) =>
                {
                    return Poll::Ready(HeadRead::Unverified)
                }
                Ok(Parsed::Head(head)) => return Poll::Ready(HeadRead::Head(head)),
                Ok(Parsed::Http2) => return Poll::Ready(HeadRead::Http2),
                Ok(Parsed::Partial) => {}
                Err(refusal) => return Poll::Ready(HeadRead::Refused(rejection(refusal))),
            }
        } else if closing.load(Ordering::Acquire) {
            return Poll::Ready(HeadRead::Closed);
        }
        let filled = if wire.buf.is_empty() {
            wire.poll_fill_idle(cx)
        } else {
            wire.poll_fill(cx)
        };
        match filled {
            Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(HeadRead::Closed),
            Poll::Ready(Ok(_)) => {}
            Poll::Pending => break,
        }
    }
    if wire.buf.is_empty() {
        return Poll::Pending;
    }
    let timeout = wire.port.settings.timeouts.header_read;
    let deadline = deadline.get_or_insert_with(|| Deadline::after(timeout));
    match Pin::new(deadline).poll(cx) {
        Poll::Ready(()) => Poll::Ready(HeadRead::Refused(Rejection::RequestTimeout)),
        Poll::Pending => Poll::Pending,
    }
}

fn rejection(refusal: Refusal) -> Rejection {
    match refusal {
        Refusal::BadRequest(why) => Rejection::BadRequest(why),
        Refusal::HeadTooLarge => Rejection::HeadersTooLarge,
        Refusal::UriTooLong => Rejection::UriTooLong,
        Refusal::NotImplemented(what) => Rejection::NotImplemented(what),
        Refusal::ExpectationFailed => Rejection::ExpectationFailed,
    }
}

/// Writes the response, its body as it comes; whether the connection can
/// carry another exchange.
async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    wire: &Mutex<Wire<S>>,
    response: Response<Body>,
    exchange: Exchange<'_>,
) -> bool {
    let (mut parts, mut body) = response.into_parts();
    let (framing, keep_alive) = {
        let mut wire = lock(wire);
        encode::head(&parts, &body.size_hint(), exchange, &mut wire.out)
    };
    http1::spares::give_back(std::mem::take(&mut parts.headers));
    http1::spares::give_back_extensions(std::mem::take(&mut parts.extensions));
    drop(parts);
    let mut declared = match framing {
        BodyFraming::Length(n) => Some(n),
        _ => None,
    };
    let mut ended = framing == BodyFraming::None;
    let written = poll_fn(|cx| loop {
        let mut waiting = false;
        while !ended && lock(wire).out.len() < WRITE_BATCH {
            match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers are not sent on: RFC 9110 §6.5.1.
                        continue;
                    };
                    let mut wire = lock(wire);
                    match (framing, declared.as_mut()) {
                        (BodyFraming::Length(_), Some(left)) => {
                            let Some(rest) = left.checked_sub(data.len() as u64) else {
                                return Poll::Ready(Err(()));
                            };
                            *left = rest;
                            wire.out.extend_from_slice(&data);
                        }
                        (BodyFraming::Chunked, _) if !data.is_empty() => {
                            chunked::encode(&data, &mut wire.out);
                        }
                        (BodyFraming::UntilClose, _) => wire.out.extend_from_slice(&data),
                        _ => {}
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "response body failed; connection cut");
                    return Poll::Ready(Err(()));
                }
                Poll::Ready(None) => {
                    match (framing, declared) {
                        (BodyFraming::Chunked, _) => {
                            lock(wire).out.extend_from_slice(chunked::LAST_CHUNK);
                        }
                        (BodyFraming::Length(_), Some(left)) if left > 0 => {
                            return Poll::Ready(Err(()));
                        }
                        _ => {}
                    }
                    ended = true;
                }
                Poll::Pending => {
                    waiting = true;
                    break;
                }
            }
        }
        if ready!(lock(wire).poll_write_out(cx)).is_err() {
            return Poll::Ready(Err(()));
        }
        if ended {
            return Poll::Ready(Ok(()));
        }
        if waiting {
            // While the body waits for its source (an event stream, a long
            // poll), a client that closes the connection ends the exchange
            // at once: the body, and the upstream exchange with it, is
            // dropped. What it sends meanwhile (a next request) is kept.
            let mut wire = lock(wire);
            if wire.body.is_done() && wire.failed.is_none() && wire.buf.len() < WATCHED_BYTES {
                match wire.poll_fill(cx) {
                    Poll::Ready(Ok(0) | Err(_)) => {
                        tracing::debug!("the client closed the connection during the answer");
                        return Poll::Ready(Err(()));
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => {}
                }
            }
            return Poll::Pending;
        }
    })
    .await;
    if written.is_err() && framing == BodyFraming::UntilClose {
        lock(wire).cut = true;
    }
    written.is_ok() && keep_alive
}

/// Ends the connection: what is encoded is written, then the write side
/// shut down; with `linger`, what the client still sends is read and
/// dropped for a short while.
async fn close<S: AsyncRead + AsyncWrite + Reset + Unpin>(wire: &Mutex<Wire<S>>, linger: bool) {
    if lock(wire).cut {
        // What was encoded goes out; then a reset, no end of stream.
        let written = poll_fn(|cx| lock(wire).poll_write_out(cx));
        let _ = tokio::time::timeout(LINGER, written).await;
        lock(wire).io.reset();
        return;
    }
    let shutdown = poll_fn(|cx| {
        let mut wire = lock(wire);
        ready!(wire.poll_write_out(cx))?;
        Pin::new(&mut wire.io).poll_shutdown(cx)
    });
    if tokio::time::timeout(LINGER, shutdown).await.is_err() || !linger {
        return;
    }
    let mut dropped = 0;
    let drain = poll_fn(|cx| {
        let mut turn = 0;
        loop {
            let mut wire = lock(wire);
            wire.buf.clear();
            match ready!(wire.poll_fill(cx)) {
                Ok(n) if n > 0 && dropped < LINGER_BYTES => {
                    dropped += n;
                    turn += n;
                    if turn >= LINGER_TURN {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                _ => return Poll::Ready(()),
            }
        }
    });
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The tunnel a `101` response carries; a `101` without one would leave
/// the client speaking a protocol nobody carries: it becomes a 502.
fn switching(response: &mut Response<Body>) -> Option<Box<tunnel::Switch>> {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    let switch = response
        .extensions_mut()
        .remove::<tunnel::Pending>()
        .and_then(|pending| pending.take())
        .map(Box::new);
    if switch.is_none() {
        *response = Rejection::BadGateway(BadGateway::NoSwitch).into_response();
    }
    switch
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::server::{connection_slots, http2_builder, Transport};

    /// Counts the times its task was woken.
    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn port() -> Arc<Port> {
        let settings = crate::server::tests::settings(1);
        Arc::new(Port {
            settings,
            slots: connection_slots(settings),
            http2: http2_builder(settings),
            transport: Transport::Plain,
        })
    }

    /// The answer's writer waits for the client to take its bytes while
    /// the request body is polled on another task: once the client reads,
    /// the writer is the one woken, whichever polled last.
    #[tokio::test]
    async fn a_request_body_polled_while_the_answer_waits_leaves_the_wake_up_to_the_writer() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::new(Duration::from_secs(30)));
        let conn = Connection::new(server, &activity, &port(), None);
        let mut body = read_body(&conn.0, Delimited::Chunked(Chunked::new()), false);
        // The answer begins, more of it than the client has room for.
        {
            let mut wire = lock(&conn.0);
            wire.answering = true;
            wire.out.extend_from_slice(&[b'a'; 256]);
        }
        let writer = Arc::new(Woken::default());
        let writer_waker = Waker::from(writer.clone());
        let written = lock(&conn.0).poll_write_out(&mut Context::from_waker(&writer_waker));
        assert!(
            written.is_pending(),
            "the client has no room for the answer"
        );
        // The body's task polls it next: it waits for the client to send.
        let reader = Arc::new(Woken::default());
        let reader_waker = Waker::from(reader.clone());
        let polled = Pin::new(&mut body).poll_frame(&mut Context::from_waker(&reader_waker));
        assert!(polled.is_pending(), "the client has sent nothing");
        assert_eq!(
            lock(&conn.0).out.len(),
            256 - 64,
            "what the client had room for"
        );
        let mut taken = [0; 64];
        client.read_exact(&mut taken).await.unwrap();
        assert_eq!(
            writer.0.load(Ordering::SeqCst),
            1,
            "the writer is woken when the client takes the answer"
        );
        assert_eq!(reader.0.load(Ordering::SeqCst), 0, "the body waits to read");
    }
}
