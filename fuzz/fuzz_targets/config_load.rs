//! The config loader on arbitrary text: `config::load_str` never panics, and a config it accepts
//! is one the gateway can run: its secrets are valid header values, its durations can be added to
//! "now" (deadlines are computed that way), and the rate limits and budget built from it at run
//! time build and work without panicking (what `check`, start-up and reload must agree on).
//!
//! Input (text): the TOML, optionally followed by a line `#%env` and `NAME=VALUE` lines (`\n`,
//! `\0`, `\\` and `\u{feff}` escapes in values): the environment variables, and as
//! `file:NAME=VALUE` the contents of any secret or certificate file whose file name is NAME.
//! No real file or variable is ever read.
#![no_main]

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use palette_gateway::config::{self, Config, CredentialKind, Environment};
use palette_gateway::limit::upstream::UpstreamBudget;
use palette_gateway::limit::ClientLimits;

struct FuzzEnv(HashMap<String, String>);

impl Environment for FuzzEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn read_to_string(&self, path: &Path) -> io::Result<String> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.0.get(&format!("file:{name}")).cloned().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

fn unescape(v: &str) -> String {
    v.replace("\\n", "\n").replace("\\0", "\0").replace("\\u{feff}", "\u{feff}").replace("\\\\", "\\")
}

fn environment(section: Option<&str>) -> FuzzEnv {
    let mut vars = HashMap::from([
        ("PALETTE_API_KEY".to_string(), "k-fuzz-0123456789".to_string()),
        ("PALETTE_PASSWORD".to_string(), "pw-fuzz".to_string()),
    ]);
    for line in section.unwrap_or_default().lines() {
        if let Some((k, v)) = line.split_once('=') {
            vars.insert(k.to_string(), unescape(v));
        }
    }
    FuzzEnv(vars)
}

fn durations(cfg: &Config) -> Vec<(&'static str, Duration)> {
    let s = &cfg.server.limits;
    let mut out = vec![
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
        ("server.shutdown_delay", s.shutdown_delay),
        ("server.drain_timeout", s.drain_timeout),
        ("upstream.connect_timeout", cfg.upstream.connect_timeout),
        ("upstream.request_timeout", cfg.upstream.request_timeout),
        ("upstream.limits.max_wait", cfg.upstream.limits.max_wait),
    ];
    for c in &cfg.credentials {
        if let CredentialKind::Token(t) = &c.kind {
            out.push(("token_lifetime", t.token_lifetime));
            out.push(("refresh_before", t.refresh_before));
        }
    }
    out
}

/// What the gateway builds from an accepted config at start-up and on reload, exercised once.
fn run_time_parts(cfg: &Config) {
    let limits = ClientLimits::build(cfg, None);
    for i in 0..cfg.clients.len() {
        let _ = limits.check(i.into());
    }
    let _ = ClientLimits::build(cfg, Some(&limits));

    let budget = UpstreamBudget::build(&cfg.upstream.limits, None);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build();
    let Ok(rt) = rt else { return };
    for rule in &cfg.upstream.limits.rules {
        let sample: String = if rule.prefix == "*" {
            "/fuzz".into()
        } else {
            rule.prefix.split('/').map(|s| if s.starts_with(':') { "x" } else { s }).collect::<Vec<_>>().join("/")
        };
        let Ok(path) = palette_gateway::path::check(&sample) else { continue };
        let Some(bucket) = budget.bucket_for(&path) else { continue };
        rt.block_on(async {
            for _ in 0..3 {
                let _ = bucket.acquire(0.into(), Duration::ZERO).await;
            }
            for _ in 0..8 {
                bucket.throttled();
            }
            let _ = bucket.current_rate();
            let _ = bucket.acquire(1.into(), Duration::ZERO).await;
        });
    }
    let _ = UpstreamBudget::build(&cfg.upstream.limits, Some(&budget));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (toml, env) = match text.split_once("\n#%env\n") {
        Some((t, e)) => (t, Some(e)),
        None => (text, None),
    };
    let env = environment(env);
    let Ok(cfg) = config::load_str(toml, Path::new("/nonexistent-fuzz-base"), &env) else { return };

    for c in &cfg.credentials {
        if let CredentialKind::ApiKey(key) = &c.kind {
            let k = key.expose();
            // Start-up turns the key into a header value (`Credentials::build`): check must agree.
            assert!(http::HeaderValue::from_str(k).is_ok(), "credentials.{}: accepted key is no header value", c.name);
            assert!(!k.starts_with('\u{feff}'), "credentials.{}: a BOM is part of the accepted key", c.name);
        }
    }
    let now = std::time::Instant::now();
    let tnow = tokio::time::Instant::now();
    for (field, d) in durations(&cfg) {
        assert!(now.checked_add(d).is_some() && tnow.checked_add(d).is_some(), "{field} = {d:?} overflows a deadline");
    }
    run_time_parts(&cfg);
});
