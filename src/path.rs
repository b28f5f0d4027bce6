//! Canonicalising a request path, once: percent-decoding of the
//! characters a path segment holds as they are (unreserved ones, RFC 3986
//! §6.2.2.2, and the sub-delimiters, `:` and `@` of §3.3, but `;`),
//! upper-case hex, empty segments merged (`//` is `/`), dot-segment
//! removal (§5.2.4), and refusal of what could make the matcher and the
//! upstream disagree. The canonical path is the one matched and the one
//! forwarded: an upstream that decodes `%40` or merges slashes reads the
//! path the gateway authorized, not another one that matched a weaker
//! resource.
//! Octets above 0x7F stay percent-encoded, but what they decode to must be
//! UTF-8 (RFC 3986 §2.5; RFC 3629 §3 refuses overlong forms): an upstream
//! decoding `%c0%ae` as `.` leniently would see a path the matcher never saw.

/// Why a request whose query overrides its method is refused.
pub const METHOD_OVERRIDE_REFUSED: &str = "a method-override parameter (_method) is not accepted";

/// Why a `CONNECT` is refused (400): an API gateway opens no tunnel to
/// where a client names (authority-form, RFC 9112 §3.2.3).
pub const CONNECT_REFUSED: &str = "CONNECT is not served";

/// Why a request target that is no URI reference (`` ` ``, `<`, a space)
/// is refused.
pub const MALFORMED_TARGET: &str = "malformed request target";

/// Why an absolute-form request target the gateway does not serve (another
/// scheme, user info, no host) is refused.
pub const ABSOLUTE_FORM_REFUSED: &str = "absolute-form request target";

/// The authority of an absolute-form request target that the gateway
/// serves as its origin form with that authority as the host (RFC 9112
/// §3.2.2): `http` or `https` and a host it would take in `Host` (no user
/// info); `None` for any other, which is refused.
pub fn served_authority(uri: &http::Uri) -> Option<&http::uri::Authority> {
    let web = [
        Some(&http::uri::Scheme::HTTP),
        Some(&http::uri::Scheme::HTTPS),
    ]
    .contains(&uri.scheme());
    uri.authority()
        .filter(|a| web && !a.host().is_empty() && valid_host(a.as_str().as_bytes()))
}

/// Whether `host` (a `Host` value or an authority) is one the gateway
/// takes: letters, digits and `.-:[]_`, at most 255 bytes.
pub fn valid_host(host: &[u8]) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// Whether a `method` request with `query` asks its upstream to run it as
/// another method: Laravel, Symfony and Rack serve a POST with
/// `?_method=DELETE` as a DELETE, which would run as a method it was not
/// authorized as. GET and HEAD are never overridden.
pub fn overrides_method(method: &http::Method, query: Option<&str>) -> bool {
    !matches!(*method, http::Method::GET | http::Method::HEAD)
        && query.is_some_and(|q| query_names(q, b"_method"))
}

/// Whether `query` has a parameter named `name` as an upstream's framework
/// reads the names: form-decoded (`%5F` is `_`, `+` a space), then as PHP
/// files them (Laravel and Symfony read `_method` through it): up to a
/// NUL, leading spaces dropped, `.` and spaces made `_`, an array's
/// `[...]` cut off. So
/// `access%5Ftoken`, `.method`, `+_method` and `_method[]` all name what
/// they name upstream. Names a framework reads otherwise are only ever
/// more of them: refusing on this reading errs on the side of refusing.
/// Pairs are split at `;` as well as `&` (Rack before 3, Python's
/// `parse_qs` before 3.10 and Go's before 1.17 split at both).
pub fn query_names(query: &str, name: &[u8]) -> bool {
    query.split(['&', ';']).any(|pair| {
        let written = pair.split('=').next().unwrap_or_default();
        if !written.contains(['%', '+', '.', ' ', '[']) {
            return written.as_bytes() == name; // the common case: nothing to decode
        }
        let spaced = written.replace('+', " ");
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
        // PHP reads a name up to its first NUL.
        let decoded = decoded.split(|&b| b == 0).next().unwrap_or_default();
        let trimmed = decoded.trim_ascii_start();
        let base = match trimmed.iter().position(|&b| b == b'[') {
            Some(0) | None => trimmed,
            Some(bracket) => &trimmed[..bracket],
        };
        base.len() == name.len()
            && base
                .iter()
                .map(|&b| if matches!(b, b'.' | b' ') { b'_' } else { b })
                .eq(name.iter().copied())
    })
}

/// A canonical path and what the rest of the pipeline must still check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    pub path: String,
    /// `%2F` or `%5C` is present (allowed only where the API says so).
    pub encoded_slash: bool,
    /// The fewest segments the path had while `..` were applied; a request
    /// whose dot segments climbed above an API's base path is refused.
    pub min_depth: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("path does not start with /")]
    NotOriginForm,
    #[error("path has a control byte or encoded NUL/control")]
    ControlByte,
    #[error("path has a ; parameter")]
    PathParameter,
    #[error("path is percent-encoded twice")]
    DoubleEncoding,
    #[error("path has a malformed percent-encoding")]
    BadEncoding,
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("path has a backslash")]
    Backslash,
    #[error("path does not percent-decode to UTF-8")]
    NotUtf8,
    /// `..%2F` inside a segment: an upstream that decodes the slash reads
    /// a dot segment the gateway never routed on (`{name}` matching
    /// `..%2Fadmin` reaches `/admin`).
    #[error("path has a dot segment behind an encoded slash")]
    DotSegmentBehindEncodedSlash,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// [`segment_char`] or `/`, by octet.
static SEGMENT_OR_SLASH: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = segment_char(b as u8) || b == b'/' as usize;
        b += 1;
    }
    table
};

/// What a segment holds as it is, and so what an escape of it decodes to
/// in the canonical path: unreserved characters, sub-delimiters, `:` and
/// `@` (RFC 3986 §3.3), but `;`, whose parameters are refused. Any other
/// character is percent-encoded in the canonical path, whichever way the
/// request wrote it.
const fn segment_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

/// Canonicalises the path part of a request target (no query).
pub fn canonicalize(raw: &str) -> Result<CanonicalPath, PathProblem> {
    // Most paths are segment characters and slashes, with nothing to
    // decode, no dot segment and no `//`: they are their own canonical
    // form. (No early exit in the scan.)
    let plain = raw
        .bytes()
        .fold(true, |ok, b| ok & SEGMENT_OR_SLASH[usize::from(b)]);
    if plain && raw.starts_with('/') && !has_odd_segment(raw.as_bytes()) {
        return Ok(CanonicalPath {
            path: raw.to_owned(),
            encoded_slash: false,
            min_depth: None,
        });
    }
    if !raw.is_ascii() {
        // RFC 3986 §2.1: octets outside US-ASCII appear in a URI only
        // percent-encoded; a request target that has them raw gets them
        // encoded, octet by octet, before anything else is decided.
        let escaped = percent_encoding::utf8_percent_encode(raw, NON_ASCII).to_string();
        return decode_and_resolve(&escaped).and_then(refuse_escaped_escape);
    }
    decode_and_resolve(raw).and_then(refuse_escaped_escape)
}

/// No ASCII octet: those above 0x7F are always encoded.
const NON_ASCII: &percent_encoding::AsciiSet = &percent_encoding::AsciiSet::EMPTY;

/// Whether a segment starts with `.` or is empty (`//`): an API path has
/// a few slashes, each looked past once.
fn has_odd_segment(path: &[u8]) -> bool {
    memchr::memchr_iter(b'/', path).any(|at| matches!(path.get(at + 1), Some(b'.' | b'/')))
}

/// The general case: percent-decoding, refusals and dot segments.
fn decode_and_resolve(raw: &str) -> Result<CanonicalPath, PathProblem> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathProblem::NotOriginForm);
    }
    let mut decoded = String::with_capacity(raw.len());
    let mut encoded_slash = false;
    let mut encoded_non_ascii = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            0..=0x1f | 0x7f => return Err(PathProblem::ControlByte),
            b';' => return Err(PathProblem::PathParameter),
            b'\\' => return Err(PathProblem::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathProblem::BadEncoding);
                };
                let value = hi * 16 + lo;
                match value {
                    0..=0x1f | 0x7f => return Err(PathProblem::ControlByte),
                    b'%' => {
                        // `%25` followed by hex digits decodes to another
                        // escape: a second decoder upstream would see it.
                        let next_is_hex = bytes.get(i + 3).copied().and_then(hex).is_some()
                            && bytes.get(i + 4).copied().and_then(hex).is_some();
                        if next_is_hex {
                            return Err(PathProblem::DoubleEncoding);
                        }
                        decoded.push_str("%25");
                    }
                    b'/' | b'\\' => {
                        encoded_slash = true;
                        decoded.push_str(if value == b'/' { "%2F" } else { "%5C" });
                    }
                    v if segment_char(v) => decoded.push(v as char),
                    v => {
                        encoded_non_ascii |= v > 0x7f;
                        push_escape(&mut decoded, v);
                    }
                }
                i += 3;
            }
            b'/' => {
                decoded.push('/');
                i += 1;
            }
            b if segment_char(b) => {
                decoded.push(b as char);
                i += 1;
            }
            // A character a path cannot hold as it is (`"`, `{`, a space,
            // ...): encoded, as its escape is kept.
            b => {
                push_escape(&mut decoded, b);
                i += 1;
            }
        }
    }
    if encoded_non_ascii && !decodes_to_utf8(bytes) {
        return Err(PathProblem::NotUtf8);
    }
    let (path, min_depth) = remove_dot_segments(&decoded)?;
    Ok(CanonicalPath {
        path,
        encoded_slash,
        min_depth,
    })
}

/// `%XX` for octet `b`, upper-case hex.
fn push_escape(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
    out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
}

/// Whether the path, every escape decoded, is UTF-8. Called only for a
/// path with an escaped octet above 0x7F, whose escapes are all well formed
/// (checked by the caller): literal octets and escaped ones are decoded
/// together, as an upstream would.
fn decodes_to_utf8(raw: &[u8]) -> bool {
    let decoded: Vec<u8> = percent_encoding::percent_decode(raw).collect();
    std::str::from_utf8(&decoded).is_ok()
}

/// Whether a decoded segment holding an encoded slash (`%2F`, `%5C`) is,
/// split at them, a dot segment anywhere (`..%2Fadmin`, `a%5C..`).
fn hides_a_dot_segment(segment: &str) -> bool {
    if !segment.contains("%2F") && !segment.contains("%5C") {
        return false;
    }
    segment
        .split("%2F")
        .flat_map(|piece| piece.split("%5C"))
        .any(|piece| piece == "." || piece == "..")
}

fn remove_dot_segments(path: &str) -> Result<(String, Option<usize>), PathProblem> {
    let mut out: Vec<&str> = Vec::new();
    let mut min_depth = None;
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    for (index, segment) in parts.iter().enumerate() {
        match *segment {
            // `//` is `/`: an empty segment stays only at the end (a
            // trailing slash).
            "" if index != last => {}
            "." => {
                if index == last {
                    out.push("");
                }
            }
            ".." => {
                if out.pop().is_none() {
                    return Err(PathProblem::AboveRoot);
                }
                min_depth = Some(min_depth.map_or(out.len(), |d: usize| d.min(out.len())));
                if index == last {
                    out.push("");
                }
            }
            other => {
                if hides_a_dot_segment(other) {
                    return Err(PathProblem::DotSegmentBehindEncodedSlash);
                }
                out.push(other);
            }
        }
    }
    let mut canonical = String::with_capacity(path.len());
    for segment in &out {
        canonical.push('/');
        canonical.push_str(segment);
    }
    if canonical.is_empty() {
        canonical.push('/');
    }
    Ok((canonical, min_depth))
}

/// The canonical form of one literal segment of a configured path (a
/// resource template's, a base path's): what a request spelling it any
/// other way is canonicalised to, so that they match. `None` when no
/// canonical request path holds it as one segment (empty, a dot segment,
/// an encoded `/` or `\`, or refused).
pub fn canonical_segment(segment: &str) -> Option<String> {
    let canonical = canonicalize(&format!("/{segment}")).ok()?;
    let text = canonical.path.strip_prefix('/')?;
    let one = !text.is_empty() && !text.contains('/') && !canonical.encoded_slash;
    (one && canonical.min_depth.is_none()).then(|| text.to_owned())
}

/// Refuses `%25` followed by two hex digits in the canonical path: an
/// upstream that decodes once more would see another escape (`%252F`, a
/// slash). Checked on the result, as the digits may have been escaped
/// themselves (`%25%32%46`), which a look at the raw bytes cannot see.
fn refuse_escaped_escape(canonical: CanonicalPath) -> Result<CanonicalPath, PathProblem> {
    let escapes_escape = canonical
        .path
        .as_bytes()
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex(w[3]).is_some() && hex(w[4]).is_some());
    if escapes_escape {
        return Err(PathProblem::DoubleEncoding);
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_are_read_as_frameworks_file_them() {
        for query in [
            "_method=x",
            "a=1&_method",
            "%5Fmethod=x",
            ".method=x",
            "+_method=x",
            "%20_method=x",
            "_method[]=x",
            "_method%5Bk%5D=x",
            " .method=x",
            "_method%00=x",
            "_method%00x=x",
            "a=1;_method=DELETE",
        ] {
            assert!(query_names(query, b"_method"), "{query}");
        }
        assert!(query_names("a=1;access_token=x", b"access_token"));
        for query in [
            "",
            "method=x",
            "_methods=x",
            "a=_method",
            "x_method=x",
            "[_method]=x",
            "_meth%6fd_=x",
            "_method_=x",
        ] {
            assert!(!query_names(query, b"_method"), "{query}");
        }
        assert!(query_names("access.token=t", b"access_token"));
    }

    #[test]
    fn plain_paths_take_the_short_way_to_the_same_result() {
        for raw in [
            "/",
            "/travels/bookings",
            "/a//b/",
            "/a/b-c_d~e/f.json",
            "/a/b?c",
            "/UPPER/case/123",
        ] {
            assert_eq!(canonicalize(raw), decode_and_resolve(raw), "{raw}");
        }
    }

    fn canon(p: &str) -> Result<String, PathProblem> {
        canonicalize(p).map(|c| c.path)
    }

    #[test]
    fn decodes_what_a_segment_holds_as_it_is_and_keeps_the_rest_encoded() {
        assert_eq!(canon("/a/%62%6f%6F%6Bings").unwrap(), "/a/bookings");
        assert_eq!(
            canon("/gateway/Time%20travels/1.0").unwrap(),
            "/gateway/Time%20travels/1.0"
        );
        // Sub-delimiters, `:` and `@` are one character whichever way
        // they are written: an upstream decoding the path reads the same.
        assert_eq!(canon("/users/%40me").unwrap(), "/users/@me");
        assert_eq!(
            canon("/x%3a%2B%21%24%26%27%28%29%2A%2C%3D").unwrap(),
            "/x:+!$&'()*,="
        );
        // `;` stays encoded (raw, it is a refused parameter), as do `?`,
        // `#`, `%` and what a path cannot hold as it is.
        assert_eq!(canon("/a%3Bb%3F%23%25x").unwrap(), "/a%3Bb%3F%23%25x");
        assert_eq!(
            canon("/a%22%7b%7C%7d%20%5e%60%5B%5D").unwrap(),
            "/a%22%7B%7C%7D%20%5E%60%5B%5D"
        );
    }

    #[test]
    fn characters_a_path_cannot_hold_are_encoded_as_their_escapes_are_kept() {
        assert_eq!(
            canon("/a\"{b}|c^`[d]").unwrap(),
            canon("/a%22%7Bb%7D%7Cc%5E%60%5Bd%5D").unwrap()
        );
        assert_eq!(canon("/a\"b").unwrap(), "/a%22b");
    }

    #[test]
    fn empty_segments_are_merged_but_a_trailing_slash_is_kept() {
        assert_eq!(canon("/files//secret").unwrap(), "/files/secret");
        assert_eq!(canon("//files///secret").unwrap(), "/files/secret");
        assert_eq!(canon("/a//b/").unwrap(), "/a/b/");
        assert_eq!(canon("/a/b//").unwrap(), "/a/b/");
        assert_eq!(canon("//").unwrap(), "/");
        assert_eq!(canon("/a//../b").unwrap(), "/b");
        assert_eq!(canon("/a/%2e//b").unwrap(), "/a/b");
    }

    #[test]
    fn a_configured_segment_takes_the_form_requests_are_matched_in() {
        assert_eq!(canonical_segment("%7Eroot").as_deref(), Some("~root"));
        assert_eq!(canonical_segment("caf%c3%a9").as_deref(), Some("caf%C3%A9"));
        assert_eq!(canonical_segment("%40me").as_deref(), Some("@me"));
        assert_eq!(canonical_segment("me:admin").as_deref(), Some("me:admin"));
        assert_eq!(
            canonical_segment("Time%20travels").as_deref(),
            Some("Time%20travels")
        );
        for refused in [
            "", ".", "..", "%2e", "%2E%2E", "a%2Fb", "a%5cb", "a/b", "%00", "%252F", "%c3",
        ] {
            assert_eq!(canonical_segment(refused), None, "{refused}");
        }
    }

    #[test]
    fn refuses_what_upstreams_read_differently() {
        assert_eq!(canon("/a;jsessionid=1"), Err(PathProblem::PathParameter));
        assert_eq!(canon("/a%00"), Err(PathProblem::ControlByte));
        assert_eq!(canon("/a%0a"), Err(PathProblem::ControlByte));
        assert_eq!(canon("/a%252F"), Err(PathProblem::DoubleEncoding));
        assert_eq!(canon("/a%zz"), Err(PathProblem::BadEncoding));
        assert_eq!(canon("/a%2"), Err(PathProblem::BadEncoding));
        assert_eq!(canon("/../etc"), Err(PathProblem::AboveRoot));
        assert_eq!(canon("/a/%2e%2e/%2e%2e/b"), Err(PathProblem::AboveRoot));
        assert_eq!(canon("a"), Err(PathProblem::NotOriginForm));
        assert_eq!(canon("/a\\b"), Err(PathProblem::Backslash));
    }

    #[test]
    fn escapes_that_are_not_utf8_are_refused() {
        for raw in [
            "/a/%c0%ae%c0%ae/etc",
            "/a/%C0%AF",
            "/a/%e0%80%ae",
            "/a/%80",
            "/a/%bf%bf",
            "/a/%ff",
            "/a/%fe",
            "/a/%c3",
            "/a/%c3/%a9",
            "/a/%ed%a0%80",
            "/a/%f4%90%80%80",
        ] {
            assert_eq!(canon(raw), Err(PathProblem::NotUtf8), "{raw}");
        }
    }

    #[test]
    fn escaped_utf8_is_kept_encoded() {
        assert_eq!(canon("/a/caf%c3%a9").unwrap(), "/a/caf%C3%A9");
        assert_eq!(canon("/a/%e2%82%ac").unwrap(), "/a/%E2%82%AC");
        assert_eq!(canon("/%F0%9F%98%80").unwrap(), "/%F0%9F%98%80");
    }

    #[test]
    fn flags_encoded_slashes() {
        let c = canonicalize("/a%2Fb").unwrap();
        assert!(c.encoded_slash);
        assert_eq!(c.path, "/a%2Fb");
        assert!(canonicalize("/a%5cb").unwrap().encoded_slash);
    }

    #[test]
    fn a_dot_segment_behind_an_encoded_slash_is_refused() {
        for raw in [
            "/docs/files/..%2Fadmin%2Fsecret.txt",
            "/docs/files/%2e%2e%2Fadmin",
            "/docs/files/..%5Cadmin",
            "/docs/files/a%2F..%2F..%2Fadmin",
            "/docs/files/a%2F.",
        ] {
            assert_eq!(
                canonicalize(raw).err(),
                Some(PathProblem::DotSegmentBehindEncodedSlash),
                "{raw}"
            );
        }
        for raw in [
            "/docs/files/a%2Fb",
            "/docs/files/..a%2Fb",
            "/docs/files/a.%2F.b",
        ] {
            assert!(canonicalize(raw).is_ok(), "{raw}");
        }
    }

    #[test]
    fn removes_dot_segments_and_tracks_depth() {
        let c = canonicalize("/travels/x/../bookings/./7").unwrap();
        assert_eq!(c.path, "/travels/bookings/7");
        assert_eq!(c.min_depth, Some(1));
        let c = canonicalize("/travels/../admin").unwrap();
        assert_eq!(c.path, "/admin");
        assert_eq!(c.min_depth, Some(0));
        assert_eq!(canonicalize("/a/b").unwrap().min_depth, None);
        assert_eq!(canon("/a/.").unwrap(), "/a/");
    }

    /// Escaped hex digits after `%25` made a canonical path that decodes
    /// to another escape, and that was refused when canonicalised again
    /// (the `path` fuzz target's idempotence check).
    #[test]
    fn escaped_digits_after_an_escaped_percent_are_refused() {
        for raw in [
            "/%25%32%46",
            "/a/%25%32%65%25%32%65/b",
            "/%25%41%42",
            "/%252F",
        ] {
            assert_eq!(canon(raw), Err(PathProblem::DoubleEncoding), "{raw}");
        }
        assert_eq!(canon("/100%25").unwrap(), "/100%25");
        assert_eq!(canon("/%25%41x/y").unwrap(), "/%25Ax/y");
    }

    /// A raw non-ASCII octet was taken for a Latin-1 character and
    /// re-encoded as UTF-8 (`/café` became `/cafÃ©`).
    #[test]
    fn raw_non_ascii_is_percent_encoded() {
        assert_eq!(canon("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/\u{1F600}/a/../b").unwrap(), "/%F0%9F%98%80/b");
        assert_eq!(canon("/\u{e9}\u{0}"), Err(PathProblem::ControlByte));
    }
}
