//! OAuth2 scope enforcement through the gateway, end to end: a JWKS server
//! with real RSA keys, signed `at+jwt` tokens, a counting upstream. Each
//! rejection is checked for its exact RFC 6750 answer and for never
//! reaching the upstream.

use crate::common;

use common::idp::{merged, unix_now, Idp, SigningKey};
use common::{metric, raw_request, status_of, Gateway, Refusing, Upstream};
use microgateway::policy::{self, Outcome};
use reqwest::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::Method;
use serde_json::{json, Value};

const ALIAS_PASSWORD: &str = "alias-pa55word-never-shown";

/// Two APIs on one auth server: `{api}` whose scopes are reached through
/// `scope_mappings`, and `Literal {api}`, which no mapping names, so a token
/// scope named like the API scope grants it.
fn travels(idp: &Idp, upstream: &Upstream, api: &str) -> String {
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
  aliases:
  - {{ name: unused, type: basic, username: svc, password: "{ALIAS_PASSWORD}" }}
scope_mappings:
- {{ auth_server: idp, scope: view,   api_scopes: ["{api}:ViewTickets"] }}
- {{ auth_server: idp, scope: book,   api_scopes: ["{api}:BookTickets"] }}
- {{ auth_server: idp, scope: manage, api_scopes: ["{api}:BookTickets", "{api}:CancelTickets"] }}
apis:
- name: "{api}"
  version: "1.0"
  base_path: /travels
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings", "GET /bookings/{{id}}"]
  - name: BookTickets
    resources: ["POST /bookings"]
  - name: CancelTickets
    resources: ["DELETE /bookings/{{id}}"]
  resources: ["GET /status"]
  policies:
    request_transformation:
      set_headers:
        X-Tenant: "${{request.authorization.claims.tenant}}"
- name: "Literal {api}"
  version: "1.0"
  base_path: /literal
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - name: read
    resources: ["GET /items"]
  - name: write
    resources: ["POST /items", "DELETE /items/{{id}}"]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        upstream = upstream.url("/api"),
    )
}

struct World {
    idp: Idp,
    upstream: Upstream,
    gw: Gateway,
}

async fn world(api: &str) -> World {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&idp, &upstream, api)).await;
    gw.wait_ready().await;
    World { idp, upstream, gw }
}

impl World {
    async fn send(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.gw.request(method, path);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request")
    }
}

fn challenge(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// A token that cannot be checked now (no keys): 503 with `Retry-After`
/// and the RFC 6750 error `temporarily_unavailable`, never a pass.
async fn assert_unavailable(resp: reqwest::Response) {
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key(RETRY_AFTER));
    assert_eq!(body(resp).await["error"], "temporarily_unavailable");
}

async fn body(resp: reqwest::Response) -> Value {
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "an RFC 6750 refusal has a JSON body"
    );
    resp.json().await.expect("JSON body")
}

/// Mappings are read by whole names: a mapping naming `Orders:v2:Read`
/// (API `Orders:v2`) names no scope of an API `Orders`, whose scopes a
/// token scope of the same name still grants; and an API scope with a `:`
/// in its name can be mapped.
#[tokio::test]
async fn mapped_names_with_colons_are_read_whole() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig: {{ issuer: "{issuer}", jwksuri: "{jwks}", audience: travels }}
scope_mappings:
- {{ auth_server: idp, scope: v2, api_scopes: ["Orders:v2:Read"] }}
- {{ auth_server: idp, scope: audit, api_scopes: ["Audit:logs:read"] }}
apis:
- name: Orders
  base_path: /orders
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: Read, resources: ["GET /items"] }}]
- name: "Orders:v2"
  base_path: /orders2
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: Read, resources: ["GET /items"] }}]
- name: Audit
  base_path: /audit
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: "logs:read", resources: ["GET /logs"] }}]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        upstream = upstream.url("/api"),
    );
    let gw = Gateway::start(&yaml).await;
    let status = |path: &'static str, scope: &'static str| {
        let request = gw
            .request(Method::GET, path)
            .bearer_auth(idp.token(&[scope]));
        async move { request.send().await.expect("request").status() }
    };
    assert_eq!(status("/orders/items", "Read").await, 200);
    assert_eq!(status("/orders2/items", "v2").await, 200);
    assert_eq!(status("/orders2/items", "Read").await, 403);
    assert_eq!(status("/audit/logs", "audit").await, 200);
    gw.shutdown().await;
}

/// A path with a trailing slash is read with and without it by upstreams
/// (Express drops it, a file server lists the directory): where the two
/// readings are resources with other scopes, the request needs both —
/// whichever reading is the more specific.
#[tokio::test]
async fn a_trailing_slash_needs_what_both_its_readings_need() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig: {{ issuer: "{issuer}", jwksuri: "{jwks}", audience: travels }}
apis:
- name: Files
  base_path: /f
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - {{ name: Admin, resources: ["GET /admin/{{name}}", "GET /files/secret/{{rest*}}"] }}
  resources: ["GET /admin/public/{{rest*}}", "GET /files/{{name}}"]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        upstream = upstream.url("/api"),
    );
    let gw = Gateway::start(&yaml).await;
    let status = |path: &'static str, scopes: &'static [&'static str]| {
        let request = gw.request(Method::GET, path).bearer_auth(idp.token(scopes));
        async move { request.send().await.expect("request").status() }
    };
    for path in ["/f/admin/public/", "/f/files/secret/"] {
        assert_eq!(status(path, &["other"]).await, 403, "{path}");
        assert_eq!(status(path, &["Admin"]).await, 200, "{path}");
    }
    assert_eq!(upstream.hits(), 2);
    // Each reading alone needs only its own.
    assert_eq!(status("/f/admin/public/x", &["other"]).await, 200);
    assert_eq!(status("/f/files/other", &["other"]).await, 200);
    // Without the slash, a path that a more specific tail takes with it
    // needs what both need: an upstream may serve `/files/secret` as
    // `/files/secret/`.
    assert_eq!(status("/f/files/secret", &["other"]).await, 403);
    assert_eq!(status("/f/files/secret", &["Admin"]).await, 200);
    gw.shutdown().await;
}

/// Literal scope names grant an API's scopes only where no mapping of any
/// auth server names the API, of any version: a mapping written for the
/// wrong auth server, or naming a scope only another version has, does
/// not leave the API's own tokens granting by name.
#[tokio::test]
async fn a_mapping_naming_the_api_anywhere_ends_literal_grants() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig: {{ issuer: "{issuer}", jwksuri: "{jwks}", audience: travels }}
  - id: partners
    localIntrospectionConfig: {{ issuer: "https://partners.example", jwksuri: "{jwks}" }}
scope_mappings:
- {{ auth_server: partners, scope: admin, api_scopes: ["Orders:Admin"] }}
- {{ auth_server: idp, scope: reader, api_scopes: ["Ledger:Read"] }}
apis:
- name: Orders
  base_path: /orders
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: Admin, resources: ["GET /items"] }}]
- name: Ledger
  version: "1.0"
  base_path: /ledger1
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: Read, resources: ["GET /items"] }}]
- name: Ledger
  version: "2.0"
  base_path: /ledger2
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: Write, resources: ["GET /items"] }}]
- name: Plain
  base_path: /plain
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes: [{{ name: Admin, resources: ["GET /items"] }}]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        upstream = upstream.url("/api"),
    );
    let gw = Gateway::start(&yaml).await;
    let status = |path: &'static str, scope: &'static str| {
        let request = gw
            .request(Method::GET, path)
            .bearer_auth(idp.token(&[scope]));
        async move { request.send().await.expect("request").status() }
    };
    assert_eq!(status("/orders/items", "Admin").await, 403);
    assert_eq!(status("/ledger1/items", "reader").await, 200);
    assert_eq!(status("/ledger2/items", "Write").await, 403);
    // No mapping names `Plain`: its scopes are granted by name.
    assert_eq!(status("/plain/items", "Admin").await, 200);
    gw.shutdown().await;
}

#[tokio::test]
async fn token_scope_named_like_the_api_scope_grants_it_without_a_mapping() {
    let w = world("Time travels").await;
    let read = w.idp.token(&["read"]);
    let write = w.idp.token(&["write"]);
    assert_eq!(
        w.send(Method::GET, "/literal/items", Some(&read))
            .await
            .status(),
        200
    );
    assert_eq!(
        w.send(Method::POST, "/literal/items", Some(&write))
            .await
            .status(),
        200
    );
    let resp = w.send(Method::POST, "/literal/items", Some(&read)).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        challenge(&resp).as_deref(),
        Some(r#"Bearer error="insufficient_scope", scope="write""#)
    );
    // A mapped token scope means nothing to an API that no mapping names.
    let view = w.idp.token(&["view"]);
    assert_eq!(
        w.send(Method::GET, "/literal/items", Some(&view))
            .await
            .status(),
        403
    );
    // ... and an API scope's literal name means nothing where mappings exist.
    let literal = w.idp.token(&["ViewTickets"]);
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&literal))
            .await
            .status(),
        403
    );
    assert_eq!(w.upstream.hits(), 2);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn mapped_token_scope_grants_the_api_scopes_it_maps_to() {
    let w = world("Time travels").await;
    let view = w.idp.token(&["view"]);
    let book = w.idp.token(&["book"]);
    let manage = w.idp.token(&["manage"]);
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&view))
            .await
            .status(),
        200
    );
    assert_eq!(
        w.send(Method::GET, "/travels/bookings/7", Some(&view))
            .await
            .status(),
        200
    );
    assert_eq!(
        w.send(Method::POST, "/travels/bookings", Some(&book))
            .await
            .status(),
        200
    );
    assert_eq!(
        w.send(Method::POST, "/travels/bookings", Some(&manage))
            .await
            .status(),
        200
    );
    assert_eq!(
        w.send(Method::DELETE, "/travels/bookings/7", Some(&manage))
            .await
            .status(),
        200
    );
    // HEAD is allowed where GET is.
    assert_eq!(
        w.send(Method::HEAD, "/travels/bookings", Some(&view))
            .await
            .status(),
        200
    );
    assert_eq!(w.upstream.hits(), 6);
    assert_eq!(w.upstream.last().method, "HEAD");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn token_without_a_granting_scope_gets_403_naming_the_scopes_that_would_do() {
    let w = world("Time travels").await;
    let view = w.idp.token(&["view", "unrelated"]);
    let resp = w.send(Method::POST, "/travels/bookings", Some(&view)).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        challenge(&resp).as_deref(),
        Some(r#"Bearer error="insufficient_scope", scope="book manage""#)
    );
    let json = body(resp).await;
    assert_eq!(json["error"], "insufficient_scope");
    assert!(json["error_description"].is_string());
    assert_eq!(w.upstream.hits(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn same_token_allowed_on_get_and_refused_on_delete() {
    let w = world("Time travels").await;
    let view = w.idp.token(&["view"]);
    assert_eq!(
        w.send(Method::GET, "/travels/bookings/7", Some(&view))
            .await
            .status(),
        200
    );
    let resp = w
        .send(Method::DELETE, "/travels/bookings/7", Some(&view))
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        challenge(&resp).as_deref(),
        Some(r#"Bearer error="insufficient_scope", scope="manage""#)
    );
    assert_eq!(w.upstream.hits(), 1);
    assert_eq!(w.upstream.last().method, "GET");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn resource_outside_scopes_needs_only_a_valid_token() {
    let w = world("Time travels").await;
    let no_scopes = w.idp.token_with(json!({"scope": null}));
    assert_eq!(
        w.send(Method::GET, "/travels/status", Some(&no_scopes))
            .await
            .status(),
        200
    );
    assert_eq!(
        w.send(Method::GET, "/travels/status", None).await.status(),
        401
    );
    let expired = w.idp.token_with(json!({"exp": unix_now() - 120}));
    assert_eq!(
        w.send(Method::GET, "/travels/status", Some(&expired))
            .await
            .status(),
        401
    );
    assert_eq!(w.upstream.hits(), 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn no_token_gets_401_with_a_bare_challenge() {
    let w = world("Time travels").await;
    for resp in [
        w.send(Method::GET, "/travels/bookings", None).await,
        // Another scheme is no bearer token either.
        w.gw.request(Method::GET, "/travels/bookings")
            .basic_auth("user", Some("pass"))
            .send()
            .await
            .expect("request"),
    ] {
        assert_eq!(resp.status(), 401);
        assert_eq!(
            challenge(&resp).as_deref(),
            Some(r#"Bearer realm="Time travels""#)
        );
        // RFC 6750 §3.1: no credentials, no error code.
        let body = body(resp).await;
        assert!(body.get("error").is_none(), "{body}");
        assert_eq!(body["error_description"], "a bearer token is required");
    }
    assert_eq!(w.upstream.hits(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn two_authorization_headers_or_a_query_token_get_400_invalid_request() {
    let w = world("Time travels").await;
    let view = w.idp.token(&["view"]);
    let two =
        w.gw.request(Method::GET, "/travels/bookings")
            .header(AUTHORIZATION, format!("Bearer {view}"))
            .header(AUTHORIZATION, format!("Bearer {view}"))
            .send()
            .await
            .expect("request");
    let query = w
        .send(
            Method::GET,
            &format!("/travels/bookings?x=1&access_token={view}"),
            None,
        )
        .await;
    // Some frameworks decode the parameter name: so does the gateway.
    let encoded = w
        .send(
            Method::GET,
            &format!("/travels/bookings?access%5Ftoken={view}"),
            None,
        )
        .await;
    for resp in [two, query, encoded] {
        assert_eq!(resp.status(), 400);
        assert_eq!(
            challenge(&resp).as_deref(),
            Some(r#"Bearer error="invalid_request""#)
        );
        assert_eq!(body(resp).await["error"], "invalid_request");
    }
    assert_eq!(w.upstream.hits(), 0);
    // The next good request, on a new connection, still works.
    let resp = common::client()
        .get(w.gw.url("/travels/bookings"))
        .bearer_auth(&view)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn token_over_8_kib_gets_401_invalid_token() {
    let w = world("Time travels").await;
    // A validly signed token that is simply too long.
    let long = w.idp.token_with(json!({"padding": "x".repeat(8 * 1024)}));
    assert!(long.len() > 8 * 1024);
    let resp = w.send(Method::GET, "/travels/bookings", Some(&long)).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        challenge(&resp).as_deref(),
        Some(r#"Bearer error="invalid_token""#)
    );
    assert_eq!(body(resp).await["error"], "invalid_token");
    assert_eq!(w.upstream.hits(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn expired_foreign_or_forged_tokens_get_401_invalid_token() {
    let w = world("Time travels").await;
    let now = unix_now();
    let key = w.idp.key();
    let valid = merged(w.idp.claims(&["view"]), &json!({}));
    let with = |changes: Value| key.sign(&key.header(), &merged(valid.clone(), &changes));
    let impostor = SigningKey::rsa(&key.kid);
    let cases: Vec<(&str, String)> = vec![
        ("expired", with(json!({"exp": now - 120}))),
        ("not yet valid", with(json!({"nbf": now + 600}))),
        ("no exp", with(json!({"exp": null}))),
        ("wrong iss", with(json!({"iss": "http://evil.example"}))),
        ("wrong aud", with(json!({"aud": "another-api"}))),
        ("bad signature", impostor.sign(&key.header(), &valid)),
        (
            "typ JWT",
            key.sign(
                &json!({"alg": "RS256", "typ": "JWT", "kid": key.kid}),
                &valid,
            ),
        ),
        ("unknown kid", {
            let other = SigningKey::rsa("other");
            other.sign(&other.header(), &valid)
        }),
        ("alg none", {
            let token = key.sign(
                &json!({"alg": "none", "typ": "at+jwt", "kid": key.kid}),
                &valid,
            );
            let (unsigned, _) = token.rsplit_once('.').expect("three parts");
            format!("{unsigned}.")
        }),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (case, token) in &cases {
        let resp = w.send(Method::GET, "/travels/bookings", Some(token)).await;
        assert_eq!(resp.status(), 401, "{case}");
        assert_eq!(
            challenge(&resp).as_deref(),
            Some(r#"Bearer error="invalid_token""#),
            "{case}"
        );
        assert_eq!(body(resp).await["error"], "invalid_token", "{case}");
    }
    assert_eq!(w.upstream.hits(), 0);
    // The same claims, properly signed, pass.
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&with(json!({}))))
            .await
            .status(),
        200
    );
    w.gw.shutdown().await;
}

/// A reload that changes an auth server's rules but not where its keys
/// come from keeps the keys: with the JWKS endpoint down meanwhile, its
/// tokens are still validated.
#[tokio::test]
async fn a_reload_of_an_auth_servers_rules_keeps_its_keys() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = travels(&idp, &upstream, "Time travels");
    let gw = Gateway::start(&yaml).await;
    let send = |token: String| {
        let request = gw
            .request(Method::GET, "/travels/bookings")
            .bearer_auth(token);
        async move { request.send().await.expect("request").status() }
    };
    assert_eq!(send(idp.token(&["view"])).await, 200);
    idp.set_down(true);
    gw.write_config(&yaml.replace(
        "      audience: travels\n",
        "      audience: travels\n      clockSkew: 30s\n",
    ));
    gw.wait_generation(2).await;
    // A token the new validators have not seen: checked against the keys.
    assert_eq!(send(idp.token(&["view", "book"])).await, 200);
    gw.shutdown().await;
}

/// The travels API behind a gateway started while its IdP is down (no
/// JWKS to fetch), and the configuration it started with.
async fn idp_down_at_start() -> (Idp, Upstream, String, Gateway) {
    let idp = Idp::start().await;
    idp.set_down(true);
    let upstream = Upstream::start().await;
    let yaml = travels(&idp, &upstream, "Time travels");
    let gw = Gateway::start(&yaml).await;
    (idp, upstream, yaml, gw)
}

#[tokio::test]
async fn jwks_down_at_start_is_not_ready_and_answers_503_with_retry_after() {
    let (idp, upstream, _, gw) = idp_down_at_start().await;
    let token = idp.token(&["view"]);
    for _ in 0..5 {
        assert_eq!(gw.readiness().await, 503);
        let resp = gw
            .request(Method::GET, "/travels/bookings")
            .bearer_auth(&token)
            .send()
            .await
            .expect("request");
        assert_unavailable(resp).await;
    }
    // Without a token the answer is still 401: nothing to validate.
    let resp = gw.get("/travels/bookings").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

/// `yaml` (of [`travels`]) with a second auth server, `partners`, whose
/// JWKS is at `jwks` (where connections are refused), and an API on it:
/// what a reload or a central download may add.
fn with_partners(yaml: &str, jwks: &Refusing, upstream: &Upstream) -> String {
    let auth_server = format!(
        "  - id: partners\n    name: partners\n    localIntrospectionConfig: {{ issuer: \"http://{addr}\", jwksuri: \"http://{addr}/jwks\" }}\n  aliases:\n",
        addr = jwks.addr,
    );
    let api = format!(
        "- name: Partners\n  version: \"1.0\"\n  base_path: /partners\n  upstream: {{ url: \"{}\" }}\n  authentication: {{ type: oauth2, auth_server: partners }}\n  resources: [\"GET /status\"]\n",
        upstream.url("/api"),
    );
    format!("{}{api}", yaml.replacen("  aliases:\n", &auth_server, 1))
}

/// The status and JSON body of `/health/ready`.
async fn readiness_body(gw: &Gateway) -> (u16, Value) {
    let resp = gw
        .client
        .get(gw.admin_url("/health/ready"))
        .send()
        .await
        .expect("readiness");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

/// The JWKS is a condition of the start: a reload adding an auth server
/// whose keys cannot be fetched must not take a serving gateway (and every
/// gateway following the same central configuration) out of service. Its
/// API alone is refused, and the readiness body names what is missing.
#[tokio::test]
async fn a_reload_adding_an_unreachable_jwks_keeps_a_ready_gateway_ready() {
    let w = world("Time travels").await;
    let token = w.idp.token(&["view"]);
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&token))
            .await
            .status(),
        200
    );
    let unreachable = Refusing::new();
    let yaml = travels(&w.idp, &w.upstream, "Time travels");
    w.gw.write_config(&with_partners(&yaml, &unreachable, &w.upstream));
    w.gw.wait_generation(2).await;

    let (status, ready) = readiness_body(&w.gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["generation"], 2);
    assert_eq!(ready["jwks_pending"], json!(["partners"]));
    // Fail closed: the new API's tokens cannot be checked, so it answers
    // 503 with `Retry-After`, and 401 without a token.
    assert_unavailable(w.send(Method::GET, "/partners/status", Some(&token)).await).await;
    assert_eq!(
        w.send(Method::GET, "/partners/status", None).await.status(),
        401
    );
    let hits = w.upstream.hits();
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&token))
            .await
            .status(),
        200
    );
    assert_eq!(w.upstream.hits(), hits + 1, "only the old API proxied");
    assert_eq!(readiness_body(&w.gw).await.0, 200);
    w.gw.shutdown().await;
}

/// Before the gateway has been ready, every auth server of the serving
/// snapshot counts: one added by a reload keeps it not ready even once the
/// keys it started with are fetched.
#[tokio::test]
async fn a_reload_before_the_first_ready_adds_its_jwks_to_the_start() {
    let (idp, upstream, yaml, gw) = idp_down_at_start().await;
    let (status, not_ready) = readiness_body(&gw).await;
    assert_eq!(status, 503);
    assert_eq!(
        not_ready,
        json!({"status": "not ready", "jwks_pending": ["idp"]})
    );

    let unreachable = Refusing::new();
    gw.write_config(&with_partners(&yaml, &unreachable, &upstream));
    gw.wait_generation(2).await;
    idp.set_down(false);
    let token = idp.token(&["view"]);
    assert_eq!(
        status_once_keys_loaded(&gw, "/travels/bookings", &token).await,
        200,
        "the keys of `idp` were fetched"
    );
    let (status, not_ready) = readiness_body(&gw).await;
    assert_eq!(status, 503, "{not_ready}");
    assert_eq!(not_ready["jwks_pending"], json!(["partners"]));
    gw.shutdown().await;
}

/// The start is met when it is met, not when someone asks: a gateway whose
/// keys were fetched, and whose readiness was never probed, stays ready
/// through a reload adding an auth server whose JWKS cannot be fetched.
#[tokio::test]
async fn a_reload_after_an_unprobed_start_keeps_the_gateway_ready() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = travels(&idp, &upstream, "Time travels");
    // Returns once the listeners are bound: nothing asks `/health/ready`
    // before the reload.
    let gw = Gateway::start(&yaml).await;
    let token = idp.token(&["view"]);
    assert_eq!(
        status_once_keys_loaded(&gw, "/travels/bookings", &token).await,
        200,
        "the keys of `idp` were fetched"
    );

    let unreachable = Refusing::new();
    gw.write_config(&with_partners(&yaml, &unreachable, &upstream));
    gw.wait_generation(2).await;
    let (status, ready) = readiness_body(&gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        ready,
        json!({"status": "ready", "generation": 2, "jwks_pending": ["partners"]})
    );
    let send = |path: &'static str| gw.request(Method::GET, path).bearer_auth(&token).send();
    assert_unavailable(send("/partners/status").await.expect("request")).await;
    let hits = upstream.hits();
    assert_eq!(
        send("/travels/bookings").await.expect("request").status(),
        200
    );
    assert_eq!(upstream.hits(), hits + 1, "only the old API proxied");
    gw.shutdown().await;
}

/// The status of `GET path` with `token`, asked until it is 200 or the
/// keys had time enough to load (10 s).
async fn status_once_keys_loaded(gw: &Gateway, path: &str, token: &str) -> u16 {
    let mut status = 0;
    for _ in 0..200 {
        let resp = gw
            .request(Method::GET, path)
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        status = resp.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    status
}

#[tokio::test]
async fn rotated_key_is_fetched_once_and_accepted() {
    let w = world("Time travels").await;
    let before = w.idp.fetches();
    assert_eq!(
        w.send(
            Method::GET,
            "/travels/bookings",
            Some(&w.idp.token(&["view"]))
        )
        .await
        .status(),
        200
    );
    w.idp.rotate("k2");
    let rotated = w.idp.token(&["view"]);
    for _ in 0..5 {
        assert_eq!(
            w.send(Method::GET, "/travels/bookings", Some(&rotated))
                .await
                .status(),
            200
        );
    }
    assert_eq!(w.idp.fetches(), before + 1);
    w.gw.shutdown().await;
}

/// A token signed by a key the gateway has not loaded makes it fetch the
/// JWKS again; when the IdP is down, the key may have been rotated in, so
/// the answer is 503 with `Retry-After`, not `invalid_token`. Within the
/// refetch cooldown no fetch is made and the key is unknown (401).
#[tokio::test]
async fn unknown_key_while_the_jwks_is_down_is_unavailable_once_per_cooldown() {
    let w = world("Time travels").await;
    let view = w.idp.token(&["view"]);
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&view))
            .await
            .status(),
        200
    );
    w.idp.rotate("k2");
    let rotated = w.idp.token(&["view"]);
    w.idp.set_down(true);
    let resp = w
        .send(Method::GET, "/travels/bookings", Some(&rotated))
        .await;
    assert_unavailable(resp).await;
    let resp = w
        .send(Method::GET, "/travels/bookings", Some(&rotated))
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        challenge(&resp).as_deref(),
        Some(r#"Bearer error="invalid_token""#)
    );
    // The loaded key still validates.
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&view))
            .await
            .status(),
        200
    );
    assert_eq!(w.upstream.hits(), 2);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn incoming_authorization_is_not_forwarded_by_default() {
    let w = world("Time travels").await;
    let view = w.idp.token(&["view"]);
    assert_eq!(
        w.send(Method::GET, "/travels/bookings", Some(&view))
            .await
            .status(),
        200
    );
    let received = w.upstream.last();
    assert!(!received.headers.contains_key("authorization"));
    let leaked = received
        .headers
        .values()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).contains(&view));
    assert!(!leaked, "the token reached the upstream");
    w.gw.shutdown().await;
}

#[tokio::test]
async fn auth_decisions_are_counted_per_api_and_result() {
    let api = "Counted travels";
    let w = world(api).await;
    let view = w.idp.token(&["view"]);
    w.send(Method::GET, "/travels/bookings", Some(&view)).await;
    w.send(Method::GET, "/travels/bookings/1", Some(&view))
        .await;
    w.send(Method::DELETE, "/travels/bookings/1", Some(&view))
        .await;
    w.send(Method::GET, "/travels/bookings", None).await;
    w.send(Method::GET, "/travels/bookings?access_token=x", None)
        .await;
    w.send(Method::GET, "/travels/bookings", Some("a.b.c"))
        .await;
    // A valid token refused for a property it cannot pass on counts once.
    let newline = w.idp.token_with(json!({"scope": "view", "tenant": "a\nb"}));
    w.send(Method::GET, "/travels/bookings", Some(&newline))
        .await;
    let text = w.gw.metrics().await;
    let count = |result: &str, kind: &str| {
        metric(
            &text,
            &format!(
                r#"microgateway_auth_decisions_total{{api="{api}",result="{result}",type="{kind}"}}"#
            ),
        )
    };
    assert_eq!(count("allowed", "oauth2"), 2, "{text}");
    assert_eq!(count("insufficient_scope", "oauth2"), 1);
    assert_eq!(count("missing_token", "none"), 1);
    assert_eq!(count("invalid_request", "none"), 1);
    assert_eq!(count("invalid_token", "oauth2"), 2);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn explain_gives_the_verdict_of_the_data_path() {
    let w = world("Time travels").await;
    let snapshot = w.gw.state().live.snapshot();
    let cases: &[(Method, &str, Option<&[&str]>)] = &[
        (Method::GET, "/travels/bookings", Some(&["view"])),
        (Method::GET, "/travels/bookings", Some(&["book"])),
        (Method::HEAD, "/travels/bookings/3", Some(&["view"])),
        (Method::POST, "/travels/bookings", Some(&["view"])),
        (Method::POST, "/travels/bookings", Some(&["manage"])),
        (
            Method::DELETE,
            "/travels/bookings/3",
            Some(&["view", "book"]),
        ),
        (Method::DELETE, "/travels/bookings/3", Some(&["manage"])),
        (Method::GET, "/travels/status", Some(&[])),
        (Method::GET, "/travels/status", None),
        (Method::GET, "/travels/bookings", None),
        (Method::GET, "/travels/unknown", Some(&["view"])),
        (Method::PUT, "/travels/bookings", Some(&["view"])),
        (Method::GET, "/travels/x/../bookings", Some(&["view"])),
        (Method::GET, "/literal/items", Some(&["read"])),
        (Method::GET, "/literal/items", Some(&["view"])),
        (Method::DELETE, "/literal/items/9", Some(&["write"])),
    ];
    for (method, path, scopes) in cases {
        let token_scopes: Option<Vec<String>> =
            scopes.map(|s| s.iter().map(|s| s.to_string()).collect());
        let verdict = policy::decide(&snapshot, method, path, token_scopes.as_deref(), None);
        let expected = match &verdict.outcome {
            Outcome::Allow => 200,
            Outcome::InsufficientScope => 403,
            Outcome::NeedsToken => 401,
            Outcome::BadPath(_) | Outcome::BadRequest(_) => 400,
            Outcome::NoRoute(policy::RouteProblem::MethodNotAllowed { .. }) => 405,
            Outcome::NoRoute(_) => 404,
            Outcome::IpFiltered | Outcome::Denied(_) => 403,
            Outcome::NeedsCredentials
            | Outcome::BadCredentials(_)
            | Outcome::OtherAuthServer { .. } => 401,
        };
        let token = scopes.map(|s| w.idp.token(s));
        let resp = w.send(method.clone(), path, token.as_deref()).await;
        assert_eq!(
            resp.status().as_u16(),
            expected,
            "{method} {path} {scopes:?}\n{verdict}"
        );
        if expected == 403 {
            let scope = format!(r#"scope="{}""#, verdict.granting_token_scopes.join(" "));
            assert!(
                challenge(&resp).expect("challenge").ends_with(&scope),
                "{method} {path}"
            );
        }
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn metrics_never_show_a_token_or_a_secret() {
    let w = world("Time travels").await;
    let view = w.idp.token(&["view"]);
    let forged = SigningKey::rsa("k1").sign(&w.idp.key().header(), &w.idp.claims(&["view"]));
    w.send(Method::GET, "/travels/bookings", Some(&view)).await;
    w.send(Method::POST, "/travels/bookings", Some(&view)).await;
    w.send(Method::GET, "/travels/bookings", Some(&forged))
        .await;
    w.send(
        Method::GET,
        &format!("/travels/bookings?access_token={view}"),
        None,
    )
    .await;
    let text = w.gw.metrics().await;
    let signature = view.rsplit('.').next().expect("signature");
    let payload = view.split('.').nth(1).expect("payload");
    for secret in [
        view.as_str(),
        signature,
        payload,
        forged.as_str(),
        ALIAS_PASSWORD,
    ] {
        assert!(!text.contains(secret), "metrics show a secret");
    }
    w.gw.shutdown().await;
}

/// A protected path needs its resource's scope however it is spelled: an
/// upstream that decodes `%40`, merges `//` or reads `/secret/` as
/// `/secret` serves the protected resource, so the gateway matches each
/// spelling to it (and forwards the form it matched). Literals written
/// in another spelling than the canonical one (`%7E` for `~`) protect too.
#[tokio::test]
async fn every_spelling_of_a_protected_path_needs_its_scope() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig: {{ issuer: "{}", jwksuri: "{}" }}
apis:
- name: Users
  base_path: /u
  upstream: {{ url: "{}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - name: Admin
    resources: ["GET /users/@me", "GET /users/%7eroot", "GET /files/secret"]
  - name: Read
    resources: ["GET /users/{{id}}", "GET /files/{{rest*}}"]
"#,
        idp.issuer(),
        idp.jwks_uri(),
        upstream.url("/api")
    );
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let (read, admin) = (idp.token(&["Read"]), idp.token(&["Admin"]));
    let get = |path: &str, token: &str| {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n"
        );
        let http = gw.http;
        async move { status_of(&raw_request(http, request.as_bytes()).await) }
    };
    let protected = [
        ("/u/users/@me", "/api/users/@me"),
        ("/u/users/%40me", "/api/users/@me"),
        ("/u/users/%40me/", "/api/users/@me/"),
        ("/u/users/~root", "/api/users/~root"),
        ("/u/users/%7Eroot", "/api/users/~root"),
        ("/u/files/secret", "/api/files/secret"),
        ("/u/files//secret", "/api/files/secret"),
        ("/u//files/secret", "/api/files/secret"),
        ("/u/files/secret/", "/api/files/secret/"),
        ("/u/files/./secret", "/api/files/secret"),
        ("/u/files/%73ecret", "/api/files/secret"),
    ];
    for (path, _) in protected {
        assert_eq!(get(path, &read).await, 403, "{path} with the Read scope");
    }
    assert_eq!(upstream.hits(), 0);
    // `/u/files/secret/` is `GET /files/secret` to an upstream that drops
    // the slash and `GET /files/{rest*}` to one that lists directories:
    // it needs what each needs.
    let both = idp.token(&["Admin", "Read"]);
    for (path, forwarded) in protected {
        let token = if path.ends_with("secret/") {
            &both
        } else {
            &admin
        };
        assert_eq!(get(path, token).await, 200, "{path} with the Admin scope");
        assert_eq!(upstream.last().uri, forwarded, "{path}");
    }
    assert_eq!(get("/u/files/secret/", &admin).await, 403, "Admin alone");
    // The weaker scope still reaches what is its own, slash or not.
    for (path, forwarded) in [
        ("/u/users/7", "/api/users/7"),
        ("/u/users/7/", "/api/users/7/"),
        ("/u/files/other//x", "/api/files/other/x"),
        ("/u/files/", "/api/files/"),
    ] {
        assert_eq!(get(path, &read).await, 200, "{path} with the Read scope");
        assert_eq!(upstream.last().uri, forwarded, "{path}");
    }
    gw.shutdown().await;
}

/// A private CA (its PEM) and a `localhost` certificate it signed, with key.
fn ca_and_leaf(name: &str) -> (String, rustls::pki_types::CertificateDer<'static>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.der().clone(), leaf_key.serialize_der())
}

/// An `https` JWKS server (certificate of `localhost`) answering `/jwks`
/// with whatever `keys` holds at the time.
async fn https_jwks(
    leaf: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
    keys: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
) -> std::net::SocketAddr {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    common::crypto();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf],
            rustls::pki_types::PrivateKeyDer::try_from(key).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, keys) = (acceptor.clone(), keys.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |_req: hyper::Request<hyper::body::Incoming>| {
                    let body = json!({ "keys": *keys.lock().unwrap() }).to_string();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            bytes::Bytes::from(body),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// An API at `/pinned` whose auth server `idp` (`issuer`) fetches its keys
/// trusting `bundle` alone.
fn pinned_yaml(issuer: &str, bundle: &std::path::Path, upstream: &Upstream) -> String {
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
      jwksuri: "{issuer}/jwks"
      trustStoreAlias: "{bundle}"
apis:
- name: Pinned
  base_path: /pinned
  upstream: {{ url: "{up}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  resources: ["GET /status"]
"#,
        bundle = bundle.display(),
        up = upstream.url("/api"),
    )
}

/// A token of `issuer` signed by `key`, valid for 10 minutes.
fn pinned_token(key: &SigningKey, issuer: &str) -> String {
    let now = unix_now();
    key.sign(
        &key.header(),
        &json!({"iss": issuer, "sub": "alice", "exp": now + 600, "iat": now}),
    )
}

/// A trust store whose bundle holds a block that is no usable certificate
/// beside its CA is read as `check` reads it: the CA is trusted, and the
/// system's roots are not (the client for the trust store never falls back
/// to them).
#[tokio::test]
async fn a_trust_store_with_an_unusable_block_still_trusts_its_ca_alone() {
    let (ca_pem, leaf, leaf_key) = ca_and_leaf("JWKS test CA");
    let k1 = SigningKey::rsa("k1");
    let keys = std::sync::Arc::new(std::sync::Mutex::new(vec![k1.jwk.clone()]));
    let addr = https_jwks(leaf, leaf_key, keys).await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("jwks-ca.pem");
    let junk = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
    std::fs::write(&bundle, format!("{ca_pem}{junk}")).unwrap();
    let issuer = format!("https://localhost:{}", addr.port());
    let gw = Gateway::start(&pinned_yaml(&issuer, &bundle, &upstream)).await;
    let status = gw
        .request(Method::GET, "/pinned/status")
        .bearer_auth(pinned_token(&k1, &issuer))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(
        status, 200,
        "the JWK Set was not fetched trusting the bundle's CA"
    );
    gw.shutdown().await;
}

/// `trustStoreAlias` is a CA bundle the gateway watches: once the file no
/// longer holds the CA of the JWKS server (a CA withdrawn after a
/// compromise), a reload must stop trusting it for key fetches.
#[tokio::test]
async fn a_reloaded_trust_store_applies_to_jwks_fetches() {
    let (ca_pem, leaf, leaf_key) = ca_and_leaf("JWKS test CA");
    let (other_ca_pem, _, _) = ca_and_leaf("Another CA");
    let k1 = SigningKey::rsa("k1");
    let k2 = SigningKey::rsa("k2");
    let keys = std::sync::Arc::new(std::sync::Mutex::new(vec![k1.jwk.clone()]));
    let addr = https_jwks(leaf, leaf_key, keys.clone()).await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("jwks-ca.pem");
    std::fs::write(&bundle, &ca_pem).unwrap();
    let issuer = format!("https://localhost:{}", addr.port());
    let yaml = pinned_yaml(&issuer, &bundle, &upstream);
    let gw = Gateway::start(&yaml).await;
    gw.wait_ready().await;
    let token = |key: &SigningKey| pinned_token(key, &issuer);
    let status = |token: String| {
        let request = gw.request(Method::GET, "/pinned/status").bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(token(&k1)).await, 200);

    // The CA is withdrawn from the bundle, and the configuration reloaded.
    std::fs::write(&bundle, &other_ca_pem).unwrap();
    gw.write_config(&format!("{yaml}\n# trust store changed\n"));
    gw.wait_generation(2).await;

    // A new key: its kid makes the gateway fetch the set again, from a
    // server whose CA the trust store no longer holds.
    keys.lock().unwrap().push(k2.jwk.clone());
    assert_ne!(
        status(token(&k2)).await,
        200,
        "the JWK Set was fetched trusting a CA removed from trustStoreAlias"
    );
    gw.shutdown().await;
}

/// This machine's address on its default route, if it has one that is not
/// loopback (no packet is sent: a UDP "connect" only picks the source).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Keys over plain HTTP to a host that is not loopback are refused when
/// configured (`jwksuri`); a `jwks_uri` the issuer's metadata names is the
/// same key material and must not be fetched that way either.
#[tokio::test]
async fn a_discovered_plain_http_jwks_uri_to_another_host_is_not_used() {
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let Some(ip) = non_loopback_address() else {
        eprintln!("no non-loopback address: nothing to show");
        return;
    };
    let key = std::sync::Arc::new(SigningKey::rsa("k1"));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{port}");
    let metadata = json!({"issuer": issuer, "jwks_uri": format!("http://{ip}:{port}/jwks")});
    let jwks = json!({"keys": [key.jwk.clone()]});
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (metadata, jwks, counted) = (metadata.clone(), jwks.clone(), counted.clone());
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let body = if req.uri().path() == "/jwks" {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    jwks.to_string()
                } else {
                    metadata.to_string()
                };
                async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        bytes::Bytes::from(body),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    let upstream = Upstream::start().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: idp
    name: idp
    localIntrospectionConfig:
      issuer: "{issuer}"
apis:
- name: Discovered
  base_path: /discovered
  upstream: {{ url: "{up}" }}
  authentication: {{ type: oauth2, auth_server: idp }}
  resources: ["GET /status"]
"#,
        up = upstream.url("/api"),
    );
    // The same URL configured as `jwksuri` is refused outright.
    let configured = yaml.replace(
        "      issuer: \"",
        &format!("      jwksuri: \"http://{ip}:{port}/jwks\"\n      issuer: \""),
    );
    assert!(Gateway::try_start(&configured, common::Env::new())
        .await
        .is_err());

    let gw = Gateway::start(&yaml).await;
    let now = unix_now();
    let token = key.sign(
        &key.header(),
        &json!({"iss": issuer, "sub": "alice", "exp": now + 600, "iat": now}),
    );
    assert_ne!(
        status_once_keys_could_load(&gw, &token).await,
        200,
        "keys fetched over plain HTTP from {ip} ({} fetches) verified the token",
        served.load(std::sync::atomic::Ordering::SeqCst)
    );
    gw.shutdown().await;

    // `allow_insecure_http` allows it, as it does for a configured one.
    let allowed = yaml.replace(
        "      issuer: \"",
        "      allow_insecure_http: true\n      issuer: \"",
    );
    let gw = Gateway::start(&allowed).await;
    assert_eq!(status_once_keys_could_load(&gw, &token).await, 200);
    gw.shutdown().await;
}

/// The status of `GET /discovered/status` with `token`, asked until it is
/// 200 or the keys had time enough to load (2 s).
async fn status_once_keys_could_load(gw: &Gateway, token: &str) -> u16 {
    let mut status = 0;
    for _ in 0..40 {
        let resp = gw
            .request(Method::GET, "/discovered/status")
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        status = resp.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    status
}
