//! [`TokenStore`] on a PostgreSQL database that any number of gateway
//! replicas share; the schema is in `postgres_schema`.
//!
//! Every rule that holds for one SQLite file holds across replicas because
//! each decision is one conditional statement or one transaction holding a
//! lock, never a read then a write: a code is spent by one `UPDATE …
//! RETURNING`, a refresh token rotates by an `UPDATE … WHERE NOT rotated`
//! in the transaction that stores its successor, and a retry of that
//! rotation (`retry`) replaces what it issued by an `UPDATE` that names
//! what it read. A family's rotations, their retries and its revocation
//! exclude each other through a transaction-scoped advisory lock on the
//! family, so a revocation never misses a token that a
//! rotation racing it stored. Introspection is one `SELECT` by primary key.
//! The approval page's browser sessions are rows here too
//! (`sessions`), so a browser's requests may reach any replica.
//!
//! The trait is blocking (callers are on the blocking pool); the store
//! drives its async driver on a runtime of its own, one thread, so it can
//! be called from any thread outside an async context. Every call is
//! bounded by [`OPERATION_TIMEOUT`]; once one ran out of time, calls fail
//! at once until the database answers again (`silence`). A database that
//! cannot be reached —
//! at start or later — makes calls fail with [`StoreError::Unavailable`]
//! (the endpoints answer 503 `temporarily_unavailable`); the pool opens
//! new connections as soon as it is back, and a store that could not
//! migrate at start keeps retrying in the background with a bounded
//! backoff, not ready until it has.

mod retry;
mod sessions;
mod silence;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::Row;

use self::silence::Silence;
use super::postgres_schema;
use super::{
    AccessTokenRecord, CodeRecord, CodeTake, KnownKey, RefreshTokenRecord, Removed, RetryOutcome,
    Rotated, Rotation, RotationRetry, SessionRecord, StoreError, TokenStore, TokenSummary,
};
use crate::authz_server::settings::TokenFormat;
use crate::config::authz::{PgTls, PostgresStore as PgSettings};

/// Longest any one store call may take, waiting for a connection included.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Failure windows long ended that each failure counted deletes at most:
/// more than it adds, so they never pile up.
const ENDED_PER_FAILURE: i64 = 16;

/// How far a replica's clock may run ahead of the database's before its
/// cleanups stop at the database's (seconds).
const CLOCK_SKEW: i64 = 300;

/// Longest wait between two attempts to reach the database at start.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct PostgresStore {
    /// `Some` until dropped: a runtime cannot be dropped inside an async
    /// context, so `Drop` shuts it down in the background.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// The schema is migrated: calls may run.
    ready: Arc<AtomicBool>,
    /// Whether the database answers calls in time.
    silence: Arc<Silence>,
    display: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.display)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PostgresStore {
    /// Builds the pool and migrates. A database that cannot be reached is
    /// no error: the store starts not ready and keeps trying (see
    /// [`is_ready`](TokenStore::is_ready)). Other failures (a schema newer
    /// than this program, a refused login) are errors.
    pub fn open(settings: &PgSettings) -> Result<PostgresStore, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store runtime: {e}")))?;
        let pool = {
            let _entered = runtime.enter();
            pool(settings)?
        };
        let store = PostgresStore {
            runtime: Some(runtime),
            pool,
            ready: Arc::new(AtomicBool::new(false)),
            silence: Arc::default(),
            display: settings.display(),
        };
        let first = store.block_on(migrate(store.pool.clone()));
        match first {
            Ok(()) => store.ready.store(true, Ordering::Release),
            Err(StoreError::Unavailable(reason)) => {
                tracing::warn!(store = %store.display, %reason, "token store unreachable; not ready, retrying");
                let (pool, ready, display) = (
                    store.pool.clone(),
                    store.ready.clone(),
                    store.display.clone(),
                );
                store
                    .runtime()
                    .spawn(migrate_until_done(pool, ready, display));
            }
            Err(error) => return Err(error),
        }
        Ok(store)
    }

    #[allow(
        clippy::expect_used,
        reason = "the runtime is only taken by Drop, after which no method runs"
    )]
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime present until drop")
    }

    /// Runs `future` on the store's runtime, bounded by
    /// [`OPERATION_TIMEOUT`], and waits for it on this thread. Works from
    /// any thread, a runtime's worker included (the gateway opens its
    /// store there), as SQLite's calls block wherever they are made.
    /// While the database is silent (a call ran out of time and it has
    /// not answered since) calls fail at once.
    fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.silence.is_silent() {
            return Err(StoreError::Unavailable(
                "the database has not answered since a call ran out of time".into(),
            ));
        }
        let (send, receive) = std::sync::mpsc::sync_channel(1);
        self.runtime().spawn(async move {
            let _ = send.send(tokio::time::timeout(OPERATION_TIMEOUT, future).await.ok());
        });
        let outcome = match receive.recv_timeout(OPERATION_TIMEOUT + Duration::from_secs(1)) {
            Ok(outcome) => outcome,
            // The call panicked (data it could not read): no silence.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(StoreError::Unavailable(
                    "the store call ended without an outcome".into(),
                ))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
        };
        if !answered(&outcome) {
            silence::ran_out_of_time(&self.silence, self.runtime(), &self.pool, &self.display);
        }
        outcome.unwrap_or_else(|| {
            Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            ))
        })
    }

    /// One call with a pooled connection, once the schema is migrated.
    fn with<T, F, Fut>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        if !self.ready.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "the database has not been reached yet".into(),
            ));
        }
        let pool = self.pool.clone();
        self.block_on(async move {
            let client = pool.get().await.map_err(pool_error)?;
            job(client).await
        })
    }
}

async fn migrate(pool: Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    postgres_schema::migrate(&mut client).await
}

async fn migrate_until_done(pool: Pool, ready: Arc<AtomicBool>, database: String) {
    let mut backoff = Duration::from_millis(250);
    loop {
        tokio::time::sleep(backoff).await;
        match tokio::time::timeout(OPERATION_TIMEOUT, migrate(pool.clone())).await {
            Ok(Ok(())) => {
                ready.store(true, Ordering::Release);
                tracing::info!(store = %database, "token store reached; ready");
                return;
            }
            Ok(Err(error)) => {
                tracing::warn!(store = %database, %error, "token store still unreachable")
            }
            Err(_) => tracing::warn!(store = %database, "token store did not answer in time"),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn pool(settings: &PgSettings) -> Result<Pool, StoreError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&settings.host)
        .port(settings.port)
        .user(&settings.user)
        .dbname(&settings.dbname)
        .application_name("microgateway")
        // A statement the gateway gave up on (its call past
        // OPERATION_TIMEOUT) is ended by the server soon after, not left
        // running, or waiting for a lock, on a connection back in the pool.
        .options(server_bounds())
        .connect_timeout(settings.connect_timeout)
        .keepalives(true)
        .ssl_mode(match settings.tls {
            PgTls::Disable => SslMode::Disable,
            PgTls::Require | PgTls::VerifyFull => SslMode::Require,
        });
    if let Some(password) = &settings.password {
        config.password(password.expose());
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match settings.tls {
        PgTls::Disable => Manager::from_config(config, tokio_postgres::NoTls, manager_config),
        PgTls::Require | PgTls::VerifyFull => {
            let tls = tls_config(settings)?;
            Manager::from_config(
                config,
                tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                manager_config,
            )
        }
    };
    Pool::builder(manager)
        .max_size(settings.max_connections)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(settings.connect_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .build()
        .map_err(|e| StoreError::Unavailable(format!("connection pool: {e}")))
}

/// `statement_timeout` and `lock_timeout` for every connection: a second
/// past [`OPERATION_TIMEOUT`], so that the gateway's own bound decides a
/// call and the server's ends what it abandoned.
fn server_bounds() -> String {
    let ms = OPERATION_TIMEOUT.as_millis() + 1000;
    format!("-c statement_timeout={ms} -c lock_timeout={ms}")
}

/// The same trust as upstreams: the system roots, or the bundle named by
/// `sslrootcert`; `require` skips the host name check only.
fn tls_config(settings: &PgSettings) -> Result<ClientConfig, StoreError> {
    let roots = match &settings.ca_bundle {
        Some(bundle) => crate::config::ca_bundle::roots(bundle),
        None => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            roots
        }
    };
    if roots.is_empty() {
        return Err(StoreError::Unavailable(
            "no usable CA certificate to verify the database with (sslrootcert)".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Unavailable(format!("TLS: {e}")))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| StoreError::Unavailable(format!("TLS: {e}")))?;
    let config = match settings.tls {
        PgTls::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
            .with_no_client_auth(),
        PgTls::Disable | PgTls::VerifyFull => {
            builder.with_webpki_verifier(verifier).with_no_client_auth()
        }
    };
    Ok(config)
}

/// `sslmode=require`: the chain must verify; the name need not match.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Why a call failed that had no connection in time: the database did
/// not answer a new connection, or a pooled one's check.
const NO_CONNECTION_IN_TIME: &str = "no database connection in time";

/// Whether the database answered a call that ended with `outcome`.
fn answered<T>(outcome: &Option<Result<T, StoreError>>) -> bool {
    match outcome {
        None => false,
        Some(Err(StoreError::Unavailable(reason))) => reason != NO_CONNECTION_IN_TIME,
        Some(_) => true,
    }
}

fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(error) => StoreError::from(error),
        // Every pooled connection busy with a call under way: a load, not
        // a silence (a database that holds those calls makes them run out
        // of time themselves).
        PoolError::Timeout(deadpool::managed::TimeoutType::Wait) => {
            StoreError::Unavailable("every database connection is busy".into())
        }
        PoolError::Timeout(_) => StoreError::Unavailable(NO_CONNECTION_IN_TIME.into()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl From<tokio_postgres::Error> for StoreError {
    /// A connection that failed or closed, or a server shutting down or
    /// refusing connections, is an outage (retry later); any other error
    /// the database reports is a failure.
    fn from(error: tokio_postgres::Error) -> StoreError {
        match error.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                let text = format!("{} {code}: {}", db.severity(), db.message());
                if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
                    StoreError::Unavailable(text)
                } else {
                    StoreError::Postgres(text)
                }
            }
            None => StoreError::Unavailable(error.to_string()),
        }
    }
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

/// PostgreSQL integers are signed; times and counters here never exceed i64.
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// First key of the two-key `pg_advisory_xact_lock` that a refresh family's
/// rotations and its revocation take ("mgfa" in ASCII); the second is
/// `hashtext(family)`. A collision only serialises two families.
pub const FAMILY_LOCK: i32 = 0x6d67_6661;

/// Takes the lock of the presented refresh token's family; no row when the
/// token is unknown.
const LOCK_FAMILY_OF_TOKEN: &str = "SELECT pg_advisory_xact_lock($1, hashtext(family)) \
     FROM refresh_tokens WHERE hash = $2";

const INSERT_ACCESS: &str = "INSERT INTO access_tokens (id, format, client_id, username, scope, \
     issued_at, expires_at, family, grant_type, revoked) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens (hash, family, client_id, username, \
     scope, refreshes_used, issued_at, expires_at, rotated, revoked, rotated_at, successor, \
     successor_access) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

async fn insert_access(
    client: &deadpool_postgres::Transaction<'_>,
    t: &AccessTokenRecord,
) -> Result<(), StoreError> {
    let statement = client.prepare_cached(INSERT_ACCESS).await?;
    client
        .execute(
            &statement,
            &[
                &t.id,
                &format_name(t.format),
                &t.client_id,
                &t.username,
                &t.scope,
                &to_sql(t.issued_at),
                &t.expires_at.map(to_sql),
                &t.family,
                &t.grant_type,
                &t.revoked,
            ],
        )
        .await?;
    Ok(())
}

async fn insert_refresh(
    client: &deadpool_postgres::Transaction<'_>,
    t: &RefreshTokenRecord,
) -> Result<(), StoreError> {
    let into = t.rotated_into.as_ref();
    let statement = client.prepare_cached(INSERT_REFRESH).await?;
    client
        .execute(
            &statement,
            &[
                &t.hash,
                &t.family,
                &t.client_id,
                &t.username,
                &t.scope,
                &i64::from(t.refreshes_used),
                &to_sql(t.issued_at),
                &t.expires_at.map(to_sql),
                &t.rotated,
                &t.revoked,
                &into.map(|r| to_sql(r.at)),
                &into.and_then(|r| r.refresh.as_deref()),
                &into.map(|r| r.access.as_str()),
            ],
        )
        .await?;
    Ok(())
}

const ACCESS_COLUMNS: &str =
    "id, format, client_id, username, scope, issued_at, expires_at, family, grant_type, revoked";

fn access_row(row: &Row) -> Result<AccessTokenRecord, StoreError> {
    Ok(AccessTokenRecord {
        id: row.try_get(0)?,
        format: parse_format(row.try_get(1)?)?,
        client_id: row.try_get(2)?,
        username: row.try_get(3)?,
        scope: row.try_get(4)?,
        issued_at: from_sql(row.try_get(5)?),
        expires_at: row.try_get::<_, Option<i64>>(6)?.map(from_sql),
        family: row.try_get(7)?,
        grant_type: row.try_get(8)?,
        revoked: row.try_get(9)?,
    })
}

const REFRESH_COLUMNS: &str = "hash, family, client_id, username, scope, refreshes_used, \
     issued_at, expires_at, rotated, revoked, rotated_at, successor, successor_access";

fn refresh_row(row: &Row) -> Result<RefreshTokenRecord, StoreError> {
    let rotated_at: Option<i64> = row.try_get(10)?;
    let successor_access: Option<String> = row.try_get(12)?;
    let rotated_into = match (rotated_at, successor_access) {
        (Some(at), Some(access)) => Some(Rotated {
            at: from_sql(at),
            refresh: row.try_get(11)?,
            access,
        }),
        _ => None,
    };
    Ok(RefreshTokenRecord {
        hash: row.try_get(0)?,
        family: row.try_get(1)?,
        client_id: row.try_get(2)?,
        username: row.try_get(3)?,
        scope: row.try_get(4)?,
        refreshes_used: u32::try_from(row.try_get::<_, i64>(5)?).unwrap_or(u32::MAX),
        issued_at: from_sql(row.try_get(6)?),
        expires_at: row.try_get::<_, Option<i64>>(7)?.map(from_sql),
        rotated: row.try_get(8)?,
        rotated_into,
        revoked: row.try_get(9)?,
    })
}

impl TokenStore for PostgresStore {
    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn keeps_signing_keys(&self) -> bool {
        true
    }

    fn current_signing_key(&self, settle: Duration) -> Result<Option<String>, StoreError> {
        let settle = i64::try_from(settle.as_secs()).unwrap_or(i64::MAX);
        self.with(move |client| async move {
            let row = client
                .query_opt(
                    "WITH settled AS \
                       (SELECT floor(extract(epoch FROM now()))::bigint - $1 AS at) \
                     SELECT pem FROM signing_private_keys, settled \
                     ORDER BY created_at <= settled.at DESC, \
                              CASE WHEN created_at <= settled.at THEN -seq ELSE seq END \
                     LIMIT 1",
                    &[&settle],
                )
                .await?;
            Ok(match row {
                Some(row) => Some(row.try_get(0)?),
                None => None,
            })
        })
    }

    fn add_signing_key(
        &self,
        kid: &str,
        pem: &str,
        only_first: bool,
    ) -> Result<String, StoreError> {
        let (kid, pem) = (kid.to_owned(), pem.to_owned());
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            // The migrations' lock: replicas starting together on an
            // empty store agree on one first key.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&postgres_schema::ADVISORY_LOCK],
            )
            .await?;
            if only_first {
                let existing = tx
                    .query_opt(
                        "SELECT pem FROM signing_private_keys ORDER BY seq DESC LIMIT 1",
                        &[],
                    )
                    .await?;
                if let Some(row) = existing {
                    let pem: String = row.try_get(0)?;
                    tx.commit().await?;
                    return Ok(pem);
                }
            }
            tx.execute(
                "INSERT INTO signing_private_keys (kid, pem, created_at) \
                 VALUES ($1, $2, floor(extract(epoch FROM now()))::bigint)",
                &[&kid, &pem],
            )
            .await?;
            tx.commit().await?;
            Ok(pem)
        })
    }

    fn attempts_locked(
        &self,
        subject: &str,
        limit: u32,
        window_secs: u64,
        now: u64,
    ) -> Result<Option<u64>, StoreError> {
        let subject = subject.to_owned();
        let (limit, window, now) = (
            i32::try_from(limit).unwrap_or(i32::MAX),
            to_sql(window_secs),
            to_sql(now),
        );
        self.with(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT window_start + $3 - $4 FROM failed_attempts \
                     WHERE subject = $1 AND failures >= $2 AND window_start + $3 > $4 \
                     AND window_start <= $4 + $3",
                    &[&subject, &limit, &window, &now],
                )
                .await?;
            Ok(match row {
                Some(row) => Some(from_sql(row.try_get(0)?)),
                None => None,
            })
        })
    }

    fn attempts_record_failure(
        &self,
        subject: &str,
        window_secs: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let subject = subject.to_owned();
        let (window, now) = (to_sql(window_secs), to_sql(now));
        self.with(move |client| async move {
            // One upsert under the row lock: concurrent failures on any
            // replicas all count.
            client
                .execute(
                    "INSERT INTO failed_attempts AS f (subject, window_start, failures) \
                     VALUES ($1, $2, 1) ON CONFLICT (subject) DO UPDATE SET \
                       failures = CASE WHEN f.window_start + $3 <= $2 \
                                         OR f.window_start > $2 + $3 THEN 1 \
                                       ELSE f.failures + 1 END, \
                       window_start = CASE WHEN f.window_start + $3 <= $2 \
                                             OR f.window_start > $2 + $3 THEN $2 \
                                           ELSE f.window_start END",
                    &[&subject, &now, &window],
                )
                .await?;
            // Anyone may name new subjects (addresses, user names), so
            // each failure also deletes up to `ENDED_PER_FAILURE` windows
            // that ended a window ago or more (replicas' clocks may differ
            // by less): the table holds about two windows of failures,
            // cleanup or not. A statement of its own, skipping rows others
            // hold, so that it never waits and no two replicas' failures
            // deadlock.
            let ended_before = now.saturating_sub(window.saturating_mul(2));
            client
                .execute(
                    "DELETE FROM failed_attempts WHERE subject IN \
                       (SELECT subject FROM failed_attempts WHERE window_start <= $1::BIGINT \
                        ORDER BY window_start LIMIT $2 FOR UPDATE SKIP LOCKED)",
                    &[&ended_before, &ENDED_PER_FAILURE],
                )
                .await?;
            Ok(())
        })
    }

    fn attempts_clear(&self, subject: &str) -> Result<(), StoreError> {
        let subject = subject.to_owned();
        self.with(move |client| async move {
            client
                .execute(
                    "DELETE FROM failed_attempts WHERE subject = $1",
                    &[&subject],
                )
                .await?;
            Ok(())
        })
    }

    fn session_find(&self, hash: &str, now: u64) -> Result<Option<SessionRecord>, StoreError> {
        let hash = hash.to_owned();
        self.with(move |client| sessions::find(client, hash, now))
    }

    fn session_insert(
        &self,
        session: &SessionRecord,
        replaces: Option<&str>,
        capacity: usize,
        now: u64,
    ) -> Result<(), StoreError> {
        let (session, replaces) = (session.clone(), replaces.map(str::to_owned));
        self.with(move |client| sessions::insert(client, session, replaces, capacity, now))
    }

    fn session_delete(&self, hash: &str) -> Result<(), StoreError> {
        let hash = hash.to_owned();
        self.with(move |client| sessions::delete(client, hash))
    }

    fn session_spend_csrf(
        &self,
        hash: &str,
        spent: &str,
        fresh: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let (hash, spent, fresh) = (hash.to_owned(), spent.to_owned(), fresh.to_owned());
        self.with(move |client| sessions::spend_csrf(client, hash, spent, fresh, now))
    }

    fn insert_grant(
        &self,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> Result<(), StoreError> {
        let (access, refresh) = (access.clone(), refresh.cloned());
        self.with(move |mut client| async move {
            let Some(refresh) = &refresh else {
                // One statement, one round trip (the hot path of JWT
                // and client credentials grants).
                let statement = client.prepare_cached(INSERT_ACCESS).await?;
                let t = &access;
                client
                    .execute(
                        &statement,
                        &[
                            &t.id,
                            &format_name(t.format),
                            &t.client_id,
                            &t.username,
                            &t.scope,
                            &to_sql(t.issued_at),
                            &t.expires_at.map(to_sql),
                            &t.family,
                            &t.grant_type,
                            &t.revoked,
                        ],
                    )
                    .await?;
                return Ok(());
            };
            let tx = client.transaction().await?;
            insert_access(&tx, &access).await?;
            insert_refresh(&tx, refresh).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn find_access_token(&self, id: &str) -> Result<Option<AccessTokenRecord>, StoreError> {
        let id = id.to_owned();
        self.with(move |client| async move {
            let sql = format!("SELECT {ACCESS_COLUMNS} FROM access_tokens WHERE id = $1");
            let statement = client.prepare_cached(&sql).await?;
            let row = client.query_opt(&statement, &[&id]).await?;
            row.as_ref().map(access_row).transpose()
        })
    }

    fn find_refresh_token(&self, hash: &str) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let hash = hash.to_owned();
        self.with(move |client| async move {
            let sql = format!("SELECT {REFRESH_COLUMNS} FROM refresh_tokens WHERE hash = $1");
            let statement = client.prepare_cached(&sql).await?;
            let row = client.query_opt(&statement, &[&hash]).await?;
            row.as_ref().map(refresh_row).transpose()
        })
    }

    fn rotate_refresh_token(
        &self,
        presented: &str,
        access: &AccessTokenRecord,
        next: Option<&RefreshTokenRecord>,
    ) -> Result<Rotation, StoreError> {
        let (presented, access, next) = (presented.to_owned(), access.clone(), next.cloned());
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            // The family's lock first: a revocation of the family (reuse
            // detected on any replica) waits for this rotation to commit,
            // then sees what it stored; or it went first, and the
            // presented token is revoked.
            let statement = tx.prepare_cached(LOCK_FAMILY_OF_TOKEN).await?;
            let locked = tx
                .query_opt(&statement, &[&FAMILY_LOCK, &presented])
                .await?;
            if locked.is_none() {
                tx.rollback().await?;
                return Ok(Rotation::Stale);
            }
            // The conditional update takes the row lock: of two concurrent
            // uses on any replicas, the second waits, then finds the token
            // rotated and changes nothing. A family with a revoked token
            // has been revoked as a whole: it never rotates again.
            let statement = tx
                .prepare_cached(
                    "UPDATE refresh_tokens AS r SET rotated = TRUE, rotated_at = $2, \
                     successor = $3, successor_access = $4 \
                     WHERE hash = $1 AND NOT rotated AND NOT revoked \
                     AND NOT EXISTS (SELECT 1 FROM refresh_tokens AS f \
                                     WHERE f.family = r.family AND f.revoked)",
                )
                .await?;
            let changed = tx
                .execute(
                    &statement,
                    &[
                        &presented,
                        &to_sql(access.issued_at),
                        &next.as_ref().map(|n| n.hash.as_str()),
                        &access.id,
                    ],
                )
                .await?;
            if changed != 1 {
                tx.rollback().await?;
                return Ok(Rotation::Stale);
            }
            insert_access(&tx, &access).await?;
            if let Some(next) = &next {
                insert_refresh(&tx, next).await?;
            }
            tx.commit().await?;
            Ok(Rotation::Rotated)
        })
    }

    fn retry_rotation(&self, retry: &RotationRetry) -> Result<RetryOutcome, StoreError> {
        let retry = retry.clone();
        self.with(move |client| retry::retry(client, retry))
    }

    fn revoke_access_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |client| async move {
            let changed = client
                .execute(
                    "UPDATE access_tokens SET revoked = TRUE WHERE id = $1",
                    &[&id],
                )
                .await?;
            Ok(changed > 0)
        })
    }

    fn revoke_family(&self, family: &str) -> Result<u64, StoreError> {
        let family = family.to_owned();
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            // Under the family's lock no rotation of it is half done, and
            // the next statement's snapshot, taken after the lock, holds
            // every token the rotations before it stored.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[&FAMILY_LOCK, &family],
            )
            .await?;
            let row = tx
                .query_one(
                    "WITH r AS (UPDATE refresh_tokens SET revoked = TRUE \
                                WHERE family = $1 AND NOT revoked RETURNING 1), \
                          a AS (UPDATE access_tokens SET revoked = TRUE \
                                WHERE family = $1 AND NOT revoked RETURNING 1) \
                     SELECT (SELECT count(*) FROM r) + (SELECT count(*) FROM a)",
                    &[&family],
                )
                .await?;
            let revoked = from_sql(row.try_get(0)?);
            tx.commit().await?;
            Ok(revoked)
        })
    }

    fn list_tokens(&self, per_kind: usize) -> Result<Vec<TokenSummary>, StoreError> {
        let limit = i64::try_from(per_kind).unwrap_or(i64::MAX);
        self.with(move |client| async move {
            let mut tokens = Vec::new();
            let access = client
                .query(
                    &format!(
                        "SELECT * FROM (SELECT {ACCESS_COLUMNS} FROM access_tokens \
                         ORDER BY issued_at DESC, id DESC LIMIT $1) AS newest \
                         ORDER BY issued_at, id"
                    ),
                    &[&limit],
                )
                .await?;
            for row in &access {
                let t = access_row(row)?;
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
            let refresh = client
                .query(
                    &format!(
                        "SELECT * FROM (SELECT {REFRESH_COLUMNS} FROM refresh_tokens \
                         ORDER BY issued_at DESC, hash DESC LIMIT $1) AS newest \
                         ORDER BY issued_at, hash"
                    ),
                    &[&limit],
                )
                .await?;
            for row in &refresh {
                let t = refresh_row(row)?;
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
        })
    }

    fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with(move |client| async move {
            let row = client
                .query_one(
                    "WITH a AS (DELETE FROM access_tokens WHERE id = $1 RETURNING 1), \
                          r AS (DELETE FROM refresh_tokens WHERE hash = $1 RETURNING 1) \
                     SELECT (SELECT count(*) FROM a) + (SELECT count(*) FROM r)",
                    &[&id],
                )
                .await?;
            Ok(row.try_get::<_, i64>(0)? > 0)
        })
    }

    fn remove_expired(&self, now: u64) -> Result<Removed, StoreError> {
        let now = to_sql(now);
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            // What has expired by this replica's clock and, give or take
            // `CLOCK_SKEW`, by the database's: a replica whose clock runs
            // an hour ahead must not delete, fleet-wide, what expires
            // within that hour.
            let now: i64 = tx
                .query_one(
                    "SELECT LEAST($1::BIGINT, EXTRACT(EPOCH FROM now())::BIGINT + $2)",
                    &[&now, &CLOCK_SKEW],
                )
                .await?
                .try_get(0)?;
            let access_tokens = tx
                .execute(
                    "DELETE FROM access_tokens WHERE expires_at IS NOT NULL AND expires_at <= $1",
                    &[&now],
                )
                .await?;
            // A family's rows are kept while a refresh is still possible or
            // an access token of it is still live: replaying a rotated
            // refresh token must still revoke those (RFC 9700 §4.14.2).
            let refresh_tokens = tx
                .execute(
                    "DELETE FROM refresh_tokens WHERE (expires_at IS NOT NULL AND expires_at <= $1) \
                     OR (family NOT IN (SELECT family FROM refresh_tokens WHERE NOT rotated \
                                        AND NOT revoked AND (expires_at IS NULL OR expires_at > $1)) \
                         AND family NOT IN (SELECT family FROM access_tokens \
                                            WHERE family IS NOT NULL AND NOT revoked))",
                    &[&now],
                )
                .await?;
            // A spent code is kept while tokens of its family live:
            // presented again, it must still revoke them (RFC 6749 §4.1.2).
            let authorization_codes = tx
                .execute(
                    "DELETE FROM authorization_codes WHERE expires_at <= $1 AND (family IS NULL \
                     OR (family NOT IN (SELECT family FROM refresh_tokens WHERE NOT revoked \
                                        AND (expires_at IS NULL OR expires_at > $1)) \
                         AND family NOT IN (SELECT family FROM access_tokens \
                                            WHERE family IS NOT NULL AND NOT revoked)))",
                    &[&now],
                )
                .await?;
            // Failure windows last a minute; an hour old one has ended.
            tx.execute(
                "DELETE FROM failed_attempts WHERE window_start + 3600 <= $1",
                &[&now],
            )
            .await?;
            tx.execute(
                "DELETE FROM approval_sessions WHERE expires_at <= $1",
                &[&now],
            )
            .await?;
            tx.commit().await?;
            Ok(Removed {
                access_tokens,
                refresh_tokens,
                authorization_codes,
            })
        })
    }

    fn put_code(&self, code: &CodeRecord) -> Result<(), StoreError> {
        let code = code.clone();
        self.with(move |client| async move {
            client
                .execute(
                    "INSERT INTO authorization_codes (hash, client_id, redirect_uri, \
                     code_challenge, code_challenge_method, scope, username, expires_at, \
                     redirect_uri_given) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &code.hash,
                        &code.client_id,
                        &code.redirect_uri,
                        &code.code_challenge,
                        &code.code_challenge_method,
                        &code.scope,
                        &code.username,
                        &to_sql(code.expires_at),
                        &code.redirect_uri_given,
                    ],
                )
                .await?;
            Ok(())
        })
    }

    fn take_code(&self, hash: &str, now: u64, family: &str) -> Result<CodeTake, StoreError> {
        let (hash, family) = (hash.to_owned(), family.to_owned());
        let now = to_sql(now);
        self.with(move |client| async move {
            // One statement decides under the row lock: an unspent live
            // code becomes used 1 with this family (fresh); a spent one
            // counts one more presentation (reused); an unspent expired
            // one stays 0 (expired). Of two concurrent redemptions on any
            // replicas, exactly one sees used = 1 with its own family.
            let statement = client
                .prepare_cached(
                    "UPDATE authorization_codes SET \
                       used = CASE WHEN used = 0 AND expires_at <= $2 THEN 0 ELSE used + 1 END, \
                       family = CASE WHEN used = 0 AND expires_at > $2 THEN $3 ELSE family END \
                     WHERE hash = $1 \
                     RETURNING client_id, redirect_uri, redirect_uri_given, code_challenge, \
                       code_challenge_method, scope, username, expires_at, used, family",
                )
                .await?;
            let row = client
                .query_opt(&statement, &[&hash, &now, &family])
                .await?;
            let Some(row) = row else {
                return Ok(CodeTake::Unknown);
            };
            let used: i32 = row.try_get(8)?;
            let bound: Option<String> = row.try_get(9)?;
            Ok(match used {
                0 => CodeTake::Expired,
                1 => CodeTake::Fresh(code_record(hash.clone(), &row)?),
                _ => CodeTake::Reused {
                    family: bound,
                    client_id: row.try_get(0)?,
                },
            })
        })
    }

    fn find_code(&self, hash: &str, now: u64) -> Result<Option<CodeRecord>, StoreError> {
        let hash = hash.to_owned();
        let now = to_sql(now);
        self.with(move |client| async move {
            let statement = client
                .prepare_cached(
                    "SELECT client_id, redirect_uri, redirect_uri_given, code_challenge, \
                       code_challenge_method, scope, username, expires_at \
                     FROM authorization_codes WHERE hash = $1 AND used = 0 AND expires_at > $2",
                )
                .await?;
            let Some(row) = client.query_opt(&statement, &[&hash, &now]).await? else {
                return Ok(None);
            };
            Ok(Some(code_record(hash.clone(), &row)?))
        })
    }

    fn redeem_code(
        &self,
        hash: &str,
        now: u64,
        access: &AccessTokenRecord,
        refresh: Option<&RefreshTokenRecord>,
    ) -> Result<bool, StoreError> {
        let (hash, access, refresh) = (hash.to_owned(), access.clone(), refresh.cloned());
        let now = to_sql(now);
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            // The conditional update takes the code's row lock: of two
            // concurrent redemptions on any replicas, the second waits,
            // then finds the code spent and changes nothing. Until the
            // commit, a replay finds it unspent, and its own redemption
            // then waits here too.
            let statement = tx
                .prepare_cached(
                    "UPDATE authorization_codes SET used = 1, family = $3 \
                     WHERE hash = $1 AND used = 0 AND expires_at > $2",
                )
                .await?;
            let changed = tx
                .execute(&statement, &[&hash, &now, &access.family])
                .await?;
            if changed != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            insert_access(&tx, &access).await?;
            if let Some(refresh) = &refresh {
                insert_refresh(&tx, refresh).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    fn record_key(&self, key: &KnownKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.with(move |client| async move {
            client
                .execute(
                    "INSERT INTO signing_keys (kid, jwk, first_seen) VALUES ($1, $2, $3) \
                     ON CONFLICT (kid) DO NOTHING",
                    &[&key.kid, &key.jwk, &to_sql(key.first_seen)],
                )
                .await?;
            Ok(())
        })
    }

    fn known_keys(&self) -> Result<Vec<KnownKey>, StoreError> {
        self.with(move |client| async move {
            let rows = client
                .query(
                    "SELECT kid, jwk, first_seen FROM signing_keys \
                     ORDER BY first_seen DESC, seq DESC",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(KnownKey {
                        kid: row.try_get(0)?,
                        jwk: row.try_get(1)?,
                        first_seen: from_sql(row.try_get(2)?),
                    })
                })
                .collect()
        })
    }
}

/// A code's record from a row whose first eight columns are `client_id,
/// redirect_uri, redirect_uri_given, code_challenge,
/// code_challenge_method, scope, username, expires_at`.
fn code_record(hash: String, row: &tokio_postgres::Row) -> Result<CodeRecord, StoreError> {
    Ok(CodeRecord {
        hash,
        client_id: row.try_get(0)?,
        redirect_uri: row.try_get(1)?,
        redirect_uri_given: row.try_get(2)?,
        code_challenge: row.try_get(3)?,
        code_challenge_method: row.try_get(4)?,
        scope: row.try_get(5)?,
        username: row.try_get(6)?,
        expires_at: from_sql(row.try_get(7)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool::managed::TimeoutType;

    #[test]
    fn a_busy_pool_is_answered_and_a_connection_not_made_in_time_is_not() {
        let outcome = |error| Some(Err::<(), _>(pool_error(error)));
        assert!(
            answered(&outcome(PoolError::Timeout(TimeoutType::Wait))),
            "every connection busy: a load, not a silence"
        );
        assert!(!answered(&outcome(PoolError::Timeout(TimeoutType::Create))));
        assert!(!answered(&outcome(PoolError::Timeout(
            TimeoutType::Recycle
        ))));
        assert!(!answered::<()>(&None), "ran out of time");
        assert!(answered(&Some(Ok(()))));
    }
}
