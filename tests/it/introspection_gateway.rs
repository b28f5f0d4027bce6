//! Opaque tokens through the gateway: RFC 7662 introspection against a
//! counting endpoint — one call per token while cached, coalesced first
//! uses, failures as 503 never cached, only access tokens for the
//! configured audience accepted, a bounded number of calls in flight, and
//! the client authentication the endpoint receives.

use crate::common;

use std::time::Duration;

use common::idp::{merged, unix_now, Answer, Idp, Introspector};
use common::{Gateway, Upstream};
use reqwest::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::Method;
use serde_json::{json, Value};

const CLIENT_ID: &str = "gateway client";
const CLIENT_SECRET: &str = "s3cret/+:&";

struct Settings<'a> {
    client_auth: &'a str,
    negative_cache_ttl: &'a str,
    /// `remoteIntrospectionConfig.audience`, when written.
    audience: Option<&'a str>,
}

const DEFAULTS: Settings<'static> = Settings {
    client_auth: "client_secret_basic",
    negative_cache_ttl: "5s",
    audience: None,
};

fn travels(introspector: &Introspector, upstream: &Upstream, settings: &Settings) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: remote
    name: remote
    remoteIntrospectionConfig:
      introspectionEndpoint: "{endpoint}"
      clientId: "{CLIENT_ID}"
      clientSecret: "{CLIENT_SECRET}"
      client_auth: {client_auth}
      cache_ttl: 60s
      negative_cache_ttl: {negative}{audience}
scope_mappings:
- {{ auth_server: remote, scope: view,   api_scopes: ["Time travels:ViewTickets"] }}
- {{ auth_server: remote, scope: cancel, api_scopes: ["Time travels:CancelTickets"] }}
apis:
- name: "Time travels"
  version: "1.0"
  base_path: /travels
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: remote }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings", "GET /bookings/{{id}}"]
  - name: CancelTickets
    resources: ["DELETE /bookings/{{id}}"]
"#,
        endpoint = introspector.endpoint(),
        client_auth = settings.client_auth,
        negative = settings.negative_cache_ttl,
        audience = settings
            .audience
            .map(|a| format!("\n      audience: \"{a}\""))
            .unwrap_or_default(),
        upstream = upstream.url("/api"),
    )
}

struct World {
    introspector: Introspector,
    upstream: Upstream,
    gw: Gateway,
}

async fn world(settings: &Settings<'_>) -> World {
    let introspector = Introspector::counting().await;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&travels(&introspector, &upstream, settings)).await;
    World {
        introspector,
        upstream,
        gw,
    }
}

impl World {
    async fn send(&self, method: Method, path: &str, token: &str) -> reqwest::Response {
        self.gw
            .request(method, path)
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    async fn get(&self, token: &str) -> reqwest::Response {
        self.send(Method::GET, "/travels/bookings", token).await
    }
}

fn active(scope: &str) -> Answer {
    Answer::active(json!({"scope": scope, "client_id": "app", "sub": "alice",
                          "exp": unix_now() + 600}))
}

fn assert_unavailable(resp: &reqwest::Response, case: &str) {
    assert_eq!(resp.status(), 503, "{case}");
    assert!(resp.headers().contains_key(RETRY_AFTER), "{case}");
    assert!(!resp.headers().contains_key(WWW_AUTHENTICATE), "{case}");
}

#[tokio::test]
async fn a_thousand_requests_with_one_token_introspect_once() {
    let w = world(&DEFAULTS).await;
    w.introspector.answer("opaque-1", active("view"));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, url) = (w.gw.client.clone(), w.gw.url("/travels/bookings"));
        tasks.spawn(async move {
            for _ in 0..125 {
                let resp = client
                    .get(&url)
                    .bearer_auth("opaque-1")
                    .send()
                    .await
                    .expect("request");
                assert_eq!(resp.status(), 200);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    assert_eq!(w.upstream.hits(), 1000);
    assert_eq!(w.introspector.calls(), 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn concurrent_first_uses_share_one_introspection_call() {
    let w = world(&DEFAULTS).await;
    let slow = match active("view") {
        Answer::Json(body) => Answer::Slow(Duration::from_millis(300), body),
        other => other,
    };
    w.introspector.answer("opaque-2", slow);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (client, url) = (common::client(), w.gw.url("/travels/bookings"));
        tasks.spawn(async move {
            let resp = client.get(&url).bearer_auth("opaque-2").send().await;
            resp.expect("request").status().as_u16()
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
    assert_eq!(w.introspector.calls(), 1);
    assert_eq!(w.upstream.hits(), 64);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn inactive_token_gets_401_and_is_remembered_briefly() {
    let w = world(&Settings {
        negative_cache_ttl: "1s",
        ..DEFAULTS
    })
    .await;
    w.introspector.answer("revoked", Answer::inactive());
    for _ in 0..3 {
        let resp = w.get("revoked").await;
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#
        );
    }
    assert_eq!(w.introspector.calls(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The negative entry has expired: the endpoint is asked again, and a
    // token that became active is accepted.
    w.introspector.answer("revoked", active("view"));
    assert_eq!(w.get("revoked").await.status(), 200);
    assert_eq!(w.introspector.calls(), 2);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn cached_token_allowed_on_get_and_refused_on_delete() {
    let w = world(&DEFAULTS).await;
    w.introspector.answer("viewer", active("view"));
    assert_eq!(
        w.send(Method::GET, "/travels/bookings/7", "viewer")
            .await
            .status(),
        200
    );
    let resp = w
        .send(Method::DELETE, "/travels/bookings/7", "viewer")
        .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()[WWW_AUTHENTICATE],
        r#"Bearer error="insufficient_scope", scope="cancel""#
    );
    assert_eq!(w.introspector.calls(), 1);
    assert_eq!(w.upstream.hits(), 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn expired_active_answer_gets_401() {
    let w = world(&DEFAULTS).await;
    w.introspector.answer(
        "stale",
        Answer::active(json!({"scope": "view", "exp": unix_now() - 120})),
    );
    assert_eq!(w.get("stale").await.status(), 401);
    assert_eq!(w.upstream.hits(), 0);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn endpoint_failures_answer_503_and_are_never_cached() {
    let w = world(&DEFAULTS).await;
    let body = match active("view") {
        Answer::Json(body) => body,
        _ => unreachable!("active answers are JSON"),
    };
    let failures = [
        (
            "status 500",
            Answer::Status(500, r#"{"error":"oops"}"#.into()),
        ),
        (
            "timeout",
            Answer::Slow(Duration::from_millis(2500), body.clone()),
        ),
        ("not JSON", Answer::Json("<html>active</html>".into())),
        (
            "active as a string",
            Answer::Json(r#"{"active":"true","scope":"view"}"#.into()),
        ),
        ("no active", Answer::Json(r#"{"scope":"view"}"#.into())),
    ];
    let mut calls = 0;
    for (case, answer) in failures {
        w.introspector.answer("flaky", answer);
        for _ in 0..2 {
            let resp = w.get("flaky").await;
            assert_unavailable(&resp, case);
            assert_eq!(
                resp.json::<serde_json::Value>().await.expect("JSON")["error"],
                "temporarily_unavailable"
            );
            calls += 1;
            assert_eq!(w.introspector.calls(), calls, "{case}: asked again");
        }
    }
    assert_eq!(w.upstream.hits(), 0);
    w.introspector.answer("flaky", Answer::Json(body));
    assert_eq!(w.get("flaky").await.status(), 200);
    assert_eq!(w.introspector.calls(), calls + 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn endpoint_down_answers_503() {
    let upstream = Upstream::start().await;
    let introspector = Introspector::counting().await;
    let yaml = travels(&introspector, &upstream, &DEFAULTS);
    drop(introspector);
    let gw = Gateway::start(&yaml).await;
    let resp = gw
        .request(Method::GET, "/travels/bookings")
        .bearer_auth("anything")
        .send()
        .await
        .expect("request");
    assert_unavailable(&resp, "endpoint down");
    assert_eq!(upstream.hits(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_jwt_shaped_token_is_introspected_without_local_validation() {
    let w = world(&DEFAULTS).await;
    w.introspector.answer("aaa.bbb.ccc", active("view"));
    assert_eq!(w.get("aaa.bbb.ccc").await.status(), 200);
    assert_eq!(w.introspector.calls_for("aaa.bbb.ccc"), 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn client_secret_basic_arrives_at_the_endpoint() {
    let w = world(&DEFAULTS).await;
    w.introspector.answer("basic-token", active("view"));
    assert_eq!(w.get("basic-token").await.status(), 200);
    let call = w.introspector.last();
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    // RFC 6749 §2.3.1: id and secret are form-encoded before Basic.
    assert_eq!(
        call.basic().as_deref(),
        Some("gateway+client:s3cret%2F%2B%3A%26")
    );
    assert_eq!(call.form["token"], "basic-token");
    assert!(!call.form.contains_key("client_secret"));
    w.gw.shutdown().await;
}

#[tokio::test]
async fn client_secret_post_arrives_in_the_form() {
    let w = world(&Settings {
        client_auth: "client_secret_post",
        ..DEFAULTS
    })
    .await;
    w.introspector.answer("post-token", active("view"));
    assert_eq!(w.get("post-token").await.status(), 200);
    let call = w.introspector.last();
    assert_eq!(call.authorization, None);
    assert_eq!(call.form["token"], "post-token");
    assert_eq!(call.form["client_id"], CLIENT_ID);
    assert_eq!(call.form["client_secret"], CLIENT_SECRET);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn an_active_refresh_token_is_no_access_token() {
    let w = world(&DEFAULTS).await;
    // What an authorization server answers the client a refresh token was
    // issued to, when that client is also the one the gateway introspects as.
    w.introspector.answer(
        "refresh-token",
        Answer::active(json!({"token_type": "refresh_token", "scope": "view",
                              "client_id": "app", "exp": unix_now() + 600})),
    );
    let resp = w.get("refresh-token").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()[WWW_AUTHENTICATE],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(w.upstream.hits(), 0);
    w.introspector.answer(
        "access-token",
        Answer::active(json!({"token_type": "Bearer", "scope": "view"})),
    );
    assert_eq!(w.get("access-token").await.status(), 200);
    w.gw.shutdown().await;
}

/// An introspection endpoint says "active" of every token it issued that
/// is live; as a bearer token only an access token grants anything. Ory
/// Hydra says which in `token_use`, Keycloak in `typ`.
#[tokio::test]
async fn only_an_access_token_is_accepted_whatever_field_says_what_it_is() {
    let w = world(&DEFAULTS).await;
    let refused = [
        ("hydra-refresh", json!({"token_use": "refresh_token"})),
        ("keycloak-refresh", json!({"typ": "Refresh"})),
        ("keycloak-id", json!({"typ": "ID"})),
        (
            "bearer-but-id",
            json!({"token_type": "Bearer", "typ": "ID"}),
        ),
    ];
    for (token, kind) in &refused {
        w.introspector.answer(
            token,
            Answer::active(merged(json!({"scope": "view"}), kind)),
        );
        let resp = w.get(token).await;
        assert_eq!(resp.status(), 401, "{token}");
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#,
            "{token}"
        );
    }
    assert_eq!(w.upstream.hits(), 0);
    let accepted = [
        ("hydra-access", json!({"token_use": "access_token"})),
        ("keycloak-access", json!({"typ": "Bearer"})),
    ];
    for (token, kind) in &accepted {
        w.introspector.answer(
            token,
            Answer::active(merged(json!({"scope": "view"}), kind)),
        );
        assert_eq!(w.get(token).await.status(), 200, "{token}");
    }
    w.gw.shutdown().await;
}

/// `remoteIntrospectionConfig.audience`: an active answer must name it in
/// `aud`, one string or an array; any other is a token for another API.
#[tokio::test]
async fn an_introspected_token_must_be_for_the_configured_audience() {
    let w = world(&Settings {
        audience: Some("travels"),
        ..DEFAULTS
    })
    .await;
    for (token, aud) in [
        ("for-other", json!(["other"])),
        ("for-other-string", json!("other")),
        ("for-nobody", Value::Null),
    ] {
        // A `null` change leaves `aud` out.
        let claims = merged(json!({"scope": "view"}), &json!({ "aud": aud }));
        w.introspector.answer(token, Answer::active(claims));
        let resp = w.get(token).await;
        assert_eq!(resp.status(), 401, "{token}");
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#,
            "{token}"
        );
    }
    assert_eq!(w.upstream.hits(), 0);
    for (token, aud) in [
        ("for-travels", json!("travels")),
        ("for-several", json!(["other", "travels"])),
    ] {
        w.introspector
            .answer(token, Answer::active(json!({"scope": "view", "aud": aud})));
        assert_eq!(w.get(token).await.status(), 200, "{token}");
    }
    w.gw.shutdown().await;
}

/// An auth server that validates JWTs for an audience holds its opaque
/// tokens to it too, unless `remoteIntrospectionConfig` names its own.
#[tokio::test]
async fn introspection_takes_the_local_audience_unless_it_names_one() {
    let idp = Idp::start().await;
    let introspector = Introspector::counting().await;
    let upstream = Upstream::start().await;
    let local = format!(
        "    localIntrospectionConfig: {{ issuer: \"{}\", jwksuri: \"{}\", audience: travels }}\n    remoteIntrospectionConfig:",
        idp.issuer(),
        idp.jwks_uri()
    );
    introspector.answer(
        "for-travels",
        Answer::active(json!({"scope": "view", "aud": "travels"})),
    );
    introspector.answer(
        "for-billing",
        Answer::active(json!({"scope": "view", "aud": ["billing"]})),
    );
    let cases = [
        (None, "for-travels", "for-billing"),
        (Some("billing"), "for-billing", "for-travels"),
    ];
    for (own, accepted, refused) in cases {
        let settings = Settings {
            audience: own,
            ..DEFAULTS
        };
        let yaml = travels(&introspector, &upstream, &settings)
            .replace("    remoteIntrospectionConfig:", &local);
        let gw = Gateway::start(&yaml).await;
        let get = |token: &'static str| {
            gw.request(Method::GET, "/travels/bookings")
                .bearer_auth(token)
                .send()
        };
        assert_eq!(
            get(accepted).await.expect("request").status(),
            200,
            "{own:?}"
        );
        assert_eq!(
            get(refused).await.expect("request").status(),
            401,
            "{own:?}"
        );
        gw.shutdown().await;
    }
}

/// An auth server that validates JWTs of an issuer holds its opaque tokens
/// to that issuer and to the same clock skew on `nbf` and `exp`: another
/// `iss`, an `nbf` further ahead or an `exp` further behind than the skew,
/// is 401 `invalid_token`.
#[tokio::test]
async fn introspection_takes_the_local_issuer_and_clock_skew() {
    let idp = Idp::start().await;
    let introspector = Introspector::counting().await;
    let upstream = Upstream::start().await;
    let local = format!(
        "    localIntrospectionConfig: {{ issuer: \"{}\", jwksuri: \"{}\", clockSkew: 10s }}\n    remoteIntrospectionConfig:",
        idp.issuer(),
        idp.jwks_uri()
    );
    let view = |claims: Value| Answer::active(merged(json!({"scope": "view"}), &claims));
    let refused = [
        ("other-issuer", json!({"iss": "https://elsewhere.example"})),
        ("issuer-array", json!({"iss": [idp.issuer()]})),
        ("not-yet", json!({"nbf": unix_now() + 3_600})),
        ("beyond-skew", json!({"nbf": unix_now() + 40})),
        ("expired-beyond-skew", json!({"exp": unix_now() - 40})),
    ];
    let accepted = [
        ("own-issuer", json!({"iss": idp.issuer()})),
        ("no-issuer", json!({})),
        ("within-skew", json!({"nbf": unix_now() + 5})),
        ("past-nbf", json!({"nbf": unix_now() - 5})),
        ("expired-within-skew", json!({"exp": unix_now() - 5})),
    ];
    for (token, claims) in refused.iter().chain(&accepted) {
        introspector.answer(token, view(claims.clone()));
    }
    introspector.answer("string-nbf", view(json!({"nbf": "0"})));
    let yaml = travels(&introspector, &upstream, &DEFAULTS)
        .replace("    remoteIntrospectionConfig:", &local);
    let gw = Gateway::start(&yaml).await;
    let get = |token: &'static str| {
        gw.request(Method::GET, "/travels/bookings")
            .bearer_auth(token)
            .send()
    };
    for (token, _) in refused {
        let resp = get(token).await.expect("request");
        assert_eq!(resp.status(), 401, "{token}");
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer error="invalid_token""#,
            "{token}"
        );
    }
    assert_eq!(upstream.hits(), 0);
    for (token, _) in accepted {
        assert_eq!(get(token).await.expect("request").status(), 200, "{token}");
    }
    assert_unavailable(&get("string-nbf").await.expect("request"), "string nbf");
    gw.shutdown().await;
}

/// Without `localIntrospectionConfig` no issuer is known: any `iss` goes.
#[tokio::test]
async fn introspection_without_a_local_issuer_takes_any_iss() {
    let w = world(&DEFAULTS).await;
    w.introspector.answer(
        "anyone",
        Answer::active(json!({"scope": "view", "iss": "https://anyone.example"})),
    );
    assert_eq!(w.get("anyone").await.status(), 200);
    w.gw.shutdown().await;
}

/// Each new token leads a call of its own: a client with made-up tokens
/// on many connections would make one call per request, and while the
/// endpoint is slow they would all wait on it. An auth server has at most
/// 64 calls in flight; a request that finds none free within its short
/// wait gets 503 at once, without a call, while the others still wait.
#[tokio::test]
async fn introspection_calls_in_flight_are_bounded() {
    const LIMIT: usize = 64;
    const OVER: usize = 8;
    let w = world(&DEFAULTS).await;
    w.introspector.answer_all(active("view"));
    w.introspector.hold();
    let saturated =
        r#"microgateway_introspection_requests_total{auth_server="remote",result="saturated"}"#;
    let before = common::metric(&w.gw.metrics().await, saturated);
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..LIMIT + OVER {
        let (client, url, done) = (
            w.gw.client.clone(),
            w.gw.url("/travels/bookings"),
            done.clone(),
        );
        tokio::spawn(async move {
            let resp = client
                .get(&url)
                .bearer_auth(format!("made-up-{n}"))
                .send()
                .await;
            let _ = done.send(resp.expect("request"));
        });
    }
    let bound = Duration::from_secs(10);
    for _ in 0..OVER {
        let resp = tokio::time::timeout(bound, finished.recv())
            .await
            .expect("the requests over the limit are answered while the others wait")
            .expect("an answer");
        assert_unavailable(&resp, "over the limit");
    }
    // Those with a permit may still be on their way to the endpoint.
    for _ in 0..400 {
        if w.introspector.calls() >= LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(w.introspector.calls(), LIMIT, "no call for those refused");
    let text = w.gw.metrics().await;
    assert_eq!(
        common::metric(&text, saturated) - before,
        OVER as u64,
        "{text}"
    );
    w.introspector.release();
    for _ in 0..LIMIT {
        tokio::time::timeout(bound, finished.recv())
            .await
            .expect("every held request is answered")
            .expect("an answer");
    }
    assert_eq!(w.introspector.most_in_flight(), LIMIT);
    // The permits are free again: a new token is introspected and let in.
    w.introspector.answer("after", active("view"));
    assert_eq!(w.get("after").await.status(), 200);
    w.gw.shutdown().await;
}

/// A cache lifetime is at most a day: a longer one (which made every
/// request it cached panic, past the clock's range) is refused at load,
/// naming its key; a day is served.
#[tokio::test]
async fn a_cache_lifetime_over_a_day_is_refused_at_load() {
    let introspector = Introspector::counting().await;
    let upstream = Upstream::start().await;
    for huge in ["18446744073709551615", "25h"] {
        let yaml = travels(
            &introspector,
            &upstream,
            &Settings {
                negative_cache_ttl: huge,
                ..DEFAULTS
            },
        );
        let refused = Gateway::try_start(&yaml, common::Env::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("negative_cache_ttl: {huge} was accepted"));
        assert!(refused.contains("negative_cache_ttl"), "{refused}");
        let yaml = yaml
            .replace("cache_ttl: 60s", &format!("cache_ttl: {huge}"))
            .replace(
                &format!("negative_cache_ttl: {huge}"),
                "negative_cache_ttl: 5s",
            );
        let refused = Gateway::try_start(&yaml, common::Env::new())
            .await
            .err()
            .unwrap_or_else(|| panic!("cache_ttl: {huge} was accepted"));
        assert!(
            refused.contains(&format!("cache_ttl: `{huge}`")),
            "{refused}"
        );
        assert!(!refused.contains("negative_cache_ttl"), "{refused}");
    }
    let w = world(&Settings {
        negative_cache_ttl: "24h",
        ..DEFAULTS
    })
    .await;
    w.introspector.answer("revoked", Answer::inactive());
    assert_eq!(w.get("revoked").await.status(), 401);
    assert_eq!(w.get("revoked").await.status(), 401);
    assert_eq!(w.introspector.calls(), 1, "the inactive answer is cached");
    w.gw.shutdown().await;
}
