use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often memory the allocator has been holding unused is given back.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    return_freed_memory();
    // One process-wide TLS crypto provider: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    microgateway::cli::run(microgateway::cli::Args::parse())
}

/// The allocator returns memory it no longer uses to the system after its
/// purge delay, but only when some thread next frees a page: after a burst
/// of connections closes, threads that then sit idle would hold it for
/// good. A small thread asks it once a second to purge what has expired
/// (purging at once instead, `MIMALLOC_PURGE_DELAY=0`, costs a fifth of the
/// throughput: every freed page is unmapped and faulted in again).
#[allow(unsafe_code)] // The allocator's collection has no safe binding.
#[allow(clippy::disallowed_methods)] // `thread::sleep` on a thread of its own.
fn return_freed_memory() {
    // Without it (no thread could be made), the gateway still serves.
    let _ = std::thread::Builder::new()
        .name("allocator".into())
        .spawn(|| loop {
            std::thread::sleep(COLLECT_EVERY);
            // SAFETY: `mi_collect` may be called from any thread at any
            // time; without `force` it only purges what has expired.
            unsafe { libmimalloc_sys::mi_collect(false) };
        });
}
