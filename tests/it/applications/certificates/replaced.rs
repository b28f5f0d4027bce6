//! A reload that replaces the client-certificate setting (`client_ca`,
//! `client_auth`) ends the connections verified under the previous one:
//! the certificate is checked at the handshake only, so a connection kept
//! busy would otherwise keep the access of a CA no longer trusted. A
//! reload that leaves the setting as it was ends none.

use super::*;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Longer than anything here takes: a connection closed within it was
/// closed by the change, not by a timeout (`timeouts.idle` is 10 min).
const BOUND: Duration = Duration::from_secs(20);

/// A gateway whose `client_ca` (required) is `ca.pem` in `dir`, its
/// server certificate for `localhost` and an upstream; what these tests
/// hold of it.
struct World {
    dir: tempfile::TempDir,
    server: CertificateDer<'static>,
    gw: Gateway,
    addr: SocketAddr,
    /// Trusted by the first CA (whose certificate is `Partner`'s).
    returning: Arc<rustls::ClientConfig>,
    partner: String,
    unrelated: String,
}

impl World {
    async fn start(upstream: &str, websocket: SocketAddr) -> World {
        let (dir, server) = served_as_localhost();
        let first = ca();
        std::fs::write(dir.path().join("ca.pem"), first.pem()).unwrap();
        let partner = client(&first, "partner");
        let unrelated = client(&first, "unrelated").fingerprint();
        let server = server.cert.der().clone();
        let returning = returning_client(&server, Some(&partner));
        let partner_fingerprint = partner.fingerprint();
        let yaml = config(
            dir.path(),
            upstream,
            websocket,
            &partner_fingerprint,
            &unrelated,
        );
        let gw = Gateway::start(&yaml).await;
        let addr = gw.inner.as_ref().unwrap().https.expect("https");
        World {
            dir,
            server,
            gw,
            addr,
            returning,
            partner: partner_fingerprint,
            unrelated,
        }
    }

    /// Reloads the configuration with `upstream`; returns once it serves.
    fn reload(&self, upstream: &str, websocket: SocketAddr) {
        self.gw.write_config(&config(
            self.dir.path(),
            upstream,
            websocket,
            &self.partner,
            &self.unrelated,
        ));
        self.gw
            .state()
            .reload(microgateway::reload::Source::Api)
            .expect("the configuration compiles");
    }

    /// Another CA replaces the first (its key leaked, say).
    fn replace_the_ca(&self) {
        std::fs::write(self.dir.path().join("ca.pem"), ca().pem()).unwrap();
        self.gw
            .state()
            .reload(microgateway::reload::Source::Api)
            .expect("the new CA compiles");
    }

    async fn open(&self, h2: bool) -> Kept {
        Kept::open(self.addr, &self.returning, h2).await
    }
}

/// `client_ca` (required) from `ca.pem` in `dir`; the Certified API on
/// `upstream`, which `partner`'s certificate may call; a WebSocket API
/// (`/live/feed`) on `websocket` that asks for no credential but its
/// connection's certificate; timeouts that close no connection during a
/// test.
fn config(
    dir: &Path,
    upstream: &str,
    websocket: SocketAddr,
    partner: &str,
    unrelated: &str,
) -> String {
    format!(
        r#"
ports: {{ http: 0, https: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
timeouts: {{ idle: 10m, tunnel_idle: 10m }}
tls:
  certificate: {dir}/server.crt
  key: {dir}/server.key
  client_ca: {dir}/ca.pem
  client_auth: required
applications:
- name: Partner
  certificates: ["{partner}"]
  apis: ["Certified"]
- name: Unrelated
  certificates: ["{unrelated}"]
apis:
- name: Certified
  base_path: /certified
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: certificate }}
  resources: ["GET /items"]
- name: Live
  base_path: /live
  websocket: true
  upstream: {{ url: "http://{websocket}/ws" }}
  authentication: {{ type: none }}
  resources: ["GET /feed"]
"#,
        dir = dir.display(),
    )
}

/// An upstream that answers each request only once it is let through,
/// saying when one has come.
struct Gate {
    addr: SocketAddr,
    arrived: mpsc::UnboundedReceiver<()>,
    through: Arc<Semaphore>,
    _task: AbortOnDrop,
}

impl Gate {
    async fn start() -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (came, arrived) = mpsc::unbounded_channel();
        let through = Arc::new(Semaphore::new(0));
        let gate = through.clone();
        let task = common::serve_each(listener, move |_req| {
            let (came, gate) = (came.clone(), gate.clone());
            async move {
                let _ = came.send(());
                gate.acquire().await.unwrap().forget();
                http::Response::new(http_body_util::Full::new(Bytes::from_static(b"{}")))
            }
        });
        Gate {
            addr,
            arrived,
            through,
            _task: AbortOnDrop(task),
        }
    }

    fn url(&self) -> String {
        format!("http://{}/api", self.addr)
    }
}

/// A WebSocket server that echoes every message.
async fn echo_server() -> (SocketAddr, AbortOnDrop) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() || ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, AbortOnDrop(task))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A kept-alive connection presenting a client certificate, and the task
/// that drives it: the task ends when the gateway closes the connection.
struct Kept {
    sender: Sender,
    driven: JoinHandle<()>,
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Kept {
    async fn open(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, h2: bool) -> Kept {
        let mut config = (**config).clone();
        if h2 {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("the handshake succeeds");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await.unwrap();
            let driven = tokio::spawn(async move {
                let _ = conn.await;
            });
            return Kept {
                sender: Sender::H2(sender),
                driven,
            };
        }
        let (sender, conn) = http1::handshake(io).await.unwrap();
        let driven = tokio::spawn(async move {
            let _ = conn.await;
        });
        Kept {
            sender: Sender::H1(sender),
            driven,
        }
    }

    /// Sends GET `path` on this connection; the answer, or why there is
    /// none.
    fn send(
        &mut self,
        path: &str,
    ) -> impl std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, String>>
    {
        let get = |uri: String| {
            http::Request::get(uri)
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        // HTTP/2 takes the authority from the target.
        let sent = match &mut self.sender {
            Sender::H1(sender) => {
                futures_util::future::Either::Left(sender.send_request(get(path.to_owned())))
            }
            Sender::H2(sender) => futures_util::future::Either::Right(
                sender.send_request(get(format!("https://localhost{path}"))),
            ),
        };
        async move { sent.await.map_err(|e| e.to_string()) }
    }

    /// GET `path` on this connection: the status (the body read to its
    /// end), or why there is none.
    async fn get(&mut self, path: &str) -> Result<u16, String> {
        let answer = tokio::time::timeout(BOUND, self.send(path))
            .await
            .expect("an answer or an error")?;
        let status = answer.status().as_u16();
        answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }

    /// Waits for the gateway to close the connection.
    async fn closed(&mut self) {
        tokio::time::timeout(BOUND, &mut self.driven)
            .await
            .expect("the gateway closes the connection")
            .unwrap();
    }
}

#[tokio::test]
async fn a_reload_that_replaces_the_client_ca_closes_http1_connections_verified_by_the_old_one() {
    let upstream = Upstream::start().await;
    let (websocket, _ws) = echo_server().await;
    let world = World::start(&upstream.url("/api"), websocket).await;
    // One connection has served a request and waits for its next; the
    // other sends its next right after the reload.
    let mut idle = world.open(false).await;
    let mut next = world.open(false).await;
    assert_eq!(idle.get("/certified/items").await, Ok(200));
    assert_eq!(next.get("/certified/items").await, Ok(200));

    world.replace_the_ca();

    let refused = next.get("/certified/items").await;
    assert!(
        refused.is_err(),
        "a connection verified by the CA replaced was served: {refused:?}"
    );
    // The idle one is closed without waiting for a request.
    idle.closed().await;
    assert!(idle.get("/certified/items").await.is_err());
    // A new connection with the same certificate does not get through the
    // handshake.
    assert!(get(world.addr, &world.server, None, "/certified/items")
        .await
        .is_err());
    assert!(
        get_with(world.addr, &world.returning, "/certified/items")
            .await
            .is_err(),
        "the old CA's certificate was verified again"
    );
    assert_eq!(upstream.hits(), 2);
    world.gw.shutdown().await;
}

/// An HTTP/1.1 connection idle for a second is parked (its exchanges'
/// future dropped, `tests/it/parked.rs`): it is closed all the same.
#[tokio::test]
async fn a_parked_connection_verified_by_the_old_ca_is_closed() {
    let upstream = Upstream::start().await;
    let (websocket, _ws) = echo_server().await;
    let world = World::start(&upstream.url("/api"), websocket).await;
    let mut conn = world.open(false).await;
    assert_eq!(conn.get("/certified/items").await, Ok(200));
    // Longer than the wait after which a connection is parked (1 s).
    tokio::time::sleep(Duration::from_millis(1600)).await;

    world.replace_the_ca();

    conn.closed().await;
    assert!(conn.get("/certified/items").await.is_err());
    world.gw.shutdown().await;
}

/// A request in flight when the setting changes is answered, and the
/// connection closes after it. (Its answer says `Connection: close` when
/// the connection's watchdog has seen the change before the answer was
/// ready, which a busy machine may delay: not asserted.)
#[tokio::test]
async fn a_request_in_flight_when_the_client_ca_is_replaced_is_answered_then_its_connection_closes()
{
    let mut gate = Gate::start().await;
    let (websocket, _ws) = echo_server().await;
    let world = World::start(&gate.url(), websocket).await;
    let mut conn = world.open(false).await;
    let answer = tokio::spawn(conn.send("/certified/items"));
    tokio::time::timeout(BOUND, gate.arrived.recv())
        .await
        .expect("the request reaches the upstream");

    world.replace_the_ca();
    gate.through.add_permits(1);

    let answer = tokio::time::timeout(BOUND, answer)
        .await
        .expect("an answer")
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(answer.status(), 200);
    answer.into_body().collect().await.expect("the whole body");
    conn.closed().await;
    assert!(conn.get("/certified/items").await.is_err());
    world.gw.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_replaces_the_client_ca_ends_http2_connections_with_goaway() {
    let upstream = Upstream::start().await;
    let (websocket, _ws) = echo_server().await;
    let world = World::start(&upstream.url("/api"), websocket).await;
    let mut idle = world.open(true).await;
    let mut next = world.open(true).await;
    assert_eq!(idle.get("/certified/items").await, Ok(200));
    assert_eq!(next.get("/certified/items").await, Ok(200));

    world.replace_the_ca();

    // A stream opened at once, before the client may have read the
    // `GOAWAY`, is refused.
    let refused = next.get("/certified/items").await;
    assert!(
        refused.is_err(),
        "a connection verified by the CA replaced was served: {refused:?}"
    );
    // `GOAWAY`, then the connection ends; no stream opens on it.
    idle.closed().await;
    assert!(idle.get("/certified/items").await.is_err());
    assert_eq!(upstream.hits(), 2);
    world.gw.shutdown().await;
}

/// `client_auth` turned from optional to required replaces the setting
/// too: a connection opened without a certificate ends.
#[tokio::test]
async fn client_auth_made_required_closes_a_connection_opened_without_a_certificate() {
    let (dir, server) = served_as_localhost();
    let authority = ca();
    std::fs::write(dir.path().join("ca.pem"), authority.pem()).unwrap();
    let partner = client(&authority, "partner").fingerprint();
    let unrelated = client(&authority, "unrelated").fingerprint();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&super::yaml(
        dir.path(),
        &upstream,
        "optional",
        &partner,
        &unrelated,
    ))
    .await;
    let addr = gw.inner.as_ref().unwrap().https.expect("https");
    let anonymous = returning_client(server.cert.der(), None);
    let mut conn = Kept::open(addr, &anonymous, false).await;
    // No certificate: a request without a credential.
    assert_eq!(conn.get("/certified/items").await, Ok(401));

    gw.write_config(&super::yaml(
        dir.path(),
        &upstream,
        "required",
        &partner,
        &unrelated,
    ));
    gw.state()
        .reload(microgateway::reload::Source::Api)
        .expect("compiles");

    conn.closed().await;
    assert!(conn.get("/certified/items").await.is_err());
    gw.shutdown().await;
}

/// A reload that changes something else (an API's upstream, the server's
/// own certificate) leaves the connections open and serving.
#[tokio::test]
async fn a_reload_that_keeps_the_client_ca_keeps_the_connections() {
    let upstream = Upstream::start().await;
    let (websocket, _ws) = echo_server().await;
    let world = World::start(&upstream.url("/api"), websocket).await;
    let mut h1 = world.open(false).await;
    let mut h2 = world.open(true).await;
    assert_eq!(h1.get("/certified/items").await, Ok(200));
    assert_eq!(h2.get("/certified/items").await, Ok(200));

    let elsewhere = Upstream::start().await;
    world.reload(&elsewhere.url("/api"), websocket);
    assert_eq!(h1.get("/certified/items").await, Ok(200));
    assert_eq!(h2.get("/certified/items").await, Ok(200));
    assert_eq!(elsewhere.hits(), 2, "the reload applied");

    let renewed = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(world.dir.path().join("server.crt"), renewed.cert.pem()).unwrap();
    std::fs::write(
        world.dir.path().join("server.key"),
        renewed.signing_key.serialize_pem(),
    )
    .unwrap();
    world.reload(&elsewhere.url("/api"), websocket);
    assert_eq!(h1.get("/certified/items").await, Ok(200));
    assert_eq!(h2.get("/certified/items").await, Ok(200));
    assert_eq!(elsewhere.hits(), 4);
    assert!(!h1.driven.is_finished() && !h2.driven.is_finished());
    world.gw.shutdown().await;
}

/// WebSocket tunnels are long-lived by design: one opened over a
/// connection verified by the CA replaced is closed, over HTTP/1.1 and
/// over HTTP/2 (RFC 8441).
#[tokio::test]
async fn websocket_tunnels_over_a_connection_verified_by_the_old_ca_are_closed() {
    let upstream = Upstream::start().await;
    let (websocket, _ws) = echo_server().await;
    let world = World::start(&upstream.url("/api"), websocket).await;
    let mut over_h1 = websocket_over_h1(&world).await;
    let (mut over_h2, mut carrier) = websocket_over_h2(&world).await;
    assert_eq!(echo(&mut over_h1, "one").await, "one");
    assert_eq!(echo(&mut over_h2, "two").await, "two");

    world.replace_the_ca();

    tunnel_closed(&mut over_h1).await;
    tunnel_closed(&mut over_h2).await;
    // The tunnel was the last stream of its HTTP/2 connection.
    carrier.closed().await;
    world.gw.shutdown().await;
}

async fn websocket_over_h1(
    world: &World,
) -> WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(world.addr).await.unwrap();
    let tls = TlsConnector::from(world.returning.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the handshake succeeds");
    let opening = tokio_tungstenite::client_async("wss://localhost/live/feed", tls);
    let (ws, answer) = tokio::time::timeout(BOUND, opening)
        .await
        .expect("the WebSocket handshake ends")
        .expect("the tunnel opens");
    assert_eq!(answer.status(), 101);
    ws
}

/// A WebSocket over an extended `CONNECT` of an HTTP/2 connection, and
/// that connection.
async fn websocket_over_h2(
    world: &World,
) -> (WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, Kept) {
    let mut carrier = world.open(true).await;
    // A first exchange: the gateway's SETTINGS (ENABLE_CONNECT_PROTOCOL)
    // have come with it.
    assert_eq!(carrier.get("/certified/items").await, Ok(200));
    let mut connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://localhost/live/feed")
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    connect
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let Sender::H2(sender) = &mut carrier.sender else {
        unreachable!("an HTTP/2 connection");
    };
    let answer = tokio::time::timeout(BOUND, sender.send_request(connect))
        .await
        .expect("the handshake ends")
        .expect("an answer");
    assert_eq!(answer.status(), 200);
    let upgraded = hyper::upgrade::on(answer).await.expect("the stream opens");
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (ws, carrier)
}

async fn echo<S>(ws: &mut WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.expect("send");
    let answer = tokio::time::timeout(BOUND, ws.next())
        .await
        .expect("the echo comes")
        .expect("a message")
        .expect("a good message");
    answer.into_text().expect("text").to_string()
}

/// Waits for the tunnel to be closed under the client.
async fn tunnel_closed<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let end = tokio::time::timeout(BOUND, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    });
    end.await.expect("the tunnel is closed");
}
