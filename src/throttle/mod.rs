//! Throttling: which of an API's `policies.throttle` a request counts
//! against, under which keys, in which store; and the RateLimit fields
//! (draft-ietf-httpapi-ratelimit-headers) that tell the client about it.
//!
//! Counters are keyed by a policy's identity (API, scope, limit, period,
//! partition), never by the snapshot, so they survive reloads that keep
//! the policy. The memory store lives as long as the gateway; a Redis
//! store as long as its URL and password stay the same, and as long as a
//! snapshot counting in it serves a request: a snapshot holds the store it
//! was bound with ([`Throttling::opened`]), so a request that started
//! before a reload counts where its snapshot says to the end. A store that
//! does not answer in time never holds a request: `on_store_error` decides.

pub mod gcra;
pub mod memory;
pub mod redis;

use std::cell::RefCell;
use std::fmt::Write;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::header::{HeaderValue, RETRY_AFTER};
use http::HeaderMap;
use smallvec::SmallVec;

use crate::auth::identity::Identity;
use crate::config::snapshot::{Api, OnStoreError, ThrottlePolicy, ThrottleStore, Throttling};
use crate::config::Snapshot;
use crate::http1::raw_fields::set_own;
use crate::lockout::AddressKey;
use gcra::{quota, seconds_up, Quota, Rate};
use memory::MemoryStore;
use redis::RedisStore;

pub use crate::config::throttle_compile::{RATELIMIT, RATELIMIT_POLICY};

/// Each counted key's level (TAT − now, µs), in the order of the keys: a
/// request is counted under a few policies at most.
pub type Levels = SmallVec<[u64; 4]>;

/// A counter: a policy's identity and whom it counts (the application,
/// the client's address, both or neither). Borrowed from the policy and
/// the request: a store copies a key only when it first counts under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key<'a> {
    pub policy: &'a Arc<str>,
    pub party: Option<Party<'a>>,
    pub ip: Option<IpAddr>,
}

/// Whom a per-application policy counts a request for. An application
/// and an OAuth2 client are named apart: a client id that no application
/// lists never counts on the counter of an application of that name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party<'a> {
    /// The identified application, by name.
    Application(&'a str),
    /// The client of a token no application names, by `client_id`.
    Client(&'a str),
    /// Neither: such requests share one counter (they are not let
    /// through uncounted).
    Unknown,
}

impl Key<'_> {
    /// `mcgw:` + identity + subject. A subject longer than a client id or
    /// address usually is goes in hashed, so a key stays short.
    pub fn redis_key(&self) -> String {
        let mut key = String::with_capacity(self.policy.len() + 48);
        key.push_str("mcgw:");
        key.push_str(self.policy);
        let mut subject = String::new();
        match self.party {
            Some(Party::Application(name)) => {
                subject.push_str("app:");
                subject.push_str(name);
            }
            Some(Party::Client(id)) => {
                subject.push_str("client:");
                subject.push_str(id);
            }
            Some(Party::Unknown) | None => {}
        }
        subject.push('|');
        if let Some(ip) = self.ip {
            let _ = write!(subject, "{ip}");
        }
        key.push(':');
        if subject.len() > 128 {
            use sha2::Digest;
            for byte in sha2::Sha256::digest(subject.as_bytes()) {
                let _ = write!(key, "{byte:02x}");
            }
        } else {
            key.push_str(&subject);
        }
        key
    }
}

/// Who sent a request, as far as throttling cares.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Whom the request speaks for, once authenticated.
    pub identity: Option<&'a Identity>,
    /// The client's address (a trusted proxy's client, else the peer).
    pub client_ip: IpAddr,
}

/// Whom a per-application policy counts a request for: the identified
/// application (`applications`), or, for a token of a client no
/// application names, that OAuth2 client.
fn party_of<'a>(caller: &Caller<'a>) -> Party<'a> {
    let Some(identity) = caller.identity else {
        return Party::Unknown;
    };
    if let Some(name) = identity.application_name() {
        return Party::Application(name);
    }
    identity
        .principal
        .as_deref()
        .and_then(|p| p.client_id.as_deref())
        .map_or(Party::Unknown, Party::Client)
}

/// What a refused client is told: every policy of the resource, and
/// the longest wait of those that refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    policy: HeaderValue,
    ratelimit: HeaderValue,
    retry_after: Option<HeaderValue>,
}

impl Fields {
    /// The fields for the policies `counted`, whose `RateLimit-Policy`
    /// field is `policy`.
    fn of(counted: &[(&ThrottlePolicy, Quota)], policy: Option<HeaderValue>) -> Option<Fields> {
        let ratelimit = ratelimit_of(counted)?;
        let retry_after = counted
            .iter()
            .filter_map(|(_, quota)| quota.retry_after)
            .max();
        Some(Fields {
            policy: policy?,
            ratelimit,
            retry_after: retry_after.map(|after| HeaderValue::from(seconds_up(after).max(1))),
        })
    }

    /// Adds the fields to a response's headers.
    pub fn apply(self, headers: &mut HeaderMap) {
        apply(headers, self.policy, self.ratelimit);
        if let Some(after) = self.retry_after {
            headers.insert(RETRY_AFTER, after);
        }
    }
}

/// What an admitted request's answer is told: the `RateLimit-Policy`
/// field of its resource, made when the snapshot was (made for the
/// request only when its path's two readings count under different
/// policies), and `RateLimit`. Small, as it waits for the upstream's answer.
#[derive(Debug, PartialEq, Eq)]
pub struct AdmittedFields<'s> {
    policy: PolicyField<'s>,
    ratelimit: HeaderValue,
}

/// A `RateLimit-Policy` field: a resource's, or one made for a request
/// (boxed: rare, and the fields wait in the request's future).
#[derive(Debug, PartialEq, Eq)]
enum PolicyField<'s> {
    Compiled(&'s HeaderValue),
    Made(Box<HeaderValue>),
}

impl PolicyField<'_> {
    fn into_value(self) -> HeaderValue {
        match self {
            PolicyField::Compiled(field) => field.clone(),
            PolicyField::Made(field) => *field,
        }
    }
}

impl AdmittedFields<'_> {
    /// Gives the upstream's answer the fields (replacing any it sent).
    pub fn apply<B>(self, response: &mut http::Response<B>) {
        let policy = self.policy.into_value();
        set_own(response, &RATELIMIT_POLICY, policy);
        set_own(response, &RATELIMIT, self.ratelimit);
    }
}

fn apply(headers: &mut HeaderMap, policy: HeaderValue, ratelimit: HeaderValue) {
    headers.insert(RATELIMIT_POLICY.clone(), policy);
    headers.insert(RATELIMIT.clone(), ratelimit);
}

/// The `RateLimit` field of the policies `counted`.
fn ratelimit_of(counted: &[(&ThrottlePolicy, Quota)]) -> Option<HeaderValue> {
    match counted {
        [(p, quota)] => LastRateLimit::of(&p.name, quota),
        _ => ratelimit_field(
            counted
                .iter()
                .map(|(p, quota)| (p.name.as_str(), quota.remaining, seconds_up(quota.reset))),
        ),
    }
}

/// The `RateLimit` field of policies by name, their remaining quota and
/// seconds until it is whole: `"name";r=remaining;t=reset, …`.
fn ratelimit_field<'p>(
    items: impl Iterator<Item = (&'p str, u64, u64)> + Clone,
) -> Option<HeaderValue> {
    // The value is written once into an allocation of its exact length,
    // which the header value then owns.
    let length = items
        .clone()
        .map(|(name, remaining, reset)| name.len() + 8 + digits(remaining) + digits(reset) + 2)
        .sum::<usize>()
        .saturating_sub(2);
    let mut ratelimit = Vec::with_capacity(length);
    let mut number = itoa::Buffer::new();
    for (name, remaining, reset) in items {
        if !ratelimit.is_empty() {
            ratelimit.extend_from_slice(b", ");
        }
        ratelimit.push(b'"');
        ratelimit.extend_from_slice(name.as_bytes());
        ratelimit.extend_from_slice(b"\";r=");
        ratelimit.extend_from_slice(number.format(remaining).as_bytes());
        ratelimit.extend_from_slice(b";t=");
        ratelimit.extend_from_slice(number.format(reset).as_bytes());
    }
    // Names and numbers only: always valid.
    owned_value(ratelimit)
}

/// The last `RateLimit` field of one policy a thread made. A policy that
/// is not under pressure tells every client the same (its burst nearly
/// whole, the reset a second away), so the field is made once and shared
/// for as long as it stays true, instead of for every admitted request.
struct LastRateLimit {
    name: String,
    remaining: u64,
    reset: u64,
    value: HeaderValue,
}

impl LastRateLimit {
    /// The field of policy `name` telling `quota`.
    fn of(name: &str, quota: &Quota) -> Option<HeaderValue> {
        let (remaining, reset) = (quota.remaining, seconds_up(quota.reset));
        thread_local! {
            static LAST: RefCell<Option<LastRateLimit>> = const { RefCell::new(None) };
        }
        let made = || ratelimit_field(std::iter::once((name, remaining, reset)));
        // `try_with`: during the thread's exit the cache may be gone.
        LAST.try_with(|last| {
            let Ok(mut last) = last.try_borrow_mut() else {
                return made();
            };
            if let Some(last) = last.as_ref().filter(|last| {
                last.remaining == remaining && last.reset == reset && last.name == name
            }) {
                return Some(last.value.clone());
            }
            let value = made()?;
            // The name's allocation is used again.
            let mut kept = last.take().map(|last| last.name).unwrap_or_default();
            kept.clear();
            kept.push_str(name);
            *last = Some(LastRateLimit {
                name: kept,
                remaining,
                reset,
                value: value.clone(),
            });
            Some(value)
        })
        .unwrap_or_else(|_| made())
    }
}

/// The decimal digits of `n`.
fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// A header value owning `bytes`' allocation: no copy, and, at its exact
/// length, no second allocation for a reference count.
fn owned_value(bytes: Vec<u8>) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes.into_boxed_slice())).ok()
}

/// What throttling says about a request to a resource of snapshot `'s`.
#[derive(Debug)]
pub enum Verdict<'s> {
    /// No policy applies: nothing to count, nothing to tell.
    Unthrottled,
    /// Counted and admitted; the fields go on the response.
    Admitted(Option<AdmittedFields<'s>>),
    /// Refused (429) by the policies named.
    Refused {
        policies: Vec<String>,
        fields: Option<Fields>,
    },
    /// The store did not answer and `on_store_error` is `allow`.
    StoreFailedAllowed,
    /// The store did not answer and `on_store_error` is `deny` (503).
    StoreFailedDenied,
}

/// The stores of one gateway.
pub struct Throttler {
    memory: MemoryStore,
    /// The Redis store last bound, which the next snapshot reuses while
    /// its settings are unchanged. Requests count in their snapshot's.
    redis: ArcSwapOption<RedisStore>,
    /// A Redis store a reload brings, for each listener thread to connect
    /// to before it is put in use ([`Throttler::connect_listeners`]); each
    /// thread follows it from its start ([`Throttler::connect_this_thread`]).
    to_connect: tokio::sync::watch::Sender<Option<Arc<Connecting>>>,
}

impl Default for Throttler {
    fn default() -> Throttler {
        Throttler {
            memory: MemoryStore::new(100_000),
            redis: ArcSwapOption::empty(),
            to_connect: tokio::sync::watch::Sender::new(None),
        }
    }
}

/// A store the listener threads connect to, and how many have.
struct Connecting {
    redis: Arc<RedisStore>,
    done: Mutex<usize>,
    changed: Condvar,
}

impl Connecting {
    fn one_done(&self) {
        *self.done.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.changed.notify_all();
    }
}

/// The store a snapshot names, ready and not yet in use: made by
/// [`Throttler::prepare`], put in use by [`Throttler::bind`].
pub struct Prepared {
    max_keys: usize,
    redis: Option<Arc<RedisStore>>,
}

impl Throttler {
    /// Readies the store `snapshot` names: the current one when its
    /// settings are unchanged (and so its counters). Refuses a URL the
    /// Redis client cannot use. Changes nothing requests see: a reload
    /// refused after this step leaves the serving store in use.
    pub fn prepare(&self, snapshot: &Snapshot) -> Result<Prepared, String> {
        let settings = &snapshot.throttling;
        let redis = match &settings.store {
            ThrottleStore::Memory => None,
            ThrottleStore::Redis {
                url,
                password,
                ca_bundle,
            } => {
                let current = self.redis.load_full().filter(|r| {
                    r.url == *url && r.password == *password && r.ca_bundle == *ca_bundle
                });
                match current {
                    Some(current) => Some(current),
                    None => Some(Arc::new(RedisStore::open(
                        url,
                        password.as_ref(),
                        ca_bundle.as_ref(),
                    )?)),
                }
            }
        };
        Ok(Prepared {
            max_keys: settings.max_keys,
            redis,
        })
    }

    /// Puts the store `prepared` for `snapshot` in use, gives it to
    /// `snapshot` to hold, and gives the policies of `snapshot` that count
    /// in one number their counters ([`MemoryStore::bind_sole_counters`]):
    /// the last step before it goes live, once nothing can refuse it any
    /// more. The snapshot serving meanwhile keeps its own store.
    pub fn bind(&self, snapshot: &Snapshot, prepared: Prepared) {
        self.memory.set_max_keys(prepared.max_keys);
        if let Some(redis) = &prepared.redis {
            snapshot.throttling.opened.set(Arc::clone(redis));
        }
        self.redis.store(prepared.redis);
        self.memory
            .bind_sole_counters(snapshot.apis.iter().flat_map(|api| api.throttle.iter()));
    }

    /// Connects the calling listener thread to the Redis store bound, if
    /// any, before its first request (`RedisStore::connect_this_thread`),
    /// then to each store a reload brings, before it is put in use: runs
    /// as long as the thread's runtime.
    pub async fn connect_this_thread(&self) {
        let mut asked = self.to_connect.subscribe();
        if let Some(redis) = self.redis.load_full() {
            redis.connect_this_thread().await;
        }
        while asked.changed().await.is_ok() {
            let connecting = asked.borrow_and_update().clone();
            if let Some(connecting) = connecting {
                connecting.redis.connect_this_thread().await;
                connecting.one_done();
            }
        }
    }

    /// Connects every listener thread to the Redis store `prepared` brings,
    /// when it is not the one in use, and waits for them (each bounded by
    /// the connect timeout): otherwise each thread's first request after
    /// the reload would make the connection within its
    /// `throttling.timeout` and could meet the store error with the store
    /// healthy. Blocking: called by a reload, off the listener threads.
    pub fn connect_listeners(&self, prepared: &Prepared) {
        let Some(redis) = &prepared.redis else { return };
        if self
            .redis
            .load()
            .as_ref()
            .is_some_and(|serving| Arc::ptr_eq(serving, redis))
        {
            return;
        }
        let threads = self.to_connect.receiver_count();
        if threads == 0 {
            return;
        }
        let connecting = Arc::new(Connecting {
            redis: Arc::clone(redis),
            done: Mutex::new(0),
            changed: Condvar::new(),
        });
        self.to_connect.send_replace(Some(Arc::clone(&connecting)));
        let deadline = Instant::now() + redis::CONNECT_BOUND + Duration::from_millis(500);
        let mut done = connecting
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *done < threads {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            done = connecting
                .changed
                .wait_timeout(done, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(done);
        self.to_connect.send_replace(None);
    }

    /// Counts a request to `resources` of `api` against the policies that
    /// apply to them, in whichever store the snapshot names.
    pub async fn check<'s>(
        &self,
        snapshot: &Snapshot,
        api: &'s Api,
        resources: Resources,
        caller: Caller<'_>,
    ) -> Verdict<'s> {
        if let Some(verdict) = self.check_in_memory(snapshot, api, resources, caller) {
            return verdict;
        }
        let counting = Counting::of(api, resources, &caller);
        if counting.policies.is_empty() {
            return Verdict::Unthrottled;
        }
        let settings: &Throttling = &snapshot.throttling;
        let answer = match settings.opened.get::<RedisStore>() {
            Some(store) => store.check(&counting.keys, settings.timeout).await,
            None => Err(redis::StoreError::Timeout(settings.timeout)),
        };
        counting.verdict(api, settings.on_store_error, answer)
    }

    /// [`Throttler::check`] without a future, when the store is in memory
    /// (it answers at once); `None` for another store.
    pub fn check_in_memory<'s>(
        &self,
        snapshot: &Snapshot,
        api: &'s Api,
        resources: Resources,
        caller: Caller<'_>,
    ) -> Option<Verdict<'s>> {
        let settings: &Throttling = &snapshot.throttling;
        if !matches!(settings.store, ThrottleStore::Memory) {
            return None;
        }
        if let Some((counting, tat)) = Counting::sole(api, resources) {
            let policy = counting.policies[0];
            return Some(match memory::check_sole(tat, policy.rate, now_micros()) {
                Ok(level) => {
                    let ratelimit =
                        LastRateLimit::of(&policy.name, &quota(policy.rate, true, level));
                    admitted(counting.field, ratelimit)
                }
                Err(level) => {
                    let refused = Ok((false, Levels::from_slice(&[level])));
                    counting.verdict(api, settings.on_store_error, refused)
                }
            });
        }
        let counting = Counting::of(api, resources, &caller);
        if counting.policies.is_empty() {
            return Some(Verdict::Unthrottled);
        }
        let answer = self.memory.check(&counting.keys, now_micros());
        Some(counting.verdict(api, settings.on_store_error, Ok(answer)))
    }
}

/// The resources (indexes into `Api::resources`) a request counts
/// under: the one it matched and, for a path with a trailing slash whose
/// two readings match different resources, the other
/// (`policy::route::Route::also`). Upstreams read such a path either way,
/// so it counts against the policies of both, as it needs the scopes of
/// both.
#[derive(Debug, Clone, Copy)]
pub struct Resources {
    pub matched: usize,
    pub also: Option<usize>,
}

/// The policies of snapshot `'s` that count one request, and its key
/// under each (borrowing the caller, `'c`).
struct Counting<'s, 'c> {
    policies: SmallVec<[&'s ThrottlePolicy; 2]>,
    /// Their keys, in their order (none for a sole counter).
    keys: SmallVec<[(Key<'c>, Rate); 2]>,
    /// Their `RateLimit-Policy` field (none for no policy).
    field: Option<PolicyField<'s>>,
}

impl<'s, 'c> Counting<'s, 'c> {
    fn of(api: &'s Api, resources: Resources, caller: &Caller<'c>) -> Counting<'s, 'c>
    where
        's: 'c,
    {
        let matched = &api.resources[resources.matched];
        let counting = api.throttle_counting(resources.matched, resources.also);
        let field = if counting.len() == matched.throttle.len() {
            matched.ratelimit_policy.as_ref().map(PolicyField::Compiled)
        } else {
            // The other reading's policies too: a field made for it.
            ThrottlePolicy::field_of(counting.iter().map(|&i| &api.throttle[i]))
                .map(|field| PolicyField::Made(Box::new(field)))
        };
        let policies: SmallVec<[&ThrottlePolicy; 2]> =
            counting.iter().map(|&i| &api.throttle[i]).collect();
        let keys = policies.iter().map(|p| (key(p, caller), p.rate)).collect();
        Counting {
            policies,
            keys,
            field,
        }
    }

    /// The one policy counting requests to `resources` and its counter,
    /// when it counts them all in one number ([`ThrottlePolicy::sole`]):
    /// no key to make. A policy that may count together with another,
    /// in one resource or in the two readings of one path, has none
    /// (`config::throttle_compile::bind`).
    fn sole(api: &'s Api, resources: Resources) -> Option<(Counting<'s, 'c>, &'s AtomicU64)> {
        let matched = &api.resources[resources.matched];
        let (only, resource) = match resources.also {
            None => match *matched.throttle {
                [only] => (only, matched),
                _ => return None,
            },
            Some(also) => {
                let other = &api.resources[also];
                match (&*matched.throttle, &*other.throttle) {
                    ([only], []) => (*only, matched),
                    ([only], [also]) if also == only => (*only, matched),
                    ([], [only]) => (*only, other),
                    _ => return None,
                }
            }
        };
        let policy = &api.throttle[only];
        let tat = policy.sole.get()?;
        let counting = Counting {
            policies: smallvec::smallvec![policy],
            keys: SmallVec::new(),
            field: resource
                .ratelimit_policy
                .as_ref()
                .map(PolicyField::Compiled),
        };
        Some((counting, tat))
    }

    /// What the store's answer (admitted, and each key's level) means
    /// for the request.
    fn verdict(
        self,
        api: &Api,
        on_error: OnStoreError,
        answer: Result<(bool, Levels), redis::StoreError>,
    ) -> Verdict<'s> {
        let (admitted, levels) = match answer {
            Ok(answer) => answer,
            Err(error) => return store_failed(on_error, api, &error),
        };
        let counted: SmallVec<[(&ThrottlePolicy, Quota); 2]> = self
            .policies
            .iter()
            .zip(levels)
            .map(|(p, level)| (*p, quota(p.rate, admitted, level)))
            .collect();
        if admitted {
            return self::admitted(self.field, ratelimit_of(&counted));
        }
        // The client hears about every policy of the resource, as on an
        // admitted answer (the draft asks `RateLimit-Policy` to stay the
        // same from answer to answer): those that refused it at `r=0`,
        // the others with the room they still have (a refused request
        // uses none); `Retry-After` is the longest wait of the refusing.
        let refusing: Vec<String> = counted
            .iter()
            .filter(|(_, q)| q.retry_after.is_some())
            .map(|(p, _)| p.name.clone())
            .collect();
        for name in &refusing {
            api.metrics.count_throttled(name);
        }
        Verdict::Refused {
            policies: refusing,
            fields: Fields::of(&counted, self.field.map(PolicyField::into_value)),
        }
    }
}

/// An admitted request's verdict: its `RateLimit-Policy` field and the
/// `RateLimit` field made for it.
fn admitted(field: Option<PolicyField<'_>>, ratelimit: Option<HeaderValue>) -> Verdict<'_> {
    let fields = field.zip(ratelimit);
    Verdict::Admitted(fields.map(|(policy, ratelimit)| AdmittedFields { policy, ratelimit }))
}

fn store_failed<'s>(on_error: OnStoreError, api: &Api, error: &redis::StoreError) -> Verdict<'s> {
    crate::metrics::get().throttle_store_errors.inc();
    let verdict = match on_error {
        OnStoreError::Allow => Verdict::StoreFailedAllowed,
        OnStoreError::Deny => Verdict::StoreFailedDenied,
    };
    // One line per interval, not per request: a store that is down for
    // every request would otherwise fill the log (the metric counts all).
    static LOGGED: crate::logging::Sparse = crate::logging::Sparse::new();
    if let Some(suppressed) = LOGGED.due() {
        let outcome = match on_error {
            OnStoreError::Allow => "allowed unthrottled",
            OnStoreError::Deny => "refused (503)",
        };
        tracing::warn!(
            api = api.name,
            %error,
            suppressed,
            "throttle store failed; request {outcome}"
        );
    }
    verdict
}

fn key<'a>(policy: &'a ThrottlePolicy, caller: &Caller<'a>) -> Key<'a> {
    Key {
        policy: &policy.identity,
        party: policy.per_application.then(|| party_of(caller)),
        // An IPv6 caller by its /64: its other addresses are its own too.
        ip: policy
            .per_client_ip
            .then(|| AddressKey::of(caller.client_ip).into()),
    }
}

/// Microseconds on this process's monotonic clock (the memory store's
/// time; Redis uses its own).
fn now_micros() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    // Starts above 0, so that a missing key (TAT 0) is always in the past.
    let elapsed = crate::timer::clock::now_std().saturating_duration_since(*EPOCH);
    1 + u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX - 1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn policy(name: &str, limit: u64) -> ThrottlePolicy {
        ThrottlePolicy {
            name: name.to_owned(),
            identity: Arc::from(name),
            limit,
            per: Duration::from_secs(60),
            rate: Rate::of(limit, Duration::from_secs(60)),
            api_scope: None,
            per_application: false,
            per_client_ip: false,
            policy_field: format!("\"{name}\";q={limit};w=60"),
            sole: Default::default(),
        }
    }

    #[test]
    fn fields_list_every_policy_and_retry_after_the_longest_wait() {
        let (a, b) = (policy("a", 10), policy("b", 1));
        let counted = [
            (&a, quota(Rate::of(10, a.per), false, 6_000_000)),
            (&b, quota(Rate::of(1, b.per), false, 60_000_000)),
        ];
        let field = ThrottlePolicy::field_of([&a, &b].into_iter());
        let fields = Fields::of(&counted, field).unwrap();
        let mut headers = HeaderMap::new();
        fields.apply(&mut headers);
        assert_eq!(headers[&RATELIMIT_POLICY], r#""a";q=10;w=60, "b";q=1;w=60"#);
        assert_eq!(headers[&RATELIMIT], r#""a";r=9;t=6, "b";r=0;t=60"#);
        assert_eq!(headers[RETRY_AFTER], "60");
    }

    #[test]
    fn a_field_made_before_is_told_again_only_while_it_is_true() {
        let one = |name: &str, remaining, reset| {
            let p = policy(name, 100);
            let q = Quota {
                remaining,
                reset: Duration::from_millis(reset),
                retry_after: None,
            };
            let fields = Fields::of(&[(&p, q)], Some(HeaderValue::from_static("p")));
            fields.expect("fields").ratelimit
        };
        assert_eq!(one("api", 99, 400), r#""api";r=99;t=1"#);
        assert_eq!(one("api", 99, 900), r#""api";r=99;t=1"#);
        // Each of name, remaining quota and reset tells another field.
        assert_eq!(one("ap", 99, 900), r#""ap";r=99;t=1"#);
        assert_eq!(one("api", 98, 900), r#""api";r=98;t=1"#);
        assert_eq!(one("api", 98, 1100), r#""api";r=98;t=2"#);
        assert_eq!(one("api", 98, 1100), r#""api";r=98;t=2"#);
        // Two policies: one field with both.
        let (a, b) = (policy("a", 10), policy("b", 10));
        let q = quota(a.rate, true, 6_000_000);
        let both = Fields::of(&[(&a, q), (&b, q)], Some(HeaderValue::from_static("p")));
        assert_eq!(
            both.expect("fields").ratelimit,
            r#""a";r=9;t=6, "b";r=9;t=6"#
        );
    }

    #[test]
    fn redis_keys_are_prefixed_and_bounded() {
        let policy: Arc<str> = Arc::from("[\"Time travels\",\"1.0\"]");
        let key = |party| Key {
            policy: &policy,
            party: Some(party),
            ip: Some(IpAddr::from([10, 0, 0, 1])),
        };
        assert_eq!(
            key(Party::Application("app")).redis_key(),
            "mcgw:[\"Time travels\",\"1.0\"]:app:app|10.0.0.1"
        );
        // A client id is never an application's name.
        assert_eq!(
            key(Party::Client("app")).redis_key(),
            "mcgw:[\"Time travels\",\"1.0\"]:client:app|10.0.0.1"
        );
        assert_eq!(
            key(Party::Unknown).redis_key(),
            "mcgw:[\"Time travels\",\"1.0\"]:|10.0.0.1"
        );
        let long = key(Party::Application(&"x".repeat(1000))).redis_key();
        assert!(long.starts_with("mcgw:") && long.len() < 100, "{long}");
    }

    /// `limit` per hour, counting in one number.
    fn sole_policy(name: &str, limit: u64) -> ThrottlePolicy {
        let mut policy = policy(name, limit);
        policy.rate = Rate::of(limit, Duration::from_secs(3600));
        policy.sole.eligible = true;
        policy
    }

    #[test]
    fn a_sole_counter_admits_exactly_the_limit_however_many_threads_count() {
        let store = MemoryStore::new(100);
        let policy = sole_policy("api", 100);
        store.bind_sole_counters([&policy].into_iter());
        let tat = policy.sole.get().expect("a counter");
        let now = now_micros();
        let admitted: usize = std::thread::scope(|scope| {
            let counting: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .filter(|_| memory::check_sole(tat, policy.rate, now).is_ok())
                            .count()
                    })
                })
                .collect();
            counting
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .sum()
        });
        assert_eq!(admitted, 100);
        // The refusal says when the next request fits.
        assert_eq!(
            memory::check_sole(tat, policy.rate, now),
            Err(policy.rate.period)
        );
        // The store holds its whole key, no other.
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_reload_between_counting_by_key_and_by_counter_loses_no_request() {
        let store = MemoryStore::new(100);
        let now = now_micros();
        let counted = sole_policy("api", 6);
        store.bind_sole_counters([&counted].into_iter());
        // The same policy, now sharing a resource with another: counted by
        // key, while requests of the snapshot before count on its counter.
        let mut keyed = sole_policy("api", 6);
        keyed.sole.eligible = false;
        store.bind_sole_counters([&keyed].into_iter());
        let key = Key {
            policy: &keyed.identity,
            party: None,
            ip: None,
        };
        let keys = [(key, keyed.rate)];
        let before = counted.sole.get().expect("a counter");
        assert!(memory::check_sole(before, counted.rate, now).is_ok());
        assert!(store.check(&keys, now).0);
        // Several keys at once (the other policy's too) count on it alike.
        let other: Arc<str> = Arc::from("other");
        let both = [
            (key, keyed.rate),
            (
                Key {
                    policy: &other,
                    party: None,
                    ip: None,
                },
                keyed.rate,
            ),
        ];
        assert!(store.check(&both, now).0);
        // And back, while the keyed snapshot still serves: one count.
        let again = sole_policy("api", 6);
        store.bind_sole_counters([&again].into_iter());
        let after = again.sole.get().expect("a counter");
        assert!(memory::check_sole(after, again.rate, now).is_ok());
        assert!(store.check(&keys, now).0);
        assert!(memory::check_sole(before, counted.rate, now).is_ok());
        // Six admitted in all, whichever way each was counted.
        assert!(memory::check_sole(after, again.rate, now).is_err());
        assert!(memory::check_sole(before, counted.rate, now).is_err());
        assert!(!store.check(&keys, now).0);
    }

    #[test]
    fn a_sole_counter_outlives_reloads_and_moves_to_and_from_the_keys() {
        let store = MemoryStore::new(100);
        let first = sole_policy("api", 3);
        store.bind_sole_counters([&first].into_iter());
        let now = now_micros();
        let tat = first.sole.get().expect("a counter");
        assert!(memory::check_sole(tat, first.rate, now).is_ok());
        assert!(memory::check_sole(tat, first.rate, now).is_ok());
        // The same policy in the next snapshot: the same count.
        let second = sole_policy("api", 3);
        store.bind_sole_counters([&second].into_iter());
        let tat = second.sole.get().expect("a counter");
        assert!(memory::check_sole(tat, second.rate, now).is_ok());
        assert!(memory::check_sole(tat, second.rate, now).is_err());
        // Counted with another policy from now on: the keys take over
        // the count (all three used).
        let mut keyed = sole_policy("api", 3);
        keyed.sole.eligible = false;
        store.bind_sole_counters([&keyed].into_iter());
        assert!(keyed.sole.get().is_none());
        let keys = [(
            Key {
                policy: &keyed.identity,
                party: None,
                ip: None,
            },
            keyed.rate,
        )];
        assert!(!store.check(&keys, now).0);
        // And back: the counter starts from the keys' count.
        let again = sole_policy("api", 3);
        store.bind_sole_counters([&again].into_iter());
        let tat = again.sole.get().expect("a counter");
        assert!(memory::check_sole(tat, again.rate, now).is_err());
    }
}
