//! Authentication: a bearer token becomes a [`Principal`], or a reason why not.
//!
//! `extract` finds the one bearer token of a request; `jwt` validates JWT
//! access tokens locally against the keys of `jwks`; `introspection` asks an
//! RFC 7662 endpoint about everything else, through `cache`. Both paths end in
//! [`Principal::from_claims`], so token properties (scopes read by `scope`)
//! are the same whichever way a token was validated. Nothing here ever logs
//! or returns a token.

pub mod cache;
pub mod extract;
pub mod identity;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod scope;
pub mod servers;

use std::sync::Arc;

use serde_json::{Map, Value};

use scope::ScopeProblem;

/// Why a token was refused (401 `invalid_token`). The client only sees the
/// RFC 6750 code; logs and metric labels get this cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    #[error("token is not well formed")]
    Malformed,
    #[error("token is longer than 8 KiB")]
    TooLong,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("no key of the auth server has this kid")]
    UnknownKey,
    #[error("token algorithm is not allowed for its key")]
    DisallowedAlgorithm,
    #[error("token header carries a crit parameter")]
    CriticalHeader,
    #[error("token has expired")]
    Expired,
    #[error("token is not yet valid")]
    NotYetValid,
    #[error("token has no numeric exp claim")]
    MissingExpiry,
    #[error("token issuer is not the configured one")]
    WrongIssuer,
    #[error("token audience does not contain the configured one")]
    WrongAudience,
    #[error("token typ is not at+jwt")]
    WrongType,
    #[error("token is not active")]
    Inactive,
    #[error("a token property is not a valid header value")]
    BadProperty,
    #[error("token scope is not space-separated scope tokens")]
    BadScope,
}

impl TokenProblem {
    /// Stable label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            TokenProblem::Malformed => "malformed",
            TokenProblem::TooLong => "too_long",
            TokenProblem::BadSignature => "bad_signature",
            TokenProblem::UnknownKey => "unknown_key",
            TokenProblem::DisallowedAlgorithm => "disallowed_algorithm",
            TokenProblem::CriticalHeader => "critical_header",
            TokenProblem::Expired => "expired",
            TokenProblem::NotYetValid => "not_yet_valid",
            TokenProblem::MissingExpiry => "missing_exp",
            TokenProblem::WrongIssuer => "wrong_issuer",
            TokenProblem::WrongAudience => "wrong_audience",
            TokenProblem::WrongType => "wrong_typ",
            TokenProblem::Inactive => "inactive",
            TokenProblem::BadProperty => "bad_property",
            TokenProblem::BadScope => "bad_scope",
        }
    }
}

/// Why authentication did not produce a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The token is not acceptable: 401 `invalid_token`.
    #[error("invalid token: {0}")]
    Invalid(TokenProblem),
    /// The auth server (JWKS, introspection) could not answer: 503, never an accept.
    #[error("auth server {auth_server} unavailable: {cause}")]
    Unavailable {
        auth_server: Arc<str>,
        cause: String,
    },
}

/// Whom a validated token speaks for. Built only by [`Principal::from_claims`].
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Id of the auth server that validated the token.
    pub auth_server: Arc<str>,
    /// Token scopes, exact and case-sensitive.
    pub token_scopes: Vec<String>,
    pub client_id: Option<String>,
    pub user_name: Option<String>,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    /// `exp` as Unix seconds; `None` for a token that never expires.
    pub expires_at: Option<u64>,
    pub claims: Map<String, Value>,
}

impl Principal {
    /// Builds a principal from JWT claims or an RFC 7662 introspection answer.
    /// Scopes come from `scope` (space-separated), `scp` or `scopes`
    /// (string or array); client id from `client_id`, else `azp`; user from
    /// `username`, else `sub`. A scope claim that is not RFC 6749 §3.3
    /// scope tokens refuses the token: read another way, it could grant
    /// what its issuer did not mean to.
    pub fn from_claims(
        auth_server: Arc<str>,
        claims: Map<String, Value>,
    ) -> Result<Principal, TokenProblem> {
        let token_scopes = match ["scope", "scp", "scopes"]
            .iter()
            .find_map(|name| claims.get(*name))
        {
            Some(value) => scope_list(value).map_err(|_| TokenProblem::BadScope)?,
            None => Vec::new(),
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        let audience = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.clone()],
            Some(Value::Array(many)) => many
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Principal {
            auth_server,
            token_scopes,
            client_id: text("client_id").or_else(|| text("azp")),
            user_name: text("username").or_else(|| text("sub")),
            issuer: text("iss"),
            audience,
            expires_at: claims.get("exp").and_then(Value::as_u64),
            claims,
        })
    }
}

/// Whether an `aud` claim — one string or an array of them (RFC 7519
/// §4.1.3) — names `audience`.
fn audience_contains(aud: Option<&Value>, audience: &str) -> bool {
    match aud {
        Some(Value::String(one)) => one == audience,
        Some(Value::Array(many)) => many.iter().any(|aud| aud.as_str() == Some(audience)),
        _ => false,
    }
}

/// A space-separated string, or an array whose every entry is one scope
/// token; `null` is no scope at all.
fn scope_list(value: &Value) -> Result<Vec<String>, ScopeProblem> {
    match value {
        Value::String(joined) => Ok(scope::split(joined)?.map(str::to_owned).collect()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let entry = item.as_str().ok_or(ScopeProblem::BadEntry)?;
                scope::token(entry).map(str::to_owned)
            })
            .collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(ScopeProblem::NotAList),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("test claims are objects"),
        }
    }

    fn principal(value: Value) -> Result<Principal, TokenProblem> {
        Principal::from_claims("a".into(), claims(value))
    }

    #[test]
    fn scopes_from_scope_scp_or_scopes() {
        let p = principal(json!({"scope": "view  book"})).expect("valid");
        assert_eq!(p.token_scopes, ["view", "book"]);
        let p = principal(json!({"scp": ["view"]})).expect("valid");
        assert_eq!(p.token_scopes, ["view"]);
        let p = principal(json!({"scopes": "x"})).expect("valid");
        assert_eq!(p.token_scopes, ["x"]);
        let p = principal(json!({"scope": null})).expect("valid");
        assert!(p.token_scopes.is_empty());
    }

    #[test]
    fn scope_split_on_anything_but_a_space_refuses_the_token() {
        for bad in [
            json!({"scope": "evil\u{2003}orders:read"}),
            json!({"scope": "view\tbook"}),
            json!({"scp": ["evil\u{2003}orders:read"]}),
            json!({"scp": ["view book"]}),
            json!({"scopes": ["view", 7]}),
            json!({"scp": ["view", ""]}),
            json!({"scope": 7}),
        ] {
            assert_eq!(principal(bad.clone()), Err(TokenProblem::BadScope), "{bad}");
        }
    }

    #[test]
    fn client_id_falls_back_to_azp_and_user_to_sub() {
        let p = principal(json!({"azp": "app", "sub": "alice", "aud": ["x", "y"]})).expect("valid");
        assert_eq!(p.client_id.as_deref(), Some("app"));
        assert_eq!(p.user_name.as_deref(), Some("alice"));
        assert_eq!(p.audience, ["x", "y"]);
    }
}
