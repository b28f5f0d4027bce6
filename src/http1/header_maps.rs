//! Header maps used again on the thread that wrote them out.
//!
//! Every request head and every upstream response head parsed needs a
//! `HeaderMap` (two allocations), and each is dropped as soon as its head
//! has been encoded for the next hop. Those maps come back here, cleared,
//! for the next heads the thread parses: no allocation, and memory that
//! is still in the cache. A thread keeps a few, of moderate size only.

use std::cell::RefCell;

use http::HeaderMap;

/// Spare maps a thread keeps at most.
const SPARES: usize = 16;

/// Maps that grew beyond this many fields (a head with very many) are
/// freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `fields` fields: a spare one if the thread
/// has one.
pub fn take(fields: usize) -> HeaderMap {
    // `try_with`: during the thread's exit the spares may be gone already.
    let spare = SPARE
        .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten();
    if let Some(mut map) = spare {
        if map.try_reserve(fields).is_ok() {
            return map;
        }
    }
    HeaderMap::with_capacity(fields)
}

/// Takes back a map whose fields have been written on: cleared (its
/// fields dropped) and kept for [`take`], unless the thread has enough.
pub fn give_back(mut map: HeaderMap) {
    if map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    let _ = SPARE.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARES {
                spare.push(map);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderValue, ACCEPT, HOST};

    fn spares() -> usize {
        SPARE.with(|spare| spare.borrow().len())
    }

    #[test]
    fn a_map_given_back_comes_back_empty_with_its_memory() {
        let mut map = take(4);
        map.insert(HOST, HeaderValue::from_static("a.example"));
        map.append(ACCEPT, HeaderValue::from_static("*/*"));
        map.append(ACCEPT, HeaderValue::from_static("text/html"));
        let capacity = map.capacity();
        give_back(map);
        assert_eq!(spares(), 1);
        let again = take(2);
        assert_eq!(spares(), 0);
        assert!(again.is_empty());
        assert_eq!(again.keys_len(), 0);
        assert_eq!(again.capacity(), capacity);
        assert!(again.get(ACCEPT).is_none());
    }

    #[test]
    fn a_spare_too_small_grows_to_the_room_asked() {
        give_back(HeaderMap::with_capacity(2));
        let map = take(40);
        assert!(map.capacity() >= 40);
    }

    #[test]
    fn large_maps_and_maps_beyond_the_spares_are_freed() {
        give_back(HeaderMap::with_capacity(MAX_KEPT_CAPACITY * 2));
        assert_eq!(spares(), 0);
        for _ in 0..SPARES + 5 {
            give_back(HeaderMap::with_capacity(8));
        }
        assert_eq!(spares(), SPARES);
    }
}
