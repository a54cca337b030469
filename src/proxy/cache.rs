//! The cache step (issue 12 §2), around the exchange: after authentication, policy, scope and
//! hygiene, so a cached answer only ever goes to a request that would have been allowed to fetch
//! it, and only ever is the answer to the same upstream request (same credential, same
//! `ProjectUid` sent, same path, query, `Accept` and `Accept-Encoding`; see [`crate::cache`]).
//!
//! - A GET on a route with `cache` and without a body or `Cache-Control: no-cache`/`no-store`:
//!   a fresh stored answer is served (`X-Cache: hit`, `Age`); else with `coalesce` it joins an
//!   identical read in flight (`X-Cache: coalesced`) or starts one (`X-Cache: miss`). The read
//!   stores a 200 whose body fits `max_entry_bytes` (read with that bound; a larger body streams
//!   through untouched), without `Set-Cookie`, `Cache-Control: no-store`/`private`/`no-cache`
//!   or a `Vary` on other headers. A failure is shared with the waiters, never stored.
//! - A POST, PUT, PATCH or DELETE drops what is stored for its scope under its budget prefix,
//!   before it is sent and again once answered, so a tool reads its own writes.

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt as _;

use crate::body::{self, Body};
use crate::cache::{Key, Outcome, ResponseCache, Scope, Stored};
use crate::config::{Route, RouteCache};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::exchange::UpstreamSetCookie;
use crate::proxy::request_log::Note;
use crate::proxy::{scope, Runtime};

/// `X-Cache: hit|miss|coalesced` on every answer of a caching route.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// What the cache step needs to know of a request.
pub(crate) struct CacheRequest<'a> {
    pub(crate) route: Option<&'a Route>,
    pub(crate) method: &'a Method,
    /// The request headers as they go upstream (after hygiene).
    pub(crate) headers: &'a HeaderMap,
    /// The upstream path and query.
    pub(crate) path_and_query: &'a str,
    /// The client's credential (index into the config's).
    pub(crate) credential: usize,
    /// The budget prefix's label (`none` without one).
    pub(crate) prefix: &'a Arc<str>,
    /// The client's name (a shared failure names the waiting client, not the one that read).
    pub(crate) client: &'a Arc<str>,
    /// Whether the request has no body (hygiene removed `Transfer-Encoding`, so the headers
    /// cannot tell).
    pub(crate) body_empty: bool,
}

/// What the cache does with a request, decided before the exchange takes the request.
pub(crate) struct Plan {
    prefix: Arc<str>,
    client: Arc<str>,
    what: What,
}

enum What {
    /// Not a caching route: the exchange alone.
    Pass,
    /// A write: drop the scope's entries under the prefix.
    Write(Scope),
    /// A caching route, but this request goes to Palette uncached.
    Bypass(Arc<str>),
    /// A cacheable GET.
    Read { route: Arc<str>, settings: RouteCache, key: Key },
}

impl Plan {
    /// Decides, from the request as it goes upstream.
    pub(crate) fn new(rt: &Runtime, req: &CacheRequest<'_>) -> Plan {
        let scope = || Scope::new(&rt.config, req.credential, req.headers.get(&scope::PROJECT_UID_HEADER));
        let what = if matches!(*req.method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
            What::Write(scope())
        } else {
            match req.route.and_then(|r| rt.config.route_cache(r).map(|c| (r, c))) {
                None => What::Pass,
                Some((route, _))
                    if *req.method != Method::GET
                        || !req.body_empty
                        || has_body(req.headers)
                        || asks_fresh(req.headers) =>
                {
                    What::Bypass(route.name.clone())
                }
                Some((route, settings)) => What::Read {
                    route: route.name.clone(),
                    settings,
                    key: Key {
                        scope: scope(),
                        path_and_query: req.path_and_query.to_string(),
                        accept: joined(req.headers, &header::ACCEPT),
                        accept_encoding: joined(req.headers, &header::ACCEPT_ENCODING),
                    },
                },
            }
        };
        Plan { prefix: req.prefix.clone(), client: req.client.clone(), what }
    }
}

/// Answers the request from the cache, through a shared read, or with the exchange `fetch`
/// makes. A maker rather than the future: the future is made where it is awaited, so it is
/// stored once in this future's state rather than once as an argument and again as the
/// awaited value (issue 14: every request's future is moved whole into its box).
pub(crate) async fn around<M, F>(
    rt: &Arc<Runtime>,
    metrics: &Metrics,
    plan: Plan,
    note: &Note,
    fetch: M,
) -> Result<Response<Body>, GatewayError>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<Response<Body>, GatewayError>> + Send + 'static,
{
    let cache = &rt.cache;
    let what = match plan.what {
        // Boxed: its state (the stored-answer lookup, the shared read) is many times the
        // exchange's, and a future is moved whole into the request's box, so inline it would
        // cost every request, caching or not, that copy (issue 14).
        What::Read { route, settings, key } => {
            return Box::pin(read_through(rt, metrics, &plan.prefix, &plan.client, (route, settings, key), note, fetch))
                .await
        }
        what => what,
    };
    // One await of `fetch` for the other cases, so its state is in this future once.
    match &what {
        What::Write(scope) => cache.invalidate(scope, &plan.prefix),
        What::Bypass(route) => metrics.cache_misses.with_label_values(&[route]).inc(),
        What::Pass | What::Read { .. } => {}
    }
    let answer = fetch().await;
    match what {
        What::Write(scope) => {
            cache.invalidate(&scope, &plan.prefix);
            answer
        }
        What::Bypass(_) => answer.map(|r| marked(r, "miss", None, note)),
        What::Pass | What::Read { .. } => answer,
    }
}

/// A cacheable GET: the stored answer, a shared read in flight, or a read of its own.
async fn read_through<M, F>(
    rt: &Arc<Runtime>,
    metrics: &Metrics,
    prefix: &str,
    client: &str,
    (route_label, settings, key): (Arc<str>, RouteCache, Key),
    note: &Note,
    fetch: M,
) -> Result<Response<Body>, GatewayError>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = Result<Response<Body>, GatewayError>> + Send + 'static,
{
    let cache = &rt.cache;
    let route_label = &*route_label;
    if !settings.ttl.is_zero() {
        if let Some(stored) = cache.get(&key, settings.ttl).await {
            metrics.cache_hits.with_label_values(&[route_label]).inc();
            return Ok(marked(answer(&stored), "hit", Some(&stored), note));
        }
    }
    let (slot, generation) = cache.generation(&key.scope, prefix);
    let read = Read { cache: cache.clone(), key: key.clone(), settings, slot, generation };
    if !settings.coalesce {
        metrics.cache_misses.with_label_values(&[route_label]).inc();
        let (outcome, resp) = read.run(fetch()).await;
        return outcome_answer(outcome, resp, "miss", note);
    }
    // The leader's own answer, when it is too large to share.
    let streamed = Arc::new(std::sync::Mutex::new(None));
    let mut fetch = Some(fetch);
    let mut joined = cache.join(&key, || {
        let (streamed, fetch) = (streamed.clone(), fetch.take());
        async move {
            let Some(fetch) = fetch else {
                return Outcome::Failed(GatewayError::UpstreamError("cache: no read to run".into()));
            };
            let (outcome, resp) = read.run(fetch()).await;
            if let Some(resp) = resp {
                *streamed.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(resp);
            }
            outcome
        }
        .boxed()
    });
    if joined.leader {
        metrics.cache_misses.with_label_values(&[route_label]).inc();
        let outcome = (&mut joined.flight).await;
        let resp = streamed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        return outcome_answer(outcome, resp, "miss", note);
    }
    metrics.cache_coalesced.with_label_values(&[route_label]).inc();
    // A waiter keeps its own deadline: as long as its own read could have taken.
    let within = rt.budget.max_wait() + rt.config.upstream.request_timeout;
    let outcome = match tokio::time::timeout(within, &mut joined.flight).await {
        Ok(outcome) => outcome,
        Err(_) => {
            return Err(GatewayError::UpstreamTimeout(format!(
                "{} (waiting for an identical read in flight)",
                humantime::format_duration(within)
            )))
        }
    };
    drop(joined);
    match (outcome, fetch) {
        (Outcome::Unshared, Some(fetch)) => fetch().await.map(|r| marked(r, "miss", None, note)),
        (Outcome::Failed(e), _) => outcome_answer(Outcome::Failed(for_waiter(e, client)), None, "coalesced", note),
        (outcome, _) => outcome_answer(outcome, None, "coalesced", note),
    }
}

/// One read from Palette for the cache: the exchange, then the bounded read of its body.
struct Read {
    cache: Arc<ResponseCache>,
    key: Key,
    settings: RouteCache,
    slot: usize,
    generation: u64,
}

impl Read {
    /// The outcome to share, and the answer itself when it is too large to share.
    async fn run<F>(self, fetch: F) -> (Outcome, Option<Response<Body>>)
    where
        F: Future<Output = Result<Response<Body>, GatewayError>>,
    {
        let resp = match fetch.await {
            Ok(resp) => resp,
            Err(e) => return (Outcome::Failed(e), None),
        };
        let storable = storable(&resp);
        let limit = self.cache.settings().max_entry_bytes;
        let (parts, body) = resp.into_parts();
        let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return (Outcome::Unshared, Some(Response::from_parts(parts, body)));
        }
        let body = match read_bounded(body, limit).await {
            Ok(Bounded::Whole(bytes)) => bytes,
            Ok(Bounded::Larger(body)) => return (Outcome::Unshared, Some(Response::from_parts(parts, body))),
            Err(e) => {
                return (Outcome::Failed(GatewayError::UpstreamError(format!("reading Palette's answer: {e}"))), None)
            }
        };
        let stored = Arc::new(Stored {
            status: parts.status,
            headers: parts.headers,
            body,
            at: tokio::time::Instant::now(),
            ttl: self.settings.ttl,
            slot: self.slot,
            generation: self.generation,
        });
        if storable && !self.settings.ttl.is_zero() {
            self.cache.insert(self.key, stored.clone()).await;
        }
        (Outcome::Answer(stored), None)
    }
}

/// A body read up to a bound.
enum Bounded {
    /// All of it, within the bound.
    Whole(Bytes),
    /// Past the bound: what was read, then the rest, as one body again.
    Larger(Body),
}

/// Reads `body` whole if it is at most `limit` bytes; never buffers more than that.
async fn read_bounded(mut body: Body, limit: u64) -> Result<Bounded, body::BoxError> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers: response hygiene drops them anyway
        };
        if (read.len() + data.len()) as u64 > limit {
            let head = futures_util::stream::iter([
                Ok(http_body::Frame::data(read.freeze())),
                Ok(http_body::Frame::data(data)),
            ]);
            let rest = http_body_util::BodyStream::new(body);
            let stream = futures_util::StreamExt::chain(head, rest);
            return Ok(Bounded::Larger(body::boxed(http_body_util::StreamBody::new(stream))));
        }
        read.extend_from_slice(&data);
    }
    Ok(Bounded::Whole(read.freeze()))
}

/// Whether Palette's answer may be stored (it is shared with concurrent waiters either way).
fn storable(resp: &Response<Body>) -> bool {
    let h = resp.headers();
    resp.status() == StatusCode::OK
        && resp.extensions().get::<UpstreamSetCookie>().is_none()
        && !h.contains_key(header::SET_COOKIE)
        && !directives(h, &header::CACHE_CONTROL).any(|d| matches!(d.as_str(), "no-store" | "private" | "no-cache"))
        && !directives(h, &header::VARY).any(|d| !matches!(d.as_str(), "accept" | "accept-encoding"))
}

/// A request that asks for a fresh answer (`Cache-Control: no-cache` or `no-store`).
fn asks_fresh(h: &HeaderMap) -> bool {
    directives(h, &header::CACHE_CONTROL).any(|d| matches!(d.as_str(), "no-cache" | "no-store"))
}

/// A GET with a body is unusual enough not to be cached.
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes().trim_ascii() != b"0")
}

/// The comma-separated directives of every `name` header, lower case, without `=value`.
fn directives<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = String> + 'a {
    h.get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|d| {
            let name = d.split(|&b| b == b'=').next().unwrap_or_default();
            String::from_utf8_lossy(name.trim_ascii()).to_ascii_lowercase()
        })
        .filter(|d| !d.is_empty())
}

/// Every value of `name`, in order.
fn joined(h: &HeaderMap, name: &HeaderName) -> Vec<u8> {
    let mut out = Vec::new();
    for v in h.get_all(name) {
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out
}

/// A failure shared with a waiting client, naming that client (the budget's 429 names the
/// client it refused; the waiter must not learn which other client read first).
fn for_waiter(e: GatewayError, client: &str) -> GatewayError {
    match e {
        GatewayError::RateLimited { limit, rate, retry_after, .. } => {
            GatewayError::RateLimited { client: client.to_string(), limit, rate, retry_after }
        }
        other => other,
    }
}

/// The client's answer from a read's outcome.
fn outcome_answer(
    outcome: Outcome,
    streamed: Option<Response<Body>>,
    how: &'static str,
    note: &Note,
) -> Result<Response<Body>, GatewayError> {
    match outcome {
        Outcome::Answer(stored) => Ok(marked(answer(&stored), how, Some(&stored), note)),
        Outcome::Failed(e) => {
            note.set(|f| f.cache = Some(how));
            Err(e)
        }
        Outcome::Unshared => match streamed {
            Some(resp) => Ok(marked(resp, "miss", None, note)),
            None => Err(GatewayError::UpstreamError("the shared read's answer was lost".into())),
        },
    }
}

fn answer(stored: &Stored) -> Response<Body> {
    let mut resp = Response::new(body::full(stored.body.clone()));
    *resp.status_mut() = stored.status;
    *resp.headers_mut() = stored.headers.clone();
    resp
}

/// Marks an answer with `X-Cache` (and `Age` when it comes from a stored or shared read) and
/// notes it for the access log.
fn marked(mut resp: Response<Body>, how: &'static str, stored: Option<&Stored>, note: &Note) -> Response<Body> {
    resp.headers_mut().insert(X_CACHE.clone(), HeaderValue::from_static(how));
    if let Some(stored) = stored {
        let age = stored.at.elapsed().as_secs();
        resp.headers_mut().insert(header::AGE, HeaderValue::from(age));
    }
    note.set(|f| f.cache = Some(how));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    fn resp(status: u16, pairs: &[(&'static str, &'static str)]) -> Response<Body> {
        let mut r = Response::new(body::empty());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        *r.headers_mut() = headers(pairs);
        r
    }

    /// Only a plain 200 is stored; Palette's no-store, private, cookies and odd Vary bypass.
    #[test]
    fn what_is_stored() {
        assert!(storable(&resp(200, &[("cache-control", "max-age=5")])));
        assert!(storable(&resp(200, &[("vary", "Accept-Encoding")])));
        assert!(!storable(&resp(404, &[])));
        assert!(!storable(&resp(200, &[("cache-control", "public, No-Store")])));
        assert!(!storable(&resp(200, &[("cache-control", "private=\"x\"")])));
        assert!(!storable(&resp(200, &[("set-cookie", "a=b")])));
        assert!(!storable(&resp(200, &[("vary", "Authorization")])));
        let mut r = resp(200, &[]);
        r.extensions_mut().insert(UpstreamSetCookie);
        assert!(!storable(&r), "a cookie hygiene removed still counts");
        assert!(asks_fresh(&headers(&[("cache-control", "no-cache")])));
        assert!(!asks_fresh(&headers(&[("cache-control", "max-age=0")])));
        assert!(has_body(&headers(&[("content-length", "3")])));
        assert!(!has_body(&headers(&[("content-length", "0")])));
    }

    /// A shared 429 names the waiting client, not the one whose read it was.
    #[test]
    fn shared_failures_name_the_waiter() {
        let e = GatewayError::RateLimited {
            client: "leader".into(),
            limit: "upstream",
            rate: "10/s".into(),
            retry_after: 1,
        };
        assert!(matches!(for_waiter(e, "waiter"), GatewayError::RateLimited { client, .. } if client == "waiter"));
    }

    /// A body past the bound is never buffered whole: it comes back intact as a stream.
    #[tokio::test]
    async fn bounded_read_keeps_larger_bodies_whole() {
        let chunks: Vec<Result<http_body::Frame<Bytes>, body::BoxError>> =
            (0..4).map(|i| Ok(http_body::Frame::data(Bytes::from(vec![i as u8; 100])))).collect();
        let big = body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(chunks)));
        let Ok(Bounded::Larger(rest)) = read_bounded(big, 150).await else { panic!("not larger") };
        let all = rest.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 400);
        assert!(all[..100].iter().all(|&b| b == 0) && all[300..].iter().all(|&b| b == 3));
        let Ok(Bounded::Whole(b)) = read_bounded(body::full("abc"), 3).await else { panic!("not whole") };
        assert_eq!(&b[..], b"abc");
    }
}
