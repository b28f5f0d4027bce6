//! Compiled settings of the local authorization server, as the config
//! compiler hands them over: typed, defaults applied, secrets wrapped in
//! [`Secret`]. Nothing here reads files or the environment.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Secret;

/// What an access token looks like on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    /// RFC 9068 JWT, signed with the server's key; the gateway validates it
    /// locally.
    Jwt,
    /// Random string, stored as its SHA-256; validated by introspection.
    Opaque,
}

/// Grant types of RFC 6749 a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    AuthorizationCode,
    Implicit,
    Password,
    ClientCredentials,
    RefreshToken,
}

impl GrantType {
    /// The `grant_type` (or, for implicit, `response_type`-derived) name.
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

#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub client_id: String,
    /// `None` = public client (RFC 6749 §2.1): identified, never authenticated.
    pub client_secret: Option<Secret>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<GrantType>,
    /// Token scopes this client may obtain.
    pub scopes: Vec<String>,
    /// `None` = tokens never expire (opaque format only; config validation
    /// refuses it with JWTs).
    pub token_lifetime: Option<Duration>,
    /// Refreshes allowed per grant; 0 = no refresh token is issued.
    pub refresh_limit: u32,
}

impl Client {
    pub fn is_confidential(&self) -> bool {
        self.client_secret.is_some()
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }
}

#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    /// PHC string (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`).
    pub password_hash: String,
}

#[derive(Debug, Clone)]
pub struct ScopeDef {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Public URL of this server: `iss` of its tokens (RFC 8414 §2).
    pub issuer: String,
    pub token_format: TokenFormat,
    pub signing_key_path: PathBuf,
    /// SQLite database file (from `store: sqlite:PATH`).
    pub store_path: PathBuf,
    pub require_https: bool,
    pub authorization_code_lifetime: Duration,
    pub require_pkce: bool,
    /// `None` = expired tokens are removed only on request.
    pub cleanup_interval: Option<Duration>,
    pub scopes: Vec<ScopeDef>,
    pub users: Vec<User>,
    pub clients: Vec<Client>,
    /// `aud` of issued access tokens; the issuer when unset.
    pub audience: Option<String>,
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
