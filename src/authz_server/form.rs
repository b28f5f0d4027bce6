//! `application/x-www-form-urlencoded` request bodies and queries (RFC 6749
//! Appendix B) as the endpoints receive them.
//!
//! RFC 6749 §3.1: a parameter sent without a value is treated as omitted,
//! and a parameter must not be sent more than once — a duplicate of a name
//! the server reads ([`READ`]) refuses the whole request, so two parts of
//! the server can never read two different values of one name. Only a name
//! the caller declares repeatable (the approval page's scope checkboxes)
//! may come several times. Other names are ignored, repeated or not (§3.1:
//! unrecognized parameters are ignored; RFC 8707 sends `resource` once per
//! resource).
//!
//! Parsing is linear and bounded, since it runs before any client is
//! authenticated: at most [`MAX_FORM_BYTES`] and [`MAX_PARAMS`] parameters
//! (counted before anything is decoded), duplicates found with a set.

use std::collections::HashSet;

use http::{header, HeaderMap};
use percent_encoding::percent_decode;

/// Whether a request body is declared `application/x-www-form-urlencoded`
/// (RFC 6749 §3.2 and §4.1.3: the endpoints take nothing else).
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Every parameter some endpoint reads (the token, revocation,
/// introspection and authorization endpoints and the approval form): the
/// names that must not repeat. Reading another is a mistake, caught by the
/// tests: its repeats would not be refused.
pub const READ: &[&str] = &[
    "grant_type",
    "code",
    "redirect_uri",
    "code_verifier",
    "client_id",
    "client_secret",
    "scope",
    "username",
    "password",
    "refresh_token",
    "token",
    "token_type_hint",
    "response_type",
    "state",
    "code_challenge",
    "code_challenge_method",
    "csrf_token",
    "action",
    "grant_scope",
];

/// Most parameters a form may carry; the largest OAuth request has about
/// fifteen (the approval form: its hidden fields and a box per scope).
pub const MAX_PARAMS: usize = 64;

/// Largest form parsed, the endpoints' body limit.
pub const MAX_FORM_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("parameter sent more than once")]
    Duplicate,
    #[error("parameter is not valid UTF-8 after decoding")]
    NotUtf8,
    #[error("more than {MAX_PARAMS} parameters")]
    TooManyParams,
    #[error("form larger than {MAX_FORM_BYTES} bytes")]
    TooLarge,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Form {
    params: Vec<(String, String)>,
}

impl Form {
    pub fn parse(body: &[u8]) -> Result<Form, FormError> {
        Form::parse_repeating(body, &[])
    }

    /// Like [`parse`](Self::parse), but the names in `repeatable` may come
    /// more than once (read them with [`all`](Self::all)).
    pub fn parse_repeating(body: &[u8], repeatable: &[&str]) -> Result<Form, FormError> {
        let form = Form::parse_keeping_repeats(body)?;
        match form.repeated(repeatable) {
            Some(_) => Err(FormError::Duplicate),
            None => Ok(form),
        }
    }

    /// The form with every parameter as sent, repeated ones included
    /// ([`get`](Self::get) reads the first): for an endpoint that must
    /// know more of a request than that it repeats a name
    /// ([`repeated`](Self::repeated)).
    pub fn parse_keeping_repeats(body: &[u8]) -> Result<Form, FormError> {
        if body.len() > MAX_FORM_BYTES {
            return Err(FormError::TooLarge);
        }
        let pairs = || body.split(|b| *b == b'&').filter(|p| !p.is_empty());
        if pairs().nth(MAX_PARAMS).is_some() {
            return Err(FormError::TooManyParams);
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in pairs() {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &b""[..]),
            };
            // Kept even when the value is empty, so a duplicate still counts.
            params.push((decode(name)?, decode(value)?));
        }
        Ok(Form { params })
    }

    /// The first name the server reads ([`READ`]) sent more than once
    /// (RFC 6749 §3.1: refused), but those in `repeatable`.
    pub fn repeated(&self, repeatable: &[&str]) -> Option<&str> {
        let mut seen = HashSet::with_capacity(self.params.len());
        self.params
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| READ.contains(name))
            .find(|name| !seen.insert(*name) && !repeatable.contains(name))
    }

    /// Whether `name` is sent more than once, empty values included.
    pub fn repeats(&self, name: &str) -> bool {
        read(name);
        self.params
            .iter()
            .filter(|(n, _)| n == name)
            .nth(1)
            .is_some()
    }

    /// The value of `name`; `None` when absent or empty (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        read(name);
        self.params
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every non-empty value of `name`, in the order sent.
    pub fn all<'f>(&'f self, name: &'f str) -> impl Iterator<Item = &'f str> + 'f {
        read(name);
        self.params
            .iter()
            .filter(move |(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }
}

/// A name read must be one whose repeats are refused.
fn read(name: &str) {
    debug_assert!(
        READ.contains(&name),
        "`{name}` is read from forms but missing from form::READ"
    );
}

/// Form-urldecoding: `+` is a space, then percent-decoding (also used for
/// the parts of HTTP Basic client credentials, RFC 6749 §2.3.1).
pub fn decode(raw: &[u8]) -> Result<String, FormError> {
    let spaced: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    let bytes: Vec<u8> = percent_decode(&spaced).collect();
    String::from_utf8(bytes).map_err(|_| FormError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_percent() {
        let form = Form::parse(b"grant_type=password&username=al%69ce+b&scope=").expect("form");
        assert_eq!(form.get("username"), Some("alice b"));
        assert_eq!(form.get("grant_type"), Some("password"));
        assert_eq!(form.get("scope"), None);
    }

    #[test]
    fn duplicates_are_refused_even_when_empty() {
        assert_eq!(Form::parse(b"scope=a&scope=b"), Err(FormError::Duplicate));
        assert_eq!(Form::parse(b"scope=&scope=b"), Err(FormError::Duplicate));
        assert_eq!(Form::parse(b"s%63ope=a&scope=b"), Err(FormError::Duplicate));
    }

    #[test]
    fn repeats_kept_are_told_and_read_first_one_first() {
        let form =
            Form::parse_keeping_repeats(b"code=1&scope=2&scope=3&state=4&state=5").expect("form");
        assert_eq!(form.repeated(&[]), Some("scope"));
        assert_eq!(form.repeated(&["scope"]), Some("state"));
        assert_eq!(form.repeated(&["scope", "state"]), None);
        assert!(form.repeats("state") && !form.repeats("code") && !form.repeats("token"));
        let empty = Form::parse_keeping_repeats(b"state=&state=4").expect("form");
        assert!(empty.repeats("state"));
        assert_eq!(form.get("scope"), Some("2"));
        assert_eq!(
            Form::parse_repeating(b"scope=2&scope=3", &["scope"]).map(|f| f.all("scope").count()),
            Ok(2)
        );
    }

    #[test]
    fn only_declared_names_repeat() {
        let form = Form::parse_repeating(
            b"grant_scope=view&grant_scope=book&action=approve",
            &["grant_scope"],
        )
        .expect("form");
        assert_eq!(
            form.all("grant_scope").collect::<Vec<_>>(),
            ["view", "book"]
        );
        assert_eq!(
            Form::parse_repeating(b"grant_scope=a&action=x&action=y", &["grant_scope"]),
            Err(FormError::Duplicate)
        );
    }

    /// RFC 6749 §3.1: parameters the server does not read are ignored,
    /// repeated or not (RFC 8707's `resource` comes once per resource).
    #[test]
    fn names_no_endpoint_reads_may_repeat() {
        let form = Form::parse(
            b"grant_type=client_credentials&resource=https%3A%2F%2Fa&resource=https%3A%2F%2Fb&x=&x=",
        )
        .expect("form");
        assert_eq!(form.get("grant_type"), Some("client_credentials"));
        assert_eq!(
            Form::parse(b"resource=a&grant_type=x&grant_type=y"),
            Err(FormError::Duplicate)
        );
    }

    #[test]
    fn at_most_64_parameters() {
        let form = |count: usize| {
            (0..count)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join("&")
        };
        assert!(Form::parse(form(MAX_PARAMS).as_bytes()).is_ok());
        assert_eq!(
            Form::parse(form(MAX_PARAMS + 1).as_bytes()),
            Err(FormError::TooManyParams)
        );
        // Empty pieces are not parameters.
        assert!(Form::parse(format!("&&{}&&", form(MAX_PARAMS)).as_bytes()).is_ok());
    }

    #[test]
    fn a_full_size_form_of_many_keys_is_refused_before_any_decoding() {
        // 64 KiB of over 8k distinct keys: refused on the count, which
        // stops at the 65th pair, before one name is decoded or compared.
        let mut body = Vec::new();
        let mut i = 0;
        while body.len() + 16 < MAX_FORM_BYTES {
            body.extend_from_slice(format!("{i:x}=v&").as_bytes());
            i += 1;
        }
        assert!(i > 8000, "{i} parameters");
        assert_eq!(Form::parse(&body), Err(FormError::TooManyParams));
        // Invalid UTF-8 in the 65th pair is never reached: the count decides.
        let mut bad = form_of(MAX_PARAMS);
        bad.extend_from_slice(b"&x=%ff");
        assert_eq!(Form::parse(&bad), Err(FormError::TooManyParams));
        body.resize(MAX_FORM_BYTES + 1, b'a');
        assert_eq!(Form::parse(&body), Err(FormError::TooLarge));
    }

    fn form_of(count: usize) -> Vec<u8> {
        (0..count)
            .map(|i| format!("p{i}=v"))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(Form::parse(b"a=%ff"), Err(FormError::NotUtf8));
    }
}
