//! The data path: `serve` runs the phases of a request in order (match →
//! authenticate → authorize → transform → outbound auth → forward);
//! `reject` decides what a refused client is told; `forward` talks to the
//! upstream.

pub mod forward;
pub mod forwarded;
// Public for the fuzz targets and the codec's property tests only.
#[doc(hidden)]
pub mod http1;
pub mod outbound;
mod pool;
pub mod reject;
pub mod serve;
pub mod transform;

use bytes::{Bytes, BytesMut};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub use forward::Upstreams;
pub use reject::Rejection;
pub use serve::{serve, Connection, Runtime};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the gateway hands on.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body (a zero-sized one: boxing it allocates nothing).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A whole body, if it has at most `limit` bytes and arrives intact.
pub async fn collect_limited(mut body: Body, limit: usize) -> Option<Bytes> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if collected.len() + data.len() > limit {
                return None;
            }
            collected.extend_from_slice(&data);
        }
    }
    Some(collected.freeze())
}
