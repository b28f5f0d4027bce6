//! The authorization server's forms over loopback: at most 64 parameters,
//! each name the server reads once, whatever the size of the form. (That parsing is linear
//! and refuses a full-size form before decoding it is shown at the foot of
//! `src/authz_server/form.rs`.)

use crate::common;

use common::Gateway;
use serde_json::Value;

const YAML: &str = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0, bind: 127.0.0.1 }
authorization_server:
  issuer: "http://127.0.0.1"
  token_format: opaque
  scopes:
  - { name: view, description: "View" }
  clients:
  - name: App
    client_id: app
    client_secret: app-secret
    grant_types: [client_credentials]
    scopes: [view]
"#;

const GRANT: &str = "grant_type=client_credentials&client_id=app&client_secret=app-secret";

/// Posts `body` to the token endpoint; the status and the JSON answer.
async fn token(gw: &Gateway, body: String) -> (u16, Value) {
    let response = gw
        .request(reqwest::Method::POST, "/oauth2/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("response");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON answer"))
}

/// The grant's three parameters and `extra` more, each of its own name.
fn grant_with(extra: usize) -> String {
    let mut body = GRANT.to_owned();
    for i in 0..extra {
        body.push_str(&format!("&extra{i}=x"));
    }
    body
}

#[tokio::test]
async fn sixty_four_parameters_are_read_and_a_sixty_fifth_refuses_the_form() {
    let gw = Gateway::start(YAML).await;
    let (status, answer) = token(&gw, grant_with(61)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["access_token"].is_string(), "{answer}");
    let (status, answer) = token(&gw, grant_with(62)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_request");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_parameter_sent_twice_still_refuses_the_form() {
    let gw = Gateway::start(YAML).await;
    for body in [
        format!("{GRANT}&grant_type=password"),
        format!("{GRANT}&scope=&scope=view"),
        format!("{GRANT}&client_%69d=app"),
    ] {
        let (status, answer) = token(&gw, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "invalid_request", "{body}");
    }
    gw.shutdown().await;
}

/// RFC 6749 §3.1: a parameter the server does not read is ignored, and
/// so are its repeats (RFC 8707 sends `resource` once per resource).
#[tokio::test]
async fn parameters_the_server_does_not_read_may_repeat() {
    let gw = Gateway::start(YAML).await;
    let body =
        format!("{GRANT}&resource=https%3A%2F%2Fa.example&resource=https%3A%2F%2Fb.example&x=&x=1");
    let (status, answer) = token(&gw, body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["access_token"].is_string(), "{answer}");
    gw.shutdown().await;
}

/// A body past the endpoints' 64 KiB is refused in the endpoints' terms:
/// 413 with RFC 6749 §5.2's `invalid_request`.
#[tokio::test]
async fn a_body_past_64_kib_is_an_invalid_request() {
    let gw = Gateway::start(YAML).await;
    let body = format!("{GRANT}&pad={}", "x".repeat(70 * 1024));
    let (status, answer) = token(&gw, body).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "invalid_request", "{answer}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_full_size_form_of_distinct_keys_is_refused_as_too_many_parameters() {
    let gw = Gateway::start(YAML).await;
    let mut body = GRANT.to_owned();
    let mut i = 0;
    while body.len() + 16 < 64 * 1024 {
        body.push_str(&format!("&%6B{i:05}=v"));
        i += 1;
    }
    assert!(i > 5000, "{i} keys");
    let (status, answer) = token(&gw, body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_request");
    // The server still issues tokens.
    let (status, answer) = token(&gw, GRANT.to_owned()).await;
    assert_eq!(status, 200, "{answer}");
    gw.shutdown().await;
}
