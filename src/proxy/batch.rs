//! Requests that become ready together go to their upstreams together.
//!
//! Under load a listener thread finds many client requests ready in one
//! turn of its event loop. Written to the upstream each as soon as it is
//! processed, the writes are spread over the turn: each can wake the
//! upstream for one request, and the woken upstream takes the CPU from
//! this thread before the next is written. So a request about to go
//! upstream while others of its thread are on their way first lets the
//! thread's other ready tasks run (one yield to the runtime): the requests
//! then leave back to back, and the upstream reads several per wake-up.
//! With proxy, upstream and load sharing two cores, that took about 1 µs
//! of CPU per request off the upstream and as much off the gateway
//! (bench/README.md). A lone request goes at once.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// Requests of this thread between [`enter`] and their response head.
    /// A hint, not an account: a request that moved threads (a
    /// multi-threaded runtime) decrements another thread's count, which
    /// saturates at zero; the listener threads' tasks never move.
    static ON_THEIR_WAY: Cell<usize> = const { Cell::new(0) };
}

/// A request on its way to the upstream, counted until dropped.
pub struct OnItsWay(());

impl Drop for OnItsWay {
    fn drop(&mut self) {
        ON_THEIR_WAY.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Counts the request as on its way; when others of this thread are too,
/// returns only once the thread's other ready tasks have run.
pub async fn enter() -> OnItsWay {
    let others = ON_THEIR_WAY.with(|n| {
        let others = n.get();
        n.set(others.saturating_add(1));
        others
    });
    let on_its_way = OnItsWay(());
    if others > 0 {
        BehindTheReady(false).await;
    }
    on_its_way
}

/// Pending once, queued again at once behind the tasks already ready:
/// unlike `tokio::task::yield_now`, which holds the task back until the
/// runtime has polled its I/O driver again (one more `epoll_wait` per
/// turn, and the request written a turn later).
struct BehindTheReady(bool);

impl Future for BehindTheReady {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Requests of this thread on their way (for tests).
#[cfg(test)]
fn on_their_way() -> usize {
    ON_THEIR_WAY.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::FutureExt;

    use super::*;

    /// A task made ready on this thread, and whether it has run.
    fn ready_task() -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
        let ran = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let ran = ran.clone();
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        });
        (ran, task)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_request_goes_at_once_and_is_counted_until_dropped() {
        let (ran, other) = ready_task();
        let first = enter().await;
        // Nothing else was on its way: no yield, the spawned task has not run.
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(on_their_way(), 1);
        drop(first);
        assert_eq!(on_their_way(), 0);
        other.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_behind_another_lets_the_ready_tasks_run_first() {
        let first = enter().await;
        let (ran, other) = ready_task();
        let second = enter().await;
        assert_eq!(ran.load(Ordering::SeqCst), 1, "the ready task ran before");
        assert_eq!(on_their_way(), 2);
        drop((first, second));
        assert_eq!(on_their_way(), 0);
        other.await.unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_behind_another_goes_before_the_next_poll_of_the_io_driver() {
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut writer, reader) = tokio::net::UnixStream::pair().unwrap();
        let request = tokio::spawn({
            let order = order.clone();
            async move {
                // A task waiting for I/O, registered before its data comes.
                let waiting = tokio::spawn({
                    let order = order.clone();
                    async move {
                        reader.readable().await.unwrap();
                        order.lock().unwrap().push("woken by I/O");
                    }
                });
                tokio::task::yield_now().await;
                tokio::io::AsyncWriteExt::write_all(&mut writer, b"x")
                    .await
                    .unwrap();
                // The data is there; only a poll of the driver would tell.
                let first = enter().await;
                let second = enter().await;
                order.lock().unwrap().push("request");
                drop((first, second));
                waiting.await.unwrap();
            }
        });
        request.await.unwrap();
        assert_eq!(*order.lock().unwrap(), ["request", "woken by I/O"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_request_dropped_while_it_waits_is_no_longer_counted() {
        let first = enter().await;
        // Polled once (counted, then yielding), then dropped.
        assert!(enter().now_or_never().is_none());
        assert_eq!(on_their_way(), 1);
        drop(first);
        assert_eq!(on_their_way(), 0);
    }
}
