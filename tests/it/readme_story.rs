//! The README's story, run against the embedded default configuration
//! (`config/microgateway.yaml`, on port 0): every step sends the request
//! the README shows and compares the real answer with the output the
//! README prints for it. An expected line may elide with `...` or `…`
//! (each remaining piece must appear in the real output, in order) and may
//! end in a comment: two or more spaces, then `(`.

use crate::authorize::{code_from, code_query, pkce, Browser};
use crate::common::{self, Gateway};

use std::path::Path;
use std::process::Command;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

const SECRET: &str = "bookyourticket-secret";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The README's story section (from "## The story" to "## Commands").
fn story() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let start = readme.find("## The story").expect("a story section");
    let end = readme[start..]
        .find("\n## Commands")
        .map_or(readme.len(), |e| start + e);
    readme[start..end].to_owned()
}

/// The expected part of a README output line: its trailing comment cut.
fn expected_part(line: &str) -> &str {
    let line = line.trim();
    match line.find("  (") {
        Some(i) => line[..i].trim_end(),
        None => line,
    }
}

/// Whether `actual` is what the elided `expected` shows.
fn matches(expected: &str, actual: &str) -> bool {
    let mut rest = actual;
    let pieces: Vec<&str> = expected
        .split("...")
        .flat_map(|p| p.split('…'))
        .filter(|p| !p.is_empty())
        .collect();
    for (i, piece) in pieces.iter().enumerate() {
        let at = if i == 0 && !expected.starts_with("...") && !expected.starts_with('…') {
            rest.starts_with(piece).then_some(0)
        } else {
            rest.find(piece)
        };
        match at {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    let ends_elided = expected.ends_with("...") || expected.ends_with('…');
    ends_elided || rest.is_empty()
}

/// Asserts that the story has a line starting with `prefix` and that its
/// expected part shows `actual`.
fn says(story: &str, prefix: &str, actual: &str) {
    let candidates: Vec<&str> = story
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix))
        .collect();
    assert!(
        !candidates.is_empty(),
        "the README has no line starting with {prefix:?}"
    );
    assert!(
        candidates.iter().any(|l| matches(expected_part(l), actual)),
        "the README says {candidates:#?}\nbut the answer is\n{actual}"
    );
}

/// Asserts that the story has exactly this line (its comment aside).
fn says_line(story: &str, line: &str) {
    assert!(
        story.lines().any(|l| expected_part(l) == line),
        "the README lacks the line {line:?}"
    );
}

/// The default configuration with its files resolved in the repository
/// (and its data in `data`), served on port 0.
fn default_config(data: &Path) -> String {
    let config = repo().join("config");
    std::fs::read_to_string(config.join("microgateway.yaml"))
        .expect("the embedded default")
        .replace("../data/", &format!("{}/", data.display()))
        .replace(" tls/", &format!(" {}/tls/", config.display()))
        .replace(
            "templates/approval.html",
            &format!("{}/templates/approval.html", config.display()),
        )
}

async fn start(data: &Path) -> Gateway {
    let env = common::env(&[
        ("MCGW_PORTS_HTTP", "0"),
        ("MCGW_PORTS_HTTPS", "0"),
        ("MCGW_ADMIN_PORT", "0"),
    ]);
    let gw = Gateway::start_with_env(&default_config(data), env).await;
    gw.wait_ready().await;
    gw
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("JSON: {}", self.body))
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("an answer");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("a body"),
    }
}

async fn token_form(gw: &Gateway, user: &str, password: &str, form: &[(&str, &str)]) -> Answer {
    post_form(gw, "/oauth2/token", user, password, form).await
}

/// POSTs `form` to `path` with Basic client credentials.
async fn post_form(
    gw: &Gateway,
    path: &str,
    user: &str,
    password: &str,
    form: &[(&str, &str)],
) -> Answer {
    let body = crate::authorize::query(form);
    send(
        gw.request(Method::POST, path)
            .basic_auth(user, Some(password))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    )
    .await
}

async fn client_credentials(gw: &Gateway, scope: &str) -> String {
    let answer = token_form(
        gw,
        "bookyourticket",
        SECRET,
        &[("grant_type", "client_credentials"), ("scope", scope)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

async fn introspect(gw: &Gateway, token: &str) -> Answer {
    post_form(
        gw,
        "/oauth2/introspect",
        "gateway",
        "gateway-introspection",
        &[("token", token)],
    )
    .await
}

fn bookings(gw: &Gateway, method: Method) -> reqwest::RequestBuilder {
    gw.request(method, "/travels/bookings")
}

#[tokio::test]
async fn a_view_token_lists_but_does_not_book() {
    let story = story();
    let data = tempfile::tempdir().expect("data dir");
    let gw = start(data.path()).await;
    let token = client_credentials(&gw, "view").await;

    let listed = send(bookings(&gw, Method::GET).bearer_auth(&token)).await;
    assert_eq!(listed.status, 200);
    says(
        &story,
        "# 200: {\"body_bytes\"",
        &format!("# 200: {}", listed.body),
    );

    let booked = send(bookings(&gw, Method::POST).bearer_auth(&token)).await;
    assert_eq!(booked.status, 403);
    says_line(
        &story,
        &format!(
            "# 403, WWW-Authenticate: {}",
            booked.header("www-authenticate")
        ),
    );

    let anonymous = send(bookings(&gw, Method::GET)).await;
    assert_eq!(anonymous.status, 401);
    let challenges = anonymous.all("www-authenticate");
    assert_eq!(challenges.len(), 2, "{challenges:?}");
    says_line(
        &story,
        &format!("# 401, WWW-Authenticate: {}", challenges[0]),
    );
    says_line(
        &story,
        &format!("#      WWW-Authenticate: {}", challenges[1]),
    );
    gw.shutdown().await;
}

/// RFC 6750 §3.1: a request without any credentials learns the realm and
/// the schemes, and its answer carries no error code.
#[tokio::test]
async fn a_request_without_credentials_gets_no_error_code() {
    let story = story();
    let data = tempfile::tempdir().expect("data dir");
    let gw = start(data.path()).await;
    let anonymous = send(bookings(&gw, Method::GET)).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.all("www-authenticate")[0],
        "Bearer realm=\"Time travels\""
    );
    let body: Option<Value> = serde_json::from_str(&anonymous.body).ok();
    assert!(
        body.as_ref().is_none_or(|b| b.get("error").is_none()),
        "no error code in {}",
        anonymous.body
    );
    assert!(story.contains("no error code"));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_partner_service_and_a_ticket_kiosk() {
    let story = story();
    let data = tempfile::tempdir().expect("data dir");
    let gw = start(data.path()).await;
    let token = client_credentials(&gw, "view").await;
    let key = |method| bookings(&gw, method).header("x-api-key", "partner-demo-key");

    let listed = send(key(Method::GET)).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["headers"]["x-application"], "Partner service");
    says(
        &story,
        "# 200: {...,\"headers\":{...,\"x-application\":\"Partner service\"",
        &format!("# 200: {}", listed.body),
    );

    let booked = send(key(Method::POST)).await;
    assert_eq!(booked.status, 403);
    says(&story, "# 403: {", &format!("# 403: {}", booked.body));

    let wrong = send(bookings(&gw, Method::GET).header("x-api-key", "wrong")).await;
    assert_eq!(wrong.status, 401);
    says_line(
        &story,
        &format!(
            "# 401, WWW-Authenticate: {}",
            wrong.header("www-authenticate")
        ),
    );

    let both = send(key(Method::GET).bearer_auth(&token)).await;
    assert_eq!(both.status, 400);
    says_line(&story, &format!("# 400: {}", both.body));

    // The kiosk over TLS with its certificate, as curl sends it.
    let https = gw.inner.as_ref().expect("running").https.expect("https");
    let tls = repo().join("config/tls");
    let read = |name: &str| std::fs::read(tls.join(name)).expect("demo TLS material");
    let mut pem = read("kiosk.crt");
    pem.extend(read("kiosk.key"));
    let kiosk = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&read("server.crt")).expect("server.crt")])
        .identity(reqwest::Identity::from_pem(&pem).expect("the kiosk's identity"))
        .resolve("localhost", https)
        .build()
        .expect("a TLS client");
    let booked = send(kiosk.post(format!(
        "https://localhost:{}/travels/bookings",
        https.port()
    )))
    .await;
    assert_eq!(booked.status, 200, "{}", booked.body);
    assert_eq!(booked.json()["headers"]["x-application"], "Ticket kiosk");
    says(
        &story,
        "# 200: {...,\"headers\":{...,\"x-application\":\"Ticket kiosk\"",
        &format!("# 200: {}", booked.body),
    );

    // `microgateway explain`, on the same configuration and certificate.
    let explained = Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .env_clear()
        .env("NO_COLOR", "1")
        .args(["explain", "-c"])
        .arg(&gw.config)
        .args(["POST", "/travels/bookings", "--client-cert"])
        .arg(tls.join("kiosk.crt"))
        .output()
        .expect("explain runs");
    assert_eq!(explained.status.code(), Some(0));
    let out = String::from_utf8_lossy(&explained.stdout).replace('\n', " ");
    let out = out.trim();
    let line = story
        .lines()
        .find(|l| l.starts_with("# caller:"))
        .expect("the explain output in the README");
    let expected = expected_part(line).trim_start_matches("# ");
    assert!(
        matches(&format!("...{expected}..."), out),
        "the README says {line:?}, explain prints {out:?}"
    );
    gw.shutdown().await;
}

/// The digits after `t=` and `retry-after: ` depend on the clock.
fn without_times(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = ["t=", "retry-after: "]
        .iter()
        .filter_map(|m| rest.find(m).map(|i| (i, m.len())))
        .min()
        .map(|(i, n)| i + n)
    {
        out.push_str(&rest[..i]);
        rest = rest[i..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('N');
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn the_sixth_booking_in_a_row_is_throttled() {
    let story = story();
    let data = tempfile::tempdir().expect("data dir");
    let gw = start(data.path()).await;
    let book = client_credentials(&gw, "book").await;
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(send(bookings(&gw, Method::POST).bearer_auth(&book)).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    let first = &answers[0];
    let first = format!(
        "# HTTP/1.1 200 OK, ratelimit-policy: {}, ratelimit: {}",
        first.header("ratelimit-policy"),
        first.header("ratelimit")
    );
    let last = &answers[5];
    let last = format!(
        "# HTTP/1.1 429 Too Many Requests, ratelimit: {}, retry-after: {}",
        last.header("ratelimit"),
        last.header("retry-after")
    );
    for line in [first, last] {
        let prefix = &line[..line.find(',').expect("a comma")];
        let readme = story
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in the README"));
        assert_eq!(without_times(expected_part(readme)), without_times(&line));
    }
    for (answer, left) in answers.iter().zip(["r=4", "r=3", "r=2", "r=1", "r=0"]) {
        assert!(answer.header("ratelimit").contains(left));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn alice_by_password_then_refresh_introspect_and_revoke() {
    let story = story();
    let data = tempfile::tempdir().expect("data dir");
    let gw = start(data.path()).await;
    let issued = token_form(
        &gw,
        "bookyourticket",
        SECRET,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "wonderland"),
            ("scope", "view"),
        ],
    )
    .await;
    assert_eq!(issued.status, 200, "{}", issued.body);
    says(&story, "# {\"access_token\"", &format!("# {}", issued.body));
    let tokens = issued.json();
    let access = tokens["access_token"].as_str().expect("access");
    let refresh = tokens["refresh_token"].as_str().expect("refresh");

    let refreshed = token_form(
        &gw,
        "bookyourticket",
        SECRET,
        &[("grant_type", "refresh_token"), ("refresh_token", refresh)],
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_ne!(refreshed.json()["refresh_token"], refresh, "rotated");

    let claims = introspect(&gw, access).await;
    says(&story, "# {\"active\":true", &format!("# {}", claims.body));
    let revoked = post_form(
        &gw,
        "/oauth2/revoke",
        "bookyourticket",
        SECRET,
        &[("token", access)],
    )
    .await;
    assert_eq!(revoked.status, 200);
    assert_eq!(introspect(&gw, access).await.body, "{\"active\":false}");

    let listed = send(
        gw.client
            .get(gw.admin_url("/rest/microgateway/oauth2/tokens"))
            .basic_auth("Administrator", Some("manage")),
    )
    .await;
    assert_eq!(listed.status, 200);
    assert!(listed.json()["tokens"]
        .as_array()
        .is_some_and(|t| !t.is_empty()));
    assert!(!listed.body.contains(access), "no token values");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_browser_application_on_another_origin() {
    let story = story();
    let data = tempfile::tempdir().expect("data dir");
    let gw = start(data.path()).await;
    let origin = "http://localhost:3000";

    let preflight = send(
        bookings(&gw, Method::OPTIONS)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            ),
    )
    .await;
    assert_eq!(preflight.status, 204);
    says_line(&story, "# HTTP/1.1 204 No Content");
    for name in [
        "vary",
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
    ] {
        says_line(&story, &format!("# {name}: {}", preflight.header(name)));
    }

    let refused = send(bookings(&gw, Method::GET).header("origin", origin)).await;
    assert_eq!(refused.status, 401);
    says_line(&story, "# HTTP/1.1 401 Unauthorized");
    for name in [
        "access-control-allow-origin",
        "access-control-expose-headers",
    ] {
        says_line(&story, &format!("# {name}: {}", refused.header(name)));
    }

    let token = client_credentials(&gw, "view").await;
    let allowed = send(
        bookings(&gw, Method::GET)
            .bearer_auth(&token)
            .header("origin", origin),
    )
    .await;
    assert_eq!(allowed.status, 200);
    says_line(&story, "# HTTP/1.1 200 OK");
    for name in ["cache-control", "access-control-allow-origin"] {
        says_line(&story, &format!("# {name}: {}", allowed.header(name)));
    }

    let elsewhere = send(
        bookings(&gw, Method::OPTIONS)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert_eq!(elsewhere.status, 204);
    assert!(
        elsewhere
            .headers
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "{:?}",
        elsewhere.headers
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn alice_grants_only_view_in_the_code_flow() {
    let story = story();
    let data = tempfile::tempdir().expect("data dir");
    let gw = start(data.path()).await;
    let (verifier, challenge) = pkce();
    let authorize = code_query("bookyourticket", "view book", Some(&challenge));
    let location = Browser::new(&gw).approve(&authorize, Some(&["view"])).await;
    let code = code_from(&location);
    let exchanged = token_form(
        &gw,
        "bookyourticket",
        SECRET,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(exchanged.status, 200, "{}", exchanged.body);
    assert_eq!(exchanged.json()["scope"], "view");
    says(
        &story,
        "# {\"access_token\"",
        &format!("# {}", exchanged.body),
    );
    assert!(story.contains("`\"scope\":\"view\"`: only what alice granted"));
    let token = exchanged.json()["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let listed = send(bookings(&gw, Method::GET).bearer_auth(&token)).await;
    assert_eq!(listed.status, 200);
    let booked = send(bookings(&gw, Method::POST).bearer_auth(&token)).await;
    assert_eq!(booked.status, 403);
    assert!(booked
        .header("www-authenticate")
        .contains("insufficient_scope"));
    gw.shutdown().await;
}

/// The `explain` example of the README's commands is what `explain` prints
/// for the embedded default.
#[test]
fn the_explain_example_is_what_explain_prints() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let command = "$ microgateway explain POST /travels/bookings --scopes \"view\"\n";
    let start = readme.find(command).expect("the explain example") + command.len();
    let shown = &readme[start..start + readme[start..].find("```").expect("its block's end")];
    let data = tempfile::tempdir().expect("data dir");
    let config = data.path().join("microgateway.yaml");
    std::fs::write(&config, default_config(data.path())).expect("write the config");
    let out = Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .env_clear()
        .env("NO_COLOR", "1")
        .args(["explain", "-c"])
        .arg(&config)
        .args(["POST", "/travels/bookings", "--scopes", "view"])
        .output()
        .expect("explain runs");
    assert_eq!(out.status.code(), Some(2), "deny");
    assert_eq!(String::from_utf8_lossy(&out.stdout), shown);
}

/// The YAML of the story's "A live feed and a gRPC service": its mappings
/// and APIs added to the embedded default, the services' URLs pointed at
/// `upstream`.
fn with_streaming_apis(config: &str, upstream: std::net::SocketAddr) -> String {
    let section = story();
    let start = section
        .find("### A live feed and a gRPC service")
        .expect("the streaming part of the story");
    let block = &section[start..];
    let yaml_start = block.find("```yaml\n").expect("its YAML") + "```yaml\n".len();
    let yaml = &block[yaml_start..yaml_start + block[yaml_start..].find("```").expect("end")];
    let yaml = yaml
        .replace("127.0.0.1:9001", &upstream.to_string())
        .replace("127.0.0.1:9002", &upstream.to_string());
    let (mappings, apis) = yaml.split_once("apis:\n").expect("an apis part");
    let mappings = mappings
        .strip_prefix("scope_mappings:")
        .and_then(|rest| rest.split_once('\n'))
        .map(|(_comment, lines)| lines)
        .expect("a scope_mappings part");
    // Each mapping replaces the default's line for the same token scope.
    let mut config = config.to_owned();
    for mapping in mappings.lines() {
        let scope = mapping
            .split("scope: ")
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .expect("a token scope");
        let prefix = format!("- {{ auth_server: local, scope: {scope},");
        let old = config
            .lines()
            .find(|line| line.replace("  ", " ").starts_with(&prefix))
            .unwrap_or_else(|| panic!("the default maps {scope}"))
            .to_owned();
        config = config.replacen(
            &old,
            mapping.split("  #").next().unwrap_or(mapping).trim_end(),
            1,
        );
    }
    config.replacen("\napis:\n", &format!("\napis:\n{apis}"), 1)
}

#[tokio::test]
async fn a_live_feed_and_a_grpc_service() {
    let data = tempfile::tempdir().expect("data dir");
    let refusing = common::Refusing::new();
    let yaml = with_streaming_apis(&default_config(data.path()), refusing.addr);
    let env = common::env(&[
        ("MCGW_PORTS_HTTP", "0"),
        ("MCGW_PORTS_HTTPS", "0"),
        ("MCGW_ADMIN_PORT", "0"),
    ]);
    let gw = Gateway::start_with_env(&yaml, env).await;
    gw.wait_ready().await;
    let handshake = |auth: &str| {
        format!(
            "GET /departures/live HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{auth}Connection: close\r\n\r\n"
        )
    };
    // Without a token the feed never sees the handshake.
    let refused = common::raw_request(gw.http, handshake("").as_bytes()).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    // A `view` token grants Departures:Watch: the handshake is forwarded
    // (to a port that refuses it here, hence 502).
    let token = client_credentials(&gw, "view").await;
    let auth = format!("Authorization: Bearer {token}\r\n");
    let forwarded = common::raw_request(gw.http, handshake(&auth).as_bytes()).await;
    assert!(forwarded.starts_with("HTTP/1.1 502"), "{forwarded}");
    // A gRPC call without a token: HTTP 200, grpc-status 16.
    let tcp = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
    let call = http::Request::post(format!("http://{}/seats.v1.Seats/Hold", gw.http))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"\0\0\0\0\0",
        )))
        .expect("request");
    let answer = sender.send_request(call).await.expect("an answer");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers().get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"16"[..]),
        "{:?}",
        answer.headers()
    );
    gw.shutdown().await;
}
