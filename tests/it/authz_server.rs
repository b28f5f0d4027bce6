//! The local authorization server over real loopback HTTP: each grant end
//! to end, client authentication, scopes, refresh rotation and limits,
//! introspection and revocation in both token formats, cleanup, restarts.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use microgateway::authz_server::{
    unix_now, AuthorizationServer, Client, GrantType, RequestContext, ScopeDef, Settings,
    TokenFormat, User,
};
use microgateway::config::Secret;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("Administrator", "manage");

fn cheap_hash(password: &str) -> String {
    let params = Params::new(8, 1, 1, None).expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

fn client(id: &str, secret: Option<&str>, grants: &[GrantType], refresh_limit: u32) -> Client {
    Client {
        name: id.into(),
        client_id: id.into(),
        client_secret: secret.map(Secret::new),
        redirect_uris: vec![],
        grant_types: grants.to_vec(),
        scopes: vec!["view".into(), "book".into()],
        token_lifetime: Some(Duration::from_secs(3600)),
        refresh_limit,
        refresh_reuse_interval: Duration::ZERO,
        introspect: false,
    }
}

fn settings(dir: &Path, token_format: TokenFormat) -> Settings {
    use GrantType::*;
    let mut short = client(
        "short",
        Some("short-secret"),
        &[ClientCredentials, Password],
        0,
    );
    short.token_lifetime = Some(Duration::from_secs(60));
    let mut forever = client("forever", Some("forever-secret"), &[ClientCredentials], 0);
    forever.token_lifetime = None;
    let mut public = client("public-app", None, &[Password, RefreshToken], 1);
    public.scopes = vec!["view".into()];
    let mut clients = vec![
        client(
            "app",
            Some("s3cret/+:&"),
            &[ClientCredentials, Password, RefreshToken],
            2,
        ),
        client(
            "other",
            Some("other-secret"),
            &[ClientCredentials, Password, RefreshToken],
            5,
        ),
        client(
            "no-refresh",
            Some("nr-secret"),
            &[Password, RefreshToken],
            0,
        ),
        Client {
            introspect: true,
            ..client("introspector", Some("intro-secret"), &[], 0)
        },
        short,
        public,
    ];
    // A JWT must expire (RFC 9068 §2.2): only opaque tokens may live forever.
    if token_format == TokenFormat::Opaque {
        clients.push(forever);
    }
    Settings {
        issuer: "http://localhost:4485".into(),
        token_format,
        signing_key_path: dir.join("keys/signing-key.pem"),
        store_path: dir.join("data/oauth.db"),
        postgres: None,
        require_https: false,
        authorization_code_lifetime: Duration::from_secs(600),
        refresh_token_lifetime: Duration::from_secs(30 * 86_400),
        require_pkce: false,
        cleanup_interval: None,
        approval_page: None,
        approval_template: None,
        branding: Default::default(),
        scopes: ["view", "book", "cancel"]
            .iter()
            .map(|s| ScopeDef {
                name: (*s).into(),
                description: format!("{s} things"),
            })
            .collect(),
        users: vec![
            User {
                username: "alice".into(),
                password_hash: cheap_hash("wonderland"),
            },
            User {
                username: "bob".into(),
                password_hash: cheap_hash("builder"),
            },
        ],
        clients,
        audience: Some("time-travels".into()),
    }
}

/// A loopback HTTP server around `AuthorizationServer::handle_at`, with a
/// clock the test can move forward. `X-Forwarded-Proto: https` stands for
/// a TLS connection (as from a trusted proxy).
struct TestServer {
    base: String,
    http: reqwest::Client,
    offset: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TestServer {
    async fn start(settings: Settings, admin: Option<(&'static str, &'static str)>) -> TestServer {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let authz = tokio::task::spawn_blocking(move || AuthorizationServer::open(settings))
            .await
            .expect("join")
            .expect("open");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let offset = Arc::new(AtomicU64::new(0));
        let clock = Arc::clone(&offset);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let authz = authz.clone();
                let clock = Arc::clone(&clock);
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let authz = authz.clone();
                    let now = unix_now() + clock.load(Ordering::SeqCst);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let ctx = RequestContext {
                            is_https: parts
                                .headers
                                .get("x-forwarded-proto")
                                .is_some_and(|v| v == "https"),
                            address: peer.ip(),
                            admin_ok: admin.map(|(user, password)| {
                                let expected = base64::engine::general_purpose::STANDARD
                                    .encode(format!("{user}:{password}"));
                                parts
                                    .headers
                                    .get("authorization")
                                    .is_some_and(|v| *v == *format!("Basic {expected}"))
                            }),
                        };
                        let req = hyper::Request::from_parts(parts, body);
                        let resp = authz.handle_at(req, ctx, now).await;
                        Ok::<_, hyper::Error>(resp.map(Full::new))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestServer {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            offset,
            accept,
        }
    }

    fn advance(&self, secs: u64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }

    /// Its next requests come from `address`, another loopback address.
    fn connect_from(&mut self, address: IpAddr) {
        self.http = reqwest::Client::builder()
            .local_address(address)
            .build()
            .expect("client");
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.send(self.http.post(self.url(path)), form).await
    }

    async fn post_basic(&self, path: &str, id: &str, secret: &str, form: &[(&str, &str)]) -> Reply {
        // RFC 6749 §2.3.1: each part form-urlencoded before Basic.
        let user = encode(id);
        let password = encode(secret);
        let request = self
            .http
            .post(self.url(path))
            .basic_auth(user, Some(password));
        self.send(request, form).await
    }

    async fn send(&self, request: reqwest::RequestBuilder, form: &[(&str, &str)]) -> Reply {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request");
        Reply::read(response).await
    }

    async fn get(&self, path: &str) -> Reply {
        Reply::read(self.http.get(self.url(path)).send().await.expect("request")).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn token(&self, id: &str, secret: &str, form: &[(&str, &str)]) -> Value {
        let reply = self.post_basic("/oauth2/token", id, secret, form).await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        reply.json
    }

    async fn introspect(&self, token: &str) -> Value {
        let reply = self
            .post_basic(
                "/oauth2/introspect",
                "introspector",
                "intro-secret",
                &[("token", token)],
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.json);
        reply.json
    }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    json: Value,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            json,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

fn password_form<'a>(user: &'a str, password: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "password"),
        ("username", user),
        ("password", password),
    ]
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {value}"))
}

#[tokio::test]
async fn client_credentials_jwt_validates_against_the_published_jwks() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Jwt), None).await;
    let reply = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("pragma"), Some("no-cache"));
    assert_eq!(reply.json["token_type"], "Bearer");
    assert_eq!(reply.json["expires_in"], 3600);
    assert_eq!(reply.json["scope"], "view book");
    assert!(reply.json.get("refresh_token").is_none());
    let token = str_of(&reply.json, "access_token");

    let header = jsonwebtoken::decode_header(token).expect("header");
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    let jwks = server.get("/oauth2/jwks").await;
    assert_eq!(jwks.status, 200);
    let set: JwkSet = serde_json::from_value(jwks.json.clone()).expect("jwks");
    let kid = header.kid.expect("kid");
    let jwk = set.find(&kid).expect("kid published");
    assert_eq!(jwks.json["keys"][0]["use"], "sig");
    assert_eq!(jwks.json["keys"][0]["alg"], "RS256");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&["time-travels"]);
    validation.set_issuer(&["http://localhost:4485"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("valid")
        .claims;
    assert_eq!(claims["sub"], "app");
    assert_eq!(claims["client_id"], "app");
    assert_eq!(claims["scope"], "view book");
    assert!(claims["jti"].is_string());
    assert_eq!(
        claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
        3600
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir.path().join("keys/signing-key.pem")).expect("key file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

#[tokio::test]
async fn client_authentication_failures() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let cc = [("grant_type", "client_credentials")];
    let basic = server
        .post_basic("/oauth2/token", "app", "wrong", &cc)
        .await;
    assert_eq!(basic.status, 401);
    assert_eq!(basic.error(), "invalid_client");
    assert_eq!(
        basic.header("www-authenticate"),
        Some(r#"Basic realm="microgateway""#)
    );
    let post = server
        .post(
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "app"),
                ("client_secret", "wrong"),
            ],
        )
        .await;
    assert_eq!(post.status, 401);
    assert_eq!(post.error(), "invalid_client");
    assert_eq!(post.header("www-authenticate"), None);
    let unknown = server.post_basic("/oauth2/token", "nobody", "x", &cc).await;
    assert_eq!(unknown.status, 401);
    let both = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "client_credentials"),
                ("client_secret", "s3cret/+:&"),
            ],
        )
        .await;
    assert_eq!((both.status, both.error()), (400, "invalid_request"));
    // Post authentication with the right secret works.
    let ok = server
        .post(
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "app"),
                ("client_secret", "s3cret/+:&"),
            ],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.json);
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds")
}

/// RFC 6749 §2.3.1: guessing a client secret is locked out per address.
/// The client itself is not locked: whoever knows its id could lock it.
/// Twenty wrong secrets of `client`, at each of `paths` in turn: each
/// answered 401 `invalid_client`.
async fn twenty_wrong_secrets(
    server: &TestServer,
    paths: [&str; 2],
    client: &str,
    form: &[(&str, &str)],
) {
    for n in 0..20 {
        let guess = format!("guess-{n}");
        let reply = server.post_basic(paths[n % 2], client, &guess, form).await;
        assert_eq!(
            (reply.status, reply.error()),
            (401, "invalid_client"),
            "{n}"
        );
    }
}

#[tokio::test]
async fn twenty_wrong_client_secrets_lock_the_address_for_a_minute() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let cc = [("grant_type", "client_credentials")];
    let paths = [
        "/oauth2/token",
        "/invoke/pub.apigateway.oauth2/getAccessToken",
    ];
    twenty_wrong_secrets(&server, paths, "app", &cc).await;
    // Refused unchecked, the right secret too.
    for secret in ["guess-20", "s3cret/+:&"] {
        let locked = server.post_basic("/oauth2/token", "app", secret, &cc).await;
        assert_eq!((locked.status, locked.error()), (429, "invalid_client"));
        assert_eq!(locked.header("cache-control"), Some("no-store"));
        assert!((1..=60).contains(&retry_after(&locked)));
    }
    let revoke = server
        .post(
            "/oauth2/revoke",
            &[("client_id", "public-app"), ("token", "t")],
        )
        .await;
    assert_eq!(revoke.status, 429);
    // From another address the client authenticates.
    server.connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    server.token("app", "s3cret/+:&", &cc).await;
    // The lock ends with its window.
    server.connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    server.advance(60);
    server.token("app", "s3cret/+:&", &cc).await;
}

#[tokio::test]
async fn wrong_introspector_secrets_lock_introspection_from_the_address() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let form = [("token", "some-token")];
    let paths = ["/oauth2/introspect", "/invoke/pub.oauth/introspectToken"];
    twenty_wrong_secrets(&server, paths, "introspector", &form).await;
    let locked = server
        .post_basic("/oauth2/introspect", "introspector", "intro-secret", &form)
        .await;
    assert_eq!((locked.status, locked.error()), (429, "invalid_client"));
    assert!((1..=60).contains(&retry_after(&locked)));
    server.advance(60);
    assert_eq!(server.introspect("some-token").await["active"], false);
}

/// RFC 6749 §2.3.1: a public client sent as Basic with an empty
/// password (as many libraries send it) presents no secret. It is served
/// as often as it asks, locks nobody out, and is still no client that
/// may introspect.
#[tokio::test]
async fn a_public_client_with_an_empty_basic_password_is_no_guess() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let refresh = [("grant_type", "refresh_token"), ("refresh_token", "none")];
    for n in 0..25 {
        let reply = server
            .post_basic("/oauth2/token", "public-app", "", &refresh)
            .await;
        assert_eq!((reply.status, reply.error()), (400, "invalid_grant"), "{n}");
    }
    let mut form = password_form("alice", "wonderland");
    form.push(("scope", "view"));
    let reply = server
        .post_basic("/oauth2/token", "public-app", "", &form)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    let token = str_of(&reply.json, "access_token");
    let refused = server
        .post_basic("/oauth2/introspect", "public-app", "", &[("token", token)])
        .await;
    assert_eq!((refused.status, refused.error()), (401, "invalid_client"));
    // RFC 6749 §5.2: it tried HTTP Basic, so it is challenged.
    assert!(
        refused.headers.contains_key("www-authenticate"),
        "{:?}",
        refused.headers
    );
    server
        .token("app", "s3cret/+:&", &[("grant_type", "client_credentials")])
        .await;
}

#[tokio::test]
async fn grant_type_checks() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let reply = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[("grant_type", "magic")],
        )
        .await;
    assert_eq!(
        (reply.status, reply.error()),
        (400, "unsupported_grant_type")
    );
    let reply = server
        .post_basic("/oauth2/token", "app", "s3cret/+:&", &[("scope", "view")])
        .await;
    assert_eq!((reply.status, reply.error()), (400, "invalid_request"));
    // The client does not list client_credentials.
    let reply = server
        .post_basic(
            "/oauth2/token",
            "no-refresh",
            "nr-secret",
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert_eq!((reply.status, reply.error()), (400, "unauthorized_client"));
    // A public client has no secret to authenticate client_credentials.
    let reply = server
        .post(
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "public-app"),
            ],
        )
        .await;
    assert_eq!((reply.status, reply.error()), (400, "unauthorized_client"));
}

#[tokio::test]
async fn password_grant_for_a_public_client_and_introspection() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let mut form = password_form("alice", "wonderland");
    form.push(("client_id", "public-app"));
    let reply = server.post("/oauth2/token", &form).await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["scope"], "view");
    let token = str_of(&reply.json, "access_token");
    assert_eq!(token.len(), 43);
    assert!(reply.json["refresh_token"].is_string());
    let info = server.introspect(token).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["username"], "alice");
    assert_eq!(info["sub"], "alice");
    assert_eq!(info["client_id"], "public-app");
    assert_eq!(info["scope"], "view");
    assert_eq!(info["token_type"], "Bearer");
    assert_eq!(info["aud"], "time-travels");
    assert_eq!(info["iss"], "http://localhost:4485");
    assert!(info["exp"].is_u64() && info["iat"].is_u64());
}

#[tokio::test]
async fn wrong_passwords_lock_the_user_for_a_minute() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    for _ in 0..5 {
        let reply = server
            .post_basic(
                "/oauth2/token",
                "app",
                "s3cret/+:&",
                &password_form("alice", "guess"),
            )
            .await;
        assert_eq!((reply.status, reply.error()), (400, "invalid_grant"));
    }
    let locked = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &password_form("alice", "wonderland"),
        )
        .await;
    assert_eq!((locked.status, locked.error()), (429, "invalid_grant"));
    let retry: u64 = locked
        .header("retry-after")
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry));
    // Another user is not locked, and an unknown one is just refused.
    server
        .token("app", "s3cret/+:&", &password_form("bob", "builder"))
        .await;
    let unknown = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &password_form("carol", "x"),
        )
        .await;
    assert_eq!((unknown.status, unknown.error()), (400, "invalid_grant"));
    // An unknown user locks like a known one: a lock tells nothing.
    for _ in 0..4 {
        server
            .post_basic(
                "/oauth2/token",
                "app",
                "s3cret/+:&",
                &password_form("carol", "x"),
            )
            .await;
    }
    let unknown = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &password_form("carol", "x"),
        )
        .await;
    assert_eq!(unknown.status, 429);
    server.advance(61);
    server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
}

/// A public client's `client_id` authenticates nothing: a stranger's 20
/// wrong passwords through it lock the stranger's address for that
/// client, not every user of the client.
#[tokio::test]
async fn wrong_passwords_through_a_public_client_lock_only_their_address() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let public = |user: &'static str, password: &'static str| {
        let mut form = password_form(user, password);
        form.push(("client_id", "public-app"));
        form
    };
    const USERS: [&str; 20] = [
        "u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9", "u10", "u11", "u12", "u13",
        "u14", "u15", "u16", "u17", "u18", "u19",
    ];
    for user in USERS {
        let reply = server.post("/oauth2/token", &public(user, "guess")).await;
        assert_eq!((reply.status, reply.error()), (400, "invalid_grant"));
    }
    let locked = server
        .post("/oauth2/token", &public("alice", "wonderland"))
        .await;
    assert_eq!((locked.status, locked.error()), (429, "invalid_grant"));
    server.connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let reply = server
        .post("/oauth2/token", &public("alice", "wonderland"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    // A confidential client proved itself: its failures count wherever
    // they come from.
    server.connect_from(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for user in USERS {
        let reply = server
            .post_basic(
                "/oauth2/token",
                "app",
                "s3cret/+:&",
                &password_form(user, "x"),
            )
            .await;
        assert_eq!((reply.status, reply.error()), (400, "invalid_grant"));
    }
    server.connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    let locked = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &password_form("bob", "builder"),
        )
        .await;
    assert_eq!((locked.status, locked.error()), (429, "invalid_grant"));
}

#[tokio::test]
async fn scopes_narrow_but_never_widen() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let mut form = password_form("alice", "wonderland");
    form.push(("scope", "book"));
    let narrow = server.token("app", "s3cret/+:&", &form).await;
    assert_eq!(narrow["scope"], "book");
    let wide = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "client_credentials"),
                ("scope", "view cancel"),
            ],
        )
        .await;
    assert_eq!((wide.status, wide.error()), (400, "invalid_scope"));

    // A refresh may narrow the original scope but not add to it.
    let all = server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
    let refresh = str_of(&all, "refresh_token");
    let wider = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("scope", "view cancel"),
            ],
        )
        .await;
    assert_eq!((wider.status, wider.error()), (400, "invalid_scope"));
    let narrower = server
        .token(
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("scope", "view"),
            ],
        )
        .await;
    assert_eq!(narrower["scope"], "view");
    let again = server
        .token(
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_of(&narrower, "refresh_token")),
            ],
        )
        .await;
    assert_eq!(again["scope"], "view book");
}

#[tokio::test]
async fn refresh_tokens_rotate_until_the_limit() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Jwt), None).await;
    let first = server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
    let r0 = str_of(&first, "refresh_token");
    let second = server
        .token(
            "app",
            "s3cret/+:&",
            &[("grant_type", "refresh_token"), ("refresh_token", r0)],
        )
        .await;
    let r1 = str_of(&second, "refresh_token");
    assert_ne!(r0, r1);
    let claims: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(str_of(&second, "access_token"))
            .expect("claims");
    assert_eq!(claims["sub"], "alice");
    // refresh_limit 2: the second refresh is the last and returns none.
    let third = server
        .token(
            "app",
            "s3cret/+:&",
            &[("grant_type", "refresh_token"), ("refresh_token", r1)],
        )
        .await;
    assert!(third.get("refresh_token").is_none(), "{third}");
    assert_eq!(
        server.introspect(str_of(&third, "access_token")).await["active"],
        true
    );
    // Another client cannot use alice's refresh token.
    let other = server
        .token(
            "other",
            "other-secret",
            &password_form("alice", "wonderland"),
        )
        .await;
    let stolen = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_of(&other, "refresh_token")),
            ],
        )
        .await;
    assert_eq!((stolen.status, stolen.error()), (400, "invalid_grant"));
}

/// A refresh token family ends `refresh_token_lifetime` after its grant:
/// a refresh hands the next token the same end, refused past it, and
/// `remove-expired` then removes the family.
#[tokio::test]
async fn a_refresh_token_family_ends_its_lifetime_after_the_grant() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path(), TokenFormat::Opaque);
    s.refresh_token_lifetime = Duration::from_secs(7200);
    let server = TestServer::start(s, Some(ADMIN)).await;
    let first = server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
    server.advance(5000);
    let r0 = str_of(&first, "refresh_token");
    let form = [("grant_type", "refresh_token"), ("refresh_token", r0)];
    let second = server.token("app", "s3cret/+:&", &form).await;
    // 7,201 s after the grant, 2,201 s after the refresh.
    server.advance(2201);
    let r1 = str_of(&second, "refresh_token");
    let form = [("grant_type", "refresh_token"), ("refresh_token", r1)];
    let expired = server
        .post_basic("/oauth2/token", "app", "s3cret/+:&", &form)
        .await;
    assert_eq!((expired.status, expired.error()), (400, "invalid_grant"));
    let removed = server
        .post_basic("/oauth2/tokens/remove-expired", ADMIN.0, ADMIN.1, &[])
        .await;
    assert_eq!(removed.status, 200, "{}", removed.json);
    assert_eq!(removed.json["refresh_tokens"], 2, "{}", removed.json);
    // The access token of the refresh lives its own lifetime.
    assert_eq!(
        server.introspect(str_of(&second, "access_token")).await["active"],
        true
    );
}

#[tokio::test]
async fn refresh_token_reuse_revokes_the_family() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let first = server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
    let r0 = str_of(&first, "refresh_token");
    let second = server
        .token(
            "app",
            "s3cret/+:&",
            &[("grant_type", "refresh_token"), ("refresh_token", r0)],
        )
        .await;
    let reuse = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[("grant_type", "refresh_token"), ("refresh_token", r0)],
        )
        .await;
    assert_eq!((reuse.status, reuse.error()), (400, "invalid_grant"));
    for token in [
        str_of(&first, "access_token"),
        str_of(&second, "access_token"),
    ] {
        assert_eq!(server.introspect(token).await, json!({"active": false}));
    }
    let r1 = str_of(&second, "refresh_token");
    let after = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[("grant_type", "refresh_token"), ("refresh_token", r1)],
        )
        .await;
    assert_eq!((after.status, after.error()), (400, "invalid_grant"));
}

#[tokio::test]
async fn refresh_limit_zero_issues_no_refresh_token_and_no_lifetime_no_expiry() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let reply = server
        .token("no-refresh", "nr-secret", &password_form("bob", "builder"))
        .await;
    assert!(reply.get("refresh_token").is_none(), "{reply}");
    let forever = server
        .token(
            "forever",
            "forever-secret",
            &[("grant_type", "client_credentials")],
        )
        .await;
    assert!(forever.get("expires_in").is_none(), "{forever}");
    server.advance(10 * 365 * 86400);
    let info = server.introspect(str_of(&forever, "access_token")).await;
    assert_eq!(info["active"], true);
    assert!(info.get("exp").is_none(), "{info}");
}

#[tokio::test]
async fn a_jwt_server_refuses_a_client_without_token_lifetime() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path(), TokenFormat::Opaque);
    s.token_format = TokenFormat::Jwt;
    let result = AuthorizationServer::open(s);
    assert!(result.is_err());
}

async fn introspection_lifecycle(format: TokenFormat) {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), format), None).await;
    let cc = [("grant_type", "client_credentials")];
    let live = server.token("app", "s3cret/+:&", &cc).await;
    let live = str_of(&live, "access_token");
    let short = server.token("short", "short-secret", &cc).await;
    let short = str_of(&short, "access_token");
    let revoked = server.token("app", "s3cret/+:&", &cc).await;
    let revoked = str_of(&revoked, "access_token");

    let info = server.introspect(live).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "app");
    assert_eq!(info["sub"], "app");
    assert_eq!(info["scope"], "view book");
    assert_eq!(info["aud"], "time-travels");
    assert_eq!(info["iss"], "http://localhost:4485");
    assert_eq!(info["token_type"], "Bearer");
    assert!(info.get("username").is_none());

    let reply = server
        .post_basic("/oauth2/revoke", "app", "s3cret/+:&", &[("token", revoked)])
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(server.introspect(revoked).await, json!({"active": false}));

    server.advance(61);
    assert_eq!(server.introspect(short).await, json!({"active": false}));
    assert_eq!(server.introspect(live).await["active"], true);
    for unknown in ["nonsense", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
        assert_eq!(server.introspect(unknown).await, json!({"active": false}));
    }
    // Introspection needs an authenticated confidential client.
    let anonymous = server.post("/oauth2/introspect", &[("token", live)]).await;
    assert_eq!(anonymous.status, 401);
    let public = server
        .post(
            "/oauth2/introspect",
            &[("token", live), ("client_id", "public-app")],
        )
        .await;
    assert_eq!(public.status, 401);
}

#[tokio::test]
async fn introspection_of_jwts() {
    introspection_lifecycle(TokenFormat::Jwt).await;
}

#[tokio::test]
async fn introspection_of_opaque_tokens() {
    introspection_lifecycle(TokenFormat::Opaque).await;
}

#[tokio::test]
async fn revoking_a_refresh_token_revokes_its_access_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Jwt), None).await;
    let grant = server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
    let refresh = str_of(&grant, "refresh_token");
    // Another client may not revoke it.
    let foreign = server
        .post_basic(
            "/oauth2/revoke",
            "other",
            "other-secret",
            &[("token", refresh)],
        )
        .await;
    assert_eq!(
        (foreign.status, foreign.error()),
        (400, "unauthorized_client")
    );
    let reply = server
        .post_basic(
            "/oauth2/revoke",
            "app",
            "s3cret/+:&",
            &[("token", refresh), ("token_type_hint", "refresh_token")],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(
        server.introspect(str_of(&grant, "access_token")).await,
        json!({"active": false})
    );
    let refreshed = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
        )
        .await;
    assert_eq!(
        (refreshed.status, refreshed.error()),
        (400, "invalid_grant")
    );
    let unknown = server
        .post_basic(
            "/oauth2/revoke",
            "app",
            "s3cret/+:&",
            &[("token", "never-issued")],
        )
        .await;
    assert_eq!(unknown.status, 200);
    // A public client revokes its own tokens with its client_id.
    let mut form = password_form("alice", "wonderland");
    form.push(("client_id", "public-app"));
    let public = server.post("/oauth2/token", &form).await;
    let access = str_of(&public.json, "access_token");
    let reply = server
        .post(
            "/oauth2/revoke",
            &[("token", access), ("client_id", "public-app")],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(server.introspect(access).await, json!({"active": false}));
}

#[tokio::test]
async fn remove_expired_needs_admin_and_counts() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), Some(ADMIN)).await;
    let cc = [("grant_type", "client_credentials")];
    server.token("short", "short-secret", &cc).await;
    server.token("short", "short-secret", &cc).await;
    let live = server.token("app", "s3cret/+:&", &cc).await;
    server.advance(61);
    let anonymous = server.post("/oauth2/tokens/remove-expired", &[]).await;
    assert_eq!(anonymous.status, 401);
    let reply = server
        .post_basic("/oauth2/tokens/remove-expired", ADMIN.0, ADMIN.1, &[])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.json);
    assert_eq!(reply.json["removed"], 2);
    assert_eq!(reply.json["access_tokens"], 2);
    assert_eq!(
        server.introspect(str_of(&live, "access_token")).await["active"],
        true
    );
    // The webMethods alias answers GET too.
    let alias = server
        .http
        .get(server.url("/invoke/pub.oauth/removeExpiredAccessTokens"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .expect("request");
    let alias = Reply::read(alias).await;
    assert_eq!(alias.status, 200);
    assert_eq!(alias.json["removed"], 0);

    let dir = tempfile::tempdir().expect("dir");
    let no_admin = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let refused = no_admin
        .post_basic("/oauth2/tokens/remove-expired", ADMIN.0, ADMIN.1, &[])
        .await;
    assert_eq!(refused.status, 403);
}

#[tokio::test]
async fn tokens_and_the_signing_key_survive_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Jwt), None).await;
    let grant = server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
    let jwks_before = server.get("/oauth2/jwks").await.json;
    drop(server);

    let server = TestServer::start(settings(dir.path(), TokenFormat::Jwt), None).await;
    assert_eq!(server.get("/oauth2/jwks").await.json, jwks_before);
    assert_eq!(
        server.introspect(str_of(&grant, "access_token")).await["active"],
        true
    );
    let refreshed = server
        .token(
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_of(&grant, "refresh_token")),
            ],
        )
        .await;
    assert!(refreshed["access_token"].is_string());
}

/// Removing a user or a client from the settings ends their tokens at
/// introspection, as it already ends their refreshes: a never-expiring
/// opaque token of a removed client included.
#[tokio::test]
async fn introspection_forgets_the_tokens_of_removed_users_and_clients() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let alice = server
        .token("app", "s3cret/+:&", &password_form("alice", "wonderland"))
        .await;
    let bob = server
        .token("app", "s3cret/+:&", &password_form("bob", "builder"))
        .await;
    let forever = server
        .token(
            "forever",
            "forever-secret",
            &[("grant_type", "client_credentials")],
        )
        .await;
    for grant in [&alice, &bob, &forever] {
        let info = server.introspect(str_of(grant, "access_token")).await;
        assert_eq!(info["active"], true, "{info}");
    }
    drop(server);

    let mut fewer = settings(dir.path(), TokenFormat::Opaque);
    fewer.users.retain(|u| u.username != "alice");
    fewer.clients.retain(|c| c.client_id != "forever");
    let server = TestServer::start(fewer, None).await;
    for grant in [&alice, &forever] {
        let info = server.introspect(str_of(grant, "access_token")).await;
        assert_eq!(info, json!({"active": false}));
    }
    let info = server.introspect(str_of(&bob, "access_token")).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["username"], "bob");
}

#[tokio::test]
async fn webmethods_alias_paths() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let grant = server
        .post_basic(
            "/invoke/pub.apigateway.oauth2/getAccessToken",
            "app",
            "s3cret/+:&",
            &password_form("alice", "wonderland"),
        )
        .await;
    assert_eq!(grant.status, 200, "{}", grant.json);
    let refreshed = server
        .post_basic(
            "/invoke/pub.oauth/refreshAccessToken",
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", str_of(&grant.json, "refresh_token")),
            ],
        )
        .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.json);
    let info = server
        .post_basic(
            "/invoke/pub.oauth/introspectToken",
            "introspector",
            "intro-secret",
            &[("token", str_of(&refreshed.json, "access_token"))],
        )
        .await;
    assert_eq!(info.json["active"], true);
}

#[tokio::test]
async fn require_https_refuses_plain_http() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path(), TokenFormat::Opaque);
    s.require_https = true;
    let server = TestServer::start(s, None).await;
    let cc = [("grant_type", "client_credentials")];
    let plain = server
        .post_basic("/oauth2/token", "app", "s3cret/+:&", &cc)
        .await;
    assert_eq!((plain.status, plain.error()), (400, "invalid_request"));
    let plain = server
        .post_basic(
            "/oauth2/introspect",
            "introspector",
            "intro-secret",
            &[("token", "x")],
        )
        .await;
    assert_eq!(plain.status, 400);
    let tls = server
        .send(
            server
                .http
                .post(server.url("/oauth2/token"))
                .basic_auth("app", Some("s3cret%2F%2B%3A%26"))
                .header("x-forwarded-proto", "https"),
            &cc,
        )
        .await;
    assert_eq!(tls.status, 200, "{}", tls.json);
    // Keys and metadata stay readable over HTTP.
    assert_eq!(server.get("/oauth2/jwks").await.status, 200);
}

/// RFC 6749 §2.3.1: client credentials never go in the request URI, nor
/// does any other secret of these forms; a request that puts one there is
/// refused, whatever its body holds, and says where they belong.
#[tokio::test]
async fn secrets_in_the_query_string_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let cc = [("grant_type", "client_credentials"), ("client_id", "app")];
    let in_query = server
        .post("/oauth2/token?client_secret=s3cret%2F%2B%3A%26", &cc)
        .await;
    assert_eq!(
        (in_query.status, in_query.error()),
        (400, "invalid_request")
    );
    assert!(
        in_query.json["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("URI")),
        "{}",
        in_query.json
    );
    assert_eq!(in_query.header("cache-control"), Some("no-store"));
    let granted = server
        .token("app", "s3cret/+:&", &[("grant_type", "client_credentials")])
        .await;
    let token = str_of(&granted, "access_token");
    for path in [
        format!("/oauth2/introspect?token={token}"),
        format!("/oauth2/revoke?t%6Fken={token}"),
        "/invoke/pub.apigateway.oauth2/getAccessToken?password=wonderland".to_owned(),
    ] {
        let reply = server
            .post_basic(&path, "introspector", "intro-secret", &[("token", token)])
            .await;
        assert_eq!(
            (reply.status, reply.error()),
            (400, "invalid_request"),
            "{path}"
        );
    }
    // Nothing was revoked, and the same requests with their secrets in
    // the body work.
    assert_eq!(server.introspect(token).await["active"], true);
    let mut body = cc.to_vec();
    body.push(("client_secret", "s3cret/+:&"));
    let in_body = server.post("/oauth2/token?x=1", &body).await;
    assert_eq!(in_body.status, 200, "{}", in_body.json);
}

#[tokio::test]
async fn malformed_requests_are_refused_and_the_next_one_works() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Opaque), None).await;
    let duplicate = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[
                ("grant_type", "client_credentials"),
                ("scope", "view"),
                ("scope", "book"),
            ],
        )
        .await;
    assert_eq!(
        (duplicate.status, duplicate.error()),
        (400, "invalid_request")
    );
    assert_eq!(duplicate.header("cache-control"), Some("no-store"));
    let json_body = server
        .http
        .post(server.url("/oauth2/token"))
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"client_credentials"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(json_body.status(), 400);
    let huge = "x".repeat(70 * 1024);
    let too_large = server
        .post_basic(
            "/oauth2/token",
            "app",
            "s3cret/+:&",
            &[("grant_type", "client_credentials"), ("pad", &huge)],
        )
        .await;
    assert_eq!(too_large.status, 413);
    let get = server.get("/oauth2/token").await;
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    server
        .token("app", "s3cret/+:&", &[("grant_type", "client_credentials")])
        .await;
}

#[tokio::test]
async fn metadata_describes_the_endpoints() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start(settings(dir.path(), TokenFormat::Jwt), None).await;
    let meta = server.get("/.well-known/oauth-authorization-server").await;
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json["issuer"], "http://localhost:4485");
    assert_eq!(
        meta.json["token_endpoint"],
        "http://localhost:4485/oauth2/token"
    );
    assert_eq!(meta.json["jwks_uri"], "http://localhost:4485/oauth2/jwks");
    assert_eq!(
        meta.json["scopes_supported"],
        json!(["view", "book", "cancel"])
    );
}

#[tokio::test]
async fn admin_helpers_list_without_values_and_revoke_by_id() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().expect("dir");
    let s = settings(dir.path(), TokenFormat::Opaque);
    let authz = tokio::task::spawn_blocking(move || AuthorizationServer::open(s))
        .await
        .expect("join")
        .expect("open");
    let body = "grant_type=password&username=alice&password=wonderland\
                &client_id=app&client_secret=s3cret%2F%2B%3A%26";
    let request = http::Request::post("/oauth2/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(bytes::Bytes::from(body))
        .expect("request");
    let ctx = RequestContext {
        is_https: false,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        admin_ok: None,
    };
    let response = authz.handle(request, ctx).await;
    assert_eq!(response.status(), 200);
    let grant: Value = serde_json::from_slice(response.body()).expect("json");

    let listing = authz.list_tokens().await.expect("list");
    assert!(!listing.truncated);
    let tokens = listing.tokens;
    assert_eq!(tokens.len(), 2);
    let listed = serde_json::to_string(&tokens).expect("json");
    assert!(!listed.contains(str_of(&grant, "access_token")));
    assert!(!listed.contains(str_of(&grant, "refresh_token")));
    let refresh = tokens
        .iter()
        .find(|t| t.kind == "refresh_token")
        .expect("refresh listed");
    assert!(authz
        .revoke_by_id(refresh.id.clone())
        .await
        .expect("revoke"));
    assert!(authz
        .list_tokens()
        .await
        .expect("list")
        .tokens
        .iter()
        .all(|t| t.revoked));
    // Revoked already, each is still known: revoking it again is no 404.
    for token in &tokens {
        assert!(
            authz.revoke_by_id(token.id.clone()).await.expect("revoke"),
            "{} revoked again",
            token.kind
        );
    }
    assert!(!authz.revoke_by_id("unknown".into()).await.expect("revoke"));
}

/// A client credentials token for `short`, the only token of `authz`.
async fn short_token(authz: &AuthorizationServer) {
    let request = http::Request::post("/oauth2/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(bytes::Bytes::from_static(
            b"grant_type=client_credentials&client_id=short&client_secret=short-secret",
        ))
        .expect("request");
    let ctx = RequestContext {
        is_https: false,
        address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        admin_ok: None,
    };
    assert_eq!(authz.handle(request, ctx).await.status(), 200);
    assert_eq!(authz.list_tokens().await.expect("list").tokens.len(), 1);
}

/// Without `cleanup_interval` expired tokens are removed every hour, with
/// no one asking; `0` turns that off.
#[tokio::test(start_paused = true)]
async fn expired_tokens_are_removed_hourly_when_no_cleanup_interval_is_written() {
    let dir = tempfile::tempdir().expect("dir");
    let compiled = |extra: &str| {
        let path = dir.path().join("microgateway.yaml");
        let yaml = format!(
            "authorization_server:\n  token_format: opaque\n  signing_key: keys/signing-key.pem\n  \
             store: sqlite:data/oauth.db\n  {extra}\n  clients:\n  - {{ client_id: short, \
             client_secret: short-secret, grant_types: [client_credentials], token_lifetime: 1 }}\n"
        );
        std::fs::write(&path, yaml).expect("write");
        let loaded = microgateway::config::load(&path, &microgateway::config::Env::new(), 1)
            .unwrap_or_else(|invalid| panic!("{:?}", invalid.findings));
        let settings = loaded.snapshot.authorization_server.as_deref();
        settings.expect("compiled").clone()
    };
    assert_eq!(compiled("cleanup_interval: 0").cleanup_interval, None);
    let settings = compiled("");
    assert_eq!(settings.cleanup_interval, Some(Duration::from_secs(3600)));
    let authz = tokio::task::spawn_blocking(move || AuthorizationServer::open(settings))
        .await
        .expect("join")
        .expect("open");
    short_token(&authz).await;
    authz.clock().advance(Duration::from_secs(2));
    let task = authz.spawn_cleanup().expect("a cleanup by default");
    tokio::time::sleep(Duration::from_secs(3599)).await;
    assert_eq!(authz.list_tokens().await.expect("list").tokens.len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut left = 1;
    for _ in 0..100 {
        left = authz.list_tokens().await.expect("list").tokens.len();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "not cleaned up within the hour");
    task.abort();
}

#[tokio::test]
async fn the_cleanup_task_removes_expired_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = settings(dir.path(), TokenFormat::Opaque);
    s.cleanup_interval = Some(Duration::from_millis(100));
    for client in &mut s.clients {
        if client.client_id == "short" {
            client.token_lifetime = Some(Duration::ZERO);
        }
    }
    let authz = tokio::task::spawn_blocking(move || AuthorizationServer::open(s))
        .await
        .expect("join")
        .expect("open");
    short_token(&authz).await;
    let task = authz.spawn_cleanup().expect("interval configured");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !authz.list_tokens().await.expect("list").tokens.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "not cleaned up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}
