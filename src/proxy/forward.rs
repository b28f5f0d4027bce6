//! Forwarding to the upstream over a keep-alive pool (or answering from the
//! `echo` upstream), with the request body streamed through a size limit and
//! the per-API timeout on the response head. Forwarding takes the
//! [`Grant`](crate::policy::Grant): nothing reaches an upstream unauthorized.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;

use super::reject::Rejection;
use super::{full, Body, BoxError};
use crate::config::snapshot::{Api, CaBundle, Upstream};
use crate::policy::Grant;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Pool = Client<Connector, Body>;
/// Pools by CA-bundle path, with the bundle they trust.
type BundlePools = HashMap<PathBuf, (Arc<[u8]>, Pool)>;

/// The shared upstream connection pools: one verifying `https` upstreams
/// against the system roots, and one per CA bundle an API names (built on
/// first use, rebuilt when a reload brings a different bundle).
#[derive(Clone)]
pub struct Upstreams {
    client: Pool,
    connect_timeout: Duration,
    by_bundle: Arc<Mutex<BundlePools>>,
}

thread_local! {
    /// A listener thread's own default pool: a request and the upstream
    /// connection it goes out on are driven by the same thread, so a
    /// forward costs no wake-up across threads.
    static THREAD_POOL: std::cell::RefCell<Option<Pool>> = const { std::cell::RefCell::new(None) };
}

impl Upstreams {
    /// Gives the calling thread a default pool of its own.
    pub fn pin_pool_to_this_thread(&self) {
        let own = Upstreams::new(self.connect_timeout).client;
        THREAD_POOL.with(|pool| *pool.borrow_mut() = Some(own));
    }

    fn default_pool(&self) -> Pool {
        THREAD_POOL
            .with(|pool| pool.borrow().clone())
            .unwrap_or_else(|| self.client.clone())
    }

    pub fn new(connect_timeout: Duration) -> Upstreams {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        // Without system roots, https upstreams fail closed (no trusted CA).
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider.clone())
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "no system CA roots; https upstreams need a ca_bundle");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(client_config(provider, rustls::RootCertStore::empty()))
            });
        let client = pool(connect_timeout, tls);
        Upstreams {
            client,
            connect_timeout,
            by_bundle: Arc::default(),
        }
    }

    /// The pool that verifies upstreams against `bundle`.
    fn pool_for(&self, bundle: &CaBundle) -> Result<Pool, Rejection> {
        let mut pools = match self.by_bundle.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((pem, pool)) = pools.get(&bundle.path) {
            if Arc::ptr_eq(pem, &bundle.pem) || pem[..] == bundle.pem[..] {
                return Ok(pool.clone());
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&bundle.pem).filter_map(Result::ok) {
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(Rejection::BadGateway("no usable CA in the bundle".into()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = client_config(provider, roots);
        let pool = pool(
            self.connect_timeout,
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
        );
        pools.insert(bundle.path.clone(), (bundle.pem.clone(), pool.clone()));
        Ok(pool)
    }

    /// Sends the request (its URI already the upstream's) and returns the
    /// upstream's response, streaming.
    pub async fn forward(
        &self,
        _grant: Grant,
        api: &Api,
        mut req: Request<Body>,
        rest: &str,
    ) -> Result<Response<Body>, Rejection> {
        let (scheme, authority, host, prefix, timeout, ca_bundle) = match &api.upstream {
            Upstream::Echo => {
                let path = if rest.is_empty() { "/" } else { rest };
                let target = match req.uri().query() {
                    Some(query) => format!("{path}?{query}"),
                    None => path.to_owned(),
                };
                *req.uri_mut() = Uri::try_from(target).map_err(|_| {
                    Rejection::BadRequest("the request cannot be mapped to the upstream")
                })?;
                return echo(req).await;
            }
            Upstream::Url {
                scheme,
                authority,
                host,
                path,
                timeout,
                ca_bundle,
            } => (scheme, authority, host, path, *timeout, ca_bundle),
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
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| Rejection::BadRequest("the request cannot be mapped to the upstream"))?;
        *req.uri_mut() = uri;
        // The pool speaks HTTP/1.1 to upstreams, whatever the client spoke.
        *req.version_mut() = Version::HTTP_11;
        req.headers_mut().insert(http::header::HOST, host.clone());
        let exceeded = req.extensions().get::<LimitFlag>().cloned();
        let started = Instant::now();
        let sent = match ca_bundle {
            None => self.default_pool().request(req),
            Some(bundle) => self.pool_for(bundle)?.request(req),
        };
        let result = tokio::time::timeout(timeout, sent).await;
        api.metrics
            .upstream_duration()
            .observe(started.elapsed().as_secs_f64());
        match result {
            Err(_) => Err(Rejection::GatewayTimeout),
            Ok(Err(error)) => {
                if exceeded.is_some_and(|f| f.0.load(Ordering::Relaxed)) {
                    return Err(Rejection::PayloadTooLarge);
                }
                Err(Rejection::BadGateway(if error.is_connect() {
                    "connect".into()
                } else {
                    "request".into()
                }))
            }
            Ok(Ok(mut response)) => {
                // RFC 9110 §7.6.1: the upstream's hop-by-hop headers end here.
                super::forwarded::strip_hop_by_hop(response.headers_mut());
                Ok(response.map(|b| b.map_err(|e| Box::new(e) as BoxError).boxed()))
            }
        }
    }
}

fn client_config(provider: Arc<CryptoProvider>, roots: rustls::RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn pool(
    connect_timeout: Duration,
    tls: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
) -> Pool {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = tls.https_or_http().enable_http1().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
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
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
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

/// The `echo` upstream: the request as an upstream would receive it.
async fn echo(req: Request<Body>) -> Result<Response<Body>, Rejection> {
    let (parts, body) = req.into_parts();
    let exceeded = parts.extensions.get::<LimitFlag>().cloned();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) if exceeded.is_some_and(|f| f.0.load(Ordering::Relaxed)) => {
            return Err(Rejection::PayloadTooLarge)
        }
        Err(_) => return Err(Rejection::BadRequest("the request body could not be read")),
    };
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
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
        "body_bytes": bytes.len(),
    });
    let mut response = Response::new(full(body.to_string()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
