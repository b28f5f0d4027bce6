//! A request's identity across hops: `X-Request-Id` and the W3C trace
//! context (`traceparent`), set on the request before any phase so the
//! upstream, the access log and the client's answer share them.
//!
//! - `X-Request-Id` is kept when a trusted proxy sent a well-formed one
//!   (printable token characters, at most [`MAX_REQUEST_ID`] bytes);
//!   otherwise the gateway makes one (128 random bits, hex). A client
//!   cannot choose the id that the logs will carry.
//! - `traceparent` (W3C Trace Context) is passed on when well formed,
//!   from anyone (it names a trace, grants nothing); a malformed one is
//!   removed with any `tracestate` that went with it. With
//!   `forwarding.traceparent: true` the gateway starts a trace
//!   (`00-<trace-id>-<parent-id>-01`) where there was no valid one.
//!
//! `forwarding.request_id: false` makes no id (a trusted proxy's is still
//! kept, a client's still removed). `forwarding.traceparent` is off by
//! default: the gateway records no span, and a trace it starts as sampled
//! would have every upstream that samples by its parent record every
//! request.

use std::cell::RefCell;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use rand::RngCore;

use crate::config::snapshot::Forwarding;
use crate::http1::parsed_value;
use crate::http1::request_encode::AddedFields;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `X-Request-Id` taken from a trusted proxy.
pub const MAX_REQUEST_ID: usize = 128;

/// Decides the request's `X-Request-Id` and `traceparent`; returns the id
/// (none when `forwarding.request_id` is off and no trusted proxy sent
/// one). The ones the gateway makes go to `added` (written after the
/// request's fields), the client's lines they replace leave `headers`.
pub fn correlate(
    headers: &mut HeaderMap,
    from_trusted: bool,
    added: &mut AddedFields,
    make: Forwarding,
) -> Option<HeaderValue> {
    // One pass over the fields instead of a lookup per name: most
    // requests carry none of the three.
    let mut request_id = Seen::None;
    let mut traceparent = Seen::None;
    let mut tracestate = false;
    for (name, value) in headers.iter() {
        if name == X_REQUEST_ID {
            request_id = request_id.and(value);
        } else if name == TRACEPARENT {
            traceparent = traceparent.and(value);
        } else if name == TRACESTATE {
            tracestate = true;
        }
    }
    let sent_id = !matches!(request_id, Seen::None);
    let sent_traceparent = !matches!(traceparent, Seen::None);
    let kept = match request_id {
        Seen::Once(id) if from_trusted && valid_request_id(id.as_bytes()) => Some(id.clone()),
        _ => None,
    };
    let traced = matches!(traceparent, Seen::Once(t) if valid_traceparent(t.as_bytes()));
    if kept.is_none() && sent_id {
        headers.remove(&X_REQUEST_ID);
    }
    if !traced {
        if tracestate {
            headers.remove(&TRACESTATE);
        }
        if sent_traceparent {
            headers.remove(&TRACEPARENT);
        }
    }
    let make_id = kept.is_none() && make.request_id;
    let start_trace = !traced && make.traceparent;
    if !(make_id || start_trace) {
        return kept; // nothing to make
    }
    let text = made_text(&random_ids());
    let id = if make_id {
        let id = parsed_value(&text, ID_TEXT);
        added.add(&X_REQUEST_ID, id.clone());
        Some(id)
    } else {
        kept
    };
    if start_trace {
        added.add(&TRACEPARENT, parsed_value(&text, TRACE_TEXT));
    }
    id
}

/// How often a field was seen: its value when exactly once.
enum Seen<'a> {
    None,
    Once(&'a HeaderValue),
    More,
}

impl<'a> Seen<'a> {
    fn and(self, value: &'a HeaderValue) -> Seen<'a> {
        match self {
            Seen::None => Seen::Once(value),
            _ => Seen::More,
        }
    }
}

fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

/// `version-traceid-parentid-flags` (W3C Trace Context §3.2): lower-case
/// hex, ids not all zero, version `ff` invalid; a future version may add
/// fields after a `-`.
fn valid_traceparent(value: &[u8]) -> bool {
    let hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |part: &[u8]| part.iter().any(|&b| b != b'0');
    if value.len() < 55 {
        return false;
    }
    let (version, trace, parent, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let rest_ok = match version {
        b"00" => value.len() == 55,
        _ => value.len() == 55 || value[55] == b'-',
    };
    dashes
        && rest_ok
        && version != b"ff"
        && hex(version)
        && hex(trace)
        && hex(parent)
        && hex(flags)
        && nonzero(trace)
        && nonzero(parent)
}

/// 40 random bytes: a request id (16), a trace id (16) and a parent id
/// (8). None is all zero (W3C Trace Context §3.2.2.3 makes such ids
/// invalid; the chance is 2^-64 at most).
fn random_ids() -> [u8; 40] {
    let mut bytes = [0u8; 40];
    rand::rng().fill_bytes(&mut bytes);
    for id in bytes.chunks_mut(16) {
        if id.iter().all(|&b| b == 0) {
            id[id.len() - 1] = 1;
        }
    }
    bytes
}

/// Where the request id (32 hex digits) and the new `traceparent` lie in
/// [`made_text`].
const ID_TEXT: Range<usize> = 0..32;
const TRACE_TEXT: Range<usize> = 32..87;

/// Requests whose made values one block of text holds.
const TEXTS_PER_BLOCK: usize = 188;

/// The text of a request id and a new `traceparent` from the 40 random
/// bytes of [`random_ids`], side by side. It is cut from a block each
/// thread keeps (16 KiB): the request's values are slices of it, with no
/// allocation of their own, and a block is freed when the last value cut
/// from it is dropped.
fn made_text(ids: &[u8; 40]) -> Bytes {
    thread_local! {
        static BLOCK: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    }
    let mut text = *b"0123456789abcdef0123456789abcdef\
        00-00000000000000000000000000000000-0000000000000000-01";
    hex_into(&mut text[ID_TEXT], &ids[..16]);
    hex_into(
        &mut text[TRACE_TEXT.start + 3..TRACE_TEXT.start + 35],
        &ids[16..32],
    );
    hex_into(
        &mut text[TRACE_TEXT.start + 36..TRACE_TEXT.start + 52],
        &ids[32..],
    );
    BLOCK.with(|block| {
        let mut block = block.borrow_mut();
        if block.capacity() - block.len() < text.len() {
            *block = BytesMut::with_capacity(TEXTS_PER_BLOCK * text.len());
        }
        block.extend_from_slice(&text);
        block.split().freeze()
    })
}

/// Each byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 15]];
        byte += 1;
    }
    pairs
};

/// Lower-case hex of `bytes` into `out` (twice as long): one lookup per
/// byte, for the 40 random bytes of every request.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `correlate` making both an id and a trace, its added fields put
    /// into the map as the upstream receives them.
    fn correlated(headers: &mut HeaderMap, from_trusted: bool) -> HeaderValue {
        let both = Forwarding {
            traceparent: true,
            ..Forwarding::default()
        };
        correlated_making(headers, from_trusted, both).expect("an id")
    }

    fn correlated_making(
        headers: &mut HeaderMap,
        from_trusted: bool,
        make: Forwarding,
    ) -> Option<HeaderValue> {
        let mut added = AddedFields::new();
        let id = correlate(headers, from_trusted, &mut added, make);
        added.insert_into(headers);
        id
    }

    #[test]
    fn switched_off_nothing_is_made_and_nothing_a_client_sent_is_believed() {
        let off = Forwarding {
            request_id: false,
            traceparent: false,
            ..Forwarding::default()
        };
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // Nothing sent: nothing made.
        let mut headers = HeaderMap::new();
        assert_eq!(correlated_making(&mut headers, false, off), None);
        assert!(headers.is_empty());
        // A client's id is still removed; a valid trace still passed on.
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("mine"));
        headers.insert(&TRACEPARENT, HeaderValue::from_static(good));
        assert_eq!(correlated_making(&mut headers, false, off), None);
        assert!(!headers.contains_key(&X_REQUEST_ID));
        assert_eq!(headers.get(&TRACEPARENT).unwrap(), good);
        // A trusted proxy's id is kept; a malformed trace removed with its state.
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("lb-42"));
        headers.insert(&TRACEPARENT, HeaderValue::from_static("garbage"));
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        let kept = correlated_making(&mut headers, true, off);
        assert_eq!(
            kept.as_ref().map(HeaderValue::as_bytes),
            Some(&b"lb-42"[..])
        );
        assert_eq!(headers.get(&X_REQUEST_ID).unwrap(), "lb-42");
        assert!(!headers.contains_key(&TRACEPARENT));
        assert!(!headers.contains_key(&TRACESTATE));
        // One on, the other off: by default, an id and no trace.
        let mut headers = HeaderMap::new();
        let made = correlated_making(&mut headers, false, Forwarding::default()).expect("an id");
        assert_eq!(headers.get(&X_REQUEST_ID), Some(&made));
        assert!(!headers.contains_key(&TRACEPARENT));
    }

    #[test]
    fn made_values_stay_whole_across_blocks() {
        // More than a block's worth: values cut from a block outlive it.
        let made: Vec<(Bytes, HeaderValue, HeaderValue)> = (0..TEXTS_PER_BLOCK * 2 + 3)
            .map(|i| {
                let mut ids = [0u8; 40];
                ids[..8].copy_from_slice(&(i as u64).to_be_bytes());
                ids[31] = 1;
                ids[39] = 1;
                let text = made_text(&ids);
                let id = parsed_value(&text, ID_TEXT);
                let trace = parsed_value(&text, TRACE_TEXT);
                (text, id, trace)
            })
            .collect();
        for (i, (text, id, trace)) in made.iter().enumerate() {
            assert_eq!(text.len(), TRACE_TEXT.end);
            assert_eq!(&id.as_bytes()[..16], format!("{i:016x}").as_bytes());
            assert!(valid_request_id(id.as_bytes()));
            assert!(valid_traceparent(trace.as_bytes()), "{trace:?}");
            assert!(trace.as_bytes().ends_with(b"0000000000000001-01"));
        }
    }

    #[test]
    fn every_byte_is_two_lower_case_hex_digits() {
        let bytes: Vec<u8> = (0..=u8::MAX).collect();
        let mut out = vec![0; 512];
        hex_into(&mut out, &bytes);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn a_trusted_proxys_id_is_kept_and_a_clients_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("lb-42"));
        assert_eq!(correlated(&mut headers.clone(), true), "lb-42");
        let made = correlated(&mut headers, false);
        assert_ne!(made, "lb-42");
        assert_eq!(made.len(), 32);
        assert_eq!(headers.get(&X_REQUEST_ID), Some(&made));
        // Malformed or doubled ids from a trusted proxy are replaced too.
        for bad in ["", "has space", &"x".repeat(MAX_REQUEST_ID + 1)] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            assert_ne!(correlated(&mut headers, true), bad);
        }
        let mut doubled = HeaderMap::new();
        doubled.append(&X_REQUEST_ID, HeaderValue::from_static("a"));
        doubled.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        correlated(&mut doubled, true);
        assert_eq!(doubled.get_all(&X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn a_valid_traceparent_is_passed_on_and_a_missing_or_bad_one_replaced() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert(&TRACEPARENT, HeaderValue::from_static(good));
        headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
        correlated(&mut headers, false);
        assert_eq!(headers.get(&TRACEPARENT).unwrap(), good);
        assert!(headers.contains_key(&TRACESTATE));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(&TRACEPARENT, HeaderValue::from_static(bad));
            headers.insert(&TRACESTATE, HeaderValue::from_static("congo=t61rcWkgMzE"));
            correlated(&mut headers, false);
            let made = headers
                .get(&TRACEPARENT)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            assert_ne!(made, bad);
            assert!(valid_traceparent(made.as_bytes()), "{made}");
            assert!(!headers.contains_key(&TRACESTATE), "{bad}");
        }
        // A later version may carry more fields.
        assert!(valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes"
        ));
    }
}
