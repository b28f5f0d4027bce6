//! Validating an authorization request (RFC 6749 §4.1.1, §4.2.1, RFC 7636
//! §4.3), in the order that decides where a refusal goes.
//!
//! First the client and its redirect URI: until both check out nothing is
//! redirected (§4.1.2.1, RFC 9700 §4.1: exact match against the registered
//! URIs, but for the port of a loopback IP literal, RFC 8252 §7.3;
//! `redirect_uri` may be left out only when the client registered one). Every later problem goes back to that URI, in the query for a code
//! and in the fragment for a token (§4.2.2.1), with the `state` the client
//! sent.

use std::borrow::Cow;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::authz_server::error::OAuthError;
use crate::authz_server::form::{Form, FormError};
use crate::authz_server::grants::granted_scopes;
use crate::authz_server::pkce;
use crate::authz_server::settings::{Client, GrantType, Settings};

/// The OAuth parameters the approval page carries from step to step, in
/// this order; others are ignored (RFC 6749 §3.1).
pub const PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// RFC 3986 unreserved characters stay; everything else is encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseType {
    Code,
    Token,
}

/// Where the response parameters go on the redirect URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Query,
    Fragment,
}

/// A redirect URI the client registered, with what goes back to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'s> {
    /// The registered URI, or the request's when it differs from it only
    /// by the port of a loopback IP literal (RFC 8252 §7.3).
    pub redirect_uri: Cow<'s, str>,
    /// The request named it (it must then be repeated at the token endpoint).
    pub given: bool,
    pub state: Option<String>,
    pub delivery: Delivery,
    /// RFC 9207: the `iss` parameter of every authorization response.
    pub issuer: &'s str,
}

impl Target<'_> {
    /// The redirect URI with `pairs`, `state` and `iss` appended, the
    /// URI's own query kept (RFC 6749 §3.1.2).
    pub fn location(&self, pairs: &[(&str, &str)]) -> String {
        let state = self.state.as_deref().map(|s| ("state", s));
        let all = pairs
            .iter()
            .copied()
            .chain(state)
            .chain([("iss", self.issuer)]);
        let encoded = encode_pairs(all);
        let separator = match self.delivery {
            Delivery::Fragment => '#',
            Delivery::Query if self.redirect_uri.contains('?') => '&',
            Delivery::Query => '?',
        };
        format!("{}{separator}{encoded}", self.redirect_uri)
    }

    /// The redirect URI's origin (`scheme://host[:port]`), for the page's
    /// `form-action`; its scheme alone (`https:`) when its host has
    /// characters a CSP source may not hold (`my_app.example`), so that the
    /// page's forms can still redirect there; `None` when the scheme has
    /// such characters.
    pub fn origin(&self) -> Option<String> {
        let uri: http::Uri = self.redirect_uri.parse().ok()?;
        let scheme = uri.scheme_str()?;
        let authority = uri.authority()?.as_str();
        let host_port = authority.rsplit('@').next()?;
        if !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
        Some(if host_port.chars().all(plain) {
            format!("{scheme}://{host_port}")
        } else {
            format!("{scheme}:")
        })
    }
}

/// `name=value&…`, form-urlencoded.
pub fn encode_pairs<'p>(pairs: impl IntoIterator<Item = (&'p str, &'p str)>) -> String {
    pairs
        .into_iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                utf8_percent_encode(name, COMPONENT),
                utf8_percent_encode(value, COMPONENT)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A request that may be shown to the resource owner.
#[derive(Debug, Clone)]
pub struct Valid<'s> {
    pub client: &'s Client,
    pub target: Target<'s>,
    pub response_type: ResponseType,
    /// The scopes asked for (all of the client's when none are named).
    pub scopes: Vec<String>,
    /// RFC 7636 S256 challenge (code flow only).
    pub challenge: Option<String>,
    /// The request's OAuth parameters, to carry in the page's forms.
    pub params: Vec<(&'static str, String)>,
}

/// Why a request stops, and where the resource owner or client learns it.
#[derive(Debug)]
pub enum Refusal<'s> {
    /// The client or its redirect URI cannot be trusted: shown on a page,
    /// never redirected.
    Page(OAuthError),
    /// Sent back to the client's redirect URI.
    Redirect(Box<Target<'s>>, OAuthError),
}

/// The checkbox name of a scope to grant (the one form field that repeats).
pub const GRANT_SCOPE: &str = "grant_scope";

/// Parameters a request may carry more than once: the approval form's
/// ticked scopes.
const REPEATABLE: &[&str] = &[GRANT_SCOPE];

/// Checks a request read with [`Form::parse_keeping_repeats`].
pub fn validate<'s>(settings: &'s Settings, form: &Form) -> Result<Valid<'s>, Refusal<'s>> {
    // Which client or redirect URI the request meant is not known: no
    // redirect, whichever parameter repeats first.
    if form.repeats("client_id") || form.repeats("redirect_uri") {
        return Err(Refusal::Page(OAuthError::from(FormError::Duplicate)));
    }
    let repeated = form.repeated(REPEATABLE);
    let (client, redirect_uri, given) = trusted_redirect(settings, form).map_err(Refusal::Page)?;
    let response_type = match form.get("response_type") {
        Some("code") => Some(ResponseType::Code),
        Some("token") => Some(ResponseType::Token),
        _ => None,
    };
    let target = Target {
        redirect_uri,
        given,
        state: form.get("state").map(str::to_owned),
        delivery: match response_type {
            Some(ResponseType::Token) => Delivery::Fragment,
            Some(ResponseType::Code) | None => Delivery::Query,
        },
        issuer: &settings.issuer,
    };
    if let Some(name) = repeated {
        // RFC 6749 §3.1 refuses it; the client and its redirect URI, each
        // sent once, are good: back to the client (§4.1.2.1), without a
        // `state` that was itself repeated.
        let target = Target {
            state: target.state.filter(|_| name != "state"),
            ..target
        };
        return Err(Refusal::Redirect(
            Box::new(target),
            OAuthError::from(FormError::Duplicate),
        ));
    }
    let checked = check(settings, client, form, response_type);
    let (response_type, scopes, challenge) = match checked {
        Ok(checked) => checked,
        Err(error) => return Err(Refusal::Redirect(Box::new(target), error)),
    };
    let params = PARAMS
        .iter()
        .filter_map(|name| form.get(name).map(|value| (*name, value.to_owned())))
        .collect();
    Ok(Valid {
        client,
        target,
        response_type,
        scopes,
        challenge,
        params,
    })
}

/// The client and the redirect URI to use, and whether it was given.
fn trusted_redirect<'s>(
    settings: &'s Settings,
    form: &Form,
) -> Result<(&'s Client, Cow<'s, str>, bool), OAuthError> {
    let client_id = form
        .get("client_id")
        .ok_or(OAuthError::InvalidRequest("client_id is missing"))?;
    let client = settings
        .client(client_id)
        .ok_or(OAuthError::InvalidRequest("the client is unknown"))?;
    match form.get("redirect_uri") {
        Some(given) => client
            .redirect_uris
            .iter()
            .find(|registered| registered.matches(given))
            .map(|registered| {
                // The request's own: the answer goes to the port the
                // native app listens on, and the token request repeats it.
                let uri = if registered.uri == given {
                    Cow::Borrowed(registered.uri.as_str())
                } else {
                    Cow::Owned(given.to_owned())
                };
                (client, uri, true)
            })
            .ok_or(OAuthError::InvalidRequest(
                "redirect_uri is not registered for the client",
            )),
        None => match client.redirect_uris.as_slice() {
            [only] => Ok((client, Cow::Borrowed(only.uri.as_str()), false)),
            [] => Err(OAuthError::InvalidRequest(
                "the client has no redirect URI registered",
            )),
            _ => Err(OAuthError::InvalidRequest(
                "redirect_uri is required: the client registered several",
            )),
        },
    }
}

type Checked = (ResponseType, Vec<String>, Option<String>);

fn check(
    settings: &Settings,
    client: &Client,
    form: &Form,
    response_type: Option<ResponseType>,
) -> Result<Checked, OAuthError> {
    let response_type = match (form.get("response_type"), response_type) {
        (None, _) => return Err(OAuthError::InvalidRequest("response_type is required")),
        (Some(_), None) => return Err(OAuthError::UnsupportedResponseType),
        (Some(_), Some(known)) => known,
    };
    let grant = match response_type {
        ResponseType::Code => GrantType::AuthorizationCode,
        ResponseType::Token => GrantType::Implicit,
    };
    if !client.allows(grant) {
        return Err(OAuthError::UnauthorizedClient(
            "the client may not use this response_type",
        ));
    }
    let scopes = granted_scopes(form.get("scope"), &client.scopes)?;
    let challenge = match response_type {
        ResponseType::Code => challenge(settings, client, form)?,
        // PKCE protects the code exchange; an implicit grant has none.
        ResponseType::Token => None,
    };
    Ok((response_type, scopes, challenge))
}

/// RFC 7636 §4.3 with S256 only; required for public clients (RFC 9700
/// §2.1.1) and for all when `require_pkce` is set.
fn challenge(
    settings: &Settings,
    client: &Client,
    form: &Form,
) -> Result<Option<String>, OAuthError> {
    let method = form.get("code_challenge_method");
    match (form.get("code_challenge"), method) {
        (_, Some(method)) if method != pkce::S256 => Err(OAuthError::InvalidRequest(
            "code_challenge_method must be S256",
        )),
        // §4.3: no method means `plain`, which is not supported.
        (Some(_), None) => Err(OAuthError::InvalidRequest(
            "code_challenge_method must be S256",
        )),
        (None, Some(_)) => Err(OAuthError::InvalidRequest("code_challenge is missing")),
        (Some(challenge), Some(_)) if !pkce::is_valid_challenge(challenge) => Err(
            OAuthError::InvalidRequest("code_challenge is not an S256 challenge"),
        ),
        (Some(challenge), Some(_)) => Ok(Some(challenge.to_owned())),
        (None, None) if !client.is_confidential() || settings.require_pkce => Err(
            OAuthError::InvalidRequest("PKCE is required: send code_challenge with S256"),
        ),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(delivery: Delivery, uri: &'static str) -> Target<'static> {
        Target {
            redirect_uri: uri.into(),
            given: true,
            state: Some("a b&c".into()),
            delivery,
            issuer: "http://localhost:4485",
        }
    }

    #[test]
    fn locations_keep_the_query_and_encode_values() {
        assert_eq!(
            target(Delivery::Query, "https://app.example/cb?x=1").location(&[("code", "c/d")]),
            "https://app.example/cb?x=1&code=c%2Fd&state=a%20b%26c&iss=http%3A%2F%2Flocalhost%3A4485"
        );
        assert!(target(Delivery::Fragment, "http://localhost:8000/cb")
            .location(&[("access_token", "t")])
            .starts_with("http://localhost:8000/cb#access_token=t&state="));
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        let t = target(Delivery::Query, "http://localhost:8000/callback?x=1");
        assert_eq!(t.origin().as_deref(), Some("http://localhost:8000"));
        let t = target(Delivery::Query, "https://[::1]/cb");
        assert_eq!(t.origin().as_deref(), Some("https://[::1]"));
        // A host a CSP source cannot name: the scheme, not nothing (the
        // forms could not redirect).
        let t = target(Delivery::Query, "https://my_app.example/cb");
        assert_eq!(t.origin().as_deref(), Some("https:"));
    }
}
