//! A budget of bytes the exchanges of one connection share, so that what
//! a client can make the gateway hold is bounded per connection, not per
//! stream: the request bodies an HTTP/2 connection's streams make it hold
//! whole, and the answers its streams hand on ahead of the socket. Counted
//! in requests, the same budget bounds the HTTP/2 requests a port has in
//! flight (`limits.max_streams`).
//!
//! Bytes are [`Taken`] from a [`Room`] and given back when the `Taken`
//! is dropped. A taker either refuses what does not fit
//! ([`Taken::try_take`]) or takes what it must and waits, before taking
//! more, until some room is left ([`Room::poll_room`]): the room is then
//! overdrawn by at most one piece per taker.

use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// A number of bytes shared by the exchanges of one connection.
#[derive(Clone)]
pub struct Room(Arc<State>);

struct State {
    /// What is left; below 0 when overdrawn.
    left: AtomicIsize,
    /// Takers waiting for some room, woken when some comes back.
    waiting: Mutex<Vec<Waker>>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("left", &self.0.left.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// `bytes` as a count of the room (a piece larger than a room counts as
/// the largest one).
fn signed(bytes: usize) -> isize {
    isize::try_from(bytes).unwrap_or(isize::MAX)
}

impl Room {
    pub fn new(bytes: usize) -> Room {
        Room(Arc::new(State {
            left: AtomicIsize::new(signed(bytes)),
            waiting: Mutex::new(Vec::new()),
        }))
    }

    /// Ready while some room is left; if none is, `cx` is woken when some
    /// comes back.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.left.load(Ordering::Acquire) > 0 {
            return Poll::Ready(());
        }
        let mut waiting = self.waiting();
        if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
            waiting.push(cx.waker().clone());
        }
        // Room given back before the waker was kept woke nobody: look again.
        if self.0.left.load(Ordering::Acquire) > 0 {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn give_back(&self, bytes: isize) {
        let before = self.0.left.fetch_add(bytes, Ordering::AcqRel);
        if before <= 0 && before + bytes > 0 {
            std::mem::take(&mut *self.waiting())
                .into_iter()
                .for_each(Waker::wake);
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Vec<Waker>> {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Bytes taken from a room (none without one), given back when dropped.
pub struct Taken {
    room: Option<Room>,
    bytes: isize,
}

impl Taken {
    /// Nothing taken yet from `room`.
    pub fn from(room: Option<Room>) -> Taken {
        Taken { room, bytes: 0 }
    }

    /// Takes `more` bytes if the room has that many left; `false` (and
    /// nothing taken) if not. Without a room, always.
    pub fn try_take(&mut self, more: usize) -> bool {
        let Some(room) = &self.room else {
            return true;
        };
        let more = signed(more);
        let taken = room
            .0
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left >= more).then(|| left - more)
            });
        if taken.is_ok() {
            self.bytes += more;
        }
        taken.is_ok()
    }

    /// Takes `more` bytes whatever is left (the room may go below none:
    /// a taker looks for room first, [`Room::poll_room`]).
    pub fn take(&mut self, more: usize) {
        if let Some(room) = &self.room {
            let more = signed(more);
            room.0.left.fetch_sub(more, Ordering::AcqRel);
            self.bytes += more;
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(room) = &self.room {
            room.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_taken_comes_back_when_dropped() {
        let room = Room::new(10);
        let mut first = Taken::from(Some(room.clone()));
        assert!(first.try_take(6));
        let mut second = Taken::from(Some(room.clone()));
        assert!(!second.try_take(5), "4 left");
        assert!(second.try_take(4));
        drop(first);
        assert!(Taken::from(Some(room.clone())).try_take(6));
        assert!(Taken::from(None).try_take(usize::MAX), "no room, no bound");
    }

    #[test]
    fn an_overdrawn_room_wakes_its_waiters_when_some_comes_back() {
        let room = Room::new(4);
        let mut big = Taken::from(Some(room.clone()));
        big.take(10);
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let waker = Waker::from(Arc::new(Flag(woken.clone())));
        let mut cx = Context::from_waker(&waker);
        assert!(room.poll_room(&mut cx).is_pending());
        drop(big);
        assert!(woken.load(Ordering::SeqCst));
        assert!(room.poll_room(&mut cx).is_ready());
    }
}
