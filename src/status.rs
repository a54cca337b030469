//! `/status` on the admin listener: what an operator opens first. One snapshot ([`Status`])
//! rendered as JSON (`Accept: application/json` or `?format=json`) or as a small HTML page
//! (semantic tables, no script, readable in a terminal browser): version and commit, uptime,
//! config generation and last reload, each credential, clients and routes with their request
//! counts and rate limits, and the upstream budget per prefix.
//!
//! No secret is ever read into the snapshot: credentials show their kind and state, never a key,
//! password, e-mail or token; clients never show their key hashes. Every config-derived string
//! is HTML-escaped (names are operator input) and the page is served with a CSP that allows no
//! script at all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Response, StatusCode};
use prometheus::core::Collector as _;
use serde::Serialize;

use crate::body::{self, Body};
use crate::config::{CredentialKind, Projects};
use crate::credentials::KeyState;
use crate::limit::upstream::BucketStatus;
use crate::metrics::Metrics;
use crate::runtime::Runtime;

/// The gateway's version.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from, when the build knew it (`build.rs`).
const COMMIT: Option<&str> = match crate::build::COMMIT.as_bytes() {
    b"unknown" => None,
    _ => Some(crate::build::COMMIT),
};
/// Longest reload error message shown.
const MAX_MESSAGE: usize = 1000;

/// Config loads and reloads, for the status page: the generation counts successful loads
/// (1: the config the gateway started with).
#[derive(Debug)]
pub struct ReloadLog {
    inner: Mutex<ReloadRecord>,
}

#[derive(Debug, Clone)]
struct ReloadRecord {
    generation: u64,
    last: Option<LastReload>,
}

#[derive(Debug, Clone)]
struct LastReload {
    at: SystemTime,
    error: Option<String>,
}

impl Default for ReloadLog {
    fn default() -> Self {
        ReloadLog { inner: Mutex::new(ReloadRecord { generation: 1, last: None }) }
    }
}

impl ReloadLog {
    /// A reload was applied.
    pub fn succeeded(&self) {
        let mut r = self.lock();
        r.generation += 1;
        r.last = Some(LastReload { at: SystemTime::now(), error: None });
    }

    /// A reload was refused with `error` (the old config serves on).
    pub fn failed(&self, error: String) {
        self.lock().last = Some(LastReload { at: SystemTime::now(), error: Some(error) });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReloadRecord> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub struct Status {
    version: &'static str,
    /// `null` when the build did not record it.
    commit: Option<&'static str>,
    uptime_seconds: u64,
    config: ConfigStatus,
    credentials: Vec<CredentialStatus>,
    clients: Vec<ClientStatus>,
    routes: Vec<RouteStatus>,
    upstream_budget: Vec<BudgetStatus>,
    /// `[cluster]`: `null` when the budget is not shared through Redis.
    cluster: Option<ClusterStatus>,
}

#[derive(Debug, Serialize)]
struct ClusterStatus {
    /// `shared` while Redis answers, `local` while each replica keeps to its share.
    state: &'static str,
    key_prefix: String,
    timeout_ms: u128,
    /// Replicas seen heartbeating in Redis (0: none seen yet).
    replicas_seen: u32,
    /// What each limit is divided by while Redis is unavailable.
    local_share: u32,
    expected_replicas: u32,
    /// Decisions made on the local share because Redis was unavailable, by limit.
    local_decisions: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct ConfigStatus {
    generation: u64,
    /// `none` (no reload yet), `ok` or `error`.
    last_reload: &'static str,
    last_reload_seconds_ago: Option<u64>,
    last_reload_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct CredentialStatus {
    name: String,
    /// `api_key` or `login`.
    kind: &'static str,
    /// `ok`, `waiting` (no token yet, or the key not checked yet) or `refused`.
    state: &'static str,
    token_expires_in_seconds: Option<i64>,
    last_renewal_seconds_ago: Option<u64>,
    logins: Option<u64>,
    refreshes: Option<u64>,
    last_error: Option<String>,
    last_error_seconds_ago: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ClientStatus {
    name: String,
    credential: String,
    projects: String,
    rate_limit: Option<String>,
    requests: u64,
    rate_limited: u64,
}

#[derive(Debug, Serialize)]
struct RouteStatus {
    name: String,
    path_prefix: String,
    strip_prefix: bool,
    requests: u64,
}

#[derive(Debug, Serialize)]
struct BudgetStatus {
    #[serde(flatten)]
    bucket: BucketStatus,
    /// 429s Palette sent for this prefix despite the budget.
    palette_429s: u64,
}

impl Status {
    /// The snapshot of `rt` now.
    pub fn gather(rt: &Runtime, metrics: &Metrics, reloads: &ReloadLog, uptime: Duration) -> Status {
        let reload = reloads.lock().clone();
        let cfg = &rt.config;
        let requests = sums(&metrics.requests, &["client", "route"]);
        let limited = sums(&metrics.rate_limited, &["client"]);
        let throttled = sums(&metrics.upstream_throttled, &["prefix"]);
        let count = |map: &BTreeMap<(&'static str, String), u64>, label: &'static str, name: &str| {
            map.get(&(label, name.to_string())).copied().unwrap_or(0)
        };
        let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let credentials = cfg
            .credentials
            .iter()
            .map(|c| match &c.kind {
                CredentialKind::ApiKey(_) => {
                    let check = rt.credentials.key_checks().find(|(k, _)| k.name() == c.name).map(|(k, _)| k.clone());
                    let (state, last_error) = match check.as_ref().map(|k| k.state()) {
                        Some(KeyState::Passed) => ("ok", None),
                        Some(KeyState::Rejected(why)) => ("refused", Some(why)),
                        Some(KeyState::Pending) | None => ("waiting", check.as_ref().and_then(|k| k.last_error())),
                    };
                    CredentialStatus {
                        name: c.name.clone(),
                        kind: "api_key",
                        state,
                        token_expires_in_seconds: None,
                        last_renewal_seconds_ago: None,
                        logins: None,
                        refreshes: None,
                        last_error,
                        last_error_seconds_ago: None,
                    }
                }
                CredentialKind::Token(_) => {
                    let manager = rt.credentials.token_managers().find(|m| m.name() == c.name);
                    let token = manager.and_then(|m| m.current());
                    let (logins, refreshes) = manager.map_or((0, 0), |m| m.renewals());
                    CredentialStatus {
                        name: c.name.clone(),
                        kind: "login",
                        state: if token.is_some() { "ok" } else { "waiting" },
                        token_expires_in_seconds: token.as_ref().map(|t| (t.expires_unix - now_unix).round() as i64),
                        last_renewal_seconds_ago: token.as_ref().map(|t| t.age().as_secs()),
                        logins: Some(logins),
                        refreshes: Some(refreshes),
                        last_error: manager.and_then(|m| m.last_error()),
                        last_error_seconds_ago: manager.and_then(|m| m.last_error_age()).map(|d| d.as_secs()),
                    }
                }
            })
            .collect();
        let clients = cfg
            .clients
            .iter()
            .map(|c| ClientStatus {
                name: c.name.to_string(),
                credential: cfg.credentials.get(c.credential).map(|k| k.name.clone()).unwrap_or_default(),
                projects: match &c.projects {
                    Projects::Any => "*".into(),
                    Projects::Only(list) => list.join(", "),
                },
                rate_limit: c.rate_limit.map(|r| format!("{}/s, burst {}", r.per_second, r.burst)),
                requests: count(&requests, "client", &c.name),
                rate_limited: count(&limited, "client", &c.name),
            })
            .collect();
        let routes = cfg
            .routes
            .iter()
            .map(|r| RouteStatus {
                name: r.name.to_string(),
                path_prefix: r.path_prefix.clone(),
                strip_prefix: r.strip_prefix,
                requests: count(&requests, "route", &r.name),
            })
            .collect();
        let upstream_budget = rt
            .budget
            .status()
            .into_iter()
            .map(|b| {
                let palette_429s = count(&throttled, "prefix", &b.prefix);
                BudgetStatus { bucket: b, palette_429s }
            })
            .collect();
        let cluster = rt.cluster.as_ref().map(|c| ClusterStatus {
            state: if c.is_up() { "shared" } else { "local" },
            key_prefix: c.config().key_prefix.clone(),
            timeout_ms: c.config().timeout.as_millis(),
            replicas_seen: c.replicas_seen(),
            local_share: c.local_share(),
            expected_replicas: c.config().expected_replicas,
            local_decisions: sums(&metrics.cluster_local_decisions, &["limit"])
                .into_iter()
                .map(|((_, limit), n)| (limit, n))
                .collect(),
        });
        let last = reload.last.as_ref();
        Status {
            version: VERSION,
            commit: COMMIT,
            uptime_seconds: uptime.as_secs(),
            config: ConfigStatus {
                generation: reload.generation,
                last_reload: match last {
                    None => "none",
                    Some(l) if l.error.is_none() => "ok",
                    Some(_) => "error",
                },
                last_reload_seconds_ago: last.and_then(|l| l.at.elapsed().ok()).map(|d| d.as_secs()),
                last_reload_error: last.and_then(|l| l.error.clone()).map(|e| bounded(&scrub(&e, rt), MAX_MESSAGE)),
            },
            credentials,
            clients,
            routes,
            upstream_budget,
            cluster,
        }
    }

    /// The answer for a request that wants `json` or HTML.
    pub fn response(&self, json: bool) -> Response<Body> {
        let (text, content_type) = if json {
            (serde_json::to_string_pretty(self).unwrap_or_default(), "application/json")
        } else {
            (self.html(), "text/html; charset=utf-8")
        };
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // No script can run on this page, whatever a name holds; inline style only.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        );
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        resp
    }

    /// The HTML page: headings and tables only.
    fn html(&self) -> String {
        let mut o = String::with_capacity(8192);
        o.push_str(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>palette-gateway status</title>\n<style>\
             body{font-family:sans-serif;margin:1em 2em}table{border-collapse:collapse;margin-bottom:1.5em}\
             th,td{border:1px solid #999;padding:.2em .6em;text-align:left}th{background:#eee}\
             </style>\n</head>\n<body>\n<h1>palette-gateway status</h1>\n",
        );
        let c = &self.config;
        o.push_str("<table>\n<tbody>\n");
        row(&mut o, "Version", VERSION);
        row(&mut o, "Commit", self.commit.unwrap_or("unknown"));
        row(&mut o, "Uptime", &ago(self.uptime_seconds));
        row(&mut o, "Config generation", &c.generation.to_string());
        let reload = match (c.last_reload, c.last_reload_seconds_ago) {
            ("none", _) => "none since start".to_string(),
            (result, Some(s)) => format!("{result}, {} ago", ago(s)),
            (result, None) => result.to_string(),
        };
        row(&mut o, "Last reload", &reload);
        if let Some(e) = &c.last_reload_error {
            row(&mut o, "Last reload error", e);
        }
        o.push_str("</tbody>\n</table>\n");

        table(
            &mut o,
            "Credentials",
            &["Name", "Kind", "State", "Token expires in", "Last renewal", "Logins / refreshes", "Last error"],
            self.credentials.iter().map(|k| {
                vec![
                    k.name.clone(),
                    k.kind.into(),
                    k.state.into(),
                    k.token_expires_in_seconds.map_or("-".into(), |s| ago(s.max(0) as u64)),
                    k.last_renewal_seconds_ago.map_or("-".into(), |s| format!("{} ago", ago(s))),
                    match (k.logins, k.refreshes) {
                        (Some(l), Some(r)) => format!("{l} / {r}"),
                        _ => "-".into(),
                    },
                    match (&k.last_error, k.last_error_seconds_ago) {
                        (Some(e), Some(s)) => format!("{e} ({} ago)", ago(s)),
                        (Some(e), None) => e.clone(),
                        (None, _) => "-".into(),
                    },
                ]
            }),
        );
        table(
            &mut o,
            "Clients",
            &["Name", "Credential", "Projects", "Rate limit", "Requests", "Rate-limited"],
            self.clients.iter().map(|c| {
                vec![
                    c.name.clone(),
                    c.credential.clone(),
                    c.projects.clone(),
                    c.rate_limit.clone().unwrap_or_else(|| "none".into()),
                    c.requests.to_string(),
                    c.rate_limited.to_string(),
                ]
            }),
        );
        table(
            &mut o,
            "Routes",
            &["Name", "Path prefix", "Strip prefix", "Requests"],
            self.routes.iter().map(|r| {
                vec![
                    r.name.clone(),
                    r.path_prefix.clone(),
                    if r.strip_prefix { "yes" } else { "no" }.into(),
                    r.requests.to_string(),
                ]
            }),
        );
        table(
            &mut o,
            "Upstream budget",
            &["Prefix", "Rate (per second)", "Burst", "Rate now", "Queued", "Palette 429s"],
            self.upstream_budget.iter().map(|b| {
                vec![
                    b.bucket.prefix.to_string(),
                    trim(b.bucket.per_second),
                    b.bucket.burst.to_string(),
                    trim(b.bucket.current_per_second),
                    b.bucket.queued.to_string(),
                    b.palette_429s.to_string(),
                ]
            }),
        );
        if let Some(c) = &self.cluster {
            let decisions = c.local_decisions.iter().map(|(l, n)| format!("{l} {n}")).collect::<Vec<_>>().join(", ");
            table(
                &mut o,
                "Cluster (Redis)",
                &[
                    "State",
                    "Replicas seen",
                    "Local share",
                    "Expected replicas",
                    "Timeout",
                    "Key prefix",
                    "Local decisions",
                ],
                std::iter::once(vec![
                    c.state.into(),
                    c.replicas_seen.to_string(),
                    format!("1/{}", c.local_share),
                    c.expected_replicas.to_string(),
                    format!("{} ms", c.timeout_ms),
                    c.key_prefix.clone(),
                    if decisions.is_empty() { "none".into() } else { decisions },
                ]),
            );
        }
        o.push_str("</body>\n</html>\n");
        o
    }
}

/// Whether a `/status` request asks for JSON: `?format=json`, or an `Accept` naming
/// `application/json` (and not `text/html` first, as browsers send).
pub fn wants_json(query: Option<&str>, accept: Option<&HeaderValue>) -> bool {
    if let Some(q) = query {
        for pair in q.split('&') {
            match pair {
                "format=json" => return true,
                "format=html" => return false,
                _ => {}
            }
        }
    }
    let accept = accept.and_then(|a| a.to_str().ok()).unwrap_or("");
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(j), Some(h)) => j < h,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Sums of `vec`'s samples by each of `labels` (`(label, value) → sum`).
fn sums(vec: &prometheus::IntCounterVec, labels: &[&'static str]) -> BTreeMap<(&'static str, String), u64> {
    let mut out = BTreeMap::new();
    for family in vec.collect() {
        for m in family.get_metric() {
            let value = m.get_counter().get_value() as u64;
            for pair in m.get_label() {
                if let Some(label) = labels.iter().find(|l| **l == pair.name()) {
                    *out.entry((*label, pair.value().to_string())).or_insert(0) += value;
                }
            }
        }
    }
    out
}

/// `text` with every secret the runtime holds replaced (a reload error names config lines).
fn scrub(text: &str, rt: &Runtime) -> String {
    let mut out = text.to_string();
    for c in &rt.config.credentials {
        let secrets = match &c.kind {
            CredentialKind::ApiKey(k) => vec![k.expose()],
            CredentialKind::Token(t) => vec![t.password.expose(), t.email.expose()],
        };
        for s in secrets.into_iter().filter(|s| !s.is_empty()) {
            out = out.replace(s, "[redacted]");
        }
    }
    out
}

fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// A rate without float noise: `10`, `0.5`, `3.333`.
fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Seconds as `1h 2m 3s`.
fn ago(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn row(o: &mut String, name: &str, value: &str) {
    let _ = writeln!(o, "<tr><th scope=\"row\">{}</th><td>{}</td></tr>", escape(name), escape(value));
}

fn table(o: &mut String, title: &str, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = writeln!(o, "<h2>{}</h2>\n<table>\n<thead>\n<tr>", escape(title));
    for h in head {
        let _ = write!(o, "<th scope=\"col\">{}</th>", escape(h));
    }
    o.push_str("</tr>\n</thead>\n<tbody>\n");
    let mut any = false;
    for cells in rows {
        any = true;
        o.push_str("<tr>");
        for c in cells {
            let _ = write!(o, "<td>{}</td>", escape(&c));
        }
        o.push_str("</tr>\n");
    }
    if !any {
        let _ = writeln!(o, "<tr><td colspan=\"{}\">none</td></tr>", head.len());
    }
    o.push_str("</tbody>\n</table>\n");
}

/// HTML text and attribute escaping.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn json_is_asked_by_query_or_accept() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(wants_json(Some("format=json"), None));
        assert!(!wants_json(Some("format=html"), Some(&v("application/json"))));
        assert!(wants_json(None, Some(&v("application/json"))));
        assert!(!wants_json(None, Some(&v("text/html,application/xhtml+xml,application/json;q=0.9"))));
        assert!(!wants_json(None, None));
    }

    #[test]
    fn reloads_count_generations() {
        let log = ReloadLog::default();
        assert_eq!(log.lock().generation, 1);
        log.failed("bad".into());
        assert_eq!(log.lock().generation, 1);
        log.succeeded();
        let r = log.lock().clone();
        assert_eq!(r.generation, 2);
        assert!(r.last.unwrap().error.is_none());
    }

    #[test]
    fn numbers_read_plainly() {
        assert_eq!(trim(10.0), "10");
        assert_eq!(trim(0.5), "0.5");
        assert_eq!(bounded("abcdef", 3), "abc…");
    }
}
