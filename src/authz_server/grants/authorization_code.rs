//! Authorization code grant, token request (RFC 6749 §4.1.3) with PKCE
//! (RFC 7636 §4.5–4.6).
//!
//! A code is spent by its first presentation the store answers: a
//! refused one spends it at once, an accepted one in the transaction that
//! stores the tokens it buys, so that a store failing meanwhile leaves
//! the code to the client's retry (503 `temporarily_unavailable`). It must
//! have been issued to the authenticated client; `redirect_uri` must
//! be repeated exactly when the authorization request carried it. A code
//! issued with a challenge needs the matching `code_verifier`, and a
//! verifier for a code without a challenge is refused too (RFC 9700
//! §2.1.1: no PKCE downgrade). The tokens issued form a family bound to
//! the code, so presenting the code again revokes them (§4.1.2) — when its
//! own client presents it: another client could never have redeemed it.

use super::{may_refresh, mint_in_family, GrantContext, TokenResponse};
use crate::authz_server::error::OAuthError;
use crate::authz_server::form::Form;
use crate::authz_server::pkce;
use crate::authz_server::settings::{Client, GrantType};
use crate::authz_server::store::{CodeRecord, CodeTake};
use crate::authz_server::tokens::{self, Issue};

const INVALID: OAuthError =
    OAuthError::InvalidGrant("authorization code is invalid, expired or already used");

pub fn grant(
    cx: &GrantContext<'_>,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    let code = form
        .get("code")
        .ok_or(OAuthError::InvalidRequest("code is required"))?;
    let hash = tokens::hash_token(code);
    let family = tokens::random_id();
    let Some(record) = cx.store.find_code(&hash, cx.now)? else {
        return Err(spend(cx, client, &hash, &family)?);
    };
    if let Err(refused) = check(cx, client, &record, form) {
        spend(cx, client, &hash, &family)?;
        return Err(refused);
    }
    let mut scopes: Vec<String> = record
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    scopes.retain(|s| client.scopes.contains(s));
    let issue = Issue {
        client,
        username: Some(&record.username),
        scopes: &scopes,
        grant_type: GrantType::AuthorizationCode,
        family: Some(family.clone()),
    };
    let minted = mint_in_family(cx, &issue, may_refresh(client))?;
    // The code is spent with its tokens stored, or not at all: a store
    // that fails here leaves it to the client's retry (503).
    let redeemed = cx.store.redeem_code(
        &hash,
        cx.now,
        &minted.access.record,
        minted.refresh.as_ref().map(|(_, record)| record),
    )?;
    if !redeemed {
        // Spent (or expired) since it was read: a concurrent
        // presentation won, and this one is its replay.
        return Err(spend(cx, client, &hash, &family)?);
    }
    Ok(minted.response(cx.now))
}

/// What the code must match: the client it was issued to, its redirect
/// URI and PKCE challenge, and a user still configured.
fn check(
    cx: &GrantContext<'_>,
    client: &Client,
    record: &CodeRecord,
    form: &Form,
) -> Result<(), OAuthError> {
    if record.client_id != client.client_id {
        return Err(INVALID);
    }
    check_redirect_uri(record, form.get("redirect_uri"))?;
    check_verifier(cx, client, record, form.get("code_verifier"))?;
    // The user may have been removed from the configuration since.
    if !cx.users.exists(&record.username) {
        return Err(INVALID);
    }
    Ok(())
}

/// Spends the code for a presentation that buys no tokens, and tells
/// what refuses it: a second presentation by its own client revokes what
/// the first bought.
fn spend(
    cx: &GrantContext<'_>,
    client: &Client,
    hash: &str,
    family: &str,
) -> Result<OAuthError, OAuthError> {
    match cx.store.take_code(hash, cx.now, family)? {
        // Only the client the code was issued to can have redeemed it: a
        // spent code another client presents (read from a browser's
        // history, a Referer, a log) revokes nothing.
        CodeTake::Reused { client_id, .. } if client_id != client.client_id => {
            tracing::debug!(
                client_id = %client.client_id,
                "a spent authorization code of another client was presented"
            );
        }
        CodeTake::Reused { family, .. } => {
            let revoked = match &family {
                Some(family) => cx.store.revoke_family(family)?,
                None => 0,
            };
            tracing::warn!(
                client_id = %client.client_id,
                revoked,
                "authorization code presented again: the tokens issued from it are revoked"
            );
        }
        CodeTake::Fresh(_) | CodeTake::Expired | CodeTake::Unknown => {}
    }
    Ok(INVALID)
}

/// RFC 6749 §4.1.3: required, and identical, when the authorization
/// request included it; when it did not, a value sent must still be the
/// one the code went to.
fn check_redirect_uri(record: &CodeRecord, sent: Option<&str>) -> Result<(), OAuthError> {
    match sent {
        Some(uri) if uri == record.redirect_uri => Ok(()),
        Some(_) => Err(OAuthError::InvalidGrant(
            "redirect_uri differs from the authorization request's",
        )),
        None if record.redirect_uri_given => Err(OAuthError::InvalidRequest(
            "redirect_uri is required: the authorization request had it",
        )),
        None => Ok(()),
    }
}

fn check_verifier(
    cx: &GrantContext<'_>,
    client: &Client,
    record: &CodeRecord,
    verifier: Option<&str>,
) -> Result<(), OAuthError> {
    match (&record.code_challenge, verifier) {
        (Some(challenge), Some(verifier)) if pkce::verifies(verifier, challenge) => Ok(()),
        (Some(_), Some(_)) => Err(OAuthError::InvalidGrant("code_verifier does not match")),
        (Some(_), None) => Err(OAuthError::InvalidGrant("code_verifier is required")),
        (None, Some(_)) => Err(OAuthError::InvalidGrant(
            "code_verifier sent, but the code was issued without a challenge",
        )),
        // The settings may have changed since the code was issued.
        (None, None) if !client.is_confidential() || cx.settings.require_pkce => {
            Err(OAuthError::InvalidGrant("the code was issued without PKCE"))
        }
        (None, None) => Ok(()),
    }
}
