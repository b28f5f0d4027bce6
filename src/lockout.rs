//! Failed password attempts, counted per user and per client in fixed
//! windows, and the lock they put on either: the one mechanism behind the
//! gateway's Basic users (`proxy::identify`, a client is an address), the
//! authorization server's password logins
//! (`authz_server::grants::attempts`, a client is an OAuth client id, or
//! the approval page's caller address) and
//! its client authentications (`authz_server::client_auth`, a client is
//! an address, and no user is counted). Each configures it with its
//! [`Limits`]; this module imports none of them.
//!
//! - A subject that reaches its limit of failures within a window is
//!   locked until the window ends. A window starts with the first attempt
//!   after the last one ended.
//! - While locked, even a right password is refused without being
//!   checked ([`Lockout::check`] before anything else, [`Lockout::reserve`]
//!   before a check): a guess that hits is worth nothing, and a lock caps
//!   the work (Argon2) an attacker can cause.
//! - A check takes an attempt of its client's and its user's counters
//!   before it starts, and counts as a failure of both until its outcome
//!   is known: guesses sent at once are checked no further than the lock
//!   has room for, however long each check takes. Requests with a
//!   credential already being checked may share its attempt (its caller
//!   checks it once for all of them).
//! - An attempt dropped without an outcome (the request gone while its
//!   check runs) is a failure: its answer is unknown.
//! - A right password forgives its user's failures, not its client's: a
//!   client serves many users.
//! - Memory stays bounded: at most [`Limits::entries`] subjects are kept;
//!   past it, windows that ended are dropped first, then the running
//!   one with the fewest failures and checks under way, a locked one
//!   last, so that a flood of new subjects does not lift the locks (a
//!   caller whose subjects are bounded otherwise sizes it so that no
//!   running window is ever dropped).
//! - A caller that is rebuilt (new settings) hands its counters to the
//!   one that replaces it ([`Lockout::carrying`]): the two count into the
//!   same windows, so no lock is lifted and no check under way is lost.
//!
//! - A caller's address is counted as its [`AddressKey`]: an IPv6 caller
//!   by its /64, which one subscriber gets whole and may rotate through.
//!   A user name longer than [`USER_NAME_KEPT`] is counted by its digest
//!   ([`Subject::user`]), so the bound on subjects bounds their bytes too.
//!
//! It counts in this process, on the clock its callers read; a count
//! shared by replicas is a layer its caller adds on top.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The address a lock counts a caller by. An IPv4 address is itself (an
/// IPv4-mapped IPv6 address too: it is the same caller); an IPv6 address
/// counts by its /64 prefix, the block a single subscriber or host is
/// given (RFC 6177 §2, RFC 7421 §1), whose 2^64 addresses a guesser may
/// rotate through at no cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl From<AddressKey> for IpAddr {
    /// The address itself (IPv4), or the first of its /64 (IPv6).
    fn from(key: AddressKey) -> IpAddr {
        key.0
    }
}

impl AddressKey {
    pub fn of(address: IpAddr) -> AddressKey {
        match address {
            IpAddr::V4(v4) => AddressKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !u128::from(u64::MAX);
                    AddressKey(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for AddressKey {
    /// `192.0.2.1`, `2001:db8::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// What locks a subject, and how many subjects are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures of one user within a window that lock it.
    pub user: u32,
    /// Failures of one client within a window that lock it.
    pub client: u32,
    pub window_secs: u64,
    /// Subjects kept at most.
    pub entries: usize,
}

impl Limits {
    /// The failures that lock `subject`.
    pub fn of<C>(&self, subject: &Subject<C>) -> u32 {
        match subject {
            Subject::User(_) => self.user,
            Subject::Client(_) => self.client,
        }
    }
}

/// Whom failures count against: the user a password is for, or the client
/// it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject<C> {
    /// A user name as counted ([`Subject::user`]).
    User(String),
    Client(C),
}

/// User names up to this length are counted as they are.
pub const USER_NAME_KEPT: usize = 128;

impl<C> Subject<C> {
    /// The user `name`: itself, or past [`USER_NAME_KEPT`] bytes its
    /// SHA-256. Any caller may send a name the size of a request, and as
    /// many as the subjects kept: as digests they stay small. (A name
    /// spelt like a digest shares its count, which locks no one that
    /// name itself could not.)
    pub fn user(name: &str) -> Subject<C> {
        Subject::User(kept_name(name))
    }
}

/// A user `name` as a count keeps it: itself, or past [`USER_NAME_KEPT`]
/// bytes its SHA-256 (see [`Subject::user`]).
pub fn kept_name(name: &str) -> String {
    if name.len() <= USER_NAME_KEPT {
        return name.to_owned();
    }
    let digest = URL_SAFE_NO_PAD.encode(Sha256::digest(name.as_bytes()));
    format!("sha256:{digest}")
}

/// Refused without a check: the client or the user is locked, or the
/// checks under way fill what its lock has room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed attempts; retry after {retry_after}s")]
pub struct Locked {
    pub retry_after: u64,
}

/// How the check of an [`Attempt`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The password is right: its user's failures are forgiven.
    Right,
    Wrong,
    /// No answer (no worker to check it, or the check failed): counts as
    /// nothing.
    Unchecked,
}

/// The counters of one kind of login.
#[derive(Debug)]
pub struct Lockout<C> {
    limits: Limits,
    /// Shared with the lockout this one replaced or is replaced by.
    windows: Arc<Mutex<HashMap<Subject<C>, Window>>>,
}

#[derive(Debug, Clone)]
struct Window {
    started: u64,
    failures: u32,
    /// Checks under way of credentials that requests share (a digest), and
    /// how many requests wait for each; each check is a failure until its
    /// outcome is known.
    credentials: HashMap<[u8; 32], u32>,
    /// Checks under way that nobody shares.
    alone: u32,
}

impl<C: Clone + Eq + Hash> Lockout<C> {
    pub fn new(limits: Limits) -> Lockout<C> {
        Lockout {
            limits,
            windows: Arc::default(),
        }
    }

    /// This lockout's limits over `previous`'s counters, for the caller
    /// rebuilt to replace `previous`'s: the failures counted, the locks
    /// and the checks under way carry over, and both count into the same
    /// windows from then on (a check `previous` began ends there). The
    /// limits lock alike; only the subjects kept may differ: past a
    /// smaller bound, new subjects make room as ever, and what it
    /// still holds beyond goes as its windows end.
    pub fn carrying(self, previous: &Lockout<C>) -> Lockout<C> {
        Lockout {
            limits: self.limits,
            windows: Arc::clone(&previous.windows),
        }
    }

    /// Refused while `subject` has failed its limit in the window running
    /// at `now`.
    pub fn check(&self, subject: &Subject<C>, now: u64) -> Result<(), Locked> {
        match self.lock().get(subject) {
            Some(window) => window.unlocked(self.limits.of(subject), self.limits, now),
            None => Ok(()),
        }
    }

    /// Takes one attempt of `client`'s and of `user`'s counters for a
    /// check of a password, or none: refused while either is locked, or
    /// while its failures and its checks under way reach its limit. With
    /// a `credential` (a digest of user and password) already being
    /// checked, the attempt joins that check instead of taking one more;
    /// without one, it is a check of its own.
    pub fn reserve(
        &self,
        client: &C,
        user: &str,
        credential: Option<[u8; 32]>,
        now: u64,
    ) -> Result<Attempt<'_, C>, Locked> {
        let subjects = [Subject::Client(client.clone()), Subject::user(user)];
        let mut windows = self.lock();
        for subject in &subjects {
            if let Some(window) = windows.get(subject) {
                window.room(self.limits.of(subject), self.limits, credential, now)?;
            }
        }
        for subject in &subjects {
            let window = running(&mut windows, subject, self.limits, now);
            match credential {
                Some(key) => *window.credentials.entry(key).or_insert(0) += 1,
                None => window.alone += 1,
            }
        }
        Ok(Attempt {
            lockout: self,
            subjects,
            credential,
            taken: (now, system_now()),
            ended: false,
        })
    }

    /// Counts a failure of `subject` that no attempt was taken for.
    pub fn record_failure(&self, subject: &Subject<C>, now: u64) {
        let mut windows = self.lock();
        let window = running(&mut windows, subject, self.limits, now);
        window.failures = window.failures.saturating_add(1);
    }

    /// Forgets `subject`'s failures (its checks under way still count).
    pub fn forgive(&self, subject: &Subject<C>) {
        let mut windows = self.lock();
        if let Some(window) = windows.get_mut(subject) {
            window.failures = 0;
            if window.is_idle() {
                windows.remove(subject);
            }
        }
    }

    /// Ends the checks of `attempt` with `outcome`, counted at `now`.
    fn settle(&self, attempt: &Attempt<'_, C>, outcome: Outcome, now: u64) {
        let mut windows = self.lock();
        for subject in &attempt.subjects {
            let window = running(&mut windows, subject, self.limits, now);
            match attempt.credential {
                Some(key) => {
                    if let Some(waiting) = window.credentials.get_mut(&key) {
                        *waiting -= 1;
                        if *waiting == 0 {
                            window.credentials.remove(&key);
                        }
                    }
                }
                None => window.alone = window.alone.saturating_sub(1),
            }
            match outcome {
                Outcome::Wrong => window.failures = window.failures.saturating_add(1),
                Outcome::Right if matches!(subject, Subject::User(_)) => window.failures = 0,
                Outcome::Right | Outcome::Unchecked => {}
            }
            if window.is_idle() {
                windows.remove(subject);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Subject<C>, Window>> {
        // Counters stay meaningful after a panic elsewhere.
        self.windows
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Window {
    fn new(now: u64) -> Window {
        Window {
            started: now,
            failures: 0,
            credentials: HashMap::new(),
            alone: 0,
        }
    }

    /// Past its end, or started after `now`: the clock stepped back (or
    /// a caller's clock runs behind another's), and a window that would
    /// last until the clock caught up ends instead.
    fn ended(&self, limits: Limits, now: u64) -> bool {
        now >= self.started.saturating_add(limits.window_secs) || now < self.started
    }

    /// The failures counted in the window running at `now`.
    fn failures_at(&self, limits: Limits, now: u64) -> u32 {
        if self.ended(limits, now) {
            0
        } else {
            self.failures
        }
    }

    fn under_way(&self) -> u32 {
        let credentials = u32::try_from(self.credentials.len()).unwrap_or(u32::MAX);
        credentials.saturating_add(self.alone)
    }

    fn is_idle(&self) -> bool {
        self.failures == 0 && self.under_way() == 0
    }

    /// Refused while the failures at `now` reach `limit`, until the
    /// window ends (at least a second).
    fn unlocked(&self, limit: u32, limits: Limits, now: u64) -> Result<(), Locked> {
        if self.failures_at(limits, now) < limit {
            return Ok(());
        }
        let ends = self.started.saturating_add(limits.window_secs);
        Err(Locked {
            retry_after: ends.saturating_sub(now).max(1),
        })
    }

    /// Refused while locked, or while the failures and the checks under
    /// way leave no room for another check of `credential`.
    fn room(
        &self,
        limit: u32,
        limits: Limits,
        credential: Option<[u8; 32]>,
        now: u64,
    ) -> Result<(), Locked> {
        self.unlocked(limit, limits, now)?;
        let joins = credential.is_some_and(|key| self.credentials.contains_key(&key));
        let taken = self
            .failures_at(limits, now)
            .saturating_add(self.under_way());
        if !joins && taken >= limit {
            // Checks under way end within moments; failures, with the window.
            return Err(Locked { retry_after: 1 });
        }
        Ok(())
    }
}

/// The window of `subject` running at `now`, a new one when its own has
/// ended (its checks under way kept); at most `limits.entries` are kept,
/// the ended ones dropped first, then the one furthest from a lock.
fn running<'a, C: Clone + Eq + Hash>(
    windows: &'a mut HashMap<Subject<C>, Window>,
    subject: &Subject<C>,
    limits: Limits,
    now: u64,
) -> &'a mut Window {
    if windows.len() >= limits.entries && !windows.contains_key(subject) {
        windows.retain(|_, w| w.under_way() > 0 || !w.ended(limits, now));
        if windows.len() >= limits.entries {
            // A flood of new subjects must not lift the locks it is
            // meant to make way around: a lock goes last, and before it
            // the windows with the fewest failures and checks, the oldest
            // of those. A sixteenth of them at once, so that a flood
            // pays for the look over all of them once per that many new
            // subjects, not for each.
            let mut order: Vec<_> = windows
                .iter()
                .map(|(s, w)| {
                    let locked = w.unlocked(limits.of(s), limits, now).is_err();
                    let taken = w.failures_at(limits, now).saturating_add(w.under_way());
                    ((locked, taken, w.started), s.clone())
                })
                .collect();
            let going = (windows.len() / 16).max(1);
            order.select_nth_unstable_by(going - 1, |a, b| a.0.cmp(&b.0));
            for (_, subject) in order.drain(..going) {
                windows.remove(&subject);
            }
        }
    }
    let window = windows
        .entry(subject.clone())
        .or_insert_with(|| Window::new(now));
    if window.ended(limits, now) {
        window.started = now;
        window.failures = 0;
    }
    window
}

/// An attempt taken of a client's and a user's counters while its check
/// runs ([`Lockout::reserve`]), ended with the check's [`Outcome`].
/// Dropped without one, it counts as a failure, when it is dropped: its
/// answer is unknown.
pub struct Attempt<'a, C: Clone + Eq + Hash> {
    lockout: &'a Lockout<C>,
    subjects: [Subject<C>; 2],
    credential: Option<[u8; 32]>,
    /// When it was taken, on its caller's clock and on the system's.
    taken: (u64, u64),
    ended: bool,
}

impl<C: Clone + Eq + Hash> Attempt<'_, C> {
    /// Ends the check with `outcome`, counted at `now`.
    pub fn end(mut self, outcome: Outcome, now: u64) {
        self.ended = true;
        self.lockout.settle(&self, outcome, now);
    }
}

impl<C: Clone + Eq + Hash> Drop for Attempt<'_, C> {
    fn drop(&mut self) {
        if !self.ended {
            // On its caller's clock, which may run ahead of the system's.
            let (taken, system) = self.taken;
            let now = taken.saturating_add(system_now().saturating_sub(system));
            self.lockout.settle(self, Outcome::Wrong, now);
        }
    }
}

/// Seconds since the Unix epoch, the clock a caller without its own
/// counts on: read once, then carried on by the monotonic clock, so that
/// a step of the system's clock moves no window.
pub fn system_now() -> u64 {
    static START: LazyLock<(Instant, u64)> = LazyLock::new(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (Instant::now(), wall)
    });
    START.1.saturating_add(START.0.elapsed().as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(address: &str) -> AddressKey {
        AddressKey::of(address.parse().expect("address"))
    }

    #[test]
    fn an_ipv6_caller_counts_by_its_64_prefix_an_ipv4_one_by_its_address() {
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("192.0.2.1").to_string(), "192.0.2.1");
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
        assert_ne!(key("::ffff:192.0.2.1"), key("::ffff:192.0.2.2"));
    }

    const LIMITS: Limits = Limits {
        user: 5,
        client: 20,
        window_secs: 60,
        entries: 1000,
    };

    fn lockout() -> Lockout<&'static str> {
        Lockout::new(LIMITS)
    }

    fn alice() -> Subject<&'static str> {
        Subject::User("alice".into())
    }

    /// A credential's digest.
    fn guess(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn fail(lockout: &Lockout<&'static str>, client: &'static str, user: &str, now: u64) {
        let attempt = lockout.reserve(&client, user, None, now).expect("room");
        attempt.end(Outcome::Wrong, now);
    }

    #[test]
    fn failures_up_to_its_limit_lock_a_user() {
        let lockout = lockout();
        for t in 0..5 {
            assert_eq!(lockout.check(&alice(), 100 + t), Ok(()));
            fail(&lockout, "app", "alice", 100 + t);
        }
        assert_eq!(
            lockout.check(&alice(), 110),
            Err(Locked { retry_after: 50 })
        );
        assert_eq!(
            lockout.reserve(&"app", "alice", None, 110).err(),
            Some(Locked { retry_after: 50 })
        );
        // Neither the client nor another user of it is locked.
        assert_eq!(lockout.check(&Subject::Client("app"), 110), Ok(()));
        fail(&lockout, "app", "bob", 110);
    }

    #[test]
    fn failures_up_to_its_higher_limit_lock_a_client_for_all_its_users() {
        let lockout = lockout();
        for n in 0..20 {
            assert_eq!(lockout.check(&Subject::Client("app"), 0), Ok(()));
            fail(&lockout, "app", &format!("user-{n}"), 0);
        }
        assert_eq!(
            lockout.check(&Subject::Client("app"), 1),
            Err(Locked { retry_after: 59 })
        );
        assert!(lockout.reserve(&"app", "bob", None, 1).is_err());
        assert!(lockout.reserve(&"other", "bob", None, 1).is_ok());
    }

    #[test]
    fn the_lock_ends_with_its_window() {
        let lockout = lockout();
        for _ in 0..5 {
            fail(&lockout, "app", "alice", 100);
        }
        assert!(lockout.check(&alice(), 159).is_err());
        assert_eq!(lockout.check(&alice(), 160), Ok(()));
        // A new window, counted from its first failure.
        fail(&lockout, "app", "alice", 160);
        assert_eq!(lockout.check(&alice(), 161), Ok(()));
        for _ in 0..4 {
            fail(&lockout, "app", "alice", 170);
        }
        assert_eq!(
            lockout.check(&alice(), 170),
            Err(Locked { retry_after: 50 })
        );
    }

    /// A clock that went back (or a caller's behind the one that counted)
    /// ends the window rather than making it last until the clock is back.
    #[test]
    fn a_window_from_a_later_time_has_ended() {
        let lockout = lockout();
        for _ in 0..5 {
            fail(&lockout, "app", "alice", 3_700);
        }
        assert!(lockout.check(&alice(), 3_701).is_err());
        assert_eq!(lockout.check(&alice(), 100), Ok(()), "an hour back");
        fail(&lockout, "app", "alice", 100);
        assert_eq!(lockout.check(&alice(), 101), Ok(()), "a new window");
    }

    #[test]
    fn a_right_password_is_refused_unchecked_while_locked() {
        let lockout = lockout();
        // The right password is being checked when the lock falls.
        let right = lockout
            .reserve(&"app", "alice", Some(guess(0)), 100)
            .expect("room");
        for n in 1..5 {
            lockout
                .reserve(&"app", "alice", Some(guess(n)), 100)
                .expect("room")
                .end(Outcome::Wrong, 100);
        }
        // Four failures and the check under way fill the lock; a failure
        // counted without an attempt locks it.
        lockout.record_failure(&alice(), 100);
        // Locked: neither checked nor joined to the check under way, even
        // for a credential once found right (its caller checks first).
        assert!(lockout.check(&alice(), 101).is_err());
        assert_eq!(
            lockout.reserve(&"app", "alice", Some(guess(0)), 101).err(),
            Some(Locked { retry_after: 59 })
        );
        // A right answer forgives the user, not its client.
        right.end(Outcome::Right, 101);
        assert_eq!(lockout.check(&alice(), 101), Ok(()));
        assert_eq!(lockout.lock()[&Subject::Client("app")].failures, 4);
    }

    /// A lockout rebuilt with a new bound on subjects keeps the locks,
    /// the failures and the checks under way of the one it replaces, and
    /// a check begun there ends in the counts of both.
    #[test]
    fn a_lockout_carrying_anothers_counters_keeps_its_locks() {
        let previous = lockout();
        for _ in 0..5 {
            fail(&previous, "app", "alice", 100);
        }
        fail(&previous, "app", "bob", 100);
        let under_way = previous.reserve(&"app", "bob", None, 101).expect("room");
        let next = Lockout::new(Limits {
            entries: 10,
            ..LIMITS
        })
        .carrying(&previous);
        assert_eq!(next.limits.entries, 10);
        assert_eq!(next.check(&alice(), 110), Err(Locked { retry_after: 50 }));
        under_way.end(Outcome::Wrong, 102);
        for _ in 0..3 {
            fail(&next, "app", "bob", 103);
        }
        let bob = Subject::User("bob".into());
        assert_eq!(next.check(&bob, 110), Err(Locked { retry_after: 50 }));
        assert_eq!(previous.check(&bob, 110), Err(Locked { retry_after: 50 }));
        assert_eq!(next.check(&alice(), 160), Ok(()));
    }

    #[test]
    fn checks_under_way_count_against_the_limit_until_they_end() {
        let lockout = lockout();
        fail(&lockout, "app", "alice", 0);
        fail(&lockout, "app", "alice", 0);
        // Two failures and three checks under way fill alice's lock.
        let under_way: Vec<_> = (0..3)
            .map(|n| {
                lockout
                    .reserve(&"app", "alice", Some(guess(n)), 1)
                    .expect("room")
            })
            .collect();
        assert_eq!(
            lockout.reserve(&"app", "alice", Some(guess(9)), 1).err(),
            Some(Locked { retry_after: 1 })
        );
        assert!(lockout.reserve(&"app", "alice", None, 1).is_err());
        // A credential being checked already is no further guess.
        let joined = lockout
            .reserve(&"app", "alice", Some(guess(0)), 1)
            .expect("joins");
        // Another user of the same client is not held back.
        lockout
            .reserve(&"app", "bob", None, 1)
            .expect("bob")
            .end(Outcome::Right, 1);
        joined.end(Outcome::Wrong, 2);
        for attempt in under_way {
            attempt.end(Outcome::Unchecked, 2);
        }
        assert_eq!(lockout.lock()[&alice()].failures, 3);
        assert!(lockout.lock()[&alice()].credentials.is_empty());
        // No answer counts as nothing: room for two more.
        fail(&lockout, "app", "alice", 3);
        fail(&lockout, "app", "alice", 3);
        assert!(lockout.check(&alice(), 3).is_err());
    }

    #[test]
    fn checks_under_way_count_against_the_clients_limit_too() {
        let lockout = lockout();
        let under_way: Vec<_> = (0..20)
            .map(|n| {
                lockout
                    .reserve(&"app", &format!("user-{n}"), None, 0)
                    .expect("room")
            })
            .collect();
        assert_eq!(
            lockout.reserve(&"app", "bob", None, 0).err(),
            Some(Locked { retry_after: 1 })
        );
        for attempt in under_way {
            attempt.end(Outcome::Right, 0);
        }
        assert!(lockout.lock().is_empty(), "nothing kept");
    }

    #[test]
    fn an_attempt_dropped_before_its_outcome_is_a_failure() {
        let lockout = lockout();
        drop(
            lockout
                .reserve(&"app", "alice", Some(guess(0)), 100)
                .expect("room"),
        );
        drop(lockout.reserve(&"app", "alice", None, 100).expect("room"));
        for subject in [alice(), Subject::Client("app")] {
            let window = &lockout.lock()[&subject];
            assert_eq!(window.failures, 2);
            assert_eq!(window.under_way(), 0);
        }
    }

    #[test]
    fn subjects_kept_stay_within_the_bound() {
        let lockout = Lockout::new(Limits {
            entries: 100,
            ..LIMITS
        });
        for n in 0..500u32 {
            let client = n.to_string();
            let attempt = lockout
                .reserve(&client, &format!("user-{n}"), None, 0)
                .expect("room");
            attempt.end(Outcome::Wrong, 0);
            assert!(lockout.lock().len() <= 100);
        }
    }

    #[test]
    fn windows_that_ended_make_room_before_a_running_one_is_dropped() {
        let lockout = Lockout::new(Limits {
            entries: 10,
            ..LIMITS
        });
        let slow = lockout.reserve(&"app", "slow", None, 0).expect("room");
        for n in 0..8 {
            fail(&lockout, "app", &format!("user-{n}"), 0);
        }
        assert_eq!(lockout.lock().len(), 10);
        // Full when those windows have ended: all of them make room, but
        // for those with a check under way.
        for _ in 0..5 {
            fail(&lockout, "other", "bob", 60);
        }
        assert_eq!(lockout.lock().len(), 4);
        assert_eq!(lockout.lock()[&Subject::User("slow".into())].alone, 1);
        slow.end(Outcome::Wrong, 61);
        for n in 0..5 {
            fail(&lockout, "third", &format!("late-{n}"), 61);
        }
        assert_eq!(lockout.lock().len(), 10);
        assert!(lockout.check(&Subject::User("bob".into()), 61).is_err());
        // Full of windows still running, one with a single failure goes
        // (there are seven): bob's lock and other's five stay.
        fail(&lockout, "third", "last", 61);
        let windows = lockout.lock();
        assert_eq!(windows.len(), 10);
        assert_eq!(windows.values().filter(|w| w.started == 60).count(), 2);
        assert_eq!(windows.values().filter(|w| w.failures == 1).count(), 7);
    }

    /// Full of running windows, a new subject makes room for a sixteenth
    /// of them at once (the least failed first, never a lock before
    /// them): the next new subjects find room without looking again.
    #[test]
    fn room_is_made_for_a_sixteenth_at_once() {
        let lockout = Lockout::new(Limits {
            entries: 64,
            ..LIMITS
        });
        for _ in 0..5 {
            fail(&lockout, "app", "bob", 0);
        }
        // Each failure counts for its client and its user: one client,
        // many users, then one user a time with clients of their own.
        let client = |n: usize| -> &'static str { Box::leak(format!("c{n}").into_boxed_str()) };
        let mut n = 0;
        while lockout.lock().len() < 64 {
            let attempt = lockout.reserve(&client(n), "bob", None, 0);
            assert!(attempt.is_err(), "bob is locked, and counted alone");
            lockout.record_failure(&Subject::Client(client(n)), 0);
            n += 1;
        }
        lockout.record_failure(&Subject::Client(client(1000)), 1);
        assert_eq!(lockout.lock().len(), 64 - 4 + 1);
        for i in 1..4 {
            lockout.record_failure(&Subject::Client(client(1000 + i)), 1);
        }
        assert_eq!(lockout.lock().len(), 64, "no look until full again");
        assert!(lockout.check(&Subject::User("bob".into()), 1).is_err());
    }

    /// Names the size of a request, as many as the subjects kept: what is
    /// kept of each is a digest, which locks like the name.
    #[test]
    fn a_long_user_name_is_kept_small_and_locks_like_any_other() {
        let lockout = lockout();
        let long = |c: char| c.to_string().repeat(60_000);
        for _ in 0..5 {
            fail(&lockout, "app", &long('a'), 0);
        }
        assert!(lockout.reserve(&"app", &long('a'), None, 1).is_err());
        assert!(lockout.reserve(&"app", &long('b'), None, 1).is_ok());
        let windows = lockout.lock();
        for subject in windows.keys() {
            if let Subject::User(name) = subject {
                assert!(name.len() <= USER_NAME_KEPT, "{} bytes kept", name.len());
            }
        }
        let short = "x".repeat(USER_NAME_KEPT);
        assert_eq!(Subject::<&str>::user(&short), Subject::User(short.clone()));
        assert!(windows.contains_key(&Subject::user(&long('a'))));
    }

    /// Failures of ever new users, from ever new clients, fill the
    /// subjects kept: the windows they push out are each other's, never
    /// a lock, nor a count on its way to one before a lone failure.
    #[test]
    fn a_flood_of_new_subjects_does_not_lift_a_lock() {
        let lockout: Lockout<String> = Lockout::new(Limits {
            entries: 10,
            ..LIMITS
        });
        let fail = |client: &str, user: &str, now: u64| {
            let attempt = lockout.reserve(&client.to_owned(), user, None, now);
            attempt.expect("room").end(Outcome::Wrong, now);
        };
        for _ in 0..5 {
            fail("app", "alice", 100);
        }
        for _ in 0..3 {
            fail("app", "bob", 101);
        }
        for n in 0..500 {
            fail(&format!("x-{n}"), &format!("user-{n}"), 102 + n / 100);
        }
        assert_eq!(
            lockout.check(&Subject::User("alice".into()), 110),
            Err(Locked { retry_after: 50 })
        );
        let windows = lockout.lock();
        assert_eq!(windows.len(), 10);
        assert_eq!(windows[&Subject::User("bob".into())].failures, 3);
        assert_eq!(windows[&Subject::Client("app".into())].failures, 8);
    }
}
