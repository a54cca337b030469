//! The gateway's configuration: what lives for one load. Loaded and validated once (start-up,
//! reload and `check` alike), then immutable and shared.
//!
//! - `file`: the TOML as written (serde types, unknown keys refused).
//! - `validate/`: the one place that decides what is valid, one file per section; it collects
//!   every problem, named by its field path, and builds the runtime types below.
//! - `problems`: what validation collects (the problems, and the files it read for the watcher).
//! - `preset`: Palette's documented rate limits, the table `[upstream.limits]` starts from.
//! - `secret`: the [`Secret`] type, [`Environment`], and resolving a secret from `*_env`/`*_file`.
//! - `tls`: rustls configs and roots built from the certificate files.
//! - `read`: bounded reads of regular files.
//!
//! Config depends on no request-path or process-lifetime module, only on the leaf modules
//! `path` (a route's or budget prefix's segments), `pattern` (`allow` rules) and
//! `credential_endpoints::check_opening` (which refused endpoint an opening names).

mod file;
mod preset;
mod problems;
mod read;
mod secret;
mod syntax;
mod tls;
mod validate;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;

#[cfg(test)]
pub(crate) use preset::palette_preset;
pub(crate) use preset::CATCH_ALL;
pub(crate) use read::{read_bounded, MAX_FILE_BYTES};
pub(crate) use secret::ProcessEnv;
pub use secret::{Environment, MapEnv, Secret};

use crate::pattern::AllowRule;

/// One problem in a config, named by its field path (`clients[2].credential`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a dotted/indexed field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read (missing, unreadable, not a regular file, or over 1 MiB).
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file asked for.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The text is not TOML, or a key is unknown or has the wrong type (rendered with the line).
    #[error("{0}")]
    Syntax(String),
    /// The TOML is well formed but breaks rules: every problem, each by field path.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem, one per line (what `check` prints).
    pub(crate) fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(p) => p.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Loads and validates the config at `path`; relative file paths inside it are relative to
/// its directory. Used by start-up, reload and `check` alike.
pub fn load(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
    let text =
        read_bounded(path, MAX_FILE_BYTES).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base, env)
}

/// Loads and validates config text; `base_dir` anchors relative file paths.
pub fn load_str(text: &str, base_dir: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
    // Some editors start a UTF-8 file with a byte-order mark; TOML has no use for it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw = syntax::parse(text).map_err(ConfigError::Syntax)?;
    validate::validate(raw, base_dir, env)
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Listeners.
    pub server: ServerConfig,
    /// Where requests go.
    pub upstream: UpstreamConfig,
    /// Upstream credentials, by index; `credential_index` maps names.
    pub credentials: Vec<Credential>,
    /// Local clients, by index.
    pub clients: Vec<Client>,
    /// Routes, in order (first match wins).
    pub routes: Vec<Route>,
    /// The client that requests without a local credential act as.
    pub(crate) anonymous_client: Option<ClientId>,
    /// `[rate_limit] global`: one limit across all clients.
    pub(crate) global_rate_limit: Option<Rate>,
    /// `[log]`.
    pub(crate) log: LogConfig,
    /// `[cache]`: the response cache's bounds.
    pub cache: CacheConfig,
    /// Each route's `cache`, by route name (routes without one are absent).
    pub(crate) route_caches: HashMap<Arc<str>, RouteCache>,
    /// `[cluster]`: the budget and limits shared with other replicas through Redis.
    pub cluster: Option<ClusterConfig>,
    /// Every file the config read (secrets, certificates): a reload re-reads them, and a change
    /// to one triggers a reload.
    pub(crate) files: Vec<PathBuf>,
    key_index: HashMap<[u8; 32], usize>,
    cert_index: HashMap<String, usize>,
    /// `[auth.kubernetes]`: ServiceAccount tokens as local credentials.
    pub(crate) kubernetes: Option<KubernetesAuth>,
    /// `service_accounts` entries (`ns/name`, `ns/*`) → client.
    service_account_index: HashMap<String, usize>,
    /// Rules that can never match (`validate/warnings.rs`); not errors.
    warnings: Vec<Problem>,
}

/// A configured client, by its place in [`Config::clients`]: what authentication finds and
/// what routes, limits and the budget queues key on. Only meaningful for the config (snapshot)
/// it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub(crate) usize);

impl ClientId {
    /// The client's place in [`Config::clients`].
    pub fn index(self) -> usize {
        self.0
    }
}

impl From<usize> for ClientId {
    fn from(index: usize) -> Self {
        ClientId(index)
    }
}

impl Config {
    /// The client whose key hashes to `hash`.
    pub(crate) fn client_by_key_hash(&self, hash: &[u8; 32]) -> Option<ClientId> {
        self.key_index.get(hash).copied().map(ClientId)
    }

    /// The client identified by a certificate name (DNS SAN or CN).
    pub(crate) fn client_by_cert_name(&self, name: &str) -> Option<ClientId> {
        self.cert_index.get(name).copied().map(ClientId)
    }

    /// The client a ServiceAccount identity belongs to: its `namespace/name` entry, else its
    /// namespace's `namespace/*`.
    pub(crate) fn client_by_service_account(&self, namespace: &str, name: &str) -> Option<ClientId> {
        let exact = format!("{namespace}/{name}");
        let by = |k: &str| self.service_account_index.get(k).copied().map(ClientId);
        by(&exact).or_else(|| by(&format!("{namespace}/*")))
    }

    /// The client `id` names.
    pub fn client(&self, id: ClientId) -> &Client {
        &self.clients[id.0]
    }

    /// `route`'s `cache`: GET answers on it are cached and/or coalesced (`None`: never).
    pub fn route_cache(&self, route: &Route) -> Option<RouteCache> {
        if self.route_caches.is_empty() {
            return None;
        }
        self.route_caches.get(&route.name).copied()
    }

    /// The config file itself and every file it read.
    pub fn watched_files(&self, config_path: &Path) -> Vec<PathBuf> {
        std::iter::once(config_path.to_path_buf()).chain(self.files.iter().cloned()).collect()
    }
}

/// `[auth.kubernetes]`: how a ServiceAccount token is checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesAuth {
    /// `audiences`: a token must be for one of these.
    pub audiences: Vec<String>,
    /// `cache_ttl`: how long a positive TokenReview is reused (never past the token's `exp`).
    /// Default 60s.
    pub cache_ttl: Duration,
    /// `timeout`: deadline of every call to the API server (TokenReview, discovery, JWKS).
    /// Default 5s.
    pub timeout: Duration,
    /// `ca_file`: the roots trusted for the API server (only these).
    pub roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// `token_file`: the gateway's own token, re-read as the kubelet rotates it (always set for
    /// `token_review`; for `jwks`, sent to the JWKS endpoint only when set).
    pub token_file: Option<PathBuf>,
    /// `mode` and its settings.
    pub mode: KubernetesMode,
}

/// `auth.kubernetes.mode`.
#[derive(Debug, Clone, PartialEq)]
pub enum KubernetesMode {
    /// Ask the API server (`POST /apis/authentication.k8s.io/v1/tokenreviews`).
    TokenReview {
        /// `api_server`.
        api_server: http::Uri,
    },
    /// Verify the JWT locally against the issuer's key set.
    Jwks {
        /// `issuer`: the `iss` a token must carry.
        issuer: String,
        /// `jwks_url`; `None`: from the issuer's OIDC discovery document.
        jwks_url: Option<http::Uri>,
    },
}

/// `[server]`.
#[derive(Debug)]
pub struct ServerConfig {
    /// The proxy listener (`server.listen`). Default `127.0.0.1:8080`: loopback until an
    /// operator opens it. Bound once: a reload may not move it.
    pub listen: SocketAddr,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics` (`server.admin_listen`). Default
    /// `127.0.0.1:9901`; a port of its own, so that it can stay private when the proxy is open.
    pub admin_listen: SocketAddr,
    /// HTTPS (and mTLS when it verifies clients).
    pub tls: Option<ServerTls>,
    /// Connection and request limits.
    pub limits: ServerLimits,
}

/// `[server]` limits against slow, large or too many clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Request headers must arrive within this time (slowloris). Default 10s.
    pub header_read_timeout: Duration,
    /// A keep-alive connection idle this long is closed. Default 60s.
    pub idle_timeout: Duration,
    /// A request body must arrive within this time when buffered, and may pause no longer than
    /// this while streamed (408 past it). Default 30s.
    pub request_body_timeout: Duration,
    /// A client that accepts no response bytes for this long is disconnected. Default 30s.
    pub send_timeout: Duration,
    /// Largest request body, bytes (413 past it). Default 16 MiB.
    pub max_request_body: u64,
    /// Largest request head (request line + headers), bytes (431 past it). Default 64 KiB.
    pub max_header_bytes: usize,
    /// Most open client connections; more wait in the kernel's accept queue. Default 10000.
    pub max_connections: usize,
    /// Most requests handled at once; more get 503 with `Retry-After` at once. Default 1024.
    pub max_inflight_requests: usize,
    /// After SIGTERM, keep serving (with `/readyz` 503) this long. Default 5s.
    pub shutdown_delay: Duration,
    /// Then let in-flight requests finish for up to this long. Default 30s.
    pub drain_timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `log.format`: JSON lines (`json`, the default, for log shippers) or human-readable `text`.
    pub json: bool,
    /// A tracing filter (`info`, `palette_gateway=debug`); `RUST_LOG` overrides it.
    pub level: String,
}

/// Server TLS, loaded and checked at config load.
pub struct ServerTls {
    /// Ready-to-use rustls config (ALPN h2 + http/1.1).
    pub config: Arc<rustls::ServerConfig>,
    /// Whether client certificates are required and verified.
    pub mtls: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("mtls", &self.mtls).finish_non_exhaustive()
    }
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// Host and port.
    pub authority: http::uri::Authority,
    /// Extra trusted roots (DER), on top of the webpki roots.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// TCP (+TLS) connect timeout. Default 5s: a reachable Palette connects in milliseconds, so
    /// a longer wait only holds the client.
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers (504 past it); also the total
    /// deadline of a login or refresh. Default 60s.
    pub request_timeout: Duration,
    /// Longest pause inside an upstream response body before the transfer is cut (as an error
    /// the client sees). Default 60s.
    pub body_idle_timeout: Duration,
    /// The outbound budget per Palette resource prefix.
    pub limits: UpstreamLimits,
}

/// `[cluster]`: where the shared budget lives and how a replica behaves without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` URL, never with a password in it.
    pub redis_url: String,
    /// From `redis_password_env` / `redis_password_file`.
    pub redis_password: Option<Secret>,
    /// Prefix of every key, so that several gateways (tenants) can share one Redis. Default `pgw`.
    pub key_prefix: String,
    /// A Redis call slower than this counts as Redis unavailable. Default 20ms.
    pub timeout: Duration,
    /// The replica count a replica divides its limits by while Redis is unavailable (when it
    /// has seen no larger count). Default 1.
    pub expected_replicas: u32,
}

/// A rate: `per_second` sustained, `burst` requests at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained requests per second (may be fractional).
    pub per_second: f64,
    /// Requests allowed at once (≥ 1).
    pub burst: u32,
}

/// `[upstream.limits]`, with the preset and overrides merged.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamLimits {
    /// Budget rules; the longest matching prefix decides a request's bucket. Empty: no budget.
    pub rules: Vec<PrefixLimit>,
    /// Longest a request waits for budget (retries included) before it gets 429. Default 2s:
    /// a short wait smooths bursts, a long one only moves the queue into the gateway.
    pub max_wait: Duration,
    /// Most requests waiting per prefix; past it, 429 at once (bounds memory). Default 1024.
    pub max_queue: usize,
}

/// One budget rule: a whole-segment prefix (`:name` segments match any one segment).
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixLimit {
    /// `/v1/spectroclusters/:uid/assets`; `*` is the catch-all for paths no other rule covers.
    pub prefix: String,
    /// The rate for this prefix.
    pub rate: Rate,
}

/// An upstream credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Its name in the config (`default`, `ops`).
    pub name: String,
    /// What it is.
    pub kind: CredentialKind,
}

/// How the gateway proves itself to Palette.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// `ApiKey: <key>`.
    ApiKey(Secret),
    /// `Authorization: <token>` from a login.
    Token(TokenSettings),
}

/// A login credential's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    /// `emailId` of the login.
    pub email: Secret,
    /// The password.
    pub password: Secret,
    /// The tenant's org name, if needed.
    pub org: Option<String>,
    /// Longest a token is trusted: its JWT `exp` if earlier, else the login time + this.
    /// Default 15m.
    pub token_lifetime: Duration,
    /// Refresh when this much lifetime is left, so that no request waits for a login; shorter
    /// than `token_lifetime`. Default 3m.
    pub refresh_before: Duration,
}

/// Which `ProjectUid` values a client may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projects {
    /// `["*"]`.
    Any,
    /// The listed ones (empty: none).
    Only(Vec<String>),
}

impl Projects {
    /// Whether the client may use this project.
    pub fn allows(&self, uid: &str) -> bool {
        match self {
            Projects::Any => true,
            Projects::Only(list) => list.iter().any(|p| p == uid),
        }
    }
}

/// A local client.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its name (bounded: used in logs and metric labels).
    pub name: Arc<str>,
    /// Index into [`Config::credentials`].
    pub credential: usize,
    /// `projects`: the uids listed (entries of 24 lowercase hex digits).
    pub projects: Projects,
    /// `projects` entries that are names, resolved against Palette with the client's
    /// credential; a `ProjectUid` is allowed when it is the uid of one of them.
    pub project_names: Vec<Arc<str>>,
    /// `allow`; `None` allows everything.
    pub allow: Option<Vec<AllowRule>>,
    /// `allow_credential_endpoints`: the refused credential endpoints opened for this client
    /// (each names one exactly; `allow` must cover the request too).
    pub allow_credential_endpoints: Vec<AllowRule>,
    /// The client's own limit (its `rate_limit`, else `[rate_limit] default`); `None`: unlimited.
    pub rate_limit: Option<Rate>,
}

/// A route rule.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name.
    pub name: Arc<str>,
    /// Whole-segment prefix, normalized, no trailing '/' (or "/").
    pub path_prefix: String,
    /// Forward without the prefix.
    pub strip_prefix: bool,
    /// `ProjectUid` to set.
    pub project_uid: Option<http::HeaderValue>,
    /// `project`: a project by name, whose uid (resolved with the requesting client's
    /// credential) is set as `ProjectUid`.
    pub project_name: Option<Arc<str>>,
    /// Only these methods (`None`: any).
    pub methods: Option<Vec<Method>>,
    /// Only these clients, by index (`None`: any).
    pub clients: Option<Vec<ClientId>>,
}

/// A route's `cache = { ttl, coalesce }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCache {
    /// How long a stored answer is served (`0s`: never stored, only coalesced).
    pub ttl: Duration,
    /// Concurrent identical reads share one upstream call.
    pub coalesce: bool,
}

/// `[cache]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// The most bytes the whole cache holds (`max_bytes`, default 64 MiB).
    pub max_bytes: u64,
    /// The largest answer body stored or shared (`max_entry_bytes`, default 1 MiB): a larger
    /// one streams through uncached.
    pub max_entry_bytes: u64,
}
