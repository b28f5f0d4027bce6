//! Hot reload: `swap` holds the serving snapshot; `reloader` is the one
//! pipeline every reload goes through (compile, prepare, swap, or keep the
//! last good snapshot and record why not); `watcher` (file changes, judged
//! by `reading` against what the serving snapshot was compiled from) and
//! `follow` (a central gateway's downloads) are two of its sources, SIGHUP
//! and the REST API the others; `ready` notes when the gateway has
//! started, so that what a reload adds later cannot hold its readiness.

pub mod follow;
mod reading;
pub mod ready;
pub mod reloader;
pub mod swap;
pub mod watcher;

pub use ready::StartLatch;
pub use reloader::Reloader;
pub use swap::{Bound, Live, ReloadStatus, Source};
pub use watcher::Watcher;
