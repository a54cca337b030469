//! Listeners: accept TCP (at most `max_connections` at once), terminate TLS (and verify client
//! certificates for mTLS), serve HTTP/1.1 and HTTP/2 on each connection with header-size and
//! header-time limits, close idle connections, and drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::PeerIdentity;
use crate::body::{self, Body, Tracked};
use crate::config::ServerLimits;
use crate::park::{self, Preface};
use crate::proxy::ConnInfo;

/// A client has this long to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes a parked HTTP/1.1 connection reads when its client sends again (then replayed to
/// the next hyper connection), and the most the HTTP/2 preface detection reads: small and fixed,
/// so that a parked connection holds no buffer worth naming.
const PARKED_READ: usize = 64;

/// An HTTP/1.1 connection parks once it has been idle this long, not at once: a client that
/// sends its next request sooner (any busy keep-alive client) never pays for a new hyper
/// connection per request (issue 14: ~9k instructions a request), and one that thinks longer
/// gives its buffers back. It costs an idle connection one wake-up, at this moment.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a listener serves (the gateway, or the admin endpoints): a handler that never fails.
/// A plain function type rather than a boxed tower service, whose future type (generic over the
/// request body) trips a rustc higher-ranked lifetime bug inside `Send` async blocks.
pub type HttpService = Arc<
    dyn Fn(Request<Body>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// What a listener needs for each new connection; read at accept time, so a reload applies to
/// new connections (a rotated certificate, new timeouts).
#[derive(Clone)]
pub struct ConnSettings {
    /// Serve TLS with this config.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Timeouts and sizes.
    pub limits: ServerLimits,
    /// How long connections may take to finish once the listener stops (read at that moment,
    /// so a reloaded `drain_timeout` applies).
    pub drain: Duration,
}

/// Where a listener gets its current [`ConnSettings`].
pub type SettingsSource = Arc<dyn Fn() -> ConnSettings + Send + Sync>;

/// Serves `service` on `listener` until `shutdown` fires; then stops accepting, asks every
/// connection to finish its in-flight requests (idle keep-alive connections close at once), and
/// returns when they have, or after `drain`. Returns the error, after the same drain, when the
/// listening socket itself fails for good ([`listener_broken`]): the gateway cannot go on.
pub async fn serve(
    listener: TcpListener,
    settings: SettingsSource,
    service: HttpService,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(settings().limits.max_connections));
    let tracker = TaskTracker::new();
    let mut failure = None;
    loop {
        // Past max_connections, new clients wait in the kernel's accept queue.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if listener_broken(&e) => {
                    tracing::error!(error = %e, "the listening socket failed; stopping");
                    failure = Some(e);
                    break;
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let settings = settings();
        let shutdown = shutdown.clone();
        // One task type per branch: a task's size is its future's largest state, and a TLS
        // stream (rustls' connection state, ~1 kB, moved through the serving code) would
        // otherwise size every plaintext connection's task too. Boxed for the same reason.
        match settings.tls.clone() {
            None => {
                tracker.spawn(async move {
                    let _permit = permit;
                    let conn = ConnInfo::new(peer, false, Arc::default());
                    // Plaintext: h2c with prior knowledge is served, so the preface decides.
                    drive(stream, conn, service, &settings.limits, Versions::Detect, shutdown).await;
                });
            }
            Some(tls) => {
                tracker.spawn(async move {
                    let _permit = permit;
                    let Some((stream, identity)) = handshake(&TlsAcceptor::from(tls), stream, peer).await else {
                        return;
                    };
                    let versions = Versions::from_alpn(stream.get_ref().1.alpn_protocol());
                    let conn = ConnInfo::new(peer, true, Arc::new(identity));
                    drive(Box::new(stream), conn, service, &settings.limits, versions, shutdown).await;
                });
            }
        }
    }
    drop(listener);
    let drain = settings().drain;
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(open = tracker.len(), "drain timeout reached; closing remaining connections");
    }
    failure.map_or(Ok(()), Err)
}

/// Whether an accept error means the listening socket itself is unusable, so that every later
/// accept fails the same way. Everything else passes: a shortage (EMFILE/ENFILE, ENOBUFS,
/// ENOMEM) ends as open connections close, and Linux reports a pending connection's network
/// errors through accept (accept(2) says to retry them).
fn listener_broken(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT))
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Which HTTP versions a connection may speak, as far as is known before its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// Either: the client's first bytes tell (plaintext, where h2c with prior knowledge is served).
    Detect,
    /// HTTP/1.1 only: TLS whose ALPN chose `http/1.1` or nothing (RFC 9113 §3.2: h2 over TLS is
    /// negotiated by ALPN, so such a client cannot speak it).
    Http1,
    /// HTTP/2 only: TLS whose ALPN chose `h2`.
    Http2,
}

impl Versions {
    /// What a TLS connection's negotiated ALPN protocol allows.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Versions::Http2,
            _ => Versions::Http1,
        }
    }
}

/// The HTTP/1 settings of every listener: header size and header-time limits. A macro so that
/// hyper's `http1::Builder` (the gateway's connections) and hyper-util's auto builder (the
/// benchmark's floor, [`connection_builder`]) take exactly the same, from this one place.
macro_rules! http1_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($limits.header_read_timeout)
            .max_buf_size($limits.max_header_bytes)
    };
}

/// The HTTP/2 settings of every listener: header size, keep-alive pings (see
/// [`http1_settings`] for why a macro).
macro_rules! http2_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from($limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some($limits.idle_timeout / 2))
            .keep_alive_timeout(Duration::from_secs(20))
    };
}

/// The listeners' hyper settings ([`http1_settings`], [`http2_settings`]) on hyper-util's auto
/// builder, for the benchmark's floor (`examples/floor_proxy.rs`), which serves connections
/// the plain way (no parking): a known version skips the read of the first bytes that auto's
/// detection needs.
pub fn connection_builder(limits: &ServerLimits, versions: Versions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    http1_settings!(builder.http1(), limits);
    http2_settings!(builder.http2(), limits);
    match versions {
        Versions::Detect => builder,
        Versions::Http1 => builder.http1_only(),
        Versions::Http2 => builder.http2_only(),
    }
}

fn http1_builder(limits: &ServerLimits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    http1_settings!(builder, limits);
    builder
}

fn http2_builder(limits: &ServerLimits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    http2_settings!(builder, limits);
    builder
}

/// The IO under hyper: the client's stream, its writes under `send_timeout`.
type ClientIo<I> = body::SendTimeout<I>;

/// Serves one connection until it ends, the gateway drains, or it sits idle too long.
async fn drive<I>(
    io: I,
    conn: ConnInfo,
    service: HttpService,
    limits: &ServerLimits,
    versions: Versions,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    drive_with(io, conn, service, limits, versions, shutdown, Arc::new(Activity::new(PARK_AFTER))).await;
}

/// [`drive`], keeping its bookkeeping in `activity` (which tests look at).
///
/// HTTP/1.1 is served one hyper connection at a time: each ends as soon as it is idle (see
/// [`park`]), and the connection then waits *parked*, holding only the client's stream (and
/// for TLS rustls' own buffers) and [`PARKED_READ`] bytes, until the client sends again (a new
/// hyper connection resumes on those bytes), `idle_timeout` passes, or the gateway drains.
/// Each hyper connection's future is boxed, so a parked connection's task is small. HTTP/2
/// connections are never parked (hyper's HTTP/2 state is the session itself).
async fn drive_with<I>(
    io: I,
    conn: ConnInfo,
    service: HttpService,
    limits: &ServerLimits,
    versions: Versions,
    shutdown: CancellationToken,
    activity: Arc<Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let svc = ConnService { inner: service, conn, activity: activity.clone() };
    let mut io = body::SendTimeout::new(io, limits.send_timeout);
    let mut first = [0u8; PARKED_READ];
    let (read, http2) = match versions {
        Versions::Http1 => (0, false),
        Versions::Http2 => (0, true),
        // A client that sends no request head within header_read_timeout is cut, as hyper
        // would cut it.
        Versions::Detect => {
            match tokio::time::timeout(limits.header_read_timeout, read_preface(&mut io, &mut first)).await {
                Ok(Ok(Some(detected))) => detected,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "reading the first bytes failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no request within header_read_timeout");
                    return;
                }
            }
        }
    };
    let mut prefix = Bytes::copy_from_slice(&first[..read]);
    if http2 {
        // Never parked: no wake-up for it either.
        activity.park_after_ms.store(u64::MAX, Ordering::Relaxed);
        let io = TokioIo::new(park::Rewind::new(prefix, io));
        let mut connection = Box::pin(http2_builder(limits).serve_connection(io, svc));
        if let (Some(Err(e)), _) = supervise(connection.as_mut(), &activity, limits, &shutdown, peer).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        return;
    }
    let http1 = http1_builder(limits);
    loop {
        let resumed = !prefix.is_empty();
        let io_back = Box::pin(serve_http1(
            &http1,
            park::Rewind::new(prefix, io),
            svc.clone(),
            resumed,
            limits,
            &activity,
            &shutdown,
        ))
        .await;
        let Some((pending, back)) = io_back else { return };
        io = back;
        if !pending.is_empty() {
            // Pipelined bytes hyper read but did not parse: replayed first, nothing to wait for.
            prefix = pending;
            continue;
        }
        activity.parks.fetch_add(1, Ordering::Relaxed);
        let read = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            _ = tokio::time::sleep_until(activity.idle_deadline(limits)) => None,
            read = io.read(&mut first) => match read {
                Ok(0) => return,
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "reading a parked connection failed");
                    return;
                }
            },
        };
        let Some(read) = read else {
            // Draining or idle too long: closed as hyper closes an idle connection.
            let _ = io.shutdown().await;
            return;
        };
        prefix = Bytes::copy_from_slice(&first[..read]);
    }
}

/// Reads a plaintext connection's first bytes into `first` until they tell HTTP/2 (the whole
/// client preface) from HTTP/1 (a byte that differs from it), as hyper-util's auto builder does.
/// `None`: the client closed first.
async fn read_preface<I: AsyncRead + Unpin>(
    io: &mut I,
    first: &mut [u8; PARKED_READ],
) -> std::io::Result<Option<(usize, bool)>> {
    let mut read = 0;
    loop {
        let n = io.read(&mut first[read..]).await?;
        if n == 0 {
            return Ok(None);
        }
        read += n;
        match park::preface(&first[..read]) {
            Preface::Http1 => return Ok(Some((read, false))),
            Preface::Http2 => return Ok(Some((read, true))),
            Preface::Undecided => {}
        }
    }
}

/// Serves HTTP/1.1 on `io` until the connection ends (`None`) or parks: then the client's
/// stream comes back with the bytes read but not yet served. `resumed`: `io` starts with bytes
/// of a request (see [`park::Parking::new`]).
async fn serve_http1<I>(
    http1: &http1::Builder,
    io: park::Rewind<ClientIo<I>>,
    svc: ConnService,
    resumed: bool,
    limits: &ServerLimits,
    activity: &Arc<Activity>,
    shutdown: &CancellationToken,
) -> Option<(Bytes, ClientIo<I>)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = svc.conn.peer;
    let mut connection = http1.serve_connection(TokioIo::new(park::Parking::new(io, activity.clone(), resumed)), svc);
    let (result, closing) = supervise(std::pin::Pin::new(&mut connection), activity, limits, shutdown, peer).await;
    let result = result?;
    // Ended by the made-up EOF: idle, with a pipelined head's start at most (an "incomplete
    // message", see `park`). Anything else, or a drain that began meanwhile, ends it.
    let parked = activity.parking.swap(false, Ordering::Relaxed)
        && !closing
        && !shutdown.is_cancelled()
        && result.as_ref().map_or_else(hyper::Error::is_incomplete_message, |()| true);
    if !parked {
        match result {
            // hyper is done with it (`Connection: close`, HTTP/1.0, a drain), but ended
            // without flushing its write buffer (`poll_without_shutdown` stops at "done"):
            // polled on as a future, it flushes and shuts the stream down, as it would have.
            Ok(()) => {
                // `SendTimeout` bounds each write (and the shutdown) it waits on.
                let finish = std::future::poll_fn(|cx| std::pin::Pin::new(&mut connection).poll(cx));
                if let Err(e) = finish.await {
                    tracing::debug!(%peer, error = %e, "finishing the connection failed");
                }
            }
            Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        }
        return None;
    }
    let parts = connection.into_parts();
    let (rest, io) = parts.io.into_inner().into_inner().into_parts();
    let pending = match (parts.read_buf.is_empty(), rest.is_empty()) {
        (true, _) => rest,
        (false, true) => parts.read_buf,
        (false, false) => [parts.read_buf, rest].concat().into(),
    };
    Some((pending, io))
}

/// A hyper connection as [`supervise`] drives it: polled to its end, and asked to finish.
trait Served {
    /// Serves on; `Ready` when the connection is done. HTTP/1 keeps the IO (`into_parts`).
    fn poll_served(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<hyper::Result<()>>;
    /// Finishes the requests in flight, then ends.
    fn finish(self: std::pin::Pin<&mut Self>);
}

impl<I> Served for http1::Connection<I, ConnService>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn poll_served(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<hyper::Result<()>> {
        self.get_mut().poll_without_shutdown(cx)
    }

    fn finish(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I> Served for http2::Connection<I, ConnService, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn poll_served(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<hyper::Result<()>> {
        self.poll(cx)
    }

    fn finish(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs one hyper connection until it ends (`Some(result)`), or is cut because a client takes
/// no bytes of an answer (`None`); and whether it was asked to finish (drain, idle_timeout).
async fn supervise<C: Served + ?Sized>(
    mut connection: std::pin::Pin<&mut C>,
    activity: &Activity,
    limits: &ServerLimits,
    shutdown: &CancellationToken,
    peer: SocketAddr,
) -> (Option<hyper::Result<()>>, bool) {
    let mut closing = false;
    // One timer, set to the first moment a check can be due (see `Activity::next_check`): an
    // idle connection's task sleeps until its idle deadline instead of waking every tick. After
    // each poll of the connection in which a request began or ended it is moved sooner when a
    // check became due earlier: hyper calls the service (`ConnService::call`) inside that poll,
    // so a request never waits on a timer set before it, and moving it costs no wake-up.
    let check = tokio::time::sleep_until(activity.next_check(limits, closing));
    tokio::pin!(check);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut seen = activity.changes.load(Ordering::Relaxed);
    std::future::poll_fn(|cx| loop {
        if let std::task::Poll::Ready(result) = connection.as_mut().poll_served(cx) {
            return std::task::Poll::Ready((Some(result), closing));
        }
        if !closing && cancelled.as_mut().poll(cx).is_ready() {
            closing = true;
            connection.as_mut().finish();
            continue;
        }
        let changes = activity.changes.load(Ordering::Relaxed);
        if changes != seen {
            seen = changes;
            // Only ever sooner: a timer that fires early finds nothing due and is set again
            // below, so a busy connection moves it about once per PARK_AFTER, not twice per
            // request (issue 14: a timer-wheel move each time otherwise).
            let due = activity.next_check(limits, closing);
            if due < check.deadline() {
                check.as_mut().reset(due);
            }
        }
        if check.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        // An answer the client takes no bytes of (an HTTP/2 stream it grants no credit: its
        // socket never fills, so `SendTimeout` cannot see it) ends the connection.
        if activity.stalled(limits.send_timeout) {
            tracing::debug!(%peer, "the client took no bytes of an answer within send_timeout; closing");
            return std::task::Poll::Ready((None, closing));
        }
        if !closing && activity.idle_for() >= limits.idle_timeout {
            closing = true;
            connection.as_mut().finish();
        }
        check.as_mut().reset(activity.next_check(limits, closing));
    })
    .await
}

/// Requests in flight on one connection, when the last one ended, and when the connection's
/// check timer is set to fire. Times are milliseconds since `started`, on tokio's clock.
struct Activity {
    started: Instant,
    inflight: AtomicUsize,
    last_ms: AtomicU64,
    /// Counts requests begun and ended: [`drive`] sets its timer again when it moves.
    changes: AtomicU64,
    /// The answers still being sent (dropped ones fall away).
    sending: std::sync::Mutex<Vec<std::sync::Weak<body::SendProgress>>>,
    /// Request bodies not read to their end: hyper may still be reading one, so the connection
    /// must not park. One dropped unread keeps it from parking for good (hyper drains or
    /// closes it; which, it does not tell).
    unread_bodies: AtomicUsize,
    /// How often the connection parked (see [`drive_with`]).
    parks: AtomicU64,
    /// Set when the current hyper connection's IO reported the made-up EOF ([`park`]).
    parking: std::sync::atomic::AtomicBool,
    /// How long the connection is idle before it may park ([`PARK_AFTER`]; `u64::MAX`: never,
    /// HTTP/2), in milliseconds.
    park_after_ms: AtomicU64,
}

impl Activity {
    fn new(park_after: Duration) -> Self {
        Activity {
            park_after_ms: AtomicU64::new(millis(park_after)),
            started: Instant::now(),
            inflight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            sending: std::sync::Mutex::default(),
            unread_bodies: AtomicUsize::new(0),
            parks: AtomicU64::new(0),
            parking: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        millis(self.started.elapsed())
    }

    /// Watches an answer's body for a client that stops taking it; the request ends with it.
    fn watch(self: Arc<Self>, b: Body) -> Body {
        let progress = Arc::new(body::SendProgress::default());
        self.sending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Arc::downgrade(&progress));
        let epoch = self.started;
        body::SendWatch::new(b, progress, epoch).on_end(self).into_body()
    }

    /// Whether an answer has waited on the client for `limit` or longer.
    fn stalled(&self, limit: Duration) -> bool {
        let mut sending = self.sending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sending.retain(|w| w.strong_count() > 0);
        sending.iter().filter_map(std::sync::Weak::upgrade).any(|p| p.waiting_for(self.started) >= Some(limit))
    }

    /// The first moment [`drive`]'s checks can find something due:
    /// - the stall check, only while a request is in flight or an answer is being sent: when the
    ///   longest-waiting answer reaches `send_timeout`, or `send_timeout` from now (an answer
    ///   that starts waiting later is due later);
    /// - the idle check, unless closing: `idle_timeout` after the last request ended, or from
    ///   now while one is in flight (it cannot be idle sooner).
    ///
    /// Both are lower bounds: a check that finds nothing due sets the timer again.
    fn next_check(&self, limits: &ServerLimits, closing: bool) -> Instant {
        let now = Instant::now();
        let busy = self.inflight.load(Ordering::Relaxed) > 0;
        let mut due: Option<Instant> = None;
        let mut sooner = |at: Instant| due = Some(due.map_or(at, |d| d.min(at)));
        {
            let mut sending = self.sending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sending.retain(|w| w.strong_count() > 0);
            if busy || !sending.is_empty() {
                let waiting = sending
                    .iter()
                    .filter_map(std::sync::Weak::upgrade)
                    .filter_map(|p| p.waiting_since(self.started))
                    .min();
                sooner(waiting.unwrap_or(now).min(now) + limits.send_timeout);
            }
        }
        if !closing && !busy {
            // The moment it may park: hyper reads (and the IO reports its end) only when polled.
            let park_after = self.park_after_ms.load(Ordering::Relaxed);
            if park_after != u64::MAX {
                let at = self.started
                    + Duration::from_millis(self.last_ms.load(Ordering::Relaxed).saturating_add(park_after));
                if at > now {
                    sooner(at);
                }
            }
        }
        if !closing {
            sooner(if busy {
                now + limits.idle_timeout
            } else {
                self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limits.idle_timeout
            });
        }
        // Closing with nothing in flight: hyper ends the connection itself; look again later.
        due.unwrap_or(now + limits.idle_timeout)
    }

    /// A request starts.
    fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ended (its answer sent, or dropped).
    fn end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    /// When a connection with no request in flight has been idle for `idle_timeout`.
    fn idle_deadline(&self, limits: &ServerLimits) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limits.idle_timeout
    }

    /// How long the connection has had no request in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.inflight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl body::AnswerEnd for Activity {
    fn answer_ended(&self) {
        self.end();
    }
}

impl park::Idle for Activity {
    fn is_idle(&self) -> bool {
        let park_after = self.park_after_ms.load(Ordering::Relaxed);
        self.inflight.load(Ordering::Relaxed) == 0
            && self.unread_bodies.load(Ordering::Relaxed) == 0
            && park_after != u64::MAX
            && millis(self.idle_for()) >= park_after
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn parking(&self) {
        self.parking.store(true, Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, PeerIdentity)> {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let identity = PeerIdentity {
                cert_names: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| cert_names(c))
                    .unwrap_or_default(),
            };
            Some((tls, identity))
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// DNS SANs and the subject CN of a (verified) client certificate.
pub fn cert_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_string());
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            names.push(s.to_string());
        }
    }
    names
}

/// Adapts a tower service to hyper: tags each request with its connection's [`ConnInfo`] and
/// keeps the connection's activity (a request is in flight until its response body ends).
#[derive(Clone)]
struct ConnService {
    inner: HttpService,
    conn: ConnInfo,
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ConnFuture;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.conn.clone());
        let activity = self.activity.clone();
        activity.begin();
        let method = req.method().clone();
        let req = if http_body::Body::is_end_stream(req.body()) {
            // No bytes can come (no body, `Content-Length: 0`, or HTTP/2's END_STREAM on the
            // headers): an empty body, which boxes without allocating, instead of hyper's.
            req.map(|_| body::empty())
        } else {
            activity.unread_bodies.fetch_add(1, Ordering::Relaxed);
            let a = activity.clone();
            let done = move |_, complete| {
                if complete {
                    a.unread_bodies.fetch_sub(1, Ordering::Relaxed);
                }
            };
            req.map(|b| Tracked::new(body::boxed(b), done).into_body())
        };
        let inner = (self.inner)(req);
        ConnFuture { inner, method, guard: EndGuard(Some(activity)) }
    }
}

/// [`ConnService`]'s answer on its way: the handler's future, then the answer's finishing
/// touches. A plain future around the handler's (already boxed) one, not a second box per
/// request (issue 14).
pub(crate) struct ConnFuture {
    inner: std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
    method: http::Method,
    /// If the client goes away before the answer, this still ends the request.
    guard: EndGuard,
}

impl Future for ConnFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = &mut *self;
        let resp = std::task::ready!(this.inner.as_mut().poll(cx));
        // Every listener's answers to HEAD lose their body here (the admin endpoints' too):
        // hyper's HTTP/2 server would send it.
        let resp = crate::proxy::target::strip_head_body(&this.method, resp);
        // From here the answer's body ends the request, when it is sent or dropped.
        std::task::Poll::Ready(Ok(match this.guard.0.take() {
            Some(activity) => resp.map(|b| activity.watch(b)),
            None => resp,
        }))
    }
}

struct EndGuard(Option<Arc<Activity>>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.end();
        }
    }
}

/// One connection at a time, over in-memory IO (`tokio::io::duplex`): what [`drive`] and
/// [`ConnService`] promise a client, without a socket or the gateway behind them.
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    const PEER: &str = "192.0.2.7:4321";

    fn limits() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_body_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            max_request_body: 16 << 20,
            max_header_bytes: 8192,
            max_connections: 10,
            max_inflight_requests: 10,
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(1),
        }
    }

    /// Answers with the peer address the connection tagged the request with.
    fn peer_echo() -> HttpService {
        Arc::new(|req: Request<Body>| {
            let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer.to_string()).unwrap_or_default();
            Box::pin(async move { Response::new(body::full(peer)) })
        })
    }

    /// Answers `size` bytes.
    fn large(size: usize) -> HttpService {
        Arc::new(move |_| Box::pin(async move { Response::new(body::full(vec![b'x'; size])) }))
    }

    /// Serves `service` on one end of an in-memory pipe (`buffer` bytes each way).
    fn connect(
        limits: ServerLimits,
        service: HttpService,
        buffer: usize,
    ) -> (DuplexStream, CancellationToken, JoinHandle<()>) {
        let (client, stop, handle, _) = connect_watched(limits, service, buffer);
        (client, stop, handle)
    }

    /// [`connect`], and the connection's bookkeeping (how often it parked).
    fn connect_watched(
        limits: ServerLimits,
        service: HttpService,
        buffer: usize,
    ) -> (DuplexStream, CancellationToken, JoinHandle<()>, Arc<Activity>) {
        let (client, server) = tokio::io::duplex(buffer);
        let conn = ConnInfo::new(PEER.parse().unwrap(), false, Arc::default());
        let stop = CancellationToken::new();
        let activity = Arc::new(Activity::new(Duration::ZERO));
        let handle = tokio::spawn({
            let (stop, activity) = (stop.clone(), activity.clone());
            async move { drive_with(server, conn, service, &limits, Versions::Detect, stop, activity).await }
        });
        (client, stop, handle, activity)
    }

    fn parks(activity: &Activity) -> u64 {
        activity.parks.load(Ordering::Relaxed)
    }

    /// Waits (paused time: no wall clock) until the connection has parked `n` times.
    async fn parked(activity: &Activity, n: u64) {
        for _ in 0..1000 {
            if parks(activity) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the connection parked {} times, not {n}", parks(activity));
    }

    /// Answers with the request's path and the length of its body.
    fn path_echo() -> HttpService {
        Arc::new(|req: Request<Body>| {
            Box::pin(async move {
                let path = req.uri().path().to_string();
                let length = body::collect_limited(req.into_body(), 1 << 20).await.map_or(usize::MAX, |b| b.len());
                Response::new(body::full(format!("{path} {length}")))
            })
        })
    }

    /// Reads until the connection ends.
    async fn read_all(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads one whole response with a `content-length` body (keep-alive: the connection stays).
    async fn read_response(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection ended inside a response: {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if let Some(head_end) = text.find("\r\n\r\n") {
                let length = text[..head_end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                if out.len() >= head_end + 4 + length {
                    return text.into_owned();
                }
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn only_a_broken_listening_socket_stops_the_accept_loop() {
        use std::io::Error;
        for errno in [libc::EBADF, libc::EINVAL, libc::ENOTSOCK, libc::EFAULT] {
            assert!(listener_broken(&Error::from_raw_os_error(errno)), "{errno}");
        }
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::ECONNABORTED,
            libc::EINTR,
            libc::EAGAIN,
            libc::EPROTO,
            libc::ENETDOWN,
            libc::EHOSTUNREACH,
            libc::EOPNOTSUPP,
            libc::EPERM,
        ] {
            assert!(!listener_broken(&Error::from_raw_os_error(errno)), "{errno}");
        }
        assert!(!listener_broken(&Error::other("not from the OS")));
    }

    /// TLS without ALPN `h2` cannot speak HTTP/2 (RFC 9113 §3.2), so it skips the detection.
    #[test]
    fn alpn_decides_the_http_version_of_a_tls_connection() {
        assert_eq!(Versions::from_alpn(Some(b"h2")), Versions::Http2);
        assert_eq!(Versions::from_alpn(Some(b"http/1.1")), Versions::Http1);
        assert_eq!(Versions::from_alpn(None), Versions::Http1);
    }

    /// Serves `service` on a pipe speaking only `versions`.
    fn connect_versions(versions: Versions) -> (DuplexStream, JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let conn = ConnInfo::new(PEER.parse().unwrap(), true, Arc::default());
        let handle = tokio::spawn(async move {
            drive(server, conn, peer_echo(), &limits(), versions, CancellationToken::new()).await
        });
        (client, handle)
    }

    const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn an_http1_only_connection_serves_http1_and_refuses_an_h2_preface() {
        let (mut client, handle) = connect_versions(Versions::Http1);
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await.unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        handle.await.unwrap();

        let (mut client, handle) = connect_versions(Versions::Http1);
        let _ = client.write_all(H2_PREFACE).await;
        let answer = read_all(&mut client).await;
        assert!(!answer.contains(" 200 "), "no HTTP/2 session on an HTTP/1.1-only connection: {answer}");
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn detection_and_http2_only_answer_an_h2_preface_with_settings() {
        for versions in [Versions::Detect, Versions::Http2] {
            let (mut client, _handle) = connect_versions(versions);
            client.write_all(H2_PREFACE).await.unwrap();
            // The server's preface is a SETTINGS frame: 3 bytes length, then type 0x4.
            let mut head = [0u8; 9];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[3], 0x4, "{versions:?}: a SETTINGS frame first, got {head:?}");
        }
    }

    #[tokio::test]
    async fn one_exchange_tags_the_request_with_its_connection() {
        let (mut client, _stop, handle) = connect(limits(), peer_echo(), 64 * 1024);
        client.write_all(b"GET /v1/users HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await.unwrap();
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(PEER), "the service saw the connection's peer: {answer}");
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn a_head_larger_than_max_header_bytes_gets_431() {
        let (mut client, _stop, handle) = connect(limits(), peer_echo(), 64 * 1024);
        let filler = "a".repeat(16 * 1024);
        let request = format!("GET / HTTP/1.1\r\nhost: gw\r\nx-filler: {filler}\r\n\r\n");
        // The server may stop reading (and close) before the whole head is written.
        let _ = client.write_all(request.as_bytes()).await;
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_does_not_arrive_within_header_read_timeout_ends_the_connection() {
        let (mut client, _stop, handle) = connect(limits(), peer_echo(), 64 * 1024);
        let started = tokio::time::Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n").await.unwrap();
        let answer = read_all(&mut client).await;
        assert!(!answer.contains(" 200 "), "no answer to half a request: {answer}");
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(10)..Duration::from_secs(11)).contains(&waited),
            "cut at header_read_timeout, not before: {waited:?}"
        );
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_that_completes_within_header_read_timeout_is_served() {
        let (mut client, _stop, _handle) = connect(limits(), peer_echo(), 64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(9)).await;
        client.write_all(b"host: gw\r\n\r\n").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_no_bytes_is_disconnected_after_send_timeout() {
        // 4 KiB of pipe: a 1 MiB answer fills it, and the client never reads.
        let (mut client, _stop, handle) = connect(limits(), large(1 << 20), 4096);
        let started = tokio::time::Instant::now();
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        tokio::time::timeout(Duration::from_secs(120), handle).await.expect("the connection ends").unwrap();
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(30)..Duration::from_secs(35)).contains(&waited),
            "cut at send_timeout, not before: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_bytes_gets_the_whole_answer() {
        let (mut client, _stop, handle) = connect(limits(), large(256 * 1024), 4096);
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            // 4 KiB every 5s: slow, but never 30s without progress.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
            if got > 256 * 1024 {
                break;
            }
        }
        assert!(got > 256 * 1024, "the whole answer arrived: {got} bytes");
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
        let limits = ServerLimits { idle_timeout: Duration::from_millis(200), ..limits() };
        let (mut client, _stop, handle) = connect(limits, peer_echo(), 64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("closed when idle").unwrap();
        assert_eq!(read_all(&mut client).await, "", "closed without another byte");
    }

    /// Counts the polls of a future: each wake of the task running it is one.
    struct CountPolls<F> {
        inner: std::pin::Pin<Box<F>>,
        polls: Arc<AtomicUsize>,
    }

    impl<F: std::future::Future> std::future::Future for CountPolls<F> {
        type Output = F::Output;
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.inner.as_mut().poll(cx)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_not_woken_before_its_idle_deadline() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let polls = Arc::new(AtomicUsize::new(0));
        let conn = ConnInfo::new(PEER.parse().unwrap(), false, Arc::default());
        // Parked, no hyper connection waits for the next request: hyper's header_read_timeout
        // (10 s here, which hyper >= 1.6 runs during that wait) neither wakes nor closes it.
        let limits = limits();
        let idle = limits.idle_timeout;
        let serving =
            async move { drive(server, conn, peer_echo(), &limits, Versions::Detect, CancellationToken::new()).await };
        let handle = tokio::spawn(CountPolls { inner: Box::pin(serving), polls: polls.clone() });
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let answered = tokio::time::Instant::now();
        // Let the connection finish its answer and park, at PARK_AFTER: its one wake-up.
        tokio::time::sleep(PARK_AFTER + Duration::from_millis(1)).await;
        let settled = polls.load(Ordering::Relaxed);
        // Past send_timeout (30 s) too: the stall check set while the request was in flight
        // does not fire once it has ended.
        tokio::time::sleep(idle - PARK_AFTER - Duration::from_secs(1)).await;
        assert_eq!(
            polls.load(Ordering::Relaxed),
            settled,
            "the idle connection's task was woken before its idle deadline"
        );
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("closed at the idle deadline").unwrap();
        let waited = answered.elapsed();
        assert!((idle..idle + Duration::from_secs(1)).contains(&waited), "closed at idle_timeout: {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_check_is_the_stall_check_while_busy_and_the_idle_deadline_when_idle() {
        let limits = ServerLimits { idle_timeout: Duration::from_secs(600), ..limits() };
        let activity = Activity::new(Duration::ZERO);
        assert_eq!(
            activity.next_check(&limits, false),
            activity.started + limits.idle_timeout,
            "idle: only the idle deadline"
        );
        tokio::time::sleep(Duration::from_secs(100)).await;
        activity.begin();
        let now = tokio::time::Instant::now();
        assert_eq!(activity.next_check(&limits, false), now + limits.send_timeout, "in flight: the stall check first");
        activity.end();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            activity.next_check(&limits, false),
            now + limits.idle_timeout,
            "idle again: idle_timeout after the last request ended"
        );
    }

    #[tokio::test]
    async fn a_request_in_flight_is_not_idle() {
        let limits = ServerLimits { idle_timeout: Duration::from_millis(100), ..limits() };
        let slow: HttpService = Arc::new(|_| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Response::new(body::full("late"))
            })
        });
        let (mut client, _stop, _handle) = connect(limits, slow, 64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("late"), "{answer}");
    }

    #[tokio::test]
    async fn shutdown_closes_an_idle_connection_and_lets_a_request_in_flight_finish() {
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(Some(release_rx)));
        let held: HttpService = Arc::new(move |_| {
            let rx = release_rx.lock().unwrap().take();
            Box::pin(async move {
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
                Response::new(body::full("done"))
            })
        });

        // Idle: the connection closes at once.
        let (mut idle, stop, handle) = connect(limits(), peer_echo(), 64 * 1024);
        idle.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        read_response(&mut idle).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("an idle connection closes").unwrap();

        // In flight: the answer is sent (and says the connection closes), then it closes.
        let (mut busy, stop, handle) = connect(limits(), held, 64 * 1024);
        busy.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!handle.is_finished(), "the request in flight holds the connection");
        release_tx.send(()).unwrap();
        let answer = read_all(&mut busy).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        handle.await.unwrap();
    }
    #[tokio::test(start_paused = true)]
    async fn a_keep_alive_connection_parks_between_requests_and_resumes_on_the_next() {
        let (mut client, _stop, _handle, activity) = connect_watched(limits(), path_echo(), 64 * 1024);
        for i in 0..20u64 {
            client.write_all(format!("GET /r{i} HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes()).await.unwrap();
            let answer = read_response(&mut client).await;
            assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with(&format!("/r{i} 0")), "{answer}");
            parked(&activity, i + 1).await;
        }
        assert_eq!(parks(&activity), 20, "parked once after each answer");
    }

    /// As served (`drive`'s [`PARK_AFTER`]): a client that asks again within it keeps its
    /// hyper connection, with no park; idle that long, the connection parks (one wake-up, from
    /// its check timer alone, with no byte from the client) and is resumed on the next request.
    #[tokio::test(start_paused = true)]
    async fn a_connection_parks_only_after_park_after_of_idleness() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut client = client;
        let conn = ConnInfo::new(PEER.parse().unwrap(), false, Arc::default());
        let activity = Arc::new(Activity::new(PARK_AFTER));
        let _handle = tokio::spawn({
            let activity = activity.clone();
            async move {
                drive_with(server, conn, path_echo(), &limits(), Versions::Detect, CancellationToken::new(), activity)
                    .await
            }
        });
        for i in 0..5u64 {
            client.write_all(format!("GET /r{i} HTTP/1.1\r\nhost: gw\r\n\r\n").as_bytes()).await.unwrap();
            let answer = read_response(&mut client).await;
            assert!(answer.ends_with(&format!("/r{i} 0")), "{answer}");
            tokio::time::sleep(PARK_AFTER / 2).await;
        }
        assert_eq!(parks(&activity), 0, "asked again within PARK_AFTER: never parked");
        tokio::time::sleep(PARK_AFTER).await;
        parked(&activity, 1).await;
        client.write_all(b"GET /again HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("/again 0"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn pipelined_requests_are_answered_in_order() {
        let (mut client, _stop, _handle, activity) = connect_watched(limits(), path_echo(), 64 * 1024);
        client.write_all(b"GET /a HTTP/1.1\r\nhost: gw\r\n\r\nGET /b HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let both = read_until(&mut client, "/b 0").await;
        assert!(both.find("/a 0") < both.find("/b 0") && both.matches("HTTP/1.1 200").count() == 2, "{both}");
        parked(&activity, 1).await;
        // A pipelined second request cut short: its start waits in hyper's buffer while the
        // first is answered, and is replayed after parking.
        client.write_all(b"GET /c HTTP/1.1\r\nhost: gw\r\n\r\nGET /d HT").await.unwrap();
        let third = read_until(&mut client, "/c 0").await;
        assert!(third.starts_with("HTTP/1.1 200") && third.ends_with("/c 0"), "{third}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        client.write_all(b"TP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let fourth = read_until(&mut client, "/d 0").await;
        assert!(fourth.starts_with("HTTP/1.1 200") && fourth.ends_with("/d 0"), "{fourth}");
    }

    /// Reads until what came contains `needle`.
    async fn read_until(client: &mut DuplexStream, needle: &str) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(needle) {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection ended before {needle:?}: {:?}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_sent_one_byte_at_a_time_across_the_park_is_served() {
        let (mut client, _stop, _handle, activity) = connect_watched(limits(), path_echo(), 64 * 1024);
        client.write_all(b"GET /first HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        read_response(&mut client).await;
        parked(&activity, 1).await;
        for b in b"POST /next HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\n\r\nhello" {
            client.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("/next 5"), "{answer}");
        parked(&activity, 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_after_a_park_is_still_cut_at_header_read_timeout() {
        let (mut client, _stop, handle, activity) = connect_watched(limits(), path_echo(), 64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        read_response(&mut client).await;
        parked(&activity, 1).await;
        let started = tokio::time::Instant::now();
        // A byte every 2 s, never a whole head: resuming must not restart hyper's clock.
        for b in b"GET / HTTP/1.1\r\nx-slow: ssssssssssssssssssss".iter().cycle().take(20) {
            if client.write_all(&[*b]).await.is_err() || handle.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        tokio::time::timeout(Duration::from_secs(30), handle).await.expect("cut").unwrap();
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(13),
            "cut about header_read_timeout (10 s) after its first byte: {waited:?}"
        );
        assert_eq!(parks(&activity), 1, "no parking inside a head");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_larger_than_the_pipe_reaches_a_slow_reader_whole_before_parking() {
        const SIZE: usize = 256 * 1024;
        let (mut client, _stop, _handle, activity) = connect_watched(limits(), large(SIZE), 4096);
        for round in 1..=2u64 {
            client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            let body_start = loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection ended inside the answer after {} bytes", out.len());
                out.extend_from_slice(&buf[..n]);
                if let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                    let body = out.len() - head_end - 4;
                    // The pipe holds 4096 bytes: with more than that still to come, hyper has
                    // not written them all, and must not have parked.
                    if body + 4096 < SIZE {
                        assert_eq!(parks(&activity), round - 1, "parked with {body} of {SIZE} bytes delivered");
                    }
                    if body >= SIZE {
                        break head_end + 4;
                    }
                }
            };
            assert_eq!(out.len() - body_start, SIZE, "the whole answer, nothing more");
            parked(&activity, round).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_body_is_read_and_the_connection_parks_after() {
        let (mut client, _stop, _handle, activity) = connect_watched(limits(), path_echo(), 64 * 1024);
        client.write_all(b"POST /upload HTTP/1.1\r\nhost: gw\r\ncontent-length: 11\r\n\r\nhello").await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(parks(&activity), 0, "not while a body is being read");
        client.write_all(b" world").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.ends_with("/upload 11"), "{answer}");
        parked(&activity, 1).await;
        client
            .write_all(b"POST /chunked HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.ends_with("/chunked 3"), "{answer}");
        parked(&activity, 2).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_body_left_unread_keeps_the_connection_from_parking() {
        let (mut client, _stop, _handle, activity) = connect_watched(limits(), peer_echo(), 64 * 1024);
        client.write_all(b"POST / HTTP/1.1\r\nhost: gw\r\ncontent-length: 4\r\n\r\nbody").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "kept alive: {answer}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(parks(&activity), 0, "hyper may still have been draining the unread body");
    }

    #[tokio::test(start_paused = true)]
    async fn connection_close_and_http_1_0_are_answered_then_closed() {
        for request in
            [&b"GET /bye HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n"[..], &b"GET /old HTTP/1.0\r\n\r\n"[..]]
        {
            let (mut client, _stop, handle, activity) = connect_watched(limits(), path_echo(), 64 * 1024);
            client.write_all(request).await.unwrap();
            let answer = read_all(&mut client).await;
            assert!(answer.contains(" 200 ") && (answer.ends_with("/bye 0") || answer.ends_with("/old 0")), "{answer}");
            handle.await.unwrap();
            assert_eq!(parks(&activity), 0, "closed, not parked");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_is_closed_after_idle_timeout() {
        let limits = ServerLimits { idle_timeout: Duration::from_secs(60), ..limits() };
        let (mut client, _stop, handle, activity) = connect_watched(limits, peer_echo(), 64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        read_response(&mut client).await;
        let answered = tokio::time::Instant::now();
        parked(&activity, 1).await;
        tokio::time::timeout(Duration::from_secs(120), handle).await.expect("closed when idle").unwrap();
        let waited = answered.elapsed();
        assert!((Duration::from_secs(60)..Duration::from_secs(61)).contains(&waited), "at idle_timeout: {waited:?}");
        assert_eq!(read_all(&mut client).await, "", "closed without another byte");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_closes_a_parked_connection_at_once() {
        let (mut client, stop, handle, activity) = connect_watched(limits(), peer_echo(), 64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nhost: gw\r\n\r\n").await.unwrap();
        read_response(&mut client).await;
        parked(&activity, 1).await;
        let drained = tokio::time::Instant::now();
        stop.cancel();
        handle.await.unwrap();
        assert_eq!(drained.elapsed(), Duration::ZERO, "at once");
        assert_eq!(read_all(&mut client).await, "");
    }

    #[tokio::test]
    async fn an_h2_preface_split_across_writes_is_detected() {
        let (mut client, _stop, _handle) = connect(limits(), peer_echo(), 64 * 1024);
        for piece in [&H2_PREFACE[..1], &H2_PREFACE[1..10], &H2_PREFACE[10..]] {
            client.write_all(piece).await.unwrap();
            client.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut head = [0u8; 9];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[3], 0x4, "a SETTINGS frame first, got {head:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_cut_at_header_read_timeout() {
        let (mut client, _stop, handle) = connect(limits(), peer_echo(), 64 * 1024);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(30), handle).await.expect("cut").unwrap();
        assert_eq!(started.elapsed(), limits().header_read_timeout);
        assert_eq!(read_all(&mut client).await, "");
    }
}
