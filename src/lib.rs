//! microgateway: an edge gateway that enforces OAuth2 scopes per resource,
//! can be its own authorization server, and can follow (or be) a central
//! configuration. One binary, three roles.
//!
//! # Modules
//!
//! - [`config`]: YAML → checked, compiled, immutable `Snapshot` (with a
//!   generation); every finding with file, line and column.
//! - [`reload`]: the serving snapshot (`swap`) and the file watcher.
//! - [`policy`]: pure decisions over a snapshot — canonical path, route,
//!   scopes, the verdict `explain` prints.
//! - [`auth`]: a bearer token becomes a principal (local JWT validation
//!   against a JWKS, or RFC 7662 introspection through a cache).
//! - [`proxy`]: the data path, its phases in order, and the upstream pool
//!   and HTTP/1.1 client.
//! - [`http1`]: HTTP/1.1 on the wire for both sides (heads parsed and
//!   encoded, bodies framed, chunked coding); used by `server` and
//!   `proxy`, using neither.
//! - [`authz_server`]: the local OAuth2 authorization server (SQLite store).
//! - [`central`]: exporting settings to a fleet, and following a central.
//! - [`admin`]: health, metrics and REST on the admin port.
//! - [`server`]: listeners, TLS, HTTP/1.1 and HTTP/2, limits, drain.
//! - [`timer`]: the data path's deadlines (request head, upstream answer),
//!   one queue per listener thread.
//! - [`gateway`]: a running gateway (snapshot, runtime, listeners);
//!   [`cli`] the commands; [`metrics`] every metric.
//!
//! # The life of a request
//!
//! A listener thread accepts the connection (`server`) and hands each
//! request, with the `Arc<Snapshot>` loaded once for it, to the proxy or
//! the authorization server. `proxy::serve` then runs: match (the path
//! canonicalised once, API and resource found) → authenticate (the token
//! becomes a principal) → authorize (API scopes granted, or a 401/403 that
//! names the scopes that would do) → transform (token properties into
//! headers) → outbound auth (named credentials) → forward: a pooled
//! keep-alive HTTP/1.1 connection on the same thread carries the request,
//! and the response streams back. Nothing reaches an upstream without the
//! grant of the authorize phase.
pub mod admin;
pub mod auth;
pub mod authz_server;
pub mod central;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod http1;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod timer;
