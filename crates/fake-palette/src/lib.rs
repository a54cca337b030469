//! A fake Palette API server: the upstream the integration tests and `--demo` run against.
//!
//! It models what `/work/shared/palette-api.md` says about Palette, on `127.0.0.1`:
//!
//! - `POST /v1/auth/authenticate[?setCookie=false]` with `{"emailId","password","org"?}` logs a
//!   [`FakeUser`] in: `200 {"Authorization": "<jwt>", "isMfa": false}`, plus
//!   `Set-Cookie: Authorization=<jwt>; Path=/; HttpOnly` unless `setCookie=false`. Bad
//!   credentials answer 401, a body that is not the expected JSON 400.
//! - `GET /v1/auth/refresh/{token}[?setCookie=false]` answers the same shape with a new token of
//!   the same session while `{token}` is valid, else 401. It needs no other credential.
//! - Tokens look like JWTs (`HS256` header; payload `sub`, `iat`, `jti` and, when
//!   [`FakePaletteConfig::token_exp_claim`] is set, `exp`; a random signature). Their validity is
//!   tracked here (issue instant + [`FakePaletteConfig::token_lifetime`], and
//!   [`FakePalette::revoke_tokens`]), whatever the `exp` claim says. Validity uses
//!   [`tokio::time::Instant`], so a paused tokio clock moves it too.
//! - Every other path needs a credential: an `ApiKey` header holding one of
//!   [`FakePaletteConfig::api_keys`], or `Authorization: <raw token>` (no `Bearer` prefix). When
//!   both are present the `ApiKey` decides. Otherwise 401; a bad key is echoed in the message
//!   (`invalid api key <key>`) as real Palette error bodies may do.
//! - `GET /v1/dashboard/projects/metadata[?name=<name>]` (authenticated) lists the projects
//!   it knows ([`FakePaletteConfig::projects`], [`FakePalette::set_projects`]), as Palette's
//!   spec says: `200 {"items": [{"metadata": {"name", "uid"}}]}`, only those named exactly
//!   `name` when it is given.
//! - Other authenticated answers: `POST` → `201 {"uid": ...}` with an `AuditUid` header; every other
//!   method → `200 {"method", "path", "query", "projectUid"}` (`query` is the raw query string or
//!   null, `projectUid` the `ProjectUid` header or null, `authenticatedWith` the kind of credential: `ApiKey` or `Authorization token`, never its value). Every authenticated answer, test hooks
//!   included, carries `Set-Cookie: fake-session=abc`, which a gateway must strip.
//! - Test hooks (authenticated like any other path):
//!   - `/v1/__fake/status/{code}`: that status with a Palette error body whose message echoes the
//!     credential header value used (`credential <value> is not allowed`); 204 and 304 have no
//!     body.
//!   - `/v1/__fake/encoded-status/{code}[?ce=identity&ce=gzip...&code=Name]`: the same error
//!     body (Palette code `Name` if given),
//!     encoded with each `ce` in turn (`gzip`, `deflate`; `identity` and unknown names leave
//!     the bytes alone), one `Content-Encoding` header per `ce`; gzip when none is given.
//!   - `/v1/__fake/secret-headers/{code}`: that status with the credential echoed in
//!     `Location`, `ETag` and `X-Echo`; a 2xx (but 204) has an ordinary body, others none.
//!   - `/v1/__fake/bytes/{n}`: `n` bytes, `Content-Length: n`, streamed in 64 KiB chunks with
//!     flat memory; the byte at offset `i` is `i % 256`.
//!   - `/v1/__fake/slow/{ms}`: waits `ms` milliseconds, then answers like an ordinary path.
//!   - `/v1/__fake/headers?cache-control=V&set-cookie=V&vary=V`: an ordinary `200` answer that
//!     also carries each header given (values as written in the query, undecoded).
//!   - `/v1/__fake/echo-body`: `200` with the request body streamed back as it arrives (full
//!     duplex, so bodies of any size work) and its `Content-Type` kept.
//! - Errors have Palette's shape `{"code", "message", "ref", "details": {}}`, JSON.
//!
//! Every request is recorded ([`FakePalette::requests`]) with its body's first 1 MiB (the rest
//! is read and dropped), before it is answered. The one exception is `echo-body`, which is
//! recorded when its request body ends, which is still before the client can see the whole
//! answer.
//!
//! # Rate limits
//!
//! With [`FakePaletteConfig::rate_limits`] set, the fake enforces Palette's documented limits
//! ("Rate limits" in `palette-api.md`), independently of the gateway's own table so that it
//! can serve as the test oracle. Every request, login and refresh included, is counted when it
//! arrives, before authentication and before its body is read (Palette limits by source IP), in
//! one token bucket per source IP and parent resource prefix:
//!
//! | counting prefix | rate |
//! | --- | --- |
//! | `/v1/auth/user/password/reset` (and below) | 2/s |
//! | `/v1/spectroclusters/{acquire,cost,usage}`, `/v1/spectroclusters/features/logFetcher`, `/v1/spectroclusters/{uid}/assets`, `/v1/spectroclusters/{uid}/download` (one bucket each, across uids) | 10/s |
//! | `/v1/spectroclusters/{uid}/profiles` (one bucket across uids), `/v1/spectroclusters` (the rest of it), `/v1/cloudconfigs`, `/v1/clusterprofiles`, `/v1/events/components` | 50/s |
//! | anything else: its first two segments (`/v1/packs`, `/v1/auth`, `/v1/events`, `/v1/__fake`...) | 10/s |
//!
//! Paths are matched segment by segment as received (no percent-decoding, empty segments
//! skipped). A bucket holds `rate` × [`FakeRateLimits::burst_seconds`] tokens (Palette's
//! "burst 5": 50 at 10/s), starts full and refills continuously at `rate` per second on
//! [`tokio::time::Instant`] (a paused tokio clock holds it still). A request that finds less
//! than one whole token takes none and is answered `429` with a Palette error body
//! (`TooManyRequests`), no `Retry-After` (Palette documents none) and no session cookie; it is
//! still recorded. [`FakePalette::force_429`] makes the next requests that need a credential
//! (all but login and refresh) answer the same 429, before authentication, with or without rate
//! limits. [`FakePalette::throttled`] and [`FakePalette::throttled_by_prefix`] count both kinds.

mod body;
mod handler;
mod limits;
mod tokens;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::limits::Limiter;
use self::tokens::TokenStore;

/// How the fake Palette behaves: who may log in, which keys work, how long tokens live.
#[derive(Clone, Debug)]
pub struct FakePaletteConfig {
    /// `ApiKey` header values accepted (the raw keys). Default: none.
    pub api_keys: Vec<String>,
    /// Accepted logins for `POST /v1/auth/authenticate`. Default: none.
    pub users: Vec<FakeUser>,
    /// How long an issued token stays valid, counted from its issue. Default: 15 minutes, as on
    /// Palette; tests use seconds.
    pub token_lifetime: Duration,
    /// `true`: the token payload carries `exp` (unix seconds, the end of its validity rounded
    /// down); `false`: no `exp` claim, as Palette may do. Default: `true`.
    pub token_exp_claim: bool,
    /// Serve HTTPS with this config instead of plain HTTP. The caller builds it (certificate,
    /// ALPN `h2` + `http/1.1`). Default: none (plain HTTP, HTTP/1.1 and h2c).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Enforce Palette's per-source-IP rate limits (see the module docs). Default: `None`, no
    /// rate limiting ([`FakePalette::force_429`] works either way).
    pub rate_limits: Option<FakeRateLimits>,
    /// The projects `GET /v1/dashboard/projects/metadata` lists. Default: none.
    pub projects: Vec<FakeProject>,
    /// Every authenticated answer carries `Set-Cookie: fake-session=abc` (see the module docs).
    /// `false`: none does (as for a Palette that sets no cookie on API answers), except the
    /// `headers` hook's when asked. Default: `true`.
    pub session_cookie: bool,
}

/// A project the fake knows: what Palette's project metadata says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeProject {
    /// Its name (two projects may share one, to test ambiguity).
    pub name: String,
    /// Its uid.
    pub uid: String,
}

impl FakeProject {
    /// A project `name` with uid `uid`.
    pub fn new(name: &str, uid: &str) -> Self {
        FakeProject { name: name.into(), uid: uid.into() }
    }
}

impl Default for FakePaletteConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            users: Vec::new(),
            token_lifetime: Duration::from_secs(15 * 60),
            token_exp_claim: true,
            tls: None,
            rate_limits: None,
            projects: Vec::new(),
            session_cookie: true,
        }
    }
}

/// How strictly the fake enforces Palette's rate limits.
#[derive(Clone, Debug)]
pub struct FakeRateLimits {
    /// Bucket capacity in seconds of rate: Palette documents "burst 5" (5 seconds' worth: 50
    /// requests at 10/s). Tests may use a stricter 1.0. Should be positive; a capacity below one
    /// request (rate × this < 1) refuses every request of that prefix.
    pub burst_seconds: f64,
}

impl Default for FakeRateLimits {
    fn default() -> Self {
        Self { burst_seconds: 5.0 }
    }
}

/// One accepted login.
#[derive(Clone)]
pub struct FakeUser {
    /// The `emailId` to log in with (compared ignoring ASCII case).
    pub email: String,
    /// The password (compared exactly).
    pub password: String,
    /// The tenant's org name: when set, the login must give this `org`; when `None`, any or no
    /// `org` is accepted.
    pub org: Option<String>,
}

impl fmt::Debug for FakeUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeUser")
            .field("email", &self.email)
            .field("password", &"[redacted]")
            .field("org", &self.org)
            .finish()
    }
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The request method.
    pub method: http::Method,
    /// The path and query exactly as received (`/v1/x?a=b`).
    pub path_and_query: String,
    /// The HTTP version the request came with.
    pub version: http::Version,
    /// The request headers as received (HTTP/2 pseudo-headers are not headers).
    pub headers: http::HeaderMap,
    /// The body's first [`RECORDED_BODY_LIMIT`] bytes.
    pub body: bytes::Bytes,
}

/// How much of each request body [`RecordedRequest::body`] keeps (1 MiB).
pub const RECORDED_BODY_LIMIT: usize = 1024 * 1024;

/// A running fake Palette. Dropping it, or [`FakePalette::shutdown`], stops the server and
/// closes its connections.
pub struct FakePalette {
    addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    /// Tells the accept loop and every connection task to stop.
    cancel: CancellationToken,
    /// The connection tasks, so [`FakePalette::shutdown`] can wait for them.
    connections: TaskTracker,
    /// The accept loop; it owns the listener. `None` once [`FakePalette::shutdown`] took it.
    accept: Option<JoinHandle<()>>,
}

/// What the request handler shares with the handle.
struct State {
    api_keys: Vec<String>,
    users: Vec<FakeUser>,
    token_lifetime: Duration,
    token_exp_claim: bool,
    session_cookie: bool,
    logins: AtomicU64,
    /// TCP connections accepted (to show that a client pools and reuses them).
    connections: AtomicU64,
    login_attempts: AtomicU64,
    refreshes: AtomicU64,
    auth_down: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
    tokens: Mutex<TokenStore>,
    /// Rate limit buckets, forced 429s and the throttled counts.
    limits: Mutex<Limiter>,
    /// One 64 KiB chunk of the `bytes` hook's pattern, shared by every answer.
    pattern: Bytes,
    /// Cancelled on shutdown; slow answers stop waiting.
    cancel: CancellationToken,
    /// The projects the metadata lookup lists.
    projects: Mutex<Vec<FakeProject>>,
}

impl State {
    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // A panic while holding the lock cannot leave the Vec inconsistent: keep going.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tokens(&self) -> MutexGuard<'_, TokenStore> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn limits(&self) -> MutexGuard<'_, Limiter> {
        self.limits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn projects(&self) -> MutexGuard<'_, Vec<FakeProject>> {
        self.projects.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl FakePalette {
    /// Starts the fake on `127.0.0.1` with a free port.
    pub async fn start(cfg: FakePaletteConfig) -> std::io::Result<FakePalette> {
        Self::start_on(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts the fake on `addr` (port 0 picks a free port).
    pub async fn start_on(cfg: FakePaletteConfig, addr: SocketAddr) -> std::io::Result<FakePalette> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let state = Arc::new(State {
            api_keys: cfg.api_keys,
            users: cfg.users,
            token_lifetime: cfg.token_lifetime,
            token_exp_claim: cfg.token_exp_claim,
            session_cookie: cfg.session_cookie,
            logins: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            login_attempts: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            auth_down: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            tokens: Mutex::new(TokenStore::default()),
            limits: Mutex::new(Limiter::new(cfg.rate_limits.map(|r| r.burst_seconds))),
            pattern: body::pattern_chunk(),
            cancel: cancel.clone(),
            projects: Mutex::new(cfg.projects),
        });
        let tls = cfg.tls.map(TlsAcceptor::from);
        let connections = TaskTracker::new();
        let accept =
            tokio::spawn(accept_loop(listener, tls.clone(), Arc::clone(&state), cancel.clone(), connections.clone()));
        tracing::debug!(%addr, tls = tls.is_some(), "fake Palette listening");
        Ok(FakePalette { addr, tls: tls.is_some(), state, cancel, connections, accept: Some(accept) })
    }

    /// The address the fake listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL: `http://127.0.0.1:PORT`, or `https://localhost:PORT` with TLS (so the
    /// certificate's name is `localhost`). An unspecified bind address is given as loopback.
    pub fn url(&self) -> String {
        let port = self.addr.port();
        if self.tls {
            return format!("https://localhost:{port}");
        }
        match self.addr {
            SocketAddr::V4(a) if a.ip().is_unspecified() => format!("http://127.0.0.1:{port}"),
            SocketAddr::V6(a) if a.ip().is_unspecified() => format!("http://[::1]:{port}"),
            a => format!("http://{a}"),
        }
    }

    /// Successful logins (`POST /v1/auth/authenticate` answered 200).
    pub fn logins(&self) -> u64 {
        self.state.logins.load(Ordering::SeqCst)
    }

    /// Every `POST /v1/auth/authenticate`, whatever its answer.
    pub fn login_attempts(&self) -> u64 {
        self.state.login_attempts.load(Ordering::SeqCst)
    }

    /// Successful refreshes (`GET /v1/auth/refresh/{token}` answered 200).
    pub fn refreshes(&self) -> u64 {
        self.state.refreshes.load(Ordering::SeqCst)
    }

    /// Every request received so far, in the order they were recorded (auth calls included).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests().clone()
    }

    /// Replaces the projects the metadata lookup lists (a project created, renamed, deleted).
    pub fn set_projects(&self, projects: Vec<FakeProject>) {
        *self.state.projects() = projects;
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state.requests().clear();
    }

    /// Makes every token issued so far invalid (401), as if Palette revoked the sessions. Tokens
    /// issued afterwards work.
    pub fn revoke_tokens(&self) {
        self.state.tokens().revoke_all();
    }

    /// While `down`, login and refresh answer 503 with a Palette error body.
    pub fn set_auth_down(&self, down: bool) {
        self.state.auth_down.store(down, Ordering::SeqCst);
    }

    /// Every token issued so far, oldest first (tests scan logs for them).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.tokens().issued()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// 429s answered so far, because of the rate limits or [`FakePalette::force_429`].
    pub fn throttled(&self) -> u64 {
        self.state.limits().throttled()
    }

    /// [`FakePalette::throttled`] per counting prefix (`/v1/packs`,
    /// `/v1/spectroclusters/{uid}/assets`...), sorted by prefix; prefixes never throttled are
    /// left out.
    pub fn throttled_by_prefix(&self) -> Vec<(String, u64)> {
        self.state.limits().throttled_by_prefix()
    }

    /// The next `n` requests that need a credential (everything but login and refresh) answer
    /// 429 `TooManyRequests` with no `Retry-After`, whatever their credential, as if Palette's
    /// rate limiter refused them. Replaces any count still pending (`0` cancels). A request the
    /// rate limits already refuse does not use one up.
    pub fn force_429(&self, n: u64) {
        self.state.limits().force(n);
    }

    /// Stops the server: when this returns the listener is closed and every connection task
    /// has ended. (Dropping the handle stops it too, without waiting.)
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.connections.close();
        if let Some(accept) = self.accept.take() {
            // The loop ends on the cancellation; a JoinError would only mean it panicked.
            let _ = accept.await;
        }
        self.connections.wait().await;
    }
}

impl Drop for FakePalette {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
    }
}

impl fmt::Debug for FakePalette {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakePalette").field("url", &self.url()).finish_non_exhaustive()
    }
}

/// Accepts connections until cancelled; each one is served by its own tracked task.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    cancel: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                state.connections.fetch_add(1, Ordering::Relaxed);
                connections.spawn(serve_connection(stream, peer, tls.clone(), Arc::clone(&state), cancel.clone()));
            }
            Err(err) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%err, "fake Palette: accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Serves one connection (TLS handshake first when configured) until it ends or the server
/// is cancelled.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    state: Arc<State>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let served = async {
        match tls {
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(stream) => serve_io(TokioIo::new(stream), peer.ip(), state).await,
                Err(err) => tracing::debug!(%peer, %err, "fake Palette: TLS handshake failed"),
            },
            None => serve_io(TokioIo::new(stream), peer.ip(), state).await,
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = served => {}
    }
}

/// Runs hyper's HTTP/1.1 + HTTP/2 server on one connection from `peer`.
async fn serve_io<I>(io: I, peer: IpAddr, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = Arc::clone(&state);
        async move { Ok::<_, std::convert::Infallible>(handler::handle(state, peer, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    if let Err(err) = builder.serve_connection(io, service).await {
        tracing::debug!(%err, "fake Palette: connection ended with an error");
    }
}
