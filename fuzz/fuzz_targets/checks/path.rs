//! Path canonicalisation (`path::canonicalize`), from arbitrary
//! text (raw non-ASCII included: `httparse` and `http::Uri` let it
//! through). Invariants: no panic; a canonical path is ASCII, starts with
//! `/`, has no dot segment, no empty segment but a last one, no control
//! byte, no `;` or `\`, and escapes only what a segment cannot hold as it
//! is (each other character written one way only); and
//! canonicalising it again gives itself (one decoding is all there is:
//! what the gateway matched is what an upstream that decodes once, or
//! twice, sees).
// The function under test: its one path in this target.
use microgateway::path::canonicalize;

/// Checks one input; panics where an invariant does not hold.
pub fn input(raw: &str) {
    let Ok(canonical) = canonicalize(raw) else {
        return;
    };
    let path = &canonical.path;
    assert!(
        path.starts_with('/') && path.is_ascii(),
        "{raw:?} -> {path:?}"
    );
    assert!(
        !path
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b';' || b == b'\\'),
        "{raw:?} -> {path:?}"
    );
    assert!(
        !path
            .split('/')
            .any(|segment| segment == "." || segment == ".."),
        "{raw:?} -> {path:?}"
    );
    assert!(!path.contains("//"), "{raw:?} -> {path:?}");
    let bytes = path.as_bytes();
    for (at, &b) in bytes.iter().enumerate() {
        if b != b'%' {
            continue;
        }
        let escaped = std::str::from_utf8(&bytes[at + 1..at + 3])
            .ok()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .unwrap_or_else(|| panic!("{raw:?} -> {path:?}: a bad escape"));
        assert!(
            !(escaped.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&escaped))
                && bytes[at + 1..at + 3] == bytes[at + 1..at + 3].to_ascii_uppercase()[..],
            "{raw:?} -> {path:?}: %{:02X} needs no escape",
            escaped
        );
    }
    match canonicalize(path) {
        Ok(again) => assert_eq!(&again.path, path, "not idempotent: {raw:?}"),
        Err(problem) => panic!("{raw:?} -> {path:?}, refused again: {problem:?}"),
    }
}
