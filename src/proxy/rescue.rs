//! The error rescue: the one place a [`GatewayError`] from any step becomes the gateway's own
//! Palette-shaped answer (`error.rs` shapes it), counted as an authentication failure when it is
//! one. Inside the request log, so refused requests are logged and counted like any other.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};

use crate::body::Body;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::proxy::request_id::RequestId;
use crate::proxy::request_log::Handles;

/// Turns the steps' errors into answers.
#[derive(Clone)]
pub(crate) struct RescueLayer {
    metrics: Arc<Metrics>,
}

impl RescueLayer {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        RescueLayer { metrics }
    }
}

impl<S> tower::Layer<S> for RescueLayer {
    type Service = Rescue<S>;

    fn layer(&self, inner: S) -> Rescue<S> {
        Rescue { inner, metrics: self.metrics.clone() }
    }
}

/// See [`RescueLayer`].
#[derive(Clone)]
pub(crate) struct Rescue<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> tower::Service<Request<Body>> for Rescue<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = GatewayError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The steps are always ready (they hold no capacity of their own).
        match self.inner.poll_ready(cx) {
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let id = req.extensions().get::<Handles>().map(|h| h.id.clone());
        RescueFuture { inner: self.inner.call(req), id, metrics: self.metrics.clone() }
    }
}

pin_project_lite::pin_project! {
    /// The steps' answer, or their error shaped as one.
    pub(crate) struct RescueFuture<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
        metrics: Arc<Metrics>,
    }
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, GatewayError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let e = match std::task::ready!(this.inner.poll(cx)) {
            Ok(resp) => return Poll::Ready(Ok(resp)),
            Err(e) => e,
        };
        if let Some(reason) = e.auth_failure_reason() {
            this.metrics.auth_failures.with_label_values(&[reason]).inc();
        }
        let id = this.id.as_ref().map_or("", RequestId::as_str);
        let (status, code) = e.status_and_code();
        if status.is_server_error() {
            // The gateway's own 5xx (Palette unreachable or too slow, no token, overloaded):
            // an operator sees why at the default level, not only `upstream_status: 0`.
            tracing::warn!(request_id = %id, status = status.as_u16(), code, reason = %e, "answered with a server error");
        } else {
            tracing::debug!(request_id = %id, error = %e, "request refused");
        }
        Poll::Ready(Ok(e.into_response(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::{Layer as _, ServiceExt as _};

    /// What the request log would have handed the steps, with this request id.
    fn handles(id: &'static str) -> Handles {
        Handles {
            id: RequestId(http::HeaderValue::from_static(id)),
            note: Default::default(),
            bytes_in: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_step_error_becomes_a_palette_answer() {
        let metrics = Arc::new(Metrics::new());
        let inner = tower::service_fn(|_req: Request<Body>| async {
            Err::<Response<Body>, _>(GatewayError::MissingCredential)
        });
        let svc = RescueLayer::new(metrics.clone()).layer(inner);
        let mut req = Request::get("/v1/x").body(crate::body::empty()).unwrap();
        req.extensions_mut().insert(handles("rid-7"));
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["ref"], "rid-7");
        assert!(body["code"].is_string() && body["message"].is_string(), "{body}");
        let reason = GatewayError::MissingCredential.auth_failure_reason().unwrap();
        assert_eq!(metrics.auth_failures.with_label_values(&[reason]).get(), 1);
    }

    /// Every 5xx the gateway makes is logged at warn with its request id and reason; a 4xx
    /// refusal stays at debug.
    #[test]
    fn server_errors_are_logged_at_warn_with_their_reason() {
        let answer = |make: fn() -> GatewayError| {
            let metrics = Arc::new(Metrics::new());
            let inner = tower::service_fn(move |_req: Request<Body>| async move { Err::<Response<Body>, _>(make()) });
            let svc = RescueLayer::new(metrics).layer(inner);
            let mut req = Request::get("/v1/x").body(crate::body::empty()).unwrap();
            req.extensions_mut().insert(handles("rid-5xx"));
            let fut = svc.oneshot(req);
            futures_util::FutureExt::now_or_never(fut).unwrap().unwrap().status()
        };
        let (status, events) = crate::proxy::request_log::tests::events(|| {
            answer(|| GatewayError::UpstreamUnavailable("connection refused (127.0.0.1:1)".into()))
        });
        assert_eq!(status, 502);
        let warned: Vec<_> = events.iter().filter(|e| e["level"] == "WARN").collect();
        assert_eq!(warned.len(), 1, "{events:?}");
        assert_eq!(warned[0]["request_id"], "rid-5xx");
        assert_eq!(warned[0]["status"], 502);
        assert_eq!(warned[0]["code"], "UpstreamUnavailable");
        assert!(warned[0]["reason"].as_str().unwrap().contains("connection refused"), "{events:?}");
        let (status, events) = crate::proxy::request_log::tests::events(|| answer(|| GatewayError::MissingCredential));
        assert_eq!(status, 401);
        assert!(events.iter().all(|e| e["level"] != "WARN"), "{events:?}");
    }
}
