//! Everything the authorization server refuses, and the one exhaustive
//! match that turns it into a status, headers and an RFC 6749 §5.2 JSON
//! body. Descriptions are fixed strings: nothing a client sent (least of
//! all a token or secret) is echoed back.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::store::StoreError;
use super::tokens::TokenError;

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    /// Client authentication failed; `basic` = it was tried with HTTP Basic.
    #[error("invalid_client (basic: {basic})")]
    InvalidClient { basic: bool },
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("unauthorized_client: {0}")]
    UnauthorizedClient(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error("invalid_scope: {0}")]
    InvalidScope(&'static str),
    /// Too many failed password attempts for the user or the client.
    #[error("too many failed attempts; retry after {retry_after}s")]
    TooManyAttempts { retry_after: u64 },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("no such endpoint")]
    NotFound,
    /// An admin endpoint, but no admin credentials are configured.
    #[error("admin endpoints are off: no admin credentials configured")]
    AdminDisabled,
    #[error("admin credentials missing or wrong")]
    AdminUnauthorized,
    #[error("token store: {0}")]
    Store(#[from] StoreError),
    #[error("token signing: {0}")]
    Signing(#[from] TokenError),
    #[error("worker failed")]
    Worker,
}

impl OAuthError {
    pub fn into_response(self) -> Response<Bytes> {
        let (status, code, description) = match &self {
            OAuthError::InvalidRequest(d) => (StatusCode::BAD_REQUEST, "invalid_request", *d),
            OAuthError::InvalidClient { .. } => (
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            ),
            OAuthError::InvalidGrant(d) => (StatusCode::BAD_REQUEST, "invalid_grant", *d),
            OAuthError::UnauthorizedClient(d) => {
                (StatusCode::BAD_REQUEST, "unauthorized_client", *d)
            }
            OAuthError::UnsupportedGrantType => (
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type is not supported",
            ),
            OAuthError::InvalidScope(d) => (StatusCode::BAD_REQUEST, "invalid_scope", *d),
            // RFC 6585 §4; the error code stays one of RFC 6749 §5.2 so
            // clients that only read the body still see a refused grant.
            OAuthError::TooManyAttempts { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_grant",
                "too many failed attempts; retry later",
            ),
            OAuthError::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                "request body is too large",
            ),
            OAuthError::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "method not allowed",
            ),
            OAuthError::NotFound => (StatusCode::NOT_FOUND, "invalid_request", "no such endpoint"),
            OAuthError::AdminDisabled => (
                StatusCode::FORBIDDEN,
                "access_denied",
                "no admin credentials are configured",
            ),
            OAuthError::AdminUnauthorized => (
                StatusCode::UNAUTHORIZED,
                "access_denied",
                "admin credentials required",
            ),
            OAuthError::Store(_) | OAuthError::Signing(_) | OAuthError::Worker => {
                tracing::error!(error = %self, "authorization server failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the authorization server failed; try again",
                )
            }
        };
        let body = serde_json::json!({ "error": code, "error_description": description });
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        match &self {
            // RFC 6749 §5.2: a failed Basic authentication gets a 401 with
            // the challenge for the scheme the client used.
            OAuthError::InvalidClient { basic: true } | OAuthError::AdminUnauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Basic realm="microgateway""#),
                );
            }
            OAuthError::TooManyAttempts { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            OAuthError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            OAuthError::InvalidRequest(_)
            | OAuthError::InvalidClient { basic: false }
            | OAuthError::InvalidGrant(_)
            | OAuthError::UnauthorizedClient(_)
            | OAuthError::UnsupportedGrantType
            | OAuthError::InvalidScope(_)
            | OAuthError::BodyTooLarge { .. }
            | OAuthError::NotFound
            | OAuthError::AdminDisabled
            | OAuthError::Store(_)
            | OAuthError::Signing(_)
            | OAuthError::Worker => {}
        }
        response
    }
}

/// A JSON response that no cache keeps (RFC 6749 §5.1: token responses,
/// and everything else that may carry token data).
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Bytes> {
    let bytes = serde_json::to_vec(body).expect("a serde_json::Value always serialises");
    let mut response = Response::new(Bytes::from(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
