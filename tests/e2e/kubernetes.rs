//! Kubernetes ServiceAccount tokens as local credentials (`[auth.kubernetes]`): a tool sends its
//! projected token as `Authorization: Bearer <jwt>` and acts as the client its `namespace/name`
//! belongs to, checked by TokenReview against the fake API server (`support::kube`) or verified
//! locally against its JWKS. Local keys and the anonymous client keep working beside it.
use std::time::{Duration, Instant};

use crate::support::kube::{FakeKube, SigningKey, AUDIENCE};
use crate::support::*;

/// `[auth.kubernetes]` for `kube` in `mode`, and the `reporting` client with two identities.
fn rules(kube: &FakeKube, mode: &str, extra: &str) -> String {
    let mode_keys = match mode {
        "token_review" => format!("api_server = \"{}\"\ntoken_file = \"{}\"\n", kube.url, kube.token_file),
        _ => format!("issuer = \"{}\"\n", kube.url),
    };
    format!(
        "{}\n[auth]\nanonymous_client = \"ci\"\n\n[auth.kubernetes]\nmode = \"{mode}\"\naudiences = [\"{AUDIENCE}\"]\n\
         cache_ttl = \"60s\"\ntimeout = \"500ms\"\nca_file = \"{}\"\n{mode_keys}{extra}\n\
         [[clients]]\nname = \"reporting\"\nprojects = [\"*\"]\nservice_accounts = [\"reporting/report-bot\", \"ci/*\"]\n",
        standard_rules(),
        kube.ca_file
    )
}

async fn gateway(kube: &FakeKube, mode: &str) -> Harness {
    Harness::start(standard_fake(), NO_BUDGET, &rules(kube, mode, "")).await
}

/// A GET with `Authorization: Bearer <token>`: status, JSON body, `Retry-After`.
async fn call(h: &Harness, token: &str) -> (u16, serde_json::Value, Option<String>) {
    let r = h.http.get(h.url("/v1/users/me")).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, retry)
}

async fn local(h: &Harness) -> u16 {
    h.http.get(h.url("/v1/users/me")).header("ApiKey", CI_KEY).send().await.unwrap().status().as_u16()
}

fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

/// A tool's projected token acts as its client: both identities of `reporting` (a name and a
/// namespace wildcard) pass, Palette sees the gateway's ApiKey and never the token, a repeated
/// token is reviewed once, and the token is in no metric or log line. Local keys and the
/// anonymous client work beside it.
#[tokio::test]
async fn a_service_account_token_acts_as_its_client() {
    let kube = FakeKube::start("k8s-ok").await;
    let h = gateway(&kube, "token_review").await;
    let bot = kube.token("reporting", "report-bot");
    let ci_tool = kube.token("ci", "builder");
    for token in [&bot, &ci_tool, &bot, &bot, &ci_tool] {
        let (status, body, _) = call(&h, token).await;
        assert_eq!(status, 200, "{body}");
        let last = h.last();
        assert_eq!(last.headers["apikey"], PALETTE_KEY);
        for (name, value) in &last.headers {
            assert!(
                !value.as_bytes().windows(20).any(|w| token.as_bytes().windows(20).any(|t| t == w)),
                "{name} carries the token"
            );
        }
    }
    assert_eq!(kube.reviews(), 2, "one review per token, then the cache");
    assert_eq!(local(&h).await, 200);
    let anonymous = h.http.get(h.url("/v1/users/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), 200);

    let (text, m) = h.metrics().await;
    let auth = |method, result| metric(&m, "palette_gateway_auth_total", &[("method", method), ("result", result)]);
    assert_eq!(auth("kubernetes", "ok"), 5.0);
    assert_eq!(auth("local_key", "ok"), 1.0);
    assert_eq!(auth("anonymous", "ok"), 1.0);
    assert_eq!(metric(&m, "palette_gateway_kubernetes_token_review_cache_total", &[("result", "hit")]), 3.0);
    assert_eq!(metric(&m, "palette_gateway_kubernetes_token_review_cache_total", &[("result", "miss")]), 2.0);
    assert_eq!(metric(&m, "palette_gateway_kubernetes_token_review_duration_seconds_count", &[("result", "ok")]), 2.0);
    let requests = metric(&m, "palette_gateway_requests_total", &[("client", "reporting")]);
    assert_eq!(requests, 5.0);
    let logs = std::fs::read_to_string(log_file()).unwrap();
    for token in [&bot, &ci_tool] {
        assert!(!text.contains(signature(token)), "a token in /metrics");
        assert!(!logs.contains(signature(token)), "a token in the logs");
    }
}

/// A ServiceAccount token the client repeats under another header name (whole, or inside a
/// custom header's value) is dropped like a local key: the token path hands it to hygiene too.
#[tokio::test]
async fn a_service_account_token_under_another_header_name_never_reaches_palette() {
    let kube = FakeKube::start("k8s-ok").await;
    let h = gateway(&kube, "token_review").await;
    let bot = kube.token("reporting", "report-bot");
    let r = h
        .http
        .get(h.url("/v1/users/me"))
        .bearer_auth(&bot)
        .header("X-Token", &bot)
        .header("X-Context", format!("sa={bot}; more"))
        .header("X-Label", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = h.last().headers;
    assert!(seen.get("x-token").is_none() && seen.get("x-context").is_none(), "{seen:?}");
    assert_eq!(seen["x-label"], "kept");
    assert!(!format!("{seen:?}").contains(signature(&bot)), "the token reached Palette");
}

/// Refused tokens get 401 naming why, never echoing the token: another audience, expired, a
/// deleted pod's (the API server answers unauthenticated), a ServiceAccount that is no client.
#[tokio::test]
async fn token_review_refusals_say_why() {
    let kube = FakeKube::start("k8s-refused").await;
    let h = gateway(&kube, "token_review").await;
    let mut foreign = kube.spec("reporting", "report-bot");
    foreign.audiences = vec!["vault".into()];
    let mut expired = kube.spec("reporting", "report-bot");
    expired.exp_in = -120;
    let deleted = kube.token("reporting", "report-bot");
    kube.revoke(&deleted);
    let cases = [
        (kube.issue(&foreign), "audience"),
        (kube.issue(&expired), "expired"),
        (deleted, "did not authenticate"),
        (kube.token("other", "tool"), "ServiceAccount other/tool is not a client"),
    ];
    for (token, why) in &cases {
        let r = h.http.get(h.url("/v1/users/me")).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 401, "{why}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "Unauthorized");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(why), "{why}: {message}");
        assert!(!message.contains(signature(token)), "{message}");
    }
    assert!(h.forwarded().is_empty(), "no refused token reached Palette");
    // Wrong audience and expiry are refused before any call; the other two were reviewed.
    assert_eq!(kube.reviews(), 2);
    let (_, m) = h.metrics().await;
    assert_eq!(metric(&m, "palette_gateway_auth_total", &[("method", "kubernetes"), ("result", "refused")]), 4.0);
}

/// The API server slow past `timeout`, then failing, then down: token callers get 503
/// `CredentialUnavailable` with `Retry-After` within the deadline, local keys keep working, and
/// tokens work again once it answers.
#[tokio::test]
async fn api_server_slow_or_down_is_503_for_token_callers_only() {
    let kube = FakeKube::start("k8s-down").await;
    let h = gateway(&kube, "token_review").await;
    kube.set_delay(Duration::from_secs(3));
    let started = Instant::now();
    let (status, body, retry) = call(&h, &kube.token("reporting", "report-bot")).await;
    assert_eq!((status, body["code"].as_str()), (503, Some("CredentialUnavailable")), "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(local(&h).await, 200);
    kube.set_delay(Duration::ZERO);
    kube.fail_with(500);
    assert_eq!(call(&h, &kube.token("reporting", "report-bot")).await.0, 503);
    kube.fail_with(0);
    let token = kube.token("reporting", "report-bot");
    assert_eq!(call(&h, &token).await.0, 200, "a failed review is not cached");
    kube.stop();
    assert_eq!(call(&h, &kube.token("ci", "builder")).await.0, 503);
    assert_eq!(local(&h).await, 200);
    assert_eq!(call(&h, &token).await.0, 200, "a positive review is reused while the server is down");
    let (_, m) = h.metrics().await;
    assert_eq!(metric(&m, "palette_gateway_auth_total", &[("method", "kubernetes"), ("result", "unavailable")]), 3.0);
}

/// The gateway's own token rotates in its file (as the kubelet does): the next review uses the
/// new one, which the API server accepts.
#[tokio::test]
async fn the_gateways_own_token_is_reread_as_it_rotates() {
    let kube = FakeKube::start("k8s-rotate").await;
    let h = gateway(&kube, "token_review").await;
    assert_eq!(call(&h, &kube.token("reporting", "report-bot")).await.0, 200);
    kube.rotate_gateway_token();
    let (status, body, _) = call(&h, &kube.token("ci", "builder")).await;
    assert_eq!(status, 200, "{body}");
}

/// Twenty requests with one new token at once share one TokenReview.
#[tokio::test]
async fn concurrent_reviews_of_one_token_share_one_call() {
    let kube = FakeKube::start("k8s-coalesce").await;
    let h = gateway(&kube, "token_review").await;
    kube.set_delay(Duration::from_millis(200));
    let token = kube.token("reporting", "report-bot");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (http, url, token) = (h.http.clone(), h.url("/v1/users/me"), token.clone());
        tasks.push(tokio::spawn(async move { http.get(url).bearer_auth(token).send().await.unwrap().status() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(kube.reviews(), 1);
}

/// `jwks` mode: RS256 and ES256 tokens verify locally against the key set found by the
/// issuer's OIDC discovery and fetched at start; the API server's TokenReview is never called.
#[tokio::test]
async fn jwks_mode_verifies_tokens_locally() {
    let kube = FakeKube::start("k8s-jwks").await;
    let ec = SigningKey::es256("ec-1");
    kube.publish(vec![SigningKey::rs256("rsa-1"), ec.clone()]);
    let h = gateway(&kube, "jwks").await;
    // The key set is fetched at start, before any token arrives.
    assert!(eventually(Duration::from_secs(5), || async { kube.jwks_fetches() >= 1 }).await);
    let rsa = kube.token("reporting", "report-bot");
    let mut spec = kube.spec("ci", "builder");
    spec.key = ec;
    let es = kube.issue(&spec);
    for token in [&rsa, &es, &rsa] {
        let (status, body, _) = call(&h, token).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(kube.reviews(), 0);
    assert!(kube.discovery_fetches() >= 1);
    let logs = std::fs::read_to_string(log_file()).unwrap();
    assert!(!logs.contains(signature(&rsa)) && !logs.contains(signature(&es)));
}

/// `jwks` mode refuses, each with its reason: another audience, another issuer, expired, not
/// yet valid, `alg: none`, HS256 signed with the public key, a key the issuer does not publish.
#[tokio::test]
async fn jwks_mode_refuses_forged_and_foreign_tokens() {
    let kube = FakeKube::start("k8s-jwks-refused").await;
    let h = gateway(&kube, "jwks").await;
    let base = kube.spec("reporting", "report-bot");
    let with = |f: &dyn Fn(&mut crate::support::kube::TokenSpec)| {
        let mut s = base.clone();
        f(&mut s);
        s
    };
    let cases = [
        (kube.issue(&with(&|s| s.audiences = vec!["vault".into()])), "audience"),
        (kube.issue(&with(&|s| s.issuer = "https://evil.example".into())), "another issuer"),
        (kube.issue(&with(&|s| s.exp_in = -120)), "expired"),
        (kube.issue(&with(&|s| s.nbf_in = 300)), "not valid yet"),
        (kube.forge_unsigned(serde_json::json!({"alg": "none", "kid": "rsa-1"}), &base), "alg"),
        (kube.forge_unsigned(serde_json::json!({"alg": "none"}), &base), "alg"),
        (kube.issue_hs256_with_public_key(&base), "alg"),
        (kube.issue(&with(&|s| s.key = SigningKey::es256("rsa-1"))), "alg"),
        (kube.issue(&with(&|s| s.key = SigningKey::es256("unpublished"))), "a key the issuer does not publish"),
    ];
    for (token, why) in &cases {
        let (status, body, _) = call(&h, token).await;
        let message = body["message"].as_str().unwrap_or_default();
        assert_eq!(status, 401, "{why}: {body}");
        assert!(message.contains(why), "{why}: {message}");
        assert!(!message.contains(signature(token)) || signature(token).is_empty());
    }
    assert!(h.forwarded().is_empty());
    assert_eq!(call(&h, &kube.token("reporting", "report-bot")).await.0, 200);
}

/// A key rotated in after the gateway fetched the set: a token naming its `kid` makes the
/// gateway fetch the set again (at most once per 10 seconds, so made-up `kid`s cannot make it
/// hammer the API server), and then passes.
#[tokio::test]
async fn an_unknown_kid_refetches_the_rotated_key_set() {
    let kube = FakeKube::start("k8s-kid").await;
    let h = gateway(&kube, "jwks").await;
    let started = Instant::now();
    assert_eq!(call(&h, &kube.token("reporting", "report-bot")).await.0, 200);
    let fetched = kube.jwks_fetches();
    let rotated = SigningKey::es256("ec-2");
    kube.publish(vec![SigningKey::rs256("rsa-1"), rotated.clone()]);
    let mut spec = kube.spec("reporting", "report-bot");
    spec.key = rotated;
    let new_key_token = kube.issue(&spec);
    // Within 10 s of the last fetch: no new fetch, the token is refused for now.
    assert_eq!(call(&h, &new_key_token).await.0, 401);
    assert_eq!(kube.jwks_fetches(), fetched);
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()) + Duration::from_millis(300)).await;
    let (status, body, _) = call(&h, &new_key_token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(kube.jwks_fetches(), fetched + 1);
    let mut bogus = kube.spec("reporting", "report-bot");
    bogus.key = SigningKey::es256("made-up");
    for _ in 0..5 {
        assert_eq!(call(&h, &kube.issue(&bogus)).await.0, 401);
    }
    assert_eq!(kube.jwks_fetches(), fetched + 1, "made-up kids are rate-limited");
}

/// `jwks` mode with the key set out of reach (the API server failing since start): token callers
/// get 503, never a 401 for a token that may be good; local keys keep working.
#[tokio::test]
async fn jwks_mode_without_a_key_set_is_503_for_token_callers_only() {
    let kube = FakeKube::start("k8s-jwks-down").await;
    kube.fail_with(500);
    let h = gateway(&kube, "jwks").await;
    for _ in 0..3 {
        let (status, body, retry) = call(&h, &kube.token("reporting", "report-bot")).await;
        assert_eq!(
            (status, body["code"].as_str(), retry.as_deref()),
            (503, Some("CredentialUnavailable"), Some("1")),
            "{body}"
        );
    }
    assert_eq!(local(&h).await, 200);
}

/// A reload that moves a ServiceAccount to another client applies to the next request at once,
/// while the review cache survives (the section did not change): no new TokenReview.
#[tokio::test]
async fn a_reload_moves_an_identity_and_keeps_the_review_cache() {
    let kube = FakeKube::start("k8s-reload").await;
    let rules_before = rules(&kube, "token_review", "");
    let g = FileGateway::start("k8s-reload-gw", standard_fake(), "", NO_BUDGET, &rules_before).await;
    let token = kube.token("ci", "builder");
    let whoami = |g: &FileGateway, token: String| {
        let (http, url) = (g.http.clone(), g.url("/v1/users/me"));
        async move { http.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(whoami(&g, token.clone()).await, 200);
    // ci/* moves from reporting to a client that may call nothing.
    let moved = rules_before.replace("\"ci/*\"]", "]")
        + "\n[[clients]]\nname = \"jail\"\nallow = []\nservice_accounts = [\"ci/*\"]\n";
    std::fs::write(&g.path, g.config_text("", NO_BUDGET, &moved)).unwrap();
    g.gateway.reload(&g.path, &standard_env()).unwrap();
    assert_eq!(whoami(&g, token.clone()).await, 403, "now the jail client");
    assert_eq!(kube.reviews(), 1, "the cached review was reused");
}

/// Without `[auth.kubernetes]` a ServiceAccount token is what it always was: an unknown local
/// key (401).
#[tokio::test]
async fn without_the_section_a_token_is_an_unknown_local_key() {
    let kube = FakeKube::start("k8s-absent").await;
    let h = Harness::standard().await;
    let (status, body, _) = call(&h, &kube.token("reporting", "report-bot")).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("local key is not known"), "{body}");
    assert_eq!(kube.reviews() + kube.jwks_fetches(), 0);
}

/// An address that sends many distinct forged tokens (each one the API server must review)
/// gets the 21st and later refused without a review for a while; a token already reviewed, and
/// local keys, still work from it.
#[tokio::test]
async fn forged_tokens_from_one_address_stop_being_reviewed() {
    use base64::Engine;
    let kube = FakeKube::start("k8s-forged").await;
    let h = gateway(&kube, "token_review").await;
    let good = kube.token("reporting", "report-bot");
    assert_eq!(call(&h, &good).await.0, 200);
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let before = kube.reviews();
    for i in 0..30 {
        let forged = format!(
            "{}.{}.c2lnbmF0dXJl",
            b64(serde_json::json!({"alg": "RS256", "kid": "forged"})),
            b64(serde_json::json!({
                "aud": ["palette-gateway"], "exp": exp, "iss": "https://kubernetes.default.svc.cluster.local",
                "sub": format!("system:serviceaccount:reporting:bot-{i}"),
            })),
        );
        let (status, body, _) = call(&h, &forged).await;
        assert_eq!(status, 401, "{body}");
        if i >= 20 {
            assert!(body["message"].as_str().unwrap().contains("too many refused tokens"), "{body}");
        }
    }
    assert_eq!(kube.reviews() - before, 20, "only the first 20 forged tokens were reviewed");
    assert_eq!(call(&h, &good).await.0, 200, "a reviewed token still works from that address");
    assert_eq!(local(&h).await, 200);
}
