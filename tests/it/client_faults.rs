//! A client's broken request body is the client's fault: answered 400 (or
//! 501 for a transfer coding the gateway does not implement), the upstream
//! exchange cut before the request is complete, counted as a client error
//! and never as an upstream failure.
use crate::common;

use std::time::Duration;

use common::recording::RecordingUpstream;
use common::{metric, raw_request, status_of, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An API named `api` (metrics are per process: each test its own name).
fn faults_yaml(api: &str, upstream_url: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
timeouts: {{ body_read: 5s }}
apis:
- name: {api}
  version: "1.0"
  base_path: /faults
  upstream: {{ url: "{upstream_url}", timeout: 5s }}
  authentication: {{ type: none }}
  resources: ["POST /orders"]
"#
    )
}

fn chunked_post(body: &str) -> Vec<u8> {
    format!(
        "POST /faults/orders HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

/// The request as the upstream got it: its head, and the bytes after it.
fn split(received: &[u8]) -> (String, Vec<u8>) {
    let text = String::from_utf8_lossy(received);
    let end = text.find("\r\n\r\n").expect("the upstream got a head") + 4;
    (text[..end].to_owned(), received[end..].to_vec())
}

#[tokio::test]
async fn malformed_chunk_lines_are_400_and_the_upstream_never_gets_a_whole_request() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&faults_yaml("Malformed", &upstream.url())).await;
    let before = metric(
        &gw.metrics().await,
        r#"microgateway_client_errors_total{cause="body_malformed"}"#,
    );
    let cases = [
        "5\r\nhello\r\nFFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n",
        "5\r\nhello\r\n-1\r\nx\r\n0\r\n\r\n",
        "5\r\nhello\r\n0x5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n 5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\n\n",
    ];
    for body in cases {
        let raw = raw_request(gw.http, &chunked_post(body)).await;
        assert_eq!(status_of(&raw), 400, "{body:?}: {raw}");
        let (head, sent) = split(&upstream.ended().await);
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        // The body is cut where the client's broke: no last chunk.
        assert!(
            !sent.ends_with(b"0\r\n\r\n"),
            "{body:?}: the upstream got {:?}",
            String::from_utf8_lossy(&sent)
        );
    }
    let metrics = gw.metrics().await;
    let malformed = metric(
        &metrics,
        r#"microgateway_client_errors_total{cause="body_malformed"}"#,
    );
    assert!(malformed >= before + cases.len() as u64, "{malformed}");
    assert_eq!(
        metric(
            &metrics,
            r#"microgateway_responses_total{api="Malformed",class="4xx"}"#
        ),
        cases.len() as u64
    );
    assert_eq!(
        metric(
            &metrics,
            r#"microgateway_responses_total{api="Malformed",class="5xx"}"#
        ),
        0
    );
    assert!(!metrics.contains(r#"microgateway_upstream_errors_total{api="Malformed""#));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_body_shorter_than_its_length_is_400_and_cut_short_upstream() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&faults_yaml("Short", &upstream.url())).await;
    let mut client = TcpStream::connect(gw.http).await.unwrap();
    client
        .write_all(b"POST /faults/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    // The client ends its side with 5 of the 10 bytes sent.
    client.shutdown().await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut raw))
        .await
        .expect("answered")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), 400, "{raw}");
    let (head, sent) = split(&upstream.ended().await);
    assert!(head.contains("content-length: 10"), "{head}");
    // At most the 5 bytes that came: never the 10 the head promised.
    assert!(b"hello".starts_with(&sent), "{sent:?}");
    gw.shutdown().await;
}

/// A path's bytes past ASCII go upstream percent-encoded, three for one:
/// the canonical path is held to `limits.max_uri` too, not only the
/// target as sent.
#[tokio::test]
async fn a_path_that_grows_past_the_limit_as_it_is_encoded_is_414() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&faults_yaml("Grows", &upstream.url())).await;
    // 6,000 bytes as sent (under the 8 KiB default), 18,000 encoded.
    let request = format!(
        "GET /faults/{} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        "\u{e9}".repeat(3000)
    );
    let raw = raw_request(gw.http, request.as_bytes()).await;
    assert_eq!(status_of(&raw), 414, "{}", &raw[..raw.len().min(200)]);
    assert_eq!(upstream.accepted(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_501_and_not_forwarded() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&faults_yaml("Codings", &upstream.url())).await;
    let request = b"POST /faults/orders HTTP/1.1\r\nHost: gw\r\n\
        Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let raw = raw_request(gw.http, request).await;
    assert_eq!(status_of(&raw), 501, "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );
    assert_eq!(upstream.accepted(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn client_faults_and_upstream_failures_are_counted_apart() {
    // An upstream that refuses connections: a port bound, then freed.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_url = format!("http://{}/api", refused.local_addr().unwrap());
    drop(refused);
    let upstream = RecordingUpstream::start().await;
    let yaml = format!(
        "{}- name: Refusing\n  version: \"1.0\"\n  base_path: /down\n  upstream: {{ url: \"{refused_url}\", timeout: 5s }}\n  authentication: {{ type: none }}\n  resources: [\"POST /orders\"]\n",
        faults_yaml("Counted", &upstream.url())
    );
    let gw = Gateway::start(&yaml).await;
    let before = metric(
        &gw.metrics().await,
        r#"microgateway_client_errors_total{cause="body_malformed"}"#,
    );
    let raw = raw_request(gw.http, &chunked_post("zz\r\n")).await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    let down = b"POST /down/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\
        Connection: close\r\n\r\nok";
    assert_eq!(status_of(&raw_request(gw.http, down).await), 502);
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"microgateway_client_errors_total{cause="body_malformed"}"#
        ) > before
    );
    assert!(!metrics.contains(r#"microgateway_upstream_errors_total{api="Counted""#));
    assert_eq!(
        metric(
            &metrics,
            r#"microgateway_upstream_errors_total{api="Refusing",cause="connect"}"#
        ),
        1
    );
    gw.shutdown().await;
}

/// Heads refused before they are a request (no API to count them for, no
/// line in the access log) are counted as the client's faults, by cause.
#[tokio::test]
async fn refused_request_heads_are_counted_as_client_faults() {
    let upstream = RecordingUpstream::start().await;
    let gw = Gateway::start(&faults_yaml("Heads", &upstream.url())).await;
    let long_field = format!(
        "GET /x HTTP/1.1\r\nHost: gw\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(80 * 1024)
    );
    let cases: [(&[u8], u16, &str); 4] = [
        (b"GET /x HTTP/1.1\r\nHost gw\r\n\r\n", 400, "head_malformed"),
        (long_field.as_bytes(), 431, "head_too_large"),
        (
            b"POST /x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
            "transfer_coding",
        ),
        // A client waiting for a `100` it would never get.
        (
            b"POST /x HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue, x\r\nContent-Length: 2\r\n\r\n",
            417,
            "expectation",
        ),
    ];
    for (request, status, cause) in cases {
        // The metrics are the process's: other tests count too.
        let series = format!(r#"microgateway_client_errors_total{{cause="{cause}"}}"#);
        let before = metric(&gw.metrics().await, &series);
        let raw = raw_request(gw.http, request).await;
        assert_eq!(status_of(&raw), status, "{cause}: {raw}");
        assert!(metric(&gw.metrics().await, &series) > before, "{cause}");
    }
    assert_eq!(upstream.accepted(), 0);
}

/// An upstream that answers (2xx, its body to follow) before it has the
/// request body is sent no more of it; if it then waits for the body and
/// sends nothing, the answer is cut after its timeout, and that is not
/// counted as the upstream's timeout: the gateway stopped sending.
#[tokio::test]
async fn an_upstream_that_answered_early_and_waits_for_the_body_is_not_blamed() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read_exact(&mut byte).await.is_err() {
                return;
            }
            head.push(byte[0]);
        }
        // The answer's head at once; its body only once the request's came.
        let early = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = stream.write_all(early).await;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    let yaml = faults_yaml("Early", &format!("http://{upstream}/api"))
        .replace("timeout: 5s", "timeout: 1s");
    let gw = Gateway::start(&yaml).await;
    let mut client = TcpStream::connect(gw.http).await.unwrap();
    client
        .write_all(b"POST /faults/orders HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = client.write_all(b"hello").await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw);
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(!raw.ends_with("0\r\n\r\n"), "cut, not ended: {raw}");
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains(r#"microgateway_upstream_errors_total{api="Early""#),
        "{metrics}"
    );
    gw.shutdown().await;
}

/// A request still in flight when the drain timeout passes is counted as
/// cut by the shutdown, not as a client that left.
#[tokio::test]
async fn a_request_cut_at_the_drain_timeout_is_counted_as_the_shutdowns() {
    let upstream = common::Upstream::start().await;
    upstream.set_delay(Duration::from_secs(30));
    let gw = Gateway::start(&format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
timeouts: {{ drain: 0s }}
apis:
- name: CutByShutdown
  base_path: /cut
  upstream: {{ url: "{}", timeout: 60s }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
"#,
        upstream.url("/api")
    ))
    .await;
    let cut = || microgateway::metrics::get().requests_cut_by_shutdown.get();
    let before = cut();
    let url = gw.url("/cut/x");
    let in_flight = tokio::spawn(async move { common::client().get(url).send().await });
    common::wait_until(Duration::from_secs(10), || upstream.hits() > 0).await;
    gw.shutdown().await;
    assert!(in_flight.await.expect("join").is_err(), "cut, unanswered");
    assert!(cut() > before, "not counted as cut by the shutdown");
}
