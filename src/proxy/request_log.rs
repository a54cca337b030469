//! The request log: one [`RequestLog`] per request, created when it arrives, whose drop writes
//! its access event (and its audit event, for a mutation), counts it in the request metrics and
//! gives back its in-flight slot. A request whose answer never came (the client went away, the
//! handler's future was dropped) is recorded as status 499, as nginx does, so a mutation Palette
//! may have received is never lost from the audit log. An answered request's log moves into the
//! response body and is written when the body ends, with the bytes sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::HeaderName;

use http::{HeaderMap, HeaderValue, Method, Request, Response};

use crate::body::{self, Body, BodyStats};
use crate::limit::RateHeaders;
use crate::metrics::{method_label, same, use_recent, Metrics, Recent};
use crate::proxy::hygiene::X_REQUEST_ID;
use crate::proxy::request_id::{self, RequestId};
use crate::proxy::ConnInfo;

/// Status recorded for a request its client abandoned before the answer.
pub(crate) const CLIENT_CLOSED: u16 = 499;

/// The label set of a request's count and duration (see [`Recent`]).
struct CountKey {
    metrics: Arc<Metrics>,
    client: Option<Arc<str>>,
    route: Option<Arc<str>>,
    method: &'static str,
    status: u16,
}

type Counted = (prometheus::IntCounter, prometheus::Histogram);

thread_local! {
    /// The request metrics of the label sets this thread counted last: a keep-alive load has a
    /// few (client, route, status) sets, each found again without hashing its labels.
    static RECENT: std::cell::RefCell<Recent<CountKey, Counted, 8>> = const { std::cell::RefCell::new(Recent::new()) };
}

/// What the steps learned about a request, for its log line, metrics and rate headers.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    pub(crate) client: Option<Arc<str>>,
    pub(crate) route: Option<Arc<str>>,
    pub(crate) rate: Option<RateHeaders>,
    /// The `ProjectUid` sent upstream, as its header value (shared, not copied).
    pub(crate) project: Option<HeaderValue>,
    /// The path forwarded to Palette (after a route's strip; the query dropped, as for `path`).
    pub(crate) upstream_path: Option<crate::proxy::path::CheckedPath>,
    pub(crate) upstream_status: Option<u16>,
    pub(crate) upstream_ms: f64,
    pub(crate) wait_ms: f64,
    /// Sends to Palette so far (the exchange caps them at `MAX_ATTEMPTS` across its layers).
    pub(crate) sends: u32,
    /// Every credential the exchange sent, to scrub from the answer.
    pub(crate) secrets: Vec<crate::config::Secret>,
    /// How the response cache answered (`hit`, `miss`, `coalesced`; `None`: not a caching route).
    pub(crate) cache: Option<&'static str>,
}

/// What the request log hands the steps, as one request extension (one map entry, not three:
/// issue 14): the request's id, its [`Note`] and its body counters.
#[derive(Clone)]
pub(crate) struct Handles {
    pub(crate) id: RequestId,
    pub(crate) note: Note,
    pub(crate) bytes_in: Arc<BodyStats>,
}

/// This request's [`Facts`], which the steps write to (through [`Handles`]). One per request: the
/// lock is never contended and never held across an await.
#[derive(Debug, Clone, Default)]
pub(crate) struct Note(Arc<Mutex<Facts>>);

impl Note {
    /// Records something a step learned.
    pub(crate) fn set(&self, f: impl FnOnce(&mut Facts)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Sends to Palette so far.
    pub(crate) fn sends(&self) -> u32 {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).sends
    }

    /// The credentials sent so far.
    pub(crate) fn secrets(&self) -> Vec<crate::config::Secret> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).secrets.clone()
    }

    /// Runs `f` over the credentials sent so far, without copying them (no await inside).
    pub(crate) fn with_secrets<R>(&self, f: impl FnOnce(&[crate::config::Secret]) -> R) -> R {
        f(&self.0.lock().unwrap_or_else(PoisonError::into_inner).secrets)
    }

    fn take(&self) -> Facts {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn rate(&self) -> Option<RateHeaders> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).rate
    }
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static AUDIT_UID: HeaderName = HeaderName::from_static("audituid");

/// A header value fit for a log line: visible ASCII, bounded (`""` when it is not).
fn loggable(value: Option<&HeaderValue>) -> &str {
    let Some(v) = value.and_then(|v| v.to_str().ok()) else {
        return "";
    };
    if v.len() <= 512 && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        v
    } else {
        ""
    }
}

/// Longest `user_agent` a log line carries (in characters, before escaping).
const MAX_USER_AGENT: usize = 256;

/// The client's `User-Agent` fit for a log line: at most [`MAX_USER_AGENT`] characters, control
/// characters escaped (`\n`, `\u{1b}`; a non-UTF-8 byte as `\u{fffd}`), so a client cannot forge
/// or colour log lines. Only this header is taken: it carries no credential.
fn user_agent(value: Option<&HeaderValue>) -> std::borrow::Cow<'_, str> {
    let Some(v) = value else {
        return "".into();
    };
    // Nearly every agent is short visible ASCII: taken as it is, without a copy. `to_str` lets
    // a tab through, which is escaped below.
    if let Ok(text) = v.to_str() {
        if text.len() <= MAX_USER_AGENT && !text.as_bytes().contains(&b'\t') {
            return text.into();
        }
    }
    let text = String::from_utf8_lossy(v.as_bytes());
    let mut out = String::new();
    for c in text.chars().take(MAX_USER_AGENT) {
        if c.is_control() || c == '\u{fffd}' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(MAX_USER_AGENT).is_some() {
        out.push('…');
    }
    out.into()
}

/// Milliseconds as a log field: 3 decimals (a microsecond), not 17 digits of float noise.
fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// One request's access and audit record, from arrival to the end of its answer.
///
/// Which lines it writes is decided when the request arrives (the log filter's answer for the
/// access and audit targets). With neither, what only the lines need is not gathered at all
/// (issue 14). With one, it is copied: a header value or the URI kept as hyper gave it would be
/// a slice of the connection's read buffer, holding it from reuse while the answer streams.
pub(crate) struct RequestLog {
    metrics: Arc<Metrics>,
    started: Instant,
    request_id: RequestId,
    method: Method,
    /// The access line is written.
    access: bool,
    /// The audit line is written (a mutation, with the audit target on).
    audit: bool,
    path: String,
    traceparent: String,
    tracestate: String,
    /// The connection's peer address, as text, when the request is logged (`None` when it is
    /// not, or the listener did not tag the request).
    peer: Option<Arc<str>>,
    /// The client's `User-Agent` header when the request is logged, made fit for the line when
    /// it is written ([`user_agent`]).
    user_agent: Option<HeaderValue>,
    bytes_in: Arc<BodyStats>,
    note: Note,
    /// The answer's status, once there is one (`None`: recorded as [`CLIENT_CLOSED`]).
    status: Option<u16>,
    audit_uid: String,
    bytes_out: u64,
    complete: bool,
}

impl RequestLog {
    /// A request arrives: it takes an in-flight slot until its log is written.
    pub(crate) fn arrived(metrics: &Arc<Metrics>, req: &Request<Body>, request_id: RequestId) -> Self {
        metrics.inflight.inc();
        let mutation = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
        let access = tracing::enabled!(target: "palette_gateway::access", tracing::Level::INFO);
        let audit = mutation && tracing::enabled!(target: "palette_gateway::audit", tracing::Level::INFO);
        let logged = access || audit;
        let headers = req.headers();
        let text = |name: &HeaderName| if logged { loggable(headers.get(name)).to_string() } else { String::new() };
        RequestLog {
            metrics: metrics.clone(),
            started: Instant::now(),
            request_id,
            method: req.method().clone(),
            access,
            audit,
            path: if logged { req.uri().path().to_string() } else { String::new() },
            traceparent: text(&TRACEPARENT),
            tracestate: text(&TRACESTATE),
            peer: if logged { req.extensions().get::<ConnInfo>().map(|c| c.peer_text.clone()) } else { None },
            user_agent: if logged { headers.get(http::header::USER_AGENT).cloned() } else { None },
            bytes_in: Arc::default(),
            note: Note::default(),
            status: None,
            audit_uid: String::new(),
            bytes_out: 0,
            complete: false,
        }
    }

    /// The answer's head is ready: counts the request (its duration up to the head, as before)
    /// and remembers what its log line says.
    fn answered(&mut self, status: u16, headers: &HeaderMap) {
        self.status = Some(status);
        if self.audit {
            self.audit_uid = loggable(headers.get(&AUDIT_UID)).to_string();
        }
        self.count(status);
    }

    fn count(&self, status: u16) {
        let facts = self.note.0.lock().unwrap_or_else(PoisonError::into_inner);
        let m = method_label(&self.method);
        let (client, route) = (facts.client.as_ref(), facts.route.as_ref());
        let took = self.started.elapsed().as_secs_f64();
        use_recent(
            &RECENT,
            |k| {
                Arc::ptr_eq(&k.metrics, &self.metrics)
                    && k.status == status
                    && k.method == m
                    && same(k.client.as_ref(), client)
                    && same(k.route.as_ref(), route)
            },
            || {
                let (c, r) = (client.map_or("none", |c| c), route.map_or("none", |r| r));
                let mut code = itoa::Buffer::new();
                let key = CountKey {
                    metrics: self.metrics.clone(),
                    client: client.cloned(),
                    route: route.cloned(),
                    method: m,
                    status,
                };
                let requests = self.metrics.requests.with_label_values(&[c, r, m, code.format(status)]);
                (key, (requests, self.metrics.request_duration.with_label_values(&[c, r, m])))
            },
            |(requests, duration)| {
                requests.inc();
                duration.observe(took);
            },
        );
    }

    fn write(&mut self) {
        let status = match self.status {
            Some(s) => s,
            None => {
                self.count(CLIENT_CLOSED);
                CLIENT_CLOSED
            }
        };
        if !self.access && !self.audit {
            return;
        }
        let facts = self.note.take();
        let client = facts.client.as_deref().unwrap_or("none");
        let route = facts.route.as_deref().unwrap_or("none");
        let project = facts.project.as_ref().and_then(|p| p.to_str().ok()).unwrap_or("");
        let upstream_path = facts.upstream_path.as_ref().map_or("", |p| p.as_str());
        let user_agent = user_agent(self.user_agent.as_ref());
        let (path, traceparent, user_agent) = (self.path.as_str(), self.traceparent.as_str(), &*user_agent);
        let client_addr = self.peer.as_deref().unwrap_or_default();
        let duration_ms = round_ms(self.started.elapsed().as_secs_f64() * 1000.0);
        // Text fields are given as `&str`, not `%` (Display): the JSON writer takes a `&str` as
        // it is, where a Display value is first formatted into a new String (issue 14).
        if self.access {
            tracing::info!(
                target: "palette_gateway::access",
                request_id = self.request_id.as_str(),
                client,
                route,
                method = self.method.as_str(),
                path,
                client_addr = client_addr,
                user_agent,
                upstream_path,
                project,
                status,
                upstream_status = facts.upstream_status.unwrap_or(0),
                bytes_in = self.bytes_in.bytes(),
                bytes_out = self.bytes_out,
                complete = self.complete,
                duration_ms,
                upstream_ms = round_ms(facts.upstream_ms),
                rate_limit_wait_ms = round_ms(facts.wait_ms),
                cache = facts.cache.unwrap_or(""),
                traceparent,
                tracestate = self.tracestate.as_str(),
            );
        }
        if self.audit {
            let outcome = if (200..300).contains(&status) { "success" } else { "failure" };
            tracing::info!(
                target: "palette_gateway::audit",
                request_id = self.request_id.as_str(),
                client,
                method = self.method.as_str(),
                path,
                client_addr = client_addr,
                user_agent,
                upstream_path,
                project,
                status,
                outcome,
                audit_uid = self.audit_uid.as_str(),
                traceparent,
            );
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.write();
        self.metrics.inflight.dec();
    }
}

/// Wraps the chain in the request log (outermost but for nothing: refused requests count too).
#[derive(Clone)]
pub(crate) struct RequestLogLayer {
    metrics: Arc<Metrics>,
}

impl RequestLogLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        RequestLogLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RequestLogLayer {
    type Service = Logged<S>;

    fn layer(&self, inner: S) -> Logged<S> {
        Logged { inner, metrics: self.metrics.clone() }
    }
}

/// Gives each request its id and its [`RequestLog`] (with the [`Note`] and body counters the
/// steps fill in, as request extensions), and finishes every answer: `X-Request-Id`, the
/// client's rate headers, no body on `HEAD`.
#[derive(Clone)]
pub(crate) struct Logged<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<Request<Body>> for Logged<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = LoggedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let id = request_id::assign(req.headers());
        let log = RequestLog::arrived(&self.metrics, &req, id.clone());
        req.extensions_mut().insert(Handles { id, note: log.note.clone(), bytes_in: log.bytes_in.clone() });
        LoggedFuture { inner: self.inner.call(req), log: Some(log) }
    }
}

pin_project_lite::pin_project! {
    /// The answer on its way; dropping it before the answer writes the log as 499.
    pub(crate) struct LoggedFuture<F> {
        #[pin]
        inner: F,
        log: Option<RequestLog>,
    }
}

impl<F> Future for LoggedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        let Some(mut log) = this.log.take() else {
            return Poll::Ready(Ok(resp));
        };
        let rate = log.note.rate();
        // Room for what the gateway adds, made once: the answer's map was sized for Palette's
        // headers, and growing it by one insert and again by another rehashes it twice.
        // (`try_`: a map already at its size limit grows no further, and the inserts decide.)
        let _ = resp.headers_mut().try_reserve(1 + if rate.is_some() { RateHeaders::COUNT } else { 0 });
        resp.headers_mut().insert(X_REQUEST_ID.clone(), log.request_id.0.clone());
        if let Some(rate) = rate {
            rate.apply(resp.headers_mut());
        }
        // No body on any answer to HEAD, the gateway's own errors included.
        let resp = crate::proxy::target::strip_head_body(&log.method, resp);
        log.answered(resp.status().as_u16(), resp.headers());
        Poll::Ready(Ok(resp.map(move |b| {
            body::Tracked::new(b, move |bytes_out, complete| {
                log.bytes_out = bytes_out;
                log.complete = complete;
                drop(log);
            })
            .into_body()
        })))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tower::{Layer as _, Service as _, ServiceExt as _};

    /// Captures the JSON events written while `f` runs.
    pub(crate) fn events<T>(f: impl FnOnce() -> T) -> (T, Vec<serde_json::Value>) {
        events_with("info", f)
    }

    /// Captures the JSON events a log filtered by `filter` writes while `f` runs.
    fn events_with<T>(filter: &str, f: impl FnOnce() -> T) -> (T, Vec<serde_json::Value>) {
        let buf = crate::json_log::tests::Sink::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .event_format(crate::json_log::JsonLines::default())
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || sink.clone())
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        (out, text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
    }

    /// A hostile `User-Agent` cannot forge a log line or colour a terminal, nor grow a line
    /// without bound.
    #[test]
    fn user_agents_are_escaped_and_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(user_agent(h.get(http::header::USER_AGENT)), "");
        // hyper admits a tab, and C1 controls in UTF-8 (U+009B is a terminal's CSI).
        h.insert(http::header::USER_AGENT, http::HeaderValue::from_bytes(b"curl/8\t\xc2\x9b31mred\xff").unwrap());
        let ua = user_agent(h.get(http::header::USER_AGENT));
        assert!(!ua.chars().any(char::is_control), "{ua:?}");
        assert_eq!(ua, "curl/8\\t\\u{9b}31mred\\u{fffd}");
        h.insert(http::header::USER_AGENT, http::HeaderValue::from_str(&"a".repeat(5000)).unwrap());
        assert_eq!(user_agent(h.get(http::header::USER_AGENT)).chars().count(), MAX_USER_AGENT + 1);
        // The plain-ASCII way: whole up to the limit, a tab still escaped, one more cut.
        for (sent, logged) in [
            ("curl/8.5.0".to_string(), "curl/8.5.0".to_string()),
            ("a\tb".to_string(), "a\\tb".to_string()),
            ("b".repeat(MAX_USER_AGENT), "b".repeat(MAX_USER_AGENT)),
            ("c".repeat(MAX_USER_AGENT + 1), "c".repeat(MAX_USER_AGENT) + "…"),
        ] {
            h.insert(http::header::USER_AGENT, http::HeaderValue::from_str(&sent).unwrap());
            assert_eq!(user_agent(h.get(http::header::USER_AGENT)), logged.as_str());
        }
    }

    /// With the access log filtered off, a mutation is still audited, and every request is
    /// still counted; nothing else is written.
    #[tokio::test]
    async fn the_access_log_off_still_audits_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let answer = |req: Request<Body>| async move {
            req.extensions().get::<Handles>().unwrap().note.set(|f| f.client = Some(Arc::from("ci")));
            Ok::<_, Infallible>(Response::builder().status(201).body(body::empty()).unwrap())
        };
        let svc = RequestLogLayer::new(metrics.clone()).layer(tower::service_fn(answer));
        let send = |method: Method| {
            let req = Request::builder()
                .method(method)
                .uri("/v1/clusters")
                .header("user-agent", "terraform/1.9")
                .body(body::empty())
                .unwrap();
            let resp = futures_util::FutureExt::now_or_never(svc.clone().oneshot(req)).unwrap().unwrap();
            drop(futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(resp.into_body())));
        };
        let ((), events) = events_with("info,palette_gateway::access=off", || {
            send(Method::GET);
            send(Method::POST);
        });
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["target"], "palette_gateway::audit");
        assert_eq!(
            (events[0]["method"].as_str(), events[0]["user_agent"].as_str()),
            (Some("POST"), Some("terraform/1.9"))
        );
        assert_eq!(m_count(&metrics, "GET") + m_count(&metrics, "POST"), 2);
        let ((), events) = events_with("warn", || send(Method::POST));
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(m_count(&metrics, "POST"), 2);
        assert_eq!(metrics.inflight.get(), 0);
    }

    fn m_count(m: &Metrics, method: &str) -> u64 {
        m.requests.with_label_values(&["ci", "none", method, "201"]).get()
    }

    /// Durations read as milliseconds with at most 3 decimals.
    #[test]
    fn durations_are_rounded_to_microseconds() {
        assert_eq!(round_ms(0.13589400000000001), 0.136);
        assert_eq!(serde_json::json!(round_ms(12.3456789)).to_string(), "12.346");
        assert_eq!(round_ms(0.0), 0.0);
    }

    fn code(m: &Metrics, client: &str, status: &str) -> u64 {
        m.requests.with_label_values(&[client, "none", "POST", status]).get()
    }

    #[test]
    fn an_answer_that_never_came_is_logged_once_as_499() {
        let metrics = Arc::new(Metrics::new());
        let (_, events) = events(|| {
            let inner = tower::service_fn(|req: Request<Body>| async move {
                // The client is known, then the answer never comes.
                req.extensions().get::<Handles>().unwrap().note.set(|f| f.client = Some(Arc::from("ci")));
                std::future::pending::<Result<Response<Body>, Infallible>>().await
            });
            let mut svc = RequestLogLayer::new(metrics.clone()).layer(inner);
            let req = Request::post("/v1/clusters").body(body::empty()).unwrap();
            let mut fut = Box::pin(svc.call(req));
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            assert_eq!(metrics.inflight.get(), 1);
            drop(fut);
        });
        let access: Vec<_> = events.iter().filter(|e| e["target"] == "palette_gateway::access").collect();
        let audit: Vec<_> = events.iter().filter(|e| e["target"] == "palette_gateway::audit").collect();
        assert_eq!(access.len(), 1, "{events:?}");
        assert_eq!((access[0]["status"].as_u64(), access[0]["client"].as_str()), (Some(499), Some("ci")));
        assert_eq!(access[0]["complete"], false);
        assert_eq!((audit.len(), audit[0]["outcome"].as_str()), (1, Some("failure")));
        assert_eq!(code(&metrics, "ci", "499"), 1);
        assert_eq!(metrics.inflight.get(), 0);
    }

    #[tokio::test]
    async fn an_answer_is_logged_when_its_body_ends() {
        let metrics = Arc::new(Metrics::new());
        let inner = tower::service_fn(|req: Request<Body>| async move {
            req.extensions().get::<Handles>().unwrap().note.set(|f| f.client = Some(Arc::from("ci")));
            Ok::<_, Infallible>(Response::builder().status(201).body(body::full("made")).unwrap())
        });
        let svc = RequestLogLayer::new(metrics.clone()).layer(inner);
        let req = Request::post("/v1/clusters")
            .header("x-request-id", "rid-1")
            .header("user-agent", "curl/8")
            .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .body(body::empty())
            .unwrap();
        // The log decides when the request arrives which lines it writes: it arrives, and its
        // body ends, under the same log.
        let ((), events) = events(|| {
            let resp = futures_util::FutureExt::now_or_never(svc.oneshot(req)).unwrap().unwrap();
            assert_eq!(resp.headers()["x-request-id"], "rid-1");
            assert_eq!(code(&metrics, "ci", "201"), 1, "counted when the head is ready");
            assert_eq!(metrics.inflight.get(), 1, "the body still holds the slot");
            drop(futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(resp.into_body())));
        });
        let access: Vec<_> = events.iter().filter(|e| e["target"] == "palette_gateway::access").collect();
        assert_eq!(access.len(), 1, "{events:?}");
        assert_eq!((access[0]["status"].as_u64(), access[0]["bytes_out"].as_u64()), (Some(201), Some(4)));
        assert_eq!(access[0]["complete"], true);
        assert_eq!(
            (access[0]["path"].as_str(), access[0]["user_agent"].as_str()),
            (Some("/v1/clusters"), Some("curl/8"))
        );
        assert_eq!(access[0]["traceparent"], "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert_eq!(metrics.inflight.get(), 0);
    }
}
