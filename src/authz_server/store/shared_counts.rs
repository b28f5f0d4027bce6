//! Failure counts shared by replicas through their store, so that a lock
//! holds on every replica: the password logins' ([`FailedAttempts`]) and
//! the client authentications' ([`Failures`]). A store that replicas do
//! not share (SQLite) counts nothing here; each process then counts alone.
//! An unreachable store is logged and counts nothing: the caller's own
//! count, always kept as well, still locks.
//!
//! [`FailedAttempts`]: crate::authz_server::grants::attempts::FailedAttempts
//! [`Failures`]: crate::authz_server::client_auth::Failures

use std::sync::Arc;

use super::TokenStore;

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
                tracing::warn!(%error, "shared failure count unavailable");
                None
            }
        }
    }

    /// Counts one failure of `key` in the current window.
    pub fn record(&self, key: &str, window_secs: u64, now: u64) {
        if let Some(store) = &self.0 {
            if let Err(error) = store.attempts_record_failure(key, window_secs, now) {
                tracing::warn!(%error, "shared failure count unavailable");
            }
        }
    }

    /// Forgets the failures of `key`.
    pub fn clear(&self, key: &str) {
        if let Some(store) = &self.0 {
            if let Err(error) = store.attempts_clear(key) {
                tracing::warn!(%error, "shared failure count unavailable");
            }
        }
    }
}
