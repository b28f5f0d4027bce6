use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (the bindings
/// name no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    return_freed_memory_at_once();
    // One process-wide TLS crypto provider: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    microgateway::cli::run(microgateway::cli::Args::parse())
}

/// Memory the allocator no longer uses goes back to the system when it is
/// freed, not after a delay that only the freeing thread's next allocation
/// would act on: after a burst of connections closes, the resident size
/// falls back near its idle value even though the listener threads then
/// sit idle. `MIMALLOC_PURGE_DELAY` in the environment still decides.
#[allow(unsafe_code)] // The allocator's options have no safe binding.
fn return_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of the allocator's options, which it reads
        // atomically; any thread may call it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        // mimalloc 3 purges after 1,000 ms by default; no neighbouring
        // option has that default.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one of the allocator's options.
            let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, 1000);
        }
        return_freed_memory_at_once();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: as above.
            let delay = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(delay, 0);
        }
    }
}
