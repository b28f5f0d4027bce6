//! Every metric the gateway exports, with its name and label set, in one
//! process-wide Prometheus registry (`microgateway_` prefix). Labels never
//! carry a token, a secret or a client-chosen string other than a path the
//! configuration declared (API names come from the snapshot).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// `requests_total{api,method,status}`; `api` is `-` when no API matched.
    pub requests: IntCounterVec,
    /// `responses_total{api,class}`: status classes (2xx..5xx) per API.
    pub responses: IntCounterVec,
    pub request_duration: Histogram,
    /// `upstream_duration_seconds{api}`.
    pub upstream_duration: HistogramVec,
    /// `auth_decisions_total{api,result}`.
    pub auth_decisions: IntCounterVec,
    /// `introspection_requests_total{auth_server,result}`.
    pub introspection_requests: IntCounterVec,
    /// `introspection_cache_total{result}` (hit|miss|negative_hit|coalesced).
    pub introspection_cache: IntCounterVec,
    /// `jwks_refresh_total{auth_server,result}`.
    pub jwks_refresh: IntCounterVec,
    /// `config_reload_total{source,result}`.
    pub config_reload: IntCounterVec,
    pub config_generation: IntGauge,
    /// `tokens_issued_total{grant_type}`.
    pub tokens_issued: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help).namespace("microgateway"), labels)
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
    fn new() -> Metrics {
        let registry = Registry::new();
        let request_duration = Histogram::with_opts(
            HistogramOpts::new("request_duration_seconds", "Time from request to response head")
                .namespace("microgateway")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("static histogram options are valid");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("registered once");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new("upstream_duration_seconds", "Time the upstream took to answer")
                .namespace("microgateway")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["api"],
        )
        .expect("static histogram options are valid");
        registry
            .register(Box::new(upstream_duration.clone()))
            .expect("registered once");
        let config_generation = IntGauge::with_opts(
            Opts::new("config_generation", "Generation of the serving snapshot")
                .namespace("microgateway"),
        )
        .expect("static gauge options are valid");
        registry
            .register(Box::new(config_generation.clone()))
            .expect("registered once");
        Metrics {
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
                &["api", "result"],
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
            registry,
            request_duration,
            upstream_duration,
            config_generation,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}
