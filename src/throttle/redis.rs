//! The Redis store: every gateway sharing one Redis counts together. One
//! round trip per request: a Lua script runs the GCRA of `gcra.rs` on all
//! the request's keys at once, on Redis's own clock (`TIME`), so the
//! decision is atomic and exact however many gateways ask. Keys are
//! prefixed `mcgw:` and expire when their bucket is full again.
//!
//! Each listener thread has its own connection ([`link`]: reconnected
//! after Redis comes back, replaced when it stops answering); each call is
//! bounded by `throttling.timeout`, after which the caller applies
//! `on_store_error`: never a hang. The socket sends TCP keepalives and
//! gives up on data unacknowledged for [`UNACKNOWLEDGED`], so that the
//! kernel, too, closes a connection whose peer is gone. A `rediss://`
//! store speaks TLS, the server verified against `throttling.ca_bundle`
//! (or the system's CAs) and its name.

mod link;

use std::sync::Arc;
use std::time::Duration;

use redis::io::tcp::socket2::TcpKeepalive;
use redis::{Client, ConnectionInfo, IntoConnectionInfo, Script};
use thread_local::ThreadLocal;

use super::gcra::Rate;
use super::{Key, Levels};
use crate::config::snapshot::CaBundle;
use crate::config::Secret;

/// GCRA on every key, all or nothing. KEYS: one per policy; ARGV: interval
/// and period (µs) per key. No TAT is written more than a period ahead of
/// Redis's clock: one further ahead was written before that clock stepped
/// back, and counts as a full bucket, not as hours of refusals. Returns the verdict (1 admitted, 0 refused) and
/// each key's level (TAT − now, µs) after it. Lua numbers are doubles:
/// microseconds since 1970 stay exact (below 2^53).
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local bases = {}
local stepped = {}
local admitted = 1
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local period = tonumber(ARGV[2 * i])
  local base = tonumber(redis.call('GET', KEYS[i]) or '0')
  if base < now then base = now end
  if base > now + period then
    base = now + period
    stepped[i] = true
  end
  bases[i] = base
  if base + interval - now > period then admitted = 0 end
end
local out = { admitted }
for i = 1, #KEYS do
  local base = bases[i]
  if admitted == 1 then
    local tat = base + tonumber(ARGV[2 * i - 1])
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000))
    out[i + 1] = tat - now
  else
    if stepped[i] then
      redis.call('SET', KEYS[i], string.format('%d', base), 'PX', math.ceil((base - now) / 1000))
    end
    out[i + 1] = base - now
  end
end
return out
";

/// Why the store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered {0} values for {1} keys")]
    Malformed(usize, usize),
}

impl StoreError {
    /// Whether the connection gave no answer (an error Redis sent, or an
    /// answer of the wrong shape, is an answer).
    fn unanswered(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Redis(error) => error.is_io_error(),
            StoreError::Malformed(..) => false,
        }
    }
}

/// Idle time before the first keepalive probe, and between probes.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// How long sent data may stay unacknowledged before the kernel closes
/// the connection (Linux `TCP_USER_TIMEOUT`; it also ends the probes).
const UNACKNOWLEDGED: Duration = Duration::from_secs(20);

/// How long a listener thread's first connection may take when it is
/// made ahead of its first request ([`RedisStore::connect_this_thread`]):
/// the link's connect timeout and one retry.
pub const CONNECT_BOUND: Duration = Duration::from_secs(3);

pub struct RedisStore {
    /// What it was opened with, to tell whether a new snapshot changes it.
    pub url: Secret,
    pub password: Option<Secret>,
    pub ca_bundle: Option<CaBundle>,
    client: Client,
    links: ThreadLocal<Arc<link::Link>>,
    script: Script,
}

impl RedisStore {
    /// Checks the URL; connects on first use, from each listener thread.
    pub fn open(
        url: &Secret,
        password: Option<&Secret>,
        ca_bundle: Option<&CaBundle>,
    ) -> Result<RedisStore, String> {
        let mut info = url
            .expose()
            .into_connection_info()
            .map_err(|_| "throttling.store is not a valid redis:// URL".to_owned())?;
        if let Some(password) = password {
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let info = with_keepalive(info);
        let client = match ca_bundle {
            // Only these CAs: the system's are not consulted.
            Some(bundle) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(bundle.pem.to_vec()),
                },
            )
            .map_err(|error| format!("throttling.ca_bundle: {error}"))?,
            None => Client::open(info)
                .map_err(|_| "throttling.store is not a valid redis:// URL".to_owned())?,
        };
        Ok(RedisStore {
            url: url.clone(),
            password: password.cloned(),
            ca_bundle: ca_bundle.cloned(),
            client,
            links: ThreadLocal::new(),
            script: Script::new(GCRA),
        })
    }

    /// Connects this thread's link before a request needs it: made on
    /// the first call, the connection (a TLS handshake, `AUTH`, `SELECT`)
    /// would take much of that call's `throttling.timeout`, and the call
    /// would meet the store error with the store healthy. Bounded by the
    /// connect timeout; one that fails is left to the first call.
    pub async fn connect_this_thread(&self) {
        let Ok(link) = self.link() else { return };
        let mut taken = link.take();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut taken.connection);
        match tokio::time::timeout(CONNECT_BOUND, ping).await {
            Ok(Ok(_)) => link.answered(&taken),
            Ok(Err(error)) => {
                tracing::debug!(%error, "throttle store: not connected yet; the first call connects");
            }
            Err(_) => tracing::debug!("throttle store: not connected yet; the first call connects"),
        }
    }

    /// Counts a request on every key, or on none (see `GCRA`).
    pub async fn check(
        &self,
        keys: &[(Key<'_>, Rate)],
        timeout: Duration,
    ) -> Result<(bool, Levels), StoreError> {
        let link = self.link()?;
        let mut taken = link.take();
        let mut invocation = self.script.prepare_invoke();
        for (key, rate) in keys {
            invocation
                .key(key.redis_key())
                .arg(rate.interval)
                .arg(rate.period);
        }
        let answer: Result<Vec<i64>, StoreError> =
            tokio::time::timeout(timeout, invocation.invoke_async(&mut taken.connection))
                .await
                .map_err(|_| StoreError::Timeout(timeout))
                .and_then(|answer| answer.map_err(StoreError::from));
        match &answer {
            Err(error) if error.unanswered() => link.failed(&taken),
            _ => link.answered(&taken),
        }
        let answer = answer?;
        match answer.split_first() {
            Some((admitted, levels)) if levels.len() == keys.len() => Ok((
                *admitted == 1,
                levels
                    .iter()
                    .map(|l| u64::try_from(*l).unwrap_or(0))
                    .collect(),
            )),
            _ => Err(StoreError::Malformed(answer.len(), keys.len())),
        }
    }

    /// This thread's link, made (not yet connected) on first use.
    fn link(&self) -> Result<&Arc<link::Link>, StoreError> {
        Ok(self
            .links
            .get_or_try(|| link::Link::open(self.client.clone()).map(Arc::new))?)
    }
}

/// `info` with TCP keepalive (and, on Linux, a bound on unacknowledged
/// data): the kernel closes a connection whose peer is gone without a
/// word within a minute, idle or not, instead of the 15 minutes or more
/// of its defaults, and redis-rs then reconnects.
fn with_keepalive(info: ConnectionInfo) -> ConnectionInfo {
    let keepalive = TcpKeepalive::new().with_time(KEEPALIVE);
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let keepalive = keepalive.with_interval(KEEPALIVE).with_retries(3);
    let settings = info.tcp_settings().clone().set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(UNACKNOWLEDGED);
    info.set_tcp_settings(settings)
}
