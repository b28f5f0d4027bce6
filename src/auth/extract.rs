//! Finding the one bearer token of a request (RFC 6750 §2.1). Tokens in the
//! query (§2.3) are refused: they end up in logs. Exactly one
//! `Authorization` header; the scheme is case-insensitive; the token must be
//! b64token characters and at most 8 KiB.

use http::header::AUTHORIZATION;
use http::HeaderMap;

use super::TokenProblem;

pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extracted<'a> {
    Token(&'a str),
    Missing,
    /// Two `Authorization` headers, or `access_token` in the query: 400.
    InvalidRequest(&'static str),
    Invalid(TokenProblem),
}

/// Why a request with a token in its query is refused (RFC 6750 §2.3).
pub const TOKEN_IN_QUERY: &str = "access_token in the query is not accepted";

/// Whether `query` carries a token (`access_token`, in any spelling an
/// upstream's framework reads as it).
pub fn token_in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| crate::path::query_names(q, b"access_token"))
}

pub fn bearer<'a>(headers: &'a HeaderMap, query: Option<&str>) -> Extracted<'a> {
    if token_in_query(query) {
        return Extracted::InvalidRequest(TOKEN_IN_QUERY);
    }
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Extracted::Missing;
    };
    if values.next().is_some() {
        return Extracted::InvalidRequest("more than one Authorization header");
    }
    let Some(text) = visible_ascii(value.as_bytes()) else {
        return Extracted::Invalid(TokenProblem::Malformed);
    };
    let Some((scheme, token)) = text.split_once(' ') else {
        return Extracted::Missing;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Extracted::Missing;
    }
    let token = token.trim_start_matches(' ');
    if token.len() > MAX_TOKEN_BYTES {
        return Extracted::Invalid(TokenProblem::TooLong);
    }
    if token.is_empty() || !is_b64token(token) {
        return Extracted::Invalid(TokenProblem::Malformed);
    }
    Extracted::Token(token)
}

/// The value as text when every byte is visible ASCII, space or tab (what
/// `HeaderValue::to_str` accepts), checked without an early exit so the
/// scan vectorizes: the value carries a token of up to 8 KiB.
fn visible_ascii(bytes: &[u8]) -> Option<&str> {
    let visible = bytes.iter().fold(true, |ok, &b| {
        ok & ((b' '..=b'~').contains(&b) | (b == b'\t'))
    });
    // ASCII is UTF-8; the conversion cannot fail once `visible` holds.
    visible.then(|| std::str::from_utf8(bytes).ok()).flatten()
}

/// RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    // No early exit: without one the loop vectorizes (tokens run to KiBs).
    !body.is_empty()
        && body.bytes().fold(true, |ok, b| {
            ok & (b.is_ascii_alphanumeric()
                | (b == b'-')
                | (b == b'.')
                | (b == b'_')
                | (b == b'~')
                | (b == b'+')
                | (b == b'/'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn visible_ascii_accepts_what_to_str_accepts() {
        for byte in 0..=255u8 {
            let raw = [b'a', byte, b'b'];
            let Ok(value) = HeaderValue::from_bytes(&raw) else {
                continue;
            };
            assert_eq!(visible_ascii(&raw), value.to_str().ok(), "byte {byte:#04x}");
        }
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(
            bearer(&headers(&["bEaReR abc.def"]), None),
            Extracted::Token("abc.def")
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(bearer(&headers(&[]), None), Extracted::Missing);
        assert_eq!(
            bearer(&headers(&["Basic dXNlcjpwdw=="]), None),
            Extracted::Missing
        );
        assert!(matches!(
            bearer(&headers(&["Bearer a", "Bearer b"]), None),
            Extracted::InvalidRequest(_)
        ));
        for query in ["x=1&access_token=t", "access%5Ftoken=t", "%61ccess_token"] {
            assert!(matches!(
                bearer(&headers(&[]), Some(query)),
                Extracted::InvalidRequest(_)
            ));
        }
        assert_eq!(
            bearer(&headers(&[]), Some("my_access_token=t")),
            Extracted::Missing
        );
        assert_eq!(
            bearer(&headers(&["Bearer a\"b"]), None),
            Extracted::Invalid(TokenProblem::Malformed)
        );
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(
            bearer(&headers(&[&long]), None),
            Extracted::Invalid(TokenProblem::TooLong)
        );
    }
}
