//! Local JWT validation against a real JWKS server on loopback: algorithms,
//! header and claim rules, key rotation, outages, discovery, refresh timing
//! and the verified-token cache.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use microgateway::auth::jwks::{JwksError, JwksSource, RefreshPolicy, RemoteOptions};
use microgateway::auth::jwt::{JwtRules, JwtValidator};
use microgateway::auth::{AuthFailure, TokenProblem};

// ---------------------------------------------------------------- keys

struct SigningKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    public_pem: String,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .expect("algorithms serialise")
        .as_str()
        .expect("as a string")
        .to_owned()
}

fn rsa_key(kid: &str, alg: Algorithm) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA keygen");
    let public = aws_lc_rs::rsa::PublicKey::from_der(pair.public_key_raw()).expect("RSA public");
    let parts = aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(&public);
    SigningKey {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("RSA PEM"),
        jwk: json!({"kty": "RSA", "kid": kid, "alg": alg_name(alg), "use": "sig",
                    "n": b64(&parts.n), "e": b64(&parts.e)}),
        public_pem: pair.public_key_pem(),
    }
}

fn ec_key(kid: &str, alg: Algorithm) -> SigningKey {
    let (rcgen_alg, crv, len) = match alg {
        Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256", 32),
        _ => (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384", 48),
    };
    let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("EC keygen");
    let point = pair.public_key_raw();
    let (x, y) = point[1..].split_at(len);
    SigningKey {
        kid: kid.into(),
        alg,
        encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("EC PEM"),
        jwk: json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(x), "y": b64(y)}),
        public_pem: pair.public_key_pem(),
    }
}

fn ed_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 keygen");
    SigningKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_pem(pair.serialize_pem().as_bytes()).expect("Ed PEM"),
        jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "alg": "EdDSA",
                    "x": b64(pair.public_key_raw())}),
        public_pem: pair.public_key_pem(),
    }
}

fn jwks(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|key| key.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

// -------------------------------------------------------------- tokens

const NOW_SECS: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Signs `header` and `claims` exactly as given, so tests can write any header.
fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("signing");
    format!("{input}.{signature}")
}

fn header_for(key: &SigningKey) -> Value {
    json!({"alg": alg_name(key.alg), "typ": "at+jwt", "kid": key.kid})
}

fn claims_for(issuer: &str) -> Value {
    json!({"iss": issuer, "sub": "alice", "client_id": "app", "scope": "view book",
           "aud": "travels", "iat": NOW_SECS, "exp": NOW_SECS + 600})
}

fn token(key: &SigningKey, issuer: &str) -> String {
    sign_raw(
        &header_for(key),
        &claims_for(issuer),
        &key.encoding,
        key.alg,
    )
}

fn with(mut value: Value, changes: Value) -> Value {
    for (name, change) in changes.as_object().expect("changes are an object") {
        match change {
            Value::Null => value.as_object_mut().expect("object").remove(name),
            _ => value
                .as_object_mut()
                .expect("object")
                .insert(name.clone(), change.clone()),
        };
    }
    value
}

fn invalid(problem: TokenProblem) -> Result<(), AuthFailure> {
    Err(AuthFailure::Invalid(problem))
}

// ---------------------------------------------------------- JWKS server

#[derive(Default)]
struct IdpState {
    jwks: String,
    failing: bool,
    cache_control: Option<String>,
    etag: Option<String>,
    delay: Duration,
    metadata_paths: Vec<&'static str>,
    metadata_issuer: Option<String>,
    requests: HashMap<String, usize>,
}

/// A JWKS server on 127.0.0.1:0 that counts requests per path and can
/// swap its keys, fail, stall or advertise metadata on demand.
struct Idp {
    addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
}

impl Idp {
    async fn start(jwks: String) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(IdpState {
            jwks,
            ..IdpState::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let service = service_fn(move |request| respond(state.clone(), addr, request));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Idp { addr, state }
    }

    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    fn set(&self, change: impl FnOnce(&mut IdpState)) {
        change(&mut self.state.lock().expect("idp state"));
    }

    fn requests(&self, path: &str) -> usize {
        let state = self.state.lock().expect("idp state");
        state.requests.get(path).copied().unwrap_or(0)
    }
}

async fn respond(
    state: Arc<Mutex<IdpState>>,
    addr: SocketAddr,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let delay = {
        let mut state = state.lock().expect("idp state");
        *state.requests.entry(path.clone()).or_default() += 1;
        state.delay
    };
    tokio::time::sleep(delay).await;
    let state = state.lock().expect("idp state");
    let reply = |status: u16, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
        response
    };
    if state.failing {
        return Ok(reply(503, "down".into()));
    }
    if path == "/jwks" {
        let if_none_match = request.headers().get("if-none-match");
        if let (Some(etag), Some(sent)) = (&state.etag, if_none_match) {
            if sent.as_bytes() == etag.as_bytes() {
                return Ok(reply(304, String::new()));
            }
        }
        let mut response = reply(200, state.jwks.clone());
        let headers = response.headers_mut();
        headers.insert("content-type", "application/json".parse().expect("value"));
        if let Some(cache_control) = &state.cache_control {
            headers.insert("cache-control", cache_control.parse().expect("value"));
        }
        if let Some(etag) = &state.etag {
            headers.insert("etag", etag.parse().expect("value"));
        }
        return Ok(response);
    }
    if state.metadata_paths.contains(&path.as_str()) {
        let issuer = state
            .metadata_issuer
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        let metadata = json!({"issuer": issuer, "jwks_uri": format!("http://{addr}/jwks")});
        return Ok(reply(200, metadata.to_string()));
    }
    Ok(reply(404, "not found".into()))
}

// ------------------------------------------------------------- fixtures

fn options(idp: &Idp) -> RemoteOptions {
    RemoteOptions::new(idp.issuer(), Some(idp.jwks_uri()), reqwest::Client::new())
}

/// A source of auth server `name`, whose series are shown (as in the
/// gateway, while a compiled auth server of its id lives: here, one lives
/// to the end of the tests).
fn source(name: &str, options: RemoteOptions) -> Arc<JwksSource> {
    Box::leak(Box::new(microgateway::metrics::Showing::auth_server(name)));
    Arc::new(JwksSource::remote(name.into(), options))
}

fn validator(name: &str, rules: JwtRules, source: &Arc<JwksSource>) -> JwtValidator {
    JwtValidator::new(name.into(), rules, source.clone(), 10_000)
}

/// An IdP with `keys`, a loaded source and a validator for its issuer.
async fn ready(name: &str, keys: &[&SigningKey]) -> (Idp, Arc<JwksSource>, JwtValidator) {
    let idp = Idp::start(jwks(keys)).await;
    let source = source(name, options(&idp));
    source.refresh().await.expect("initial JWKS fetch");
    let validator = validator(name, JwtRules::new(idp.issuer()), &source);
    (idp, source, validator)
}

async fn check(validator: &JwtValidator, token: &str) -> Result<(), AuthFailure> {
    validator.validate(token, now()).await.map(|_| ())
}

fn refreshes(name: &str, result: &str) -> u64 {
    microgateway::metrics::get()
        .jwks_refresh
        .with_label_values(&[name, result])
        .get()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn every_algorithm_family_verifies() {
    let keys = [
        rsa_key("rs256", Algorithm::RS256),
        rsa_key("ps256", Algorithm::PS256),
        ec_key("es256", Algorithm::ES256),
        ec_key("es384", Algorithm::ES384),
        ed_key("eddsa"),
    ];
    let (idp, _source, validator) = ready("families", &keys.iter().collect::<Vec<_>>()).await;
    for key in &keys {
        let principal = validator
            .validate(&token(key, &idp.issuer()), now())
            .await
            .unwrap_or_else(|failure| panic!("{}: {failure}", key.kid));
        assert_eq!(principal.token_scopes, ["view", "book"]);
        assert_eq!(principal.client_id.as_deref(), Some("app"));
        assert_eq!(principal.user_name.as_deref(), Some("alice"));
        assert_eq!(principal.expires_at, Some(NOW_SECS + 600));
        assert_eq!(&*principal.auth_server, "families");
    }
    assert_eq!(validator.signature_verifications(), 5);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let key = ed_key("k");
    let (idp, _source, validator) = ready("alg-none", &[&key]).await;
    let header = json!({"alg": "none", "typ": "at+jwt", "kid": "k"});
    let unsigned = format!(
        "{}.{}.",
        b64(header.to_string().as_bytes()),
        b64(claims_for(&idp.issuer()).to_string().as_bytes())
    );
    assert_eq!(
        check(&validator, &unsigned).await,
        invalid(TokenProblem::DisallowedAlgorithm)
    );
}

#[tokio::test]
async fn hmac_with_the_rsa_public_key_as_secret_is_refused() {
    let key = rsa_key("k", Algorithm::RS256);
    let (idp, _source, validator) = ready("hs-confusion", &[&key]).await;
    let secret = EncodingKey::from_secret(key.public_pem.as_bytes());
    let header = json!({"alg": "HS256", "typ": "at+jwt", "kid": "k"});
    let forged = sign_raw(
        &header,
        &claims_for(&idp.issuer()),
        &secret,
        Algorithm::HS256,
    );
    assert_eq!(
        check(&validator, &forged).await,
        invalid(TokenProblem::DisallowedAlgorithm)
    );
    assert_eq!(validator.signature_verifications(), 0);
}

#[tokio::test]
async fn alg_other_than_the_keys_is_refused() {
    let key = rsa_key("k", Algorithm::RS256);
    let (idp, _source, validator) = ready("alg-mismatch", &[&key]).await;
    let header = json!({"alg": "PS256", "typ": "at+jwt", "kid": "k"});
    let token = sign_raw(
        &header,
        &claims_for(&idp.issuer()),
        &key.encoding,
        Algorithm::PS256,
    );
    assert_eq!(
        check(&validator, &token).await,
        invalid(TokenProblem::DisallowedAlgorithm)
    );
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let known = ec_key("known", Algorithm::ES256);
    let stranger = ec_key("stranger", Algorithm::ES256);
    let (idp, _source, validator) = ready("unknown-kid", &[&known]).await;
    assert_eq!(
        check(&validator, &token(&stranger, &idp.issuer())).await,
        invalid(TokenProblem::UnknownKey)
    );
}

#[tokio::test]
async fn random_kids_cause_at_most_one_fetch_per_cooldown() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    let source = source(
        "random-kids",
        RemoteOptions {
            unknown_kid_cooldown: Duration::from_secs(2),
            ..options(&idp)
        },
    );
    source.refresh().await.expect("initial fetch");
    let validator = validator("random-kids", JwtRules::new(idp.issuer()), &source);
    let forged = |n: u32| {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": format!("random-{n}")});
        sign_raw(
            &header,
            &claims_for(&idp.issuer()),
            &key.encoding,
            Algorithm::EdDSA,
        )
    };
    let tokens: Vec<String> = (0..100).map(forged).collect();
    let results =
        futures_util::future::join_all(tokens.iter().map(|token| check(&validator, token))).await;
    assert!(results
        .iter()
        .all(|result| *result == invalid(TokenProblem::UnknownKey)));
    assert_eq!(
        idp.requests("/jwks"),
        2,
        "initial fetch and one shared refetch"
    );
    for token in &tokens {
        assert_eq!(
            check(&validator, token).await,
            invalid(TokenProblem::UnknownKey)
        );
    }
    assert_eq!(idp.requests("/jwks"), 2, "no refetch within the cooldown");
    advance(Duration::from_millis(2100)).await;
    for token in &tokens[..10] {
        let _ = check(&validator, token).await;
    }
    assert_eq!(idp.requests("/jwks"), 3, "one refetch in the next cooldown");
}

/// A token whose kid is unknown waits for a fetch of the set; when that
/// fetch fails, the auth server could not say whether the key was rotated
/// in, so every request that waited for it is unavailable (503), not
/// invalid. Within the cooldown, without a fetch, the kid is unknown.
#[tokio::test]
async fn unknown_kid_whose_refetch_fails_is_unavailable() {
    let known = ed_key("known");
    let idp = Idp::start(jwks(&[&known])).await;
    let source = source(
        "refetch-fails",
        RemoteOptions {
            unknown_kid_cooldown: Duration::from_secs(2),
            ..options(&idp)
        },
    );
    source.refresh().await.expect("initial fetch");
    let validator = validator("refetch-fails", JwtRules::new(idp.issuer()), &source);
    let rotated = ec_key("rotated", Algorithm::ES256);
    let unseen = token(&rotated, &idp.issuer());
    idp.set(|state| state.failing = true);
    let results =
        futures_util::future::join_all((0..10).map(|_| validator.validate(&unseen, now()))).await;
    for result in results {
        assert!(
            matches!(
                result,
                Err(AuthFailure::Unavailable { ref auth_server, .. })
                    if &**auth_server == "refetch-fails"
            ),
            "{result:?}"
        );
    }
    assert_eq!(
        idp.requests("/jwks"),
        2,
        "initial fetch and one shared refetch"
    );
    assert_eq!(refreshes("refetch-fails", "error"), 1);
    // Within the cooldown no fetch is made: the kid is unknown.
    assert_eq!(
        check(&validator, &unseen).await,
        invalid(TokenProblem::UnknownKey)
    );
    assert_eq!(idp.requests("/jwks"), 2);
    // The known key is still trusted meanwhile.
    assert_eq!(
        check(&validator, &token(&known, &idp.issuer())).await,
        Ok(())
    );
    // Back up with the rotated key: the next cooldown's refetch finds it.
    idp.set(|state| {
        state.failing = false;
        state.jwks = jwks(&[&known, &rotated]);
    });
    advance(Duration::from_millis(2100)).await;
    assert_eq!(check(&validator, &unseen).await, Ok(()));
    assert_eq!(idp.requests("/jwks"), 3);
}

#[tokio::test]
async fn rotated_key_is_accepted_and_removed_key_refused() {
    let old = rsa_key("old", Algorithm::RS256);
    let new = ec_key("new", Algorithm::ES256);
    let (idp, source, validator) = ready("rotation", &[&old]).await;
    let old_token = token(&old, &idp.issuer());
    assert_eq!(check(&validator, &old_token).await, Ok(()));

    idp.set(|state| state.jwks = jwks(&[&new]));
    assert_eq!(check(&validator, &token(&new, &idp.issuer())).await, Ok(()));
    assert_eq!(idp.requests("/jwks"), 2, "the new kid caused one refetch");

    source.refresh().await.expect("refresh");
    assert_eq!(
        check(&validator, &old_token).await,
        invalid(TokenProblem::UnknownKey),
        "a cached token whose key left the JWKS is refused"
    );
    assert_eq!(
        check(&validator, &token(&old, &idp.issuer())).await,
        invalid(TokenProblem::UnknownKey)
    );
}

#[tokio::test]
async fn a_key_set_with_a_duplicate_kid_is_refused_and_the_last_good_one_kept() {
    let good = ed_key("k");
    let (idp, source, validator) = ready("duplicate-kid", &[&good]).await;
    // RFC 7517 §4.5: which of two keys named `k` verifies would depend on
    // the order of the document.
    let impostor = ec_key("k", Algorithm::ES256);
    idp.set(|state| state.jwks = jwks(&[&good, &impostor]));
    assert!(matches!(
        source.refresh().await,
        Err(JwksError::DuplicateKid(kid)) if kid == "k"
    ));
    assert_eq!(refreshes("duplicate-kid", "error"), 1);
    assert_eq!(
        check(&validator, &token(&good, &idp.issuer())).await,
        Ok(())
    );
    assert_eq!(
        check(&validator, &token(&impostor, &idp.issuer())).await,
        invalid(TokenProblem::DisallowedAlgorithm),
        "`k` is still the good key, which is EdDSA"
    );
}

#[tokio::test]
async fn jwks_down_at_start_is_unavailable_until_it_recovers() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| state.failing = true);
    let source = source(
        "down-at-start",
        RemoteOptions {
            unknown_kid_cooldown: Duration::from_millis(200),
            ..options(&idp)
        },
    );
    assert!(matches!(
        source.refresh().await,
        Err(JwksError::Status { status: 503, .. })
    ));
    assert!(!source.is_ready());
    assert_eq!(refreshes("down-at-start", "error"), 1);
    let validator = validator("down-at-start", JwtRules::new(idp.issuer()), &source);
    let token = token(&key, &idp.issuer());
    assert!(matches!(
        validator.validate(&token, now()).await,
        Err(AuthFailure::Unavailable { ref auth_server, .. }) if &**auth_server == "down-at-start"
    ));

    idp.set(|state| state.failing = false);
    advance(Duration::from_millis(250)).await;
    assert_eq!(check(&validator, &token).await, Ok(()));
    assert!(source.is_ready());
    assert_eq!(refreshes("down-at-start", "ok"), 1);
}

#[tokio::test]
async fn unreachable_jwks_is_unavailable_not_invalid() {
    let closed = crate::common::Refusing::new();
    let addr = closed.addr;
    let key = ed_key("k");
    let issuer = format!("http://{addr}");
    let source = source(
        "unreachable",
        RemoteOptions::new(
            issuer.clone(),
            Some(format!("{issuer}/jwks")),
            reqwest::Client::new(),
        ),
    );
    assert!(matches!(
        source.refresh().await,
        Err(JwksError::Http { .. })
    ));
    let validator = validator("unreachable", JwtRules::new(issuer.clone()), &source);
    assert!(matches!(
        check(&validator, &token(&key, &issuer)).await,
        Err(AuthFailure::Unavailable { .. })
    ));
}

#[tokio::test]
async fn jwks_down_later_keeps_the_last_good_set() {
    let key = ec_key("k", Algorithm::ES384);
    let (idp, source, validator) = ready("down-later", &[&key]).await;
    idp.set(|state| state.failing = true);
    assert!(source.refresh().await.is_err());
    assert!(source.is_ready());
    // Retries back off from a second, doubling, to at most 30 s.
    assert_eq!(source.refresh_interval(), Duration::from_secs(1));
    assert!(source.refresh().await.is_err());
    assert_eq!(source.refresh_interval(), Duration::from_secs(2));
    assert_eq!(check(&validator, &token(&key, &idp.issuer())).await, Ok(()));
    assert_eq!(refreshes("down-later", "error"), 2);
}

/// An auth server that comes up shortly after the gateway is found by the
/// background refresh within seconds, not after the 30 s retry cap.
#[tokio::test]
async fn background_refresh_finds_a_late_jwks_within_seconds() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| state.failing = true);
    let source = source("late", options(&idp));
    let task = source.spawn_refresh();
    // Fetches at 0 s, 1 s and 3 s: the third finds the set.
    until("the first fetch failed", || refreshes("late", "error") == 1).await;
    advance(Duration::from_secs(1)).await;
    until("the second fetch failed", || {
        refreshes("late", "error") == 2
    })
    .await;
    assert!(!source.is_ready());
    idp.set(|state| state.failing = false);
    advance(Duration::from_secs(2)).await;
    until("the third fetch found the set", || source.is_ready()).await;
    task.abort();
    assert_eq!(refreshes("late", "error"), 2);
}

/// Moves the tokio clock, which JWKS cooldowns and refresh waits run on,
/// forward without waiting (the clock runs on from there; sockets are
/// real, so it is paused only for the jump).
async fn advance(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Waits (at most 10 s) until `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test]
async fn garbage_oversized_or_keyless_jwks_is_an_error() {
    let key = ed_key("k");
    let idp = Idp::start("<html>not json</html>".into()).await;
    let source = source("garbage", options(&idp));
    assert!(matches!(
        source.refresh().await,
        Err(JwksError::NotAKeySet(_))
    ));

    let padding = "x".repeat(2 << 20);
    idp.set(|state| {
        state.jwks = json!({"keys": [key.jwk.clone()], "padding": padding}).to_string()
    });
    assert!(matches!(
        source.refresh().await,
        Err(JwksError::TooLarge { .. })
    ));

    idp.set(|state| state.jwks = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into());
    assert!(matches!(
        source.refresh().await,
        Err(JwksError::NoUsableKey)
    ));
    assert!(!source.is_ready());
    assert_eq!(refreshes("garbage", "error"), 3);
}

#[tokio::test]
async fn slow_jwks_fetch_times_out() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| state.delay = Duration::from_secs(3));
    let source = source(
        "slow",
        RemoteOptions {
            fetch_timeout: Duration::from_millis(300),
            ..options(&idp)
        },
    );
    let started = std::time::Instant::now();
    assert!(matches!(source.refresh().await, Err(JwksError::Timeout(_))));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn expiry_and_not_before_use_now_and_leeway() {
    let key = ed_key("k");
    let (idp, _source, validator) = ready("times", &[&key]).await;
    let sign = |changes: Value| {
        let claims = with(claims_for(&idp.issuer()), changes);
        sign_raw(&header_for(&key), &claims, &key.encoding, key.alg)
    };
    let expired = sign(json!({"exp": NOW_SECS - 61}));
    assert_eq!(
        check(&validator, &expired).await,
        invalid(TokenProblem::Expired)
    );
    let within_leeway = sign(json!({"exp": NOW_SECS - 30}));
    assert_eq!(check(&validator, &within_leeway).await, Ok(()));
    let future = sign(json!({"nbf": NOW_SECS + 120}));
    assert_eq!(
        check(&validator, &future).await,
        invalid(TokenProblem::NotYetValid)
    );
    assert!(validator.validate(&future, at(NOW_SECS + 60)).await.is_ok());
    let strict = JwtValidator::new(
        "times".into(),
        JwtRules {
            leeway: Duration::ZERO,
            ..JwtRules::new(idp.issuer())
        },
        validator.jwks().clone(),
        0,
    );
    assert_eq!(
        check(&strict, &within_leeway).await,
        invalid(TokenProblem::Expired)
    );
}

#[tokio::test]
async fn exp_is_required_and_numeric() {
    let key = ed_key("k");
    let (idp, _source, validator) = ready("exp-rules", &[&key]).await;
    let sign = |changes: Value| {
        let claims = with(claims_for(&idp.issuer()), changes);
        sign_raw(&header_for(&key), &claims, &key.encoding, key.alg)
    };
    let as_string = sign(json!({"exp": (NOW_SECS + 600).to_string()}));
    assert_eq!(
        check(&validator, &as_string).await,
        invalid(TokenProblem::MissingExpiry)
    );
    let missing = sign(json!({"exp": null}));
    assert_eq!(
        check(&validator, &missing).await,
        invalid(TokenProblem::MissingExpiry)
    );
}

#[tokio::test]
async fn issuer_must_be_the_one_configured_string() {
    let key = ed_key("k");
    let (idp, _source, validator) = ready("issuer", &[&key]).await;
    let sign = |changes: Value| {
        let claims = with(claims_for(&idp.issuer()), changes);
        sign_raw(&header_for(&key), &claims, &key.encoding, key.alg)
    };
    let other = sign(json!({"iss": "http://evil.example"}));
    assert_eq!(
        check(&validator, &other).await,
        invalid(TokenProblem::WrongIssuer)
    );
    let array = sign(json!({"iss": [idp.issuer()]}));
    assert_eq!(
        check(&validator, &array).await,
        invalid(TokenProblem::WrongIssuer)
    );
}

#[tokio::test]
async fn audience_must_be_present_when_configured() {
    let key = ed_key("k");
    let (idp, source, _) = ready("audience", &[&key]).await;
    let rules = JwtRules {
        audience: Some("travels".into()),
        ..JwtRules::new(idp.issuer())
    };
    let validator = validator("audience", rules, &source);
    let sign = |changes: Value| {
        let claims = with(claims_for(&idp.issuer()), changes);
        sign_raw(&header_for(&key), &claims, &key.encoding, key.alg)
    };
    assert_eq!(check(&validator, &sign(json!({}))).await, Ok(()));
    let wrong = sign(json!({"aud": "billing"}));
    assert_eq!(
        check(&validator, &wrong).await,
        invalid(TokenProblem::WrongAudience)
    );
    let array = sign(json!({"aud": ["billing", "travels"]}));
    let principal = validator.validate(&array, now()).await.expect("aud array");
    assert_eq!(principal.audience, ["billing", "travels"]);
    let none = sign(json!({"aud": null}));
    assert_eq!(
        check(&validator, &none).await,
        invalid(TokenProblem::WrongAudience)
    );
}

#[tokio::test]
async fn typ_must_be_at_jwt_unless_jwt_is_accepted() {
    let key = ec_key("k", Algorithm::ES256);
    let (idp, source, strict) = ready("typ", &[&key]).await;
    let lenient = validator(
        "typ",
        JwtRules {
            accept_jwt_typ: true,
            ..JwtRules::new(idp.issuer())
        },
        &source,
    );
    let sign = |changes: Value| {
        let header = with(header_for(&key), changes);
        sign_raw(&header, &claims_for(&idp.issuer()), &key.encoding, key.alg)
    };
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        let token = sign(json!({ "typ": typ }));
        assert_eq!(check(&strict, &token).await, Ok(()), "{typ}");
    }
    let jwt = sign(json!({"typ": "JWT"}));
    let missing = sign(json!({"typ": null}));
    assert_eq!(check(&strict, &jwt).await, invalid(TokenProblem::WrongType));
    assert_eq!(
        check(&strict, &missing).await,
        invalid(TokenProblem::WrongType)
    );
    assert_eq!(check(&lenient, &jwt).await, Ok(()));
    assert_eq!(check(&lenient, &missing).await, Ok(()));
    let id_token = sign(json!({"typ": "id+jwt"}));
    assert_eq!(
        check(&lenient, &id_token).await,
        invalid(TokenProblem::WrongType)
    );
}

#[tokio::test]
async fn crit_header_is_refused() {
    let key = ed_key("k");
    let (idp, _source, validator) = ready("crit", &[&key]).await;
    let header = with(header_for(&key), json!({"crit": ["exp"], "exp": 1}));
    let token = sign_raw(&header, &claims_for(&idp.issuer()), &key.encoding, key.alg);
    assert_eq!(
        check(&validator, &token).await,
        invalid(TokenProblem::CriticalHeader)
    );
}

#[tokio::test]
async fn key_urls_in_the_header_are_ignored() {
    let key = ed_key("k");
    let attacker = ed_key("k");
    let (idp, _source, validator) = ready("jku", &[&key]).await;
    let header = with(
        header_for(&attacker),
        json!({"jku": format!("{}/attacker", idp.issuer()), "x5u": format!("{}/x5u", idp.issuer()),
               "jwk": attacker.jwk.clone()}),
    );
    let token = sign_raw(
        &header,
        &claims_for(&idp.issuer()),
        &attacker.encoding,
        attacker.alg,
    );
    assert_eq!(
        check(&validator, &token).await,
        invalid(TokenProblem::BadSignature)
    );
    assert_eq!(idp.requests("/attacker") + idp.requests("/x5u"), 0);
}

#[tokio::test]
async fn tampered_payload_fails_the_signature() {
    let key = rsa_key("k", Algorithm::RS256);
    let (idp, _source, validator) = ready("tampered", &[&key]).await;
    let genuine = token(&key, &idp.issuer());
    let parts: Vec<&str> = genuine.split('.').collect();
    let more_scopes = with(
        claims_for(&idp.issuer()),
        json!({"scope": "view book admin"}),
    );
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(more_scopes.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        check(&validator, &tampered).await,
        invalid(TokenProblem::BadSignature)
    );
    assert_eq!(check(&validator, &genuine).await, Ok(()));
}

#[tokio::test]
async fn token_without_kid_needs_a_single_key_set() {
    let only = ed_key("only");
    let (idp, _source, validator) = ready("no-kid", &[&only]).await;
    let header = json!({"alg": "EdDSA", "typ": "at+jwt"});
    let token = sign_raw(
        &header,
        &claims_for(&idp.issuer()),
        &only.encoding,
        only.alg,
    );
    assert_eq!(check(&validator, &token).await, Ok(()));

    let second = ed_key("second");
    let (idp, _source, validator) = ready("no-kid-two", &[&only, &second]).await;
    let token = sign_raw(
        &header,
        &claims_for(&idp.issuer()),
        &only.encoding,
        only.alg,
    );
    assert_eq!(
        check(&validator, &token).await,
        invalid(TokenProblem::UnknownKey)
    );
}

/// RFC 9864 names EdDSA over Ed25519 "Ed25519", in the key and in the
/// token's header alike: the same algorithm as "EdDSA".
#[tokio::test]
async fn an_ed25519_token_named_by_its_fully_specified_algorithm_is_valid() {
    let mut key = ed_key("ed");
    key.jwk["alg"] = json!("Ed25519");
    let (idp, _source, validator) = ready("ed25519", &[&key]).await;
    let header = json!({"alg": "Ed25519", "typ": "at+jwt", "kid": "ed"});
    let token = sign_raw(&header, &claims_for(&idp.issuer()), &key.encoding, key.alg);
    assert_eq!(check(&validator, &token).await, Ok(()));
}

#[tokio::test]
async fn verified_cache_skips_the_signature_but_not_the_clock() {
    let key = rsa_key("k", Algorithm::PS256);
    let (idp, source, validator) = ready("cache", &[&key]).await;
    let token = token(&key, &idp.issuer());
    assert_eq!(check(&validator, &token).await, Ok(()));
    assert_eq!(validator.signature_verifications(), 1);
    let again = validator.validate(&token, now()).await.expect("cached");
    assert_eq!(again.token_scopes, ["view", "book"]);
    assert_eq!(
        validator.signature_verifications(),
        1,
        "a hit skips the signature"
    );

    let exp = NOW_SECS + 600;
    assert!(validator.validate(&token, at(exp + 59)).await.is_ok());
    assert_eq!(
        validator.validate(&token, at(exp + 60)).await.map(|_| ()),
        invalid(TokenProblem::Expired),
        "refused at exp + leeway although cached"
    );
    assert_eq!(validator.signature_verifications(), 1);

    let uncached = JwtValidator::new("cache".into(), JwtRules::new(idp.issuer()), source, 0);
    for _ in 0..3 {
        assert_eq!(check(&uncached, &token).await, Ok(()));
    }
    assert_eq!(uncached.signature_verifications(), 3);
}

#[tokio::test]
async fn jwks_uri_is_discovered_from_the_issuer() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| state.metadata_paths = vec!["/.well-known/oauth-authorization-server"]);
    let source = source(
        "discovery",
        RemoteOptions::new(idp.issuer(), None, reqwest::Client::new()),
    );
    source.refresh().await.expect("discovered JWKS");
    let validator = validator("discovery", JwtRules::new(idp.issuer()), &source);
    assert_eq!(check(&validator, &token(&key, &idp.issuer())).await, Ok(()));
    assert_eq!(idp.requests("/.well-known/oauth-authorization-server"), 1);
    assert_eq!(idp.requests("/.well-known/openid-configuration"), 0);
    source.refresh().await.expect("second fetch");
    assert_eq!(
        idp.requests("/.well-known/oauth-authorization-server"),
        1,
        "the discovered URI is remembered"
    );
    assert_eq!(idp.requests("/jwks"), 2);
}

#[tokio::test]
async fn discovery_falls_back_to_openid_configuration() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| state.metadata_paths = vec!["/.well-known/openid-configuration"]);
    let source = source(
        "discovery-oidc",
        RemoteOptions::new(idp.issuer(), None, reqwest::Client::new()),
    );
    source.refresh().await.expect("discovered through OIDC");
    assert_eq!(idp.requests("/.well-known/oauth-authorization-server"), 1);
    assert_eq!(idp.requests("/.well-known/openid-configuration"), 1);
    assert!(source.is_ready());
}

#[tokio::test]
async fn metadata_naming_another_issuer_is_refused() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| {
        state.metadata_paths = vec!["/.well-known/oauth-authorization-server"];
        state.metadata_issuer = Some("http://other.example".into());
    });
    let source = source(
        "discovery-mixup",
        RemoteOptions::new(idp.issuer(), None, reqwest::Client::new()),
    );
    assert!(source.refresh().await.is_err());
    assert_eq!(idp.requests("/jwks"), 0);
}

#[tokio::test]
async fn cache_control_max_age_sets_the_refresh_interval_within_bounds() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    let source = source("max-age", options(&idp));
    let interval_for = |cache_control: Option<&str>| {
        let cache_control = cache_control.map(str::to_owned);
        idp.set(|state| state.cache_control = cache_control);
        let source = source.clone();
        async move {
            source.refresh().await.expect("fetch");
            source.refresh_interval()
        }
    };
    assert_eq!(interval_for(None).await, Duration::from_secs(300));
    assert_eq!(
        interval_for(Some("max-age=900")).await,
        Duration::from_secs(900)
    );
    assert_eq!(
        interval_for(Some("max-age=5")).await,
        Duration::from_secs(60)
    );
    assert_eq!(
        interval_for(Some("public, max-age=31536000")).await,
        Duration::from_secs(3_600),
        "a withdrawn key is trusted an hour at most"
    );
}

#[tokio::test]
async fn background_refresh_follows_max_age_and_stops_with_the_source() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| state.cache_control = Some("max-age=0".into()));
    let source = source(
        "background",
        RemoteOptions {
            refresh: RefreshPolicy {
                min: Duration::from_millis(200),
                max: Duration::from_secs(3600),
                default: Duration::from_secs(3600),
                first_retry: Duration::from_millis(200),
                retry: Duration::from_millis(200),
            },
            ..options(&idp)
        },
    );
    let started = std::time::Instant::now();
    let task = source.spawn_refresh();
    while idp.requests("/jwks") < 4 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fetched = idp.requests("/jwks");
    let elapsed = started.elapsed();
    assert!(fetched >= 4, "max-age=0 is refreshed every 200 ms");
    let at_most = elapsed.as_millis() / 200 + 1;
    assert!(
        fetched as u128 <= at_most,
        "{fetched} fetches in {elapsed:?}: faster than the minimum interval"
    );
    assert!(source.is_ready());
    drop(source);
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("the task ends once the source is dropped")
        .expect("the task did not panic");
}

#[tokio::test]
async fn unchanged_jwks_is_not_downloaded_again() {
    let key = ed_key("k");
    let idp = Idp::start(jwks(&[&key])).await;
    idp.set(|state| state.etag = Some("\"v1\"".into()));
    let source = source("etag", options(&idp));
    source.refresh().await.expect("first fetch");
    source.refresh().await.expect("conditional fetch");
    assert_eq!(refreshes("etag", "ok"), 1);
    assert_eq!(refreshes("etag", "not_modified"), 1);
    assert!(source.is_ready());
}

#[tokio::test]
async fn malformed_and_oversized_tokens_are_refused_without_fetching() {
    let key = ed_key("k");
    let (idp, _source, validator) = ready("shape", &[&key]).await;
    let huge = format!("{}.{}.sig", "a".repeat(5000), "b".repeat(5000));
    assert_eq!(
        check(&validator, &huge).await,
        invalid(TokenProblem::TooLong)
    );
    for bad in [
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b!.c",
        "e30.e30.AA",
        "bm90IGpzb24.e30.AA",
    ] {
        assert_eq!(
            check(&validator, bad).await,
            invalid(TokenProblem::Malformed),
            "{bad}"
        );
    }
    assert_eq!(idp.requests("/jwks"), 1);
}
