//! The one place that decides what config is valid: raw file types in, runtime [`Config`] out,
//! with every problem collected and named by its field.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::file::{RawClient, RawConfig, RawCredential, RawRate, RawRoute, RawServerTls, RawUpstream};
use super::{
    Client, Config, Credential, CredentialKind, Environment, LogConfig, PrefixLimit, Problem, Projects, Rate, Route,
    Secret, ServerConfig, ServerLimits, ServerTls, TokenSettings, UpstreamConfig, UpstreamLimits,
};
use crate::config::ConfigError;
use crate::pattern::AllowRule;

const DEFAULT_CREDENTIAL: &str = "default";

/// Collects problems as validation walks the file.
struct Problems(Vec<Problem>, Vec<PathBuf>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem { field: field.into(), message: message.into() });
    }
}

pub(super) fn validate(raw: RawConfig, base: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
    let mut p = Problems(Vec::new(), Vec::new());
    duration_bounds(&raw, &mut p);
    let server = server(&raw, base, env, &mut p);
    let upstream = upstream(&raw.upstream, base, env, &mut p);
    let credentials = credentials(&raw.credentials, base, env, &mut p);
    let cred_names: HashMap<&str, usize> = credentials.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
    let mtls = server.as_ref().is_some_and(|s| s.tls.as_ref().is_some_and(|t| t.mtls));

    let log = log_config(&raw, &mut p);
    let default_rate = raw.rate_limit.default.and_then(|r| rate(r, "rate_limit.default", &mut p));
    let global_rate_limit = raw.rate_limit.global.and_then(|r| rate(r, "rate_limit.global", &mut p));
    let mut client_names: HashMap<String, usize> = HashMap::new();
    let mut clients = Vec::with_capacity(raw.clients.len());
    let mut key_index = HashMap::new();
    let mut cert_index = HashMap::new();
    for (i, c) in raw.clients.iter().enumerate() {
        let field = format!("clients[{i}]");
        if client_names.insert(c.name.clone(), i).is_some() {
            p.add(format!("{field}.name"), format!("duplicate client name {:?}", c.name));
        }
        for (k, key) in c.keys.iter().enumerate() {
            match parse_key_hash(key) {
                Ok(h) => {
                    if key_index.insert(h, i).is_some() {
                        p.add(
                            format!("{field}.keys[{k}]"),
                            "this key hash is already used (keys must be unique across clients)",
                        );
                    }
                }
                Err(m) => p.add(format!("{field}.keys[{k}]"), m),
            }
        }
        for (k, name) in c.cert_names.iter().enumerate() {
            if cert_index.insert(name.clone(), i).is_some() {
                p.add(
                    format!("{field}.cert_names[{k}]"),
                    format!("certificate name {name:?} already identifies another client"),
                );
            }
        }
        // Checked even when the client has other problems, so every problem is named at once.
        let own_rate = c.rate_limit.map(|r| rate(r, &format!("{field}.rate_limit"), &mut p));
        if let Some(mut client) = client(c, &field, &cred_names, &raw.credentials, mtls, &mut p) {
            client.rate_limit = own_rate.unwrap_or(default_rate);
            clients.push(client);
        }
    }

    let anonymous_client = raw.auth.anonymous_client.as_ref().and_then(|name| match client_names.get(name) {
        Some(&i) => Some(i),
        None => {
            p.add("auth.anonymous_client", format!("no client named {name:?}"));
            None
        }
    });

    let mut route_names = HashSet::new();
    let routes: Vec<Route> = raw
        .routes
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let field = format!("routes[{i}]");
            if !route_names.insert(r.name.clone()) {
                p.add(format!("{field}.name"), format!("duplicate route name {:?}", r.name));
            }
            route(r, &field, &client_names, &mut p)
        })
        .collect();

    match (p.0.is_empty(), server, upstream) {
        (true, Some(server), Some(upstream))
            if clients.len() == raw.clients.len() && routes.len() == raw.routes.len() =>
        {
            Ok(Config {
                server,
                upstream,
                credentials,
                clients,
                routes,
                anonymous_client,
                global_rate_limit,
                log,
                files: p.1,
                key_index,
                cert_index,
            })
        }
        _ => Err(ConfigError::Invalid(p.0)),
    }
}

fn server(raw: &RawConfig, base: &Path, env: &dyn Environment, p: &mut Problems) -> Option<ServerConfig> {
    let listen = socket_addr(&raw.server.listen, "server.listen", p);
    let admin_listen = socket_addr(&raw.server.admin_listen, "server.admin_listen", p);
    if let (Some(a), Some(b)) = (listen, admin_listen) {
        if a == b && a.port() != 0 {
            p.add("server.admin_listen", "must differ from server.listen");
        }
    }
    let tls = match &raw.server.tls {
        Some(t) => Some(server_tls(t, base, env, p)?),
        None => None,
    };
    let s = &raw.server;
    let limits = ServerLimits {
        header_read_timeout: positive(
            s.header_read_timeout.unwrap_or(Duration::from_secs(10)),
            "server.header_read_timeout",
            p,
        ),
        idle_timeout: positive(s.idle_timeout.unwrap_or(Duration::from_secs(60)), "server.idle_timeout", p),
        request_body_timeout: positive(
            s.request_body_timeout.unwrap_or(Duration::from_secs(30)),
            "server.request_body_timeout",
            p,
        ),
        send_timeout: positive(s.send_timeout.unwrap_or(Duration::from_secs(30)), "server.send_timeout", p),
        max_request_body: s.max_request_body.unwrap_or(16 * 1024 * 1024),
        max_header_bytes: s.max_header_bytes.unwrap_or(64 * 1024),
        max_connections: s.max_connections.unwrap_or(10_000),
        max_inflight_requests: s.max_inflight_requests.unwrap_or(1024),
        shutdown_delay: s.shutdown_delay.unwrap_or(Duration::from_secs(5)),
        drain_timeout: s.drain_timeout.unwrap_or(Duration::from_secs(30)),
    };
    if limits.max_header_bytes < 8192 {
        p.add("server.max_header_bytes", "must be at least 8192 (hyper's smallest read buffer)");
    }
    for (field, v) in [
        ("server.max_connections", limits.max_connections),
        ("server.max_inflight_requests", limits.max_inflight_requests),
    ] {
        if v == 0 {
            p.add(field, "must be at least 1");
        }
    }
    Some(ServerConfig { listen: listen?, admin_listen: admin_listen?, tls, limits })
}

fn log_config(raw: &RawConfig, p: &mut Problems) -> LogConfig {
    let json = match raw.log.format.as_deref() {
        None | Some("json") => true,
        Some("text") => false,
        Some(other) => {
            p.add("log.format", format!("{other:?} is not a log format: use \"json\" or \"text\""));
            true
        }
    };
    let level = raw.log.level.clone().unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        p.add("log.level", format!("{level:?} is not a log level or filter: {e}"));
    }
    LogConfig { json, level }
}

fn socket_addr(text: &str, field: &str, p: &mut Problems) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(field, format!("{text:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")"));
            None
        }
    }
}

fn read_file(env: &dyn Environment, base: &Path, path: &Path, field: &str, p: &mut Problems) -> Option<String> {
    let full = resolve(base, path);
    p.1.push(full.clone());
    match env.read_to_string(&full) {
        Ok(s) => Some(s),
        Err(e) => {
            p.add(field, format!("cannot read {}: {e}", full.display()));
            None
        }
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

fn pem_certs(text: &str, field: &str, p: &mut Problems) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut text.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            p.add(field, "no PEM certificate found");
            None
        }
        Err(e) => {
            p.add(field, format!("invalid PEM: {e}"));
            None
        }
    }
}

fn server_tls(t: &RawServerTls, base: &Path, env: &dyn Environment, p: &mut Problems) -> Option<ServerTls> {
    let certs = read_file(env, base, &t.cert_file, "server.tls.cert_file", p)
        .and_then(|s| pem_certs(&s, "server.tls.cert_file", p));
    let key: Option<PrivateKeyDer<'static>> =
        read_file(env, base, &t.key_file, "server.tls.key_file", p).and_then(|s| {
            match rustls_pemfile::private_key(&mut s.as_bytes()) {
                Ok(Some(k)) => Some(k),
                Ok(None) => {
                    p.add("server.tls.key_file", "no PEM private key found");
                    None
                }
                Err(e) => {
                    p.add("server.tls.key_file", format!("invalid PEM: {e}"));
                    None
                }
            }
        });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        match rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions() {
            Ok(b) => b,
            Err(e) => {
                p.add("server.tls", e.to_string());
                return None;
            }
        };
    let (builder, mtls) = match &t.client_ca_file {
        Some(ca) => {
            let cas = read_file(env, base, ca, "server.tls.client_ca_file", p)
                .and_then(|s| pem_certs(&s, "server.tls.client_ca_file", p))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in cas {
                if let Err(e) = roots.add(c) {
                    p.add("server.tls.client_ca_file", format!("unusable CA certificate: {e}"));
                }
            }
            match rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build() {
                Ok(v) => (builder.with_client_cert_verifier(v), true),
                Err(e) => {
                    p.add("server.tls.client_ca_file", e.to_string());
                    return None;
                }
            }
        }
        None => (builder.with_no_client_auth(), false),
    };
    let mut config = match builder.with_single_cert(certs?, key?) {
        Ok(c) => c,
        Err(e) => {
            p.add("server.tls", format!("certificate and key do not form a usable pair: {e}"));
            return None;
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(ServerTls { config: Arc::new(config), mtls })
}

fn upstream(u: &RawUpstream, base: &Path, env: &dyn Environment, p: &mut Problems) -> Option<UpstreamConfig> {
    let uri: Option<http::Uri> = match u.url.parse::<http::Uri>() {
        Ok(uri) => Some(uri),
        Err(e) => {
            p.add("upstream.url", format!("{:?} is not a URL: {e}", u.url));
            None
        }
    };
    let parts = uri.and_then(|uri| {
        let scheme = uri.scheme().cloned();
        let ok_scheme = matches!(scheme.as_ref().map(|s| s.as_str()), Some("http" | "https"));
        if !ok_scheme {
            p.add("upstream.url", "scheme must be https:// (or http:// for in-cluster and tests)");
            return None;
        }
        let Some(authority) = uri.authority().cloned() else {
            p.add("upstream.url", "has no host");
            return None;
        };
        if authority.as_str().contains('@') {
            p.add("upstream.url", "must not carry user info (credentials go in [credentials])");
            return None;
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            p.add(
                "upstream.url",
                "must be scheme://host[:port] with no path or query (requests keep their own /v1/... path)",
            );
            return None;
        }
        Some((scheme?, authority))
    });
    let extra_roots = match &u.ca_file {
        Some(f) => read_file(env, base, f, "upstream.ca_file", p)
            .and_then(|s| pem_certs(&s, "upstream.ca_file", p))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    // The upstream client adds these to its trust store; one it cannot use is named here
    // rather than skipped silently there.
    for cert in &extra_roots {
        if let Err(e) = rustls::RootCertStore::empty().add(cert.clone()) {
            p.add("upstream.ca_file", format!("unusable CA certificate: {e}"));
        }
    }
    let connect_timeout = positive(u.connect_timeout.unwrap_or(Duration::from_secs(5)), "upstream.connect_timeout", p);
    let request_timeout = positive(u.request_timeout.unwrap_or(Duration::from_secs(60)), "upstream.request_timeout", p);
    let body_idle_timeout =
        positive(u.body_idle_timeout.unwrap_or(Duration::from_secs(60)), "upstream.body_idle_timeout", p);
    let limits = upstream_limits(u, p);
    let (scheme, authority) = parts?;
    Some(UpstreamConfig {
        scheme,
        authority,
        extra_roots,
        connect_timeout,
        request_timeout,
        body_idle_timeout,
        limits: limits?,
    })
}

/// Rates and bursts are bounded so that every limiter built from them (client GCRAs, budget
/// buckets, `Retry-After` arithmetic) stays far from overflow: one request per 1000 s at the
/// slowest, a million per second and a burst of a million at the most.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_BURST: u32 = 1_000_000;

fn rate(r: RawRate, field: &str, p: &mut Problems) -> Option<Rate> {
    if !(r.per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r.per_second)) {
        p.add(format!("{field}.per_second"), "must be a number from 0.001 (one request per 1000 s) to 1000000");
        return None;
    }
    let burst = match r.burst {
        Some(0) => {
            p.add(format!("{field}.burst"), "must be at least 1");
            return None;
        }
        Some(b) if b > MAX_BURST => {
            p.add(format!("{field}.burst"), format!("must be at most {MAX_BURST}"));
            return None;
        }
        Some(b) => b,
        // One second's worth, at least one request.
        None => r.per_second.ceil().max(1.0) as u32,
    };
    Some(Rate { per_second: r.per_second, burst })
}

fn upstream_limits(u: &RawUpstream, p: &mut Problems) -> Option<UpstreamLimits> {
    let l = &u.limits;
    let before = p.0.len();
    let mut rules = match l.preset.as_deref() {
        None | Some("palette") => crate::limit::upstream::palette_preset(),
        Some("none") => Vec::new(),
        Some(other) => {
            p.add(
                "upstream.limits.preset",
                format!("{other:?} is not a preset: use \"palette\" (the default) or \"none\""),
            );
            Vec::new()
        }
    };
    for (i, raw) in l.prefix.iter().enumerate() {
        let field = format!("upstream.limits.prefix[{i}]");
        if let Err(m) = crate::limit::upstream::check_prefix(&raw.prefix) {
            p.add(format!("{field}.prefix"), m);
            continue;
        }
        let Some(rate) = rate(RawRate { per_second: raw.per_second, burst: raw.burst }, &field, p) else {
            continue;
        };
        match rules.iter_mut().find(|r| r.prefix == raw.prefix) {
            Some(existing) => existing.rate = rate,
            None => rules.push(PrefixLimit { prefix: raw.prefix.clone(), rate }),
        }
    }
    let max_wait = l.max_wait.unwrap_or(Duration::from_secs(2));
    let max_queue = l.max_queue.unwrap_or(1024);
    if max_queue == 0 {
        p.add("upstream.limits.max_queue", "must be at least 1");
    }
    // Replicas behind one egress IP share Palette's per-IP budget: each takes its share.
    match l.replicas.unwrap_or(1) {
        0 => p.add("upstream.limits.replicas", "must be at least 1"),
        n if n > MAX_REPLICAS => p.add("upstream.limits.replicas", format!("must be at most {MAX_REPLICAS}")),
        1 => {}
        n => {
            for r in &mut rules {
                r.rate.per_second /= f64::from(n);
                r.rate.burst = r.rate.burst.div_ceil(n).max(1);
            }
        }
    }
    (p.0.len() == before).then_some(UpstreamLimits { rules, max_wait, max_queue })
}

/// Most gateway replicas sharing one egress IP's budget.
const MAX_REPLICAS: u32 = 1000;

/// The longest any duration key may be. Far above every sane setting, and far below what
/// would overflow when added to a clock reading (`400000000000years` would panic a request).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Every duration key of the file, bounded by [`MAX_DURATION`].
fn duration_bounds(raw: &RawConfig, p: &mut Problems) {
    let s = &raw.server;
    let u = &raw.upstream;
    let mut keys: Vec<(String, Option<Duration>)> = vec![
        ("server.header_read_timeout".into(), s.header_read_timeout),
        ("server.idle_timeout".into(), s.idle_timeout),
        ("server.request_body_timeout".into(), s.request_body_timeout),
        ("server.send_timeout".into(), s.send_timeout),
        ("server.shutdown_delay".into(), s.shutdown_delay),
        ("server.drain_timeout".into(), s.drain_timeout),
        ("upstream.connect_timeout".into(), u.connect_timeout),
        ("upstream.request_timeout".into(), u.request_timeout),
        ("upstream.body_idle_timeout".into(), u.body_idle_timeout),
        ("upstream.limits.max_wait".into(), u.limits.max_wait),
    ];
    for (name, c) in &raw.credentials {
        keys.push((format!("credentials.{name}.token_lifetime"), c.token_lifetime));
        keys.push((format!("credentials.{name}.refresh_before"), c.refresh_before));
    }
    for (field, d) in keys {
        if d.is_some_and(|d| d > MAX_DURATION) {
            p.add(field, "must be at most 1 day (\"24h\")");
        }
    }
}

fn positive(d: Duration, field: &str, p: &mut Problems) -> Duration {
    if d.is_zero() {
        p.add(field, "must be greater than zero");
    }
    d
}

/// Reads one secret given as exactly one of `NAME_env` / `NAME_file` (or a plain value, for the
/// non-secret `email`).
fn secret(
    field: &str,
    plain: Option<&str>,
    env_var: Option<&str>,
    file: Option<&Path>,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<Secret> {
    let given = usize::from(plain.is_some()) + usize::from(env_var.is_some()) + usize::from(file.is_some());
    if given > 1 {
        let names = if plain.is_some() {
            format!("{field}, {field}_env, {field}_file")
        } else {
            format!("{field}_env, {field}_file")
        };
        p.add(field, format!("give only one of {names}"));
        return None;
    }
    if let Some(v) = plain {
        return Some(Secret::new(v));
    }
    if let Some(var) = env_var {
        return match env.var(var) {
            Some(v) if !secret_text(&v).is_empty() => {
                secret_value(secret_text(&v), &format!("{field}_env"), &format!("environment variable {var}"), p)
            }
            Some(_) => {
                p.add(format!("{field}_env"), format!("environment variable {var} is empty"));
                None
            }
            None => {
                p.add(format!("{field}_env"), format!("environment variable {var} is not set"));
                None
            }
        };
    }
    if let Some(f) = file {
        let text = read_file(env, base, f, &format!("{field}_file"), p)?;
        let v = secret_text(&text);
        if v.is_empty() {
            p.add(format!("{field}_file"), format!("{} is empty", resolve(base, f).display()));
            return None;
        }
        return secret_value(v, &format!("{field}_file"), &resolve(base, f).display().to_string(), p);
    }
    None
}

/// A secret as written: without a leading UTF-8 byte-order mark (some editors add one, and it
/// would be sent upstream as part of the key), then trimmed.
fn secret_text(raw: &str) -> &str {
    raw.strip_prefix('\u{feff}').unwrap_or(raw).trim()
}

/// A trimmed secret value, refused when it cannot be one: too long, or with a control character
/// inside (a second line, a NUL) that would break the header or body it is sent in.
fn secret_value(v: &str, field: &str, source: &str, p: &mut Problems) -> Option<Secret> {
    if v.len() > super::secret::MAX_SECRET_BYTES {
        p.add(field, format!("{source} holds more than {} bytes: not a secret", super::secret::MAX_SECRET_BYTES));
        return None;
    }
    if v.chars().any(char::is_control) {
        p.add(
            field,
            format!("{source} has a control character (a newline, NUL or tab) inside the value: a secret is one line"),
        );
        return None;
    }
    Some(Secret::new(v))
}

/// An API key is sent as the `ApiKey` header: refused here, by the same test start-up applies,
/// so `check` fails exactly when the gateway would.
fn header_safe(key: Secret, field: &str, p: &mut Problems) -> Option<Secret> {
    let visible = key.expose().bytes().all(|b| b.is_ascii_graphic());
    if !visible || http::HeaderValue::from_str(key.expose()).is_err() {
        p.add(field, "the API key must be visible ASCII, without spaces (it is sent as the ApiKey header)");
        return None;
    }
    Some(key)
}

fn credentials(
    raw: &BTreeMap<String, RawCredential>,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Vec<Credential> {
    let mut out = Vec::new();
    for (name, c) in raw {
        let field = format!("credentials.{name}");
        if !valid_name(name) {
            p.add(&field, "name must be 1-64 characters of letters, digits, '-', '_', '.'");
        }
        if c.api_key.is_some() {
            p.add(
                format!("{field}.api_key"),
                "a literal secret is not allowed in the config: use api_key_env or api_key_file",
            );
        }
        if c.password.is_some() {
            p.add(
                format!("{field}.password"),
                "a literal secret is not allowed in the config: use password_env or password_file",
            );
        }
        let is_key = c.api_key_env.is_some() || c.api_key_file.is_some() || c.api_key.is_some();
        let is_login = c.email.is_some()
            || c.email_env.is_some()
            || c.email_file.is_some()
            || c.password_env.is_some()
            || c.password_file.is_some()
            || c.password.is_some();
        let kind = match (is_key, is_login) {
            (true, true) => {
                p.add(
                    &field,
                    "is both an API key and a login: give api_key_env/api_key_file, or email + password, not both",
                );
                None
            }
            (false, false) => {
                p.add(&field, "needs api_key_env or api_key_file, or email (email_env, email_file) and password_env or password_file");
                None
            }
            (true, false) => {
                for (k, set) in [
                    ("org", c.org.is_some()),
                    ("token_lifetime", c.token_lifetime.is_some()),
                    ("refresh_before", c.refresh_before.is_some()),
                ] {
                    if set {
                        p.add(format!("{field}.{k}"), "only applies to a login (email + password) credential");
                    }
                }
                secret(
                    &format!("{field}.api_key"),
                    None,
                    c.api_key_env.as_deref(),
                    c.api_key_file.as_deref(),
                    base,
                    env,
                    p,
                )
                .and_then(|key| {
                    let source = if c.api_key_env.is_some() { "api_key_env" } else { "api_key_file" };
                    header_safe(key, &format!("{field}.{source}"), p)
                })
                .map(CredentialKind::ApiKey)
            }
            (false, true) => {
                let email = secret(
                    &format!("{field}.email"),
                    c.email.as_deref(),
                    c.email_env.as_deref(),
                    c.email_file.as_deref(),
                    base,
                    env,
                    p,
                );
                let password = secret(
                    &format!("{field}.password"),
                    None,
                    c.password_env.as_deref(),
                    c.password_file.as_deref(),
                    base,
                    env,
                    p,
                );
                if email.is_none() && c.email.is_none() && c.email_env.is_none() && c.email_file.is_none() {
                    p.add(format!("{field}.email"), "a login credential needs email, email_env or email_file");
                }
                if password.is_none() && c.password_env.is_none() && c.password_file.is_none() && c.password.is_none() {
                    p.add(format!("{field}.password_env"), "a login credential needs password_env or password_file");
                }
                let token_lifetime = positive(
                    c.token_lifetime.unwrap_or(Duration::from_secs(15 * 60)),
                    &format!("{field}.token_lifetime"),
                    p,
                );
                let refresh_before = c.refresh_before.unwrap_or(Duration::from_secs(3 * 60));
                if refresh_before >= token_lifetime {
                    p.add(
                        format!("{field}.refresh_before"),
                        format!("must be shorter than token_lifetime ({})", humantime::format_duration(token_lifetime)),
                    );
                }
                match (email, password) {
                    (Some(email), Some(password)) => Some(CredentialKind::Token(TokenSettings {
                        email,
                        password,
                        org: c.org.clone(),
                        token_lifetime,
                        refresh_before,
                    })),
                    _ => None,
                }
            }
        };
        if let Some(kind) = kind {
            out.push(Credential { name: name.clone(), kind });
        }
    }
    out
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_key_hash(text: &str) -> Result<[u8; 32], String> {
    let Some(h) = text.strip_prefix("sha256:") else {
        return Err("must be \"sha256:<64 hex>\", the hash of a local key (palette-gateway hash-key prints it); never the key itself".into());
    };
    let mut out = [0u8; 32];
    match hex::decode_to_slice(h, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err("must be \"sha256:\" followed by exactly 64 hex digits".into()),
    }
}

fn client(
    c: &RawClient,
    field: &str,
    creds: &HashMap<&str, usize>,
    declared: &BTreeMap<String, RawCredential>,
    mtls: bool,
    p: &mut Problems,
) -> Option<Client> {
    let before = p.0.len();
    if !valid_name(&c.name) {
        p.add(format!("{field}.name"), "must be 1-64 characters of letters, digits, '-', '_', '.'");
    }
    let cred_name = c.credential.as_deref().unwrap_or(DEFAULT_CREDENTIAL);
    let credential = creds.get(cred_name).copied();
    // A declared credential that failed to load has its own problem reported already.
    if credential.is_none() && !declared.contains_key(cred_name) {
        let hint = if c.credential.is_none() {
            " (the default; set credential = \"...\" or define [credentials.default])"
        } else {
            ""
        };
        p.add(format!("{field}.credential"), format!("no credential named {cred_name:?}{hint}"));
    }
    let projects = match &c.projects {
        None => Projects::Only(Vec::new()),
        Some(list) if list.iter().any(|s| s == "*") => {
            if list.len() > 1 {
                p.add(format!("{field}.projects"), "\"*\" (any project) must be the only entry");
            }
            Projects::Any
        }
        Some(list) => {
            for (k, uid) in list.iter().enumerate() {
                if !valid_project_uid(uid) {
                    p.add(
                        format!("{field}.projects[{k}]"),
                        format!("{uid:?} is not a project uid (letters, digits, '-', '_')"),
                    );
                }
            }
            Projects::Only(list.clone())
        }
    };
    let allow = c.allow.as_ref().map(|rules| {
        rules
            .iter()
            .enumerate()
            .filter_map(|(k, r)| match AllowRule::parse(r) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    p.add(format!("{field}.allow[{k}]"), e.to_string());
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let allow_credential_endpoints = c
        .allow_credential_endpoints
        .iter()
        .enumerate()
        .filter_map(|(k, r)| {
            match AllowRule::parse(r).map_err(|e| e.to_string()).and_then(|rule| {
                crate::credential_endpoints::check_opening(&rule)?;
                Ok(rule)
            }) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    p.add(format!("{field}.allow_credential_endpoints[{k}]"), e);
                    None
                }
            }
        })
        .collect::<Vec<_>>();
    if !c.cert_names.is_empty() && !mtls {
        p.add(format!("{field}.cert_names"), "needs server.tls.client_ca_file (mTLS) to be set");
    }
    if p.0.len() != before || credential.is_none() {
        return None;
    }
    Some(Client {
        name: Arc::from(c.name.as_str()),
        credential: credential?,
        projects,
        allow,
        allow_credential_endpoints,
        rate_limit: None,
    })
}

fn valid_project_uid(uid: &str) -> bool {
    (1..=128).contains(&uid.len()) && uid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

fn route(r: &RawRoute, field: &str, clients: &HashMap<String, usize>, p: &mut Problems) -> Option<Route> {
    let before = p.0.len();
    if !valid_name(&r.name) {
        p.add(format!("{field}.name"), "must be 1-64 characters of letters, digits, '-', '_', '.'");
    }
    match crate::path::check(&r.path_prefix) {
        Ok(_) if r.path_prefix.len() > 1 && r.path_prefix.ends_with('/') => {
            p.add(
                format!("{field}.path_prefix"),
                format!("{:?} must not end with '/' (prefixes match whole segments)", r.path_prefix),
            );
        }
        Ok(c) if c.as_str() == r.path_prefix => {}
        Ok(_) => p.add(
            format!("{field}.path_prefix"),
            format!(
                "write it in normalized form: {:?}",
                crate::path::check(&r.path_prefix).map(|c| c.to_string()).unwrap_or_default()
            ),
        ),
        Err(e) => p.add(format!("{field}.path_prefix"), format!("{:?}: {e}", r.path_prefix)),
    }
    if r.strip_prefix && r.path_prefix == "/" {
        p.add(format!("{field}.strip_prefix"), "cannot strip the prefix \"/\"");
    }
    let project_uid = r.project_uid.as_ref().and_then(|uid| {
        if !valid_project_uid(uid) {
            p.add(format!("{field}.project_uid"), format!("{uid:?} is not a project uid (letters, digits, '-', '_')"));
            return None;
        }
        http::HeaderValue::from_str(uid).ok()
    });
    let methods = r.methods.as_ref().map(|ms| {
        ms.iter()
            .enumerate()
            .filter_map(|(k, m)| {
                if !m.bytes().all(|b| b.is_ascii_uppercase()) || m.is_empty() {
                    p.add(
                        format!("{field}.methods[{k}]"),
                        format!("{m:?} is not an HTTP method (upper case, e.g. \"GET\")"),
                    );
                    return None;
                }
                Method::from_bytes(m.as_bytes()).ok()
            })
            .collect::<Vec<_>>()
    });
    let route_clients = r.clients.as_ref().map(|names| {
        names
            .iter()
            .enumerate()
            .filter_map(|(k, n)| match clients.get(n) {
                Some(&i) => Some(i),
                None => {
                    p.add(format!("{field}.clients[{k}]"), format!("no client named {n:?}"));
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    if p.0.len() != before {
        return None;
    }
    Some(Route {
        name: Arc::from(r.name.as_str()),
        path_prefix: r.path_prefix.clone(),
        strip_prefix: r.strip_prefix,
        project_uid,
        methods,
        clients: route_clients,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{load_str, ConfigError, MapEnv};
    use std::path::Path;

    const KEY_HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn env() -> MapEnv {
        MapEnv::new().with("PALETTE_API_KEY", "k-123").with("PALETTE_PASSWORD", "pw")
    }

    fn problems(text: &str) -> Vec<String> {
        match load_str(text, Path::new("."), &env()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        }
    }

    fn base() -> String {
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n"
            .to_string()
    }

    #[test]
    fn minimal_config_loads() {
        let cfg = load_str(&base(), Path::new("."), &env()).unwrap();
        assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.credentials.len(), 1);
    }

    #[test]
    fn full_example_loads() {
        let text = format!(
            "{}[credentials.ops]\nemail = \"ops@example.com\"\npassword_env = \"PALETTE_PASSWORD\"\norg = \"acme\"\ntoken_lifetime = \"15m\"\nrefresh_before = \"3m\"\n\
             [auth]\nanonymous_client = \"ci\"\n[[clients]]\nname = \"ci\"\nkeys = [\"{KEY_HASH}\"]\ncredential = \"ops\"\nprojects = [\"p001\"]\nallow = [\"GET /v1/**\"]\n\
             [[routes]]\nname = \"team-a\"\npath_prefix = \"/team-a\"\nstrip_prefix = true\nproject_uid = \"p001\"\nmethods = [\"GET\"]\nclients = [\"ci\"]\n",
            base()
        );
        let cfg = load_str(&text, Path::new("."), &env()).unwrap();
        assert_eq!(cfg.anonymous_client, Some(0));
        assert_eq!(cfg.routes.len(), 1);
        let mut h = [0u8; 32];
        h[31] = 1;
        assert_eq!(cfg.client_by_key_hash(&h), Some(0));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = load_str(&format!("{}[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", base()), Path::new("."), &env())
            .unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(ref m) if m.contains("lisen")), "{e}");
    }

    #[test]
    fn every_problem_is_named_by_field() {
        let text = format!(
            "{}[[clients]]\nname = \"a\"\n[[clients]]\nname = \"b\"\n[[clients]]\nname = \"c\"\ncredential = \"opz\"\nallow = [\"GET\"]\nkeys = [\"plain\"]\n",
            base()
        );
        let p = problems(&text);
        assert!(p.contains(&"clients[2].credential: no credential named \"opz\"".to_string()), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("clients[2].allow[0]:")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("clients[2].keys[0]:")), "{p:?}");
    }

    #[test]
    fn literal_secrets_are_refused() {
        let p = problems("[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key = \"abc\"\n");
        assert!(p.iter().any(|l| l.starts_with("credentials.default.api_key: a literal secret")), "{p:?}");
        let p = problems(&format!("{}[credentials.ops]\nemail = \"a@b\"\npassword = \"x\"\n", base()));
        assert!(p.iter().any(|l| l.starts_with("credentials.ops.password: a literal secret")), "{p:?}");
    }

    #[test]
    fn missing_env_and_file_are_named() {
        let p = problems("[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"NOPE\"\n[credentials.f]\napi_key_file = \"/nonexistent/key\"\n");
        assert!(
            p.contains(&"credentials.default.api_key_env: environment variable NOPE is not set".to_string()),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.starts_with("credentials.f.api_key_file: cannot read /nonexistent/key")), "{p:?}");
    }

    #[test]
    fn secret_files_are_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("pg-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "  file-key\n").unwrap();
        let cfg = load_str(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_file = \"key\"\n",
            &dir,
            &env(),
        )
        .unwrap();
        assert_eq!(cfg.credentials[0].kind, super::CredentialKind::ApiKey(super::Secret::new("file-key")));
    }

    #[test]
    fn refresh_before_must_be_shorter_than_lifetime() {
        let p = problems(&format!("{}[credentials.ops]\nemail = \"a@b\"\npassword_env = \"PALETTE_PASSWORD\"\ntoken_lifetime = \"1m\"\nrefresh_before = \"2m\"\n", base()));
        assert!(p.iter().any(|l| l.starts_with("credentials.ops.refresh_before:")), "{p:?}");
    }

    #[test]
    fn durations_are_humantime() {
        let e = load_str(&format!("{}[credentials.ops]\nemail = \"a@b\"\npassword_env = \"PALETTE_PASSWORD\"\ntoken_lifetime = \"soon\"\n", base()), Path::new("."), &env()).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax(_)), "{e}");
    }

    #[test]
    fn upstream_url_rules() {
        for (url, want) in [
            ("ftp://x", "scheme"),
            ("https://u:p@x", "user info"),
            ("https://x/api", "no path"),
            ("nope nope", "not a URL"),
        ] {
            let p = problems(&format!(
                "[upstream]\nurl = \"{url}\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n"
            ));
            assert!(p.iter().any(|l| l.starts_with("upstream.url:") && l.contains(want)), "{url}: {p:?}");
        }
    }

    #[test]
    fn route_rules() {
        let text = format!(
            "{}[[routes]]\nname = \"r\"\npath_prefix = \"/a/\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/b\"\nclients = [\"ghost\"]\nmethods = [\"get\"]\nproject_uid = \"bad uid\"\n",
            base()
        );
        let p = problems(&text);
        for want in [
            "routes[0].path_prefix:",
            "routes[1].name: duplicate",
            "routes[1].clients[0]: no client named \"ghost\"",
            "routes[1].methods[0]:",
            "routes[1].project_uid:",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "{want}: {p:?}");
        }
    }

    #[test]
    fn replicas_share_the_upstream_budget() {
        let text = base().replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\n[upstream.limits]\nreplicas = 4\n",
        );
        let cfg = load_str(&text, Path::new("."), &env()).unwrap();
        let packs = cfg.upstream.limits.rules.iter().find(|r| r.prefix == "/v1/packs").unwrap();
        assert_eq!(packs.rate.per_second, 2.5);
        assert_eq!(packs.rate.burst, 2);
        let p = problems(&base().replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\n[upstream.limits]\nreplicas = 0\n",
        ));
        assert_eq!(p, vec!["upstream.limits.replicas: must be at least 1".to_string()]);
    }

    #[test]
    fn anonymous_client_must_exist() {
        let p = problems(&format!("{}[auth]\nanonymous_client = \"side\"\n", base()));
        assert_eq!(p, vec!["auth.anonymous_client: no client named \"side\"".to_string()]);
    }

    #[test]
    fn duplicate_keys_and_names() {
        let text = format!("{}[[clients]]\nname = \"a\"\nkeys = [\"{KEY_HASH}\"]\n[[clients]]\nname = \"a\"\nkeys = [\"{KEY_HASH}\"]\n", base());
        let p = problems(&text);
        assert!(p.iter().any(|l| l.starts_with("clients[1].name: duplicate")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("clients[1].keys[0]: this key hash is already used")), "{p:?}");
    }

    #[test]
    fn projects_star_alone_and_cert_names_need_mtls() {
        let text =
            format!("{}[[clients]]\nname = \"a\"\nprojects = [\"*\", \"p1\"]\ncert_names = [\"a.internal\"]\n", base());
        let p = problems(&text);
        assert!(p.iter().any(|l| l.starts_with("clients[0].projects:")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("clients[0].cert_names: needs server.tls.client_ca_file")), "{p:?}");
    }

    #[test]
    fn credential_endpoint_openings_are_checked_by_field() {
        let text = format!(
            "{}[[clients]]\nname = \"a\"\nallow_credential_endpoints = [\"POST /v1/apiKeys\", \"POST /v1/**\", \"* /v1/apiKeys\", \"GET /v1/packs\", \"PATCH /v1/users/password/*\", \"nonsense\"]\n",
            base()
        );
        let p = problems(&text);
        assert_eq!(p.len(), 5, "{p:?}");
        for (k, want) in
            [(1, "'**'"), (2, "one method"), (3, "names no refused"), (4, "'*' may stand only"), (5, "expected")]
        {
            let field = format!("clients[0].allow_credential_endpoints[{k}]: ");
            assert!(p.iter().any(|l| l.starts_with(&field) && l.contains(want)), "{field}{want}: {p:?}");
        }
        let ok = format!(
            "{}[[clients]]\nname = \"a\"\nallow_credential_endpoints = [\"PUT /v1/apiKeys/*/state\"]\n",
            base()
        );
        let cfg = load_str(&ok, Path::new("."), &env()).unwrap();
        assert_eq!(cfg.clients[0].allow_credential_endpoints[0].as_str(), "PUT /v1/apiKeys/*/state");
    }

    #[test]
    fn client_default_credential_must_exist() {
        let p = problems("[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.x]\napi_key_env = \"PALETTE_API_KEY\"\n[[clients]]\nname = \"a\"\n");
        assert!(p.iter().any(|l| l.starts_with("clients[0].credential: no credential named \"default\"")), "{p:?}");
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pg-cfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key_file_problems(dir: &Path) -> Vec<String> {
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_file = \"key\"\n";
        match load_str(text, dir, &env()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        }
    }

    #[test]
    fn api_keys_with_inner_newline_nul_or_non_ascii_are_refused() {
        let dir = scratch("inner");
        for bad in ["k-1\nk-2", "k-1\0k-2", "k-1\rk", "k-\u{e9}"] {
            std::fs::write(dir.join("key"), format!("{bad}\n")).unwrap();
            let p = key_file_problems(&dir);
            assert!(p.len() == 1 && p[0].starts_with("credentials.default.api_key_file:"), "{bad:?}: {p:?}");
            let p = match load_str(&base(), Path::new("."), &MapEnv::new().with("PALETTE_API_KEY", bad)) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems(),
            };
            assert!(p.len() == 1 && p[0].starts_with("credentials.default.api_key_env:"), "{bad:?}: {p:?}");
        }
    }

    #[test]
    fn a_config_file_may_start_with_a_bom_and_a_bad_ca_is_named() {
        assert!(problems(&format!("\u{feff}{}", base())).is_empty());
        let dir = scratch("ca");
        // A PEM block labelled CERTIFICATE that is no certificate: rustls cannot trust it.
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\nca_file = \"ca.pem\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n";
        let p = match load_str(text, &dir, &env()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        };
        assert!(p.len() == 1 && p[0].starts_with("upstream.ca_file: unusable CA certificate"), "{p:?}");
    }

    #[test]
    fn a_leading_bom_is_not_part_of_the_secret() {
        let dir = scratch("bom");
        std::fs::write(dir.join("key"), "\u{feff}file-key\r\n").unwrap();
        let cfg = load_str(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_file = \"key\"\n",
            &dir,
            &env(),
        )
        .unwrap();
        assert_eq!(cfg.credentials[0].kind, super::CredentialKind::ApiKey(super::Secret::new("file-key")));
    }

    #[test]
    fn fifo_device_and_oversized_files_are_refused_without_hanging() {
        let dir = scratch("fifo");
        let fifo = dir.join("key");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            // Nobody ever writes the FIFO: a blocking open or read would hang this thread.
            let (tx, rx) = std::sync::mpsc::channel();
            let d = dir.clone();
            std::thread::spawn(move || {
                let _ = tx.send(key_file_problems(&d));
            });
            let p = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("reading a FIFO secret hangs");
            assert!(p.len() == 1 && p[0].contains("not a regular file"), "{p:?}");
            std::fs::remove_file(&fifo).unwrap();
        }
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\nca_file = \"/dev/zero\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n";
        let p = problems(text);
        assert!(p.len() == 1 && p[0].starts_with("upstream.ca_file:") && p[0].contains("not a regular file"), "{p:?}");
        std::fs::write(&fifo, vec![b'k'; 2 * 1024 * 1024]).unwrap();
        let p = key_file_problems(&dir);
        assert!(p.len() == 1 && p[0].contains("larger than 1048576 bytes"), "{p:?}");
        std::fs::write(&fifo, vec![b'k'; 100 * 1024]).unwrap();
        let p = key_file_problems(&dir);
        assert!(p.len() == 1 && p[0].contains("more than 65536 bytes"), "{p:?}");
        let e = super::super::load(&dir.join("missing.toml"), &env()).unwrap_err();
        assert!(e.to_string().contains("cannot read config file"), "{e}");
        let e = super::super::load(&dir, &env()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn durations_past_a_day_are_refused_by_field() {
        let huge = "\"400000000000years\"";
        let text = format!(
            "[server]\nidle_timeout = {huge}\nrequest_body_timeout = \"25h\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\nrequest_timeout = {huge}\n[upstream.limits]\nmax_wait = {huge}\n\
             [credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n"
        );
        let p = problems(&text);
        for field in [
            "server.idle_timeout",
            "server.request_body_timeout",
            "upstream.request_timeout",
            "upstream.limits.max_wait",
        ] {
            assert!(p.contains(&format!("{field}: must be at most 1 day (\"24h\")")), "{field}: {p:?}");
        }
        assert!(problems(&format!("[server]\nidle_timeout = \"24h\"\n{}", base())).is_empty());
    }

    #[test]
    fn rates_and_bursts_are_bounded() {
        let p = problems(&format!(
            "{}[rate_limit]\ndefault = {{ per_second = 1e-12, burst = 4000000000 }}\nglobal = {{ per_second = 1, burst = 4000000000 }}\n",
            base()
        ));
        assert!(p.iter().any(|l| l.starts_with("rate_limit.default.per_second: must be a number from 0.001")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("rate_limit.global.burst: must be at most 1000000")), "{p:?}");
        let p = problems(&base().replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\n[upstream.limits]\nreplicas = 1000000\n",
        ));
        assert_eq!(p, vec!["upstream.limits.replicas: must be at most 1000".to_string()]);
    }

    /// A number for every duration and rate key, from zero to absurd.
    fn number() -> impl proptest::strategy::Strategy<Value = f64> {
        use proptest::prelude::*;
        prop_oneof![
            1 => prop_oneof![Just(0.0), Just(1e-12), Just(1e300), Just(f64::MAX), 0.0..1e12f64],
            1 => Just(0.001),
            1 => Just(1_000_000.0),
            4 => 0.001..1000.0f64,
        ]
    }

    /// A burst: mostly valid, sometimes far past the bound.
    fn burst() -> impl proptest::strategy::Strategy<Value = u32> {
        use proptest::prelude::*;
        prop_oneof![1 => 0u32..=u32::MAX, 1 => Just(1_000_000u32), 4 => 1u32..1000]
    }

    /// A duration string for every magnitude humantime accepts.
    fn duration() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let unit = prop::sample::select(vec!["ns", "ms", "s", "m", "h", "days", "years"]);
        prop_oneof![
            1 => (0u64..u64::MAX, unit.clone()),
            1 => Just((24, "h")),
            8 => (0u64..100, prop::sample::select(vec!["ms", "s", "m"])),
        ]
        .prop_map(|(n, unit)| format!("\"{n}{unit}\""))
    }

    /// A config with every duration and rate key set.
    fn numeric_config(d: &[String], r: &[f64], b: &[u32], replicas: u32) -> String {
        format!(
            "[server]\nheader_read_timeout = {}\nidle_timeout = {}\nrequest_body_timeout = {}\nshutdown_delay = {}\ndrain_timeout = {}\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\nconnect_timeout = {}\nrequest_timeout = {}\nbody_idle_timeout = {}\n\
             [upstream.limits]\nmax_wait = {}\nreplicas = {replicas}\n[[upstream.limits.prefix]]\nprefix = \"/v1/x\"\nper_second = {:e}\nburst = {}\n\
             [credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\
             [credentials.ops]\nemail = \"a@b\"\npassword_env = \"PALETTE_PASSWORD\"\ntoken_lifetime = {}\nrefresh_before = {}\n\
             [rate_limit]\ndefault = {{ per_second = {:e}, burst = {} }}\nglobal = {{ per_second = {:e} }}\n\
             [[clients]]\nname = \"c\"\nrate_limit = {{ per_second = {:e}, burst = {} }}\n",
            d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], r[0], b[0], d[9], d[10], r[1], b[1], r[2], r[3], b[2],
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever numbers the duration and rate keys hold, loading never panics, and a config
        /// that loads builds its runtime without a panic.
        #[test]
        fn numeric_keys_never_panic_in_load(
            d in proptest::collection::vec(duration(), 11),
            r in proptest::collection::vec(number(), 4),
            b in proptest::collection::vec(burst(), 3),
            replicas in 0u32..5000,
        ) {
            if let Ok(cfg) = load_str(&numeric_config(&d, &r, &b, replicas), Path::new("."), &env()) {
                runtime_survives(&cfg);
            }
        }

        /// Every value inside the bounds loads, and builds a runtime (client limits, budget,
        /// credentials, upstream client) whose clock arithmetic never panics.
        #[test]
        fn numeric_keys_within_bounds_build_the_runtime(
            ms in proptest::collection::vec(1u64..=86_400_000, 9),
            r in proptest::collection::vec(0.001..=1_000_000.0f64, 4),
            b in proptest::collection::vec(1u32..=1_000_000, 3),
            replicas in 1u32..=1000,
        ) {
            let mut d: Vec<String> = ms.iter().map(|m| format!("\"{m}ms\"")).collect();
            d.extend(["\"24h\"".to_string(), "\"23h\"".to_string()]);
            let cfg = load_str(&numeric_config(&d, &r, &b, replicas), Path::new("."), &env());
            let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
            runtime_survives(&cfg);
        }
    }

    /// Builds everything a config feeds at run time and drives it a little: limits checked,
    /// a budget bucket taken and throttled, every duration added to a clock reading.
    fn runtime_survives(cfg: &super::Config) {
        let limits = crate::limit::ClientLimits::build(cfg, None);
        for _ in 0..3 {
            let _ = limits.check(0);
        }
        let budget = crate::limit::upstream::UpstreamBudget::build(&cfg.upstream.limits, None);
        if let Some(bucket) = budget.bucket_for(&crate::path::check("/v1/x").unwrap()) {
            for _ in 0..8 {
                let _ = bucket.throttled();
            }
            let _ = std::time::Duration::from_secs_f64(1.0 / bucket.current_rate());
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            for client in 0..3 {
                let _ = rt.block_on(bucket.acquire(client, cfg.upstream.limits.max_wait));
            }
        }
        {
            let upstream = crate::upstream::UpstreamClient::new(&cfg.upstream);
            let metrics = crate::metrics::Metrics::new();
            assert!(
                crate::credentials::Credentials::build(cfg, &upstream, None, &metrics, budget.auth_bucket()).is_ok()
            );
            // std's clock on purpose: the overflow a long duration could cause is std `Instant`'s.
            #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
            let now = std::time::Instant::now();
            let l = &cfg.server.limits;
            for d in [
                l.header_read_timeout,
                l.idle_timeout,
                l.request_body_timeout,
                l.send_timeout,
                l.shutdown_delay,
                l.drain_timeout,
                cfg.upstream.connect_timeout,
                cfg.upstream.request_timeout,
                cfg.upstream.body_idle_timeout,
                cfg.upstream.limits.max_wait,
            ] {
                let _ = now + d;
                let _ = tokio::time::Instant::now() + d;
            }
        }
    }

    /// The corners of every bound at once still build and run.
    #[test]
    fn the_extremes_of_every_bound_build_a_working_runtime() {
        let text = "[server]\nheader_read_timeout = \"24h\"\nidle_timeout = \"24h\"\nrequest_body_timeout = \"24h\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\nrequest_timeout = \"24h\"\nbody_idle_timeout = \"1ns\"\n\
             [upstream.limits]\nmax_wait = \"24h\"\nreplicas = 1000\n[[upstream.limits.prefix]]\nprefix = \"/v1/x\"\nper_second = 0.001\nburst = 1000000\n\
             [credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\
             [rate_limit]\ndefault = { per_second = 0.001, burst = 1000000 }\nglobal = { per_second = 1000000, burst = 1 }\n\
             [[clients]]\nname = \"c\"\n";
        let cfg = load_str(text, Path::new("."), &env()).unwrap();
        runtime_survives(&cfg);
    }

    proptest::proptest! {
        /// Arbitrary text never panics the loader.
        #[test]
        fn arbitrary_input_gives_clean_error(text in "\\PC{0,200}") {
            let _ = load_str(&text, Path::new("."), &env());
        }
    }
}
