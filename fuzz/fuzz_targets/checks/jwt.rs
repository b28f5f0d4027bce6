//! JWT access-token validation (`auth::jwt::JwtValidator::validate`)
//! against a fixed key set, from arbitrary tokens and from arbitrary JOSE
//! headers and claims signed with that set's key, so that the header and
//! claims checks behind the signature are reached too. Invariants: no
//! panic; a token is accepted only with `alg` ES256, an allowed `typ`, no
//! `crit`, `iss` equal to the issuer, a numeric `exp` not passed and an
//! `nbf` reached (both within the leeway), and the audience when one is
//! required.
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures_util::FutureExt;
use jsonwebtoken::{Algorithm, EncodingKey};
// The validator under test: its paths in this target.
use microgateway::auth::jwks::{JwksSource, KeySet};
use microgateway::auth::jwt::{JwtRules, JwtValidator};
use serde_json::{Map, Value};

/// A P-256 key made for this target alone; it guards nothing.
const PRIVATE_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBSvTT/Bp7sLJp3RV
LtamYX6DM4DkxNJr+rcYDZzWyzOhRANCAARSfrPrBJzPI/Mihc1TBiddi5p2/Z3V
hgzth5Y1CPBD7KQccTzanvHNiPsL/SxM6v0n76Sc0kXwMf8rDk5PMrvE
-----END PRIVATE KEY-----
";
const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"k1",
"x":"Un6z6wSczyPzIoXNUwYnXYuadv2d1YYM7YeWNQjwQ-w","y":"pBxxPNqe8c2I-wv9LEzq_SfvpJzSRfAx_ysOTk8yu8Q"}]}"#;
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "orders";
const NOW: u64 = 1_700_000_000;
const LEEWAY: f64 = 60.0;

/// The input: `R` and a token; or a flags byte (bit 0: accept `typ: JWT`,
/// bit 1: require the audience), the header (empty: the usual one), a
/// newline and the claims.
enum Input {
    /// A token as a client sends it.
    Raw(String),
    /// Header (the usual one when `None`) and claims, signed with the key.
    Signed {
        header: Option<Vec<u8>>,
        claims: Vec<u8>,
        accept_jwt_typ: bool,
        require_audience: bool,
    },
}

fn validator(accept_jwt_typ: bool, require_audience: bool) -> JwtValidator {
    let keys = KeySet::from_json(JWKS.as_bytes()).expect("the fixed key set is valid");
    let jwks = JwksSource::local("fuzz".into(), Arc::new(ArcSwap::from_pointee(keys)));
    let mut rules = JwtRules::new(ISSUER);
    rules.accept_jwt_typ = accept_jwt_typ;
    rules.audience = require_audience.then(|| AUDIENCE.to_owned());
    JwtValidator::new("fuzz".into(), rules, Arc::new(jwks), 16)
}

fn signed(header: &[u8], claims: &[u8]) -> String {
    let key = EncodingKey::from_ec_pem(PRIVATE_KEY.as_bytes()).expect("the fixed key is valid");
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::ES256)
        .expect("signing with the fixed key");
    format!("{input}.{signature}")
}

fn object(segment: &str) -> Map<String, Value> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .expect("an accepted segment decodes");
    serde_json::from_slice(&bytes).expect("an accepted segment is a JSON object")
}

/// What an accepted token must have said.
fn check_accepted(token: &str, accept_jwt_typ: bool, require_audience: bool) {
    let mut segments = token.split('.');
    let header = object(segments.next().expect("header"));
    let claims = object(segments.next().expect("claims"));
    assert_eq!(header.get("alg"), Some(&Value::from("ES256")));
    assert!(!header.contains_key("crit"));
    match header.get("typ").map(|t| t.as_str().expect("typ is text")) {
        None => assert!(accept_jwt_typ),
        Some(typ) => {
            let typ = typ.to_ascii_lowercase();
            let typ = typ.strip_prefix("application/").unwrap_or(&typ);
            assert!(typ == "at+jwt" || (accept_jwt_typ && typ == "jwt"), "{typ}");
        }
    }
    assert_eq!(claims.get("iss"), Some(&Value::from(ISSUER)));
    let now = NOW as f64;
    let exp = claims["exp"].as_f64().expect("numeric exp");
    assert!(now < exp + LEEWAY, "expired token accepted");
    if let Some(nbf) = claims.get("nbf") {
        assert!(now + LEEWAY >= nbf.as_f64().expect("numeric nbf"));
    }
    if require_audience {
        let aud = &claims["aud"];
        assert!(
            aud == AUDIENCE
                || aud
                    .as_array()
                    .is_some_and(|a| a.contains(&Value::from(AUDIENCE))),
            "audience {aud}"
        );
    }
}

impl Input {
    fn read(data: &[u8]) -> Option<Input> {
        let (&kind, rest) = data.split_first()?;
        if kind == b'R' {
            return Some(Input::Raw(std::str::from_utf8(rest).ok()?.to_owned()));
        }
        let newline = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let (header, claims) = rest.split_at(newline);
        Some(Input::Signed {
            header: (!header.is_empty()).then(|| header.to_vec()),
            claims: claims.get(1..).unwrap_or_default().to_vec(),
            accept_jwt_typ: kind & 1 == 1,
            require_audience: kind & 2 == 2,
        })
    }
}

/// Checks one input; panics where an invariant does not hold.
pub fn input(data: &[u8]) {
    let Some(input) = Input::read(data) else {
        return;
    };
    let (token, accept_jwt_typ, require_audience) = match input {
        Input::Raw(token) => (token, false, false),
        Input::Signed {
            header,
            claims,
            accept_jwt_typ,
            require_audience,
        } => {
            let header =
                header.unwrap_or_else(|| br#"{"alg":"ES256","typ":"at+jwt","kid":"k1"}"#.to_vec());
            (signed(&header, &claims), accept_jwt_typ, require_audience)
        }
    };
    let validator = validator(accept_jwt_typ, require_audience);
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    let validated = validator
        .validate(&token, now)
        .now_or_never()
        .expect("a local key set never waits");
    if validated.is_ok() {
        check_accepted(&token, accept_jwt_typ, require_audience);
    }
}
