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
//! taken inside the job around each hash check. A job that will check a
//! password first passes a [`Gate`] of its own ([`Workers::run_after`]),
//! as wide as the [`CpuGate`]: password checks beyond it wait there,
//! holding no worker, so that a flood of them leaves the workers to the
//! requests that need none (introspection, a refresh, a client's token).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Jobs that may wait for a permit at once; the next is refused at once.
pub const MAX_WAITING: usize = 1024;
/// The longest a job waits for a permit.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Half the cores, at least one: what CPU-heavy work may take, leaving the
/// data path the other half.
pub fn half_the_cores() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

/// A bounded admission: at most `limit` holders at once, at most
/// `max_waiting` waiting, each for at most `max_wait`.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    queue: Arc<Queue>,
}

/// A bounded gate in front of `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct Workers {
    gate: Gate,
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

impl Gate {
    /// At most `limit` holders, the waits bounded by [`MAX_WAITING`] and
    /// [`MAX_WAIT`].
    pub fn new(limit: usize) -> Gate {
        Gate::bounded(limit, MAX_WAITING, MAX_WAIT)
    }

    /// At most `limit` holders at once, `max_waiting` waiting, each for at
    /// most `max_wait`.
    pub fn bounded(limit: usize, max_waiting: usize, max_wait: Duration) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(limit)),
            queue: Arc::new(Queue {
                waiting: AtomicUsize::new(0),
                max_waiting,
                max_wait,
            }),
        }
    }

    /// A permit, at once or after a bounded wait; [`JobFailed::Busy`] when
    /// none came in time or too many wait already.
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, JobFailed> {
        match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => self.wait_for_permit().await,
        }
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

impl Workers {
    /// Half the cores, at least one: the data path keeps the other half
    /// however many token requests arrive.
    pub fn sized_from_cores() -> Workers {
        Workers::new(half_the_cores())
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
            gate: Gate::bounded(limit, max_waiting, max_wait),
        }
    }

    /// Runs `job` on a blocking thread once a permit is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobFailed> {
        let permit = self.gate.enter().await?;
        run_holding((permit, None), job).await
    }

    /// Runs `job` once `first` admits it and then a worker is free: while
    /// it waits for `first` it holds no worker. It keeps both permits
    /// until it returns, even if its caller has gone.
    pub async fn run_after<T: Send + 'static>(
        &self,
        first: &Gate,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobFailed> {
        let admitted = first.enter().await?;
        let permit = self.gate.enter().await?;
        run_holding((permit, Some(admitted)), job).await
    }
}

/// Runs `job` on a blocking thread, which holds `permits` until it returns.
async fn run_holding<T: Send + 'static>(
    permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JobFailed> {
    tokio::task::spawn_blocking(move || {
        let _permits = permits;
        job()
    })
    .await
    .map_err(|_| JobFailed::Panicked)
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
        CpuGate::new(half_the_cores())
    }

    /// The process's one gate for password hashes: an authorization
    /// server rebuilt by a reload checks through the same gate as the one
    /// whose requests are still finishing, so the two never run twice the
    /// bound at once.
    pub fn for_passwords() -> &'static CpuGate {
        static GATE: std::sync::LazyLock<CpuGate> =
            std::sync::LazyLock::new(CpuGate::sized_from_cores);
        &GATE
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
        until_gate(&workers.gate, 0, n).await;
    }

    /// Waits (10 s at most) until `gate` has `free` permits and `n` jobs
    /// wait for one.
    async fn until_gate(gate: &Gate, free: usize, n: usize) {
        for _ in 0..1000 {
            if gate.queue.waiting.load(Ordering::Acquire) == n
                && gate.permits.available_permits() == free
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never {free} free and {n} waiting");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_checks_wait_for_their_turn_holding_no_worker() {
        let workers = Workers::new(2);
        let checks = Gate::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let first = {
            let (workers, checks) = (workers.clone(), checks.clone());
            tokio::spawn(async move {
                workers
                    .run_after(&checks, move || held.recv().expect("released"))
                    .await
            })
        };
        until_gate(&workers.gate, 1, 0).await;
        let next: Vec<_> = (0..3)
            .map(|n| {
                let (workers, checks) = (workers.clone(), checks.clone());
                tokio::spawn(async move { workers.run_after(&checks, move || n).await })
            })
            .collect();
        until_gate(&checks, 0, 3).await;
        // Three checks wait, one runs: the second worker is free for a job
        // that checks no password.
        assert_eq!(workers.gate.permits.available_permits(), 1);
        let cheap = tokio::time::timeout(Duration::from_secs(10), workers.run(|| 7)).await;
        assert_eq!(cheap, Ok(Ok(7)));
        release.send(()).expect("first");
        assert_eq!(first.await.expect("joined"), Ok(()));
        for (n, check) in next.into_iter().enumerate() {
            assert_eq!(check.await.expect("joined"), Ok(n), "waited, then ran");
        }
        until_gate(&checks, 1, 0).await;
        until_gate(&workers.gate, 2, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_password_check_keeps_its_turn_until_it_returns_though_its_caller_went() {
        let workers = Workers::new(2);
        let checks = Gate::new(1);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (ran, done) = std::sync::mpsc::channel::<()>();
        let caller = {
            let (workers, checks) = (workers.clone(), checks.clone());
            tokio::spawn(async move {
                workers
                    .run_after(&checks, move || {
                        held.recv().expect("released");
                        ran.send(()).expect("told");
                    })
                    .await
            })
        };
        until_gate(&checks, 0, 0).await;
        until_gate(&workers.gate, 1, 0).await;
        caller.abort();
        assert!(caller.await.is_err_and(|e| e.is_cancelled()));
        // The job still runs: both its permits are still taken.
        assert_eq!(checks.permits.available_permits(), 0);
        assert_eq!(workers.gate.permits.available_permits(), 1);
        release.send(()).expect("job");
        tokio::task::spawn_blocking(move || done.recv().expect("ran"))
            .await
            .expect("joined");
        until_gate(&checks, 1, 0).await;
        until_gate(&workers.gate, 2, 0).await;
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
        assert_eq!(workers.gate.queue.waiting.load(Ordering::Acquire), 0);
        assert_eq!(workers.run(|| 7).await, Ok(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_waits_for_a_permit_no_longer_than_the_bound() {
        let workers = Workers::bounded(1, 8, Duration::from_millis(50));
        let (release, holder) = hold(&workers);
        until_waiting(&workers, 0).await;
        assert_eq!(workers.run(|| 9).await, Err(JobFailed::Busy));
        assert_eq!(workers.gate.queue.waiting.load(Ordering::Acquire), 0);
        release.send(()).expect("holder");
        holder.await.expect("joined");
        assert_eq!(workers.run(|| 7).await, Ok(7));
    }
}
