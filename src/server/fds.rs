//! The file descriptors the process may open. Every client connection,
//! upstream connection and file read takes one; past the limit, accepts
//! fail (`EMFILE`) and the clients wait in the backlog. The soft limit is
//! raised to the hard one at start, as nginx's `worker_rlimit_nofile` and
//! the Go runtime do: the soft default of many systems (1024) is below
//! `limits.max_connections` (10,000).

/// Raises the soft limit on open descriptors to the hard one; the soft
/// limit in force afterwards (`None` when it cannot be read).
#[allow(unsafe_code)] // `getrlimit`/`setrlimit` have no safe binding.
pub fn raise_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` into the value it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads one `rlimit`; a soft limit equal to
        // the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

/// Whether an accept failed for want of descriptors (the process's or the
/// system's) or of the memory they need: what connections that give
/// theirs back can cure.
pub fn exhausted(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let raised = raise_limit().expect("the limit is readable");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: as in `raise_limit`.
        let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        assert_eq!(read, 0);
        assert_eq!(raised, limit.rlim_cur);
        assert_eq!(limit.rlim_cur, limit.rlim_max);
        assert!(exhausted(&std::io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(!exhausted(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
