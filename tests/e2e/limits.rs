//! Client limits and the upstream budget: who gets 429, with which headers, and that Palette
//! itself never has to answer 429.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::faulty::{FaultyUpstream, Mode};
use crate::support::*;
use fake_palette::FakeRateLimits;
use palette_gateway::app::RunningGateway;
use palette_gateway::auth::key_hash_string;
use palette_gateway::config;
use palette_gateway::proxy::MAX_ATTEMPTS;

/// A gateway in front of `upstream_url` with only the API-key `admin` client (no login
/// credential, whose own calls would blur the counts).
async fn api_key_gateway(upstream_url: &str, upstream_extra: &str) -> RunningGateway {
    init_logs();
    let rules = format!(
        "[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\n[[clients]]\nname = \"admin\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\n",
        key_hash_string(ADMIN_KEY)
    );
    let text = gateway_config(upstream_url, upstream_extra, &rules);
    let cfg = config::load_str(&text, Path::new("."), &standard_env()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    RunningGateway::start(cfg).await.expect("gateway starts")
}

/// The gaps between consecutive instants.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1].duration_since(w[0])).collect()
}

/// Over its own limit a client gets 429 in Palette's shape naming it and the limit, with
/// `Retry-After` and `RateLimit-*`; successful answers carry `RateLimit-*` too; another client
/// is unaffected.
#[tokio::test]
async fn client_limit_gives_429_with_headers() {
    let rules = format!(
        "[rate_limit]\ndefault = {{ per_second = 0.5, burst = 3 }}\n{}",
        standard_rules().replacen(
            "name = \"ci\"\n",
            "name = \"ci\"\nrate_limit = { per_second = 50, burst = 50 }\n",
            1
        )
    );
    let h = Harness::start(standard_fake(), NO_BUDGET, &rules).await;
    for remaining in ["2", "1", "0"] {
        let r = h.http.get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        assert_eq!(r.headers()["ratelimit-remaining"], remaining);
        assert!(r.headers().contains_key("ratelimit-reset"));
        assert_eq!(r.headers()["ratelimit-policy"], "3;w=6;name=\"client\"");
    }
    let r = h.http.get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "TooManyRequests");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("admin") && msg.contains("client rate limit"), "{msg}");
    assert_eq!(h.forwarded().len(), 3, "the refused request never reached Palette");
    // ci has its own, larger limit.
    for _ in 0..10 {
        assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", CI_KEY).send().await.unwrap().status(), 200);
    }
    let (_, m) = h.metrics().await;
    assert_eq!(metric(&m, "palette_gateway_rate_limited_total", &[("client", "admin"), ("limit", "client")]), 1.0);
}

/// The global limit spans clients. A client without a limit of its own sees the global limit
/// in its `RateLimit-*` headers, named by `RateLimit-Policy`.
#[tokio::test]
async fn global_limit_spans_clients() {
    let rules = format!("[rate_limit]\nglobal = {{ per_second = 0.5, burst = 2 }}\n{}", standard_rules());
    let h = Harness::start(standard_fake(), NO_BUDGET, &rules).await;
    let r = h.http.get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-limit"], "2");
    assert_eq!(r.headers()["ratelimit-remaining"], "1");
    assert_eq!(r.headers()["ratelimit-policy"], "2;w=4;name=\"global\"");
    assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", CI_KEY).send().await.unwrap().status(), 200);
    let r = h.http.get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    assert_eq!(r.headers()["ratelimit-policy"], "2;w=4;name=\"global\"");
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("global rate limit"));
    let (_, m) = h.metrics().await;
    assert_eq!(metric(&m, "palette_gateway_rate_limited_total", &[("client", "admin"), ("limit", "global")]), 1.0);
}

/// Over the prefix budget, requests wait (the queue-wait histogram shows it) and past
/// `max_wait` get 429 naming the upstream budget.
#[tokio::test]
async fn upstream_budget_queues_then_refuses() {
    let extra = "[upstream.limits]\nmax_wait = \"600ms\"\n[[upstream.limits.prefix]]\nprefix = \"/v1/packs\"\nper_second = 5\nburst = 1\n";
    let h = Harness::start(standard_fake(), extra, &standard_rules()).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url) = (h.http.clone(), h.url("/v1/packs"));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = http.get(url).header("ApiKey", ADMIN_KEY).send().await.unwrap();
            (r.status().as_u16(), started.elapsed(), r.headers().get("retry-after").cloned())
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, took, retry) = t.await.unwrap();
        assert!(took < Duration::from_millis(1500), "waited {took:?}, past max_wait");
        match status {
            200 => ok += 1,
            429 => {
                refused += 1;
                assert!(retry.is_some());
            }
            other => panic!("unexpected {other}"),
        }
    }
    // 1 at once + one every 200 ms within 600 ms: 3 or 4 served.
    assert!((3..=5).contains(&ok), "{ok} served");
    assert_eq!(ok + refused, 8);
    let (_, m) = h.metrics().await;
    assert_eq!(
        metric(&m, "palette_gateway_rate_limited_total", &[("client", "admin"), ("limit", "upstream")]),
        refused as f64
    );
    assert_eq!(metric(&m, "palette_gateway_upstream_queue_wait_seconds_count", &[("prefix", "/v1/packs")]), ok as f64);
    assert!(metric(&m, "palette_gateway_upstream_queue_wait_seconds_sum", &[("prefix", "/v1/packs")]) > 0.2);
}

/// Palette answers 429 anyway: an idempotent request is retried within `max_wait` (the client
/// sees 200), the prefix is slowed down and counted; a POST gets the 429 with `Retry-After`.
#[tokio::test]
async fn palette_429_slows_down_and_retries_idempotent_requests() {
    let h = Harness::start(standard_fake(), "", &standard_rules()).await;
    h.fake.force_429(1);
    let r = h.http.get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.forwarded().len(), 2, "one 429, one retry");
    h.fake.force_429(1);
    let r = h.http.post(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let (_, m) = h.metrics().await;
    assert_eq!(metric(&m, "palette_gateway_upstream_throttled_total", &[("prefix", "/v1/packs")]), 2.0);
}

/// Three clients each send well above Palette's budget for one prefix. Palette (the fake,
/// enforcing the documented limits strictly) answers no 429; each client gets its fair share
/// (±20%); every request is answered (2xx or the gateway's 429) and none waits past `max_wait`.
#[tokio::test]
async fn three_clients_over_budget_share_it_fairly_and_palette_never_429s() {
    let keys = [
        "pgw_t1-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "pgw_t2-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
        "pgw_t3-cccccccccccccccccccccccccccccccccccccccccccc",
    ];
    let mut rules = standard_rules();
    for (i, k) in keys.iter().enumerate() {
        rules.push_str(&format!("\n[[clients]]\nname = \"t{}\"\nkeys = [\"{}\"]\n", i + 1, key_hash_string(k)));
    }
    let fake_cfg =
        fake_palette::FakePaletteConfig { rate_limits: Some(FakeRateLimits { burst_seconds: 1.0 }), ..standard_fake() };
    let h = Arc::new(Harness::start(fake_cfg, "", &rules).await);
    let max_wait = Duration::from_secs(2);
    let run_for = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for (client, key) in keys.iter().enumerate() {
        // 6 concurrent loops per client: about 3x the 50/s budget of /v1/spectroclusters.
        for _ in 0..6 {
            let h = h.clone();
            let key = key.to_string();
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut limited, mut worst) = (0u32, 0u32, Duration::ZERO);
                let end = Instant::now() + run_for;
                while Instant::now() < end {
                    let started = Instant::now();
                    let r = h.http.get(h.url("/v1/spectroclusters/c1")).header("ApiKey", &key).send().await.unwrap();
                    worst = worst.max(started.elapsed());
                    match r.status().as_u16() {
                        200 => ok += 1,
                        429 => {
                            let v: serde_json::Value = r.json().await.unwrap();
                            assert!(
                                v["message"].as_str().unwrap().contains("upstream"),
                                "a 429 not from the gateway's budget: {v}"
                            );
                            limited += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
                (client, ok, limited, worst)
            }));
        }
    }
    let mut served = [0u32; 3];
    let mut worst = Duration::ZERO;
    for t in tasks {
        let (client, ok, _limited, w) = t.await.unwrap();
        served[client] += ok;
        worst = worst.max(w);
    }
    assert_eq!(h.fake.throttled(), 0, "Palette answered 429: {:?}", h.fake.throttled_by_prefix());
    let mean = served.iter().sum::<u32>() as f64 / 3.0;
    for (i, s) in served.iter().enumerate() {
        assert!((*s as f64 - mean).abs() <= 0.2 * mean, "client t{} got {s}, mean {mean}: {served:?}", i + 1);
    }
    // 50/s for 5 s plus the burst: the budget was used, not wasted.
    assert!(mean * 3.0 >= 200.0, "only {served:?} served");
    assert!(worst <= max_wait + Duration::from_millis(500), "a request waited {worst:?}");
}

/// Palette answers every request 429 and no budget prefix covers the path (`preset = "none"`):
/// one client GET makes at most `MAX_ATTEMPTS` upstream attempts, each retry waits (backoff
/// with jitter, at least 125 ms), the client gets Palette's 429 with a `Retry-After`, and the
/// retries are counted.
#[tokio::test]
async fn palette_always_429_without_budget_is_retried_few_times_and_paced() {
    let up = FaultyUpstream::start(Mode::TooManyRequests).await;
    let gw = api_key_gateway(&up.url(), NO_BUDGET).await;
    let http = client();
    let r = http.get(format!("http://{}/v1/packs", gw.proxy_addr)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "TooManyRequests", "Palette's own 429 passes through: {v}");
    let arrivals = up.arrivals("/v1/packs");
    assert!(arrivals.len() as u32 <= MAX_ATTEMPTS, "{} attempts for one GET", arrivals.len());
    assert!(arrivals.len() >= 2, "an idempotent GET is retried at least once");
    for gap in gaps(&arrivals) {
        assert!(gap >= Duration::from_millis(100), "a retry went out {gap:?} after the previous attempt");
    }
    // Nothing else goes out afterwards.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.arrivals("/v1/packs").len(), arrivals.len());
    let m = scrape(&http, &format!("http://{}", gw.admin_addr)).await;
    let retries = metric(&m, "palette_gateway_upstream_retries_total", &[("prefix", "none"), ("reason", "429")]);
    assert_eq!(retries as usize, arrivals.len() - 1);
    assert_eq!(metric(&m, "palette_gateway_upstream_throttled_total", &[("prefix", "none")]) as usize, arrivals.len());
}

/// Palette answers 429 with `Retry-After: 1`: the retry waits that second (not less), and a
/// retry whose wait would end past `max_wait` (2 s) is not made.
#[tokio::test]
async fn palette_retry_after_is_followed() {
    let up = FaultyUpstream::start(Mode::TooManyRetryAfter).await;
    let gw = api_key_gateway(&up.url(), NO_BUDGET).await;
    let r =
        client().get(format!("http://{}/v1/packs", gw.proxy_addr)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1", "Palette's own Retry-After passes through");
    let arrivals = up.arrivals("/v1/packs");
    assert_eq!(arrivals.len(), 2, "one retry fits in max_wait");
    assert!(gaps(&arrivals)[0] >= Duration::from_millis(990), "{:?}", gaps(&arrivals));
}

/// A preset prefix (`/v1/packs`, 10/s, burst 5) whose every request Palette answers 429: ten
/// GETs in a row never make attempts in a burst. After the first 429 every attempt waits for
/// the slowed rate, so consecutive attempts are at least 100 ms apart (not ten within 1 ms), and
/// there are fewer attempts than GETs once the slowed rate no longer fits `max_wait`.
#[tokio::test]
async fn palette_429_on_a_preset_prefix_spaces_the_attempts() {
    let up = FaultyUpstream::start(Mode::TooManyRequests).await;
    let gw = api_key_gateway(&up.url(), "").await;
    let http = client();
    for _ in 0..10 {
        let r =
            http.get(format!("http://{}/v1/packs", gw.proxy_addr)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
        assert_eq!(r.status(), 429);
    }
    let arrivals = up.arrivals("/v1/packs");
    assert!(!arrivals.is_empty());
    for (i, gap) in gaps(&arrivals).into_iter().enumerate() {
        assert!(gap >= Duration::from_millis(100), "attempt {} went out {gap:?} after the previous one", i + 2);
    }
    assert!(arrivals.len() < 10, "{} attempts for 10 GETs against a prefix answering 429", arrivals.len());
}
