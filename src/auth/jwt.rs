//! Local validation of JWT access tokens (RFC 9068) against an auth
//! server's JWK Set.
//!
//! Order: cheap shape checks, the verified-token cache, the JOSE header
//! (`crit`, `typ`, `alg`), the key for `kid`, the signature, the claims
//! (`exp`, `nbf`, `iss`, `aud`). The key decides the algorithm: `none`, HMAC
//! and any `alg` other than the key's are refused (RFC 8725 §3.1); `jku`,
//! `x5u`, `jwk` and `x5c` never choose a key. Times are checked against the
//! caller's `now`, so tests control the clock. A token is never logged.

mod verified;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::auth::jwks::JwksSource;
use crate::auth::{AuthFailure, Principal, TokenProblem};
use verified::{Verified, VerifiedCache};

/// Longest token looked at (DESIGN: over 8 KiB is `invalid_token`).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Largest clock-skew allowance accepted.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRules {
    /// `iss` must be exactly this string.
    pub issuer: String,
    /// When set, `aud` must be this string or an array containing it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`; capped at [`MAX_LEEWAY`].
    pub leeway: Duration,
    /// Also accept `typ: JWT` and a missing `typ`, not only `at+jwt`.
    pub accept_jwt_typ: bool,
}

impl JwtRules {
    pub fn new(issuer: impl Into<String>) -> JwtRules {
        JwtRules {
            issuer: issuer.into(),
            audience: None,
            leeway: MAX_LEEWAY,
            accept_jwt_typ: false,
        }
    }
}

/// Validates the JWT access tokens of one auth server.
pub struct JwtValidator {
    auth_server: Arc<str>,
    rules: JwtRules,
    jwks: Arc<JwksSource>,
    cache: VerifiedCache,
    verifications: AtomicU64,
}

/// `exp` and `nbf` as NumericDate seconds (RFC 7519 §2, may be fractional).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Validity {
    exp: f64,
    nbf: Option<f64>,
}

/// The JOSE header members this gateway acts on (RFC 7515 §4.1).
#[derive(Debug, PartialEq)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    crit: bool,
}

/// The three parts of a JWS Compact Serialization (RFC 7515 §7.1).
struct Segments<'a> {
    header: &'a str,
    signing_input: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl JwtValidator {
    pub fn new(
        auth_server: Arc<str>,
        mut rules: JwtRules,
        jwks: Arc<JwksSource>,
        cache_capacity: usize,
    ) -> JwtValidator {
        rules.leeway = rules.leeway.min(MAX_LEEWAY);
        JwtValidator {
            auth_server,
            rules,
            jwks,
            cache: VerifiedCache::new(cache_capacity),
            verifications: AtomicU64::new(0),
        }
    }

    /// Signature checks made so far (cache hits make none).
    pub fn signature_verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    pub fn jwks(&self) -> &Arc<JwksSource> {
        &self.jwks
    }

    /// A remembered token, while the JWKS still has the key that verified
    /// it; its times are checked again with this `now`.
    fn answer_from_cache(
        &self,
        digest: &[u8; 32],
        now: f64,
        leeway: f64,
    ) -> Option<Result<Arc<Principal>, AuthFailure>> {
        let hit = self.cache.get(digest)?;
        let key_still_published = self
            .jwks
            .loaded_key(hit.kid.as_deref())
            .is_some_and(|key| key.same_key(&hit.key));
        if !key_still_published {
            self.cache.remove(digest);
            return None;
        }
        if let Err(problem) = check_times(hit.validity, now, leeway) {
            self.cache.remove(digest);
            return Some(Err(AuthFailure::Invalid(problem)));
        }
        Some(Ok(hit.principal.clone()))
    }

    /// The principal a token speaks for at `now`, or why it speaks for no one.
    pub async fn validate(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let now = unix_seconds(now);
        let leeway = self.rules.leeway.as_secs_f64();
        // Only tokens that passed every check below are remembered, so a
        // hit needs no second look at the token's shape.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.answer_from_cache(&digest, now, leeway) {
            return answer;
        }
        let segments = split(token).map_err(AuthFailure::Invalid)?;

        let header = parse_header(segments.header).map_err(AuthFailure::Invalid)?;
        check_header(&header, self.rules.accept_jwt_typ).map_err(AuthFailure::Invalid)?;
        let key = self.jwks.key_for(header.kid.as_deref()).await?;
        if algorithm_name(key.algorithm()) != header.alg {
            return Err(AuthFailure::Invalid(TokenProblem::DisallowedAlgorithm));
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let signed = jsonwebtoken::crypto::verify(
            segments.signature,
            segments.signing_input.as_bytes(),
            key.decoding_key(),
            key.algorithm(),
        );
        if !matches!(signed, Ok(true)) {
            return Err(AuthFailure::Invalid(TokenProblem::BadSignature));
        }

        let claims = decode_object(segments.payload).map_err(AuthFailure::Invalid)?;
        let validity = check_claims(&claims, &self.rules).map_err(AuthFailure::Invalid)?;
        check_times(validity, now, leeway).map_err(AuthFailure::Invalid)?;
        let mut principal = Principal::from_claims(self.auth_server.clone(), claims)
            .map_err(AuthFailure::Invalid)?;
        principal.expires_at = Some(validity.exp.max(0.0).floor() as u64);
        let principal = Arc::new(principal);
        let verified = Verified {
            principal: principal.clone(),
            validity,
            kid: header.kid,
            key,
        };
        self.cache.insert(digest, Arc::new(verified), |validity| {
            check_times(*validity, now, leeway) == Err(TokenProblem::Expired)
        });
        Ok(principal)
    }
}

fn unix_seconds(now: SystemTime) -> f64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

fn split(token: &str) -> Result<Segments<'_>, TokenProblem> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenProblem::TooLong);
    }
    // No early exit: without one the loop vectorizes.
    let base64url = |part: &str| {
        part.bytes().fold(true, |ok, byte| {
            ok & (byte.is_ascii_alphanumeric() | (byte == b'-') | (byte == b'_'))
        })
    };
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenProblem::Malformed);
    };
    // An empty signature is left to the header checks: `alg: none` is
    // refused as a disallowed algorithm, not as a malformed token.
    if header.is_empty()
        || payload.is_empty()
        || ![header, payload, signature].iter().all(|p| base64url(p))
    {
        return Err(TokenProblem::Malformed);
    }
    Ok(Segments {
        header,
        signing_input: &token[..header.len() + 1 + payload.len()],
        payload,
        signature,
    })
}

fn decode_object(segment: &str) -> Result<Map<String, Value>, TokenProblem> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenProblem::Malformed)?;
    // RFC 7515 §4: with duplicate member names, the last one is used.
    serde_json::from_slice(&bytes).map_err(|_| TokenProblem::Malformed)
}

fn parse_header(segment: &str) -> Result<JoseHeader, TokenProblem> {
    let header = decode_object(segment)?;
    let text = |name: &str| match header.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(TokenProblem::Malformed),
    };
    let alg = text("alg")?.ok_or(TokenProblem::Malformed)?;
    Ok(JoseHeader {
        // RFC 9864 names EdDSA over Ed25519 "Ed25519": the same algorithm
        // (a JWKS key may carry either name, `jwks`).
        alg: if alg == "Ed25519" {
            "EdDSA".to_owned()
        } else {
            alg
        },
        kid: text("kid")?,
        typ: text("typ")?,
        crit: header.contains_key("crit"),
    })
}

fn check_header(header: &JoseHeader, accept_jwt_typ: bool) -> Result<(), TokenProblem> {
    // RFC 7515 §4.1.11: no extension is understood here, so any `crit` is fatal.
    if header.crit {
        return Err(TokenProblem::CriticalHeader);
    }
    if !typ_allowed(header.typ.as_deref(), accept_jwt_typ) {
        return Err(TokenProblem::WrongType);
    }
    // Refused before any key lookup: such tokens cause no JWKS fetch.
    if header.alg.parse::<Algorithm>().map_or(true, |alg| {
        matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }) {
        return Err(TokenProblem::DisallowedAlgorithm);
    }
    Ok(())
}

/// RFC 9068 §4: `at+jwt`; RFC 7515 §4.1.9: media types compare
/// case-insensitively and may omit `application/`.
fn typ_allowed(typ: Option<&str>, accept_jwt_typ: bool) -> bool {
    let Some(typ) = typ else {
        return accept_jwt_typ;
    };
    let typ = typ.to_ascii_lowercase();
    let typ = typ.strip_prefix("application/").unwrap_or(&typ);
    typ == "at+jwt" || (accept_jwt_typ && typ == "jwt")
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // Non-exhaustive upstream: a newer algorithm matches no token name.
        _ => "",
    }
}

/// The static claims: `exp` required and numeric (RFC 9068 §2.2), `nbf`
/// numeric when present, `iss` one string equal to the configured issuer,
/// `aud` containing the configured audience.
fn check_claims(claims: &Map<String, Value>, rules: &JwtRules) -> Result<Validity, TokenProblem> {
    let numeric = |value: &Value| value.as_f64().filter(|secs| secs.is_finite());
    let exp = claims
        .get("exp")
        .and_then(numeric)
        .ok_or(TokenProblem::MissingExpiry)?;
    let nbf = match claims.get("nbf") {
        None => None,
        Some(value) => Some(numeric(value).ok_or(TokenProblem::Malformed)?),
    };
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        _ => return Err(TokenProblem::WrongIssuer),
    }
    if let Some(audience) = &rules.audience {
        if !super::audience_contains(claims.get("aud"), audience) {
            return Err(TokenProblem::WrongAudience);
        }
    }
    Ok(Validity { exp, nbf })
}

/// RFC 7519 §4.1.4: valid only before `exp`; §4.1.5: not before `nbf`;
/// both widened by the leeway.
fn check_times(validity: Validity, now: f64, leeway: f64) -> Result<(), TokenProblem> {
    if now >= validity.exp + leeway {
        return Err(TokenProblem::Expired);
    }
    if validity.nbf.is_some_and(|nbf| now + leeway < nbf) {
        return Err(TokenProblem::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test claims are objects"),
        }
    }

    fn rules() -> JwtRules {
        JwtRules {
            audience: Some("api".into()),
            ..JwtRules::new("https://idp")
        }
    }

    #[test]
    fn typ_rules() {
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/At+Jwt",
        ] {
            assert!(typ_allowed(Some(typ), false), "{typ}");
        }
        assert!(!typ_allowed(Some("JWT"), false));
        assert!(!typ_allowed(None, false));
        assert!(!typ_allowed(Some("id+jwt"), false));
        assert!(typ_allowed(Some("JWT"), true));
        assert!(typ_allowed(Some("application/jwt"), true));
        assert!(typ_allowed(None, true));
        assert!(!typ_allowed(Some("jose"), true));
    }

    #[test]
    fn header_checks_come_before_any_key() {
        let header = |value: Value| parse_header(&b64(&value));
        let check = |value: Value| check_header(&header(value)?, false);
        assert_eq!(check(json!({"alg": "ES256", "typ": "at+jwt"})), Ok(()));
        assert_eq!(
            check(json!({"alg": "none", "typ": "at+jwt"})),
            Err(TokenProblem::DisallowedAlgorithm)
        );
        assert_eq!(
            check(json!({"alg": "HS256", "typ": "at+jwt"})),
            Err(TokenProblem::DisallowedAlgorithm)
        );
        assert_eq!(
            check(json!({"alg": "ES256", "typ": "at+jwt", "crit": ["exp"]})),
            Err(TokenProblem::CriticalHeader)
        );
        assert_eq!(check(json!({"alg": "ES256"})), Err(TokenProblem::WrongType));
        assert_eq!(
            check(json!({"typ": "at+jwt"})),
            Err(TokenProblem::Malformed)
        );
        assert_eq!(
            check(json!({"alg": "ES256", "kid": 7})),
            Err(TokenProblem::Malformed)
        );
        let with_urls = header(json!({
            "alg": "RS256", "kid": "k", "jku": "http://evil", "x5u": "http://evil",
            "jwk": {"kty": "oct"}, "x5c": "junk"
        }))
        .expect("ignored members do not matter");
        assert_eq!(with_urls.kid.as_deref(), Some("k"));
    }

    #[test]
    fn shape_checks() {
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(split(&long).err(), Some(TokenProblem::TooLong));
        for bad in [
            "", "a.b", "a.b.c.d", ".b.c", "a..c", "a.b+.c", "a.b.c=", "a b.c.d",
        ] {
            assert_eq!(split(bad).err(), Some(TokenProblem::Malformed), "{bad}");
        }
        let ok = split("aa.bb.cc").expect("three segments");
        assert_eq!(
            (ok.header, ok.payload, ok.signature, ok.signing_input),
            ("aa", "bb", "cc", "aa.bb")
        );
        assert!(split("aa.bb.").is_ok());
    }

    #[test]
    fn claim_rules() {
        let check = |value: Value| check_claims(&claims(value), &rules());
        let good = json!({"iss": "https://idp", "aud": "api", "exp": 100});
        assert_eq!(
            check(good),
            Ok(Validity {
                exp: 100.0,
                nbf: None
            })
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": ["x", "api"], "exp": 1.5, "nbf": 1})),
            Ok(Validity {
                exp: 1.5,
                nbf: Some(1.0)
            })
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": "api"})),
            Err(TokenProblem::MissingExpiry)
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": "api", "exp": "100"})),
            Err(TokenProblem::MissingExpiry)
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": "api", "exp": 100, "nbf": "1"})),
            Err(TokenProblem::Malformed)
        );
        assert_eq!(
            check(json!({"iss": ["https://idp"], "aud": "api", "exp": 100})),
            Err(TokenProblem::WrongIssuer)
        );
        assert_eq!(
            check(json!({"iss": "https://idp/", "aud": "api", "exp": 100})),
            Err(TokenProblem::WrongIssuer)
        );
        assert_eq!(
            check(json!({"aud": "api", "exp": 100})),
            Err(TokenProblem::WrongIssuer)
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "aud": ["x"], "exp": 100})),
            Err(TokenProblem::WrongAudience)
        );
        assert_eq!(
            check(json!({"iss": "https://idp", "exp": 100})),
            Err(TokenProblem::WrongAudience)
        );
        let no_audience = JwtRules::new("https://idp");
        assert!(check_claims(
            &claims(json!({"iss": "https://idp", "exp": 1})),
            &no_audience
        )
        .is_ok());
    }

    #[test]
    fn times_use_the_given_now_and_leeway() {
        let validity = Validity {
            exp: 1000.0,
            nbf: Some(500.0),
        };
        assert_eq!(check_times(validity, 999.0, 0.0), Ok(()));
        assert_eq!(
            check_times(validity, 1000.0, 0.0),
            Err(TokenProblem::Expired)
        );
        assert_eq!(check_times(validity, 1059.0, 60.0), Ok(()));
        assert_eq!(
            check_times(validity, 1060.0, 60.0),
            Err(TokenProblem::Expired)
        );
        assert_eq!(
            check_times(validity, 499.0, 0.0),
            Err(TokenProblem::NotYetValid)
        );
        assert_eq!(check_times(validity, 500.0, 0.0), Ok(()));
        assert_eq!(check_times(validity, 440.0, 60.0), Ok(()));
        assert_eq!(
            check_times(validity, 439.0, 60.0),
            Err(TokenProblem::NotYetValid)
        );
    }

    #[test]
    fn algorithm_names_round_trip() {
        for name in [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ] {
            let alg: Algorithm = name.parse().expect("known name");
            assert_eq!(algorithm_name(alg), name);
        }
    }
}
