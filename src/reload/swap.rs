//! The serving snapshot behind an `ArcSwap`: a request loads one `Arc` and
//! keeps it to the end, so requests in flight finish on the snapshot they
//! started with. A swap only ever installs a snapshot that compiled.
//! Listeners are never re-bound: settings they were started with (ports,
//! limits, timeouts) only take effect on a restart, and a swap that changes
//! them says so.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::snapshot::{Limits, Listen, Timeouts};
use crate::config::Snapshot;
use crate::metrics::Label;

/// Where a reload came from (the `source` label of `config_reload_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Signal,
    Api,
    Central,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Signal => "signal",
            Source::Api => "api",
            Source::Central => "central",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    pub last_reload_at: Option<SystemTime>,
    pub last_reload_error: Option<String>,
    /// What the refusal in `last_reload_error` came from.
    pub error_source: Option<Source>,
    /// A refused reading of the file (any source but the central) that no
    /// reading of the file has made good since: shown again once a
    /// download's refusal, shown meanwhile, is made good.
    refused_file: Option<(String, Source)>,
}

impl ReloadStatus {
    /// The refusal shown is the file's that still stands, if any: what a
    /// swap, or a central confirming the document in use, leaves.
    fn show_standing_refusal(&mut self) {
        let standing = self.refused_file.clone();
        self.last_reload_error = standing.as_ref().map(|(error, _)| error.clone());
        self.error_source = standing.map(|(_, source)| source);
    }
}

/// What the listeners were started with; a reload cannot change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub listen: Listen,
    pub limits: Limits,
    pub timeouts: Timeouts,
}

impl Bound {
    pub fn of(snapshot: &Snapshot) -> Bound {
        Bound {
            listen: snapshot.listen.clone(),
            limits: snapshot.limits,
            timeouts: snapshot.timeouts,
        }
    }

    /// The sections of `next` that differ from what is running and only a
    /// restart applies.
    pub fn restart_needed(&self, next: &Snapshot) -> Vec<&'static str> {
        let mut differ = Vec::new();
        if self.listen != next.listen {
            differ.push("ports");
        }
        if self.limits != next.limits {
            differ.push("limits");
        }
        if self.timeouts != next.timeouts {
            differ.push("timeouts");
        }
        differ
    }
}

pub struct Live {
    current: ArcSwap<Snapshot>,
    status: Mutex<ReloadStatus>,
    bound: Bound,
    reloading: Mutex<()>,
    /// Reloads waiting for `reloading`.
    waiting: AtomicUsize,
    /// Counts swaps, bumped after each: a thread's copy of the snapshot
    /// ([`ThreadSnapshot`]) is current while it has not changed.
    swaps: AtomicU64,
    /// The generation requests are served on: set after `swaps` is
    /// bumped, so that whoever reads it (the admin API, a test) and then
    /// sends a request has that request served on this generation or a
    /// later one, never on the one before.
    generation: AtomicU64,
}

/// One thread's copy of the serving snapshot. A request takes a clone of
/// an `Arc` that only this thread counts: the snapshot's own count, which
/// every thread would write on every request, stays untouched (a counter
/// that two cores write moves its cache line between them each time).
#[derive(Default)]
pub struct ThreadSnapshot {
    held: Mutex<Option<(u64, Arc<Held>)>>,
}

/// The serving snapshot as one thread holds it: an `Arc` of its own
/// around the shared one, so that its count is this thread's alone.
pub struct Held(Arc<Snapshot>);

impl std::ops::Deref for Held {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl Live {
    pub fn new(first: Snapshot) -> Live {
        crate::metrics::get()
            .config_generation
            .set(first.generation as i64);
        Live {
            bound: Bound::of(&first),
            generation: AtomicU64::new(first.generation),
            current: ArcSwap::from_pointee(first),
            status: Mutex::new(ReloadStatus::default()),
            reloading: Mutex::new(()),
            waiting: AtomicUsize::new(0),
            swaps: AtomicU64::new(0),
        }
    }

    /// The serving snapshot, through this thread's copy of it (taken
    /// again after a swap).
    pub fn snapshot_here(&self, here: &ThreadSnapshot) -> Arc<Held> {
        let swaps = self.swaps.load(Ordering::Acquire);
        let mut held = here.held.lock().unwrap_or_else(PoisonError::into_inner);
        match &*held {
            Some((seen, snapshot)) if *seen == swaps => snapshot.clone(),
            _ => {
                let snapshot = Arc::new(Held(self.current.load_full()));
                *held = Some((swaps, snapshot.clone()));
                snapshot
            }
        }
    }

    /// Held for the whole of a reload, so that concurrent reloads (file,
    /// signal, REST) number their generations in order and a slower one
    /// cannot install an older reading over a newer one.
    pub fn one_reload_at_a_time(&self) -> MutexGuard<'_, ()> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let guard = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        guard
    }

    /// Like [`Live::one_reload_at_a_time`], but never waits: `None` while a
    /// reload is in progress.
    pub fn try_one_reload_at_a_time(&self) -> Option<MutexGuard<'_, ()>> {
        match self.reloading.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// How many reloads wait for the one in progress (a test holds a reload
    /// open and sees the next one queue up off the request path).
    pub fn reloads_waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// What the listeners were started with: in effect until a restart.
    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Installs a compiled snapshot.
    pub fn swap(&self, source: Source, next: Snapshot) {
        let generation = next.generation;
        let differ = self.bound.restart_needed(&next);
        if !differ.is_empty() {
            tracing::warn!(
                generation,
                changed = differ.join(", "),
                "these settings changed but only take effect on a restart; the running listeners keep the ones they started with"
            );
        }
        // The status changes under its lock together with the snapshot, so
        // whoever sees the new generation also sees its status.
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        status.last_reload_at = Some(SystemTime::now());
        // A download is merged with the text that serves, not with the
        // file on disk: it does not make a refused edit of the file good.
        if source != Source::Central {
            status.refused_file = None;
        }
        status.show_standing_refusal();
        let previous = self.current.swap(Arc::new(next));
        retire_series(&previous, &self.current.load());
        self.swaps.fetch_add(1, Ordering::Release);
        self.generation.store(generation, Ordering::Release);
        drop(status);
        crate::metrics::get()
            .config_generation
            .set(generation as i64);
        crate::metrics::get()
            .config_reload
            .with_label_values(&[source.label(), "ok"])
            .inc();
    }

    /// The central serves the document in use again: a refusal of its
    /// download no longer stands (one of the file's still does), as after
    /// a swap.
    pub fn central_confirmed(&self) {
        let mut status = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if status.error_source == Some(Source::Central) {
            status.show_standing_refusal();
        }
    }

    /// Records a refused reload; the serving snapshot stays.
    pub fn refuse(&self, source: Source, error: String) {
        crate::metrics::get()
            .config_reload
            .with_label_values(&[source.label(), "error"])
            .inc();
        if let Ok(mut status) = self.status.lock() {
            status.last_reload_at = Some(SystemTime::now());
            if source != Source::Central {
                status.refused_file = Some((error.clone(), source));
            }
            status.last_reload_error = Some(error);
            status.error_source = Some(source);
        }
    }
}

/// The metric series of the APIs (and throttle policies), applications
/// and auth servers `previous` had and `next` has not go now, not when
/// the last request begun on `previous` lets it go: an idle thread may
/// hold it for long.
fn retire_series(previous: &Snapshot, next: &Snapshot) {
    let mut by_name: HashMap<&str, Vec<&crate::config::snapshot::Api>> = HashMap::new();
    for api in &next.apis {
        by_name.entry(api.name.as_str()).or_default().push(api);
    }
    crate::metrics::retiring(|| {
        for api in &previous.apis {
            let Some(same_name) = by_name.get(api.name.as_str()) else {
                api.metrics.retire();
                continue;
            };
            let kept = same_name
                .iter()
                .flat_map(|a| a.throttle.iter().map(|p| p.name.as_str()));
            api.metrics.keep_policies(kept);
        }
    });
    let applications: HashSet<&str> = next.applications.list.iter().map(|a| &*a.name).collect();
    for application in &previous.applications.list {
        if !applications.contains(&*application.name) {
            crate::metrics::retire(Label::Application, &application.name);
        }
    }
    for id in previous.auth_servers.keys() {
        if !next.auth_servers.contains_key(id) {
            crate::metrics::retire(Label::AuthServer, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::first_snapshot as snapshot;

    #[test]
    fn a_changed_port_needs_a_restart_and_a_changed_api_does_not() {
        let running = Bound::of(&snapshot("ports: { http: 4485 }\n"));
        assert!(running
            .restart_needed(&snapshot("ports: { http: 4485 }\napis: []\n"))
            .is_empty());
        assert_eq!(
            running.restart_needed(&snapshot("ports: { http: 8080 }\n")),
            vec!["ports"]
        );
        assert_eq!(
            running.restart_needed(&snapshot("ports: { http: 4485 }\ntimeouts: { idle: 5s }\n")),
            vec!["timeouts"]
        );
    }

    /// A refused edit of the file stays shown until a reading of the file
    /// applies: a download refused and then made good in between does not
    /// make it good.
    #[test]
    fn a_refused_edit_outlives_a_download_refused_then_applied() {
        let live = Live::new(snapshot("ports: { http: 4485 }\n"));
        let next = |generation| {
            let mut next = snapshot("ports: { http: 4485 }\n");
            next.generation = generation;
            next
        };
        let shown = |live: &Live| {
            let status = live.status();
            (status.last_reload_error, status.error_source)
        };
        live.refuse(Source::File, "edit refused".into());
        live.refuse(Source::Central, "download refused".into());
        assert_eq!(
            shown(&live),
            (Some("download refused".into()), Some(Source::Central))
        );
        live.swap(Source::Central, next(2));
        assert_eq!(
            shown(&live),
            (Some("edit refused".into()), Some(Source::File))
        );
        live.swap(Source::Signal, next(3));
        assert_eq!(shown(&live), (None, None));
        // A download refused alone is made good by the next one.
        live.refuse(Source::Central, "download refused".into());
        live.swap(Source::Central, next(4));
        assert_eq!(shown(&live), (None, None));
    }

    #[test]
    fn a_threads_copy_is_taken_again_after_a_swap() {
        let live = Live::new(snapshot("ports: { http: 4485 }\n"));
        let here = ThreadSnapshot::default();
        let first = live.snapshot_here(&here);
        // The same copy while nothing was swapped.
        assert!(Arc::ptr_eq(&first, &live.snapshot_here(&here)));
        let mut next = snapshot("ports: { http: 4485 }\napis: []\n");
        next.generation = first.generation + 1;
        live.swap(Source::Api, next);
        let after = live.snapshot_here(&here);
        assert_eq!(after.generation, first.generation + 1);
        // Another thread's copy is its own.
        let there = ThreadSnapshot::default();
        assert!(!Arc::ptr_eq(&after, &live.snapshot_here(&there)));
        assert_eq!(live.snapshot_here(&there).generation, after.generation);
    }
}
