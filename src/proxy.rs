//! The request path, in the order each request takes it:
//!
//! ```text
//! request id → in-flight/metrics → method (Palette's only) → target form → path check → local auth → client limits
//!   → route → policy (/v1/auth block, allow) → scope (ProjectUid) → header hygiene
//!   → credential swap → upstream budget → forward (401 on a token that may be dead → new
//!     token → one replay; 429 → slow the prefix → paced retry of idempotent requests within
//!     max_wait; at most MAX_ATTEMPTS sends in all)
//!   → response hygiene (hop-by-hop, Set-Cookie, trailers, secret scrub of every answer's
//!     headers and of decoded error bodies) → unread small request body drained → HEAD: no body
//! ```
//!
//! Each step lives in its own module as a plain function over the request parts; this module
//! is the one service that runs them in order. They share one runtime snapshot, taken once when
//! the request arrives, so a reload never changes the rules under a request in flight.
//!
//! Order decisions: the path is checked before authentication so that no rule ever sees an
//! unchecked path; client limits run right after authentication (they need the client) and
//! before policy, so a client hammering forbidden paths is throttled too; the upstream budget
//! is taken last, after everything that could refuse the request, so refused requests never
//! spend Palette's budget.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use rand::Rng as _;

use crate::auth::{self, PeerIdentity};
use crate::body::{self, Body};
use crate::credentials::UpstreamCredential;
use crate::error::GatewayError;
use crate::forward::{self, X_REQUEST_ID};
use crate::limit::upstream::Bucket;
use crate::limit::{retry_after_secs, RateHeaders};
use crate::metrics::{method_label, Metrics};
use crate::upstream::UpstreamFailure;
use crate::{drain, framing, path, policy, routes, scope};

/// A request body up to this size is buffered so it can be replayed (after a token refusal or
/// Palette's 429).
pub const REPLAY_LIMIT: u64 = 64 * 1024;

pub use crate::runtime::{Runtime, SharedRuntime};

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The verified client certificate's names (mTLS).
    pub identity: Arc<PeerIdentity>,
    /// `X-Forwarded-For` for requests on this connection, rendered once per connection.
    pub forwarded_for: HeaderValue,
}

impl ConnInfo {
    /// A connection from `peer`.
    pub fn new(peer: SocketAddr, tls: bool, identity: Arc<PeerIdentity>) -> Self {
        // An IP address always renders as a valid header value.
        let forwarded_for =
            HeaderValue::from_str(&peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { peer, tls, identity, forwarded_for }
    }
}

/// The gateway as a tower service.
#[derive(Clone)]
pub struct Gateway {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
}

/// What the request path learned, for metrics, headers and the access and audit logs.
#[derive(Default)]
struct Outcome {
    client: Option<Arc<str>>,
    route: Option<Arc<str>>,
    rate: Option<RateHeaders>,
    project: Option<String>,
    upstream_status: Option<u16>,
    upstream_ms: f64,
    wait_ms: f64,
}

/// Keeps the in-flight gauge right even when the client goes away mid-request: it moves into
/// the response body and drops with it.
struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

/// The access-log fields known when the response head is ready; the event is written when its
/// body ends, with the bytes sent.
struct AccessRecord {
    request_id: String,
    client: Arc<str>,
    route: Arc<str>,
    method: Method,
    path: String,
    project: Option<String>,
    status: u16,
    upstream_status: Option<u16>,
    bytes_in: Arc<body::BodyStats>,
    started: Instant,
    upstream_ms: f64,
    wait_ms: f64,
    traceparent: Option<String>,
    tracestate: Option<String>,
    audit_uid: Option<String>,
}

impl AccessRecord {
    fn write(self, bytes_out: u64, complete: bool) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let bytes_in = self.bytes_in.bytes();
        tracing::info!(
            target: "palette_gateway::access",
            request_id = %self.request_id,
            client = %self.client,
            route = %self.route,
            method = %self.method,
            path = %self.path,
            project = self.project.as_deref().unwrap_or(""),
            status = self.status,
            upstream_status = self.upstream_status.unwrap_or(0),
            bytes_in,
            bytes_out,
            complete,
            duration_ms,
            upstream_ms = self.upstream_ms,
            rate_limit_wait_ms = self.wait_ms,
            traceparent = self.traceparent.as_deref().unwrap_or(""),
            tracestate = self.tracestate.as_deref().unwrap_or(""),
        );
        if matches!(self.method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
            let outcome = if (200..300).contains(&self.status) { "success" } else { "failure" };
            tracing::info!(
                target: "palette_gateway::audit",
                request_id = %self.request_id,
                client = %self.client,
                method = %self.method,
                path = %self.path,
                project = self.project.as_deref().unwrap_or(""),
                status = self.status,
                outcome,
                audit_uid = self.audit_uid.as_deref().unwrap_or(""),
                traceparent = self.traceparent.as_deref().unwrap_or(""),
            );
        }
    }
}

/// A header value fit for a log line: visible ASCII, bounded.
static TRACEPARENT: http::header::HeaderName = http::header::HeaderName::from_static("traceparent");
static TRACESTATE: http::header::HeaderName = http::header::HeaderName::from_static("tracestate");
static AUDIT_UID: http::header::HeaderName = http::header::HeaderName::from_static("audituid");

fn loggable(headers: &http::HeaderMap, name: &http::header::HeaderName) -> Option<String> {
    let v = headers.get(name)?.to_str().ok()?;
    (v.len() <= 512 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')).then(|| v.to_string())
}

impl Gateway {
    /// A gateway serving the given runtime.
    pub fn new(runtime: SharedRuntime, metrics: Arc<Metrics>) -> Self {
        Gateway { runtime, metrics }
    }

    /// Handles one request; never fails (errors become Palette-shaped answers).
    pub async fn handle(&self, req: Request<Body>) -> Response<Body> {
        let metrics = &*self.metrics;
        // The snapshot is taken once: the request finishes on the config it started with.
        let rt = self.runtime.load_full();
        let request_id = request_id(req.headers());
        let max_inflight = rt.config.server.limits.max_inflight_requests;
        // Over the in-flight limit: answer at once, before any work, so overload never snowballs.
        let overloaded = usize::try_from(metrics.inflight.get()).unwrap_or(0) >= max_inflight;
        metrics.inflight.inc();
        let mut pending = Pending {
            metrics: self.metrics.clone(),
            started: Instant::now(),
            request_id: request_id.to_str().unwrap_or_default().to_string(),
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            traceparent: loggable(req.headers(), &TRACEPARENT),
            tracestate: loggable(req.headers(), &TRACESTATE),
            stats: Arc::new(body::BodyStats::default()),
            outcome: Outcome::default(),
            armed: true,
        };
        let method = req.method().clone();
        // A body the request path drops unread (a refusal, an early upstream answer) comes
        // back here to be drained before the answer goes out (see `drain`).
        let (req, unread) = {
            let (parts, body) = req.into_parts();
            let (body, unread) = drain::track(body);
            (Request::from_parts(parts, body), unread)
        };
        let result = if overloaded {
            Err(GatewayError::Overloaded(max_inflight))
        } else {
            let (rid, stats) = (pending.request_id.clone(), pending.stats.clone());
            process(&rt, metrics, req, &request_id, &rid, &stats, &mut pending.outcome).await
        };
        unread.drain().await;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                if let Some(reason) = e.auth_failure_reason() {
                    metrics.auth_failures.with_label_values(&[reason]).inc();
                }
                tracing::debug!(request_id = %pending.request_id, error = %e, "request refused");
                e.into_response(&pending.request_id)
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        if let Some(rate) = pending.outcome.rate {
            rate.apply(resp.headers_mut());
        }
        // No body on any answer to HEAD, the gateway's own errors included.
        let resp = framing::strip_head_body(&method, resp);
        let audit_uid = loggable(resp.headers(), &AUDIT_UID);
        let (record, inflight) = pending.answered(resp.status().as_u16(), audit_uid);
        resp.map(move |b| {
            body::Tracked::new(
                b,
                Box::new(move |bytes_out, complete| {
                    drop(inflight);
                    record.write(bytes_out, complete);
                }),
            )
            .into_body()
        })
    }
}

/// A request between its arrival and its answer. If the client goes away first (the handler's
/// future is dropped), dropping this still counts the request (as status 499, as nginx does)
/// and writes its access and audit events: a mutation Palette may have received is never lost
/// from the audit log.
struct Pending {
    metrics: Arc<Metrics>,
    started: Instant,
    request_id: String,
    method: Method,
    path: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
    stats: Arc<body::BodyStats>,
    outcome: Outcome,
    armed: bool,
}

/// Status recorded for a request its client abandoned before the answer.
const CLIENT_CLOSED: u16 = 499;

impl Pending {
    /// Counts the answered request and hands its log record and in-flight slot to the body.
    fn answered(mut self, status: u16, audit_uid: Option<String>) -> (AccessRecord, InFlight) {
        self.armed = false;
        (self.record(status, audit_uid), InFlight(self.metrics.clone()))
    }

    fn record(&mut self, status: u16, audit_uid: Option<String>) -> AccessRecord {
        let client: Arc<str> = self.outcome.client.clone().unwrap_or_else(|| Arc::from("none"));
        let route: Arc<str> = self.outcome.route.clone().unwrap_or_else(|| Arc::from("none"));
        let m = method_label(&self.method);
        let code = status.to_string();
        self.metrics.requests.with_label_values(&[&client, &route, m, &code]).inc();
        self.metrics
            .request_duration
            .with_label_values(&[&client, &route, m])
            .observe(self.started.elapsed().as_secs_f64());
        AccessRecord {
            request_id: std::mem::take(&mut self.request_id),
            client,
            route,
            method: self.method.clone(),
            path: std::mem::take(&mut self.path),
            project: self.outcome.project.take(),
            status,
            upstream_status: self.outcome.upstream_status,
            bytes_in: self.stats.clone(),
            started: self.started,
            upstream_ms: self.outcome.upstream_ms,
            wait_ms: self.outcome.wait_ms,
            traceparent: self.traceparent.take(),
            tracestate: self.tracestate.take(),
            audit_uid,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.record(CLIENT_CLOSED, None).write(0, false);
            self.metrics.inflight.dec();
        }
    }
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
    let mut hex = [0u8; 32];
    for (i, byte) in id.to_be_bytes().iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[usize::from(byte >> 4)];
        hex[2 * i + 1] = b"0123456789abcdef"[usize::from(byte & 0xf)];
    }
    // 32 hex digits are always a valid header value.
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

async fn process(
    rt: &Runtime,
    metrics: &Metrics,
    req: Request<Body>,
    request_id: &HeaderValue,
    rid: &str,
    stats: &Arc<body::BodyStats>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    framing::check_method(&parts.method)?;
    framing::check_overrides(&parts.headers)?;
    framing::check_transfer_encoding(&parts.headers)?;
    let max_body = rt.config.server.limits.max_request_body;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(GatewayError::PayloadTooLarge(max_body));
    }
    // A body that stops arriving fails after request_body_timeout (408), buffered or streamed,
    // so a declared-but-unsent body never holds an in-flight slot.
    let body_timeout = rt.config.server.limits.request_body_timeout;
    let body = body::IdleTimeout::request(body, body_timeout, stats.clone()).into_body();
    let body = http_body_util::BodyExt::boxed_unsync(body::Capped::new(body, max_body, stats.clone()));
    // HTTP/2 always carries :authority; in HTTP/1 an authority means absolute-form, which a
    // reverse proxy must not follow to another host.
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(GatewayError::BadRequest(
            "absolute-form request targets are not accepted: send origin-form (/v1/...)".into(),
        ));
    }
    let conn = parts
        .extensions
        .get::<ConnInfo>()
        .cloned()
        .unwrap_or_else(|| ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 0)), false, Arc::default()));
    let checked = path::check(parts.uri.path())?;
    let cfg = &rt.config;
    let client_idx = auth::identify(cfg, &rt.key_cache, &parts.headers, &conn.identity)?;
    let client = &cfg.clients[client_idx];
    outcome.client = Some(client.name.clone());
    match rt.limits.check(client_idx) {
        Ok(headers) => outcome.rate = headers,
        Err(refusal) => {
            outcome.rate = refusal.headers;
            metrics.rate_limited.with_label_values(&[&client.name, refusal.kind.label()]).inc();
            return Err(GatewayError::RateLimited {
                client: client.name.to_string(),
                limit: refusal.kind.label(),
                rate: format!("{}/s, burst {}", refusal.rate.per_second, refusal.rate.burst),
                retry_after: retry_after_secs(refusal.retry_after),
            });
        }
    }
    let matched = routes::select(cfg, client_idx, &parts.method, &checked);
    outcome.route = matched.route.map(|r| r.name.clone());
    policy::check(client, &parts.method, &matched.upstream_path)?;
    // Scope is decided on the headers as the client sent them (a `Connection: ProjectUid`
    // cannot hide a project from the check); every removal comes next, then every header the
    // gateway decides, so none can be taken away. The log records what goes upstream.
    let scope = scope::decide(client, matched.route, &parts.headers, parts.uri.query())?;
    let decided = forward::Decided {
        forwarded_for: &conn.forwarded_for,
        tls: conn.tls,
        request_id,
        project: scope.project.as_ref(),
    };
    forward::request_headers(&mut parts.headers, &decided);
    outcome.project = parts.headers.get(scope::PROJECT_UID).and_then(|p| p.to_str().ok()).map(str::to_string);

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

    let exchange = Exchange {
        stats,
        rt,
        metrics,
        head: &head,
        client_idx,
        client_name: &client.name,
        bucket: rt.budget.bucket_for(&matched.upstream_path),
        rid,
    };
    framing::check_upstream_status(exchange.run(credential, body, outcome).await?)
}

/// One request's trip upstream, with its retries.
struct Exchange<'a> {
    stats: &'a body::BodyStats,
    rt: &'a Runtime,
    metrics: &'a Metrics,
    head: &'a http::request::Parts,
    client_idx: usize,
    client_name: &'a str,
    bucket: Option<&'a Arc<Bucket>>,
    rid: &'a str,
}

/// A request goes to Palette at most this many times in all: the first send, the replay
/// after a refused token, and retries after Palette's 429 together.
pub const MAX_ATTEMPTS: u32 = 3;
/// The first wait before a retry after a 429 without `Retry-After`; it doubles with every
/// retry, with ±50 % jitter.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Palette's `Retry-After` is followed up to this long (and never past `max_wait`).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// The body of a request, sent once or replayed from a buffer, and how often it was sent.
struct Sends {
    first: Option<Body>,
    replay: Option<Bytes>,
    count: u32,
}

impl Sends {
    /// The body for the next send; `None` when a streamed body was already sent.
    fn next(&mut self) -> Option<Body> {
        match (self.first.take(), &self.replay) {
            (Some(b), _) => Some(b),
            (None, Some(bytes)) => Some(body::full(bytes.clone())),
            (None, None) => None,
        }
    }

    /// Whether another send is allowed: the body can be sent again and the cap not reached.
    fn can_resend(&self) -> bool {
        self.replay.is_some() && self.count < MAX_ATTEMPTS
    }
}

impl Exchange<'_> {
    /// The request's trip upstream, in two steps: [`Exchange::authorized`] sends it with the
    /// credential (and replays it once if Palette refused a token), then a 429 from Palette is
    /// retried, paced, by [`Exchange::after_429`].
    async fn run(
        &self,
        credential: &UpstreamCredential,
        body: Body,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        // Buffer small bodies when a resend could need them: token credentials (401 → replay)
        // and idempotent methods (Palette's 429 → retry).
        let idempotent = matches!(self.head.method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE);
        let token = matches!(credential, UpstreamCredential::Token(_));
        let (first, replay) = if token || idempotent {
            replayable(body, self.rt.config.server.limits.request_body_timeout, self.stats).await?
        } else {
            (Some(body), None)
        };
        let mut sends = Sends { first, replay, count: 0 };
        let deadline = tokio::time::Instant::now() + self.rt.budget.max_wait();
        let mut secrets: Vec<crate::config::Secret> = Vec::new();
        if let UpstreamCredential::ApiKey { secret, .. } = credential {
            secrets.push(secret.clone());
        }
        let mut retries = 0;
        loop {
            let resp = self.authorized(credential, &mut sends, &mut secrets, deadline, outcome).await?;
            if resp.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(self.finish(resp, &secrets).await);
            }
            match self.after_429(&resp, idempotent && sends.can_resend(), retries, deadline) {
                Some(wait) => {
                    drop(resp);
                    retries += 1;
                    self.metrics.upstream_retries.with_label_values(&[self.prefix(), "429"]).inc();
                    tokio::time::sleep(wait).await;
                    outcome.wait_ms += wait.as_secs_f64() * 1000.0;
                }
                None => {
                    let mut resp = self.finish(resp, &secrets).await;
                    if !resp.headers().contains_key(header::RETRY_AFTER) {
                        let rate = self.bucket.map_or(1.0, |b| b.current_rate());
                        let wait = Duration::from_secs_f64(1.0 / rate).max(backoff(retries));
                        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
                    }
                    return Ok(resp);
                }
            }
        }
    }

    /// One send with the credential. A 401 on a token that may be dead (see
    /// [`crate::credentials::Token::worth_replacing`]) gets one replay with a new token when the body allows it;
    /// otherwise the 401 is the endpoint's answer and passes through, and a token that may be
    /// dead is replaced in the background without taking it from other requests.
    async fn authorized(
        &self,
        credential: &UpstreamCredential,
        sends: &mut Sends,
        secrets: &mut Vec<crate::config::Secret>,
        deadline: tokio::time::Instant,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        let manager = match credential {
            UpstreamCredential::ApiKey { header, .. } => {
                return self.send_once(sends, &auth::API_KEY, header.clone(), deadline, outcome).await;
            }
            UpstreamCredential::Token(m) => m,
        };
        let within = self.rt.config.upstream.request_timeout;
        let unavailable = |e: crate::credentials::TokenUnavailable| GatewayError::CredentialUnavailable {
            credential: manager.name().to_string(),
            reason: e.0,
        };
        let token = manager.get(within).await.map_err(unavailable)?;
        secrets.push(token.value.clone());
        let resp = self.send_once(sends, &header::AUTHORIZATION, token.header.clone(), deadline, outcome).await?;
        if resp.status() != StatusCode::UNAUTHORIZED || !token.worth_replacing() {
            return Ok(resp);
        }
        if !sends.can_resend() {
            manager.replace_soon(&token);
            return Ok(resp);
        }
        drop(resp);
        let fresh = manager.replace(&token, within).await.map_err(unavailable)?;
        secrets.push(fresh.value.clone());
        self.metrics.upstream_retries.with_label_values(&[self.prefix(), "401"]).inc();
        self.send_once(sends, &header::AUTHORIZATION, fresh.header.clone(), deadline, outcome).await
    }

    /// Takes budget and sends the request once with `name: value` as its credential.
    async fn send_once(
        &self,
        sends: &mut Sends,
        name: &http::header::HeaderName,
        value: HeaderValue,
        deadline: tokio::time::Instant,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        outcome.wait_ms += self.take_budget(deadline).await?;
        // Callers check `can_resend` before a second send, so a body is always there.
        let body = sends.next().unwrap_or_else(body::empty);
        sends.count += 1;
        let sent = Instant::now();
        let resp = self.send(build(self.head, name, value, body)).await;
        outcome.upstream_ms += sent.elapsed().as_secs_f64() * 1000.0;
        let resp = resp?;
        outcome.upstream_status = Some(resp.status().as_u16());
        Ok(resp)
    }

    /// Palette answered 429 despite the budget: slows the prefix down and says how long to
    /// wait before a retry, or `None` when the request must not be retried (not `retryable`, or
    /// the wait would end past `deadline`). The wait is Palette's `Retry-After` when it sent
    /// one, else exponential backoff with jitter; the prefix's slowed budget adds to it.
    fn after_429(
        &self,
        resp: &Response<Body>,
        retryable: bool,
        retries: u32,
        deadline: tokio::time::Instant,
    ) -> Option<Duration> {
        self.throttled();
        if !retryable {
            return None;
        }
        let wait = retry_after(resp.headers(), std::time::SystemTime::now()).unwrap_or_else(|| backoff(retries));
        (tokio::time::Instant::now() + wait < deadline).then_some(wait)
    }

    fn prefix(&self) -> &str {
        self.bucket.map_or("none", |b| b.label())
    }

    /// Waits for the prefix's budget, at most until `deadline`.
    async fn take_budget(&self, deadline: tokio::time::Instant) -> Result<f64, GatewayError> {
        let Some(bucket) = self.bucket else {
            return Ok(0.0);
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bucket.acquire(self.client_idx, left).await {
            Ok(waited) => {
                self.metrics.queue_wait.with_label_values(&[bucket.label()]).observe(waited.as_secs_f64());
                Ok(waited.as_secs_f64() * 1000.0)
            }
            Err(busy) => {
                self.metrics.rate_limited.with_label_values(&[self.client_name, "upstream"]).inc();
                Err(GatewayError::RateLimited {
                    client: self.client_name.to_string(),
                    limit: "upstream",
                    rate: format!("Palette budget for {}: {:.1}/s", bucket.label(), bucket.current_rate()),
                    retry_after: retry_after_secs(busy.retry_after),
                })
            }
        }
    }

    /// Counts Palette's 429 and slows the prefix down.
    fn throttled(&self) {
        let prefix = self.prefix();
        self.metrics.upstream_throttled.with_label_values(&[prefix]).inc();
        if let Some(b) = self.bucket {
            let rate = b.throttled();
            tracing::warn!(prefix, rate, "Palette answered 429; slowing this prefix down");
        }
    }

    async fn send(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let started = Instant::now();
        let result = self.rt.upstream.send(req).await;
        let prefix = self.bucket.map_or("none", |b| b.label());
        let code = match &result {
            Ok(r) => r.status().as_str().to_string(),
            Err(UpstreamFailure::Timeout(_)) => "timeout".into(),
            Err(_) => "error".into(),
        };
        self.metrics.upstream_duration.with_label_values(&[prefix, &code]).observe(started.elapsed().as_secs_f64());
        let idle = self.rt.config.upstream.body_idle_timeout;
        match result {
            // A body that stalls for body_idle_timeout fails instead of holding the client forever.
            Ok(resp) => Ok(resp.map(|b| body::IdleTimeout::new(body::boxed(b), idle).into_body())),
            // The upstream call failed because the client stopped sending its body.
            Err(_) if self.stats.timed_out() => Err(request_timeout(self.rt)),
            // The upstream call failed because the client's body went past the limit.
            Err(_) if self.stats.tripped() => {
                Err(GatewayError::PayloadTooLarge(self.rt.config.server.limits.max_request_body))
            }
            Err(UpstreamFailure::Connect(e)) => Err(GatewayError::UpstreamUnavailable(e)),
            Err(UpstreamFailure::Timeout(d)) => {
                Err(GatewayError::UpstreamTimeout(humantime::format_duration(d).to_string()))
            }
            Err(UpstreamFailure::Protocol(e)) => Err(GatewayError::UpstreamError(e)),
        }
    }

    async fn finish(&self, resp: Response<Body>, secrets: &[crate::config::Secret]) -> Response<Body> {
        let exposed: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
        let mut resp = forward::scrub_error(resp, &exposed, self.rid).await;
        forward::response_headers(resp.headers_mut());
        forward::redact_headers(resp.headers_mut(), &exposed);
        resp.map(forward::drop_trailers)
    }
}

/// The wait before retry number `retries + 1` after a 429 without `Retry-After`.
fn backoff(retries: u32) -> Duration {
    let base = RETRY_BACKOFF.saturating_mul(1u32 << retries.min(8));
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// Palette's `Retry-After`: delay-seconds or an HTTP-date, capped at [`MAX_RETRY_AFTER`].
fn retry_after(headers: &http::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(v).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn build(
    head: &http::request::Parts,
    name: &http::header::HeaderName,
    value: HeaderValue,
    body: Body,
) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.headers_mut() = head.headers.clone();
    req.headers_mut().insert(name.clone(), value);
    req
}

/// Buffers a body of at most [`REPLAY_LIMIT`] bytes (known from its length) so it can be sent
/// again; larger or unknown-length bodies stream once (`None` replay). The whole body must
/// arrive within `deadline` (408 otherwise): a client that declares a body and never sends it
/// gives back its in-flight slot.
async fn replayable(
    body: Body,
    deadline: std::time::Duration,
    stats: &body::BodyStats,
) -> Result<(Option<Body>, Option<Bytes>), GatewayError> {
    if body.is_end_stream() {
        return Ok((None, Some(Bytes::new())));
    }
    match body.size_hint().upper() {
        Some(n) if n <= REPLAY_LIMIT => {
            let read = tokio::time::timeout(deadline, body::collect_limited(body, REPLAY_LIMIT as usize)).await;
            match read {
                Ok(Ok(bytes)) => Ok((None, Some(bytes))),
                Err(_) => Err(timeout_after(deadline)),
                Ok(Err(_)) if stats.timed_out() => Err(timeout_after(deadline)),
                Ok(Err(e)) => Err(GatewayError::BadRequest(format!("reading the request body: {e}"))),
            }
        }
        _ => Ok((Some(body), None)),
    }
}

fn timeout_after(d: std::time::Duration) -> GatewayError {
    GatewayError::RequestTimeout(humantime::format_duration(d).to_string())
}

fn request_timeout(rt: &Runtime) -> GatewayError {
    timeout_after(rt.config.server.limits.request_body_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::RETRY_AFTER, HeaderValue::from_str(v).unwrap());
            retry_after(&h, now)
        };
        assert_eq!(with("3"), Some(Duration::from_secs(3)));
        assert_eq!(with("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(with(&httpdate::fmt_http_date(now + Duration::from_secs(7))), Some(Duration::from_secs(7)));
        assert_eq!(with(&httpdate::fmt_http_date(now - Duration::from_secs(7))), Some(Duration::ZERO));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&http::HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_with_jitter() {
        for retries in 0..4u32 {
            let base = RETRY_BACKOFF * (1 << retries);
            for _ in 0..20 {
                let b = backoff(retries);
                assert!(b >= base / 2 && b <= base * 3 / 2, "{retries}: {b:?}");
            }
        }
        assert!(backoff(u32::MAX) <= RETRY_BACKOFF * 256 * 3 / 2);
    }
}
