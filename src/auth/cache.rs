//! Introspection cache, keyed by SHA-256 of the token and the auth server id.
//!
//! Invariants:
//! - the raw token is never stored: a key is the auth server id plus the
//!   SHA-256 digest of the token, so two auth servers never share an entry;
//! - a positive entry lives `min(cache_ttl, exp - now)` and never outlives the
//!   token's `exp`; an inactive answer lives `negative_cache_ttl`;
//! - errors are never cached: the caller answers 503 and the next request asks
//!   the introspection endpoint again;
//! - concurrent misses for one key share one introspection call (single
//!   flight); when the leading call fails every waiter gets its error, and when
//!   the leading caller is dropped mid-flight the waiters start over;
//! - the number of entries never exceeds the capacity given at construction.
//!
//! Scopes are not decided here: the cached value is the principal (or the fact
//! that the token is inactive), and the route decides on every hit.
//!
//! Entry lifetimes run on `tokio::time::Instant` (tests pause the clock);
//! a token's `exp` is compared with the caller's `now: SystemTime`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{AuthFailure, Principal};

/// What an introspection endpoint said about a token (RFC 7662 §2.2).
#[derive(Debug, Clone, PartialEq)]
pub enum Introspected {
    /// `"active": true`, with the claims made into a principal.
    Active(Arc<Principal>),
    /// `"active": false`: revoked, expired or unknown to the server.
    Inactive,
}

/// How long answers of one auth server may be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheTtl {
    /// Upper bound for an active token; never past its `exp`.
    pub positive: Duration,
    /// Lifetime of an inactive answer.
    pub negative: Duration,
}

impl CacheTtl {
    /// How long `answer`, received at `now`, may be served from the cache.
    /// Zero means "do not cache".
    pub fn lifetime(&self, answer: &Introspected, now: SystemTime) -> Duration {
        match answer {
            Introspected::Inactive => self.negative,
            Introspected::Active(principal) => match principal.expires_at {
                None => self.positive,
                Some(exp) => self.positive.min(time_left(exp, now)),
            },
        }
    }
}

/// Time left until the Unix time `exp`, zero when it has passed.
pub(crate) fn time_left(exp: u64, now: SystemTime) -> Duration {
    let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Duration::from_secs(exp).saturating_sub(now)
}

/// Cache key: auth server id and SHA-256 of the token, never the token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    auth_server: Arc<str>,
    token_digest: [u8; 32],
}

impl CacheKey {
    pub fn new(auth_server: &Arc<str>, token: &str) -> CacheKey {
        CacheKey {
            auth_server: Arc::clone(auth_server),
            token_digest: Sha256::digest(token.as_bytes()).into(),
        }
    }
}

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only a prefix of the digest: enough to tell keys apart in a log.
        let prefix: String = self.token_digest[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        write!(f, "CacheKey({}, sha256:{prefix}…)", self.auth_server)
    }
}

type Shared = Result<Introspected, AuthFailure>;

struct Entry {
    value: Introspected,
    /// Position in `Store::by_expiry`: expiry instant and insertion number.
    slot: (Instant, u64),
}

struct InFlight {
    id: u64,
    answer: watch::Receiver<Option<Shared>>,
}

#[derive(Default)]
struct Store {
    entries: HashMap<CacheKey, Entry>,
    /// Every entry once, soonest expiry first: expired entries sit at the
    /// front, and when the cache is full the front is the one to lose.
    by_expiry: BTreeMap<(Instant, u64), CacheKey>,
    flights: HashMap<CacheKey, InFlight>,
    next_id: u64,
}

impl Store {
    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Removes `flight` from the in-flight map if it is still there (a
    /// later flight of the same key is left alone); tells whether it was.
    fn unregister(&mut self, flight: &Flight<'_>) -> bool {
        let registered = self
            .flights
            .get(&flight.key)
            .is_some_and(|f| f.id == flight.id);
        if registered {
            self.flights.remove(&flight.key);
        }
        registered
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_expiry.remove(&entry.slot);
        }
    }

    fn purge_expired(&mut self, now: Instant) {
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
        }
    }

    fn evict_soonest(&mut self) {
        if let Some((_, key)) = self.by_expiry.pop_first() {
            self.entries.remove(&key);
        }
    }
}

enum Lookup<'a> {
    Hit(Introspected),
    Wait(watch::Receiver<Option<Shared>>),
    Lead(Flight<'a>),
}

/// The leading caller's claim on a key; dropping it unregisters the flight,
/// which wakes the waiters (their receiver sees the sender gone) so that
/// they retry instead of waiting forever.
struct Flight<'a> {
    cache: &'a IntrospectionCache,
    id: u64,
    key: CacheKey,
    answer: watch::Sender<Option<Shared>>,
}

/// Bounded, single-flight cache of introspection answers, shared by every
/// auth server of a gateway.
pub struct IntrospectionCache {
    capacity: usize,
    store: Mutex<Store>,
}

impl std::fmt::Debug for IntrospectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionCache")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl IntrospectionCache {
    /// A cache holding at most `capacity` answers (0 disables caching, but
    /// concurrent misses are still coalesced).
    pub fn new(capacity: usize) -> IntrospectionCache {
        IntrospectionCache {
            capacity,
            store: Mutex::new(Store::default()),
        }
    }

    /// Number of entries held, expired ones not yet purged included.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry of one auth server, and detaches its flights so that
    /// an answer obtained with the old settings is not cached (hot reload).
    pub fn clear_auth_server(&self, id: &str) {
        let mut store = self.lock();
        let Store {
            entries,
            by_expiry,
            flights,
            ..
        } = &mut *store;
        entries.retain(|key, entry| {
            let keep = &*key.auth_server != id;
            if !keep {
                by_expiry.remove(&entry.slot);
            }
            keep
        });
        flights.retain(|key, _| &*key.auth_server != id);
    }

    /// The cached answer for `key`, or the result of `introspect`, called at
    /// most once per caller and shared with concurrent callers of the same key.
    /// A successful answer is cached for `ttl.lifetime(answer, now)`.
    #[allow(
        clippy::expect_used,
        reason = "a caller leads at most once: the leading branch always returns"
    )]
    pub async fn get_or_introspect<F, Fut>(
        &self,
        key: &CacheKey,
        ttl: CacheTtl,
        now: SystemTime,
        introspect: F,
    ) -> Shared
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Shared>,
    {
        let mut introspect = Some(introspect);
        loop {
            match self.lookup(key) {
                Lookup::Hit(answer) => return Ok(answer),
                Lookup::Wait(mut answer) => match answer.wait_for(Option::is_some).await {
                    Ok(shared) => {
                        if let Some(answer) = shared.clone() {
                            return answer;
                        }
                    }
                    // The leader was dropped before answering: start over.
                    Err(_) => continue,
                },
                Lookup::Lead(flight) => {
                    let introspect = introspect
                        .take()
                        .expect("a caller leads at most once: leading always returns");
                    let result = introspect().await;
                    self.finish(&flight, ttl, now, &result);
                    let _ = flight.answer.send(Some(result.clone()));
                    return result;
                }
            }
        }
    }

    fn lookup(&self, key: &CacheKey) -> Lookup<'_> {
        let metrics = crate::metrics::introspection_cache();
        let mut store = self.lock();
        if let Some(entry) = store.entries.get(key) {
            if entry.slot.0 > Instant::now() {
                match entry.value {
                    Introspected::Active(_) => metrics.hit.inc(),
                    Introspected::Inactive => metrics.negative_hit.inc(),
                }
                return Lookup::Hit(entry.value.clone());
            }
            store.remove(key);
        }
        if let Some(flight) = store.flights.get(key) {
            metrics.coalesced.inc();
            return Lookup::Wait(flight.answer.clone());
        }
        metrics.miss.inc();
        let id = store.take_id();
        let (answer, receiver) = watch::channel(None);
        store.flights.insert(
            key.clone(),
            InFlight {
                id,
                answer: receiver,
            },
        );
        Lookup::Lead(Flight {
            cache: self,
            id,
            key: key.clone(),
            answer,
        })
    }

    /// Unregisters the flight and caches a successful answer, in one critical
    /// section so that a new caller sees either the flight or the entry.
    fn finish(&self, flight: &Flight<'_>, ttl: CacheTtl, now: SystemTime, result: &Shared) {
        let mut store = self.lock();
        if !store.unregister(flight) {
            // `clear_auth_server` ran meanwhile: the answer may be stale.
            return;
        }
        let Ok(answer) = result else { return };
        let lifetime = ttl.lifetime(answer, now);
        if lifetime.is_zero() || self.capacity == 0 {
            return;
        }
        let at = Instant::now();
        // Bounded by the configuration; one past the clock's range is not
        // cached (the request is answered all the same).
        let Some(expires) = at.checked_add(lifetime) else {
            return;
        };
        store.remove(&flight.key);
        store.purge_expired(at);
        while store.entries.len() >= self.capacity {
            store.evict_soonest();
        }
        let slot = (expires, store.take_id());
        store.by_expiry.insert(slot, flight.key.clone());
        store.entries.insert(
            flight.key.clone(),
            Entry {
                value: answer.clone(),
                slot,
            },
        );
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        // No code path panics while holding the lock halfway through a change,
        // so the state behind a poisoned lock is still consistent.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        // Runs before `answer` is dropped: by the time the waiters wake up
        // (sender gone), the key is free and one of them leads the retry.
        self.cache.lock().unregister(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TTL: CacheTtl = CacheTtl {
        positive: Duration::from_secs(60),
        negative: Duration::from_secs(5),
    };

    fn server(id: &str) -> Arc<str> {
        Arc::from(id)
    }

    fn active(exp: Option<u64>) -> Introspected {
        let mut claims = serde_json::Map::new();
        claims.insert("active".into(), json!(true));
        if let Some(exp) = exp {
            claims.insert("exp".into(), json!(exp));
        }
        Introspected::Active(Arc::new(
            Principal::from_claims(server("a"), claims).expect("no scope claim"),
        ))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn unavailable() -> AuthFailure {
        AuthFailure::Unavailable {
            auth_server: server("a"),
            cause: "down".into(),
        }
    }

    #[test]
    fn key_is_digest_of_token_per_auth_server() {
        let a = server("a");
        let b = server("b");
        assert_eq!(CacheKey::new(&a, "tok"), CacheKey::new(&a, "tok"));
        assert_ne!(CacheKey::new(&a, "tok"), CacheKey::new(&b, "tok"));
        assert_ne!(CacheKey::new(&a, "tok"), CacheKey::new(&a, "tok2"));
        let expected: [u8; 32] = Sha256::digest(b"tok").into();
        assert_eq!(CacheKey::new(&a, "tok").token_digest, expected);
    }

    #[test]
    fn key_debug_never_shows_the_token() {
        let shown = format!("{:?}", CacheKey::new(&server("a"), "secret-token-value"));
        assert!(!shown.contains("secret-token-value"), "{shown}");
        assert!(shown.starts_with("CacheKey(a, sha256:"), "{shown}");
    }

    #[test]
    fn positive_lifetime_is_capped_by_exp() {
        assert_eq!(
            TTL.lifetime(&active(Some(1_010)), at(1_000)),
            Duration::from_secs(10)
        );
        assert_eq!(
            TTL.lifetime(&active(Some(5_000)), at(1_000)),
            Duration::from_secs(60)
        );
        assert_eq!(
            TTL.lifetime(&active(Some(1_000)), at(1_000) + Duration::from_millis(400)),
            Duration::ZERO
        );
        assert_eq!(
            TTL.lifetime(&active(Some(1_001)), at(1_000) + Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        assert_eq!(TTL.lifetime(&active(Some(900)), at(1_000)), Duration::ZERO);
    }

    #[test]
    fn token_without_exp_lives_cache_ttl_and_inactive_lives_negative_ttl() {
        assert_eq!(
            TTL.lifetime(&active(None), at(1_000)),
            Duration::from_secs(60)
        );
        assert_eq!(
            TTL.lifetime(&Introspected::Inactive, at(1_000)),
            Duration::from_secs(5)
        );
    }

    async fn fill(cache: &IntrospectionCache, token: &str, ttl: CacheTtl) {
        let key = CacheKey::new(&server("a"), token);
        cache
            .get_or_introspect(&key, ttl, at(0), || async { Ok(active(None)) })
            .await
            .expect("the test introspection succeeds");
    }

    async fn count_calls(cache: &IntrospectionCache, token: &str, calls: &AtomicUsize) -> Shared {
        let key = CacheKey::new(&server("a"), token);
        cache
            .get_or_introspect(&key, TTL, at(0), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(active(None))
            })
            .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_lifetime_past_the_clock_is_not_cached_and_does_not_panic() {
        let cache = IntrospectionCache::new(3);
        let endless = CacheTtl {
            positive: Duration::MAX,
            negative: Duration::MAX,
        };
        fill(&cache, "t", endless).await;
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_never_exceeded() {
        let cache = IntrospectionCache::new(3);
        for i in 0..10 {
            fill(&cache, &format!("t{i}"), TTL).await;
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn full_cache_drops_expired_entries_before_live_ones() {
        let cache = IntrospectionCache::new(3);
        let short = CacheTtl {
            positive: Duration::from_secs(1),
            ..TTL
        };
        fill(&cache, "short1", short).await;
        fill(&cache, "long", TTL).await;
        fill(&cache, "short2", short).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        fill(&cache, "new", TTL).await;
        assert_eq!(cache.len(), 2);
        let calls = AtomicUsize::new(0);
        count_calls(&cache, "long", &calls).await.expect("ok");
        count_calls(&cache, "new", &calls).await.expect("ok");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "live entries were kept");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_capacity_caches_nothing() {
        let cache = IntrospectionCache::new(0);
        let calls = AtomicUsize::new(0);
        count_calls(&cache, "t", &calls).await.expect("ok");
        count_calls(&cache, "t", &calls).await.expect("ok");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn entry_expires_after_its_lifetime() {
        let cache = IntrospectionCache::new(10);
        let calls = AtomicUsize::new(0);
        count_calls(&cache, "t", &calls).await.expect("ok");
        tokio::time::advance(Duration::from_secs(59)).await;
        count_calls(&cache, "t", &calls).await.expect("ok");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        count_calls(&cache, "t", &calls).await.expect("ok");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_call() {
        let cache = IntrospectionCache::new(10);
        let calls = AtomicUsize::new(0);
        let key = CacheKey::new(&server("a"), "t");
        let one = || {
            cache.get_or_introspect(&key, TTL, at(0), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(active(None))
            })
        };
        let results = futures_util::future::join_all((0..64).map(|_| one())).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| *r == Ok(active(None))));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_leader_fails_every_waiter_and_caches_nothing() {
        let cache = IntrospectionCache::new(10);
        let calls = AtomicUsize::new(0);
        let key = CacheKey::new(&server("a"), "t");
        let one = || {
            cache.get_or_introspect(&key, TTL, at(0), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(unavailable())
            })
        };
        let results = futures_util::future::join_all((0..8).map(|_| one())).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| *r == Err(unavailable())));
        assert!(cache.is_empty());
        count_calls(&cache, "t", &calls).await.expect("retried");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_leader_does_not_wedge_waiters() {
        let cache = Arc::new(IntrospectionCache::new(10));
        let key = CacheKey::new(&server("a"), "t");
        let leader = {
            let (cache, key) = (Arc::clone(&cache), key.clone());
            tokio::spawn(async move {
                cache
                    .get_or_introspect(&key, TTL, at(0), || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(Introspected::Inactive)
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = {
            let (cache, key) = (Arc::clone(&cache), key.clone());
            tokio::spawn(async move {
                cache
                    .get_or_introspect(&key, TTL, at(0), || async { Ok(active(None)) })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        leader.abort();
        let answer = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("the waiter is not wedged")
            .expect("the waiter task completes");
        assert_eq!(answer, Ok(active(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn clearing_an_auth_server_drops_its_entries_and_running_flights() {
        let cache = IntrospectionCache::new(10);
        let (a, b) = (server("a"), server("b"));
        for id in [&a, &b] {
            cache
                .get_or_introspect(&CacheKey::new(id, "t"), TTL, at(0), || async {
                    Ok(Introspected::Inactive)
                })
                .await
                .expect("ok");
        }
        assert_eq!(cache.len(), 2);
        cache.clear_auth_server("a");
        assert_eq!(cache.len(), 1);

        let key = CacheKey::new(&a, "t2");
        cache
            .get_or_introspect(&key, TTL, at(0), || async {
                cache.clear_auth_server("a");
                Ok(Introspected::Inactive)
            })
            .await
            .expect("the answer still reaches the caller");
        assert_eq!(
            cache.len(),
            1,
            "an answer from before the clear is not cached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inactive_answer_is_cached_for_the_negative_ttl() {
        let cache = IntrospectionCache::new(10);
        let calls = AtomicUsize::new(0);
        let key = CacheKey::new(&server("a"), "t");
        let ask = || {
            cache.get_or_introspect(&key, TTL, at(0), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok(Introspected::Inactive)
            })
        };
        assert_eq!(ask().await, Ok(Introspected::Inactive));
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert_eq!(ask().await, Ok(Introspected::Inactive));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(ask().await, Ok(Introspected::Inactive));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
