//! bench-upstream: the fixed, fast upstream of palette-gateway's benchmark harness.
//!
//! One thread (tokio `current_thread`), plain HTTP on loopback, HTTP/1.1 keep-alive and h2c
//! (prior knowledge) on the same port. Every path answers the same small JSON body, except:
//!
//! - `.../big/{n}`: `n` bytes (`Content-Length: n`), streamed in 64 KiB chunks from one shared
//!   buffer, so memory stays flat whatever `n` is (the 1 GiB time-to-first-byte test).
//! - `POST /v1/auth/authenticate` and `GET /v1/auth/refresh/{token}`: Palette's login and refresh
//!   answers (`{"Authorization": "<token>"}`), for the token-refresh test. Tokens are opaque
//!   (no JWT `exp`), valid for `--token-lifetime-ms`; `--auth-delay-ms` makes each login and
//!   refresh that slow, like a real Palette.
//!   Each login and refresh is logged on stderr with its unix time in microseconds.
//! - `/__stats`: counters as JSON (connections accepted, answers, logins, refreshes, refused).
//!
//! With `--expect-apikey KEY` every other request must carry `ApiKey: KEY` or (with a token
//! lifetime set) `Authorization: <a live token>`, and never a client's `Bearer` key; with
//! `--expect-project UID` it must carry `ProjectUid: UID` (but `GET /v1/users/info`, tenant-scoped). Anything else is answered 401/403, so
//! the load generator's non-2xx count shows a proxy that does not do the credential swap.
//!
//! Usage: bench-upstream [--listen 127.0.0.1:18090] [--expect-apikey KEY] [--expect-project UID]
//!                       [--token-lifetime-ms MS] [--auth-delay-ms MS]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The body every ordinary request gets (the shape of a Palette list answer).
const BODY: &[u8] = br#"{"items":[{"metadata":{"uid":"c1","name":"demo"}}],"listMeta":{"count":1,"continue":""}}"#;
const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct Stats {
    conns: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    logins: AtomicU64,
    refreshes: AtomicU64,
    big: AtomicU64,
}

struct Settings {
    expect_apikey: Option<String>,
    expect_project: Option<String>,
    token_lifetime: Option<Duration>,
    auth_delay: Duration,
}

struct State {
    settings: Settings,
    stats: Stats,
    /// Live tokens and when they expire (token mode only).
    tokens: Mutex<HashMap<String, Instant>>,
    next_token: AtomicU64,
    started: Instant,
    chunk: Bytes,
}

type RespBody = Either<Full<Bytes>, BigBody>;

/// `n` bytes in 64 KiB slices of one shared buffer.
struct BigBody {
    remaining: u64,
    chunk: Bytes,
}

impl Body for BigBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut r = Response::new(Either::Left(Full::new(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn refuse(state: &State, status: StatusCode, why: &str) -> Response<RespBody> {
    state.stats.refused.fetch_add(1, Ordering::Relaxed);
    full(status, format!(r#"{{"code":"BenchRefused","message":"{why}"}}"#))
}

impl State {
    fn issue_token(&self) -> String {
        let n = self.next_token.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let salt = (self.started.elapsed().as_nanos() as u64) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let token = format!("benchtok-{n}-{salt:x}");
        let lifetime = self.settings.token_lifetime.unwrap_or(Duration::from_secs(900));
        let mut tokens = self.tokens.lock().unwrap();
        tokens.retain(|_, exp| *exp > now);
        tokens.insert(token.clone(), now + lifetime);
        token
    }

    fn token_is_live(&self, token: &str) -> bool {
        self.tokens.lock().unwrap().get(token).is_some_and(|exp| *exp > Instant::now())
    }

    /// The credential check of an ordinary request; `None` when it passes.
    fn check(&self, req: &Request<Incoming>) -> Option<Response<RespBody>> {
        let h = req.headers();
        if let Some(want) = &self.settings.expect_apikey {
            match (h.get("apikey"), h.get(header::AUTHORIZATION)) {
                (Some(k), None) if k.as_bytes() == want.as_bytes() => {}
                (Some(_), _) => return Some(refuse(self, StatusCode::UNAUTHORIZED, "wrong ApiKey")),
                (None, Some(a)) if self.settings.token_lifetime.is_some() => {
                    let a = a.to_str().unwrap_or("");
                    if a.starts_with("Bearer ") || !self.token_is_live(a) {
                        return Some(refuse(self, StatusCode::UNAUTHORIZED, "token not live"));
                    }
                }
                _ => return Some(refuse(self, StatusCode::UNAUTHORIZED, "no upstream credential")),
            }
        }
        // The gateway's start-up API key check (`GET /v1/users/info`, the key's own user) is
        // tenant-scoped, as in Palette: no project is sent or expected.
        if let Some(want) = self.settings.expect_project.as_ref().filter(|_| req.uri().path() != "/v1/users/info") {
            if h.get("projectuid").map(|v| v.as_bytes()) != Some(want.as_bytes()) {
                return Some(refuse(self, StatusCode::FORBIDDEN, "wrong ProjectUid"));
            }
        }
        None
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<RespBody>, Infallible> {
    let path = req.uri().path();
    if path.starts_with("/v1/auth/") {
        return Ok(auth(state, req).await);
    }
    if path == "/__stats" {
        let s = &state.stats;
        let body = format!(
            r#"{{"conns":{},"ok":{},"refused":{},"logins":{},"refreshes":{},"big":{}}}"#,
            s.conns.load(Ordering::Relaxed),
            s.ok.load(Ordering::Relaxed),
            s.refused.load(Ordering::Relaxed),
            s.logins.load(Ordering::Relaxed),
            s.refreshes.load(Ordering::Relaxed),
            s.big.load(Ordering::Relaxed)
        );
        return Ok(full(StatusCode::OK, body));
    }
    if let Some(resp) = state.check(&req) {
        return Ok(resp);
    }
    if let Some(idx) = path.rfind("/big/") {
        let Ok(n) = path[idx + 5..].parse::<u64>() else {
            return Ok(refuse(&state, StatusCode::BAD_REQUEST, "big/{n}: n is not a number"));
        };
        state.stats.big.fetch_add(1, Ordering::Relaxed);
        let mut r = Response::new(Either::Right(BigBody { remaining: n, chunk: state.chunk.clone() }));
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        return Ok(r);
    }
    state.stats.ok.fetch_add(1, Ordering::Relaxed);
    Ok(full(StatusCode::OK, Bytes::from_static(BODY)))
}

/// Palette's login and refresh, as far as the gateway uses them.
async fn auth(state: Arc<State>, req: Request<Incoming>) -> Response<RespBody> {
    let received = Instant::now();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    // Read (and drop) the login body.
    let _ = req.into_body().collect().await;
    let refresh = path.strip_prefix("/v1/auth/refresh/");
    let ok = match (&method, refresh) {
        (&Method::POST, None) if path == "/v1/auth/authenticate" => true,
        (&Method::GET, Some(tok)) => state.token_is_live(tok),
        _ => return refuse(&state, StatusCode::NOT_FOUND, "no such auth call"),
    };
    if !ok {
        return refuse(&state, StatusCode::UNAUTHORIZED, "refresh of a token that is not live");
    }
    if !state.settings.auth_delay.is_zero() {
        tokio::time::sleep(state.settings.auth_delay).await;
    }
    let token = state.issue_token();
    let kind = if refresh.is_some() {
        state.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        "refresh"
    } else {
        state.stats.logins.fetch_add(1, Ordering::Relaxed);
        "login"
    };
    // One line per login/refresh, for the harness to line refreshes up with request latencies.
    let unix_us = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
    eprintln!("bench-upstream: {kind} answered at {unix_us} (received {} us earlier)", received.elapsed().as_micros());
    full(StatusCode::OK, format!(r#"{{"Authorization":"{token}","isMfa":false}}"#))
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-upstream [--listen ADDR] [--expect-apikey KEY] [--expect-project UID] \
         [--token-lifetime-ms MS] [--auth-delay-ms MS]"
    );
    std::process::exit(2)
}

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:18090".parse().unwrap();
    let mut settings =
        Settings { expect_apikey: None, expect_project: None, token_lifetime: None, auth_delay: Duration::ZERO };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = val().parse().unwrap_or_else(|_| usage()),
            "--expect-apikey" => settings.expect_apikey = Some(val()),
            "--expect-project" => settings.expect_project = Some(val()),
            "--token-lifetime-ms" => {
                settings.token_lifetime = Some(Duration::from_millis(val().parse().unwrap_or_else(|_| usage())))
            }
            "--auth-delay-ms" => settings.auth_delay = Duration::from_millis(val().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    if !listen.ip().is_loopback() {
        eprintln!("bench-upstream: refusing to listen on {listen}: loopback only");
        std::process::exit(2);
    }
    let state = Arc::new(State {
        settings,
        stats: Stats::default(),
        tokens: Mutex::new(HashMap::new()),
        next_token: AtomicU64::new(1),
        started: Instant::now(),
        chunk: Bytes::from(vec![b'x'; CHUNK]),
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(listen).await.unwrap_or_else(|e| {
            eprintln!("bench-upstream: cannot listen on {listen}: {e}");
            std::process::exit(1)
        });
        eprintln!("bench-upstream: listening on {listen}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("bench-upstream: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            state.stats.conns.fetch_add(1, Ordering::Relaxed);
            let state = state.clone();
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(true);
                builder.http2().max_concurrent_streams(1024);
                let svc = service_fn(move |req| handle(state.clone(), req));
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
}
