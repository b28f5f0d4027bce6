//! A client's request head (`http1::request_head::parse`), from arbitrary
//! bytes. Invariants: no panic; a head consumes at least one byte and no
//! more than the buffer held or the limit allows; a partial head consumes
//! nothing; a head fed in two pieces parses as it does in one; the framing
//! agrees with the fields it came from.
use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Version;
use microgateway::config::snapshot::Limits;
// The parser under test: its one path in this target.
use microgateway::http1::request_head::{parse, Framing, Parsed};

fn limits() -> Limits {
    Limits {
        max_header_bytes: 8 * 1024,
        max_headers: 32,
        max_uri: 2 * 1024,
        max_body: 1 << 20,
        max_connections: 10,
        max_tunnels: 10,
        max_streams: 10,
    }
}

/// A comparable summary of what `parse` said, and the bytes a head used.
fn outcome(buf: &mut BytesMut, first: bool) -> (String, Option<usize>) {
    let limits = limits();
    let before = buf.len();
    let parsed = parse(buf, &limits, first, &mut Vec::new());
    let after = buf.len();
    assert!(after <= before, "parse grew the buffer");
    match parsed {
        Ok(Parsed::Head(head)) => {
            let consumed = before - after;
            assert!(consumed > 0, "a head of no bytes");
            assert!(consumed <= limits.max_header_bytes, "head over the limit");
            check_framing(&head.request, head.framing);
            let summary = format!(
                "head {consumed} {:?} {:?} {:?} {:?} {} {}",
                head.request.method(),
                head.request.uri(),
                head.request.headers(),
                head.framing,
                head.keep_alive,
                head.expect_continue
            );
            (summary, Some(consumed))
        }
        Ok(Parsed::Partial) => {
            assert_eq!(after, before, "a partial head was consumed");
            assert!(before <= limits.max_header_bytes, "partial over the limit");
            ("partial".into(), None)
        }
        Ok(Parsed::Http2) => ("h2".into(), None),
        Err(refusal) => (format!("refused {refusal:?}"), None),
    }
}

fn check_framing(request: &http::Request<()>, framing: Framing) {
    let headers = request.headers();
    let lengths: Vec<&[u8]> = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes().trim_ascii())
        .collect();
    // A `Transfer-Encoding` field with an empty element is refused by the
    // parser, so in an accepted head every such field names a coding.
    let coded = headers.get_all(TRANSFER_ENCODING).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|coding| !coding.trim_ascii().is_empty())
    });
    match framing {
        Framing::Chunked => {
            assert!(coded && lengths.is_empty(), "chunked without its field");
            assert_eq!(request.version(), Version::HTTP_11, "chunked in HTTP/1.0");
        }
        Framing::Length(n) => {
            assert!(!coded, "length beside a transfer coding");
            assert!(!lengths.is_empty(), "a length from nowhere");
            for length in lengths {
                let said = std::str::from_utf8(length)
                    .ok()
                    .and_then(|l| l.parse().ok());
                assert_eq!(said, Some(n), "length differs");
            }
        }
        Framing::None => assert!(lengths.iter().all(|l| l.iter().all(|&b| b == b'0'))),
    }
}

/// Checks one input; panics where an invariant does not hold.
pub fn input(data: &[u8]) {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    for first in [false, true] {
        let whole = outcome(&mut BytesMut::from(data), first);
        let Some(consumed) = whole.1 else {
            continue;
        };
        // A prefix of a head is a partial head; completed, the same head.
        let at = usize::from(split) % consumed;
        let mut buf = BytesMut::from(&data[..at]);
        let (prefix, _) = outcome(&mut buf, first);
        assert_eq!(prefix, "partial", "prefix of {at} bytes");
        buf.extend_from_slice(&data[at..]);
        assert_eq!(outcome(&mut buf, first), whole, "split at {at}");
    }
}
