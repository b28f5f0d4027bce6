//! The log never holds up a request: lines go to stderr through a bounded
//! queue, and when nobody reads stderr they are dropped and counted.
use crate::common;

use std::process::Command;
use std::time::Duration;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command.env_clear().env("NO_COLOR", "1");
    command
}

#[tokio::test]
async fn requests_are_served_while_nobody_reads_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
apis:
- name: Echo
  base_path: /echo
  upstream: { echo: true }
  resources: ["GET /x"]
  authentication: { type: none }
"#,
    )
    .expect("write the config");
    // The access log is on (`info`): one line per request, into a pipe
    // that fills after a few hundred lines and is never read again.
    let started = common::process::start_unread(binary().env("MCGW_LOG", "info").args([
        "start",
        "-c",
        config.to_str().expect("utf-8 path"),
    ]));
    let http = started.http;
    let client = common::client();
    // More lines than the pipe, the writer's buffer and the queue hold.
    let per_task = 2_000;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    let status = client
                        .get(format!("http://{http}/echo/x"))
                        .send()
                        .await
                        .expect("answered")
                        .status();
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    let all = async {
        for task in tasks {
            task.await.expect("requests served");
        }
    };
    tokio::time::timeout(Duration::from_secs(300), all)
        .await
        .expect("requests are not held up by a log nobody reads");
    let admin = started.admin.expect("admin port");
    let metrics = client
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let dropped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("microgateway_log_lines_dropped_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("log_lines_dropped_total exported");
    assert!(dropped > 0, "{dropped} lines dropped");
}

/// Reads the raw stderr of `command` until a line contains `until`, or
/// `wait` passes; what it read.
fn raw_log_until(command: &mut Command, until: &str, wait: Duration) -> String {
    use std::io::Read;
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let mut stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + wait;
    let mut log = Vec::new();
    while !String::from_utf8_lossy(&log).contains(until) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => log.extend(bytes),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&log).into_owned()
}

#[test]
fn the_start_up_line_shows_addresses_as_values_without_colour() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::process::echo_config(dir.path(), 0);
    let mut command = Command::new(env!("CARGO_BIN_EXE_microgateway"));
    // A pipe is not a terminal: no colour even without NO_COLOR.
    command
        .env_clear()
        .args(["start", "-c", config.to_str().expect("utf-8 path")]);
    let log = raw_log_until(
        &mut command,
        "microgateway started",
        Duration::from_secs(20),
    );
    let line = log
        .lines()
        .find(|line| line.contains("microgateway started"))
        .unwrap_or_else(|| panic!("no start-up line in {log:?}"));
    assert!(!line.contains('\u{1b}'), "colour escapes in {line:?}");
    assert!(!line.contains("Some("), "{line}");
    assert!(line.contains("http=127.0.0.1:"), "{line}");
    assert!(line.contains("https=off"), "{line}");
}

#[test]
fn rust_log_is_honoured_when_mcgw_log_is_unset() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::ports::unused();
    let config = common::process::echo_config(dir.path(), port);
    // `error` only: the start-up line (info) is not written, though the
    // gateway serves.
    let mut command = Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command.env_clear().env("RUST_LOG", "error").args([
        "start",
        "-c",
        config.to_str().expect("utf-8 path"),
    ]);
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the binary");
    let served = (0..100).any(|_| {
        std::thread::park_timeout(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let _ = child.kill();
    let output = child.wait_with_output().expect("stopped");
    assert!(served, "the gateway did not start");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!log.contains("microgateway started"), "{log}");
    // And MCGW_LOG wins over it.
    let mut command = Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command
        .env_clear()
        .env("RUST_LOG", "error")
        .env("MCGW_LOG", "info")
        .args(["start", "-c", config.to_str().expect("utf-8 path")]);
    let log = raw_log_until(
        &mut command,
        "microgateway started",
        Duration::from_secs(20),
    );
    assert!(log.contains("microgateway started"), "{log}");
}

/// A filter whose bare word is no level (`warning` would be read as a
/// target, and `debug;` too, turning every line off) logs at `info`, and
/// says so once at start.
#[test]
fn a_filter_that_names_no_level_logs_at_info_and_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::process::echo_config(dir.path(), 0);
    for spec in ["warning", "debug;"] {
        let mut command = binary();
        command
            .env("MCGW_LOG", spec)
            .args(["start", "-c", config.to_str().expect("utf-8 path")]);
        let log = raw_log_until(
            &mut command,
            "microgateway started",
            Duration::from_secs(20),
        );
        assert!(log.contains("microgateway started"), "{spec}: {log}");
        let warnings: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("is not a log filter"))
            .collect();
        assert_eq!(warnings.len(), 1, "{spec}: {log}");
        assert!(warnings[0].contains(" WARN "), "{}", warnings[0]);
        assert!(
            warnings[0].contains(&format!("MCGW_LOG={spec:?}")),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("logging at info"), "{}", warnings[0]);
    }
}

/// While an introspection endpoint is down, every opaque token fails
/// (failures are not cached), and the warning is written once in a
/// while, with how many it held back, not once a request.
#[tokio::test]
async fn an_introspection_endpoint_down_is_logged_once_in_a_while_not_per_request() {
    let (_dir, started) = start_at_info(
        r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
security_settings:
  auth_servers:
  - id: opaque
    remoteIntrospectionConfig:
      introspectionEndpoint: "http://127.0.0.1:9/introspect"
      clientId: gw
      clientSecret: s3cret
apis:
- name: Opaque
  base_path: /opaque
  upstream: { echo: true }
  resources: ["GET /x"]
  authentication: { type: oauth2, auth_server: opaque }
"#,
    );
    let client = common::client();
    let url = format!("http://{}/opaque/x", started.http);
    for n in 0..20 {
        let resp = client
            .get(&url)
            .bearer_auth(format!("opaque-token-{n}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status(), 503);
    }
    let mut failures = Vec::new();
    while let Some(line) = started.line_with("introspection failed", Duration::from_millis(500)) {
        failures.push(line);
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
}

/// An upstream that is down fails every request: the warning that says
/// so (with the API and the cause, which the access log's 502 cannot
/// tell) is written once in a while, not once a request.
#[tokio::test]
async fn an_upstream_down_is_logged_with_its_cause_once_in_a_while() {
    // A free port outside the ephemeral range: connections to it are refused.
    let port = common::ports::unused();
    let (_dir, started) = start_at_info(&format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Down
  base_path: /down
  upstream: {{ url: "http://127.0.0.1:{port}/api" }}
  resources: ["GET /x"]
  authentication: {{ type: none }}
"#
    ));
    let client = common::client();
    let url = format!("http://{}/down/x", started.http);
    for _ in 0..20 {
        let resp = client.get(&url).send().await.expect("answer");
        assert_eq!(resp.status(), 502);
        let body = resp.text().await.expect("body");
        assert!(body.contains("the upstream cannot be reached"), "{body}");
    }
    let mut failures = Vec::new();
    while let Some(line) = started.line_with(
        "the upstream failed the request",
        Duration::from_millis(500),
    ) {
        failures.push(line);
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("api=\"Down\""), "{}", failures[0]);
    assert!(failures[0].contains("cause=\"connect\""), "{}", failures[0]);
}

/// The binary serving `yaml` (a file of its own in the directory returned
/// with it) and logging at `info`.
fn start_at_info(yaml: &str) -> (tempfile::TempDir, common::process::Started) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, yaml).expect("write the config");
    let started = common::process::start(binary().env("MCGW_LOG", "info").args([
        "start",
        "-c",
        config.to_str().expect("utf-8 path"),
    ]));
    (dir, started)
}
