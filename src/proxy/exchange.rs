//! The exchange with Palette: the credential swap, the upstream budget wait, the send, the
//! replay after a refused token and the paced retry after Palette's 429, then the response
//! hygiene (hop-by-hop headers, `Set-Cookie`, trailers, secrets scrubbed from every answer's
//! headers and from decoded error bodies).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use rand::Rng as _;

use crate::body::{self, Body};
use crate::config::ClientId;
use crate::credentials::UpstreamCredential;
use crate::error::GatewayError;
use crate::limit::retry_after_secs;
use crate::limit::upstream::Bucket;
use crate::metrics::Metrics;
use crate::proxy::request_log::Note;
use crate::proxy::{auth, hygiene, Runtime, REPLAY_LIMIT};
use crate::upstream::UpstreamFailure;

/// One request's trip upstream, with its retries.
pub(crate) struct Exchange<'a> {
    pub(crate) stats: &'a body::BodyStats,
    pub(crate) rt: &'a Runtime,
    pub(crate) metrics: &'a Metrics,
    pub(crate) head: &'a http::request::Parts,
    pub(crate) client_idx: ClientId,
    pub(crate) client_name: &'a str,
    pub(crate) bucket: Option<&'a Arc<Bucket>>,
    pub(crate) rid: &'a str,
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
    pub(crate) async fn run(
        &self,
        credential: &UpstreamCredential,
        body: Body,
        note: &Note,
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
            let resp = self.authorized(credential, &mut sends, &mut secrets, deadline, note).await?;
            if resp.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(self.finish(resp, &secrets).await);
            }
            match self.after_429(&resp, idempotent && sends.can_resend(), retries, deadline) {
                Some(wait) => {
                    drop(resp);
                    retries += 1;
                    self.metrics.upstream_retries.with_label_values(&[self.prefix(), "429"]).inc();
                    tokio::time::sleep(wait).await;
                    note.set(|f| f.wait_ms += wait.as_secs_f64() * 1000.0);
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
        note: &Note,
    ) -> Result<Response<Body>, GatewayError> {
        let manager = match credential {
            UpstreamCredential::ApiKey { header, .. } => {
                return self.send_once(sends, &auth::API_KEY, header.clone(), deadline, note).await;
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
        let resp = self.send_once(sends, &header::AUTHORIZATION, token.header.clone(), deadline, note).await?;
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
        self.send_once(sends, &header::AUTHORIZATION, fresh.header.clone(), deadline, note).await
    }

    /// Takes budget and sends the request once with `name: value` as its credential.
    async fn send_once(
        &self,
        sends: &mut Sends,
        name: &http::header::HeaderName,
        value: HeaderValue,
        deadline: tokio::time::Instant,
        note: &Note,
    ) -> Result<Response<Body>, GatewayError> {
        let waited = self.take_budget(deadline).await?;
        note.set(|f| f.wait_ms += waited);
        // Callers check `can_resend` before a second send, so a body is always there.
        let body = sends.next().unwrap_or_else(body::empty);
        sends.count += 1;
        let sent = Instant::now();
        let resp = self.send(build(self.head, name, value, body)).await;
        let took = sent.elapsed().as_secs_f64() * 1000.0;
        note.set(|f| f.upstream_ms += took);
        let resp = resp?;
        let status = resp.status().as_u16();
        note.set(|f| f.upstream_status = Some(status));
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
        let mut resp = hygiene::scrub_error(resp, &exposed, self.rid).await;
        hygiene::response_headers(resp.headers_mut());
        hygiene::redact_headers(resp.headers_mut(), &exposed);
        resp.map(hygiene::drop_trailers)
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
