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

/// Gives back the pages of the program's own code and constants that
/// starting up read (parsing and compiling the configuration, the schema,
/// the command line) and serving will not read again: most of what the
/// process holds once it serves. Called once, when the gateway has
/// started; the pages serving needs are read back at their first use.
/// Returns how many KiB of files the process held resident before, and
/// after.
///
/// Where the kernel lets this process page the file out (it may write the
/// file: its owner, or root) and no other process maps a page, the page
/// is freed. Elsewhere its code is still unmapped from this process, and
/// stays only as the kernel's cache of the file, which it drops first
/// when memory runs short.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // `madvise` has no safe binding.
pub fn return_startup_code() -> std::io::Result<(u64, u64)> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let before = resident_file_kib()?;
    for Segment { start, end, code } in read_only_segments_of(&maps, &exe) {
        let advise = |advice| {
            // SAFETY: the range is a mapping of this process (as /proc
            // said a moment ago: the program's own segments stay mapped
            // while it runs). MADV_PAGEOUT changes no byte of it: a page
            // read from the file is read from it again at its next use,
            // and a page written since (relocations) is kept or swapped,
            // never dropped. MADV_DONTNEED is asked only of code, which
            // nothing writes: its pages are the file's.
            let done = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
            if done == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        };
        advise(libc::MADV_PAGEOUT)?;
        if code {
            advise(libc::MADV_DONTNEED)?;
        }
    }
    Ok((before, resident_file_kib()?))
}

/// A read-only segment of the program, mapped at `start..end`; `code`
/// when it is executable.
#[derive(Debug, PartialEq)]
struct Segment {
    start: usize,
    end: usize,
    code: bool,
}

/// The segments of `exe` that are mapped read-only (its code and
/// constants), from the text of `/proc/self/maps`.
fn read_only_segments_of<'a>(
    maps: &'a str,
    exe: &'a std::path::Path,
) -> impl Iterator<Item = Segment> + 'a {
    maps.lines().filter_map(move |line| {
        // "start-end perms offset dev inode   path" (the path may hold spaces).
        let mut fields = line.splitn(6, ' ');
        let range = fields.next()?;
        let perms = fields.next()?.as_bytes();
        let path = fields.nth(3)?.trim_start();
        if perms.get(1) != Some(&b'-') || std::path::Path::new(path) != exe {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (start < end).then_some(Segment {
            start,
            end,
            code: perms.get(2) == Some(&b'x'),
        })
    })
}

/// `RssFile` of this process: its resident pages that a file backs.
#[cfg(target_os = "linux")]
fn resident_file_kib() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(status
        .lines()
        .find_map(|line| line.strip_prefix("RssFile:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_read_only_segments_of_the_program_are_named() {
        let maps = "\
55d0c0000000-55d0c0400000 r--p 00000000 08:01 1234    /usr/local/bin/micro gateway
55d0c0400000-55d0c1400000 r-xp 00400000 08:01 1234    /usr/local/bin/micro gateway
55d0c1400000-55d0c1500000 rw-p 01400000 08:01 1234    /usr/local/bin/micro gateway
55d0c1500000-55d0c1600000 r-xp 00000000 08:01 99      /usr/lib/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0       [stack]
garbage
";
        let exe = std::path::Path::new("/usr/local/bin/micro gateway");
        let named: Vec<_> = read_only_segments_of(maps, exe).collect();
        assert_eq!(
            named,
            [
                Segment {
                    start: 0x55d0c0000000,
                    end: 0x55d0c0400000,
                    code: false
                },
                Segment {
                    start: 0x55d0c0400000,
                    end: 0x55d0c1400000,
                    code: true
                }
            ]
        );
    }

    #[test]
    fn the_program_keeps_running_after_giving_its_pages_back() {
        let (before, _after) =
            return_startup_code().expect("madvise on the program's own segments");
        assert!(before > 0, "the test program has resident code");
        // Code and constants are read back at their next use, and the
        // relocated constants (a vtable: the call goes through it) are
        // still relocated.
        let answer: Box<dyn std::fmt::Display> = Box::new(6 * 7);
        assert_eq!(answer.to_string(), "42");
    }
}
