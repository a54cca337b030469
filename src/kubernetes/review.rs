//! `token_review` mode: the API server decides (`POST /apis/authentication.k8s.io/v1/tokenreviews`
//! with the caller's token and our audiences, authenticated with the gateway's own token), so a
//! token of a deleted pod is refused as soon as a cached answer runs out. Answers are cached by
//! the token's SHA-256 in a bounded moka cache: a positive one until `min(cache_ttl, exp)`, a
//! negative one briefly; concurrent reviews of one token share one call (moka's
//! `try_get_with`), and a failed call is not cached.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{StatusCode, Uri};
use prometheus::{HistogramVec, IntCounterVec};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::api::{ApiClient, Unavailable};
use super::{unix_now, Identity, KubeError, Unverified};
use crate::config::KubernetesAuth;
use crate::metrics::Metrics;

/// How long a refusal is remembered: long enough that a client retrying a bad token does not
/// reach the API server each time, short enough that a token that becomes valid is not held up.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Most tokens remembered.
const CAPACITY: u64 = 10_000;
/// Most reviews in flight at once: a flood of distinct tokens cannot flood the API server.
const MAX_CONCURRENT: usize = 32;
/// The exp check before a review allows this much clock difference with the API server.
const SKEW_SECS: f64 = 30.0;
/// Refused tokens one address may send within [`REFUSAL_WINDOW`] before its unknown tokens are
/// refused without a review: distinct junk tokens (each a cache miss) from one address cannot
/// keep the API server, and the review slots every token caller shares, busy.
const MAX_REFUSALS: u32 = 20;
/// How long an address's refusals are remembered (from its first).
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// Most addresses whose refusals are remembered.
const REFUSAL_ADDRESSES: u64 = 10_000;

/// A cached review.
#[derive(Clone)]
enum Outcome {
    Ok { identity: Identity, ttl: Duration },
    Refused(Arc<str>),
}

/// Each answer lives as long as it says.
struct OutcomeExpiry;

// moka's trait names std's Instant; the gateway's own timers use tokio's clock.
#[allow(clippy::disallowed_types)]
impl moka::Expiry<[u8; 32], Outcome> for OutcomeExpiry {
    fn expire_after_create(&self, _: &[u8; 32], value: &Outcome, _: std::time::Instant) -> Option<Duration> {
        Some(match value {
            Outcome::Ok { ttl, .. } => *ttl,
            Outcome::Refused(_) => NEGATIVE_TTL,
        })
    }
}

pub(super) struct TokenReview {
    api: ApiClient,
    url: Uri,
    audiences: Vec<String>,
    cache_ttl: Duration,
    cache: moka::future::Cache<[u8; 32], Outcome>,
    permits: Semaphore,
    /// Refusals per caller address, each remembered for [`REFUSAL_WINDOW`].
    refusals: moka::sync::Cache<IpAddr, Arc<AtomicU32>>,
    latency: HistogramVec,
    cache_lookups: IntCounterVec,
}

impl TokenReview {
    pub(super) fn new(api: ApiClient, api_server: &Uri, cfg: &KubernetesAuth, metrics: &Metrics) -> Self {
        let base = api_server.to_string();
        let url = format!("{}/apis/authentication.k8s.io/v1/tokenreviews", base.trim_end_matches('/'));
        TokenReview {
            api,
            // Built from a URL validated at config load plus a fixed path.
            url: url.parse().unwrap_or_else(|_| api_server.clone()),
            audiences: cfg.audiences.clone(),
            cache_ttl: cfg.cache_ttl,
            cache: moka::future::Cache::builder().max_capacity(CAPACITY).expire_after(OutcomeExpiry).build(),
            permits: Semaphore::new(MAX_CONCURRENT),
            refusals: moka::sync::Cache::builder().max_capacity(REFUSAL_ADDRESSES).time_to_live(REFUSAL_WINDOW).build(),
            latency: metrics.kube_review_duration.clone(),
            cache_lookups: metrics.kube_review_cache.clone(),
        }
    }

    pub(super) async fn authenticate(&self, token: &str, peer: IpAddr) -> Result<Identity, KubeError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A token already reviewed is answered from the cache whoever sends it; an address that
        // sent too many refused tokens lately gets no new review until its window ends.
        let refused = self.refusals.get(&peer);
        if refused.as_ref().is_some_and(|n| n.load(Ordering::Relaxed) >= MAX_REFUSALS) && !self.cache.contains_key(&key)
        {
            self.cache_lookups.with_label_values(&["refused_unreviewed"]).inc();
            return Err(KubeError::Refused(format!(
                "too many refused tokens from this address; none is reviewed for up to {} s",
                REFUSAL_WINDOW.as_secs()
            )));
        }
        let reviewed = AtomicBool::new(false);
        let outcome = self
            .cache
            .try_get_with(key, async {
                reviewed.store(true, Ordering::Relaxed);
                self.review(token).await
            })
            .await
            .map_err(|e| KubeError::Unavailable(e.0.clone()))?;
        let label = if reviewed.load(Ordering::Relaxed) { "miss" } else { "hit" };
        self.cache_lookups.with_label_values(&[label]).inc();
        match outcome {
            Outcome::Ok { identity, .. } => Ok(identity),
            Outcome::Refused(why) => {
                let count = refused.unwrap_or_else(|| self.refusals.get_with(peer, Arc::default));
                count.fetch_add(1, Ordering::Relaxed);
                Err(KubeError::Refused(why.to_string()))
            }
        }
    }

    /// One review (or an early refusal); an error is not cached.
    async fn review(&self, token: &str) -> Result<Outcome, Unavailable> {
        let now = unix_now();
        let unverified = match Unverified::of(token) {
            Ok(u) => u,
            Err(e) => return Ok(Outcome::Refused(e.to_string().into())),
        };
        if let Err(e) = unverified.precheck(&self.audiences, now, SKEW_SECS) {
            return Ok(Outcome::Refused(e.to_string().into()));
        }
        let _permit = tokio::time::timeout(self.api.timeout(), self.permits.acquire())
            .await
            .map_err(|_| Unavailable("too many TokenReviews in flight".into()))?
            .map_err(|_| Unavailable("closed".into()))?;
        let started = tokio::time::Instant::now();
        let result = self.call(token).await;
        let label = match &result {
            Ok(Outcome::Ok { .. }) => "ok",
            Ok(Outcome::Refused(_)) => "refused",
            Err(_) => "error",
        };
        self.latency.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
        let mut outcome = result?;
        if let Outcome::Ok { ttl, .. } = &mut outcome {
            // Never past the token's own expiry.
            if let Some(exp) = unverified.exp {
                *ttl = (*ttl).min(Duration::from_secs_f64((exp - now).max(0.0)));
            }
        }
        Ok(outcome)
    }

    async fn call(&self, token: &str) -> Result<Outcome, Unavailable> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": { "token": token, "audiences": self.audiences },
        });
        let (status, answer) = self.api.post(&self.url, body.to_string().into_bytes()).await?;
        match status {
            StatusCode::OK | StatusCode::CREATED => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(Unavailable(format!(
                    "the API server refused the gateway's TokenReview ({status}): check its token_file and that its \
                     ServiceAccount may create tokenreviews"
                )))
            }
            other => return Err(Unavailable(format!("the API server answered the TokenReview with {other}"))),
        }
        let answer: ReviewAnswer = serde_json::from_slice(&answer)
            .map_err(|e| Unavailable(format!("the API server's TokenReview answer is not one: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if !status.authenticated {
            return Ok(Outcome::Refused("the Kubernetes API server did not authenticate the token".into()));
        }
        if !status.audiences.is_empty() && !status.audiences.iter().any(|a| self.audiences.contains(a)) {
            return Ok(Outcome::Refused("the token is not for this gateway's audience".into()));
        }
        let username = status.user.map(|u| u.username).unwrap_or_default();
        match Identity::from_username(&username) {
            Some(identity) => Ok(Outcome::Ok { identity, ttl: self.cache_ttl }),
            None => Ok(Outcome::Refused("the token is not a ServiceAccount's".into())),
        }
    }
}

#[derive(Deserialize)]
struct ReviewAnswer {
    status: Option<ReviewStatus>,
}

#[derive(Default, Deserialize)]
struct ReviewStatus {
    #[serde(default)]
    authenticated: bool,
    user: Option<ReviewUser>,
    #[serde(default)]
    audiences: Vec<String>,
}

#[derive(Deserialize)]
struct ReviewUser {
    #[serde(default)]
    username: String,
}
