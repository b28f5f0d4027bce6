//! Failed password attempts, counted per user and per client in fixed
//! windows, to slow down guessing (RFC 6749 §10.7 asks the server to
//! protect the password grant from brute force).
//!
//! Policy: 5 failures of one user, or 20 of one client (a client serves
//! many users), within 60 s lock that user or client until the window
//! ends; while locked, even a right password is refused without being
//! checked, so a lock also caps the Argon2 work an attacker can cause.
//! Unknown usernames are counted like known ones, so a lock does not tell
//! which users exist. Memory stays bounded: a failure is only recorded for
//! a configured client that is not locked, so each client adds at most 20
//! entries per window, and windows that ended are dropped.
//!
//! A password check under way counts against its user's lock until it
//! ends ([`FailedAttempts::guarded`]): guesses sent at once are not all
//! let through before the first failure is counted, so no more passwords
//! of one user are checked at a time than the lock has room for.
//!
//! A store shared by replicas (PostgreSQL) counts failures too, so a lock
//! holds on every replica: a subject is locked when the local count or the
//! store's says so. Failures are always counted locally as well, so an
//! unreachable store never lifts a lock. (Checks under way are counted by
//! each replica alone.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::authz_server::store::TokenStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub failures: u32,
    pub window_secs: u64,
}

pub const PER_USER: Limit = Limit {
    failures: 5,
    window_secs: 60,
};
pub const PER_CLIENT: Limit = Limit {
    failures: 20,
    window_secs: 60,
};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    User(String),
    Client(String),
}

impl Subject {
    /// The key of the store's shared counter.
    fn key(&self) -> String {
        match self {
            Subject::User(name) => format!("user:{name}"),
            Subject::Client(id) => format!("client:{id}"),
        }
    }

    fn limit(&self) -> Limit {
        match self {
            Subject::User(_) => PER_USER,
            Subject::Client(_) => PER_CLIENT,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: u64,
    failures: u32,
    /// Password checks under way.
    checking: u32,
}

#[derive(Default)]
pub struct FailedAttempts {
    windows: Mutex<HashMap<Subject, Window>>,
    /// The store, when it shares counts between replicas.
    shared: Option<Arc<dyn TokenStore>>,
}

impl std::fmt::Debug for FailedAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedAttempts")
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl FailedAttempts {
    /// Counts kept here and, when `store` shares them, in the store.
    pub fn shared(store: Arc<dyn TokenStore>) -> FailedAttempts {
        FailedAttempts {
            windows: Mutex::default(),
            shared: store.shares_attempts().then_some(store),
        }
    }

    /// `Err(retry_after_secs)` while `subject` is locked.
    pub fn check(&self, subject: &Subject, now: u64) -> Result<(), u64> {
        let limit = subject.limit();
        {
            let windows = self.lock();
            if let Some(w) = windows.get(subject) {
                if w.failures >= limit.failures && now < w.started + limit.window_secs {
                    return Err(w.started + limit.window_secs - now);
                }
            }
        }
        if let Some(store) = &self.shared {
            match store.attempts_locked(&subject.key(), limit.failures, limit.window_secs, now) {
                Ok(Some(retry_after)) => return Err(retry_after),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "shared failed-attempt count unavailable"),
            }
        }
        Ok(())
    }

    pub fn record_failure(&self, subject: &Subject, now: u64) {
        if let Some(store) = &self.shared {
            let window = subject.limit().window_secs;
            if let Err(error) = store.attempts_record_failure(&subject.key(), window, now) {
                tracing::warn!(%error, "shared failed-attempt count unavailable");
            }
        }
        let mut windows = self.lock();
        windows.retain(|s, w| w.checking > 0 || now < w.started + s.limit().window_secs);
        let window = windows
            .entry(subject.clone())
            .or_insert_with(|| Window::new(now));
        window.failures = window.failures.saturating_add(1);
    }

    pub fn clear(&self, subject: &Subject) {
        if let Some(store) = &self.shared {
            if let Err(error) = store.attempts_clear(&subject.key()) {
                tracing::warn!(%error, "shared failed-attempt count unavailable");
            }
        }
        let mut windows = self.lock();
        match windows.get_mut(subject) {
            Some(window) if window.checking > 0 => window.failures = 0,
            _ => {
                windows.remove(subject);
            }
        }
    }

    /// Checks `user`'s password (`verify`) for `client`, under their
    /// locks: `Err(retry_after_secs)` while either is locked, or while
    /// `user`'s failures and the checks of its passwords under way leave
    /// the lock no room; else whether the password matched, a failure
    /// counted for both or the user's failures cleared.
    pub fn guarded(
        &self,
        client: &Subject,
        user: &Subject,
        now: u64,
        verify: impl FnOnce() -> bool,
    ) -> Result<bool, u64> {
        for subject in [client, user] {
            self.check(subject, now)?;
        }
        // Counted until the outcome is, so that the lock never lapses.
        let _checking = self.begin_check(user, now)?;
        let matched = verify();
        if matched {
            self.clear(user);
        } else {
            self.record_failure(client, now);
            self.record_failure(user, now);
        }
        Ok(matched)
    }

    /// Counts a check of `user`'s password as under way, if its lock has
    /// room for one more.
    fn begin_check(&self, user: &Subject, now: u64) -> Result<Checking<'_>, u64> {
        let limit = user.limit();
        let mut windows = self.lock();
        let window = windows
            .entry(user.clone())
            .or_insert_with(|| Window::new(now));
        if now >= window.started + limit.window_secs {
            *window = Window {
                checking: window.checking,
                ..Window::new(now)
            };
        }
        if window.failures.saturating_add(window.checking) >= limit.failures {
            let locked = window.failures >= limit.failures;
            // Checks under way end within moments; failures, with the window.
            return Err(if locked {
                window.started + limit.window_secs - now
            } else {
                1
            });
        }
        window.checking += 1;
        Ok(Checking {
            attempts: self,
            user: user.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Subject, Window>> {
        // Counters stay meaningful after a panic elsewhere.
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Window {
    fn new(now: u64) -> Window {
        Window {
            started: now,
            failures: 0,
            checking: 0,
        }
    }
}

/// A check of a user's password under way ([`FailedAttempts::guarded`]).
struct Checking<'a> {
    attempts: &'a FailedAttempts,
    user: Subject,
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        let mut windows = self.attempts.lock();
        if let Some(window) = windows.get_mut(&self.user) {
            window.checking = window.checking.saturating_sub(1);
            if window.checking == 0 && window.failures == 0 {
                windows.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_a_user_until_the_window_ends() {
        let attempts = FailedAttempts::default();
        let alice = Subject::User("alice".into());
        for t in 0..5 {
            assert_eq!(attempts.check(&alice, 100 + t), Ok(()));
            attempts.record_failure(&alice, 100 + t);
        }
        assert_eq!(attempts.check(&alice, 110), Err(50));
        assert_eq!(attempts.check(&Subject::User("bob".into()), 110), Ok(()));
        assert_eq!(attempts.check(&alice, 160), Ok(()));
        attempts.record_failure(&alice, 160);
        assert_eq!(attempts.check(&alice, 161), Ok(()));
    }

    #[test]
    fn a_client_has_a_higher_limit() {
        let attempts = FailedAttempts::default();
        let app = Subject::Client("app".into());
        for _ in 0..19 {
            attempts.record_failure(&app, 0);
        }
        assert_eq!(attempts.check(&app, 1), Ok(()));
        attempts.record_failure(&app, 1);
        assert_eq!(attempts.check(&app, 1), Err(59));
    }

    #[test]
    fn checks_under_way_count_against_a_users_lock_until_they_end() {
        let attempts = FailedAttempts::default();
        let app = Subject::Client("app".into());
        let alice = Subject::User("alice".into());
        attempts.record_failure(&alice, 0);
        attempts.record_failure(&alice, 0);
        // Two failures and three checks under way fill the lock.
        let under_way: Vec<Checking> = (0..3)
            .map(|_| attempts.begin_check(&alice, 1).expect("room"))
            .collect();
        assert_eq!(attempts.guarded(&app, &alice, 1, || true), Err(1));
        drop(under_way);
        // Ended without an outcome (a panic): room again.
        assert_eq!(attempts.guarded(&app, &alice, 2, || false), Ok(false));
        assert_eq!(attempts.guarded(&app, &alice, 2, || false), Ok(false));
        assert_eq!(attempts.guarded(&app, &alice, 2, || false), Ok(false));
        assert_eq!(attempts.guarded(&app, &alice, 3, || true), Err(57));
        assert_eq!(attempts.guarded(&app, &alice, 60, || true), Ok(true));
        assert!(attempts.lock().get(&alice).is_none(), "nothing kept");
    }
}
