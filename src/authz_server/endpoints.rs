//! The authorization server's HTTP face, framework-free: a request with its
//! collected body in, a response out. The gateway's server routes a path
//! here when [`is_endpoint`] says so.
//!
//! Every form endpoint is POST-only (RFC 6749 §3.2), refuses plain HTTP
//! when `require_https` is set, refuses a secret in its URI (§2.3.1),
//! bounds its body to [`MAX_BODY`], and answers
//! with `Cache-Control: no-store`. The authorization endpoint (`authorize`)
//! answers GET and POST with HTML pages and redirects. Store and Argon2
//! work run on the blocking pool, never on the reactor: Argon2 on at most
//! half the cores, jobs on as many threads as that too (SQLite) or as the
//! database has connections (PostgreSQL) (`workers`). A request that may
//! have a password checked waits for its turn at Argon2 before it takes a
//! worker, so that a flood of password guesses leaves the workers to the
//! other requests.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::json;

use super::approval::Approval;
use super::authorize::{self, AuthorizeContext};
use super::client_auth::{self, Method as AuthMethod};
use super::clock::Clock;
use super::error::{json_response, OAuthError};
use super::form::Form;
use super::grants::{self, attempts::FailedAttempts, password::Users, GrantContext};
use super::introspect::{self, IntrospectContext};
use super::keys::{SigningKeys, KEY_REFRESH};
use super::revoke::{self, RevokeContext};
use super::sessions::Sessions;
use super::settings::{Settings, TokenFormat};
use super::store::{PostgresStore, Removed, SqliteStore, TokenStore, TokenSummary};
use super::workers::{self, Gate, JobFailed, Workers};
use super::AuthzError;
use crate::config::contents::Content;

/// Largest request body the endpoints read; their forms are a few hundred
/// bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Access tokens, and refresh tokens, the admin API lists at most.
pub const LISTED_PER_KIND: usize = 10_000;

/// What the admin API lists of the issued tokens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenListing {
    pub tokens: Vec<TokenSummary>,
    /// More of a kind were issued than are listed (the oldest are left out).
    pub truncated: bool,
}

/// What the server layer knows about a request that the request itself
/// does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestContext {
    /// TLS, or `https` from a trusted proxy.
    pub is_https: bool,
    /// The caller's address, as `trusted_proxies` make it known: failed
    /// client authentications and approval page logins count against it.
    pub address: IpAddr,
    /// Admin Basic credentials, judged only where [`needs_admin`] says
    /// so: `None` = none configured (admin endpoints are off, 403) or not
    /// judged, `Some(false)` = missing or wrong (401).
    pub admin_ok: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Authorize,
    Token,
    Introspect,
    Revoke,
    Jwks,
    Metadata,
    RemoveExpired,
    /// The webMethods alias, which IS services also answer on GET.
    RemoveExpiredInvoke,
}

fn route(path: &str) -> Option<Endpoint> {
    match path {
        "/oauth2/authorize" | "/invoke/pub.apigateway.oauth2/authorize" => {
            Some(Endpoint::Authorize)
        }
        "/oauth2/token"
        | "/invoke/pub.apigateway.oauth2/getAccessToken"
        | "/invoke/pub.oauth/refreshAccessToken" => Some(Endpoint::Token),
        "/oauth2/introspect" | "/invoke/pub.oauth/introspectToken" => Some(Endpoint::Introspect),
        "/oauth2/revoke" => Some(Endpoint::Revoke),
        "/oauth2/jwks" => Some(Endpoint::Jwks),
        "/.well-known/oauth-authorization-server" => Some(Endpoint::Metadata),
        "/oauth2/tokens/remove-expired" => Some(Endpoint::RemoveExpired),
        "/invoke/pub.oauth/removeExpiredAccessTokens" => Some(Endpoint::RemoveExpiredInvoke),
        _ => None,
    }
}

/// Whether `req` may have a password checked: a form posted to the token
/// endpoint (the password grant) or to the approval page (its login) with
/// a `password`, read as both read their forms. A request this misjudges
/// is still bounded by Argon2's own gate; it only waits in the wrong line.
fn may_check_password(req: &Request<Bytes>) -> bool {
    req.method() == Method::POST
        && matches!(
            route(req.uri().path()),
            Some(Endpoint::Token | Endpoint::Authorize)
        )
        && Form::parse_keeping_repeats(req.body()).is_ok_and(|form| form.get("password").is_some())
}

/// Whether `path` (without query) belongs to the authorization server.
pub fn is_endpoint(path: &str) -> bool {
    route(path).is_some()
}

/// Whether the endpoint at `path` reads [`RequestContext::admin_ok`]. The
/// admin credentials are judged for these alone: judging counts a wrong
/// login against the caller's address, and the other endpoints take a
/// client's own Basic credentials, which are no admin login.
pub fn needs_admin(path: &str) -> bool {
    matches!(
        route(path),
        Some(Endpoint::RemoveExpired | Endpoint::RemoveExpiredInvoke)
    )
}

/// The local authorization server. Cheap to clone; clones share the store,
/// keys and failure counters.
#[derive(Clone)]
pub struct AuthorizationServer {
    inner: Arc<Inner>,
}

struct Inner {
    /// What codes, tokens and keys expire by.
    clock: Clock,
    settings: Settings,
    store: Arc<dyn TokenStore>,
    keys: ArcSwap<SigningKeys>,
    users: Users,
    attempts: FailedAttempts,
    client_failures: client_auth::Failures,
    sessions: Sessions,
    approval: Approval,
    metadata: Bytes,
    workers: Workers,
    /// Passed before a worker by each request that may have a password
    /// checked: as many at once as Argon2 may run.
    password_checks: Gate,
}

impl AuthorizationServer {
    /// Opens the store (creating it), loads or generates the signing key,
    /// and parses the users' password hashes. Blocking: call it before
    /// serving, or from a blocking thread.
    pub fn open(settings: Settings) -> Result<AuthorizationServer, AuthzError> {
        AuthorizationServer::open_after(settings, None)
    }

    /// [`AuthorizationServer::open`] for `settings` that replace this
    /// server's: the new server takes over what this one keeps in memory
    /// alone (its clock, its failed-attempt counts of password logins and
    /// client authentications, its approval sessions and the sessions
    /// each address started), and both count into them while requests
    /// begun here finish, so a change of settings lifts no lock; password
    /// checks of both wait in one line and hash through one gate, so the
    /// two never run twice the bound at once. What a store keeps is the
    /// store's.
    pub fn reopen(&self, settings: Settings) -> Result<AuthorizationServer, AuthzError> {
        AuthorizationServer::open_after(settings, Some(&self.inner))
    }

    fn open_after(
        settings: Settings,
        previous: Option<&Inner>,
    ) -> Result<AuthorizationServer, AuthzError> {
        if settings.token_format == TokenFormat::Jwt {
            if let Some(client) = settings.clients.iter().find(|c| c.token_lifetime.is_none()) {
                return Err(AuthzError::JwtWithoutExpiry {
                    client_id: client.client_id.clone(),
                });
            }
        }
        let store: Arc<dyn TokenStore> = match &settings.postgres {
            Some(postgres) => Arc::new(PostgresStore::open(postgres)?),
            None => Arc::new(SqliteStore::open(&settings.store_path)?),
        };
        let clock = previous.map_or_else(Clock::default, |previous| previous.clock.clone());
        // A token signed by a key that no longer signs lives as long as
        // its client's tokens do.
        let tokens_live = settings
            .clients
            .iter()
            .filter_map(|client| client.token_lifetime)
            .max()
            .unwrap_or_default();
        let keys = SigningKeys::open(
            &settings.signing_key_path,
            store.as_ref(),
            clock.unix_now(),
            tokens_live,
        )?;
        let users = Users::new(&settings.users)?;
        let mut attempts =
            FailedAttempts::shared(Arc::clone(&store)).for_clients(settings.clients.len());
        let mut client_failures = client_auth::Failures::shared(Arc::clone(&store));
        let mut sessions = Sessions::for_store(Arc::clone(&store));
        if let Some(previous) = previous {
            attempts = attempts.following(&previous.attempts);
            client_failures = client_failures.following(&previous.client_failures);
            sessions = sessions.following(&previous.sessions);
        }
        // A database store's jobs mostly wait for it: as many as it has
        // connections (Argon2 keeps its own bound, `Users`).
        let workers = match &settings.postgres {
            Some(postgres) => Workers::new(postgres.max_connections),
            None => Workers::sized_from_cores(),
        };
        // Password checks wait in the same line as those of the server
        // this one replaces, whose requests may still be finishing.
        let password_checks = previous.map_or_else(
            || Gate::new(workers::half_the_cores()),
            |previous| previous.password_checks.clone(),
        );
        let approval = Approval::new(
            settings.approval_template.as_deref(),
            &settings.branding,
            &settings.issuer,
        )?;
        let metadata = Bytes::from(metadata(&settings).to_string());
        Ok(AuthorizationServer {
            inner: Arc::new(Inner {
                clock,
                settings,
                store,
                keys: ArcSwap::from_pointee(keys),
                users,
                attempts,
                client_failures,
                sessions,
                approval,
                metadata,
                workers,
                password_checks,
            }),
        })
    }

    /// Whether the store can serve: false while a database store has not
    /// been reached since start.
    pub fn is_ready(&self) -> bool {
        self.inner.store.is_ready() && !self.inner.keys.load().is_pending()
    }

    /// The signing keys live in a store not reached yet: none is published.
    pub fn keys_pending(&self) -> bool {
        self.inner.keys.load().is_pending()
    }

    /// When the store keeps the signing keys (PostgreSQL), re-reads them
    /// every [`KEY_REFRESH`] (every second while they are pending), so a
    /// key rotated by `microgateway rotate-signing-key` is published by
    /// every replica within that time, before any signs with it
    /// ([`super::KEY_PUBLISHED_BEFORE_SIGNING`]); `changed` gets each new
    /// JWKS. Ends when the server is dropped. `None` when the keys are a
    /// file.
    pub fn spawn_key_refresh(
        &self,
        changed: impl Fn(&[u8]) + Send + Sync + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.inner.store.keeps_signing_keys() {
            return None;
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Some(tokio::spawn(key_refresh_loop(weak, Arc::new(changed))))
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// What this server's codes, tokens and keys expire by.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// The JWKS (RFC 7517) of this server's public keys, for the gateway to
    /// validate this server's JWTs in-process.
    pub fn published_keys(&self) -> Vec<u8> {
        self.inner.keys.load().jwks_json()
    }

    /// What the signing key file held when the key in use was read from
    /// it; `None` when the store keeps the keys.
    pub fn key_file(&self) -> Option<Content> {
        self.inner.keys.load().file().cloned()
    }

    /// Re-reads the signing key file (generating it when missing), for
    /// [`use_keys`](Self::use_keys): a new key signs from then on and the
    /// old one stays published. Blocking.
    pub fn reread_keys(&self) -> Result<SigningKeys, AuthzError> {
        Ok(self
            .inner
            .keys
            .load()
            .reload(self.inner.store.as_ref(), self.inner.clock.unix_now())?)
    }

    /// Signs with `keys` and publishes them from now on.
    pub fn use_keys(&self, keys: SigningKeys) {
        self.inner.keys.store(Arc::new(keys));
    }

    pub async fn handle(&self, req: Request<Bytes>, ctx: RequestContext) -> Response<Bytes> {
        self.handle_at(req, ctx, self.inner.clock.unix_now()).await
    }

    /// [`handle`](Self::handle) with the clock given (Unix seconds).
    pub async fn handle_at(
        &self,
        req: Request<Bytes>,
        ctx: RequestContext,
        now: u64,
    ) -> Response<Bytes> {
        // Keys and metadata are in memory: they never wait behind a queue
        // of password checks.
        if matches!(
            route(req.uri().path()),
            Some(Endpoint::Jwks | Endpoint::Metadata)
        ) {
            return self
                .inner
                .dispatch(&req, ctx, now)
                .unwrap_or_else(OAuthError::into_response);
        }
        let checks_password = may_check_password(&req);
        let inner = Arc::clone(&self.inner);
        let job = move || {
            inner
                .dispatch(&req, ctx, now)
                .unwrap_or_else(OAuthError::into_response)
        };
        let workers = &self.inner.workers;
        let answer = if checks_password {
            workers.run_after(&self.inner.password_checks, job).await
        } else {
            workers.run(job).await
        };
        answer.unwrap_or_else(|failed| OAuthError::from(failed).into_response())
    }

    /// Issued tokens, without their values, for the admin API: the
    /// [`LISTED_PER_KIND`] most recently issued of each kind, and whether
    /// there are more.
    pub async fn list_tokens(&self) -> Result<TokenListing, AuthzError> {
        let mut tokens = self
            .blocking(|inner| Ok(inner.store.list_tokens(LISTED_PER_KIND + 1)?))
            .await?;
        let mut truncated = false;
        for kind in ["access_token", "refresh_token"] {
            let of_kind = tokens.iter().filter(|t| t.kind == kind).count();
            if of_kind > LISTED_PER_KIND {
                truncated = true;
                // Each kind is oldest first: its oldest one goes.
                if let Some(oldest) = tokens.iter().position(|t| t.kind == kind) {
                    tokens.remove(oldest);
                }
            }
        }
        Ok(TokenListing { tokens, truncated })
    }

    /// Revokes the access token with this id, or the family of the refresh
    /// token with this id; false when no token has it. A token revoked
    /// already is revoked again (true), whatever revoked it: its family
    /// then has nothing left to revoke.
    pub async fn revoke_by_id(&self, id: String) -> Result<bool, AuthzError> {
        self.blocking(move |inner| {
            if inner.store.revoke_access_token(&id)? {
                return Ok(true);
            }
            match inner.store.find_refresh_token(&id)? {
                Some(refresh) => {
                    inner.store.revoke_family(&refresh.family)?;
                    Ok(true)
                }
                None => Ok(false),
            }
        })
        .await
    }

    pub async fn remove_expired(&self) -> Result<Removed, AuthzError> {
        self.blocking(|inner| Ok(inner.store.remove_expired(inner.clock.unix_now())?))
            .await
    }

    /// Removes expired tokens every `cleanup_interval`, until the server is
    /// dropped. `None` when no interval is configured.
    pub fn spawn_cleanup(&self) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.inner.settings.cleanup_interval?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Some(tokio::spawn(cleanup_loop(weak, every)))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Inner) -> Result<T, AuthzError> + Send + 'static,
    ) -> Result<T, AuthzError> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .workers
            .run(move || job(&inner))
            .await
            .map_err(|failed| match failed {
                JobFailed::Panicked => AuthzError::Worker,
                JobFailed::Busy => AuthzError::Busy,
            })?
    }
}

/// Told each new JWKS the key refresh finds.
type KeysChanged = Arc<dyn Fn(&[u8]) + Send + Sync>;

async fn key_refresh_loop(weak: Weak<Inner>, changed: KeysChanged) {
    loop {
        let pending = match weak.upgrade() {
            Some(inner) => inner.keys.load().is_pending(),
            None => return,
        };
        tokio::time::sleep(if pending {
            Duration::from_secs(1)
        } else {
            KEY_REFRESH
        })
        .await;
        let Some(inner) = weak.upgrade() else { return };
        let workers = inner.workers.clone();
        let reread = Arc::clone(&inner);
        let fresh = workers
            .run(move || {
                let keys = reread.keys.load();
                keys.reload(reread.store.as_ref(), reread.clock.unix_now())
            })
            .await;
        match fresh {
            Ok(Ok(fresh)) if !fresh.is_pending() => {
                let before = inner.keys.load();
                if before.is_pending()
                    || fresh.current().kid != before.current().kid
                    || fresh.jwks_json() != before.jwks_json()
                {
                    let jwks = fresh.jwks_json();
                    inner.keys.store(Arc::new(fresh));
                    tracing::info!("signing keys re-read from the token store");
                    changed(&jwks);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "re-reading the signing keys failed"),
            Err(_) => tracing::warn!("re-reading the signing keys panicked"),
        }
    }
}

async fn cleanup_loop(weak: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let workers = inner.workers.clone();
        let result = workers
            .run(move || inner.store.remove_expired(inner.clock.unix_now()))
            .await;
        match result {
            Ok(Ok(removed)) => tracing::info!(removed = removed.total(), "expired tokens removed"),
            Ok(Err(error)) => tracing::warn!(%error, "removing expired tokens failed"),
            Err(_) => tracing::warn!("removing expired tokens panicked"),
        }
    }
}

impl Inner {
    fn dispatch(
        &self,
        req: &Request<Bytes>,
        ctx: RequestContext,
        now: u64,
    ) -> Result<Response<Bytes>, OAuthError> {
        let endpoint = route(req.uri().path()).ok_or(OAuthError::NotFound)?;
        match endpoint {
            Endpoint::Authorize => {
                allow(
                    req,
                    &[Method::GET, Method::HEAD, Method::POST],
                    "GET, HEAD, POST",
                )?;
                if req.body().len() > MAX_BODY {
                    return Err(OAuthError::BodyTooLarge { limit: MAX_BODY });
                }
                let mut response = self.authorize(req, ctx, now);
                if req.method() == Method::HEAD {
                    // RFC 9110 §9.3.2: the GET's answer, without its body.
                    *response.body_mut() = Bytes::new();
                }
                Ok(response)
            }
            Endpoint::Jwks => {
                allow(req, &[Method::GET, Method::HEAD], "GET, HEAD")?;
                Ok(public_json(
                    req,
                    Bytes::from(self.keys.load().jwks_json()),
                    "application/jwk-set+json",
                ))
            }
            Endpoint::Metadata => {
                allow(req, &[Method::GET, Method::HEAD], "GET, HEAD")?;
                Ok(public_json(req, self.metadata.clone(), "application/json"))
            }
            Endpoint::Token => {
                let form = self.form(req, ctx)?;
                self.token(req, &form, ctx.address, now)
            }
            Endpoint::Introspect => {
                let form = self.form(req, ctx)?;
                self.introspect(req, &form, self.caller(ctx, now))
            }
            Endpoint::Revoke => {
                let form = self.form(req, ctx)?;
                self.revoke(req, &form, self.caller(ctx, now))
            }
            Endpoint::RemoveExpired => {
                allow(req, &[Method::POST], "POST")?;
                self.remove_expired(ctx, now)
            }
            Endpoint::RemoveExpiredInvoke => {
                allow(req, &[Method::GET, Method::POST], "GET, POST")?;
                self.remove_expired(ctx, now)
            }
        }
    }

    /// Whence the client of a request in `ctx` authenticates.
    fn caller(&self, ctx: RequestContext, now: u64) -> client_auth::Caller<'_> {
        client_auth::Caller {
            address: ctx.address,
            failures: &self.client_failures,
            now,
        }
    }

    /// The checks every form endpoint shares, in the order a client can fix
    /// them.
    fn form(&self, req: &Request<Bytes>, ctx: RequestContext) -> Result<Form, OAuthError> {
        allow(req, &[Method::POST], "POST")?;
        // RFC 6749 §3.2: the token endpoint requires TLS; the operator
        // decides whether "requires" is enforced here.
        if self.settings.require_https && !ctx.is_https {
            return Err(OAuthError::InvalidRequest("HTTPS is required"));
        }
        if secret_in_query(req.uri().query()) {
            return Err(OAuthError::InvalidRequest(
                "credentials and tokens go in the request body, never in the URI",
            ));
        }
        if req.body().len() > MAX_BODY {
            return Err(OAuthError::BodyTooLarge { limit: MAX_BODY });
        }
        if !super::form::is_form(req.headers()) {
            return Err(OAuthError::InvalidRequest(
                "Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        Ok(Form::parse(req.body())?)
    }

    fn authorize(&self, req: &Request<Bytes>, ctx: RequestContext, now: u64) -> Response<Bytes> {
        let keys = self.keys.load();
        let cx = AuthorizeContext {
            grants: GrantContext {
                settings: &self.settings,
                store: self.store.as_ref(),
                key: keys.current(),
                users: &self.users,
                attempts: &self.attempts,
                address: ctx.address,
                client_failures: &self.client_failures,
                now,
            },
            sessions: &self.sessions,
            approval: &self.approval,
            is_https: ctx.is_https,
        };
        authorize::handle(&cx, req)
    }

    #[allow(
        clippy::expect_used,
        reason = "a token response is plain strings and numbers: it always serialises"
    )]
    fn token(
        &self,
        req: &Request<Bytes>,
        form: &Form,
        address: IpAddr,
        now: u64,
    ) -> Result<Response<Bytes>, OAuthError> {
        let keys = self.keys.load();
        let cx = GrantContext {
            settings: &self.settings,
            store: self.store.as_ref(),
            key: keys.current(),
            users: &self.users,
            attempts: &self.attempts,
            address,
            client_failures: &self.client_failures,
            now,
        };
        let (grant, response) = grants::token(&cx, req.headers(), form)?;
        crate::metrics::get()
            .tokens_issued
            .with_label_values(&[grant.as_str()])
            .inc();
        let body = serde_json::to_value(&response).expect("a token response serialises");
        Ok(json_response(StatusCode::OK, &body))
    }

    fn introspect(
        &self,
        req: &Request<Bytes>,
        form: &Form,
        from: client_auth::Caller<'_>,
    ) -> Result<Response<Bytes>, OAuthError> {
        let now = from.now;
        let caller = client_auth::authenticate(&self.settings, from, req.headers(), form)?;
        // RFC 7662 §2.1: the caller must be authorised; a public client
        // cannot be. One that tried Basic (an empty password) is challenged
        // as RFC 6749 §5.2 asks.
        if caller.method == AuthMethod::None {
            return Err(OAuthError::InvalidClient {
                basic: req.headers().contains_key(header::AUTHORIZATION),
            });
        }
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is required"))?;
        let keys = self.keys.load();
        let cx = IntrospectContext {
            settings: &self.settings,
            store: self.store.as_ref(),
            keys: &keys,
            now,
        };
        let answer = introspect::introspect(&cx, &caller.client.client_id, token)?;
        Ok(json_response(StatusCode::OK, &answer))
    }

    fn revoke(
        &self,
        req: &Request<Bytes>,
        form: &Form,
        from: client_auth::Caller<'_>,
    ) -> Result<Response<Bytes>, OAuthError> {
        let caller = client_auth::authenticate(&self.settings, from, req.headers(), form)?;
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is required"))?;
        let keys = self.keys.load();
        let cx = RevokeContext {
            settings: &self.settings,
            store: self.store.as_ref(),
            keys: &keys,
        };
        revoke::revoke(&cx, &caller.client.client_id, token)?;
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        Ok(response)
    }

    fn remove_expired(&self, ctx: RequestContext, now: u64) -> Result<Response<Bytes>, OAuthError> {
        match ctx.admin_ok {
            None => return Err(OAuthError::AdminDisabled),
            Some(false) => return Err(OAuthError::AdminUnauthorized),
            Some(true) => {}
        }
        let removed = self.store.remove_expired(now)?;
        tracing::info!(
            removed = removed.total(),
            "expired tokens removed on request"
        );
        let body = json!({
            "removed": removed.total(),
            "access_tokens": removed.access_tokens,
            "refresh_tokens": removed.refresh_tokens,
            "authorization_codes": removed.authorization_codes,
        });
        Ok(json_response(StatusCode::OK, &body))
    }
}

/// Parameters of the form endpoints that carry a secret: a client's
/// (RFC 6749 §2.3.1: "MUST NOT be included in the request URI"), a
/// user's password (§4.3.2), a code and its verifier, a refresh token, a
/// token to introspect or revoke.
const SECRET_PARAMS: [&str; 6] = [
    "client_secret",
    "password",
    "code",
    "code_verifier",
    "refresh_token",
    "token",
];

/// Whether a form endpoint's query names a secret parameter (in any
/// spelling that decodes to it). Such a request is refused rather than
/// answered from its body alone, so the client learns to stop putting
/// its secrets where logs and proxies keep URIs. The query is bounded by
/// the listener's URI limit.
fn secret_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query.split('&').any(|pair| {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            super::form::decode(name.as_bytes())
                .is_ok_and(|name| SECRET_PARAMS.contains(&name.as_str()))
        })
    })
}

fn allow(req: &Request<Bytes>, methods: &[Method], allow: &'static str) -> Result<(), OAuthError> {
    if methods.contains(req.method()) {
        Ok(())
    } else {
        Err(OAuthError::MethodNotAllowed { allow })
    }
}

/// Public, cacheable JSON (keys and metadata hold no secrets).
fn public_json(req: &Request<Bytes>, body: Bytes, content_type: &'static str) -> Response<Bytes> {
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// RFC 8414 §2 metadata: only what is implemented is advertised.
fn metadata(settings: &Settings) -> serde_json::Value {
    let base = settings.issuer.trim_end_matches('/');
    let scopes: Vec<&str> = settings.scopes.iter().map(|s| s.name.as_str()).collect();
    json!({
        "issuer": settings.issuer,
        "authorization_endpoint": format!("{base}/oauth2/authorize"),
        "token_endpoint": format!("{base}/oauth2/token"),
        "jwks_uri": format!("{base}/oauth2/jwks"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "scopes_supported": scopes,
        "response_types_supported": ["code", "token"],
        "response_modes_supported": ["query", "fragment"],
        "grant_types_supported": [
            "authorization_code", "implicit", "client_credentials", "password", "refresh_token",
        ],
        "code_challenge_methods_supported": ["S256"],
        // RFC 9207: every authorization response names its issuer.
        "authorization_response_iss_parameter_supported": true,
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_aliases() {
        for path in [
            "/oauth2/authorize",
            "/invoke/pub.apigateway.oauth2/authorize",
            "/oauth2/token",
            "/invoke/pub.apigateway.oauth2/getAccessToken",
            "/invoke/pub.oauth/refreshAccessToken",
            "/oauth2/introspect",
            "/invoke/pub.oauth/introspectToken",
            "/oauth2/revoke",
            "/oauth2/jwks",
            "/.well-known/oauth-authorization-server",
            "/oauth2/tokens/remove-expired",
            "/invoke/pub.oauth/removeExpiredAccessTokens",
        ] {
            assert!(is_endpoint(path), "{path}");
        }
        assert!(!is_endpoint("/oauth2/token/"));
        assert!(!is_endpoint("/travels/oauth2/token"));
    }

    #[test]
    fn only_removing_expired_tokens_needs_the_admin_credentials() {
        for path in [
            "/oauth2/tokens/remove-expired",
            "/invoke/pub.oauth/removeExpiredAccessTokens",
        ] {
            assert!(needs_admin(path), "{path}");
        }
        for path in [
            "/oauth2/authorize",
            "/oauth2/token",
            "/invoke/pub.apigateway.oauth2/getAccessToken",
            "/oauth2/introspect",
            "/invoke/pub.oauth/introspectToken",
            "/oauth2/revoke",
            "/oauth2/jwks",
            "/travels/oauth2/tokens/remove-expired",
        ] {
            assert!(!needs_admin(path), "{path}");
        }
    }

    fn request(method: Method, path: &str, body: &'static str) -> Request<Bytes> {
        let mut req = Request::new(Bytes::from_static(body.as_bytes()));
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().expect("path");
        req
    }

    #[test]
    fn secrets_are_found_in_a_query_in_any_spelling() {
        for query in [
            "client_secret=s",
            "a=1&password=p",
            "c%6Fde=x",
            "refresh_token",
            "x=1&token=t&y",
        ] {
            assert!(secret_in_query(Some(query)), "{query}");
        }
        for query in ["", "client_id=app", "a=%ff", "scope=token&code_challenge=x"] {
            assert!(!secret_in_query(Some(query)), "{query}");
        }
        assert!(!secret_in_query(None));
    }

    #[test]
    fn the_requests_that_may_check_a_password_are_told_apart() {
        let grant = "grant_type=password&username=alice&password=p%40ss";
        let login = "client_id=app&username=alice&password=secret";
        for (method, path, body) in [
            (Method::POST, "/oauth2/token", grant),
            (
                Method::POST,
                "/invoke/pub.apigateway.oauth2/getAccessToken",
                grant,
            ),
            (Method::POST, "/oauth2/authorize", login),
            // Read as the endpoints read them: repeated, or a grant type
            // spelled with escapes, still checks the (first) password.
            (Method::POST, "/oauth2/token", "password=a&password=b"),
            (
                Method::POST,
                "/oauth2/token",
                "grant_type=pass%77ord&password=x",
            ),
        ] {
            assert!(
                may_check_password(&request(method, path, body)),
                "{path} {body}"
            );
        }
        for (method, path, body) in [
            (
                Method::POST,
                "/oauth2/token",
                "grant_type=client_credentials",
            ),
            (
                Method::POST,
                "/oauth2/token",
                "grant_type=password&username=a&password=",
            ),
            (Method::POST, "/oauth2/introspect", "token=t&password=x"),
            (Method::GET, "/oauth2/authorize", login),
        ] {
            assert!(
                !may_check_password(&request(method, path, body)),
                "{path} {body}"
            );
        }
    }
}
