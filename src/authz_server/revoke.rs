//! Token revocation (RFC 7009) for both token formats.
//!
//! A client may revoke only its own tokens (§2.1). Revoking a refresh
//! token revokes its whole family, access tokens included (§2.1: "SHOULD
//! also invalidate all access tokens based on the same authorization
//! grant"); revoking an access token leaves its refresh token alone. An
//! unknown or invalid token is answered 200 (§2.2): the client cannot do
//! anything better with an error.

use super::error::OAuthError;
use super::introspect::verify_own_jwt;
use super::keys::SigningKeys;
use super::settings::Settings;
use super::store::TokenStore;
use super::tokens;

pub struct RevokeContext<'a> {
    pub settings: &'a Settings,
    pub store: &'a dyn TokenStore,
    pub keys: &'a SigningKeys,
}

pub fn revoke(cx: &RevokeContext<'_>, caller: &str, token: &str) -> Result<(), OAuthError> {
    let not_yours = || OAuthError::UnauthorizedClient("the token was issued to another client");
    if tokens::looks_like_jwt(token) {
        let Some(claims) = verify_own_jwt(cx.keys, cx.settings, token) else {
            return Ok(());
        };
        if let Some(record) = cx.store.find_access_token(&claims.jti)? {
            if record.client_id != caller {
                return Err(not_yours());
            }
            cx.store.revoke_access_token(&record.id)?;
        }
        return Ok(());
    }
    let hash = tokens::hash_token(token);
    if let Some(record) = cx.store.find_access_token(&hash)? {
        if record.client_id != caller {
            return Err(not_yours());
        }
        cx.store.revoke_access_token(&record.id)?;
        return Ok(());
    }
    if let Some(record) = cx.store.find_refresh_token(&hash)? {
        if record.client_id != caller {
            return Err(not_yours());
        }
        cx.store.revoke_family(&record.family)?;
    }
    Ok(())
}
