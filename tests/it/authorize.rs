//! The authorization endpoint over real loopback HTTP, driven through its
//! HTML the way a browser would: GET the page, read its form, POST the
//! login and the approval with the CSRF token and session cookie, follow
//! the 303 to the client's redirect URI, exchange the code, call the API.
//! Also: PKCE rules, redirect URI and client checks, code replay and
//! expiry, CSRF, the implicit grant, customised and broken templates, a
//! standard OAuth2 client library, and (when installed) headless Chromium.

use crate::common;

use std::path::Path;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::Gateway;
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub(crate) const CALLBACK: &str = "http://localhost:8000/callback";
const SPA_CALLBACK: &str = "http://127.0.0.1:8001/cb";
pub(crate) const SECRET: &str = "bookyourticket-secret";

pub(crate) fn cheap_hash(password: &str) -> String {
    let params = Params::new(8, 1, 1, None).expect("params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("hash")
        .to_string()
}

/// What differs between the tests' gateways.
#[derive(Default)]
pub(crate) struct Options<'a> {
    pub(crate) code_lifetime: Option<&'a str>,
    pub(crate) approval_page: Option<&'a Path>,
    /// `authorization_server.branding`, as a YAML flow mapping.
    pub(crate) branding: Option<&'a str>,
    /// `trusted_proxies`, as a YAML flow sequence.
    pub(crate) trusted_proxies: Option<&'a str>,
}

pub(crate) fn yaml(options: &Options<'_>) -> String {
    let hash = cheap_hash("wonderland");
    let lifetime = options.code_lifetime.unwrap_or("600s");
    let page = options
        .approval_page
        .map(|p| format!("approval_page: \"{}\"", p.display()))
        .unwrap_or_default();
    let branding = options
        .branding
        .map(|b| format!("branding: {b}"))
        .unwrap_or_default();
    let proxies = options.trusted_proxies.unwrap_or("[]");
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
trusted_proxies: {proxies}
admin: {{ port: 0 }}
authorization_server:
  issuer: "http://localhost:4485"
  token_format: jwt
  signing_key: data/signing-key.pem
  store: sqlite:data/oauth.db
  authorization_code_lifetime: {lifetime}
  {page}
  {branding}
  scopes:
  - {{ name: view, description: "View your bookings" }}
  - {{ name: book, description: "Book tickets" }}
  - {{ name: cancel, description: "Cancel bookings" }}
  users:
  - {{ username: alice, password_hash: "{hash}" }}
  clients:
  - name: BookYourTicket
    client_id: bookyourticket
    client_secret: "{SECRET}"
    redirect_uris: ["{CALLBACK}"]
    grant_types: [authorization_code, refresh_token]
    scopes: [view, book, cancel]
    refresh_limit: 1
  - name: Time Travel SPA
    client_id: spa
    redirect_uris: ["{SPA_CALLBACK}", "http://127.0.0.1:8001/other"]
    grant_types: [authorization_code, implicit]
    scopes: [view, book]
  - name: Introspector
    client_id: introspector
    client_secret: intro-secret
    introspect: true
    grant_types: []
security_settings:
  auth_servers:
  - id: local
    name: local
    type: authServerAlias
    localIntrospectionConfig:
      issuer: "http://localhost:4485"
scope_mappings:
- {{ auth_server: local, scope: view, api_scopes: ["Time travels:ViewTickets"] }}
- {{ auth_server: local, scope: book, api_scopes: ["Time travels:BookTickets"] }}
apis:
- name: "Time travels"
  version: "1.0"
  base_path: /travels
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: local }}
  scopes:
  - {{ name: ViewTickets, resources: ["GET /bookings"] }}
  - {{ name: BookTickets, resources: ["POST /bookings"] }}
"#
    )
}

/// `yaml` with alice's entry among the users replaced by `entry` (a YAML
/// flow mapping).
pub(crate) fn with_alice_as(yaml: &str, entry: &str) -> String {
    yaml.lines()
        .map(|line| match line.split_once("- { username: alice,") {
            Some((indent, _)) => format!("{indent}- {entry}"),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Alice's new password, and a user who is not alice.
pub(crate) fn alice_changed_and_removed() -> [String; 2] {
    [
        format!(
            r#"{{ username: alice, password_hash: "{}" }}"#,
            cheap_hash("looking-glass")
        ),
        format!(
            r#"{{ username: bob, password_hash: "{}" }}"#,
            cheap_hash("builder")
        ),
    ]
}

/// A consent form of a session that is no longer signed in: refused
/// with the login form, no redirect.
pub(crate) fn assert_back_to_login(refused: &Reply) {
    assert!(
        refused.headers.get("location").is_none(),
        "{}",
        refused.body
    );
    assert!(refused.form().text_inputs.contains(&"username".to_owned()));
}

async fn gateway() -> Gateway {
    Gateway::start(&yaml(&Options::default())).await
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

pub(crate) fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A PKCE verifier and its S256 challenge (RFC 7636 §4.1–4.2).
pub(crate) fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 32] {
    // Unique enough for tests: hash of the time and a counter.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{:?}{}",
        std::time::SystemTime::now(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    Sha256::digest(seed.as_bytes()).into()
}

/// The query (or fragment) parameters of a URL.
fn params_of(part: &str) -> Vec<(String, String)> {
    part.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| {
                percent_decode_str(&s.replace('+', " "))
                    .decode_utf8()
                    .expect("utf-8")
                    .into_owned()
            };
            (decode(k), decode(v))
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A redirect to the client: its URI without parameters, and them.
fn split_redirect(location: &str) -> (String, Vec<(String, String)>) {
    if let Some((base, fragment)) = location.split_once('#') {
        return (base.to_owned(), params_of(fragment));
    }
    match location.split_once('?') {
        Some((base, query)) => (base.to_owned(), params_of(query)),
        None => (location.to_owned(), Vec::new()),
    }
}

/// Asserts a 303 back to `base` with `error` and `state`; returns all the
/// redirect's parameters.
fn error_redirect(reply: &Reply, base: &str, error: &str, state: &str) -> Vec<(String, String)> {
    assert_eq!(reply.status, 303);
    let (to, params) = split_redirect(reply.location());
    assert_eq!(to, base);
    assert_eq!(param(&params, "error"), Some(error));
    assert_eq!(param(&params, "state"), Some(state));
    params
}

// ---- a tiny HTML form scanner ---------------------------------------------

/// The fields of the page's form as a browser would post them.
#[derive(Debug, Default)]
pub(crate) struct HtmlForm {
    pub(crate) action: String,
    pub(crate) hidden: Vec<(String, String)>,
    /// Checkboxes: name, value, checked.
    pub(crate) checkboxes: Vec<(String, String, bool)>,
    /// Submit buttons: name, value.
    pub(crate) buttons: Vec<(String, String)>,
    pub(crate) text_inputs: Vec<String>,
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let Some(end) = tail.find(';') else {
            out.push_str(tail);
            return out;
        };
        let entity = &tail[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The attributes of one tag (`<input a="b" c>`), values unescaped.
fn attributes(tag: &str) -> Vec<(String, Option<String>)> {
    let mut attrs = Vec::new();
    let mut rest = tag.trim_start_matches(|c: char| c != ' ' && c != '>');
    loop {
        rest = rest.trim_start();
        if rest.is_empty() || rest.starts_with('>') || rest.starts_with("/>") {
            return attrs;
        }
        let name_end = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '>')
            .unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = &rest[name_end..];
        if let Some(after) = rest.strip_prefix('=') {
            let (value, tail) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    let end = body.find(q).expect("closing quote");
                    (&body[..end], &body[end + 1..])
                }
                _ => {
                    let end = after
                        .find(|c: char| c.is_whitespace() || c == '>')
                        .unwrap_or(after.len());
                    (&after[..end], &after[end..])
                }
            };
            attrs.push((name, Some(unescape(value))));
            rest = tail;
        } else {
            attrs.push((name, None));
        }
    }
}

fn tags<'h>(html: &'h str, name: &str) -> Vec<&'h str> {
    let open = format!("<{name}");
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        let tail = &rest[at..];
        let end = tail.find('>').expect("tag end");
        found.push(&tail[..=end]);
        rest = &tail[end + 1..];
    }
    found
}

fn scan(html: &str) -> HtmlForm {
    let get = |attrs: &[(String, Option<String>)], key: &str| {
        attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone().unwrap_or_default())
    };
    let mut form = HtmlForm::default();
    if let Some(tag) = tags(html, "form").first() {
        form.action = get(&attributes(tag), "action").unwrap_or_default();
    }
    for tag in tags(html, "input") {
        let attrs = attributes(tag);
        let name = get(&attrs, "name").unwrap_or_default();
        let value = get(&attrs, "value").unwrap_or_default();
        match get(&attrs, "type").as_deref() {
            Some("hidden") => form.hidden.push((name, value)),
            Some("checkbox") => {
                let checked = get(&attrs, "checked").is_some();
                form.checkboxes.push((name, value, checked));
            }
            _ => form.text_inputs.push(name),
        }
    }
    for tag in tags(html, "button") {
        let attrs = attributes(tag);
        if let (Some(name), Some(value)) = (get(&attrs, "name"), get(&attrs, "value")) {
            form.buttons.push((name, value));
        }
    }
    form
}

// ---- a browser: one cookie jar, no redirects followed ----------------------

pub(crate) struct Browser<'g> {
    gw: &'g Gateway,
    /// The `mcgw_session` cookie's value.
    pub(crate) cookie: Option<String>,
    /// The address a proxy on 127.0.0.1 names it by (`X-Forwarded-For`).
    forwarded_for: Option<&'static str>,
    /// The `Sec-Fetch-Mode` and `Sec-Fetch-Dest` a current browser sends
    /// (none: a client that sends no Fetch Metadata).
    pub(crate) fetch: Option<(&'static str, &'static str)>,
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn location(&self) -> &str {
        self.header("location").expect("a Location header")
    }

    pub(crate) fn form(&self) -> HtmlForm {
        scan(&self.body)
    }
}

impl<'g> Browser<'g> {
    pub(crate) fn new(gw: &'g Gateway) -> Browser<'g> {
        Browser {
            gw,
            cookie: None,
            forwarded_for: None,
            fetch: None,
        }
    }

    /// A browser at `address`, reaching `gw` through a proxy on 127.0.0.1
    /// (which the gateway must trust to believe it).
    pub(crate) fn at(gw: &'g Gateway, address: &'static str) -> Browser<'g> {
        Browser {
            forwarded_for: Some(address),
            ..Browser::new(gw)
        }
    }

    fn headers(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", format!("mcgw_session={cookie}"));
        }
        if let Some(address) = self.forwarded_for {
            request = request.header("x-forwarded-for", address);
        }
        if let Some((mode, dest)) = self.fetch {
            request = request
                .header("sec-fetch-mode", mode)
                .header("sec-fetch-dest", dest);
        }
        request
    }

    /// The same browser (cookie jar), its next requests reaching `gw`
    /// (another replica behind one load balancer).
    pub(crate) fn via(&mut self, gw: &'g Gateway) -> &mut Browser<'g> {
        self.gw = gw;
        self
    }

    pub(crate) async fn get(&mut self, path_and_query: &str) -> Reply {
        let request = self.headers(self.gw.client.get(self.gw.url(path_and_query)));
        self.read(request.send().await.expect("GET")).await
    }

    pub(crate) async fn post(&mut self, path: &str, fields: &[(String, String)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let request = self.headers(
            self.gw
                .client
                .post(self.gw.url(path))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body),
        );
        self.read(request.send().await.expect("POST")).await
    }

    async fn read(&mut self, response: reqwest::Response) -> Reply {
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().expect("cookie");
            if let Some(rest) = value.strip_prefix("mcgw_session=") {
                self.cookie = rest.split(';').next().map(str::to_owned);
            }
        }
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("body"),
        }
    }

    /// Posts the page's form with `action` and the extra fields.
    pub(crate) async fn submit(
        &mut self,
        page: &Reply,
        action: &str,
        extra: &[(&str, &str)],
    ) -> Reply {
        let form = page.form();
        assert!(
            form.buttons
                .iter()
                .any(|(n, v)| n == "action" && v == action),
            "no {action} button in:\n{}",
            page.body
        );
        let mut fields = form.hidden.clone();
        fields.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        fields.push(("action".into(), action.into()));
        let path = if form.action.is_empty() {
            "/oauth2/authorize".to_owned()
        } else {
            form.action.clone()
        };
        self.post(&path, &fields).await
    }

    /// GET the authorization URL, log in as alice (unless the session
    /// already has her): the consent page.
    pub(crate) async fn login(&mut self, authorize_query: &str) -> Reply {
        let page = self
            .get(&format!("/oauth2/authorize?{authorize_query}"))
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        if !page.form().text_inputs.contains(&"username".to_owned()) {
            // Logged in earlier in this session: straight to consent.
            return page;
        }
        let logged_in = self
            .submit(
                &page,
                "login",
                &[("username", "alice"), ("password", "wonderland")],
            )
            .await;
        assert_eq!(logged_in.status, 303, "{}", logged_in.body);
        let next = logged_in.location().to_owned();
        assert!(next.starts_with("/oauth2/authorize?"), "{next}");
        let consent = self.get(&next).await;
        assert_eq!(consent.status, 200, "{}", consent.body);
        consent
    }

    /// Logs in and approves `grant` (the ticked scopes; `None` = leave the
    /// boxes as they are): the redirect to the client.
    pub(crate) async fn approve(
        &mut self,
        authorize_query: &str,
        grant: Option<&[&str]>,
    ) -> String {
        let consent = self.login(authorize_query).await;
        let form = consent.form();
        let ticked: Vec<(&str, &str)> = match grant {
            Some(scopes) => scopes.iter().map(|s| ("grant_scope", *s)).collect(),
            None => form
                .checkboxes
                .iter()
                .filter(|(_, _, checked)| *checked)
                .map(|(n, v, _)| (n.as_str(), v.as_str()))
                .collect(),
        };
        let approved = self.submit(&consent, "approve", &ticked).await;
        assert_eq!(approved.status, 303, "{}", approved.body);
        approved.location().to_owned()
    }
}

pub(crate) fn code_query(client_id: &str, scope: &str, challenge: Option<&str>) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client_id),
        ("scope", scope),
        ("state", "xyz-state"),
    ];
    if let Some(challenge) = challenge {
        pairs.push(("code_challenge", challenge));
        pairs.push(("code_challenge_method", "S256"));
    }
    query(&pairs)
}

/// The public client's authorization query for `view`, with PKCE.
fn spa_query(challenge: &str) -> String {
    query(&[
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_CALLBACK),
        ("scope", "view"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ])
}

/// The code from a successful redirect to `CALLBACK`.
pub(crate) fn code_from(location: &str) -> String {
    let (base, params) = split_redirect(location);
    assert_eq!(base, CALLBACK, "{location}");
    assert_eq!(param(&params, "state"), Some("xyz-state"));
    assert_eq!(param(&params, "iss"), Some("http://localhost:4485"));
    assert!(param(&params, "error").is_none(), "{location}");
    param(&params, "code").expect("code").to_owned()
}

async fn token_request(
    gw: &Gateway,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = gw
        .client
        .post(gw.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(query(form));
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.expect("token request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

pub(crate) async fn exchange(gw: &Gateway, code: &str, verifier: Option<&str>) -> (u16, Value) {
    let mut form = vec![("grant_type", "authorization_code"), ("code", code)];
    if let Some(verifier) = verifier {
        form.push(("code_verifier", verifier));
    }
    token_request(gw, Some(("bookyourticket", SECRET)), &form).await
}

async fn introspect(gw: &Gateway, token: &str) -> Value {
    let (status, body) = token_request_at(gw, "/oauth2/introspect", token).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn token_request_at(gw: &Gateway, path: &str, token: &str) -> (u16, Value) {
    let response = gw
        .client
        .post(gw.url(path))
        .basic_auth("introspector", Some("intro-secret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(query(&[("token", token)]))
        .send()
        .await
        .expect("introspect");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

async fn call(gw: &Gateway, method: reqwest::Method, token: &str) -> u16 {
    gw.client
        .request(method, gw.url("/travels/bookings"))
        .bearer_auth(token)
        .send()
        .await
        .expect("API call")
        .status()
        .as_u16()
}

fn str_of<'v>(value: &'v Value, key: &str) -> &'v str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {value}"))
}

// ---- the story ------------------------------------------------------------

#[tokio::test]
async fn full_approval_with_pkce_issues_a_code_that_buys_a_working_token() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (verifier, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view book", Some(&challenge));

    let page = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(
        page.header("content-security-policy"),
        Some(
            "default-src 'none'; style-src 'self' 'unsafe-inline'; \
             form-action 'self' http://localhost:8000; frame-ancestors 'none'"
        )
    );
    let cookie = page.header("set-cookie").expect("session cookie");
    assert!(cookie.starts_with("mcgw_session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(page.body.contains("BookYourTicket"));

    let location = browser.approve(&authorize, None).await;
    let code = code_from(&location);
    assert!(code.len() >= 22, "at least 128 bits");

    let (status, token) = exchange(&gw, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "view book");
    assert_eq!(token["token_type"], "Bearer");
    assert!(token["refresh_token"].is_string());
    let access = str_of(&token, "access_token");
    assert_eq!(call(&gw, reqwest::Method::GET, access).await, 200);
    assert_eq!(call(&gw, reqwest::Method::POST, access).await, 200);

    let claims = introspect(&gw, access).await;
    assert_eq!(claims["active"], true);
    assert_eq!(claims["username"], "alice");
    assert_eq!(claims["client_id"], "bookyourticket");
}

#[tokio::test]
async fn partial_approval_grants_only_the_ticked_scopes() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (verifier, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view book", Some(&challenge));
    let consent = browser.login(&authorize).await;
    let offered: Vec<(String, String, bool)> = consent.form().checkboxes;
    let offered: Vec<&str> = offered.iter().map(|(_, v, _)| v.as_str()).collect();
    assert_eq!(offered, ["view", "book"], "only the requested scopes");
    assert!(consent.body.contains("View your bookings"));
    assert!(consent.body.contains("Book tickets"));
    assert!(!consent.body.contains("Cancel bookings"));
    let approved = browser
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(approved.status, 303);
    let code = code_from(approved.location());

    let (status, token) = exchange(&gw, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "view");
    let access = str_of(&token, "access_token");
    assert_eq!(call(&gw, reqwest::Method::GET, access).await, 200);
    assert_eq!(call(&gw, reqwest::Method::POST, access).await, 403);
}

#[tokio::test]
async fn denial_redirects_with_access_denied_and_the_state() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let consent = browser
        .login(&code_query("bookyourticket", "view", Some(&challenge)))
        .await;
    let denied = browser.submit(&consent, "deny", &[]).await;
    let params = error_redirect(&denied, CALLBACK, "access_denied", "xyz-state");
    assert!(param(&params, "code").is_none());
}

#[tokio::test]
async fn wrong_password_stays_on_the_login_page_and_repeated_failures_lock() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut page = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    for _ in 0..5 {
        page = browser
            .submit(
                &page,
                "login",
                &[("username", "alice"), ("password", "wrong")],
            )
            .await;
        assert_eq!(page.status, 200);
        assert!(page.body.contains("Wrong username or password."));
        assert!(page.header("location").is_none());
    }
    let locked = browser
        .submit(
            &page,
            "login",
            &[("username", "alice"), ("password", "wonderland")],
        )
        .await;
    assert_eq!(locked.status, 429);
    assert!(locked.header("retry-after").is_some());
}

/// The approval page's `client_id` is anyone's to send: failed logins
/// lock the address they come from, never every user of the client.
#[tokio::test]
async fn failed_logins_for_a_client_lock_their_address_not_the_client() {
    let gw = Gateway::start(&yaml(&Options {
        trusted_proxies: Some(r#"["127.0.0.1/32"]"#),
        ..Options::default()
    }))
    .await;
    let (_, challenge) = pkce();
    let authorize = spa_query(&challenge);
    let mut guesser = Browser::at(&gw, "203.0.113.66");
    let mut page = guesser.get(&format!("/oauth2/authorize?{authorize}")).await;
    for _ in 0..20 {
        let user = URL_SAFE_NO_PAD.encode(&rand_bytes()[..9]);
        page = guesser
            .submit(
                &page,
                "login",
                &[("username", &user), ("password", "wrong")],
            )
            .await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("Wrong username or password."));
    }
    // Alice, elsewhere, signs in to the same client.
    Browser::at(&gw, "198.51.100.7").login(&authorize).await;
    // The guessing address is refused unchecked, even alice's password.
    let locked = guesser
        .submit(
            &page,
            "login",
            &[("username", "alice"), ("password", "wonderland")],
        )
        .await;
    assert_eq!(locked.status, 429, "{}", locked.body);
    assert!(locked.header("retry-after").is_some());
}

/// A gateway whose clients come through a trusted proxy on loopback (so a
/// test names each client's address), and a SPA's authorization request
/// with its PKCE challenge.
async fn behind_a_proxy() -> (Gateway, String, String) {
    let gw = Gateway::start(&yaml(&Options {
        trusted_proxies: Some(r#"["127.0.0.1/32"]"#),
        ..Options::default()
    }))
    .await;
    let (_, challenge) = pkce();
    let authorize = format!("/oauth2/authorize?{}", spa_query(&challenge));
    (gw, authorize, challenge)
}

/// Anyone can start an anonymous session with a GET: one address may
/// start 120 a minute, so that a flood from it cannot push the sessions
/// of people midway through their login out of the bounded store; its
/// live session, and other addresses, are served as before.
#[tokio::test]
async fn one_address_cannot_start_sessions_without_end() {
    let (gw, authorize, challenge) = behind_a_proxy().await;
    // A person midway through a login elsewhere.
    let mut alice = Browser::at(&gw, "198.51.100.7");
    let page = alice.get(&authorize).await;
    assert_eq!(page.status, 200);
    let mut refused = None;
    for n in 0..250 {
        let mut flooder = Browser::at(&gw, "203.0.113.66");
        let reply = flooder.get(&authorize).await;
        if reply.status == 429 {
            refused = Some((n, reply));
            break;
        }
        assert_eq!(reply.status, 200);
    }
    // The minute may turn during the loop: its count starts again then.
    let (n, reply) = refused.expect("refused within 250");
    assert!(n >= 120, "refused after {n}");
    assert!(reply.header("retry-after").is_some());
    assert!(
        reply.body.contains("Too many sign-in pages"),
        "{}",
        reply.body
    );
    assert!(reply.header("set-cookie").is_none());
    // Alice's session goes on; so do others.
    assert_eq!(alice.get(&authorize).await.status, 200);
    assert_eq!(
        Browser::at(&gw, "192.0.2.9").get(&authorize).await.status,
        200
    );
    alice.login(&spa_query(&challenge)).await;
}

/// "Not you? Sign out" starts the next session for its address like any
/// other start: sign-outs (raced with one cookie, each would start one)
/// cannot start sessions past the address's limit either.
#[tokio::test]
async fn sign_outs_count_against_the_addresss_session_starts() {
    let (gw, authorize, _) = behind_a_proxy().await;
    let mut browser = Browser::at(&gw, "203.0.113.77");
    let mut page = browser.get(&authorize).await;
    assert_eq!(page.status, 200);
    let mut refused = None;
    for n in 0..250 {
        let mut fields = page.form().hidden;
        fields.push(("action".into(), "signout".into()));
        let reply = browser.post("/oauth2/authorize", &fields).await;
        if reply.status == 429 {
            refused = Some((n, reply));
            break;
        }
        assert_eq!(reply.status, 303, "{}", reply.body);
        // A page on a session that exists starts none.
        page = browser.get(reply.location()).await;
        assert_eq!(page.status, 200);
    }
    // The minute may turn during the loop: its count starts again then.
    let (n, reply) = refused.expect("refused within 250");
    assert!(n >= 119, "refused after {n}");
    assert!(reply.header("retry-after").is_some());
    assert!(reply.header("set-cookie").is_none());
}

// ---- PKCE -----------------------------------------------------------------

#[tokio::test]
async fn public_client_without_pkce_gets_invalid_request_at_its_redirect_uri() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let authorize = query(&[
        ("response_type", "code"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_CALLBACK),
        ("state", "s1"),
    ]);
    let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    error_redirect(&reply, SPA_CALLBACK, "invalid_request", "s1");
}

#[tokio::test]
async fn public_client_with_pkce_exchanges_without_a_secret() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (verifier, challenge) = pkce();
    let authorize = spa_query(&challenge);
    let location = browser.approve(&authorize, None).await;
    let (base, params) = split_redirect(&location);
    assert_eq!(base, SPA_CALLBACK);
    let code = param(&params, "code").expect("code");
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", "spa"),
        ("code", code),
        ("redirect_uri", SPA_CALLBACK),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, token) = token_request(&gw, None, &form).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "view");
    assert!(token.get("refresh_token").is_none());
}

#[tokio::test]
async fn a_wrong_verifier_is_invalid_grant() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let (other_verifier, _) = pkce();
    let location = browser
        .approve(
            &code_query("bookyourticket", "view", Some(&challenge)),
            None,
        )
        .await;
    let (status, body) = exchange(&gw, &code_from(&location), Some(&other_verifier)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn the_plain_method_is_refused() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (verifier, _) = pkce();
    let authorize = query(&[
        ("response_type", "code"),
        ("client_id", "bookyourticket"),
        ("state", "xyz-state"),
        ("code_challenge", &verifier),
        ("code_challenge_method", "plain"),
    ]);
    let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    error_redirect(&reply, CALLBACK, "invalid_request", "xyz-state");
    // No method at all means plain too (RFC 7636 §4.3).
    let authorize = query(&[
        ("response_type", "code"),
        ("client_id", "bookyourticket"),
        ("code_challenge", &verifier),
    ]);
    let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(
        param(&split_redirect(reply.location()).1, "error"),
        Some("invalid_request")
    );
}

#[tokio::test]
async fn no_downgrade_a_challenged_code_needs_its_verifier() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let location = browser
        .approve(
            &code_query("bookyourticket", "view", Some(&challenge)),
            None,
        )
        .await;
    let (status, body) = exchange(&gw, &code_from(&location), None).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
}

#[tokio::test]
async fn a_verifier_for_a_code_without_challenge_is_refused() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (verifier, _) = pkce();
    // A confidential client may go without PKCE when require_pkce is off.
    let location = browser
        .approve(&code_query("bookyourticket", "view", None), None)
        .await;
    let (status, body) = exchange(&gw, &code_from(&location), Some(&verifier)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    let location = browser
        .approve(&code_query("bookyourticket", "view", None), None)
        .await;
    let (status, body) = exchange(&gw, &code_from(&location), None).await;
    assert_eq!(status, 200, "{body}");
}

// ---- client and redirect URI ----------------------------------------------

#[tokio::test]
async fn an_unregistered_redirect_uri_gets_a_page_never_a_redirect() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    for redirect in [
        "https://evil.example/callback",
        "http://localhost:8000/callback/",
        "http://localhost:8000/callback?x=1",
    ] {
        let authorize = query(&[
            ("response_type", "code"),
            ("client_id", "bookyourticket"),
            ("redirect_uri", redirect),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
        assert_eq!(reply.status, 400, "{redirect}");
        assert!(reply.header("location").is_none());
        assert!(reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("text/html")));
        // In the resource owner's words; the OAuth detail is for the log.
        assert!(
            reply
                .body
                .contains("This application is not allowed to send you to that address"),
            "{}",
            reply.body
        );
        assert!(!reply.body.contains("redirect_uri"), "{}", reply.body);
        assert!(!reply.body.contains("<form"));
    }
    // Left out while the client registered several.
    let authorize = query(&[("response_type", "code"), ("client_id", "spa")]);
    let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(reply.status, 400);
    assert!(reply.header("location").is_none());
    // A good request still works.
    let good = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            code_query("bookyourticket", "view", Some(&challenge))
        ))
        .await;
    assert_eq!(good.status, 200);
}

/// RFC 8252 §7.3: a redirect URI on a loopback IP literal takes the
/// port the native app listens on; the code goes there, and the token
/// request repeats that URI, not the registered one (RFC 6749 §4.1.3).
/// Everything else of it, and any part of a `localhost` URI (§8.3), is
/// compared exactly.
#[tokio::test]
async fn a_loopback_ip_redirect_uri_takes_any_port() {
    let yaml = yaml(&Options::default()).replace(
        "\"http://127.0.0.1:8001/other\"",
        "\"http://127.0.0.1:8001/other\", \"http://[::1]/native\"",
    );
    let gw = Gateway::start(&yaml).await;
    let mut browser = Browser::new(&gw);
    for (used, registered) in [
        ("http://127.0.0.1:51234/cb", SPA_CALLBACK),
        ("http://127.0.0.1/cb", SPA_CALLBACK),
        ("http://[::1]:49152/native", "http://[::1]/native"),
    ] {
        let (verifier, challenge) = pkce();
        let authorize = query(&[
            ("response_type", "code"),
            ("client_id", "spa"),
            ("redirect_uri", used),
            ("scope", "view"),
            ("state", "s1"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let consent = browser.login(&authorize).await;
        let origin = used.rsplit_once('/').expect("a path").0;
        assert!(
            consent
                .header("content-security-policy")
                .is_some_and(|csp| csp.contains(origin)),
            "{used}: {:?}",
            consent.header("content-security-policy")
        );
        let location = browser.approve(&authorize, None).await;
        let (base, params) = split_redirect(&location);
        assert_eq!(base, used);
        let form = |code, redirect_uri| {
            [
                ("grant_type", "authorization_code"),
                ("client_id", "spa"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier.as_str()),
            ]
        };
        let code = param(&params, "code").expect("code");
        let (status, body) = token_request(&gw, None, &form(code, registered)).await;
        assert_eq!(status, 400, "{used}: {body}");
        assert_eq!(body["error"], "invalid_grant", "{used}");
        // That exchange spent the code: a new one, redeemed with the URI used.
        let location = browser.approve(&authorize, None).await;
        let (_, params) = split_redirect(&location);
        let code = param(&params, "code").expect("code");
        let (status, body) = token_request(&gw, None, &form(code, used)).await;
        assert_eq!(status, 200, "{used}: {body}");
    }
    for refused in [
        "http://127.0.0.1:51234/cb/",
        "http://127.0.0.1:51234/cb?x=1",
        "http://127.0.0.1:51234/other/",
        "http://127.0.0.2:8001/cb",
        "http://[::1]:8001/cb",
        "https://127.0.0.1:8001/cb",
        "http://localhost:8001/cb",
    ] {
        let (_, challenge) = pkce();
        let authorize = query(&[
            ("response_type", "code"),
            ("client_id", "spa"),
            ("redirect_uri", refused),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]);
        let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
        assert_eq!(reply.status, 400, "{refused}");
        assert!(reply.header("location").is_none(), "{refused}");
    }
    // `localhost` is a name, not a loopback IP literal: its port is exact.
    let (_, challenge) = pkce();
    let authorize = query(&[
        ("response_type", "code"),
        ("client_id", "bookyourticket"),
        ("redirect_uri", "http://localhost:8001/callback"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(reply.status, 400);
    assert!(reply.header("location").is_none());
}

/// RFC 6749 §3.1 and §4.1.2.1: a parameter sent twice is
/// `invalid_request`, sent back to the client when its `client_id` and
/// `redirect_uri` were each sent once and are good (a repeated `state` is
/// not echoed); a repeated `client_id` or `redirect_uri` gets a page.
#[tokio::test]
async fn a_repeated_parameter_goes_back_to_the_client_unless_it_names_it() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let good = code_query("bookyourticket", "view", Some(&challenge));
    for (repeated, state) in [
        ("state=second", None),
        ("scope=book", Some("xyz-state")),
        ("response_type=code", Some("xyz-state")),
    ] {
        let reply = browser
            .get(&format!("/oauth2/authorize?{good}&{repeated}"))
            .await;
        assert_eq!(reply.status, 303, "{repeated}: {}", reply.body);
        let (to, params) = split_redirect(reply.location());
        assert_eq!(to, CALLBACK, "{repeated}");
        assert_eq!(
            param(&params, "error"),
            Some("invalid_request"),
            "{repeated}"
        );
        assert_eq!(param(&params, "state"), state, "{repeated}");
    }
    let twice = format!("redirect_uri={CALLBACK}&redirect_uri={CALLBACK}");
    for repeated in ["client_id=spa", &twice] {
        let reply = browser
            .get(&format!("/oauth2/authorize?{good}&{repeated}"))
            .await;
        assert_eq!(reply.status, 400, "{repeated}");
        assert!(reply.header("location").is_none(), "{repeated}");
    }
}

/// A repeated `client_id` or `redirect_uri` gets a page even after
/// another repeated parameter: which client, or which address, the
/// request meant is unknown (RFC 6749 §4.1.2.1).
#[tokio::test]
async fn a_repeated_client_id_or_redirect_uri_gets_a_page_whatever_repeats_first() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let pkce = format!("code_challenge={challenge}&code_challenge_method=S256");
    let callback = encode(CALLBACK);
    let elsewhere = encode("https://attacker.example/cb");
    for request in [
        format!(
            "state=a&state=b&response_type=code&client_id=bookyourticket\
             &redirect_uri={callback}&redirect_uri={elsewhere}&{pkce}"
        ),
        format!(
            "scope=view&scope=book&response_type=code&client_id=bookyourticket\
             &client_id=spa&redirect_uri={callback}&{pkce}"
        ),
    ] {
        let reply = browser.get(&format!("/oauth2/authorize?{request}")).await;
        assert_eq!(reply.status, 400, "{request}: {}", reply.body);
        assert!(reply.header("location").is_none(), "{request}");
    }
}

#[tokio::test]
async fn an_unknown_or_missing_client_gets_a_page() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let authorize = query(&[
        ("response_type", "code"),
        ("client_id", "nobody"),
        ("redirect_uri", CALLBACK),
    ]);
    let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(reply.status, 400);
    assert!(reply.header("location").is_none());
    assert!(
        reply.body.contains("This application is not known here"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("client_id"), "{}", reply.body);
    let reply = browser.get("/oauth2/authorize?response_type=code").await;
    assert_eq!(reply.status, 400);
    assert!(reply.header("location").is_none());
    // The same with the webMethods alias.
    let reply = browser
        .get(&format!(
            "/invoke/pub.apigateway.oauth2/authorize?{authorize}"
        ))
        .await;
    assert_eq!(reply.status, 400);
}

#[tokio::test]
async fn unsupported_response_types_go_back_to_the_client() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    for response_type in ["id_token", "code token"] {
        let authorize = query(&[
            ("response_type", response_type),
            ("client_id", "bookyourticket"),
            ("state", "xyz-state"),
        ]);
        let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
        error_redirect(&reply, CALLBACK, "unsupported_response_type", "xyz-state");
    }
}

#[tokio::test]
async fn redirect_uri_given_at_authorize_is_required_at_the_token_endpoint() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (verifier, challenge) = pkce();
    let authorize = query(&[
        ("response_type", "code"),
        ("client_id", "bookyourticket"),
        ("redirect_uri", CALLBACK),
        ("state", "xyz-state"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    let code = code_from(&browser.approve(&authorize, None).await);
    let (status, body) = exchange(&gw, &code, Some(&verifier)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");

    let code = code_from(&browser.approve(&authorize, None).await);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", verifier.as_str()),
    ];
    let (status, body) = token_request(&gw, Some(("bookyourticket", SECRET)), &form).await;
    assert_eq!(status, 200, "{body}");
}

// ---- codes ----------------------------------------------------------------

#[tokio::test]
async fn a_replayed_code_fails_and_revokes_what_it_issued() {
    replayed_code_revokes(false).await;
}

/// RFC 6749 §4.1.2 holds after the expired-token cleanup ran in between:
/// the spent code's row stays while its tokens live.
#[tokio::test]
async fn a_code_replayed_after_the_cleanup_still_revokes_its_tokens() {
    replayed_code_revokes(true).await;
}

/// A code is spent together with the tokens it buys: when the store
/// fails to keep them, the code is not spent, and the client's retry
/// gets the tokens; spent, it is still good once only.
#[tokio::test]
async fn a_code_whose_tokens_the_store_failed_to_keep_is_redeemed_by_the_retry() {
    let gw = gateway().await;
    let (verifier, challenge) = pkce();
    let location = Browser::new(&gw)
        .approve(
            &code_query("bookyourticket", "view", Some(&challenge)),
            None,
        )
        .await;
    let code = code_from(&location);
    let db = rusqlite::Connection::open(gw.dir.path().join("data/oauth.db")).expect("open");
    db.execute_batch(
        "CREATE TRIGGER fail BEFORE INSERT ON access_tokens \
         BEGIN SELECT RAISE(ABORT, 'disk failed'); END",
    )
    .expect("trigger");
    let (status, failed) = exchange(&gw, &code, Some(&verifier)).await;
    assert_eq!(
        (status, failed["error"].as_str()),
        (500, Some("server_error"))
    );
    db.execute_batch("DROP TRIGGER fail").expect("drop");
    let (status, grant) = exchange(&gw, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{grant}");
    let access = str_of(&grant, "access_token");
    assert_eq!(introspect(&gw, access).await["active"], true);
    let (status, replay) = exchange(&gw, &code, Some(&verifier)).await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(introspect(&gw, access).await["active"], false);
}

/// A code `bookyourticket` got approved for `view` and redeemed: the
/// code, its PKCE verifier and the token answer.
async fn redeemed_code(gw: &Gateway) -> (String, String, Value) {
    let mut browser = Browser::new(gw);
    let (verifier, challenge) = pkce();
    let location = browser
        .approve(
            &code_query("bookyourticket", "view", Some(&challenge)),
            None,
        )
        .await;
    let code = code_from(&location);
    let (status, first) = exchange(gw, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{first}");
    (code, verifier, first)
}

/// A code presented a second time is refused and revokes the tokens
/// issued from it; with `cleanup`, the code has expired and the cleanup
/// has run before the replay.
async fn replayed_code_revokes(cleanup: bool) {
    let gw = gateway().await;
    let (code, verifier, first) = redeemed_code(&gw).await;
    let access = str_of(&first, "access_token");
    assert_eq!(introspect(&gw, access).await["active"], true);
    if cleanup {
        let authz = gw.state().authz.load_full().expect("authz on");
        authz.clock().advance(Duration::from_secs(601));
        authz.remove_expired().await.expect("cleanup");
    }

    let (status, second) = exchange(&gw, &code, Some(&verifier)).await;
    assert_eq!(status, 400);
    assert_eq!(second["error"], "invalid_grant");
    assert_eq!(introspect(&gw, access).await["active"], false);
    let refresh = str_of(&first, "refresh_token");
    let (status, body) = token_request(
        &gw,
        Some(("bookyourticket", SECRET)),
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
}

/// A spent code leaks (history, Referer, logs): presented by another
/// client — here a public one, with nothing else — it is refused and
/// revokes nothing, since that client could never have redeemed it.
#[tokio::test]
async fn a_spent_code_presented_by_another_client_revokes_nothing() {
    let gw = gateway().await;
    let (code, _, first) = redeemed_code(&gw).await;
    let access = str_of(&first, "access_token");

    let (status, body) = token_request(
        &gw,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("client_id", "spa"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(introspect(&gw, access).await["active"], true);
    let (status, body) = token_request(
        &gw,
        Some(("bookyourticket", SECRET)),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", str_of(&first, "refresh_token")),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_expired_code_is_invalid_grant() {
    let gw = Gateway::start(&yaml(&Options {
        code_lifetime: Some("1s"),
        ..Options::default()
    }))
    .await;
    let mut browser = Browser::new(&gw);
    let (verifier, challenge) = pkce();
    let location = browser
        .approve(
            &code_query("bookyourticket", "view", Some(&challenge)),
            None,
        )
        .await;
    // The server's clock is in whole seconds: past the lifetime for sure.
    gw.state()
        .authz
        .load_full()
        .expect("the authorization server is on")
        .clock()
        .advance(Duration::from_secs(2));
    let (status, body) = exchange(&gw, &code_from(&location), Some(&verifier)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
}

// ---- CSRF -----------------------------------------------------------------

#[tokio::test]
async fn a_post_without_the_right_csrf_token_is_refused() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let page = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    let form = page.form();
    let without_csrf: Vec<(String, String)> = form
        .hidden
        .iter()
        .filter(|(name, _)| name != "csrf_token")
        .cloned()
        .collect();
    let login = |mut fields: Vec<(String, String)>| {
        fields.push(("username".into(), "alice".into()));
        fields.push(("password".into(), "wonderland".into()));
        fields.push(("action".into(), "login".into()));
        fields
    };
    let missing = browser
        .post("/oauth2/authorize", &login(without_csrf.clone()))
        .await;
    assert_eq!(missing.status, 403);
    assert!(missing.header("location").is_none());

    let mut wrong = without_csrf.clone();
    wrong.push(("csrf_token".into(), "forged".into()));
    let forged = browser.post("/oauth2/authorize", &login(wrong)).await;
    assert_eq!(forged.status, 403);
    assert!(forged.header("location").is_none());

    // The right token without the session cookie is refused too.
    let mut cookieless = Browser::new(&gw);
    let stolen = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    let replayed = cookieless
        .post("/oauth2/authorize", &login(stolen.form().hidden))
        .await;
    assert_eq!(replayed.status, 403);

    // Approving without the token, after a real login, issues nothing.
    let consent = browser.login(&authorize).await;
    let mut fields: Vec<(String, String)> = consent
        .form()
        .hidden
        .into_iter()
        .filter(|(name, _)| name != "csrf_token")
        .collect();
    fields.push(("grant_scope".into(), "view".into()));
    fields.push(("action".into(), "approve".into()));
    let refused = browser.post("/oauth2/authorize", &fields).await;
    assert_eq!(refused.status, 403);
    assert!(refused.header("location").is_none());
}

/// A consent form posted again while its session lives, Allow or Deny,
/// is refused as a stale form and mints no second code.
#[tokio::test]
async fn a_consent_form_posted_again_is_refused_and_mints_no_code() {
    let gw = gateway().await;
    a_consent_form_is_taken_once(&gw, &gw).await;
}

/// One rendered consent form answers the client once: posted again —
/// Allow or Deny, later or at the same moment, to `first` or `second` —
/// it is refused as a stale form is (403, no redirect, no code), and the
/// page then shown is a fresh form, itself taken once.
pub(crate) async fn a_consent_form_is_taken_once(first: &Gateway, second: &Gateway) {
    let view = [("grant_scope", "view")];
    let (verifier, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(first);
    let consent = browser.login(&authorize).await;
    let approved = browser.via(second).submit(&consent, "approve", &view).await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    let code = code_from(approved.location());
    let mut refused = Vec::new();
    for (gw, action) in [(first, "approve"), (second, "approve"), (first, "deny")] {
        let replayed = browser.via(gw).submit(&consent, action, &view).await;
        assert_stale(&replayed, action);
        refused.push(replayed);
    }
    let (status, body) = exchange(first, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{body}");
    let fresh = refused.pop().expect("refused");
    let denied = browser.via(second).submit(&fresh, "deny", &[]).await;
    error_redirect(&denied, CALLBACK, "access_denied", "xyz-state");
    let replayed = browser.via(first).submit(&fresh, "approve", &view).await;
    assert_stale(&replayed, "approved after its denial");
    // Posted four times at once, to both, one form is taken by one post.
    let consent = &browser
        .via(first)
        .get(&format!("/oauth2/authorize?{authorize}"))
        .await;
    let posts = [first, second, first, second].map(|gw| {
        let mut copy = Browser {
            cookie: browser.cookie.clone(),
            ..Browser::new(gw)
        };
        async move { copy.submit(consent, "approve", &view).await }
    });
    let replies = futures_util::future::join_all(posts).await;
    let taken: Vec<&Reply> = replies.iter().filter(|r| r.status == 303).collect();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(taken.len(), 1, "{statuses:?}");
    code_from(taken[0].location());
    for reply in replies.iter().filter(|r| r.status != 303) {
        assert_stale(reply, "posted at once");
    }
}

/// The answer to a form whose CSRF token is missing, wrong or spent.
fn assert_stale(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 403, "{what}: {}", reply.body);
    assert!(reply.header("location").is_none(), "{what}");
    assert!(
        reply.body.contains("This form has expired"),
        "{what}: {}",
        reply.body
    );
}

/// RFC 9110 §9.1: HEAD wherever GET is; the page's headers, no body.
#[tokio::test]
async fn head_of_the_authorization_page_has_its_headers_and_no_body() {
    let gw = gateway().await;
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let url = gw.url(&format!("/oauth2/authorize?{authorize}"));
    let head = gw.client.head(&url).send().await.expect("HEAD");
    let get = gw.client.get(&url).send().await.expect("GET");
    assert_eq!(head.status(), 200);
    assert_eq!(get.status(), 200);
    for name in [
        "content-type",
        "x-frame-options",
        "cache-control",
        "content-security-policy",
    ] {
        assert_eq!(head.headers().get(name), get.headers().get(name), "{name}");
    }
    assert!(head.bytes().await.expect("no body").is_empty());
}

/// A form another site posts to the endpoint comes without the session
/// cookie (SameSite=Lax): it is refused with no cookie set, so it cannot
/// replace, and so sign out, the session of the owner, who approves on.
#[tokio::test]
async fn a_form_posted_from_another_site_sets_no_cookie() {
    let gw = gateway().await;
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(&gw);
    let consent = browser.login(&authorize).await;
    let forged = format!("{authorize}&action=deny");
    let response = gw
        .client
        .post(gw.url("/oauth2/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-dest", "document")
        .body(forged)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());
    assert!(response.headers().get("location").is_none());
    // The owner's session goes on: the approval issues a code.
    let approved = browser
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    assert!(
        approved.location().contains("code="),
        "{}",
        approved.location()
    );
}

/// A sign-in is alice's only while her credential is the one she logged
/// in with: after a reload that changes her password, or removes her, a
/// session she signed in on approves nothing; her new password signs her
/// in again.
#[tokio::test]
async fn a_changed_password_or_a_removed_user_ends_the_sign_in() {
    let yaml = yaml(&Options::default());
    let gw = Gateway::start(&yaml).await;
    let (_, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(&gw);
    let consent = browser.login(&authorize).await;
    let [changed, removed] = alice_changed_and_removed();
    gw.write_config(&with_alice_as(&yaml, &changed));
    gw.wait_generation(2).await;
    let refused = browser
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_back_to_login(&refused);
    // The session is kept, its sign-in not trusted.
    assert_eq!(refused.status, 200, "{}", refused.body);
    assert!(refused.body.contains("Please sign in first."));

    let new_password = [("username", "alice"), ("password", "looking-glass")];
    let logged_in = browser.submit(&refused, "login", &new_password).await;
    assert_eq!(logged_in.status, 303, "{}", logged_in.body);
    let consent = browser.get(logged_in.location()).await;
    assert!(consent.body.contains("alice"), "{}", consent.body);
    gw.write_config(&with_alice_as(&yaml, &removed));
    gw.wait_generation(3).await;
    let refused = browser
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_back_to_login(&refused);
}

/// A reload that opens the authorization server again for a change that
/// leaves alice as she is (the code lifetime) keeps her session in memory:
/// the consent form shown before it approves after it.
#[tokio::test]
async fn a_sign_in_outlives_a_reload_that_leaves_the_user_as_she_was() {
    let yaml = yaml(&Options::default());
    let gw = Gateway::start(&yaml).await;
    let (verifier, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view", Some(&challenge));
    let mut browser = Browser::new(&gw);
    let consent = browser.login(&authorize).await;
    let lifetime = "authorization_code_lifetime: 600s";
    assert!(yaml.contains(lifetime));
    gw.write_config(&yaml.replace(lifetime, "authorization_code_lifetime: 300s"));
    gw.wait_generation(2).await;
    let approved = browser
        .submit(&consent, "approve", &[("grant_scope", "view")])
        .await;
    assert_eq!(approved.status, 303, "{}", approved.body);
    let (status, token) = exchange(&gw, &code_from(approved.location()), Some(&verifier)).await;
    assert_eq!(status, 200, "{token}");
}

// ---- implicit -------------------------------------------------------------

#[tokio::test]
async fn implicit_is_refused_for_a_client_that_does_not_list_it() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let authorize = query(&[
        ("response_type", "token"),
        ("client_id", "bookyourticket"),
        ("state", "xyz-state"),
    ]);
    let reply = browser.get(&format!("/oauth2/authorize?{authorize}")).await;
    assert_eq!(reply.status, 303);
    let location = reply.location();
    assert!(location.starts_with(&format!("{CALLBACK}#")), "{location}");
    let (_, params) = split_redirect(location);
    assert_eq!(param(&params, "error"), Some("unauthorized_client"));
    assert_eq!(param(&params, "state"), Some("xyz-state"));
}

#[tokio::test]
async fn implicit_puts_the_token_in_the_fragment_without_refresh_token() {
    let gw = gateway().await;
    let mut browser = Browser::new(&gw);
    let authorize = query(&[
        ("response_type", "token"),
        ("client_id", "spa"),
        ("redirect_uri", SPA_CALLBACK),
        ("scope", "view"),
        ("state", "s2"),
    ]);
    let location = browser.approve(&authorize, None).await;
    assert!(
        location.starts_with(&format!("{SPA_CALLBACK}#")),
        "{location}"
    );
    let (_, params) = split_redirect(&location);
    assert_eq!(param(&params, "token_type"), Some("Bearer"));
    assert_eq!(param(&params, "scope"), Some("view"));
    assert_eq!(param(&params, "state"), Some("s2"));
    assert!(param(&params, "refresh_token").is_none());
    let access = param(&params, "access_token").expect("access token");
    assert_eq!(call(&gw, reqwest::Method::GET, access).await, 200);
    assert_eq!(call(&gw, reqwest::Method::POST, access).await, 403);
}

// ---- templates and metadata -------------------------------------------------

#[tokio::test]
async fn a_customised_template_is_served() {
    let dir = tempfile::tempdir().expect("dir");
    let page = dir.path().join("approval.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><title>Time Travel Inc.</title><h1>Hello from Time Travel Inc.</h1>\
         <p>{{ client_name }} ({{ client_id }}) asks for \
         {% for s in scopes if s.requested %}[{{ s.name }}: {{ s.description }}]{% endfor %}</p>\
         <form method=\"post\" action=\"/oauth2/authorize\">\
         {% for p in params %}<input type=\"hidden\" name=\"{{ p.name }}\" value=\"{{ p.value }}\">{% endfor %}\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{{ csrf_token }}\">\
         <p>step={{ action }}</p>\
         <button type=\"submit\" name=\"action\" value=\"deny\">No</button></form>",
    )
    .expect("write template");
    let gw = Gateway::start(&yaml(&Options {
        approval_page: Some(&page),
        ..Options::default()
    }))
    .await;
    let mut browser = Browser::new(&gw);
    let (_, challenge) = pkce();
    let reply = browser
        .get(&format!(
            "/oauth2/authorize?{}",
            code_query("bookyourticket", "view", Some(&challenge))
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains("Hello from Time Travel Inc."),
        "{}",
        reply.body
    );
    assert!(reply
        .body
        .contains("BookYourTicket (bookyourticket) asks for [view: View your bookings]"));
    assert!(reply.body.contains("step=login"));
    let denied = browser.submit(&reply, "deny", &[]).await;
    assert_eq!(denied.status, 303);
    assert_eq!(
        param(&split_redirect(denied.location()).1, "error"),
        Some("access_denied")
    );
}

#[test]
fn a_template_that_does_not_compile_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("dir");
    let page = dir.path().join("broken.html");
    std::fs::write(
        &page,
        "<h1>ok</h1>\n<p>{% for s in scopes %}{{ s.name }}</p>\n",
    )
    .expect("write template");
    let config = dir.path().join("microgateway.yaml");
    std::fs::write(
        &config,
        yaml(&Options {
            approval_page: Some(&page),
            ..Options::default()
        }),
    )
    .expect("write config");
    let invalid = match microgateway::config::load(&config, &common::Env::new(), 1) {
        Ok(_) => panic!("a broken template was accepted"),
        Err(invalid) => invalid.to_string(),
    };
    let expected = format!("{}:", page.display());
    assert!(invalid.contains(&expected), "{invalid}");
    assert!(
        invalid.contains("approval page template does not compile"),
        "{invalid}"
    );
}

/// RFC 9700 §4.15: a client-credentials token's `sub` is its client id,
/// which must never be taken for a user's name.
#[test]
fn a_client_credentials_client_named_like_a_user_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("microgateway.yaml");
    let named_like_alice = "  - name: Alice's robot\n    client_id: alice\n    \
                            client_secret: robot-secret\n    grant_types: [client_credentials]\n    \
                            scopes: [view]\n  - name: Introspector\n";
    let text = yaml(&Options::default()).replacen("  - name: Introspector\n", named_like_alice, 1);
    let line = text
        .lines()
        .position(|l| l.contains("client_id: alice"))
        .expect("the client")
        + 1;
    std::fs::write(&config, text).expect("write config");
    let invalid = match microgateway::config::load(&config, &common::Env::new(), 1) {
        Ok(_) => panic!("a client named like a user was accepted"),
        Err(invalid) => invalid.to_string(),
    };
    assert!(
        invalid.contains(&format!("{}:{line}:", config.display())),
        "{invalid}"
    );
    assert!(
        invalid.contains("client_id `alice` of a client_credentials client is also a username"),
        "{invalid}"
    );
    // Without client credentials it gets no token of its own: allowed.
    let text = yaml(&Options::default()).replacen(
        "  - name: Introspector\n",
        &named_like_alice
            .replace("[client_credentials]", "[authorization_code]")
            .replace(
                "    scopes: [view]\n",
                "    scopes: [view]\n    redirect_uris: [\"https://robot.example/cb\"]\n",
            ),
        1,
    );
    std::fs::write(&config, text).expect("write config");
    if let Err(invalid) = microgateway::config::load(&config, &common::Env::new(), 1) {
        panic!("{invalid}");
    }
}

#[tokio::test]
async fn metadata_advertises_the_authorization_endpoint_and_pkce() {
    let gw = gateway().await;
    let metadata: Value = gw
        .get("/.well-known/oauth-authorization-server")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        metadata["authorization_endpoint"],
        "http://localhost:4485/oauth2/authorize"
    );
    assert_eq!(
        metadata["response_types_supported"],
        serde_json::json!(["code", "token"])
    );
    assert_eq!(
        metadata["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let grants = metadata["grant_types_supported"]
        .as_array()
        .expect("grant types");
    assert!(grants.contains(&"authorization_code".into()));
    assert!(grants.contains(&"implicit".into()));
}

// ---- a standard client ------------------------------------------------------

#[tokio::test]
async fn the_oauth2_crate_completes_code_with_pkce() {
    use oauth2::basic::BasicClient;
    use oauth2::{
        AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge,
        RedirectUrl, Scope, TokenResponse, TokenUrl,
    };

    let gw = gateway().await;
    let client = BasicClient::new(ClientId::new("bookyourticket".into()))
        .set_client_secret(ClientSecret::new(SECRET.into()))
        .set_auth_uri(AuthUrl::new(gw.url("/oauth2/authorize")).expect("auth url"))
        .set_token_uri(TokenUrl::new(gw.url("/oauth2/token")).expect("token url"))
        .set_redirect_uri(RedirectUrl::new(CALLBACK.into()).expect("redirect url"));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("view".into()))
        .set_pkce_challenge(challenge)
        .url();

    let mut browser = Browser::new(&gw);
    let location = browser
        .approve(url.query().expect("query"), Some(&["view"]))
        .await;
    let (base, params) = split_redirect(&location);
    assert_eq!(base, CALLBACK);
    assert_eq!(param(&params, "state"), Some(csrf.secret().as_str()));
    let code = param(&params, "code").expect("code").to_owned();

    let send = common::oauth::Transport(gw.client.clone());
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(verifier)
        .request_async(&send)
        .await
        .expect("token response");
    let scopes: Vec<String> = token
        .scopes()
        .map(|s| s.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    assert_eq!(scopes, ["view"]);
    let access = token.access_token().secret();
    assert_eq!(call(&gw, reqwest::Method::GET, access).await, 200);
    assert_eq!(call(&gw, reqwest::Method::POST, access).await, 403);
}

// ---- a real browser ---------------------------------------------------------

#[tokio::test]
async fn headless_chromium_renders_the_login_page() {
    let chromium = Path::new("/usr/bin/chromium");
    if !chromium.exists() {
        println!("skipped: /usr/bin/chromium is not installed");
        return;
    }
    let gw = gateway().await;
    let (_, challenge) = pkce();
    let url = gw.url(&format!(
        "/oauth2/authorize?{}",
        code_query("bookyourticket", "view book", Some(&challenge))
    ));
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("approval-login.png");
    let _ = std::fs::remove_file(&screenshot);
    let common_args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--window-size=800,900",
    ];
    let run = |extra: Vec<String>| {
        let mut command = std::process::Command::new(chromium);
        command.args(common_args).args(extra).arg(&url);
        command
    };
    let mut shot = run(vec![format!("--screenshot={}", screenshot.display())]);
    let mut dom = run(vec!["--dump-dom".into()]);
    let (shot, dom) = tokio::task::spawn_blocking(move || (shot.output(), dom.output()))
        .await
        .expect("join");
    let shot = shot.expect("chromium runs");
    assert!(shot.status.success(), "{shot:?}");
    assert!(
        screenshot.exists(),
        "screenshot at {}",
        screenshot.display()
    );
    println!("screenshot: {}", screenshot.display());
    let dom = String::from_utf8_lossy(&dom.expect("chromium runs").stdout).into_owned();
    assert!(dom.contains("BookYourTicket"), "{dom}");
    assert!(dom.contains("type=\"password\""), "{dom}");
}
