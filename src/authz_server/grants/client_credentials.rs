//! Client credentials grant (RFC 6749 §4.4): a confidential client gets a
//! token for itself. No refresh token (§4.4.3), no user: `sub` is the
//! client id (RFC 9068 §2.2).

use super::{granted_scopes, issue_new, GrantContext, TokenResponse};
use crate::authz_server::error::OAuthError;
use crate::authz_server::form::Form;
use crate::authz_server::settings::{Client, GrantType};
use crate::authz_server::tokens::Issue;

pub fn grant(
    cx: &GrantContext<'_>,
    client: &Client,
    form: &Form,
) -> Result<TokenResponse, OAuthError> {
    // RFC 6749 §4.4: "MUST only be used by confidential clients".
    if !client.is_confidential() {
        return Err(OAuthError::UnauthorizedClient(
            "client_credentials needs a confidential client",
        ));
    }
    let scopes = granted_scopes(form.get("scope"), &client.scopes)?;
    let issue = Issue {
        client,
        username: None,
        scopes: &scopes,
        grant_type: GrantType::ClientCredentials,
        family: None,
    };
    // §4.4.3: a refresh token SHOULD NOT be included.
    issue_new(cx, issue, false)
}
