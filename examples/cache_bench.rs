//! Issue 12 §3, the saving the response cache makes: N clients (50) each poll the same 3 GETs
//! R times a second (10) for D seconds (30) through the gateway in front of the fake Palette
//! enforcing Palette's documented rate limits, once without the cache and once with
//! `cache = { ttl = "2s", coalesce = true }`. Prints, per run: upstream calls per path per
//! second, requests refused by the gateway's budget (429) or by Palette, and p50/p99 of cache
//! hits and of proxied answers, as a Markdown table.
//!
//! `bash bench/cache.sh` runs it (`SMOKE=1`: 10 clients for 3 s, checks only that it works).
//! Knobs (environment): `CLIENTS`, `RATE` (polls per client per path per second), `DUR` (s), `TTL`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_palette::{FakePalette, FakePaletteConfig, FakeRateLimits};
use palette_gateway::app::RunningGateway;
use palette_gateway::auth::key_hash_string;
use palette_gateway::config::{self, MapEnv};

const PALETTE_KEY: &str = "bench-palette-key";
const LOCAL_KEY: &str = "pgw_bench-local-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
/// Three hot reads on three counting prefixes (10/s, 10/s and 50/s on Palette).
const PATHS: [&str; 3] = ["/v1/dashboard/spectroclusters/meta", "/v1/packs", "/v1/clusterprofiles"];

fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Default)]
struct Tally {
    hits: Vec<f64>,
    proxied: Vec<f64>,
    refused_budget: u64,
    refused_other: u64,
    errors: u64,
}

struct Run {
    label: String,
    upstream_per_path: Vec<(String, usize)>,
    palette_throttled: u64,
    tally: Tally,
    secs: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn run(cache: Option<&str>, clients: usize, rate: f64, secs: f64) -> Run {
    let fake = FakePalette::start(FakePaletteConfig {
        api_keys: vec![PALETTE_KEY.into()],
        rate_limits: Some(FakeRateLimits::default()),
        session_cookie: false,
        ..FakePaletteConfig::default()
    })
    .await
    .expect("fake Palette starts");
    let cache_line = cache.map(|ttl| format!("cache = {{ ttl = \"{ttl}\", coalesce = true }}")).unwrap_or_default();
    let routes: String = ["/v1/dashboard", "/v1/packs", "/v1/clusterprofiles"]
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[[routes]]\nname = \"hot{i}\"\npath_prefix = \"{p}\"\n{cache_line}\n"))
        .collect();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_inflight_requests = 4096\n\
         [upstream]\nurl = \"{}\"\n\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\n\
         [[clients]]\nname = \"dash\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\n\n{routes}\n[log]\nlevel = \"warn\"\n",
        fake.url(),
        key_hash_string(LOCAL_KEY)
    );
    let env = MapEnv::new().with("PALETTE_API_KEY", PALETTE_KEY);
    let cfg = config::load_str(&text, Path::new("."), &env).unwrap_or_else(|e| panic!("bench config: {e}\n{text}"));
    let gw = RunningGateway::start(cfg).await.expect("gateway starts");
    let base = format!("http://{}", gw.proxy_addr);
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = Vec::new();
    for c in 0..clients {
        for path in PATHS {
            let (http, url, tally) = (http.clone(), format!("{base}{path}"), tally.clone());
            // Spread the clients over the period, as independent pollers would be.
            let offset = period.mul_f64(c as f64 / clients as f64);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    if Instant::now() >= end {
                        return;
                    }
                    let sent = Instant::now();
                    let resp = http.get(&url).header("ApiKey", LOCAL_KEY).send().await;
                    let result = match resp {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let hit = r.headers().get("x-cache").is_some_and(|v| v != "miss");
                            let body_ok = r.bytes().await.is_ok();
                            Some((status, hit, body_ok))
                        }
                        Err(_) => None,
                    };
                    let ms = sent.elapsed().as_secs_f64() * 1000.0;
                    let mut t = tally.lock().unwrap();
                    match result {
                        Some((200, true, true)) => t.hits.push(ms),
                        Some((200, false, true)) => t.proxied.push(ms),
                        Some((429, ..)) => t.refused_budget += 1,
                        Some(_) => t.refused_other += 1,
                        None => t.errors += 1,
                    }
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = fake.requests();
    let upstream_per_path =
        PATHS.iter().map(|p| (p.to_string(), requests.iter().filter(|r| r.path_and_query == *p).count())).collect();
    let palette_throttled = fake.throttled();
    gw.shutdown().await;
    fake.shutdown().await;
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let label = match cache {
        Some(ttl) => format!("cache ttl {ttl}"),
        None => "no cache".into(),
    };
    Run { label, upstream_per_path, palette_throttled, tally, secs: elapsed }
}

fn main() {
    let smoke = std::env::var("SMOKE").is_ok_and(|v| v == "1");
    let clients = env_num("CLIENTS", if smoke { 10.0 } else { 50.0 }) as usize;
    let rate = env_num("RATE", 10.0);
    let secs = env_num("DUR", if smoke { 3.0 } else { 30.0 });
    let ttl = std::env::var("TTL").unwrap_or_else(|_| "2s".into());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let runs = rt.block_on(async {
        let without = run(None, clients, rate, secs).await;
        let with = run(Some(&ttl), clients, rate, secs).await;
        [without, with]
    });
    println!(
        "{clients} clients x {} paths x {rate}/s for {secs} s (offered {:.0} req/s); fake Palette enforcing its limits\n",
        PATHS.len(),
        clients as f64 * PATHS.len() as f64 * rate
    );
    println!("| run | path | upstream calls/s |");
    println!("| --- | --- | ---: |");
    for r in &runs {
        for (path, calls) in &r.upstream_per_path {
            println!("| {} | `{path}` | {:.2} |", r.label, *calls as f64 / r.secs);
        }
    }
    println!();
    println!("| run | answered 200 | refused by the budget (429) | other non-200 | errors | Palette 429s | p50 hit ms | p99 hit ms | p50 proxied ms | p99 proxied ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut ok = true;
    for r in runs {
        let mut t = r.tally;
        let answered = t.hits.len() + t.proxied.len();
        ok &= answered > 0 && t.errors == 0;
        println!(
            "| {} | {answered} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.label,
            t.refused_budget,
            t.refused_other,
            t.errors,
            r.palette_throttled,
            percentile(&mut t.hits, 0.5),
            percentile(&mut t.hits, 0.99),
            percentile(&mut t.proxied, 0.5),
            percentile(&mut t.proxied, 0.99),
        );
    }
    if !ok {
        eprintln!("FAILED: a run answered nothing or had connection errors");
        std::process::exit(1);
    }
}
