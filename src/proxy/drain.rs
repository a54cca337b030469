//! Small request bodies left unread when the gateway answers: read and dropped before the
//! answer goes out, within a byte and time bound, so the client's upload ends cleanly.
//!
//! Why: when the gateway refuses a request (401, 403, 429, 413...) without reading its body,
//! hyper ends the HTTP/2 stream with `RST_STREAM` while the client is still uploading, and
//! curl reports `(92) Stream error in the HTTP/2 framing layer` instead of the answer; over
//! HTTP/1.1 the connection closes with unread bytes, which can reset it under the answer.
//! Reading a small body first lets the stream (or the connection) close normally. A body
//! larger than [`DRAIN_LIMIT`], or slower than [`DRAIN_TIME`], is abandoned as before.
//!
//! Request trailers are dropped here too: they would reach Palette unchecked by the header
//! hygiene (a client could send a credential or `ProjectUid` as a trailer).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

use crate::body::{Body, BoxError};

/// At most this many bytes of an unread body are read before answering.
pub const DRAIN_LIMIT: u64 = 64 * 1024;
/// At most this long is spent reading an unread body before answering.
pub const DRAIN_TIME: Duration = Duration::from_millis(500);

type Slot = Arc<Mutex<Option<Body>>>;

/// Where a request body that was dropped before its end comes back to be drained (`None`:
/// the body had ended before it was tracked, so nothing can come back).
pub struct Unread(Option<Slot>);

/// Wraps a request body: if it is dropped before its end, what is left of it goes back to the
/// returned [`Unread`].
pub fn track(body: Body) -> (Body, Unread) {
    // Most requests have no body: nothing to give back, and no slot or wrapper to allocate.
    if body.is_end_stream() {
        return (body, Unread(None));
    }
    let slot: Slot = Arc::default();
    let body = Returning { inner: Some(body), slot: slot.clone() }.boxed_unsync();
    (body, Unread(Some(slot)))
}

impl Unread {
    /// Reads and drops what is left of the body, if it was dropped unread and is small enough
    /// to end within [`DRAIN_LIMIT`] and [`DRAIN_TIME`].
    pub async fn drain(self) {
        let Some(slot) = self.0 else { return };
        let body = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(mut body) = body else { return };
        if body.size_hint().lower() > DRAIN_LIMIT {
            return;
        }
        let read = async {
            let mut seen = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > DRAIN_LIMIT {
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, read).await;
    }
}

/// A request body that gives what is left of itself back to its slot when dropped early.
struct Returning {
    /// `None` once it ended (or failed): nothing to give back.
    inner: Option<Body>,
    slot: Slot,
}

impl http_body::Body for Returning {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let polled = Pin::new(inner).poll_frame(cx);
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    tracing::debug!("request trailers dropped");
                    continue;
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.inner = None,
                _ => {}
            }
            return polled;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().map_or(true, |b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            if !inner.is_end_stream() {
                *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;

    /// A body whose bytes come from a channel, counting what was read.
    fn channel_body() -> (tokio::sync::mpsc::UnboundedSender<Bytes>, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
        });
        (tx, http_body_util::StreamBody::new(stream).boxed_unsync())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_dropped_unread_is_drained() {
        let (tx, inner) = channel_body();
        let (body, unread) = track(inner);
        drop(body);
        assert!(unread.0.as_ref().unwrap().lock().unwrap().is_some(), "the unread body came back");
        tx.send(Bytes::from_static(b"abc")).unwrap();
        drop(tx);
        let started = tokio::time::Instant::now();
        unread.drain().await;
        // Read to its end at once, not abandoned at the deadline.
        assert!(started.elapsed() < DRAIN_TIME);
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_nothing() {
        let (body, unread) = track(body::full("abc"));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abc");
        assert!(unread.0.as_ref().unwrap().lock().unwrap().is_none());
    }

    /// A body that has already ended (no body at all, most requests) is passed on as it is:
    /// nothing to wrap, nothing to give back.
    #[tokio::test]
    async fn an_ended_body_is_not_tracked() {
        let (body, unread) = track(body::empty());
        assert!(unread.0.is_none());
        assert!(body.is_end_stream());
        drop(body);
        unread.drain().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_is_abandoned_at_the_deadline() {
        let (tx, inner) = channel_body();
        let (body, unread) = track(inner);
        drop(body);
        let started = tokio::time::Instant::now();
        unread.drain().await;
        assert_eq!(started.elapsed(), DRAIN_TIME);
        drop(tx);
    }

    #[tokio::test]
    async fn trailers_are_dropped() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("apikey", http::HeaderValue::from_static("x"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"a"))), Ok(Frame::trailers(trailers))];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let (body, _unread) = track(inner);
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(&collected.to_bytes()[..], b"a");
    }
}
