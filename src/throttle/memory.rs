//! The memory store: one process counts alone. Keys are spread over
//! shards, each behind its own mutex, so threads counting different keys
//! rarely meet. Bounded: a shard holds at most its share of `max_keys`;
//! when full, expired keys go first (an expired key is a full bucket, so
//! nothing is lost), then the partitioned keys (per application or client
//! address: as many as there are clients) nearest to expiry, an eighth of
//! the shard at once, never one the request being counted has just
//! written. A whole key (a policy
//! counting a whole API or API scope) is never evicted: the configuration
//! bounds how many there are, and evicting one would give every client
//! the whole quota back. A shard holds more than its share only when
//! those alone fill it.
//!
//! A key is hashed once per request (foldhash, seeded per process): the
//! hash picks the shard and finds the key in it.
//!
//! A whole key's count is a shared atomic ([`Count::Shared`]), the very
//! counter a policy that counts in one number holds
//! ([`ThrottlePolicy::sole`]): whichever way a snapshot counts a policy,
//! by key or by its counter, and however a reload changes that, every
//! request lands on the one number while both snapshots serve.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::gcra::Rate;
use super::{Key, Levels, Party};
use crate::config::snapshot::{Tat, ThrottlePolicy};

const SHARDS: usize = 32;

/// Keys and their theoretical arrival times (µs), with their hashes.
type Shard = HashTable<Entry>;

/// A key as the store keeps it.
struct Entry {
    hash: u64,
    policy: Arc<str>,
    party: Option<KeptParty>,
    ip: Option<IpAddr>,
    count: Count,
}

/// A key's theoretical arrival time (µs): its own, or, for a whole key,
/// the counter its policy may count on without the store.
enum Count {
    Own(u64),
    Shared(Arc<Tat>),
}

impl Count {
    fn of(key: &Key<'_>, tat: u64) -> Count {
        if key.party.is_none() && key.ip.is_none() {
            Count::Shared(Arc::new(Tat::new(AtomicU64::new(tat))))
        } else {
            Count::Own(tat)
        }
    }

    fn get(&self) -> u64 {
        match self {
            Count::Own(tat) => *tat,
            Count::Shared(tat) => tat.load(Ordering::Relaxed),
        }
    }

    /// Counts one request found to fit under the shard's lock: the TAT
    /// moves on one interval from where it is now. A shared counter may
    /// have been moved since it was read, by a policy's counter that
    /// counts without the lock (a snapshot from before a reload): it is
    /// checked again, and the key's level is the error if the request no
    /// longer fits. Returns the new TAT.
    fn admit(&mut self, rate: Rate, now: u64) -> Result<u64, u64> {
        match self {
            Count::Own(tat) => {
                *tat = (*tat).max(now) + rate.interval;
                Ok(*tat)
            }
            Count::Shared(tat) => {
                let seen = tat
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |seen| {
                        rate.step(seen, now).ok()
                    })
                    .map_err(|seen| seen.max(now) - now)?;
                rate.step(seen, now)
            }
        }
    }
}

/// A [`Party`] as the store keeps it.
enum KeptParty {
    Application(Box<str>),
    Client(Box<str>),
    Unknown,
}

impl KeptParty {
    fn of(party: Party<'_>) -> KeptParty {
        match party {
            Party::Application(name) => KeptParty::Application(name.into()),
            Party::Client(id) => KeptParty::Client(id.into()),
            Party::Unknown => KeptParty::Unknown,
        }
    }

    fn is(&self, party: Party<'_>) -> bool {
        match (self, party) {
            (KeptParty::Application(kept), Party::Application(name)) => **kept == *name,
            (KeptParty::Client(kept), Party::Client(id)) => **kept == *id,
            (KeptParty::Unknown, Party::Unknown) => true,
            _ => false,
        }
    }
}

impl Entry {
    fn new(hash: u64, key: &Key<'_>, tat: u64) -> Entry {
        Entry {
            hash,
            policy: key.policy.clone(),
            party: key.party.map(KeptParty::of),
            ip: key.ip,
            count: Count::of(key, tat),
        }
    }

    /// A key of a policy counting a whole API or API scope: never evicted.
    fn is_whole(&self) -> bool {
        self.party.is_none() && self.ip.is_none()
    }

    fn is(&self, key: &Key<'_>) -> bool {
        // Most often the policy's own identity: equal by address.
        self.policy == *key.policy
            && self.ip == key.ip
            && match (&self.party, key.party) {
                (Some(kept), Some(party)) => kept.is(party),
                (None, None) => true,
                _ => false,
            }
    }
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::quality::RandomState,
    max_keys: AtomicUsize,
}

impl MemoryStore {
    pub fn new(max_keys: usize) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: Default::default(),
            max_keys: AtomicUsize::new(max_keys),
        }
    }

    /// Gives each of `policies` that counts in one number its counter:
    /// its whole key's (made if it has none), the count every snapshot
    /// with the policy shares, counting by key or not. The whole keys of
    /// policies no longer named go (a snapshot still serving one makes
    /// its key again, until the next reload).
    pub fn bind_sole_counters<'p>(&self, policies: impl Iterator<Item = &'p ThrottlePolicy>) {
        let mut named = HashSet::new();
        for policy in policies {
            if policy.sole.eligible {
                policy.sole.set(self.whole_counter(&policy.identity));
            }
            named.insert(policy.identity.clone());
        }
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|e| !e.is_whole() || named.contains(&e.policy));
        }
    }

    /// The counter of the policy `identity`'s whole key.
    fn whole_counter(&self, identity: &Arc<str>) -> Arc<Tat> {
        let key = whole(identity);
        let hash = self.hasher.hash_one(key);
        let per_shard = self.per_shard();
        let mut shard = self.shards[self.shard_of(hash)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = match shard.find_mut(hash, |e| e.is(&key)) {
            Some(entry) => &mut entry.count,
            None => {
                let room = Room::of(per_shard, super::now_micros());
                insert(&mut shard, Entry::new(hash, &key, 0), &room);
                match shard.find_mut(hash, |e| e.is(&key)) {
                    Some(entry) => &mut entry.count,
                    // Just inserted, under the same lock.
                    None => return Arc::new(Tat::new(AtomicU64::new(0))),
                }
            }
        };
        match count {
            Count::Shared(tat) => tat.clone(),
            // Whole keys are made shared; should one not be, it is now.
            Count::Own(tat) => {
                let shared = Arc::new(Tat::new(AtomicU64::new(*tat)));
                *count = Count::Shared(shared.clone());
                shared
            }
        }
    }

    /// Takes the bound of a new snapshot; a smaller one applies as keys
    /// are added.
    pub fn set_max_keys(&self, max_keys: usize) {
        self.max_keys.store(max_keys, Ordering::Relaxed);
    }

    fn shard_of(&self, hash: u64) -> usize {
        (hash as usize) % self.shards.len()
    }

    fn per_shard(&self) -> usize {
        (self.max_keys.load(Ordering::Relaxed) / self.shards.len()).max(1)
    }

    /// Counts a request on every key, or on none: admitted only when each
    /// key has room. Returns whether it was admitted and each key's level
    /// (TAT − now, µs).
    pub fn check(&self, keys: &[(Key<'_>, Rate)], now: u64) -> (bool, Levels) {
        match keys {
            [(key, rate)] => self.check_one(key, *rate, now),
            _ => self.check_all(keys, now),
        }
    }

    /// One key (the usual case): one lock, one lookup.
    fn check_one(&self, key: &Key<'_>, rate: Rate, now: u64) -> (bool, Levels) {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shards[self.shard_of(hash)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = shard.find_mut(hash, |e| e.is(key));
        if let Some(Entry {
            count: Count::Shared(tat),
            ..
        }) = &entry
        {
            // Counted as a policy's counter is, which may count it too.
            return match check_sole(tat, rate, now) {
                Ok(level) => (true, Levels::from_slice(&[level])),
                Err(level) => (false, Levels::from_slice(&[level])),
            };
        }
        let tat = match rate.step(entry.as_ref().map_or(0, |e| e.count.get()), now) {
            Ok(tat) => tat,
            Err(level) => return (false, Levels::from_slice(&[level])),
        };
        match entry {
            Some(entry) => entry.count = Count::Own(tat),
            None => {
                let room = Room::of(self.per_shard(), now);
                insert(&mut shard, Entry::new(hash, key, tat), &room);
            }
        }
        (true, Levels::from_slice(&[tat - now]))
    }

    /// Several keys: the shards involved are locked in index order, so two
    /// requests never wait on each other in a loop.
    fn check_all(&self, keys: &[(Key<'_>, Rate)], now: u64) -> (bool, Levels) {
        let hashes: SmallVec<[u64; 4]> = keys
            .iter()
            .map(|(key, _)| self.hasher.hash_one(key))
            .collect();
        let mut order: SmallVec<[usize; 4]> = hashes.iter().map(|&h| self.shard_of(h)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: SmallVec<[(usize, MutexGuard<Shard>); 4]> = order
            .iter()
            .map(|&i| {
                (
                    i,
                    self.shards[i]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner),
                )
            })
            .collect();
        let mut bases = Levels::with_capacity(keys.len());
        let mut admitted = true;
        for ((key, rate), &hash) in keys.iter().zip(&hashes) {
            let guard = guard_of(&mut guards, self.shard_of(hash));
            let tat = guard.find(hash, |e| e.is(key)).map_or(0, |e| e.count.get());
            let base = tat.max(now);
            admitted &= rate.fits(base, now);
            bases.push(base);
        }
        if !admitted {
            return (false, bases.iter().map(|base| base - now).collect());
        }
        // The request's keys written first stay while the next are added.
        let room = Room {
            keep: &hashes,
            ..Room::of(self.per_shard(), now)
        };
        let mut levels = Levels::with_capacity(keys.len());
        for (i, ((key, rate), &hash)) in keys.iter().zip(&hashes).enumerate() {
            let base = bases[i];
            let guard = guard_of(&mut guards, self.shard_of(hash));
            let tat = match guard.find_mut(hash, |e| e.is(key)) {
                Some(entry) => entry.count.admit(*rate, now),
                None => {
                    let tat = base + rate.interval;
                    insert(guard, Entry::new(hash, key, tat), &room);
                    Ok(tat)
                }
            };
            match tat {
                Ok(tat) => levels.push(tat - now),
                // Filled meanwhile by a counter outside the lock: refused.
                // The keys counted before it keep the request (counted
                // once too often, never admitted once too often).
                Err(level) => {
                    let mut refused = levels;
                    refused.push(level);
                    refused.extend(bases[i + 1..].iter().map(|base| base - now));
                    return (false, refused);
                }
            }
        }
        (true, levels)
    }

    /// Keys held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key of a policy that counts every request alike.
fn whole(identity: &Arc<str>) -> Key<'_> {
    Key {
        policy: identity,
        party: None,
        ip: None,
    }
}

/// One request on a policy's sole counter: the GCRA step of
/// `MemoryStore::check_one` as a compare-and-swap on the TAT: the
/// counter's level (TAT − now) once the request is counted, or, refused,
/// as it stays. Admitted requests never exceed the limit however many
/// threads count at once: each one's step is applied to the TAT it read,
/// or read again.
pub fn check_sole(tat: &AtomicU64, rate: Rate, now: u64) -> Result<u64, u64> {
    let mut seen = tat.load(Ordering::Relaxed);
    loop {
        let next = rate.step(seen, now)?;
        match tat.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Ok(next - now),
            Err(current) => seen = current,
        }
    }
}

#[allow(
    clippy::expect_used,
    reason = "every shard a key maps to was locked before the keys are read"
)]
fn guard_of<'g, 'm>(
    guards: &'g mut [(usize, MutexGuard<'m, Shard>)],
    shard: usize,
) -> &'g mut MutexGuard<'m, Shard> {
    guards
        .iter_mut()
        .find(|(i, _)| *i == shard)
        .map(|(_, guard)| guard)
        .expect("every shard a key maps to was locked")
}

/// How a shard makes room for a key: at most `cap` partitioned keys, those
/// whose TAT is not after `now` expired, and the keys hashed `keep` kept.
struct Room<'k> {
    cap: usize,
    now: u64,
    keep: &'k [u64],
}

impl Room<'_> {
    fn of(cap: usize, now: u64) -> Room<'static> {
        Room {
            cap,
            now,
            keep: &[],
        }
    }
}

/// Adds `entry` (its key not in `shard`), making room for it first.
fn insert(shard: &mut Shard, entry: Entry, room: &Room<'_>) {
    make_room(shard, room);
    shard.insert_unique(entry.hash, entry, |e| e.hash);
}

/// Leaves room for one more key in a shard, as long as it is full:
/// expired keys go, then the partitioned keys nearest to expiry, an
/// eighth of the shard at once, so that the next keys find room without
/// a scan of their own (one key at a time, a shard full of live clients
/// scanned all its keys for every new client, under its lock). Whole keys
/// and those `room` keeps are never taken (a shard may then hold more than
/// `room.cap`).
fn make_room(shard: &mut Shard, room: &Room<'_>) {
    if shard.len() < room.cap {
        return;
    }
    // Whole keys stay: a policy's counter may be theirs.
    shard.retain(|e| e.is_whole() || e.count.get() > room.now);
    if shard.len() < room.cap {
        return;
    }
    let evictable = |e: &Entry| !e.is_whole() && !room.keep.contains(&e.hash);
    // What the shard keeps: below its cap by a batch (a cap lowered by a
    // reload is reached in this one pass too).
    let kept = room.cap.saturating_sub((room.cap / 8).max(1));
    let mut tats: Vec<u64> = shard
        .iter()
        .filter(|e| evictable(e))
        .map(|e| e.count.get())
        .collect();
    let taken = (shard.len() - kept).min(tats.len());
    let Some(last) = taken.checked_sub(1) else {
        return;
    };
    // The `taken` nearest to expiry: every key before the `taken`-th TAT,
    // and as many of those at it as make up the number.
    let (before, &mut at, _) = tats.select_nth_unstable(last);
    let mut at_taken = taken - before.iter().filter(|&&tat| tat < at).count();
    shard.retain(|e| {
        let tat = e.count.get();
        if !evictable(e) || tat > at {
            return true;
        }
        if tat < at {
            return false;
        }
        let take = at_taken > 0;
        at_taken = at_taken.saturating_sub(1);
        !take
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn key(policy: &Arc<str>, ip: u8) -> Key<'_> {
        Key {
            policy,
            party: None,
            ip: Some(IpAddr::from([10, 0, 0, ip])),
        }
    }

    #[test]
    fn a_request_counts_on_every_key_or_on_none() {
        let store = MemoryStore::new(1000);
        let wide = Rate::of(10, Duration::from_secs(60));
        let narrow = Rate::of(1, Duration::from_secs(60));
        let (w, n) = (Arc::from("wide"), Arc::from("narrow"));
        let keys = [(key(&w, 1), wide), (key(&n, 1), narrow)];
        assert!(store.check(&keys, 1).0);
        let (admitted, levels) = store.check(&keys, 1);
        assert!(!admitted);
        // The refused request did not use the wide policy's quota.
        assert_eq!(levels[0], wide.interval);
    }

    #[test]
    fn a_shared_count_filled_outside_the_lock_refuses_its_admission() {
        let rate = Rate::of(2, Duration::from_secs(60));
        let mut count = Count::of(&whole(&Arc::from("api")), 0);
        let Count::Shared(tat) = &count else {
            panic!("a whole policy's count is shared");
        };
        let tat = Arc::clone(tat);
        assert!(count.admit(rate, 1).is_ok());
        // Another snapshot's counter, which takes no lock, fills it.
        assert!(check_sole(&tat, rate, 1).is_ok());
        assert!(check_sole(&tat, rate, 1).is_err());
        let before = tat.load(Ordering::Relaxed);
        assert_eq!(
            count.admit(rate, 1),
            Err(before - 1),
            "found full when it is counted"
        );
        assert_eq!(tat.load(Ordering::Relaxed), before, "nothing counted");
    }

    #[test]
    fn the_store_never_holds_more_than_its_bound() {
        let store = MemoryStore::new(SHARDS * 2);
        let rate = Rate::of(1, Duration::from_secs(60));
        let (p, q) = (Arc::from("p"), Arc::from("q"));
        for ip in 0..=255 {
            assert!(store.check(&[(key(&p, ip), rate)], 1).0);
        }
        assert!(store.len() <= SHARDS * 2, "{}", store.len());
        // Expired keys make room before live ones are dropped.
        assert!(store.check(&[(key(&q, 1), rate)], 120_000_001).0);
    }

    /// A shard of `count` live keys of clients, the i-th expiring at
    /// 1000 + i.
    fn full_shard(count: u64) -> Shard {
        let policy: Arc<str> = Arc::from("api-per-client-ip");
        let mut shard = Shard::new();
        for i in 0..count {
            let entry = Entry {
                hash: i,
                policy: policy.clone(),
                party: None,
                ip: Some(IpAddr::from([10, 0, 0, 1])),
                count: Count::Own(1000 + i),
            };
            shard.insert_unique(i, entry, |e| e.hash);
        }
        shard
    }

    #[test]
    fn a_full_shard_makes_room_for_a_batch_of_keys_nearest_to_expiry_first() {
        let mut shard = full_shard(64);
        make_room(&mut shard, &Room::of(64, 1));
        // An eighth of the shard, the keys nearest to expiry: the next
        // seven keys find room without a scan.
        assert_eq!(shard.len(), 56);
        let mut left: Vec<u64> = shard.iter().map(|e| e.count.get()).collect();
        left.sort_unstable();
        assert_eq!(left, (1008..1064).collect::<Vec<_>>());
        make_room(&mut shard, &Room::of(64, 1));
        assert_eq!(shard.len(), 56, "room was left");
        // A cap lowered by a reload is reached in one pass.
        let mut shard = full_shard(10_000);
        make_room(&mut shard, &Room::of(16, 1));
        assert_eq!(shard.len(), 14);
        // Keys the request counts on are kept, whatever their expiry.
        let mut shard = full_shard(8);
        let keep = [0, 1];
        let room = Room {
            cap: 8,
            now: 1,
            keep: &keep,
        };
        make_room(&mut shard, &room);
        let mut left: Vec<u64> = shard.iter().map(|e| e.hash).collect();
        left.sort_unstable();
        assert_eq!(left, [0, 1, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_full_store_never_evicts_a_whole_key() {
        // One key per shard: every new client's key makes room.
        let store = MemoryStore::new(SHARDS);
        let whole_rate = Rate::of(300, Duration::from_secs(3600));
        let per_ip = Rate::of(10, Duration::from_secs(86_400));
        let (w, p) = (Arc::from("api"), Arc::from("api-per-client-ip"));
        let admitted = (0..1000u32)
            .filter(|i| {
                let client = Key {
                    policy: &p,
                    party: None,
                    ip: Some(IpAddr::from(i.to_be_bytes())),
                };
                let keys = [(whole(&w), whole_rate), (client, per_ip)];
                store.check(&keys, 1).0
            })
            .count();
        assert_eq!(admitted, 300);
    }

    #[test]
    fn a_single_key_counts_until_its_limit_and_outlives_the_snapshot_that_named_it() {
        let store = MemoryStore::new(1000);
        let rate = Rate::of(2, Duration::from_secs(60));
        let before: Arc<str> = Arc::from("api-wide");
        assert_eq!(
            store.check(&[(key(&before, 1), rate)], 1),
            (true, Levels::from_slice(&[rate.interval]))
        );
        // A reload compiles the same identity into a new string.
        let after: Arc<str> = Arc::from("api-wide");
        let (admitted, levels) = store.check(&[(key(&after, 1), rate)], 1);
        assert!(admitted);
        assert_eq!(levels.as_slice(), [2 * rate.interval]);
        let (admitted, levels) = store.check(&[(key(&after, 1), rate)], 1);
        assert!(!admitted);
        assert_eq!(
            levels.as_slice(),
            [2 * rate.interval],
            "a refusal counts nothing"
        );
        // Another subject of the same policy has its own counter.
        assert!(store.check(&[(key(&after, 2), rate)], 1).0);
        let application = Key {
            party: Some(Party::Application("app")),
            ..key(&after, 1)
        };
        assert!(store.check(&[(application, rate)], 1).0);
        assert_eq!(store.len(), 3);
    }
}
