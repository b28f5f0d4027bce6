//! The gateway as its own authorization server: tokens issued on the API
//! port (standard and webMethods paths, driven by a standard OAuth2 client)
//! and enforced by the same gateway — JWTs against the in-process keys,
//! opaque tokens by introspection against its own endpoint — plus
//! revocation, the admin token endpoints, which of them judge the
//! admin credentials, and refreshes retried within
//! `refresh_reuse_interval` (the scenarios, shared with the PostgreSQL
//! store's tests, are at the end).
//!
//! The issuer and the introspection endpoint must be written in the YAML,
//! so each gateway listens on a port picked beforehand: bind 127.0.0.1:0,
//! read the port, release it, and write it into `ports.http`.

use crate::common;

use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use common::oauth::Transport;
use common::{Gateway, Upstream};
use oauth2::basic::BasicClient;
use oauth2::{
    ClientId, ClientSecret, ResourceOwnerPassword, ResourceOwnerUsername, Scope, TokenResponse,
    TokenUrl,
};
use reqwest::Method;
use serde_json::Value;

const ADMIN: (&str, &str) = ("Administrator", "manage");

/// Confidential clients on one host: enough of them that, were their
/// Basic logins judged as admin logins, their address would be locked (5
/// failures lock a user name, 20 an address).
const PARTNERS: [(&str, &str); 4] = [
    ("partner-1", "partner-1-secret"),
    ("partner-2", "partner-2-secret"),
    ("partner-3", "partner-3-secret"),
    ("partner-4", "partner-4-secret"),
];

/// More logins per client than lock a user name.
const LOGINS_EACH: usize = 6;

fn cheap_hash(password: &str) -> String {
    let params = Params::new(8, 1, 1, None).expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

#[derive(Clone, Copy)]
struct Options {
    token_format: &'static str,
    admin: bool,
    /// Both issuers written with a trailing `/`.
    trailing_slash: bool,
}

/// `local` introspects at `/oauth2/introspect`, `local-wm` at the webMethods
/// path; `/travels` is enforced with `local`, `/wm-travels` with `local-wm`.
fn yaml(port: u16, upstream: &Upstream, options: Options) -> String {
    let base = format!("http://127.0.0.1:{port}");
    let issuer = match options.trailing_slash {
        true => format!("{base}/"),
        false => base.clone(),
    };
    let admin = if options.admin {
        format!(
            r#"{{ port: 0, bind: 127.0.0.1, user: {}, password: "{}" }}"#,
            ADMIN.0, ADMIN.1
        )
    } else {
        "{ port: 0, bind: 127.0.0.1 }".to_owned()
    };
    let auth_server = |id: &str, path: &str| {
        format!(
            r#"
  - id: {id}
    name: {id}
    localIntrospectionConfig:
      issuer: "{issuer}"
    remoteIntrospectionConfig:
      introspectionEndpoint: "{base}{path}"
      clientId: gateway
      clientSecret: gateway-secret
      cache_ttl: 1s
      negative_cache_ttl: 1s"#
        )
    };
    let api = |name: &str, base: &str, auth: &str| {
        format!(
            r#"
- name: "{name}"
  version: "1.0"
  base_path: {base}
  upstream: {{ url: "{upstream}" }}
  authentication: {{ type: oauth2, auth_server: {auth} }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings"]
  - name: CancelTickets
    resources: ["DELETE /bookings/{{id}}"]"#,
            upstream = upstream.url("/api"),
        )
    };
    let mappings = |auth: &str, api: &str| {
        format!(
            r#"
- {{ auth_server: {auth}, scope: view,   api_scopes: ["{api}:ViewTickets"] }}
- {{ auth_server: {auth}, scope: cancel, api_scopes: ["{api}:CancelTickets"] }}"#
        )
    };
    format!(
        r#"
ports: {{ http: {port}, bind: 127.0.0.1 }}
admin: {admin}
authorization_server:
  issuer: "{issuer}"
  token_format: {format}
  signing_key: signing-key.pem
  store: sqlite:oauth.db
  token_lifetime: 300
  scopes:
  - {{ name: view, description: "View your bookings" }}
  - {{ name: cancel, description: "Cancel bookings" }}
  users:
  - {{ username: alice, password_hash: "{hash}" }}
  clients:
  - name: Book your ticket
    client_id: app
    client_secret: app-secret
    grant_types: [client_credentials, password, refresh_token]
    scopes: [view, cancel]
    refresh_limit: 3
  - name: Gateway introspection
    client_id: gateway
    client_secret: gateway-secret
    introspect: true
    grant_types: []
    scopes: []{partners}
security_settings:
  auth_servers:{servers}
scope_mappings:{mappings}
apis:{apis}
"#,
        format = options.token_format,
        hash = cheap_hash("wonderland"),
        partners = PARTNERS
            .map(|(id, secret)| format!(
                r#"
  - {{ name: {id}, client_id: {id}, client_secret: {secret}, introspect: true,
       grant_types: [client_credentials], scopes: [view] }}"#
            ))
            .concat(),
        servers = auth_server("local", "/oauth2/introspect")
            + &auth_server("local-wm", "/invoke/pub.oauth/introspectToken"),
        mappings = mappings("local", "Time travels") + &mappings("local-wm", "WM travels"),
        apis = api("Time travels", "/travels", "local")
            + &api("WM travels", "/wm-travels", "local-wm"),
    )
}

struct World {
    upstream: Upstream,
    gw: Gateway,
}

async fn world(options: Options) -> World {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&yaml(common::ports::unused(), &upstream, options)).await;
    gw.wait_ready().await;
    World { upstream, gw }
}

/// A standard OAuth2 client that knows the token endpoint only.
type TokenClient = BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// The OAuth2 library's transport: our reqwest client (the library's own
/// reqwest feature pins another major version).
impl World {
    fn oauth_client(&self, token_path: &str) -> TokenClient {
        self.oauth_client_of(("app", "app-secret"), token_path)
    }

    /// A standard client with this id and secret, which it sends as Basic
    /// credentials (RFC 6749 §2.3.1).
    fn oauth_client_of(&self, (id, secret): (&str, &str), token_path: &str) -> TokenClient {
        BasicClient::new(ClientId::new(id.into()))
            .set_client_secret(ClientSecret::new(secret.into()))
            .set_token_uri(TokenUrl::new(self.gw.url(token_path)).expect("token URL"))
    }

    fn transport(&self) -> Transport {
        Transport(common::client())
    }

    /// An access token for `scopes` by client credentials at `token_path`.
    async fn client_credentials(&self, token_path: &str, scopes: &[&str]) -> String {
        let client = self.oauth_client(token_path);
        let mut request = client.exchange_client_credentials();
        for scope in scopes {
            request = request.add_scope(Scope::new(scope.to_string()));
        }
        let token = request
            .request_async(&self.transport())
            .await
            .expect("client credentials grant");
        token.access_token().secret().clone()
    }

    async fn send(&self, method: Method, path: &str, token: &str) -> reqwest::Response {
        self.gw
            .request(method, path)
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    async fn status(&self, method: Method, path: &str, token: &str) -> u16 {
        self.send(method, path, token).await.status().as_u16()
    }

    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.gw.client.request(method, self.gw.admin_url(path))
    }

    async fn tokens(&self) -> Vec<Value> {
        let resp = self
            .admin(Method::GET, "/rest/microgateway/oauth2/tokens")
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .expect("list");
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.expect("JSON");
        body["tokens"].as_array().expect("a list").clone()
    }

    /// `GET /rest/microgateway/status` with the admin credentials.
    async fn admin_status(&self) -> u16 {
        self.admin(Method::GET, "/rest/microgateway/status")
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .expect("status")
            .status()
            .as_u16()
    }

    /// Asks the authorization server to remove expired tokens at `path`,
    /// with these Basic credentials, if any.
    async fn remove_expired(&self, method: Method, path: &str, login: Option<(&str, &str)>) -> u16 {
        let mut request = self.gw.client.request(method, self.gw.url(path));
        if let Some((user, password)) = login {
            request = request.basic_auth(user, Some(password));
        }
        request.send().await.expect("remove").status().as_u16()
    }
}

const JWT: Options = Options {
    token_format: "jwt",
    admin: true,
    trailing_slash: false,
};
const OPAQUE: Options = Options {
    token_format: "opaque",
    admin: true,
    trailing_slash: false,
};

#[tokio::test]
async fn jwt_from_the_local_server_is_validated_in_process() {
    let w = world(JWT).await;
    for token_path in [
        "/oauth2/token",
        "/invoke/pub.apigateway.oauth2/getAccessToken",
    ] {
        let token = w.client_credentials(token_path, &["view"]).await;
        assert_eq!(token.split('.').count(), 3, "a JWT");
        assert_eq!(
            w.status(Method::GET, "/travels/bookings", &token).await,
            200
        );
        let resp = w.send(Method::DELETE, "/travels/bookings/1", &token).await;
        assert_eq!(resp.status(), 403);
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Bearer error="insufficient_scope", scope="cancel""#
        );
    }
    let both = w
        .client_credentials("/oauth2/token", &["view", "cancel"])
        .await;
    assert_eq!(
        w.status(Method::DELETE, "/travels/bookings/1", &both).await,
        200
    );
    assert_eq!(w.upstream.hits(), 3);
    // A token of another issuer with the same shape is refused.
    let mut forged: Vec<&str> = both.split('.').collect();
    forged[2] = "AAAA";
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", &forged.join("."))
            .await,
        401
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn same_issuer_written_with_a_trailing_slash_still_validates_in_process() {
    let w = world(Options {
        trailing_slash: true,
        ..JWT
    })
    .await;
    let token = w.client_credentials("/oauth2/token", &["view"]).await;
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", &token).await,
        200
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn password_grant_and_refresh_through_a_standard_client() {
    let w = world(JWT).await;
    let client = w.oauth_client("/oauth2/token");
    let first = client
        .exchange_password(
            &ResourceOwnerUsername::new("alice".into()),
            &ResourceOwnerPassword::new("wonderland".into()),
        )
        .add_scope(Scope::new("view".into()))
        .request_async(&w.transport())
        .await
        .expect("password grant");
    let token = first.access_token().secret();
    assert_eq!(w.status(Method::GET, "/travels/bookings", token).await, 200);
    let mut refresh = first.refresh_token().expect("a refresh token").clone();
    // A refresh token is no bearer token for the API.
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", refresh.secret())
            .await,
        401
    );
    for token_path in ["/oauth2/token", "/invoke/pub.oauth/refreshAccessToken"] {
        let refreshed = w
            .oauth_client(token_path)
            .exchange_refresh_token(&refresh)
            .request_async(&w.transport())
            .await
            .expect("refresh grant");
        let token = refreshed.access_token().secret();
        assert_eq!(w.status(Method::GET, "/travels/bookings", token).await, 200);
        // Refresh tokens rotate: each grant hands out a new one.
        let next = refreshed.refresh_token().expect("rotated").clone();
        assert_ne!(next.secret(), refresh.secret());
        refresh = next;
    }
    w.gw.shutdown().await;
}

#[tokio::test]
async fn opaque_token_is_introspected_against_the_local_server() {
    let w = world(OPAQUE).await;
    for token_path in [
        "/oauth2/token",
        "/invoke/pub.apigateway.oauth2/getAccessToken",
    ] {
        let token = w.client_credentials(token_path, &["view"]).await;
        assert_eq!(token.split('.').count(), 1, "an opaque token");
        // `/travels` introspects at /oauth2/introspect, `/wm-travels` at
        // /invoke/pub.oauth/introspectToken.
        for base in ["/travels", "/wm-travels"] {
            assert_eq!(
                w.status(Method::GET, &format!("{base}/bookings"), &token)
                    .await,
                200
            );
            let resp = w
                .send(Method::DELETE, &format!("{base}/bookings/1"), &token)
                .await;
            assert_eq!(resp.status(), 403, "{base}");
        }
    }
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", "unknown-token")
            .await,
        401
    );
    assert_eq!(w.upstream.hits(), 4);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn revoked_opaque_token_is_refused_once_the_cache_expires() {
    let w = world(OPAQUE).await;
    let token = w.client_credentials("/oauth2/token", &["view"]).await;
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", &token).await,
        200
    );
    // RFC 7009 revocation by the client that holds the token.
    let resp =
        w.gw.client
            .post(w.gw.url("/oauth2/revoke"))
            .basic_auth("app", Some("app-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}&token_type_hint=access_token"))
            .send()
            .await
            .expect("revoke");
    assert_eq!(resp.status(), 200);
    // cache_ttl is 1s: after it, the gateway asks again and is told "inactive".
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resp = w.send(Method::GET, "/travels/bookings", &token).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(w.upstream.hits(), 1);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn admin_lists_tokens_without_values_and_revokes_one_by_id() {
    let w = world(OPAQUE).await;
    let token = w.client_credentials("/oauth2/token", &["view"]).await;
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", &token).await,
        200
    );
    let listed = w.tokens().await;
    assert_eq!(listed.len(), 1);
    assert!(!Value::Array(listed.clone()).to_string().contains(&token));
    let id = listed[0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(listed[0]["client_id"], "app");
    assert_eq!(listed[0]["revoked"], false);

    let path = format!("/rest/microgateway/oauth2/tokens/{id}");
    for (user, password) in [(None, None), (Some("Administrator"), Some("wrong"))] {
        let mut request = w.admin(Method::DELETE, &path);
        if let Some(user) = user {
            request = request.basic_auth(user, password);
        }
        assert_eq!(request.send().await.expect("delete").status(), 401);
        let mut list = w.admin(Method::GET, "/rest/microgateway/oauth2/tokens");
        if let Some(user) = user {
            list = list.basic_auth(user, password);
        }
        assert_eq!(list.send().await.expect("list").status(), 401);
    }
    let resp = w
        .admin(Method::DELETE, &path)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 200);
    assert_eq!(w.tokens().await[0]["revoked"], true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", &token).await,
        401
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn admin_token_endpoints_are_off_without_admin_credentials() {
    let w = world(Options {
        admin: false,
        ..OPAQUE
    })
    .await;
    let token = w.client_credentials("/oauth2/token", &["view"]).await;
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", &token).await,
        200
    );
    let list = w.admin(Method::GET, "/rest/microgateway/oauth2/tokens");
    assert_eq!(list.send().await.expect("list").status(), 403);
    let delete = w.admin(Method::DELETE, "/rest/microgateway/oauth2/tokens/anything");
    assert_eq!(delete.send().await.expect("delete").status(), 403);
    let remove = "/oauth2/tokens/remove-expired";
    assert_eq!(
        w.remove_expired(Method::POST, remove, Some(ADMIN)).await,
        403
    );
    assert_eq!(
        w.status(Method::GET, "/travels/bookings", &token).await,
        200
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn client_basic_logins_at_the_token_endpoint_leave_the_admin_port_open() {
    let w = world(OPAQUE).await;
    for partner in PARTNERS {
        let client = w.oauth_client_of(partner, "/oauth2/token");
        for _ in 0..LOGINS_EACH {
            client
                .exchange_client_credentials()
                .add_scope(Scope::new("view".into()))
                .request_async(&w.transport())
                .await
                .expect("client credentials grant");
        }
    }
    assert_eq!(w.admin_status().await, 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn client_basic_logins_at_the_introspection_endpoint_leave_the_admin_port_open() {
    let w = world(OPAQUE).await;
    // Anyone can make the gateway introspect, with its own Basic client
    // credentials and from 127.0.0.1, by sending tokens it does not know.
    for n in 0..LOGINS_EACH {
        let token = format!("unknown-token-{n}");
        assert_eq!(
            w.status(Method::GET, "/travels/bookings", &token).await,
            401
        );
    }
    for (id, secret) in &PARTNERS[1..] {
        for _ in 0..LOGINS_EACH {
            let resp =
                w.gw.client
                    .post(w.gw.url("/oauth2/introspect"))
                    .basic_auth(id, Some(secret))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("token=unknown-token")
                    .send()
                    .await
                    .expect("introspect");
            assert_eq!(resp.status(), 200);
        }
    }
    assert_eq!(w.admin_status().await, 200);
    w.gw.shutdown().await;
}

/// Guessed client secrets lock their address out of client
/// authentication, on a count of its own: the admin port stays open to
/// the same address.
#[tokio::test]
async fn guessed_client_secrets_lock_client_authentication_not_the_admin_port() {
    let w = world(OPAQUE).await;
    let token = |(id, secret): (&str, &str)| {
        w.gw.client
            .post(w.gw.url("/oauth2/token"))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
    };
    for n in 0..20 {
        let (id, _) = PARTNERS[n % PARTNERS.len()];
        let resp = token((id, "wrong")).await.expect("token");
        assert_eq!(resp.status(), 401, "{n}");
    }
    let locked = token(PARTNERS[0]).await.expect("token");
    assert_eq!(locked.status(), 429);
    assert!(locked.headers().contains_key("retry-after"));
    let body: Value = locked.json().await.expect("JSON");
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(w.admin_status().await, 200);
    w.gw.shutdown().await;
}

#[tokio::test]
async fn removing_expired_tokens_judges_the_admin_credentials() {
    let w = world(OPAQUE).await;
    let remove = "/oauth2/tokens/remove-expired";
    let alias = "/invoke/pub.oauth/removeExpiredAccessTokens";
    assert_eq!(
        w.remove_expired(Method::POST, remove, Some(ADMIN)).await,
        200
    );
    assert_eq!(w.remove_expired(Method::GET, alias, Some(ADMIN)).await, 200);
    assert_eq!(w.remove_expired(Method::POST, remove, None).await, 401);
    // A wrong password counts, on either path, as a failed admin login:
    // five lock the user name, on the admin port too.
    let wrong = Some((ADMIN.0, "wrong"));
    for path in [remove, alias, remove, alias, remove] {
        assert_eq!(w.remove_expired(Method::POST, path, wrong).await, 401);
    }
    assert_eq!(
        w.remove_expired(Method::POST, remove, Some(ADMIN)).await,
        401
    );
    assert_eq!(w.admin_status().await, 429);
    w.gw.shutdown().await;
}

// ------------------------------------------------ refresh_reuse_interval

/// An authorization server on `store` whose client `app` may retry a
/// refresh within 30 s (the server's interval) and whose client `strict`
/// may not (its own 0s); both have 3 refreshes.
pub(crate) fn reuse_yaml(store: &str) -> String {
    let client = |id: &str, own: &str| {
        format!(
            r#"
  - {{ name: {id}, client_id: {id}, client_secret: {id}-secret-of-some-length,
       grant_types: [password, refresh_token], scopes: [view, cancel], refresh_limit: 3{own} }}"#
        )
    };
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
authorization_server:
  issuer: "http://localhost:4485"
  token_format: opaque
  store: "{store}"
  token_lifetime: 300
  refresh_reuse_interval: 30s
  scopes:
  - {{ name: view, description: "View your bookings" }}
  - {{ name: cancel, description: "Cancel bookings" }}
  users:
  - {{ username: alice, password_hash: "{hash}" }}
  clients:{app}{strict}
  - {{ name: Introspector, client_id: introspector,
       client_secret: introspector-secret-of-some-length, introspect: true, grant_types: [] }}
"#,
        hash = cheap_hash("wonderland"),
        // It may introspect: its own refresh tokens are looked at so.
        app = client("app", ", introspect: true"),
        strict = client("strict", ", refresh_reuse_interval: 0s"),
    )
}

/// Posts `form` to `path` with the client's Basic credentials: the status
/// and the JSON body.
pub(crate) async fn post_as(
    gw: &Gateway,
    client: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let response = gw
        .client
        .post(gw.url(path))
        .basic_auth(client, Some(format!("{client}-secret-of-some-length")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::authorize::query(form))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A password grant to `client`: its access and refresh tokens.
pub(crate) async fn signed_in(gw: &Gateway, client: &str) -> (String, String) {
    let form = [
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wonderland"),
    ];
    let (status, body) = post_as(gw, client, "/oauth2/token", &form).await;
    assert_eq!(status, 200, "{body}");
    (text(&body, "access_token"), text(&body, "refresh_token"))
}

pub(crate) async fn refreshed(gw: &Gateway, client: &str, refresh_token: &str) -> (u16, Value) {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    post_as(gw, client, "/oauth2/token", &form).await
}

/// Refreshes with `refresh_token`, which must succeed: the new access
/// token and refresh token, if one came.
async fn refresh_ok(gw: &Gateway, client: &str, refresh_token: &str) -> (String, Option<String>) {
    let (status, body) = refreshed(gw, client, refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let next = body["refresh_token"].as_str().map(str::to_owned);
    (text(&body, "access_token"), next)
}

/// Refreshes with `refresh_token`, which must be refused `invalid_grant`.
async fn refresh_refused(gw: &Gateway, client: &str, refresh_token: &str, why: &str) {
    let (status, body) = refreshed(gw, client, refresh_token).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{why}: {body}"
    );
}

async fn active(gw: &Gateway, token: &str) -> bool {
    let (status, body) = post_as(
        gw,
        "introspector",
        "/oauth2/introspect",
        &[("token", token)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["active"] == true
}

pub(crate) fn text(body: &Value, key: &str) -> String {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {body}"))
        .to_owned()
}

fn advance_clock(gw: &Gateway, by: Duration) {
    gw.state()
        .authz
        .load_full()
        .expect("the authorization server is on")
        .clock()
        .advance(by);
}

/// A refresh whose answer was lost, presented again (to `retry_on`)
/// within the interval: a new access and refresh token; the lost ones are
/// worthless. The retry counts no refresh; it works also for the refresh
/// that reached the limit. The lost refresh token presented after all is
/// reuse (its holder got the answer: whoever retried may be a thief), and
/// so is the first token once the new successor has been used.
pub(crate) async fn a_lost_refresh_answer_is_retried(first: &Gateway, retry_on: &Gateway) {
    let (_, r0) = signed_in(first, "app").await;
    let (lost_access, lost_refresh) = refresh_ok(first, "app", &r0).await;
    let lost_refresh = lost_refresh.expect("refreshes left");

    let (access, r1) = refresh_ok(retry_on, "app", &r0).await;
    let r1 = r1.expect("the lost rotation issued a refresh token: so does its retry");
    assert_ne!(access, lost_access);
    assert_ne!(r1, lost_refresh);
    assert!(!active(first, &lost_access).await, "the lost access token");
    assert!(active(first, &access).await);

    // 1 refresh of 3 counted: one more with a refresh token, then the last.
    let (_, r2) = refresh_ok(first, "app", &r1).await;
    let r2 = r2.expect("the retry counted no refresh");
    let (lost_last, none) = refresh_ok(retry_on, "app", &r2).await;
    assert_eq!(none, None, "the third refresh of 3 is the last");
    let (last, none) = refresh_ok(first, "app", &r2).await;
    assert_eq!(none, None, "a retry issues no more than its rotation did");
    assert!(!active(first, &lost_last).await);
    assert!(active(first, &last).await);

    // The refresh token of the lost answer, presented: reuse.
    refresh_refused(retry_on, "app", &lost_refresh, "the lost refresh token").await;
    assert!(!active(first, &last).await, "reuse revokes the family");

    // Another family: its retried rotation's successor used, the first
    // token again is reuse.
    let (_, r0) = signed_in(first, "app").await;
    refresh_ok(first, "app", &r0).await;
    let (_, r1) = refresh_ok(retry_on, "app", &r0).await;
    let (access, _) = refresh_ok(first, "app", &r1.expect("refreshes left")).await;
    refresh_refused(
        retry_on,
        "app",
        &r0,
        "the retried rotation's successor was used",
    )
    .await;
    assert!(!active(first, &access).await, "reuse revokes the family");

    // The lost refresh token revoked by its client (a sign-out on the
    // device that did get the answer): the family with it.
    let (_, r0) = signed_in(first, "app").await;
    let (_, lost) = refresh_ok(first, "app", &r0).await;
    let (access, _) = refresh_ok(retry_on, "app", &r0).await;
    let form = [("token", lost.expect("refreshes left"))];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = post_as(first, "app", "/oauth2/revoke", &form).await;
    assert_eq!(status, 200, "{body}");
    assert!(!active(retry_on, &access).await, "the family is revoked");

    // A retry asking what its rotation did not is reuse, not a refusal
    // that leaves the family be: a scope the client has not, or fewer
    // than the rotation was granted (`view cancel`, the family's).
    for scope in ["book", "view"] {
        let (_, r0) = signed_in(first, "app").await;
        let (access, _) = refresh_ok(first, "app", &r0).await;
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", r0.as_str()),
            ("scope", scope),
        ];
        let (status, body) = post_as(retry_on, "app", "/oauth2/token", &form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{scope}: {body}"
        );
        assert!(
            !active(first, &access).await,
            "{scope}: reuse revokes the family"
        );
    }
}

/// The rotation made on `first`, whose clock is 10 s ahead of
/// `retry_on`'s: retried on `retry_on` all the same (an interval of 30 s).
pub(crate) async fn a_retry_on_a_replica_whose_clock_is_behind_is_a_retry(
    first: &Gateway,
    retry_on: &Gateway,
) {
    advance_clock(first, Duration::from_secs(10));
    let (_, r0) = signed_in(first, "app").await;
    let (lost, _) = refresh_ok(first, "app", &r0).await;
    let (access, _) = refresh_ok(retry_on, "app", &r0).await;
    assert!(!active(first, &lost).await);
    assert!(active(first, &access).await, "a retry, not reuse");
}

/// Presented again once the interval has passed (by the clock of the
/// server it reaches), a rotated token is reuse: the family is revoked.
pub(crate) async fn a_retry_after_the_reuse_interval_revokes_the_family(
    first: &Gateway,
    retry_on: &Gateway,
) {
    let (_, r0) = signed_in(first, "app").await;
    let (access, r1) = refresh_ok(first, "app", &r0).await;
    advance_clock(retry_on, Duration::from_secs(30));
    refresh_refused(retry_on, "app", &r0, "30 s after the rotation").await;
    assert!(!active(retry_on, &access).await);
    refresh_refused(first, "app", &r1.expect("rotated"), "its family is revoked").await;
}

/// A client whose own interval is 0s keeps strict reuse detection, as
/// every client does by default.
pub(crate) async fn a_client_with_a_reuse_interval_of_0s_is_never_retried(
    first: &Gateway,
    retry_on: &Gateway,
) {
    let (_, r0) = signed_in(first, "strict").await;
    let (access, r1) = refresh_ok(first, "strict", &r0).await;
    refresh_refused(retry_on, "strict", &r0, "reuse, at once").await;
    assert!(!active(retry_on, &access).await);
    refresh_refused(
        first,
        "strict",
        &r1.expect("rotated"),
        "its family is revoked",
    )
    .await;
}

/// Retries of one rotation at once (on `first` and `other` in turn): at
/// least one is answered, and when two overlap the later one is reuse,
/// which revokes the family; either way at most one refresh token of the
/// family is left that refreshes.
pub(crate) async fn concurrent_retries_leave_at_most_one_live_refresh_token(
    first: &Gateway,
    other: &Gateway,
) {
    let (_, r0) = signed_in(first, "app").await;
    let (_, lost) = refresh_ok(first, "app", &r0).await;
    let retries = (0..6).map(|i| refreshed(if i % 2 == 0 { first } else { other }, "app", &r0));
    let outcomes = futures_util::future::join_all(retries).await;
    let answered: Vec<&Value> = outcomes
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
        .collect();
    assert!(!answered.is_empty(), "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|(status, body)| *status == 200 || body["error"] == "invalid_grant"),
        "{outcomes:?}"
    );
    let reused = answered.len() < outcomes.len();
    for body in &answered {
        let access = text(body, "access_token");
        if reused {
            assert!(!active(other, &access).await, "reuse revokes the family");
        }
    }
    let mut live = 0;
    let candidates = answered
        .iter()
        .map(|body| text(body, "refresh_token"))
        .chain(lost);
    // Looked at by their client, not used: a spent one used would be reuse.
    for refresh_token in candidates {
        let (status, body) = post_as(
            first,
            "app",
            "/oauth2/introspect",
            &[("token", &refresh_token)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if body["active"] == true {
            live += 1;
        }
    }
    assert!(live <= 1, "{live} refresh tokens of one family refreshed");
    assert_eq!(live == 0, reused, "{outcomes:?}");
}

/// A rotated refresh token presented after its family has ended is
/// still reuse: the access token its rotation issued, which may outlive
/// the family, is revoked with it.
#[tokio::test]
async fn a_rotated_refresh_token_presented_after_its_family_ended_revokes_what_it_bought() {
    let yaml = reuse_yaml("sqlite:oauth.db").replace(
        "  refresh_reuse_interval: 30s\n",
        "  refresh_reuse_interval: 30s\n  refresh_token_lifetime: 6m\n",
    );
    assert!(yaml.contains("refresh_token_lifetime: 6m"));
    let gw = Gateway::start(&yaml).await;
    let (_, r0) = signed_in(&gw, "app").await;
    advance_clock(&gw, Duration::from_secs(240));
    let (access, _) = refresh_ok(&gw, "app", &r0).await;
    // The family ends at 360 s; the access token of the rotation at 540 s.
    advance_clock(&gw, Duration::from_secs(180));
    assert!(active(&gw, &access).await, "still within its own lifetime");
    refresh_refused(&gw, "app", &r0, "the rotated token, after the family's end").await;
    assert!(
        !active(&gw, &access).await,
        "reuse revokes the family's access tokens, whenever it comes"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn a_lost_refresh_answer_is_retried_within_the_reuse_interval() {
    let gw = Gateway::start(&reuse_yaml("sqlite:oauth.db")).await;
    a_lost_refresh_answer_is_retried(&gw, &gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_refresh_retried_after_the_reuse_interval_revokes_the_family() {
    let gw = Gateway::start(&reuse_yaml("sqlite:oauth.db")).await;
    a_retry_after_the_reuse_interval_revokes_the_family(&gw, &gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_with_a_reuse_interval_of_0s_detects_reuse_at_once() {
    let gw = Gateway::start(&reuse_yaml("sqlite:oauth.db")).await;
    a_client_with_a_reuse_interval_of_0s_is_never_retried(&gw, &gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn concurrent_retries_of_a_refresh_leave_at_most_one_live_refresh_token() {
    let gw = Gateway::start(&reuse_yaml("sqlite:oauth.db")).await;
    for _ in 0..5 {
        concurrent_retries_leave_at_most_one_live_refresh_token(&gw, &gw).await;
    }
    gw.shutdown().await;
}
