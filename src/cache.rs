//! The response cache's process-lifetime state (issue 12 §2): stored GET answers (moka, bounded
//! by a weigher to `[cache] max_bytes`), the identical reads in flight that later ones join, and
//! the write generations that drop a scope's entries under a budget prefix. `Runtime::build`
//! carries it across reloads while `[cache]` is unchanged; the request step that uses it is
//! `proxy::cache`, which decides what is cacheable.
//!
//! Every entry is keyed by a [`Key`] whose scope is a digest of everything that decides what
//! Palette would answer to whom: the upstream, the credential (its name and a digest of what it
//! authenticates as, never a secret in clear), and the `ProjectUid` sent. A cached answer is only
//! ever the answer to the same upstream request made with the same credential and project.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use http::{HeaderMap, HeaderValue, StatusCode};
use moka::notification::RemovalCause;
use sha2::{Digest as _, Sha256};

use crate::config::{CacheConfig, Config, CredentialKind};
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// Write generations: one counter per slot, a slot per (scope, prefix) by hash. A collision only
/// drops more entries than needed, never fewer; the table's size is fixed, so writes cannot grow
/// memory.
const GENERATION_SLOTS: usize = 4096;

/// Who asks Palette, as seen by Palette: a SHA-256 over the upstream, the credential and the
/// `ProjectUid` sent (length-prefixed fields, so no two different scopes collide by
/// concatenation). Its `Debug` shows only a short prefix of the digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Scope([u8; 32]);

impl std::fmt::Debug for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scope({})", hex::encode(&self.0[..4]))
    }
}

impl Scope {
    /// The scope of a request sent with credential `credential` of `config` and `project` (the
    /// `ProjectUid` header as it goes upstream, if any).
    pub(crate) fn new(config: &Config, credential: usize, project: Option<&HeaderValue>) -> Scope {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        field(config.upstream.scheme.as_str().as_bytes());
        field(config.upstream.authority.as_str().as_bytes());
        match config.credentials.get(credential) {
            Some(c) => {
                field(c.name.as_bytes());
                match &c.kind {
                    CredentialKind::ApiKey(key) => {
                        field(b"apikey");
                        field(key.expose().as_bytes());
                    }
                    CredentialKind::Token(t) => {
                        field(b"login");
                        field(t.email.expose().to_ascii_lowercase().as_bytes());
                        field(t.org.as_deref().unwrap_or("").as_bytes());
                    }
                }
            }
            None => field(b"no credential"),
        }
        match project {
            Some(p) => {
                field(b"project");
                field(p.as_bytes());
            }
            None => field(b"no project"),
        }
        Scope(h.finalize().into())
    }
}

/// What identifies one cached answer: the scope, and what of the request changes the answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) scope: Scope,
    /// The upstream path and query, exactly as sent.
    pub(crate) path_and_query: String,
    /// `Accept`, every value in order.
    pub(crate) accept: Vec<u8>,
    /// `Accept-Encoding`, every value in order.
    pub(crate) accept_encoding: Vec<u8>,
}

impl Key {
    /// Bytes the key takes, roughly.
    fn weight(&self) -> usize {
        64 + self.path_and_query.len() + self.accept.len() + self.accept_encoding.len()
    }
}

/// A stored (or shared) answer: what the client gets, after response hygiene.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// When Palette's answer was read (tokio's clock: `Age`, freshness).
    pub(crate) at: tokio::time::Instant,
    /// The TTL it was stored with (moka drops it after this).
    pub(crate) ttl: Duration,
    /// Its write-generation slot and the generation when its read started: a write to its scope
    /// and prefix since then makes it stale.
    pub(crate) slot: usize,
    pub(crate) generation: u64,
}

impl Stored {
    fn weight(&self, key: &Key) -> u32 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
        u32::try_from(key.weight() + headers + self.body.len() + 128).unwrap_or(u32::MAX)
    }
}

/// How a read in flight ended, shared by every request that joined it.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// An answer small enough to share (stored or not).
    Answer(Arc<Stored>),
    /// The read failed: every waiter gets the same error; nothing is stored.
    Failed(GatewayError),
    /// Larger than `max_entry_bytes`: it streamed to the request that fetched it; each waiter
    /// fetches its own.
    Unshared,
}

/// A read in flight, driven by whichever of its requests is polled (no task is spawned: the
/// first request leaving does not stop it while another still waits).
pub(crate) type Flight = Shared<BoxFuture<'static, Outcome>>;

type Flights = Arc<Mutex<HashMap<Key, (u64, Flight)>>>;

/// One request's hold on a flight. Dropped by the last request that waits for an unfinished
/// flight, it cancels the read (as a client leaving cancels an uncached one); dropped after the
/// flight ended, it lets the next identical read start afresh.
pub(crate) struct Joined {
    flights: Flights,
    key: Key,
    id: u64,
    /// The flight; await `&mut joined.flight`.
    pub(crate) flight: Flight,
    /// Whether this request started the flight.
    pub(crate) leader: bool,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        let ours = flights.get(&self.key).is_some_and(|(id, _)| *id == self.id);
        // Two holders left: the map and this request.
        if ours && (self.flight.peek().is_some() || self.flight.strong_count() <= Some(2)) {
            flights.remove(&self.key);
        }
    }
}

/// The cache: stored answers, reads in flight, write generations.
pub(crate) struct ResponseCache {
    settings: CacheConfig,
    store: moka::future::Cache<Key, Arc<Stored>>,
    flights: Flights,
    next_flight: AtomicU64,
    generations: Box<[AtomicU64]>,
    slot_hasher: std::collections::hash_map::RandomState,
    /// Bytes held, kept by the insert and the eviction listener.
    held: Arc<AtomicU64>,
    /// Set when a reload replaced this cache: it stops writing the bytes gauge.
    retired: Arc<AtomicBool>,
    bytes_gauge: prometheus::IntGauge,
}

/// moka's per-entry expiry: the TTL the answer was stored with.
struct ByTtl;

impl moka::Expiry<Key, Arc<Stored>> for ByTtl {
    #[allow(clippy::disallowed_types)] // moka's own clock; freshness is checked on tokio's
    fn expire_after_create(&self, _: &Key, value: &Arc<Stored>, _: std::time::Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

impl ResponseCache {
    /// A cache for `settings`, or `previous` when its settings are the same (a reload keeps
    /// the stored answers; each route's `cache` is read per request, so it applies at once).
    pub(crate) fn build(settings: CacheConfig, previous: Option<&Arc<ResponseCache>>, metrics: &Metrics) -> Arc<Self> {
        if let Some(p) = previous.filter(|p| p.settings == settings) {
            return p.clone();
        }
        if let Some(p) = previous {
            p.retired.store(true, Ordering::Relaxed);
        }
        let held = Arc::new(AtomicU64::new(0));
        let retired = Arc::new(AtomicBool::new(false));
        let (listener_held, listener_retired) = (held.clone(), retired.clone());
        let (gauge, evictions) = (metrics.cache_bytes.clone(), metrics.cache_evictions.clone());
        let listener_gauge = gauge.clone();
        let store = moka::future::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &Key, v: &Arc<Stored>| v.weight(k))
            .expire_after(ByTtl)
            .eviction_listener(move |k: Arc<Key>, v: Arc<Stored>, cause| {
                let weight = u64::from(v.weight(&k));
                let now = listener_held.fetch_sub(weight, Ordering::Relaxed).saturating_sub(weight);
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
                if !listener_retired.load(Ordering::Relaxed) {
                    listener_gauge.set(i64::try_from(now).unwrap_or(i64::MAX));
                }
            })
            .build();
        gauge.set(0);
        Arc::new(ResponseCache {
            settings,
            store,
            flights: Arc::default(),
            next_flight: AtomicU64::new(0),
            generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            slot_hasher: Default::default(),
            held,
            retired,
            bytes_gauge: gauge,
        })
    }

    /// The cache's bounds.
    pub(crate) fn settings(&self) -> CacheConfig {
        self.settings
    }

    /// The write-generation slot of `scope` under the budget prefix `prefix`, and its
    /// generation now.
    pub(crate) fn generation(&self, scope: &Scope, prefix: &str) -> (usize, u64) {
        let mut h = self.slot_hasher.build_hasher();
        scope.hash(&mut h);
        prefix.hash(&mut h);
        let slot = (h.finish() % GENERATION_SLOTS as u64) as usize;
        (slot, self.generations[slot].load(Ordering::Acquire))
    }

    /// A write went through `scope` under `prefix`: what was stored for them, or is being read
    /// now, is stale.
    pub(crate) fn invalidate(&self, scope: &Scope, prefix: &str) {
        let (slot, _) = self.generation(scope, prefix);
        self.generations[slot].fetch_add(1, Ordering::AcqRel);
    }

    /// The answer stored for `key`, if younger than `ttl` (the route's TTL now) and no write
    /// to its scope and prefix came since its read started.
    pub(crate) async fn get(&self, key: &Key, ttl: Duration) -> Option<Arc<Stored>> {
        let stored = self.store.get(key).await?;
        let fresh = stored.at.elapsed() < ttl.min(stored.ttl);
        let current = self.generations[stored.slot].load(Ordering::Acquire) == stored.generation;
        (fresh && current).then_some(stored)
    }

    /// Stores `stored` under `key` (unless a write made it stale already).
    pub(crate) async fn insert(&self, key: Key, stored: Arc<Stored>) {
        if self.generations[stored.slot].load(Ordering::Acquire) != stored.generation || stored.ttl.is_zero() {
            return;
        }
        let weight = u64::from(stored.weight(&key));
        self.held.fetch_add(weight, Ordering::Relaxed);
        self.store.insert(key, stored).await;
        // Evict now rather than at moka's next maintenance, so the bound holds when measured.
        self.store.run_pending_tasks().await;
        if !self.retired.load(Ordering::Relaxed) {
            self.bytes_gauge.set(i64::try_from(self.held.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        }
    }

    /// Joins the read in flight for `key`, or starts one with `start` (called under the lock,
    /// only when there is none).
    pub(crate) fn join(&self, key: &Key, start: impl FnOnce() -> BoxFuture<'static, Outcome>) -> Joined {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((id, flight)) = flights.get(key) {
            return Joined {
                flights: self.flights.clone(),
                key: key.clone(),
                id: *id,
                flight: flight.clone(),
                leader: false,
            };
        }
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        let flight = start().shared();
        flights.insert(key.clone(), (id, flight.clone()));
        Joined { flights: self.flights.clone(), key: key.clone(), id, flight, leader: true }
    }

    /// Bytes held now (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(path: &str) -> Key {
        Key { scope: Scope([1; 32]), path_and_query: path.into(), accept: Vec::new(), accept_encoding: Vec::new() }
    }

    fn stored(cache: &ResponseCache, body: usize, ttl: Duration) -> Arc<Stored> {
        let (slot, generation) = cache.generation(&Scope([1; 32]), "none");
        Arc::new(Stored {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            at: tokio::time::Instant::now(),
            ttl,
            slot,
            generation,
        })
    }

    fn cache(max_bytes: u64) -> Arc<ResponseCache> {
        ResponseCache::build(CacheConfig { max_bytes, max_entry_bytes: 1024 }, None, &Metrics::new())
    }

    /// An answer is served for its TTL and not a moment longer (tokio's paused clock).
    #[tokio::test(start_paused = true)]
    async fn ttl_on_tokios_clock() {
        let c = cache(1 << 20);
        let ttl = Duration::from_secs(5);
        c.insert(key("/a"), stored(&c, 10, ttl)).await;
        assert!(c.get(&key("/a"), ttl).await.is_some());
        tokio::time::advance(Duration::from_millis(4900)).await;
        assert!(c.get(&key("/a"), ttl).await.is_some());
        assert!(c.get(&key("/a"), Duration::from_secs(2)).await.is_none(), "a shorter route TTL applies at once");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(c.get(&key("/a"), ttl).await.is_none());
    }

    /// A write to the scope and prefix makes what was stored, and what is being read, stale.
    #[tokio::test]
    async fn a_write_drops_its_scope() {
        let c = cache(1 << 20);
        let ttl = Duration::from_secs(5);
        c.insert(key("/a"), stored(&c, 10, ttl)).await;
        let in_flight = stored(&c, 10, ttl);
        c.invalidate(&Scope([2; 32]), "none");
        assert!(c.get(&key("/a"), ttl).await.is_some(), "another scope's write changes nothing");
        c.invalidate(&Scope([1; 32]), "none");
        assert!(c.get(&key("/a"), ttl).await.is_none());
        c.insert(key("/b"), in_flight).await;
        assert!(c.get(&key("/b"), ttl).await.is_none(), "a read that started before the write is not stored");
    }

    /// However many distinct answers arrive, the bytes held stay within max_bytes.
    #[tokio::test]
    async fn bounded_by_max_bytes() {
        let c = cache(20_000);
        for i in 0..500 {
            c.insert(key(&format!("/k/{i}")), stored(&c, 900, Duration::from_secs(60))).await;
            assert!(c.held() <= 20_000, "{} held after {i}", c.held());
        }
        assert!(c.held() > 10_000, "the cache is used: {}", c.held());
    }

    /// The scope digest differs with the credential's key and the project; its Debug shows no secret.
    #[test]
    fn scopes_differ_and_hide_secrets() {
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.a]\napi_key_env = \"A\"\n[credentials.b]\napi_key_env = \"B\"\n";
        let env = crate::config::MapEnv::new().with("A", "key-a-secret").with("B", "key-b-secret");
        let cfg = crate::config::load_str(text, std::path::Path::new("."), &env).unwrap();
        let p1 = HeaderValue::from_static("p1");
        let scopes = [
            Scope::new(&cfg, 0, None),
            Scope::new(&cfg, 1, None),
            Scope::new(&cfg, 0, Some(&p1)),
            Scope::new(&cfg, 1, Some(&p1)),
        ];
        for (i, a) in scopes.iter().enumerate() {
            for b in &scopes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(!format!("{:?}", key("/x")).contains("secret"));
        assert_eq!(Scope::new(&cfg, 0, Some(&p1)), Scope::new(&cfg, 0, Some(&p1)));
    }
}
