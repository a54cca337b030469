//! What a client may call, and in which project scope (issue points 2 and 3).
mod support;

use support::*;

/// A method/path outside the client's `allow` gets 403 naming client, method and path; nothing
/// reaches Palette.
#[tokio::test]
async fn allow_denies_with_403_naming_client_method_path() {
    let h = Harness::standard().await;
    let r = h.http.delete(h.url("/v1/packs/abc")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "Forbidden");
    assert_eq!(v["message"], "client ci may not DELETE /v1/packs/abc");
    let r = h
        .http
        .post(h.url("/v1/dashboard/spectroclusters/search"))
        .header("ApiKey", CI_KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "POST /v1/dashboard/** is allowed");
    assert_eq!(h.forwarded().len(), 1);
}

/// `/v1/auth/**` is always refused, for every client and every spelling.
#[tokio::test]
async fn auth_paths_are_always_403() {
    let h = Harness::standard().await;
    for path in [
        "/v1/auth/authenticate",
        "/v1/auth/refresh/abc",
        "/V1/Auth/authenticate",
        "/v1/%61uth/authenticate",
        "/team-a/v1/auth/authenticate",
    ] {
        let r = h.raw(&raw_get(path, &[("ApiKey", ADMIN_KEY)])).await;
        assert_eq!(r.status, 403, "{path}: {}", String::from_utf8_lossy(&r.body));
    }
    let r = h.http.post(h.url("/v1/auth/authenticate")).header("ApiKey", ADMIN_KEY).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(h.forwarded().is_empty());
    // The only auth calls Palette saw are the gateway's own login for its `ops` credential.
    for r in h.fake.requests() {
        assert_eq!(r.path_and_query, "/v1/auth/authenticate?setCookie=false");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["emailId"], OPS_EMAIL);
    }
}

/// A route with `project_uid` sets `ProjectUid`, replacing what the client sent (header in any
/// case and the query parameter), and strips its prefix.
#[tokio::test]
async fn route_sets_project_and_strips_prefix() {
    let h = Harness::standard().await;
    let r = h
        .http
        .get(h.url("/team-a/v1/clusterprofiles?ProjectUid=evil&limit=2"))
        .header("ApiKey", ADMIN_KEY)
        .header("ProjectUID", "evil")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = h.last();
    assert_eq!(got.path_and_query, "/v1/clusterprofiles?limit=2");
    let values: Vec<_> = got.headers.get_all("projectuid").iter().collect();
    assert_eq!(values, vec!["p001"]);
}

/// A route limited to a client and method applies only to them.
#[tokio::test]
async fn route_filters_by_client_and_method() {
    let h = Harness::standard().await;
    h.http.get(h.url("/v1/spectroclusters/u1")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(h.last().headers["projectuid"], "p002");
    h.http.get(h.url("/v1/spectroclusters/u1")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert!(h.last().headers.get("projectuid").is_none(), "admin is not in the route's clients: tenant scope");
    // /team-ab is not under /team-a (whole segments).
    let r = h.http.get(h.url("/team-ab/v1/x")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.last().path_and_query, "/team-ab/v1/x");
}

/// Without a route project, the client's own ProjectUid passes only if listed in `projects`.
#[tokio::test]
async fn client_project_must_be_allowed() {
    let h = Harness::standard().await;
    let r = h
        .http
        .get(h.url("/v1/clusterprofiles"))
        .header("ApiKey", CI_KEY)
        .header("ProjectUid", "p001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.last().headers["projectuid"], "p001");
    for (header, query) in
        [(Some("p999"), ""), (None, "?ProjectUid=p999"), (None, "?projectuid=p999"), (None, "?Project%55id=p999")]
    {
        let mut req = h.http.get(h.url(&format!("/v1/clusterprofiles{query}"))).header("ApiKey", CI_KEY);
        if let Some(v) = header {
            req = req.header("projectUID", v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 403, "{header:?} {query}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "ProjectForbidden");
    }
    assert_eq!(h.forwarded().len(), 1);
}

/// Header and query naming different projects are refused as ambiguous (400).
#[tokio::test]
async fn conflicting_project_values_are_400() {
    let h = Harness::standard().await;
    let r = h
        .http
        .get(h.url("/v1/x?ProjectUid=p002"))
        .header("ApiKey", CI_KEY)
        .header("ProjectUid", "p001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(h.forwarded().is_empty());
}

/// No ProjectUid anywhere: the request goes tenant-scoped.
#[tokio::test]
async fn no_project_is_tenant_scope() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(h.last().headers.get("projectuid").is_none());
}
