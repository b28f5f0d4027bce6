//! The token store's PostgreSQL schema. Migration `i` brings version `i` to
//! `i + 1`; all pending ones run in one transaction that first takes a
//! transaction-scoped advisory lock, so replicas starting together migrate
//! once (the others wait, then find nothing to do). Each applied version is
//! a row of `microgateway_migrations`. Migrations are only ever appended.

use tokio_postgres::Client;

use super::StoreError;

/// `pg_advisory_xact_lock` key of the migrations and key generation
/// ("mgstore1" in ASCII).
pub const ADVISORY_LOCK: i64 = 0x6d67_7374_6f72_6531;

pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE access_tokens (
    id          TEXT PRIMARY KEY,
    format      TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    username    TEXT,
    scope       TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT,
    family      TEXT,
    grant_type  TEXT NOT NULL,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX access_tokens_family ON access_tokens (family);
CREATE INDEX access_tokens_expires_at ON access_tokens (expires_at);
CREATE TABLE refresh_tokens (
    hash            TEXT PRIMARY KEY,
    family          TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    username        TEXT,
    scope           TEXT NOT NULL,
    refreshes_used  BIGINT NOT NULL,
    issued_at       BIGINT NOT NULL,
    expires_at      BIGINT,
    rotated         BOOLEAN NOT NULL DEFAULT FALSE,
    revoked         BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE TABLE authorization_codes (
    hash                   TEXT PRIMARY KEY,
    client_id              TEXT NOT NULL,
    redirect_uri           TEXT NOT NULL,
    redirect_uri_given     BOOLEAN NOT NULL,
    code_challenge         TEXT,
    code_challenge_method  TEXT,
    scope                  TEXT NOT NULL,
    username               TEXT NOT NULL,
    expires_at             BIGINT NOT NULL,
    used                   INTEGER NOT NULL DEFAULT 0,
    family                 TEXT
);
CREATE INDEX authorization_codes_expires_at ON authorization_codes (expires_at);
CREATE TABLE signing_keys (
    seq         BIGSERIAL,
    kid         TEXT PRIMARY KEY,
    jwk         TEXT NOT NULL,
    first_seen  BIGINT NOT NULL
);
CREATE TABLE signing_private_keys (
    seq         BIGSERIAL PRIMARY KEY,
    kid         TEXT NOT NULL UNIQUE,
    pem         TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE failed_attempts (
    subject       TEXT PRIMARY KEY,
    window_start  BIGINT NOT NULL,
    failures      INTEGER NOT NULL
);
"#,
    // The approval page's browser sessions, so that a browser's requests
    // may reach any replica; `hash` is the SHA-256 of the session id.
    r#"
CREATE TABLE approval_sessions (
    hash        TEXT PRIMARY KEY,
    csrf_token  TEXT NOT NULL,
    username    TEXT,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX approval_sessions_expires_at ON approval_sessions (expires_at);
"#,
    // The fingerprint of the signed-in user's credential: a session whose
    // user's password changed since (or one stored before this column,
    // NULL) is no sign-in.
    r#"
ALTER TABLE approval_sessions ADD COLUMN credential TEXT;
"#,
    // Each failure counted deletes some windows that ended long ago, the
    // oldest first: the subjects are anyone's to name, so the table must
    // not wait for a cleanup to stay small.
    r#"
CREATE INDEX failed_attempts_window_start ON failed_attempts (window_start);
"#,
    // What a refresh token's rotation issued, and when, so that the
    // rotation can be retried within `refresh_reuse_interval`. A token
    // rotated before this has NULLs: it is never retried.
    r#"
ALTER TABLE refresh_tokens
    ADD COLUMN rotated_at BIGINT,
    ADD COLUMN successor TEXT,
    ADD COLUMN successor_access TEXT;
"#,
];

/// Applies the pending migrations under the advisory lock.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADVISORY_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS microgateway_migrations (\
           version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .await?;
    let found: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM microgateway_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if found > known {
        return Err(StoreError::FutureSchema { found, known });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await?;
        let version = index as i32 + 1;
        tx.execute(
            "INSERT INTO microgateway_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "token store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}
