//! A running gateway: the live snapshot, the runtime of the data path, and
//! the listeners (API ports and admin port). `start` compiles everything
//! before binding a socket; `reload` compiles a new snapshot and swaps it in.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::Response;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::Admin;
use crate::auth::servers::Authenticator;
use crate::authz_server::AuthorizationServer;
use crate::basic_auth::{admin_access, Access};
use crate::central::Link;
use crate::config::{self, Env, Invalid, Snapshot};
use crate::http1::raw_fields::set_own;
use crate::http1::request_encode::AddedFields;
use crate::proxy::{self, correlate, Body, Connection, Runtime, Upstreams};
use crate::reload::swap::ThreadSnapshot;
use crate::reload::{Live, Reloader, Source, StartLatch, Watcher};
use crate::server::{self, ConnSettings, Transport};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] Invalid),
    #[error("ports.https: {0}")]
    Tls(#[from] server::tls::TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen on port {} ({addr}): {source}; is another process serving it?", addr.port())]
    PortInUse {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the authorization server cannot start: {0}")]
    AuthorizationServer(String),
    #[error("{0}")]
    Central(#[from] crate::central::StartError),
    #[error("{0}")]
    Throttle(String),
}

/// Shared state of one gateway instance. Lower layers get narrow handles
/// out of it (the [`Reloader`], the admin port's [`Admin`]), never this.
pub struct State {
    pub live: Arc<Live>,
    pub runtime: Runtime,
    /// The one reload pipeline (file, SIGHUP, REST, central).
    pub reloader: Arc<Reloader>,
    pub admin: Arc<Admin>,
    /// This instance's authorization server, when `authorization_server:` is on.
    pub authz: Arc<ArcSwapOption<AuthorizationServer>>,
    /// The export served as a central; the document downloaded as a downstream.
    pub central: Arc<Link>,
    /// When its ports stop, and whether their drain timeout has passed.
    pub shutdown: server::Shutdown,
    /// What the authorization server's endpoints hold of request bodies
    /// at once, every connection together ([`HELD_BODIES`]).
    pub held_bodies: proxy::room::Room,
}

/// What the request bodies the authorization server's endpoints hold
/// whole may hold at once beyond their first 8 KiB (`proxy::OWN_BYTES`),
/// every connection together (each one's bounded by its endpoint's
/// limit, `authz_server::MAX_BODY`): without it, as many connections as
/// `limits.max_connections` allows could each make the gateway hold one
/// (640 MiB with the defaults), more over HTTP/2. Past it, 503 with
/// `Retry-After: 1` until some are answered; a token request (a few
/// hundred bytes) is never refused for it.
pub const HELD_BODIES: usize = 64 << 20;

impl State {
    /// Compiles the configuration again and swaps it in, or keeps the
    /// serving snapshot and records the findings. Blocking: async code
    /// uses [`Reloader::reload_on_blocking_pool`].
    pub fn reload(&self, source: Source) -> Result<u64, Invalid> {
        self.reloader.reload(source)
    }
}

/// A started gateway with its bound addresses.
pub struct Gateway {
    pub state: Arc<State>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    /// Reloads on changes of the configuration files (none if the platform
    /// refused a watch: signal and REST reloads still work).
    watcher: Option<Watcher>,
}

impl Gateway {
    /// Loads `config_path` (with the settings of its central gateway merged
    /// over it, when it downloads them), binds the listeners and starts serving.
    pub async fn start(config_path: &Path, env: Env) -> Result<Gateway, StartError> {
        let settings = config::api_gateway(config_path, &env)?;
        let mut document = match &settings {
            Some(settings) => crate::central::first_document(settings).await?,
            None => None,
        };
        let loaded = match crate::central::load(config_path, None, &env, 1, document.as_deref()) {
            Ok(loaded) => loaded,
            Err(invalid) => {
                // A download that does not merge with the file: the last
                // good one instead, when there is one.
                let fresh = document.as_ref().is_some_and(|d| d.downloaded_at.is_some());
                let cached = settings
                    .as_ref()
                    .filter(|_| fresh)
                    .and_then(crate::central::cached_document)
                    .ok_or_else(|| invalid.clone())?;
                tracing::error!("the downloaded settings do not merge with the file; starting from the cached download:\n{invalid}");
                let loaded = crate::central::load(config_path, None, &env, 1, Some(&cached))
                    .map_err(|_| invalid)?;
                document = Some(cached);
                loaded
            }
        };
        server::tls::check(&loaded.snapshot, std::time::SystemTime::now())?;
        for (variable, setting) in &loaded.overrides {
            tracing::info!(
                variable,
                setting,
                "an MCGW_ variable (or the flag of `start` standing for it) sets a setting of the file"
            );
        }
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        // The document is in the link before anything listens or watches:
        // a reload from the first moment (REST, SIGHUP, the file) merges it.
        let central = Arc::new(Link::default());
        if let (Some(settings), Some(_)) = (&settings, &document) {
            // Downloaded for them now, or read from a cache recorded so.
            central.answered_for(settings);
        }
        central.adopt(document.clone());
        let mut gateway = Gateway::start_with(config_path, env, loaded.snapshot, central).await?;
        if let (Some(settings), Some(document)) = (&settings, &document) {
            crate::central::keep(settings, document);
        }
        let poller =
            crate::reload::follow::run(gateway.state.reloader.clone(), gateway.stop.subscribe());
        gateway.tasks.spawn(poller);
        Ok(gateway)
    }

    /// Starts serving an already compiled snapshot, which `central` holds
    /// the downloaded document of (if any): every reload merges it, from
    /// the first the listeners or the file watcher may ask for.
    pub async fn start_with(
        config_path: &Path,
        env: Env,
        mut snapshot: Snapshot,
        central: Arc<Link>,
    ) -> Result<Gateway, StartError> {
        crate::reload::reloader::generate_signing_key(&mut snapshot)
            .map_err(StartError::AuthorizationServer)?;
        let settings = ConnSettings {
            limits: snapshot.limits,
            timeouts: snapshot.timeouts,
        };
        let listen = snapshot.listen.clone();
        if let Some(descriptors) = server::fds::raise_limit() {
            // Each connection takes one, and its upstream connection another;
            // each HTTP/2 request beyond its connection's first, one more.
            // The limits hold per port: an HTTP and an HTTPS port need both.
            let limits = settings.limits;
            let ports = u64::from(listen.http.is_some()) + u64::from(listen.https.is_some());
            let wanted = u64::try_from(limits.max_connections)
                .unwrap_or(u64::MAX)
                .saturating_mul(2)
                .saturating_add(u64::try_from(limits.max_streams).unwrap_or(u64::MAX))
                .saturating_mul(ports);
            if wanted > descriptors {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    max_streams = limits.max_streams,
                    descriptors,
                    "the process may open fewer files than limits.max_connections and limits.max_streams need (2 × max_connections + max_streams: each client and its upstream connection, and each HTTP/2 request forwarded beyond a connection's first); accepts and upstream connects fail before the limits are reached (raise `ulimit -n`)"
                );
            }
        }
        let runtime = Runtime {
            auth: Arc::new(Authenticator::default()),
            upstreams: Upstreams::new(snapshot.timeouts.upstream_connect),
            throttle: Arc::default(),
            identifier: crate::proxy::identify::Identifier::default(),
            limits: snapshot.limits,
        };
        let generation = snapshot.generation;
        let live = Arc::new(Live::new(snapshot));
        let tls = match listen.https {
            Some(_) => {
                let live = live.clone();
                let certificate = server::tls::LiveCertificate::new(move || live.snapshot())?;
                Some(Arc::new(server::tls::LiveTls::new(certificate)?))
            }
            None => None,
        };
        let authz = Arc::new(ArcSwapOption::empty());
        let start = StartLatch::new(live.clone(), runtime.auth.clone(), authz.clone());
        let reloader = Arc::new(Reloader {
            live,
            config_path: config_path.to_path_buf(),
            env,
            central,
            authz,
            auth: runtime.auth.clone(),
            throttle: runtime.throttle.clone(),
            health: runtime.upstreams.health().clone(),
            start: Arc::new(start),
            tls: tls.clone(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let state = Arc::new(State {
            live: reloader.live.clone(),
            runtime,
            admin: Arc::new(Admin::new(reloader.clone())),
            authz: reloader.authz.clone(),
            central: reloader.central.clone(),
            reloader,
            shutdown: server::Shutdown::new(stop_rx),
            held_bodies: proxy::room::Room::new(HELD_BODIES),
        });
        let first = state.live.snapshot();
        let store = state
            .runtime
            .throttle
            .prepare(&first)
            .map_err(StartError::Throttle)?;
        state
            .reloader
            .prepare_authz(&first)
            .map_err(StartError::AuthorizationServer)?;
        state.runtime.auth.prepare(&first);
        state.runtime.upstreams.health().prepare(&first);
        state.runtime.throttle.bind(&first, store);
        drop(first);
        tracing::debug!(generation, "first snapshot prepared");
        let mut tasks = JoinSet::new();
        let mut gateway = Gateway {
            state: state.clone(),
            http: None,
            https: None,
            admin: None,
            stop,
            tasks: JoinSet::new(),
            watcher: None,
        };
        let serving = |transport| Serving {
            settings,
            slots: server::connection_slots(settings),
            shutdown: state.shutdown.clone(),
            transport,
            pin_threads: listen.pin_threads,
        };
        if let Some(addr) = listen.http {
            let serving = serving(Transport::Plain);
            gateway.http = Some(serve_per_core(&state, addr, serving, &mut tasks)?);
        }
        if let (Some(addr), Some(tls)) = (listen.https, tls) {
            let serving = serving(Transport::Tls(tls));
            gateway.https = Some(serve_per_core(&state, addr, serving, &mut tasks)?);
        }
        if let Some(addr) = listen.admin {
            let listener = bind(addr).await?;
            gateway.admin = listener.local_addr().ok();
            let admin = state.admin.clone();
            let handler = move |req, peer: SocketAddr| {
                let admin = admin.clone();
                async move { crate::admin::handle(&admin, req, peer.ip()).await }
            };
            tasks.spawn(server::serve(
                listener,
                Transport::Plain,
                settings,
                server::connection_slots(settings),
                state.shutdown.clone(),
                None,
                handler,
            ));
        }
        state.reloader.start.set_listening();
        // Ends once the start is met: from then on the JWKS of what a
        // reload adds no longer count for readiness.
        tasks.spawn(
            state
                .reloader
                .start
                .clone()
                .watch(state.shutdown.stop.clone()),
        );
        gateway.tasks = tasks;
        gateway.watcher = Watcher::spawn(state.reloader.clone())
            .inspect_err(|error| tracing::warn!("{error}; reload with SIGHUP or the REST API"))
            .ok();
        Ok(gateway)
    }

    /// Stops accepting, drains in-flight requests (bounded by
    /// `timeouts.drain`) and returns when every listener has finished.
    pub async fn shutdown(mut self) {
        if let Some(watcher) = self.watcher.take() {
            // Bounded: a watcher held by a file it reads (a stalled
            // network mount) must not hold the drain; it is left behind.
            let stopped = tokio::task::spawn_blocking(move || watcher.stop());
            let _ = tokio::time::timeout(WATCHER_STOP, stopped).await;
        }
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// How long a shutdown waits for the configuration watcher to stop.
const WATCHER_STOP: Duration = Duration::from_secs(2);

/// What one listener thread serves its requests with. Each request holds
/// a clone of this thread's `Arc` (the shared ones' counts stay untouched
/// on the request path: see [`ThreadSnapshot`]).
struct ThreadState {
    state: Arc<State>,
    snapshot: ThreadSnapshot,
}

/// One request on an API port: timed, counted and logged.
#[allow(clippy::manual_async_fn)] // an `async fn` holds its arguments twice (see `proxy::serve::serve`)
fn handle_api(
    here: Arc<ThreadState>,
    mut req: http::Request<Body>,
    mut conn: Connection,
) -> impl Future<Output = Response<Body>> {
    async move {
        let state = &*here.state;
        let started = crate::timer::clock::now_std();
        let method = req.method().clone();
        let snapshot = state.live.snapshot_here(&here.snapshot);
        // What only the access log needs, only when it is on: the path, and
        // the client's address as `trusted_proxies` make it known.
        let logged = crate::access_log::is_on().then(|| {
            // An unknown client's request is refused; the log names its peer.
            let client =
                proxy::forwarded::client_ip(req.headers(), conn.peer, &snapshot.trusted_proxies)
                    .unwrap_or(conn.peer.ip());
            (req.uri().path().to_owned(), client)
        });
        conn.from_trusted = snapshot
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&conn.peer.ip()));
        let mut added = AddedFields::new();
        let request_id = correlate::correlate(
            req.headers_mut(),
            conn.from_trusted,
            &mut added,
            snapshot.forwarding,
        );
        // Dropped before an answer (the client left, or reset its stream),
        // the request is still counted and logged.
        let mut unanswered = Unanswered {
            started,
            method: &method,
            logged: logged.as_ref(),
            request_id: request_id.as_ref(),
            answered: false,
            shutdown: &state.shutdown,
            api: None,
        };
        let authz = (state.authz.load_full())
            .filter(|_| crate::authz_server::is_endpoint(req.uri().path()));
        let mut response = match authz {
            // Past the port's `limits.max_streams`, as an API's request is
            // (`proxy::serve`): refused before its body is read.
            Some(_) if proxy::past_max_streams(&req) => {
                proxy::Rejection::TooManyStreams.into_response()
            }
            Some(authz) => Box::pin(authz_endpoint(&snapshot, &authz, state, conn, req)).await,
            _ => {
                let api = &mut unanswered.api;
                proxy::serve(&snapshot, &state.runtime, conn, req, &mut added, api).await
            }
        };
        unanswered.answered = true;
        if let Some(id) = &request_id {
            set_own(&mut response, &correlate::X_REQUEST_ID, id.clone());
        }
        unanswered.record(response.status());
        response
    }
}

/// Status counted and logged for a request whose client left before its
/// answer (nginx's "client closed request").
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// What a request's line and counts need; recorded once answered, or, if
/// dropped unanswered, with [`CLIENT_CLOSED_REQUEST`], or 503 when the
/// shutdown's drain timeout cut it — under the API it matched, if it
/// got that far.
struct Unanswered<'a> {
    started: Instant,
    method: &'a http::Method,
    logged: Option<&'a (String, std::net::IpAddr)>,
    request_id: Option<&'a http::HeaderValue>,
    answered: bool,
    shutdown: &'a server::Shutdown,
    /// The API the request matched, once known (`proxy::serve`).
    api: Option<&'a Arc<crate::config::snapshot::Api>>,
}

impl Unanswered<'_> {
    fn record(&self, status: http::StatusCode) {
        let series = self
            .api
            .map_or(crate::metrics::ApiMetrics::unmatched(), |a| &a.metrics);
        let api = self.api.map_or("-", |a| a.name.as_str());
        series.count_response(self.method, status);
        let elapsed = crate::timer::clock::now_std().saturating_duration_since(self.started);
        crate::metrics::get().observe_request(elapsed.as_secs_f64());
        if let Some((path, client)) = self.logged {
            crate::access_log::write(&crate::access_log::Entry {
                client: *client,
                request_id: self
                    .request_id
                    .and_then(|id| id.to_str().ok())
                    .unwrap_or("-"),
                method: self.method.as_str(),
                path,
                api,
                status: status.as_u16(),
                micros: elapsed.as_micros() as u64,
            });
        }
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let status = if self.shutdown.is_forced() {
            // Not the client's doing: the drain gave it all it had.
            crate::metrics::get().requests_cut_by_shutdown.inc();
            http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            crate::metrics::client_error("gone");
            // A status outside the standard ones is a valid code: it
            // cannot fail.
            match http::StatusCode::from_u16(CLIENT_CLOSED_REQUEST) {
                Ok(status) => status,
                Err(_) => return,
            }
        };
        self.record(status);
    }
}

/// Hands a request on an API port to the authorization server: the body
/// is read up to its limit, the request classified as HTTPS (TLS, or
/// `https` from a trusted proxy), its caller's address made known and,
/// for the endpoints that need them, admin credentials checked.
async fn authz_endpoint(
    snapshot: &Snapshot,
    authz: &AuthorizationServer,
    state: &State,
    conn: Connection,
    req: http::Request<Body>,
) -> Response<Body> {
    let logins = &state.admin.logins;
    let forwarded_https = conn.from_trusted
        && req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    // Failed logins and client authentications count against the caller
    // as `trusted_proxies` make it known (its proxy's address when it is
    // unknown).
    let address = proxy::forwarded::client_ip(req.headers(), conn.peer, &snapshot.trusted_proxies)
        .unwrap_or(conn.peer.ip());
    // Only the admin endpoints judge the admin credentials: a client's own
    // Basic credentials at the token, introspection or revocation endpoint
    // (the gateway's own introspection calls among them) are no failed
    // admin login, and must not lock its address out of the admin port.
    let admin_ok = if crate::authz_server::needs_admin(req.uri().path()) {
        match admin_access(snapshot, req.headers(), logins, address) {
            Access::Granted => Some(true),
            // Locked: refused unchecked, as a wrong password is.
            Access::Denied | Access::Locked(_) => Some(false),
            Access::Open => None,
        }
    } else {
        None
    };
    let ctx = crate::authz_server::RequestContext {
        is_https: conn.tls || forwarded_https,
        address,
        admin_ok,
    };
    let (parts, body) = req.into_parts();
    let room = parts.extensions.get::<proxy::BodyRoom>().cloned();
    let (collected, _held) = match proxy::collect_limited(
        body,
        crate::authz_server::MAX_BODY,
        room,
        &state.held_bodies,
    )
    .await
    {
        Ok(collected) => collected,
        // In the endpoints' own terms (RFC 6749 §5.2's error codes).
        Err(proxy::Rejection::PayloadTooLarge) => {
            return crate::authz_server::error::OAuthError::BodyTooLarge {
                limit: crate::authz_server::MAX_BODY,
            }
            .into_response()
            .map(proxy::full)
        }
        Err(rejection) => return rejection.into_response(),
    };
    let response = authz
        .handle(http::Request::from_parts(parts, collected), ctx)
        .await;
    response.map(proxy::full)
}

/// One `SO_REUSEPORT` socket per core on `addr` (the kernel spreads new
/// connections over them), each to be served by a thread of its own — the
/// worker model of nginx: no request or upstream connection is handed from
/// one thread to another.
fn bind_per_core(addr: SocketAddr) -> Result<Vec<std::net::TcpListener>, StartError> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bind_one = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    };
    // SO_REUSEPORT would let this process join a group that another
    // process already serves and silently take part of its traffic: a
    // plain bind first fails when anything listens on the port.
    if addr.port() != 0 {
        std::net::TcpListener::bind(addr)
            .map_err(|source| StartError::PortInUse { addr, source })?;
    }
    let first = bind_one(addr).map_err(|source| StartError::Bind { addr, source })?;
    // Port 0 picks a port once; the others join the socket group on it.
    let bound = first
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_one(bound).map_err(|source| StartError::Bind {
            addr: bound,
            source,
        })?);
    }
    Ok(listeners)
}

/// Serves an API port on one socket and thread per core (see
/// `bind_per_core`), each thread on a CPU of its own where
/// `server::cpus::plan` says so; returns the bound address.
fn serve_per_core(
    state: &Arc<State>,
    addr: SocketAddr,
    serving: Serving,
    tasks: &mut JoinSet<()>,
) -> Result<SocketAddr, StartError> {
    let listeners = bind_per_core(addr)?;
    let bound = listeners[0]
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let seats = server::spread::seats(listeners.len());
    let cpus = server::cpus::plan(
        &server::cpus::allowed(),
        listeners.len(),
        serving.pin_threads,
    );
    for ((listener, seat), cpu) in listeners.into_iter().zip(seats).zip(cpus) {
        let state = state.clone();
        let serving = serving.clone();
        let thread = std::thread::Builder::new()
            .name("microgateway-api".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(error) = server::cpus::pin_this_thread(cpu) {
                        tracing::warn!(cpu, %error, "cannot pin a listener thread to its CPU");
                    }
                }
                serve_on_this_thread(state, listener, seat, serving)
            })
            .map_err(|source| StartError::Bind { addr, source })?;
        tasks.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        });
    }
    Ok(bound)
}

/// What each thread of a port serves with; `slots` are shared by all of
/// them (one connection limit per port, whichever socket a connection
/// came in on).
#[derive(Clone)]
struct Serving {
    settings: ConnSettings,
    slots: Arc<server::Slots>,
    shutdown: server::Shutdown,
    transport: Transport,
    /// `ports.pin_threads`.
    pin_threads: bool,
}

/// Once a second, what this thread no longer uses is freed: the buffers
/// of its pooled upstream connections idle for a while, then the pages
/// its allocator holds empty (`allocator`).
async fn tidy_this_thread() {
    let mut every = tokio::time::interval(crate::allocator::COLLECT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        Upstreams::cool_pool_of_this_thread();
        crate::allocator::collect_this_thread();
    }
}

/// Serves one listener on a single-threaded runtime owned by this thread,
/// with this thread's own upstream pool, until `stop`.
fn serve_on_this_thread(
    state: Arc<State>,
    listener: std::net::TcpListener,
    seat: server::spread::Seat,
    serving: Serving,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start a listener thread");
            return;
        }
    };
    state.runtime.upstreams.pin_pool_to_this_thread();
    let deadlines = crate::timer::drive_on_this_thread();
    let Serving {
        settings,
        slots,
        shutdown,
        transport,
        pin_threads: _,
    } = serving;
    let tls = matches!(transport, Transport::Tls(_));
    let throttle = Arc::clone(&state.runtime.throttle);
    runtime.block_on(async move {
        tokio::spawn(deadlines);
        tokio::spawn(tidy_this_thread());
        tokio::spawn(async move { throttle.connect_this_thread().await });
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot serve a listener");
                return;
            }
        };
        let here = Arc::new(ThreadState {
            state,
            snapshot: ThreadSnapshot::default(),
        });
        let handler = move |req: http::Request<Body>, peer| {
            let here = here.clone();
            // Boxed once here: the request's future is a few KiB, and the
            // layers above would otherwise copy it each time they move it.
            let client_cert = req
                .extensions()
                .get::<crate::proxy::serve::ClientCertificate>()
                .map(|c| c.0);
            crate::proxy::pin_in_place(|| {
                handle_api(
                    here,
                    req,
                    Connection {
                        peer,
                        tls,
                        client_cert,
                        // Decided by `handle_api`, against the snapshot the
                        // request is served on.
                        from_trusted: false,
                    },
                )
            })
        };
        server::serve(
            listener,
            transport,
            settings,
            slots,
            shutdown,
            Some(seat),
            handler,
        )
        .await;
    });
}
