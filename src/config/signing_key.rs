//! The authorization server's signing key read from PEM: RSA (RS256),
//! P-256 (ES256) or P-384 (ES384). `check`, start and every reload judge
//! the `signing_key` file with [`parse`], and the authorization server
//! reads it with the same function, so a file the one accepts the other
//! signs with. The private key is never logged.

use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

/// A private key that signs, with its public JWK and RFC 7638 `kid`.
pub struct ParsedKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Jwk,
}

/// What [`parse`] takes, for "allowed:" texts and errors.
pub const KINDS: &str = "a PEM RSA (2048+ bits) or P-256/P-384 PKCS#8 private key";

/// Tries RSA, then the EC curves: the PEM label alone does not say which
/// (PKCS#8 `PRIVATE KEY` covers both).
pub fn parse(pem: &[u8]) -> Option<ParsedKey> {
    let candidates = [
        (EncodingKey::from_rsa_pem(pem), Algorithm::RS256),
        (EncodingKey::from_ec_pem(pem), Algorithm::ES256),
        (EncodingKey::from_ec_pem(pem), Algorithm::ES384),
    ];
    candidates.into_iter().find_map(|(key, alg)| {
        let encoding = key.ok()?;
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).ok()?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).ok()?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        // Proves the key signs with this algorithm (a P-384 key fails ES256).
        jsonwebtoken::crypto::sign(b"probe", &encoding, alg).ok()?;
        Some(ParsedKey {
            kid,
            alg,
            encoding,
            jwk,
        })
    })
}
