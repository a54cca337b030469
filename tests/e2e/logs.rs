//! Access and audit logs as a log pipeline sees them (JSON lines): one access event per
//! request with every field, an audit event per mutation with Palette's `AuditUid`, trace
//! context and request ids carried through, reload refusals named by field, and no secret in
//! any line, at debug level, however the run goes wrong.
use std::time::Duration;

use crate::support::*;
use fake_palette::{FakePaletteConfig, FakeUser};
use serde_json::Value;

/// The log lines of this test process (the gateway's, the fake's, the HTTP stacks'), as
/// written to its log file (debug level, JSON lines; the suite-wide secret scan reads the same
/// file) from the moment a test called [`capture`].
struct Capture {
    file: String,
    from: u64,
}

/// Starts reading this process's log lines at the current end of its log file. Every test of
/// the binary logs into that file at once, so each test picks its own events out by request
/// id or path.
fn capture() -> Capture {
    init_logs();
    let file = log_file();
    let from = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    Capture { file, from }
}

impl Capture {
    /// Every whole line written since [`capture`].
    fn text(&self) -> String {
        let mut bytes = Vec::new();
        if let Ok(mut f) = std::fs::File::open(&self.file) {
            use std::io::{Read as _, Seek as _};
            if f.seek(std::io::SeekFrom::Start(self.from)).is_ok() {
                let _ = f.read_to_end(&mut bytes);
            }
        }
        // A line still being written is not one yet.
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        String::from_utf8_lossy(&bytes[..whole]).into_owned()
    }

    /// Every captured line as JSON (each must be).
    fn events(&self) -> Vec<Value> {
        self.text().lines().map(parse).collect()
    }

    /// The events of `target` for request `rid`.
    fn of(&self, target: &str, rid: &str) -> Vec<Value> {
        let text = self.text();
        // Only lines naming `rid` are parsed: the file holds every concurrent test's lines.
        let lines = text.lines().filter(|l| l.contains(rid)).map(parse);
        lines.filter(|e| e["target"] == target && e["request_id"] == rid).collect()
    }

    /// Waits (at most 3 s) until request `rid` has its access event, and returns its events
    /// of `target`.
    async fn wait(&self, target: &str, rid: &str) -> Vec<Value> {
        let seen = eventually(Duration::from_secs(3), || async { !self.of(ACCESS, rid).is_empty() }).await;
        assert!(seen, "no access event for {rid}");
        self.of(target, rid)
    }
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"))
}

const ACCESS: &str = "palette_gateway::access";
const AUDIT: &str = "palette_gateway::audit";

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Each request gives exactly one access event with request id, client, route, method, path
/// (query dropped), project, status, upstream status, bytes in and out, duration, upstream
/// duration and rate-limit wait; a refused request gives one too.
#[tokio::test]
async fn one_access_event_per_request_with_every_field() {
    let cap = &capture();
    // A tight Palette budget on /v1/packs so that a second request waits for it.
    let budget = "[upstream.limits]\npreset = \"none\"\n[[upstream.limits.prefix]]\nprefix = \"/v1/packs\"\nper_second = 2\nburst = 1\n";
    let h = Harness::start(standard_fake(), budget, &standard_rules()).await;

    let r = h
        .http
        .get(h.url("/v1/spectroclusters?filter=query-marker-7"))
        .header("ApiKey", CI_KEY)
        .header("X-Request-Id", "logs-access-get")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    let events = cap.wait(ACCESS, "logs-access-get").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["level"], "INFO");
    assert_eq!(e["client"], "ci");
    assert_eq!(e["route"], "ci-clusters");
    assert_eq!(e["method"], "GET");
    assert_eq!(e["path"], "/v1/spectroclusters", "the query is dropped");
    assert_eq!(e["project"], "5ca1ab1e0000000000000002");
    assert_eq!(e["status"], 200);
    assert_eq!(e["upstream_status"], 200);
    assert_eq!(e["bytes_in"], 0);
    assert_eq!(num(&e["bytes_out"]), body.len() as f64);
    assert_eq!(e["complete"], true);
    assert!(num(&e["upstream_ms"]) > 0.0, "{e}");
    assert!(num(&e["duration_ms"]) >= num(&e["upstream_ms"]), "{e}");
    assert_eq!(num(&e["rate_limit_wait_ms"]), 0.0);
    assert!(!cap.text().contains("query-marker-7"), "the query reached a log line");

    let r = h
        .http
        .post(h.url("/v1/dashboard/projects"))
        .header("ApiKey", CI_KEY)
        .header("ProjectUid", "5ca1ab1e0000000000000001")
        .header("X-Request-Id", "logs-access-post")
        .body("{\"name\":\"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let events = cap.wait(ACCESS, "logs-access-post").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["bytes_in"], 12);
    assert_eq!(events[0]["project"], "5ca1ab1e0000000000000001");
    assert_eq!(events[0]["route"], "none");
    assert_eq!(events[0]["upstream_status"], 201);

    // Refused before it went anywhere: no client, no upstream.
    let r = h
        .http
        .get(h.url("/v1/users"))
        .header("ApiKey", "pgw_no-such-local-key-eeeeeeeeeeeeeeeeeeeeeeeeeeeee")
        .header("X-Request-Id", "logs-access-refused")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let events = cap.wait(ACCESS, "logs-access-refused").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["client"], "none");
    assert_eq!(events[0]["status"], 401);
    assert_eq!(events[0]["upstream_status"], 0);
    assert_eq!(num(&events[0]["upstream_ms"]), 0.0);

    // The second of two back-to-back requests waits for the Palette budget, and says so.
    for rid in ["logs-access-budget-1", "logs-access-budget-2"] {
        let r = h.http.get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).header("X-Request-Id", rid).send().await;
        assert_eq!(r.unwrap().status(), 200);
    }
    let waited = num(&cap.wait(ACCESS, "logs-access-budget-2").await[0]["rate_limit_wait_ms"]);
    assert!(waited >= 300.0, "rate_limit_wait_ms = {waited}");
}

/// Every POST, PUT, PATCH and DELETE gives an audit event: who, what, which project, the
/// outcome and Palette's `AuditUid`; a refused mutation is audited as a failure; a GET is not.
#[tokio::test]
async fn mutations_are_audited_with_palette_audit_uid() {
    let cap = &capture();
    let h = Harness::standard().await;
    let r = h
        .http
        .post(h.url("/v1/dashboard/projects"))
        .header("ApiKey", CI_KEY)
        .header("ProjectUid", "5ca1ab1e0000000000000001")
        .header("X-Request-Id", "logs-audit-post")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let audit_uid = r.headers()["audituid"].to_str().unwrap().to_string();
    let events = cap.wait(AUDIT, "logs-audit-post").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["client"], "ci");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/v1/dashboard/projects");
    assert_eq!(e["project"], "5ca1ab1e0000000000000001");
    assert_eq!(e["status"], 201);
    assert_eq!(e["outcome"], "success");
    assert_eq!(e["audit_uid"], audit_uid.as_str(), "Palette's AuditUid is in the audit event");

    for method in ["PUT", "PATCH", "DELETE"] {
        let rid = format!("logs-audit-{method}");
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = h
            .http
            .request(m, h.url("/v1/packs/pk1"))
            .header("ApiKey", ADMIN_KEY)
            .header("ProjectUid", "p9")
            .header("X-Request-Id", &rid)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let events = cap.wait(AUDIT, &rid).await;
        assert_eq!(events.len(), 1, "{method}");
        assert_eq!(events[0]["client"], "admin");
        assert_eq!(events[0]["method"], method);
        assert_eq!(events[0]["path"], "/v1/packs/pk1");
        assert_eq!(events[0]["project"], "p9");
        assert_eq!(events[0]["outcome"], "success");
    }

    // Refused by policy, and refused before authentication: both audited as failures.
    let r = h.http.delete(h.url("/v1/packs/pk1")).header("ApiKey", CI_KEY).header("X-Request-Id", "logs-audit-denied");
    assert_eq!(r.send().await.unwrap().status(), 403);
    let e = &cap.wait(AUDIT, "logs-audit-denied").await[0];
    assert_eq!(
        (e["client"].as_str(), e["status"].as_u64(), e["outcome"].as_str()),
        (Some("ci"), Some(403), Some("failure"))
    );
    let r = h.http.post(h.url("/v1/packs")).header("X-Request-Id", "logs-audit-anonymous").body("{}");
    assert_eq!(r.send().await.unwrap().status(), 401);
    let e = &cap.wait(AUDIT, "logs-audit-anonymous").await[0];
    assert_eq!((e["client"].as_str(), e["outcome"].as_str()), (Some("none"), Some("failure")));

    let r = h.http.get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).header("X-Request-Id", "logs-audit-get");
    assert_eq!(r.send().await.unwrap().status(), 200);
    assert!(cap.wait(AUDIT, "logs-audit-get").await.is_empty(), "a GET is not audited");
}

/// The access and audit events say which path went to Palette (`upstream_path`, after a
/// route strips its prefix; the query dropped) beside the path the client asked for, and leave
/// it empty for a request refused before it went anywhere.
#[tokio::test]
async fn logs_record_the_path_sent_upstream() {
    let cap = &capture();
    let h = Harness::standard().await;
    let r = h
        .http
        .get(h.url("/team-a/v1/packs?filter=upstream-marker-3"))
        .header("ApiKey", ADMIN_KEY)
        .header("X-Request-Id", "logs-upstream-get")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h.last().path_and_query, "/v1/packs?filter=upstream-marker-3");
    let e = &cap.wait(ACCESS, "logs-upstream-get").await[0];
    assert_eq!((e["path"].as_str(), e["upstream_path"].as_str()), (Some("/team-a/v1/packs"), Some("/v1/packs")));
    assert!(!cap.text().contains("upstream-marker-3"), "the query reached a log line");

    let r = h
        .http
        .put(h.url("/team-a/v1/packs/pk1"))
        .header("ApiKey", ADMIN_KEY)
        .header("X-Request-Id", "logs-upstream-put")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = &cap.wait(AUDIT, "logs-upstream-put").await[0];
    assert_eq!(
        (e["path"].as_str(), e["upstream_path"].as_str()),
        (Some("/team-a/v1/packs/pk1"), Some("/v1/packs/pk1"))
    );

    let r = h.http.get(h.url("/v1/packs")).header("X-Request-Id", "logs-upstream-refused").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let e = &cap.wait(ACCESS, "logs-upstream-refused").await[0];
    assert_eq!(e["upstream_path"], "", "nothing went upstream");
}

/// W3C `traceparent`/`tracestate` and `X-Request-Id` reach Palette unchanged, come back to the
/// client (the request id), and appear in the access and audit events; without an
/// `X-Request-Id` the gateway makes one and uses it everywhere.
#[tokio::test]
async fn trace_context_and_request_id_pass_through() {
    let cap = &capture();
    let h = Harness::standard().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let r = h
        .http
        .post(h.url("/v1/dashboard/projects"))
        .header("ApiKey", CI_KEY)
        .header("traceparent", traceparent)
        .header("tracestate", tracestate)
        .header("X-Request-Id", "logs-trace-0001")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-request-id"], "logs-trace-0001");
    let upstream = h.last();
    assert_eq!(upstream.headers["traceparent"], traceparent);
    assert_eq!(upstream.headers["tracestate"], tracestate);
    assert_eq!(upstream.headers["x-request-id"], "logs-trace-0001");
    let access = cap.wait(ACCESS, "logs-trace-0001").await;
    assert_eq!(access[0]["traceparent"], traceparent);
    assert_eq!(access[0]["tracestate"], tracestate);
    let audit = cap.of(AUDIT, "logs-trace-0001");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["traceparent"], traceparent);

    let r = h.http.get(h.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(rid.len() >= 16, "{rid}");
    assert_eq!(h.last().headers["x-request-id"], rid.as_str());
    assert_eq!(cap.wait(ACCESS, &rid).await.len(), 1);
}

/// A refused reload is logged as an error naming the field; the operator sees why.
#[tokio::test]
async fn refused_reload_is_logged_with_its_field() {
    let cap = &capture();
    let g = FileGateway::start("logs-reload", standard_fake(), "", NO_BUDGET, &standard_rules()).await;
    let broken = format!("{}\n[[clients]]\nname = \"broken\"\ncredential = \"nope\"\n", standard_rules());
    write_atomically(&g.path, &g.config_text("", NO_BUDGET, &broken));
    assert!(g.gateway.reload(&g.path, &standard_env()).is_err());
    let path = g.path.display().to_string();
    let logged: Vec<Value> =
        cap.events().into_iter().filter(|e| e["level"] == "ERROR" && e["path"] == path.as_str()).collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    let error = logged[0]["error"].as_str().unwrap();
    assert!(error.contains("clients[3].credential"), "{error}");
    assert!(logged[0]["message"].as_str().unwrap().contains("previous config keeps serving"));
}

/// A run that goes wrong in every way that handles a secret (a failed login, a refused token,
/// a failed refresh, upstream errors echoing the key and the token, unknown and doubled local
/// keys) leaves no secret in any log line, at debug level.
#[tokio::test]
async fn no_secret_in_any_log_line() {
    let cap = &capture();
    let unknown_key = "pgw_unknown-local-key-ffffffffffffffffffffffffffff";
    // Short tokens, so that the gateway refreshes during the test.
    let fake = FakePaletteConfig { token_lifetime: Duration::from_secs(3), ..standard_fake() };
    let rules = standard_rules().replace("refresh_before = \"3m\"", "refresh_before = \"2s\"");
    let h = Harness::start(fake, NO_BUDGET, &rules).await;
    h.wait_ready().await;
    let get = |path: &str, key: &str| h.http.get(h.url(path)).header("ApiKey", key.to_string()).send();
    assert_eq!(get("/v1/users", BOT_KEY).await.unwrap().status(), 200);
    assert!(eventually(Duration::from_secs(10), || async { h.fake.refreshes() >= 1 }).await, "no refresh");
    // A token Palette refuses: replaced and replayed; and a body too large to replay: 401.
    h.fake.revoke_tokens();
    assert_eq!(get("/v1/users", BOT_KEY).await.unwrap().status(), 200);
    h.fake.revoke_tokens();
    let r = h.http.put(h.url("/v1/packs/x")).header("ApiKey", BOT_KEY).body(vec![b'a'; 100 * 1024]).send().await;
    assert_eq!(r.unwrap().status(), 401);
    // A refresh of a revoked token fails and the gateway logs in again.
    h.fake.revoke_tokens();
    let logins = h.fake.logins();
    assert!(eventually(Duration::from_secs(10), || async { h.fake.logins() > logins }).await, "no new login");
    // Palette errors that echo the credential.
    assert_eq!(get("/v1/__fake/status/500", ADMIN_KEY).await.unwrap().status(), 500);
    assert_eq!(get("/v1/__fake/status/403", BOT_KEY).await.unwrap().status(), 403);
    // Local keys: unknown, as a bearer token, and in both headers at once.
    assert_eq!(get("/v1/users", unknown_key).await.unwrap().status(), 401);
    let r = h.http.get(h.url("/v1/users")).bearer_auth(CI_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", CI_KEY).bearer_auth(ADMIN_KEY).send().await.unwrap();
    assert!(r.status().is_client_error() || r.status().is_success());

    // A login Palette refuses (the gateway's password is not the user's).
    let refusing = FakePaletteConfig {
        users: vec![FakeUser { email: OPS_EMAIL.into(), password: "another-password-0009".into(), org: None }],
        ..standard_fake()
    };
    let h2 = Harness::start(refusing, NO_BUDGET, &standard_rules()).await;
    let r = h2.http.get(h2.url("/v1/users")).header("ApiKey", BOT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(h2.fake.login_attempts() >= 1 && h2.fake.logins() == 0);

    // Let the last events land, then scan.
    let _ = cap.wait(ACCESS, r.headers()["x-request-id"].to_str().unwrap()).await;
    let text = cap.text();
    let mut secrets: Vec<String> = SECRETS.iter().map(|s| s.to_string()).collect();
    secrets.push(unknown_key.into());
    secrets.extend(h.fake.issued_tokens());
    secrets.extend(h2.fake.issued_tokens());
    assert!(h.fake.issued_tokens().len() >= 4, "logins and refreshes issued tokens");
    for line in text.lines() {
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "a secret ({}...) is in a log line: {line}", &s[..8]);
        }
    }
    // The scan saw the run: debug lines, the failed login, the refused token, the refresh.
    let events = cap.events();
    let has = |msg: &str| events.iter().any(|e| e["message"].as_str().is_some_and(|m| m.contains(msg)));
    assert!(events.iter().any(|e| e["level"] == "DEBUG"), "no debug lines captured");
    assert!(has("login failed"), "the failed login was not logged");
    assert!(has("upstream refused the token"), "the refused token was not logged");
    assert!(has("token refreshed"), "the refresh was not logged");
}

/// A client that gives up before the answer (its own timeout) still leaves one access event,
/// and a mutation it abandoned, which Palette received, still leaves an audit event.
#[tokio::test]
async fn abandoned_requests_are_still_logged() {
    let cap = &capture();
    let h = Harness::standard().await;
    let impatient = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(300)).build().unwrap();
    for (method, rid) in [(reqwest::Method::GET, "logs-abandoned-get"), (reqwest::Method::POST, "logs-abandoned-post")]
    {
        let r = impatient
            .request(method, h.url("/v1/__fake/slow/1500"))
            .header("ApiKey", ADMIN_KEY)
            .header("X-Request-Id", rid)
            .body("{}")
            .send()
            .await;
        assert!(r.is_err(), "the client gave up");
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.fake.requests().iter().filter(|r| r.path_and_query == "/v1/__fake/slow/1500").count() == 2
        })
        .await,
        "both requests reached Palette"
    );
    let seen = eventually(Duration::from_secs(5), || async {
        cap.of(ACCESS, "logs-abandoned-get").len() == 1
            && cap.of(ACCESS, "logs-abandoned-post").len() == 1
            && cap.of(AUDIT, "logs-abandoned-post").len() == 1
    })
    .await;
    assert!(
        seen,
        "access GET: {:?}, access POST: {:?}, audit POST: {:?}",
        cap.of(ACCESS, "logs-abandoned-get"),
        cap.of(ACCESS, "logs-abandoned-post"),
        cap.of(AUDIT, "logs-abandoned-post")
    );
    // Recorded as abandoned by the client (nginx's 499), with who and what.
    for rid in ["logs-abandoned-get", "logs-abandoned-post"] {
        let e = &cap.of(ACCESS, rid)[0];
        assert_eq!((e["status"].as_u64(), e["complete"].as_bool()), (Some(499), Some(false)), "{e}");
        assert_eq!(e["client"], "admin");
    }
    let audit = &cap.of(AUDIT, "logs-abandoned-post")[0];
    assert_eq!((audit["client"].as_str(), audit["outcome"].as_str()), (Some("admin"), Some("failure")), "{audit}");
    assert_eq!(audit["path"], "/v1/__fake/slow/1500");
}

/// An upstream body that pauses longer than `upstream.body_idle_timeout` is cut as an error the
/// client sees, never a silently short body: over HTTP/1.1 the connection closes before the
/// declared `Content-Length`, over HTTP/2 the stream is reset; the access log says
/// `complete: false` with the bytes that did go out.
#[tokio::test]
async fn upstream_body_stall_is_an_error_for_h1_and_h2_clients_and_in_the_access_log() {
    let cap = &capture();
    let up = faulty::FaultyUpstream::start(faulty::Mode::StallMidBody).await;
    let text = gateway_config(
        &up.url(),
        "body_idle_timeout = \"1s\"\n[upstream.limits]\npreset = \"none\"\n",
        &standard_rules(),
    )
    .replace("request_timeout = \"5s\"", "request_timeout = \"30s\"");
    let cfg = palette_gateway::config::load_str(&text, std::path::Path::new("."), &standard_env()).unwrap();
    let gw = palette_gateway::app::RunningGateway::start(cfg).await.unwrap();

    // HTTP/1.1, raw: the head promises 100000 bytes, 1000 come, then the connection closes.
    let req = raw_get("/v1/users", &[("ApiKey", ADMIN_KEY), ("X-Request-Id", "stall-h1-raw")]);
    let started = std::time::Instant::now();
    let r = raw_request(gw.proxy_addr, &req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("100000"));
    assert_eq!(r.body.len(), faulty::PARTIAL_LEN, "the body is cut short, with the connection closed");
    assert!(started.elapsed() < Duration::from_secs(5), "cut after the idle limit, not request_timeout");

    // HTTP/1.1 and HTTP/2 clients both see the body fail.
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    for (http, rid) in [(client(), "stall-h1"), (h2, "stall-h2")] {
        let mut resp = http
            .get(format!("http://{}/v1/users", gw.proxy_addr))
            .header("ApiKey", ADMIN_KEY)
            .header("X-Request-Id", rid)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut got = 0;
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => got += c.len(),
                    other => return other.map(|_| ()),
                }
            }
        })
        .await
        .expect("the stalled body ends");
        assert!(ended.is_err(), "{rid}: the body ended cleanly after {got} bytes: the client cannot tell");
        assert_eq!(got, faulty::PARTIAL_LEN, "{rid}");
    }

    // A chunked answer (Palette echoing an upload that stopped) that stalls: the connection
    // closes without the terminating chunk.
    let echo =
        Harness::start(standard_fake(), &format!("body_idle_timeout = \"1s\"\n{NO_BUDGET}"), &standard_rules()).await;
    let mut s = tokio::net::TcpStream::connect(echo.gateway.proxy_addr).await.unwrap();
    let head = format!(
        "POST /v1/__fake/echo-body HTTP/1.1\r\nHost: x\r\nApiKey: {ADMIN_KEY}\r\nX-Request-Id: stall-chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut s, &mut got));
    assert!(read.await.is_ok(), "the stalled chunked answer ends");
    let got = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(got.starts_with("http/1.1 200") && got.contains("transfer-encoding: chunked"), "{got}");
    assert!(got.contains("hello"), "{got}");
    assert!(!got.ends_with("0\r\n\r\n"), "a terminating chunk marks the cut body complete: {got}");

    for rid in ["stall-h1-raw", "stall-h1", "stall-h2", "stall-chunked"] {
        let e = cap.wait(ACCESS, rid).await;
        assert_eq!(e.len(), 1, "{rid}: {e:?}");
        assert_eq!(e[0]["status"], 200, "{rid}");
        assert_eq!(e[0]["complete"], false, "{rid}: {}", e[0]);
        if rid != "stall-chunked" {
            assert_eq!(num(&e[0]["bytes_out"]), faulty::PARTIAL_LEN as f64, "{rid}");
        }
    }
}

/// A log pipeline sees who called: the access and audit events of a request carry the client's
/// address and its `User-Agent` (control characters escaped, bounded); no credential header
/// reaches either; durations read as milliseconds with at most 3 decimals.
#[tokio::test]
async fn events_carry_client_address_and_user_agent() {
    let cap = &capture();
    let h = Harness::standard().await;
    let long_tail = "x".repeat(1000);
    let r = h
        .http
        .post(h.url("/v1/dashboard/projects"))
        .header("ApiKey", CI_KEY)
        .header("ProjectUid", "5ca1ab1e0000000000000001")
        .header("User-Agent", format!("terraform-provider-spectrocloud/0.22 \u{9b}31m {long_tail}"))
        .header("X-Request-Id", "logs-who-called")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let access = cap.wait(ACCESS, "logs-who-called").await;
    let audit = cap.of(AUDIT, "logs-who-called");
    assert_eq!((access.len(), audit.len()), (1, 1), "{access:?} {audit:?}");
    for e in [&access[0], &audit[0]] {
        let addr = e["client_addr"].as_str().unwrap_or_else(|| panic!("no client_addr: {e}"));
        assert!(addr.starts_with("127.0.0.1:"), "{e}");
        let ua = e["user_agent"].as_str().unwrap_or_else(|| panic!("no user_agent: {e}"));
        assert!(ua.starts_with("terraform-provider-spectrocloud/0.22 \\u{9b}31m xxx"), "{ua}");
        assert!(ua.chars().count() <= 256 + 16, "unbounded user_agent: {} chars", ua.chars().count());
        assert!(!e.to_string().contains(CI_KEY), "a credential reached the event: {e}");
    }
    for field in ["duration_ms", "upstream_ms", "rate_limit_wait_ms"] {
        let v = &access[0][field];
        let text = v.to_string();
        let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(v.is_number() && decimals <= 3, "{field} = {text}");
    }
}

/// Every 5xx the gateway makes says why at warn, with the request id: Palette unreachable (502)
/// and too slow (504), and a login credential without a token (503). A 4xx refusal does not.
#[tokio::test]
async fn gateway_5xx_answers_log_their_reason_at_warn() {
    let cap = &capture();
    let warned = |rid: &'static str| {
        let text = cap.text();
        let lines: Vec<Value> = text.lines().filter(|l| l.contains(rid)).map(parse).collect();
        lines.into_iter().filter(|e| e["level"] == "WARN" && e["request_id"] == rid).collect::<Vec<_>>()
    };
    // Nothing listens upstream: 502 for the API key client, 503 for the login one.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let text = gateway_config(&format!("http://127.0.0.1:{port}"), "", &standard_rules());
    let cfg = palette_gateway::config::load_str(&text, std::path::Path::new("."), &standard_env()).unwrap();
    let gw = palette_gateway::app::RunningGateway::start(cfg).await.unwrap();
    let base = format!("http://{}", gw.proxy_addr);
    for (key, rid, status, code) in [
        (ADMIN_KEY, "logs-5xx-unreachable", 502, "UpstreamUnavailable"),
        (BOT_KEY, "logs-5xx-no-token", 503, "CredentialUnavailable"),
        ("pgw_unknown-key-ffffffffffffffffffffffffffffffff", "logs-5xx-not-a-5xx", 401, ""),
    ] {
        let r = client().get(format!("{base}/v1/users")).header("ApiKey", key).header("X-Request-Id", rid);
        assert_eq!(r.send().await.unwrap().status(), status);
        cap.wait(ACCESS, rid).await;
        let w = warned(rid);
        if status < 500 {
            assert!(w.is_empty(), "a {status} logged at warn: {w:?}");
            continue;
        }
        assert_eq!(w.len(), 1, "{rid}: {w:?}");
        assert_eq!((w[0]["status"].as_u64(), w[0]["code"].as_str()), (Some(u64::from(status)), Some(code)), "{w:?}");
        assert!(!w[0]["reason"].as_str().unwrap_or("").is_empty(), "{w:?}");
    }
    // Palette slower than request_timeout: 504.
    let h = Harness::standard().await;
    let rid = "logs-5xx-slow";
    let r = h.http.get(h.url("/v1/__fake/slow/8000")).header("ApiKey", ADMIN_KEY).header("X-Request-Id", rid);
    assert_eq!(r.send().await.unwrap().status(), 504);
    cap.wait(ACCESS, rid).await;
    let w = warned(rid);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["code"], "UpstreamTimeout");
    assert!(w[0]["reason"].as_str().unwrap().contains("5s"), "{w:?}");
}
