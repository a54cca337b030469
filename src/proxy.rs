//! The request path, in the order each request takes it:
//!
//! ```text
//! request id → target form → path check → local auth → route → policy (/v1/auth block, allow)
//!   → scope (ProjectUid) → header hygiene → credential swap → forward (401 → new token → one replay)
//!   → response hygiene (hop-by-hop, Set-Cookie, secret scrub)
//! ```
//!
//! Each step lives in its own module as a plain function over the request parts, and this
//! module is the one service that runs them: they share one config snapshot, taken once when the
//! request arrives, so a reload never changes the rules under a request in flight.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Version};
use http_body::Body as _;

use crate::auth::{self, PeerIdentity};
use crate::body::{self, Body};
use crate::config::Config;
use crate::credentials::{Credentials, UpstreamCredential};
use crate::error::GatewayError;
use crate::forward::{self, X_REQUEST_ID};
use crate::upstream::{UpstreamClient, UpstreamFailure};
use crate::{path, policy, routes, scope};

/// A request body up to this size is buffered so it can be replayed after a token refusal.
pub const REPLAY_LIMIT: u64 = 64 * 1024;

/// Everything a request needs, swapped whole on reload.
pub struct Runtime {
    /// The validated config.
    pub config: Arc<Config>,
    /// Upstream credentials, indexed like the config's.
    pub credentials: Credentials,
    /// The pooled upstream client.
    pub upstream: UpstreamClient,
}

/// The live runtime, shared by the listeners and reload.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's names (mTLS).
    pub identity: Arc<PeerIdentity>,
}

/// The gateway as a tower service.
#[derive(Clone)]
pub struct Gateway {
    runtime: SharedRuntime,
}

impl Gateway {
    /// A gateway serving the given runtime.
    pub fn new(runtime: SharedRuntime) -> Self {
        Gateway { runtime }
    }

    /// Handles one request; never fails (errors become Palette-shaped answers).
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        // The snapshot is taken once: the request finishes on the config it started with.
        let rt = self.runtime.load_full();
        let request_id = request_id(req.headers());
        let rid = request_id.to_str().unwrap_or_default().to_string();
        let method = req.method().clone();
        let path_for_log = req.uri().path().to_string();
        let mut outcome = Outcome::default();
        let mut resp = match process(&rt, req, &request_id, &rid, &mut outcome).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(request_id = %rid, error = %e, "request refused");
                e.into_response(&rid)
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        tracing::info!(
            target: "palette_gateway::access",
            request_id = %rid,
            client = outcome.client.as_deref().unwrap_or("-"),
            route = outcome.route.as_deref().unwrap_or("none"),
            method = %method,
            path = %path_for_log,
            status = resp.status().as_u16(),
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        );
        resp
    }
}

/// What the request path learned, for the access log.
#[derive(Default)]
struct Outcome {
    client: Option<Arc<str>>,
    route: Option<Arc<str>>,
}

impl tower::Service<Request<Body>> for Gateway {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// Keeps a client's `X-Request-Id` when it is a sane token, else makes one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:+=/".contains(c)) {
            return v.clone();
        }
    }
    let id: u128 = rand::random();
    // 32 hex digits are always a valid header value.
    HeaderValue::from_str(&format!("{id:032x}")).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

async fn process(
    rt: &Runtime,
    req: Request<Body>,
    request_id: &HeaderValue,
    rid: &str,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::CONNECT {
        return Err(GatewayError::MethodNotAllowed("CONNECT".into()));
    }
    // HTTP/2 always carries :authority; in HTTP/1 an authority means absolute-form, which a
    // reverse proxy must not follow to another host.
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(GatewayError::BadRequest(
            "absolute-form request targets are not accepted: send origin-form (/v1/...)".into(),
        ));
    }
    let conn = parts.extensions.get::<ConnInfo>().cloned().unwrap_or_else(|| ConnInfo {
        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls: false,
        identity: Arc::default(),
    });
    let checked = path::check(parts.uri.path())?;
    let cfg = &rt.config;
    let client_idx = auth::identify(cfg, &parts.headers, &conn.identity)?;
    let client = &cfg.clients[client_idx];
    outcome.client = Some(client.name.clone());
    let matched = routes::select(cfg, client_idx, &parts.method, &checked);
    outcome.route = matched.route.map(|r| r.name.clone());
    policy::check(client, &parts.method, &matched.upstream_path)?;
    let scope = scope::apply(client, matched.route, &mut parts.headers, parts.uri.query())?;
    forward::request_headers(&mut parts.headers, conn.peer.ip(), conn.tls, request_id);

    let path_and_query = match &scope.query {
        Some(q) => format!("{}?{q}", matched.upstream_path),
        None => matched.upstream_path.to_string(),
    };
    let uri = rt
        .upstream
        .uri(&path_and_query)
        .map_err(|e| GatewayError::BadRequest(format!("request target cannot be forwarded: {e}")))?;
    let credential = rt.credentials.get(client.credential).ok_or_else(|| GatewayError::CredentialUnavailable {
        credential: client.credential.to_string(),
        reason: "not prepared".into(),
    })?;

    let mut head = Request::new(());
    *head.method_mut() = parts.method;
    *head.uri_mut() = uri;
    *head.headers_mut() = parts.headers;
    let (head, ()) = head.into_parts();

    let resp = match credential {
        UpstreamCredential::ApiKey { header, secret } => {
            let req = build(&head, auth::API_KEY, header.clone(), body);
            let resp = send(&rt.upstream, req).await?;
            forward::scrub_error(resp, &[secret.expose()], rid).await
        }
        UpstreamCredential::Token(manager) => {
            let unavailable = |e: crate::credentials::TokenUnavailable| GatewayError::CredentialUnavailable {
                credential: manager.name().to_string(),
                reason: e.0,
            };
            let token = manager.get().await.map_err(unavailable)?;
            let (first_body, replay) = replayable(body).await?;
            let req = build(&head, header::AUTHORIZATION.as_str(), token.header.clone(), first_body);
            let resp = send(&rt.upstream, req).await?;
            let resp = match replay {
                Some(bytes) if resp.status() == http::StatusCode::UNAUTHORIZED => {
                    // The token was refused early (revoked, rotated): one new token, one replay.
                    drop(resp);
                    let fresh = manager.replace(token.generation).await.map_err(unavailable)?;
                    let req = build(&head, header::AUTHORIZATION.as_str(), fresh.header.clone(), body::full(bytes));
                    let resp = send(&rt.upstream, req).await?;
                    return Ok(finish(forward::scrub_error(resp, &[fresh.value.expose(), token.value.expose()], rid).await));
                }
                None if resp.status() == http::StatusCode::UNAUTHORIZED => {
                    // Not replayable: the 401 passes through, but the refused token goes.
                    manager.invalidate(token.generation);
                    resp
                }
                _ => resp,
            };
            forward::scrub_error(resp, &[token.value.expose()], rid).await
        }
    };
    Ok(finish(resp))
}

fn finish(mut resp: Response<Body>) -> Response<Body> {
    forward::response_headers(resp.headers_mut());
    resp
}

fn build(head: &http::request::Parts, name: &'static str, value: HeaderValue, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.headers_mut() = head.headers.clone();
    req.headers_mut().insert(name, value);
    req
}

async fn send(upstream: &UpstreamClient, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
    match upstream.send(req).await {
        Ok(resp) => Ok(resp.map(body::boxed)),
        Err(UpstreamFailure::Connect(e)) => Err(GatewayError::UpstreamUnavailable(e)),
        Err(UpstreamFailure::Timeout(d)) => Err(GatewayError::UpstreamTimeout(humantime::format_duration(d).to_string())),
        Err(UpstreamFailure::Protocol(e)) => Err(GatewayError::UpstreamError(e)),
    }
}

/// Buffers a body of at most [`REPLAY_LIMIT`] bytes (known from its length) so it can be sent
/// twice; larger or unknown-length bodies stream once and are not replayed.
async fn replayable(body: Body) -> Result<(Body, Option<Bytes>), GatewayError> {
    if body.is_end_stream() {
        return Ok((body::empty(), Some(Bytes::new())));
    }
    match body.size_hint().upper() {
        Some(n) if n <= REPLAY_LIMIT => {
            let bytes = body::collect_limited(body, REPLAY_LIMIT as usize)
                .await
                .map_err(|e| GatewayError::BadRequest(format!("reading the request body: {e}")))?;
            Ok((body::full(bytes.clone()), Some(bytes)))
        }
        _ => Ok((body, None)),
    }
}
