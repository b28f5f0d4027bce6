//! The admin listener: health, metrics and the REST endpoints under
//! `/rest/microgateway/`. Reads are open when no admin credentials are
//! configured; mutating endpoints are then refused (403). Secrets are shown
//! as `****` everywhere but the central export.

mod views;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::authz_server::store::StoreError;
use crate::authz_server::AuthzError;
use crate::basic_auth::{admin_access, Access, Logins};
use crate::proxy::{full, Body};
use crate::reload::{Reloader, Source};

/// What the admin port reads and may change: the reload pipeline (which
/// holds the serving snapshot, the central link, the authorization server
/// and the gateway's start), never the gateway itself.
pub struct Admin {
    pub reloader: Arc<Reloader>,
    pub started: Instant,
    /// Failed logins with the admin or central credentials, on every port.
    pub logins: Logins,
}

/// What `/health/ready` answers.
pub struct Readiness {
    pub ready: bool,
    /// The auth servers of the serving snapshot still waiting for their
    /// JWKS, by id.
    pub jwks_pending: Vec<Arc<str>>,
}

impl Admin {
    pub fn new(reloader: Arc<Reloader>) -> Admin {
        Admin {
            reloader,
            started: Instant::now(),
            logins: Logins::default(),
        }
    }

    /// Listening, the authorization server's store reached (a database
    /// store may not be yet), and, until the gateway has started, every
    /// JWKS of the serving snapshot fetched. The keys are a condition of the
    /// start only, and the start is noted the moment it is met, asked or
    /// not ([`StartLatch`]): an auth server a reload or download adds
    /// later, whose JWKS cannot be fetched, refuses its own tokens (503)
    /// and is listed as pending, but does not take a serving gateway, and a
    /// fleet following one central configuration, out of service.
    ///
    /// [`StartLatch`]: crate::reload::StartLatch
    pub fn readiness(&self) -> Readiness {
        let start = &self.reloader.start;
        let started = start.note();
        let jwks_pending = self.reloader.auth.jwks_pending();
        let ready = start.is_serving() && (started || jwks_pending.is_empty());
        Readiness {
            ready,
            jwks_pending,
        }
    }
}

/// Answers `req`, from `peer`, on the admin port.
pub async fn handle(admin: &Admin, req: Request<Body>, peer: IpAddr) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/health/live") => json_response(StatusCode::OK, json!({"status": "up"})),
        (&Method::GET, "/health/ready") => {
            let Readiness {
                ready,
                jwks_pending,
            } = admin.readiness();
            let jwks_pending: Vec<&str> = jwks_pending.iter().map(AsRef::as_ref).collect();
            if ready {
                json_response(
                    StatusCode::OK,
                    json!({"status": "ready", "generation": admin.reloader.live.generation(), "jwks_pending": jwks_pending}),
                )
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not ready", "jwks_pending": jwks_pending}),
                )
            }
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(full(crate::metrics::get().render()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (_, p) if p.starts_with("/rest/microgateway/") => {
            rest(admin, &method, &p["/rest/microgateway/".len()..], req, peer).await
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

async fn rest(
    admin: &Admin,
    method: &Method,
    path: &str,
    req: Request<Body>,
    peer: IpAddr,
) -> Response<Body> {
    if path == "settings/export" && method == Method::GET {
        // Authenticated against `central.users`, not the admin credentials.
        let snapshot = admin.reloader.live.snapshot();
        let tree = || {
            admin
                .reloader
                .central
                .export_tree(&snapshot, &admin.reloader.env)
        };
        let login = (&admin.logins, peer);
        return crate::central::export::respond(
            &snapshot,
            req.headers(),
            req.uri().query(),
            login,
            tree,
        )
        .map(full);
    }
    let access = admin_access(
        &admin.reloader.live.snapshot(),
        req.headers(),
        &admin.logins,
        peer,
    );
    // "required": these need configured admin credentials even to read.
    let mutating = (method != Method::GET && method != Method::HEAD) || path.starts_with("oauth2/");
    match (access, mutating) {
        (Access::Denied, _) => return unauthorized(),
        (Access::Locked(retry_after), _) => return locked(retry_after),
        (Access::Open, true) => {
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "error_description": "configure admin.user and admin.password to use this endpoint"}),
            )
        }
        (Access::Granted, _) | (Access::Open, false) => {}
    }
    let snapshot = admin.reloader.live.snapshot();
    match (method, path) {
        (&Method::GET, "status") => json_response(StatusCode::OK, status(admin)),
        (&Method::GET, "settings") => json_response(
            StatusCode::OK,
            views::settings(&snapshot, admin.reloader.live.bound()),
        ),
        (&Method::GET, "assets") => json_response(
            StatusCode::OK,
            views::assets(&snapshot, Some(&admin.reloader.health)),
        ),
        (&Method::POST, "reload") => {
            match admin.reloader.reload_on_blocking_pool(Source::Api).await {
                Ok(generation) => json_response(StatusCode::OK, json!({"generation": generation})),
                Err(invalid) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"error": "invalid_configuration", "findings": invalid.findings.iter().map(ToString::to_string).collect::<Vec<_>>()}),
                ),
            }
        }
        (&Method::GET, "oauth2/tokens") => tokens(admin).await,
        (&Method::DELETE, p) if p.starts_with("oauth2/tokens/") => {
            revoke(admin, &p["oauth2/tokens/".len()..]).await
        }
        (_, path) => match allowed_method(path) {
            // RFC 9110 §15.5.6: a resource that exists, another method.
            Some(allow) => {
                let mut response = json_response(
                    StatusCode::METHOD_NOT_ALLOWED,
                    json!({"error": "method_not_allowed", "error_description": format!("{path} is served to {allow} only")}),
                );
                response
                    .headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
                response
            }
            None => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        },
    }
}

/// The method the REST resource at `path` is served to.
fn allowed_method(path: &str) -> Option<&'static str> {
    match path {
        "status" | "settings" | "assets" | "oauth2/tokens" => Some("GET"),
        "reload" => Some("POST"),
        p if p.starts_with("oauth2/tokens/") => Some("DELETE"),
        _ => None,
    }
}

async fn tokens(admin: &Admin) -> Response<Body> {
    let Some(authz) = admin.reloader.authz.load_full() else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "error_description": "the authorization server is off"}),
        );
    };
    match authz.list_tokens().await {
        Ok(listing) => json_response(StatusCode::OK, json!(listing)),
        Err(error) => store_failed("listing tokens", &error),
    }
}

async fn revoke(admin: &Admin, id: &str) -> Response<Body> {
    let Some(authz) = admin.reloader.authz.load_full() else {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    };
    match authz.revoke_by_id(id.to_owned()).await {
        Ok(true) => json_response(StatusCode::OK, json!({"revoked": id})),
        Ok(false) => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        Err(error) => store_failed("revoking a token", &error),
    }
}

/// What a token job that failed answers: as at the OAuth endpoints, a
/// store that cannot be reached now, or no worker free in time, is 503
/// `temporarily_unavailable` with `Retry-After: 1` (either ends by
/// itself); anything else is a 500.
fn store_failed(job: &str, error: &AuthzError) -> Response<Body> {
    let description = match error {
        AuthzError::Store(StoreError::Unavailable(reason)) => {
            tracing::warn!(%reason, "{job}: token store unavailable");
            "the token store is unavailable; try again"
        }
        AuthzError::Busy => {
            tracing::warn!("{job}: every authorization server worker is busy");
            "the authorization server is busy; try again"
        }
        AuthzError::Store(_)
        | AuthzError::Keys(_)
        | AuthzError::Password(_)
        | AuthzError::ApprovalTemplate(_)
        | AuthzError::JwtWithoutExpiry { .. }
        | AuthzError::Worker => {
            tracing::error!(%error, "{job} failed");
            return json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "server_error"}),
            );
        }
    };
    let mut response = json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "temporarily_unavailable", "error_description": description}),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn status(admin: &Admin) -> serde_json::Value {
    let reload = admin.reloader.live.status();
    let seconds = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": admin.started.elapsed().as_secs(),
        "generation": admin.reloader.live.generation(),
        "last_reload_at": seconds(reload.last_reload_at),
        "last_reload_error": reload.last_reload_error,
        "central": admin.reloader.central.status_json(admin.reloader.live.snapshot().api_gateway.as_ref()),
    })
}

pub fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// 429 to a login refused unchecked: too many failed ones.
pub fn locked(retry_after: u64) -> Response<Body> {
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({"error": "too_many_attempts", "error_description": "too many failed logins; try again later"}),
    );
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    response
}

pub fn unauthorized() -> Response<Body> {
    let mut response = json_response(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"microgateway\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_store_or_no_free_worker_is_a_503_to_retry_soon_and_a_panic_a_500() {
        for error in [
            AuthzError::Store(StoreError::Unavailable("connection refused".into())),
            AuthzError::Busy,
        ] {
            let answer = store_failed("listing tokens", &error);
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{error}");
            assert_eq!(answer.headers()[RETRY_AFTER], "1", "{error}");
        }
        let answer = store_failed("listing tokens", &AuthzError::Worker);
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.headers().contains_key(RETRY_AFTER));
    }
}
