//! What crosses the gateway: target forms, hop-by-hop and forwarding headers, request ids,
//! cookies, streaming bodies (issue point 5).
use crate::support::*;
use futures_util::StreamExt;

/// Absolute-form targets (a proxy request for another host) get 400; CONNECT gets 405.
#[tokio::test]
async fn absolute_form_and_connect_are_refused() {
    let h = Harness::standard().await;
    let r = h.raw(b"GET http://evil.example/v1/users HTTP/1.1\r\nHost: evil.example\r\nApiKey: x\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "BadRequest");
    let r = h.raw(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n").await;
    assert_eq!(r.status, 405);
    assert!(h.forwarded().is_empty());
}

/// Hop-by-hop headers are dropped, Host is the upstream's, X-Forwarded-* are the gateway's.
#[tokio::test]
async fn hop_by_hop_and_forwarding_headers() {
    let h = Harness::standard().await;
    let req = format!(
        "GET /v1/users HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {ADMIN_KEY}\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eDp5\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nForwarded: for=6.6.6.6\r\nX-Custom: kept\r\n\r\n"
    );
    let r = h.raw(req.as_bytes()).await;
    assert_eq!(r.status, 200);
    let got = h.last();
    for name in ["x-hop", "keep-alive", "te", "upgrade", "proxy-authorization", "forwarded"] {
        assert!(got.headers.get(name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got.headers["x-forwarded-proto"], "http");
    assert_eq!(got.headers["x-custom"], "kept");
    assert_eq!(got.headers["host"], h.fake.addr().to_string());
}

/// A client's X-Request-Id is kept end to end; without one the gateway makes one and returns it.
#[tokio::test]
async fn request_id_is_kept_or_generated() {
    let h = Harness::standard().await;
    let r = h
        .http
        .get(h.url("/v1/users"))
        .header("ApiKey", ADMIN_KEY)
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(h.last().headers["x-request-id"], "abc-123");
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(rid.len(), 32);
    assert_eq!(h.last().headers["x-request-id"], rid.as_str());
}

/// Set-Cookie from Palette never reaches the client.
#[tokio::test]
async fn set_cookie_is_withheld() {
    let h = Harness::standard().await;
    let r = h.http.get(h.url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("set-cookie").is_none());
}

/// A large download streams through with flat memory (the gateway does not buffer it).
#[tokio::test]
async fn large_download_streams_with_flat_memory() {
    // Memory is the whole process's: measured where no other test runs.
    if !alone_in_process("forwarding::large_download_streams_with_flat_memory") {
        return;
    }
    let h = Harness::standard().await;
    const SIZE: u64 = 512 * 1024 * 1024;
    let before = rss_kib();
    let r = h.http.get(h.url(&format!("/v1/__fake/bytes/{SIZE}"))).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut total = 0u64;
    let mut peak = before;
    while let Some(chunk) = stream.next().await {
        total += chunk.unwrap().len() as u64;
        if total % (64 * 1024 * 1024) < 65536 {
            peak = peak.max(rss_kib());
        }
    }
    assert_eq!(total, SIZE);
    let growth_mib = (peak.saturating_sub(before)) / 1024;
    assert!(growth_mib < 64, "memory grew by {growth_mib} MiB while streaming {} MiB", SIZE >> 20);
}

/// A request body streams to Palette unchanged (here 8 MiB, past any replay buffer).
#[tokio::test]
async fn upload_streams_unchanged() {
    let h = Harness::standard().await;
    let body: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r =
        h.http.put(h.url("/v1/__fake/echo-body")).header("ApiKey", ADMIN_KEY).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), body.len());
}

/// Upstream connections are pooled: many requests, from many client connections, reuse a few
/// connections to Palette instead of opening one each.
#[tokio::test]
async fn upstream_connections_are_reused() {
    let h = Harness::standard().await;
    let before = h.fake.connections();
    for _ in 0..50 {
        // A fresh client each time: a new client connection for every request.
        let r = client().get(h.url("/v1/packs")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let opened = h.fake.connections() - before;
    assert!(opened <= 2, "{opened} upstream connections for 50 sequential requests");
}

/// `Transfer-Encoding: gzip, chunked` (or any transfer coding but a single `chunked`, in any
/// case or spacing, in one header or several) gets 501 NotImplemented naming the header, and
/// nothing reaches Palette; a plain chunked upload still goes through.
#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let h = Harness::standard().await;
    let body = "5\r\nhello\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer-Encoding: GZIP ,Chunked\r\n",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: identity, chunked\r\n",
    ] {
        let req = format!(
            "POST /v1/dashboard/projects HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {ADMIN_KEY}\r\nContent-Type: application/json\r\n{te}Connection: close\r\n\r\n{body}"
        );
        let r = h.raw(req.as_bytes()).await;
        assert_eq!(r.status, 501, "{te:?}: {}", r.head);
        let v = r.json();
        assert_eq!(v["code"], "NotImplemented", "{te:?}");
        assert!(v["message"].as_str().unwrap().contains("Transfer-Encoding"), "{v}");
    }
    assert!(h.forwarded().is_empty(), "a refused request reached Palette");
    let req = format!(
        "POST /v1/dashboard/projects HTTP/1.1\r\nHost: gateway.test\r\nApiKey: {ADMIN_KEY}\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let r = h.raw(req.as_bytes()).await;
    assert_eq!(r.status, 201, "{}", r.head);
    assert_eq!(&h.last().body[..], b"hello");
}
