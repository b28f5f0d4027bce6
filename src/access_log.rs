//! The access log: one line per request, at `info` on the target
//! `microgateway::access` (the log filter turns it on and off like any
//! other). Its lines are the ones the process's log writes for any event
//! (`logging`): the same text or JSON, the same queue to the writer
//! thread. When no colour is asked for, they are composed here, straight
//! into a buffer of the thread, rather than by the general event
//! formatter, which visits each field through `Debug` and costed about
//! as much CPU as a tenth of the gateway's whole request; on a terminal
//! (colour) the general formatter writes them.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_appender::non_blocking::NonBlocking;

/// How the log's lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// The target of the access log's lines.
pub const TARGET: &str = "microgateway::access";

/// The log's writer and format, when lines are composed here.
static DIRECT: OnceLock<(NonBlocking, Format)> = OnceLock::new();

thread_local! {
    /// This thread's writer (a clone of the log's) and line buffer.
    static LINE: RefCell<Option<Composer>> = const { RefCell::new(None) };
}

/// Composes the lines from now on (no colour), writing them to `writer`
/// in `format`. Called once, by `logging::init`.
pub fn compose_into(writer: NonBlocking, format: Format) {
    let _ = DIRECT.set((writer, format));
}

/// Whether the filter lets the access log's lines through.
pub fn is_on() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// One request, as the access log shows it.
pub struct Entry<'a> {
    pub client: IpAddr,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The API's name, `-` when none matched.
    pub api: &'a str,
    pub status: u16,
    pub micros: u64,
}

/// The longest path a line shows, in bytes: a client chooses its
/// request's path, and the log's queue bounds its lines by number (a
/// line's escapes can make it three times as long as the path).
const SHOWN_PATH: usize = 1024;

/// `path`, or its first [`SHOWN_PATH`] bytes (to a character) and `...`.
fn shown(path: &str) -> std::borrow::Cow<'_, str> {
    if path.len() <= SHOWN_PATH {
        return path.into();
    }
    let mut end = SHOWN_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &path[..end]).into()
}

/// Writes `entry`'s line (call only when [`is_on`]).
pub fn write(entry: &Entry<'_>) {
    let Some((writer, format)) = DIRECT.get() else {
        tracing::info!(
            target: TARGET,
            client = %entry.client,
            request_id = %entry.request_id,
            method = %entry.method,
            path = %Escaped(&shown(entry.path)),
            api = entry.api,
            status = entry.status,
            micros = entry.micros,
            "request"
        );
        return;
    };
    LINE.with(|slot| {
        let mut slot = slot.borrow_mut();
        let composer = slot.get_or_insert_with(|| Composer {
            writer: writer.clone(),
            line: String::with_capacity(256),
            second: None,
        });
        composer.line.clear();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        composer.compose(*format, now.as_secs(), now.subsec_micros(), entry);
        // The writer never blocks: a full queue drops the line and counts
        // it (`log_lines_dropped_total`).
        let Composer { writer, line, .. } = composer;
        let _ = writer.write_all(line.as_bytes());
    });
}

/// A thread's writer, its line, and the timestamp's date and time to the
/// second it last wrote (a new one is composed once a second).
struct Composer {
    writer: NonBlocking,
    line: String,
    second: Option<(u64, String)>,
}

impl Composer {
    /// `entry`'s line, as the log's general formatter would write it.
    fn compose(&mut self, format: Format, secs: u64, micros: u32, entry: &Entry<'_>) {
        let stamp = match &mut self.second {
            Some((second, stamp)) if *second == secs => stamp,
            second => &mut second.insert((secs, date_time(secs))).1,
        };
        let line = &mut self.line;
        let mut number = itoa::Buffer::new();
        match format {
            Format::Text => {
                line.push_str(stamp);
                let _ = write!(line, ".{micros:06}Z  INFO {TARGET}: request client=");
                let _ = write!(line, "{}", entry.client);
                line.push_str(" request_id=");
                line.push_str(entry.request_id);
                line.push_str(" method=");
                line.push_str(entry.method);
                line.push_str(" path=");
                push_escaped(line, &shown(entry.path));
                line.push_str(" api=");
                let _ = write!(line, "{:?}", entry.api);
                line.push_str(" status=");
                line.push_str(number.format(entry.status));
                line.push_str(" micros=");
                line.push_str(number.format(entry.micros));
            }
            Format::Json => {
                line.push_str("{\"timestamp\":\"");
                line.push_str(stamp);
                let _ = write!(line, ".{micros:06}Z\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\",\"client\":\"");
                let _ = write!(line, "{}", entry.client);
                line.push_str("\",\"request_id\":");
                json_string(line, entry.request_id);
                line.push_str(",\"method\":");
                json_string(line, entry.method);
                line.push_str(",\"path\":");
                json_string(line, &shown(entry.path));
                line.push_str(",\"api\":");
                json_string(line, entry.api);
                line.push_str(",\"status\":");
                line.push_str(number.format(entry.status));
                line.push_str(",\"micros\":");
                line.push_str(number.format(entry.micros));
                let _ = write!(line, "}},\"target\":\"{TARGET}\"}}");
            }
        }
        line.push('\n');
    }
}

/// `text` with the terminal controls a request target can carry escaped
/// as tracing-subscriber escapes them in messages: ESC, BEL, BS, FF and
/// DEL as `\xNN`, the C1 controls (NEL, CSI, …) and the line and paragraph
/// separators (U+2028, U+2029) as `\u{NN}` — a client's
/// path cannot split a line for a reader that breaks at NEL, nor move a
/// terminal's cursor or colour what follows. The general formatter
/// writes such a field as it is: the field it is given is [`Escaped`].
fn push_escaped(line: &mut String, text: &str) {
    if text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        line.push_str(text);
    } else {
        let _ = write!(line, "{}", Escaped(text));
    }
}

/// A field written with its terminal controls escaped ([`push_escaped`]).
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' => write!(f, "\\x{:02x}", c as u32)?,
                '\u{80}'..='\u{9f}' => write!(f, "\\u{{{:x}}}", c as u32)?,
                // Line and paragraph separators: a line break to many
                // readers (JavaScript, editors, some log viewers).
                '\u{2028}' | '\u{2029}' => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `text` as a JSON string, quoted.
fn json_string(line: &mut String, text: &str) {
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if (c as u32) < 0x20 || matches!(c, '\u{2028}' | '\u{2029}') => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// `secs` since 1970 as `YYYY-MM-DDTHH:MM:SS` (UTC).
fn date_time(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after it).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(api: &str) -> Entry<'_> {
        Entry {
            client: IpAddr::from([127, 0, 0, 1]),
            request_id: "e444f023d7d879695685abfb94cd47de",
            method: "GET",
            path: "/echo/x",
            api,
            status: 200,
            micros: 4917,
        }
    }

    fn composed(format: Format, secs: u64, micros: u32, entry: &Entry<'_>) -> String {
        let mut composer = composer();
        composer.compose(format, secs, micros, entry);
        composer.line
    }

    /// A composer whose writer writes nowhere.
    fn composer() -> Composer {
        let (writer, _guard) = tracing_appender::non_blocking(std::io::sink());
        Composer {
            writer,
            line: String::new(),
            second: None,
        }
    }

    /// A client's long path is shown cut, whatever its characters.
    #[test]
    fn a_long_path_is_shown_cut() {
        for unit in ["a", "\u{85}", "é"] {
            let path = format!("/{}", unit.repeat(10_000));
            let entry = Entry {
                path: &path,
                ..entry("Echo")
            };
            for format in [Format::Text, Format::Json] {
                let line = composed(format, SECS, 0, &entry);
                assert!(
                    line.len() < 3 * SHOWN_PATH + 400,
                    "{unit:?}: {}",
                    line.len()
                );
                assert!(line.contains("..."), "{line}");
            }
        }
        let short = composed(Format::Text, SECS, 0, &entry("Echo"));
        assert!(short.contains("path=/echo/x "), "{short}");
    }

    /// 2026-12-04T23:02:58Z.
    const SECS: u64 = 1_796_425_378;

    #[test]
    fn a_text_line_is_the_one_the_general_formatter_writes() {
        // Both lines as the general formatter wrote them for these fields.
        assert_eq!(
            composed(Format::Text, SECS, 97_994, &entry("Echo \"q\"")),
            "2026-12-04T23:02:58.097994Z  INFO microgateway::access: request client=127.0.0.1 \
             request_id=e444f023d7d879695685abfb94cd47de method=GET path=/echo/x \
             api=\"Echo \\\"q\\\"\" status=200 micros=4917\n"
        );
        assert_eq!(
            composed(Format::Json, SECS, 328_446, &entry("Echo \"q\"")),
            "{\"timestamp\":\"2026-12-04T23:02:58.328446Z\",\"level\":\"INFO\",\"fields\":\
             {\"message\":\"request\",\"client\":\"127.0.0.1\",\"request_id\":\
             \"e444f023d7d879695685abfb94cd47de\",\"method\":\"GET\",\"path\":\"/echo/x\",\
             \"api\":\"Echo \\\"q\\\"\",\"status\":200,\"micros\":4917},\
             \"target\":\"microgateway::access\"}\n"
        );
    }

    /// What the general formatter writes for `entry` (the path taken when
    /// lines are not composed here).
    fn formatted_by_tracing(format: Format, entry: &Entry<'_>) -> String {
        #[derive(Clone, Default)]
        struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("not poisoned").extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let writer = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone());
        match format {
            Format::Text => tracing::subscriber::with_default(builder.finish(), || write(entry)),
            Format::Json => {
                tracing::subscriber::with_default(builder.json().finish(), || write(entry))
            }
        }
        let bytes = out.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    #[test]
    fn lines_are_the_general_formatters_but_for_the_time() {
        let entry = Entry {
            client: IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1]),
            request_id: "r-1",
            method: "PATCH",
            path: "/a%20b/c",
            api: "Tickets \"v2\"",
            status: 429,
            micros: 18_446_744_073_709,
        };
        // The general formatter's time is now; the composer's is SECS.
        let text = formatted_by_tracing(Format::Text, &entry);
        let composed_text = composed(Format::Text, SECS, 0, &entry);
        assert_eq!(text[27..], composed_text[27..], "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&formatted_by_tracing(Format::Json, &entry)).expect("JSON");
        let composed_json: serde_json::Value =
            serde_json::from_str(&composed(Format::Json, SECS, 0, &entry)).expect("JSON");
        let without_time = |mut line: serde_json::Value| {
            line.as_object_mut().expect("an object").remove("timestamp");
            line
        };
        assert_eq!(without_time(json), without_time(composed_json));
    }

    /// A path with terminal controls is written escaped.
    #[test]
    fn a_path_with_terminal_controls_is_escaped() {
        let entry = Entry {
            client: IpAddr::from([192, 0, 2, 1]),
            request_id: "r-1",
            method: "GET",
            path: "/a\u{9b}31m\u{85}b\u{1b}c\u{7f}é\u{2028}\u{2029}",
            api: "-",
            status: 404,
            micros: 1,
        };
        let line = composed(Format::Text, SECS, 0, &entry);
        let text = formatted_by_tracing(Format::Text, &entry);
        assert_eq!(text[27..], line[27..], "{text}");
        assert!(
            line.contains(r"path=/a\u{9b}31m\u{85}b\x1bc\x7fé\u{2028}\u{2029} api="),
            "{line}"
        );
        assert!(
            !line.contains(['\u{9b}', '\u{85}', '\u{1b}', '\u{7f}', '\u{2028}', '\u{2029}']),
            "{line}"
        );
    }

    #[test]
    fn a_json_line_is_json_whatever_the_names_hold() {
        let line = composed(Format::Json, SECS, 0, &entry("a\\b\n\u{1}\tü\r\"\u{2028}"));
        assert!(!line.contains('\u{2028}'), "{line}");
        let parsed: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(parsed["fields"]["api"], "a\\b\n\u{1}\tü\r\"\u{2028}");
        assert_eq!(parsed["fields"]["status"], 200);
        assert_eq!(parsed["timestamp"], "2026-12-04T23:02:58.000000Z");
    }

    #[test]
    fn the_time_of_day_is_composed_again_each_second() {
        let mut composer = composer();
        composer.compose(Format::Text, SECS, 999_999, &entry("-"));
        composer.line.clear();
        composer.compose(Format::Text, SECS + 1, 1, &entry("-"));
        assert!(
            composer
                .line
                .starts_with("2026-12-04T23:02:59.000001Z  INFO"),
            "{}",
            composer.line
        );
    }

    #[test]
    fn dates_are_the_gregorian_calendar_s() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00");
        assert_eq!(date_time(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(date_time(1_709_251_199), "2024-02-29T23:59:59");
        assert_eq!(date_time(4_102_444_800), "2100-01-01T00:00:00");
        assert_eq!(date_time(SECS), "2026-12-04T23:02:58");
    }
}
