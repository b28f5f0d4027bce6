//! Browser sessions of the approval page, in memory.
//!
//! A session is a random id (256 bits) in the `mcgw_session` cookie; the
//! server keeps, under the id's SHA-256, when it started, its CSRF token
//! and the user who logged in on it. Bounded in number ([`CAPACITY`]:
//! past it, expired sessions go first, then the oldest anonymous one —
//! any client can start those, so they never push out a signed-in
//! session while one of them is left — then the oldest) and in lifetime
//! ([`LIFETIME_SECS`] from creation). Logging in starts a new session
//! (new id, new CSRF token), so an id planted before login is worth
//! nothing after it. Sessions are per process: they are lost on restart
//! or when the authorization server's settings change, which only means
//! logging in again, and replicas on one PostgreSQL store need session
//! affinity for the approval page (another replica knows no session, so
//! its CSRF check refuses the form).

use std::collections::HashMap;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

use super::tokens;

/// Sessions kept at most.
pub const CAPACITY: usize = 10_000;
/// A session's lifetime from its creation (the approval takes minutes).
pub const LIFETIME_SECS: u64 = 600;
/// The cookie carrying the session id.
pub const COOKIE: &str = "mcgw_session";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub csrf_token: String,
    /// The resource owner who logged in on this session.
    pub user: Option<String>,
    started: u64,
}

/// A session as the handler sees it: its id (for the cookie) and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub id: String,
    pub session: Session,
    /// Created by this request: the response must set the cookie.
    pub is_new: bool,
}

impl Current {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: Option<&str>) -> bool {
        presented.is_some_and(|p| {
            p.as_bytes()
                .ct_eq(self.session.csrf_token.as_bytes())
                .into()
        })
    }
}

#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// The live session with this id, if any.
    pub fn find(&self, id: &str, now: u64) -> Option<Current> {
        let sessions = self.lock();
        let session = sessions.get(&tokens::hash_token(id))?;
        (now < session.started + LIFETIME_SECS).then(|| Current {
            id: id.to_owned(),
            session: session.clone(),
            is_new: false,
        })
    }

    /// The live session with this id, or a new anonymous one.
    pub fn find_or_start(&self, id: Option<&str>, now: u64) -> Current {
        id.and_then(|id| self.find(id, now))
            .unwrap_or_else(|| self.start(None, now))
    }

    /// Starts a session for `user` (or an anonymous one).
    pub fn start(&self, user: Option<String>, now: u64) -> Current {
        let id = tokens::random_token();
        let session = Session {
            csrf_token: tokens::random_token(),
            user,
            started: now,
        };
        let mut sessions = self.lock();
        if sessions.len() >= CAPACITY {
            sessions.retain(|_, s| now < s.started + LIFETIME_SECS);
        }
        if sessions.len() >= CAPACITY {
            let oldest = |anonymous_only: bool| {
                sessions
                    .iter()
                    .filter(|(_, s)| !anonymous_only || s.user.is_none())
                    .min_by_key(|(_, s)| s.started)
                    .map(|(hash, _)| hash.clone())
            };
            if let Some(hash) = oldest(true).or_else(|| oldest(false)) {
                sessions.remove(&hash);
            }
        }
        sessions.insert(tokens::hash_token(&id), session.clone());
        Current {
            id,
            session,
            is_new: true,
        }
    }

    /// Replaces `old` by a new session for `user` (login).
    pub fn renew(&self, old: &Current, user: String, now: u64) -> Current {
        self.lock().remove(&tokens::hash_token(&old.id));
        self.start(Some(user), now)
    }

    /// Ends `session` (sign-out): its id is worth nothing from now on.
    pub fn end(&self, session: &Current) {
        self.lock().remove(&tokens::hash_token(&session.id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
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

/// The `Set-Cookie` value for a session: not readable by scripts, not sent
/// on cross-site subrequests or POSTs, `Secure` when served over HTTPS.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Max-Age={LIFETIME_SECS}; Path=/; HttpOnly; SameSite=Lax{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_expires_and_login_replaces_it() {
        let sessions = Sessions::default();
        let anonymous = sessions.start(None, 100);
        assert!(sessions
            .find(&anonymous.id, 100 + LIFETIME_SECS - 1)
            .is_some());
        assert!(sessions.find(&anonymous.id, 100 + LIFETIME_SECS).is_none());
        let logged_in = sessions.renew(&anonymous, "alice".into(), 200);
        assert!(sessions.find(&anonymous.id, 200).is_none());
        let found = sessions.find(&logged_in.id, 200).expect("session");
        assert_eq!(found.session.user.as_deref(), Some("alice"));
        assert_ne!(found.session.csrf_token, anonymous.session.csrf_token);
        assert!(found.csrf_matches(Some(&logged_in.session.csrf_token)));
        assert!(!found.csrf_matches(Some("nope")));
        assert!(!found.csrf_matches(None));
        sessions.end(&found);
        assert!(sessions.find(&logged_in.id, 200).is_none(), "signed out");
    }

    #[test]
    fn the_number_of_sessions_is_bounded() {
        let sessions = Sessions::default();
        let first = sessions.start(None, 0);
        for _ in 0..CAPACITY {
            sessions.start(None, 1);
        }
        assert_eq!(sessions.len(), CAPACITY);
        assert!(sessions.find(&first.id, 1).is_none(), "the oldest went");
    }

    #[test]
    fn anonymous_sessions_never_push_out_a_signed_in_one() {
        let sessions = Sessions::default();
        let anonymous = sessions.start(None, 0);
        let alice = sessions.renew(&anonymous, "alice".into(), 0);
        // Any client can start anonymous sessions, as many as it likes.
        for _ in 0..CAPACITY + 50 {
            sessions.start(None, 1);
        }
        assert_eq!(sessions.len(), CAPACITY);
        let found = sessions.find(&alice.id, 2).expect("still signed in");
        assert_eq!(found.session.user.as_deref(), Some("alice"));
        // Signed-in sessions only: the oldest goes.
        let sessions = Sessions::default();
        let first = sessions.start(Some("a".into()), 0);
        for _ in 0..CAPACITY {
            sessions.start(Some("b".into()), 1);
        }
        assert!(sessions.find(&first.id, 1).is_none());
    }

    #[test]
    fn the_cookie_is_read_among_others() {
        let mut headers = http::HeaderMap::new();
        headers.append(
            http::header::COOKIE,
            http::HeaderValue::from_static("a=1; mcgw_session=abc"),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(!set_cookie("abc", false).contains("Secure"));
    }
}
