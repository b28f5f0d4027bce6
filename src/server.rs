//! Listeners: accepts connections on a bound socket (at most
//! `limits.max_connections` at a time; the next one waits in the backlog
//! while idle and stalled connections give their slot, `slots`),
//! optionally completes a TLS handshake within `timeouts.header_read` (given
//! up, as an idle connection, when the port runs out of slots once it has
//! had [`HANDSHAKE_GRACE`], or when it stops), then
//! serves HTTP/1.1 (the gateway's own codec, `h1`) and HTTP/2 (hyper's; ALPN
//! `h2`, or h2c by prior knowledge) with the configured header limits,
//! stream limits and timeouts, and drains in-flight requests on shutdown.
//!
//! Timeouts of a connection:
//! - An HTTP/1.1 head that has begun must be complete within `header_read`
//!   (else 408 and the connection closed).
//! - A connection with no request in flight is closed (HTTP/2: `GOAWAY`)
//!   after `header_read` when it has not sent a first request, after `idle`
//!   once it has. Requests in flight, however slow, are never cut by it.
//! - A request body whose client stays silent for `body_read` fails with
//!   `BodyFault::Stalled` (the handler answers 408); any other failure
//!   of a client's body is a `BodyFault` too: the client's, never the
//!   upstream's.
//! - A WebSocket tunnel (`proxy::tunnel`) keeps its connection's slot (an
//!   HTTP/2 tunnel counts as a request in flight on its connection); it
//!   has its own bounds (`tunnel_idle`, `tunnel_max_lifetime`) and, on
//!   shutdown, the drain time before it is closed.
//! - A connection whose client takes nothing of an answer for `send`
//!   (HTTP/1.1: a write makes no progress; HTTP/2: an answer waits for a
//!   flow-control window the client does not open) is closed.
//!
//! A TLS connection ends as at shutdown when a reload replaces the
//! client-certificate setting its handshake was verified under
//! (`verified`): what is in flight has `timeouts.drain` to finish (HTTP/1.1:
//! the connection closes after the answer; HTTP/2: `GOAWAY`), an idle
//! connection closes at once, its WebSocket tunnels close at once, and a
//! request that comes after the change is not served (HTTP/1.1: the
//! connection closes; HTTP/2: the stream is refused, `REFUSED_STREAM`, safe
//! to retry).

/// How long a new connection may take to finish its TLS handshake and send
/// its first request before it gives its slot to a client waiting for one:
/// a few round trips, even across continents.
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(1);

mod activity;
pub mod client_cert;
pub mod cpus;
pub mod fds;
mod h1;
mod h2_bodies;
mod prefixed;
mod slots;
pub mod spread;
pub mod tls;
mod verified;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::UPGRADE;
use http::{Method, Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use self::activity::{Activity, InFlight};
use self::h2_bodies::{H2Body, Tracked};
use self::prefixed::Prefixed;
pub use self::slots::Slots;
use self::verified::{retired, Verified};
use crate::config::snapshot::{Limits, Timeouts};
use crate::proxy::room::Room;
use crate::proxy::tunnel;
use crate::proxy::Body;

/// Connection settings taken from the snapshot at start.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub limits: Limits,
    pub timeouts: Timeouts,
}

/// HTTP/2 (HTTP/1 has its own codec, `h1`).
fn http2_builder(settings: ConnSettings) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let header_list = u32::try_from(settings.limits.max_header_bytes).unwrap_or(u32::MAX);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // Bounds the decoded header block, so CONTINUATION floods end in a
        // stream error instead of growing the buffer.
        .max_header_list_size(header_list)
        // Rapid reset (CVE-2023-44487) and locally-caused resets: over
        // these, the connection is closed with GOAWAY.
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        // What clients may send before the gateway reads: 1 MiB a
        // stream, so that one upload has a whole MiB in flight, and 4 MiB
        // a connection (fixed: hyper's adaptive window is off unless
        // asked for), not 256 streams of 1 MiB. Bodies read out of it to
        // be held whole share a `BodyRoom` instead.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        // What a stream's answer may hold ahead of the socket once the
        // client's window has room: a client that opens its windows wide
        // and reads nothing pins this per stream, not the answers. A TLS
        // download took a third more CPU per byte at 64 KiB than at 1 MiB,
        // a tenth more at 128 or 256 KiB (debug build, one stream).
        .max_send_buf_size(128 << 10)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
        .enable_connect_protocol();
    builder
}

/// How connections are secured on one listener.
#[derive(Clone)]
pub enum Transport {
    Plain,
    Tls(Arc<tls::LiveTls>),
}

/// The connection slots of one listener (or of the sockets of one port),
/// `limits.max_connections` of them, its `limits.max_tunnels` and its
/// `limits.max_streams`.
pub fn connection_slots(settings: ConnSettings) -> Arc<Slots> {
    Arc::new(Slots::new(
        slot_count(settings),
        settings.limits.max_tunnels,
        settings.limits.max_streams,
    ))
}

fn slot_count(settings: ConnSettings) -> usize {
    settings
        .limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize))
}

/// A peer's address as `trusted_proxies`, `ip_filter` and `ip_ranges` name
/// it: a dual-stack socket (`::`) gives an IPv4 peer as `::ffff:a.b.c.d`,
/// which is its IPv4 address.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// When a gateway's ports stop, and when what they still serve is cut.
#[derive(Clone)]
pub struct Shutdown {
    /// Turns true to stop accepting and drain.
    pub stop: watch::Receiver<bool>,
    /// Turned true by the first port whose drain timeout passes, before it
    /// closes what is left: shared by the ports of one gateway, it tells a
    /// request dropped unanswered that the shutdown cut it (its client did
    /// not leave).
    pub forced: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        Shutdown {
            stop,
            forced: Arc::new(watch::channel(false).0),
        }
    }

    /// Whether the drain timeout has passed and connections are being cut.
    pub fn is_forced(&self) -> bool {
        *self.forced.borrow()
    }
}

/// Serves `listener` until `shutdown.stop` turns true, then drains
/// connections for at most `timeouts.drain` and closes what is left.
pub async fn serve<H, F>(
    listener: TcpListener,
    transport: Transport,
    settings: ConnSettings,
    slots: Arc<Slots>,
    shutdown: Shutdown,
    mut seat: Option<spread::Seat>,
    handler: H,
) where
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let port = Arc::new(Port {
        settings,
        slots: slots.clone(),
        http2: http2_builder(settings),
        transport,
    });
    let Shutdown {
        mut stop,
        forced: force,
    } = shutdown;
    let forced = force.subscribe();
    // The connections' own receiver: the loop below waits on `stop`.
    let conn_stop = stop.clone();
    let start = |stream: TcpStream, peer, permit, counted: Option<spread::Serving>| {
        // Boxed before the task: what the task's future captures it holds
        // for the connection's whole life, idle or not.
        let conn = Box::new(Conn {
            accepted: Some(stream),
            _held: (permit, counted),
            signals: Signals {
                stop: conn_stop.clone(),
                forced: forced.clone(),
                pressure: slots.pressure().subscribe(),
                slots: slots.clone(),
            },
            activity: Arc::new(Activity::new(settings.timeouts.send)),
            verified: None,
            port: port.clone(),
            peer,
        });
        let handler = handler.clone();
        tokio::spawn(crate::timer::clock::polled(conn.run(handler)));
    };
    // A connection another thread handed this one: served here.
    let take = |handed: spread::Handed, seat: Option<&spread::Seat>| {
        // Counted from here (by the thread that handed it).
        let counted = seat.map(|seat| seat.serving_handed());
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => start(stream, handed.peer, handed.permit, counted),
            Err(error) => tracing::warn!(%error, "cannot serve a handed connection"),
        }
    };
    'accepting: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, canonical(peer)),
                Err(error) => {
                    static FAILED: crate::logging::Sparse = crate::logging::Sparse::new();
                    if let Some(suppressed) = FAILED.due() {
                        tracing::warn!(%error, suppressed, "accept failed");
                    }
                    if fds::exhausted(&error) {
                        // The descriptors idle connections hold are what
                        // the clients in the backlog need: as out of slots.
                        slots.short_of_descriptors(ACCEPT_PAUSE).await;
                    } else {
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                    continue;
                }
            },
            Some(handed) = handed(seat.as_mut()) => {
                take(handed, seat.as_ref());
                continue;
            }
            _ = stopped(&mut stop) => break,
        };
        // Over the limit, an accepted connection waits (unread) for a slot,
        // and this listener accepts nothing more meanwhile; the connections
        // that only make others wait give theirs (`slots`). Connections
        // other threads hand this one hold slots already: they are served
        // meanwhile, not left waiting behind it.
        let mut acquire = pin!(slots.acquire());
        let permit = loop {
            tokio::select! {
                permit = &mut acquire => match permit {
                    Ok(p) => break p,
                    Err(_) => break 'accepting,
                },
                Some(handed) = handed(seat.as_mut()) => take(handed, seat.as_ref()),
                _ = stopped(&mut stop) => break 'accepting,
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(seat) = seat.as_ref() else {
            start(stream, peer, permit, None);
            continue;
        };
        let Some(to) = seat.elsewhere() else {
            start(stream, peer, permit, Some(seat.serving()));
            continue;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot hand a connection over");
                continue;
            }
        };
        if let Err(back) = seat.hand(
            to,
            spread::Handed {
                stream,
                peer,
                permit,
            },
        ) {
            // The other thread stopped serving: this one serves it.
            match TcpStream::from_std(back.stream) {
                Ok(stream) => start(stream, back.peer, back.permit, Some(seat.serving())),
                Err(error) => tracing::warn!(%error, "cannot serve a connection handed back"),
            }
        }
    }
    drop(listener);
    slots.stop_parked();
    // Connections handed to this thread and not yet taken are closed, and
    // their slots freed (the other threads serve what they accept next).
    drop(seat);
    // Every connection holds a slot until it has ended: all slots back
    // means every connection of the port has been drained.
    let drained = tokio::time::timeout(settings.timeouts.drain, slots.all_free()).await;
    if drained.is_err() {
        tracing::warn!("drain timeout reached; closing remaining connections");
        force.send_replace(true);
    }
}

/// The next connection handed to this thread; never, without a seat.
async fn handed(seat: Option<&mut spread::Seat>) -> Option<spread::Handed> {
    match seat {
        Some(seat) => seat.handed().await,
        None => std::future::pending().await,
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// The handler of a TLS connection: each request carries the fingerprint
/// of the client certificate the handshake verified, as a
/// [`ClientCertificate`](crate::proxy::serve::ClientCertificate) extension.
fn with_client_certificate<S, H, F>(
    tls: &tokio_rustls::server::TlsStream<S>,
    handler: H,
) -> impl Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static
where
    H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
{
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| crate::proxy::serve::ClientCertificate(client_cert::fingerprint(der)));
    move |mut req: Request<Body>, peer| {
        if let Some(certificate) = certificate {
            req.extensions_mut().insert(certificate);
        }
        handler(req, peer)
    }
}

/// One accepted connection and what it needs to be served.
struct Conn {
    /// Taken when it is served.
    accepted: Option<TcpStream>,
    /// Its slot, and its count on this thread, until it ends.
    _held: (OwnedSemaphorePermit, Option<spread::Serving>),
    signals: Signals,
    activity: Arc<Activity>,
    /// The client-certificate setting its TLS handshake verified under.
    verified: Option<Verified>,
    port: Arc<Port>,
    peer: SocketAddr,
}

/// What every connection of a port on this thread reads, held once here
/// rather than by each.
struct Port {
    settings: ConnSettings,
    slots: Arc<Slots>,
    /// HTTP/2 (HTTP/1.1 has its own codec, `h1`).
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    transport: Transport,
}

/// What the port tells its connections.
struct Signals {
    stop: watch::Receiver<bool>,
    /// The drain timeout has passed: what is left is closed.
    forced: watch::Receiver<bool>,
    /// Changes when the port runs out of slots.
    pressure: watch::Receiver<u64>,
    /// Whether it still has none.
    slots: Arc<Slots>,
}

impl Conn {
    async fn run<H, F>(mut self: Box<Self>, handler: H)
    where
        H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        // The task of every connection is as large as its largest state:
        // TLS, HTTP/2 (hyper's connection) and an HTTP/1.1 connection's
        // exchanges are boxed, the stream travels in the boxed `Conn`, and
        // what the port's connections share is in its `Port`, so that the
        // task of a parked HTTP/1.1 connection is 512 B, its `Conn` 160 B
        // and its codec state 192 B (`bench/idle.py`).
        let Some(stream) = self.accepted.take() else {
            return;
        };
        // The listener's WebSocket tunnels (`limits.max_tunnels`).
        let tunnels = self.port.slots.tunnels.clone();
        let handler = move |mut req: Request<Body>, peer| {
            // Only a request that may open a tunnel needs to find them.
            if req.headers().contains_key(UPGRADE) || req.method() == Method::CONNECT {
                req.extensions_mut().insert(tunnels.clone());
            }
            handler(req, peer)
        };
        match &self.port.transport {
            Transport::Plain => {
                let wire = h1::Connection::new(stream, &self.activity, &self.port, None);
                self.http(wire, &handler).await;
            }
            Transport::Tls(live) => {
                let (acceptor, verified) = live.acceptor();
                self.verified = Some(verified);
                Box::pin(self.tls(stream, acceptor, handler)).await;
            }
        }
    }

    async fn tls<H, F>(mut self: Box<Self>, stream: TcpStream, acceptor: TlsAcceptor, handler: H)
    where
        H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let handshake = tokio::time::timeout(
            self.port.settings.timeouts.header_read,
            acceptor.accept(stream),
        );
        let peer = self.peer;
        // A connection in its handshake has no request in flight: on
        // shutdown it closes at once, as an idle one does, and out of
        // slots once it has had its grace. Given up at once, each
        // handshake would give its slot to the next client accepted, whose
        // own would give it to the next: under a queue of clients, none
        // would finish.
        let slots = Arc::clone(&self.port.slots);
        let signals = &mut self.signals;
        let pressure = &mut signals.pressure;
        let out_of_slots = async move {
            tokio::time::sleep(HANDSHAKE_GRACE).await;
            loop {
                if slots.pressure().is_high() {
                    return;
                }
                if pressure.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let tls = tokio::select! {
            finished = handshake => match finished {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            () = stopped(&mut signals.stop) => {
                tracing::debug!(%peer, "TLS handshake abandoned: shutdown");
                return;
            }
            () = out_of_slots => {
                tracing::debug!(%peer, "TLS handshake abandoned: its port has no free slot");
                return;
            }
        };
        let handler = with_client_certificate(&tls, handler);
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            Box::pin(self.http2(tls, Bytes::new(), handler)).await;
        } else {
            let verification = self.verified.as_ref().map(Verified::verification);
            let wire = h1::Connection::new(tls, &self.activity, &self.port, verification);
            self.http(wire, &handler).await;
        }
    }

    /// HTTP/1.1, or HTTP/2 when the connection starts with its preface.
    /// (The handler is borrowed: the future of every idle connection
    /// would hold it twice, as an argument and as a local.)
    async fn http<S, H, F>(mut self: Box<Self>, wire: h1::Connection<S>, handler: &H)
    where
        S: AsyncRead + AsyncWrite + h1::Reset + Unpin + Send + 'static,
        H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let closing = AtomicBool::new(false);
        let ending = loop {
            let conn = &mut *self;
            // Boxed: only while the connection is in use does it hold the
            // future of its exchanges and their watchdog.
            let served = async {
                let exchanges = pin!(h1::serve(
                    &wire,
                    conn.peer,
                    &closing,
                    &conn.activity,
                    handler
                ));
                // Asked to end, it does after the exchange in progress.
                let graceful = |_: Pin<&mut _>| closing.store(true, Ordering::Release);
                let watched = Watched {
                    timeouts: &conn.port.settings.timeouts,
                    activity: &conn.activity,
                    verified: conn.verified.as_ref(),
                    peer: conn.peer,
                    parkable: &|| wire.waits_idle(),
                    multiplexed: false,
                };
                conn.signals.supervise(watched, exchanges, graceful).await
            };
            // Matched at once: nothing of it is held while parked.
            match Box::pin(served).await {
                Outcome::Done(ending) => break ending,
                Outcome::Cut => return,
                Outcome::Parked => {}
            }
            if !conn.parked(&wire).await {
                Box::pin(wire.close_idle()).await;
                return;
            }
        };
        match ending {
            h1::Ending::Closed => {}
            h1::Ending::Http2 => {
                if let Some((io, read)) = wire.into_parts() {
                    Box::pin(self.http2(io, read, handler.clone())).await;
                }
            }
            h1::Ending::Upgraded(switch) => {
                if let Some((io, read)) = wire.into_parts() {
                    Box::pin(self.tunnel(io, read, *switch)).await;
                }
            }
        }
    }

    /// Waits while the connection is parked: `true` when its client sends
    /// its next request, `false` when it is to close (the client closed
    /// it, the idle timeout, shutdown, the port out of slots, the
    /// client-certificate setting it was verified under replaced). It
    /// holds a timer and a place in the port's wake-up list (and, with
    /// TLS, in its setting's), nothing more.
    async fn parked<S>(&self, wire: &h1::Connection<S>) -> bool
    where
        S: AsyncRead + AsyncWrite + h1::Reset + Unpin + Send + 'static,
    {
        wire.shed();
        let mut idle = pin!(tokio::time::sleep_until(
            self.activity.deadline(self.port.settings.timeouts)
        ));
        // Boxed: every parked connection holds this future, and only a TLS
        // one waits for its setting.
        let mut replaced = self
            .verified
            .as_ref()
            .map(|verified| Box::pin(verified.retired()));
        loop {
            let mut wake = pin!(self.port.slots.parked_wake());
            wake.as_mut().enable();
            if self.port.slots.parked_must_close() {
                tracing::debug!(peer = %self.peer, "idle connection closed: shutdown or no free slot");
                return false;
            }
            let woke = std::future::poll_fn(|cx| {
                if let Poll::Ready(sent) = wire.poll_wake(cx) {
                    return Poll::Ready(Some(sent));
                }
                if wake.as_mut().poll(cx).is_ready() {
                    // Looked at again above.
                    return Poll::Ready(None);
                }
                if let Some(replaced) = replaced.as_mut() {
                    if replaced.as_mut().poll(cx).is_ready() {
                        tracing::debug!(peer = %self.peer, "idle connection closed: the client-certificate settings it was verified under were replaced");
                        return Poll::Ready(Some(false));
                    }
                }
                if idle.as_mut().poll(cx).is_ready() {
                    tracing::debug!(peer = %self.peer, "idle connection closed");
                    return Poll::Ready(Some(false));
                }
                Poll::Pending
            })
            .await;
            if let Some(sent) = woke {
                return sent;
            }
        }
    }

    /// Carries a WebSocket tunnel on this connection, which keeps its slot
    /// meanwhile. On shutdown the tunnel has the listener's drain time to
    /// end, then is closed; it is closed at once when the client-certificate
    /// setting its connection was verified under is replaced.
    async fn tunnel<S>(mut self: Box<Self>, io: S, read: Bytes, switch: tunnel::Switch)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::select! {
            () = tunnel::run(switch, io, read) => {}
            () = stopped(&mut self.signals.forced) => {
                tracing::debug!(peer = %self.peer, "tunnel closed: drain timeout reached");
            }
            () = retired(self.verified.as_ref()) => {
                tracing::debug!(peer = %self.peer, "tunnel closed: the client-certificate settings its connection was verified under were replaced");
            }
        }
    }

    async fn http2<S, H, F>(mut self: Box<Self>, io: S, read: Bytes, handler: H)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(Request<Body>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let requests = self.activity.clone();
        let peer = self.peer;
        let body_read = self.port.settings.timeouts.body_read;
        let slots = self.port.slots.clone();
        let verification = self.verified.as_ref().map(Verified::verification);
        // 256 streams may each hold a body whole: together, no more than
        // one HTTP/1.1 connection may.
        let max_body = self.port.settings.limits.max_body;
        let room =
            crate::proxy::BodyRoom(Room::new(usize::try_from(max_body).unwrap_or(usize::MAX)));
        let send_room = Room::new(h2_bodies::SEND_ROOM);
        let service = service_fn(move |req: Request<Incoming>| {
            // A stream opened after the client-certificate setting was
            // replaced, or after the connection spent its budget of
            // cancelled requests, before the client has seen the `GOAWAY`:
            // refused, which says it was not processed (RFC 9113 §8.7).
            let replaced = verification.as_ref().is_some_and(|v| v.is_retired());
            let refused = replaced || requests.resets_abusive();
            let answer = (!refused).then(|| {
                let (guard, others) = InFlight::counting(&requests);
                let stream = slots.stream(others);
                let mut req = req.map(|body| {
                    if body.is_end_stream() {
                        crate::proxy::empty()
                    } else {
                        H2Body::new(body, body_read, slots.clone()).boxed()
                    }
                });
                req.extensions_mut().insert(room.clone());
                if stream.is_none() {
                    // The port's `limits.max_streams` are taken: refused
                    // once its API is known, before it is forwarded.
                    req.extensions_mut().insert(crate::proxy::StreamsFull);
                }
                if tunnel::is_h2_handshake(&req) {
                    let open = InFlight::tunnel(&requests);
                    // The tunnel outlives the stream's service: it
                    // watches the setting itself.
                    let ends = verification.clone().map(|verification| {
                        Box::pin(async move { verification.retired().await }) as tunnel::Ends
                    });
                    req.extensions_mut()
                        .insert(tunnel::ConnectionHold::new(open, ends));
                }
                (handler(req, peer), (guard, stream), send_room.clone())
            });
            async move {
                let Some((response, (guard, stream), send_room)) = answer else {
                    return Err(h2::Error::from(h2::Reason::REFUSED_STREAM));
                };
                let response = response.await;
                let guard = guard.answered();
                Ok(response.map(|body| Tracked::new(body, (guard, stream), send_room)))
            }
        });
        let io = TokioIo::new(Prefixed::new(read, io));
        let conn = pin!(self.port.http2.serve_connection(io, service));
        let graceful = |conn: Pin<&mut _>| {
            hyper::server::conn::http2::Connection::graceful_shutdown(conn);
        };
        let watched = Watched {
            timeouts: &self.port.settings.timeouts,
            activity: &self.activity,
            verified: self.verified.as_ref(),
            peer,
            parkable: &|| false,
            multiplexed: true,
        };
        if let Outcome::Done(Err(error)) = self.signals.supervise(watched, conn, graceful).await {
            tracing::debug!(%error, %peer, "connection ended with an error");
        }
    }
}

/// The connection a watchdog watches.
struct Watched<'a> {
    timeouts: &'a Timeouts,
    activity: &'a Arc<Activity>,
    /// The client-certificate setting it was verified under (TLS only).
    verified: Option<&'a Verified>,
    peer: SocketAddr,
    /// Whether the connection waits for a request nothing of which has
    /// come, so that it can be parked.
    parkable: &'a (dyn Fn() -> bool + Sync),
    /// HTTP/2: idle, it may still be sending the end of an answer.
    multiplexed: bool,
}

/// How long a listener waits after an accept failed before it tries again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// How long a connection waits for its next request before it is parked
/// ([`Conn::parked`]).
const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long a connection that cancels requests faster than its budget
/// allows has, once told `GOAWAY`, before it is closed: time for the
/// frame to leave, not for the requests it still has in flight.
const ABUSE_GRACE: Duration = Duration::from_millis(250);

/// How the watched connection's future ended.
enum Outcome<T> {
    Done(T),
    /// Idle for [`PARK_AFTER`] and waiting for a request: its future can
    /// be dropped.
    Parked,
    /// It was cut (shutdown forced, abuse, a client that reads nothing).
    Cut,
}

impl Signals {
    /// Drives `conn` and its watchdog: shutdown (graceful, then forced
    /// after the drain timeout), the idle deadline, abusive resets, the
    /// client-certificate setting it was verified under replaced (as at
    /// shutdown, its drain timeout counted from then).
    /// `graceful` asks the connection to end after the requests in flight
    /// (at once if there are none).
    ///
    /// It waits on as few things at once as it can (one signal, one timer),
    /// since every idle connection holds that wait.
    async fn supervise<C: Future>(
        &mut self,
        watched: Watched<'_>,
        mut conn: Pin<&mut C>,
        graceful: impl Fn(Pin<&mut C>),
    ) -> Outcome<C::Output> {
        let Watched {
            timeouts,
            activity,
            mut verified,
            peer,
            parkable,
            multiplexed,
        } = watched;
        let mut closing = false;
        // An idle connection asked to close has `send` to do it: HTTP/2
        // may still hold the end of an answer for a client that does not
        // open its window, which no request in flight shows any more.
        let mut closed_by: Option<Instant> = None;
        // Out of slots while it had not had the time to send its first
        // request: looked at again when its grace ends.
        let mut pressed_early = false;
        // Past its budget of cancelled requests: closing, however it ends.
        let mut abusive = false;
        // When an idle connection that could not be parked (HTTP/2, a
        // head begun, a close lingering) looks again: a look that fails
        // must not be due again at once, or the watchdog spins.
        let mut park_look_at: Option<Instant> = None;
        let watchdog = Watchdog::new();
        loop {
            let deadline = activity.deadline(*timeouts);
            let watch_ms = deadline
                .saturating_duration_since(activity.started)
                .as_millis();
            activity.watch_ms.store(
                u64::try_from(watch_ms).unwrap_or(u64::MAX),
                Ordering::Release,
            );
            // Before shutdown, the stop signal and the idle deadline; after
            // it, the drain timeout and the time an idle connection has to
            // close.
            // An idle connection looks whether it can be parked.
            let mut look = activity.idle_since().map_or(deadline, |since| {
                let park = (since + PARK_AFTER).max(park_look_at.unwrap_or(since));
                deadline.min(park)
            });
            if pressed_early {
                look = look.min(activity.started + HANDSHAKE_GRACE);
            }
            let (signal, wake_at) = if closing {
                (&mut self.forced, closed_by)
            } else {
                (&mut self.stop, Some(look))
            };
            let event = if *signal.borrow_and_update() {
                Ok(Watch::Signal)
            } else {
                let pressure = &mut self.pressure;
                let mut watch = pin!(async move {
                    tokio::select! {
                        // A signal that turned true is seen above; one
                        // whose sender is gone counts as given.
                        changed = signal.changed() => match changed {
                            Ok(()) => Watch::Rearm,
                            Err(_) => Watch::Signal,
                        },
                        _ = activity.quiet.notified() => Watch::Rearm,
                        Ok(()) = pressure.changed() => Watch::Pressure,
                        () = retired(verified) => Watch::Replaced,
                        _ = tokio::time::sleep_until(wake_at.unwrap_or(deadline)), if wake_at.is_some() => Watch::Timer,
                    }
                });
                watchdog.rearm();
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(output) = conn.as_mut().poll(cx) {
                        return Poll::Ready(Err(output));
                    }
                    watchdog.poll(watch.as_mut(), cx).map(Ok)
                })
                .await
            };
            match event {
                Err(output) => return Outcome::Done(output),
                Ok(Watch::Signal | Watch::Timer) if closing => return Outcome::Cut,
                Ok(Watch::Signal) => {
                    graceful(conn.as_mut());
                    closing = true;
                }
                // As at shutdown, with a drain of its own: what is in flight
                // has `drain` to finish; an idle connection closes at once
                // (HTTP/2: with `send` to deliver what a client's window
                // holds back, as under pressure).
                Ok(Watch::Replaced) => {
                    verified = None;
                    if !closing {
                        tracing::debug!(%peer, "connection ends: the client-certificate settings it was verified under were replaced");
                        graceful(conn.as_mut());
                        closing = true;
                        let within = match activity.idle() {
                            true => timeouts.send,
                            false => timeouts.drain,
                        };
                        closed_by = Some(Instant::now() + within);
                    }
                }
                Ok(Watch::Rearm) if activity.resets_abusive() && !abusive => {
                    abusive = true;
                    if closing {
                        return Outcome::Cut; // it had its chance to end well
                    }
                    tracing::debug!(%peer, "connection closes: it cancels requests faster than its budget allows");
                    // HTTP/2: GOAWAY tells the client which streams were
                    // not processed; streams it opens meanwhile are
                    // refused (`Conn::http2`), and the connection is closed
                    // within ABUSE_GRACE, whatever is in flight.
                    graceful(conn.as_mut());
                    closing = true;
                    closed_by = Some(Instant::now() + ABUSE_GRACE);
                }
                // Idle again while its port still has no free slot.
                Ok(Watch::Rearm)
                    if !closing
                        && activity.idle()
                        && !activity.is_new(HANDSHAKE_GRACE)
                        && self.slots.pressure().is_high() =>
                {
                    tracing::debug!(%peer, "idle connection closed: its port has no free slot");
                    if !multiplexed {
                        return Outcome::Cut;
                    }
                    graceful(conn.as_mut());
                    closing = true;
                    closed_by = Some(Instant::now() + timeouts.send);
                }
                Ok(Watch::Rearm) => {}
                // A new connection has its grace to send its first request:
                // cut at once, each would give its slot to the next client
                // accepted, which would give it to the next.
                Ok(Watch::Pressure) if activity.idle() && activity.is_new(HANDSHAKE_GRACE) => {
                    pressed_early = true;
                }
                // An HTTP/2 connection with no request in flight may still
                // hold the end of an answer for a client that has not opened
                // its window: it is closed as at its idle timeout, with
                // `send` to finish; an HTTP/1.1 one has written everything.
                Ok(Watch::Pressure) if activity.idle() => {
                    tracing::debug!(%peer, "idle connection closed: its port has no free slot");
                    if !multiplexed {
                        return Outcome::Cut;
                    }
                    if !closing {
                        graceful(conn.as_mut());
                        closing = true;
                        closed_by = Some(Instant::now() + timeouts.send);
                    }
                }
                // A request body waiting for its client looks again at how
                // long it may wait (`slots::PRESSED_SILENCE`); the watchdog
                // looks again once the connection is idle.
                Ok(Watch::Pressure) => {
                    activity.wake_when_idle.store(true, Ordering::Release);
                    activity.body_waker.wake();
                }
                Ok(Watch::Timer) => {
                    if pressed_early && !activity.is_new(HANDSHAKE_GRACE) {
                        pressed_early = false;
                        if activity.idle() && self.slots.pressure().is_high() {
                            tracing::debug!(%peer, "idle connection closed: its port has no free slot");
                            return Outcome::Cut;
                        }
                    }
                    if activity.send_stalled(timeouts.send) {
                        tracing::debug!(%peer, "connection closed: the client reads no answer");
                        crate::metrics::client_error("send_timeout");
                        return Outcome::Cut;
                    }
                    let now = Instant::now();
                    if activity.deadline(*timeouts) <= now {
                        tracing::debug!(%peer, "idle connection closed");
                        graceful(conn.as_mut());
                        closing = true;
                        closed_by = Some(now + timeouts.send);
                    } else if activity
                        .idle_since()
                        .is_some_and(|since| since + PARK_AFTER <= now)
                    {
                        if parkable() {
                            return Outcome::Parked;
                        }
                        park_look_at = Some(now + PARK_AFTER);
                    }
                }
            }
        }
    }
}

/// What the watchdog of a connection saw.
enum Watch {
    /// Before shutdown: stop. After: the drain timeout has passed.
    Signal,
    Rearm,
    /// The port has run out of connection slots.
    Pressure,
    /// The client-certificate setting the connection was verified under
    /// has been replaced.
    Replaced,
    /// Before shutdown: the idle deadline. After: the time to close has
    /// passed.
    Timer,
}

/// Polls a connection's watchdog (shutdown signals and its idle timer)
/// only when one of them woke the task, not on every wake-up of the busy
/// connection it shares the task with.
struct Watchdog {
    flag: Arc<WakeFlag>,
    waker: Waker,
}

struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Watchdog {
    fn new() -> Watchdog {
        let flag = Arc::new(WakeFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Watchdog {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// A new watch is polled once whatever happened before.
    fn rearm(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }

    fn poll<F: Future>(&self, watch: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        watch.poll(&mut Context::from_waker(&self.waker))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::snapshot::{Limits, Timeouts};

    /// Settings for tests: generous limits and timeouts, `max_connections`
    /// slots.
    pub(crate) fn settings(max_connections: usize) -> ConnSettings {
        let long = Duration::from_secs(30);
        ConnSettings {
            limits: Limits {
                max_header_bytes: 32 * 1024,
                max_headers: 100,
                max_uri: 8 * 1024,
                max_body: 1 << 20,
                max_connections,
                max_tunnels: 1,
                max_streams: 8,
            },
            timeouts: Timeouts {
                header_read: long,
                idle: long,
                upstream_connect: long,
                drain: long,
                body_read: long,
                send: long,
                tunnel_idle: long,
            },
        }
    }

    /// The first line of what `client` receives, within a bound.
    async fn status_line(client: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            let mut buf = [0; 1024];
            while !answer.windows(2).any(|w| w == b"\r\n") {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "no answer within 5 s");
        let text = String::from_utf8_lossy(&answer);
        text.lines().next().unwrap_or_default().to_owned()
    }

    /// A thread whose port is out of slots waits, with the connection it
    /// accepted, for one; a connection another thread hands it meanwhile
    /// holds a slot already, and is served rather than left waiting (with
    /// the slot it holds) until one frees.
    #[tokio::test]
    async fn a_thread_waiting_for_a_slot_serves_the_connections_handed_to_it() {
        let settings = settings(2);
        let slots = connection_slots(settings);
        let mut seats = spread::seats(2);
        let (Some(other), Some(mine)) = (seats.pop(), seats.pop()) else {
            panic!("two seats");
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop) = watch::channel(false);
        let (release, released) = watch::channel(false);
        let handler = move |req: Request<Body>, _peer| {
            let mut released = released.clone();
            async move {
                if req.uri().path() == "/hold" {
                    let _ = released.wait_for(|r| *r).await;
                }
                Response::new(crate::proxy::full("ok"))
            }
        };
        let serving = tokio::spawn(serve(
            listener,
            Transport::Plain,
            settings,
            slots.clone(),
            Shutdown::new(stop),
            Some(mine),
            handler,
        ));
        // One slot: a request in flight, which pressure never cuts.
        let mut busy = TcpStream::connect(addr).await.unwrap();
        busy.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The other: taken as another thread takes one for a connection
        // it accepts (once the first is taken).
        let mut raised = slots.pressure().subscribe();
        let permit = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if slots.free() == 1 {
                    break slots.acquire().await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        // A third client: accepted, it waits for a slot.
        let _waiting = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), raised.changed())
            .await
            .unwrap()
            .unwrap();
        // The other thread hands this one a connection, with its slot.
        let side = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut handed = TcpStream::connect(side.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = side.accept().await.unwrap();
        let stream = stream.into_std().unwrap();
        assert!(other
            .hand(
                0,
                spread::Handed {
                    stream,
                    peer,
                    permit
                }
            )
            .is_ok());
        handed
            .write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(status_line(&mut handed).await, "HTTP/1.1 200 OK");
        let _ = release.send(true);
        assert_eq!(status_line(&mut busy).await, "HTTP/1.1 200 OK");
        serving.abort();
    }
}
