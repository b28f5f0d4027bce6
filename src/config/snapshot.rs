//! The compiled, immutable configuration a request reads. Everything that
//! depends only on the configuration (route tables, header names, templates,
//! scope grants, credentials) is computed once, here, never per request.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;

use super::authz;
use super::Secret;
pub use crate::metrics::ApiMetrics;

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
    pub listen: Listen,
    pub tls: Option<TlsMaterial>,
    pub admin: Admin,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub auth_servers: BTreeMap<Arc<str>, Arc<AuthServer>>,
    pub aliases: BTreeMap<String, Alias>,
    pub scope_mappings: Vec<ScopeMapping>,
    /// APIs by descending base-path length (the longest prefix wins).
    pub apis: Vec<Arc<Api>>,
    pub authorization_server: Option<Arc<authz::Settings>>,
    pub central: Option<Central>,
    pub api_gateway: Option<ApiGateway>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
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
}

#[derive(Debug, Clone)]
pub struct Admin {
    /// Basic credentials for `/rest/*`; `None` = reads open, mutations off.
    pub credentials: Option<(String, Secret)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri: usize,
    pub max_body: u64,
    pub max_connections: usize,
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
    /// PEM CA bundle for fetching the JWKS (`trustStoreAlias` as a path).
    pub trust_store: Option<PathBuf>,
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
    pub upstream: Upstream,
    pub authentication: Authentication,
    pub api_scopes: Vec<String>,
    pub resources: Vec<Resource>,
    /// For each auth server, for each API scope (by index), the token scopes
    /// that grant it (through `scope_mappings`, or literally).
    pub grants: HashMap<Arc<str>, Vec<Vec<String>>>,
    pub transform: Transform,
    pub outbound: Outbound,
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

/// PEM CA certificates, read when the snapshot was compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: Arc<[u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    None,
    OAuth2 { auth_server: Arc<str> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub method: Method,
    pub template: Template,
    /// Indexes into `Api::api_scopes`; empty = any valid token.
    pub api_scopes: Vec<usize>,
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
fn fold(byte: u8) -> u8 {
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
    ClientId,
    UserName,
    Issuer,
    Audience,
    Scope,
    Claim(String),
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
