//! Authorization code grant, token request (RFC 6749 §4.1.3) with PKCE
//! (RFC 7636 §4.5–4.6).
//!
//! A code is spent by its first presentation, whatever happens next. It
//! must have been issued to the authenticated client; `redirect_uri` must
//! be repeated exactly when the authorization request carried it. A code
//! issued with a challenge needs the matching `code_verifier`, and a
//! verifier for a code without a challenge is refused too (RFC 9700
//! §2.1.1: no PKCE downgrade). The tokens issued form a family bound to
//! the code, so presenting the code again revokes them (§4.1.2) — when its
//! own client presents it: another client could never have redeemed it.

use super::{issue_in_family, may_refresh, GrantContext, TokenResponse};
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
    let record = match cx.store.take_code(&hash, cx.now, &family)? {
        CodeTake::Fresh(record) => record,
        // Only the client the code was issued to can have redeemed it: a
        // spent code another client presents (read from a browser's
        // history, a Referer, a log) revokes nothing.
        CodeTake::Reused { client_id, .. } if client_id != client.client_id => {
            tracing::debug!(
                client_id = %client.client_id,
                "a spent authorization code of another client was presented"
            );
            return Err(INVALID);
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
            return Err(INVALID);
        }
        CodeTake::Expired | CodeTake::Unknown => return Err(INVALID),
    };
    if record.client_id != client.client_id {
        return Err(INVALID);
    }
    check_redirect_uri(&record, form.get("redirect_uri"))?;
    check_verifier(cx, client, &record, form.get("code_verifier"))?;
    // The user may have been removed from the configuration since.
    if !cx.users.exists(&record.username) {
        return Err(INVALID);
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
    let response = issue_in_family(cx, issue, may_refresh(client))?;
    // A replay that came while the tokens were being issued revoked the
    // family before they were in it: checked once they are, a replay
    // either revoked them or is seen here.
    if cx.store.code_replayed(&hash)? {
        cx.store.revoke_family(&family)?;
        return Err(INVALID);
    }
    Ok(response)
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
