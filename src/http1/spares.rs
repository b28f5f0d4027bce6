//! Header maps and extension maps used again on the thread that wrote
//! their messages out.
//!
//! Every request head and every upstream response head parsed needs a
//! `HeaderMap` (two allocations), and each is dropped as soon as its head
//! has been encoded for the next hop; an upstream answer whose fields pass
//! as sent carries them in its `Extensions` (two allocations more). Those
//! maps come back here, cleared, for the next heads the thread parses: no
//! allocation, and memory that is still in the cache. A thread keeps a
//! few, of moderate size only.

use std::cell::RefCell;
use std::thread::LocalKey;

use http::{Extensions, HeaderMap};

/// Spare maps a thread keeps at most.
const SPARES: usize = 16;

/// Maps that grew beyond this many fields (a head with very many) are
/// freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 48;

/// Extensions that held more than this many values are freed rather
/// than kept.
const MAX_KEPT_EXTENSIONS: usize = 4;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static SPARE_EXTENSIONS: RefCell<Vec<Extensions>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `fields` fields: a spare one if the thread
/// has one.
pub fn take(fields: usize) -> HeaderMap {
    if let Some(mut map) = pop(&SPARE) {
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
    push(&SPARE, map);
}

/// Empty extensions: spare ones (with their memory) if the thread has.
pub fn take_extensions() -> Extensions {
    pop(&SPARE_EXTENSIONS).unwrap_or_default()
}

/// Takes back the extensions of a message written out: cleared and kept
/// for [`take_extensions`] if they hold anything (empty ones may have no
/// memory to keep), and of moderate size.
pub fn give_back_extensions(mut extensions: Extensions) {
    if extensions.is_empty() || extensions.len() > MAX_KEPT_EXTENSIONS {
        return;
    }
    extensions.clear();
    push(&SPARE_EXTENSIONS, extensions);
}

fn pop<T: 'static>(spares: &'static LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    // `try_with`: during the thread's exit the spares may be gone already.
    spares
        .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
        .ok()
        .flatten()
}

fn push<T: 'static>(spares: &'static LocalKey<RefCell<Vec<T>>>, item: T) {
    let _ = spares.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut() {
            if spare.len() < SPARES {
                spare.push(item);
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
    fn extensions_given_back_come_back_empty_unless_they_had_nothing() {
        give_back_extensions(Extensions::new());
        let spare_extensions = || SPARE_EXTENSIONS.with(|spare| spare.borrow().len());
        assert_eq!(spare_extensions(), 0);
        let mut extensions = take_extensions();
        extensions.insert(7u32);
        give_back_extensions(extensions);
        assert_eq!(spare_extensions(), 1);
        let again = take_extensions();
        assert!(again.is_empty() && again.get::<u32>().is_none());
        assert_eq!(spare_extensions(), 0);
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
