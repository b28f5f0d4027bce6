//! One listener thread's connection to Redis, replaced when it stops
//! answering.
//!
//! redis-rs reconnects a connection that reports an error, but a call the
//! store gives up on at `throttling.timeout` reports nothing, and neither
//! does a socket whose peer is gone without a word: after a host crash, a
//! failover that moves the address, a partition or a load balancer that
//! forgets the flow, the connection stays open and silent until the
//! kernel gives up on it (minutes), and every call on it fails meanwhile.
//! So the link counts the calls that fail in a row (no answer in time, an
//! I/O error): after [`FAILURES`], a new connection is made beside the
//! silent one, which serves until the new one has connected (within the
//! connect timeout) and then is dropped. At most one replacement is under
//! way per link, and each waits a backoff after the one before (from
//! [`FIRST_BACKOFF`], doubling, at most [`MAX_BACKOFF`]; back to the
//! first once a call is answered): a Redis that is down costs each thread
//! one connection attempt a second, not one per request.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};

/// Calls failed in a row after which a connection is replaced.
const FAILURES: u32 = 3;
/// The least time between two replacements of one link's connection.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The most: what a Redis that stays down costs a thread.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

pub struct Link {
    client: Client,
    state: Mutex<State>,
}

struct State {
    connection: ConnectionManager,
    streak: Streak,
}

/// A connection as a call took it, to tell the link how the call went.
pub struct Taken {
    pub connection: ConnectionManager,
    number: u64,
}

impl Link {
    /// A link whose first connection is made on its first call.
    pub fn open(client: Client) -> RedisResult<Link> {
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config())?;
        Ok(Link {
            client,
            state: Mutex::new(State {
                connection,
                streak: Streak::default(),
            }),
        })
    }

    /// The connection calls use now.
    pub fn take(&self) -> Taken {
        let state = self.lock();
        Taken {
            connection: state.connection.clone(),
            number: state.streak.number,
        }
    }

    /// Notes that a call on `taken` was answered (an error Redis sent is
    /// an answer too).
    pub fn answered(&self, taken: &Taken) {
        self.lock().streak.answered(taken.number);
    }

    /// Notes that a call on `taken` got no answer; the failure that
    /// condemns the connection starts its replacement (on this thread's
    /// runtime, as the connection itself runs).
    pub fn failed(self: &Arc<Self>, taken: &Taken) {
        let replace = self.lock().streak.failed(taken.number, Instant::now());
        if replace {
            tokio::spawn(Arc::clone(self).replace());
        }
    }

    /// Connects anew and puts the new connection in use, or, when that
    /// fails, leaves the old one for the next failure after the backoff.
    /// Bounded by the connect timeout and retry of [`config`].
    async fn replace(self: Arc<Self>) {
        let made = ConnectionManager::new_with_config(self.client.clone(), config()).await;
        let mut state = self.lock();
        let failures = state.streak.failures;
        match made {
            Ok(connection) => {
                state.connection = connection;
                state.streak.replaced(true, Instant::now());
                drop(state);
                crate::metrics::get().throttle_store_reconnects.inc();
                tracing::warn!(
                    failures,
                    "throttle store: a Redis connection stopped answering; replaced by a new one"
                );
            }
            Err(error) => {
                state.streak.replaced(false, Instant::now());
                drop(state);
                tracing::debug!(%error, "throttle store: no new Redis connection yet");
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a connection is made: a connection attempt longer than a call may
/// take would be given up anyway; failed ones are retried by the next
/// call (redis-rs reconnects after an error it sees) or replacement. An
/// answer has no timeout of redis-rs's own (its default, 500 ms, would
/// cut `throttling.timeout` short): each call is bounded by that setting.
fn config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(None)
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(100))
}

/// How the calls on a link's connection went, and whether it is due for
/// a replacement.
#[derive(Debug, Default)]
struct Streak {
    /// Which connection is in use: bumped by each replacement, so that a
    /// call on an earlier one counts on nothing.
    number: u64,
    /// Calls on it failed in a row.
    failures: u32,
    /// A replacement is under way.
    replacing: bool,
    /// When the last replacement ended.
    last: Option<Instant>,
    /// Replacements since a call was last answered.
    tries: u32,
}

impl Streak {
    fn answered(&mut self, number: u64) {
        if number == self.number {
            self.failures = 0;
            self.tries = 0;
        }
    }

    /// Counts a failed call; whether a replacement starts now.
    fn failed(&mut self, number: u64, now: Instant) -> bool {
        if number != self.number {
            return false;
        }
        self.failures = self.failures.saturating_add(1);
        let waited = self
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.backoff());
        if self.failures < FAILURES || self.replacing || !waited {
            return false;
        }
        self.replacing = true;
        true
    }

    /// The replacement ended, with a new connection in use when `made`.
    fn replaced(&mut self, made: bool, now: Instant) {
        self.replacing = false;
        self.last = Some(now);
        self.tries = self.tries.saturating_add(1);
        if made {
            self.number += 1;
            self.failures = 0;
        }
    }

    /// The wait after the last replacement before the next may start.
    fn backoff(&self) -> Duration {
        let doublings = self.tries.saturating_sub(1).min(4);
        (FIRST_BACKOFF * (1 << doublings)).min(MAX_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_replaced_after_failures_in_a_row_only() {
        let now = Instant::now();
        let mut streak = Streak::default();
        assert!(!streak.failed(0, now));
        assert!(!streak.failed(0, now));
        // An answer between failures: they are not in a row.
        streak.answered(0);
        assert!(!streak.failed(0, now));
        assert!(!streak.failed(0, now));
        assert!(streak.failed(0, now));
        // One replacement at a time, however many calls fail meanwhile.
        assert!(!streak.failed(0, now));
        streak.replaced(true, now);
        // Calls taken on the old connection count on nothing.
        assert!(!streak.failed(0, now));
        assert!(!streak.failed(0, now));
        assert!(!streak.failed(0, now));
        assert_eq!(streak.failures, 0);
    }

    #[test]
    fn replacements_wait_a_backoff_that_an_answer_resets() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut streak = Streak::default();
        for _ in 0..2 {
            assert!(!streak.failed(0, at(0)));
        }
        assert!(streak.failed(0, at(0)));
        // The new connection could not be made: the old one stays, and
        // the next failure replaces it once the backoff has passed.
        streak.replaced(false, at(0));
        assert!(!streak.failed(0, at(99)));
        assert!(streak.failed(0, at(100)));
        streak.replaced(false, at(100));
        assert!(!streak.failed(0, at(299)));
        assert!(streak.failed(0, at(300)));
        // Doubling stops at a second.
        for _ in 0..5 {
            streak.replaced(false, at(300));
        }
        assert!(!streak.failed(0, at(1299)));
        assert!(streak.failed(0, at(1300)));
        streak.replaced(true, at(1300));
        // The new connection answers: the backoff starts over.
        streak.answered(1);
        for _ in 0..2 {
            assert!(!streak.failed(1, at(1400)));
        }
        assert!(streak.failed(1, at(1400)));
    }
}
