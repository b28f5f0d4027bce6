//! Slow clients hold nothing for long: a request body whose client goes
//! silent is answered 408 within `timeouts.body_read` (HTTP/1.1, HTTP/2,
//! the authorization server's endpoints), a client that takes no answer
//! is cut within `timeouts.send`, and the upstream timeout runs only once
//! the request is sent (or while the upstream takes nothing of it).
use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::recording::RecordingUpstream;
use common::{channel_body, status_of, Gateway, Upstream};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// `timeouts.body_read` and `timeouts.send` of these tests.
const BODY_READ: Duration = Duration::from_secs(1);
const SEND: Duration = Duration::from_secs(1);
/// The slack the bounds allow.
const SLACK: Duration = Duration::from_secs(1);

fn slow_yaml(upstream_url: &str, upstream_timeout: &str, extra: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
timeouts: {{ body_read: 1s, send: 1s, idle: 30s }}
{extra}
apis:
- name: Slow
  version: "1.0"
  base_path: /slow
  upstream: {{ url: "{upstream_url}", timeout: {upstream_timeout} }}
  authentication: {{ type: none }}
  resources: ["GET /orders", "POST /orders"]
- name: Quick
  version: "1.0"
  base_path: /quick
  upstream: {{ echo: true }}
  authentication: {{ type: none }}
  resources: ["GET /ping"]
"#
    )
}

/// Sends `head` and the start of a body on a new connection, and then
/// nothing more.
async fn stall(addr: SocketAddr, head: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// The answer on `stream` (read to its close, at most 10 s), and when it
/// came.
async fn answer(mut stream: TcpStream) -> (String, Instant) {
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    (String::from_utf8_lossy(&raw).into_owned(), Instant::now())
}

#[tokio::test]
async fn a_silent_request_body_is_answered_408_within_body_read() {
    let upstream = RecordingUpstream::start().await;
    // An upstream timeout far longer than `body_read`: the client's
    // silence is not the upstream's to answer for. (Metrics are the
    // process's: this test's API has a name of its own.)
    let yaml = slow_yaml(&upstream.url(), "30s", "").replace("name: Slow", "name: Silent");
    let gw = Gateway::start(&yaml).await;
    let started = Instant::now();
    let stream = stall(
        gw.http,
        "POST /slow/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nhello",
    )
    .await;
    let (raw, at) = answer(stream).await;
    assert_eq!(status_of(&raw), 408, "{raw}");
    assert!(
        at - started < BODY_READ + SLACK,
        "answered after {:?}",
        at - started
    );
    // The upstream saw the 5 bytes and then its connection closed.
    let received = upstream.ended().await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("content-length: 100"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    let metrics = gw.metrics().await;
    assert!(
        common::metric(
            &metrics,
            r#"microgateway_client_errors_total{cause="body_timeout"}"#
        ) >= 1
    );
    assert!(
        !metrics.contains(r#"microgateway_upstream_errors_total{api="Silent""#),
        "{metrics}"
    );
    gw.shutdown().await;
}

/// A port with four connection slots and a `body_read` far longer than
/// any bound these tests allow: only pressure can free a slot in time.
fn four_slots_yaml(upstream_url: &str) -> String {
    slow_yaml(upstream_url, "30s", "limits: { max_connections: 4 }")
        .replace("body_read: 1s", "body_read: 30s")
        .replace("idle: 30s", "idle: 60s")
        + r#"authorization_server:
  issuer: "http://127.0.0.1"
  signing_key: signing-key.pem
  store: sqlite:oauth.db
"#
}

#[tokio::test]
async fn four_trickled_bodies_leave_their_slots_to_a_fifth_client() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&four_slots_yaml(&upstream.url())).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..4 {
        // Two bodies for the authorization server's endpoint, two for an
        // upstream: both read their bodies from the same connections.
        let head = if i % 2 == 0 {
            "POST /oauth2/token HTTP/1.1\r\nHost: gw\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ngrant"
        } else {
            "POST /slow/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\nhello"
        };
        slow.push(tokio::spawn(answer(stall(gw.http, head).await)));
    }
    // Let the four take every slot before the fifth comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let innocent = stall(
        gw.http,
        "GET /quick/ping HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (raw, at) = answer(innocent).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    // `body_read` is 30 s: the fifth is answered once the silent bodies
    // have been silent for the pressed bound (1 s), not after 30 s.
    let bound = Duration::from_secs(1) + SLACK + SLACK;
    assert!(
        at - started < bound,
        "the fifth client waited {:?}",
        at - started
    );
    for slow in slow {
        let (raw, at) = slow.await.unwrap();
        assert_eq!(status_of(&raw), 408, "{raw}");
        assert!(at - started < bound, "{:?}", at - started);
    }
    gw.shutdown().await;
}

/// A fifth client, while four hold every slot, is answered within the
/// pressed bound (1 s, and slack), not after `body_read` (30 s).
async fn a_fifth_client_is_served_in_time(gw: &Gateway) {
    let started = Instant::now();
    let innocent = stall(
        gw.http,
        "GET /quick/ping HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (raw, at) = answer(innocent).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let bound = Duration::from_secs(1) + SLACK + SLACK;
    assert!(
        at - started < bound,
        "the fifth client waited {:?}",
        at - started
    );
}

/// Bodies that are never silent for long but come a byte at a time hold
/// slots no better: once a fifth client waits, each that has been read
/// for a second at less than 1 KiB/s on average is answered 408.
#[tokio::test]
async fn four_bodies_sent_a_byte_at_a_time_leave_their_slots_to_a_fifth_client() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&four_slots_yaml(&upstream.url())).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = stall(
            gw.http,
            "POST /slow/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n",
        )
        .await;
        slow.push(tokio::spawn(async move {
            // A byte every 300 ms, for up to 12 s: never silent for 1 s.
            for _ in 0..40 {
                if stream.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            answer(stream).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    a_fifth_client_is_served_in_time(&gw).await;
    let mut timed_out = 0;
    for slow in slow {
        let (raw, _) = slow.await.unwrap();
        if status_of(&raw) == 408 {
            timed_out += 1;
        }
    }
    assert!(timed_out >= 1, "no slow body made way");
    gw.shutdown().await;
}

/// The same over HTTP/2: four h2c connections each trickling a request
/// body hold every slot; their silence is bounded by the pressed bound
/// once a fifth client waits, not by `body_read` (30 s).
#[tokio::test]
async fn four_trickled_http2_bodies_leave_their_slots_to_a_fifth_client() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&four_slots_yaml(&upstream.url())).await;
    let mut senders = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let tcp = TcpStream::connect(gw.http).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .expect("h2c handshake");
        let connection = tokio::spawn(conn);
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let req = Request::post(format!("http://{}/slow/orders", gw.http))
            .body(channel_body(rx).boxed_unsync())
            .unwrap();
        tx.send(Bytes::from_static(b"hello")).await.unwrap();
        answers.push(tokio::spawn(sender.send_request(req)));
        senders.push((sender, tx, connection));
    }
    // Let the four take every slot and go silent before the fifth comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a_fifth_client_is_served_in_time(&gw).await;
    // Each silent body looks at the pressure on its own: as many are
    // answered 408 as freed the slot the fifth needed (one, or a few that
    // looked at once); the others may go on trickling.
    let mut timed_out = 0;
    for answer in &mut answers {
        if let Ok(response) = tokio::time::timeout(Duration::from_millis(100), answer).await {
            assert_eq!(response.unwrap().expect("an answer").status(), 408);
            timed_out += 1;
        }
    }
    assert!(timed_out >= 1, "no trickled body made way");
    // The clients still trickling leave: everything of theirs dropped
    // (the connection's task alone does not hold its socket).
    for answer in answers {
        answer.abort();
    }
    for (sender, tx, connection) in senders {
        connection.abort();
        drop((sender, tx));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_leave_their_slots_to_a_new_client() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&four_slots_yaml(&upstream.url())).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(gw.http).await.unwrap();
        stream
            .write_all(b"GET /quick/ping HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
        idle.push(stream);
    }
    let started = Instant::now();
    let fifth = stall(
        gw.http,
        "GET /quick/ping HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (raw, at) = answer(fifth).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    // `idle` is 60 s: only pressure closed one of the four.
    assert!(at - started < SLACK + SLACK, "waited {:?}", at - started);
    // The idle ones were closed, not left half-open.
    let mut closed = 0;
    for mut stream in idle {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection gave its slot");
    gw.shutdown().await;
}

/// An upstream answering every request with `len` bytes.
async fn big_upstream(len: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(vec![b'b'; len]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let body = body.clone();
            let service = service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn a_client_that_pipelines_and_never_reads_is_cut_within_send() {
    let upstream = big_upstream(1 << 20).await;
    let url = format!("http://{upstream}/api");
    let gw = Gateway::start(&slow_yaml(&url, "30s", "")).await;
    // A small receive window: the answers back up quickly.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(gw.http).await.unwrap();
    let requests = "GET /slow/orders HTTP/1.1\r\nHost: gw\r\n\r\n".repeat(64);
    let started = Instant::now();
    // Requests go on until the gateway cuts the connection; no answer is
    // ever read.
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if stream.write_all(requests.as_bytes()).await.is_err() {
                return Instant::now();
            }
        }
    })
    .await
    .expect("the connection was cut");
    assert!(
        cut - started < SEND + SLACK,
        "cut after {:?}",
        cut - started
    );
    let metrics = gw.metrics().await;
    assert!(
        common::metric(
            &metrics,
            r#"microgateway_client_errors_total{cause="send_timeout"}"#
        ) >= 1
    );
    // Others are served as before.
    let ok = common::raw_request(
        gw.http,
        b"GET /quick/ping HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_upstream_timeout_runs_once_the_request_is_sent() {
    let upstream = Upstream::start().await;
    // An upstream timeout shorter than the client takes to send: the
    // body is slow but never silent for `body_read`.
    let yaml =
        slow_yaml(&upstream.url("/api"), "500ms", "").replace("body_read: 1s", "body_read: 5s");
    let gw = Gateway::start(&yaml).await;
    let mut stream = stall(
        gw.http,
        "POST /slow/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    // The client's own pace, which the upstream timeout must not count.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"world").await.unwrap();
    let (raw, _) = answer(stream).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(&upstream.last().body[..], b"helloworld");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_http2_body_that_stalls_is_answered_408() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&slow_yaml(&upstream.url(), "30s", "")).await;
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let req = Request::post(format!("http://{}/slow/orders", gw.http))
        .body(channel_body(rx).boxed_unsync())
        .unwrap();
    tx.send(Bytes::from_static(b"hello")).await.unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(response.status(), 408);
    assert!(
        started.elapsed() < BODY_READ + SLACK,
        "{:?}",
        started.elapsed()
    );
    let received = upstream.ended().await;
    assert!(
        String::from_utf8_lossy(&received).ends_with("\r\n\r\n5\r\nhello\r\n"),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    drop(tx);
    gw.shutdown().await;
}

/// An h2c client of `addr` whose streams have 64 KiB of window, never
/// opened again (no answer body is read), and whose connection has
/// `connection_window`.
async fn shut_window_client(
    addr: SocketAddr,
    connection_window: u32,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    hyper::client::conn::http2::Connection<
        TokioIo<TcpStream>,
        http_body_util::Empty<Bytes>,
        TokioExecutor,
    >,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(connection_window)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2c handshake")
}

#[tokio::test]
async fn an_http2_client_that_keeps_its_window_shut_is_cut_within_send() {
    let upstream = big_upstream(1 << 20).await;
    let url = format!("http://{upstream}/api");
    let gw = Gateway::start(&slow_yaml(&url, "30s", "")).await;
    // Windows of 64 KiB, never opened again: the answer's body is never
    // read.
    let (mut sender, conn) = shut_window_client(gw.http, 65_535).await;
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/slow/orders", gw.http))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    // Half `send` more: the watchdog looks every half `send`.
    tokio::time::timeout(SEND + SEND / 2 + SLACK, conn)
        .await
        .expect("the connection was closed")
        .unwrap()
        .ok();
    assert!(started.elapsed() >= SEND / 2, "{:?}", started.elapsed());
    drop(response);
    gw.shutdown().await;
}

/// A stream whose window the client never opens is cut within `send`,
/// however busy the client keeps its other streams: each answer is judged
/// by its own wait.
#[tokio::test]
async fn an_http2_stream_left_with_a_shut_window_is_cut_while_other_streams_are_busy() {
    let upstream = big_upstream(1 << 20).await;
    let url = format!("http://{upstream}/api");
    let gw = Gateway::start(&slow_yaml(&url, "30s", "")).await;
    // A stream window of 64 KiB, never opened again for the big answer;
    // the connection's window is wide, so other streams go on.
    let (mut sender, conn) = shut_window_client(gw.http, 4 << 20).await;
    let mut conn = tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(format!("http://{}{path}", gw.http))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let stuck = sender.send_request(get("/slow/orders")).await.unwrap();
    assert_eq!(stuck.status(), 200);
    let started = Instant::now();
    let bound = SEND + SEND / 2 + SLACK + SLACK;
    let closed = loop {
        if started.elapsed() > bound {
            break false;
        }
        if let Ok(done) = tokio::time::timeout(Duration::from_millis(300), &mut conn).await {
            done.expect("connection task").ok();
            break true;
        }
        // Another stream, read whole: the client takes that answer.
        let Ok(ping) = sender.send_request(get("/quick/ping")).await else {
            break true;
        };
        let _ = ping.into_body().collect().await;
    };
    assert!(closed, "still open after {:?}", started.elapsed());
    drop(stuck);
    gw.shutdown().await;
}

/// An upstream answering every request with two pieces of `piece` bytes,
/// the second a moment after the first.
async fn two_piece_upstream(piece: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 2 * piece);
                let body = vec![b'b'; piece];
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.write_all(&body).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.read(&mut head).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http2_answer_whose_last_piece_waits_for_a_shut_window_is_cut_within_send() {
    // 40 KiB, then 40 KiB into a window of 64 KiB: the last piece of the
    // answer waits for a window the client never opens.
    let upstream = two_piece_upstream(40 * 1024).await;
    let url = format!("http://{upstream}/api");
    let yaml = slow_yaml(&url, "30s", "").replace("idle: 30s", "idle: 1s");
    let gw = Gateway::start(&yaml).await;
    let (mut sender, conn) = shut_window_client(gw.http, 65_535).await;
    let conn = tokio::spawn(conn);
    let req = Request::get(format!("http://{}/slow/orders", gw.http))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    // Half `send` more: the watchdog looks every half `send`.
    tokio::time::timeout(SEND + SEND / 2 + SLACK, conn)
        .await
        .expect("the connection was closed")
        .unwrap()
        .ok();
    drop(response);
    gw.shutdown().await;
}

#[tokio::test]
async fn the_client_deadlines_are_settings_bounded_above_zero() {
    let admin = r#"admin: { port: 0, user: Administrator, password: "{encoded}bWFuYWdl" }"#;
    let yaml = slow_yaml("http://127.0.0.1:9/api", "30s", "")
        .replace("admin: { port: 0 }", admin)
        .replace(
            "body_read: 1s, send: 1s",
            "body_read: 1500ms, send: 2m, tunnel_idle: 45s",
        );
    let gw = Gateway::start(&yaml).await;
    let settings: serde_json::Value = gw
        .client
        .get(gw.admin_url("/rest/microgateway/settings"))
        .basic_auth("Administrator", Some("manage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["timeouts"]["body_read"], 1.5);
    assert_eq!(settings["timeouts"]["send"], 120.0);
    assert_eq!(settings["timeouts"]["tunnel_idle"], 45.0);
    // Where the listeners are bound, beside their ports.
    assert_eq!(settings["ports"]["bind"], "127.0.0.1", "{settings}");
    assert_eq!(settings["admin"]["bind"], "127.0.0.1", "{settings}");
    assert_eq!(settings["admin"]["password"], "****", "{settings}");
    gw.shutdown().await;
    for key in ["body_read", "send"] {
        let zero = slow_yaml("http://127.0.0.1:9/api", "30s", "")
            .replace(&format!("{key}: 1s"), &format!("{key}: 0s"));
        let error = Gateway::try_start(&zero, common::Env::new())
            .await
            .err()
            .expect("refused");
        assert!(
            error.contains(&format!("timeouts.{key}: must be more than 0")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn an_upstream_that_takes_no_request_body_is_given_up_on_after_its_timeout() {
    // An upstream that accepts and then reads nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    });
    let yaml = slow_yaml(
        &format!("http://{addr}/api"),
        "1s",
        "limits: { max_body: 64MiB }",
    )
    .replace("name: Slow", "name: Unread")
    .replace("body_read: 1s", "body_read: 10s");
    let gw = Gateway::start(&yaml).await;
    let (mut from_gw, mut to_gw) = TcpStream::connect(gw.http).await.unwrap().into_split();
    // More than the socket buffers between gateway and upstream hold.
    let len = 32 << 20;
    let head = format!("POST /slow/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: {len}\r\n\r\n");
    let started = Instant::now();
    tokio::spawn(async move {
        let _ = to_gw.write_all(head.as_bytes()).await;
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..len / chunk.len() {
            if to_gw.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut raw = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), from_gw.read(&mut raw))
        .await
        .expect("answered")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw[..n]);
    assert_eq!(status_of(&raw), 504, "{raw}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        common::metric(
            &metrics,
            r#"microgateway_upstream_errors_total{api="Unread",cause="timeout"}"#
        ),
        1
    );
    held.abort();
    gw.shutdown().await;
}
