//! The connection slots of a port (`limits.max_connections`), and what the
//! port does when they run out: it raises *pressure*, and its connections
//! that only make others wait give their slot back.
//!
//! Under pressure (as nginx closes its idle keep-alive connections when it
//! runs out of them, and Envoy's overload manager shortens timeouts):
//! - a connection with no request in flight closes at once (it owes
//!   nothing: its client has no request to lose);
//! - a request body whose client has been silent for [`PRESSED_SILENCE`]
//!   (or `timeouts.body_read`, if shorter) fails as stalled, and is
//!   answered 408;
//! - so does one read for at least [`PRESSED_SILENCE`] at less than
//!   [`PRESSED_MIN_RATE`] on average: a byte now and then is no way to keep
//!   a slot ("slow POST").
//!
//! So four clients trickling bodies into four slots no longer make a fifth
//! wait for `timeouts.body_read`. Pressure falls as soon as a slot is free.
//! Clients that send at a pace, and answers being written, are never cut
//! by it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::proxy::room::{Room, Taken};
use crate::proxy::tunnel::TunnelSlots;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, AcquireError, Notify, OwnedSemaphorePermit, Semaphore};

/// The longest a request body may be silent while its connection's port
/// has no free slot.
pub const PRESSED_SILENCE: Duration = Duration::from_secs(1);

/// The least a request body must average, in bytes a second, once it has
/// been read for [`PRESSED_SILENCE`], while its port has no free slot (a
/// phone on a poor mobile link sends many times this).
pub const PRESSED_MIN_RATE: u64 = 1024;

/// The slots of one port, shared by all its sockets and threads.
pub struct Slots {
    permits: Arc<Semaphore>,
    count: usize,
    pressure: Pressure,
    /// The port's WebSocket tunnels (`limits.max_tunnels`); each also
    /// holds its connection's slot.
    pub(super) tunnels: TunnelSlots,
    /// The port's HTTP/2 requests in flight beyond each connection's first
    /// (`limits.max_streams`): one HTTP/2 connection forwards up to 256
    /// requests at once, each on an upstream connection of its own, where
    /// an HTTP/1.1 connection forwards one.
    pub(super) streams: Room,
    /// The port stops serving: its parked connections close.
    stopping: AtomicBool,
    /// Wakes the port's parked connections (`server::Conn::parked`) when
    /// pressure rises or the port stops.
    parked: Notify,
}

/// Whether the port has run out of slots; each raise wakes every
/// connection's watchdog.
pub(super) struct Pressure {
    high: AtomicBool,
    raised: watch::Sender<u64>,
    /// Accepts waiting for a slot (one per thread of the port at most):
    /// pressure stays high until the last of them has one, and it is
    /// raised and lowered under this lock, so that one thread's slot never
    /// lowers it while another thread still waits.
    waiting: Mutex<usize>,
}

impl Slots {
    pub(super) fn new(count: usize, tunnels: usize, streams: usize) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(count)),
            count,
            tunnels: TunnelSlots::new(tunnels),
            streams: Room::new(streams),
            pressure: Pressure {
                high: AtomicBool::new(false),
                raised: watch::Sender::new(0),
                waiting: Mutex::new(0),
            },
            stopping: AtomicBool::new(false),
            parked: Notify::new(),
        }
    }

    /// A place among the port's `limits.max_streams` for an HTTP/2 request
    /// whose connection has `others` in flight: its first needs none (it
    /// is taken as an HTTP/1.1 connection's is). `None` when none is left:
    /// the request is refused before it is forwarded.
    pub(super) fn stream(&self, others: usize) -> Option<Taken> {
        let mut taken = Taken::from((others > 0).then(|| self.streams.clone()));
        taken.try_take(1).then_some(taken)
    }

    /// A slot for a new connection. When there is none, pressure is raised
    /// until every accept waiting for one (each thread of the port has its
    /// own) has one.
    pub(super) async fn acquire(&self) -> Result<OwnedSemaphorePermit, AcquireError> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        // Lowers pressure when the last waiter leaves, with a slot or not
        // (its accept loop gone).
        let _waiting = self.pressure.wait();
        self.parked.notify_waiters();
        self.permits.clone().acquire_owned().await
    }

    /// The slots no connection holds.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        self.permits.available_permits()
    }

    /// Accepts fail for want of file descriptors: pressure is raised for
    /// `pause`, so that the connections that only make others wait give
    /// theirs, as when the port is out of slots.
    pub(super) async fn short_of_descriptors(&self, pause: std::time::Duration) {
        let _waiting = self.pressure.wait();
        self.parked.notify_waiters();
        tokio::time::sleep(pause).await;
    }

    /// Waits until every slot is back: every connection has ended.
    pub(super) async fn all_free(&self) {
        let all = u32::try_from(self.count).unwrap_or(u32::MAX);
        let _ = self.permits.acquire_many(all).await;
    }

    pub(super) fn pressure(&self) -> &Pressure {
        &self.pressure
    }

    /// The port stops serving: its parked connections are woken to close.
    pub(super) fn stop_parked(&self) {
        self.stopping.store(true, Ordering::Release);
        self.parked.notify_waiters();
    }

    /// A wake-up for a parked connection: it must be enabled before the
    /// connection looks at [`Slots::parked_must_close`], so that nothing
    /// raised in between goes unseen.
    pub(super) fn parked_wake(&self) -> Notified<'_> {
        self.parked.notified()
    }

    /// Whether a parked connection is to close: the port stops, or has no
    /// free slot.
    pub(super) fn parked_must_close(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || self.pressure.is_high()
    }
}

impl Pressure {
    /// One more accept waits for a slot: pressure is raised (again).
    fn wait(&self) -> Waiting<'_> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        *waiting += 1;
        if !self.high.swap(true, Ordering::AcqRel) {
            tracing::debug!("no free connection slot: idle and stalled connections give theirs");
        }
        self.raised
            .send_modify(|raises| *raises = raises.wrapping_add(1));
        Waiting(self)
    }

    pub(super) fn is_high(&self) -> bool {
        self.high.load(Ordering::Acquire)
    }

    /// Changes each time pressure is raised.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.raised.subscribe()
    }

    /// How long a request body may be silent now.
    pub(super) fn body_silence(&self, body_read: Duration) -> Duration {
        if self.is_high() {
            body_read.min(PRESSED_SILENCE)
        } else {
            body_read
        }
    }
}

/// A request body's pace: since when it has been read for, and the bytes
/// read since, judged under pressure (see [`PRESSED_MIN_RATE`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    since: Instant,
    bytes: u64,
}

impl Pace {
    pub(super) fn start() -> Pace {
        Pace {
            since: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `read` more bytes; whether the body is now too slow to keep
    /// its slot under `pressure`.
    pub(super) fn too_slow_after(&mut self, read: u64, pressure: &Pressure) -> bool {
        self.bytes += read;
        if !pressure.is_high() {
            return false;
        }
        let read_for = Instant::now().saturating_duration_since(self.since);
        read_for >= PRESSED_SILENCE
            && u128::from(self.bytes) * 1000 < u128::from(PRESSED_MIN_RATE) * read_for.as_millis()
    }
}

/// An accept waiting for a slot; the last to leave lowers pressure.
struct Waiting<'a>(&'a Pressure);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let pressure = self.0;
        let mut waiting = pressure
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *waiting = waiting.saturating_sub(1);
        if *waiting == 0 {
            pressure.high.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_first_stream_is_taken_and_the_others_share_the_ports() {
        let slots = Slots::new(8, 1, 1);
        let first = slots.stream(0).expect("a connection's first");
        let second = slots.stream(1).expect("the port's one");
        assert!(slots.stream(2).is_none(), "none left");
        let others_first = slots.stream(0).expect("another's first, always");
        drop(second);
        let again = slots.stream(1).expect("given back when it ended");
        assert!(slots.stream(1).is_none());
        drop((first, others_first, again));
    }

    #[tokio::test]
    async fn pressure_rises_while_a_connection_waits_for_a_slot_and_falls_when_it_has_one() {
        let slots = Arc::new(Slots::new(1, 1, 1));
        let mut raised = slots.pressure().subscribe();
        let held = slots.acquire().await.unwrap();
        assert!(!slots.pressure().is_high(), "a free slot raises nothing");
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.map(drop) }
        });
        raised.changed().await.unwrap();
        assert!(slots.pressure().is_high());
        assert_eq!(
            slots.pressure().body_silence(Duration::from_secs(30)),
            PRESSED_SILENCE
        );
        assert_eq!(
            slots.pressure().body_silence(Duration::from_millis(200)),
            Duration::from_millis(200),
            "a shorter configured silence stays"
        );
        drop(held);
        waiting.await.unwrap().unwrap();
        assert!(!slots.pressure().is_high());
        assert_eq!(
            slots.pressure().body_silence(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[tokio::test]
    async fn pressure_stays_while_another_thread_still_waits_for_a_slot() {
        let slots = Arc::new(Slots::new(1, 1, 1));
        let mut raised = slots.pressure().subscribe();
        let held = slots.acquire().await.unwrap();
        let (got_first, mut first) = tokio::sync::mpsc::unbounded_channel();
        let waiter = |got: tokio::sync::mpsc::UnboundedSender<OwnedSemaphorePermit>| {
            let slots = slots.clone();
            tokio::spawn(async move {
                let permit = slots.acquire().await.unwrap();
                let _ = got.send(permit);
            })
        };
        let one = waiter(got_first.clone());
        raised.changed().await.unwrap();
        let other = waiter(got_first);
        raised.changed().await.unwrap();
        // One of them gets the freed slot; the other still waits.
        drop(held);
        let permit = first.recv().await.unwrap();
        assert!(slots.pressure().is_high(), "another accept still waits");
        drop(permit);
        let last = first.recv().await.unwrap();
        one.await.unwrap();
        other.await.unwrap();
        assert!(!slots.pressure().is_high(), "nobody waits any more");
        drop(last);
    }

    #[tokio::test]
    async fn an_accept_given_up_while_waiting_lowers_pressure_when_it_was_the_last() {
        let slots = Arc::new(Slots::new(1, 1, 1));
        let mut raised = slots.pressure().subscribe();
        let _held = slots.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.map(drop) }
        });
        raised.changed().await.unwrap();
        assert!(slots.pressure().is_high());
        waiting.abort();
        let _ = waiting.await;
        assert!(!slots.pressure().is_high());
    }
}
