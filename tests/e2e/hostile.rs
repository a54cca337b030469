//! Hostile input (issue 4, "Fault and attack tests"): request smuggling, control characters and
//! non-UTF-8 bytes in headers, too many or too large headers, path spellings aimed at
//! `path_prefix`, `allow` and `/v1/auth/**`, absolute-form targets, `ProjectUid` escapes,
//! ambiguous local keys, odd `Host`s. Each gets the right 4xx (or is forwarded harmlessly, which
//! the test then proves), and nothing reaches the fake Palette in a form that escapes the rules.
//!
//! Spellings already covered by `tests/e2e/paths.rs`, `tests/e2e/policy_scope.rs` and
//! `tests/e2e/forwarding.rs` are not repeated here; oversized bodies, slow and greedy clients are in
//! `tests/e2e/server_limits.rs`.
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use fake_palette::RecordedRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Everything the fake received except the gateway's own login and refresh calls: what a
/// client managed to get through.
fn upstream_saw(h: &Harness) -> Vec<RecordedRequest> {
    h.fake
        .requests()
        .into_iter()
        .filter(|r| {
            let own = r.path_and_query == "/v1/auth/authenticate?setCookie=false"
                || (r.path_and_query.starts_with("/v1/auth/refresh/")
                    && r.path_and_query.ends_with("?setCookie=false"));
            !own && !key_check(r)
        })
        .collect()
}

/// A raw request: the request line, header lines (raw bytes), `Connection: close`, no body.
fn request(line: &str, headers: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("{line}\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

fn header(name: &str, value: &str) -> Vec<u8> {
    format!("{name}: {value}").into_bytes()
}

/// Like `raw_request`, for requests the server may refuse before reading them whole: a failed
/// write is not an error (the answer may still have been sent), only the status line matters.
async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string();
    (head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0), head)
}

/// Sends `bytes` and checks the status is one of `statuses` and nothing new reached the fake.
async fn refused(h: &Harness, bytes: &[u8], statuses: &[u16], what: &str) -> RawResponse {
    let before = upstream_saw(h).len();
    let r = tokio::time::timeout(Duration::from_secs(15), h.raw(bytes)).await.expect("answered in time");
    assert!(
        statuses.contains(&r.status),
        "{what}: status {} (expected {statuses:?}): {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let after = upstream_saw(h);
    assert_eq!(after.len(), before, "{what}: reached the fake as {:?}", after.last().map(|r| &r.path_and_query));
    r
}

// ---------------------------------------------------------------------------------------------
// Request smuggling.

/// `Content-Length` with `Transfer-Encoding: chunked`, the body hiding a second request: what
/// the client gets today is one answer (the body read as chunked, as RFC 9112 says), then the
/// connection closes; the hidden request is never read, and Palette receives one request whose
/// body is the chunked one, framed by the gateway alone.
#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_request() {
    let h = Harness::standard().await;
    let smuggled = format!("GET /v1/smuggled HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {ADMIN_KEY}\r\n\r\n");
    for order in
        [["Content-Length: 60", "Transfer-Encoding: chunked"], ["Transfer-Encoding: chunked", "Content-Length: 60"]]
    {
        h.fake.clear_requests();
        let req = format!(
            "POST /v1/dashboard/projects HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {ADMIN_KEY}\r\n{}\r\n{}\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n{smuggled}",
            order[0], order[1]
        );
        let mut s = tokio::net::TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{order:?}: the connection was kept open after a CL+TE request");
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{order:?}: more than one answer: {text}");
        let saw = upstream_saw(&h);
        assert!(
            saw.iter().all(|r| !r.path_and_query.contains("smuggled")),
            "{order:?}: the hidden request got through"
        );
        if text.starts_with("HTTP/1.1 400") {
            // Refused outright (RFC 9112 allows either).
            assert!(saw.is_empty(), "{order:?}: refused but forwarded");
            continue;
        }
        assert!(text.starts_with("HTTP/1.1 201"), "{order:?}: {text}");
        assert_eq!(saw.len(), 1, "{order:?}");
        assert_eq!(&saw[0].body[..], b"{}", "{order:?}: the body was not read as chunked");
        assert!(
            !(saw[0].headers.contains_key("content-length") && saw[0].headers.contains_key("transfer-encoding")),
            "{order:?}: Palette got both framings"
        );
    }
}

/// Two `Content-Length`s that disagree (as separate headers or one list), or one that is not
/// a plain number: 400 and nothing reaches Palette.
#[tokio::test]
async fn conflicting_or_malformed_content_length_is_400() {
    let h = Harness::standard().await;
    for lengths in [
        &["Content-Length: 2", "Content-Length: 3"][..],
        &["Content-Length: 2, 3"],
        &["Content-Length: +2"],
        &["Content-Length: 0x2"],
        &["Content-Length: 2 2"],
        &["Content-Length: -1"],
        &["Content-Length: 99999999999999999999999"],
    ] {
        let mut req = format!("POST /v1/dashboard/projects HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {ADMIN_KEY}\r\n");
        for l in lengths {
            req.push_str(l);
            req.push_str("\r\n");
        }
        req.push_str("Connection: close\r\n\r\n{}x");
        refused(&h, req.as_bytes(), &[400], &format!("{lengths:?}")).await;
    }
}

/// `Transfer-Encoding` that does not end in `chunked`, repeated with a different last value, or
/// sent on HTTP/1.0: 400 and nothing reaches Palette.
#[tokio::test]
async fn odd_transfer_encodings_are_400() {
    let h = Harness::standard().await;
    for (version, te) in [
        ("HTTP/1.1", "Transfer-Encoding: chunked, identity"),
        ("HTTP/1.1", "Transfer-Encoding: xchunked"),
        ("HTTP/1.1", "Transfer-Encoding: identity"),
        ("HTTP/1.1", "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip"),
        ("HTTP/1.0", "Transfer-Encoding: chunked"),
    ] {
        let req = format!(
            "POST /v1/dashboard/projects {version}\r\nHost: gateway.test\r\nApiKey: {ADMIN_KEY}\r\n{te}\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        );
        refused(&h, req.as_bytes(), &[400], &format!("{version} {te:?}")).await;
    }
}

/// Obsolete line folding and whitespace between a header name and its colon (the classic ways
/// to make two parsers disagree about a header): 400 and nothing reaches Palette.
#[tokio::test]
async fn folded_headers_and_space_before_colon_are_400() {
    let h = Harness::standard().await;
    let key = header("ApiKey", ADMIN_KEY);
    for (what, extra) in [
        ("obs-fold", &b"X-Note: a\r\n b"[..]),
        ("obs-fold with tab", b"X-Note: a\r\n\tb"),
        ("folded ProjectUid", b"ProjectUid: 5ca1ab1e0000000000000001\r\n p999"),
        ("space before colon", b"ProjectUid : p999"),
        ("tab before colon", b"Transfer-Encoding\t: chunked"),
        ("header line starting with space", b" Transfer-Encoding: chunked"),
    ] {
        refused(&h, &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &key, extra]), &[400], what).await;
    }
    let ci = header("ApiKey", CI_KEY);
    refused(&h, &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &ci, b"ApiKey : x"]), &[400], "key").await;
}

// ---------------------------------------------------------------------------------------------
// Control characters, non-UTF-8.

/// A bare CR, a NUL or a DEL in a header value or name, a CR/LF spelled `%0d%0a` in the path:
/// 400 and nothing reaches Palette.
#[tokio::test]
async fn control_characters_in_headers_are_400() {
    let h = Harness::standard().await;
    let key = header("ApiKey", ADMIN_KEY);
    for (what, extra) in [
        ("bare CR in a value", &b"X-Note: a\rProjectUid: p999"[..]),
        ("NUL in a value", b"X-Note: a\x00b"),
        ("NUL in ProjectUid", b"ProjectUid: 5ca1ab1e0000000000000001\x00p999"),
        ("NUL in a name", b"X-No\x00te: a"),
        ("CR in a name", b"X-No\rte: a"),
        ("DEL in a value", b"X-Note: a\x7fb"),
        ("non-ASCII in a name", b"X-N\xc3\xb6te: a"),
    ] {
        refused(&h, &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &key, extra]), &[400], what).await;
    }
    let mut with_nul_key = header("ApiKey", CI_KEY);
    with_nul_key.push(0);
    refused(&h, &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &with_nul_key]), &[400], "NUL in ApiKey")
        .await;
    for path in ["/v1/users%0d%0aProjectUid:%20p999", "/v1/users%0aX:y", "/v1/users%0D%0A%0D%0AGET%20/v1/x"] {
        let r = refused(&h, &raw_get(path, &[("ApiKey", ADMIN_KEY)]), &[400], path).await;
        assert_eq!(r.json()["code"], "InvalidPath", "{path}");
    }
}

/// A bare LF inside what looks like one header value ends that header line (RFC 9112 lets a
/// recipient read LF as a line end), so the "injected" header is judged like any other: a
/// `ProjectUid` outside the client's list is 403, a second `ApiKey` 400; nothing reaches
/// Palette.
#[tokio::test]
async fn bare_lf_injected_headers_are_judged_like_any_other() {
    let h = Harness::standard().await;
    let ci = header("ApiKey", CI_KEY);
    let injected_project =
        request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &ci, b"X-Note: a\nProjectUid: p999"]);
    refused(&h, &injected_project, &[400, 403], "LF + ProjectUid").await;
    let injected_key = format!("X-Note: a\nApiKey: {ADMIN_KEY}");
    let injected_key = request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &ci, injected_key.as_bytes()]);
    refused(&h, &injected_key, &[400], "LF + second ApiKey").await;
}

/// Non-UTF-8 bytes: in `ApiKey` the key is unknown (401); in `ProjectUid` it is not a project
/// (400); in an ordinary header they are forwarded to Palette byte for byte.
#[tokio::test]
async fn non_utf8_header_values() {
    let h = Harness::standard().await;
    let bad_key = b"ApiKey: pgw_ci-\xff\xfe";
    let r = refused(&h, &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", bad_key]), &[401], "ApiKey").await;
    assert_eq!(r.json()["code"], "Unauthorized");
    let bearer = b"Authorization: Bearer \xc3\x28key";
    refused(&h, &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", bearer]), &[401], "Authorization").await;
    let ci = header("ApiKey", CI_KEY);
    let r = refused(
        &h,
        &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &ci, b"ProjectUid: p00\xb1"]),
        &[400],
        "ProjectUid",
    )
    .await;
    assert_eq!(r.json()["code"], "BadRequest");
    let r =
        h.raw(&request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &ci, b"X-Label: caf\xe9 \xff\xfe!"])).await;
    assert_eq!(r.status, 200);
    assert_eq!(h.last().headers["x-label"].as_bytes(), b"caf\xe9 \xff\xfe!");
}

// ---------------------------------------------------------------------------------------------
// Size limits.

/// 1,000 headers, one header larger than `server.max_header_bytes` (64 KiB by default), or
/// many headers adding up past it: 431 and nothing reaches Palette.
#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let h = Harness::standard().await;
    let key = header("ApiKey", ADMIN_KEY);
    let many: Vec<Vec<u8>> = (0..1000).map(|i| header(&format!("X-H{i}"), "v")).collect();
    let big = header("X-Big", &"a".repeat(70 * 1024));
    let medium: Vec<Vec<u8>> = (0..90).map(|i| header(&format!("X-M{i}"), &"m".repeat(800))).collect();
    for (what, extra) in [("1,000 headers", many), ("one 70 KiB header", vec![big]), ("90 x 800 B", medium)] {
        let before = upstream_saw(&h).len();
        let mut lines: Vec<&[u8]> = vec![b"Host: gateway.test", &key];
        lines.extend(extra.iter().map(Vec::as_slice));
        let (status, line) = raw_status(h.gateway.proxy_addr, &request("GET /v1/users HTTP/1.1", &lines)).await;
        assert_eq!(status, 431, "{what}: {line}");
        assert_eq!(upstream_saw(&h).len(), before, "{what} reached the fake");
    }
    // A request line past the limit is refused too (414 or 431, hyper decides).
    let long = format!("/v1/users/{}", "a".repeat(70 * 1024));
    let (status, line) = raw_status(h.gateway.proxy_addr, &raw_get(&long, &[("ApiKey", ADMIN_KEY)])).await;
    assert!([414, 431].contains(&status), "70 KiB path: {line}");
    assert!(upstream_saw(&h).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// Double encoding is never decoded twice: `%252e%252e` (and `%252E`, `%252f`, `%255c`) reach
/// Palette literally, with the client's own spelling; aimed at `allow`, they stay inside the
/// allowed prefix or are refused.
#[tokio::test]
async fn double_encoding_is_forwarded_literally() {
    let h = Harness::standard().await;
    for path in [
        "/v1/%252e%252e/auth/authenticate",
        "/v1/%252E%252E/auth/authenticate",
        "/v1/users/%252e%252e%252fauth",
        "/v1/users%255c..%255cauth",
        "/v1/%25%32%65/x",
    ] {
        let r = h.raw(&raw_get(path, &[("ApiKey", ADMIN_KEY)])).await;
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
        let got = h.last().path_and_query;
        let expected = path.replace("%25%32%65", "%252e");
        assert_eq!(got, expected, "{path} was decoded on the way");
    }
    // ci may POST only under /v1/dashboard/: a double-encoded climb out stays a literal segment
    // under it, and a climb with single encoding is refused.
    let before = upstream_saw(&h).len();
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {CI_KEY}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
    };
    let r = h.raw(post("/v1/dashboard/%252e%252e/packs").as_bytes()).await;
    assert_eq!(r.status, 201);
    assert_eq!(h.last().path_and_query, "/v1/dashboard/%252e%252e/packs");
    for path in ["/v1/dashboard/%2e%2e/packs", "/v1/dashboard%2F..%2Fpacks", "/v1/dashboard/.%2E/packs"] {
        refused(&h, post(path).as_bytes(), &[400], path).await;
    }
    let r = h.raw(post("/v1/dashboard%252f..%252fpacks").as_bytes()).await;
    assert_eq!(r.status, 403, "one segment, not under /v1/dashboard/");
    assert_eq!(upstream_saw(&h).len(), before + 1);
}

/// Spellings of `..`, `/` and `\` not covered elsewhere (mixed-case escapes, `%5C`, a literal
/// backslash, `%u002e`, `%%32%65`, a bare `%`), aimed at `path_prefix`, `allow` and
/// `/v1/auth/**`: 400 before any rule and nothing reaches Palette.
#[tokio::test]
async fn more_encoded_separators_and_bad_escapes_are_400() {
    let h = Harness::standard().await;
    for path in [
        "/V1/AUTH%2fauthenticate",
        "/v1/Auth%2F%2e%2E/x",
        "/v1/users%5C..%5Cauth",
        "/v1/users%5C%2E%2E%5Cauth",
        "/team-a/%2E%2e/v1/auth/authenticate",
        "/team-a%2F..%2Fv1/auth/authenticate",
        "/team-a/.%2e/v1/users",
        "/v1/%2e%2e%2fauth/authenticate",
        "/v1/%u002e%u002e/auth/authenticate",
        "/v1/%%32%65%%32%65/auth/authenticate",
        "/v1/users%",
        "/v1/users/%2",
        "/v1/%.2e/auth",
        "/v1/%e/auth",
        "/v1/spectroclusters/%2e%2e/packs",
        "/v1/users/%09",
        "/v1/users/%1b",
    ] {
        let r = refused(&h, &raw_get(path, &[("ApiKey", CI_KEY)]), &[400], path).await;
        assert_eq!(r.json()["code"], "InvalidPath", "{path}");
    }
    // A literal backslash, space or tab in the target: refused by the HTTP parser or the path check.
    for path in ["/v1\\auth\\authenticate", "/v1/users\\..\\auth", "/v1/a b", "/v1/a\tb"] {
        refused(&h, &raw_get(path, &[("ApiKey", CI_KEY)]), &[400], path).await;
    }
}

/// Percent-encoded letters and version spellings never dodge the `/v1/auth/**` block: 403.
/// Overlong UTF-8 dots (`%c0%ae`) are not dots: they reach Palette still encoded, never as `..`.
#[tokio::test]
async fn encoded_letters_and_overlong_dots_do_not_dodge_the_auth_block() {
    let h = Harness::standard().await;
    for path in [
        "/%76%31/%61%75%74%68/authenticate",
        "/v1/%41UTH/authenticate",
        "/v1alpha1/auth/authenticate",
        "/V1ALPHA1/%41uth/refresh/x",
        "/team-a/v1/%61uth/refresh/x",
    ] {
        refused(&h, &raw_get(path, &[("ApiKey", ADMIN_KEY)]), &[403], path).await;
    }
    let r = h.raw(&raw_get("/v1/%c0%ae%c0%ae/auth/authenticate", &[("ApiKey", ADMIN_KEY)])).await;
    if r.status == 200 {
        let got = h.last().path_and_query;
        assert_eq!(got, "/v1/%C0%AE%C0%AE/auth/authenticate");
    } else {
        assert_eq!(r.status, 400);
    }
    for got in upstream_saw(&h) {
        assert!(!got.path_and_query.contains(".."), "{}", got.path_and_query);
        assert!(!got.path_and_query.to_ascii_lowercase().starts_with("/v1/auth"), "{}", got.path_and_query);
    }
}

/// `;` path parameters, which some routers (Tomcat, Spring, Jetty) strip before matching, so
/// `/v1/auth;x/authenticate` is `/v1/auth/authenticate` and `..;` is `..` to them: refused
/// (4xx), never forwarded, as `path.rs` promises for any path "that could be read two ways".
#[tokio::test]
async fn path_parameters_do_not_dodge_the_rules() {
    let h = Harness::standard().await;
    let mut through = Vec::new();
    for path in [
        "/v1/auth;x=1/authenticate",
        "/v1/auth;/refresh/x",
        "/v1/users/..;/auth/authenticate",
        "/v1/users/.;/x",
        "/team-a/..;/v1/auth/authenticate",
    ] {
        let r = h.raw(&raw_get(path, &[("ApiKey", ADMIN_KEY)])).await;
        if !(400..=403).contains(&r.status) {
            through.push(format!("GET {path} -> {}", r.status));
        }
    }
    let post = format!(
        "POST /v1/dashboard/..;/packs HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {CI_KEY}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let r = h.raw(post.as_bytes()).await;
    if !(400..=403).contains(&r.status) {
        through.push(format!("ci POST /v1/dashboard/..;/packs -> {}", r.status));
    }
    let forwarded: Vec<String> =
        upstream_saw(&h).into_iter().map(|r| format!("{} {}", r.method, r.path_and_query)).collect();
    assert!(through.is_empty() && forwarded.is_empty(), "answered: {through:?}; Palette saw: {forwarded:?}");
}

// ---------------------------------------------------------------------------------------------
// Target forms and Host.

/// Absolute-form targets for other hosts (`https://`, user info, upper-case scheme, the
/// upstream's own address), authority-form, asterisk-form and a `//host` path: 400, and
/// nothing reaches Palette.
#[tokio::test]
async fn absolute_and_odd_target_forms_are_400() {
    let h = Harness::standard().await;
    let upstream = h.fake.addr();
    for target in [
        "https://evil.example/v1/users".to_string(),
        "http://user:pass@evil.example/v1/users".to_string(),
        "http://evil.example@127.0.0.1/v1/users".to_string(),
        "HTTP://EVIL.EXAMPLE/v1/users".to_string(),
        "http://evil.example".to_string(),
        format!("http://{upstream}/v1/users"),
        "evil.example:443".to_string(),
        "*".to_string(),
        "//evil.example/v1/users".to_string(),
    ] {
        let line = format!("GET {target} HTTP/1.1");
        refused(&h, &request(&line, &[b"Host: evil.example", &header("ApiKey", ADMIN_KEY)]), &[400], &target).await;
    }
    let options = request("OPTIONS * HTTP/1.1", &[b"Host: gateway.test", &header("ApiKey", ADMIN_KEY)]);
    refused(&h, &options, &[400], "OPTIONS *").await;
}

/// Whatever `Host` the client sends (another domain, none on HTTP/1.0, a duplicate) and
/// whatever forwarding headers it adds, the request goes only to the configured upstream, with
/// the upstream's `Host`. A missing `Host` on HTTP/1.1 is what hyper decides (today: served,
/// though RFC 9112 says 400); it is never forwarded with a client-chosen host either way.
#[tokio::test]
async fn host_variants_reach_only_the_configured_upstream() {
    let h = Harness::standard().await;
    let upstream_host = h.fake.addr().to_string();
    let key = header("ApiKey", ADMIN_KEY);
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("another domain", vec![b"Host: evil.example", &key, b"X-Forwarded-Host: evil.example"]),
        ("another domain with port", vec![b"Host: evil.example:8443", &key, b"Forwarded: host=evil.example"]),
        ("duplicate Host", vec![b"Host: gateway.test", b"Host: evil.example", &key]),
        ("Host with user info", vec![b"Host: user@evil.example", &key]),
        ("missing Host", vec![&key]),
    ];
    for (what, lines) in cases {
        let before = upstream_saw(&h).len();
        let r = h.raw(&request("GET /v1/users HTTP/1.1", &lines)).await;
        assert!(r.status == 200 || r.status == 400, "{what}: {}", r.status);
        eprintln!("{what}: {}", r.status);
        let saw = upstream_saw(&h);
        if r.status == 400 {
            assert_eq!(saw.len(), before, "{what}: refused but forwarded");
            continue;
        }
        let got = saw.last().expect("forwarded");
        assert_eq!(got.headers.get_all("host").iter().collect::<Vec<_>>(), vec![upstream_host.as_str()], "{what}");
        for name in ["x-forwarded-host", "forwarded"] {
            assert!(got.headers.get(name).is_none(), "{what}: {name} reached Palette");
        }
    }
    let r = h.raw(format!("GET /v1/users HTTP/1.0\r\nApiKey: {ADMIN_KEY}\r\n\r\n").as_bytes()).await;
    assert_eq!(r.status, 200, "HTTP/1.0 without Host");
    assert_eq!(h.last().headers["host"], upstream_host.as_str());
}

// ---------------------------------------------------------------------------------------------
// Scope and credentials.

/// `ProjectUid` in every place and spelling a client might use to leave its projects (ci may
/// use 5ca1ab1e0000000000000001 and 5ca1ab1e0000000000000002): a project outside its list is 403, two different values 400, and
/// Palette never sees a project outside the list, in the header or the query.
#[tokio::test]
async fn project_uid_cannot_escape_the_clients_projects() {
    let h = Harness::standard().await;
    let ci = header("ApiKey", CI_KEY);
    let get = |target: &str, extra: &[&[u8]]| {
        let mut lines: Vec<&[u8]> = vec![b"Host: gateway.test", &ci];
        lines.extend_from_slice(extra);
        request(&format!("GET {target} HTTP/1.1"), &lines)
    };
    let forbidden: Vec<(&str, Vec<u8>)> = vec![
        ("upper-case header", get("/v1/clusterprofiles", &[b"PROJECTUID: p999"])),
        ("camel header", get("/v1/clusterprofiles", &[b"projectUid: p999"])),
        ("comma list", get("/v1/clusterprofiles", &[b"ProjectUid: 5ca1ab1e0000000000000001,p999"])),
        ("comma list, spaced", get("/v1/clusterprofiles", &[b"ProjectUid: 5ca1ab1e0000000000000001, p999"])),
        ("upper-case query", get("/v1/clusterprofiles?PROJECTUID=p999", &[])),
        ("encoded name", get("/v1/clusterprofiles?%50%72%6f%6a%65%63%74%55%69%64=p999", &[])),
        ("encoded value", get("/v1/clusterprofiles?ProjectUid=%70%39%39%39", &[])),
        ("value with encoded NUL", get("/v1/clusterprofiles?ProjectUid=5ca1ab1e0000000000000001%00", &[])),
        ("value with encoded CRLF", get("/v1/clusterprofiles?ProjectUid=5ca1ab1e0000000000000001%0d%0aX:%20y", &[])),
        ("plus-spaced value", get("/v1/clusterprofiles?ProjectUid=5ca1ab1e0000000000000001+p999", &[])),
    ];
    for (what, req) in forbidden {
        let r = refused(&h, &req, &[403], what).await;
        assert_eq!(r.json()["code"], "ProjectForbidden", "{what}");
    }
    let conflicting: Vec<(&str, Vec<u8>)> = vec![
        (
            "header + mixed-case query",
            get("/v1/clusterprofiles?projectUID=p999", &[b"ProjectUid: 5ca1ab1e0000000000000001"]),
        ),
        (
            "header twice, different case",
            get(
                "/v1/clusterprofiles",
                &[b"ProjectUid: 5ca1ab1e0000000000000001", b"PROJECTUID: 5ca1ab1e0000000000000002"],
            ),
        ),
        ("query twice", get("/v1/clusterprofiles?ProjectUid=5ca1ab1e0000000000000001&projectuid=p999", &[])),
        (
            "allowed header, encoded query",
            get(
                "/v1/clusterprofiles?Project%55id=5ca1ab1e0000000000000002",
                &[b"ProjectUID: 5ca1ab1e0000000000000001"],
            ),
        ),
    ];
    for (what, req) in conflicting {
        refused(&h, &req, &[400], what).await;
    }
    // Allowed spellings pass, and Palette sees exactly one header with the checked value.
    for (what, req) in [
        (
            "same header twice",
            get(
                "/v1/clusterprofiles",
                &[b"ProjectUid: 5ca1ab1e0000000000000001", b"projectuid: 5ca1ab1e0000000000000001"],
            ),
        ),
        ("padded header", get("/v1/clusterprofiles", &[b"ProjectUid:   5ca1ab1e0000000000000002  "])),
        ("query only", get("/v1/clusterprofiles?projectuid=5ca1ab1e0000000000000002", &[])),
    ] {
        let r = h.raw(&req).await;
        assert_eq!(r.status, 200, "{what}");
        let got = h.last();
        let values: Vec<_> = got.headers.get_all("projectuid").iter().collect();
        assert_eq!(values.len(), 1, "{what}: {values:?}");
    }
    // An empty header asks for no project (issue 9, point 19): tenant scope, no header upstream.
    let r = h.raw(&get("/v1/clusterprofiles", &[b"ProjectUid: "])).await;
    assert_eq!(r.status, 200, "empty header");
    assert!(h.last().headers.get("projectuid").is_none(), "empty header");
    // A route's project replaces every spelling the client sent, query parameters included.
    let r = h
        .raw(&get(
            "/v1/spectroclusters?ProjectUid=p999&Project%55id=p998&PROJECTUID=p997&limit=1",
            &[b"projectUID: p996"],
        ))
        .await;
    assert_eq!(r.status, 200);
    let got = h.last();
    assert_eq!(got.path_and_query, "/v1/spectroclusters?limit=1");
    assert_eq!(got.headers.get_all("projectuid").iter().collect::<Vec<_>>(), vec!["5ca1ab1e0000000000000002"]);
    // Over the whole test, Palette never saw a project outside ci's list.
    for got in upstream_saw(&h) {
        for v in got.headers.get_all("projectuid") {
            assert!(v == "5ca1ab1e0000000000000001" || v == "5ca1ab1e0000000000000002", "Palette saw ProjectUid {v:?}");
        }
        let query = got.path_and_query.split_once('?').map(|(_, q)| q.to_ascii_lowercase()).unwrap_or_default();
        for pair in query.split('&') {
            if pair.starts_with("projectuid=") {
                assert!(
                    pair == "projectuid=5ca1ab1e0000000000000001" || pair == "projectuid=5ca1ab1e0000000000000002",
                    "Palette saw {pair}"
                );
            }
        }
    }
}

/// A local key sent as `ApiKey` and as `Authorization` at once (the same key or two clients'),
/// or either header twice: 400 `BadRequest`, nothing reaches Palette.
#[tokio::test]
async fn local_key_in_two_headers_is_400() {
    let h = Harness::standard().await;
    let ci_api = header("ApiKey", CI_KEY);
    let ci_bearer = header("Authorization", &format!("Bearer {CI_KEY}"));
    let admin_api = header("apikey", ADMIN_KEY);
    let admin_bearer = header("authorization", &format!("bearer {ADMIN_KEY}"));
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("same key in both", vec![&ci_api, &ci_bearer]),
        ("ci ApiKey, admin Bearer", vec![&ci_api, &admin_bearer]),
        ("admin ApiKey, ci Bearer", vec![&admin_api, &ci_bearer]),
        ("ApiKey twice", vec![&ci_api, &admin_api]),
        ("ApiKey twice, same key", vec![&ci_api, &ci_api]),
        ("Authorization twice", vec![&ci_bearer, &admin_bearer]),
    ];
    for (what, mut lines) in cases {
        lines.insert(0, b"Host: gateway.test");
        let r = refused(&h, &request("GET /v1/users HTTP/1.1", &lines), &[400], what).await;
        assert_eq!(r.json()["code"], "BadRequest", "{what}");
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains(CI_KEY) && !text.contains(ADMIN_KEY), "{what}: a key echoed: {text}");
    }
    // A Palette-style raw token next to a local key is not a second local key, but it is not a
    // valid Authorization either: refused.
    let raw_token = header("Authorization", "eyJhbGciOiJIUzI1NiJ9.e30.sig");
    refused(&h, &request("GET /v1/users HTTP/1.1", &[b"Host: gateway.test", &ci_api, &raw_token]), &[400, 401], "raw")
        .await;
}
