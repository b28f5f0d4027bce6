//! Matching and forwarding over loopback HTTP: which API and resource a
//! request reaches, what the upstream receives, and what the client is told
//! when nothing may be forwarded.

use crate::common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{raw_request, status_of, Env, Gateway, Upstream};
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use microgateway::config::Snapshot;
use microgateway::policy::{decide, Outcome, RouteProblem};
use tokio::net::TcpStream;

fn travels(upstream: &Upstream) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: "Time travels"
  version: "1.0"
  base_path: /travels
  upstream: {{ url: "{}" }}
  resources:
  - "GET /bookings"
  - "GET /bookings/{{id}}"
  - "POST /bookings"
  - "GET /bookings/special"
  - "GET /files/{{rest*}}"
  authentication:
    type: none
"#,
        upstream.url("/api")
    )
}

/// A configuration with `extra` top-level settings and one API on `upstream`.
fn travels_with(upstream: &Upstream, extra: &str) -> String {
    format!("{extra}\n{}", travels(upstream))
}

fn snapshot(yaml: &str) -> Snapshot {
    microgateway::config::load_text(Path::new("/routing.yaml"), yaml, &Env::new(), 1)
        .unwrap_or_else(|e| panic!("invalid configuration:\n{e}"))
        .snapshot
}

/// The resource template `method path` matched, by the decision function.
fn matched(snap: &Snapshot, method: Method, path: &str) -> String {
    let verdict = decide(snap, &method, path, None, None);
    let route = verdict
        .route
        .unwrap_or_else(|| panic!("{method} {path}: {:?}", verdict.outcome));
    format!(
        "{} {}",
        route.resource().method,
        route.resource().template.text
    )
}

const PRECEDENCE: &str = r#"
ports: { http: 0 }
apis:
- name: Files
  base_path: /f
  upstream: { echo: true }
  resources:
  - "GET /docs/{rest*}"
  - "GET /docs/{id}"
  - "GET /docs/readme"
  - "GET /a/{x}/c"
  - "GET /a/b/{y}"
  authentication:
    type: none
"#;

#[test]
fn literal_segment_beats_parameter() {
    let snap = snapshot(PRECEDENCE);
    assert_eq!(
        matched(&snap, Method::GET, "/f/docs/readme"),
        "GET /docs/readme"
    );
    // The first segment that differs decides, not the number of literals.
    assert_eq!(matched(&snap, Method::GET, "/f/a/b/c"), "GET /a/b/{y}");
}

#[test]
fn parameter_beats_tail() {
    let snap = snapshot(PRECEDENCE);
    assert_eq!(matched(&snap, Method::GET, "/f/docs/7"), "GET /docs/{id}");
}

#[test]
fn tail_takes_several_segments() {
    let snap = snapshot(PRECEDENCE);
    assert_eq!(
        matched(&snap, Method::GET, "/f/docs/7/8"),
        "GET /docs/{rest*}"
    );
    assert_eq!(
        decide(&snap, &Method::GET, "/f/docs", None, None).outcome,
        Outcome::NoRoute(RouteProblem::NoResource {
            api: "Files".into()
        })
    );
    // Paths of any depth: 15, 16, 17 and 40 segments after `docs`.
    for depth in [15, 16, 17, 40] {
        let path = format!("/f/docs{}", "/s".repeat(depth));
        assert_eq!(matched(&snap, Method::GET, &path), "GET /docs/{rest*}");
    }
    let deep_literal = format!("/f/a/b{}", "/x".repeat(20));
    assert!(decide(&snap, &Method::GET, &deep_literal, None, None)
        .route
        .is_none());
}

#[test]
fn parameter_matches_one_non_empty_segment() {
    let snap = snapshot(
        r#"
apis:
- name: A
  base_path: /a
  upstream: { echo: true }
  resources: ["GET /bookings/{id}"]
  authentication:
    type: none
"#,
    );
    assert_eq!(
        matched(&snap, Method::GET, "/a/bookings/7"),
        "GET /bookings/{id}"
    );
    for path in ["/a/bookings/", "/a/bookings", "/a/bookings/7/8"] {
        assert!(
            matches!(
                decide(&snap, &Method::GET, path, None, None).outcome,
                Outcome::NoRoute(RouteProblem::NoResource { .. })
            ),
            "{path}"
        );
    }
}

/// Each spelling of a path matches the resource it names: escapes of
/// what a segment holds as it is are decoded, `//` merged, a trailing
/// slash matched as the path without it (then, for a tail, as written);
/// configured literals and base paths take the same canonical form.
#[test]
fn spellings_of_one_path_match_one_resource() {
    let snap = snapshot(
        r#"
apis:
- name: A
  base_path: /caf%c3%a9/%7Ea
  upstream: { echo: true }
  resources:
  - "GET /users/@me"
  - "GET /users/%7eroot"
  - "GET /users/{id}"
  - "GET /files/secret"
  - "GET /files/{rest*}"
  authentication:
    type: none
"#,
    );
    let base = "/caf%C3%A9/~a";
    for (path, resource) in [
        ("/users/@me", "GET /users/@me"),
        ("/users/%40me", "GET /users/@me"),
        ("/users/%40me/", "GET /users/@me"),
        ("/users/~root", "GET /users/%7eroot"),
        ("/users/%7Eroot", "GET /users/%7eroot"),
        ("/users/7/", "GET /users/{id}"),
        ("/files/secret", "GET /files/secret"),
        ("/files//secret", "GET /files/secret"),
        ("//files/secret", "GET /files/secret"),
        ("/files/secret/", "GET /files/secret"),
        ("/files/secret//", "GET /files/secret"),
        ("/files/other/", "GET /files/{rest*}"),
        ("/files/", "GET /files/{rest*}"),
    ] {
        assert_eq!(
            matched(&snap, Method::GET, &format!("{base}{path}")),
            resource,
            "{path}"
        );
    }
    for spelled in ["/caf%c3%a9/%7ea", "/caf%C3%A9/%7Ea", "/caf%C3%A9//~a"] {
        let path = format!("{spelled}/users/@me");
        assert_eq!(
            matched(&snap, Method::GET, &path),
            "GET /users/@me",
            "{path}"
        );
    }
}

/// A trailing slash matches as the path without it and as written (and,
/// where a tail is the more specific, a path without one as with it): the
/// more specific of the two resources is the request's (the other must
/// allow it too, `enforcement::a_trailing_slash_needs_what_both_its_readings_need`).
#[test]
fn a_trailing_slash_takes_the_more_specific_of_its_two_readings() {
    let snap = snapshot(
        r#"
apis:
- name: A
  base_path: /a
  upstream: { echo: true }
  resources:
  - "GET /files/{name}"
  - "GET /files/secret/{rest*}"
  - "GET /docs/{name}"
  - "GET /docs/{rest*}"
  authentication:
    type: none
"#,
    );
    for (path, resource) in [
        ("/a/files/secret/", "GET /files/secret/{rest*}"),
        // Read with a slash too, where the more specific tail takes it.
        ("/a/files/secret", "GET /files/secret/{rest*}"),
        ("/a/files/other", "GET /files/{name}"),
        ("/a/files/other/", "GET /files/{name}"),
        ("/a/files/secret/x", "GET /files/secret/{rest*}"),
        ("/a/docs/x/", "GET /docs/{name}"),
    ] {
        assert_eq!(matched(&snap, Method::GET, path), resource, "{path}");
    }
}

/// Without a trailing slash, a path is read with one too where a tail
/// then takes it that is more specific, or that extends the template the
/// path matched (`/{name}/{rest*}` of `/{name}`): both must allow it. A
/// literal resource beside a catch-all needs no more than it says.
#[test]
fn a_path_without_a_slash_is_read_with_one_where_a_tail_would_take_it() {
    let snap = snapshot(
        r#"
apis:
- name: A
  base_path: /a
  upstream: { echo: true }
  resources:
  - "GET /{name}"
  - "GET /{name}/{rest*}"
  - "GET /admin"
  - "GET /pages/{rest*}"
  authentication:
    type: none
"#,
    );
    let readings = |path: &str| {
        let verdict = decide(&snap, &Method::GET, path, None, None);
        let route = verdict.route.unwrap_or_else(|| panic!("{path}"));
        let text = |r: &microgateway::config::snapshot::Resource| {
            format!("{} {}", r.method, r.template.text)
        };
        let other = route.other_reading().map(|o| text(o.resource()));
        (text(route.resource()), other)
    };
    let both = |one: &str, other: &str| (one.to_owned(), Some(other.to_owned()));
    assert_eq!(
        readings("/a/files"),
        both("GET /{name}", "GET /{name}/{rest*}")
    );
    assert_eq!(
        readings("/a/pages"),
        both("GET /pages/{rest*}", "GET /{name}")
    );
    assert_eq!(readings("/a/admin"), ("GET /admin".to_owned(), None));
    assert_eq!(
        readings("/a/files/x"),
        ("GET /{name}/{rest*}".to_owned(), None)
    );
}

#[tokio::test]
async fn forwards_with_base_path_stripped_and_query_kept() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let resp = gw.get("/travels/bookings/7?x=1&y=a%20b").await;
    assert_eq!(resp.status(), 200);
    let received = upstream.last();
    assert_eq!(received.method, "GET");
    assert_eq!(received.uri, "/api/bookings/7?x=1&y=a%20b");
    assert_eq!(received.headers["host"], upstream.addr.to_string());
    gw.shutdown().await;
}

/// With `type: none`, scopes only declare routes (a warning says so): their
/// resources are served to anyone, the others' paths are still 404.
#[tokio::test]
async fn scopes_under_type_none_only_declare_routes() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Open
  base_path: /open
  upstream: {{ url: "{}" }}
  authentication: {{ type: none }}
  scopes:
  - name: View
    resources: ["GET /bookings/{{id}}"]
  resources: ["GET /status"]
"#,
        upstream.url("/api")
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(gw.get("/open/bookings/7").await.status(), 200);
    assert_eq!(upstream.last().uri, "/api/bookings/7");
    assert_eq!(gw.get("/open/status").await.status(), 200);
    assert_eq!(gw.get("/open/other").await.status(), 404);
    gw.shutdown().await;
}

#[tokio::test]
async fn undeclared_path_is_404_and_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    for path in [
        "/travels/admin",
        "/travels",
        "/travels/bookings/7/x",
        "/elsewhere",
    ] {
        let resp = gw.get(path).await;
        assert_eq!(resp.status(), 404, "{path}");
        let body: serde_json::Value = resp.json().await.expect("json body");
        assert_eq!(body["error"], "not_found");
    }
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn longest_base_path_wins_on_a_segment_boundary() {
    let short = Upstream::start().await;
    let long = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Travels
  base_path: /travels
  upstream: {{ url: "{}" }}
  resources: ["GET /bookings"]
  authentication:
    type: none
- name: VIP
  base_path: /travels/vip
  upstream: {{ url: "{}" }}
  resources: ["GET /bookings"]
  authentication:
    type: none
"#,
        short.url("/short"),
        long.url("/long")
    );
    let gw = Gateway::start(&yaml).await;
    assert_eq!(gw.get("/travels/vip/bookings").await.status(), 200);
    assert_eq!(long.last().uri, "/long/bookings");
    assert_eq!(short.hits(), 0);
    assert_eq!(gw.get("/travels/bookings").await.status(), 200);
    assert_eq!(short.last().uri, "/short/bookings");
    // `/travels` is not a prefix of `/travelsx` on a segment boundary.
    assert_eq!(gw.get("/travelsx/bookings").await.status(), 404);
    assert_eq!(gw.get("/travels/vipx/bookings").await.status(), 404);
    assert_eq!((short.hits(), long.hits()), (1, 1));
    gw.shutdown().await;
}

#[tokio::test]
async fn default_base_path_percent_encodes_the_name() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: "Time travels"
  version: "1.0"
  upstream: {{ url: "{}" }}
  resources: ["GET /bookings"]
  authentication:
    type: none
"#,
        upstream.url("/api")
    );
    let gw = Gateway::start(&yaml).await;
    let resp = gw.get("/gateway/Time%20travels/1.0/bookings?x=1").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().uri, "/api/bookings?x=1");
    // `+`, encoded or not, is not a space in a path.
    assert_eq!(
        gw.get("/gateway/Time%2btravels/1.0/bookings")
            .await
            .status(),
        404
    );
    assert_eq!(
        gw.get("/gateway/Time+travels/1.0/bookings").await.status(),
        404
    );
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

/// A name with characters a path segment holds as they are (`'`, `:`,
/// `@`) makes a default base path that requests reach however they
/// write them.
#[test]
fn default_base_path_of_a_name_with_sub_delimiters_is_reachable() {
    let snap = snapshot(
        r#"
apis:
- name: "Tom's orders: v2 @ eu"
  version: "1.0"
  upstream: { echo: true }
  resources: ["GET /orders"]
  authentication:
    type: none
"#,
    );
    for path in [
        "/gateway/Tom%27s%20orders%3A%20v2%20%40%20eu/1.0/orders",
        "/gateway/Tom's%20orders:%20v2%20@%20eu/1.0/orders",
    ] {
        assert_eq!(matched(&snap, Method::GET, path), "GET /orders", "{path}");
    }
}

#[tokio::test]
async fn head_is_allowed_where_get_is() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let resp = gw
        .client
        .head(gw.url("/travels/bookings/7"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().method, "HEAD");
    assert_eq!(upstream.last().uri, "/api/bookings/7");
    gw.shutdown().await;
}

#[tokio::test]
async fn other_method_on_a_known_path_is_405_with_allow() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let resp = gw
        .client
        .delete(gw.url("/travels/bookings"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD, POST");
    let resp = gw
        .client
        .put(gw.url("/travels/bookings/special"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

#[test]
fn allow_lists_each_method_once() {
    let snap = snapshot(
        r#"
apis:
- name: A
  base_path: /a
  upstream: { echo: true }
  resources: ["GET /bookings/{id}", "DELETE /bookings/{id}", "GET /bookings/special"]
  authentication:
    type: none
"#,
    );
    let verdict = decide(&snap, &Method::PUT, "/a/bookings/special", None, None);
    assert_eq!(
        verdict.outcome,
        Outcome::NoRoute(RouteProblem::MethodNotAllowed {
            api: "A".into(),
            allow: vec![Method::GET, Method::HEAD, Method::DELETE],
        })
    );
}

#[tokio::test]
async fn method_override_headers_are_not_honoured() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let resp = gw
        .client
        .get(gw.url("/travels/bookings"))
        .header("X-HTTP-Method-Override", "DELETE")
        .header("X-Method-Override", "DELETE")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let received = upstream.last();
    assert_eq!(received.method, "GET");
    assert!(received.headers.get("x-http-method-override").is_none());
    assert!(received.headers.get("x-method-override").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let request = "GET /travels/bookings HTTP/1.1\r\nHost: gw.example\r\n\
        Connection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
        TE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Kept: yes\r\n\r\n";
    let raw = raw_request(gw.http, request.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let headers = upstream.last().headers;
    for name in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "connection",
    ] {
        assert!(
            headers.get(name).is_none(),
            "{name} was forwarded: {headers:?}"
        );
    }
    assert_eq!(headers["x-kept"], "yes");
    gw.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let resp = gw.get("/travels/bookings").await;
    assert_eq!(resp.status(), 200);
    // The test upstream answers `connection: x-upstream-hop` and `x-upstream-hop: 1`.
    assert!(resp.headers().get("x-upstream-hop").is_none());
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_replace_what_the_client_sent() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    let resp = gw
        .client
        .get(gw.url("/travels/bookings"))
        .header("X-Forwarded-For", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=6.6.6.6;proto=https")
        // Each a second time, and the correlation fields the gateway
        // replaces for a client: every one reaches the upstream once.
        .header("X-Forwarded-For", "7.7.7.7")
        .header("X-Forwarded-Proto", "https")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=7.7.7.7")
        .header("X-Request-Id", "chosen-by-the-client")
        .header("traceparent", "not-a-trace")
        .header("tracestate", "goes=with-it")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let headers = upstream.last().headers;
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ] {
        assert_eq!(headers.get_all(name).iter().count(), 1, "{name}");
    }
    // The client's `Forwarded` is removed, and none is made by default.
    assert!(headers.get("forwarded").is_none(), "{headers:?}");
    assert_ne!(headers["x-request-id"], "chosen-by-the-client");
    assert_eq!(resp.headers()["x-request-id"], headers["x-request-id"]);
    // A malformed trace is removed (none is started by default).
    assert!(headers.get("traceparent").is_none());
    assert!(headers.get("tracestate").is_none());
    let host = gw.http.to_string();
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], host.as_str());
    assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels_with(
        &upstream,
        "trusted_proxies: [127.0.0.1/32]\nforwarding: { forwarded: true }",
    ))
    .await;
    // What the proxy sends: `X-Forwarded-*`, and `Forwarded` when given.
    let from_proxy = async |forwarded: Option<&str>| {
        let mut request = gw
            .client
            .get(gw.url("/travels/bookings"))
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Host", "api.example");
        if let Some(forwarded) = forwarded {
            request = request.header("Forwarded", forwarded);
        }
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status(), 200);
        upstream.last().headers
    };
    let headers = from_proxy(Some("for=203.0.113.9;proto=https")).await;
    let host = gw.http.to_string();
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["x-forwarded-host"], "api.example");
    assert_eq!(
        headers["forwarded"],
        format!("for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=\"{host}\"").as_str()
    );
    // A load balancer that writes only `X-Forwarded-*`: its chain, and the
    // client's scheme and host, are carried into `Forwarded`, which would
    // otherwise name the balancer as the client, over plain HTTP.
    let headers = from_proxy(None).await;
    assert_eq!(
        headers["forwarded"],
        format!(
            "for=203.0.113.9;proto=https;host=\"api.example\", for=127.0.0.1;proto=http;host=\"{host}\""
        )
        .as_str()
    );
    assert_eq!(headers["x-forwarded-proto"], "https");
    gw.shutdown().await;
}

/// `X-Real-IP`, `True-Client-IP` and `X-Client-IP` name the client to an
/// upstream that reads them: a client's own go nowhere, in any spelling,
/// over HTTP/1.1 and HTTP/2, even with `forwarding` all off; a trusted
/// proxy's go on as sent.
#[tokio::test]
async fn client_address_fields_reach_the_upstream_only_from_a_trusted_proxy() {
    const CLAIMED: [(&str, &str); 4] = [
        ("X-Real-IP", "6.6.6.6"),
        ("X_Real_IP", "6.6.6.7"),
        ("True-Client-IP", "6.6.6.8"),
        ("X-Client-IP", "6.6.6.9"),
    ];
    let upstream = Upstream::start().await;
    let all_off =
        "forwarding: { x_forwarded: false, forwarded: false, request_id: false, traceparent: false }";
    let direct = Gateway::start(&travels_with(&upstream, all_off)).await;
    let proxied = Gateway::start(&travels_with(&upstream, "trusted_proxies: [127.0.0.1/32]")).await;
    for (gw, from_trusted) in [(&direct, false), (&proxied, true)] {
        let mut request = gw.client.get(gw.url("/travels/bookings"));
        for (name, value) in CLAIMED {
            request = request.header(name, value);
        }
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status(), 200);
        let headers = upstream.last().headers;
        for (name, value) in CLAIMED {
            let seen: Vec<_> = headers.get_all(name).iter().collect();
            if from_trusted {
                assert_eq!(seen, [value], "{name} from a trusted proxy");
            } else {
                assert!(seen.is_empty(), "{name} from a client: {seen:?}");
            }
        }
    }
    // HTTP/2, whose names are lower case: every line goes.
    let tcp = TcpStream::connect(direct.http).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let request = Request::get(direct.url("/travels/bookings"))
        .header("x-real-ip", "6.6.6.6")
        .header("x-real-ip", "6.6.6.7")
        .header("true-client-ip", "6.6.6.8")
        .header("x-kept", "yes")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = sender.send_request(request).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = upstream.last().headers;
    assert!(headers.get("x-real-ip").is_none(), "{headers:?}");
    assert!(headers.get("true-client-ip").is_none(), "{headers:?}");
    assert_eq!(headers["x-kept"], "yes");
    direct.shutdown().await;
    proxied.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_502() {
    let closed = crate::common::Refusing::new();
    let addr = closed.addr;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Down
  base_path: /down
  upstream: {{ url: "http://{addr}/api" }}
  resources: ["GET /x"]
  authentication:
    type: none
"#
    );
    let gw = Gateway::start(&yaml).await;
    let resp = gw.get("/down/x").await;
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(body["error"], "bad_gateway");
    gw.shutdown().await;
}

#[tokio::test]
async fn upstream_slower_than_its_timeout_is_504() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(3));
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Slow
  base_path: /slow
  upstream: {{ url: "{}", timeout: 250ms }}
  resources: ["GET /x"]
  authentication:
    type: none
"#,
        upstream.url("/api")
    );
    let gw = Gateway::start(&yaml).await;
    let started = std::time::Instant::now();
    let resp = gw.get("/slow/x").await;
    assert_eq!(resp.status(), 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(body["error"], "gateway_timeout");
    gw.shutdown().await;
}

#[tokio::test]
async fn body_over_max_body_is_413_with_content_length() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels_with(&upstream, "limits: { max_body: 1KiB }")).await;
    let resp = gw
        .client
        .post(gw.url("/travels/bookings"))
        .body(vec![b'x'; 1025])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 413);
    assert_eq!(upstream.hits(), 0);
    let resp = gw
        .client
        .post(gw.url("/travels/bookings"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().body.len(), 1024);
    gw.shutdown().await;
}

#[tokio::test]
async fn chunked_body_over_max_body_is_413() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels_with(&upstream, "limits: { max_body: 1KiB }")).await;
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let raw = raw_request(gw.http, request.as_bytes()).await;
    assert_eq!(status_of(&raw), 413, "{raw}");
    // Within the limit, the same framing goes through.
    let request = format!(
        "POST /travels/bookings HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let raw = raw_request(gw.http, request.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(upstream.last().body.len(), 600);
    gw.shutdown().await;
}

#[tokio::test]
async fn uri_over_max_uri_is_414() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels_with(&upstream, "limits: { max_uri: 64 }")).await;
    let long = format!("/travels/bookings/{}", "7".repeat(60));
    assert_eq!(gw.get(&long).await.status(), 414);
    let long_query = format!("/travels/bookings?q={}", "a".repeat(60));
    assert_eq!(gw.get(&long_query).await.status(), 414);
    assert_eq!(upstream.hits(), 0);
    assert_eq!(gw.get("/travels/bookings/7").await.status(), 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn echo_upstream_answers_with_the_request_it_would_receive() {
    let yaml = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
apis:
- name: Echo
  base_path: /echo
  upstream: { echo: true }
  resources: ["POST /bookings/{id}"]
  authentication:
    type: none
"#;
    let gw = Gateway::start(yaml).await;
    let resp = gw
        .client
        .post(gw.url("/echo/bookings/7?x=1"))
        .header("X-Custom", "v")
        .body("hello")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.expect("json body");
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "/bookings/7");
    assert_eq!(body["query"], "x=1");
    assert_eq!(body["headers"]["x-custom"], "v");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert_eq!(body["body_bytes"], 5);
    gw.shutdown().await;
}

/// The `echo` upstream counts a chunked body across its chunks, and keeps
/// the limits a body has: 413 once it grows past `limits.max_body`, 400
/// when its framing breaks.
#[tokio::test]
async fn echo_upstream_counts_a_chunked_body_within_the_limits() {
    let yaml = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
limits: { max_body: 1KiB }
apis:
- name: Echo
  base_path: /echo
  upstream: { echo: true }
  resources: ["POST /bookings"]
  authentication: { type: none }
"#;
    let gw = Gateway::start(yaml).await;
    let post = |chunks: &str| {
        format!("POST /echo/bookings HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunks}")
    };
    let chunk = format!("{:x}\r\n{}\r\n", 400, "c".repeat(400));
    let raw = raw_request(
        gw.http,
        post(&format!("{chunk}{chunk}0\r\n\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(raw.contains(r#""body_bytes":800"#), "{raw}");
    let raw = raw_request(
        gw.http,
        post(&format!("{chunk}{chunk}{chunk}0\r\n\r\n")).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 413, "growing past max_body: {raw}");
    let raw = raw_request(gw.http, post(&format!("{chunk}zz\r\n")).as_bytes()).await;
    assert_eq!(status_of(&raw), 400, "broken framing: {raw}");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_canonical_path_is_matched_and_forwarded() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    // Raw bytes: an HTTP client library would normalise the path itself.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    let raw = raw_request(gw.http, get("/travels/%62ookings/x/../7?q=%2F").as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(upstream.last().uri, "/api/bookings/7?q=%2F");
    // Out of the API's base path by dot segments: refused, not re-routed.
    let raw = raw_request(gw.http, get("/travels/../travels/bookings").as_bytes()).await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn ambiguous_paths_are_400_and_a_good_request_still_works() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&upstream)).await;
    for path in [
        "/travels/bookings%2F7",
        "/travels/bookings;jsessionid=1",
        "/travels/bookings/%00",
        "/travels/bookings/%252F",
        "/travels/bookings/%zz",
    ] {
        let raw = raw_request(
            gw.http,
            format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&raw), 400, "{path}: {raw}");
    }
    assert_eq!(upstream.hits(), 0);
    assert_eq!(gw.get("/travels/bookings/7").await.status(), 200);
    gw.shutdown().await;
}
