//! Ports for servers the tests start as child processes (PostgreSQL,
//! Redis, chromedriver, the gateway's binary), which must be told their
//! port before they bind it.
//!
//! A port probed with `bind(":0")` and released comes from the kernel's
//! ephemeral range, the range every outgoing connection of a busy test run
//! also takes its local port from: between the probe and the child's bind,
//! a connection may take it, and the child fails to start. The ports handed
//! out here lie outside that range, are free when handed out, and are never
//! handed out twice by this process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOWEST: u32 = 10_000;

/// The ports no connection takes a local port from: below the ephemeral
/// range if there is room, above it otherwise.
fn range() -> (u32, u32) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut bounds = text.split_whitespace().map(|b| b.parse::<u32>().ok());
            Some((bounds.next()??, bounds.next()??))
        })
        .unwrap_or((32_768, 60_999));
    if ephemeral.0 > LOWEST + 1_000 {
        (LOWEST, ephemeral.0)
    } else {
        (ephemeral.1 + 1, 65_536)
    }
}

/// A loopback port free now, outside the ephemeral range, not handed out
/// before by this process. Test processes running side by side start at
/// different places of the range (by process id).
pub fn unused() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, high) = range();
    let span = high - low;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let Ok(port) = u16::try_from(low + offset) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}
