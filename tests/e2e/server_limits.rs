//! `[server]` limits against large, slow and too many clients: 413 and 431, 503 past the
//! in-flight limit, the header-read and idle timeouts, `max_connections`, and clients that go
//! away mid-transfer.
use std::time::{Duration, Instant};

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A gateway with extra `[server]` lines and the standard rules.
async fn gateway(name: &str, server_extra: &str) -> FileGateway {
    FileGateway::start(name, standard_fake(), server_extra, NO_BUDGET, &standard_rules()).await
}

/// The in-flight gauge as `/metrics` shows it.
async fn inflight(g: &FileGateway) -> f64 {
    metric(&scrape(&g.http, &g.admin).await, "palette_gateway_inflight_requests", &[])
}

async fn inflight_becomes(g: &FileGateway, n: f64, within: Duration) -> bool {
    eventually(within, || async { inflight(g).await == n }).await
}

/// What reached the fake other than the gateway's own login and refresh calls.
fn forwarded(g: &FileGateway) -> Vec<fake_palette::RecordedRequest> {
    g.fake.requests().into_iter().filter(|r| !own_call(r)).collect()
}

/// Reads until the server closes the connection (EOF or reset); how long that took, or `None`
/// if it stayed open for `within`.
async fn closed_within(s: &mut tokio::net::tcp::OwnedReadHalf, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut sink)).await.ok().map(|_| started.elapsed())
}

/// A body declared larger than `max_request_body` gets 413 in Palette's shape before anything
/// is forwarded.
#[tokio::test]
async fn declared_body_over_the_limit_is_413() {
    let g = gateway("limits-413-declared", "max_request_body = 1024\n").await;
    let r = g
        .http
        .post(g.url("/v1/dashboard/projects"))
        .header("ApiKey", ADMIN_KEY)
        .header("X-Request-Id", "too-large-1")
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "RequestEntityTooLarge");
    assert!(v["message"].as_str().unwrap().contains("1024"), "{v}");
    assert_eq!(v["ref"], "too-large-1");
    assert!(v["details"].is_object());
    assert!(forwarded(&g).is_empty(), "nothing reached Palette");
    // At the limit it passes.
    let r = g.http.post(g.url("/v1/dashboard/projects")).header("ApiKey", ADMIN_KEY).body(vec![b'x'; 1024]);
    assert_eq!(r.send().await.unwrap().status(), 201);
}

/// A chunked body (no declared length) that grows past `max_request_body` gets 413, and no
/// more than the limit ever reaches Palette.
#[tokio::test]
async fn chunked_body_growing_past_the_limit_is_413() {
    let g = gateway("limits-413-chunked", "max_request_body = 1024\n").await;
    for (method, key) in [("POST", ADMIN_KEY), ("PUT", ADMIN_KEY), ("PUT", BOT_KEY)] {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..10).map(|_| Ok(vec![b'y'; 512])).collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let url = g.url("/v1/dashboard/projects/big");
        let req = if method == "POST" { g.http.post(url) } else { g.http.put(url) };
        let r = req.header("ApiKey", key).body(body).send().await.unwrap();
        assert_eq!(r.status(), 413, "{method} as {key}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "RequestEntityTooLarge");
    }
    let largest = forwarded(&g).iter().map(|r| r.body.len()).max().unwrap_or(0);
    assert!(largest <= 1024, "{largest} bytes of an oversized body reached Palette");
    // A chunked body within the limit passes whole.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..2).map(|_| Ok(vec![b'z'; 500])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = g.http.post(g.url("/v1/dashboard/projects")).header("ApiKey", ADMIN_KEY).body(body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(forwarded(&g).last().unwrap().body.len(), 1000);
}

/// A request head larger than `max_header_bytes` gets 431 and is not forwarded.
#[tokio::test]
async fn request_head_over_max_header_bytes_is_431() {
    let g = gateway("limits-431", "max_header_bytes = 8192\n").await;
    let big = "a".repeat(16 * 1024);
    let r = raw_request(g.gateway.proxy_addr, &raw_get("/v1/users", &[("ApiKey", ADMIN_KEY), ("X-Big", &big)])).await;
    assert_eq!(r.status, 431, "{}", r.head);
    let small = "a".repeat(4 * 1024);
    let r = raw_request(g.gateway.proxy_addr, &raw_get("/v1/users", &[("ApiKey", ADMIN_KEY), ("X-Big", &small)])).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(forwarded(&g).len(), 1, "only the request within the limit was forwarded");
}

/// With `max_inflight_requests = 2` and two slow requests in flight, a third gets 503
/// `Overloaded` with `Retry-After` at once; the gauge returns to 0 and requests pass again.
#[tokio::test]
async fn over_max_inflight_requests_is_503_at_once() {
    let g = gateway("limits-inflight", "max_inflight_requests = 2\n").await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (g.http.clone(), g.url("/v1/__fake/slow/3000"));
            tokio::spawn(async move { http.get(url).header("ApiKey", ADMIN_KEY).send().await.unwrap().status() })
        })
        .collect();
    assert!(inflight_becomes(&g, 2.0, Duration::from_secs(5)).await, "two requests in flight");
    let started = Instant::now();
    let r = g.http.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), 503);
    assert!(took < Duration::from_millis(500), "the refusal took {took:?}");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "Overloaded");
    assert!(!forwarded(&g).iter().any(|r| r.path_and_query == "/v1/users"), "the refused request stayed local");
    for t in slow {
        assert_eq!(t.await.unwrap(), 200, "the requests within the limit were served");
    }
    assert!(inflight_becomes(&g, 0.0, Duration::from_secs(2)).await, "the gauge returns to 0");
    assert_eq!(g.http.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap().status(), 200);
}

/// Slowloris: a client that trickles its request head one byte at a time is cut off about
/// `header_read_timeout` after it started, however steadily it sends.
#[tokio::test]
async fn slow_request_head_is_cut_at_header_read_timeout() {
    let g = gateway("limits-slowloris", "header_read_timeout = \"1s\"\n").await;
    let s = TcpStream::connect(g.gateway.proxy_addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head = format!("GET /v1/users HTTP/1.1\r\nHost: x\r\nApiKey: {ADMIN_KEY}\r\nX-Slow: {}", "s".repeat(200));
    let trickle = tokio::spawn(async move {
        for b in head.bytes() {
            if wr.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let took = closed_within(&mut rd, Duration::from_secs(6)).await.expect("the connection was closed");
    trickle.abort();
    assert!(took >= Duration::from_millis(900), "closed before the timeout: {took:?}");
    assert!(took < Duration::from_millis(2500), "closed long after the timeout: {took:?}");
    assert!(forwarded(&g).is_empty());
}

/// An idle keep-alive connection is closed after `idle_timeout`; a request that takes longer
/// than the idle timeout is not cut.
#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let g = gateway("limits-idle", "idle_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(g.gateway.proxy_addr).await.unwrap();
    // Busy for longer than the idle timeout: not idle.
    s.write_all(&keep_alive_get("/v1/__fake/slow/1600", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(5)).await.expect("the slow request is answered");
    assert_eq!(r.status, 200);
    s.write_all(&keep_alive_get("/v1/users", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
    assert_eq!(read_response(&mut s, Duration::from_secs(5)).await.expect("kept alive").status, 200);
    let (mut rd, _wr) = s.into_split();
    let took = closed_within(&mut rd, Duration::from_secs(5)).await.expect("the idle connection was closed");
    assert!(took >= Duration::from_millis(900), "closed before the idle timeout: {took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

/// With `max_connections = 2`, a third connection is not served while two are open, and is
/// served as soon as one closes.
#[tokio::test]
async fn third_connection_waits_for_a_free_slot() {
    let g = gateway("limits-connections", "max_connections = 2\n").await;
    let addr = g.gateway.proxy_addr;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&keep_alive_get("/v1/users", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
        assert_eq!(read_response(&mut s, Duration::from_secs(5)).await.expect("served").status, 200);
        open.push(s);
    }
    let mut third = TcpStream::connect(addr).await.expect("the kernel queues the connection");
    third.write_all(&keep_alive_get("/v1/users", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
    assert!(read_response(&mut third, Duration::from_millis(800)).await.is_none(), "served past max_connections");
    drop(open.pop());
    let r = read_response(&mut third, Duration::from_secs(3)).await.expect("served once a slot is free");
    assert_eq!(r.status, 200);
}

/// The standard rules without the login credential (and its client), so that the only
/// connections to the fake are the ones requests open.
fn api_key_rules() -> String {
    let rules = standard_rules();
    let cut = |text: String, from: &str, to: &str| {
        let start = text.find(from).expect(from);
        let end = start + text[start..].find(to).expect(to);
        let mut out = text.clone();
        out.replace_range(start..end, "");
        out
    };
    let rules = cut(rules, "[credentials.ops]", "[[clients]]");
    cut(rules, "[[clients]]\nname = \"bot\"", "[[routes]]")
}

/// Established TCP connections accepted by the listener on `port` (the fake's side of each
/// gateway → fake connection), from /proc/net/tcp; `None` where that file does not exist.
fn connections_to(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    Some(
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&local) && cols[3] == "01"
            })
            .count(),
    )
}

/// Whether the upstream side of an abandoned request was cancelled: no connection to the fake
/// stays open (none other was ever opened).
async fn upstream_released(g: &FileGateway) -> bool {
    let port = g.fake.addr().port();
    eventually(Duration::from_secs(5), || async { !matches!(connections_to(port), Some(n) if n > 0) }).await
}

/// A client that goes away in the middle of a large download releases everything: the
/// in-flight gauge returns to 0 and the download from Palette is cancelled.
#[tokio::test]
async fn client_gone_mid_download_releases_everything() {
    let g = FileGateway::start("limits-gone-download", standard_fake(), "", NO_BUDGET, &api_key_rules()).await;
    let mut s = TcpStream::connect(g.gateway.proxy_addr).await.unwrap();
    s.write_all(&keep_alive_get("/v1/__fake/bytes/200000000", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < 256 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("data").unwrap();
        assert!(n > 0, "closed early");
        got += n;
    }
    assert!(inflight_becomes(&g, 1.0, Duration::from_secs(2)).await, "the download is in flight");
    assert_ne!(connections_to(g.fake.addr().port()), Some(0), "the download streams from Palette");
    drop(s);
    assert!(
        inflight_becomes(&g, 0.0, Duration::from_secs(5)).await,
        "the in-flight gauge stays up after the client left"
    );
    assert!(upstream_released(&g).await, "the download from Palette went on after the client left");
}

/// A client that goes away in the middle of a large upload releases everything: the in-flight
/// gauge returns to 0 and the upload to Palette is cancelled.
#[tokio::test]
async fn client_gone_mid_upload_releases_everything() {
    let g = FileGateway::start("limits-gone-upload", standard_fake(), "", NO_BUDGET, &api_key_rules()).await;
    let mut s = TcpStream::connect(g.gateway.proxy_addr).await.unwrap();
    let head = format!(
        "PUT /v1/packs/upload HTTP/1.1\r\nHost: x\r\nApiKey: {ADMIN_KEY}\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'u'; 64 * 1024];
    for _ in 0..16 {
        s.write_all(&chunk).await.unwrap();
    }
    assert!(inflight_becomes(&g, 1.0, Duration::from_secs(2)).await, "the upload is in flight");
    assert_ne!(connections_to(g.fake.addr().port()), Some(0), "the upload streams to Palette");
    drop(s);
    assert!(
        inflight_becomes(&g, 0.0, Duration::from_secs(5)).await,
        "the in-flight gauge stays up after the client left"
    );
    assert!(upstream_released(&g).await, "the upload to Palette went on after the client left");
    // The gateway still serves.
    assert_eq!(g.http.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap().status(), 200);
}

/// Over HTTP/2 too, a header block larger than `max_header_bytes` gets 431.
#[tokio::test]
async fn h2_header_block_over_max_header_bytes_is_431() {
    let g = gateway("limits-431-h2", "max_header_bytes = 8192\n").await;
    let h2 =
        reqwest::Client::builder().no_proxy().http2_prior_knowledge().timeout(Duration::from_secs(10)).build().unwrap();
    let r = h2.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let big = "a".repeat(16 * 1024);
    let r = h2.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).header("X-Big", &big).send().await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => panic!("no 431 over HTTP/2: {e:?}"),
    }
    assert_eq!(forwarded(&g).len(), 1, "only the request within the limit was forwarded");
}

/// Four clients that declare `Content-Length: 10` and never send the body hold every in-flight
/// slot only until `request_body_timeout`: then each gets 408 `RequestTimeout` and everyone
/// else is served again. Both buffered bodies (PUT, replayable) and token-credential bodies.
#[tokio::test]
async fn declared_but_unsent_bodies_get_408_and_free_their_slots() {
    let g = gateway("limits-408-unsent", "max_inflight_requests = 4\nrequest_body_timeout = \"1s\"\n").await;
    let mut held = Vec::new();
    for (method, key) in [("PUT", ADMIN_KEY), ("PUT", ADMIN_KEY), ("DELETE", ADMIN_KEY), ("POST", BOT_KEY)] {
        let mut s = TcpStream::connect(g.gateway.proxy_addr).await.unwrap();
        let head = format!(
            "{method} /v1/dashboard/projects/x HTTP/1.1\r\nHost: x\r\nApiKey: {key}\r\nContent-Length: 10\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    let started = Instant::now();
    assert!(inflight_becomes(&g, 4.0, Duration::from_secs(2)).await, "four bodies are awaited");
    let r = g.http.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 503, "while the slots are held");
    for s in &mut held {
        let r = read_response(s, Duration::from_secs(5)).await.expect("an answer to the stalled body");
        assert_eq!(r.status, 408, "{}", r.head);
        assert_eq!(r.json()["code"], "RequestTimeout");
        assert!(r.json()["message"].as_str().unwrap().contains("request_body_timeout"), "{:?}", r.json());
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "answered after {took:?}");
    assert!(inflight_becomes(&g, 0.0, Duration::from_secs(2)).await, "the slots are free");
    assert_eq!(g.http.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap().status(), 200);
    assert!(forwarded(&g).iter().all(|r| r.path_and_query != "/v1/dashboard/projects/x"), "nothing half-sent");
}

/// A streamed upload (POST with an API key, not buffered) that stops halfway gets 408 once it
/// has been silent for `request_body_timeout`, and gives back its slot.
#[tokio::test]
async fn stalled_streamed_upload_gets_408() {
    let g = gateway("limits-408-streamed", "request_body_timeout = \"1s\"\n").await;
    let mut s = TcpStream::connect(g.gateway.proxy_addr).await.unwrap();
    let head = format!(
        "POST /v1/dashboard/projects HTTP/1.1\r\nHost: x\r\nApiKey: {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{{\"a\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let r = read_response(&mut s, Duration::from_secs(5)).await.expect("an answer to the stalled upload");
    assert_eq!(r.status, 408, "{}", r.head);
    assert_eq!(r.json()["code"], "RequestTimeout");
    assert!(inflight_becomes(&g, 0.0, Duration::from_secs(2)).await, "the slot is free");
}

/// A client that asks for a large download and then stops reading is disconnected once it has
/// accepted no bytes for `send_timeout`: its in-flight slot and the download from Palette are
/// released instead of being held for as long as the client keeps the socket open.
#[tokio::test]
async fn client_that_stops_reading_is_cut_at_send_timeout() {
    let g = FileGateway::start(
        "limits-slow-reader",
        standard_fake(),
        "send_timeout = \"1s\"\n",
        NO_BUDGET,
        &api_key_rules(),
    )
    .await;
    let mut s = TcpStream::connect(g.gateway.proxy_addr).await.unwrap();
    s.write_all(&keep_alive_get("/v1/__fake/bytes/200000000", &[("ApiKey", ADMIN_KEY)])).await.unwrap();
    assert!(inflight_becomes(&g, 1.0, Duration::from_secs(2)).await, "the download is in flight");
    // The client reads nothing: once the socket buffers are full, the gateway's writes wait.
    assert!(
        inflight_becomes(&g, 0.0, Duration::from_secs(15)).await,
        "a client that stopped reading still holds its in-flight slot"
    );
    assert!(upstream_released(&g).await, "the download from Palette went on for a client that stopped reading");
    // What the client does get is cut short: the connection ends long before 200 MB.
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("the connection stayed open after the send timeout"),
        }
    }
    assert!(got < 200_000_000, "the whole body arrived: {got}");
    assert_eq!(g.http.get(g.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap().status(), 200);
}

/// Over HTTP/2 too: a stream whose body never comes (a PUT declaring 10 bytes, buffered, and a
/// POST streamed upstream) gets 408 `RequestTimeout` after `request_body_timeout`.
#[tokio::test]
async fn h2_stalled_request_bodies_get_408() {
    let g = gateway("limits-408-h2", "request_body_timeout = \"1s\"\n").await;
    let h2 =
        reqwest::Client::builder().no_proxy().http2_prior_knowledge().timeout(Duration::from_secs(10)).build().unwrap();
    for (method, path) in
        [(reqwest::Method::PUT, "/v1/dashboard/projects/x"), (reqwest::Method::POST, "/v1/dashboard/projects")]
    {
        let first: Result<Vec<u8>, std::io::Error> = Ok(b"12345".to_vec());
        let never = futures_util::stream::pending::<Result<Vec<u8>, std::io::Error>>();
        let body =
            reqwest::Body::wrap_stream(futures_util::StreamExt::chain(futures_util::stream::iter([first]), never));
        let started = Instant::now();
        let r = h2
            .request(method.clone(), g.url(path))
            .header("ApiKey", ADMIN_KEY)
            .header("Content-Length", "10")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method}: no answer over HTTP/2: {e:?}"));
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 408, "{method}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{method}: {took:?}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "RequestTimeout", "{method}");
    }
    assert!(inflight_becomes(&g, 0.0, Duration::from_secs(2)).await, "the slots are free");
}

/// Over HTTP/2 a client that stops reading a download does not fill its socket: it stops
/// granting flow-control credit. That stalls the answer just the same, and is cut the same way:
/// after `send_timeout` without progress the connection is closed and the slot released.
#[tokio::test]
async fn h2_client_that_stops_reading_is_cut_at_send_timeout() {
    let g = FileGateway::start(
        "limits-slow-reader-h2",
        standard_fake(),
        "send_timeout = \"1s\"\n",
        NO_BUDGET,
        &api_key_rules(),
    )
    .await;
    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let mut r = h2.get(g.url("/v1/__fake/bytes/200000000")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert!(r.chunk().await.unwrap().is_some(), "the download started");
    // A slow reader that keeps taking bytes (a pause shorter than send_timeout) is not cut.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(r.chunk().await.unwrap().is_some(), "a slow but steady reader was cut");
    }
    // The client holds the answer and reads no more.
    assert!(
        inflight_becomes(&g, 0.0, Duration::from_secs(10)).await,
        "an HTTP/2 client that stopped reading still holds its in-flight slot"
    );
    assert!(upstream_released(&g).await, "the download from Palette went on for a client that stopped reading");
    let mut rest = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match r.chunk().await {
                Ok(Some(c)) => rest += c.len(),
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the cut stream ends");
    assert!(ended.is_err(), "the cut download ended cleanly after {rest} more bytes");
}
