//! microgateway library.
pub mod auth;
pub mod authz_server;
pub mod config;
pub mod metrics;
