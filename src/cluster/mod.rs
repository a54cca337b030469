//! Replicas that share one budget through Redis (`[cluster]`).
//!
//! Every admission decision of the upstream budget and of the client/global limits is one
//! atomic script in Redis (GCRA, like the local limiters; see [`script`]), so that all replicas
//! together stay within Palette's per-IP limits and each client's `rate_limit`. The local
//! queueing and fair order stay in [`crate::limit`]: Redis only says when the next slot is.
//!
//! Redis is never trusted to be there: every call has [`ClusterConfig::timeout`], and the
//! first one that fails or is late switches the replica to its local share at once (each
//! limit divided by the replica count, see [`Cluster::local_share`]): never the full budget
//! per replica (fail open), never nothing (fail closed). The heartbeat task ([`Cluster::run`],
//! owned by the app's task tracker) counts the replicas and is the only probe: when Redis
//! answers it again, the shared budget is back.

mod script;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, IntGauge};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ClusterConfig;
use crate::metrics::Metrics;

/// How often a replica heartbeats (and, while Redis is unavailable, probes it).
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// A replica that has not heartbeaten for this long no longer counts.
const REPLICA_TTL: Duration = Duration::from_secs(3);

/// What Redis said about the next slot of an upstream budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A slot is reserved: send after waiting this long.
    Granted(Duration),
    /// The next slot is further away than the wait allowed (this long); nothing was taken.
    Denied(Duration),
    /// Redis did not answer in time: decide on the local share.
    Unavailable,
}

/// What Redis said about a request's client and global limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsAnswer {
    /// Which limit refused (index into the keys asked about); `None`: admitted.
    pub refused: Option<usize>,
    /// Until the refusing limit would pass.
    pub retry: Duration,
    /// Requests each limit would still let through.
    pub remaining: Vec<u32>,
}

/// One limit to ask Redis about: its key (under the key prefix) and its GCRA.
#[derive(Debug, Clone)]
pub struct LimitKey {
    /// The key without the prefix (`client:NAME`, `global`).
    pub key: String,
    /// Time between two requests at the sustained rate.
    pub interval: Duration,
    /// How far ahead of the schedule a burst may run (`interval * (burst - 1)`).
    pub tolerance: Duration,
}

/// The handle on the shared budget: cheap to clone, carried across reloads while the
/// `[cluster]` section stays the same.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClusterConfig,
    /// `None` only if the validated URL could not be turned into a client: always local.
    client: Option<redis::Client>,
    /// This replica's name in the replicas' set.
    id: String,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    /// Whether a first outcome (Redis answering or not) was logged: a Redis that never answers
    /// is logged once too.
    told: AtomicBool,
    /// The replica count last seen in Redis (0: none seen yet).
    replicas: AtomicU32,
    m_up: IntGauge,
    m_replicas: IntGauge,
    m_latency: HistogramVec,
    m_local: IntCounterVec,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("up", &self.is_up()).field("share", &self.local_share()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// A handle for `config`; Redis counts as unavailable (local share) until the first
    /// heartbeat answers.
    pub fn new(config: &ClusterConfig, metrics: &Metrics) -> Cluster {
        let client = connection_info(config).and_then(|info| redis::Client::open(info).ok());
        if client.is_none() {
            tracing::error!(url = %config.redis_url, "cluster.redis_url cannot be used; every replica keeps to its local share");
        }
        let id = format!("{:016x}-{}", rand::random::<u64>(), std::process::id());
        metrics.cluster_redis_up.set(0);
        Cluster {
            inner: Arc::new(Inner {
                config: config.clone(),
                client,
                id,
                conn: Mutex::new(None),
                up: AtomicBool::new(false),
                told: AtomicBool::new(false),
                replicas: AtomicU32::new(0),
                m_up: metrics.cluster_redis_up.clone(),
                m_replicas: metrics.cluster_replicas.clone(),
                m_latency: metrics.cluster_redis_duration.clone(),
                m_local: metrics.cluster_local_decisions.clone(),
            }),
        }
    }

    /// The section this handle was built from.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// Whether two handles are the same (a reload kept it).
    pub fn same(&self, other: &Cluster) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether decisions are shared through Redis right now.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// What each limit is divided by while Redis is unavailable: the replica count last seen,
    /// or `expected_replicas` if that is more (a count seen before a scale-up must not let
    /// each replica take more than its share).
    pub fn local_share(&self) -> u32 {
        self.inner.replicas.load(Ordering::Relaxed).max(self.inner.config.expected_replicas).max(1)
    }

    /// The replica count last seen heartbeating in Redis (0: none seen yet).
    pub fn replicas_seen(&self) -> u32 {
        self.inner.replicas.load(Ordering::Relaxed)
    }

    /// Counts a decision made on the local share (`limit`: `upstream` or `client`).
    pub(crate) fn local_decision(&self, limit: &str) {
        self.inner.m_local.with_label_values(&[limit]).inc();
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.inner.config.key_prefix)
    }

    /// Reserves the next slot of the budget `label` if it comes within `max_wait` (the
    /// request path asks through [`Cluster::admit`], with the request's limits).
    #[cfg(test)]
    pub(crate) async fn reserve(
        &self,
        label: &str,
        interval: Duration,
        tolerance: Duration,
        max_wait: Duration,
    ) -> Admission {
        self.admit(label, interval, tolerance, max_wait, &[]).await.0
    }

    /// [`Cluster::reserve`] and [`Cluster::limits`] in one round trip: the budget slot is
    /// reserved only if every limit of `keys` passes too, and the limits are taken only if the
    /// slot is reserved. The answer about the limits is `None` when `keys` is empty or Redis is
    /// unavailable; when a limit refused, the admission is `Denied` and the answer says which.
    pub async fn admit(
        &self,
        label: &str,
        interval: Duration,
        tolerance: Duration,
        max_wait: Duration,
        keys: &[LimitKey],
    ) -> (Admission, Option<LimitsAnswer>) {
        let mut inv = script::ADMIT.key(self.key(&format!("budget:{label}")));
        inv.arg(micros(interval).max(1)).arg(micros(tolerance)).arg(micros(max_wait));
        for k in keys {
            inv.key(self.key(&k.key)).arg(micros(k.interval).max(1)).arg(micros(k.tolerance));
        }
        let Some(out) = self.call::<Vec<i64>>("budget", &inv).await else { return (Admission::Unavailable, None) };
        let verdict = out.first().copied().unwrap_or(0);
        let wait = from_micros(out.get(1).copied().unwrap_or(0));
        let answer = (!keys.is_empty()).then(|| LimitsAnswer {
            refused: usize::try_from(-verdict.min(0)).ok().and_then(|i| i.checked_sub(1)),
            retry: if verdict < 0 { wait } else { Duration::ZERO },
            remaining: out.iter().skip(2).map(|&r| u32::try_from(r.max(0)).unwrap_or(u32::MAX)).collect(),
        });
        let admission = if verdict == 1 { Admission::Granted(wait) } else { Admission::Denied(wait) };
        (admission, answer)
    }

    /// Checks and takes one request from each of `keys` (all or nothing); `None` when Redis
    /// is unavailable.
    pub async fn limits(&self, keys: &[LimitKey]) -> Option<LimitsAnswer> {
        let mut inv = script::LIMITS.prepare_invoke();
        for k in keys {
            inv.key(self.key(&k.key)).arg(micros(k.interval).max(1)).arg(micros(k.tolerance));
        }
        let out: Vec<i64> = self.call("limits", &inv).await?;
        let refused = out.first().copied().unwrap_or(0);
        Some(LimitsAnswer {
            refused: usize::try_from(refused).ok().and_then(|i| i.checked_sub(1)),
            retry: from_micros(out.get(1).copied().unwrap_or(0)),
            remaining: out.iter().skip(2).map(|&r| u32::try_from(r.max(0)).unwrap_or(u32::MAX)).collect(),
        })
    }

    /// One script call under the timeout; a failure or a late answer switches to the local
    /// share at once. Not even tried while Redis is unavailable (the heartbeat probes it).
    async fn call<T: redis::FromRedisValue>(&self, op: &'static str, inv: &redis::ScriptInvocation<'_>) -> Option<T> {
        if !self.is_up() {
            return None;
        }
        let mut conn = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.config.timeout, inv.invoke_async(&mut conn)).await;
        self.inner.m_latency.with_label_values(&[op]).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.down(&format!("{op} call failed: {e}"));
                None
            }
            Err(_) => {
                self.down(&format!("{op} call took longer than cluster.timeout ({:?})", self.inner.config.timeout));
                None
            }
        }
    }

    /// Switches to the local share (logged once per outage) and drops the connection, so that
    /// the heartbeat probes with a fresh one.
    fn down(&self, reason: &str) {
        *self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let was_up = self.inner.up.swap(false, Ordering::AcqRel);
        let first = !self.inner.told.swap(true, Ordering::AcqRel);
        if was_up || first {
            self.inner.m_up.set(0);
            tracing::warn!(
                reason,
                share = self.local_share(),
                "Redis unavailable: this replica now admits on its local share (each limit / share) until Redis answers again"
            );
        }
    }

    /// The heartbeat task: every [`HEARTBEAT`], records this replica in Redis and reads the
    /// replica count; while Redis is unavailable this is the probe that brings the shared
    /// budget back. Ends when `cancel` fires, taking this replica out of the count.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.beat() => {}
            }
        }
        let conn = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(mut conn) = conn {
            let leave = redis::cmd("ZREM").arg(self.key("replicas")).arg(&self.inner.id).clone();
            let _ = tokio::time::timeout(self.inner.config.timeout, leave.query_async::<i64>(&mut conn)).await;
        }
    }

    async fn beat(&self) {
        let existing = self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut conn = match existing {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(reason) => return self.down(&reason),
            },
        };
        let mut inv = script::HEARTBEAT.key(self.key("replicas"));
        inv.arg(&self.inner.id).arg(REPLICA_TTL.as_millis() as u64);
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.config.timeout, inv.invoke_async::<u32>(&mut conn)).await;
        self.inner.m_latency.with_label_values(&["heartbeat"]).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(n)) => {
                let n = n.max(1);
                self.inner.replicas.store(n, Ordering::Relaxed);
                self.inner.m_replicas.set(i64::from(n));
                *self.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                self.inner.told.store(true, Ordering::Release);
                if !self.inner.up.swap(true, Ordering::AcqRel) {
                    self.inner.m_up.set(1);
                    tracing::info!(replicas = n, "Redis answers: replicas share one budget");
                }
            }
            Ok(Err(e)) => self.down(&format!("heartbeat failed: {e}")),
            Err(_) => {
                self.down(&format!("heartbeat took longer than cluster.timeout ({:?})", self.inner.config.timeout))
            }
        }
    }

    /// A fresh connection with the scripts loaded (so that a decision is one EVALSHA).
    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let client = self.inner.client.as_ref().ok_or("no usable cluster.redis_url")?;
        // Connecting is a few round trips (TCP, TLS, AUTH, script loads): a few timeouts' worth,
        // and never longer than a heartbeat.
        let bound = (self.inner.config.timeout * 5).clamp(Duration::from_millis(100), HEARTBEAT);
        let settings = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(bound)
            .set_response_timeout(self.inner.config.timeout.max(Duration::from_millis(1)));
        let connect = async {
            let mut conn = client.get_multiplexed_async_connection_with_config(&settings).await?;
            for s in [&*script::ADMIT, &*script::LIMITS, &*script::HEARTBEAT] {
                s.prepare_invoke().load_async(&mut conn).await?;
            }
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(bound, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(format!("cannot connect to Redis: {e}")),
            Err(_) => Err(format!("cannot connect to Redis within {bound:?}")),
        }
    }
}

/// The URL with the password from its `Secret` (never from the URL, which `check` refuses).
fn connection_info(config: &ClusterConfig) -> Option<redis::ConnectionInfo> {
    let url = redis::parse_redis_url(&config.redis_url)?;
    let mut info = redis::IntoConnectionInfo::into_connection_info(url).ok()?;
    info.redis.password = config.redis_password.as_ref().map(|s| s.expose().to_string());
    Some(info)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn from_micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}
