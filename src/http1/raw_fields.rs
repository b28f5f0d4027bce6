//! An upstream answer's end-to-end fields, kept as its head holds them.
//!
//! Most answers pass the gateway unread: no policy of their API looks at
//! or changes a response field. A header map of such an answer would be
//! built (a name lookup, a hash and an insertion per field) only for the
//! encoder to read it back; its fields are instead kept as places in the
//! upstream's head and written to the client from there. The gateway's
//! own fields travel beside them ([`set_own`]: `X-Request-Id`, the
//! RateLimit fields) or in the response's map, and replace any of the
//! same name.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response};

/// What the encoder must know of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ContentLength,
    Date,
    Other,
}

/// One field: where its name and value are in the head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field {
    pub(super) name: (u32, u32),
    pub(super) value: (u32, u32),
    pub(super) kind: Kind,
}

/// The end-to-end fields of an upstream's response head, in its order
/// (carried in the response's extensions).
#[derive(Debug, Clone)]
pub struct RawFields {
    head: Bytes,
    fields: Vec<Field>,
    /// The gateway's own fields, written after the upstream's (none
    /// allocated until one is set).
    added: Vec<(&'static HeaderName, HeaderValue)>,
}

impl RawFields {
    pub(super) fn new(head: Bytes, fields: Vec<Field>) -> RawFields {
        RawFields {
            head,
            fields,
            added: Vec::new(),
        }
    }

    /// Each field's name (as the upstream wrote it), value and kind, in
    /// the upstream's order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], Kind)> + '_ {
        self.fields.iter().map(|field| {
            (
                slice(&self.head, field.name),
                slice(&self.head, field.value),
                field.kind,
            )
        })
    }

    /// Appends the fields as `name: value` lines, the names in lower case
    /// as a map's are written, then the gateway's own: all of the
    /// upstream's but those `own` or the gateway's own have a field of the
    /// same name, and `Content-Length` only if `keep_length`. Says whether
    /// a `Content-Length` and a `Date` were among the fields.
    pub fn write(&self, own: &HeaderMap, keep_length: bool, out: &mut Vec<u8>) -> (bool, bool) {
        // The lengths of the names replaced, as bits: most fields are told
        // apart from all of them by their length alone.
        let own_lengths = own
            .keys()
            .chain(self.added.iter().map(|(name, _)| *name))
            .fold(0u64, |bits, name| bits | 1 << name.as_str().len().min(63));
        let head = &self.head[..];
        let (mut had_length, mut had_date) = (false, false);
        for field in &self.fields {
            match field.kind {
                Kind::ContentLength => {
                    had_length = true;
                    if !keep_length {
                        continue;
                    }
                }
                Kind::Date => had_date = true,
                Kind::Other => {}
            }
            let (name_start, name_end) = (field.name.0 as usize, field.name.1 as usize);
            let (value_start, value_end) = (field.value.0 as usize, field.value.1 as usize);
            let name = &head[name_start..name_end];
            if own_lengths & 1 << name.len().min(63) != 0
                && own
                    .keys()
                    .chain(self.added.iter().map(|(name, _)| *name))
                    .any(|own| own.as_str().as_bytes().eq_ignore_ascii_case(name))
            {
                continue;
            }
            let start = out.len();
            if head.get(name_end..value_start) == Some(b": ")
                && head.get(value_end..value_end + 2) == Some(b"\r\n")
            {
                // The head has the very line: copied whole.
                out.extend_from_slice(&head[name_start..value_end + 2]);
            } else {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(&head[value_start..value_end]);
                out.extend_from_slice(b"\r\n");
            }
            out[start..start + name.len()].make_ascii_lowercase();
        }
        for (name, value) in &self.added {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (had_length, had_date)
    }

    /// Whether the gateway's own fields include `name` (the encoder then
    /// leaves the map's line of it out).
    pub fn adds(&self, name: &HeaderName) -> bool {
        self.added.iter().any(|(added, _)| *added == name)
    }

    /// The values of the fields named `name` (any case), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(field, _, _)| field.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value, _)| value)
    }

    /// Room to reserve for the fields as `name: value` lines: the size of
    /// the head they came from, and the gateway's own.
    pub fn wire_len(&self) -> usize {
        self.head.len()
            + self
                .added
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum::<usize>()
    }
}

/// Gives `response` the gateway's field `name: value`, replacing any the
/// upstream sent: beside the upstream's fields when they go out as sent
/// (no hashing, no insertion), else in its map. Each name is set at most
/// once per answer.
pub fn set_own<B>(response: &mut Response<B>, name: &'static HeaderName, value: HeaderValue) {
    match response.extensions_mut().get_mut::<RawFields>() {
        Some(raw) => {
            debug_assert!(!raw.adds(name), "{name} set twice on one answer");
            if raw.added.capacity() == 0 {
                // The most an answer gets: `X-Request-Id` and the two
                // RateLimit fields.
                raw.added.reserve_exact(3);
            }
            raw.added.push((name, value));
        }
        None => {
            response.headers_mut().insert(name.clone(), value);
        }
    }
}

fn slice(head: &Bytes, (start, end): (u32, u32)) -> &[u8] {
    // Within the head: the places were taken from it (`response_head`).
    &head[start as usize..end as usize]
}
