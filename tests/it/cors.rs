//! CORS and response transformation, as a browser and an upstream see
//! them: preflights answered by the gateway before authentication and
//! never forwarded, the CORS fields on upstream answers and on the
//! gateway's own 401 and 403, response headers set and removed on the
//! upstream's answers only, and the configuration errors of both policies.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::idp::Idp;
use common::recording::RecordingUpstream;
use common::Gateway;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use reqwest::header::{HeaderMap, AUTHORIZATION};
use reqwest::Method;
use tokio::net::TcpListener;

const APP: &str = "https://app.example.com";

/// An oauth2 API with a CORS policy and a response transformation, and
/// an open API with a wildcard CORS policy.
fn yaml(idp: &Idp, upstream: &str) -> String {
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
- name: Time travels
  base_path: /travels
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings"]
  - name: BookTickets
    resources: ["POST /bookings", "DELETE /bookings/{{id}}"]
  policies:
    cors:
      allow_origins: ["https://App.Example.com", "http://localhost:8080"]
      allow_methods: [GET, POST, DELETE]
      allow_headers: [Authorization, Content-Type]
      expose_headers: [X-Request-Id]
      allow_credentials: true
      max_age: 10m
    response_transformation:
      set_headers: {{ Cache-Control: "no-store" }}
      remove_headers: [Server, X-Powered-By]
- name: Public
  base_path: /public
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: none }}
  resources: ["GET /timetable"]
  policies:
    cors:
      allow_origins: ["*"]
- name: Limited
  base_path: /limited
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
  policies:
    throttle:
    - {{ limit: 1, per: 1h }}
    cors:
      allow_origins: ["{APP}"]
      expose_headers: [X-Request-Id]
- name: Plain
  base_path: /plain
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
- name: Filtered
  base_path: /filtered
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
  ip_filter: {{ allow: ["10.0.0.0/8"] }}
  policies:
    cors:
      allow_origins: ["*"]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
    )
}

/// An upstream that answers 200 with the fields a response
/// transformation removes, and its own CORS fields.
async fn chatty_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|_req: Request<Incoming>| async {
                let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                let headers = response.headers_mut();
                for (name, value) in [
                    ("server", "Apache/2.4.1"),
                    ("x-powered-by", "PHP/5.2"),
                    ("cache-control", "public, max-age=3600"),
                    ("x-upstream-trace", "r-1"),
                    ("access-control-allow-origin", "https://evil.example"),
                    ("vary", "Accept-Encoding"),
                ] {
                    headers.insert(name, value.parse().expect("value"));
                }
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

struct World {
    idp: Idp,
    gw: Gateway,
}

async fn world(upstream: &str) -> World {
    let idp = Idp::start().await;
    let gw = Gateway::start(&yaml(&idp, upstream)).await;
    World { idp, gw }
}

async fn preflight(
    gw: &Gateway,
    path: &str,
    origin: &str,
    method: &str,
    headers: Option<&str>,
) -> reqwest::Response {
    let mut request = gw
        .request(Method::OPTIONS, path)
        .header("origin", origin)
        .header("access-control-request-method", method);
    if let Some(headers) = headers {
        request = request.header("access-control-request-headers", headers);
    }
    request.send().await.expect("preflight")
}

fn bookings(gw: &Gateway, token: &str) -> reqwest::RequestBuilder {
    gw.request(Method::GET, "/travels/bookings")
        .header(AUTHORIZATION, format!("Bearer {token}"))
}

fn field<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("text"))
}

fn vary(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().expect("text").split(','))
        .map(|v| v.trim().to_owned())
        .collect()
}

fn has_no_cors_fields(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .all(|name| !name.as_str().starts_with("access-control-"))
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_is_answered_without_credentials_and_never_forwarded() {
    let upstream = RecordingUpstream::start().await;
    let w = world(&upstream.url()).await;
    let resp = preflight(
        &w.gw,
        "/travels/bookings",
        APP,
        "POST",
        Some("authorization,content-type"),
    )
    .await;
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(field(h, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        field(h, "access-control-allow-methods"),
        Some("GET, POST, DELETE")
    );
    assert_eq!(
        field(h, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(field(h, "access-control-max-age"), Some("600"));
    assert_eq!(field(h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        vary(h),
        [
            "Origin",
            "Access-Control-Request-Method",
            "Access-Control-Request-Headers"
        ]
    );
    assert!(resp.bytes().await.expect("body").is_empty());
    // A path with a parameter, and requested headers in any case.
    let resp = preflight(
        &w.gw,
        "/travels/bookings/42",
        "http://localhost:8080",
        "DELETE",
        Some("Authorization"),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        field(resp.headers(), "access-control-allow-origin"),
        Some("http://localhost:8080")
    );
    assert_eq!(upstream.accepted(), 0, "a preflight reached the upstream");
}

#[tokio::test]
async fn preflight_not_allowed_is_answered_204_without_cors_fields() {
    let upstream = RecordingUpstream::start().await;
    let w = world(&upstream.url()).await;
    let refused = [
        // An origin not listed; a listed origin's other port or scheme.
        ("/travels/bookings", "https://evil.example", "GET", None),
        ("/travels/bookings", "http://app.example.com", "GET", None),
        ("/travels/bookings", "http://localhost:8081", "GET", None),
        // A method not allowed, or not served on this path.
        ("/travels/bookings", APP, "PUT", None),
        ("/travels/bookings", APP, "DELETE", None),
        ("/travels/nowhere", APP, "GET", None),
        // A header not allowed.
        (
            "/travels/bookings",
            APP,
            "POST",
            Some("content-type,x-debug"),
        ),
    ];
    for (path, origin, method, headers) in refused {
        let resp = preflight(&w.gw, path, origin, method, headers).await;
        assert_eq!(resp.status(), 204, "{origin} {method} {path}");
        assert!(
            has_no_cors_fields(resp.headers()),
            "{origin} {method} {path}: {:?}",
            resp.headers()
        );
        assert_eq!(vary(resp.headers())[0], "Origin");
    }
    assert_eq!(upstream.accepted(), 0, "a preflight reached the upstream");
}

/// `ip_filter` refuses a client before anything else: a preflight from it
/// is refused too, and tells it nothing of the API's methods.
#[tokio::test]
async fn a_preflight_from_an_address_the_ip_filter_refuses_is_refused() {
    let upstream = RecordingUpstream::start().await;
    let w = world(&upstream.url()).await;
    for path in ["/filtered/x", "/filtered/unknown"] {
        let resp = preflight(&w.gw, path, APP, "GET", None).await;
        assert_eq!(resp.status(), 403, "{path}");
        assert!(has_no_cors_fields(resp.headers()), "{path}");
    }
    assert_eq!(upstream.accepted(), 0);
}

/// Behind a trusted proxy that names no client address, a preflight to an
/// API with an `ip_filter` is refused as the request it announces would
/// be: 400, the client unknown (not 403, which would judge the proxy).
#[tokio::test]
async fn a_preflight_from_an_unknown_client_is_400_as_its_request_would_be() {
    let upstream = RecordingUpstream::start().await;
    let idp = Idp::start().await;
    let yaml = format!(
        "trusted_proxies: [\"127.0.0.1/32\"]\n{}",
        yaml(&idp, &upstream.url())
    );
    let gw = Gateway::start(&yaml).await;
    let resp = gw
        .request(Method::OPTIONS, "/filtered/x")
        .header("origin", APP)
        .header("access-control-request-method", "GET")
        .header("x-forwarded-for", "unknown")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 400);
    assert!(has_no_cors_fields(resp.headers()));
    let resp = gw
        .request(Method::GET, "/filtered/x")
        .header("x-forwarded-for", "unknown")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 400);
    assert_eq!(upstream.accepted(), 0);
}

#[tokio::test]
async fn options_without_a_preflights_fields_and_apis_without_cors_are_routed_as_usual() {
    let upstream = RecordingUpstream::start().await;
    let w = world(&upstream.url()).await;
    let resp =
        w.gw.request(Method::OPTIONS, "/travels/bookings")
            .header("origin", APP)
            .send()
            .await
            .expect("options");
    assert_eq!(resp.status(), 405);
    let resp = preflight(&w.gw, "/plain/x", APP, "GET", None).await;
    assert_eq!(resp.status(), 405);
    assert!(has_no_cors_fields(resp.headers()));
}

#[tokio::test]
async fn actual_request_from_an_allowed_origin_gets_the_cors_fields_and_the_upstreams_give_way() {
    let upstream = chatty_upstream().await;
    let w = world(&format!("http://{upstream}/api")).await;
    let token = w.idp.token(&["ViewTickets"]);
    let resp = bookings(&w.gw, &token)
        .header("origin", APP)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(field(h, "access-control-allow-origin"), Some(APP));
    assert_eq!(field(h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        field(h, "access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(h.get_all("access-control-allow-origin").iter().count(), 1);
    assert_eq!(vary(h), ["Accept-Encoding", "Origin"]);
    // A preflight's fields are for preflights.
    assert!(h.get("access-control-allow-methods").is_none());

    let resp = bookings(&w.gw, &token)
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    assert!(
        has_no_cors_fields(resp.headers()),
        "the upstream's own grant went through: {:?}",
        resp.headers()
    );
    assert_eq!(vary(resp.headers()), ["Accept-Encoding", "Origin"]);
}

#[tokio::test]
async fn any_origin_gets_a_star_without_credentials() {
    let upstream = chatty_upstream().await;
    let w = world(&format!("http://{upstream}/api")).await;
    let resp =
        w.gw.request(Method::GET, "/public/timetable")
            .header("origin", "https://anyone.example")
            .send()
            .await
            .expect("get");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(field(h, "access-control-allow-origin"), Some("*"));
    assert!(h.get("access-control-allow-credentials").is_none());
    assert_eq!(vary(h), ["Accept-Encoding"], "`*` does not vary by origin");
    // The same answer without `Origin`: a shared cache may hand it to a
    // browser's CORS request.
    let resp = w.gw.get("/public/timetable").await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(field(h, "access-control-allow-origin"), Some("*"));
    assert_eq!(vary(h), ["Accept-Encoding"]);
    let resp = preflight(&w.gw, "/public/timetable", "https://x.example", "GET", None).await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        field(resp.headers(), "access-control-allow-origin"),
        Some("*")
    );
    assert_eq!(
        field(resp.headers(), "access-control-allow-methods"),
        Some("GET, HEAD"),
        "without allow_methods, the methods the API serves"
    );
}

/// The gateway's 404 and 405 under the base path of an API with a CORS
/// policy are that API's answers: an allowed origin can read them, and
/// they vary by `Origin`. Paths under no API get no CORS field.
#[tokio::test]
async fn the_gateways_404_and_405_under_a_cors_api_carry_the_cors_fields() {
    let upstream = RecordingUpstream::start().await;
    let w = world(&upstream.url()).await;
    for (method, path, status) in [
        (Method::PUT, "/travels/bookings", 405),
        (Method::GET, "/travels/nowhere", 404),
    ] {
        let resp =
            w.gw.request(method.clone(), path)
                .header("origin", APP)
                .send()
                .await
                .expect("request");
        assert_eq!(resp.status(), status, "{method} {path}");
        let h = resp.headers();
        assert_eq!(
            field(h, "access-control-allow-origin"),
            Some(APP),
            "{method} {path}: {h:?}"
        );
        assert!(vary(h).iter().any(|v| v == "Origin"), "{h:?}");
    }
    let resp =
        w.gw.request(Method::GET, "/elsewhere")
            .header("origin", APP)
            .send()
            .await
            .expect("request");
    assert_eq!(resp.status(), 404);
    assert!(has_no_cors_fields(resp.headers()));
    assert_eq!(upstream.accepted(), 0);
}

/// The RateLimit fields the throttle adds are exposed to the application,
/// on the answers it admits and on its 429 alike.
#[tokio::test]
async fn the_throttles_fields_are_exposed_to_the_application() {
    let upstream = chatty_upstream().await;
    let w = world(&format!("http://{upstream}/api")).await;
    let get = || {
        w.gw.request(Method::GET, "/limited/x")
            .header("origin", APP)
            .send()
    };
    let resp = get().await.expect("get");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(field(h, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        field(h, "access-control-expose-headers"),
        Some("x-request-id, ratelimit, ratelimit-policy")
    );
    assert!(h.get("ratelimit").is_some());
    let resp = get().await.expect("get");
    assert_eq!(resp.status(), 429);
    assert_eq!(
        field(resp.headers(), "access-control-expose-headers"),
        Some("x-request-id, ratelimit, ratelimit-policy, www-authenticate, retry-after")
    );
}

#[tokio::test]
async fn the_gateways_401_and_403_carry_the_cors_fields_and_no_response_transformation() {
    let upstream = RecordingUpstream::start().await;
    let w = world(&upstream.url()).await;
    let resp =
        w.gw.request(Method::GET, "/travels/bookings")
            .header("origin", APP)
            .send()
            .await
            .expect("get");
    assert_eq!(resp.status(), 401);
    let h = resp.headers();
    assert_eq!(field(h, "access-control-allow-origin"), Some(APP));
    assert_eq!(field(h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(
        field(h, "access-control-expose-headers"),
        Some("x-request-id, www-authenticate, retry-after")
    );
    assert_eq!(vary(h), ["Origin"]);
    assert!(h.get("www-authenticate").is_some());
    assert!(
        h.get("cache-control").is_none(),
        "response transformation is for the upstream's answers"
    );

    let token = w.idp.token(&["ViewTickets"]);
    let resp =
        w.gw.request(Method::POST, "/travels/bookings")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header("origin", APP)
            .send()
            .await
            .expect("post");
    assert_eq!(resp.status(), 403);
    assert_eq!(
        field(resp.headers(), "access-control-allow-origin"),
        Some(APP)
    );
    assert!(resp.headers().get("cache-control").is_none());

    let resp =
        w.gw.request(Method::GET, "/travels/bookings")
            .header("origin", "https://evil.example")
            .send()
            .await
            .expect("get");
    assert_eq!(resp.status(), 401);
    assert!(has_no_cors_fields(resp.headers()));
    assert_eq!(upstream.accepted(), 0);
}

#[tokio::test]
async fn response_transformation_sets_and_removes_the_upstreams_headers() {
    let upstream = chatty_upstream().await;
    let w = world(&format!("http://{upstream}/api")).await;
    let token = w.idp.token(&["ViewTickets"]);
    let resp = bookings(&w.gw, &token).send().await.expect("get");
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(field(h, "cache-control"), Some("no-store"));
    assert_eq!(h.get_all("cache-control").iter().count(), 1);
    assert!(h.get("server").is_none());
    assert!(h.get("x-powered-by").is_none());
    assert_eq!(field(h, "x-upstream-trace"), Some("r-1"));
    // An API without the policy passes them on.
    let resp = w.gw.get("/public/timetable").await;
    assert_eq!(field(resp.headers(), "x-powered-by"), Some("PHP/5.2"));
    assert_eq!(
        field(resp.headers(), "cache-control"),
        Some("public, max-age=3600")
    );
}

#[tokio::test]
async fn explain_lists_the_apis_cors_policy() {
    let idp = Idp::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, yaml(&idp, "http://127.0.0.1:9/api")).expect("write");
    let loaded = microgateway::config::load(&path, &common::Env::new(), 1).expect("valid");
    let verdict = microgateway::policy::decide(
        &loaded.snapshot,
        &http::Method::GET,
        "/travels/bookings",
        None,
        None,
    );
    let text = verdict.to_string();
    assert!(
        text.contains(
            "cors:       origins https://app.example.com, http://localhost:8080; methods GET, POST, DELETE, with credentials"
        ),
        "{text}"
    );
    let verdict =
        microgateway::policy::decide(&loaded.snapshot, &http::Method::GET, "/plain/x", None, None);
    assert!(!verdict.to_string().contains("cors:"));
}

/// The findings of a configuration with one API whose `policies:` are
/// `policies` (indented for the API), as `LINE:COL: error: …` lines.
fn findings(policies: &str) -> Vec<String> {
    let yaml = format!(
        "ports: {{ http: 0 }}\napis:\n- name: A\n  base_path: /a\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /x\"]\n  policies:\n{policies}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, yaml).expect("write");
    let prefix = format!("{}:", path.display());
    match microgateway::config::load(&path, &common::Env::new(), 1) {
        Ok(_) => Vec::new(),
        Err(invalid) => invalid
            .findings
            .iter()
            .map(|d| d.to_string().trim_start_matches(&prefix).to_owned())
            .collect(),
    }
}

#[test]
fn star_with_credentials_is_a_configuration_error() {
    let found =
        findings("    cors:\n      allow_origins: [\"*\"]\n      allow_credentials: true\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("10:23: error: cors.allow_origins `*` with allow_credentials: true"),
        "{found:#?}"
    );
    assert!(
        found[0].ends_with("; allowed: the origins listed one by one, or allow_credentials: false"),
        "{found:#?}"
    );
}

#[test]
fn origins_that_are_not_serialized_origins_are_configuration_errors() {
    let found = findings(
        "    cors:\n      allow_origins:\n      - https://app.example.com/\n      - https://app.example.com:443\n      - app.example.com\n      - \"null\"\n      - https://ok.example\n",
    );
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found[0]
            .starts_with("11:9: error: cors.allow_origins: `https://app.example.com/` has a path"),
        "{found:#?}"
    );
    assert!(found[1].starts_with("12:9: error: cors.allow_origins: `https://app.example.com:443` names its scheme's default port"), "{found:#?}");
    assert!(
        found[2].contains("`app.example.com` is not scheme://host[:port]"),
        "{found:#?}"
    );
    assert!(
        found[3].contains("`null` is not scheme://host[:port]"),
        "{found:#?}"
    );
    assert!(found
        .iter()
        .all(|f| f.contains("; allowed: a serialized origin")));
    let found = findings("    cors:\n      allow_origins: [\"*\", https://a.example]\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("`*` is mixed with other origins"),
        "{found:#?}"
    );
    let found = findings("    cors: { allow_methods: [GET] }\n");
    assert!(
        found[0].contains("cors has no `allow_origins`"),
        "{found:#?}"
    );
}

#[test]
fn methods_header_names_and_max_age_are_checked() {
    let found = findings(
        "    cors:\n      allow_origins: [https://a.example]\n      allow_methods: [get, BREW]\n      allow_headers: [\"*\", \"X Bad\"]\n      max_age: 2d\n",
    );
    assert_eq!(found.len(), 5, "{found:#?}");
    assert!(
        found[0].contains("cors.allow_methods: `get` is not a method"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("cors.allow_methods: `BREW` is not a method"),
        "{found:#?}"
    );
    assert!(
        found[2].contains("cors.allow_headers: `*` is not supported"),
        "{found:#?}"
    );
    assert!(
        found[3].contains("`X Bad` is not a valid header name"),
        "{found:#?}"
    );
    assert!(found[4].contains("max_age"), "{found:#?}");
    let found =
        findings("    cors:\n      allow_origins: [https://a.example]\n      max_age: 25h\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("11:16: error: cors.max_age `25h` is longer than 24h"),
        "{found:#?}"
    );
    assert!(
        findings("    cors:\n      allow_origins: [https://a.example]\n      max_age: 24h\n")
            .is_empty()
    );
}

#[test]
fn response_transformation_refuses_connection_fields_variables_and_bad_values() {
    let found = findings(
        "    response_transformation:\n      set_headers:\n        Content-Length: \"0\"\n        X-User: \"${request.authorization.userName}\"\n        X-Bad: \"a\\nb\"\n        X-Padded: \"DENY \"\n        X-Utf: \"café\"\n        X-A: \"1\"\n        x-a: \"2\"\n        X-Inner: \"a  b\"\n      remove_headers: [Transfer-Encoding, Connection, Server]\n",
    );
    assert_eq!(found.len(), 8, "{found:#?}");
    assert!(
        found[0].starts_with(
            "11:9: error: response_transformation cannot set or remove `Content-Length`"
        ),
        "{found:#?}"
    );
    assert!(
        found[1].contains("has a `${…}` variable; allowed: plain text"),
        "{found:#?}"
    );
    // A line break; a space at the end (HTTP/2 clients refuse it); bytes
    // past ASCII; one name twice in another case. Spaces inside are text.
    for (i, value) in [(2, "`a\\nb`"), (3, "`DENY `"), (4, "`café`")] {
        assert!(
            found[i].contains(&format!(
                "response_transformation value {value} is not a plain header value"
            )),
            "{found:#?}"
        );
    }
    assert!(
        found[5].contains("set_headers names `x-a` twice (also as `X-A`)"),
        "{found:#?}"
    );
    assert!(
        found[6].contains("cannot set or remove `Transfer-Encoding`"),
        "{found:#?}"
    );
    assert!(
        found[7].contains("cannot set or remove `Connection`"),
        "{found:#?}"
    );
}

fn reloadable(cors: &str) -> String {
    format!(
        "ports: {{ http: 0, bind: 127.0.0.1 }}\nadmin: {{ port: 0, bind: 127.0.0.1 }}\napis:\n- name: A\n  base_path: /a\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /x\"]\n  policies:\n    cors: {cors}\n"
    )
}

/// `config_reload_total{result="error"}` of the file source.
fn reload_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("microgateway_config_reload_total{"))
        .filter(|l| l.contains(r#"source="file""#) && l.contains(r#"result="error""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test]
async fn a_reload_changes_the_origins_and_an_invalid_policy_keeps_the_good_one() {
    let gw = Gateway::start(&reloadable(r#"{ allow_origins: ["https://a.example"] }"#)).await;
    let allows = |origin: &'static str| {
        let gw = &gw;
        async move {
            let resp = preflight(gw, "/a/x", origin, "GET", None).await;
            resp.headers().contains_key("access-control-allow-origin")
        }
    };
    assert!(allows("https://a.example").await);
    gw.write_config(&reloadable(r#"{ allow_origins: ["https://b.example"] }"#));
    gw.wait_generation(2).await;
    assert!(allows("https://b.example").await);
    assert!(!allows("https://a.example").await);
    gw.write_config(&reloadable(
        r#"{ allow_origins: ["*"], allow_credentials: true }"#,
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while reload_errors(&gw.metrics().await) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload was not refused"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(gw.state().live.generation(), 2);
    assert!(allows("https://b.example").await);
    assert!(!allows("https://evil.example").await);
}

/// An origin is held as a browser sends it: a port written with a leading
/// zero, or an IPv6 host not in its shortest form, still matches.
#[tokio::test]
async fn an_origin_written_otherwise_matches_as_a_browser_sends_it() {
    let gw = Gateway::start(&reloadable(
        r#"{ allow_origins: ["http://localhost:08080", "http://[0:0::1]:3000"] }"#,
    ))
    .await;
    for origin in ["http://localhost:8080", "http://[::1]:3000"] {
        let resp = preflight(&gw, "/a/x", origin, "GET", None).await;
        assert_eq!(
            field(resp.headers(), "access-control-allow-origin"),
            Some(origin)
        );
    }
    gw.shutdown().await;
}

/// GET, HEAD and POST are CORS-safelisted: a browser takes them whether
/// `Access-Control-Allow-Methods` names them or not, so their preflight
/// (sent for a header such as `Authorization`) is allowed where the API
/// serves them, `allow_methods` or not; another method must be listed.
#[tokio::test]
async fn a_safelisted_method_needs_no_place_in_allow_methods() {
    let upstream = RecordingUpstream::start().await;
    let w = world(&upstream.url()).await;
    // `allow_methods: [GET, POST, DELETE]`; HEAD is served where GET is.
    let resp = preflight(
        &w.gw,
        "/travels/bookings",
        APP,
        "HEAD",
        Some("authorization"),
    )
    .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(
        field(resp.headers(), "access-control-allow-origin"),
        Some(APP)
    );
    // Not served on that path: refused whatever the method.
    let resp = preflight(
        &w.gw,
        "/travels/bookings",
        APP,
        "PUT",
        Some("authorization"),
    )
    .await;
    assert!(has_no_cors_fields(resp.headers()), "{:?}", resp.headers());
    assert_eq!(upstream.accepted(), 0);
    w.gw.shutdown().await;
}
