//! The built binary as a child process, started on port 0: the addresses
//! it bound are read from its start-up log line, so no port is picked
//! before the child binds it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running binary (killed when dropped), with the addresses it logged.
pub struct Started {
    pub child: Child,
    pub http: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The log lines after the start-up line, colours stripped.
    pub lines: mpsc::Receiver<String>,
    /// The log lines before it (with a verbose `MCGW_LOG`).
    pub before: Vec<String>,
}

impl Started {
    /// The next log line that contains `needle`, waiting up to `within`
    /// in all; `None` when none came.
    pub fn line_with(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        std::iter::from_fn(|| {
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            self.lines.recv_timeout(wait).ok()
        })
        .find(|line| line.contains(needle))
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` (logging at info or lower) and waits up to 20 s for
/// its start-up line.
pub fn start(command: &mut Command) -> Started {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(plain(&line)).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut before = Vec::new();
    let started = loop {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(wait)
            .unwrap_or_else(|_| panic!("no start-up line; logged: {before:?}"));
        if line.contains("microgateway started") {
            break line;
        }
        before.push(line);
    };
    Started {
        before,
        http: logged_addr(&started, "http").expect("the bound http address"),
        admin: logged_addr(&started, "admin"),
        child,
        lines,
    }
}

/// Spawns `command` like [`start`], but reads its log only up to the
/// start-up line: after it, nobody reads the pipe the binary logs to, as
/// when a log collector stalls.
pub fn start_unread(command: &mut Command) -> Started {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stderr = child.stderr.take().expect("stderr");
    let (found_tx, found) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("microgateway started") {
                let _ = found_tx.send(plain(&line));
                break;
            }
            line.clear();
        }
        // Holds the pipe open, unread, for as long as the test runs.
        std::thread::park();
        drop(reader);
    });
    let started = found
        .recv_timeout(Duration::from_secs(20))
        .expect("a log line at start");
    let (_, lines) = mpsc::channel();
    Started {
        before: Vec::new(),
        http: logged_addr(&started, "http").expect("the bound http address"),
        admin: logged_addr(&started, "admin"),
        child,
        lines,
    }
}

/// Strips ANSI colour sequences, in case the logger colours its output.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address after ` key=` in a log line (`http=127.0.0.1:4485`).
fn logged_addr(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    let end = line[start..].find(' ').map_or(line.len(), |at| start + at);
    line[start..end].parse().ok()
}

/// A configuration in `dir` serving an echo API (`GET /echo/x`, no
/// authentication) on `port` (0: any) of 127.0.0.1, and the admin port on
/// any; its path.
pub fn echo_config(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let config = dir.join("gw.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
ports: {{ http: {port}, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Echo
  base_path: /echo
  upstream: {{ echo: true }}
  resources: ["GET /x"]
  authentication: {{ type: none }}
"#
        ),
    )
    .expect("write the config");
    config
}

/// Waits (at most 20 s) for `child` to exit; kills it if it does not.
#[allow(
    clippy::disallowed_methods,
    reason = "polls a child process, from a test thread or the blocking pool"
)]
pub fn exit_of(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
