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
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    pub(crate) upstream: RawUpstream,
    #[serde(default)]
    pub(crate) credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    pub(crate) auth: RawAuth,
    #[serde(default)]
    pub(crate) clients: Vec<RawClient>,
    #[serde(default)]
    pub(crate) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(crate) rate_limit: RawRateLimits,
    #[serde(default)]
    pub(crate) log: RawLog,
    #[serde(default)]
    pub(crate) cache: RawCache,
    pub(crate) cluster: Option<RawCluster>,
}

/// `[cache]`: the bounds of the shared response cache.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCache {
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_entry_bytes: Option<u64>,
}

/// A route's `cache = { ttl = "5s", coalesce = true }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteCache {
    #[serde(with = "humantime_serde")]
    pub(crate) ttl: Duration,
    #[serde(default)]
    pub(crate) coalesce: bool,
}

/// `[cluster]`: replicas that share one budget through Redis.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub(crate) redis_url: String,
    pub(crate) redis_password_env: Option<String>,
    pub(crate) redis_password_file: Option<PathBuf>,
    /// Only present to refuse it with a clear message: secrets never live in the TOML.
    pub(crate) redis_password: Option<toml::Value>,
    pub(crate) key_prefix: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) timeout: Option<Duration>,
    pub(crate) expected_replicas: Option<u32>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) format: Option<String>,
    pub(crate) level: Option<String>,
}

/// `{ per_second = 10, burst = 20 }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    pub(crate) per_second: f64,
    pub(crate) burst: Option<u32>,
}

/// `[rate_limit]`: per-client default and a global limit across all clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimits {
    pub(crate) default: Option<RawRate>,
    pub(crate) global: Option<RawRate>,
}

/// `[upstream.limits]`: the outbound budget that keeps Palette from answering 429.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamLimits {
    pub(crate) preset: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) max_wait: Option<Duration>,
    pub(crate) max_queue: Option<usize>,
    pub(crate) replicas: Option<u32>,
    #[serde(default)]
    pub(crate) prefix: Vec<RawPrefixLimit>,
}

/// `[[upstream.limits.prefix]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrefixLimit {
    pub(crate) prefix: String,
    pub(crate) per_second: f64,
    pub(crate) burst: Option<u32>,
}

/// `[server]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    #[serde(default = "default_listen")]
    pub(crate) listen: String,
    #[serde(default = "default_admin_listen")]
    pub(crate) admin_listen: String,
    pub(crate) tls: Option<RawServerTls>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) header_read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) request_body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) send_timeout: Option<Duration>,
    pub(crate) max_request_body: Option<u64>,
    pub(crate) max_header_bytes: Option<usize>,
    pub(crate) max_connections: Option<usize>,
    pub(crate) max_inflight_requests: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) shutdown_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) drain_timeout: Option<Duration>,
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
    "127.0.0.1:9901".into()
}

/// `[server.tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) client_ca_file: Option<PathBuf>,
}

/// `[upstream]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) url: String,
    pub(crate) ca_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) body_idle_timeout: Option<Duration>,
    #[serde(default)]
    pub(crate) limits: RawUpstreamLimits,
}

/// `[credentials.NAME]`: an API key or a login (token) credential.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCredential {
    pub(crate) api_key_env: Option<String>,
    pub(crate) api_key_file: Option<PathBuf>,
    /// Only present to refuse it with a clear message: secrets never live in the TOML.
    pub(crate) api_key: Option<toml::Value>,
    pub(crate) email: Option<String>,
    pub(crate) email_env: Option<String>,
    pub(crate) email_file: Option<PathBuf>,
    pub(crate) password_env: Option<String>,
    pub(crate) password_file: Option<PathBuf>,
    /// Only present to refuse it with a clear message.
    pub(crate) password: Option<toml::Value>,
    pub(crate) org: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) token_lifetime: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) refresh_before: Option<Duration>,
}

/// `[auth]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub(crate) anonymous_client: Option<String>,
    pub(crate) kubernetes: Option<RawKubernetes>,
}

/// `[auth.kubernetes]`: ServiceAccount tokens as local credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKubernetes {
    pub(crate) mode: String,
    #[serde(default)]
    pub(crate) audiences: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) cache_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(crate) timeout: Option<Duration>,
    pub(crate) api_server: Option<String>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) issuer: Option<String>,
    pub(crate) jwks_url: Option<String>,
}

/// `[[clients]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClient {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) keys: Vec<String>,
    pub(crate) credential: Option<String>,
    pub(crate) projects: Option<Vec<String>>,
    pub(crate) allow: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) allow_credential_endpoints: Vec<String>,
    #[serde(default)]
    pub(crate) cert_names: Vec<String>,
    pub(crate) rate_limit: Option<RawRate>,
    #[serde(default)]
    pub(crate) service_accounts: Vec<String>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: String,
    pub(crate) path_prefix: String,
    #[serde(default)]
    pub(crate) strip_prefix: bool,
    pub(crate) project_uid: Option<String>,
    /// A project by name, resolved against Palette at run time (instead of `project_uid`).
    pub(crate) project: Option<String>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) clients: Option<Vec<String>>,
    pub(crate) cache: Option<RawRouteCache>,
}
