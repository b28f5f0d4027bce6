//! The process's log: `MCGW_LOG` (else `RUST_LOG`) picks what is written
//! (`info` by default, the access log included, and when it is no filter:
//! a warning then says why), `--log-format` how (text,
//! or JSON lines). Colour only on a terminal, and never with `NO_COLOR`.
//!
//! Lines are formatted on the thread that logs (the access log's by
//! `access_log`, unless in colour) and handed to one writer
//! thread through a bounded queue ([`QUEUED_LINES`]); the writer batches
//! them into few writes to stderr: after each write it waits [`PACE`], so
//! that under load a write carries hundreds of lines rather than one or
//! two (a write per line cost a tenth of the throughput), while the first
//! line after a quiet spell is written at once. A request never waits for stderr: when
//! the queue is full (stderr slower than the traffic), lines are dropped
//! and counted (`log_lines_dropped_total`) instead. Colour only when stderr
//! is a terminal.

use std::io::{BufWriter, IsTerminal, Write};
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// How lines are written; the access log composes its own in it.
pub use crate::access_log::Format;
pub use crate::sparse::Sparse;

/// Lines waiting for the writer at most (about 2 MiB of access log).
pub const QUEUED_LINES: usize = 8192;

/// How long the writer waits after each write before it takes the next
/// lines: what arrives meanwhile goes out in one write.
pub const PACE: Duration = Duration::from_millis(10);

/// Keeps the writer thread; dropping it writes what is queued.
pub struct Log {
    _writer: WorkerGuard,
}

/// Installs the process's log. Call once, before anything logs.
pub fn init(format: Format) -> Log {
    // `MCGW_LOG`, else `RUST_LOG` (what Rust users reach for first); an
    // empty one is as unset.
    let given = ["MCGW_LOG", "RUST_LOG"].into_iter().find_map(|variable| {
        let spec = std::env::var(variable).ok()?;
        (!spec.trim().is_empty()).then_some((variable, spec))
    });
    let (filter, refused) = filter(given.as_ref().map(|(_, spec)| spec.as_str()));
    // https://no-color.org: any non-empty NO_COLOR turns colour off.
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("microgateway-log")
        // The writer thread writes every line it finds queued into the
        // buffer, then flushes once: few writes under load.
        .finish(Paced(BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        )));
    if !ansi {
        crate::access_log::compose_into(writer.clone(), format);
    }
    let dropped = writer.error_counter();
    crate::metrics::count_dropped_log_lines(move || dropped.dropped_lines() as u64);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        Format::Json => builder.json().init(),
        Format::Text => builder.init(),
    }
    if let (Some((variable, spec)), Some(problem)) = (&given, refused) {
        tracing::warn!("{variable}={spec:?} is not a log filter: {problem}; logging at info");
    }
    Log { _writer: guard }
}

/// The writer thread's stream: each flush (once the queue is empty) is
/// followed by [`PACE`] of sleep on that thread, while lines queue.
struct Paced<W>(W);

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    #[allow(clippy::disallowed_methods)] // The log's own writer thread.
    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.0.flush();
        std::thread::sleep(PACE);
        flushed
    }
}

/// The log filter `MCGW_LOG` asks for (`info` when unset or invalid), and
/// what was wrong with it when it was invalid. A bare word is a level
/// name: tracing would read any other (`warning`, `debug;`) as a target
/// and turn every line off, errors included; `target=level` directives
/// are taken as written.
/// rustls warns once per connection about what a client sent (an IP
/// address as SNI, an alert), so any client could fill the log with it:
/// it speaks at `error` unless `MCGW_LOG` names it.
pub fn filter(spec: Option<&str>) -> (EnvFilter, Option<String>) {
    let spec = spec.unwrap_or("info");
    let parsed = match refusal(spec) {
        Some(problem) => Err(problem),
        None => EnvFilter::try_new(spec).map_err(|error| error.to_string()),
    };
    let (filter, spec, refused) = match parsed {
        Ok(filter) => (filter, spec, None),
        Err(problem) => (EnvFilter::new("info"), "info", Some(problem)),
    };
    if spec.contains("rustls") {
        return (filter, refused);
    }
    let filter = match "rustls=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    (filter, refused)
}

/// The levels a bare word of a filter may name (in any case; or 0 to 5).
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// The crates whose lines the gateway writes: a bare word naming one of
/// them (or a module under it) turns its lines on at every level.
const TARGETS: [&str; 14] = [
    "microgateway",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
    "tokio",
    "tokio_postgres",
    "deadpool",
    "deadpool_postgres",
    "redis",
    "reqwest",
    "notify",
    "rusqlite",
    "jsonwebtoken",
];

/// What is wrong with a filter's bare word, when one is neither a level
/// nor a target of the gateway's: read as a target of its own, it would
/// turn every line off (`warning`, a level misspelt).
fn refusal(spec: &str) -> Option<String> {
    let is_level = |word: &str| {
        LEVELS.iter().any(|level| level.eq_ignore_ascii_case(word))
            || matches!(word.parse::<u8>(), Ok(0..=5))
    };
    let is_target = |word: &str| {
        // `target[span]`: a span filter is taken as written.
        word.contains('[') || TARGETS.contains(&word.split("::").next().unwrap_or(word))
    };
    let word = spec
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty() && !directive.contains('='))
        .find(|word| !is_level(word) && !is_target(word))?;
    Some(format!(
        "`{word}` is no level ({}), no target of the gateway's ({}) and no `target=level`",
        LEVELS.join(", "),
        TARGETS.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::{filter, BufWriter, Paced, Write};

    #[test]
    fn the_paced_writer_passes_the_lines_on_whole_at_each_flush() {
        let mut paced = Paced(BufWriter::new(Vec::new()));
        paced.write_all(b"one\n").unwrap();
        paced.write_all(b"two\n").unwrap();
        assert!(paced.0.get_ref().is_empty(), "held until the flush");
        paced.flush().unwrap();
        assert_eq!(paced.0.get_ref().as_slice(), b"one\ntwo\n");
    }

    #[test]
    fn rustls_speaks_at_error_unless_the_filter_names_it() {
        for spec in [None, Some("warn"), Some("debug"), Some("not a filter ==")] {
            let filter = filter(spec).0.to_string();
            assert!(filter.contains("rustls=error"), "{spec:?}: {filter}");
        }
        let asked = filter(Some("info,rustls=debug")).0.to_string();
        assert!(asked.contains("rustls=debug"), "{asked}");
        assert!(!asked.contains("rustls=error"), "{asked}");
    }

    #[test]
    fn a_bare_word_that_is_no_level_falls_back_to_info() {
        for spec in [
            "warning",
            "debug;",
            "info,verbose",
            "x=warning",
            "[",
            "=info",
            "7",
            "microgatway",
        ] {
            let (chosen, refused) = filter(Some(spec));
            assert_eq!(chosen.to_string(), "rustls=error,info", "{spec:?}");
            assert!(refused.is_some(), "{spec:?}");
        }
        assert_eq!(
            filter(Some("warning")).1.as_deref(),
            Some("`warning` is no level (trace, debug, info, warn, error, off), no target of the gateway's (microgateway, hyper, hyper_util, h2, rustls, tokio, tokio_postgres, deadpool, deadpool_postgres, redis, reqwest, notify, rusqlite, jsonwebtoken) and no `target=level`")
        );
        for spec in [
            "WARN",
            "Debug,hyper=off",
            "microgateway::access=off",
            "off",
            "info,",
            // A target alone: its lines at every level.
            "microgateway",
            "warn,hyper",
            "microgateway::access",
            "3",
            "[request]",
        ] {
            assert_eq!(filter(Some(spec)).1, None, "{spec:?}");
        }
        assert_eq!(filter(None).1, None);
    }
}
