//! The one body type the gateway answers with: upstream bodies stream through it unbuffered,
//! and the gateway's own small answers are full bodies of the same type.

use bytes::Bytes;
use http_body::Body as _;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use std::future::Future as _;

/// Errors a body may yield while streaming.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A streaming body, boxed once so every layer shares one type.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body with `Bytes` chunks.
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// Why [`collect_limited`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The body is larger than allowed.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The body failed while streaming.
    #[error("{0}")]
    Stream(String),
}

/// Reads a whole body of at most `limit` bytes. (A hand loop rather than `Limited`: `Limited`'s
/// `Into<BoxError>` bound on an already-boxed error trips a rustc higher-ranked lifetime bug
/// when the future must be `Send`.)
pub async fn collect_limited<B>(mut body: B, limit: usize) -> Result<Bytes, CollectError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CollectError::Stream(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(CollectError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// Called once when a [`Tracked`] body ends: with the bytes that went through and whether the
/// body was read to its end (`false`: dropped early, e.g. the client went away).
pub type OnEnd = Box<dyn FnOnce(u64, bool) + Send>;

/// A body that counts its bytes and reports when it is done (read to the end or dropped).
/// `on_end` is any closure: one known where the body is made is kept inline, without a box
/// (issue 14: one allocation per answer).
pub struct Tracked<F: FnOnce(u64, bool) = OnEnd> {
    inner: Body,
    bytes: u64,
    on_end: Option<F>,
}

impl<F: FnOnce(u64, bool) + Send + Unpin + 'static> Tracked<F> {
    /// Wraps `inner`; `on_end` runs exactly once.
    pub fn new(inner: Body, on_end: F) -> Self {
        Tracked { inner, bytes: 0, on_end: Some(on_end) }
    }

    /// As the gateway's body type (no second error conversion: see [`collect_limited`]).
    pub fn into_body(self) -> Body {
        self.boxed_unsync()
    }
}

impl<F: FnOnce(u64, bool)> Tracked<F> {
    fn finish(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(self.bytes, complete);
        }
    }
}

impl<F: FnOnce(u64, bool) + Unpin> http_body::Body for Tracked<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => self.finish(true),
            std::task::Poll::Ready(Some(Err(_))) => self.finish(false),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64, bool)> Drop for Tracked<F> {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

/// What went through a request body: bytes, and whether it was cut off at the limit or
/// stalled past `request_body_timeout`.
#[derive(Debug, Default)]
pub struct BodyStats {
    bytes: std::sync::atomic::AtomicU64,
    tripped: std::sync::atomic::AtomicBool,
    timed_out: std::sync::atomic::AtomicBool,
}

impl BodyStats {
    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the body went past its limit.
    pub fn tripped(&self) -> bool {
        self.tripped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the client stopped sending its body for longer than allowed.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records that the body timed out (see [`IdleTimeout::request`]).
    pub fn set_timed_out(&self) {
        self.timed_out.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A request body cut off at `limit` bytes: past it the stream fails and the stats say so, so
/// the gateway can answer 413 instead of a generic upstream error.
pub struct Capped {
    inner: Body,
    left: u64,
    stats: std::sync::Arc<BodyStats>,
}

impl Capped {
    /// Wraps `inner`, counting into `stats`.
    pub fn new(inner: Body, limit: u64, stats: std::sync::Arc<BodyStats>) -> Self {
        Capped { inner, left: limit, stats }
    }
}

/// The request body exceeded `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than the gateway allows")]
pub struct BodyTooLarge;

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(d) = frame.data_ref() {
                let n = d.len() as u64;
                if n > self.left {
                    self.stats.tripped.store(true, std::sync::atomic::Ordering::Relaxed);
                    return std::task::Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                }
                self.left -= n;
                self.stats.bytes.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn tracked_reports_bytes_once_at_the_end() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let body = Tracked::new(full("hello"), Box::new(move |n, done| s.lock().unwrap().push((n, done))));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(*seen.lock().unwrap(), vec![(5, true)]);
    }

    #[test]
    fn tracked_reports_when_dropped_early() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        drop(Tracked::new(full("hello"), Box::new(move |n, done| s.lock().unwrap().push((n, done)))));
        assert_eq!(*seen.lock().unwrap(), vec![(0, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fails_a_stalled_body() {
        let (mut tx, rx) = futures_channel_body();
        let body = IdleTimeout::new(rx, std::time::Duration::from_secs(1));
        tx.push(Bytes::from_static(b"abc"));
        let mut body = body;
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"abc"));
        // Nothing more arrives: after the idle time the body fails instead of hanging.
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("stalled"));
        drop(tx);
    }

    /// Palette's trailers never reach the client: the one wrapper around hyper's upstream body
    /// drops them (a trailer would be a header past the response hygiene), data and the end
    /// pass as they came, and the idle clock still runs between frames.
    #[tokio::test(start_paused = true)]
    async fn upstream_trailers_are_dropped() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-echo", http::HeaderValue::from_static("SECRET"));
        let frames: Vec<Result<http_body::Frame<Bytes>, BoxError>> = vec![
            Ok(http_body::Frame::trailers(trailers.clone())),
            Ok(http_body::Frame::data(Bytes::from_static(b"ok"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let collected = IdleTimeout::new(inner, std::time::Duration::from_secs(1)).collect().await.unwrap();
        assert!(collected.trailers().is_none());
        assert_eq!(&collected.to_bytes()[..], b"ok");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_request_body_is_recorded_as_timed_out() {
        let (mut tx, rx) = futures_channel_body();
        let stats = Arc::new(BodyStats::default());
        let mut body = IdleTimeout::request(rx, std::time::Duration::from_secs(30), stats.clone());
        tx.push(Bytes::from_static(b"12345"));
        assert!(body.frame().await.unwrap().is_ok());
        assert!(!stats.timed_out());
        let started = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(30));
        assert!(err.to_string().starts_with("request body stalled"), "{err}");
        assert!(stats.timed_out());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn send_timeout_fails_writes_the_peer_does_not_take() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut io = SendTimeout::new(ours, std::time::Duration::from_secs(5));
        // A reading peer: writes go through however long it all takes.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = 0;
            while got < 64 * 1024 {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                got += theirs.read(&mut buf).await.unwrap();
            }
            theirs
        });
        io.write_all(&[0u8; 64 * 1024]).await.unwrap();
        let _theirs = reader.await.unwrap();
        // The peer stops reading: once the buffer is full, the write fails after the limit.
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(5));
    }

    #[tokio::test]
    async fn send_progress_tells_waiting_on_the_consumer_from_waiting_on_the_producer() {
        let (mut tx, rx) = futures_channel_body();
        let progress = Arc::new(SendProgress::default());
        let epoch = tokio::time::Instant::now();
        let mut body = SendWatch::new(rx, progress.clone(), epoch);
        assert_eq!(progress.waiting_for(epoch), None, "nothing given yet");
        tx.push(Bytes::from_static(b"abc"));
        assert!(body.frame().await.unwrap().is_ok());
        assert!(progress.waiting_for(epoch).is_some(), "a frame given and not yet taken");
        // Asked again with nothing from the producer: waiting on it, not on the consumer.
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(std::pin::Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(progress.waiting_for(epoch), None);
        drop(tx);
    }

    /// The answer's end is told once: at its last frame, not again when it is dropped; and
    /// when it is dropped unfinished.
    #[tokio::test]
    async fn send_watch_tells_the_end_once() {
        #[derive(Default)]
        struct Count(std::sync::atomic::AtomicUsize);
        impl AnswerEnd for Count {
            fn answer_ended(&self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let epoch = tokio::time::Instant::now();
        let count = Arc::new(Count::default());
        let ended = || count.0.load(std::sync::atomic::Ordering::Relaxed);
        let mut body = SendWatch::new(full("abc"), Arc::default(), epoch).on_end(count.clone());
        assert!(body.frame().await.unwrap().is_ok());
        assert_eq!(ended(), 0, "a frame is not the end");
        assert!(body.frame().await.is_none());
        assert_eq!(ended(), 1);
        drop(body);
        assert_eq!(ended(), 1, "told once");
        let (_tx, rx) = futures_channel_body();
        drop(SendWatch::new(rx, Arc::default(), epoch).on_end(count.clone()));
        assert_eq!(ended(), 2, "dropped unfinished");
    }

    /// A body fed by hand: frames pushed into a channel, never ending on its own.
    fn futures_channel_body() -> (Feeder, Body) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, BoxError>(http_body::Frame::data(b)), rx))
        });
        (Feeder(tx), http_body_util::StreamBody::new(stream).boxed_unsync())
    }

    struct Feeder(tokio::sync::mpsc::UnboundedSender<Bytes>);

    impl Feeder {
        fn push(&mut self, b: Bytes) {
            self.0.send(b).unwrap();
        }
    }

    #[tokio::test]
    async fn capped_trips_past_the_limit() {
        let stats = Arc::new(BodyStats::default());
        assert!(Capped::new(full("12345"), 4, stats.clone()).collect().await.is_err());
        assert!(stats.tripped());
        let ok = Arc::new(BodyStats::default());
        assert!(Capped::new(full("1234"), 4, ok.clone()).collect().await.is_ok());
        assert!(!ok.tripped());
        assert_eq!(ok.bytes(), 4);
    }
}

/// A body that fails when no data arrives for `idle`: a stalled upstream, or a client that
/// declared a body and stopped sending it, must not hold the other side (and an in-flight
/// slot) forever. The error reaches whoever reads the body: for a response, hyper then ends the
/// transfer as an error the client sees (HTTP/1.1: connection closed before the declared length
/// or the last chunk; HTTP/2: `RST_STREAM`), never as a silently short body. Trailers are
/// dropped: neither side's reach the other past the header hygiene.
pub struct IdleTimeout<B = Body> {
    inner: B,
    idle: std::time::Duration,
    side: &'static str,
    /// Told when a request body stalls, so the gateway answers 408 rather than 502.
    stats: Option<std::sync::Arc<BodyStats>>,
    /// Armed only once the body has to wait: most small answers arrive whole and never need it.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

/// The sender stopped sending mid-body.
#[derive(Debug, thiserror::Error)]
#[error("{side} body stalled for {idle:?}")]
pub struct BodyStalled {
    side: &'static str,
    idle: std::time::Duration,
}

impl<B> IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// Wraps an upstream body `inner`; each frame that arrives restarts the clock. Its
    /// trailers are dropped: Palette's REST API sends none, and a trailer is a header the
    /// client would otherwise get past the response hygiene. (One wrapper, not two, around
    /// hyper's body: issue 14.)
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        IdleTimeout { inner, idle, side: "upstream", stats: None, timer: None }
    }

    /// Wraps a client's request body; a stall is recorded in `stats`.
    pub fn request(inner: B, idle: std::time::Duration, stats: std::sync::Arc<BodyStats>) -> Self {
        IdleTimeout { inner, idle, side: "request", stats: Some(stats), timer: None }
    }

    /// As the gateway's body type.
    pub fn into_body(self) -> Body {
        self.boxed_unsync()
    }
}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = loop {
            match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                    tracing::debug!(side = this.side, "trailers dropped");
                }
                other => break other,
            }
        };
        match polled {
            std::task::Poll::Ready(frame) => {
                // Data moved: the next wait starts a fresh idle period.
                this.timer = None;
                std::task::Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            std::task::Poll::Pending => {
                let idle = this.idle;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    std::task::Poll::Ready(()) => {
                        this.timer = None;
                        if let Some(stats) = &this.stats {
                            stats.set_timed_out();
                        }
                        if this.stats.is_some() {
                            tracing::debug!(?idle, "request body stalled; answering 408");
                        } else {
                            // A sick upstream is the operator's business; a slow client is not.
                            tracing::warn!(?idle, "upstream body stalled; the transfer to the client is cut");
                        }
                        std::task::Poll::Ready(Some(Err(Box::new(BodyStalled { side: this.side, idle }))))
                    }
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a response body's consumer (hyper, on behalf of the client) has left the last frame
/// it was given untaken, and since when: hyper asks for the next frame as soon as it has sent
/// one, unless the client does not take it (a full socket, or an HTTP/2 stream without
/// flow-control credit). The listener polls this to cut answers nobody reads.
#[derive(Debug, Default)]
pub struct SendProgress {
    /// Milliseconds since the connection's epoch, plus one; 0: not waiting for the consumer.
    waiting_since: std::sync::atomic::AtomicU64,
}

impl SendProgress {
    /// How long the consumer has left the last frame untaken (`None`: it is not waiting on
    /// the consumer, but on the upstream, or done).
    pub fn waiting_for(&self, epoch: tokio::time::Instant) -> Option<std::time::Duration> {
        self.waiting_since(epoch).map(|since| tokio::time::Instant::now().saturating_duration_since(since))
    }

    /// Since when the consumer has left the last frame untaken (`None`: not waiting on it).
    pub fn waiting_since(&self, epoch: tokio::time::Instant) -> Option<tokio::time::Instant> {
        match self.waiting_since.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            since => Some(epoch + std::time::Duration::from_millis(since - 1)),
        }
    }
}

/// Told once when a watched answer ends: sent to its end, failed, or dropped.
pub trait AnswerEnd: Send + Sync {
    /// The answer ended.
    fn answer_ended(&self);
}

/// A response body that keeps its [`SendProgress`] up to date, and tells its [`AnswerEnd`]
/// when it ends (one wrapper for both: the listener puts one around every answer).
pub struct SendWatch {
    inner: Body,
    progress: std::sync::Arc<SendProgress>,
    epoch: tokio::time::Instant,
    ended: Option<std::sync::Arc<dyn AnswerEnd>>,
}

impl SendWatch {
    /// Wraps `inner`; times are measured from `epoch`.
    pub fn new(inner: Body, progress: std::sync::Arc<SendProgress>, epoch: tokio::time::Instant) -> Self {
        SendWatch { inner, progress, epoch, ended: None }
    }

    /// Tells `ended` when the answer ends.
    pub fn on_end(mut self, ended: std::sync::Arc<dyn AnswerEnd>) -> Self {
        self.ended = Some(ended);
        self
    }

    /// As the gateway's body type.
    pub fn into_body(self) -> Body {
        self.boxed_unsync()
    }

    fn end(&mut self) {
        if let Some(ended) = self.ended.take() {
            ended.answer_ended();
        }
    }
}

impl Drop for SendWatch {
    fn drop(&mut self) {
        self.end();
    }
}

impl http_body::Body for SendWatch {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::sync::atomic::Ordering::Relaxed;
        // Asked again: the consumer took the last frame.
        self.progress.waiting_since.store(0, Relaxed);
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                    self.progress.waiting_since.store(ms + 1, Relaxed);
                }
            }
            std::task::Poll::Ready(None | Some(Err(_))) => self.end(),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection whose writes fail once the client has accepted no bytes for `limit`:
/// a client that stops reading its answer (its socket buffers full) must not hold the
/// connection, the upstream transfer and an in-flight slot forever. Each write that makes
/// progress restarts the clock; an idle connection (nothing to write) is never affected.
pub struct SendTimeout<I> {
    io: I,
    limit: std::time::Duration,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I> SendTimeout<I> {
    /// Wraps `io`.
    pub fn new(io: I, limit: std::time::Duration) -> Self {
        SendTimeout { io, limit, timer: None }
    }

    /// Maps a write's outcome: progress disarms the timer, a wait arms it, and a wait past the
    /// limit becomes a `TimedOut` error (hyper then closes the connection).
    fn guard<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => {
                self.timer = None;
                tracing::debug!(?limit, "the client accepted no response bytes in time; closing its connection");
                std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client accepted no response bytes within server.send_timeout",
                )))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SendTimeout<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SendTimeout<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        // TLS writes its close_notify here: a client taking no bytes must not hold it either.
        let polled = std::pin::Pin::new(&mut self.io).poll_shutdown(cx);
        self.guard(cx, polled)
    }
}
