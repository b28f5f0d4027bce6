//! Validation of the configuration file, one test per rule: each names the
//! file line and column of the finding, what is wrong and what is allowed.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{env, Env};
use microgateway::config::diagnostic::Origin;
use microgateway::config::{self, Diagnostic, Loaded, Severity};

/// A configuration file in its own directory.
struct Config {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Config {
    fn new(yaml: &str) -> Config {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("microgateway.yaml");
        std::fs::write(&path, yaml).expect("write config");
        Config { dir, path }
    }

    /// Writes a file next to the configuration.
    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents).expect("write file");
        path
    }

    fn load(&self, env: &Env) -> Result<Loaded, Vec<Diagnostic>> {
        config::load(&self.path, env, 1).map_err(|invalid| invalid.findings)
    }
}

/// A finding as (line, column, message, allowed), for comparison.
type Found = (u64, u64, String, Option<String>);

fn found(d: &Diagnostic) -> Found {
    match &d.origin {
        Origin::File { line, column, .. } => (*line, *column, d.message.clone(), d.allowed.clone()),
        other => panic!("finding without a file position ({other:?}): {d}"),
    }
}

fn loaded(yaml: &str) -> Loaded {
    loaded_with(yaml, &Env::new())
}

/// The messages of the warnings `yaml` loads with.
fn warning_messages(yaml: &str) -> Vec<String> {
    loaded(yaml)
        .warnings
        .iter()
        .map(|d| d.message.clone())
        .collect()
}

fn loaded_with(yaml: &str, env: &Env) -> Loaded {
    Config::new(yaml)
        .load(env)
        .unwrap_or_else(|findings| panic!("refused: {findings:#?}"))
}

/// The errors of an invalid file (warnings left out).
fn errors(yaml: &str) -> Vec<Found> {
    let findings = Config::new(yaml)
        .load(&Env::new())
        .expect_err("the file is refused");
    findings
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(found)
        .collect()
}

fn error(line: u64, column: u64, message: &str, allowed: &str) -> Found {
    (
        line,
        column,
        message.to_owned(),
        (!allowed.is_empty()).then(|| allowed.to_owned()),
    )
}

/// Asserts that `yaml` is refused with exactly this one error.
fn refused(yaml: &str, expected: Found) {
    assert_eq!(errors(yaml), vec![expected]);
}

/// An auth server for APIs with scopes, written after everything else so
/// that the lines before it keep their numbers.
const AUTH_SERVER_LAST: &str = r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485", audience: travels }
"#;
const RESOURCE_ALLOWED: &str = "\"METHOD /path\" with METHOD one of GET POST PUT PATCH DELETE HEAD OPTIONS, segments literal, {name} or a final {name*}";
const SECRET_ALLOWED: &str = "a value, \"{encoded}BASE64\", \"${env:NAME}\" or \"${file:/path}\"";
const MISTYPED_REFERENCE: &str = "`${…}` is no secret reference: write exactly \"${env:NAME}\" or \"${file:/path}\", no spaces around it (a secret that starts with `${` is written as \"{encoded}BASE64\")";
const TOP_LEVEL_KEYS: &str = "one of: ports, tls, admin, trusted_proxies, forwarding, limits, timeouts, api_gateway, security_settings, scope_mappings, apis, authorization_server, central, throttling, applications";

// ------------------------------------------------------------ YAML shape

#[test]
fn unknown_top_level_key() {
    refused(
        "ports: { http: 0 }\nbogus: 1\n",
        error(2, 1, "unknown key `bogus`", TOP_LEVEL_KEYS),
    );
}

/// A stray `---` (or `...` then `---`) splits the file: what follows is
/// read as an auth server, and the error says so instead of only naming an
/// auth server's keys.
#[test]
fn settings_after_a_second_document_marker_are_said_to_belong_in_the_first() {
    for yaml in [
        "apis: []\n---\nports: { http: 0 }\n",
        "apis: []\n...\n---\nports: { http: 0 }\n",
    ] {
        let errors = errors(yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let (line, column, message, _) = &errors[0];
        assert_eq!((*line, *column), (yaml.lines().count() as u64, 1), "{yaml}");
        assert!(
            message.starts_with(
                "unknown key `ports` (a document after the first `---` is read as one auth server"
            ) && message.ends_with("the gateway's settings all go in the first document)"),
            "{message}"
        );
    }
}

#[test]
fn unknown_key_in_an_api() {
    refused(
        r#"apis:
- name: A
  upstream: { echo: true }
  colour: red
  authentication: { type: none }
"#,
        error(
            4,
            3,
            "unknown key `colour`",
            "one of: name, version, base_path, transport, allow_encoded_slashes, upstream, authentication, scopes, resources, policies, ip_filter, websocket, tunnel_max_lifetime, grpc",
        ),
    );
}

#[test]
fn unknown_key_in_local_introspection_config() {
    refused(
        r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig:
      issuer: "http://localhost:4485"
      jwks: "http://localhost:4485/oauth2/jwks"
"#,
        error(
            6,
            7,
            "unknown key `jwks`",
            "one of: issuer, jwksuri, audience, clockSkew, accept_jwt_typ, trustStoreAlias, certificateAlias, description, useLocalClockSkew, allow_insecure_http",
        ),
    );
}

#[test]
fn unknown_key_in_a_flow_mapping() {
    refused(
        "ports: { http: 0, colour: red }\n",
        error(
            1,
            19,
            "unknown key `colour`",
            "one of: http, https, bind, pin_threads",
        ),
    );
}

#[test]
fn duplicate_key() {
    refused(
        "ports:\n  http: 1\n  http: 2\n",
        error(
            3,
            3,
            "key `http` is written twice in this mapping",
            "each key once",
        ),
    );
}

#[test]
fn wrong_type() {
    refused(
        "apis: \"none\"\n",
        error(1, 7, "expected sequence start", ""),
    );
    refused(
        "ports:\n  http: [1]\n",
        error(
            2,
            9,
            "expected a single value (text, number or boolean), not a list or mapping",
            "",
        ),
    );
    refused(
        "ports: { http: eighty }\n",
        error(
            1,
            16,
            "ports.http: `eighty` is not valid",
            "a port number 0-65535",
        ),
    );
}

#[test]
fn bad_duration() {
    refused(
        "timeouts:\n  idle: 5 parsecs\n",
        error(
            2,
            9,
            "timeouts.idle: `5 parsecs` is not a duration",
            "\"30s\", \"5m\", \"1h\", \"250ms\" or integer seconds",
        ),
    );
}

/// An upstream timeout of 0 answers every request 504 before the upstream
/// could; a transport list written empty serves the API on no port. Both
/// read as something else (no bound, every transport): refused.
#[test]
fn an_upstream_timeout_of_0_and_an_empty_transport_list_are_refused() {
    assert_eq!(
        errors(
            r#"apis:
- name: A
  transport: []
  upstream: { echo: true, timeout: 0 }
  authentication: { type: none }
  resources: ["GET /a"]
"#
        ),
        vec![
            error(
                3,
                14,
                "transport is an empty list; the API would be served on no port",
                "http, https, or no `transport` for both",
            ),
            error(
                4,
                36,
                "upstream.timeout: must be more than 0",
                "a duration such as \"30s\" or \"500ms\"",
            ),
        ]
    );
}

/// Durations are added to clock readings on the data path: one past a
/// year (`18446744073709551615` seconds overflowed the clock and panicked
/// every connection's deadline) is refused, naming its key.
#[test]
fn durations_over_a_year_are_refused() {
    refused(
        "timeouts:\n  idle: 18446744073709551615\n",
        error(
            2,
            9,
            "timeouts.idle: `18446744073709551615` is longer than 365d",
            "a duration up to 365d",
        ),
    );
    let snap = loaded("timeouts: { idle: 365d }\n").snapshot;
    assert_eq!(snap.timeouts.idle, Duration::from_secs(365 * 86_400));
}

#[test]
fn durations_in_every_accepted_form() {
    let snap =
        loaded("timeouts: { header_read: 45, idle: 5m, upstream_connect: 250ms, drain: 1h }\n")
            .snapshot;
    assert_eq!(snap.timeouts.header_read, Duration::from_secs(45));
    assert_eq!(snap.timeouts.idle, Duration::from_secs(300));
    assert_eq!(snap.timeouts.upstream_connect, Duration::from_millis(250));
    assert_eq!(snap.timeouts.drain, Duration::from_secs(3600));
}

#[test]
fn bad_size() {
    refused(
        "limits:\n  max_body: lots\n",
        error(
            2,
            13,
            "limits.max_body: `lots` is not a size",
            "\"32KiB\", \"10MiB\" or integer bytes",
        ),
    );
}

#[test]
fn header_bytes_out_of_range() {
    refused(
        "limits:\n  max_header_bytes: 64MiB\n",
        error(
            2,
            21,
            "limits.max_header_bytes: `64MiB` is out of range",
            "1KiB to 1MiB",
        ),
    );
}

/// More fields than the HTTP/1.1 parser holds would be a limit HTTP/2
/// requests get and HTTP/1.1 requests do not; none is none at all.
#[test]
fn header_count_out_of_range() {
    for (count, column) in [("500", 16), ("0", 16)] {
        refused(
            &format!("limits:\n  max_headers: {count}\n"),
            error(
                2,
                column,
                &format!("limits.max_headers: `{count}` is out of range"),
                "1 to 256",
            ),
        );
    }
    let snap = loaded("limits: { max_headers: 256 }\n").snapshot;
    assert_eq!(snap.limits.max_headers, 256);
}

/// A limit of 0 connections, tunnels or target bytes would refuse every
/// request: a configuration error, not a gateway that answers nothing.
#[test]
fn limits_of_0_that_would_refuse_everything_are_refused() {
    for (key, column, message) in [
        (
            "max_connections",
            20,
            "limits.max_connections: 0 would refuse every one",
        ),
        (
            "max_tunnels",
            16,
            "limits.max_tunnels: 0 would refuse every one",
        ),
    ] {
        refused(
            &format!("limits:\n  {key}: 0\n"),
            error(2, column, message, "a positive integer"),
        );
    }
    refused(
        "limits:\n  max_uri: 0\n",
        error(
            2,
            12,
            "limits.max_uri: 0 would refuse every request (414)",
            "a size from 1 byte, such as \"8KiB\"",
        ),
    );
    let snap = loaded("limits: { max_connections: 1, max_tunnels: 1, max_uri: 1 }\n").snapshot;
    assert_eq!(
        (
            snap.limits.max_connections,
            snap.limits.max_tunnels,
            snap.limits.max_uri
        ),
        (1, 1, 1)
    );
    // No HTTP/2 request beyond each connection's first refuses none.
    let snap = loaded("limits: { max_streams: 0 }\n").snapshot;
    assert_eq!(snap.limits.max_streams, 0);
    assert_eq!(loaded("{}\n").snapshot.limits.max_streams, 10_000);
    refused(
        "limits:\n  max_streams: -1\n",
        error(
            2,
            16,
            "limits.max_streams: `-1` is not valid",
            "a non-negative integer",
        ),
    );
}

#[test]
fn sizes_in_every_accepted_form() {
    let snap =
        loaded("limits: { max_header_bytes: 32KiB, max_uri: 8192, max_body: 10MiB }\n").snapshot;
    assert_eq!(snap.limits.max_header_bytes, 32 * 1024);
    assert_eq!(snap.limits.max_uri, 8192);
    assert_eq!(snap.limits.max_body, 10 * 1024 * 1024);
}

#[test]
fn file_over_4_mib() {
    let mut yaml = String::from("ports: { http: 0 }\n");
    while yaml.len() <= 4 * 1024 * 1024 {
        yaml.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let config = Config::new(&yaml);
    let findings = config.load(&Env::new()).expect_err("refused");
    assert_eq!(findings.len(), 1);
    assert_eq!(
        findings[0].to_string(),
        format!(
            "{}: error: the file has {} bytes; allowed: at most 4 MiB",
            config.path.display(),
            yaml.len()
        )
    );
}

#[test]
fn yaml_deeper_than_64() {
    // root, security_settings, auth_servers and the entry are 4 levels.
    let deep = format!("{}{}", "[".repeat(61), "]".repeat(61));
    let yaml = format!(
        r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: {{ issuer: "http://localhost:4485" }}
    metadata: {deep}
"#
    );
    refused(
        &yaml,
        error(
            5,
            75,
            "the YAML is nested deeper than 64 levels",
            "at most 64 levels of nesting",
        ),
    );
    let shallow = format!("{}{}", "[".repeat(60), "]".repeat(60));
    loaded(&yaml.replace(&deep, &shallow));
}

#[test]
fn alias_bomb() {
    let yaml = r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
    metadata:
      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
      i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"#;
    let started = std::time::Instant::now();
    let errors = errors(yaml);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (line, _, message, allowed) = &errors[0];
    assert!((6..=14).contains(line), "{line}");
    assert_eq!(
        message,
        "the YAML expands beyond the parser's limits (aliases that multiply, or too many nodes)"
    );
    assert_eq!(
        allowed.as_deref(),
        Some("at most 1000 aliases, 100000 events replayed through aliases and 1000000 nodes")
    );
}

#[test]
fn a_few_anchors_and_aliases_are_fine() {
    let snap = loaded(
        r#"apis:
- name: A
  base_path: /a
  upstream: &echo { echo: true }
  resources: ["GET /x"]
  authentication: { type: none }
- name: B
  base_path: /b
  upstream: *echo
  resources: ["GET /x"]
  authentication: { type: none }
"#,
    )
    .snapshot;
    assert_eq!(snap.apis.len(), 2);
}

// ------------------------------------------------------------ resources

#[test]
fn invalid_resource_templates() {
    let yaml = r#"apis:
- name: A
  upstream: { echo: true }
  resources:
  - "GET"
  - "FETCH /a"
  - "GET a"
  - "GET /a/{}"
  - "GET /a/{rest*}/b"
  - "GET /a/../b"
  - "GET /a/{id"
  - "GET /a/{my-id}"
  authentication: { type: none }
"#;
    assert_eq!(
        errors(yaml),
        vec![
            error(
                5,
                5,
                "resource `GET` is not \"METHOD /path\"",
                RESOURCE_ALLOWED
            ),
            error(
                6,
                5,
                "resource `FETCH /a`: `FETCH` is not a supported method",
                RESOURCE_ALLOWED
            ),
            error(7, 5, "path `a` does not start with /", RESOURCE_ALLOWED),
            error(
                8,
                5,
                "path `/a/{}`: parameter `{}` needs a name of letters, digits or _",
                RESOURCE_ALLOWED
            ),
            error(
                9,
                5,
                "path `/a/{rest*}/b`: `{rest*}` must be the last segment",
                RESOURCE_ALLOWED
            ),
            error(10, 5, "path `/a/../b` has a dot segment", RESOURCE_ALLOWED),
            error(
                11,
                5,
                "path `/a/{id`: segment `{id` has characters a path cannot hold",
                RESOURCE_ALLOWED
            ),
            error(
                12,
                5,
                "path `/a/{my-id}`: parameter `{my-id}` needs a name of letters, digits or _",
                RESOURCE_ALLOWED
            ),
        ]
    );
}

#[test]
fn invalid_resource_template_in_a_scope() {
    refused(
        &format!(
            "{}{AUTH_SERVER_LAST}",
            r#"apis:
- name: A
  upstream: { echo: true }
  scopes:
  - name: View
    resources: ["GET /ok", "GET /{a*}/b"]
  authentication: { type: oauth2, auth_server: local }
"#
        ),
        error(
            6,
            28,
            "path `/{a*}/b`: `{a*}` must be the last segment",
            RESOURCE_ALLOWED,
        ),
    );
}

const TWICE: &str = "each METHOD + path once in `resources:` and not also in a scope";

#[test]
fn same_resource_twice_in_resources() {
    refused(
        r#"apis:
- name: A
  upstream: { echo: true }
  resources: ["GET /b", "POST /b", "GET /b"]
  authentication: { type: none }
"#,
        error(
            4,
            36,
            "resource `GET /b` is declared twice in this API",
            TWICE,
        ),
    );
}

#[test]
fn same_resource_in_a_scope_and_in_resources() {
    refused(
        &format!(
            "{}{AUTH_SERVER_LAST}",
            r#"apis:
- name: A
  upstream: { echo: true }
  scopes:
  - name: S
    resources: ["GET /a"]
  resources: ["GET /b", "GET /a"]
  authentication: { type: oauth2, auth_server: local }
"#
        ),
        error(
            7,
            25,
            "resource `GET /a` is declared twice in this API",
            TWICE,
        ),
    );
}

#[test]
fn same_pattern_with_another_parameter_name_is_the_same_resource() {
    refused(
        r#"apis:
- name: A
  upstream: { echo: true }
  resources: ["GET /a/{id}", "GET /a/{no}"]
  authentication: { type: none }
"#,
        error(
            4,
            30,
            "resource `GET /a/{no}` is declared twice in this API",
            TWICE,
        ),
    );
    // In two scopes, one resource belongs to both.
    let snap = loaded(&format!(
        "{}{AUTH_SERVER_LAST}",
        r#"apis:
- name: A
  upstream: { echo: true }
  scopes:
  - name: View
    resources: ["GET /a/{id}"]
  - name: Audit
    resources: ["GET /a/{no}"]
  authentication: { type: oauth2, auth_server: local }
"#
    ))
    .snapshot;
    assert_eq!(snap.apis[0].resources.len(), 1);
    assert_eq!(snap.apis[0].resources[0].api_scopes, vec![0, 1]);
}

#[test]
fn a_resource_may_belong_to_several_scopes() {
    let snap = loaded(&format!(
        "{}{AUTH_SERVER_LAST}",
        r#"apis:
- name: A
  upstream: { echo: true }
  scopes:
  - name: View
    resources: ["GET /a"]
  - name: Admin
    resources: ["GET /a", "DELETE /a"]
  authentication: { type: oauth2, auth_server: local }
"#
    ))
    .snapshot;
    let resources = &snap.apis[0].resources;
    assert_eq!(resources.len(), 2);
    assert_eq!(resources[0].api_scopes, vec![0, 1]);
    assert_eq!(resources[1].api_scopes, vec![1]);
}

// ------------------------------------------------------------ APIs

#[test]
fn two_apis_with_the_same_base_path() {
    refused(
        r#"apis:
- name: A
  base_path: /x
  upstream: { echo: true }
  authentication: { type: none }
- name: B
  base_path: /x/
  upstream: { echo: true }
  authentication: { type: none }
"#,
        error(
            7,
            14,
            "base path `/x` is used by two APIs",
            "a distinct base_path per API",
        ),
    );
}

#[test]
fn a_resource_under_a_nested_apis_base_path_is_refused() {
    // `/travels/admin/users` goes to API B (the longest base path), open
    // to anyone, while API A's file reads it as needing `admin`.
    let yaml = format!(
        r#"apis:
- name: A
  base_path: /travels
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: local }}
  scopes:
  - name: admin
    resources: ["GET /admin/users", "GET /bookings"]
  resources: ["GET /{{section}}/users"]
- name: B
  base_path: /travels/admin
  upstream: {{ echo: true }}
  authentication: {{ type: none }}
  resources: ["GET /users"]
{AUTH_SERVER_LAST}"#
    );
    let findings = Config::new(&yaml)
        .load(&Env::new())
        .expect_err("the file is refused");
    let found: Vec<(Severity, Found)> = findings.iter().map(|d| (d.severity, found(d))).collect();
    assert_eq!(
        found,
        vec![
            (
                Severity::Error,
                error(
                    8,
                    17,
                    "resource `GET /admin/users` of API `A` is never reached: its paths are under base path `/travels/admin` of API `B`, which answers them",
                    "a resource outside the base paths of the other APIs, or declared in the API that answers it",
                )
            ),
            (
                Severity::Warning,
                (
                    9,
                    15,
                    "resource `GET /{section}/users` of API `A`: its paths under base path `/travels/admin` are answered by API `B`, not by it".to_owned(),
                    None
                )
            ),
        ]
    );
    // Nested base paths whose resources stay apart are fine.
    let loaded = loaded(
        &yaml
            .replace("/admin/users", "/staff/users")
            .replace("{section}", "guides"),
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn two_apis_with_the_same_name_and_version() {
    refused(
        r#"apis:
- name: A
  version: "2.0"
  base_path: /x
  upstream: { echo: true }
  authentication: { type: none }
- name: A
  version: "2.0"
  base_path: /y
  upstream: { echo: true }
  authentication: { type: none }
"#,
        error(
            7,
            9,
            "API `A` version `2.0` is defined twice",
            "a distinct name + version per API",
        ),
    );
    // Another version of the same API is another API.
    loaded(
        r#"apis:
- name: A
  version: "1.0"
  base_path: /x
  upstream: { echo: true }
  authentication: { type: none }
- name: A
  version: "2.0"
  base_path: /y
  upstream: { echo: true }
  authentication: { type: none }
"#,
    );
}

const SHADOWING: &str = r#"authorization_server:
  signing_key: data/key.pem
apis:
- name: A
  base_path: /oauth2
  upstream: { echo: true }
  authentication: { type: none }
- name: B
  base_path: /invoke/pub.oauth
  upstream: { echo: true }
  authentication: { type: none }
- name: C
  base_path: /.well-known
  upstream: { echo: true }
  authentication: { type: none }
- name: D
  base_path: /
  upstream: { echo: true }
  authentication: { type: none }
"#;

#[test]
fn api_shadowing_the_authorization_server() {
    let allowed = "a base path outside /oauth2, /invoke and /.well-known";
    assert_eq!(
        errors(SHADOWING),
        vec![
            error(
                5,
                14,
                "base path `/oauth2` shadows `/oauth2`, where the authorization server answers",
                allowed
            ),
            error(
                9,
                14,
                "base path `/invoke/pub.oauth` shadows `/invoke`, where the authorization server answers",
                allowed
            ),
            error(
                13,
                14,
                "base path `/.well-known` shadows `/.well-known`, where the authorization server answers",
                allowed
            ),
            error(
                17,
                14,
                "base path `` shadows `/oauth2`, where the authorization server answers",
                allowed
            ),
        ]
    );
}

#[test]
fn those_base_paths_are_allowed_without_the_authorization_server() {
    let yaml = SHADOWING.replace("authorization_server:\n  signing_key: data/key.pem\n", "");
    assert_eq!(loaded(&yaml).snapshot.apis.len(), 4);
}

#[test]
fn base_path_with_a_parameter() {
    refused(
        "apis:\n- name: A\n  base_path: /a/{id}\n  upstream: { echo: true }\n",
        error(
            3,
            14,
            "base_path `/a/{id}` has a parameter",
            "a literal path such as /travels",
        ),
    );
}

// ------------------------------------------------------------ references

#[test]
fn undefined_auth_server_in_authentication() {
    refused(
        r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
  - id: corporate
    localIntrospectionConfig: { issuer: "https://idp.example" }
apis:
- name: A
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: nope }
"#,
        error(
            10,
            48,
            "auth server `nope` is not defined",
            "one of: corporate, local",
        ),
    );
}

#[test]
fn undefined_auth_server_in_scope_mappings() {
    refused(
        r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
scope_mappings:
- auth_server: nope
  scope: view
  api_scopes: ["A:View"]
apis:
- name: A
  upstream: { echo: true }
  scopes: [{ name: View, resources: ["GET /a"] }]
  authentication: { type: oauth2, auth_server: local }
"#,
        error(
            6,
            16,
            "scope mapping names auth server `nope`, which is not defined",
            "one of: local",
        ),
    );
}

#[test]
fn undefined_alias_in_outbound_auth() {
    refused(
        r#"security_settings:
  aliases:
  - { name: backend, type: basic, username: svc, password: secret }
apis:
- name: A
  upstream: { echo: true }
  policies:
    outbound_auth: { alias: nope }
  authentication: { type: none }
"#,
        error(8, 29, "alias `nope` is not defined", "one of: backend"),
    );
    // An alias refused for itself (an unset variable) is told of once, at
    // the alias, and not again where an API names it; a central whose
    // users are all refused likewise.
    assert_eq!(
        errors(
            r#"security_settings:
  aliases:
  - { name: backend, type: basic, username: svc, password: "${env:UNSET_BACKEND_PW}" }
apis:
- name: A
  upstream: { echo: true }
  policies:
    outbound_auth: { alias: backend }
  authentication: { type: none }
central:
  users:
  - { user: fleet, password: "${env:UNSET_FLEET_PW}" }
"#
        ),
        vec![
            error(
                3,
                60,
                "password: environment variable UNSET_BACKEND_PW is not set",
                SECRET_ALLOWED
            ),
            error(
                12,
                30,
                "password: environment variable UNSET_FLEET_PW is not set",
                SECRET_ALLOWED
            ),
        ]
    );
    // With no users written, the central is told it has none.
    assert_eq!(
        errors("central:\n  users: []\n"),
        vec![error(
            2,
            3,
            "central: has no users, so no microgateway could download from it",
            "at least one { user, password }"
        )]
    );
}

#[test]
fn outbound_auth_with_two_ways_to_authenticate_is_refused() {
    refused(
        r#"security_settings:
  aliases:
  - { name: backend, type: basic, username: svc, password: s3cret }
apis:
- name: A
  upstream: { url: "http://127.0.0.1:9/a" }
  authentication: { type: none }
  resources: ["GET /x"]
  policies:
    outbound_auth: { delegate: incoming_token, alias: backend }
"#,
        error(
            10,
            20,
            "outbound_auth names more than one way to authenticate",
            "one of: `alias`, { type: basic, username, password } or { delegate: incoming_token }",
        ),
    );
}

#[test]
fn undefined_api_scope_in_scope_mappings() {
    refused(
        r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
scope_mappings:
- auth_server: local
  scope: view
  api_scopes: ["A:View", "A:Nope"]
apis:
- name: A
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  scopes:
  - name: View
    resources: ["GET /a"]
"#,
        error(
            8,
            26,
            "api scope `A:Nope` is not declared by any API",
            "\"API name:scope name\", one of: A:View",
        ),
    );
}

const SCOPE_TOKEN_ALLOWED: &str =
    "one scope token: visible ASCII characters but `\"` and `\\`, no space (RFC 6749 §3.3)";

/// Scopes that are no scope token, as written in YAML and as an error
/// shows them.
const NO_SCOPE_TOKENS: [(&str, &str); 9] = [
    (r#""""#, ""),
    (r#""view book""#, "view book"),
    (r#"" view""#, " view"),
    (r#""say \"hi\"""#, "say \\\"hi\\\""),
    (r#""back\\slash""#, "back\\\\slash"),
    (r#""tab\there""#, "tab\\there"),
    (r#""nul\u0000""#, "nul\\0"),
    (r#""del\u007f""#, "del\\u{7f}"),
    (r#""café""#, "café"),
];

/// Every visible ASCII character but `"` and `\` may be in one.
const ODD_SCOPE_TOKEN: &str = r#""urn:x/y?a=b&c[1]~!#$%'()*+,-.;<>@^_`{|}""#;

fn no_scope_token(line: u64, column: u64, shown: &str) -> Found {
    error(
        line,
        column,
        &format!("scope `{shown}` is no scope token: no token can carry it"),
        SCOPE_TOKEN_ALLOWED,
    )
}

/// A mapped scope that is no RFC 6749 §3.3 scope token is carried by no
/// token, and the 403 challenge would offer it: refused where it is
/// written.
#[test]
fn a_mapped_scope_that_is_no_scope_token_is_refused() {
    let yaml = |scope: &str| {
        format!(
            "scope_mappings:\n- auth_server: local\n  scope: {scope}\n  api_scopes: [\"A:View\"]\napis:\n- name: A\n  upstream: {{ echo: true }}\n  authentication: {{ type: oauth2, auth_server: local }}\n  scopes:\n  - name: View\n    resources: [\"GET /a\"]\n{AUTH_SERVER_LAST}"
        )
    };
    for (written, shown) in NO_SCOPE_TOKENS {
        refused(&yaml(written), no_scope_token(3, 10, shown));
    }
    loaded(&yaml(ODD_SCOPE_TOKEN));
}

/// The local authorization server's scopes and its clients' are scope
/// tokens too: a client asks for scopes space-separated (RFC 6749 §3.3),
/// so no client could be granted any other. Refused where written.
#[test]
fn an_authorization_server_scope_that_is_no_scope_token_is_refused() {
    let declared = |scope: &str| format!("authorization_server:\n  scopes:\n  - name: {scope}\n");
    let client = |scope: &str| {
        format!(
            "authorization_server:\n  clients:\n  - client_id: app\n    client_secret: s0123456789abcdef\n    grant_types: [client_credentials]\n    scopes: [{scope}]\n"
        )
    };
    for (written, shown) in NO_SCOPE_TOKENS {
        refused(&declared(written), no_scope_token(3, 11, shown));
        refused(&client(written), no_scope_token(6, 14, shown));
    }
    loaded(&declared(ODD_SCOPE_TOKEN));
    loaded(&client(ODD_SCOPE_TOKEN));
}

/// An application's `api_scopes` may name a scope with a `:` in it, as
/// `scope_mappings` may: split where the API's name ends.
#[test]
fn an_applications_api_scope_may_hold_a_colon() {
    let loaded = loaded(
        r#"apis:
- name: Orders
  upstream: { echo: true }
  authentication: { type: api_key }
  scopes:
  - name: "orders:read"
    resources: ["GET /orders"]
  - name: "orders:write"
    resources: ["POST /orders"]
applications:
- name: Reader
  api_keys: [reader-key-long-enough]
  apis: [Orders]
  api_scopes: ["Orders:orders:read"]
"#,
    );
    let api = &loaded.snapshot.apis[0];
    assert_eq!(api.access[0].api_scopes, vec![0], "orders:read only");
}

// ------------------------------------------------------------ TLS and secrets

#[test]
fn https_without_tls() {
    refused(
        "ports:\n  https: 7749\n",
        error(
            2,
            10,
            "ports.https is set but there is no `tls:` section",
            "a `tls:` section with `certificate` and `key`, or no ports.https",
        ),
    );
}

#[test]
fn unreadable_certificate() {
    refused(
        "ports: { https: 7749 }\ntls:\n  certificate: /nonexistent/server.crt\n  key: /nonexistent/server.key\n",
        error(
            3,
            16,
            "cannot read /nonexistent/server.crt: No such file or directory (os error 2)",
            "a readable PEM file",
        ),
    );
}

#[test]
fn certificate_that_is_not_pem() {
    let config = Config::new("tls:\n  certificate: server.crt\n  key: server.key\n");
    config.file("server.crt", "not a certificate");
    config.file("server.key", "not a key");
    let findings = config.load(&Env::new()).expect_err("refused");
    let crt = config.dir.path().join("server.crt");
    assert_eq!(
        findings.iter().map(found).collect::<Vec<_>>(),
        vec![error(
            2,
            16,
            &format!("{} is not a PEM CERTIFICATE", crt.display()),
            "a PEM file"
        )]
    );
}

/// A CA bundle whose PEM blocks hold no certificate that parses would fail
/// every connection at run time: `check` refuses it.
#[test]
fn a_ca_bundle_with_no_usable_certificate_is_refused() {
    let config = Config::new(
        "apis:\n- name: a\n  base_path: /a\n  upstream: { url: \"https://up.example:8443/\", ca_bundle: ca.pem }\n  authentication: { type: none }\n  resources: [\"GET /x\"]\n",
    );
    config.file(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    let findings = config.load(&Env::new()).expect_err("refused");
    let ca = config.dir.path().join("ca.pem");
    assert_eq!(
        findings.iter().map(found).collect::<Vec<_>>(),
        vec![error(
            4,
            59,
            &format!("{} holds no usable CA certificate", ca.display()),
            "PEM certificates that parse"
        )]
    );
}

fn admin_password(secret: &str) -> String {
    format!("admin:\n  user: Administrator\n  password: \"{secret}\"\n")
}

#[test]
fn missing_env_secret() {
    refused(
        &admin_password("${env:NOPE}"),
        error(
            3,
            13,
            "admin.password: environment variable NOPE is not set",
            SECRET_ALLOWED,
        ),
    );
}

#[test]
fn missing_file_secret() {
    refused(
        &admin_password("${file:/nonexistent/secret}"),
        error(
            3,
            13,
            "admin.password: cannot read secret file /nonexistent/secret: No such file or directory (os error 2)",
            SECRET_ALLOWED,
        ),
    );
}

#[test]
fn masked_secret() {
    refused(
        &admin_password("****"),
        error(
            3,
            13,
            "admin.password: the secret is masked (****); supply the real value",
            SECRET_ALLOWED,
        ),
    );
    refused(
        r#"security_settings:
  auth_servers:
  - id: remote
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://localhost:4485/invoke/pub.oauth/introspectToken"
      clientId: introspection-client
      clientSecret: "********"
"#,
        error(
            7,
            21,
            "clientSecret: the secret is masked (****); supply the real value",
            SECRET_ALLOWED,
        ),
    );
}

/// RFC 6750 §2.1: a bearer token is a `b64token`. One with a space or a
/// byte outside ASCII passed `check` and reached the upstream as another
/// token; the error says what and where, never the token.
#[test]
fn a_bearer_alias_whose_token_is_no_b64token_is_refused() {
    let yaml = r#"security_settings:
  aliases:
  - { name: spaced, type: bearer, token: "abc def-secret" }
  - { name: accented, type: bearer, token: "tok\u00e9n-secret" }
  - { name: padded-early, type: bearer, token: "ab=cd-secret" }
  - { name: comma, type: bearer, token: "ab,cd-secret" }
  - { name: from-env, type: bearer, token: "${env:BACKEND_TOKEN}" }
  - { name: only-padding, type: bearer, token: "==" }
  - { name: fine, type: bearer, token: "aZ09-._~+/tail==" }
"#;
    let allowed = "an RFC 6750 token: letters, digits, - . _ ~ + /, then only = (as padding)";
    let bad = |line, column, alias: &str, what: &str, at: usize| {
        error(
            line,
            column,
            &format!("alias `{alias}`: the bearer token has {what} at character {at}"),
            allowed,
        )
    };
    let findings = Config::new(yaml)
        .load(&env(&[("BACKEND_TOKEN", "secret\tfrom-env")]))
        .expect_err("refused");
    let found: Vec<Found> = findings
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(found)
        .collect();
    assert_eq!(
        found,
        vec![
            bad(3, 42, "spaced", "a space", 4),
            bad(4, 44, "accented", "a character outside ASCII", 4),
            bad(5, 48, "padded-early", "`=` (padding) before its end", 3),
            bad(
                6,
                41,
                "comma",
                "a punctuation mark other than - . _ ~ + /",
                3
            ),
            bad(
                7,
                44,
                "from-env",
                "a control character (a line break or tab, say)",
                7
            ),
            bad(
                8,
                48,
                "only-padding",
                "`=` (padding) with nothing before it",
                1
            ),
        ]
    );
    for finding in findings.iter() {
        let text = finding.to_string();
        assert!(!text.contains("secret"), "the token is shown: {text}");
    }
}

#[test]
fn secrets_in_every_form() {
    let config = Config::new(
        r#"security_settings:
  aliases:
  - { name: encoded, username: u, password: "{encoded}bWFuYWdl" }
  - { name: from-env, username: u, password: "${env:BACKEND_PASSWORD}" }
  - { name: from-file, username: u, password: "${file:secrets/backend}" }
  - { name: clear, username: u, password: "plain" }
"#,
    );
    let secret_file = config.file("secrets/backend", "from-a-file\n");
    let loaded = config
        .load(&env(&[("BACKEND_PASSWORD", "from-the-env")]))
        .expect("valid");
    let snap = loaded.snapshot;
    let password = |name: &str| match &snap.aliases[name] {
        microgateway::config::snapshot::Alias::Basic { password, .. } => {
            password.expose().to_owned()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(password("encoded"), "manage");
    assert_eq!(password("from-env"), "from-the-env");
    assert_eq!(password("from-file"), "from-a-file");
    assert_eq!(password("clear"), "plain");
    // A `${file:}` secret is watched like the configuration itself.
    assert!(snap.files.contains(&secret_file), "{:?}", snap.files);
}

/// A plain scalar is taken as written: read as a number first, `0042`
/// would be `42` and `1.0` would be `1`.
#[test]
fn unquoted_secrets_and_versions_that_look_like_numbers_keep_their_text() {
    let config = Config::new(
        r#"security_settings:
  aliases:
  - { name: zeros, username: 0012, password: 00000042 }
  - { name: float, username: u, password: 1.0 }
  - { name: exponent, username: u, password: 1e3 }
  - { name: hex, username: u, password: 0x1F }
  - { name: long, username: u, password: 123456789012345678901234567890 }
  - { name: flag, username: u, password: True }
apis:
- name: Numbered
  version: 1.0
  upstream: { url: "http://127.0.0.1:9/x" }
  authentication: { type: none }
"#,
    );
    let snap = config.load(&Env::default()).expect("valid").snapshot;
    let basic = |name: &str| match &snap.aliases[name] {
        microgateway::config::snapshot::Alias::Basic {
            username, password, ..
        } => (username.clone(), password.expose().to_owned()),
        other => panic!("{other:?}"),
    };
    assert_eq!(basic("zeros"), ("0012".to_owned(), "00000042".to_owned()));
    assert_eq!(basic("float").1, "1.0");
    assert_eq!(basic("exponent").1, "1e3");
    assert_eq!(basic("hex").1, "0x1F");
    assert_eq!(basic("long").1, "123456789012345678901234567890");
    assert_eq!(basic("flag").1, "True");
    let api = snap.apis.first().expect("one API");
    assert_eq!(api.version, "1.0");
}

#[test]
fn a_mistyped_secret_reference_is_refused_not_taken_as_the_secret() {
    // Each would resolve, written right; `${request.…}` in a template is
    // no secret.
    let findings = Config::new(
        r#"admin:
  user: Administrator
  password: "${env:ADMIN_PW"
security_settings:
  aliases:
  - { name: upper, username: u, password: "${ENV:ADMIN_PW}" }
  - { name: lead, username: u, password: " ${env:ADMIN_PW}" }
  - { name: trail, username: u, password: "${env:ADMIN_PW} " }
  - { name: vault, username: u, password: "${vault:x}" }
  - { name: no-file, username: u, password: "${file:}" }
  - { name: two, username: u, password: "${env:ADMIN_PW}${env:ADMIN_PW}" }
  - { name: good, username: u, password: "${env:ADMIN_PW}" }
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485", audience: travels }
apis:
- name: A
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  resources: ["GET /a"]
  policies:
    request_transformation:
      set_headers: { X-Client-Id: "${request.authorization.clientId}" }
"#,
    )
    .load(&env(&[("ADMIN_PW", "s3cret")]))
    .expect_err("mistyped references are refused");
    let found: Vec<Found> = findings.iter().map(found).collect();
    let mistyped = |line, column, key: &str| {
        error(
            line,
            column,
            &format!("{key}: {MISTYPED_REFERENCE}"),
            SECRET_ALLOWED,
        )
    };
    assert_eq!(
        found,
        vec![
            mistyped(3, 13, "admin.password"),
            mistyped(6, 43, "password"),
            mistyped(7, 42, "password"),
            mistyped(8, 43, "password"),
            mistyped(9, 43, "password"),
            mistyped(10, 45, "password"),
            mistyped(11, 41, "password"),
        ]
    );
}

// ------------------------------------------------------------ authorization server

#[test]
fn duplicate_client_id() {
    refused(
        r#"authorization_server:
  clients:
  - client_id: app
    client_secret: s1
    grant_types: [client_credentials]
  - client_id: app
    client_secret: s2
    grant_types: [client_credentials]
"#,
        error(
            6,
            16,
            "client_id `app` is defined twice",
            "unique client ids",
        ),
    );
}

/// RFC 8414 §2: the issuer (every token's `iss`, the metadata's base) is
/// an absolute https URL with a host and no query or fragment.
#[test]
fn an_issuer_that_is_no_absolute_url_is_refused() {
    const ALLOWED: &str = "an absolute https:// URL with a host and no query or fragment, such as https://auth.example.com (RFC 8414 §2)";
    for (written, shown, problem) in [
        (r#""""#, "", "is empty"),
        (r#""   ""#, "   ", "is empty"),
        (r#""/""#, "/", "is not an absolute http(s) URL"),
        (
            r#""localhost:19300""#,
            "localhost:19300",
            "is not an absolute http(s) URL",
        ),
        (
            r#""https://a.example/?x=1#f""#,
            "https://a.example/?x=1#f",
            "has a fragment",
        ),
        (
            r#""https://a.example/?x=1""#,
            "https://a.example/?x=1",
            "has a query",
        ),
        (
            r#""ftp://x y""#,
            "ftp://x y",
            "contains whitespace or a control character",
        ),
        (
            r#""https://a.example\t""#,
            "https://a.example\\t",
            "contains whitespace or a control character",
        ),
    ] {
        refused(
            &format!("authorization_server:\n  issuer: {written}\n"),
            error(
                2,
                11,
                &format!("authorization_server.issuer `{shown}` {problem}: it is every token's `iss` and the base of the metadata's URLs"),
                ALLOWED,
            ),
        );
    }
}

/// Plain http to a host that is not loopback is what a gateway behind a
/// proxy that terminates TLS may be called: warned about, not refused.
#[test]
fn an_http_issuer_not_on_loopback_is_warned_about() {
    let warnings = |issuer: &str| -> Vec<Found> {
        loaded(&format!("authorization_server:\n  issuer: \"{issuer}\"\n"))
            .warnings
            .iter()
            .map(found)
            .collect()
    };
    assert_eq!(
        warnings("http://auth.example/"),
        vec![(
            2,
            11,
            "authorization_server.issuer `http://auth.example/` is http on a host that is not loopback: \
             RFC 8414 §2 asks for https, and clients follow the metadata's http:// endpoints \
             with their credentials (right only where a proxy in front terminates TLS under this name)"
                .to_owned(),
            None
        )]
    );
    for quiet in [
        "https://auth.example",
        "http://localhost:4485",
        "http://127.0.0.1:9",
        "http://[::1]:4485",
    ] {
        assert_eq!(warnings(quiet), vec![], "{quiet}");
    }
}

/// An issuer with a path names endpoints under it the gateway does not
/// serve there (RFC 8414 §3): warned about, since a proxy in front that
/// strips the path makes it right.
#[test]
fn an_issuer_with_a_path_is_warned_about() {
    let warnings = |issuer: &str| {
        warning_messages(&format!("authorization_server:\n  issuer: \"{issuer}\"\n"))
    };
    assert_eq!(
        warnings("https://auth.example/auth/"),
        vec![
            "authorization_server.issuer `https://auth.example/auth/` has a path (`/auth`): the \
             metadata names its endpoints under it, but this gateway serves them at the root \
             (/oauth2/…, /.well-known/oauth-authorization-server), and the approval page's \
             session cookie is sent there alone; right only where a proxy in front strips \
             `/auth`, and clients find the metadata at the root"
                .to_owned()
        ]
    );
    for quiet in [
        "https://auth.example",
        "https://auth.example/",
        "https://auth.example:8443",
    ] {
        assert_eq!(warnings(quiet), Vec::<String>::new(), "{quiet}");
    }
}

/// Opaque tokens introspected for an API with no `audience` to judge are
/// warned about as JWTs are: an active token made for another resource
/// server would be accepted.
#[test]
fn remote_introspection_without_an_audience_is_warned_about() {
    let yaml = |audience: &str| {
        format!(
            "security_settings:\n  auth_servers:\n  - id: corp\n    name: corp\n    remoteIntrospectionConfig:\n      introspectionEndpoint: \"https://idp.example/introspect\"\n      clientId: gw\n      clientSecret: gw-secret-long-enough\n{audience}apis:\n- name: Shop\n  base_path: /shop\n  upstream: {{ echo: true }}\n  authentication: {{ type: oauth2, auth_server: corp }}\n  resources: [\"GET /status\"]\n"
        )
    };
    assert_eq!(
        warning_messages(&yaml("")),
        vec!["auth server `corp` introspects tokens for API `Shop` without an `audience`: an active token its issuer made for another resource server is accepted (RFC 7662 §4: the resource server judges `aud`); set remoteIntrospectionConfig.audience".to_owned()]
    );
    assert_eq!(
        warning_messages(&yaml("      audience: shop-api\n")),
        Vec::<String>::new()
    );
}

/// An application identified by its tokens alone has api_scopes that
/// grant nothing (a token is judged by its own scopes): warned about.
#[test]
fn api_scopes_of_an_application_known_by_tokens_alone_are_warned_about() {
    let yaml = |credential: &str| {
        format!(
            "applications:\n- name: C app\n  client_ids: [c]\n{credential}  api_scopes: [\"Shop:Read\"]\napis:\n- name: Shop\n  base_path: /shop\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  scopes:\n  - {{ name: Read, resources: [\"GET /items\"] }}\n"
        )
    };
    let warned = |text: &str| {
        loaded(text).warnings.iter().any(|d| {
            d.message
                .contains("has api_scopes but no API key, Basic user or certificate")
        })
    };
    assert!(warned(&yaml("")));
    assert!(!warned(&yaml("  api_keys: [c-app-key-long-enough-1234]\n")));
}

/// A denied range inside `trusted_proxies` does not hold: its clients are
/// judged by the X-Forwarded-For they send. Warned about.
#[test]
fn a_denied_range_of_trusted_proxies_is_warned_about() {
    let yaml = |deny: &str| {
        format!(
            "trusted_proxies: [\"127.0.0.0/8\"]\napis:\n- name: Internal\n  base_path: /internal\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  ip_filter: {{ deny: [\"{deny}\"] }}\n  resources: [\"GET /x\"]\n"
        )
    };
    assert_eq!(
        warning_messages(&yaml("127.0.0.0/30")),
        vec!["ip_filter.deny `127.0.0.0/30` overlaps trusted_proxies `127.0.0.0/8`: a client there is judged by the X-Forwarded-For it sends, so the deny does not hold for it".to_owned()]
    );
    assert_eq!(warning_messages(&yaml("10.9.0.0/16")), Vec::<String>::new());
}

/// A token scope a mapping sends to one API also grants the same-named
/// scope of an API no mapping names (the literal reading): warned about
/// where that scope is named, since the mapping said nothing of it.
#[test]
fn a_mapped_token_scope_that_also_grants_another_apis_scope_by_name_is_warned_about() {
    let yaml = r#"security_settings:
  auth_servers:
  - id: local
    name: local
    localIntrospectionConfig: { issuer: "https://idp.example", audience: gw }
scope_mappings:
- { auth_server: local, scope: read, api_scopes: ["Shop:Read"] }
apis:
- name: Shop
  base_path: /shop
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  scopes:
  - { name: Read, resources: ["GET /items"] }
- name: Payroll
  base_path: /payroll
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  scopes:
  - { name: read, resources: ["GET /salaries"] }
  - { name: admin, resources: ["POST /salaries"] }
"#;
    let warnings: Vec<Found> = loaded(yaml).warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            20,
            13,
            "token scope `read` of auth server `local` is mapped to Shop:Read, and also grants scope `read` of API `Payroll` by its name (no mapping names the API): map `Payroll:read` explicitly, or rename the scope".to_owned(),
            None
        )]
    );
}

/// A client id no client can send is refused where it is written.
#[test]
fn a_client_id_no_client_can_send_is_refused() {
    const ALLOWED: &str = "a client id of visible characters, such as bookyourticket";
    for (written, shown, problem) in [
        (r#""""#, "", "is empty"),
        (r#""  ""#, "  ", "is empty"),
        (r#"" app""#, " app", "starts or ends with whitespace"),
        (r#""app ""#, "app ", "starts or ends with whitespace"),
        (r#""a\u0001p""#, "a\\u{1}p", "contains a control character"),
        (r#""app\n""#, "app\\n", "contains a control character"),
    ] {
        refused(
            &format!(
                "authorization_server:\n  clients:\n  - client_id: {written}\n    client_secret: s0123456789abcdef\n    grant_types: [client_credentials]\n"
            ),
            error(
                3,
                16,
                &format!("client_id `{shown}` {problem}: no client could authenticate as it"),
                ALLOWED,
            ),
        );
    }
}

#[test]
fn public_client_with_client_credentials() {
    refused(
        r#"authorization_server:
  clients:
  - client_id: spa
    grant_types: [password, client_credentials]
"#,
        error(
            4,
            29,
            "public client `spa` (no client_secret) cannot use client_credentials",
            "a client_secret, or no client_credentials grant",
        ),
    );
}

#[test]
fn browser_grants_without_redirect_uris() {
    assert_eq!(
        errors(
            r#"authorization_server:
  clients:
  - client_id: web
    client_secret: s
    grant_types: [authorization_code]
  - client_id: legacy
    client_secret: s
    grant_types: [refresh_token, implicit]
"#
        ),
        vec![
            error(
                5,
                19,
                "client `web` uses authorization_code without redirect_uris",
                "at least one redirect URI"
            ),
            error(
                8,
                34,
                "client `legacy` uses implicit without redirect_uris",
                "at least one redirect URI"
            ),
        ]
    );
}

/// RFC 9700 §2.1.2: the implicit grant is not to be used. It is in the
/// contract, so it keeps working; the client is warned about.
#[test]
fn a_client_with_the_implicit_grant_is_warned_about() {
    let loaded = loaded(
        r#"authorization_server:
  clients:
  - client_id: legacy
    client_secret: legacy-secret-0123456789
    grant_types: [authorization_code, implicit]
    redirect_uris: ["https://app.example/cb"]
"#,
    );
    let warnings: Vec<Found> = loaded.warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            5,
            39,
            "client `legacy` uses the implicit grant, which RFC 9700 §2.1.2 says not to use: \
             its access token travels in the redirect URI's fragment, where browser history, \
             referrers and injected scripts see it, and nothing binds it to the client; \
             authorization_code with PKCE does the same job"
                .to_owned(),
            None,
        )]
    );
}

/// RFC 6749 §10.10: a client secret must not be guessable; one under 16
/// characters is warned about, wherever it comes from.
#[test]
fn a_short_client_secret_is_warned_about() {
    let loaded = loaded_with(
        r#"authorization_server:
  clients:
  - client_id: short
    client_secret: "${env:SHORT_SECRET}"
    grant_types: [client_credentials]
  - client_id: long
    client_secret: sixteen-chars-ok
    grant_types: [client_credentials]
"#,
        &Env::from([("SHORT_SECRET".to_owned(), "fifteen-chars-x".to_owned())]),
    );
    let warnings: Vec<Found> = loaded.warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            4,
            20,
            "client_secret of client `short` has 15 characters: a secret this short can be \
             guessed by trying candidates at the token endpoint (RFC 6749 §10.10); use at \
             least 16 random characters (e.g. `openssl rand -base64 24`)"
                .to_owned(),
            None,
        )]
    );
}

/// The admin password (checked on the admin port and, for the token
/// removal, on the API ports) is warned about when short and another host
/// can try it; a central user's always (a download hands out every secret
/// of the fleet).
#[test]
fn short_admin_and_central_passwords_are_warned_about() {
    let admin = |bind: &str| {
        let loaded = loaded(&format!(
            "ports: {{ http: 4485, bind: {bind} }}\nadmin: {{ port: 9485, user: ops, password: manage }}\n"
        ));
        loaded.warnings.iter().map(found).collect::<Vec<Found>>()
    };
    assert_eq!(admin("127.0.0.1"), vec![]);
    assert_eq!(
        admin("0.0.0.0"),
        vec![(
            2,
            43,
            "admin.password has 6 characters: a secret this short can be guessed by trying \
             candidates from the other hosts that reach the gateway's ports; use at least 16 \
             random characters (e.g. `openssl rand -base64 24`)"
                .to_owned(),
            None,
        )]
    );
    let central = loaded(
        "central:\n  users:\n  - { user: fleet, password: fleet-pass }\n  - { user: other, password: a-long-enough-secret }\n",
    );
    let warnings: Vec<Found> = central.warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            3,
            30,
            "the password of central user `fleet` has 10 characters: a secret this short can \
             be guessed by trying candidates at the central's download, which hands out every \
             secret of the fleet; use at least 16 random characters (e.g. `openssl rand -base64 \
             24`)"
                .to_owned(),
            None,
        )]
    );
}

/// A password is checked with its hash's own parameters, and every wrong
/// password pays them (an unknown user's too): a hash that asks for more
/// than a check may cost is refused, for Basic users and the
/// authorization server's users alike; what `hash-password` makes is taken.
#[test]
fn a_password_hash_that_costs_too_much_is_refused() {
    const TAIL: &str = "$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let made = {
        use argon2::PasswordHasher;
        argon2::Argon2::default()
            .hash_password(b"a password")
            .expect("hash")
            .to_string()
    };
    let yaml = format!(
        r#"applications:
- name: Batch
  basic_users:
  - {{ username: batch, password_hash: "$argon2id$v=19$m=8,t=2000000,p=1{TAIL}" }}
  - {{ username: nightly, password_hash: "{made}" }}
authorization_server:
  users:
  - {{ username: alice, password_hash: "$argon2id$v=19$m=4194304,t=1,p=1{TAIL}" }}
  - {{ username: bob, password_hash: "{made}" }}
"#
    );
    let allowed = "an Argon2 PHC string `$argon2id$v=19$m=…,t=…,p=…$salt$hash` \
         (`microgateway hash-password` makes m=19456,t=2,p=1) with m ≤ 262144 (KiB: 256 MiB), \
         t ≤ 10, p ≤ 8 and m·t ≤ 1048576";
    let costly = |line, column, params| {
        error(
            line,
            column,
            &format!(
                "password_hash asks for {params}: more than one password check may cost (every \
                 wrong password, and every unknown user, pays it)"
            ),
            allowed,
        )
    };
    assert_eq!(
        errors(&yaml),
        vec![
            costly(4, 39, "m=8, t=2000000, p=1"),
            costly(8, 39, "m=4194304, t=1, p=1"),
        ]
    );
}

/// An application's name goes to upstreams as a header value
/// (`${request.application.name}`): one with a line break refused every
/// request of the application (401 `invalid_token`, though it sent no
/// token), one padded with spaces reached the upstream as another name.
#[test]
fn an_application_name_that_is_no_header_text_is_refused() {
    let yaml = "applications:\n- name: \"Line\\nbreak\"\n  api_keys: [line-break-key-long]\n- name: \" Padded\"\n  api_keys: [padded-key-long-enough]\n- name: \"Trailing \"\n  api_keys: [trailing-key-long-enough]\n- name: \"Tab\\there\"\n  api_keys: [tab-key-long-enough-too]\n- name: \"Partner portal\"\n  api_keys: [partner-key-long-enough]\n";
    let allowed = "a name without control characters, neither beginning nor ending with whitespace, such as `Partner portal`";
    let control = |line, name: &str| {
        error(
            line,
            9,
            &format!("application name `{name}` contains a control character, which a name passed to an upstream (`${{request.application.name}}`) may not hold: a line break would refuse every request of the application"),
            allowed,
        )
    };
    let padded = |line, name: &str| {
        error(
            line,
            9,
            &format!("application name `{name}` begins or ends with whitespace: an upstream given `${{request.application.name}}` would read it stripped, as another name"),
            allowed,
        )
    };
    assert_eq!(
        errors(yaml),
        vec![
            control(2, "Line\\nbreak"),
            padded(4, " Padded"),
            padded(6, "Trailing "),
            control(8, "Tab\\there"),
        ]
    );
}

/// An empty application name tells no application apart (metrics, logs,
/// `${request.application.name}`): refused. One beyond ASCII reaches an
/// upstream as bytes it may read otherwise: warned about.
#[test]
fn an_empty_application_name_is_refused_and_one_beyond_ascii_warned_about() {
    assert_eq!(
        errors("applications:\n- name: \"\"\n  api_keys: [empty-name-key-long-enough]\n"),
        vec![error(
            2,
            9,
            "application name `` is empty: metrics, logs and `${request.application.name}` would not tell the application apart",
            "a name without control characters, neither beginning nor ending with whitespace, such as `Partner portal`",
        )]
    );
    let loaded =
        loaded("applications:\n- name: Café portal\n  api_keys: [cafe-portal-key-long-enough]\n");
    let warnings: Vec<Found> = loaded.warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            2,
            9,
            "application name `Café portal` is not ASCII: an upstream given `${request.application.name}` receives its UTF-8 bytes, which HTTP leaves to the recipient to read (RFC 9110 §5.5; many read them as Latin-1)".to_owned(),
            None,
        )]
    );
}

/// An application's subscription or API scope that reads as two APIs
/// (a name holding a `:`) is refused, as a scope mapping's is: granting
/// both would let the application call what it may not have been meant to.
#[test]
fn an_application_entry_that_reads_as_two_apis_is_refused() {
    let yaml = r#"apis:
- name: Shop
  version: Admin
  base_path: /shop
  upstream: { echo: true }
  authentication: { type: none }
  scopes:
  - { name: "Admin:Read", resources: ["GET /admin"] }
  - { name: Read, resources: ["GET /read"] }
- name: "Shop:Admin"
  base_path: /shopadmin
  upstream: { echo: true }
  authentication: { type: none }
  scopes:
  - { name: Read, resources: ["GET /items"] }
applications:
- name: Reader
  api_keys: [reader-key-0123456789abc]
  apis: ["Shop:Admin"]
  api_scopes: ["Shop:Admin:Read"]
"#;
    assert_eq!(
        errors(yaml),
        vec![
            error(
                19,
                10,
                "application subscribes to `Shop:Admin`, which reads as API `Shop:Admin`, API `Shop`",
                "an API name (or name:version) that reads one way: rename the API",
            ),
            error(
                20,
                16,
                "api scope `Shop:Admin:Read` reads as scope `Admin:Read` of API `Shop`, scope `Read` of API `Shop:Admin`",
                "an \"API name:scope name\" that reads one way: rename the API or the scope",
            ),
        ]
    );
}

/// An API key is a whole credential, guessed at any API that takes keys
/// without being locked out: one under 16 characters is warned about as a
/// client secret is, the key itself not shown.
#[test]
fn a_short_api_key_is_warned_about() {
    let loaded = loaded_with(
        r#"applications:
- name: Kiosk
  api_keys: ["7", "${env:KIOSK_KEY}", "sixteen-chars-ok"]
"#,
        &Env::from([("KIOSK_KEY".to_owned(), "fifteen-chars-x".to_owned())]),
    );
    let warnings: Vec<Found> = loaded.warnings.iter().map(found).collect();
    let short = |column, chars| {
        (
            3,
            column,
            format!(
                "an API key of application `Kiosk` has {chars} characters: a secret this short \
                 can be guessed by trying candidates at the APIs that take API keys (a wrong \
                 key is not locked out); use at least 16 random characters (e.g. `openssl rand \
                 -base64 24`)"
            ),
            None,
        )
    };
    assert_eq!(warnings, vec![short(14, 1), short(19, 15)]);
    assert!(
        !warnings
            .iter()
            .any(|(.., message, _)| message.contains("fifteen")),
        "a warning shows the key: {warnings:?}"
    );
}

/// The local authorization server is turned on by its section in the
/// file: a variable of that section (as a container image or a platform
/// sets for every configuration it runs) changes it where the file has it
/// and is warned about and ignored where it has not, instead of opening
/// OAuth endpoints, writing a key and a database nobody asked for.
#[test]
fn authorization_server_variables_never_turn_the_server_on() {
    let variables = env(&[
        (
            "MCGW_AUTHORIZATION_SERVER_SIGNING_KEY",
            "/var/lib/microgateway/signing-key.pem",
        ),
        (
            "MCGW_AUTHORIZATION_SERVER_STORE",
            "sqlite:/var/lib/microgateway/oauth.db",
        ),
    ]);
    let without = loaded_with("ports: { http: 0 }\n", &variables);
    assert!(without.snapshot.authorization_server.is_none());
    let warned: Vec<String> = without.warnings.iter().map(|w| w.to_string()).collect();
    for variable in [
        "MCGW_AUTHORIZATION_SERVER_SIGNING_KEY",
        "MCGW_AUTHORIZATION_SERVER_STORE",
    ] {
        assert!(
            warned.iter().any(|w| w.starts_with(&format!("{variable}: warning: sets a setting of `authorization_server:`, which this configuration does not have"))),
            "{warned:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let with = loaded_with(
        "authorization_server: { token_format: opaque }\n",
        &env(&[
            (
                "MCGW_AUTHORIZATION_SERVER_SIGNING_KEY",
                key.to_str().unwrap(),
            ),
            ("MCGW_AUTHORIZATION_SERVER_CLEANUP_INTERVAL", "120"),
        ]),
    );
    let authz = with.snapshot.authorization_server.as_ref().expect("authz");
    assert_eq!(authz.signing_key_path, key);
    assert_eq!(authz.cleanup_interval, Some(Duration::from_secs(120)));
    assert!(with
        .warnings
        .iter()
        .all(|w| !w.to_string().contains("does not have")));
}

#[test]
fn non_loopback_http_redirect_uri() {
    refused(
        r#"authorization_server:
  clients:
  - client_id: web
    client_secret: s
    grant_types: [authorization_code]
    redirect_uris: ["http://127.0.0.1:8000/cb", "http://localhost/cb", "https://app.example/cb", "http://app.example/cb"]
"#,
        error(
            6,
            98,
            "redirect URI `http://app.example/cb` uses http on a non-loopback host",
            "https://…, or http:// on localhost, 127.0.0.1 or [::1]",
        ),
    );
}

#[test]
fn never_expiring_jwt() {
    let yaml = r#"authorization_server:
  token_format: jwt
  clients:
  - client_id: app
    client_secret: s
    grant_types: [client_credentials]
    token_lifetime: -1
"#;
    refused(
        yaml,
        error(
            7,
            21,
            "token_lifetime -1 (never expires) with token_format jwt",
            "a positive lifetime for JWTs, or token_format: opaque",
        ),
    );
    loaded(&yaml.replace("token_format: jwt", "token_format: opaque"));
}

/// RFC 6749 §4.1.2: an authorization code lives at most 10 minutes; one
/// that lives no whole second could never be redeemed.
#[test]
fn authorization_code_lifetime_is_1s_to_600s() {
    for value in ["0", "0s", "500ms", "601s", "11m", "1h"] {
        refused(
            &format!("authorization_server:\n  authorization_code_lifetime: {value}\n"),
            error(
                2,
                32,
                &format!("authorization_code_lifetime: `{value}` is not between 1s and 600s"),
                "a duration from 1s to 600s (RFC 6749 §4.1.2: at most 10 minutes)",
            ),
        );
    }
    for (value, secs) in [("1s", 1), ("600s", 600), ("10m", 600), ("90", 90)] {
        let yaml = format!("authorization_server:\n  authorization_code_lifetime: {value}\n");
        let snap = loaded(&yaml).snapshot;
        let authz = snap.authorization_server.as_ref().expect("authz");
        assert_eq!(authz.authorization_code_lifetime, Duration::from_secs(secs));
    }
}

/// A token lifetime of no whole second would issue tokens already expired.
#[test]
fn token_lifetime_of_less_than_a_second_is_refused() {
    for value in ["0", "0s", "500ms"] {
        refused(
            &format!("authorization_server:\n  token_lifetime: {value}\n"),
            error(
                2,
                19,
                &format!("token_lifetime: `{value}` is not valid"),
                "seconds (e.g. 3600), a duration (\"1h\"), or -1 for never (opaque only)",
            ),
        );
    }
    loaded("authorization_server:\n  token_lifetime: 1s\n");
}

/// A token lifetime is at most 365d, as every duration: the server's, a
/// client's or one from the environment past that (`18446744073709551615`
/// seconds overflowed the refresh lifetime that must outlive it, and
/// `check` panicked) is refused, naming where it was written.
#[test]
fn token_lifetimes_over_a_year_are_refused() {
    const MAX: &str = "18446744073709551615";
    const ALLOWED: &str = "from 1s to 365d, or -1 for never (opaque only)";
    let message = format!("token_lifetime: `{MAX}` is longer than 365d");
    refused(
        &format!("authorization_server:\n  token_lifetime: {MAX}\n"),
        error(2, 19, &message, ALLOWED),
    );
    refused(
        &format!("authorization_server:\n  refresh_token_lifetime: 30d\n  token_lifetime: {MAX}\n"),
        error(3, 19, &message, ALLOWED),
    );
    refused(
        &format!(
            "authorization_server:\n  token_format: opaque\n  clients:\n  - client_id: app\n    \
             client_secret: s1\n    grant_types: [client_credentials]\n    token_lifetime: {MAX}\n"
        ),
        error(7, 21, &message, ALLOWED),
    );
    let findings = Config::new("authorization_server: {}\n")
        .load(&env(&[("MCGW_AUTHORIZATION_SERVER_TOKEN_LIFETIME", MAX)]))
        .expect_err("refused");
    assert_eq!(
        findings.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        [format!(
            "MCGW_AUTHORIZATION_SERVER_TOKEN_LIFETIME: error: {message}; allowed: {ALLOWED}"
        )]
    );
    let snap = loaded("authorization_server: { token_lifetime: 365d }\n").snapshot;
    let authz = snap.authorization_server.as_ref().expect("authz");
    assert_eq!(
        authz.refresh_token_lifetime,
        Duration::from_secs(365 * 86_400 + 1)
    );
}

/// A refresh token family lives 30 days by default; a lifetime under a
/// minute, or no longer than the access tokens', is refused.
#[test]
fn refresh_token_lifetime_is_at_least_a_minute_and_longer_than_token_lifetime() {
    for value in ["0", "59s", "1h"] {
        refused(
            &format!("authorization_server:\n  refresh_token_lifetime: {value}\n"),
            error(
                2,
                27,
                &format!(
                    "refresh_token_lifetime: `{value}` is shorter than a minute or than token_lifetime"
                ),
                "a duration of at least 1m and longer than token_lifetime, up to 365d",
            ),
        );
    }
    let lifetime = |yaml: &str| {
        let snap = loaded(yaml).snapshot;
        let authz = snap.authorization_server.as_ref().expect("authz");
        authz.refresh_token_lifetime
    };
    assert_eq!(
        lifetime("authorization_server: {}\n"),
        Duration::from_secs(30 * 86_400)
    );
    assert_eq!(
        lifetime("authorization_server: { refresh_token_lifetime: 3601 }\n"),
        Duration::from_secs(3601)
    );
    assert_eq!(
        lifetime("authorization_server: { token_lifetime: 30, refresh_token_lifetime: 1m }\n"),
        Duration::from_secs(60)
    );
    // Not written, refresh tokens outlive the longest access token.
    assert_eq!(
        lifetime("authorization_server: { token_lifetime: 60d }\n"),
        Duration::from_secs(60 * 86_400 + 1)
    );
    let client = "  clients:\n  - client_id: app\n    client_secret: s1\n    grant_types: [client_credentials]\n    token_lifetime: 90d\n";
    assert_eq!(
        lifetime(&format!("authorization_server:\n{client}")),
        Duration::from_secs(90 * 86_400 + 1)
    );
    let config = Config::new(&format!(
        "authorization_server:\n  refresh_token_lifetime: 30d\n{client}"
    ));
    let findings = config
        .load(&Env::new())
        .expect_err("a client's tokens outlive it");
    assert!(
        findings.iter().any(|f| f
            .message
            .contains("is shorter than a minute or than token_lifetime")),
        "{findings:?}"
    );
}

/// A rotated refresh token presented again is reuse unless a reuse
/// interval says otherwise: 0s (the default, off) to 5m, whole seconds,
/// the server's for each client that writes none of its own.
#[test]
fn refresh_reuse_interval_is_0s_to_5m_and_a_client_may_override_it() {
    let allowed = "whole seconds from 0s (off: reuse always revokes the family) to 5m, e.g. 30s";
    for value in ["6m", "301", "-1s", "1500ms", "soon"] {
        refused(
            &format!("authorization_server:\n  refresh_reuse_interval: {value}\n"),
            error(
                2,
                27,
                &format!(
                    "authorization_server.refresh_reuse_interval: `{value}` is not a duration \
                     from 0s to 5m"
                ),
                allowed,
            ),
        );
    }
    let client = |id: &str, line: &str| {
        format!(
            "  - client_id: {id}\n    client_secret: {id}-secret-of-some-length\n    grant_types: [password, refresh_token]\n{line}"
        )
    };
    refused(
        &format!(
            "authorization_server:\n  clients:\n{}",
            client("app", "    refresh_reuse_interval: 10m\n")
        ),
        error(
            6,
            29,
            "refresh_reuse_interval: `10m` is not a duration from 0s to 5m",
            allowed,
        ),
    );
    let intervals = |yaml: &str, env: &Env| {
        let snap = loaded_with(yaml, env).snapshot;
        let authz = snap.authorization_server.as_ref().expect("authz");
        authz
            .clients
            .iter()
            .map(|c| (c.client_id.clone(), c.refresh_reuse_interval.as_secs()))
            .collect::<Vec<_>>()
    };
    let clients = [
        client("inherits", ""),
        client("off", "    refresh_reuse_interval: 0s\n"),
        client("longest", "    refresh_reuse_interval: 5m\n"),
    ]
    .concat();
    assert_eq!(
        intervals(
            &format!("authorization_server:\n  clients:\n{clients}"),
            &Env::new()
        ),
        [
            ("inherits".to_owned(), 0),
            ("off".to_owned(), 0),
            ("longest".to_owned(), 300)
        ]
    );
    let server =
        format!("authorization_server:\n  refresh_reuse_interval: 30s\n  clients:\n{clients}");
    assert_eq!(
        intervals(&server, &Env::new()),
        [
            ("inherits".to_owned(), 30),
            ("off".to_owned(), 0),
            ("longest".to_owned(), 300)
        ]
    );
    assert_eq!(
        intervals(
            &server,
            &env(&[("MCGW_AUTHORIZATION_SERVER_REFRESH_REUSE_INTERVAL", "45")])
        ),
        [
            ("inherits".to_owned(), 45),
            ("off".to_owned(), 0),
            ("longest".to_owned(), 300)
        ]
    );
    let findings = Config::new(&server)
        .load(&env(&[(
            "MCGW_AUTHORIZATION_SERVER_REFRESH_REUSE_INTERVAL",
            "1h",
        )]))
        .expect_err("refused");
    assert_eq!(
        findings.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        [format!(
            "MCGW_AUTHORIZATION_SERVER_REFRESH_REUSE_INTERVAL: error: \
             authorization_server.refresh_reuse_interval: `1h` is not a duration from 0s to 5m; \
             allowed: {allowed}"
        )]
    );
}

// ------------------------------------------------------------ auth servers

#[test]
fn clock_skew_over_60s() {
    refused(
        r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig:
      issuer: "http://localhost:4485"
      clockSkew: 61s
"#,
        error(6, 18, "clockSkew is more than 60s", "at most 60s"),
    );
}

/// An empty audience is named by no token's `aud`: every token would be
/// refused as for another API. Refused wherever an audience is written,
/// whitespace alone too.
#[test]
fn an_empty_audience_is_refused() {
    let allowed = "an audience such as `time-travels`, or no key (no audience check)";
    for empty in [r#""""#, r#"" ""#, r#""\t""#] {
        refused(
            &format!(
                r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig:
      issuer: "http://localhost:4485"
      audience: {empty}
"#
            ),
            error(
                6,
                17,
                "localIntrospectionConfig.audience is empty: no token's `aud` names it",
                allowed,
            ),
        );
        refused(
            &format!(
                r#"security_settings:
  auth_servers:
  - id: remote
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:9/introspect"
      clientId: gateway
      clientSecret: s
      audience: {empty}
"#
            ),
            error(
                8,
                17,
                "remoteIntrospectionConfig.audience is empty: no token's `aud` names it",
                allowed,
            ),
        );
        refused(
            &format!("authorization_server:\n  audience: {empty}\n"),
            error(
                2,
                13,
                "authorization_server.audience is empty: no token's `aud` names it",
                allowed,
            ),
        );
    }
    loaded(
        r#"security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485", audience: travels }
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:9/introspect"
      clientId: gateway
      clientSecret: s
      audience: billing
"#,
    );
}

// ------------------------------------------------------------ all findings

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let yaml = r#"ports: { http: 0 }
timeouts: { idle: never }
limits: { max_body: lots }
apis:
- name: A
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: nope }
  resources: ["GET /a", "GET /a", "GET a"]
"#;
    assert_eq!(
        errors(yaml),
        vec![
            error(
                2,
                19,
                "timeouts.idle: `never` is not a duration",
                "\"30s\", \"5m\", \"1h\", \"250ms\" or integer seconds"
            ),
            error(
                3,
                21,
                "limits.max_body: `lots` is not a size",
                "\"32KiB\", \"10MiB\" or integer bytes"
            ),
            error(
                7,
                48,
                "auth server `nope` is not defined",
                "one of: (none defined)"
            ),
            error(
                8,
                25,
                "resource `GET /a` is declared twice in this API",
                TWICE
            ),
            error(8, 35, "path `a` does not start with /", RESOURCE_ALLOWED),
        ]
    );
}

#[test]
fn errors_of_every_api_are_reported() {
    let yaml = r#"apis:
- name: A
  upstream: { echo: true }
  resources: ["GET a"]
  authentication: { type: none }
- name: B
  upstream: { echo: true }
  resources: ["GET /b", "GET /b"]
  authentication: { type: none }
"#;
    assert_eq!(
        errors(yaml),
        vec![
            error(4, 15, "path `a` does not start with /", RESOURCE_ALLOWED),
            error(
                8,
                25,
                "resource `GET /b` is declared twice in this API",
                TWICE
            ),
        ]
    );
}

// ------------------------------------------------------------ webMethods files

const WEBMETHODS: &str = r#"ports: { http: 0 }
api_gateway:
  url: "http://central.example:9485"
  user: "Administrator"
  password: "{encoded}bWFuYWdl"
  dir: "C:/Installations"
security_settings:
  auth_servers:
  - !<authServerAlias>
    id: "local"
    name: "local"
    description: "API Gateway as an Authorization server."
    type: "authServerAlias"
    owner: "Administrator"
    authServerType: "EXTERNAL"
    providerName: null
    discoveryURL: null
    dcrEndpoint: null
    metadata: null
    scopes: []
    supportedGrantTypes: null
    sslConfig:
      keyStoreAlias: null
    tokenGeneratorConfig: null
    remoteISConfig: null
    localIntrospectionConfig:
      issuer: "http://localhost:4485"
      trustStoreAlias: null
      certificateAlias: "gateway-cert"
      description: null
      useLocalClockSkew: true
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://localhost:4485/invoke/pub.oauth/introspectToken"
      clientId: "introspection-client"
      clientSecret: "{encoded}c2VjcmV0"
      user: "Administrator"
--- !<authServerAlias>
id: "other"
name: "Other"
type: "authServerAlias"
localIntrospectionConfig:
  issuer: "https://other.example"
"#;

fn warning(line: u64, column: u64, key: &str) -> Found {
    (
        line,
        column,
        format!("`{key}` is a webMethods setting that has no effect here; ignored"),
        None,
    )
}

#[test]
fn webmethods_file_passes_with_warnings() {
    let loaded = loaded(WEBMETHODS);
    let warnings: Vec<Found> = loaded.warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![
            warning(6, 8, "dir"),
            warning(15, 21, "authServerType"),
            warning(20, 13, "scopes"),
            warning(23, 7, "sslConfig"),
            warning(29, 25, "certificateAlias"),
            warning(31, 26, "useLocalClockSkew"),
            warning(36, 13, "user"),
        ]
    );
    assert!(loaded
        .warnings
        .iter()
        .all(|w| w.severity == Severity::Warning));
    let servers = &loaded.snapshot.auth_servers;
    assert_eq!(
        servers.keys().map(|k| &**k).collect::<Vec<_>>(),
        ["local", "other"]
    );
    assert_eq!(servers["other"].name, "Other");
    let local = servers["local"]
        .local
        .as_ref()
        .expect("local introspection");
    assert_eq!(local.issuer, "http://localhost:4485");
    assert_eq!(local.trust_store, None);
    let remote = servers["local"]
        .remote
        .as_ref()
        .expect("remote introspection");
    assert_eq!(remote.client_secret.expose(), "secret");
    let central = loaded.snapshot.api_gateway.as_ref().expect("api_gateway");
    assert_eq!(central.password.expose(), "manage");
}

#[test]
fn error_in_an_appended_document_has_its_file_line() {
    let yaml = format!("{WEBMETHODS}  colour: red\n");
    refused(
        &yaml,
        error(
            43,
            3,
            "unknown key `colour`",
            "one of: issuer, jwksuri, audience, clockSkew, accept_jwt_typ, trustStoreAlias, certificateAlias, description, useLocalClockSkew, allow_insecure_http",
        ),
    );
    let yaml = format!("{WEBMETHODS}  clockSkew: 2m\n");
    refused(
        &yaml,
        error(43, 14, "clockSkew is more than 60s", "at most 60s"),
    );
}

#[test]
fn unknown_auth_server_type() {
    refused(
        r#"security_settings:
  auth_servers:
  - id: local
    type: "oauth2Server"
    localIntrospectionConfig: { issuer: "http://localhost:4485" }
"#,
        error(
            4,
            11,
            "auth server type `oauth2Server` is not supported",
            "authServerAlias",
        ),
    );
}

// ------------------------------------------------------------ environment

#[test]
fn env_overrides_a_port() {
    let snap = loaded_with(
        "ports: { http: 4485, bind: 127.0.0.1 }\n",
        &env(&[("MCGW_PORTS_HTTP", "8080")]),
    )
    .snapshot;
    assert_eq!(snap.listen.http, Some("127.0.0.1:8080".parse().unwrap()));
}

#[test]
fn lower_case_webmethods_env_overrides_the_poll_interval() {
    let yaml = r#"api_gateway:
  url: "https://central.example:9485"
  user: Administrator
  password: "{encoded}bWFuYWdl"
  download_apis: true
  poll_interval: 30s
"#;
    let snap = loaded_with(yaml, &env(&[("mcgw_api_gateway_poll_interval", "10s")])).snapshot;
    let central = snap.api_gateway.clone().expect("api_gateway");
    assert_eq!(central.poll_interval, Duration::from_secs(10));
}

#[test]
fn poll_interval_from_env_alone_needs_no_central_credentials() {
    let loaded = loaded_with(
        "ports: { http: 0 }\n",
        &env(&[("MCGW_API_GATEWAY_POLL_INTERVAL", "10s")]),
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert!(loaded.snapshot.api_gateway.is_none());
}

#[test]
fn downloading_needs_the_central_url_and_credentials() {
    let config = Config::new("api_gateway:\n  download_settings: true\n");
    let findings = config.load(&Env::new()).expect_err("refused");
    let messages: Vec<String> = findings.iter().map(|d| d.message.clone()).collect();
    assert_eq!(
        messages,
        [
            "`api_gateway.url` is missing",
            "`api_gateway.user` is missing",
            "`api_gateway.password` is missing"
        ]
    );
}

#[test]
fn unknown_mcgw_variable_is_a_warning() {
    let loaded = loaded_with(
        "ports: { http: 0 }\n",
        &env(&[
            ("MCGW_PORTS_HTTPX", "1"),
            ("MCGW_LOG", "debug"),
            ("PATH", "/bin"),
        ]),
    );
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert_eq!(
        loaded.warnings[0].to_string(),
        "MCGW_PORTS_HTTPX: warning: this MCGW_ variable matches no setting; ignored"
    );
}

#[test]
fn env_override_with_a_bad_value_is_an_error() {
    let config = Config::new("ports: { http: 0 }\n");
    let findings = config
        .load(&env(&[("MCGW_TIMEOUTS_IDLE", "forever")]))
        .expect_err("refused");
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        findings[0].message,
        "timeouts.idle: `forever` is not a duration"
    );
    // The value is not in the file: the variable is named instead.
    assert!(
        findings[0]
            .to_string()
            .starts_with("MCGW_TIMEOUTS_IDLE: error: timeouts.idle:"),
        "{}",
        findings[0]
    );
}

/// A key its section's compile names alone (`download_apis`, for
/// `api_gateway.download_apis`) is still the variable's finding, not the
/// file's, which does not hold the value.
#[test]
fn env_override_of_a_nested_key_with_a_bad_value_names_the_variable() {
    let config = Config::new(
        "ports: { http: 0 }\napi_gateway: { url: \"https://central.example\", user: fleet, password: fleet-password-0123456789 }\n",
    );
    let findings = config
        .load(&env(&[("MCGW_API_GATEWAY_DOWNLOAD_APIS", "maybe")]))
        .expect_err("refused");
    let errors: Vec<String> = findings
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("MCGW_API_GATEWAY_DOWNLOAD_APIS: error: download_apis:"),
        "{}",
        errors[0]
    );
}

// ------------------------------------------------------------ paths

/// Type `certificate` identifies a caller by the certificate TLS asked
/// for, and none is asked for without `tls.client_ca`, without an HTTPS
/// port, or where the API is not served on https: warned about (alone,
/// the API can never be called). Not refused: an API downloaded from a
/// central may accept what this instance does not set up.
#[test]
fn certificate_authentication_where_no_certificate_is_asked_for() {
    const NO_CA: &str = "ports: { http: 0, https: 0 }\ntls: { certificate: s.crt, key: s.key }\n";
    const CA: &str =
        "ports: { http: 0, https: 0 }\ntls: { certificate: s.crt, key: s.key, client_ca: ca.pem }\n";
    const NO_HTTPS: &str =
        "ports: { http: 0 }\ntls: { certificate: s.crt, key: s.key, client_ca: ca.pem }\n";
    // (errors, warnings) of an API behind `head`.
    let findings = |head: &str, transport: &str, types: &str| {
        let config = Config::new(&format!(
            "{head}apis:\n- name: A\n  base_path: /a\n  upstream: {{ echo: true }}\n  \
             transport: {transport}\n  authentication: {{ type: {types} }}\n  resources: [\"GET /a\"]\n"
        ));
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        config.file("s.crt", &certified.cert.pem());
        config.file("s.key", &certified.signing_key.serialize_pem());
        config.file("ca.pem", &certified.cert.pem());
        let all = match config.load(&Env::new()) {
            Ok(loaded) => loaded.warnings,
            Err(findings) => findings,
        };
        let of = |severity| {
            all.iter()
                .filter(|d| d.severity == severity)
                .map(found)
                .collect::<Vec<Found>>()
        };
        (of(Severity::Error), of(Severity::Warning))
    };
    let warned = |why: &str, outcome: &str| {
        let message = format!(
            "authentication type certificate, but no client certificate is ever asked for \
             ({why}): {outcome}"
        );
        (vec![], vec![(8, 27, message, None)])
    };
    let unidentified = "that type identifies no caller";
    let both = "[http, https]";
    let mixed = "[api_key, certificate]";
    assert_eq!(findings(CA, both, mixed), (vec![], vec![]));
    assert_eq!(findings(CA, both, "certificate"), (vec![], vec![]));
    assert_eq!(
        findings(NO_CA, both, mixed),
        warned("tls.client_ca is not set", unidentified)
    );
    assert_eq!(
        findings(NO_HTTPS, both, mixed),
        warned("ports.https is not set", unidentified)
    );
    assert_eq!(
        findings(CA, "[http]", mixed),
        warned("the API's transport leaves out https", unidentified)
    );
    assert_eq!(
        findings(NO_CA, both, "certificate"),
        warned(
            "tls.client_ca is not set",
            "the API can never be called (every request gets 401)"
        )
    );
}

#[test]
fn relative_paths_are_relative_to_the_configuration_directory() {
    let config = Config::new(
        r#"tls:
  certificate: tls/server.crt
  key: tls/server.key
authorization_server:
  signing_key: data/signing-key.pem
  store: sqlite:data/oauth.db
"#,
    );
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let crt = config.file("tls/server.crt", &certified.cert.pem());
    let key = config.file("tls/server.key", &certified.signing_key.serialize_pem());
    let snap = config.load(&Env::new()).expect("valid").snapshot;
    let tls = snap.tls.as_ref().expect("tls");
    assert_eq!(tls.certificate_path, crt);
    assert_eq!(tls.key_path, key);
    let authz = snap
        .authorization_server
        .as_ref()
        .expect("authorization server");
    let dir: &Path = config.dir.path();
    assert_eq!(authz.signing_key_path, dir.join("data/signing-key.pem"));
    assert_eq!(authz.store_path, dir.join("data/oauth.db"));
    assert!(
        snap.files.contains(&crt) && snap.files.contains(&key),
        "{:?}",
        snap.files
    );
}

// ------------------------------------------------------------ failing closed

const AUTHENTICATION_ALLOWED: &str =
    "authentication: { type: oauth2, auth_server: ID }, a type or list of oauth2, api_key, basic, certificate, or { type: none } for an API open to anyone";
const PLAIN_HTTP_ALLOWED: &str = "https://…, http:// only to localhost, 127.0.0.0/8 or [::1], or `allow_insecure_http: true` on this entry";
const TAG_ALLOWED: &str = "no tag, except `!<authServerAlias>` on an auth server entry";

#[test]
fn api_without_authentication_is_refused() {
    refused(
        r#"apis:
- name: A
  upstream: { echo: true }
  scopes: [{ name: View, resources: ["GET /a"] }]
"#,
        error(
            2,
            9,
            "API has no `authentication`; it would be served without credentials",
            AUTHENTICATION_ALLOWED,
        ),
    );
    refused(
        r#"apis:
- name: A
  upstream: { echo: true }
  authentication: { auth_server: local }
"#,
        error(
            4,
            19,
            "authentication has no `type`",
            AUTHENTICATION_ALLOWED,
        ),
    );
}

/// The contract: with `type: none`, scopes and resources only declare
/// routes. Taken, with a warning where the scopes begin.
#[test]
fn type_none_with_scopes_only_declares_routes_and_is_warned_about() {
    let loaded = loaded(
        r#"apis:
- name: A
  upstream: { echo: true }
  authentication: { type: none }
  scopes:
  - name: View
    resources: ["GET /a"]
"#,
    );
    let warnings: Vec<Found> = loaded.warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            6,
            5,
            "API has `scopes:` but authentication type none: they only declare routes, \
             and anyone may call them (type: oauth2 with auth_server enforces them)"
                .to_owned(),
            None
        )]
    );
}

#[test]
fn a_secret_that_resolves_to_nothing_is_refused() {
    let config = Config::new(
        r#"admin:
  user: Administrator
  password: "${env:ADMIN_PW}"
central:
  users:
  - { user: fleet, password: "${file:fleet.pw}" }
security_settings:
  aliases:
  - { name: backend, type: basic, username: svc, password: "{encoded}" }
"#,
    );
    config.file("fleet.pw", "\r\n\n");
    let findings = config
        .load(&env(&[("ADMIN_PW", "")]))
        .expect_err("empty secrets are refused");
    let found: Vec<Found> = findings.iter().map(found).collect();
    let pw = config.dir.path().join("fleet.pw");
    assert_eq!(
        found,
        vec![
            error(
                3,
                13,
                "admin.password: environment variable ADMIN_PW is set but empty",
                SECRET_ALLOWED
            ),
            // The user whose password is refused is told of once: not
            // again as a central without users.
            error(
                6,
                30,
                &format!(
                    "password: secret file {} is empty (or holds only line breaks)",
                    pw.display()
                ),
                SECRET_ALLOWED
            ),
            error(
                9,
                60,
                "password: {encoded} value decodes to nothing",
                SECRET_ALLOWED
            ),
        ]
    );
}

/// Whitespace lets in whoever sends that much, as an empty secret would.
#[test]
fn a_secret_of_only_whitespace_is_refused() {
    let config = Config::new(
        r#"security_settings:
  aliases:
  - { name: clear, username: u, password: "   " }
  - { name: encoded, username: u, password: "{encoded}IA==" }
  - { name: from-env, username: u, password: "${env:PW}" }
  - { name: from-file, username: u, password: "${file:pw}" }
  - { name: fine, username: u, password: " a " }
"#,
    );
    config.file("pw", " \t\n");
    let findings = config
        .load(&env(&[("PW", "  \n")]))
        .expect_err("blank secrets are refused");
    let found: Vec<Found> = findings.iter().map(found).collect();
    let blank = |line, column| {
        error(
            line,
            column,
            "password: the secret is only whitespace",
            SECRET_ALLOWED,
        )
    };
    assert_eq!(
        found,
        vec![blank(3, 43), blank(4, 45), blank(5, 46), blank(6, 47)]
    );
}

/// A variable filled from a file (a Kubernetes `secretKeyRef`) keeps the
/// file's line break: one is dropped, `\n` or `\r\n`, as `${file:}` drops it.
#[test]
fn an_env_secret_loses_one_trailing_line_break() {
    let yaml = r#"security_settings:
  aliases:
  - { name: lf, username: u, password: "${env:LF}" }
  - { name: crlf, username: u, password: "${env:CRLF}" }
  - { name: two, username: u, password: "${env:TWO}" }
"#;
    let loaded = loaded_with(
        yaml,
        &env(&[("LF", "pw\n"), ("CRLF", "pw\r\n"), ("TWO", "pw\n\n")]),
    );
    let password = |name: &str| match &loaded.snapshot.aliases[name] {
        microgateway::config::snapshot::Alias::Basic { password, .. } => {
            password.expose().to_owned()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(password("lf"), "pw");
    assert_eq!(password("crlf"), "pw");
    assert_eq!(password("two"), "pw\n");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

/// `echo pw | base64` encodes `pw\n`: taken as written, but said.
#[test]
fn an_encoded_secret_ending_in_a_line_break_is_warned_about() {
    let loaded = loaded(
        "security_settings:\n  aliases:\n  - { name: a, username: u, password: \"{encoded}cHcK\" }\n",
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":3:39: warning: password: the decoded {encoded} secret ends with a line break, which is part of the secret (`echo pw | base64` adds one; `printf %s pw | base64` does not)"),
        "{}",
        warnings[0]
    );
    match &loaded.snapshot.aliases["a"] {
        microgateway::config::snapshot::Alias::Basic { password, .. } => {
            assert_eq!(password.expose(), "pw\n");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn key_and_token_sources_over_plain_http_to_a_remote_host() {
    assert_eq!(
        errors(
            r#"security_settings:
  auth_servers:
  - id: jwks
    localIntrospectionConfig:
      issuer: "https://idp.example"
      jwksuri: "http://idp.example/jwks"
  - id: discovery
    localIntrospectionConfig: { issuer: "http://10.0.0.7:8080" }
  - id: opaque
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://idp.example/introspect"
      clientId: gw
      clientSecret: s3cret
"#
        ),
        vec![
            error(
                6,
                16,
                "jwksuri: `http://idp.example/jwks` would carry the JWK Set over plain HTTP to a host that is not loopback",
                PLAIN_HTTP_ALLOWED
            ),
            error(
                8,
                41,
                "localIntrospectionConfig.issuer: `http://10.0.0.7:8080` would carry discovery of the JWK Set over plain HTTP to a host that is not loopback",
                PLAIN_HTTP_ALLOWED
            ),
            error(
                11,
                30,
                "introspectionEndpoint: `http://idp.example/introspect` would carry introspection (tokens and the client secret) over plain HTTP to a host that is not loopback",
                PLAIN_HTTP_ALLOWED
            ),
        ]
    );
}

/// A password with an unencoded `/` makes the URL's "port" text: the URL
/// is refused, and no finding shows the password.
#[test]
fn a_url_whose_port_is_text_is_refused_without_showing_it() {
    let findings = errors(
        r#"security_settings:
  auth_servers:
  - id: opaque
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://gw:Zm9v/YmFy@idp.example/introspect"
      clientId: gw
      clientSecret: s3cret
"#,
    );
    assert!(!findings.is_empty());
    for finding in &findings {
        let text = format!("{finding:?}");
        assert!(!text.contains("YmFy") && !text.contains("Zm9v"), "{text}");
    }
    assert!(
        findings
            .iter()
            .any(|f| format!("{f:?}").contains("is not an http(s) URL")),
        "{findings:?}"
    );
}

#[test]
fn credentials_to_a_plain_http_upstream_are_refused() {
    refused(
        r#"security_settings:
  aliases:
  - { name: backend, type: basic, username: svc, password: s3cret }
apis:
- name: A
  upstream: { url: "http://backend.example/api" }
  authentication: { type: none }
  resources: ["GET /a"]
  policies:
    outbound_auth: { alias: backend }
"#,
        error(
            6,
            20,
            "upstream.url: `http://backend.example/api` would carry outbound credentials (outbound_auth) over plain HTTP to a host that is not loopback",
            PLAIN_HTTP_ALLOWED,
        ),
    );
}

/// Keys that restrict callers, or pass their token on, mean nothing on an
/// API that validates no token: they would read as protection that is
/// not there.
#[test]
fn restrictions_an_open_api_would_not_apply_are_refused() {
    let api = |authentication: &str, policies: &str| {
        format!(
            "security_settings:\n  auth_servers:\n  - id: idp\n    localIntrospectionConfig: {{ issuer: \"https://idp.example\" }}\napis:\n- name: A\n  upstream: {{ url: \"https://backend.example/api\" }}\n  authentication: {authentication}\n  resources: [\"GET /a\"]\n{policies}"
        )
    };
    for (authentication, policies, problem) in [
        (
            "{ type: none, applications: registered }",
            "",
            "`applications` beside authentication type none; nothing would apply it",
        ),
        (
            "{ type: none, auth_server: idp }",
            "",
            "`auth_server` beside authentication type none; nothing would apply it",
        ),
        (
            "{ type: none, api_key_header: X-Key }",
            "",
            "`api_key_header` beside authentication type none; nothing would apply it",
        ),
        (
            "{ type: basic, auth_server: idp }",
            "",
            "`auth_server` without authentication type oauth2; no token would be validated by it",
        ),
        (
            "{ type: none }",
            "  policies:\n    outbound_auth: { delegate: incoming_token }\n",
            "delegate: incoming_token on an API that validates no token",
        ),
        (
            "{ type: api_key }",
            "  policies:\n    outbound_auth: { delegate: incoming_token }\n",
            "delegate: incoming_token on an API that validates no token",
        ),
    ] {
        let config = Config::new(&api(authentication, policies));
        let findings = config.load(&Env::new()).expect_err(authentication);
        let said: Vec<String> = findings.iter().map(|f| found(f).2).collect();
        assert_eq!(said, [problem], "{authentication} {policies}");
    }
}

/// The API key is taken out of the request before it is forwarded: a
/// field the gateway reads, writes or passes on for another job cannot
/// carry it.
#[test]
fn an_api_key_header_the_gateway_uses_otherwise_is_refused() {
    const ALLOWED: &str = "a header of the client's own such as X-API-Key; not Host, Authorization, Cookie, Forwarded, X-Forwarded-For/-Proto/-Host, X-Request-Id, traceparent, tracestate or Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Content-Length and the Proxy- fields";
    for (header, why) in [
        (
            "Host",
            "the gateway writes it itself (Host and the connection and framing fields)",
        ),
        (
            "Content-Length",
            "the gateway writes it itself (Host and the connection and framing fields)",
        ),
        (
            "Transfer_Encoding",
            "the gateway writes it itself (Host and the connection and framing fields)",
        ),
        (
            "Connection",
            "the gateway writes it itself (Host and the connection and framing fields)",
        ),
        (
            "Keep-Alive",
            "the gateway writes it itself (Host and the connection and framing fields)",
        ),
        (
            "Proxy-Authorization",
            "the gateway writes it itself (Host and the connection and framing fields)",
        ),
        (
            "Authorization",
            "it carries the bearer token or Basic credentials",
        ),
        ("Cookie", "it carries the browser's cookies"),
        (
            "X-Forwarded-For",
            "it says whom a request was forwarded for, written by the gateway or a trusted proxy",
        ),
        (
            "x_forwarded_proto",
            "it says whom a request was forwarded for, written by the gateway or a trusted proxy",
        ),
        (
            "X-Forwarded-Host",
            "it says whom a request was forwarded for, written by the gateway or a trusted proxy",
        ),
        (
            "Forwarded",
            "it says whom a request was forwarded for, written by the gateway or a trusted proxy",
        ),
        (
            "traceparent",
            "it correlates the request, written by the gateway or passed on",
        ),
        (
            "X-Request-Id",
            "it correlates the request, written by the gateway or passed on",
        ),
    ] {
        refused(
            &format!(
                "apis:\n- name: A\n  upstream: {{ echo: true }}\n  authentication: {{ type: api_key, api_key_header: {header} }}\n  resources: [\"GET /a\"]\n"
            ),
            error(
                4,
                52,
                &format!("api_key_header `{header}` cannot carry API keys: {why}"),
                ALLOWED,
            ),
        );
    }
    loaded("apis:\n- name: A\n  upstream: { echo: true }\n  authentication: { type: api_key, api_key_header: X-Partner-Key }\n  resources: [\"GET /a\"]\n");
}

/// `10.1.2.3/8` reads as one address and is all of 10.0.0.0/8: refused
/// in every address list; trusting every address as a proxy is said.
#[test]
fn address_ranges_with_bits_past_their_prefix_are_refused() {
    for (yaml, line, column, key) in [
        ("trusted_proxies: [\"10.1.2.3/8\"]\n", 1, 19, "trusted_proxies"),
        (
            "apis:\n- name: A\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: none }\n  resources: [\"GET /a\"]\n  ip_filter: { allow: [\"10.1.2.3/8\"] }\n",
            6,
            24,
            "ip_filter.allow",
        ),
    ] {
        refused(
            yaml,
            error(
                line,
                column,
                &format!("{key}: `10.1.2.3/8` has address bits past its /8 prefix"),
                "10.0.0.0/8 for the range, or 10.1.2.3 for the one address",
            ),
        );
    }
    let mapped = loaded("trusted_proxies: [\"::ffff:0.0.0.0/96\"]\n");
    assert_eq!(mapped.warnings.len(), 1, "{:?}", mapped.warnings);
    let loaded = loaded("trusted_proxies: [\"10.0.0.0/8\", \"::/0\"]\n");
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":1:33: warning: trusted_proxies: `::/0` trusts every address as a proxy; any client can then choose the address the gateway judges"),
        "{}",
        warnings[0]
    );
}

/// An allow list written empty reads as "no one" (a template that rendered
/// no ranges) and would allow every address: refused; left out, it
/// allows every address. So does an application's `auth_servers`.
#[test]
fn an_allow_list_written_empty_is_refused() {
    let errors = errors(
        r#"apis:
- name: A
  upstream: { echo: true }
  authentication: { type: api_key }
  resources: ["GET /a"]
  ip_filter: { allow: [], deny: ["10.0.0.0/8"] }
applications:
- name: partner
  api_keys: ["partner-demo-key"]
  ip_ranges: []
  client_ids: [partner]
  auth_servers: []
  apis: [A]
"#,
    );
    assert_eq!(
        errors,
        vec![
            error(
                6,
                23,
                "ip_filter.allow is an empty list, which would allow every address",
                "the CIDRs allowed, or no `ip_filter.allow` to allow every address",
            ),
            error(
                10,
                14,
                "ip_ranges is an empty list, which would allow every address",
                "the CIDRs allowed, or no `ip_ranges` to allow every address",
            ),
            error(
                12,
                17,
                "auth_servers is an empty list, which would match client_ids on tokens of every auth server",
                "the auth servers that issued the client ids, or no `auth_servers` for any",
            ),
        ]
    );
    loaded(
        r#"apis:
- name: A
  upstream: { echo: true }
  authentication: { type: api_key }
  resources: ["GET /a"]
  ip_filter: { deny: ["10.0.0.0/8"] }
applications:
- name: partner
  api_keys: ["partner-demo-key"]
  apis: [A]
"#,
    );
}

/// A filter that names no range (a template that rendered nothing) reads
/// as a filter and admits every address: refused, whether it is written
/// empty, with only an empty `deny`, or left bare.
#[test]
fn an_ip_filter_naming_no_range_is_refused() {
    for (filter, column) in [("{}", 14), ("{ deny: [] }", 14), ("", 12), ("null", 14)] {
        let yaml = format!(
            "apis:\n- name: A\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /a\"]\n  ip_filter: {filter}\n"
        );
        assert_eq!(
            errors(&yaml),
            vec![error(
                6,
                column,
                "ip_filter names no address range, which would admit every address",
                "`allow` and/or `deny` with the CIDRs, or no `ip_filter`",
            )],
            "ip_filter: {filter}"
        );
    }
    loaded("apis:\n- name: A\n  upstream: { echo: true }\n  authentication: { type: none }\n  resources: [\"GET /a\"]\n  ip_filter: { allow: [\"10.0.0.0/8\"], deny: [] }\n");
}

/// A mapping for an auth server whose tokens the API never sees applies
/// to nothing: said, not refused (webMethods exports carry them).
#[test]
fn a_mapping_for_an_auth_server_the_api_does_not_use_is_warned_about() {
    let loaded = loaded(
        "security_settings:\n  auth_servers:\n  - id: idp\n    localIntrospectionConfig: { issuer: \"https://idp.example\", audience: orders }\n  - id: partners\n    localIntrospectionConfig: { issuer: \"https://partners.example\" }\nscope_mappings:\n- { auth_server: partners, scope: admin, api_scopes: [\"Orders:Admin\"] }\napis:\n- name: Orders\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: oauth2, auth_server: idp }\n  scopes: [{ name: Admin, resources: [\"GET /a\"] }]\n",
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":8:55: warning: api scope `Orders:Admin` is mapped for auth server `partners`, but API `Orders` validates tokens of `idp`; the mapping never applies"),
        "{}",
        warnings[0]
    );
    // Naming the API, it still ends the literal reading of its scopes.
    assert!(
        warnings[1].ends_with(":13:20: warning: API scope `Admin` is granted by no scope mapping of auth server `idp`, while mappings of other auth servers name API `Orders` (so a token's own scope `Admin` does not grant it): no token may call its resources"),
        "{}",
        warnings[1]
    );
}

/// A mapping of one auth server naming an API ends the literal reading of
/// its scope names for every version, those another server validates
/// included: a version whose server grants none of its scopes by mapping
/// can be called by no token, which `check` says.
#[test]
fn a_version_locked_out_by_another_servers_mapping_is_warned_about() {
    let loaded = loaded(
        "security_settings:\n  auth_servers:\n  - id: idp\n    localIntrospectionConfig: { issuer: \"https://idp.example\", audience: b }\n  - id: idp2\n    localIntrospectionConfig: { issuer: \"https://idp2.example\", audience: b }\nscope_mappings:\n- { auth_server: idp, scope: read, api_scopes: [\"Bookings:Read\"] }\napis:\n- name: Bookings\n  version: \"1\"\n  base_path: /v1\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: oauth2, auth_server: idp }\n  scopes: [{ name: Read, resources: [\"GET /x\"] }]\n- name: Bookings\n  version: \"2\"\n  base_path: /v2\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: oauth2, auth_server: idp2 }\n  scopes: [{ name: Read, resources: [\"GET /x\"] }]\n",
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":21:20: warning: API scope `Read` is granted by no scope mapping of auth server `idp2`, while mappings of other auth servers name API `Bookings` (so a token's own scope `Read` does not grant it): no token may call its resources"),
        "{}",
        warnings[0]
    );
}

/// `API:scope` is read whole, as API and scope names may hold a `:`: a
/// reference that reads as scopes of two APIs is refused rather than
/// granting both.
#[test]
fn an_api_scope_reference_that_reads_two_ways_is_refused() {
    refused(
        "security_settings:\n  auth_servers:\n  - id: idp\n    localIntrospectionConfig: { issuer: \"https://idp.example\", audience: s }\nscope_mappings:\n- { auth_server: idp, scope: orders-admin, api_scopes: [\"Shop:Orders:Admin\"] }\napis:\n- name: Shop\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: oauth2, auth_server: idp }\n  scopes: [{ name: \"Orders:Admin\", resources: [\"DELETE /orders/{id}\"] }]\n- name: \"Shop:Orders\"\n  base_path: /shop-orders\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: oauth2, auth_server: idp }\n  scopes: [{ name: Admin, resources: [\"DELETE /{id}\"] }]\n",
        error(
            6,
            57,
            "api scope `Shop:Orders:Admin` reads as scope `Admin` of API `Shop:Orders`, scope `Orders:Admin` of API `Shop`",
            "an \"API name:scope name\" that reads one way: rename the API or the scope",
        ),
    );
}

/// Once a mapping of the API's auth server names the API, a token's own
/// scope grants none of its scopes: a scope no mapping grants is refused
/// to every caller, which `check` says where the scope is named.
#[test]
fn an_api_scope_no_mapping_grants_is_warned_about() {
    let loaded = loaded(
        "security_settings:\n  auth_servers:\n  - id: idp\n    localIntrospectionConfig: { issuer: \"https://idp.example\", audience: orders }\nscope_mappings:\n- { auth_server: idp, scope: view, api_scopes: [\"Orders:View\"] }\napis:\n- name: Orders\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: oauth2, auth_server: idp }\n  scopes:\n  - { name: View, resources: [\"GET /a\"] }\n  - { name: Cancel, resources: [\"DELETE /a\"] }\n- name: Open\n  upstream: { url: \"https://b.example/\" }\n  authentication: { type: oauth2, auth_server: idp }\n  scopes: [{ name: Cancel, resources: [\"DELETE /a\"] }]\n",
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    // `Open` is named by no mapping: a token's scope `Cancel` grants it.
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":13:13: warning: API scope `Cancel` is granted by no scope mapping of auth server `idp`, whose mappings name API `Orders` (so a token's own scope `Cancel` does not grant it): no token may call its resources"),
        "{}",
        warnings[0]
    );
}

/// Two listeners on one port would fail at start only: `check` says so.
#[test]
fn two_listeners_on_one_port_are_refused() {
    refused(
        "ports: { http: 8080 }\nadmin: { port: 8080 }\n",
        error(
            2,
            16,
            "admin.port: port 8080 is ports.http's too",
            "a port of its own for each listener",
        ),
    );
    // The admin port not written is 9485.
    refused(
        "ports: { http: 9485 }\n",
        error(
            1,
            16,
            "ports.http: port 9485 is admin.port's too",
            "a port of its own for each listener",
        ),
    );
    // Different addresses may share a port number.
    loaded("ports: { http: 8080, bind: 127.0.0.1 }\nadmin: { port: 8080, bind: 127.0.0.2 }\n");
}

/// Without credentials the admin port's reads are open: bound beyond
/// loopback, that is said.
#[test]
fn an_admin_port_open_beyond_loopback_without_credentials_is_warned_about() {
    let loaded = loaded("admin: { port: 9485, bind: 0.0.0.0 }\n");
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":1:28: warning: admin.bind: `0.0.0.0` without admin.user: status, settings and assets are readable by anyone who reaches the port"),
        "{}",
        warnings[0]
    );
    let quiet = loaded_with(
        "admin: { port: 9485, bind: 0.0.0.0, user: ops, password: \"${env:ADMIN_PW}\" }\n",
        &env(&[("ADMIN_PW", "s3cret-long-enough")]),
    );
    assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
}

#[test]
fn allow_insecure_http_makes_plain_http_a_warning_and_loopback_needs_nothing() {
    let loaded = loaded(
        r#"authorization_server:
  issuer: "http://gateway.example"
security_settings:
  auth_servers:
  - id: remote
    localIntrospectionConfig:
      issuer: "http://idp.example"
      allow_insecure_http: true
  - id: loopback
    localIntrospectionConfig: { issuer: "http://127.0.0.2:4485", jwksuri: "http://[::1]:4485/jwks", audience: a }
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://localhost:4485/introspect"
      clientId: gw
      clientSecret: s3cret
  - id: own
    localIntrospectionConfig: { issuer: "http://gateway.example/" }
apis:
- name: A
  upstream: { url: "http://backend.example/api", allow_insecure_http: true }
  authentication: { type: oauth2, auth_server: loopback }
  resources: ["GET /a"]
  policies:
    outbound_auth: { delegate: incoming_token }
"#,
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings[0].contains(":2:11: warning: authorization_server.issuer `http://gateway.example` is http on a host that is not loopback"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].ends_with(":7:15: warning: localIntrospectionConfig.issuer: `http://idp.example` carries discovery of the JWK Set over plain HTTP (allow_insecure_http)"),
        "{}",
        warnings[1]
    );
    assert!(
        warnings[2].ends_with(":19:20: warning: upstream.url: `http://backend.example/api` carries outbound credentials (outbound_auth) over plain HTTP (allow_insecure_http)"),
        "{}",
        warnings[2]
    );
}

#[test]
fn yaml_1_1_booleans_are_refused_with_what_they_are() {
    assert_eq!(
        errors(
            r#"apis:
- name: A
  upstream: { echo: true, timeout: 5s }
  authentication: { type: none }
  resources: ["GET /a"]
  allow_encoded_slashes: on
- name: B
  upstream: { echo: true }
  authentication: { type: none }
  resources: ["GET /b"]
  allow_encoded_slashes: OFF
"#
        ),
        vec![
            error(
                6,
                26,
                "allow_encoded_slashes: `on` is a YAML 1.1 boolean, which this file does not accept",
                "true or false"
            ),
            error(
                11,
                26,
                "allow_encoded_slashes: `OFF` is a YAML 1.1 boolean, which this file does not accept",
                "true or false"
            ),
        ]
    );
}

#[test]
fn an_aliases_lending_to_downloaded_apis_is_a_boolean() {
    refused(
        r#"security_settings:
  aliases:
  - { name: backend, username: u, password: p, allow_downloaded_apis: maybe }
"#,
        error(
            3,
            71,
            "allow_downloaded_apis: `maybe` is not a boolean",
            "true or false",
        ),
    );
    loaded(
        r#"security_settings:
  aliases:
  - { name: backend, username: u, password: p, allow_downloaded_apis: true }
"#,
    );
}

#[test]
fn yaml_tags_other_than_the_webmethods_alias_are_refused() {
    assert_eq!(
        errors(
            r#"admin:
  user: Administrator
  password: !!binary bWFuYWdl
apis:
- name: !custom A
  upstream: { echo: true }
  authentication: { type: none }
  resources: ["GET /a"]
  allow_encoded_slashes: !!str true
"#
        ),
        vec![
            error(
                3,
                13,
                "the YAML tag `!!binary` is not accepted: binary values have no place in this file",
                TAG_ALLOWED
            ),
            error(5, 9, "the YAML tag `!custom` is not accepted", TAG_ALLOWED),
            error(9, 26, "the YAML tag `!!str` is not accepted", TAG_ALLOWED),
        ]
    );
}

/// `!<authServerAlias>` names an auth server: anywhere else (an API, the
/// admin settings, an alias of `security_settings`, the first document
/// itself) it would be dropped without a word, and is refused.
#[test]
fn the_webmethods_alias_tag_is_taken_on_auth_servers_only() {
    assert_eq!(
        errors(
            r#"--- !<authServerAlias>
admin: !<authServerAlias>
  user: Administrator
security_settings:
  aliases:
  - !<authServerAlias> { name: b, type: basic, username: svc, password: s3cret-s3cret-s3cret }
  auth_servers:
  - !<authServerAlias>
    id: local
    localIntrospectionConfig: { issuer: "http://localhost:4485", audience: a }
apis:
- !<authServerAlias>
  name: A
  upstream: { echo: true }
  authentication: { type: none }
  resources: ["GET /a"]
--- !<authServerAlias>
id: other
localIntrospectionConfig: { issuer: "http://other.example", audience: a }
"#
        ),
        vec![
            error(
                1,
                5,
                "the YAML tag `!<authServerAlias>` is not accepted",
                TAG_ALLOWED
            ),
            error(
                2,
                8,
                "the YAML tag `!<authServerAlias>` is not accepted",
                TAG_ALLOWED
            ),
            error(
                6,
                5,
                "the YAML tag `!<authServerAlias>` is not accepted",
                TAG_ALLOWED
            ),
            error(
                12,
                3,
                "the YAML tag `!<authServerAlias>` is not accepted",
                TAG_ALLOWED
            ),
        ]
    );
}

#[test]
fn a_basic_user_name_with_a_colon_is_refused() {
    refused(
        r#"security_settings:
  aliases:
  - { name: backend, type: basic, username: "svc:admin", password: s3cret }
"#,
        error(
            3,
            45,
            "username: `svc:…` contains `:`, which Basic authentication cannot carry in a user name",
            "a user name without `:` (RFC 7617 §2)",
        ),
    );
}

#[test]
fn templates_with_a_repeated_name_an_empty_segment_or_an_encoded_separator() {
    assert_eq!(
        errors(
            r#"apis:
- name: A
  upstream: { echo: true }
  authentication: { type: none }
  resources:
  - "GET /orders/{id}/{id}"
  - "GET /x//y"
  - "GET /a%2fb"
  - "GET /a%5Cb"
"#
        ),
        vec![
            error(
                6,
                5,
                "path `/orders/{id}/{id}` names the parameter `{id}` twice",
                RESOURCE_ALLOWED
            ),
            error(
                7,
                5,
                "path `/x//y` has an empty segment (`//`)",
                RESOURCE_ALLOWED
            ),
            error(
                8,
                5,
                "path `/a%2fb`: segment `a%2fb` holds an encoded `/` or `\\`",
                RESOURCE_ALLOWED
            ),
            error(
                9,
                5,
                "path `/a%5Cb`: segment `a%5Cb` holds an encoded `/` or `\\`",
                RESOURCE_ALLOWED
            ),
        ]
    );
}

#[test]
fn redirect_uri_with_a_wildcard_is_refused() {
    refused(
        r#"authorization_server:
  clients:
  - client_id: app
    redirect_uris: ["https://app.example/*"]
    grant_types: [authorization_code]
"#,
        error(
            4,
            21,
            "redirect URI `https://app.example/*` has a `*`, but redirect URIs are compared exactly (no wildcards)",
            "https://…, or http:// on localhost, 127.0.0.1 or [::1]",
        ),
    );
}

#[test]
fn one_issuer_with_two_key_sources_is_a_warning() {
    let loaded = loaded(
        r#"security_settings:
  auth_servers:
  - id: a
    localIntrospectionConfig: { issuer: "https://idp.example", jwksuri: "https://idp.example/keys" }
  - id: b
    localIntrospectionConfig: { issuer: "https://idp.example" }
"#,
    );
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":6:41: warning: issuer `https://idp.example` is also configured by auth server `a` with another key source (discovery from the issuer here, jwksuri https://idp.example/keys there); its tokens verify differently depending on the API"),
        "{}",
        warnings[0]
    );
}

#[test]
fn introspect_needs_a_confidential_client() {
    refused(
        r#"authorization_server:
  clients:
  - client_id: spa
    introspect: true
"#,
        error(
            4,
            17,
            "public client `spa` (no client_secret) cannot introspect",
            "a client_secret, or no `introspect: true` (RFC 7662 §2.1)",
        ),
    );
}

#[test]
fn downloading_settings_over_plain_http_from_a_remote_central_is_refused() {
    let yaml = r#"api_gateway:
  url: "http://central.example:9485"
  user: Administrator
  password: "{encoded}bWFuYWdl"
  download_settings: true
"#;
    refused(
        yaml,
        error(
            2,
            8,
            "api_gateway.url: `http://central.example:9485` would carry the central's settings and the download password over plain HTTP to a host that is not loopback",
            PLAIN_HTTP_ALLOWED,
        ),
    );
    let allowed = loaded(&format!("{yaml}  allow_insecure_http: true\n"));
    assert_eq!(allowed.warnings.len(), 1, "{:?}", allowed.warnings);
    // Without a download the central is never contacted.
    loaded(&yaml.replace("download_settings: true", "download_settings: false"));
}

/// A deadline of zero would refuse everything it bounds (every head, every
/// kept-alive connection, every upstream connection, every tunnel): it is
/// an error at its place. Only `drain` may be zero (shutdown then waits
/// for nothing).
#[test]
fn a_deadline_of_zero_is_refused_but_a_drain_of_zero_is_taken() {
    let yaml = "timeouts:\n  header_read: 0s\n  idle: 0s\n  upstream_connect: 0ms\n  body_read: 0s\n  send: 0s\n  tunnel_idle: 0s\n  drain: 0s\napis: []\n";
    let allowed = "a duration such as \"30s\" or \"500ms\"";
    let expected: Vec<Found> = [
        "header_read",
        "idle",
        "upstream_connect",
        "body_read",
        "send",
        "tunnel_idle",
    ]
    .iter()
    .zip(2..)
    .map(|(key, line)| {
        let column = 5 + key.len() as u64;
        error(
            line,
            column,
            &format!("timeouts.{key}: must be more than 0"),
            allowed,
        )
    })
    .collect();
    assert_eq!(errors(yaml), expected);
    let taken = loaded("timeouts: { drain: 0s }\napis: []\n");
    assert!(taken.snapshot.timeouts.drain.is_zero());
}

// ------------------------------------------------------------ transformations

const REQUEST_NAME_ALLOWED: &str = "an end-to-end header name; Host, Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Content-Length and the Proxy- fields (in any spelling) are the gateway's";

/// An open API whose `request_transformation` is `policy` (indented under
/// `request_transformation:`, from line 8).
fn with_request_transformation(policy: &str) -> String {
    format!(
        "apis:\n- name: A\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /a\"]\n  policies:\n    request_transformation:\n{policy}"
    )
}

/// Hop-by-hop fields set by the policy would reach the upstream past the
/// stripping of the client's; `Host` and `Content-Length` would be dropped.
#[test]
fn request_transformation_cannot_set_the_gateways_own_fields() {
    let names = [
        "Connection",
        "Upgrade",
        "TE",
        "Keep-Alive",
        "Proxy-Authorization",
        "Proxy-Connection",
        "Trailer",
        "Transfer-Encoding",
        "Host",
        "Content-Length",
    ];
    assert_each_refused_to_set(&names, "X-Fine");
}

/// A CGI-style upstream reads `Content_Length` as `Content-Length`: the
/// gateway's fields are refused in every spelling that folds to theirs.
#[test]
fn request_transformation_cannot_set_the_gateways_own_fields_in_another_spelling() {
    let names = [
        "Content_Length",
        "Transfer_Encoding",
        "transfer.encoding",
        "KEEP_ALIVE",
        "Proxy_Authorization",
        "Proxy.Connection",
        "HOST",
    ];
    assert_each_refused_to_set(&names, "X-Content_Length_Hint");
}

/// Asserts that `request_transformation` refuses to set each of `names`,
/// set one a line, and takes `fine` set after them.
fn assert_each_refused_to_set(names: &[&str], fine: &str) {
    let policy: String = names
        .iter()
        .map(|name| format!("        {name}: x\n"))
        .collect();
    let found = errors(&with_request_transformation(&format!(
        "      set_headers:\n{policy}        {fine}: x\n"
    )));
    let expected: Vec<Found> = names
        .iter()
        .zip(9..)
        .map(|(name, line)| {
            error(
                line,
                9,
                &format!("request_transformation cannot set `{name}`"),
                REQUEST_NAME_ALLOWED,
            )
        })
        .collect();
    assert_eq!(found, expected);
}

/// `outbound_auth` runs after the transformation and removes the
/// `Authorization` header (or writes its alias's over it): one set here
/// would never reach the upstream, while `check` said nothing.
#[test]
fn request_transformation_cannot_set_authorization() {
    let allowed = "outbound_auth: { alias: NAME } (a basic or bearer alias), { type: basic, username, password } or { delegate: incoming_token }";
    let message = |name: &str| {
        format!("request_transformation cannot set `{name}`: outbound_auth writes the upstream's Authorization, and removes it without one")
    };
    assert_eq!(
        errors(&with_request_transformation(
            "      set_headers:\n        Authorization: \"Bearer fixed\"\n"
        )),
        vec![error(9, 9, &message("Authorization"), allowed)]
    );
    assert_eq!(
        errors(&with_request_transformation(
            "      set_headers:\n        AUTHORIZATION: \"Basic c3ZjOnB3\"\n        X-Authorization: fine\n"
        )),
        vec![error(9, 9, &message("AUTHORIZATION"), allowed)]
    );
    // Removing the client's stays allowed.
    loaded(&with_request_transformation(
        "      remove_headers: [Authorization]\n",
    ));
}

/// httpoxy (CVE-2016-5385): the client's `Proxy` never reaches the
/// upstream, and no policy sends one either; removing it stays allowed.
#[test]
fn request_transformation_cannot_set_proxy() {
    let allowed =
        "a header other than Proxy; an upstream's outgoing proxy is its own configuration";
    assert_eq!(
        errors(&with_request_transformation(
            "      set_headers:\n        X-Proxy: fine\n        PROXY: \"http://cache.internal:3128\"\n"
        )),
        vec![error(
            10,
            9,
            "request_transformation cannot set `PROXY`: a CGI-style upstream reads it as HTTP_PROXY, the proxy of its own outgoing calls (httpoxy)",
            allowed
        )]
    );
    loaded(&with_request_transformation(
        "      remove_headers: [Proxy]\n",
    ));
}

/// A block scalar (`|`) ends in a line break: once refused by every
/// request at run time (401), now by the file.
#[test]
fn set_headers_literal_text_must_be_a_header_value() {
    let allowed = "visible ASCII text, spaces and tabs around the variables, no space or tab first or last (write a block scalar as `|-`)";
    assert_eq!(
        errors(&with_request_transformation(
            "      set_headers:\n        X-Env: |\n          prod\n        X-Tenant: \"t\\r-${request.authorization.clientId}\"\n        X-Ok: |-\n          prod\n        X-Mid: \"a b ${request.authorization.clientId} c\"\n        X-Lead: \" ${request.authorization.clientId}\"\n        X-Trail: \"${request.authorization.clientId}\\t\"\n        X-Utf: \"café\"\n"
        )),
        vec![
            error(
                10,
                11,
                "set_headers value `prod\\n` is not a valid header value",
                allowed
            ),
            error(
                11,
                19,
                "set_headers value `t\\r-${request.authorization.clientId}` is not a valid header value",
                allowed
            ),
            error(
                15,
                17,
                "set_headers value ` ${request.authorization.clientId}` is not a valid header value",
                allowed
            ),
            error(
                16,
                18,
                "set_headers value `${request.authorization.clientId}\\t` is not a valid header value",
                allowed
            ),
            error(
                17,
                16,
                "set_headers value `café` is not a valid header value",
                allowed
            ),
        ]
    );
}

#[test]
fn set_headers_naming_one_header_twice_in_any_spelling_is_refused() {
    let allowed = "each header once, in any spelling (case, `-`, `_` and `.` alike)";
    assert_eq!(
        errors(&with_request_transformation(
            "      set_headers:\n        X-User: a\n        x-user: b\n        X_User: c\n        X-Other: d\n"
        )),
        vec![
            error(
                10,
                9,
                "set_headers names `x-user` twice (also as `X-User`)",
                allowed
            ),
            error(
                11,
                9,
                "set_headers names `X_User` twice (also as `X-User`)",
                allowed
            ),
        ]
    );
}

/// `Access-Control-Allow-Origin: null` with credentials, set on every
/// answer, would open the API to any sandboxed page past every CORS rule.
#[test]
fn response_transformation_cannot_set_cors_fields() {
    let yaml = "apis:\n- name: A\n  upstream: { echo: true }\n  authentication: { type: none }\n  resources: [\"GET /a\"]\n  policies:\n    response_transformation:\n      set_headers:\n        Access-Control-Allow-Origin: \"null\"\n        access-control-allow-credentials: \"true\"\n        Cache-Control: no-store\n      remove_headers: [Access-Control-Allow-Origin]\n";
    let allowed = "a header outside Access-Control-*; the CORS fields come from policies.cors";
    assert_eq!(
        errors(yaml),
        vec![
            error(
                9,
                9,
                "response_transformation cannot set `Access-Control-Allow-Origin`",
                allowed
            ),
            error(
                10,
                9,
                "response_transformation cannot set `access-control-allow-credentials`",
                allowed
            ),
        ]
    );
    loaded("apis:\n- name: A\n  upstream: { echo: true }\n  authentication: { type: none }\n  resources: [\"GET /a\"]\n  policies:\n    response_transformation:\n      remove_headers: [Access-Control-Allow-Origin]\n");
}

/// `Date` is the clock's: a value written once would go out on every
/// answer. Removing it stays allowed.
#[test]
fn response_transformation_cannot_set_date() {
    let yaml = "apis:\n- name: A\n  upstream: { echo: true }\n  authentication: { type: none }\n  resources: [\"GET /a\"]\n  policies:\n    response_transformation:\n      set_headers:\n        Date: yesterday\n      remove_headers: [date]\n";
    assert_eq!(
        errors(yaml),
        vec![error(
            9,
            9,
            "response_transformation cannot set `Date`: one fixed date would go out on every answer",
            "leave Date to the upstream's clock and the gateway's"
        )]
    );
}

// ------------------------------------------------------------ stores in clear

const STORE_IN_CLEAR_ALLOWED: &str =
    "a host that is localhost, 127.0.0.0/8 or [::1], or `allow_insecure_store: true` beside the store";

/// `sslmode=disable` sends the store's password and every token it holds
/// over the network in clear: to loopback or a socket only, unless opted in.
#[test]
fn an_unencrypted_postgres_store_on_another_host_is_refused() {
    refused(
        "authorization_server:\n  store: \"postgres://mg:hunter2@db.internal:5432/gw?sslmode=disable\"\n",
        error(
            2,
            10,
            "authorization_server.store: `postgres://mg:****@db.internal:5432/gw?sslmode=disable` would carry the store's password and tokens unencrypted to a host that is not loopback",
            &format!("sslmode=verify-full (or require), {STORE_IN_CLEAR_ALLOWED}"),
        ),
    );
    let env = env(&[("PGPASSWORD", "pg-pw")]);
    for local in [
        "postgres://mg:${env:PGPASSWORD}@127.0.0.1/gw?sslmode=disable",
        "postgres://mg:${env:PGPASSWORD}@[::1]/gw?sslmode=disable",
        "postgres://mg@x/gw?sslmode=disable&host=/run/postgresql",
        "postgres://mg:${env:PGPASSWORD}@db.internal/gw?sslmode=require",
    ] {
        let loaded = loaded_with(
            &format!("authorization_server:\n  store: \"{local}\"\n"),
            &env,
        );
        assert!(loaded.warnings.is_empty(), "{local}: {:?}", loaded.warnings);
    }
    let allowed = loaded_with(
        "authorization_server:\n  store: \"postgres://mg:${env:PGPASSWORD}@db.internal/gw?sslmode=disable\"\n  allow_insecure_store: true\n",
        &env,
    );
    let warnings: Vec<String> = allowed.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":2:10: warning: authorization_server.store: `postgres://mg:****@db.internal:5432/gw?sslmode=disable` carries the store's password and tokens unencrypted (allow_insecure_store)"),
        "{}",
        warnings[0]
    );
}

/// `check` reads a Redis URL as `start` opens the store: what the Redis
/// client cannot read is refused, and its password is not shown.
#[test]
fn a_redis_url_the_redis_client_cannot_read_is_refused() {
    const MESSAGE: &str = "throttling.store: a URL the Redis client cannot read (a port or database that is no number, or a wildcard host such as 0.0.0.0)";
    const ALLOWED: &str = "memory, or redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… for TLS (or a \"${env:NAME}\" / \"${file:/path}\" holding it)";
    let throttled = "apis:\n- name: A\n  base_path: /a\n  upstream: { echo: true }\n  authentication: { type: none }\n  resources: [\"GET /a\"]\n  policies:\n    throttle: [{ limit: 5, per: 1s }]\n";
    for url in [
        "redis://127.0.0.1:notport/0",
        "redis://:hunter2@127.0.0.1:notport/0",
        "redis://127.0.0.1:6379/zero",
        "rediss://cache.example:6380/x",
        "redis://0.0.0.0:6379/0",
    ] {
        let findings = Config::new(&format!("throttling:\n  store: \"{url}\"\n{throttled}"))
            .load(&Env::new())
            .expect_err("the file is refused");
        let errors: Vec<Found> = findings
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(found)
            .collect();
        assert_eq!(errors, vec![error(2, 10, MESSAGE, ALLOWED)], "{url}");
        for finding in &findings {
            assert!(!finding.to_string().contains("hunter2"), "{finding}");
        }
    }
    loaded(&format!(
        "throttling:\n  store: \"redis://127.0.0.1:6379/0\"\n{throttled}"
    ));
}

/// `redis://` has no TLS: a password, in the URL or in `password`, goes to
/// another machine in clear unless opted in.
#[test]
fn a_redis_password_to_another_host_is_refused() {
    let message = |url: &str| {
        format!("throttling.store: `{url}` would carry the Redis password (redis:// has no TLS) unencrypted to a host that is not loopback")
    };
    let redis_allowed = format!("a rediss:// URL (TLS), {STORE_IN_CLEAR_ALLOWED}");
    assert_eq!(
        errors("throttling:\n  store: \"redis://:hunter2@cache.example:6379/0\"\n"),
        vec![error(
            2,
            10,
            &message("redis://****@cache.example:6379/0"),
            &redis_allowed
        )]
    );
    assert_eq!(
        errors("throttling:\n  store: redis://cache.example/0\n  password: hunter2\n"),
        vec![error(
            2,
            10,
            &message("redis://cache.example/0"),
            &redis_allowed
        )]
    );
    // An `@` in the query or the fragment names no host: the client goes to
    // the one in the authority.
    for (url, shown) in [
        (
            "redis://:hunter2@cache.example:6379/0?x=@127.0.0.1",
            "redis://****@cache.example:6379/0?x=****",
        ),
        (
            "redis://:hunter2@cache.example/?@localhost",
            "redis://****@cache.example/?****",
        ),
    ] {
        let found = errors(&format!("throttling:\n  store: \"{url}\"\n"));
        assert_eq!(found.len(), 1, "{url}: {found:?}");
        assert_eq!(found[0].2, message(shown), "{url}");
    }
    for fine in [
        "throttling:\n  store: redis://cache.example/0\n",
        "throttling:\n  store: redis://127.0.0.1/0\n  password: hunter2\n",
        "throttling:\n  store: \"redis://:hunter2@localhost:6379/0\"\n",
        "throttling:\n  store: \"rediss://:hunter2@cache.example:6380/0\"\n",
        "throttling:\n  store: rediss://cache.example/0\n  password: hunter2\n",
    ] {
        let loaded = loaded(fine);
        assert!(loaded.warnings.is_empty(), "{fine}: {:?}", loaded.warnings);
    }
    let allowed = loaded(
        "throttling:\n  store: redis://cache.example/0\n  password: hunter2\n  allow_insecure_store: true\n",
    );
    let warnings: Vec<String> = allowed.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].ends_with(":2:10: warning: throttling.store: `redis://cache.example/0` carries the Redis password (redis:// has no TLS) unencrypted (allow_insecure_store)"),
        "{}",
        warnings[0]
    );
}

/// `rediss://` is TLS, verified: a `ca_bundle` is for it alone, and the
/// client's `#insecure` (no verification) is refused.
#[test]
fn a_tls_store_is_verified_and_its_ca_bundle_is_for_it_alone() {
    let config =
        Config::new("throttling:\n  store: \"redis://127.0.0.1/0\"\n  ca_bundle: redis-ca.pem\n");
    config.file("redis-ca.pem", "not read");
    let errors_of = |config: &Config| -> Vec<Found> {
        let findings = config.load(&Env::new()).expect_err("the file is refused");
        findings
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(found)
            .collect()
    };
    assert_eq!(
        errors_of(&config),
        vec![error(
            3,
            14,
            "throttling.ca_bundle: set, but the store is redis:// (no TLS)",
            "ca_bundle only with a rediss:// store"
        )]
    );
    assert_eq!(
        errors("throttling:\n  store: \"rediss://cache.example:6380/0#insecure\"\n"),
        vec![error(
            2,
            10,
            "throttling.store: a `#` fragment (`#insecure` would not verify the server's certificate)",
            "memory, or redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… for TLS (or a \"${env:NAME}\" / \"${file:/path}\" holding it)"
        )]
    );
    let config = Config::new(
        "throttling:\n  store: \"rediss://cache.example:6380/0\"\n  ca_bundle: redis-ca.pem\n",
    );
    config.file(
        "redis-ca.pem",
        "-----BEGIN CERTIFICATE-----\nbm90\n-----END CERTIFICATE-----\n",
    );
    let refused = errors_of(&config);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].2.ends_with("holds no usable CA certificate"),
        "{refused:?}"
    );
    // With the memory store (named, or the default) a bundle is a mistake
    // too; a store URL refused for itself brings no second error.
    for memory in ["  store: memory\n", ""] {
        let config = Config::new(&format!(
            "throttling:\n{memory}  ca_bundle: redis-ca.pem\n  password: hunter2\n"
        ));
        let at = if memory.is_empty() { 2 } else { 3 };
        assert_eq!(
            errors_of(&config),
            vec![
                error(
                    at,
                    14,
                    "throttling.ca_bundle: set, but the store is memory",
                    "ca_bundle only with a rediss:// store"
                ),
                error(
                    at + 1,
                    13,
                    "throttling.password: set, but the store is memory",
                    "password only with a redis:// store"
                ),
            ],
            "{memory:?}"
        );
    }
    let refused = errors("throttling:\n  store: \"ftp://cache.example\"\n  password: hunter2\n");
    assert_eq!(refused.len(), 1, "{refused:?}");
}

// ------------------------------------------------------------ signing key

/// `check` judges an existing `signing_key` file with the function the
/// authorization server reads it with: what `start` would refuse, `check`
/// refuses, at the key's position (or the section's, for the default path).
#[test]
fn a_signing_key_file_that_is_no_key_is_refused() {
    let allowed = "a PEM RSA (2048+ bits) or P-256/P-384 PKCS#8 private key, or no file (one is generated on first start)";
    let config = Config::new("authorization_server:\n  issuer: \"http://localhost:4485\"\n  signing_key: keys/signing.pem\n");
    let path = config.file(
        "keys/signing.pem",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    let refused_key: Vec<Found> = config
        .load(&Env::new())
        .expect_err("a broken key is refused")
        .iter()
        .map(found)
        .collect();
    let broken = |line, column, path: &Path| {
        error(
            line,
            column,
            &format!(
                "signing_key: {} is not a PEM RSA (2048+ bits) or P-256/P-384 PKCS#8 private key",
                path.display()
            ),
            allowed,
        )
    };
    assert_eq!(refused_key, vec![broken(3, 16, &path)]);

    let key = rcgen::KeyPair::generate().expect("P-256 key");
    std::fs::write(&path, key.serialize_pem()).expect("write key");
    config
        .load(&Env::new())
        .expect("a P-256 PKCS#8 key is taken");
    std::fs::remove_file(&path).expect("remove key");
    config
        .load(&Env::new())
        .expect("a missing key is generated at start");

    let default = Config::new("authorization_server:\n  issuer: \"http://localhost:4485\"\n");
    let path = default.file("data/signing-key.pem", "not a key\n");
    let refused_default: Vec<Found> = default
        .load(&Env::new())
        .expect_err("a broken default key is refused")
        .iter()
        .map(found)
        .collect();
    assert_eq!(refused_default, vec![broken(2, 3, &path)]);

    // With PostgreSQL the keys live in the database: the file is not read.
    let postgres = Config::new(
        "authorization_server:\n  store: \"postgres://mg@127.0.0.1/gw?sslmode=disable\"\n",
    );
    postgres.file("data/signing-key.pem", "not a key\n");
    postgres.load(&Env::new()).expect("the file is not used");
}

/// An ID token of the issuer is a `typ: JWT` too: admitting that `typ`
/// without an audience lets it pass for an access token. Said, not refused.
#[test]
fn accept_jwt_typ_without_an_audience_is_warned_about() {
    let server = |audience: &str| {
        format!(
            "security_settings:\n  auth_servers:\n  - id: idp\n    name: idp\n    localIntrospectionConfig:\n      issuer: \"https://idp.example\"\n      jwksuri: \"https://idp.example/jwks\"\n      accept_jwt_typ: true\n{audience}"
        )
    };
    let warnings = |yaml: &str| -> Vec<String> {
        loaded(yaml)
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let without = warnings(&server(""));
    assert_eq!(without.len(), 1, "{without:#?}");
    assert!(
        without[0].ends_with(":8:23: warning: accept_jwt_typ: true without an audience: the issuer's ID tokens (typ JWT) pass as access tokens on resources that need no scope"),
        "{}",
        without[0]
    );
    let with = warnings(&server("      audience: travels\n"));
    assert!(with.is_empty(), "{with:#?}");
}

/// An auth server that reads this instance's own tokens with an audience
/// they do not carry accepts none of them: said by `check`, not left to
/// the first caller's 401.
#[test]
fn an_audience_other_than_the_own_authorization_servers_is_warned_about() {
    let yaml = |audience: &str| {
        format!(
            r#"authorization_server:
  issuer: "http://localhost:4485"
  audience: travels
security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: {{ issuer: "http://localhost:4485/", audience: "{audience}" }}
"#
        )
    };
    let warnings: Vec<Found> = loaded(&yaml("travels/"))
        .warnings
        .iter()
        .map(found)
        .collect();
    assert_eq!(
        warnings,
        vec![(
            7,
            77,
            "audience `travels/` is not authorization_server.audience `travels`, which this instance's tokens carry: none of them is accepted".to_owned(),
            None
        )]
    );
    let matching = loaded(&yaml("travels"));
    assert!(matching.warnings.is_empty(), "{:?}", matching.warnings);
    // Without an audience of its own, its tokens carry its issuer.
    let unnamed = |audience: &str| {
        loaded(&yaml(audience).replace("  audience: travels\n", ""))
            .warnings
            .iter()
            .map(found)
            .collect::<Vec<Found>>()
    };
    assert_eq!(
        unnamed("travels"),
        vec![(
            6,
            77,
            "audience `travels` is not the audience of this instance's tokens \
             (authorization_server.audience left out: its issuer) `http://localhost:4485`, \
             which this instance's tokens carry: none of them is accepted"
                .to_owned(),
            None
        )]
    );
    assert!(unnamed("http://localhost:4485").is_empty());
}

/// A scope without resources grants nothing: its resources were most
/// likely written elsewhere (under `resources:`, open to any valid token).
#[test]
fn an_api_scope_without_resources_is_warned_about() {
    let yaml = format!(
        r#"apis:
- name: A
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: local }}
  scopes:
  - name: admin
  resources: ["GET /admin"]
{AUTH_SERVER_LAST}"#
    );
    let warnings: Vec<Found> = loaded(&yaml).warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            6,
            5,
            "API scope `admin` has no resources; granting it allows nothing".to_owned(),
            None
        )]
    );
}

/// The gateway writes `X-Request-Id` and the `RateLimit` fields on an
/// answer after its response transformation: a value set there is
/// replaced, which `check` says.
#[test]
fn response_fields_the_gateway_writes_itself_are_warned_about() {
    let yaml = |forwarding: &str, throttle: &str| {
        format!(
            r#"{forwarding}apis:
- name: A
  upstream: {{ echo: true }}
  authentication: {{ type: none }}
  resources: ["GET /a"]
  policies:
    response_transformation:
      set_headers: {{ X-Request-Id: mine, RateLimit: "x", ratelimit-policy: "y", Cache-Control: no-store }}
      remove_headers: [x-request-id, RateLimit-Policy, Server]
{throttle}"#
        )
    };
    let warnings = |yaml: &str| -> Vec<Found> { loaded(yaml).warnings.iter().map(found).collect() };
    let overwritten = |column: u64, name: &str, by: &str| -> Found {
        (
            8,
            column,
            format!("response_transformation sets `{name}`, which the gateway writes {by}: its own value replaces this one"),
            None,
        )
    };
    let throttled = "    throttle: [{ limit: 10, per: 1s }]\n";
    assert_eq!(
        warnings(&yaml("", throttled)),
        vec![
            overwritten(
                22,
                "X-Request-Id",
                "on every answer (forwarding.request_id)"
            ),
            overwritten(
                42,
                "RateLimit",
                "on the answers its throttle policies count"
            ),
            overwritten(
                58,
                "ratelimit-policy",
                "on the answers its throttle policies count"
            ),
            (
                9,
                24,
                "response_transformation removes `x-request-id`, which the gateway writes on every answer (forwarding.request_id), after the transformation: it stays (forwarding.request_id: false sends none, to the upstream either)".to_owned(),
                None,
            ),
            (
                9,
                38,
                "response_transformation removes `RateLimit-Policy`, which the gateway writes on the answers its throttle policies count, after the transformation: it stays (the throttle policies tell every client its quota)".to_owned(),
                None,
            ),
        ]
    );
    assert_eq!(
        warnings(&yaml("forwarding: { request_id: false }\n", "")),
        vec![],
        "no X-Request-Id made, no throttle: nothing replaces them"
    );
}

/// An API whose transport names only ports `ports` does not set is
/// served nowhere: warned about (a central's APIs may name a port a
/// follower does not open), at its `transport`.
#[test]
fn a_transport_naming_only_unset_ports_is_warned_about() {
    let yaml = |ports: &str, transport: &str| {
        format!(
            "{ports}apis:\n- name: A\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /a\"]\n  transport: {transport}\n"
        )
    };
    let warnings = |yaml: &str| -> Vec<Found> { loaded(yaml).warnings.iter().map(found).collect() };
    let nowhere = |line: u64, on: &str| -> Vec<Found> {
        vec![(
            line,
            14,
            format!("the API is served on no port: its transport would serve it on {on}, which `ports` does not set"),
            None,
        )]
    };
    assert_eq!(
        warnings(&yaml("ports: { http: 0 }\n", "[https]")),
        nowhere(7, "ports.https")
    );
    assert_eq!(
        warnings(&yaml("", "[http, https]")),
        nowhere(6, "ports.http and ports.https")
    );
    assert_eq!(
        warnings(&yaml("ports: { http: 0 }\n", "[http, https]")),
        vec![]
    );
    assert_eq!(warnings(&yaml("ports: { http: 0 }\n", "[http]")), vec![]);
}

/// An API's default base path holds its name and version as segments:
/// one with `/` is encoded (`%2F`), which requests may not hold, so no
/// request reaches the API.
#[test]
fn a_name_no_default_base_path_can_hold_is_refused() {
    let api = |name: &str, more: &str| {
        format!(
            "apis:\n- name: {name}\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /a\"]\n{more}"
        )
    };
    let allowed = |key: &str| {
        format!("a `base_path`, or a {key} without `/` or `\\` that is not `.` or `..`")
    };
    refused(
        &api("\"a/b\"", ""),
        error(
            2,
            9,
            "API name `a/b` makes a default base path no request can reach (`/gateway/a%2Fb/1.0`)",
            &allowed("name"),
        ),
    );
    refused(
        &api("\"..\"", ""),
        error(
            2,
            9,
            "API name `..` makes a default base path no request can reach (`/gateway/../1.0`)",
            &allowed("name"),
        ),
    );
    refused(
        &api("A", "  version: \"1/2\"\n"),
        error(
            6,
            12,
            "API version `1/2` makes a default base path no request can reach (`/gateway/A/1%2F2`)",
            &allowed("version"),
        ),
    );
    refused(
        &api("\"\"", "  base_path: /a\n"),
        error(2, 9, "API name is empty", "a name such as `Time travels`"),
    );
    refused(
        &api("\"  \"", ""),
        error(2, 9, "API name is empty", "a name such as `Time travels`"),
    );
    loaded(&api("\"a/b\"", "  base_path: /ab\n"));
    loaded(&api("\"a/b\"", "  allow_encoded_slashes: true\n"));
}

/// RFC 7235 §3.1: an API's 401 carries `WWW-Authenticate` with its name
/// as the realm, and no field value holds a control character.
#[test]
fn an_api_name_with_a_control_character_is_refused() {
    let api = |name: &str, more: &str| {
        format!(
            "apis:\n- name: {name}\n  upstream: {{ echo: true }}\n  authentication: {{ type: none }}\n  resources: [\"GET /a\"]\n{more}"
        )
    };
    const ALLOWED: &str = "a name without control characters, such as `Time travels`";
    for (written, shown) in [
        (r#""Time\ttravels""#, "Time\\ttravels"),
        (r#""Time\ntravels""#, "Time\\ntravels"),
        (r#""Time\u007ftravels""#, "Time\\u{7f}travels"),
        (r#""Time\u0085travels""#, "Time\\u{85}travels"),
    ] {
        for more in ["  base_path: /t\n", ""] {
            refused(
                &api(written, more),
                error(
                    2,
                    9,
                    &format!(
                        "API name `{shown}` contains a control character: its 401 could not name it as the realm"
                    ),
                    ALLOWED,
                ),
            );
        }
    }
    // A quote or a backslash is escaped in the realm's quoted string.
    loaded(&api(r#""Say \"hi\" \\ café""#, "  base_path: /t\n"));
}

#[test]
fn an_empty_auth_server_id_is_refused() {
    refused(
        "security_settings:\n  auth_servers:\n  - id: \"\"\n    localIntrospectionConfig: { issuer: \"https://idp.example\" }\n",
        error(
            3,
            9,
            "auth server id is empty",
            "an id such as `local`, which an API's `auth_server` names",
        ),
    );
}

/// A fragment is never part of a request (RFC 9110 §4.2.5): an upstream
/// URL with one is refused, not taken with it silently dropped.
#[test]
fn an_upstream_url_with_a_fragment_is_refused() {
    for (upstream, column, key) in [
        ("{ url: \"http://h.example/api#f\" }", 20, "upstream.url"),
        (
            "{ endpoints: [{ url: \"http://h.example/api#\" }] }",
            34,
            "upstream.endpoints[].url",
        ),
    ] {
        // As shown: what follows `#` may be a secret, and is masked.
        let url = "http://h.example/api#****";
        refused(
            &format!(
                "apis:\n- name: A\n  upstream: {upstream}\n  authentication: {{ type: none }}\n  resources: [\"GET /a\"]\n"
            ),
            error(
                3,
                column,
                &format!("{key} `{url}` has a fragment (`#…`), which is never sent to the upstream"),
                "http://host[:port]/path or https://…, without `#` (`%23` in a path)",
            ),
        );
    }
}

/// An upstream URL with a query is refused without showing its values
/// (an API key often travels there).
#[test]
fn an_upstream_url_with_a_query_is_refused_its_values_unshown() {
    refused(
        "apis:\n- name: A\n  upstream: { url: \"https://h.example/api?key=s3cret\" }\n  authentication: { type: none }\n  resources: [\"GET /a\"]\n",
        error(
            3,
            20,
            "upstream.url `https://h.example/api?key=****` is not an http(s) URL without query",
            "http://host[:port]/path or https://…",
        ),
    );
}

/// `per_application` where no credential identifies a caller counts every
/// request alike: one counter one client can use up for all, warned about.
#[test]
fn per_application_throttling_on_an_api_that_identifies_nobody_is_warned_about() {
    let yaml = |authentication: &str| {
        format!(
            "apis:\n- name: A\n  base_path: /a\n  upstream: {{ echo: true }}\n  authentication: {authentication}\n  resources: [\"GET /a\"]\n  policies:\n    throttle: [{{ limit: 5, per: 1s, per_application: true }}]\napplications:\n- name: P\n  api_keys: [\"a-key-of-sixteen-chars\"]\n  apis: [A]\n"
        )
    };
    let none = loaded(&yaml("{ type: none }"));
    let warnings: Vec<Found> = none.warnings.iter().map(found).collect();
    assert_eq!(
        warnings,
        vec![(
            8,
            54,
            "throttle.per_application on an API with `authentication: none`: no caller is \
             identified, so every request shares one counter"
                .to_owned(),
            None,
        )]
    );
    let keys = loaded(&yaml("{ type: api_key }"));
    assert!(keys.warnings.is_empty(), "{:?}", keys.warnings);
}
