//! The integration tests: one binary, one module per area, all over real
//! loopback connections on port 0 (builders in `common`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "tests fail loudly and may print what they saw"
)]

mod admin;
mod applications;
mod approval_page;
mod authorize;
mod authz_form;
mod authz_postgres;
mod authz_server;
mod central;
mod cli;
mod client_faults;
mod common;
mod config_validation;
mod correlation;
mod cors;
mod dockerfile;
mod edge;
mod endpoints;
mod enforcement;
mod examples;
mod fail_closed;
mod fuzz_targets;
mod grpc;
mod grpc_deadline;
mod header_rules;
mod http1_differential;
mod http1_properties;
mod http2_floods;
mod import_cycles;
mod introspection;
mod introspection_gateway;
mod jwt_validation;
mod local_authorization_server;
mod logging;
mod parked;
mod process_resources;
mod readme_story;
mod reload;
mod routing;
mod schema;
mod slow_clients;
mod sse;
mod throttling;
mod tls;
mod token_properties;
mod token_store;
mod upstream_framing;
mod upstream_pool;
mod websocket;
