//! Hot reload: file changes in every way editors and Kubernetes make them,
//! refused changes that leave the last good configuration serving, reloads
//! on demand, requests under load and in flight, and no snapshot left behind.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, Upstream};
use microgateway::reload::Source;

/// Deadline for anything the watcher does (debounce and settle take
/// ~150 ms; test machines can be slow and busy).
const DEADLINE: Duration = Duration::from_secs(20);

const ADMIN: (&str, &str) = ("Administrator", "manage");

/// An API on the echo upstream that sets `X-Mode: {mode}` on the way.
fn echo_yaml(mode: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1, user: {user}, password: {password} }}
apis:
- name: echo
  version: "1"
  base_path: /echo
  upstream: {{ echo: true }}
  authentication: {{ type: none }}
  resources: ["GET /ping", "POST /ping"]
  policies:
    request_transformation:
      set_headers: {{ X-Mode: "{mode}" }}
"#,
        user = ADMIN.0,
        password = ADMIN.1,
    )
}

/// An API forwarding `resources` to `upstream`.
fn upstream_yaml(upstream: &Upstream, resources: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: travels
  version: "1"
  base_path: /travels
  upstream: {{ url: "{}" }}
  authentication: {{ type: none }}
  resources: [{resources}]
"#,
        upstream.url("/api")
    )
}

/// The `X-Mode` the echo upstream saw.
async fn mode(gw: &Gateway) -> String {
    let resp = gw.get("/echo/ping").await;
    assert_eq!(resp.status(), 200);
    mode_of(&resp.json::<serde_json::Value>().await.expect("echo JSON"))
}

fn mode_of(echo: &serde_json::Value) -> String {
    echo["headers"]["x-mode"].as_str().unwrap_or("").to_owned()
}

/// Waits until the serving generation is at least `generation`.
async fn applied(gw: &Gateway, generation: u64) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = gw.state().live.generation();
        if now >= generation {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "generation {generation} not reached (serving {now})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(gw: &Gateway) -> serde_json::Value {
    admin_json(gw, "/rest/microgateway/status").await
}

/// The JSON of an admin `GET`, with the admin credentials.
async fn admin_json(gw: &Gateway, path: &str) -> serde_json::Value {
    gw.client
        .get(gw.admin_url(path))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .expect(path)
        .json()
        .await
        .expect("JSON")
}

/// Waits until status shows a reload error and returns it.
async fn refused(gw: &Gateway) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(error) = status(gw).await["last_reload_error"].as_str() {
            return error.to_owned();
        }
        assert!(Instant::now() < deadline, "no reload error reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `microgateway_config_reload_total{source="file",result="error"}`.
async fn file_reload_errors(gw: &Gateway) -> u64 {
    let text = gw
        .client
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("microgateway_config_reload_total{"))
        .filter(|l| l.contains(r#"source="file""#) && l.contains(r#"result="error""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Whether `error` points into the configuration file as `FILE:LINE:COL:`.
fn has_position(error: &str, file: &str) -> bool {
    error.match_indices(file).any(|(at, _)| {
        let mut parts = error[at + file.len()..].splitn(4, ':');
        parts.next() == Some("")
            && parts.next().is_some_and(is_number)
            && parts.next().is_some_and(is_number)
    })
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Asserts that a refused change left the first configuration serving.
async fn assert_refused(gw: &Gateway, errors_before: u64) -> String {
    let error = refused(gw).await;
    assert_eq!(gw.state().live.generation(), 1);
    assert!(file_reload_errors(gw).await > errors_before);
    error
}

#[tokio::test]
async fn new_resource_is_served_after_a_change() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&upstream_yaml(&upstream, r#""GET /a""#)).await;
    assert_eq!(gw.get("/travels/b").await.status(), 404);
    gw.write_config(&upstream_yaml(&upstream, r#""GET /a", "GET /b""#));
    applied(&gw, 2).await;
    assert_eq!(gw.get("/travels/b").await.status(), 200);
    assert_eq!(upstream.last().uri, "/api/b");
    gw.shutdown().await;
}

/// A keep-alive HTTP/1.1 connection pins nothing of the snapshot it was
/// opened under: each request takes the serving one, so the next request
/// on the same connection after a reload meets the new configuration.
#[tokio::test]
async fn a_keep_alive_connection_serves_its_next_request_on_the_new_snapshot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&upstream_yaml(&upstream, r#""GET /a", "GET /b""#)).await;
    let mut tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let mut exchange = async |path: &str| {
        let head = format!("GET /travels/{path} HTTP/1.1\r\nhost: gw\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0; 4096];
        // Answers here are short: a head and a body in one read or two.
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
                .await
                .expect("an answer in time")
                .unwrap();
            assert!(n > 0, "the connection was closed");
            answer.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        let length: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        while answer.len() < head_end + length {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection was closed");
            answer.extend_from_slice(&buf[..n]);
        }
        text.lines().next().unwrap_or_default().to_owned()
    };
    assert_eq!(exchange("b").await, "HTTP/1.1 200 OK");
    gw.write_config(&upstream_yaml(&upstream, r#""GET /a""#));
    applied(&gw, 2).await;
    assert_eq!(exchange("b").await, "HTTP/1.1 404 Not Found");
    assert_eq!(exchange("a").await, "HTTP/1.1 200 OK");
    gw.shutdown().await;
}

#[tokio::test]
async fn changed_upstream_receives_the_requests() {
    let first = Upstream::start().await;
    let second = Upstream::start().await;
    let gw = Gateway::start(&upstream_yaml(&first, r#""GET /a""#)).await;
    assert_eq!(gw.get("/travels/a").await.status(), 200);
    gw.write_config(&upstream_yaml(&second, r#""GET /a""#));
    applied(&gw, 2).await;
    assert_eq!(gw.get("/travels/a").await.status(), 200);
    assert_eq!((first.hits(), second.hits()), (1, 1));
    gw.shutdown().await;
}

fn scoped_yaml(token_scope: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: local
    name: local
    localIntrospectionConfig:
      issuer: "http://127.0.0.1:9/"
      jwksuri: "http://127.0.0.1:9/jwks"
scope_mappings:
- {{ auth_server: local, scope: {token_scope}, api_scopes: ["Time travels:ViewTickets"] }}
apis:
- name: "Time travels"
  version: "1.0"
  base_path: /travels
  upstream: {{ echo: true }}
  authentication: {{ type: oauth2, auth_server: local }}
  scopes:
  - name: ViewTickets
    resources: ["GET /bookings"]
"#
    )
}

fn outcome(gw: &Gateway, token_scope: &str) -> microgateway::policy::Outcome {
    let snapshot = gw.state().live.snapshot();
    let scopes = [token_scope.to_owned()];
    microgateway::policy::decide(
        &snapshot,
        &http::Method::GET,
        "/travels/bookings",
        Some(&scopes),
        None,
    )
    .outcome
}

#[tokio::test]
async fn changed_scope_mapping_decides_after_a_change() {
    use microgateway::policy::Outcome;
    let gw = Gateway::start(&scoped_yaml("view")).await;
    assert!(matches!(outcome(&gw, "view"), Outcome::Allow));
    assert!(matches!(outcome(&gw, "read"), Outcome::InsufficientScope));
    gw.write_config(&scoped_yaml("read"));
    applied(&gw, 2).await;
    assert!(matches!(outcome(&gw, "read"), Outcome::Allow));
    assert!(matches!(outcome(&gw, "view"), Outcome::InsufficientScope));
    assert_eq!(gw.get("/travels/bookings").await.status(), 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn truncate_then_write_is_applied_without_an_empty_generation() {
    use std::io::Write;
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let mut file = std::fs::File::create(&gw.config).expect("truncate");
    file.sync_all().expect("sync");
    // A slow writer: the empty file is there for longer than the debounce.
    tokio::time::sleep(Duration::from_millis(400)).await;
    file.write_all(echo_yaml("beta").as_bytes()).expect("write");
    drop(file);
    assert_eq!(applied(&gw, 2).await, 2);
    assert_eq!(mode(&gw).await, "beta");
    assert!(status(&gw).await["last_reload_error"].is_null());
    gw.shutdown().await;
}

#[tokio::test]
async fn write_to_temporary_then_rename_is_applied() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let temporary = gw.dir.path().join(".microgateway.yaml.swp");
    std::fs::write(&temporary, echo_yaml("beta")).expect("write temporary");
    std::fs::rename(&temporary, &gw.config).expect("rename");
    applied(&gw, 2).await;
    assert_eq!(mode(&gw).await, "beta");
    gw.shutdown().await;
}

#[tokio::test]
async fn deleted_then_recreated_config_is_applied() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    std::fs::remove_file(&gw.config).expect("delete");
    // Gone for longer than the debounce: the old configuration keeps serving.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(mode(&gw).await, "alpha");
    std::fs::write(&gw.config, echo_yaml("beta")).expect("recreate");
    assert_eq!(applied(&gw, 2).await, 2);
    assert_eq!(mode(&gw).await, "beta");
    assert!(status(&gw).await["last_reload_error"].is_null());
    gw.shutdown().await;
}

#[cfg(unix)]
/// Writes a ConfigMap revision `..{name}` holding `microgateway.yaml`.
fn configmap_revision(dir: &Path, name: &str, yaml: &str) {
    let revision = dir.join(format!("..{name}"));
    std::fs::create_dir(&revision).expect("revision dir");
    std::fs::write(revision.join("microgateway.yaml"), yaml).expect("revision file");
}

#[cfg(unix)]
/// Points `..data` at `..{name}` the way the kubelet does: a new symlink
/// renamed over the old one, then the old revision removed.
fn configmap_swap(dir: &Path, name: &str, old: &str) {
    let temporary = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{name}"), &temporary).expect("symlink");
    std::fs::rename(&temporary, dir.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(dir.join(format!("..{old}"))).expect("remove old revision");
}

#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_is_applied() {
    common::crypto();
    let dir = tempfile::tempdir().expect("temp dir");
    configmap_revision(dir.path(), "v1", &echo_yaml("alpha"));
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).expect("..data");
    let config = dir.path().join("microgateway.yaml");
    std::os::unix::fs::symlink("..data/microgateway.yaml", &config).expect("link");
    let inner = microgateway::gateway::Gateway::start(&config, common::Env::new())
        .await
        .expect("gateway starts");
    let gw = Gateway {
        http: inner.http.expect("http"),
        admin: inner.admin,
        inner: Some(inner),
        config,
        dir,
        client: common::client(),
    };
    assert_eq!(mode(&gw).await, "alpha");

    configmap_revision(gw.dir.path(), "v2", &echo_yaml("beta"));
    configmap_swap(gw.dir.path(), "v2", "v1");
    applied(&gw, 2).await;
    assert_eq!(mode(&gw).await, "beta");

    configmap_revision(gw.dir.path(), "v3", &echo_yaml("gamma"));
    configmap_swap(gw.dir.path(), "v3", "v2");
    applied(&gw, 3).await;
    assert_eq!(mode(&gw).await, "gamma");
    gw.shutdown().await;
}

/// Waits for `generation`, and checks that it serves `X-Mode: expected`.
async fn applied_with_mode(gw: &Gateway, generation: u64, expected: &str) {
    applied(gw, generation).await;
    assert_eq!(mode(gw).await, expected);
}

/// Starts a gateway on `config`, a file somewhere under `dir` written
/// beforehand (through symlinks, say).
async fn start_at(dir: tempfile::TempDir, config: std::path::PathBuf) -> Gateway {
    common::crypto();
    let inner = microgateway::gateway::Gateway::start(&config, common::Env::new())
        .await
        .unwrap_or_else(|e| panic!("gateway did not start:\n{e}"));
    Gateway {
        http: inner.http.expect("http"),
        admin: inner.admin,
        inner: Some(inner),
        config,
        dir,
        client: common::client(),
    }
}

/// The configuration's directory replaced by another (`rm -r conf && mv
/// conf.new conf`): the change is applied, and so is the next edit made in
/// the new directory, whose path the watch on the old one no longer follows.
#[tokio::test]
async fn an_edit_in_a_replaced_configuration_directory_is_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).expect("conf");
    std::fs::write(conf.join("microgateway.yaml"), echo_yaml("alpha")).expect("write");
    let gw = start_at(dir, conf.join("microgateway.yaml")).await;
    assert_eq!(mode(&gw).await, "alpha");

    let next = gw.dir.path().join("conf.new");
    std::fs::create_dir(&next).expect("conf.new");
    std::fs::write(next.join("microgateway.yaml"), echo_yaml("beta")).expect("write");
    std::fs::remove_dir_all(&conf).expect("remove conf");
    std::fs::rename(&next, &conf).expect("rename");
    applied_with_mode(&gw, 2, "beta").await;

    gw.write_config(&echo_yaml("gamma"));
    applied_with_mode(&gw, 3, "gamma").await;
    gw.shutdown().await;
}

#[cfg(unix)]
/// A volume as the kubelet lays out one whose key has a nested path
/// (`items: [{ key: …, path: conf/microgateway.yaml }]`): `conf ->
/// ..data/conf`, `..data -> ..{name}`.
fn nested_volume_revision(dir: &Path, name: &str, yaml: &str) {
    let conf = dir.join(format!("..{name}")).join("conf");
    std::fs::create_dir_all(&conf).expect("revision dir");
    std::fs::write(conf.join("microgateway.yaml"), yaml).expect("revision file");
}

#[cfg(unix)]
/// Every update of a volume whose configuration sits in a directory of
/// its own swaps that directory (through `..data`): each is applied, not
/// only the first.
#[tokio::test]
async fn every_update_of_a_volume_with_a_nested_path_is_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    nested_volume_revision(dir.path(), "v1", &echo_yaml("alpha"));
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/conf", dir.path().join("conf")).expect("conf");
    let config = dir.path().join("conf").join("microgateway.yaml");
    let gw = start_at(dir, config).await;
    assert_eq!(mode(&gw).await, "alpha");

    for (generation, (name, old, mode_now)) in [
        ("v2", "v1", "beta"),
        ("v3", "v2", "gamma"),
        ("v4", "v3", "delta"),
    ]
    .into_iter()
    .enumerate()
    {
        nested_volume_revision(gw.dir.path(), name, &echo_yaml(mode_now));
        configmap_swap(gw.dir.path(), name, old);
        applied_with_mode(&gw, generation as u64 + 2, mode_now).await;
    }
    gw.shutdown().await;
}

#[cfg(unix)]
/// A configuration under a `current` symlink to a release directory: the
/// symlink swapped to another release is a change, and so is a later edit
/// in the release it now names.
#[tokio::test]
async fn a_swapped_release_symlink_and_an_edit_after_it_are_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (release, mode_then) in [("v1", "alpha"), ("v2", "beta")] {
        std::fs::create_dir(dir.path().join(release)).expect("release");
        let file = dir.path().join(release).join("microgateway.yaml");
        std::fs::write(file, echo_yaml(mode_then)).expect("write");
    }
    std::os::unix::fs::symlink("v1", dir.path().join("current")).expect("current");
    let config = dir.path().join("current").join("microgateway.yaml");
    let gw = start_at(dir, config).await;
    assert_eq!(mode(&gw).await, "alpha");

    let temporary = gw.dir.path().join("current.tmp");
    std::os::unix::fs::symlink("v2", &temporary).expect("symlink");
    std::fs::rename(&temporary, gw.dir.path().join("current")).expect("swap current");
    applied_with_mode(&gw, 2, "beta").await;

    gw.write_config(&echo_yaml("gamma"));
    applied_with_mode(&gw, 3, "gamma").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_yaml_is_refused_and_the_last_good_config_serves() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let errors = file_reload_errors(&gw).await;
    gw.write_config("apis:\n- name: echo\n  version: [unclosed\n");
    let error = assert_refused(&gw, errors).await;
    assert!(has_position(&error, "microgateway.yaml"), "{error}");
    assert_eq!(mode(&gw).await, "alpha");
    gw.write_config(&echo_yaml("beta"));
    applied(&gw, 2).await;
    assert_eq!(mode(&gw).await, "beta");
    assert!(status(&gw).await["last_reload_error"].is_null());
    gw.shutdown().await;
}

#[tokio::test]
async fn undefined_auth_server_is_refused_with_its_position() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let errors = file_reload_errors(&gw).await;
    let broken = echo_yaml("beta").replace(
        "authentication: { type: none }",
        "authentication: { type: oauth2, auth_server: nowhere }",
    );
    gw.write_config(&broken);
    let error = assert_refused(&gw, errors).await;
    assert!(error.contains("nowhere"), "{error}");
    assert!(has_position(&error, "microgateway.yaml"), "{error}");
    assert_eq!(mode(&gw).await, "alpha");
    gw.shutdown().await;
}

/// A value the compiler cannot take (a token lifetime of 2^64 − 1
/// seconds) is a refused reload, never the end of the watcher: the next
/// edit is applied.
#[tokio::test]
async fn a_value_the_compiler_cannot_take_is_refused_and_the_watcher_goes_on() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let errors = file_reload_errors(&gw).await;
    let huge = format!(
        "{}authorization_server:\n  token_lifetime: 18446744073709551615\n  clients:\n  - client_id: svc\n    client_secret: sixteen-chars-ok\n    grant_types: [client_credentials]\n",
        echo_yaml("beta")
    );
    gw.write_config(&huge);
    assert_refused(&gw, errors).await;
    assert_eq!(mode(&gw).await, "alpha");
    gw.write_config(&echo_yaml("gamma"));
    applied(&gw, 2).await;
    assert_eq!(mode(&gw).await, "gamma");
    gw.shutdown().await;
}

fn secret_yaml(upstream: &Upstream) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  aliases:
  - {{ name: backend, type: basic, username: svc, password: "${{file:backend.secret}}" }}
apis:
- name: travels
  version: "1"
  base_path: /travels
  upstream: {{ url: "{}" }}
  authentication: {{ type: none }}
  resources: ["GET /a"]
  policies:
    outbound_auth: {{ alias: backend }}
"#,
        upstream.url("/api")
    )
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

async fn upstream_authorization(gw: &Gateway, upstream: &Upstream) -> String {
    assert_eq!(gw.get("/travels/a").await.status(), 200);
    let last = upstream.last();
    let value = last.headers.get("authorization").expect("authorization");
    value.to_str().expect("ASCII").to_owned()
}

#[tokio::test]
async fn changed_file_secret_is_applied_with_the_same_config_text() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("backend.secret"), "one\n").expect("secret");
    let gw = start_in(dir, &secret_yaml(&upstream)).await;
    assert_eq!(
        upstream_authorization(&gw, &upstream).await,
        basic("svc", "one")
    );
    std::fs::write(gw.dir.path().join("backend.secret"), "two\n").expect("secret");
    applied(&gw, 2).await;
    assert_eq!(
        upstream_authorization(&gw, &upstream).await,
        basic("svc", "two")
    );
    gw.shutdown().await;
}

/// A configuration refused for a secret file that is not there yet is
/// taken once the file is written: the files a refused configuration
/// names are watched as well, though no snapshot names them.
#[tokio::test]
async fn a_configuration_refused_for_a_missing_secret_file_is_taken_once_the_file_is_written() {
    refused_until_the_secret_is_written("late.secret").await;
}

/// The same with the secret in a directory that is not there yet either:
/// the directory is watched as soon as it exists.
#[tokio::test]
async fn a_secret_in_a_directory_made_after_the_refusal_is_taken() {
    refused_until_the_secret_is_written("later/late.secret").await;
}

/// Changes the configuration to read its secret from `secret` (a path
/// under its directory, not there yet): refused; then writes it (and its
/// directory): taken.
async fn refused_until_the_secret_is_written(secret: &str) {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("backend.secret"), "one\n").expect("secret");
    let gw = start_in(dir, &secret_yaml(&upstream)).await;
    let errors = file_reload_errors(&gw).await;
    gw.write_config(&secret_yaml(&upstream).replace("backend.secret", secret));
    let error = assert_refused(&gw, errors).await;
    assert!(error.contains("late.secret"), "{error}");
    let path = gw.dir.path().join(secret);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("secret's directory");
    }
    std::fs::write(&path, "two\n").expect("secret");
    applied(&gw, 2).await;
    assert_eq!(
        upstream_authorization(&gw, &upstream).await,
        basic("svc", "two")
    );
    gw.shutdown().await;
}

/// A FIFO where a secret file was is refused as unreadable, at once: its
/// open would wait for a writer, and the watcher with it, for good (no
/// later change seen, and a shutdown waiting on the watcher). The file
/// put back is taken, and so is the next edit.
#[tokio::test]
async fn a_fifo_in_place_of_a_secret_is_refused_and_the_watcher_goes_on() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("backend.secret"), "one\n").expect("secret");
    let gw = start_in(dir, &secret_yaml(&upstream)).await;
    let errors = file_reload_errors(&gw).await;
    let secret = gw.dir.path().join("backend.secret");
    std::fs::remove_file(&secret).expect("remove the secret");
    common::mkfifo(&secret);
    let error = assert_refused(&gw, errors).await;
    assert!(error.contains("not a regular file"), "{error}");
    std::fs::remove_file(&secret).expect("remove the FIFO");
    std::fs::write(&secret, "two\n").expect("secret");
    applied(&gw, 2).await;
    assert_eq!(
        upstream_authorization(&gw, &upstream).await,
        basic("svc", "two")
    );
    gw.write_config(&secret_yaml(&upstream).replace("GET /a", "GET /b"));
    applied(&gw, 3).await;
    assert_eq!(gw.get("/travels/b").await.status(), 200);
    gw.shutdown().await;
}

/// Starts a gateway on `yaml` written to `dir/microgateway.yaml` (for
/// configurations that name files which must exist first).
async fn start_in(dir: tempfile::TempDir, yaml: &str) -> Gateway {
    let config = dir.path().join("microgateway.yaml");
    std::fs::write(&config, yaml).expect("write config");
    start_at(dir, config).await
}

#[tokio::test]
async fn certificate_replaced_by_garbage_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    std::fs::write(dir.path().join("server.crt"), generated.cert.pem()).expect("crt");
    std::fs::write(
        dir.path().join("server.key"),
        generated.signing_key.serialize_pem(),
    )
    .expect("key");
    let yaml = format!(
        "{}tls: {{ certificate: server.crt, key: server.key }}\n",
        echo_yaml("alpha")
    );
    let gw = start_in(dir, &yaml).await;
    let errors = file_reload_errors(&gw).await;
    std::fs::write(gw.dir.path().join("server.crt"), "garbage\n").expect("garbage");
    let error = assert_refused(&gw, errors).await;
    assert!(error.contains("server.crt"), "{error}");
    assert!(has_position(&error, "microgateway.yaml"), "{error}");
    assert_eq!(mode(&gw).await, "alpha");
    gw.shutdown().await;
}

#[tokio::test]
async fn save_without_changes_keeps_the_generation() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    gw.write_config(&echo_yaml("alpha"));
    // Nothing to wait for when nothing should happen: give the watcher
    // several debounce periods, then check nothing did.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.state().live.generation(), 1);
    gw.write_config(&echo_yaml("beta"));
    assert_eq!(applied(&gw, 2).await, 2);
    gw.write_config(&echo_yaml("beta"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(gw.state().live.generation(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_under_load_sees_the_old_or_the_new_config() {
    let gw = Arc::new(Gateway::start(&echo_yaml("alpha")).await);
    let errors = file_reload_errors(&gw).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let total = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (gw, stop, seen) = (gw.clone(), stop.clone(), seen.clone());
        let (failures, total) = (failures.clone(), total.clone());
        clients.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                total.fetch_add(1, Ordering::Relaxed);
                match gw.client.get(gw.url("/echo/ping")).send().await {
                    Ok(resp) if resp.status() == 200 => match resp.json().await {
                        Ok(echo) => {
                            let mode = mode_of(&echo);
                            if mode == "alpha" || mode == "beta" {
                                *seen.lock().unwrap().entry(mode).or_default() += 1;
                            } else {
                                failures.lock().unwrap().push(format!("mode {mode:?}"));
                            }
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    },
                    Ok(resp) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", resp.status())),
                    Err(e) => failures.lock().unwrap().push(e.to_string()),
                }
            }
        });
    }
    // 52 writes in about 6 s: a valid change, an invalid file, the valid
    // file again, and a save without changes, over and over; some of them
    // closer together than the debounce, most of them not.
    let mut current = "alpha";
    for round in 0..13 {
        let next = if round % 2 == 0 { "beta" } else { "alpha" };
        for (yaml, pause) in [
            (echo_yaml(next), 150),
            (format!("{}  bogus_key: [1\n", echo_yaml(next)), 150),
            (echo_yaml(next), 30),
            (echo_yaml(next), 120),
        ] {
            gw.write_config(&yaml);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        current = next;
    }
    let last = gw.state().live.generation() + 1;
    gw.write_config(&echo_yaml(if current == "alpha" {
        "beta"
    } else {
        "alpha"
    }));
    applied(&gw, last).await;
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}

    let failures = failures.lock().unwrap().clone();
    let seen = seen.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert_eq!(
        seen.values().sum::<usize>(),
        total.load(Ordering::Relaxed),
        "{seen:?}"
    );
    assert!(seen.len() == 2, "both configurations served: {seen:?}");
    assert!(gw.state().live.generation() >= 3);
    assert!(file_reload_errors(&gw).await > errors);
    if let Ok(gw) = Arc::try_unwrap(gw) {
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn request_in_flight_completes_across_a_reload_that_removes_its_api() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_millis(1500));
    let gw = Gateway::start(&upstream_yaml(&upstream, r#""GET /slow""#)).await;
    let request = gw.client.get(gw.url("/travels/slow")).send();
    let in_flight = tokio::spawn(request);
    let deadline = Instant::now() + DEADLINE;
    while upstream.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.write_config(
        "ports: { http: 0, bind: 127.0.0.1 }\nadmin: { port: 0, bind: 127.0.0.1 }\napis: []\n",
    );
    applied(&gw, 2).await;
    assert_eq!(gw.get("/travels/slow").await.status(), 404);
    let finished = in_flight.await.expect("join").expect("response");
    assert_eq!(finished.status(), 200);
    assert_eq!(finished.text().await.expect("body"), r#"{"ok":true}"#);
    gw.shutdown().await;
}

#[tokio::test]
async fn rest_reload_applies_at_once_and_reports_refusals() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let url = gw.admin_url("/rest/microgateway/reload");
    let anonymous = gw.client.post(&url).send().await.expect("reload");
    assert_eq!(anonymous.status(), 401);

    gw.write_config(&echo_yaml("beta"));
    let resp = gw
        .client
        .post(&url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert!(
        body["generation"].as_u64().is_some_and(|g| g >= 2),
        "{body}"
    );
    // Applied when the answer comes, whatever the file watcher does.
    assert_eq!(mode(&gw).await, "beta");

    gw.write_config("apis: {\n");
    let resp = gw
        .client
        .post(&url)
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status(), 422);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"], "invalid_configuration");
    assert!(status(&gw).await["last_reload_error"].is_string());
    assert_eq!(mode(&gw).await, "beta");
    gw.shutdown().await;
}

/// Waits until the echo upstream sees `X-Mode: {expected}`.
async fn serves(gw: &Gateway, expected: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = mode(gw).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{expected}` never served (serving `{now}`, generation {})",
            gw.state().live.generation()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A reload on demand reads the file as it is then; the file written
/// again right after, before the watcher looked (here back to what the
/// watcher saw at the start), is loaded too: the watcher compares the
/// files with what the serving snapshot was compiled from, not with what
/// it read itself.
#[tokio::test]
async fn a_file_edited_right_after_a_rest_reload_is_loaded() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    gw.write_config(&echo_yaml("beta"));
    let resp = gw
        .client
        .post(gw.admin_url("/rest/microgateway/reload"))
        .basic_auth(ADMIN.0, Some(ADMIN.1))
        .send()
        .await
        .expect("reload");
    assert_eq!(resp.status(), 200);
    gw.write_config(&echo_yaml("alpha"));
    serves(&gw, "alpha").await;
    assert!(gw.state().live.generation() >= 3);
    gw.shutdown().await;
}

/// The watcher settles on the files, then waits for the reload in
/// progress (the test holds it); meanwhile the secret is written, so the
/// compilation reads the new one. Written back after that, the secret is
/// what the watcher had settled on, but not what serves: it is loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::disallowed_methods,
    reason = "the test thread holds the reload lock while the watcher queues behind it"
)]
async fn a_secret_written_while_a_reload_waits_is_followed_to_its_last_content() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("backend.secret");
    std::fs::write(&secret, "one\n").expect("secret");
    let gw = start_in(dir, &secret_yaml(&upstream)).await;
    let live = gw.state().live.clone();

    let in_progress = live.one_reload_at_a_time();
    gw.write_config(&secret_yaml(&upstream).replace(r#""GET /a""#, r#""GET /a", "GET /b""#));
    let queued = Instant::now() + DEADLINE;
    while live.reloads_waiting() == 0 {
        assert!(Instant::now() < queued, "the watcher never reloaded");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::fs::write(&secret, "two\n").expect("secret");
    drop(in_progress);
    applied(&gw, 2).await;
    assert_eq!(
        upstream_authorization(&gw, &upstream).await,
        basic("svc", "two")
    );

    std::fs::write(&secret, "one\n").expect("secret");
    let deadline = Instant::now() + DEADLINE;
    while upstream_authorization(&gw, &upstream).await != basic("svc", "one") {
        assert!(
            Instant::now() < deadline,
            "the secret written back never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.get("/travels/b").await.status(), 200);
    drop(live);
    gw.shutdown().await;
}

#[tokio::test]
async fn thousand_reloads_leave_no_old_snapshot_behind() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let state = gw.state().clone();
    let first = Arc::downgrade(&state.live.snapshot());
    let first_api = Arc::downgrade(&state.live.snapshot().apis[0]);
    let mut sampled = Vec::new();
    for n in 0..1000 {
        if n % 100 == 0 {
            sampled.push(Arc::downgrade(&state.live.snapshot()));
        }
        state.reload(Source::Api).expect("valid configuration");
    }
    assert_eq!(state.live.generation(), 1001);
    // The file watcher may hold the serving snapshot for a moment; an old
    // one has no reason to live on.
    let deadline = Instant::now() + DEADLINE;
    let alive = || {
        first.strong_count()
            + first_api.strong_count()
            + sampled.iter().map(|w| w.strong_count()).sum::<usize>()
    };
    while alive() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} old snapshots or APIs still alive",
            alive()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mode(&gw).await, "alpha");
    drop(state);
    gw.shutdown().await;
}

/// A SIGHUP sent the moment the binary says it started reloads it: the
/// handlers are in place before anything listens (SIGHUP's default
/// disposition would end the process).
#[cfg(unix)]
#[tokio::test]
async fn a_sighup_the_moment_it_started_reloads_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("microgateway.yaml");
    std::fs::write(&config, echo_yaml("alpha")).expect("config");
    for round in 0..5 {
        let mut started = common::process::start(
            std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"))
                .args(["start", "-c"])
                .arg(&config),
        );
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &started.child.id().to_string()])
            .status()
            .expect("kill -HUP");
        assert!(hup.success());
        let admin = started.admin.expect("the bound admin address");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = started.child.try_wait().expect("its status") {
                panic!("round {round}: SIGHUP ended the process ({status})");
            }
            let generation = async {
                let resp = common::client()
                    .get(format!("http://{admin}/rest/microgateway/status"))
                    .basic_auth(ADMIN.0, Some(ADMIN.1))
                    .send()
                    .await
                    .ok()?;
                let status: serde_json::Value = resp.json().await.ok()?;
                status["generation"].as_u64()
            }
            .await;
            if generation == Some(2) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no reload ({generation:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("microgateway.yaml");
    std::fs::write(&config, echo_yaml("alpha")).expect("config");
    let started = common::process::start(
        std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"))
            .args(["start", "-c"])
            .arg(&config)
            .env("MCGW_LOG", "info"),
    );
    let admin = started.admin.expect("the bound admin address");
    let client = common::client();
    let status = |client: reqwest::Client| async move {
        let resp = client
            .get(format!("http://{admin}/rest/microgateway/status"))
            .basic_auth(ADMIN.0, Some(ADMIN.1))
            .send()
            .await
            .ok()?;
        resp.json::<serde_json::Value>().await.ok()
    };
    let deadline = Instant::now() + DEADLINE;
    while status(client.clone()).await.is_none() {
        assert!(Instant::now() < deadline, "the binary never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &started.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    // The file did not change: only the signal can make generation 2.
    loop {
        let generation = status(client.clone())
            .await
            .and_then(|s| s["generation"].as_u64());
        if generation == Some(2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload ({generation:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A reload holds the reload lock for all its work (files, compile, key
/// generation); the test holding it stands for a slow one. With a single
/// runtime worker, a REST reload queued behind it must wait on the
/// blocking pool, not on the worker: the admin port keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
#[allow(
    clippy::disallowed_methods,
    reason = "the test thread holds the reload lock; the gateway runs on the runtime worker"
)]
async fn a_reload_in_progress_never_holds_up_a_request() {
    let gw = Gateway::start(&echo_yaml("alpha")).await;
    let admin = gw.admin.expect("admin port");
    let live = gw.state().live.clone();
    let in_progress = live.one_reload_at_a_time();

    let reload = std::thread::spawn(move || {
        let credentials = base64_basic(ADMIN.0, ADMIN.1);
        blocking_exchange(
            admin,
            &format!(
                "POST /rest/microgateway/reload HTTP/1.1\r\nhost: admin\r\n\
                 authorization: Basic {credentials}\r\ncontent-length: 0\r\n\
                 connection: close\r\n\r\n"
            ),
        )
    });
    let queued = Instant::now() + DEADLINE;
    while live.reloads_waiting() == 0 {
        assert!(Instant::now() < queued, "the REST reload never started");
        std::thread::sleep(Duration::from_millis(1));
    }

    // From a thread of its own, bounded: a blocked worker cannot answer,
    // and then neither could a timer of its runtime.
    let probe = std::thread::spawn(move || {
        blocking_exchange(
            admin,
            "GET /health/live HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n",
        )
    })
    .join()
    .expect("probe thread");
    assert!(
        probe.starts_with("HTTP/1.1 200"),
        "a request waited for the reload: {probe:?}"
    );

    drop(in_progress);
    let answer = reload.join().expect("reload thread");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""generation":2"#), "{answer}");
    drop(live);
    gw.shutdown().await;
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// One request on a new std connection, read to the close; at most 10 s
/// for each read (an empty answer when none came).
fn blocking_exchange(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// The echo API under `limits` whose `max_uri` and `max_body` are these.
fn limits_yaml(max_uri: &str, max_body: &str) -> String {
    format!(
        "limits: {{ max_uri: {max_uri}, max_body: {max_body} }}\n{}",
        echo_yaml("limited")
    )
}

/// Limits take effect on a restart only, as the reload's warning says:
/// the data path keeps the ones the listeners started with, whichever
/// way a reload changes them.
#[tokio::test]
async fn changed_limits_wait_for_a_restart() {
    let gw = Gateway::start(&limits_yaml("1KiB", "1KiB")).await;
    let post = |len: usize| {
        gw.client
            .post(gw.url("/echo/ping"))
            .body(vec![b'x'; len])
            .send()
    };
    let long_query = format!("/echo/ping?q={}", "a".repeat(1500));
    assert_eq!(post(2048).await.expect("post").status(), 413);
    assert_eq!(gw.get(&long_query).await.status(), 414);
    gw.write_config(&limits_yaml("64KiB", "1MiB"));
    applied(&gw, 2).await;
    assert_eq!(post(2048).await.expect("post").status(), 413);
    assert_eq!(gw.get(&long_query).await.status(), 414);
    assert_eq!(post(512).await.expect("post").status(), 200);
    // The settings show the limits in effect, and that a restart would
    // change them.
    let settings = admin_json(&gw, "/rest/microgateway/settings").await;
    assert_eq!(settings["generation"], 2);
    assert_eq!(settings["limits"]["max_body"], 1024, "{settings}");
    assert_eq!(settings["limits"]["max_uri"], 1024, "{settings}");
    assert_eq!(settings["restart_needed"], serde_json::json!(["limits"]));
    gw.shutdown().await;

    // Lowered, the same: the started limits still admit what they did.
    let gw = Gateway::start(&limits_yaml("8KiB", "1MiB")).await;
    gw.write_config(&limits_yaml("1KiB", "1KiB"));
    applied(&gw, 2).await;
    let post = |len: usize| {
        gw.client
            .post(gw.url("/echo/ping"))
            .body(vec![b'x'; len])
            .send()
    };
    assert_eq!(post(2048).await.expect("post").status(), 200);
    assert_eq!(gw.get(&long_query).await.status(), 200);
    gw.shutdown().await;
}

/// The gateway as its own authorization server, its signing key in
/// `signing-key.pem` beside the configuration (generated on start), and
/// an API that validates its tokens in-process.
const OWN_TOKENS_YAML: &str = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0, bind: 127.0.0.1 }
authorization_server:
  issuer: "http://gateway.test"
  signing_key: signing-key.pem
  store: sqlite:oauth.db
  clients:
  - { client_id: robot, client_secret: robot-secret-0123456789, grant_types: [client_credentials] }
security_settings:
  auth_servers:
  - id: local
    localIntrospectionConfig: { issuer: "http://gateway.test" }
apis:
- name: echo
  version: "1"
  base_path: /echo
  upstream: { echo: true }
  authentication: { type: oauth2, auth_server: local }
  resources: ["GET /ping"]
"#;

/// A client-credentials token of the gateway's own authorization server.
async fn own_token(gw: &Gateway) -> String {
    let resp = gw
        .request(reqwest::Method::POST, "/oauth2/token")
        .basic_auth("robot", Some("robot-secret-0123456789"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("token JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// The `kid` and `alg` of a JWT's header.
fn key_of(token: &str) -> (String, String) {
    use base64::Engine;
    let header = token.split('.').next().expect("header");
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url header");
    let header: serde_json::Value = serde_json::from_slice(&header).expect("header JSON");
    (
        header["kid"].as_str().expect("kid").to_owned(),
        header["alg"].as_str().expect("alg").to_owned(),
    )
}

/// The `kid`s the authorization server publishes.
async fn published_kids(gw: &Gateway) -> Vec<String> {
    let jwks: serde_json::Value = gw
        .get("/oauth2/jwks")
        .await
        .json()
        .await
        .expect("JWKS JSON");
    jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| key["kid"].as_str().expect("kid").to_owned())
        .collect()
}

/// Only the signing key file changes (replaced as editors save): the new
/// key signs the next tokens, which the gateway validates against the
/// new JWKS key, and the old tokens still validate. Generating the key at
/// start is no change.
#[tokio::test]
async fn a_replaced_signing_key_file_signs_the_next_tokens() {
    let gw = start_in(tempfile::tempdir().expect("temp dir"), OWN_TOKENS_YAML).await;
    let key_file = gw.dir.path().join("signing-key.pem");
    assert!(key_file.exists(), "the key is generated on start");
    let old = own_token(&gw).await;
    let (old_kid, old_alg) = key_of(&old);
    assert_eq!(old_alg, "RS256");
    assert_eq!(published_kids(&gw).await, std::slice::from_ref(&old_kid));

    let replacement = rcgen::KeyPair::generate().expect("P-256 key");
    let staged = gw.dir.path().join("signing-key.pem.new");
    std::fs::write(&staged, replacement.serialize_pem()).expect("write key");
    std::fs::rename(&staged, &key_file).expect("rename key");
    applied(&gw, 2).await;

    let new = own_token(&gw).await;
    let (new_kid, new_alg) = key_of(&new);
    assert_eq!(new_alg, "ES256");
    assert_ne!(new_kid, old_kid);
    assert_eq!(published_kids(&gw).await, [new_kid, old_kid]);
    for token in [&new, &old] {
        let resp = gw
            .request(reqwest::Method::GET, "/echo/ping")
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(gw.state().live.generation(), 2, "one reload, for the key");
    gw.shutdown().await;
}

/// The gateway as an authorization server with a user and a confidential
/// client of the password grant, whose tokens last `lifetime` seconds.
fn password_grant_yaml(lifetime: u32) -> String {
    let hash = crate::authorize::cheap_hash("wonderland");
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
authorization_server:
  issuer: "http://gateway.test"
  signing_key: signing-key.pem
  store: sqlite:oauth.db
  scopes: [{{ name: view, description: View }}]
  users: [{{ username: alice, password_hash: "{hash}" }}]
  clients:
  - client_id: app
    client_secret: app-secret-0123456789
    grant_types: [password]
    scopes: [view]
    token_lifetime: {lifetime}
"#
    )
}

/// A password grant for alice through `app`, with `secret` and `password`.
async fn password_grant(gw: &Gateway, secret: &str, password: &str) -> reqwest::Response {
    gw.request(reqwest::Method::POST, "/oauth2/token")
        .basic_auth("app", Some(secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=password&username=alice&password={password}"
        ))
        .send()
        .await
        .expect("token request")
}

/// A refusal for too many failures: 429 with the `error` given and a
/// `Retry-After` within the minute the failures are counted in.
async fn assert_locked(resp: reqwest::Response, error: &str) {
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("retry-after")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: serde_json::Value = resp.json().await.expect("error JSON");
    assert_eq!(body["error"], error);
}

/// A reload that opens the authorization server again (a client's
/// `token_lifetime` changed) keeps the failures counted before it: a user
/// locked out by wrong passwords stays locked, the right password too,
/// and so does an address locked out by wrong client secrets.
#[tokio::test]
async fn a_reload_that_changes_the_authorization_server_keeps_its_locks() {
    let gw = start_in(
        tempfile::tempdir().expect("temp dir"),
        &password_grant_yaml(3600),
    )
    .await;
    const SECRET: &str = "app-secret-0123456789";
    for _ in 0..5 {
        let resp = password_grant(&gw, SECRET, "guess").await;
        assert_eq!(resp.status(), 400);
    }
    assert_locked(
        password_grant(&gw, SECRET, "wonderland").await,
        "invalid_grant",
    )
    .await;
    gw.write_config(&password_grant_yaml(1800));
    applied(&gw, 2).await;
    assert_locked(
        password_grant(&gw, SECRET, "wonderland").await,
        "invalid_grant",
    )
    .await;

    for _ in 0..20 {
        let resp = password_grant(&gw, "wrong-secret", "wonderland").await;
        assert_eq!(resp.status(), 401);
    }
    assert_locked(
        password_grant(&gw, SECRET, "wonderland").await,
        "invalid_client",
    )
    .await;
    gw.write_config(&password_grant_yaml(900));
    applied(&gw, 3).await;
    assert_locked(
        password_grant(&gw, SECRET, "wonderland").await,
        "invalid_client",
    )
    .await;
    gw.shutdown().await;
}
