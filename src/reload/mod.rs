//! Hot reload: `swap` holds the serving snapshot; `reloader` is the one
//! pipeline every reload goes through (compile, prepare, swap, or keep the
//! last good snapshot and record why not); `watcher` (file changes) and
//! `follow` (a central gateway's downloads) are two of its sources, SIGHUP
//! and the REST API the others.

pub mod follow;
pub mod reloader;
pub mod swap;
pub mod watcher;

pub use reloader::Reloader;
pub use swap::{Bound, Live, ReloadStatus, Source};
pub use watcher::Watcher;
