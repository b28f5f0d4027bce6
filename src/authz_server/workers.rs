//! The authorization server's blocking work (Argon2 checks of passwords and
//! client secrets, store calls) on tokio's blocking threads, a bounded
//! number of jobs at once (half the cores). Argon2 is made to cost CPU;
//! without a bound, one endpoint hammered with password grants would take
//! every core from the data path. Jobs beyond the bound wait for a permit
//! without holding a thread; a job's permit is released when it returns,
//! even if its caller has gone. The wait is bounded too: at most
//! [`MAX_WAITING`] jobs wait at once, each at most [`MAX_WAIT`]; beyond
//! that a job is refused as [`JobFailed::Busy`] (a 503 with `Retry-After`
//! for its request) instead of queueing without end behind a flood of
//! password checks or a database that stopped answering.
//!
//! With a store on the network (PostgreSQL) most of a job is waiting for
//! the database, so the jobs are bounded by its connection pool instead,
//! and the CPU bound moves onto Argon2 itself: [`CpuGate`], half the cores,
//! taken inside the job around each hash check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Jobs that may wait for a permit at once; the next is refused at once.
pub const MAX_WAITING: usize = 1024;
/// The longest a job waits for a permit.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// A bounded gate in front of `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct Workers {
    permits: Arc<Semaphore>,
    queue: Arc<Queue>,
}

/// The jobs waiting for a permit, and their bounds.
#[derive(Debug)]
struct Queue {
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
}

/// A job that has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JobFailed {
    /// It panicked.
    #[error("blocking job failed")]
    Panicked,
    /// It did not run: no permit within [`MAX_WAIT`], or [`MAX_WAITING`]
    /// jobs waited already.
    #[error("every worker is busy")]
    Busy,
}

impl Workers {
    /// Half the cores, at least one: the data path keeps the other half
    /// however many token requests arrive.
    pub fn sized_from_cores() -> Workers {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Workers::new((cores / 2).max(1))
    }

    /// At most `limit` jobs at once, the waits bounded by [`MAX_WAITING`]
    /// and [`MAX_WAIT`].
    pub fn new(limit: usize) -> Workers {
        Workers::bounded(limit, MAX_WAITING, MAX_WAIT)
    }

    /// At most `limit` jobs at once, `max_waiting` waiting, each for at
    /// most `max_wait`.
    pub fn bounded(limit: usize, max_waiting: usize, max_wait: Duration) -> Workers {
        Workers {
            permits: Arc::new(Semaphore::new(limit)),
            queue: Arc::new(Queue {
                waiting: AtomicUsize::new(0),
                max_waiting,
                max_wait,
            }),
        }
    }

    /// Runs `job` on a blocking thread once a permit is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobFailed> {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_permit().await?,
        };
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|_| JobFailed::Panicked)
    }

    async fn wait_for_permit(&self) -> Result<OwnedSemaphorePermit, JobFailed> {
        let queue = &*self.queue;
        if queue.waiting.fetch_add(1, Ordering::AcqRel) >= queue.max_waiting {
            queue.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(JobFailed::Busy);
        }
        // Counted out however the wait ends, the caller gone included.
        struct Waiting<'q>(&'q Queue);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(queue);
        match tokio::time::timeout(queue.max_wait, Arc::clone(&self.permits).acquire_owned()).await
        {
            Ok(Ok(permit)) => Ok(permit),
            // Timed out; the semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(JobFailed::Busy),
        }
    }
}

/// At most `limit` CPU-heavy sections (Argon2) at once among blocking
/// jobs; the others wait on their (blocking) thread.
#[derive(Debug)]
pub struct CpuGate {
    running: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

impl CpuGate {
    /// Half the cores, at least one.
    pub fn sized_from_cores() -> CpuGate {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        CpuGate::new((cores / 2).max(1))
    }

    pub fn new(limit: usize) -> CpuGate {
        CpuGate {
            running: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
        }
    }

    /// Runs `section` once fewer than `limit` others run; the slot is
    /// given back even if it panics.
    pub fn run<T>(&self, section: impl FnOnce() -> T) -> T {
        struct Slot<'g>(&'g CpuGate);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                let mut running = self.0.lock();
                *running = running.saturating_sub(1);
                self.0.freed.notify_one();
            }
        }
        {
            let mut running = self.lock();
            while *running >= self.limit {
                running = self
                    .freed
                    .wait(running)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            *running += 1;
        }
        let _slot = Slot(self);
        section()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // A count stays meaningful after a panic elsewhere.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(
        clippy::disallowed_methods,
        reason = "the jobs sleep on the blocking pool, as real jobs block there"
    )]
    async fn no_more_than_the_limit_run_at_once() {
        let workers = Workers::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (workers, running, most) = (workers.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    workers
                        .run(move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                })
            })
            .collect();
        for job in jobs {
            job.await.expect("joined").expect("ran");
        }
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} jobs at once");
    }

    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "the sections sleep, as Argon2 keeps a core busy"
    )]
    fn the_cpu_gate_admits_no_more_than_its_limit() {
        let gate = CpuGate::new(2);
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    gate.run(|| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                });
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} sections at once");
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gate.run(|| panic!("boom"))));
        assert!(caught.is_err());
        assert_eq!(
            gate.run(|| 7),
            7,
            "the panicking section gave its slot back"
        );
        assert_eq!(*gate.lock(), 0);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_and_frees_its_permit() {
        let workers = Workers::new(1);
        assert_eq!(
            workers.run(|| panic!("boom")).await,
            Err(JobFailed::Panicked)
        );
        assert_eq!(workers.run(|| 7).await, Ok(7));
    }

    /// A job that holds the only permit until `release` is sent.
    fn hold(workers: &Workers) -> (std::sync::mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let workers = workers.clone();
        let job = tokio::spawn(async move {
            workers
                .run(move || held.recv().expect("released"))
                .await
                .expect("ran");
        });
        (release, job)
    }

    /// Waits (10 s at most) until `n` jobs wait for a permit.
    async fn until_waiting(workers: &Workers, n: usize) {
        for _ in 0..1000 {
            if workers.queue.waiting.load(Ordering::Acquire) == n
                && workers.permits.available_permits() == 0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} jobs never waited");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_beyond_the_waiting_ones_is_refused_at_once() {
        let workers = Workers::bounded(1, 2, Duration::from_secs(60));
        let (release, holder) = hold(&workers);
        // The holder has the permit before the others ask for it.
        until_waiting(&workers, 0).await;
        let waiters: Vec<_> = (0..2)
            .map(|n| {
                let workers = workers.clone();
                tokio::spawn(async move { workers.run(move || n).await })
            })
            .collect();
        until_waiting(&workers, 2).await;
        assert_eq!(workers.run(|| 9).await, Err(JobFailed::Busy));
        release.send(()).expect("holder");
        holder.await.expect("joined");
        for (n, waiter) in waiters.into_iter().enumerate() {
            assert_eq!(waiter.await.expect("joined"), Ok(n), "waited, then ran");
        }
        assert_eq!(workers.queue.waiting.load(Ordering::Acquire), 0);
        assert_eq!(workers.run(|| 7).await, Ok(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_waits_for_a_permit_no_longer_than_the_bound() {
        let workers = Workers::bounded(1, 8, Duration::from_millis(50));
        let (release, holder) = hold(&workers);
        until_waiting(&workers, 0).await;
        assert_eq!(workers.run(|| 9).await, Err(JobFailed::Busy));
        assert_eq!(workers.queue.waiting.load(Ordering::Acquire), 0);
        release.send(()).expect("holder");
        holder.await.expect("joined");
        assert_eq!(workers.run(|| 7).await, Ok(7));
    }
}
