//! The token store's SQLite schema, versioned by `PRAGMA user_version`:
//! migration `i` brings version `i` to `i + 1`, each runs once, all in one
//! immediate transaction so two processes starting together cannot both
//! apply it. Migrations are only ever appended.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE access_tokens (
    id          TEXT PRIMARY KEY,
    format      TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    username    TEXT,
    scope       TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER,
    family      TEXT,
    grant_type  TEXT NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX access_tokens_family ON access_tokens(family);
CREATE INDEX access_tokens_expires_at ON access_tokens(expires_at);
CREATE TABLE refresh_tokens (
    hash            TEXT PRIMARY KEY,
    family          TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    username        TEXT,
    scope           TEXT NOT NULL,
    refreshes_used  INTEGER NOT NULL,
    issued_at       INTEGER NOT NULL,
    expires_at      INTEGER,
    rotated         INTEGER NOT NULL DEFAULT 0,
    revoked         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family);
CREATE TABLE authorization_codes (
    hash                   TEXT PRIMARY KEY,
    client_id              TEXT NOT NULL,
    redirect_uri           TEXT NOT NULL,
    code_challenge         TEXT,
    code_challenge_method  TEXT,
    scope                  TEXT NOT NULL,
    username               TEXT NOT NULL,
    expires_at             INTEGER NOT NULL,
    used                   INTEGER NOT NULL DEFAULT 0,
    family                 TEXT
);
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    jwk         TEXT NOT NULL,
    first_seen  INTEGER NOT NULL
);
"#,
    // RFC 6749 §4.1.3: the token request must repeat `redirect_uri` only
    // when the authorization request carried it.
    r#"
ALTER TABLE authorization_codes ADD COLUMN redirect_uri_given INTEGER NOT NULL DEFAULT 1;
"#,
    // What a refresh token's rotation issued, and when, so that the
    // rotation can be retried within `refresh_reuse_interval`. A token
    // rotated before this has NULLs: it is never retried.
    r#"
ALTER TABLE refresh_tokens ADD COLUMN rotated_at INTEGER;
ALTER TABLE refresh_tokens ADD COLUMN successor TEXT;
ALTER TABLE refresh_tokens ADD COLUMN successor_access TEXT;
"#,
];

pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(StoreError::FutureSchema { found, known });
    }
    for sql in MIGRATIONS.iter().skip(found as usize) {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", known)?;
    tx.commit()?;
    Ok(())
}
