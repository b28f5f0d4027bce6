//! Encode → decode round trips of the HTTP/1.1 codec, for generated
//! messages: the chunked coding gives any data back whatever the chunk
//! sizes and however the encoded bytes arrive; a response head the server
//! encodes parses, with the upstream client's parser, to the same status,
//! fields and framing; a request head the upstream client encodes parses,
//! with the server's parser, to the same method, target, fields and framing.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::SizeHint;
use http_body_util::{BodyExt, StreamBody};
use microgateway::config::snapshot::Limits;
use microgateway::http1::is_hop_by_hop;
use microgateway::proxy::{empty, full, Body, BoxError};
use proptest::prelude::*;

// The codec's parts under test, each named once here.
use microgateway::http1::chunked::{
    encode as encode_chunk, Chunked, Decoded, Delimited, LAST_CHUNK,
};
use microgateway::http1::request_encode::{
    encode as encode_request, AddedFields, BodyFraming, Destination,
};
use microgateway::http1::request_head::{
    parse as parse_request, Framing as RequestFraming, Parsed,
};
use microgateway::http1::response_encode::{
    head as encode_response, BodyFraming as ResponseBodyFraming, Exchange,
};
use microgateway::http1::response_head::{
    parse as parse_response, Framing as ResponseFraming, Scratch,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decodes a chunked body arriving in pieces of `sizes` (cycled): the data
/// and what follows the body, or `None` when the framing is refused or the
/// bytes run out first.
fn decode_chunked(encoded: &[u8], sizes: &[usize]) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut decoder = Delimited::Chunked(Chunked::new());
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut rest = encoded;
    let mut sizes = sizes.iter().cycle();
    loop {
        match decoder.decode(&mut buf).ok()? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => {
                let mut left = buf.to_vec();
                left.extend_from_slice(rest);
                return Some((body, left));
            }
            Decoded::NeedMore if rest.is_empty() => return None,
            Decoded::NeedMore => {
                let take = sizes.next().map_or(rest.len(), |&n| n.clamp(1, rest.len()));
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
        }
    }
}

/// A field name: a token, lower case as `HeaderName` keeps it.
fn field_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        "[a-z][a-z0-9!#$%&'*+.^_`|~-]{0,15}",
        Just("x-forwarded-for".to_owned()),
        Just("content-type".to_owned()),
        Just("cache-control".to_owned()),
        Just("set-cookie".to_owned()),
    ]
    .prop_map(|name| HeaderName::from_bytes(name.as_bytes()).expect("a token"))
}

/// A field value: visible ASCII and obs-text, inner spaces and tabs, none
/// at either end (RFC 9110 §5.5: those are not part of the value).
fn field_value() -> impl Strategy<Value = HeaderValue> {
    proptest::collection::vec(
        prop_oneof![
            8 => 0x21u8..0x7f,
            1 => Just(b' '),
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
        ],
        0..40,
    )
    .prop_map(|mut value| {
        while value.last().is_some_and(|&b| b == b' ' || b == b'\t') {
            value.pop();
        }
        while value.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            value.remove(0);
        }
        HeaderValue::from_bytes(&value).expect("no control bytes")
    })
}

fn fields() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
    proptest::collection::vec((field_name(), field_value()), 0..12)
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        Just(Method::PATCH),
        "[A-Z][A-Z-]{0,11}".prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a token")),
    ]
}

/// An origin-form target as the gateway forwards it.
fn target() -> impl Strategy<Value = String> {
    "(/[a-zA-Z0-9._~%!$&'()*+,=:@-]{0,12}){1,4}(\\?[a-zA-Z0-9=&%/?-]{0,20})?"
}

fn header_map(fields: &[(HeaderName, HeaderValue)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        map.append(name.clone(), value.clone());
    }
    map
}

/// A body of `len` bytes, its length known or not.
fn body(len: usize, known: bool) -> Body {
    if len == 0 && known {
        return empty();
    }
    let data = Bytes::from(vec![b'x'; len]);
    if known {
        return full(data);
    }
    let frames = futures_util::stream::iter([Ok::<_, BoxError>(http_body::Frame::data(data))]);
    StreamBody::new(frames).boxed()
}

fn limits() -> Limits {
    Limits {
        max_header_bytes: 64 * 1024,
        max_headers: 100,
        max_uri: 8 * 1024,
        max_body: 1 << 20,
        max_connections: 10,
        max_tunnels: 10,
        max_streams: 10,
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn chunked_data_decodes_back_whatever_the_chunks_and_pieces(
        data in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk_sizes in proptest::collection::vec(1usize..300, 1..8),
        piece_sizes in proptest::collection::vec(1usize..64, 0..8),
    ) {
        let mut encoded = Vec::new();
        let mut rest = &data[..];
        let mut chunks = chunk_sizes.iter().cycle();
        while !rest.is_empty() {
            let take = chunks.next().map_or(rest.len(), |&n| n.min(rest.len()));
            encode_chunk(&rest[..take], &mut encoded);
            rest = &rest[take..];
        }
        encoded.extend_from_slice(LAST_CHUNK);
        encoded.extend_from_slice(b"GET /next");
        let decoded = decode_chunked(&encoded, &piece_sizes);
        prop_assert_eq!(decoded, Some((data, b"GET /next".to_vec())));
    }

    #[test]
    fn a_response_head_the_server_encodes_parses_back_the_same(
        status in 200u16..600,
        fields in fields(),
        size in prop_oneof![(0u64..1 << 40).prop_map(Some), Just(None)],
        method in prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::POST)],
        http11 in any::<bool>(),
        keep_alive in any::<bool>(),
    ) {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::from_u16(status).expect("a status");
        *response.headers_mut() = header_map(&fields);
        let (parts, ()) = response.into_parts();
        let size = size.map_or_else(SizeHint::default, SizeHint::with_exact);
        let exchange = Exchange { method: &method, http11, keep_alive };
        let mut out = Vec::new();
        let (framing, kept) = encode_response(&parts, &size, exchange, &mut out);

        let mut buf = BytesMut::from(&out[..]);
        let head = parse_response(&mut buf, &method, &mut Scratch::default())
            .expect("an encoded head parses")
            .expect("an encoded head is complete");
        prop_assert!(buf.is_empty(), "bytes left after the head");
        prop_assert_eq!(head.status, parts.status);
        prop_assert_eq!(head.keep_alive, kept);
        let expected = match framing {
            ResponseBodyFraming::Length(n) => ResponseFraming::Length(n),
            ResponseBodyFraming::Chunked => ResponseFraming::Chunked,
            ResponseBodyFraming::UntilClose => ResponseFraming::UntilClose,
            ResponseBodyFraming::None => ResponseFraming::Empty,
        };
        prop_assert_eq!(head.framing, expected);
        // The handler's fields arrive as they were, but for the framing and
        // connection fields (the encoder's alone) and a date it adds.
        let mut sent = parts.headers.clone();
        for name in [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION] {
            sent.remove(name);
        }
        let names: Vec<HeaderName> = sent.keys().cloned().collect();
        for name in names.iter().filter(|name| is_hop_by_hop(name)) {
            sent.remove(name);
        }
        let mut received = head.headers.clone();
        received.remove(CONTENT_LENGTH);
        if !parts.headers.contains_key(http::header::DATE) {
            received.remove(http::header::DATE);
        }
        prop_assert_eq!(received, sent);
    }

    #[test]
    fn a_request_head_the_client_encodes_parses_back_the_same(
        method in method(),
        target in target(),
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        fields in fields(),
        len in 0usize..64,
        known in any::<bool>(),
        said_length in any::<bool>(),
    ) {
        let mut request = Request::new(body(len, known));
        *request.method_mut() = method.clone();
        *request.headers_mut() = header_map(&fields);
        if said_length {
            request.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        let (parts, body) = request.into_parts();
        let host = HeaderValue::from_str(&host).expect("a host");
        let destination = Destination { path_and_query: &target, host: &host, added: AddedFields::none(), room: 0, as_sent: false };
        let mut out = Vec::new();
        let framing = encode_request(&parts, &body, destination, &mut out);

        let mut buf = BytesMut::from(&out[..]);
        let parsed = parse_request(&mut buf, &limits(), false, &mut Vec::new());
        let Ok(Parsed::Head(head)) = parsed else {
            return Err(TestCaseError::fail(format!(
                "{parsed:?} for {:?}", String::from_utf8_lossy(&out)
            )));
        };
        prop_assert!(buf.is_empty(), "bytes left after the head");
        prop_assert_eq!(head.request.method(), &method);
        prop_assert_eq!(head.request.uri().to_string(), target);
        let expected = match framing {
            BodyFraming::None => RequestFraming::None,
            BodyFraming::Length(n) => RequestFraming::Length(n),
            BodyFraming::Chunked => RequestFraming::Chunked,
        };
        prop_assert_eq!(head.framing, expected);
        let mut sent = parts.headers.clone();
        for name in [CONTENT_LENGTH, TRANSFER_ENCODING, HOST] {
            sent.remove(name);
        }
        sent.insert(HOST, host);
        let mut received = head.request.headers().clone();
        received.remove(CONTENT_LENGTH);
        received.remove(TRANSFER_ENCODING);
        prop_assert_eq!(received, sent);
    }
}
