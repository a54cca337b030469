//! Prometheus metrics: one registry per gateway, bounded label values only (config names,
//! methods, status codes, limit-table prefixes; never raw paths, keys, tokens or project uids).

use std::sync::Arc;

use http::Method;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the gateway exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `palette_gateway_requests_total{client,route,method,code}`.
    pub requests: IntCounterVec,
    /// `palette_gateway_request_duration_seconds{client,route,method}`.
    pub request_duration: HistogramVec,
    /// `palette_gateway_upstream_request_duration_seconds{prefix,code}`.
    pub upstream_duration: HistogramVec,
    /// `palette_gateway_inflight_requests`.
    pub inflight: IntGauge,
    /// `palette_gateway_rate_limited_total{client,limit}`.
    pub rate_limited: IntCounterVec,
    /// `palette_gateway_upstream_queue_wait_seconds{prefix}`.
    pub queue_wait: HistogramVec,
    /// `palette_gateway_upstream_throttled_total{prefix}`.
    pub upstream_throttled: IntCounterVec,
    /// `palette_gateway_auth_failures_total{reason}`.
    pub auth_failures: IntCounterVec,
    /// `palette_gateway_token_renewals_total{credential,kind,result}`.
    pub token_renewals: IntCounterVec,
    /// `palette_gateway_token_rejected_total{credential,reason}`.
    pub token_rejected: IntCounterVec,
    /// `palette_gateway_upstream_retries_total{prefix,reason}`.
    pub upstream_retries: IntCounterVec,
    /// `palette_gateway_token_expiry_timestamp_seconds{credential}`.
    pub token_expiry: GaugeVec,
    /// `palette_gateway_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `palette_gateway_config_last_reload_success_timestamp_seconds`.
    pub config_last_reload_success: Gauge,
    /// `palette_gateway_project_names_unresolved{credential,project}`: 1 while a configured
    /// project name has no uid (not found, ambiguous, lookup pending or failing), else 0.
    pub project_names_unresolved: IntGaugeVec,
    /// `palette_gateway_project_name_refusals_total{project}`: requests refused because a
    /// project name they needed did not resolve.
    pub project_name_refusals: IntCounterVec,
    /// `palette_gateway_auth_total{method,result}`, each pair resolved once (no lookup per request).
    auth: [[IntCounter; 3]; 4],
    /// `palette_gateway_kubernetes_token_review_duration_seconds{result}`.
    pub kube_review_duration: HistogramVec,
    /// `palette_gateway_kubernetes_token_review_cache_total{result}`.
    pub kube_review_cache: IntCounterVec,
    /// `palette_gateway_cache_hits_total{route}`.
    pub cache_hits: IntCounterVec,
    /// `palette_gateway_cache_misses_total{route}`.
    pub cache_misses: IntCounterVec,
    /// `palette_gateway_cache_coalesced_total{route}`.
    pub cache_coalesced: IntCounterVec,
    /// `palette_gateway_cache_evictions_total`.
    pub cache_evictions: IntCounter,
    /// `palette_gateway_cache_bytes`.
    pub cache_bytes: IntGauge,
    /// `palette_gateway_cluster_redis_up` (0/1; 1 without `[cluster]` is never set).
    pub cluster_redis_up: IntGauge,
    /// `palette_gateway_cluster_replicas`: replicas seen heartbeating in Redis (last known).
    pub cluster_replicas: IntGauge,
    /// `palette_gateway_cluster_redis_call_duration_seconds{op}`.
    pub cluster_redis_duration: HistogramVec,
    /// `palette_gateway_cluster_local_decisions_total{limit}`: decisions made on the local share
    /// because Redis was unavailable.
    pub cluster_local_decisions: IntCounterVec,
}

/// How a request authenticated (the `method` label of `palette_gateway_auth_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A local key (`ApiKey` or `Authorization: Bearer`).
    LocalKey = 0,
    /// A Kubernetes ServiceAccount token.
    Kubernetes = 1,
    /// A verified client certificate alone.
    Mtls = 2,
    /// No credential: the anonymous client, or a refusal for the lack of one.
    Anonymous = 3,
}

/// The `result` label of `palette_gateway_auth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// A client was identified.
    Ok = 0,
    /// The credential was refused (401/400).
    Refused = 1,
    /// The credential could not be checked now (503).
    Unavailable = 2,
}

const AUTH_METHODS: [&str; 4] = ["local_key", "kubernetes", "mtls", "anonymous"];
const AUTH_RESULTS: [&str; 3] = ["ok", "refused", "unavailable"];

/// Latency buckets from 1 ms to 60 s: a proxy hop is milliseconds, a Palette call up to the
/// request timeout.
const LATENCY_BUCKETS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

impl Metrics {
    /// A fresh registry with every metric, the build info and the process collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable_metric(name, e));
            register(&registry, Box::new(c.clone()));
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()), labels)
                .unwrap_or_else(|e| unreachable_metric(name, e));
            register(&registry, Box::new(h.clone()));
            h
        };
        let requests = counter(
            "palette_gateway_requests_total",
            "Requests answered, by client, route, method and status code.",
            &["client", "route", "method", "code"],
        );
        let request_duration = histogram(
            "palette_gateway_request_duration_seconds",
            "Time from request to response headers, as the client sees it.",
            &["client", "route", "method"],
        );
        let upstream_duration = histogram(
            "palette_gateway_upstream_request_duration_seconds",
            "Time Palette took to answer, by limit-table prefix and status code.",
            &["prefix", "code"],
        );
        let inflight = IntGauge::new("palette_gateway_inflight_requests", "Requests being handled now.")
            .unwrap_or_else(|e| unreachable_metric("inflight", e));
        register(&registry, Box::new(inflight.clone()));
        let rate_limited = counter("palette_gateway_rate_limited_total", "Requests refused with 429 by the gateway, by client and the limit that tripped (client, global, upstream).", &["client", "limit"]);
        let queue_wait = histogram(
            "palette_gateway_upstream_queue_wait_seconds",
            "Time requests waited for the upstream budget of their prefix.",
            &["prefix"],
        );
        let upstream_throttled = counter(
            "palette_gateway_upstream_throttled_total",
            "429 answers Palette sent despite the upstream budget.",
            &["prefix"],
        );
        let auth_failures = counter(
            "palette_gateway_auth_failures_total",
            "Requests refused by local authentication or policy, by reason.",
            &["reason"],
        );
        let token_renewals = counter(
            "palette_gateway_token_renewals_total",
            "Palette logins and token refreshes, by credential and result.",
            &["credential", "kind", "result"],
        );
        let token_rejected = counter(
            "palette_gateway_token_rejected_total",
            "Tokens Palette issued that the gateway would not use, by credential and reason (expired: the JWT exp is in the past, a clock skew).",
            &["credential", "reason"],
        );
        let upstream_retries = counter(
            "palette_gateway_upstream_retries_total",
            "Requests sent to Palette again, by limit-table prefix and reason (429: Palette throttled; 401: replayed with a new token).",
            &["prefix", "reason"],
        );
        let token_expiry = GaugeVec::new(
            Opts::new(
                "palette_gateway_token_expiry_timestamp_seconds",
                "When the credential's current token expires (unix seconds).",
            ),
            &["credential"],
        )
        .unwrap_or_else(|e| unreachable_metric("token_expiry", e));
        register(&registry, Box::new(token_expiry.clone()));
        let config_reloads = counter("palette_gateway_config_reloads_total", "Config reloads, by result.", &["result"]);
        let config_last_reload_success = Gauge::new(
            "palette_gateway_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (unix seconds).",
        )
        .unwrap_or_else(|e| unreachable_metric("config_last_reload_success", e));
        register(&registry, Box::new(config_last_reload_success.clone()));
        let cluster_redis_up = IntGauge::new(
            "palette_gateway_cluster_redis_up",
            "Whether the shared budget in Redis answers (1) or each replica runs on its local share (0).",
        )
        .unwrap_or_else(|e| unreachable_metric("cluster_redis_up", e));
        register(&registry, Box::new(cluster_redis_up.clone()));
        let cluster_replicas = IntGauge::new(
            "palette_gateway_cluster_replicas",
            "Gateway replicas heartbeating into the shared Redis (the last count seen).",
        )
        .unwrap_or_else(|e| unreachable_metric("cluster_replicas", e));
        register(&registry, Box::new(cluster_replicas.clone()));
        let cluster_redis_duration = histogram(
            "palette_gateway_cluster_redis_call_duration_seconds",
            "Time Redis took to answer a call, by operation (budget, limits, heartbeat); timeouts included.",
            &["op"],
        );
        let cluster_local_decisions = counter(
            "palette_gateway_cluster_local_decisions_total",
            "Admission decisions made on this replica's local share because Redis was unavailable, by limit (upstream, client).",
            &["limit"],
        );
        let build_info =
            IntGaugeVec::new(Opts::new("palette_gateway_build_info", "The running version (always 1)."), &["version"])
                .unwrap_or_else(|e| unreachable_metric("build_info", e));
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        register(&registry, Box::new(build_info));
        #[cfg(target_os = "linux")]
        if let Some(process) = crate::process_cpu::ProcessMetrics::for_self() {
            register(&registry, Box::new(process));
        }
        let project_names_unresolved = IntGaugeVec::new(
            Opts::new(
                "palette_gateway_project_names_unresolved",
                "1 while a configured project name has no uid (not found, ambiguous, or its lookup pending or failing), by credential and project name.",
            ),
            &["credential", "project"],
        )
        .unwrap_or_else(|e| unreachable_metric("project_names_unresolved", e));
        register(&registry, Box::new(project_names_unresolved.clone()));
        let project_name_refusals = counter(
            "palette_gateway_project_name_refusals_total",
            "Requests refused because a project name they needed did not resolve, by project name.",
            &["project"],
        );
        let auth_total = counter(
            "palette_gateway_auth_total",
            "Local authentications, by method (local_key, kubernetes, mtls, anonymous) and result (ok, refused, unavailable).",
            &["method", "result"],
        );
        let auth = AUTH_METHODS.map(|m| AUTH_RESULTS.map(|r| auth_total.with_label_values(&[m, r])));
        let kube_review_duration = histogram(
            "palette_gateway_kubernetes_token_review_duration_seconds",
            "Time the Kubernetes API server took to answer a TokenReview, by result (ok, refused, error).",
            &["result"],
        );
        let kube_review_cache = counter(
            "palette_gateway_kubernetes_token_review_cache_total",
            "ServiceAccount token lookups in the TokenReview cache, by result (hit, miss, refused_unreviewed: an address over its refused-token limit).",
            &["result"],
        );
        for result in ["hit", "miss", "refused_unreviewed"] {
            kube_review_cache.with_label_values(&[result]);
        }
        let cache_hits = counter(
            "palette_gateway_cache_hits_total",
            "GET requests answered from the response cache, by route.",
            &["route"],
        );
        let cache_misses = counter(
            "palette_gateway_cache_misses_total",
            "GET requests on a caching route that went to Palette, by route.",
            &["route"],
        );
        let cache_coalesced = counter(
            "palette_gateway_cache_coalesced_total",
            "GET requests that shared an identical read already in flight, by route.",
            &["route"],
        );
        let cache_evictions = IntCounter::new(
            "palette_gateway_cache_evictions_total",
            "Cached answers dropped to stay within cache.max_bytes.",
        )
        .unwrap_or_else(|e| unreachable_metric("cache_evictions", e));
        register(&registry, Box::new(cache_evictions.clone()));
        let cache_bytes = IntGauge::new("palette_gateway_cache_bytes", "Bytes the response cache holds now.")
            .unwrap_or_else(|e| unreachable_metric("cache_bytes", e));
        register(&registry, Box::new(cache_bytes.clone()));
        for reason in ["missing", "unknown_key", "forbidden", "project"] {
            auth_failures.with_label_values(&[reason]);
        }
        Metrics {
            registry,
            requests,
            request_duration,
            upstream_duration,
            inflight,
            rate_limited,
            queue_wait,
            upstream_throttled,
            auth_failures,
            token_renewals,
            token_rejected,
            upstream_retries,
            token_expiry,
            config_reloads,
            config_last_reload_success,
            project_names_unresolved,
            project_name_refusals,
            auth,
            kube_review_duration,
            kube_review_cache,
            cache_hits,
            cache_misses,
            cache_coalesced,
            cache_evictions,
            cache_bytes,
            cluster_redis_up,
            cluster_replicas,
            cluster_redis_duration,
            cluster_local_decisions,
        }
    }

    /// Counts one authentication.
    pub fn count_auth(&self, method: AuthMethod, result: AuthResult) {
        self.auth[method as usize][result as usize].inc();
    }

    /// The exposition in Prometheus text format.
    pub fn render(&self) -> (Vec<u8>, String) {
        let encoder = TextEncoder::new();
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which we never build.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        (out, encoder.format_type().to_string())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register(registry: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Names are fixed and unique; registration fails only on a duplicate, a programming error
    // caught by the unit test below.
    if let Err(e) = registry.register(c) {
        tracing::error!(error = %e, "metric registration failed");
    }
}

fn unreachable_metric<T>(name: &str, e: prometheus::Error) -> T {
    // Metric names and labels are constants checked by the tests; this cannot happen at run time.
    panic!("invalid metric definition {name}: {e}")
}

/// The metrics of the label sets a thread used last, found again by the identity of their
/// labels (the same `Arc`s, equal small values) instead of `with_label_values`, which hashes
/// the label strings and looks them up under the vector's lock on every call (issue 14: about
/// 230 instructions a lookup, three lookups a request). At most `N` entries; the oldest goes.
/// A key holds the `Arc`s it compares, so a pointer it was found by cannot be reused; a label
/// set evicted and used again is looked up again, to the same series. Series are never removed
/// from these vectors, so a kept handle never counts into a series the registry dropped.
pub(crate) struct Recent<K, M, const N: usize> {
    slots: Vec<(K, M)>,
    next: usize,
}

impl<K, M, const N: usize> Recent<K, M, N> {
    /// Empty (a `const` for `thread_local!`).
    pub(crate) const fn new() -> Self {
        Recent { slots: Vec::new(), next: 0 }
    }

    /// The metric of the entry whose key `is` picks; on a miss, `make`'s (key and metric), kept.
    pub(crate) fn get(&mut self, is: impl Fn(&K) -> bool, make: impl FnOnce() -> (K, M)) -> &M {
        if let Some(i) = self.slots.iter().position(|(k, _)| is(k)) {
            return &self.slots[i].1;
        }
        let i = if self.slots.len() < N {
            self.slots.push(make());
            self.slots.len() - 1
        } else {
            let i = self.next;
            self.next = (i + 1) % N;
            self.slots[i] = make();
            i
        };
        &self.slots[i].1
    }
}

/// Acts on the metric of a label set through a thread's [`Recent`] cache: `is` picks the
/// entry, `make` builds one on a miss (the key and `with_label_values`' metric). Where the
/// thread's cache cannot be used (a request's log dropped while its thread exits, after the
/// cache is gone, or the cache in use further up the stack) the metric is looked up as
/// `make` does, never a panic.
pub(crate) fn use_recent<K: 'static, M: 'static, const N: usize>(
    cache: &'static std::thread::LocalKey<std::cell::RefCell<Recent<K, M, N>>>,
    is: impl Fn(&K) -> bool,
    make: impl FnOnce() -> (K, M),
    act: impl FnOnce(&M),
) {
    let mut pending = Some((make, act));
    let _ = cache.try_with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if let Some((make, act)) = pending.take() {
                act(c.get(&is, make));
            }
        }
    });
    if let Some((make, act)) = pending {
        act(&make().1);
    }
}

/// Whether two optional `Arc`s are the same one (both `None` too).
pub(crate) fn same<T: ?Sized>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// A bounded method label: the standard methods, else `OTHER`.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handles found again by their key count into the series `with_label_values` names, for
    /// more label sets than the cache holds (evicted ones are looked up again, not lost).
    #[test]
    fn recent_handles_count_into_their_own_series() {
        let m = Metrics::new();
        let names: Vec<Arc<str>> = (0..5).map(|i| Arc::from(format!("c{i}"))).collect();
        let mut recent: Recent<Arc<str>, IntCounter, 3> = Recent::new();
        for round in 0..4 {
            for (i, name) in names.iter().enumerate() {
                for _ in 0..=i {
                    recent
                        .get(
                            |k| Arc::ptr_eq(k, name),
                            || (name.clone(), m.requests.with_label_values(&[name, "r", "GET", "200"])),
                        )
                        .inc();
                }
                assert!(recent.slots.len() <= 3, "round {round}: {} entries", recent.slots.len());
            }
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(m.requests.with_label_values(&[name, "r", "GET", "200"]).get(), 4 * (i as u64 + 1), "{name}");
        }
        // Equal text, another `Arc`: a miss, but the same series.
        let twin: Arc<str> = Arc::from("c0");
        recent
            .get(
                |k| Arc::ptr_eq(k, &twin),
                || (twin.clone(), m.requests.with_label_values(&[&twin, "r", "GET", "200"])),
            )
            .inc();
        assert_eq!(m.requests.with_label_values(&["c0", "r", "GET", "200"]).get(), 5);
        assert!(same::<str>(None, None) && !same(Some(&twin), None) && !same(Some(&twin), Some(&names[0])));
    }

    /// A cache already in use (or gone) still counts, by the plain lookup.
    #[test]
    fn a_busy_cache_still_counts() {
        thread_local!(static CACHE: std::cell::RefCell<Recent<u8, IntCounter, 2>> = const { std::cell::RefCell::new(Recent::new()) });
        let m = Metrics::new();
        let count = || {
            use_recent(
                &CACHE,
                |k| *k == 1,
                || (1, m.requests.with_label_values(&["c", "r", "GET", "200"])),
                |c| c.inc(),
            )
        };
        count();
        CACHE.with_borrow_mut(|_held| count());
        count();
        assert_eq!(m.requests.with_label_values(&["c", "r", "GET", "200"]).get(), 3);
    }

    #[test]
    fn all_metrics_register_and_render() {
        let m = Metrics::new();
        m.requests.with_label_values(&["ci", "none", "GET", "200"]).inc();
        let (text, _) = m.render();
        let text = String::from_utf8(text).unwrap();
        for name in [
            "palette_gateway_requests_total",
            "palette_gateway_build_info",
            "palette_gateway_inflight_requests",
            "palette_gateway_auth_failures_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"));
    }

    #[test]
    fn methods_are_bounded() {
        assert_eq!(method_label(&Method::from_bytes(b"WHATEVER").unwrap()), "OTHER");
        assert_eq!(method_label(&Method::GET), "GET");
    }
}
