//! Who is calling: client authentication at the token, introspection and
//! revocation endpoints (RFC 6749 §2.3.1).
//!
//! `client_secret_basic` (id and secret form-urlencoded, then Basic) or
//! `client_secret_post` (`client_id` + `client_secret` in the body) — never
//! both (RFC 6749 §2.3). A public client only names itself with
//! `client_id`. Secrets are compared in constant time; a wrong secret, an
//! unknown client and a secret for a public client all look the same to
//! the caller.

use base64::Engine;
use http::{header, HeaderMap};

use super::error::OAuthError;
use super::form::{self, Form};
use super::settings::{Client, Settings};

/// How the client presented itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Basic,
    Post,
    /// A public client, identified by `client_id` only.
    None,
}

/// A client whose identity (and, for a confidential one, secret) checked out.
#[derive(Debug, Clone, Copy)]
pub struct Authenticated<'s> {
    pub client: &'s Client,
    pub method: Method,
}

pub fn authenticate<'s>(
    settings: &'s Settings,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Authenticated<'s>, OAuthError> {
    let basic = basic_credentials(headers)?;
    let (client_id, secret, method) = match (basic, form.get("client_secret")) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::InvalidRequest(
                "use one client authentication method, not two",
            ))
        }
        (Some((id, secret)), None) => {
            if form.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id differs from the authenticated client",
                ));
            }
            (id, Some(secret), Method::Basic)
        }
        (None, secret) => {
            let id = form
                .get("client_id")
                .ok_or(OAuthError::InvalidClient { basic: false })?
                .to_owned();
            let method = if secret.is_some() {
                Method::Post
            } else {
                Method::None
            };
            (id, secret.map(str::to_owned), method)
        }
    };
    let failed = || OAuthError::InvalidClient {
        basic: method == Method::Basic,
    };
    let client = settings.client(&client_id).ok_or_else(failed)?;
    match (&client.client_secret, secret) {
        (Some(expected), Some(presented)) if expected.matches(presented.as_bytes()) => {
            Ok(Authenticated { client, method })
        }
        (None, None) => Ok(Authenticated { client, method }),
        (Some(_), _) | (None, Some(_)) => Err(failed()),
    }
}

/// `Authorization: Basic` credentials, form-urldecoded (RFC 6749 §2.3.1).
/// Other schemes are not client authentication and are ignored.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(OAuthError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    let bad = || OAuthError::InvalidClient { basic: true };
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let at = decoded.iter().position(|b| *b == b':').ok_or_else(bad)?;
    let id = form::decode(&decoded[..at]).map_err(|_| bad())?;
    let secret = form::decode(&decoded[at + 1..]).map_err(|_| bad())?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok(Some((id, secret)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz_server::settings::{GrantType, TokenFormat};
    use crate::config::Secret;
    use http::HeaderValue;
    use std::time::Duration;

    fn settings() -> Settings {
        let client = |id: &str, secret: Option<&str>| Client {
            name: id.into(),
            client_id: id.into(),
            client_secret: secret.map(Secret::new),
            redirect_uris: vec![],
            grant_types: vec![GrantType::Password],
            scopes: vec![],
            token_lifetime: Some(Duration::from_secs(60)),
            refresh_limit: 0,
            introspect: false,
        };
        Settings {
            issuer: "http://localhost".into(),
            token_format: TokenFormat::Opaque,
            signing_key_path: "k".into(),
            store_path: "s".into(),
            postgres: None,
            require_https: false,
            authorization_code_lifetime: Duration::from_secs(60),
            require_pkce: false,
            cleanup_interval: None,
            approval_page: None,
            approval_template: None,
            branding: Default::default(),
            scopes: vec![],
            users: vec![],
            clients: vec![client("a:b", Some("s&+ p")), client("pub", None)],
            audience: None,
        }
    }

    fn basic(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("header"),
        );
        headers
    }

    #[test]
    fn basic_parts_are_form_urldecoded() {
        let s = settings();
        let ok = authenticate(&s, &basic("a%3Ab:s%26%2B+p"), &Form::default()).expect("auth");
        assert_eq!(ok.client.client_id, "a:b");
        assert_eq!(ok.method, Method::Basic);
        let err = authenticate(&s, &basic("a%3Ab:wrong"), &Form::default());
        assert!(matches!(
            err,
            Err(OAuthError::InvalidClient { basic: true })
        ));
    }

    #[test]
    fn post_public_and_mixed() {
        let s = settings();
        let form = Form::parse(b"client_id=a%3Ab&client_secret=s%26%2B+p").expect("form");
        assert_eq!(
            authenticate(&s, &HeaderMap::new(), &form)
                .expect("auth")
                .method,
            Method::Post
        );
        let form = Form::parse(b"client_id=pub").expect("form");
        assert_eq!(
            authenticate(&s, &HeaderMap::new(), &form)
                .expect("auth")
                .method,
            Method::None
        );
        let form = Form::parse(b"client_id=a%3Ab").expect("form");
        assert!(matches!(
            authenticate(&s, &HeaderMap::new(), &form),
            Err(OAuthError::InvalidClient { basic: false })
        ));
        let form = Form::parse(b"client_secret=x").expect("form");
        assert!(matches!(
            authenticate(&s, &basic("pub:"), &form),
            Err(OAuthError::InvalidRequest(_))
        ));
    }
}
