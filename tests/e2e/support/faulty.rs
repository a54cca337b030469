//! A raw-TCP upstream that misbehaves on purpose, on `127.0.0.1:0`, for the fault tests.
//!
//! Every connection serves one request (each answer says `Connection: close`, so the gateway
//! never pools a connection across a mode change). The [`Mode`] is read when a request's head
//! has arrived, and can be switched at run time ([`FaultyUpstream::set_mode`]) to show that
//! the gateway recovers on its own. [`Mode::Refuse`] is different: it closes the listening
//! socket (keeping the port bound but not listening, so connects get RST and no other socket
//! can take the port) until another mode is set.
//!
//! [`blackhole`] is a listener whose accept queue is full, so connects to it hang.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The body of an [`Mode::Ok`] answer.
pub const OK_BODY: &str = r#"{"ok":true,"from":"faulty"}"#;
/// The `Content-Length` the mid-body faults announce.
pub const DECLARED_LEN: usize = 100_000;
/// How many body bytes the mid-body faults send before failing.
pub const PARTIAL_LEN: usize = 1_000;
/// What [`Mode::Garbage`] writes instead of an HTTP answer.
pub const GARBAGE: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02\xff\xfe\xfdthis is not HTTP\r\n\r\n";

/// How the upstream treats the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// A valid `200` JSON answer ([`OK_BODY`]).
    Ok = 0,
    /// Nothing listens: connects are refused.
    Refuse = 1,
    /// Reads the request, then resets the connection (RST) without a byte of answer.
    ResetBeforeHeaders = 2,
    /// Reads the request, then closes the connection (FIN) without a byte of answer.
    CloseBeforeHeaders = 3,
    /// `200` head with `Content-Length: 100000`, [`PARTIAL_LEN`] body bytes, then RST.
    ResetMidBody = 4,
    /// Reads the request and never answers (holds the connection until the peer closes it).
    HangBeforeHeaders = 5,
    /// `200` head with `Content-Length: 100000`, [`PARTIAL_LEN`] body bytes, then silence.
    StallMidBody = 6,
    /// Writes [`GARBAGE`] (not HTTP) and closes.
    Garbage = 7,
    /// A `200` head with two different `Content-Length`s (a response-smuggling attempt).
    ConflictingLength = 8,
    /// `429` with a Palette error body and no `Retry-After`, to every request.
    TooManyRequests = 9,
    /// `429` with `Retry-After: 1`, to every request.
    TooManyRetryAfter = 10,
    /// A healthy Palette for token credentials: login and refresh answer [`FAULTY_TOKEN`]
    /// (a JWT without `exp`), every other path [`OK_BODY`].
    Palette = 11,
    /// Like [`Mode::Palette`], but the token's JWT `exp` is an hour in the past.
    PaletteExpired = 12,
}

/// The token [`Mode::Palette`] issues (a JWT with no `exp`).
pub const FAULTY_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmYXVsdHkifQ.c2lnbmF0dXJl";

impl Mode {
    fn from_u8(v: u8) -> Mode {
        match v {
            1 => Mode::Refuse,
            2 => Mode::ResetBeforeHeaders,
            3 => Mode::CloseBeforeHeaders,
            4 => Mode::ResetMidBody,
            5 => Mode::HangBeforeHeaders,
            6 => Mode::StallMidBody,
            7 => Mode::Garbage,
            8 => Mode::ConflictingLength,
            9 => Mode::TooManyRequests,
            10 => Mode::TooManyRetryAfter,
            11 => Mode::Palette,
            12 => Mode::PaletteExpired,
            _ => Mode::Ok,
        }
    }
}

/// What the accept side and the connection tasks share.
struct Shared {
    mode: AtomicU8,
    accepted: AtomicU64,
    requests: AtomicU64,
    open: AtomicUsize,
    /// When each request head arrived, with its path.
    log: Mutex<Vec<(Instant, String)>>,
    /// The gateway's start-up API key checks, answered apart (see [`crate::support::key_check_head`]).
    key_checks: AtomicU64,
    /// Cancelled on drop: every connection task ends.
    cancel: CancellationToken,
}

/// The listening side: accepting, or the port held without listening ([`Mode::Refuse`]).
enum Listening {
    Accepting(JoinHandle<()>),
    Reserved(TcpSocket),
    Switching,
}

/// A running faulty upstream; dropping it stops the listener and every connection.
pub struct FaultyUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listening: Mutex<Listening>,
}

impl FaultyUpstream {
    /// Starts on a free loopback port in `mode`.
    pub async fn start(mode: Mode) -> FaultyUpstream {
        let socket = reserve(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = socket.local_addr().expect("faulty upstream: local address");
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Ok as u8),
            accepted: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
            key_checks: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        let up = FaultyUpstream { addr, shared, listening: Mutex::new(Listening::Reserved(socket)) };
        up.set_mode(mode).await;
        up
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address it listens on (or refuses at).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the behaviour; when this returns, new connections see it.
    pub async fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
        let current = std::mem::replace(&mut *self.lock(), Listening::Switching);
        let next = match (mode, current) {
            (Mode::Refuse, Listening::Accepting(task)) => {
                task.abort();
                // The listener is closed once the aborted task has been dropped.
                let _ = task.await;
                Listening::Reserved(reserve(self.addr))
            }
            (Mode::Refuse, held) => held,
            (_, Listening::Reserved(socket)) => {
                let listener = socket.listen(1024).expect("faulty upstream: listen");
                Listening::Accepting(tokio::spawn(accept_loop(listener, self.shared.clone())))
            }
            (_, other) => other,
        };
        *self.lock() = next;
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.shared.mode.load(Ordering::SeqCst))
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Requests whose head arrived so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// When each request head arrived so far, with its path, oldest first.
    pub fn request_log(&self) -> Vec<(Instant, String)> {
        self.shared.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The gateway's start-up API key checks answered so far (not in [`FaultyUpstream::requests`]
    /// or the request log).
    pub fn key_checks(&self) -> u64 {
        self.shared.key_checks.load(Ordering::SeqCst)
    }

    /// Arrival times of the requests whose path starts with `prefix`.
    pub fn arrivals(&self, prefix: &str) -> Vec<Instant> {
        self.request_log().into_iter().filter(|(_, p)| p.starts_with(prefix)).map(|(t, _)| t).collect()
    }

    /// Connections open now (accepted and not yet closed by either side).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Waits until at most `n` connections are open; `false` if that did not happen within
    /// `within`.
    pub async fn wait_open_at_most(&self, n: usize, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            if self.open() <= n {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Listening> {
        self.listening.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Listening::Accepting(task) = std::mem::replace(&mut *self.lock(), Listening::Switching) {
            task.abort();
        }
    }
}

/// A socket bound to `addr` but not listening: connects to it are refused, and no other
/// socket can take the port meanwhile.
fn reserve(addr: SocketAddr) -> TcpSocket {
    let socket = TcpSocket::new_v4().expect("faulty upstream: socket");
    socket.set_reuseaddr(true).expect("faulty upstream: SO_REUSEADDR");
    socket.bind(addr).unwrap_or_else(|e| panic!("faulty upstream: cannot bind {addr}: {e}"));
    socket
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.open.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shared.cancel.cancelled() => {}
                _ = serve(stream, &shared) => {}
            }
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Serves the one request of a connection in the current mode.
async fn serve(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let Some((head, rest)) = read_head(&mut s).await? else {
        return Ok(());
    };
    if crate::support::key_check_head(&head) {
        // The gateway checks its API key once at start: whatever the mode, that call is
        // answered 200 and kept out of the counts, so that the faults under test are the
        // clients' requests alone.
        shared.key_checks.fetch_add(1, Ordering::SeqCst);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{OK_BODY}",
            OK_BODY.len()
        );
        s.write_all(answer.as_bytes()).await?;
        s.shutdown().await?;
        drain(&mut s).await;
        return Ok(());
    }
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let path = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    shared.log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((Instant::now(), path.clone()));
    match Mode::from_u8(shared.mode.load(Ordering::SeqCst)) {
        Mode::TooManyRequests | Mode::TooManyRetryAfter => {
            read_body(&mut s, &head, rest).await?;
            let retry = if shared.mode.load(Ordering::SeqCst) == Mode::TooManyRetryAfter as u8 {
                "retry-after: 1\r\n"
            } else {
                ""
            };
            let body = r#"{"code":"TooManyRequests","message":"slow down","ref":"faulty","details":{}}"#;
            let answer = format!(
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n{retry}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await?;
            s.shutdown().await?;
            drain(&mut s).await;
        }
        mode @ (Mode::Palette | Mode::PaletteExpired) => {
            read_body(&mut s, &head, rest).await?;
            let body = if path.starts_with("/v1/auth/") {
                let token = match mode {
                    Mode::Palette => FAULTY_TOKEN.to_string(),
                    _ => expired_token(),
                };
                format!(r#"{{"Authorization":"{token}","isMfa":false}}"#)
            } else {
                OK_BODY.to_string()
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await?;
            s.shutdown().await?;
            drain(&mut s).await;
        }
        Mode::Ok => {
            read_body(&mut s, &head, rest).await?;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{OK_BODY}",
                OK_BODY.len()
            );
            s.write_all(answer.as_bytes()).await?;
            s.shutdown().await?;
            drain(&mut s).await;
        }
        // Accepted just before the listener closed: close it, as if refused late.
        Mode::Refuse => {}
        Mode::ResetBeforeHeaders => reset(s),
        Mode::CloseBeforeHeaders => {
            s.shutdown().await?;
            drain(&mut s).await;
        }
        Mode::ResetMidBody => {
            write_partial(&mut s).await?;
            // Let the head and the first bytes reach the gateway before the reset.
            tokio::time::sleep(Duration::from_millis(100)).await;
            reset(s);
        }
        Mode::HangBeforeHeaders => drain(&mut s).await,
        Mode::StallMidBody => {
            write_partial(&mut s).await?;
            drain(&mut s).await;
        }
        Mode::Garbage => {
            s.write_all(GARBAGE).await?;
            s.shutdown().await?;
            drain(&mut s).await;
        }
        Mode::ConflictingLength => {
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 45\r\nconnection: close\r\n\r\nhelloHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await?;
            s.shutdown().await?;
            drain(&mut s).await;
        }
    }
    Ok(())
}

/// A JWT-shaped token whose `exp` claim is an hour ago.
fn expired_token() -> String {
    use base64::Engine as _;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .saturating_sub(3600);
    format!(
        "{}.{}.{}",
        e.encode(r#"{"alg":"HS256"}"#),
        e.encode(format!(r#"{{"sub":"faulty","exp":{exp}}}"#)),
        e.encode("sig")
    )
}

/// Closes with RST instead of FIN.
fn reset(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

async fn write_partial(s: &mut TcpStream) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {DECLARED_LEN}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&[b'x'; PARTIAL_LEN]).await?;
    s.flush().await
}

/// Reads until the peer closes (or the connection fails): holds the connection open.
async fn drain(s: &mut TcpStream) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Reads a request head; returns it and the bytes read past it, or `None` at EOF.
async fn read_head(s: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((String::from_utf8_lossy(&buf).into_owned(), rest)));
        }
        if buf.len() > 256 * 1024 {
            return Ok(None);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the request body that follows `head` (`Content-Length` or chunked).
async fn read_body(s: &mut TcpStream, head: &str, mut got: Vec<u8>) -> std::io::Result<()> {
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_ascii_lowercase())
        })
    };
    let mut chunk = [0u8; 8192];
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        while !got.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            got.extend_from_slice(&chunk[..n]);
        }
        return Ok(());
    }
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut left = len.saturating_sub(got.len());
    while left > 0 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        left = left.saturating_sub(n);
    }
    Ok(())
}

/// A loopback listener that never accepts and whose accept queue is full, so the kernel drops
/// new SYNs and a connect to it hangs (until the connecting side's timeout).
pub struct Blackhole {
    /// Where it "listens".
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

/// Starts a [`Blackhole`].
pub async fn blackhole() -> Blackhole {
    let socket = TcpSocket::new_v4().expect("blackhole: socket");
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("blackhole: bind");
    let listener = socket.listen(1).expect("blackhole: listen");
    let addr = listener.local_addr().expect("blackhole: address");
    let mut fillers = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("blackhole: filling connect failed: {e}"),
            // The accept queue is full: this connect hung, as the gateway's will.
            Err(_) => return Blackhole { addr, _listener: listener, _fillers: fillers },
        }
    }
    panic!("blackhole: the kernel kept accepting connections into a full queue");
}
