//! The response cache (issue 12 §2): scope isolation, TTL, coalescing, invalidation after a
//! write, every bypass rule, the memory bound, and a reload that changes a route's cache.
use std::time::Duration;

use fake_palette::{FakePalette, FakePaletteConfig};
use serde_json::Value;

use crate::support::*;

/// The standard rules, with caching routes in front (first match wins).
fn rules(dash_cache: &str, extra: &str) -> String {
    format!(
        "{extra}\n[[routes]]\nname = \"dash\"\npath_prefix = \"/v1/dashboard\"\n{dash_cache}\n[[routes]]\nname = \"hooks\"\npath_prefix = \"/v1/__fake\"\ncache = {{ ttl = \"30s\", coalesce = true }}\n[[routes]]\nname = \"slow\"\npath_prefix = \"/v1/slowpath\"\nstrip_prefix = false\ncache = {{ ttl = \"0s\", coalesce = true }}\n{}",
        standard_rules()
    )
}

const DASH_CACHE: &str = "cache = { ttl = \"30s\", coalesce = true }";

/// A fake without its session cookie on every answer (Palette's API answers set none).
fn fake() -> FakePaletteConfig {
    FakePaletteConfig { session_cookie: false, ..standard_fake() }
}

async fn gateway(dash_cache: &str, extra: &str) -> Harness {
    let h = Harness::start(fake(), NO_BUDGET, &rules(dash_cache, extra)).await;
    h.wait_ready().await;
    h
}

struct Answer {
    status: u16,
    x_cache: Option<String>,
    age: Option<String>,
    body: Value,
    len: usize,
}

async fn get(h: &Harness, path: &str, key: &str, project: Option<&str>, headers: &[(&str, &str)]) -> Answer {
    let mut req = h.http.get(h.url(path)).header("ApiKey", key);
    if let Some(p) = project {
        req = req.header("ProjectUid", p);
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await.unwrap();
    let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let (status, x_cache, age) = (resp.status().as_u16(), header("x-cache"), header("age"));
    let bytes = resp.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, x_cache, age, body, len: bytes.len() }
}

/// GETs that reached the fake for `path` (path and query as sent upstream).
fn upstream_calls(h: &Harness, path: &str) -> usize {
    h.forwarded().iter().filter(|r| r.method == http::Method::GET && r.path_and_query == path).count()
}

/// Two clients, two projects, two credentials: each answer is the one Palette gives that
/// credential and project; the same credential and project share an entry (the same upstream
/// request), nothing else does; and a client the scope step refuses gets its 403 even when
/// another client's answer for that project is cached.
#[tokio::test]
async fn entries_never_cross_credentials_or_projects() {
    let h = gateway(DASH_CACHE, "").await;
    let path = "/v1/dashboard/projects";
    let cases: [(&str, Option<&str>, &str); 4] = [
        (CI_KEY, Some("5ca1ab1e0000000000000001"), "ApiKey"),
        (CI_KEY, Some("5ca1ab1e0000000000000002"), "ApiKey"),
        (BOT_KEY, Some("5ca1ab1e0000000000000001"), "Authorization token"),
        (ADMIN_KEY, None, "ApiKey"),
    ];
    for round in 0..2 {
        for (key, project, credential) in cases {
            let a = get(&h, path, key, project, &[]).await;
            assert_eq!(a.status, 200);
            assert_eq!(a.body["projectUid"].as_str(), project, "{key} {project:?}");
            assert_eq!(a.body["authenticatedWith"], credential, "{key} {project:?}");
            let want = if round == 0 { "miss" } else { "hit" };
            assert_eq!(a.x_cache.as_deref(), Some(want), "round {round}: {key} {project:?}");
        }
    }
    assert_eq!(upstream_calls(&h, path), 4, "one upstream read per credential and project");
    // admin sends the same upstream request as ci (same credential, same project): one entry.
    let a = get(&h, path, ADMIN_KEY, Some("5ca1ab1e0000000000000001"), &[]).await;
    assert_eq!((a.x_cache.as_deref(), a.body["projectUid"].as_str()), (Some("hit"), Some("5ca1ab1e0000000000000001")));
    // admin caches p003; ci may not use p003 and still gets its 403, never the cached answer.
    assert_eq!(get(&h, path, ADMIN_KEY, Some("p003"), &[]).await.status, 200);
    let refused = get(&h, path, CI_KEY, Some("p003"), &[]).await;
    assert_eq!((refused.status, refused.x_cache), (403, None));
    let (_, m) = h.metrics().await;
    assert_eq!(metric(&m, "palette_gateway_cache_hits_total", &[("route", "dash")]), 5.0);
    assert_eq!(metric(&m, "palette_gateway_cache_misses_total", &[("route", "dash")]), 5.0);
}

/// A stored answer is served with its `Age` until its TTL runs out, then read again.
#[tokio::test]
async fn answers_live_for_their_ttl() {
    let h = gateway("cache = { ttl = \"1500ms\" }", "").await;
    let path = "/v1/dashboard/ttl";
    assert_eq!(get(&h, path, ADMIN_KEY, None, &[]).await.x_cache.as_deref(), Some("miss"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = get(&h, path, ADMIN_KEY, None, &[]).await;
    assert_eq!((hit.x_cache.as_deref(), hit.age.as_deref()), (Some("hit"), Some("1")));
    assert_eq!(upstream_calls(&h, path), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&h, path, ADMIN_KEY, None, &[]).await.x_cache.as_deref(), Some("miss"));
    assert_eq!(upstream_calls(&h, path), 2);
}

/// 100 concurrent identical reads (ttl 0s, coalesce only) make one upstream call; each gets
/// the answer; afterwards nothing is stored, so the next read goes upstream again.
#[tokio::test]
async fn a_hundred_concurrent_reads_make_one_upstream_call() {
    let h = gateway(DASH_CACHE, "").await;
    // The slow route's path reaches the fake's slow hook (prefix kept, the hook under it).
    let path = "/v1/__fake/slow/400";
    let reads = (0..100).map(|_| {
        let (http, url) = (h.http.clone(), h.url(path));
        async move {
            let resp = http.get(url).header("ApiKey", ADMIN_KEY).send().await.unwrap();
            let x = resp.headers().get("x-cache").map(|v| v.to_str().unwrap().to_string());
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, x, body["path"].as_str().map(str::to_string))
        }
    });
    let answers = futures_util::future::join_all(reads).await;
    assert!(answers.iter().all(|(s, _, p)| *s == 200 && p.as_deref() == Some(path)), "{answers:?}");
    let count = |what: &str| answers.iter().filter(|(_, x, _)| x.as_deref() == Some(what)).count();
    assert_eq!((count("miss"), count("coalesced")), (1, 99));
    assert_eq!(upstream_calls(&h, path), 1, "one upstream call for 100 reads");
    let (_, m) = h.metrics().await;
    assert_eq!(metric(&m, "palette_gateway_cache_coalesced_total", &[("route", "hooks")]), 99.0);
}

/// Concurrent reads that fail share the one failure (Palette's 429 after the gateway's paced
/// retries: one read's attempts, not one per client), and the failure is not stored.
#[tokio::test]
async fn a_failure_is_shared_not_stored() {
    let h = gateway(DASH_CACHE, "").await;
    let path = "/v1/dashboard/failing";
    h.fake.force_429(1000);
    let reads = (0..10).map(|_| get(&h, path, ADMIN_KEY, None, &[]));
    let answers = futures_util::future::join_all(reads).await;
    assert!(answers.iter().all(|a| a.status == 429), "every reader gets the failure");
    let calls = upstream_calls(&h, path);
    assert!((1..=3).contains(&calls), "one read's attempts reached Palette, not one per reader: {calls}");
    h.fake.force_429(0);
    let after = get(&h, path, ADMIN_KEY, None, &[]).await;
    assert_eq!((after.status, after.x_cache.as_deref()), (200, Some("miss")), "the failure was not stored");
}

/// With `ttl = "0s"` only concurrent reads merge: a later identical read goes upstream.
#[tokio::test]
async fn coalesce_alone_stores_nothing() {
    let h = gateway(DASH_CACHE, "").await;
    // strip_prefix = false: /v1/slowpath is forwarded as is (the fake answers it plainly).
    let path = "/v1/slowpath/x";
    for _ in 0..3 {
        let a = get(&h, path, ADMIN_KEY, None, &[]).await;
        assert_eq!((a.status, a.x_cache.as_deref()), (200, Some("miss")));
    }
    assert_eq!(upstream_calls(&h, path), 3);
}

/// The client that started a shared read leaving does not fail the one waiting for it.
#[tokio::test]
async fn the_leader_leaving_does_not_fail_the_waiters() {
    let h = gateway(DASH_CACHE, "").await;
    let path = "/v1/__fake/slow/600";
    let leader = h.http.get(h.url(path)).header("ApiKey", ADMIN_KEY).timeout(Duration::from_millis(150)).send();
    let waiter = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        get(&h, path, ADMIN_KEY, None, &[]).await
    };
    let (leader, waiter) = tokio::join!(leader, waiter);
    assert!(leader.is_err(), "the leader gave up");
    assert_eq!((waiter.status, waiter.x_cache.as_deref()), (200, Some("coalesced")));
    assert_eq!(upstream_calls(&h, path), 1);
}

/// A write through the gateway drops its scope's entries, so the writer reads its own write;
/// a write in another project leaves them.
#[tokio::test]
async fn a_write_drops_the_scopes_entries() {
    let h = gateway(DASH_CACHE, "").await;
    let path = "/v1/dashboard/clusters";
    let read = || get(&h, path, CI_KEY, Some("5ca1ab1e0000000000000001"), &[]);
    assert_eq!(read().await.x_cache.as_deref(), Some("miss"));
    assert_eq!(read().await.x_cache.as_deref(), Some("hit"));
    let post = |project: &'static str| {
        h.http
            .post(h.url("/v1/dashboard/clusters"))
            .header("ApiKey", CI_KEY)
            .header("ProjectUid", project)
            .body("{}")
            .send()
    };
    assert_eq!(post("5ca1ab1e0000000000000002").await.unwrap().status(), 201);
    assert_eq!(read().await.x_cache.as_deref(), Some("hit"), "another project's write changes nothing");
    assert_eq!(post("5ca1ab1e0000000000000001").await.unwrap().status(), 201);
    assert_eq!(read().await.x_cache.as_deref(), Some("miss"), "the writer reads its own write");
    assert_eq!(upstream_calls(&h, path), 2);
}

/// Each bypass rule: the request's `Cache-Control: no-cache`, Palette's `no-store`, `private`,
/// `Set-Cookie` (removed from the answer all the same) and `Vary` on another header, a non-200,
/// and a body over `max_entry_bytes` (which still arrives whole). A plain answer is stored.
#[tokio::test]
async fn bypass_rules() {
    let h = gateway(DASH_CACHE, "[cache]\nmax_entry_bytes = 4096\n").await;
    let twice = |path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let h = &h;
        async move {
            let first = get(h, path, ADMIN_KEY, None, headers).await;
            let second = get(h, path, ADMIN_KEY, None, headers).await;
            (first, second, upstream_calls(h, path))
        }
    };
    let (_, second, calls) = twice("/v1/__fake/headers", &[]).await;
    assert_eq!((second.x_cache.as_deref(), calls), (Some("hit"), 1), "a plain 200 is stored");
    let (_, second, calls) = twice("/v1/dashboard/fresh", &[("Cache-Control", "no-cache")]).await;
    assert_eq!((second.x_cache.as_deref(), calls), (Some("miss"), 2), "no-cache request");
    for path in [
        "/v1/__fake/headers?cache-control=no-store",
        "/v1/__fake/headers?cache-control=private",
        "/v1/__fake/headers?set-cookie=s%3D1",
        "/v1/__fake/headers?vary=Authorization",
        "/v1/__fake/status/404",
    ] {
        let first = get(&h, path, ADMIN_KEY, None, &[]).await;
        let second = get(&h, path, ADMIN_KEY, None, &[]).await;
        assert_eq!((first.x_cache.as_deref(), second.x_cache.as_deref()), (Some("miss"), Some("miss")), "{path}");
        assert_eq!(upstream_calls(&h, path), 2, "{path}");
    }
    // A GET with a body (chunked: hygiene drops Transfer-Encoding, so only the body tells).
    let with_body = "/v1/dashboard/with-body";
    for _ in 0..2 {
        let req = format!(
            "GET {with_body} HTTP/1.1\r\nHost: x\r\nApiKey: {ADMIN_KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        );
        let resp = h.raw(req.as_bytes()).await;
        assert_eq!(resp.header("x-cache").as_deref(), Some("miss"), "a GET with a body is not cached");
    }
    assert_eq!(upstream_calls(&h, with_body), 2);
    let big = "/v1/__fake/bytes/100000";
    for _ in 0..2 {
        let a = get(&h, big, ADMIN_KEY, None, &[]).await;
        assert_eq!((a.status, a.len, a.x_cache.as_deref()), (200, 100000, Some("miss")));
    }
    assert_eq!(upstream_calls(&h, big), 2);
    let cookie =
        h.http.get(h.url("/v1/__fake/headers?set-cookie=s%3D1")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert!(cookie.headers().get("set-cookie").is_none(), "Palette's cookie never reaches the client");
}

/// A flood of distinct reads never holds more than `max_bytes`: older entries are evicted.
#[tokio::test]
async fn a_flood_of_distinct_keys_stays_within_max_bytes() {
    let h = gateway(DASH_CACHE, "[cache]\nmax_bytes = 65536\nmax_entry_bytes = 4096\n").await;
    for i in 0..400 {
        let a = get(&h, &format!("/v1/dashboard/flood/{i}?padding={}", "x".repeat(200)), ADMIN_KEY, None, &[]).await;
        assert_eq!(a.status, 200);
    }
    let (_, m) = h.metrics().await;
    let held = metric(&m, "palette_gateway_cache_bytes", &[]);
    assert!(held > 0.0 && held <= 65536.0, "bytes held: {held}");
    assert!(metric(&m, "palette_gateway_cache_evictions_total", &[]) > 0.0);
}

/// The access log marks answers from the cache.
#[tokio::test]
async fn the_access_log_marks_cached_answers() {
    let h = gateway(DASH_CACHE, "").await;
    let path = "/v1/dashboard/logged";
    get(&h, path, ADMIN_KEY, None, &[]).await;
    let rid = "cache-log-test-0001";
    assert_eq!(get(&h, path, ADMIN_KEY, None, &[("x-request-id", rid)]).await.x_cache.as_deref(), Some("hit"));
    let logged = eventually(Duration::from_secs(3), || async {
        let text = std::fs::read_to_string(log_file()).unwrap_or_default();
        text.lines()
            .any(|l| l.contains(rid) && l.contains("palette_gateway::access") && l.contains("\"cache\":\"hit\""))
    })
    .await;
    assert!(logged, "the access event of {rid} says cache hit");
}

/// A reload that turns a route's cache off takes effect at once, and one that shortens its TTL
/// applies to answers already stored.
#[tokio::test]
async fn a_reload_changes_a_routes_cache_at_once() {
    let fake = FakePalette::start(fake()).await.unwrap();
    let dir = scratch_dir("cache-reload");
    let path = dir.join("gateway.toml");
    let text = |dash: &str| server_config(&fake.url(), "", NO_BUDGET, &rules(dash, ""));
    std::fs::write(&path, text(DASH_CACHE)).unwrap();
    let g = FileGateway::from_file(TrackedFake(fake), dir, path).await;
    let read = || async {
        let resp = g.http.get(g.url("/v1/dashboard/reload")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
        resp.headers().get("x-cache").map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(read().await.as_deref(), Some("miss"));
    assert_eq!(read().await.as_deref(), Some("hit"));
    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &rules("", "")));
    g.gateway.reload(&g.path, &standard_env()).expect("reload");
    assert_eq!(read().await, None, "no cache on the route any more");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &rules("cache = { ttl = \"1s\" }", "")));
    g.gateway.reload(&g.path, &standard_env()).expect("reload");
    assert_eq!(read().await.as_deref(), Some("miss"), "the stored answer is older than the new TTL");
    let calls = g.fake.requests().iter().filter(|r| r.path_and_query == "/v1/dashboard/reload").count();
    assert_eq!(calls, 3);
}
