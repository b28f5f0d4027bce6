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
//! without being checked (429), a cached one included.

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

#[derive(Debug, Clone, Copy)]
struct Window {
    started: u64,
    failures: u32,
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
        let now = unix_now();
        let as_user = Subject::User(user.clone());
        let as_peer = Subject::Peer(client_ip);
        // Locked means locked: a credential verified before the lock
        // must not answer for a guess that happens to equal it.
        for subject in [&as_peer, &as_user] {
            self.check(subject, now)?;
        }
        let key = identity::basic_digest(&user, &password);
        let counters = crate::metrics::basic_auth_cache();
        let cached = lock(&self.cache).get(snap.generation, &key, &snap.applications);
        if let Some(app) = cached {
            counters.hit.inc();
            return Ok(with_user(app, user));
        }
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
                self.lock_attempts().remove(&as_user);
                Ok(with_user(app, user))
            }
            Ok(None) => {
                self.record_failure(as_user, now);
                self.record_failure(as_peer, now);
                Err(bad(CredentialType::Basic, realm))
            }
            // Not checked, so not a wrong password either.
            Err(JobFailed::Busy) => Err(Rejection::ChecksBusy),
            Err(JobFailed::Panicked) => {
                Err(Rejection::BadGateway("credential check failed".into()))
            }
        }
    }

    fn check(&self, subject: &Subject, now: u64) -> Result<(), Rejection> {
        match self.lock_attempts().get(subject) {
            Some(w) if w.failures >= subject.limit() && now < w.started + WINDOW_SECS => {
                Err(Rejection::TooManyAttempts {
                    retry_after: w.started + WINDOW_SECS - now,
                })
            }
            _ => Ok(()),
        }
    }

    fn record_failure(&self, subject: Subject, now: u64) {
        let mut windows = self.lock_attempts();
        if windows.len() >= ATTEMPT_ENTRIES {
            windows.retain(|_, w| now < w.started + WINDOW_SECS);
        }
        if windows.len() >= ATTEMPT_ENTRIES {
            let oldest = windows
                .iter()
                .min_by_key(|(_, w)| w.started)
                .map(|(s, _)| s.clone());
            if let Some(oldest) = oldest {
                windows.remove(&oldest);
            }
        }
        let window = windows.entry(subject).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= window.started + WINDOW_SECS {
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
    }

    fn lock_attempts(&self) -> MutexGuard<'_, HashMap<Subject, Window>> {
        lock(&self.attempts)
    }
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

    #[test]
    fn five_failures_lock_a_user_and_the_lock_ends_with_its_window() {
        let identifier = Identifier::new(Workers::new(1));
        let alice = Subject::User("alice".into());
        for t in 0..5 {
            assert!(identifier.check(&alice, 100 + t).is_ok());
            identifier.record_failure(alice.clone(), 100 + t);
        }
        assert_eq!(
            identifier.check(&alice, 110),
            Err(Rejection::TooManyAttempts { retry_after: 50 })
        );
        assert!(identifier.check(&alice, 160).is_ok());
        identifier.record_failure(alice.clone(), 160);
        assert!(identifier.check(&alice, 161).is_ok());
    }

    #[test]
    fn counters_stay_bounded() {
        let identifier = Identifier::new(Workers::new(1));
        for n in 0..(ATTEMPT_ENTRIES + 50) {
            identifier.record_failure(Subject::User(n.to_string()), 5);
        }
        assert!(identifier.lock_attempts().len() <= ATTEMPT_ENTRIES);
    }
}
