//! `upstream.max_requests`: the requests an API's upstream has in flight
//! from this gateway, bounded (Envoy's circuit breaker, `max_requests`).
//! Past the bound a request is refused at once, before it is forwarded:
//! an upstream that slows down then holds that many of the gateway's
//! connections, not all of them, and the other APIs keep being served.
//!
//! A request counts from the moment it is forwarded until its answer's
//! body has ended (or the exchange failed). The count of an API, by name
//! and version, outlives a reload: the requests still in flight on the
//! snapshot before it count against the bound the new one sets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

/// An API's bound, and the count it shares with every compiled API of
/// the same name and version.
#[derive(Debug)]
pub struct UpstreamBound {
    max: usize,
    in_flight: Arc<AtomicUsize>,
}

/// An API's name and version.
type ApiKey = (String, String);

/// The counts of the APIs compiled and still alive, by name and version.
static COUNTS: LazyLock<Mutex<HashMap<ApiKey, Weak<AtomicUsize>>>> = LazyLock::new(Mutex::default);

impl UpstreamBound {
    /// At most `max` requests to the upstream of API `name` `version`.
    pub fn of(name: &str, version: &str, max: usize) -> UpstreamBound {
        let mut counts = COUNTS.lock().unwrap_or_else(PoisonError::into_inner);
        counts.retain(|_, count| count.strong_count() > 0);
        let key = (name.to_owned(), version.to_owned());
        let in_flight = match counts.get(&key).and_then(Weak::upgrade) {
            Some(shared) => shared,
            None => {
                let fresh = Arc::new(AtomicUsize::new(0));
                counts.insert(key, Arc::downgrade(&fresh));
                fresh
            }
        };
        UpstreamBound { max, in_flight }
    }

    /// A place for one more request, if the bound leaves one.
    pub fn try_take(&self) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(Arc::clone(&self.in_flight)))
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// One request in flight to a bounded upstream, given back when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_nothing_is_taken_until_one_is_given_back() {
        let bound = UpstreamBound::of("Bounded", "1", 2);
        let first = bound.try_take().expect("one");
        let second = bound.try_take().expect("two");
        assert!(bound.try_take().is_none());
        drop(first);
        let third = bound.try_take().expect("given back");
        drop((second, third));
    }

    #[test]
    fn the_count_of_an_api_outlives_its_compiled_copy() {
        let before = UpstreamBound::of("Reloaded", "1", 1);
        let held = before.try_take().expect("one");
        // A reload compiles the API again, while a request is in flight.
        let after = UpstreamBound::of("Reloaded", "1", 1);
        drop(before);
        assert!(after.try_take().is_none(), "the old request still counts");
        drop(held);
        assert!(after.try_take().is_some());
        // Another version counts apart.
        let other = UpstreamBound::of("Reloaded", "2", 1);
        assert!(other.try_take().is_some());
    }
}
