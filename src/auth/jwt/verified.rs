//! Tokens whose signature and static claims already verified, keyed by the
//! SHA-256 of the token, so a client's repeated requests cost one signature
//! check. Invariants: only fully validated tokens enter; an entry is never
//! returned after its `exp` (plus leeway) — the caller re-checks the times
//! with its `now` on every hit; the size is bounded (expired entries are
//! evicted first, then an arbitrary one). Locks are held for a map
//! operation only, never across a clone of the claims or an `await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::Validity;
use crate::auth::jwks::VerifyKey;
use crate::auth::Principal;

pub(super) type Digest = [u8; 32];

/// What a hit needs: the principal, its times, and the key that verified
/// it (a hit counts only while the JWKS still has that key).
pub(super) struct Verified {
    pub principal: Arc<Principal>,
    pub validity: Validity,
    pub kid: Option<String>,
    pub key: Arc<VerifyKey>,
}

type Shard = HashMap<Digest, Arc<Verified>>;

pub(super) struct VerifiedCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
}

/// Enough shards that concurrent requests rarely meet on one lock.
const SHARDS: usize = 16;

impl VerifiedCache {
    pub(super) fn new(capacity: usize) -> VerifiedCache {
        let shards = if capacity >= SHARDS * 64 { SHARDS } else { 1 };
        VerifiedCache {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(shards),
        }
    }

    fn shard(&self, digest: &Digest) -> MutexGuard<'_, Shard> {
        let index = usize::from(digest[0]) % self.shards.len();
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, digest: &Digest) -> Option<Arc<Verified>> {
        self.shard(digest).get(digest).cloned()
    }

    pub(super) fn remove(&self, digest: &Digest) {
        self.shard(digest).remove(digest);
    }

    /// Stores an entry; `expired` tells which entries may go first.
    pub(super) fn insert(
        &self,
        digest: Digest,
        verified: Arc<Verified>,
        expired: impl Fn(&Validity) -> bool,
    ) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self.shard(&digest);
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            shard.retain(|_, entry| !expired(&entry.validity));
            if shard.len() >= self.per_shard {
                if let Some(victim) = shard.keys().next().copied() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(digest, verified);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::KeySet;
    use serde_json::Map;

    fn entry(exp: f64) -> Arc<Verified> {
        let set = KeySet::from_json(
            br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM"}]}"#,
        )
        .expect("one key");
        Arc::new(Verified {
            principal: Arc::new(
                Principal::from_claims("a".into(), Map::new()).expect("no scope claim"),
            ),
            validity: Validity { exp, nbf: None },
            kid: None,
            key: set.find(None).expect("the key"),
        })
    }

    fn digest(n: u8) -> Digest {
        [n; 32]
    }

    #[test]
    fn full_cache_evicts_expired_entries_first() {
        let cache = VerifiedCache::new(3);
        cache.insert(digest(1), entry(100.0), |_| false);
        cache.insert(digest(2), entry(10.0), |_| false);
        cache.insert(digest(3), entry(100.0), |_| false);
        cache.insert(digest(4), entry(100.0), |v| v.exp < 50.0);
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&digest(2)).is_none());
        assert!(cache.get(&digest(1)).is_some());
        assert!(cache.get(&digest(4)).is_some());
    }

    #[test]
    fn capacity_is_a_bound() {
        let cache = VerifiedCache::new(SHARDS * 64);
        for n in 0..=255 {
            for m in 0..8 {
                let mut key = digest(n);
                key[1] = m;
                cache.insert(key, entry(100.0), |_| false);
            }
        }
        assert!(cache.len() <= SHARDS * 64);
        let none = VerifiedCache::new(0);
        none.insert(digest(1), entry(100.0), |_| false);
        assert!(none.get(&digest(1)).is_none());
    }
}
