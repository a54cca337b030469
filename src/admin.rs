//! The admin listener's endpoints: `/healthz` (serving), `/readyz` (config loaded and every
//! login credential holds a valid token; it also lists project names that do not resolve)
//! and `/metrics` (Prometheus text format).

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::body::{self, Body};
use crate::metrics::Metrics;
use crate::runtime::SharedRuntime;

/// The admin endpoints as a tower service.
#[derive(Clone)]
pub struct Admin {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

impl Admin {
    /// Admin endpoints over the live runtime.
    pub fn new(runtime: SharedRuntime, metrics: Arc<Metrics>, draining: Arc<AtomicBool>) -> Self {
        Admin { runtime, metrics, draining }
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
