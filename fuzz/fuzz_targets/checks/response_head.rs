//! An upstream's response head (`http1::response_head::parse`), from
//! arbitrary bytes. Invariants: no panic; what is consumed was at the front
//! of the buffer (the rest is left as it was); a head fed in two pieces
//! parses as it does in one; no hop-by-hop field reaches the client; the
//! framing agrees with the fields left and with the connection's reuse;
//! the fields kept as sent (`Scratch::as_sent`), with a length restated
//! beside them, are the fields of the map.
use bytes::BytesMut;
use http::header::CONTENT_LENGTH;
use http::Method;
use microgateway::http1::is_hop_by_hop;
// The parser under test: its one path in this target.
use microgateway::http1::response_head::{parse, Framing, Head, Scratch};

fn outcome(buf: &mut BytesMut, method: &Method) -> String {
    let original = buf.to_vec();
    let parsed = parse(buf, method, &mut Scratch::default());
    assert!(original.ends_with(buf), "the bytes left changed");
    match parsed {
        Ok(Some(head)) => {
            assert!(buf.len() < original.len(), "a head of no bytes");
            check(&head, method);
            same_as_sent(&original, method, &head, buf.len());
            format!(
                "head {} {:?} {:?} {:?} {}",
                buf.len(),
                head.status,
                head.headers,
                head.framing,
                head.keep_alive
            )
        }
        Ok(None) => "partial".into(),
        Err(error) => format!("error {error}"),
    }
}

/// The head parsed again with its fields kept as sent: the same head, its
/// fields those of the map (in lower case; the order of fields of one
/// name kept).
fn same_as_sent(original: &[u8], method: &Method, head: &Head, left: usize) {
    let mut buf = BytesMut::from(original);
    let mut scratch = Scratch::default();
    scratch.as_sent = true;
    let sent = parse(&mut buf, method, &mut scratch)
        .expect("parsed as the map was")
        .expect("complete as the map was");
    assert_eq!(buf.len(), left);
    assert_eq!(
        (sent.status, sent.framing, sent.keep_alive),
        (head.status, head.framing, head.keep_alive)
    );
    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return; // not a final head: never kept as sent
    }
    // Beside the fields kept as sent, the map holds only what the parser
    // says itself: a length the upstream said more than once, restated.
    assert!(
        sent.headers.keys().all(|name| name == CONTENT_LENGTH),
        "{:?} beside the fields kept as sent",
        sent.headers
    );
    let mut raw: Vec<(String, Vec<u8>)> = sent
        .raw
        .expect("kept as sent")
        .iter()
        .map(|(name, value, _)| (String::from_utf8_lossy(name).to_lowercase(), value.to_vec()))
        .collect();
    raw.extend(
        sent.headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())),
    );
    let mut map: Vec<(String, Vec<u8>)> = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    map.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(raw, map);
}

fn check(head: &Head, method: &Method) {
    assert!(!head.status.is_informational(), "a 1xx as the final head");
    for name in head.headers.keys() {
        assert!(!is_hop_by_hop(name), "{name} passed on");
    }
    let lengths: Vec<u64> = head
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|member| {
            std::str::from_utf8(member.trim_ascii())
                .ok()
                .and_then(|m| m.parse().ok())
                .expect("a Content-Length passed on is digits")
        })
        .collect();
    match head.framing {
        Framing::Empty => {}
        Framing::Length(n) => assert!(lengths.iter().all(|&l| l == n) && !lengths.is_empty()),
        Framing::Chunked => assert!(lengths.is_empty(), "length beside chunked"),
        Framing::UntilClose => assert!(!head.keep_alive, "until close, yet kept"),
    }
    if *method == Method::HEAD || head.status == 204 || head.status == 304 {
        assert_eq!(head.framing, Framing::Empty);
    }
}

/// Checks one input; panics where an invariant does not hold.
pub fn input(data: &[u8]) {
    let Some((&choice, data)) = data.split_first() else {
        return;
    };
    let method = match choice % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::DELETE,
    };
    let whole = outcome(&mut BytesMut::from(data), &method);
    let Some(left) = whole
        .strip_prefix("head ")
        .and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok())
    else {
        return;
    };
    // A prefix of a head is a partial head; completed, the same head.
    let consumed = data.len() - left;
    let at = usize::from(choice / 4) * consumed / 64;
    let mut buf = BytesMut::from(&data[..at]);
    let prefix = outcome(&mut buf, &method);
    assert_eq!(prefix, "partial", "prefix of {at} bytes");
    buf.extend_from_slice(&data[at..]);
    assert_eq!(outcome(&mut buf, &method), whole, "split at {at}");
}
