//! Upstreams of several endpoints: which endpoint a request goes to
//! (smooth weighted round robin, or the less busy of two drawn at random),
//! and the health of each endpoint.
//!
//! Health lives in the runtime ([`Health`]), keyed by API name and endpoint
//! URL, not in the snapshot: a reload keeps the state of the endpoints it
//! keeps. Passive health ejects an endpoint after `consecutive_failures`
//! failures in a row (connect errors, resets, 502/503/504, an answer's
//! body cut) for `eject_for`, then lets one trial request through; never
//! more than `max_ejected` of an API's endpoints are out at once, and when
//! none is left, all are used (a guess beats a 503 for everything). Active checks, when configured,
//! run once per gateway, one task per endpoint, and stop when the endpoint
//! leaves the configuration.
//!
//! A try is in flight, and its outcome open, until its answer's body has
//! ended ([`Answering`], carried by the body): an endpoint that cuts an
//! answer after its head has failed, and one streaming a long answer is
//! busy. An upstream of one `url` carries nothing of this.
//!
//! Each thread picks with a [`Balancer`] of its own (its own cursor, no
//! counter shared with the other threads), over the endpoint states all
//! threads share.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Request, StatusCode};
use prometheus::{IntCounter, IntGauge};
use tokio::task::AbortHandle;

use super::client;
use super::pool::{self, Connector, Key};
use crate::config::snapshot::{ActiveHealth, Balance, Balanced, CaBundle, Endpoint, Upstream};
use crate::config::Snapshot;
use crate::http1::request_encode::{AddedFields, Destination};
use crate::metrics::tally::{self, Fold, PerThread};

/// The `result` label of `upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// 502, 503 or 504 from the endpoint.
    ErrorStatus,
    ConnectFailure,
    /// Closed before the request was read, or without an answer.
    Refused,
    Timeout,
    Failure,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Ok, "ok"),
    (Outcome::ErrorStatus, "error_status"),
    (Outcome::ConnectFailure, "connect_failure"),
    (Outcome::Refused, "refused"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Failure, "failure"),
];

/// `ejected`: taking traffic.
const IN: u64 = 0;
/// `ejected`: the ejection is over and one trial request is on its way.
const TRIAL: u64 = u64::MAX;

/// One endpoint of one API, as long as the configuration names it.
pub struct EndpointState {
    api: Arc<str>,
    url: Arc<str>,
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// [`IN`], [`TRIAL`], or the end of the ejection (milliseconds since
    /// the registry's epoch).
    ejected: AtomicU64,
    /// Marked down by active checks.
    down: AtomicBool,
    /// Its metric series; `None` for an endpoint the registry does not
    /// hold (a request still on a snapshot a reload replaced), so that
    /// no series outlives the configuration that named it.
    series: Option<Series>,
}

struct Series {
    counters: [IntCounter; 6],
    /// Each thread's counts by outcome, folded into `counters` when
    /// metrics are rendered (`metrics::tally`).
    tallies: PerThread<[u64; 6]>,
    healthy: IntGauge,
}

impl EndpointState {
    fn new(api: Arc<str>, url: Arc<str>) -> EndpointState {
        let metrics = crate::metrics::get();
        let counters = OUTCOMES.map(|(_, label)| {
            metrics
                .upstream_requests
                .with_label_values(&[&*api, &*url, label])
        });
        let healthy = metrics
            .upstream_endpoint_healthy
            .with_label_values(&[&*api, &*url]);
        healthy.set(1);
        EndpointState {
            series: Some(Series {
                counters,
                tallies: PerThread::new(),
                healthy,
            }),
            ..EndpointState::detached(api, url)
        }
    }

    /// A state whose series show its counts whenever metrics are rendered.
    fn shown(api: Arc<str>, url: Arc<str>) -> Arc<EndpointState> {
        let state = Arc::new(EndpointState::new(api, url));
        let owner: Weak<dyn Fold> = Arc::downgrade(&state) as Weak<dyn Fold>;
        tally::register(owner);
        state
    }

    /// A state no metric series shows.
    fn detached(api: Arc<str>, url: Arc<str>) -> EndpointState {
        EndpointState {
            api,
            url,
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected: AtomicU64::new(IN),
            down: AtomicBool::new(false),
            series: None,
        }
    }

    /// Whether the endpoint is out (ejected, on trial, or down).
    fn is_out(&self) -> bool {
        self.ejected.load(Ordering::Relaxed) != IN || self.down.load(Ordering::Relaxed)
    }

    fn update_gauge(&self) {
        if let Some(series) = &self.series {
            series.healthy.set(i64::from(!self.is_out()));
        }
    }

    fn count(&self, outcome: Outcome) {
        let Some(series) = &self.series else { return };
        if let Some(i) = OUTCOMES.iter().position(|(o, _)| *o == outcome) {
            series.tallies.mine()[i] += 1;
        }
    }

    /// Removes this endpoint's series (it left the configuration).
    fn forget(&self) {
        if self.series.is_none() {
            return;
        }
        let metrics = crate::metrics::get();
        for (_, label) in OUTCOMES {
            let _ = metrics
                .upstream_requests
                .remove_label_values(&[&*self.api, &*self.url, label]);
        }
        let _ = metrics
            .upstream_endpoint_healthy
            .remove_label_values(&[&*self.api, &*self.url]);
    }

    /// What the endpoint's state is, for the admin view.
    pub fn describe(&self, now_ms: u64) -> &'static str {
        if self.down.load(Ordering::Relaxed) {
            return "down";
        }
        match self.ejected.load(Ordering::Relaxed) {
            IN => "healthy",
            TRIAL => "trial",
            until if until > now_ms => "ejected",
            _ => "awaiting_trial",
        }
    }
}

impl Series {
    fn fold(&self) {
        self.tallies.each(|tally| {
            for (counter, count) in self.counters.iter().zip(tally) {
                counter.inc_by(std::mem::take(count));
            }
        });
    }
}

impl Drop for Series {
    fn drop(&mut self) {
        self.fold();
    }
}

impl Fold for EndpointState {
    fn fold(&self) {
        if let Some(series) = &self.series {
            series.fold();
        }
    }
}

/// How one endpoint may be used now.
#[derive(PartialEq)]
enum Admission {
    Yes,
    /// Its ejection is over: one trial request may go.
    Trial,
    No,
}

fn admission(state: &EndpointState, now_ms: u64) -> Admission {
    if state.down.load(Ordering::Relaxed) {
        return Admission::No;
    }
    match state.ejected.load(Ordering::Relaxed) {
        IN => Admission::Yes,
        TRIAL => Admission::No,
        until if until <= now_ms => Admission::Trial,
        _ => Admission::No,
    }
}

/// One API's endpoints with their states, for one snapshot's settings.
pub struct Balancer {
    config: Arc<Balanced>,
    states: Vec<Arc<EndpointState>>,
    cursor: AtomicUsize,
    epoch: Instant,
}

/// The choice of an endpoint for one try.
pub struct Pick {
    pub index: usize,
    trial: bool,
}

impl Balancer {
    pub fn config(&self) -> &Balanced {
        &self.config
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// `now` in milliseconds since the epoch; at least 1, so that the end
    /// of an ejection is never read as [`IN`].
    fn ms_at(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX - 1)
            .max(1)
    }

    /// An endpoint not in `tried` (a bit per index) that takes traffic;
    /// when none does, any not tried (panic mode); when all were tried,
    /// any.
    pub fn pick(&self, tried: u64) -> Pick {
        self.pick_at(tried, Instant::now())
    }

    /// [`Balancer::pick`] at `now` (a time the caller has already read).
    pub fn pick_at(&self, tried: u64, now: Instant) -> Pick {
        let now = self.ms_at(now);
        let chosen = match self.config.balance {
            Balance::RoundRobin => self.round_robin(tried, now),
            Balance::LeastRequests => self.least_requests(tried, now),
        };
        if let Some(pick) = chosen {
            return pick;
        }
        // Panic mode: every endpoint left is out; use them all.
        let schedule = &self.config.schedule;
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let untried = (0..schedule.len())
            .map(|k| usize::from(schedule[(start + k) % schedule.len()]))
            .find(|&i| tried & (1 << i) == 0);
        Pick {
            index: untried.unwrap_or(usize::from(schedule[start % schedule.len()])),
            trial: false,
        }
    }

    fn round_robin(&self, tried: u64, now: u64) -> Option<Pick> {
        let schedule = &self.config.schedule;
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..schedule.len() {
            let index = usize::from(schedule[(start + k) % schedule.len()]);
            if tried & (1 << index) != 0 {
                continue;
            }
            if let Some(pick) = self.admit(index, now) {
                return Some(pick);
            }
        }
        None
    }

    fn least_requests(&self, tried: u64, now: u64) -> Option<Pick> {
        let mut eligible = [0u8; 64];
        let mut count = 0;
        for (index, state) in self.states.iter().enumerate() {
            if tried & (1 << index) == 0 && admission(state, now) != Admission::No {
                eligible[count] = u8::try_from(index).unwrap_or(u8::MAX);
                count += 1;
            }
        }
        if count == 0 {
            return None;
        }
        let random = splitmix(self.cursor.fetch_add(1, Ordering::Relaxed) as u64);
        let first = usize::try_from(random % count as u64).unwrap_or(0);
        let chosen = if count == 1 {
            first
        } else {
            let step = 1 + usize::try_from((random >> 32) % (count as u64 - 1)).unwrap_or(0);
            let second = (first + step) % count;
            let (a, b) = (usize::from(eligible[first]), usize::from(eligible[second]));
            let busy = |i: usize| u64::from(self.states[i].in_flight.load(Ordering::Relaxed));
            let weight = |i: usize| u64::from(self.config.endpoints[i].weight);
            // in_flight(b) / weight(b) < in_flight(a) / weight(a)
            if busy(b) * weight(a) < busy(a) * weight(b) {
                second
            } else {
                first
            }
        };
        let index = usize::from(eligible[chosen]);
        self.admit(index, now).or_else(|| {
            // Its trial went to another request meanwhile: any other.
            self.round_robin(tried | (1 << index), now)
        })
    }

    /// `index` if it takes this request (a trial is claimed by one only).
    fn admit(&self, index: usize, now: u64) -> Option<Pick> {
        let state = &self.states[index];
        match admission(state, now) {
            Admission::Yes => Some(Pick {
                index,
                trial: false,
            }),
            Admission::Trial => {
                let until = state.ejected.load(Ordering::Relaxed);
                (until != IN
                    && until != TRIAL
                    && until <= now
                    && state
                        .ejected
                        .compare_exchange(until, TRIAL, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok())
                .then_some(Pick { index, trial: true })
            }
            Admission::No => None,
        }
    }

    /// The try of `pick`, counted in flight until its outcome.
    pub fn begin(self: &Arc<Self>, pick: &Pick) -> Attempt {
        self.states[pick.index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Attempt {
            balancer: self.clone(),
            index: pick.index,
            trial: pick.trial,
            done: false,
        }
    }

    fn record(&self, state: &EndpointState, outcome: Outcome, trial: bool) {
        state.count(outcome);
        self.judge(state, outcome, trial);
    }

    /// What `outcome` does to the endpoint's health (counted elsewhere).
    fn judge(&self, state: &EndpointState, outcome: Outcome, trial: bool) {
        if outcome == Outcome::Ok {
            // Reads first: a healthy endpoint's state is shared by every
            // thread, and is written only when it changes.
            if state.failures.load(Ordering::Relaxed) != 0 {
                state.failures.store(0, Ordering::Relaxed);
            }
            if state.ejected.load(Ordering::Relaxed) != IN
                && state.ejected.swap(IN, Ordering::AcqRel) != IN
            {
                tracing::info!(
                    api = &*state.api,
                    endpoint = &*state.url,
                    "upstream endpoint returned"
                );
                state.update_gauge();
            }
            return;
        }
        let passive = &self.config.passive;
        let failures = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let until = self.now_ms() + millis(passive.eject_for);
        if trial {
            state.ejected.store(until, Ordering::Release);
            tracing::warn!(
                api = &*state.api,
                endpoint = &*state.url,
                ?outcome,
                "upstream endpoint failed its trial request; ejected again"
            );
            state.update_gauge();
            return;
        }
        if failures < passive.consecutive_failures || state.ejected.load(Ordering::Relaxed) != IN {
            return;
        }
        let out = self.states.iter().filter(|s| s.is_out()).count();
        let allowed = self.states.len() * passive.max_ejected_percent as usize / 100;
        if out >= allowed {
            return;
        }
        if state
            .ejected
            .compare_exchange(IN, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                api = &*state.api,
                endpoint = &*state.url,
                failures,
                eject_for = ?passive.eject_for,
                "upstream endpoint ejected"
            );
            state.update_gauge();
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

fn splitmix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One try on one endpoint; its outcome feeds the endpoint's health.
/// It owns its balancer: an answer carries it until its body has ended.
pub struct Attempt {
    balancer: Arc<Balancer>,
    index: usize,
    trial: bool,
    done: bool,
}

impl Attempt {
    /// The endpoint answered with `status`: in flight, its outcome that
    /// of the status, until the answer's body has ended ([`Answering`]).
    pub fn answered(mut self, status: StatusCode) -> Answering {
        let outcome = match status.as_u16() {
            502..=504 => Outcome::ErrorStatus,
            _ => Outcome::Ok,
        };
        if self.trial && outcome == Outcome::Ok {
            // A trial that was answered well returns its endpoint now: the
            // answer may be a long download, an event stream or a tunnel,
            // and until it ends the endpoint takes no other request. What
            // its body does later counts as any request's.
            self.trial = false;
            let balancer = Arc::clone(&self.balancer);
            balancer.judge(&balancer.states[self.index], Outcome::Ok, true);
        }
        Answering {
            attempt: self,
            outcome,
        }
    }

    pub fn failed(mut self, outcome: Outcome) {
        self.finish(Some(outcome));
    }

    /// Neither the endpoint's success nor its failure (the client's body
    /// broke).
    pub fn neutral(mut self) {
        self.finish(None);
    }

    fn finish(&mut self, outcome: Option<Outcome>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let state = &self.balancer.states[self.index];
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Some(outcome) => self.balancer.record(state, outcome, self.trial),
            // A trial that told nothing: the next request tries again.
            None if self.trial => {
                let _ =
                    state
                        .ejected
                        .compare_exchange(TRIAL, 1, Ordering::AcqRel, Ordering::Relaxed);
            }
            None => {}
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// A try whose answer's head has come, carried by the answer's body: the
/// endpoint has the request in flight until the body has ended, and an
/// endpoint that fails the body (resets, closes early, breaks the framing,
/// goes silent) has failed the try, whatever its status said.
pub struct Answering {
    attempt: Attempt,
    /// The outcome the status gave.
    outcome: Outcome,
}

impl pool::Ending for Answering {
    fn ended(&mut self) {
        self.attempt.finish(Some(self.outcome));
    }

    fn failed(&mut self, error: &client::Error) {
        let outcome = match error {
            client::Error::Stalled(_) => Outcome::Timeout,
            _ => Outcome::Failure,
        };
        self.attempt.finish(Some(outcome));
    }
}

impl Drop for Answering {
    /// Dropped before its end (the client left): the endpoint did not
    /// fail it, and the status tells.
    fn drop(&mut self) {
        self.attempt.finish(Some(self.outcome));
    }
}

type StateKey = (Arc<str>, Arc<str>);

#[derive(Default)]
struct Registry {
    states: HashMap<StateKey, Arc<EndpointState>>,
    checks: HashMap<StateKey, (ActiveHealth, Option<CaBundle>, Endpoint, AbortHandle)>,
}

/// The health of every endpoint of every balanced upstream, kept across
/// reloads, and the active checks running.
pub struct Health {
    epoch: Instant,
    connector: Arc<Connector>,
    runtime: Option<tokio::runtime::Handle>,
    registry: Mutex<Registry>,
    /// By the address of the snapshot's [`Balanced`] they serve.
    balancers: ArcSwap<HashMap<usize, Arc<Balancer>>>,
    /// Bumped by each [`Health::prepare`]: the threads' own balancers are
    /// made again from the new ones.
    generation: AtomicU64,
}

/// The balancers of one thread, made from those of one [`Health`] at one
/// generation.
#[derive(Default)]
struct ThreadBalancers {
    health: usize,
    generation: u64,
    by_config: Vec<(usize, Arc<Balancer>)>,
}

/// A thread keeps at most this many balancers (a snapshot's balanced
/// APIs, and those of requests that began on the one before).
const THREAD_BALANCERS: usize = 256;

thread_local! {
    static BALANCERS: RefCell<ThreadBalancers> = RefCell::default();
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Health {
    pub(super) fn new(connector: Arc<Connector>) -> Health {
        Health {
            epoch: Instant::now(),
            connector,
            runtime: tokio::runtime::Handle::try_current().ok(),
            registry: Mutex::default(),
            balancers: ArcSwap::from_pointee(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// This thread's balancer for `balanced` (of `api`): its own cursor,
    /// the endpoint states of `Health::shared_balancer`.
    pub fn balancer(&self, api: &str, balanced: &Arc<Balanced>) -> Arc<Balancer> {
        let key = Arc::as_ptr(balanced) as usize;
        let health = self as *const Health as usize;
        let generation = self.generation.load(Ordering::Acquire);
        let mine = |cache: &mut ThreadBalancers| {
            if cache.health != health || cache.generation != generation {
                *cache = ThreadBalancers {
                    health,
                    generation,
                    by_config: Vec::new(),
                };
            }
            cache
                .by_config
                .iter()
                .find(|(k, b)| *k == key && Arc::ptr_eq(&b.config, balanced))
                .map(|(_, b)| b.clone())
        };
        if let Some(found) = BALANCERS.with_borrow_mut(mine) {
            return found;
        }
        let shared = self.shared_balancer(api, balanced);
        let own = Arc::new(Balancer {
            config: shared.config.clone(),
            states: shared.states.clone(),
            cursor: AtomicUsize::new(0),
            epoch: shared.epoch,
        });
        BALANCERS.with_borrow_mut(|cache| {
            if cache.by_config.len() >= THREAD_BALANCERS {
                cache.by_config.clear();
            }
            cache.by_config.push((key, own.clone()));
        });
        own
    }

    /// The balancer for `balanced` (of `api`) the threads' own are made
    /// from. One prepared for another snapshot's settings (a request that
    /// started before a reload) shares the states the registry still has.
    fn shared_balancer(&self, api: &str, balanced: &Arc<Balanced>) -> Arc<Balancer> {
        let key = Arc::as_ptr(balanced) as usize;
        if let Some(found) = self.balancers.load().get(&key) {
            if Arc::ptr_eq(&found.config, balanced) {
                return found.clone();
            }
        }
        let api: Arc<str> = api.into();
        let registry = lock(&self.registry);
        let states = balanced
            .endpoints
            .iter()
            .map(|e| {
                registry
                    .states
                    .get(&(api.clone(), e.url.clone()))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(EndpointState::detached(api.clone(), e.url.clone()))
                    })
            })
            .collect();
        Arc::new(Balancer {
            config: balanced.clone(),
            states,
            cursor: AtomicUsize::new(0),
            epoch: self.epoch,
        })
    }

    /// Binds the balanced upstreams of `snapshot` to the endpoint states,
    /// keeping those of endpoints it keeps; starts and stops active checks.
    pub fn prepare(&self, snapshot: &Snapshot) {
        let mut registry = lock(&self.registry);
        let mut states: HashMap<StateKey, Arc<EndpointState>> = HashMap::new();
        let mut checks = HashMap::new();
        let mut balancers = HashMap::new();
        for api in &snapshot.apis {
            let Upstream::Balanced(balanced) = &api.upstream else {
                continue;
            };
            let name: Arc<str> = api.name.as_str().into();
            let mut bound = Vec::with_capacity(balanced.endpoints.len());
            for endpoint in &balanced.endpoints {
                let key = (name.clone(), endpoint.url.clone());
                let state = states
                    .entry(key.clone())
                    .or_insert_with(|| {
                        registry.states.get(&key).cloned().unwrap_or_else(|| {
                            EndpointState::shown(name.clone(), endpoint.url.clone())
                        })
                    })
                    .clone();
                if let Some(active) = &balanced.active {
                    checks.entry(key).or_insert_with(|| {
                        (
                            active.clone(),
                            balanced.ca_bundle.clone(),
                            endpoint.clone(),
                            state.clone(),
                        )
                    });
                }
                bound.push(state);
            }
            balancers.insert(
                Arc::as_ptr(balanced) as usize,
                Arc::new(Balancer {
                    config: balanced.clone(),
                    states: bound,
                    cursor: AtomicUsize::new(0),
                    epoch: self.epoch,
                }),
            );
        }
        for (key, state) in &registry.states {
            if !states.contains_key(key) {
                state.forget();
            }
        }
        // Active checks: those no longer wanted (or changed) stop; a state
        // no check watches any more is no longer down.
        let running = std::mem::take(&mut registry.checks);
        for (key, (active, ca, endpoint, abort)) in running {
            match checks.get(&key) {
                Some((a, c, e, _)) if *a == active && *c == ca && *e == endpoint => {
                    checks.remove(&key);
                    registry.checks.insert(key, (active, ca, endpoint, abort));
                }
                wanted => {
                    abort.abort();
                    if wanted.is_none() {
                        if let Some(state) = states.get(&key) {
                            state.down.store(false, Ordering::Relaxed);
                            state.update_gauge();
                        }
                    }
                }
            }
        }
        for (key, (active, ca, endpoint, state)) in checks {
            let Some(runtime) = &self.runtime else { break };
            let task = check_loop(
                self.connector.clone(),
                state,
                endpoint.clone(),
                active.clone(),
                ca.clone(),
            );
            let abort = runtime.spawn(task).abort_handle();
            registry.checks.insert(key, (active, ca, endpoint, abort));
        }
        registry.states = states;
        self.balancers.store(Arc::new(balancers));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Each endpoint of `api` with its state, for the admin view.
    pub fn describe(
        &self,
        api: &str,
        balanced: &Arc<Balanced>,
    ) -> Vec<(Arc<str>, u32, &'static str)> {
        let balancer = self.balancer(api, balanced);
        let now = balancer.now_ms();
        balancer
            .states
            .iter()
            .zip(&balanced.endpoints)
            .map(|(state, endpoint)| {
                (
                    endpoint.url.clone(),
                    state.in_flight.load(Ordering::Relaxed),
                    state.describe(now),
                )
            })
            .collect()
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        for (_, (_, _, _, abort)) in lock(&self.registry).checks.drain() {
            abort.abort();
        }
    }
}

/// Checks one endpoint every `interval` until aborted: down after
/// `unhealthy` failures in a row, up again after `healthy` successes.
async fn check_loop(
    connector: Arc<Connector>,
    state: Arc<EndpointState>,
    endpoint: Endpoint,
    active: ActiveHealth,
    ca: Option<CaBundle>,
) {
    let mut ticker = tokio::time::interval(active.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut good, mut bad) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        let healthy = probe(&connector, &endpoint, &active, ca.as_ref()).await;
        let down = state.down.load(Ordering::Relaxed);
        if healthy {
            good = good.saturating_add(1);
            bad = 0;
            if down && good >= active.healthy {
                state.down.store(false, Ordering::Relaxed);
                state.update_gauge();
                tracing::info!(
                    api = &*state.api,
                    endpoint = &*state.url,
                    "upstream endpoint passes its health check again"
                );
            }
        } else {
            bad = bad.saturating_add(1);
            good = 0;
            if !down && bad >= active.unhealthy {
                state.down.store(true, Ordering::Relaxed);
                state.update_gauge();
                tracing::warn!(
                    api = &*state.api,
                    endpoint = &*state.url,
                    failures = bad,
                    "upstream endpoint fails its health check; marked down"
                );
            }
        }
    }
}

/// One `GET` of the check path on a new connection, within the check's
/// timeout: a 2xx or 3xx is healthy.
async fn probe(
    connector: &Connector,
    endpoint: &Endpoint,
    active: &ActiveHealth,
    ca: Option<&CaBundle>,
) -> bool {
    let exchange = async {
        let key = Key {
            scheme: &endpoint.scheme,
            authority: &endpoint.authority,
            ca_bundle: ca,
            dns_ttl: Duration::ZERO,
        };
        let conn = pool::connect_once(connector, &key, active.timeout)
            .await
            .ok()?;
        let req = Request::get(active.path.as_str())
            .body(super::empty())
            .ok()?;
        let destination = Destination {
            path_and_query: &active.path,
            host: &endpoint.host,
            added: AddedFields::none(),
            room: 0,
            as_sent: false,
        };
        let response = conn.send(req, destination, active.timeout).await.ok()?;
        let status = response.status();
        Some(status.is_success() || status.is_redirection())
    };
    tokio::time::timeout(active.timeout, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::snapshot::{PassiveHealth, Retry};
    use pool::Ending;

    fn balancer(n: usize, consecutive_failures: u32, max_ejected_percent: u32) -> Arc<Balancer> {
        let endpoints: Vec<Endpoint> = (0..n)
            .map(|i| {
                let authority = format!("127.0.0.1:{}", 1000 + i);
                Endpoint {
                    url: format!("http://{authority}").into(),
                    scheme: http::uri::Scheme::HTTP,
                    host: http::HeaderValue::from_str(&authority).unwrap(),
                    authority: authority.parse().unwrap(),
                    path: String::new(),
                    weight: 1,
                }
            })
            .collect();
        let config = Balanced {
            schedule: (0..n).map(|i| u8::try_from(i).unwrap()).collect(),
            endpoints,
            balance: Balance::RoundRobin,
            timeout: Duration::from_secs(1),
            ca_bundle: None,
            passive: PassiveHealth {
                consecutive_failures,
                eject_for: Duration::from_secs(3600),
                max_ejected_percent,
            },
            active: None,
            retry: Retry {
                attempts: 2,
                connect_failure: true,
                refused_stream: true,
            },
            dns_ttl: Duration::ZERO,
        };
        Arc::new(Balancer {
            states: config
                .endpoints
                .iter()
                .map(|e| Arc::new(EndpointState::detached("api".into(), e.url.clone())))
                .collect(),
            config: Arc::new(config),
            cursor: AtomicUsize::new(0),
            epoch: Instant::now(),
        })
    }

    #[test]
    fn each_thread_picks_with_its_own_balancer_over_the_shared_states() {
        let health = Health::new(Arc::new(Connector::new(Duration::from_secs(1))));
        let config = balancer(2, 1, 100).config.clone();
        {
            let mut registry = lock(&health.registry);
            for endpoint in &config.endpoints {
                let state = EndpointState::detached("api".into(), endpoint.url.clone());
                let key = ("api".into(), endpoint.url.clone());
                registry.states.insert(key, Arc::new(state));
            }
        }
        let here = health.balancer("api", &config);
        assert!(Arc::ptr_eq(&here, &health.balancer("api", &config)));
        let there =
            std::thread::scope(|s| s.spawn(|| health.balancer("api", &config)).join().unwrap());
        assert!(!Arc::ptr_eq(&here, &there), "one balancer per thread");
        for (mine, theirs) in here.states.iter().zip(&there.states) {
            assert!(Arc::ptr_eq(mine, theirs), "one state per endpoint");
        }
        // Each thread's cursor goes round all endpoints on its own.
        let picks: Vec<usize> = (0..4).map(|_| here.pick(0).index).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        assert_eq!(there.pick(0).index, 0);
        // After a reload's prepare, the thread's balancer is made again.
        health.generation.fetch_add(1, Ordering::AcqRel);
        assert!(!Arc::ptr_eq(&here, &health.balancer("api", &config)));
    }

    fn fail(balancer: &Arc<Balancer>, index: usize) {
        let pick = Pick {
            index,
            trial: false,
        };
        balancer.begin(&pick).failed(Outcome::ConnectFailure);
    }

    #[test]
    fn never_more_than_max_ejected_are_out() {
        let b = balancer(4, 1, 50);
        for index in 0..4 {
            fail(&b, index);
        }
        let out: Vec<bool> = b.states.iter().map(|s| s.is_out()).collect();
        assert_eq!(out, vec![true, true, false, false]);
        for _ in 0..8 {
            assert!(b.pick(0).index >= 2);
        }
    }

    #[test]
    fn with_every_endpoint_out_all_are_used() {
        let b = balancer(2, 1, 100);
        fail(&b, 0);
        fail(&b, 1);
        assert!(b.states.iter().all(|s| s.is_out()));
        let first = b.pick(0).index;
        let second = b.pick(1 << first).index;
        assert_ne!(first, second, "an endpoint not tried yet");
    }

    #[test]
    fn an_ended_ejection_lets_one_trial_through() {
        let b = balancer(2, 1, 100);
        // Ejected until a moment already past.
        b.states[0].ejected.store(1, Ordering::Relaxed);
        let trial = b.pick(0);
        assert_eq!((trial.index, trial.trial), (0, true));
        let attempt = b.begin(&trial);
        // While the trial is on its way, the others get the traffic.
        for _ in 0..4 {
            assert_eq!(b.pick(0).index, 1);
        }
        attempt.answered(StatusCode::OK).ended();
        assert!(!b.states[0].is_out());
        let picks: Vec<usize> = (0..4).map(|_| b.pick(0).index).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn an_answer_is_in_flight_until_its_body_ends_and_a_cut_body_fails() {
        let b = balancer(2, 1, 100);
        let in_flight = |i: usize| b.states[i].in_flight.load(Ordering::Relaxed);
        let pick = |index| Pick {
            index,
            trial: false,
        };
        let mut cut = b.begin(&pick(0)).answered(StatusCode::OK);
        assert_eq!(in_flight(0), 1, "the head came, the body is due");
        cut.failed(&client::Error::Truncated);
        assert_eq!(in_flight(0), 0);
        assert!(b.states[0].is_out(), "a 200 whose body was cut failed");
        // Told again as the body is polled after its failure, or dropped:
        // counted once.
        cut.ended();
        drop(cut);
        assert_eq!(b.states[0].failures.load(Ordering::Relaxed), 1);
        assert!(b.states[0].is_out());
        // A body the client left before its end: as its status says.
        let left = b.begin(&pick(1)).answered(StatusCode::OK);
        assert_eq!(in_flight(1), 1);
        drop(left);
        assert_eq!(in_flight(1), 0);
        assert!(!b.states[1].is_out());
    }

    #[test]
    fn a_trial_answered_well_returns_its_endpoint_before_its_body_ends() {
        let b = balancer(2, 1, 100);
        b.states[0].ejected.store(1, Ordering::Relaxed);
        let trial = b.pick(0);
        assert!(trial.trial);
        let mut answering = b.begin(&trial).answered(StatusCode::OK);
        assert!(!b.states[0].is_out(), "back at its head");
        assert_eq!(b.states[0].in_flight.load(Ordering::Relaxed), 1);
        let picks: Vec<usize> = (0..4).map(|_| b.pick(0).index).collect();
        assert!(picks.contains(&0), "takes requests again: {picks:?}");
        // Its body cut later: a failure as any request's, which ejects
        // it again at this balancer's one failure.
        answering.failed(&client::Error::Truncated);
        assert!(b.states[0].is_out());
        assert_eq!(b.states[0].in_flight.load(Ordering::Relaxed), 0);
        // A trial answered 503 stays out.
        b.states[1].ejected.store(1, Ordering::Relaxed);
        let trial = Pick {
            index: 1,
            trial: true,
        };
        let failing = b.begin(&trial).answered(StatusCode::SERVICE_UNAVAILABLE);
        drop(failing);
        assert!(b.states[1].is_out());
    }

    #[test]
    fn a_trial_that_tells_nothing_is_given_to_the_next_request() {
        let b = balancer(2, 1, 100);
        b.states[0].ejected.store(1, Ordering::Relaxed);
        let trial = b.pick(0);
        assert!(trial.trial);
        drop(b.begin(&trial));
        assert_eq!(b.states[0].ejected.load(Ordering::Relaxed), 1);
        assert_eq!(b.states[0].in_flight.load(Ordering::Relaxed), 0);
    }
}
