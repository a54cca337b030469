//! Errors the gateway makes and upstream errors it passes on (issue point 7).
use std::time::Duration;

use crate::support::*;
use palette_gateway::config::{self};

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

/// A client that follows no redirect (the fake's `Location` points off the machine).
fn no_redirect_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A client sending `Accept-Encoding: gzip` (as every real client does) gets Palette's
/// gzipped 404 `ProjectNotFound` as Palette's own error, decoded and scrubbed.
#[tokio::test]
async fn gzipped_palette_error_keeps_its_code() {
    let h = Harness::standard().await;
    let r = h
        .http
        .get(h.url("/v1/__fake/encoded-status/404?ce=gzip&code=ProjectNotFound"))
        .header("ApiKey", ADMIN_KEY)
        .header("Accept-Encoding", "gzip, deflate, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("content-encoding").is_none(), "{:?}", r.headers());
    let text = r.text().await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["code"], "ProjectNotFound", "{text}");
    assert!(v["message"].as_str().unwrap().contains("[redacted]"), "{text}");
    assert!(!text.contains(PALETTE_KEY), "{text}");
}

/// An upstream 401 with two `Content-Encoding` headers (`identity`, then `gzip`) and a gzipped
/// body echoing the API key reaches the client decoded and scrubbed: no key to gunzip.
#[tokio::test]
async fn two_content_encodings_cannot_bypass_the_scrubber() {
    let h = Harness::standard().await;
    for query in ["ce=identity&ce=gzip", "ce=deflate&ce=gzip", "ce=gzip&ce=identity&ce=deflate"] {
        let r = h
            .http
            .get(h.url(&format!("/v1/__fake/encoded-status/401?{query}")))
            .header("ApiKey", ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{query}");
        assert!(r.headers().get("content-encoding").is_none(), "{query}");
        let body = r.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(PALETTE_KEY) && text.contains("[redacted]"), "{query}: {text}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "Unauthorized", "{query}");
    }
}

/// An error body in a coding the gateway cannot read is withheld (status kept, the gateway's
/// note instead of the body); the same for a token credential.
#[tokio::test]
async fn unreadable_error_body_is_withheld() {
    let h = Harness::standard().await;
    for key in [ADMIN_KEY, BOT_KEY] {
        let r = h.http.get(h.url("/v1/__fake/encoded-status/403?ce=zstd")).header("ApiKey", key).send().await.unwrap();
        assert_eq!(r.status(), 403);
        let text = r.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], "UpstreamError", "{text}");
        assert!(v["message"].as_str().unwrap().contains("withheld"), "{text}");
    }
}

/// Upstream secrets in response headers never reach the client, whatever the status: a
/// 302's `Location`, a 304's `ETag`, any header of a 200 or a 404 says `[redacted]` instead.
#[tokio::test]
async fn secrets_in_headers_of_every_status_are_redacted() {
    let h = Harness::standard().await;
    let http = no_redirect_client();
    for key in [ADMIN_KEY, BOT_KEY] {
        for status in [200u16, 204, 302, 304, 404, 500] {
            let r = http
                .get(h.url(&format!("/v1/__fake/secret-headers/{status}")))
                .header("ApiKey", key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), status);
            let mut secrets: Vec<String> = h.fake.issued_tokens();
            secrets.push(PALETTE_KEY.to_string());
            for name in ["location", "etag", "x-echo"] {
                let value = r.headers().get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let value = value.unwrap_or_else(|| panic!("{status}: {name} missing"));
                assert!(value.contains("[redacted]"), "{status} {name}: {value}");
                for s in &secrets {
                    assert!(!value.contains(s.as_str()), "{status} {name}: {value}");
                }
            }
            assert_eq!(r.headers()["location"], "https://palette.example/v1/next?key=[redacted]");
        }
    }
}
