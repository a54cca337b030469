//! `[cache]` and each route's `cache = { ttl, coalesce }`.

use std::time::Duration;

use http::Method;

use crate::config::file::{RawCache, RawRouteCache};
use crate::config::problems::Problems;
use crate::config::{CacheConfig, RouteCache};

/// Default `[cache] max_bytes`: 64 MiB.
const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default `[cache] max_entry_bytes`: 1 MiB.
const DEFAULT_MAX_ENTRY_BYTES: u64 = 1024 * 1024;
/// The largest `max_entry_bytes`: a coalesced answer is buffered whole while it is shared, so
/// this bounds the memory one in-flight read may take.
const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;
/// The largest `max_bytes` (16 GiB): far beyond any sane setting.
const MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// The longest `ttl`: a cache that old hides Palette's changes for too long to be useful.
const MAX_TTL: Duration = Duration::from_secs(60 * 60);

/// `[cache]`, with defaults.
pub(super) fn cache(raw: &RawCache, p: &mut Problems) -> CacheConfig {
    let max_bytes = raw.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let max_entry_bytes = raw.max_entry_bytes.unwrap_or(DEFAULT_MAX_ENTRY_BYTES.min(max_bytes));
    if !(1..=MAX_BYTES).contains(&max_bytes) {
        p.add("cache.max_bytes", format!("must be from 1 to {MAX_BYTES} bytes"));
    }
    if !(1..=MAX_ENTRY_BYTES).contains(&max_entry_bytes) {
        p.add("cache.max_entry_bytes", format!("must be from 1 to {MAX_ENTRY_BYTES} bytes"));
    } else if max_entry_bytes > max_bytes {
        p.add("cache.max_entry_bytes", format!("must not exceed cache.max_bytes ({max_bytes})"));
    }
    CacheConfig { max_bytes, max_entry_bytes }
}

/// A route's `cache`: only GET answers are cached, so the route must allow GET, and the
/// setting must do something.
pub(super) fn route_cache(
    raw: &RawRouteCache,
    methods: Option<&[Method]>,
    field: &str,
    p: &mut Problems,
) -> Option<RouteCache> {
    let before = p.count();
    if raw.ttl > MAX_TTL {
        p.add(format!("{field}.cache.ttl"), "must be at most 1h");
    }
    if raw.ttl.is_zero() && !raw.coalesce {
        p.add(format!("{field}.cache"), "ttl = \"0s\" without coalesce = true does nothing: remove it or set one");
    }
    if methods.is_some_and(|ms| !ms.contains(&Method::GET)) {
        p.add(format!("{field}.cache"), "only GET answers are cached, and this route's methods exclude GET");
    }
    (p.count() == before).then_some(RouteCache { ttl: raw.ttl, coalesce: raw.coalesce })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{base, problems};

    #[test]
    fn cache_rules() {
        let text = format!(
            "{}[cache]\nmax_bytes = 1000\nmax_entry_bytes = 2000\n[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\ncache = {{ ttl = \"0s\" }}\n[[routes]]\nname = \"b\"\npath_prefix = \"/b\"\nmethods = [\"POST\"]\ncache = {{ ttl = \"2h\", coalesce = true }}\n",
            base()
        );
        let p = problems(&text);
        for want in [
            "cache.max_entry_bytes: must not exceed cache.max_bytes",
            "routes[0].cache: ttl = \"0s\" without coalesce",
            "routes[1].cache.ttl: must be at most 1h",
            "routes[1].cache: only GET",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "{want}: {p:?}");
        }
        let text = format!(
            "{}[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\ncache = {{ ttl = \"5s\", extra = 1 }}\n",
            base()
        );
        assert!(problems(&text).iter().any(|l| l.contains("extra")), "unknown keys refused");
    }
}
