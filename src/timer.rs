//! Deadlines of the data path: the wait for a request head, each silence
//! of a client's request body, each write a client takes nothing of, and
//! the wait for an upstream's answer. Nearly all of them are cancelled, microseconds to
//! milliseconds after they were set, and almost none fire.
//!
//! On a listener thread they are slots in one slab that a single task of
//! that thread watches (see [`drive_on_this_thread`]): setting a deadline
//! is an insert, cancelling it a remove, and the task sleeps until the
//! earliest deadline it saw, rescanning when a nearer one arrives. A tokio
//! timer per deadline costs about twice the instructions, and registering
//! one makes tokio's time driver wake its own thread's I/O driver (a system
//! call) on a good share of requests. Elsewhere (the admin port, tests), a
//! [`Deadline`] is a plain tokio sleep. The silence timer of a response
//! body (`proxy::client::body`) stays a tokio sleep: it exists only while
//! more of a body is awaited, and progress moves it later, which tokio does
//! without registering it again.

pub mod clock;

use std::cell::RefCell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::time::{Instant, Sleep};

/// The deadlines of one listener thread.
struct Queue {
    slots: Mutex<Slots>,
    /// Set, and the watcher woken, when a deadline nearer than the one it
    /// sleeps for was added.
    rescan: AtomicBool,
    watcher: AtomicWaker,
}

struct Slots {
    pending: Slab<Slot>,
    /// When the watcher looks next (`None`: when woken).
    next_look: Option<Instant>,
}

/// A slot belongs to its [`Deadline`] until that is dropped; the watcher
/// only marks it fired.
struct Slot {
    when: Instant,
    waker: Option<Waker>,
    fired: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Every critical section leaves the slab consistent, even if a
        // waker panicked in it.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fires what is due; returns the earliest deadline still pending.
    fn fire_due(&self, woken: &mut Vec<Waker>) -> Option<Instant> {
        let mut slots = self.lock();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (_, slot) in slots.pending.iter_mut().filter(|(_, slot)| !slot.fired) {
            if slot.when <= now {
                slot.fired = true;
                woken.extend(slot.waker.take());
            } else {
                next = Some(next.map_or(slot.when, |next| next.min(slot.when)));
            }
        }
        slots.next_look = next;
        next
    }
}

thread_local! {
    static THREAD_QUEUE: RefCell<Option<Arc<Queue>>> = const { RefCell::new(None) };
}

/// Gives this thread its own deadlines and returns the task that fires
/// them; the caller spawns it on this thread's runtime.
pub fn drive_on_this_thread() -> impl Future<Output = ()> + Send + 'static {
    let queue = Arc::new(Queue {
        slots: Mutex::new(Slots {
            pending: Slab::new(),
            next_look: None,
        }),
        rescan: AtomicBool::new(false),
        watcher: AtomicWaker::new(),
    });
    THREAD_QUEUE.with(|own| *own.borrow_mut() = Some(queue.clone()));
    async move {
        let mut sleep = pin!(tokio::time::sleep_until(Instant::now()));
        let mut woken = Vec::new();
        loop {
            let next = queue.fire_due(&mut woken);
            woken.drain(..).for_each(Waker::wake);
            if let Some(next) = next {
                sleep.as_mut().reset(next);
            }
            std::future::poll_fn(|cx| {
                queue.watcher.register(cx.waker());
                if queue.rescan.swap(false, Ordering::AcqRel) {
                    return Poll::Ready(());
                }
                match next {
                    Some(_) => sleep.as_mut().poll(cx),
                    None => Poll::Pending,
                }
            })
            .await;
        }
    }
}

/// A future that resolves at `when`.
pub struct Deadline {
    when: Instant,
    state: State,
}

enum State {
    /// Not yet polled, on a thread with deadlines of its own.
    Unset(Arc<Queue>),
    Set {
        queue: Arc<Queue>,
        key: usize,
    },
    Tokio(Pin<Box<Sleep>>),
}

impl Deadline {
    pub fn at(when: Instant) -> Deadline {
        let queue = THREAD_QUEUE.with(|own| own.borrow().clone());
        let state = match queue {
            Some(queue) => State::Unset(queue),
            None => State::Tokio(Box::pin(tokio::time::sleep_until(when))),
        };
        Deadline { when, state }
    }

    pub fn after(duration: Duration) -> Deadline {
        Deadline::at(clock::now() + duration)
    }

    /// When it fires.
    pub fn when(&self) -> Instant {
        self.when
    }
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Tokio(sleep) => sleep.as_mut().poll(cx),
            State::Set { queue, key } => {
                let mut slots = queue.lock();
                let Some(slot) = slots.pending.get_mut(*key) else {
                    // Unreachable: the slot is removed only by our drop.
                    return Poll::Ready(());
                };
                if slot.fired {
                    return Poll::Ready(());
                }
                match &slot.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => slot.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            State::Unset(queue) => {
                // A deadline already past is registered all the same: it
                // is the nearest, so the watcher fires it at once.
                let queue = queue.clone();
                let mut slots = queue.lock();
                let key = slots.pending.insert(Slot {
                    when: this.when,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                });
                let nearer = slots.next_look.is_none_or(|look| this.when < look);
                if nearer {
                    slots.next_look = Some(this.when);
                }
                drop(slots);
                if nearer {
                    queue.rescan.store(true, Ordering::Release);
                    queue.watcher.wake();
                }
                this.state = State::Set { queue, key };
                Poll::Pending
            }
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let State::Set { queue, key } = &self.state {
            queue.lock().pending.try_remove(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    }

    /// A current-thread runtime with a paused clock and this thread's
    /// queue driven, as on a listener thread.
    fn on_a_listener_thread<F: Future>(test: F) -> F::Output {
        paused_runtime().block_on(async {
            tokio::spawn(drive_on_this_thread());
            test.await
        })
    }

    #[test]
    fn a_deadline_fires_at_its_time_and_not_before() {
        on_a_listener_thread(async {
            let started = Instant::now();
            let deadline = Deadline::after(Duration::from_millis(300));
            assert!(matches!(deadline.state, State::Unset(_)));
            deadline.await;
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(300), "{waited:?}");
            assert!(waited < Duration::from_millis(310), "{waited:?}");
        });
    }

    #[test]
    fn a_nearer_deadline_wakes_the_watcher_sleeping_for_a_later_one() {
        on_a_listener_thread(async {
            let mut later = Deadline::after(Duration::from_secs(30));
            assert!((&mut later).now_or_never().is_none());
            // The watcher now sleeps until the 30 s deadline.
            tokio::task::yield_now().await;
            let started = Instant::now();
            Deadline::after(Duration::from_millis(100)).await;
            let waited = started.elapsed();
            assert!(waited < Duration::from_millis(110), "{waited:?}");
            later.await;
            assert!(started.elapsed() >= Duration::from_millis(29_900));
        });
    }

    #[test]
    fn cancelled_deadlines_leave_the_queue_and_later_ones_still_fire() {
        on_a_listener_thread(async {
            let queue = THREAD_QUEUE
                .with(|own| own.borrow().clone())
                .expect("queue");
            let pending = || queue.lock().pending.len();
            for _ in 0..1000 {
                let mut deadline = Deadline::after(Duration::from_secs(30));
                // Registered on its first poll, removed when dropped.
                assert!((&mut deadline).now_or_never().is_none());
                assert_eq!(pending(), 1);
            }
            assert_eq!(pending(), 0);
            // Keys freed by fired deadlines are reused without confusion.
            for round in 0..3 {
                let first = Deadline::after(Duration::from_millis(10));
                let second = Deadline::after(Duration::from_millis(20 + round));
                first.await;
                drop(Deadline::after(Duration::from_millis(5)));
                second.await;
            }
            assert_eq!(pending(), 0);
        });
    }

    #[test]
    fn without_a_queue_a_deadline_is_a_tokio_sleep() {
        paused_runtime().block_on(async {
            let deadline = Deadline::after(Duration::from_millis(100));
            assert!(matches!(deadline.state, State::Tokio(_)));
            let started = Instant::now();
            deadline.await;
            assert!(started.elapsed() >= Duration::from_millis(100));
        });
    }
}
