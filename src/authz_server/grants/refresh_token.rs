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
//!
//! Except within the client's `refresh_reuse_interval` after the rotation
//! (by the server's clock), while what the rotation issued is unused and
//! the family unrevoked: then the spent token is taken as a retry of its
//! rotation, whose answer was lost. What that rotation issued is revoked
//! and issued afresh — the same refreshes counted, the same family end —
//! so a family still has one live refresh token, and the window still
//! ends when it did. Two retries of one rotation at once are reuse.

use super::{granted_scopes, GrantContext, TokenResponse};
use crate::authz_server::error::OAuthError;
use crate::authz_server::form::Form;
use crate::authz_server::settings::{Client, GrantType};
use crate::authz_server::store::{
    RefreshTokenRecord, RetryOutcome, Rotated, Rotation, RotationRetry,
};
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
    if record.revoked {
        return Err(invalid());
    }
    let expired = record.expires_at.is_some_and(|exp| exp <= cx.now);
    // A rotated token presented again is reuse even once its family has
    // ended (RFC 9700 §4.14.2): the access tokens its rotations issued
    // may outlive the family, and are revoked with it.
    if record.rotated {
        if !expired {
            if let Some(retried) = retry(cx, client, form, &record)? {
                return Ok(retried);
            }
        }
        revoke_family_on_reuse(cx, &record)?;
        return Err(invalid());
    }
    if expired {
        return Err(invalid());
    }
    // The user may have been removed from the configuration since.
    if !holder_configured(cx, &record) {
        return Err(invalid());
    }
    let scopes = scopes(client, form, &record)?;
    let issue = issue(client, &record, &scopes);
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
        // same token, which is reuse too — unless it is a retry of the
        // rotation that won (a client that gave up waiting for it).
        Rotation::Stale => {
            let now_read = cx.store.find_refresh_token(&hash)?;
            if let Some(retried) = now_read.as_ref().filter(|r| r.rotated && !r.revoked) {
                if let Some(answer) = retry(cx, client, form, retried)? {
                    return Ok(answer);
                }
            }
            revoke_family_on_reuse(cx, &record)?;
            Err(invalid())
        }
    }
}

/// Answers a rotated token presented again as a retry of its rotation,
/// when the rotation may be retried (see the module's comment); `None`
/// when it is reuse.
fn retry(
    cx: &GrantContext<'_>,
    client: &Client,
    form: &Form,
    record: &RefreshTokenRecord,
) -> Result<Option<TokenResponse>, OAuthError> {
    let interval = client.refresh_reuse_interval.as_secs();
    // Tokens rotated before rotations were recorded are never retried.
    let Some(rotation) = &record.rotated_into else {
        return Ok(None);
    };
    // Zero is off, whatever the clocks of the replicas say.
    // Replicas' clocks differ: one behind the rotation's by less than the
    // interval is in the window too (and one behind by more is not).
    if interval == 0
        || cx.now.saturating_add(interval) <= rotation.at
        || cx.now >= rotation.at.saturating_add(interval)
        || !holder_configured(cx, record)
    {
        return Ok(None);
    }
    let lost = match lost_refresh(cx, rotation)? {
        Lost::Spent => return Ok(None),
        Lost::NoneIssued => None,
        Lost::Unused {
            refreshes_used,
            end,
        } => Some((refreshes_used, end)),
    };
    // A retry asks what its rotation asked, which was granted: one refused
    // (a limit lowered since) or granted other scopes than the rotation's
    // access token has (wider or narrower) is no retry but reuse.
    let Ok(scopes) = scopes(client, form, record) else {
        return Ok(None);
    };
    if !same_scopes(cx, rotation, &scopes)? {
        return Ok(None);
    }
    let issue = issue(client, record, &scopes);
    let access = tokens::mint_access(cx.settings, cx.key, &issue, cx.now)?;
    // The lost successor's count and end: a retry is no further refresh,
    // and never more than the client may have now.
    let next = lost.filter(|(used, _)| *used < client.refresh_limit).map(
        |(refreshes_used, expires_at)| {
            let next = tokens::NextRefresh {
                family: &record.family,
                family_scope: &record.scope,
                refreshes_used,
                expires_at,
            };
            tokens::mint_refresh(&issue, &next, cx.now)
        },
    );
    let outcome = cx.store.retry_rotation(&RotationRetry {
        presented: record.hash.clone(),
        replaces: rotation.clone(),
        interval,
        now: cx.now,
        access: access.record.clone(),
        next: next.as_ref().map(|(_, record)| record.clone()),
    })?;
    match outcome {
        RetryOutcome::Replaced => {
            tracing::info!(
                client_id = %record.client_id,
                family = %record.family,
                "rotated refresh token presented again within refresh_reuse_interval: \
                 its rotation is issued afresh"
            );
            Ok(Some(super::response(
                access,
                next.map(|(token, _)| token),
                cx.now,
            )))
        }
        // Retried or used since we read it, or the family revoked: reuse.
        RetryOutcome::Stale => Ok(None),
    }
}

/// Whether `scopes` are those of the access token `rotation` issued (in
/// any order); not when that token is gone.
fn same_scopes(
    cx: &GrantContext<'_>,
    rotation: &Rotated,
    scopes: &[String],
) -> Result<bool, OAuthError> {
    let Some(lost) = cx.store.find_access_token(&rotation.access)? else {
        return Ok(false);
    };
    let mut granted: Vec<&str> = lost.scope.split(' ').filter(|s| !s.is_empty()).collect();
    let mut asked: Vec<&str> = scopes.iter().map(String::as_str).collect();
    granted.sort_unstable();
    asked.sort_unstable();
    Ok(granted == asked)
}

/// The refresh token a rotation issued, as a retry of the rotation finds it.
enum Lost {
    /// The rotation reached the refresh limit.
    NoneIssued,
    /// Neither used nor revoked, the `refreshes_used`-th of its family,
    /// and live until `end` (the family's end).
    Unused { refreshes_used: u32, end: u64 },
    /// Gone, used, revoked or ended: the rotation may not be retried.
    Spent,
}

fn lost_refresh(cx: &GrantContext<'_>, rotation: &Rotated) -> Result<Lost, OAuthError> {
    let Some(hash) = &rotation.refresh else {
        return Ok(Lost::NoneIssued);
    };
    let Some(lost) = cx.store.find_refresh_token(hash)? else {
        return Ok(Lost::Spent);
    };
    // A rotation always gives its successor an end; should one have none,
    // it ends as a rotation then would have ended it.
    let end = lost.expires_at.unwrap_or_else(|| {
        rotation
            .at
            .saturating_add(cx.settings.refresh_token_lifetime.as_secs())
    });
    if lost.rotated || lost.revoked || end <= cx.now {
        return Ok(Lost::Spent);
    }
    Ok(Lost::Unused {
        refreshes_used: lost.refreshes_used,
        end,
    })
}

/// The holder of `record` — its user, when it has one — is still in the
/// configuration.
fn holder_configured(cx: &GrantContext<'_>, record: &RefreshTokenRecord) -> bool {
    record
        .username
        .as_ref()
        .is_none_or(|user| cx.users.exists(user))
}

/// The scopes of a refresh: those requested, or the family's; within the
/// family's, and only those the client may still have. None while the
/// family has made all the refreshes the client may.
fn scopes(
    client: &Client,
    form: &Form,
    record: &RefreshTokenRecord,
) -> Result<Vec<String>, OAuthError> {
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
    Ok(scopes)
}

/// The access token a refresh of `record`'s family issues.
fn issue<'a>(
    client: &'a Client,
    record: &'a RefreshTokenRecord,
    scopes: &'a [String],
) -> Issue<'a> {
    Issue {
        client,
        username: record.username.as_deref(),
        scopes,
        grant_type: GrantType::RefreshToken,
        family: Some(record.family.clone()),
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
