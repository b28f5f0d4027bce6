//! Reading a configuration file: bounded size, depth and alias budget; the
//! first YAML document is the configuration, further `--- !<authServerAlias>`
//! documents (as API Gateway exports an alias) are appended to
//! `security_settings.auth_servers`. Positions are reported in file lines.
//! YAML is read as 1.2 (`on`/`yes` are text, which `Ctx::boolean` then
//! refuses as booleans) and no tag is accepted but `!<authServerAlias>`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::granit_parser::{Event, Parser, Tag};
use serde_saphyr::{budget, options, Location, MessageFormatter};

use super::diagnostic::{Diagnostic, Invalid, Origin, Report, Severity};
use super::raw;

/// Largest configuration file accepted.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Deepest YAML nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Aliases (`*name`) accepted in one document.
const MAX_ALIASES: usize = 1000;
/// Events that aliases may replay in one document: an alias bomb stops here
/// long before it costs time or memory.
const MAX_ALIAS_EVENTS: usize = 100_000;
/// Nodes accepted in one document (a 4 MiB file holds fewer).
const MAX_NODES: usize = 1_000_000;

/// Reads and parses `path` into the raw model.
pub fn read(path: &Path) -> Result<(raw::File, Report), Invalid> {
    parse(path, &read_text(path)?)
}

/// Reads the text of `path`, bounded in size.
pub fn read_text(path: &Path) -> Result<String, Invalid> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Invalid::single(path, format!("cannot read the configuration: {e}"), ""))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(Invalid::single(
            path,
            format!("the file has {} bytes", meta.len()),
            "at most 4 MiB",
        ));
    }
    // Bounded again while reading: the file may grow meanwhile (a FIFO
    // or a device, whose metadata says nothing of what it gives, is
    // refused as it is opened).
    read_bounded_text(path).map_err(|e| {
        Invalid::single(
            path,
            format!("cannot read the configuration: {e}"),
            "UTF-8 YAML",
        )
    })
}

/// A file the configuration names (a secret, a certificate, a key), read
/// whole but never more than the configuration file itself may hold: a
/// path to a device or a growing file (`/dev/zero`) is an error, not a
/// `check` that never ends.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    read_within(open_regular(path)?)
}

/// What `file` gives, up to 4 MiB (more is an error).
fn read_within(file: std::fs::File) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let limit = MAX_FILE_BYTES;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 4 MiB",
        ));
    }
    Ok(bytes)
}

/// Opens `path` for reading, if it is a regular file (a link to one
/// too). A FIFO would hold the open, and the thread reading the
/// configuration with it (the watcher's, a shutdown waiting for that one),
/// until some writer came; a device gives without end: both are refused
/// as unreadable. Opened without waiting (`O_NONBLOCK`, which a regular
/// file's reads ignore), then judged by what was opened, so a FIFO put in
/// place between a look and the open holds nothing either.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// [`read_bounded`], as UTF-8 text.
pub fn read_bounded_text(path: &Path) -> std::io::Result<String> {
    utf8(read_bounded(path)?)
}

/// A file the gateway writes itself (a downstream's cached download and
/// its record), as UTF-8 text within 4 MiB. Refused unless regular, as a
/// file the configuration names is ([`open_regular`]): a FIFO in its
/// place would hold `check` and `start` for good.
pub fn read_own_text(path: &Path) -> std::io::Result<String> {
    read_bounded_text(path)
}

/// The bytes of a file read, as UTF-8 text.
pub fn utf8(bytes: Vec<u8>) -> std::io::Result<String> {
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Parses configuration text; `path` names it in diagnostics.
pub fn parse(path: &Path, text: &str) -> Result<(raw::File, Report), Invalid> {
    let mut report = Report::new(path);
    if too_large(text, &mut report) {
        return Err(Invalid::new(report.findings));
    }
    let mut file = raw::File::default();
    let documents = documents(text, &mut report);
    if documents.first().is_none_or(Option::is_none) {
        // A file emptied by mistake (or a wrong path to a blank one) would
        // start a gateway that serves nothing and calls itself ready.
        report.warning(
            Location::UNKNOWN,
            "the configuration holds no settings: the defaults apply, no API port is opened (only admin on 9485) and nothing is served",
        );
    }
    for (index, body) in documents.iter().enumerate() {
        let Some(body) = body else { continue };
        if index == 0 {
            if let Some(parsed) = parse_document::<raw::File>(body, Document::First, &mut report) {
                file = parsed;
            }
        } else if let Some(server) =
            parse_document::<raw::S<raw::AuthServer>>(body, Document::Alias, &mut report)
        {
            file.security_settings.auth_servers.push(server);
        }
    }
    if report.has_errors() {
        return Err(Invalid::new(report.findings));
    }
    Ok((file, report))
}

/// The first document of configuration text read as `T` (a view of some
/// of its keys), within the bounds [`parse`] reads it in; `None` when the
/// text holds no document.
pub fn parse_first<T: DeserializeOwned>(path: &Path, text: &str) -> Result<Option<T>, Invalid> {
    let mut report = Report::new(path);
    let parsed = if too_large(text, &mut report) {
        None
    } else {
        // The first document starts the text: it needs no padding.
        let first = split_documents(text).into_iter().next();
        parse_document::<T>(
            first.map_or("", |part| part.body),
            Document::First,
            &mut report,
        )
    };
    if report.has_errors() {
        return Err(Invalid::new(report.findings));
    }
    Ok(parsed)
}

/// Every document of configuration text, untyped, read within the bounds
/// and by the rules [`parse`] reads them by (YAML 1.2 booleans, no tag but
/// `!<authServerAlias>`); an empty document is `null`.
pub fn parse_untyped(path: &Path, text: &str) -> Result<Vec<serde_json::Value>, Invalid> {
    let mut report = Report::new(path);
    let documents = if too_large(text, &mut report) {
        Vec::new()
    } else {
        let documents = documents(text, &mut report);
        documents
            .iter()
            .enumerate()
            .map(|(index, body)| {
                let document = if index == 0 {
                    Document::First
                } else {
                    Document::Alias
                };
                body.as_deref()
                    .and_then(|body| parse_document(body, document, &mut report))
                    .unwrap_or_default()
            })
            .collect()
    };
    if report.has_errors() {
        return Err(Invalid::new(report.findings));
    }
    Ok(documents)
}

/// Whether `text` is over the 4 MiB a configuration may hold (reported).
fn too_large(text: &str, report: &mut Report) -> bool {
    let over = text.len() as u64 > MAX_FILE_BYTES;
    if over {
        report.error(
            Location::UNKNOWN,
            "the document is larger than 4 MiB",
            "at most 4 MiB",
        );
    }
    over
}

/// One document of a multi-document stream: its text, and how many lines
/// of the stream come before it.
struct Part<'t> {
    lines_before: usize,
    body: &'t str,
}

/// Splits a multi-document stream at `---` lines, without copying it.
fn split_documents(text: &str) -> Vec<Part<'_>> {
    let mut parts = vec![Part {
        lines_before: 0,
        body: "",
    }];
    let (mut start, mut at) = (0, 0);
    let mut seen_content = false;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker && seen_content {
            if let Some(last) = parts.last_mut() {
                last.body = &text[start..at];
            }
            parts.push(Part {
                lines_before: number,
                body: "",
            });
            start = at;
        }
        let content = line.trim();
        if !content.is_empty() && !content.starts_with('#') && !is_marker {
            seen_content = true;
        }
        at += line.len();
    }
    if let Some(last) = parts.last_mut() {
        last.body = &text[start..];
    }
    parts
}

/// The lines the documents of one text may be padded with in all: each
/// is padded with the lines before it, so that every location the parser
/// reports is already a line of the file. Without a bound, a text of many
/// `---` lines would make work and memory grow with the square of its
/// size; a configuration with a few alias documents needs a few thousand.
const MOST_PADDING_LINES: usize = 1 << 20;

/// The documents of `text` to parse, each padded with the lines before it;
/// `None` for a blank one, and for one past [`MOST_PADDING_LINES`]
/// (reported once).
fn documents(text: &str, report: &mut Report) -> Vec<Option<String>> {
    let mut padding_left = MOST_PADDING_LINES;
    let mut refused = false;
    split_documents(text)
        .into_iter()
        .map(|part| {
            if is_blank(part.body) {
                return None;
            }
            if part.lines_before > padding_left {
                if !std::mem::replace(&mut refused, true) {
                    report.error(
                        Location::UNKNOWN,
                        "the text holds more documents (`---`) than a configuration reads",
                        "one configuration document and an `--- !<authServerAlias>` document per auth server",
                    );
                }
                return None;
            }
            padding_left -= part.lines_before;
            let mut padded = "\n".repeat(part.lines_before);
            padded.push_str(part.body);
            Some(padded)
        })
        .collect()
}

/// A document of nothing but blank lines, comments and its `---`.
fn is_blank(body: &str) -> bool {
    body.lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
}

/// Which document of a file a body is: the configuration, or one of the
/// `--- !<authServerAlias>` documents after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Document {
    First,
    Alias,
}

fn parse_document<T: DeserializeOwned>(
    body: &str,
    document: Document,
    report: &mut Report,
) -> Option<T> {
    if is_blank(body) {
        return None;
    }
    if refuse_tags(body, document, report) {
        return None;
    }
    let options = options! {
        budget: budget! {
            max_depth: MAX_DEPTH,
            max_aliases: MAX_ALIASES,
            max_anchors: 1000,
            max_recorded_anchor_events: MAX_ALIAS_EVENTS,
            max_nodes: MAX_NODES,
            max_documents: 1,
        },
        // YAML 1.2 booleans only: `on`, `yes`, `off`, `no` stay text, and
        // `Ctx::boolean` refuses them with what they would have meant.
        strict_booleans: true,
        // Read untyped (`parse_untyped`), `007` and `1_000` stay text, as
        // a `raw::Scalar` reads them.
        leading_zero_numbers_as_strings: true,
        underscored_numbers_as_strings: true,
    };
    match serde_saphyr::from_str_with_options::<T>(body, options) {
        Ok(value) => Some(value),
        Err(error) => {
            let at = error.location().unwrap_or(Location::UNKNOWN);
            let (mut message, allowed) = describe(&error);
            if document == Document::Alias && !marked_as_alias(body) {
                message.push_str(LATER_DOCUMENT);
            }
            report.error(at, message, allowed);
            None
        }
    }
}

/// Said of an error in an untagged document after the first: what such a
/// document is, for a file split by a stray `---` or `...`.
const LATER_DOCUMENT: &str = " (a document after the first `---` is read as one auth server, as `--- !<authServerAlias>` exports are; the gateway's settings all go in the first document)";

/// Whether a later document's `---` line names it an auth server
/// (`--- !<authServerAlias>`).
fn marked_as_alias(body: &str) -> bool {
    body.lines()
        .find_map(|line| line.strip_prefix("---"))
        .is_some_and(|rest| rest.trim_start().starts_with("!<authServerAlias>"))
}

/// The one tag this file accepts: the webMethods alias export's.
const ALIAS_TAG: &str = "authServerAlias";

/// Reports every YAML tag of `body` except `!<authServerAlias>` on an
/// auth server: an entry of `security_settings.auth_servers` in the first
/// document, or a later document itself; true when one was found. A tag either changes what a value is
/// (`!!binary` decodes base64, `!!str` turns `on` into text) or is dropped
/// without a word (`!secret`): neither is what the reader of the file sees.
/// Events are read without expanding aliases, so an alias bomb costs
/// nothing here; nesting past the limit is left to the deserializer.
fn refuse_tags(body: &str, document: Document, report: &mut Report) -> bool {
    let mut found = false;
    let mut nodes = Nodes::default();
    for event in Parser::new_from_str(body) {
        // A syntax error is reported by the deserializer, with its position.
        let Ok((event, span)) = event else { break };
        let (tag, place) = match &event {
            Event::MappingStart(_, _, tag) => (tag, nodes.open(true)),
            Event::SequenceStart(_, _, tag) => (tag, nodes.open(false)),
            Event::Scalar(text, _, _, tag) => {
                nodes.scalar(text);
                (tag, Place::Other)
            }
            Event::Alias(_) => {
                nodes.scalar("");
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                nodes.close();
                continue;
            }
            _ => continue,
        };
        if nodes.depth() > MAX_DEPTH {
            break;
        }
        let Some(tag) = tag else { continue };
        let verbatim_alias = tag.handle().is_empty() && tag.suffix() == ALIAS_TAG;
        let auth_server = match document {
            Document::First => place == Place::AuthServerEntry,
            Document::Alias => place == Place::Root,
        };
        if verbatim_alias && auth_server {
            continue;
        }
        found = true;
        let at = span.tag_start.unwrap_or(span.start);
        report.push(Diagnostic {
            severity: Severity::Error,
            origin: Origin::File {
                path: report.path.clone(),
                line: at.line() as u64,
                column: at.col() as u64 + 1,
            },
            message: tag_problem(tag),
            allowed: Some("no tag, except `!<authServerAlias>` on an auth server entry".to_owned()),
        });
    }
    found
}

/// Where a mapping begins, as far as tags go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The document's own mapping.
    Root,
    /// An item of `security_settings.auth_servers`.
    AuthServerEntry,
    Other,
}

/// The collections open at an event, with the key each is the value of.
#[derive(Default)]
struct Nodes {
    open: Vec<Node>,
}

struct Node {
    mapping: bool,
    /// For a mapping: its key being read (`None` while a key is awaited).
    key: Option<String>,
    /// The key of the parent mapping this collection is the value of.
    under: Option<String>,
}

impl Nodes {
    fn depth(&self) -> usize {
        self.open.len()
    }

    /// A collection begins: where it is.
    fn open(&mut self, mapping: bool) -> Place {
        let place = match self.open.as_slice() {
            [] => Place::Root,
            [.., security, servers]
                if !servers.mapping
                    && servers.under.as_deref() == Some("auth_servers")
                    && security.under.as_deref() == Some("security_settings")
                    && self.open.len() == 3 =>
            {
                Place::AuthServerEntry
            }
            _ => Place::Other,
        };
        let under = self.open.last().and_then(|parent| parent.key.clone());
        self.open.push(Node {
            mapping,
            key: None,
            under,
        });
        place
    }

    /// A scalar (or an alias): a mapping's key, or a value that ends one.
    fn scalar(&mut self, text: &str) {
        if let Some(node) = self.open.last_mut().filter(|node| node.mapping) {
            node.key = match node.key {
                None => Some(text.to_owned()),
                Some(_) => None,
            };
        }
    }

    /// A collection ends: the value of its parent's key, if a mapping's.
    fn close(&mut self) {
        self.open.pop();
        if let Some(node) = self.open.last_mut().filter(|node| node.mapping) {
            node.key = None;
        }
    }
}

fn tag_problem(tag: &Tag) -> String {
    let written = match tag.original_handle() {
        "" => format!("!<{}>", tag.suffix()),
        handle => format!("{handle}{}", tag.suffix()),
    };
    if tag.handle() == "tag:yaml.org,2002:" && tag.suffix() == "binary" {
        return format!(
            "the YAML tag `{written}` is not accepted: binary values have no place in this file"
        );
    }
    format!("the YAML tag `{written}` is not accepted")
}

/// What a parser error means for the person editing the file, without the
/// position (the diagnostic carries it) and with what is allowed instead.
fn describe(error: &serde_saphyr::Error) -> (String, String) {
    use serde_saphyr::Error;
    let mut inner = error;
    while let Error::WithSnippet { error, .. } | Error::AliasError { error, .. } = inner {
        inner = error;
    }
    match inner {
        Error::SerdeUnknownField {
            field, expected, ..
        } => (
            format!("unknown key `{field}`"),
            format!("one of: {}", expected.join(", ")),
        ),
        Error::DuplicateMappingKey { key, .. } => (
            match key {
                Some(key) => format!("key `{key}` is written twice in this mapping"),
                None => "a key is written twice in this mapping".to_owned(),
            },
            "each key once".to_owned(),
        ),
        Error::Unexpected {
            expected: "string scalar",
            ..
        } => (
            "expected a single value (text, number or boolean), not a list or mapping".to_owned(),
            String::new(),
        ),
        Error::Budget {
            breach: BudgetBreach::Depth { .. },
            ..
        } => (
            format!("the YAML is nested deeper than {MAX_DEPTH} levels"),
            format!("at most {MAX_DEPTH} levels of nesting"),
        ),
        Error::Budget { .. } => (
            "the YAML expands beyond the parser's limits (aliases that multiply, or too many nodes)"
                .to_owned(),
            format!(
                "at most {MAX_ALIASES} aliases, {MAX_ALIAS_EVENTS} events replayed through aliases and {MAX_NODES} nodes"
            ),
        ),
        _ => (
            first_line(&serde_saphyr::DefaultMessageFormatter.format_message(error)),
            String::new(),
        ),
    }
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid YAML")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_document_markers_cost_work_in_proportion_to_the_text() {
        // 100,000 blank documents: padded each with the lines before it,
        // they would have asked for 5 GB.
        let text = format!("security_settings: {{}}\n{}", "---\n".repeat(100_000));
        let (file, _) = parse(Path::new("c.yaml"), &text).expect("blank documents are nothing");
        assert!(file.security_settings.auth_servers.is_empty());
        assert_eq!(
            parse_untyped(Path::new("c.yaml"), &text)
                .expect("read")
                .len(),
            100_001
        );
    }

    #[test]
    fn more_documents_than_a_configuration_reads_are_refused() {
        let text = format!(
            "ports: {{ http: 0 }}\n{}",
            "--- !<authServerAlias>\nname: a\n".repeat(3000)
        );
        let invalid = parse(Path::new("c.yaml"), &text).expect_err("refused");
        let refusals = invalid
            .findings
            .iter()
            .filter(|f| {
                f.message
                    .contains("more documents (`---`) than a configuration reads")
            })
            .count();
        assert_eq!(refusals, 1, "said once");
    }

    #[test]
    fn a_document_after_the_first_reports_lines_of_the_file() {
        let text = "ports: { http: 0 }\n# a comment\n--- !<authServerAlias>\nname: a\nbogus: 1\n";
        let invalid = parse(Path::new("c.yaml"), text).expect_err("an unknown key");
        assert!(
            invalid.findings.iter().any(|f| matches!(
                f.origin,
                super::super::diagnostic::Origin::File { line: 5, .. }
            )),
            "{:?}",
            invalid.findings
        );
    }
}
