//! When the gateway has started, and the latch that makes the JWKS a
//! condition of the start only.
//!
//! The start conditions: the listeners are bound, the authorization
//! server's store has been reached (a database store may not be yet), and
//! every JWKS of the serving snapshot has been fetched. The latch is set the
//! moment they are met, whether or not anyone asks `/health/ready`: a
//! start-up watch checks every 100 ms until it is set, then ends; a probe
//! checks too; and every reload checks before it prepares the runtime for
//! its snapshot, so a reload or central download applied after the start
//! never counts its JWKS, probed in between or not. Each check holds the
//! reload lock (a check that would wait for it is skipped: the reload in
//! progress makes its own), so none judges a runtime half-prepared for the
//! next snapshot. Nothing here is on the request path.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::swap::Live;
use crate::auth::servers::Authenticator;
use crate::authz_server::AuthorizationServer;

/// How often the start-up watch checks the start conditions.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Whether the listeners are up and the start conditions have once been
/// met; reads the runtime the reload pipeline prepares.
pub struct StartLatch {
    live: Arc<Live>,
    auth: Arc<Authenticator>,
    authz: Arc<ArcSwapOption<AuthorizationServer>>,
    listening: AtomicBool,
    latched: AtomicBool,
}

impl StartLatch {
    pub fn new(
        live: Arc<Live>,
        auth: Arc<Authenticator>,
        authz: Arc<ArcSwapOption<AuthorizationServer>>,
    ) -> StartLatch {
        StartLatch {
            live,
            auth,
            authz,
            listening: AtomicBool::new(false),
            latched: AtomicBool::new(false),
        }
    }

    /// The listeners are bound and serving.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// Listening, and the authorization server's store reached: what
    /// readiness needs at any time, before the start and after.
    pub fn is_serving(&self) -> bool {
        self.listening.load(Ordering::Acquire)
            && self
                .authz
                .load()
                .as_ref()
                .is_none_or(|server| server.is_ready())
    }

    /// Whether the start conditions have once been met, setting the latch
    /// when they are met now. While a reload is in progress the latch stays
    /// as it is; that reload checks before it changes anything.
    pub fn note(&self) -> bool {
        if self.latched.load(Ordering::Acquire) {
            return true;
        }
        match self.live.try_one_reload_at_a_time() {
            Some(_turn) => self.note_locked(),
            None => false,
        }
    }

    /// [`StartLatch::note`] for a caller that holds the reload lock.
    pub(super) fn note_locked(&self) -> bool {
        if self.latched.load(Ordering::Acquire) {
            return true;
        }
        let met = self.is_serving() && self.auth.jwks_pending().is_empty();
        if met {
            self.latched.store(true, Ordering::Release);
            tracing::info!(
                generation = self.live.generation(),
                "started: from now on an auth server whose keys cannot be fetched refuses its own tokens but keeps nothing else from being ready"
            );
        }
        met
    }

    /// Notes the start as soon as it is met: checks every 100 ms until
    /// the latch is set, then ends; ends too when `stop` turns true.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut every = tokio::time::interval(CHECK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.changed() => return,
            }
            if self.note() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{first_snapshot as snapshot, Snapshot};

    fn latch(snapshot: Snapshot) -> StartLatch {
        let auth = Arc::new(Authenticator::new());
        auth.prepare(&snapshot);
        StartLatch::new(
            Arc::new(Live::new(snapshot)),
            auth,
            Arc::new(ArcSwapOption::empty()),
        )
    }

    /// A latch not listening yet, and its start-up watch, which has
    /// checked a few times already; the sender stops it.
    async fn watched() -> (
        Arc<StartLatch>,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let latch = Arc::new(latch(snapshot("ports: { http: 4485 }\n")));
        let (stop, stopped) = watch::channel(false);
        let watching = tokio::spawn(latch.clone().watch(stopped));
        tokio::time::sleep(CHECK_EVERY * 5).await;
        (latch, stop, watching)
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_up_watch_notes_the_start_unasked_and_ends() {
        let (latch, _stop, watching) = watched().await;
        // Not listening: the watch goes on checking.
        assert!(!watching.is_finished());
        assert!(!latch.latched.load(Ordering::Acquire));
        latch.set_listening();
        tokio::time::timeout(CHECK_EVERY * 3, watching)
            .await
            .expect("the watch ends once the start is met")
            .expect("joined");
        assert!(latch.latched.load(Ordering::Acquire), "noted, nobody asked");
    }

    #[tokio::test(start_paused = true)]
    async fn the_start_up_watch_ends_at_shutdown_though_the_start_was_never_met() {
        let (latch, stop, watching) = watched().await;
        stop.send(true).expect("watching");
        tokio::time::timeout(CHECK_EVERY, watching)
            .await
            .expect("the watch ends at shutdown")
            .expect("joined");
        assert!(!latch.latched.load(Ordering::Acquire));
    }

    #[test]
    fn the_start_waits_for_the_listeners_and_stays_noted() {
        let latch = latch(snapshot("ports: { http: 4485 }\n"));
        assert!(!latch.note(), "not listening yet");
        latch.set_listening();
        assert!(latch.note());
        assert!(latch.note());
    }

    #[test]
    fn a_reload_in_progress_leaves_the_latch_as_it_is() {
        let latch = latch(snapshot("ports: { http: 4485 }\n"));
        latch.set_listening();
        let in_progress = latch.live.one_reload_at_a_time();
        assert!(!latch.note(), "the reload checks for itself");
        assert!(latch.note_locked());
        drop(in_progress);
        assert!(latch.note());
    }

    #[tokio::test]
    async fn keys_not_fetched_yet_keep_the_start_from_being_met() {
        // Bound, never listening: every fetch of the keys is refused.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let refusing = socket.local_addr().expect("address");
        let latch = latch(snapshot(&format!(
            "ports: {{ http: 4485 }}\nsecurity_settings:\n  auth_servers:\n  - id: idp\n    name: idp\n    localIntrospectionConfig: {{ issuer: \"http://{refusing}\", jwksuri: \"http://{refusing}/jwks\" }}\n"
        )));
        latch.set_listening();
        assert!(latch.is_serving());
        assert!(!latch.note(), "the keys of idp are pending");
    }
}
