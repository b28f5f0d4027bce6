//! Listeners: accepts connections on a bound socket (at most
//! `limits.max_connections` at a time), serves HTTP/1.1 and HTTP/2 (h2c by
//! prior knowledge) with the configured header limits and timeouts, and
//! drains in-flight requests on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::config::snapshot::{Limits, Timeouts};
use crate::proxy::Body;

/// Connection settings taken from the snapshot at start.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub limits: Limits,
    pub timeouts: Timeouts,
}

fn builder(settings: ConnSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.timeouts.header_read)
        .max_headers(settings.limits.max_headers)
        .max_buf_size(settings.limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(settings.limits.max_header_bytes as u32)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(256)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    builder
}

/// Serves `listener` until `stop` turns true, then drains connections for at
/// most `timeouts.drain`.
pub async fn serve<H, F>(
    listener: TcpListener,
    settings: ConnSettings,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let builder = Arc::new(builder(settings));
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(settings.limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let idle = settings.timeouts.idle;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(error) = conn.await {
                tracing::debug!(error = %error, idle_timeout = ?idle, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.timeouts.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}
