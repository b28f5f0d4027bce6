//! Several gateways serving one issuer from one PostgreSQL database: every
//! rule of the token store, and of the approval page's sessions, holds when
//! consecutive (or simultaneous) requests reach different replicas, and a
//! database outage is a 503 `temporarily_unavailable` that ends without
//! restarting a gateway.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use serde_json::Value;

use crate::authorize::{
    a_consent_form_is_taken_once, alice_changed_and_removed, assert_back_to_login, cheap_hash,
    code_from, code_query, pkce, query, with_alice_as, Browser, CALLBACK, SECRET,
};
use crate::common::postgres::Postgres;
use crate::common::{Env, Gateway};
use crate::local_authorization_server::{
    a_client_with_a_reuse_interval_of_0s_is_never_retried, a_lost_refresh_answer_is_retried,
    a_retry_after_the_reuse_interval_revokes_the_family,
    a_retry_on_a_replica_whose_clock_is_behind_is_a_retry,
    concurrent_retries_leave_at_most_one_live_refresh_token, post_as, refreshed, reuse_yaml,
    signed_in, text,
};
use microgateway::authz_server::store::OPERATION_TIMEOUT;

fn yaml(url: &str, shared: &std::path::Path) -> String {
    let hash = cheap_hash("wonderland");
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
authorization_server:
  issuer: "http://localhost:4485"
  token_format: opaque
  signing_key: "{key}"
  store: "{url}"
  store_pool: {{ max_connections: 4, connect_timeout: 2s }}
  token_lifetime: 300
  scopes:
  - {{ name: view, description: "View your bookings" }}
  users:
  - {{ username: alice, password_hash: "{hash}" }}
  clients:
  - name: BookYourTicket
    client_id: bookyourticket
    client_secret: "{SECRET}"
    redirect_uris: ["{CALLBACK}"]
    grant_types: [authorization_code, password, refresh_token]
    scopes: [view]
    refresh_limit: 3
  - name: Introspector
    client_id: introspector
    client_secret: intro-secret
    introspect: true
    grant_types: []
"#,
        key = shared.join("signing-key.pem").display(),
    )
}

/// Two gateways on one database (and one signing key file).
async fn replicas(pg: &Postgres) -> (tempfile::TempDir, Gateway, Gateway) {
    let (shared, a, b, _) = replicas_on(pg).await;
    (shared, a, b)
}

async fn replicas_on(pg: &Postgres) -> (tempfile::TempDir, Gateway, Gateway, String) {
    let shared = tempfile::tempdir().unwrap();
    let database = pg.create_database();
    let yaml = yaml(&pg.url(&database), shared.path());
    let a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;
    (shared, a, b, database)
}

async fn post(
    gw: &Gateway,
    path: &str,
    basic: (&str, &str),
    form: &[(&str, &str)],
) -> (u16, Value) {
    let (status, _, body) = posted(gw, path, basic, form).await;
    (status, body)
}

/// A form posted with Basic client credentials: the status, `Retry-After`
/// and the body.
async fn posted(
    gw: &Gateway,
    path: &str,
    basic: (&str, &str),
    form: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let response = gw
        .client
        .post(gw.url(path))
        .basic_auth(basic.0, Some(basic.1))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(query(form))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = response.text().await.expect("body");
    (
        status,
        retry_after,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

async fn password_grant(gw: &Gateway, password: &str) -> (u16, Value) {
    post(
        gw,
        "/oauth2/token",
        ("bookyourticket", SECRET),
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", password),
            ("scope", "view"),
        ],
    )
    .await
}

async fn refresh(gw: &Gateway, refresh_token: &str) -> (u16, Value) {
    post(
        gw,
        "/oauth2/token",
        ("bookyourticket", SECRET),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

async fn active(gw: &Gateway, token: &str) -> bool {
    let (status, body) = post(
        gw,
        "/oauth2/introspect",
        ("introspector", "intro-secret"),
        &[("token", token)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["active"] == true
}

/// Exactly one redemption spends the code and issues tokens; every other
/// gets `invalid_grant`, and since the code was presented more than once
/// the tokens it bought are revoked on every replica.
#[tokio::test]
async fn a_code_redeemed_on_two_replicas_at_once_has_one_winner() {
    let pg = Postgres::shared();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    let rounds = 5;
    for round in 0..rounds {
        let (verifier, challenge) = pkce();
        let location = Browser::new(&a)
            .approve(
                &code_query("bookyourticket", "view", Some(&challenge)),
                None,
            )
            .await;
        let code = code_from(&location);
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", verifier.as_str()),
        ];
        let attempts = (0..6).map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            post(gw, "/oauth2/token", ("bookyourticket", SECRET), &form)
        });
        let outcomes = join_all(attempts).await;
        let winners: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        for (status, body) in &outcomes {
            if *status != 200 {
                assert_eq!(
                    (*status, body["error"].as_str()),
                    (400, Some("invalid_grant"))
                );
            }
        }
        if let Some((_, token)) = winners.first() {
            let access = text(token, "access_token");
            assert!(!active(&a, &access).await, "round {round}");
            assert!(!active(&b, &access).await, "round {round}");
        }
        let issued = pg.psql(&database, "SELECT count(*) FROM access_tokens");
        assert_eq!(issued, (round + 1).to_string(), "one issue per code");
    }
    let live = pg.psql(
        &database,
        "SELECT count(*) FROM access_tokens WHERE NOT revoked",
    );
    assert_eq!(live, "0");
}

#[tokio::test]
async fn a_refresh_token_reused_on_two_replicas_at_once_rotates_once() {
    let pg = Postgres::shared();
    let (_shared, a, b) = replicas(&pg).await;
    for round in 0..5 {
        let (status, grant) = password_grant(&a, "wonderland").await;
        assert_eq!(status, 200, "{grant}");
        let presented = text(&grant, "refresh_token");
        let attempts = (0..6).map(|i| refresh(if i % 2 == 0 { &a } else { &b }, &presented));
        let outcomes = join_all(attempts).await;
        let winners: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 200).collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        assert!(outcomes
            .iter()
            .all(|(s, body)| *s == 200 || body["error"] == "invalid_grant"));
        // Reuse detected: the whole family is revoked, the winner's too.
        let next = text(&winners[0].1, "refresh_token");
        assert!(!active(&b, &text(&winners[0].1, "access_token")).await);
        assert_eq!(refresh(&a, &next).await.0, 400, "round {round}");
    }
}

/// Reuse detection racing a legitimate rotation on the other replica: the
/// replay of the first refresh token revokes the family, and that includes
/// the access and refresh tokens the concurrent rotation stored while the
/// revocation waited for it.
///
/// Made deterministic with a trigger that holds the rotation transaction,
/// after it stored the successor, until the replay's revocation is waiting.
#[tokio::test]
async fn a_replay_racing_a_rotation_revokes_the_rotated_tokens_too() {
    let pg = Postgres::shared();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    let (status, grant) = password_grant(&a, "wonderland").await;
    assert_eq!(status, 200, "{grant}");
    let first = text(&grant, "refresh_token");
    let (status, body) = refresh(&a, &first).await;
    assert_eq!(status, 200, "{body}");
    let second = text(&body, "refresh_token");

    // Instrumentation only: the rotation of `second` (which stores a
    // refresh token with refreshes_used = 2) pauses before its commit
    // while the test holds advisory lock 4242.
    pg.psql(
        &database,
        "CREATE FUNCTION hold_rotation() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_advisory_lock_shared(4242); \
         PERFORM pg_advisory_unlock_shared(4242); RETURN NEW; END $$; \
         CREATE TRIGGER hold_rotation AFTER INSERT ON refresh_tokens FOR EACH ROW \
         WHEN (NEW.refreshes_used = 2) EXECUTE FUNCTION hold_rotation();",
    );
    let gate = pg.session(&database).await;
    gate.execute("SELECT pg_advisory_lock(4242)", &[])
        .await
        .unwrap();
    let gate_pid: i32 = gate
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let legitimate = refresh(&a, &second);
    let replay_and_release = async {
        // A's rotation has stored its successor and waits for the gate.
        let rotation = waiter_on(&gate, gate_pid).await;
        let replay = refresh(&b, &first);
        let release = async {
            // B's revocation of the family waits for a lock A's rotation
            // holds.
            waiter_on(&gate, rotation).await;
            gate.execute("SELECT pg_advisory_unlock(4242)", &[])
                .await
                .unwrap();
        };
        tokio::join!(replay, release).0
    };
    let ((status_a, rotated), (status_b, replayed)) = tokio::join!(legitimate, replay_and_release);
    assert_eq!(status_b, 400, "the replay is refused: {replayed}");
    assert_eq!(status_a, 200, "the rotation went first: {rotated}");
    let access = text(&rotated, "access_token");
    let third = text(&rotated, "refresh_token");
    let family_live = pg.psql(
        &database,
        "SELECT count(*) FROM refresh_tokens WHERE NOT revoked",
    );
    assert!(
        !active(&b, &access).await,
        "the access token of the revoked family is still active ({family_live} refresh tokens unrevoked)"
    );
    let (status, body) = refresh(&b, &third).await;
    assert_eq!(
        status, 400,
        "the refresh token of the revoked family still rotates: {body}"
    );
}

/// The backend that waits for a lock the backend `holder` holds, polled
/// until one does. Asked by pid: `pg_locks` shows the whole cluster, whose
/// other databases (the tests running beside this one) have lock waits of
/// their own.
async fn waiter_on(client: &tokio_postgres::Client, holder: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiter = client
            .query_opt(
                "SELECT pid FROM pg_locks WHERE NOT granted \
                 AND $1 = ANY (pg_blocking_pids(pid)) LIMIT 1",
                &[&holder],
            )
            .await
            .unwrap();
        if let Some(waiter) = waiter {
            return waiter.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "no backend waits for a lock of backend {holder}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const ALICE: [(&str, &str); 2] = [("username", "alice"), ("password", "wonderland")];

/// Redeems the code of the approval's redirect `location` on `gw`.
async fn redeem(gw: &Gateway, location: &str, verifier: &str) -> (u16, Value) {
    let code = code_from(location);
    post(
        gw,
        "/oauth2/token",
        ("bookyourticket", SECRET),
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// The store failing as a code's tokens are stored (the connection lost
/// then) is a 503 to retry, and the retry, on either replica, gets the
/// tokens: the code is spent with them, in one transaction, or not at
/// all. Spent, it is still good once only.
#[tokio::test]
async fn a_code_whose_tokens_the_store_failed_to_keep_is_redeemed_by_the_retry() {
    let pg = Postgres::shared();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    // The first access token stored fails as a lost connection does
    // (SQLSTATE 57P01); a sequence counts outside the aborted transaction.
    pg.psql(
        &database,
        "CREATE SEQUENCE fail_once; \
         CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF nextval('fail_once') = 1 THEN \
             RAISE EXCEPTION 'connection lost' USING ERRCODE = '57P01'; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER fail_once BEFORE INSERT ON access_tokens \
           FOR EACH ROW EXECUTE FUNCTION fail_once()",
    );
    let (verifier, challenge) = pkce();
    let location = Browser::new(&a)
        .approve(
            &code_query("bookyourticket", "view", Some(&challenge)),
            None,
        )
        .await;
    let code = code_from(&location);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, retry_after, body) =
        posted(&a, "/oauth2/token", ("bookyourticket", SECRET), &form).await;
    assert_eq!(
        (status, retry_after.as_deref(), body["error"].as_str()),
        (503, Some("1"), Some("temporarily_unavailable")),
        "{body}"
    );
    let (status, grant) = redeem(&b, &location, &verifier).await;
    assert_eq!(status, 200, "{grant}");
    let access = text(&grant, "access_token");
    assert!(active(&a, &access).await);
    let (status, body) = redeem(&a, &location, &verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        !active(&b, &access).await,
        "a replay revokes what it bought"
    );
}

/// Rows of `approval_sessions`, signed-in ones (`username` set) or all.
fn sessions_in(pg: &Postgres, database: &str, signed_in_only: bool) -> String {
    let filter = if signed_in_only {
        " WHERE username IS NOT NULL"
    } else {
        ""
    };
    pg.psql(
        database,
        &format!("SELECT count(*) FROM approval_sessions{filter}"),
    )
}

/// The approval page's sessions live in the shared store: a browser whose
/// requests alternate between the replicas (no session affinity) logs in
/// on one, approves on the other, and the code it gets buys a token. The
/// database holds the session id's SHA-256, never the id.
#[tokio::test]
async fn login_on_one_replica_and_consent_on_the_other_issue_a_working_code() {
    let pg = Postgres::shared();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    let (verifier, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(&a);
    let page = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let logged_in = browser.via(&b).submit(&page, "login", &ALICE).await;
    assert_eq!(logged_in.status, 303, "{}", logged_in.body);
    let consent = browser.via(&a).get(logged_in.location()).await;
    assert_eq!(consent.status, 200, "{}", consent.body);
    assert!(consent.body.contains("alice"), "{}", consent.body);
    let approved = browser
        .via(&b)
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    let (status, token) = redeem(&a, approved.location(), &verifier).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "view");
    assert!(active(&b, &text(&token, "access_token")).await);

    let id = browser.cookie.clone().expect("a session cookie");
    let hash = microgateway::authz_server::tokens::hash_token(&id);
    let rows = pg.psql(
        &database,
        "SELECT string_agg(s::text, ' ') FROM approval_sessions s",
    );
    assert!(rows.contains(&hash), "{rows}");
    assert!(!rows.contains(&id), "a session id in the clear: {rows}");
}

/// A consent form is taken once across the replicas, posted again later
/// or at the same moment: two codes for the two forms rendered.
#[tokio::test]
async fn a_consent_form_is_taken_once_by_either_replica() {
    let pg = Postgres::shared();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    a_consent_form_is_taken_once(&a, &b).await;
    assert_eq!(
        pg.psql(&database, "SELECT count(*) FROM authorization_codes"),
        "2"
    );
}

/// A session past its lifetime in the store (its creation moved back by
/// the lifetime, 600 s, rather than waited for) is refused by either
/// replica: the form is refused (403, the login form again) and approves
/// nothing, and the expired row is deleted.
#[tokio::test]
async fn a_session_expired_in_the_store_is_refused_and_deleted() {
    let pg = Postgres::shared();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(&a);
    let consent = browser.login(&authorize).await;
    assert_eq!(sessions_in(&pg, &database, true), "1");
    pg.psql(
        &database,
        "UPDATE approval_sessions SET expires_at = expires_at - 600",
    );
    let refused = browser
        .via(&b)
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.headers.get("location").is_none());
    assert!(refused.form().text_inputs.contains(&"username".to_owned()));
    assert_eq!(
        pg.psql(&database, "SELECT count(*) FROM authorization_codes"),
        "0"
    );
    assert_eq!(sessions_in(&pg, &database, true), "0", "deleted");
    // The refusal started a new, anonymous session: back to the login form.
    let again = browser
        .via(&a)
        .get(&format!("/oauth2/authorize?{authorize}"))
        .await;
    assert!(again.form().text_inputs.contains(&"username".to_owned()));
}

/// A sign-in is bound to the credential alice logged in with, on every
/// replica: after a reload of both that changes her password, or removes
/// her, the session she signed in on approves nothing on either (the
/// store's row still names her), and no code is issued.
#[tokio::test]
async fn a_changed_password_or_a_removed_user_ends_the_sign_in_on_every_replica() {
    let pg = Postgres::shared();
    let shared = tempfile::tempdir().unwrap();
    let database = pg.create_database();
    let yaml = yaml(&pg.url(&database), shared.path());
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(&a);
    let consent = browser.login(&authorize).await;
    let [changed, removed] = alice_changed_and_removed();
    for (generation, entry) in [(2, &changed), (3, &removed)] {
        for gw in [&a, &b] {
            gw.write_config(&with_alice_as(&yaml, entry));
            gw.wait_generation(generation).await;
        }
        for gw in [&a, &b] {
            let refused = browser
                .via(gw)
                .submit(&consent, "approve", &[("grant_scope", "view")])
                .await;
            assert_back_to_login(&refused);
            // The session is found, its sign-in not trusted.
            assert_eq!(refused.status, 200, "{}", refused.body);
            assert!(refused.body.contains("Please sign in first."));
        }
        assert_eq!(sessions_in(&pg, &database, true), "1", "kept, not trusted");
    }
    assert_eq!(
        pg.psql(&database, "SELECT count(*) FROM authorization_codes"),
        "0"
    );
}

/// An id planted before login (session fixation) is worth nothing after
/// the login, on either replica, even with the signed-in session's CSRF
/// token: the login deleted its session from the store.
#[tokio::test]
async fn a_session_id_from_before_login_is_worthless_after_login_on_the_other_replica() {
    let pg = Postgres::shared();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut victim = Browser::new(&a);
    let page = victim.get(&format!("/oauth2/authorize?{authorize}")).await;
    let planted = victim.cookie.clone().expect("a session cookie");
    let logged_in = victim.via(&b).submit(&page, "login", &ALICE).await;
    assert_eq!(logged_in.status, 303, "{}", logged_in.body);
    assert_ne!(victim.cookie.as_deref(), Some(planted.as_str()));
    let consent = victim.via(&a).get(logged_in.location()).await;
    assert!(consent.body.contains("alice"), "{}", consent.body);

    for gw in [&a, &b] {
        let mut attacker = Browser::new(gw);
        attacker.cookie = Some(planted.clone());
        let refused = attacker
            .submit(&consent, "approve", &[("grant_scope", "view")])
            .await;
        assert_eq!(refused.status, 403, "{}", refused.body);
        assert!(refused.headers.get("location").is_none());
        attacker.cookie = Some(planted.clone());
        let shown = attacker
            .get(&format!("/oauth2/authorize?{authorize}"))
            .await;
        assert!(
            shown.form().text_inputs.contains(&"username".to_owned()),
            "not signed in as alice: {}",
            shown.body
        );
    }
    assert_eq!(
        pg.psql(&database, "SELECT count(*) FROM authorization_codes"),
        "0"
    );
    let hash = microgateway::authz_server::tokens::hash_token(&planted);
    assert_eq!(
        pg.psql(
            &database,
            &format!("SELECT count(*) FROM approval_sessions WHERE hash = '{hash}'")
        ),
        "0"
    );
}

/// With the database down, the approval page cannot confirm a session, so
/// it accepts no form: a consent is refused with a page that says so (503,
/// `Retry-After`, no redirect, nothing issued), and so is the login page.
/// Once the database is back the same form approves.
#[tokio::test]
async fn the_store_unreachable_refuses_the_approval_form_with_a_clear_error() {
    let pg = Postgres::start();
    let (_shared, a, b, database) = replicas_on(&pg).await;
    let (verifier, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(&a);
    let consent = browser.login(&authorize).await;
    pg.stop();
    let refused = browser
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.headers.get("location").is_none());
    assert!(
        refused
            .body
            .contains("Signing in is not possible right now"),
        "{}",
        refused.body
    );
    assert!(!refused.body.contains("<form"), "{}", refused.body);
    let page = browser
        .via(&b)
        .get(&format!("/oauth2/authorize?{authorize}"))
        .await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(!page.body.contains("<form"), "{}", page.body);

    pg.resume();
    assert_eq!(
        pg.psql(&database, "SELECT count(*) FROM authorization_codes"),
        "0"
    );
    let approved = browser
        .via(&b)
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    let (status, body) = redeem(&a, approved.location(), &verifier).await;
    assert_eq!(status, 200, "{body}");
}

/// A database that stops answering (a stopped server, a dropped network
/// path) holds a request for one store call's timeout, not for each of
/// its calls in turn; once a call ran out of time, requests are refused
/// at once (503) until the database answers again, which the gateway
/// notices by itself.
#[tokio::test]
async fn a_hung_database_holds_a_request_once_and_then_refuses_at_once() {
    let pg = Postgres::start();
    let shared = tempfile::tempdir().unwrap();
    let database = pg.create_database();
    let gw = Gateway::start(&yaml(&pg.url(&database), shared.path())).await;
    let (status, body) = password_grant(&gw, "wonderland").await;
    assert_eq!(status, 200, "{body}");

    let frozen = pg.freeze();
    // A password grant makes several store calls: only the first waits.
    let (status, body) = tokio::time::timeout(
        OPERATION_TIMEOUT * 2 - Duration::from_secs(1),
        password_grant(&gw, "wonderland"),
    )
    .await
    .expect("one store call's timeout, not one for each call");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let (status, body) = tokio::time::timeout(
        OPERATION_TIMEOUT - Duration::from_secs(1),
        password_grant(&gw, "wonderland"),
    )
    .await
    .expect("refused without waiting for the database");
    assert_eq!(status, 503, "{body}");

    drop(frozen);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = password_grant(&gw, "wonderland").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "the store never came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn refresh_limit_counts_across_replicas() {
    let pg = Postgres::shared();
    let (_shared, a, b) = replicas(&pg).await;
    let (_, grant) = password_grant(&a, "wonderland").await;
    let mut current = text(&grant, "refresh_token");
    for (i, gw) in [&b, &a].into_iter().enumerate() {
        let (status, body) = refresh(gw, &current).await;
        assert_eq!(status, 200, "refresh {i}: {body}");
        current = text(&body, "refresh_token");
    }
    let (status, last) = refresh(&b, &current).await;
    assert_eq!(status, 200, "{last}");
    assert!(last.get("refresh_token").is_none(), "third of 3: {last}");
    assert!(active(&a, &text(&last, "access_token")).await);
}

/// Two gateways on one database whose client `app` may retry a refresh
/// within 30 s and whose client `strict` may not
/// (`local_authorization_server::reuse_yaml`).
async fn reuse_replicas(pg: &Postgres) -> (Gateway, Gateway) {
    let yaml = reuse_yaml(&pg.url(&pg.create_database()));
    (Gateway::start(&yaml).await, Gateway::start(&yaml).await)
}

/// The answer of a refresh on one replica lost, the client retries on the
/// other: a retry, not reuse.
#[tokio::test]
async fn a_lost_refresh_answer_is_retried_on_the_other_replica() {
    let pg = Postgres::shared();
    let (a, b) = reuse_replicas(&pg).await;
    a_lost_refresh_answer_is_retried(&a, &b).await;
}

/// Two refreshes with one token read it unspent on two replicas, then
/// wait for its family (held here): the first to go on rotates it, the
/// other finds it rotated when it writes — a client that gave up waiting
/// for the first — and is answered as a retry, not as reuse.
#[tokio::test]
async fn a_refresh_that_lost_the_race_to_its_rotation_is_a_retry() {
    use microgateway::authz_server::store::FAMILY_LOCK;
    let pg = Postgres::shared();
    let database = pg.create_database();
    let yaml = reuse_yaml(&pg.url(&database));
    let (a, b) = (Gateway::start(&yaml).await, Gateway::start(&yaml).await);
    let (_, r0) = signed_in(&a, "app").await;
    let family = pg.psql(&database, "SELECT family FROM refresh_tokens");
    let holder = pg.session(&database).await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&FAMILY_LOCK, &family],
        )
        .await
        .expect("lock");
    // This database's: other tests share the cluster.
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND wait_event = 'advisory'";
    let release = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let row = holder.query_one(waiting, &[]).await.expect("count");
            if row.get::<_, i64>(0) == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "both wait for the family"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        holder
            .execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&FAMILY_LOCK, &family],
            )
            .await
            .expect("unlock");
    };
    let (first, second, ()) = tokio::join!(
        refreshed(&a, "app", &r0),
        refreshed(&b, "app", &r0),
        release
    );
    let answers = [first, second];
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    // One of the two refresh tokens is live: the retry's.
    let mut live = 0;
    for (_, body) in &answers {
        let token = body["refresh_token"].as_str().expect("a refresh token");
        let (_, looked) = post_as(&a, "app", "/oauth2/introspect", &[("token", token)]).await;
        live += usize::from(looked["active"] == true);
    }
    assert_eq!(live, 1, "{answers:?}");
}

#[tokio::test]
async fn a_refresh_retried_on_a_replica_whose_clock_is_behind_is_a_retry() {
    let pg = Postgres::shared();
    let (a, b) = reuse_replicas(&pg).await;
    a_retry_on_a_replica_whose_clock_is_behind_is_a_retry(&a, &b).await;
}

#[tokio::test]
async fn a_refresh_retried_after_the_reuse_interval_revokes_the_family_on_every_replica() {
    let pg = Postgres::shared();
    let (a, b) = reuse_replicas(&pg).await;
    a_retry_after_the_reuse_interval_revokes_the_family(&a, &b).await;
}

#[tokio::test]
async fn a_client_with_a_reuse_interval_of_0s_detects_reuse_across_replicas() {
    let pg = Postgres::shared();
    let (a, b) = reuse_replicas(&pg).await;
    a_client_with_a_reuse_interval_of_0s_is_never_retried(&a, &b).await;
}

#[tokio::test]
async fn retries_of_a_refresh_on_two_replicas_at_once_leave_at_most_one_live_refresh_token() {
    let pg = Postgres::shared();
    let (a, b) = reuse_replicas(&pg).await;
    for _ in 0..5 {
        concurrent_retries_leave_at_most_one_live_refresh_token(&a, &b).await;
    }
}

#[tokio::test]
async fn revocation_on_one_replica_is_seen_by_the_other_at_once() {
    let pg = Postgres::shared();
    let (_shared, a, b) = replicas(&pg).await;
    let (_, grant) = password_grant(&a, "wonderland").await;
    let access = text(&grant, "access_token");
    assert!(active(&b, &access).await);
    let (status, _) = post(
        &b,
        "/oauth2/revoke",
        ("bookyourticket", SECRET),
        &[("token", access.as_str())],
    )
    .await;
    assert_eq!(status, 200);
    assert!(!active(&a, &access).await);
}

#[tokio::test]
async fn password_lockout_counts_across_replicas() {
    let pg = Postgres::shared();
    let (_shared, a, b) = replicas(&pg).await;
    for gw in [&a, &b, &a, &b, &a] {
        assert_eq!(password_grant(gw, "wrong").await.0, 400);
    }
    // Five failures over two replicas lock alice on both, even with the
    // right password.
    for gw in [&a, &b] {
        let (status, body) = password_grant(gw, "wonderland").await;
        assert_eq!(status, 429, "{body}");
    }
}

/// Guesses of a client secret spread over two replicas lock the caller's
/// address on both once they make 20 in all, though each replica saw
/// only 10: then even the right secret is refused.
#[tokio::test]
async fn client_secret_guesses_count_across_replicas() {
    let pg = Postgres::shared();
    let (_shared, a, b) = replicas(&pg).await;
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wonderland"),
        ("scope", "view"),
    ];
    for _ in 0..10 {
        for gw in [&a, &b] {
            let (status, body) =
                post(gw, "/oauth2/token", ("bookyourticket", "guess"), &form).await;
            assert_eq!(
                (status, body["error"].as_str()),
                (401, Some("invalid_client"))
            );
        }
    }
    for gw in [&a, &b] {
        let (status, retry_after, body) =
            posted(gw, "/oauth2/token", ("bookyourticket", SECRET), &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (429, Some("invalid_client")),
            "{body}"
        );
        let retry_after: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
}

/// Guesses sent at once to one replica (its jobs run as many at a time as
/// its pool has connections) are not all checked before the first failure
/// is counted: with a hash of the default cost (a check takes
/// milliseconds, as in production), no more of a user's passwords are
/// tried than the lock has room for; the rest are refused unchecked. On a
/// starved CPU, where the checks (one at a time on two cores) take seconds,
/// a guess may instead wait longer for a worker than a request waits: it
/// gets the documented busy answer, also unchecked.
#[tokio::test]
async fn concurrent_password_guesses_are_checked_no_further_than_the_lock() {
    use argon2::PasswordHasher;
    let pg = Postgres::shared();
    let shared = tempfile::tempdir().unwrap();
    let database = pg.create_database();
    let expensive = argon2::Argon2::default()
        .hash_password(b"target-right-pw")
        .expect("hash")
        .to_string();
    let yaml = with_target(&yaml(&pg.url(&database), shared.path()), &expensive);
    let gw = &Gateway::start(&yaml).await;
    let guesses: Vec<String> = (0..16).map(|n| format!("guess-{n}")).collect();
    let replies = join_all(guesses.iter().map(|guess| target_password(gw, guess))).await;
    let checked = replies.iter().filter(|reply| reply.0 == 400).count();
    assert!(
        checked <= 5,
        "{checked} of target's passwords were tried: {replies:?}"
    );
    for reply in &replies {
        let (status, retry_after, body) = reply;
        let expected = match status {
            400 => ("invalid_grant", "wrong username or password"),
            429 => ("invalid_grant", "too many failed attempts; retry later"),
            503 => (
                "temporarily_unavailable",
                "the authorization server is busy; try again",
            ),
            other => panic!("{other}: {replies:?}"),
        };
        assert_eq!(
            (body["error"].as_str(), body["error_description"].as_str()),
            (Some(expected.0), Some(expected.1)),
            "{replies:?}"
        );
        if *status == 503 {
            assert_eq!(retry_after.as_deref(), Some("1"), "{replies:?}");
        }
    }
    // Guesses sent one by one after the burst are checked until the
    // checked ones make five in all, and no further: then even the right
    // password is refused.
    let mut tried = checked;
    for _ in checked..5 {
        let (status, _, body) = target_password(gw, "one-more-guess").await;
        assert_eq!(status, 400, "{body}");
        tried += 1;
    }
    let (status, retry_after, body) = target_password(gw, "target-right-pw").await;
    assert_eq!(status, 429, "after {tried} tried: {body}");
    assert!(retry_after.is_some(), "{body}");
}

/// `yaml` with a user more, `target`, whose password hash is `hash`.
fn with_target(yaml: &str, hash: &str) -> String {
    yaml.replacen(
        "  clients:\n",
        &format!("  - {{ username: target, password_hash: \"{hash}\" }}\n  clients:\n"),
        1,
    )
}

/// A flood of password grants for a user whose hash is costly (each check
/// a good part of a second, one at a time on two cores): the requests that
/// check no password (introspection here) are answered at once all the
/// same. The grants wait for their turn at Argon2 holding no worker (and
/// no connection of the pool); before, they held every worker and an
/// introspection queued behind all of them, past the bound of the wait,
/// and got the busy 503. Each grant is answered with a token or with that
/// documented busy answer, nothing else.
#[tokio::test]
async fn a_flood_of_password_checks_leaves_the_workers_to_other_requests() {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
    let pg = Postgres::shared();
    let shared = tempfile::tempdir().unwrap();
    let database = pg.create_database();
    let params = Params::new(64 * 1024, 4, 1, None).expect("params");
    let costly = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(b"target-right-pw")
        .expect("hash")
        .to_string();
    let yaml = with_target(&yaml(&pg.url(&database), shared.path()), &costly);
    let gw = &Gateway::start(&yaml).await;
    let (status, body) = password_grant(gw, "wonderland").await;
    assert_eq!(status, 200, "{body}");
    let token = text(&body, "access_token");
    let mut flood: FuturesUnordered<_> = (0..40)
        .map(|_| target_password(gw, "target-right-pw"))
        .collect();
    // Once a grant is answered, the others are in line behind it.
    let first = flood.next().await.expect("answered");
    let grants = RefCell::new(vec![first]);
    let drain = async {
        while let Some(grant) = flood.next().await {
            grants.borrow_mut().push(grant);
        }
    };
    let introspections = async {
        let form = [("token", token.as_str())];
        let mut answers = Vec::new();
        for _ in 0..5 {
            let introspector = ("introspector", "intro-secret");
            answers.push(post(gw, "/oauth2/introspect", introspector, &form).await);
        }
        // Before, they were answered only once the grants in line before
        // them had waited out their bound (and been refused as busy).
        let busy = grants
            .borrow()
            .iter()
            .filter(|grant| grant.0 == 503)
            .count();
        assert_eq!(busy, 0, "the introspections waited behind the grants");
        answers
    };
    let (answers, ()) = tokio::join!(introspections, drain);
    for (status, body) in &answers {
        assert_eq!(*status, 200, "introspection during the flood: {body}");
        assert_eq!(body["active"], true, "{body}");
    }
    let grants = grants.into_inner();
    for (status, retry_after, body) in &grants {
        match status {
            200 => assert!(body["access_token"].is_string(), "{body}"),
            503 => {
                assert_eq!(body["error"], "temporarily_unavailable", "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(grants.iter().any(|grant| grant.0 == 200), "{grants:?}");
}

/// The password grant for `target` with `password`, answered.
async fn target_password(gw: &Gateway, password: &str) -> (u16, Option<String>, Value) {
    let form = [
        ("grant_type", "password"),
        ("username", "target"),
        ("password", password),
    ];
    answer(gw, &form).await
}

/// A token request's status, `Retry-After` and body.
async fn answer(gw: &Gateway, form: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    posted(gw, "/oauth2/token", ("bookyourticket", SECRET), form).await
}

/// `microgateway rotate-signing-key` on `yaml`, written into `dir`; its
/// standard output.
fn rotate_signing_key(dir: &std::path::Path, yaml: &str) -> String {
    let config = dir.join("microgateway.yaml");
    std::fs::write(&config, yaml).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .args(["rotate-signing-key", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn kids(gw: &Gateway) -> Vec<String> {
    let jwks: Value = gw.get("/oauth2/jwks").await.json().await.unwrap();
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| text(k, "kid"))
        .collect()
}

/// The signing keys live in the database: one key, made by whichever
/// replica came first, published alike by both (no key file is written);
/// `microgateway rotate-signing-key` adds a new one that both publish at
/// once and sign with once it is old enough for every replica to have
/// published it, the old one staying published.
#[tokio::test]
async fn replicas_share_the_stored_keys_and_follow_a_rotation() {
    let pg = Postgres::shared();
    let (shared, a, b, database) = replicas_on(&pg).await;
    let before = kids(&a).await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(kids(&b).await, before);
    assert!(!shared.path().join("signing-key.pem").exists());

    let stdout = rotate_signing_key(shared.path(), &std::fs::read_to_string(&a.config).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rotated = String::new();
    // Published at once, the old key still current (first).
    for gw in [&a, &b] {
        loop {
            let now = kids(gw).await;
            if now.len() == 2 && now[0] == before[0] {
                assert!(stdout.contains(&now[1]), "{stdout}");
                rotated = now[1].clone();
                break;
            }
            assert!(Instant::now() < deadline, "rotation seen: {now:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The new key signs once it is older than the publication delay
    // (the key's age is moved back rather than waited for).
    pg.psql(
        &database,
        &format!(
            "UPDATE signing_private_keys SET created_at = created_at - {}",
            microgateway::authz_server::KEY_PUBLISHED_BEFORE_SIGNING.as_secs()
        ),
    );
    for gw in [&a, &b] {
        loop {
            let now = kids(gw).await;
            if now == [rotated.clone(), before[0].clone()] {
                break;
            }
            assert!(Instant::now() < deadline, "rotated key current: {now:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(kids(&a).await, kids(&b).await);
}

/// A re-read of the keys that learns the current key but not the previous
/// ones (their table locked past the call's timeout) keeps the keys in
/// use: the published set does not shrink to the current key, which would
/// refuse the tokens the others signed and a rotated key not yet signing.
#[tokio::test]
async fn a_reread_that_cannot_tell_the_previous_keys_keeps_the_keys_in_use() {
    let pg = Postgres::shared();
    let (shared, a, _b, database) = replicas_on(&pg).await;
    rotate_signing_key(shared.path(), &std::fs::read_to_string(&a.config).unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while kids(&a).await.len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the rotated key was never published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let published = kids(&a).await;
    let holder = pg.session(&database).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE signing_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // Two re-reads (every 10 s), each held for its 10 s timeout or refused
    // at once while the store is silent.
    let watch_until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < watch_until {
        assert_eq!(kids(&a).await, published, "the published keys shrank");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(kids(&a).await, published);
}

/// [`yaml`] issuing JWTs, with an API that validates them in-process
/// against the local issuer.
fn jwt_yaml(url: &str, shared: &std::path::Path) -> String {
    yaml(url, shared).replace("token_format: opaque", "token_format: jwt")
        + r#"
security_settings:
  auth_servers:
  - id: local
    name: local
    type: authServerAlias
    localIntrospectionConfig:
      issuer: "http://localhost:4485"
scope_mappings:
- { auth_server: local, scope: view, api_scopes: ["Time travels:ViewTickets"] }
apis:
- name: "Time travels"
  version: "1.0"
  base_path: /travels
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  scopes:
  - { name: ViewTickets, resources: ["GET /bookings"] }
"#
}

/// JWTs from either replica pass either replica's in-process validation,
/// before and after a rotation: the keys each replica validates with
/// follow the store.
#[tokio::test]
async fn jwts_validate_across_replicas_through_a_rotation() {
    let pg = Postgres::shared();
    let shared = tempfile::tempdir().unwrap();
    let database = pg.create_database();
    let yaml = jwt_yaml(&pg.url(&database), shared.path());
    let a = Gateway::start(&yaml).await;
    let b = Gateway::start(&yaml).await;
    let call = |gw: &Gateway, token: String| {
        gw.client
            .get(gw.url("/travels/bookings"))
            .bearer_auth(token)
            .send()
    };
    let (_, grant) = password_grant(&a, "wonderland").await;
    let old = text(&grant, "access_token");
    for gw in [&a, &b] {
        assert_eq!(call(gw, old.clone()).await.unwrap().status(), 200);
    }
    rotate_signing_key(shared.path(), &yaml);
    let before = kids(&a).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for gw in [&a, &b] {
        while kids(gw).await.len() < 2 {
            assert!(Instant::now() < deadline, "rotation seen: {before:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Once old enough (moved back rather than waited for), the new key
    // signs on both.
    pg.psql(
        &database,
        &format!(
            "UPDATE signing_private_keys SET created_at = created_at - {}",
            microgateway::authz_server::KEY_PUBLISHED_BEFORE_SIGNING.as_secs()
        ),
    );
    for gw in [&a, &b] {
        while kids(gw).await.first() == before.first() {
            assert!(Instant::now() < deadline, "rotated key current: {before:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (_, grant) = password_grant(&b, "wonderland").await;
    let new = text(&grant, "access_token");
    for gw in [&a, &b] {
        assert_eq!(
            call(gw, new.clone()).await.unwrap().status(),
            200,
            "new key"
        );
        assert_eq!(
            call(gw, old.clone()).await.unwrap().status(),
            200,
            "old key"
        );
    }
}

/// After `rotate-signing-key`, replicas re-read the keys at their own pace
/// (replicas that started a few seconds apart re-read seconds apart); a JWT
/// issued by the first replica to see the new key validates on the other at
/// once, because a rotated key is published well before any replica signs
/// with it.
#[tokio::test]
async fn a_jwt_signed_right_after_a_rotation_validates_on_the_other_replica() {
    let pg = Postgres::shared();
    let shared = tempfile::tempdir().unwrap();
    let database = pg.create_database();
    let yaml = jwt_yaml(&pg.url(&database), shared.path());
    let a = Gateway::start(&yaml).await;
    // Replicas do not start in the same second (rolling deploys, autoscaling).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let b = Gateway::start(&yaml).await;
    rotate_signing_key(shared.path(), &yaml);
    // Whichever replica sees the new key first issues; the other validates.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (first, other) = loop {
        if kids(&a).await.len() == 2 {
            break (&a, &b);
        }
        if kids(&b).await.len() == 2 {
            break (&b, &a);
        }
        assert!(Instant::now() < deadline, "no replica saw the rotation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (status, grant) = password_grant(first, "wonderland").await;
    assert_eq!(status, 200, "{grant}");
    let token = text(&grant, "access_token");
    let answer = other
        .client
        .get(other.url("/travels/bookings"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "a token signed by one replica with the new key is refused by the other: {:?}",
        answer.headers().get("www-authenticate")
    );
}

/// `microgateway check` compiles the configuration without connecting.
#[test]
fn check_does_not_touch_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("microgateway.yaml");
    // Port 1 on loopback: nothing listens there.
    std::fs::write(
        &config,
        yaml(
            "postgres://mg:${env:PGPASSWORD}@127.0.0.1:1/microgateway?sslmode=disable",
            dir.path(),
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .args(["check", "--config"])
        .arg(&config)
        .env("PGPASSWORD", "very-secret")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{all}");
    assert!(!all.contains("very-secret"), "{all}");
}

/// The database holds hashes, never a token: a copy of it replays nothing.
#[tokio::test]
async fn tokens_are_hashed_at_rest() {
    let pg = Postgres::shared();
    let (_shared, a, _b, database) = replicas_on(&pg).await;
    let (_, grant) = password_grant(&a, "wonderland").await;
    let everything = pg.psql(
        &database,
        "SELECT string_agg(t::text, ' ') FROM (SELECT a::text AS t FROM access_tokens a \
         UNION ALL SELECT r::text FROM refresh_tokens r) rows",
    );
    assert!(everything.contains("alice"), "{everything}");
    for key in ["access_token", "refresh_token"] {
        let token = text(&grant, key);
        assert!(!everything.contains(&token), "{key} in the clear");
    }
}

/// Tokens issued by both replicas under load, then one replica stops: the
/// other keeps serving and knows every token issued before.
#[tokio::test]
async fn a_replica_lost_mid_load_loses_nothing() {
    let pg = Postgres::shared();
    let (_shared, a, b) = replicas(&pg).await;
    let mut issued = Vec::new();
    for round in 0..4 {
        let grants = (0..8).map(|i| password_grant(if i % 2 == 0 { &a } else { &b }, "wonderland"));
        for (status, grant) in join_all(grants).await {
            assert_eq!(status, 200, "round {round}: {grant}");
            issued.push((text(&grant, "access_token"), text(&grant, "refresh_token")));
        }
    }
    a.shutdown().await;
    for (access, _) in &issued {
        assert!(active(&b, access).await);
    }
    // Refresh tokens issued by the lost replica rotate on the survivor.
    for (_, refresh_token) in issued.iter().step_by(2).take(4) {
        let (status, body) = refresh(&b, refresh_token).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn a_database_restart_is_503_temporarily_unavailable_then_service_resumes() {
    let pg = Postgres::start();
    let (_shared, a, b) = replicas(&pg).await;
    let (status, grant) = password_grant(&a, "wonderland").await;
    assert_eq!(status, 200, "{grant}");
    let access = text(&grant, "access_token");
    pg.stop();
    for gw in [&a, &b] {
        // Started, a replica stays ready: an outage of the database would
        // otherwise take every replica out of its load balancer at once.
        assert_eq!(gw.readiness().await, 200);
        let (status, body) = password_grant(gw, "wonderland").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "temporarily_unavailable");
        let (status, body) = post(
            gw,
            "/oauth2/introspect",
            ("introspector", "intro-secret"),
            &[("token", access.as_str())],
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("temporarily_unavailable"))
        );
    }
    pg.resume();
    for gw in [&a, &b] {
        assert!(active(gw, &access).await, "nothing was lost");
        assert_eq!(password_grant(gw, "wonderland").await.0, 200);
    }
}

/// The admin API's token endpoints need the store as the OAuth endpoints
/// do, and answer its outage as they do: 503 `temporarily_unavailable`
/// with `Retry-After: 1`, then serve again once it is back.
#[tokio::test]
async fn the_admin_token_endpoints_answer_a_database_outage_with_503() {
    const ADMIN: (&str, &str) = ("Administrator", "manage-tokens-0123");
    let pg = Postgres::start();
    let shared = tempfile::tempdir().unwrap();
    let yaml = yaml(&pg.url(&pg.create_database()), shared.path()).replace(
        "admin: { port: 0, bind: 127.0.0.1 }",
        &format!(
            "admin: {{ port: 0, bind: 127.0.0.1, user: {}, password: {} }}",
            ADMIN.0, ADMIN.1
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let (status, grant) = password_grant(&gw, "wonderland").await;
    assert_eq!(status, 200, "{grant}");
    let admin = |method: reqwest::Method, path: &str| {
        gw.client
            .request(
                method,
                gw.admin_url(&format!("/rest/microgateway/oauth2/{path}")),
            )
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
    };
    let listed: Value = admin(reqwest::Method::GET, "tokens")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let id = listed["tokens"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    pg.stop();
    for (method, path) in [
        (reqwest::Method::GET, "tokens".to_owned()),
        (reqwest::Method::DELETE, format!("tokens/{id}")),
    ] {
        let response = admin(method.clone(), &path).await.expect("answer");
        assert_eq!(response.status(), 503, "{method} {path}");
        assert_eq!(response.headers()["retry-after"], "1", "{method} {path}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "temporarily_unavailable", "{method} {path}");
    }
    pg.resume();
    let response = admin(reqwest::Method::DELETE, &format!("tokens/{id}"))
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_database_unreachable_at_start_is_not_ready_until_reached() {
    let pg = Postgres::start();
    let database = pg.create_database();
    pg.stop();
    let shared = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with_env(&yaml(&pg.url(&database), shared.path()), Env::new()).await;
    assert_eq!(gw.readiness().await, 503);
    let (status, body) = password_grant(&gw, "wonderland").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable"))
    );
    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(90);
    while gw.readiness().await != 200 {
        assert!(Instant::now() < deadline, "the gateway became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(password_grant(&gw, "wonderland").await.0, 200);
}

// ------------------------------------------------------------ configuration

fn load(yaml: &str, env: &Env) -> Result<microgateway::config::Loaded, Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("microgateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    microgateway::config::load(&path, env, 1)
        .map_err(|invalid| invalid.findings.iter().map(|d| d.to_string()).collect())
}

#[test]
fn a_postgres_store_url_is_compiled_with_its_secret_and_pool() {
    let env = crate::common::env(&[("PGPASSWORD", "s3cret/:@")]);
    let loaded = load(
        r#"
authorization_server:
  store: "postgres://mg:${env:PGPASSWORD}@db.internal:6543/microgateway?sslmode=require"
  store_pool: { max_connections: 32, connect_timeout: 3s }
"#,
        &env,
    )
    .unwrap();
    let settings = loaded.snapshot.authorization_server.as_ref().unwrap();
    let pg = settings.postgres.as_ref().expect("a PostgreSQL store");
    assert_eq!(
        (
            pg.host.as_str(),
            pg.port,
            pg.user.as_str(),
            pg.dbname.as_str()
        ),
        ("db.internal", 6543, "mg", "microgateway")
    );
    assert_eq!(pg.password.as_ref().unwrap().expose(), "s3cret/:@");
    assert_eq!(pg.tls, microgateway::config::authz::PgTls::Require);
    assert_eq!(
        (pg.max_connections, pg.connect_timeout),
        (32, Duration::from_secs(3))
    );
    let shown = format!("{pg:?} {}", pg.display());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert_eq!(
        pg.display(),
        "postgres://mg:****@db.internal:6543/microgateway"
    );

    // Defaults: port 5432, host name verified, 16 connections, 2 s.
    let loaded = load(
        "authorization_server:\n  store: postgresql://mg:pa%40ss@[::1]/gw\n",
        &Env::new(),
    )
    .unwrap();
    let pg = loaded.snapshot.authorization_server.as_ref().unwrap();
    let pg = pg.postgres.as_ref().unwrap();
    assert_eq!((pg.host.as_str(), pg.port), ("::1", 5432));
    assert_eq!(pg.password.as_ref().unwrap().expose(), "pa@ss");
    assert_eq!(pg.tls, microgateway::config::authz::PgTls::VerifyFull);
    assert_eq!(
        (pg.max_connections, pg.connect_timeout),
        (16, Duration::from_secs(2))
    );
}

#[test]
fn a_wrong_postgres_store_is_refused_without_showing_the_password() {
    for (yaml, expected) in [
        (
            "store: \"postgres://mg:hunter2@db/gw?sslmode=prefer\"",
            "sslmode `prefer` is not supported",
        ),
        ("store: \"postgres://mg:hunter2@db\"", "names no database"),
        ("store: \"postgres://db/gw\"", "names no user"),
        ("store: \"postgres://mg:@db/gw\"", "the password is empty"),
        (
            "store: \"postgres://mg:hunter2@db:99999/gw\"",
            "is not a port number",
        ),
        (
            "store: \"postgres://mg:hunter2@db/gw?options=x\"",
            "`options` is not supported",
        ),
        // An unencoded `?` in the password is no query's start.
        (
            "store: \"postgres://mg:hun?ter2@db/gw?options=x\"",
            "`options` is not supported",
        ),
        (
            "store: \"postgres://mg:hunter?2=x@db/gw?options=x\"",
            "`options` is not supported",
        ),
        (
            "store: \"mysql://mg:hunter2@db/gw\"",
            "store `mysql://mg:****@db/gw` is not supported",
        ),
        ("store: \"postgres://mg:${env:NOPE}@db/gw\"", "password:"),
        (
            "store: \"postgres://mg@db/gw\"\n  store_pool: { max_connections: 0 }",
            "max_connections is out of range",
        ),
        (
            "store_pool: { max_connections: 4 }",
            "store_pool is only for a PostgreSQL store",
        ),
        (
            "store: sqlite:oauth.db\n  store_pool: { max_connections: 4 }",
            "store_pool is only for a PostgreSQL store",
        ),
    ] {
        let findings =
            load(&format!("authorization_server:\n  {yaml}\n"), &Env::new()).expect_err(yaml);
        let all = findings.join("\n");
        assert!(all.contains(expected), "{yaml}: {all}");
        for part in ["hunter2", "ter2", "hunter?2"] {
            assert!(!all.contains(part), "{yaml}: {all}");
        }
    }
}

// ------------------------------------------------------------ TLS

/// A server that takes TLS only, its certificate for `localhost` from a
/// private CA: `verify-full` with that CA (`sslrootcert`) connects to
/// `localhost` and not to `127.0.0.1` (name mismatch); `require` checks the
/// chain only; without the CA nothing connects.
#[test]
fn the_store_reaches_the_database_over_verified_tls() {
    crate::common::crypto();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let pg = Postgres::start_tls(&server.pem(), &server_key.serialize_pem());
    let database = pg.create_database();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other_ca.cert.pem()).unwrap();

    let store_at = |host: &str, mode: &str, ca: &std::path::Path| {
        let yaml = format!(
            "authorization_server:\n  store: \"postgres://postgres@{host}:{}/{database}?sslmode={mode}&sslrootcert={}\"\n",
            pg.port,
            ca.display()
        );
        let loaded = load(&yaml, &Env::new()).unwrap();
        let settings = loaded.snapshot.authorization_server.as_ref().unwrap();
        microgateway::authz_server::store::PostgresStore::open(settings.postgres.as_ref().unwrap())
            .unwrap()
    };
    use microgateway::authz_server::store::TokenStore;
    assert!(store_at("localhost", "verify-full", &ca_file).is_ready());
    assert!(store_at("127.0.0.1", "require", &ca_file).is_ready());
    assert!(
        !store_at("127.0.0.1", "verify-full", &ca_file).is_ready(),
        "name mismatch"
    );
    assert!(
        !store_at("localhost", "verify-full", &other_file).is_ready(),
        "unknown CA"
    );
    assert!(
        !store_at("localhost", "require", &other_file).is_ready(),
        "unknown CA"
    );
    // The server takes no plain connection.
    let plain = format!(
        "authorization_server:\n  store: \"postgres://postgres@localhost:{}/{database}?sslmode=disable\"\n",
        pg.port
    );
    let loaded = load(&plain, &Env::new()).unwrap();
    let settings = loaded.snapshot.authorization_server.as_ref().unwrap();
    let store =
        microgateway::authz_server::store::PostgresStore::open(settings.postgres.as_ref().unwrap());
    assert!(store.is_err() || !store.unwrap().is_ready());
}
