//! A running gateway: the live snapshot, the runtime of the data path, and
//! the listeners (API ports and admin port). `start` compiles everything
//! before binding a socket; `reload` compiles a new snapshot and swaps it in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http::Response;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::servers::Authenticator;
use crate::config::{self, Env, Invalid, Snapshot};
use crate::proxy::{self, Body, Connection, Runtime, Upstreams};
use crate::reload::{Live, Source};
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
}

/// Shared state of one gateway instance.
pub struct State {
    pub live: Live,
    pub runtime: Runtime,
    pub config_path: PathBuf,
    pub env: Env,
    pub started: Instant,
    pub listening: AtomicBool,
}

impl State {
    /// Compiles the configuration again and swaps it in, or keeps the
    /// serving snapshot and records the findings.
    pub fn reload(&self, source: Source) -> Result<u64, Invalid> {
        let next = self.live.generation() + 1;
        match config::load(&self.config_path, &self.env, next) {
            Ok(loaded) => Ok(self.install(source, loaded.snapshot)),
            Err(invalid) => {
                tracing::error!(
                    source = source.label(),
                    "configuration refused; the last good one keeps serving:\n{invalid}"
                );
                self.live.refuse(source, invalid.to_string());
                Err(invalid)
            }
        }
    }

    /// Prepares the runtime for `snapshot`, then swaps it in.
    pub fn install(&self, source: Source, snapshot: Snapshot) -> u64 {
        let generation = snapshot.generation;
        self.runtime.auth.prepare(&snapshot);
        self.live.swap(source, snapshot);
        tracing::info!(generation, source = source.label(), "configuration applied");
        generation
    }

    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) && self.runtime.auth.is_ready()
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
}

impl Gateway {
    /// Loads `config_path`, binds the listeners and starts serving.
    pub async fn start(config_path: &Path, env: Env) -> Result<Gateway, StartError> {
        let loaded = config::load(config_path, &env, 1)?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        Gateway::start_with(config_path, env, loaded.snapshot).await
    }

    /// Starts serving an already compiled snapshot.
    pub async fn start_with(
        config_path: &Path,
        env: Env,
        snapshot: Snapshot,
    ) -> Result<Gateway, StartError> {
        let settings = ConnSettings {
            limits: snapshot.limits,
            timeouts: snapshot.timeouts,
        };
        let listen = snapshot.listen.clone();
        let runtime = Runtime {
            auth: Authenticator::default(),
            upstreams: Upstreams::new(snapshot.timeouts.upstream_connect),
        };
        runtime.auth.prepare(&snapshot);
        let state = Arc::new(State {
            live: Live::new(snapshot),
            runtime,
            config_path: config_path.to_path_buf(),
            env,
            started: Instant::now(),
            listening: AtomicBool::new(false),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut gateway = Gateway {
            state: state.clone(),
            http: None,
            https: None,
            admin: None,
            stop,
            tasks: JoinSet::new(),
        };
        if let Some(addr) = listen.http {
            let listener = bind(addr).await?;
            gateway.http = listener.local_addr().ok();
            let state = state.clone();
            let handler = move |req, peer| {
                let state = state.clone();
                async move { handle_api(&state, req, Connection { peer, tls: false }).await }
            };
            tasks.spawn(server::serve(
                listener,
                Transport::Plain,
                settings,
                stop_rx.clone(),
                handler,
            ));
        }
        if let Some(addr) = listen.https {
            let live = state.clone();
            let certificate = server::tls::LiveCertificate::new(move || live.live.snapshot())?;
            let transport = Transport::Tls(certificate.acceptor()?);
            let listener = bind(addr).await?;
            gateway.https = listener.local_addr().ok();
            let state = state.clone();
            let handler = move |req, peer| {
                let state = state.clone();
                async move { handle_api(&state, req, Connection { peer, tls: true }).await }
            };
            tasks.spawn(server::serve(
                listener,
                transport,
                settings,
                stop_rx.clone(),
                handler,
            ));
        }
        if let Some(addr) = listen.admin {
            let listener = bind(addr).await?;
            gateway.admin = listener.local_addr().ok();
            let state = state.clone();
            let handler = move |req, _peer| {
                let state = state.clone();
                async move { crate::admin::handle(&state, req).await }
            };
            tasks.spawn(server::serve(
                listener,
                Transport::Plain,
                settings,
                stop_rx.clone(),
                handler,
            ));
        }
        gateway.tasks = tasks;
        state.listening.store(true, Ordering::Release);
        Ok(gateway)
    }

    /// Stops accepting, drains in-flight requests (bounded by
    /// `timeouts.drain`) and returns when every listener has finished.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// One request on an API port: timed, counted and logged.
async fn handle_api(
    state: &State,
    req: http::Request<hyper::body::Incoming>,
    conn: Connection,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let snapshot = state.live.snapshot();
    let (response, api) = proxy::serve(&snapshot, &state.runtime, conn, req).await;
    let status = response.status();
    let api_name = api.as_ref().map_or("-", |a| a.name.as_str());
    let metrics = crate::metrics::get();
    metrics
        .requests
        .with_label_values(&[api_name, method.as_str(), status.as_str()])
        .inc();
    let class = match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics
        .responses
        .with_label_values(&[api_name, class])
        .inc();
    let elapsed = started.elapsed();
    metrics.request_duration.observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "microgateway::access",
        client = %conn.peer.ip(),
        method = %method,
        path = %path,
        api = api_name,
        status = status.as_u16(),
        micros = elapsed.as_micros() as u64,
        "request"
    );
    response
}
