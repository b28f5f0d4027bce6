//! Token introspection (RFC 7662) for the tokens this server issued.
//!
//! The caller must be a confidential client (§2.1), and only a resource
//! server (`introspect: true`) learns anything: any other client gets
//! `{"active":false}` whatever the token (§4: the endpoint must not tell
//! one client about another's tokens). Anything not active —
//! unknown, malformed, expired, revoked, signed by a key we do not know —
//! is `{"active":false}` and nothing else (§2.2), so the answer never says
//! why. A JWT is verified with our own keys and then looked up by `jti`, so
//! revocation shows for both formats. A refresh token is reported active
//! only to the client it was issued to: a resource server asking about a
//! refresh token presented as a bearer token must see it inactive.
//! A token whose client or user is no longer in the settings is inactive
//! too: removing them is how an operator ends their access, and the
//! grants already refuse them (RFC 7662 §2.2: active = usable now).

use serde_json::{json, Map, Value};

use super::error::OAuthError;
use super::keys::SigningKeys;
use super::settings::Settings;
use super::store::{AccessTokenRecord, TokenStore};
use super::tokens::{self, AccessClaims};

pub struct IntrospectContext<'a> {
    pub settings: &'a Settings,
    pub store: &'a dyn TokenStore,
    pub keys: &'a SigningKeys,
    pub now: u64,
}

/// The RFC 7662 §2.2 response object for `token`, asked by `caller`.
pub fn introspect(
    cx: &IntrospectContext<'_>,
    caller: &str,
    token: &str,
) -> Result<Value, OAuthError> {
    let resource_server = cx.settings.client(caller).is_some_and(|c| c.introspect);
    if !resource_server {
        return Ok(json!({ "active": false }));
    }
    let found = if tokens::looks_like_jwt(token) {
        jwt(cx, token)?
    } else {
        opaque(cx, caller, token)?
    };
    Ok(found.unwrap_or_else(|| json!({ "active": false })))
}

/// Whether the client a token was issued to, and its user if any, are
/// still configured.
fn holder_configured(settings: &Settings, client_id: &str, username: Option<&str>) -> bool {
    settings.client(client_id).is_some()
        && username.is_none_or(|user| settings.users.iter().any(|u| u.username == user))
}

fn is_live(expires_at: Option<u64>, now: u64) -> bool {
    expires_at.is_none_or(|exp| exp > now)
}

/// Verifies a JWT's signature with one of our keys; `None` when it is not
/// one of ours.
pub fn verify_own_jwt(
    keys: &SigningKeys,
    settings: &Settings,
    token: &str,
) -> Option<AccessClaims> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    if header.typ.as_deref() != Some("at+jwt") {
        return None;
    }
    let (key, alg) = keys.verifier(header.kid.as_deref()?)?;
    let mut validation = jsonwebtoken::Validation::new(alg);
    // Expiry is judged against the caller's clock below; audience is
    // reported, not enforced, by introspection.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AccessClaims>(token, key, &validation).ok()?;
    (data.claims.iss == settings.issuer).then_some(data.claims)
}

fn jwt(cx: &IntrospectContext<'_>, token: &str) -> Result<Option<Value>, OAuthError> {
    let Some(claims) = verify_own_jwt(cx.keys, cx.settings, token) else {
        return Ok(None);
    };
    if !is_live(claims.exp, cx.now) {
        return Ok(None);
    }
    let Some(record) = cx.store.find_access_token(&claims.jti)? else {
        return Ok(None);
    };
    if record.revoked
        || !holder_configured(cx.settings, &record.client_id, record.username.as_deref())
    {
        return Ok(None);
    }
    let mut answer = access_answer(cx.settings, &record);
    answer.insert("sub".into(), json!(claims.sub));
    answer.insert("aud".into(), json!(claims.aud));
    answer.insert("jti".into(), json!(claims.jti));
    Ok(Some(Value::Object(answer)))
}

fn opaque(
    cx: &IntrospectContext<'_>,
    caller: &str,
    token: &str,
) -> Result<Option<Value>, OAuthError> {
    let hash = tokens::hash_token(token);
    if let Some(record) = cx.store.find_access_token(&hash)? {
        if record.revoked
            || !is_live(record.expires_at, cx.now)
            || !holder_configured(cx.settings, &record.client_id, record.username.as_deref())
        {
            return Ok(None);
        }
        return Ok(Some(Value::Object(access_answer(cx.settings, &record))));
    }
    let Some(refresh) = cx.store.find_refresh_token(&hash)? else {
        return Ok(None);
    };
    if refresh.revoked
        || refresh.rotated
        || !is_live(refresh.expires_at, cx.now)
        || refresh.client_id != caller
        || !holder_configured(cx.settings, &refresh.client_id, refresh.username.as_deref())
    {
        return Ok(None);
    }
    let mut answer = Map::new();
    answer.insert("active".into(), json!(true));
    answer.insert("token_type".into(), json!("refresh_token"));
    answer.insert("scope".into(), json!(refresh.scope));
    answer.insert("client_id".into(), json!(refresh.client_id));
    if let Some(user) = &refresh.username {
        answer.insert("username".into(), json!(user));
    }
    answer.insert("iat".into(), json!(refresh.issued_at));
    answer.insert("iss".into(), json!(cx.settings.issuer));
    Ok(Some(Value::Object(answer)))
}

fn access_answer(settings: &Settings, record: &AccessTokenRecord) -> Map<String, Value> {
    let mut answer = Map::new();
    answer.insert("active".into(), json!(true));
    answer.insert("scope".into(), json!(record.scope));
    answer.insert("client_id".into(), json!(record.client_id));
    if let Some(user) = &record.username {
        answer.insert("username".into(), json!(user));
    }
    answer.insert("token_type".into(), json!("Bearer"));
    if let Some(exp) = record.expires_at {
        answer.insert("exp".into(), json!(exp));
    }
    answer.insert("iat".into(), json!(record.issued_at));
    let sub = record.username.as_deref().unwrap_or(&record.client_id);
    answer.insert("sub".into(), json!(sub));
    answer.insert("aud".into(), json!(settings.token_audience()));
    answer.insert("iss".into(), json!(settings.issuer));
    answer
}
