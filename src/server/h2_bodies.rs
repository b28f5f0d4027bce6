//! The bodies of HTTP/2 exchanges as the gateway sees them: a client's
//! request body whose every silence is bounded by `timeouts.body_read`
//! and whose every failure is the client's [`BodyFault`], and an answer
//! that keeps its request counted in flight, tells the connection's
//! watchdog when it waits for the client (`timeouts.send`), and shares
//! the connection's [`SendRoom`] with the other answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;

use std::sync::Arc;

use tokio::time::Instant;

use super::activity::InFlight;
use super::slots::{Slots, PRESSED_SILENCE};
use crate::proxy::{Body, BodyFault, BoxError};
use crate::timer::Deadline;

/// What the answers of one HTTP/2 connection may hold in all ahead of
/// its socket. Each stream may hold up to the send buffer (128 KiB) once
/// the client's window has room, so a client that opens its windows wide
/// on every stream and reads nothing would otherwise pin 256 of them
/// (32 MiB) per connection.
pub(super) const SEND_ROOM: usize = 4 << 20;

/// The room the answers of one HTTP/2 connection share ahead of its
/// socket ([`SEND_ROOM`]): data handed on takes its length from it until
/// HTTP/2 has written it out (or dropped it). An answer is asked for more
/// only while some room is left, so it is overdrawn by at most one read
/// (16 KiB from an HTTP/1.1 upstream) per stream.
#[derive(Clone)]
pub(super) struct SendRoom(Arc<RoomState>);

struct RoomState {
    left: AtomicIsize,
    /// The answers waiting for room, woken when some comes back.
    waiting: Mutex<Vec<Waker>>,
}

impl SendRoom {
    pub(super) fn new(bytes: usize) -> SendRoom {
        SendRoom(Arc::new(RoomState {
            left: AtomicIsize::new(isize::try_from(bytes).unwrap_or(isize::MAX)),
            waiting: Mutex::new(Vec::new()),
        }))
    }

    /// Whether some room is left; if not, `cx` is woken when some comes
    /// back.
    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.left.load(Ordering::Acquire) > 0 {
            return Poll::Ready(());
        }
        let mut waiting = self
            .0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        // Room given back before the waker was kept wakes nobody: look again.
        if self.0.left.load(Ordering::Acquire) > 0 {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// `data`, holding its length of the room until the last of its
    /// bytes is dropped.
    fn hold(&self, data: Bytes) -> Bytes {
        let taken = isize::try_from(data.len().min(SEND_ROOM)).unwrap_or(isize::MAX);
        self.0.left.fetch_sub(taken, Ordering::AcqRel);
        Bytes::from_owner(Held {
            data,
            taken,
            room: self.clone(),
        })
    }

    fn give_back(&self, taken: isize) {
        let before = self.0.left.fetch_add(taken, Ordering::AcqRel);
        if before <= 0 && before + taken > 0 {
            let woken = std::mem::take(
                &mut *self
                    .0
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            woken.into_iter().for_each(Waker::wake);
        }
    }
}

/// Data handed on to HTTP/2, and what it holds of its connection's room.
struct Held {
    data: Bytes,
    taken: isize,
    room: SendRoom,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.room.give_back(self.taken);
    }
}

/// An HTTP/2 response body that keeps its request counted as in flight,
/// tells the connection's watchdog when it waits for the client to take
/// what it handed on (HTTP/2 asks for more only once the client's
/// flow-control window has room), and asks its body for more only while
/// the connection's [`SendRoom`] has some left.
pub(super) struct Tracked {
    body: Body,
    guard: InFlight,
    room: SendRoom,
    /// Data was handed on; the body waits to be asked for more, since
    /// then (milliseconds into the connection).
    waiting: Option<u64>,
}

impl Tracked {
    pub(super) fn new(body: Body, guard: InFlight, room: SendRoom) -> Tracked {
        Tracked {
            body,
            guard,
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
                *data = this.room.hold(std::mem::take(data));
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
}

impl H2Body {
    pub(super) fn new(inner: Incoming, wait: Duration, slots: Arc<Slots>) -> H2Body {
        H2Body {
            inner,
            wait,
            slots,
            waiting: None,
            failed: None,
        }
    }

    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        crate::metrics::client_error(fault.cause());
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = None;
                Poll::Ready(Some(Ok(frame)))
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
