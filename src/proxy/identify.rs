//! The identification phase for application credentials: an API key, a
//! client certificate or a Basic user becomes an [`Identity`], or a
//! [`Rejection`]. Bearer tokens go through `auth::servers` as before.
//!
//! Basic passwords are Argon2 hashes, slow by design: they are checked on
//! the bounded blocking workers, never on a listener thread, and a
//! success is cached by SHA-256 of the credential (bounded; emptied when
//! the snapshot changes, so a removed user or password stops working at
//! once). A wrong credential is remembered the same way, until the
//! snapshot changes. A worker stores its outcome before it takes the next
//! job, and each job looks in the cache first: a burst of requests with
//! the same credential, right or wrong, queued behind the first, costs one
//! hash, not one each (a wrong one still counts a failure for each).
//!
//! Failed attempts are counted per user name and per client address (as
//! `trusted_proxies` make it known: behind a load balancer, its address
//! would lock every caller out at once) in fixed windows, by the
//! mechanism the password grant's counts use ([`crate::lockout`]): 5
//! failures of a user name or 20 of an address within 60 s lock it until
//! the window ends. While locked, even a right password is refused
//! without being checked (429), a cached one included. A check takes an
//! attempt of both counters before it starts, and counts as a failure
//! until it is known right: guesses sent at once are checked no further
//! than the limit allows, however long each check takes. Requests with a
//! credential already being checked share its attempt (a burst of one
//! client's requests is one guess, and costs one hash). At most
//! `ATTEMPT_ENTRIES` counters are kept.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::reject::{BadGateway, Rejection};
use crate::auth::identity::{self, Identity};
use crate::authz_server::workers::{JobFailed, Workers};
use crate::config::snapshot::{Application, Applications, CredentialType};
use crate::config::Snapshot;
use crate::lockout::{system_now, AddressKey, Limits, Locked, Lockout, Outcome, Subject};

/// Verified Basic credentials kept at most.
const CACHE_ENTRIES: usize = 1024;
/// Counters kept at most (user names and addresses); past it, the ended
/// windows are dropped first, then the oldest.
const ATTEMPT_ENTRIES: usize = 10_000;
/// Failures of one user name, or of one client address, within a window.
const ATTEMPT_LIMITS: Limits = Limits {
    user: 5,
    client: 20,
    window_secs: 60,
    entries: ATTEMPT_ENTRIES,
};

/// Checks application credentials for the data path.
#[derive(Debug)]
pub struct Identifier {
    workers: Workers,
    /// Shared with the jobs, which store what they verified.
    cache: Arc<Mutex<Cache>>,
    /// Failed attempts, per user name and per client address.
    /// Addresses counted as [`AddressKey`]s (an IPv6 caller by its /64).
    attempts: Lockout<AddressKey>,
}

#[derive(Debug, Default)]
struct Cache {
    generation: u64,
    /// SHA-256 of user and password → application index.
    verified: HashMap<[u8; 32], usize>,
    /// SHA-256 of user and password found wrong: wrong until the snapshot
    /// changes.
    refused: HashSet<[u8; 32]>,
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

    /// Whether a credential was found wrong on snapshot `generation`.
    fn is_refused(&self, generation: u64, key: &[u8; 32]) -> bool {
        self.generation == generation && self.refused.contains(key)
    }

    fn remember(&mut self, generation: u64, key: [u8; 32], index: usize) {
        self.start(generation);
        if self.verified.len() >= CACHE_ENTRIES {
            self.verified.clear();
        }
        self.verified.insert(key, index);
    }

    fn refuse(&mut self, generation: u64, key: [u8; 32]) {
        self.start(generation);
        if self.refused.len() >= CACHE_ENTRIES {
            self.refused.clear();
        }
        self.refused.insert(key);
    }

    /// Forgets what an older snapshot's users decided.
    fn start(&mut self, generation: u64) {
        if self.generation != generation {
            self.verified.clear();
            self.refused.clear();
            self.generation = generation;
        }
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
            attempts: Lockout::new(ATTEMPT_LIMITS),
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
        // Locked means locked: a credential verified before the lock
        // must not answer for a guess that happens to equal it.
        let now = system_now();
        let client_ip = AddressKey::of(client_ip);
        // The user as the lock counts it (a long name by its digest).
        for subject in [Subject::Client(client_ip), Subject::user(&user)] {
            self.attempts.check(&subject, now).map_err(too_many)?;
        }
        let key = identity::basic_digest(&user, &password);
        let counters = crate::metrics::basic_auth_cache();
        let cached = lock(&self.cache).get(snap.generation, &key, &snap.applications);
        if let Some(app) = cached {
            counters.hit.inc();
            return Ok(with_user(app, user));
        }
        let attempt = self
            .attempts
            .reserve(&client_ip, &user, Some(key), system_now())
            .map_err(too_many)?;
        let applications = snap.applications.clone();
        let checked = {
            let user = user.clone();
            let cache = Arc::clone(&self.cache);
            let generation = snap.generation;
            self.workers
                .run(move || {
                    // Decided by another request while this one waited
                    // for a worker: no second hash, right or wrong.
                    {
                        let cache = lock(&cache);
                        let cached = cache.get(generation, &key, &applications);
                        if cached.is_some() || cache.is_refused(generation, &key) {
                            counters.coalesced.inc();
                            return cached;
                        }
                    }
                    counters.miss.inc();
                    let app = identity::verify_basic(&applications, &user, &password);
                    // Stored before the worker is free for the next job.
                    match &app {
                        Some(app) => lock(&cache).remember(generation, key, app.index),
                        None => lock(&cache).refuse(generation, key),
                    }
                    app
                })
                .await
        };
        match checked {
            Ok(Some(app)) => {
                attempt.end(Outcome::Right, system_now());
                Ok(with_user(app, user))
            }
            Ok(None) => {
                attempt.end(Outcome::Wrong, system_now());
                Err(bad(CredentialType::Basic, realm))
            }
            // Not checked, so not a wrong password either.
            Err(JobFailed::Busy) => {
                attempt.end(Outcome::Unchecked, system_now());
                Err(Rejection::ChecksBusy)
            }
            Err(JobFailed::Panicked) => {
                attempt.end(Outcome::Unchecked, system_now());
                Err(Rejection::BadGateway(BadGateway::CheckFailed))
            }
        }
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

fn too_many(locked: Locked) -> Rejection {
    Rejection::TooManyAttempts {
        retry_after: locked.retry_after,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The cache stays meaningful after a panic elsewhere.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_name_locks_after_five_failures_an_address_after_twenty() {
        let identifier = Identifier::new(Workers::new(1));
        let client = AddressKey::of(IpAddr::from([127, 0, 0, 1]));
        let fail = |user: &str| {
            let key = identity::basic_digest(user, "guess");
            let attempt = identifier.attempts.reserve(&client, user, Some(key), 100);
            attempt.expect("not locked").end(Outcome::Wrong, 100);
        };
        for _ in 0..5 {
            fail("alice");
        }
        let alice = Subject::User("alice".into());
        assert_eq!(
            identifier.attempts.check(&alice, 110).map_err(too_many),
            Err(Rejection::TooManyAttempts { retry_after: 50 })
        );
        for n in 0..15 {
            fail(&format!("user-{n}"));
        }
        assert!(identifier
            .attempts
            .check(&Subject::Client(client), 110)
            .is_err());
        let elsewhere = Subject::Client(AddressKey::of(IpAddr::from([127, 0, 0, 2])));
        assert_eq!(identifier.attempts.check(&elsewhere, 110), Ok(()));
    }
}
