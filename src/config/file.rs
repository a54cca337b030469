//! The config file as written: serde types that mirror the TOML exactly, unknown keys refused.
//!
//! Nothing outside `config` sees these; `validate` turns them into the runtime [`super::Config`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    pub upstream: RawUpstream,
    #[serde(default)]
    pub credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub clients: Vec<RawClient>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub rate_limit: RawRateLimits,
    #[serde(default)]
    pub log: RawLog,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// `{ per_second = 10, burst = 20 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub per_second: f64,
    pub burst: Option<u32>,
}

/// `[rate_limit]`: per-client default and a global limit across all clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub default: Option<RawRate>,
    pub global: Option<RawRate>,
}

/// `[upstream.limits]`: the outbound budget that keeps Palette from answering 429.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamLimits {
    pub preset: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
    pub max_queue: Option<usize>,
    pub replicas: Option<u32>,
    #[serde(default)]
    pub prefix: Vec<RawPrefixLimit>,
}

/// `[[upstream.limits.prefix]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefixLimit {
    pub prefix: String,
    pub per_second: f64,
    pub burst: Option<u32>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    pub tls: Option<RawServerTls>,
    #[serde(default, with = "humantime_serde")]
    pub header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
    pub max_request_body: Option<u64>,
    pub max_header_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_inflight_requests: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            tls: None,
            header_read_timeout: None,
            idle_timeout: None,
            request_body_timeout: None,
            send_timeout: None,
            max_request_body: None,
            max_header_bytes: None,
            max_connections: None,
            max_inflight_requests: None,
            shutdown_delay: None,
            drain_timeout: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub body_idle_timeout: Option<Duration>,
    #[serde(default)]
    pub limits: RawUpstreamLimits,
}

/// `[credentials.NAME]`: an API key or a login (token) credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub api_key_env: Option<String>,
    pub api_key_file: Option<PathBuf>,
    /// Only present to refuse it with a clear message: secrets never live in the TOML.
    pub api_key: Option<toml::Value>,
    pub email: Option<String>,
    pub email_env: Option<String>,
    pub email_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Only present to refuse it with a clear message.
    pub password: Option<toml::Value>,
    pub org: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub refresh_before: Option<Duration>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub anonymous_client: Option<String>,
}

/// `[[clients]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    #[serde(default)]
    pub keys: Vec<String>,
    pub credential: Option<String>,
    pub projects: Option<Vec<String>>,
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub allow_credential_endpoints: Vec<String>,
    #[serde(default)]
    pub cert_names: Vec<String>,
    pub rate_limit: Option<RawRate>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    pub path_prefix: String,
    #[serde(default)]
    pub strip_prefix: bool,
    pub project_uid: Option<String>,
    pub methods: Option<Vec<String>>,
    pub clients: Option<Vec<String>>,
}
