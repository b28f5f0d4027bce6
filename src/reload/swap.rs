//! The serving snapshot behind an `ArcSwap`: a request loads one `Arc` and
//! keeps it to the end, so requests in flight finish on the snapshot they
//! started with. A swap only ever installs a snapshot that compiled.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Snapshot;

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
}

pub struct Live {
    current: ArcSwap<Snapshot>,
    status: Mutex<ReloadStatus>,
}

impl Live {
    pub fn new(first: Snapshot) -> Live {
        crate::metrics::get()
            .config_generation
            .set(first.generation as i64);
        Live {
            current: ArcSwap::from_pointee(first),
            status: Mutex::new(ReloadStatus::default()),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Installs a compiled snapshot.
    pub fn swap(&self, source: Source, next: Snapshot) {
        let generation = next.generation;
        self.current.store(Arc::new(next));
        crate::metrics::get()
            .config_generation
            .set(generation as i64);
        crate::metrics::get()
            .config_reload
            .with_label_values(&[source.label(), "ok"])
            .inc();
        if let Ok(mut status) = self.status.lock() {
            status.last_reload_at = Some(SystemTime::now());
            status.last_reload_error = None;
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
            status.last_reload_error = Some(error);
        }
    }
}
