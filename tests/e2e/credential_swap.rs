//! Local credentials in, the gateway's Palette credential out (issue points 1 and 4).
use crate::support::*;

/// A client sending its local key as `ApiKey` reaches Palette with the gateway's API key, and
/// its local key appears nowhere in what Palette receives.
#[tokio::test]
async fn api_key_header_is_swapped_for_the_palette_key() {
    let h = Harness::standard().await;
    let r = h
        .http
        .get(h.url("/v1/packs?limit=5"))
        .header("ApiKey", ADMIN_KEY)
        .header("Cookie", "session=local")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = h.last();
    assert_eq!(got.headers["apikey"], PALETTE_KEY);
    assert!(got.headers.get("authorization").is_none());
    assert!(got.headers.get("cookie").is_none(), "client cookies never reach Palette");
    assert_eq!(got.path_and_query, "/v1/packs?limit=5");
    assert_no_local_key(&got);
}

/// `Authorization: Bearer <local key>` works the same way.
#[tokio::test]
async fn bearer_local_key_is_swapped() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got = h.last();
    assert_eq!(got.headers["apikey"], PALETTE_KEY);
    assert!(got.headers.get("authorization").is_none());
    assert_no_local_key(&got);
}

/// A token client's requests carry `Authorization: <token>` (raw, no Bearer) and no ApiKey.
#[tokio::test]
async fn token_client_gets_raw_authorization_token() {
    let h = Harness::standard().await;
    let r = h
        .http
        .post(h.url("/v1/dashboard/projects"))
        .header("ApiKey", BOT_KEY)
        .body("{\"filter\":{}}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("auditUid").is_some(), "Palette's AuditUid reaches the client");
    let got = h.last();
    let auth = got.headers["authorization"].to_str().unwrap().to_string();
    assert!(!auth.starts_with("Bearer"), "{auth}");
    assert!(h.fake.issued_tokens().contains(&auth));
    assert!(got.headers.get("apikey").is_none());
    assert_eq!(&got.body[..], b"{\"filter\":{}}");
    assert_no_local_key(&got);
}

/// An unknown key gets 401 with `WWW-Authenticate: Bearer` in Palette's error shape, and
/// nothing reaches Palette.
#[tokio::test]
async fn unknown_key_is_401() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", "pgw_not-a-key").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "Unauthorized");
    assert_eq!(v["ref"], rid.as_str());
    assert!(h.forwarded().is_empty());
}

/// No credential and no anonymous client: 401.
#[tokio::test]
async fn missing_credential_is_401() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(h.forwarded().is_empty());
}

/// With `anonymous_client`, a request with no credential (a sidecar's tool) acts as it.
#[tokio::test]
async fn anonymous_client_serves_requests_without_credentials() {
    let rules = format!("[auth]\nanonymous_client = \"ci\"\n{}", standard_rules());
    let h = Harness::start(standard_fake(), "", &rules).await;
    let r = h.http.get(h.url("/v1/packs")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.last().headers["apikey"], PALETTE_KEY);
    // ... with the anonymous client's policy: ci may not DELETE.
    let r = h.http.delete(h.url("/v1/packs/x")).send().await.unwrap();
    assert_eq!(r.status(), 403);
}

/// The same key as both `ApiKey` and `Authorization` is ambiguous: 400, nothing forwarded.
#[tokio::test]
async fn key_in_both_headers_is_400() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", ADMIN_KEY).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(h.forwarded().is_empty());
}

/// A Palette token (no Bearer) sent by a client is not a local key: 401.
#[tokio::test]
async fn raw_authorization_is_not_accepted_as_local_key() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).header("Authorization", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

fn assert_no_local_key(r: &fake_palette::RecordedRequest) {
    for key in [CI_KEY, ADMIN_KEY, BOT_KEY] {
        assert!(!r.path_and_query.contains(key));
        assert!(!String::from_utf8_lossy(&r.body).contains(key));
        for v in r.headers.values() {
            assert!(!String::from_utf8_lossy(v.as_bytes()).contains(key), "local key leaked upstream");
        }
    }
}
