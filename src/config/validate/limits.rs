//! The bounds every number in the file keeps (rates, bursts, durations), and `[rate_limit]`'s rates.

use std::time::Duration;

use crate::config::file::{RawConfig, RawRate};
use crate::config::problems::Problems;
use crate::config::Rate;

/// Rates and bursts are bounded so that every limiter built from them (client GCRAs, budget
/// buckets, `Retry-After` arithmetic) stays far from overflow: one request per 1000 s at the
/// slowest, a million per second and a burst of a million at the most.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_BURST: u32 = 1_000_000;

pub(super) fn rate(r: RawRate, field: &str, p: &mut Problems) -> Option<Rate> {
    if !(r.per_second.is_finite() && (MIN_RATE..=MAX_RATE).contains(&r.per_second)) {
        p.add(format!("{field}.per_second"), "must be a number from 0.001 (one request per 1000 s) to 1000000");
        return None;
    }
    let burst = match r.burst {
        Some(0) => {
            p.add(format!("{field}.burst"), "must be at least 1");
            return None;
        }
        Some(b) if b > MAX_BURST => {
            p.add(format!("{field}.burst"), format!("must be at most {MAX_BURST}"));
            return None;
        }
        Some(b) => b,
        // One second's worth, at least one request.
        None => r.per_second.ceil().max(1.0) as u32,
    };
    Some(Rate { per_second: r.per_second, burst })
}

/// The longest any duration key may be. Far above every sane setting, and far below what
/// would overflow when added to a clock reading (`400000000000years` would panic a request).
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Every duration key of the file, bounded by [`MAX_DURATION`].
pub(super) fn duration_bounds(raw: &RawConfig, p: &mut Problems) {
    let s = &raw.server;
    let u = &raw.upstream;
    let mut keys: Vec<(String, Option<Duration>)> = vec![
        ("server.header_read_timeout".into(), s.header_read_timeout),
        ("server.idle_timeout".into(), s.idle_timeout),
        ("server.request_body_timeout".into(), s.request_body_timeout),
        ("server.send_timeout".into(), s.send_timeout),
        ("server.shutdown_delay".into(), s.shutdown_delay),
        ("server.drain_timeout".into(), s.drain_timeout),
        ("upstream.connect_timeout".into(), u.connect_timeout),
        ("upstream.request_timeout".into(), u.request_timeout),
        ("upstream.body_idle_timeout".into(), u.body_idle_timeout),
        ("upstream.limits.max_wait".into(), u.limits.max_wait),
    ];
    if let Some(k) = &raw.auth.kubernetes {
        keys.push(("auth.kubernetes.cache_ttl".into(), k.cache_ttl));
        keys.push(("auth.kubernetes.timeout".into(), k.timeout));
    }
    for (i, r) in raw.routes.iter().enumerate() {
        keys.push((format!("routes[{i}].cache.ttl"), r.cache.as_ref().map(|c| c.ttl)));
    }
    for (name, c) in &raw.credentials {
        keys.push((format!("credentials.{name}.token_lifetime"), c.token_lifetime));
        keys.push((format!("credentials.{name}.refresh_before"), c.refresh_before));
    }
    for (field, d) in keys {
        if d.is_some_and(|d| d > MAX_DURATION) {
            p.add(field, "must be at most 1 day (\"24h\")");
        }
    }
}

pub(super) fn positive(d: Duration, field: &str, p: &mut Problems) -> Duration {
    if d.is_zero() {
        p.add(field, "must be greater than zero");
    }
    d
}

#[cfg(test)]
mod tests {
    use super::super::tests::{base, problems};

    #[test]
    fn durations_past_a_day_are_refused_by_field() {
        let huge = "\"400000000000years\"";
        let text = format!(
            "[server]\nidle_timeout = {huge}\nrequest_body_timeout = \"25h\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\nrequest_timeout = {huge}\n[upstream.limits]\nmax_wait = {huge}\n\
             [credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n"
        );
        let p = problems(&text);
        for field in [
            "server.idle_timeout",
            "server.request_body_timeout",
            "upstream.request_timeout",
            "upstream.limits.max_wait",
        ] {
            assert!(p.contains(&format!("{field}: must be at most 1 day (\"24h\")")), "{field}: {p:?}");
        }
        assert!(problems(&format!("[server]\nidle_timeout = \"24h\"\n{}", base())).is_empty());
    }

    #[test]
    fn rates_and_bursts_are_bounded() {
        let p = problems(&format!(
            "{}[rate_limit]\ndefault = {{ per_second = 1e-12, burst = 4000000000 }}\nglobal = {{ per_second = 1, burst = 4000000000 }}\n",
            base()
        ));
        assert!(p.iter().any(|l| l.starts_with("rate_limit.default.per_second: must be a number from 0.001")), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("rate_limit.global.burst: must be at most 1000000")), "{p:?}");
        let p = problems(&base().replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\n[upstream.limits]\nreplicas = 1000000\n",
        ));
        assert_eq!(p, vec!["upstream.limits.replicas: must be at most 1000".to_string()]);
    }
}
