//! Keep-alive HTTP/1.1 connections to upstreams (see [`http1`]).
//!
//! A [`Pool`] keeps idle connections per upstream: its scheme, its
//! authority, how long the addresses of its host are kept (`dns_ttl`: each
//! upstream's new connections resolve within its own) and, for `https`,
//! the CAs it is verified against (a connection verified against one API's
//! CA bundle never serves an API that trusts the system roots, or another
//! bundle). Each API listener thread has a pool of
//! its own, used without a lock: the thread runs a single-threaded runtime,
//! and the connection tasks run on it too. Callers on any other thread share
//! one pool behind a mutex.
//!
//! A request checks a connection out (the most recently used idle one the
//! upstream has not closed, else a new one) and the connection goes back
//! only once the response body has been read to its end; a body dropped
//! before its end takes the connection with it.
//!
//! A request on a pooled connection that the upstream closed as it was
//! sent is sent once more on a new connection when that is safe: when the
//! upstream took no byte of it before the write failed (it cannot have
//! read it; over TLS this is never known), or when it had no body,
//! its method is idempotent (RFC 9110 §9.2.2) and not a byte of answer
//! came (RFC 9112 §9.3.1.1). A `POST` that may have reached the upstream
//! is never sent twice.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::Method;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::client::{self, Connection, Failure, ResponseBody, Stream};
use super::{Body, BoxError};
use crate::config::snapshot::CaBundle;
use crate::http1::request_encode::Destination;
use crate::metrics::ApiMetrics;

/// Idle connections kept per upstream (per pool).
pub const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// Idle connections per upstream that keep their buffers: the most
/// recently used, taken first. The others free theirs (16 KiB each), so
/// that a burst that leaves hundreds idle does not hold them all.
const WARM_IDLE: usize = 16;
/// How long an idle connection keeps its buffers at most
/// ([`cool_this_thread`]): once traffic has stopped, none does.
const WARM_FOR: Duration = Duration::from_secs(2);
/// An idle connection beyond the [`WARM_IDLE`] most recently used is
/// closed once unused for this long (HAProxy's `pool-purge-delay` is as
/// long): the connections a burst opened do not outlive it by much, nor
/// the memory they hold.
const COLD_FOR: Duration = Duration::from_secs(5);
/// An idle connection unused for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The addresses of host names (`host:port`), and when they were resolved.
type Resolved = HashMap<String, (Instant, Arc<[SocketAddr]>)>;

/// TLS settings by CA-bundle path, with the bundle they trust.
type BundleConfigs = HashMap<PathBuf, (Arc<[u8]>, Arc<ClientConfig>)>;

/// How connections are made: the TCP connect timeout, the CAs `https`
/// upstreams are verified against, the HTTP/1.1 settings. Shared by every
/// pool of one gateway.
pub struct Connector {
    connect_timeout: Duration,
    system_roots: Arc<ClientConfig>,
    /// TLS settings by CA-bundle path, with the bundle they trust (built on
    /// first use, rebuilt when a reload brings a different bundle).
    by_bundle: Mutex<BundleConfigs>,
    /// Resolved host names (`host:port`), for the longest TTL any caller has.
    dns: Mutex<Resolved>,
    /// Spreads new connections over the addresses of a host.
    next_address: AtomicU64,
}

/// Host names whose addresses are kept at once (expired ones go first,
/// then all: the cache never grows past this).
pub const MAX_DNS_ENTRIES: usize = 1024;

/// The longest `dns_ttl` a configuration may give: an entry older than it
/// is no caller's.
const MAX_DNS_TTL: Duration = Duration::from_secs(3600);

/// The CA bundle has no certificate rustls accepts.
#[derive(Debug)]
pub struct NoUsableCa;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (TCP, TLS or HTTP/1.1 handshake).
    #[error("connect: {0}")]
    Connect(BoxError),
    /// The request failed on an established connection.
    #[error("request: {0}")]
    Request(client::Error),
    /// Connecting (TLS handshake included) took longer than the upstream
    /// timeout.
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
}

impl Connector {
    /// Verifies `https` upstreams against the system roots; without any,
    /// they fail closed (nothing is trusted) unless an API names a bundle.
    pub fn new(connect_timeout: Duration) -> Connector {
        let found = rustls_native_certs::load_native_certs();
        if !found.errors.is_empty() {
            tracing::warn!(errors = ?found.errors, "errors loading the system CA roots");
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            tracing::warn!("no system CA roots; https upstreams need a ca_bundle");
        }
        Connector {
            connect_timeout,
            system_roots: client_config(roots),
            by_bundle: Mutex::default(),
            dns: Mutex::default(),
            next_address: AtomicU64::new(0),
        }
    }

    /// The TLS settings trusting `bundle`, or the system roots.
    fn tls_config(&self, bundle: Option<&CaBundle>) -> Result<Arc<ClientConfig>, NoUsableCa> {
        let Some(bundle) = bundle else {
            return Ok(self.system_roots.clone());
        };
        let mut configs = lock(&self.by_bundle);
        if let Some((pem, config)) = configs.get(&bundle.path) {
            if Arc::ptr_eq(pem, &bundle.pem) || pem[..] == bundle.pem[..] {
                return Ok(config.clone());
            }
        }
        let roots = crate::config::ca_bundle::roots(&bundle.pem);
        if roots.is_empty() {
            return Err(NoUsableCa);
        }
        let config = client_config(roots);
        configs.insert(bundle.path.clone(), (bundle.pem.clone(), config.clone()));
        Ok(config)
    }

    /// A new connection to `target`.
    async fn connect(&self, target: &Target) -> Result<Connection, SendError> {
        let tcp = self
            .tcp(target)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        match &target.tls {
            None => Ok(Connection::new(Stream::Tcp(tcp))),
            Some((tls, name)) => {
                let name = name.clone().ok_or_else(|| {
                    SendError::Connect("the upstream host is not a valid TLS server name".into())
                })?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| SendError::Connect(e.into()))?;
                Ok(Connection::new(Stream::Tls(Box::new(stream))))
            }
        }
    }

    /// A new connection to `target` within `timeout` (the TCP connect
    /// has its own, shorter, bound).
    async fn connect_within(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<Connection, SendError> {
        self.connect_until(target, Instant::now() + timeout, timeout)
            .await
    }

    /// A new connection to `target`, made by `until` (a budget of
    /// `budget` that earlier tries may have spent part of).
    async fn connect_until(
        &self,
        target: &Target,
        until: Instant,
        budget: Duration,
    ) -> Result<Connection, SendError> {
        let until = tokio::time::Instant::from_std(until);
        tokio::time::timeout_at(until, self.connect(target))
            .await
            .map_err(|_| SendError::Timeout(budget))?
    }

    /// The addresses of `host`, from the cache if they were resolved
    /// within `ttl` (the caller's: an upstream with `dns_ttl: 0`, and an
    /// active health check, never use what another upstream keeps longer).
    async fn resolve(&self, host: &str, port: u16, ttl: Duration) -> io::Result<Arc<[SocketAddr]>> {
        let name = format!("{host}:{port}");
        let now = Instant::now();
        if !ttl.is_zero() {
            if let Some((resolved, addrs)) = lock(&self.dns).get(&name) {
                if now.saturating_duration_since(*resolved) < ttl {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs: Arc<[SocketAddr]> = tokio::net::lookup_host((host, port)).await?.collect();
        if !ttl.is_zero() && !addrs.is_empty() {
            let mut cache = lock(&self.dns);
            if cache.len() >= MAX_DNS_ENTRIES {
                cache.retain(|_, (resolved, _)| {
                    now.saturating_duration_since(*resolved) < MAX_DNS_TTL
                });
                if cache.len() >= MAX_DNS_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(name, (now, addrs.clone()));
        }
        Ok(addrs)
    }

    /// Tries the upstream's addresses in turn, each connection starting at
    /// the next one, the connect timeout divided among them.
    async fn tcp(&self, target: &Target) -> io::Result<TcpStream> {
        let addrs: Arc<[SocketAddr]> = match target.ip {
            Some(ip) => Arc::new([SocketAddr::new(ip, target.port)]),
            None => {
                self.resolve(&target.host, target.port, target.dns_ttl)
                    .await?
            }
        };
        let each = self.connect_timeout / u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
        let mut failure = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
        let start = usize::try_from(self.next_address.fetch_add(1, Ordering::Relaxed)).unwrap_or(0);
        let n = addrs.len().max(1);
        for addr in (0..addrs.len()).map(|k| addrs[(start + k) % n]) {
            match tokio::time::timeout(each, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true)?;
                    let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
                    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                    return Ok(stream);
                }
                Ok(Err(error)) => failure = error,
                Err(_) => failure = io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }
        }
        Err(failure)
    }
}

impl Connector {
    /// A byte stream for HTTP/2 to `key`'s upstream, made by `until` (a
    /// budget of `budget` that earlier tries may have spent part of): TLS
    /// negotiating `h2` by ALPN for `https`, plain TCP (h2c by prior
    /// knowledge) for `http`. Verified as HTTP/1.1 connections are.
    pub(super) async fn h2_stream(
        &self,
        key: &Key<'_>,
        until: tokio::time::Instant,
        budget: Duration,
    ) -> Result<Stream, SendError> {
        let https = key.scheme == &Scheme::HTTPS;
        let config = self
            .tls_config(key.ca_bundle)
            .map_err(|_| SendError::Connect("no usable CA in the bundle".into()))?;
        let config = match https {
            false => config,
            true => {
                let mut config = (*config).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                Arc::new(config)
            }
        };
        let target = Target::new(key, https, config);
        let connect = async {
            let tcp = self
                .tcp(&target)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            let Some((tls, name)) = &target.tls else {
                return Ok(Stream::Tcp(tcp));
            };
            let name = name.clone().ok_or_else(|| {
                SendError::Connect("the upstream host is not a valid TLS server name".into())
            })?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| SendError::Connect(e.into()))?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(SendError::Connect(
                    "the upstream did not negotiate h2".into(),
                ));
            }
            Ok(Stream::Tls(Box::new(stream)))
        };
        tokio::time::timeout_at(until, connect)
            .await
            .map_err(|_| SendError::Timeout(budget))?
    }
}

#[allow(
    clippy::expect_used,
    reason = "aws-lc-rs supports the default TLS versions"
)]
fn client_config(roots: rustls::RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Where connections to one upstream go.
struct Target {
    /// The host to resolve (an IPv6 literal without its brackets).
    host: Box<str>,
    /// The host, when it is an IP address (nothing to resolve).
    ip: Option<IpAddr>,
    port: u16,
    /// For `https`: the TLS settings and the name the certificate must
    /// carry (`None` if the host is not a valid one: connecting fails).
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
    dns_ttl: Duration,
}

impl Target {
    fn new(key: &Key<'_>, https: bool, config: Arc<ClientConfig>) -> Target {
        let host = key.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = key
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let tls = https.then(|| {
            let name = ServerName::try_from(host.to_owned()).ok();
            (TlsConnector::from(config), name)
        });
        Target {
            host: host.into(),
            ip: host.parse().ok(),
            port,
            tls,
            dns_ttl: key.dns_ttl,
        }
    }
}

/// One upstream as a request names it.
pub struct Key<'a> {
    pub scheme: &'a Scheme,
    pub authority: &'a Authority,
    pub ca_bundle: Option<&'a CaBundle>,
    /// How long the addresses of a host name are used before it is
    /// resolved again (zero: on every connect).
    pub dns_ttl: Duration,
}

/// A slot's place in its pool, and which of the upstreams that held the
/// place it is (a place freed by the sweep is given to the next new one).
#[derive(Clone, Copy, PartialEq, Debug)]
struct SlotId {
    index: u32,
    generation: u32,
}

/// The connections to one upstream.
struct Slot {
    generation: u32,
    /// Where `by_authority` lists it; `None` once the sweep freed it.
    authority: Option<Authority>,
    /// When a request last checked a connection out.
    used: Instant,
    https: bool,
    /// The CA bundle connections are verified against (`None`: the system
    /// roots).
    trust: Option<Arc<[u8]>>,
    target: Arc<Target>,
    /// Idle connections, the most recently used last.
    idle: VecDeque<Idle>,
}

struct Idle {
    conn: Connection,
    since: Instant,
}

impl Slot {
    fn trusts(&mut self, bundle: Option<&CaBundle>) -> bool {
        match (&self.trust, bundle) {
            (None, None) => true,
            (Some(pem), Some(bundle)) if Arc::ptr_eq(pem, &bundle.pem) => true,
            (Some(pem), Some(bundle)) if pem[..] == bundle.pem[..] => {
                // The same CAs from a newer snapshot: compare pointers next time.
                self.trust = Some(bundle.pem.clone());
                true
            }
            _ => false,
        }
    }
}

/// A cheap hash for authorities: the keys come from the configuration, not
/// from clients, so there is no flooding to resist. `Authority` hashes a
/// byte at a time (lower-cased); the bytes are gathered eight to a word
/// and mixed once per word.
#[derive(Default)]
struct AuthorityHasher {
    hash: u64,
    word: u64,
    bytes: u32,
}

impl AuthorityHasher {
    fn mix(&mut self, n: u64) {
        self.hash = (self.hash.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for AuthorityHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u8(byte);
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.word = (self.word << 8) | u64::from(byte);
        self.bytes += 1;
        if self.bytes == 8 {
            let word = std::mem::take(&mut self.word);
            self.bytes = 0;
            self.mix(word);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn finish(&self) -> u64 {
        // The bytes not yet mixed, and how many: "ab" and "\0ab" differ.
        let mut last = AuthorityHasher {
            hash: self.hash,
            ..Default::default()
        };
        last.mix(self.word ^ (u64::from(self.bytes) << 56));
        last.hash
    }
}

/// Idle upstream connections, by upstream.
pub struct Pool {
    /// Tells this pool from any other (the thread's pool may be replaced).
    id: u64,
    connector: Arc<Connector>,
    max_idle: usize,
    idle_timeout: Duration,
    slots: Vec<Slot>,
    /// Slot numbers by authority (one per scheme, trust and `dns_ttl`).
    by_authority: HashMap<Authority, Vec<u32>, BuildHasherDefault<AuthorityHasher>>,
    /// When idle connections of every upstream are next checked for age.
    next_sweep: Instant,
}

static POOL_IDS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// A listener thread's own pool: a request and the upstream connection
    /// it goes out on are driven by the same thread, with no lock and no
    /// wake-up across threads.
    static THREAD_POOL: RefCell<Option<Pool>> = const { RefCell::new(None) };
}

impl Pool {
    pub fn new(connector: Arc<Connector>) -> Pool {
        Pool::with_limits(connector, MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT)
    }

    pub fn with_limits(connector: Arc<Connector>, max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            id: POOL_IDS.fetch_add(1, Ordering::Relaxed),
            connector,
            max_idle,
            idle_timeout,
            slots: Vec::new(),
            by_authority: HashMap::default(),
            next_sweep: Instant::now() + idle_timeout,
        }
    }

    /// Makes `pool` the calling thread's own (replacing any it had).
    pub fn pin_to_this_thread(pool: Pool) {
        THREAD_POOL.with(|own| *own.borrow_mut() = Some(pool));
    }

    /// The warm idle connections unused for [`WARM_FOR`] free their
    /// buffers; the others unused for [`COLD_FOR`] are closed.
    fn cool(&mut self, now: Instant) {
        for slot in &mut self.slots {
            // The oldest are at the front.
            while slot.idle.len() > WARM_IDLE
                && slot
                    .idle
                    .front()
                    .is_some_and(|idle| now.saturating_duration_since(idle.since) >= COLD_FOR)
            {
                slot.idle.pop_front();
            }
            if slot.idle.capacity() > 4 * WARM_IDLE && slot.idle.len() <= WARM_IDLE {
                slot.idle.shrink_to(WARM_IDLE);
            }
            let warm = slot.idle.iter_mut().rev().take(WARM_IDLE);
            for idle in warm.filter(|idle| now.saturating_duration_since(idle.since) >= WARM_FOR) {
                idle.conn.release_buffers();
            }
        }
    }

    /// The slot of `key`, made on first use.
    fn slot(&mut self, key: &Key<'_>) -> Result<u32, NoUsableCa> {
        let https = *key.scheme == Scheme::HTTPS;
        if let Some(numbers) = self.by_authority.get(key.authority) {
            for &n in numbers {
                let slot = &mut self.slots[n as usize];
                if slot.https == https
                    && slot.target.dns_ttl == key.dns_ttl
                    && slot.trusts(key.ca_bundle)
                {
                    return Ok(n);
                }
            }
        }
        Ok(self.add_slot(key, https)?.index)
    }

    /// A new slot for `key`, in the first place the sweep freed if any.
    #[allow(
        clippy::expect_used,
        reason = "an index into a Vec of upstreams from configuration stays far below 2^32"
    )]
    fn add_slot(&mut self, key: &Key<'_>, https: bool) -> Result<SlotId, NoUsableCa> {
        let config = self.connector.tls_config(key.ca_bundle)?;
        let target = Target::new(key, https, config);
        let free = self.slots.iter().position(|slot| slot.authority.is_none());
        let index = free.unwrap_or(self.slots.len());
        let generation = free.map_or(0, |i| self.slots[i].generation.wrapping_add(1));
        let slot = Slot {
            generation,
            authority: Some(key.authority.clone()),
            used: Instant::now(),
            https,
            trust: key.ca_bundle.map(|bundle| bundle.pem.clone()),
            target: Arc::new(target),
            idle: VecDeque::new(),
        };
        match self.slots.get_mut(index) {
            Some(freed) => *freed = slot,
            None => self.slots.push(slot),
        }
        let index = u32::try_from(index).expect("fewer than 2^32 upstreams");
        self.by_authority
            .entry(key.authority.clone())
            .or_default()
            .push(index);
        Ok(SlotId { index, generation })
    }

    /// The slot `id` names, if it still holds the same upstream.
    fn slot_mut(&mut self, id: SlotId) -> Option<&mut Slot> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|slot| slot.generation == id.generation && slot.authority.is_some())
    }

    /// A connection to `key`'s upstream: an idle one that can take a
    /// request, or where to make a new one.
    fn checkout(&mut self, key: &Key<'_>, now: Instant) -> Result<(SlotId, Conn), NoUsableCa> {
        if now >= self.next_sweep {
            self.sweep(now);
        }
        let n = self.slot(key)?;
        let idle_timeout = self.idle_timeout;
        let slot = &mut self.slots[n as usize];
        slot.used = now;
        let id = SlotId {
            index: n,
            generation: slot.generation,
        };
        // The oldest are at the front.
        while slot
            .idle
            .front()
            .is_some_and(|idle| now.saturating_duration_since(idle.since) >= idle_timeout)
        {
            slot.idle.pop_front();
        }
        // The most recently used first; those the upstream closed go.
        while let Some(mut idle) = slot.idle.pop_back() {
            if idle.conn.is_usable() {
                return Ok((id, Conn::Idle(idle.conn)));
            }
        }
        Ok((id, Conn::New(slot.target.clone())))
    }

    /// Puts a connection whose response has ended back, as the most
    /// recently used; the oldest goes if there are too many.
    fn checkin(&mut self, id: SlotId, conn: Connection, now: Instant) {
        let max_idle = self.max_idle;
        let Some(slot) = self.slot_mut(id).filter(|_| max_idle > 0) else {
            return;
        };
        while slot.idle.len() >= max_idle {
            slot.idle.pop_front();
        }
        slot.idle.push_back(Idle { conn, since: now });
        // The one this pushes out of the warm end goes cold.
        if let Some(cold) = slot.idle.len().checked_sub(WARM_IDLE + 1) {
            slot.idle[cold].conn.release_buffers();
        }
    }

    /// Closes the connections idle for too long, and those the upstream
    /// closed, of every upstream (also of those no request names any more);
    /// frees the slots of upstreams no request used for as long, so that a
    /// gateway whose upstreams change with each reload keeps no trace of
    /// the old ones.
    fn sweep(&mut self, now: Instant) {
        let idle_timeout = self.idle_timeout;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            slot.idle.retain_mut(|idle| {
                now.saturating_duration_since(idle.since) < idle_timeout && idle.conn.is_usable()
            });
            if !slot.idle.is_empty() || now.saturating_duration_since(slot.used) < idle_timeout {
                continue;
            }
            let Some(authority) = slot.authority.take() else {
                continue;
            };
            if let Some(numbers) = self.by_authority.get_mut(&authority) {
                numbers.retain(|&n| n as usize != index);
                if numbers.is_empty() {
                    self.by_authority.remove(&authority);
                }
            }
        }
        self.next_sweep = now + idle_timeout;
    }

    fn target(&mut self, id: SlotId) -> Option<Arc<Target>> {
        self.slot_mut(id).map(|slot| slot.target.clone())
    }

    /// Idle connections to `key`'s upstream (for tests).
    #[cfg(test)]
    fn idle_count(&mut self, key: &Key<'_>) -> usize {
        let n = self.slot(key).expect("slot");
        self.slots[n as usize].idle.len()
    }

    /// Idle connections to `key`'s upstream that hold buffers (for tests).
    #[cfg(test)]
    fn buffered_count(&mut self, key: &Key<'_>) -> usize {
        let n = self.slot(key).expect("slot");
        let idle = &self.slots[n as usize].idle;
        idle.iter().filter(|idle| idle.conn.holds_buffers()).count()
    }
}

/// The connection a request checked out.
enum Conn {
    Idle(Connection),
    New(Arc<Target>),
}

/// The pool a connection belongs to.
enum Home {
    /// The pool of the thread the connection was checked out on, if it is
    /// still that thread's pool.
    Thread(u64),
    Shared(Arc<Mutex<Pool>>),
}

impl Home {
    fn with<R>(&self, f: impl FnOnce(&mut Pool) -> R) -> Option<R> {
        match self {
            Home::Thread(id) => THREAD_POOL
                .try_with(|own| {
                    let mut own = own.try_borrow_mut().ok()?;
                    own.as_mut().filter(|pool| pool.id == *id).map(f)
                })
                .ok()
                .flatten(),
            Home::Shared(pool) => Some(f(&mut lock(pool))),
        }
    }
}

/// A connection checked out for one request.
pub struct Checkout {
    home: Home,
    slot: SlotId,
    conn: Conn,
}

/// The calling thread's pool, if it has one, frees the buffers of the idle
/// connections unused for [`WARM_FOR`] and closes the cold ones unused for
/// [`COLD_FOR`]; called once a second.
pub fn cool_this_thread() {
    let now = Instant::now();
    THREAD_POOL.with(|own| {
        // Never borrowed across an await: it is free between tasks.
        if let Some(pool) = own
            .try_borrow_mut()
            .ok()
            .as_mut()
            .and_then(|own| own.as_mut())
        {
            pool.cool(now);
        }
    });
}

/// Checks a connection to `key`'s upstream out of this thread's pool if
/// `connector`'s pools have pinned one to it, else out of `shared`.
pub fn checkout(
    connector: &Arc<Connector>,
    shared: &Arc<Mutex<Pool>>,
    key: &Key<'_>,
    now: Instant,
) -> Result<Checkout, NoUsableCa> {
    let own = THREAD_POOL.with(|own| {
        let mut own = own.try_borrow_mut().ok()?;
        let pool = own
            .as_mut()
            .filter(|pool| Arc::ptr_eq(&pool.connector, connector))?;
        Some(pool.checkout(key, now).map(|(slot, conn)| Checkout {
            home: Home::Thread(pool.id),
            slot,
            conn,
        }))
    });
    if let Some(checkout) = own {
        return checkout;
    }
    let (slot, conn) = lock(shared).checkout(key, now)?;
    Ok(Checkout {
        home: Home::Shared(shared.clone()),
        slot,
        conn,
    })
}

/// The bounds of one try of a request that may go to several endpoints.
#[derive(Clone, Copy)]
pub struct TryBounds {
    /// When connecting must be done by: the tries of one request share one
    /// `timeout` for it, so that retries never multiply it.
    pub connect_by: Instant,
    /// The upstream timeout: for each wait once connected (see
    /// [`Checkout::send`]), and the budget `connect_by` ends.
    pub stall: Duration,
}

impl TryBounds {
    /// The bounds of a request that began at `started`, under `timeout`.
    pub fn starting(started: Instant, timeout: Duration) -> TryBounds {
        TryBounds {
            connect_by: started + timeout,
            stall: timeout,
        }
    }
}

/// A request that got no response, with the request itself when no byte
/// of it can have reached the upstream, or when it is idempotent, had no
/// body and got no byte of answer: it may then go to another upstream.
pub struct Failed {
    pub error: SendError,
    pub request: Option<Request<Body>>,
}

impl Checkout {
    /// Sends `req` to `destination` and returns the response head; the connection goes back to its pool when the body has ended.
    /// The upstream may be silent for at most `bounds.stall` while more
    /// of the body is due; connecting, for the request and for sending it
    /// again, ends at `bounds.connect_by`.
    #[allow(clippy::manual_async_fn)] // an `async fn` holds its arguments twice (see `proxy::serve::serve`)
    pub fn send<'a>(
        self,
        connector: &'a Connector,
        req: Request<Body>,
        destination: Destination<'a>,
        bounds: TryBounds,
        metrics: &'a ApiMetrics,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> + 'a {
        async move {
            // Not a wrapper of `try_send`: the single-endpoint route keeps its
            // smaller future and result.
            let TryBounds { connect_by, stall } = bounds;
            let Checkout { home, slot, conn } = self;
            let (conn, reused) = match conn {
                Conn::Idle(conn) => (conn, true),
                // Boxed (as below): connecting is a large future that requests
                // on a pooled connection need not carry.
                Conn::New(target) => (
                    Box::pin(connector.connect_until(&target, connect_by, stall)).await?,
                    false,
                ),
            };
            let response = match conn.send(req, destination, stall).await {
                Ok(response) => response,
                Err(Failure {
                    error,
                    request: Some(req),
                    unsent,
                }) if reused && (unsent || is_idempotent(req.method())) => {
                    // A first try that used up the time for connecting
                    // (its wait for an answer may have) is the answer.
                    if Instant::now() >= connect_by {
                        return Err(SendError::Request(error));
                    }
                    let target = home
                        .with(|pool| pool.target(slot))
                        .flatten()
                        .ok_or_else(|| SendError::Connect("the connection pool is gone".into()))?;
                    let connect = connector.connect_until(&target, connect_by, stall);
                    let conn = Box::pin(connect).await?;
                    // Boxed: a second exchange in this future would double its
                    // size for every request, retried or not.
                    Box::pin(conn.send(req, destination, stall))
                        .await
                        .map_err(|failure| SendError::Request(failure.error))?
                }
                Err(failure) => return Err(SendError::Request(failure.error)),
            };
            Ok(pooled(response, home, slot, metrics, ()))
        }
    }

    /// [`Checkout::send`], giving the request back on a failure when it
    /// is safe to send it elsewhere (see [`Failed`]); connecting ends at
    /// `bounds.connect_by`. The answer's body is still to be read: what
    /// learns how it ends is given to [`Answer::into_response`].
    pub async fn try_send(
        self,
        connector: &Connector,
        req: Request<Body>,
        destination: Destination<'_>,
        bounds: TryBounds,
    ) -> Result<Answer, Failed> {
        let TryBounds { connect_by, stall } = bounds;
        let Checkout { home, slot, conn } = self;
        let (conn, reused) = match conn {
            Conn::Idle(conn) => (conn, true),
            // Boxed (as below): connecting is a large future that requests
            // on a pooled connection need not carry.
            Conn::New(target) => {
                match Box::pin(connector.connect_until(&target, connect_by, stall)).await {
                    Ok(conn) => (conn, false),
                    Err(error) => {
                        return Err(Failed {
                            error,
                            request: Some(req),
                        })
                    }
                }
            }
        };
        let response = match conn.send(req, destination, stall).await {
            Ok(response) => response,
            Err(Failure {
                request: Some(req),
                unsent,
                ..
            }) if reused && (unsent || is_idempotent(req.method())) => {
                let target = home.with(|pool| pool.target(slot)).flatten();
                let Some(target) = target else {
                    return Err(Failed {
                        error: SendError::Connect("the connection pool is gone".into()),
                        request: Some(req),
                    });
                };
                let connect = connector.connect_until(&target, connect_by, stall);
                let conn = match Box::pin(connect).await {
                    Ok(conn) => conn,
                    Err(error) => {
                        return Err(Failed {
                            error,
                            request: Some(req),
                        })
                    }
                };
                // Boxed: a second exchange in this future would double its
                // size for every request, retried or not.
                Box::pin(conn.send(req, destination, stall))
                    .await
                    .map_err(Failed::after)?
            }
            Err(failure) => return Err(Failed::after(failure)),
        };
        Ok(Answer {
            response,
            back: Back { home, slot },
        })
    }
}

/// An answer's head, its body still to be read from the connection.
pub struct Answer {
    response: Response<ResponseBody>,
    back: Back,
}

impl Answer {
    pub fn status(&self) -> http::StatusCode {
        self.response.status()
    }

    /// The response (see [`pooled`]), its body telling `ending` how it
    /// ended.
    pub fn into_response<E: Ending>(self, metrics: &ApiMetrics, ending: E) -> Response<Body> {
        let Back { home, slot } = self.back;
        pooled(self.response, home, slot, metrics, ending)
    }
}

/// What learns how an answer's body ended: a balanced upstream's try, for
/// its endpoint's health and requests in flight. An upstream of one `url`
/// has nothing to learn it (`()`: its body does no more than before). A
/// body dropped before its end (the client left) tells it nothing: it is
/// dropped with it.
pub trait Ending: Send + Sync + Unpin + 'static {
    /// The body was read to its end (or it owed nothing more when its
    /// head came). Only the first of `ended` and `failed` counts: a body
    /// polled again after either tells it again.
    fn ended(&mut self);
    /// The upstream failed the body while more of it was due.
    fn failed(&mut self, error: &client::Error);
}

impl Ending for () {
    #[inline(always)]
    fn ended(&mut self) {}

    #[inline(always)]
    fn failed(&mut self, _: &client::Error) {}
}

/// The response, its body putting the connection back once read to its end,
/// and counting in `metrics` an upstream that fails it (goes silent,
/// closes, breaks the framing) while more of it is due (and the upstream
/// had the whole request); `ending` learns which way it ended.
#[inline]
fn pooled<E: Ending>(
    response: Response<ResponseBody>,
    home: Home,
    slot: SlotId,
    metrics: &ApiMetrics,
    mut ending: E,
) -> Response<Body> {
    response.map(|body| {
        // A body all there already cannot fail on the upstream's account:
        // most answers keep no handle on the API's series; their try has
        // ended with their head.
        let failures = (!body.owes_nothing()).then(|| metrics.clone());
        if failures.is_none() {
            ending.ended();
        }
        PooledBody {
            body,
            back: Some(Back { home, slot }),
            failures,
            ending,
        }
        .boxed()
    })
}

impl Failed {
    /// After an exchange on a connection: the request comes back only if
    /// the upstream cannot have read it, or if sending it again is safe.
    fn after(failure: Failure) -> Failed {
        let Failure {
            error,
            request,
            unsent,
        } = failure;
        Failed {
            error: SendError::Request(error),
            request: request.filter(|req| unsent || is_idempotent(req.method())),
        }
    }
}

/// A new connection to `scheme://authority` (health checks: not pooled).
pub async fn connect_once(
    connector: &Connector,
    key: &Key<'_>,
    timeout: Duration,
) -> Result<Connection, SendError> {
    let https = *key.scheme == Scheme::HTTPS;
    let config = connector
        .tls_config(key.ca_bundle)
        .map_err(|_| SendError::Connect("no usable CA in the bundle".into()))?;
    let target = Target::new(key, https, config);
    connector.connect_within(&target, timeout).await
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A response body that puts its connection back once read to its end.
struct PooledBody<E> {
    body: ResponseBody,
    back: Option<Back>,
    /// Where an upstream failing the body is counted (see [`pooled`]).
    failures: Option<ApiMetrics>,
    ending: E,
}

struct Back {
    home: Home,
    slot: SlotId,
}

impl<E> PooledBody<E> {
    fn release(&mut self) {
        if let Some(Back { home, slot }) = self.back.take() {
            if let Some(conn) = self.body.take_idle() {
                home.with(|pool| pool.checkin(slot, conn, crate::timer::clock::now_std()));
            }
        }
    }
}

impl<E: Ending> HttpBody for PooledBody<E> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.body.is_end_stream() {
                    this.release();
                    this.ending.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                // The connection is broken: it goes with this body.
                this.back = None;
                if let Some(metrics) = this.failures.take() {
                    let cause = match error {
                        client::Error::Stalled(_) => "timeout",
                        _ => "protocol",
                    };
                    super::upstream_fault::broke_off(&metrics, cause, Some(&error));
                }
                this.ending.failed(&error);
                Poll::Ready(Some(Err(Box::new(error))))
            }
            Poll::Ready(None) => {
                this.release();
                this.ending.ended();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<E> Drop for PooledBody<E> {
    fn drop(&mut self) {
        // A server drops a body that says it has ended (an empty one, or
        // one whose last bytes it has read) without polling it to `None`.
        // (`ending` has learnt it from the frame that ended it.)
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::AtomicUsize;

    use crate::http1::request_encode::AddedFields;
    use http::header::HOST;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// An address kept for one upstream's `dns_ttl` is not another's that
    /// keeps none (or less): each reads the cache within its own TTL.
    #[tokio::test]
    async fn each_caller_reads_the_dns_cache_within_its_own_ttl() {
        let connector = Connector::new(Duration::from_secs(2));
        let stale: Arc<[SocketAddr]> = Arc::new(["10.9.9.9:80".parse().unwrap()]);
        let resolved = Instant::now() - Duration::from_secs(10);
        lock(&connector.dns).insert("localhost:80".into(), (resolved, stale.clone()));
        let ttl = |secs| connector.resolve("localhost", 80, Duration::from_secs(secs));
        assert_eq!(
            ttl(30).await.unwrap(),
            stale,
            "resolved 10 s ago, kept 30 s"
        );
        let fresh = ttl(0).await.unwrap();
        assert!(fresh.iter().all(|a| a.ip().is_loopback()), "{fresh:?}");
        assert_eq!(ttl(30).await.unwrap(), stale, "a TTL of 0 keeps nothing");
        let renewed = ttl(5).await.unwrap();
        assert_ne!(renewed, stale, "older than this caller's 5 s");
        assert_eq!(
            ttl(30).await.unwrap(),
            renewed,
            "the new resolution is kept"
        );
    }

    /// Two upstreams on one `host:port` with different `dns_ttl`s (two
    /// APIs, or a reload changing it) have a slot each: the second does
    /// not connect with the first one's TTL.
    #[tokio::test]
    async fn each_dns_ttl_of_an_upstream_has_a_slot_of_its_own() {
        let mut pool = Pool::new(Arc::new(Connector::new(Duration::from_secs(2))));
        let authority: Authority = "upstream.example:8080".parse().unwrap();
        let key = |secs| Key {
            scheme: &Scheme::HTTP,
            authority: &authority,
            ca_bundle: None,
            dns_ttl: Duration::from_secs(secs),
        };
        let ttl_of = |pool: &mut Pool, secs| match pool.checkout(&key(secs), Instant::now()) {
            Ok((slot, Conn::New(target))) => (slot, target.dns_ttl),
            _ => panic!("a new connection is due"),
        };
        let (long, long_ttl) = ttl_of(&mut pool, 30);
        let (short, short_ttl) = ttl_of(&mut pool, 0);
        assert_eq!(long_ttl, Duration::from_secs(30));
        assert_eq!(short_ttl, Duration::ZERO, "resolved on every connect");
        assert_ne!(long, short);
        assert_eq!(ttl_of(&mut pool, 30).0, long, "each keeps its slot");
    }

    /// An upstream answering every request with `len` bytes, counting the
    /// TCP connections it accepted.
    struct TestUpstream {
        addr: SocketAddr,
        authority: Authority,
        connections: Arc<AtomicUsize>,
    }

    impl TestUpstream {
        async fn start(len: usize) -> TestUpstream {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let counted = connections.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let service = service_fn(move |_req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; len]))))
                    });
                    tokio::spawn(
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service),
                    );
                }
            });
            TestUpstream {
                authority: addr.to_string().parse().unwrap(),
                addr,
                connections,
            }
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    const STALL: Duration = Duration::from_secs(5);

    struct Pools {
        connector: Arc<Connector>,
        shared: Arc<Mutex<Pool>>,
    }

    impl Pools {
        fn new() -> Pools {
            let connector = Arc::new(Connector::new(Duration::from_secs(2)));
            Pools {
                shared: Arc::new(Mutex::new(Pool::new(connector.clone()))),
                connector,
            }
        }

        /// This thread's pool takes over, with these limits.
        fn pinned(max_idle: usize, idle_timeout: Duration) -> Pools {
            let pools = Pools::new();
            let own = Pool::with_limits(pools.connector.clone(), max_idle, idle_timeout);
            Pool::pin_to_this_thread(own);
            pools
        }

        fn checkout_at(&self, upstream: &TestUpstream, now: Instant) -> Checkout {
            let key = key(upstream);
            checkout(&self.connector, &self.shared, &key, now).unwrap()
        }

        async fn send(&self, upstream: &TestUpstream, checkout: Checkout) -> Response<Body> {
            let host = http::HeaderValue::from_str(&upstream.addr.to_string()).unwrap();
            checkout
                .send(
                    &self.connector,
                    request(upstream.addr),
                    to(&host),
                    TryBounds::starting(Instant::now(), STALL),
                    ApiMetrics::unmatched(),
                )
                .await
                .expect("response")
        }

        /// `req` sent on `checkout` to the host `upstream`.
        async fn send_as_upstream(
            &self,
            checkout: Checkout,
            req: Request<Body>,
        ) -> Result<Response<Body>, SendError> {
            let host = http::HeaderValue::from_static("upstream");
            let bounds = TryBounds::starting(Instant::now(), STALL);
            checkout
                .send(
                    &self.connector,
                    req,
                    to(&host),
                    bounds,
                    ApiMetrics::unmatched(),
                )
                .await
        }

        /// `n` requests at once: each checked out before any is sent, so
        /// each has a connection of its own.
        async fn at_once(&self, upstream: &TestUpstream, n: usize) -> Vec<Response<Body>> {
            let checkouts: Vec<Checkout> = (0..n)
                .map(|_| self.checkout_at(upstream, Instant::now()))
                .collect();
            let mut responses = Vec::new();
            for checkout in checkouts {
                responses.push(self.send(upstream, checkout).await);
            }
            responses
        }

        async fn get(&self, upstream: &TestUpstream) -> Response<Body> {
            let checkout = self.checkout_at(upstream, Instant::now());
            self.send(upstream, checkout).await
        }

        /// Idle connections to `upstream`, in this thread's pool if it has
        /// one of ours, else in the shared one.
        fn idle(&self, upstream: &TestUpstream) -> usize {
            let key = key(upstream);
            let own = THREAD_POOL.with(|own| {
                own.borrow_mut()
                    .as_mut()
                    .filter(|pool| Arc::ptr_eq(&pool.connector, &self.connector))
                    .map(|pool| pool.idle_count(&key))
            });
            own.unwrap_or_else(|| lock(&self.shared).idle_count(&key))
        }
    }

    fn key(upstream: &TestUpstream) -> Key<'_> {
        Key {
            scheme: &Scheme::HTTP,
            authority: &upstream.authority,
            ca_bundle: None,
            dns_ttl: Duration::from_secs(30),
        }
    }

    fn to(host: &http::HeaderValue) -> Destination<'_> {
        Destination {
            path_and_query: "/resource",
            host,
            added: AddedFields::none(),
            room: 0,
            as_sent: false,
        }
    }

    fn request(addr: SocketAddr) -> Request<Body> {
        Request::get("/resource")
            .header(HOST, addr.to_string())
            .body(super::super::empty())
            .unwrap()
    }

    async fn read_all(response: Response<Body>) -> usize {
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_on_a_pinned_thread() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let upstream = TestUpstream::start(100).await;
        for _ in 0..5 {
            assert_eq!(read_all(pools.get(&upstream).await).await, 100);
            assert_eq!(pools.idle(&upstream), 1);
        }
        assert_eq!(upstream.connections(), 1);
        // A body of 1 MiB comes in many reads; it goes back all the same.
        let big = TestUpstream::start(1 << 20).await;
        for _ in 0..3 {
            assert_eq!(read_all(pools.get(&big).await).await, 1 << 20);
        }
        assert_eq!(big.connections(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_requests_share_one_connection_from_any_thread() {
        let pools = Pools::new();
        let upstream = TestUpstream::start(100).await;
        for _ in 0..5 {
            assert_eq!(read_all(pools.get(&upstream).await).await, 100);
        }
        assert_eq!(upstream.connections(), 1);
        assert_eq!(pools.idle(&upstream), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_along() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let upstream = TestUpstream::start(1 << 20).await;
        let mut body = pools.get(&upstream).await.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().unwrap().len() < 1 << 20);
        drop(body);
        assert_eq!(pools.idle(&upstream), 0);
        assert_eq!(read_all(pools.get(&upstream).await).await, 1 << 20);
        assert_eq!(upstream.connections(), 2);
        assert_eq!(pools.idle(&upstream), 1);
    }

    #[tokio::test]
    async fn only_the_most_recently_used_idle_connections_keep_their_buffers() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let upstream = TestUpstream::start(10).await;
        let burst = WARM_IDLE + 4;
        for round in 0..2 {
            for response in pools.at_once(&upstream, burst).await {
                assert_eq!(read_all(response).await, 10);
            }
            assert_eq!(pools.idle(&upstream), burst, "round {round}");
            let key = key(&upstream);
            let buffered = THREAD_POOL.with(|own| {
                own.borrow_mut()
                    .as_mut()
                    .map(|pool| pool.buffered_count(&key))
            });
            assert_eq!(buffered, Some(WARM_IDLE), "round {round}");
        }
        // Those without buffers carried the second burst as well.
        assert_eq!(upstream.connections(), burst);
    }

    #[tokio::test]
    async fn idle_connections_unused_for_a_while_free_their_buffers() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let upstream = TestUpstream::start(10).await;
        for response in pools.at_once(&upstream, 3).await {
            assert_eq!(read_all(response).await, 10);
        }
        let key = key(&upstream);
        let buffered_after = |unused: Duration| {
            THREAD_POOL.with(|own| {
                let mut own = own.borrow_mut();
                let pool = own.as_mut().expect("pinned");
                pool.cool(Instant::now() + unused);
                pool.buffered_count(&key)
            })
        };
        assert_eq!(buffered_after(Duration::ZERO), 3, "just used: warm");
        assert_eq!(buffered_after(WARM_FOR), 0);
        // They still carry requests.
        assert_eq!(read_all(pools.get(&upstream).await).await, 10);
        assert_eq!(upstream.connections(), 3);
    }

    #[tokio::test]
    async fn cold_idle_connections_unused_for_a_while_are_closed() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let upstream = TestUpstream::start(10).await;
        let burst = WARM_IDLE + 4;
        for response in pools.at_once(&upstream, burst).await {
            assert_eq!(read_all(response).await, 10);
        }
        let idle_after = |unused: Duration| {
            THREAD_POOL.with(|own| {
                let mut own = own.borrow_mut();
                let pool = own.as_mut().expect("pinned");
                pool.cool(Instant::now() + unused);
                pool.idle_count(&key(&upstream))
            })
        };
        assert_eq!(idle_after(WARM_FOR), burst, "not cold for long enough");
        assert_eq!(idle_after(COLD_FOR), WARM_IDLE);
        // The warm ones stay until the idle timeout, and carry requests.
        assert_eq!(idle_after(COLD_FOR * 2), WARM_IDLE);
        assert_eq!(read_all(pools.get(&upstream).await).await, 10);
        assert_eq!(upstream.connections(), burst);
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_limit_are_closed() {
        let pools = Pools::pinned(2, IDLE_TIMEOUT);
        let upstream = TestUpstream::start(10).await;
        // Three requests at once: three connections.
        let responses = pools.at_once(&upstream, 3).await;
        assert_eq!(upstream.connections(), 3);
        for response in responses {
            assert_eq!(read_all(response).await, 10);
        }
        assert_eq!(pools.idle(&upstream), 2);
    }

    #[tokio::test]
    async fn an_upstream_no_request_used_for_the_idle_timeout_leaves_no_trace() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let (old, new) = (TestUpstream::start(10).await, TestUpstream::start(20).await);
        let start = Instant::now();
        let checkout = pools.checkout_at(&old, start);
        let in_flight = pools.send(&old, checkout).await;
        // The old upstream's slot is freed and its place goes to the new
        // one; the old connection, back late, does not land in it.
        let later = start + IDLE_TIMEOUT * 2 + Duration::from_secs(1);
        let checkout = pools.checkout_at(&new, later);
        let slots = || THREAD_POOL.with(|own| own.borrow().as_ref().map(|pool| pool.slots.len()));
        assert_eq!(slots(), Some(1));
        assert_eq!(read_all(in_flight).await, 10);
        assert_eq!(pools.idle(&new), 0);
        assert_eq!(read_all(pools.send(&new, checkout).await).await, 20);
        assert_eq!(pools.idle(&new), 1);
        assert_eq!(slots(), Some(1));
    }

    #[tokio::test]
    async fn a_connection_idle_for_too_long_is_not_used() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, Duration::from_secs(90));
        let upstream = TestUpstream::start(10).await;
        read_all(pools.get(&upstream).await).await;
        let later = Instant::now() + Duration::from_secs(91);
        let checkout = pools.checkout_at(&upstream, later);
        assert!(matches!(checkout.conn, Conn::New(_)));
        read_all(pools.send(&upstream, checkout).await).await;
        assert_eq!(upstream.connections(), 2);
    }

    /// An upstream on its own thread that answers the first request of
    /// each connection, then either closes it when told on `close`
    /// (`Some`), or reads the next request and closes without answering.
    struct RawUpstream {
        addr: SocketAddr,
        authority: Authority,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    impl RawUpstream {
        fn start(close: Option<std::sync::mpsc::Receiver<()>>) -> RawUpstream {
            RawUpstream::answering_the_second_with(close, b"")
        }

        /// Writes `partial` to the second request on a connection before
        /// it closes that connection.
        fn answering_the_second_with(
            close: Option<std::sync::mpsc::Receiver<()>>,
            partial: &'static [u8],
        ) -> RawUpstream {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(AtomicUsize::new(0));
            let (c, r) = (connections.clone(), requests.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    c.fetch_add(1, Ordering::SeqCst);
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    for served in 0..2 {
                        // The request head (GET, no body).
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                break;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if line != "\r\n" {
                            break;
                        }
                        r.fetch_add(1, Ordering::SeqCst);
                        if served == 1 {
                            let _ = stream.write_all(partial);
                            break;
                        }
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .unwrap();
                        if let Some(close) = &close {
                            // Idle until told to close.
                            let _ = close.recv();
                            break;
                        }
                    }
                }
            });
            RawUpstream {
                authority: addr.to_string().parse().unwrap(),
                addr,
                connections,
                requests,
            }
        }

        fn as_test(&self) -> TestUpstream {
            TestUpstream {
                addr: self.addr,
                authority: self.authority.clone(),
                connections: self.connections.clone(),
            }
        }
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_by_the_upstream_is_replaced() {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let (close, closing) = std::sync::mpsc::channel();
        let upstream = RawUpstream::start(Some(closing)).as_test();
        read_all(pools.get(&upstream).await).await;
        // Checked out while still open, closed before the request is
        // written: the request goes once more, on a new connection.
        let checkout = pools.checkout_at(&upstream, Instant::now());
        assert!(matches!(checkout.conn, Conn::Idle(_)));
        close.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let response = pools.send(&upstream, checkout).await;
        assert_eq!(read_all(response).await, 2);
        assert_eq!(upstream.connections(), 2);
        // Closed while idle in the pool: not used at all.
        close.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        read_all(pools.get(&upstream).await).await;
        assert_eq!(upstream.connections(), 3);
    }

    /// Sends `req` on the idle connection that `raw` will drop unanswered.
    async fn send_unanswered(req: Request<Body>) -> (Result<(), SendError>, RawUpstream) {
        send_answered_with(req, b"").await
    }

    /// Sends `req` on the idle connection on which `raw` writes `partial`
    /// and closes.
    async fn send_answered_with(
        req: Request<Body>,
        partial: &'static [u8],
    ) -> (Result<(), SendError>, RawUpstream) {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        // The first request is answered; the second is read and the
        // connection closed after `partial`.
        let raw = RawUpstream::answering_the_second_with(None, partial);
        let upstream = raw.as_test();
        read_all(pools.get(&upstream).await).await;
        let checkout = pools.checkout_at(&upstream, Instant::now());
        assert!(matches!(checkout.conn, Conn::Idle(_)));
        let result = pools.send_as_upstream(checkout, req).await;
        (
            result.map(|response| assert_eq!(response.status(), 200)),
            raw,
        )
    }

    #[tokio::test]
    async fn host_names_are_resolved_again_only_after_their_ttl() {
        let connector = Connector::new(Duration::from_secs(2));
        let ttl = Duration::from_secs(30);
        let first = connector.resolve("localhost", 80, ttl).await.unwrap();
        let again = connector.resolve("localhost", 80, ttl).await.unwrap();
        assert!(!first.is_empty());
        assert!(Arc::ptr_eq(&first, &again), "from the cache");
        let uncached = connector
            .resolve("localhost", 81, Duration::ZERO)
            .await
            .unwrap();
        let fresh = connector
            .resolve("localhost", 81, Duration::ZERO)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&uncached, &fresh), "a TTL of 0 caches nothing");
        assert_eq!(lock(&connector.dns).len(), 1);
    }

    /// A raw upstream that counts the requests it saw begin (their first
    /// line). On the first connection it reads a little of the head and
    /// resets the connection; on the others it reads the whole head and
    /// answers. Its receive buffer is small, so a large head goes to it
    /// in several writes.
    async fn resetting_upstream() -> (TestUpstream, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let (c, s) = (connections.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let first = c.fetch_add(1, Ordering::SeqCst) == 0;
                let s = s.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        let Ok(n @ 1..) = stream.read(&mut buf).await else {
                            return;
                        };
                        if head.is_empty() {
                            s.fetch_add(1, Ordering::SeqCst);
                        }
                        head.extend_from_slice(&buf[..n]);
                        if first {
                            let linger = Some(Duration::ZERO);
                            socket2::SockRef::from(&stream).set_linger(linger).unwrap();
                            return;
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    let _ = stream.write_all(answer).await;
                    let _ = stream.read(&mut buf).await;
                });
            }
        });
        let upstream = TestUpstream {
            authority: addr.to_string().parse().unwrap(),
            addr,
            connections,
        };
        (upstream, seen)
    }

    /// Sends `req` (with a head far larger than the socket buffers) on a
    /// pooled connection to an upstream that reads part of it and resets
    /// the connection: the write fails after the upstream took bytes.
    async fn send_into_a_reset(
        method: Method,
    ) -> (Result<Response<Body>, SendError>, Arc<AtomicUsize>) {
        let pools = Pools::pinned(MAX_IDLE_PER_UPSTREAM, IDLE_TIMEOUT);
        let (upstream, seen) = resetting_upstream().await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4096).unwrap();
        let tcp = socket.connect(upstream.addr).await.unwrap();
        let mut checkout = pools.checkout_at(&upstream, Instant::now());
        checkout.conn = Conn::Idle(Connection::new(Stream::Tcp(tcp)));
        let req = Request::builder()
            .method(method)
            .uri("/resource")
            .header(HOST, "upstream")
            .header(http::header::CONTENT_LENGTH, "0")
            .header("x-large", "a".repeat(256 << 10))
            .body(super::super::empty())
            .unwrap();
        let result = pools.send_as_upstream(checkout, req).await;
        (result, seen)
    }

    #[tokio::test]
    async fn a_post_whose_head_the_upstream_began_to_read_is_not_sent_again() {
        let (result, seen) = send_into_a_reset(Method::POST).await;
        let result = result.map(|response| response.status());
        assert!(matches!(result, Err(SendError::Request(_))), "{result:?}");
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the POST went once");
    }

    #[tokio::test]
    async fn a_get_whose_head_the_upstream_began_to_read_goes_once_more() {
        let (result, seen) = send_into_a_reset(Method::GET).await;
        assert_eq!(read_all(result.expect("answered")).await, 2);
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_request_that_reached_the_upstream_is_not_sent_again() {
        let post = Request::post("/resource")
            .header(HOST, "upstream")
            .header(http::header::CONTENT_LENGTH, "0")
            .body(super::super::empty())
            .unwrap();
        let (result, raw) = send_unanswered(post).await;
        assert!(matches!(result, Err(SendError::Request(_))), "{result:?}");
        assert_eq!(raw.requests.load(Ordering::SeqCst), 2);
        assert_eq!(raw.connections.load(Ordering::SeqCst), 1);
    }

    /// An informational head is an answer: the upstream has begun, and
    /// may have done, the work. Not sent again, idempotent or not.
    #[tokio::test]
    async fn a_request_the_upstream_sent_an_informational_head_for_is_not_sent_again() {
        let early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n";
        let (result, raw) =
            send_answered_with(request(([127, 0, 0, 1], 80).into()), early_hints).await;
        assert!(matches!(result, Err(SendError::Request(_))), "{result:?}");
        assert_eq!(raw.requests.load(Ordering::SeqCst), 2);
        assert_eq!(raw.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_idempotent_request_dropped_unanswered_goes_once_more() {
        let (result, raw) = send_unanswered(request(([127, 0, 0, 1], 80).into())).await;
        result.expect("answered on a new connection");
        assert_eq!(raw.requests.load(Ordering::SeqCst), 3);
        assert_eq!(raw.connections.load(Ordering::SeqCst), 2);
    }
}
