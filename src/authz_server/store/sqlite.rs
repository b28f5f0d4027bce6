//! [`TokenStore`] in one SQLite file (WAL mode, so several gateway
//! processes on one host can share it); the schema is in `schema`.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::schema;
use super::{
    AccessTokenRecord, CodeRecord, CodeTake, KnownKey, RefreshTokenRecord, Removed, RetryOutcome,
    Rotated, Rotation, RotationRetry, StoreError, TokenStore, TokenSummary,
};
use crate::authz_server::settings::TokenFormat;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating it and its directory when missing) and migrates.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        create_private(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        schema::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // multi-statement change runs in a transaction), so a poisoned lock
        // is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The store holds token hashes and who holds them: readable by its owner
/// only. Created private before SQLite opens it, so it never exists with
/// wider permissions; SQLite gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|source| StoreError::Create {
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

fn format_name(format: TokenFormat) -> &'static str {
    match format {
        TokenFormat::Jwt => "jwt",
        TokenFormat::Opaque => "opaque",
    }
}

fn parse_format(name: &str) -> Result<TokenFormat, StoreError> {
    match name {
        "jwt" => Ok(TokenFormat::Jwt),
        "opaque" => Ok(TokenFormat::Opaque),
        _ => Err(StoreError::Corrupt("access_tokens.format")),
    }
}

/// SQLite integers are signed; times and counters here never exceed i64.
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn insert_access(conn: &Connection, t: &AccessTokenRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO access_tokens (id, format, client_id, username, scope, issued_at, \
         expires_at, family, grant_type, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            t.id,
            format_name(t.format),
            t.client_id,
            t.username,
            t.scope,
            to_sql(t.issued_at),
            t.expires_at.map(to_sql),
            t.family,
            t.grant_type,
            t.revoked,
        ],
    )?;
    Ok(())
}

fn insert_refresh(conn: &Connection, t: &RefreshTokenRecord) -> Result<(), StoreError> {
    let into = t.rotated_into.as_ref();
    conn.execute(
        "INSERT INTO refresh_tokens (hash, family, client_id, username, scope, refreshes_used, \
         issued_at, expires_at, rotated, revoked, rotated_at, successor, successor_access) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            t.hash,
            t.family,
            t.client_id,
            t.username,
            t.scope,
            t.refreshes_used,
            to_sql(t.issued_at),
            t.expires_at.map(to_sql),
            t.rotated,
            t.revoked,
            into.map(|r| to_sql(r.at)),
            into.and_then(|r| r.refresh.as_deref()),
            into.map(|r| r.access.as_str()),
        ],
    )?;
    Ok(())
}

const ACCESS_COLUMNS: &str =
    "id, format, client_id, username, scope, issued_at, expires_at, family, grant_type, revoked";

fn access_row(row: &Row<'_>) -> rusqlite::Result<(AccessTokenRecord, String)> {
    Ok((
        AccessTokenRecord {
            id: row.get(0)?,
            format: TokenFormat::Opaque,
            client_id: row.get(2)?,
            username: row.get(3)?,
            scope: row.get(4)?,
            issued_at: from_sql(row.get(5)?),
            expires_at: row.get::<_, Option<i64>>(6)?.map(from_sql),
            family: row.get(7)?,
            grant_type: row.get(8)?,
            revoked: row.get(9)?,
        },
        row.get(1)?,
    ))
}

fn with_format(
    (mut record, format): (AccessTokenRecord, String),
) -> Result<AccessTokenRecord, StoreError> {
    record.format = parse_format(&format)?;
    Ok(record)
}

/// Marks the refresh token `?1` a retried rotation replaced spent, with no
/// rotation that could be retried.
const SUPERSEDE: &str = "UPDATE refresh_tokens SET rotated = 1, rotated_at = NULL, \
     successor = NULL, successor_access = NULL WHERE hash = ?1";

const REFRESH_COLUMNS: &str = "hash, family, client_id, username, scope, refreshes_used, \
     issued_at, expires_at, rotated, revoked, rotated_at, successor, successor_access";

fn refresh_row(row: &Row<'_>) -> rusqlite::Result<RefreshTokenRecord> {
    let rotated_at: Option<i64> = row.get(10)?;
    let successor_access: Option<String> = row.get(12)?;
    let rotated_into = match (rotated_at, successor_access) {
        (Some(at), Some(access)) => Some(Rotated {
            at: from_sql(at),
            refresh: row.get(11)?,
            access,
        }),
        _ => None,
    };
    Ok(RefreshTokenRecord {
        hash: row.get(0)?,
        family: row.get(1)?,
        client_id: row.get(2)?,
        username: row.get(3)?,
        scope: row.get(4)?,
        refreshes_used: row.get(5)?,
        issued_at: from_sql(row.get(6)?),
        expires_at: row.get::<_, Option<i64>>(7)?.map(from_sql),
        rotated: row.get(8)?,
        rotated_into,
        revoked: row.get(9)?,
    })
}

impl TokenStore for SqliteStore {
    fn insert_grant(
        &self,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_access(&tx, access)?;
        if let Some(refresh) = refresh {
            insert_refresh(&tx, refresh)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn find_access_token(&self, id: &str) -> Result<Option<AccessTokenRecord>, StoreError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                &format!("SELECT {ACCESS_COLUMNS} FROM access_tokens WHERE id = ?1"),
                [id],
                access_row,
            )
            .optional()?;
        found.map(with_format).transpose()
    }

    fn find_refresh_token(&self, hash: &str) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE hash = ?1"),
                [hash],
                refresh_row,
            )
            .optional()?)
    }

    fn rotate_refresh_token(
        &self,
        presented: &str,
        access: &AccessTokenRecord,
        next: Option<&RefreshTokenRecord>,
    ) -> Result<Rotation, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The conditional update is the point of serialisation: of two
        // concurrent uses of one refresh token, exactly one rotates it. A
        // family with a revoked token has been revoked as a whole: it
        // never rotates again.
        let changed = tx.execute(
            "UPDATE refresh_tokens SET rotated = 1, rotated_at = ?2, successor = ?3, \
             successor_access = ?4 WHERE hash = ?1 AND rotated = 0 AND revoked = 0 \
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS f \
                             WHERE f.family = refresh_tokens.family AND f.revoked = 1)",
            params![
                presented,
                to_sql(access.issued_at),
                next.map(|n| n.hash.as_str()),
                access.id,
            ],
        )?;
        if changed != 1 {
            return Ok(Rotation::Stale);
        }
        insert_access(&tx, access)?;
        if let Some(next) = next {
            insert_refresh(&tx, next)?;
        }
        tx.commit()?;
        Ok(Rotation::Rotated)
    }

    fn retry_rotation(&self, retry: &RotationRetry) -> Result<RetryOutcome, StoreError> {
        let old = &retry.replaces;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // As in `rotate_refresh_token`, one conditional update decides:
        // it points the presented token at the new tokens only while it
        // still points at those the caller read, so of two concurrent
        // retries exactly one changes it.
        let changed = tx.execute(
            "UPDATE refresh_tokens SET successor = ?1, successor_access = ?2 \
             WHERE hash = ?3 AND rotated = 1 AND revoked = 0 \
             AND rotated_at = ?4 AND rotated_at + ?5 > ?6 \
             AND successor IS ?7 AND successor_access = ?8 \
             AND (expires_at IS NULL OR expires_at > ?6) \
             AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS f \
                             WHERE f.family = refresh_tokens.family AND f.revoked = 1) \
             AND (?7 IS NULL OR EXISTS (SELECT 1 FROM refresh_tokens AS s \
                             WHERE s.hash = ?7 AND s.family = refresh_tokens.family \
                             AND s.rotated = 0 AND s.revoked = 0 \
                             AND (s.expires_at IS NULL OR s.expires_at > ?6)))",
            params![
                retry.next.as_ref().map(|n| n.hash.as_str()),
                retry.access.id,
                retry.presented,
                to_sql(old.at),
                to_sql(retry.interval),
                to_sql(retry.now),
                old.refresh,
                old.access,
            ],
        )?;
        if changed != 1 {
            return Ok(RetryOutcome::Stale);
        }
        // Spent, with no rotation of its own (not revoked: a revoked
        // refresh token marks its family revoked as a whole, and this
        // family lives on): presenting it is reuse, and revoking it
        // (RFC 7009) revokes the family.
        if let Some(lost) = &old.refresh {
            tx.execute(SUPERSEDE, [lost])?;
        }
        tx.execute(
            "UPDATE access_tokens SET revoked = 1 WHERE id = ?1",
            [&old.access],
        )?;
        insert_access(&tx, &retry.access)?;
        if let Some(next) = &retry.next {
            insert_refresh(&tx, next)?;
        }
        tx.commit()?;
        Ok(RetryOutcome::Replaced)
    }

    fn revoke_access_token(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let changed = conn.execute("UPDATE access_tokens SET revoked = 1 WHERE id = ?1", [id])?;
        Ok(changed > 0)
    }

    fn revoke_family(&self, family: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let refresh = tx.execute(
            "UPDATE refresh_tokens SET revoked = 1 WHERE family = ?1 AND revoked = 0",
            [family],
        )?;
        let access = tx.execute(
            "UPDATE access_tokens SET revoked = 1 WHERE family = ?1 AND revoked = 0",
            [family],
        )?;
        tx.commit()?;
        Ok((refresh + access) as u64)
    }

    fn list_tokens(&self, per_kind: usize) -> Result<Vec<TokenSummary>, StoreError> {
        let conn = self.conn();
        let limit = i64::try_from(per_kind).unwrap_or(i64::MAX);
        let mut tokens = Vec::new();
        let mut stmt = conn.prepare(&format!(
            "SELECT * FROM (SELECT {ACCESS_COLUMNS} FROM access_tokens \
             ORDER BY issued_at DESC, id DESC LIMIT ?1) ORDER BY issued_at, id"
        ))?;
        for row in stmt.query_map([limit], access_row)? {
            let t = with_format(row?)?;
            tokens.push(TokenSummary {
                id: t.id,
                kind: "access_token",
                format: format_name(t.format),
                client_id: t.client_id,
                username: t.username,
                scope: t.scope,
                issued_at: t.issued_at,
                expires_at: t.expires_at,
                family: t.family,
                revoked: t.revoked,
            });
        }
        let mut stmt = conn.prepare(&format!(
            "SELECT * FROM (SELECT {REFRESH_COLUMNS} FROM refresh_tokens \
             ORDER BY issued_at DESC, hash DESC LIMIT ?1) ORDER BY issued_at, hash"
        ))?;
        for row in stmt.query_map([limit], refresh_row)? {
            let t = row?;
            tokens.push(TokenSummary {
                id: t.hash,
                kind: "refresh_token",
                format: "opaque",
                client_id: t.client_id,
                username: t.username,
                scope: t.scope,
                issued_at: t.issued_at,
                expires_at: t.expires_at,
                family: Some(t.family),
                revoked: t.revoked || t.rotated,
            });
        }
        Ok(tokens)
    }

    fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let conn = self.conn();
        let access = conn.execute("DELETE FROM access_tokens WHERE id = ?1", [id])?;
        let refresh = conn.execute("DELETE FROM refresh_tokens WHERE hash = ?1", [id])?;
        Ok(access + refresh > 0)
    }

    fn remove_expired(&self, now: u64) -> Result<Removed, StoreError> {
        let now = to_sql(now);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let access_tokens = tx.execute(
            "DELETE FROM access_tokens WHERE expires_at IS NOT NULL AND expires_at <= ?1",
            [now],
        )?;
        // A family's rows are kept while a refresh is still possible or an
        // access token of it is still live: replaying a rotated refresh
        // token must still revoke those (RFC 9700 §4.14.2).
        let refresh_tokens = tx.execute(
            "DELETE FROM refresh_tokens WHERE (expires_at IS NOT NULL AND expires_at <= ?1) OR ( \
               family NOT IN (SELECT family FROM refresh_tokens WHERE rotated = 0 AND revoked = 0 \
                              AND (expires_at IS NULL OR expires_at > ?1)) \
               AND family NOT IN (SELECT family FROM access_tokens WHERE family IS NOT NULL \
                              AND revoked = 0))",
            [now],
        )?;
        // A spent code is kept while tokens of its family live: presented
        // again, it must still revoke them (RFC 6749 §4.1.2).
        let authorization_codes = tx.execute(
            "DELETE FROM authorization_codes WHERE expires_at <= ?1 AND (family IS NULL OR ( \
               family NOT IN (SELECT family FROM refresh_tokens WHERE revoked = 0 \
                              AND (expires_at IS NULL OR expires_at > ?1)) \
               AND family NOT IN (SELECT family FROM access_tokens WHERE family IS NOT NULL \
                              AND revoked = 0)))",
            [now],
        )?;
        tx.commit()?;
        Ok(Removed {
            access_tokens: access_tokens as u64,
            refresh_tokens: refresh_tokens as u64,
            authorization_codes: authorization_codes as u64,
        })
    }

    fn put_code(&self, code: &CodeRecord) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO authorization_codes (hash, client_id, redirect_uri, code_challenge, \
             code_challenge_method, scope, username, expires_at, redirect_uri_given) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                code.hash,
                code.client_id,
                code.redirect_uri,
                code.code_challenge,
                code.code_challenge_method,
                code.scope,
                code.username,
                to_sql(code.expires_at),
                code.redirect_uri_given,
            ],
        )?;
        Ok(())
    }

    fn take_code(&self, hash: &str, now: u64, family: &str) -> Result<CodeTake, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = tx
            .query_row(
                &format!(
                    "SELECT {CODE_COLUMNS}, used, family FROM authorization_codes WHERE hash = ?1"
                ),
                [hash],
                |row| {
                    Ok((
                        code_record(hash, row)?,
                        row.get::<_, bool>(8)?,
                        row.get::<_, Option<String>>(9)?,
                    ))
                },
            )
            .optional()?;
        let outcome = match found {
            None => CodeTake::Unknown,
            Some((code, true, family)) => {
                // `used` counts presentations.
                tx.execute(
                    "UPDATE authorization_codes SET used = used + 1 WHERE hash = ?1",
                    [hash],
                )?;
                CodeTake::Reused {
                    family,
                    client_id: code.client_id,
                }
            }
            Some((code, false, _)) if code.expires_at <= now => CodeTake::Expired,
            Some((code, false, _)) => {
                tx.execute(
                    "UPDATE authorization_codes SET used = 1, family = ?2 WHERE hash = ?1",
                    [hash, family],
                )?;
                CodeTake::Fresh(code)
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    fn find_code(&self, hash: &str, now: u64) -> Result<Option<CodeRecord>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                &format!(
                    "SELECT {CODE_COLUMNS} FROM authorization_codes \
                     WHERE hash = ?1 AND used = 0 AND expires_at > ?2"
                ),
                params![hash, to_sql(now)],
                |row| code_record(hash, row),
            )
            .optional()?)
    }

    fn redeem_code(
        &self,
        hash: &str,
        now: u64,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // As in `take_code`, the conditional update decides which of two
        // concurrent redemptions spends the code; dropped uncommitted, the
        // transaction leaves the code unspent.
        let changed = tx.execute(
            "UPDATE authorization_codes SET used = 1, family = ?2 \
             WHERE hash = ?1 AND used = 0 AND expires_at > ?3",
            params![hash, access.family, to_sql(now)],
        )?;
        if changed != 1 {
            return Ok(false);
        }
        insert_access(&tx, access)?;
        if let Some(refresh) = refresh {
            insert_refresh(&tx, refresh)?;
        }
        tx.commit()?;
        Ok(true)
    }

    fn record_key(&self, key: &KnownKey) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO signing_keys (kid, jwk, first_seen) VALUES (?1, ?2, ?3)",
            params![key.kid, key.jwk, to_sql(key.first_seen)],
        )?;
        Ok(())
    }

    fn known_keys(&self) -> Result<Vec<KnownKey>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT kid, jwk, first_seen FROM signing_keys ORDER BY first_seen DESC, rowid DESC",
        )?;
        let keys = stmt
            .query_map([], |row| {
                Ok(KnownKey {
                    kid: row.get(0)?,
                    jwk: row.get(1)?,
                    first_seen: from_sql(row.get(2)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }
}

/// The columns [`code_record`] reads, in its order.
const CODE_COLUMNS: &str = "client_id, redirect_uri, code_challenge, code_challenge_method, \
     scope, username, expires_at, redirect_uri_given";

/// A code's record from a row that begins with [`CODE_COLUMNS`].
fn code_record(hash: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<CodeRecord> {
    Ok(CodeRecord {
        hash: hash.to_owned(),
        client_id: row.get(0)?,
        redirect_uri: row.get(1)?,
        redirect_uri_given: row.get(7)?,
        code_challenge: row.get(2)?,
        code_challenge_method: row.get(3)?,
        scope: row.get(4)?,
        username: row.get(5)?,
        expires_at: from_sql(row.get(6)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(id: &str, expires_at: Option<u64>, family: Option<&str>) -> AccessTokenRecord {
        AccessTokenRecord {
            id: id.into(),
            format: TokenFormat::Opaque,
            client_id: "app".into(),
            username: Some("alice".into()),
            scope: "view".into(),
            issued_at: 100,
            expires_at,
            family: family.map(str::to_owned),
            grant_type: "password".into(),
            revoked: false,
        }
    }

    fn refresh(hash: &str, family: &str) -> RefreshTokenRecord {
        RefreshTokenRecord {
            hash: hash.into(),
            family: family.into(),
            client_id: "app".into(),
            username: Some("alice".into()),
            scope: "view".into(),
            refreshes_used: 0,
            issued_at: 100,
            expires_at: None,
            rotated: false,
            rotated_into: None,
            revoked: false,
        }
    }

    /// Stores access token `access_id` (expiring at `expires_at`) and
    /// refresh token `refresh_hash`, both of `family`.
    fn grant(
        store: &SqliteStore,
        access_id: &str,
        expires_at: u64,
        refresh_hash: &str,
        family: &str,
    ) {
        store
            .insert_grant(
                &access(access_id, Some(expires_at), Some(family)),
                Some(&refresh(refresh_hash, family)),
            )
            .expect("insert");
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("sub/oauth.db")).expect("open");
        (dir, store)
    }

    #[test]
    fn reopening_keeps_rows_and_schema_version() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("oauth.db");
        let store = SqliteStore::open(&path).expect("open");
        store
            .insert_grant(&access("a", Some(200), None), None)
            .expect("insert");
        #[cfg(unix)]
        for file in ["oauth.db", "oauth.db-wal"] {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join(file)).expect(file);
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(
            store.find_access_token("a").expect("find"),
            Some(access("a", Some(200), None))
        );
    }

    #[test]
    fn a_refresh_token_rotates_once() {
        let (_dir, store) = store();
        grant(&store, "a1", 200, "r1", "f");
        let next = refresh("r2", "f");
        assert_eq!(
            store
                .rotate_refresh_token("r1", &access("a2", Some(300), Some("f")), Some(&next))
                .expect("rotate"),
            Rotation::Rotated
        );
        assert_eq!(
            store
                .rotate_refresh_token("r1", &access("a3", Some(300), Some("f")), None)
                .expect("rotate again"),
            Rotation::Stale
        );
        assert_eq!(store.find_access_token("a3").expect("find"), None);
        assert_eq!(store.revoke_family("f").expect("revoke"), 4);
        assert!(store
            .find_access_token("a2")
            .expect("find")
            .is_some_and(|t| t.revoked));
    }

    #[test]
    fn a_revoked_family_never_rotates_again() {
        let (_dir, store) = store();
        grant(&store, "a1", 200, "r1", "f");
        store.revoke_family("f").expect("revoke");
        // A successor stored after the revocation (a rotation that raced
        // it) is of the revoked family all the same.
        grant(&store, "a2", 200, "r2", "f");
        assert_eq!(
            store
                .rotate_refresh_token("r2", &access("a3", Some(300), Some("f")), None)
                .expect("rotate"),
            Rotation::Stale
        );
        assert_eq!(store.find_access_token("a3").expect("find"), None);
    }

    /// Grant `a1`/`r1` of family `f`, rotated at 100 into `a2`/`r2`: what
    /// the rotation is recorded as.
    fn rotated(store: &SqliteStore) -> Rotated {
        grant(store, "a1", 500, "r1", "f");
        let next = RefreshTokenRecord {
            refreshes_used: 1,
            ..refresh("r2", "f")
        };
        assert_eq!(
            store
                .rotate_refresh_token("r1", &access("a2", Some(500), Some("f")), Some(&next))
                .expect("rotate"),
            Rotation::Rotated
        );
        store
            .find_refresh_token("r1")
            .expect("find")
            .and_then(|r| r.rotated_into)
            .expect("the rotation is recorded")
    }

    /// A retry at `now` of what `replaces` names, issuing `access_id` and
    /// `next_hash`.
    fn retry(replaces: &Rotated, now: u64, access_id: &str, next_hash: &str) -> RotationRetry {
        RotationRetry {
            presented: "r1".into(),
            replaces: replaces.clone(),
            interval: 30,
            now,
            access: access(access_id, Some(500), Some("f")),
            next: Some(RefreshTokenRecord {
                refreshes_used: 1,
                ..refresh(next_hash, "f")
            }),
        }
    }

    fn revoked(store: &SqliteStore, id: &str) -> bool {
        store
            .find_access_token(id)
            .expect("find")
            .expect("stored")
            .revoked
    }

    #[test]
    fn a_rotation_is_retried_within_its_interval() {
        let (_dir, store) = store();
        let rotation = rotated(&store);
        assert_eq!(
            rotation,
            Rotated {
                at: 100,
                refresh: Some("r2".into()),
                access: "a2".into(),
            }
        );
        assert_eq!(
            store
                .retry_rotation(&retry(&rotation, 129, "a3", "r3"))
                .expect("retry"),
            RetryOutcome::Replaced
        );
        // Spent, with no rotation that could be retried, and not revoked.
        let lost = store
            .find_refresh_token("r2")
            .expect("find")
            .expect("r2 is kept");
        assert!(lost.rotated && !lost.revoked && lost.rotated_into.is_none());
        assert!(revoked(&store, "a2"));
        assert!(!revoked(&store, "a3"));
        let presented = store.find_refresh_token("r1").expect("find").expect("r1");
        assert!(presented.rotated && !presented.revoked);
        assert_eq!(
            presented.rotated_into,
            Some(Rotated {
                at: 100,
                refresh: Some("r3".into()),
                access: "a3".into(),
            })
        );
        // The family lives on: its new successor rotates.
        assert_eq!(
            store
                .rotate_refresh_token("r3", &access("a4", Some(500), Some("f")), None)
                .expect("rotate"),
            Rotation::Rotated
        );
    }

    #[test]
    fn a_rotation_is_not_retried_after_its_interval() {
        let (_dir, store) = store();
        let rotation = rotated(&store);
        assert_eq!(
            store
                .retry_rotation(&retry(&rotation, 130, "a3", "r3"))
                .expect("retry"),
            RetryOutcome::Stale
        );
        assert!(store.find_refresh_token("r2").expect("find").is_some());
        assert!(!revoked(&store, "a2"));
        assert_eq!(store.find_access_token("a3").expect("find"), None);
        assert_eq!(store.find_refresh_token("r3").expect("find"), None);
    }

    #[test]
    fn a_rotation_whose_successor_was_used_is_not_retried() {
        let (_dir, store) = store();
        let rotation = rotated(&store);
        store
            .rotate_refresh_token("r2", &access("a3", Some(500), Some("f")), None)
            .expect("rotate");
        assert_eq!(
            store
                .retry_rotation(&retry(&rotation, 110, "a4", "r4"))
                .expect("retry"),
            RetryOutcome::Stale
        );
        assert_eq!(store.find_access_token("a4").expect("find"), None);
        assert!(!revoked(&store, "a2"));
    }

    /// Two retries of one rotation, both read before either was made: the
    /// second finds the rotation replaced.
    #[test]
    fn of_two_retries_of_one_rotation_the_second_is_stale() {
        let (_dir, store) = store();
        let rotation = rotated(&store);
        let first = retry(&rotation, 110, "a3", "r3");
        let second = retry(&rotation, 111, "a4", "r4");
        assert_eq!(
            store.retry_rotation(&first).expect("retry"),
            RetryOutcome::Replaced
        );
        assert_eq!(
            store.retry_rotation(&second).expect("retry"),
            RetryOutcome::Stale
        );
        assert_eq!(store.find_access_token("a4").expect("find"), None);
        assert_eq!(store.find_refresh_token("r4").expect("find"), None);
        assert!(store.find_refresh_token("r3").expect("find").is_some());
    }

    /// A token rotated by a version that did not record rotations (the
    /// columns NULL, as the migration leaves them) has none, and a retry
    /// of it changes nothing.
    #[test]
    fn a_rotation_from_before_the_migration_is_never_retried() {
        let (_dir, store) = store();
        let rotation = rotated(&store);
        store
            .conn()
            .execute_batch(
                "UPDATE refresh_tokens SET rotated_at = NULL, successor = NULL, \
                 successor_access = NULL",
            )
            .expect("forget");
        let presented = store.find_refresh_token("r1").expect("find").expect("r1");
        assert!(presented.rotated);
        assert_eq!(presented.rotated_into, None);
        assert_eq!(
            store
                .retry_rotation(&retry(&rotation, 110, "a3", "r3"))
                .expect("retry"),
            RetryOutcome::Stale
        );
    }

    /// A file of the schema before rotations were recorded gains the
    /// columns when opened, its rows kept.
    #[test]
    fn a_file_of_the_previous_schema_is_migrated() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("oauth.db");
        let store = SqliteStore::open(&path).expect("open");
        grant(&store, "a1", 500, "r1", "f");
        store
            .conn()
            .execute_batch(
                "ALTER TABLE refresh_tokens DROP COLUMN rotated_at; \
                 ALTER TABLE refresh_tokens DROP COLUMN successor; \
                 ALTER TABLE refresh_tokens DROP COLUMN successor_access; \
                 PRAGMA user_version = 2;",
            )
            .expect("downgrade");
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(
            store.find_refresh_token("r1").expect("find"),
            Some(refresh("r1", "f"))
        );
        store
            .rotate_refresh_token("r1", &access("a2", Some(500), Some("f")), None)
            .expect("rotate");
        let rotated = store.find_refresh_token("r1").expect("find").expect("r1");
        assert_eq!(
            rotated.rotated_into,
            Some(Rotated {
                at: 100,
                refresh: None,
                access: "a2".into(),
            })
        );
    }

    #[test]
    fn remove_expired_keeps_live_families() {
        let (_dir, store) = store();
        store
            .insert_grant(&access("old", Some(150), None), None)
            .expect("insert");
        grant(&store, "live", 500, "r", "f");
        grant(&store, "gone", 150, "s", "g");
        store.revoke_family("g").expect("revoke");
        let removed = store.remove_expired(200).expect("remove");
        assert_eq!(
            removed,
            Removed {
                access_tokens: 2,
                refresh_tokens: 1,
                authorization_codes: 0
            }
        );
        assert!(store.find_refresh_token("r").expect("find").is_some());
    }

    fn code(hash: &str) -> CodeRecord {
        CodeRecord {
            hash: hash.into(),
            client_id: "app".into(),
            redirect_uri: "http://localhost/cb".into(),
            redirect_uri_given: false,
            code_challenge: None,
            code_challenge_method: None,
            scope: "view".into(),
            username: "alice".into(),
            expires_at: 200,
        }
    }

    #[test]
    fn a_code_is_spent_once() {
        let (_dir, store) = store();
        let code = code("h");
        store.put_code(&code).expect("put");
        assert_eq!(
            store.take_code("h", 100, "f").expect("take"),
            CodeTake::Fresh(code)
        );
        assert_eq!(
            store.take_code("h", 100, "g").expect("take"),
            CodeTake::Reused {
                family: Some("f".into()),
                client_id: "app".into(),
            }
        );
        assert_eq!(
            store.take_code("x", 100, "f").expect("take"),
            CodeTake::Unknown
        );
        assert_eq!(
            store
                .remove_expired(300)
                .expect("remove")
                .authorization_codes,
            1
        );
    }
}
