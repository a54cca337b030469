//! `/metrics`: the counters move by exactly the requests sent, labels stay bounded, and no
//! secret reaches the exposition.
use crate::support::*;

/// After a known mix of traffic, each counter shows exactly that traffic.
#[tokio::test]
async fn counters_move_by_exactly_the_requests_sent() {
    let h = Harness::standard().await;
    h.wait_ready().await;
    for _ in 0..3 {
        assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", CI_KEY).send().await.unwrap().status(), 200);
    }
    assert_eq!(h.http.get(h.url("/team-a/v1/packs")).header("ApiKey", CI_KEY).send().await.unwrap().status(), 200);
    assert_eq!(h.http.delete(h.url("/v1/packs/x")).header("ApiKey", CI_KEY).send().await.unwrap().status(), 403);
    assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", "pgw_nope").send().await.unwrap().status(), 401);
    assert_eq!(h.http.get(h.url("/v1/packs")).send().await.unwrap().status(), 401);
    assert_eq!(
        h.http
            .get(h.url("/v1/packs"))
            .header("ApiKey", CI_KEY)
            .header("ProjectUid", "p999")
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(h.http.get(h.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap().status(), 200);

    let (text, m) = h.metrics().await;
    let req = |client, route, method, code| {
        metric(
            &m,
            "palette_gateway_requests_total",
            &[("client", client), ("route", route), ("method", method), ("code", code)],
        )
    };
    assert_eq!(req("ci", "none", "GET", "200"), 3.0);
    assert_eq!(req("ci", "team-a", "GET", "200"), 1.0);
    assert_eq!(req("ci", "none", "DELETE", "403"), 1.0);
    assert_eq!(req("none", "none", "GET", "401"), 2.0);
    assert_eq!(req("ci", "none", "GET", "403"), 1.0);
    assert_eq!(req("bot", "none", "GET", "200"), 1.0);
    assert_eq!(metric(&m, "palette_gateway_requests_total", &[]), 9.0);
    assert_eq!(
        metric(
            &m,
            "palette_gateway_request_duration_seconds_count",
            &[("client", "ci"), ("route", "none"), ("method", "GET")]
        ),
        4.0
    );
    for (reason, n) in [("missing", 1.0), ("unknown_key", 1.0), ("forbidden", 1.0), ("project", 1.0)] {
        assert_eq!(metric(&m, "palette_gateway_auth_failures_total", &[("reason", reason)]), n, "{reason}");
    }
    assert_eq!(metric(&m, "palette_gateway_inflight_requests", &[]), 0.0);
    assert_eq!(metric(&m, "palette_gateway_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert_eq!(
        metric(
            &m,
            "palette_gateway_token_renewals_total",
            &[("credential", "ops"), ("kind", "login"), ("result", "ok")]
        ),
        1.0
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(metric(&m, "palette_gateway_token_expiry_timestamp_seconds", &[("credential", "ops")]) > now + 600.0);
    assert_eq!(
        metric(&m, "palette_gateway_upstream_request_duration_seconds_count", &[("prefix", "none"), ("code", "200")]),
        5.0
    );
    assert!(metric(&m, "process_resident_memory_bytes", &[]) > 0.0);
    for secret in SECRETS.iter().copied().chain(h.fake.issued_tokens().iter().map(String::as_str)) {
        assert!(!text.contains(secret), "a secret reached /metrics");
    }
    assert!(!text.contains("p999"), "project uids from requests never become labels");
}

/// Unknown paths and methods do not create new label values.
#[tokio::test]
async fn labels_stay_bounded() {
    let h = Harness::start(standard_fake(), "", &standard_rules()).await;
    for i in 0..20 {
        h.http.get(h.url(&format!("/v1/random-resource-{i}/x"))).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    }
    h.http
        .request(reqwest::Method::from_bytes(b"BREW").unwrap(), h.url("/v1/packs"))
        .header("ApiKey", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let (text, m) = h.metrics().await;
    assert!(!text.contains("random-resource"), "raw paths never become labels");
    assert!(!text.contains("BREW"));
    assert_eq!(metric(&m, "palette_gateway_requests_total", &[("method", "OTHER")]), 1.0);
    // Unknown resources share the budget's catch-all prefix.
    assert!(metric(&m, "palette_gateway_upstream_request_duration_seconds_count", &[("prefix", "*")]) >= 20.0);
}

/// The exposition is served with Prometheus' content type.
#[tokio::test]
async fn metrics_content_type() {
    let h = Harness::standard().await;
    let r = h.http.get(format!("{}/metrics", h.admin)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
}
