//! What a client may call, and in which project scope (issue points 2 and 3).
use crate::support::*;

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
    for r in h.fake.requests().into_iter().filter(|r| !key_check(r)) {
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
    assert_eq!(values, vec!["5ca1ab1e0000000000000001"]);
}

/// A route limited to a client and method applies only to them.
#[tokio::test]
async fn route_filters_by_client_and_method() {
    let h = Harness::standard().await;
    h.http.get(h.url("/v1/spectroclusters/u1")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(h.last().headers["projectuid"], "5ca1ab1e0000000000000002");
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
        .header("ProjectUid", "5ca1ab1e0000000000000001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.last().headers["projectuid"], "5ca1ab1e0000000000000001");
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
        .get(h.url("/v1/x?ProjectUid=5ca1ab1e0000000000000002"))
        .header("ApiKey", CI_KEY)
        .header("ProjectUid", "5ca1ab1e0000000000000001")
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

/// One raw HTTP/1.1 GET with the given `Connection` header and other headers; the answer is
/// read off the connection whether or not the server closes it.
async fn get_with_connection(h: &Harness, path: &str, connection: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: gateway.test\r\nConnection: {connection}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = tokio::net::TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.unwrap();
    read_response(&mut s, std::time::Duration::from_secs(10)).await.expect("an answer")
}

/// The access-log event of request `rid`, from this test binary's log file.
async fn access_event(rid: &str) -> serde_json::Value {
    let exe = std::env::current_exe().unwrap();
    let file = format!("{TEST_LOG_DIR}/{}-{}.log", exe.file_name().unwrap().to_string_lossy(), std::process::id());
    let mut found = None;
    let ok = eventually(std::time::Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["target"] == "palette_gateway::access" && e["request_id"] == rid);
        std::future::ready(found.is_some())
    })
    .await;
    assert!(ok, "no access event for {rid}");
    found.unwrap()
}

fn values(r: &fake_palette::RecordedRequest, name: &str) -> Vec<String> {
    r.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_string()).collect()
}

/// A client naming `ProjectUid` in `Connection` (any case, among other tokens, with or without
/// a `ProjectUid` of its own) still reaches Palette in the route's project, and the access log
/// records that project: the route's scope cannot be removed.
#[tokio::test]
async fn connection_cannot_remove_the_route_project() {
    let h = Harness::standard().await;
    let mut n = 0;
    for connection in ["keep-alive, ProjectUid", "ProjectUid", "close, PROJECTUID", "keep-alive,projectuid , te"] {
        for own in [None, Some("evil"), Some("5ca1ab1e0000000000000001")] {
            n += 1;
            let rid = format!("conn-route-{n}");
            let mut headers = vec![("ApiKey", ADMIN_KEY), ("X-Request-Id", rid.as_str())];
            if let Some(p) = own {
                headers.push(("ProjectUID", p));
            }
            let r = get_with_connection(&h, "/team-a/v1/clusterprofiles", connection, &headers).await;
            assert_eq!(r.status, 200, "{connection} {own:?}: {}", String::from_utf8_lossy(&r.body));
            let got = h.last();
            assert_eq!(got.path_and_query, "/v1/clusterprofiles");
            assert_eq!(values(&got, "projectuid"), ["5ca1ab1e0000000000000001"], "{connection} {own:?}");
            assert_eq!(access_event(&rid).await["project"], "5ca1ab1e0000000000000001", "{connection} {own:?}");
        }
    }
}

/// Without a route, a `ProjectUid` the client also names in `Connection` is still checked
/// against its `projects` (403 for one it may not use) and, when allowed, reaches Palette.
#[tokio::test]
async fn connection_cannot_skip_the_project_check() {
    let h = Harness::standard().await;
    for connection in ["keep-alive, ProjectUid", "close, projectuid"] {
        let r =
            get_with_connection(&h, "/v1/clusterprofiles", connection, &[("ApiKey", CI_KEY), ("ProjectUid", "p999")])
                .await;
        assert_eq!(r.status, 403, "{connection}");
        assert_eq!(r.json()["code"], "ProjectForbidden");
        let rid = format!("conn-own-{}", connection.len());
        let r = get_with_connection(
            &h,
            "/v1/clusterprofiles",
            connection,
            &[("ApiKey", CI_KEY), ("ProjectUid", "5ca1ab1e0000000000000001"), ("X-Request-Id", &rid)],
        )
        .await;
        assert_eq!(r.status, 200, "{connection}");
        assert_eq!(values(&h.last(), "projectuid"), ["5ca1ab1e0000000000000001"]);
        assert_eq!(access_event(&rid).await["project"], "5ca1ab1e0000000000000001");
    }
    assert_eq!(h.forwarded().len(), 2);
}

/// `Connection` naming the credential, `X-Request-Id` or the forwarding headers changes
/// nothing Palette sees: one upstream credential (the gateway's), the request id the client
/// got back, the client's real address and scheme, the upstream's own `Host`.
#[tokio::test]
async fn connection_cannot_remove_gateway_headers() {
    let h = Harness::standard().await;
    let upstream_host = h.fake.url().trim_start_matches("http://").to_string();
    for connection in [
        "keep-alive, ApiKey",
        "Authorization, close",
        "X-Request-Id",
        "X-Forwarded-For, X-Forwarded-Proto",
        "Host, keep-alive",
        "ApiKey, Authorization, X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, Host, ProjectUid",
    ] {
        let headers = [
            ("ApiKey", ADMIN_KEY),
            ("X-Request-Id", "client-rid-1"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "https"),
        ];
        let r = get_with_connection(&h, "/v1/users", connection, &headers).await;
        assert_eq!(r.status, 200, "{connection}: {}", String::from_utf8_lossy(&r.body));
        let got = h.last();
        assert_eq!(values(&got, "apikey"), [PALETTE_KEY], "{connection}");
        assert!(got.headers.get("authorization").is_none(), "{connection}");
        assert_eq!(values(&got, "x-request-id"), ["client-rid-1"], "{connection}");
        assert_eq!(r.header("x-request-id").as_deref(), Some("client-rid-1"));
        assert_eq!(values(&got, "x-forwarded-for"), ["127.0.0.1"], "{connection}");
        assert_eq!(values(&got, "x-forwarded-proto"), ["http"], "{connection}");
        assert_eq!(values(&got, "host"), [upstream_host.as_str()], "{connection}");
        assert!(got.headers.get("connection").is_none(), "{connection}");
    }
    // A login credential's token, too.
    let r = get_with_connection(&h, "/v1/users", "Authorization, ApiKey", &[("ApiKey", BOT_KEY)]).await;
    assert_eq!(r.status, 200);
    let got = h.last();
    assert_eq!(values(&got, "authorization").len(), 1);
    assert!(got.headers.get("apikey").is_none());
}

/// `ProjectUID: ""` (what Palette's TypeScript SDK sends with no project set) and an empty
/// `?ProjectUid=` mean tenant scope, not 400; an empty value beside a real one does not hide it.
#[tokio::test]
async fn empty_project_uid_is_tenant_scope() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", CI_KEY).header("ProjectUID", "").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(h.last().headers.get("projectuid").is_none());
    let r = h.http.get(h.url("/v1/users?ProjectUid=&limit=2")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got = h.last();
    assert!(got.headers.get("projectuid").is_none());
    assert_eq!(got.path_and_query, "/v1/users?limit=2", "the empty parameter is not passed on");
    // Beside a real value, the real one is checked as if alone.
    let forwarded = h.forwarded().len();
    let r = h
        .http
        .get(h.url("/v1/users?ProjectUid=p999"))
        .header("ApiKey", CI_KEY)
        .header("ProjectUID", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = h.raw(&raw_get("/v1/users", &[("ApiKey", CI_KEY), ("ProjectUID", ""), ("ProjectUid", "p999")])).await;
    assert_eq!(r.status, 403);
    assert_eq!(h.forwarded().len(), forwarded);
    let r = h
        .raw(&raw_get(
            "/v1/users",
            &[("ApiKey", CI_KEY), ("ProjectUID", ""), ("ProjectUid", "5ca1ab1e0000000000000002")],
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(values(&h.last(), "projectuid"), ["5ca1ab1e0000000000000002"]);
}

/// `curl -I` works where `GET` is allowed: a `GET` rule covers `HEAD`, and a `GET` route's
/// project applies to `HEAD` too; other methods stay refused.
#[tokio::test]
async fn get_rules_and_routes_cover_head() {
    let h = Harness::standard().await;
    let r = h.http.head(h.url("/v1/packs/abc")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.last().method, "HEAD");
    let r = h.http.head(h.url("/v1/spectroclusters/u1")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(values(&h.last(), "projectuid"), ["5ca1ab1e0000000000000002"], "the GET route's project");
    let r = h.http.request(reqwest::Method::OPTIONS, h.url("/v1/packs")).header("ApiKey", CI_KEY).send().await.unwrap();
    assert_eq!(r.status(), 403);
}

const MINTER_KEY: &str = "pgw_minter-local-key-eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const OPENED_KEY: &str = "pgw_opened-local-key-ffffffffffffffffffffffffffffffff";

/// The standard setup plus a client allowed `POST /v1/**`, and one that also has
/// `POST /v1/apiKeys` opened by name.
fn credential_rules() -> String {
    use palette_gateway::auth::key_hash_string;
    format!(
        "{}\n[[clients]]\nname = \"minter\"\nkeys = [\"{}\"]\nallow = [\"POST /v1/**\", \"GET /v1/**\"]\n\
         [[clients]]\nname = \"opened\"\nkeys = [\"{}\"]\nallow = [\"POST /v1/**\"]\nallow_credential_endpoints = [\"POST /v1/apiKeys\"]\n",
        standard_rules(),
        key_hash_string(MINTER_KEY),
        key_hash_string(OPENED_KEY)
    )
}

/// A client whose `allow` covers `POST /v1/apiKeys` (or that has no `allow` at all) gets 403
/// `Forbidden` saying it is a credential endpoint and how to open it; nothing reaches Palette.
#[tokio::test]
async fn credential_endpoints_are_refused_whatever_allow_says() {
    let h = Harness::start(standard_fake(), NO_BUDGET, &credential_rules()).await;
    let r = h.http.post(h.url("/v1/apiKeys")).header("ApiKey", MINTER_KEY).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "Forbidden");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.starts_with("client minter may not POST /v1/apiKeys: a credential endpoint"), "{msg}");
    assert!(msg.contains("allow_credential_endpoints = [\"POST /v1/apiKeys\"]"), "{msg}");
    for (key, method, path) in [
        (ADMIN_KEY, "POST", "/v1/apiKeys"),
        (ADMIN_KEY, "POST", "/V1/APIKEYS"),
        (ADMIN_KEY, "POST", "/v1/apiKeys/"),
        (ADMIN_KEY, "POST", "/v1alpha1/apiKeys"),
        (ADMIN_KEY, "POST", "/team-a/v1/apiKeys"),
        (ADMIN_KEY, "PUT", "/v1/apiKeys/k1/state"),
        (ADMIN_KEY, "DELETE", "/v1/apiKeys/k1"),
        (ADMIN_KEY, "POST", "/v1/users/auth/tokens/revoke"),
        (ADMIN_KEY, "PATCH", "/v1/users/password/change"),
        (ADMIN_KEY, "PATCH", "/v1/users/u1/password/reset"),
        (ADMIN_KEY, "GET", "/v1/spectroclusters/c1/assets/adminTokenKubeconfig"),
        (ADMIN_KEY, "GET", "/v1/edgehosts/tokens"),
        (ADMIN_KEY, "POST", "/v1/edgehosts/tokens/t1/x"),
        (MINTER_KEY, "GET", "/v1/edgehosts/tokens/t1"),
        (MINTER_KEY, "HEAD", "/v1/edgehosts/tokens"),
        (BOT_KEY, "POST", "/v1/apiKeys"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = h.http.request(m, h.url(path)).header("ApiKey", key).body("{}").send().await.unwrap();
        assert_eq!(r.status(), 403, "{method} {path}");
        if method != "HEAD" {
            let v: serde_json::Value = r.json().await.unwrap();
            assert!(v["message"].as_str().unwrap().contains("credential endpoint"), "{method} {path}: {v}");
        }
    }
    assert!(h.forwarded().is_empty());
    // Listing keys stays open.
    let r = h.http.get(h.url("/v1/apiKeys")).header("ApiKey", MINTER_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.last().path_and_query, "/v1/apiKeys");
}

/// Naming `POST /v1/apiKeys` in a client's `allow_credential_endpoints` opens exactly that
/// endpoint for that client (its `allow` covers it): the request reaches Palette.
#[tokio::test]
async fn allow_credential_endpoints_opens_the_named_endpoint() {
    let h = Harness::start(standard_fake(), NO_BUDGET, &credential_rules()).await;
    let r = h.http.post(h.url("/v1/apiKeys")).header("ApiKey", OPENED_KEY).body("{}").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let got = h.last();
    assert_eq!((got.method.as_str(), got.path_and_query.as_str()), ("POST", "/v1/apiKeys"));
    assert_eq!(got.headers["apikey"], PALETTE_KEY);
    // Only that one: other credential endpoints stay refused for it, and for other clients.
    let r = h.http.post(h.url("/v1/users/auth/tokens/revoke")).header("ApiKey", OPENED_KEY).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = h.http.post(h.url("/v1/apiKeys")).header("ApiKey", MINTER_KEY).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(h.forwarded().len(), 1);
}
