//! Test harness: the real gateway on ephemeral loopback ports in front of the fake Palette
//! (the same `fake_palette` that `--demo` uses), plus small clients for what reqwest cannot
//! send (raw, malformed HTTP/1.1).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use palette_gateway::app::RunningGateway;
use palette_gateway::auth::key_hash_string;
use palette_gateway::config::{self, MapEnv};
use fake_palette::{FakePalette, FakePaletteConfig, FakeUser, RecordedRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Palette API key the gateway holds (the fake accepts it).
pub const PALETTE_KEY: &str = "palette-api-key-0001";
/// The login the `ops` credential uses.
pub const OPS_EMAIL: &str = "ops@example.com";
pub const OPS_PASSWORD: &str = "ops-password-0001";
/// Local keys of the standard clients.
pub const CI_KEY: &str = "pgw_ci-local-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub const ADMIN_KEY: &str = "pgw_admin-local-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub const BOT_KEY: &str = "pgw_bot-local-key-cccccccccccccccccccccccccccccccc";

/// Every secret the standard setup uses (tests scan outputs for them).
pub const SECRETS: [&str; 5] = [PALETTE_KEY, OPS_PASSWORD, CI_KEY, ADMIN_KEY, BOT_KEY];

/// Upstream settings that turn the Palette budget off, for tests that send more requests than
/// Palette's documented rates allow and are not about limits.
pub const NO_BUDGET: &str = "[upstream.limits]\npreset = \"none\"\n";

/// The standard clients, credentials and routes (appended after `[server]` and `[upstream]`).
pub fn standard_rules() -> String {
    format!(
        r#"
[credentials.default]
api_key_env = "PALETTE_API_KEY"

[credentials.ops]
email = "{OPS_EMAIL}"
password_env = "PALETTE_PASSWORD"
token_lifetime = "15m"
refresh_before = "3m"

[[clients]]
name = "ci"
keys = ["{ci}"]
projects = ["p001", "p002"]
allow = ["GET /v1/**", "POST /v1/dashboard/**"]

[[clients]]
name = "admin"
keys = ["{admin}"]
projects = ["*"]

[[clients]]
name = "bot"
keys = ["{bot}"]
credential = "ops"
projects = ["*"]

[[routes]]
name = "team-a"
path_prefix = "/team-a"
strip_prefix = true
project_uid = "p001"

[[routes]]
name = "ci-clusters"
path_prefix = "/v1/spectroclusters"
methods = ["GET"]
clients = ["ci"]
project_uid = "p002"
"#,
        ci = key_hash_string(CI_KEY),
        admin = key_hash_string(ADMIN_KEY),
        bot = key_hash_string(BOT_KEY),
    )
}

/// The fake Palette of the standard setup.
pub fn standard_fake() -> FakePaletteConfig {
    FakePaletteConfig {
        api_keys: vec![PALETTE_KEY.to_string()],
        users: vec![FakeUser { email: OPS_EMAIL.into(), password: OPS_PASSWORD.into(), org: None }],
        ..FakePaletteConfig::default()
    }
}

/// The environment the standard config reads its secrets from.
pub fn standard_env() -> MapEnv {
    MapEnv::new().with("PALETTE_API_KEY", PALETTE_KEY).with("PALETTE_PASSWORD", OPS_PASSWORD)
}

/// A running fake Palette and gateway.
pub struct Harness {
    pub fake: FakePalette,
    pub gateway: RunningGateway,
    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    pub http: reqwest::Client,
}

impl Harness {
    /// The standard setup (without the upstream budget).
    pub async fn standard() -> Harness {
        Harness::start(standard_fake(), NO_BUDGET, &standard_rules()).await
    }

    /// A fake with `fake_cfg`, and a gateway whose config is `[server]` (ephemeral ports, plus
    /// `server_extra` lines) + `[upstream]` at the fake + `rules`.
    pub async fn start(fake_cfg: FakePaletteConfig, upstream_extra: &str, rules: &str) -> Harness {
        init_logs();
        let fake = FakePalette::start(fake_cfg).await.expect("fake palette starts");
        Harness::with_fake(fake, upstream_extra, rules).await
    }

    /// A gateway in front of an already started (and perhaps already faulted) fake.
    pub async fn with_fake(fake: FakePalette, upstream_extra: &str, rules: &str) -> Harness {
        init_logs();
        let text = gateway_config(&fake.url(), upstream_extra, rules);
        let cfg = config::load_str(&text, Path::new("."), &standard_env())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        let gateway = RunningGateway::start(cfg).await.expect("gateway starts");
        let base = format!("http://{}", gateway.proxy_addr);
        let admin = format!("http://{}", gateway.admin_addr);
        Harness { fake, gateway, base, admin, http: client() }
    }

    /// `base` + path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The requests the fake received other than login/refresh.
    pub fn forwarded(&self) -> Vec<RecordedRequest> {
        self.fake.requests().into_iter().filter(|r| !r.path_and_query.starts_with("/v1/auth/")).collect()
    }

    /// The last forwarded request.
    pub fn last(&self) -> RecordedRequest {
        self.forwarded().pop().expect("a request reached the fake")
    }

    /// Waits until `/readyz` answers 200 (every token credential holds a token).
    pub async fn wait_ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.admin)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway never became ready");
    }

    /// Sends raw bytes to the proxy listener and reads the answer until the server closes or
    /// `Connection: close` takes effect.
    pub async fn raw(&self, request: &[u8]) -> RawResponse {
        raw_request(self.gateway.proxy_addr, request).await
    }
}

/// The config text of a test gateway.
pub fn gateway_config(upstream_url: &str, upstream_extra: &str, rules: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"{upstream_url}\"\nconnect_timeout = \"2s\"\nrequest_timeout = \"5s\"\n{upstream_extra}\n{rules}"
    )
}

/// A plain HTTP client (no proxy, no automatic decompression, keep-alive).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("client builds")
}

/// A raw HTTP/1.1 answer.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header's value (first occurrence, case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Writes `request` to `addr` and reads one answer (the request should say `Connection: close`).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut body = buf.get(split + 4..).unwrap_or_default().to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    RawResponse { status, head, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

/// A GET through the raw client (paths reqwest would normalize).
pub fn raw_get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Where every test binary writes its logs (JSON lines, debug level): CI scans them all for
/// secrets after the suite (scripts/scan-test-logs.sh).
pub const TEST_LOG_DIR: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/test-logs");

/// Sends the gateway's logs (debug level unless RUST_LOG says otherwise) to this test binary's
/// log file under [`TEST_LOG_DIR`].
pub fn init_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = std::fs::create_dir_all(TEST_LOG_DIR);
        let exe = std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let file = format!("{TEST_LOG_DIR}/{}-{}.log", exe.unwrap_or_else(|| "test".into()), std::process::id());
        let Ok(f) = std::fs::File::create(file) else { return };
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "debug".into()))
            .with_writer(std::sync::Mutex::new(f))
            .try_init();
    });
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The fake's tokens are secrets too: record them for the log scan.
        let tokens = self.fake.issued_tokens();
        if !tokens.is_empty() {
            use std::io::Write;
            if let Ok(mut f) =
                std::fs::OpenOptions::new().create(true).append(true).open(format!("{TEST_LOG_DIR}/tokens.txt"))
            {
                let _ = writeln!(f, "{}", tokens.join("\n"));
            }
        }
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text format (enough for our own exposition: no escapes in values).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.trim().to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some(Sample { name: name.to_string(), labels, value: value.parse().ok()? })
        })
        .collect()
}

/// The value of the series `name` whose labels include all of `labels` (0 when absent).
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

impl Harness {
    /// Scrapes `/metrics`.
    pub async fn metrics(&self) -> (String, Vec<Sample>) {
        let text = self.http.get(format!("{}/metrics", self.admin)).send().await.unwrap().text().await.unwrap();
        let samples = parse_metrics(&text);
        (text, samples)
    }
}

// --- Production-operations helpers (reload, shutdown, server limits, logs) ---------------------

/// A fresh, empty directory for one test's files, under cargo's per-target tmp dir.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("scratch")
        .join(format!("{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes `text` to `path` the way editors and config tools do: a temporary file renamed over it.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

/// A fake Palette that records the tokens it issued for the log scan when dropped (as
/// [`Harness`] does), without keeping its owner from being taken apart.
pub struct TrackedFake(pub FakePalette);

impl std::ops::Deref for TrackedFake {
    type Target = FakePalette;
    fn deref(&self) -> &FakePalette {
        &self.0
    }
}

impl Drop for TrackedFake {
    fn drop(&mut self) {
        let tokens = self.0.issued_tokens();
        if !tokens.is_empty() {
            use std::io::Write;
            let path = format!("{TEST_LOG_DIR}/tokens.txt");
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{}", tokens.join("\n"));
            }
        }
    }
}

/// The config text of a test gateway with extra `[server]` lines (limits, delays).
pub fn server_config(upstream_url: &str, server_extra: &str, upstream_extra: &str, rules: &str) -> String {
    gateway_config(upstream_url, upstream_extra, rules).replacen(
        "admin_listen = \"127.0.0.1:0\"\n",
        &format!("admin_listen = \"127.0.0.1:0\"\n{server_extra}\n"),
        1,
    )
}

/// A fake Palette and a gateway started from a config file on disk (`<dir>/gateway.toml`).
/// Unlike [`Harness`] its parts can be taken apart: the gateway reloaded from the file, shared
/// in an `Arc` with the reload watcher, or shut down gracefully.
pub struct FileGateway {
    pub fake: TrackedFake,
    pub gateway: RunningGateway,
    pub dir: std::path::PathBuf,
    pub path: std::path::PathBuf,
    pub base: String,
    pub admin: String,
    pub http: reqwest::Client,
}

impl FileGateway {
    /// Starts a fake with `fake_cfg` and a gateway from [`server_config`] written to a fresh
    /// scratch directory named after `name`.
    pub async fn start(
        name: &str,
        fake_cfg: FakePaletteConfig,
        server_extra: &str,
        upstream_extra: &str,
        rules: &str,
    ) -> FileGateway {
        init_logs();
        let fake = TrackedFake(FakePalette::start(fake_cfg).await.expect("fake palette starts"));
        let dir = scratch_dir(name);
        let path = dir.join("gateway.toml");
        std::fs::write(&path, server_config(&fake.url(), server_extra, upstream_extra, rules)).expect("write config");
        FileGateway::from_file(fake, dir, path).await
    }

    /// Starts a gateway from the config file at `path` in front of `fake`.
    pub async fn from_file(fake: TrackedFake, dir: std::path::PathBuf, path: std::path::PathBuf) -> FileGateway {
        init_logs();
        let cfg = config::load(&path, &standard_env()).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let gateway = RunningGateway::start(cfg).await.expect("gateway starts");
        let base = format!("http://{}", gateway.proxy_addr);
        let admin = format!("http://{}", gateway.admin_addr);
        FileGateway { fake, gateway, dir, path, base, admin, http: client() }
    }

    /// The config text for this gateway's fake with other settings.
    pub fn config_text(&self, server_extra: &str, upstream_extra: &str, rules: &str) -> String {
        server_config(&self.fake.url(), server_extra, upstream_extra, rules)
    }

    /// `base` + path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Scrapes the admin listener's `/metrics`.
pub async fn scrape(http: &reqwest::Client, admin: &str) -> Vec<Sample> {
    let text = http.get(format!("{admin}/metrics")).send().await.expect("scrape").text().await.expect("metrics text");
    parse_metrics(&text)
}

/// Polls `check` every 20 ms until it holds; false if it still does not after `within`.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one HTTP/1.1 answer from a kept-alive connection (by `Content-Length`, or to the
/// end of a chunked body); `None` if the connection closed or nothing came within `within`.
pub async fn read_response(s: &mut tokio::net::TcpStream, within: Duration) -> Option<RawResponse> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut resp = RawResponse { status, head, body: Vec::new() };
        let mut body = buf[head_end + 4..].to_vec();
        let chunked = resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length: usize = resp.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        loop {
            let done = if chunked { body.ends_with(b"0\r\n\r\n") } else { body.len() >= length };
            if done {
                break;
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        resp.body = if chunked { dechunk(&body) } else { body };
        Some(resp)
    };
    tokio::time::timeout(within, read).await.ok().flatten()
}

/// A keep-alive GET as raw bytes (the connection stays open after the answer).
pub fn keep_alive_get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// VmRSS of this test process in KiB (0 where /proc is not there).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
