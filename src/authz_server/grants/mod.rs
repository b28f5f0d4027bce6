//! The token endpoint (RFC 6749 §3.2): authenticate the client, pick the
//! grant, check the client may use it, let the grant decide what to issue,
//! mint and record it.
//!
//! Shared rules: the client must list the grant type (`unauthorized_client`
//! otherwise); requested scopes must all be the client's (`invalid_scope`),
//! and no `scope` means all of them (RFC 6749 §3.3). A refresh token is
//! issued only to a client with `refresh_limit > 0` that may use the
//! `refresh_token` grant.

pub mod attempts;
mod authorization_code;
mod client_credentials;
pub mod password;
mod refresh_token;

use std::net::IpAddr;

use http::HeaderMap;
use serde::Serialize;

use super::client_auth;
use super::error::OAuthError;
use super::form::Form;
use super::keys::SigningKey;
use super::settings::{Client, GrantType, Settings};
use super::store::{RefreshTokenRecord, TokenStore};
use super::tokens::{self, Issue};
use crate::config::authz::TokenFormat;
use attempts::FailedAttempts;
use password::Users;

/// What the grants need from the server, for one request.
pub struct GrantContext<'a> {
    pub settings: &'a Settings,
    pub store: &'a dyn TokenStore,
    pub key: &'a SigningKey,
    pub users: &'a Users,
    pub attempts: &'a FailedAttempts,
    /// The caller's address, as `trusted_proxies` make it known.
    pub address: IpAddr,
    /// Failed client authentications, per address.
    pub client_failures: &'a client_auth::Failures,
    pub now: u64,
}

impl<'a> GrantContext<'a> {
    /// Whence this request's client authenticates.
    pub fn caller(&self) -> client_auth::Caller<'a> {
        client_auth::Caller {
            address: self.address,
            failures: self.client_failures,
            now: self.now,
        }
    }
}

/// RFC 6749 §5.1 successful response.
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

/// JWTs are issued only with the published signing key: while the keys
/// are not read from the store yet, a token request is refused (503, to
/// retry soon) before anything is spent — an authorization code taken
/// and then not answered for could not be presented again.
fn ready_to_sign(format: TokenFormat, key: &SigningKey) -> Result<(), OAuthError> {
    if format == TokenFormat::Jwt {
        key.encoding_key().map_err(tokens::TokenError::from)?;
    }
    Ok(())
}

/// Handles one token request; the grant type used is returned for metrics.
pub fn token(
    cx: &GrantContext<'_>,
    headers: &HeaderMap,
    form: &Form,
) -> Result<(GrantType, TokenResponse), OAuthError> {
    let grant_type = form
        .get("grant_type")
        .ok_or(OAuthError::InvalidRequest("grant_type is required"))?;
    let caller = client_auth::authenticate(cx.settings, cx.caller(), headers, form)?;
    let grant = match grant_type {
        "authorization_code" => GrantType::AuthorizationCode,
        "client_credentials" => GrantType::ClientCredentials,
        "password" => GrantType::Password,
        "refresh_token" => GrantType::RefreshToken,
        _ => return Err(OAuthError::UnsupportedGrantType),
    };
    if !caller.client.allows(grant) {
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use this grant type",
        ));
    }
    ready_to_sign(cx.settings.token_format, cx.key)?;
    let response = match grant {
        GrantType::ClientCredentials => client_credentials::grant(cx, caller.client, form)?,
        GrantType::Password => password::grant(cx, caller.client, form)?,
        GrantType::RefreshToken => refresh_token::grant(cx, caller.client, form)?,
        GrantType::AuthorizationCode => authorization_code::grant(cx, caller.client, form)?,
        // Issued at the authorization endpoint; no token request has it.
        GrantType::Implicit => return Err(OAuthError::UnsupportedGrantType),
    };
    Ok((grant, response))
}

/// Requested scopes, each within `ceiling`; none requested = the ceiling.
/// The result keeps the order of the request (or the ceiling), without
/// repeats. RFC 6749 §3.3: only 0x20 separates scope tokens; any other
/// whitespace or a control character makes the request `invalid_scope`.
pub fn granted_scopes(
    requested: Option<&str>,
    ceiling: &[String],
) -> Result<Vec<String>, OAuthError> {
    let Some(requested) = requested else {
        return Ok(ceiling.to_vec());
    };
    let scopes = crate::auth::scope::split(requested).map_err(|_| {
        OAuthError::InvalidScope("scope tokens are separated by single spaces only")
    })?;
    let mut granted: Vec<String> = Vec::new();
    for scope in scopes {
        if !ceiling.iter().any(|allowed| allowed == scope) {
            return Err(OAuthError::InvalidScope(
                "a requested scope is not granted to the client",
            ));
        }
        if !granted.iter().any(|g| g == scope) {
            granted.push(scope.to_owned());
        }
    }
    Ok(granted)
}

/// Whether a grant to this client comes with a refresh token.
pub fn may_refresh(client: &Client) -> bool {
    client.refresh_limit > 0 && client.allows(GrantType::RefreshToken)
}

/// Mints and records a new grant's access token and, when `refreshable`,
/// the first refresh token of a new family.
pub fn issue_new(
    cx: &GrantContext<'_>,
    mut issue: Issue<'_>,
    refreshable: bool,
) -> Result<TokenResponse, OAuthError> {
    issue.family = refreshable.then(tokens::random_id);
    issue_in_family(cx, issue, refreshable)
}

/// Mints and records an access token of `issue.family` and, when
/// `refreshable` (and the issue has a family), the family's first refresh
/// token.
pub fn issue_in_family(
    cx: &GrantContext<'_>,
    issue: Issue<'_>,
    refreshable: bool,
) -> Result<TokenResponse, OAuthError> {
    let minted = mint_in_family(cx, &issue, refreshable)?;
    cx.store.insert_grant(
        &minted.access.record,
        minted.refresh.as_ref().map(|(_, record)| record),
    )?;
    Ok(minted.response(cx.now))
}

/// A grant's tokens, minted, not stored yet.
pub struct Minted {
    pub access: tokens::MintedAccess,
    /// The refresh token and its record, when one is issued.
    pub refresh: Option<(String, RefreshTokenRecord)>,
}

impl Minted {
    pub fn response(self, now: u64) -> TokenResponse {
        response(self.access, self.refresh.map(|(token, _)| token), now)
    }
}

/// Mints, without storing them, an access token of `issue.family` and,
/// when `refreshable` (and the issue has a family), the family's first
/// refresh token.
pub fn mint_in_family(
    cx: &GrantContext<'_>,
    issue: &Issue<'_>,
    refreshable: bool,
) -> Result<Minted, OAuthError> {
    let access = tokens::mint_access(cx.settings, cx.key, issue, cx.now)?;
    let expires_at = cx
        .now
        .saturating_add(cx.settings.refresh_token_lifetime.as_secs());
    let refresh = issue
        .family
        .as_deref()
        .filter(|_| refreshable)
        .map(|family| {
            let next = tokens::NextRefresh {
                family,
                family_scope: &access.record.scope,
                refreshes_used: 0,
                expires_at,
            };
            tokens::mint_refresh(issue, &next, cx.now)
        });
    Ok(Minted { access, refresh })
}

fn response(
    access: tokens::MintedAccess,
    refresh_token: Option<String>,
    now: u64,
) -> TokenResponse {
    TokenResponse {
        expires_in: access.record.expires_at.map(|exp| exp.saturating_sub(now)),
        scope: access.record.scope,
        access_token: access.token,
        token_type: "Bearer",
        refresh_token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_token_request_is_taken_up_before_the_keys_are_read() {
        let placeholder = super::super::keys::SigningKey::placeholder().expect("key");
        let refused = ready_to_sign(TokenFormat::Jwt, &placeholder).expect_err("pending");
        assert_eq!(refused.parts().0, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(ready_to_sign(TokenFormat::Opaque, &placeholder).is_ok());
    }

    fn ceiling() -> Vec<String> {
        vec!["view".into(), "book".into()]
    }

    #[test]
    fn no_scope_means_all_of_the_clients() {
        assert_eq!(granted_scopes(None, &ceiling()).expect("ok"), ceiling());
    }

    #[test]
    fn subset_is_granted_and_widening_refused() {
        assert_eq!(
            granted_scopes(Some("book  book"), &ceiling()).expect("ok"),
            ["book"]
        );
        assert!(matches!(
            granted_scopes(Some("book cancel"), &ceiling()),
            Err(OAuthError::InvalidScope(_))
        ));
    }

    #[test]
    fn scopes_split_on_other_whitespace_are_invalid() {
        for requested in ["view\u{2003}book", "view\tbook", "view\n", "book\u{0}"] {
            assert!(
                matches!(
                    granted_scopes(Some(requested), &ceiling()),
                    Err(OAuthError::InvalidScope(_))
                ),
                "{requested:?}"
            );
        }
    }
}
