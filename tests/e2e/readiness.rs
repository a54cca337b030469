//! Readiness and start-up as probes see them (issue 13 §4): an API key Palette refuses at its
//! start-up check makes `/readyz` 503 naming the credential; a Palette outage after the check
//! does not; `/startup` answers 200 only once every credential is usable.
use std::path::Path;
use std::time::Duration;

use crate::support::faulty::{FaultyUpstream, Mode};
use crate::support::*;
use fake_palette::FakePalette;
use palette_gateway::app::RunningGateway;
use palette_gateway::config::{self, MapEnv};

/// One API key credential and one client using it.
fn key_only_rules() -> String {
    format!(
        "[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\n[[clients]]\nname = \"admin\"\nkeys = [\"{}\"]\nprojects = [\"*\"]\n",
        palette_gateway::auth::key_hash_string(ADMIN_KEY)
    )
}

/// A gateway at `upstream_url` whose `PALETTE_API_KEY` is `key`.
async fn gateway(upstream_url: &str, key: &str, rules: &str) -> (RunningGateway, String) {
    init_logs();
    let text = gateway_config(upstream_url, NO_BUDGET, rules);
    let env = MapEnv::new().with("PALETTE_API_KEY", key).with("PALETTE_PASSWORD", OPS_PASSWORD);
    let cfg = config::load_str(&text, Path::new("."), &env).unwrap();
    let gw = RunningGateway::start(cfg).await.unwrap();
    let admin = format!("http://{}", gw.admin_addr);
    (gw, admin)
}

/// Status and JSON body of an admin endpoint.
async fn probe(admin: &str, path: &str) -> (u16, serde_json::Value) {
    let r = client().get(format!("{admin}{path}")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// An API key Palette refuses (401): `/readyz` and `/startup` answer 503 and name the
/// credential and the refusal, without the key; the other credentials are still listed fine.
#[tokio::test]
async fn a_refused_api_key_is_not_ready_and_named() {
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    let bad_key = "palette-api-key-revoked-9999";
    let (_gw, admin) = gateway(&fake.url(), bad_key, &standard_rules()).await;
    let named = eventually(Duration::from_secs(5), || async {
        let (status, v) = probe(&admin, "/readyz").await;
        status == 503 && v["credentials"].as_array().is_some_and(|c| c.iter().any(|c| c["credential"] == "default"))
    })
    .await;
    let (status, v) = probe(&admin, "/readyz").await;
    assert!(named, "/readyz never named the refused key: {status} {v}");
    let entry = v["credentials"].as_array().unwrap().iter().find(|c| c["credential"] == "default").unwrap().clone();
    assert!(entry["error"].as_str().unwrap().contains("401"), "{v}");
    let (status, started) = probe(&admin, "/startup").await;
    assert_eq!(status, 503, "{started}");
    for text in [v.to_string(), started.to_string()] {
        assert!(!text.contains(bad_key), "the key reached a probe's answer: {text}");
    }
    // The check was one call to the current user, with the key, and is not repeated.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let checks: Vec<_> = fake.requests().into_iter().filter(key_check).collect();
    assert_eq!(checks.len(), 1, "{checks:?}");
}

/// Palette reachable and the key good: `/startup` turns 200 once the login credential holds a
/// token too, not before (the login is down at first).
#[tokio::test]
async fn startup_waits_for_every_credential() {
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    fake.set_auth_down(true);
    let h = Harness::with_fake(fake, NO_BUDGET, &standard_rules()).await;
    // The key's check passes while the login stays down: /startup names only the login.
    let key_passed = eventually(Duration::from_secs(5), || async {
        let (_, v) = probe(&h.admin, "/startup").await;
        v["credentials"].as_array().is_some_and(|c| c.iter().all(|c| c["credential"] != "default"))
    })
    .await;
    let (status, v) = probe(&h.admin, "/startup").await;
    assert!(key_passed, "{v}");
    assert_eq!(status, 503, "no token yet: {v}");
    assert_eq!(v["credentials"][0]["credential"], "ops", "{v}");
    h.fake.set_auth_down(false);
    let started = eventually(Duration::from_secs(10), || async { probe(&h.admin, "/startup").await.0 == 200 }).await;
    assert!(started, "/startup never turned 200: {:?}", probe(&h.admin, "/startup").await);
    assert_eq!(probe(&h.admin, "/readyz").await.0, 200);
}

/// Palette down while the key is being checked: `/startup` waits (naming why) and the check
/// is retried, paced, until Palette answers; once it has passed, a later outage flips neither
/// `/readyz` nor `/startup` (requests then fail with 502, as they should).
#[tokio::test]
async fn an_outage_after_the_check_keeps_the_gateway_ready() {
    let up = FaultyUpstream::start(Mode::Refuse).await;
    let (gw, admin) = gateway(&up.url(), PALETTE_KEY, &key_only_rules()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, v) = probe(&admin, "/startup").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["credentials"][0]["credential"], "default", "{v}");
    assert_eq!(probe(&admin, "/readyz").await.0, 200, "an unanswered check does not turn traffic away");
    up.set_mode(Mode::Ok).await;
    let started = eventually(Duration::from_secs(5), || async { probe(&admin, "/startup").await.0 == 200 }).await;
    assert!(started, "the check was not retried");
    let checks = up.key_checks();
    assert_eq!(checks, 1, "one check once Palette answered");
    up.set_mode(Mode::Refuse).await;
    let r = client().get(format!("http://{}/v1/users", gw.proxy_addr)).header("ApiKey", ADMIN_KEY).send().await;
    assert_eq!(r.unwrap().status(), 502);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(probe(&admin, "/readyz").await.0, 200);
    assert_eq!(probe(&admin, "/startup").await.0, 200);
    up.set_mode(Mode::Ok).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.key_checks(), checks, "the key was checked again after passing");
}
