//! The authorization server's wall clock in Unix seconds (codes, tokens
//! and keys expire by it): the system clock, plus an offset that only
//! grows. A test moves a server's clock forward to expire what it issued
//! instead of sleeping; nothing else does, so in service it is the system
//! clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The system clock in Unix seconds (0 before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A server's clock; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Seconds added to the system clock.
    ahead: Arc<AtomicU64>,
}

impl Clock {
    pub fn unix_now(&self) -> u64 {
        unix_now().saturating_add(self.ahead.load(Ordering::Acquire))
    }

    /// Moves this clock `by` forward (whole seconds, rounded up).
    pub fn advance(&self, by: Duration) {
        let seconds = by.as_secs() + u64::from(by.subsec_nanos() > 0);
        self.ahead.fetch_add(seconds, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_is_ahead_of_the_system_by_whole_seconds() {
        let clock = Clock::default();
        let shared = clock.clone();
        shared.advance(Duration::from_millis(1500));
        let ahead = clock.unix_now() - unix_now();
        assert!((2..=3).contains(&ahead), "{ahead}");
    }
}
