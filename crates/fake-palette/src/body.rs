//! Bodies of the fake Palette: recording request bodies, and the streamed answers of the
//! `bytes` and `echo-body` hooks.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};

use super::{RecordedRequest, State, RECORDED_BODY_LIMIT};

/// Size of one chunk of the `bytes` hook (64 KiB, a multiple of the pattern's 256).
const PATTERN_CHUNK: usize = 64 * 1024;

/// The `bytes` hook's chunk: byte `i` is `i % 256`.
pub(super) fn pattern_chunk() -> Bytes {
    (0..PATTERN_CHUNK).map(|i| (i % 256) as u8).collect()
}

/// Collects one request's record and adds it to the log exactly once: on
/// [`Recorder::record`], or when dropped (an `echo-body` whose client went away).
pub(super) struct Recorder {
    state: Arc<State>,
    pending: Option<RecordedRequest>,
    body: BytesMut,
}

impl Recorder {
    pub(super) fn new(state: &Arc<State>, parts: &Parts) -> Self {
        let path_and_query = parts.uri.path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_default();
        Self {
            state: Arc::clone(state),
            pending: Some(RecordedRequest {
                method: parts.method.clone(),
                path_and_query,
                version: parts.version,
                headers: parts.headers.clone(),
                body: Bytes::new(),
            }),
            body: BytesMut::new(),
        }
    }

    /// Keeps the part of `data` that still fits under [`RECORDED_BODY_LIMIT`].
    fn capture(&mut self, data: &[u8]) {
        let room = RECORDED_BODY_LIMIT.saturating_sub(self.body.len());
        self.body.extend_from_slice(&data[..room.min(data.len())]);
    }

    /// Reads `body` to its end, keeping its first [`RECORDED_BODY_LIMIT`] bytes.
    pub(super) async fn drain(&mut self, body: &mut Incoming) -> Result<(), hyper::Error> {
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                self.capture(data);
            }
        }
        Ok(())
    }

    /// Adds the record to the log (once) and returns the captured body.
    pub(super) fn record(&mut self) -> Bytes {
        let body = std::mem::take(&mut self.body).freeze();
        if let Some(mut rec) = self.pending.take() {
            rec.body = body.clone();
            self.state.requests().push(rec);
        }
        body
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.record();
    }
}

/// `n` pattern bytes, served by slicing one shared chunk: memory stays flat for any `n`.
pub(super) struct PatternBody {
    remaining: u64,
    chunk: Bytes,
}

impl PatternBody {
    pub(super) fn new(len: u64, chunk: Bytes) -> Self {
        Self { remaining: len, chunk }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = usize::try_from(this.remaining).unwrap_or(usize::MAX).min(this.chunk.len());
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The request body streamed back as the answer; records the request when the request body
/// ends, before the last frame is handed on.
pub(super) struct EchoBody {
    inner: Incoming,
    recorder: Option<Recorder>,
}

impl EchoBody {
    pub(super) fn new(inner: Incoming, recorder: Recorder) -> Self {
        Self { inner, recorder: Some(recorder) }
    }

    fn finish(&mut self) {
        if let Some(mut recorder) = self.recorder.take() {
            recorder.record();
        }
    }
}

impl Body for EchoBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(rec)) = (frame.data_ref(), this.recorder.as_mut()) {
                    rec.capture(data);
                }
                // A body with a known length may be over without a final `None`: hyper
                // then stops polling, so record now.
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
