//! WebSocket tunnels: the handshake forwarded as an `Upgrade` request,
//! and, once the upstream has answered `101`, the two connections joined
//! as a byte tunnel. The gateway parses no frame. An HTTP/2 client opens
//! one with an extended `CONNECT` (RFC 8441): the upstream still gets an
//! HTTP/1.1 handshake, and its `101` becomes the stream's `200`.
//!
//! A handshake is matched, authenticated and authorized like any request
//! (`serve`); only then is it counted against the listener's
//! `limits.max_tunnels` (503 past it) and forwarded with `Upgrade` and
//! `Connection: upgrade` as its only hop-by-hop fields. Any answer but
//! `101` is passed on as a normal response. On a `101` the server writes
//! the head and hands the client connection, with the bytes it has
//! already read, to [`run`]; the upstream connection never goes back to
//! its pool.
//!
//! A tunnel ends when both sides have closed (the second has two seconds
//! to follow the first), when either fails, when no byte went either way
//! for `timeouts.tunnel_idle`, when the client has taken nothing of what
//! the upstream sent for `timeouts.send` (as an answer's client would be
//! cut: bytes going the other way do not excuse it), or when the API's
//! `tunnel_max_lifetime` has passed since the handshake. What was
//! authorized is the handshake: a token that expires later does not end
//! the tunnel (the lifetime bounds how long it may outlive it). The
//! server also ends it with its connection: on shutdown once the drain
//! has passed, and at once when a reload replaces the client-certificate
//! setting the connection's TLS handshake was verified under (for an
//! HTTP/2 stream's tunnel, through its [`ConnectionHold`]).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, CONNECTION, HOST, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, Request, Version};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::client::{Stream, Switched};
use crate::config::snapshot::{Cors, Origins};

/// Bytes each direction of a tunnel holds at most.
const BUFFER: usize = 16 * 1024;
/// How long a tunnel stays open once one side has closed it: the
/// other's last bytes (a closing frame) can still go through.
const HALF_CLOSED: Duration = Duration::from_secs(2);

/// The tunnels of one listener, `limits.max_tunnels` of them at most. The
/// server puts it on every request it hands to the proxy.
#[derive(Clone)]
pub struct TunnelSlots(Arc<Counter>);

struct Counter {
    open: AtomicUsize,
    max: usize,
}

impl TunnelSlots {
    pub fn new(max: usize) -> TunnelSlots {
        TunnelSlots(Arc::new(Counter {
            open: AtomicUsize::new(0),
            max,
        }))
    }

    /// A slot for one more tunnel, if the listener has one free.
    pub fn acquire(&self) -> Option<TunnelPermit> {
        let counter = &self.0;
        counter
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < counter.max).then_some(open + 1)
            })
            .ok()
            .map(|_| TunnelPermit(self.0.clone()))
    }

    /// Tunnels open now.
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Acquire)
    }
}

/// A tunnel's slot, given back when it is dropped.
pub struct TunnelPermit(Arc<Counter>);

impl Drop for TunnelPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `req` opens a WebSocket over HTTP/1.1 (RFC 6455 §4.1): a `GET`
/// with `Upgrade: websocket` and `Connection: upgrade`.
pub fn is_handshake<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(req.headers(), &UPGRADE, "websocket")
        && has_token(req.headers(), &CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Whether a handshake's `Origin` may open a tunnel. A browser opens a
/// WebSocket from any page, to any host, sending that host's cookies,
/// cached Basic credentials and client certificate, and no CORS rule
/// holds a WebSocket back: the page's origin is the only sign of whose it
/// is (cross-site WebSocket hijacking). A handshake without `Origin` (not
/// from a browser) is admitted; one with it when the origin is the
/// request's own host and port (whatever the scheme: a TLS-terminating
/// proxy in front changes it), or one the API's CORS policy names. Not
/// any origin of `allow_origins: ["*"]`: that policy never lets a page
/// send credentials, and a WebSocket always carries the browser's.
pub fn origin_admitted<B>(req: &Request<B>, cors: Option<&Cors>) -> bool {
    let Some(origin) = req.headers().get(ORIGIN) else {
        return true;
    };
    let named = |policy: &Cors| {
        !matches!(policy.origins, Origins::Any) && super::cors::origin_allowed(policy, origin)
    };
    same_host(origin, req.headers().get(HOST)) || cors.is_some_and(named)
}

/// Whether the serialized origin `origin` (`scheme://host[:port]`) names
/// the host and port of the `Host` field, the port defaulting to the
/// origin's scheme's.
fn same_host(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(HeaderValue::to_str)) else {
        return false; // `null`, opaque or unreadable: no host to match
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (
        authority.parse::<http::uri::Authority>(),
        host.parse::<http::uri::Authority>(),
    ) else {
        return false;
    };
    // An origin is exactly `scheme://host[:port]` (no user, no path).
    origin.as_str() == authority
        && !authority.contains('@')
        && origin.host().eq_ignore_ascii_case(host.host())
        && origin.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

/// The `Sec-WebSocket-Accept` an upstream must answer to a handshake with
/// `key` (RFC 6455 §4.2.2): the key and the protocol's GUID, hashed
/// (SHA-1) and base64-encoded.
pub fn expected_accept(key: &HeaderValue) -> String {
    use base64::Engine as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    context.update(key.as_bytes());
    context.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(context.finish())
}

/// Whether an upstream's `101` switched to what the handshake asked for:
/// `Upgrade: websocket` and the `Sec-WebSocket-Accept` of its key (RFC
/// 6455 §4.1, the client's checks, which the gateway makes for every
/// client). An upstream led to answer `101` to anything else (another
/// protocol, a request it did not read as a handshake) would get a raw
/// tunnel past every per-request check.
pub fn switched_to_websocket(answer: &HeaderMap, accept: Option<&str>) -> bool {
    let upgrade = answer.get_all(UPGRADE).iter().collect::<Vec<_>>();
    let websocket = matches!(upgrade.as_slice(), [one] if one.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    let accepted = match (
        accept,
        answer
            .get_all(SEC_WEBSOCKET_ACCEPT)
            .iter()
            .collect::<Vec<_>>()
            .as_slice(),
    ) {
        (Some(expected), [one]) => one.as_bytes().trim_ascii() == expected.as_bytes(),
        _ => false,
    };
    websocket && accepted
}

/// Whether `req` opens a WebSocket over HTTP/2 (RFC 8441): an extended
/// `CONNECT` with `:protocol websocket`.
pub fn is_h2_handshake<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|protocol| protocol.as_str().eq_ignore_ascii_case("websocket"))
}

/// Makes an HTTP/2 handshake one an HTTP/1.1 upstream takes (RFC 8441 §5:
/// `GET` with `Upgrade`): the key HTTP/2 does not carry is the gateway's.
pub fn h1_handshake_of_h2<B>(req: &mut Request<B>) {
    use base64::Engine as _;
    use rand::RngCore as _;
    *req.method_mut() = Method::GET;
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let headers = req.headers_mut();
    if let Ok(key) = HeaderValue::from_str(&key) {
        headers.insert(SEC_WEBSOCKET_KEY, key);
    }
    if !headers.contains_key(SEC_WEBSOCKET_VERSION) {
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
}

/// The upstream's `101` as the `200` that opens the HTTP/2 stream's
/// tunnel (RFC 8441 §5): the HTTP/1.1 handshake's own fields go.
pub fn h2_answer_of_h1(headers: &mut HeaderMap) {
    headers.remove(UPGRADE);
    headers.remove(CONNECTION);
    headers.remove(SEC_WEBSOCKET_ACCEPT);
}

/// Ends a tunnel when its client connection is to end before the tunnel
/// does (the client-certificate setting it was verified under replaced).
pub type Ends = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What an HTTP/2 tunnel holds of its client connection while it is open.
/// The server puts one on each extended `CONNECT` it hands on and counts
/// the connection busy until it is dropped: as the stream becomes the
/// tunnel, hyper drops the `200`'s body, and with it what counted the
/// request. With it comes what ends the tunnel with its connection
/// ([`Ends`]). The proxy only carries it.
#[derive(Clone)]
pub struct ConnectionHold {
    _held: Arc<dyn std::any::Any + Send + Sync>,
    /// Taken by the tunnel.
    ends: Arc<Mutex<Option<Ends>>>,
}

impl ConnectionHold {
    pub fn new(held: impl std::any::Any + Send + Sync, ends: Option<Ends>) -> ConnectionHold {
        ConnectionHold {
            _held: Arc::new(held),
            ends: Arc::new(Mutex::new(ends)),
        }
    }

    fn take_ends(&self) -> Option<Ends> {
        self.ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Carries the tunnel of an HTTP/2 stream once hyper has sent its `200`,
/// holding its connection (`hold`) until the tunnel ends, or until what
/// the hold says ends it.
pub fn spawn_h2(
    switch: Switch,
    on_upgrade: hyper::upgrade::OnUpgrade,
    hold: Option<ConnectionHold>,
) {
    let ends = hold.as_ref().and_then(ConnectionHold::take_ends);
    tokio::spawn(async move {
        let _hold = hold;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "the HTTP/2 stream did not open its tunnel");
                return;
            }
        };
        let tunnel = run(switch, hyper_util::rt::TokioIo::new(upgraded), Bytes::new());
        let Some(ends) = ends else {
            return tunnel.await;
        };
        tokio::select! {
            () = tunnel => {}
            () = ends => tracing::debug!("tunnel closed: its connection ends"),
        }
    });
}

/// Puts back the hop-by-hop fields of a handshake, after every other one
/// was stripped: the upstream is asked to switch to WebSocket.
pub fn ask_upgrade(headers: &mut HeaderMap) {
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
}

/// How long a tunnel may stay open without use.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// No byte either way (`timeouts.tunnel_idle`).
    pub idle: Duration,
    /// The client takes nothing of what the upstream sent (`timeouts.send`).
    pub send: Duration,
    /// Since the handshake, however busy (`tunnel_max_lifetime`).
    pub lifetime: Option<Duration>,
}

/// What a tunnel carries besides the client connection.
pub struct Switch {
    upstream: Stream,
    /// Sent by the upstream after its `101`, for the client.
    read: BytesMut,
    api: String,
    /// Where it counts (nowhere once its API is removed).
    series: crate::metrics::TunnelSeries,
    bounds: Bounds,
    _held: Held,
}

/// The places a tunnel holds until it ends: its listener's tunnel slot,
/// its place among its upstream's requests (`upstream.max_requests`) and,
/// on a balanced upstream, its endpoint's try.
pub struct Held {
    pub slot: TunnelPermit,
    pub in_flight: Option<crate::upstream_bound::InFlight>,
    pub endpoint: Option<HeldTry>,
}

/// The try of a balanced upstream's endpoint that answered `101`, carried
/// by the response to the tunnel it opens: the endpoint counts the
/// WebSocket among its requests in flight (`least_requests`) until the
/// tunnel ends, not only until its empty answer did.
#[derive(Clone)]
pub struct HeldTry {
    _attempt: Arc<dyn Send + Sync>,
}

impl HeldTry {
    pub fn of(attempt: impl Send + Sync + 'static) -> HeldTry {
        HeldTry {
            _attempt: Arc::new(attempt),
        }
    }
}

/// A `101` response's tunnel, waiting for the server to take it with the
/// client connection.
#[derive(Clone)]
pub struct Pending(Arc<Mutex<Option<Switch>>>);

impl Pending {
    /// The tunnel of a `101` from the upstream, ready for the client
    /// connection. `None` if the response carries no upstream connection.
    pub fn of(
        switched: &Switched,
        api: &crate::config::snapshot::Api,
        bounds: Bounds,
        held: Held,
    ) -> Option<Pending> {
        let (upstream, read) = switched.take()?;
        Some(Pending(Arc::new(Mutex::new(Some(Switch {
            upstream,
            read,
            api: api.name.clone(),
            series: api.metrics.tunnel_series(),
            bounds,
            _held: held,
        })))))
    }

    pub fn take(&self) -> Option<Switch> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Carries bytes both ways between `client` (with `client_read`, what the
/// server read after the handshake) and the upstream, until the tunnel
/// ends (see the module's documentation). Both connections are closed
/// when it returns.
pub async fn run<C>(switch: Switch, mut client: C, client_read: Bytes)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let Switch {
        mut upstream,
        read,
        api,
        series,
        bounds: Bounds {
            idle,
            send,
            lifetime,
        },
        _held,
    } = switch;
    // Counted down however it ends, closed from outside too.
    let _open = Open::new(series.open);
    let mut up = Half::new(&client_read, series.upstream);
    let mut down = Half::new(&read, series.downstream);
    let mut silence = Box::pin(tokio::time::sleep(idle));
    let mut end_of_life: Option<Pin<Box<Sleep>>> =
        lifetime.map(|lifetime| Box::pin(tokio::time::sleep(lifetime)));
    let mut half_closed = false;
    // Armed while what the upstream sent waits for the client to take it.
    let mut unread = Box::pin(tokio::time::sleep(send));
    let mut unread_since: Option<Instant> = None;
    let ended = poll_fn(|cx| loop {
        let mut moved = false;
        let up_done = match up.poll(cx, &mut client, &mut upstream, &mut moved) {
            Poll::Ready(Err(error)) => return Poll::Ready(format!("client side: {error}")),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        let down_done = match down.poll(cx, &mut upstream, &mut client, &mut moved) {
            Poll::Ready(Err(error)) => return Poll::Ready(format!("upstream side: {error}")),
            Poll::Ready(Ok(())) => true,
            Poll::Pending => false,
        };
        if up_done && down_done {
            return Poll::Ready("closed by both sides".to_owned());
        }
        // Once one side has closed, the other has a short while to close
        // too (a WebSocket's closing handshake is over by then), from the
        // first close: what it moves meanwhile does not push it back.
        if (up_done || down_done) && !half_closed {
            half_closed = true;
            silence
                .as_mut()
                .reset(Instant::now() + idle.min(HALF_CLOSED));
        } else if moved && !half_closed {
            silence.as_mut().reset(Instant::now() + idle);
        }
        if silence.as_mut().poll(cx).is_ready() {
            return Poll::Ready(if half_closed {
                "one side closed".to_owned()
            } else {
                format!("no byte either way for {idle:?}")
            });
        }
        if let Some(end) = end_of_life.as_mut() {
            if end.as_mut().poll(cx).is_ready() {
                return Poll::Ready("tunnel_max_lifetime reached".to_owned());
            }
        }
        if down.stalled_since != unread_since {
            unread_since = down.stalled_since;
            if let Some(since) = unread_since {
                unread.as_mut().reset(since + send);
            }
        }
        if unread_since.is_some() && unread.as_mut().poll(cx).is_ready() {
            return Poll::Ready(format!("the client took nothing for {send:?}"));
        }
        if !moved {
            return Poll::Pending;
        }
    })
    .await;
    tracing::debug!(api, why = ended, "tunnel ended");
}

/// A tunnel counted in `tunnels_open` while it is held.
struct Open(IntGauge);

impl Open {
    fn new(gauge: IntGauge) -> Open {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One direction of a tunnel: read from one side, written to the other.
struct Half {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The reading side has ended.
    eof: bool,
    /// The end has been passed on (the writing side shut down).
    done: bool,
    /// Since when what it holds waits for the writing side to take it.
    stalled_since: Option<Instant>,
    bytes: IntCounter,
}

impl Half {
    fn new(first: &[u8], bytes: IntCounter) -> Half {
        let mut buf = vec![0; BUFFER.max(first.len())].into_boxed_slice();
        buf[..first.len()].copy_from_slice(first);
        Half {
            buf,
            start: 0,
            end: first.len(),
            eof: false,
            done: false,
            stalled_since: None,
            bytes,
        }
    }

    /// Moves what it can; ready once the end has been passed on. `moved`
    /// is set when a byte went through.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        moved: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.start < self.end {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.bytes.inc_by(n as u64);
                        self.stalled_since = None;
                        *moved = true;
                        continue;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        self.stalled_since.get_or_insert_with(Instant::now);
                        return Poll::Pending;
                    }
                }
            }
            // All written: flushed before more is read (TLS buffers).
            match Pin::new(&mut *to).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.stalled_since = None,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    return Poll::Pending;
                }
            }
            if self.eof {
                return match Pin::new(&mut *to).poll_shutdown(cx) {
                    Poll::Ready(_) => {
                        self.done = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            self.start = 0;
            self.end = 0;
            let mut read = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *from).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.eof = true;
                    } else {
                        self.end = n;
                        *moved = true;
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, version: Version, fields: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder()
            .method(method)
            .version(version)
            .uri("/ws");
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_handshake_is_a_get_asking_for_websocket_with_connection_upgrade() {
        let fields = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(is_handshake(&request(
            Method::GET,
            Version::HTTP_11,
            &fields
        )));
        assert!(!is_handshake(&request(
            Method::POST,
            Version::HTTP_11,
            &fields
        )));
        assert!(!is_handshake(&request(
            Method::GET,
            Version::HTTP_10,
            &fields
        )));
        let h2c = [("upgrade", "h2c"), ("connection", "upgrade")];
        assert!(!is_handshake(&request(Method::GET, Version::HTTP_11, &h2c)));
        let no_connection = [("upgrade", "websocket")];
        assert!(!is_handshake(&request(
            Method::GET,
            Version::HTTP_11,
            &no_connection
        )));
    }

    #[test]
    fn tunnel_slots_are_bounded_and_given_back() {
        let slots = TunnelSlots::new(2);
        let first = slots.acquire().expect("free");
        let second = slots.acquire().expect("free");
        assert!(slots.acquire().is_none());
        assert_eq!(slots.open(), 2);
        drop(first);
        assert!(slots.acquire().is_some());
        drop(second);
        assert_eq!(slots.open(), 0);
    }
}
