//! `palette-gateway explain`: what the gateway would do with one request, step by step, without
//! sending anything. Every decision comes from the request path's own functions (framing
//! `target::check`, `path::check`, `auth::identify`, `decide::route` for route, policy, scope
//! and header hygiene, the budget's `bucket_for`), never from a copy of their rules, so what it
//! prints is what a request gets.
//!
//! Secrets stay out of the output: the upstream credential is shown by name
//! (`[upstream api key "default"]`), and the local key given with `--key` (or in an `ApiKey` or
//! `Authorization` header) is never echoed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{Method, Uri};

use crate::auth::{self, KeyCache, PeerIdentity};
use crate::config::{ClientId, Config, CredentialKind};
use crate::error::GatewayError;
use crate::limit::upstream::UpstreamBudget;
use crate::proxy::{decide, path, request_id, target, ConnInfo};

/// The request to explain, as given on the command line.
#[derive(Debug, Default)]
pub struct Request {
    /// `--client NAME`: act as this client (as if authenticated).
    pub client: Option<String>,
    /// `--key KEY`: authenticate with this local key, as `ApiKey: KEY`.
    pub key: Option<String>,
    /// `-H 'Name: value'`, in order.
    pub headers: Vec<String>,
    /// The method, as typed.
    pub method: String,
    /// The path, with its query if any.
    pub target: String,
}

/// What the gateway would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded to Palette.
    Forwarded,
    /// Refused by the gateway (the reason is printed).
    Refused,
}

/// Arguments `explain` cannot use (exit 2, like a bad config).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The offline decision waited on something (it never should: no lookup runs offline).
    #[error("{0}")]
    Internal(String),
    /// Not an HTTP method token.
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    /// Not a path (and query).
    #[error("{0:?} is not a request path: give the path and query as a client sends them (/v1/...), not a URL")]
    Target(String),
    /// A `-H` that is not `Name: value` (the value is not repeated: it may be a key).
    #[error("-H {0}: expected 'Name: value'")]
    Header(String),
    /// `--client` names no configured client.
    #[error("--client {0:?}: no such client (configured: {1})")]
    UnknownClient(String, String),
}

/// Where each step's line starts its text.
const WIDTH: usize = 15;

/// The report being written, one `step  text` line at a time.
struct Report(String);

impl Report {
    fn line(&mut self, step: &str, text: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{step:<WIDTH$}{text}");
    }

    fn more(&mut self, text: impl std::fmt::Display) {
        self.line("", text);
    }

    fn refused(mut self, step: &str, e: &GatewayError) -> (String, Outcome) {
        let (status, code) = e.status_and_code();
        self.line(step, format!("REFUSED: {e}"));
        self.line("result", format!("refused at {step}: {} {code} (exit 1)", status.as_u16()));
        (self.0, Outcome::Refused)
    }
}

/// Explains `req` against `cfg`: the report to print and the outcome.
pub fn explain(cfg: &Config, req: &Request) -> Result<(String, Outcome), UsageError> {
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|_| UsageError::Method(req.method.clone()))?;
    let uri: Uri = req.target.parse().map_err(|_| UsageError::Target(req.target.clone()))?;
    if uri.scheme().is_some() || uri.authority().is_some() || !req.target.starts_with('/') {
        return Err(UsageError::Target(req.target.clone()));
    }
    let mut headers = http::HeaderMap::new();
    for h in &req.headers {
        let (name, value) = h.split_once(':').ok_or_else(|| UsageError::Header(shown_name(h)))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| UsageError::Header(shown_name(h)))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| UsageError::Header(name.to_string()))?;
        headers.append(name, value);
    }
    if let Some(key) = &req.key {
        let value = HeaderValue::from_str(key).map_err(|_| UsageError::Header("--key".into()))?;
        headers.append(auth::API_KEY.clone(), value);
    }
    let forced = match &req.client {
        Some(name) => Some(cfg.clients.iter().position(|c| &*c.name == name).map(ClientId::from).ok_or_else(|| {
            let names: Vec<&str> = cfg.clients.iter().map(|c| &*c.name).collect();
            UsageError::UnknownClient(name.clone(), if names.is_empty() { "none".into() } else { names.join(", ") })
        })?),
        None => None,
    };

    let mut r = Report(String::new());
    r.line("request", format!("{method} {}", req.target));
    let local_key = auth::local_key(&headers).ok().flatten().map(str::to_string);
    for (name, value) in &headers {
        r.more(format!("{name}: {}", shown_request_value(name, value, local_key.as_deref())));
    }
    let (mut parts, ()) = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .map_err(|_| UsageError::Target(req.target.clone()))?
        .into_parts();
    parts.headers = headers;

    // Framing: method, overrides, transfer coding (as for every request).
    if let Err(e) = target::check(&parts, &cfg.server.limits) {
        return Ok(r.refused("framing", &e));
    }
    r.line("framing", "ok (a method Palette serves, no override headers)");
    let checked = match path::check(parts.uri.path()) {
        Ok(p) => p,
        Err(e) => return Ok(r.refused("path check", &GatewayError::from(e))),
    };
    r.line("path check", format!("ok: {checked}"));

    let client_idx = match forced {
        Some(id) => {
            r.line("client", format!("{} (--client: as if authenticated)", cfg.client(id).name));
            id
        }
        None => match auth::identify(cfg, &KeyCache::default(), &parts.headers, &PeerIdentity::default()) {
            Ok(id) => {
                let how = match auth::local_key(&parts.headers) {
                    Ok(Some(_)) => "by its local key",
                    _ => "anonymous: no credential sent, auth.anonymous_client",
                };
                r.line("client", format!("{} ({how})", cfg.client(id).name));
                id
            }
            Err(e) => {
                let hint = "(use --client NAME or --key KEY; certificate clients: --client)";
                r.line("client", hint);
                return Ok(r.refused("client", &e));
            }
        },
    };
    let client = cfg.client(client_idx);
    match client.rate_limit {
        Some(rate) => {
            r.line("client limits", format!("{}/s, burst {} (not simulated here)", rate.per_second, rate.burst))
        }
        None => r.line("client limits", "none"),
    }

    let conn = ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 0)), false, Arc::default());
    let id = request_id::assign(&parts.headers);
    let query = parts.uri.query().map(str::to_string);
    // Offline: no project name lookup, so nothing in this future waits.
    // The key as a request's authentication would hand it on (also with `--client`, as a
    // request whose certificate named the client would still lose its key's copies).
    let presented = auth::presented_key(&parts.headers).ok().flatten().map(|(_, p)| p);
    let decide = decide::route(
        cfg,
        client_idx,
        &parts.method,
        &checked,
        query.as_deref(),
        &mut parts.headers,
        &conn,
        &id.0,
        presented.as_ref(),
        None,
    );
    let Some((matched, decided)) = futures_util::FutureExt::now_or_never(decide) else {
        return Err(UsageError::Internal("the decision steps waited on something offline; this is a bug".into()));
    };
    match matched.route {
        Some(route) => {
            let index = cfg.routes.iter().position(|x| std::ptr::eq(x, route)).unwrap_or(0);
            let strip = if route.strip_prefix {
                format!("strips {}, upstream path {}", route.path_prefix, matched.upstream_path)
            } else {
                format!("prefix {}, path unchanged", route.path_prefix)
            };
            r.line("route", format!("{} (routes[{index}]): {strip}", route.name));
        }
        None => r.line("route", format!("none matches: the path goes upstream unchanged ({})", matched.upstream_path)),
    }
    let decision = match decided {
        Ok(d) => d,
        Err(e) => {
            let step = match e {
                GatewayError::ProjectForbidden { .. } | GatewayError::BadRequest(_) => "scope",
                _ => "policy",
            };
            if step == "policy" {
                why_no_rule(&mut r, cfg, client_idx, &parts.method, &checked, &matched.upstream_path, &e);
            }
            return Ok(r.refused(step, &e));
        }
    };
    match decision.rule {
        Some(rule) => {
            r.line("policy", format!("allowed by {:?} (checked on {})", rule.as_str(), matched.upstream_path))
        }
        None => r.line("policy", "allowed: the client has no allow list (everything not refused by name)"),
    }
    match (&decision.scope.project, matched.route.and_then(|x| x.project_uid.as_ref())) {
        (Some(p), Some(_)) => r.line(
            "scope",
            format!(
                "ProjectUid {} (set by the route; whatever the client sent is replaced)",
                p.to_str().unwrap_or("?")
            ),
        ),
        (Some(p), None) => {
            r.line("scope", format!("ProjectUid {} (the client's own, in its projects)", p.to_str().unwrap_or("?")))
        }
        (None, _) => r.line("scope", "tenant (no ProjectUid)"),
    }

    let path_and_query = match &decision.scope.query {
        Some(q) => format!("{}?{q}", matched.upstream_path),
        None => matched.upstream_path.to_string(),
    };
    let upstream = &cfg.upstream;
    r.line("upstream", format!("{} {}://{}{path_and_query}", parts.method, upstream.scheme, upstream.authority));
    let credential = cfg.credentials.get(client.credential);
    match credential.map(|c| (&c.name, &c.kind)) {
        Some((name, CredentialKind::ApiKey(_))) => r.line("headers", format!("apikey: [upstream api key {name:?}]")),
        Some((name, CredentialKind::Token(_))) => {
            r.line("headers", format!("authorization: [token of login credential {name:?}, kept fresh by the gateway]"))
        }
        None => r.line("headers", "[no upstream credential]"),
    }
    let mut names: Vec<&HeaderName> = parts.headers.keys().collect();
    names.sort_by_key(|n| n.as_str());
    for name in names {
        for value in parts.headers.get_all(name) {
            let text = if *name == crate::proxy::hygiene::X_REQUEST_ID {
                format!("{} (the client's, or a new one per request)", String::from_utf8_lossy(value.as_bytes()))
            } else if *name == "x-forwarded-for" {
                "127.0.0.1 (the client's address)".into()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            r.more(format!("{name}: {text}"));
        }
    }
    let budget = UpstreamBudget::build(&upstream.limits, None);
    match budget.bucket_for(&matched.upstream_path) {
        Some(bucket) => {
            let label = bucket.label();
            let rate = upstream.limits.rules.iter().find(|p| *p.prefix == **label).map(|p| p.rate);
            match rate {
                Some(rate) => r.line("budget", format!("prefix {label}: {}/s, burst {}", rate.per_second, rate.burst)),
                None => r.line("budget", format!("prefix {label}")),
            }
        }
        None => r.line("budget", "none applies"),
    }
    r.line("result", "forwarded (exit 0)");
    Ok((r.0, Outcome::Forwarded))
}

/// After a policy refusal: the client's rules, and the rule that would have matched the path as
/// sent when a route's strip changed it (rules see the upstream path).
fn why_no_rule(
    r: &mut Report,
    cfg: &Config,
    client_idx: ClientId,
    method: &Method,
    sent: &path::CheckedPath,
    upstream: &path::CheckedPath,
    e: &GatewayError,
) {
    if !matches!(e, GatewayError::Forbidden { .. } | GatewayError::ForbiddenAfterStrip { .. }) {
        return;
    }
    let Some(rules) = &cfg.client(client_idx).allow else { return };
    let written: Vec<&str> = rules.iter().map(|x| x.as_str()).collect();
    r.line("policy", format!("no allow rule matches {method} {upstream}; allow = {written:?}"));
    for rule in rules {
        let why = match rule.method() {
            Some(m) if !crate::pattern::method_covers(m, method) => format!("its method is {m}"),
            _ => format!("its path pattern does not cover {upstream}"),
        };
        r.more(format!("{:?}: {why}", rule.as_str()));
    }
    if sent != upstream {
        if let Some(rule) = rules.iter().find(|x| x.matches(method, sent.segments())) {
            r.more(format!(
                "{:?} matches the path as sent ({sent}), but rules are checked on the upstream path, after the \
                 route strips its prefix: write the rule for {upstream}",
                rule.as_str()
            ));
        }
    }
}

/// A header name for an error message, never its value.
fn shown_name(h: &str) -> String {
    h.trim_start().split([':', ' ', '\t']).next().unwrap_or("").chars().take(64).collect()
}

/// A request header as the client sent it, local keys hidden: the credential headers, and any
/// value holding the local key presented (the key under another name).
fn shown_request_value(name: &HeaderName, value: &HeaderValue, local_key: Option<&str>) -> String {
    let holds_key =
        local_key.is_some_and(|k| !k.is_empty() && memchr::memmem::find(value.as_bytes(), k.as_bytes()).is_some());
    if *name == auth::API_KEY || *name == http::header::AUTHORIZATION {
        "[local key, not shown]".into()
    } else if holds_key {
        "[holds the local key, not shown]".into()
    } else {
        String::from_utf8_lossy(value.as_bytes()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, MapEnv};
    use std::path::Path;

    const KEY: &str = "pgw_unit-local-key";

    fn cfg() -> Config {
        let text = format!(
            "[upstream]\nurl = \"https://palette.example\"\n[credentials.default]\napi_key_env = \"K\"\n\
             [credentials.ops]\nemail_env = \"E\"\npassword_env = \"P\"\n\
             [[clients]]\nname = \"bot\"\nkeys = [\"{}\"]\ncredential = \"ops\"\nprojects = [\"p1\"]\n\
             [[routes]]\nname = \"team\"\npath_prefix = \"/team\"\nstrip_prefix = true\nproject_uid = \"p9\"\n",
            auth::key_hash_string(KEY)
        );
        let env = MapEnv::new().with("K", "upstream-secret-key").with("E", "ops@corp.example").with("P", "hunter2-pw");
        load_str(&text, Path::new("."), &env).unwrap()
    }

    fn explain_ok(req: Request) -> String {
        let (report, outcome) = explain(&cfg(), &req).unwrap();
        assert_eq!(outcome, Outcome::Forwarded, "{report}");
        for secret in [KEY, "upstream-secret-key", "ops@corp.example", "hunter2-pw"] {
            assert!(!report.contains(secret), "{secret} printed:\n{report}");
        }
        report
    }

    #[test]
    fn a_token_credential_is_shown_by_name_and_the_key_copy_is_dropped() {
        let report = explain_ok(Request {
            key: Some(KEY.into()),
            // The client's own key under another name never goes upstream (hygiene).
            headers: vec![format!("X-Api-Key: {KEY}"), "X-Trace: t1".into()],
            method: "GET".into(),
            target: "/team/v1/users".into(),
            ..Request::default()
        });
        assert!(report.contains("authorization: [token of login credential \"ops\""), "{report}");
        assert!(report.contains("x-trace: t1"), "{report}");
        let sent = report.split("\nheaders ").nth(1).unwrap();
        assert!(!sent.contains("x-api-key"), "{report}");
        assert!(report.contains("x-api-key: [holds the local key, not shown]"), "{report}");
    }

    #[test]
    fn a_route_project_replaces_the_clients() {
        let report = explain_ok(Request {
            client: Some("bot".into()),
            headers: vec!["ProjectUid: p1".into()],
            method: "GET".into(),
            target: "/team/v1/users?ProjectUid=p1&limit=1".into(),
            ..Request::default()
        });
        assert!(report.contains("scope          ProjectUid p9 (set by the route"), "{report}");
        assert!(report.contains("upstream       GET https://palette.example/v1/users?limit=1\n"), "{report}");
        let sent = report.split("\nheaders ").nth(1).unwrap();
        assert!(sent.contains("projectuid: p9\n") && !sent.contains("projectuid: p1\n"), "{report}");
    }

    #[test]
    fn no_credential_and_no_anonymous_client_is_refused_at_client() {
        let req = Request { method: "GET".into(), target: "/v1/users".into(), ..Request::default() };
        let (report, outcome) = explain(&cfg(), &req).unwrap();
        assert_eq!(outcome, Outcome::Refused);
        assert!(report.contains("result         refused at client: 401"), "{report}");
    }
}
