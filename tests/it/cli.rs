//! The built binary: `check` and `explain` output and exit codes, and
//! `start` draining an in-flight request on SIGTERM.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Upstream;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microgateway"));
    // Only what the test sets: no MCGW_ variable of the caller leaks in.
    command.env_clear().env("NO_COLOR", "1");
    command
}

fn run(args: &[&str]) -> Output {
    binary().args(args).output().expect("run the binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("microgateway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

#[test]
fn check_accepts_the_default_configuration() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/microgateway.yaml");
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (1 APIs, 0 warnings)\n", config.display())
    );
    assert_eq!(text(&out.stderr), format!("reading {}\n", config.display()));
}

/// `hash-password` with `input` on standard input.
fn hash_password(input: &str) -> Output {
    use std::io::Write;
    let mut child = binary()
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the binary");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the password");
    child.wait_with_output().expect("wait for the binary")
}

/// A password of only whitespace would be refused as a secret by the
/// configuration: `hash-password` refuses it too, and hashes no blank.
#[test]
fn hash_password_refuses_a_blank_password() {
    for blank in ["  \n", "\t\r\n", " "] {
        let out = hash_password(blank);
        assert_eq!(out.status.code(), Some(1), "{blank:?}");
        assert_eq!(text(&out.stdout), "", "{blank:?}");
        assert_eq!(
            text(&out.stderr),
            "the password is only whitespace; type a password on standard input\n"
        );
    }
    let out = hash_password(" a password with spaces \n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{}",
        text(&out.stdout)
    );
}

/// Piped input is one password on one line: a second line is refused,
/// never dropped without a word, and so is input that is no UTF-8 text.
#[test]
fn hash_password_takes_one_line_and_says_so_otherwise() {
    for (input, said) in [
        (
            "first\nsecond\n",
            "the input has more than one line; type one password on standard input\n",
        ),
        (
            "first\r\nsecond",
            "the input has more than one line; type one password on standard input\n",
        ),
        ("\n", "type the password on standard input\n"),
    ] {
        let out = hash_password(input);
        assert_eq!(out.status.code(), Some(1), "{input:?}");
        assert_eq!(text(&out.stdout), "", "{input:?}");
        assert_eq!(text(&out.stderr), said, "{input:?}");
    }
    let out = hash_password("no line break at the end");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn check_passes_with_warnings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        r#"ports: { http: 0 }
security_settings:
  auth_servers:
  - id: local
    authServerType: EXTERNAL
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
"#,
    );
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "reading {0}\n\
             {0}:5:21: warning: `authServerType` is a webMethods setting that has no effect here; ignored\n",
            config.display()
        )
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (0 APIs, 1 warnings)\n", config.display())
    );
}

/// RFC 9068 §4: a resource server checks a JWT's `aud`. `audience` stays
/// optional, so an API whose JWTs are validated without one is warned
/// about, at the auth server's `localIntrospectionConfig`.
#[test]
fn check_warns_of_jwts_validated_without_an_audience() {
    let yaml = |audience: &str| {
        format!(
            r#"ports: {{ http: 0 }}
security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig:
      issuer: "https://idp.example"
{audience}apis:
- name: Travels
  base_path: /travels
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: idp }}
  resources: ["GET /bookings"]
"#
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), &yaml(""));
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "reading {0}\n\
             {0}:6:7: warning: auth server `idp` validates JWTs for API `Travels` without an `audience`: a token its issuer made for another resource server is accepted (RFC 9068 §4: a resource server checks `aud`); set localIntrospectionConfig.audience\n",
            config.display()
        )
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (1 APIs, 1 warnings)\n", config.display())
    );

    let config = write(dir.path(), &yaml("      audience: travels\n"));
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), format!("reading {}\n", config.display()));
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (1 APIs, 0 warnings)\n", config.display())
    );
}

#[test]
fn check_shows_the_settings_mcgw_variables_set() {
    // The file bounds request bodies to 1MiB; the variable lifts the
    // bound. `check` must not pass what the file no longer says in silence.
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), "limits: { max_body: 1MiB }\n");
    let out = binary()
        .env("MCGW_LIMITS_MAX_BODY", "1GiB")
        .args(["check", "-c", config.to_str().expect("utf-8 path")])
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "reading {}\n\
             MCGW_LIMITS_MAX_BODY: note: sets limits.max_body (the file's value, if any, is not used)\n",
            config.display()
        )
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (0 APIs, 0 warnings)\n", config.display())
    );
}

#[test]
fn check_reports_every_error_with_its_place_and_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        r#"ports: { http: 0 }
timeouts: { idle: never }
apis:
- name: A
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: nope }
"#,
    );
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    let file = config.display();
    assert_eq!(
        text(&out.stderr),
        format!(
            "reading {file}\n\
             {file}:2:19: error: timeouts.idle: `never` is not a duration; allowed: \"30s\", \"5m\", \"1h\", \"250ms\" or integer seconds\n\
             {file}:6:48: error: auth server `nope` is not defined; allowed: one of: (none defined)\n\
             {file}: 2 errors\n"
        )
    );
}

/// `check` refuses a Redis URL `start` could not open the store with,
/// without showing its password.
#[test]
fn check_refuses_a_redis_url_start_could_not_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        r#"ports: { http: 0 }
throttling: { store: "redis://:hunter2@127.0.0.1:notport/0" }
apis:
- name: A
  base_path: /a
  upstream: { echo: true }
  authentication: { type: none }
  resources: ["GET /a"]
  policies:
    throttle: [{ limit: 5, per: 1s }]
"#,
    );
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(":2:22: error: throttling.store: a URL the Redis client cannot read"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn check_of_a_missing_file_exits_1() {
    let out = run(&["check", "-c", "/nonexistent/microgateway.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(
            "reading /nonexistent/microgateway.yaml\n\
             /nonexistent/microgateway.yaml: error: cannot read the configuration: "
        ),
        "{}",
        text(&out.stderr)
    );
}

const EXPLAINED: &str = r#"
ports: { http: 0 }
security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
  - id: partners
    localIntrospectionConfig: { issuer: "https://partners.example" }
scope_mappings:
- auth_server: local
  scope: view
  api_scopes: ["Time travels:ViewTickets"]
- auth_server: local
  scope: book
  api_scopes: ["Time travels:BookTickets"]
apis:
- name: "Time travels"
  version: "1.0"
  base_path: /travels
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings", "GET /bookings/{id}"]
  - name: BookTickets
    resources: ["POST /bookings"]
  resources: ["GET /status"]
"#;

fn explain(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), EXPLAINED);
    let mut all = vec!["explain", "-c", config.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let out = run(&all);
    (out.status.code(), text(&out.stdout))
}

#[test]
fn explain_allows_a_token_with_a_mapped_scope() {
    let (code, out) = explain(&["GET", "/travels/bookings/7", "--scopes", "openid view"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out,
        "GET /travels/bookings/7\n\
         api:        Time travels 1.0 (base path /travels)\n\
         resource:   GET /bookings/{id}\n\
         auth:       oauth2, auth server local\n\
         api scopes: Time travels:ViewTickets (any one)\n\
         granted by: token scopes view\n\
         verdict:    ALLOW (grants Time travels:ViewTickets)\n"
    );
}

/// A request target with a query is routed by its path, as the gateway
/// routes it.
#[test]
fn explain_routes_a_target_with_a_query_by_its_path() {
    let (code, out) = explain(&["GET", "/travels/bookings/7?x=1", "--scopes", "view"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("GET /travels/bookings/7?x=1\n"), "{out}");
    assert!(out.contains("resource:   GET /bookings/{id}\n"), "{out}");
}

/// A target is read as the data path reads it: a fragment is no part of
/// it (dot segments after `#` do not climb), and an absolute-form target
/// is served as its origin form, another scheme or user info refused with
/// the gateway's 400.
#[test]
fn explain_reads_a_fragment_and_an_absolute_form_target_as_the_gateway_does() {
    let (code, out) = explain(&["GET", "/travels/bookings#/../status", "--scopes", "view"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("resource:   GET /bookings\n"), "{out}");
    let (code, out) = explain(&[
        "GET",
        "http://gateway.example/travels/bookings/7?x=1",
        "--scopes",
        "view",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("resource:   GET /bookings/{id}\n"), "{out}");
    for target in [
        "ftp://gateway.example/travels/status",
        "http://user@gateway.example/travels/status",
    ] {
        let (code, out) = explain(&["GET", target, "--scopes", "view"]);
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.ends_with("verdict:    DENY 400: absolute-form request target\n"),
            "{out}"
        );
    }
}

/// An API served over one transport says so: on the other port its path
/// is no API's (404), whatever the verdict.
#[test]
fn explain_says_which_transport_an_api_is_served_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "apis:\n- name: Inner\n  base_path: /o/sec\n  transport: [https]\n  upstream: { echo: true }\n  authentication: { type: none }\n  resources: [\"GET /x\"]\n",
    );
    let out = run(&[
        "explain",
        "-c",
        config.to_str().expect("utf-8 path"),
        "GET",
        "/o/sec/x",
    ]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("transport:  https only (404 over http)\n"),
        "{said}"
    );
}

/// A target that is no URI reference (a backtick, `<`, `>`) is refused
/// with the gateway's 400 before anything else, not judged as a path.
#[test]
fn explain_refuses_a_malformed_target_as_the_gateway_does() {
    for target in [
        "/travels/bookings/a`b",
        "/travels/bookings/a<b",
        "/travels/bookings/a>b",
    ] {
        let (code, out) = explain(&["GET", target, "--scopes", "view"]);
        assert_eq!(code, Some(2), "{target}: {out}");
        assert!(
            out.ends_with("verdict:    DENY 400: malformed request target\n"),
            "{target}: {out}"
        );
    }
}

/// The query is no part of the path: a last segment with a query is the
/// resource it names; what the gateway refuses in a query (a token, a
/// method override) is refused here too, with the gateway's 400.
#[test]
fn explain_reads_the_query_as_the_gateway_does() {
    let (code, out) = explain(&["GET", "/travels/bookings?x=1", "--scopes", "view"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("resource:   GET /bookings\n"), "{out}");
    let (code, out) = explain(&[
        "GET",
        "/travels/bookings?access_token=t",
        "--scopes",
        "view",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.ends_with("verdict:    DENY 400: access_token in the query is not accepted\n"),
        "{out}"
    );
    let (code, out) = explain(&[
        "POST",
        "/travels/bookings?_method=DELETE",
        "--scopes",
        "book",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.ends_with("DENY 400: a method-override parameter (_method) is not accepted\n"),
        "{out}"
    );
}

#[test]
fn explain_denies_a_token_without_a_mapped_scope_with_exit_2() {
    let (code, out) = explain(&["GET", "/travels/bookings", "--scopes", "book"]);
    assert_eq!(code, Some(2));
    assert!(
        out.contains("api scopes: Time travels:ViewTickets (any one)\n"),
        "{out}"
    );
    assert!(out.contains("granted by: token scopes view\n"), "{out}");
    assert!(
        out.ends_with("verdict:    DENY 403: insufficient_scope\n"),
        "{out}"
    );
}

#[test]
fn explain_reads_scopes_as_tokens_carry_them_split_on_spaces_only() {
    // A tab (or U+2003) is not a scope separator: a token whose scope
    // reads "openid\tview" is refused, so explain grants nothing either.
    let (code, out) = explain(&["GET", "/travels/bookings/7", "--scopes", "openid\tview"]);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out, "");
    let (code, _) = explain(&["GET", "/travels/bookings/7", "--scopes", " openid  view "]);
    assert_eq!(code, Some(0));
}

/// The data path validates an API's tokens with its own auth server: a
/// token of another is refused (401) whatever it carries.
#[test]
fn explain_refuses_a_token_of_another_auth_server() {
    let (code, out) = explain(&[
        "GET",
        "/travels/bookings",
        "--scopes",
        "view",
        "--auth-server",
        "partners",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.ends_with(
            "verdict:    DENY 401: invalid_token (the API validates tokens of auth server local, not partners)\n"
        ),
        "{out}"
    );
    let (code, out) = explain(&[
        "GET",
        "/travels/bookings",
        "--scopes",
        "view",
        "--auth-server",
        "local",
    ]);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn explain_without_scopes_needs_a_token() {
    let (code, out) = explain(&["GET", "/travels/bookings"]);
    assert_eq!(code, Some(2));
    assert!(
        out.ends_with(
            "verdict:    DENY 401: a bearer token is required (pass --scopes to decide for a token)\n"
        ),
        "{out}"
    );
}

/// RFC 9110 §9.1: the method is case-sensitive, and `get` is no GET. The
/// gateway answers it 405 (no resource has it), and explain says so too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_reads_the_method_case_sensitively_as_the_gateway_does() {
    let gw = explained_gateway().await;
    let raw = common::raw_request(
        gw.http,
        b"get /travels/bookings HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&raw), 405, "{raw}");
    gw.shutdown().await;
    let (code, out) = explain(&["get", "/travels/bookings", "--scopes", "view"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.starts_with("get /travels/bookings\n"), "{out}");
    assert!(
        out.ends_with("verdict:    DENY 405: the resource does not allow this method\n"),
        "{out}"
    );
}

/// A gateway serving [`EXPLAINED`] on ports of its own, to compare what
/// `explain` says with what the data path answers.
async fn explained_gateway() -> common::Gateway {
    let own_ports = "ports: { http: 0, bind: 127.0.0.1 }\nadmin: { port: 0, bind: 127.0.0.1 }";
    common::Gateway::start(&EXPLAINED.replace("ports: { http: 0 }", own_ports)).await
}

/// `CONNECT` is refused before anything is matched, as the data path
/// refuses it.
#[tokio::test]
async fn explain_refuses_connect_as_the_gateway_does() {
    let gw = explained_gateway().await;
    let raw = common::raw_request(
        gw.http,
        b"CONNECT /travels/bookings HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&raw), 400, "{raw}");
    gw.shutdown().await;
    let (code, out) = explain(&["CONNECT", "/travels/bookings", "--scopes", "view"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.ends_with("verdict:    DENY 400: CONNECT is not served\n"),
        "{out}"
    );
}

#[test]
fn explain_an_open_resource_needs_any_token() {
    let (code, out) = explain(&["GET", "/travels/status", "--scopes", ""]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("api scopes: (none: any valid token)\n"),
        "{out}"
    );
    assert!(out.ends_with("verdict:    ALLOW\n"), "{out}");
}

/// `/files/secret/` reads as `/files/secret` (`{name}`, View) and as
/// written (`{name}/{rest*}`, Admin); authorization asks both, so explain
/// shows what each needs, and a token with only View is refused.
#[test]
fn explain_shows_the_scopes_of_both_readings_of_a_trailing_slash() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        r#"
ports: { http: 0 }
security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
scope_mappings:
- { auth_server: local, scope: view, api_scopes: ["Files:View"] }
- { auth_server: local, scope: admin, api_scopes: ["Files:Admin"] }
apis:
- name: Files
  version: "1.0"
  base_path: /files
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  scopes:
  - name: View
    resources: ["GET /{name}"]
  - name: Admin
    resources: ["GET /{name}/{rest*}"]
"#,
    );
    let config = config.to_str().expect("utf-8 path");
    let out = run(&[
        "explain",
        "-c",
        config,
        "GET",
        "/files/secret/",
        "--scopes",
        "view",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stdout),
        "GET /files/secret/\n\
         api:        Files 1.0 (base path /files)\n\
         resource:   GET /{name}\n\
         auth:       oauth2, auth server local\n\
         api scopes: Files:View (any one)\n\
         granted by: token scopes view\n\
         and:        GET /{name}/{rest*} (the path's other reading: it must allow the request too)\n\
         api scopes: Files:Admin (any one)\n\
         granted by: token scopes admin\n\
         verdict:    DENY 403: insufficient_scope\n"
    );
    let out = run(&[
        "explain",
        "-c",
        config,
        "GET",
        "/files/secret/",
        "--scopes",
        "view admin",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).ends_with("verdict:    ALLOW (grants Files:View)\n"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn explain_unknown_path_and_method() {
    let (code, out) = explain(&["GET", "/travels/nope"]);
    assert_eq!(code, Some(2));
    assert_eq!(
        out,
        "GET /travels/nope\nverdict:    DENY 404: no resource of API Time travels matches this path\n"
    );
    let (code, out) = explain(&["DELETE", "/travels/bookings"]);
    assert_eq!(code, Some(2));
    assert!(
        out.ends_with("verdict:    DENY 405: the resource does not allow this method\n"),
        "{out}"
    );
    let (code, out) = explain(&["GET", "/travels/a%2Fb"]);
    assert_eq!(code, Some(2));
    assert!(out.ends_with("verdict:    DENY 400: encoded slash in the path of API Time travels, which does not allow them\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_and_exits_0() {
    let (_upstream, _dir, mut started, in_flight) =
        a_request_in_flight("10s", Duration::from_millis(1500)).await;
    send("TERM", &started.child);

    let status = in_flight.await.expect("join").expect("response");
    assert_eq!(status, 200);
    let exit = exit_within(&mut started.child, Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0));
    let rest: Vec<String> = started.lines.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("shutting down: draining in-flight requests")),
        "{rest:?}"
    );
    assert!(
        rest.last().is_some_and(|l| l.contains("stopped")),
        "{rest:?}"
    );
}

/// A gateway process whose one API (`/slow/x`) waits `delay` for its
/// upstream, with `drain` as its drain timeout, and a request to it the
/// upstream has: what a shutdown finds in flight. The upstream comes back
/// with the request's outcome (`Err` once it is cut, unanswered).
async fn a_request_in_flight(
    drain: &str,
    delay: Duration,
) -> (
    Upstream,
    tempfile::TempDir,
    common::process::Started,
    tokio::task::JoinHandle<reqwest::Result<u16>>,
) {
    let upstream = Upstream::start().await;
    upstream.set_delay(delay);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        &format!(
            r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
timeouts: {{ drain: {drain} }}
apis:
- name: Slow
  base_path: /slow
  upstream: {{ url: "{}", timeout: 60s }}
  resources: ["GET /x"]
  authentication:
    type: none
"#,
            upstream.url("/api")
        ),
    );
    let started = common::process::start(binary().args([
        "start",
        "-c",
        config.to_str().expect("utf-8 path"),
    ]));
    let http = started.http;
    let in_flight = tokio::spawn(async move {
        common::client()
            .get(format!("http://{http}/slow/x"))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (upstream, dir, started, in_flight)
}

/// A request still in flight when the drain timeout passes is logged as
/// cut by the shutdown (503), not as one whose client left (499).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_at_the_drain_timeout_is_logged_as_the_shutdowns() {
    let (_upstream, _dir, mut started, in_flight) =
        a_request_in_flight("1s", Duration::from_secs(30)).await;
    send("TERM", &started.child);
    let exit = exit_within(&mut started.child, Duration::from_secs(10)).await;
    assert_eq!(exit.code(), Some(0));
    assert!(in_flight.await.expect("join").is_err(), "cut, unanswered");
    let rest: Vec<String> = started.lines.try_iter().collect();
    let line = rest
        .iter()
        .find(|l| l.contains("path=/slow/x"))
        .unwrap_or_else(|| panic!("no access-log line: {rest:?}"));
    assert!(line.contains(r#"api="Slow" status=503 "#), "{line}");
}

/// Sends `signal` (`TERM`, `INT`) to `child`.
fn send(signal: &str, child: &std::process::Child) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// The exit status of `child` once it exits within `within`.
async fn exit_within(
    child: &mut std::process::Child,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            return exit;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A downstream waiting for a central that never answers (30 s of
/// download timeout) is stopped by SIGTERM or SIGINT at once, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_start_up_stops_the_process() {
    for signal in ["TERM", "INT"] {
        // Accepts, reads nothing, answers nothing.
        let central = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", central.local_addr().expect("addr"));
        let (accepted_tx, accepted) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((stream, _)) = central.accept() {
                let _ = accepted_tx.send(());
                std::thread::park_timeout(Duration::from_secs(60));
                drop(stream);
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let config = write(
            dir.path(),
            &format!(
                r#"ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
api_gateway:
  url: "{url}"
  user: fleet
  password: "secret"
  download_apis: true
  cache_file: "{}"
"#,
                dir.path().join("cache.yaml").display()
            ),
        );
        let mut child = binary()
            .args(["start", "-c", config.to_str().expect("utf-8 path")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the binary");
        let accepted = tokio::task::spawn_blocking(move || {
            accepted.recv_timeout(Duration::from_secs(20)).is_ok()
        });
        assert!(accepted.await.expect("join"), "the central was never asked");
        send(signal, &child);
        let exit = exit_within(&mut child, Duration::from_secs(5)).await;
        assert_eq!(exit.code(), Some(0), "{signal}");
        let mut log = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut log)
            .expect("stderr");
        assert!(log.contains("stopped during start-up"), "{signal}: {log}");
    }
}

/// A second SIGTERM or SIGINT during the drain stops at once, without
/// waiting for the request in flight, and says so; one sent together with
/// the first (a terminal's Ctrl-C beside an orchestrator's SIGTERM) is no
/// second one: the drain goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_the_drain_stops_at_once() {
    for (first, second) in [("TERM", "TERM"), ("TERM", "INT"), ("INT", "INT")] {
        let (_upstream, _dir, mut started, in_flight) =
            a_request_in_flight("60s", Duration::from_secs(30)).await;
        send(first, &started.child);
        send(second, &started.child);
        assert!(
            started
                .line_with("shutting down", Duration::from_secs(10))
                .is_some(),
            "no drain"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            started.child.try_wait().expect("wait").is_none(),
            "{first} {second} sent together cut the drain"
        );
        send(second, &started.child);
        let exit = exit_within(&mut started.child, Duration::from_secs(5)).await;
        assert_eq!(exit.code(), Some(0), "{first} {second}");
        assert!(
            started
                .line_with("second signal: stopped at once", Duration::from_secs(1))
                .is_some(),
            "{first} {second}"
        );
        assert!(in_flight.await.expect("join").is_err(), "cut, unanswered");
    }
}

/// A downstream's file, downloading APIs from an unreachable central, with
/// `cache` as its cache file and one local API at `/local`.
fn downstream(dir: &Path, cache: &Path) -> PathBuf {
    write(
        dir,
        &format!(
            r#"ports: {{ http: 0 }}
api_gateway:
  url: "http://127.0.0.1:9"
  user: fleet
  password: "secret"
  download_apis: true
  cache_file: "{}"
apis:
- name: Local
  version: "1.0"
  base_path: /local
  upstream: {{ echo: true }}
  resources: ["GET /ping"]
  authentication:
    type: none
"#,
            cache.display()
        ),
    )
}

/// Writes `text` as the cached download of `downstream`'s file, with the
/// record of the central and APIs it was downloaded for.
fn write_cache(cache: &Path, text: &str) {
    std::fs::write(cache, text).expect("write cache");
    let record = microgateway::central::provenance::record_path(cache);
    std::fs::write(record, r#"{"url": "http://127.0.0.1:9", "apis": []}"#).expect("write record");
}

/// A central's export (every section, as an export has them) with one API.
fn cached_api(name: &str, base_path: &str) -> String {
    format!(
        r#"security_settings: {{ auth_servers: [], aliases: [] }}
scope_mappings: []
apis:
- name: {name}
  version: "1.0"
  base_path: {base_path}
  upstream: {{ echo: true }}
  resources: ["GET /x"]
  authentication:
    type: none
"#
    )
}

#[test]
fn check_of_a_downstream_merges_its_cached_download() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("central-cache.yaml");
    let config = downstream(dir.path(), &cache);
    let config_arg = config.to_str().expect("utf-8 path");
    // No download yet: the file alone is checked, and the check says so.
    let out = run(&["check", "-c", config_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not checked"),
        "{}",
        text(&out.stderr)
    );
    // A cache that does not say what it was downloaded for is not used.
    std::fs::write(&cache, cached_api("Central", "/central")).expect("write cache");
    let out = run(&["check", "-c", config_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not used"),
        "{}",
        text(&out.stderr)
    );
    write_cache(&cache, &cached_api("Central", "/central"));
    let out = run(&["check", "-c", config_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: ok (2 APIs, 0 warnings, with {})\n",
            config.display(),
            cache.display()
        )
    );
    // Valid alone, but its base path is the local API's: the merge fails.
    write_cache(&cache, &cached_api("Other", "/local"));
    let out = run(&["check", "-c", config_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("/local"),
        "{}",
        text(&out.stderr)
    );
}

/// `check -c config`, which must end within 20 s: its status and stderr.
fn check_within_20_s(config: &Path) -> (std::process::ExitStatus, String) {
    let mut child = binary()
        .args(["check", "-c", config.to_str().expect("utf-8 path")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the binary");
    let status = common::process::exit_of(&mut child).expect("check ends within 20 s");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    (status, stderr)
}

/// A cache file is read within 4 MiB, as `start` reads it: `/dev/zero` is
/// an unreadable cache, not a check that never ends.
#[test]
fn check_reads_no_more_of_a_cache_file_than_start_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = downstream(dir.path(), Path::new("/dev/zero"));
    let (status, stderr) = check_within_20_s(&config);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cannot read the cache file"), "{stderr}");
}

/// A FIFO as the cache file, or as its record, is refused at once (its
/// open would wait for a writer for good): the file is checked alone.
#[test]
fn check_refuses_a_fifo_cache_file_or_record_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("central-cache.yaml");
    common::mkfifo(&cache);
    let config = downstream(dir.path(), &cache);
    let (status, stderr) = check_within_20_s(&config);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("cannot read the cache file"), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");

    std::fs::remove_file(&cache).expect("remove the FIFO");
    std::fs::write(&cache, cached_api("Central", "/central")).expect("write cache");
    common::mkfifo(&microgateway::central::provenance::record_path(&cache));
    let (status, stderr) = check_within_20_s(&config);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("is not used"), "{stderr}");
}

#[test]
fn explain_of_a_downstream_decides_on_its_cached_download_as_check_does() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = dir.path().join("central-cache.yaml");
    let config = downstream(dir.path(), &cache);
    let config_arg = config.to_str().expect("utf-8 path");
    let explain = |path: &str| run(&["explain", "-c", config_arg, "GET", path]);
    // No download yet: the central's API is unknown, like in `check`.
    let out = explain("/central/x");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("not checked"),
        "{}",
        text(&out.stderr)
    );
    write_cache(&cache, &cached_api("Central", "/central"));
    for out in [explain("/central/x"), run(&["check", "-c", config_arg])] {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
        // Both name the files they read, one line each.
        assert_eq!(
            text(&out.stderr),
            format!(
                "reading {}\nreading {} (cached download)\n",
                config.display(),
                cache.display()
            )
        );
    }
    assert!(text(&explain("/local/ping").stdout).contains("ALLOW"));
    // An invalid merge fails `explain` as it fails `check`.
    write_cache(&cache, &cached_api("Other", "/local"));
    for out in [explain("/local/ping"), run(&["check", "-c", config_arg])] {
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("/local"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// A FIFO given as the configuration is refused at once (its open would
/// wait for a writer for good), exit 1.
#[test]
fn check_refuses_a_fifo_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("microgateway.yaml");
    common::mkfifo(&fifo);
    let (status, stderr) = check_within_20_s(&fifo);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

/// A usage error (an unknown flag, a bad value, a missing argument) exits
/// 1, never 2: 2 is `explain`'s DENY, which a mistyped flag must not pass
/// for. `--help` is an answer, 0.
#[test]
fn a_usage_error_exits_1_and_help_0() {
    for args in [
        &["explain", "GET", "/x", "--client-ip", "notanip"][..],
        &["explain", "GET", "/x", "--scope", "view"],
        &["explain"],
        &["check", "--bogus"],
        &["check", "-c"],
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    assert_eq!(run(&["--help"]).status.code(), Some(0));
    assert_eq!(run(&["explain", "--help"]).status.code(), Some(0));
}

/// A configuration of nothing but comments starts a gateway that serves
/// nothing: `check` says so.
#[test]
fn check_warns_of_a_configuration_without_settings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), "# nothing yet\n\n");
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("warning: the configuration holds no settings"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout),
        format!("{}: ok (0 APIs, 1 warnings)\n", config.display())
    );
}

/// A downstream whose cache file is its own configuration file (or a file
/// the configuration names) is refused: each download would overwrite it,
/// and the next reload would serve the export in its place.
#[test]
fn a_cache_file_that_is_the_configuration_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        r#"ports: { http: 0 }
api_gateway:
  url: "http://127.0.0.1:9"
  user: fleet
  password: "fleet-password-long-enough"
  download_apis: true
  cache_file: microgateway.yaml
"#,
    );
    let before = std::fs::read_to_string(&config).expect("read");
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        said.contains("is the configuration file itself: each download would overwrite it"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&config).expect("read"), before);
}

/// `tls.client_auth: required` asks a certificate on the HTTPS port only:
/// an API also served on the HTTP port is warned about (it is served there
/// to anyone), one served over HTTPS alone is not.
#[test]
fn an_api_served_without_the_required_client_certificate_is_warned_about() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("certificate");
    std::fs::write(dir.path().join("server.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("server.key"), key.serialize_pem()).expect("write");
    std::fs::write(dir.path().join("client-ca.crt"), cert.pem()).expect("write");
    let yaml = |transport: &str| {
        format!(
            "ports: {{ http: 0, https: 0 }}\ntls: {{ certificate: server.crt, key: server.key, client_ca: client-ca.crt, client_auth: required }}\napis:\n- name: Internal\n  base_path: /internal\n{transport}  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /x\"]\n"
        )
    };
    let config = write(dir.path(), &yaml(""));
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("API `Internal` is served on ports.http too, where tls.client_auth: required asks no certificate"),
        "{said}"
    );
    let config = write(dir.path(), &yaml("  transport: [https]\n"));
    let out = run(&["check", "-c", config.to_str().expect("utf-8 path")]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("0 warnings"), "{said}");
}
