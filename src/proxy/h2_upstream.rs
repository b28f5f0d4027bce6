//! HTTP/2 to upstreams (`upstream.protocol: http2 | h2c`), for gRPC and
//! any other API whose upstream speaks it.
//!
//! Each thread keeps its own connections per upstream (scheme, authority
//! and the CAs it is verified against) and multiplexes requests over
//! them: a connection carries at most [`MAX_STREAMS`] requests at once
//! (and the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`, below which
//! hyper queues); past that a new one is opened, up to
//! [`MAX_CONNECTIONS`] per upstream, then the least loaded takes the
//! request. A connection the upstream closed is replaced.
//!
//! A failure of the client's request body is the client's (400/408; 413
//! over the limit), never counted as the upstream's. hyper only logs a
//! request body's error and resets the stream: the error is kept by the
//! body as it goes out (`Watched`), so that the client is told. The
//! body also tells whose turn it is: `timeout` is the upstream's, for
//! taking each piece of the body hyper hands on and for the response
//! head once the body has gone out; while the exchange waits for the
//! client's next piece, the wait is the client's, bounded where the server
//! reads its body (`timeouts.body_read`). An upstream may answer before
//! the body ends (gRPC bidirectional calls).
//!
//! A gRPC client's deadline (`grpc-timeout`, read by `serve`) ends every
//! one of those waits, whoever's turn it is, when it comes before the
//! timeout does ([`Bound`]): the call is then DEADLINE_EXCEEDED, and a
//! call whose deadline has passed is never sent. Each attempt tells the
//! upstream the time that remains.
//!
//! Bodies stream both ways, trailers included (`grpc-status`). A request
//! the upstream did not process — refused after its `GOAWAY`
//! (`REFUSED_STREAM`), or never sent on a connection that closed — is
//! sent again on another connection (the one that refused it takes no
//! new request), at most `MAX_REPLAYS` times; a body
//! the upstream refused after it went out is replayed once, from the copy
//! kept of its first [`REPLAY_LIMIT`] bytes (a longer body is not retried).
//! Connecting, over all the tries of one request, ends within one
//! `timeout` of its start (as over HTTP/1.1, `pool::TryBounds`): each try
//! connects (or waits for a connection being opened) within what earlier
//! tries left, and none starts once it is spent. A timeout is never
//! retried, nor a request the upstream began to answer.

mod request_body;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper::client::conn::TrySendError;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::Notify;

use super::grpc_timeout::{self, GRPC_TIMEOUT};
use super::pool::{Connector, Key, SendError};
use super::{BadGateway, Body, BodyFault, BoxError, Rejection};
use crate::config::snapshot::Api;
use crate::metrics::ApiMetrics;
use crate::timer::Deadline;
use request_body::{lock, Progress, Recording, Replay, Turn, Watched};

/// Requests one connection carries at once (the RFC 9113 §6.5.2
/// recommended minimum of the upstream's limit).
pub const MAX_STREAMS: usize = 100;
/// Connections kept per upstream (per thread).
pub const MAX_CONNECTIONS: usize = 8;

/// What an upstream may send on one stream before the gateway has passed
/// it on: a client that reads slowly (or not at all) holds this much.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's window holds every stream's whole window: data held
/// for clients that do not read never stops the other streams (with
/// hyper's default, 2 MiB a stream and 5 MiB in all, three slow readers
/// would starve a connection's other calls).
const CONNECTION_WINDOW: u32 = STREAM_WINDOW * MAX_STREAMS as u32;
/// Bytes of a request body kept so that a refused request can be sent again.
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Why an HTTP/2 exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error("{0}")]
    Connect(SendError),
    #[error("the upstream did not answer in time")]
    Timeout,
    /// The client's gRPC deadline passed first.
    #[error("the call's deadline (grpc-timeout) passed")]
    Deadline,
    /// The client's request body failed (its error is the client's).
    #[error("request body: {0}")]
    RequestBody(BoxError),
    #[error("request: {0}")]
    Request(hyper::Error),
    /// RFC 9110 §15: a status code is 100-599.
    #[error("status code {0} outside 100-599")]
    Status(u16),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    https: bool,
    authority: Authority,
    trust: Option<Arc<[u8]>>,
}

struct H2Conn {
    sender: SendRequest<Body>,
    in_flight: Arc<AtomicUsize>,
    /// When a request last took it.
    used: Instant,
}

/// One thread's connections, those being opened, and when idle ones are
/// next looked for.
struct Pool {
    conns: HashMap<PoolKey, Vec<H2Conn>>,
    /// A connection being opened per upstream: what its requests waiting
    /// for it are woken by, and since when.
    opening: HashMap<PoolKey, (Arc<Notify>, Instant)>,
    next_sweep: Instant,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        conns: HashMap::new(),
        opening: HashMap::new(),
        next_sweep: Instant::now() + SWEEP_EVERY,
    });
}

/// A connection without requests for this long is let go (hyper closes
/// it once its last handle is dropped), so upstreams a reload removed do
/// not keep connections.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What a request gets of this thread's pool.
enum Claim {
    /// A connection with room for it.
    Pooled((SendRequest<Body>, Arc<AtomicUsize>)),
    /// A new connection is due, and this request opens it.
    Open(Opening),
    /// A connection is being opened: the request waits for it instead of
    /// opening another (a burst on a cold pool opens one, not one each).
    Wait(Arc<Notify>),
}

/// A connection being opened for `key`; dropped, it lets the requests
/// waiting for it look again.
struct Opening {
    key: PoolKey,
}

impl Drop for Opening {
    fn drop(&mut self) {
        // Not when the thread ends (its pool goes too) or the pool is in
        // use up the stack: nothing waits then that could be woken.
        let _ = POOL.try_with(|pool| {
            if let Ok(mut pool) = pool.try_borrow_mut() {
                if let Some((done, _)) = pool.opening.remove(&self.key) {
                    done.notify_waiters();
                }
            }
        });
    }
}

/// A connection for a request to `key`: a pooled one with room, a new one
/// it opens, or, while one is being opened, that one once it is; made or
/// waited for by `connect_by`.
async fn checkout(
    connector: &Connector,
    key: &Key<'_>,
    pool_key: &PoolKey,
    bound: Bound,
    connect_by: tokio::time::Instant,
) -> Result<(SendRequest<Body>, Arc<AtomicUsize>), H2Error> {
    loop {
        match claim(pool_key, bound.timeout) {
            Claim::Pooled(conn) => return Ok(conn),
            Claim::Open(opening) => {
                let conn = connect(connector, key, pool_key, bound, connect_by).await;
                drop(opening);
                return conn;
            }
            Claim::Wait(done) => {
                // Enabled before anything else runs on this thread: the
                // wake-up of the connection being opened is not missed.
                let waiting = done.notified();
                if tokio::time::timeout_at(connect_by, waiting).await.is_err() {
                    return Err(H2Error::Connect(SendError::Timeout(bound.timeout)));
                }
            }
        }
    }
}

/// Takes the connection whose requests `in_flight` counts out of this
/// thread's pool: the requests it carries finish, none is added.
fn set_aside(key: &PoolKey, in_flight: &Arc<AtomicUsize>) {
    POOL.with_borrow_mut(|pool| {
        if let Some(conns) = pool.conns.get_mut(key) {
            conns.retain(|c| !Arc::ptr_eq(&c.in_flight, in_flight));
        }
    });
}

/// An opening older than `timeout` (whose end was never told) is no
/// longer waited for: this request opens one.
fn claim(key: &PoolKey, timeout: Duration) -> Claim {
    if let Some(conn) = pooled(key) {
        return Claim::Pooled(conn);
    }
    POOL.with_borrow_mut(|pool| match pool.opening.get(key) {
        Some((done, since)) if since.elapsed() < timeout => Claim::Wait(Arc::clone(done)),
        _ => {
            let opening = (Arc::new(Notify::new()), Instant::now());
            if let Some((stale, _)) = pool.opening.insert(key.clone(), opening) {
                stale.notify_waiters();
            }
            Claim::Open(Opening { key: key.clone() })
        }
    })
}

/// A usable connection from this thread's pool, or `None` when a new one
/// is due.
fn pooled(key: &PoolKey) -> Option<(SendRequest<Body>, Arc<AtomicUsize>)> {
    POOL.with_borrow_mut(|pool| {
        let now = Instant::now();
        if now >= pool.next_sweep {
            pool.next_sweep = now + SWEEP_EVERY;
            pool.conns.retain(|_, conns| {
                conns.retain(|c| {
                    !c.sender.is_closed()
                        && (c.in_flight.load(Ordering::Relaxed) > 0
                            || now.saturating_duration_since(c.used) < IDLE_TIMEOUT)
                });
                !conns.is_empty()
            });
        }
        let conns = pool.conns.get_mut(key)?;
        conns.retain(|c| !c.sender.is_closed());
        let load = |c: &H2Conn| c.in_flight.load(Ordering::Relaxed);
        let full = conns.len() >= MAX_CONNECTIONS;
        let least = conns.iter_mut().min_by_key(|c| load(c))?;
        if load(least) < MAX_STREAMS || full {
            least.used = now;
            Some((least.sender.clone(), least.in_flight.clone()))
        } else {
            None
        }
    })
}

/// A new connection to `key`'s upstream, TCP, TLS and HTTP/2 handshakes
/// all done by `connect_by`.
async fn connect(
    connector: &Connector,
    key: &Key<'_>,
    pool_key: &PoolKey,
    bound: Bound,
    connect_by: tokio::time::Instant,
) -> Result<(SendRequest<Body>, Arc<AtomicUsize>), H2Error> {
    let stream = connector
        .h2_stream(key, connect_by, bound.timeout)
        .await
        .map_err(H2Error::Connect)?;
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_reset_streams(64)
        .max_header_list_size(64 * 1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        // A pooled connection waits between requests: a dead one is found
        // by its PING, not by the next request waiting `upstream.timeout`.
        .keep_alive_while_idle(true)
        .timer(hyper_util::rt::TokioTimer::new());
    let handshake = builder.handshake(TokioIo::new(stream));
    let (sender, conn) = tokio::time::timeout_at(connect_by, handshake)
        .await
        .map_err(|_| H2Error::Connect(SendError::Timeout(bound.timeout)))?
        .map_err(|e| H2Error::Connect(SendError::Connect(e.into())))?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "upstream HTTP/2 connection ended");
        }
    });
    let in_flight = Arc::new(AtomicUsize::new(0));
    POOL.with_borrow_mut(|pool| {
        let conns = pool.conns.entry(pool_key.clone()).or_default();
        conns.retain(|c| !c.sender.is_closed());
        if conns.len() < MAX_CONNECTIONS {
            conns.push(H2Conn {
                sender: sender.clone(),
                in_flight: in_flight.clone(),
                used: Instant::now(),
            });
        }
    });
    Ok((sender, in_flight))
}

/// One request's upstream, as `forward` worked it out.
pub struct Exchange<'a> {
    pub key: &'a Key<'a>,
    /// Origin-form target at the upstream.
    pub path_and_query: &'a str,
    pub bound: Bound,
    pub started: Instant,
}

/// What ends each wait on the upstream: `upstream.timeout` from the
/// wait's start, or the client's gRPC deadline (`grpc-timeout`) if it
/// comes first. One timer per wait, as without a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub timeout: Duration,
    pub deadline: Option<tokio::time::Instant>,
}

impl Bound {
    /// When a wait on the upstream that started at `since` ends.
    fn due(self, since: tokio::time::Instant) -> tokio::time::Instant {
        let due = since + self.timeout;
        self.deadline.map_or(due, |deadline| deadline.min(due))
    }

    /// The time the call has left, if the client stated a deadline;
    /// [`H2Error::Deadline`] once it has passed.
    fn remaining(self) -> Result<Option<Duration>, H2Error> {
        let Some(deadline) = self.deadline else {
            return Ok(None);
        };
        match deadline.saturating_duration_since(tokio::time::Instant::now()) {
            Duration::ZERO => Err(H2Error::Deadline),
            left => Ok(Some(left)),
        }
    }

    /// The client's deadline has passed.
    fn passed(self) -> bool {
        self.remaining().is_err()
    }

    /// A wait that ran out ran out on the client's deadline once that has
    /// passed: the call is DEADLINE_EXCEEDED, not the upstream's timeout.
    fn blame(self, error: H2Error) -> H2Error {
        match error {
            H2Error::Timeout | H2Error::Connect(SendError::Timeout(_)) if self.passed() => {
                H2Error::Deadline
            }
            error => error,
        }
    }
}

/// Forwards an authorized request over HTTP/2; failures become the
/// client's 400/408 or the upstream's 502/504, as over HTTP/1.1 (a body
/// over the limit, 413, is told by `forward`). Only the upstream's own
/// failures count in `upstream_errors_total`.
pub async fn forward(
    connector: &Connector,
    api: &Api,
    req: Request<Body>,
    exchange: Exchange<'_>,
) -> Result<Response<Body>, Rejection> {
    let result = send(connector, req, &exchange, (&api.metrics, api.grpc)).await;
    let error = match result {
        Ok(response) => {
            api.metrics
                .observe_upstream(exchange.started.elapsed().as_secs_f64());
            return Ok(response);
        }
        Err(error) => exchange.bound.blame(error),
    };
    let (rejection, cause) = match &error {
        // The client's body broke (or went over the limit): the exchange
        // was cut before the request was complete, and the upstream is
        // not to blame.
        H2Error::RequestBody(body_error) => {
            tracing::debug!(%error, api = api.name, "the client's request body failed");
            return Err(Rejection::ClientBody(BodyFault::of(body_error)));
        }
        // The client's deadline may be shorter than any upstream could
        // answer in: not counted as the upstream's failure.
        H2Error::Deadline => {
            api.metrics
                .observe_upstream(exchange.started.elapsed().as_secs_f64());
            return Err(Rejection::DeadlineExceeded);
        }
        H2Error::Timeout | H2Error::Connect(SendError::Timeout(_)) => {
            (Rejection::GatewayTimeout, "timeout")
        }
        H2Error::Connect(_) => (Rejection::BadGateway(BadGateway::Unreachable), "connect"),
        H2Error::Request(_) => (Rejection::BadGateway(BadGateway::NoAnswer), "protocol"),
        H2Error::Status(_) => (Rejection::BadGateway(BadGateway::InvalidAnswer), "protocol"),
    };
    api.metrics
        .observe_upstream(exchange.started.elapsed().as_secs_f64());
    super::upstream_fault::failed(&api.metrics, cause, &error);
    Err(rejection)
}

/// Most times a request the upstream did not process is sent again.
const MAX_REPLAYS: u8 = 3;

/// Sends `req` to the exchange's upstream over HTTP/2 and returns its
/// response, streaming. The exchange's [`Bound`] ends connecting, each
/// piece of the request body the upstream takes, the wait for the
/// response head once the request body has gone out, and then each
/// silence of the response body; the client's pace is not the upstream's
/// (its deadline is).
pub async fn send(
    connector: &Connector,
    req: Request<Body>,
    exchange: &Exchange<'_>,
    counted: (&ApiMetrics, bool),
) -> Result<Response<Body>, H2Error> {
    let Exchange {
        key,
        path_and_query,
        bound,
        ..
    } = *exchange;
    let pool_key = PoolKey {
        https: key.scheme == &Scheme::HTTPS,
        authority: key.authority.clone(),
        trust: key.ca_bundle.map(|b| b.pem.clone()),
    };
    let uri = Uri::builder()
        .scheme(key.scheme.clone())
        .authority(key.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| H2Error::Connect(SendError::Connect(e.into())))?;
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    // `:authority` names the upstream.
    parts.headers.remove(HOST);
    let head = (
        parts.method.clone(),
        parts.uri.clone(),
        parts.headers.clone(),
    );
    let replay = Arc::new(Mutex::new(Replay::new(body)));
    let (recording, mut progress) = Watched::new(Recording(replay.clone()));
    let mut req = Request::from_parts(parts, recording.boxed());
    // Connecting, over all the tries, within one `timeout` (and the
    // client's deadline): a try never starts a new one.
    let connect_by = bound.due(tokio::time::Instant::now());
    // Sends again what the upstream did not process, a bounded number of
    // times (under load several pooled connections can be going away at
    // once), and only while the time for connecting lasts.
    let mut replays = 0u8;
    let exhausted =
        |replays: u8| replays >= MAX_REPLAYS || tokio::time::Instant::now() >= connect_by;
    // The body can be replayed once: what the recording kept is handed over.
    let mut body_replayed = false;
    loop {
        // A call whose deadline has passed opens no connection.
        bound.remaining()?;
        let (mut sender, in_flight) =
            checkout(connector, key, &pool_key, bound, connect_by).await?;
        let guard = InFlight::new(in_flight);
        match tokio::time::timeout_at(connect_by, sender.ready()).await {
            Err(_) => return Err(H2Error::Timeout),
            // Closed before the request was handed to it: the request is
            // still ours, for a new connection.
            Ok(Err(error)) if exhausted(replays) => return Err(H2Error::Request(error)),
            Ok(Err(_)) => {
                replays += 1;
                continue;
            }
            Ok(Ok(())) => {}
        }
        // The upstream is told the time the call has left, as it goes.
        if let Some(left) = bound.remaining()? {
            req.headers_mut()
                .insert(GRPC_TIMEOUT, grpc_timeout::encode(left));
        }
        // Not polled yet: the upstream's turn, from now.
        progress.restart();
        let error = match answer(sender.try_send_request(req), &progress, bound).await? {
            Ok(response) if response.status().as_u16() > 599 => {
                return Err(H2Error::Status(response.status().as_u16()));
            }
            Ok(response) => {
                lock(&replay).answered();
                return Ok(respond(response, guard, bound, counted));
            }
            Err(mut error) => match error.take_message() {
                // Never sent: send it again as it is.
                Some(unsent) if !exhausted(replays) => {
                    replays += 1;
                    req = unsent;
                    continue;
                }
                _ => error.into_error(),
            },
        };
        // hyper resets the stream of a body that failed, and tells only of
        // the reset.
        if let Some(body_error) = progress.failure() {
            return Err(H2Error::RequestBody(body_error));
        }
        if exhausted(replays) || body_replayed || !refused(&error) {
            return Err(H2Error::Request(error));
        }
        // Sent again elsewhere: the connection that refused it may be going
        // away (its `GOAWAY` not read yet) or full, and takes no new request.
        set_aside(&pool_key, &guard.0);
        let Some(body) = lock(&replay).again() else {
            return Err(H2Error::Request(error));
        };
        tracing::debug!(%error, "request refused by the upstream; sent again");
        replays += 1;
        body_replayed = true;
        let (body, watched) = Watched::new(body);
        progress = watched;
        let (method, uri, headers) = head.clone();
        let mut again = Request::new(body.boxed());
        *again.method_mut() = method;
        *again.uri_mut() = uri;
        *again.version_mut() = http::Version::HTTP_2;
        *again.headers_mut() = headers;
        req = again;
    }
}

/// The upstream did not process the request: `REFUSED_STREAM` (RFC 9113
/// §8.7), a stream past the upstream's `GOAWAY`, or a request canceled
/// before it went out. A stream the upstream had taken and whose
/// connection then closed is none of these.
fn refused(error: &hyper::Error) -> bool {
    if error.is_canceled() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            // Streams past a GOAWAY's last stream id were not processed
            // (RFC 9113 §6.8), whatever its error code.
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = cause.source();
    }
    false
}

/// Waits for the upstream's answer to a request whose body `progress`
/// follows. The upstream has `bound.timeout` from the moment it was
/// handed the request or the last piece of its body (or the body ended)
/// to take the next piece or answer; while the body waits for the
/// client, the server bounds the client's silence. The client's deadline
/// ends the wait on either turn. A body that failed ends the wait.
async fn answer<F, T>(
    response: F,
    progress: &Progress,
    bound: Bound,
) -> Result<Result<T, TrySendError<Request<Body>>>, H2Error>
where
    F: Future<Output = Result<T, TrySendError<Request<Body>>>>,
{
    let mut response = pin!(response);
    let mut timer: Option<Deadline> = None;
    poll_fn(|cx| {
        if let Poll::Ready(answered) = response.as_mut().poll(cx) {
            progress.stop_watching();
            return Poll::Ready(Ok(answered));
        }
        let due = match progress.turn(cx.waker()) {
            Turn::Client => match bound.deadline {
                Some(deadline) => deadline,
                None => {
                    timer = None;
                    return Poll::Pending;
                }
            },
            Turn::Upstream(since) => bound.due(since),
            Turn::Failed => return Poll::Ready(Err(H2Error::RequestBody(progress.error()))),
        };
        let timer = match &mut timer {
            Some(timer) if timer.when() == due => timer,
            slot => slot.insert(Deadline::at(due)),
        };
        Pin::new(timer).poll(cx).map(|()| Err(H2Error::Timeout))
    })
    .await
}

/// The upstream's answer, its body counted in `metrics` (the API's) as
/// it ends: a failure of the upstream's, and, for a gRPC API (`grpc`), the
/// call's status.
fn respond(
    response: Response<hyper::body::Incoming>,
    guard: InFlight,
    bound: Bound,
    (metrics, grpc): (&ApiMetrics, bool),
) -> Response<Body> {
    let (parts, body) = response.into_parts();
    // Trailers-only: the status is in the head.
    let status = parts.headers.get("grpc-status").filter(|_| grpc);
    if let Some(status) = status {
        metrics.count_grpc(status.as_bytes());
    }
    let body = ResponseBody {
        inner: body,
        _guard: guard,
        bound,
        silence: None,
        metrics: metrics.clone(),
        grpc_pending: grpc && status.is_none(),
    };
    Response::from_parts(parts, body.boxed())
}

/// Counts a request on its connection while its exchange lasts.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream's response body: each silence bounded (and none lasts
/// past the client's deadline), the connection's stream counted until it
/// ends, the `grpc-status` trailer counted (a deadline passing first as
/// `4`, DEADLINE_EXCEEDED), and an upstream failing it (silent too long,
/// its stream reset) counted in `upstream_errors_total`.
struct ResponseBody {
    inner: hyper::body::Incoming,
    _guard: InFlight,
    bound: Bound,
    silence: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: ApiMetrics,
    /// A gRPC call whose status is still to be counted.
    grpc_pending: bool,
}

impl ResponseBody {
    fn count_grpc(&mut self, status: &[u8]) {
        if std::mem::take(&mut self.grpc_pending) {
            self.metrics.count_grpc(status);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the upstream went silent for longer than the timeout")]
struct Silent;

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.silence = None;
                match &frame {
                    Some(Ok(frame)) => {
                        let trailers = frame.trailers_ref();
                        if let Some(status) = trailers.and_then(|t| t.get("grpc-status")) {
                            this.count_grpc(status.as_bytes());
                        }
                    }
                    // The upstream reset its stream or broke the protocol.
                    Some(Err(error)) => {
                        super::upstream_fault::broke_off(&this.metrics, "protocol", Some(&error));
                    }
                    None => {}
                }
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let bound = this.bound;
                let silence = this.silence.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(
                        bound.due(tokio::time::Instant::now()),
                    ))
                });
                match silence.as_mut().poll(cx) {
                    Poll::Ready(()) if bound.passed() => {
                        this.count_grpc(b"4");
                        // The client's stream is reset with CANCEL (its
                        // deadline ended the call), not INTERNAL_ERROR.
                        tracing::debug!(
                            "the call's deadline (grpc-timeout) passed as its answer streamed"
                        );
                        let cancel = h2::Error::from(h2::Reason::CANCEL);
                        Poll::Ready(Some(Err(Box::new(cancel))))
                    }
                    Poll::Ready(()) => {
                        super::upstream_fault::broke_off(&this.metrics, "timeout", None);
                        Poll::Ready(Some(Err(Box::new(Silent))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
