use std::alloc::{GlobalAlloc, Layout};
use std::process::ExitCode;

use clap::Parser;
use libmimalloc_sys as mi;

#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, asked through its plain entry points whenever they give the
/// alignment a layout needs, as the system allocator is (`mimalloc`'s own
/// wrapper always asks for an aligned block, and mimalloc 3 serves an
/// aligned request over 1 KiB that is not a power of two by allocating
/// more and offsetting: the futures and buffers of every request).
struct Mimalloc;

/// What `malloc` guarantees on x86-64 and AArch64 (`max_align_t`), for a
/// block of at least that size.
const MALLOC_ALIGN: usize = 16;

fn plain(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every call forwards to mimalloc, which returns null on failure
// as `GlobalAlloc` requires; its plain calls are used only where they
// return a block aligned as the layout asks (`plain`), and every block,
// however it was allocated, is freed and grown by mimalloc's own calls.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Mimalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_malloc(layout.size()) }.cast()
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) }.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_zalloc(layout.size()) }.cast()
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) }.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            unsafe { mi::mi_realloc(ptr.cast(), new_size) }.cast()
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()) }.cast()
        }
    }
}

fn main() -> ExitCode {
    return_freed_memory();
    // One process-wide TLS crypto provider: aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = match microgateway::cli::Args::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            // `--help` and `--version` are answers; a usage error exits 1,
            // as a bad configuration does: 2 is `explain`'s DENY, which a
            // mistyped flag must never pass for.
            return if error.exit_code() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
        }
    };
    microgateway::cli::run(args)
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
