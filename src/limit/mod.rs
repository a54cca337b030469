//! Client rate limits: a GCRA per client (its own `rate_limit` or the default) and one global
//! limit across all clients, with the `RateLimit-*` headers that tell a client where it stands.
//! The outbound budget towards Palette is in [`upstream`].

pub mod upstream;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use crate::cluster::{Cluster, LimitKey, LimitsAnswer};
use crate::config::{ClientId, Config, Rate};

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// One limit and the rate it was built from (to keep its state across reloads).
#[derive(Debug, Clone)]
struct Limit {
    rate: Rate,
    limiter: Arc<Limiter>,
    /// The limiter of the local share while Redis is unavailable, and the share it was built
    /// for (rebuilt when the replica count changes).
    share: Arc<Mutex<Option<ShareLimiter>>>,
}

/// A limiter for one local share: the share it divides by, and the limiter.
type ShareLimiter = (u32, Arc<Limiter>);

fn limiter(rate: Rate) -> Arc<Limiter> {
    let period = Duration::from_secs_f64(1.0 / rate.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    // `with_period` fails only for a zero period, excluded just above.
    let quota = Quota::with_period(period).map_or_else(|| Quota::per_second(NonZeroU32::MIN), |q| q.allow_burst(burst));
    Arc::new(RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>())
}

impl Limit {
    fn new(rate: Rate) -> Self {
        Limit { rate, limiter: limiter(rate), share: Arc::default() }
    }

    /// The rate and limiter for `share` replicas: the whole limit for 1, else its share.
    fn for_share(&self, share: u32) -> (Rate, Arc<Limiter>) {
        if share <= 1 {
            return (self.rate, self.limiter.clone());
        }
        let rate =
            Rate { per_second: self.rate.per_second / f64::from(share), burst: self.rate.burst.div_ceil(share).max(1) };
        let mut cached = self.share.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((n, l)) if *n == share => (rate, l.clone()),
            _ => {
                let l = limiter(rate);
                *cached = Some((share, l.clone()));
                (rate, l)
            }
        }
    }

    /// This limit in Redis: its key and its GCRA.
    fn shared_key(&self, key: String) -> LimitKey {
        let interval = Duration::from_secs_f64(1.0 / self.rate.per_second).max(Duration::from_micros(1));
        LimitKey { key, interval, tolerance: interval * self.rate.burst.saturating_sub(1) }
    }

    fn reuse_or_new(previous: Option<&Limit>, rate: Rate) -> Self {
        match previous {
            Some(p) if p.rate == rate => p.clone(),
            _ => Limit::new(rate),
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// The client's own limit.
    Client,
    /// The limit across all clients.
    Global,
}

impl LimitKind {
    /// The `limit` label value.
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Client => "client",
            LimitKind::Global => "global",
        }
    }
}

/// A refusal: which limit, its rate, and when to retry.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The limit that tripped.
    pub kind: LimitKind,
    /// Its rate.
    pub rate: Rate,
    /// How long until a request would pass.
    pub retry_after: Duration,
    /// The client's `RateLimit-*` headers.
    pub headers: Option<RateHeaders>,
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy` for the
/// limit that applies to a request: the client's own or the global one, whichever has fewer
/// requests left (on a refusal: the one that refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// Burst size.
    pub limit: u32,
    /// Requests that would pass right now.
    pub remaining: u32,
    /// Whole seconds until the full burst is available again.
    pub reset: u64,
    /// Which limit these are: `client` or `global`.
    pub policy: LimitKind,
    /// Whole seconds the limit takes to refill its whole burst (the policy's window).
    pub window: u64,
}

impl RateHeaders {
    /// How many headers [`RateHeaders::apply`] adds.
    pub const COUNT: usize = 4;

    /// Adds the headers to an answer.
    pub fn apply(&self, headers: &mut HeaderMap) {
        static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
        static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
        static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
        static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
        let (limit, policy) = self.fixed();
        headers.insert(LIMIT.clone(), limit);
        // Remaining and reset change from one answer to the next: "never indexed" for HPACK (not
        // a secret), or each would take an entry of an HTTP/2 connection's header table, evicting
        // one that could be reused. Limit and policy repeat, and stay indexed.
        let mut remaining = number(u64::from(self.remaining));
        remaining.set_sensitive(true);
        headers.insert(REMAINING.clone(), remaining);
        let mut reset = number(self.reset);
        reset.set_sensitive(true);
        headers.insert(RESET.clone(), reset);
        headers.insert(POLICY.clone(), policy);
    }

    /// `RateLimit-Limit` and `RateLimit-Policy`, which change only with the rate: built once per
    /// thread and limit kind and cloned after (a shared `Bytes`, no allocation; issue 14: two
    /// allocations per answer otherwise for a burst of 1024 or more).
    fn fixed(&self) -> (HeaderValue, HeaderValue) {
        type Fixed = [Option<(u32, u64, HeaderValue, HeaderValue)>; 2];
        thread_local!(static FIXED: std::cell::RefCell<Fixed> = const { std::cell::RefCell::new([None, None]) });
        let slot = match self.policy {
            LimitKind::Client => 0,
            LimitKind::Global => 1,
        };
        FIXED.with_borrow_mut(|fixed| match &fixed[slot] {
            Some((limit, window, l, p)) if *limit == self.limit && *window == self.window => (l.clone(), p.clone()),
            _ => {
                let (l, p) = (number(u64::from(self.limit)), self.policy_value());
                fixed[slot] = Some((self.limit, self.window, l.clone(), p.clone()));
                (l, p)
            }
        })
    }

    /// `<burst>;w=<seconds>;name="client"`.
    fn policy_value(&self) -> HeaderValue {
        let (mut limit, mut window) = (itoa::Buffer::new(), itoa::Buffer::new());
        let policy =
            [limit.format(self.limit), ";w=", window.format(self.window), ";name=\"", self.policy.label(), "\""]
                .concat();
        // Digits and a fixed name: always a valid value.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(policy)).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// Numbers below this are header values made once.
const SMALL_NUMBERS: u64 = 1024;

/// `n` as a header value. Those below [`SMALL_NUMBERS`] (nearly every rate header) are cut from
/// one string made once and kept for the process, so they are cloned without allocating; the
/// others are formatted into one allocation (issue 14: three allocations per answer otherwise).
fn number(n: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        let mut all = String::new();
        let mut ends = Vec::new();
        for i in 0..SMALL_NUMBERS {
            all.push_str(itoa::Buffer::new().format(i));
            ends.push(all.len());
        }
        let all: &'static str = Box::leak(all.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&all[start..end]);
                start = end;
                v
            })
            .collect()
    });
    if let Some(v) = usize::try_from(n).ok().and_then(|i| SMALL.get(i)) {
        return v.clone();
    }
    // One allocation: `HeaderValue::from(u64)` takes two (a `BytesMut`, then its freeze).
    HeaderValue::from_bytes(itoa::Buffer::new().format(n).as_bytes()).unwrap_or_else(|_| HeaderValue::from(n))
}

/// Every client's limit and the global one, indexed like [`Config::clients`].
#[derive(Debug, Clone, Default)]
pub struct ClientLimits {
    per_client: Vec<Option<Limit>>,
    by_name: HashMap<Arc<str>, Limit>,
    global: Option<Limit>,
}

impl ClientLimits {
    /// Builds the limits of `cfg`, keeping the state of `previous` limits whose client and
    /// rate did not change.
    pub fn build(cfg: &Config, previous: Option<&ClientLimits>) -> Self {
        let mut by_name = HashMap::new();
        let per_client = cfg
            .clients
            .iter()
            .map(|c| {
                c.rate_limit.map(|rate| {
                    let limit = Limit::reuse_or_new(previous.and_then(|p| p.by_name.get(&c.name)), rate);
                    by_name.insert(c.name.clone(), limit.clone());
                    limit
                })
            })
            .collect();
        let global =
            cfg.global_rate_limit.map(|rate| Limit::reuse_or_new(previous.and_then(|p| p.global.as_ref()), rate));
        ClientLimits { per_client, by_name, global }
    }

    /// Takes one request from `client`'s limit and the global one. `Ok` carries the headers of
    /// the limit that applies (the one with fewer requests left), if any limit does.
    pub fn check(&self, client: ClientId) -> Result<Option<RateHeaders>, Refusal> {
        self.check_local(client, 1)
    }

    /// [`ClientLimits::check`] across every replica through `cluster`. While Redis answers,
    /// this replica checks the limits at their full rate (no replica alone may pass more) and
    /// hands back the [`SharedLimits`] still to be taken in Redis: with the budget slot, in
    /// the same round trip, or by [`SharedLimits::settle`]. A request refused before either
    /// (by policy, say) spends nothing in Redis. While Redis is unavailable: the local share
    /// of each limit (its rate and burst divided by [`Cluster::local_share`]), nothing pending.
    pub fn check_in(
        &self,
        cluster: Option<&Cluster>,
        client: ClientId,
        name: &str,
    ) -> Result<(Option<RateHeaders>, Option<SharedLimits>), Refusal> {
        let Some(cluster) = cluster else { return Ok((self.check(client)?, None)) };
        let own = self.per_client.get(client.index()).and_then(Option::as_ref);
        let limits: Vec<(&Limit, LimitKind)> = own
            .map(|l| (l, LimitKind::Client))
            .into_iter()
            .chain(self.global.as_ref().map(|l| (l, LimitKind::Global)))
            .collect();
        if limits.is_empty() {
            return Ok((None, None));
        }
        if !cluster.is_up() {
            cluster.local_decision("client");
            return Ok((self.check_local(client, cluster.local_share())?, None));
        }
        let headers = self.check_local(client, 1)?;
        let keys = limits
            .iter()
            .map(|(l, kind)| match kind {
                LimitKind::Client => l.shared_key(format!("client:{name}")),
                LimitKind::Global => l.shared_key("global".into()),
            })
            .collect();
        let rates = limits.iter().map(|(l, kind)| (l.rate, *kind)).collect();
        Ok((headers, Some(SharedLimits { client, keys, rates })))
    }

    /// The check on this replica alone, each limit divided by `share`.
    fn check_local(&self, client: ClientId, share: u32) -> Result<Option<RateHeaders>, Refusal> {
        let own = self.per_client.get(client.index()).and_then(Option::as_ref);
        let headers = match own {
            Some(limit) => {
                let (rate, limiter) = limit.for_share(share);
                match limiter.check() {
                    Ok(snapshot) => Some(headers_for(rate, snapshot.remaining_burst_capacity(), LimitKind::Client)),
                    Err(not_until) => {
                        return Err(Refusal {
                            kind: LimitKind::Client,
                            rate,
                            retry_after: not_until.wait_time_from(limiter.clock().now()),
                            headers: Some(headers_for(rate, 0, LimitKind::Client)),
                        })
                    }
                }
            }
            None => None,
        };
        if let Some(global) = &self.global {
            let (rate, limiter) = global.for_share(share);
            match limiter.check() {
                Ok(snapshot) => {
                    let g = headers_for(rate, snapshot.remaining_burst_capacity(), LimitKind::Global);
                    // The tighter limit is the one the client runs into first.
                    return Ok(Some(match headers {
                        Some(own) if own.remaining <= g.remaining => own,
                        _ => g,
                    }));
                }
                Err(not_until) => {
                    return Err(Refusal {
                        kind: LimitKind::Global,
                        rate,
                        retry_after: not_until.wait_time_from(limiter.clock().now()),
                        headers: Some(headers_for(rate, 0, LimitKind::Global)),
                    });
                }
            }
        }
        Ok(headers)
    }
}

/// A request's client and global limits still to be taken across the replicas (see
/// [`ClientLimits::check_in`]). Taken once: with the budget slot (the keys ride on the
/// request's place in the budget's queue), or by [`SharedLimits::settle`].
#[derive(Debug, Clone)]
pub struct SharedLimits {
    client: ClientId,
    keys: Vec<LimitKey>,
    /// Each key's rate and kind, for the headers and the refusal.
    rates: Vec<(Rate, LimitKind)>,
}

impl SharedLimits {
    /// The limits' keys in Redis.
    pub fn keys(&self) -> &[LimitKey] {
        &self.keys
    }

    /// What Redis answered about these limits: the headers of the one with fewer requests
    /// left (the client's on a tie), or the refusal of the one that refused.
    pub fn answer(&self, answer: &LimitsAnswer) -> Result<Option<RateHeaders>, Refusal> {
        if let Some(i) = answer.refused {
            let Some(&(rate, kind)) = self.rates.get(i).or(self.rates.first()) else { return Ok(None) };
            return Err(Refusal { kind, rate, retry_after: answer.retry, headers: Some(headers_for(rate, 0, kind)) });
        }
        Ok(self
            .rates
            .iter()
            .zip(answer.remaining.iter().copied().chain(std::iter::repeat(0)))
            .map(|((rate, kind), remaining)| headers_for(*rate, remaining.min(rate.burst), *kind))
            .reduce(|a, b| if b.remaining < a.remaining { b } else { a }))
    }

    /// Takes these limits on this replica's local share: Redis went away before they were
    /// taken there.
    pub fn local(&self, limits: &ClientLimits, cluster: &Cluster) -> Result<Option<RateHeaders>, Refusal> {
        cluster.local_decision("client");
        limits.check_local(self.client, cluster.local_share())
    }

    /// Takes these limits in Redis on their own (one round trip): for a request answered
    /// without a budget slot (a cached answer, a path no budget prefix covers).
    pub async fn settle(&self, limits: &ClientLimits, cluster: &Cluster) -> Result<Option<RateHeaders>, Refusal> {
        match cluster.limits(&self.keys).await {
            Some(answer) => self.answer(&answer),
            None => self.local(limits, cluster),
        }
    }
}

fn headers_for(rate: Rate, remaining: u32, policy: LimitKind) -> RateHeaders {
    let missing = f64::from(rate.burst.saturating_sub(remaining));
    RateHeaders {
        limit: rate.burst,
        remaining,
        reset: (missing / rate.per_second).ceil() as u64,
        policy,
        window: (f64::from(rate.burst) / rate.per_second).ceil() as u64,
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, MapEnv};
    use std::path::Path;

    fn limits(extra: &str) -> (Config, ClientLimits) {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n{extra}\n\
             [[clients]]\nname = \"a\"\n[[clients]]\nname = \"b\"\nrate_limit = {{ per_second = 1, burst = 3 }}\n"
        );
        let cfg = load_str(&text, Path::new("."), &MapEnv::new().with("K", "x")).unwrap();
        let l = ClientLimits::build(&cfg, None);
        (cfg, l)
    }

    #[test]
    fn numbers_read_as_themselves() {
        for n in [0, 1, 9, 10, 99, 100, 1023, 1024, 1025, 86_400, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }

    /// The values kept per thread follow the rate: a new limit or window, or the other kind, is
    /// never answered with the headers of the one before.
    #[test]
    fn kept_values_follow_the_rate() {
        let show = |h: RateHeaders| {
            let mut map = HeaderMap::new();
            h.apply(&mut map);
            ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy"]
                .map(|n| map.get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned())
        };
        let client =
            RateHeaders { limit: 1_000_000, remaining: 999_998, reset: 1, policy: LimitKind::Client, window: 1 };
        for _ in 0..2 {
            assert_eq!(show(client), ["1000000", "999998", "1", "1000000;w=1;name=\"client\""]);
        }
        let global = RateHeaders { policy: LimitKind::Global, window: 2, ..client };
        assert_eq!(show(global), ["1000000", "999998", "1", "1000000;w=2;name=\"global\""]);
        assert_eq!(show(client), ["1000000", "999998", "1", "1000000;w=1;name=\"client\""]);
        let reloaded = RateHeaders { limit: 5, remaining: 4, window: 60, ..client };
        assert_eq!(show(reloaded), ["5", "4", "1", "5;w=60;name=\"client\""]);
        let window_only = RateHeaders { window: 30, ..reloaded };
        assert_eq!(show(window_only), ["5", "4", "1", "5;w=30;name=\"client\""]);
    }

    #[test]
    fn per_client_override_and_headers() {
        let (_, l) = limits("[rate_limit]\ndefault = { per_second = 100, burst = 100 }");
        for remaining in [2, 1, 0] {
            let want = RateHeaders {
                limit: 3,
                remaining,
                reset: 3 - u64::from(remaining),
                policy: LimitKind::Client,
                window: 3,
            };
            assert_eq!(l.check(ClientId(1)).unwrap(), Some(want));
        }
        let refusal = l.check(ClientId(1)).unwrap_err();
        assert_eq!(refusal.kind, LimitKind::Client);
        assert_eq!(retry_after_secs(refusal.retry_after), 1);
        assert_eq!(l.check(ClientId(0)).unwrap().unwrap().limit, 100, "the default applies to a");
    }

    #[test]
    fn no_limits_configured_means_unlimited() {
        let (_, l) = limits("");
        for _ in 0..1000 {
            assert_eq!(l.check(ClientId(0)).unwrap(), None);
        }
    }

    #[test]
    fn global_limit_spans_clients() {
        let (_, l) = limits("[rate_limit]\nglobal = { per_second = 1, burst = 2 }");
        let global = RateHeaders { limit: 2, remaining: 1, reset: 1, policy: LimitKind::Global, window: 2 };
        assert_eq!(
            l.check(ClientId(0)).unwrap(),
            Some(global),
            "a client without a limit of its own sees the global one"
        );
        assert!(l.check(ClientId(1)).is_ok());
        let refusal = l.check(ClientId(0)).unwrap_err();
        assert_eq!(refusal.kind, LimitKind::Global);
        assert_eq!(refusal.headers.map(|h| (h.policy, h.remaining)), Some((LimitKind::Global, 0)));
    }

    #[test]
    fn the_tighter_limit_gives_the_headers() {
        // b: own limit burst 3; global burst 2, so after one request global has 1 left, b's 2.
        let (_, l) = limits("[rate_limit]\nglobal = { per_second = 1, burst = 2 }");
        assert_eq!(l.check(ClientId(1)).unwrap().map(|h| (h.policy, h.remaining)), Some((LimitKind::Global, 1)));
        let (_, l) = limits("[rate_limit]\nglobal = { per_second = 100, burst = 100 }");
        assert_eq!(l.check(ClientId(1)).unwrap().map(|h| (h.policy, h.remaining)), Some((LimitKind::Client, 2)));
        // A global refusal shows the global limit, not the client's.
        let (_, l) = limits("[rate_limit]\nglobal = { per_second = 0.01, burst = 1 }");
        l.check(ClientId(0)).unwrap();
        let refusal = l.check(ClientId(1)).unwrap_err();
        assert_eq!(refusal.headers.map(|h| (h.policy, h.limit, h.remaining)), Some((LimitKind::Global, 1, 0)));
    }

    #[test]
    fn policy_header_names_the_limit() {
        let mut h = HeaderMap::new();
        RateHeaders { limit: 20, remaining: 19, reset: 1, policy: LimitKind::Global, window: 2 }.apply(&mut h);
        assert_eq!(h["ratelimit-policy"], "20;w=2;name=\"global\"");
        assert_eq!(h["ratelimit-limit"], "20");
        assert_eq!(h.len(), RateHeaders::COUNT, "the room the request log makes for them");
    }

    /// The counts that change with every answer go out as HPACK "never indexed" literals over
    /// HTTP/2; the ones that repeat stay indexable.
    #[test]
    fn only_the_changing_counts_are_never_indexed() {
        let mut h = HeaderMap::new();
        RateHeaders { limit: 20, remaining: 19, reset: 1, policy: LimitKind::Global, window: 2 }.apply(&mut h);
        assert_eq!((&h["ratelimit-remaining"], &h["ratelimit-reset"]), (&"19".parse().unwrap(), &"1".parse().unwrap()));
        assert!(h["ratelimit-remaining"].is_sensitive() && h["ratelimit-reset"].is_sensitive());
        assert!(!h["ratelimit-limit"].is_sensitive() && !h["ratelimit-policy"].is_sensitive());
    }

    #[test]
    fn state_survives_rebuild_for_unchanged_clients() {
        let (cfg, l) = limits("");
        for _ in 0..3 {
            l.check(ClientId(1)).unwrap();
        }
        let rebuilt = ClientLimits::build(&cfg, Some(&l));
        assert!(rebuilt.check(ClientId(1)).is_err(), "the exhausted bucket carried over");
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
