//! The admin listener's endpoints: `/healthz` (serving), `/readyz` (config loaded, every
//! login credential holds a valid token and no API key was refused by Palette; it also lists
//! project names that do not resolve), `/startup`
//! (every credential usable: a token in hand, each API key's check passed), `/status` (the
//! status page, [`crate::status`]) and `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::body::{self, Body};
use crate::credentials::KeyState;
use crate::metrics::Metrics;
use crate::runtime::SharedRuntime;
use crate::status::{ReloadLog, Status};

/// The admin endpoints as a tower service.
#[derive(Clone)]
pub struct Admin {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    /// When the gateway started (the status page's uptime).
    started: tokio::time::Instant,
    /// Config loads and reloads (the status page).
    reloads: Arc<ReloadLog>,
}

impl Admin {
    /// Admin endpoints over the live runtime.
    pub fn new(runtime: SharedRuntime, metrics: Arc<Metrics>, draining: Arc<AtomicBool>) -> Self {
        Admin { runtime, metrics, draining, started: tokio::time::Instant::now(), reloads: Arc::default() }
    }

    /// The status page reads config reloads from `reloads`.
    pub fn with_reloads(mut self, reloads: Arc<ReloadLog>) -> Self {
        self.reloads = reloads;
        self
    }

    /// Answers one admin request.
    pub fn answer(&self, req: &Request<Body>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"code": "MethodNotAllowed", "message": "use GET"}),
            );
        }
        match req.uri().path() {
            "/healthz" => json(StatusCode::OK, serde_json::json!({"status": "ok"})),
            "/readyz" => self.readiness(),
            "/startup" => self.startup(),
            "/status" => {
                let json = crate::status::wants_json(req.uri().query(), req.headers().get(header::ACCEPT));
                let rt = self.runtime.load();
                Status::gather(&rt, &self.metrics, &self.reloads, self.started.elapsed()).response(json)
            }
            "/metrics" => {
                let (text, content_type) = self.metrics.render();
                let mut resp = Response::new(body::full(text));
                if let Ok(v) = HeaderValue::from_str(&content_type) {
                    resp.headers_mut().insert(header::CONTENT_TYPE, v);
                }
                resp
            }
            other => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"code": "NotFound", "message": format!("no admin endpoint {other}")}),
            ),
        }
    }

    fn readiness(&self) -> Response<Body> {
        if self.draining.load(Ordering::SeqCst) {
            return json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "shutting down"}));
        }
        let rt = self.runtime.load();
        let waiting: Vec<_> = rt
            .credentials
            .token_managers()
            .filter(|m| m.current().is_none())
            .map(|m| {
                serde_json::json!({
                    "credential": m.name(),
                    "error": m.last_error().unwrap_or_else(|| "no token yet (login in progress)".into()),
                })
            })
            .chain(rejected_keys(&rt))
            .collect();
        let mut answer = if waiting.is_empty() {
            (StatusCode::OK, serde_json::json!({"status": "ready"}))
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "not ready", "credentials": waiting}))
        };
        // Project names without a uid are listed, but do not make the gateway unready: only
        // the requests that need them are refused.
        let unresolved: Vec<_> = rt
            .projects
            .unresolved()
            .into_iter()
            .map(|(credential, project, reason)| {
                serde_json::json!({"credential": &*credential, "project": &*project, "reason": reason})
            })
            .collect();
        if !unresolved.is_empty() {
            answer.1["unresolved_projects"] = serde_json::Value::Array(unresolved);
        }
        json(answer.0, answer.1)
    }

    /// 200 once every credential is usable, for a startup probe: a tool's first call then never
    /// waits for a cold login. Not affected by a drain (a startup probe no longer runs then).
    fn startup(&self) -> Response<Body> {
        let rt = self.runtime.load();
        let tokens = rt.credentials.token_managers().filter(|m| m.current().is_none()).map(|m| {
            serde_json::json!({
                "credential": m.name(),
                "error": m.last_error().unwrap_or_else(|| "no token yet (login in progress)".into()),
            })
        });
        let keys = rt.credentials.key_checks().filter_map(|(c, _)| {
            let error = match c.state() {
                KeyState::Passed => return None,
                KeyState::Rejected(why) => why,
                KeyState::Pending => c.last_error().unwrap_or_else(|| "the API key check has not answered yet".into()),
            };
            Some(serde_json::json!({"credential": c.name(), "error": error}))
        });
        let waiting: Vec<_> = tokens.chain(keys).collect();
        if waiting.is_empty() {
            json(StatusCode::OK, serde_json::json!({"status": "started"}))
        } else {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({"status": "starting", "credentials": waiting}))
        }
    }
}

/// API keys Palette refused at their check (a key still being checked does not count: a
/// Palette outage is no reason to turn traffic away from the other credentials).
fn rejected_keys(rt: &crate::runtime::Runtime) -> Vec<serde_json::Value> {
    rt.credentials
        .key_checks()
        .filter_map(|(c, _)| match c.state() {
            KeyState::Rejected(why) => Some(serde_json::json!({"credential": c.name(), "error": why})),
            KeyState::Pending | KeyState::Passed => None,
        })
        .collect()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(body::full(v.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl tower::Service<Request<Body>> for Admin {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        ready(Ok(self.answer(&req)))
    }
}
