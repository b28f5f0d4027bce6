//! The data path's monotonic clock, read once each time a connection's task
//! is polled rather than at each place that asks for the time.
//!
//! A request reads the time at least nine times (its start for the access
//! log, the connection's activity, the throttle, the upstream's latency,
//! the pool's idle ages, the deadlines, its end): each read is a vDSO call
//! and a conversion, about 3% of the gateway's user time under load. Within
//! one poll of a connection task they are microseconds apart, so the task
//! reads the clock once as it is polled ([`polled`]) and everything it runs
//! in that poll takes that reading ([`now`]), as nginx reads the time once
//! per turn of its event loop. A reading is never older than the poll it
//! was taken for; outside a connection task (other tasks, other threads,
//! tests) [`now`] is the clock itself.

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;

use tokio::time::Instant;

thread_local! {
    /// The reading of the poll under way on this thread, if any.
    static READING: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time: the reading of the connection task being polled, else the
/// clock's.
#[inline]
pub fn now() -> Instant {
    READING.with(Cell::get).unwrap_or_else(Instant::now)
}

/// `now()` as a `std` instant.
#[inline]
pub fn now_std() -> std::time::Instant {
    now().into_std()
}

/// Runs `task`, reading the clock once at each of its polls for what that
/// poll runs.
pub async fn polled<F: Future>(task: F) -> F::Output {
    let mut task = pin!(task);
    std::future::poll_fn(|cx| {
        let _reading = Reading::take();
        task.as_mut().poll(cx)
    })
    .await
}

/// The reading of one poll, in place until the poll returns (the one of
/// an enclosing poll is put back then).
struct Reading(Option<Instant>);

impl Reading {
    fn take() -> Reading {
        Reading(READING.with(|reading| reading.replace(Some(Instant::now()))))
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        READING.with(|reading| reading.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Lets `time` pass without leaving the poll (awaiting a sleep would).
    fn pass(time: Duration) {
        let until = std::time::Instant::now() + time;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }

    #[tokio::test]
    async fn a_poll_takes_one_reading_and_the_next_poll_a_new_one() {
        let outside = now();
        let (first, second) = polled(async {
            let first = now();
            pass(Duration::from_millis(5));
            assert_eq!(now(), first, "one reading for the whole poll");
            tokio::task::yield_now().await;
            (first, now())
        })
        .await;
        assert!(first >= outside);
        assert!(
            second >= first + Duration::from_millis(5),
            "the next poll reads the clock again"
        );
        // Outside a poll, the clock itself.
        let before = Instant::now();
        pass(Duration::from_millis(2));
        assert!(now() >= before + Duration::from_millis(2));
    }

    #[tokio::test]
    async fn a_nested_poll_puts_the_outer_reading_back() {
        polled(async {
            let outer = now();
            pass(Duration::from_millis(2));
            let inner = polled(async { now() }).await;
            assert!(inner > outer);
            assert_eq!(now(), outer);
        })
        .await;
    }
}
