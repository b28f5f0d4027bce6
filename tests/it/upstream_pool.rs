//! Upstream connections are kept alive between requests: sequential
//! requests go out on one connection, and a connection the upstream closed
//! while idle is replaced without the client noticing.
use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Gateway;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// An upstream counting the connections and requests it got and the
/// connections it closed; with `idle_close`, it closes a connection that
/// has had no new request for that long.
struct CountingUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl CountingUpstream {
    async fn start(idle_close: Option<Duration>) -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (c, r, x) = (connections.clone(), requests.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (r, x) = (r.clone(), x.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    loop {
                        let head = read_head(&mut read);
                        let complete = match idle_close {
                            Some(idle) => tokio::time::timeout(idle, head).await.unwrap_or(false),
                            None => head.await,
                        };
                        if !complete {
                            break;
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
                        if write.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                    drop((read, write));
                    x.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        CountingUpstream {
            addr,
            connections,
            requests,
            closed,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits (at most 10 s) until the upstream has closed `n` connections.
    async fn wait_closed(&self, n: usize) {
        for _ in 0..2000 {
            if self.closed.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the upstream did not close {n} connections");
    }
}

/// Reads a request head (the requests here have no body).
async fn read_head(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if line == "\r\n" => return true,
            Ok(_) => {}
        }
    }
}

fn yaml(upstream: &CountingUpstream) -> String {
    yaml_for(upstream.addr, "30s")
}

/// One API whose upstream is `addr`, with `timeout`.
fn yaml_for(addr: SocketAddr, timeout: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Pooled
  version: "1.0"
  base_path: /pooled
  upstream: {{ url: "http://{addr}/api", timeout: {timeout} }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
"#
    )
}

/// One client connection to the gateway (so every request is served by
/// the same listener thread, and its pool).
async fn client(gw: &Gateway) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(gw.http).await.unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>) -> (u16, Bytes) {
    sender.ready().await.unwrap();
    let response = sender
        .send_request(
            Request::get("/pooled/items")
                .header("host", "gateway.test")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

#[tokio::test]
async fn sequential_requests_go_out_on_one_upstream_connection() {
    let upstream = CountingUpstream::start(None).await;
    let gw = Gateway::start(&yaml(&upstream)).await;
    let mut sender = client(&gw).await;
    for _ in 0..20 {
        let (status, body) = get(&mut sender).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], br#"{"ok":true}"#);
    }
    assert_eq!(upstream.requests(), 20);
    assert_eq!(upstream.connections(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced() {
    let upstream = CountingUpstream::start(Some(Duration::from_millis(50))).await;
    let gw = Gateway::start(&yaml(&upstream)).await;
    let mut sender = client(&gw).await;
    for round in 1..=3 {
        let (status, _) = get(&mut sender).await;
        assert_eq!(status, 200, "round {round}");
        assert_eq!(upstream.connections(), round);
        // The upstream closes the connection meanwhile.
        upstream.wait_closed(round).await;
    }
    assert_eq!(upstream.requests(), 3);
    gw.shutdown().await;
}

/// A request sent again on a new connection (its pooled one closed with
/// no answer) connects within what is left of the one `upstream.timeout`
/// the request has for connecting, not within a new one: the client's
/// 504 comes by about one timeout, however late the first try failed.
#[tokio::test]
async fn a_request_sent_again_connects_within_the_timeout_it_began_with() {
    // Accepts one connection, and no other: once the test fills its
    // queue, further connects stall (their SYN is dropped).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let second_seen = Arc::new(tokio::sync::Notify::new());
    let seen = second_seen.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        assert!(read_head(&mut read).await);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        write.write_all(answer).await.unwrap();
        // The second request: read, then the connection closed after
        // two of the three seconds, unanswered.
        assert!(read_head(&mut read).await);
        seen.notify_one();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop((read, write));
        // Kept listening (not accepting) until the test ends.
        std::future::pending::<()>().await;
    });
    let gw = Gateway::start(&yaml_for(addr, "3s")).await;
    let mut sender = client(&gw).await;
    assert_eq!(get(&mut sender).await.0, 200, "the pooled connection");
    let mut queued = Vec::new();
    for _ in 0..3 {
        let connect = TcpStream::connect(addr);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
            queued.push(stream);
        }
    }
    let probe = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await;
    assert!(probe.is_err(), "a connect to the full queue must stall");
    let started = std::time::Instant::now();
    let (status, _) = get(&mut sender).await;
    let took = started.elapsed();
    assert_eq!(status, 504);
    // Before: the try failed after 2 s, and sending again had a new 3 s
    // to connect (504 after 5 s). Now connecting ends 3 s after the start.
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert!(took >= Duration::from_secs(2), "sent again: {took:?}");
    drop(queued);
    gw.shutdown().await;
}

/// The API with `upstream.max_requests` and one without, each to its own
/// upstream.
fn bounded_yaml(slow: &common::Upstream, quick: &common::Upstream, max: usize) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: Bounded
  base_path: /bounded
  upstream: {{ url: "{slow}", timeout: 60s, max_requests: {max} }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
- name: Other
  base_path: /other
  upstream: {{ url: "{quick}" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
"#,
        slow = slow.url("/api"),
        quick = quick.url("/api"),
    )
}

/// The `Bounded` API's `upstream_requests` in the assets view.
async fn upstream_requests(gw: &Gateway) -> serde_json::Value {
    let assets: serde_json::Value = gw
        .client
        .get(gw.admin_url("/rest/microgateway/assets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bounded = &assets["apis"][0];
    assert_eq!(bounded["name"], "Bounded");
    bounded["upstream_requests"].clone()
}

/// An upstream that slows down holds at most `upstream.max_requests` of
/// the gateway's requests: the next is refused at once (503,
/// `Retry-After: 1`, never forwarded, counted as an overflow) while the
/// other APIs are served; a request that ends gives its place back, and a
/// reload keeps counting the requests in flight.
#[tokio::test]
async fn an_upstream_holds_at_most_its_max_requests() {
    let slow = common::Upstream::start().await;
    slow.set_delay(Duration::from_secs(60));
    let quick = common::Upstream::start().await;
    let gw = Gateway::start(&bounded_yaml(&slow, &quick, 2)).await;
    let within = Duration::from_secs(10);
    let send = |gw: &Gateway| {
        let request = gw.request(reqwest::Method::GET, "/bounded/items").send();
        tokio::spawn(request)
    };
    let first = send(&gw);
    let second = send(&gw);
    common::wait_until(within, || slow.hits() == 2).await;

    let refused = gw.get("/bounded/items").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(slow.hits(), 2, "a refused request was forwarded");
    assert_eq!(gw.get("/other/items").await.status(), 200);
    let text = gw.metrics().await;
    let overflow = r#"microgateway_upstream_errors_total{api="Bounded",cause="overflow"}"#;
    assert_eq!(common::metric(&text, overflow), 1, "{text}");
    assert_eq!(
        upstream_requests(&gw).await,
        serde_json::json!({ "max": 2, "in_flight": 2 })
    );

    // The first client leaves: its place is free once the gateway has
    // seen it go.
    first.abort();
    let deadline = tokio::time::Instant::now() + within;
    while upstream_requests(&gw).await["in_flight"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place of a client that left is still held"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = send(&gw);
    common::wait_until(within, || slow.hits() == 3).await;

    // A reload raises the bound to 3: the two in flight still count.
    gw.write_config(&bounded_yaml(&slow, &quick, 3));
    gw.wait_generation(2).await;
    let fourth = send(&gw);
    common::wait_until(within, || slow.hits() == 4).await;
    assert_eq!(gw.get("/bounded/items").await.status(), 503);
    assert_eq!(slow.hits(), 4);
    for task in [second, third, fourth] {
        task.abort();
    }
    gw.shutdown().await;
}
