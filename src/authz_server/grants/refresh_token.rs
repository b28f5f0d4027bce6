//! Refresh token grant (RFC 6749 §6) with rotation, a count limit and a
//! lifetime.
//!
//! Each refresh spends the presented token and, while the family has
//! refreshes left (`refresh_limit`), issues the next one, which ends when
//! the family does (`refresh_token_lifetime` after the grant); the refresh
//! that reaches the limit returns no refresh token. A token past its
//! family's end is `invalid_grant`. Presenting a spent token
//! again is reuse (RFC 9700 §4.14.2): the whole family — refresh and access
//! tokens — is revoked. Scopes may narrow but never widen past the
//! original grant (§6), nor past what the client may still have.

use super::{granted_scopes, GrantContext, TokenResponse};
use crate::authz_server::error::OAuthError;
use crate::authz_server::form::Form;
use crate::authz_server::settings::{Client, GrantType};
use crate::authz_server::store::{RefreshTokenRecord, Rotation};
use crate::authz_server::tokens::{self, Issue};

pub fn grant(
    cx: &GrantContext<'_>,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let presented = form
        .get("refresh_token")
        .ok_or(OAuthError::InvalidRequest("refresh_token is required"))?;
    let hash = tokens::hash_token(presented);
    let invalid = || OAuthError::InvalidGrant("refresh token is invalid, expired or revoked");
    let record = cx.store.find_refresh_token(&hash)?.ok_or_else(invalid)?;
    // §6: the token must have been issued to the authenticated client.
    if record.client_id != client.client_id {
        return Err(invalid());
    }
    if record.revoked || record.expires_at.is_some_and(|exp| exp <= cx.now) {
        return Err(invalid());
    }
    if record.rotated {
        revoke_family_on_reuse(cx, &record)?;
        return Err(invalid());
    }
    // The user may have been removed from the configuration since.
    if let Some(user) = &record.username {
        if !cx.users.exists(user) {
            return Err(invalid());
        }
    }
    if record.refreshes_used >= client.refresh_limit {
        return Err(OAuthError::InvalidGrant("refresh limit reached"));
    }
    let family_scopes: Vec<String> = record
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut scopes = granted_scopes(form.get("scope"), &family_scopes)?;
    scopes.retain(|s| client.scopes.contains(s));

    let issue = Issue {
        client,
        username: record.username.as_deref(),
        scopes: &scopes,
        grant_type: GrantType::RefreshToken,
        family: Some(record.family.clone()),
    };
    let access = tokens::mint_access(cx.settings, cx.key, &issue, cx.now)?;
    let used = record.refreshes_used + 1;
    // The family keeps its end; one from before refresh tokens expired
    // gets the full lifetime from now.
    let expires_at = record.expires_at.unwrap_or_else(|| {
        cx.now
            .saturating_add(cx.settings.refresh_token_lifetime.as_secs())
    });
    let next = (used < client.refresh_limit).then(|| {
        let next = tokens::NextRefresh {
            family: &record.family,
            family_scope: &record.scope,
            refreshes_used: used,
            expires_at,
        };
        tokens::mint_refresh(&issue, &next, cx.now)
    });
    match cx.store.rotate_refresh_token(
        &hash,
        &access.record,
        next.as_ref().map(|(_, record)| record),
    )? {
        Rotation::Rotated => Ok(super::response(
            access,
            next.map(|(token, _)| token),
            cx.now,
        )),
        // Spent between our read and our write: a concurrent use of the
        // same token, which is reuse too.
        Rotation::Stale => {
            revoke_family_on_reuse(cx, &record)?;
            Err(invalid())
        }
    }
}

fn revoke_family_on_reuse(
    cx: &GrantContext<'_>,
    record: &RefreshTokenRecord,
) -> Result<(), OAuthError> {
    let revoked = cx.store.revoke_family(&record.family)?;
    tracing::warn!(
        client_id = %record.client_id,
        family = %record.family,
        revoked,
        "refresh token reused: its family is revoked"
    );
    Ok(())
}
