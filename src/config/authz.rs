//! Compiled settings of the local authorization server (`authorization_server:`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    Jwt,
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    AuthorizationCode,
    Implicit,
    Password,
    ClientCredentials,
    RefreshToken,
}

impl GrantType {
    pub fn parse(text: &str) -> Option<GrantType> {
        Some(match text {
            "authorization_code" => GrantType::AuthorizationCode,
            "implicit" => GrantType::Implicit,
            "password" => GrantType::Password,
            "client_credentials" => GrantType::ClientCredentials,
            "refresh_token" => GrantType::RefreshToken,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::Implicit => "implicit",
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    pub client_id: String,
    /// `None` = public client (PKCE required).
    pub client_secret: Option<Secret>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<GrantType>,
    pub scopes: Vec<String>,
    /// `None` = never expires (opaque tokens only).
    pub token_lifetime: Option<Duration>,
    pub refresh_limit: u32,
    /// How long after a rotation its rotated refresh token, presented
    /// again by this client, is a retry of that rotation (whose answer was
    /// lost) rather than reuse; zero = never (whole seconds, at most 5m).
    pub refresh_reuse_interval: Duration,
    /// A resource server: introspection answers it with what a token
    /// says; every other client gets `{"active":false}` (RFC 7662 §4).
    pub introspect: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    /// PHC string (`$argon2id$…`).
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeDef {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub issuer: String,
    pub token_format: TokenFormat,
    pub signing_key_path: PathBuf,
    /// From `store: sqlite:PATH`.
    pub store_path: PathBuf,
    /// From `store: postgres://…`: then the store is PostgreSQL and
    /// `store_path` is unused.
    pub postgres: Option<PostgresStore>,
    pub require_https: bool,
    pub authorization_code_lifetime: Duration,
    /// How long a refresh token family lives from its grant: rotation
    /// hands the next token the same expiry.
    pub refresh_token_lifetime: Duration,
    pub require_pkce: bool,
    pub cleanup_interval: Option<Duration>,
    pub approval_page: Option<PathBuf>,
    /// The approval template's source, read when the snapshot was compiled.
    pub approval_template: Option<String>,
    pub branding: Branding,
    pub scopes: Vec<ScopeDef>,
    pub users: Vec<User>,
    pub clients: Vec<Client>,
    pub audience: Option<String>,
}

/// `authorization_server.branding`, validated: shown on every page of the
/// approval page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Branding {
    pub name: Option<String>,
    /// An `https://` URL or a path on this server (`/…`).
    pub logo_url: Option<String>,
    /// `scheme://host[:port]` of an external logo: the page's CSP
    /// `img-src` allows exactly this origin (`'self'` for a path).
    pub logo_origin: Option<String>,
    /// `#rrggbb`.
    pub primary_color: Option<String>,
    /// Text on the primary colour: `#000000` or `#ffffff`, whichever
    /// contrasts more.
    pub on_primary_color: Option<String>,
    /// An `https://` URL or a path on this server.
    pub support_url: Option<String>,
}

impl Client {
    pub fn is_confidential(&self) -> bool {
        self.client_secret.is_some()
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }
}

impl Settings {
    pub fn client(&self, client_id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }

    /// The audience tokens are issued for. RFC 9068 §3: without a `resource`
    /// parameter the server uses a default resource indicator; ours is the
    /// configured `audience`, else the issuer itself.
    pub fn token_audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(&self.issuer)
    }
}

/// How the PostgreSQL store's connections are secured (`sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// Plain TCP (or a Unix socket).
    Disable,
    /// TLS; the certificate chain is verified against the trusted roots,
    /// the host name is not.
    Require,
    /// TLS; chain and host name verified.
    VerifyFull,
}

/// The PostgreSQL store, from `store: postgres://USER:PASSWORD@HOST:PORT/DB?…`
/// and `store_pool:`. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStore {
    /// A host name, an IP address, or (from `?host=/dir`) a Unix socket
    /// directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub tls: PgTls,
    /// PEM CA certificates from `sslrootcert=PATH`, read when compiled;
    /// the system roots otherwise.
    pub ca_bundle: Option<Arc<[u8]>>,
    pub max_connections: usize,
    pub connect_timeout: Duration,
}

impl PostgresStore {
    /// The URL as logs and diagnostics show it: no password.
    pub fn display(&self) -> String {
        let password = if self.password.is_some() { ":****" } else { "" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgres://{}{password}@{host}:{}/{}",
            self.user, self.port, self.dbname
        )
    }
}
