//! microgateway library.
pub mod auth;
pub mod metrics;
