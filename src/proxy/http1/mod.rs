//! HTTP/1.1 to upstreams, driven by the task of the request it carries.
//!
//! A [`Connection`] writes one request (head, then the body as the client
//! sends it) and reads the response head; the response body then reads
//! from the connection as the client takes it. No task of its own, no
//! channel: the upstream's readiness wakes the client's task directly.
//!
//! The upstream is not trusted to frame its answers well: heads are
//! bounded and parsed by `httparse`, framing follows RFC 9112 §6.3 and is
//! refused where it is ambiguous, and a connection carries another request
//! only after an exchange that ended exactly where both framings said.
//! An upstream that answers before the request body is all sent gets the
//! rest no more; that connection then ends with the response.

mod body;
pub mod chunked;
#[doc(hidden)]
pub mod request;
#[doc(hidden)]
pub mod response;
mod stream;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Request, Response};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite};

pub use body::ResponseBody;
pub use chunked::ChunkError;
pub use request::Destination;
pub use response::HeadError;
pub use stream::Stream;

use super::{Body, BoxError};
use request::BodyFraming;
use response::Head;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;
/// Request body bytes encoded before they are written.
const WRITE_BATCH: usize = 64 * 1024;

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
}

/// A failed exchange, with the request when it can be sent again as it
/// was: it had no body, and the connection ended without a byte of answer.
pub struct Failure {
    pub error: Error,
    pub request: Option<Request<Body>>,
    /// Writing the request failed: the upstream closed the connection
    /// before it could have read the request.
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
    fields: Vec<(http::HeaderName, usize, usize)>,
}

/// How far the request got.
enum Upload {
    Sent,
    /// The upstream answered before the request body was all sent.
    Answered(Head),
}

impl Connection {
    pub fn new(io: Stream) -> Connection {
        Connection {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// Whether this idle connection can carry a request: the upstream has
    /// not closed it or sent anything since the last response.
    pub fn is_usable(&mut self) -> bool {
        self.buf.is_empty() && !self.io.is_disturbed()
    }

    /// Sends `req` to `destination` and reads the response head; the body
    /// streams from the connection, which may be silent for at most
    /// `stall` while more of it is due.
    pub async fn send(
        mut self,
        req: Request<Body>,
        destination: Destination<'_>,
        stall: Duration,
    ) -> Result<Response<ResponseBody>, Failure> {
        let (parts, mut body) = req.into_parts();
        self.out.clear();
        let framing = request::encode(&parts, &body, destination, &mut self.out);
        if framing == BodyFraming::None {
            // Kept until an answer begins: the request may be sent again.
            let result = match poll_fn(|cx| self.poll_write_out(cx)).await {
                Ok(()) => self.read_head(&parts.method).await.map_err(|e| (e, false)),
                Err(error) => Err((error, true)),
            };
            return match result {
                Ok(head) => Ok(self.respond(head, true, stall)),
                Err((error, unsent)) => {
                    let unanswered =
                        matches!(error, Error::Closed | Error::Io(_)) && self.buf.is_empty();
                    let request = (unsent || unanswered).then(|| Request::from_parts(parts, body));
                    Err(Failure {
                        error,
                        request,
                        unsent,
                    })
                }
            };
        }
        let method = parts.method;
        drop(parts.headers);
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
            Upload::Sent => {
                let head = self.read_head(&method).await.map_err(fail)?;
                Ok(self.respond(head, true, stall))
            }
        }
    }

    fn respond(
        self,
        head: Head,
        request_complete: bool,
        stall: Duration,
    ) -> Response<ResponseBody> {
        let reusable = head.keep_alive && request_complete;
        let body = ResponseBody::new(self, head.framing, reusable, stall);
        // HTTP/1.1, whatever the upstream spoke (RFC 9110 §6.2): the
        // version `Response::new` gives.
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        response
    }

    async fn read_head(&mut self, method: &Method) -> Result<Head, Error> {
        loop {
            if !self.buf.is_empty() {
                if let Some(head) = response::parse(&mut self.buf, method, &mut self.fields)? {
                    return Ok(head);
                }
            }
            if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Err(if self.buf.is_empty() {
                    Error::Closed
                } else {
                    Error::Head(HeadError::Malformed(httparse::Error::Status))
                });
            }
        }
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
            if let Some(head) = response::parse(&mut self.buf, method, &mut self.fields)? {
                return Poll::Ready(Ok(Upload::Answered(head)));
            }
        }
    }

    /// Writes (and flushes) everything encoded.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        poll_write_all(&mut self.io, &mut self.out, cx).map_err(Error::from)
    }

    /// Reads what the upstream has sent into the buffer: the bytes read,
    /// 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        poll_fill(&mut self.io, &mut self.buf, cx)
    }
}

/// Reads what the peer has sent into `buf` (up to [`READ_SIZE`] more):
/// the bytes read, 0 at the end of the stream. Both sides of the gateway
/// read their connections this way.
pub(crate) fn poll_fill<S: AsyncRead + Unpin>(
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
pub(crate) fn poll_write_all<S: AsyncWrite + Unpin>(
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
