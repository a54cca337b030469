//! HTTP/2 (h2c) and HTTP/1.1 clients see clean answers: no body on any answer to `HEAD`
//! (issue 9 point 17), and refusals of requests with small bodies end the stream normally
//! instead of resetting it under the client's upload (point 18).
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};

/// An h2c (prior knowledge) connection to `addr`.
async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// Sends a bodiless `method` request for `path` and returns the status and every DATA byte
/// of the answer (the stream must end cleanly).
async fn h2_exchange(
    client: &h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
) -> (StatusCode, bool, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(key) = key {
        req = req.header("apikey", key);
    }
    let mut client = client.clone().ready().await.expect("h2 ready");
    let (resp, _) = client.send_request(req.body(()).unwrap(), true).expect("send request");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.expect("answer in time").expect("answer");
    let status = resp.status();
    let mut body = resp.into_body();
    let end_with_headers = body.is_end_stream();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("{path}: stream error {e}"));
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (status, end_with_headers, data)
}

/// `HEAD` over HTTP/2: answers the gateway makes itself (400, 401, 403), Palette's answers
/// (200, 404) and the admin listener's (200, 404) all end with their headers: no DATA frame
/// (curl would report PROTOCOL_ERROR), and a `GET` to the same place still has its body.
#[tokio::test]
async fn head_over_h2_has_no_body_whoever_answers() {
    let h = Harness::standard().await;
    let proxy = h.gateway.proxy_addr;
    let admin = h.gateway.admin_addr;
    let gw = h2c(proxy).await;
    let adm = h2c(admin).await;
    // (connection, listener, path, local key, status)
    type Case<'a> = (&'a h2::client::SendRequest<Bytes>, SocketAddr, &'a str, Option<&'a str>, u16);
    let cases: [Case; 8] = [
        (&gw, proxy, "/v1/users", None, 401),
        (&gw, proxy, "/v1/users", Some("pgw_not-a-key"), 401),
        (&gw, proxy, "/v1/auth/authenticate", Some(ADMIN_KEY), 403),
        (&gw, proxy, "/v1/a/%2e%2e/users", Some(ADMIN_KEY), 400),
        (&gw, proxy, "/v1/users", Some(ADMIN_KEY), 200),
        (&gw, proxy, "/v1/__fake/status/404", Some(ADMIN_KEY), 404),
        (&adm, admin, "/healthz", None, 200),
        (&adm, admin, "/nope", None, 404),
    ];
    for (client, addr, path, key, status) in cases {
        let (got, ended, data) = h2_exchange(client, addr, Method::HEAD, path, key).await;
        assert_eq!(got.as_u16(), status, "HEAD {path}");
        assert!(ended && data.is_empty(), "HEAD {path}: {} body bytes: {}", data.len(), String::from_utf8_lossy(&data));
        let (got, _, data) = h2_exchange(client, addr, Method::GET, path, key).await;
        assert_eq!(got.as_u16(), status, "GET {path}");
        assert!(!data.is_empty(), "GET {path} lost its body");
    }
}

/// `HEAD` over HTTP/1.1 to an error the gateway makes: headers only, then the next request on
/// the same connection is answered (no stray body bytes in between).
#[tokio::test]
async fn head_over_http1_has_no_body() {
    let h = Harness::standard().await;
    let mut s = tokio::net::TcpStream::connect(h.gateway.proxy_addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"HEAD /v1/users HTTP/1.1\r\nHost: gateway.test\r\n\r\n").await.unwrap();
    // `read_response` reads a body by Content-Length: a HEAD answer must not have one to read,
    // so ask for the next answer on the same connection and check that it is a clean one.
    s.write_all(&keep_alive_get("/v1/users", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 8192];
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if text.matches("HTTP/1.1 ").count() >= 2 && text.ends_with('}') {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let second = text.find("\r\n\r\n").map(|i| &text[i + 4..]).unwrap_or_default();
    assert!(second.starts_with("HTTP/1.1 200"), "the HEAD answer carried a body:\n{text}");
}

/// A POST with a small body refused by the gateway (403 by `allow`, 401 without a key) over
/// HTTP/2, its DATA lagging its HEADERS as under load, 50 at once on one connection: each
/// client reads the whole 403/401 JSON answer, and no stream is reset under its upload.
#[tokio::test]
async fn refusals_of_small_bodies_end_streams_cleanly_over_h2() {
    let h = Harness::standard().await;
    let addr = h.gateway.proxy_addr;
    let client = h2c(addr).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            // ci may POST only under /v1/dashboard/**: 403. Odd ones carry no key: 401.
            let (key, want, code) =
                if i % 2 == 0 { (Some(CI_KEY), 403, "Forbidden") } else { (None, 401, "Unauthorized") };
            let body = vec![b'x'; 2048];
            let mut req = Request::post(format!("http://{addr}/v1/clusterprofiles"))
                .header("content-type", "application/json")
                .header("content-length", body.len());
            if let Some(key) = key {
                req = req.header("apikey", key);
            }
            let mut client = client.ready().await.expect("h2 ready");
            let (resp, mut upload) = client.send_request(req.body(()).unwrap(), false).expect("send request");
            // The body follows its headers a little later, as it does from a busy client.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let sent = upload.send_data(Bytes::from(body), true);
            let resp = tokio::time::timeout(Duration::from_secs(10), resp).await.expect("answer in time");
            let resp = resp.unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(resp.status().as_u16(), want, "request {i}");
            let mut body = resp.into_body();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap_or_else(|e| panic!("request {i}: body stream error {e}"));
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let v: serde_json::Value = serde_json::from_slice(&data)
                .unwrap_or_else(|e| panic!("request {i}: {e}: {}", String::from_utf8_lossy(&data)));
            assert_eq!(v["code"], code, "request {i}");
            assert!(sent.is_ok(), "request {i}: the upload was cut: {sent:?}");
            // The stream ended normally: no RST_STREAM (of any code) follows the answer.
            let reset =
                tokio::time::timeout(Duration::from_millis(200), std::future::poll_fn(|cx| upload.poll_reset(cx)))
                    .await;
            assert!(reset.is_err(), "request {i}: stream reset after the answer: {reset:?}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(h.forwarded().is_empty());
}

/// The same refusals through curl itself (`--http2-prior-knowledge`, and `-I` for HEAD), 50
/// at once: curl exits 0 and prints the gateway's JSON answer every time. Skipped, with a
/// message, where curl (with HTTP/2) is not installed.
#[tokio::test]
async fn curl_h2c_gets_refusals_cleanly() {
    let version = std::process::Command::new("curl").arg("--version").output();
    let has_h2 = version.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !has_h2 {
        eprintln!("SKIPPED curl_h2c_gets_refusals_cleanly: curl with HTTP2 support is not installed");
        return;
    }
    let h = Harness::standard().await;
    let url = h.url("/v1/clusterprofiles");
    // ci may not POST there (403); HEAD goes to a path no client may call (403 too).
    let head_url = h.url("/v1/auth/authenticate");
    let body = "x".repeat(60 * 1024);
    let mut runs = Vec::new();
    for i in 0..50 {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--http2-prior-knowledge", "--max-time", "10", "-H"])
            .arg(format!("ApiKey: {CI_KEY}"))
            .args(["-w", "\n%{http_code} %{http_version}"]);
        if i % 5 == 0 {
            cmd.arg("-I").arg(&head_url);
        } else {
            cmd.args(["-X", "POST", "-H", "Content-Type: application/json", "--data-binary"]).arg(&body).arg(&url);
        }
        // curl runs on its own thread; `--max-time` bounds it.
        runs.push(tokio::task::spawn_blocking(move || (i, cmd.output())));
    }
    for run in futures_util::future::join_all(runs).await {
        let (i, out) = run.expect("curl thread");
        let out = out.expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl {i} failed ({:?}): {stderr}\n{stdout}", out.status.code());
        let (answer, last) = stdout.rsplit_once('\n').unwrap_or_default();
        assert_eq!(last, "403 2", "curl {i}: {stdout}");
        if i % 5 != 0 {
            let v: serde_json::Value =
                serde_json::from_str(answer).unwrap_or_else(|e| panic!("curl {i}: {e}: {stdout}"));
            assert_eq!(v["code"], "Forbidden", "curl {i}");
        }
    }
}
