//! The scripts' decisions against a real `redis-server` (each test starts its own on a free
//! loopback port), and the switch to the local share when Redis dies or freezes.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::{ClientId, ClusterConfig, Rate};
use crate::limit::upstream::Bucket;

/// A `redis-server` of its own, killed on drop.
pub(crate) struct TestRedis {
    child: Child,
    pub(crate) port: u16,
}

impl TestRedis {
    pub(crate) fn start() -> TestRedis {
        // A port found free can be taken again before redis-server binds it, and a loaded
        // machine can be slow to start one: a few tries, each given 10 s, and the reason kept.
        let mut why = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let log = std::env::temp_dir().join(format!("pgw-redis-unit-{port}.log"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--logfile", &log.display().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (.ci/run installs it)");
            // Owned (killed and reaped on drop) before waiting for it to listen.
            let mut redis = TestRedis { child, port };
            for _ in 0..1000 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return redis;
                }
                if let Ok(Some(_)) = redis.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            why = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("redis-server did not start: {why}");
    }

    fn signal(&self, sig: &str) {
        Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: u16, expected_replicas: u32) -> ClusterConfig {
    ClusterConfig {
        redis_url: format!("redis://127.0.0.1:{port}"),
        redis_password: None,
        key_prefix: "t".into(),
        timeout: Duration::from_millis(100),
        expected_replicas,
    }
}

async fn up(port: u16, expected: u32) -> Cluster {
    let c = Cluster::new(&config(port, expected), &Metrics::new());
    c.beat().await;
    assert!(c.is_up(), "the first heartbeat connects");
    c
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test]
async fn reserve_passes_the_burst_then_spaces_slots_and_refuses_past_max_wait() {
    let redis = TestRedis::start();
    let c = up(redis.port, 1).await;
    let (interval, tolerance) = (Duration::from_millis(100), Duration::from_millis(200)); // 10/s, burst 3
    for _ in 0..3 {
        assert_eq!(
            c.reserve("/v1/x", interval, tolerance, Duration::from_secs(1)).await,
            Admission::Granted(Duration::ZERO)
        );
    }
    let Admission::Granted(wait) = c.reserve("/v1/x", interval, tolerance, Duration::from_secs(1)).await else {
        panic!("the fourth is reserved, later")
    };
    assert!(wait > 80 * MS && wait <= interval, "{wait:?}");
    // The next slot is ~200 ms away: refused with a 50 ms wait allowed, and nothing taken.
    let Admission::Denied(retry) = c.reserve("/v1/x", interval, tolerance, 50 * MS).await else { panic!() };
    assert!(retry > 150 * MS && retry <= 200 * MS, "{retry:?}");
    let Admission::Granted(wait) = c.reserve("/v1/x", interval, tolerance, Duration::from_secs(1)).await else {
        panic!()
    };
    assert!(wait > 150 * MS && wait <= 200 * MS, "the refusal took no slot: {wait:?}");
    // Another prefix has a bucket of its own.
    assert_eq!(c.reserve("/v1/y", interval, tolerance, Duration::ZERO).await, Admission::Granted(Duration::ZERO));
}

#[tokio::test]
async fn limits_take_from_every_key_or_from_none() {
    let redis = TestRedis::start();
    let c = up(redis.port, 1).await;
    let key = |k: &str, per_second: f64, burst: u32| {
        let interval = Duration::from_secs_f64(1.0 / per_second);
        LimitKey { key: k.into(), interval, tolerance: interval * (burst - 1) }
    };
    // Client: 3 at once; global: 5 at once; both slow (0.01/s) so nothing refills meanwhile.
    let keys = [key("client:a", 0.01, 3), key("global", 0.01, 5)];
    for left in [2, 1, 0] {
        let a = c.limits(&keys).await.unwrap();
        assert_eq!((a.refused, a.remaining.clone()), (None, vec![left, left + 2]));
    }
    let a = c.limits(&keys).await.unwrap();
    assert_eq!(a.refused, Some(0), "the client's limit refuses");
    assert!(a.retry > Duration::from_secs(90), "{:?}", a.retry);
    assert_eq!(a.remaining, vec![0, 2], "and the global limit lost nothing");
    // Another client shares the global limit only.
    let b = [key("client:b", 0.01, 3), key("global", 0.01, 5)];
    assert_eq!(c.limits(&b).await.unwrap().remaining, vec![2, 1]);
    assert_eq!(c.limits(&b).await.unwrap().remaining, vec![1, 0]);
    let refused = c.limits(&b).await.unwrap();
    assert_eq!((refused.refused, refused.remaining), (Some(1), vec![1, 0]), "the global limit refuses b");
}

fn limit_key(k: &str, per_second: f64, burst: u32) -> LimitKey {
    let interval = Duration::from_secs_f64(1.0 / per_second);
    LimitKey { key: k.into(), interval, tolerance: interval * (burst - 1) }
}

/// The budget slot and the request's limits in one call: all taken, or none.
#[tokio::test]
async fn admit_takes_the_slot_and_every_limit_or_nothing() {
    let redis = TestRedis::start();
    let c = up(redis.port, 1).await;
    // Budget: 10/s, burst 2. Client: 3 at once, global: 4 at once (0.01/s: no refill meanwhile).
    let (interval, tolerance) = (Duration::from_millis(100), Duration::from_millis(100));
    let keys = [limit_key("client:a", 0.01, 3), limit_key("global", 0.01, 4)];
    let (admission, answer) = c.admit("/v1/x", interval, tolerance, Duration::from_secs(1), &keys).await;
    assert_eq!(admission, Admission::Granted(Duration::ZERO));
    let answer = answer.unwrap();
    assert_eq!((answer.refused, answer.remaining), (None, vec![2, 3]));

    // The budget has no slot within 10 ms: nothing is taken from the limits either.
    c.admit("/v1/x", interval, tolerance, Duration::from_secs(1), &[]).await;
    let (admission, answer) = c.admit("/v1/x", interval, tolerance, 10 * MS, &keys).await;
    assert!(matches!(admission, Admission::Denied(w) if w > 50 * MS), "{admission:?}");
    assert_eq!(answer.unwrap().remaining, vec![2, 3], "a refused slot takes no limit");

    // The client's limit runs out: refused by it, and the budget loses no slot.
    for _ in 0..2 {
        let (admission, _) = c.admit("/v1/y", interval, tolerance, Duration::from_secs(5), &keys).await;
        assert!(matches!(admission, Admission::Granted(_)), "{admission:?}");
    }
    let (admission, answer) = c.admit("/v1/z", interval, tolerance, Duration::from_secs(1), &keys).await;
    let answer = answer.unwrap();
    assert!(matches!(admission, Admission::Denied(_)));
    assert_eq!(answer.refused, Some(0), "the client's limit refused");
    assert!(answer.retry > Duration::from_secs(90), "{:?}", answer.retry);
    assert_eq!(answer.remaining, vec![0, 1]);
    assert_eq!(
        c.reserve("/v1/z", interval, tolerance, Duration::ZERO).await,
        Admission::Granted(Duration::ZERO),
        "/v1/z's burst is whole: the refusal took no slot"
    );
    assert_eq!(c.reserve("/v1/z", interval, tolerance, Duration::ZERO).await, Admission::Granted(Duration::ZERO));
}

/// A waiter whose shared client limit refuses is answered with that, takes no slot, and the
/// other client's waiter is still served in its turn.
#[tokio::test]
async fn a_waiter_refused_by_its_shared_limit_leaves_the_slot_to_the_next() {
    let redis = TestRedis::start();
    let c = up(redis.port, 1).await;
    let bucket = Arc::new(Bucket::new("/v1/p", Rate { per_second: 2.0, burst: 1 }, 100));
    // Client 0 may make one request in all; client 1 has no shared limit.
    let tight = vec![limit_key("client:zero", 0.01, 1)];
    let first = bucket.acquire_in(Some(&c), ClientId(0), Duration::from_secs(2), tight.clone()).await.unwrap();
    assert_eq!(first.limits.unwrap().refused, None);
    let (b0, b1, c0, c1) = (bucket.clone(), bucket.clone(), c.clone(), c.clone());
    let zero = tokio::spawn(async move { b0.acquire_in(Some(&c0), ClientId(0), Duration::from_secs(2), tight).await });
    let one =
        tokio::spawn(async move { b1.acquire_in(Some(&c1), ClientId(1), Duration::from_secs(2), Vec::new()).await });
    let zero = zero.await.unwrap().unwrap();
    let refusal = zero.limits.expect("Redis answered about the limit");
    assert_eq!(refusal.refused, Some(0), "client 0's second request is over its limit");
    let one = one.await.unwrap().unwrap();
    assert_eq!(one.limits, None, "no limits asked");
    // Two slots taken in Redis, not three: the next is at most one interval (500 ms) away.
    let interval = Duration::from_millis(500);
    match c.reserve("/v1/p", interval, Duration::ZERO, Duration::ZERO).await {
        Admission::Denied(next) => assert!(next <= interval, "client 0's refusal took a slot: {next:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn heartbeats_count_the_replicas_and_a_stopped_one_leaves() {
    let redis = TestRedis::start();
    let metrics = Metrics::new();
    let a = Cluster::new(&config(redis.port, 1), &metrics);
    let b = up(redis.port, 1).await;
    a.beat().await;
    assert_eq!(a.inner.replicas.load(Ordering::Relaxed), 2);
    assert_eq!((metrics.cluster_replicas.get(), metrics.cluster_redis_up.get()), (2, 1));
    let stop = CancellationToken::new();
    let task = tokio::spawn(b.clone().run(stop.clone()));
    tokio::time::sleep(50 * MS).await;
    stop.cancel();
    task.await.unwrap();
    a.beat().await;
    assert_eq!(a.inner.replicas.load(Ordering::Relaxed), 1, "b took itself out of the count");
}

/// Redis killed, then frozen: the next call is a local decision at once (within the timeout),
/// the share is the larger of the last count and `expected_replicas`; the heartbeat brings the
/// shared budget back.
#[tokio::test]
async fn redis_killed_or_frozen_means_the_local_share_until_it_answers() {
    let redis = TestRedis::start();
    let metrics = Metrics::new();
    let c = Cluster::new(&config(redis.port, 3), &metrics);
    assert!(!c.is_up(), "local share until the first heartbeat answers");
    assert_eq!(c.local_share(), 3);
    c.beat().await;
    assert_eq!((c.is_up(), c.local_share()), (true, 3), "1 replica seen, but 3 expected");
    let ival = Duration::from_millis(10);

    redis.signal("-STOP");
    let started = Instant::now();
    assert_eq!(c.reserve("/v1/x", ival, Duration::ZERO, Duration::from_secs(1)).await, Admission::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(300), "{:?}", started.elapsed());
    assert!(!c.is_up());
    assert_eq!(metrics.cluster_redis_up.get(), 0);
    let started = Instant::now();
    assert_eq!(c.reserve("/v1/x", ival, Duration::ZERO, Duration::from_secs(1)).await, Admission::Unavailable);
    assert!(started.elapsed() < 5 * MS, "no call at all while down: {:?}", started.elapsed());
    c.beat().await;
    assert!(!c.is_up(), "a frozen Redis does not answer the probe");
    redis.signal("-CONT");
    c.beat().await;
    assert!(c.is_up(), "back once it answers");
    assert!(matches!(c.reserve("/v1/x", ival, Duration::ZERO, Duration::from_secs(1)).await, Admission::Granted(_)));
    drop(redis);
    assert_eq!(c.reserve("/v1/x", ival, Duration::ZERO, Duration::from_secs(1)).await, Admission::Unavailable);
    assert!(!c.is_up());
}

/// Two replicas' buckets for one prefix share one budget: together they grant what one
/// would, and each keeps its local fair order.
#[tokio::test]
async fn two_buckets_share_one_budget() {
    let redis = TestRedis::start();
    let (a, b) = (up(redis.port, 2).await, up(redis.port, 2).await);
    let rate = Rate { per_second: 20.0, burst: 2 };
    let (ba, bb) = (Arc::new(Bucket::new("/v1/p", rate, 100)), Arc::new(Bucket::new("/v1/p", rate, 100)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..10u32 {
        for (bucket, cluster) in [(ba.clone(), a.clone()), (bb.clone(), b.clone())] {
            tasks.push(tokio::spawn(async move {
                bucket
                    .acquire_in(Some(&cluster), ClientId((i % 2) as usize), Duration::from_secs(5), Vec::new())
                    .await
                    .map(|_| Instant::now())
            }));
        }
    }
    let mut done: Vec<Instant> =
        futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    done.sort();
    // 20 requests at 20/s with a burst of 2: the last ~0.9 s in; two separate budgets would
    // finish in ~0.45 s.
    let took = done[19] - started;
    assert!(took >= Duration::from_millis(850), "{took:?}");
    assert!(a.is_up() && b.is_up());
}

/// Redis unavailable: a bucket paces at its local share (rate / share).
#[tokio::test]
async fn an_unavailable_redis_paces_the_bucket_at_its_share() {
    let redis = TestRedis::start();
    let c = up(redis.port, 4).await;
    drop(redis);
    let bucket = Arc::new(Bucket::new("/v1/p", Rate { per_second: 40.0, burst: 1 }, 100));
    let started = Instant::now();
    for _ in 0..5 {
        bucket.acquire_in(Some(&c), ClientId(0), Duration::from_secs(5), Vec::new()).await.unwrap();
    }
    // 10/s once the first call found Redis gone: 4 intervals of 100 ms after the first.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(390) && took < Duration::from_millis(700), "{took:?}");
}
