//! Giving memory back to the system. The binary allocates with mimalloc
//! (`main.rs`), which returns a freed page only after its purge delay,
//! and only when the thread that owns the page next frees or allocates
//! near it: after a burst of connections closes, a listener thread that
//! then sits idle would hold that memory for good. So each listener
//! thread, and one thread of its own for the rest of the process, asks
//! for it once a second. (Purging at once instead, `MIMALLOC_PURGE_DELAY=0`,
//! costs a fifth of the throughput: every freed page is unmapped and
//! faulted in again; once a second costs nothing measurable.)
//!
//! The TLS library (aws-lc) allocates with the C library's `malloc`, not
//! mimalloc: what it frees stays in glibc's per-thread arenas (~6 MiB per
//! listener thread after 10,000 TLS connections closed) until they are
//! trimmed, which the process's own thread does once a second too.
//!
//! With another global allocator (the tests), the calls find no mimalloc
//! heap on the thread and do nothing.

use std::time::Duration;

/// How often memory held unused is given back.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Gives back what this thread's heap holds unused (the free spans of
/// its segments, expired or not), and what has expired in the process's
/// shared arenas.
#[allow(unsafe_code)] // The allocator's collection has no safe binding.
pub fn collect_this_thread() {
    // SAFETY: `mi_collect` may be called from any thread at any time.
    // `force` purges the free spans of segments that still hold live
    // pages, which nothing else would look at again while the thread is
    // idle.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// What only one thread needs to do for the whole process, once a second:
/// the shared arenas' expired pages, and the C library's free memory.
#[allow(unsafe_code)] // Neither has a safe binding.
pub fn collect_process() {
    collect_this_thread();
    // SAFETY: `malloc_trim` takes each arena's lock while it trims; it may
    // be called from any thread at any time.
    unsafe { libc::malloc_trim(0) };
}
