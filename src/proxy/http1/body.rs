//! An upstream's response body, read from its connection as the client
//! takes it: by length, in chunks, or until the upstream closes.
//!
//! The connection is handed back for another request only after a body
//! that ended exactly where its framing said, with no byte after it.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::chunked::{Chunked, Decoded};
use super::response::Framing;
use super::{Connection, Error};

enum State {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

pub struct ResponseBody {
    conn: Option<Connection>,
    state: State,
    /// The response and the request allow another request on the
    /// connection.
    reusable: bool,
}

impl ResponseBody {
    pub(super) fn new(conn: Connection, framing: Framing, reusable: bool) -> ResponseBody {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::new()),
            Framing::UntilClose => State::UntilClose,
        };
        ResponseBody {
            conn: Some(conn),
            state,
            reusable,
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
                State::Length(remaining) if !conn.buf.is_empty() => {
                    let take = usize::try_from(*remaining)
                        .map_or(conn.buf.len(), |r| r.min(conn.buf.len()));
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        this.state = State::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split_to(take).freeze()))));
                }
                State::Chunked(decoder) if !conn.buf.is_empty() => {
                    match decoder.decode(&mut conn.buf) {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Decoded::End) => {
                            this.state = State::Done;
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(error) => return this.fail(error.into()),
                    }
                }
                State::UntilClose if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                _ => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::Truncated),
                Ok(_) => {}
                Err(error) => return this.fail(error.into()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }
}
