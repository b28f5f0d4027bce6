//! The approval page's browser sessions in PostgreSQL (`approval_sessions`),
//! so that a browser's requests may reach any replica: the login on one,
//! the consent on another.
//!
//! A row is keyed by the SHA-256 of a session id, never the id. Each call
//! is one statement, so replicas never see half a change: a lookup
//! deletes the row it finds expired and returns only a live one (the
//! lifetime is enforced here, by `expires_at`, not by the caller); an
//! insert deletes the session it replaces (login) and the expired ones,
//! and past the capacity the oldest anonymous sessions, then the oldest
//! signed-in ones. Inserts running at the same moment on several replicas
//! may each leave one row over the capacity; the next insert removes it.
//! A consent form spends its CSRF token with one conditional update, so
//! that of two replicas taking the same form at once one does.

use deadpool_postgres::Object;

use super::{from_sql, to_sql};
use crate::authz_server::store::{SessionRecord, StoreError};

/// The live session under `$1` at `$2`; the row, if expired, is deleted
/// (both parts read one snapshot).
const FIND: &str = "WITH expired AS (DELETE FROM approval_sessions \
                     WHERE hash = $1 AND expires_at <= $2) \
     SELECT csrf_token, username, expires_at, credential FROM approval_sessions \
     WHERE hash = $1 AND expires_at > $2";

/// Stores `$1..$4` and `$8` at `$5`, deleting the session it replaces (`$6`), the
/// expired ones (by the database's clock too, give or take 5 minutes: a
/// replica whose clock runs ahead deletes no other browser's live
/// session), and as many of the others beyond capacity `$7` less one
/// as it takes, anonymous first (any client can start those: they never
/// push out a signed-in session while one of them is left), oldest first.
const INSERT: &str = "WITH live AS (SELECT hash, username, expires_at FROM approval_sessions \
                 WHERE expires_at > $5 AND hash IS DISTINCT FROM $6), \
          gone AS (DELETE FROM approval_sessions \
                 WHERE expires_at <= LEAST($5, EXTRACT(EPOCH FROM now())::BIGINT + 300) \
                    OR hash = $6 \
                    OR hash IN (SELECT hash FROM live \
                                ORDER BY username IS NOT NULL, expires_at, hash \
                                LIMIT GREATEST((SELECT count(*) FROM live) - $7 + 1, 0))) \
     INSERT INTO approval_sessions (hash, csrf_token, username, expires_at, credential) \
     VALUES ($1, $2, $3, $4, $8)";

pub async fn find(
    client: Object,
    hash: String,
    now: u64,
) -> Result<Option<SessionRecord>, StoreError> {
    let statement = client.prepare_cached(FIND).await?;
    let row = client.query_opt(&statement, &[&hash, &to_sql(now)]).await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(SessionRecord {
        hash,
        csrf_token: row.try_get(0)?,
        user: row.try_get(1)?,
        expires_at: from_sql(row.try_get(2)?),
        credential: row.try_get(3)?,
    }))
}

pub async fn insert(
    client: Object,
    session: SessionRecord,
    replaces: Option<String>,
    capacity: usize,
    now: u64,
) -> Result<(), StoreError> {
    let capacity = i64::try_from(capacity).unwrap_or(i64::MAX);
    let statement = client.prepare_cached(INSERT).await?;
    client
        .execute(
            &statement,
            &[
                &session.hash,
                &session.csrf_token,
                &session.user,
                &to_sql(session.expires_at),
                &to_sql(now),
                &replaces,
                &capacity,
                &session.credential,
            ],
        )
        .await?;
    Ok(())
}

/// Replaces the CSRF token `$2` of the live session `$1` at `$4` by `$3`.
const SPEND_CSRF: &str = "UPDATE approval_sessions SET csrf_token = $3 \
     WHERE hash = $1 AND csrf_token = $2 AND expires_at > $4";

pub async fn spend_csrf(
    client: Object,
    hash: String,
    spent: String,
    fresh: String,
    now: u64,
) -> Result<bool, StoreError> {
    let statement = client.prepare_cached(SPEND_CSRF).await?;
    let updated = client
        .execute(&statement, &[&hash, &spent, &fresh, &to_sql(now)])
        .await?;
    Ok(updated == 1)
}

pub async fn delete(client: Object, hash: String) -> Result<(), StoreError> {
    client
        .execute("DELETE FROM approval_sessions WHERE hash = $1", &[&hash])
        .await?;
    Ok(())
}
