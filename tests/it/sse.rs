//! Server-Sent Events through the gateway: a raw upstream that sends each
//! event when the test says so, a raw client reading the answer as it
//! comes. Each event reaches the client before the next one is sent (no
//! buffering anywhere), and a client that goes away ends the upstream
//! exchange.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common;
use common::Gateway;

/// An upstream that answers one request with a `text/event-stream` and
/// then writes each event it is given as one chunk; it reports when the
/// gateway closes the connection.
struct EventSource {
    addr: SocketAddr,
    events: mpsc::UnboundedSender<String>,
    closed: mpsc::UnboundedReceiver<()>,
}

impl EventSource {
    async fn start() -> EventSource {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events, mut next) = mpsc::unbounded_channel::<String>();
        let (closed_tx, closed) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                stream.read_exact(&mut byte).await.expect("request head");
                head.push(byte[0]);
            }
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                      cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n",
                )
                .await
                .expect("head");
            let mut rest = [0u8; 64];
            loop {
                tokio::select! {
                    event = next.recv() => {
                        let Some(event) = event else { return };
                        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
                        if stream.write_all(chunk.as_bytes()).await.is_err() {
                            let _ = closed_tx.send(());
                            return;
                        }
                    }
                    read = stream.read(&mut rest) => {
                        if matches!(read, Ok(0) | Err(_)) {
                            let _ = closed_tx.send(());
                            return;
                        }
                    }
                }
            }
        });
        EventSource {
            addr,
            events,
            closed,
        }
    }

    fn send(&self, event: &str) {
        self.events
            .send(event.to_owned())
            .expect("the upstream runs");
    }
}

fn config(upstream: SocketAddr, timeout: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: events
  version: "1.0"
  base_path: /events
  upstream: {{ url: "http://{upstream}/", timeout: {timeout} }}
  authentication: {{ type: none }}
  resources: ["GET /stream"]
"#
    )
}

/// A client that has sent its request and reads the answer as it comes.
struct Reader {
    stream: TcpStream,
    seen: Vec<u8>,
}

impl Reader {
    async fn open(gw: &Gateway) -> Reader {
        let mut stream = TcpStream::connect(gw.http).await.expect("connect");
        stream
            .write_all(
                b"GET /events/stream HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n",
            )
            .await
            .expect("request");
        Reader {
            stream,
            seen: Vec::new(),
        }
    }

    /// Reads until `needle` has arrived (at most 10 s); false if the
    /// connection ended first.
    async fn until(&mut self, needle: &str) -> bool {
        let wait = async {
            let mut buf = [0u8; 4096];
            loop {
                if String::from_utf8_lossy(&self.seen).contains(needle) {
                    return true;
                }
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => self.seen.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the event arrives or the connection ends")
    }
}

#[tokio::test]
async fn events_arrive_one_by_one_and_a_client_that_leaves_ends_the_upstream_exchange() {
    let mut upstream = EventSource::start().await;
    let gw = Gateway::start(&config(upstream.addr, "30s")).await;
    let mut client = Reader::open(&gw).await;
    let started = Instant::now();
    let mut arrivals = Vec::new();
    for i in 0..5 {
        // Each event is sent only once the one before it has arrived: an
        // event held back anywhere (a write batch, a client buffer) would
        // stop the stream here.
        upstream.send(&format!("id: {i}\ndata: event {i}\n\n"));
        assert!(
            client.until(&format!("data: event {i}\n\n")).await,
            "event {i} did not arrive"
        );
        arrivals.push(started.elapsed());
        if i == 0 {
            let head = String::from_utf8_lossy(&client.seen).into_owned();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(head.contains("content-type: text/event-stream"), "{head}");
        }
    }
    assert!(arrivals.windows(2).all(|pair| pair[0] <= pair[1]));
    // A keep-alive comment is an event like any other.
    upstream.send(": keep-alive\n\n");
    assert!(client.until(": keep-alive\n\n").await);
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), upstream.closed.recv())
        .await
        .expect("the gateway closed the upstream connection when the client left")
        .expect("reported");
}

/// Over HTTP/2 (h2c), events arrive one by one too, and a client that
/// resets its stream, keeping its connection, ends the upstream exchange.
#[tokio::test]
async fn an_http2_client_that_resets_its_event_stream_ends_the_upstream_exchange() {
    use http_body_util::BodyExt;
    let mut upstream = EventSource::start().await;
    let gw = Gateway::start(&config(upstream.addr, "30s")).await;
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
    let request = http::Request::get(format!("http://{}/events/stream", gw.http))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("the head arrives")
        .expect("an answer");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    for i in 0..2 {
        upstream.send(&format!("data: event {i}\n\n"));
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("the event arrives")
            .expect("a frame")
            .expect("a good frame");
        let data = frame.into_data().expect("data");
        assert_eq!(&data[..], format!("data: event {i}\n\n").as_bytes());
    }
    // Dropping the body resets the stream (CANCEL); the connection stays.
    drop(body);
    tokio::time::timeout(Duration::from_secs(10), upstream.closed.recv())
        .await
        .expect("the gateway closed the upstream connection when the stream was reset")
        .expect("reported");
    assert!(!sender.is_closed());
    gw.shutdown().await;
}

#[tokio::test]
async fn an_event_stream_silent_for_the_upstream_timeout_is_cut() {
    let upstream = EventSource::start().await;
    // Its own name: the metrics are the test process's.
    let yaml = config(upstream.addr, "1s").replace("name: events", "name: silent events");
    let gw = Gateway::start(&yaml).await;
    let mut client = Reader::open(&gw).await;
    upstream.send("data: first\n\n");
    assert!(client.until("data: first\n\n").await);
    // No more events: after the upstream timeout of silence the answer is
    // cut (no last chunk), so that the client knows it is incomplete.
    assert!(!client.until("0\r\n\r\n").await);
    // Counted as the upstream's failure.
    let metrics = gw.metrics().await;
    let counted = r#"microgateway_upstream_errors_total{api="silent events",cause="timeout"} 1"#;
    assert!(metrics.contains(counted), "{metrics}");
}

/// A long poll whose client leaves before the upstream has answered: the
/// gateway closes the upstream connection at once instead of holding it
/// (and the client's slot) until `upstream.timeout`.
#[tokio::test]
async fn a_client_that_leaves_a_long_poll_ends_the_upstream_exchange_before_the_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let (closed_tx, mut closed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        // Reads the request and answers nothing, until the gateway closes.
        let mut buf = [0u8; 1024];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = closed_tx.send(Instant::now());
    });
    let gw = Gateway::start(&config(upstream, "60s")).await;
    let client = Reader::open(&gw).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = Instant::now();
    drop(client);
    let closed = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the gateway closed the upstream connection when the client left")
        .expect("reported");
    assert!(closed >= left);
    // Counted though never answered: as nginx's 499, under the API it
    // matched, and as a client's fault.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = gw.metrics().await;
        let gone = crate::common::metric(
            &metrics,
            r#"microgateway_client_errors_total{cause="gone"}"#,
        );
        let counted = metrics.lines().any(|l| {
            l.starts_with(r#"microgateway_requests_total{api="events","#)
                && l.contains(r#"status="499""#)
        });
        if gone >= 1 && counted {
            break;
        }
        assert!(Instant::now() < deadline, "no 499 counted:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.shutdown().await;
}
