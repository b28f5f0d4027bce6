//! Who calls: the credential a request presents (bearer token, API key,
//! Basic user, client certificate) found among the types its API accepts,
//! and the [`Identity`] it resolves to, with the application it belongs to.
//!
//! Exactly one kind of credential may be presented: two kinds are a
//! client bug or a probe, refused (400) rather than guessed between. API
//! keys are compared as SHA-256 digests in constant time; Basic passwords
//! are checked against Argon2 PHC strings with the same work for an
//! unknown user as for a known one. Nothing here logs a credential.

use std::sync::Arc;

use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::extract::{self, Extracted};
use super::{Principal, TokenProblem};
use crate::config::snapshot::{Application, Applications, CredentialType, Identification};

/// Longest API key or Basic credential looked at (bytes).
pub const MAX_CREDENTIAL_BYTES: usize = 4 * 1024;

/// Whom a request speaks for, once its credential was checked.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The kind of credential that identified the caller.
    pub kind: CredentialType,
    /// The validated token (`kind` oauth2).
    pub principal: Option<Arc<Principal>>,
    /// The application the credential belongs to; for a token, the one
    /// whose `client_ids` has its client id at the auth server that
    /// issued it, if any.
    pub application: Option<Arc<Application>>,
    /// The Basic user name (`kind` basic).
    pub user_name: Option<String>,
}

impl Identity {
    /// The identified application's name: what per-application policies key on.
    pub fn application_name(&self) -> Option<&str> {
        self.application.as_deref().map(|app| &*app.name)
    }

    /// An identity for a validated token.
    pub fn of_token(principal: Arc<Principal>, applications: &Applications) -> Identity {
        let application = principal
            .client_id
            .as_deref()
            .and_then(|id| applications.by_client_id(&principal.auth_server, id))
            .cloned();
        Identity {
            kind: CredentialType::OAuth2,
            principal: Some(principal),
            application,
            user_name: None,
        }
    }

    /// An identity for an application's own credential.
    pub fn of_application(kind: CredentialType, application: Arc<Application>) -> Identity {
        Identity {
            kind,
            principal: None,
            application: Some(application),
            user_name: None,
        }
    }
}

/// The one credential a request presents.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a [u8]),
    Basic { user: String, password: String },
    Certificate([u8; 32]),
}

impl Credential<'_> {
    pub fn kind(&self) -> CredentialType {
        match self {
            Credential::Bearer(_) => CredentialType::OAuth2,
            Credential::ApiKey(_) => CredentialType::ApiKey,
            Credential::Basic { .. } => CredentialType::Basic,
            Credential::Certificate(_) => CredentialType::Certificate,
        }
    }
}

/// Why no single credential could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialProblem {
    #[error("no credential of an accepted type")]
    Missing,
    #[error("credentials of two kinds")]
    TwoKinds,
    /// RFC 6750 §3.1 `invalid_request` (two `Authorization` headers, a token in the query).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A credential of another kind sent twice (two API key headers, two
    /// `Authorization` headers where no token is accepted): a plain bad
    /// request, with no bearer challenge.
    #[error("bad request: {0}")]
    Repeated(&'static str),
    #[error("invalid token: {0}")]
    InvalidToken(TokenProblem),
    /// A malformed credential of this kind: refused like a wrong one.
    #[error("malformed {} credential", .0.label())]
    Malformed(CredentialType),
}

/// Finds the one credential, among the types `accepted`, that a request
/// presents. `certificate` is the SHA-256 of the client certificate of its
/// connection.
pub fn credential<'a>(
    accepted: &Identification,
    headers: &'a HeaderMap,
    query: Option<&str>,
    certificate: Option<[u8; 32]>,
) -> Result<Credential<'a>, CredentialProblem> {
    let mut found: Option<Credential<'a>> = None;
    let mut add = |credential: Credential<'a>| match found {
        Some(_) => Err(CredentialProblem::TwoKinds),
        None => {
            found = Some(credential);
            Ok(())
        }
    };
    if accepted.accepts(CredentialType::OAuth2) {
        match extract::bearer(headers, query) {
            Extracted::Token(token) => add(Credential::Bearer(token))?,
            Extracted::Missing => {}
            Extracted::InvalidRequest(why) => return Err(CredentialProblem::InvalidRequest(why)),
            Extracted::Invalid(problem) => return Err(CredentialProblem::InvalidToken(problem)),
        }
    }
    if accepted.accepts(CredentialType::Basic) {
        if let Some(basic) = basic(headers)? {
            add(basic)?;
        }
    }
    if accepted.accepts(CredentialType::ApiKey) {
        let mut values = headers.get_all(&accepted.api_key_header).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(CredentialProblem::Repeated("more than one API key header"));
            }
            let key = value.as_bytes();
            if key.is_empty() || key.len() > MAX_CREDENTIAL_BYTES {
                return Err(CredentialProblem::Malformed(CredentialType::ApiKey));
            }
            add(Credential::ApiKey(key))?;
        }
    }
    if accepted.accepts(CredentialType::Certificate) {
        if let Some(fingerprint) = certificate {
            add(Credential::Certificate(fingerprint))?;
        }
    }
    found.ok_or(CredentialProblem::Missing)
}

/// The user and password of an `Authorization: Basic` header (RFC 7617).
fn basic(headers: &HeaderMap) -> Result<Option<Credential<'static>>, CredentialProblem> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(CredentialProblem::Repeated(
            "more than one Authorization header",
        ));
    }
    let bytes = value.as_bytes();
    let Some(encoded) = bytes
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
        .map(|_| &bytes[6..])
    else {
        return Ok(None);
    };
    let malformed = CredentialProblem::Malformed(CredentialType::Basic);
    if encoded.len() > MAX_CREDENTIAL_BYTES {
        return Err(malformed);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .map_err(|_| malformed)?;
    let text = String::from_utf8(decoded).map_err(|_| malformed)?;
    let (user, password) = text.split_once(':').ok_or(malformed)?;
    Ok(Some(Credential::Basic {
        user: user.to_owned(),
        password: password.to_owned(),
    }))
}

/// SHA-256 of an API key: how keys are stored and compared.
pub fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The cache key of a Basic credential: SHA-256 of user, NUL, password.
pub fn basic_digest(user: &str, password: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(user.as_bytes());
    hasher.update([0]);
    hasher.update(password.as_bytes());
    hasher.finalize().into()
}

/// The application of a Basic user whose password matches. An unknown
/// user is checked against the hash of a user whose parameters most
/// users' hashes have (and refused whatever the outcome), so the time
/// taken does not tell which users exist. Argon2 is
/// slow by design: the data path runs this on its blocking workers.
pub fn verify_basic(
    applications: &Applications,
    user: &str,
    password: &str,
) -> Option<Arc<Application>> {
    use argon2::password_hash::phc::PasswordHash;
    use argon2::{Argon2, PasswordVerifier};
    let (entry, known) = match applications.basic_users.get(user) {
        Some(entry) => (entry, true),
        None => {
            let dummy = applications.dummy_basic_user.as_deref()?;
            (applications.basic_users.get(dummy)?, false)
        }
    };
    let (index, hash) = entry;
    let hash = PasswordHash::new(hash.expose()).ok()?;
    let matched = Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok();
    (matched && known)
        .then(|| applications.list.get(*index).cloned())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn accepted(types: &[CredentialType]) -> Identification {
        Identification {
            types: types.to_vec(),
            auth_server: None,
            api_key_header: HeaderName::from_static("x-api-key"),
            api_key_folded: crate::config::snapshot::FoldedName::new("x-api-key"),
            registered_only: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_accepted_types_are_read() {
        let all = accepted(&CredentialType::ALL);
        let key_only = accepted(&[CredentialType::ApiKey]);
        let h = headers(&[("x-api-key", "k1")]);
        assert_eq!(
            credential(&all, &h, None, None),
            Ok(Credential::ApiKey(b"k1"))
        );
        let h = headers(&[("authorization", "Bearer abc")]);
        assert_eq!(
            credential(&key_only, &h, None, None),
            Err(CredentialProblem::Missing)
        );
        assert_eq!(
            credential(&key_only, &HeaderMap::new(), None, Some([1; 32])),
            Err(CredentialProblem::Missing)
        );
    }

    #[test]
    fn two_kinds_are_refused() {
        let all = accepted(&CredentialType::ALL);
        let h = headers(&[("authorization", "Bearer abc"), ("x-api-key", "k1")]);
        assert_eq!(
            credential(&all, &h, None, None),
            Err(CredentialProblem::TwoKinds)
        );
        let h = headers(&[("x-api-key", "k1")]);
        assert_eq!(
            credential(&all, &h, None, Some([1; 32])),
            Err(CredentialProblem::TwoKinds)
        );
    }

    #[test]
    fn basic_is_decoded_and_malformed_basic_refused() {
        let basic = accepted(&[CredentialType::Basic]);
        let h = headers(&[("authorization", "basic dXNlcjpwOnc=")]);
        assert_eq!(
            credential(&basic, &h, None, None),
            Ok(Credential::Basic {
                user: "user".into(),
                password: "p:w".into()
            })
        );
        for bad in ["Basic !!!", "Basic dXNlcg=="] {
            let h = headers(&[("authorization", bad)]);
            assert_eq!(
                credential(&basic, &h, None, None),
                Err(CredentialProblem::Malformed(CredentialType::Basic)),
                "{bad}"
            );
        }
    }
}
