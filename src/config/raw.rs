//! Serde mirror of the YAML file, with source spans on every value a later
//! rule may point at. Unknown keys are refused here (`deny_unknown_fields`);
//! the webMethods keys that have no effect are accepted as `Option<Ignored>`
//! and turned into warnings by `validate`. Nothing here interprets a value.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
pub use serde_saphyr::{Location, Spanned};

/// A value with the place it was written.
pub type S<T> = Spanned<T>;

/// Any scalar (string, number, boolean) kept as its text, so that durations,
/// sizes, numbers and environment overrides are interpreted in one place.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scalar(pub String);

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
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// A webMethods key accepted with any value (null included) and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ignored {
    pub is_null: bool,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct File {
    pub ports: Ports,
    pub tls: Option<S<Tls>>,
    pub admin: Admin,
    pub trusted_proxies: Vec<S<String>>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub api_gateway: Option<S<ApiGateway>>,
    pub security_settings: SecuritySettings,
    pub scope_mappings: Vec<S<ScopeMapping>>,
    pub apis: Vec<S<Api>>,
    pub authorization_server: Option<S<AuthorizationServer>>,
    pub central: Option<S<Central>>,
    pub throttling: Option<S<Throttling>>,
    /// The applications that call the APIs (`raw::Application`).
    pub applications: Vec<S<Application>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ports {
    pub http: Opt<Scalar>,
    pub https: Opt<Scalar>,
    pub bind: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    pub certificate: Opt<Scalar>,
    pub key: Opt<Scalar>,
    /// PEM CA bundle that client certificates must chain to.
    pub client_ca: Opt<Scalar>,
    /// `optional` or `required` (needs `client_ca`).
    pub client_auth: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub port: Opt<Scalar>,
    pub bind: Opt<Scalar>,
    pub user: Opt<Scalar>,
    pub password: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_header_bytes: Opt<Scalar>,
    pub max_headers: Opt<Scalar>,
    pub max_uri: Opt<Scalar>,
    pub max_body: Opt<Scalar>,
    pub max_connections: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub header_read: Opt<Scalar>,
    pub idle: Opt<Scalar>,
    pub upstream_connect: Opt<Scalar>,
    pub drain: Opt<Scalar>,
    pub body_read: Opt<Scalar>,
    pub send: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiGateway {
    pub url: Opt<Scalar>,
    pub user: Opt<Scalar>,
    pub password: Opt<Scalar>,
    pub dir: Option<S<Ignored>>,
    pub download_settings: Opt<Scalar>,
    pub download_apis: Opt<Scalar>,
    pub apis: Vec<S<String>>,
    pub poll_interval: Opt<Scalar>,
    pub cache_file: Opt<Scalar>,
    /// Plain `http://` to a host that is not loopback: a warning, not an error.
    pub allow_insecure_http: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySettings {
    pub auth_servers: Vec<S<AuthServer>>,
    pub aliases: Vec<S<Alias>>,
}

/// An auth server as the webMethods API Gateway exports it (`!<authServerAlias>`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthServer {
    pub id: Opt<String>,
    pub name: Opt<String>,
    pub description: Option<S<Ignored>>,
    #[serde(rename = "type")]
    pub kind: Opt<String>,
    pub owner: Option<S<Ignored>>,
    #[serde(rename = "localIntrospectionConfig")]
    pub local_introspection: Option<S<LocalIntrospection>>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalIntrospection {
    pub issuer: Opt<Scalar>,
    pub jwksuri: Opt<Scalar>,
    pub audience: Opt<Scalar>,
    #[serde(rename = "clockSkew")]
    pub clock_skew: Opt<Scalar>,
    pub accept_jwt_typ: Opt<Scalar>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteIntrospection {
    #[serde(rename = "introspectionEndpoint")]
    pub introspection_endpoint: Opt<Scalar>,
    #[serde(rename = "clientId")]
    pub client_id: Opt<Scalar>,
    #[serde(rename = "clientSecret")]
    pub client_secret: Opt<Scalar>,
    pub user: Option<S<Ignored>>,
    pub client_auth: Opt<Scalar>,
    pub cache_ttl: Opt<Scalar>,
    pub negative_cache_ttl: Opt<Scalar>,
    /// Plain `http://` to a host that is not loopback: a warning, not an error.
    pub allow_insecure_http: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alias {
    pub name: Opt<String>,
    #[serde(rename = "type")]
    pub kind: Opt<String>,
    pub username: Opt<Scalar>,
    pub password: Opt<Scalar>,
    pub token: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeMapping {
    pub auth_server: Opt<String>,
    pub scope: Opt<String>,
    pub api_scopes: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    pub name: Opt<String>,
    pub version: Opt<Scalar>,
    pub base_path: Opt<String>,
    pub transport: Option<S<Vec<S<String>>>>,
    pub allow_encoded_slashes: Opt<Scalar>,
    pub upstream: Option<S<Upstream>>,
    pub authentication: Option<S<Authentication>>,
    pub scopes: Vec<S<ApiScope>>,
    pub resources: Vec<S<String>>,
    pub policies: Policies,
    pub ip_filter: Option<S<IpFilter>>,
    /// The gateway's own refusals answered as gRPC status codes.
    pub grpc: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    pub url: Opt<Scalar>,
    pub echo: Opt<Scalar>,
    pub timeout: Opt<Scalar>,
    pub ca_bundle: Opt<Scalar>,
    /// `http1` (default), `http2` (TLS, ALPN h2) or `h2c` (prior knowledge).
    pub protocol: Opt<Scalar>,
    /// Plain `http://` to a host that is not loopback: a warning, not an error.
    pub allow_insecure_http: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Authentication {
    /// One type or a list of them.
    #[serde(rename = "type")]
    pub kind: Opt<Names>,
    pub auth_server: Opt<String>,
    pub api_key_header: Opt<String>,
    /// `any` (default) or `registered`.
    pub applications: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiScope {
    pub name: Opt<String>,
    pub resources: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policies {
    pub request_transformation: Option<S<RequestTransformation>>,
    pub outbound_auth: Option<S<OutboundAuth>>,
    pub cors: Option<S<Cors>>,
    pub response_transformation: Option<S<ResponseTransformation>>,
    pub throttle: Vec<S<Throttle>>,
}

/// Cross-origin requests from browsers (the Fetch standard's CORS protocol).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    pub allow_origins: Vec<S<String>>,
    pub allow_methods: Vec<S<String>>,
    pub allow_headers: Vec<S<String>>,
    pub expose_headers: Vec<S<String>>,
    pub allow_credentials: Opt<Scalar>,
    pub max_age: Opt<Scalar>,
}

/// Headers set on and removed from the upstream's answers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseTransformation {
    /// Kept as a list of pairs so the order of the file is the order applied.
    pub set_headers: Pairs,
    pub remove_headers: Vec<S<String>>,
}

/// `throttling:`: where the counters of `policies.throttle` live.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Throttling {
    pub store: Opt<Scalar>,
    pub password: Opt<Scalar>,
    pub on_store_error: Opt<Scalar>,
    pub timeout: Opt<Scalar>,
    pub max_keys: Opt<Scalar>,
}

/// One entry of `policies.throttle`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Throttle {
    pub name: Opt<String>,
    pub limit: Opt<Scalar>,
    pub per: Opt<Scalar>,
    pub scope: Opt<String>,
    pub per_application: Opt<Scalar>,
    pub per_client_ip: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestTransformation {
    /// Kept as a list of pairs so the order of the file is the order applied.
    pub set_headers: Pairs,
    pub remove_headers: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundAuth {
    pub alias: Opt<String>,
    #[serde(rename = "type")]
    pub kind: Opt<String>,
    pub username: Opt<Scalar>,
    pub password: Opt<Scalar>,
    pub delegate: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationServer {
    pub issuer: Opt<Scalar>,
    pub token_format: Opt<Scalar>,
    pub signing_key: Opt<Scalar>,
    pub store: Opt<Scalar>,
    pub store_pool: Option<S<StorePool>>,
    pub require_https: Opt<Scalar>,
    pub authorization_code_lifetime: Opt<Scalar>,
    pub require_pkce: Opt<Scalar>,
    pub token_lifetime: Opt<Scalar>,
    pub refresh_limit: Opt<Scalar>,
    pub cleanup_interval: Opt<Scalar>,
    pub approval_page: Opt<Scalar>,
    pub audience: Opt<Scalar>,
    pub scopes: Vec<S<ScopeDef>>,
    pub users: Vec<S<User>>,
    pub clients: Vec<S<Client>>,
}

/// `authorization_server.store_pool`: the PostgreSQL store's connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorePool {
    pub max_connections: Opt<Scalar>,
    pub connect_timeout: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScopeDef {
    pub name: Opt<String>,
    pub description: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct User {
    pub username: Opt<String>,
    pub password_hash: Opt<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Client {
    pub name: Opt<String>,
    pub client_id: Opt<String>,
    pub client_secret: Opt<Scalar>,
    pub redirect_uris: Vec<S<String>>,
    pub grant_types: Vec<S<String>>,
    pub scopes: Vec<S<String>>,
    pub token_lifetime: Opt<Scalar>,
    pub refresh_limit: Opt<Scalar>,
    /// A resource server: may learn what tokens say (RFC 7662 §2.2).
    pub introspect: Opt<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Central {
    pub users: Vec<S<CentralUser>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CentralUser {
    pub user: Opt<String>,
    pub password: Opt<Scalar>,
}

/// An application: who calls, identified by one of its credentials.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Application {
    pub name: Opt<String>,
    pub client_ids: Vec<S<String>>,
    pub api_keys: Vec<S<Scalar>>,
    pub basic_users: Vec<S<User>>,
    pub certificates: Vec<S<String>>,
    pub ip_ranges: Vec<S<String>>,
    /// Subscriptions: `name` or `name:version`.
    pub apis: Vec<S<String>>,
    /// `API:scope` granted to API key, Basic and certificate callers.
    pub api_scopes: Vec<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpFilter {
    pub allow: Vec<S<String>>,
    pub deny: Vec<S<String>>,
}

/// One name or a list of names (`type: oauth2` or `type: [oauth2, api_key]`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Names(pub Vec<String>);

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
