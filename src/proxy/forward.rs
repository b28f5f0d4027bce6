//! Forwarding to the upstream over a keep-alive pool (or answering from the
//! `echo` upstream), with the request body streamed through a size limit and
//! the per-API timeout on each wait for the upstream. Forwarding takes the
//! [`Grant`]: nothing reaches an upstream unauthorized. A failure of the
//! client's body is the client's (400/408, `client_errors_total`); only the
//! upstream's own are 502/504 and `upstream_errors_total`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, COOKIE, PROXY_AUTHORIZATION,
};
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::balance::{Health, Outcome};
use super::batch;
use super::client;
use super::pool::{self, Connector, Failed, Key, Pool, SendError, TryBounds};
use super::reject::{BadGateway, BodyFault, Rejection};
use super::{full, Body, BoxError};
use crate::config::snapshot::{Api, Balanced, Upstream, UpstreamProtocol};
use crate::http1::request_encode::{AddedFields, Destination};
use crate::policy::Grant;

/// How long an upstream written as `url` uses the addresses of its host.
const DEFAULT_DNS_TTL: Duration = Duration::from_secs(30);

/// The upstream connection pools: each listener thread's own (see
/// [`Upstreams::pin_pool_to_this_thread`]), and one shared by every other
/// caller. `https` upstreams are verified against the system roots, or
/// against the CA bundle their API names.
#[derive(Clone)]
pub struct Upstreams {
    connector: Arc<Connector>,
    shared: Arc<Mutex<Pool>>,
    health: Arc<Health>,
}

impl Upstreams {
    /// Gives the calling thread a pool of its own: a request and the
    /// upstream connection it goes out on are then driven by the same
    /// thread, with no lock and no wake-up across threads.
    pub fn pin_pool_to_this_thread(&self) {
        Pool::pin_to_this_thread(Pool::new(self.connector.clone()));
    }

    /// The idle connections of this thread's pool unused for a while free
    /// their buffers.
    pub fn cool_pool_of_this_thread() {
        super::pool::cool_this_thread();
    }

    pub fn new(connect_timeout: Duration) -> Upstreams {
        let connector = Arc::new(Connector::new(connect_timeout));
        Upstreams {
            shared: Arc::new(Mutex::new(Pool::new(connector.clone()))),
            health: Arc::new(Health::new(connector.clone())),
            connector,
        }
    }

    /// The health of the endpoints of balanced upstreams (kept across
    /// reloads: [`Health::prepare`] binds each snapshot to it).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Sends the request to the API's upstream and returns the upstream's
    /// response, streaming.
    pub async fn forward(
        &self,
        _grant: Grant,
        api: &Api,
        mut req: Request<Body>,
        outgoing: Outgoing<'_>,
    ) -> Result<Response<Body>, Rejection> {
        let Outgoing {
            rest,
            added,
            as_sent,
            deadline,
        } = outgoing;
        let (scheme, authority, host, prefix, timeout, ca_bundle, protocol) = match &api.upstream {
            Upstream::Echo => {
                let path = if rest.is_empty() { "/" } else { rest };
                let target = match req.uri().query() {
                    Some(query) => format!("{path}?{query}"),
                    None => path.to_owned(),
                };
                *req.uri_mut() = Uri::try_from(target).map_err(|_| {
                    Rejection::BadRequest("the request cannot be mapped to the upstream")
                })?;
                added.insert_into(req.headers_mut());
                return Box::pin(echo(req)).await;
            }
            Upstream::Url {
                scheme,
                authority,
                host,
                path,
                timeout,
                ca_bundle,
                protocol,
            } => (
                scheme, authority, host, path, *timeout, ca_bundle, *protocol,
            ),
            Upstream::Balanced(balanced) => {
                // Boxed: the single-endpoint future stays as small as it was.
                let balanced = || self.forward_balanced(api, balanced, req, rest, added, as_sent);
                return super::pin_in_place(balanced).await;
            }
        };
        let mut path_and_query = String::with_capacity(prefix.len() + rest.len() + 32);
        path_and_query.push_str(prefix);
        path_and_query.push_str(rest);
        if path_and_query.is_empty() {
            path_and_query.push('/');
        }
        if let Some(query) = req.uri().query() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        // Origin-form: the connection is to the upstream already. The path
        // is canonical and the query was parsed with the request; this
        // keeps the target one token whatever the configuration says.
        if !is_request_target(&path_and_query) {
            return Err(Rejection::BadRequest(
                "the request cannot be mapped to the upstream",
            ));
        }
        let destination = Destination {
            path_and_query: &path_and_query,
            host,
            added,
            room: api.answer_room,
            as_sent,
        };
        let exceeded = req.extensions().get::<LimitFlag>().cloned();
        let started = crate::timer::clock::now_std();
        let key = Key {
            scheme,
            authority,
            ca_bundle: ca_bundle.as_ref(),
            dns_ttl: DEFAULT_DNS_TTL,
        };
        if protocol != UpstreamProtocol::Http1 {
            added.insert_into(req.headers_mut());
            let exchange = super::h2_upstream::Exchange {
                key: &key,
                path_and_query: &path_and_query,
                bound: super::h2_upstream::Bound { timeout, deadline },
                started,
            };
            let result = Box::pin(super::h2_upstream::forward(
                &self.connector,
                api,
                req,
                exchange,
            ))
            .await;
            if result.is_err() && exceeded.is_some_and(|f| f.0.load(Ordering::Relaxed)) {
                return Err(Rejection::PayloadTooLarge);
            }
            return result;
        }
        let _on_its_way = batch::enter().await;
        let checkout = pool::checkout(&self.connector, &self.shared, &key, started)
            .map_err(|_| no_usable_ca(api))?;
        // The timeout bounds connecting, each write the upstream takes
        // nothing of, the wait for the response head once the request is
        // sent, and then each silence while more of the body is due. The
        // client's own pace is bounded by the server (`timeouts.body_read`).
        let result = checkout
            .send(
                &self.connector,
                req,
                destination,
                TryBounds::starting(started, timeout),
                &api.metrics,
            )
            .await;
        match result {
            // The upstream's hop-by-hop headers ended with its connection.
            Ok(response) => {
                let took = crate::timer::clock::now_std().saturating_duration_since(started);
                api.metrics.observe_upstream(took.as_secs_f64());
                Ok(response)
            }
            Err(error) => Err(failure(api, error, exceeded.as_ref(), started)),
        }
    }

    /// Forwards to one of the endpoints of `balanced`, and to another one
    /// when the first failed in a way that left the request unsent (or,
    /// idempotent and bodiless, unanswered), as `retry` allows, while
    /// the `timeout` for connecting has time left.
    async fn forward_balanced(
        &self,
        api: &Api,
        balanced: &Arc<Balanced>,
        mut req: Request<Body>,
        rest: &str,
        added: &AddedFields,
        as_sent: bool,
    ) -> Result<Response<Body>, Rejection> {
        let balancer = self.health.balancer(&api.name, balanced);
        let config = balancer.config();
        let exceeded = req.extensions().get::<LimitFlag>().cloned();
        let started = Instant::now();
        // Connecting, over all the tries, within one `timeout`: a retry
        // never starts a new one (Envoy's route timeout, nginx's
        // `proxy_next_upstream_timeout`).
        let bounds = TryBounds::starting(started, config.timeout);
        let mut tried = 0u64;
        let mut attempt = 1;
        let _on_its_way = batch::enter().await;
        loop {
            // The first try goes at the time the request was read for it.
            let now = if attempt == 1 {
                started
            } else {
                Instant::now()
            };
            let pick = balancer.pick_at(tried, now);
            tried |= 1 << pick.index;
            // Begun before anything can fail: a trial the pick claimed is
            // given back (`Attempt`'s drop) on every way out.
            let exchange = balancer.begin(&pick);
            let endpoint = &config.endpoints[pick.index];
            let path_and_query = target(&endpoint.path, rest, req.uri().query()).ok_or(
                Rejection::BadRequest("the request cannot be mapped to the upstream"),
            )?;
            let destination = Destination {
                path_and_query: &path_and_query,
                host: &endpoint.host,
                added,
                room: api.answer_room,
                as_sent,
            };
            let key = Key {
                scheme: &endpoint.scheme,
                authority: &endpoint.authority,
                ca_bundle: config.ca_bundle.as_ref(),
                dns_ttl: config.dns_ttl,
            };
            let checkout = pool::checkout(&self.connector, &self.shared, &key, now)
                .map_err(|_| no_usable_ca(api))?;
            let result = checkout
                .try_send(&self.connector, req, destination, bounds)
                .await;
            let Failed { error, request } = match result {
                Ok(answer) => {
                    // In flight, and its outcome open, until the body has
                    // ended: an endpoint that cuts it has failed the try.
                    let answering = exchange.answered(answer.status());
                    api.metrics
                        .observe_upstream(started.elapsed().as_secs_f64());
                    // A 101's try lasts as long as the tunnel it opens,
                    // which takes it from the response (`tunnel::Held`).
                    if answer.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        let mut response = answer.into_response(&api.metrics, ());
                        response
                            .extensions_mut()
                            .insert(super::tunnel::HeldTry::of(answering));
                        return Ok(response);
                    }
                    return Ok(answer.into_response(&api.metrics, answering));
                }
                Err(failed) => failed,
            };
            let client_fault = exceeded
                .as_ref()
                .is_some_and(|f| f.0.load(Ordering::Relaxed))
                || matches!(
                    error,
                    SendError::Request(
                        client::Error::RequestBody(_) | client::Error::RequestBodyLength
                    )
                );
            if client_fault {
                exchange.neutral();
                return Err(failure(api, error, exceeded.as_ref(), started));
            }
            let outcome = match &error {
                SendError::Connect(_) | SendError::Timeout(_) => Outcome::ConnectFailure,
                _ if request.is_some() => Outcome::Refused,
                SendError::Request(client::Error::Timeout(_) | client::Error::WriteStalled(_)) => {
                    Outcome::Timeout
                }
                SendError::Request(_) => Outcome::Failure,
            };
            exchange.failed(outcome);
            let retry = match outcome {
                Outcome::ConnectFailure => config.retry.connect_failure,
                Outcome::Refused => config.retry.refused_stream,
                _ => false,
            };
            // Each try to an endpoint not tried yet: a request that breaks
            // its endpoint is not sent to it again.
            let untried = (tried.count_ones() as usize) < config.endpoints.len();
            let in_time = Instant::now() < bounds.connect_by;
            match request {
                Some(again) if retry && untried && in_time && attempt < config.retry.attempts => {
                    tracing::debug!(%error, api = api.name, endpoint = &*endpoint.url, "trying another endpoint");
                    req = again;
                    attempt += 1;
                }
                _ => return Err(failure(api, error, exceeded.as_ref(), started)),
            }
        }
    }
}

/// What `serve` worked out for a request besides its API.
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    /// The request's path below the API's base path.
    pub rest: &'a str,
    /// The fields the gateway adds for the upstream.
    pub added: &'a AddedFields,
    /// The answer's fields as the upstream sent them
    /// ([`Destination::as_sent`]).
    pub as_sent: bool,
    /// The deadline a gRPC client stated (`grpc-timeout`) for a call to
    /// an HTTP/2 upstream; it bounds the call with `upstream.timeout`.
    pub deadline: Option<tokio::time::Instant>,
}

/// The upstream's request target: `prefix` + `rest` (+ `?query`), or
/// `None` when it would not be one token.
fn target(prefix: &str, rest: &str, query: Option<&str>) -> Option<String> {
    let mut path_and_query = String::with_capacity(prefix.len() + rest.len() + 32);
    path_and_query.push_str(prefix);
    path_and_query.push_str(rest);
    if path_and_query.is_empty() {
        path_and_query.push('/');
    }
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    is_request_target(&path_and_query).then_some(path_and_query)
}

/// An upstream whose CA bundle holds no usable certificate: nothing could
/// be verified, so nothing is sent; counted and said as its failure to
/// connect, with what is wrong.
fn no_usable_ca(api: &Api) -> Rejection {
    if let Some(suppressed) = api.metrics.failure_line_due() {
        tracing::warn!(
            api = api.name,
            cause = "connect",
            suppressed,
            "the upstream's CA bundle holds no usable certificate"
        );
    }
    api.metrics.upstream_error("connect");
    Rejection::BadGateway(BadGateway::Unreachable)
}

/// What the client is told when the exchange failed, counted.
fn failure(
    api: &Api,
    error: SendError,
    exceeded: Option<&LimitFlag>,
    started: Instant,
) -> Rejection {
    if exceeded.is_some_and(|f| f.0.load(Ordering::Relaxed)) {
        tracing::debug!(%error, api = api.name, "request body over the limit");
        return Rejection::PayloadTooLarge;
    }
    let (rejection, cause) = match &error {
        // The client's body broke: the exchange was cut before the
        // request was complete, and the upstream is not to blame.
        SendError::Request(client::Error::RequestBody(body_error)) => {
            tracing::debug!(%error, api = api.name, "the client's request body failed");
            return Rejection::ClientBody(BodyFault::of(body_error));
        }
        SendError::Request(client::Error::RequestBodyLength) => {
            tracing::debug!(%error, api = api.name, "the client's request body failed");
            return Rejection::ClientBody(BodyFault::Truncated);
        }
        SendError::Timeout(_)
        | SendError::Request(client::Error::Timeout(_) | client::Error::WriteStalled(_)) => {
            (Rejection::GatewayTimeout, "timeout")
        }
        SendError::Connect(_) => (Rejection::BadGateway(BadGateway::Unreachable), "connect"),
        SendError::Request(client::Error::Closed | client::Error::Io(_)) => {
            (Rejection::BadGateway(BadGateway::NoAnswer), "protocol")
        }
        SendError::Request(_) => (Rejection::BadGateway(BadGateway::InvalidAnswer), "protocol"),
    };
    api.metrics
        .observe_upstream(started.elapsed().as_secs_f64());
    super::upstream_fault::failed(&api.metrics, cause, &error);
    rejection
}

/// No space and no control byte, which could end the target early (bytes
/// past ASCII, which a query may carry, pass as the client sent them).
fn is_request_target(target: &str) -> bool {
    target
        .bytes()
        .fold(true, |ok, b| ok & (b > b' ') & (b != 0x7f))
}

/// Set when a streamed body went over the limit, so the failure is a 413.
#[derive(Clone, Default)]
pub struct LimitFlag(pub Arc<AtomicBool>);

/// A request body that fails once more than `limit` bytes went through —
/// also for chunked bodies that declared no length.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    flag: LimitFlag,
}

#[derive(Debug, thiserror::Error)]
#[error("request body larger than the limit")]
pub struct BodyTooLarge;

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, flag: LimitFlag) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            flag,
        }
    }
}

impl<B> HttpBody for LimitedBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        self.flag.0.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the `echo` upstream shows instead of a credential.
const REDACTED: &str = "[redacted]";

/// The `echo` upstream: the request as an upstream would receive it, but
/// for the values of credentials. The caller reads the answer, and
/// `outbound_auth` puts the gateway's own credentials (an alias's password)
/// into the request: those values are marked sensitive, and the fields
/// that carry credentials are never shown, whoever set them.
async fn echo(req: Request<Body>) -> Result<Response<Body>, Rejection> {
    let (parts, body) = req.into_parts();
    let exceeded = parts.extensions.get::<LimitFlag>().cloned();
    // Counted as it comes, never held: over HTTP/1.1 nothing would bound
    // what many connections make the gateway hold. `LimitedBody` stops
    // the reading past `limits.max_body` (413).
    let body_bytes = match super::count_body(body).await {
        Ok(counted) => counted,
        Err(Rejection::ClientBody(_)) if exceeded.is_some_and(|f| f.0.load(Ordering::Relaxed)) => {
            return Err(Rejection::PayloadTooLarge)
        }
        Err(rejection) => return Err(rejection),
    };
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| match is_credential(name, v) {
                true => serde_json::Value::from(REDACTED),
                false => {
                    serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned())
                }
            })
            .collect();
        let value = if values.len() == 1 {
            values.into_iter().next().unwrap_or_default()
        } else {
            serde_json::Value::Array(values)
        };
        headers.insert(name.as_str().to_owned(), value);
    }
    let body = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(full(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// A field value the `echo` upstream does not show.
fn is_credential(name: &HeaderName, value: &HeaderValue) -> bool {
    value.is_sensitive() || [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE].contains(name)
}
