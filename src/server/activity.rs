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

/// A connection's budget of cancelled requests (HTTP/2: streams reset
/// before their answer, each of which may already have cost a request
/// upstream), a token bucket: this many at once, as h2 allows resets of
/// streams not yet accepted (`max_pending_accept_reset_streams`)...
const CANCEL_BURST: u64 = 64;

/// ...and one more each 125 ms, 8 a second. A browser leaving a page, or a
/// gRPC client whose deadlines pass, cancels a few now and then; a flood
/// cancels hundreds a second. The answered requests do not refill it: the
/// client chooses how many of those it sends.
const CANCEL_REFILL_MS: u64 = 125;

/// [`Activity::cancels_full_ms`] once the budget is spent.
const CANCELS_SPENT: u64 = u64::MAX;

/// Requests in flight on one connection, and since when it has had none.
pub(super) struct Activity {
    pub(super) started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `started` when the budget of cancelled requests
    /// (those whose handler was dropped before it answered) is whole
    /// again: each cancel moves it [`CANCEL_REFILL_MS`] later, from now at
    /// the earliest; [`CANCELS_SPENT`] once a cancel would have moved it
    /// more than the burst's worth ahead of now.
    cancels_full_ms: AtomicU64,
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
            cancels_full_ms: AtomicU64::new(0),
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
    /// reset later has already cost a request upstream. A connection that
    /// cancelled requests faster than its budget allows ([`CANCEL_BURST`],
    /// refilled one each [`CANCEL_REFILL_MS`]) is closed, however many it
    /// let finish.
    pub(super) fn resets_abusive(&self) -> bool {
        self.cancels_full_ms.load(Ordering::Acquire) == CANCELS_SPENT
    }

    /// A request was cancelled: takes one from the budget. Only a
    /// cancelled request pays for this, never an answered one.
    fn cancel(&self) {
        let now = self.elapsed_ms();
        let most = now.saturating_add(CANCEL_BURST * CANCEL_REFILL_MS);
        let take = |full: u64| match full {
            CANCELS_SPENT => None,
            full => {
                let next = full.max(now).saturating_add(CANCEL_REFILL_MS);
                Some(if next > most { CANCELS_SPENT } else { next })
            }
        };
        let _ = self
            .cancels_full_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, take);
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
            activity.cancel();
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

    /// Cancels `n` requests of `activity`, `apart` from each other.
    async fn cancel(activity: &Activity, n: u32, apart: Duration) {
        for _ in 0..n {
            tokio::time::advance(apart).await;
            activity.cancel();
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_cancels_is_anyones_right_one_more_is_not() {
        let activity = Activity::new(Duration::from_secs(30));
        cancel(&activity, 64, Duration::ZERO).await;
        assert!(!activity.resets_abusive());
        cancel(&activity, 1, Duration::ZERO).await;
        assert!(activity.resets_abusive());
        // Spent stays spent: the watchdog closes the connection.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(activity.resets_abusive());
    }

    #[tokio::test(start_paused = true)]
    async fn cancels_are_judged_by_their_rate_not_by_the_answered_requests() {
        // A client that cancels a few now and then is served for ever.
        let activity = Activity::new(Duration::from_secs(30));
        cancel(&activity, 10_000, Duration::from_millis(130)).await;
        assert!(!activity.resets_abusive());
        // A whole burst after each quiet spell long enough to refill it.
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(8)).await;
            cancel(&activity, 64, Duration::ZERO).await;
        }
        assert!(!activity.resets_abusive());
        // Hundreds a second are a flood, whatever else the client sends:
        // answered requests neither take from the budget nor refill it.
        let flood = Arc::new(Activity::new(Duration::from_secs(30)));
        let mut cancelled = 0;
        while !flood.resets_abusive() && cancelled < 1_000 {
            tokio::time::advance(Duration::from_millis(5)).await;
            drop(InFlight::begin(&flood).answered());
            drop(InFlight::begin(&flood));
            cancelled += 1;
        }
        assert_eq!(cancelled, 67, "64, and one more each 125 ms");
    }
}
