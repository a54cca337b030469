//! `[cluster]`: three gateways behind one egress IP share Palette's budget and the clients'
//! limits through one Redis, against the fake Palette enforcing its per-IP limits; Redis
//! killed or frozen mid-run sends each replica to its local share at once, and back.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use fake_palette::{FakePalette, FakePaletteConfig, FakeRateLimits};
use palette_gateway::app::RunningGateway;
use palette_gateway::auth::key_hash_string;
use palette_gateway::config;

const HEAVY_KEY: &str = "pgw_heavy-local-key-dddddddddddddddddddddddddddddd";
const LIGHT_KEY: &str = "pgw_light-local-key-eeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const CAPPED_KEY: &str = "pgw_capped-local-key-ffffffffffffffffffffffffffffff";

/// The budget of the one prefix the load uses: below the fake's 10/s for `/v1/packs`.
const RATE: f64 = 8.0;
const BURST: f64 = 2.0;
/// The capped client's own limit (across all replicas).
const CAPPED_RATE: f64 = 1.0;
const CAPPED_BURST: f64 = 2.0;

/// One replica's config: the shared budget in `redis_url`, three clients (one capped).
fn replica_config(fake: &FakePalette, redis_url: &str, timeout: &str) -> config::Config {
    replica_config_with(fake, redis_url, timeout, "", &standard_env())
}

/// [`replica_config`] with more `[cluster]` lines and another environment.
fn replica_config_with(
    fake: &FakePalette,
    redis_url: &str,
    timeout: &str,
    cluster_extra: &str,
    env: &config::MapEnv,
) -> config::Config {
    let upstream = format!(
        "[upstream.limits]\npreset = \"none\"\nmax_wait = \"1s\"\n[[upstream.limits.prefix]]\nprefix = \"/v1/packs\"\nper_second = {RATE}\nburst = {BURST}\n"
    );
    let rules = format!(
        "[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\
         [cluster]\nredis_url = \"{redis_url}\"\nkey_prefix = \"e2e\"\ntimeout = \"{timeout}\"\nexpected_replicas = 3\n{cluster_extra}\n\
         [[clients]]\nname = \"heavy\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\n\
         [[clients]]\nname = \"light\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\n\
         [[clients]]\nname = \"capped\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\nrate_limit = {{ per_second = {CAPPED_RATE}, burst = {CAPPED_BURST} }}\n",
        key_hash_string(HEAVY_KEY),
        key_hash_string(LIGHT_KEY),
        key_hash_string(CAPPED_KEY),
    );
    let text = gateway_config(&fake.url(), &upstream, &rules);
    config::load_str(&text, Path::new("."), env).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

struct Cluster {
    fake: TrackedFake,
    replicas: Vec<RunningGateway>,
    http: reqwest::Client,
}

impl Cluster {
    /// The fake Palette (its per-IP limits strict: one second of burst) and three replicas,
    /// each shown the shared budget (its heartbeat answered) before the test starts.
    async fn start(redis: &RedisServer, timeout: &str) -> Cluster {
        init_logs();
        let fake_cfg =
            FakePaletteConfig { rate_limits: Some(FakeRateLimits { burst_seconds: 1.0 }), ..standard_fake() };
        let fake = FakePalette::start(fake_cfg).await.expect("fake palette starts");
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(RunningGateway::start(replica_config(&fake, &redis.url(), timeout)).await.unwrap());
        }
        let c = Cluster { fake: TrackedFake(fake), replicas, http: client() };
        assert!(
            c.all(Duration::from_secs(3), |s| up(s) == 1.0 && replica_count(s) == 3.0).await,
            "the replicas see each other"
        );
        c
    }

    async fn samples(&self, i: usize) -> Vec<Sample> {
        scrape(&self.http, &format!("http://{}", self.replicas[i].admin_addr)).await
    }

    /// Whether every replica's metrics come to satisfy `check` within `within`.
    async fn all(&self, within: Duration, check: impl Fn(&[Sample]) -> bool) -> bool {
        let check = &check;
        eventually(within, || async move {
            for i in 0..self.replicas.len() {
                if !check(&self.samples(i).await) {
                    return false;
                }
            }
            true
        })
        .await
    }
}

fn up(s: &[Sample]) -> f64 {
    metric(s, "palette_gateway_cluster_redis_up", &[])
}

fn replica_count(s: &[Sample]) -> f64 {
    metric(s, "palette_gateway_cluster_replicas", &[])
}

/// One answer the load saw: replica, client, status, when.
#[derive(Clone, Copy)]
struct Seen {
    replica: usize,
    client: &'static str,
    status: u16,
    at: Instant,
}

/// Load on every replica for `run`: the heavy client with four requests at a time, the light
/// and the capped one with one each (pausing after a 429 so as not to spin).
async fn load(c: &Cluster, run: Duration) -> Vec<Seen> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + run;
    let mut tasks = Vec::new();
    for (replica, g) in c.replicas.iter().enumerate() {
        let url = format!("http://{}/v1/packs", g.proxy_addr);
        for (client, key, loops) in [("heavy", HEAVY_KEY, 4), ("light", LIGHT_KEY, 1), ("capped", CAPPED_KEY, 1)] {
            for _ in 0..loops {
                let (http, url, seen) = (c.http.clone(), url.clone(), seen.clone());
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < until {
                        let status = match http.get(&url).header("ApiKey", key).send().await {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 599,
                        };
                        seen.lock().unwrap().push(Seen { replica, client, status, at: Instant::now() });
                        if status == 429 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }));
            }
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = seen.lock().unwrap().clone();
    v
}

fn count(seen: &[Seen], f: impl Fn(&Seen) -> bool) -> usize {
    seen.iter().filter(|s| f(s)).count()
}

/// The forwarded `/v1/packs` requests the fake counted.
fn palette_sends(c: &Cluster) -> usize {
    c.fake.requests().iter().filter(|r| r.path_and_query.starts_with("/v1/packs")).count()
}

/// Three replicas behind one IP, every client busy on each: Palette never answers 429, the
/// total stays within the one budget (not three), the light client gets its fair turn beside
/// the heavy one, and the capped client's `rate_limit` holds across the three together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_budget_and_one_client_limit() {
    let redis = RedisServer::start();
    let c = Cluster::start(&redis, "200ms").await;
    let run = Duration::from_millis(2500);
    let seen = load(&c, run).await;
    // Requests sent before the end may wait up to `max_wait` (1 s) for their slot.
    let secs = run.as_secs_f64() + 1.0;
    assert_eq!(count(&seen, |s| s.status >= 500), 0, "no 5xx");
    assert_eq!(c.fake.throttled(), 0, "Palette answered 429");
    let sent = palette_sends(&c) as f64;
    assert!(sent <= RATE * secs + BURST + 2.0, "{sent} sends in {secs:.1}s: more than one budget");
    assert!(sent >= RATE * run.as_secs_f64() * 0.6, "{sent} sends: the budget was not used");
    let ok = |client: &str| count(&seen, |s| s.client == client && s.status == 200) as f64;
    let (heavy, light, capped) = (ok("heavy"), ok("light"), ok("capped"));
    assert!(capped <= CAPPED_BURST + CAPPED_RATE * secs + 1.0, "capped passed {capped} times across the replicas");
    assert!(capped >= 1.0);
    assert!(light >= 0.3 * (heavy + light), "light {light} vs heavy {heavy}: not a fair share");
    for r in 0..3 {
        assert!(count(&seen, |s| s.replica == r && s.status == 200) > 0, "replica {r} served nothing");
    }
}

/// What the load saw after `from`: each replica's successes per second, and the 5xx count.
fn after(seen: &[Seen], from: Instant) -> (Vec<f64>, usize) {
    let secs = seen.iter().filter(|s| s.at >= from).map(|s| s.at).max().map_or(1.0, |m| (m - from).as_secs_f64());
    let per =
        (0..3).map(|r| count(seen, |s| s.at >= from && s.replica == r && s.status == 200) as f64 / secs).collect();
    (per, count(seen, |s| s.at >= from && s.status >= 500))
}

/// Redis killed under load (`freeze`: frozen with SIGSTOP instead): each replica turns to its
/// local share (the budget / 3) within the timeout, with no 5xx and no 429 from Palette; Redis
/// back: the replicas share again.
async fn redis_goes_away_under_load(freeze: bool) {
    let mut redis = RedisServer::start();
    let c = Arc::new(Cluster::start(&redis, "50ms").await);
    let load_task = tokio::spawn({
        let c = c.clone();
        async move { load(&c, Duration::from_millis(2500)).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let gone = Instant::now();
    if freeze {
        redis.freeze();
    } else {
        redis.kill();
    }
    // Requests keep flowing: the first Redis call of each replica (the capped client's limits,
    // a budget slot, or at the latest the heartbeat every 500 ms) fails or times out (50 ms).
    assert!(c.all(Duration::from_millis(600), |s| up(s) == 0.0).await, "a replica kept waiting on Redis");
    let local = gone + Duration::from_millis(600);
    let seen = load_task.await.unwrap();
    assert_eq!(count(&seen, |s| s.status >= 500), 0, "no 5xx");
    assert_eq!(c.fake.throttled(), 0, "Palette answered 429");
    let (per_replica, _) = after(&seen, local);
    for (r, rate) in per_replica.iter().enumerate() {
        // The local share is 8/3 ≈ 2.7/s (the capped client's share is on top, < 1/s).
        assert!(*rate <= RATE / 3.0 * 1.5 + 0.7, "replica {r}: {rate:.1}/s alone: more than its share");
        assert!(*rate >= 1.0, "replica {r}: {rate:.1}/s: it stopped serving");
    }
    for i in 0..3 {
        let s = c.samples(i).await;
        assert!(metric(&s, "palette_gateway_cluster_local_decisions_total", &[("limit", "upstream")]) > 0.0);
    }
    if freeze {
        redis.thaw();
    } else {
        redis.restart();
    }
    assert!(c.all(Duration::from_secs(3), |s| up(s) == 1.0).await, "the replicas share again once Redis is back");
    // And shared means the whole budget again: one replica alone gets more than its share.
    let url = format!("http://{}/v1/packs", c.replicas[0].proxy_addr);
    let started = Instant::now();
    let mut ok = 0;
    while started.elapsed() < Duration::from_millis(1000) {
        let r = c.http.get(&url).header("ApiKey", LIGHT_KEY).send().await.unwrap();
        ok += usize::from(r.status() == 200);
    }
    assert!(ok as f64 > RATE / 3.0 * 1.5 + 1.0, "{ok} in 1 s on one replica: still on its local share");
}

/// Redis killed mid-run (and restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_drops_each_replica_to_its_share_and_back() {
    redis_goes_away_under_load(false).await;
}

/// Redis frozen (SIGSTOP) mid-run (and thawed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_mid_run_drops_each_replica_to_its_share_and_back() {
    redis_goes_away_under_load(true).await;
}

/// `/readyz` does not depend on Redis: a gateway whose Redis never answered is ready (and
/// serves on its local share).
#[tokio::test]
async fn ready_without_redis() {
    let mut redis = RedisServer::start();
    redis.kill();
    init_logs();
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    let g = RunningGateway::start(replica_config(&fake, &redis.url(), "20ms")).await.unwrap();
    let http = client();
    let admin = format!("http://{}", g.admin_addr);
    assert_eq!(http.get(format!("{admin}/readyz")).send().await.unwrap().status(), 200);
    let r = http.get(format!("http://{}/v1/packs", g.proxy_addr)).header("ApiKey", LIGHT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up(&scrape(&http, &admin).await), 0.0);
}

const REDIS_PASSWORD: &str = "pgw_redis-password-0123456789abcdefghij";

/// A Redis that requires a password: with the password from the environment the replica shares
/// the budget; with a wrong one it stays on its local share (still serving); and the password
/// is in no log line either way.
#[tokio::test]
async fn the_redis_password_comes_from_the_environment_and_never_reaches_the_logs() {
    let redis = RedisServer::start_with(&["--requirepass", REDIS_PASSWORD]);
    init_logs();
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    let http = client();
    let extra = "redis_password_env = \"REDIS_PASSWORD\"";
    let env = standard_env().with("REDIS_PASSWORD", REDIS_PASSWORD);
    let good = RunningGateway::start(replica_config_with(&fake, &redis.url(), "200ms", extra, &env)).await.unwrap();
    let admin = format!("http://{}", good.admin_addr);
    let shared = eventually(Duration::from_secs(3), || async { up(&scrape(&http, &admin).await) == 1.0 }).await;
    assert!(shared, "the password from REDIS_PASSWORD was used");

    let env = standard_env().with("REDIS_PASSWORD", "pgw_wrong-redis-password-0123456789abc");
    let wrong = RunningGateway::start(replica_config_with(&fake, &redis.url(), "200ms", extra, &env)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let admin = format!("http://{}", wrong.admin_addr);
    assert_eq!(up(&scrape(&http, &admin).await), 0.0, "a wrong password is Redis unavailable");
    let r = http.get(format!("http://{}/v1/packs", wrong.proxy_addr)).header("ApiKey", LIGHT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200, "and the replica serves on its local share");
    let logs = std::fs::read_to_string(log_file()).unwrap_or_default();
    assert!(logs.contains("cannot connect to Redis"), "the failure is logged");
    assert!(!logs.contains(REDIS_PASSWORD) && !logs.contains("pgw_wrong-redis-password"), "a password in the logs");
}

/// The status page shows the cluster: `shared` with the replicas Redis has seen while Redis
/// answers, `local` (each replica on its share) once it is gone; never the Redis URL.
#[tokio::test]
async fn the_status_page_shows_the_cluster_state() {
    let mut redis = RedisServer::start();
    init_logs();
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    let g = RunningGateway::start(replica_config(&fake, &redis.url(), "100ms")).await.unwrap();
    let http = client();
    let admin = format!("http://{}", g.admin_addr);
    let status = || async {
        let r = http.get(format!("{admin}/status?format=json")).send().await.unwrap();
        r.json::<serde_json::Value>().await.unwrap()
    };
    let shared = eventually(Duration::from_secs(3), || async { status().await["cluster"]["state"] == "shared" }).await;
    assert!(shared, "{}", status().await);
    let v = status().await;
    assert!(v["cluster"]["replicas_seen"].as_u64().unwrap() >= 1, "{v}");
    let html = http.get(format!("{admin}/status")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Cluster (Redis)") && html.contains("shared"), "{html}");
    assert!(!html.contains(&redis.url()) && !v.to_string().contains(&redis.url()), "the Redis URL is not shown");
    redis.kill();
    let local = eventually(Duration::from_secs(3), || async { status().await["cluster"]["state"] == "local" }).await;
    assert!(local, "{}", status().await);
}

/// Redis calls of one replica by operation (its own latency histogram's counts).
fn redis_calls(s: &[Sample], op: &str) -> f64 {
    metric(s, "palette_gateway_cluster_redis_call_duration_seconds_count", &[("op", op)])
}

/// At most one Redis round trip per request, whatever the request meets: a client with its own
/// `rate_limit` and a global limit, forwarded through a budget prefix (one `budget` call that
/// takes the slot and both limits), forwarded where no prefix covers the path or answered from
/// the cache (one `limits` call), refused by policy (none). And the shared limits still hold.
#[tokio::test]
async fn each_request_makes_at_most_one_redis_round_trip() {
    let redis = RedisServer::start();
    init_logs();
    let fake = FakePalette::start(FakePaletteConfig { session_cookie: false, ..standard_fake() }).await.unwrap();
    let upstream = "[upstream.limits]\npreset = \"none\"\nmax_wait = \"1s\"\n[[upstream.limits.prefix]]\nprefix = \"/v1/packs\"\nper_second = 1000\nburst = 1000\n";
    let rules = format!(
        "[rate_limit]\nglobal = {{ per_second = 1000, burst = 1000 }}\n\
         [credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\
         [cluster]\nredis_url = \"{}\"\nkey_prefix = \"e2e-one\"\ntimeout = \"500ms\"\nexpected_replicas = 1\n\
         [[routes]]\nname = \"dash\"\npath_prefix = \"/v1/dashboard\"\ncache = {{ ttl = \"60s\" }}\n\
         [[clients]]\nname = \"capped\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\nallow = [\"GET /v1/packs\", \"GET /v1/dashboard/**\", \"GET /v1/clusterprofiles\"]\n\
         rate_limit = {{ per_second = 0.01, burst = 12 }}\n",
        redis.url(),
        key_hash_string(CAPPED_KEY),
    );
    let text = gateway_config(&fake.url(), upstream, &rules);
    let cfg = config::load_str(&text, Path::new("."), &standard_env()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let g = RunningGateway::start(cfg).await.unwrap();
    let http = client();
    let admin = format!("http://{}", g.admin_addr);
    assert!(eventually(Duration::from_secs(3), || async { up(&scrape(&http, &admin).await) == 1.0 }).await);
    let calls = || async {
        let s = scrape(&http, &admin).await;
        (redis_calls(&s, "budget"), redis_calls(&s, "limits"))
    };
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), format!("http://{}{path}", g.proxy_addr));
        async move {
            let r = http.get(url).header("ApiKey", CAPPED_KEY).send().await.unwrap();
            let remaining = r.headers().get("ratelimit-remaining").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_string()), remaining)
        }
    };

    let before = calls().await;
    for _ in 0..3 {
        assert_eq!(get("/v1/packs").await.0, 200);
    }
    assert_eq!(calls().await, (before.0 + 3.0, before.1), "a forwarded request: one budget call with its limits");

    let before = calls().await;
    for _ in 0..2 {
        assert_eq!(get("/v1/clusterprofiles").await.0, 200);
    }
    assert_eq!(calls().await, (before.0, before.1 + 2.0), "no budget prefix: one limits call");

    let (status, x_cache, _) = get("/v1/dashboard/projects").await;
    assert_eq!((status, x_cache.as_deref()), (200, Some("miss")));
    let before = calls().await;
    let (status, x_cache, _) = get("/v1/dashboard/projects").await;
    assert_eq!((status, x_cache.as_deref()), (200, Some("hit")));
    assert_eq!(calls().await, (before.0, before.1 + 1.0), "a cached answer: one limits call");

    let before = calls().await;
    assert_eq!(get("/v1/spectroclusters").await.0, 403);
    assert_eq!(calls().await, before, "refused by policy: no Redis call");

    // 7 taken in Redis so far (the refused one took nothing there; this replica's full-rate
    // guard counted 8). A second replica takes the rest of the burst of 12 ...
    let cfg2 = config::load_str(&text, Path::new("."), &standard_env()).unwrap();
    let g2 = RunningGateway::start(cfg2).await.unwrap();
    let admin2 = format!("http://{}", g2.admin_addr);
    assert!(eventually(Duration::from_secs(3), || async { up(&scrape(&http, &admin2).await) == 1.0 }).await);
    let get2 = || {
        let (http, url) = (http.clone(), format!("http://{}/v1/packs", g2.proxy_addr));
        async move {
            let r = http.get(url).header("ApiKey", CAPPED_KEY).send().await.unwrap();
            let remaining = r.headers().get("ratelimit-remaining").map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), remaining)
        }
    };
    assert_eq!(get2().await, (200, Some("4".into())), "RateLimit-Remaining comes from Redis's answer");
    for _ in 0..4 {
        assert_eq!(get2().await.0, 200);
    }
    // ... so Redis, not this replica's own guard (9 of 12), refuses the next one here.
    let before = calls().await;
    let (status, _, remaining) = get("/v1/packs").await;
    assert_eq!((status, remaining.as_deref()), (429, Some("0")), "the client's limit holds across replicas");
    assert_eq!(calls().await, (before.0 + 1.0, before.1), "and its refusal was the one call");
    let sends = fake.requests().iter().filter(|r| r.path_and_query == "/v1/packs").count();
    assert_eq!(sends, 8, "the refused request never reached Palette");
}
