//! What the authorization server remembers: access tokens (by `jti`, or by
//! the SHA-256 of an opaque token), refresh tokens, authorization codes and
//! the public keys it has signed with; a store that replicas share also
//! counts failed password attempts and keeps the approval page's browser
//! sessions for all of them.
//!
//! Invariant: no clear token, code or session id is ever stored — only its
//! SHA-256 (base64url), so a copy of the store cannot be replayed. The
//! store is never on the gateway's request path for JWTs; callers use it
//! from a blocking thread. `SqliteStore` is one local file; `PostgresStore` is a
//! database any number of replicas share, with the same rules.

mod postgres;
mod postgres_schema;
mod schema;
mod shared_counts;
mod sqlite;

pub use postgres::{PostgresStore, FAMILY_LOCK, OPERATION_TIMEOUT};
pub use postgres_schema::MIGRATIONS as POSTGRES_MIGRATIONS;
pub use shared_counts::SharedCounts;
pub use sqlite::SqliteStore;

use serde::Serialize;

use super::settings::TokenFormat;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("token store: cannot create directory {path}: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("token store: cannot create {path}: {source}")]
    Create {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("token store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database cannot be reached now (down, restarting, no
    /// connection in time): the request may succeed later.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    #[error("token store: {0}")]
    Postgres(String),
    #[error("token store schema version {found} is newer than this program's {known}")]
    FutureSchema { found: i64, known: i64 },
    #[error(
        "this token store does not keep signing keys: with SQLite the key is the signing_key file"
    )]
    KeysNotKept,
    #[error("token store holds a value it does not understand in column {0}")]
    Corrupt(&'static str),
    #[error("this token store does not keep the approval page's sessions: each process does")]
    SessionsNotKept,
}

/// One issued access token; `id` is its `jti` (JWT) or the SHA-256 of the
/// token (opaque).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenRecord {
    pub id: String,
    pub format: TokenFormat,
    pub client_id: String,
    pub username: Option<String>,
    /// Space-separated token scopes (RFC 6749 §3.3).
    pub scope: String,
    pub issued_at: u64,
    /// `None` = never expires (opaque only).
    pub expires_at: Option<u64>,
    /// Refresh family the token belongs to, if it was issued with a refresh
    /// token: revoking the family revokes it (RFC 7009 §2.1).
    pub family: Option<String>,
    pub grant_type: String,
    pub revoked: bool,
}

/// One refresh token, by the SHA-256 of its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRecord {
    pub hash: String,
    /// All refresh tokens rotated from one grant share a family.
    pub family: String,
    pub client_id: String,
    pub username: Option<String>,
    /// Scope of the original grant: the ceiling for every refresh
    /// (RFC 6749 §6).
    pub scope: String,
    /// Refreshes already made in this family when this token was issued.
    pub refreshes_used: u32,
    pub issued_at: u64,
    pub expires_at: Option<u64>,
    /// Exchanged for a newer token; presenting it again is reuse, or a
    /// retry of that exchange (see [`TokenStore::retry_rotation`]).
    pub rotated: bool,
    /// What the exchange issued, and when; `None` until rotated, and for
    /// a token rotated before this was recorded (never retried).
    pub rotated_into: Option<Rotated>,
    pub revoked: bool,
}

/// What one rotation of a refresh token issued, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The server's clock at the rotation: the issue time of its access
    /// token. A retry of the rotation keeps it.
    pub at: u64,
    /// SHA-256 of the refresh token it issued; `None` when the rotation
    /// reached the refresh limit and issued none.
    pub refresh: Option<String>,
    /// The access token it issued (`jti`, or SHA-256 of an opaque token).
    pub access: String,
}

/// An authorization code waiting to be redeemed (RFC 6749 §4.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRecord {
    pub hash: String,
    pub client_id: String,
    /// The redirect URI the code was sent to (given, or the client's only one).
    pub redirect_uri: String,
    /// Whether the authorization request named `redirect_uri` (RFC 6749
    /// §4.1.3: then the token request must repeat it).
    pub redirect_uri_given: bool,
    /// RFC 7636 `code_challenge` and its method, when PKCE was used.
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub scope: String,
    pub username: String,
    pub expires_at: u64,
}

/// What redeeming a code found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeTake {
    /// First use: the code is now spent.
    Fresh(CodeRecord),
    /// RFC 6749 §4.1.2: a second use; the tokens issued from the first use
    /// (their family, when known) should be revoked when the client the
    /// code was issued to presents it again.
    Reused {
        family: Option<String>,
        client_id: String,
    },
    Expired,
    Unknown,
}

/// Outcome of exchanging a refresh token for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    Rotated,
    /// The token was already rotated or revoked (a concurrent or replayed
    /// use): nothing was issued.
    Stale,
}

/// A rotated refresh token presented again by its client soon after its
/// rotation, taken as a retry of that rotation whose answer was lost:
/// what the rotation issued is replaced by `access` and `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationRetry {
    /// SHA-256 of the presented (rotated) refresh token.
    pub presented: String,
    /// Its rotation as the caller read it: the retry replaces exactly
    /// this, or nothing.
    pub replaces: Rotated,
    /// Seconds after the rotation during which it may be retried: only
    /// while `now < replaces.at + interval`.
    pub interval: u64,
    pub now: u64,
    /// The new access token, of the presented token's family.
    pub access: AccessTokenRecord,
    /// The new successor, when the rotation had issued one.
    pub next: Option<RefreshTokenRecord>,
}

/// Outcome of [`TokenStore::retry_rotation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    /// What the rotation issued is revoked; `access` and `next` are stored
    /// in its place.
    Replaced,
    /// The rotation may not be retried (any more): nothing was changed.
    Stale,
}

/// A token as the admin API lists it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenSummary {
    pub id: String,
    /// `access_token` or `refresh_token`.
    pub kind: &'static str,
    /// `jwt` or `opaque`.
    pub format: &'static str,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub scope: String,
    pub issued_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    pub revoked: bool,
}

/// How many rows `remove_expired` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub access_tokens: u64,
    pub refresh_tokens: u64,
    pub authorization_codes: u64,
}

impl Removed {
    pub fn total(&self) -> u64 {
        self.access_tokens + self.refresh_tokens + self.authorization_codes
    }
}

/// A browser session of the approval page (`sessions`), stored under the
/// SHA-256 of its id, never the id. Its CSRF token is kept as it is: it
/// is shown on the page, and without the id it is worth nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// SHA-256 (base64url) of the session id.
    pub hash: String,
    pub csrf_token: String,
    /// The resource owner who logged in on this session.
    pub user: Option<String>,
    /// The fingerprint of `user`'s credential when they logged in
    /// (`Users::credential`, never the password): the session is theirs
    /// only while it is still the configured one.
    pub credential: Option<String>,
    /// Never accepted from this second on.
    pub expires_at: u64,
}

/// A public signing key the server has used, kept so tokens signed before
/// a key change still validate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKey {
    pub kid: String,
    /// The public JWK as JSON.
    pub jwk: String,
    pub first_seen: u64,
}

pub trait TokenStore: Send + Sync {
    /// Whether the store can serve (a database store that has not been
    /// reached yet cannot).
    fn is_ready(&self) -> bool {
        true
    }
    /// Records a new grant: its access token and, when issued, its refresh
    /// token, atomically.
    fn insert_grant(
        &self,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> Result<(), StoreError>;
    fn find_access_token(&self, id: &str) -> Result<Option<AccessTokenRecord>, StoreError>;
    fn find_refresh_token(&self, hash: &str) -> Result<Option<RefreshTokenRecord>, StoreError>;
    /// Marks `presented` rotated and records the new access token (and the
    /// next refresh token) — only if `presented` was still current. The
    /// rotation is remembered on `presented` ([`Rotated`]), at the new
    /// access token's `issued_at`.
    fn rotate_refresh_token(
        &self,
        presented: &str,
        access: &AccessTokenRecord,
        next: Option<&RefreshTokenRecord>,
    ) -> Result<Rotation, StoreError>;
    /// Replaces what a rotation issued, in one step, only while all of
    /// this holds: `retry.presented` is rotated and unrevoked, its family
    /// has not ended and has no revoked refresh token, its rotation is the
    /// one `retry.replaces` names and is less than `retry.interval`
    /// seconds old, and the refresh token it issued (if any) is neither
    /// rotated nor revoked. Then that refresh token is marked rotated with
    /// no rotation recorded (presenting it is reuse; not revoked, which
    /// would mark the family revoked as a whole), its access token is
    /// revoked, `retry.access` and `retry.next` are stored, and
    /// `retry.presented` names them as what its rotation issued, its
    /// rotation time unchanged. Otherwise nothing changes: of two
    /// concurrent retries of one rotation, one is [`RetryOutcome::Stale`].
    fn retry_rotation(&self, retry: &RotationRetry) -> Result<RetryOutcome, StoreError>;
    /// Revokes one access token; false when unknown.
    fn revoke_access_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Revokes every refresh and access token of a family; returns how many.
    fn revoke_family(&self, family: &str) -> Result<u64, StoreError>;
    /// The `per_kind` most recently issued access tokens and refresh
    /// tokens (each kind oldest first): a store of millions is never read
    /// whole into one answer.
    fn list_tokens(&self, per_kind: usize) -> Result<Vec<TokenSummary>, StoreError>;
    /// Deletes one access token (by id) or refresh token (by hash).
    fn delete_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Deletes expired access tokens and codes, and refresh tokens of
    /// families that can no longer be refreshed and have no live access
    /// token left (and, where they are kept, expired failure windows and
    /// approval sessions, not counted).
    fn remove_expired(&self, now: u64) -> Result<Removed, StoreError>;
    fn put_code(&self, code: &CodeRecord) -> Result<(), StoreError>;
    /// Spends a code: at most one caller ever gets [`CodeTake::Fresh`],
    /// and `family` is bound to the code in the same step (so a replay
    /// racing the first use finds it).
    fn take_code(&self, hash: &str, now: u64, family: &str) -> Result<CodeTake, StoreError>;
    /// The code, while it is unspent and live at `now`; read only: it is
    /// spent by [`TokenStore::redeem_code`] with the tokens it buys, or by
    /// [`TokenStore::take_code`] when its presentation buys none.
    fn find_code(&self, hash: &str, now: u64) -> Result<Option<CodeRecord>, StoreError>;
    /// Spends a code still unspent and live at `now` and records the
    /// grant it buys, in one transaction: the code is bound to the access
    /// token's family and the tokens are stored, or nothing changes —
    /// false when it was spent (a concurrent redemption won) or expired
    /// meanwhile, an error when the store failed, the code then still
    /// good for a retry.
    fn redeem_code(
        &self,
        hash: &str,
        now: u64,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> Result<bool, StoreError>;
    /// Records a public key the first time it signs.
    fn record_key(&self, key: &KnownKey) -> Result<(), StoreError>;
    /// Known public keys, newest first.
    fn known_keys(&self) -> Result<Vec<KnownKey>, StoreError>;

    /// Whether the private signing keys live here, shared by replicas
    /// (otherwise the key is the `signing_key` file).
    fn keeps_signing_keys(&self) -> bool {
        false
    }
    /// The private signing key (PEM) that signs: the newest one at least
    /// `settle` old, else the oldest one (a key newer than that may not be
    /// published by every replica yet); `None` when there is none. Its age
    /// is told by the store's own clock, which it was stamped with: one
    /// clock for every replica and for the host that rotated it.
    fn current_signing_key(
        &self,
        _settle: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// Makes `pem` the current signing key, in one step under the store's
    /// lock, stamped with the store's clock. With `only_first`, only when
    /// there is none yet: the key that is current afterwards (ours or the
    /// one another replica made first) is returned.
    fn add_signing_key(
        &self,
        _kid: &str,
        _pem: &str,
        _only_first: bool,
    ) -> Result<String, StoreError> {
        Err(StoreError::KeysNotKept)
    }

    /// Whether replicas share this store: it then counts failed password
    /// attempts and client authentications (`attempts_*`, through
    /// [`SharedCounts`]) and keeps the approval page's sessions
    /// (`session_*`) for all of them; otherwise each process does.
    fn is_shared(&self) -> bool {
        false
    }
    /// `Some(retry_after_secs)` while `subject` has `limit` failures in a
    /// window of `window_secs` that has not ended.
    fn attempts_locked(
        &self,
        _subject: &str,
        _limit: u32,
        _window_secs: u64,
        _now: u64,
    ) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
    /// Counts one failure in the current window (a new one when the last
    /// ended), in one step.
    fn attempts_record_failure(
        &self,
        _subject: &str,
        _window_secs: u64,
        _now: u64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    fn attempts_clear(&self, _subject: &str) -> Result<(), StoreError> {
        Ok(())
    }

    /// The live session stored under `hash`. An expired one is never
    /// returned, and is deleted.
    fn session_find(&self, _hash: &str, _now: u64) -> Result<Option<SessionRecord>, StoreError> {
        Err(StoreError::SessionsNotKept)
    }
    /// Stores `session` and, in the same step, deletes `replaces` (the
    /// session it follows, at login) and bounds the sessions kept: expired
    /// ones are deleted, and past `capacity` the oldest anonymous ones,
    /// then the oldest signed-in ones, make room.
    fn session_insert(
        &self,
        _session: &SessionRecord,
        _replaces: Option<&str>,
        _capacity: usize,
        _now: u64,
    ) -> Result<(), StoreError> {
        Err(StoreError::SessionsNotKept)
    }
    fn session_delete(&self, _hash: &str) -> Result<(), StoreError> {
        Err(StoreError::SessionsNotKept)
    }
    /// Replaces the CSRF token of the live session under `hash` by
    /// `fresh` if it is still `spent`, in one step: `false` when another
    /// call replaced it first or the session has ended.
    fn session_spend_csrf(
        &self,
        _hash: &str,
        _spent: &str,
        _fresh: &str,
        _now: u64,
    ) -> Result<bool, StoreError> {
        Err(StoreError::SessionsNotKept)
    }
}
