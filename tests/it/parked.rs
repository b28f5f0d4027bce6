//! An HTTP/1.1 connection that has waited a second for its next request
//! is parked: the future of its exchanges is dropped and it waits with the
//! smallest state it can. Parked, it serves its next requests as before,
//! and is still closed on its idle timeout, on shutdown and when its port
//! runs out of slots.
use crate::common;

use std::time::{Duration, Instant};

use common::{status_of, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longer than the wait after which a connection is parked (1 s).
const PARKED: Duration = Duration::from_millis(1600);
const PING: &[u8] = b"GET /quick/ping HTTP/1.1\r\nHost: gw\r\n\r\n";

fn yaml(idle: &str, extra: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
timeouts: {{ idle: {idle}, drain: 20s }}
{extra}
apis:
- name: Quick
  version: "1.0"
  base_path: /quick
  upstream: {{ echo: true }}
  authentication: {{ type: none }}
  resources: ["GET /ping"]
"#
    )
}

/// Reads `count` whole answers (each with its `Content-Length`) from
/// `stream`; their statuses.
async fn answers(stream: &mut TcpStream, count: usize) -> Vec<u16> {
    let mut raw = Vec::new();
    let mut statuses = Vec::new();
    let mut buf = [0u8; 4096];
    while statuses.len() < count {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                statuses.push(status_of(&head));
                raw.drain(..end + 4 + length);
                continue;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            other => panic!("connection ended before {count} answers: {other:?}"),
        }
    }
    statuses
}

/// Whether the gateway closes `stream` within `limit`, and when.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

async fn served_once(gw: &Gateway) -> TcpStream {
    let mut stream = TcpStream::connect(gw.http).await.unwrap();
    stream.write_all(PING).await.unwrap();
    assert_eq!(answers(&mut stream, 1).await, [200]);
    stream
}

#[tokio::test]
async fn a_parked_connection_serves_its_next_requests() {
    let gw = Gateway::start(&yaml("30s", "")).await;
    let mut stream = served_once(&gw).await;
    tokio::time::sleep(PARKED).await;
    stream.write_all(PING).await.unwrap();
    assert_eq!(answers(&mut stream, 1).await, [200]);
    // Two pipelined requests wake it.
    tokio::time::sleep(PARKED).await;
    stream.write_all(&[PING, PING].concat()).await.unwrap();
    assert_eq!(answers(&mut stream, 2).await, [200, 200]);
    // A head that comes in two pieces: the first wakes it, the second
    // completes the head.
    tokio::time::sleep(PARKED).await;
    stream.write_all(&PING[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stream.write_all(&PING[10..]).await.unwrap();
    assert_eq!(answers(&mut stream, 1).await, [200]);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_parked_connection_is_closed_after_idle() {
    let gw = Gateway::start(&yaml("3s", "")).await;
    // Timed from before the request: the idle clock starts at the answer.
    let started = Instant::now();
    let mut stream = served_once(&gw).await;
    closed_within(&mut stream, Duration::from_secs(8))
        .await
        .expect("a parked connection is closed after idle");
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(2800) && closed < Duration::from_secs(6),
        "closed after {closed:?}, idle is 3s"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_parked_connections_at_once() {
    let gw = Gateway::start(&yaml("60s", "")).await;
    let mut stream = served_once(&gw).await;
    tokio::time::sleep(PARKED).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(gw.shutdown());
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a parked connection outlived shutdown");
    // It did not wait for the drain timeout (20 s).
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown waited for a parked connection")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn parked_connections_leave_their_slots_to_a_new_client() {
    let gw = Gateway::start(&yaml("60s", "limits: { max_connections: 2 }")).await;
    let mut parked = Vec::new();
    for _ in 0..2 {
        parked.push(served_once(&gw).await);
    }
    tokio::time::sleep(PARKED).await;
    let started = Instant::now();
    let mut third = TcpStream::connect(gw.http).await.unwrap();
    third.write_all(PING).await.unwrap();
    assert_eq!(answers(&mut third, 1).await, [200]);
    // `idle` is 60 s: only pressure closed one of the two.
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut closed = 0;
    for mut stream in parked {
        if closed_within(&mut stream, Duration::from_secs(3))
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no parked connection gave its slot");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_connection_parked_before_its_first_request_may_still_speak_http2() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    // (`header_read` is 10 s by default: longer than the silence.)
    let gw = Gateway::start(&yaml("30s", "")).await;
    let stream = TcpStream::connect(gw.http).await.unwrap();
    // Silent past the wait after which it is parked; then HTTP/2 by prior
    // knowledge, whose preface only the first bytes may be.
    tokio::time::sleep(PARKED).await;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(
            http::Request::get(format!("http://{}/quick/ping", gw.http))
                .body(Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    gw.shutdown().await;
}
