use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    return_freed_memory();
    // One process-wide TLS crypto provider: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    microgateway::cli::run(microgateway::cli::Args::parse())
}

/// Listener threads give back their own freed memory
/// (`microgateway::allocator`); this thread gives back the rest's.
#[allow(clippy::disallowed_methods)] // `thread::sleep` on a thread of its own.
fn return_freed_memory() {
    // Without it (no thread could be made), the gateway still serves.
    let _ = std::thread::Builder::new()
        .name("allocator".into())
        .spawn(|| loop {
            std::thread::sleep(microgateway::allocator::COLLECT_EVERY);
            microgateway::allocator::collect_process();
        });
}
