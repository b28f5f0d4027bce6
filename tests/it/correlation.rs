//! `X-Request-Id` and W3C `traceparent` through the gateway: an id made
//! when missing, a client's request id replaced, a trusted proxy's kept,
//! the same id returned to the client and logged; a valid trace passed on,
//! one started only when asked for; with `forwarding` off, nothing made
//! and nothing a client sent passed on.
use crate::common;

use common::Gateway;
use serde_json::Value;

fn yaml(trusted: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
trusted_proxies: [{trusted}]
apis:
- name: Echo
  base_path: /echo
  upstream: {{ echo: true }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
"#
    )
}

/// What the upstream received (the echo upstream's answer) and the
/// client's `X-Request-Id`.
async fn exchange(gw: &Gateway, headers: &[(&str, &str)]) -> (Value, String) {
    let mut request = gw.client.get(gw.url("/echo/x"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("answered");
    assert_eq!(response.status(), 200);
    let id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id on the answer")
        .to_str()
        .unwrap()
        .to_owned();
    let echoed: Value = response.json().await.unwrap();
    (echoed["headers"].clone(), id)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn a_request_id_is_made_and_a_clients_id_is_not_trusted() {
    let gw = Gateway::start(&yaml("")).await;
    let (upstream, id) = exchange(&gw, &[]).await;
    assert!(is_hex(&id, 32), "{id}");
    assert_eq!(upstream["x-request-id"], id.as_str());
    // No trace started unless asked for: the gateway records no span.
    assert!(upstream.get("traceparent").is_none(), "{upstream}");
    // Each request its own.
    let (_, other) = exchange(&gw, &[]).await;
    assert_ne!(id, other);

    // A client's id, in any spelling, does not reach the upstream.
    let (upstream, id) = exchange(
        &gw,
        &[
            ("x-request-id", "chosen-by-client"),
            ("x_request_id", "sneaky"),
        ],
    )
    .await;
    assert_ne!(id, "chosen-by-client");
    assert_eq!(upstream["x-request-id"], id.as_str());
    assert!(upstream.get("x_request_id").is_none(), "{upstream}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_trusted_proxys_id_and_any_valid_traceparent_are_passed_on() {
    let gw = Gateway::start(&yaml("\"127.0.0.0/8\"")).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (upstream, id) = exchange(
        &gw,
        &[
            ("x-request-id", "lb-7f3a"),
            ("traceparent", trace),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert_eq!(id, "lb-7f3a");
    assert_eq!(upstream["x-request-id"], "lb-7f3a");
    assert_eq!(upstream["traceparent"], trace);
    assert_eq!(upstream["tracestate"], "congo=t61rcWkgMzE");
    // A malformed one is removed, its tracestate with it.
    let (upstream, _) = exchange(
        &gw,
        &[
            ("traceparent", "00-xyz"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    assert!(upstream.get("traceparent").is_none(), "{upstream}");
    assert!(upstream.get("tracestate").is_none(), "{upstream}");
    gw.shutdown().await;
}

/// `forwarding.traceparent: true`: a trace is started (sampled, as the
/// request's own root) where the request has no valid one; a malformed
/// one is replaced, its `tracestate` dropped; a valid one still goes on.
#[tokio::test]
async fn a_trace_is_started_when_asked_for() {
    let gw = Gateway::start(&(yaml("") + "forwarding: { traceparent: true }\n")).await;
    let (upstream, _) = exchange(&gw, &[]).await;
    let trace = upstream["traceparent"].as_str().expect("traceparent made");
    let parts: Vec<&str> = trace.split('-').collect();
    assert_eq!(parts[0], "00");
    assert!(is_hex(parts[1], 32) && is_hex(parts[2], 16), "{trace}");
    assert_eq!(parts[3], "01", "{trace}");
    let (other, _) = exchange(&gw, &[]).await;
    assert_ne!(other["traceparent"], trace);
    let (upstream, _) = exchange(
        &gw,
        &[
            ("traceparent", "00-xyz"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ],
    )
    .await;
    let made = upstream["traceparent"].as_str().expect("replaced");
    assert_ne!(made, "00-xyz");
    assert!(upstream.get("tracestate").is_none(), "{upstream}");
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (upstream, _) = exchange(&gw, &[("traceparent", valid)]).await;
    assert_eq!(upstream["traceparent"], valid);
    gw.shutdown().await;
}

#[tokio::test]
async fn with_forwarding_off_nothing_is_added_and_nothing_a_client_sent_goes_on() {
    let off = "forwarding: { x_forwarded: false, forwarded: false, request_id: false, traceparent: false }\n";
    let gw = Gateway::start(&(yaml("") + off)).await;
    let response = gw
        .client
        .get(gw.url("/echo/x"))
        .header("x-request-id", "chosen-by-client")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-request-id").is_none());
    let echoed: Value = response.json().await.unwrap();
    let upstream = &echoed["headers"];
    for name in [
        "x-request-id",
        "traceparent",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
    ] {
        assert!(upstream.get(name).is_none(), "{name}: {upstream}");
    }
    // A valid trace is still passed on.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = gw
        .client
        .get(gw.url("/echo/x"))
        .header("traceparent", trace)
        .send()
        .await
        .expect("answered");
    let echoed: Value = response.json().await.unwrap();
    assert_eq!(echoed["headers"]["traceparent"], trace);
    gw.shutdown().await;
}

/// The binary serving [`yaml`] with `trusted` proxies, logging at info:
/// its log is read, access lines included (`dir` holds its configuration).
fn logging_process(dir: &std::path::Path, trusted: &str) -> common::process::Started {
    let config = dir.join("gw.yaml");
    std::fs::write(&config, yaml(trusted)).expect("write the config");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command.env_clear().env("MCGW_LOG", "info").args([
        "start",
        "-c",
        config.to_str().expect("utf-8 path"),
    ]);
    common::process::start(&mut command)
}

#[tokio::test]
async fn the_access_log_line_carries_the_request_id_the_client_got() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = logging_process(dir.path(), "");
    // No trusted proxy: the address is the peer's, whatever the request claims.
    let response = common::client()
        .get(format!("http://{}/echo/x", started.http))
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .expect("answered");
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let wanted = format!("request_id={id}");
    let line = started
        .line_with("microgateway::access", std::time::Duration::from_secs(10))
        .expect("an access-log line");
    assert!(line.contains(&wanted), "{line}");
    assert!(line.contains("client=127.0.0.1 "), "{line}");
}

/// A head refused before it made a request (malformed, too large, too
/// slow) is in the access log too, with its status and the peer.
#[tokio::test]
async fn a_refused_request_head_has_its_access_log_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = logging_process(dir.path(), "");
    let answer =
        common::raw_request(started.http, b"GET /echo/x HTTP/1.1\r\nHost gw\r\n\r\n").await;
    assert_eq!(common::status_of(&answer), 400, "{answer}");
    let line = started
        .line_with("microgateway::access", std::time::Duration::from_secs(10))
        .expect("an access-log line");
    assert!(line.contains("status=400"), "{line}");
    assert!(line.contains("client=127.0.0.1 "), "{line}");
    assert!(line.contains("method=- "), "{line}");
}

/// Behind a trusted proxy, the access log names the client the proxy
/// forwards for (the address throttles and `ip_filter` see too).
#[tokio::test]
async fn the_access_log_names_the_client_behind_a_trusted_proxy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = logging_process(dir.path(), r#""127.0.0.1/32""#);
    let response = common::client()
        .get(format!("http://{}/echo/x", started.http))
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let line = started
        .line_with("microgateway::access", std::time::Duration::from_secs(10))
        .expect("an access-log line");
    assert!(line.contains("client=203.0.113.7 "), "{line}");
}
