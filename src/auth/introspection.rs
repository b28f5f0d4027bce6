//! Opaque-token validation through an RFC 7662 introspection endpoint.
//!
//! One [`Introspector`] per auth server with `remoteIntrospectionConfig`. It
//! asks the shared [`IntrospectionCache`] first; on a miss it POSTs the token
//! to the endpoint, authenticated as a client (RFC 6749 §2.3.1), and reads a
//! bounded answer (size and total time).
//!
//! Invariants:
//! - only a JSON object whose `active` is the boolean `true` accepts a token
//!   (RFC 7662 §2.2); `active: false`, an active token that is no access
//!   token (a refresh or ID token), one without the configured audience,
//!   one whose `iss` is not the auth server's configured issuer, or a
//!   `scope` that is not RFC 6749 §3.3 scope tokens, is
//!   `Invalid(Inactive)`;
//! - anything else — timeout, refused connection, non-2xx, oversized or
//!   malformed body, `"active": "true"`, an `exp` or `nbf` that is not a
//!   non-negative integer — is `Unavailable` (503 upstream of here), never
//!   an accept, and is not cached;
//! - at most `max_in_flight` calls of one auth server are in flight: every
//!   new token leads a call of its own, so a client sending random tokens
//!   would otherwise make one call per request. A call that finds none
//!   free within `queue_wait` is `Unavailable` without being made;
//! - an active token whose `exp` is more than `leeway` behind `now` is
//!   `Invalid(Expired)`, and one whose `nbf` is more than `leeway` ahead
//!   of `now` is `Invalid(NotYetValid)`, as a JWT's, whether the answer is
//!   fresh or cached: the answer is cached (never past `exp`), the refusal
//!   is not, so the token is accepted from `nbf` on;
//! - the token and the client secret are never logged, and never part of an
//!   error's text.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use super::cache::{time_left, CacheKey, CacheTtl, Introspected, IntrospectionCache};
use super::jwt::MAX_LEEWAY;
use super::{AuthFailure, Principal, TokenProblem};

/// A client secret: `****` in `Debug` and `Display`.
pub use crate::config::Secret as ClientSecret;

/// How the gateway authenticates to the introspection endpoint
/// (RFC 7662 §2.1 requires some authorization; RFC 6749 §2.3.1 defines
/// `client_secret_basic` and `client_secret_post`).
pub use crate::config::snapshot::ClientAuth;

/// `remoteIntrospectionConfig` of one auth server, resolved.
#[derive(Debug, Clone)]
pub struct IntrospectionSettings {
    pub endpoint: Url,
    pub client_id: String,
    pub client_secret: ClientSecret,
    pub client_auth: ClientAuth,
    /// Upper bound for caching an active token; never past its `exp`.
    pub cache_ttl: Duration,
    /// How long an inactive answer is cached.
    pub negative_cache_ttl: Duration,
    /// Total time for one introspection call, body included.
    pub timeout: Duration,
    /// Largest answer read, in bytes.
    pub max_response: usize,
    /// What an active answer's `aud` must contain, when set.
    pub audience: Option<String>,
    /// What an active answer's `iss` must be when it has one, when set:
    /// the issuer its JWTs are validated against.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, as for JWTs; capped at
    /// [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Calls to the endpoint in flight at once, at most.
    pub max_in_flight: usize,
    /// How long a call waits for one in flight to end, at most (and never
    /// past `timeout`).
    pub queue_wait: Duration,
}

impl IntrospectionSettings {
    pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);
    pub const DEFAULT_NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_MAX_RESPONSE: usize = 64 * 1024;
    /// Enough for a healthy endpoint's bursts of new tokens; few enough
    /// that a flood of made-up ones does not pile up on a slow one.
    pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
    /// A quarter of the default timeout: while the endpoint is slow, a
    /// request over the limit is refused soon rather than when the calls
    /// ahead of it give up.
    pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_millis(500);

    /// Settings with `client_secret_basic` and the default limits.
    pub fn new(
        endpoint: Url,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
    ) -> IntrospectionSettings {
        IntrospectionSettings {
            endpoint,
            client_id: client_id.into(),
            client_secret,
            client_auth: ClientAuth::Basic,
            cache_ttl: Self::DEFAULT_CACHE_TTL,
            negative_cache_ttl: Self::DEFAULT_NEGATIVE_CACHE_TTL,
            timeout: Self::DEFAULT_TIMEOUT,
            max_response: Self::DEFAULT_MAX_RESPONSE,
            audience: None,
            issuer: None,
            leeway: MAX_LEEWAY,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            queue_wait: Self::DEFAULT_QUEUE_WAIT,
        }
    }
}

/// Why an introspection call gave no usable answer. Becomes the `cause` of
/// [`AuthFailure::Unavailable`]: it names no token and no secret.
#[derive(Debug, thiserror::Error)]
enum CallProblem {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the limit of {0} calls in flight is reached")]
    Saturated(usize),
    #[error("request failed: {0}")]
    Request(reqwest::Error),
    #[error("answered with status {0}")]
    Status(StatusCode),
    #[error("answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("answer is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("answer is not a JSON object")]
    NotObject,
    #[error("answer has no boolean `active`")]
    ActiveNotBoolean,
    #[error("answer has an `exp` that is not a non-negative integer")]
    BadExpiry,
    #[error("answer has an `nbf` that is not a non-negative integer")]
    BadNotBefore,
}

impl From<reqwest::Error> for CallProblem {
    fn from(error: reqwest::Error) -> CallProblem {
        // The endpoint URL may carry credentials in its userinfo.
        CallProblem::Request(error.without_url())
    }
}

/// Validates opaque tokens of one auth server.
#[derive(Debug)]
pub struct Introspector {
    auth_server: Arc<str>,
    settings: IntrospectionSettings,
    http: reqwest::Client,
    cache: Arc<IntrospectionCache>,
    /// Permits for the calls in flight (`max_in_flight`).
    in_flight: Semaphore,
    /// Failures are not cached: while the endpoint is down every opaque
    /// token fails, and its line is written once in a while.
    failures_logged: crate::logging::Sparse,
    /// Likewise for tokens refused because every permit was taken.
    saturation_logged: crate::logging::Sparse,
    /// `introspection_requests_total{auth_server, result}`.
    counts: crate::metrics::AuthServerCounts,
}

impl Introspector {
    pub fn new(
        auth_server: Arc<str>,
        mut settings: IntrospectionSettings,
        http: reqwest::Client,
        cache: Arc<IntrospectionCache>,
    ) -> Introspector {
        // No call at all would refuse every opaque token.
        settings.max_in_flight = settings.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        settings.leeway = settings.leeway.min(MAX_LEEWAY);
        Introspector {
            counts: crate::metrics::AuthServerCounts::introspection(auth_server.clone()),
            auth_server,
            in_flight: Semaphore::new(settings.max_in_flight),
            settings,
            http,
            cache,
            failures_logged: crate::logging::Sparse::new(),
            saturation_logged: crate::logging::Sparse::new(),
        }
    }

    pub fn auth_server(&self) -> &Arc<str> {
        &self.auth_server
    }

    /// The principal `token` speaks for at `now`, from the cache or the
    /// introspection endpoint. Scopes are left to the caller.
    pub async fn validate(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let key = CacheKey::new(&self.auth_server, token);
        let ttl = CacheTtl {
            positive: self.settings.cache_ttl,
            negative: self.settings.negative_cache_ttl,
        };
        let answer = self
            .cache
            .get_or_introspect(&key, ttl, now, || self.introspect(token))
            .await?;
        match answer {
            Introspected::Active(principal) => {
                self.check_times(&principal, now)
                    .map_err(AuthFailure::Invalid)?;
                Ok(principal)
            }
            Introspected::Inactive => Err(AuthFailure::Invalid(TokenProblem::Inactive)),
        }
    }

    /// RFC 7519 §4.1.4: not accepted on or after `exp`; §4.1.5: not before
    /// `nbf`; both widened by the leeway as for JWTs. `interpret` lets
    /// neither through unless it is a non-negative integer.
    fn check_times(&self, principal: &Principal, now: SystemTime) -> Result<(), TokenProblem> {
        let leeway = self.settings.leeway;
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        if principal
            .expires_at
            .is_some_and(|exp| since_epoch >= Duration::from_secs(exp).saturating_add(leeway))
        {
            return Err(TokenProblem::Expired);
        }
        let nbf = principal.claims.get("nbf").and_then(Value::as_u64);
        if nbf.is_some_and(|nbf| time_left(nbf, now) > leeway) {
            return Err(TokenProblem::NotYetValid);
        }
        Ok(())
    }

    /// One call to the endpoint, counted and, on failure, logged.
    async fn introspect(&self, token: &str) -> Result<Introspected, AuthFailure> {
        let result = self.call_in_turn(token).await;
        let label = match &result {
            Ok(Introspected::Active(_)) => "active",
            Ok(Introspected::Inactive) => "inactive",
            Err(CallProblem::Saturated(_)) => "saturated",
            Err(_) => "error",
        };
        self.counts.count(label);
        result.map_err(|problem| {
            let sparse = match problem {
                CallProblem::Saturated(_) => &self.saturation_logged,
                _ => &self.failures_logged,
            };
            if let Some(suppressed) = sparse.due() {
                tracing::warn!(auth_server = %self.auth_server, cause = %problem, suppressed, "introspection failed");
            }
            AuthFailure::Unavailable {
                auth_server: Arc::clone(&self.auth_server),
                cause: problem.to_string(),
            }
        })
    }

    /// The call, once one of the permits in flight is free; the wait for
    /// it and the call together take at most `timeout`.
    async fn call_in_turn(&self, token: &str) -> Result<Introspected, CallProblem> {
        let started = tokio::time::Instant::now();
        let timeout = self.settings.timeout;
        let queue_wait = self.settings.queue_wait.min(timeout);
        let permit = tokio::time::timeout(queue_wait, self.in_flight.acquire()).await;
        // The semaphore is never closed: an error is as good as no permit.
        let Ok(Ok(_permit)) = permit else {
            return Err(CallProblem::Saturated(self.settings.max_in_flight));
        };
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.call(token)).await {
            Ok(answer) => answer.and_then(|body| self.interpret(&body)),
            Err(_) => Err(CallProblem::Timeout(timeout)),
        }
    }

    /// POSTs the token and reads at most `max_response` bytes of a 2xx answer.
    async fn call(&self, token: &str) -> Result<Vec<u8>, CallProblem> {
        let mut request = self
            .http
            .post(self.settings.endpoint.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(self.form(token));
        if self.settings.client_auth == ClientAuth::Basic {
            request = request.header(AUTHORIZATION, self.basic_credentials());
        }
        let mut response = request.send().await?;
        if !response.status().is_success() {
            return Err(CallProblem::Status(response.status()));
        }
        let limit = self.settings.max_response;
        if response
            .content_length()
            .is_some_and(|length| length > limit as u64)
        {
            return Err(CallProblem::TooLarge(limit));
        }
        // Content-Length may be absent (chunked) or wrong: count what arrives
        // and stop at the limit rather than buffer an unbounded body.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(CallProblem::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// RFC 7662 §2.1 request body; with `client_secret_post` also the client
    /// credentials (RFC 6749 §2.3.1).
    fn form(&self, token: &str) -> String {
        let mut fields = vec![("token", token), ("token_type_hint", "access_token")];
        if self.settings.client_auth == ClientAuth::Post {
            fields.push(("client_id", &self.settings.client_id));
            fields.push(("client_secret", self.settings.client_secret.expose()));
        }
        let mut body = String::new();
        for (name, value) in fields {
            if !body.is_empty() {
                body.push('&');
            }
            form_urlencode(&mut body, name);
            body.push('=');
            form_urlencode(&mut body, value);
        }
        body
    }

    /// RFC 6749 §2.3.1: id and secret are form-encoded (Appendix B) before
    /// they are joined by `:` and base64-encoded for Basic (RFC 7617).
    #[allow(
        clippy::expect_used,
        reason = "base64 and `Basic ` are visible ASCII, always a valid header value"
    )]
    fn basic_credentials(&self) -> HeaderValue {
        let mut pair = String::new();
        form_urlencode(&mut pair, &self.settings.client_id);
        pair.push(':');
        form_urlencode(&mut pair, self.settings.client_secret.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
            .expect("base64 text is a valid header value");
        value.set_sensitive(true);
        value
    }

    /// RFC 7662 §2.2: `active` is a required boolean; only `true` accepts.
    fn interpret(&self, body: &[u8]) -> Result<Introspected, CallProblem> {
        let claims = match serde_json::from_slice(body).map_err(CallProblem::NotJson)? {
            Value::Object(claims) => claims,
            _ => return Err(CallProblem::NotObject),
        };
        match claims.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Ok(Introspected::Inactive),
            _ => return Err(CallProblem::ActiveNotBoolean),
        }
        if !is_access_token(&claims) {
            return Ok(Introspected::Inactive);
        }
        if let Some(audience) = &self.settings.audience {
            if !super::audience_contains(claims.get("aud"), audience) {
                return Ok(Introspected::Inactive);
            }
        }
        // RFC 7662 §2.2: `iss` is optional; one that is there names who
        // issued the token, and a token of another issuer is not this
        // auth server's, as for its JWTs.
        if let Some(issuer) = &self.settings.issuer {
            if claims
                .get("iss")
                .is_some_and(|iss| iss.as_str() != Some(issuer))
            {
                return Ok(Introspected::Inactive);
            }
        }
        // `exp` is what bounds the cache entry: a value we cannot read
        // would make the token look eternal. Likewise `nbf`, unread, would
        // make it valid at once.
        if claims.get("exp").is_some_and(|exp| exp.as_u64().is_none()) {
            return Err(CallProblem::BadExpiry);
        }
        if claims.get("nbf").is_some_and(|nbf| nbf.as_u64().is_none()) {
            return Err(CallProblem::BadNotBefore);
        }
        match Principal::from_claims(Arc::clone(&self.auth_server), claims) {
            Ok(principal) => Ok(Introspected::Active(Arc::new(principal))),
            // RFC 6749 §3.3: a scope that is not space-separated scope
            // tokens cannot be read safely; the token is refused like an
            // inactive one (and that answer cached like one).
            Err(problem) => {
                tracing::warn!(auth_server = %self.auth_server, cause = %problem, "introspection answer refused");
                Ok(Introspected::Inactive)
            }
        }
    }
}

/// Whether an active answer is about an access token. A server may answer
/// "active" about any token it issued — a refresh token to the client it
/// was issued to, an ID token — and presented as a bearer token those
/// grant nothing. Each server says it its own way: `token_type`
/// (`refresh_token`, as the local authorization server answers), Ory
/// Hydra's `token_use` (`access_token`), Keycloak's `typ` (`Bearer`, else
/// `Refresh`, `ID`, `Offline`); a field that is present must say "access
/// token".
fn is_access_token(claims: &Map<String, Value>) -> bool {
    let says = |name: &str, expected: &str| match claims.get(name) {
        None => true,
        Some(value) => value
            .as_str()
            .is_some_and(|text| text.eq_ignore_ascii_case(expected)),
    };
    let refresh = claims
        .get("token_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("refresh_token"));
    !refresh && says("token_use", "access_token") && says("typ", "Bearer")
}

/// Appends `value` encoded as `application/x-www-form-urlencoded`
/// (RFC 6749 Appendix B, WHATWG URL §5.2): `*-._` and ASCII alphanumerics
/// stay, space becomes `+`, every other byte of the UTF-8 text is `%XX`.
fn form_urlencode(out: &mut String, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &str) -> String {
        let mut out = String::new();
        form_urlencode(&mut out, value);
        out
    }

    fn introspector(client_auth: ClientAuth, id: &str, secret: &str) -> Introspector {
        let endpoint = Url::parse("http://127.0.0.1:9/introspect").expect("static URL");
        let mut settings = IntrospectionSettings::new(endpoint, id, ClientSecret::new(secret));
        settings.client_auth = client_auth;
        Introspector::new(
            "a".into(),
            settings,
            reqwest::Client::new(),
            Arc::new(IntrospectionCache::new(10)),
        )
    }

    #[test]
    fn form_encoding_follows_appendix_b() {
        assert_eq!(encoded("abc-._*XYZ09"), "abc-._*XYZ09");
        assert_eq!(encoded("a b+c&d=e%f/g:h"), "a+b%2Bc%26d%3De%25f%2Fg%3Ah");
        assert_eq!(encoded("é~"), "%C3%A9%7E");
    }

    #[test]
    fn basic_credentials_encode_id_and_secret_first() {
        let i = introspector(ClientAuth::Basic, "my client", "p:a&ss");
        let value = i.basic_credentials();
        assert!(value.is_sensitive());
        let expected = base64::engine::general_purpose::STANDARD.encode("my+client:p%3Aa%26ss");
        assert_eq!(value, format!("Basic {expected}").as_str());
    }

    #[test]
    fn post_form_carries_the_client_credentials() {
        let i = introspector(ClientAuth::Post, "c", "s =");
        assert_eq!(
            i.form("t&k"),
            "token=t%26k&token_type_hint=access_token&client_id=c&client_secret=s+%3D"
        );
        let i = introspector(ClientAuth::Basic, "c", "s");
        assert_eq!(i.form("tok"), "token=tok&token_type_hint=access_token");
    }

    #[test]
    fn only_boolean_true_accepts() {
        let i = introspector(ClientAuth::Basic, "c", "s");
        assert!(matches!(
            i.interpret(br#"{"active":true,"scope":"view"}"#),
            Ok(Introspected::Active(_))
        ));
        assert!(matches!(
            i.interpret(br#"{"active":false}"#),
            Ok(Introspected::Inactive)
        ));
        assert!(matches!(
            i.interpret(br#"{"active":true,"token_type":"refresh_token"}"#),
            Ok(Introspected::Inactive)
        ));
        assert!(matches!(
            i.interpret(br#"{"active":true,"scope":"evil\u2003orders:read"}"#),
            Ok(Introspected::Inactive)
        ));
        for garbage in [
            &br#"{"active":"true"}"#[..],
            br#"{"active":1}"#,
            br#"{}"#,
            br#"[{"active":true}]"#,
            b"active=true",
            br#"{"active":true,"exp":"1700000000"}"#,
            br#"{"active":true,"exp":-1}"#,
        ] {
            assert!(i.interpret(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn only_access_tokens_are_active() {
        let i = introspector(ClientAuth::Basic, "c", "s");
        for other in [
            r#"{"active":true,"token_type":"refresh_token"}"#,
            r#"{"active":true,"token_use":"refresh_token"}"#,
            r#"{"active":true,"token_use":7}"#,
            r#"{"active":true,"typ":"Refresh"}"#,
            r#"{"active":true,"typ":"ID"}"#,
            r#"{"active":true,"typ":"Offline"}"#,
            r#"{"active":true,"typ":null}"#,
            r#"{"active":true,"token_type":"Bearer","typ":"ID"}"#,
        ] {
            let answer = i.interpret(other.as_bytes());
            assert!(matches!(answer, Ok(Introspected::Inactive)), "{other}");
        }
        for access in [
            r#"{"active":true,"token_type":"Bearer"}"#,
            r#"{"active":true,"token_use":"access_token"}"#,
            r#"{"active":true,"typ":"Bearer"}"#,
            r#"{"active":true,"typ":"bearer","token_use":"Access_Token"}"#,
        ] {
            let answer = i.interpret(access.as_bytes());
            assert!(matches!(answer, Ok(Introspected::Active(_))), "{access}");
        }
    }

    #[test]
    fn a_configured_audience_must_be_named_by_aud() {
        let mut i = introspector(ClientAuth::Basic, "c", "s");
        i.settings.audience = Some("travels".into());
        for named in [
            r#"{"active":true,"aud":"travels"}"#,
            r#"{"active":true,"aud":["other","travels"]}"#,
        ] {
            let answer = i.interpret(named.as_bytes());
            assert!(matches!(answer, Ok(Introspected::Active(_))), "{named}");
        }
        for not_named in [
            r#"{"active":true}"#,
            r#"{"active":true,"aud":"other"}"#,
            r#"{"active":true,"aud":["other"]}"#,
            r#"{"active":true,"aud":"Travels"}"#,
            r#"{"active":true,"aud":"travels other"}"#,
            r#"{"active":true,"aud":[["travels"]]}"#,
        ] {
            let answer = i.interpret(not_named.as_bytes());
            assert!(matches!(answer, Ok(Introspected::Inactive)), "{not_named}");
        }
    }

    #[test]
    fn secret_never_shows_in_debug() {
        let i = introspector(ClientAuth::Basic, "c", "hunter2");
        let shown = format!("{i:?} {}", i.settings.client_secret);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("****"));
    }
}
