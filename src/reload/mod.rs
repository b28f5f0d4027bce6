//! Hot reload: `swap` holds the serving snapshot; `watcher` turns file
//! changes into reloads. A reload compiles the whole configuration and
//! swaps it in, or keeps the last good snapshot and records why not.

pub mod swap;
pub mod watcher;

pub use swap::{Bound, Live, ReloadStatus, Source};
pub use watcher::Watcher;
