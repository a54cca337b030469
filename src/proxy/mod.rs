//! The request path, in the order each request takes it:
//!
//! ```text
//! request id → in-flight/metrics → method (Palette's only) → target form → path check → local auth → client limits
//!   → route → policy (/v1/auth block, allow) → scope (ProjectUid) → header hygiene
//!   → cache (a caching route's GET: stored answer, or join an identical read in flight; a
//!     write drops its scope's entries)
//!   → credential swap → upstream budget → forward (401 on a token that may be dead → new
//!     token → one replay; 429 → slow the prefix → paced retry of idempotent requests within
//!     max_wait; at most MAX_ATTEMPTS sends in all)
//!   → response hygiene (hop-by-hop, Set-Cookie, trailers, secret scrub of every answer's
//!     headers and of decoded error bodies) → unread small request body drained → HEAD: no body
//! ```
//!
//! The chain is built in one function, `stack`, in README "How it works" order. The
//! wrapping steps are tower layers, one file each (`request_log`: request id, request log,
//! in-flight and request metrics; `rescue`: the only place an error becomes an answer); the
//! decision steps are plain functions over the request parts (`target`, [`path`], [`auth`],
//! `limits`, `routes`, `policy`, [`scope`], [`hygiene`]; route to hygiene as one function,
//! `decide::route`, which `explain` calls too) run in order by one step service,
//! which hands the request to `exchange` (tower layers, outermost first: 429 retry,
//! credential swap and 401 replay, budget wait, send; then [`response`] hygiene) and
//! `drain`s what was left unread. Layers and steps talk through
//! request extensions (the request id, the request's `request_log::Note`, the body counters),
//! never through shared mutable state. They share one runtime snapshot, taken once when the
//! request arrives, so a reload never changes the rules under a request in flight.
//!
//! Order decisions: the path is checked before authentication so that no rule ever sees an
//! unchecked path; client limits run right after authentication (they need the client) and
//! before policy, so a client hammering forbidden paths is throttled too; the upstream budget
//! is taken last, after everything that could refuse the request, so refused requests never
//! spend Palette's budget.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response};
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeaders, SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeaders,
    SetSensitiveResponseHeadersLayer,
};

use crate::body::Body;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use auth::PeerIdentity;
use request_log::Note;

pub mod auth;
pub(crate) mod authenticate;
pub(crate) mod cache;
pub mod credential_endpoints;
pub(crate) mod decide;
pub(crate) mod decode;
pub(crate) mod drain;
pub(crate) mod exchange;
pub mod hygiene;
pub(crate) mod limits;
pub mod path;
pub mod pattern;
pub(crate) mod policy;
pub(crate) mod project_names;
pub(crate) mod request_id;
pub(crate) mod request_log;
pub(crate) mod rescue;
pub mod response;
pub(crate) mod routes;
pub mod scope;
pub(crate) mod target;

pub use exchange::MAX_ATTEMPTS;

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
    /// The client's address and port as the access and audit logs write it (`client_addr`),
    /// rendered once per connection, not per logged request (issue 14).
    pub peer_text: Arc<str>,
}

impl ConnInfo {
    /// A connection from `peer`.
    pub fn new(peer: SocketAddr, tls: bool, identity: Arc<PeerIdentity>) -> Self {
        // An IP address always renders as a valid header value.
        let forwarded_for =
            HeaderValue::from_str(&peer.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { peer, tls, identity, forwarded_for, peer_text: Arc::from(peer.to_string()) }
    }
}
/// The gateway: the request chain as one service that never fails (errors become
/// Palette-shaped answers).
#[derive(Clone)]
pub struct Gateway {
    stack: Stack,
}

/// The chain's concrete type: no boxing between layers.
type Stack = SetSensitiveRequestHeaders<SetSensitiveResponseHeaders<request_log::Logged<rescue::Rescue<Steps>>>>;

/// Builds the request chain, outermost first (tower's `ServiceBuilder`: the first `.layer()`
/// wraps all the others).
fn stack(runtime: SharedRuntime, metrics: Arc<Metrics>) -> Stack {
    tower::ServiceBuilder::new()
        // Credentials marked sensitive before anything can log or trace a header: the
        // client's local key and cookies on the way in, Palette's cookies on the way out.
        .layer(SetSensitiveRequestHeadersLayer::from_shared(Arc::from(
            [auth::API_KEY.clone(), header::AUTHORIZATION, header::COOKIE].as_slice(),
        )))
        .layer(SetSensitiveResponseHeadersLayer::new([header::SET_COOKIE]))
        // Request id and request log first, so every request, refused or not, gets an id, an
        // in-flight slot, its metrics and exactly one access event (499 if never answered).
        .layer(request_log::RequestLogLayer::new(metrics.clone()))
        // The rescue inside the log, so the log and metrics see the status of the gateway's
        // own answers; it is the only place errors become answers.
        .layer(rescue::RescueLayer::new(metrics.clone()))
        // The steps: config snapshot, in-flight limit, target form, path, local auth, client
        // limits, route, policy, scope, hygiene, exchange, response hygiene, drain.
        .service(Steps { runtime, metrics })
}

impl Gateway {
    /// A gateway serving the given runtime.
    pub fn new(runtime: SharedRuntime, metrics: Arc<Metrics>) -> Self {
        Gateway { stack: stack(runtime, metrics) }
    }

    /// Handles one request; never fails (errors become Palette-shaped answers). The chain's
    /// own future, not an `async` block around it: the listener boxes it once, and a wrapper
    /// would be one more state to copy per request (issue 14).
    pub fn handle(&self, req: Request<Body>) -> impl Future<Output = Response<Body>> + Send + 'static {
        use futures_util::FutureExt as _;
        // Every layer is always ready (none holds capacity), so no `poll_ready` first.
        tower::Service::call(&mut self.stack.clone(), req).map(|r| r.unwrap_or_else(|never| match never {}))
    }
}

/// The decision steps and the exchange, on one runtime snapshot.
#[derive(Clone)]
pub(crate) struct Steps {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
}

impl tower::Service<Request<Body>> for Steps {
    type Response = Response<Body>;
    type Error = GatewayError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, GatewayError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The snapshot is taken once: the request finishes on the config it started with.
        let rt = self.runtime.load_full();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            // A body the steps drop unread (a refusal, an early upstream answer) comes back
            // here to be drained before the answer goes out (see `drain`).
            let (parts, body) = req.into_parts();
            let (body, unread) = drain::track(body);
            let result = process(&rt, &metrics, Request::from_parts(parts, body)).await;
            unread.drain().await;
            result
        })
    }
}

/// The decision steps, in order, then the exchange. Each step is a plain function over the
/// request parts; what the log needs goes to the request's [`Note`].
async fn process(
    rt: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    req: Request<Body>,
) -> Result<Response<Body>, GatewayError> {
    let (mut parts, body) = req.into_parts();
    // Set by the request log layer (defaults only when a step is driven without it).
    let (id, note, stats) = match parts.extensions.remove::<request_log::Handles>() {
        Some(h) => (h.id, h.note, h.bytes_in),
        None => (request_id::assign(&parts.headers), Note::default(), Arc::default()),
    };
    let (request_id, stats) = (&id.0, &stats);
    // 1. Overload: over the in-flight limit, 503 before any work.
    limits::check_inflight(rt, metrics)?;
    // 2. Framing: method, overrides, transfer coding, declared size, origin form; body caps.
    let server_limits = &rt.config.server.limits;
    target::check(&parts, server_limits)?;
    let body = target::cap_body(body, server_limits, stats);
    let conn = parts
        .extensions
        .get::<ConnInfo>()
        .cloned()
        .unwrap_or_else(|| ConnInfo::new(SocketAddr::from(([127, 0, 0, 1], 0)), false, Arc::default()));
    // 3. Path check, before any rule sees the path.
    let checked = path::check(parts.uri.path())?;
    // 4. Local authentication: which client this is.
    let cfg = &rt.config;
    let (client_idx, local_key) = authenticate::identify(rt, metrics, &parts.headers, &conn).await?;
    let client = cfg.client(client_idx);
    note.set(|f| f.client = Some(client.name.clone()));
    // 5. Client limits, before policy so forbidden paths are throttled too.
    let pending = limits::check(rt, metrics, client_idx, client, &note)?;
    // 6. Route, 7. policy, 8. scope (ProjectUid), 9. header hygiene.
    // One function for these steps, shared with `explain` (decide.rs).
    let (matched, decided) = decide::route(
        cfg,
        client_idx,
        &parts.method,
        &checked,
        parts.uri.query(),
        &mut parts.headers,
        &conn,
        request_id,
        local_key.as_ref(),
        Some((rt, metrics)),
    )
    .await;
    note.set(|f| f.route = matched.route.map(|r| r.name.clone()));
    let scope = decided?.scope;
    // The log records what goes upstream.
    // A handle on the header's shared bytes, not a copy: read only if the request is logged.
    let project = parts.headers.get(&scope::PROJECT_UID_HEADER).cloned();
    note.set(|f| f.project = project);

    // 10. The exchange: credential swap, budget, send, 401 replay, 429 retry, response hygiene.
    // What goes upstream, for the log: the checked path after a route's strip (issue 9).
    note.set(|f| f.upstream_path = Some(matched.upstream_path.clone()));
    // Made to its exact length: the URI takes the string over without a copy.
    let path = matched.upstream_path.as_str();
    let mut path_and_query = String::with_capacity(path.len() + scope.query.as_ref().map_or(0, |q| q.len() + 1));
    path_and_query.push_str(path);
    if let Some(q) = &scope.query {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let uri = rt
        .upstream
        .uri(path_and_query)
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

    let bucket = rt.budget.bucket_for(&matched.upstream_path).cloned();
    static NO_PREFIX: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("none"));
    let prefix: Arc<str> = bucket.as_ref().map_or_else(|| NO_PREFIX.clone(), |b| b.label().clone());
    let exchange = exchange::Exchange {
        rt: rt.clone(),
        metrics: metrics.clone(),
        stats: stats.clone(),
        client_idx,
        client_name: client.name.clone(),
        bucket,
        pending: pending.clone(),
    };
    // The response cache around the exchange (issue 12): here, after every check, so a cached
    // answer only goes to a request that may fetch it.
    // The id's shared bytes, not a copy of its text.
    let (credential, fetch_note, fetch_id) = (credential.clone(), note.clone(), id.clone());
    let plan = cache::Plan::new(
        rt,
        &cache::CacheRequest {
            route: matched.route,
            method: &head.method,
            headers: &head.headers,
            path_and_query: head.uri.path_and_query().map_or("/", |p| p.as_str()),
            credential: client.credential,
            prefix: &prefix,
            client: &client.name,
            body_empty: http_body::Body::is_end_stream(&body),
        },
    );
    let fetch = move || async move {
        let resp = exchange.run(&credential, head, body, &fetch_note, fetch_id.as_str()).await?;
        target::check_upstream_status(resp)
    };
    let answer = cache::around(rt, metrics, plan, &note, fetch).await?;
    // Answered without going through the budget (a cached or coalesced answer): the shared
    // client limits are taken now, in their one round trip.
    if let Some(pending) = pending.take() {
        pending.settle(&note).await?;
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, MapEnv};
    use std::path::Path;

    /// Each request's future is moved whole into its box when the request arrives, so its
    /// size is copied on every request (issue 14: at 45 KiB it was 13k instructions of memcpy
    /// per request). What only some requests await (a cached read, a Redis round trip, a
    /// TokenReview) is boxed where it is awaited, so this stays small; a change that inlines
    /// such a state again fails here.
    #[tokio::test]
    async fn a_request_future_stays_small() {
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n";
        let cfg = load_str(text, Path::new("."), &MapEnv::new().with("K", "x")).unwrap();
        let metrics = Arc::new(Metrics::new());
        let rt = Runtime::build(cfg, None, &metrics).unwrap();
        let mut steps = Steps { runtime: Arc::new(arc_swap::ArcSwap::from_pointee(rt)), metrics };
        let fut = tower::Service::call(&mut steps, Request::new(crate::body::empty()));
        let size = std::mem::size_of_val(&*fut);
        assert!(size <= 8 * 1024, "the request future is {size} bytes");
        eprintln!("the request future is {size} bytes");
    }
}
