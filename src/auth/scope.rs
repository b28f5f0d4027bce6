//! Token scopes as RFC 6749 §3.3 writes them: scope tokens separated by a
//! single space (0x20). Used for a JWT's `scope`, each entry of `scp` or
//! `scopes`, an RFC 7662 answer's `scope`, and the `scope` parameter a
//! client sends to the authorization server.
//!
//! Invariants: only 0x20 separates; empty pieces (two spaces in a row, a
//! leading or trailing space) are ignored; any other whitespace (tab, line
//! feed, U+00A0, U+2003, …) or control character anywhere makes the whole
//! string invalid, never a separator and never part of a token, so
//! `"evil\u{2003}orders:read"` can neither grant `orders:read` nor be read
//! as two scopes by a component that splits on Unicode whitespace.
//! Nothing here allocates for a string it refuses.

/// Why a scope string or entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScopeProblem {
    /// RFC 6749 §3.3: scope tokens are separated by 0x20 alone.
    #[error("scope has whitespace other than a space, or a control character")]
    BadSeparator,
    /// A `scp`/`scopes` array entry that is not one scope token.
    #[error("scope list entry is not one scope token")]
    BadEntry,
    /// A scope claim that is neither a string nor an array of strings.
    #[error("scope claim is neither a string nor an array of strings")]
    NotAList,
}

/// The scope tokens of a space-separated scope string, in order (repeats
/// kept), or why the string is refused.
pub fn split(scope: &str) -> Result<impl Iterator<Item = &str>, ScopeProblem> {
    if scope.chars().any(forbidden) {
        return Err(ScopeProblem::BadSeparator);
    }
    Ok(scope.split(' ').filter(|piece| !piece.is_empty()))
}

/// One entry of a scope array: exactly one scope token.
pub fn token(entry: &str) -> Result<&str, ScopeProblem> {
    if entry.is_empty() || entry.contains(' ') || entry.chars().any(forbidden) {
        return Err(ScopeProblem::BadEntry);
    }
    Ok(entry)
}

/// Whitespace other than 0x20, and control characters (C0, DEL, C1):
/// RFC 6749 §3.3 allows none of them in a scope token or as a separator.
fn forbidden(c: char) -> bool {
    c != ' ' && (c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(text: &str) -> Result<Vec<&str>, ScopeProblem> {
        split(text).map(Iterator::collect)
    }

    #[test]
    fn only_a_space_separates_and_empty_pieces_are_ignored() {
        assert_eq!(scopes("view book"), Ok(vec!["view", "book"]));
        assert_eq!(scopes("  view   book "), Ok(vec!["view", "book"]));
        assert_eq!(scopes(""), Ok(vec![]));
        assert_eq!(
            scopes("orders:read https://x/y"),
            Ok(vec!["orders:read", "https://x/y"])
        );
    }

    #[test]
    fn other_whitespace_or_controls_refuse_the_whole_string() {
        for bad in [
            "evil\u{2003}orders:read",
            "view\tbook",
            "view\nbook",
            "view\rbook",
            "view\u{a0}book",
            "view\u{85}book",
            "view\u{2028}book",
            "view\u{3000}book",
            "view\u{b}",
            "view\u{0}",
            "view\u{7f}",
        ] {
            assert_eq!(scopes(bad), Err(ScopeProblem::BadSeparator), "{bad:?}");
        }
    }

    #[test]
    fn an_array_entry_is_exactly_one_token() {
        assert_eq!(token("orders:read"), Ok("orders:read"));
        for bad in ["", "a b", "evil\u{2003}orders:read", "a\t", "\u{1}"] {
            assert_eq!(token(bad), Err(ScopeProblem::BadEntry), "{bad:?}");
        }
    }
}
