//! A test identity provider on 127.0.0.1:0: a JWKS server that counts its
//! fetches and signs `at+jwt` access tokens with real keys (RS256 by
//! default, rotatable), and an RFC 7662 introspection endpoint that counts
//! its calls (and those in flight at once), answers per token, and can hold
//! its answers until released.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Audience of the tokens [`Idp::token`] signs.
pub const AUDIENCE: &str = "travels";

/// A private key that signs tokens and the JWK that publishes it.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A fresh 2048-bit RSA key for RS256.
    pub fn rsa(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA keygen");
        let public =
            aws_lc_rs::rsa::PublicKey::from_der(pair.public_key_raw()).expect("RSA public");
        let parts = aws_lc_rs::signature::RsaPublicKeyComponents::<Vec<u8>>::from(&public);
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("PEM"),
            jwk: json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                        "n": b64(&parts.n), "e": b64(&parts.e)}),
        }
    }

    /// Signs `header` and `claims` exactly as given.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg).expect("sign");
        format!("{input}.{signature}")
    }

    pub fn header(&self) -> Value {
        json!({"alg": "RS256", "typ": "at+jwt", "kid": self.kid})
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// `base` with the fields of `changes` set; a `null` change removes the field.
pub fn merged(mut base: Value, changes: &Value) -> Value {
    let object = base.as_object_mut().expect("an object");
    for (name, change) in changes.as_object().expect("changes are an object") {
        match change {
            Value::Null => object.remove(name),
            _ => object.insert(name.clone(), change.clone()),
        };
    }
    base
}

struct IdpState {
    /// Published keys; the last one signs.
    keys: Vec<Arc<SigningKey>>,
    down: bool,
}

/// A JWKS server that counts fetches of `/jwks` and signs tokens.
pub struct Idp {
    pub addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    /// Serves one RS256 key, kid `k1`.
    pub async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind idp");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(IdpState {
            keys: vec![Arc::new(SigningKey::rsa("k1"))],
            down: false,
        }));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (s, f) = (state.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, f) = (s.clone(), f.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (s, f) = (s.clone(), f.clone());
                    async move { Ok::<_, Infallible>(jwks_answer(&s, &f, req.uri().path())) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Idp {
            addr,
            state,
            fetches,
            task,
        }
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_uri(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    /// How many times `/jwks` was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.state.lock().expect("idp").down = down;
    }

    /// Publishes a new key next to the old ones; it signs from now on.
    pub fn rotate(&self, kid: &str) {
        self.state
            .lock()
            .expect("idp")
            .keys
            .push(Arc::new(SigningKey::rsa(kid)));
    }

    /// The key that signs now.
    pub fn key(&self) -> Arc<SigningKey> {
        self.state
            .lock()
            .expect("idp")
            .keys
            .last()
            .cloned()
            .expect("a key")
    }

    /// The claims of a valid token with `scopes` for [`AUDIENCE`], ten minutes left.
    pub fn claims(&self, scopes: &[&str]) -> Value {
        let now = unix_now();
        json!({"iss": self.issuer(), "sub": "alice", "client_id": "app", "aud": AUDIENCE,
               "scope": scopes.join(" "), "iat": now, "exp": now + 600,
               "jti": format!("jti-{}", next_serial())})
    }

    /// A valid `at+jwt` with `scopes`.
    pub fn token(&self, scopes: &[&str]) -> String {
        self.token_with(json!({"scope": scopes.join(" ")}))
    }

    /// A token whose claims are the defaults with `changes` applied
    /// (`null` removes a claim).
    pub fn token_with(&self, changes: Value) -> String {
        let key = self.key();
        key.sign(&key.header(), &merged(self.claims(&[]), &changes))
    }
}

fn next_serial() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

fn jwks_answer(
    state: &Mutex<IdpState>,
    fetches: &AtomicUsize,
    path: &str,
) -> Response<Full<Bytes>> {
    let state = state.lock().expect("idp");
    let (status, body) = match (state.down, path) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "down".to_owned()),
        (false, "/jwks") => {
            fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = state.keys.iter().map(|k| k.jwk.clone()).collect();
            (StatusCode::OK, json!({ "keys": keys }).to_string())
        }
        (false, _) => (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    response
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------ introspection

/// How the introspection endpoint answers about one token.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 200 with this JSON text.
    Json(String),
    /// This status and body.
    Status(u16, String),
    /// 200 with this JSON text after a delay.
    Slow(Duration, String),
    /// 200 with this JSON text once the gate gives a permit (at most 10 s
    /// later: then 504), so a test can act while a request waits.
    Held(Arc<tokio::sync::Semaphore>, String),
}

impl Answer {
    /// `{"active": true, ...claims}`.
    pub fn active(claims: Value) -> Answer {
        Answer::Json(merged(json!({"active": true}), &claims).to_string())
    }

    pub fn inactive() -> Answer {
        Answer::Json(r#"{"active":false}"#.to_owned())
    }
}

/// What the introspection endpoint received.
#[derive(Debug, Clone)]
pub struct Call {
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The form fields, decoded.
    pub form: HashMap<String, String>,
}

impl Call {
    /// The `client_id:client_secret` of a Basic header, decoded.
    pub fn basic(&self) -> Option<String> {
        let encoded = self.authorization.as_deref()?.strip_prefix("Basic ")?;
        String::from_utf8(STANDARD.decode(encoded).ok()?).ok()
    }
}

#[derive(Default)]
struct IntrospectorState {
    answers: HashMap<String, Answer>,
    /// For tokens without an answer of their own.
    fallback: Option<Answer>,
    calls: Vec<Call>,
}

/// The calls an endpoint is answering, now and at most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// One call counted in flight while it lives.
struct Counted<'a>(&'a InFlight);

impl<'a> Counted<'a> {
    fn new(in_flight: &'a InFlight) -> Counted<'a> {
        let now = in_flight.now.fetch_add(1, Ordering::SeqCst) + 1;
        in_flight.most.fetch_max(now, Ordering::SeqCst);
        Counted(in_flight)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The longest a held answer waits for [`Introspector::release`].
const HOLD_AT_MOST: Duration = Duration::from_secs(30);

/// An RFC 7662 endpoint counting its calls; unknown tokens are inactive.
pub struct Introspector {
    pub addr: SocketAddr,
    state: Arc<Mutex<IntrospectorState>>,
    in_flight: Arc<InFlight>,
    /// `false` while answers are held.
    open: Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Introspector {
    pub async fn counting() -> Introspector {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind introspector");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(IntrospectorState::default()));
        let in_flight = Arc::new(InFlight::default());
        let open = Arc::new(tokio::sync::watch::Sender::new(true));
        let (s, f, o) = (state.clone(), in_flight.clone(), open.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, f, o) = (s.clone(), f.clone(), o.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (s, f, o) = (s.clone(), f.clone(), o.clone());
                    async move {
                        let _counted = Counted::new(&f);
                        let answer = introspect(&s, req).await;
                        let mut open = o.subscribe();
                        let _ =
                            tokio::time::timeout(HOLD_AT_MOST, open.wait_for(|open| *open)).await;
                        Ok::<_, Infallible>(answer)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Introspector {
            addr,
            state,
            in_flight,
            open,
            task,
        }
    }

    /// From now on, answers wait until [`Introspector::release`] (at most
    /// 30 s); the calls are counted as they arrive.
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    /// Sends the held answers, and answers at once from now on.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// Calls being answered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.now.load(Ordering::SeqCst)
    }

    /// The most calls that were being answered at once.
    pub fn most_in_flight(&self) -> usize {
        self.in_flight.most.load(Ordering::SeqCst)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// Answers `answer` when asked about `token`.
    pub fn answer(&self, token: &str, answer: Answer) {
        self.state
            .lock()
            .expect("introspector")
            .answers
            .insert(token.to_owned(), answer);
    }

    /// Answers `answer` about every token without an answer of its own.
    pub fn answer_all(&self, answer: Answer) {
        self.state.lock().expect("introspector").fallback = Some(answer);
    }

    pub fn calls(&self) -> usize {
        self.state.lock().expect("introspector").calls.len()
    }

    /// Calls about `token`.
    pub fn calls_for(&self, token: &str) -> usize {
        let state = self.state.lock().expect("introspector");
        state
            .calls
            .iter()
            .filter(|c| c.form.get("token").map(String::as_str) == Some(token))
            .count()
    }

    pub fn last(&self) -> Call {
        self.state
            .lock()
            .expect("introspector")
            .calls
            .last()
            .cloned()
            .expect("the introspection endpoint was called")
    }
}

impl Drop for Introspector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `application/x-www-form-urlencoded` fields, decoded.
pub fn parse_form(body: &str) -> HashMap<String, String> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(&text.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

async fn introspect(
    state: &Mutex<IntrospectorState>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    let body = req.into_body().collect().await.expect("body").to_bytes();
    let form = parse_form(&String::from_utf8_lossy(&body));
    let answer = {
        let mut state = state.lock().expect("introspector");
        let token = form.get("token").cloned().unwrap_or_default();
        state.calls.push(Call {
            authorization,
            content_type,
            form,
        });
        state
            .answers
            .get(&token)
            .or(state.fallback.as_ref())
            .cloned()
            .unwrap_or_else(Answer::inactive)
    };
    let (status, body) = match answer {
        Answer::Json(body) => (200, body),
        Answer::Status(status, body) => (status, body),
        Answer::Slow(delay, body) => {
            tokio::time::sleep(delay).await;
            (200, body)
        }
        Answer::Held(gate, body) => {
            match tokio::time::timeout(Duration::from_secs(10), gate.acquire()).await {
                Ok(Ok(_)) => (200, body),
                _ => (504, String::new()),
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).expect("status");
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("value"));
    response
}
