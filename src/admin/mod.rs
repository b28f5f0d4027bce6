//! The admin listener: health, metrics and the REST endpoints under
//! `/rest/microgateway/`. Reads are open when no admin credentials are
//! configured; mutating endpoints are then refused (403). Secrets are shown
//! as `****` everywhere but the central export.

mod views;

use std::time::UNIX_EPOCH;

use base64::Engine;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::gateway::State;
use crate::proxy::{full, Body};
use crate::reload::Source;

/// Whether a request may use an admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// Credentials are configured and these are missing or wrong.
    Denied,
    /// No credentials are configured: reads allowed, mutations refused.
    Open,
}

/// Checks Basic credentials against `admin.user`/`admin.password`.
pub fn access(state: &State, headers: &http::HeaderMap) -> Access {
    let snapshot = state.live.snapshot();
    let Some((user, password)) = &snapshot.admin.credentials else {
        return Access::Open;
    };
    match basic_credentials(headers) {
        Some((u, p))
            if constant_eq(u.as_bytes(), user.as_bytes()) & password.matches(p.as_bytes()) =>
        {
            Access::Granted
        }
        _ => Access::Denied,
    }
}

/// The user and password of a `Basic` Authorization header (RFC 7617).
pub fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

pub async fn handle(state: &State, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/health/live") => json_response(StatusCode::OK, json!({"status": "up"})),
        (&Method::GET, "/health/ready") => {
            if state.is_ready() {
                json_response(
                    StatusCode::OK,
                    json!({"status": "ready", "generation": state.live.generation()}),
                )
            } else {
                json_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"status": "not ready"}),
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
            rest(state, &method, &p["/rest/microgateway/".len()..], req).await
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

async fn rest(state: &State, method: &Method, path: &str, req: Request<Body>) -> Response<Body> {
    if path == "settings/export" && method == Method::GET {
        // Authenticated against `central.users`, not the admin credentials.
        let snapshot = state.live.snapshot();
        let tree = || state.central.export_tree(&snapshot, &state.env);
        return crate::central::export::respond(&snapshot, req.headers(), req.uri().query(), tree)
            .map(full);
    }
    let access = access(state, req.headers());
    // "required": these need configured admin credentials even to read.
    let mutating = (method != Method::GET && method != Method::HEAD) || path.starts_with("oauth2/");
    match (access, mutating) {
        (Access::Denied, _) => return unauthorized(),
        (Access::Open, true) => {
            return json_response(
                StatusCode::FORBIDDEN,
                json!({"error": "forbidden", "error_description": "configure admin.user and admin.password to use this endpoint"}),
            )
        }
        (Access::Granted, _) | (Access::Open, false) => {}
    }
    let snapshot = state.live.snapshot();
    match (method, path) {
        (&Method::GET, "status") => json_response(StatusCode::OK, status(state)),
        (&Method::GET, "settings") => json_response(StatusCode::OK, views::settings(&snapshot)),
        (&Method::GET, "assets") => json_response(StatusCode::OK, views::assets(&snapshot)),
        (&Method::POST, "reload") => match state.reload(Source::Api) {
            Ok(generation) => json_response(StatusCode::OK, json!({"generation": generation})),
            Err(invalid) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"error": "invalid_configuration", "findings": invalid.findings.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            ),
        },
        (&Method::GET, "oauth2/tokens") => tokens(state).await,
        (&Method::DELETE, p) if p.starts_with("oauth2/tokens/") => {
            revoke(state, &p["oauth2/tokens/".len()..]).await
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

async fn tokens(state: &State) -> Response<Body> {
    let Some(authz) = state.authz.load_full() else {
        return json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "error_description": "the authorization server is off"}),
        );
    };
    match authz.list_tokens().await {
        Ok(tokens) => json_response(StatusCode::OK, json!({ "tokens": tokens })),
        Err(error) => {
            tracing::error!(%error, "listing tokens failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "server_error"}),
            )
        }
    }
}

async fn revoke(state: &State, id: &str) -> Response<Body> {
    let Some(authz) = state.authz.load_full() else {
        return json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"}));
    };
    match authz.revoke_by_id(id.to_owned()).await {
        Ok(true) => json_response(StatusCode::OK, json!({"revoked": id})),
        Ok(false) => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        Err(error) => {
            tracing::error!(%error, "revoking a token failed");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "server_error"}),
            )
        }
    }
}

fn status(state: &State) -> serde_json::Value {
    let reload = state.live.status();
    let seconds = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "generation": state.live.generation(),
        "last_reload_at": seconds(reload.last_reload_at),
        "last_reload_error": reload.last_reload_error,
        "central": state.central.status_json(state.live.snapshot().api_gateway.as_ref()),
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

pub fn unauthorized() -> Response<Body> {
    let mut response = json_response(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"microgateway\""),
    );
    response
}
