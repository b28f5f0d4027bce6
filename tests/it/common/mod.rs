//! Builders shared by the integration tests: an in-process gateway started
//! from inline YAML, test upstreams that count what reaches them, and a
//! small HTTP client. Everything listens on 127.0.0.1 port 0.
#![allow(dead_code)]

pub mod chromium;
pub mod idp;
pub mod oauth;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod recording;
pub mod redis;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub use microgateway::config::Env;

/// Installs the process-wide rustls provider once (tests may build TLS configs).
pub fn crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A gateway running in this process on a configuration written to a
/// temporary directory.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub inner: Option<microgateway::gateway::Gateway>,
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub client: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway on `yaml`; `ports.http`/`admin.port` should be 0.
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_with_env(yaml, Env::new()).await
    }

    pub async fn start_with_env(yaml: &str, env: Env) -> Gateway {
        Gateway::try_start(yaml, env)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start:\n{e}"))
    }

    pub async fn try_start(yaml: &str, env: Env) -> Result<Gateway, String> {
        crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("microgateway.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let inner = microgateway::gateway::Gateway::start(&config, env)
            .await
            .map_err(|e| e.to_string())?;
        let http = inner.http.expect("ports.http is set");
        let admin = inner.admin;
        Ok(Gateway {
            dir,
            config,
            http,
            admin,
            inner: Some(inner),
            client: client(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin.expect("admin port"), path)
    }

    /// The JSON the admin port answers at `path` (no credentials).
    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.admin_url(path))
            .send()
            .await
            .expect("an admin answer")
            .json()
            .await
            .expect("JSON")
    }

    pub fn state(&self) -> &Arc<microgateway::gateway::State> {
        &self.inner.as_ref().expect("running").state
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// The Prometheus text of the admin port.
    pub async fn metrics(&self) -> String {
        let resp = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics");
        resp.text().await.expect("metrics text")
    }

    /// The status of `/health/ready`.
    pub async fn readiness(&self) -> u16 {
        let resp = self
            .client
            .get(self.admin_url("/health/ready"))
            .send()
            .await
            .expect("readiness");
        resp.status().as_u16()
    }

    /// Waits until `/health/ready` answers 200 (JWKS fetched).
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.readiness().await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the gateway did not become ready");
    }

    /// Rewrites the configuration file (a reload test then waits for the generation).
    pub fn write_config(&self, yaml: &str) {
        std::fs::write(&self.config, yaml).expect("write config");
    }

    /// Waits until the serving generation is at least `generation`.
    pub async fn wait_generation(&self, generation: u64) {
        for _ in 0..200 {
            if self.state().live.generation() >= generation {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("generation {generation} not reached");
    }

    pub async fn shutdown(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.shutdown().await;
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// The body of a `GET` of `url` (an admin endpoint of a process, say).
pub async fn text_of(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    let resp = client.get(url).send().await.expect("answered");
    resp.text().await.expect("a text body")
}

/// What a test upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Serves every connection `listener` accepts (HTTP/1.1, or HTTP/2 by
/// prior knowledge) with `handle`, until the returned task is aborted.
pub fn serve_each<H, F>(listener: TcpListener, handle: H) -> tokio::task::JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let answer = handle(req);
                    async move { Ok::<_, Infallible>(answer.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A test upstream: answers 200 with a small JSON body, records every
/// request, optionally after a delay.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub delay: Arc<Mutex<Duration>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (h, r, d) = (hits.clone(), received.clone(), delay.clone());
        let task = serve_each(listener, move |req: Request<Incoming>| {
            let (h, r, d) = (h.clone(), r.clone(), d.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                r.lock().unwrap().push(Received {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    headers: parts.headers.clone(),
                    body,
                });
                let wait = *d.lock().unwrap();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                let mut response = Response::new(Full::new(Bytes::from_static(b"{\"ok\":true}")));
                response
                    .headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                response
                    .headers_mut()
                    .insert("connection", "x-upstream-hop".parse().unwrap());
                response
                    .headers_mut()
                    .insert("x-upstream-hop", "1".parse().unwrap());
                response
            }
        });
        Upstream {
            addr,
            hits,
            received,
            delay,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until `done` holds, looking every 10 ms; panics if it does not
/// within `within`.
pub async fn wait_until(within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not so within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A map for `Gateway::start_with_env`.
pub fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
}

/// Whether a socket bound to `::` here also takes IPv4 connections (IPv6
/// on, `bindv6only` off): a test of a dual-stack listener is skipped
/// without one.
pub fn dual_stack() -> bool {
    let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
        return false;
    };
    let Ok(bound) = listener.local_addr() else {
        return false;
    };
    let v4 = SocketAddr::from(([127, 0, 0, 1], bound.port()));
    std::net::TcpStream::connect_timeout(&v4, Duration::from_secs(2)).is_ok()
}

/// Sends raw bytes on a new connection and returns what came back (up to
/// the connection's close or 5 s).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The value of one series (`name{label="value",...}`, labels in the order
/// the exposition prints them) in Prometheus text; 0 when absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A body that sends what arrives on `rx`, and ends when `rx` closes.
pub fn channel_body(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>>,
> {
    http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok(hyper::body::Frame::data(b)), rx))
    }))
}

/// A loopback address where connections are refused (RST), reserved while
/// the value lives: its socket is bound and never listens, so no other
/// test (or the kernel's choice of a free port) can take the port, as it
/// could one freed by dropping a listener.
pub struct Refusing {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl Refusing {
    pub fn new() -> Refusing {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let addr = socket.local_addr().expect("addr");
        Refusing {
            addr,
            _socket: socket,
        }
    }
}

/// Makes a FIFO at `path`.
#[cfg(unix)]
pub fn mkfifo(path: &std::path::Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}
