//! Basic credentials (RFC 7617) as the admin port and the central export
//! check them: the header parsed once here, compared in constant time
//! against what the snapshot configures. Knows no endpoint; never logs a
//! credential.
//!
//! Guessing them is locked out ([`Logins`]) as guessing a Basic user's
//! password at the gateway is: 5 failures of one user name, or 20 from
//! one client address, within 60 s lock that name or address — on every
//! port that checks these credentials — until the window ends; while
//! locked even the right password is refused unchecked. But a name locked
//! by guesses from elsewhere does not lock out those who did not guess:
//! an address that logged in as that user within a day is still checked,
//! unless the address is locked or has itself failed 5 times as that user
//! within the window; and an address that gave no wrong password within a
//! day (as any user; an IPv6 one counted by its /64) is checked too, one
//! check at a time, so a new downstream, or every downstream after a
//! restart of the central, logs in. A stranger's five guesses a minute so
//! cannot keep an operator, or a fleet's downstreams, out, and guesses
//! spread over many addresses stay bounded: each address gets, on a locked
//! name, at most the one wrong password that makes it an address that
//! failed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine;

use crate::config::secret::constant_eq;
use crate::config::Snapshot;
use crate::lockout::{self, AddressKey, Limits, Locked, Lockout, Outcome, Subject};

/// The limits of [`Logins`].
const LOGIN_LIMITS: Limits = Limits {
    user: 5,
    client: 20,
    window_secs: 60,
    // Past it, windows that ended go first, then the one with the
    // fewest failures, a lock last.
    entries: 10_000,
};

/// How long an address that logged in as a user stays known as its caller.
const KNOWN_FOR_SECS: u64 = 24 * 60 * 60;
/// Known callers kept at most; past it, those no longer known go first,
/// then the one that logged in longest ago.
const KNOWN_ENTRIES: usize = 1024;

/// How long an address that gave a wrong password is checked on a locked
/// name only as a known caller.
const FAILED_FOR_SECS: u64 = 24 * 60 * 60;

/// Failed logins with the admin credentials or a `central.users` entry,
/// per user name and per client address, and the addresses each user
/// logged in from: one for the process, shared by the admin port and the
/// API ports.
#[derive(Debug)]
pub struct Logins {
    /// Addresses counted as [`AddressKey`]s (an IPv6 caller by its /64).
    counts: Lockout<AddressKey>,
    /// Failures per (user, exact address): what locks a known caller —
    /// not its neighbours' failures in a shared /64.
    pairs: Lockout<(String, IpAddr)>,
    /// (user, exact address) → when it last logged in.
    known: Mutex<HashMap<(String, IpAddr), u64>>,
    /// Addresses (as counted) that gave a wrong password within
    /// [`FAILED_FOR_SECS`], as any user, and the check of one on a locked
    /// name under way: one failure, or one check, holds the address.
    failed: Lockout<AddressKey>,
}

impl Default for Logins {
    fn default() -> Logins {
        Logins {
            counts: Lockout::new(LOGIN_LIMITS),
            pairs: Lockout::new(Limits {
                client: LOGIN_LIMITS.user,
                ..LOGIN_LIMITS
            }),
            known: Mutex::default(),
            failed: Lockout::new(Limits {
                user: u32::MAX,
                client: 1,
                window_secs: FAILED_FOR_SECS,
                ..LOGIN_LIMITS
            }),
        }
    }
}

impl Logins {
    /// Whether `right` says `user`'s password is right, for a login from
    /// `peer`: refused unchecked while the address is locked, or the name
    /// is and `peer` is neither a known caller of it nor an address that
    /// never failed; a wrong one counts against both.
    pub fn judge(
        &self,
        peer: IpAddr,
        user: &str,
        right: impl FnOnce() -> bool,
    ) -> Result<bool, Locked> {
        self.judge_at(peer, user, lockout::system_now(), right)
    }

    fn judge_at(
        &self,
        peer: IpAddr,
        user: &str,
        now: u64,
        right: impl FnOnce() -> bool,
    ) -> Result<bool, Locked> {
        let address = AddressKey::of(peer);
        // A long name kept as its digest: the pairs kept bound their bytes.
        let pair = Subject::Client((crate::lockout::kept_name(user), peer));
        let granted = match self.counts.reserve(&address, user, None, now) {
            Ok(attempt) => {
                let granted = right();
                let outcome = if granted {
                    Outcome::Right
                } else {
                    Outcome::Wrong
                };
                attempt.end(outcome, now);
                self.count_address(granted, address, now);
                granted
            }
            // The name or the address is locked (or its checks fill the
            // lock): its known callers are still checked, unless they
            // failed as that user themselves (from the exact address: a
            // neighbour in a shared /64 locks them out no more than a
            // stranger does).
            Err(_) if self.is_known(user, peer, now) => {
                self.pairs.check(&pair, now)?;
                let granted = self.checked_past_the_lock(address, user, now, right);
                self.count_address(granted, address, now);
                granted
            }
            // And so is an address that gave no wrong password, unless it
            // is locked itself: one check at a time, and none after its
            // first failure.
            Err(locked) => {
                self.counts.check(&Subject::Client(address), now)?;
                let Ok(attempt) = self.failed.reserve(&address, user, None, now) else {
                    return Err(locked);
                };
                let granted = self.checked_past_the_lock(address, user, now, right);
                // A failure counted as the check ends: no other check of
                // the address comes in between.
                let outcome = if granted {
                    Outcome::Right
                } else {
                    Outcome::Wrong
                };
                attempt.end(outcome, now);
                granted
            }
        };
        if granted {
            self.pairs.forgive(&pair);
            self.remember(user, peer, now);
        } else {
            self.pairs.record_failure(&pair, now);
        }
        Ok(granted)
    }

    /// Counts a wrong password against the address as one that failed.
    fn count_address(&self, granted: bool, address: AddressKey, now: u64) {
        if !granted {
            self.failed.record_failure(&Subject::Client(address), now);
        }
    }

    /// Checks a password that a lock of its name or address let through:
    /// a wrong one counts against both all the same.
    fn checked_past_the_lock(
        &self,
        address: AddressKey,
        user: &str,
        now: u64,
        right: impl FnOnce() -> bool,
    ) -> bool {
        let granted = right();
        if !granted {
            self.counts.record_failure(&Subject::Client(address), now);
            self.counts.record_failure(&Subject::user(user), now);
        }
        granted
    }

    fn is_known(&self, user: &str, peer: IpAddr, now: u64) -> bool {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(&(user.to_owned(), peer))
            .is_some_and(|at| now < at.saturating_add(KNOWN_FOR_SECS))
    }

    fn remember(&self, user: &str, peer: IpAddr, now: u64) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let key = (user.to_owned(), peer);
        if known.len() >= KNOWN_ENTRIES && !known.contains_key(&key) {
            known.retain(|_, at| now < at.saturating_add(KNOWN_FOR_SECS));
            if known.len() >= KNOWN_ENTRIES {
                let oldest = known
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    known.remove(&oldest);
                }
            }
        }
        known.insert(key, now);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const FLEET: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const STRANGER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const NEWCOMER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn locked(result: Result<bool, Locked>) -> bool {
        matches!(result, Err(Locked { .. }))
    }

    /// A stranger's guesses lock the name for the stranger, not for the
    /// addresses that logged in as it, nor for those that never failed:
    /// those are still checked, and their own failures still count.
    #[test]
    fn a_locked_name_still_lets_its_known_callers_in() {
        let logins = Logins::default();
        assert_eq!(logins.judge_at(FLEET, "fleet", 100, || true), Ok(true));
        for t in 0..5 {
            assert_eq!(
                logins.judge_at(STRANGER, "fleet", 101 + t, || false),
                Ok(false)
            );
        }
        assert!(locked(logins.judge_at(STRANGER, "fleet", 110, || true)));
        assert_eq!(logins.judge_at(NEWCOMER, "fleet", 110, || true), Ok(true));
        assert_eq!(logins.judge_at(FLEET, "fleet", 110, || true), Ok(true));
        // A known address that guesses is locked by its own failures.
        for t in 0..5 {
            assert_eq!(
                logins.judge_at(FLEET, "fleet", 111 + t, || false),
                Ok(false)
            );
        }
        assert!(locked(logins.judge_at(FLEET, "fleet", 120, || true)));
    }

    /// On a locked name, an address that never failed gets one check at a
    /// time, and after a wrong password none until a day has passed: the
    /// guesses of many addresses stay one per address.
    #[test]
    fn a_newcomer_on_a_locked_name_gets_one_guess() {
        let logins = Logins::default();
        for t in 0..5 {
            let _ = logins.judge_at(STRANGER, "fleet", 100 + t, || false);
        }
        let mut inner = Ok(true);
        let outer = logins.judge_at(NEWCOMER, "fleet", 110, || {
            inner = logins.judge_at(NEWCOMER, "fleet", 110, || true);
            false
        });
        assert_eq!(outer, Ok(false));
        assert!(
            locked(inner),
            "a second check while the first runs is refused"
        );
        assert!(locked(logins.judge_at(NEWCOMER, "fleet", 111, || true)));
        assert!(locked(logins.judge_at(STRANGER, "fleet", 111, || true)));
        // A wrong password as another name counts too.
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(logins.judge_at(other, "admin", 112, || false), Ok(false));
        assert!(locked(logins.judge_at(other, "fleet", 113, || true)));
        // Once the name's lock is over, every address is checked again.
        assert_eq!(logins.judge_at(NEWCOMER, "fleet", 170, || true), Ok(true));
        for t in 0..5 {
            let _ = logins.judge_at(STRANGER, "fleet", 200 + t, || false);
        }
        // A newcomer that failed once, a day earlier, is one again.
        let day = 200 + FAILED_FOR_SECS;
        for t in 0..5 {
            let _ = logins.judge_at(STRANGER, "fleet", day + t, || false);
        }
        assert_eq!(logins.judge_at(other, "fleet", day + 10, || true), Ok(true));
    }

    /// A guesser rotating through the addresses of one IPv6 /64 is one
    /// caller: its twentieth wrong password locks the whole block.
    #[test]
    fn an_ipv6_guesser_is_counted_by_its_64() {
        let logins = Logins::default();
        let address = |n: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, n]);
        for n in 0..20 {
            let _ = logins.judge_at(address(n), &format!("user-{n}"), 100, || false);
        }
        assert!(logins
            .judge_at(address(999), "other", 101, || true)
            .is_err());
        let next_block = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert_eq!(logins.judge_at(next_block, "other", 101, || true), Ok(true));
    }

    /// A known caller in a shared /64 is not locked out by a neighbour's
    /// guesses: the address lock counts the block, the known caller its
    /// own failures.
    #[test]
    fn a_known_caller_is_not_locked_by_its_neighbours_in_a_64() {
        let logins = Logins::default();
        let fleet = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x10]);
        let neighbour = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x99]);
        assert_eq!(logins.judge_at(fleet, "fleet", 100, || true), Ok(true));
        for n in 0..20 {
            let _ = logins.judge_at(neighbour, &format!("user-{n}"), 101, || false);
        }
        assert!(logins.judge_at(neighbour, "fleet", 102, || true).is_err());
        assert_eq!(logins.judge_at(fleet, "fleet", 102, || true), Ok(true));
    }

    #[test]
    fn an_address_is_known_for_one_user_only_and_not_for_ever() {
        let logins = Logins::default();
        assert_eq!(logins.judge_at(FLEET, "fleet", 100, || true), Ok(true));
        assert!(logins.is_known("fleet", FLEET, 100 + KNOWN_FOR_SECS - 1));
        assert!(!logins.is_known("fleet", FLEET, 100 + KNOWN_FOR_SECS));
        assert!(!logins.is_known("admin", FLEET, 101));
        for n in 0..KNOWN_ENTRIES + 10 {
            let user = format!("user-{n}");
            logins.remember(&user, STRANGER, 200);
        }
        assert!(logins.known.lock().expect("lock").len() <= KNOWN_ENTRIES);
    }
}
