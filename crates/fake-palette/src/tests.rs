//! End-to-end tests of the fake Palette over real sockets on `127.0.0.1:0`.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

use super::*;

const KEY: &str = "palette-key-1";
const EMAIL: &str = "ops@example.com";
const PASSWORD: &str = "s3cret";

fn config() -> FakePaletteConfig {
    FakePaletteConfig {
        api_keys: vec![KEY.to_string()],
        users: vec![
            FakeUser { email: EMAIL.into(), password: PASSWORD.into(), org: None },
            FakeUser { email: "tenant@example.com".into(), password: PASSWORD.into(), org: Some("acme".into()) },
        ],
        ..FakePaletteConfig::default()
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect()
    }
}

async fn send(
    fake: &FakePalette,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(format!("{}{path}", fake.url()));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client.request(req.body(Full::new(body.into())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    Answer { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

async fn get(fake: &FakePalette, path: &str, headers: &[(&str, &str)]) -> Answer {
    send(fake, Method::GET, path, headers, Bytes::new()).await
}

async fn login(fake: &FakePalette, body: Value) -> Answer {
    send(
        fake,
        Method::POST,
        "/v1/auth/authenticate?setCookie=false",
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

async fn token(fake: &FakePalette) -> String {
    let answer = login(fake, json!({"emailId": EMAIL, "password": PASSWORD})).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()["Authorization"].as_str().unwrap().to_string()
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn assert_palette_error(answer: &Answer, status: StatusCode, code: &str) {
    assert_eq!(answer.status, status);
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].is_string() && body["ref"].is_string(), "{body}");
    assert_eq!(body["details"], json!({}));
}

#[tokio::test]
async fn login_ok_and_bad_password() {
    let fake = FakePalette::start(config()).await.unwrap();

    let ok = login(&fake, json!({"emailId": EMAIL, "password": PASSWORD})).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json()["isMfa"], false);
    assert!(ok.cookies().is_empty(), "setCookie=false: no cookie");

    let bad = login(&fake, json!({"emailId": EMAIL, "password": "nope"})).await;
    assert_palette_error(&bad, StatusCode::UNAUTHORIZED, "Unauthorized");

    let garbled = login(&fake, json!({"user": EMAIL})).await;
    assert_palette_error(&garbled, StatusCode::BAD_REQUEST, "BadRequest");

    let body = json!({"emailId": EMAIL, "password": PASSWORD}).to_string();
    let cookie = send(&fake, Method::POST, "/v1/auth/authenticate", &[], body).await;
    assert_eq!(cookie.status, StatusCode::OK);
    let jwt = cookie.json()["Authorization"].as_str().unwrap().to_string();
    assert_eq!(cookie.cookies(), vec![format!("Authorization={jwt}; Path=/; HttpOnly")]);

    assert_eq!((fake.logins(), fake.login_attempts()), (2, 4));
    assert_eq!(fake.issued_tokens().len(), 2);
    assert_eq!(fake.issued_tokens()[1], jwt);
}

#[tokio::test]
async fn login_org_must_match_when_the_user_has_one() {
    let fake = FakePalette::start(config()).await.unwrap();
    let user = |org: Value| json!({"emailId": "tenant@example.com", "password": PASSWORD, "org": org});
    assert_eq!(login(&fake, user(json!("acme"))).await.status, StatusCode::OK);
    assert_eq!(login(&fake, user(json!("other"))).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&fake, user(Value::Null)).await.status, StatusCode::UNAUTHORIZED);
    let any_org = json!({"emailId": EMAIL, "password": PASSWORD, "org": "whatever"});
    assert_eq!(login(&fake, any_org).await.status, StatusCode::OK);
}

#[tokio::test]
async fn refresh_ok_then_revoked() {
    let fake = FakePalette::start(config()).await.unwrap();
    let first = token(&fake).await;
    let refreshed = get(&fake, &format!("/v1/auth/refresh/{first}?setCookie=false"), &[]).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let second = refreshed.json()["Authorization"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert_eq!(fake.refreshes(), 1);
    let ok = get(&fake, "/v1/users", &[("Authorization", &second)]).await;
    assert_eq!(ok.status, StatusCode::OK);

    fake.revoke_tokens();
    let again = get(&fake, &format!("/v1/auth/refresh/{second}"), &[]).await;
    assert_palette_error(&again, StatusCode::UNAUTHORIZED, "Unauthorized");
    let refused = get(&fake, "/v1/users", &[("Authorization", &second)]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(fake.refreshes(), 1);
    // Tokens issued after the revocation work.
    let fresh = token(&fake).await;
    let ok = get(&fake, "/v1/users", &[("Authorization", &fresh)]).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn api_key_accepted_and_rejected_with_echo() {
    let fake = FakePalette::start(config()).await.unwrap();
    let ok = get(&fake, "/v1/spectroclusters?limit=5", &[("apiKey", KEY)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.json(),
        json!({"method": "GET", "path": "/v1/spectroclusters", "query": "limit=5", "projectUid": null, "authenticatedWith": "ApiKey"})
    );
    assert_eq!(ok.cookies(), vec!["fake-session=abc"]);

    let bad = get(&fake, "/v1/spectroclusters", &[("ApiKey", "wrong-key-42")]).await;
    assert_palette_error(&bad, StatusCode::UNAUTHORIZED, "Unauthorized");
    assert_eq!(bad.json()["message"], "invalid api key wrong-key-42");

    let none = get(&fake, "/v1/spectroclusters", &[]).await;
    assert_palette_error(&none, StatusCode::UNAUTHORIZED, "Unauthorized");
}

#[tokio::test]
async fn bearer_token_rejected_and_api_key_wins() {
    let fake = FakePalette::start(config()).await.unwrap();
    let jwt = token(&fake).await;
    let bearer = format!("Bearer {jwt}");
    let refused = get(&fake, "/v1/users", &[("Authorization", &bearer)]).await;
    assert_palette_error(&refused, StatusCode::UNAUTHORIZED, "Unauthorized");

    let both = [("ApiKey", "wrong"), ("Authorization", jwt.as_str())];
    assert_eq!(get(&fake, "/v1/users", &both).await.status, StatusCode::UNAUTHORIZED);
    let both = [("ApiKey", KEY), ("Authorization", "garbage")];
    assert_eq!(get(&fake, "/v1/users", &both).await.status, StatusCode::OK);
}

#[tokio::test]
async fn expired_token_rejected() {
    let fake =
        FakePalette::start(FakePaletteConfig { token_lifetime: Duration::from_secs(1), ..config() }).await.unwrap();
    let jwt = token(&fake).await;
    assert_eq!(get(&fake, "/v1/users", &[("Authorization", &jwt)]).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = get(&fake, "/v1/users", &[("Authorization", &jwt)]).await;
    assert_palette_error(&expired, StatusCode::UNAUTHORIZED, "Unauthorized");
    let refresh = get(&fake, &format!("/v1/auth/refresh/{jwt}"), &[]).await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn exp_claim_present_or_absent() {
    let with = FakePalette::start(config()).await.unwrap();
    let p = payload(&token(&with).await);
    assert_eq!(p["sub"], EMAIL);
    let (iat, exp) = (p["iat"].as_u64().unwrap(), p["exp"].as_u64().unwrap());
    assert!((899..=900).contains(&(exp - iat)), "iat {iat} exp {exp}");

    let without = FakePalette::start(FakePaletteConfig { token_exp_claim: false, ..config() }).await.unwrap();
    let p = payload(&token(&without).await);
    assert!(p.get("exp").is_none(), "{p}");
    assert!(p["jti"].is_string() && p["iat"].is_u64(), "{p}");
}

#[tokio::test]
async fn post_creates_with_audit_uid_and_project_uid_is_echoed() {
    let fake = FakePalette::start(config()).await.unwrap();
    let created = send(&fake, Method::POST, "/v1/dashboard/spectroclusters/search", &[("ApiKey", KEY)], "{}").await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(created.json()["uid"].as_str().unwrap().len() >= 12);
    assert!(!created.headers["audituid"].is_empty());
    assert_eq!(created.cookies(), vec!["fake-session=abc"]);

    let put = send(&fake, Method::PUT, "/v1/users/u1", &[("ApiKey", KEY), ("ProjectUID", "p042")], "{}").await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.json()["projectUid"], "p042");
    assert_eq!(put.json()["method"], "PUT");
}

#[tokio::test]
async fn project_metadata_lists_the_known_projects_by_exact_name() {
    let projects = vec![FakeProject::new("Default", "aa01"), FakeProject::new("team a", "bb02")];
    let fake = FakePalette::start(FakePaletteConfig { projects, ..config() }).await.unwrap();
    let path = "/v1/dashboard/projects/metadata";
    let all = send(&fake, Method::GET, path, &[("ApiKey", KEY)], "").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(
        all.json(),
        json!({"items": [{"metadata": {"name": "Default", "uid": "aa01"}}, {"metadata": {"name": "team a", "uid": "bb02"}}]})
    );
    let one = send(&fake, Method::GET, &format!("{path}?name=team%20a"), &[("ApiKey", KEY)], "").await;
    assert_eq!(one.json(), json!({"items": [{"metadata": {"name": "team a", "uid": "bb02"}}]}));
    let none = send(&fake, Method::GET, &format!("{path}?name=Def"), &[("ApiKey", KEY)], "").await;
    assert_eq!(none.json(), json!({"items": []}));
    fake.set_projects(vec![FakeProject::new("later", "cc03")]);
    let later = send(&fake, Method::GET, path, &[("ApiKey", KEY)], "").await;
    assert_eq!(later.json()["items"][0]["metadata"]["name"], "later");
    assert_eq!(send(&fake, Method::GET, path, &[], "").await.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn bytes_hook_streams_the_exact_count() {
    let fake = FakePalette::start(config()).await.unwrap();
    let n: u64 = 3 * 64 * 1024 + 1001;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("{}/v1/__fake/bytes/{n}", fake.url()))
        .header("ApiKey", KEY)
        .body(Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], n.to_string().as_str());
    let mut body = resp.into_body();
    let mut offset = 0u64;
    while let Some(frame) = body.frame().await {
        for byte in frame.unwrap().into_data().unwrap() {
            assert_eq!(byte, (offset % 256) as u8, "offset {offset}");
            offset += 1;
        }
    }
    assert_eq!(offset, n);

    let zero = get(&fake, "/v1/__fake/bytes/0", &[("ApiKey", KEY)]).await;
    assert_eq!((zero.status, zero.body.len()), (StatusCode::OK, 0));
}

#[tokio::test]
async fn status_hook_echoes_the_credential() {
    let fake = FakePalette::start(config()).await.unwrap();
    let forbidden = get(&fake, "/v1/__fake/status/403", &[("ApiKey", KEY)]).await;
    assert_palette_error(&forbidden, StatusCode::FORBIDDEN, "Forbidden");
    assert_eq!(forbidden.json()["message"], format!("credential {KEY} is not allowed"));
    let jwt = token(&fake).await;
    let limited = get(&fake, "/v1/__fake/status/429", &[("Authorization", &jwt)]).await;
    assert_palette_error(&limited, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
    assert!(limited.json()["message"].as_str().unwrap().contains(jwt.as_str()));
    let no_content = get(&fake, "/v1/__fake/status/204", &[("ApiKey", KEY)]).await;
    assert_eq!((no_content.status, no_content.body.len()), (StatusCode::NO_CONTENT, 0));
    let unknown = get(&fake, "/v1/__fake/nope", &[("ApiKey", KEY)]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn echo_body_streams_back_and_records_the_first_mib() {
    let fake = FakePalette::start(config()).await.unwrap();
    let big: Vec<u8> = (0..RECORDED_BODY_LIMIT + 12345).map(|i| (i % 251) as u8).collect();
    let echoed = send(
        &fake,
        Method::PUT,
        "/v1/__fake/echo-body",
        &[("ApiKey", KEY), ("content-type", "application/x-test")],
        big.clone(),
    )
    .await;
    assert_eq!(echoed.status, StatusCode::OK);
    assert_eq!(echoed.headers["content-type"], "application/x-test");
    assert_eq!(echoed.body, big);
    let recorded = fake.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].body, big[..RECORDED_BODY_LIMIT]);

    let refused = send(&fake, Method::PUT, "/v1/__fake/echo-body", &[], "x").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let empty = get(&fake, "/v1/__fake/echo-body", &[("ApiKey", KEY)]).await;
    assert_eq!((empty.status, empty.body.len()), (StatusCode::OK, 0));
    assert_eq!(fake.requests().len(), 3);
}

#[tokio::test]
async fn requests_are_recorded_in_order_as_received() {
    let fake = FakePalette::start(config()).await.unwrap();
    token(&fake).await;
    get(&fake, "/v1/a%2Fb/../c?x=%20y&x=2", &[("ApiKey", KEY)]).await;
    send(&fake, Method::POST, "/v1/things", &[("ApiKey", KEY)], "hello").await;
    let recorded = fake.requests();
    let seen: Vec<_> = recorded.iter().map(|r| (r.method.clone(), r.path_and_query.as_str())).collect();
    assert_eq!(
        seen,
        vec![
            (Method::POST, "/v1/auth/authenticate?setCookie=false"),
            (Method::GET, "/v1/a%2Fb/../c?x=%20y&x=2"),
            (Method::POST, "/v1/things"),
        ]
    );
    assert_eq!(recorded[2].body, "hello");
    assert_eq!(recorded[2].version, Version::HTTP_11);
    assert_eq!(recorded[2].headers["apikey"], KEY);
    fake.clear_requests();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn auth_down_answers_503() {
    let fake = FakePalette::start(config()).await.unwrap();
    let jwt = token(&fake).await;
    fake.set_auth_down(true);
    let down = login(&fake, json!({"emailId": EMAIL, "password": PASSWORD})).await;
    assert_palette_error(&down, StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
    let down = get(&fake, &format!("/v1/auth/refresh/{jwt}"), &[]).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    // Ordinary requests with a valid token still work.
    let ok = get(&fake, "/v1/users", &[("Authorization", &jwt)]).await;
    assert_eq!(ok.status, StatusCode::OK);
    fake.set_auth_down(false);
    token(&fake).await;
    assert_eq!((fake.logins(), fake.login_attempts()), (2, 3));
}

#[tokio::test]
async fn slow_hook_waits() {
    let fake = FakePalette::start(config()).await.unwrap();
    let started = tokio::time::Instant::now();
    let slow = get(&fake, "/v1/__fake/slow/200", &[("ApiKey", KEY)]).await;
    assert_eq!(slow.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn http2_prior_knowledge() {
    let fake = FakePalette::start(config()).await.unwrap();
    let client = Client::builder(TokioExecutor::new()).http2_only(true).build_http::<Full<Bytes>>();
    let req = Request::get(format!("{}/v1/users", fake.url())).header("ApiKey", KEY).body(Full::default()).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(fake.requests()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn serves_https_when_configured() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let fake = FakePalette::start(FakePaletteConfig { tls: Some(Arc::new(server)), ..config() }).await.unwrap();
    assert_eq!(fake.url(), format!("https://localhost:{}", fake.addr().port()));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(fake.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("/v1/users")
        .header("host", "localhost")
        .header("ApiKey", KEY)
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_connections() {
    let fake = FakePalette::start(config()).await.unwrap();
    let addr = fake.addr();
    // An open keep-alive connection must not hold shutdown up.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("/v1/users").header("ApiKey", KEY).body(Full::<Bytes>::default()).unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), StatusCode::OK);
    fake.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The server closed its side, so the client connection ends.
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await.unwrap();
}

fn limited_config(burst_seconds: f64) -> FakePaletteConfig {
    FakePaletteConfig { rate_limits: Some(FakeRateLimits { burst_seconds }), ..config() }
}

fn assert_throttled(answer: &Answer) {
    assert_palette_error(answer, StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
    assert!(answer.headers.get("retry-after").is_none(), "{:?}", answer.headers);
    assert!(answer.cookies().is_empty(), "{:?}", answer.headers);
}

#[test]
fn rate_limits_are_off_by_default_and_burst_5() {
    assert!(FakePaletteConfig::default().rate_limits.is_none());
    assert_eq!(FakeRateLimits::default().burst_seconds, 5.0);
}

// The clock is paused and nothing in these exchanges sets a timer, so it only moves on
// `advance`: the buckets see every request at the same instant.
#[tokio::test(start_paused = true)]
async fn rate_limit_per_prefix_then_refill() {
    let fake = FakePalette::start(limited_config(1.0)).await.unwrap();
    let started = tokio::time::Instant::now();
    for i in 0..10 {
        assert_eq!(get(&fake, "/v1/packs", &[("ApiKey", KEY)]).await.status, StatusCode::OK, "{i}");
    }
    let limited = get(&fake, "/v1/packs/p1", &[("ApiKey", KEY)]).await;
    assert_throttled(&limited);
    assert_eq!(limited.json()["message"], "rate limit exceeded for /v1/packs");
    // Before authentication: no credential, still 429.
    assert_throttled(&get(&fake, "/v1/packs", &[]).await);
    assert_eq!(get(&fake, "/v1/users", &[("ApiKey", KEY)]).await.status, StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::ZERO, "the paused clock moved by itself");
    // Refused requests are recorded too.
    assert_eq!(fake.requests().len(), 13);
    assert_eq!(fake.requests()[10].path_and_query, "/v1/packs/p1");

    // 10/s: half a token after 50 ms, a whole one after 100 ms.
    tokio::time::advance(Duration::from_millis(50)).await;
    assert_throttled(&get(&fake, "/v1/packs", &[("ApiKey", KEY)]).await);
    tokio::time::advance(Duration::from_millis(60)).await;
    assert_eq!(get(&fake, "/v1/packs", &[("ApiKey", KEY)]).await.status, StatusCode::OK);
    assert_throttled(&get(&fake, "/v1/packs", &[("ApiKey", KEY)]).await);

    assert_eq!(fake.throttled(), 4);
    assert_eq!(fake.throttled_by_prefix(), vec![("/v1/packs".to_string(), 4)]);
}

#[tokio::test(start_paused = true)]
async fn auth_calls_are_counted_too() {
    let fake = FakePalette::start(limited_config(1.0)).await.unwrap();
    let bad = json!({"emailId": EMAIL, "password": "nope"});
    for _ in 0..10 {
        assert_eq!(login(&fake, bad.clone()).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_throttled(&login(&fake, json!({"emailId": EMAIL, "password": PASSWORD})).await);
    // The refused login never reached the login handler.
    assert_eq!((fake.login_attempts(), fake.logins()), (10, 0));
    // /v1/auth/user/password/reset has its own bucket (2/s, so 2 at burst 1).
    for _ in 0..2 {
        assert_eq!(get(&fake, "/v1/auth/user/password/reset", &[]).await.status, StatusCode::UNAUTHORIZED);
    }
    assert_throttled(&get(&fake, "/v1/auth/user/password/reset", &[]).await);
    assert_eq!(
        fake.throttled_by_prefix(),
        vec![("/v1/auth".to_string(), 1), ("/v1/auth/user/password/reset".to_string(), 1)]
    );
    assert_eq!(fake.throttled(), 2);
}

#[tokio::test(start_paused = true)]
async fn fast_prefix_allows_its_burst() {
    let fake = FakePalette::start(limited_config(1.0)).await.unwrap();
    for i in 0..50 {
        let path = format!("/v1/spectroclusters/c{i}");
        assert_eq!(get(&fake, &path, &[("ApiKey", KEY)]).await.status, StatusCode::OK, "{i}");
    }
    assert_throttled(&get(&fake, "/v1/spectroclusters", &[("ApiKey", KEY)]).await);
    // The exceptions and the per-uid profiles have their own buckets.
    assert_eq!(get(&fake, "/v1/spectroclusters/c1/profiles", &[("ApiKey", KEY)]).await.status, StatusCode::OK);
    assert_eq!(get(&fake, "/v1/spectroclusters/c1/assets", &[("ApiKey", KEY)]).await.status, StatusCode::OK);
    assert_eq!(fake.throttled_by_prefix(), vec![("/v1/spectroclusters".to_string(), 1)]);
}

#[tokio::test]
async fn force_429_answers_n_times_then_resumes() {
    let fake = FakePalette::start(config()).await.unwrap();
    fake.force_429(2);
    // Login and refresh never take a forced 429.
    let jwt = token(&fake).await;
    let refreshed = get(&fake, &format!("/v1/auth/refresh/{jwt}"), &[]).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let forced = get(&fake, "/v1/users", &[("ApiKey", KEY)]).await;
    assert_throttled(&forced);
    assert_eq!(forced.json()["message"], "too many requests for /v1/users (forced)");
    // Before authentication: a missing credential does not matter.
    assert_throttled(&get(&fake, "/v1/__fake/status/200", &[]).await);
    assert_eq!(get(&fake, "/v1/users", &[("ApiKey", KEY)]).await.status, StatusCode::OK);
    assert_eq!(fake.throttled(), 2);
    assert_eq!(fake.throttled_by_prefix(), vec![("/v1/__fake".to_string(), 1), ("/v1/users".to_string(), 1)]);

    // A later call replaces the pending count; 0 cancels.
    fake.force_429(3);
    fake.force_429(0);
    assert_eq!(get(&fake, "/v1/users", &[("ApiKey", KEY)]).await.status, StatusCode::OK);
    assert_eq!(fake.throttled(), 2);
    // Every request was recorded, refused or not.
    assert_eq!(fake.requests().len(), 6);
}

#[tokio::test]
async fn forced_429_on_echo_body_still_records_the_body() {
    let fake = FakePalette::start(config()).await.unwrap();
    fake.force_429(1);
    let refused = send(&fake, Method::PUT, "/v1/__fake/echo-body", &[("ApiKey", KEY)], "hello").await;
    assert_throttled(&refused);
    let echoed = send(&fake, Method::PUT, "/v1/__fake/echo-body", &[("ApiKey", KEY)], "again").await;
    assert_eq!((echoed.status, echoed.body.as_ref()), (StatusCode::OK, b"again".as_ref()));
    let bodies: Vec<_> = fake.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(bodies, vec![Bytes::from("hello"), Bytes::from("again")]);
}

/// `GET /v1/users/info` answers the calling user for a good key and 401 for a bad one (the
/// gateway checks its API key with it at start).
#[tokio::test]
async fn user_info_checks_the_key() {
    let fake = FakePalette::start(config()).await.unwrap();
    let good = send(&fake, Method::GET, "/v1/users/info", &[("ApiKey", KEY)], "").await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(good.json()["uid"], "fake-user-0001");
    let bad = send(&fake, Method::GET, "/v1/users/info", &[("ApiKey", "not-a-key")], "").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
}
