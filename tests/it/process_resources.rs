//! What the running binary holds of the machine: the CPUs its API
//! threads run on (`ports.pin_threads`), and the pages of its own program
//! it keeps once started.

use crate::common;

use std::path::Path;
use std::process::Command;

fn start(dir: &Path, env: &[(&str, &str)]) -> common::process::Started {
    let config = common::process::echo_config(dir, 0);
    let mut command = Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command
        .env_clear()
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .args(["start", "-c", config.to_str().expect("utf-8 path")]);
    common::process::start(&mut command)
}

/// `Cpus_allowed_list` of a process's or thread's status file.
fn cpus_allowed(status: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("a Cpus_allowed_list line")
        .trim()
        .to_owned()
}

/// The CPUs each API thread of `pid` may run on (their `comm` is cut to
/// 15 bytes: `microgateway-ap`).
fn api_threads_cpus(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    let mut cpus: Vec<String> = tasks
        .map(|task| task.expect("a thread").path())
        .filter(|task| {
            std::fs::read_to_string(task.join("comm"))
                .is_ok_and(|comm| comm.trim() == "microgateway-ap")
        })
        .map(|task| cpus_allowed(&std::fs::read_to_string(task.join("status")).expect("status")))
        .collect();
    cpus.sort();
    cpus
}

/// The API threads' CPUs once `settled` holds of them, or after 10 s: a
/// thread names itself, then pins itself, as it starts, which may be just
/// after the start-up line.
fn settled_api_threads_cpus(pid: u32, settled: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = api_threads_cpus(pid);
        if settled(&seen) || std::time::Instant::now() > deadline {
            return seen;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
}

/// The CPUs this test may run on, one by one (from a list like `0-3,6`).
fn own_cpus() -> Vec<String> {
    let list = cpus_allowed(&std::fs::read_to_string("/proc/self/status").expect("status"));
    list.split(',')
        .flat_map(|range| {
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            let first: usize = first.parse().expect("a CPU number");
            let last: usize = last.parse().expect("a CPU number");
            first..=last
        })
        .map(|cpu| cpu.to_string())
        .collect()
}

#[test]
fn each_api_thread_runs_on_a_cpu_of_its_own_when_they_are_as_many() {
    let dir = tempfile::tempdir().expect("temp dir");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let own = own_cpus();
    let whole = cpus_allowed(&std::fs::read_to_string("/proc/self/status").expect("status"));
    let expected: Vec<String> = if threads > 1 && own.len() == threads {
        // Thread i on the i-th CPU.
        let mut each = own.clone();
        each.sort();
        each
    } else {
        // Fewer threads than CPUs (a quota), or one: left to the scheduler.
        vec![whole.clone(); threads]
    };
    let started = start(dir.path(), &[]);
    let seen = settled_api_threads_cpus(started.child.id(), |seen| seen == expected);
    assert_eq!(seen, expected, "one API thread per CPU of {own:?}");
}

#[test]
fn pin_threads_false_leaves_the_api_threads_to_the_scheduler() {
    let dir = tempfile::tempdir().expect("temp dir");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let whole = cpus_allowed(&std::fs::read_to_string("/proc/self/status").expect("status"));
    let expected = vec![whole; threads];
    let started = start(dir.path(), &[("MCGW_PORTS_PIN_THREADS", "false")]);
    // Settled once all are named; a pinned one would then show at once.
    let seen = settled_api_threads_cpus(started.child.id(), |seen| seen.len() == threads);
    std::thread::park_timeout(std::time::Duration::from_millis(200));
    assert_eq!(api_threads_cpus(started.child.id()), expected, "{seen:?}");
}

#[test]
fn the_program_pages_read_at_start_are_given_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let started = start(dir.path(), &[("MCGW_LOG", "debug")]);
    let line = started
        .line_with(
            "program pages read at start",
            std::time::Duration::from_secs(10),
        )
        .expect("a line on the program pages, after the start-up line");
    let kib = |field: &str| -> u64 {
        let at = line
            .find(field)
            .unwrap_or_else(|| panic!("{field} in {line}"))
            + field.len();
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a number after {field} in {line}"))
    };
    let before = kib("resident_kib_before=");
    let after = kib("resident_kib_after=");
    // The code is at least unmapped from the process (and freed where the
    // kernel allows). Constants that another process of the same binary
    // maps (the suite runs many) are not paged out: a quarter at least,
    // not the half a lone process gives back.
    assert!(
        after < before / 4 * 3,
        "{before} KiB before, {after} KiB after: {line}"
    );
}

/// CPU time (user + system, in clock ticks) the process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The fields after the command name (which may hold spaces), from the
    // third: utime and stime are the 14th and 15th.
    let after = stat.rsplit_once(')').expect("comm").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Connections that stay open idle without being parked (an HTTP/2 one
/// after its request, an HTTP/1.1 one with half a head) cost nothing
/// while they wait: their watchdog sleeps until something is due instead
/// of looking again and again at a time already past.
#[tokio::test]
async fn idle_connections_that_cannot_be_parked_use_no_cpu() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let started = start(dir.path(), &[]);
    let tcp = tokio::net::TcpStream::connect(started.http)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let url = format!("http://{}/echo/x", started.http);
    let request = http::Request::get(&url)
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let answer = sender.send_request(request).await.expect("answer");
    assert_eq!(answer.status(), 200);
    let mut half = tokio::net::TcpStream::connect(started.http)
        .await
        .expect("connect");
    half.write_all(b"GET /echo/x HTTP/1.1\r\n")
        .await
        .expect("write");
    // Past the second after which an idle connection looks whether it
    // can be parked; then two seconds of doing nothing.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let pid = started.child.id();
    let before = cpu_ticks(pid);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - before;
    // A spinning watchdog takes a core (about 200 ticks in 2 s).
    assert!(used < 50, "{used} ticks of CPU in 2 s while idle");
    drop((sender, half));
}

/// Sends one request on `stream` and waits (at most `within`) for the
/// start of its answer: whether it was a 200.
async fn answered_200(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream
        .write_all(b"GET /echo/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

/// Out of file descriptors, accepts fail and new clients wait in the
/// backlog: the idle connections give theirs, as when the port is out of
/// slots, instead of holding them until their idle timeout.
#[tokio::test]
async fn idle_connections_give_their_descriptors_to_new_clients() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = common::process::echo_config(dir.path(), 0);
    let mut command = Command::new("prlimit");
    command
        .env_clear()
        .env("NO_COLOR", "1")
        .args(["--nofile=64:64", "--", env!("CARGO_BIN_EXE_microgateway")])
        .args(["start", "-c", config.to_str().expect("utf-8 path")]);
    let started = common::process::start(&mut command);
    let within = std::time::Duration::from_secs(5);
    let mut idle = Vec::new();
    for _ in 0..30 {
        let mut stream = tokio::net::TcpStream::connect(started.http)
            .await
            .expect("connect");
        assert!(answered_200(&mut stream, within).await, "below the limit");
        idle.push(stream);
    }
    // Past the grace a new connection has, and idle.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Thirty more: about ten fit beside the first thirty.
    let mut newcomers = Vec::new();
    for n in 0..30 {
        let mut stream = tokio::net::TcpStream::connect(started.http)
            .await
            .expect("connect");
        assert!(
            answered_200(&mut stream, within).await,
            "newcomer {n} was not served"
        );
        newcomers.push(stream);
    }
    drop((idle, newcomers));
}

/// The resident memory of process `pid`, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

/// The `echo` upstream counts a request body as it comes and holds none
/// of it: eight HTTP/1.1 clients each sending a body of `limits.max_body`
/// all but its last byte, and holding, do not make the gateway hold their
/// 80 MiB; each is answered its length once it ends.
#[tokio::test]
async fn the_echo_upstream_holds_no_request_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 8;
    const BODY: usize = 10 << 20;
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
  resources: ["POST /x"]
  authentication: { type: none }
"#,
    )
    .expect("write the config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command.env_clear().env("NO_COLOR", "1").args([
        "start",
        "-c",
        config.to_str().expect("utf-8 path"),
    ]);
    let started = common::process::start(&mut command);
    let pid = started.child.id();
    let head = format!("POST /echo/x HTTP/1.1\r\nHost: gw\r\nContent-Length: {BODY}\r\n\r\n");
    let chunk = vec![b'x'; 1 << 20];
    let before = resident_kib(pid);
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = tokio::net::TcpStream::connect(started.http)
            .await
            .expect("connect");
        stream.write_all(head.as_bytes()).await.expect("write");
        for _ in 0..BODY / chunk.len() - 1 {
            stream.write_all(&chunk).await.expect("write");
        }
        stream.write_all(&chunk[1..]).await.expect("write");
        held.push(stream);
    }
    // Held whole, the bodies took 80 MiB as soon as they were read.
    let bound = (CLIENTS * BODY / 4 / 1024) as u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        let grown = resident_kib(pid).saturating_sub(before);
        assert!(grown < bound, "{grown} KiB more held for {CLIENTS} bodies");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for mut stream in held {
        stream.write_all(b"x").await.expect("write");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"}") {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&format!("\"body_bytes\":{BODY}")),
            "{answer}"
        );
    }
}
