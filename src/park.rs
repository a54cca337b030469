//! Parking of idle HTTP/1.1 connections: the IO that hyper's HTTP/1 connection runs over, which
//! ends that connection (a made-up end of input) at the moment it has nothing left to do, so
//! that its read and write buffers (8 KiB each, held for the connection's whole life otherwise)
//! are freed while the client thinks; and the replaying IO that a new hyper connection resumes
//! on, bytes already read first.
//!
//! Why the made-up EOF is safe where it is reported (hyper 1.12, `proto/h1/{conn,dispatch,io}.rs`):
//! - No request is in flight (every answer body ended or was dropped by hyper) and no request
//!   body is unread: hyper is not mid-message, so an EOF is not its "incomplete" error on a busy
//!   connection (`mid_message_detect_eof`), and not cut into a body it still reads.
//! - `poll_flush` returned Ready after the last `poll_write*` and after the last answer ended:
//!   hyper's `Buffered::poll_flush` calls the IO's flush only once its write buffer is empty,
//!   and every answer byte is buffered before that (within `Dispatcher::poll_write`, before the
//!   flush of the same loop), so nothing written is left in hyper.
//! - The socket itself has no byte ready (its read returned Pending).
//!
//! hyper then reads EOF in the state it waits for a request head in: with nothing buffered it
//! ends as "read eof" (`Conn::on_read_head_error`, `Ok`); with part of a pipelined head
//! buffered, as an "incomplete message" error and no answer written (`Server::on_error` has none
//! for it). Either way `into_parts` hands back the IO and the bytes read but not parsed, which
//! the next connection replays. Resumed on bytes (a request's first bytes, read while parked),
//! a connection does not park again until its next request begins, so a head that trickles in
//! is still bounded by hyper's `header_read_timeout` from its first byte.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Whether a connection has anything left to do, as [`Parking`] needs to know: kept by the
/// connection's request bookkeeping.
pub trait Idle {
    /// No request in flight, no request body left unread, and idle long enough to park.
    fn is_idle(&self) -> bool;
    /// Moves whenever a request begins or ends.
    fn changes(&self) -> u64;
    /// Told when [`Parking`] reports the made-up EOF: hyper's connection ends to park (hyper
    /// gives no access to its IO before `into_parts`, which must not come first: see
    /// [`Parking::parked`]).
    fn parking(&self);
}

/// The IO of one hyper HTTP/1 connection: reports EOF once the connection is idle and fully
/// flushed and the client has sent nothing more (see the module docs).
pub struct Parking<I, A> {
    io: I,
    activity: Arc<A>,
    /// `changes()` when `poll_flush` last returned Ready with no write since.
    flushed_at: Option<u64>,
    /// `changes()` when this connection resumed on bytes: no parking until a request begins.
    hold: Option<u64>,
    parked: bool,
}

impl<I, A: Idle> Parking<I, A> {
    /// Wraps `io`. `resumed_on_bytes`: the connection starts on bytes of a request (see the
    /// module docs: then it parks only after that request).
    pub fn new(io: I, activity: Arc<A>, resumed_on_bytes: bool) -> Self {
        let hold = resumed_on_bytes.then(|| activity.changes());
        Parking { io, activity, flushed_at: None, hold, parked: false }
    }

    /// The wrapped IO.
    pub fn into_inner(self) -> I {
        self.io
    }

    fn may_park(&self) -> bool {
        let changes = self.activity.changes();
        self.flushed_at == Some(changes) && self.hold != Some(changes) && self.activity.is_idle()
    }
}

impl<I: AsyncRead + Unpin, A: Idle> AsyncRead for Parking<I, A> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Pending if self.may_park() => {
                self.parked = true;
                self.activity.parking();
                Poll::Ready(Ok(()))
            }
            polled => polled,
        }
    }
}

impl<I: AsyncWrite + Unpin, A: Idle> AsyncWrite for Parking<I, A> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.flushed_at = None;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.flushed_at = None;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.flushed_at = Some(self.activity.changes());
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flushed_at = None;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// IO that reads `prefix` first (bytes already taken from the client), then `io`.
pub struct Rewind<I> {
    prefix: Bytes,
    io: I,
}

impl<I> Rewind<I> {
    /// Replays `prefix`, then reads `io`.
    pub fn new(prefix: Bytes, io: I) -> Self {
        Rewind { prefix, io }
    }

    /// The IO and what of the prefix was not read yet.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            // A prefix cut from hyper's read buffer holds that whole buffer: let it go now.
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The HTTP/2 client preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say it speaks, as far as they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// Not a prefix of the HTTP/2 preface: HTTP/1.
    Http1,
    /// The whole HTTP/2 preface.
    Http2,
    /// A prefix of it so far: read on.
    Undecided,
}

/// Compares `first` (a connection's first bytes) with the HTTP/2 preface as far as either goes.
pub fn preface(first: &[u8]) -> Preface {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Preface::Http1
    } else if n == H2_PREFACE.len() {
        Preface::Http2
    } else {
        Preface::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_preface_decides_as_soon_as_a_byte_differs() {
        assert_eq!(preface(b"G"), Preface::Http1);
        assert_eq!(preface(b"PUT / HTTP/1.1\r\n"), Preface::Http1);
        assert_eq!(preface(b"P"), Preface::Undecided);
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n"), Preface::Undecided);
        assert_eq!(preface(H2_PREFACE), Preface::Http2);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\0\0\0\x04");
        assert_eq!(preface(&more), Preface::Http2);
    }

    #[tokio::test]
    async fn rewind_replays_its_prefix_then_reads_the_io() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut io = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }

    /// An [`Idle`] for the tests: idle or not, and a change counter.
    struct Flag(std::sync::atomic::AtomicBool, std::sync::atomic::AtomicU64, std::sync::atomic::AtomicBool);

    impl Idle for Flag {
        fn is_idle(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
        fn changes(&self) -> u64 {
            self.1.load(Ordering::Relaxed)
        }
        fn parking(&self) {
            self.2.store(true, Ordering::Relaxed);
        }
    }

    /// Polls one read, once: Pending if it would wait.
    async fn poll_read_once<I: AsyncRead + Unpin>(io: &mut I) -> Poll<std::io::Result<usize>> {
        let mut buf = [0u8; 16];
        std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut rb).map_ok(|()| rb.filled().len()))
        })
        .await
    }

    #[tokio::test]
    async fn parking_waits_for_idle_and_a_flush_after_the_last_write_and_change() {
        let (_client, server) = tokio::io::duplex(64);
        let flag = Arc::new(Flag(false.into(), 0.into(), false.into()));
        let mut io = Parking::new(server, flag.clone(), false);
        assert!(poll_read_once(&mut io).await.is_pending(), "never flushed");
        io.flush().await.unwrap();
        assert!(poll_read_once(&mut io).await.is_pending(), "busy");
        flag.0.store(true, Ordering::Relaxed);
        io.write_all(b"answer").await.unwrap();
        assert!(poll_read_once(&mut io).await.is_pending(), "written, not flushed");
        io.flush().await.unwrap();
        flag.1.fetch_add(1, Ordering::Relaxed);
        assert!(poll_read_once(&mut io).await.is_pending(), "a request ended after the flush");
        io.flush().await.unwrap();
        assert!(matches!(poll_read_once(&mut io).await, Poll::Ready(Ok(0))), "idle and flushed: EOF");
        assert!(flag.2.load(Ordering::Relaxed), "told");
    }

    #[tokio::test]
    async fn a_connection_resumed_on_bytes_parks_only_after_its_next_request() {
        let (_client, server) = tokio::io::duplex(64);
        let flag = Arc::new(Flag(true.into(), 0.into(), false.into()));
        let mut io = Parking::new(server, flag.clone(), true);
        io.flush().await.unwrap();
        assert!(poll_read_once(&mut io).await.is_pending(), "held until a request");
        flag.1.fetch_add(2, Ordering::Relaxed);
        io.flush().await.unwrap();
        assert!(matches!(poll_read_once(&mut io).await, Poll::Ready(Ok(0))));
    }

    #[tokio::test]
    async fn bytes_from_the_client_are_never_hidden() {
        let (mut client, server) = tokio::io::duplex(64);
        let flag = Arc::new(Flag(true.into(), 0.into(), false.into()));
        let mut io = Parking::new(server, flag.clone(), false);
        io.flush().await.unwrap();
        client.write_all(b"GET").await.unwrap();
        assert!(matches!(poll_read_once(&mut io).await, Poll::Ready(Ok(3))));
        assert!(!flag.2.load(Ordering::Relaxed));
    }
}
