//! The identification phase for application credentials: an API key, a
//! client certificate or a Basic user becomes an [`Identity`], or a
//! [`Rejection`]. Bearer tokens go through `auth::servers` as before.
//!
//! Basic passwords are Argon2 hashes, slow by design: they are checked on
//! the bounded blocking workers, never on a listener thread, and a
//! success is cached by SHA-256 of the credential (bounded; emptied when
//! the snapshot changes, so a removed user or password stops working at
//! once). A worker stores its success before it takes the next job, and
//! each job looks in the cache first: a burst of requests with the same
//! credential, queued behind the first, costs one hash, not one each.
//!
//! Failed attempts are counted per user name and per client address (as
//! `trusted_proxies` make it known: behind a load balancer, its address
//! would lock every caller out at once) in fixed windows, like the
//! password grant's: while locked, even a right password is refused
//! without being checked (429), a cached one included. A check takes an
//! attempt of both counters before it starts, and counts as a failure
//! until it is known right: guesses sent at once are checked no further
//! than the limit allows, however long each check takes. Requests with a
//! credential already being checked share its attempt (a burst of one
//! client's requests is one guess, and costs one hash).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::reject::Rejection;
use crate::auth::identity::{self, Identity};
use crate::authz_server::workers::{JobFailed, Workers};
use crate::config::snapshot::{Application, Applications, CredentialType};
use crate::config::Snapshot;

/// Verified Basic credentials kept at most.
const CACHE_ENTRIES: usize = 1024;
/// Failures of one user name, or of one client address, within a window.
const USER_FAILURES: u32 = 5;
const PEER_FAILURES: u32 = 20;
const WINDOW_SECS: u64 = 60;
/// Counters kept at most (user names and addresses); past it, the oldest
/// windows are dropped first.
const ATTEMPT_ENTRIES: usize = 10_000;

/// Checks application credentials for the data path.
#[derive(Debug)]
pub struct Identifier {
    workers: Workers,
    /// Shared with the jobs, which store what they verified.
    cache: Arc<Mutex<Cache>>,
    attempts: Mutex<HashMap<Subject, Window>>,
}

#[derive(Debug, Default)]
struct Cache {
    generation: u64,
    /// SHA-256 of user and password → application index.
    verified: HashMap<[u8; 32], usize>,
}

impl Cache {
    /// The application of a credential verified on snapshot `generation`,
    /// out of that snapshot's `applications`.
    fn get(
        &self,
        generation: u64,
        key: &[u8; 32],
        applications: &Applications,
    ) -> Option<Arc<Application>> {
        let index = (self.generation == generation)
            .then(|| self.verified.get(key).copied())
            .flatten()?;
        applications.list.get(index).cloned()
    }

    fn remember(&mut self, generation: u64, key: [u8; 32], index: usize) {
        if self.generation != generation || self.verified.len() >= CACHE_ENTRIES {
            self.verified.clear();
            self.generation = generation;
        }
        self.verified.insert(key, index);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    User(String),
    Peer(IpAddr),
}

impl Subject {
    fn limit(&self) -> u32 {
        match self {
            Subject::User(_) => USER_FAILURES,
            Subject::Peer(_) => PEER_FAILURES,
        }
    }
}

#[derive(Debug, Clone)]
struct Window {
    started: u64,
    failures: u32,
    /// Credentials (digests) being checked, each a failure until it is
    /// known right, and how many requests wait for each.
    checking: HashMap<[u8; 32], u32>,
}

impl Window {
    /// The failures counted in the window running at `now`.
    fn failures_at(&self, now: u64) -> u32 {
        if now < self.started + WINDOW_SECS {
            self.failures
        } else {
            0
        }
    }

    /// Failures, with the credentials being checked as failures.
    fn taken_at(&self, now: u64) -> u32 {
        let checking = u32::try_from(self.checking.len()).unwrap_or(u32::MAX);
        self.failures_at(now).saturating_add(checking)
    }

    /// Seconds until the window running at `now` ends (at least one).
    fn retry_after(&self, now: u64) -> u64 {
        (self.started + WINDOW_SECS).saturating_sub(now).max(1)
    }
}

impl Default for Identifier {
    fn default() -> Identifier {
        Identifier::new(Workers::sized_from_cores())
    }
}

impl Identifier {
    pub fn new(workers: Workers) -> Identifier {
        Identifier {
            workers,
            cache: Arc::default(),
            attempts: Mutex::default(),
        }
    }

    /// The identity of an API key.
    pub fn api_key(snap: &Snapshot, key: &[u8], realm: &str) -> Result<Identity, Rejection> {
        snap.applications
            .by_api_key_digest(&identity::digest(key))
            .map(|app| Identity::of_application(CredentialType::ApiKey, app.clone()))
            .ok_or_else(|| bad(CredentialType::ApiKey, realm))
    }

    /// The identity of a client certificate's SHA-256 fingerprint.
    pub fn certificate(
        snap: &Snapshot,
        fingerprint: &[u8; 32],
        realm: &str,
    ) -> Result<Identity, Rejection> {
        snap.applications
            .by_certificate(fingerprint)
            .map(|app| Identity::of_application(CredentialType::Certificate, app.clone()))
            .ok_or_else(|| bad(CredentialType::Certificate, realm))
    }

    /// The identity of a Basic user whose password matches.
    pub async fn basic(
        &self,
        snap: &Snapshot,
        user: String,
        password: String,
        client_ip: IpAddr,
        realm: &str,
    ) -> Result<Identity, Rejection> {
        let subjects = [Subject::Peer(client_ip), Subject::User(user.clone())];
        // Locked means locked: a credential verified before the lock
        // must not answer for a guess that happens to equal it.
        for subject in &subjects {
            self.check(subject, unix_now())?;
        }
        let key = identity::basic_digest(&user, &password);
        let counters = crate::metrics::basic_auth_cache();
        let cached = lock(&self.cache).get(snap.generation, &key, &snap.applications);
        if let Some(app) = cached {
            counters.hit.inc();
            return Ok(with_user(app, user));
        }
        let attempt = self.reserve(subjects, key, unix_now())?;
        let applications = snap.applications.clone();
        let checked = {
            let user = user.clone();
            let cache = Arc::clone(&self.cache);
            let generation = snap.generation;
            self.workers
                .run(move || {
                    // Verified by another request while this one waited
                    // for a worker: no second hash.
                    let cached = lock(&cache).get(generation, &key, &applications);
                    if cached.is_some() {
                        counters.coalesced.inc();
                        return cached;
                    }
                    counters.miss.inc();
                    let app = identity::verify_basic(&applications, &user, &password)?;
                    // Stored before the worker is free for the next job.
                    lock(&cache).remember(generation, key, app.index);
                    Some(app)
                })
                .await
        };
        match checked {
            Ok(Some(app)) => {
                attempt.end(Outcome::Right);
                Ok(with_user(app, user))
            }
            Ok(None) => {
                attempt.end(Outcome::Wrong);
                Err(bad(CredentialType::Basic, realm))
            }
            // Not checked, so not a wrong password either.
            Err(JobFailed::Busy) => {
                attempt.end(Outcome::Unchecked);
                Err(Rejection::ChecksBusy)
            }
            Err(JobFailed::Panicked) => {
                attempt.end(Outcome::Unchecked);
                Err(Rejection::BadGateway("credential check failed".into()))
            }
        }
    }

    /// Refused while `subject` has failed its limit in the running window.
    fn check(&self, subject: &Subject, now: u64) -> Result<(), Rejection> {
        match self.lock_attempts().get(subject) {
            Some(w) if w.failures_at(now) >= subject.limit() => Err(Rejection::TooManyAttempts {
                retry_after: w.retry_after(now),
            }),
            _ => Ok(()),
        }
    }

    /// Takes one attempt of each subject's counter for the credential
    /// `key` (or joins its check under way), or none: refused while the
    /// failures and the credentials being checked of either reach its
    /// limit.
    fn reserve(
        &self,
        subjects: [Subject; 2],
        key: [u8; 32],
        now: u64,
    ) -> Result<Attempt<'_>, Rejection> {
        let mut windows = self.lock_attempts();
        for subject in &subjects {
            if let Some(w) = windows.get(subject) {
                if !w.checking.contains_key(&key) && w.taken_at(now) >= subject.limit() {
                    return Err(Rejection::TooManyAttempts {
                        retry_after: w.retry_after(now),
                    });
                }
            }
        }
        for subject in &subjects {
            *window(&mut windows, subject.clone(), now)
                .checking
                .entry(key)
                .or_insert(0) += 1;
        }
        Ok(Attempt {
            identifier: self,
            subjects,
            key,
            ended: false,
        })
    }

    fn lock_attempts(&self) -> MutexGuard<'_, HashMap<Subject, Window>> {
        lock(&self.attempts)
    }
}

/// How a check taken by [`Identifier::reserve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The password is right: the user's failures are forgiven.
    Right,
    Wrong,
    /// No answer (no worker, or the check failed): counts as nothing.
    Unchecked,
}

/// An attempt taken of both counters while its check runs. Dropped
/// without an outcome (the request gone while the password is checked,
/// the check still running), it counts as a failure: its answer is
/// unknown.
struct Attempt<'a> {
    identifier: &'a Identifier,
    subjects: [Subject; 2],
    key: [u8; 32],
    ended: bool,
}

impl Attempt<'_> {
    fn end(mut self, outcome: Outcome) {
        self.ended = true;
        self.settle(outcome);
    }

    fn settle(&self, outcome: Outcome) {
        let now = unix_now();
        let mut windows = self.identifier.lock_attempts();
        for subject in &self.subjects {
            let window = window(&mut windows, subject.clone(), now);
            if let Some(waiting) = window.checking.get_mut(&self.key) {
                *waiting -= 1;
                if *waiting == 0 {
                    window.checking.remove(&self.key);
                }
            }
            match outcome {
                Outcome::Wrong => window.failures = window.failures.saturating_add(1),
                Outcome::Right if matches!(subject, Subject::User(_)) => window.failures = 0,
                Outcome::Right | Outcome::Unchecked => {}
            }
            if window.failures == 0 && window.checking.is_empty() {
                windows.remove(subject);
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.settle(Outcome::Wrong);
        }
    }
}

/// The window of `subject` running at `now`, a new one when its own has
/// ended (its checks under way kept); at most [`ATTEMPT_ENTRIES`] are kept,
/// the ended ones dropped first, then the oldest.
fn window(windows: &mut HashMap<Subject, Window>, subject: Subject, now: u64) -> &mut Window {
    if windows.len() >= ATTEMPT_ENTRIES && !windows.contains_key(&subject) {
        windows.retain(|_, w| !w.checking.is_empty() || now < w.started + WINDOW_SECS);
        if windows.len() >= ATTEMPT_ENTRIES {
            let oldest = windows
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(s, _)| s.clone());
            if let Some(oldest) = oldest {
                windows.remove(&oldest);
            }
        }
    }
    let window = windows.entry(subject).or_insert(Window {
        started: now,
        failures: 0,
        checking: HashMap::new(),
    });
    if now >= window.started + WINDOW_SECS {
        window.started = now;
        window.failures = 0;
    }
    window
}

fn with_user(app: Arc<Application>, user: String) -> Identity {
    let mut who = Identity::of_application(CredentialType::Basic, app);
    who.user_name = Some(user);
    who
}

fn bad(kind: CredentialType, realm: &str) -> Rejection {
    Rejection::BadCredentials {
        kind,
        realm: realm.to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and cache stay meaningful after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> [Subject; 2] {
        [
            Subject::Peer(IpAddr::from([127, 0, 0, 1])),
            Subject::User("alice".into()),
        ]
    }

    /// The digest of guess `n`.
    fn guess(n: usize) -> [u8; 32] {
        identity::basic_digest("alice", &format!("guess-{n}"))
    }

    fn fail(identifier: &Identifier, subjects: [Subject; 2], key: [u8; 32]) {
        let attempt = identifier.reserve(subjects, key, 100).expect("not locked");
        attempt.end(Outcome::Wrong);
    }

    #[test]
    fn five_failures_lock_a_user_and_the_lock_ends_with_its_window() {
        let identifier = Identifier::new(Workers::new(1));
        let [_, user] = alice();
        for n in 0..5 {
            assert!(identifier.check(&user, 100).is_ok());
            fail(&identifier, alice(), guess(n));
        }
        // A failure counts from when its check ends: on the real clock.
        let started = identifier.lock_attempts()[&user].started;
        assert_eq!(
            identifier.check(&user, started + 10),
            Err(Rejection::TooManyAttempts { retry_after: 50 })
        );
        assert!(identifier.reserve(alice(), guess(9), started + 10).is_err());
        assert!(identifier.check(&user, started + 60).is_ok());
        assert!(identifier.reserve(alice(), guess(9), started + 60).is_ok());
    }

    #[test]
    fn credentials_being_checked_count_against_the_limit_until_they_end() {
        let identifier = Identifier::new(Workers::new(1));
        let attempts: Vec<_> = (0..USER_FAILURES as usize)
            .map(|n| {
                identifier
                    .reserve(alice(), guess(n), 100)
                    .expect("within the limit")
            })
            .collect();
        assert!(matches!(
            identifier.reserve(alice(), guess(99), 100),
            Err(Rejection::TooManyAttempts { retry_after: 60 })
        ));
        // A credential being checked already is no further guess.
        let again = identifier.reserve(alice(), guess(0), 100).expect("joins");
        // Another user from the same address is not held back.
        let bob = [alice()[0].clone(), Subject::User("bob".into())];
        let bobs = identity::basic_digest("bob", "pw");
        identifier
            .reserve(bob, bobs, 100)
            .expect("bob")
            .end(Outcome::Right);
        again.end(Outcome::Right);
        for attempt in attempts {
            attempt.end(Outcome::Right);
        }
        assert!(identifier.lock_attempts().is_empty());
    }

    #[test]
    fn an_attempt_dropped_before_its_answer_is_a_failure() {
        let identifier = Identifier::new(Workers::new(1));
        drop(
            identifier
                .reserve(alice(), guess(0), 100)
                .expect("not locked"),
        );
        let window = &identifier.lock_attempts()[&alice()[1]];
        assert_eq!(window.failures, 1);
        assert!(window.checking.is_empty());
    }

    #[test]
    fn counters_stay_bounded() {
        let identifier = Identifier::new(Workers::new(1));
        // Two counters (address and user) a failure.
        for n in 0..(ATTEMPT_ENTRIES / 2 + 50) {
            let user = [
                Subject::Peer(IpAddr::from([10, 0, (n >> 8) as u8, n as u8])),
                Subject::User(n.to_string()),
            ];
            fail(&identifier, user, guess(n));
        }
        assert!(identifier.lock_attempts().len() <= ATTEMPT_ENTRIES);
    }
}
