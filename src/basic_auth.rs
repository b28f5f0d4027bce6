//! Basic credentials (RFC 7617) as the admin port and the central export
//! check them: the header parsed once here, compared in constant time
//! against what the snapshot configures. Knows no endpoint; never logs a
//! credential.

use base64::Engine;

use crate::config::Snapshot;

/// Whether a request may use an admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// Credentials are configured and these are missing or wrong.
    Denied,
    /// No credentials are configured: reads allowed, mutations refused.
    Open,
}

/// Checks Basic credentials against `admin.user`/`admin.password`.
pub fn admin_access(snapshot: &Snapshot, headers: &http::HeaderMap) -> Access {
    let Some((user, password)) = &snapshot.admin.credentials else {
        return Access::Open;
    };
    match basic_credentials(headers) {
        Some((u, p))
            if constant_eq(u.as_bytes(), user.as_bytes()) & password.matches(p.as_bytes()) =>
        {
            Access::Granted
        }
        _ => Access::Denied,
    }
}

/// The user and password of a `Basic` Authorization header (RFC 7617).
pub fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Byte equality whose time does not depend on where the inputs differ.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}
