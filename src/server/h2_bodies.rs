//! The bodies of HTTP/2 exchanges as the gateway sees them: a client's
//! request body whose every silence is bounded by `timeouts.body_read`
//! and whose every failure is the client's [`BodyFault`], and an answer
//! that keeps its request counted in flight, tells the connection's
//! watchdog when it waits for the client (`timeouts.send`), and shares
//! a room of its connection's ([`SEND_ROOM`]) with the other answers.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use std::sync::Arc;

use tokio::time::Instant;

use super::activity::InFlight;
use super::slots::{Pace, Slots, PRESSED_SILENCE};
use crate::proxy::room::{Room, Taken};
use crate::proxy::{Body, BodyFault, BoxError};
use crate::timer::Deadline;

/// What the answers of one HTTP/2 connection may hold in all ahead of
/// its socket. Each stream may hold up to the send buffer (128 KiB) once
/// the client's window has room, so a client that opens its windows wide
/// on every stream and reads nothing would otherwise pin 256 of them
/// (32 MiB) per connection.
pub(super) const SEND_ROOM: usize = 4 << 20;

/// Data handed on to HTTP/2, and what it holds of its connection's
/// answers' room until the last of its bytes is dropped.
struct Held {
    data: Bytes,
    _taken: Taken,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// An HTTP/2 response body that keeps its request counted as in flight,
/// tells the connection's watchdog when it waits for the client to take
/// what it handed on (HTTP/2 asks for more only once the client's
/// flow-control window has room), and asks its body for more only while
/// the room its connection's answers share ahead of the socket
/// ([`SEND_ROOM`]) has some left: overdrawn by at most one read (16 KiB
/// from an HTTP/1.1 upstream) per stream.
pub(super) struct Tracked {
    body: Body,
    guard: InFlight,
    /// Its place among the port's `limits.max_streams`, if it took one.
    _stream: Option<Taken>,
    room: Room,
    /// Data was handed on; the body waits to be asked for more, since
    /// then (milliseconds into the connection).
    waiting: Option<u64>,
}

impl Tracked {
    pub(super) fn new(
        body: Body,
        (guard, stream): (InFlight, Option<Taken>),
        room: Room,
    ) -> Tracked {
        Tracked {
            body,
            guard,
            _stream: stream,
            room,
            waiting: None,
        }
    }

    fn stop_waiting(&mut self) {
        if let Some(since) = self.waiting.take() {
            self.guard.activity.answer_taken(since);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.room.poll_room(cx).is_pending() {
            // The connection's answers wait for the client to take what
            // they handed on: this one's wait goes on (or begins).
            if this.waiting.is_none() {
                this.waiting = Some(this.guard.activity.answer_waits());
            }
            return Poll::Pending;
        }
        this.stop_waiting();
        let mut polled = Pin::new(&mut this.body).poll_frame(cx);
        // The last data frame waits too: HTTP/2 holds it until the client's
        // window has room, and drops this body only once it is sent.
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(data) = frame.data_mut() {
                let mut taken = Taken::from(Some(this.room.clone()));
                taken.take(data.len().min(SEND_ROOM));
                let data_held = Held {
                    data: std::mem::take(data),
                    _taken: taken,
                };
                *data = Bytes::from_owner(data_held);
                this.waiting = Some(this.guard.activity.answer_waits());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An HTTP/2 request body: each silence of the client while more is due
/// bounded by `timeouts.body_read` — by [`PRESSED_SILENCE`] while the
/// port has no free slot, as for HTTP/1.1, so that a few clients
/// trickling bodies cannot keep out a client that has a request — every
/// failure the client's [`BodyFault`].
pub(super) struct H2Body {
    inner: Incoming,
    wait: Duration,
    slots: Arc<Slots>,
    /// Armed while the body waits for the client: since when it waits,
    /// and when it looks again (at the latest every [`PRESSED_SILENCE`]:
    /// the port may run out of slots meanwhile).
    waiting: Option<(Instant, Deadline)>,
    failed: Option<BodyFault>,
    /// Its pace, once it is read for.
    pace: Option<Pace>,
}

impl H2Body {
    pub(super) fn new(inner: Incoming, wait: Duration, slots: Arc<Slots>) -> H2Body {
        H2Body {
            inner,
            wait,
            slots,
            waiting: None,
            failed: None,
            pace: None,
        }
    }

    /// Ends the body as failed by its client: counted, then [`H2Body::end`].
    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        crate::metrics::client_error(fault.cause());
        self.end(fault)
    }

    /// Ends the body with `fault`, each later poll too.
    fn end(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.failed = Some(fault);
        self.waiting = None;
        Poll::Ready(Some(Err(Box::new(fault))))
    }

    /// When a silence that began at `since` is looked at next: at its end,
    /// or within [`PRESSED_SILENCE`] while that end is further away.
    fn next_look(&self, since: Instant, now: Instant) -> Instant {
        let allowed = self.slots.pressure().body_silence(self.wait);
        (since + allowed).min(now + PRESSED_SILENCE)
    }
}

/// Whether a request body's error is the stream's reset by this side
/// (hyper's, when the answer failed), not by the client or for a
/// protocol error of the client's (h2's own).
fn reset_here(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.is_reset() && !h2.is_remote() && !h2.is_library();
        }
        source = cause.source();
    }
    false
}

impl HttpBody for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(fault) = this.failed {
            return Poll::Ready(Some(Err(Box::new(fault))));
        }
        let pace = this.pace.get_or_insert_with(Pace::start);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = None;
                let read = frame.data_ref().map_or(0, |data| data.len() as u64);
                if pace.too_slow_after(read, this.slots.pressure()) {
                    return this.fail(BodyFault::Stalled);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) if reset_here(&error) => {
                // The gateway reset the stream itself (its answer failed,
                // and that is counted where it failed): no fault of the
                // client's.
                tracing::debug!(%error, "HTTP/2 request body ended by the gateway's reset");
                this.end(BodyFault::Truncated)
            }
            Poll::Ready(Some(Err(error))) => {
                // A reset stream, or a body longer or shorter than its
                // `content-length` (RFC 9113 §8.1.1).
                tracing::debug!(%error, "HTTP/2 request body failed");
                this.fail(BodyFault::Truncated)
            }
            Poll::Ready(None) => {
                this.waiting = None;
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                let now = Instant::now();
                let first_look = this.next_look(now, now);
                let (since, deadline) = this
                    .waiting
                    .get_or_insert_with(|| (now, Deadline::at(first_look)));
                ready!(Pin::new(&mut *deadline).poll(cx));
                let since = *since;
                let now = Instant::now();
                let allowed = this.slots.pressure().body_silence(this.wait);
                if now.saturating_duration_since(since) >= allowed {
                    return this.fail(BodyFault::Stalled);
                }
                let next = this.next_look(since, now);
                if let Some((_, deadline)) = &mut this.waiting {
                    *deadline = Deadline::at(next);
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
