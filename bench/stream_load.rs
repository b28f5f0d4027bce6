//! Upstreams and a load client for `bench/streaming.sh`: a WebSocket echo
//! server and its round-trip load, and a gRPC-style echo server over h2c
//! (the client is `h2load`).
//!
//! ```text
//! stream-load ws-server ADDR
//! stream-load ws-load URL TUNNELS SECONDS     # prints: round_trips/s p50_ms p99_ms failed
//! stream-load grpc-server ADDR
//! stream-load grpc-message FILE BYTES         # one length-prefixed gRPC message
//! ```

#![allow(
    clippy::print_stdout,
    reason = "the figures are the tool's output, read by bench/streaming.sh"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["ws-server", addr] => runtime.block_on(ws_server(addr.parse()?)),
        ["ws-load", url, tunnels, seconds] => runtime.block_on(ws_load(
            url,
            tunnels.parse()?,
            Duration::from_secs(seconds.parse()?),
        )),
        ["grpc-server", addr] => runtime.block_on(grpc_server(addr.parse()?)),
        ["grpc-message", file, bytes] => {
            let payload = vec![b'x'; bytes.parse()?];
            let mut message = vec![0u8];
            message.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
            message.extend_from_slice(&payload);
            Ok(std::fs::write(file, message)?)
        }
        _ => Err("usage: stream-load ws-server ADDR | ws-load URL TUNNELS SECONDS | grpc-server ADDR | grpc-message FILE BYTES".into()),
    }
}

/// Echoes every data message of every WebSocket connection.
async fn ws_server(addr: SocketAddr) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// `tunnels` connections, each sending a 32-byte message and waiting for
/// its echo, again and again for `length`.
async fn ws_load(url: &str, tunnels: usize, length: Duration) -> Result<(), BoxError> {
    let mut connections = Vec::with_capacity(tunnels);
    for _ in 0..tunnels {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        connections.push(ws);
    }
    let start = Instant::now();
    let deadline = Arc::new(start + length);
    let mut tasks = Vec::with_capacity(tunnels);
    for mut ws in connections {
        let deadline = deadline.clone();
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < *deadline {
                let sent = Instant::now();
                if ws.send(Message::Binary(payload.clone())).await.is_err() {
                    failed += 1;
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Binary(echo))) if echo == payload => {
                        latencies.push(sent.elapsed());
                    }
                    _ => {
                        failed += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (mine, lost) = task.await?;
        latencies.extend(mine);
        failed += lost;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:.0} {:.3} {:.3} {failed}",
        latencies.len() as f64 / elapsed,
        at(0.5),
        at(0.99)
    );
    Ok(())
}

/// Answers every HTTP/2 request (prior knowledge) with its own body and
/// `grpc-status: 0` in the trailers: a unary echo as gRPC frames it.
async fn grpc_server(addr: SocketAddr) -> Result<(), BoxError> {
    let listener = TcpListener::bind(addr).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = hyper::service::service_fn(echo);
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(256)
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn echo(
    req: Request<Incoming>,
) -> Result<
    Response<
        StreamBody<
            futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
        >,
    >,
    BoxError,
> {
    let message = req.into_body().collect().await?.to_bytes();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
    Ok(Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(futures_util::stream::iter(frames)))?)
}
