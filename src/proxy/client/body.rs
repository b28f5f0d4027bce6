//! An upstream's response body, read from its connection as the client
//! takes it: by length, in chunks, or until the upstream closes.
//!
//! The connection is handed back for another request only after a body
//! that ended exactly where its framing said, with no byte after it. An
//! upstream that goes silent while more of the body is due is given up on
//! after the API's upstream timeout (the client's response is cut off).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::{Connection, Error};
use crate::http1::chunked::{Chunked, Decoded, Delimited};
use crate::http1::response_head::Framing;

enum State {
    Delimited(Delimited),
    UntilClose,
    Done,
}

pub struct ResponseBody {
    conn: Option<Connection>,
    state: State,
    /// The response and the request allow another request on the
    /// connection.
    reusable: bool,
    /// The longest silence while more of the body is due.
    stall: Duration,
    /// Armed once the body first has to wait for the upstream.
    silence: Option<Pin<Box<Sleep>>>,
    /// Bytes came since the silence timer was last set.
    heard: bool,
    /// The whole request went out before the answer began: an upstream
    /// that answered early and waits for the rest was sent no more of it,
    /// and is not to blame for what it then owes (see [`ResponseBody::arrived`]).
    request_sent: bool,
}

impl ResponseBody {
    pub(super) fn new(
        conn: Connection,
        framing: Framing,
        (reusable, request_sent): (bool, bool),
        stall: Duration,
    ) -> ResponseBody {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Delimited(Delimited::Length(n)),
            Framing::Chunked => State::Delimited(Delimited::Chunked(Chunked::new())),
            Framing::UntilClose => State::UntilClose,
        };
        ResponseBody {
            conn: Some(conn),
            state,
            reusable,
            stall,
            silence: None,
            heard: false,
            request_sent,
        }
    }

    /// An empty body on no connection (a `101`'s: the connection went on
    /// to the new protocol).
    pub(super) fn done() -> ResponseBody {
        ResponseBody {
            conn: None,
            state: State::Done,
            reusable: false,
            stall: Duration::ZERO,
            silence: None,
            heard: false,
            request_sent: true,
        }
    }

    /// The connection, once the body has ended, if it can carry another
    /// request.
    pub fn take_idle(&mut self) -> Option<Connection> {
        if !matches!(self.state, State::Done) || !self.reusable {
            return None;
        }
        self.conn.take().filter(|conn| conn.buf.is_empty())
    }

    /// Whether the upstream owes nothing more it could fail to send: what
    /// is left of the body has all arrived, or the upstream answered
    /// before it had the whole request, which it was then sent no more of
    /// (what it sends after is at the gateway's risk, not the upstream's).
    pub fn owes_nothing(&self) -> bool {
        !self.request_sent || self.arrived()
    }

    /// Whether what is left of the body has all arrived: reading it waits
    /// for nothing the upstream has still to send.
    fn arrived(&self) -> bool {
        match (&self.state, &self.conn) {
            (State::Done, _) => true,
            (State::Delimited(Delimited::Length(left)), Some(conn)) => {
                conn.buf.len() as u64 >= *left
            }
            _ => false,
        }
    }

    /// Waiting for the upstream: pending, unless it has been silent for
    /// too long.
    fn poll_silence(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let stall = self.stall;
        let silence = self
            .silence
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        if std::mem::take(&mut self.heard) {
            silence.as_mut().reset(Instant::now() + stall);
        }
        match silence.as_mut().poll(cx) {
            Poll::Ready(()) => self.fail(Error::Stalled(stall)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.state = State::Done;
        self.reusable = false;
        Poll::Ready(Some(Err(error)))
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Delimited(body) => match body.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => {
                        if body.is_done() {
                            this.state = State::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(Decoded::End) => {
                        this.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(error) => return this.fail(error.into()),
                },
                State::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.reusable = false;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(Error::Truncated),
                Poll::Ready(Ok(_)) => this.heard = true,
                Poll::Ready(Err(error)) => return this.fail(error.into()),
                Poll::Pending => return this.poll_silence(cx),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Delimited(ref body) => body.size_hint(),
            State::Done => SizeHint::with_exact(0),
            State::UntilClose => SizeHint::default(),
        }
    }
}
