//! microgateway: an edge gateway that enforces OAuth2 scopes per resource,
//! can be its own authorization server, and can follow (or be) a central
//! configuration. One binary, three roles.
//!
//! # Modules, floor by floor
//!
//! A module uses only modules on the floors below its own, never one on
//! its floor or above (`tests/it/import_cycles.rs` checks this, and that
//! no file imports another that imports it back). Lower floors get narrow
//! handles — the [`reload::Reloader`], the admin port's [`admin::Admin`] —
//! never the gateway's state.
//!
//! 1. [`metrics`]: every metric. [`timer`]: the data path's deadlines
//!    (request head, upstream answer), one queue per listener thread, and
//!    its clock, read once per poll of a connection's task.
//!    [`path`]: the canonical form of a path, which request paths are
//!    matched and forwarded in and configured ones are held in.
//!    [`allocator`]: freed memory given back to the system.
//!    [`access_log`]: the access log's line, composed and handed to the
//!    log's writer. [`lockout`]: failed password attempts counted per
//!    user and per client, and the lock past a limit, for the Basic users
//!    of `proxy` and the password logins of `authz_server` alike; the
//!    address a lock counts a caller by (an IPv6 one by its /64).
//!    [`upstream_bound`]: the requests an API's upstream has in flight,
//!    bounded (`upstream.max_requests`), counted across reloads.
//! 2. [`config`]: YAML → checked, compiled, immutable `Snapshot` (with a
//!    generation); every finding with file, line and column. [`logging`]:
//!    the process's log, written by a thread of its own through a bounded
//!    queue (a request never waits for stderr).
//! 3. [`auth`]: a bearer token becomes a principal (local JWT validation
//!    against a JWKS, or RFC 7662 introspection through a cache), and the
//!    scope syntax both sides of OAuth2 share. [`basic_auth`]: Basic
//!    credentials, checked for the admin port and the central export
//!    alike. [`http1`]: HTTP/1.1 on the wire for both sides (heads parsed
//!    and encoded, bodies framed, chunked coding); used by `server` and
//!    `proxy`, using neither.
//! 4. [`authz_server`]: the local OAuth2 authorization server (SQLite or
//!    PostgreSQL store); it publishes its keys as a JWKS, so `auth` never
//!    imports it.
//!    [`policy`]: pure decisions over a snapshot — route, scopes, the
//!    verdict `explain` prints. [`throttle`]: the throttle
//!    policies' counters (GCRA, in memory or on Redis) and RateLimit fields.
//! 5. [`proxy`]: the data path, its phases in order, and the upstream pool
//!    and HTTP/1.1 client.
//! 6. [`server`]: listeners, TLS, HTTP/1.1 and HTTP/2, limits, drain.
//!    [`central`]: the export a central serves, downloading it, merging a
//!    download over the local file.
//! 7. [`reload`]: the serving snapshot (`swap`), the one reload pipeline
//!    (`Reloader`: compile, prepare, swap; off the runtime workers), its
//!    sources: the file watcher and the central poll loop (`follow`), and
//!    the start (`ready`: met once, after which the JWKS of what a reload
//!    adds no longer count for readiness).
//! 8. [`admin`]: health, metrics and REST on the admin port.
//! 9. [`gateway`]: a running gateway (snapshot, runtime, listeners), which
//!    wires the floors below; [`cli`]: the commands.
//!
//! # The life of a request
//!
//! A listener thread accepts the connection (`server`) and hands each
//! request, with the `Arc<Snapshot>` loaded once for it, to the proxy or
//! the authorization server. `proxy::serve` then runs: match (the path
//! canonicalised once, API and resource found) → authenticate (the token
//! becomes a principal) → authorize (API scopes granted, or a 401/403 that
//! names the scopes that would do) → throttle (429 past a limit, the
//! RateLimit fields otherwise) → transform (token properties into
//! headers) → outbound auth (named credentials) → forward: a pooled
//! keep-alive HTTP/1.1 connection on the same thread carries the request,
//! and the response streams back. Nothing reaches an upstream without the
//! grant of the authorize phase.
pub mod access_log;
pub mod admin;
pub mod allocator;
pub mod auth;
pub mod authz_server;
pub mod basic_auth;
pub mod central;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod http1;
pub mod lockout;
pub mod logging;
pub mod metrics;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod sparse;
pub mod throttle;
pub mod timer;
pub mod upstream_bound;
