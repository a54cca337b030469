//! A fake Kubernetes API server, on `https://localhost:PORT` with a throwaway certificate: the
//! TokenReview endpoint, OIDC discovery and the JWKS, and the ServiceAccount tokens it issues, in
//! the exact shape kube-apiserver gives them (claims `aud`, `exp`, `iat`, `iss`, `nbf`, `sub`
//! `system:serviceaccount:NS:NAME`, `kubernetes.io: {namespace, pod: {name, uid}, serviceaccount:
//! {name, uid}}`; header `alg` and `kid`). Its reviews verify like the real one (signature with
//! a published key, issuer, audience, expiry) and answer `authenticated: false` for a token
//! whose pod was deleted ([`FakeKube::revoke`]). It can be made slow or taken down.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::files::scratch_dir;
use super::harness::TEST_LOG_DIR;

/// The audience the tools' projected tokens are for.
pub const AUDIENCE: &str = "palette-gateway";

/// The RSA test key's public modulus (base64url), for its JWK; the private half is
/// `kube-rsa.der` beside this file (PKCS#1, made for these tests only).
const RSA_N: &str = "t_W0ifxaSW84LgCAAzn0Obym3bjOixqhDwqkwYCzDXf3CCRqFBmIT6W7mLvomLpcrPB7KXkGouY6L8E1_JPZaWKP42bSPonnwJg4rq2oCE2J1UGrntnAQuuD7VU1fjnU_7K6R1sUKLreqbZHpthss-eC_1IrLxwZTeAra0YRrACtSdnyHNchYrJGZBH1XWubmhq3rvibxKa8u2MNsME352wumVnGGt3TVKgCHU0QMDmlOrLZEAX1LV5_wpLGrzDCRUV_7RTfoB0-bu4cmdYELBxG68W7K6z8JVm_3iuUT7ODtwLuH1b9RxGHMXyiOkuEOBlaZUtidFWbvp23AN8ZyQ";

/// A signing key of the fake issuer, with its JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    /// A fresh ES256 (P-256) key.
    pub fn es256(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate().unwrap();
        let raw = pair.public_key_raw();
        let (x, y) = (b64(&raw[1..33]), b64(&raw[33..65]));
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            decoding: DecodingKey::from_ec_components(&x, &y).unwrap(),
            jwk: json!({"use": "sig", "kty": "EC", "kid": kid, "crv": "P-256", "alg": "ES256", "x": x, "y": y}),
        }
    }

    /// The RSA test key as RS256 (what kube-apiserver uses by default).
    pub fn rs256(kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(include_bytes!("kube-rsa.der")),
            decoding: DecodingKey::from_rsa_components(RSA_N, "AQAB").unwrap(),
            jwk: json!({"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": RSA_N, "e": "AQAB"}),
        }
    }

    /// The public key's bytes as an attacker would use them for an HMAC secret (the JWK's text).
    pub fn public_bytes(&self) -> Vec<u8> {
        self.jwk.to_string().into_bytes()
    }
}

/// What a token says; [`FakeKube::spec`] gives kube-apiserver's defaults.
#[derive(Clone)]
pub struct TokenSpec {
    pub namespace: String,
    pub name: String,
    pub audiences: Vec<String>,
    pub issuer: String,
    /// Seconds from now.
    pub exp_in: i64,
    pub nbf_in: i64,
    pub key: SigningKey,
}

struct State {
    issuer: Mutex<String>,
    published: Mutex<Vec<SigningKey>>,
    gateway_tokens: Mutex<Vec<String>>,
    revoked: Mutex<HashSet<String>>,
    issued: Mutex<Vec<String>>,
    delay_ms: AtomicU64,
    fail_status: AtomicU16,
    reviews: AtomicU64,
    jwks_fetches: AtomicU64,
    discovery_fetches: AtomicU64,
    down: CancellationToken,
}

/// A running fake API server; dropping it stops it.
pub struct FakeKube {
    /// `https://localhost:PORT`: the API server URL and the issuer.
    pub url: String,
    /// The certificate to trust (`ca_file`).
    pub ca_file: String,
    /// The gateway's own token, as the kubelet would mount it (`token_file`).
    pub token_file: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.state.down.cancel();
        self.task.abort();
        // Its tokens are secrets: the log scan (scripts/scan-test-logs.sh) looks for each.
        let issued = self.state.issued.lock().unwrap().join("\n");
        if !issued.is_empty() {
            use std::io::Write;
            let _ = std::fs::create_dir_all(TEST_LOG_DIR);
            if let Ok(mut f) =
                std::fs::OpenOptions::new().create(true).append(true).open(format!("{TEST_LOG_DIR}/tokens.txt"))
            {
                let _ = writeln!(f, "{issued}");
            }
        }
    }
}

impl FakeKube {
    /// Starts with one RS256 signing key (`kid` "rsa-1").
    pub async fn start(name: &str) -> FakeKube {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let dir = scratch_dir(name);
        let ca_file = dir.join("kube-ca.pem").display().to_string();
        std::fs::write(&ca_file, cert.pem()).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://localhost:{}", listener.local_addr().unwrap().port());
        let own = format!("gateway-own-token-{}", random_hex());
        let token_file = dir.join("token").display().to_string();
        std::fs::write(&token_file, &own).unwrap();
        let state = Arc::new(State {
            issuer: Mutex::new(url.clone()),
            published: Mutex::new(vec![SigningKey::rs256("rsa-1")]),
            gateway_tokens: Mutex::new(vec![own.clone()]),
            revoked: Mutex::default(),
            issued: Mutex::new(vec![own]),
            delay_ms: AtomicU64::new(0),
            fail_status: AtomicU16::new(0),
            reviews: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
            discovery_fetches: AtomicU64::new(0),
            down: CancellationToken::new(),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let down = state.down.clone();
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&state, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = down.cancelled() => {}
                    }
                });
            }
        });
        FakeKube { url, ca_file, token_file, state, task }
    }

    /// kube-apiserver's defaults for `namespace/name`: the first published key, our audience,
    /// this issuer, valid for 10 minutes from now.
    pub fn spec(&self, namespace: &str, name: &str) -> TokenSpec {
        TokenSpec {
            namespace: namespace.into(),
            name: name.into(),
            audiences: vec![AUDIENCE.into()],
            issuer: self.state.issuer.lock().unwrap().clone(),
            exp_in: 600,
            nbf_in: 0,
            key: self.state.published.lock().unwrap()[0].clone(),
        }
    }

    /// A default token for `namespace/name`.
    pub fn token(&self, namespace: &str, name: &str) -> String {
        self.issue(&self.spec(namespace, name))
    }

    /// A token as `spec` says, signed by its key.
    pub fn issue(&self, spec: &TokenSpec) -> String {
        let mut header = Header::new(spec.key.alg);
        header.typ = None;
        header.kid = Some(spec.key.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims(spec), &spec.key.encoding).unwrap();
        self.record(token)
    }

    /// A token with `header` (any JSON) and `spec`'s claims, with an empty signature (as
    /// `alg: none` has it).
    pub fn forge_unsigned(&self, header: Value, spec: &TokenSpec) -> String {
        let signing_input =
            format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims(spec).to_string().as_bytes()));
        self.record(format!("{signing_input}."))
    }

    /// The classic key-confusion forgery: `spec`'s claims as HS256 with the key's `kid`, the
    /// public key's bytes as the HMAC secret.
    pub fn issue_hs256_with_public_key(&self, spec: &TokenSpec) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(spec.key.kid.clone());
        let secret = EncodingKey::from_secret(&spec.key.public_bytes());
        let token = jsonwebtoken::encode(&header, &claims(spec), &secret).unwrap();
        self.record(token)
    }

    fn record(&self, token: String) -> String {
        self.state.issued.lock().unwrap().push(token.clone());
        token
    }

    /// The pod behind `token` was deleted: reviews answer `authenticated: false`.
    pub fn revoke(&self, token: &str) {
        self.state.revoked.lock().unwrap().insert(token.to_string());
    }

    /// Publishes `keys` instead (a key rotation).
    pub fn publish(&self, keys: Vec<SigningKey>) {
        *self.state.published.lock().unwrap() = keys;
    }

    /// The gateway's own token rotates: the file is rewritten and only the new one is accepted.
    pub fn rotate_gateway_token(&self) {
        let own = format!("gateway-own-token-{}", random_hex());
        super::files::write_atomically(std::path::Path::new(&self.token_file), &own);
        *self.state.gateway_tokens.lock().unwrap() = vec![own.clone()];
        self.state.issued.lock().unwrap().push(own);
    }

    /// Every answer waits this long first.
    pub fn set_delay(&self, d: Duration) {
        self.state.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every answer is this status (0: normal answers).
    pub fn fail_with(&self, status: u16) {
        self.state.fail_status.store(status, Ordering::SeqCst);
    }

    /// Stops listening and cuts every connection: the API server is down.
    pub fn stop(&self) {
        self.state.down.cancel();
        self.task.abort();
    }

    pub fn reviews(&self) -> u64 {
        self.state.reviews.load(Ordering::SeqCst)
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> u64 {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }
}

fn random_hex() -> String {
    let pair = rcgen::KeyPair::generate().unwrap();
    hex::encode(&pair.public_key_raw()[1..17])
}

fn claims(spec: &TokenSpec) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    json!({
        "aud": spec.audiences,
        "exp": now + spec.exp_in,
        "iat": now,
        "iss": spec.issuer,
        "jti": format!("jti-{now}"),
        "kubernetes.io": {
            "namespace": spec.namespace,
            "node": {"name": "node-1", "uid": "6b1b5b0e-0000-4000-8000-000000000001"},
            "pod": {"name": format!("{}-7d9f8b6c5-x2k4q", spec.name), "uid": "3f1e2d4c-0000-4000-8000-000000000002"},
            "serviceaccount": {"name": spec.name, "uid": "9a8b7c6d-0000-4000-8000-000000000003"}
        },
        "nbf": now + spec.nbf_in,
        "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.name)
    })
}

fn json_answer(status: u16, body: Value) -> http::Response<Full<Bytes>> {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn answer(state: &State, req: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = state.fail_status.load(Ordering::SeqCst);
    if fail != 0 {
        return json_answer(fail, json!({"kind": "Status", "status": "Failure", "code": fail}));
    }
    let path = req.uri().path().to_string();
    match (req.method().as_str(), path.as_str()) {
        ("GET", "/.well-known/openid-configuration") => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let issuer = state.issuer.lock().unwrap().clone();
            json_answer(
                200,
                json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{issuer}/openid/v1/jwks"),
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"]
                }),
            )
        }
        ("GET", "/openid/v1/jwks") => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = state.published.lock().unwrap().iter().map(|k| k.jwk.clone()).collect();
            json_answer(200, json!({ "keys": keys }))
        }
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
            let bearer = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let allowed = state.gateway_tokens.lock().unwrap().iter().any(|t| bearer == format!("Bearer {t}"));
            if !allowed {
                return json_answer(
                    401,
                    json!({"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401}),
                );
            }
            state.reviews.fetch_add(1, Ordering::SeqCst);
            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let token = review["spec"]["token"].as_str().unwrap_or("").to_string();
            let audiences: Vec<String> = review["spec"]["audiences"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default();
            let status = match review_token(state, &token, &audiences) {
                Ok(sub) => json!({
                    "authenticated": true,
                    "user": {"username": sub, "uid": "9a8b7c6d-0000-4000-8000-000000000003",
                             "groups": ["system:serviceaccounts", "system:authenticated"]},
                    "audiences": audiences,
                }),
                Err(why) => json!({"authenticated": false, "error": why}),
            };
            json_answer(
                201,
                json!({
                    "kind": "TokenReview",
                    "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "spec": {"audiences": audiences},
                    "status": status
                }),
            )
        }
        _ => json_answer(404, json!({"kind": "Status", "status": "Failure", "code": 404})),
    }
}

/// What kube-apiserver's ServiceAccount authenticator decides: the subject, or why not.
fn review_token(state: &State, token: &str, audiences: &[String]) -> Result<String, String> {
    if state.revoked.lock().unwrap().contains(token) {
        return Err("service account token has been invalidated".into());
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| "invalid bearer token".to_string())?;
    let key = state
        .published
        .lock()
        .unwrap()
        .iter()
        .find(|k| Some(&k.kid) == header.kid.as_ref() && k.alg == header.alg)
        .cloned()
        .ok_or("invalid bearer token")?;
    let mut v = Validation::new(key.alg);
    v.set_audience(audiences);
    v.set_issuer(&[state.issuer.lock().unwrap().clone()]);
    let data =
        jsonwebtoken::decode::<Value>(token, &key.decoding, &v).map_err(|_| "invalid bearer token".to_string())?;
    Ok(data.claims["sub"].as_str().unwrap_or("").to_string())
}
