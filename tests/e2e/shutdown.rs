//! Graceful shutdown: `/readyz` turns 503 at once, the listener serves on for `shutdown_delay`,
//! then stops accepting, lets in-flight requests (streaming bodies included) finish within
//! `drain_timeout`, and closes idle keep-alive connections. The binary does this on SIGTERM,
//! exits at once on a second signal, and reloads on SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use fake_palette::FakePalette;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A client that opens a new connection for every request.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client builds")
}

/// Reads a streaming body at a steady pace so that it takes about `over` in all, and returns
/// how many bytes came and whether the last byte has the fake's pattern (`i % 256`).
async fn read_slowly(mut r: reqwest::Response, over: Duration) -> Result<(u64, bool), String> {
    let total = r.content_length().ok_or("no content length")?;
    let started = tokio::time::Instant::now();
    let mut n = 0u64;
    let mut last_ok = true;
    while let Some(chunk) = r.chunk().await.map_err(|e| format!("after {n} bytes: {e}"))? {
        n += chunk.len() as u64;
        if let Some(&b) = chunk.last() {
            last_ok = u64::from(b) == (n - 1) % 256;
        }
        tokio::time::sleep_until(started + over.mul_f64(n as f64 / total as f64)).await;
    }
    Ok((n, last_ok))
}

/// After `graceful_shutdown`: `/readyz` is 503 at once while new requests are still served for
/// `shutdown_delay`; then new connections are refused and an idle keep-alive connection is
/// closed, while a slow request and a streaming download in progress both complete; shutdown
/// returns once they have, well within `drain_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_serves_during_the_delay_then_drains() {
    let delay = Duration::from_millis(1000);
    let drain = Duration::from_secs(15);
    let server = "shutdown_delay = \"1s\"\ndrain_timeout = \"15s\"\n";
    let g = FileGateway::start("shutdown-graceful", standard_fake(), server, NO_BUDGET, &standard_rules()).await;
    let FileGateway { fake: _fake, gateway, base, admin, http, .. } = g;
    let proxy: SocketAddr = gateway.proxy_addr;
    let metrics = gateway.metrics().clone();

    // An idle keep-alive connection: one answered request, then left open.
    let mut idle = TcpStream::connect(proxy).await.unwrap();
    idle.write_all(&keep_alive_get("/v1/users", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
    assert_eq!(read_response(&mut idle, Duration::from_secs(5)).await.expect("answer").status, 200);

    // A slow request and a 32 MB download that will still be running when the delay ends.
    let slow = {
        let (http, url) = (http.clone(), format!("{base}/v1/__fake/slow/2500"));
        tokio::spawn(async move {
            let r = http.get(url).header("ApiKey", ADMIN_KEY).send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            r.text().await.map(|b| (status, b)).map_err(|e| e.to_string())
        })
    };
    let size: u64 = 32 * 1024 * 1024;
    let download = {
        let (http, url) = (http.clone(), format!("{base}/v1/__fake/bytes/{size}"));
        tokio::spawn(async move {
            let r = http.get(url).header("ApiKey", ADMIN_KEY).send().await.map_err(|e| e.to_string())?;
            read_slowly(r, Duration::from_millis(3000)).await
        })
    };
    assert!(eventually(Duration::from_secs(5), || async { metrics.inflight.get() == 2 }).await, "both in flight");

    let began = Instant::now();
    let stop = tokio::spawn(gateway.graceful_shutdown(CancellationToken::new()));
    let probe = fresh_client();
    let not_ready = eventually(Duration::from_millis(300), || async {
        probe.get(format!("{admin}/readyz")).send().await.is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(not_ready, "/readyz did not turn 503 at once");
    // Still serving new connections during the delay.
    let r = probe.get(format!("{base}/v1/users")).header("ApiKey", ADMIN_KEY).send().await.expect("served");
    assert_eq!(r.status(), 200);
    assert!(began.elapsed() < delay, "the check ran too late to prove anything");

    // After the delay: new connections refused, the idle connection closed.
    tokio::time::sleep_until(tokio::time::Instant::from_std(began + delay + Duration::from_millis(300))).await;
    let refused = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(proxy)).await;
    assert!(matches!(refused, Ok(Err(_))), "a new connection after the delay was not refused: {refused:?}");
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read_to_end(&mut idle, &mut rest)).await;
    assert!(closed.is_ok(), "the idle keep-alive connection was not closed");
    assert!(!stop.is_finished(), "shutdown returned while requests were in flight");

    let (status, body) = slow.await.unwrap().expect("the slow request completed");
    assert_eq!(status, 200, "{body}");
    let (bytes, pattern_ok) = download.await.unwrap().expect("the download completed");
    assert_eq!(bytes, size, "the download was cut");
    assert!(pattern_ok);
    tokio::time::timeout(drain, stop).await.expect("shutdown returns within drain_timeout").unwrap();
    assert!(began.elapsed() < delay + drain);
    assert_eq!(metrics.inflight.get(), 0);
    // The admin listener is closed too.
    assert!(TcpStream::connect(admin.trim_start_matches("http://")).await.is_err());
}

/// A request that outlives `drain_timeout` does not hold shutdown: it returns after the delay
/// plus the drain timeout.
#[tokio::test]
async fn drain_timeout_bounds_graceful_shutdown() {
    let server = "shutdown_delay = \"100ms\"\ndrain_timeout = \"1s\"\n";
    let g = FileGateway::start("shutdown-drain", standard_fake(), server, NO_BUDGET, &standard_rules()).await;
    let FileGateway { fake: _fake, gateway, base, http, .. } = g;
    let metrics = gateway.metrics().clone();
    let slow = tokio::spawn(async move {
        http.get(format!("{base}/v1/__fake/slow/20000")).header("ApiKey", ADMIN_KEY).send().await
    });
    assert!(eventually(Duration::from_secs(5), || async { metrics.inflight.get() == 1 }).await);
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), gateway.graceful_shutdown(CancellationToken::new()))
        .await
        .expect("shutdown gives up on the drain after drain_timeout");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(1000), "returned before the drain timeout: {took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
    slow.abort();
}

/// `shutdown_delay` and `drain_timeout` changed by a reload are the ones shutdown uses.
#[tokio::test]
async fn reloaded_drain_timeout_is_used_at_shutdown() {
    let server = "shutdown_delay = \"5s\"\ndrain_timeout = \"20s\"\n";
    let g = FileGateway::start("shutdown-reloaded", standard_fake(), server, NO_BUDGET, &standard_rules()).await;
    let reloaded = "shutdown_delay = \"100ms\"\ndrain_timeout = \"1s\"\n";
    write_atomically(&g.path, &g.config_text(reloaded, NO_BUDGET, &standard_rules()));
    g.gateway.reload(&g.path, &standard_env()).expect("reload");
    let FileGateway { fake: _fake, gateway, base, http, .. } = g;
    let metrics = gateway.metrics().clone();
    let slow = tokio::spawn(async move {
        http.get(format!("{base}/v1/__fake/slow/30000")).header("ApiKey", ADMIN_KEY).send().await
    });
    assert!(eventually(Duration::from_secs(5), || async { metrics.inflight.get() == 1 }).await);
    let began = Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(6), gateway.graceful_shutdown(CancellationToken::new())).await;
    slow.abort();
    assert!(done.is_ok(), "shutdown did not return within 6 s: the reloaded 100ms + 1s were not used");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(1100), "{took:?}");
    assert!(took < Duration::from_millis(3000), "{took:?}");
}

// --- the binary ----------------------------------------------------------------------------------

/// The gateway binary, killed if the test ends before it exits.
struct Gateway {
    child: Child,
    /// Where its stderr (the log) goes.
    log: PathBuf,
    base: String,
    admin: String,
    http: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` has handlers for SIGHUP, SIGINT and SIGTERM (`SigCgt` in
/// /proc/PID/status); true where /proc is not available.
fn signals_caught(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    // Bit n-1 stands for signal n: SIGHUP 1, SIGINT 2, SIGTERM 15.
    let bit = |signal: u32| 1u64 << (signal - 1);
    let wanted = bit(1) | bit(2) | bit(15);
    caught & wanted == wanted
}

/// Two free loopback ports (bound on port 0, then released for the binary to take).
fn free_ports() -> (u16, u16) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap().port(), b.local_addr().unwrap().port())
}

/// The `[log]` section most binary tests use.
const LOG_JSON: &str = "[log]\nformat = \"json\"\nlevel = \"info\"\n";

fn binary_config(upstream_url: &str, ports: (u16, u16), server_extra: &str, log: &str) -> String {
    server_config(upstream_url, server_extra, NO_BUDGET, &standard_rules())
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{}\"", ports.0), 1)
        .replacen("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"127.0.0.1:{}\"", ports.1), 1)
        + "\n"
        + log
}

impl Gateway {
    /// Starts `palette-gateway --config <dir>/gateway.toml` with the standard secrets in its
    /// environment and its logs (stderr) in the test-log directory; waits until it is healthy.
    async fn start(name: &str, fake: &FakePalette, server_extra: &str) -> Gateway {
        Gateway::start_with(name, fake, server_extra, LOG_JSON, None).await
    }

    /// [`Gateway::start`] with another `[log]` section and `RUST_LOG` set or not.
    async fn start_with(
        name: &str,
        fake: &FakePalette,
        server_extra: &str,
        log_cfg: &str,
        rust_log: Option<&str>,
    ) -> Gateway {
        Gateway::start_at(name, &fake.url(), "5s", server_extra, log_cfg, rust_log).await
    }

    /// [`Gateway::start_with`] in front of any upstream, with its `request_timeout`.
    async fn start_at(
        name: &str,
        upstream_url: &str,
        request_timeout: &str,
        server_extra: &str,
        log_cfg: &str,
        rust_log: Option<&str>,
    ) -> Gateway {
        let dir = scratch_dir(name);
        let config = dir.join("gateway.toml");
        let ports = free_ports();
        let text = binary_config(upstream_url, ports, server_extra, log_cfg).replacen(
            "request_timeout = \"5s\"",
            &format!("request_timeout = \"{request_timeout}\""),
            1,
        );
        std::fs::write(&config, text).unwrap();
        std::fs::create_dir_all(TEST_LOG_DIR).unwrap();
        let log = Path::new(TEST_LOG_DIR).join(format!("{name}-binary-{}.log", std::process::id()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_palette-gateway"));
        cmd.arg("--config")
            .arg(&config)
            .env("PALETTE_API_KEY", PALETTE_KEY)
            .env("PALETTE_PASSWORD", OPS_PASSWORD)
            .env_remove("RUST_LOG")
            .env_remove("PALETTE_GATEWAY_CONFIG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let g = Gateway {
            child,
            log,
            base: format!("http://127.0.0.1:{}", ports.0),
            admin: format!("http://127.0.0.1:{}", ports.1),
            http: reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap(),
        };
        let healthy = eventually(Duration::from_secs(30), || async {
            g.http.get(format!("{}/healthz", g.admin)).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(healthy, "the binary never became healthy");
        // SIGHUP is caught by the reload task, a moment after start: wait until SIGTERM, SIGINT
        // and SIGHUP are all caught, so that a test's signal is never the default action.
        let pid = g.child.id();
        assert!(eventually(Duration::from_secs(5), || async { signals_caught(pid) }).await, "signals never handled");
        g
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([sig, &self.pid()]).status().expect("kill runs");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Waits for the process to exit, at most `within`.
    async fn exited(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn ready_status(&self) -> Option<u16> {
        self.http.get(format!("{}/readyz", self.admin)).send().await.ok().map(|r| r.status().as_u16())
    }
}

/// SIGTERM: `/readyz` turns 503, the binary keeps serving for `shutdown_delay` (300 ms) and
/// then exits 0.
#[tokio::test]
async fn binary_exits_zero_after_the_delay_on_sigterm() {
    let fake = TrackedFake(FakePalette::start(standard_fake()).await.unwrap());
    let mut g = Gateway::start("shutdown-sigterm", &fake, "shutdown_delay = \"300ms\"\ndrain_timeout = \"5s\"\n").await;
    let r = g.http.get(format!("{}/v1/users", g.base)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let sent = Instant::now();
    g.signal("-TERM");
    // Polled for a while: on a loaded machine a process takes a moment to act on a signal (the
    // in-process test checks "at once").
    let saw_503 = eventually(Duration::from_millis(1500), || async { g.ready_status().await == Some(503) }).await;
    assert!(saw_503, "/readyz did not turn 503 during the delay");
    let asked = Instant::now();
    let r = fresh_client().get(format!("{}/v1/users", g.base)).header("ApiKey", ADMIN_KEY).send().await;
    if asked.duration_since(sent) < Duration::from_millis(250) {
        assert_eq!(r.expect("served during the delay").status(), 200);
    }
    let status = g.exited(Duration::from_secs(10)).await.expect("the binary exits");
    let took = sent.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took >= Duration::from_millis(300), "exited before shutdown_delay: {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // `[log] format = "json"`: every line is a JSON event, the last one says it stopped.
    let text = std::fs::read_to_string(&g.log).unwrap();
    let events: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(events.iter().any(|e| e["message"] == "shutting down: not ready; serving until the delay ends"));
    assert_eq!(events.last().unwrap()["message"], "stopped", "{text}");
}

/// A second stop signal during the delay exits at once, with a failure status.
#[tokio::test]
async fn binary_second_signal_exits_at_once() {
    let fake = TrackedFake(FakePalette::start(standard_fake()).await.unwrap());
    let mut g = Gateway::start("shutdown-twice", &fake, "shutdown_delay = \"20s\"\ndrain_timeout = \"5s\"\n").await;
    g.signal("-TERM");
    let draining = eventually(Duration::from_secs(5), || async { g.ready_status().await == Some(503) }).await;
    assert!(draining, "the first signal did not start the shutdown");
    let sent = Instant::now();
    // The second signal's listener starts a moment after /readyz turns 503, and a signal before
    // it is lost (`binary_quick_second_signal_exits_at_once`): send it again if need be.
    let mut status = None;
    for _ in 0..3 {
        g.signal("-INT");
        status = g.exited(Duration::from_secs(1)).await;
        if status.is_some() {
            break;
        }
    }
    let status = status.expect("the second signal exits at once");
    assert!(!status.success(), "a hurried exit reports failure: {status:?}");
    assert!(sent.elapsed() < Duration::from_secs(4));
}

/// Two stop signals in quick succession (an operator pressing Ctrl-C twice) exit at once.
#[tokio::test]
async fn binary_quick_second_signal_exits_at_once() {
    let fake = TrackedFake(FakePalette::start(standard_fake()).await.unwrap());
    let mut g =
        Gateway::start("shutdown-quick-twice", &fake, "shutdown_delay = \"20s\"\ndrain_timeout = \"5s\"\n").await;
    g.signal("-INT");
    // The gap between the two presses is the scenario, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sent = Instant::now();
    g.signal("-INT");
    let status = g.exited(Duration::from_secs(5)).await;
    assert!(status.is_some(), "the second signal, 50 ms after the first, was lost: still running after 5 s");
    assert!(!status.unwrap().success());
    assert!(sent.elapsed() < Duration::from_secs(3));
}

/// SIGHUP reloads the config (counted in the reloads metric) and the gateway keeps serving.
#[tokio::test]
async fn binary_reloads_on_sighup() {
    let fake = TrackedFake(FakePalette::start(standard_fake()).await.unwrap());
    let mut g = Gateway::start("shutdown-sighup", &fake, "shutdown_delay = \"0s\"\n").await;
    let reloads = |m: &[Sample]| metric(m, "palette_gateway_config_reloads_total", &[("result", "ok")]);
    assert_eq!(reloads(&scrape(&g.http, &g.admin).await), 0.0);
    // The file is unchanged: only the signal can cause this reload.
    g.signal("-HUP");
    let reloaded =
        eventually(Duration::from_secs(5), || async { reloads(&scrape(&g.http, &g.admin).await) == 1.0 }).await;
    assert!(reloaded, "SIGHUP did not reload");
    assert!(matches!(g.child.try_wait(), Ok(None)), "SIGHUP must not stop the gateway");
    let r = g.http.get(format!("{}/v1/users", g.base)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    g.signal("-TERM");
    let status = g.exited(Duration::from_secs(10)).await.expect("exits");
    assert!(status.success());
}

/// `[log] format = "text"` gives human-readable lines (not JSON) and `level` filters them;
/// `RUST_LOG` overrides the level. Written to a file (not a terminal), no line carries ANSI
/// colour codes.
#[tokio::test]
async fn binary_log_format_and_level() {
    let fake = TrackedFake(FakePalette::start(standard_fake()).await.unwrap());
    let text_warn = "[log]\nformat = \"text\"\nlevel = \"warn\"\n";
    for (name, rust_log, info_expected) in [("log-text-warn", None, false), ("log-text-rustlog", Some("info"), true)] {
        let mut g = Gateway::start_with(name, &fake, "shutdown_delay = \"0s\"\n", text_warn, rust_log).await;
        let r = g.http.get(format!("{}/v1/users", g.base)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        g.signal("-TERM");
        assert!(g.exited(Duration::from_secs(10)).await.expect("exits").success());
        let text = std::fs::read_to_string(&g.log).unwrap();
        assert!(
            text.lines().all(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
            "JSON in text format: {text}"
        );
        assert!(!text.contains('\x1b'), "colour codes in a log file: {text:?}");
        let listening = text.lines().any(|l| l.contains("INFO") && l.contains("palette-gateway listening"));
        assert_eq!(listening, info_expected, "{name}: {text}");
    }
}

/// Palette's login answer sends its head and then stalls the body (the standard `ops` login
/// credential logs in at start; `request_timeout` 30 s): one SIGTERM still stops the binary after the delay and the
/// drain, with status 0; with a long `shutdown_delay`, a second signal exits at once.
#[tokio::test]
async fn binary_stops_with_a_stalled_login() {
    let up = faulty::FaultyUpstream::start(faulty::Mode::StallMidBody).await;
    let extra = "shutdown_delay = \"200ms\"\ndrain_timeout = \"1s\"\n";
    let mut g = Gateway::start_at("shutdown-stalled-login", &up.url(), "30s", extra, LOG_JSON, None).await;
    let logging_in = eventually(Duration::from_secs(5), || async { !up.arrivals("/v1/auth/").is_empty() }).await;
    assert!(logging_in, "the login never reached the upstream");
    let sent = Instant::now();
    g.signal("-TERM");
    let status =
        g.exited(Duration::from_secs(8)).await.expect("one SIGTERM stops the gateway despite the stalled login");
    assert!(status.success(), "{status:?}");
    assert!(sent.elapsed() < Duration::from_secs(4), "{:?}", sent.elapsed());

    let before = up.arrivals("/v1/auth/").len();
    let extra = "shutdown_delay = \"20s\"\ndrain_timeout = \"5s\"\n";
    let mut g = Gateway::start_at("shutdown-stalled-login-twice", &up.url(), "30s", extra, LOG_JSON, None).await;
    let logging_in = eventually(Duration::from_secs(5), || async { up.arrivals("/v1/auth/").len() > before }).await;
    assert!(logging_in, "the second gateway's login never reached the upstream");
    g.signal("-TERM");
    assert!(eventually(Duration::from_secs(5), || async { g.ready_status().await == Some(503) }).await);
    let mut status = None;
    for _ in 0..3 {
        g.signal("-INT");
        status = g.exited(Duration::from_secs(1)).await;
        if status.is_some() {
            break;
        }
    }
    assert!(!status.expect("the second signal exits at once").success());
}

/// Access-log lines of a JSON log, each parsed (a line that is not complete JSON fails).
fn access_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|e| e["target"] == "palette_gateway::access")
        .collect()
}

/// The log is written off the serving threads, buffered: N requests then SIGTERM leave exactly
/// N access lines, each complete JSON, none lost in the buffer at exit.
#[tokio::test]
async fn binary_flushes_every_access_line_on_sigterm() {
    let fake = TrackedFake(FakePalette::start(standard_fake()).await.unwrap());
    let mut g = Gateway::start("log-flush-sigterm", &fake, "shutdown_delay = \"0s\"\n").await;
    const N: usize = 200;
    let sent: Vec<_> = (0..N)
        .map(|i| {
            let (http, url) = (g.http.clone(), format!("{}/v1/users?n={i}", g.base));
            tokio::spawn(async move { http.get(url).header("ApiKey", ADMIN_KEY).send().await.map(|r| r.status()) })
        })
        .collect();
    for s in sent {
        assert_eq!(s.await.unwrap().expect("answered"), 200);
    }
    g.signal("-TERM");
    assert!(g.exited(Duration::from_secs(10)).await.expect("exits").success());
    let text = std::fs::read_to_string(&g.log).unwrap();
    let access = access_lines(&text);
    assert_eq!(access.len(), N, "{text}");
    assert!(access.iter().all(|e| e["status"] == 200), "{text}");
}

/// An operator tailing the log sees a request's line while the gateway stays idle: the buffer
/// is flushed when the queue drains, not when it fills or at exit.
#[tokio::test]
async fn binary_access_line_appears_while_idle() {
    let fake = TrackedFake(FakePalette::start(standard_fake()).await.unwrap());
    let mut g = Gateway::start("log-idle-flush", &fake, "shutdown_delay = \"0s\"\n").await;
    let r = g.http.get(format!("{}/v1/users", g.base)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    // No further request: only the flush-on-drain can bring the line out.
    let seen = eventually(Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&g.log).unwrap_or_default();
        text.lines().any(|l| l.contains("palette_gateway::access") && l.contains(&rid))
    })
    .await;
    assert!(seen, "the access line stayed in the buffer of an idle gateway");
    assert!(matches!(g.child.try_wait(), Ok(None)), "still running: the line came from a flush, not the exit");
}
