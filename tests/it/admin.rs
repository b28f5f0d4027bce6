//! The admin listener over loopback HTTP: health, metrics, and the REST
//! endpoints with and without admin credentials.

use crate::common;

use common::{Gateway, Upstream};

fn yaml(upstream: &Upstream, admin: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0{admin} }}
security_settings:
  auth_servers:
  - id: remote
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:9/introspect"
      clientId: introspection-client
      clientSecret: "{{encoded}}aW50cm8tc2VjcmV0LWNsZWFy"
  aliases:
  - name: backend
    type: basic
    username: svc
    password: alias-secret-clear
apis:
- name: "Time travels"
  base_path: /travels
  upstream: {{ url: "{}" }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings"]
  resources: ["GET /status"]
  policies:
    outbound_auth: {{ alias: backend }}
  authentication: {{ type: oauth2, auth_server: remote }}
"#,
        upstream.url("/api")
    )
}

const WITH_CREDENTIALS: &str = ", user: Administrator, password: \"{encoded}bWFuYWdlLWNsZWFy\"";
const ADMIN_PASSWORD: &str = "manage-clear";

const REST: [&str; 3] = [
    "/rest/microgateway/status",
    "/rest/microgateway/settings",
    "/rest/microgateway/assets",
];

#[tokio::test]
async fn health_endpoints_answer_without_credentials() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, WITH_CREDENTIALS)).await;
    let live = gw
        .client
        .get(gw.admin_url("/health/live"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
    let body: serde_json::Value = live.json().await.expect("json");
    assert_eq!(body["status"], "up");
    let ready = gw
        .client
        .get(gw.admin_url("/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "ready");
    assert_eq!(body["generation"], 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, "")).await;
    assert_eq!(gw.get("/travels/status").await.status(), 401);
    let resp = gw
        .client
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    let text = resp.text().await.expect("text");
    assert!(
        text.contains(
            r#"microgateway_requests_total{api="Time travels",method="GET",status="401"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("microgateway_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("\nmicrogateway_config_generation "), "{text}");
    gw.shutdown().await;
}

#[tokio::test]
async fn rest_reads_are_open_without_admin_credentials() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, "")).await;
    for path in REST {
        let resp = gw
            .client
            .get(gw.admin_url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path}");
    }
    let status = gw.admin_json("/rest/microgateway/status").await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["generation"], 1);
    assert!(status["uptime_s"].is_u64());
    assert!(status.get("last_reload_at").is_some());
    assert!(status["last_reload_error"].is_null());
    let assets: serde_json::Value = gw
        .client
        .get(gw.admin_url("/rest/microgateway/assets"))
        .send()
        .await
        .expect("assets")
        .json()
        .await
        .expect("json");
    assert_eq!(assets["apis"][0]["name"], "Time travels");
    assert_eq!(assets["apis"][0]["base_path"], "/travels");
    assert_eq!(
        assets["apis"][0]["scopes"],
        serde_json::json!(["ViewTickets"])
    );
    assert_eq!(
        assets["apis"][0]["resources"],
        serde_json::json!([
            {"method": "GET", "path": "/bookings", "scopes": ["ViewTickets"]},
            {"method": "GET", "path": "/status", "scopes": []},
        ])
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn rest_needs_the_right_credentials_when_configured() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, WITH_CREDENTIALS)).await;
    for path in REST {
        let none = gw
            .client
            .get(gw.admin_url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(none.status(), 401, "{path}");
        assert_eq!(
            none.headers()["www-authenticate"],
            "Basic realm=\"microgateway\""
        );
        let wrong = gw
            .client
            .get(gw.admin_url(path))
            .basic_auth("Administrator", Some("wrong"))
            .send()
            .await
            .expect("request");
        assert_eq!(wrong.status(), 401, "{path}");
        assert_eq!(
            wrong.headers()["www-authenticate"],
            "Basic realm=\"microgateway\""
        );
        let wrong_user = gw
            .client
            .get(gw.admin_url(path))
            .basic_auth("administrator", Some(ADMIN_PASSWORD))
            .send()
            .await
            .expect("request");
        assert_eq!(wrong_user.status(), 401, "{path}");
        let right = gw
            .client
            .get(gw.admin_url(path))
            .basic_auth("Administrator", Some(ADMIN_PASSWORD))
            .send()
            .await
            .expect("request");
        assert_eq!(right.status(), 200, "{path}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_is_refused_without_admin_credentials() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, "")).await;
    let resp = gw
        .client
        .post(gw.admin_url("/rest/microgateway/reload"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);
    assert_eq!(gw.state().live.generation(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn reload_with_credentials_applies_a_new_generation() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, WITH_CREDENTIALS)).await;
    let denied = gw
        .client
        .post(gw.admin_url("/rest/microgateway/reload"))
        .basic_auth("Administrator", Some("wrong"))
        .send()
        .await
        .expect("request");
    assert_eq!(denied.status(), 401);
    let resp = gw
        .client
        .post(gw.admin_url("/rest/microgateway/reload"))
        .basic_auth("Administrator", Some(ADMIN_PASSWORD))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["generation"], 2);
    gw.wait_generation(2).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn settings_never_show_a_secret() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, WITH_CREDENTIALS)).await;
    let resp = gw
        .client
        .get(gw.admin_url("/rest/microgateway/settings"))
        .basic_auth("Administrator", Some(ADMIN_PASSWORD))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    for secret in [
        ADMIN_PASSWORD,
        "intro-secret-clear",
        "alias-secret-clear",
        "bWFuYWdl",
    ] {
        assert!(!text.contains(secret), "settings show `{secret}`: {text}");
    }
    let settings: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(settings["admin"]["user"], "Administrator");
    assert_eq!(settings["admin"]["password"], "****");
    let servers = &settings["security_settings"]["auth_servers"];
    assert_eq!(
        servers[0]["remoteIntrospectionConfig"]["clientSecret"],
        "****"
    );
    let aliases = &settings["security_settings"]["aliases"];
    assert_eq!(aliases[0]["password"], "****");
    gw.shutdown().await;
}

#[tokio::test]
async fn unknown_admin_path_is_404() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, "")).await;
    for path in ["/nope", "/rest/microgateway/nope"] {
        let resp = gw
            .client
            .get(gw.admin_url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 404, "{path}");
    }
    gw.shutdown().await;
}

/// A REST resource asked with another method than it serves is 405 with
/// `Allow` (RFC 9110 §15.5.6), as the authorization server's endpoints
/// answer; an unknown one stays 404.
#[tokio::test]
async fn a_rest_resource_asked_with_another_method_is_405() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, WITH_CREDENTIALS)).await;
    for (method, path, allow) in [
        (reqwest::Method::GET, "/rest/microgateway/reload", "POST"),
        (reqwest::Method::DELETE, "/rest/microgateway/status", "GET"),
        (reqwest::Method::POST, "/rest/microgateway/settings", "GET"),
    ] {
        let resp = gw
            .client
            .request(method.clone(), gw.admin_url(path))
            .basic_auth("Administrator", Some(ADMIN_PASSWORD))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
    }
    let resp = gw
        .client
        .delete(gw.admin_url("/rest/microgateway/nope"))
        .basic_auth("Administrator", Some(ADMIN_PASSWORD))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 404);
    gw.shutdown().await;
}

/// A password in the user information of an auth server's URLs is a
/// secret like `api_gateway.url`'s (which the settings show masked).
#[tokio::test]
async fn settings_mask_user_information_of_auth_server_urls() {
    let upstream = Upstream::start().await;
    let yaml = yaml(&upstream, WITH_CREDENTIALS)
        .replace(
            "http://127.0.0.1:9/introspect",
            "http://gw:endpoint-pw-clear@127.0.0.1:9/introspect",
        )
        .replace(
            "    remoteIntrospectionConfig:",
            r#"    localIntrospectionConfig:
      issuer: "http://127.0.0.1:9"
      jwksuri: "http://gw:jwks-pw-clear@127.0.0.1:9/jwks"
    remoteIntrospectionConfig:"#,
        );
    let gw = Gateway::start(&yaml).await;
    let resp = gw
        .client
        .get(gw.admin_url("/rest/microgateway/settings"))
        .basic_auth("Administrator", Some(ADMIN_PASSWORD))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("text");
    for password in ["endpoint-pw-clear", "jwks-pw-clear"] {
        assert!(!text.contains(password), "settings show {password}: {text}");
    }
    assert!(
        text.contains("http://****@127.0.0.1:9/introspect"),
        "{text}"
    );
    assert!(text.contains("http://****@127.0.0.1:9/jwks"), "{text}");
    gw.shutdown().await;
}

/// Five wrong admin passwords for one user lock that user out of the admin
/// endpoints for the window: the right password is then refused unchecked
/// (429, `Retry-After`), on the admin port as for the central export.
#[tokio::test]
async fn guessing_the_admin_password_is_locked_out() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(&upstream, WITH_CREDENTIALS)).await;
    let status = |user: &'static str, password: &'static str| {
        let request = gw
            .client
            .get(gw.admin_url("/rest/microgateway/status"))
            .basic_auth(user, Some(password));
        async move { request.send().await.expect("request") }
    };
    // A right login forgives the user's failures so far.
    for _ in 0..4 {
        assert_eq!(status("Administrator", "wrong").await.status(), 401);
    }
    assert_eq!(status("Administrator", ADMIN_PASSWORD).await.status(), 200);
    for _ in 0..5 {
        assert_eq!(status("Administrator", "wrong").await.status(), 401);
    }
    let locked = status("Administrator", ADMIN_PASSWORD).await;
    assert_eq!(locked.status(), 429);
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // Another user name from the same address is not locked (yet).
    assert_eq!(status("Operator", "wrong").await.status(), 401);
    gw.shutdown().await;
}

/// The central export's users are locked out the same way: the export
/// holds every secret in clear.
#[tokio::test]
async fn guessing_a_central_users_password_is_locked_out() {
    let upstream = Upstream::start().await;
    let central = format!(
        "{}central:\n  users:\n  - {{ user: fleet, password: \"fleet-secret\" }}\n",
        yaml(&upstream, "")
    );
    let gw = Gateway::start(&central).await;
    let export = |password: &'static str| {
        let request = gw
            .client
            .get(gw.admin_url("/rest/microgateway/settings/export"))
            .basic_auth("fleet", Some(password));
        async move { request.send().await.expect("request").status() }
    };
    assert_eq!(export("fleet-secret").await, 200);
    for _ in 0..5 {
        assert_eq!(export("wrong").await, 401);
    }
    assert_eq!(export("fleet-secret").await, 429);
    gw.shutdown().await;
}

/// A stranger's guesses do not keep out an address that never failed: a
/// new downstream (or any, after the central restarted) still logs in,
/// while the guesser stays locked out.
#[tokio::test]
async fn a_locked_central_user_still_lets_a_new_downstream_in() {
    let upstream = Upstream::start().await;
    let central = format!(
        "{}central:\n  users:\n  - {{ user: fleet, password: \"fleet-secret\" }}\n",
        yaml(&upstream, "")
    );
    let gw = Gateway::start(&central).await;
    let from = |address: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(address))
            .build()
            .expect("client")
    };
    let (guesser, newcomer) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let export = |client: &reqwest::Client, password: &'static str| {
        let request = client
            .get(gw.admin_url("/rest/microgateway/settings/export"))
            .basic_auth("fleet", Some(password));
        async move { request.send().await.expect("request").status() }
    };
    for _ in 0..5 {
        assert_eq!(export(&guesser, "wrong").await, 401);
    }
    assert_eq!(export(&guesser, "fleet-secret").await, 429);
    assert_eq!(export(&newcomer, "fleet-secret").await, 200);
    assert_eq!(export(&guesser, "fleet-secret").await, 429);
    gw.shutdown().await;
}

/// Two open APIs on one upstream, each throttled by the policy `policy`:
/// `Metrics kept` to two requests an hour, `removed` (when there is one)
/// to one.
fn two_apis(upstream: &Upstream, removed: Option<&str>, policy: &str) -> String {
    let removed = removed.map_or(String::new(), |name| {
        format!(
            r#"
- name: "{name}"
  base_path: /removed
  upstream: {{ url: "{url}" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
  policies:
    throttle: [{{ name: {policy}, limit: 1, per: 1h }}]"#,
            url = upstream.url("/api"),
        )
    });
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: "Metrics kept"
  base_path: /kept
  upstream: {{ url: "{url}" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
  policies:
    throttle: [{{ name: {policy}, limit: 2, per: 1h }}]{removed}
"#,
        url = upstream.url("/api"),
    )
}

/// The value of the series `line` names in `text`.
fn series(text: &str, line: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
}

#[tokio::test]
async fn a_reload_removes_the_series_of_what_it_removed_and_keeps_the_rest() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&two_apis(&upstream, Some("Metrics removed"), "hourly")).await;
    for expected in [200, 200, 429] {
        assert_eq!(gw.get("/kept/items").await.status(), expected);
    }
    assert_eq!(gw.get("/removed/items").await.status(), 200);
    assert_eq!(gw.get("/removed/items").await.status(), 429);
    let text = gw.metrics().await;
    assert!(text.contains(r#"api="Metrics removed""#), "{text}");
    let ok = r#"microgateway_requests_total{api="Metrics kept",method="GET",status="200"}"#;
    let refused = r#"microgateway_requests_total{api="Metrics kept",method="GET",status="429"}"#;
    let hourly = r#"microgateway_throttled_total{api="Metrics kept",policy="hourly"}"#;
    assert_eq!(series(&text, ok), Some(2), "{text}");
    assert_eq!(series(&text, hourly), Some(1), "{text}");

    // One API goes, the other's policy is renamed: what they no longer
    // name goes, what the kept API counted stays.
    gw.write_config(&two_apis(&upstream, None, "renamed"));
    gw.wait_generation(2).await;
    let text = gw.metrics().await;
    assert!(!text.contains("Metrics removed"), "{text}");
    assert_eq!(series(&text, hourly), None, "{text}");
    assert_eq!(series(&text, ok), Some(2), "{text}");
    assert_eq!(gw.get("/kept/items").await.status(), 429);
    let text = gw.metrics().await;
    assert_eq!(series(&text, refused), Some(2), "{text}");
    let renamed = r#"microgateway_throttled_total{api="Metrics kept",policy="renamed"}"#;
    assert_eq!(series(&text, renamed), Some(1), "{text}");
    gw.shutdown().await;
}

/// The application `Kept app` and the auth server `kept-idp` with an API
/// on it, and, with `removed`, the application `Removed app` and the
/// auth server `removed-idp` with an API on it. Both auth servers
/// introspect at a port nothing listens on.
fn named(upstream: &Upstream, removed: bool) -> String {
    let server = |id: &str| {
        format!(
            r#"
  - id: {id}
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:9/introspect"
      clientId: introspection-client
      clientSecret: introspection-secret-clear"#
        )
    };
    let api = |name: &str, path: &str, server: &str| {
        format!(
            r#"
- name: "{name}"
  base_path: {path}
  upstream: {{ url: "{url}" }}
  authentication: {{ type: [oauth2, api_key], auth_server: {server} }}
  resources: ["GET /items"]"#,
            url = upstream.url("/api"),
        )
    };
    let (removed_server, removed_app, removed_api) = match removed {
        true => (
            server("removed-idp"),
            r#"
- name: Removed app
  api_keys: ["removed-app-key"]
  apis: ["Named kept"]"#
                .to_owned(),
            api("Named removed", "/removed", "removed-idp"),
        ),
        false => Default::default(),
    };
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
security_settings:
  auth_servers:{kept_server}{removed_server}
applications:
- name: Kept app
  api_keys: ["kept-app-key"]
  apis: ["Named kept"]{removed_app}
apis:{kept_api}{removed_api}
"#,
        kept_server = server("kept-idp"),
        kept_api = api("Named kept", "/kept", "kept-idp"),
    )
}

#[tokio::test]
async fn a_reload_removes_the_series_of_the_applications_and_auth_servers_it_removed() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&named(&upstream, true)).await;
    let with = |path: &str, header: &str, value: &str| {
        gw.request(reqwest::Method::GET, path)
            .header(header, value)
            .send()
    };
    for key in ["kept-app-key", "removed-app-key"] {
        let sent = with("/kept/items", "X-API-Key", key).await.unwrap();
        assert_eq!(sent.status(), 200);
    }
    // Introspection fails: the endpoint is down.
    for path in ["/kept/items", "/removed/items"] {
        let sent = with(path, "Authorization", "Bearer opaque-token")
            .await
            .unwrap();
        assert_eq!(sent.status(), 503);
    }
    let kept_app = r#"microgateway_application_requests_total{application="Kept app"}"#;
    let kept_idp =
        r#"microgateway_introspection_requests_total{auth_server="kept-idp",result="error"}"#;
    let text = gw.metrics().await;
    assert_eq!(series(&text, kept_app), Some(1), "{text}");
    assert_eq!(series(&text, kept_idp), Some(1), "{text}");
    assert!(text.contains(r#"application="Removed app""#), "{text}");
    assert!(text.contains(r#"auth_server="removed-idp""#), "{text}");

    gw.write_config(&named(&upstream, false));
    gw.wait_generation(2).await;
    let text = gw.metrics().await;
    assert!(!text.contains("Removed app"), "{text}");
    assert!(!text.contains("removed-idp"), "{text}");
    assert_eq!(series(&text, kept_app), Some(1), "{text}");
    assert_eq!(series(&text, kept_idp), Some(1), "{text}");
    let sent = with("/kept/items", "X-API-Key", "kept-app-key")
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let sent = with("/kept/items", "Authorization", "Bearer opaque-token")
        .await
        .unwrap();
    assert_eq!(sent.status(), 503);
    let text = gw.metrics().await;
    assert_eq!(series(&text, kept_app), Some(2), "{text}");
    assert_eq!(series(&text, kept_idp), Some(2), "{text}");
    gw.shutdown().await;
}
