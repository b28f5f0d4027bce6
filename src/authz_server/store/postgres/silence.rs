//! What the store knows of a database that stopped answering: once a call
//! ran out of time, calls fail at once while the store's own runtime tries
//! the database on a connection of its own until it answers.
//!
//! A hung database (a stopped server, a network path dropping packets)
//! otherwise holds every request for the whole operation timeout at each
//! of its store calls in turn, and fills the workers with requests that
//! all wait the same wait. A database that refuses connections fails fast
//! by itself, and one that answers but holds a lock for good answers the
//! tries: neither is a silence. Every pooled connection busy is a load,
//! not a silence either.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::Manager as _;
use deadpool_postgres::Pool;

use super::OPERATION_TIMEOUT;

/// First wait between two tries of a silent database; it doubles up to
/// [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const LONGEST_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Silence {
    silent: AtomicBool,
}

impl Silence {
    /// Whether a call ran out of time and no try has been answered since.
    pub fn is_silent(&self) -> bool {
        self.silent.load(Ordering::Acquire)
    }

    /// Records that a call ran out of time; true for the call that found
    /// the database answering, which starts the tries.
    fn fell_silent(&self) -> bool {
        self.silent
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn answered(&self) {
        self.silent.store(false, Ordering::Release);
    }
}

/// Records that a call ran out of time: the first such call of a silence
/// starts trying the database on `runtime`.
pub fn ran_out_of_time(
    silence: &Arc<Silence>,
    runtime: &tokio::runtime::Runtime,
    pool: &Pool,
    database: &str,
) {
    if silence.fell_silent() {
        tracing::warn!(store = %database, "token store did not answer in time; refusing calls until it answers");
        runtime.spawn(try_until_answered(
            Arc::clone(silence),
            pool.clone(),
            database.to_owned(),
        ));
    }
}

/// Opens a connection outside the pool (a pooled one may be the one that
/// hangs) and asks it the simplest question, each try bounded, until one
/// is answered.
async fn try_until_answered(silence: Arc<Silence>, pool: Pool, database: String) {
    let mut wait = FIRST_WAIT;
    loop {
        let tried = tokio::time::timeout(OPERATION_TIMEOUT, async {
            let client = pool.manager().create().await?;
            client.simple_query("SELECT 1").await.map(|_| ())
        })
        .await;
        // An error the server sent is an answer too: one at its limit of
        // connections (53300) still answers the pooled ones.
        let answering = match &tried {
            Ok(Ok(())) => true,
            Ok(Err(error)) => error.as_db_error().is_some(),
            Err(_) => false,
        };
        if answering {
            silence.answered();
            tracing::info!(store = %database, "token store answers again");
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(LONGEST_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_call_out_of_time_starts_the_tries_and_an_answer_ends_the_silence() {
        let silence = Silence::default();
        assert!(!silence.is_silent());
        assert!(silence.fell_silent());
        assert!(!silence.fell_silent(), "tries are started once a silence");
        assert!(silence.is_silent());
        silence.answered();
        assert!(!silence.is_silent());
        assert!(silence.fell_silent(), "a new silence starts them again");
    }
}
