//! Bearer extraction (`auth::extract::bearer`), from arbitrary header
//! fields and query. Invariants: no panic; a token is found only in the one
//! `Authorization` field, after a case-insensitive `Bearer` scheme, is not
//! empty, at most 8 KiB and b64token characters only (RFC 6750 §2.1); a
//! query with `access_token` is never the source of a token.
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::HeaderMap;
// The function under test: its one path in this target.
use microgateway::auth::extract::{bearer, Extracted, MAX_TOKEN_BYTES};

/// The input, line by line: the query (`-` for none), then one field a
/// line, `A` before the value of an `Authorization` field, anything else
/// before another field's.
struct Input {
    query: Option<String>,
    fields: Vec<(bool, Vec<u8>)>,
}

impl Input {
    fn read(data: &[u8]) -> Input {
        let mut lines = data.split(|&b| b == b'\n');
        let query = lines
            .next()
            .filter(|q| *q != b"-")
            .map(|q| String::from_utf8_lossy(q).into_owned());
        let fields = lines
            .filter_map(|line| line.split_first())
            .map(|(&kind, value)| (kind == b'A', value.to_vec()))
            .collect();
        Input { query, fields }
    }
}

fn b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// Checks one input; panics where an invariant does not hold.
pub fn input(data: &[u8]) {
    let input = Input::read(data);
    let mut headers = HeaderMap::new();
    for (authorization, value) in &input.fields {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let name = if *authorization {
            AUTHORIZATION
        } else {
            HeaderName::from_static("x-other")
        };
        headers.append(name, value);
    }
    let extracted = bearer(&headers, input.query.as_deref());
    let Extracted::Token(token) = extracted else {
        return;
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().expect("a token from some field");
    assert!(values.next().is_none(), "a token from one of two fields");
    let value = value.to_str().expect("a token's field is visible ASCII");
    let (scheme, rest) = value.split_once(' ').expect("a scheme");
    assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme {scheme:?}");
    assert_eq!(rest.trim_start_matches(' '), token);
    assert!(token.len() <= MAX_TOKEN_BYTES);
    assert!(b64token(token), "{token:?}");
    if let Some(query) = &input.query {
        assert!(
            !query
                .split('&')
                .any(|pair| pair.split('=').next() == Some("access_token")),
            "token accepted beside access_token in the query"
        );
    }
}
