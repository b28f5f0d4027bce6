//! A retry of a refresh token's rotation in PostgreSQL: what the rotation
//! issued is replaced in one transaction under the family's advisory lock,
//! the same lock its rotations and its revocation take, so on any replica
//! a retry sees every rotation or revocation before it whole, and none
//! runs halfway through it.
//!
//! One conditional `UPDATE` of the presented token decides, naming the
//! rotation the caller read: of two concurrent retries the second waits
//! for the lock, then finds the token pointing at the first one's tokens
//! and changes nothing.

use deadpool_postgres::Object;

use super::{insert_access, insert_refresh, to_sql, FAMILY_LOCK, LOCK_FAMILY_OF_TOKEN};
use crate::authz_server::store::{RetryOutcome, RotationRetry, StoreError};

/// Points `$3` at the new access token `$2` and successor `$1` while it is
/// rotated, unrevoked, of a family that has not ended (at `$6`) and has
/// no revoked refresh token, rotated at `$4` less than `$5` seconds ago,
/// into `$7` (or none) and `$8`, and `$7` is neither rotated nor revoked.
const REPOINT: &str = "UPDATE refresh_tokens AS r SET successor = $1, successor_access = $2 \
     WHERE hash = $3 AND rotated AND NOT revoked \
     AND rotated_at = $4 AND rotated_at + $5 > $6 \
     AND successor IS NOT DISTINCT FROM $7 AND successor_access = $8 \
     AND (expires_at IS NULL OR expires_at > $6) \
     AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS f WHERE f.family = r.family AND f.revoked) \
     AND ($7::TEXT IS NULL OR EXISTS (SELECT 1 FROM refresh_tokens AS s \
          WHERE s.hash = $7 AND s.family = r.family AND NOT s.rotated AND NOT s.revoked \
          AND (s.expires_at IS NULL OR s.expires_at > $6)))";

pub async fn retry(mut client: Object, retry: RotationRetry) -> Result<RetryOutcome, StoreError> {
    let old = &retry.replaces;
    let tx = client.transaction().await?;
    let statement = tx.prepare_cached(LOCK_FAMILY_OF_TOKEN).await?;
    let locked = tx
        .query_opt(&statement, &[&FAMILY_LOCK, &retry.presented])
        .await?;
    if locked.is_none() {
        tx.rollback().await?;
        return Ok(RetryOutcome::Stale);
    }
    let statement = tx.prepare_cached(REPOINT).await?;
    let changed = tx
        .execute(
            &statement,
            &[
                &retry.next.as_ref().map(|n| n.hash.as_str()),
                &retry.access.id,
                &retry.presented,
                &to_sql(old.at),
                &to_sql(retry.interval),
                &to_sql(retry.now),
                &old.refresh,
                &old.access,
            ],
        )
        .await?;
    if changed != 1 {
        tx.rollback().await?;
        return Ok(RetryOutcome::Stale);
    }
    // Spent, with no rotation of its own (not revoked: a revoked refresh
    // token marks its family revoked as a whole, and this family lives
    // on): presenting it is reuse, and revoking it revokes the family.
    if let Some(lost) = &old.refresh {
        tx.execute(
            "UPDATE refresh_tokens SET rotated = TRUE, rotated_at = NULL, successor = NULL, \
             successor_access = NULL WHERE hash = $1",
            &[lost],
        )
        .await?;
    }
    tx.execute(
        "UPDATE access_tokens SET revoked = TRUE WHERE id = $1",
        &[&old.access],
    )
    .await?;
    insert_access(&tx, &retry.access).await?;
    if let Some(next) = &retry.next {
        insert_refresh(&tx, next).await?;
    }
    tx.commit().await?;
    Ok(RetryOutcome::Replaced)
}
