//! Browser sessions of the approval page: in this process's memory, or in
//! the token store when replicas share it.
//!
//! A session is a random id (256 bits) in the `mcgw_session` cookie; what
//! is kept, under the id's SHA-256 (never the id), is its CSRF token, the
//! user who logged in on it with a fingerprint of their credential (never
//! the password), and when it expires ([`LIFETIME_SECS`] from creation).
//! An expired session is never accepted, and is deleted when looked up.
//! A session is signed in only while its user's credential is the one
//! configured ([`Current::user`]): a changed password or a removed user
//! ends the sign-in on every replica at once, not at expiry. Logging in starts a new session (new id, new CSRF token) and
//! deletes the old one in the same step, so an id planted before login is
//! worth nothing after it, on every replica. A consent form (Allow or
//! Deny) spends the CSRF token it carries ([`Sessions::spend_csrf`]): the
//! session goes on with a new one, so each form rendered is taken once,
//! and posted again it is refused as a stale form is. Nothing more is
//! remembered for it than the session's one token.
//!
//! Where they live: with a store shared by replicas (PostgreSQL, the store
//! that shares failed-attempt counts) sessions are rows of the store, so a
//! browser's login may reach one replica and its consent another; they
//! outlive a restart or a change of settings. Otherwise they are in memory,
//! per process, and lost on restart, which only means logging in again;
//! a change of the authorization server's settings keeps them, and the
//! per-address count of sessions started, for the server it opens
//! ([`Sessions::following`]): a session holds no more than its user and
//! their credential's fingerprint, and each form is judged under the
//! settings of the moment. Either way they are
//! bounded in number ([`CAPACITY`]: past it, expired sessions go first,
//! then the oldest anonymous one — any client can start those, so they
//! never push out a signed-in session while one of them is left — then the
//! oldest; in the store, inserts made at the same moment on several
//! replicas may each leave one more, which the next insert removes).
//!
//! A store that fails or does not answer in time (every call is bounded)
//! is an error for the caller, which refuses the form: a session is never
//! assumed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use subtle::ConstantTimeEq;

use super::grants::password::Users;
use super::store::{SessionRecord, StoreError, TokenStore};
use super::tokens;
use crate::lockout::AddressKey;

/// Sessions kept at most.
pub const CAPACITY: usize = 10_000;
/// Anonymous sessions one caller address (an IPv6 /64) may start a
/// minute: a person signs in with one or two, and a flood from one
/// address cannot push every browser midway through its login out of
/// [`CAPACITY`] (it would take more than 80 addresses for ten minutes).
pub const STARTS_PER_MINUTE: u32 = 120;
/// A session's lifetime from its creation (the approval takes minutes).
pub const LIFETIME_SECS: u64 = 600;
/// The cookie carrying the session id.
pub const COOKIE: &str = "mcgw_session";

/// A session as the handler sees it: its id (for the cookie) and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub id: String,
    pub session: SessionRecord,
    /// Created by this request: the response must set the cookie.
    pub is_new: bool,
}

impl Current {
    /// The user signed in on this session, while `users` still has them
    /// with the credential they logged in with; else nobody.
    pub fn user<'s>(&'s self, users: &Users) -> Option<&'s str> {
        let user = self.session.user.as_deref()?;
        let credential = self.session.credential.as_deref()?;
        (users.credential(user) == Some(credential)).then_some(user)
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| {
            p.as_bytes()
                .ct_eq(self.session.csrf_token.as_bytes())
                .into()
        })
    }
}

/// The sessions, wherever they are kept: the one interface the
/// authorization endpoint calls.
pub struct Sessions {
    kept: Kept,
    /// Anonymous sessions started in the current minute, per address (in
    /// this process: each replica counts its own).
    starts: Arc<Mutex<Starts>>,
}

/// Sessions started per address in one minute.
#[derive(Default)]
struct Starts {
    minute: u64,
    by_address: HashMap<AddressKey, u32>,
}

/// Where sessions are kept.
enum Kept {
    Memory(Arc<Memory>),
    /// The token store, shared by replicas.
    Store(Arc<dyn TokenStore>),
}

impl Sessions {
    /// Sessions in this process's memory.
    pub fn in_memory() -> Sessions {
        Sessions {
            kept: Kept::Memory(Arc::default()),
            starts: Arc::default(),
        }
    }

    /// Sessions in `store` when replicas share it, else in memory.
    pub fn for_store(store: Arc<dyn TokenStore>) -> Sessions {
        if store.is_shared() {
            Sessions {
                kept: Kept::Store(store),
                starts: Arc::default(),
            }
        } else {
            Sessions::in_memory()
        }
    }

    /// These sessions, with what `previous` (of the server these settings
    /// replace) keeps in memory: its sessions, when these are kept in
    /// memory too (a store keeps its own), and the sessions each address
    /// started this minute. Both go on sharing them.
    pub fn following(self, previous: &Sessions) -> Sessions {
        let kept = match (self.kept, &previous.kept) {
            (Kept::Memory(_), Kept::Memory(memory)) => Kept::Memory(Arc::clone(memory)),
            (kept, _) => kept,
        };
        Sessions {
            kept,
            starts: Arc::clone(&previous.starts),
        }
    }

    /// The live session with this id, if any.
    pub fn find(&self, id: &str, now: u64) -> Result<Option<Current>, StoreError> {
        let hash = tokens::hash_token(id);
        let session = match &self.kept {
            Kept::Memory(memory) => memory.find(&hash, now),
            Kept::Store(store) => store.session_find(&hash, now)?,
        };
        Ok(session.map(|session| Current {
            id: id.to_owned(),
            session,
            is_new: false,
        }))
    }

    /// Whether `from` may start one more anonymous session now
    /// ([`STARTS_PER_MINUTE`]); if not, in how many seconds it may.
    pub fn may_start(&self, from: AddressKey, now: u64) -> Result<(), u64> {
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        let minute = now / 60;
        if starts.minute != minute {
            starts.minute = minute;
            starts.by_address.clear();
        }
        // Bounded: past as many addresses as sessions can be kept, a new
        // one takes the place of an address still under its limit; an
        // address at its limit stays counted (clearing the counts would
        // lift every limit for the rest of the minute). When every kept
        // address is at its limit, a new one waits for the next minute.
        if starts.by_address.len() >= CAPACITY && !starts.by_address.contains_key(&from) {
            let under_limit = starts
                .by_address
                .iter()
                .find(|(_, &count)| count < STARTS_PER_MINUTE)
                .map(|(&address, _)| address);
            match under_limit {
                Some(address) => {
                    starts.by_address.remove(&address);
                }
                None => return Err(60 - now % 60),
            }
        }
        let count = starts.by_address.entry(from).or_insert(0);
        if *count >= STARTS_PER_MINUTE {
            return Err(60 - now % 60);
        }
        *count += 1;
        Ok(())
    }

    /// Starts an anonymous session.
    pub fn start(&self, now: u64) -> Result<Current, StoreError> {
        self.insert(None, None, now)
    }

    /// Replaces `old` by a new session for `user`, who logged in with
    /// `credential` ([`Users::credential`]), in one step.
    pub fn renew(
        &self,
        old: &Current,
        user: String,
        credential: String,
        now: u64,
    ) -> Result<Current, StoreError> {
        self.insert(Some((user, credential)), Some(&old.session.hash), now)
    }

    /// Spends the CSRF token `session` was read with, as a consent form
    /// (Allow or Deny) is taken: the session goes on with a new one.
    /// `false` when that token is spent already (the form posted again,
    /// or twice at once) or the session has ended: the form is stale.
    pub fn spend_csrf(&self, session: &Current, now: u64) -> Result<bool, StoreError> {
        let (hash, spent) = (&session.session.hash, &session.session.csrf_token);
        let fresh = tokens::random_token();
        match &self.kept {
            Kept::Memory(memory) => Ok(memory.spend_csrf(hash, spent, fresh, now)),
            Kept::Store(store) => store.session_spend_csrf(hash, spent, &fresh, now),
        }
    }

    /// Ends `session` (sign-out): its id is worth nothing from now on.
    pub fn end(&self, session: &Current) -> Result<(), StoreError> {
        match &self.kept {
            Kept::Memory(memory) => memory.remove(&session.session.hash),
            Kept::Store(store) => store.session_delete(&session.session.hash)?,
        }
        Ok(())
    }

    fn insert(
        &self,
        signed_in: Option<(String, String)>,
        replaces: Option<&str>,
        now: u64,
    ) -> Result<Current, StoreError> {
        let id = tokens::random_token();
        let (user, credential) = signed_in.unzip();
        let session = SessionRecord {
            hash: tokens::hash_token(&id),
            csrf_token: tokens::random_token(),
            user,
            credential,
            expires_at: now.saturating_add(LIFETIME_SECS),
        };
        match &self.kept {
            Kept::Memory(memory) => memory.insert(session.clone(), replaces, now),
            Kept::Store(store) => store.session_insert(&session, replaces, CAPACITY, now)?,
        }
        Ok(Current {
            id,
            session,
            is_new: true,
        })
    }
}

/// Whether a session kept in memory is live at `now`: before its end, and
/// made no later than `now` (a session from after `now` was made before
/// the clock stepped back, and would otherwise live that step longer).
fn live(session: &SessionRecord, now: u64) -> bool {
    now < session.expires_at && session.expires_at <= now.saturating_add(LIFETIME_SECS)
}

/// Sessions in memory, by hash, bounded by [`CAPACITY`].
#[derive(Default)]
struct Memory {
    by_hash: Mutex<HashMap<String, SessionRecord>>,
}

impl Memory {
    fn find(&self, hash: &str, now: u64) -> Option<SessionRecord> {
        let mut sessions = self.lock();
        let session = sessions.get(hash)?;
        if live(session, now) {
            return Some(session.clone());
        }
        sessions.remove(hash);
        None
    }

    fn insert(&self, session: SessionRecord, replaces: Option<&str>, now: u64) {
        let mut sessions = self.lock();
        if let Some(hash) = replaces {
            sessions.remove(hash);
        }
        if sessions.len() >= CAPACITY {
            sessions.retain(|_, s| live(s, now));
        }
        if sessions.len() >= CAPACITY {
            let oldest = |anonymous_only: bool| {
                sessions
                    .values()
                    .filter(|s| !anonymous_only || s.user.is_none())
                    .min_by_key(|s| s.expires_at)
                    .map(|s| s.hash.clone())
            };
            if let Some(hash) = oldest(true).or_else(|| oldest(false)) {
                sessions.remove(&hash);
            }
        }
        sessions.insert(session.hash.clone(), session);
    }

    fn remove(&self, hash: &str) {
        self.lock().remove(hash);
    }

    fn spend_csrf(&self, hash: &str, spent: &str, fresh: String, now: u64) -> bool {
        let mut sessions = self.lock();
        match sessions.get_mut(hash) {
            Some(session) if live(session, now) && session.csrf_token == spent => {
                session.csrf_token = fresh;
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionRecord>> {
        // A session map stays consistent after a panic elsewhere: each
        // change is one insert or remove.
        self.by_hash
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The `mcgw_session` value of a request's `Cookie` headers.
pub fn cookie_value(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim_matches('"'))
}

/// The paths the session cookie is sent on: the approval page's, where
/// its forms post (the default template posts to the first; a template of
/// one's own may post to its alias). The API ports serve the APIs on the
/// same origin, and a cookie sent with their requests would reach their
/// upstreams, where whoever reads it could approve tokens in the
/// signed-in user's name.
pub const COOKIE_PATHS: [&str; 2] = [
    "/oauth2/authorize",
    "/invoke/pub.apigateway.oauth2/authorize",
];

/// The `Set-Cookie` values for a session, one per path of the approval
/// page: sent there alone, not readable by scripts, not sent on
/// cross-site subrequests or POSTs, `Secure` when served over HTTPS.
pub fn set_cookies(id: &str, secure: bool) -> [String; 2] {
    let secure = if secure { "; Secure" } else { "" };
    COOKIE_PATHS.map(|path| {
        format!(
            "{COOKIE}={id}; Max-Age={LIFETIME_SECS}; Path={path}; HttpOnly; SameSite=Lax{secure}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_starts_its_own_sessions_a_minute() {
        let sessions = Sessions::in_memory();
        let from = |a: &str| AddressKey::of(a.parse().expect("address"));
        let now = 6_000; // the start of a minute
        for _ in 0..STARTS_PER_MINUTE {
            assert_eq!(sessions.may_start(from("203.0.113.1"), now + 5), Ok(()));
        }
        assert_eq!(sessions.may_start(from("203.0.113.1"), now + 5), Err(55));
        assert_eq!(sessions.may_start(from("203.0.113.2"), now + 5), Ok(()));
        // One /64 is one address.
        assert_eq!(sessions.may_start(from("2001:db8::1"), now + 5), Ok(()));
        assert_eq!(sessions.may_start(from("203.0.113.1"), now + 60), Ok(()));
    }

    /// More addresses in a minute than sessions can be kept do not lift
    /// the limit of an address that reached it.
    #[test]
    fn a_flood_of_new_addresses_keeps_a_reached_limit() {
        let sessions = Sessions::in_memory();
        let now = 6_000;
        let limited = AddressKey::of("203.0.113.1".parse().expect("address"));
        for _ in 0..STARTS_PER_MINUTE {
            assert_eq!(sessions.may_start(limited, now), Ok(()));
        }
        for n in 0..2 * u32::try_from(CAPACITY).expect("small") {
            let address = std::net::Ipv4Addr::from(0x0a00_0000 + n);
            assert_eq!(
                sessions.may_start(AddressKey::of(address.into()), now),
                Ok(())
            );
        }
        assert_eq!(sessions.may_start(limited, now + 1), Err(59));
    }

    /// The sessions of a server opened for new settings go on counting
    /// the sessions each address started this minute.
    #[test]
    fn the_starts_of_the_minute_carry_over() {
        let previous = Sessions::in_memory();
        let from = AddressKey::of("203.0.113.1".parse().expect("address"));
        for _ in 0..STARTS_PER_MINUTE {
            assert_eq!(previous.may_start(from, 6_005), Ok(()));
        }
        let next = Sessions::in_memory().following(&previous);
        assert_eq!(next.may_start(from, 6_010), Err(50));
    }

    /// A session made before the clock stepped back an hour has ended,
    /// rather than living the hour longer.
    #[test]
    fn a_session_from_before_the_clock_stepped_back_has_ended() {
        let sessions = Sessions::in_memory();
        let current = sessions.start(10_000).expect("started");
        assert!(sessions.find(&current.id, 10_599).expect("found").is_some());
        assert!(sessions.find(&current.id, 10_600).expect("found").is_none());
        let current = sessions.start(10_000).expect("started");
        assert!(
            sessions.find(&current.id, 6_400).expect("found").is_none(),
            "an hour back"
        );
    }

    /// A session `user` logged in on at `now`.
    fn signed_in(sessions: &Sessions, user: &str, now: u64) -> Result<Current, StoreError> {
        let anonymous = sessions.start(now)?;
        sessions.renew(&anonymous, user.into(), "c".into(), now)
    }

    fn len(sessions: &Sessions) -> usize {
        match &sessions.kept {
            Kept::Memory(memory) => memory.len(),
            Kept::Store(_) => unreachable!("memory sessions under test"),
        }
    }

    /// Sessions in memory carry over to the server opened for new
    /// settings, and either ends them for both.
    #[test]
    fn sessions_in_memory_carry_over() -> Result<(), StoreError> {
        let previous = Sessions::in_memory();
        let alice = signed_in(&previous, "alice", 100)?;
        let next = Sessions::in_memory().following(&previous);
        let found = next.find(&alice.id, 101)?.expect("carried over");
        assert_eq!(found.session.user.as_deref(), Some("alice"));
        next.end(&found)?;
        assert!(previous.find(&alice.id, 101)?.is_none());
        Ok(())
    }

    #[test]
    fn a_session_expires_and_login_replaces_it() -> Result<(), StoreError> {
        let sessions = Sessions::in_memory();
        let anonymous = sessions.start(100)?;
        assert_ne!(anonymous.session.hash, anonymous.id, "kept by hash");
        assert!(sessions
            .find(&anonymous.id, 100 + LIFETIME_SECS - 1)?
            .is_some());
        assert!(sessions.find(&anonymous.id, 100 + LIFETIME_SECS)?.is_none());
        assert_eq!(len(&sessions), 0, "an expired session is deleted");
        let anonymous = sessions.start(200)?;
        let logged_in = sessions.renew(&anonymous, "alice".into(), "c".into(), 200)?;
        assert!(sessions.find(&anonymous.id, 200)?.is_none());
        let found = sessions.find(&logged_in.id, 200)?.expect("session");
        assert_eq!(found.session.user.as_deref(), Some("alice"));
        assert_ne!(found.session.csrf_token, anonymous.session.csrf_token);
        assert!(found.csrf_matches(Some(&logged_in.session.csrf_token)));
        assert!(!found.csrf_matches(Some("nope")));
        assert!(!found.csrf_matches(None));
        sessions.end(&found)?;
        assert!(sessions.find(&logged_in.id, 200)?.is_none(), "signed out");
        Ok(())
    }

    #[test]
    fn a_csrf_token_is_spent_once() -> Result<(), StoreError> {
        let sessions = Sessions::in_memory();
        let alice = signed_in(&sessions, "alice", 100)?;
        assert!(sessions.spend_csrf(&alice, 101)?);
        assert!(!sessions.spend_csrf(&alice, 102)?, "spent already");
        let found = sessions.find(&alice.id, 103)?.expect("the session goes on");
        assert!(!found.csrf_matches(Some(&alice.session.csrf_token)));
        assert_eq!(found.session.user.as_deref(), Some("alice"));
        assert!(sessions.spend_csrf(&found, 104)?, "its new token");
        let ended = sessions.find(&found.id, 105)?.expect("live");
        assert!(
            !sessions.spend_csrf(&ended, 100 + LIFETIME_SECS)?,
            "expired"
        );
        Ok(())
    }

    #[test]
    fn a_session_is_signed_in_only_with_the_credential_it_was_logged_in_with(
    ) -> Result<(), StoreError> {
        use crate::authz_server::grants::password::tests::user;
        let sessions = Sessions::in_memory();
        let alice = user("alice", "wonderland");
        let users = Users::new(std::slice::from_ref(&alice)).expect("users");
        let credential = users.credential("alice").expect("alice").to_owned();
        let anonymous = sessions.start(0)?;
        assert_eq!(anonymous.user(&users), None);
        let signed_in = sessions.renew(&anonymous, "alice".into(), credential, 0)?;
        let found = sessions.find(&signed_in.id, 1)?.expect("session");
        assert_eq!(found.user(&users), Some("alice"));
        assert_eq!(
            found.user(&Users::new(&[alice]).expect("users")),
            Some("alice"),
            "the same configuration, read again"
        );
        let changed = Users::new(&[user("alice", "looking-glass")]).expect("users");
        assert_eq!(found.user(&changed), None, "her password changed");
        let removed = Users::new(&[user("bob", "builder")]).expect("users");
        assert_eq!(found.user(&removed), None, "she is gone");
        let forged = sessions.renew(&found, "bob".into(), "c".into(), 2)?;
        assert_eq!(forged.user(&removed), None, "another credential");
        Ok(())
    }

    #[test]
    fn the_number_of_sessions_is_bounded() -> Result<(), StoreError> {
        let sessions = Sessions::in_memory();
        let first = sessions.start(0)?;
        for _ in 0..CAPACITY {
            sessions.start(1)?;
        }
        assert_eq!(len(&sessions), CAPACITY);
        assert!(sessions.find(&first.id, 1)?.is_none(), "the oldest went");
        Ok(())
    }

    #[test]
    fn anonymous_sessions_never_push_out_a_signed_in_one() -> Result<(), StoreError> {
        let sessions = Sessions::in_memory();
        let anonymous = sessions.start(0)?;
        let alice = sessions.renew(&anonymous, "alice".into(), "c".into(), 0)?;
        // Any client can start anonymous sessions, as many as it likes.
        for _ in 0..CAPACITY + 50 {
            sessions.start(1)?;
        }
        assert_eq!(len(&sessions), CAPACITY);
        let found = sessions.find(&alice.id, 2)?.expect("still signed in");
        assert_eq!(found.session.user.as_deref(), Some("alice"));
        // Signed-in sessions only: the oldest goes.
        let sessions = Sessions::in_memory();
        let first = signed_in(&sessions, "a", 0)?;
        for _ in 0..CAPACITY {
            signed_in(&sessions, "b", 1)?;
        }
        assert!(sessions.find(&first.id, 1)?.is_none());
        Ok(())
    }

    #[test]
    fn a_store_not_shared_by_replicas_leaves_sessions_in_memory() -> Result<(), StoreError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = super::super::store::SqliteStore::open(&dir.path().join("oauth.db"))?;
        let sessions = Sessions::for_store(Arc::new(store));
        let started = sessions.start(0)?;
        assert!(sessions.find(&started.id, 1)?.is_some());
        assert_eq!(len(&sessions), 1);
        Ok(())
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; mcgw_session=abc"),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        for (cookie, path) in set_cookies("abc", true).iter().zip(COOKIE_PATHS) {
            assert!(cookie.ends_with("; Secure"), "{cookie}");
            assert!(cookie.contains(&format!("; Path={path};")), "{cookie}");
        }
        assert!(!set_cookies("abc", false)[0].contains("Secure"));
    }
}
