//! A gRPC client's deadline (`grpc-timeout`) through the gateway: it
//! bounds the call to an HTTP/2 upstream with `upstream.timeout`, the
//! upstream is told the time that remains, a call past its deadline is
//! DEADLINE_EXCEEDED from the gateway, a malformed deadline is refused
//! before the upstream is contacted, and an API that is not gRPC passes
//! the field on untouched. Calls go out over a raw HTTP/2 connection, so
//! that the client sends exactly the field under test and enforces no
//! deadline of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::common::{metric, Gateway};

/// What the upstream received: each call's path and `grpc-timeout`.
type Received = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// An h2c upstream that records every call. A path ending in `/Slow` is
/// never answered; one ending in `/Stream` is answered with a head and one
/// message, and then nothing; any other is answered at once with OK,
/// trailers-only.
async fn recording_upstream() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = service_fn(move |req: http::Request<Incoming>| {
                let timeout = req
                    .headers()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap().to_owned());
                let path = req.uri().path().to_owned();
                seen.lock().unwrap().push((path.clone(), timeout));
                async move {
                    if path.ends_with("/Slow") {
                        let _held = req;
                        std::future::pending::<()>().await;
                    }
                    if path.ends_with("/Stream") {
                        use tokio_stream::StreamExt;
                        let message = hyper::body::Frame::data(Bytes::from_static(&[0; 5]));
                        let frames = tokio_stream::iter([Ok::<_, Infallible>(message)])
                            .chain(tokio_stream::pending());
                        let answer = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .body(http_body_util::StreamBody::new(frames).boxed_unsync())
                            .unwrap();
                        return Ok::<_, Infallible>(answer);
                    }
                    let answer = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "0")
                        .body(Empty::<Bytes>::new().boxed_unsync())
                        .unwrap();
                    Ok::<_, Infallible>(answer)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, received)
}

/// The API `api` (`grpc: true`) at `/echo.Echo` and `<api> plain` (not
/// gRPC) at `/plain`, both to `addr` over h2c, with `upstream.timeout:
/// timeout`. Each test names its own: metrics are the process's.
fn yaml(api: &str, addr: SocketAddr, timeout: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: "{api}"
  version: "1.0"
  base_path: /echo.Echo
  grpc: true
  upstream: {{ url: "http://{addr}/echo.Echo", protocol: h2c, timeout: {timeout} }}
  authentication: {{ type: none }}
  resources: ["POST /Unary", "POST /Slow", "POST /Stream"]
- name: "{api} plain"
  version: "1.0"
  base_path: /plain
  upstream: {{ url: "http://{addr}/plain", protocol: h2c, timeout: {timeout} }}
  authentication: {{ type: none }}
  resources: ["POST /Unary", "POST /Stream"]
"#
    )
}

type Sender = SendRequest<UnsyncBoxBody<Bytes, Infallible>>;

/// An HTTP/2 connection to the gateway (h2c by prior knowledge).
async fn connect(gw: &Gateway) -> Sender {
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

/// A unary call to `path` (one empty message) with `grpc-timeout:
/// timeout`, if given; the answer's head, within 10 s.
async fn call(
    sender: &mut Sender,
    gw: &Gateway,
    path: &str,
    timeout: Option<&str>,
) -> http::response::Parts {
    send(sender, gw, path, timeout).await.into_parts().0
}

/// A call to `path` as [`call`] makes it; the answer, its body to come.
async fn send(
    sender: &mut Sender,
    gw: &Gateway,
    path: &str,
    timeout: Option<&str>,
) -> http::Response<Incoming> {
    let mut req = http::Request::post(format!("http://{}{path}", gw.http))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        req = req.header("grpc-timeout", timeout);
    }
    let req = req
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])).boxed_unsync())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered well before upstream.timeout")
        .expect("an answer, not a reset");
    response
}

/// The answer's `grpc-status`, from its head (trailers-only).
fn grpc_status(head: &http::response::Parts) -> Option<&str> {
    head.headers.get("grpc-status").map(|v| v.to_str().unwrap())
}

/// A `grpc-timeout` value as the gRPC spec writes it.
fn duration_of(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    assert!((1..=8).contains(&digits.len()), "{value}");
    let count: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(count * 3600),
        "M" => Duration::from_secs(count * 60),
        "S" => Duration::from_secs(count),
        "m" => Duration::from_millis(count),
        "u" => Duration::from_micros(count),
        "n" => Duration::from_nanos(count),
        other => panic!("unit {other} in {value}"),
    }
}

/// The `grpc-timeout` the upstream received with each call to `path`.
fn received_at(received: &Received, path: &str) -> Vec<Option<String>> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| at == path)
        .map(|(_, timeout)| timeout.clone())
        .collect()
}

#[tokio::test]
async fn a_call_past_its_deadline_is_deadline_exceeded_long_before_the_upstream_timeout() {
    let (addr, received) = recording_upstream().await;
    let gw = Gateway::start(&yaml("Deadline passed", addr, "30s")).await;
    let mut sender = connect(&gw).await;
    let head = call(&mut sender, &gw, "/echo.Echo/Slow", Some("200m")).await;
    assert_eq!(head.status, 200);
    assert_eq!(grpc_status(&head), Some("4"), "{:?}", head.headers);
    assert_eq!(
        head.headers["grpc-message"],
        "the call's deadline (grpc-timeout) passed before the upstream answered"
    );
    // The upstream was called, told of no more time than the client gave.
    let told = received_at(&received, "/echo.Echo/Slow");
    assert_eq!(told.len(), 1, "{told:?}");
    let left = duration_of(told[0].as_deref().expect("a grpc-timeout upstream"));
    assert!(left <= Duration::from_millis(200), "{left:?}");
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_responses_total{api="Deadline passed",class="grpc_4"}"#
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            r#"microgateway_upstream_errors_total{api="Deadline passed",cause="timeout"}"#
        ),
        0,
        "the client's deadline is counted as the upstream's timeout"
    );
    // The connection serves the next call.
    let head = call(&mut sender, &gw, "/echo.Echo/Unary", None).await;
    assert_eq!(grpc_status(&head), Some("0"));
    gw.shutdown().await;
}

/// A deadline that passes while the answer streams ends it, and the call
/// is counted as DEADLINE_EXCEEDED; an upstream silent mid-answer past its
/// timeout is counted as the upstream's timeout.
#[tokio::test]
async fn a_deadline_or_a_silence_mid_answer_is_counted() {
    let (addr, _) = recording_upstream().await;
    let gw = Gateway::start(&yaml("Mid answer", addr, "1s")).await;
    let mut sender = connect(&gw).await;
    for (path, deadline) in [("/echo.Echo/Stream", Some("300m")), ("/plain/Stream", None)] {
        let response = send(&mut sender, &gw, path, deadline).await;
        assert_eq!(response.status(), 200);
        let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
            .await
            .expect("the answer ends");
        let cut = read
            .err()
            .unwrap_or_else(|| panic!("{path}: cut, not ended"));
        if deadline.is_some() {
            // Reset as a cancelled call, not as the gateway's own error.
            assert_eq!(reset_reason(&cut), Some(h2::Reason::CANCEL), "{cut:?}");
        }
    }
    let text = gw.metrics().await;
    let count = |series: &str| metric(&text, series);
    assert_eq!(
        count(r#"microgateway_responses_total{api="Mid answer",class="grpc_4"}"#),
        1
    );
    assert_eq!(
        count(r#"microgateway_upstream_errors_total{api="Mid answer",cause="timeout"}"#),
        0
    );
    assert_eq!(
        count(r#"microgateway_upstream_errors_total{api="Mid answer plain",cause="timeout"}"#),
        1
    );
    gw.shutdown().await;
}

/// The reason of the HTTP/2 reset behind `error`, if one is.
fn reset_reason(error: &hyper::Error) -> Option<h2::Reason> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = cause.source();
    }
    None
}

/// A call whose client still streams its body when the upstream goes
/// silent mid-answer: the gateway resets the stream, and that is the
/// upstream's failure, not the client's body cut short. The binary runs
/// as a process of its own: `client_errors_total` has no `api` label,
/// and this test process's other gateways count in it too.
#[tokio::test]
async fn the_gateways_own_reset_of_a_streaming_call_is_no_client_fault() {
    let (addr, _) = recording_upstream().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, yaml("Own reset", addr, "1s")).expect("config");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command.env_clear().env("MCGW_LOG", "info").args([
        "start",
        "-c",
        config.to_str().expect("utf-8 path"),
    ]);
    let started = crate::common::process::start(&mut command);
    let tcp = tokio::net::TcpStream::connect(started.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    // One message, and the body left open.
    let (messages, rx) = tokio::sync::mpsc::channel(1);
    messages.send(Bytes::from_static(&[0; 5])).await.unwrap();
    let req = http::Request::post(format!("http://{}/plain/Stream", started.http))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(crate::common::channel_body(rx).boxed_unsync())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("a head")
        .expect("an answer");
    assert_eq!(response.status(), 200);
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the answer ends");
    assert!(read.is_err(), "cut, not ended");
    // The request body's end after the reset has been seen by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin = started.admin.expect("admin address");
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let series = r#"microgateway_upstream_errors_total{api="Own reset plain",cause="timeout"}"#;
    assert_eq!(metric(&text, series), 1, "{text}");
    let truncated = r#"microgateway_client_errors_total{cause="body_truncated"}"#;
    assert_eq!(metric(&text, truncated), 0, "{text}");
    drop(messages);
}

#[tokio::test]
async fn the_upstream_is_told_the_time_that_remains() {
    let (addr, received) = recording_upstream().await;
    let gw = Gateway::start(&yaml("Deadline told", addr, "30s")).await;
    let mut sender = connect(&gw).await;
    for sent in ["200m", "5S", "99999999H"] {
        let head = call(&mut sender, &gw, "/echo.Echo/Unary", Some(sent)).await;
        assert_eq!(grpc_status(&head), Some("0"), "{sent}: {:?}", head.headers);
    }
    let told = received_at(&received, "/echo.Echo/Unary");
    assert_eq!(told.len(), 3, "{told:?}");
    for (sent, told) in ["200m", "5S", "99999999H"].into_iter().zip(told) {
        let told = told.unwrap_or_else(|| panic!("{sent}: no grpc-timeout upstream"));
        let left = duration_of(&told);
        assert!(left <= duration_of(sent), "{sent} told as {told}");
        assert!(left > Duration::ZERO, "{sent} told as {told}");
        // Rewritten, in the finest unit that holds it, not passed on.
        if sent != "99999999H" {
            assert!(told.ends_with('u'), "{sent} told as {told}");
        }
    }
    // A call without a deadline has none upstream.
    call(&mut sender, &gw, "/echo.Echo/Unary", None).await;
    let told = received_at(&received, "/echo.Echo/Unary");
    assert_eq!(told.last(), Some(&None));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_malformed_or_spent_deadline_is_refused_without_contacting_the_upstream() {
    let (addr, received) = recording_upstream().await;
    let gw = Gateway::start(&yaml("Deadline malformed", addr, "30s")).await;
    let mut sender = connect(&gw).await;
    // INTERNAL, as grpc-go answers a malformed grpc-timeout.
    for malformed in ["", "m", "200", "123456789m", "5s", "1.5S", "-5S"] {
        let head = call(&mut sender, &gw, "/echo.Echo/Unary", Some(malformed)).await;
        assert_eq!(head.status, 200);
        assert_eq!(
            grpc_status(&head),
            Some("13"),
            "{malformed:?}: {:?}",
            head.headers
        );
    }
    // An already spent deadline is DEADLINE_EXCEEDED at once.
    let head = call(&mut sender, &gw, "/echo.Echo/Unary", Some("0m")).await;
    assert_eq!(grpc_status(&head), Some("4"), "{:?}", head.headers);
    assert_eq!(
        received.lock().unwrap().len(),
        0,
        "the upstream was called: {:?}",
        received.lock().unwrap()
    );
    // A good call still goes through, on the same connection.
    let head = call(&mut sender, &gw, "/echo.Echo/Unary", Some("5S")).await;
    assert_eq!(grpc_status(&head), Some("0"));
    assert_eq!(received.lock().unwrap().len(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_api_that_is_not_grpc_passes_grpc_timeout_on_unchanged() {
    let (addr, received) = recording_upstream().await;
    let gw = Gateway::start(&yaml("Deadline ignored", addr, "30s")).await;
    let mut sender = connect(&gw).await;
    for sent in ["200m", "0m", "soon"] {
        let head = call(&mut sender, &gw, "/plain/Unary", Some(sent)).await;
        assert_eq!(head.status, 200);
        assert_eq!(grpc_status(&head), Some("0"), "{sent}: {:?}", head.headers);
    }
    let told = received_at(&received, "/plain/Unary");
    assert_eq!(
        told,
        [Some("200m".into()), Some("0m".into()), Some("soon".into())]
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn the_upstream_timeout_answers_as_before_when_it_comes_first() {
    let (addr, _) = recording_upstream().await;
    let gw = Gateway::start(&yaml("Deadline after timeout", addr, "200ms")).await;
    let mut sender = connect(&gw).await;
    let head = call(&mut sender, &gw, "/echo.Echo/Slow", Some("30S")).await;
    // UNAVAILABLE (504), the upstream's timeout, as without a deadline.
    assert_eq!(grpc_status(&head), Some("14"), "{:?}", head.headers);
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_upstream_errors_total{api="Deadline after timeout",cause="timeout"}"#
        ),
        1
    );
    gw.shutdown().await;
}
