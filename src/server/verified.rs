//! Which client-certificate setting (`tls.client_ca`, `tls.client_auth`) a
//! TLS connection was verified under, and the end of the connections
//! verified under one that a reload has replaced. The certificate is
//! checked at the handshake only: without this, a client whose CA was just
//! removed would keep its access for as long as it keeps its connection
//! busy.
//!
//! Each setting a listener serves is one [`Verification`]; each connection
//! holds a [`Verified`] of the one its handshake used, taken together with
//! that setting's acceptor (`tls::LiveTls`). When a reload replaces the
//! setting, the old one is retired: its connections' watchdogs are woken
//! and end them as at shutdown (`server::Conn::supervise`: what is in
//! flight has `timeouts.drain` to finish, HTTP/1.1 closing after the
//! answer, HTTP/2 after a `GOAWAY`; an idle one closes at once), and their
//! WebSocket tunnels close at once. A request that comes after the change
//! is not served (one atomic load per request of a TLS connection, where
//! its head is read or its stream accepted; a plain connection has none).
//! A setting is never un-retired, and a connection never changes its own.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// One client-certificate setting of a listener, while it verifies
/// handshakes and then while connections it verified remain.
pub(super) struct Verification {
    retired: AtomicBool,
    /// Wakes the connections verified under it when it is retired.
    retiring: Notify,
    /// Connections verified under it (handshakes in progress included).
    open: AtomicUsize,
}

impl Verification {
    pub(super) fn new() -> Arc<Verification> {
        Arc::new(Verification {
            retired: AtomicBool::new(false),
            retiring: Notify::new(),
            open: AtomicUsize::new(0),
        })
    }

    /// A connection about to be verified under this setting, counted until
    /// it ends.
    pub(super) fn verify(self: &Arc<Self>) -> Verified {
        self.open.fetch_add(1, Ordering::AcqRel);
        Verified(self.clone())
    }

    /// Another setting replaces it: every connection verified under it is
    /// to end. How many there were.
    pub(super) fn retire(&self) -> usize {
        self.retired.store(true, Ordering::Release);
        self.retiring.notify_waiters();
        self.open.load(Ordering::Acquire)
    }

    pub(super) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Waits until it is retired.
    pub(super) async fn retired(&self) {
        loop {
            let mut woken = pin!(self.retiring.notified());
            // Enabled before the flag is read: a retirement in between
            // wakes it.
            woken.as_mut().enable();
            if self.is_retired() {
                return;
            }
            woken.await;
        }
    }
}

/// The setting one connection was verified under.
pub(super) struct Verified(Arc<Verification>);

impl Verified {
    /// What the parts of the connection that outlive a borrow of it (an
    /// HTTP/2 stream's service, its tunnel) look at.
    pub(super) fn verification(&self) -> Arc<Verification> {
        self.0.clone()
    }

    pub(super) async fn retired(&self) {
        self.0.retired().await;
    }
}

impl Drop for Verified {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until the setting `verified` names is retired; never, for a
/// connection without TLS.
pub(super) async fn retired(verified: Option<&Verified>) {
    match verified {
        Some(verified) => verified.retired().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retiring_wakes_every_connection_verified_under_it_and_counts_them() {
        let old = Verification::new();
        let first = old.verify();
        let second = old.verify();
        let gone = old.verify();
        drop(gone);
        let waiting = tokio::spawn({
            let old = old.clone();
            async move { old.retired().await }
        });
        tokio::task::yield_now().await;
        assert!(!old.is_retired());
        assert_eq!(old.retire(), 2, "the connections still open");
        waiting.await.expect("woken");
        // One that looks after the retirement sees it at once.
        first.retired().await;
        retired(Some(&second)).await;
        assert!(old.is_retired());
        // Its successor's connections are not affected.
        let new = Verification::new();
        let _fresh = new.verify();
        assert!(!new.is_retired());
    }
}
