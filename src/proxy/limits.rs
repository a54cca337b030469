//! The client limits step: the gateway's own overload guard (in-flight requests) and each
//! client's rate limits, run right after authentication (they need the client) and before
//! policy, so a client hammering forbidden paths is throttled too.

use crate::config::{Client, ClientId};
use crate::error::GatewayError;
use crate::limit::retry_after_secs;
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
/// note either way; over a limit, 429 naming it with `Retry-After`.
pub(crate) async fn check(
    rt: &Runtime,
    metrics: &Metrics,
    id: ClientId,
    client: &Client,
    note: &Note,
) -> Result<(), GatewayError> {
    match rt.limits.check_in(rt.cluster.as_ref(), id, &client.name).await {
        Ok(headers) => {
            note.set(|f| f.rate = headers);
            Ok(())
        }
        Err(refusal) => {
            note.set(|f| f.rate = refusal.headers);
            metrics.rate_limited.with_label_values(&[&client.name, refusal.kind.label()]).inc();
            Err(GatewayError::RateLimited {
                client: client.name.to_string(),
                limit: refusal.kind.label(),
                rate: format!("{}/s, burst {}", refusal.rate.per_second, refusal.rate.burst),
                retry_after: retry_after_secs(refusal.retry_after),
            })
        }
    }
}
