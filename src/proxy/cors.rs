//! CORS (Fetch standard, "CORS protocol") for APIs with a `cors` policy.
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! is answered here, 204, before authentication (browsers send it without
//! credentials) and never forwarded; a preflight the policy does not allow
//! gets 204 without any CORS field, which the browser takes as a refusal.
//! Other answers, the upstream's and the gateway's own refusals alike, get
//! the fields for an allowed origin. Every field value was joined when the
//! snapshot was compiled: a request compares and copies, nothing more.

use http::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use super::{empty, forwarded, Body};
use crate::config::snapshot::{Cors, Origins};

/// A preflight answer depends on these request fields (Fetch standard,
/// "CORS protocol and HTTP caches").
static PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
);
static ORIGIN_VARY: HeaderValue = HeaderValue::from_static("Origin");
static TRUE: HeaderValue = HeaderValue::from_static("true");

/// What a preflight asks for.
pub struct Preflight<'a> {
    pub origin: &'a HeaderValue,
    /// `None` when `Access-Control-Request-Method` is not a method.
    pub method: Option<Method>,
    headers: &'a HeaderMap,
}

impl Preflight<'_> {
    /// The preflight `req` is, if it is one.
    pub fn of<B>(req: &Request<B>) -> Option<Preflight<'_>> {
        if req.method() != Method::OPTIONS {
            return None;
        }
        let headers = req.headers();
        let origin = headers.get(ORIGIN)?;
        let method = headers.get(ACCESS_CONTROL_REQUEST_METHOD)?;
        Some(Preflight {
            origin,
            method: Method::from_bytes(method.as_bytes()).ok(),
            headers,
        })
    }

    /// Whether every header the preflight names is in `allow_headers`
    /// (names compared case-insensitively; RFC 9110 §5.1).
    fn headers_allowed(&self, cors: &Cors) -> bool {
        self.headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .all(|value| match value.to_str() {
                Ok(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .all(|name| {
                        cors.headers
                            .iter()
                            .any(|allowed| allowed.as_str().eq_ignore_ascii_case(name))
                    }),
                Err(_) => false,
            })
    }
}

/// Whether `req` is a preflight (whatever the API's policy).
pub fn is_preflight<B>(req: &Request<B>) -> bool {
    Preflight::of(req).is_some()
}

/// The answer to a preflight; `routed`: the API serves the requested
/// method on this path.
pub fn answer(cors: &Cors, preflight: &Preflight, routed: bool) -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(VARY, PREFLIGHT_VARY.clone());
    // A browser takes a CORS-safelisted method (GET, HEAD, POST) whether
    // `Access-Control-Allow-Methods` names it or not (Fetch standard,
    // "CORS-preflight fetch"), and sends it without a preflight unless
    // other headers ask for one: refusing its preflight would refuse the
    // same request for one header more, not the method.
    let method_allowed = preflight.method.as_ref().is_some_and(|method| {
        matches!(*method, Method::GET | Method::HEAD | Method::POST)
            || cors.methods.contains(method)
    });
    let allowed = routed
        && method_allowed
        && origin_allowed(cors, preflight.origin)
        && preflight.headers_allowed(cors);
    if !allowed {
        return response;
    }
    allow_origin(cors, preflight.origin, headers);
    headers.insert(ACCESS_CONTROL_ALLOW_METHODS, cors.allow_methods.clone());
    if let Some(allow_headers) = &cors.allow_headers {
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, allow_headers.clone());
    }
    if let Some(max_age) = &cors.max_age {
        headers.insert(ACCESS_CONTROL_MAX_AGE, max_age.clone());
    }
    response
}

/// Who answered a request that is not a preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Upstream,
    Gateway,
}

/// Adds the CORS fields to an answer for a request from `origin`. The
/// upstream's own `Access-Control-*` fields give way to the policy, so an
/// upstream cannot allow an origin the gateway does not.
pub fn decorate(cors: &Cors, origin: Option<&HeaderValue>, by: Answered, headers: &mut HeaderMap) {
    if by == Answered::Upstream {
        forwarded::remove_matching(headers, |name| name.as_str().starts_with("access-control-"));
    }
    if cors.any_origin.is_none() {
        // The answer names the origin it was made for: a cache must not
        // hand it to another (Fetch standard, "CORS protocol and HTTP caches").
        headers.append(VARY, ORIGIN_VARY.clone());
    }
    // With any origin allowed the answer is the same for every request,
    // `Origin` or not: a cache may hand it to any (Fetch standard).
    let Some(origin) = cors
        .any_origin
        .as_ref()
        .or(origin.filter(|origin| origin_allowed(cors, origin)))
    else {
        return;
    };
    allow_origin(cors, origin, headers);
    let expose = match by {
        Answered::Upstream => cors.expose.as_ref(),
        Answered::Gateway => Some(&cors.expose_on_rejection),
    };
    if let Some(expose) = expose {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
    }
}

pub(super) fn origin_allowed(cors: &Cors, origin: &HeaderValue) -> bool {
    match &cors.origins {
        Origins::Any => true,
        Origins::List(list) => list.iter().any(|allowed| allowed == origin),
    }
}

fn allow_origin(cors: &Cors, origin: &HeaderValue, headers: &mut HeaderMap) {
    let value = cors.any_origin.as_ref().unwrap_or(origin).clone();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
    if cors.credentials {
        headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn policy(origins: Origins, credentials: bool) -> Cors {
        Cors {
            any_origin: (origins == Origins::Any).then(|| HeaderValue::from_static("*")),
            origins,
            methods: vec![Method::GET, Method::POST],
            headers: vec![
                HeaderName::from_static("authorization"),
                HeaderName::from_static("content-type"),
            ],
            credentials,
            allow_methods: HeaderValue::from_static("GET, POST"),
            allow_headers: Some(HeaderValue::from_static("authorization, content-type")),
            max_age: None,
            expose: None,
            expose_on_rejection: HeaderValue::from_static("www-authenticate, retry-after"),
        }
    }

    fn preflight_request(origin: &str, method: &str, headers: &[&str]) -> Request<()> {
        let mut builder = Request::builder()
            .method(Method::OPTIONS)
            .uri("/x")
            .header(ORIGIN, origin)
            .header(ACCESS_CONTROL_REQUEST_METHOD, method);
        for line in headers {
            builder = builder.header(ACCESS_CONTROL_REQUEST_HEADERS, *line);
        }
        builder.body(()).expect("a request")
    }

    fn allowed(cors: &Cors, req: &Request<()>) -> bool {
        let preflight = Preflight::of(req).expect("a preflight");
        answer(cors, &preflight, true)
            .headers()
            .contains_key(ACCESS_CONTROL_ALLOW_ORIGIN)
    }

    #[test]
    fn requested_headers_are_compared_case_insensitively_on_every_line() {
        let app = "https://app.example.com";
        let cors = policy(Origins::List(vec![HeaderValue::from_static(app)]), true);
        assert!(allowed(&cors, &preflight_request(app, "POST", &[])));
        assert!(allowed(
            &cors,
            &preflight_request(app, "POST", &["Authorization , content-type,"])
        ));
        assert!(!allowed(
            &cors,
            &preflight_request(app, "POST", &["authorization", "x-debug"])
        ));
        assert!(!allowed(&cors, &preflight_request(app, "DELETE", &[])));
        // GET, HEAD and POST are the browser's to send whatever the list
        // (the API must still serve them: `routed`).
        let posting_only = Cors {
            methods: vec![Method::POST],
            ..policy(Origins::List(vec![HeaderValue::from_static(app)]), true)
        };
        for method in ["GET", "HEAD", "POST"] {
            assert!(
                allowed(
                    &posting_only,
                    &preflight_request(app, method, &["authorization"])
                ),
                "{method}"
            );
        }
        assert!(!allowed(&posting_only, &preflight_request(app, "PUT", &[])));
        assert!(!allowed(
            &cors,
            &preflight_request(app, "NOT A METHOD", &[])
        ));
    }

    #[test]
    fn origins_are_compared_byte_for_byte() {
        let cors = policy(
            Origins::List(vec![HeaderValue::from_static("https://app.example.com")]),
            false,
        );
        for other in [
            "https://APP.example.com",
            "https://app.example.com:443",
            "https://app.example.com.evil.example",
            "null",
        ] {
            assert!(
                !allowed(&cors, &preflight_request(other, "GET", &[])),
                "{other}"
            );
        }
    }

    #[test]
    fn any_origin_answers_a_star_and_does_not_vary_by_origin() {
        let cors = policy(Origins::Any, false);
        let mut headers = HeaderMap::new();
        let origin = HeaderValue::from_static("https://a.example");
        decorate(&cors, Some(&origin), Answered::Upstream, &mut headers);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!headers.contains_key(VARY));
        assert!(!headers.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }
}
