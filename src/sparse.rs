//! Saying a failure that may repeat with every request once in a while.

use std::time::Duration;

/// One line per [`Sparse::EVERY`] for a failure that may repeat with
/// every request (a store or an identity provider that is down): the
/// metric counts each, the log says it once in a while, with how many it
/// did not write.
#[derive(Debug, Default)]
pub struct Sparse {
    /// When a line was last written, in microseconds after `epoch`
    /// (0: never).
    last: std::sync::atomic::AtomicU64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl Sparse {
    const EVERY: Duration = Duration::from_secs(10);

    pub const fn new() -> Sparse {
        Sparse {
            last: std::sync::atomic::AtomicU64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a line is due now; then how many were not written since
    /// the last one.
    pub fn due(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        static EPOCH: std::sync::LazyLock<std::time::Instant> =
            std::sync::LazyLock::new(std::time::Instant::now);
        // Starts above 0, so that the first failure is always due.
        let now = 1 + u64::try_from(EPOCH.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        let every = u64::try_from(Self::EVERY.as_micros()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= every;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Sparse;

    #[test]
    fn the_first_failure_is_written_and_the_next_ones_are_counted() {
        let sparse = Sparse::new();
        assert_eq!(sparse.due(), Some(0));
        assert_eq!(sparse.due(), None);
        assert_eq!(sparse.due(), None);
        // Not due before the interval; what was held back is counted.
        assert_eq!(
            sparse.suppressed.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }
}
