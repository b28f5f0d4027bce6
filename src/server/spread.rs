//! Connections spread evenly over the threads of one port. The kernel
//! hands each new connection to one of the per-core sockets by a hash of
//! its addresses: 64 connections often split 38/26, and then one thread
//! holds its requests back (and their tail latency up) while the other has
//! time to spare. A thread that serves more connections than another hands
//! a connection it has just accepted to the one serving the fewest, before
//! a byte of it was read (as Envoy's exact connection balance does); the
//! receiving thread serves it like one of its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;

/// A connection accepted by one thread, to be served by another.
pub struct Handed {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    /// The port's connection slot, taken when it was accepted.
    pub permit: OwnedSemaphorePermit,
}

/// The threads of one port: how many connections each serves, and where
/// to hand it one.
struct Spread {
    loads: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// One thread's place among the threads of its port.
pub struct Seat {
    me: usize,
    spread: Arc<Spread>,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

/// Seats for `threads` threads serving one port.
pub fn seats(threads: usize) -> Vec<Seat> {
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
    let spread = Arc::new(Spread {
        loads: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        inboxes: senders.into(),
    });
    receivers
        .into_iter()
        .enumerate()
        .map(|(me, inbox)| Seat {
            me,
            spread: spread.clone(),
            inbox,
        })
        .collect()
}

impl Seat {
    /// The thread that should serve the next connection this one accepts:
    /// `None` for this one (it serves no more than any other).
    pub fn elsewhere(&self) -> Option<usize> {
        let loads = &self.spread.loads;
        let mine = loads[self.me].load(Ordering::Relaxed);
        let (least, load) = loads
            .iter()
            .map(|load| load.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(_, load)| load)?;
        (load < mine).then_some(least)
    }

    /// Hands `handed` to thread `to`; gives it back when that thread no
    /// longer serves (the port is stopping).
    pub fn hand(&self, to: usize, handed: Handed) -> Result<(), Handed> {
        // Counted at once: the next decision, here or on another thread,
        // sees it before the receiver has started serving it.
        self.spread.loads[to].fetch_add(1, Ordering::Relaxed);
        self.spread.inboxes[to].send(handed).map_err(|failed| {
            self.spread.loads[to].fetch_sub(1, Ordering::Relaxed);
            failed.0
        })
    }

    /// The next connection another thread handed to this one.
    pub async fn handed(&mut self) -> Option<Handed> {
        self.inbox.recv().await
    }

    /// Counts a connection this thread accepted and serves, until the
    /// guard is dropped.
    pub fn serving(&self) -> Serving {
        self.spread.loads[self.me].fetch_add(1, Ordering::Relaxed);
        self.serving_handed()
    }

    /// The guard of a connection handed to this thread: [`Seat::hand`]
    /// counted it already.
    pub fn serving_handed(&self) -> Serving {
        Serving {
            spread: self.spread.clone(),
            me: self.me,
        }
    }
}

/// One connection served by a thread of the port.
pub struct Serving {
    spread: Arc<Spread>,
    me: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.spread.loads[self.me].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_serving_more_hands_new_connections_to_the_least_loaded() {
        let seats = seats(3);
        let held: Vec<Serving> = (0..3).map(|_| seats[0].serving()).collect();
        let _one = seats[1].serving();
        assert_eq!(seats[0].elsewhere(), Some(2));
        assert_eq!(seats[2].elsewhere(), None);
        // Equal loads stay where they are.
        let _two = seats[2].serving();
        assert_eq!(seats[1].elsewhere(), None);
        drop(held);
        assert_eq!(seats[1].elsewhere(), Some(0));
    }
}
