//! The data path against hostile and heavy input: exact statuses, the
//! upstream never contacted for a refused request, limits, timeouts,
//! HTTP/2 by prior knowledge, streaming both ways, metrics.
use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{channel_body, raw_request, status_of, Gateway, Upstream};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

fn edge_yaml(upstream_url: &str, extra_api: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
limits: {{ max_header_bytes: 8KiB, max_headers: 20, max_uri: 1KiB, max_body: 1KiB }}
timeouts: {{ header_read: 1s, idle: 1s, upstream_connect: 1s, drain: 2s }}
apis:
- name: Edge
  version: "1.0"
  base_path: /travels
  upstream: {{ url: "{upstream_url}", timeout: 1s }}
  authentication: {{ type: none }}
  resources: ["GET /bookings", "POST /bookings", "GET /files/{{rest*}}"]
{extra_api}"#
    )
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A connection that has had one request answered, and is kept alive.
async fn kept_alive(gw: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /travels/bookings HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
    stream
}

/// A good request on a new connection.
async fn still_serves(gw: &Gateway) {
    let raw = raw_request(gw.http, &get("/travels/bookings")).await;
    assert_eq!(
        status_of(&raw),
        200,
        "good request after a hostile one: {raw}"
    );
    // RFC 9110 §7.6.1: what the upstream's `Connection` names stays there.
    assert!(
        !raw.to_ascii_lowercase().contains("x-upstream-hop"),
        "{raw}"
    );
}

#[tokio::test]
async fn hostile_requests_get_400_and_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let post = |extra: &str, body: &str| {
        format!("POST /travels/bookings HTTP/1.1\r\nHost: gw.example\r\nConnection: close\r\n{extra}\r\n{body}")
            .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("encoded slash", get("/travels/files/a%2Fb")),
        ("encoded backslash", get("/travels/files/a%5Cb")),
        ("encoded NUL", get("/travels/files/a%00b")),
        ("encoded control byte", get("/travels/files/a%0Db")),
        ("raw control byte", get("/travels/files/a\x01b")),
        ("backslash", get("/travels/files/a\\b")),
        ("path parameter", get("/travels/bookings;jsessionid=1")),
        ("double encoding", get("/travels/files/a%252Fb")),
        ("malformed escape", get("/travels/files/a%zz")),
        ("climbs above the base path", get("/travels/../travels/bookings")),
        ("climbs above the root", get("/travels/../../bookings")),
        (
            "absolute form with userinfo",
            get("http://user@evil.example/travels/bookings"),
        ),
        ("absolute form of ftp", get("ftp://evil.example/travels/bookings")),
        ("absolute form without a host", get("http://:80/travels/bookings")),
        (
            "authority form",
            b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_vec(),
        ),
        (
            "missing Host",
            b"GET /travels/bookings HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "two Host headers",
            b"GET /travels/bookings HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "malformed Host",
            b"GET /travels/bookings HTTP/1.1\r\nHost: evil.example@gw\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "conflicting Content-Length",
            post("Content-Length: 4\r\nContent-Length: 5\r\n", "abcde"),
        ),
    ];
    for (case, bytes) in cases {
        let raw = raw_request(gw.http, &bytes).await;
        assert_eq!(status_of(&raw), 400, "{case}: {raw}");
        assert_eq!(upstream.hits(), 0, "{case} reached the upstream");
        still_serves(&gw).await;
        upstream.hits.store(0, std::sync::atomic::Ordering::SeqCst);
    }
    gw.shutdown().await;
}

/// RFC 9112 §3.2.2: a server MUST accept the absolute-form, and MUST
/// take the target's authority for the host, not the Host field. The
/// request is routed and forwarded by the target's path and query, as
/// its origin-form; the forwarding fields name the target's authority.
#[tokio::test]
async fn an_absolute_form_target_is_served_as_its_origin_form_for_its_authority() {
    let upstream = Upstream::start().await;
    let yaml = edge_yaml(&upstream.url("/api"), "") + "forwarding: { forwarded: true }\n";
    let gw = Gateway::start(&yaml).await;
    for (target, forwarded_path) in [
        (
            "http://api.example/travels/bookings?x=1",
            "/api/bookings?x=1",
        ),
        (
            "HTTPS://api.example:8443/travels/./bookings",
            "/api/bookings",
        ),
        ("http://api.example/travels/files/a?b=c", "/api/files/a?b=c"),
    ] {
        let raw = raw_request(gw.http, &get(target)).await;
        assert_eq!(status_of(&raw), 200, "{target}: {raw}");
        let seen = upstream.last();
        assert_eq!(seen.uri, forwarded_path, "{target}");
        let authority = target.split('/').nth(2).expect("an authority");
        assert_eq!(seen.headers["x-forwarded-host"], authority, "{target}");
        let forwarded = seen.headers["forwarded"].to_str().expect("ASCII");
        assert!(
            forwarded.contains(&format!("host=\"{authority}\"")),
            "{target}: {forwarded}"
        );
        assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
    }
    // Routed as the origin-form: no resource, no forward.
    let raw = raw_request(gw.http, &get("http://api.example/travels/other")).await;
    assert_eq!(status_of(&raw), 404, "{raw}");
    assert_eq!(upstream.hits(), 3);
    gw.shutdown().await;
}

/// RFC 9112 §6.1: a request with both `Content-Length` and
/// `Transfer-Encoding` is refused with 400, in either order, as the first
/// request of a connection, after another one on a kept-alive connection,
/// and with its head arriving in pieces; the connection then ends, so
/// nothing behind it is read as a request.
#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let smuggler = |order: &str| {
        format!(
            "POST /travels/bookings HTTP/1.1\r\nHost: gw\r\n{order}\r\n0\r\n\r\nGET /travels/files/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
    };
    let orders = [
        "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 4\r\n",
    ];
    for order in orders {
        let raw = raw_request(gw.http, smuggler(order).as_bytes()).await;
        assert_eq!(status_of(&raw), 400, "{raw}");
        assert_eq!(raw.matches("HTTP/1.1 ").count(), 1, "{raw}");
        assert_eq!(upstream.hits(), 0, "{order} reached the upstream");
    }
    // Second on a kept-alive connection, its head in three pieces.
    let mut stream = kept_alive(&gw).await;
    let request = smuggler(orders[0]);
    for piece in [&request[..40], &request[40..60], &request[60..]] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(3)).await;
    let raw = String::from_utf8_lossy(&bytes);
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert!(closed.is_some(), "the connection stays open: {raw}");
    assert_eq!(upstream.hits(), 1, "only the GET reached the upstream");
    // A chunked request alone, and one with a length alone, still pass.
    let chunked = "POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(
        status_of(&raw_request(gw.http, chunked.as_bytes()).await),
        200
    );
    still_serves(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn allowed_encoded_slash_is_forwarded_as_matched() {
    let upstream = Upstream::start().await;
    let extra = format!(
        r#"- name: Files
  version: "1.0"
  base_path: /files
  allow_encoded_slashes: true
  upstream: {{ url: "{}" }}
  authentication: {{ type: none }}
  resources: ["GET /{{rest*}}"]
"#,
        upstream.url("/store")
    );
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), &extra)).await;
    let raw = raw_request(gw.http, &get("/files/a%2fb%2Fc")).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(upstream.last().uri, "/store/a%2Fb%2Fc");
    gw.shutdown().await;
}

/// What the upstream received for `request`, which must have been answered.
async fn forwarded(gw: &Gateway, upstream: &Upstream, request: &[u8]) -> common::Received {
    let raw = raw_request(gw.http, request).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    upstream.last()
}

#[tokio::test]
async fn bodies_keep_their_framing_and_bodiless_requests_get_none() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let seen = forwarded(&gw, &upstream, &get("/travels/bookings")).await;
    assert!(seen.headers.get("content-length").is_none());
    assert!(seen.headers.get("transfer-encoding").is_none());
    let post = |head_and_body: &str| {
        format!(
            "POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{head_and_body}"
        )
    };
    let seen = forwarded(&gw, &upstream, post("Content-Length: 0\r\n\r\n").as_bytes()).await;
    assert_eq!(seen.headers["content-length"], "0");
    assert!(seen.body.is_empty());
    let chunked = post("Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    let seen = forwarded(&gw, &upstream, chunked.as_bytes()).await;
    assert_eq!(seen.body.as_ref(), b"abc");
    assert!(seen.headers.get("content-length").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn method_override_headers_are_ignored_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let raw = raw_request(
        gw.http,
        b"GET /travels/bookings HTTP/1.1\r\nHost: gw\r\nX-HTTP-Method-Override: DELETE\r\nX-HTTP-Method: DELETE\r\nX-Method-Override: DELETE\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = upstream.last();
    assert_eq!(seen.method, "GET");
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(seen.headers.get(name).is_none(), "{name} was forwarded");
    }
    // An override cannot reach a method the resource does not allow.
    let raw = raw_request(
        gw.http,
        b"GET /travels/files/x HTTP/1.1\r\nHost: gw\r\nX-HTTP-Method-Override: PUT\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(upstream.last().method, "GET", "{raw}");
    gw.shutdown().await;
}

/// A client that sends its whole body before it reads (as simple upload
/// clients do) still gets the 413 the gateway answered at once: while the
/// connection closes, the body is read and dropped (like nginx's
/// `lingering_close`), not left for the kernel to answer with a reset that
/// cuts the upload off and can destroy the answer unread.
#[tokio::test]
async fn a_client_sending_a_large_body_before_it_reads_gets_its_413() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    // More than the socket buffers take while nothing reads them.
    const BODY: usize = 16 << 20;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let head =
        format!("POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nContent-Length: {BODY}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'b'; 256 << 10];
    let mut written = Ok(());
    for _ in 0..BODY / chunk.len() {
        if let Err(error) = stream.write_all(&chunk).await {
            written = Err(error);
            break;
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(written.is_ok(), "the upload was cut off: {written:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 413, "{read:?}: {answer}");
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn limits_answer_431_414_413_before_the_upstream() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let big = "x".repeat(10 << 10);
    let raw = raw_request(
        gw.http,
        format!("GET /travels/bookings HTTP/1.1\r\nHost: gw\r\nX-Big: {big}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 431, "header bytes: {raw}");
    still_serves(&gw).await;
    let many: String = (0..30).map(|i| format!("X-H{i}: v\r\n")).collect();
    let raw = raw_request(
        gw.http,
        format!("GET /travels/bookings HTTP/1.1\r\nHost: gw\r\n{many}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 431, "header count: {raw}");
    still_serves(&gw).await;
    let long = format!("/travels/files/{}", "a".repeat(2 << 10));
    let raw = raw_request(gw.http, &get(&long)).await;
    assert_eq!(status_of(&raw), 414, "{raw}");
    still_serves(&gw).await;
    let body = "b".repeat(2 << 10);
    let raw = raw_request(
        gw.http,
        format!("POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 413, "declared length: {raw}");
    let hits_before_chunked = upstream.hits();
    assert_eq!(
        hits_before_chunked, 3,
        "only the good requests were forwarded"
    );
    still_serves(&gw).await;
    // A chunked body is streamed, so the upstream sees the head; it never
    // sees a complete body over the limit.
    let chunk = format!("{:x}\r\n{}\r\n", 600, "c".repeat(600));
    let raw = raw_request(
        gw.http,
        format!("POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}{chunk}{chunk}0\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 413, "chunked growing past: {raw}");
    assert!(upstream
        .received
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.body.len() <= 1024));
    still_serves(&gw).await;
    gw.shutdown().await;
}

/// Reads until the peer closes; returns what came and how long it took.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Some(started.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_after_header_read() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"GET /travels/bookings HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), trickle).await;
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the slow connection is still open");
    assert_ne!(status_of(&String::from_utf8_lossy(&bytes)), 200);
    assert_eq!(upstream.hits(), 0);
    still_serves(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_header_read() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    // Timed from before the connect: the gateway's clock starts at accept,
    // and this task may be scheduled late after the connect.
    let started = std::time::Instant::now();
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(4)).await;
    closed.expect("a connection that sends nothing is closed");
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(900),
        "closed too early: {closed:?}"
    );
    still_serves(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle() {
    let upstream = Upstream::start().await;
    let yaml = edge_yaml(&upstream.url("/api"), "")
        .replace("header_read: 1s, idle: 1s", "header_read: 10s, idle: 1s");
    let gw = Gateway::start(&yaml).await;
    // Timed from before the request: the gateway's idle clock starts when
    // the response is sent, and this task may read it late.
    let started = std::time::Instant::now();
    let mut stream = kept_alive(&gw).await;
    let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    closed.expect("an idle keep-alive connection is closed");
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(3),
        "closed after {closed:?}, idle is 1s"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn slow_request_in_flight_outlives_idle() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(1800));
    let yaml = edge_yaml(&upstream.url("/api"), "")
        .replace("timeout: 1s }", "timeout: 5s }")
        .replace("header_read: 1s, idle: 1s", "header_read: 10s, idle: 1s");
    let gw = Gateway::start(&yaml).await;
    let raw = raw_request(gw.http, &get("/travels/bookings")).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    gw.shutdown().await;
}

#[tokio::test]
async fn unreachable_upstream_gets_502_and_slow_one_504() {
    let closed = crate::common::Refusing::new();
    let addr = closed.addr;
    let slow = Upstream::start().await;
    slow.set_delay(Duration::from_secs(3));
    let extra = format!(
        r#"- name: Slow
  version: "1.0"
  base_path: /slow
  upstream: {{ url: "{}", timeout: 300ms }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
"#,
        slow.url("/api")
    );
    let gw = Gateway::start(&edge_yaml(&format!("http://{addr}/api"), &extra)).await;
    let raw = raw_request(gw.http, &get("/travels/bookings")).await;
    assert_eq!(status_of(&raw), 502, "{raw}");
    let started = Instant::now();
    let raw = raw_request(gw.http, &get("/slow/x")).await;
    assert_eq!(status_of(&raw), 504, "{raw}");
    assert!(started.elapsed() < Duration::from_secs(2));
    gw.shutdown().await;
}

#[tokio::test]
async fn connection_over_the_limit_waits_for_a_free_slot() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(1500));
    let yaml = edge_yaml(&upstream.url("/api"), "")
        .replace("max_body: 1KiB", "max_body: 1KiB, max_connections: 2")
        .replace("timeout: 1s }", "timeout: 5s }")
        .replace("header_read: 1s, idle: 1s", "header_read: 10s, idle: 10s");
    let gw = Gateway::start(&yaml).await;
    // Two requests in flight hold both slots: pressure cuts no request
    // that waits for its upstream.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let addr = gw.http;
            tokio::spawn(async move { raw_request(addr, &get("/travels/bookings")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = tokio::spawn({
        let addr = gw.http;
        async move { raw_request(addr, &get("/travels/bookings")).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "the third connection was served over the limit"
    );
    for held in held {
        let raw = held.await.unwrap();
        assert_eq!(status_of(&raw), 200, "{raw}");
    }
    let raw = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(upstream.hits(), 3);
    gw.shutdown().await;
}

async fn h2_connect(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

/// The status of an HTTP/2 `GET url` carrying one more field.
async fn h2_status_with(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    url: &str,
    (name, value): (&str, &str),
) -> StatusCode {
    let request = Request::get(url)
        .header(name, value)
        .body(Empty::new())
        .unwrap();
    sender.send_request(request).await.unwrap().status()
}

#[tokio::test]
async fn h2c_by_prior_knowledge_is_served_and_forwarded_as_http1() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let mut sender = h2_connect(gw.http).await;
    let url = format!("http://gw.example:{}/travels/bookings?x=1", gw.http.port());
    let resp = sender
        .send_request(Request::get(&url).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/api/bookings?x=1");
    assert_eq!(
        seen.headers["x-forwarded-host"],
        format!("gw.example:{}", gw.http.port()).as_str()
    );
    assert_eq!(seen.headers["host"], upstream.addr.to_string().as_str());
    // Several streams on one connection.
    for _ in 0..3 {
        let resp = sender
            .send_request(Request::get(&url).body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    // RFC 9113 §8.3.1: `Host` naming another origin than `:authority`.
    assert_eq!(
        h2_status_with(&mut sender, &url, ("host", "other.example")).await,
        StatusCode::BAD_REQUEST
    );
    let hits = upstream.hits();
    let resp = sender
        .send_request(
            Request::get(format!("http://gw:{}/travels/files/a%2Fb", gw.http.port()))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // RFC 9113 §8.2.1: a value with whitespace at either end is malformed
    // (read as HTTP/1.1, it would be trimmed: the two would differ).
    for value in [" lead", "trail ", "\tboth\t"] {
        assert_eq!(
            h2_status_with(&mut sender, &url, ("x-api-key", value)).await,
            StatusCode::BAD_REQUEST,
            "{value:?}"
        );
    }
    // An expectation HTTP/1.1 would answer 417 (RFC 9110 §10.1.1).
    assert_eq!(
        h2_status_with(&mut sender, &url, ("expect", "100-continue, x")).await,
        StatusCode::EXPECTATION_FAILED
    );
    assert_eq!(upstream.hits(), hits);
    gw.shutdown().await;
}

#[tokio::test]
async fn h2_header_list_over_the_limit_is_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let mut sender = h2_connect(gw.http).await;
    let url = format!("http://gw:{}/travels/bookings", gw.http.port());
    let big = "x".repeat(16 << 10);
    let result = sender
        .send_request(
            Request::get(&url)
                .header("x-big", big)
                .body(Empty::new())
                .unwrap(),
        )
        .await;
    // A stream reset is the other answer RFC 9113 §10.5.1 allows.
    if let Ok(resp) = result {
        assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    assert_eq!(upstream.hits(), 0);
    let mut sender = h2_connect(gw.http).await;
    let resp = sender
        .send_request(Request::get(&url).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    gw.shutdown().await;
}

/// An upstream that counts the request body, signals its first bytes, and
/// answers 10 MiB in two parts: the rest only once the client saw the first.
struct StreamingUpstream {
    addr: SocketAddr,
    saw_request_bytes: Arc<Notify>,
    client_saw_response: Arc<Notify>,
    request_len: Arc<std::sync::atomic::AtomicUsize>,
}

const TEN_MIB: usize = 10 << 20;
const CHUNK: usize = 64 << 10;

async fn streaming_upstream() -> StreamingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let saw_request_bytes = Arc::new(Notify::new());
    let client_saw_response = Arc::new(Notify::new());
    let request_len = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (saw, go, len) = (
        saw_request_bytes.clone(),
        client_saw_response.clone(),
        request_len.clone(),
    );
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = service_fn(move |req: Request<Incoming>| {
            let (saw, go, len) = (saw.clone(), go.clone(), len.clone());
            async move {
                let mut body = req.into_body();
                let mut first = true;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        len.fetch_add(data.len(), std::sync::atomic::Ordering::SeqCst);
                        if first && !data.is_empty() {
                            first = false;
                            saw.notify_one();
                        }
                    }
                }
                let (tx, rx) = mpsc::channel::<Bytes>(4);
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from(vec![b'r'; CHUNK])).await;
                    go.notified().await;
                    for _ in 1..TEN_MIB / CHUNK {
                        if tx.send(Bytes::from(vec![b'r'; CHUNK])).await.is_err() {
                            break;
                        }
                    }
                });
                Ok::<_, Infallible>(hyper::Response::new(channel_body(rx)))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    StreamingUpstream {
        addr,
        saw_request_bytes,
        client_saw_response,
        request_len,
    }
}

#[tokio::test]
async fn ten_mib_streams_both_ways() {
    let upstream = streaming_upstream().await;
    let yaml = edge_yaml(&format!("http://{}/api", upstream.addr), "")
        .replace("max_body: 1KiB", "max_body: 16MiB")
        .replace("timeout: 1s }", "timeout: 30s }")
        .replace("header_read: 1s, idle: 1s", "header_read: 10s, idle: 10s");
    let gw = Gateway::start(&yaml).await;
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let req = Request::post("/travels/bookings")
        .header("host", "gw")
        .body(channel_body(rx))
        .unwrap();
    let response = tokio::spawn(sender.send_request(req));
    tx.send(Bytes::from(vec![b'q'; CHUNK])).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        upstream.saw_request_bytes.notified(),
    )
    .await
    .expect("the upstream saw the first chunk before the client sent the rest");
    for _ in 1..TEN_MIB / CHUNK {
        tx.send(Bytes::from(vec![b'q'; CHUNK])).await.unwrap();
    }
    drop(tx);
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("response head")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        upstream
            .request_len
            .load(std::sync::atomic::Ordering::SeqCst),
        TEN_MIB
    );
    let mut body = response.into_body();
    let mut received = 0;
    while received == 0 {
        let frame = body.frame().await.expect("a first frame").unwrap();
        received += frame.into_data().map_or(0, |d| d.len());
    }
    // The upstream holds the rest back until now: the first bytes came
    // through before the upstream had produced the whole body.
    upstream.client_saw_response.notify_one();
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("body frames keep coming")
    {
        received += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert_eq!(received, TEN_MIB);
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_count_status_classes_and_upstream_time_per_api() {
    let upstream = Upstream::start().await;
    let closed = crate::common::Refusing::new();
    let down = format!(
        r#"- name: MeteredDown
  version: "1.0"
  base_path: /down
  upstream: {{ url: "http://{}/api" }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
"#,
        closed.addr
    );
    let yaml = edge_yaml(&upstream.url("/api"), &down).replace("name: Edge", "name: Metered");
    let gw = Gateway::start(&yaml).await;
    still_serves(&gw).await;
    still_serves(&gw).await;
    let raw = raw_request(gw.http, &get("/down/x")).await;
    assert_eq!(status_of(&raw), 502);
    let text = gw
        .client
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{line_start}` in\n{text}"))
    };
    assert_eq!(
        value(r#"microgateway_responses_total{api="Metered",class="2xx"}"#),
        2.0
    );
    assert_eq!(
        value(r#"microgateway_responses_total{api="MeteredDown",class="5xx"}"#),
        1.0
    );
    assert_eq!(
        value(r#"microgateway_upstream_duration_seconds_count{api="Metered"}"#),
        2.0
    );
    assert!(value(r#"microgateway_upstream_duration_seconds_sum{api="Metered"}"#) > 0.0);
    gw.shutdown().await;
}

/// The statuses of the responses in `raw`, in order.
fn statuses(raw: &str) -> Vec<u16> {
    raw.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| raw[at + 9..].get(..3)?.parse().ok())
        .collect()
}

/// Requests sent in one write are answered in order; a smuggling head
/// among them is refused like a first one, and nothing behind it is read.
#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_pipelined_smuggler_is_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let pipeline = "GET /travels/files/one HTTP/1.1\r\nHost: gw\r\n\r\n\
        POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\n\r\nabc\
        GET /travels/files/two HTTP/1.1\r\nHost: gw\r\n\r\n\
        POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
        GET /travels/files/smuggled HTTP/1.1\r\nHost: gw\r\n\r\n";
    let raw = raw_request(gw.http, pipeline.as_bytes()).await;
    assert_eq!(statuses(&raw), [200, 200, 200, 400], "{raw}");
    let uris: Vec<String> = upstream
        .received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.uri.clone())
        .collect();
    assert_eq!(uris, ["/api/files/one", "/api/bookings", "/api/files/two"]);
    assert_eq!(upstream.last().body.as_ref(), b"", "the GET has no body");
    let posted = upstream.received.lock().unwrap()[1].body.clone();
    assert_eq!(posted.as_ref(), b"abc");
    gw.shutdown().await;
}

/// `Expect: 100-continue`: the client is asked for the body only when the
/// gateway reads it; a request refused before that gets its answer alone.
#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_wanted() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream
        .write_all(b"POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .expect("an interim answer")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n\r\n"),
        "{interim}"
    );
    stream.write_all(b"hello").await.unwrap();
    let (bytes, _) = read_until_closed(&mut stream, Duration::from_millis(1500)).await;
    let raw = interim + &String::from_utf8_lossy(&bytes);
    assert_eq!(statuses(&raw), [100, 200], "{raw}");
    assert_eq!(upstream.last().body.as_ref(), b"hello");
    // The expectation was met here: an upstream asked it too, answering
    // without reading the body, would read the body as the next request.
    assert!(upstream.last().headers.get("expect").is_none());
    // Refused by its route before the body is wanted: no 100.
    let raw = raw_request(
        gw.http,
        b"POST /travels/files/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&raw), [405], "{raw}");
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

/// HTTP/1.0 clients: closed after the answer unless they ask to keep the
/// connection, and then told it is kept.
#[tokio::test]
async fn http_1_0_clients_get_their_connection_semantics() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let raw = raw_request(
        gw.http,
        b"GET /travels/bookings HTTP/1.0\r\nHost: gw\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&raw), [200], "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    let request = b"GET /travels/bookings HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\n";
    stream.write_all(request).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(first.contains("connection: keep-alive"), "{first}");
    assert!(first.contains("content-length: 11"), "{first}");
    stream.write_all(request).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
    assert_eq!(upstream.hits(), 3);
    gw.shutdown().await;
}

/// A head that has begun but does not end within `header_read` is
/// answered 408, its connection closed; nothing reaches the upstream.
#[tokio::test]
async fn an_unfinished_head_is_answered_408() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let mut stream = kept_alive(&gw).await;
    stream
        .write_all(b"GET /travels/bookings HTTP/1.1\r\nHost: gw\r\n")
        .await
        .unwrap();
    let (bytes, closed) = read_until_closed(&mut stream, Duration::from_secs(4)).await;
    let raw = String::from_utf8_lossy(&bytes);
    assert_eq!(statuses(&raw), [408], "{raw}");
    assert!(closed.is_some(), "the connection stays open");
    assert_eq!(upstream.hits(), 1, "only the first request went upstream");
    gw.shutdown().await;
}

/// `limits.max_headers` (431) holds for HTTP/2 requests as for HTTP/1.1
/// ones: a request with more fields than the limit never reaches the
/// upstream, whichever protocol the client spoke.
#[tokio::test]
async fn h2_more_fields_than_max_headers_are_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&edge_yaml(&upstream.url("/api"), "")).await;
    let url = format!("http://gw:{}/travels/bookings", gw.http.port());
    // HTTP/1.1: 30 fields (max_headers: 20) get 431.
    let mut head =
        String::from("GET /travels/bookings HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n");
    for i in 0..30 {
        head.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    let raw = raw_request(gw.http, head.as_bytes()).await;
    assert_eq!(status_of(&raw), 431, "{raw}");
    assert_eq!(upstream.hits(), 0);
    // HTTP/2: the same 30 fields (some 500 bytes, far under max_header_bytes).
    let mut sender = h2_connect(gw.http).await;
    let mut request = Request::get(&url);
    for i in 0..30 {
        request = request.header(format!("x-field-{i}"), i.to_string());
    }
    let result = sender
        .send_request(request.body(Empty::new()).unwrap())
        .await;
    let resp = result.expect("an answer");
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(upstream.hits(), 0, "forwarded with 30 fields");
    // A browser sends each cookie as a field of its own over HTTP/2: they
    // count as the one field they are joined into for the upstream.
    let mut request = Request::get(&url);
    for i in 0..30 {
        request = request.header("cookie", format!("c{i}={i}"));
    }
    let resp = sender
        .send_request(request.body(Empty::new()).unwrap())
        .await
        .expect("an answer");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

/// An upstream that answers every request with `answer` and closes.
async fn answering_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let _ = stream.write_all(answer).await;
            });
        }
    });
    addr
}

/// An HTTP/1.0 client's answer of no known length ends with the
/// connection (RFC 9112 §6.3): one whose upstream broke off is reset, so
/// that the client (or a cache before it) cannot take the part it got
/// for the whole; a whole one ends with a close.
#[tokio::test]
async fn an_http_1_0_answer_cut_short_upstream_ends_with_a_reset() {
    for (answer, whole) in [
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"[..],
            false,
        ),
        (
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
            true,
        ),
    ] {
        let upstream = answering_upstream(answer).await;
        let gw = Gateway::start(&edge_yaml(&format!("http://{upstream}/api"), "")).await;
        let mut stream = TcpStream::connect(gw.http).await.unwrap();
        stream
            .write_all(b"GET /travels/bookings HTTP/1.0\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
            .await
            .expect("the connection ends");
        let text = String::from_utf8_lossy(&got);
        if whole {
            assert!(read.is_ok(), "{read:?} {text}");
            assert!(text.ends_with("\r\n\r\nhello"), "{text}");
        } else {
            let error = read.expect_err("a reset, not an end of stream");
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{text}");
        }
        gw.shutdown().await;
    }
}
