//! Header and token rules that hold whatever spelling a client picks:
//! reserved headers (`Proxy` among them) stripped in every spelling that
//! folds to their name, paths that do not decode to UTF-8 refused, HTTP/2
//! cookies joined for HTTP/1.1 upstreams, an upstream's challenge to the
//! gateway's own credentials kept from the client, and scopes split on
//! 0x20 only.

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::idp::{Answer, Idp, Introspector};
use common::{raw_request, status_of, Gateway, Upstream};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

fn yaml(upstream_url: &str, challenger_url: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
forwarding: {{ forwarded: true }}
apis:
- name: Rules
  version: "1.0"
  base_path: /rules
  upstream: {{ url: "{upstream_url}" }}
  authentication: {{ type: none }}
  resources: ["GET /who", "POST /who", "GET /files/{{rest*}}"]
  policies:
    request_transformation:
      set_headers:
        X-User-Id: "set-by-gateway"
      remove_headers: [X-Debug-Info]
- name: Pinned
  version: "1.0"
  base_path: /pinned
  upstream: {{ url: "{upstream_url}" }}
  authentication: {{ type: none }}
  resources: ["GET /who"]
  policies:
    request_transformation:
      set_headers:
        X-Forwarded-Host: api.example.com
      remove_headers: [X-Forwarded-For]
- name: Challenged
  version: "1.0"
  base_path: /challenged
  upstream: {{ url: "{challenger_url}" }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
  policies:
    outbound_auth: {{ type: basic, username: svc, password: "svc-pw" }}
- name: Open
  version: "1.0"
  base_path: /open
  upstream: {{ url: "{challenger_url}" }}
  authentication: {{ type: none }}
  resources: ["GET /x"]
"#
    )
}

/// An upstream that answers every request 401 with a Basic challenge.
async fn challenger() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|_req: Request<Incoming>| async {
                let mut response = Response::new(Full::new(Bytes::from_static(b"who are you")));
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    "www-authenticate",
                    "Basic realm=\"x\"".parse().expect("value"),
                );
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

async fn start() -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let challenger = challenger().await;
    let gw = Gateway::start(&yaml(
        &upstream.url("/api"),
        &format!("http://{challenger}/api"),
    ))
    .await;
    (upstream, gw)
}

#[tokio::test]
async fn reserved_headers_are_stripped_in_every_spelling_that_folds_to_theirs() {
    let (upstream, gw) = start().await;
    let raw = raw_request(
        gw.http,
        b"GET /rules/who HTTP/1.1\r\nHost: gw\r\n\
          X_HTTP_Method_Override: DELETE\r\n\
          X-HTTP-Method_Override: DELETE\r\n\
          x.http.method.override: DELETE\r\n\
          X_HTTP_METHOD: PUT\r\n\
          X_Method_Override: PUT\r\n\
          X.User.Id: admin\r\n\
          X_User_Id: admin\r\n\
          x-user_id: admin\r\n\
          X-Debug_Info: 1\r\n\
          X_Forwarded_For: 6.6.6.6\r\n\
          X.Forwarded.Host: evil.example\r\n\
          X-Kept_Header: yes\r\n\
          X-Forwarded-Ssl: on\r\n\
          X_Forwarded_Scheme: https\r\n\
          X-Forwarded-Port: 443\r\n\
          X-Forwarded-Prefix: //evil.example\r\n\
          Front-End-Https: on\r\n\
          X-Original-URL: /rules/files/admin\r\n\
          X_Rewrite_Url: /rules/files/admin\r\n\
          X-Forwarded-Client-Cert: Hash=abc;Subject=\"CN=admin\"\r\n\
          X-SSL-Client-Cert: forged\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = upstream.last();
    assert_eq!(seen.method, "GET");
    let mut names: Vec<&str> = seen.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    for name in &names {
        let folded = name.replace(['_', '.'], "-");
        assert!(
            !folded.contains("method") && !folded.contains("debug"),
            "{name} reached the upstream: {names:?}"
        );
        assert!(
            !name.contains(['_', '.']) || *name == "x-kept_header",
            "{name} reached the upstream: {names:?}"
        );
    }
    let user: Vec<_> = seen.headers.get_all("x-user-id").iter().collect();
    assert_eq!(user, ["set-by-gateway"]);
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-kept_header"], "yes");
    // How the client reached a proxy: only a trusted proxy may say.
    for name in [
        "x-forwarded-ssl",
        "x_forwarded_scheme",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "front-end-https",
        // Or which certificate it showed.
        "x-forwarded-client-cert",
        "x-ssl-client-cert",
        // Path overrides: another resource than the one authorized.
        "x-original-url",
        "x_rewrite_url",
    ] {
        assert!(
            !names.contains(&name),
            "{name} reached the upstream: {names:?}"
        );
    }
    gw.shutdown().await;
}

/// httpoxy (CVE-2016-5385): a CGI-style upstream reads `Proxy` as
/// `HTTP_PROXY` and sends its own calls through the host it names.
#[tokio::test]
async fn the_proxy_field_never_reaches_the_upstream_in_any_spelling() {
    let (upstream, gw) = start().await;
    let raw = raw_request(
        gw.http,
        b"GET /rules/who HTTP/1.1\r\nHost: gw\r\n\
          Proxy: http://evil.example:8080\r\n\
          PROXY: http://evil.example:8081\r\n\
          proxy: http://evil.example:8082\r\n\
          Proxy-Status: kept\r\n\
          X-Proxy: kept\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = upstream.last();
    assert!(!seen.headers.contains_key("proxy"), "{:?}", seen.headers);
    assert_eq!(seen.headers["proxy-status"], "kept");
    assert_eq!(seen.headers["x-proxy"], "kept");
    // A good request on a new connection still goes through.
    assert_eq!(gw.get("/rules/who").await.status(), 200);
    gw.shutdown().await;
}

/// What a policy sets or removes of the forwarding fields is the
/// policy's: the gateway's own value does not come back over it, nor is
/// it restated by `Forwarded`, which goes with it.
#[tokio::test]
async fn a_policy_has_the_last_word_on_the_forwarding_fields() {
    let (upstream, gw) = start().await;
    let raw = raw_request(
        gw.http,
        b"GET /pinned/who HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = upstream.last();
    let hosts: Vec<_> = seen.headers.get_all("x-forwarded-host").iter().collect();
    assert_eq!(hosts, ["api.example.com"]);
    assert!(
        seen.headers.get("x-forwarded-for").is_none(),
        "{:?}",
        seen.headers
    );
    // What it does not name the gateway still sets; `Forwarded`, which
    // would still say the host the policy replaced, is not.
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert!(
        seen.headers.get("forwarded").is_none(),
        "{:?}",
        seen.headers
    );
    // A policy that names no forwarding field leaves `Forwarded` alone.
    assert_eq!(gw.get("/rules/who").await.status(), 200);
    let seen = upstream.last();
    assert_eq!(
        seen.headers["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{}\"", gw.http).as_str()
    );
    gw.shutdown().await;
}

/// `?_method=DELETE` turns a POST into a DELETE in Laravel, Symfony and
/// Rack: such a request is refused before it is authorized as a POST, in
/// every spelling PHP files under `_method` (`.` and spaces made `_`,
/// leading spaces dropped, an array's brackets cut off).
#[tokio::test]
async fn a_method_override_parameter_is_refused() {
    let (upstream, gw) = start().await;
    for target in [
        "/rules/who?_method=DELETE",
        "/rules/who?a=1&%5Fmethod=PUT",
        "/rules/who?.method=DELETE",
        "/rules/who?+_method=DELETE",
        "/rules/who?%20%20_method=DELETE",
        "/rules/who?_method%5B%5D=DELETE",
        "/rules/who?_method[x]=DELETE",
        "/rules/who?a=1&%2Emethod=DELETE",
        "/rules/who?_method%00=DELETE",
    ] {
        let resp = gw
            .request(Method::POST, target)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 400, "{target}");
    }
    assert_eq!(upstream.hits(), 0);
    // A GET is never overridden: its query goes on as it is.
    assert_eq!(gw.get("/rules/who?_method=DELETE").await.status(), 200);
    assert_eq!(upstream.last().uri, "/api/who?_method=DELETE");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_path_that_does_not_decode_to_utf8_is_refused() {
    let (upstream, gw) = start().await;
    for path in [
        "/rules/files/%c0%ae%c0%ae/etc",
        "/rules/files/%C0%AF",
        "/rules/files/%ff",
        "/rules/files/%80",
        "/rules/files/%e2%82",
        "/rules/files/%ed%a0%80",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let raw = raw_request(gw.http, request.as_bytes()).await;
        assert_eq!(status_of(&raw), 400, "{path}: {raw}");
    }
    assert_eq!(upstream.hits(), 0);
    // Escaped UTF-8 still goes through, as it was sent.
    let raw = raw_request(
        gw.http,
        b"GET /rules/files/caf%C3%A9 HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(upstream.last().uri, "/api/files/caf%C3%A9");
    gw.shutdown().await;
}

#[tokio::test]
async fn http2_cookie_fields_reach_an_http1_upstream_as_one() {
    let (upstream, gw) = start().await;
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let url = format!("http://gw.example:{}/rules/who", gw.http.port());
    let request = Request::get(&url)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = upstream.last();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_challenge_to_the_gateways_credentials_is_a_502() {
    let (_upstream, gw) = start().await;
    let response = gw.get("/challenged/x").await;
    assert_eq!(response.status(), 502);
    assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
    let body = response.text().await.expect("body");
    assert!(!body.contains("realm"), "{body}");
    // Without credentials of the gateway's, the challenge is the client's.
    let response = gw.get("/open/x").await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()[WWW_AUTHENTICATE], "Basic realm=\"x\"");
    gw.shutdown().await;
}

fn scoped_yaml(idp: &Idp, introspector: &Introspector, upstream: &Upstream) -> String {
    let api = |name: &str, auth: &str| {
        format!(
            r#"
- name: {name}
  version: "1.0"
  base_path: /{auth}
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: {auth} }}
  scopes:
  - name: Read
    resources: ["GET /orders"]"#,
            upstream = upstream.url("/api"),
        )
    };
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
  - id: remote
    name: remote
    remoteIntrospectionConfig:
      introspectionEndpoint: "{endpoint}"
      clientId: gateway
      clientSecret: gateway-secret
scope_mappings:
- {{ auth_server: idp, scope: "orders:read", api_scopes: ["Jwt orders:Read"] }}
- {{ auth_server: remote, scope: "orders:read", api_scopes: ["Opaque orders:Read"] }}
apis:{jwt}{opaque}
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        endpoint = introspector.endpoint(),
        jwt = api("\"Jwt orders\"", "idp"),
        opaque = api("\"Opaque orders\"", "remote"),
    )
}

#[tokio::test]
async fn scope_split_on_other_whitespace_grants_nothing() {
    let idp = Idp::start().await;
    let introspector = Introspector::counting().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&scoped_yaml(&idp, &introspector, &upstream)).await;
    gw.wait_ready().await;
    let get = |base: &'static str, token: String| {
        let request = gw
            .request(reqwest::Method::GET, &format!("/{base}/orders"))
            .bearer_auth(token);
        async move { request.send().await.expect("response") }
    };
    let granted = get("idp", idp.token(&["orders:read"])).await;
    assert_eq!(granted.status(), 200);
    for claims in [
        json!({"scope": "evil\u{2003}orders:read"}),
        json!({"scope": "evil\torders:read"}),
        json!({"scope": "evil\norders:read"}),
        json!({"scope": null, "scp": ["evil\u{2003}orders:read"]}),
    ] {
        let response = get("idp", idp.token_with(claims.clone())).await;
        assert_eq!(response.status(), 401, "{claims}");
        assert_eq!(
            response.headers()[WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\"",
            "{claims}"
        );
    }
    introspector.answer("good", Answer::active(json!({"scope": "orders:read"})));
    introspector.answer(
        "evil",
        Answer::active(json!({"scope": "evil\u{2003}orders:read"})),
    );
    assert_eq!(get("remote", "good".into()).await.status(), 200);
    let response = get("remote", "evil".into()).await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(upstream.hits(), 2);
    gw.shutdown().await;
}
