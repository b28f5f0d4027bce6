//! microgateway library.
pub mod auth;
pub mod config;
pub mod metrics;
