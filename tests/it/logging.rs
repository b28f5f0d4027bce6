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
