//! Path checks (issue point 6): every real Palette path passes byte for byte; every spelling
//! that could be read two ways is refused before any rule sees it.
use crate::support::*;

/// Every operation in Palette's own API spec, placeholders filled, reaches the fake unchanged
/// (the `/v1/auth/**` ones and the credential endpoints are refused by design, and counted).
#[tokio::test]
async fn every_spec_path_passes_unchanged() {
    // Palette's operations, kept in the repository (scripts/refresh-palette-data.py derives them
    // from the spec), so that a plain clone runs this test.
    let data_path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/palette-operations.json");
    let data: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data_path).expect("testdata/palette-operations.json")).unwrap();
    // The budget would pace 1,100 requests to Palette's rates; this test is about paths.
    let rules = standard_rules();
    let h = Harness::start(standard_fake(), NO_BUDGET, &rules).await;
    let mut forwarded = 0;
    let mut refused_auth = 0;
    let mut refused_credential = 0;
    for op in data["operations"].as_array().unwrap() {
        let (method, template) = (op[0].as_str().unwrap(), op[1].as_str().unwrap());
        let path = fill(template);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        if !matches!(m.as_str(), "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD") {
            continue;
        }
        let mut req = h.http.request(m.clone(), h.url(&path)).header("ApiKey", ADMIN_KEY);
        if matches!(m.as_str(), "POST" | "PUT" | "PATCH") {
            req = req.header("content-type", "application/json").body("{}");
        }
        let r = req.send().await.unwrap();
        let is_auth = path.starts_with("/v1/auth/") || path == "/v1/auth";
        if is_auth {
            assert_eq!(r.status(), 403, "{m} {path}");
            refused_auth += 1;
            continue;
        }
        let method = http::Method::from_bytes(m.as_str().as_bytes()).unwrap();
        let checked = palette_gateway::path::check(&path).unwrap();
        if palette_gateway::credential_endpoints::refused(&method, &checked).is_some() {
            assert_eq!(r.status(), 403, "{m} {path}");
            if m != reqwest::Method::HEAD {
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(v["message"].as_str().unwrap().contains("a credential endpoint"), "{m} {path}: {v}");
            }
            refused_credential += 1;
            continue;
        }
        assert!(r.status().is_success(), "{m} {path}: {}", r.status());
        let got = h.last();
        assert_eq!(got.method.as_str(), m.as_str());
        assert_eq!(got.path_and_query, path, "{m} {template}");
        forwarded += 1;
    }
    assert!(forwarded > 1050, "only {forwarded} operations forwarded");
    assert!(refused_auth > 0);
    // The credential endpoints of the spec (see src/credential_endpoints.rs), and no more.
    assert!((30..60).contains(&refused_credential), "{refused_credential} credential endpoints refused");
}

fn fill(template: &str) -> String {
    let mut out = String::new();
    let mut in_brace = false;
    for c in template.chars() {
        match c {
            '{' => in_brace = true,
            '}' => {
                in_brace = false;
                out.push_str("x1f2");
            }
            _ if !in_brace => out.push(c),
            _ => {}
        }
    }
    out
}

/// Dot-segments, encoded separators, empty segments and bad escapes get 400 before any rule,
/// including spellings aimed at `path_prefix`, `allow` and `/v1/auth/**`.
#[tokio::test]
async fn ambiguous_paths_are_400() {
    let h = Harness::standard().await;
    for path in [
        "/v1/../v1/auth/authenticate",
        "/v1/./users",
        "/team-a/../v1/users",
        "/v1/%2e%2e/auth/authenticate",
        "/v1/%2E%2E/users",
        "/v1%2fauth%2fauthenticate",
        "/v1/auth%2Fauthenticate",
        "/v1/users%5c..%5cauth",
        "//v1/users",
        "/v1//users",
        "/v1/users/%zz",
        "/v1/users/%4",
        "/v1/users/%00",
        "/v1/.%2e/auth",
    ] {
        let r = h.raw(&raw_get(path, &[("ApiKey", ADMIN_KEY)])).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.json()["code"], "InvalidPath", "{path}");
    }
    assert!(h.forwarded().is_empty());
}

/// Ambiguous paths are refused before authentication: no credential needed to get the 400,
/// and a CI client cannot dodge its `allow` list with an escape.
#[tokio::test]
async fn escapes_cannot_dodge_allow() {
    let h = Harness::standard().await;
    // %44 is 'D': normalized to the same path, then judged by the same rules.
    let r = h.raw(&raw_get("/v1/%44ashboard/x", &[("ApiKey", CI_KEY)])).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.last().path_and_query, "/v1/Dashboard/x");
}

const NARROW_KEY: &str = "pgw_narrow-local-key-dddddddddddddddddddddddddddddd";

/// The standard setup plus a client whose rules name exact paths.
fn narrow_rules() -> String {
    format!(
        "{}\n[[clients]]\nname = \"narrow\"\nkeys = [\"{}\"]\nallow = [\"POST /v1/dashboard/projects\", \"GET /v1/notifications/\", \"GET /v1/users/**\"]\n",
        standard_rules(),
        palette_gateway::auth::key_hash_string(NARROW_KEY)
    )
}

/// A trailing `/` is part of the path as forwarded: a rule for `/x` does not let `/x/` through
/// (nor the reverse), `/x/**` covers both, and the slash reaches Palette as sent.
#[tokio::test]
async fn trailing_slash_is_matched_exactly() {
    let h = Harness::start(standard_fake(), NO_BUDGET, &narrow_rules()).await;
    let post = |path: &str| {
        h.http.post(h.url(path)).header("ApiKey", NARROW_KEY).header("content-type", "application/json").body("{}")
    };
    let r = post("/v1/dashboard/projects/").send().await.unwrap();
    assert_eq!(r.status(), 403, "the rule names /v1/dashboard/projects, not .../projects/");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["message"], "client narrow may not POST /v1/dashboard/projects/");
    assert!(h.forwarded().is_empty());
    assert!(post("/v1/dashboard/projects").send().await.unwrap().status().is_success());
    assert_eq!(h.last().path_and_query, "/v1/dashboard/projects");

    let get = |path: &'static str| {
        let h = &h;
        async move { h.raw(&raw_get(path, &[("ApiKey", NARROW_KEY)])).await }
    };
    assert_eq!(get("/v1/notifications/").await.status, 200);
    assert_eq!(h.last().path_and_query, "/v1/notifications/");
    assert_eq!(get("/v1/notifications").await.status, 403);
    for path in ["/v1/users", "/v1/users/", "/v1/users/u1/"] {
        assert_eq!(get(path).await.status, 200, "{path}");
        assert_eq!(h.last().path_and_query, path);
    }
}

/// A route prefix covers the prefix itself with or without a trailing `/`; the slash of what
/// is left after a stripped prefix is kept, and the route's project applies.
#[tokio::test]
async fn routes_keep_the_trailing_slash() {
    let h = Harness::standard().await;
    let r = h.raw(&raw_get("/team-a/v1/clusterprofiles/", &[("ApiKey", ADMIN_KEY)])).await;
    assert_eq!(r.status, 200);
    let got = h.last();
    assert_eq!(got.path_and_query, "/v1/clusterprofiles/");
    assert_eq!(got.headers["projectuid"], "5ca1ab1e0000000000000001");
    let r = h.raw(&raw_get("/v1/spectroclusters/", &[("ApiKey", CI_KEY)])).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        h.last().headers["projectuid"],
        "5ca1ab1e0000000000000002",
        "/v1/spectroclusters/ is under the route's prefix"
    );
}
