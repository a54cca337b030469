//! The gateways under test: the real gateway on ephemeral loopback ports in front of the fake
//! Palette (the `fake-palette` crate, which `--demo` uses too), with the standard clients and
//! secrets; the test log file every gateway writes to; and running one test alone in a process.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use fake_palette::{FakePalette, FakePaletteConfig, FakeUser, RecordedRequest};
use palette_gateway::app::RunningGateway;
use palette_gateway::auth::key_hash_string;
use palette_gateway::config::{self, MapEnv};

use super::files::scratch_dir;
use super::http::{client, raw_request, RawResponse};

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
projects = ["5ca1ab1e0000000000000001", "5ca1ab1e0000000000000002"]
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
project_uid = "5ca1ab1e0000000000000001"

[[routes]]
name = "ci-clusters"
path_prefix = "/v1/spectroclusters"
methods = ["GET"]
clients = ["ci"]
project_uid = "5ca1ab1e0000000000000002"
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
    pub fake: TrackedFake,
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
        let http = client();
        key_checks_answered(&http, &admin).await;
        Harness { fake: TrackedFake(fake), gateway, base, admin, http }
    }

    /// `base` + path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The requests the fake received other than the gateway's own calls (login, refresh, the
    /// API key check).
    pub fn forwarded(&self) -> Vec<RecordedRequest> {
        self.fake.requests().into_iter().filter(|r| !own_call(r)).collect()
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

/// Waits (at most 5 s) until the gateway's start-up API key checks have had their answer (per
/// `/status`), so that a test's own requests, counts and forced faults come after them.
pub async fn key_checks_answered(http: &reqwest::Client, admin: &str) {
    let answered = || async {
        let Ok(r) = http.get(format!("{admin}/status?format=json")).send().await else { return false };
        let Ok(v) = r.json::<serde_json::Value>().await else { return false };
        let credentials = v["credentials"].as_array().cloned().unwrap_or_default();
        credentials.iter().filter(|c| c["kind"] == "api_key").all(|c| c["state"] != "waiting")
    };
    eventually(Duration::from_secs(5), answered).await;
}

/// Whether a raw request head is the gateway's start-up API key check (a client's request
/// always carries the `X-Request-Id` the gateway sets).
pub fn key_check_head(head: &str) -> bool {
    head.starts_with(&format!("GET {KEY_CHECK_PATH} "))
        && !head.lines().any(|l| l.to_ascii_lowercase().starts_with("x-request-id:"))
}

/// The path of the gateway's start-up API key check.
pub const KEY_CHECK_PATH: &str = palette_gateway::credentials::key_check::CHECK_PATH;

/// Whether the fake saw the gateway's start-up API key check: a GET of [`KEY_CHECK_PATH`]
/// without the `X-Request-Id` every forwarded request carries.
pub fn key_check(r: &RecordedRequest) -> bool {
    r.method == http::Method::GET && r.path_and_query == KEY_CHECK_PATH && !r.headers.contains_key("x-request-id")
}

/// Whether the fake saw one of the gateway's own calls rather than a client's request: a login,
/// a refresh or the API key check.
pub fn own_call(r: &RecordedRequest) -> bool {
    r.path_and_query.starts_with("/v1/auth/") || key_check(r)
}

/// The config text of a test gateway.
pub fn gateway_config(upstream_url: &str, upstream_extra: &str, rules: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"{upstream_url}\"\nconnect_timeout = \"2s\"\nrequest_timeout = \"5s\"\n{upstream_extra}\n{rules}"
    )
}

/// Where every test process writes its logs (JSON lines, debug level): CI scans them all for
/// secrets after the suite (scripts/scan-test-logs.sh).
pub const TEST_LOG_DIR: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/test-logs");

/// This test process's log file under [`TEST_LOG_DIR`] (`<binary>-<pid>.log`).
pub fn log_file() -> String {
    let exe = std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    format!("{TEST_LOG_DIR}/{}-{}.log", exe.unwrap_or_else(|| "test".into()), std::process::id())
}

/// Sends every log line of this process (the gateway's, the fake's, the HTTP stacks'; debug
/// level unless RUST_LOG says otherwise) to [`log_file`]. One subscriber for the whole binary:
/// tests that read logs read that file.
pub fn init_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = std::fs::create_dir_all(TEST_LOG_DIR);
        let Ok(f) = std::fs::File::create(log_file()) else { return };
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "debug".into()))
            .with_writer(std::sync::Mutex::new(f))
            .try_init();
    });
}

/// A fake Palette that records the tokens it issued for the log scan when dropped (the fake of
/// [`Harness`] and [`FileGateway`] alike), without keeping its owner from being taken apart.
pub struct TrackedFake(pub FakePalette);

impl std::ops::Deref for TrackedFake {
    type Target = FakePalette;
    fn deref(&self) -> &FakePalette {
        &self.0
    }
}

impl Drop for TrackedFake {
    fn drop(&mut self) {
        // The fake's tokens are secrets too: record them for the log scan.
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
        let http = client();
        key_checks_answered(&http, &admin).await;
        FileGateway { fake, gateway, dir, path, base, admin, http }
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

/// For a test that measures the whole process (memory, open descriptors, panics on any thread):
/// runs test `name` (`module::function`) alone in a child process of this test binary, so that
/// no other test shares what it measures. True in that child, where the caller runs its body;
/// in the parent, fails with the child's output if the child failed, and returns false.
pub fn alone_in_process(name: &str) -> bool {
    const VAR: &str = "PALETTE_GATEWAY_TEST_ALONE";
    if std::env::var(VAR).is_ok_and(|v| v == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--test-threads=1", "--nocapture"])
        .env(VAR, name)
        .output()
        .expect("the test binary runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, alone in process {}, failed:\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{name} passed alone in its own process:\n{stderr}");
    false
}
