//! What one connection is doing, for its watchdog (`server::Conn::supervise`):
//! requests in flight and since when it has had none, requests the client
//! cancelled (rapid reset), and HTTP/2 answers waiting for the client to
//! take them. Counters only: it decides nothing, the watchdog does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::snapshot::Timeouts;

/// A client may cancel this many requests on a connection (HTTP/2: reset
/// their streams before the answer) before it is judged by its share of
/// cancelled requests.
const FREE_CANCELS: u64 = 64;

/// Requests in flight on one connection, and since when it has had none.
pub(super) struct Activity {
    pub(super) started: Instant,
    in_flight: AtomicUsize,
    /// Requests whose handler was dropped before it answered.
    cancelled: AtomicU64,
    /// Milliseconds after `started` when the last request finished.
    idle_since_ms: AtomicU64,
    served: AtomicU64,
    first_done: AtomicBool,
    /// Woken when the first request has finished.
    pub(super) quiet: Notify,
    /// HTTP/2 answers that handed data on and wait to be asked for more:
    /// how many began to wait at each millisecond after `started`. Each
    /// answer is judged by its own wait: a client that reads one stream
    /// does not excuse another it never opens a window for.
    waiting: Mutex<BTreeMap<u64, u32>>,
    /// `timeouts.send`, in milliseconds (small: every connection holds it).
    send_ms: u32,
    /// Milliseconds after `started` when the watchdog looks next.
    pub(super) watch_ms: AtomicU64,
    /// The task of an HTTP/1.1 request body waiting for its client, woken
    /// when the port runs out of slots (`server::slots`).
    pub(super) body_waker: AtomicWaker,
    /// The watchdog asks to be woken (`quiet`) when the last request in
    /// flight ends: the port ran out of slots while it was busy.
    pub(super) wake_when_idle: AtomicBool,
}

impl Activity {
    pub(super) fn new(send: Duration) -> Activity {
        Activity {
            started: crate::timer::clock::now(),
            in_flight: AtomicUsize::new(0),
            cancelled: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicU64::new(0),
            first_done: AtomicBool::new(false),
            quiet: Notify::new(),
            waiting: Mutex::new(BTreeMap::new()),
            send_ms: u32::try_from(send.as_millis()).unwrap_or(u32::MAX),
            watch_ms: AtomicU64::new(0),
            body_waker: AtomicWaker::new(),
            wake_when_idle: AtomicBool::new(false),
        }
    }

    /// It has not begun a request yet, and was accepted less than `grace`
    /// ago.
    pub(super) fn is_new(&self, grace: Duration) -> bool {
        self.served.load(Ordering::Acquire) == 0 && self.started.elapsed() < grace
    }

    /// No request in flight.
    pub(super) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// An answer begins to wait for the client; returns since when, for
    /// [`Activity::answer_taken`]. The watchdog, if it sleeps past when
    /// that wait may end the connection, looks again.
    pub(super) fn answer_waits(&self) -> u64 {
        let now = self.elapsed_ms();
        *self.waits().entry(now).or_insert(0) += 1;
        let send = u64::from(self.send_ms);
        if self.watch_ms.load(Ordering::Acquire) > now.saturating_add(send) {
            self.quiet.notify_one();
        }
        now
    }

    /// An answer that waited `since` has been asked for more (the client
    /// took part of it), or ended.
    pub(super) fn answer_taken(&self, since: u64) {
        let mut waits = self.waits();
        if let Some(count) = waits.get_mut(&since) {
            *count -= 1;
            if *count == 0 {
                waits.remove(&since);
            }
        }
    }

    fn waits(&self) -> MutexGuard<'_, BTreeMap<u64, u32>> {
        // Counts stay meaningful after a panic elsewhere.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn elapsed_ms(&self) -> u64 {
        let elapsed = crate::timer::clock::now().saturating_duration_since(self.started);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// An answer has waited for the client for `send`: the client has
    /// taken nothing of it since.
    pub(super) fn send_stalled(&self, send: Duration) -> bool {
        let oldest = self.waits().keys().next().copied();
        oldest.is_some_and(|since| self.started.elapsed() >= Duration::from_millis(since) + send)
    }

    /// Rapid reset on accepted streams (CVE-2023-44487): h2 only counts
    /// resets of streams not yet handed to the gateway, and each stream
    /// reset later has already cost a request upstream. A connection whose
    /// cancelled requests pass [`FREE_CANCELS`] and outnumber its answered
    /// ones is closed.
    pub(super) fn resets_abusive(&self) -> bool {
        let cancelled = self.cancelled.load(Ordering::Acquire);
        let served = self.served.load(Ordering::Acquire);
        cancelled > FREE_CANCELS && cancelled > served.saturating_sub(cancelled)
    }

    /// Since when it has had no request in flight; `None` while it has one.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)))
    }

    /// When the connection may be closed if nothing happens until then.
    pub(super) fn deadline(&self, timeouts: Timeouts) -> Instant {
        let now = crate::timer::clock::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Looks at answers waiting for the client every half `send`.
            return now + timeouts.idle.min(timeouts.send / 2);
        }
        let since =
            self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        if self.served.load(Ordering::Acquire) == 0 {
            since + timeouts.header_read
        } else {
            since + timeouts.idle
        }
    }
}

/// Counts a request as in flight until its response body is dropped.
/// Dropped before [`InFlight::answered`], the request counts as cancelled.
pub(super) struct InFlight {
    pub(super) activity: Arc<Activity>,
    answered: bool,
}

impl InFlight {
    pub(super) fn begin(activity: &Arc<Activity>) -> InFlight {
        InFlight::counting(activity).0
    }

    /// [`InFlight::begin`], and how many other requests the connection
    /// had in flight.
    pub(super) fn counting(activity: &Arc<Activity>) -> (InFlight, usize) {
        let others = activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.served.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight {
            activity: activity.clone(),
            answered: false,
        };
        (guard, others)
    }

    /// Counts an HTTP/2 tunnel (RFC 8441) as a request in flight while it
    /// is open: its connection is not idle, and keeps its slot.
    pub(super) fn tunnel(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            activity: activity.clone(),
            answered: true,
        }
    }

    /// The handler has answered; the guard now goes with the body.
    pub(super) fn answered(mut self) -> InFlight {
        self.answered = true;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        if !self.answered {
            activity.cancelled.fetch_add(1, Ordering::AcqRel);
            if activity.resets_abusive() {
                // The watchdog looks, and closes the connection.
                activity.quiet.notify_one();
            }
        }
        activity
            .idle_since_ms
            .store(activity.elapsed_ms(), Ordering::Release);
        let left = activity.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        // Deadlines only move later, except once: from `header_read` before
        // the first request to `idle` after it. Re-arm the timer then only,
        // and when the watchdog asked to see the connection idle.
        let asked = left == 0
            && activity.wake_when_idle.load(Ordering::Relaxed)
            && activity.wake_when_idle.swap(false, Ordering::AcqRel);
        if !activity.first_done.swap(true, Ordering::AcqRel) || asked {
            activity.quiet.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(served: u64, cancelled: u64) -> bool {
        let activity = Activity::new(Duration::from_secs(30));
        activity.served.store(served, Ordering::Release);
        activity.cancelled.store(cancelled, Ordering::Release);
        activity.resets_abusive()
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_waiting_for_the_client_past_send_is_a_stall() {
        let send = Duration::from_secs(30);
        let activity = Activity::new(send);
        assert!(!activity.send_stalled(send));
        let since = activity.answer_waits();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!activity.send_stalled(send));
        // The client takes part of it: the clock starts again.
        activity.answer_taken(since);
        let since = activity.answer_waits();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!activity.send_stalled(send));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(activity.send_stalled(send));
        // Nothing waits: nothing stalls.
        activity.answer_taken(since);
        assert!(!activity.send_stalled(send));
    }

    /// Each answer is judged by its own wait: answers the client takes on
    /// other streams do not excuse one it never opens a window for.
    #[tokio::test(start_paused = true)]
    async fn an_answer_left_waiting_stalls_however_busy_the_other_streams_are() {
        let send = Duration::from_secs(30);
        let activity = Activity::new(send);
        let _forgotten = activity.answer_waits();
        for _ in 0..40 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let since = activity.answer_waits();
            activity.answer_taken(since);
        }
        assert!(activity.send_stalled(send));
    }

    #[test]
    fn a_connection_is_judged_by_its_share_of_cancelled_requests() {
        // A few cancellations are anyone's right.
        assert!(!after(64, 64));
        // A busy connection that cancels some of its requests is served.
        assert!(!after(1_000, 300));
        assert!(!after(200, 100));
        // One that cancels more than it lets finish is not.
        assert!(after(65, 65));
        assert!(after(200, 101));
    }
}
