//! The compiled, immutable configuration a request reads. Everything that
//! depends only on the configuration (route tables, header names, templates,
//! scope grants, credentials) is computed once, here, never per request.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use smallvec::SmallVec;

use super::authz;
use super::contents::Contents;
use super::Secret;
pub use crate::metrics::ApiMetrics;
pub use crate::upstream_bound::UpstreamBound;

#[derive(Debug)]
pub struct Snapshot {
    /// Number of this snapshot: 1 for the first, +1 on every applied reload.
    pub generation: u64,
    pub loaded_at: SystemTime,
    /// The configuration file this snapshot came from.
    pub source: PathBuf,
    /// The text of `source` this snapshot was compiled from (a downloaded
    /// document merged over it is not part of it): what a central exports.
    pub source_text: Arc<str>,
    /// Every file the configuration names (watched for changes).
    pub files: Vec<PathBuf>,
    /// What `source` (the text compiled) and each file of `files` held
    /// when this snapshot was compiled from them: whether the files on
    /// disk are still what serves is a comparison with these.
    pub contents: Contents,
    pub listen: Listen,
    pub tls: Option<TlsMaterial>,
    pub admin: Admin,
    pub trusted_proxies: Vec<IpNet>,
    pub forwarding: Forwarding,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub auth_servers: BTreeMap<Arc<str>, Arc<AuthServer>>,
    /// Shows the metric series of its auth servers while it lives.
    pub auth_server_series: Vec<crate::metrics::Showing>,
    pub aliases: BTreeMap<String, Alias>,
    pub scope_mappings: Vec<ScopeMapping>,
    /// APIs by descending base-path length (the longest prefix wins).
    pub apis: Vec<Arc<Api>>,
    pub authorization_server: Option<Arc<authz::Settings>>,
    pub central: Option<Central>,
    pub api_gateway: Option<ApiGateway>,
    pub throttling: Throttling,
    /// The applications that call the APIs, and their credentials.
    pub applications: Arc<Applications>,
}

impl Drop for Snapshot {
    /// The series of the APIs only this snapshot shows go in one pass
    /// (`metrics::retiring`), however many they are.
    fn drop(&mut self) {
        let apis = std::mem::take(&mut self.apis);
        crate::metrics::retiring(|| drop(apis));
    }
}

/// `forwarding`: which fields the gateway adds to the requests it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// `X-Forwarded-For`, `-Proto` and `-Host`.
    pub x_forwarded: bool,
    /// RFC 7239 `Forwarded` (off by default: it says what `X-Forwarded-*`
    /// says, which none of the proxies users come from adds by default).
    pub forwarded: bool,
    /// `X-Request-Id`, made when no trusted proxy sent one.
    pub request_id: bool,
    /// `traceparent`, started when the request has no valid one (off by
    /// default: the gateway records no span, and a trace it starts as
    /// sampled would have upstreams that sample by their parent record
    /// every request).
    pub traceparent: bool,
}

impl Default for Forwarding {
    fn default() -> Forwarding {
        Forwarding {
            x_forwarded: true,
            forwarded: false,
            request_id: true,
            traceparent: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// `ports.pin_threads` (`server::cpus`).
    pub pin_threads: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub certificate_path: PathBuf,
    pub key_path: PathBuf,
    pub certificate_pem: Vec<u8>,
    pub key_pem: Secret,
    /// Where `tls.certificate` and `tls.key` are written, for findings
    /// about the material (checked by `server::tls::check`).
    pub certificate_at: super::diagnostic::Origin,
    pub key_at: super::diagnostic::Origin,
    /// `tls.client_ca`: client certificates are asked for and verified.
    pub client_ca: Option<ClientCa>,
}

/// The CAs client certificates must chain to, and whether one is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCa {
    pub path: PathBuf,
    pub pem: Vec<u8>,
    /// `client_auth: required`: a handshake without a certificate fails.
    pub required: bool,
    /// Where `tls.client_ca` is written.
    pub at: super::diagnostic::Origin,
}

#[derive(Debug, Clone)]
pub struct Admin {
    /// Basic credentials for `/rest/*`; `None` = reads open, mutations off.
    pub credentials: Option<(String, Secret)>,
}

/// The most `limits.max_headers` may be: the HTTP/1.1 parser's slots for
/// fields live on the stack.
pub const MAX_HEADERS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    /// 1 to [`MAX_HEADERS`].
    pub max_headers: usize,
    pub max_uri: usize,
    pub max_body: u64,
    pub max_connections: usize,
    /// Open WebSocket tunnels per listener.
    pub max_tunnels: usize,
    /// HTTP/2 requests in flight per listener beyond each connection's
    /// first.
    pub max_streams: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub upstream_connect: Duration,
    pub drain: Duration,
    /// The longest silence of a client while its request body is due.
    pub body_read: Duration,
    /// The longest a write to a client may make no progress.
    pub send: Duration,
    /// A tunnel with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthServer {
    pub id: Arc<str>,
    pub name: String,
    pub local: Option<LocalIntrospection>,
    pub remote: Option<RemoteIntrospection>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalIntrospection {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub audience: Option<String>,
    pub clock_skew: Duration,
    pub accept_jwt_typ: bool,
    /// PEM CA bundle for fetching the JWKS (`trustStoreAlias`, a path),
    /// its content part of the settings: a changed bundle is a change.
    pub trust_store: Option<CaBundle>,
    /// Key material over plain `http://` to a host that is not loopback
    /// is accepted (a discovered `jwks_uri` included).
    pub allow_insecure_http: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Post,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteIntrospection {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub client_auth: ClientAuth,
    /// What an active answer's `aud` must contain: as written, else the
    /// auth server's `localIntrospectionConfig.audience`.
    pub audience: Option<String>,
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alias {
    Basic { username: String, password: Secret },
    Bearer { token: Secret },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeMapping {
    pub auth_server: Arc<str>,
    pub token_scope: String,
    /// `API name:API scope` strings, as written.
    pub api_scopes: Vec<String>,
    /// The names of the APIs those scopes are of (any version): where a
    /// mapping of an auth server names an API, that server's tokens get
    /// none of the API's scopes by their literal names.
    pub apis: Vec<String>,
}

#[derive(Debug)]
pub struct Api {
    /// This API's metric series that do not depend on the request, looked
    /// up once per snapshot instead of by label on every request.
    pub metrics: ApiMetrics,
    pub name: String,
    pub version: String,
    /// Canonical base path without a trailing slash (`/travels`).
    pub base_path: String,
    pub base_segments: usize,
    pub transport: Transport,
    pub allow_encoded_slashes: bool,
    /// A resource has a `{tail*}`: a path is then read with a trailing
    /// slash too (`policy::route`).
    pub tail_resources: bool,
    pub upstream: Upstream,
    pub authentication: Authentication,
    pub api_scopes: Vec<String>,
    pub resources: Vec<Resource>,
    /// For each auth server, for each API scope (by index), the token scopes
    /// that grant it (through `scope_mappings`, or literally).
    pub grants: HashMap<Arc<str>, Vec<Vec<String>>>,
    pub transform: Transform,
    pub outbound: Outbound,
    /// `None`: the API answers no preflight and sends no CORS fields.
    pub cors: Option<Cors>,
    pub response_transform: ResponseTransform,
    /// How many fields the gateway may add to an upstream's answer
    /// (`X-Request-Id`, the RateLimit pair, CORS, `set_headers`): the
    /// answer's map is made with room for them.
    pub answer_room: usize,
    /// No policy of the API reads the fields of an upstream's answer or
    /// changes them other than by setting whole fields of its own (the
    /// RateLimit pair; no CORS, no response transformation): they go to
    /// an HTTP/1.1 client as the upstream sent them, the gateway's
    /// replacing any of the same name.
    pub answer_unread: bool,
    /// `policies.throttle`, in file order.
    pub throttle: Vec<ThrottlePolicy>,
    /// For each application (by `Application::index`): may it call this API?
    pub access: Vec<AppAccess>,
    /// Client addresses served; checked before any credential.
    pub ip_filter: Option<IpFilter>,
    /// WebSocket handshakes are forwarded and become tunnels.
    pub websocket: bool,
    /// A tunnel is closed this long after its handshake at the latest.
    pub tunnel_max_lifetime: Option<Duration>,
    /// `grpc: true`: the gateway's refusals are gRPC statuses (HTTP 200,
    /// `grpc-status` and `grpc-message`), and `responses_total` counts
    /// gRPC status classes.
    pub grpc: bool,
    /// `grpc: true` over HTTP/2: a call's `grpc-timeout` bounds it
    /// (`proxy::grpc_timeout`); other APIs pass the field on untouched.
    pub grpc_deadlines: bool,
    /// `upstream.max_requests`: requests to the upstream in flight at once.
    pub upstream_bound: Option<UpstreamBound>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    pub http: bool,
    pub https: bool,
}

#[derive(Debug, Clone)]
pub enum Upstream {
    /// Answers with the request as an upstream would receive it.
    Echo,
    Url {
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        /// The `Host` header the upstream receives (its authority).
        host: HeaderValue,
        /// Path prefix without a trailing slash (`/api`, or empty).
        path: String,
        timeout: Duration,
        /// Verifies an `https` upstream instead of the system roots.
        ca_bundle: Option<CaBundle>,
        /// How requests are sent: HTTP/1.1, or HTTP/2 (TLS or h2c).
        protocol: UpstreamProtocol,
    },
    /// `endpoints:`: several instances, balanced, with health and retries.
    Balanced(Arc<Balanced>),
}

/// An upstream of several endpoints (`upstream.endpoints`).
#[derive(Debug, Clone)]
pub struct Balanced {
    pub endpoints: Vec<Endpoint>,
    pub balance: Balance,
    pub timeout: Duration,
    /// Verifies `https` endpoints instead of the system roots.
    pub ca_bundle: Option<CaBundle>,
    pub passive: PassiveHealth,
    pub active: Option<ActiveHealth>,
    pub retry: Retry,
    /// Smooth weighted round robin, one turn: indexes into `endpoints`,
    /// each as often as its weight, spread out.
    pub schedule: Vec<u8>,
    /// How long the addresses of a host name are used.
    pub dns_ttl: Duration,
}

/// Most endpoints an upstream may list.
pub const MAX_ENDPOINTS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As written (trailing `/` removed): the endpoint's name in metrics,
    /// logs and the health state kept across reloads.
    pub url: Arc<str>,
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    pub host: HeaderValue,
    /// Path prefix without a trailing slash.
    pub path: String,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin.
    RoundRobin,
    /// The less busy of two endpoints drawn at random.
    LeastRequests,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failures in a row (connect errors, resets, 502/503/504) that eject
    /// an endpoint.
    pub consecutive_failures: u32,
    pub eject_for: Duration,
    /// Percent of the endpoints that may be ejected at once.
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveHealth {
    /// Path (and query) requested with `GET` on each endpoint.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that mark an endpoint up again.
    pub healthy: u32,
    /// Failures in a row that mark it down.
    pub unhealthy: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Another endpoint after a connection that could not be made.
    pub connect_failure: bool,
    /// Another endpoint after a connection closed before the request could
    /// have been read, or (idempotent, bodiless) before any answer.
    pub refused_stream: bool,
}

impl Upstream {
    /// Requests go out over HTTP/2 (`http2` or `h2c`).
    pub fn is_http2(&self) -> bool {
        matches!(
            self,
            Upstream::Url {
                protocol: UpstreamProtocol::Http2 | UpstreamProtocol::H2c,
                ..
            }
        )
    }
}

/// `upstream.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over TLS, negotiated by ALPN (`h2`).
    Http2,
    /// HTTP/2 over plain TCP by prior knowledge.
    H2c,
}

/// PEM CA certificates, read when the snapshot was compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    None,
    /// Credentials of the listed types identify the caller.
    Identify(Arc<Identification>),
}

impl Authentication {
    /// The auth server that validates tokens, when tokens are accepted.
    pub fn auth_server(&self) -> Option<&Arc<str>> {
        match self {
            Authentication::None => None,
            Authentication::Identify(identification) => identification.auth_server.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub method: Method,
    pub template: Template,
    /// Indexes into `Api::api_scopes`; empty = any valid token.
    pub api_scopes: Vec<usize>,
    /// Indexes into `Api::throttle`: the policies that count requests to
    /// this resource (filled in once the API's policies are compiled).
    pub throttle: Box<[usize]>,
    /// The `RateLimit-Policy` field listing them, sent with each answer
    /// they counted for, admitted or refused.
    pub ratelimit_policy: Option<HeaderValue>,
}

impl Api {
    /// The policies (indexes into `Api::throttle`, in its order) that
    /// count a request to resource `matched` and, for a path with a
    /// trailing slash whose other reading matches another resource, to
    /// `also` too: upstreams read such a path either way.
    pub fn throttle_counting(&self, matched: usize, also: Option<usize>) -> SmallVec<[usize; 2]> {
        let mut counting: SmallVec<[usize; 2]> =
            self.resources[matched].throttle.iter().copied().collect();
        if let Some(also) = also {
            let before = counting.len();
            for &i in self.resources[also].throttle.iter() {
                if !counting.contains(&i) {
                    counting.push(i);
                }
            }
            if counting.len() > before {
                counting.sort_unstable();
            }
        }
        counting
    }
}

/// A path template relative to the base path: `/bookings/{id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub text: String,
    pub segments: Vec<Segment>,
}

/// Match precedence per segment: a literal beats a parameter, which beats
/// the tail (the order of the variants is the order of preference).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Segment {
    Literal(String),
    Param(String),
    Tail(String),
}

#[derive(Debug, Clone, Default)]
pub struct Transform {
    /// Headers set from templates, in file order.
    pub set: Vec<(HeaderName, ValueTemplate)>,
    /// Incoming headers removed first: the `remove_headers` and the names
    /// of `set`, folded, so that no spelling of them gets through.
    pub strip: Vec<FoldedName>,
}

/// A header name as CGI-style servers read it: case, `-`, `_` and `.`
/// folded together (RFC 3875 §4.1.18 makes `X-User-Id` and `X_User_Id` the
/// same `HTTP_X_USER_ID`; PHP and others fold `.` too). Removing a header
/// in every spelling means removing every name that folds to its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedName(Box<[u8]>);

impl FoldedName {
    pub fn new(name: &str) -> FoldedName {
        FoldedName(name.bytes().map(fold).collect())
    }

    /// Whether `name` folds to this name. No allocation: one comparison of
    /// lengths, then of bytes folded on the fly.
    pub fn matches(&self, name: &HeaderName) -> bool {
        folds_to(name, &self.0)
    }
}

/// Whether `name` folds to `folded` (which must be folded already).
pub fn folds_to(name: &HeaderName, folded: &[u8]) -> bool {
    let name = name.as_str().as_bytes();
    name.len() == folded.len() && name.iter().zip(folded).all(|(n, f)| fold(*n) == *f)
}

/// One byte of a folded name: lower case, `_` and `.` taken for `-`.
pub fn fold(byte: u8) -> u8 {
    match byte {
        b'_' | b'.' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

/// Literal text and `${…}` variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueTemplate {
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Var(Variable),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Variable {
    ApplicationName,
    AuthorizationType,
    ClientId,
    UserName,
    Issuer,
    Audience,
    Scope,
    Claim(String),
}

/// An API's CORS policy, every field value joined when compiled.
#[derive(Debug, Clone)]
pub struct Cors {
    pub origins: Origins,
    /// What a preflight may ask for (`Access-Control-Request-Method`).
    pub methods: Vec<Method>,
    /// Lower case, as `HeaderName`s are.
    pub headers: Vec<HeaderName>,
    pub credentials: bool,
    /// The value of `Access-Control-Allow-Origin` for every allowed origin
    /// (`*`), or `None` when it is the request's own origin.
    pub any_origin: Option<HeaderValue>,
    pub allow_methods: HeaderValue,
    pub allow_headers: Option<HeaderValue>,
    pub max_age: Option<HeaderValue>,
    /// On the upstream's answers: `expose_headers` as written.
    pub expose: Option<HeaderValue>,
    /// On the gateway's own answers: also `WWW-Authenticate` and
    /// `Retry-After`, so that a browser application can act on a 401, 429
    /// or 503.
    pub expose_on_rejection: HeaderValue,
}

/// The origins a CORS policy allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// `["*"]`, never with credentials.
    Any,
    /// Serialized origins (`https://app.example.com:8443`), scheme and host
    /// in lower case, no default port: compared byte for byte with `Origin`.
    List(Vec<HeaderValue>),
}

/// Response transformation: plain values, applied to the upstream's
/// answers only.
#[derive(Debug, Clone, Default)]
pub struct ResponseTransform {
    /// Set (replacing the upstream's), in file order.
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl ResponseTransform {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone)]
pub enum Outbound {
    /// The incoming `Authorization` header is removed.
    None,
    /// This `Authorization` header is sent instead.
    Header(HeaderValue),
    /// The incoming `Authorization` header is passed on.
    Delegate,
}

#[derive(Debug, Clone)]
pub struct Central {
    pub users: Vec<(String, Secret)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApiGateway {
    pub url: String,
    pub user: String,
    pub password: Secret,
    pub download_settings: bool,
    pub download_apis: bool,
    pub apis: Vec<String>,
    pub poll_interval: Duration,
    pub cache_file: PathBuf,
}

/// `throttling:`: where the counters of every API's throttle policies live.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttling {
    pub store: ThrottleStore,
    pub on_store_error: OnStoreError,
    /// The longest a store call may take before `on_store_error` decides.
    pub timeout: Duration,
    /// Keys the memory store holds at most (expired ones are evicted first).
    pub max_keys: usize,
    /// The shared store `store` names, once the throttler opened it for
    /// this snapshot: held as long as the snapshot is, so a request that
    /// started on it counts in it to the end, whatever a reload opens.
    pub opened: OpenedStore,
}

/// See [`Throttling::opened`]. Its type is the throttler's, which the
/// configuration does not know: it is held as `Any` and asked for by
/// type. Not part of what the settings say: settings are equal whatever
/// store they were given.
#[derive(Clone, Default)]
pub struct OpenedStore(OnceLock<Arc<dyn Any + Send + Sync>>);

impl OpenedStore {
    /// The store, once given, if it is a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.get()?.downcast_ref()
    }

    /// Gives the store (a snapshot gets one once).
    pub fn set<T: Any + Send + Sync>(&self, store: Arc<T>) {
        let _ = self.0.set(store);
    }
}

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let given = if self.0.get().is_some() {
            "given"
        } else {
            "none"
        };
        f.debug_tuple("OpenedStore").field(&given).finish()
    }
}

impl PartialEq for OpenedStore {
    fn eq(&self, _: &OpenedStore) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ThrottleStore {
    /// This process counts alone.
    Memory,
    /// Every gateway sharing this Redis counts together.
    Redis {
        /// `redis://host:port/db` (`rediss://` for TLS); may carry
        /// credentials, so never printed.
        url: Secret,
        password: Option<Secret>,
        /// The CAs a `rediss://` server is verified against; the system's
        /// when `None`.
        ca_bundle: Option<CaBundle>,
    },
}

/// What a request gets when the store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Forwarded unthrottled (counted and logged).
    Allow,
    /// Answered 503.
    Deny,
}

/// One entry of an API's `policies.throttle`: GCRA, `limit` requests per
/// `per`, with a burst of up to `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Its name in the RateLimit fields, the metric label and `explain`.
    pub name: String,
    /// What its counters are stored under: API name and version, API
    /// scope, limit, period and partition — not the generation, so a
    /// reload keeps the counters of a policy it did not change.
    pub identity: Arc<str>,
    pub limit: u64,
    pub per: Duration,
    /// `limit` per `per`, as the GCRA counts it (`throttle::gcra`).
    pub rate: Rate,
    /// Index into `Api::api_scopes`: counts only that scope's resources.
    pub api_scope: Option<usize>,
    pub per_application: bool,
    pub per_client_ip: bool,
    /// Its item of the `RateLimit-Policy` field (`"name";q=10;w=60`).
    pub policy_field: String,
    /// Its one counter in the memory store, when it counts every request
    /// alike (no partition) and no resource counts it together with
    /// another policy: set when the store prepares the snapshot.
    pub sole: SoleCounter,
}

/// See [`ThrottlePolicy::sole`]: a request then counts with one
/// compare-and-swap, without hashing a key or taking a lock. Not part of
/// what the policy says: policies are equal whatever their counters.
#[derive(Debug, Clone, Default)]
pub struct SoleCounter {
    /// Whether the policy is counted that way (decided when compiled).
    pub eligible: bool,
    tat: OnceLock<Arc<Tat>>,
}

/// A sole counter's theoretical arrival time. Every thread swaps it, request
/// after request: it has its cache line to itself, so that the swaps do not
/// take from other threads the lines of what they only read (its `Arc`'s
/// counts, a neighbouring allocation).
pub type Tat = crossbeam_utils::CachePadded<AtomicU64>;

impl SoleCounter {
    /// The counter, once the memory store gave it.
    pub fn get(&self) -> Option<&AtomicU64> {
        self.tat.get().map(|tat| &***tat)
    }

    /// Gives the counter (a policy gets one once).
    pub fn set(&self, tat: Arc<Tat>) {
        let _ = self.tat.set(tat);
    }
}

impl PartialEq for SoleCounter {
    fn eq(&self, other: &SoleCounter) -> bool {
        self.eligible == other.eligible
    }
}

impl Eq for SoleCounter {}

/// A policy's rate, in microseconds: one request every `interval`, a
/// burst of up to `period` / `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval: u64,
    pub period: u64,
}

impl Rate {
    /// `limit` requests per `per` (compile checks `per` ≥ `limit` µs). The
    /// interval is rounded up to whole microseconds: a policy admits its
    /// limit or a little less, never more (600,000 per second rounded
    /// down would admit one request every microsecond, a million).
    pub fn of(limit: u64, per: Duration) -> Rate {
        let per = u64::try_from(per.as_micros()).unwrap_or(u64::MAX);
        let interval = per.div_ceil(limit.max(1)).max(1);
        Rate {
            interval,
            period: interval.saturating_mul(limit.max(1)),
        }
    }
}

impl ThrottlePolicy {
    /// Whether it counts requests to `resource` (of its API).
    pub fn applies_to(&self, resource: &Resource) -> bool {
        self.api_scope
            .is_none_or(|scope| resource.api_scopes.contains(&scope))
    }

    /// The `RateLimit-Policy` field listing `policies` (their items
    /// joined by `, `); `None` for none.
    pub fn field_of<'a>(
        policies: impl Iterator<Item = &'a ThrottlePolicy> + Clone,
    ) -> Option<HeaderValue> {
        let separated: usize = policies.clone().map(|p| p.policy_field.len() + 2).sum();
        let mut field = Vec::with_capacity(separated.saturating_sub(2));
        for policy in policies {
            if !field.is_empty() {
                field.extend_from_slice(b", ");
            }
            field.extend_from_slice(policy.policy_field.as_bytes());
        }
        if field.is_empty() {
            return None;
        }
        // Names and numbers only (`throttle_compile`): always valid. At
        // its exact length the value owns the allocation, no copy.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(field.into_boxed_slice())).ok()
    }

    /// `10 per 1m, per application` — for `explain`.
    pub fn describe(&self) -> String {
        let mut text = format!("{}: {} per {:?}", self.name, self.limit, self.per);
        if self.per_application {
            text.push_str(", per application");
        }
        if self.per_client_ip {
            text.push_str(", per client address");
        }
        text
    }
}

impl Snapshot {
    /// The API with the longest base path that is a segment-boundary prefix
    /// of `path`.
    pub fn api_for(&self, path: &str) -> Option<&Arc<Api>> {
        self.apis.iter().find(|api| {
            api.base_path.is_empty()
                || path
                    .strip_prefix(api.base_path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// How a caller identifies itself (`authentication.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CredentialType {
    OAuth2,
    ApiKey,
    Basic,
    Certificate,
}

impl CredentialType {
    pub const ALL: [CredentialType; 4] = [
        CredentialType::OAuth2,
        CredentialType::ApiKey,
        CredentialType::Basic,
        CredentialType::Certificate,
    ];

    /// The name in the file, in metric labels and `${request.authorization.type}`.
    pub fn label(self) -> &'static str {
        match self {
            CredentialType::OAuth2 => "oauth2",
            CredentialType::ApiKey => "api_key",
            CredentialType::Basic => "basic",
            CredentialType::Certificate => "certificate",
        }
    }
}

/// An API's `authentication` other than `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// The credential types accepted, as written (at least one, no repeats).
    pub types: Vec<CredentialType>,
    /// Validates tokens; `Some` exactly when `types` has `OAuth2`.
    pub auth_server: Option<Arc<str>>,
    /// Where an API key is sent (`X-API-Key` by default).
    pub api_key_header: HeaderName,
    /// `api_key_header` folded: every spelling of it is kept from the upstream.
    pub api_key_folded: FoldedName,
    /// `applications: registered`: only subscribed applications get through.
    pub registered_only: bool,
}

impl Identification {
    pub fn accepts(&self, kind: CredentialType) -> bool {
        self.types.contains(&kind)
    }
}

/// What an application may do on one API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppAccess {
    /// The application subscribes to the API (`apis:`).
    pub subscribed: bool,
    /// Indexes into `Api::api_scopes` granted by `api_scopes:`.
    pub api_scopes: Vec<usize>,
}

/// `ip_filter`: deny wins; an empty `allow` allows every address not denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpFilter {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

impl IpFilter {
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        !self.deny.iter().any(|net| net.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip)))
    }
}

/// A compiled application. Its secrets are kept only as digests or PHC
/// strings, in [`Applications`].
#[derive(Debug)]
pub struct Application {
    /// Position in `Applications::list`, and in every `Api::access`.
    pub index: usize,
    pub name: Arc<str>,
    pub client_ids: Vec<String>,
    /// The auth servers whose tokens its client ids are matched on
    /// (empty: any).
    pub auth_servers: Vec<Arc<str>>,
    pub basic_users: Vec<String>,
    pub api_keys: usize,
    /// SHA-256 fingerprints of its client certificates.
    pub certificates: Vec<[u8; 32]>,
    /// Empty = any address.
    pub ip_ranges: Vec<IpNet>,
    /// Subscriptions as written (`name` or `name:version`).
    pub apis: Vec<String>,
    /// `API:scope` as written.
    pub api_scopes: Vec<String>,
    /// `application_requests_total{application}` for this application.
    pub metrics: crate::metrics::ApplicationMetrics,
}

impl Application {
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        self.ip_ranges.is_empty() || self.ip_ranges.iter().any(|net| net.contains(&ip))
    }

    /// Whether its client ids stand for it on tokens of `auth_server`.
    pub fn trusts(&self, auth_server: &str) -> bool {
        self.auth_servers.is_empty() || self.auth_servers.iter().any(|s| &**s == auth_server)
    }
}

/// Every application, and its credentials indexed for lookup.
#[derive(Debug, Default)]
pub struct Applications {
    pub list: Vec<Arc<Application>>,
    /// SHA-256 of each API key, with its application's index.
    pub api_keys: Vec<([u8; 32], usize)>,
    /// Basic user name → (application index, Argon2 PHC string).
    pub basic_users: HashMap<String, (usize, Secret)>,
    /// The user whose hash an unknown user name is checked against: one
    /// with the parameters most users' hashes have, so the check costs
    /// what most cost.
    pub dummy_basic_user: Option<String>,
    pub certificates: HashMap<[u8; 32], usize>,
    /// Client id → the applications it is given to, each at auth servers
    /// of its own (no two at the same one).
    pub client_ids: HashMap<String, Vec<usize>>,
}

impl Applications {
    /// The application whose API key has this SHA-256 digest. Every
    /// digest is compared in constant time; none is skipped.
    pub fn by_api_key_digest(&self, digest: &[u8; 32]) -> Option<&Arc<Application>> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for (known, index) in &self.api_keys {
            if bool::from(known.ct_eq(digest)) {
                found = Some(*index);
            }
        }
        found.and_then(|index| self.list.get(index))
    }

    pub fn by_certificate(&self, fingerprint: &[u8; 32]) -> Option<&Arc<Application>> {
        self.certificates
            .get(fingerprint)
            .and_then(|&index| self.list.get(index))
    }

    /// The application a token of `auth_server` with this client id
    /// comes from.
    pub fn by_client_id(&self, auth_server: &str, client_id: &str) -> Option<&Arc<Application>> {
        self.client_ids
            .get(client_id)?
            .iter()
            .filter_map(|&index| self.list.get(index))
            .find(|app| app.trusts(auth_server))
    }
}
