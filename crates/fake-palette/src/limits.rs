//! Palette's per-source-IP rate limits as the fake enforces them: which counting prefix a path
//! belongs to, one continuous token bucket per (source IP, prefix), and the forced 429s.
//!
//! This is written from `/work/shared/palette-api.md` alone, independently of the gateway's own
//! table (`palette_gateway::limit`): the fake is the oracle the gateway is tested against.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use tokio::time::Instant;

/// Requests per second of the prefixes not listed anywhere else (`/v1/packs`, `/v1/auth`...).
const DEFAULT_RATE: f64 = 10.0;
/// Requests per second of the fast prefixes (`/v1/spectroclusters`, `/v1/cloudconfigs`...).
const FAST_RATE: f64 = 50.0;
/// Requests per second of the exceptions inside the fast prefixes.
const EXCEPTION_RATE: f64 = 10.0;
/// Requests per second of `/v1/auth/user/password/reset`.
const PASSWORD_RESET_RATE: f64 = 2.0;

/// The parent resource prefix a request is counted under, and its rate.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct CountingPrefix {
    /// `/v1/packs`, `/v1/spectroclusters/{uid}/assets` (uids are not part of it)...
    pub(super) name: String,
    /// Requests per second.
    pub(super) rate: f64,
}

impl CountingPrefix {
    fn new(name: impl Into<String>, rate: f64) -> Self {
        Self { name: name.into(), rate }
    }
}

/// Classifies a request path (without its query) the way Palette counts it. Paths are compared
/// segment by segment, exactly as received (no percent-decoding; empty segments are skipped),
/// so `/v1/spectroclusters` covers `/v1/spectroclusters/c1/x` but not `/v1/spectroclustersx`.
pub(super) fn counting_prefix(path: &str) -> CountingPrefix {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["v1", "auth", "user", "password", "reset", ..] => {
            CountingPrefix::new("/v1/auth/user/password/reset", PASSWORD_RESET_RATE)
        }
        // The exceptions inside the fast prefixes: each its own, slower, bucket.
        ["v1", "spectroclusters", name @ ("acquire" | "cost" | "usage"), ..] => {
            CountingPrefix::new(format!("/v1/spectroclusters/{name}"), EXCEPTION_RATE)
        }
        ["v1", "spectroclusters", "features", "logFetcher", ..] => {
            CountingPrefix::new("/v1/spectroclusters/features/logFetcher", EXCEPTION_RATE)
        }
        ["v1", "spectroclusters", _, name @ ("assets" | "download"), ..] => {
            CountingPrefix::new(format!("/v1/spectroclusters/{{uid}}/{name}"), EXCEPTION_RATE)
        }
        // The fast prefixes.
        ["v1", "spectroclusters", _, "profiles", ..] => {
            CountingPrefix::new("/v1/spectroclusters/{uid}/profiles", FAST_RATE)
        }
        ["v1", name @ ("spectroclusters" | "cloudconfigs" | "clusterprofiles"), ..] => {
            CountingPrefix::new(format!("/v1/{name}"), FAST_RATE)
        }
        ["v1", "events", "components", ..] => CountingPrefix::new("/v1/events/components", FAST_RATE),
        // Everything else: the first two segments.
        [first, second, ..] => CountingPrefix::new(format!("/{first}/{second}"), DEFAULT_RATE),
        [first] => CountingPrefix::new(format!("/{first}"), DEFAULT_RATE),
        [] => CountingPrefix::new("/", DEFAULT_RATE),
    }
}

/// Why a request is answered 429.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Throttle {
    /// Its bucket had less than one token.
    Limited(String),
    /// [`Limiter::force`] asked for it.
    Forced(String),
}

impl Throttle {
    /// The message of the 429's Palette error body.
    pub(super) fn message(&self) -> String {
        match self {
            Throttle::Limited(prefix) => format!("rate limit exceeded for {prefix}"),
            Throttle::Forced(prefix) => format!("too many requests for {prefix} (forced)"),
        }
    }
}

/// One continuous token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The rate limiting state of one fake.
#[derive(Debug)]
pub(super) struct Limiter {
    /// `None`: no rate limiting (forced 429s still work).
    burst_seconds: Option<f64>,
    /// One bucket per source IP and counting prefix.
    buckets: HashMap<(IpAddr, String), Bucket>,
    /// How many of the next forcible requests answer 429.
    forced: u64,
    /// 429s answered (limited or forced), per counting prefix.
    throttled: BTreeMap<String, u64>,
}

impl Limiter {
    pub(super) fn new(burst_seconds: Option<f64>) -> Self {
        Self { burst_seconds, buckets: HashMap::new(), forced: 0, throttled: BTreeMap::new() }
    }

    /// Counts one request from `ip` for `path` at `now`: `Err` when it must be answered 429.
    /// `forcible`: the request may take one of the forced 429s (it is not a login or refresh).
    /// A refused request takes no token; a rate limited one takes no forced 429.
    pub(super) fn check(&mut self, ip: IpAddr, path: &str, forcible: bool, now: Instant) -> Result<(), Throttle> {
        let prefix = counting_prefix(path);
        let throttle = if self.take_token(ip, &prefix, now) {
            if forcible && self.forced > 0 {
                self.forced -= 1;
                Throttle::Forced(prefix.name)
            } else {
                return Ok(());
            }
        } else {
            Throttle::Limited(prefix.name)
        };
        let name = match &throttle {
            Throttle::Limited(name) | Throttle::Forced(name) => name,
        };
        *self.throttled.entry(name.clone()).or_default() += 1;
        Err(throttle)
    }

    /// Refills the bucket of (`ip`, `prefix`) up to `now` and takes one token from it if it
    /// holds a whole one. Always `true` without rate limits.
    fn take_token(&mut self, ip: IpAddr, prefix: &CountingPrefix, now: Instant) -> bool {
        let Some(burst_seconds) = self.burst_seconds else {
            return true;
        };
        let capacity = prefix.rate * burst_seconds;
        let bucket = self.buckets.entry((ip, prefix.name.clone())).or_insert(Bucket { tokens: capacity, updated: now });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * prefix.rate).min(capacity);
        bucket.updated = bucket.updated.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The next `n` forcible requests answer 429 (replacing any count still pending).
    pub(super) fn force(&mut self, n: u64) {
        self.forced = n;
    }

    pub(super) fn throttled(&self) -> u64 {
        self.throttled.values().sum()
    }

    pub(super) fn throttled_by_prefix(&self) -> Vec<(String, u64)> {
        self.throttled.iter().map(|(prefix, n)| (prefix.clone(), *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::super::FakeRateLimits;
    use super::*;

    fn class(path: &str) -> (String, f64) {
        let p = counting_prefix(path);
        (p.name, p.rate)
    }

    #[test]
    fn classification_follows_the_documented_table() {
        let cases: &[(&str, &str, f64)] = &[
            // Password reset: its own slow bucket.
            ("/v1/auth/user/password/reset", "/v1/auth/user/password/reset", 2.0),
            ("/v1/auth/user/password/reset/tok123", "/v1/auth/user/password/reset", 2.0),
            // The rest of /v1/auth is an ordinary prefix.
            ("/v1/auth/authenticate", "/v1/auth", 10.0),
            ("/v1/auth/refresh/abc", "/v1/auth", 10.0),
            ("/v1/auth/user/password", "/v1/auth", 10.0),
            // Exceptions inside the fast prefixes.
            ("/v1/spectroclusters/acquire", "/v1/spectroclusters/acquire", 10.0),
            ("/v1/spectroclusters/cost", "/v1/spectroclusters/cost", 10.0),
            ("/v1/spectroclusters/usage/x", "/v1/spectroclusters/usage", 10.0),
            ("/v1/spectroclusters/features/logFetcher/c1/download", "/v1/spectroclusters/features/logFetcher", 10.0),
            ("/v1/spectroclusters/c1/assets", "/v1/spectroclusters/{uid}/assets", 10.0),
            ("/v1/spectroclusters/c2/assets/kubeconfig", "/v1/spectroclusters/{uid}/assets", 10.0),
            ("/v1/spectroclusters/c1/download/kubeconfig", "/v1/spectroclusters/{uid}/download", 10.0),
            // Fast prefixes.
            ("/v1/spectroclusters/c1/profiles", "/v1/spectroclusters/{uid}/profiles", 50.0),
            ("/v1/spectroclusters/c9/profiles/p1/packs", "/v1/spectroclusters/{uid}/profiles", 50.0),
            ("/v1/spectroclusters", "/v1/spectroclusters", 50.0),
            ("/v1/spectroclusters/", "/v1/spectroclusters", 50.0),
            ("/v1/spectroclusters/c1", "/v1/spectroclusters", 50.0),
            ("/v1/spectroclusters/c1/nodes", "/v1/spectroclusters", 50.0),
            ("/v1/spectroclusters/features/other", "/v1/spectroclusters", 50.0),
            ("/v1/cloudconfigs/aws/c1/machinePools", "/v1/cloudconfigs", 50.0),
            ("/v1/clusterprofiles", "/v1/clusterprofiles", 50.0),
            ("/v1/events/components/x", "/v1/events/components", 50.0),
            // Everything else: the first two segments.
            ("/v1/events", "/v1/events", 10.0),
            ("/v1/events/other", "/v1/events", 10.0),
            ("/v1/packs", "/v1/packs", 10.0),
            ("/v1/packs/p1/registries", "/v1/packs", 10.0),
            ("/v1/users/u1", "/v1/users", 10.0),
            ("/v1/__fake/status/429", "/v1/__fake", 10.0),
            ("/v1/spectroclustersx", "/v1/spectroclustersx", 10.0),
            ("//v1//packs", "/v1/packs", 10.0),
            ("/v1", "/v1", 10.0),
            ("/", "/", 10.0),
        ];
        for (path, prefix, rate) in cases {
            assert_eq!(class(path), (prefix.to_string(), *rate), "{path}");
        }
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn bucket_holds_rate_times_burst_and_refills_continuously() {
        let mut limiter = Limiter::new(Some(1.0));
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(limiter.check(IP, "/v1/packs", true, t0), Ok(()), "{i}");
        }
        let limited = Err(Throttle::Limited("/v1/packs".into()));
        assert_eq!(limiter.check(IP, "/v1/packs/x", true, t0), limited);
        // Half a token is not enough; a refused request takes nothing.
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(limiter.check(IP, "/v1/packs", true, t1), limited);
        let t2 = t0 + Duration::from_millis(100);
        assert_eq!(limiter.check(IP, "/v1/packs", true, t2), Ok(()));
        assert_eq!(limiter.check(IP, "/v1/packs", true, t2), limited);
        // Another prefix, and another source IP, have their own buckets.
        assert_eq!(limiter.check(IP, "/v1/users", true, t2), Ok(()));
        let other = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(limiter.check(other, "/v1/packs", true, t2), Ok(()));
        // A long pause refills up to the capacity, no more.
        let t3 = t2 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(limiter.check(IP, "/v1/packs", true, t3), Ok(()));
        }
        assert_eq!(limiter.check(IP, "/v1/packs", true, t3), limited);
        assert_eq!(limiter.throttled(), 4);
        assert_eq!(limiter.throttled_by_prefix(), vec![("/v1/packs".into(), 4)]);
    }

    #[test]
    fn default_burst_and_the_other_rates() {
        let mut limiter = Limiter::new(Some(FakeRateLimits::default().burst_seconds));
        let t0 = Instant::now();
        let passed = |limiter: &mut Limiter, path: &str| {
            (0..1000).take_while(|_| limiter.check(IP, path, true, t0).is_ok()).count()
        };
        assert_eq!(passed(&mut limiter, "/v1/packs"), 50);
        assert_eq!(passed(&mut limiter, "/v1/spectroclusters/c1"), 250);
        assert_eq!(passed(&mut limiter, "/v1/spectroclusters/c1/profiles"), 250);
        assert_eq!(passed(&mut limiter, "/v1/spectroclusters/c1/assets"), 50);
        assert_eq!(passed(&mut limiter, "/v1/auth/user/password/reset"), 10);
        // 2/s: one token back after 500 ms.
        let t1 = t0 + Duration::from_millis(500);
        let reset = "/v1/auth/user/password/reset";
        assert_eq!(limiter.check(IP, reset, true, t1), Ok(()));
        assert!(limiter.check(IP, reset, true, t1).is_err());
    }

    #[test]
    fn forced_429s_skip_non_forcible_requests_and_count() {
        let mut limiter = Limiter::new(None);
        let t0 = Instant::now();
        limiter.force(2);
        assert_eq!(limiter.check(IP, "/v1/auth/authenticate", false, t0), Ok(()));
        let forced = Err(Throttle::Forced("/v1/users".into()));
        assert_eq!(limiter.check(IP, "/v1/users", true, t0), forced);
        assert_eq!(limiter.check(IP, "/v1/users/u1", true, t0), forced);
        assert_eq!(limiter.check(IP, "/v1/users", true, t0), Ok(()));
        // Without rate limits nothing else is ever refused.
        for _ in 0..1000 {
            assert_eq!(limiter.check(IP, "/v1/users", true, t0), Ok(()));
        }
        limiter.force(5);
        limiter.force(1);
        assert!(limiter.check(IP, "/v1/packs", true, t0).is_err());
        assert_eq!(limiter.check(IP, "/v1/packs", true, t0), Ok(()));
        assert_eq!(limiter.throttled(), 3);
        assert_eq!(limiter.throttled_by_prefix(), vec![("/v1/packs".into(), 1), ("/v1/users".into(), 2)]);
    }

    #[test]
    fn a_rate_limited_request_does_not_use_up_a_forced_429() {
        let mut limiter = Limiter::new(Some(0.1));
        let t0 = Instant::now();
        assert_eq!(limiter.check(IP, "/v1/packs", true, t0), Ok(()));
        limiter.force(1);
        let limited = Err(Throttle::Limited("/v1/packs".into()));
        assert_eq!(limiter.check(IP, "/v1/packs", true, t0), limited);
        let forced = Err(Throttle::Forced("/v1/users".into()));
        assert_eq!(limiter.check(IP, "/v1/users", true, t0), forced);
    }
}
