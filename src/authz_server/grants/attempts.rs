//! Failed password attempts of the password grant and the approval page's
//! login, counted per user and per source (the client, or the address) in
//! fixed windows, to slow down guessing (RFC 6749 §10.7 asks the server to
//! protect the password grant from brute force). The windows, the lock and
//! the checks under way are [`crate::lockout`]'s, as for the gateway's
//! Basic users; this module sets its limits and adds the count shared by
//! replicas.
//!
//! Policy: 5 failures of one user, or 20 of one source, within 60 s lock
//! that user or source until the window ends; while locked, even a right
//! password is refused without being checked, so a lock also caps the
//! Argon2 work an attacker can cause. The source is what the wide lock
//! may hold back without locking out others: the password grant's
//! confidential client, which proved itself with its secret (a client
//! serves many users); a public client's `client_id` proves nothing, so
//! its password grants count per caller address and client id; the
//! approval page's caller address, because the page's `client_id` is
//! anyone's to send. Counted against a client id anyone may send, 20
//! wrong passwords would lock every user of that client out. Addresses are
//! as `trusted_proxies` make them known, an IPv6 one counted by its /64
//! ([`AddressKey`]): its other addresses are the same caller's to use. Unknown usernames are counted
//! like known ones, so a lock does not tell which users exist.
//!
//! Memory stays bounded. A password grant's failure is only recorded for
//! a configured client that is not locked, so each confidential client
//! keeps at most `ENTRIES_PER_CLIENT` counts running, and the counters
//! have room for every configured client's
//! ([`FailedAttempts::for_clients`]). Addresses are anyone's to choose:
//! the counts of the approval page's addresses and of public clients'
//! callers have `ADDRESS_ENTRIES` more. Past the bound, windows that ended
//! are dropped to make room first, then the running one with the fewest
//! failures, a lock last: only failed logins from some hundreds of
//! addresses within a minute reach that far, each of their guesses waits
//! for its turn at Argon2, and the locks they meet stay.
//!
//! A password check under way counts against its user's and its source's
//! locks until it ends ([`FailedAttempts::guarded`]): guesses sent at once
//! are not all let through before the first failure is counted, so no more
//! passwords of one user are checked at a time than the lock has room for.
//! A check that ends without an outcome (a panic) counts as a failure.
//!
//! The counts kept here outlive a change of the server's settings: the
//! server opened for new ones takes over those of the one it replaces
//! ([`FailedAttempts::following`]), so a reload lifts no lock.
//!
//! A store shared by replicas (PostgreSQL) counts failures too, of users,
//! clients and addresses alike, so a lock holds on every replica: a
//! subject is locked when the local count or the store's says so. Failures
//! are always counted locally as well, so an unreachable store never lifts
//! a lock. (Checks under way are counted by each replica alone.)

use std::net::IpAddr;
use std::sync::Arc;

use crate::authz_server::settings::Client;
use crate::authz_server::store::{SharedCounts, TokenStore};
use crate::lockout::{self, AddressKey, Limits, Lockout, Outcome};

/// Where guesses come from, as the wide lock counts them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The confidential client of a password grant (its id), which proved
    /// itself with its secret.
    Client(String),
    /// A public client of a password grant (its id, which anyone may
    /// send), as called from one address.
    PublicClient {
        client_id: String,
        address: AddressKey,
    },
    /// The caller of the approval page.
    Address(AddressKey),
}

impl Source {
    /// The source of a password grant by `client` from `address`: a
    /// public client's own count would be anyone's to fill.
    pub fn of_grant(client: &Client, address: IpAddr) -> Source {
        if client.client_secret.is_some() {
            Source::Client(client.client_id.clone())
        } else {
            Source::PublicClient {
                client_id: client.client_id.clone(),
                address: AddressKey::of(address),
            }
        }
    }
}

/// A user (its name) or a source (a client or an address).
pub type Subject = lockout::Subject<Source>;

/// Failures of one source within a window that lock it.
const SOURCE_FAILURES: u32 = 20;
/// Failures of one user, or of one source, within a window.
const LIMITS: Limits = Limits {
    user: 5,
    client: SOURCE_FAILURES,
    window_secs: 60,
    entries: ENTRIES_PER_CLIENT + ADDRESS_ENTRIES,
};

/// Counts one source keeps running at most: its own, the users whose
/// failures through it still count (a minute spans at most two of its
/// windows, each with at most its limit of failures), and the users whose
/// passwords it has under check (no more than its limit either).
const ENTRIES_PER_CLIENT: usize = 1 + 3 * SOURCE_FAILURES as usize;

/// Room for the counts of the approval page's addresses and their users.
const ADDRESS_ENTRIES: usize = 10_000;

pub struct FailedAttempts {
    local: Lockout<Source>,
    shared: SharedCounts,
}

impl Default for FailedAttempts {
    /// Counts kept here, for one client.
    fn default() -> FailedAttempts {
        FailedAttempts {
            local: Lockout::new(LIMITS),
            shared: SharedCounts::default(),
        }
    }
}

impl std::fmt::Debug for FailedAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedAttempts")
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl FailedAttempts {
    /// Counts kept here and, when `store` shares them, in the store; for
    /// one client until [`FailedAttempts::for_clients`] says how many.
    pub fn shared(store: Arc<dyn TokenStore>) -> FailedAttempts {
        FailedAttempts {
            shared: SharedCounts::of(store),
            ..FailedAttempts::default()
        }
    }

    /// Room for the counts of `clients` configured clients, and of the
    /// approval page's addresses.
    pub fn for_clients(self, clients: usize) -> FailedAttempts {
        let limits = Limits {
            entries: ENTRIES_PER_CLIENT
                .saturating_mul(clients.max(1))
                .saturating_add(ADDRESS_ENTRIES),
            ..LIMITS
        };
        FailedAttempts {
            local: Lockout::new(limits),
            ..self
        }
    }

    /// These counts over the ones kept here by `previous`, the counts of
    /// the server these settings replace: its failures, locks and checks
    /// under way go on counting (the store's shared counts are the
    /// store's either way).
    pub fn following(self, previous: &FailedAttempts) -> FailedAttempts {
        FailedAttempts {
            local: self.local.carrying(&previous.local),
            ..self
        }
    }

    /// `Err(retry_after_secs)` while `subject` is locked.
    pub fn check(&self, subject: &Subject, now: u64) -> Result<(), u64> {
        self.local.check(subject, now).map_err(|l| l.retry_after)?;
        let (limit, window) = (LIMITS.of(subject), LIMITS.window_secs);
        match self.shared.locked(&store_key(subject), limit, window, now) {
            Some(retry_after) => Err(retry_after),
            None => Ok(()),
        }
    }

    pub fn record_failure(&self, subject: &Subject, now: u64) {
        self.record_shared(subject, now);
        self.local.record_failure(subject, now);
    }

    pub fn clear(&self, subject: &Subject) {
        self.clear_shared(subject);
        self.local.forgive(subject);
    }

    /// Checks `username`'s password (`verify`) from `source`, under
    /// their locks: `Err(retry_after_secs)` while either is locked, or
    /// while its failures and its checks under way leave the lock no
    /// room; else whether the password matched, a failure counted for
    /// both or the user's failures cleared.
    pub fn guarded(
        &self,
        source: &Source,
        username: &str,
        now: u64,
        verify: impl FnOnce() -> bool,
    ) -> Result<bool, u64> {
        let wide = Subject::Client(source.clone());
        let user = Subject::user(username);
        for subject in [&wide, &user] {
            self.check(subject, now)?;
        }
        // Counted until the outcome is, so that the lock never lapses.
        let attempt = self
            .local
            .reserve(source, username, None, now)
            .map_err(|l| l.retry_after)?;
        let matched = verify();
        if matched {
            self.clear_shared(&user);
            attempt.end(Outcome::Right, now);
        } else {
            self.record_shared(&wide, now);
            self.record_shared(&user, now);
            attempt.end(Outcome::Wrong, now);
        }
        Ok(matched)
    }

    fn record_shared(&self, subject: &Subject, now: u64) {
        self.shared
            .record(&store_key(subject), LIMITS.window_secs, now);
    }

    fn clear_shared(&self, subject: &Subject) {
        self.shared.clear(&store_key(subject));
    }
}

/// The key of the store's shared counter.
fn store_key(subject: &Subject) -> String {
    match subject {
        Subject::User(name) => format!("user:{name}"),
        Subject::Client(Source::Client(id)) => format!("client:{id}"),
        // An address holds no `@`: the last one ends the id.
        Subject::Client(Source::PublicClient { client_id, address }) => {
            format!("public-client:{client_id}@{address}")
        }
        Subject::Client(Source::Address(ip)) => format!("address:{ip}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn app(client_id: &str) -> Source {
        Source::Client(client_id.into())
    }

    fn address(last: u8) -> Source {
        Source::Address(AddressKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))))
    }

    #[test]
    fn five_failures_lock_a_user_until_the_window_ends() {
        let attempts = FailedAttempts::default();
        let alice = Subject::User("alice".into());
        for t in 0..5 {
            assert_eq!(attempts.check(&alice, 100 + t), Ok(()));
            attempts.record_failure(&alice, 100 + t);
        }
        assert_eq!(attempts.check(&alice, 110), Err(50));
        assert_eq!(attempts.check(&Subject::User("bob".into()), 110), Ok(()));
        assert_eq!(attempts.check(&alice, 160), Ok(()));
        attempts.record_failure(&alice, 160);
        assert_eq!(attempts.check(&alice, 161), Ok(()));
        attempts.clear(&alice);
    }

    #[test]
    fn a_client_has_a_higher_limit() {
        let attempts = FailedAttempts::default();
        for n in 0..19 {
            let user = format!("user-{n}");
            assert_eq!(attempts.guarded(&app("app"), &user, 0, || false), Ok(false));
        }
        assert_eq!(attempts.check(&Subject::Client(app("app")), 1), Ok(()));
        assert_eq!(attempts.guarded(&app("app"), "bob", 1, || false), Ok(false));
        assert_eq!(attempts.guarded(&app("app"), "carol", 1, || true), Err(59));
        assert_eq!(
            attempts.guarded(&app("other"), "carol", 1, || true),
            Ok(true)
        );
    }

    #[test]
    fn a_locked_user_is_refused_unchecked_and_a_right_password_forgives() {
        let attempts = FailedAttempts::default();
        for _ in 0..4 {
            assert_eq!(
                attempts.guarded(&app("app"), "alice", 0, || false),
                Ok(false)
            );
        }
        assert_eq!(attempts.guarded(&app("app"), "alice", 0, || true), Ok(true));
        for _ in 0..5 {
            assert_eq!(
                attempts.guarded(&app("app"), "alice", 1, || false),
                Ok(false)
            );
        }
        let checked = std::cell::Cell::new(false);
        let refused = attempts.guarded(&app("app"), "alice", 2, || {
            checked.set(true);
            true
        });
        assert_eq!(refused, Err(59));
        assert!(!checked.get(), "a locked user's password is not checked");
    }

    /// Every configured client failing as often as it may, with as many
    /// users as it may, drops no running count: a user's early failures
    /// still lock it.
    #[test]
    fn the_counters_have_room_for_every_configured_client() {
        let clients = ["a", "b", "c", "d"];
        let attempts = FailedAttempts::default().for_clients(clients.len());
        for _ in 0..4 {
            assert_eq!(attempts.guarded(&app("a"), "alice", 0, || false), Ok(false));
        }
        for (c, client) in clients.iter().enumerate() {
            let others = if c == 0 { 15 } else { 20 };
            for n in 0..others {
                let user = format!("{client}-user-{n}");
                assert_eq!(
                    attempts.guarded(&app(client), &user, 1, || false),
                    Ok(false)
                );
            }
        }
        assert_eq!(attempts.guarded(&app("a"), "alice", 2, || false), Ok(false));
        assert_eq!(attempts.check(&Subject::User("alice".into()), 3), Err(57));
    }

    /// The approval page counts its caller's address in the client's
    /// stead: 20 wrong logins lock that address, not the client whose id
    /// they named, nor another address.
    #[test]
    fn an_address_has_the_wide_limit_and_locks_no_client() {
        let attempts = FailedAttempts::default();
        for n in 0..20 {
            let user = format!("user-{n}");
            assert_eq!(attempts.guarded(&address(1), &user, 0, || false), Ok(false));
        }
        assert_eq!(attempts.guarded(&address(1), "alice", 1, || true), Err(59));
        assert_eq!(attempts.guarded(&address(2), "alice", 1, || true), Ok(true));
        assert_eq!(attempts.check(&Subject::Client(app("spa")), 1), Ok(()));
    }

    /// A public client's id proves nothing: its password grants count
    /// per caller address, and 20 failures from one address lock neither
    /// the client elsewhere nor its users.
    #[test]
    fn a_public_client_is_counted_per_address() {
        let attempts = FailedAttempts::default();
        let spa = |last: u8| Source::PublicClient {
            client_id: "spa".into(),
            address: AddressKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))),
        };
        for n in 0..20 {
            let user = format!("user-{n}");
            assert_eq!(attempts.guarded(&spa(1), &user, 0, || false), Ok(false));
        }
        assert_eq!(attempts.guarded(&spa(1), "alice", 1, || true), Err(59));
        assert_eq!(attempts.guarded(&spa(2), "alice", 1, || true), Ok(true));
        assert_eq!(attempts.check(&Subject::Client(app("spa")), 1), Ok(()));
    }

    /// Addresses of one IPv6 /64 are one caller to the wide lock, at the
    /// approval page and through a public client alike.
    #[test]
    fn an_ipv6_64_is_one_address() {
        let attempts = FailedAttempts::default();
        let at = |n: u16| -> IpAddr { format!("2001:db8:0:7:{n:x}::1").parse().expect("address") };
        for n in 0..20u16 {
            let user = format!("user-{n}");
            let source = Source::Address(AddressKey::of(at(n)));
            assert_eq!(attempts.guarded(&source, &user, 0, || false), Ok(false));
        }
        let rotated = Source::Address(AddressKey::of(at(99)));
        assert_eq!(attempts.guarded(&rotated, "alice", 1, || true), Err(59));
        let spa = Client {
            name: "spa".into(),
            client_id: "spa".into(),
            client_secret: None,
            redirect_uris: vec![],
            grant_types: vec![],
            scopes: vec![],
            token_lifetime: None,
            refresh_limit: 0,
            refresh_reuse_interval: std::time::Duration::ZERO,
            introspect: false,
        };
        for n in 0..20u16 {
            let user = format!("user-{n}");
            let source = Source::of_grant(&spa, at(n));
            assert_eq!(attempts.guarded(&source, &user, 2, || false), Ok(false));
        }
        let rotated = Source::of_grant(&spa, at(99));
        assert_eq!(attempts.guarded(&rotated, "bob", 3, || true), Err(59));
    }

    /// A user's failures count the same from any source.
    #[test]
    fn a_user_is_counted_across_sources() {
        let attempts = FailedAttempts::default();
        for _ in 0..3 {
            assert_eq!(
                attempts.guarded(&app("app"), "alice", 0, || false),
                Ok(false)
            );
        }
        for last in [1, 2] {
            assert_eq!(
                attempts.guarded(&address(last), "alice", 0, || false),
                Ok(false)
            );
        }
        assert_eq!(attempts.guarded(&address(3), "alice", 1, || true), Err(59));
        assert_eq!(
            attempts.guarded(&app("other"), "alice", 1, || true),
            Err(59)
        );
    }

    #[test]
    fn the_stores_keys_name_their_kind() {
        assert_eq!(store_key(&Subject::user("alice")), "user:alice");
        let long = store_key(&Subject::user(&"a".repeat(60_000)));
        assert!(
            long.starts_with("user:sha256:") && long.len() < 64,
            "{long}"
        );
        assert_eq!(store_key(&Subject::Client(app("app"))), "client:app");
        assert_eq!(store_key(&Subject::Client(address(7))), "address:192.0.2.7");
        let v6 = AddressKey::of("2001:db8::1".parse().expect("address"));
        assert_eq!(
            store_key(&Subject::Client(Source::Address(v6))),
            "address:2001:db8::/64"
        );
        let public = Source::PublicClient {
            client_id: "spa@x".into(),
            address: v6,
        };
        assert_eq!(
            store_key(&Subject::Client(public)),
            "public-client:spa@x@2001:db8::/64"
        );
    }
}
