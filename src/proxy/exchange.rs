//! The exchange with Palette, as tower layers on a request whose body may be replayed
//! (`Request<Payload>`), outermost first:
//!
//! ```text
//! Retry (429: slow the prefix, paced retry of idempotent requests within max_wait)
//!   → Replay (the credential; a 401 on a token that may be dead → new token → one replay)
//!     → Budget (wait for the prefix's budget, at most until the deadline; count the send)
//!       → Sender (the send, with its metrics and error mapping)
//! ```
//!
//! then the response hygiene (hop-by-hop headers, `Set-Cookie`, trailers, secrets scrubbed from
//! every answer's headers and from decoded error bodies), outside the retry so it runs once.
//! The layers share the request's [`Trip`]: its [`Note`] (sends so far, so [`MAX_ATTEMPTS`] is a
//! total across layers; the secrets to scrub), its deadline and its pending shared limits. The
//! chain is built for one request, so the trip is in each layer's config, not in request
//! extensions (a map to fill, search and copy for every resend: issue 14). A resend is a copy
//! of a buffered request.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::Either;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use prometheus::Histogram;
use rand::Rng as _;
use tower::{Service, ServiceExt as _};

use crate::body::{self, Body};
use crate::config::ClientId;
use crate::credentials::{Token, TokenManager, TokenUnavailable, UpstreamCredential};
use crate::error::GatewayError;
use crate::limit::retry_after_secs;
use crate::limit::upstream::Bucket;
use crate::metrics::{same, use_recent, Metrics, Recent};
use crate::proxy::limits::{Pending, PendingLimits};
use crate::proxy::request_log::Note;
use crate::proxy::{auth, response, Runtime, REPLAY_LIMIT};
use crate::upstream::UpstreamFailure;

/// A request goes to Palette at most this many times in all: the first send, the replay
/// after a refused token, and retries after Palette's 429 together.
pub const MAX_ATTEMPTS: u32 = 3;
/// The first wait before a retry after a 429 without `Retry-After`; it doubles with every
/// retry, with ±50 % jitter.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);
/// Palette's `Retry-After` is followed up to this long (and never past `max_wait`).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A request body on its way to Palette: streamed once, or buffered so it can be sent again.
pub(crate) enum Payload {
    /// Too large or of unknown length: sent once, never replayed.
    Stream(Body),
    /// At most [`REPLAY_LIMIT`] bytes (or a method that is never resent).
    Buffered(Bytes),
}

impl Payload {
    fn into_body(self) -> Body {
        match self {
            Payload::Stream(b) => b,
            Payload::Buffered(bytes) => body::full(bytes),
        }
    }
}

/// Response extension: Palette's answer carried `Set-Cookie` (which response hygiene removed),
/// so the answer may be personal and is never cached.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamSetCookie;

/// What the layers of one request's exchange share.
#[derive(Clone)]
pub(crate) struct Trip {
    /// The request's note: sends so far, secrets sent, what the log records.
    pub(crate) note: Note,
    /// Waits (budget, 429 retries) end by this instant (`max_wait` from the exchange's start).
    pub(crate) deadline: tokio::time::Instant,
    /// The client limits still to take across the replicas, with the first budget slot.
    pub(crate) pending: PendingLimits,
}

/// The boxed future of what waits and loops (a token's fetch and replay, a budget wait, the
/// retries after a 429, the send), which no concrete combinator expresses. A request with an
/// API key credential, a budget slot free at once and no 429 boxes only the send: the other
/// layers call their inner service straight from `call` (issue 14). A token credential's
/// fetch is always a boxed future of the replay layer.
pub(crate) type ExchangeFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, GatewayError>> + Send>>;

/// A copy of `req` for another send: only a buffered body can be sent again.
fn resend(req: &Request<Payload>) -> Option<Request<Payload>> {
    let Payload::Buffered(bytes) = req.body() else {
        return None;
    };
    let mut copy = Request::new(Payload::Buffered(bytes.clone()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    *copy.extensions_mut() = req.extensions().clone();
    Some(copy)
}

/// The metric label of a request's prefix.
fn prefix(bucket: Option<&Arc<Bucket>>) -> &str {
    bucket.map_or("none", |b| b.label())
}

/// `upstream_duration`'s labels: the prefix's bucket and the status (0: timeout, 1: error).
type UpstreamKey = (Arc<Metrics>, Option<Arc<Bucket>>, u16);
/// `queue_wait`'s label: the prefix's bucket.
type QueueKey = (Arc<Metrics>, Arc<Bucket>);

thread_local! {
    /// `upstream_duration` by (prefix, status) this thread observed last (see [`Recent`]).
    static UPSTREAM: RefCell<Recent<UpstreamKey, Histogram, 8>> = const { RefCell::new(Recent::new()) };
    /// `queue_wait` of the prefixes this thread granted a slot at once last.
    static QUEUE_WAIT: RefCell<Recent<QueueKey, Histogram, 4>> = const { RefCell::new(Recent::new()) };
}

/// Takes the inner service for one call, leaving a clone (tower's usual pattern: the clone
/// may not be ready, the taken one is driven to readiness by the caller).
fn take<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Defines the `Layer` of a layer service with a `config` field of type `C`.
macro_rules! layer {
    ($layer:ident, $svc:ident $(<$t:ident $(: $bound:path)?>)?, $config:ty) => {
        pub(crate) struct $layer $(<$t>)? {
            config: $config,
        }

        impl<$($t $(: $bound)?,)? S> tower::Layer<S> for $layer $(<$t>)? {
            type Service = $svc<S $(, $t)?>;

            fn layer(&self, inner: S) -> Self::Service {
                $svc { inner, config: self.config.clone() }
            }
        }

        pub(crate) struct $svc<S $(, $t)?> {
            inner: S,
            config: $config,
        }

        // By hand: `derive` would ask for `T: Clone`, and only the config (an `Arc`) is cloned.
        impl<S: Clone $(, $t $(: $bound)?)?> Clone for $svc<S $(, $t)?> {
            fn clone(&self) -> Self {
                $svc { inner: self.inner.clone(), config: self.config.clone() }
            }
        }
    };
}

// ----- 429 retry -------------------------------------------------------------------------

/// What the retry layer needs: where to count and whom to slow down.
#[derive(Clone)]
pub(crate) struct RetryConfig {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) bucket: Option<Arc<Bucket>>,
    pub(crate) trip: Trip,
}

layer!(RetryLayer, Retry, RetryConfig);

impl RetryLayer {
    pub(crate) fn new(config: RetryConfig) -> Self {
        RetryLayer { config }
    }
}

impl<S> Service<Request<Payload>> for Retry<S>
where
    S: Service<Request<Payload>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = RetryFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // The first send is called straight from `call`.
        self.inner.poll_ready(cx)
    }

    /// Palette answered 429 despite the budget: the prefix is slowed down and an idempotent
    /// request with a buffered body is sent again after Palette's `Retry-After` (else
    /// exponential backoff with jitter), while the wait ends before the deadline and
    /// [`MAX_ATTEMPTS`] allows. A 429 that is not retried gets a `Retry-After`. The first send
    /// needs no future of this layer's own; only what follows a 429 is boxed (issue 14).
    fn call(&mut self, req: Request<Payload>) -> RetryFuture<S> {
        let idempotent = matches!(*req.method(), Method::GET | Method::HEAD | Method::PUT | Method::DELETE);
        // The copy is taken before the send, which consumes the request; the service for the
        // resend is a clone, made ready again before it is called.
        let again = if idempotent { resend(&req).map(|copy| (self.inner.clone(), copy)) } else { None };
        let send = self.inner.call(req);
        RetryFuture::First { send, again, config: Some(self.config.clone()) }
    }
}

pin_project_lite::pin_project! {
    /// The retry layer's future: the first send, watched for Palette's 429; then, only after
    /// one, the waits and resends of [`after_429`].
    #[project = RetryProj]
    pub(crate) enum RetryFuture<S: Service<Request<Payload>>> {
        First {
            #[pin]
            send: S::Future,
            again: Option<(S, Request<Payload>)>,
            config: Option<RetryConfig>,
        },
        Retrying { retry: ExchangeFuture },
    }
}

impl<S> Future for RetryFuture<S>
where
    S: Service<Request<Payload>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Output = Result<Response<Body>, GatewayError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let retry = match self.as_mut().project() {
            RetryProj::Retrying { retry } => return retry.as_mut().poll(cx),
            RetryProj::First { send, again, config } => {
                let resp = match std::task::ready!(send.poll(cx)) {
                    Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => resp,
                    other => return Poll::Ready(other),
                };
                let Some(config) = config.take() else {
                    return Poll::Ready(Err(GatewayError::UpstreamError("the retry future was polled again".into())));
                };
                Box::pin(after_429(again.take(), resp, config))
            }
        };
        self.set(RetryFuture::Retrying { retry });
        self.poll(cx)
    }
}

/// After Palette's 429 (`resp`): slows the prefix down and, while the request has a copy to
/// send (`again`), [`MAX_ATTEMPTS`] allows and the wait ends before the deadline, waits and
/// sends again. The 429 that is answered gets a `Retry-After`.
async fn after_429<S>(
    mut again: Option<(S, Request<Payload>)>,
    mut resp: Response<Body>,
    config: RetryConfig,
) -> Result<Response<Body>, GatewayError>
where
    S: Service<Request<Payload>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    let RetryConfig { metrics, bucket, trip: Trip { note, deadline, .. } } = config;
    let mut retries = 0;
    loop {
        throttled(&metrics, bucket.as_ref());
        let wait = again
            .as_ref()
            .filter(|_| note.sends() < MAX_ATTEMPTS)
            .map(|_| retry_after(resp.headers(), std::time::SystemTime::now()).unwrap_or_else(|| backoff(retries)))
            .filter(|wait| tokio::time::Instant::now() + *wait < deadline);
        let (Some((mut inner, req)), Some(wait)) = (again.take(), wait) else {
            if !resp.headers().contains_key(header::RETRY_AFTER) {
                let rate = bucket.as_ref().map_or(1.0, |b| b.current_rate());
                let wait = Duration::from_secs_f64(1.0 / rate).max(backoff(retries));
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
            }
            return Ok(resp);
        };
        drop(resp);
        retries += 1;
        metrics.upstream_retries.with_label_values(&[prefix(bucket.as_ref()), "429"]).inc();
        tokio::time::sleep(wait).await;
        note.set(|f| f.wait_ms += wait.as_secs_f64() * 1000.0);
        again = resend(&req).map(|copy| (inner.clone(), copy));
        resp = inner.ready().await?.call(req).await?;
        if resp.status() != StatusCode::TOO_MANY_REQUESTS {
            return Ok(resp);
        }
    }
}

/// Counts Palette's 429 and slows the prefix down.
fn throttled(metrics: &Metrics, bucket: Option<&Arc<Bucket>>) {
    let prefix = prefix(bucket);
    metrics.upstream_throttled.with_label_values(&[prefix]).inc();
    if let Some(b) = bucket {
        let rate = b.throttled();
        tracing::warn!(prefix, rate, "Palette answered 429; slowing this prefix down");
    }
}

// ----- credential and 401 replay ---------------------------------------------------------

/// Where the replay layer gets tokens: the credential's [`TokenManager`] (a fake in tests).
/// Issue 9's rules live in the manager and in [`Token::worth_replacing`].
pub(crate) trait TokenSource: Send + Sync + 'static {
    /// The credential's name (for error messages).
    fn name(&self) -> &str;
    /// A usable token, logging in if needed, within `within`.
    fn get(&self, within: Duration) -> impl Future<Output = Result<Arc<Token>, TokenUnavailable>> + Send;
    /// A new token instead of `token`, which Palette refused.
    fn replace(
        &self,
        token: &Token,
        within: Duration,
    ) -> impl Future<Output = Result<Arc<Token>, TokenUnavailable>> + Send;
    /// `token` may be dead: have it replaced in the background.
    fn replace_soon(&self, token: &Token);
}

impl TokenSource for TokenManager {
    fn name(&self) -> &str {
        TokenManager::name(self)
    }

    fn get(&self, within: Duration) -> impl Future<Output = Result<Arc<Token>, TokenUnavailable>> + Send {
        TokenManager::get(self, within)
    }

    fn replace(
        &self,
        token: &Token,
        within: Duration,
    ) -> impl Future<Output = Result<Arc<Token>, TokenUnavailable>> + Send {
        TokenManager::replace(self, token, within)
    }

    fn replace_soon(&self, token: &Token) {
        TokenManager::replace_soon(self, token);
    }
}

/// The credential the replay layer applies.
pub(crate) enum Credential<T> {
    /// `ApiKey: <key>` (its secret is in the note already).
    ApiKey(HeaderValue),
    /// `Authorization: <token>` from a token source.
    Token(Arc<T>),
}

impl<T> Clone for Credential<T> {
    fn clone(&self) -> Self {
        match self {
            Credential::ApiKey(v) => Credential::ApiKey(v.clone()),
            Credential::Token(t) => Credential::Token(t.clone()),
        }
    }
}

/// What the replay layer needs.
pub(crate) struct ReplayConfig<T> {
    pub(crate) credential: Credential<T>,
    /// How long getting a token may take (`upstream.request_timeout`).
    pub(crate) within: Duration,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) bucket: Option<Arc<Bucket>>,
    pub(crate) note: Note,
}

impl<T> Clone for ReplayConfig<T> {
    fn clone(&self) -> Self {
        ReplayConfig {
            credential: self.credential.clone(),
            within: self.within,
            metrics: self.metrics.clone(),
            bucket: self.bucket.clone(),
            note: self.note.clone(),
        }
    }
}

layer!(ReplayLayer, Replay<T: TokenSource>, ReplayConfig<T>);

impl<T> ReplayLayer<T> {
    pub(crate) fn new(config: ReplayConfig<T>) -> Self {
        ReplayLayer { config }
    }
}

impl<S, T> Service<Request<Payload>> for Replay<S, T>
where
    S: Service<Request<Payload>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
    T: TokenSource,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Either<S::Future, ExchangeFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // The API key path calls the inner service straight from `call`.
        self.inner.poll_ready(cx)
    }

    /// Sends with the credential. A 401 on a token that may be dead (see
    /// [`Token::worth_replacing`]) gets one replay with a new token when the body allows it and
    /// [`MAX_ATTEMPTS`] is not reached; otherwise the 401 is the endpoint's answer and passes
    /// through, and a token that may be dead is replaced in the background without taking it
    /// from other requests.
    fn call(&mut self, mut req: Request<Payload>) -> Self::Future {
        let source = match &self.config.credential {
            // An API key is never replaced: its one send needs no future of its own (issue 14).
            Credential::ApiKey(value) => {
                req.headers_mut().insert(auth::API_KEY.clone(), value.clone());
                return Either::Left(self.inner.call(req));
            }
            Credential::Token(source) => source.clone(),
        };
        let mut inner = take(&mut self.inner);
        let ReplayConfig { within, metrics, bucket, note, .. } = self.config.clone();
        Either::Right(Box::pin(async move {
            let unavailable = |e: TokenUnavailable| GatewayError::CredentialUnavailable {
                credential: source.name().to_string(),
                reason: e.0,
            };
            let token = source.get(within).await.map_err(unavailable)?;
            note.set(|f| f.secrets.push(token.value.clone()));
            let again = resend(&req);
            req.headers_mut().insert(header::AUTHORIZATION, token.header.clone());
            let resp = inner.ready().await?.call(req).await?;
            if resp.status() != StatusCode::UNAUTHORIZED || !token.worth_replacing() {
                return Ok(resp);
            }
            let Some(mut again) = again.filter(|_| note.sends() < MAX_ATTEMPTS) else {
                source.replace_soon(&token);
                return Ok(resp);
            };
            drop(resp);
            let fresh = source.replace(&token, within).await.map_err(unavailable)?;
            note.set(|f| f.secrets.push(fresh.value.clone()));
            metrics.upstream_retries.with_label_values(&[prefix(bucket.as_ref()), "401"]).inc();
            again.headers_mut().insert(header::AUTHORIZATION, fresh.header.clone());
            inner.ready().await?.call(again).await
        }))
    }
}

// ----- upstream budget -------------------------------------------------------------------

/// What the budget layer needs.
#[derive(Clone)]
pub(crate) struct BudgetConfig {
    pub(crate) bucket: Option<Arc<Bucket>>,
    pub(crate) client: ClientId,
    pub(crate) client_name: Arc<str>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) trip: Trip,
}

layer!(BudgetLayer, Budget, BudgetConfig);

impl BudgetLayer {
    pub(crate) fn new(config: BudgetConfig) -> Self {
        BudgetLayer { config }
    }
}

impl<S> Service<Request<Payload>> for Budget<S>
where
    S: Service<Request<Payload>, Response = Response<Body>, Error = GatewayError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Either<S::Future, ExchangeFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        // A slot free at once calls the inner service straight from `call`.
        self.inner.poll_ready(cx)
    }

    /// Waits for the prefix's budget, at most until the deadline (429 with `Retry-After`
    /// past it), then counts the send and sends.
    fn call(&mut self, req: Request<Payload>) -> Self::Future {
        // No shared limits to take and a slot free now (or no budget for the prefix): no wait,
        // so no future of this layer's own (issue 14). Otherwise the waiting path decides again.
        let BudgetConfig { bucket, metrics, trip, .. } = &self.config;
        if trip.pending.never() && bucket.as_ref().map_or(true, |b| b.try_acquire_now()) {
            if let Some(bucket) = bucket {
                use_recent(
                    &QUEUE_WAIT,
                    |(m, b)| Arc::ptr_eq(b, bucket) && Arc::ptr_eq(m, metrics),
                    || ((metrics.clone(), bucket.clone()), metrics.queue_wait.with_label_values(&[bucket.label()])),
                    |h| h.observe(0.0),
                );
            }
            trip.note.set(|f| f.sends += 1);
            return Either::Left(self.inner.call(req));
        }
        let mut inner = take(&mut self.inner);
        let BudgetConfig { bucket, client, client_name, metrics, trip: Trip { note, deadline, pending } } =
            self.config.clone();
        Either::Right(Box::pin(async move {
            // The request's shared client limits go with its first slot; a retry has none.
            let pending = pending.take();
            if let Some(bucket) = &bucket {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let keys = pending.as_ref().map(Pending::keys).unwrap_or_default();
                match bucket.acquire_with(client, left, keys).await {
                    Ok(acquired) => {
                        if let Some(pending) = pending {
                            pending.conclude(acquired.limits.as_ref(), &note)?;
                        }
                        let waited = acquired.waited;
                        metrics.queue_wait.with_label_values(&[bucket.label()]).observe(waited.as_secs_f64());
                        note.set(|f| f.wait_ms += waited.as_secs_f64() * 1000.0);
                    }
                    Err(busy) => {
                        metrics.rate_limited.with_label_values(&[&client_name, "upstream"]).inc();
                        return Err(GatewayError::RateLimited {
                            client: client_name.to_string(),
                            limit: "upstream",
                            rate: format!("Palette budget for {}: {:.1}/s", bucket.label(), bucket.current_rate()),
                            retry_after: retry_after_secs(busy.retry_after),
                        });
                    }
                }
            } else if let Some(pending) = pending {
                // No budget prefix covers the path: the limits on their own, before the send.
                pending.settle(&note).await?;
            }
            note.set(|f| f.sends += 1);
            inner.ready().await?.call(req).await
        }))
    }
}

// ----- the send --------------------------------------------------------------------------

/// The innermost service: one send to Palette, timed and counted, its failures named.
#[derive(Clone)]
pub(crate) struct Sender {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stats: Arc<body::BodyStats>,
    pub(crate) bucket: Option<Arc<Bucket>>,
    pub(crate) note: Note,
}

impl Service<Request<Payload>> for Sender {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = ExchangeFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Payload>) -> ExchangeFuture {
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, payload) = req.into_parts();
            // Palette's request carries no bookkeeping (the exchange keeps its own in `Trip`).
            parts.extensions.clear();
            let resp = this.send(Request::from_parts(parts, payload.into_body())).await?;
            let status = resp.status().as_u16();
            this.note.set(|f| f.upstream_status = Some(status));
            Ok(resp)
        })
    }
}

impl Sender {
    async fn send(&self, req: Request<Body>) -> Result<Response<Body>, GatewayError> {
        let started = Instant::now();
        let result = self.rt.upstream.send(req).await;
        // One clock reading for the log's upstream time and the histogram.
        let took = started.elapsed();
        self.note.set(|f| f.upstream_ms += took.as_secs_f64() * 1000.0);
        // The status, or 0 for a timeout and 1 for another failure (no status is below 100).
        let code = match &result {
            Ok(resp) => resp.status().as_u16(),
            Err(UpstreamFailure::Timeout(_)) => 0,
            Err(_) => 1,
        };
        use_recent(
            &UPSTREAM,
            |(m, b, c)| *c == code && Arc::ptr_eq(m, &self.metrics) && same(b.as_ref(), self.bucket.as_ref()),
            || {
                let status = StatusCode::from_u16(code).ok();
                let label = status.as_ref().map_or(if code == 0 { "timeout" } else { "error" }, |s| s.as_str());
                let h = self.metrics.upstream_duration.with_label_values(&[prefix(self.bucket.as_ref()), label]);
                ((self.metrics.clone(), self.bucket.clone(), code), h)
            },
            |h| h.observe(took.as_secs_f64()),
        );
        let idle = self.rt.config.upstream.body_idle_timeout;
        match result {
            // A body that stalls for body_idle_timeout fails instead of holding the client forever.
            // Its trailers are dropped there too (Palette's REST API sends none).
            Ok(resp) => Ok(resp.map(|b| body::IdleTimeout::new(b, idle).into_body())),
            // The upstream call failed because the client stopped sending its body.
            Err(_) if self.stats.timed_out() => Err(request_timeout(&self.rt)),
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
}

// ----- the whole exchange ----------------------------------------------------------------

/// One request's trip upstream.
pub(crate) struct Exchange {
    pub(crate) rt: Arc<Runtime>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) stats: Arc<body::BodyStats>,
    pub(crate) client_idx: ClientId,
    pub(crate) client_name: Arc<str>,
    pub(crate) bucket: Option<Arc<Bucket>>,
    /// The client limits still to take across the replicas, with the first budget slot.
    pub(crate) pending: PendingLimits,
}

impl Exchange {
    /// Buffers the body when a resend could need it, runs the layers (retry → replay →
    /// budget → send) and cleans the answer.
    pub(crate) async fn run(
        self,
        credential: &UpstreamCredential,
        head: http::request::Parts,
        body: Body,
        note: &Note,
        rid: &str,
    ) -> Result<Response<Body>, GatewayError> {
        // Buffer small bodies when a resend could need them: token credentials (401 → replay)
        // and idempotent methods (Palette's 429 → retry).
        let idempotent = matches!(head.method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE);
        let credential = match credential {
            UpstreamCredential::ApiKey { header, secret, .. } => {
                note.set(|f| f.secrets.push(secret.clone()));
                Credential::ApiKey(header.clone())
            }
            UpstreamCredential::Token(m) => Credential::Token(m.clone()),
        };
        let payload = if matches!(credential, Credential::Token(_)) || idempotent {
            replayable(body, self.rt.config.server.limits.request_body_timeout, &self.stats).await?
        } else {
            Payload::Stream(body)
        };
        let req = Request::from_parts(head, payload);
        let trip = Trip {
            note: note.clone(),
            deadline: tokio::time::Instant::now() + self.rt.budget.max_wait(),
            pending: self.pending,
        };
        let (metrics, bucket) = (self.metrics, self.bucket);
        let chain = tower::ServiceBuilder::new()
            .layer(RetryLayer::new(RetryConfig {
                metrics: metrics.clone(),
                bucket: bucket.clone(),
                trip: trip.clone(),
            }))
            .layer(ReplayLayer::new(ReplayConfig {
                credential,
                within: self.rt.config.upstream.request_timeout,
                metrics: metrics.clone(),
                bucket: bucket.clone(),
                note: note.clone(),
            }))
            .layer(BudgetLayer::new(BudgetConfig {
                bucket: bucket.clone(),
                client: self.client_idx,
                client_name: self.client_name,
                metrics: metrics.clone(),
                trip,
            }))
            .service(Sender { rt: self.rt, metrics, stats: self.stats, bucket, note: note.clone() });
        let resp = chain.oneshot(req).await?;
        // Hygiene removes Palette's `Set-Cookie`; the cache still needs to know it was there.
        let cookie = resp.headers().contains_key(header::SET_COOKIE);
        let mut resp = finish(resp, note, rid).await;
        if cookie {
            resp.extensions_mut().insert(UpstreamSetCookie);
        }
        Ok(resp)
    }
}

/// The response hygiene, once per answer, with every secret the exchange sent. The secrets are
/// copied out of the note only for an error body, read across an await; the headers of every
/// answer are checked under the note's lock (issue 14: two allocations per answer otherwise).
async fn finish(resp: Response<Body>, note: &Note, rid: &str) -> Response<Body> {
    let mut resp = if response::is_scrubbed(resp.status()) {
        let secrets = note.secrets();
        let exposed: Vec<&str> = secrets.iter().map(|s| s.expose()).collect();
        // Boxed: the error body's read would otherwise sit in every request's future, which is
        // copied whole into its box on every request (see `a_request_future_stays_small`).
        Box::pin(response::scrub_error(resp, &exposed, rid)).await
    } else {
        resp
    };
    response::response_headers(resp.headers_mut());
    note.with_secrets(|secrets| response::redact_secret_headers(resp.headers_mut(), secrets));
    resp
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

/// Buffers a body of at most [`REPLAY_LIMIT`] bytes (known from its length) so it can be sent
/// again; larger or unknown-length bodies stream once. The whole body must arrive within
/// `deadline` (408 otherwise): a client that declares a body and never sends it gives back its
/// in-flight slot.
async fn replayable(body: Body, deadline: Duration, stats: &body::BodyStats) -> Result<Payload, GatewayError> {
    if body.is_end_stream() {
        return Ok(Payload::Buffered(Bytes::new()));
    }
    match body.size_hint().upper() {
        Some(n) if n <= REPLAY_LIMIT => {
            let read = tokio::time::timeout(deadline, body::collect_limited(body, REPLAY_LIMIT as usize)).await;
            match read {
                Ok(Ok(bytes)) => Ok(Payload::Buffered(bytes)),
                Err(_) => Err(timeout_after(deadline)),
                Ok(Err(_)) if stats.timed_out() => Err(timeout_after(deadline)),
                Ok(Err(e)) => Err(GatewayError::BadRequest(format!("reading the request body: {e}"))),
            }
        }
        _ => Ok(Payload::Stream(body)),
    }
}

fn timeout_after(d: Duration) -> GatewayError {
    GatewayError::RequestTimeout(humantime::format_duration(d).to_string())
}

fn request_timeout(rt: &Runtime) -> GatewayError {
    timeout_after(rt.config.server.limits.request_body_timeout)
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    use crate::config::{PrefixLimit, Rate, UpstreamLimits};
    use crate::limit::upstream::UpstreamBudget;

    /// A token source that hands out `t1`, `t2`, ... (replacements marked as such).
    #[derive(Default)]
    struct Tokens {
        current: Mutex<Option<Arc<Token>>>,
        replaced: AtomicU32,
        replaced_soon: AtomicU32,
    }

    impl TokenSource for Tokens {
        fn name(&self) -> &str {
            "login"
        }

        async fn get(&self, _: Duration) -> Result<Arc<Token>, TokenUnavailable> {
            let mut current = self.current.lock().unwrap();
            Ok(current.get_or_insert_with(|| Arc::new(Token::for_test("t1", 1, false))).clone())
        }

        async fn replace(&self, old: &Token, _: Duration) -> Result<Arc<Token>, TokenUnavailable> {
            self.replaced.fetch_add(1, Ordering::SeqCst);
            let next = old.generation + 1;
            let fresh = Arc::new(Token::for_test(&format!("t{next}"), next, true));
            *self.current.lock().unwrap() = Some(fresh.clone());
            Ok(fresh)
        }

        fn replace_soon(&self, _: &Token) {
            self.replaced_soon.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The credentials each send carried, in order.
    type Seen = Arc<Mutex<Vec<String>>>;

    /// A fake Palette: answers with `answer(n, request)` for send number `n` (from 1), and
    /// records the credential each send carried.
    fn fake_palette(
        answer: impl Fn(u32, &Request<Body>) -> Response<Body> + Clone + Send + Sync + 'static,
    ) -> (
        impl Service<Request<Payload>, Response = Response<Body>, Error = GatewayError, Future = impl Send> + Clone + Send,
        Seen,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<Payload>| {
            let (answer, log) = (answer.clone(), log.clone());
            async move {
                let req = req.map(Payload::into_body);
                let credential = req.headers().get(header::AUTHORIZATION).or(req.headers().get(&auth::API_KEY));
                let credential = credential.map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
                let n = {
                    let mut log = log.lock().unwrap();
                    log.push(credential);
                    log.len() as u32
                };
                Ok::<_, GatewayError>(answer(n, &req))
            }
        });
        (svc, seen)
    }

    fn status(code: u16) -> Response<Body> {
        Response::builder().status(code).body(body::empty()).unwrap()
    }

    /// A request and its trip, whose wait ends `wait` from now.
    fn request(method: Method, payload: Payload, wait: Duration) -> (Request<Payload>, Trip) {
        let req = Request::builder().method(method).uri("/v1/clusters").body(payload).unwrap();
        let trip = Trip {
            note: Note::default(),
            deadline: tokio::time::Instant::now() + wait,
            pending: PendingLimits::default(),
        };
        (req, trip)
    }

    fn budget(bucket: Option<Arc<Bucket>>, metrics: &Arc<Metrics>, trip: &Trip) -> BudgetLayer {
        BudgetLayer::new(BudgetConfig {
            bucket,
            client: ClientId(0),
            client_name: Arc::from("ci"),
            metrics: metrics.clone(),
            trip: trip.clone(),
        })
    }

    fn replay(tokens: &Arc<Tokens>, metrics: &Arc<Metrics>, trip: &Trip) -> ReplayLayer<Tokens> {
        ReplayLayer::new(ReplayConfig {
            credential: Credential::Token(tokens.clone()),
            within: Duration::from_secs(1),
            metrics: metrics.clone(),
            bucket: None,
            note: trip.note.clone(),
        })
    }

    fn retry(metrics: &Arc<Metrics>, trip: &Trip) -> RetryLayer {
        RetryLayer::new(RetryConfig { metrics: metrics.clone(), bucket: None, trip: trip.clone() })
    }

    #[tokio::test(start_paused = true)]
    async fn replays_once_with_a_new_token() {
        let metrics = Arc::new(Metrics::new());
        let tokens = Arc::new(Tokens::default());
        // Palette refuses t1 and accepts t2.
        let (palette, seen) =
            fake_palette(|_, req| status(if req.headers()[header::AUTHORIZATION] == "t1" { 401 } else { 200 }));
        let (req, trip) = request(Method::POST, Payload::Buffered(Bytes::from_static(b"{}")), Duration::from_secs(5));
        let svc = tower::ServiceBuilder::new()
            .layer(replay(&tokens, &metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(*seen.lock().unwrap(), ["t1", "t2"]);
        assert_eq!((tokens.replaced.load(Ordering::SeqCst), trip.note.sends()), (1, 2));
        let secrets: Vec<String> = trip.note.secrets().iter().map(|s| s.expose().to_string()).collect();
        assert_eq!(secrets, ["t1", "t2"], "both tokens are scrubbed from the answer");
        assert_eq!(metrics.upstream_retries.with_label_values(&["none", "401"]).get(), 1);

        // Refused again on the new token: one replay only, its 401 passes through.
        let (palette, seen) = fake_palette(|_, _| status(401));
        let tokens = Arc::new(Tokens::default());
        let (req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), Duration::from_secs(5));
        let svc = tower::ServiceBuilder::new()
            .layer(replay(&tokens, &metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 401);
        assert_eq!((seen.lock().unwrap().len(), trip.note.sends()), (2, 2));
        assert_eq!(tokens.replaced.load(Ordering::SeqCst), 1);
    }

    /// An API key goes on the request as `ApiKey`, once per send; Palette's 401 on it is the
    /// endpoint's answer (a key is never replaced), and no token is asked for.
    #[tokio::test(start_paused = true)]
    async fn an_api_key_is_sent_once_and_its_401_passes_through() {
        let metrics = Arc::new(Metrics::new());
        for answer in [200, 401] {
            let (palette, seen) = fake_palette(move |_, _| status(answer));
            let (mut req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), Duration::from_secs(5));
            req.headers_mut().insert(auth::API_KEY.clone(), HeaderValue::from_static("client-said-this"));
            let svc = tower::ServiceBuilder::new()
                .layer(ReplayLayer::<Tokens>::new(ReplayConfig {
                    credential: Credential::ApiKey(HeaderValue::from_static("palette-key")),
                    within: Duration::from_secs(1),
                    metrics: metrics.clone(),
                    bucket: None,
                    note: trip.note.clone(),
                }))
                .layer(budget(None, &metrics, &trip))
                .service(palette);
            assert_eq!(svc.oneshot(req).await.unwrap().status(), answer);
            assert_eq!(*seen.lock().unwrap(), ["palette-key"], "answered {answer}");
            assert_eq!(trip.note.sends(), 1);
        }
        assert_eq!(metrics.upstream_retries.with_label_values(&["none", "401"]).get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_on_a_fresh_replacement_passes_through() {
        let metrics = Arc::new(Metrics::new());
        let tokens = Arc::new(Tokens::default());
        *tokens.current.lock().unwrap() = Some(Arc::new(Token::for_test("t2", 2, true)));
        let (palette, seen) = fake_palette(|_, _| status(401));
        let (req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), Duration::from_secs(5));
        let svc = tower::ServiceBuilder::new()
            .layer(replay(&tokens, &metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 401);
        assert_eq!(seen.lock().unwrap().len(), 1, "the endpoint's own 401, not a dead token");
        assert_eq!(tokens.replaced.load(Ordering::SeqCst) + tokens.replaced_soon.load(Ordering::SeqCst), 0);

        // Past FRESH_REPLACEMENT the same 401 is worth a new token again.
        tokio::time::advance(crate::credentials::token::FRESH_REPLACEMENT).await;
        let (palette, seen) = fake_palette(|_, _| status(401));
        let (req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), Duration::from_secs(5));
        let svc = tower::ServiceBuilder::new()
            .layer(replay(&tokens, &metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 401);
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_retry_after_and_stops_at_max_attempts() {
        let metrics = Arc::new(Metrics::new());
        let (palette, seen) = fake_palette(|_, _| {
            Response::builder().status(429).header("retry-after", "2").body(body::empty()).unwrap()
        });
        let (req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), Duration::from_secs(30));
        let svc = tower::ServiceBuilder::new()
            .layer(retry(&metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        let started = tokio::time::Instant::now();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.headers()[header::RETRY_AFTER].to_str().unwrap()), (429, "2"));
        assert_eq!((seen.lock().unwrap().len() as u32, trip.note.sends()), (MAX_ATTEMPTS, MAX_ATTEMPTS));
        assert_eq!(started.elapsed(), Duration::from_secs(4), "two waits of Retry-After");
        assert_eq!(metrics.upstream_retries.with_label_values(&["none", "429"]).get(), 2);
        assert_eq!(metrics.upstream_throttled.with_label_values(&["none"]).get(), 3);

        // The 401 replay counts towards MAX_ATTEMPTS: refused, replayed, then one 429 retry.
        let tokens = Arc::new(Tokens::default());
        let (palette, seen) = fake_palette(|n, _| match n {
            1 => status(401),
            _ => Response::builder().status(429).header("retry-after", "1").body(body::empty()).unwrap(),
        });
        let (req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), Duration::from_secs(30));
        let svc = tower::ServiceBuilder::new()
            .layer(retry(&metrics, &trip))
            .layer(replay(&tokens, &metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 429);
        assert_eq!(*seen.lock().unwrap(), ["t1", "t2", "t2"]);

        // A wait that would end past the deadline is not taken: 429 at once.
        let (palette, seen) = fake_palette(|_, _| {
            Response::builder().status(429).header("retry-after", "10").body(body::empty()).unwrap()
        });
        let (req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), Duration::from_secs(5));
        let svc = tower::ServiceBuilder::new()
            .layer(retry(&metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 429);
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_idempotent_or_streamed_body_is_never_retried() {
        let metrics = Arc::new(Metrics::new());
        let too_many = |_: u32, _: &Request<Body>| status(429);
        for (method, payload) in [
            (Method::POST, Payload::Buffered(Bytes::from_static(b"{}"))),
            (Method::GET, Payload::Stream(body::full("streamed"))),
        ] {
            let (palette, seen) = fake_palette(too_many);
            let (req, trip) = request(method.clone(), payload, Duration::from_secs(30));
            let svc = tower::ServiceBuilder::new()
                .layer(retry(&metrics, &trip))
                .layer(budget(None, &metrics, &trip))
                .service(palette);
            let resp = svc.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 429, "{method}");
            assert!(resp.headers().contains_key(header::RETRY_AFTER), "{method}: the client is told when to retry");
            assert_eq!(seen.lock().unwrap().len(), 1, "{method}");
        }
        // A streamed body is not replayed after a 401 either; the token is replaced later.
        let tokens = Arc::new(Tokens::default());
        let (palette, seen) = fake_palette(|_, _| status(401));
        let (req, trip) = request(Method::PUT, Payload::Stream(body::full("streamed")), Duration::from_secs(30));
        let svc = tower::ServiceBuilder::new()
            .layer(replay(&tokens, &metrics, &trip))
            .layer(budget(None, &metrics, &trip))
            .service(palette);
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 401);
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!((tokens.replaced.load(Ordering::SeqCst), tokens.replaced_soon.load(Ordering::SeqCst)), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn budget_wait_gives_429_with_retry_after_when_over_max_wait() {
        let metrics = Arc::new(Metrics::new());
        let limits = UpstreamLimits {
            rules: vec![PrefixLimit { prefix: "*".into(), rate: Rate { per_second: 0.5, burst: 1 } }],
            max_wait: Duration::from_secs(1),
            max_queue: 10,
        };
        let budgets = UpstreamBudget::build(&limits, None);
        let bucket = budgets.bucket_for(&crate::path::check("/v1/clusters").unwrap()).cloned();
        let (palette, seen) = fake_palette(|_, _| status(200));
        let send = |wait: Duration| {
            let (req, trip) = request(Method::GET, Payload::Buffered(Bytes::new()), wait);
            let svc =
                tower::ServiceBuilder::new().layer(budget(bucket.clone(), &metrics, &trip)).service(palette.clone());
            (svc.oneshot(req), trip)
        };
        // The first request takes the only slot at once (counted, its zero wait observed); the
        // next would wait 2 s, past its 1 s.
        let (answer, trip) = send(Duration::from_secs(1));
        assert_eq!(answer.await.unwrap().status(), 200);
        assert_eq!(trip.note.sends(), 1);
        let waits = metrics.queue_wait.with_label_values(&[bucket.as_ref().unwrap().label()]);
        assert_eq!((waits.get_sample_count(), waits.get_sample_sum()), (1, 0.0));
        let (answer, trip) = send(Duration::from_secs(1));
        let err = answer.await.unwrap_err();
        assert!(matches!(err, GatewayError::RateLimited { limit: "upstream", .. }), "{err:?}");
        let resp = err.into_response("rid");
        assert_eq!(resp.status(), 429);
        let secs: u64 = resp.headers()[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=3).contains(&secs), "{secs}");
        assert_eq!((seen.lock().unwrap().len(), trip.note.sends()), (1, 0), "refused before any send");
        assert_eq!(metrics.rate_limited.with_label_values(&["ci", "upstream"]).get(), 1);

        // Within its wait, the request waits for the slot and records the wait.
        let (answer, trip) = send(Duration::from_secs(5));
        assert_eq!(answer.await.unwrap().status(), 200);
        trip.note.set(|f| assert!(f.wait_ms > 0.0, "{}", f.wait_ms));
    }

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
