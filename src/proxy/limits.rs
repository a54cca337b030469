//! The client limits step: the gateway's own overload guard (in-flight requests) and each
//! client's rate limits, run right after authentication (they need the client) and before
//! policy, so a client hammering forbidden paths is throttled too.

use std::sync::{Arc, Mutex};

use crate::cluster::{LimitKey, LimitsAnswer};
use crate::config::{Client, ClientId};
use crate::error::GatewayError;
use crate::limit::{retry_after_secs, RateHeaders, Refusal, SharedLimits};
use crate::metrics::Metrics;
use crate::proxy::request_log::Note;
use crate::proxy::Runtime;

/// Over the in-flight limit (this request included): 503 at once, before any work, so
/// overload never snowballs.
pub(crate) fn check_inflight(rt: &Runtime, metrics: &Metrics) -> Result<(), GatewayError> {
    let max_inflight = rt.config.server.limits.max_inflight_requests;
    if usize::try_from(metrics.inflight.get()).unwrap_or(0) > max_inflight {
        return Err(GatewayError::Overloaded(max_inflight));
    }
    Ok(())
}

/// The client's rate limits (across every replica with `[cluster]`): its rate headers go to the
/// note either way; over a limit, 429 naming it with `Retry-After`. With `[cluster]` while
/// Redis answers, this checks the limits on this replica at their full rate, and what is still
/// to be taken in Redis comes back as [`PendingLimits`].
pub(crate) fn check(
    rt: &Arc<Runtime>,
    metrics: &Arc<Metrics>,
    id: ClientId,
    client: &Client,
    note: &Note,
) -> Result<PendingLimits, GatewayError> {
    match rt.limits.check_in(rt.cluster.as_ref(), id, &client.name) {
        Ok((headers, shared)) => {
            note.set(|f| f.rate = headers);
            let pending = shared.map(|shared| Pending {
                shared,
                rt: rt.clone(),
                metrics: metrics.clone(),
                client: client.name.clone(),
            });
            Ok(PendingLimits(pending.map(|p| Arc::new(Mutex::new(Some(p))))))
        }
        Err(refusal) => Err(refused(metrics, &client.name, refusal, note)),
    }
}

fn refused(metrics: &Metrics, client: &str, refusal: Refusal, note: &Note) -> GatewayError {
    note.set(|f| f.rate = refusal.headers);
    metrics.rate_limited.with_label_values(&[client, refusal.kind.label()]).inc();
    GatewayError::RateLimited {
        client: client.to_string(),
        limit: refusal.kind.label(),
        rate: format!("{}/s, burst {}", refusal.rate.per_second, refusal.rate.burst),
        retry_after: retry_after_secs(refusal.retry_after),
    }
}

/// A request's client limits still to be taken across the replicas, taken at most once and
/// in one Redis round trip: by the upstream budget together with the request's slot
/// ([`Pending::conclude`]), or on their own for a request answered without a slot
/// ([`Pending::settle`]: a cached answer, a path no budget prefix covers). A request refused
/// before either takes nothing in Redis. Empty without `[cluster]`, or while Redis is
/// unavailable (the local share was taken at step 5). Empty, it holds no allocation (issue 14).
#[derive(Clone, Default)]
pub(crate) struct PendingLimits(Option<Arc<Mutex<Option<Pending>>>>);

impl PendingLimits {
    /// No shared limits were ever pending (no `[cluster]`, or Redis was down at step 5).
    pub(crate) fn never(&self) -> bool {
        self.0.is_none()
    }

    /// The limits, if nothing took them yet.
    pub(crate) fn take(&self) -> Option<Pending> {
        self.0.as_ref()?.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// See [`PendingLimits`].
pub(crate) struct Pending {
    shared: SharedLimits,
    rt: Arc<Runtime>,
    metrics: Arc<Metrics>,
    client: Arc<str>,
}

impl Pending {
    /// The keys to send with the budget slot.
    pub(crate) fn keys(&self) -> Vec<LimitKey> {
        self.shared.keys().to_vec()
    }

    /// What Redis said about the limits with the request's budget slot; `None`: the slot came
    /// from the local share (Redis went away meanwhile), so the limits are taken there too.
    pub(crate) fn conclude(self, answer: Option<&LimitsAnswer>, note: &Note) -> Result<(), GatewayError> {
        let result = match (answer, self.rt.cluster.as_ref()) {
            (Some(answer), _) => self.shared.answer(answer),
            (None, Some(cluster)) => self.shared.local(&self.rt.limits, cluster),
            (None, None) => return Ok(()),
        };
        self.record(result, note)
    }

    /// Takes the limits in Redis on their own: one round trip.
    pub(crate) async fn settle(self, note: &Note) -> Result<(), GatewayError> {
        let Some(cluster) = self.rt.cluster.as_ref() else { return Ok(()) };
        // Boxed: the Redis round trip's state would otherwise sit in every request's future.
        let result = Box::pin(self.shared.settle(&self.rt.limits, cluster)).await;
        self.record(result, note)
    }

    fn record(&self, result: Result<Option<RateHeaders>, Refusal>, note: &Note) -> Result<(), GatewayError> {
        match result {
            Ok(headers) => {
                note.set(|f| f.rate = headers);
                Ok(())
            }
            Err(refusal) => Err(refused(&self.metrics, &self.client, refusal, note)),
        }
    }
}
