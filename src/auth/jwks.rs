//! JSON Web Key Sets (RFC 7517): which keys may verify an auth server's
//! access tokens, and with which algorithm.
//!
//! The algorithm of a [`VerifyKey`] comes from the key (`kty`, `crv`, `alg`),
//! never from a token, so a token cannot choose HMAC with a public key or
//! `none` (RFC 8725 §3.1, §2.1). Symmetric (`oct`) keys, keys for encryption
//! (`use` other than `sig`, `key_ops` without `verify`), unsupported curves,
//! RSA moduli under 2048 bits (RFC 7518 §3.3) and malformed members are
//! skipped, not errors: one odd key must not take the others down. A set
//! without any usable key is an error, so the last good set stays in use;
//! so is a set where two usable keys share a `kid` (which one verifies
//! would depend on the order of the document).
//!
//! An RSA key without `alg` is used for RS256 only: RS256 is the one RSA
//! algorithm every JOSE implementation must support (RFC 7518 §3.1), and
//! guessing PSS from a bare key would let one key verify two algorithms.
//!
//! [`JwksSource`] keeps one auth server's set current: fetched over HTTP
//! (`source`, `fetch`) or published in-process by the local authorization
//! server.

mod fetch;
mod source;

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use source::{JwksSource, RefreshPolicy, RemoteOptions};

/// Why a JWK Set could not be obtained or used. Its text is logged and
/// kept as the auth server's last error: a `url` is held as shown (user
/// information masked), and a `source` without its URL.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWK Set: {0}")]
    NotAKeySet(#[source] serde_json::Error),
    #[error("the JWK Set has no usable signature key")]
    NoUsableKey,
    #[error("the JWK Set has two keys with kid `{0}`")]
    DuplicateKid(String),
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: body larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("fetching the JWK Set took longer than {0:?}")]
    Timeout(std::time::Duration),
    #[error("authorization server metadata at {url} is not usable: {reason}")]
    Metadata { url: String, reason: &'static str },
}

/// A public key that verifies exactly one algorithm.
pub struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    thumbprint: [u8; 32],
    key: DecodingKey,
}

impl VerifyKey {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The only algorithm a token verified by this key may name.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// Same key material for the same algorithm, whichever fetch produced it.
    pub fn same_key(&self, other: &VerifyKey) -> bool {
        self.algorithm == other.algorithm && self.thumbprint == other.thumbprint
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The usable signature keys of one JWK Set, in document order.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

/// The members of a JWK this gateway reads (RFC 7517 §4, RFC 7518 §6).
#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(rename = "use")]
    usage: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    kid: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

const MIN_RSA_BITS: usize = 2048;

impl KeySet {
    /// Parses a JWK Set document, keeping its usable signature keys.
    pub fn from_json(json: &[u8]) -> Result<KeySet, JwksError> {
        let raw: RawSet = serde_json::from_slice(json).map_err(JwksError::NotAKeySet)?;
        let mut keys: Vec<Arc<VerifyKey>> = Vec::new();
        for value in raw.keys {
            let Some(key) = serde_json::from_value::<RawKey>(value)
                .ok()
                .and_then(|raw| verify_key(&raw))
            else {
                continue;
            };
            // RFC 7517 §4.5: kids should be unique in a set. Two keys under
            // one kid leave the choice of key to the order of the document,
            // so the set is refused and the last good one stays in use.
            if let Some(kid) = &key.kid {
                if keys.iter().any(|known| known.kid.as_ref() == Some(kid)) {
                    return Err(JwksError::DuplicateKid(kid.clone()));
                }
            }
            keys.push(Arc::new(key));
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey);
        }
        Ok(KeySet { keys })
    }

    /// The key a token's `kid` names. A token without `kid` (RFC 7515
    /// §4.1.4 makes it optional) matches only a set of exactly one key.
    pub fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid))
                .cloned(),
            None if self.keys.len() == 1 => self.keys.first().cloned(),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.keys.iter()
    }
}

fn verify_key(raw: &RawKey) -> Option<VerifyKey> {
    if raw.usage.as_deref().is_some_and(|usage| usage != "sig") {
        return None;
    }
    // RFC 7517 §4.3: key_ops, when present, lists what the key is for.
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return None;
        }
    }
    let algorithm = algorithm_of(&raw.kty, raw.crv.as_deref(), raw.alg.as_deref())?;
    let (key, thumbprint_json) = match algorithm {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => rsa_key(raw)?,
        Algorithm::ES256 => ec_key(raw, "P-256", 32)?,
        Algorithm::ES384 => ec_key(raw, "P-384", 48)?,
        Algorithm::EdDSA => ed_key(raw)?,
        // `algorithm_of` never yields HMAC; the enum is non-exhaustive.
        _ => return None,
    };
    Some(VerifyKey {
        kid: raw.kid.clone(),
        algorithm,
        thumbprint: Sha256::digest(thumbprint_json.as_bytes()).into(),
        key,
    })
}

/// The one algorithm a key verifies, from its type, curve and `alg`
/// (RFC 7518 §6, RFC 8037 §2); `None` for anything not a supported
/// public signature key.
fn algorithm_of(kty: &str, crv: Option<&str>, alg: Option<&str>) -> Option<Algorithm> {
    match (kty, crv, alg) {
        ("RSA", _, None) => Some(Algorithm::RS256),
        ("RSA", _, Some("RS256")) => Some(Algorithm::RS256),
        ("RSA", _, Some("RS384")) => Some(Algorithm::RS384),
        ("RSA", _, Some("RS512")) => Some(Algorithm::RS512),
        ("RSA", _, Some("PS256")) => Some(Algorithm::PS256),
        ("RSA", _, Some("PS384")) => Some(Algorithm::PS384),
        ("RSA", _, Some("PS512")) => Some(Algorithm::PS512),
        ("EC", Some("P-256"), None | Some("ES256")) => Some(Algorithm::ES256),
        ("EC", Some("P-384"), None | Some("ES384")) => Some(Algorithm::ES384),
        // RFC 9864 names the same algorithm "Ed25519".
        ("OKP", Some("Ed25519"), None | Some("EdDSA") | Some("Ed25519")) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

fn decode(member: Option<&String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(member?).ok()
}

/// RSA public key; the second value is the RFC 7638 thumbprint input.
fn rsa_key(raw: &RawKey) -> Option<(DecodingKey, String)> {
    let (n_text, e_text) = (raw.n.as_ref()?, raw.e.as_ref()?);
    let n = decode(raw.n.as_ref())?;
    let e = decode(raw.e.as_ref())?;
    if modulus_bits(&n) < MIN_RSA_BITS || e.iter().all(|byte| *byte == 0) {
        return None;
    }
    let thumbprint = format!(r#"{{"e":"{e_text}","kty":"RSA","n":"{n_text}"}}"#);
    Some((DecodingKey::from_rsa_raw_components(&n, &e), thumbprint))
}

fn modulus_bits(n: &[u8]) -> usize {
    let significant = n.iter().skip_while(|byte| **byte == 0).collect::<Vec<_>>();
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

fn ec_key(raw: &RawKey, crv: &str, coordinate_len: usize) -> Option<(DecodingKey, String)> {
    let (x_text, y_text) = (raw.x.as_ref()?, raw.y.as_ref()?);
    let x = decode(raw.x.as_ref())?;
    let y = decode(raw.y.as_ref())?;
    // RFC 7518 §6.2.1.2: coordinates are the full size of the curve's field.
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return None;
    }
    let key = DecodingKey::from_ec_components(x_text, y_text).ok()?;
    let thumbprint = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x_text}","y":"{y_text}"}}"#);
    Some((key, thumbprint))
}

fn ed_key(raw: &RawKey) -> Option<(DecodingKey, String)> {
    let x_text = raw.x.as_ref()?;
    if decode(raw.x.as_ref())?.len() != 32 {
        return None;
    }
    let key = DecodingKey::from_ed_components(x_text).ok()?;
    let thumbprint = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x_text}"}}"#);
    Some((key, thumbprint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(kid: &str, alg: Option<&str>, bits: usize) -> Value {
        let mut n = vec![0xC5; bits / 8];
        n[0] = 0xC5;
        let mut key = json!({"kty": "RSA", "kid": kid, "n": b64(&n), "e": "AQAB"});
        if let Some(alg) = alg {
            key["alg"] = json!(alg);
        }
        key
    }

    fn ec(kid: &str, crv: &str, len: usize) -> Value {
        json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(&vec![7; len]), "y": b64(&vec![9; len])})
    }

    fn ed(kid: &str) -> Value {
        json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(&[3; 32])})
    }

    fn set(keys: Vec<Value>) -> Result<KeySet, JwksError> {
        KeySet::from_json(json!({ "keys": keys }).to_string().as_bytes())
    }

    fn alg_of(set: &KeySet, kid: &str) -> Option<Algorithm> {
        set.find(Some(kid)).map(|key| key.algorithm())
    }

    #[test]
    fn algorithm_comes_from_the_key() {
        let set = set(vec![
            rsa("rsa-bare", None, 2048),
            rsa("rsa-ps", Some("PS384"), 2048),
            ec("p256", "P-256", 32),
            ec("p384", "P-384", 48),
            ed("ed"),
        ])
        .expect("usable keys");
        assert_eq!(alg_of(&set, "rsa-bare"), Some(Algorithm::RS256));
        assert_eq!(alg_of(&set, "rsa-ps"), Some(Algorithm::PS384));
        assert_eq!(alg_of(&set, "p256"), Some(Algorithm::ES256));
        assert_eq!(alg_of(&set, "p384"), Some(Algorithm::ES384));
        assert_eq!(alg_of(&set, "ed"), Some(Algorithm::EdDSA));
    }

    #[test]
    fn symmetric_encryption_and_odd_keys_are_skipped() {
        let mut enc = rsa("enc", None, 2048);
        enc["use"] = json!("enc");
        let mut wrap = ec("wrap", "P-256", 32);
        wrap["key_ops"] = json!(["wrapKey"]);
        let mut hs_on_rsa = rsa("hs", Some("HS256"), 2048);
        hs_on_rsa["use"] = json!("sig");
        let set = set(vec![
            json!({"kty": "oct", "kid": "oct", "k": "c2VjcmV0"}),
            enc,
            wrap,
            hs_on_rsa,
            rsa("weak", None, 1024),
            ec("k1", "secp256k1", 32),
            ec("short", "P-256", 31),
            ec("curve-alg-mismatch", "P-256", 32)
                .as_object()
                .map(|key| {
                    let mut key = key.clone();
                    key.insert("alg".into(), json!("ES384"));
                    Value::Object(key)
                })
                .expect("object"),
            json!({"kty": "RSA", "kid": "no-n", "e": "AQAB"}),
            json!("not a key"),
            ed("good"),
        ])
        .expect("one usable key");
        assert_eq!(set.len(), 1);
        assert!(set.find(Some("good")).is_some());
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        assert!(matches!(
            set(vec![json!({"kty": "oct", "k": "c2VjcmV0"})]),
            Err(JwksError::NoUsableKey)
        ));
        assert!(matches!(
            KeySet::from_json(b"{\"nokeys\":1}"),
            Err(JwksError::NotAKeySet(_))
        ));
        assert!(matches!(
            KeySet::from_json(b"<html>"),
            Err(JwksError::NotAKeySet(_))
        ));
    }

    #[test]
    fn token_without_kid_matches_only_a_single_key_set() {
        let one = set(vec![ed("only")]).expect("one key");
        assert!(one.find(None).is_some());
        let two = set(vec![ed("a"), ec("b", "P-256", 32)]).expect("two keys");
        assert!(two.find(None).is_none());
        assert!(two.find(Some("b")).is_some());
        assert!(two.find(Some("c")).is_none());
    }

    #[test]
    fn a_set_with_a_duplicate_kid_is_refused() {
        let refused = set(vec![ed("same"), ec("same", "P-256", 32)]);
        assert!(matches!(refused, Err(JwksError::DuplicateKid(kid)) if kid == "same"));
        let fine = set(vec![ed("a"), ec("b", "P-256", 32)]).expect("distinct kids");
        assert_eq!(fine.len(), 2);
    }

    #[test]
    fn same_key_compares_material_and_algorithm() {
        let a = set(vec![ed("x")]).expect("key");
        let b = set(vec![ed("y")]).expect("key");
        let c = set(vec![ec("x", "P-256", 32)]).expect("key");
        let (a, b, c) = (
            a.find(None).expect("a"),
            b.find(None).expect("b"),
            c.find(None).expect("c"),
        );
        assert!(a.same_key(&b));
        assert!(!a.same_key(&c));
    }

    #[test]
    fn modulus_bits_ignore_leading_zeros() {
        assert_eq!(modulus_bits(&[0, 0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x01]), 1);
        assert_eq!(modulus_bits(&[0, 0]), 0);
    }
}
