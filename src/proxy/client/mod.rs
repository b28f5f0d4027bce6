//! HTTP/1.1 client to upstreams, driven by the task of the request it carries.
//!
//! A [`Connection`] writes one request (head, then the body as the client
//! sends it) and reads the response head; the response body then reads
//! from the connection as the client takes it. No task of its own, no
//! channel: the upstream's readiness wakes the client's task directly.
//!
//! The upstream is not trusted to frame its answers well: heads are
//! bounded and parsed by `httparse` (`http1::response_head`), framing follows RFC 9112 §6.3 and is
//! refused where it is ambiguous, and a connection carries another request
//! only after an exchange that ended exactly where both framings said.
//! An upstream that answers before the request body is all sent gets the
//! rest no more; that connection then ends with the response.
//!
//! The API's upstream timeout bounds each wait on the upstream: a write
//! it takes nothing of, the response head from the moment the request is
//! sent, each silence of the response body. Waits on the client's request
//! body are not the upstream's: the server bounds them, and a body that
//! fails aborts the exchange before the request is complete (no last
//! chunk; the connection closed short of the length).

mod body;
mod stream;

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::header::UPGRADE;
use http::{Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;

pub use body::ResponseBody;
pub use stream::Stream;

use super::{Body, BoxError};
use crate::http1::chunked::{self, ChunkError};
use crate::http1::request_encode::{self, BodyFraming, Destination};
use crate::http1::response_head::{self, Head, HeadError};
use crate::http1::spares;
use crate::http1::{poll_fill, poll_write_all};
use crate::timer::Deadline;
/// Request body bytes encoded before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// On a `101` response: the upstream connection, and the bytes of the
/// new protocol already read from it, for whoever carries that protocol.
#[derive(Clone)]
pub struct Switched(Arc<Mutex<Option<(Stream, BytesMut)>>>);

impl Switched {
    /// The connection, to the first taker.
    pub fn take(&self) -> Option<(Stream, BytesMut)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection without an answer")]
    Closed,
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("the request body did not match its declared length")]
    RequestBodyLength,
    #[error("response body: {0}")]
    Chunk(#[from] ChunkError),
    #[error("the response body ended before its length")]
    Truncated,
    #[error("the upstream sent nothing for {0:?} while more of the body was due")]
    Stalled(Duration),
    #[error("the upstream did not answer within {0:?} of the request")]
    Timeout(Duration),
    #[error("the upstream took no request bytes for {0:?}")]
    WriteStalled(Duration),
}

/// A failed exchange, with the request when it can be sent again as it
/// was: it had no body, and the connection ended without a byte of answer.
pub struct Failure {
    pub error: Error,
    pub request: Option<Request<Body>>,
    /// Writing the request failed before the upstream was given a byte of
    /// it: it cannot have read the request.
    pub unsent: bool,
}

/// An HTTP/1.1 connection to an upstream, between exchanges.
pub struct Connection {
    io: Stream,
    /// Read from the upstream, not yet used.
    buf: BytesMut,
    /// Encoded, not yet written.
    out: Vec<u8>,
    /// Used by each response head parsed, so that parsing allocates
    /// nothing.
    fields: response_head::Scratch,
    /// The upstream timeout of the exchange in progress. Boxed: a
    /// connection moves (pool → exchange → response body → pool) several
    /// times per request, and each move copies it.
    waits: Box<Waits>,
}

/// The bounds of the waits on the upstream during one exchange.
struct Waits {
    /// The API's upstream timeout: for the answer once the request is
    /// sent, and for each write that makes no progress.
    stall: Duration,
    /// Armed while a write waits for the upstream to take bytes.
    write_deadline: Option<Deadline>,
}

/// How far the request got.
enum Upload {
    Sent,
    /// The upstream answered before the request body was all sent.
    Answered(Head),
    /// The connection failed while the request was going out: an upstream
    /// that answered early and closed without reading the rest resets
    /// it, and its answer may be on its way all the same.
    Refused(Error),
}

impl Connection {
    pub fn new(io: Stream) -> Connection {
        Connection {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            fields: response_head::Scratch::default(),
            waits: Box::new(Waits {
                stall: Duration::ZERO,
                write_deadline: None,
            }),
        }
    }

    /// Whether this idle connection can carry a request: the upstream has
    /// not closed it or sent anything since the last response.
    pub fn is_usable(&mut self) -> bool {
        self.buf.is_empty() && !self.io.is_disturbed()
    }

    /// Frees the read and write buffers of an idle connection (they are
    /// allocated again when it next carries a request).
    pub fn release_buffers(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
        }
    }

    /// Whether it holds a read or write buffer (for tests).
    #[cfg(test)]
    pub fn holds_buffers(&self) -> bool {
        self.buf.capacity() > 0 || self.out.capacity() > 0
    }

    /// Sends `req` to `destination` and reads the response head; the body
    /// streams from the connection, which may be silent for at most
    /// `stall` while more of it is due.
    #[allow(clippy::manual_async_fn)] // an `async fn` holds its arguments twice (see `proxy::serve::serve`)
    pub fn send(
        mut self,
        req: Request<Body>,
        destination: Destination<'_>,
        stall: Duration,
    ) -> impl Future<Output = Result<Response<ResponseBody>, Failure>> + use<'_> {
        async move {
            let (parts, mut body) = req.into_parts();
            self.out.clear();
            self.waits.stall = stall;
            self.fields.room = destination.room;
            self.fields.as_sent = destination.as_sent;
            let framing = request_encode::encode(&parts, &body, destination, &mut self.out);
            if framing == BodyFraming::None {
                // A request that names a protocol to switch to may get `101`.
                let switching = parts.headers.contains_key(UPGRADE);
                let head_len = self.out.len();
                // Kept until an answer begins: the request may be sent again.
                let result = match poll_fn(|cx| self.poll_write_out(cx)).await {
                    Ok(()) => self
                        .read_head(&parts.method, switching)
                        .await
                        .map_err(|e| (e, false)),
                    // An upstream that stopped taking the head may have read
                    // part of it: not sent again.
                    Err(error @ Error::WriteStalled(_)) => Err((error, false)),
                    // Unsent only if the write that failed was the first and
                    // took nothing: bytes written before it may have been
                    // read (and acted on, however short of a head they are).
                    Err(error) => {
                        let untouched = self.out.len() == head_len && self.io.tells_unwritten();
                        Err((error, untouched))
                    }
                };
                return match result {
                    Ok(head) => {
                        spares::give_back(parts.headers);
                        Ok(self.respond(head, true, stall))
                    }
                    Err((error, unsent)) => {
                        // Not a byte of answer: an informational head
                        // taken before the close is one.
                        let unanswered = matches!(error, Error::Closed | Error::Io(_))
                            && self.buf.is_empty()
                            && !self.fields.began();
                        let request =
                            (unsent || unanswered).then(|| Request::from_parts(parts, body));
                        Err(Failure {
                            error,
                            request,
                            unsent,
                        })
                    }
                };
            }
            let method = parts.method;
            spares::give_back(parts.headers);
            let fail = |error| Failure {
                error,
                request: None,
                unsent: false,
            };
            let upload = self
                .upload(&mut body, framing, &method)
                .await
                .map_err(fail)?;
            drop(body);
            match upload {
                Upload::Answered(head) => Ok(self.respond(head, false, stall)),
                Upload::Refused(error) => match self.read_head(&method, false).await {
                    Ok(head) => Ok(self.respond(head, false, stall)),
                    Err(_) => Err(fail(error)),
                },
                Upload::Sent => {
                    let head = self.read_head(&method, false).await.map_err(fail)?;
                    Ok(self.respond(head, true, stall))
                }
            }
        }
    }

    fn respond(
        self,
        head: Head,
        request_complete: bool,
        stall: Duration,
    ) -> Response<ResponseBody> {
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now carries the new protocol: it leaves the
            // response (and so never goes back to the pool), with what the
            // upstream sent after the head.
            let Connection { io, buf, .. } = self;
            let mut response = Response::new(ResponseBody::done());
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers;
            response
                .extensions_mut()
                .insert(Switched(Arc::new(Mutex::new(Some((io, buf))))));
            return response;
        }
        let reusable = head.keep_alive && request_complete;
        let body = ResponseBody::new(self, head.framing, (reusable, request_complete), stall);
        // HTTP/1.1, whatever the upstream spoke (RFC 9110 §6.2): the
        // version `Response::new` gives.
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        if let Some(raw) = head.raw {
            let extensions = response.extensions_mut();
            *extensions = spares::take_extensions();
            extensions.insert(raw);
        }
        response
    }

    /// The response head, within the upstream timeout of the request
    /// having been sent (the client's pace of sending its body is not the
    /// upstream's to answer for).
    async fn read_head(&mut self, method: &Method, switching: bool) -> Result<Head, Error> {
        let mut deadline: Option<Deadline> = None;
        let parse = if switching {
            response_head::parse_switching
        } else {
            response_head::parse
        };
        poll_fn(|cx| loop {
            if !self.buf.is_empty() {
                if let Some(head) = parse(&mut self.buf, method, &mut self.fields)? {
                    return Poll::Ready(Ok(head));
                }
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(if self.buf.is_empty() {
                        Error::Closed
                    } else {
                        Error::Head(HeadError::Malformed(httparse::Error::Status))
                    }))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                Poll::Pending => {
                    let stall = self.waits.stall;
                    let deadline = deadline.get_or_insert_with(|| Deadline::after(stall));
                    return Pin::new(deadline)
                        .poll(cx)
                        .map(|()| Err(Error::Timeout(stall)));
                }
            }
        })
        .await
    }

    /// Writes the encoded head and then the body, as the client sends it,
    /// while watching for an early answer.
    async fn upload(
        &mut self,
        body: &mut Body,
        framing: BodyFraming,
        method: &Method,
    ) -> Result<Upload, Error> {
        let mut declared = match framing {
            BodyFraming::Length(n) => Some(n),
            BodyFraming::None | BodyFraming::Chunked => None,
        };
        let mut ended = false;
        poll_fn(|cx| loop {
            match self.poll_write_out(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error @ Error::Io(_))) => {
                    return Poll::Ready(Ok(Upload::Refused(error)))
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return self.poll_early_answer(cx, method),
            }
            if ended {
                return Poll::Ready(Ok(Upload::Sent));
            }
            while self.out.len() < WRITE_BATCH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let Ok(data) = frame.into_data() else {
                            // Trailers are not sent on: RFC 9110 §6.5.1.
                            continue;
                        };
                        match declared.as_mut() {
                            Some(left) => {
                                *left = left
                                    .checked_sub(data.len() as u64)
                                    .ok_or(Error::RequestBodyLength)?;
                                self.out.extend_from_slice(&data);
                            }
                            None if data.is_empty() => {}
                            None => chunked::encode(&data, &mut self.out),
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        return Poll::Ready(Err(Error::RequestBody(error)))
                    }
                    Poll::Ready(None) => {
                        match declared {
                            Some(0) => {}
                            Some(_) => return Poll::Ready(Err(Error::RequestBodyLength)),
                            None => self.out.extend_from_slice(chunked::LAST_CHUNK),
                        }
                        ended = true;
                        break;
                    }
                    Poll::Pending if self.out.is_empty() => {
                        return self.poll_early_answer(cx, method)
                    }
                    Poll::Pending => break,
                }
            }
        })
        .await
    }

    /// While the request is still going out: the response head, if the
    /// upstream has sent all of it already.
    fn poll_early_answer(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<Upload, Error>> {
        loop {
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Err(error.into())),
            }
            if let Some(head) = response_head::parse(&mut self.buf, method, &mut self.fields)? {
                return Poll::Ready(Ok(Upload::Answered(head)));
            }
        }
    }

    /// Writes (and flushes) everything encoded; fails once the upstream
    /// has taken nothing for the upstream timeout.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let before = self.out.len();
        match poll_write_all(&mut self.io, &mut self.out, cx) {
            Poll::Pending => {
                if self.out.len() != before {
                    self.waits.write_deadline = None;
                }
                let stall = self.waits.stall;
                let deadline = self
                    .waits
                    .write_deadline
                    .get_or_insert_with(|| Deadline::after(stall));
                Pin::new(deadline)
                    .poll(cx)
                    .map(|()| Err(Error::WriteStalled(stall)))
            }
            Poll::Ready(written) => {
                self.waits.write_deadline = None;
                Poll::Ready(written.map_err(Error::from))
            }
        }
    }

    /// Reads what the upstream has sent into the buffer: the bytes read,
    /// 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, cx)
    }
}
