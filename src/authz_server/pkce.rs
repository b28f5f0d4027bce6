//! Proof Key for Code Exchange (RFC 7636), S256 only.
//!
//! `plain` is refused: it protects nothing once the authorization request
//! is seen (RFC 9700 §2.1.1 asks for S256). A challenge is the base64url
//! SHA-256 of the verifier, 43 characters; a verifier is 43 to 128
//! unreserved characters (§4.1). Verifiers are compared by their hash in
//! constant time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The only `code_challenge_method` accepted.
pub const S256: &str = "S256";

/// RFC 7636 §4.2: `BASE64URL(SHA256(verifier))` is always 43 characters.
pub fn is_valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43 && challenge.bytes().all(is_base64url)
}

/// RFC 7636 §4.1: `[A-Za-z0-9-._~]{43,128}`.
pub fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Whether `verifier` is well formed and hashes to `challenge` (§4.6).
pub fn verifies(verifier: &str, challenge: &str) -> bool {
    if !is_valid_verifier(verifier) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn the_rfc_example_verifies() {
        assert!(is_valid_challenge(CHALLENGE));
        assert!(verifies(VERIFIER, CHALLENGE));
        assert!(!verifies(&VERIFIER.replace('d', "e"), CHALLENGE));
    }

    #[test]
    fn malformed_values_are_refused() {
        assert!(!is_valid_verifier("short"));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(43))));
        assert!(!is_valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-c="
        ));
        assert!(!is_valid_challenge(VERIFIER.get(..42).expect("slice")));
        // A plain challenge (the verifier itself) does not verify as S256.
        assert!(!verifies(VERIFIER, VERIFIER));
    }
}
