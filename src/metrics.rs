//! Every metric the gateway exports, with its name and label set, in one
//! process-wide Prometheus registry (`microgateway_` prefix). Labels never
//! carry a token, a secret or a client-chosen string other than a path the
//! configuration declared (API names come from the snapshot).

pub mod tally;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, PoisonError, Weak};

use http::{Method, StatusCode};
use prometheus::local::LocalHistogram;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tally::{Fold, PerThread};

pub struct Metrics {
    pub registry: Registry,
    /// `requests_total{api,method,status}`; `api` is `-` when no API matched
    /// (a request dropped before it matched one included).
    pub requests: IntCounterVec,
    /// `responses_total{api,class}`: status classes (2xx..5xx) per API.
    pub responses: IntCounterVec,
    pub request_duration: Histogram,
    /// What each thread observed of `request_duration` and has not folded.
    request_durations: PerThread<Option<LocalHistogram>>,
    /// `upstream_duration_seconds{api}`.
    pub upstream_duration: HistogramVec,
    /// `auth_decisions_total{api,result,type}`; `type` is the credential
    /// type that decided (`none` when no credential did).
    pub auth_decisions: IntCounterVec,
    /// `application_requests_total{application}`: requests an identified
    /// caller made, by configured application (`unknown` for a caller that
    /// is none of them), so the series are bounded by the configuration
    /// (those of an application a reload removed go, [`Showing`]).
    pub application_requests: IntCounterVec,
    /// `introspection_requests_total{auth_server,result}`.
    pub introspection_requests: IntCounterVec,
    /// `introspection_cache_total{result}` (hit|miss|negative_hit|coalesced).
    pub introspection_cache: IntCounterVec,
    /// `basic_auth_cache_total{result}` (hit|miss|coalesced): a miss
    /// is one Argon2 check.
    pub basic_auth_cache: IntCounterVec,
    /// `jwks_refresh_total{auth_server,result}`.
    pub jwks_refresh: IntCounterVec,
    /// `config_reload_total{source,result}`.
    pub config_reload: IntCounterVec,
    pub config_generation: IntGauge,
    /// `tokens_issued_total{grant_type}`.
    pub tokens_issued: IntCounterVec,
    /// `client_errors_total{cause}`: connections and requests a client
    /// broke (body_malformed|body_truncated|body_timeout|send_timeout);
    /// never counted as upstream failures.
    pub client_errors: IntCounterVec,
    /// `upstream_errors_total{api,cause}` (connect|timeout|protocol): the
    /// upstream failed an exchange the client had done its part of.
    pub upstream_errors: IntCounterVec,
    /// `requests_cut_by_shutdown_total`: requests still unanswered when
    /// the drain timeout passed, their connections closed; never counted
    /// as the client's fault.
    pub requests_cut_by_shutdown: IntCounter,
    /// `log_lines_dropped_total`: log lines dropped because stderr could
    /// not take them as fast as they came (`logging`).
    pub log_lines_dropped: IntCounter,
    /// `throttled_total{api,policy}`: requests a throttle policy refused.
    pub throttled: IntCounterVec,
    /// `throttle_store_errors_total`: throttle store calls that failed or
    /// timed out (each then decided by `on_store_error`).
    pub throttle_store_errors: IntCounter,
    /// `throttle_store_reconnects_total`: connections to the Redis store
    /// replaced after calls on them failed in a row.
    pub throttle_store_reconnects: IntCounter,
    /// `upstream_requests_total{api,endpoint,result}`: exchanges with each
    /// configured endpoint of a balanced upstream
    /// (ok|error_status|connect_failure|refused|timeout|failure).
    pub upstream_requests: IntCounterVec,
    /// `upstream_endpoint_healthy{api,endpoint}`: 1 while the endpoint
    /// takes traffic, 0 while ejected or marked down by active checks.
    pub upstream_endpoint_healthy: IntGaugeVec,
    /// `tunnels_open{api}`: WebSocket tunnels open now.
    pub tunnels_open: IntGaugeVec,
    /// `tunnel_bytes_total{api,direction}` (`upstream`: from the client
    /// to the upstream, `downstream`: back).
    pub tunnel_bytes: IntCounterVec,
}

#[allow(
    clippy::expect_used,
    reason = "metric names and labels are static and valid; each is registered once"
)]
fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help).namespace("microgateway"), labels)
        .expect("metric names and labels are static and valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

#[allow(
    clippy::expect_used,
    reason = "metric names and labels are static and valid; each is registered once"
)]
fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help).namespace("microgateway"), labels)
        .expect("metric names and labels are static and valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once");
    metric
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Metrics {
    #[allow(
        clippy::expect_used,
        reason = "metric options are static and valid; each is registered once"
    )]
    fn new() -> Metrics {
        let registry = Registry::new();
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from request to response head",
            )
            .namespace("microgateway")
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("static histogram options are valid");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("registered once");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time the upstream took to answer",
            )
            .namespace("microgateway")
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["api"],
        )
        .expect("static histogram options are valid");
        registry
            .register(Box::new(upstream_duration.clone()))
            .expect("registered once");
        let log_lines_dropped = IntCounter::with_opts(
            Opts::new(
                "log_lines_dropped_total",
                "Log lines dropped because stderr could not take them in time",
            )
            .namespace("microgateway"),
        )
        .expect("static counter options are valid");
        registry
            .register(Box::new(log_lines_dropped.clone()))
            .expect("registered once");
        let config_generation = IntGauge::with_opts(
            Opts::new("config_generation", "Generation of the serving snapshot")
                .namespace("microgateway"),
        )
        .expect("static gauge options are valid");
        registry
            .register(Box::new(config_generation.clone()))
            .expect("registered once");
        let throttle_store_errors = IntCounter::with_opts(
            Opts::new(
                "throttle_store_errors_total",
                "Throttle store calls that failed or timed out",
            )
            .namespace("microgateway"),
        )
        .expect("static counter options are valid");
        registry
            .register(Box::new(throttle_store_errors.clone()))
            .expect("registered once");
        let throttle_store_reconnects = IntCounter::with_opts(
            Opts::new(
                "throttle_store_reconnects_total",
                "Connections to the Redis throttle store replaced after calls on them failed in a row",
            )
            .namespace("microgateway"),
        )
        .expect("static counter options are valid");
        registry
            .register(Box::new(throttle_store_reconnects.clone()))
            .expect("registered once");
        let requests_cut_by_shutdown = IntCounter::with_opts(
            Opts::new(
                "requests_cut_by_shutdown_total",
                "Requests unanswered when the shutdown's drain timeout closed their connections",
            )
            .namespace("microgateway"),
        )
        .expect("static counter options are valid");
        registry
            .register(Box::new(requests_cut_by_shutdown.clone()))
            .expect("registered once");
        let tunnels_open = IntGaugeVec::new(
            Opts::new("tunnels_open", "WebSocket tunnels open").namespace("microgateway"),
            &["api"],
        )
        .expect("static gauge options are valid");
        registry
            .register(Box::new(tunnels_open.clone()))
            .expect("registered once");
        Metrics {
            tunnels_open,
            tunnel_bytes: counter(
                &registry,
                "tunnel_bytes_total",
                "Bytes carried by WebSocket tunnels",
                &["api", "direction"],
            ),
            requests: counter(
                &registry,
                "requests_total",
                "Requests answered",
                &["api", "method", "status"],
            ),
            responses: counter(
                &registry,
                "responses_total",
                "Responses by status class",
                &["api", "class"],
            ),
            auth_decisions: counter(
                &registry,
                "auth_decisions_total",
                "Authentication and authorization outcomes",
                &["api", "result", "type"],
            ),
            application_requests: counter(
                &registry,
                "application_requests_total",
                "Requests allowed, by calling application",
                &["application"],
            ),
            introspection_requests: counter(
                &registry,
                "introspection_requests_total",
                "Calls to introspection endpoints",
                &["auth_server", "result"],
            ),
            introspection_cache: counter(
                &registry,
                "introspection_cache_total",
                "Introspection cache lookups",
                &["result"],
            ),
            basic_auth_cache: counter(
                &registry,
                "basic_auth_cache_total",
                "Basic credential cache lookups (a miss is one Argon2 check)",
                &["result"],
            ),
            jwks_refresh: counter(
                &registry,
                "jwks_refresh_total",
                "JWKS fetches",
                &["auth_server", "result"],
            ),
            config_reload: counter(
                &registry,
                "config_reload_total",
                "Configuration reloads",
                &["source", "result"],
            ),
            tokens_issued: counter(
                &registry,
                "tokens_issued_total",
                "Access tokens issued by the local authorization server",
                &["grant_type"],
            ),
            client_errors: counter(
                &registry,
                "client_errors_total",
                "Requests and connections broken by the client",
                &["cause"],
            ),
            upstream_errors: counter(
                &registry,
                "upstream_errors_total",
                "Exchanges the upstream failed",
                &["api", "cause"],
            ),
            log_lines_dropped,
            requests_cut_by_shutdown,
            throttled: counter(
                &registry,
                "throttled_total",
                "Requests refused by a throttle policy",
                &["api", "policy"],
            ),
            throttle_store_errors,
            throttle_store_reconnects,
            upstream_requests: counter(
                &registry,
                "upstream_requests_total",
                "Exchanges with each endpoint of a balanced upstream",
                &["api", "endpoint", "result"],
            ),
            upstream_endpoint_healthy: gauge(
                &registry,
                "upstream_endpoint_healthy",
                "Whether each endpoint of a balanced upstream takes traffic",
                &["api", "endpoint"],
            ),
            registry,
            request_duration,
            request_durations: PerThread::new(),
            upstream_duration,
            config_generation,
        }
    }

    /// Prometheus text exposition of every metric.
    #[allow(
        clippy::expect_used,
        reason = "text encoding into a Vec cannot fail and writes UTF-8"
    )]
    pub fn render(&self) -> String {
        self.request_durations.each(|local| {
            if let Some(local) = local {
                local.flush();
            }
        });
        tally::fold_all();
        if let Some(dropped) = DROPPED_LOG_LINES.get() {
            let new = uncounted(dropped(), &DROPPED_LOG_LINES_COUNTED);
            if new > 0 {
                self.log_lines_dropped.inc_by(new);
            }
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}

impl Metrics {
    /// Removes every series labelled `api="NAME"`, for each of `names`, in
    /// one pass over each family: removing n names one by one would pass
    /// over every series n times (a download of thousands of APIs, or a
    /// reload removing them, would take minutes).
    fn remove_apis(&self, names: &HashSet<String>) {
        let picked = |labels: &HashMap<&str, &str>| {
            labels.get("api").is_some_and(|api| names.contains(*api))
        };
        remove_matching(&self.requests, picked);
        remove_matching(&self.responses, picked);
        remove_matching(&self.auth_decisions, picked);
        remove_matching(&self.upstream_duration, picked);
        remove_matching(&self.upstream_errors, picked);
        remove_matching(&self.throttled, picked);
        remove_matching(&self.upstream_requests, picked);
        remove_matching(&self.upstream_endpoint_healthy, picked);
        remove_matching(&self.tunnels_open, picked);
        remove_matching(&self.tunnel_bytes, picked);
    }

    /// Removes every series labelled `application="NAME"` (the
    /// [`UNKNOWN_APPLICATION`]'s stays: callers of no application count in
    /// it), or `auth_server="NAME"`.
    fn remove_named(&self, label: Label, name: &str) {
        match label {
            Label::Application if name == UNKNOWN_APPLICATION => {}
            Label::Application => {
                let _ = self.application_requests.remove_label_values(&[name]);
            }
            Label::AuthServer => {
                let picked =
                    |labels: &HashMap<&str, &str>| labels.get("auth_server") == Some(&name);
                remove_matching(&self.introspection_requests, picked);
                remove_matching(&self.jwks_refresh, picked);
            }
        }
    }

    /// Observes a request's duration in `request_duration_seconds`.
    pub fn observe_request(&self, seconds: f64) {
        self.request_durations
            .mine()
            .get_or_insert_with(|| self.request_duration.local())
            .observe(seconds);
    }
}

/// Removes the series of `vec` whose labels `picked` picks.
fn remove_matching<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    picked: impl Fn(&HashMap<&str, &str>) -> bool,
) {
    use prometheus::core::Collector;
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if picked(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

thread_local! {
    /// The API names whose series this thread's [`retiring`] removes
    /// when it ends (`None`: removed at once).
    static RETIRING: std::cell::RefCell<Option<HashSet<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f`, removing the series of every API it retires at its end, in
/// one pass over each family: for the drop of a whole snapshot, or a
/// reload that removes many APIs.
pub fn retiring<T>(f: impl FnOnce() -> T) -> T {
    let outer = RETIRING.with(|r| r.borrow().is_some());
    if outer {
        return f(); // the outermost batch removes them
    }
    RETIRING.with(|r| *r.borrow_mut() = Some(HashSet::new()));
    // Ends the batch even if `f` unwinds: the thread never stays batching.
    let _batch = Batch;
    f()
}

/// The end of this thread's [`retiring`] batch.
struct Batch;

impl Drop for Batch {
    fn drop(&mut self) {
        let names = RETIRING.with(|r| r.borrow_mut().take()).unwrap_or_default();
        if names.is_empty() {
            return;
        }
        let shown = lock(&SHOWN);
        // A name shown again meanwhile keeps its series.
        let gone: HashSet<String> = names
            .into_iter()
            .filter(|name| !shown.apis.contains_key(name))
            .collect();
        get().remove_apis(&gone);
    }
}

/// Where the count of dropped log lines is read when metrics are rendered.
static DROPPED_LOG_LINES: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> = OnceLock::new();
/// How many of them `log_lines_dropped_total` counts.
static DROPPED_LOG_LINES_COUNTED: AtomicU64 = AtomicU64::new(0);

/// What of `total` (a count that only grows) is not in `counted` yet,
/// which then holds it: scrapes at once each count only what no other
/// counted.
fn uncounted(total: u64, counted: &AtomicU64) -> u64 {
    total.saturating_sub(counted.fetch_max(total, Ordering::AcqRel))
}

/// Sets where `log_lines_dropped_total` is read from (once, by `logging`).
pub fn count_dropped_log_lines(dropped: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = DROPPED_LOG_LINES.set(Box::new(dropped));
}

/// Counts a fault of the client (`client_errors_total{cause}`).
pub fn client_error(cause: &'static str) {
    get().client_errors.with_label_values(&[cause]).inc();
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// The series of `introspection_cache_total{result}`.
pub struct CacheCounters {
    pub hit: IntCounter,
    pub negative_hit: IntCounter,
    pub miss: IntCounter,
    pub coalesced: IntCounter,
}

/// The introspection cache's series, looked up once.
pub fn introspection_cache() -> &'static CacheCounters {
    static COUNTERS: LazyLock<CacheCounters> = LazyLock::new(|| {
        let vec = &get().introspection_cache;
        CacheCounters {
            hit: vec.with_label_values(&["hit"]),
            negative_hit: vec.with_label_values(&["negative_hit"]),
            miss: vec.with_label_values(&["miss"]),
            coalesced: vec.with_label_values(&["coalesced"]),
        }
    });
    &COUNTERS
}

/// The series of `basic_auth_cache_total{result}`.
pub struct BasicCacheCounters {
    pub hit: IntCounter,
    pub miss: IntCounter,
    pub coalesced: IntCounter,
}

/// The Basic credential cache's series, looked up once.
pub fn basic_auth_cache() -> &'static BasicCacheCounters {
    static COUNTERS: LazyLock<BasicCacheCounters> = LazyLock::new(|| {
        let vec = &get().basic_auth_cache;
        BasicCacheCounters {
            hit: vec.with_label_values(&["hit"]),
            miss: vec.with_label_values(&["miss"]),
            coalesced: vec.with_label_values(&["coalesced"]),
        }
    });
    &COUNTERS
}

/// The `application` of `application_requests_total` for a caller that is
/// no configured application.
pub const UNKNOWN_APPLICATION: &str = "unknown";

/// One compiled application or auth server. While one of a name lives,
/// the series labelled with the name are shown, until a reload to a
/// snapshot without the name removes them ([`retire`]); those of a name
/// only a snapshot that never served had go with it.
pub struct Showing {
    label: Label,
    name: String,
    showing: u64,
}

impl Showing {
    /// Shows the series of `name` while the result lives. `resolve` looks
    /// up its series under the lock they are removed under: never one a
    /// reload has just removed.
    fn of<T>(label: Label, name: &str, resolve: impl FnOnce() -> T) -> (Showing, T) {
        let mut shown = lock(&SHOWN);
        shown.next += 1;
        let fresh = shown.next;
        let entry = shown.of(label).entry(name.to_owned()).or_insert(ShownName {
            compiled: 0,
            showing: fresh,
        });
        entry.compiled += 1;
        let showing = Showing {
            label,
            name: name.to_owned(),
            showing: entry.showing,
        };
        (showing, resolve())
    }

    /// Shows the series of auth server `id` while the result lives.
    pub fn auth_server(id: &str) -> Showing {
        Showing::of(Label::AuthServer, id, || ()).0
    }
}

impl Drop for Showing {
    fn drop(&mut self) {
        let mut shown = lock(&SHOWN);
        let names = shown.of(self.label);
        let Some(entry) = names
            .get_mut(&self.name)
            .filter(|entry| entry.showing == self.showing)
        else {
            return;
        };
        entry.compiled = entry.compiled.saturating_sub(1);
        if entry.compiled == 0 {
            names.remove(&self.name);
            get().remove_named(self.label, &self.name);
        }
    }
}

impl std::fmt::Debug for Showing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Showing")
            .field("label", &self.label)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A reload removed application or auth server `name`: its series go now,
/// whatever compiled ones of the name still live (an idle thread may hold
/// the snapshot before for long). What those count goes nowhere.
pub fn retire(label: Label, name: &str) {
    let mut shown = lock(&SHOWN);
    shown.of(label).remove(name);
    get().remove_named(label, name);
}

/// A tunnel's series (see [`ApiMetrics::tunnel_series`]).
pub struct TunnelSeries {
    pub open: IntGauge,
    pub upstream: IntCounter,
    pub downstream: IntCounter,
}

impl TunnelSeries {
    #[allow(
        clippy::expect_used,
        reason = "the names are constant and valid: making them cannot fail"
    )]
    fn detached() -> TunnelSeries {
        TunnelSeries {
            open: IntGauge::new("tunnels_open_detached", "counts nowhere").expect("valid name"),
            upstream: IntCounter::new("tunnel_bytes_detached", "counts nowhere")
                .expect("valid name"),
            downstream: IntCounter::new("tunnel_bytes_detached", "counts nowhere")
                .expect("valid name"),
        }
    }
}

/// `application_requests_total{application}` of one compiled application,
/// looked up once; shown while it lives (see [`Showing`]).
pub struct ApplicationMetrics {
    pub requests: IntCounter,
    shown: Showing,
}

impl ApplicationMetrics {
    pub fn of(application: &str) -> ApplicationMetrics {
        let (shown, requests) = Showing::of(Label::Application, application, || {
            get().application_requests.with_label_values(&[application])
        });
        ApplicationMetrics { requests, shown }
    }
}

impl std::fmt::Debug for ApplicationMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplicationMetrics")
            .field("application", &self.shown.name)
            .finish_non_exhaustive()
    }
}

/// What one auth server's validators count in `introspection_requests_total`
/// or `jwks_refresh_total`: each series is looked up the first time it is
/// counted, if the auth server is shown then. Once a reload removed it,
/// what validators still at work for requests begun before count goes
/// nowhere and makes no series again.
pub struct AuthServerCounts {
    vec: &'static IntCounterVec,
    auth_server: Arc<str>,
    results: &'static [&'static str],
    series: Box<[OnceLock<IntCounter>]>,
}

impl AuthServerCounts {
    /// `introspection_requests_total{auth_server, result}`.
    pub fn introspection(auth_server: Arc<str>) -> AuthServerCounts {
        AuthServerCounts::new(
            &get().introspection_requests,
            auth_server,
            &["active", "inactive", "saturated", "error"],
        )
    }

    /// `jwks_refresh_total{auth_server, result}`.
    pub fn jwks(auth_server: Arc<str>) -> AuthServerCounts {
        AuthServerCounts::new(
            &get().jwks_refresh,
            auth_server,
            &["ok", "not_modified", "error"],
        )
    }

    fn new(
        vec: &'static IntCounterVec,
        auth_server: Arc<str>,
        results: &'static [&'static str],
    ) -> AuthServerCounts {
        AuthServerCounts {
            vec,
            auth_server,
            results,
            series: results.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    /// Counts one `result` (one of those its constructor names).
    pub fn count(&self, result: &str) {
        let Some(index) = self.results.iter().position(|r| *r == result) else {
            return;
        };
        let Some(slot) = self.series.get(index) else {
            return;
        };
        if let Some(series) = slot.get() {
            series.inc();
            return;
        }
        let shown = lock(&SHOWN);
        if !shown.auth_servers.contains_key(&*self.auth_server) {
            return;
        }
        slot.get_or_init(|| self.vec.with_label_values(&[&self.auth_server, result]))
            .inc();
    }
}

impl std::fmt::Debug for AuthServerCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServerCounts")
            .field("auth_server", &self.auth_server)
            .finish_non_exhaustive()
    }
}

/// The series of one API (or of requests that matched none, `api="-"`),
/// looked up once when a snapshot is compiled. Each thread counts its
/// requests in a tally of its own (`tally`), folded into the series when
/// they are rendered: counting a request takes no lock another thread
/// holds, hashes no label and writes no memory another core writes.
///
/// The series labelled with an API (and the `throttled_total` series of
/// its throttle policies) are shown while a compiled API of that name
/// (with that policy) is: those of an API a reload removed, or of a
/// snapshot never served, are removed from the registry when the last
/// one goes ([`ApiMetrics::retire`], or dropped), so APIs renamed reload
/// after reload do not grow `/metrics`.
#[derive(Clone)]
pub struct ApiMetrics(Arc<ApiSeries>);

struct ApiSeries {
    name: String,
    /// Its throttle policies' names (`throttled_total{api, policy}`)
    /// that are still shown.
    policies: Mutex<Vec<String>>,
    /// No longer shown: what is still counted (by requests begun on the
    /// snapshot that had it) goes nowhere, and creates no series again.
    retired: AtomicBool,
    /// `auth_decisions_total{api, result="allowed", type}`, by [`AUTH_TYPES`].
    allowed: [IntCounter; 5],
    /// `upstream_duration_seconds{api}`.
    upstream_duration: Histogram,
    /// `responses_total{api, class}`, 1xx..5xx.
    responses: [IntCounter; 5],
    tallies: PerThread<ApiTally>,
    /// The upstream's failures, and its answers that broke off: a line
    /// once in a while for each API (one upstream down hides no other's).
    failures_logged: crate::sparse::Sparse,
    broke_off_logged: crate::sparse::Sparse,
}

/// What one thread counted for one API since the last fold.
#[derive(Default)]
struct ApiTally {
    allowed: [u64; 5],
    responses: [u64; 5],
    /// `requests_total` by method and status (see [`request_key`]).
    requests: Vec<(u32, u64)>,
    upstream_duration: Option<LocalHistogram>,
}

/// The `type` labels of `auth_decisions_total`: no credential, then each
/// credential type.
pub const AUTH_TYPES: [&str; 5] = ["none", "oauth2", "api_key", "basic", "certificate"];

/// Method and status pairs a thread tallies per API; past that, it counts
/// in the series directly.
const CACHED_PER_THREAD: usize = 64;

/// The names whose series are shown: a name's series go when its count
/// ends, or (applications and auth servers) when a reload removes it.
static SHOWN: LazyLock<Mutex<ShownNames>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct ShownNames {
    /// How many compiled APIs of each name are alive and not retired,
    /// and how many of them have each throttle policy.
    apis: HashMap<String, Shown>,
    /// How many compiled applications of each name are alive.
    applications: HashMap<String, ShownName>,
    /// How many compiled auth servers of each id are alive.
    auth_servers: HashMap<String, ShownName>,
    /// The number the next name shown again is given.
    next: u64,
}

#[derive(Default)]
struct Shown {
    apis: usize,
    policies: HashMap<String, usize>,
}

/// An application or auth server shown: how many compiled ones of its
/// name are alive, and which showing of the name this is (a compiled one
/// outliving a reload that removed its name does not count in the showing
/// of a later reload that brought it back).
struct ShownName {
    compiled: usize,
    showing: u64,
}

/// What a name labels: `application` or `auth_server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Application,
    AuthServer,
}

impl ShownNames {
    fn of(&mut self, label: Label) -> &mut HashMap<String, ShownName> {
        match label {
            Label::Application => &mut self.applications,
            Label::AuthServer => &mut self.auth_servers,
        }
    }
}

impl ApiMetrics {
    /// The name of the API these series count.
    pub fn api(&self) -> &str {
        &self.0.name
    }

    /// Whether a line about a failure of this API's upstream is due (see
    /// [`Sparse`](crate::sparse::Sparse)); then how many were held back.
    pub fn failure_line_due(&self) -> Option<u64> {
        self.0.failures_logged.due()
    }

    /// The same, for an answer of its upstream that broke off.
    pub fn broke_off_line_due(&self) -> Option<u64> {
        self.0.broke_off_logged.due()
    }

    /// The series of API `api`, whose throttle policies are `policies`.
    pub fn of<'p>(api: &str, policies: impl IntoIterator<Item = &'p str>) -> ApiMetrics {
        let policies: Vec<String> = policies.into_iter().map(str::to_owned).collect();
        {
            let mut shown = lock(&SHOWN);
            let entry = shown.apis.entry(api.to_owned()).or_default();
            entry.apis += 1;
            for policy in &policies {
                *entry.policies.entry(policy.clone()).or_default() += 1;
            }
        }
        let metrics = get();
        let class = |c: &str| metrics.responses.with_label_values(&[api, c]);
        let series = Arc::new(ApiSeries {
            name: api.to_owned(),
            policies: Mutex::new(policies),
            retired: AtomicBool::new(false),
            allowed: AUTH_TYPES.map(|kind| {
                metrics
                    .auth_decisions
                    .with_label_values(&[api, "allowed", kind])
            }),
            upstream_duration: metrics.upstream_duration.with_label_values(&[api]),
            responses: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            tallies: PerThread::new(),
            failures_logged: crate::sparse::Sparse::new(),
            broke_off_logged: crate::sparse::Sparse::new(),
        });
        let owner: Weak<dyn Fold> = Arc::downgrade(&series) as Weak<dyn Fold>;
        tally::register(owner);
        ApiMetrics(series)
    }

    /// The series of requests that matched no API.
    pub fn unmatched() -> &'static ApiMetrics {
        static UNMATCHED: LazyLock<ApiMetrics> = LazyLock::new(|| ApiMetrics::of("-", []));
        &UNMATCHED
    }

    /// The API left the configuration: its series are removed unless
    /// another compiled API of its name still shows them (a policy's,
    /// unless another still has the policy). Counts of requests begun on
    /// its snapshot are dropped from now on.
    pub fn retire(&self) {
        self.0.retire();
    }

    /// The API stays, with the throttle policies `kept`: the series of
    /// its others are removed unless another compiled API of its name
    /// still has them.
    pub fn keep_policies<'p>(&self, kept: impl IntoIterator<Item = &'p str> + Clone) {
        let mut shown = lock(&SHOWN);
        let mut mine = lock(&self.0.policies);
        let mut gone = Vec::new();
        mine.retain(|policy| {
            let keep = kept.clone().into_iter().any(|k| k == policy);
            if !keep {
                gone.push(policy.clone());
            }
            keep
        });
        drop(mine);
        if let Some(entry) = shown.apis.get_mut(&self.0.name) {
            entry.release_policies(&self.0.name, &gone);
        }
    }

    /// Counts a request refused by throttle policy `policy`
    /// (`throttled_total{api, policy}`).
    pub fn count_throttled(&self, policy: &str) {
        if self.0.is_retired() || !lock(&self.0.policies).iter().any(|p| p == policy) {
            return;
        }
        get()
            .throttled
            .with_label_values(&[self.0.name.as_str(), policy])
            .inc();
    }

    /// Counts a refused credential (`auth_decisions_total{api, result,
    /// type}`); nothing once the API is retired, whose series a reload
    /// removed.
    pub fn count_refused(&self, result: &str, kind: &str) {
        if self.0.is_retired() {
            return;
        }
        get()
            .auth_decisions
            .with_label_values(&[self.0.name.as_str(), result, kind])
            .inc();
    }

    /// The series a WebSocket tunnel of this API counts in
    /// (`tunnels_open`, then `tunnel_bytes_total` upstream and
    /// downstream): detached ones, counting nowhere, once the API is
    /// retired, so that a tunnel begun on its snapshot makes none again.
    pub fn tunnel_series(&self) -> TunnelSeries {
        if self.0.is_retired() {
            return TunnelSeries::detached();
        }
        let metrics = get();
        let name = self.0.name.as_str();
        TunnelSeries {
            open: metrics.tunnels_open.with_label_values(&[name]),
            upstream: metrics.tunnel_bytes.with_label_values(&[name, "upstream"]),
            downstream: metrics
                .tunnel_bytes
                .with_label_values(&[name, "downstream"]),
        }
    }

    /// Counts a request allowed with a credential type (one of
    /// [`AUTH_TYPES`]).
    pub fn count_allowed(&self, kind: &str) {
        let index = AUTH_TYPES.iter().position(|k| *k == kind).unwrap_or(0);
        self.0.tallies.mine().allowed[index] += 1;
    }

    /// Counts a gRPC status in `responses_total{api, class="grpc_N"}`
    /// (N from 0 to 16; any other value is counted as 2, UNKNOWN).
    pub fn count_grpc(&self, status: &[u8]) {
        const CLASSES: [&str; 17] = [
            "grpc_0", "grpc_1", "grpc_2", "grpc_3", "grpc_4", "grpc_5", "grpc_6", "grpc_7",
            "grpc_8", "grpc_9", "grpc_10", "grpc_11", "grpc_12", "grpc_13", "grpc_14", "grpc_15",
            "grpc_16",
        ];
        let code = std::str::from_utf8(status)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|code| *code < CLASSES.len())
            .unwrap_or(2);
        if self.0.is_retired() {
            return;
        }
        get()
            .responses
            .with_label_values(&[self.0.name.as_str(), CLASSES[code]])
            .inc();
    }

    /// Counts a failed exchange with this API's upstream
    /// (`upstream_errors_total{api, cause}`).
    pub fn upstream_error(&self, cause: &'static str) {
        if self.0.is_retired() {
            return;
        }
        get()
            .upstream_errors
            .with_label_values(&[self.0.name.as_str(), cause])
            .inc();
    }

    /// Observes the time the upstream took in `upstream_duration_seconds`.
    pub fn observe_upstream(&self, seconds: f64) {
        self.0
            .tallies
            .mine()
            .upstream_duration
            .get_or_insert_with(|| self.0.upstream_duration.local())
            .observe(seconds);
    }

    /// Counts an answered request in `requests_total` and `responses_total`.
    pub fn count_response(&self, method: &Method, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        let key = request_key(method, status);
        let mut tally = self.0.tallies.mine();
        tally.responses[class] += 1;
        if let Some((_, count)) = tally.requests.iter_mut().find(|(k, _)| *k == key) {
            *count += 1;
        } else if tally.requests.len() < CACHED_PER_THREAD {
            tally.requests.push((key, 1));
        } else {
            drop(tally);
            if !self.0.is_retired() {
                self.0.requests(key).inc();
            }
        }
    }
}

impl ApiSeries {
    /// The `requests_total` series of a [`request_key`].
    fn requests(&self, key: u32) -> IntCounter {
        let method = METHOD_LABELS[(key >> 16) as usize % METHOD_LABELS.len()];
        let status = status_label(key);
        get()
            .requests
            .with_label_values(&[self.name.as_str(), method, &status])
    }
}

impl ApiSeries {
    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Stops showing this API (once): its count ends, and with it, the
    /// series no other compiled API of its name shows.
    fn retire(&self) {
        if self.retired.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut shown = lock(&SHOWN);
        let Some(entry) = shown.apis.get_mut(&self.name) else {
            return;
        };
        entry.apis = entry.apis.saturating_sub(1);
        // Removed under the lock: an API of this name compiled meanwhile
        // makes its series after they went, not before.
        if entry.apis == 0 {
            shown.apis.remove(&self.name);
            let batched = RETIRING.with(|r| match r.borrow_mut().as_mut() {
                Some(names) => {
                    names.insert(self.name.clone());
                    true
                }
                None => false,
            });
            if !batched {
                get().remove_apis(&HashSet::from([self.name.clone()]));
            }
            return;
        }
        let policies = std::mem::take(&mut *lock(&self.policies));
        entry.release_policies(&self.name, &policies);
    }
}

impl Shown {
    /// One compiled API of name `api` no longer has `policies`: the
    /// series of those no other has go.
    fn release_policies(&mut self, api: &str, policies: &[String]) {
        for policy in policies {
            let Some(count) = self.policies.get_mut(policy) else {
                continue;
            };
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.policies.remove(policy);
                let _ = get().throttled.remove_label_values(&[api, policy]);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Fold for ApiSeries {
    fn fold(&self) {
        let retired = self.is_retired();
        self.tallies.each(|tally| {
            if retired {
                *tally = ApiTally::default();
                return;
            }
            for (series, count) in self.allowed.iter().zip(&mut tally.allowed) {
                series.inc_by(std::mem::take(count));
            }
            for (series, count) in self.responses.iter().zip(&mut tally.responses) {
                series.inc_by(std::mem::take(count));
            }
            for (key, count) in &mut tally.requests {
                let count = std::mem::take(count);
                if count > 0 {
                    self.requests(*key).inc_by(count);
                }
            }
            if let Some(local) = &tally.upstream_duration {
                local.flush();
            }
        });
    }
}

impl Drop for ApiSeries {
    fn drop(&mut self) {
        self.fold();
        self.retire();
    }
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics")
            .field("api", &self.0.name)
            .finish_non_exhaustive()
    }
}

/// The `method` labels: the standard methods by name, anything else as
/// `OTHER`, so a client cannot mint series with made-up methods.
const METHOD_LABELS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "OTHER",
];

/// The `status` label of a status no registry names: its class, so that an
/// upstream answering whatever status a client asks for (a mock, an
/// echo of `/status/{code}`) cannot make a series of each.
const UNNAMED_STATUS_LABELS: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// A request's series in `requests_total`: its method's index in
/// [`METHOD_LABELS`], then its status, as it came (its label is decided
/// when the series is looked up, [`status_label`], not per request).
fn request_key(method: &Method, status: StatusCode) -> u32 {
    let index: u32 = match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        _ => 9,
    };
    index << 16 | u32::from(status.as_u16())
}

/// The `status` label of a [`request_key`]'s status: the code, or, for a
/// status with no registered reason phrase other than the gateway's 499,
/// its class.
fn status_label(key: u32) -> std::borrow::Cow<'static, str> {
    let code = (key & 0xffff) as u16;
    match StatusCode::from_u16(code) {
        Ok(status) if status.canonical_reason().is_some() || code == 499 => code.to_string().into(),
        _ => UNNAMED_STATUS_LABELS[usize::from((code / 100).clamp(1, 6) - 1)].into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(api: &str, method: &str, status: &str) -> u64 {
        tally::fold_all();
        get()
            .requests
            .with_label_values(&[api, method, status])
            .get()
    }

    #[test]
    fn made_up_methods_share_one_series() {
        let api = ApiMetrics::of("metrics-test-methods", []);
        for name in ["FOO", "BAR1", "BAZ2"] {
            let method = Method::from_bytes(name.as_bytes()).expect("valid token");
            api.count_response(&method, StatusCode::NOT_FOUND);
        }
        assert_eq!(requests("metrics-test-methods", "OTHER", "404"), 3);
        assert_eq!(requests("metrics-test-methods", "FOO", "404"), 0);
    }

    #[test]
    fn cached_and_uncached_series_count_alike() {
        let api = ApiMetrics::of("metrics-test-cache", []);
        // More distinct series than a thread caches.
        const STATUSES: [u16; 20] = [
            200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 429, 500,
            502, 503, 504,
        ];
        let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
        assert!(STATUSES.len() * methods.len() > CACHED_PER_THREAD);
        for method in &methods {
            for status in STATUSES {
                let status = StatusCode::from_u16(status).expect("valid status");
                api.count_response(method, status);
                api.count_response(method, status);
            }
        }
        assert_eq!(requests("metrics-test-cache", "GET", "200"), 2);
        assert_eq!(requests("metrics-test-cache", "DELETE", "504"), 2);
        let classes = get()
            .responses
            .with_label_values(&["metrics-test-cache", "5xx"]);
        assert_eq!(classes.get(), 2 * 4 * 4);
    }

    #[test]
    fn statuses_no_registry_names_share_their_class() {
        let api = ApiMetrics::of("metrics-test-unnamed", []);
        for status in [209, 277, 299, 432, 599, 600, 999] {
            let status = StatusCode::from_u16(status).expect("valid status");
            api.count_response(&Method::GET, status);
        }
        api.count_response(&Method::GET, StatusCode::from_u16(499).expect("valid"));
        assert_eq!(requests("metrics-test-unnamed", "GET", "2xx"), 3);
        assert_eq!(requests("metrics-test-unnamed", "GET", "4xx"), 1);
        assert_eq!(requests("metrics-test-unnamed", "GET", "5xx"), 1);
        assert_eq!(requests("metrics-test-unnamed", "GET", "other"), 2);
        assert_eq!(
            requests("metrics-test-unnamed", "GET", "499"),
            1,
            "the gateway's own"
        );
        assert_eq!(requests("metrics-test-unnamed", "GET", "209"), 0);
    }

    #[test]
    fn what_threads_counted_shows_whole_when_rendered_and_when_the_api_goes() {
        let api = ApiMetrics::of("metrics-test-threads", []);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        api.count_response(&Method::POST, StatusCode::CREATED);
                        api.count_allowed("oauth2");
                        api.observe_upstream(0.002);
                    }
                });
            }
        });
        let text = get().render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(requests("metrics-test-threads", "POST", "201"), 4000);
        assert_eq!(
            line(r#"microgateway_auth_decisions_total{api="metrics-test-threads",result="allowed",type="oauth2"}"#).as_deref(),
            Some("4000")
        );
        assert_eq!(
            line(r#"microgateway_upstream_duration_seconds_count{api="metrics-test-threads"}"#)
                .as_deref(),
            Some("4000")
        );
        // Counted after the last render, then the API's series go (a
        // reload replaced its snapshot with one that has the API too):
        // nothing counted is lost.
        let next = ApiMetrics::of("metrics-test-threads", []);
        api.count_response(&Method::POST, StatusCode::CREATED);
        drop(api);
        assert_eq!(requests("metrics-test-threads", "POST", "201"), 4001);
        drop(next);
    }

    /// Whether `/metrics` names API `api`.
    fn shown(api: &str) -> bool {
        get().render().contains(&format!("api=\"{api}\""))
    }

    #[test]
    fn scrapes_at_once_count_each_dropped_line_once() {
        let counted = AtomicU64::new(0);
        let added: u64 = std::thread::scope(|scope| {
            let scrapes: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| uncounted(5_000, &counted)))
                .collect();
            scrapes
                .into_iter()
                .map(|s| s.join().expect("no panic"))
                .sum()
        });
        assert_eq!(added, 5_000);
        assert_eq!(uncounted(5_000, &counted), 0);
        assert_eq!(uncounted(5_007, &counted), 7);
    }

    #[test]
    fn the_series_of_an_api_go_with_its_last_compiled_api() {
        let first = ApiMetrics::of("metrics-test-gone", ["hourly"]);
        let second = ApiMetrics::of("metrics-test-gone", ["hourly", "daily"]);
        first.count_response(&Method::GET, StatusCode::OK);
        second.count_throttled("daily");
        second.count_throttled("hourly");
        assert!(shown("metrics-test-gone"));
        // The second drops `daily`: its series goes, `hourly`'s stays.
        second.keep_policies(["hourly"]);
        let throttled = |policy: &str| {
            get().render().contains(&format!(
                "microgateway_throttled_total{{api=\"metrics-test-gone\",policy=\"{policy}\"}}"
            ))
        };
        assert!(!throttled("daily"));
        assert!(throttled("hourly"));
        second.count_throttled("daily");
        assert!(!throttled("daily"), "a policy let go makes no series again");
        drop(first);
        assert_eq!(requests("metrics-test-gone", "GET", "200"), 1);
        second.retire();
        second.count_response(&Method::GET, StatusCode::OK);
        second.upstream_error("timeout");
        // A request refused on the retired API's snapshot, after the swap,
        // and a tunnel whose handshake was in flight.
        second.count_refused("invalid_token", "oauth2");
        let tunnel = second.tunnel_series();
        tunnel.open.inc();
        tunnel.upstream.inc_by(5);
        assert!(!shown("metrics-test-gone"));
        drop(second);
        assert!(!shown("metrics-test-gone"));
    }

    /// APIs retired in one batch lose their series when it ends, in one
    /// pass; a name compiled again within the batch keeps them.
    #[test]
    fn a_batch_removes_the_series_of_the_apis_it_retired_when_it_ends() {
        let apis: Vec<ApiMetrics> = (0..3)
            .map(|i| ApiMetrics::of(&format!("metrics-test-batch-{i}"), ["hourly"]))
            .collect();
        for api in &apis {
            api.count_response(&Method::GET, StatusCode::OK);
            api.count_throttled("hourly");
        }
        let again = retiring(|| {
            drop(apis);
            // Still shown until the batch ends.
            assert!(shown("metrics-test-batch-0"));
            ApiMetrics::of("metrics-test-batch-2", ["hourly"])
        });
        assert!(!shown("metrics-test-batch-0"));
        assert!(!shown("metrics-test-batch-1"));
        assert!(
            shown("metrics-test-batch-2"),
            "compiled again within the batch"
        );
        drop(again);
        assert!(!shown("metrics-test-batch-2"));
    }

    /// Whether `/metrics` has a series labelled `label="name"`.
    fn labelled(label: &str, name: &str) -> bool {
        get().render().contains(&format!("{label}=\"{name}\""))
    }

    #[test]
    fn an_applications_series_goes_with_the_reload_that_removes_it_or_with_its_last_compiled_one() {
        // Compiled by a reload that was refused: gone with it.
        drop(ApplicationMetrics::of("metrics-test-refused"));
        assert!(!labelled("application", "metrics-test-refused"));

        let serving = ApplicationMetrics::of("metrics-test-app");
        let next = ApplicationMetrics::of("metrics-test-app");
        serving.requests.inc();
        drop(serving);
        next.requests.inc();
        assert_eq!(next.requests.get(), 2, "the same series, counts kept");
        // A reload removes it: its series goes though `next` still lives,
        // and what `next` counts goes nowhere.
        retire(Label::Application, "metrics-test-app");
        next.requests.inc();
        assert!(!labelled("application", "metrics-test-app"));
        // A later reload brings it back: `next` going does not take the
        // new series with it.
        let back = ApplicationMetrics::of("metrics-test-app");
        back.requests.inc();
        drop(next);
        assert_eq!(
            get()
                .application_requests
                .with_label_values(&["metrics-test-app"])
                .get(),
            1
        );
        drop(back);
        assert!(!labelled("application", "metrics-test-app"));
    }

    #[test]
    fn an_auth_servers_validators_count_nothing_once_a_reload_removed_it() {
        let counts = AuthServerCounts::introspection(Arc::from("metrics-test-idp"));
        // No compiled auth server of the id: no series.
        counts.count("error");
        assert!(!labelled("auth_server", "metrics-test-idp"));
        let compiled = Showing::auth_server("metrics-test-idp");
        counts.count("error");
        counts.count("error");
        counts.count("made-up");
        let series = get()
            .introspection_requests
            .with_label_values(&["metrics-test-idp", "error"]);
        assert_eq!(series.get(), 2);
        retire(Label::AuthServer, "metrics-test-idp");
        counts.count("error");
        counts.count("active");
        assert!(!labelled("auth_server", "metrics-test-idp"));
        drop(compiled);
        assert!(!labelled("auth_server", "metrics-test-idp"));
    }
}
