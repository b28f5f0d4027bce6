//! Minting access and refresh tokens.
//!
//! A JWT access token follows RFC 9068: header `typ: at+jwt` and `kid`;
//! claims `iss`, `sub` (the user, or the client id when no user is
//! involved, §2.2), `aud` (the configured audience, else the issuer, §3),
//! `client_id`, `scope`, `jti`, `iat`, `exp`. Its `jti` is recorded so
//! introspection and revocation work. An opaque token, and every refresh
//! token, is 32 random bytes (256 bits, RFC 6749 §10.10), base64url, and
//! only its SHA-256 is stored. A token without lifetime has no `exp`.
//! A refresh token family ends `refresh_token_lifetime` after its grant:
//! rotation never extends it (RFC 9700 §4.14.2 lets a refresh token
//! expire; a stolen one must not live on by being refreshed).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Header;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{KeysPending, SigningKey};
use super::settings::{Client, GrantType, Settings, TokenFormat};
use super::store::{AccessTokenRecord, RefreshTokenRecord};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot sign a JWT: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// No key that anyone could verify with is known yet.
    #[error("cannot sign a JWT: {0}")]
    KeysPending(#[from] KeysPending),
    #[error("client {client_id} has no token lifetime, which a JWT cannot have (RFC 9068 §2.2)")]
    JwtWithoutExpiry { client_id: String },
}

/// RFC 9068 access token claims, also read back by introspection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    pub jti: String,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

/// What a grant decided to issue.
#[derive(Debug, Clone)]
pub struct Issue<'a> {
    pub client: &'a Client,
    pub username: Option<&'a str>,
    /// Granted token scopes.
    pub scopes: &'a [String],
    pub grant_type: GrantType,
    /// Refresh family the access token belongs to.
    pub family: Option<String>,
}

/// A freshly minted access token: the value for the client, the record for
/// the store.
pub struct MintedAccess {
    pub token: String,
    pub record: AccessTokenRecord,
}

pub fn mint_access(
    settings: &Settings,
    key: &SigningKey,
    issue: &Issue<'_>,
    now: u64,
) -> Result<MintedAccess, TokenError> {
    let expires_at = issue
        .client
        .token_lifetime
        .map(|lifetime| now.saturating_add(lifetime.as_secs()));
    let scope = issue.scopes.join(" ");
    let (token, id) = match settings.token_format {
        TokenFormat::Opaque => {
            let token = random_token();
            let id = hash_token(&token);
            (token, id)
        }
        TokenFormat::Jwt => {
            if expires_at.is_none() {
                return Err(TokenError::JwtWithoutExpiry {
                    client_id: issue.client.client_id.clone(),
                });
            }
            let jti = random_id();
            let claims = AccessClaims {
                iss: settings.issuer.clone(),
                sub: issue.username.unwrap_or(&issue.client.client_id).to_owned(),
                aud: settings.token_audience().to_owned(),
                client_id: issue.client.client_id.clone(),
                scope: scope.clone(),
                jti: jti.clone(),
                iat: now,
                exp: expires_at,
            };
            let mut header = Header::new(key.alg);
            // RFC 9068 §2.1: distinguishes access tokens from ID tokens.
            header.typ = Some("at+jwt".to_owned());
            header.kid = Some(key.kid.clone());
            let token = jsonwebtoken::encode(&header, &claims, key.encoding_key()?)?;
            (token, jti)
        }
    };
    Ok(MintedAccess {
        token,
        record: AccessTokenRecord {
            id,
            format: settings.token_format,
            client_id: issue.client.client_id.clone(),
            username: issue.username.map(str::to_owned),
            scope,
            issued_at: now,
            expires_at,
            family: issue.family.clone(),
            grant_type: issue.grant_type.as_str().to_owned(),
            revoked: false,
        },
    })
}

/// The next refresh token of a family.
pub struct NextRefresh<'a> {
    pub family: &'a str,
    pub family_scope: &'a str,
    /// Refreshes of the family before this token.
    pub refreshes_used: u32,
    /// The family's end, the same for each of its tokens.
    pub expires_at: u64,
}

/// A refresh token of `next.family`, the `refreshes_used`-th of it.
pub fn mint_refresh(
    issue: &Issue<'_>,
    next: &NextRefresh<'_>,
    now: u64,
) -> (String, RefreshTokenRecord) {
    let token = random_token();
    let record = RefreshTokenRecord {
        hash: hash_token(&token),
        family: next.family.to_owned(),
        client_id: issue.client.client_id.clone(),
        username: issue.username.map(str::to_owned),
        scope: next.family_scope.to_owned(),
        refreshes_used: next.refreshes_used,
        issued_at: now,
        // Bounded by count (`refresh_limit`) and by the family's lifetime.
        expires_at: Some(next.expires_at),
        rotated: false,
        rotated_into: None,
        revoked: false,
    };
    (token, record)
}

/// 256 random bits, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// 128 random bits, base64url: `jti` and refresh family ids.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The store's key for a token value: base64url SHA-256.
pub fn hash_token(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A JWT is three base64url segments; anything else is opaque to us.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_values_are_long_and_distinct() {
        let a = random_token();
        assert_eq!(a.len(), 43);
        assert_ne!(a, random_token());
        assert_eq!(random_id().len(), 22);
        assert_eq!(hash_token("x").len(), 43);
        assert_ne!(hash_token(&a), a);
    }

    fn settings(token_format: TokenFormat) -> Settings {
        Settings {
            issuer: "http://localhost".into(),
            token_format,
            signing_key_path: "k".into(),
            store_path: "s".into(),
            postgres: None,
            require_https: false,
            authorization_code_lifetime: std::time::Duration::from_secs(60),
            refresh_token_lifetime: std::time::Duration::from_secs(86_400),
            require_pkce: false,
            cleanup_interval: None,
            approval_page: None,
            approval_template: None,
            branding: Default::default(),
            scopes: vec![],
            users: vec![],
            clients: vec![],
            audience: None,
        }
    }

    /// With PostgreSQL, the store may be reached before the keys are
    /// re-read from it: the placeholder key in use until then is
    /// published nowhere, so no JWT is signed with it.
    #[test]
    fn no_jwt_is_signed_while_the_keys_are_pending() {
        let client = Client {
            name: "app".into(),
            client_id: "app".into(),
            client_secret: None,
            redirect_uris: vec![],
            grant_types: vec![],
            scopes: vec![],
            token_lifetime: Some(std::time::Duration::from_secs(60)),
            refresh_limit: 0,
            refresh_reuse_interval: std::time::Duration::ZERO,
            introspect: false,
        };
        let issue = Issue {
            client: &client,
            username: None,
            scopes: &[],
            grant_type: GrantType::ClientCredentials,
            family: None,
        };
        let placeholder = SigningKey::placeholder().expect("placeholder");
        let jwt = mint_access(&settings(TokenFormat::Jwt), &placeholder, &issue, 10);
        assert!(matches!(jwt, Err(TokenError::KeysPending(KeysPending))));
        let opaque = mint_access(&settings(TokenFormat::Opaque), &placeholder, &issue, 10);
        assert!(opaque.is_ok(), "an opaque token needs no key");
    }
}
