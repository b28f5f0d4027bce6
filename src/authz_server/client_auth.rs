//! Who is calling: client authentication at the token, introspection and
//! revocation endpoints (RFC 6749 §2.3.1).
//!
//! `client_secret_basic` (id and secret form-urlencoded, then Basic) or
//! `client_secret_post` (`client_id` + `client_secret` in the body) — never
//! both (RFC 6749 §2.3). A public client names itself with `client_id`,
//! or with Basic and an empty password, as many libraries send it: an
//! empty secret is no secret (RFC 6749 §2.3.1), for any client. Secrets
//! are compared in constant time; a wrong secret, an unknown client and a
//! secret for a public client all look the same to the caller.
//!
//! Guessing is locked out (RFC 6749 §2.3.1 asks for protection against
//! brute force): those failures count against the caller's address
//! ([`Failures`]), never against the client id, which anyone may send;
//! an IPv6 caller counts by its /64 ([`AddressKey`]), whose addresses it
//! may rotate through. 20
//! within 60 s lock the address for client authentication until the
//! window ends; while locked, every client authentication from it is
//! refused before a secret is compared, a right one too. A right secret
//! forgives nothing: the address may serve a guesser and a client alike.
//! A request that presents no guess (no secret, or an empty one, for a
//! confidential client; malformed credentials) is refused uncounted. A
//! secret for a public client counts, as a wrong one does: the only
//! secret a public client has is the empty one, so a client sending
//! another is no more conforming than one sending a stale secret, and
//! either is refused as a guess would be. The count is apart from
//! the admin logins' and the password logins'; a store that replicas share
//! (PostgreSQL) keeps it for all of them as well, so guesses spread over
//! replicas lock the address on each. A change of the server's settings
//! keeps the count ([`Failures::following`]).

use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use http::{header, HeaderMap};

use super::error::OAuthError;
use super::form::{self, Form};
use super::settings::{Client, Settings};
use super::store::{SharedCounts, TokenStore};
use crate::lockout::{AddressKey, Limits, Lockout, Subject};

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
    /// [`Method::None`] for every public client, whichever way it named
    /// itself.
    pub method: Method,
}

/// Failed client authentications within a window that lock an address.
const FAILURES: u32 = 20;

/// Only addresses are counted (as the clients of [`Lockout`]): no user
/// has a limit here.
const LIMITS: Limits = Limits {
    user: FAILURES,
    client: FAILURES,
    window_secs: 60,
    // Addresses are anyone's to choose: past it, windows that ended go
    // first, then the one with the fewest failures, a lock last.
    entries: 10_000,
};

/// Failed client authentications, per caller address, counted here and,
/// when replicas share the store, there too (an address is locked when
/// either count says so). A secret is compared in moments, so no
/// comparison under way is counted (as a password check under Argon2 is):
/// concurrent guesses pass the lock no further than the requests one
/// process runs at once.
#[derive(Debug)]
pub struct Failures {
    local: Lockout<AddressKey>,
    shared: SharedCounts,
}

impl Default for Failures {
    /// Counted here only.
    fn default() -> Failures {
        Failures {
            local: Lockout::new(LIMITS),
            shared: SharedCounts::default(),
        }
    }
}

impl Failures {
    /// Counted here and, when replicas share `store`, in it.
    pub fn shared(store: Arc<dyn TokenStore>) -> Failures {
        Failures {
            shared: SharedCounts::of(store),
            ..Failures::default()
        }
    }

    /// These counts over the ones kept here by `previous`, the counts of
    /// the server these settings replace: its locks go on.
    pub fn following(self, previous: &Failures) -> Failures {
        Failures {
            local: self.local.carrying(&previous.local),
            ..self
        }
    }

    /// `Err` while `address` is locked: 429 with the seconds left.
    fn check(&self, address: IpAddr, now: u64) -> Result<(), OAuthError> {
        let address = AddressKey::of(address);
        let local = self.local.check(&Subject::Client(address), now);
        let retry_after = match local {
            Err(locked) => Some(locked.retry_after),
            Ok(()) => self
                .shared
                .locked(&store_key(address), FAILURES, LIMITS.window_secs, now),
        };
        match retry_after {
            Some(retry_after) => Err(OAuthError::ClientLocked { retry_after }),
            None => Ok(()),
        }
    }

    fn record(&self, address: IpAddr, now: u64) {
        let address = AddressKey::of(address);
        self.shared
            .record(&store_key(address), LIMITS.window_secs, now);
        self.local.record_failure(&Subject::Client(address), now);
    }
}

/// The key of the store's shared count of `address`, apart from the
/// approval page's count of its logins (`address:…`).
fn store_key(address: AddressKey) -> String {
    format!("client-authentication:{address}")
}

/// Where a client authentication comes from, and the count its failure
/// adds to.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The caller's address, as `trusted_proxies` make it known.
    pub address: IpAddr,
    pub failures: &'a Failures,
    pub now: u64,
}

/// Authenticates the client of a request from `caller`: refused unchecked
/// while its address is locked; a guess that fails counts against it.
pub fn authenticate<'s>(
    settings: &'s Settings,
    caller: Caller<'_>,
    headers: &HeaderMap,
    form: &Form,
) -> Result<Authenticated<'s>, OAuthError> {
    caller.failures.check(caller.address, caller.now)?;
    let presented = presented(headers, form)?;
    let method = presented.method;
    match judge(settings, &presented) {
        Ok(client) => {
            // A public client presents no secret, however it names itself.
            let method = if client.client_secret.is_some() {
                method
            } else {
                Method::None
            };
            Ok(Authenticated { client, method })
        }
        Err(refused) => {
            if refused == Refused::Guess {
                caller.failures.record(caller.address, caller.now);
            }
            Err(OAuthError::InvalidClient {
                basic: method == Method::Basic,
            })
        }
    }
}

/// The credentials a request presents.
#[derive(Debug)]
struct Presented {
    client_id: String,
    secret: Option<String>,
    method: Method,
}

/// Why presented credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// An unknown client, a wrong secret or a secret for a public client.
    Guess,
    /// A confidential client without its secret: nothing was guessed.
    NoSecret,
}

fn presented(headers: &HeaderMap, form: &Form) -> Result<Presented, OAuthError> {
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
    Ok(Presented {
        client_id,
        secret,
        method,
    })
}

/// The configured client that `presented` proves to be.
fn judge<'s>(settings: &'s Settings, presented: &Presented) -> Result<&'s Client, Refused> {
    let client = settings
        .client(&presented.client_id)
        .ok_or(Refused::Guess)?;
    // RFC 6749 §2.3.1: a client without a secret may send Basic with an
    // empty password, or `client_secret=`: an empty secret is none (no
    // configured secret is empty).
    let secret = presented.secret.as_deref().filter(|s| !s.is_empty());
    match (&client.client_secret, secret) {
        (Some(expected), Some(secret)) if expected.matches(secret.as_bytes()) => Ok(client),
        (None, None) => Ok(client),
        (Some(_), Some(_)) | (None, Some(_)) => Err(Refused::Guess),
        (Some(_), None) => Err(Refused::NoSecret),
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
            refresh_reuse_interval: Duration::ZERO,
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
            refresh_token_lifetime: Duration::from_secs(86_400),
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

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn from(address: IpAddr, failures: &Failures, now: u64) -> Caller<'_> {
        Caller {
            address,
            failures,
            now,
        }
    }

    fn post(body: &[u8]) -> Form {
        Form::parse(body).expect("form")
    }

    #[test]
    fn basic_parts_are_form_urldecoded() {
        let s = settings();
        let failures = Failures::default();
        let auth = |headers: &HeaderMap, form: &Form| {
            authenticate(&s, from(HERE, &failures, 0), headers, form)
        };
        let ok = auth(&basic("a%3Ab:s%26%2B+p"), &Form::default()).expect("auth");
        assert_eq!(ok.client.client_id, "a:b");
        assert_eq!(ok.method, Method::Basic);
        let err = auth(&basic("a%3Ab:wrong"), &Form::default());
        assert!(matches!(
            err,
            Err(OAuthError::InvalidClient { basic: true })
        ));
    }

    #[test]
    fn post_public_and_mixed() {
        let s = settings();
        let failures = Failures::default();
        let auth = |headers: &HeaderMap, form: &Form| {
            authenticate(&s, from(HERE, &failures, 0), headers, form)
        };
        let form = Form::parse(b"client_id=a%3Ab&client_secret=s%26%2B+p").expect("form");
        assert_eq!(
            auth(&HeaderMap::new(), &form).expect("auth").method,
            Method::Post
        );
        let form = Form::parse(b"client_id=pub").expect("form");
        assert_eq!(
            auth(&HeaderMap::new(), &form).expect("auth").method,
            Method::None
        );
        let form = Form::parse(b"client_id=a%3Ab").expect("form");
        assert!(matches!(
            auth(&HeaderMap::new(), &form),
            Err(OAuthError::InvalidClient { basic: false })
        ));
        let form = Form::parse(b"client_secret=x").expect("form");
        assert!(matches!(
            auth(&basic("pub:"), &form),
            Err(OAuthError::InvalidRequest(_))
        ));
    }

    #[test]
    fn twenty_guesses_lock_their_address_not_the_client() {
        let s = settings();
        let failures = Failures::default();
        let right = post(b"client_id=a%3Ab&client_secret=s%26%2B+p");
        let wrong = post(b"client_id=a%3Ab&client_secret=guess");
        for t in 0..20 {
            let caller = from(HERE, &failures, 100 + t);
            assert!(matches!(
                authenticate(&s, caller, &HeaderMap::new(), &wrong),
                Err(OAuthError::InvalidClient { basic: false })
            ));
        }
        // Refused before any secret is compared, the right one too.
        for (form, headers) in [
            (&right, HeaderMap::new()),
            (&Form::default(), basic("a%3Ab:x")),
        ] {
            assert!(matches!(
                authenticate(&s, from(HERE, &failures, 130), &headers, form),
                Err(OAuthError::ClientLocked { retry_after: 30 })
            ));
        }
        // The client authenticates from elsewhere, and once the window ends.
        let elsewhere = from(ELSEWHERE, &failures, 130);
        assert!(authenticate(&s, elsewhere, &HeaderMap::new(), &right).is_ok());
        let later = from(HERE, &failures, 160);
        assert!(authenticate(&s, later, &HeaderMap::new(), &right).is_ok());
    }

    /// An IPv6 caller may send each guess from another address of its
    /// /64: they count as one; an IPv4-mapped address as its IPv4.
    #[test]
    fn guesses_from_one_ipv6_64_lock_it_whole() {
        let s = settings();
        let failures = Failures::default();
        let right = post(b"client_id=a%3Ab&client_secret=s%26%2B+p");
        let wrong = post(b"client_id=a%3Ab&client_secret=guess");
        let at = |text: &str| -> IpAddr { text.parse().expect("address") };
        for n in 0..20u16 {
            let rotated = at(&format!("2001:db8:1:2:{n:x}::{n:x}"));
            let caller = from(rotated, &failures, 0);
            assert!(authenticate(&s, caller, &HeaderMap::new(), &wrong).is_err());
        }
        let same_64 = from(at("2001:db8:1:2:ffff::1"), &failures, 1);
        assert!(matches!(
            authenticate(&s, same_64, &HeaderMap::new(), &right),
            Err(OAuthError::ClientLocked { retry_after: 59 })
        ));
        let next_64 = from(at("2001:db8:1:3::1"), &failures, 1);
        assert!(authenticate(&s, next_64, &HeaderMap::new(), &right).is_ok());

        for _ in 0..20 {
            let mapped = from(at("::ffff:192.0.2.9"), &failures, 0);
            assert!(authenticate(&s, mapped, &HeaderMap::new(), &wrong).is_err());
        }
        let v4 = from(at("192.0.2.9"), &failures, 1);
        assert!(matches!(
            authenticate(&s, v4, &HeaderMap::new(), &right),
            Err(OAuthError::ClientLocked { .. })
        ));
        assert!(authenticate(
            &s,
            from(at("192.0.2.10"), &failures, 1),
            &HeaderMap::new(),
            &right
        )
        .is_ok());
    }

    #[test]
    fn unknown_clients_and_secrets_for_public_clients_are_guesses_a_missing_secret_is_not() {
        let s = settings();
        let failures = Failures::default();
        let guesses = [
            post(b"client_id=nobody&client_secret=x"),
            post(b"client_id=nobody"),
            post(b"client_id=pub&client_secret=x"),
            post(b"client_id=a%3Ab&client_secret=x"),
        ];
        let no_secret = post(b"client_id=a%3Ab");
        let right = post(b"client_id=a%3Ab&client_secret=s%26%2B+p");
        for n in 0..19 {
            let caller = from(HERE, &failures, 0);
            assert!(authenticate(&s, caller, &HeaderMap::new(), &guesses[n % 4]).is_err());
            // Neither a missing secret nor a right one changes the count.
            assert!(authenticate(&s, caller, &HeaderMap::new(), &no_secret).is_err());
            assert!(authenticate(&s, caller, &HeaderMap::new(), &right).is_ok());
        }
        let caller = from(HERE, &failures, 0);
        assert!(authenticate(&s, caller, &HeaderMap::new(), &guesses[0]).is_err());
        assert!(matches!(
            authenticate(&s, caller, &HeaderMap::new(), &right),
            Err(OAuthError::ClientLocked { retry_after: 60 })
        ));
    }

    /// RFC 6749 §2.3.1: libraries send a public client as Basic with an
    /// empty password. That is no secret, never a guess, however often.
    #[test]
    fn an_empty_secret_is_none_and_never_a_guess() {
        let s = settings();
        let failures = Failures::default();
        let right = post(b"client_id=a%3Ab&client_secret=s%26%2B+p");
        for _ in 0..2 * FAILURES {
            let caller = from(HERE, &failures, 0);
            let empty_post = post(b"client_id=pub&client_secret=");
            for (headers, form) in [
                (basic("pub:"), &Form::default()),
                (HeaderMap::new(), &empty_post),
            ] {
                let public = authenticate(&s, caller, &headers, form).expect("a public client");
                assert_eq!(public.client.client_id, "pub");
                assert_eq!(public.method, Method::None, "no secret presented");
            }
            // A confidential client's empty secret is a missing one.
            assert!(matches!(
                authenticate(&s, caller, &basic("a%3Ab:"), &Form::default()),
                Err(OAuthError::InvalidClient { basic: true })
            ));
        }
        assert!(authenticate(&s, from(HERE, &failures, 0), &HeaderMap::new(), &right).is_ok());
    }

    #[test]
    fn judge_tells_guesses_from_a_missing_secret() {
        let s = settings();
        let presented = |client_id: &str, secret: Option<&str>| Presented {
            client_id: client_id.into(),
            secret: secret.map(str::to_owned),
            method: Method::Post,
        };
        assert!(judge(&s, &presented("a:b", Some("s&+ p"))).is_ok());
        assert!(judge(&s, &presented("pub", None)).is_ok());
        assert!(judge(&s, &presented("pub", Some(""))).is_ok());
        for (id, secret) in [
            ("a:b", Some("wrong")),
            ("nobody", Some("x")),
            ("nobody", None),
            ("pub", Some("x")),
        ] {
            assert_eq!(
                judge(&s, &presented(id, secret)).err(),
                Some(Refused::Guess),
                "{id}"
            );
        }
        for secret in [None, Some("")] {
            assert_eq!(
                judge(&s, &presented("a:b", secret)).err(),
                Some(Refused::NoSecret)
            );
        }
    }
}
