//! The local OAuth2 authorization server: issues, refreshes, introspects
//! and revokes tokens for the clients and users of its settings.
//!
//! `endpoints` is the HTTP face (framework-free: collected request in,
//! response out); `authorize` is the authorization endpoint, whose pages
//! `approval` renders and whose browser sessions `sessions` keeps;
//! `grants/` decides what the token endpoint issues, one file per grant;
//! `pkce` checks code verifiers; `tokens` mints; `keys` signs and
//! publishes the JWKS;
//! `store` remembers tokens by `jti` or hash, never by value;
//! `introspect` (RFC 7662) and `revoke` (RFC 7009) answer about them;
//! `client_auth` and `form` read requests; `error` decides every refusal's
//! status and body; `clock` is what everything issued expires by; `workers`
//! bounds the blocking work run at once. Nothing here logs a token,
//! password or secret.

pub mod approval;
mod authorize;
mod client_auth;
pub mod clock;
mod endpoints;
pub mod error;
mod form;
pub mod grants;
mod introspect;
pub mod keys;
mod pkce;
mod revoke;
mod sessions;
pub mod settings;
pub mod store;
pub mod tokens;
pub mod workers;

pub use clock::{unix_now, Clock};
pub use endpoints::{
    is_endpoint, needs_admin, AuthorizationServer, RequestContext, TokenListing, LISTED_PER_KIND,
    MAX_BODY,
};
pub use keys::{KEY_PUBLISHED_BEFORE_SIGNING, KEY_REFRESH};
pub use settings::{Client, GrantType, ScopeDef, Settings, TokenFormat, User};
pub use store::{Removed, TokenSummary};

/// Why the authorization server could not start or do an admin job.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Password(#[from] grants::password::PasswordError),
    #[error("approval page template: {0}")]
    ApprovalTemplate(#[from] minijinja::Error),
    #[error(
        "client {client_id}: token_lifetime -1 is not allowed with JWT tokens (a JWT must expire)"
    )]
    JwtWithoutExpiry { client_id: String },
    #[error("authorization server worker failed")]
    Worker,
    /// Every worker stayed busy for longer than a job waits.
    #[error("every authorization server worker is busy")]
    Busy,
}
