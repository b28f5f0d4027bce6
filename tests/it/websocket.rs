//! WebSocket through the gateway: a real client and a real echo server
//! (tokio-tungstenite) over loopback, the handshake authorized like any
//! request, then a byte tunnel bounded by `timeouts.tunnel_idle`,
//! `limits.max_tunnels` and the drain on shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common;
use common::idp::Idp;
use common::recording::RecordingUpstream;
use common::{metric, raw_request, status_of, Gateway};

/// A WebSocket server that echoes every message, recording the headers
/// of each handshake it accepted.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<http::HeaderMap>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let seen = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    #[allow(
                        clippy::result_large_err,
                        reason = "the callback type is tungstenite's"
                    )]
                    let record = |req: &Request, resp: Response| {
                        seen.lock().unwrap().push(req.headers().clone());
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_close() {
                            break;
                        }
                        if ws.send(message).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        EchoServer {
            addr,
            handshakes,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/ws", self.addr)
    }

    fn handshakes(&self) -> Vec<http::HeaderMap> {
        self.handshakes.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(idp: &Idp, upstream: &str, extra: &str) -> String {
    config_named("chat", idp, upstream, extra)
}

/// `api`: metrics are the process's, shared by the tests that run at once.
fn config_named(api: &str, idp: &Idp, upstream: &str, extra: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
{extra}
security_settings:
  auth_servers:
  - id: idp
    name: idp
    localIntrospectionConfig:
      issuer: "{issuer}"
      jwksuri: "{jwks}"
      audience: travels
scope_mappings:
- {{ auth_server: idp, scope: chat, api_scopes: ["{api}:Talk"] }}
apis:
- name: "{api}"
  version: "1.0"
  base_path: /chat
  websocket: true
  {lifetime}
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - name: Talk
    resources: ["GET /room"]
- name: plain
  version: "1.0"
  base_path: /plain
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: none }}
  resources: ["GET /room"]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        lifetime = if api == "short" {
            "tunnel_max_lifetime: 1s"
        } else {
            ""
        },
    )
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(gw: &Gateway, path: &str, token: Option<&str>) -> Result<Ws, WsError> {
    let mut request = format!("ws://{}{}", gw.http, path)
        .into_client_request()
        .expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    let connecting = tokio_tungstenite::connect_async(request);
    let (ws, _) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("the handshake does not hang")?;
    Ok(ws)
}

async fn echo<S>(ws: &mut WebSocketStream<S>, text: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the echo does not hang")
        .expect("a message")
        .expect("a good message");
    answer.into_text().expect("text").to_string()
}

/// Waits (at most 20 s) for the tunnel to be closed under the client.
async fn closed(ws: &mut Ws) {
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    });
    end.await.expect("the tunnel was closed");
}

fn handshake(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn messages_are_echoed_through_the_tunnel_and_counted() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config_named("echo", &idp, &upstream.url(), "")).await;
    gw.wait_ready().await;
    let token = idp.token(&["chat"]);
    let mut ws = open(&gw, "/chat/room", Some(&token)).await.expect("open");
    for i in 0..20 {
        let text = format!("message {i} {}", "x".repeat(i * 500));
        assert_eq!(echo(&mut ws, &text).await, text);
    }
    let binary = vec![7u8; 100_000];
    ws.send(Message::binary(binary.clone()))
        .await
        .expect("send");
    let back = ws.next().await.expect("message").expect("good");
    assert_eq!(back.into_data().as_ref(), &binary[..]);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "microgateway_tunnels_open{api=\"echo\"}"),
        1
    );
    assert!(
        metric(
            &metrics,
            "microgateway_tunnel_bytes_total{api=\"echo\",direction=\"upstream\"}"
        ) > 100_000
    );
    assert!(
        metric(
            &metrics,
            "microgateway_tunnel_bytes_total{api=\"echo\",direction=\"downstream\"}"
        ) > 100_000
    );
    ws.close(None).await.expect("close");
    closed(&mut ws).await;
    // The upstream saw the handshake's own fields, the token delegated,
    // and no other hop-by-hop field.
    let seen = upstream.handshakes();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0];
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["connection"], "upgrade");
    assert!(headers.contains_key("sec-websocket-key"));
    assert!(headers.contains_key("x-forwarded-for"));
    for _ in 0..200 {
        let metrics = gw.metrics().await;
        if metric(&metrics, "microgateway_tunnels_open{api=\"echo\"}") == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the closed tunnel is still counted as open");
}

#[tokio::test]
async fn a_handshake_without_a_token_is_refused_and_never_forwarded() {
    let idp = Idp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&idp, &upstream.url(), "")).await;
    gw.wait_ready().await;
    let answer = raw_request(gw.http, &handshake("/chat/room", None)).await;
    assert_eq!(status_of(&answer), 401, "{answer}");
    assert!(answer.contains("www-authenticate: Bearer"), "{answer}");
    let bad = raw_request(gw.http, &handshake("/chat/room", Some("not.a.jwt"))).await;
    assert_eq!(status_of(&bad), 401, "{bad}");
    assert_eq!(upstream.accepted(), 0);
}

#[tokio::test]
async fn a_handshake_with_a_token_lacking_the_scope_is_refused_403() {
    let idp = Idp::start().await;
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&config(&idp, &upstream.url(), "")).await;
    gw.wait_ready().await;
    let token = idp.token(&["other"]);
    let answer = raw_request(gw.http, &handshake("/chat/room", Some(&token))).await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    assert!(answer.contains("insufficient_scope"), "{answer}");
    assert_eq!(upstream.accepted(), 0);
}

#[tokio::test]
async fn an_api_without_websocket_forwards_no_upgrade() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config(&idp, &upstream.url(), "")).await;
    gw.wait_ready().await;
    let refused = open(&gw, "/plain/room", None).await;
    match refused {
        Err(WsError::Http(response)) => assert_ne!(response.status(), 101),
        Err(other) => panic!("unexpected failure: {other}"),
        Ok(_) => panic!("an API without `websocket: true` opened a tunnel"),
    }
    assert!(upstream.handshakes().is_empty());
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_tunnel_idle() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config(
        &idp,
        &upstream.url(),
        "timeouts: { tunnel_idle: 1s }",
    ))
    .await;
    gw.wait_ready().await;
    let token = idp.token(&["chat"]);
    let mut ws = open(&gw, "/chat/room", Some(&token)).await.expect("open");
    assert_eq!(echo(&mut ws, "hello").await, "hello");
    closed(&mut ws).await;
}

/// A tunnel keeps the authorization of its handshake: a reload that
/// removes its API's WebSocket and its scope ends no open tunnel, while
/// the next handshake meets the new settings.
#[tokio::test]
async fn an_open_tunnel_outlives_a_reload_that_withdraws_its_websocket() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let yaml = config_named("reloaded", &idp, &upstream.url(), "");
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token = idp.token(&["chat"]);
    let mut ws = open(&gw, "/chat/room", Some(&token)).await.expect("open");
    assert_eq!(echo(&mut ws, "before").await, "before");
    gw.write_config(
        &yaml
            .replace("  websocket: true\n", "")
            .replace("scope: chat,", "scope: other,"),
    );
    gw.wait_generation(2).await;
    assert_eq!(echo(&mut ws, "after").await, "after");
    match open(&gw, "/chat/room", Some(&token)).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        Err(other) => panic!("unexpected failure: {other}"),
        Ok(_) => panic!("a new handshake was judged by the old settings"),
    }
    let _ = ws.close(None).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn handshakes_over_max_tunnels_get_503_until_one_closes() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config(&idp, &upstream.url(), "limits: { max_tunnels: 1 }")).await;
    gw.wait_ready().await;
    let token = idp.token(&["chat"]);
    let mut first = open(&gw, "/chat/room", Some(&token)).await.expect("open");
    assert_eq!(echo(&mut first, "one").await, "one");
    let answer = raw_request(gw.http, &handshake("/chat/room", Some(&token))).await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert_eq!(
        upstream.handshakes().len(),
        1,
        "the refused one is not forwarded"
    );
    first.close(None).await.expect("close");
    closed(&mut first).await;
    for _ in 0..200 {
        if let Ok(mut second) = open(&gw, "/chat/room", Some(&token)).await {
            assert_eq!(echo(&mut second, "two").await, "two");
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the slot of the closed tunnel was not given back");
}

/// A tunnel holds its place among its upstream's requests
/// (`upstream.max_requests`) until it ends, over HTTP/1.1 and HTTP/2: a
/// handshake past the bound is 503 and never forwarded.
#[tokio::test]
async fn a_tunnel_holds_its_place_among_the_upstreams_requests_until_it_ends() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let url = upstream.url();
    let yaml = config_named("bounded", &idp, &url, "").replace(
        &format!("url: \"{url}\" }}"),
        &format!("url: \"{url}\", max_requests: 1 }}"),
    );
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token = idp.token(&["chat"]);
    let mut first = open(&gw, "/chat/room", Some(&token)).await.expect("open");
    assert_eq!(echo(&mut first, "one").await, "one");
    let answer = raw_request(gw.http, &handshake("/chat/room", Some(&token))).await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    let (status, _) = open_h2(&gw, Some(&token)).await;
    assert_eq!(status, 503, "an HTTP/2 handshake is bounded alike");
    assert_eq!(
        upstream.handshakes().len(),
        1,
        "the refused are not forwarded"
    );
    // Still open past the handshake, and still counted.
    assert_eq!(echo(&mut first, "two").await, "two");
    let answer = raw_request(gw.http, &handshake("/chat/room", Some(&token))).await;
    assert_eq!(status_of(&answer), 503, "{answer}");

    first.close(None).await.expect("close");
    closed(&mut first).await;
    let mut second = None;
    for _ in 0..200 {
        let (status, ws) = open_h2(&gw, Some(&token)).await;
        if status == 200 {
            second = ws;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut second = second.expect("the place of the closed tunnel was given back");
    assert_eq!(echo(&mut second, "three").await, "three");
    let answer = raw_request(gw.http, &handshake("/chat/room", Some(&token))).await;
    assert_eq!(
        status_of(&answer),
        503,
        "an HTTP/2 tunnel holds the place too: {answer}"
    );
    drop(second);
    gw.shutdown().await;
}

/// A tunnel to a balanced upstream counts among its endpoint's requests
/// in flight until it ends, over HTTP/1.1 and HTTP/2 (`least_requests`
/// and the admin API see the endpoint busy), not only until the empty
/// answer that opened it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_counts_among_its_endpoints_requests_until_it_ends() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let url = upstream.url();
    let single = format!("upstream: {{ url: \"{url}\" }}\n  authentication: {{ type: oauth2");
    let yaml = config_named("balanced", &idp, &url, "").replace(
        &single,
        &format!("upstream: {{ endpoints: [{{ url: \"{url}\" }}], balance: least_requests }}\n  authentication: {{ type: oauth2"),
    );
    assert!(yaml.contains("least_requests"), "{yaml}");
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let in_flight = || async {
        let assets = gw.admin_json("/rest/microgateway/assets").await;
        let api = assets["apis"]
            .as_array()
            .expect("apis")
            .iter()
            .find(|a| a["name"] == "balanced")
            .expect("the API")
            .clone();
        api["upstream"]["endpoints"][0]["in_flight"]
            .as_u64()
            .expect("in_flight")
    };
    let token = idp.token(&["chat"]);
    let mut first = open(&gw, "/chat/room", Some(&token)).await.expect("open");
    assert_eq!(echo(&mut first, "one").await, "one");
    assert_eq!(in_flight().await, 1, "an HTTP/1.1 tunnel is in flight");
    let (status, second) = open_h2(&gw, Some(&token)).await;
    assert_eq!(status, 200);
    let mut second = second.expect("an HTTP/2 tunnel");
    assert_eq!(echo(&mut second, "two").await, "two");
    assert_eq!(in_flight().await, 2, "an HTTP/2 tunnel too");
    first.close(None).await.expect("close");
    closed(&mut first).await;
    drop(second);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_flight().await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tunnels' endpoint still has them in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn tunnels_are_drained_on_shutdown_then_closed() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config(&idp, &upstream.url(), "timeouts: { drain: 2s }")).await;
    gw.wait_ready().await;
    let token = idp.token(&["chat"]);
    let mut ws = open(&gw, "/chat/room", Some(&token)).await.expect("open");
    assert_eq!(echo(&mut ws, "before").await, "before");
    let shutdown = tokio::spawn(gw.shutdown());
    // While the listener drains, the tunnel still carries messages.
    assert_eq!(echo(&mut ws, "during").await, "during");
    closed(&mut ws).await;
    tokio::time::timeout(Duration::from_secs(20), shutdown)
        .await
        .expect("the shutdown ends after the drain")
        .expect("shutdown");
}

#[tokio::test]
async fn the_websocket_keys_are_validated() {
    let cases = [
        ("websocket: maybe", "websocket"),
        (
            "tunnel_max_lifetime: soon",
            "tunnel_max_lifetime: `soon` is not a duration",
        ),
        (
            "tunnel_max_lifetime: 0s",
            "tunnel_max_lifetime: must be more than 0",
        ),
    ];
    for (key, expected) in cases {
        let yaml = format!(
            "ports: {{ http: 0, bind: 127.0.0.1 }}\napis:\n- name: A\n  upstream: {{ echo: true }}\n  \
             authentication: {{ type: none }}\n  {key}\n"
        );
        let error = Gateway::try_start(&yaml, common::env(&[]))
            .await
            .err()
            .unwrap_or_else(|| panic!("`{key}` was accepted"));
        assert!(error.contains(":6:"), "{error}");
        assert!(error.contains(expected), "{error}");
    }
    for (timeouts, expected) in [
        (
            "timeouts: { tunnel_idle: 0s }",
            "timeouts.tunnel_idle: must be more than 0",
        ),
        ("limits: { max_tunnels: many }", "limits.max_tunnels"),
    ] {
        let yaml = format!("ports: {{ http: 0, bind: 127.0.0.1 }}\n{timeouts}\n");
        let error = Gateway::try_start(&yaml, common::env(&[]))
            .await
            .err()
            .unwrap_or_else(|| panic!("`{timeouts}` was accepted"));
        assert!(error.contains(expected), "{error}");
    }
}

/// Opens a WebSocket over HTTP/2 extended CONNECT (RFC 8441) with hyper's
/// client: the answer's status, and the stream as a WebSocket on a 200.
async fn open_h2(
    gw: &Gateway,
    token: Option<&str>,
) -> (
    u16,
    Option<WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>>,
) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    // A first exchange, so that the server's SETTINGS (with
    // ENABLE_CONNECT_PROTOCOL) have arrived.
    let first = http::Request::get(format!("http://{}/nothing", gw.http))
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let answer = sender.send_request(first).await.expect("first exchange");
    let _ = answer.into_body().collect().await;
    let mut connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/chat/room", gw.http))
        .header("sec-websocket-version", "13");
    if let Some(token) = token {
        connect = connect.header("authorization", format!("Bearer {token}"));
    }
    let mut connect = connect.body(Empty::<bytes::Bytes>::new()).expect("request");
    connect
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(connect))
        .await
        .expect("the handshake does not hang")
        .expect("an answer");
    let status = response.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .expect("the stream opens");
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (status, Some(ws))
}

#[tokio::test]
async fn messages_are_echoed_over_http2_extended_connect() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config_named("h2", &idp, &upstream.url(), "")).await;
    gw.wait_ready().await;
    let (status, _) = open_h2(&gw, None).await;
    assert_eq!(status, 401);
    let (status, _) = open_h2(&gw, Some(&idp.token(&["other"]))).await;
    assert_eq!(status, 403);
    assert!(
        upstream.handshakes().is_empty(),
        "refusals are not forwarded"
    );
    let (status, ws) = open_h2(&gw, Some(&idp.token(&["chat"]))).await;
    assert_eq!(status, 200);
    let mut ws = ws.expect("a WebSocket");
    for i in 0..10 {
        let text = format!("over h2 {i} {}", "y".repeat(i * 1000));
        ws.send(Message::text(text.clone())).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the echo does not hang")
            .expect("a message")
            .expect("a good message");
        assert_eq!(back.into_text().expect("text").as_str(), text);
    }
    // The upstream got an HTTP/1.1 handshake with the gateway's key.
    let seen = upstream.handshakes();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["upgrade"], "websocket");
    assert!(seen[0].contains_key("sec-websocket-key"));
    ws.close(None).await.expect("close");
}

/// An upstream that is no WebSocket server: it answers every request
/// `200 OK` with a chunked body.
async fn not_a_websocket_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                          17\r\nnot a websocket server\n\r\n0\r\n\r\n",
                    )
                    .await;
                let _ = stream.read(&mut head).await;
            });
        }
    });
    addr
}

/// RFC 8441 §5: over HTTP/2 a 2xx to the extended CONNECT *is* the opened
/// tunnel. An upstream that answers the handshake `200` instead of `101`
/// did not switch protocols: the client is told 502, not that its
/// WebSocket is open.
#[tokio::test]
async fn an_http2_handshake_the_upstream_does_not_switch_is_a_502() {
    let idp = Idp::start().await;
    let upstream = not_a_websocket_server().await;
    let gw = Gateway::start(&config_named(
        "h2noswitch",
        &idp,
        &format!("http://{upstream}/ws"),
        "",
    ))
    .await;
    gw.wait_ready().await;
    let (status, ws) = open_h2(&gw, Some(&idp.token(&["chat"]))).await;
    assert_eq!(status, 502, "the upstream answered 200, not 101");
    assert!(ws.is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn a_tunnel_is_closed_at_tunnel_max_lifetime_however_busy() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config_named("short", &idp, &upstream.url(), "")).await;
    gw.wait_ready().await;
    let mut ws = open(&gw, "/chat/room", Some(&idp.token(&["chat"])))
        .await
        .expect("open");
    // Busy: a message at least every 200 ms, far under tunnel_idle (1 h).
    let busy = async {
        for i in 0.. {
            if ws.send(Message::text(format!("{i}"))).await.is_err() {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                Ok(None | Some(Err(_))) => return,
                Ok(Some(Ok(message))) if message.is_close() => return,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), busy)
        .await
        .expect("the tunnel was closed at its lifetime");
}

/// An upstream that switches to WebSocket (for the key `handshake`
/// sends), then does `then` with its connection; it reports when the
/// gateway has closed the connection (and `then` ended).
async fn switching_upstream<F, Fut>(
    then: F,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>)
where
    F: FnOnce(tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (mut read, mut write) = stream.into_split();
        let mut head = [0u8; 4096];
        let _ = read.read(&mut head).await;
        let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                      Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        then(read, write).await;
        let _ = closed_tx.send(());
    });
    (addr, closed)
}

/// Reads until the gateway closes the connection.
async fn read_to_the_end(mut read: tokio::net::tcp::OwnedReadHalf) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    while let Ok(1..) = read.read(&mut buf).await {}
}

/// Opens a tunnel to `upstream` (timeouts `timeouts`) and sends a masked
/// ping every `every`, reading nothing, until the upstream reports the
/// tunnel closed; panics with `open` if it is not within `within`.
async fn pinging_until_closed(
    upstream: SocketAddr,
    mut closed: tokio::sync::mpsc::UnboundedReceiver<()>,
    timeouts: &str,
    every: Duration,
    within: Duration,
    open: &str,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idp = Idp::start().await;
    let gw = Gateway::start(&config_named(
        "pinging",
        &idp,
        &format!("http://{upstream}/ws"),
        timeouts,
    ))
    .await;
    gw.wait_ready().await;
    let mut client = TcpStream::connect(gw.http).await.expect("connect");
    client
        .write_all(&handshake("/chat/room", Some(&idp.token(&["chat"]))))
        .await
        .expect("handshake");
    let mut head = [0u8; 12];
    client.read_exact(&mut head).await.expect("answer");
    assert_eq!(&head, b"HTTP/1.1 101");
    let pinging = async {
        let ping = [0x89u8, 0x80, 1, 2, 3, 4];
        while client.write_all(&ping).await.is_ok() {
            tokio::time::sleep(every).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        ended = closed.recv() => ended.expect("reported"),
        () = pinging => {}
        () = tokio::time::sleep(within) => panic!("{open}"),
    }
    gw.shutdown().await;
}

/// Once one side has closed, the other has 2 s to follow, counted from
/// the first close: a client that keeps sending does not keep the
/// half-closed tunnel open.
#[tokio::test]
async fn a_half_closed_tunnel_closes_soon_however_busy_the_other_side() {
    use tokio::io::AsyncWriteExt;
    // The upstream closes its side at once (FIN), and reads on.
    let (upstream, closed) = switching_upstream(|read, mut write| async move {
        let _ = write.shutdown().await;
        read_to_the_end(read).await;
    })
    .await;
    pinging_until_closed(
        upstream,
        closed,
        "timeouts: { tunnel_idle: 1h }",
        Duration::from_millis(200),
        Duration::from_secs(15),
        "the half-closed tunnel stayed open while the client sent",
    )
    .await;
}

/// A client that sends but never reads takes nothing of what the upstream
/// sends: its tunnel is closed within `timeouts.send`, as an answer's
/// client would be, however busy its own direction keeps the tunnel.
#[tokio::test]
async fn a_tunnel_whose_client_reads_nothing_is_closed_within_send() {
    use tokio::io::AsyncWriteExt;
    // The upstream writes without pause and takes whatever comes.
    let (upstream, closed) = switching_upstream(|read, mut write| async move {
        tokio::spawn(read_to_the_end(read));
        // A binary frame of 16 KiB, over and over.
        let mut frame = vec![0x82u8, 126, 0x40, 0x00];
        frame.resize(4 + 16 * 1024, b'x');
        while write.write_all(&frame).await.is_ok() {}
    })
    .await;
    pinging_until_closed(
        upstream,
        closed,
        "timeouts: { send: 1s, tunnel_idle: 1h }",
        Duration::from_millis(100),
        Duration::from_secs(20),
        "the tunnel of a client that reads nothing stayed open",
    )
    .await;
}

/// An HTTP/2 tunnel in use is not an idle connection: it lasts while bytes
/// go through it (bounded by `tunnel_idle` and `tunnel_max_lifetime`), as
/// an HTTP/1.1 tunnel does, however short `timeouts.idle` is.
#[tokio::test]
async fn a_busy_http2_tunnel_outlives_the_connection_idle_timeout() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config_named(
        "h2busy",
        &idp,
        &upstream.url(),
        "timeouts: { idle: 1s, send: 1s }",
    ))
    .await;
    gw.wait_ready().await;
    let (status, ws) = open_h2(&gw, Some(&idp.token(&["chat"]))).await;
    assert_eq!(status, 200);
    let mut ws = ws.expect("a WebSocket");
    // Busy for 4 s: a message every 250 ms, far under tunnel_idle (1 h).
    for i in 0..16 {
        let text = format!("busy {i}");
        ws.send(Message::text(text.clone()))
            .await
            .unwrap_or_else(|e| panic!("send {i}: {e}"));
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the echo does not hang")
            .unwrap_or_else(|| panic!("tunnel closed before message {i}"))
            .unwrap_or_else(|e| panic!("tunnel cut before message {i}: {e}"));
        assert_eq!(back.into_text().expect("text").as_str(), text);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    gw.shutdown().await;
}

/// A tunnel keeps its connection's slot: a port out of slots closes its
/// connections with no request in flight, and an HTTP/2 connection that
/// carries an open tunnel is not one of them. The client waiting for the
/// slot has it once the tunnel's connection ends.
#[tokio::test]
async fn an_http2_tunnel_keeps_its_slot_when_the_port_runs_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let gw = Gateway::start(&config_named(
        "h2slot",
        &idp,
        &upstream.url(),
        "limits: { max_connections: 1 }",
    ))
    .await;
    gw.wait_ready().await;
    let (status, ws) = open_h2(&gw, Some(&idp.token(&["chat"]))).await;
    assert_eq!(status, 200);
    let mut ws = ws.expect("a WebSocket");
    // A second client waits for the only slot.
    let mut waiting = TcpStream::connect(gw.http).await.expect("connect");
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let text = format!("still open {i}");
        assert_eq!(echo(&mut ws, &text).await, text);
    }
    drop(ws);
    waiting
        .write_all(b"GET /plain/room HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), waiting.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_ne!(
        status_of(&answer),
        0,
        "the waiting client is served: {answer}"
    );
    gw.shutdown().await;
}

/// Sends a handshake on a new connection and returns the head of the
/// answer (a `101` leaves the connection open: no reading to its close).
async fn answer_head(addr: SocketAddr, handshake: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(handshake).await.expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("an answer within 5 s");
    String::from_utf8_lossy(&head).into_owned()
}

/// A handshake with a token, from `origin`, as a browser page sends it.
fn handshake_from(origin: &str, host: &str, token: &str) -> Vec<u8> {
    format!(
        "GET /chat/room HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .into_bytes()
}

/// Cross-site WebSocket hijacking: a page of any origin can open a
/// WebSocket, and the browser adds its cookies, cached Basic credentials
/// and client certificate. A handshake whose `Origin` is neither the
/// gateway's own host nor one the API's CORS policy allows is refused
/// before it is forwarded; a client that sends no `Origin` (not a
/// browser) is not judged by it.
#[tokio::test]
async fn a_handshake_from_a_foreign_origin_is_refused() {
    let idp = Idp::start().await;
    let upstream = EchoServer::start().await;
    let cors = r#"
  policies:
    cors: { allow_origins: ["https://app.example.com"] }"#;
    let yaml = config_named("origins", &idp, &upstream.url(), "")
        .replace("  websocket: true\n", &format!("  websocket: true{cors}\n"));
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token = idp.token(&["chat"]);
    for (origin, host) in [
        ("https://evil.example", "gw.example.com"),
        ("null", "gw.example.com"),
        ("https://gw.example.com.evil.example", "gw.example.com"),
        ("https://gw.example.com:8443", "gw.example.com"),
        ("http://gw.example.com", "gw.example.com:8080"),
        ("https://user@gw.example.com", "gw.example.com"),
    ] {
        let answer = answer_head(gw.http, &handshake_from(origin, host, &token)).await;
        assert_eq!(status_of(&answer), 403, "{origin} → {host}: {answer}");
    }
    assert!(upstream.handshakes().is_empty());
    for (origin, host) in [
        ("https://app.example.com", "gw.example.com"), // the CORS policy's
        ("https://GW.example.com", "gw.example.com:443"), // its own host
        ("http://gw.example.com:8080", "gw.example.com:8080"),
        ("http://gw.example.com", "gw.example.com"),
    ] {
        let answer = answer_head(gw.http, &handshake_from(origin, host, &token)).await;
        assert_eq!(status_of(&answer), 101, "{origin} → {host}: {answer}");
    }
    assert_eq!(upstream.handshakes().len(), 4);
    let mut ws = open(&gw, "/chat/room", Some(&token))
        .await
        .expect("no Origin");
    assert_eq!(echo(&mut ws, "hello").await, "hello");
    let _ = ws.close(None).await;
    drop(ws);
    gw.shutdown().await;
    // `allow_origins: ["*"]` never lets a page send credentials; a
    // WebSocket always carries them: it admits no foreign page.
    let any = config_named("origins", &idp, &upstream.url(), "").replace(
        "  websocket: true\n",
        "  websocket: true\n  policies:\n    cors: { allow_origins: [\"*\"] }\n",
    );
    let gw = Gateway::start(&any).await;
    gw.wait_ready().await;
    let foreign = handshake_from("https://evil.example", "gw.example.com", &token);
    let answer = answer_head(gw.http, &foreign).await;
    assert_eq!(status_of(&answer), 403, "{answer}");
    gw.shutdown().await;
}

/// An upstream that answers `101` with `upgrade` (whatever protocol) and
/// `accept` as `Sec-WebSocket-Accept`, then echoes raw bytes.
async fn switching_server(upgrade: &'static str, accept: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    let _ = stream.write_all(&buf[..n]).await;
                }
            });
        }
    });
    addr
}

/// RFC 6455 §4.1: a `101` opens a WebSocket only with `Upgrade: websocket`
/// and the `Sec-WebSocket-Accept` of the key sent. An upstream that
/// switches to anything else gets no tunnel past the gateway's checks.
#[tokio::test]
async fn a_101_to_another_protocol_or_key_opens_no_tunnel() {
    let idp = Idp::start().await;
    let token = idp.token(&["chat"]);
    // The accept RFC 6455 §1.3 gives for the key `handshake` sends.
    let right = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
    for (upgrade, accept, status) in [
        ("h2c", right, 502),
        ("websocket", "dGhlIHNhbXBsZSBub25jZQ==", 502),
        ("websocket, h2c", right, 502),
        ("WebSocket", right, 101),
    ] {
        let upstream = switching_server(upgrade, accept).await;
        let gw = Gateway::start(&config_named(
            "switching",
            &idp,
            &format!("http://{upstream}/ws"),
            "",
        ))
        .await;
        gw.wait_ready().await;
        let answer = answer_head(gw.http, &handshake("/chat/room", Some(&token))).await;
        assert_eq!(status_of(&answer), status, "{upgrade} {accept}: {answer}");
        gw.shutdown().await;
    }
}
