//! Basic credentials (RFC 7617) as the admin port and the central export
//! check them: the header parsed once here, compared in constant time
//! against what the snapshot configures. Knows no endpoint; never logs a
//! credential.
//!
//! Guessing them is locked out ([`Logins`]) as guessing a Basic user's
//! password at the gateway is: 5 failures of one user name, or 20 from
//! one client address, within 60 s lock that name or address — on every
//! port that checks these credentials — until the window ends; while
//! locked even the right password is refused unchecked.

use std::net::IpAddr;

use base64::Engine;

use crate::config::Snapshot;
use crate::lockout::{self, Limits, Locked, Lockout, Outcome};

/// The limits of [`Logins`].
const LOGIN_LIMITS: Limits = Limits {
    user: 5,
    client: 20,
    window_secs: 60,
    // Past it, windows that ended go first, then the oldest.
    entries: 10_000,
};

/// Failed logins with the admin credentials or a `central.users` entry,
/// per user name and per client address: one for the process, shared by
/// the admin port and the API ports.
#[derive(Debug)]
pub struct Logins(Lockout<IpAddr>);

impl Default for Logins {
    fn default() -> Logins {
        Logins(Lockout::new(LOGIN_LIMITS))
    }
}

impl Logins {
    /// Whether `right` says `user`'s password is right, for a login from
    /// `peer`: refused unchecked while the name or the address is locked;
    /// a wrong one counts against both.
    pub fn judge(
        &self,
        peer: IpAddr,
        user: &str,
        right: impl FnOnce() -> bool,
    ) -> Result<bool, Locked> {
        let now = lockout::system_now();
        let attempt = self.0.reserve(&peer, user, None, now)?;
        let granted = right();
        let outcome = if granted {
            Outcome::Right
        } else {
            Outcome::Wrong
        };
        attempt.end(outcome, now);
        Ok(granted)
    }
}

/// Whether a request may use an admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// Credentials are configured and these are missing or wrong.
    Denied,
    /// Too many failed logins of this user or from this address: refused
    /// unchecked for this many seconds more.
    Locked(u64),
    /// No credentials are configured: reads allowed, mutations refused.
    Open,
}

/// Checks Basic credentials against `admin.user`/`admin.password`, for a
/// request from `peer`.
pub fn admin_access(
    snapshot: &Snapshot,
    headers: &http::HeaderMap,
    logins: &Logins,
    peer: IpAddr,
) -> Access {
    let Some((user, password)) = &snapshot.admin.credentials else {
        return Access::Open;
    };
    let Some((u, p)) = basic_credentials(headers) else {
        return Access::Denied; // no guess made: nothing to count
    };
    let right = || constant_eq(u.as_bytes(), user.as_bytes()) & password.matches(p.as_bytes());
    match logins.judge(peer, &u, right) {
        Ok(true) => Access::Granted,
        Ok(false) => Access::Denied,
        Err(locked) => Access::Locked(locked.retry_after),
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
