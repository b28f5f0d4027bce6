//! Applications and the identification types besides a bearer token: API
//! keys, HTTP Basic, `applications: registered`, subscriptions, IP ranges
//! and `ip_filter`, over loopback with a counting upstream. Every refusal
//! is checked for its answer and for never reaching the upstream.

use crate::common;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use common::idp::Idp;
use common::{env, Gateway, Upstream};
use microgateway::policy::{decide_for, Caller};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::Method;

const PARTNER_KEY: &str = "partner-key-0123456789-never-logged";

fn cheap_hash(password: &str) -> String {
    let params = Params::new(8, 1, 1, None).expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

/// `trusted_proxies` holds the loopback peer, so `X-Forwarded-For` names
/// the client; `extra_app` is appended to the applications.
fn yaml(idp: &Idp, upstream: &Upstream, trusted: bool, extra_app: &str) -> String {
    let trusted = if trusted { r#"["127.0.0.1/32"]"# } else { "[]" };
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
trusted_proxies: {trusted}
security_settings:
  auth_servers:
  - id: idp
    name: idp
    localIntrospectionConfig:
      issuer: "{issuer}"
      jwksuri: "{jwks}"
      audience: travels
applications:
- name: Partner
  api_keys: ["${{env:PARTNER_KEY}}"]
  apis: ["Time travels"]
  api_scopes: ["Time travels:ViewTickets"]
- name: Batch
  basic_users:
  - {{ username: batch, password_hash: "{batch}" }}
  - {{ username: guessed, password_hash: "{guessed}" }}
  - {{ username: {long}, password_hash: "{guessed}" }}
  apis: ["Time travels:1.0"]
- name: Registered
  client_ids: [app]
  apis: ["Registered only"]
- name: Elsewhere
  api_keys: ["elsewhere-key"]
  apis: ["Other"]
- name: Ranged
  api_keys: ["ranged-key"]
  apis: ["Time travels", "Filtered"]
  ip_ranges: ["10.0.0.0/8"]
{extra_app}
apis:
- name: Time travels
  base_path: /travels
  upstream: {{ url: "{up}" }}
  authentication: {{ type: [oauth2, api_key, basic], auth_server: idp }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings"]
  - name: BookTickets
    resources: ["POST /bookings"]
  resources: ["GET /status"]
  policies:
    request_transformation:
      set_headers:
        X-App: "${{request.application.name}}"
        X-Auth-Type: "${{request.authorization.type}}"
        X-User: "${{request.authorization.userName}}"
- name: Registered only
  base_path: /registered
  upstream: {{ url: "{up}" }}
  authentication: {{ type: oauth2, auth_server: idp, applications: registered }}
  resources: ["GET /status"]
- name: Other
  base_path: /other
  upstream: {{ url: "{up}" }}
  authentication: {{ type: api_key, api_key_header: X-Partner-Key }}
  resources: ["GET /status"]
- name: Filtered
  base_path: /filtered
  upstream: {{ url: "{up}" }}
  authentication: {{ type: api_key }}
  ip_filter: {{ allow: ["10.0.0.0/8"], deny: ["10.9.0.0/16"] }}
  resources: ["GET /status"]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
        up = upstream.url("/api"),
        batch = cheap_hash("batch-pw"),
        guessed = cheap_hash("right-pw"),
        long = LONG_USER,
    )
}

/// A user name longer than the lock keeps as it is (it counts by its
/// digest).
const LONG_USER: &str = "a-user-name-longer-than-the-lockout-keeps-as-it-is-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx-long";

struct World {
    idp: Idp,
    upstream: Upstream,
    gw: Gateway,
}

async fn world(trusted: bool) -> World {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start_with_env(
        &yaml(&idp, &upstream, trusted, ""),
        env(&[("PARTNER_KEY", PARTNER_KEY)]),
    )
    .await;
    gw.wait_ready().await;
    World { idp, upstream, gw }
}

impl World {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.gw.request(Method::GET, path)
    }
}

fn challenges(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

#[tokio::test]
async fn api_key_caller_is_identified_and_its_key_never_reaches_the_upstream() {
    let w = world(false).await;
    let resp = w
        .get("/travels/bookings")
        .header("X-API-Key", PARTNER_KEY)
        .header("X-App", "spoofed")
        .header("x_auth_type", "spoofed")
        .header("X_API_KEY", "smuggled")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = w.upstream.last();
    assert_eq!(got.headers.get("x-app").unwrap(), "Partner");
    assert_eq!(got.headers.get_all("x-app").iter().count(), 1);
    assert_eq!(got.headers.get("x-auth-type").unwrap(), "api_key");
    assert!(got.headers.get("x_auth_type").is_none());
    assert!(got.headers.get("x-api-key").is_none());
    assert!(got.headers.get("x_api_key").is_none());
    let all = format!("{:?}", got.headers);
    assert!(!all.contains(PARTNER_KEY), "{all}");

    // Open resources, and the API scopes the application is granted; no other.
    let status = |path: &str, method: Method| {
        w.gw.request(method, path)
            .header("X-API-Key", PARTNER_KEY)
            .send()
    };
    assert_eq!(
        status("/travels/status", Method::GET)
            .await
            .unwrap()
            .status(),
        200
    );
    let hits = w.upstream.hits();
    let resp = status("/travels/bookings", Method::POST).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(w.upstream.hits(), hits);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn missing_wrong_and_doubled_credentials_are_refused() {
    let w = world(false).await;
    let resp = w.get("/travels/status").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        challenges(&resp),
        [
            r#"Bearer realm="Time travels""#,
            r#"APIKey realm="Time travels""#,
            r#"Basic realm="Time travels", charset="UTF-8""#,
        ]
    );
    // RFC 6750 §3.1: each challenge bare, and no error code in the body.
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body.get("error").is_none(), "{body}");
    assert_eq!(body["error_description"], "credentials are required");
    let resp = w
        .get("/travels/status")
        .header("X-API-Key", "not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(challenges(&resp), [r#"APIKey realm="Time travels""#]);

    let resp = w
        .get("/travels/status")
        .header("X-API-Key", PARTNER_KEY)
        .bearer_auth(w.idp.token(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = w
        .get("/travels/status")
        .header("X-API-Key", PARTNER_KEY)
        .basic_auth("batch", Some("batch-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A key-only API: a doubled key header is a bad request, with no
    // bearer challenge (that API takes no token).
    let resp = w
        .get("/other/status")
        .header("X-Partner-Key", PARTNER_KEY)
        .header("X-Partner-Key", PARTNER_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(challenges(&resp).is_empty(), "{:?}", challenges(&resp));
    // A token alone keeps the OAuth2 rules.
    let resp = w
        .get("/travels/status")
        .bearer_auth(w.idp.token(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        w.upstream.last().headers.get("x-auth-type").unwrap(),
        "oauth2"
    );
    assert_eq!(w.upstream.hits(), 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn basic_caller_is_identified_and_unknown_user_answers_like_wrong_password() {
    let w = world(false).await;
    let resp = w
        .get("/travels/status")
        .basic_auth("batch", Some("batch-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = w.upstream.last();
    assert!(got.headers.get(AUTHORIZATION).is_none());
    assert_eq!(got.headers.get("x-app").unwrap(), "Batch");
    assert_eq!(got.headers.get("x-user").unwrap(), "batch");
    assert_eq!(got.headers.get("x-auth-type").unwrap(), "basic");
    // Cached: the same credential again.
    let again = w
        .get("/travels/status")
        .basic_auth("batch", Some("batch-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);

    let wrong = w
        .get("/travels/status")
        .basic_auth("batch", Some("nope"))
        .send()
        .await
        .unwrap();
    let unknown = w
        .get("/travels/status")
        .basic_auth("nobody", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(unknown.status(), 401);
    assert_eq!(challenges(&wrong), challenges(&unknown));
    assert_eq!(wrong.text().await.unwrap(), unknown.text().await.unwrap());
    // Batch is granted no API scope.
    let resp = w
        .get("/travels/bookings")
        .basic_auth("batch", Some("batch-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(w.upstream.hits(), 2);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn basic_guessing_is_locked_even_for_the_right_password() {
    let w = world(false).await;
    for _ in 0..5 {
        let resp = w
            .get("/travels/status")
            .basic_auth("guessed", Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    let resp = w
        .get("/travels/status")
        .basic_auth("guessed", Some("right-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(w.upstream.hits(), 0);
    // Another user is not locked.
    let resp = w
        .get("/travels/status")
        .basic_auth("batch", Some("batch-pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    w.gw.shutdown().await;
}

/// Behind a trusted proxy, failed Basic attempts count against the
/// address the proxy names: twenty wrong passwords from one client lock
/// that client out, not every caller the proxy forwards.
#[tokio::test]
async fn basic_guessing_locks_the_client_behind_a_trusted_proxy_not_the_proxy() {
    let w = world(true).await;
    for n in 0..20 {
        let resp = w
            .get("/travels/status")
            .header("X-Forwarded-For", "10.1.1.1")
            .basic_auth(format!("nobody-{n}"), Some("guess"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    let from = |client: &'static str| {
        w.get("/travels/status")
            .header("X-Forwarded-For", client)
            .basic_auth("batch", Some("batch-pw"))
            .send()
    };
    assert_eq!(from("10.1.1.1").await.unwrap().status(), 429);
    assert_eq!(from("10.2.2.2").await.unwrap().status(), 200);
    assert_eq!(w.upstream.hits(), 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn registered_only_needs_a_subscribed_application() {
    let w = world(false).await;
    let stranger = w
        .idp
        .token_with(serde_json::json!({"client_id": "stranger"}));
    let resp = w
        .get("/registered/status")
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // `any`: the same token is good where registration is not asked.
    let resp = w
        .get("/travels/status")
        .bearer_auth(&stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(w.upstream.last().headers.get("x-app").is_none());
    let resp = w
        .get("/registered/status")
        .bearer_auth(w.idp.token(&[]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn an_application_key_opens_only_its_subscriptions_from_its_ip_ranges() {
    let w = world(true).await;
    let key = |key: &'static str, path: &str, client: Option<&str>| {
        let mut request = w.get(path).header("X-API-Key", key);
        if let Some(client) = client {
            request = request.header("X-Forwarded-For", client);
        }
        request.send()
    };
    // Not subscribed to Time travels; Other reads its own header.
    assert_eq!(
        key("elsewhere-key", "/travels/status", None)
            .await
            .unwrap()
            .status(),
        403
    );
    let resp = w
        .get("/other/status")
        .header("X-Partner-Key", "elsewhere-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(w.upstream.hits(), 1);
    // Ranged: only from 10.0.0.0/8.
    assert_eq!(
        key("ranged-key", "/travels/status", None)
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        key("ranged-key", "/travels/status", Some("10.1.2.3"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(w.upstream.hits(), 2);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn ip_filter_refuses_before_any_credential_and_trusts_only_trusted_proxies() {
    let w = world(true).await;
    let from = |client: Option<&str>, key: Option<&str>| {
        let mut request = w.get("/filtered/status");
        if let Some(client) = client {
            request = request.header("X-Forwarded-For", client);
        }
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        request.send()
    };
    // 127.0.0.1 is not allowed: 403 even without a credential.
    assert_eq!(from(None, None).await.unwrap().status(), 403);
    assert_eq!(from(None, Some("ranged-key")).await.unwrap().status(), 403);
    // Denied wins over allowed.
    assert_eq!(
        from(Some("10.9.1.1"), Some("ranged-key"))
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(from(Some("10.9.1.1"), None).await.unwrap().status(), 403);
    assert_eq!(w.upstream.hits(), 0);
    // Allowed: then the credential is asked for.
    assert_eq!(from(Some("10.1.1.1"), None).await.unwrap().status(), 401);
    assert_eq!(
        from(Some("10.1.1.1"), Some("ranged-key"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(w.upstream.hits(), 1);
    w.gw.shutdown().await;

    // Without trusted proxies, a client's X-Forwarded-For is not believed.
    let w = world(false).await;
    let resp = w
        .get("/filtered/status")
        .header("X-Forwarded-For", "10.1.1.1")
        .header("X-API-Key", "ranged-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(w.upstream.hits(), 0);
    w.gw.shutdown().await;
}

/// An open API behind `ports.bind: bind`, with the loopback peer a
/// trusted proxy when `trusted`, and `ip_filter: filter`.
fn filtered(upstream: &Upstream, bind: &str, trusted: bool, filter: &str) -> String {
    let trusted = if trusted { r#"["127.0.0.1/32"]"# } else { "[]" };
    format!(
        r#"
ports: {{ http: 0, bind: "{bind}" }}
admin: {{ port: 0, bind: 127.0.0.1 }}
trusted_proxies: {trusted}
apis:
- name: Filtered
  base_path: /filtered
  upstream: {{ url: "{up}" }}
  authentication: {{ type: none }}
  ip_filter: {filter}
  resources: ["GET /status"]
"#,
        up = upstream.url("/api"),
    )
}

/// A proxy appends the client's address to the `X-Forwarded-For` the
/// client sent: a byte outside ASCII in what the client wrote does not
/// make the proxy the client.
#[tokio::test]
async fn ip_filter_reads_the_client_whatever_it_wrote_before_the_proxys_entry() {
    let upstream = Upstream::start().await;
    let yaml = filtered(
        &upstream,
        "127.0.0.1",
        true,
        r#"{ deny: ["203.0.113.0/24"] }"#,
    );
    let gw = Gateway::start(&yaml).await;
    let from = |client: &'static [u8]| {
        gw.request(Method::GET, "/filtered/status")
            .header(
                "X-Forwarded-For",
                reqwest::header::HeaderValue::from_bytes(client).unwrap(),
            )
            .send()
    };
    assert_eq!(from(b"\xff, 203.0.113.5").await.unwrap().status(), 403);
    assert_eq!(
        from(b"caf\xc3\xa9, 203.0.113.5").await.unwrap().status(),
        403
    );
    assert_eq!(upstream.hits(), 0);
    // A trusted proxy that names no address: unknown, refused, never
    // judged as the proxy's own address.
    assert_eq!(from(b"203.0.113.5, unknown").await.unwrap().status(), 400);
    assert_eq!(upstream.hits(), 0);
    assert_eq!(from(b"\xff, 198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

/// On a dual-stack listener an IPv4 client is judged by its IPv4 address,
/// not as `::ffff:127.0.0.1`.
#[tokio::test]
async fn ip_filter_judges_an_ipv4_client_of_a_dual_stack_port_by_its_ipv4_address() {
    if !common::dual_stack() {
        eprintln!("skipped: no dual-stack socket on this machine");
        return;
    }
    let upstream = Upstream::start().await;
    let yaml = filtered(&upstream, "::", false, r#"{ deny: ["127.0.0.0/8"] }"#);
    let gw = Gateway::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/filtered/status", gw.http.port());
    assert_eq!(gw.client.get(&url).send().await.unwrap().status(), 403);
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

/// A range written IPv4-mapped (`::ffff:127.0.0.0/104`) is the IPv4 range
/// it stands for: it judges IPv4 clients, which are never seen mapped.
#[tokio::test]
async fn an_ipv4_mapped_range_judges_ipv4_clients() {
    let upstream = Upstream::start().await;
    let yaml = filtered(
        &upstream,
        "127.0.0.1",
        false,
        r#"{ deny: ["::ffff:127.0.0.0/104"] }"#,
    );
    let gw = Gateway::start(&yaml).await;
    let url = format!("http://127.0.0.1:{}/filtered/status", gw.http.port());
    assert_eq!(gw.client.get(&url).send().await.unwrap().status(), 403);
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn explain_decides_like_the_data_path() {
    use microgateway::auth::identity::{self, Identity};
    use microgateway::config::snapshot::CredentialType;
    let w = world(false).await;
    let snapshot = w.gw.state().live.snapshot();
    let apps = &snapshot.applications;
    let by_key = |key: &str| match apps.by_api_key_digest(&identity::digest(key.as_bytes())) {
        Some(app) => Caller::Identified(Identity::of_application(
            CredentialType::ApiKey,
            app.clone(),
        )),
        None => Caller::Refused(CredentialType::ApiKey),
    };
    let by_basic = |user: &str, pw: &str| match identity::verify_basic(apps, user, pw) {
        Some(app) => Caller::Identified(Identity::of_application(CredentialType::Basic, app)),
        None => Caller::Refused(CredentialType::Basic),
    };
    let localhost = "127.0.0.1".parse().unwrap();
    type Case<'a> = (Method, &'a str, Option<&'a str>, Option<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (Method::GET, "/travels/status", Some(PARTNER_KEY), None),
        (Method::GET, "/travels/bookings", Some(PARTNER_KEY), None),
        (Method::POST, "/travels/bookings", Some(PARTNER_KEY), None),
        (Method::GET, "/travels/status", Some("wrong"), None),
        (Method::GET, "/travels/status", Some("elsewhere-key"), None),
        (Method::GET, "/travels/status", Some("ranged-key"), None),
        (Method::GET, "/travels/status", None, None),
        (Method::GET, "/filtered/status", Some("ranged-key"), None),
        (
            Method::GET,
            "/travels/status",
            None,
            Some(("batch", "batch-pw")),
        ),
        (
            Method::GET,
            "/travels/bookings",
            None,
            Some(("batch", "batch-pw")),
        ),
        (
            Method::GET,
            "/travels/status",
            None,
            Some(("batch", "wrong")),
        ),
        (
            Method::GET,
            "/travels/nothing",
            None,
            Some(("batch", "batch-pw")),
        ),
    ];
    for (method, path, key, basic) in cases {
        let caller = match (key, basic) {
            (Some(key), _) => by_key(key),
            (None, Some((user, pw))) => by_basic(user, pw),
            (None, None) => Caller::Nobody,
        };
        let verdict = decide_for(&snapshot, &method, path, &caller, localhost);
        let mut request = w.gw.request(method.clone(), path);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        if let Some((user, pw)) = basic {
            request = request.basic_auth(user, Some(pw));
        }
        let resp = request.send().await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            verdict.outcome.status(),
            "{method} {path} {key:?} {basic:?}\n{verdict}"
        );
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn reload_adds_and_removes_an_application() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start_with_env(
        &yaml(&idp, &upstream, false, ""),
        env(&[("PARTNER_KEY", PARTNER_KEY)]),
    )
    .await;
    let call = || {
        gw.request(Method::GET, "/travels/status")
            .header("X-API-Key", "late-key")
            .send()
    };
    assert_eq!(call().await.unwrap().status(), 401);
    let late = "- name: Late\n  api_keys: [late-key]\n  apis: [\"Time travels\"]";
    gw.write_config(&yaml(&idp, &upstream, false, late));
    gw.wait_generation(2).await;
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(upstream.last().headers.get("x-app").unwrap(), "Late");
    gw.write_config(&yaml(&idp, &upstream, false, ""));
    gw.wait_generation(3).await;
    assert_eq!(call().await.unwrap().status(), 401);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn application_config_errors_are_reported_with_their_place() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let bad = r#"- name: Broken
  api_keys: [elsewhere-key]
  basic_users: [{ username: batch, password_hash: "plain" }]
  certificates: ["sha256:12:34"]
  ip_ranges: ["10.0.0.0/33"]
  apis: ["No such API"]
  api_scopes: ["Time travels:NoSuchScope"]"#;
    let error = Gateway::try_start(
        &yaml(&idp, &upstream, false, bad),
        env(&[("PARTNER_KEY", "k")]),
    )
    .await
    .err()
    .expect("refused");
    for expected in [
        "this API key is given to two applications",
        "password_hash is not an argon2 PHC string",
        "is not a certificate fingerprint",
        "is not a CIDR",
        "application subscribes to `No such API`",
        "api scope `Time travels:NoSuchScope`",
    ] {
        assert!(error.contains(expected), "{expected} in\n{error}");
    }
    assert!(error.contains("microgateway.yaml:"), "{error}");
}

/// The binary, with only the environment the test gives it.
fn binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command
        .env_clear()
        .env("NO_COLOR", "1")
        .env("PARTNER_KEY", PARTNER_KEY);
    command
}

/// The status `explain` predicts: 200 for ALLOW, else the one after DENY.
fn explained(config: &std::path::Path, args: &[&str]) -> u16 {
    let out = binary()
        .args(["explain", "-c", config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let verdict = text
        .lines()
        .find_map(|l| l.strip_prefix("verdict:"))
        .unwrap_or_else(|| {
            panic!(
                "no verdict in {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .trim();
    match verdict.strip_prefix("DENY ") {
        Some(rest) => rest[..3].parse().unwrap(),
        None => {
            assert!(verdict.starts_with("ALLOW"), "{verdict}");
            assert!(out.status.success());
            200
        }
    }
}

#[tokio::test]
async fn explain_command_takes_each_credential_and_agrees_with_the_data_path() {
    let w = world(true).await;
    /// explain's arguments; the path, header and client address of the same request.
    type Case<'a> = (
        &'a [&'a str],
        &'a str,
        Option<(&'a str, &'a str)>,
        Option<&'a str>,
    );
    let cases: &[Case] = &[
        (
            &["GET", "/travels/bookings", "--api-key", PARTNER_KEY],
            "/travels/bookings",
            Some(("X-API-Key", PARTNER_KEY)),
            None,
        ),
        (
            &["POST", "/travels/bookings", "--api-key", PARTNER_KEY],
            "/travels/bookings",
            Some(("X-API-Key", PARTNER_KEY)),
            None,
        ),
        (
            &["GET", "/travels/status", "--api-key", "elsewhere-key"],
            "/travels/status",
            Some(("X-API-Key", "elsewhere-key")),
            None,
        ),
        (
            &["GET", "/travels/status", "--api-key", "nope"],
            "/travels/status",
            Some(("X-API-Key", "nope")),
            None,
        ),
        (
            &["GET", "/travels/status", "--api-key", "ranged-key"],
            "/travels/status",
            Some(("X-API-Key", "ranged-key")),
            None,
        ),
        (
            &[
                "GET",
                "/travels/status",
                "--api-key",
                "ranged-key",
                "--client-ip",
                "10.1.2.3",
            ],
            "/travels/status",
            Some(("X-API-Key", "ranged-key")),
            Some("10.1.2.3"),
        ),
        (
            &["GET", "/filtered/status", "--client-ip", "10.9.0.1"],
            "/filtered/status",
            None,
            Some("10.9.0.1"),
        ),
        (
            &["GET", "/filtered/status", "--client-ip", "10.8.0.1"],
            "/filtered/status",
            None,
            Some("10.8.0.1"),
        ),
        (
            &["GET", "/travels/status", "--basic", "batch:batch-pw"],
            "/travels/status",
            Some(("Authorization", "Basic YmF0Y2g6YmF0Y2gtcHc=")),
            None,
        ),
        (
            &["GET", "/travels/status", "--basic", "batch:wrong"],
            "/travels/status",
            Some(("Authorization", "Basic YmF0Y2g6d3Jvbmc=")),
            None,
        ),
        (&["GET", "/travels/status"], "/travels/status", None, None),
    ];
    for (args, path, header, client) in cases {
        let predicted = explained(&w.gw.config, args);
        let method = Method::from_bytes(args[0].as_bytes()).unwrap();
        let mut request = w.gw.request(method, path);
        if let Some((name, value)) = header {
            request = request.header(*name, *value);
        }
        if let Some(client) = client {
            request = request.header("X-Forwarded-For", *client);
        }
        let status = request.send().await.unwrap().status().as_u16();
        assert_eq!(status, predicted, "{args:?}");
    }
    w.gw.shutdown().await;
}

/// `explain` with a token: the client it was issued to decides
/// `applications: registered`, and a token of another auth server than
/// the API's is not valid there — as the data path answers.
#[tokio::test]
async fn explain_takes_the_tokens_client_and_auth_server_as_the_data_path_does() {
    let w = world(true).await;
    let registered = w
        .idp
        .token_with(serde_json::json!({ "client_id": "app", "scope": "" }));
    let stranger = w
        .idp
        .token_with(serde_json::json!({ "client_id": "stranger", "scope": "" }));
    for (args, token) in [
        (
            &[
                "GET",
                "/registered/status",
                "--scopes",
                "",
                "--client-id",
                "app",
            ][..],
            &registered,
        ),
        (
            &[
                "GET",
                "/registered/status",
                "--scopes",
                "",
                "--client-id",
                "stranger",
            ][..],
            &stranger,
        ),
    ] {
        let predicted = explained(&w.gw.config, args);
        let status =
            w.gw.request(Method::GET, args[1])
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
        assert_eq!(status, predicted, "{args:?}");
    }
    assert_eq!(
        explained(
            &w.gw.config,
            &[
                "GET",
                "/registered/status",
                "--scopes",
                "",
                "--client-id",
                "app"
            ]
        ),
        200
    );
    let other = binary()
        .args(["explain", "-c", w.gw.config.to_str().unwrap()])
        .args([
            "GET",
            "/travels/bookings",
            "--scopes",
            "ViewTickets",
            "--auth-server",
            "nobody",
        ])
        .output()
        .unwrap();
    assert_eq!(other.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&other.stderr)
            .contains("--auth-server nobody: no such auth server"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    w.gw.shutdown().await;
}

/// Sixteen requests at once with one Basic credential not yet verified
/// (an Argon2 hash of the default cost, tens of milliseconds): the first
/// to get a worker hashes it, the others find it verified when their turn
/// comes (`coalesced`) instead of hashing it again each. A process of its
/// own, so that the counts are this test's alone (its start is awaited on
/// a blocking call: the identity provider answers on another thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_one_basic_credential_costs_one_password_check() {
    let (statuses, hashed, others, upstream) = basic_burst("herd-pw").await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        (1..=password_workers()).contains(&hashed),
        "{hashed} hashes"
    );
    assert_eq!(hashed + others, 16);
    assert_eq!(upstream.hits(), 16);
}

/// A wrong password, sent many times at once, is hashed once too (by each
/// worker at most): its failure is remembered until the snapshot changes.
/// Every request still counts as a failure, so the user name locks.
#[tokio::test]
async fn a_burst_with_one_wrong_basic_password_costs_one_password_check() {
    let (statuses, hashed, others, upstream) = basic_burst("not-herd-pw").await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        (1..=password_workers()).contains(&hashed),
        "{hashed} hashes"
    );
    assert_eq!(hashed + others, 16);
    assert_eq!(upstream.hits(), 0);
}

/// The blocking workers that check passwords: half the cores, at least
/// one (one each may hash a credential before the first has stored it).
fn password_workers() -> u64 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .max(1) as u64
}

/// 16 requests at once as Basic user `herd` with `password` to a gateway
/// process of their own: their statuses, how many passwords were hashed,
/// how many were answered from the cache, and the upstream.
async fn basic_burst(password: &str) -> (Vec<u16>, u64, u64, Upstream) {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let hash = Argon2::default()
        .hash_password(b"herd-pw")
        .expect("hash")
        .to_string();
    let herd = format!(
        "- name: Herd\n  basic_users: [{{ username: herd, password_hash: \"{hash}\" }}]\n  apis: [\"Time travels\"]"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("microgateway.yaml");
    std::fs::write(&config, yaml(&idp, &upstream, false, &herd)).unwrap();
    let started = common::process::start(binary().env("MCGW_LOG", "info").args([
        "start",
        "-c",
        config.to_str().unwrap(),
    ]));
    let client = common::client();
    let url = format!("http://{}/travels/status", started.http);
    let burst = (0..16).map(|_| client.get(&url).basic_auth("herd", Some(password)).send());
    let statuses = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|resp| resp.expect("answer").status().as_u16())
        .collect();
    let admin = started.admin.expect("admin port");
    let metrics = common::text_of(&client, format!("http://{admin}/metrics")).await;
    let count = |result: &str| {
        common::metric(
            &metrics,
            &format!(r#"microgateway_basic_auth_cache_total{{result="{result}"}}"#),
        )
    };
    let answered = count("coalesced") + count("hit");
    (statuses, count("miss"), answered, upstream)
}

#[tokio::test]
async fn api_keys_and_passwords_are_never_logged_nor_shown() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("microgateway.yaml");
    std::fs::write(&config, yaml(&idp, &upstream, false, "")).unwrap();
    let mut started =
        common::process::start(binary().env("MCGW_LOG", "microgateway=trace").args([
            "start",
            "-c",
            config.to_str().unwrap(),
        ]));
    let client = common::client();
    let url = |path: &str| format!("http://{}{path}", started.http);
    for key in [PARTNER_KEY, "wrong-key-never-logged"] {
        client
            .get(url("/travels/status"))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
    }
    client
        .get(url("/travels/status"))
        .basic_auth("batch", Some("basic-password-never-logged"))
        .send()
        .await
        .unwrap();
    let admin = started.admin.expect("admin port");
    let admin_text = |path: &str| common::text_of(&client, format!("http://{admin}{path}"));
    let assets = admin_text("/rest/microgateway/assets").await;
    let settings = admin_text("/rest/microgateway/settings").await;
    let metrics = admin_text("/metrics").await;
    assert!(assets.contains(r#""name":"Partner""#), "{assets}");
    assert!(assets.contains(r#""api_keys":["****"]"#), "{assets}");
    assert!(assets.contains(r#""password_hash":"****""#), "{assets}");
    assert!(settings.contains(r#""applications""#));
    assert!(
        common::metric(
            &metrics,
            r#"microgateway_application_requests_total{application="Partner"}"#
        ) >= 1,
        "{metrics}"
    );
    assert!(
        common::metric(
            &metrics,
            r#"microgateway_auth_decisions_total{api="Time travels",result="invalid_credentials",type="api_key"}"#
        ) >= 1,
        "{metrics}"
    );
    // The log is written off the request path: the refusals' lines are
    // waited for (10 s at most) before the process is killed, which would
    // drop what its writer has not written yet.
    let mut logs = std::mem::take(&mut started.before);
    let waited = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !logs.iter().any(|l| l.contains("request refused")) {
        let left = waited.saturating_duration_since(std::time::Instant::now());
        match started.lines.recv_timeout(left) {
            Ok(line) => logs.push(line),
            Err(_) => break,
        }
    }
    started.child.kill().unwrap();
    // Every line up to the end of its output (the reader stops there).
    while let Ok(line) = started
        .lines
        .recv_timeout(std::time::Duration::from_secs(10))
    {
        logs.push(line);
    }
    assert!(
        logs.iter().any(|l| l.contains("request refused")),
        "the refusals are logged: {logs:?}"
    );
    for secret in [
        PARTNER_KEY,
        "wrong-key-never-logged",
        "basic-password-never-logged",
        "$argon2",
    ] {
        for text in logs.iter().chain([&assets, &settings, &metrics]) {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}

mod certificates {
    //! `type: certificate` over mTLS: certificates made here with rcgen,
    //! a CA the gateway trusts, fingerprints in `applications`.

    use super::*;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper_util::rt::TokioIo;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    struct Client {
        der: CertificateDer<'static>,
        pem: String,
        key: String,
    }

    impl Client {
        /// `sha256:AB:CD:…`
        fn fingerprint(&self) -> String {
            let digest = microgateway::server::client_cert::fingerprint(&self.der);
            let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
            format!("sha256:{}", hex.join(":"))
        }
    }

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Test client CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    fn client(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> Client {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("{name}.example")]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, ca).unwrap();
        Client {
            der: cert.der().clone(),
            pem: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A directory holding the gateway's certificate for `localhost`
    /// (`server.crt`, `server.key`), and that certificate.
    fn served_as_localhost() -> (tempfile::TempDir, rcgen::CertifiedKey<KeyPair>) {
        common::crypto();
        let dir = tempfile::tempdir().unwrap();
        let server = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(dir.path().join("server.crt"), server.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("server.key"),
            server.signing_key.serialize_pem(),
        )
        .unwrap();
        (dir, server)
    }

    fn yaml(dir: &Path, upstream: &Upstream, mode: &str, partner: &str, other: &str) -> String {
        format!(
            r#"
ports: {{ http: 0, https: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
tls:
  certificate: {dir}/server.crt
  key: {dir}/server.key
  client_ca: {dir}/ca.pem
  client_auth: {mode}
applications:
- name: Partner
  certificates: ["{partner}"]
  apis: ["Certified"]
- name: Unsubscribed
  certificates: ["{other}"]
apis:
- name: Certified
  base_path: /certified
  upstream: {{ url: "{up}" }}
  authentication: {{ type: certificate }}
  resources: ["GET /items"]
  policies:
    request_transformation:
      set_headers:
        X-App: "${{request.application.name}}"
        X-Auth-Type: "${{request.authorization.type}}"
"#,
            dir = dir.display(),
            up = upstream.url("/api"),
        )
    }

    /// GET `path` over TLS, presenting `client` when given; the status, or
    /// why the exchange failed.
    async fn get(
        addr: SocketAddr,
        server: &CertificateDer<'static>,
        client: Option<&Client>,
        path: &str,
    ) -> Result<u16, String> {
        let config = returning_client(server, client);
        get_with(addr, &config, path)
            .await
            .map(|(status, _)| status)
    }

    use rustls::pki_types::pem::PemObject;

    mod replaced;

    #[tokio::test]
    async fn a_client_certificate_identifies_its_application() {
        let (dir, server) = served_as_localhost();
        let authority = ca();
        std::fs::write(dir.path().join("ca.pem"), authority.pem()).unwrap();
        let partner = client(&authority, "partner");
        let unsubscribed = client(&authority, "unsubscribed");
        let unknown = client(&authority, "unknown");
        let foreign = client(&ca(), "foreign");
        // Lower case and without colons is the same fingerprint.
        let other = unsubscribed.fingerprint()[7..]
            .replace(':', "")
            .to_lowercase();
        let upstream = Upstream::start().await;
        let config = yaml(
            dir.path(),
            &upstream,
            "optional",
            &partner.fingerprint(),
            &other,
        );
        let gw = Gateway::start(&config).await;
        let addr = gw.inner.as_ref().unwrap().https.expect("https");
        let server_der = server.cert.der().clone();

        assert_eq!(
            get(addr, &server_der, Some(&partner), "/certified/items").await,
            Ok(200)
        );
        let got = upstream.last();
        assert_eq!(got.headers.get("x-app").unwrap(), "Partner");
        assert_eq!(got.headers.get("x-auth-type").unwrap(), "certificate");
        assert_eq!(
            get(addr, &server_der, Some(&unsubscribed), "/certified/items").await,
            Ok(403)
        );
        assert_eq!(
            get(addr, &server_der, Some(&unknown), "/certified/items").await,
            Ok(401)
        );
        // `optional`: no certificate is a request without a credential.
        assert_eq!(
            get(addr, &server_der, None, "/certified/items").await,
            Ok(401)
        );
        // A certificate of another CA does not get through the handshake.
        assert!(get(addr, &server_der, Some(&foreign), "/certified/items")
            .await
            .is_err());
        assert_eq!(upstream.hits(), 1);
        // explain, given the same certificates, agrees (files outside the
        // watched directory: no reload).
        let elsewhere = tempfile::tempdir().unwrap();
        for (client, status) in [(&partner, 200), (&unsubscribed, 403), (&unknown, 401)] {
            let file = elsewhere.path().join("client.pem");
            std::fs::write(&file, &client.pem).unwrap();
            let args = [
                "GET",
                "/certified/items",
                "--client-cert",
                file.to_str().unwrap(),
            ];
            assert_eq!(super::explained(&gw.config, &args), status);
        }

        // `required`, after a reload: no certificate, no exchange.
        gw.write_config(&yaml(
            dir.path(),
            &upstream,
            "required",
            &partner.fingerprint(),
            &other,
        ));
        gw.wait_generation(2).await;
        assert!(get(addr, &server_der, None, "/certified/items")
            .await
            .is_err());
        assert_eq!(
            get(addr, &server_der, Some(&partner), "/certified/items").await,
            Ok(200)
        );
        gw.shutdown().await;
    }

    /// A client that keeps its TLS sessions (one `ClientConfig` for all its
    /// connections, as every TLS client library does), presenting `client`
    /// when given.
    fn returning_client(
        server: &CertificateDer<'static>,
        client: Option<&Client>,
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.clone()).unwrap();
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match client {
            Some(c) => builder
                .with_client_auth_cert(
                    vec![c.der.clone()],
                    PrivateKeyDer::from_pem_slice(c.key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }

    /// GET `path` on a new connection of `config`: the status and how the
    /// handshake went, or why the exchange failed.
    async fn get_with(
        addr: SocketAddr,
        config: &Arc<rustls::ClientConfig>,
        path: &str,
    ) -> Result<(u16, Option<rustls::HandshakeKind>), String> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(config.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let kind = tls.get_ref().1.handshake_kind();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(
                http::Request::get(path)
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok((resp.status().as_u16(), kind))
    }

    /// A reloaded `client_ca` applies to the next handshake (the module's
    /// contract), resumed ones included: a client whose certificate the
    /// new CA does not sign is refused, whether it starts a new session or
    /// resumes one its certificate opened before the reload.
    #[tokio::test]
    async fn a_client_ca_no_longer_trusted_after_a_reload_is_not_resumed() {
        let (dir, server) = served_as_localhost();
        let old_ca = ca();
        std::fs::write(dir.path().join("ca.pem"), old_ca.pem()).unwrap();
        let partner = client(&old_ca, "partner");
        let unrelated = client(&old_ca, "unrelated");
        let upstream = Upstream::start().await;
        let config = yaml(
            dir.path(),
            &upstream,
            "required",
            &partner.fingerprint(),
            &unrelated.fingerprint(),
        );
        let gw = Gateway::start(&config).await;
        let addr = gw.inner.as_ref().unwrap().https.expect("https");
        let server_der = server.cert.der().clone();
        let returning = returning_client(&server_der, Some(&partner));
        assert_eq!(
            get_with(addr, &returning, "/certified/items").await,
            Ok((200, Some(rustls::HandshakeKind::Full)))
        );

        // The old CA is no longer trusted (its key leaked, say): another
        // CA replaces it.
        std::fs::write(dir.path().join("ca.pem"), ca().pem()).unwrap();
        let generation = gw
            .state()
            .reload(microgateway::reload::Source::Api)
            .expect("the new CA compiles");
        gw.wait_generation(generation).await;

        // A new session with the old CA's certificate: refused.
        assert!(get(addr, &server_der, Some(&partner), "/certified/items")
            .await
            .is_err());
        // The same certificate, resuming the session it opened before.
        let resumed = get_with(addr, &returning, "/certified/items").await;
        assert!(
            resumed.is_err(),
            "a certificate the CA in use does not sign got through: {resumed:?}"
        );
        assert_eq!(upstream.hits(), 1);
        gw.shutdown().await;
    }

    /// A session opened without a certificate (`client_auth: optional`) is
    /// not resumed once a reload makes one required: no certificate, no
    /// exchange, on a new session or an old one.
    #[tokio::test]
    async fn a_session_without_a_certificate_is_not_resumed_once_one_is_required() {
        let (dir, server) = served_as_localhost();
        let authority = ca();
        std::fs::write(dir.path().join("ca.pem"), authority.pem()).unwrap();
        let partner = client(&authority, "partner");
        let unrelated = client(&authority, "unrelated");
        let upstream = Upstream::start().await;
        let config = |mode| {
            yaml(
                dir.path(),
                &upstream,
                mode,
                &partner.fingerprint(),
                &unrelated.fingerprint(),
            )
        };
        let gw = Gateway::start(&config("optional")).await;
        let addr = gw.inner.as_ref().unwrap().https.expect("https");
        let server_der = server.cert.der().clone();
        let returning = returning_client(&server_der, None);
        // `optional`: the handshake goes through, the request has no
        // credential.
        assert_eq!(
            get_with(addr, &returning, "/certified/items").await,
            Ok((401, Some(rustls::HandshakeKind::Full)))
        );
        assert_eq!(
            get_with(addr, &returning, "/certified/items").await,
            Ok((401, Some(rustls::HandshakeKind::Resumed))),
            "the session is resumed while the setting stays"
        );

        gw.write_config(&config("required"));
        gw.wait_generation(2).await;
        assert!(get(addr, &server_der, None, "/certified/items")
            .await
            .is_err());
        let resumed = get_with(addr, &returning, "/certified/items").await;
        assert!(
            resumed.is_err(),
            "a session without a certificate got through: {resumed:?}"
        );
        // A client with its certificate is served.
        assert_eq!(
            get(addr, &server_der, Some(&partner), "/certified/items").await,
            Ok(200)
        );
        gw.shutdown().await;
    }

    /// A reload without `tls:` (and without `ports.https`, a change that
    /// waits for a restart) leaves the running HTTPS listener verifying
    /// clients as before: it does not fall back to taking anyone.
    #[tokio::test]
    async fn a_reload_without_tls_keeps_requiring_client_certificates() {
        let (dir, server) = served_as_localhost();
        let authority = ca();
        std::fs::write(dir.path().join("ca.pem"), authority.pem()).unwrap();
        let partner = client(&authority, "partner");
        let unrelated = client(&authority, "unrelated");
        let upstream = Upstream::start().await;
        let gw = Gateway::start(&yaml(
            dir.path(),
            &upstream,
            "required",
            &partner.fingerprint(),
            &unrelated.fingerprint(),
        ))
        .await;
        let addr = gw.inner.as_ref().unwrap().https.expect("https");
        let server_der = server.cert.der().clone();
        assert!(get(addr, &server_der, None, "/certified/items")
            .await
            .is_err());
        gw.write_config(&format!(
            r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: Certified
  base_path: /certified
  upstream: {{ url: "{}" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
"#,
            upstream.url("/api")
        ));
        gw.wait_generation(2).await;
        let anonymous = get(addr, &server_der, None, "/certified/items").await;
        assert!(
            anonymous.is_err(),
            "a client without a certificate got through: {anonymous:?}"
        );
        assert_eq!(
            get(addr, &server_der, Some(&partner), "/certified/items").await,
            Ok(200)
        );
        gw.shutdown().await;
    }
}

/// A locked user stays locked for a credential the gateway has verified
/// before: a guess equal to the cached password must not get through
/// while failed attempts lock the user (429 "even for the right password").
#[tokio::test]
async fn basic_lock_holds_for_a_credential_verified_before_the_lock() {
    assert!(LONG_USER.len() > microgateway::lockout::USER_NAME_KEPT);
    // A long name is counted by its digest: its lock holds all the same.
    for user in ["guessed", LONG_USER] {
        let w = world(false).await;
        let status = |password: &'static str| {
            let sent = w
                .get("/travels/status")
                .basic_auth(user, Some(password))
                .send();
            async move { sent.await.unwrap().status() }
        };
        // The owner signs in once: the credential is now cached.
        assert_eq!(status("right-pw").await, 200);
        // A guesser then locks the user out.
        for _ in 0..5 {
            assert_eq!(status("guess").await, 401);
        }
        assert_eq!(status("wrong-again").await, 429, "the user is locked");
        // While locked, the right password (a guess that hits) is refused too.
        assert_eq!(
            status("right-pw").await,
            429,
            "a cached credential skips the lock"
        );
        assert_eq!(w.upstream.hits(), 1);
        w.gw.shutdown().await;
    }
}

/// Five failed attempts lock a user: guesses sent at once must not all be
/// checked before the first failure is counted (each 401 is one password
/// actually tried).
#[tokio::test]
async fn concurrent_basic_guesses_are_not_checked_past_the_lock() {
    let idp = Idp::start().await;
    let upstream = Upstream::start().await;
    // A hash of the default cost: a check takes some milliseconds, as in
    // production, so concurrent guesses meet while the first is checked.
    let expensive = Argon2::default()
        .hash_password(b"target-right-pw")
        .expect("hash")
        .to_string();
    let extra = format!(
        r#"- name: Target
  basic_users:
  - {{ username: target, password_hash: "{expensive}" }}
  apis: ["Time travels"]"#
    );
    let gw = Gateway::start_with_env(
        &yaml(&idp, &upstream, false, &extra),
        env(&[("PARTNER_KEY", PARTNER_KEY)]),
    )
    .await;
    gw.wait_ready().await;
    let guesses = (0..16).map(|n| {
        gw.request(Method::GET, "/travels/status")
            .basic_auth("target", Some(format!("guess-{n}")))
            .send()
    });
    let statuses: Vec<u16> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(|resp| resp.unwrap().status().as_u16())
        .collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 5,
        "{checked} passwords of one user were tried within the window: {statuses:?}"
    );
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

/// Two identity providers, and an API under each that only registered
/// applications may call; `apps` are the applications.
fn two_idps_yaml(first: &Idp, second: &Idp, upstream: &Upstream, apps: &str) -> String {
    let server = |id: &str, idp: &Idp| {
        format!(
            r#"  - id: {id}
    name: {id}
    localIntrospectionConfig: {{ issuer: "{}", jwksuri: "{}", audience: travels }}
"#,
            idp.issuer(),
            idp.jwks_uri()
        )
    };
    let api = |name: &str, server: &str| {
        format!(
            r#"- name: {name}
  base_path: /{name}
  upstream: {{ url: "{}" }}
  authentication: {{ type: oauth2, auth_server: {server}, applications: registered }}
  resources: ["GET /status"]
  policies:
    request_transformation:
      set_headers: {{ X-App: "${{request.application.name}}" }}
"#,
            upstream.url("/api")
        )
    };
    format!(
        "ports: {{ http: 0, bind: 127.0.0.1 }}\nsecurity_settings:\n  auth_servers:\n{}{}applications:\n{apps}\napis:\n{}{}",
        server("first", first),
        server("second", second),
        api("one", "first"),
        api("two", "second"),
    )
}

/// `GET path` with `token`.
async fn call(gw: &Gateway, path: &str, token: String) -> reqwest::Response {
    let resp = gw.request(Method::GET, path).bearer_auth(token).send();
    resp.await.expect("response")
}

/// A client id names an application only on tokens of the auth servers
/// it is given at: the same id at another identity provider (where anyone
/// may have registered it) is somebody else.
#[tokio::test]
async fn a_client_id_stands_for_its_application_only_at_its_auth_servers() {
    let (first, second) = (Idp::start().await, Idp::start().await);
    let upstream = Upstream::start().await;
    let apps = r#"- name: Partner
  client_ids: [app]
  auth_servers: [first]
  apis: [one, two]"#;
    let gw = Gateway::start(&two_idps_yaml(&first, &second, &upstream, apps)).await;
    gw.wait_ready().await;
    assert_eq!(
        call(&gw, "/one/status", first.token(&[])).await.status(),
        200
    );
    assert_eq!(upstream.last().headers["x-app"], "Partner");
    // The same client id from the second provider is no application:
    // refused where registration is asked, even where Partner subscribed.
    let resp = call(&gw, "/two/status", second.token(&[])).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(upstream.hits(), 1);
    gw.shutdown().await;

    // The same id given at each provider to an application of its own.
    let apps = r#"- name: Partner
  client_ids: [app]
  auth_servers: [first]
  apis: [one, two]
- name: Stranger
  client_ids: [app]
  auth_servers: [second]
  apis: [two]"#;
    let gw = Gateway::start(&two_idps_yaml(&first, &second, &upstream, apps)).await;
    gw.wait_ready().await;
    assert_eq!(
        call(&gw, "/two/status", second.token(&[])).await.status(),
        200
    );
    assert_eq!(upstream.last().headers["x-app"], "Stranger");
    assert_eq!(
        call(&gw, "/two/status", first.token(&[])).await.status(),
        401
    );
    assert_eq!(
        call(&gw, "/one/status", first.token(&[])).await.status(),
        200
    );
    assert_eq!(upstream.last().headers["x-app"], "Partner");
    gw.shutdown().await;

    // Without `auth_servers` an id is given at every auth server: given
    // twice there, or at an auth server nobody defined, it is refused.
    for (apps, expected) in [
        (
            "- name: A\n  client_ids: [app]\n- name: B\n  client_ids: [app]\n  auth_servers: [second]",
            "client id `app` is given to two applications (or twice) at the same auth server",
        ),
        (
            "- name: A\n  client_ids: [app]\n  auth_servers: [third]",
            "auth server `third` is not defined",
        ),
    ] {
        let error = Gateway::try_start(&two_idps_yaml(&first, &second, &upstream, apps), env(&[]))
            .await
            .err()
            .expect("refused");
        assert!(error.contains(expected), "{expected} in\n{error}");
    }
}
