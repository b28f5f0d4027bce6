//! Opaque tokens against a real RFC 7662 endpoint on loopback: what is
//! accepted, what is cached and for how long, what becomes a 503, and what
//! the endpoint receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use microgateway::auth::cache::IntrospectionCache;
use microgateway::auth::introspection::{
    ClientAuth, ClientSecret, IntrospectionSettings, Introspector,
};
use microgateway::auth::{AuthFailure, TokenProblem};
use reqwest::Url;
use tokio::net::TcpListener;

/// What the endpoint answers next.
#[derive(Clone)]
enum Answer {
    Json(StatusCode, String),
    /// Answers after a delay.
    Slow(Duration, String),
    /// A body of `count` chunks of `size` bytes, without Content-Length.
    Chunked {
        size: usize,
        count: usize,
    },
}

fn json(body: &str) -> Answer {
    Answer::Json(StatusCode::OK, body.to_owned())
}

/// What the endpoint received.
#[derive(Clone, Debug)]
struct Received {
    authorization: Option<String>,
    content_type: Option<String>,
    body: String,
}

/// An introspection endpoint that counts calls and records them.
struct Endpoint {
    url: Url,
    calls: Arc<AtomicUsize>,
    answer: Arc<Mutex<Answer>>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Endpoint {
    async fn start(answer: Answer) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let endpoint = Endpoint {
            url: Url::parse(&format!("http://{addr}/oauth2/introspect")).expect("url"),
            calls: Arc::default(),
            answer: Arc::new(Mutex::new(answer)),
            received: Arc::default(),
        };
        let (calls, answer, received) = (
            Arc::clone(&endpoint.calls),
            Arc::clone(&endpoint.answer),
            Arc::clone(&endpoint.received),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (calls, answer, received) = (
                    Arc::clone(&calls),
                    Arc::clone(&answer),
                    Arc::clone(&received),
                );
                let service = hyper::service::service_fn(move |req| {
                    let (calls, answer, received) = (
                        Arc::clone(&calls),
                        Arc::clone(&answer),
                        Arc::clone(&received),
                    );
                    async move { respond(req, &calls, &answer, &received).await }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        endpoint
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().expect("lock") = answer;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last(&self) -> Received {
        self.received
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("the endpoint was called")
    }
}

async fn respond(
    req: Request<Incoming>,
    calls: &AtomicUsize,
    answer: &Mutex<Answer>,
    received: &Mutex<Vec<Received>>,
) -> Result<Response<BoxBody<Bytes, Infallible>>, Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let header = |name| {
        req.headers()
            .get(name)
            .map(|v: &hyper::header::HeaderValue| v.to_str().expect("ascii").to_owned())
    };
    let authorization = header(hyper::header::AUTHORIZATION);
    let content_type = header(hyper::header::CONTENT_TYPE);
    let body = req.into_body().collect().await.expect("body").to_bytes();
    received.lock().expect("lock").push(Received {
        authorization,
        content_type,
        body: String::from_utf8(body.to_vec()).expect("utf-8 form"),
    });
    let answer = answer.lock().expect("lock").clone();
    let (status, body) = match answer {
        Answer::Json(status, body) => (status, Full::new(Bytes::from(body)).boxed()),
        Answer::Slow(delay, body) => {
            tokio::time::sleep(delay).await;
            (StatusCode::OK, Full::new(Bytes::from(body)).boxed())
        }
        Answer::Chunked { size, count } => {
            let chunk = Bytes::from(vec![b' '; size]);
            let frames = futures_util::stream::iter(
                (0..count).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
            );
            (StatusCode::OK, StreamBody::new(frames).boxed())
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn settings(endpoint: &Endpoint) -> IntrospectionSettings {
    IntrospectionSettings::new(endpoint.url.clone(), "gateway", ClientSecret::new("secret"))
}

fn introspector(
    id: &str,
    settings: IntrospectionSettings,
    cache: &Arc<IntrospectionCache>,
) -> Introspector {
    Introspector::new(
        id.into(),
        settings,
        reqwest::Client::new(),
        Arc::clone(cache),
    )
}

fn cache() -> Arc<IntrospectionCache> {
    Arc::new(IntrospectionCache::new(100_000))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

const ACTIVE: &str = r#"{"active":true,"scope":"view book","client_id":"app","sub":"alice"}"#;

fn assert_unavailable(
    result: Result<std::sync::Arc<microgateway::auth::Principal>, AuthFailure>,
) -> String {
    match result {
        Err(AuthFailure::Unavailable { auth_server, cause }) => {
            assert_eq!(&*auth_server, "local");
            cause
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn active_answer_becomes_the_principal() {
    let endpoint = Endpoint::start(json(ACTIVE)).await;
    let gate = introspector("local", settings(&endpoint), &cache());
    let who = gate
        .validate("tok", SystemTime::now())
        .await
        .expect("active");
    assert_eq!(&*who.auth_server, "local");
    assert_eq!(who.token_scopes, ["view", "book"]);
    assert_eq!(who.client_id.as_deref(), Some("app"));
    assert_eq!(who.user_name.as_deref(), Some("alice"));
}

#[tokio::test]
async fn thousand_sequential_validations_make_one_call() {
    let endpoint = Endpoint::start(json(ACTIVE)).await;
    let gate = introspector("local", settings(&endpoint), &cache());
    for _ in 0..1_000 {
        gate.validate("tok", SystemTime::now())
            .await
            .expect("active");
    }
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_uses_make_one_call() {
    let endpoint = Endpoint::start(Answer::Slow(Duration::from_millis(200), ACTIVE.into())).await;
    let gate = Arc::new(introspector("local", settings(&endpoint), &cache()));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.validate("tok", SystemTime::now()).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("active");
    }
    assert_eq!(endpoint.calls(), 1);
}

/// Without a leeway, so that the endpoint's stale answer is refused.
#[tokio::test]
async fn positive_entry_ends_at_exp_before_cache_ttl() {
    let exp = unix_now() + 2;
    let endpoint = Endpoint::start(json(&format!(r#"{{"active":true,"exp":{exp}}}"#))).await;
    let mut settings = settings(&endpoint);
    settings.leeway = Duration::ZERO;
    let gate = introspector("local", settings, &cache());
    gate.validate("tok", SystemTime::now())
        .await
        .expect("active");
    gate.validate("tok", SystemTime::now())
        .await
        .expect("cached");
    assert_eq!(endpoint.calls(), 1);

    let past_exp = UNIX_EPOCH + Duration::from_secs(exp) + Duration::from_millis(100);
    let wait = past_exp
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(wait).await;
    // The entry is gone (cache_ttl is 60 s): the endpoint is asked again, and
    // its stale `active: true` does not beat `exp`.
    assert_eq!(
        gate.validate("tok", SystemTime::now()).await,
        Err(AuthFailure::Invalid(TokenProblem::Expired))
    );
    assert_eq!(endpoint.calls(), 2);
}

/// RFC 7519 §4.1.4 with the leeway, as for JWTs: a cached principal is
/// accepted up to `exp` plus the leeway, and refused from then on.
#[tokio::test]
async fn cached_principal_is_refused_once_now_reaches_exp_plus_the_leeway() {
    let exp = unix_now() + 30;
    let endpoint = Endpoint::start(json(&format!(r#"{{"active":true,"exp":{exp}}}"#))).await;
    let mut settings = settings(&endpoint);
    settings.leeway = Duration::from_secs(10);
    let gate = introspector("local", settings, &cache());
    gate.validate("tok", SystemTime::now())
        .await
        .expect("active");
    let at_exp = UNIX_EPOCH + Duration::from_secs(exp);
    let leeway = Duration::from_secs(10);
    gate.validate("tok", at_exp)
        .await
        .expect("within the leeway");
    gate.validate("tok", at_exp + leeway - Duration::from_millis(1))
        .await
        .expect("within the leeway");
    assert_eq!(
        gate.validate("tok", at_exp + leeway).await,
        Err(AuthFailure::Invalid(TokenProblem::Expired))
    );
}

/// An endpoint whose clock is behind the gateway's may answer "active"
/// about a token whose `exp` has just passed here: within the leeway
/// (60 s by default, as for JWTs) it is accepted, beyond it refused.
#[tokio::test]
async fn active_answer_with_exp_just_past_is_accepted_within_the_leeway() {
    let exp = unix_now() - 10;
    let body = format!(r#"{{"active":true,"exp":{exp}}}"#);
    let endpoint = Endpoint::start(json(&body)).await;
    let gate = introspector("local", settings(&endpoint), &cache());
    gate.validate("tok", SystemTime::now())
        .await
        .expect("within the default leeway");
    let mut settings = settings(&endpoint);
    settings.leeway = Duration::from_secs(5);
    let gate = introspector("local", settings, &cache());
    assert_eq!(
        gate.validate("tok", SystemTime::now()).await,
        Err(AuthFailure::Invalid(TokenProblem::Expired))
    );
}

#[tokio::test]
async fn active_answer_with_past_exp_is_expired_and_not_cached() {
    let exp = unix_now() - 120;
    let endpoint = Endpoint::start(json(&format!(r#"{{"active":true,"exp":{exp}}}"#))).await;
    let gate = introspector("local", settings(&endpoint), &cache());
    for _ in 0..2 {
        assert_eq!(
            gate.validate("tok", SystemTime::now()).await,
            Err(AuthFailure::Invalid(TokenProblem::Expired))
        );
    }
    assert_eq!(endpoint.calls(), 2);
}

/// RFC 7519 §4.1.5: an answer whose `nbf` is further ahead than the
/// leeway refuses the token, fresh or cached; the answer stays cached and
/// the token is accepted from `nbf` (less the leeway) on, without a call.
#[tokio::test]
async fn active_answer_before_nbf_is_not_yet_valid_until_nbf() {
    let nbf = unix_now() + 3_600;
    let endpoint = Endpoint::start(json(&format!(r#"{{"active":true,"nbf":{nbf}}}"#))).await;
    let gate = introspector("local", settings(&endpoint), &cache());
    for _ in 0..2 {
        assert_eq!(
            gate.validate("tok", SystemTime::now()).await,
            Err(AuthFailure::Invalid(TokenProblem::NotYetValid))
        );
    }
    // The default, as for JWTs.
    let leeway = Duration::from_secs(60);
    let at_nbf = UNIX_EPOCH + Duration::from_secs(nbf);
    assert_eq!(
        gate.validate("tok", at_nbf - leeway - Duration::from_secs(1))
            .await,
        Err(AuthFailure::Invalid(TokenProblem::NotYetValid))
    );
    gate.validate("tok", at_nbf - leeway)
        .await
        .expect("within the leeway");
    gate.validate("tok", at_nbf).await.expect("valid from nbf");
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test]
async fn nbf_within_the_leeway_or_past_is_accepted() {
    for nbf in [unix_now() + 30, unix_now() - 30] {
        let body = format!(r#"{{"active":true,"nbf":{nbf}}}"#);
        let endpoint = Endpoint::start(json(&body)).await;
        let gate = introspector("local", settings(&endpoint), &cache());
        gate.validate("tok", SystemTime::now())
            .await
            .expect("valid now");
    }
}

/// The issuer the auth server's JWTs are held to: an answer naming
/// another is a token of another server's; one naming none is accepted.
#[tokio::test]
async fn active_answer_of_another_issuer_is_refused() {
    let endpoint = Endpoint::start(json(ACTIVE)).await;
    let mut settings = settings(&endpoint);
    settings.issuer = Some("https://idp.example".into());
    let gate = introspector("local", settings, &cache());
    for (token, iss) in [
        ("other", r#""https://evil.example""#),
        ("slash", r#""https://idp.example/""#),
        ("array", r#"["https://idp.example"]"#),
        ("null", "null"),
    ] {
        endpoint.answer(json(&format!(r#"{{"active":true,"iss":{iss}}}"#)));
        assert_eq!(
            gate.validate(token, SystemTime::now()).await,
            Err(AuthFailure::Invalid(TokenProblem::Inactive)),
            "{iss}"
        );
    }
    endpoint.answer(json(r#"{"active":true,"iss":"https://idp.example"}"#));
    gate.validate("same", SystemTime::now())
        .await
        .expect("same issuer");
    endpoint.answer(json(ACTIVE));
    gate.validate("none", SystemTime::now())
        .await
        .expect("no iss");
}

#[tokio::test]
async fn without_a_configured_issuer_any_iss_is_accepted() {
    let body = r#"{"active":true,"iss":"https://anyone.example"}"#;
    let endpoint = Endpoint::start(json(body)).await;
    let gate = introspector("local", settings(&endpoint), &cache());
    gate.validate("tok", SystemTime::now())
        .await
        .expect("active");
}

#[tokio::test]
async fn inactive_is_cached_for_the_negative_ttl_then_asked_again() {
    let endpoint = Endpoint::start(json(r#"{"active":false}"#)).await;
    let mut settings = settings(&endpoint);
    settings.negative_cache_ttl = Duration::from_millis(300);
    let gate = introspector("local", settings, &cache());
    for _ in 0..3 {
        assert_eq!(
            gate.validate("tok", SystemTime::now()).await,
            Err(AuthFailure::Invalid(TokenProblem::Inactive))
        );
    }
    assert_eq!(endpoint.calls(), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    endpoint.answer(json(ACTIVE));
    gate.validate("tok", SystemTime::now())
        .await
        .expect("active now");
    assert_eq!(endpoint.calls(), 2);
}

/// Each answer is a 503 twice in a row (nothing cached), and a good answer
/// right after is accepted.
async fn unavailable_and_not_cached(
    answer: Answer,
    settings_for: impl Fn(&Endpoint) -> IntrospectionSettings,
) -> String {
    let endpoint = Endpoint::start(answer).await;
    let gate = introspector("local", settings_for(&endpoint), &cache());
    let cause = assert_unavailable(gate.validate("tok", SystemTime::now()).await);
    assert_unavailable(gate.validate("tok", SystemTime::now()).await);
    assert_eq!(endpoint.calls(), 2, "a failure is never cached");
    endpoint.answer(json(ACTIVE));
    gate.validate("tok", SystemTime::now())
        .await
        .expect("the endpoint is back");
    assert_eq!(endpoint.calls(), 3);
    cause
}

#[tokio::test]
async fn server_error_is_unavailable_and_not_cached() {
    let cause = unavailable_and_not_cached(
        Answer::Json(StatusCode::INTERNAL_SERVER_ERROR, ACTIVE.into()),
        settings,
    )
    .await;
    assert!(cause.contains("500"), "{cause}");
}

#[tokio::test]
async fn slow_endpoint_is_unavailable_after_the_timeout() {
    let started = tokio::time::Instant::now();
    let cause = unavailable_and_not_cached(
        Answer::Slow(Duration::from_millis(1_500), ACTIVE.into()),
        |endpoint| {
            let mut settings = settings(endpoint);
            settings.timeout = Duration::from_millis(200);
            settings
        },
    )
    .await;
    assert!(cause.contains("no answer within"), "{cause}");
    assert!(started.elapsed() < Duration::from_millis(1_400));
}

#[tokio::test]
async fn non_json_answer_is_unavailable() {
    let cause = unavailable_and_not_cached(json("active=true"), settings).await;
    assert!(cause.contains("not JSON"), "{cause}");
}

#[tokio::test]
async fn string_true_is_not_an_accept() {
    unavailable_and_not_cached(json(r#"{"active":"true","scope":"view"}"#), settings).await;
}

#[tokio::test]
async fn answers_that_are_not_an_object_with_boolean_active_are_unavailable() {
    for garbage in [
        r#"[{"active":true}]"#,
        r#"{"scope":"view"}"#,
        r#"{"active":1}"#,
        "null",
    ] {
        unavailable_and_not_cached(json(garbage), settings).await;
    }
}

/// Like `exp`, an `nbf` that is not a NumericDate in whole seconds is an
/// answer that cannot be read, not a token valid at once.
#[tokio::test]
async fn an_nbf_or_exp_that_is_no_integer_is_unavailable() {
    for garbage in [
        r#"{"active":true,"nbf":"1700000000"}"#,
        r#"{"active":true,"nbf":1700000000.5}"#,
        r#"{"active":true,"nbf":-1}"#,
        r#"{"active":true,"nbf":null}"#,
        r#"{"active":true,"exp":"1700000000"}"#,
        r#"{"active":true,"exp":1700000000.5}"#,
    ] {
        unavailable_and_not_cached(json(garbage), settings).await;
    }
}

#[tokio::test]
async fn oversized_answer_is_unavailable() {
    let padding = "x".repeat(70 * 1024);
    let body = format!(r#"{{"active":true,"pad":"{padding}"}}"#);
    let cause = unavailable_and_not_cached(json(&body), settings).await;
    assert!(cause.contains("larger than 65536"), "{cause}");
}

#[tokio::test]
async fn endless_answer_without_length_is_cut_at_the_limit() {
    let endpoint = Endpoint::start(Answer::Chunked {
        size: 16 * 1024,
        count: 1_000_000,
    })
    .await;
    let gate = introspector("local", settings(&endpoint), &cache());
    let cause = assert_unavailable(gate.validate("tok", SystemTime::now()).await);
    assert!(cause.contains("larger than 65536"), "{cause}");
}

#[tokio::test]
async fn refused_connection_is_unavailable() {
    let refusing = crate::common::Refusing::new();
    let addr: SocketAddr = refusing.addr;
    let url = Url::parse(&format!("http://{addr}/introspect")).expect("url");
    let gate = introspector(
        "local",
        IntrospectionSettings::new(url, "gateway", ClientSecret::new("secret")),
        &cache(),
    );
    let cause = assert_unavailable(gate.validate("tok", SystemTime::now()).await);
    assert!(!cause.contains("tok"), "{cause}");
}

/// A secret with every character RFC 6749 Appendix B treats specially.
const ODD_SECRET: &str = "s3:cr&t=+ %é/";
const ODD_SECRET_ENCODED: &str = "s3%3Acr%26t%3D%2B+%25%C3%A9%2F";

#[tokio::test]
async fn client_secret_basic_form_encodes_then_base64_encodes() {
    let endpoint = Endpoint::start(json(ACTIVE)).await;
    let mut settings = settings(&endpoint);
    settings.client_id = "gateway client".into();
    settings.client_secret = ClientSecret::new(ODD_SECRET);
    settings.client_auth = ClientAuth::Basic;
    let gate = introspector("local", settings, &cache());
    gate.validate("a+b/c=", SystemTime::now())
        .await
        .expect("active");
    let received = endpoint.last();
    let pair = format!("gateway+client:{ODD_SECRET_ENCODED}");
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    );
    assert_eq!(received.authorization.as_deref(), Some(expected.as_str()));
    assert_eq!(
        received.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        received.body,
        "token=a%2Bb%2Fc%3D&token_type_hint=access_token"
    );
}

#[tokio::test]
async fn client_secret_post_sends_credentials_in_the_form_only() {
    let endpoint = Endpoint::start(json(ACTIVE)).await;
    let mut settings = settings(&endpoint);
    settings.client_id = "gateway client".into();
    settings.client_secret = ClientSecret::new(ODD_SECRET);
    settings.client_auth = ClientAuth::Post;
    let gate = introspector("local", settings, &cache());
    gate.validate("tok", SystemTime::now())
        .await
        .expect("active");
    let received = endpoint.last();
    assert_eq!(received.authorization, None);
    assert_eq!(
        received.body,
        format!(
            "token=tok&token_type_hint=access_token&client_id=gateway+client&client_secret={ODD_SECRET_ENCODED}"
        )
    );
}

#[tokio::test]
async fn two_auth_servers_never_share_an_entry() {
    let accepting = Endpoint::start(json(ACTIVE)).await;
    let refusing = Endpoint::start(json(r#"{"active":false}"#)).await;
    let shared = cache();
    let a = introspector("a", settings(&accepting), &shared);
    let b = introspector("b", settings(&refusing), &shared);
    for _ in 0..3 {
        let who = a
            .validate("same", SystemTime::now())
            .await
            .expect("a accepts");
        assert_eq!(&*who.auth_server, "a");
        assert_eq!(
            b.validate("same", SystemTime::now()).await,
            Err(AuthFailure::Invalid(TokenProblem::Inactive))
        );
    }
    assert_eq!((accepting.calls(), refusing.calls()), (1, 1));
    assert_eq!(shared.len(), 2);
}

#[tokio::test]
async fn clear_auth_server_forgets_only_that_server() {
    let endpoint_a = Endpoint::start(json(ACTIVE)).await;
    let endpoint_b = Endpoint::start(json(ACTIVE)).await;
    let shared = cache();
    let a = introspector("a", settings(&endpoint_a), &shared);
    let b = introspector("b", settings(&endpoint_b), &shared);
    a.validate("tok", SystemTime::now()).await.expect("active");
    b.validate("tok", SystemTime::now()).await.expect("active");
    shared.clear_auth_server("a");
    endpoint_a.answer(json(r#"{"active":false}"#));
    assert_eq!(
        a.validate("tok", SystemTime::now()).await,
        Err(AuthFailure::Invalid(TokenProblem::Inactive))
    );
    b.validate("tok", SystemTime::now())
        .await
        .expect("still cached");
    assert_eq!((endpoint_a.calls(), endpoint_b.calls()), (2, 1));
}

/// An endpoint holding its answers, limited to `max_in_flight: 1` with
/// `queue_wait`: the validator, and the endpoint once it holds one call.
async fn one_call_held(
    queue_wait: Duration,
) -> (crate::common::idp::Introspector, Arc<Introspector>) {
    let endpoint = crate::common::idp::Introspector::counting().await;
    endpoint.answer_all(crate::common::idp::Answer::Json(ACTIVE.into()));
    endpoint.hold();
    let mut settings = IntrospectionSettings::new(
        Url::parse(&endpoint.endpoint()).expect("url"),
        "gateway",
        ClientSecret::new("secret"),
    );
    settings.max_in_flight = 1;
    settings.queue_wait = queue_wait;
    settings.timeout = Duration::from_secs(60);
    (
        endpoint,
        Arc::new(introspector("local", settings, &cache())),
    )
}

/// Waits, at most 10 s, until `endpoint` has been called `calls` times.
async fn called(endpoint: &crate::common::idp::Introspector, calls: usize) {
    for _ in 0..400 {
        if endpoint.calls() >= calls {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the endpoint was not called {calls} times");
}

/// A new token over the calls in flight waits for one to end, and is
/// introspected then: a burst of new tokens is served in turn.
#[tokio::test]
async fn a_call_over_the_limit_is_made_when_one_in_flight_ends() {
    let (endpoint, gate) = one_call_held(Duration::from_secs(30)).await;
    let first = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.validate("first", SystemTime::now()).await }
    });
    called(&endpoint, 1).await;
    let second = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.validate("second", SystemTime::now()).await }
    });
    // A token of another auth server, asked after the second, has permits
    // of its own: once it reaches the endpoint, the second would have too.
    let mut probe_settings = IntrospectionSettings::new(
        Url::parse(&endpoint.endpoint()).expect("url"),
        "gateway",
        ClientSecret::new("secret"),
    );
    probe_settings.timeout = Duration::from_secs(60);
    let probe = introspector("other", probe_settings, &cache());
    let probe = tokio::spawn(async move { probe.validate("probe", SystemTime::now()).await });
    called(&endpoint, 2).await;
    assert_eq!(endpoint.calls_for("probe"), 1);
    assert_eq!(
        endpoint.calls_for("second"),
        0,
        "the second waits for the first"
    );
    endpoint.release();
    let bound = Duration::from_secs(10);
    for task in [first, second, probe] {
        let done = tokio::time::timeout(bound, task).await.expect("answered");
        done.expect("task").expect("active");
    }
    assert_eq!(endpoint.calls_for("second"), 1);
    assert_eq!(endpoint.calls(), 3);
}

/// One that finds no call ending within `queue_wait` is unavailable (503)
/// without a call, while the one in flight still waits for its answer.
#[tokio::test]
async fn a_call_over_the_limit_gives_up_after_the_queue_wait() {
    let (endpoint, gate) = one_call_held(Duration::from_millis(100)).await;
    let first = tokio::spawn({
        let gate = Arc::clone(&gate);
        async move { gate.validate("first", SystemTime::now()).await }
    });
    called(&endpoint, 1).await;
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        gate.validate("second", SystemTime::now()),
    )
    .await
    .expect("refused within its wait");
    let cause = assert_unavailable(refused);
    assert!(cause.contains("the limit of 1 calls in flight"), "{cause}");
    assert_eq!(endpoint.calls(), 1);
    endpoint.release();
    let done = tokio::time::timeout(Duration::from_secs(10), first).await;
    done.expect("answered").expect("task").expect("active");
    // Not cached: asked again, the second is introspected.
    gate.validate("second", SystemTime::now())
        .await
        .expect("active");
    assert_eq!(endpoint.calls(), 2);
}
