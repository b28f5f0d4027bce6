//! Serde mirror of the YAML file, with source spans on every value a later
//! rule may point at. Unknown keys are refused here (`deny_unknown_fields`);
//! the webMethods keys that have no effect are accepted as `Option<Ignored>`
//! and turned into warnings by `validate`. Nothing here interprets a value.

use std::fmt;

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
pub use serde_saphyr::{Location, Spanned};

/// A value with the place it was written. The fields of `Spanned`, in a type
/// of ours so that its JSON Schema is the schema of the value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S<T> {
    pub value: T,
    pub referenced: Location,
    pub defined: Location,
}

impl<T> S<T> {
    pub const fn new(value: T, referenced: Location, defined: Location) -> Self {
        S {
            value,
            referenced,
            defined,
        }
    }
}

/// An absent value: its default, written nowhere (`Location::UNKNOWN`), so
/// that a list written empty (`allow: []`) is told from one left out.
impl<T: Default> Default for S<T> {
    fn default() -> Self {
        S::new(T::default(), Location::UNKNOWN, Location::UNKNOWN)
    }
}

impl<T> S<T> {
    /// Whether the value was written in the file (not a default).
    pub fn is_written(&self) -> bool {
        self.referenced != Location::UNKNOWN
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for S<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(deserializer)?;
        Ok(S::new(spanned.value, spanned.referenced, spanned.defined))
    }
}

impl<T: JsonSchema> JsonSchema for S<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// Any scalar (string, number, boolean) kept as its text, so that durations,
/// sizes, numbers and environment overrides are interpreted in one place.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scalar(pub String);

impl JsonSchema for Scalar {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Scalar".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar (string, number or boolean)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        // Asked for as text, a plain scalar keeps what was written:
        // `0042` stays `0042` and `1.0` stays `1.0` (as a number they
        // would come back as `42` and `1`: a password or an API key
        // silently changed, a version that names other paths).
        deserializer.deserialize_str(ScalarVisitor)
    }
}

/// A webMethods key accepted with any value (null included) and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ignored {
    pub is_null: bool,
}

impl JsonSchema for Ignored {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Ignored".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "description": "Accepted for compatibility with the webMethods API Gateway export; has no effect (`check` warns)." })
    }
}

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Ok(Ignored {
            is_null: value.is_null(),
        })
    }
}

type Opt<T> = Option<S<T>>;

/// The microgateway configuration file (one YAML document; further `--- !<authServerAlias>` documents are appended to `security_settings.auth_servers`). Unknown keys are errors. Scalars may be overridden by `MCGW_` + the YAML path joined by `_` (e.g. `MCGW_PORTS_HTTP=8080`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    /// The API listeners.
    pub ports: Ports,
    /// The HTTPS listener's certificate and key (needed by `ports.https`), and client certificates.
    pub tls: Option<S<Tls>>,
    /// The admin listener: health, metrics and REST.
    pub admin: Admin,
    /// CIDRs whose `X-Forwarded-*`/`Forwarded` headers, and `X-Real-IP` and the other client address fields, are kept (default: none).
    pub trusted_proxies: Vec<S<String>>,
    /// The fields the gateway adds to each request it forwards (all on by default).
    pub forwarding: Forwarding,
    /// Request size and connection limits.
    pub limits: Limits,
    /// Timeouts of clients and upstreams.
    pub timeouts: Timeouts,
    /// The central gateway this instance downloads its settings from (off by default).
    pub api_gateway: Option<S<ApiGateway>>,
    /// Auth servers that validate tokens, and named outbound credentials.
    pub security_settings: SecuritySettings,
    /// Token scopes of an auth server mapped to API scopes (`API:scope`).
    pub scope_mappings: Vec<S<ScopeMapping>>,
    /// The APIs served.
    pub apis: Vec<S<Api>>,
    /// The local OAuth2 authorization server (off by default).
    pub authorization_server: Option<S<AuthorizationServer>>,
    /// Who may download this instance's settings as a central gateway (off by default).
    pub central: Option<S<Central>>,
    /// Where the counters of `policies.throttle` live (default: in memory).
    pub throttling: Option<S<Throttling>>,
    /// The applications that call the APIs (`raw::Application`).
    pub applications: Vec<S<Application>>,
}

/// The API listeners; omit a port to disable it.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    /// Plain HTTP port (0: any free port).
    pub http: Opt<Scalar>,
    /// HTTPS port; needs `tls`.
    pub https: Opt<Scalar>,
    /// Address the API ports bind to. Default `0.0.0.0`.
    pub bind: Opt<Scalar>,
    /// Run each thread of an API port on a CPU of its own, when the process may use exactly as many CPUs as it has threads per port (not under a CPU quota on a larger machine). Default true.
    pub pin_threads: Opt<Scalar>,
}

/// TLS of the HTTPS listener; PEM files, reloaded with the configuration. Relative paths start at the configuration file's directory.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain (X.509 v3, valid now).
    pub certificate: Opt<Scalar>,
    /// PEM private key matching `certificate` (not encrypted).
    pub key: Opt<Scalar>,
    /// PEM CA bundle that client certificates must chain to.
    pub client_ca: Opt<Scalar>,
    /// `optional` or `required` (needs `client_ca`; no certificate, no handshake). Default `optional`.
    pub client_auth: Opt<Scalar>,
}

/// The admin listener: `/health/*`, `/metrics` and `/rest/*`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Admin port. Default 9485.
    pub port: Opt<Scalar>,
    /// Admin bind address. Default `127.0.0.1`.
    pub bind: Opt<Scalar>,
    /// Basic user for `/rest/*` (no `:`); without user and password the mutating endpoints are refused (403).
    pub user: Opt<Scalar>,
    /// Basic password for `/rest/*` (secret: `${env:NAME}`, `${file:/path}`, `{encoded}BASE64` or clear).
    pub password: Opt<Scalar>,
}

/// The fields the gateway adds to each request it forwards. Turning one off
/// never lets a client's own version of it through: an untrusted client's
/// `X-Forwarded-*`, `Forwarded` and `X-Request-Id` are removed whatever is set.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Forwarding {
    /// `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host`. Default true.
    pub x_forwarded: Opt<Scalar>,
    /// RFC 7239 `Forwarded` (a trusted proxy's `X-Forwarded-*` carried into it when that proxy sent no valid `Forwarded`). Off by default: it says what `X-Forwarded-*` says, and the frameworks that read it first would take it over a chain an outer proxy wrote only in `X-Forwarded-*`. Default false.
    pub forwarded: Opt<Scalar>,
    /// An `X-Request-Id` made when no trusted proxy sent one, to the upstream, back to the client and into the access log. Default true.
    pub request_id: Opt<Scalar>,
    /// A W3C `traceparent` started when the request carries no valid one (a valid one is passed on either way). Off by default: a trace the gateway starts records no span of its own, and its sampled flag would have every upstream that samples by its parent record every request. Default false.
    pub traceparent: Opt<Scalar>,
}

/// Bounds of a request and of the connections. Sizes: `32KiB`, `10MiB` or integer bytes.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head (431 beyond; also bounds HTTP/2 header blocks). Default 32KiB; 1KiB to 1MiB.
    pub max_header_bytes: Opt<Scalar>,
    /// Most header fields in a request (431 beyond). Default 100.
    pub max_headers: Opt<Scalar>,
    /// Longest request target (414 beyond). Default 8KiB.
    pub max_uri: Opt<Scalar>,
    /// Largest request body (413 beyond). Default 10MiB.
    pub max_body: Opt<Scalar>,
    /// Most open client connections. Default 10000.
    pub max_connections: Opt<Scalar>,
    pub max_tunnels: Opt<Scalar>,
    /// HTTP/2 requests in flight at once on one port beyond each
    /// connection's first (503 beyond, before the upstream). Default 10000.
    pub max_streams: Opt<Scalar>,
}

/// Durations: `"30s"`, `"5m"`, `"1h"`, `"250ms"` or integer seconds.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Longest time to receive a request head. Default 10s.
    pub header_read: Opt<Scalar>,
    /// How long an idle client connection is kept. Default 60s.
    pub idle: Opt<Scalar>,
    /// Longest time to connect to an upstream. Default 2s.
    pub upstream_connect: Opt<Scalar>,
    /// How long in-flight requests may finish on SIGTERM. Default 30s.
    pub drain: Opt<Scalar>,
    /// Longest silence of a client while its request body is due (408, or the connection closed once the answer has begun). Default 30s; more than 0.
    pub body_read: Opt<Scalar>,
    /// Longest a write to a client may make no progress (the connection is then closed). Default 30s; more than 0.
    pub send: Opt<Scalar>,
    pub tunnel_idle: Opt<Scalar>,
}

/// The central gateway a downstream downloads settings and APIs from.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiGateway {
    /// The central gateway's URL (https, or http to loopback unless `allow_insecure_http`).
    pub url: Opt<Scalar>,
    /// Basic user for the central (no `:`).
    pub user: Opt<Scalar>,
    /// Basic password for the central (secret syntax).
    pub password: Opt<Scalar>,
    pub dir: Option<S<Ignored>>,
    /// Download the central's auth servers, aliases and scope mappings. Default false.
    pub download_settings: Opt<Scalar>,
    /// Download the central's APIs. Default false.
    pub download_apis: Opt<Scalar>,
    /// Only these APIs of the central (names); default all.
    pub apis: Vec<S<String>>,
    /// How often the central is asked for changes (duration); `0` asks once per start, and again after a local reload while a download stands refused. Default `30s`.
    pub poll_interval: Opt<Scalar>,
    /// Where the last good download is kept; used at start when the central cannot be reached, and by `check`/`explain`.
    pub cache_file: Opt<Scalar>,
    /// Plain `http://` to a host that is not loopback: a warning, not an error.
    pub allow_insecure_http: Opt<Scalar>,
}

/// Auth servers and outbound credential aliases.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    /// Auth servers that validate tokens: JWTs locally or opaque tokens by introspection.
    pub auth_servers: Vec<S<AuthServer>>,
    /// Named outbound credentials for `policies.outbound_auth.alias`.
    pub aliases: Vec<S<Alias>>,
}

/// An auth server as the webMethods API Gateway exports it (`!<authServerAlias>`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthServer {
    /// The auth server's id, named by `authentication.auth_server` and `scope_mappings`.
    pub id: Opt<String>,
    /// Display name.
    pub name: Opt<String>,
    pub description: Option<S<Ignored>>,
    /// The alias type as webMethods exports it.
    #[serde(rename = "type")]
    pub kind: Opt<String>,
    pub owner: Option<S<Ignored>>,
    /// Validate JWTs locally (signature by the JWKS, issuer, audience, expiry).
    #[serde(rename = "localIntrospectionConfig")]
    pub local_introspection: Option<S<LocalIntrospection>>,
    /// Validate tokens by RFC 7662 introspection.
    #[serde(rename = "remoteIntrospectionConfig")]
    pub remote_introspection: Option<S<RemoteIntrospection>>,
    #[serde(rename = "authServerType")]
    pub auth_server_type: Option<S<Ignored>>,
    #[serde(rename = "providerName")]
    pub provider_name: Option<S<Ignored>>,
    #[serde(rename = "discoveryURL")]
    pub discovery_url: Option<S<Ignored>>,
    #[serde(rename = "dcrEndpoint")]
    pub dcr_endpoint: Option<S<Ignored>>,
    pub metadata: Option<S<Ignored>>,
    pub scopes: Option<S<Ignored>>,
    #[serde(rename = "supportedGrantTypes")]
    pub supported_grant_types: Option<S<Ignored>>,
    #[serde(rename = "sslConfig")]
    pub ssl_config: Option<S<Ignored>>,
    #[serde(rename = "tokenGeneratorConfig")]
    pub token_generator_config: Option<S<Ignored>>,
    #[serde(rename = "remoteISConfig")]
    pub remote_is_config: Option<S<Ignored>>,
}

impl AuthServer {
    /// The webMethods keys that have no effect here, with their spans.
    pub fn ignored_keys(&self) -> Vec<(&'static str, &S<Ignored>)> {
        [
            ("authServerType", &self.auth_server_type),
            ("providerName", &self.provider_name),
            ("discoveryURL", &self.discovery_url),
            ("dcrEndpoint", &self.dcr_endpoint),
            ("metadata", &self.metadata),
            ("scopes", &self.scopes),
            ("supportedGrantTypes", &self.supported_grant_types),
            ("sslConfig", &self.ssl_config),
            ("tokenGeneratorConfig", &self.token_generator_config),
            ("remoteISConfig", &self.remote_is_config),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| (name, v)))
        .collect()
    }
}

/// JWT validation with the issuer's keys.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LocalIntrospection {
    /// Expected `iss`; its keys are found by discovery unless `jwksuri` is set (this instance's own issuer: in-process).
    pub issuer: Opt<Scalar>,
    /// URL of the JWK Set (https, or http to loopback unless `allow_insecure_http`).
    pub jwksuri: Opt<Scalar>,
    /// Expected `aud`.
    pub audience: Opt<Scalar>,
    /// Tolerance on `exp`/`nbf` (duration, at most 60s).
    #[serde(rename = "clockSkew")]
    pub clock_skew: Opt<Scalar>,
    /// Accept `typ: JWT` besides `at+jwt` (RFC 9068).
    pub accept_jwt_typ: Opt<Scalar>,
    /// Path of a PEM CA bundle trusted for the JWKS and discovery.
    #[serde(rename = "trustStoreAlias")]
    pub trust_store_alias: Option<S<Option<String>>>,
    #[serde(rename = "certificateAlias")]
    pub certificate_alias: Option<S<Ignored>>,
    pub description: Option<S<Ignored>>,
    #[serde(rename = "useLocalClockSkew")]
    pub use_local_clock_skew: Option<S<Ignored>>,
    /// Plain `http://` to a host that is not loopback: a warning, not an error.
    pub allow_insecure_http: Opt<Scalar>,
}

/// Token validation by RFC 7662 introspection.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteIntrospection {
    /// The introspection URL (https, or http to loopback unless `allow_insecure_http`).
    #[serde(rename = "introspectionEndpoint")]
    pub introspection_endpoint: Opt<Scalar>,
    /// The gateway's client id at the introspection endpoint.
    #[serde(rename = "clientId")]
    pub client_id: Opt<Scalar>,
    /// The gateway's client secret (secret syntax).
    #[serde(rename = "clientSecret")]
    pub client_secret: Opt<Scalar>,
    pub user: Option<S<Ignored>>,
    /// How the client authenticates at the endpoint.
    pub client_auth: Opt<Scalar>,
    /// Expected `aud` of an active answer (default: `localIntrospectionConfig.audience`).
    pub audience: Opt<Scalar>,
    /// How long an active answer is cached (duration, at most 24h).
    pub cache_ttl: Opt<Scalar>,
    /// How long an inactive answer is cached (duration, at most 24h).
    pub negative_cache_ttl: Opt<Scalar>,
    /// Plain `http://` to a host that is not loopback: a warning, not an error.
    pub allow_insecure_http: Opt<Scalar>,
}

/// Named outbound credentials: `{name, type: basic, username, password}` or `{name, type: bearer, token}`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Alias {
    /// Name used by `policies.outbound_auth.alias`.
    pub name: Opt<String>,
    /// `basic` or `bearer`.
    #[serde(rename = "type")]
    pub kind: Opt<String>,
    /// Basic user (no `:`).
    pub username: Opt<Scalar>,
    /// Basic password (secret syntax).
    pub password: Opt<Scalar>,
    /// Bearer token (secret syntax).
    pub token: Opt<Scalar>,
    /// Lend these credentials to the APIs a central gateway's download brings (`download_apis`): their upstreams, which the central chooses, then receive them. Default false: a downloaded API may name only an alias of the same download.
    pub allow_downloaded_apis: Opt<Scalar>,
}

/// A token scope of an auth server granting API scopes.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeMapping {
    /// The auth server's id.
    pub auth_server: Opt<String>,
    /// The token scope: one RFC 6749 §3.3 scope token (visible ASCII but `"` and `\`, no space).
    pub scope: Opt<String>,
    /// The API scopes it grants, `API:scope`.
    pub api_scopes: Vec<S<String>>,
}

/// An API: a base path, its upstream, its authentication, scopes and policies.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// The API's name.
    pub name: Opt<String>,
    /// The API's version.
    pub version: Opt<Scalar>,
    /// Path prefix the API is served under. Default `/gateway/{name}/{version}`.
    pub base_path: Opt<String>,
    /// Transports served (`http`, `https`; not an empty list); default both.
    pub transport: Option<S<Vec<S<String>>>>,
    /// Accept `%2F` in paths. Default false.
    pub allow_encoded_slashes: Opt<Scalar>,
    /// Where requests are forwarded.
    pub upstream: Option<S<Upstream>>,
    /// Required: who may call (`type: none` to serve anyone).
    pub authentication: Option<S<Authentication>>,
    /// API scopes: named groups of resources a token scope may grant (not with `type: none`).
    pub scopes: Vec<S<ApiScope>>,
    /// Resources (`METHOD /path`, `{id}` one segment, `{rest*}` the tail) that need only valid credentials.
    pub resources: Vec<S<String>>,
    /// Request and response transformations, outbound credentials, CORS and throttling.
    pub policies: Policies,
    /// Client addresses allowed and denied (403 before any credential is
    /// looked at). Written, it must name a range (a bare `ip_filter:` is an
    /// error).
    pub ip_filter: S<Option<IpFilter>>,
    /// WebSocket handshakes (HTTP/1.1 Upgrade, HTTP/2 extended CONNECT).
    pub websocket: Opt<Scalar>,
    pub tunnel_max_lifetime: Opt<Scalar>,
    /// The gateway's own refusals answered as gRPC status codes.
    pub grpc: Opt<Scalar>,
}

impl Api {
    /// The version an API without `version` has.
    pub const DEFAULT_VERSION: &'static str = "1.0";

    /// The API's version as the gateway reads it: as written, or
    /// [`Api::DEFAULT_VERSION`].
    pub fn version_or_default(&self) -> String {
        self.version
            .as_ref()
            .map_or_else(|| Api::DEFAULT_VERSION.to_owned(), |v| v.value.0.clone())
    }
}

/// The upstream of an API: `url` or `echo: true`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// Base URL requests are forwarded to.
    pub url: Opt<Scalar>,
    /// Answer with a description of the request instead of forwarding (for trials; credentials redacted).
    pub echo: Opt<Scalar>,
    /// Longest wait for the upstream's answer (duration, more than 0; 504 beyond).
    pub timeout: Opt<Scalar>,
    /// PEM CA bundle trusted for an https upstream (default: the system roots).
    pub ca_bundle: Opt<Scalar>,
    /// `http1` (default), `http2` (TLS, ALPN h2) or `h2c` (prior knowledge).
    pub protocol: Opt<Scalar>,
    /// Plain `http://` to a host that is not loopback: a warning, not an error.
    pub allow_insecure_http: Opt<Scalar>,
    /// Several instances instead of `url`.
    pub endpoints: Option<S<Vec<S<Endpoint>>>>,
    /// How a request picks an endpoint: `round_robin` (default) or `least_requests`.
    pub balance: Opt<String>,
    /// When an endpoint is taken out of the rotation and brought back.
    pub health: Option<S<Health>>,
    /// Sending a failed request to another endpoint.
    pub retry: Option<S<Retry>>,
    /// How long a resolved host name is used before it is resolved again.
    pub dns_ttl: Opt<Scalar>,
    /// Requests to this upstream in flight at once from this gateway (503 beyond, never forwarded). Default: no bound.
    pub max_requests: Opt<Scalar>,
}

/// One instance of an upstream.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Endpoint {
    /// Base URL of this instance.
    pub url: Opt<Scalar>,
    /// Share of the requests, relative to the other endpoints (default 1).
    pub weight: Opt<Scalar>,
}

/// Health of the endpoints: from the answers (passive) and from probes (active).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Ejection after consecutive failures of real requests.
    pub passive: Option<S<PassiveHealth>>,
    /// Periodic probes of every endpoint.
    pub active: Option<S<ActiveHealth>>,
}

/// Passive health: ejection on consecutive failures.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    /// Failures in a row (connect errors, resets, 502/503/504) that eject an endpoint.
    pub consecutive_failures: Opt<Scalar>,
    /// How long an ejected endpoint stays out (duration).
    pub eject_for: Opt<Scalar>,
    /// Largest share of the endpoints ejected at once (percent).
    pub max_ejected: Opt<Scalar>,
}

/// Active health: a GET probe to every endpoint.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealth {
    /// Path probed on each endpoint; a 2xx answer is healthy.
    pub path: Opt<String>,
    /// Time between two probes of one endpoint (duration).
    pub interval: Opt<Scalar>,
    /// Longest wait for a probe's answer (duration).
    pub timeout: Opt<Scalar>,
    /// Successful probes in a row that bring an endpoint back.
    pub healthy: Opt<Scalar>,
    /// Failed probes in a row that take an endpoint out.
    pub unhealthy: Opt<Scalar>,
}

/// Retries on another endpoint.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: Opt<Scalar>,
    /// What is retried: `connect_failure`, `refused_stream` (requests the endpoint never saw).
    pub on: Option<S<Vec<S<String>>>>,
}

/// Who may call an API.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Authentication {
    /// One type or a list of them.
    #[serde(rename = "type")]
    pub kind: Opt<Names>,
    /// The auth server (id) that validates tokens, for `oauth2`.
    pub auth_server: Opt<String>,
    /// The header carrying API keys. Default `X-API-Key`.
    pub api_key_header: Opt<String>,
    /// Which token clients may call: `any`, or `registered` (a subscribed application's). Default `any`.
    pub applications: Opt<String>,
}

/// A named group of resources.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ApiScope {
    /// The scope's name (`API:name` in mappings).
    pub name: Opt<String>,
    /// Resources (`METHOD /path`) of this scope.
    pub resources: Vec<S<String>>,
}

/// The policies of an API.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    /// Headers set on and removed from the request forwarded upstream.
    pub request_transformation: Option<S<RequestTransformation>>,
    /// Credentials sent to the upstream.
    pub outbound_auth: Option<S<OutboundAuth>>,
    /// Cross-origin requests from browsers.
    pub cors: Option<S<Cors>>,
    /// Headers set on and removed from the upstream's answers.
    pub response_transformation: Option<S<ResponseTransformation>>,
    /// Rate limits (GCRA): `{limit, per}`, optionally per scope, application or client address.
    pub throttle: Vec<S<Throttle>>,
}

/// Cross-origin requests from browsers (the Fetch standard's CORS protocol).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    /// Serialized origins allowed, or `["*"]` alone.
    pub allow_origins: Vec<S<String>>,
    /// Methods a preflight may ask for. Default: those the API's resources serve.
    pub allow_methods: Vec<S<String>>,
    /// Request headers a preflight may ask for (any case; no `*`).
    pub allow_headers: Vec<S<String>>,
    /// Response headers the application may read (no `*`).
    pub expose_headers: Vec<S<String>>,
    /// Send `Access-Control-Allow-Credentials: true` (not with `*`). Default false.
    pub allow_credentials: Opt<Scalar>,
    /// How long a browser keeps a preflight (duration, at most 24h).
    pub max_age: Opt<Scalar>,
}

/// Headers set on and removed from the upstream's answers.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseTransformation {
    /// Kept as a list of pairs so the order of the file is the order applied.
    pub set_headers: Pairs,
    /// Header names removed from the answer (before `set_headers`).
    pub remove_headers: Vec<S<String>>,
}

/// `throttling:`: where the counters of `policies.throttle` live.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Throttling {
    /// `memory`, `redis://HOST:PORT/DB` or `rediss://HOST:PORT/DB` (TLS) (secret syntax). Default `memory`.
    pub store: Opt<Scalar>,
    /// Redis password (secret syntax).
    pub password: Opt<Scalar>,
    /// PEM CAs a `rediss://` store's certificate is verified against. Default: the system's.
    pub ca_bundle: Opt<Scalar>,
    /// Send the Redis password unencrypted to a host that is not loopback (a warning, not an error). Default false.
    pub allow_insecure_store: Opt<Scalar>,
    /// When the store fails: `allow` (forwarded, counted, logged) or `deny` (503). Default `allow`.
    pub on_store_error: Opt<Scalar>,
    /// Longest store call. Default 50ms; 1ms to 10s.
    pub timeout: Opt<Scalar>,
    /// Most keys of the memory store. Default 100000.
    pub max_keys: Opt<Scalar>,
}

/// One entry of `policies.throttle`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Throttle {
    /// Names the policy in fields, metrics and `explain` (letters, digits, `-`, `_`, `.`). Default `api` or the scope's name, plus the partition.
    pub name: Opt<String>,
    /// Requests admitted per `per` (also the burst).
    pub limit: Opt<Scalar>,
    /// The window (duration).
    pub per: Opt<Scalar>,
    /// Count only the resources of this API scope.
    pub scope: Opt<String>,
    /// One counter per application (else per token client). Default false.
    pub per_application: Opt<Scalar>,
    /// One counter per client address (an IPv6 one by its /64 prefix). Default false.
    pub per_client_ip: Opt<Scalar>,
}

/// Headers set on and removed from the request forwarded upstream.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTransformation {
    /// Kept as a list of pairs so the order of the file is the order applied.
    pub set_headers: Pairs,
    /// Header names removed (in every spelling that folds to the same name).
    pub remove_headers: Vec<S<String>>,
}

/// Credentials sent to the upstream instead of the client's `Authorization`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundAuth {
    /// A `security_settings.aliases` name.
    pub alias: Opt<String>,
    /// `basic`.
    #[serde(rename = "type")]
    pub kind: Opt<String>,
    /// Basic user (no `:`).
    pub username: Opt<Scalar>,
    /// Basic password (secret syntax).
    pub password: Opt<Scalar>,
    /// `incoming_token`: forward the client's token.
    pub delegate: Opt<String>,
}

/// The local OAuth2 authorization server, on the API ports (`/oauth2/*`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationServer {
    /// Its public URL (`iss`).
    pub issuer: Opt<Scalar>,
    /// `jwt` (RFC 9068) or `opaque` (introspected). Default `jwt`.
    pub token_format: Opt<Scalar>,
    /// PEM signing key, generated on first start. Default `data/signing-key.pem`.
    pub signing_key: Opt<Scalar>,
    /// `sqlite:PATH` or `postgres://…` (secret syntax). Default `sqlite:data/oauth.db`.
    pub store: Opt<Scalar>,
    /// The PostgreSQL store's connections.
    pub store_pool: Option<S<StorePool>>,
    /// Allow `sslmode=disable` to a host that is not loopback (a warning, not an error). Default false.
    pub allow_insecure_store: Opt<Scalar>,
    /// Refuse token, introspect and revoke over plain HTTP. Default false.
    pub require_https: Opt<Scalar>,
    /// Lifetime of an authorization code (duration, 1s to 600s). Default 600s.
    pub authorization_code_lifetime: Opt<Scalar>,
    /// Lifetime of refresh tokens from the grant that started them (duration, at least 1m and longer than token_lifetime); a refresh keeps the expiry. Default 30d.
    pub refresh_token_lifetime: Opt<Scalar>,
    /// PKCE for every client (always for public clients). Default false.
    pub require_pkce: Opt<Scalar>,
    /// Default token lifetime in seconds, 1 to 365d (-1: never expires, opaque only). Default 3600.
    pub token_lifetime: Opt<Scalar>,
    /// Default refresh rotations (0: no refresh token). Default 0.
    pub refresh_limit: Opt<Scalar>,
    /// Default time after a rotation during which the rotated refresh token, presented again by its client, is a retry of that rotation (its answer lost) rather than reuse (whole seconds, 0s to 5m; 0s: reuse always revokes the family). Default 0s.
    pub refresh_reuse_interval: Opt<Scalar>,
    /// How often expired tokens and codes are removed (0: only on request, by remove-expired). Default 1h.
    pub cleanup_interval: Opt<Scalar>,
    /// Template of the approval page.
    pub approval_page: Opt<Scalar>,
    /// What the approval page shows of the service users sign in to.
    pub branding: Option<S<Branding>>,
    /// `aud` of the tokens it issues.
    pub audience: Opt<Scalar>,
    /// Scopes clients may ask for, with the description users see.
    pub scopes: Vec<S<ScopeDef>>,
    /// Users of the password and authorization code grants.
    pub users: Vec<S<User>>,
    /// Registered clients.
    pub clients: Vec<S<Client>>,
}

/// `authorization_server.branding`: what the approval page shows of the
/// service the resource owner signs in to.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Branding {
    /// Name of the service, in the page's title and heading.
    pub name: Opt<String>,
    /// Logo: an `https://` URL or a path on this server (`/…`).
    pub logo_url: Opt<String>,
    /// `#rrggbb` of the buttons and the header; the text colour follows.
    pub primary_color: Opt<String>,
    /// Help link: an `https://` URL or a path on this server.
    pub support_url: Opt<String>,
}

/// `authorization_server.store_pool`: the PostgreSQL store's connections.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StorePool {
    /// Most connections. 1 to 1024.
    pub max_connections: Opt<Scalar>,
    /// Longest connection attempt (duration). 1ms to 60s.
    pub connect_timeout: Opt<Scalar>,
}

/// A scope of the authorization server.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeDef {
    /// The scope: one RFC 6749 §3.3 scope token (visible ASCII but `"` and `\`, no space).
    pub name: Opt<String>,
    /// What the approval page says about it.
    pub description: Opt<String>,
}

/// A user: name and argon2id hash (`microgateway hash-password`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct User {
    /// The user name (no `:`).
    pub username: Opt<String>,
    /// An Argon2 PHC string (`$argon2id$…`, as `microgateway hash-password`
    /// makes) asking for at most m=262144 (KiB: 256 MiB), t=10, p=8 and
    /// m·t=1048576.
    pub password_hash: Opt<String>,
}

/// A client of the authorization server.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Client {
    /// Display name.
    pub name: Opt<String>,
    /// The client id.
    pub client_id: Opt<String>,
    /// Its secret (secret syntax); none: a public client.
    pub client_secret: Opt<Scalar>,
    /// Redirect URIs, compared exactly (no `*`), but for the port of a loopback IP literal (`http://127.0.0.1/cb`: any port, RFC 8252 §7.3).
    pub redirect_uris: Vec<S<String>>,
    /// `authorization_code`, `implicit` (warned about: RFC 9700 §2.1.2), `password`,
    /// `client_credentials`, `refresh_token`.
    pub grant_types: Vec<S<String>>,
    /// Scopes it may ask for, each one RFC 6749 §3.3 scope token (visible ASCII but `"` and `\`, no space).
    pub scopes: Vec<S<String>>,
    /// Its token lifetime in seconds, 1 to 365d (-1: never expires, opaque only; default: the server's).
    pub token_lifetime: Opt<Scalar>,
    /// Its refresh rotations (default: the server's).
    pub refresh_limit: Opt<Scalar>,
    /// Its refresh reuse interval (whole seconds, 0s to 5m; default: the server's).
    pub refresh_reuse_interval: Opt<Scalar>,
    /// A resource server: may learn what tokens say (RFC 7662 §2.2).
    pub introspect: Opt<Scalar>,
}

/// This instance as a central gateway.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Central {
    /// Who may download its settings (Basic).
    pub users: Vec<S<CentralUser>>,
}

/// A user who may download the central's settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CentralUser {
    /// Basic user (no `:`).
    pub user: Opt<String>,
    /// Basic password (secret syntax).
    pub password: Opt<Scalar>,
}

/// An application: who calls, identified by one of its credentials.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Application {
    /// The application's name.
    pub name: Opt<String>,
    /// OAuth2 tokens whose `client_id` (else `azp`) is one of these.
    pub client_ids: Vec<S<String>>,
    /// The auth servers whose tokens `client_ids` are matched on (left
    /// out: any; an empty list is an error): a client id is unique only at
    /// the server that issued it.
    pub auth_servers: S<Vec<S<String>>>,
    /// Its API keys (secret syntax; kept as SHA-256 digests; one under 16
    /// characters is warned about).
    pub api_keys: Vec<S<Scalar>>,
    /// Its Basic users (argon2id hashes).
    pub basic_users: Vec<S<User>>,
    /// SHA-256 fingerprints of its client certificates (`sha256:6D:21:…`).
    pub certificates: Vec<S<String>>,
    /// CIDRs the caller must come from (left out: anywhere; an empty list is an error).
    pub ip_ranges: S<Vec<S<String>>>,
    /// Subscriptions: `name` or `name:version`.
    pub apis: Vec<S<String>>,
    /// `API:scope` granted to API key, Basic and certificate callers.
    pub api_scopes: Vec<S<String>>,
}

/// Client addresses of an API: deny wins; `allow` left out allows all; a
/// filter that names no range (`{}`, or only `deny: []`) is an error.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IpFilter {
    /// CIDRs allowed (left out: every address not denied; an empty list is an error).
    pub allow: S<Vec<S<String>>>,
    /// CIDRs denied.
    pub deny: Vec<S<String>>,
}

/// One name or a list of names (`type: oauth2` or `type: [oauth2, api_key]`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names(pub Vec<String>);

impl JsonSchema for Names {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Names".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                { "type": "string" },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamesVisitor;
        impl<'de> Visitor<'de> for NamesVisitor {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name or a list of names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Names, E> {
                Ok(Names(vec![v.to_owned()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(Names(names))
            }
        }
        deserializer.deserialize_any(NamesVisitor)
    }
}

/// A mapping read as its pairs in file order (header name → value template).
#[derive(Debug, Default)]
pub struct Pairs(pub Vec<(S<String>, S<Scalar>)>);

impl JsonSchema for Pairs {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Pairs".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": ["object", "null"],
            "additionalProperties": generator.subschema_for::<Scalar>()
        })
    }
}

impl<'de> Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of header names to values")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Pairs, E> {
                Ok(Pairs(Vec::new()))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}
