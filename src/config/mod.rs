//! Configuration: raw YAML → resolved → validated → compiled `Snapshot`.
pub mod secret;
pub use secret::Secret;
