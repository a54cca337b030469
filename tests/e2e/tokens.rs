//! Token credentials: background login, refresh before expiry, single-flight, the 401 replay,
//! and readiness while no token can be had.
use std::time::{Duration, Instant};

use crate::support::*;
use fake_palette::{FakePalette, FakePaletteConfig};
use palette_gateway::credentials::token::FRESH_REPLACEMENT;

fn short_lived(lifetime: Duration, exp_claim: bool) -> FakePaletteConfig {
    FakePaletteConfig { token_lifetime: lifetime, token_exp_claim: exp_claim, ..standard_fake() }
}

fn rules(lifetime: &str, refresh_before: &str) -> String {
    standard_rules()
        .replace("token_lifetime = \"15m\"", &format!("token_lifetime = \"{lifetime}\""))
        .replace("refresh_before = \"3m\"", &format!("refresh_before = \"{refresh_before}\""))
}

/// 200 concurrent requests at a cold start cause exactly one login, and all succeed.
#[tokio::test]
async fn cold_start_is_single_flight() {
    let h = Harness::standard().await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let http = h.http.clone();
        let url = h.url(&format!("/v1/users/{i}"));
        tasks.push(tokio::spawn(async move {
            http.get(url).header("ApiKey", BOT_KEY).send().await.map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    assert_eq!(h.fake.logins(), 1);
    assert_eq!(h.fake.login_attempts(), 1);
}

/// Over several refresh cycles of a 3-second token, no request fails, the token is refreshed
/// (not re-logged-in), and every request carried a token that was valid.
#[tokio::test]
async fn refresh_cycles_without_failed_requests() {
    let h = Harness::start(short_lived(Duration::from_secs(3), true), NO_BUDGET, &rules("15m", "1s")).await;
    h.wait_ready().await;
    let until = Instant::now() + Duration::from_secs(8);
    let mut n = 0;
    while Instant::now() < until {
        let r = h.http.get(h.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {n} failed");
        n += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(n > 50);
    assert_eq!(h.fake.logins(), 1, "refresh, not login, keeps the token fresh");
    assert!(h.fake.refreshes() >= 3, "only {} refreshes in 8 s of 3 s tokens", h.fake.refreshes());
    // The refresh call carries the token in its path with setCookie=false.
    let refresh = h.fake.requests().into_iter().find(|r| r.path_and_query.starts_with("/v1/auth/refresh/")).unwrap();
    assert!(refresh.path_and_query.ends_with("?setCookie=false"));
}

/// A token without an `exp` claim lives `token_lifetime` by the config, and is refreshed on
/// that schedule.
#[tokio::test]
async fn no_exp_claim_uses_configured_lifetime() {
    let h = Harness::start(short_lived(Duration::from_secs(3), false), NO_BUDGET, &rules("3s", "1s")).await;
    h.wait_ready().await;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let r = h.http.get(h.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.fake.refreshes() >= 1);
    assert_eq!(h.fake.logins(), 1);
}

/// Palette refuses a fresh token (revoked session): the gateway logs in again once and replays
/// the request, body included; the client sees only the success.
#[tokio::test]
async fn token_refused_early_is_replaced_and_request_replayed() {
    let h = Harness::standard().await;
    h.wait_ready().await;
    h.fake.revoke_tokens();
    let r =
        h.http.post(h.url("/v1/dashboard/projects")).header("ApiKey", BOT_KEY).body("{\"x\":1}").send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(h.fake.logins(), 2);
    let posts: Vec<_> = h.forwarded().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 2, "one refused, one replayed");
    assert_eq!(&posts[1].body[..], b"{\"x\":1}");
    assert_ne!(posts[0].headers["authorization"], posts[1].headers["authorization"]);
    // Concurrent refusals share one new login. (A replacement is trusted for
    // FRESH_REPLACEMENT: a 401 on it before then is the endpoint's answer, see below.)
    tokio::time::sleep(FRESH_REPLACEMENT).await;
    h.fake.revoke_tokens();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, url) = (h.http.clone(), h.url("/v1/users"));
        tasks.push(tokio::spawn(async move {
            http.get(url).header("ApiKey", BOT_KEY).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.fake.logins(), 3);
}

/// A body too large to buffer is not replayed: the 401 passes through.
#[tokio::test]
async fn large_body_is_not_replayed() {
    let h = Harness::standard().await;
    h.wait_ready().await;
    h.fake.revoke_tokens();
    let body = vec![b'a'; 100 * 1024];
    let r = h.http.put(h.url("/v1/packs/x")).header("ApiKey", BOT_KEY).body(body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    for t in h.fake.issued_tokens() {
        assert!(!text.contains(&t), "a token leaked in the passed-through 401");
    }
}

/// Login down at start-up: the listener serves at once, /readyz says which credential is not
/// ready and why, token requests get 503; when Palette is back the gateway recovers alone.
#[tokio::test]
async fn login_down_at_start_then_back() {
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    fake.set_auth_down(true);
    let h = Harness::with_fake(fake, NO_BUDGET, &standard_rules()).await;
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200, "API-key clients are served while the login is down");
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "CredentialUnavailable");
    let r = h.http.get(format!("{}/readyz", h.admin)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["credentials"][0]["credential"], "ops");
    assert!(v["credentials"][0]["error"].as_str().unwrap().contains("503"), "{v}");
    let text = v.to_string();
    assert!(!text.contains(OPS_PASSWORD));
    h.fake.set_auth_down(false);
    h.wait_ready().await;
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The admin endpoints: /healthz 200 at once; /readyz 200 once the token is held.
#[tokio::test]
async fn health_and_readiness() {
    let h = Harness::standard().await;
    let r = h.http.get(format!("{}/healthz", h.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    h.wait_ready().await;
    let r = h.http.get(format!("{}/readyz", h.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = h.http.get(format!("{}/nope", h.admin)).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// One tool calls an endpoint that always answers 401 (`/v1/__fake/status/401`) 50 times,
/// replayable GETs and non-replayable large PUTs, while another tool on the same login
/// credential calls a healthy path: the 401s pass through with Palette's answer, they cost at
/// most one login beyond the first (not one or two per request), and the other tool never
/// gets a 503 or a 401: its token is never taken away.
#[tokio::test]
async fn an_endpoint_answering_401_neither_storms_logins_nor_starves_other_clients() {
    const OTHER_KEY: &str = "pgw_other-local-key-dddddddddddddddddddddddddddddd";
    let rules = format!(
        "{}\n[[clients]]\nname = \"other\"\nkeys = [\"{}\"]\ncredential = \"ops\"\nprojects = [\"*\"]\n",
        standard_rules(),
        palette_gateway::auth::key_hash_string(OTHER_KEY)
    );
    let h = std::sync::Arc::new(Harness::start(standard_fake(), NO_BUDGET, &rules).await);
    h.wait_ready().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let healthy = {
        let (h, stop) = (h.clone(), stop.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = h.http.get(h.url("/v1/users")).header("ApiKey", OTHER_KEY).send().await.unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    for i in 0..50 {
        let r = if i % 5 == 4 {
            // Too large to buffer: cannot be replayed.
            let body = vec![b'a'; 100 * 1024];
            h.http.put(h.url("/v1/__fake/status/401")).header("ApiKey", BOT_KEY).body(body).send().await.unwrap()
        } else {
            h.http.get(h.url("/v1/__fake/status/401")).header("ApiKey", BOT_KEY).send().await.unwrap()
        };
        assert_eq!(r.status(), 401, "request {i}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "Unauthorized", "Palette's answer passes through: {v}");
    }
    // Let a background replacement (if any) finish before counting.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let statuses = healthy.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|&s| s == 200),
        "the healthy client got {:?}",
        statuses.iter().filter(|&&s| s != 200).collect::<Vec<_>>()
    );
    assert!(
        h.fake.login_attempts() <= 2,
        "{} logins for 50 requests to one refusing endpoint",
        h.fake.login_attempts()
    );
}

/// `refresh_before` below the "stop sending" margin (a 3 s token without `exp`, `refresh_before`
/// 100 ms, where the token stops being sent 300 ms before it expires): the token is still
/// refreshed before it stops being sent, so no request waits for a login and no second login
/// happens.
#[tokio::test]
async fn refresh_before_below_the_margin_still_renews_in_time() {
    let h = Harness::start(short_lived(Duration::from_secs(3), false), NO_BUDGET, &rules("3s", "100ms")).await;
    h.wait_ready().await;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let r = h.http.get(h.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(h.fake.logins(), 1, "a request found no usable token and logged in");
    assert!(h.fake.refreshes() >= 1);
}
