//! The generic cell rate algorithm (GCRA), in microseconds. A key keeps
//! one number, its theoretical arrival time (TAT). A policy of `limit`
//! requests per `per` admits one request every `interval` = per / limit,
//! with a burst of up to `limit`: a request is admitted when, once counted,
//! the TAT is at most `period` = limit × interval ahead of now. A key whose
//! TAT has passed is the same as no key, so entries expire on their own.
//!
//! The same arithmetic runs in the memory store and, as Lua, in Redis
//! (`redis.rs`); both report each key's `level` (TAT − now after the
//! decision) and [`quota`] turns it into what the client is told.

use std::time::Duration;

pub use crate::config::snapshot::Rate;

impl Rate {
    /// Whether one more request fits on a key whose TAT is `base` (at
    /// least `now`).
    pub fn fits(self, base: u64, now: u64) -> bool {
        base + self.interval - now <= self.period
    }

    /// One request on a key whose TAT is `tat` (0: none): the new TAT if
    /// it fits, else the key's level (TAT − now).
    pub fn step(self, tat: u64, now: u64) -> Result<u64, u64> {
        let base = tat.max(now);
        if self.fits(base, now) {
            Ok(base + self.interval)
        } else {
            Err(base - now)
        }
    }
}

/// What a policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Requests that would still be admitted now.
    pub remaining: u64,
    /// Until more quota is available (the RateLimit `t`: "until
    /// additional quota is made available"): the next request's room, or
    /// nothing when the quota is whole.
    pub reset: Duration,
    /// Until a request would fit, when this policy refused it.
    pub retry_after: Option<Duration>,
}

/// The quota of a key whose TAT is `level` µs ahead of now, after a request
/// that was `admitted` (and counted) or not.
pub fn quota(rate: Rate, admitted: bool, level: u64) -> Quota {
    let room = rate.period.saturating_sub(level);
    let refused_here = !admitted && level + rate.interval > rate.period;
    Quota {
        remaining: if refused_here {
            0
        } else {
            room / rate.interval
        },
        // A unit comes back each `interval`: the next one when the room
        // reaches the next multiple of it (at once when it is whole).
        reset: Duration::from_micros(level.min(rate.interval - room % rate.interval)),
        retry_after: refused_here
            .then(|| Duration::from_micros(level + rate.interval - rate.period)),
    }
}

/// Whole seconds, rounded up: a client told 0 would retry at once.
pub fn seconds_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the algorithm on one key as the memory store does.
    fn admit(tat: &mut u64, now: u64, rate: Rate) -> Quota {
        let base = (*tat).max(now);
        if rate.fits(base, now) {
            *tat = base + rate.interval;
            quota(rate, true, *tat - now)
        } else {
            quota(rate, false, base - now)
        }
    }

    #[test]
    fn a_burst_of_limit_then_one_per_interval() {
        let rate = Rate::of(3, Duration::from_secs(3));
        assert_eq!(rate.interval, 1_000_000);
        let mut tat = 0;
        let now = 10_000_000;
        let remaining: Vec<u64> = (0..3)
            .map(|_| admit(&mut tat, now, rate).remaining)
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = admit(&mut tat, now, rate);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refused.remaining, 0);
        // More quota in one interval, as `Retry-After` says.
        assert_eq!(refused.reset, Duration::from_secs(1));
        // One interval later, exactly one more.
        let later = now + 1_000_000;
        assert!(admit(&mut tat, later, rate).retry_after.is_none());
        assert!(admit(&mut tat, later, rate).retry_after.is_some());
    }

    #[test]
    fn an_idle_key_is_a_full_bucket() {
        let rate = Rate::of(2, Duration::from_secs(1));
        let mut tat = 0;
        admit(&mut tat, 1_000, rate);
        admit(&mut tat, 1_000, rate);
        let back = admit(&mut tat, 5_000_000, rate);
        assert_eq!(back.remaining, 1);
        assert_eq!(back.reset, Duration::from_millis(500));
        // Nothing counted: the quota is whole, no more to come.
        assert_eq!(quota(rate, true, 0).reset, Duration::ZERO);
        // Part of the way to the next request's room: the rest of it.
        let part = quota(rate, true, 300_000);
        assert_eq!(
            (part.remaining, part.reset),
            (1, Duration::from_millis(300))
        );
        let deep = quota(rate, true, 900_000);
        assert_eq!(
            (deep.remaining, deep.reset),
            (0, Duration::from_millis(400))
        );
    }

    #[test]
    fn rounding_never_admits_more_than_the_limit() {
        // 5 µs / 4 would round to 1 µs and admit 5 at once.
        let rate = Rate::of(4, Duration::from_micros(5));
        let mut tat = 0;
        let admitted = (0..10)
            .filter(|_| admit(&mut tat, 100, rate).retry_after.is_none())
            .count();
        assert_eq!(admitted, 4);
    }

    /// Over a long run a policy admits its limit per period, never more:
    /// 600,000 per second is one request every 2 µs (1⅔ rounded up), not
    /// every 1 µs (rounded down: a million a second).
    #[test]
    fn a_high_limit_is_never_exceeded_over_time() {
        let rate = Rate::of(600_000, Duration::from_secs(1));
        let mut tat = 0;
        let mut admitted = 0u64;
        // Two requests a microsecond for two seconds.
        for now in 1..=2_000_000 {
            for _ in 0..2 {
                if admit(&mut tat, now, rate).retry_after.is_none() {
                    admitted += 1;
                }
            }
        }
        // Two seconds' worth and one burst, at most; the interval rounded
        // up to 2 µs admits fewer (500,000 a second after the burst).
        assert!(admitted <= 3 * 600_000, "{admitted}");
        assert!(admitted >= 600_000 + 2 * 500_000 - 1, "{admitted}");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_up(Duration::from_secs(2)), 2);
        assert_eq!(seconds_up(Duration::ZERO), 0);
    }
}
