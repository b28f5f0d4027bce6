//! Token properties to the upstream: `set_headers` from the principal (the
//! same whether the token was a JWT or introspected), spoofed headers
//! removed, `remove_headers`, and the `Authorization` the upstream gets
//! from `outbound_auth`.

use crate::common;

use base64::Engine;
use common::idp::{merged, Answer, Idp, Introspector};
use common::{Gateway, Upstream};
use reqwest::Method;
use serde_json::{json, Value};

const PROPERTIES: &str = r#"
  policies:
    request_transformation:
      set_headers:
        X-Client-Id: "${request.authorization.clientId}"
        X-Owner: "${request.oauth2Token.owner}"
        X-Tenant: "tenant ${request.authorization.claims.tenant} via ${request.oauth2Token.clientId}"
        X-Roles: "${request.authorization.claims.roles}"
        X-Level: "${request.authorization.claims.level}"
        X-Scope: "${request.authorization.scope}"
        X-Audience: "${request.authorization.audience}"
        X-Issuer: "${request.authorization.issuer}"
        X-Nothing: "none-${request.authorization.claims.absent}"
      remove_headers: [X-Debug]"#;

/// The headers [`PROPERTIES`] sets.
const SET: &[&str] = &[
    "x-client-id",
    "x-owner",
    "x-tenant",
    "x-roles",
    "x-level",
    "x-scope",
    "x-audience",
    "x-issuer",
];

fn yaml(idp: &Idp, introspector: &Introspector, upstream: &Upstream) -> String {
    let api = |name: &str, base: &str, auth: &str, policies: &str| {
        format!(
            r#"
- name: "{name}"
  version: "1.0"
  base_path: {base}
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: {auth} }}
  resources: ["GET /who"]{policies}"#,
            upstream = upstream.url("/api"),
        )
    };
    let outbound = |rule: &str| format!("\n  policies:\n    outbound_auth: {rule}");
    let apis = [
        api("JWT properties", "/jwt", "idp", PROPERTIES),
        api("Opaque properties", "/opaque", "remote", PROPERTIES),
        api(
            "Basic alias",
            "/basic-alias",
            "idp",
            &outbound("{ alias: backend-basic }"),
        ),
        api(
            "Inline basic",
            "/inline-basic",
            "idp",
            &outbound(r#"{ type: basic, username: inline, password: "in:line pw" }"#),
        ),
        api(
            "Bearer alias",
            "/bearer-alias",
            "idp",
            &outbound("{ alias: backend-bearer }"),
        ),
        api(
            "Delegated",
            "/delegated",
            "idp",
            &outbound("{ delegate: incoming_token }"),
        ),
    ]
    .concat();
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
  aliases:
  - {{ name: backend-basic, type: basic, username: svc-travels, password: "p@ss:word" }}
  - {{ name: backend-bearer, type: bearer, token: "backend-token-123" }}
apis:{apis}
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        endpoint = introspector.endpoint(),
    )
}

struct World {
    idp: Idp,
    introspector: Introspector,
    upstream: Upstream,
    gw: Gateway,
}

async fn world() -> World {
    let idp = Idp::start().await;
    let introspector = Introspector::counting().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&idp, &introspector, &upstream)).await;
    gw.wait_ready().await;
    World {
        idp,
        introspector,
        upstream,
        gw,
    }
}

impl World {
    /// GETs `{base}/who` with `token` and extra client headers; returns the status.
    async fn get(&self, base: &str, token: &str, headers: &[(&str, &str)]) -> u16 {
        let mut request = self
            .gw
            .request(Method::GET, &format!("{base}/who"))
            .bearer_auth(token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("request").status().as_u16()
    }

    /// The JWT and the introspection answer for the same claims.
    fn tokens(&self, changes: Value) -> (String, String) {
        let claims = merged(self.idp.claims(&["view", "book"]), &changes);
        let jwt = self.idp.token_with(claims.clone());
        let opaque = format!("opaque-{}", claims["jti"].as_str().expect("jti"));
        self.introspector.answer(&opaque, Answer::active(claims));
        (jwt, opaque)
    }

    /// Values of `name` the upstream received last.
    fn received(&self, name: &str) -> Vec<String> {
        self.upstream
            .last()
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect()
    }

    fn properties(&self) -> Vec<(String, Vec<String>)> {
        SET.iter()
            .map(|name| (name.to_string(), self.received(name)))
            .collect()
    }
}

fn rich_claims() -> Value {
    json!({"tenant": "acme", "roles": ["admin", "ops"], "level": 3,
           "client_id": "bookyourticket", "sub": "alice", "aud": ["travels", "audit"]})
}

#[tokio::test]
async fn token_properties_become_upstream_headers() {
    let w = world().await;
    let (jwt, _) = w.tokens(rich_claims());
    assert_eq!(w.get("/jwt", &jwt, &[]).await, 200);
    let one = |name: &str| w.received(name);
    assert_eq!(one("x-client-id"), ["bookyourticket"]);
    assert_eq!(one("x-owner"), ["alice"]);
    assert_eq!(one("x-tenant"), ["tenant acme via bookyourticket"]);
    // Claims that are not strings arrive as JSON.
    assert_eq!(one("x-roles"), [r#"["admin","ops"]"#]);
    assert_eq!(one("x-level"), ["3"]);
    assert_eq!(one("x-scope"), ["view book"]);
    assert_eq!(one("x-audience"), ["travels audit"]);
    assert_eq!(one("x-issuer"), [w.idp.issuer()]);
    // A variable with no value sets no header, literal text included.
    assert!(one("x-nothing").is_empty());
    w.gw.shutdown().await;
}

#[tokio::test]
async fn jwt_and_introspection_of_the_same_claims_give_the_same_headers() {
    let w = world().await;
    let (jwt, opaque) = w.tokens(rich_claims());
    assert_eq!(w.get("/jwt", &jwt, &[]).await, 200);
    let from_jwt = w.properties();
    assert_eq!(w.get("/opaque", &opaque, &[]).await, 200);
    let from_introspection = w.properties();
    assert_eq!(w.introspector.calls(), 1);
    assert!(
        from_jwt.iter().all(|(_, values)| values.len() == 1),
        "{from_jwt:?}"
    );
    assert_eq!(from_jwt, from_introspection);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn client_cannot_spoof_the_headers_a_policy_sets_or_removes() {
    let w = world().await;
    let (jwt, opaque) = w.tokens(json!({"client_id": "real-app"}));
    let spoofed = [
        ("X-Client-Id", "evil"),
        ("X_Client_Id", "evil"),
        ("X-Client_Id", "evil"),
        ("x_client-id", "evil"),
        ("x-nothing", "evil"),
        ("X_Nothing", "evil"),
        ("X-Debug", "1"),
        ("X_Debug", "1"),
        ("X-Unrelated", "kept"),
    ];
    for (base, token) in [("/jwt", &jwt), ("/opaque", &opaque)] {
        assert_eq!(w.get(base, token, &spoofed).await, 200);
        assert_eq!(w.received("x-client-id"), ["real-app"], "{base}");
        for gone in [
            "x_client_id",
            "x-client_id",
            "x_client-id",
            "x-nothing",
            "x_nothing",
            "x-debug",
            "x_debug",
        ] {
            assert!(
                w.received(gone).is_empty(),
                "{base}: {gone} reached the upstream"
            );
        }
        assert_eq!(w.received("x-unrelated"), ["kept"]);
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn missing_claim_sets_no_header() {
    let w = world().await;
    let (jwt, opaque) = w.tokens(json!({"tenant": null, "roles": null, "level": null}));
    for (base, token) in [("/jwt", &jwt), ("/opaque", &opaque)] {
        assert_eq!(w.get(base, token, &[("X-Tenant", "spoofed")]).await, 200);
        for name in ["x-tenant", "x-roles", "x-level"] {
            assert!(w.received(name).is_empty(), "{base}: {name}");
        }
        assert_eq!(w.received("x-owner"), ["alice"]);
    }
    w.gw.shutdown().await;
}

/// A claim copied into a header must be visible ASCII, space or tab, and
/// at most 4 KiB: a line break would split the field, bytes past ASCII
/// are read differently by each upstream (Latin-1, UTF-8, refused), and a
/// long one overruns the upstream's limit on a field.
#[tokio::test]
async fn claim_that_is_no_valid_header_value_refuses_the_token() {
    let w = world().await;
    let long = "x".repeat(4097);
    let bad = ["acme\r\nX-Injected: 1", "acmé", "acme\u{7f}", &long];
    refused_as_invalid_token(&w, "tenant", &bad).await;
    // Up to 4 KiB, with spaces and tabs, it is sent as it is.
    let longest = format!("a b\t{}", "x".repeat(4096 - 4));
    let (jwt, opaque) = w.tokens(json!({ "tenant": longest }));
    for (base, token) in [("/jwt", &jwt), ("/opaque", &opaque)] {
        assert_eq!(w.get(base, token, &[]).await, 200, "{base}");
        let tenant = format!("tenant {longest} via app");
        assert_eq!(w.received("x-tenant"), [tenant], "{base}");
    }
    w.gw.shutdown().await;
}

/// Each of `values` as the claim `claim`, in a JWT and in an opaque token,
/// refuses the request with 401 `invalid_token` and reaches no upstream;
/// the same token passes where no policy uses the claim.
async fn refused_as_invalid_token(w: &World, claim: &str, values: &[&str]) {
    for (passed, value) in values.iter().enumerate() {
        let (jwt, opaque) = w.tokens(json!({ claim: value }));
        for (base, token) in [("/jwt", &jwt), ("/opaque", &opaque)] {
            let resp =
                w.gw.request(Method::GET, &format!("{base}/who"))
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("request");
            assert_eq!(resp.status(), 401, "{base} {value:?}");
            let challenge = resp.headers()["www-authenticate"].to_str().expect("ascii");
            assert!(
                challenge.ends_with(r#"error="invalid_token""#),
                "{challenge}"
            );
        }
        assert_eq!(w.upstream.hits(), passed, "{value:?} reached the upstream");
        assert_eq!(w.get("/basic-alias", &jwt, &[]).await, 200);
    }
}

/// RFC 9110 §5.5: every parser strips the spaces and tabs around a field
/// value, so a property padded with them would reach the upstream as
/// another identity (`" admin"` read as `admin`): it refuses the token.
#[tokio::test]
async fn property_padded_with_whitespace_refuses_the_token() {
    let w = world().await;
    let padded = [" admin", "admin\t", "\tadmin ", " ", "  "];
    refused_as_invalid_token(&w, "sub", &padded).await;
    // Spaces inside a value are sent as they are.
    let (jwt, opaque) = w.tokens(json!({ "sub": "ad min" }));
    for (base, token) in [("/jwt", &jwt), ("/opaque", &opaque)] {
        assert_eq!(w.get(base, token, &[]).await, 200, "{base}");
        assert_eq!(w.received("x-owner"), ["ad min"], "{base}");
    }
    w.gw.shutdown().await;
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn outbound_auth_sets_what_the_upstream_receives() {
    let w = world().await;
    let token = w.idp.token(&["view"]);
    let cases = [
        ("/basic-alias", basic("svc-travels", "p@ss:word")),
        ("/inline-basic", basic("inline", "in:line pw")),
        ("/bearer-alias", "Bearer backend-token-123".to_owned()),
        ("/delegated", format!("Bearer {token}")),
    ];
    for (base, expected) in cases {
        assert_eq!(w.get(base, &token, &[]).await, 200, "{base}");
        assert_eq!(w.received("authorization"), [expected], "{base}");
    }
    // Without outbound auth the client's Authorization never arrives.
    assert_eq!(w.get("/jwt", &token, &[]).await, 200);
    assert!(w.received("authorization").is_empty());
    w.gw.shutdown().await;
}

/// Credentials written in an upstream URL's user information would
/// travel in clear as the `Host` field (RFC 9110 §7.2: `Host` is uri-host
/// and port only) and show wherever the URL does (admin assets, metric
/// labels): such a URL is refused at load, for one `url` as for balanced
/// `endpoints`, pointing to `outbound_auth`, without repeating the
/// password. Nothing is sent.
#[tokio::test]
async fn upstream_url_with_user_information_is_refused_at_load() {
    let upstream = Upstream::start().await;
    let with_userinfo = upstream
        .url("/api")
        .replace("http://", "http://svc:upstream-pw-clear@");
    for written in [
        format!(r#"{{ url: "{with_userinfo}" }}"#),
        format!(
            r#"{{ endpoints: [{{ url: "{}" }}, {{ url: "{with_userinfo}" }}] }}"#,
            upstream.url("/b")
        ),
    ] {
        let yaml = format!(
            r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: Userinfo
  base_path: /userinfo
  upstream: {written}
  authentication: {{ type: none }}
  resources: ["GET /who"]
"#
        );
        let refused = Gateway::try_start(&yaml, common::Env::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("{written} was accepted"));
        assert!(refused.contains("user information"), "{refused}");
        assert!(refused.contains("outbound_auth"), "{refused}");
        assert!(!refused.contains("upstream-pw-clear"), "{refused}");
    }
    assert_eq!(upstream.hits(), 0);
}

/// The `echo` upstream answers whoever calls it with the request as an
/// upstream would see it: the credentials `outbound_auth` adds (an alias's
/// password) and those the client sent are shown redacted, the rest as is.
#[tokio::test]
async fn echo_shows_credentials_redacted() {
    let yaml = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0, bind: 127.0.0.1 }
security_settings:
  aliases:
  - { name: backend, type: basic, username: svc, password: "alias-pw-clear" }
apis:
- name: Echoed
  base_path: /echoed
  upstream: { echo: true }
  authentication: { type: none }
  resources: ["GET /who"]
  policies:
    outbound_auth: { alias: backend }
"#;
    let gw = Gateway::start(yaml).await;
    let resp = gw
        .request(Method::GET, "/echoed/who")
        .header("Cookie", "session=cookie-clear")
        .header("X-Visible", "shown")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    for secret in [basic("svc", "alias-pw-clear").as_str(), "cookie-clear"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let echoed: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(echoed["headers"]["authorization"], "[redacted]");
    assert_eq!(echoed["headers"]["cookie"], "[redacted]");
    assert_eq!(echoed["headers"]["x-visible"], "shown");
    gw.shutdown().await;
}
