//! The JWK Set lifecycle of one auth server: where its keys come from, when
//! they are fetched again, and which key a token's `kid` gets.
//!
//! Invariants: a failed fetch never replaces a good set; an unknown `kid`
//! (or a set never loaded) causes at most one fetch per cooldown across all
//! callers, concurrent callers sharing it, so random kids cannot hammer the
//! IdP; without any set a token is unavailable (503), never accepted, and
//! so is a token with an unknown `kid` whose fetch (made or waited for)
//! failed: the key may have been rotated in. Keys
//! published in-process ([`JwksSource::local`]) are never fetched.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::fetch::{Fetched, Fetcher};
use super::{JwksError, KeySet, VerifyKey};
use crate::auth::{AuthFailure, TokenProblem};

/// How often a fetched set is fetched again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Shortest interval, whatever `Cache-Control` says.
    pub min: Duration,
    /// Longest interval, whatever `Cache-Control` says: a key the
    /// auth server withdrew (rotated out, compromised) is trusted at most
    /// this long after (IdPs advertise up to a day or more).
    pub max: Duration,
    /// Interval when the response has no `max-age`.
    pub default: Duration,
    /// Interval after the first failed fetch in a row; it doubles with
    /// each further failure, up to `retry`.
    pub first_retry: Duration,
    /// Longest interval after a failed fetch.
    pub retry: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            min: Duration::from_secs(60),
            max: Duration::from_secs(60 * 60),
            default: Duration::from_secs(5 * 60),
            first_retry: Duration::from_secs(1),
            retry: Duration::from_secs(30),
        }
    }
}

impl RefreshPolicy {
    /// The interval after a successful fetch whose response had `max_age`.
    pub fn interval(&self, max_age: Option<Duration>) -> Duration {
        max_age.map_or(self.default, |age| age.clamp(self.min, self.max))
    }

    /// The interval after `failures` failed fetches in a row (at least
    /// one): an auth server that comes up shortly after the gateway is
    /// found within seconds, one that stays down is asked every `retry`.
    pub fn retry_after(&self, failures: u32) -> Duration {
        let doubled = 1u32
            .checked_shl(failures.saturating_sub(1))
            .and_then(|factor| self.first_retry.checked_mul(factor));
        doubled.map_or(self.retry, |after| after.min(self.retry))
    }
}

/// Where and how to fetch an auth server's JWK Set.
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    /// Expected `issuer` of discovered metadata; discovery starts from it.
    pub issuer: String,
    /// The set's URI; `None` discovers it from `issuer`.
    pub jwks_uri: Option<String>,
    /// A discovered `jwks_uri` may be plain `http://` to a host that is
    /// not loopback (as `allow_insecure_http` lets a configured one).
    pub allow_insecure_http: bool,
    /// The gateway's shared client.
    pub client: reqwest::Client,
    /// Bound on one whole fetch, discovery included.
    pub fetch_timeout: Duration,
    /// Least time between two fetches caused by unknown kids.
    pub unknown_kid_cooldown: Duration,
    pub refresh: RefreshPolicy,
}

impl RemoteOptions {
    pub fn new(
        issuer: impl Into<String>,
        jwks_uri: Option<String>,
        client: reqwest::Client,
    ) -> Self {
        RemoteOptions {
            issuer: issuer.into(),
            jwks_uri,
            allow_insecure_http: false,
            client,
            fetch_timeout: Duration::from_secs(5),
            unknown_kid_cooldown: Duration::from_secs(30),
            refresh: RefreshPolicy::default(),
        }
    }
}

/// The keys of one auth server, fetched or published in-process.
pub struct JwksSource {
    auth_server: Arc<str>,
    origin: Origin,
}

enum Origin {
    Local(Arc<ArcSwap<KeySet>>),
    Remote(Box<Remote>),
}

struct Remote {
    fetcher: Fetcher,
    fetch_timeout: Duration,
    cooldown: Duration,
    policy: RefreshPolicy,
    keys: ArcSwapOption<KeySet>,
    etag: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    /// Completed fetch attempts: a caller that waited for the fetch lock
    /// sees a change and reuses that fetch instead of making its own.
    attempts: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
    next_refresh: Mutex<Duration>,
    /// Failed fetches since the last good one.
    failures: AtomicU32,
    /// `jwks_refresh_total{auth_server, result}`.
    counts: crate::metrics::AuthServerCounts,
}

/// What a caller with an unknown `kid` got: a fetch it made or waited
/// for, that fetch failing, or none within the cooldown.
enum Refetch {
    Fetched,
    Failed,
    CoolingDown,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl JwksSource {
    pub fn remote(auth_server: Arc<str>, options: RemoteOptions) -> JwksSource {
        let remote = Remote {
            fetcher: Fetcher::new(
                options.client,
                options.issuer,
                options.jwks_uri,
                options.allow_insecure_http,
            ),
            fetch_timeout: options.fetch_timeout,
            cooldown: options.unknown_kid_cooldown,
            policy: options.refresh,
            keys: ArcSwapOption::empty(),
            etag: Mutex::new(None),
            last_error: Mutex::new(None),
            attempts: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_unknown_kid_fetch: Mutex::new(None),
            next_refresh: Mutex::new(Duration::ZERO),
            failures: AtomicU32::new(0),
            counts: crate::metrics::AuthServerCounts::jwks(auth_server.clone()),
        };
        JwksSource {
            auth_server,
            origin: Origin::Remote(Box::new(remote)),
        }
    }

    /// Keys the local authorization server publishes by storing a new set.
    pub fn local(auth_server: Arc<str>, keys: Arc<ArcSwap<KeySet>>) -> JwksSource {
        JwksSource {
            auth_server,
            origin: Origin::Local(keys),
        }
    }

    pub fn auth_server(&self) -> &Arc<str> {
        &self.auth_server
    }

    /// True once a key set is there to verify tokens with.
    pub fn is_ready(&self) -> bool {
        match &self.origin {
            Origin::Local(keys) => !keys.load().is_empty(),
            Origin::Remote(remote) => remote.keys.load().is_some(),
        }
    }

    /// Fetches the set now; on failure the last good set stays.
    pub async fn refresh(&self) -> Result<(), JwksError> {
        match &self.origin {
            Origin::Local(_) => Ok(()),
            Origin::Remote(remote) => {
                let _turn = remote.fetch_lock.lock().await;
                self.fetch_and_store(remote).await
            }
        }
    }

    /// How long the background task waits before its next fetch.
    pub fn refresh_interval(&self) -> Duration {
        match &self.origin {
            Origin::Local(_) => Duration::MAX,
            Origin::Remote(remote) => *locked(&remote.next_refresh),
        }
    }

    /// Refreshes in the background until the source is dropped.
    pub fn spawn_refresh(self: &Arc<Self>) -> JoinHandle<()> {
        let source = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let delay = match source.upgrade() {
                    Some(source) if matches!(source.origin, Origin::Remote(_)) => {
                        source.refresh_interval()
                    }
                    _ => return,
                };
                tokio::time::sleep(delay).await;
                let Some(source) = source.upgrade() else {
                    return;
                };
                // A failure is counted and logged; the last good set stays.
                let _kept = source.refresh().await;
            }
        })
    }

    /// The key for a token's `kid` in the set loaded now; never fetches.
    pub fn loaded_key(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match &self.origin {
            Origin::Local(keys) => keys.load().find(kid),
            Origin::Remote(remote) => remote.keys.load().as_ref()?.find(kid),
        }
    }

    /// The key for a token's `kid`, fetching the set again (within the
    /// cooldown) when the kid is unknown, as after a key rotation.
    pub async fn key_for(&self, kid: Option<&str>) -> Result<Arc<VerifyKey>, AuthFailure> {
        if let Some(key) = self.loaded_key(kid) {
            return Ok(key);
        }
        match &self.origin {
            Origin::Local(keys) if keys.load().is_empty() => Err(self.unavailable(None)),
            Origin::Local(_) => Err(AuthFailure::Invalid(TokenProblem::UnknownKey)),
            Origin::Remote(remote) => {
                let refetch = self.refetch_for_unknown_key(remote).await;
                let Some(set) = remote.keys.load_full() else {
                    return Err(self.unavailable(locked(&remote.last_error).clone()));
                };
                match (set.find(kid), refetch) {
                    (Some(key), _) => Ok(key),
                    // The auth server could not say whether it has the key
                    // now (rotated in): unavailable, not invalid.
                    (None, Refetch::Failed) => Err(AuthFailure::Unavailable {
                        auth_server: self.auth_server.clone(),
                        cause: format!(
                            "JWK Set fetch for an unknown key failed: {}",
                            locked(&remote.last_error)
                                .as_deref()
                                .unwrap_or("unknown error")
                        ),
                    }),
                    (None, Refetch::Fetched | Refetch::CoolingDown) => {
                        Err(AuthFailure::Invalid(TokenProblem::UnknownKey))
                    }
                }
            }
        }
    }

    fn unavailable(&self, last_error: Option<String>) -> AuthFailure {
        AuthFailure::Unavailable {
            auth_server: self.auth_server.clone(),
            cause: match last_error {
                Some(error) => format!("no JWK Set loaded: {error}"),
                None => "no JWK Set loaded".to_owned(),
            },
        }
    }

    async fn refetch_for_unknown_key(&self, remote: &Remote) -> Refetch {
        let seen = remote.attempts.load(Ordering::Acquire);
        let _turn = remote.fetch_lock.lock().await;
        if remote.attempts.load(Ordering::Acquire) != seen {
            // A fetch ended while this caller waited; under the lock,
            // `failures` is that of the last one.
            return match remote.failures.load(Ordering::Acquire) {
                0 => Refetch::Fetched,
                _ => Refetch::Failed,
            };
        }
        {
            let mut last = locked(&remote.last_unknown_kid_fetch);
            let now = Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < remote.cooldown) {
                return Refetch::CoolingDown;
            }
            *last = Some(now);
        }
        // A failure is counted and logged; the last good set stays.
        match self.fetch_and_store(remote).await {
            Ok(()) => Refetch::Fetched,
            Err(_) => Refetch::Failed,
        }
    }

    /// One fetch; the caller holds the fetch lock.
    async fn fetch_and_store(&self, remote: &Remote) -> Result<(), JwksError> {
        let etag = match remote.keys.load().is_some() {
            true => locked(&remote.etag).clone(),
            false => None,
        };
        let fetched = remote
            .fetcher
            .fetch(etag.as_deref(), remote.fetch_timeout)
            .await;
        let result = match fetched {
            Ok(Fetched::Keys { set, etag, max_age }) => {
                remote.keys.store(Some(Arc::new(set)));
                *locked(&remote.etag) = etag;
                *locked(&remote.last_error) = None;
                *locked(&remote.next_refresh) = remote.policy.interval(max_age);
                remote.failures.store(0, Ordering::Release);
                remote.counts.count("ok");
                Ok(())
            }
            Ok(Fetched::NotModified { max_age }) => {
                *locked(&remote.next_refresh) = remote.policy.interval(max_age);
                remote.failures.store(0, Ordering::Release);
                remote.counts.count("not_modified");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(
                    auth_server = %self.auth_server,
                    %error,
                    "JWKS fetch failed; keeping the last good key set"
                );
                *locked(&remote.last_error) = Some(error.to_string());
                let failures = remote.failures.fetch_add(1, Ordering::AcqRel) + 1;
                *locked(&remote.next_refresh) = remote.policy.retry_after(failures);
                remote.counts.count("error");
                Err(error)
            }
        };
        remote.attempts.fetch_add(1, Ordering::Release);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_clamped_to_a_minute_and_an_hour() {
        let policy = RefreshPolicy::default();
        let secs = |age: Option<u64>| policy.interval(age.map(Duration::from_secs)).as_secs();
        assert_eq!(secs(None), 300);
        assert_eq!(secs(Some(0)), 60);
        assert_eq!(secs(Some(59)), 60);
        assert_eq!(secs(Some(600)), 600);
        assert_eq!(secs(Some(3_600)), 3_600);
        assert_eq!(secs(Some(86_400)), 3_600);
        assert_eq!(secs(Some(u64::MAX)), 3_600);
    }

    #[test]
    fn retries_start_at_a_second_and_double_up_to_the_cap() {
        let policy = RefreshPolicy::default();
        let secs = |failures| policy.retry_after(failures).as_secs();
        assert_eq!(
            (1..=7).map(secs).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 30, 30]
        );
        assert_eq!(secs(40), 30);
        assert_eq!(secs(u32::MAX), 30);
    }

    #[tokio::test]
    async fn local_keys_are_never_fetched() {
        let keys = Arc::new(ArcSwap::from_pointee(KeySet::default()));
        let source = JwksSource::local("local".into(), keys.clone());
        assert!(!source.is_ready());
        assert!(matches!(
            source.key_for(Some("k")).await,
            Err(AuthFailure::Unavailable { .. })
        ));
        let set = KeySet::from_json(
            br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM"}]}"#,
        )
        .expect("one Ed25519 key");
        keys.store(Arc::new(set));
        assert!(source.is_ready());
        assert!(source.key_for(Some("k")).await.is_ok());
        assert_eq!(
            source.key_for(Some("other")).await.err(),
            Some(AuthFailure::Invalid(TokenProblem::UnknownKey))
        );
    }
}
