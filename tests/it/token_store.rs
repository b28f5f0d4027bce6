//! The token store's rules, one body per rule, run against SQLite and
//! against a real PostgreSQL server. "Replicas" are several store instances
//! on one file or one database, used from several threads at once.

use std::sync::{Arc, Barrier};

use microgateway::authz_server::store::{
    AccessTokenRecord, CodeRecord, CodeTake, KnownKey, RefreshTokenRecord, Removed, RetryOutcome,
    Rotated, Rotation, RotationRetry, SessionRecord, TokenStore,
};
use microgateway::authz_server::TokenFormat;

use crate::common::postgres::Postgres;

/// Opens one more instance (replica) of the store under test.
type Open<'a> = &'a (dyn Fn() -> Box<dyn TokenStore> + Sync);

macro_rules! against_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("oauth.db");
                    let open = move || -> Box<dyn microgateway::authz_server::store::TokenStore> {
                        Box::new(microgateway::authz_server::store::SqliteStore::open(&path).unwrap())
                    };
                    super::$name(&open);
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    let pg = crate::common::postgres::Postgres::shared();
                    let database = pg.create_database();
                    let open = || -> Box<dyn microgateway::authz_server::store::TokenStore> {
                        Box::new(pg.open_store(&database))
                    };
                    super::$name(&open);
                }
            )*
        }
    };
}

against_both!(
    a_refresh_token_rotates_once,
    remove_expired_keeps_live_families,
    a_code_is_spent_once,
    a_spent_code_is_kept_while_its_tokens_live,
    an_expired_code_is_not_spent,
    concurrent_redemptions_of_a_code_have_one_winner,
    a_code_is_redeemed_with_its_tokens_or_not_at_all,
    concurrent_redeems_of_a_code_store_one_grant,
    concurrent_rotations_of_a_refresh_token_have_one_winner,
    a_rotation_is_retried_within_its_interval_only,
    concurrent_retries_of_a_rotation_have_one_winner,
    revocation_is_seen_by_every_replica_at_once,
    tokens_are_listed_and_deleted,
    the_newest_tokens_of_each_kind_are_listed,
    known_keys_are_newest_first,
);

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

fn code(hash: &str) -> CodeRecord {
    CodeRecord {
        hash: hash.into(),
        client_id: "app".into(),
        redirect_uri: "http://localhost/cb".into(),
        redirect_uri_given: false,
        code_challenge: Some("challenge".into()),
        code_challenge_method: Some("S256".into()),
        scope: "view".into(),
        username: "alice".into(),
        expires_at: 200,
    }
}

fn a_refresh_token_rotates_once(open: Open) {
    let store = open();
    store
        .insert_grant(
            &access("a1", Some(200), Some("f")),
            Some(&refresh("r1", "f")),
        )
        .unwrap();
    let next = RefreshTokenRecord {
        refreshes_used: 1,
        ..refresh("r2", "f")
    };
    assert_eq!(
        store
            .rotate_refresh_token("r1", &access("a2", Some(300), Some("f")), Some(&next))
            .unwrap(),
        Rotation::Rotated
    );
    assert_eq!(store.find_refresh_token("r2").unwrap(), Some(next));
    assert!(store.find_refresh_token("r1").unwrap().unwrap().rotated);
    assert_eq!(
        store
            .rotate_refresh_token("r1", &access("a3", Some(300), Some("f")), None)
            .unwrap(),
        Rotation::Stale
    );
    assert_eq!(store.find_access_token("a3").unwrap(), None);
    assert_eq!(store.revoke_family("f").unwrap(), 4);
    assert!(store.find_access_token("a2").unwrap().unwrap().revoked);
    assert_eq!(
        store
            .rotate_refresh_token("r2", &access("a4", Some(300), Some("f")), None)
            .unwrap(),
        Rotation::Stale,
        "a revoked token does not rotate"
    );
}

fn remove_expired_keeps_live_families(open: Open) {
    let store = open();
    store
        .insert_grant(&access("old", Some(150), None), None)
        .unwrap();
    store
        .insert_grant(
            &access("live", Some(500), Some("f")),
            Some(&refresh("r", "f")),
        )
        .unwrap();
    store
        .insert_grant(
            &access("gone", Some(150), Some("g")),
            Some(&refresh("s", "g")),
        )
        .unwrap();
    store.revoke_family("g").unwrap();
    store.put_code(&code("c")).unwrap();
    // Another replica removes.
    let removed = open().remove_expired(200).unwrap();
    assert_eq!(
        removed,
        Removed {
            access_tokens: 2,
            refresh_tokens: 1,
            authorization_codes: 1
        }
    );
    assert!(store.find_refresh_token("r").unwrap().is_some());
    assert!(store.find_access_token("live").unwrap().is_some());
    assert!(store.find_access_token("old").unwrap().is_none());
}

fn a_code_is_spent_once(open: Open) {
    let store = open();
    let code = code("h");
    store.put_code(&code).unwrap();
    assert_eq!(
        store.take_code("h", 100, "f").unwrap(),
        CodeTake::Fresh(code)
    );
    assert_eq!(
        store.take_code("h", 100, "g").unwrap(),
        CodeTake::Reused {
            family: Some("f".into()),
            client_id: "app".into(),
        }
    );
    assert_eq!(store.take_code("x", 100, "f").unwrap(), CodeTake::Unknown);
    assert_eq!(store.remove_expired(300).unwrap().authorization_codes, 1);
}

/// Expired, a spent code stays while its family has a live token: a
/// replay after a cleanup must still find it, and revoke them.
fn a_spent_code_is_kept_while_its_tokens_live(open: Open) {
    let store = open();
    store.put_code(&code("h")).unwrap();
    store.put_code(&code("unused")).unwrap();
    assert!(matches!(
        store.take_code("h", 100, "f").unwrap(),
        CodeTake::Fresh(_)
    ));
    store
        .insert_grant(&access("a", Some(500), Some("f")), Some(&refresh("r", "f")))
        .unwrap();
    // Another replica removes: the unused code goes, the spent one stays.
    assert_eq!(open().remove_expired(300).unwrap().authorization_codes, 1);
    assert_eq!(
        store.take_code("h", 300, "g").unwrap(),
        CodeTake::Reused {
            family: Some("f".into()),
            client_id: "app".into(),
        }
    );
    assert_eq!(store.revoke_family("f").unwrap(), 2);
    assert_eq!(store.remove_expired(300).unwrap().authorization_codes, 1);
    assert_eq!(store.take_code("h", 300, "g").unwrap(), CodeTake::Unknown);
}

fn an_expired_code_is_not_spent(open: Open) {
    let store = open();
    store.put_code(&code("h")).unwrap();
    assert_eq!(store.take_code("h", 200, "f").unwrap(), CodeTake::Expired);
    assert_eq!(store.take_code("h", 250, "f").unwrap(), CodeTake::Expired);
}

/// Runs `attempt(replica, i)` on `n` threads released at once, each with
/// one of two replicas.
fn race<T: Send>(
    replicas: &[Box<dyn TokenStore>; 2],
    n: usize,
    attempt: impl Fn(&dyn TokenStore, usize) -> T + Sync,
) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, attempt) = (&barrier, &attempt);
                let replica = replicas[i % 2].as_ref();
                scope.spawn(move || {
                    barrier.wait();
                    attempt(replica, i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn concurrent_redemptions_of_a_code_have_one_winner(open: Open) {
    let replicas = [open(), open()];
    for round in 0..20 {
        let hash = format!("code{round}");
        replicas[0].put_code(&code(&hash)).unwrap();
        let outcomes = race(&replicas, 8, |store, i| {
            store.take_code(&hash, 100, &format!("family{i}")).unwrap()
        });
        let winners: Vec<_> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| matches!(o, CodeTake::Fresh(_)))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {outcomes:?}");
        let family = format!("family{}", winners[0].0);
        for outcome in &outcomes {
            match outcome {
                CodeTake::Fresh(_) => {}
                CodeTake::Reused { family: bound, .. } => {
                    assert_eq!(bound.as_deref(), Some(family.as_str()), "round {round}")
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
}

/// A code is spent in the transaction that stores its tokens: a failure
/// storing them (here the refresh token's hash taken already) leaves the
/// code unspent and nothing stored, for a retry.
fn a_code_is_redeemed_with_its_tokens_or_not_at_all(open: Open) {
    let store = open();
    store.put_code(&code("h")).unwrap();
    store
        .insert_grant(
            &access("other", Some(500), Some("g")),
            Some(&refresh("taken", "g")),
        )
        .unwrap();
    assert_eq!(store.find_code("h", 100).unwrap(), Some(code("h")));
    let failed = store.redeem_code(
        "h",
        100,
        &access("a", Some(500), Some("f")),
        Some(&refresh("taken", "f")),
    );
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(store.find_access_token("a").unwrap(), None);
    assert_eq!(open().find_code("h", 100).unwrap(), Some(code("h")));
    assert!(store
        .redeem_code(
            "h",
            100,
            &access("a", Some(500), Some("f")),
            Some(&refresh("r", "f"))
        )
        .unwrap());
    assert!(store.find_access_token("a").unwrap().is_some());
    assert_eq!(store.find_code("h", 100).unwrap(), None);
    assert!(!open()
        .redeem_code("h", 100, &access("b", Some(500), Some("x")), None)
        .unwrap());
    assert_eq!(
        store.take_code("h", 100, "y").unwrap(),
        CodeTake::Reused {
            family: Some("f".into()),
            client_id: "app".into(),
        }
    );
    // Expired, a code is neither found nor redeemed.
    store.put_code(&code("late")).unwrap();
    assert_eq!(store.find_code("late", 200).unwrap(), None);
    assert!(!store
        .redeem_code("late", 200, &access("c", Some(500), Some("z")), None)
        .unwrap());
    assert_eq!(store.find_access_token("c").unwrap(), None);
}

fn concurrent_redeems_of_a_code_store_one_grant(open: Open) {
    let replicas = [open(), open()];
    for round in 0..20 {
        let hash = format!("redeemed{round}");
        replicas[0].put_code(&code(&hash)).unwrap();
        let outcomes = race(&replicas, 8, |store, i| {
            let id = format!("a{round}-{i}");
            let family = format!("f{round}-{i}");
            store
                .redeem_code(&hash, 100, &access(&id, Some(500), Some(&family)), None)
                .unwrap()
        });
        assert_eq!(
            outcomes.iter().filter(|won| **won).count(),
            1,
            "round {round}: {outcomes:?}"
        );
        for (i, won) in outcomes.iter().enumerate() {
            let stored = replicas[1]
                .find_access_token(&format!("a{round}-{i}"))
                .unwrap();
            assert_eq!(stored.is_some(), *won, "round {round}, redeem {i}");
        }
    }
}

fn concurrent_rotations_of_a_refresh_token_have_one_winner(open: Open) {
    let replicas = [open(), open()];
    for round in 0..20 {
        let family = format!("f{round}");
        let presented = format!("r{round}");
        replicas[0]
            .insert_grant(
                &access(&format!("a{round}"), Some(500), Some(&family)),
                Some(&refresh(&presented, &family)),
            )
            .unwrap();
        let outcomes = race(&replicas, 8, |store, i| {
            let next = refresh(&format!("r{round}-{i}"), &family);
            store
                .rotate_refresh_token(
                    &presented,
                    &access(&format!("a{round}-{i}"), Some(500), Some(&family)),
                    Some(&next),
                )
                .unwrap()
        });
        let rotated = outcomes.iter().filter(|o| **o == Rotation::Rotated).count();
        assert_eq!(rotated, 1, "round {round}: {outcomes:?}");
        // Exactly one successor exists.
        let successors = (0..8)
            .filter(|i| {
                replicas[1]
                    .find_refresh_token(&format!("r{round}-{i}"))
                    .unwrap()
                    .is_some()
            })
            .count();
        assert_eq!(successors, 1, "round {round}");
    }
}

/// Grant `a0`/`r0` of `family`, rotated at 100 into `a1`/`r1`, all of
/// the family ending at 1000: what `r0`'s rotation is recorded as.
fn rotated_grant(store: &dyn TokenStore, family: &str) -> Rotated {
    let token = |name: &str| format!("{family}-{name}");
    let first = RefreshTokenRecord {
        expires_at: Some(1000),
        ..refresh(&token("r0"), family)
    };
    store
        .insert_grant(&access(&token("a0"), Some(500), Some(family)), Some(&first))
        .unwrap();
    let next = RefreshTokenRecord {
        hash: token("r1"),
        refreshes_used: 1,
        ..first.clone()
    };
    assert_eq!(
        store
            .rotate_refresh_token(
                &token("r0"),
                &access(&token("a1"), Some(500), Some(family)),
                Some(&next),
            )
            .unwrap(),
        Rotation::Rotated
    );
    let rotated = store
        .find_refresh_token(&token("r0"))
        .unwrap()
        .unwrap()
        .rotated_into
        .expect("the rotation is recorded");
    assert_eq!(
        rotated,
        Rotated {
            at: 100,
            refresh: Some(token("r1")),
            access: token("a1"),
        }
    );
    rotated
}

/// A retry of `family`'s first rotation at `now`, issuing `a{n}`/`r{n}`.
fn retry_of(family: &str, replaces: &Rotated, now: u64, n: &str) -> RotationRetry {
    RotationRetry {
        presented: format!("{family}-r0"),
        replaces: replaces.clone(),
        interval: 30,
        now,
        access: access(&format!("{family}-a{n}"), Some(500), Some(family)),
        next: Some(RefreshTokenRecord {
            refreshes_used: 1,
            expires_at: Some(1000),
            ..refresh(&format!("{family}-r{n}"), family)
        }),
    }
}

/// A rotation is retried while `now < rotated_at + interval`: its access
/// token is revoked, its refresh token gone, the new ones stored and the
/// presented token pointed at them (its rotation time kept). Past the
/// interval, once the successor is used, or in a revoked family: nothing.
fn a_rotation_is_retried_within_its_interval_only(open: Open) {
    let store = open();
    let rotated = rotated_grant(store.as_ref(), "f");
    assert_eq!(
        store
            .retry_rotation(&retry_of("f", &rotated, 130, "x"))
            .unwrap(),
        RetryOutcome::Stale,
        "30 s after the rotation the window has ended"
    );
    assert!(store.find_refresh_token("f-r1").unwrap().is_some());
    assert_eq!(
        store
            .retry_rotation(&retry_of("f", &rotated, 129, "2"))
            .unwrap(),
        RetryOutcome::Replaced
    );
    assert!(superseded(store.as_ref(), "f-r1"));
    assert!(store.find_access_token("f-a1").unwrap().unwrap().revoked);
    assert!(!store.find_access_token("f-a2").unwrap().unwrap().revoked);
    let presented = store.find_refresh_token("f-r0").unwrap().unwrap();
    assert!(presented.rotated && !presented.revoked);
    let again = Rotated {
        at: 100,
        refresh: Some("f-r2".into()),
        access: "f-a2".into(),
    };
    assert_eq!(presented.rotated_into, Some(again.clone()));
    assert_eq!(
        store
            .find_refresh_token("f-r2")
            .unwrap()
            .unwrap()
            .refreshes_used,
        1
    );
    // A retry of the retry, while the new successor is unused.
    assert_eq!(
        store
            .retry_rotation(&retry_of("f", &again, 110, "3"))
            .unwrap(),
        RetryOutcome::Replaced
    );
    // The successor used: the rotation is history.
    assert_eq!(
        store
            .rotate_refresh_token("f-r3", &access("f-a4", Some(500), Some("f")), None)
            .unwrap(),
        Rotation::Rotated
    );
    let used = store
        .find_refresh_token("f-r0")
        .unwrap()
        .unwrap()
        .rotated_into
        .unwrap();
    assert_eq!(
        store
            .retry_rotation(&retry_of("f", &used, 110, "5"))
            .unwrap(),
        RetryOutcome::Stale
    );
    assert_eq!(store.find_access_token("f-a5").unwrap(), None);

    let rotated = rotated_grant(store.as_ref(), "g");
    store.revoke_family("g").unwrap();
    assert_eq!(
        store
            .retry_rotation(&retry_of("g", &rotated, 110, "2"))
            .unwrap(),
        RetryOutcome::Stale
    );
    assert_eq!(store.find_refresh_token("g-r2").unwrap(), None);
}

/// Retries of one rotation at once on two replicas: one replaces it, the
/// others find it replaced; one successor exists.
fn concurrent_retries_of_a_rotation_have_one_winner(open: Open) {
    let replicas = [open(), open()];
    for round in 0..10 {
        let family = format!("f{round}");
        let rotated = rotated_grant(replicas[0].as_ref(), &family);
        let outcomes = race(&replicas, 6, |store, i| {
            store
                .retry_rotation(&retry_of(&family, &rotated, 110, &format!("x{i}")))
                .unwrap()
        });
        let replaced = outcomes
            .iter()
            .filter(|o| **o == RetryOutcome::Replaced)
            .count();
        assert_eq!(replaced, 1, "round {round}: {outcomes:?}");
        let live: Vec<_> = (0..6)
            .filter(|i| {
                replicas[1]
                    .find_refresh_token(&format!("{family}-rx{i}"))
                    .unwrap()
                    .is_some()
            })
            .collect();
        assert_eq!(live.len(), 1, "round {round}");
        assert!(superseded(replicas[1].as_ref(), &format!("{family}-r1")));
    }
}

/// The refresh token a retried rotation had issued: spent (rotated), not
/// revoked, with no rotation of its own that could be retried.
fn superseded(store: &dyn TokenStore, hash: &str) -> bool {
    let record = store
        .find_refresh_token(hash)
        .unwrap()
        .expect("the replaced refresh token is kept");
    record.rotated && !record.revoked && record.rotated_into.is_none()
}

fn revocation_is_seen_by_every_replica_at_once(open: Open) {
    let (one, other) = (open(), open());
    one.insert_grant(&access("a", Some(500), None), None)
        .unwrap();
    assert!(!other.find_access_token("a").unwrap().unwrap().revoked);
    assert!(one.revoke_access_token("a").unwrap());
    assert!(other.find_access_token("a").unwrap().unwrap().revoked);
    assert!(!one.revoke_access_token("nope").unwrap());
}

fn tokens_are_listed_and_deleted(open: Open) {
    let store = open();
    store
        .insert_grant(&access("a", Some(500), Some("f")), Some(&refresh("r", "f")))
        .unwrap();
    let listed = store.list_tokens(100).unwrap();
    let kinds: Vec<_> = listed.iter().map(|t| (t.id.as_str(), t.kind)).collect();
    assert_eq!(kinds, [("a", "access_token"), ("r", "refresh_token")]);
    assert!(open().delete_token("r").unwrap());
    assert!(!store.delete_token("r").unwrap());
    assert!(store.find_refresh_token("r").unwrap().is_none());
    assert_eq!(store.list_tokens(100).unwrap().len(), 1);
}

/// A listing holds the most recently issued of each kind, oldest first.
fn the_newest_tokens_of_each_kind_are_listed(open: Open) {
    let store = open();
    for (id, issued_at) in [("old", 100), ("mid", 200), ("new", 300)] {
        let token = AccessTokenRecord {
            issued_at,
            ..access(id, Some(500), None)
        };
        store.insert_grant(&token, None).unwrap();
    }
    store
        .insert_grant(
            &access("with-refresh", Some(500), Some("f")),
            Some(&refresh("r", "f")),
        )
        .unwrap();
    let listed = store.list_tokens(2).unwrap();
    let ids: Vec<_> = listed.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["mid", "new", "r"]);
}

fn known_keys_are_newest_first(open: Open) {
    let store = open();
    let key = |kid: &str, first_seen| KnownKey {
        kid: kid.into(),
        jwk: format!("{{\"kid\":\"{kid}\"}}"),
        first_seen,
    };
    store.record_key(&key("old", 10)).unwrap();
    store.record_key(&key("new", 20)).unwrap();
    open().record_key(&key("old", 30)).unwrap();
    let kids: Vec<_> = store
        .known_keys()
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["new", "old"]);
}

/// Two replicas starting at once on an empty database: both open, the
/// schema is migrated exactly once.
#[test]
fn postgres_migrations_run_once_when_replicas_start_together() {
    let pg = Postgres::shared();
    let database = pg.create_database();
    let barrier = Arc::new(Barrier::new(4));
    std::thread::scope(|scope| {
        for _ in 0..4 {
            let (barrier, pg, database) = (barrier.clone(), &pg, &database);
            scope.spawn(move || {
                barrier.wait();
                pg.open_store(database)
            });
        }
    });
    let applied = pg.psql(&database, "SELECT count(*) FROM microgateway_migrations");
    assert_eq!(
        applied,
        microgateway::authz_server::store::POSTGRES_MIGRATIONS
            .len()
            .to_string()
    );
}

/// A database at the first schema version (before the approval page's
/// sessions moved into it, and before rotations were recorded) is brought
/// to the current one when a store opens it, its rows kept.
#[test]
fn postgres_a_database_of_the_first_version_gains_the_sessions_table() {
    let pg = Postgres::shared();
    let database = pg.create_database();
    let store = pg.open_store(&database);
    store
        .insert_grant(
            &access("kept", Some(500), Some("f")),
            Some(&refresh("r", "f")),
        )
        .unwrap();
    drop(store);
    pg.psql(
        &database,
        "DROP TABLE approval_sessions; DROP INDEX failed_attempts_window_start; \
         ALTER TABLE refresh_tokens DROP COLUMN rotated_at, DROP COLUMN successor, \
           DROP COLUMN successor_access; \
         DELETE FROM microgateway_migrations WHERE version > 1",
    );
    let store = pg.open_store(&database);
    assert!(store.find_access_token("kept").unwrap().is_some());
    assert_eq!(
        store.find_refresh_token("r").unwrap(),
        Some(refresh("r", "f"))
    );
    store
        .rotate_refresh_token("r", &access("next", Some(500), Some("f")), None)
        .unwrap();
    assert_eq!(
        store.find_refresh_token("r").unwrap().unwrap().rotated_into,
        Some(Rotated {
            at: 100,
            refresh: None,
            access: "next".into(),
        })
    );
    store
        .session_insert(&session("s", None, 1000), None, 10, 0)
        .unwrap();
    assert!(store.session_find("s", 1).unwrap().is_some());
    assert_eq!(
        pg.psql(
            &database,
            "SELECT max(version) FROM microgateway_migrations"
        ),
        microgateway::authz_server::store::POSTGRES_MIGRATIONS
            .len()
            .to_string()
    );
}

/// A database unreachable at start: not ready, calls fail as unavailable,
/// ready once it is up; a restart under a ready store fails the calls
/// made during it and nothing after.
#[test]
fn postgres_store_is_not_ready_until_the_database_is_reached() {
    let pg = Postgres::start();
    let database = pg.create_database();
    pg.stop();
    let store =
        microgateway::authz_server::store::PostgresStore::open(&pg.settings(&database)).unwrap();
    assert!(!store.is_ready());
    assert!(matches!(
        store.find_access_token("a"),
        Err(microgateway::authz_server::store::StoreError::Unavailable(
            _
        ))
    ));
    pg.resume();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !store.is_ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store became ready"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(100));
    }
    store
        .insert_grant(&access("a", Some(500), None), None)
        .unwrap();
    // Restarted under it: calls fail as unavailable, then work again.
    pg.stop();
    assert!(matches!(
        store.find_access_token("a"),
        Err(microgateway::authz_server::store::StoreError::Unavailable(
            _
        ))
    ));
    pg.resume();
    assert!(store.find_access_token("a").unwrap().is_some());
}

/// Windows of failures that ended a window ago and more are deleted by
/// the failures counted after them, with no cleanup run: the subjects are
/// anyone's to name, and the table stays at about two windows of them.
#[test]
fn postgres_failures_delete_the_windows_long_ended() {
    let pg = Postgres::shared();
    let database = pg.create_database();
    let store = pg.open_store(&database);
    let rows = || pg.psql(&database, "SELECT count(*) FROM failed_attempts");
    for n in 0..20 {
        store
            .attempts_record_failure(&format!("user:guess-{n}"), 60, 100)
            .unwrap();
    }
    store
        .attempts_record_failure("user:recent", 60, 200)
        .unwrap();
    assert_eq!(rows(), "21", "not ended a window ago");
    store.attempts_record_failure("user:next", 60, 220).unwrap();
    assert_eq!(rows(), "6", "sixteen of the oldest went");
    store.attempts_record_failure("user:next", 60, 221).unwrap();
    assert_eq!(
        pg.psql(
            &database,
            "SELECT string_agg(subject || '=' || failures, ' ' ORDER BY subject) \
             FROM failed_attempts"
        ),
        "user:next=2 user:recent=1"
    );
}

/// Failed password attempts counted on two replicas lock on both, a
/// user's and an address's alike.
#[test]
fn postgres_failed_attempts_are_shared_by_replicas() {
    use microgateway::authz_server::grants::attempts::{FailedAttempts, Source, Subject};
    use microgateway::lockout::AddressKey;
    let pg = Postgres::shared();
    let database = pg.create_database();
    let one = FailedAttempts::shared(Arc::new(pg.open_store(&database)));
    let other = FailedAttempts::shared(Arc::new(pg.open_store(&database)));
    let alice = Subject::User("alice".into());
    for (i, replica) in [&one, &other, &one, &other, &one].into_iter().enumerate() {
        assert_eq!(replica.check(&alice, 100), Ok(()), "failure {i}");
        replica.record_failure(&alice, 100);
    }
    assert_eq!(other.check(&alice, 110), Err(50));
    assert_eq!(other.check(&Subject::User("bob".into()), 110), Ok(()));
    assert_eq!(other.check(&alice, 160), Ok(()), "the window ended");
    other.clear(&alice);
    let address = Subject::Client(Source::Address(AddressKey::of(
        "192.0.2.1".parse().unwrap(),
    )));
    for replica in [&one, &other].repeat(10) {
        assert_eq!(replica.check(&address, 100), Ok(()));
        replica.record_failure(&address, 100);
    }
    assert_eq!(one.check(&address, 110), Err(50));
    let elsewhere = Subject::Client(Source::Address(AddressKey::of(
        "192.0.2.2".parse().unwrap(),
    )));
    assert_eq!(one.check(&elsewhere, 110), Ok(()));

    // Failures a replica recorded with its clock an hour ahead lock for
    // at most two windows on the others, not for the hour; seconds of
    // skew between replicas still count together.
    let carol = Subject::User("carol".into());
    for _ in 0..5 {
        one.record_failure(&carol, 3_700);
    }
    assert_eq!(other.check(&carol, 100), Ok(()), "an hour behind");
    let dave = Subject::User("dave".into());
    for (i, (replica, now)) in [(&one, 102), (&other, 100), (&one, 102), (&other, 100)]
        .into_iter()
        .enumerate()
    {
        replica.record_failure(&dave, now);
        assert_eq!(replica.check(&dave, now), Ok(()), "failure {i}");
    }
    other.record_failure(&dave, 100);
    assert_eq!(
        other.check(&dave, 100),
        Err(62),
        "2 s of skew count together"
    );
}

/// A replica whose clock runs an hour ahead deletes, in its cleanups and
/// its session inserts, only what has expired by the database's clock
/// too (give or take 5 minutes), not what expires within its hour.
#[test]
fn postgres_a_replica_ahead_deletes_only_what_the_database_sees_expired() {
    let pg = Postgres::shared();
    let database = pg.create_database();
    let store = pg.open_store(&database);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ahead = now + 3600;
    store
        .insert_grant(&access("live", Some(now + 1800), None), None)
        .unwrap();
    store
        .insert_grant(&access("gone", Some(now + 60), None), None)
        .unwrap();
    store.remove_expired(ahead).unwrap();
    assert!(store.find_access_token("live").unwrap().is_some());
    assert_eq!(
        store.find_access_token("gone").unwrap(),
        None,
        "within the skew"
    );

    store
        .session_insert(&session("browser", None, now + 600), None, 100, now)
        .unwrap();
    store
        .session_insert(&session("other", None, ahead + 600), None, 100, ahead)
        .unwrap();
    assert!(store.session_find("browser", now).unwrap().is_some());
}

fn session(hash: &str, user: Option<&str>, expires_at: u64) -> SessionRecord {
    SessionRecord {
        hash: hash.into(),
        csrf_token: format!("csrf-{hash}"),
        user: user.map(str::to_owned),
        credential: user.map(|user| format!("credential-of-{user}")),
        expires_at,
    }
}

/// The approval page's sessions in a store two replicas share: what one
/// stores the other finds; past the capacity (3 here) the oldest anonymous
/// session makes room, never a signed-in one while an anonymous one is
/// left; a login replaces its session in the same step; an expired session
/// is never found, and is deleted when looked up, by the next insert or by
/// `remove_expired`.
#[test]
fn postgres_sessions_are_shared_bounded_and_expire() {
    let pg = Postgres::shared();
    let database = pg.create_database();
    let (one, other) = (pg.open_store(&database), pg.open_store(&database));
    let hashes = || {
        pg.psql(
            &database,
            "SELECT string_agg(hash, ' ' ORDER BY hash) FROM approval_sessions",
        )
    };
    one.session_insert(&session("alice", Some("alice"), 1100), None, 3, 500)
        .unwrap();
    for (i, hash) in ["anon1", "anon2", "anon3"].into_iter().enumerate() {
        other
            .session_insert(&session(hash, None, 1101 + i as u64), None, 3, 501)
            .unwrap();
    }
    assert_eq!(hashes(), "alice anon2 anon3");
    let found = other.session_find("alice", 600).unwrap().expect("shared");
    assert_eq!(found, session("alice", Some("alice"), 1100));
    assert!(one.session_find("anon1", 600).unwrap().is_none());

    // Login: anon2 becomes bob's session, nothing else goes.
    one.session_insert(&session("bob", Some("bob"), 1200), Some("anon2"), 3, 600)
        .unwrap();
    assert_eq!(hashes(), "alice anon3 bob");
    // Only signed-in sessions left to push out: the oldest goes.
    one.session_insert(
        &session("carol", Some("carol"), 1201),
        Some("anon3"),
        3,
        601,
    )
    .unwrap();
    one.session_insert(&session("dave", Some("dave"), 1202), None, 3, 602)
        .unwrap();
    assert_eq!(hashes(), "bob carol dave");

    // Expired at its expiry second: not found, and deleted.
    assert!(other.session_find("bob", 1200).unwrap().is_none());
    assert_eq!(hashes(), "carol dave");
    // An insert purges every expired session.
    other
        .session_insert(&session("erin", None, 2000), None, 3, 1201)
        .unwrap();
    assert_eq!(hashes(), "dave erin");
    one.session_delete("erin").unwrap();
    assert_eq!(hashes(), "dave");
    one.remove_expired(1202).unwrap();
    assert_eq!(hashes(), "");
}

/// A store not shared by replicas keeps no sessions: each process does.
#[test]
fn sqlite_keeps_no_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        microgateway::authz_server::store::SqliteStore::open(&dir.path().join("oauth.db")).unwrap();
    assert!(!store.is_shared());
    assert!(matches!(
        store.session_find("x", 0),
        Err(microgateway::authz_server::store::StoreError::SessionsNotKept)
    ));
}
