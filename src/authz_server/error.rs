//! Everything the authorization server refuses, and the one exhaustive
//! match that turns it into a status, an RFC 6749 error code and a
//! description: as headers and a §5.2 JSON body at the token, introspection
//! and revocation endpoints; as the parameters of an error redirect
//! (§4.1.2.1, §4.2.2.1) or the status and message of an error page at the
//! authorization endpoint. Descriptions are fixed strings: nothing a client
//! sent (least of all a token or secret) is echoed back.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::form::{FormError, MAX_FORM_BYTES};
use super::store::StoreError;
use super::tokens::TokenError;
use super::workers::JobFailed;

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
    /// The resource owner denied the request (RFC 6749 §4.1.2.1).
    #[error("access_denied")]
    AccessDenied,
    /// `response_type` is neither `code` nor `token` (§4.1.2.1).
    #[error("unsupported_response_type")]
    UnsupportedResponseType,
    /// Too many failed password attempts for the user or the client.
    #[error("too many failed attempts; retry after {retry_after}s")]
    TooManyAttempts { retry_after: u64 },
    /// Too many failed client authentications from the caller's address.
    #[error("too many failed client authentications; retry after {retry_after}s")]
    ClientLocked { retry_after: u64 },
    /// Too many approval-page sessions started from the caller's address.
    #[error("too many sign-in sessions started from this address; retry after {retry_after}s")]
    TooManySessions { retry_after: u64 },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("no such endpoint")]
    NotFound,
    /// The approval page asked for by a script or into a frame, not by the
    /// browser's own navigation (Fetch Metadata).
    #[error("the authorization endpoint was not navigated to")]
    NotNavigated,
    /// A form posted from another site, with no session of this one: no
    /// session is started for it (its cookie would replace, and so sign
    /// out, the resource owner's own).
    #[error("an approval form posted from another site")]
    CrossSiteForm,
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
    /// Every worker stayed busy for longer than a request waits.
    #[error("every worker is busy")]
    Busy,
}

impl From<JobFailed> for OAuthError {
    fn from(failed: JobFailed) -> OAuthError {
        match failed {
            JobFailed::Panicked => OAuthError::Worker,
            JobFailed::Busy => OAuthError::Busy,
        }
    }
}

impl From<FormError> for OAuthError {
    fn from(error: FormError) -> OAuthError {
        match error {
            FormError::Duplicate => {
                OAuthError::InvalidRequest("a parameter is sent more than once")
            }
            FormError::NotUtf8 => OAuthError::InvalidRequest("a parameter is not valid UTF-8"),
            FormError::TooManyParams => OAuthError::InvalidRequest("too many parameters"),
            FormError::TooLarge => OAuthError::BodyTooLarge {
                limit: MAX_FORM_BYTES,
            },
        }
    }
}

impl OAuthError {
    /// Status, RFC 6749 error code and description: the one place that
    /// decides what a client is told.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
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
            OAuthError::AccessDenied => (
                StatusCode::FORBIDDEN,
                "access_denied",
                "the resource owner denied the request",
            ),
            OAuthError::UnsupportedResponseType => (
                StatusCode::BAD_REQUEST,
                "unsupported_response_type",
                "response_type must be code or token",
            ),
            // RFC 6585 §4; the error code stays one of RFC 6749 §5.2 so
            // clients that only read the body still see a refused grant.
            OAuthError::TooManyAttempts { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_grant",
                "too many failed attempts; retry later",
            ),
            // As above: the §5.2 code of a refused client authentication.
            OAuthError::ClientLocked { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_client",
                "too many failed client authentications; retry later",
            ),
            OAuthError::TooManySessions { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                "too many sign-in sessions started from this address; retry later",
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
            OAuthError::NotNavigated => (
                StatusCode::FORBIDDEN,
                "invalid_request",
                "the authorization page opens only as a page of its own",
            ),
            OAuthError::CrossSiteForm => (
                StatusCode::FORBIDDEN,
                "invalid_request",
                "the form was sent from another site; start again from the application",
            ),
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
            // RFC 6749 §4.1.2.1's code for a server that cannot answer now.
            OAuthError::Store(StoreError::Unavailable(reason)) => {
                tracing::warn!(%reason, "token store unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the token store is unavailable; try again",
                )
            }
            OAuthError::Busy => {
                tracing::warn!("authorization server busy: no worker within the wait");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the authorization server is busy; try again",
                )
            }
            // The store is reached, but the keys are not re-read from it
            // yet (at most a second): as for the store itself.
            OAuthError::Signing(TokenError::KeysPending(_)) => {
                tracing::warn!("signing keys pending: no JWT is issued");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the signing keys are not available yet; try again",
                )
            }
            OAuthError::Store(_) | OAuthError::Signing(_) | OAuthError::Worker => {
                tracing::error!(error = %self, "authorization server failure");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the authorization server failed; try again",
                )
            }
        }
    }

    pub fn into_response(self) -> Response<Bytes> {
        let (status, code, description) = self.parts();
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
            OAuthError::TooManyAttempts { retry_after }
            | OAuthError::ClientLocked { retry_after }
            | OAuthError::TooManySessions { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            OAuthError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            OAuthError::Store(StoreError::Unavailable(_))
            | OAuthError::Signing(TokenError::KeysPending(_))
            | OAuthError::Busy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            OAuthError::InvalidRequest(_)
            | OAuthError::InvalidClient { basic: false }
            | OAuthError::InvalidGrant(_)
            | OAuthError::UnauthorizedClient(_)
            | OAuthError::UnsupportedGrantType
            | OAuthError::InvalidScope(_)
            | OAuthError::AccessDenied
            | OAuthError::UnsupportedResponseType
            | OAuthError::BodyTooLarge { .. }
            | OAuthError::NotFound
            | OAuthError::NotNavigated
            | OAuthError::CrossSiteForm
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
    let mut response = Response::new(Bytes::from(body.to_string()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz_server::keys::KeysPending;

    #[test]
    fn a_locked_address_is_a_429_to_retry_when_its_window_ends() {
        let locked = OAuthError::ClientLocked { retry_after: 42 }.into_response();
        assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(locked.headers()[header::RETRY_AFTER], "42");
        assert!(!locked.headers().contains_key(header::WWW_AUTHENTICATE));
        let body: serde_json::Value = serde_json::from_slice(locked.body()).expect("json");
        assert_eq!(body["error"], "invalid_client");
    }

    #[test]
    fn no_worker_in_time_or_no_signing_key_yet_is_a_503_to_retry_soon_and_a_panic_a_500() {
        let busy = OAuthError::from(JobFailed::Busy).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        let body: serde_json::Value = serde_json::from_slice(busy.body()).expect("json");
        assert_eq!(body["error"], "temporarily_unavailable");
        let pending = OAuthError::Signing(TokenError::KeysPending(KeysPending)).into_response();
        assert_eq!(pending.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(pending.headers()[header::RETRY_AFTER], "1");
        assert_eq!(pending.headers()[header::CACHE_CONTROL], "no-store");
        let body: serde_json::Value = serde_json::from_slice(pending.body()).expect("json");
        assert_eq!(body["error"], "temporarily_unavailable");
        let panicked = OAuthError::from(JobFailed::Panicked).into_response();
        assert_eq!(panicked.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!panicked.headers().contains_key(header::RETRY_AFTER));
    }
}
