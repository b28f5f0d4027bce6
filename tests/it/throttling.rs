//! Throttling end to end: each limit kind in memory, the 429 and the
//! RateLimit fields, the upstream never reached by a refused request,
//! counters kept across reloads; on a real Redis: one limit held by two
//! gateways, the store killed mid-run (`on_store_error` both ways) and
//! recovery once it is back, a connection gone silent behind a black hole
//! replaced, and a request that outlives a reload counted in its
//! snapshot's store.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;

use common::idp::{unix_now, Answer, Idp, Introspector};
use common::redis::Redis;
use common::{metric, Gateway, Upstream};
use microgateway::reload::Source;
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, Response};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

fn field(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// An open API (`type: none`) on `upstream` with `throttle` as its policy
/// list and `extra` as further top-level keys.
fn open_api(name: &str, upstream: &Upstream, throttle: &str, extra: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
{extra}
apis:
- name: "{name}"
  base_path: /open
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: none }}
  resources: ["GET /items", "GET /other"]
  policies:
    throttle: {throttle}
"#,
        upstream = upstream.url("/api"),
    )
}

/// An oauth2 API with the scopes ViewTickets (GET /bookings) and
/// BookTickets (POST /bookings).
fn travels(name: &str, idp: &Idp, upstream: &Upstream, throttle: &str) -> String {
    const SCOPES: &str = r#"
  - name: ViewTickets
    resources: ["GET /bookings"]
  - name: BookTickets
    resources: ["POST /bookings"]"#;
    oauth2_api(name, idp, upstream, SCOPES, throttle)
}

/// An oauth2 API under /travels (tokens of `idp`) with `scopes` (the
/// YAML list's entries) and `throttle` as its policy list.
fn oauth2_api(name: &str, idp: &Idp, upstream: &Upstream, scopes: &str, throttle: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: idp
    name: idp
    localIntrospectionConfig:
      issuer: "{issuer}"
      jwksuri: "{jwks}"
      audience: travels
apis:
- name: "{name}"
  base_path: /travels
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:{scopes}
  policies:
    throttle: {throttle}
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        upstream = upstream.url("/api"),
    )
}

#[tokio::test]
async fn past_the_limit_a_request_gets_429_with_retry_after_and_never_reaches_the_upstream() {
    let upstream = Upstream::start().await;
    let yaml = open_api("Throttled whole", &upstream, "[{ limit: 3, per: 1h }]", "");
    let gw = Gateway::start(&yaml).await;
    for remaining in [2, 1, 0] {
        let resp = gw.get("/open/items").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            field(&resp, "ratelimit-policy").as_deref(),
            Some(r#""api";q=3;w=3600"#)
        );
        // `t`: until more quota is available, one request's room every
        // 20 minutes (draft-ietf-httpapi-ratelimit-headers: "until
        // additional quota ... is made available"), not the whole hour.
        let ratelimit = field(&resp, "ratelimit").unwrap();
        let t: u64 = ratelimit
            .strip_prefix(&format!("\"api\";r={remaining};t="))
            .unwrap_or_else(|| panic!("{ratelimit}"))
            .parse()
            .unwrap();
        assert!((1_190..=1_200).contains(&t), "{ratelimit}");
        assert!(resp.headers().get(RETRY_AFTER).is_none());
    }
    let refused = gw.get("/open/items").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        field(&refused, "ratelimit-policy").as_deref(),
        Some(r#""api";q=3;w=3600"#)
    );
    // One request every 20 minutes: the next fits in (at most) 1200 s.
    let retry: u64 = field(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=1200).contains(&retry), "{retry}");
    // The draft: Retry-After no earlier than `t`; here the same wait.
    let ratelimit = field(&refused, "ratelimit").unwrap();
    assert_eq!(ratelimit, format!("\"api\";r=0;t={retry}"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "too_many_requests");
    assert_eq!(
        upstream.hits(),
        3,
        "a throttled request reached the upstream"
    );
    // The whole API shares the limit.
    assert_eq!(gw.get("/open/other").await.status(), 429);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"microgateway_throttled_total{api="Throttled whole",policy="api"}"#
        ),
        2
    );
    gw.shutdown().await;
}

/// A request refused for what it carries uses no quota, whatever phase
/// refuses it: here a token whose property the request transformation
/// cannot put in a header (401 invalid_token), and a declared body over
/// `max_body` (413).
/// A request the throttle admitted counted: when its exchange then fails
/// (the upstream refuses connections: 502), the gateway's answer carries
/// the RateLimit fields too, as the upstream's would have.
#[tokio::test]
async fn a_request_admitted_then_failed_upstream_still_gets_the_ratelimit_fields() {
    let closed = common::ports::unused();
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: Down
  base_path: /open
  upstream: {{ url: "http://127.0.0.1:{closed}/api" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
  policies:
    throttle: [{{ limit: 3, per: 1h }}]
"#
    );
    let gw = Gateway::start(&yaml).await;
    for remaining in [2, 1] {
        let resp = gw.get("/open/items").await;
        assert_eq!(resp.status(), 502);
        assert_eq!(
            field(&resp, "ratelimit-policy").as_deref(),
            Some(r#""api";q=3;w=3600"#)
        );
        let ratelimit = field(&resp, "ratelimit").expect("ratelimit");
        assert!(
            ratelimit.starts_with(&format!("\"api\";r={remaining};t=")),
            "{ratelimit}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn a_request_refused_after_authorization_uses_no_quota() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = travels("Throttled refusals", &idp, &upstream, "[{ limit: 2, per: 1h }]")
        .replace(
            "    throttle:",
            "    request_transformation:\n      set_headers: { X-Tenant: \"${request.authorization.claims.tenant}\" }\n    throttle:",
        )
        .replace("apis:", "limits: { max_body: 1KiB }\napis:");
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token = |tenant: &str| {
        idp.token_with(serde_json::json!({"scope": "ViewTickets BookTickets", "tenant": tenant}))
    };
    for _ in 0..2 {
        let refused = gw
            .request(Method::GET, "/travels/bookings")
            .bearer_auth(token("a\u{1}b"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let refused = gw
            .request(Method::POST, "/travels/bookings")
            .bearer_auth(token("acme"))
            .body(vec![b'x'; 4096])
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 413);
    }
    let good = gw
        .request(Method::GET, "/travels/bookings")
        .bearer_auth(token("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        good.status(),
        200,
        "the refused requests used the quota: {:?}",
        field(&good, "ratelimit")
    );
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_scope_limit_counts_only_the_scopes_resources() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = travels(
        "Throttled scope",
        &idp,
        &upstream,
        "[{ limit: 1, per: 1h, scope: BookTickets }]",
    );
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token = idp.token(&["ViewTickets", "BookTickets"]);
    let book = || {
        gw.request(Method::POST, "/travels/bookings")
            .bearer_auth(&token)
            .send()
    };
    let first = book().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(
        field(&first, "ratelimit-policy").as_deref(),
        Some(r#""BookTickets";q=1;w=3600"#)
    );
    assert_eq!(book().await.unwrap().status(), 429);
    for _ in 0..3 {
        let view = gw
            .request(Method::GET, "/travels/bookings")
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(view.status(), 200);
        assert!(view.headers().get("ratelimit").is_none());
    }
    assert_eq!(upstream.hits(), 4);
    gw.shutdown().await;
}

/// An oauth2 API whose resources `GET /files/{name}` (scope Secret) and
/// `GET /files/secret/{rest*}` (scope Files) are throttled by `throttle`.
fn files(idp: &Idp, upstream: &Upstream, throttle: &str) -> String {
    const SCOPES: &str = r#"
  - name: Secret
    resources: ["GET /files/{name}"]
  - name: Files
    resources: ["GET /files/secret/{rest*}"]"#;
    oauth2_api("Files", idp, upstream, SCOPES, throttle)
}

/// `/files/secret/` is `/files/secret` to many upstreams: its trailing
/// slash must not take it out of the Secret scope's limit (on
/// `/files/{name}`), which its written reading (the more specific
/// `/files/secret/{rest*}`, the request's resource) is not in.
#[tokio::test]
async fn a_trailing_slash_counts_under_the_limits_of_both_its_readings() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    // The Secret scope's limit alone (counted in one number).
    let yaml = files(&idp, &upstream, "[{ limit: 1, per: 1h, scope: Secret }]");
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token = idp.token(&["Secret", "Files"]);
    let get = |path: &'static str| gw.request(Method::GET, path).bearer_auth(&token).send();
    assert_eq!(get("/travels/files/secret").await.unwrap().status(), 200);
    let slashed = get("/travels/files/secret/").await.unwrap();
    assert_eq!(slashed.status(), 429);
    assert_eq!(
        field(&slashed, "ratelimit-policy").as_deref(),
        Some(r#""Secret";q=1;w=3600"#)
    );
    assert_eq!(get("/travels/files/secret/x").await.unwrap().status(), 200);
    assert_eq!(upstream.hits(), 2);
    gw.shutdown().await;

    // A limit on each scope: the slashed path counts under both, all or
    // none, and is told about both.
    let upstream = Upstream::start().await;
    let yaml = files(
        &idp,
        &upstream,
        "[{ limit: 1, per: 1h, scope: Secret }, { limit: 2, per: 1h, scope: Files }]",
    );
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let get = |path: &'static str| gw.request(Method::GET, path).bearer_auth(&token).send();
    let slashed = get("/travels/files/secret/").await.unwrap();
    assert_eq!(slashed.status(), 200);
    assert_eq!(
        field(&slashed, "ratelimit-policy").as_deref(),
        Some(r#""Secret";q=1;w=3600, "Files";q=2;w=3600"#)
    );
    // Secret is spent: refused, and Files keeps its last request. The
    // refusal tells both, as the admitted answer did: Secret at r=0.
    let refused = get("/travels/files/secret/").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(
        field(&refused, "ratelimit-policy").as_deref(),
        Some(r#""Secret";q=1;w=3600, "Files";q=2;w=3600"#)
    );
    let ratelimit = field(&refused, "ratelimit").unwrap();
    let retry = field(&refused, "retry-after").unwrap();
    assert!(
        ratelimit.starts_with(&format!("\"Secret\";r=0;t={retry}, \"Files\";r=1;t=")),
        "{ratelimit}"
    );
    assert_eq!(get("/travels/files/secret").await.unwrap().status(), 429);
    assert_eq!(get("/travels/files/secret/x").await.unwrap().status(), 200);
    assert_eq!(get("/travels/files/secret/y").await.unwrap().status(), 429);
    assert_eq!(upstream.hits(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_per_application_limit_counts_each_client_apart() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = travels(
        "Throttled application",
        &idp,
        &upstream,
        "[{ limit: 2, per: 1h, per_application: true }]",
    );
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token_of = |client: &str| {
        idp.token_with(serde_json::json!({"client_id": client, "scope": "ViewTickets"}))
    };
    let send = |token: String| {
        gw.request(Method::GET, "/travels/bookings")
            .bearer_auth(token)
            .send()
    };
    // Every token of a client counts against the same limit.
    assert_eq!(send(token_of("app-a")).await.unwrap().status(), 200);
    assert_eq!(send(token_of("app-a")).await.unwrap().status(), 200);
    let refused = send(token_of("app-a")).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(field(&refused, "ratelimit")
        .unwrap()
        .starts_with("\"api-per-application\";r=0;"));
    let other = send(token_of("app-b")).await.unwrap();
    assert_eq!(other.status(), 200);
    assert!(field(&other, "ratelimit")
        .unwrap()
        .starts_with("\"api-per-application\";r=1;"));
    // A refused token is refused before it is counted.
    let bad = gw
        .request(Method::GET, "/travels/bookings")
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert!(bad.headers().get("ratelimit").is_none());
    assert_eq!(upstream.hits(), 3);
    gw.shutdown().await;
}

/// An application and a token's client that no application lists are
/// counted apart, even when the client id is the application's name.
#[tokio::test]
async fn a_client_id_never_counts_on_an_application_of_that_name() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = travels(
        "Apart",
        &idp,
        &upstream,
        "[{ limit: 1, per: 1h, per_application: true }]",
    )
    .replace(
        "{ type: oauth2, auth_server: idp }",
        "{ type: [oauth2, api_key], auth_server: idp }",
    )
    .replace(
        "\napis:\n",
        "\napplications:\n- name: partner\n  api_keys: [partner-key]\n  apis: [Apart]\n  api_scopes: [\"Apart:ViewTickets\"]\napis:\n",
    );
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let by_key = gw
        .request(Method::GET, "/travels/bookings")
        .header("x-api-key", "partner-key")
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), 200);
    let token = idp.token_with(serde_json::json!({"client_id": "partner", "scope": "ViewTickets"}));
    let send = || {
        gw.request(Method::GET, "/travels/bookings")
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(send().await.unwrap().status(), 429);
    assert_eq!(upstream.hits(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_per_client_ip_limit_reads_the_client_behind_a_trusted_proxy() {
    let upstream = Upstream::start().await;
    let yaml = open_api(
        "Throttled address",
        &upstream,
        "[{ limit: 1, per: 1h, per_client_ip: true }]",
        "trusted_proxies: [127.0.0.1/32]",
    );
    let gw = Gateway::start(&yaml).await;
    let from = |client: &'static str| {
        gw.request(Method::GET, "/open/items")
            .header("x-forwarded-for", client)
            .send()
    };
    assert_eq!(from("203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(from("203.0.113.1").await.unwrap().status(), 429);
    // What a client writes left of the proxy's entry does not count.
    assert_eq!(
        from("198.51.100.7, 203.0.113.1").await.unwrap().status(),
        429
    );
    assert_eq!(from("203.0.113.2").await.unwrap().status(), 200);
    assert_eq!(upstream.hits(), 2);
    gw.shutdown().await;
}

/// An IPv6 client counts by its /64: the other addresses of its block,
/// which it may rotate through at no cost, are its own too.
#[tokio::test]
async fn a_per_client_ip_limit_counts_an_ipv6_client_by_its_64() {
    let upstream = Upstream::start().await;
    let yaml = open_api(
        "Throttled address",
        &upstream,
        "[{ limit: 1, per: 1h, per_client_ip: true }]",
        "trusted_proxies: [127.0.0.1/32]",
    );
    let gw = Gateway::start(&yaml).await;
    let from = |client: &'static str| {
        gw.request(Method::GET, "/open/items")
            .header("x-forwarded-for", client)
            .send()
    };
    assert_eq!(from("2001:db8:1:2::1").await.unwrap().status(), 200);
    assert_eq!(from("2001:db8:1:2::2").await.unwrap().status(), 429);
    assert_eq!(
        from("2001:db8:1:2:ffff:ffff:ffff:ffff")
            .await
            .unwrap()
            .status(),
        429
    );
    // The next /64 is another client; an IPv4-mapped address is the
    // IPv4 client.
    assert_eq!(from("2001:db8:1:3::1").await.unwrap().status(), 200);
    assert_eq!(from("203.0.113.9").await.unwrap().status(), 200);
    assert_eq!(from("::ffff:203.0.113.9").await.unwrap().status(), 429);
    assert_eq!(upstream.hits(), 3);
    gw.shutdown().await;
}

/// What a client writes before the proxy's entry, a byte outside ASCII
/// included, does not move its count to another address.
#[tokio::test]
async fn a_per_client_ip_limit_holds_whatever_the_client_wrote_before_the_proxys_entry() {
    let upstream = Upstream::start().await;
    let yaml = open_api(
        "Throttled obs-text",
        &upstream,
        "[{ limit: 1, per: 1h, per_client_ip: true }]",
        "trusted_proxies: [127.0.0.1/32]",
    );
    let gw = Gateway::start(&yaml).await;
    let from = |client: &'static [u8]| {
        gw.request(Method::GET, "/open/items")
            .header(
                "x-forwarded-for",
                reqwest::header::HeaderValue::from_bytes(client).unwrap(),
            )
            .send()
    };
    assert_eq!(from(b"203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(from(b"\xff, 203.0.113.1").await.unwrap().status(), 429);
    assert_eq!(from(b"\xff, 203.0.113.1").await.unwrap().status(), 429);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

/// On a dual-stack listener (`::`) an IPv4 peer is its IPv4 address, so a
/// trusted proxy at 127.0.0.1 is trusted and its clients counted apart.
#[tokio::test]
async fn a_trusted_proxy_is_trusted_on_a_dual_stack_port() {
    if !common::dual_stack() {
        eprintln!("skipped: no dual-stack socket on this machine");
        return;
    }
    let upstream = Upstream::start().await;
    let yaml = open_api(
        "Throttled dual stack",
        &upstream,
        "[{ limit: 1, per: 1h, per_client_ip: true }]",
        "trusted_proxies: [127.0.0.1/32]",
    )
    .replace("bind: 127.0.0.1 }\nadmin", "bind: \"::\" }\nadmin");
    let gw = Gateway::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/open/items", gw.http.port());
    for client in ["203.0.113.1", "203.0.113.2"] {
        let resp = gw
            .client
            .get(&url)
            .header("x-forwarded-for", client)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{client}");
    }
    assert_eq!(upstream.hits(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn without_a_trusted_proxy_the_peer_is_the_client() {
    let upstream = Upstream::start().await;
    let yaml = open_api(
        "Throttled peer",
        &upstream,
        "[{ limit: 1, per: 1h, per_client_ip: true }]",
        "",
    );
    let gw = Gateway::start(&yaml).await;
    let from = |client: &'static str| {
        gw.request(Method::GET, "/open/items")
            .header("x-forwarded-for", client)
            .send()
    };
    assert_eq!(from("203.0.113.1").await.unwrap().status(), 200);
    // Another forwarded address from the same peer is the same client.
    assert_eq!(from("203.0.113.2").await.unwrap().status(), 429);
    gw.shutdown().await;
}

/// A gateway whose API `name` is throttled by `policies`, the first an
/// API-wide 2 per hour: that limit spent, then a reload that changes
/// nothing of the API, after which it is still spent.
async fn spent_across_an_unrelated_reload(
    name: &str,
    upstream: &Upstream,
    policies: &str,
) -> Gateway {
    let gw = Gateway::start(&open_api(name, upstream, policies, "")).await;
    assert_eq!(gw.get("/open/items").await.status(), 200);
    assert_eq!(gw.get("/open/items").await.status(), 200);
    assert_eq!(gw.get("/open/items").await.status(), 429);
    // An unrelated change: the API-wide limit still counts from before.
    gw.write_config(&open_api(
        name,
        upstream,
        policies,
        "limits: { max_uri: 4096 }",
    ));
    gw.wait_generation(2).await;
    assert_eq!(gw.get("/open/items").await.status(), 429);
    gw
}

#[tokio::test]
async fn a_reload_keeps_the_counters_of_unchanged_limits() {
    let upstream = Upstream::start().await;
    let policies = "[{ limit: 2, per: 1h }, { limit: 5, per: 1h, per_client_ip: true }]";
    let gw = spent_across_an_unrelated_reload("Throttled reload", &upstream, policies).await;
    // A changed limit is a new counter.
    gw.write_config(&open_api(
        "Throttled reload",
        &upstream,
        "[{ limit: 3, per: 1h }, { limit: 5, per: 1h, per_client_ip: true }]",
        "",
    ));
    gw.wait_generation(3).await;
    let resp = gw.get("/open/items").await;
    assert_eq!(resp.status(), 200);
    // The unchanged per-address policy kept its count: 3 of 5 used (the
    // refused requests counted on no policy).
    let ratelimit = field(&resp, "ratelimit").unwrap();
    assert!(
        ratelimit.contains("\"api-per-client-ip\";r=2;"),
        "{ratelimit}"
    );
    gw.shutdown().await;
}

/// An API-wide limit alone counts in one number, not in the keys: a
/// reload keeps that count too, and a policy joining it on the same
/// resources takes the count into the keys.
#[tokio::test]
async fn a_reload_keeps_the_count_of_a_limit_counted_alone() {
    let upstream = Upstream::start().await;
    let gw = spent_across_an_unrelated_reload("Alone", &upstream, "[{ limit: 2, per: 1h }]").await;
    gw.write_config(&open_api(
        "Alone",
        &upstream,
        "[{ limit: 2, per: 1h }, { limit: 5, per: 1h, per_client_ip: true }]",
        "",
    ));
    gw.wait_generation(3).await;
    let refused = gw.get("/open/items").await;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        field(&refused, "ratelimit-policy").as_deref(),
        Some("\"api\";q=2;w=3600, \"api-per-client-ip\";q=5;w=3600")
    );
    gw.shutdown().await;
}

/// A full memory store makes room among the keys of single clients; an
/// API-wide limit counted beside a per-address one is never what goes.
#[tokio::test]
async fn a_full_store_keeps_counting_an_api_wide_limit() {
    let upstream = Upstream::start().await;
    let mut yaml = open_api(
        "Crowded",
        &upstream,
        "[{ limit: 300, per: 1h }, { limit: 10, per: 1d, per_client_ip: true }]",
        "trusted_proxies: [127.0.0.1/32]\nthrottling: { max_keys: 320 }",
    );
    yaml.push_str(&format!(
        r#"- name: "Crowding"
  base_path: /crowding
  upstream: {{ url: "{}" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
  policies:
    throttle: [{{ limit: 10, per: 1d, per_client_ip: true }}]
"#,
        upstream.url("/api")
    ));
    let gw = Gateway::start(&yaml).await;
    // 1000 clients each send `path` once; how many were admitted.
    let each_once = |path: &'static str, net: u8| {
        let gw = &gw;
        async move {
            let mut admitted = 0;
            for group in (0..1000u16).collect::<Vec<_>>().chunks(50) {
                let sent = group.iter().map(|i| {
                    let [hi, lo] = i.to_be_bytes();
                    gw.request(Method::GET, path)
                        .header("x-forwarded-for", format!("10.{net}.{hi}.{lo}"))
                        .send()
                });
                for resp in futures_util::future::join_all(sent).await {
                    admitted += usize::from(resp.unwrap().status() == 200);
                }
            }
            admitted
        }
    };
    assert_eq!(each_once("/crowding/items", 1).await, 1000);
    // Each new client's key lands in the API-wide key's shard one time in
    // 32: were that key evicted, it would be long before 300 are counted.
    assert_eq!(each_once("/open/items", 2).await, 300);
    gw.shutdown().await;
}

#[tokio::test]
async fn explain_names_the_throttle_policies_that_apply() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = travels(
        "Throttled explain",
        &idp,
        &upstream,
        "[{ limit: 100, per: 1m }, { limit: 10, per: 1m, scope: BookTickets, per_application: true }]",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let loaded = microgateway::config::load(&path, &common::Env::new(), 1).unwrap();
    let book = microgateway::policy::decide(
        &loaded.snapshot,
        &Method::POST,
        "/travels/bookings",
        None,
        None,
    );
    assert_eq!(
        book.throttle,
        [
            "api: 100 per 60s",
            "BookTickets-per-application: 10 per 60s, per application"
        ]
    );
    assert!(book.to_string().contains("throttle:   api: 100 per 60s"));
    let view = microgateway::policy::decide(
        &loaded.snapshot,
        &Method::GET,
        "/travels/bookings",
        None,
        None,
    );
    assert_eq!(view.throttle, ["api: 100 per 60s"]);
}

#[tokio::test]
async fn throttle_settings_are_checked_with_their_position() {
    let upstream = Upstream::start().await;
    let cases = [
        ("[{ limit: 0, per: 1s }]", "", "throttle.limit: 0"),
        ("[{ limit: 5, per: soon }]", "", "throttle.per: `soon`"),
        ("[{ limit: 5 }]", "", "`throttle.per` is missing"),
        (
            "[{ limit: 5, per: 1s, scope: Nope }]",
            "",
            "API scope `Nope` is not declared",
        ),
        (
            "[{ limit: 5, per: 1s }, { limit: 5, per: 1s }]",
            "",
            "counts exactly what another",
        ),
        (
            "[{ limit: 5, per: 1s }, { limit: 9, per: 1m }]",
            "",
            "two throttle policies of this API are named `api`",
        ),
        (
            "[{ limit: 5, per: 1s, name: \"a b\" }]",
            "",
            "not a valid policy name",
        ),
        (
            "[]",
            "throttling: { store: \"mysql://x\" }",
            "throttling.store: neither `memory` nor a redis:// or rediss:// URL",
        ),
        (
            "[]",
            "throttling: { on_store_error: maybe }",
            "on_store_error: `maybe`",
        ),
        ("[]", "throttling: { timeout: 0s }", "throttling.timeout"),
    ];
    for (throttle, extra, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("microgateway.yaml");
        std::fs::write(&path, open_api("Checked", &upstream, throttle, extra)).unwrap();
        let invalid = microgateway::config::load(&path, &common::Env::new(), 1)
            .err()
            .unwrap_or_else(|| panic!("{throttle} {extra} was accepted"));
        let text = invalid.to_string();
        assert!(text.contains(expected), "{throttle} {extra}: {text}");
        assert!(text.contains("microgateway.yaml:"), "{text}");
    }
}

/// A gateway whose open API is throttled on `redis`.
async fn on_redis(
    name: &str,
    upstream: &Upstream,
    redis: &Redis,
    throttle: &str,
    on_error: &str,
) -> Gateway {
    let extra = format!(
        "throttling: {{ store: \"{}\", on_store_error: {on_error}, timeout: 200ms }}",
        redis.url()
    );
    Gateway::start(&open_api(name, upstream, throttle, &extra)).await
}

#[tokio::test]
async fn two_gateways_sharing_redis_admit_exactly_the_limit() {
    let redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let throttle = "[{ limit: 7, per: 1h }]";
    let one = on_redis("Fleet", &upstream, &redis, throttle, "deny").await;
    let two = on_redis("Fleet", &upstream, &redis, throttle, "deny").await;
    let mut requests = Vec::new();
    for _ in 0..10 {
        for gw in [&one, &two] {
            requests.push(gw.get("/open/items"));
        }
    }
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    // The script decides atomically on Redis's clock: exactly the limit,
    // however the requests spread over the gateways.
    assert_eq!((admitted, refused), (7, 13), "{statuses:?}");
    assert_eq!(upstream.hits(), 7);
    // Keys are prefixed and expire.
    let (mut conn, keys) = throttle_keys(&redis).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
    one.shutdown().await;
    two.shutdown().await;
}

/// A connection of the test's own to `redis`.
async fn connected(redis: &Redis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// The clients connected to the Redis `conn` is on, but `conn`.
async fn connections(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .count()
}

/// Each listener thread connects to Redis when the gateway starts, not
/// within its first request's `throttling.timeout` (a TLS handshake alone
/// may take most of the default 50 ms, and the request would meet the
/// store error with the store healthy).
#[tokio::test]
async fn the_gateway_connects_to_redis_before_its_first_request() {
    let redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let mut conn = connected(&redis).await;
    assert_eq!(connections(&mut conn).await, 0);
    let gw = on_redis("Warm", &upstream, &redis, "[{ limit: 5, per: 1h }]", "deny").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections(&mut conn).await == 0 {
        assert!(Instant::now() < deadline, "no connection from the gateway");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.hits(), 0);
    assert_eq!(gw.get("/open/items").await.status(), 200);
    gw.shutdown().await;
}

/// A reload to another Redis store connects each listener thread to it
/// before the store is put in use: once the new generation serves, its
/// connections are there without a request having been sent.
#[tokio::test]
async fn a_reload_connects_to_the_new_redis_before_it_serves() {
    let first = Redis::start().await;
    let second = Redis::start().await;
    let upstream = Upstream::start().await;
    let gw = on_redis(
        "Moved",
        &upstream,
        &first,
        "[{ limit: 5, per: 1h }]",
        "deny",
    )
    .await;
    assert_eq!(gw.get("/open/items").await.status(), 200);
    let mut conn = connected(&second).await;
    assert_eq!(connections(&mut conn).await, 0);
    let extra = format!(
        "throttling: {{ store: \"{}\", on_store_error: deny, timeout: 200ms }}",
        second.url()
    );
    gw.write_config(&open_api(
        "Moved",
        &upstream,
        "[{ limit: 5, per: 1h }]",
        &extra,
    ));
    let state = gw.state().clone();
    let generation = tokio::task::spawn_blocking(move || state.reload(Source::Api))
        .await
        .unwrap()
        .expect("the reload applies");
    assert_eq!(generation, 2);
    assert!(
        connections(&mut conn).await >= 1,
        "no connection to the new store"
    );
    assert_eq!(upstream.hits(), 1);
    assert_eq!(gw.get("/open/items").await.status(), 200);
    let (_, keys) = throttle_keys(&second).await;
    assert_eq!(keys.len(), 1, "counted in the new store: {keys:?}");
    gw.shutdown().await;
}

/// A counter written before Redis's clock stepped back an hour (here: set
/// an hour ahead) holds the key full for one period, not for the hour.
#[tokio::test]
async fn a_counter_from_before_the_stores_clock_stepped_back_holds_one_period() {
    let redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let gw = on_redis(
        "Stepped",
        &upstream,
        &redis,
        "[{ limit: 2, per: 2s }]",
        "deny",
    )
    .await;
    assert_eq!(gw.get("/open/items").await.status(), 200);
    let (mut conn, keys) = throttle_keys(&redis).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (secs, micros): (String, String) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now: u64 = secs.parse::<u64>().unwrap() * 1_000_000 + micros.parse::<u64>().unwrap();
    let () = redis::cmd("SET")
        .arg(&keys[0])
        .arg((now + 3_600_000_000).to_string())
        .arg("PX")
        .arg(3_600_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = gw.get("/open/items").await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after <= 3, "retry after {retry_after} s");
    until(&gw, |r| r.status() == 200).await;
    gw.shutdown().await;
}

/// A connection to `redis`, and the throttle's keys there.
async fn throttle_keys(redis: &Redis) -> (redis::aio::MultiplexedConnection, Vec<String>) {
    let mut conn = connected(redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("mcgw:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    (conn, keys)
}

/// Sends until a response satisfies `done` (bounded: "does not hang").
async fn until(gw: &Gateway, done: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let resp = gw.get("/open/items").await;
        if done(&resp) {
            return resp;
        }
        assert!(Instant::now() < deadline, "last answer: {}", resp.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn redis_down_allows_when_told_and_throttling_resumes_when_it_returns() {
    let mut redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let gw = on_redis(
        "Store allow",
        &upstream,
        &redis,
        "[{ limit: 2, per: 1h }]",
        "allow",
    )
    .await;
    assert_eq!(gw.get("/open/items").await.status(), 200);
    let errors_before = metric(
        &gw.metrics().await,
        "microgateway_throttle_store_errors_total",
    );
    redis.stop().await;
    let started = Instant::now();
    for _ in 0..5 {
        let resp = gw.get("/open/items").await;
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("ratelimit").is_none());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "store errors hang requests"
    );
    assert!(
        metric(
            &gw.metrics().await,
            "microgateway_throttle_store_errors_total"
        ) >= errors_before + 5
    );
    // Back (empty: it kept nothing): counted again, then refused.
    redis.restart().await;
    until(&gw, |r| r.headers().get("ratelimit").is_some()).await;
    until(&gw, |r| r.status() == 429).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn redis_down_denies_with_503_when_told_and_recovers() {
    let mut redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let gw = on_redis(
        "Store deny",
        &upstream,
        &redis,
        "[{ limit: 100, per: 1h }]",
        "deny",
    )
    .await;
    assert_eq!(gw.get("/open/items").await.status(), 200);
    redis.stop().await;
    let hits = upstream.hits();
    for _ in 0..3 {
        let resp = gw.get("/open/items").await;
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().get(RETRY_AFTER).is_some());
    }
    assert_eq!(
        upstream.hits(),
        hits,
        "a request reached the upstream unchecked"
    );
    redis.restart().await;
    let resp = until(&gw, |r| r.status() == 200).await;
    assert!(field(&resp, "ratelimit").is_some());
    gw.shutdown().await;
}

/// A reload that compiles but is refused when it is installed (its
/// authorization server's signing key cannot be read) leaves the serving
/// snapshot's throttle store in use: the spent limit stays spent.
#[tokio::test]
async fn a_reload_refused_at_install_keeps_the_serving_store() {
    let redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let throttle = "[{ limit: 1, per: 1h }]";
    let gw = on_redis("Kept store", &upstream, &redis, throttle, "allow").await;
    assert_eq!(gw.get("/open/items").await.status(), 200);
    assert_eq!(gw.get("/open/items").await.status(), 429);
    let key = gw.dir.path().join("signing-key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let authz = format!(
        "authorization_server:\n  issuer: \"http://localhost:4485\"\n  signing_key: \"{}\"\n  store: sqlite:oauth.db",
        key.display()
    );
    gw.write_config(&open_api("Kept store", &upstream, throttle, &authz));
    let refused = gw
        .state()
        .reload(Source::Api)
        .expect_err("a signing key that is not a key is refused");
    assert_eq!(gw.state().live.generation(), 1, "{refused}");
    assert!(gw.state().live.status().last_reload_error.is_some());
    // Counted in Redis still, as the serving snapshot says.
    assert_eq!(gw.get("/open/items").await.status(), 429);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

/// An API whose opaque tokens `introspector` validates, throttled in
/// `store` (denying on a store error).
fn introspected(introspector: &Introspector, upstream: &Upstream, store: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
throttling: {{ store: "{store}", on_store_error: deny, timeout: 1s }}
security_settings:
  auth_servers:
  - id: remote
    name: remote
    remoteIntrospectionConfig:
      introspectionEndpoint: "{endpoint}"
      clientId: gateway
      clientSecret: gateway-secret
apis:
- name: "Held"
  base_path: /held
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: remote }}
  resources: ["GET /items"]
  policies:
    throttle: [{{ limit: 5, per: 1h }}]
"#,
        endpoint = introspector.endpoint(),
        upstream = upstream.url("/api"),
    )
}

/// A Redis slower than half a second but within `throttling.timeout`
/// answers the call: the request is counted and served, not refused as
/// a store error (redis-rs's own answer timeout, 500 ms, does not cut the
/// setting short).
#[tokio::test]
async fn a_slow_redis_within_the_timeout_is_waited_for() {
    let redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let extra = format!(
        "throttling: {{ store: \"{}\", on_store_error: deny, timeout: 5s }}",
        redis.url()
    );
    let yaml = open_api("Slow store", &upstream, "[{ limit: 5, per: 1h }]", &extra);
    let gw = Gateway::start(&yaml).await;
    // One client connection: one listener thread, its store connection
    // made by the first request.
    let client = gw.client.clone();
    let url = gw.url("/open/items");
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        200,
        "connected"
    );
    redis.pause();
    let waiting = tokio::spawn(async move { client.get(url).send().await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.resume();
    let answer = waiting.await.expect("join").expect("an answer");
    assert_eq!(answer.status(), 200, "refused while the store was slow");
    assert_eq!(upstream.hits(), 2);
    let ratelimit = answer.headers()["ratelimit"].to_str().expect("ASCII");
    assert!(
        ratelimit.starts_with("\"api\";r=3;t="),
        "counted in the store: {ratelimit}"
    );
    gw.shutdown().await;
}

/// A reload from Redis to memory while a request waits for its token's
/// introspection: the request counts in the Redis store of the snapshot
/// it started on, never refused for want of a store.
#[tokio::test]
async fn a_request_that_started_before_a_reload_counts_in_its_snapshots_store() {
    let redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let introspector = Introspector::counting().await;
    let gate = Arc::new(Semaphore::new(0));
    let claims = json!({"active": true, "scope": "any", "exp": unix_now() + 600});
    introspector.answer_all(Answer::Held(gate.clone(), claims.to_string()));
    let gw = Gateway::start(&introspected(&introspector, &upstream, &redis.url())).await;
    let held = tokio::spawn(
        gw.request(Method::GET, "/held/items")
            .bearer_auth("opaque-held")
            .send(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while introspector.calls() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached introspection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.write_config(&introspected(&introspector, &upstream, "memory"));
    gw.wait_generation(2).await;
    gate.add_permits(1);
    let resp = held.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        field(&resp, "ratelimit").as_deref(),
        Some(r#""api";r=4;t=720"#)
    );
    // Counted in Redis, as its snapshot said.
    let (_, keys) = throttle_keys(&redis).await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_redis_password_comes_from_the_secrets_and_is_never_shown() {
    const PASSWORD: &str = "redis-pa55word-never-shown";
    let redis = Redis::start_with_password(PASSWORD).await;
    let upstream = Upstream::start().await;
    let extra = format!(
        "admin: {{ port: 0, bind: 127.0.0.1, user: admin, password: admin-pw }}\nthrottling: {{ store: \"{}\", password: \"${{env:REDIS_PASSWORD}}\", on_store_error: deny, timeout: 1s }}",
        redis.url()
    );
    let yaml = open_api(
        "Store password",
        &upstream,
        "[{ limit: 1, per: 1h }]",
        &extra,
    )
    .replacen("admin: { port: 0, bind: 127.0.0.1 }\n", "", 1);
    let gw = Gateway::start_with_env(&yaml, common::env(&[("REDIS_PASSWORD", PASSWORD)])).await;
    // The first call of a thread connects (and authenticates) within the
    // call's timeout: a generous one, on a test machine under load.
    assert_eq!(gw.get("/open/items").await.status(), 200);
    assert_eq!(gw.get("/open/items").await.status(), 429);
    let settings = gw
        .client
        .get(gw.admin_url("/rest/microgateway/settings"))
        .basic_auth("admin", Some("admin-pw"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(settings.contains("redis://****"), "{settings}");
    assert!(!settings.contains(PASSWORD));
    gw.shutdown().await;
    // A wrong password is a store error: denied, never let through.
    let gw = Gateway::start_with_env(&yaml, common::env(&[("REDIS_PASSWORD", "wrong")])).await;
    assert_eq!(gw.get("/open/items").await.status(), 503);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

/// A `rediss://` store speaks TLS to a Redis that serves nothing else,
/// and counts there; a server whose certificate does not chain to
/// `ca_bundle` (nor to the system's CAs) is a store error, never trusted.
#[tokio::test]
async fn a_tls_store_verifies_the_server_and_counts_there() {
    let redis = Redis::start_tls().await;
    let upstream = Upstream::start().await;
    let yaml = |ca: &str| {
        // The first call of a thread connects (TLS included) within the
        // call's timeout: a generous one, on a test machine under load.
        let extra = format!(
            "throttling: {{ store: \"{}\", {ca} on_store_error: deny, timeout: 2s }}",
            redis.url()
        );
        open_api("Store TLS", &upstream, "[{ limit: 2, per: 1h }]", &extra)
    };
    let ca = format!("ca_bundle: \"{}\",", redis.ca_file().display());
    let gw = Gateway::start(&yaml(&ca)).await;
    let statuses = [
        gw.get("/open/items").await.status().as_u16(),
        gw.get("/open/items").await.status().as_u16(),
        gw.get("/open/items").await.status().as_u16(),
    ];
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(upstream.hits(), 2);
    let settings = gw
        .client
        .get(gw.admin_url("/rest/microgateway/settings"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(settings.contains("\"rediss://****\""), "{settings}");
    gw.shutdown().await;

    // Another CA, or the system's: the server is not the one trusted.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
    for ca in [
        format!("ca_bundle: \"{}\",", other.display()),
        String::new(),
    ] {
        let gw = Gateway::start(&yaml(&ca)).await;
        let resp = gw.get("/open/items").await;
        assert_eq!(resp.status(), 503, "{ca}");
        assert!(resp.headers().get(RETRY_AFTER).is_some());
        gw.shutdown().await;
    }
    assert_eq!(upstream.hits(), 2, "a request went through unchecked");
}

#[tokio::test]
async fn a_redis_that_stops_answering_costs_at_most_the_timeout() {
    let redis = Redis::start().await;
    let upstream = Upstream::start().await;
    let gw = on_redis(
        "Store frozen",
        &upstream,
        &redis,
        "[{ limit: 100, per: 1h }]",
        "deny",
    )
    .await;
    assert_eq!(gw.get("/open/items").await.status(), 200);
    redis.pause();
    // The connection stays open and silent: each call ends at the timeout
    // (200ms here), never waits for Redis. Bounds are generous: this
    // checks "does not hang", not the timer's precision.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(gw.get("/open/items").await.status(), 503);
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    redis.resume();
    until(&gw, |r| r.status() == 200).await;
    gw.shutdown().await;
}

/// A TCP relay to Redis that can turn into a black hole, as a host crash,
/// a failover that moves the address, a partition or a load balancer that
/// forgets a flow does: the connections it relays stop forwarding without
/// being closed, and those it accepts meanwhile go nowhere. Once it
/// relays again, it does so for new connections only: the old ones stay
/// open and silent.
struct Relay {
    addr: std::net::SocketAddr,
    /// Bumped by each black hole: a connection relays only in the era it
    /// was accepted in, while `open`.
    era: Arc<AtomicU64>,
    open: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn to(redis: &Redis) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let era = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (e, o, a, port) = (era.clone(), open.clone(), accepted.clone(), redis.port);
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: every connection closes then.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (era, open) = (e.clone(), o.clone());
                let accepted_in = era.load(Ordering::SeqCst);
                let alive = move || {
                    open.load(Ordering::SeqCst) && era.load(Ordering::SeqCst) == accepted_in
                };
                if !alive() {
                    connections.spawn(async move {
                        let _silent = client;
                        std::future::pending::<()>().await;
                    });
                    continue;
                }
                let server = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let (client_in, client_out) = client.into_split();
                let (server_in, server_out) = server.into_split();
                connections.spawn(relay(client_in, server_out, alive.clone()));
                connections.spawn(relay(server_in, client_out, alive));
            }
        });
        Relay {
            addr,
            era,
            open,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn black_hole(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.era.fetch_add(1, Ordering::SeqCst);
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while `alive`; then holds both open, silent.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    alive: impl Fn() -> bool,
) {
    let mut buffer = [0u8; 4096];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if !alive() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Redis goes silent behind a black hole and comes back at the same
/// address for new connections only: each listener thread's connection
/// stays open and never answers again, and is replaced.
#[tokio::test]
async fn a_connection_that_went_silent_is_replaced() {
    let redis = Redis::start().await;
    let relay = Relay::to(&redis).await;
    let upstream = Upstream::start().await;
    let extra = format!(
        // Long enough that a loaded machine's Redis answers within it.
        "throttling: {{ store: \"{}\", on_store_error: deny, timeout: 1s }}",
        relay.url()
    );
    let gw = Gateway::start(&open_api(
        "Black hole",
        &upstream,
        "[{ limit: 1000, per: 1h }]",
        &extra,
    ))
    .await;
    // Every listener thread connects (one connection each), from new
    // client connections spread over the threads' sockets.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for _ in 0..200 {
        if relay.accepted.load(Ordering::SeqCst) >= threads {
            break;
        }
        let resp = common::client()
            .get(gw.url("/open/items"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(
        relay.accepted.load(Ordering::SeqCst) >= threads,
        "not every thread connected"
    );
    let reconnects = metric(
        &gw.metrics().await,
        "microgateway_throttle_store_reconnects_total",
    );
    relay.black_hole();
    for _ in 0..3 {
        assert_eq!(gw.get("/open/items").await.status(), 503);
    }
    relay.reopen();
    let resp = until(&gw, |r| r.status() == 200).await;
    assert!(field(&resp, "ratelimit").is_some());
    assert!(
        metric(
            &gw.metrics().await,
            "microgateway_throttle_store_reconnects_total"
        ) > reconnects
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn throttling_settings_can_come_from_mcgw_variables() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, open_api("Overridden", &upstream, "[]", "")).unwrap();
    let env = common::env(&[
        ("MCGW_THROTTLING_STORE", "redis://127.0.0.1:6379/0"),
        ("MCGW_THROTTLING_ON_STORE_ERROR", "deny"),
    ]);
    let loaded = microgateway::config::load(&path, &env, 1).unwrap();
    let throttling = &loaded.snapshot.throttling;
    assert!(matches!(
        throttling.store,
        microgateway::config::snapshot::ThrottleStore::Redis { .. }
    ));
    assert_eq!(
        throttling.on_store_error,
        microgateway::config::snapshot::OnStoreError::Deny
    );
    let env = common::env(&[("MCGW_THROTTLING_TIMEOUT", "forever")]);
    let invalid = microgateway::config::load(&path, &env, 1).unwrap_err();
    assert!(
        invalid
            .to_string()
            .contains("MCGW_THROTTLING_TIMEOUT: error: throttling.timeout: `forever`"),
        "{invalid}"
    );
}
