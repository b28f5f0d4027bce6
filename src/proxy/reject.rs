//! The one place that decides what a client is told when a request is not
//! forwarded: status, `WWW-Authenticate` (RFC 6750 §3) and a JSON body.
//! One exhaustive match; causes go to logs and metric labels, never a token.

use http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Response, StatusCode};

use super::grpc_timeout::Malformed;
use super::{full, Body, BoxError};
use crate::auth::TokenProblem;
use crate::config::snapshot::CredentialType;
use crate::policy::{Denied, InsufficientScope, PathProblem, RouteProblem};
use crate::throttle::Fields;

/// Why a client's request body could not be read: the client's fault,
/// never the upstream's. The server's body readers fail with it, so that
/// whoever reads a body can tell the client apart from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum BodyFault {
    #[error("the request body's framing is broken")]
    Malformed,
    #[error("the client ended the request body early")]
    Truncated,
    #[error("the client went silent while its request body was due")]
    Stalled,
}

impl BodyFault {
    /// What an error of a client's request body says. The body type
    /// erases its errors; those of the server's readers are `BodyFault`s,
    /// and any other error of a client's body is still the client's.
    pub fn of(error: &BoxError) -> BodyFault {
        error
            .downcast_ref::<BodyFault>()
            .copied()
            .unwrap_or(BodyFault::Malformed)
    }

    /// Label of `client_errors_total{cause}`.
    pub fn cause(self) -> &'static str {
        match self {
            BodyFault::Malformed => "body_malformed",
            BodyFault::Truncated => "body_truncated",
            BodyFault::Stalled => "body_timeout",
        }
    }
}

/// Why no usable answer came from the upstream (502): what the client is
/// told, naming no address, certificate or credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadGateway {
    /// No connection could be made (TCP, TLS, or no usable CA to verify
    /// it with).
    #[error("the upstream cannot be reached")]
    Unreachable,
    /// The connection ended, or the stream was reset, before an answer.
    #[error("the upstream ended the exchange without an answer")]
    NoAnswer,
    /// The answer cannot be read as HTTP, or could be read two ways.
    #[error("the upstream's answer is not valid HTTP")]
    InvalidAnswer,
    /// The upstream answered 401/407 to the gateway's own credentials.
    #[error("the upstream refused the gateway's credentials")]
    CredentialsRefused,
    /// A WebSocket handshake the upstream did not take up.
    #[error("the upstream did not switch to the WebSocket protocol")]
    NoSwitch,
    /// The gateway could not check a credential (its check failed).
    #[error("the credential could not be checked")]
    CheckFailed,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("bad request: {0}")]
    BadPath(PathProblem),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("{0}")]
    NoRoute(RouteProblem),
    #[error("request target longer than the limit")]
    UriTooLong,
    #[error("request head larger than the limit")]
    HeadersTooLarge,
    #[error("request head not received in time")]
    RequestTimeout,
    #[error("body larger than the limit")]
    PayloadTooLarge,
    #[error("request body: {0}")]
    ClientBody(BodyFault),
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// `Expect` named an expectation other than `100-continue` (RFC 9110
    /// §10.1.1).
    #[error("expectation other than 100-continue")]
    ExpectationFailed,
    #[error("no bearer token")]
    MissingToken { realm: String },
    #[error("invalid request: {why}")]
    InvalidRequest { why: &'static str },
    #[error("invalid token: {problem}")]
    InvalidToken { problem: TokenProblem },
    #[error("insufficient scope")]
    InsufficientScope { would_grant: Vec<String> },
    #[error("auth server {auth_server} unavailable: {cause}")]
    AuthUnavailable { auth_server: String, cause: String },
    // Applications and the identification types other than a bearer token.
    #[error("no credential of an accepted type")]
    MissingCredentials {
        realm: String,
        types: Vec<CredentialType>,
    },
    #[error("credentials of two kinds")]
    TwoCredentials,
    #[error("invalid {} credential", kind.label())]
    BadCredentials { kind: CredentialType, realm: String },
    #[error("too many failed Basic attempts")]
    TooManyAttempts { retry_after: u64 },
    /// The Basic password could not be checked: every worker busy for
    /// longer than the wait allows (`authz_server::workers`).
    #[error("every credential check worker is busy")]
    ChecksBusy,
    /// The request bodies its HTTP/2 connection holds whole fill the
    /// connection's room (`BodyRoom`), or those every connection holds
    /// fill the gateway's (`State::held_bodies`).
    #[error("the request bodies held whole fill their room")]
    BodyRoomFull,
    #[error("{0}")]
    Denied(Denied),
    #[error("the client address is refused by ip_filter")]
    IpFiltered,
    #[error("a WebSocket handshake from an origin the API does not allow")]
    CrossOriginTunnel,
    #[error("bad gateway: {0}")]
    BadGateway(BadGateway),
    #[error("upstream did not answer in time")]
    GatewayTimeout,
    /// A gRPC call's `grpc-timeout` is not a timeout (`proxy::grpc_timeout`).
    #[error("malformed grpc-timeout: {0}")]
    MalformedGrpcTimeout(Malformed),
    /// The deadline a gRPC client stated (`grpc-timeout`) passed before
    /// the upstream answered, or before the call could be sent.
    #[error("the call's deadline (grpc-timeout) passed before the upstream answered")]
    DeadlineExceeded,
    #[error("throttled by policy {policies:?}")]
    Throttled {
        policies: Vec<String>,
        fields: Option<Box<Fields>>,
    },
    #[error("throttle store unavailable")]
    ThrottleUnavailable,
    #[error("the listener has limits.max_tunnels tunnels open")]
    TooManyTunnels,
    /// The API's upstream has `upstream.max_requests` requests in flight.
    #[error("the upstream has its {max} requests in flight (upstream.max_requests)")]
    UpstreamBusy { max: usize },
    /// An HTTP/2 request beyond its connection's first when the port has
    /// `limits.max_streams` of them in flight.
    #[error("the listener has limits.max_streams HTTP/2 requests in flight")]
    TooManyStreams,
}

impl Rejection {
    /// Label for `auth_decisions_total{result}` when this is an auth outcome.
    pub fn auth_result(&self) -> Option<&'static str> {
        match self {
            Rejection::MissingToken { .. } => Some("missing_token"),
            Rejection::InvalidRequest { .. } => Some("invalid_request"),
            Rejection::InvalidToken { .. } => Some("invalid_token"),
            Rejection::InsufficientScope { .. } => Some("insufficient_scope"),
            Rejection::AuthUnavailable { .. } => Some("auth_unavailable"),
            Rejection::MissingCredentials { .. } => Some("missing_credentials"),
            Rejection::TwoCredentials => Some("invalid_request"),
            Rejection::BadCredentials { .. } => Some("invalid_credentials"),
            Rejection::TooManyAttempts { .. } => Some("locked"),
            Rejection::ChecksBusy => Some("busy"),
            Rejection::Denied(denied) => Some(denied.label()),
            Rejection::IpFiltered => Some("ip_filtered"),
            Rejection::CrossOriginTunnel => Some("origin_refused"),
            Rejection::BadPath(_)
            | Rejection::BadRequest(_)
            | Rejection::NoRoute(_)
            | Rejection::UriTooLong
            | Rejection::HeadersTooLarge
            | Rejection::RequestTimeout
            | Rejection::PayloadTooLarge
            | Rejection::ClientBody(_)
            | Rejection::NotImplemented(_)
            | Rejection::ExpectationFailed
            | Rejection::BadGateway(_)
            | Rejection::GatewayTimeout
            | Rejection::MalformedGrpcTimeout(_)
            | Rejection::DeadlineExceeded
            | Rejection::Throttled { .. }
            | Rejection::ThrottleUnavailable
            | Rejection::BodyRoomFull
            | Rejection::TooManyTunnels
            | Rejection::UpstreamBusy { .. }
            | Rejection::TooManyStreams => None,
        }
    }

    /// The gRPC status of a refusal whose HTTP status does not tell it
    /// (see [`grpc_code`]): a passed deadline is DEADLINE_EXCEEDED, not
    /// UNAVAILABLE as a 504 is; a malformed `grpc-timeout` is INTERNAL, as
    /// grpc-go answers it (`proxy::grpc_timeout`), not INVALID_ARGUMENT as
    /// a 400 is.
    fn own_grpc_code(&self) -> Option<u16> {
        match self {
            Rejection::DeadlineExceeded => Some(4), // DEADLINE_EXCEEDED
            Rejection::MalformedGrpcTimeout(_) => Some(13), // INTERNAL
            Rejection::BadPath(_)
            | Rejection::BadRequest(_)
            | Rejection::NoRoute(_)
            | Rejection::UriTooLong
            | Rejection::HeadersTooLarge
            | Rejection::RequestTimeout
            | Rejection::PayloadTooLarge
            | Rejection::ClientBody(_)
            | Rejection::NotImplemented(_)
            | Rejection::ExpectationFailed
            | Rejection::MissingToken { .. }
            | Rejection::InvalidRequest { .. }
            | Rejection::InvalidToken { .. }
            | Rejection::InsufficientScope { .. }
            | Rejection::AuthUnavailable { .. }
            | Rejection::MissingCredentials { .. }
            | Rejection::TwoCredentials
            | Rejection::BadCredentials { .. }
            | Rejection::TooManyAttempts { .. }
            | Rejection::ChecksBusy
            | Rejection::Denied(_)
            | Rejection::IpFiltered
            | Rejection::CrossOriginTunnel
            | Rejection::BadGateway(_)
            | Rejection::GatewayTimeout
            | Rejection::Throttled { .. }
            | Rejection::ThrottleUnavailable
            | Rejection::BodyRoomFull
            | Rejection::TooManyTunnels
            | Rejection::UpstreamBusy { .. }
            | Rejection::TooManyStreams => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, error, description, challenge) = self.told();
        let body = match error {
            Some(error) => serde_json::json!({ "error": error, "error_description": description }),
            None => serde_json::json!({ "error_description": description }),
        };
        let mut response = Response::new(full(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(challenge) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        self.add_fields(headers);
        response
    }

    /// What the client is told: the status, the `error` code, its
    /// `error_description` (never the internal cause, which is logged) and
    /// the `WWW-Authenticate` challenge.
    fn told(&self) -> (StatusCode, Option<&'static str>, String, Option<String>) {
        match self {
            Rejection::BadPath(problem) => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                problem.to_string(),
                None,
            ),
            Rejection::BadRequest(why) => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                (*why).to_owned(),
                None,
            ),
            Rejection::NoRoute(RouteProblem::NoApi | RouteProblem::NoResource { .. }) => (
                StatusCode::NOT_FOUND,
                Some("not_found"),
                "no resource matches this path".to_owned(),
                None,
            ),
            Rejection::NoRoute(RouteProblem::MethodNotAllowed { .. }) => (
                StatusCode::METHOD_NOT_ALLOWED,
                Some("method_not_allowed"),
                "the resource does not allow this method".to_owned(),
                None,
            ),
            Rejection::NoRoute(
                problem @ (RouteProblem::EncodedSlash { .. } | RouteProblem::AboveBasePath { .. }),
            ) => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                problem.to_string(),
                None,
            ),
            Rejection::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                Some("uri_too_long"),
                "request target too long".to_owned(),
                None,
            ),
            Rejection::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                Some("request_header_fields_too_large"),
                "request head too large".to_owned(),
                None,
            ),
            Rejection::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                Some("request_timeout"),
                "the request head did not arrive in time".to_owned(),
                None,
            ),
            Rejection::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("payload_too_large"),
                "request body too large".to_owned(),
                None,
            ),
            Rejection::ClientBody(BodyFault::Stalled) => (
                StatusCode::REQUEST_TIMEOUT,
                Some("request_timeout"),
                "the request body did not arrive in time".to_owned(),
                None,
            ),
            Rejection::ClientBody(fault @ (BodyFault::Malformed | BodyFault::Truncated)) => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                fault.to_string(),
                None,
            ),
            Rejection::NotImplemented(what) => (
                StatusCode::NOT_IMPLEMENTED,
                Some("not_implemented"),
                (*what).to_owned(),
                None,
            ),
            Rejection::ExpectationFailed => (
                StatusCode::EXPECTATION_FAILED,
                Some("expectation_failed"),
                "only the expectation 100-continue is met".to_owned(),
                None,
            ),
            // RFC 6750 §3.1: no error code when the request had no credentials.
            Rejection::MissingToken { realm } => (
                StatusCode::UNAUTHORIZED,
                None,
                "a bearer token is required".to_owned(),
                Some(format!("Bearer realm=\"{}\"", quoted(realm))),
            ),
            // RFC 6750 §3: with an error code, the challenge is exactly
            // the code (and the scopes that would do), as DESIGN lists.
            Rejection::InvalidRequest { why } => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                (*why).to_owned(),
                Some("Bearer error=\"invalid_request\"".to_owned()),
            ),
            Rejection::InvalidToken { problem } => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                describe(*problem).to_owned(),
                Some("Bearer error=\"invalid_token\"".to_owned()),
            ),
            Rejection::InsufficientScope { would_grant } => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "the token does not grant a scope this resource needs".to_owned(),
                Some(insufficient_scope(would_grant)),
            ),
            Rejection::AuthUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "the authorization server cannot be reached".to_owned(),
                None,
            ),
            // Likewise with several accepted types (RFC 6750 §3.1,
            // RFC 7235 §3.1): only the challenges, no error code.
            Rejection::MissingCredentials { .. } => (
                StatusCode::UNAUTHORIZED,
                None,
                "credentials are required".to_owned(),
                None, // one challenge per type, below
            ),
            Rejection::TwoCredentials => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                "credentials of more than one kind".to_owned(),
                None,
            ),
            // The same answer for an unknown user or key and a wrong password.
            Rejection::BadCredentials { kind, realm } => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_client"),
                "the credentials are not valid".to_owned(),
                challenge_of(*kind, realm),
            ),
            Rejection::TooManyAttempts { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                Some("too_many_attempts"),
                "too many failed attempts; retry later".to_owned(),
                None,
            ),
            Rejection::ChecksBusy => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "the credentials cannot be checked now; retry later".to_owned(),
                None,
            ),
            Rejection::BodyRoomFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "the gateway holds as many request bodies as it may; retry later".to_owned(),
                None,
            ),
            Rejection::Denied(Denied::Scope(InsufficientScope { would_grant })) => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "the token does not grant a scope this resource needs".to_owned(),
                Some(insufficient_scope(would_grant)),
            ),
            Rejection::Denied(
                Denied::NotRegistered
                | Denied::NotSubscribed(_)
                | Denied::OutsideIpRanges(_)
                | Denied::NoApiScope(_),
            ) => (
                StatusCode::FORBIDDEN,
                Some("access_denied"),
                "the caller may not call this resource".to_owned(),
                None,
            ),
            Rejection::IpFiltered => (
                StatusCode::FORBIDDEN,
                Some("access_denied"),
                "the client address may not call this API".to_owned(),
                None,
            ),
            Rejection::CrossOriginTunnel => (
                StatusCode::FORBIDDEN,
                Some("access_denied"),
                "a page of this origin may not open a WebSocket to this API".to_owned(),
                None,
            ),
            Rejection::BadGateway(why) => (
                StatusCode::BAD_GATEWAY,
                Some("bad_gateway"),
                why.to_string(),
                None,
            ),
            Rejection::GatewayTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                Some("gateway_timeout"),
                "the upstream did not answer in time".to_owned(),
                None,
            ),
            Rejection::MalformedGrpcTimeout(_) => (
                StatusCode::BAD_REQUEST,
                Some("invalid_request"),
                self.to_string(),
                None,
            ),
            Rejection::DeadlineExceeded => (
                StatusCode::GATEWAY_TIMEOUT,
                Some("gateway_timeout"),
                self.to_string(),
                None,
            ),
            // RFC 6585 §4; the RateLimit fields say which limit and when.
            Rejection::Throttled { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                Some("too_many_requests"),
                "a rate limit of this API is reached".to_owned(),
                None,
            ),
            Rejection::ThrottleUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "the rate limit cannot be checked".to_owned(),
                None,
            ),
            Rejection::TooManyTunnels => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "too many WebSocket connections are open".to_owned(),
                None,
            ),
            Rejection::TooManyStreams => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "too many requests are in flight; retry later".to_owned(),
                None,
            ),
            Rejection::UpstreamBusy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("temporarily_unavailable"),
                "the upstream has as many requests as it may take; retry later".to_owned(),
                None,
            ),
        }
    }

    /// The fields a refusal carries besides its challenge: `Retry-After`,
    /// the throttle's RateLimit fields, `Allow`.
    fn add_fields(&self, headers: &mut http::HeaderMap) {
        match self {
            Rejection::AuthUnavailable { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Rejection::Throttled { fields, .. } => {
                if let Some(fields) = fields {
                    Fields::clone(fields).apply(headers);
                }
            }
            Rejection::ThrottleUnavailable
            | Rejection::TooManyTunnels
            | Rejection::TooManyStreams
            | Rejection::UpstreamBusy { .. }
            | Rejection::ChecksBusy
            | Rejection::BodyRoomFull => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            Rejection::TooManyAttempts { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Rejection::MissingCredentials { realm, types } => {
                for value in types
                    .iter()
                    .filter_map(|kind| challenge_of(*kind, realm))
                    .filter_map(|c| HeaderValue::from_str(&c).ok())
                {
                    headers.append(WWW_AUTHENTICATE, value);
                }
            }
            Rejection::NoRoute(RouteProblem::MethodNotAllowed { allow, .. }) => {
                let list = allow
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                if let Ok(value) = HeaderValue::from_str(&list) {
                    headers.insert(ALLOW, value);
                }
            }
            Rejection::BadPath(_)
            | Rejection::BadRequest(_)
            | Rejection::NoRoute(
                RouteProblem::NoApi
                | RouteProblem::NoResource { .. }
                | RouteProblem::EncodedSlash { .. }
                | RouteProblem::AboveBasePath { .. },
            )
            | Rejection::UriTooLong
            | Rejection::HeadersTooLarge
            | Rejection::RequestTimeout
            | Rejection::PayloadTooLarge
            | Rejection::ClientBody(_)
            | Rejection::NotImplemented(_)
            | Rejection::ExpectationFailed
            | Rejection::MissingToken { .. }
            | Rejection::InvalidRequest { .. }
            | Rejection::InvalidToken { .. }
            | Rejection::InsufficientScope { .. }
            | Rejection::TwoCredentials
            | Rejection::BadCredentials { .. }
            | Rejection::Denied(_)
            | Rejection::IpFiltered
            | Rejection::CrossOriginTunnel
            | Rejection::BadGateway(_)
            | Rejection::GatewayTimeout
            | Rejection::MalformedGrpcTimeout(_)
            | Rejection::DeadlineExceeded => {}
        }
    }
}

impl Rejection {
    /// The refusal as gRPC answers it (APIs with `grpc: true`): HTTP 200,
    /// `content-type: application/grpc`, and the status in `grpc-status`
    /// and `grpc-message` (percent-encoded) of a trailers-only response —
    /// one HEADERS frame that ends the stream. The HTTP answer's other
    /// fields (challenge, `Retry-After`, RateLimit, `Allow`) are kept.
    pub fn into_grpc_response(self) -> Response<Body> {
        let message = self.grpc_message();
        let own_code = self.own_grpc_code();
        let http = self.into_response();
        let code = own_code.unwrap_or_else(|| grpc_code(http.status()));
        let (mut parts, _) = http.into_parts();
        parts.status = StatusCode::OK;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        parts.headers.insert("grpc-status", HeaderValue::from(code));
        let encoded = percent_encoding::utf8_percent_encode(&message, GRPC_MESSAGE).to_string();
        if let Ok(value) = HeaderValue::from_str(&encoded) {
            parts.headers.insert("grpc-message", value);
        }
        Response::from_parts(parts, super::empty())
    }

    /// What `grpc-message` says: the `error_description` of the JSON
    /// answer, never the internal cause (an auth server's address, an
    /// application's name), which is logged.
    fn grpc_message(&self) -> String {
        self.told().2
    }
}

/// Bytes of `grpc-message` sent percent-encoded (gRPC over HTTP/2: all but
/// printable ASCII, and `%`).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// The gRPC status code of an HTTP refusal (as gRPC maps HTTP statuses,
/// with the gateway's own cases made precise).
pub fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 | 411 | 414 | 431 => 3, // INVALID_ARGUMENT
        401 => 16,                  // UNAUTHENTICATED
        403 => 7,                   // PERMISSION_DENIED
        404 | 405 => 12,            // UNIMPLEMENTED
        408 => 4,                   // DEADLINE_EXCEEDED
        413 | 429 => 8,             // RESOURCE_EXHAUSTED
        501 => 12,                  // UNIMPLEMENTED
        502..=504 => 14,            // UNAVAILABLE
        _ => 2,                     // UNKNOWN
    }
}

/// What the client is told about a refused token: enough to act on, never
/// which check an attacker should work around next.
fn describe(problem: TokenProblem) -> &'static str {
    match problem {
        TokenProblem::Expired => "the token has expired",
        TokenProblem::NotYetValid => "the token is not yet valid",
        TokenProblem::TooLong => "the token is too long",
        TokenProblem::Malformed => "the token is malformed",
        TokenProblem::Inactive => "the token is not active",
        TokenProblem::BadProperty => "a token property cannot be passed on",
        TokenProblem::BadSignature
        | TokenProblem::UnknownKey
        | TokenProblem::DisallowedAlgorithm
        | TokenProblem::CriticalHeader
        | TokenProblem::MissingExpiry
        | TokenProblem::WrongIssuer
        | TokenProblem::WrongAudience
        | TokenProblem::WrongType
        | TokenProblem::BadScope => "the token is not valid",
    }
}

/// The challenge of one credential type: RFC 6750 §3 for tokens, RFC 7617
/// for Basic, and for API keys the header to send one in. A client
/// certificate is asked for by TLS, not by a challenge.
fn challenge_of(kind: CredentialType, realm: &str) -> Option<String> {
    let realm = quoted(realm);
    match kind {
        CredentialType::OAuth2 => Some(format!("Bearer realm=\"{realm}\"")),
        CredentialType::Basic => Some(format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")),
        CredentialType::ApiKey => Some(format!("APIKey realm=\"{realm}\"")),
        CredentialType::Certificate => None,
    }
}

/// The challenge of a 403 `insufficient_scope` (RFC 6750 §3): the scopes
/// that would do, when there are any — `scope` is one or more scope
/// tokens, so none leaves the attribute out.
fn insufficient_scope(would_grant: &[String]) -> String {
    if would_grant.is_empty() {
        return "Bearer error=\"insufficient_scope\"".to_owned();
    }
    format!(
        "Bearer error=\"insufficient_scope\", scope=\"{}\"",
        quoted(&would_grant.join(" "))
    )
}

/// RFC 9110 §5.6.4 quoted-string: escape `"` and `\`.
fn quoted(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grpc_refusal_is_a_trailers_only_response() {
        let response = Rejection::BadRequest("caf\u{e9} 100%\n").into_grpc_response();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers["grpc-status"], "3");
        assert_eq!(headers["grpc-message"], "caf%C3%A9 100%25%0A");
        let scope = Rejection::InsufficientScope {
            would_grant: vec!["book".into()],
        }
        .into_grpc_response();
        assert_eq!(scope.headers()["grpc-status"], "7");
        assert!(scope.headers().contains_key(WWW_AUTHENTICATE));
        assert_eq!(grpc_code(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_code(StatusCode::TOO_MANY_REQUESTS), 8);
        assert_eq!(grpc_code(StatusCode::GATEWAY_TIMEOUT), 14);
        assert_eq!(grpc_code(StatusCode::IM_A_TEAPOT), 2);
    }

    #[test]
    fn a_grpc_deadline_is_deadline_exceeded_and_a_malformed_one_internal() {
        let passed = Rejection::DeadlineExceeded.into_grpc_response();
        assert_eq!(passed.headers()["grpc-status"], "4");
        assert_eq!(
            passed.headers()["grpc-message"],
            "the call's deadline (grpc-timeout) passed before the upstream answered"
        );
        // Not UNAVAILABLE, as the upstream's own timeout (504) is.
        let timeout = Rejection::GatewayTimeout.into_grpc_response();
        assert_eq!(timeout.headers()["grpc-status"], "14");
        let malformed = Rejection::MalformedGrpcTimeout(Malformed::TooLong).into_grpc_response();
        assert_eq!(malformed.headers()["grpc-status"], "13");
        assert_eq!(
            malformed.headers()["grpc-message"],
            "malformed grpc-timeout: more than 8 digits"
        );
        assert_eq!(
            Rejection::DeadlineExceeded.into_response().status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }

    /// RFC 6750 §3: `scope` names one or more scopes; a resource no scope
    /// of the token's auth server would grant gets no `scope=""`.
    #[test]
    fn an_insufficient_scope_challenge_names_scopes_only_when_some_would_do() {
        let challenge = |would_grant: Vec<String>| {
            Rejection::InsufficientScope { would_grant }
                .into_response()
                .headers()[WWW_AUTHENTICATE]
                .clone()
        };
        assert_eq!(
            challenge(vec!["view".into(), "book".into()]),
            r#"Bearer error="insufficient_scope", scope="view book""#
        );
        assert_eq!(
            challenge(Vec::new()),
            r#"Bearer error="insufficient_scope""#
        );
    }

    #[test]
    fn busy_credential_checks_are_a_503_to_retry_soon() {
        let response = Rejection::ChecksBusy.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert!(!response.headers().contains_key(WWW_AUTHENTICATE));
        assert_eq!(Rejection::ChecksBusy.auth_result(), Some("busy"));
        let grpc = Rejection::ChecksBusy.into_grpc_response();
        assert_eq!(grpc.headers()["grpc-status"], "14"); // UNAVAILABLE
    }

    #[test]
    fn a_client_body_error_is_the_clients_whatever_its_type() {
        let stalled: BoxError = Box::new(BodyFault::Stalled);
        assert_eq!(BodyFault::of(&stalled), BodyFault::Stalled);
        let foreign: BoxError = "reset by the client".into();
        assert_eq!(BodyFault::of(&foreign), BodyFault::Malformed);
        let status = |fault| Rejection::ClientBody(fault).into_response().status();
        assert_eq!(status(BodyFault::Stalled), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(status(BodyFault::Malformed), StatusCode::BAD_REQUEST);
        assert_eq!(status(BodyFault::Truncated), StatusCode::BAD_REQUEST);
        assert_eq!(
            Rejection::NotImplemented("gzip").into_response().status(),
            StatusCode::NOT_IMPLEMENTED
        );
    }
}
