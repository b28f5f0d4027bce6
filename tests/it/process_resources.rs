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
