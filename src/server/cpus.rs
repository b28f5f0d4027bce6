//! Which CPU each thread of an API port runs on. A port is served by one
//! thread per CPU the process may use (`gateway::bind_per_core`). Left to
//! the scheduler, two of them busy at once can share one CPU for long
//! stretches while the load generator and the upstream share the other:
//! they take turns of a whole scheduler tick (4 ms), and the connections
//! of the one waiting wait with it — a p99 of 3.7–4.4 ms against 1.6 ms
//! pinned, on 2 cores, the same run (`bench/compare.sh`). So thread `i` of
//! each port runs on the `i`-th CPU the process may use (as nginx's
//! `worker_cpu_affinity auto` and HAProxy's `cpu-map` do), but only when
//! those CPUs are exactly as many as the threads: under a CPU quota on a
//! larger machine (a container with a limit but no cpuset) the threads
//! are fewer than the CPUs, other processes share them all, and the
//! scheduler is left to place them. `ports.pin_threads: false` leaves them
//! to it always.

/// The CPU each of `threads` threads runs on (`None`: left to the
/// scheduler), given the CPUs the process may use.
pub fn plan(allowed: &[usize], threads: usize, pin: bool) -> Vec<Option<usize>> {
    if pin && allowed.len() == threads && threads > 1 {
        allowed.iter().copied().map(Some).collect()
    } else {
        vec![None; threads]
    }
}

/// The CPUs this thread may run on (empty when they cannot be read).
#[allow(unsafe_code)] // `sched_getaffinity` has no safe binding.
pub fn allowed() -> Vec<usize> {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; the kernel writes
    // at most `size_of::<cpu_set_t>()` bytes into it, and `CPU_ISSET` reads
    // within it for every index below `CPU_SETSIZE`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Runs this thread on `cpu` only.
#[allow(unsafe_code)] // `sched_setaffinity` has no safe binding.
pub fn pin_this_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    // SAFETY: `cpu` is below `CPU_SETSIZE` (checked above), so `CPU_SET`
    // writes within the set; the kernel reads `size_of::<cpu_set_t>()`
    // bytes of it. Thread 0 is the calling thread.
    let done = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_are_pinned_only_when_they_are_as_many_as_the_cpus() {
        assert_eq!(plan(&[2, 3], 2, true), [Some(2), Some(3)]);
        // A quota: fewer threads than CPUs, shared with everything else.
        assert_eq!(plan(&[0, 1, 2, 3], 2, true), [None, None]);
        // Turned off.
        assert_eq!(plan(&[0, 1], 2, false), [None, None]);
        // One thread has no other to be kept apart from.
        assert_eq!(plan(&[5], 1, true), [None]);
        // Unreadable affinity.
        assert_eq!(plan(&[], 2, true), [None, None]);
    }

    #[test]
    fn a_pinned_thread_runs_only_on_its_cpu() {
        let first = *allowed().first().expect("this thread may run somewhere");
        let seen = std::thread::spawn(move || {
            pin_this_thread(first).expect("pinned");
            allowed()
        })
        .join()
        .expect("the thread ran");
        assert_eq!(seen, [first]);
        assert!(pin_this_thread(libc::CPU_SETSIZE as usize).is_err());
    }
}
