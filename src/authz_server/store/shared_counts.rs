//! Failure counts shared by replicas through their store, so that a lock
//! holds on every replica: the password logins' ([`FailedAttempts`]) and
//! the client authentications' ([`Failures`]). A store that replicas do
//! not share (SQLite) counts nothing here; each process then counts alone.
//! An unreachable store is logged (once per 10 s, however many attempts
//! come meanwhile) and counts nothing: the caller's own count, always
//! kept as well, still locks.
//!
//! [`FailedAttempts`]: crate::authz_server::grants::attempts::FailedAttempts
//! [`Failures`]: crate::authz_server::client_auth::Failures

use std::sync::Arc;

use super::{StoreError, TokenStore};

/// One line per 10 s for a store the shared counts cannot reach: every
/// login and client authentication would otherwise write two.
fn unavailable(error: &StoreError) {
    static LOGGED: crate::logging::Sparse = crate::logging::Sparse::new();
    if let Some(suppressed) = LOGGED.due() {
        tracing::warn!(%error, suppressed, "shared failure count unavailable");
    }
}

#[derive(Clone, Default)]
pub struct SharedCounts(Option<Arc<dyn TokenStore>>);

impl std::fmt::Debug for SharedCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedCounts")
            .field(&self.0.is_some())
            .finish()
    }
}

impl SharedCounts {
    /// Counts in `store` when replicas share it; none otherwise.
    pub fn of(store: Arc<dyn TokenStore>) -> SharedCounts {
        SharedCounts(store.is_shared().then_some(store))
    }

    /// `Some(retry_after_secs)` while `key` has `limit` failures in a
    /// window of `window_secs` that has not ended.
    pub fn locked(&self, key: &str, limit: u32, window_secs: u64, now: u64) -> Option<u64> {
        let store = self.0.as_ref()?;
        match store.attempts_locked(key, limit, window_secs, now) {
            Ok(locked) => locked,
            Err(error) => {
                unavailable(&error);
                None
            }
        }
    }

    /// Counts one failure of `key` in the current window.
    pub fn record(&self, key: &str, window_secs: u64, now: u64) {
        if let Some(store) = &self.0 {
            if let Err(error) = store.attempts_record_failure(key, window_secs, now) {
                unavailable(&error);
            }
        }
    }

    /// Forgets the failures of `key`.
    pub fn clear(&self, key: &str) {
        if let Some(store) = &self.0 {
            if let Err(error) = store.attempts_clear(key) {
                unavailable(&error);
            }
        }
    }
}
