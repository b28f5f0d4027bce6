//! Request bodies as they go out to an HTTP/2 upstream: the first
//! attempt's, kept up to [`REPLAY_LIMIT`] bytes so that a refused request
//! can be sent again ([`Replay`]), and each attempt's telling the wait for
//! the answer whose turn it is ([`Watched`], [`Progress`]). hyper's HTTP/2
//! client polls a body on a task of its own and only logs its error: the
//! error stays here, for the client to be told.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use super::REPLAY_LIMIT;

/// What a frame kept in the copy costs besides its bytes (its place, and
/// the `Frame` it is): counted in the copy's [`REPLAY_LIMIT`].
const FRAME_COST: usize = 128;
use crate::proxy::{Body, BoxError};

/// A request body as sent, with a copy of its first [`REPLAY_LIMIT`]
/// bytes (the frames themselves: `Bytes` are shared, not copied).
pub(super) struct Replay {
    rest: Option<Body>,
    sent: VecDeque<Frame<Bytes>>,
    size: usize,
    /// More went out than was kept: the body cannot be sent again.
    overflow: bool,
}

impl Replay {
    pub(super) fn new(body: Body) -> Replay {
        Replay {
            rest: Some(body),
            sent: VecDeque::new(),
            size: 0,
            overflow: false,
        }
    }

    /// The upstream answered: the body is never sent again, so nothing
    /// more of it is kept, and what was kept is let go (a long streaming
    /// call would otherwise hold it, and the read buffers its frames
    /// share, for as long as it lasts).
    pub(super) fn answered(&mut self) {
        self.overflow = true;
        self.sent = VecDeque::new();
    }

    /// The whole body again: what was sent, then what was not.
    pub(super) fn again(&mut self) -> Option<Replayed> {
        if self.overflow {
            return None;
        }
        let sent = std::mem::take(&mut self.sent)
            .into_iter()
            .filter_map(|frame| match frame.into_data() {
                Ok(data) => Some(Frame::data(data)),
                Err(frame) => frame.into_trailers().ok().map(Frame::trailers),
            })
            .collect();
        Some(Replayed {
            sent,
            rest: self.rest.take(),
        })
    }
}

/// The body handed to the first attempt: reads the client's body and
/// keeps what it passed on.
pub(super) struct Recording(pub(super) Arc<Mutex<Replay>>);

impl HttpBody for Recording {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut replay = lock(&self.0);
        let Some(rest) = replay.rest.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            // A copy, not a slice: a slice keeps the whole buffer it was
            // read into (16 KiB for a byte), and the copy's bound would
            // bound nothing.
            let kept = frame
                .data_ref()
                .map(|data| Frame::data(Bytes::copy_from_slice(data)))
                .or_else(|| frame.trailers_ref().cloned().map(Frame::trailers));
            // A frame kept costs its place in the copy besides its bytes:
            // a body of one-byte frames fills the copy as one of frames
            // of `FRAME_COST` bytes would, not 64 Ki places.
            let len = frame.data_ref().map_or(0, Bytes::len);
            if !replay.overflow {
                replay.size += len + FRAME_COST;
                if replay.size > REPLAY_LIMIT {
                    replay.overflow = true;
                    // Its room given back too, not only emptied.
                    replay.sent = VecDeque::new();
                } else if let Some(kept) = kept {
                    replay.sent.push_back(kept);
                }
            }
        }
        if let Poll::Ready(None) = &polled {
            replay.rest = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        lock(&self.0)
            .rest
            .as_ref()
            .is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.0)
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// A body sent again: the frames of the first attempt, then the rest.
pub(super) struct Replayed {
    sent: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl HttpBody for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.sent.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sent.is_empty() && self.rest.as_ref().is_none_or(|b| b.is_end_stream())
    }
}

/// Whose turn it is while a request's answer is due.
#[derive(Clone, Copy)]
pub(super) enum Turn {
    /// The body waits for the client's next piece.
    Client,
    /// The upstream's, since then: to take what hyper was handed, or to
    /// answer once the body has ended.
    Upstream(Instant),
    /// The client's body failed.
    Failed,
}

/// How far a request body has gone out: written by the body as hyper
/// polls it (on hyper's task), read by the wait for the answer.
pub(super) struct Progress(Mutex<Watch>);

struct Watch {
    turn: Turn,
    /// The failed body's error, until taken.
    error: Option<BoxError>,
    /// The wait for the answer, woken when the client's turn ends.
    waiting: Option<Waker>,
}

impl Progress {
    fn new() -> Progress {
        Progress(Mutex::new(Watch {
            turn: Turn::Upstream(Instant::now()),
            error: None,
            waiting: None,
        }))
    }

    /// The upstream's turn from now, unless the body failed.
    pub(super) fn restart(&self) {
        let mut watch = lock(&self.0);
        if !matches!(watch.turn, Turn::Failed) {
            watch.turn = Turn::Upstream(Instant::now());
        }
    }

    /// Whose turn it is; `waker` is woken when the client's turn ends.
    pub(super) fn turn(&self, waker: &Waker) -> Turn {
        let mut watch = lock(&self.0);
        match &watch.waiting {
            Some(waiting) if waiting.will_wake(waker) => {}
            _ => watch.waiting = Some(waker.clone()),
        }
        watch.turn
    }

    /// The client's error, if its body failed.
    pub(super) fn failure(&self) -> Option<BoxError> {
        let turn = lock(&self.0).turn;
        match turn {
            Turn::Failed => Some(self.error()),
            Turn::Client | Turn::Upstream(_) => None,
        }
    }

    /// The failed body's error: the client's own the first time.
    pub(super) fn error(&self) -> BoxError {
        lock(&self.0)
            .error
            .take()
            .unwrap_or_else(|| Box::new(BodyFailed))
    }

    /// The answer came: nothing waits any more.
    pub(super) fn stop_watching(&self) {
        lock(&self.0).waiting = None;
    }

    /// Moves to `turn` (a failed body stays failed), waking the wait for
    /// the answer when the client's turn ended.
    fn set(&self, turn: Turn, error: Option<BoxError>) {
        let mut watch = lock(&self.0);
        let woken = match (watch.turn, turn) {
            (Turn::Failed, _) => return,
            (Turn::Client, Turn::Upstream(_)) | (_, Turn::Failed) => watch.waiting.take(),
            _ => None,
        };
        watch.turn = turn;
        watch.error = error;
        drop(watch);
        if let Some(waker) = woken {
            waker.wake();
        }
    }
}

/// What hyper is told of a failed request body (it only logs it); the
/// client's own error stays in [`Progress`].
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
struct BodyFailed;

/// A request body as hyper sends it, telling [`Progress`] whose turn it
/// is: the client's while a piece is awaited, the upstream's from each
/// piece handed on (and from the end), and the client's error if it
/// failed.
pub(super) struct Watched<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B> Watched<B> {
    pub(super) fn new(inner: B) -> (Watched<B>, Arc<Progress>) {
        let progress = Arc::new(Progress::new());
        let watched = Watched {
            inner,
            progress: progress.clone(),
        };
        (watched, progress)
    }
}

/// A body hyper let go of while it waited for the client is polled no
/// more, so the server's bound on the client's silence no longer runs:
/// what is left to wait for is the upstream's.
impl<B> Drop for Watched<B> {
    fn drop(&mut self) {
        let turn = lock(&self.progress.0).turn;
        if let Turn::Client = turn {
            self.progress.set(Turn::Upstream(Instant::now()), None);
        }
    }
}

impl<B> HttpBody for Watched<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                this.progress.set(Turn::Client, None);
                Poll::Pending
            }
            Poll::Ready(Some(Err(error))) => {
                this.progress.set(Turn::Failed, Some(error));
                Poll::Ready(Some(Err(Box::new(BodyFailed))))
            }
            Poll::Ready(frame) => {
                let now = Instant::now();
                this.progress.set(Turn::Upstream(now), None);
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body(chunks: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        StreamBody::new(tokio_stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn a_refused_body_is_replayed_whole_from_where_it_was_cut() {
        let replay = Arc::new(Mutex::new(Replay::new(body(&[b"ab", b"cd", b"ef"]))));
        let mut first = Recording(replay.clone());
        // The first attempt took two frames before it was refused.
        for _ in 0..2 {
            first.frame().await.unwrap().unwrap();
        }
        let again = lock(&replay).again().unwrap();
        let bytes = again.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abcdef");
    }

    #[tokio::test]
    async fn a_body_longer_than_the_copy_is_not_replayed() {
        static BIG: [u8; REPLAY_LIMIT] = [b'x'; REPLAY_LIMIT];
        let replay = Arc::new(Mutex::new(Replay::new(body(&[&BIG, b"y"]))));
        let mut first = Recording(replay.clone());
        while first.frame().await.is_some() {}
        assert!(lock(&replay).again().is_none());
    }

    /// A body of one-byte frames fills the copy by its frames, not only
    /// its bytes: a few hundred are kept, not 64 Ki of them (~6 MiB of
    /// places for 64 KiB of bytes), and the room of the copy goes with it.
    #[tokio::test]
    async fn a_body_of_tiny_frames_fills_the_copy_by_its_frames() {
        static TINY: [&[u8]; 2048] = [b"x"; 2048];
        let replay = Arc::new(Mutex::new(Replay::new(body(&TINY))));
        let mut first = Recording(replay.clone());
        let mut kept = 0;
        while first.frame().await.is_some() {
            kept = kept.max(lock(&replay).sent.len());
        }
        assert!(
            kept <= REPLAY_LIMIT / (1 + FRAME_COST),
            "{kept} frames kept"
        );
        assert!(lock(&replay).overflow);
        assert_eq!(lock(&replay).sent.capacity(), 0);
        assert!(lock(&replay).again().is_none());
    }

    /// What the copy keeps is its own: not slices holding on to the
    /// buffers the client's frames were read into.
    #[tokio::test]
    async fn the_copy_holds_no_buffer_of_the_clients() {
        let read = Bytes::from(vec![b'x'; 16 * 1024]);
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..8)
            .map(|i| Ok(Frame::data(read.slice(i..i + 1))))
            .collect();
        let client = StreamBody::new(tokio_stream::iter(frames)).boxed();
        let replay = Arc::new(Mutex::new(Replay::new(client)));
        let mut first = Recording(replay.clone());
        while first.frame().await.is_some() {}
        let within = read.as_ptr_range();
        let kept = lock(&replay);
        assert_eq!(kept.sent.len(), 8);
        for frame in &kept.sent {
            let data = frame.data_ref().expect("data");
            assert!(
                !within.contains(&data.as_ptr()),
                "a slice of the client's buffer"
            );
        }
    }

    /// Once the upstream has answered, nothing of the body is kept: what
    /// was goes, and what goes out after is not kept either.
    #[tokio::test]
    async fn an_answered_body_keeps_no_copy() {
        let replay = Arc::new(Mutex::new(Replay::new(body(&[b"ab", b"cd", b"ef"]))));
        let mut first = Recording(replay.clone());
        first.frame().await.unwrap().unwrap();
        assert_eq!(lock(&replay).sent.len(), 1);
        lock(&replay).answered();
        assert!(lock(&replay).sent.is_empty());
        while first.frame().await.is_some() {}
        assert!(lock(&replay).sent.is_empty());
        assert!(lock(&replay).again().is_none());
    }

    /// Polls `body` once.
    fn poll(body: &mut Watched<Body>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_body_tells_whose_turn_it_is_and_keeps_the_clients_error() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let client = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        let (mut body, progress) = Watched::new(client);
        let turn = || progress.turn(Waker::noop());
        // Handed to hyper, not yet polled: the upstream's.
        assert!(matches!(turn(), Turn::Upstream(_)));
        assert!(poll(&mut body).is_pending());
        assert!(matches!(turn(), Turn::Client));
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(turn(), Turn::Upstream(_)));
        tx.send(Err(Box::new(crate::proxy::BodyFault::Stalled)))
            .await
            .unwrap();
        assert!(matches!(poll(&mut body), Poll::Ready(Some(Err(_)))));
        assert!(matches!(turn(), Turn::Failed));
        let error = progress.failure().expect("the body failed");
        assert_eq!(
            crate::proxy::BodyFault::of(&error),
            crate::proxy::BodyFault::Stalled
        );
        // Failed it stays, whatever hyper does with the body next.
        progress.restart();
        assert!(matches!(turn(), Turn::Failed));
    }

    #[tokio::test]
    async fn a_body_let_go_of_while_the_client_was_due_is_the_upstreams_turn() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let client = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        let (mut body, progress) = Watched::new(client);
        assert!(poll(&mut body).is_pending());
        assert!(matches!(progress.turn(Waker::noop()), Turn::Client));
        drop(body);
        assert!(matches!(progress.turn(Waker::noop()), Turn::Upstream(_)));
    }
}
