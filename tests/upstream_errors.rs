//! Errors the gateway makes and upstream errors it passes on (issue point 7).
mod support;

use std::time::Duration;

use palette_gateway::config::{self};
use support::*;

/// Upstream refuses connections: 502 UpstreamUnavailable, Palette-shaped, ref = request id.
#[tokio::test]
async fn connect_failure_is_502() {
    init_logs();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = gateway_config(&format!("http://127.0.0.1:{port}"), "", &standard_rules());
    let cfg = config::load_str(&text, std::path::Path::new("."), &standard_env()).unwrap();
    let gw = palette_gateway::app::RunningGateway::start(cfg).await.unwrap();
    let r =
        client().get(format!("http://{}/v1/users", gw.proxy_addr)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "UpstreamUnavailable");
    assert_eq!(v["ref"], rid.as_str());
    // A token client cannot get a token either: 503 CredentialUnavailable.
    let r = client().get(format!("http://{}/v1/users", gw.proxy_addr)).header("ApiKey", BOT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "CredentialUnavailable");
    assert!(v["message"].as_str().unwrap().contains("ops"));
}

/// Upstream slower than `request_timeout`: 504 UpstreamTimeout.
#[tokio::test]
async fn slow_upstream_is_504() {
    let h = Harness::start(standard_fake(), NO_BUDGET, &standard_rules()).await;
    let started = std::time::Instant::now();
    let r = h.http.get(h.url("/v1/__fake/slow/8000")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(8));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "UpstreamTimeout");
}

/// Palette errors pass through with their status and shape, but an echoed upstream secret is
/// replaced by `[redacted]`.
#[tokio::test]
async fn upstream_errors_pass_through_scrubbed() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/__fake/status/403")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(!text.contains(PALETTE_KEY), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["code"], "Forbidden");
    // Same for a token credential's token.
    let r = h.http.get(h.url("/v1/__fake/status/404")).header("ApiKey", BOT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let text = r.text().await.unwrap();
    for t in h.fake.issued_tokens() {
        assert!(!text.contains(&t), "{text}");
    }
    assert!(text.contains("[redacted]"), "{text}");
}

/// A 500 from Palette reaches the client as a 500 (not rewritten).
#[tokio::test]
async fn upstream_500_passes_through() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/__fake/status/500")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 500);
}
