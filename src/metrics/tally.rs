//! Counts each thread keeps until the series show them. A request used to
//! add to series every thread shares: each addition a locked instruction
//! on a cache line the other cores were writing too, a dozen times per
//! request. Now a thread adds to a tally of its own, under a lock no other
//! thread takes except to fold the tally into the series: when metrics are
//! rendered, and when the tally's owner goes away. Whenever the series are
//! read they are exact.

use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use thread_local::ThreadLocal;

/// An owner of tallies, which it folds into its series.
pub trait Fold: Send + Sync {
    fn fold(&self);
}

/// One thread's tally, on cache lines of its own: the threads' tallies sit
/// side by side in memory.
#[repr(align(128))]
struct Padded<T>(Mutex<T>);

/// A tally per thread.
pub struct PerThread<T: Send> {
    tallies: ThreadLocal<Padded<T>>,
}

impl<T: Send + Default> PerThread<T> {
    pub fn new() -> PerThread<T> {
        PerThread {
            tallies: ThreadLocal::new(),
        }
    }

    /// This thread's tally.
    pub fn mine(&self) -> MutexGuard<'_, T> {
        lock(&self.tallies.get_or(|| Padded(Mutex::new(T::default()))).0)
    }

    /// Runs `fold` on every thread's tally, each under its lock.
    pub fn each(&self, mut fold: impl FnMut(&mut T)) {
        for tally in self.tallies.iter() {
            fold(&mut lock(&tally.0));
        }
    }
}

impl<T: Send + Default> Default for PerThread<T> {
    fn default() -> Self {
        PerThread::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The owners of tallies alive now, folded before metrics are rendered.
static LIVE: LazyLock<Mutex<Vec<Weak<dyn Fold>>>> = LazyLock::new(Mutex::default);

/// Folds `owner`'s tallies whenever metrics are rendered, as long as it
/// lives (it folds them itself when it goes).
pub fn register(owner: Weak<dyn Fold>) {
    let mut live = lock(&LIVE);
    live.retain(|owner| owner.strong_count() > 0);
    live.push(owner);
}

/// Folds the tallies of every owner alive.
pub fn fold_all() {
    // Upgraded first, folded after: an owner dropped meanwhile folds in
    // its own `Drop`, which must not find the list locked.
    let live: Vec<Arc<dyn Fold>> = lock(&LIVE).iter().filter_map(Weak::upgrade).collect();
    for owner in live {
        owner.fold();
    }
}
