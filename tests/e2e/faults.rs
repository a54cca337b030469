//! Upstream faults and client disconnects (issue 4, "Fault and attack tests" and "Overload and
//! slow clients"): a sick upstream gets its documented status within its timeout, the gateway
//! recovers alone when the upstream does, a client that goes away releases everything, and a
//! long mixed run with random faults and disconnects leaks nothing.
//!
//! The sick upstream is `support/faulty.rs`, a raw-TCP server whose behaviour is switched at
//! run time; the mixed run uses the fake Palette and its hooks. Login down at start-up and a
//! token refused early are in `tests/e2e/tokens.rs`; clients leaving mid-download or mid-upload in
//! `tests/e2e/server_limits.rs`.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::faulty::{FaultyUpstream, Mode, DECLARED_LEN, OK_BODY, PARTIAL_LEN};
use crate::support::*;
use bytes::Bytes;
use palette_gateway::app::RunningGateway;
use palette_gateway::auth::key_hash_string;
use palette_gateway::config;
use rand::{Rng, SeedableRng};

/// The gateway's `request_timeout` in these tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// The gateway's `connect_timeout` in these tests.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The gateway's `server.idle_timeout` in these tests (the longest any other timeout could be).
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A gateway in front of an arbitrary upstream, with one API-key client (`admin`, any project)
/// and no Palette budget. (Not the standard rules: their login credential would send its own
/// login requests to the sick upstream and blur what the tests count.)
struct Gw {
    gateway: RunningGateway,
    admin: String,
    http: reqwest::Client,
}

/// A login credential and the `bot` client using it, for [`Gw::start_with`].
fn login_rules() -> String {
    format!(
        "\n[credentials.ops]\nemail = \"{OPS_EMAIL}\"\npassword_env = \"PALETTE_PASSWORD\"\n\n\
         [[clients]]\nname = \"bot\"\nkeys = [\"{}\"]\ncredential = \"ops\"\nprojects = [\"*\"]\n",
        key_hash_string(BOT_KEY)
    )
}

impl Gw {
    async fn start(upstream_url: &str, request_timeout: &str) -> Gw {
        Gw::start_with(upstream_url, request_timeout, "").await
    }

    /// [`Gw::start`] with more config appended (credentials, clients).
    async fn start_with(upstream_url: &str, request_timeout: &str, extra: &str) -> Gw {
        init_logs();
        let text = format!(
            r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
idle_timeout = "{idle}"

[upstream]
url = "{upstream_url}"
connect_timeout = "{connect}"
request_timeout = "{request_timeout}"
body_idle_timeout = "{request_timeout}"

[upstream.limits]
preset = "none"

[credentials.default]
api_key_env = "PALETTE_API_KEY"

[[clients]]
name = "admin"
keys = ["{admin}"]
projects = ["*"]
{extra}"#,
            idle = humantime::format_duration(IDLE_TIMEOUT),
            connect = humantime::format_duration(CONNECT_TIMEOUT),
            admin = key_hash_string(ADMIN_KEY),
        );
        let cfg = config::load_str(&text, Path::new("."), &standard_env())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        let gateway = RunningGateway::start(cfg).await.expect("gateway starts");
        let admin = format!("http://{}", gateway.admin_addr);
        Gw { gateway, admin, http: client() }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.proxy_addr)
    }

    /// A GET as the admin client; panics if the head takes longer than `within`.
    async fn get(&self, path: &str, within: Duration) -> reqwest::Response {
        let req = self.http.get(self.url(path)).header("ApiKey", ADMIN_KEY).send();
        bounded(within, req, path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The in-flight gauge.
    async fn inflight(&self) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.admin)).send().await.unwrap().text().await.unwrap();
        metric(&parse_metrics(&text), "palette_gateway_inflight_requests", &[])
    }

    /// Waits (up to 5 s) for the in-flight gauge to reach 0; returns its last value.
    async fn settle(&self) -> f64 {
        settle_inflight(|| self.inflight()).await
    }

    /// A request that must succeed with the upstream's own answer.
    async fn assert_recovered(&self, upstream: &FaultyUpstream) {
        let r = self.get("/v1/users", REQUEST_TIMEOUT * 3).await;
        assert_eq!(r.status(), 200, "no recovery with the upstream back in {:?}", upstream.mode());
        let body = bounded(Duration::from_secs(3), r.text(), "recovery body").await.unwrap();
        assert_eq!(body, OK_BODY);
    }
}

/// Polls `inflight` until it reads 0, at most 5 s; returns the last value read.
async fn settle_inflight<F, Fut>(inflight: F) -> f64
where
    F: Fn() -> Fut,
    Fut: Future<Output = f64>,
{
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let v = inflight().await;
        if v == 0.0 || Instant::now() >= until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut`, failing the test if it takes longer than `within` (nothing may hang).
async fn bounded<T>(within: Duration, fut: impl Future<Output = T>, what: &str) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {within:?}"),
    }
}

/// Checks a gateway error answer: status, Palette shape, `ref` = the request id.
async fn assert_gateway_error(r: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status(), status);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = bounded(Duration::from_secs(3), r.json(), "error body").await.unwrap();
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["ref"], rid.as_str(), "{v}");
    v["message"].as_str().unwrap_or_default().to_string()
}

/// An upstream that refuses connections: the client gets 502 `UpstreamUnavailable` at once
/// (no waiting for a timeout); when the upstream listens again, the next request succeeds
/// without a restart.
#[tokio::test]
async fn refused_connection_is_502_unavailable_then_recovers() {
    let up = FaultyUpstream::start(Mode::Ok).await;
    let gw = Gw::start(&up.url(), "1s").await;
    gw.assert_recovered(&up).await;
    up.set_mode(Mode::Refuse).await;
    for _ in 0..3 {
        let started = Instant::now();
        let r = gw.get("/v1/users", CONNECT_TIMEOUT * 2).await;
        assert_gateway_error(r, 502, "UpstreamUnavailable").await;
        assert!(started.elapsed() < CONNECT_TIMEOUT, "a refused connect took {:?}", started.elapsed());
    }
    up.set_mode(Mode::Ok).await;
    gw.assert_recovered(&up).await;
    assert_eq!(gw.settle().await, 0.0);
}

/// An upstream whose accept queue is full (SYNs dropped, as behind a dead load balancer): the
/// client gets 502 `UpstreamUnavailable` once `connect_timeout` passes, not later.
#[tokio::test]
async fn blackholed_connect_is_502_within_connect_timeout() {
    let hole = faulty::blackhole().await;
    let gw = Gw::start(&format!("http://{}", hole.addr), "5s").await;
    let started = Instant::now();
    let r = gw.get("/v1/users", CONNECT_TIMEOUT * 4).await;
    let took = started.elapsed();
    let msg = assert_gateway_error(r, 502, "UpstreamUnavailable").await;
    assert!(took >= CONNECT_TIMEOUT - Duration::from_millis(50), "answered before the connect timeout: {took:?}");
    assert!(took < CONNECT_TIMEOUT * 3, "connect timeout of {CONNECT_TIMEOUT:?} took {took:?}");
    assert!(msg.contains("connect"), "{msg}");
    assert_eq!(gw.settle().await, 0.0);
}

/// The upstream takes the request and drops the connection before answering (RST, or a plain
/// close): 502 `UpstreamError` at once; then the upstream heals and so does the gateway.
#[tokio::test]
async fn dropped_before_headers_is_502_upstream_error_then_recovers() {
    let up = FaultyUpstream::start(Mode::Ok).await;
    let gw = Gw::start(&up.url(), "1s").await;
    for mode in [Mode::ResetBeforeHeaders, Mode::CloseBeforeHeaders] {
        up.set_mode(mode).await;
        let before = up.requests();
        let started = Instant::now();
        let r = gw.get("/v1/users", REQUEST_TIMEOUT).await;
        assert_gateway_error(r, 502, "UpstreamError").await;
        assert!(started.elapsed() < REQUEST_TIMEOUT, "{mode:?}: took {:?}", started.elapsed());
        // A broken exchange is not retried behind the client's back (the request may have
        // had effects upstream).
        assert_eq!(up.requests() - before, 1, "{mode:?}: the upstream saw the request more than once");
        up.set_mode(Mode::Ok).await;
        gw.assert_recovered(&up).await;
    }
    assert_eq!(gw.settle().await, 0.0);
}

/// The upstream answers bytes that are not HTTP, or a head with two different
/// `Content-Length`s (response smuggling): 502 `UpstreamError`, nothing of it reaches the
/// client; then the upstream heals and so does the gateway.
#[tokio::test]
async fn garbage_answer_is_502_upstream_error_then_recovers() {
    let up = FaultyUpstream::start(Mode::Garbage).await;
    let gw = Gw::start(&up.url(), "1s").await;
    for mode in [Mode::Garbage, Mode::ConflictingLength] {
        up.set_mode(mode).await;
        let r = gw.get("/v1/users", REQUEST_TIMEOUT).await;
        assert_eq!(r.status(), 502, "{mode:?}");
        let text = bounded(Duration::from_secs(3), r.text(), "error body").await.unwrap();
        assert!(!text.contains("SSH-2.0") && !text.contains("hello"), "{mode:?}: upstream bytes leaked: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], "UpstreamError", "{mode:?}: {v}");
        up.set_mode(Mode::Ok).await;
        gw.assert_recovered(&up).await;
    }
    assert_eq!(gw.settle().await, 0.0);
}

/// The upstream takes the request and never answers: 504 `UpstreamTimeout` after
/// `request_timeout` (not before, not much after), the gateway closes the hung upstream
/// connection, and once the upstream answers again so does the gateway.
#[tokio::test]
async fn hang_before_headers_is_504_within_request_timeout_then_recovers() {
    let up = FaultyUpstream::start(Mode::HangBeforeHeaders).await;
    let gw = Gw::start(&up.url(), "1s").await;
    let started = Instant::now();
    let r = gw.get("/v1/users", REQUEST_TIMEOUT * 3).await;
    let took = started.elapsed();
    assert_gateway_error(r, 504, "UpstreamTimeout").await;
    assert!(took >= REQUEST_TIMEOUT - Duration::from_millis(50), "504 before the timeout: {took:?}");
    assert!(took < REQUEST_TIMEOUT * 2, "request_timeout of {REQUEST_TIMEOUT:?} took {took:?}");
    assert!(up.wait_open_at_most(0, Duration::from_secs(2)).await, "the timed-out upstream connection stayed open");
    up.set_mode(Mode::Ok).await;
    gw.assert_recovered(&up).await;
    assert_eq!(gw.settle().await, 0.0);
}

/// A login whose answer sends its head and then stalls the body: requests on that credential
/// get 503 `CredentialUnavailable` within about `request_timeout` (not a hang), API-key
/// clients are served meanwhile, and once Palette answers logins again the gateway recovers
/// by itself.
#[tokio::test]
async fn stalled_login_gives_503_within_the_timeout_then_recovers() {
    let up = FaultyUpstream::start(Mode::StallMidBody).await;
    let gw = Gw::start_with(&up.url(), "1s", &login_rules()).await;
    for _ in 0..2 {
        let started = Instant::now();
        let req = gw.http.get(gw.url("/v1/users")).header("ApiKey", BOT_KEY).send();
        let r = bounded(REQUEST_TIMEOUT * 4, req, "a request waiting on a stalled login").await.unwrap();
        let msg = assert_gateway_error(r, 503, "CredentialUnavailable").await;
        assert!(started.elapsed() < REQUEST_TIMEOUT * 2 + Duration::from_millis(500), "took {:?}", started.elapsed());
        assert!(!msg.contains(OPS_PASSWORD));
    }
    let readyz = gw.http.get(format!("{}/readyz", gw.admin)).send().await.unwrap();
    assert_eq!(readyz.status(), 503);
    up.set_mode(Mode::Palette).await;
    let recovered = eventually(Duration::from_secs(10), || async {
        let r = gw.http.get(gw.url("/v1/users")).header("ApiKey", BOT_KEY).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(recovered, "no recovery once Palette answered logins again");
    assert!(up.request_log().iter().any(|(_, p)| p.starts_with("/v1/auth/authenticate")));
}

/// A login stalled mid-body with a long `request_timeout` (30 s) does not hold shutdown: the
/// token task stops at cancellation even in the middle of the call.
#[tokio::test]
async fn stalled_login_does_not_hold_shutdown() {
    let up = FaultyUpstream::start(Mode::StallMidBody).await;
    let gw = Gw::start_with(&up.url(), "30s", &login_rules()).await;
    let logging_in = eventually(Duration::from_secs(5), || async {
        up.request_log().iter().any(|(_, p)| p.starts_with("/v1/auth/"))
    })
    .await;
    assert!(logging_in, "the login never reached the upstream");
    let started = Instant::now();
    bounded(Duration::from_secs(5), gw.gateway.shutdown(), "shutdown with a stalled login").await;
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

/// Palette refuses every login (429) while a tool keeps calling on that credential
/// (`preset = "none"`, so no budget bucket paces `/v1/auth`): logins still start at least 1 s
/// apart, however many requests want a token, and each request gets a prompt 503.
#[tokio::test]
async fn failing_logins_are_spaced_whoever_asks() {
    let up = FaultyUpstream::start(Mode::TooManyRequests).await;
    let gw = Gw::start_with(&up.url(), "1s", &login_rules()).await;
    let until = Instant::now() + Duration::from_millis(3500);
    let mut n = 0;
    while Instant::now() < until {
        let req = gw.http.get(gw.url("/v1/users")).header("ApiKey", BOT_KEY).send();
        let r = bounded(REQUEST_TIMEOUT * 2, req, "a request while logins fail").await.unwrap();
        assert_eq!(r.status(), 503);
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(n > 20);
    let logins = up.arrivals("/v1/auth/");
    assert!(!logins.is_empty() && logins.len() <= 4, "{} logins in 3.5 s", logins.len());
    for w in logins.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(gap >= Duration::from_millis(950), "two logins {gap:?} apart");
    }
    assert!(up.arrivals("/v1/users").is_empty(), "a request went upstream without a token");
}

/// A login answering a JWT whose `exp` is an hour in the past is a failed login: `/readyz`
/// stays 503 naming a possible clock skew, the token-rejected metric counts it, no expiry is
/// published, and requests on that credential get 503 rather than a token Palette will refuse.
#[tokio::test]
async fn expired_jwt_is_a_failed_login_naming_clock_skew() {
    let up = FaultyUpstream::start(Mode::PaletteExpired).await;
    let gw = Gw::start_with(&up.url(), "1s", &login_rules()).await;
    let mut last = serde_json::Value::Null;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let r = gw.http.get(format!("{}/readyz", gw.admin)).send().await.unwrap();
        assert_eq!(r.status(), 503, "ready with an expired token");
        last = r.json().await.unwrap();
        if last["credentials"][0]["error"].as_str().unwrap_or_default().contains("clock") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last["credentials"][0]["error"].as_str().unwrap_or_default().contains("clock"), "{last}");
    let r = gw.http.get(gw.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap();
    assert_gateway_error(r, 503, "CredentialUnavailable").await;
    let text = gw.http.get(format!("{}/metrics", gw.admin)).send().await.unwrap().text().await.unwrap();
    let m = parse_metrics(&text);
    assert!(metric(&m, "palette_gateway_token_rejected_total", &[("credential", "ops"), ("reason", "expired")]) >= 1.0);
    assert_eq!(metric(&m, "palette_gateway_token_expiry_timestamp_seconds", &[("credential", "ops")]), 0.0);
    assert!(!up.request_log().iter().any(|(_, p)| p == "/v1/users"), "an expired token was sent");
}

/// Reads a response body to its end or first error, at most `within`; returns the bytes and
/// whether it ended with an error.
async fn read_body(mut r: reqwest::Response, within: Duration) -> (usize, Option<String>) {
    let mut got = 0;
    let read = async {
        loop {
            match r.chunk().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => return None,
                Err(e) => return Some(format!("{e:?}")),
            }
        }
    };
    let ended = bounded(within, read, "response body").await;
    (got, ended)
}

/// The upstream sends a 200 head (`Content-Length: 100000`) and 1,000 bytes, then resets the
/// connection: the client sees the 200 head with the upstream's `Content-Length`, the 1,000
/// bytes, then its body stream fails (the connection is cut short, so the client knows the
/// body is incomplete) well within the timeout; the gateway then recovers.
#[tokio::test]
async fn reset_mid_body_ends_the_client_stream_with_an_error() {
    let up = FaultyUpstream::start(Mode::ResetMidBody).await;
    let gw = Gw::start(&up.url(), "1s").await;
    let started = Instant::now();
    let r = gw.get("/v1/users", REQUEST_TIMEOUT).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], DECLARED_LEN.to_string().as_str());
    let (got, error) = read_body(r, REQUEST_TIMEOUT * 2).await;
    eprintln!("reset mid-body: the client got {got} bytes, then {error:?}");
    assert!(error.is_some(), "the cut body ended cleanly after {got} bytes: the client cannot tell it is incomplete");
    assert_eq!(got, PARTIAL_LEN, "bytes before the reset");
    assert!(started.elapsed() < REQUEST_TIMEOUT * 2, "took {:?}", started.elapsed());
    assert_eq!(gw.settle().await, 0.0, "the in-flight gauge did not return to 0");
    up.set_mode(Mode::Ok).await;
    gw.assert_recovered(&up).await;
}

/// The upstream sends a 200 head and 1,000 bytes, then goes silent while keeping the
/// connection open: the client gets the head and the bytes, and its body stream must then end
/// with an error within the gateway's timeouts (`request_timeout` 1 s, `idle_timeout` 2 s), not
/// hang for as long as the upstream keeps the socket open.
#[tokio::test]
async fn stall_mid_body_does_not_hang_the_client() {
    let up = FaultyUpstream::start(Mode::StallMidBody).await;
    let gw = Gw::start(&up.url(), "1s").await;
    let r = gw.get("/v1/users", REQUEST_TIMEOUT).await;
    assert_eq!(r.status(), 200);
    let bound = REQUEST_TIMEOUT + IDLE_TIMEOUT + Duration::from_secs(3);
    let (got, error) = read_body(r, bound).await;
    assert_eq!(got, PARTIAL_LEN);
    assert!(error.is_some(), "the stalled body ended cleanly: the client cannot tell it is incomplete");
    assert!(up.wait_open_at_most(0, Duration::from_secs(2)).await, "the stalled upstream connection stayed open");
    assert_eq!(gw.settle().await, 0.0);
    up.set_mode(Mode::Ok).await;
    gw.assert_recovered(&up).await;
}

/// What the client sees when the upstream stalls mid-body: the 200 head and the first 1,000
/// bytes, then a body error once the upstream has been silent for `request_timeout`; the
/// in-flight request and the upstream connection are released.
#[tokio::test]
async fn stall_mid_body_is_released_when_the_client_gives_up() {
    let up = FaultyUpstream::start(Mode::StallMidBody).await;
    let gw = Gw::start(&up.url(), "1s").await;
    let mut r = gw.get("/v1/users", REQUEST_TIMEOUT).await;
    assert_eq!(r.status(), 200);
    let mut got = 0;
    let wait = REQUEST_TIMEOUT + IDLE_TIMEOUT + Duration::from_millis(500);
    let outcome = tokio::time::timeout(wait, async {
        loop {
            match r.chunk().await {
                Ok(Some(c)) => got += c.len(),
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert_eq!(got, PARTIAL_LEN);
    match outcome {
        Err(_) => panic!("the stalled body still hangs after every timeout"),
        Ok(ended) => assert!(ended.is_err(), "the stalled body ended cleanly"),
    }
    up.set_mode(Mode::Ok).await;
    gw.assert_recovered(&up).await;
}

/// A client that gives up while the upstream has not answered yet: the gateway cancels the
/// upstream request at once (the upstream sees its connection close, long before
/// `request_timeout`) and the in-flight gauge returns to 0.
#[tokio::test]
async fn client_gone_before_the_answer_cancels_the_upstream_request() {
    let up = FaultyUpstream::start(Mode::HangBeforeHeaders).await;
    let gw = Gw::start(&up.url(), "30s").await;
    let req = gw.http.get(gw.url("/v1/users")).header("ApiKey", ADMIN_KEY).send();
    assert!(tokio::time::timeout(Duration::from_millis(300), req).await.is_err(), "the hung upstream answered");
    assert_eq!(up.requests(), 1);
    assert!(up.wait_open_at_most(0, Duration::from_secs(2)).await, "the upstream request was not cancelled");
    assert_eq!(gw.settle().await, 0.0);
}

/// A request body that sends `chunks` chunks of 16 KiB, then stalls forever.
fn stalled_body(chunks: usize) -> reqwest::Body {
    use futures_util::StreamExt;
    let sent = futures_util::stream::iter(
        (0..chunks).map(|_| Ok::<Bytes, std::io::Error>(Bytes::from(vec![b'u'; 16 * 1024]))),
    );
    reqwest::Body::wrap_stream(sent.chain(futures_util::stream::pending()))
}

// ---------------------------------------------------------------------------------------------
// The mixed run.

/// Panics seen anywhere in this process (gateway tasks included), with their thread and place.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
            if let Ok(mut p) = PANICS.lock() {
                p.push(format!("thread {thread}: {info}"));
            }
            previous(info);
        }));
    });
}

fn panics_seen() -> usize {
    PANICS.lock().map(|p| p.len()).unwrap_or(usize::MAX)
}

/// How one request of the mixed run ended.
enum Outcome {
    /// Answered with the expected status (and body).
    Answered,
    /// The client gave up on purpose.
    Abandoned,
    /// Anything else: a failure of the run.
    Unexpected(String),
}

#[derive(Default)]
struct Tally {
    answered: usize,
    abandoned: usize,
    unexpected: Vec<String>,
}

/// One random request of the mixed run, checked against what it should get.
async fn one_request(h: &Harness, rng: &mut rand::rngs::StdRng, i: usize) -> Outcome {
    let admin = |req: reqwest::RequestBuilder| req.header("ApiKey", ADMIN_KEY);
    let expect = |r: Result<reqwest::Response, reqwest::Error>, status: u16| async move {
        match r {
            Ok(r) if r.status().as_u16() == status => match r.bytes().await {
                Ok(_) => Outcome::Answered,
                Err(e) => Outcome::Unexpected(format!("body of a {status}: {e}")),
            },
            Ok(r) => Outcome::Unexpected(format!("status {} where {status} was expected", r.status())),
            Err(e) => Outcome::Unexpected(format!("request failed: {e}")),
        }
    };
    match rng.gen_range(0..100) {
        0..=29 => expect(admin(h.http.get(h.url(&format!("/v1/users/u{i}")))).send().await, 200).await,
        // A token credential.
        30..=39 => expect(h.http.get(h.url("/v1/packs")).header("ApiKey", BOT_KEY).send().await, 200).await,
        40..=51 => {
            let req = admin(h.http.post(h.url("/v1/dashboard/projects"))).body(format!("{{\"n\":{i}}}"));
            expect(req.send().await, 201).await
        }
        52..=61 => {
            let status = [500u16, 503, 404, 400][rng.gen_range(0..4)];
            expect(admin(h.http.get(h.url(&format!("/v1/__fake/status/{status}")))).send().await, status).await
        }
        62..=71 => {
            let ms = rng.gen_range(0..40);
            expect(admin(h.http.get(h.url(&format!("/v1/__fake/slow/{ms}")))).send().await, 200).await
        }
        72..=81 => {
            let n = rng.gen_range(0..=128 * 1024usize);
            match admin(h.http.get(h.url(&format!("/v1/__fake/bytes/{n}")))).send().await {
                Ok(r) if r.status() == 200 => match r.bytes().await {
                    Ok(b) if b.len() == n => Outcome::Answered,
                    Ok(b) => Outcome::Unexpected(format!("bytes/{n}: got {} bytes", b.len())),
                    Err(e) => Outcome::Unexpected(format!("bytes/{n}: {e}")),
                },
                Ok(r) => Outcome::Unexpected(format!("bytes/{n}: status {}", r.status())),
                Err(e) => Outcome::Unexpected(format!("bytes/{n}: {e}")),
            }
        }
        // Gives up before the (slow) answer comes: the request future is dropped.
        82..=89 => {
            let wait = Duration::from_millis(rng.gen_range(1..60));
            let req = admin(h.http.get(h.url("/v1/__fake/slow/300"))).send();
            match tokio::time::timeout(wait, req).await {
                Err(_) => Outcome::Abandoned,
                Ok(r) => expect(r, 200).await,
            }
        }
        // Drops a download after its first chunk.
        90..=94 => match admin(h.http.get(h.url("/v1/__fake/bytes/4194304"))).send().await {
            Ok(mut r) if r.status() == 200 => match r.chunk().await {
                Ok(Some(_)) => Outcome::Abandoned,
                other => Outcome::Unexpected(format!("first chunk of a download: {other:?}")),
            },
            Ok(r) => Outcome::Unexpected(format!("download: status {}", r.status())),
            Err(e) => Outcome::Unexpected(format!("download: {e}")),
        },
        // Drops an upload whose body stalled midway.
        _ => {
            let wait = Duration::from_millis(rng.gen_range(5..60));
            let req = admin(h.http.put(h.url("/v1/packs/upload"))).body(stalled_body(rng.gen_range(0..3))).send();
            match tokio::time::timeout(wait, req).await {
                Err(_) => Outcome::Abandoned,
                Ok(r) => Outcome::Unexpected(format!("a stalled upload was answered: {:?}", r.map(|r| r.status()))),
            }
        }
    }
}

/// Sends `total` random requests from 32 concurrent clients.
async fn run_mixed(h: &Arc<Harness>, total: usize, seed: u64) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..32u64 {
        let (h, next) = (h.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(w));
            let mut tally = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= total {
                    return tally;
                }
                match bounded(Duration::from_secs(10), one_request(&h, &mut rng, i), "a mixed-run request").await {
                    Outcome::Answered => tally.answered += 1,
                    Outcome::Abandoned => tally.abandoned += 1,
                    Outcome::Unexpected(e) => tally.unexpected.push(e),
                }
            }
        }));
    }
    let mut all = Tally::default();
    for w in workers {
        let t = w.await.expect("a mixed-run worker panicked");
        all.answered += t.answered;
        all.abandoned += t.abandoned;
        all.unexpected.extend(t.unexpected);
    }
    all
}

/// Open file descriptors of this process (sockets included).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

/// 10,000 requests (after 1,000 to warm up) from 32 concurrent clients, mixing ordinary GETs
/// and POSTs, both credential kinds, upstream errors, slow answers, downloads of random sizes,
/// and clients that give up before the answer, mid-download or mid-upload: every request is
/// answered as it should be or was abandoned by its client, the in-flight gauge ends at 0,
/// memory and open sockets stop growing (no leak) and nothing panics.
///
/// Memory is sampled after the warm-up, after 5,000 requests and after 10,000, each time with
/// nothing in flight and the fake's request log (which keeps every request) emptied. The first
/// thousands of requests raise the process's high-water mark (both connection pools' buffers at
/// peak concurrency, allocator arenas: about 25 MiB here) and it then stays flat, so the run
/// may grow at most 50 MiB in all and at most 10 MiB (2 KiB a request) over its second half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_run_with_faults_and_disconnects_leaks_nothing() {
    // Memory is the whole process's: measured where no other test runs.
    if !alone_in_process("faults::mixed_run_with_faults_and_disconnects_leaks_nothing") {
        return;
    }
    record_panics();
    let panics_before = panics_seen();
    let h = Arc::new(Harness::standard().await);
    h.wait_ready().await;
    let seed: u64 = std::env::var("MIXED_RUN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("mixed run seed {seed} (set MIXED_RUN_SEED to replay)");
    let hr: &Harness = &h;
    let inflight = move || async move {
        let (_, m) = hr.metrics().await;
        metric(&m, "palette_gateway_inflight_requests", &[])
    };
    // Settles the run (nothing in flight; the fake's request log, which grows with every
    // request, emptied), then samples memory and sockets.
    let sample = || async {
        let left = settle_inflight(inflight).await;
        h.fake.clear_requests();
        tokio::time::sleep(Duration::from_millis(200)).await;
        (left, rss_kib(), open_fds())
    };

    let started = Instant::now();
    let warm = run_mixed(&h, 1_000, seed).await;
    assert!(warm.unexpected.is_empty(), "warm-up: {:?}", &warm.unexpected[..warm.unexpected.len().min(5)]);
    let (left, rss_warm, fds_warm) = sample().await;
    assert_eq!(left, 0.0, "in flight after the warm-up");

    const HALF: usize = 5_000;
    let first = run_mixed(&h, HALF, seed.wrapping_add(1_000)).await;
    let (left_mid, rss_mid, fds_mid) = sample().await;
    let second = run_mixed(&h, HALF, seed.wrapping_add(2_000)).await;
    let (left_end, rss_end, fds_end) = sample().await;
    let took = started.elapsed();
    let answered = first.answered + second.answered;
    let abandoned = first.abandoned + second.abandoned;
    let unexpected: Vec<String> = first.unexpected.into_iter().chain(second.unexpected).collect();
    eprintln!(
        "mixed run: {answered} answered, {abandoned} abandoned, {} unexpected in {took:?}; \
         RSS {rss_warm} -> {rss_mid} -> {rss_end} KiB; fds {fds_warm} -> {fds_mid} -> {fds_end}",
        unexpected.len()
    );

    assert!(unexpected.is_empty(), "{} unexpected outcomes, first: {:?}", unexpected.len(), {
        &unexpected[..unexpected.len().min(5)]
    });
    assert_eq!(answered + abandoned, 2 * HALF);
    assert!(abandoned > HALF / 10, "only {abandoned} requests were abandoned: the run did not test disconnects");
    assert_eq!((left_mid, left_end), (0.0, 0.0), "requests still in flight after the run");
    let leak_mib = rss_end.saturating_sub(rss_mid) / 1024;
    assert!(
        leak_mib < 10,
        "memory grew by {leak_mib} MiB over the second {HALF} requests ({rss_mid} -> {rss_end} KiB)"
    );
    let total_mib = rss_end.saturating_sub(rss_warm) / 1024;
    assert!(total_mib < 50, "memory grew by {total_mib} MiB over the run ({rss_warm} -> {rss_end} KiB)");
    // Every connection of the run is closed or idle in a pool: at most 4 sockets (client,
    // gateway in and out, fake) per concurrent client, whatever the number of requests.
    assert!(fds_end <= fds_warm + 4 * 32 + 16, "open descriptors grew from {fds_warm} to {fds_end}");
    let panics = PANICS.lock().map(|p| p[panics_before.min(p.len())..].to_vec()).unwrap_or_default();
    assert!(panics.is_empty(), "panics during the run: {panics:?}");
}
