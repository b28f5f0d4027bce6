//! The data path: `serve` runs the phases of a request in order (match →
//! CORS preflight → authenticate → authorize → throttle → transform →
//! outbound auth → forward → response transformation); `reject` decides
//! what a refused client is told, `cors` what a browser is allowed;
//! `forward` talks to the upstream (`batch` sends the requests a thread
//! has ready back to back), over the HTTP/1.1 `client` and its
//! `pool`, or over HTTP/2 (`h2_upstream`, bounded by a gRPC client's
//! deadline too: `grpc_timeout`); `tunnel` carries WebSocket connections
//! once both sides have switched.

pub mod balance;
mod batch;
pub(crate) mod client;
pub mod correlate;
pub mod cors;
pub mod forward;
pub mod forwarded;
mod forwarded_list;
pub mod grpc_timeout;
pub mod h2_upstream;
pub mod identify;
pub mod outbound;
mod pool;
pub mod reject;
pub mod room;
pub mod serve;
pub mod transform;
pub mod tunnel;
mod upstream_fault;

use std::future::Future;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};

use self::room::{Room, Taken};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub use forward::Upstreams;
pub use reject::{BadGateway, BodyFault, Rejection};
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

/// `body`, holding `held` until it is dropped (its answer ended, or
/// the client left).
pub fn holding<T: Send + Sync + Unpin + 'static>(body: Body, held: T) -> Body {
    Holding { body, _held: held }.boxed()
}

struct Holding<T> {
    body: Body,
    _held: T,
}

impl<T: Send + Sync + Unpin + 'static> http_body::Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        // `Body` is `Unpin` (boxed), and so is what it holds.
        let this = self.get_mut();
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// An empty body (a zero-sized one: boxing it allocates nothing).
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// What a body held whole may hold before it takes from the room every
/// connection shares: a token request (a few hundred bytes) never does,
/// so clients that fill the room with large bodies keep no one from
/// getting a token; what that lets every connection hold besides is
/// bounded by `limits.max_connections`.
const OWN_BYTES: usize = 8 << 10;

/// A whole body of a client's request: 413 past `limit` bytes, 400 or
/// 408 when the client broke it or went silent (the server's body
/// readers bound each wait), 503 when the bodies its connection holds
/// whole fill their room (HTTP/2, [`BodyRoom`]) or those of every
/// connection fill `shared` (with what each holds beyond [`OWN_BYTES`]).
/// What it holds of the rooms is given back when the [`Taken`] bytes are
/// dropped.
pub async fn collect_limited(
    mut body: Body,
    limit: usize,
    room: Option<BodyRoom>,
    shared: &Room,
) -> Result<(Bytes, [Taken; 2]), Rejection> {
    let mut collected = BytesMut::new();
    let mut held = [
        Taken::from(room.map(|BodyRoom(room)| room)),
        Taken::from(Some(shared.clone())),
    ];
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| Rejection::ClientBody(BodyFault::of(&error)))?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return Err(Rejection::PayloadTooLarge);
            }
            let [connection, all] = &mut held;
            if !connection.try_take(data.len()) {
                return Err(Rejection::BodyRoomFull);
            }
            let beyond_own = |len: usize| len.saturating_sub(OWN_BYTES);
            let shared_part =
                beyond_own(collected.len() + data.len()) - beyond_own(collected.len());
            if !all.try_take(shared_part) {
                return Err(Rejection::BodyRoomFull);
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok((collected.freeze(), held))
}

/// The length of a client's request body, read and dropped as it comes:
/// nothing of it is held. 400 or 408 when the client broke it or went
/// silent (the server's body readers bound each wait); the caller's
/// limit (`LimitedBody`) bounds how much is read.
async fn count_body(mut body: Body) -> Result<u64, Rejection> {
    let mut counted = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| Rejection::ClientBody(BodyFault::of(&error)))?;
        if let Some(data) = frame.data_ref() {
            counted = counted.saturating_add(data.len() as u64);
        }
    }
    Ok(counted)
}

/// On an HTTP/2 request that found its port's `limits.max_streams` taken
/// (its connection has others in flight): refused with 503 once its API
/// is known, never forwarded.
#[derive(Clone, Copy, Debug)]
pub struct StreamsFull;

/// `req` came past its port's `limits.max_streams` (only an HTTP/2
/// request can: `server::Conn::http2` marks it).
pub fn past_max_streams<B>(req: &http::Request<B>) -> bool {
    req.version() == http::Version::HTTP_2 && req.extensions().get::<StreamsFull>().is_some()
}

/// The room the request bodies of one HTTP/2 connection share while they
/// are held whole (the authorization server's endpoints), an extension of
/// each of its requests: what one HTTP/1.1 connection could make the
/// gateway hold, not that much for each of its streams. A body passed on
/// to an upstream is held by the connection's flow-control window
/// instead; the `echo` upstream's is counted and dropped as it comes.
#[derive(Clone, Debug)]
pub struct BodyRoom(pub Room);

/// `Box::pin(make())`, the box allocated before the future is made: the
/// future is then written where it stays instead of being made on the
/// stack and copied (a few KiB, request after request, for the futures
/// the request path boxes).
#[inline(always)]
pub fn pin_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::<F>::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: usize) -> Body {
        full(Bytes::from(vec![b'a'; bytes]))
    }

    const LIMIT: usize = 64 << 10;

    #[tokio::test]
    async fn bodies_held_whole_share_the_room_of_every_connection_beyond_their_own() {
        let shared = Room::new(100);
        let (first, held) = collect_limited(body(OWN_BYTES + 60), LIMIT, None, &shared)
            .await
            .expect("fits");
        assert_eq!(first.len(), OWN_BYTES + 60);
        let refused = collect_limited(body(OWN_BYTES + 60), LIMIT, None, &shared).await;
        assert!(matches!(refused, Err(Rejection::BodyRoomFull)), "40 left");
        // A body no larger than its own bytes takes nothing of the room.
        for _ in 0..3 {
            collect_limited(body(OWN_BYTES), LIMIT, None, &shared)
                .await
                .expect("a small body whatever the room holds");
        }
        drop(held);
        collect_limited(body(OWN_BYTES + 60), LIMIT, None, &shared)
            .await
            .expect("given back once answered");
    }

    #[tokio::test]
    async fn a_connections_room_and_the_limit_still_hold() {
        let shared = Room::new(1 << 20);
        let connection = BodyRoom(Room::new(50));
        let refused = collect_limited(body(60), LIMIT, Some(connection), &shared).await;
        assert!(matches!(refused, Err(Rejection::BodyRoomFull)));
        let refused = collect_limited(body(60), 59, None, &shared).await;
        assert!(matches!(refused, Err(Rejection::PayloadTooLarge)));
        let (_, held) = collect_limited(body(LIMIT), LIMIT, None, &shared)
            .await
            .expect("what was refused gave its part back");
        drop(held);
    }
}
