//! HTTPS on both sides: the gateway serving TLS (HTTP/2 by ALPN), mTLS client identification
//! by `cert_names`, and an HTTPS upstream trusted through `ca_file`. Certificates come from a
//! throwaway rcgen CA.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::support::*;
use fake_palette::{FakePalette, FakePaletteConfig};
use palette_gateway::app::RunningGateway;
use palette_gateway::config;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

struct Pki {
    dir: PathBuf,
    ca_pem: String,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("pgw-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "palette-gateway test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        Pki { dir, ca_pem, ca_cert, ca_key }
    }

    /// Issues a leaf; returns (cert PEM, key PEM) and writes them as NAME.pem / NAME.key.
    fn leaf(&self, file: &str, dns: &str, client: bool) -> (String, String) {
        let mut params = CertificateParams::new(vec![dns.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, dns);
        params.extended_key_usages =
            vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let (c, k) = (cert.pem(), key.serialize_pem());
        std::fs::write(self.dir.join(format!("{file}.pem")), &c).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), &k).unwrap();
        (c, k)
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

fn tls_client(pki: &Pki, identity: Option<(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn start_gateway(upstream: &str, upstream_extra: &str, rules: &str) -> RunningGateway {
    init_logs();
    let text = gateway_config(upstream, upstream_extra, rules);
    let cfg = config::load_str(&text, Path::new("."), &standard_env()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    RunningGateway::start(cfg).await.unwrap()
}

/// The gateway serves HTTPS; an HTTP/2-capable client negotiates h2 by ALPN, and Palette is
/// told the client came over https.
#[tokio::test]
async fn https_listener_with_http2() {
    let pki = Pki::new("h2");
    pki.leaf("server", "localhost", false);
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    let rules = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{}",
        pki.path("server.pem"),
        pki.path("server.key"),
        standard_rules()
    );
    let gw = start_gateway(&fake.url(), "", &rules).await;
    let client = tls_client(&pki, None);
    let r = client
        .get(format!("https://localhost:{}/v1/users", gw.proxy_addr.port()))
        .header("ApiKey", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let got = fake.requests().pop().unwrap();
    assert_eq!(got.headers["x-forwarded-proto"], "https");
    assert_eq!(got.headers["apikey"], PALETTE_KEY);
}

/// With mTLS, a verified client certificate identifies the client by `cert_names` (no key
/// needed) and that client's policy applies; a connection without a certificate is refused.
#[tokio::test]
async fn mtls_identifies_client_by_cert_name() {
    let pki = Pki::new("mtls");
    pki.leaf("server", "localhost", false);
    let ci = pki.leaf("ci", "ci.internal", true);
    let stranger = pki.leaf("stranger", "stranger.internal", true);
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    let rules = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n{}",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
        standard_rules().replacen("name = \"ci\"\n", "name = \"ci\"\ncert_names = [\"ci.internal\"]\n", 1)
    );
    let gw = start_gateway(&fake.url(), "", &rules).await;
    let url = |p: &str| format!("https://localhost:{}{p}", gw.proxy_addr.port());

    let client = tls_client(&pki, Some(ci));
    let r = client.get(url("/v1/users")).send().await.unwrap();
    assert_eq!(r.status(), 200, "certificate alone identifies ci");
    let r = client.delete(url("/v1/users/x")).send().await.unwrap();
    assert_eq!(r.status(), 403, "ci's allow list applies");
    let r = client.get(url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 401, "a key for another client than the certificate's is refused");

    // A valid certificate naming no client falls back to keys.
    let other = tls_client(&pki, Some(stranger));
    assert_eq!(other.get(url("/v1/users")).send().await.unwrap().status(), 401);
    assert_eq!(other.get(url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.unwrap().status(), 200);

    // No certificate: the handshake is refused.
    let none = tls_client(&pki, None);
    assert!(none.get(url("/v1/users")).header("ApiKey", ADMIN_KEY).send().await.is_err());
}

/// An HTTPS upstream whose CA is given by `upstream.ca_file`.
#[tokio::test]
async fn https_upstream_trusted_by_ca_file() {
    let pki = Pki::new("up");
    let (cert, key) = pki.leaf("upstream", "localhost", false);
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let fake = FakePalette::start(FakePaletteConfig { tls: Some(Arc::new(tls)), ..standard_fake() }).await.unwrap();
    assert!(fake.url().starts_with("https://"));
    let gw = start_gateway(&fake.url(), &format!("ca_file = \"{}\"", pki.path("ca.pem")), &standard_rules()).await;
    let r = client().get(format!("http://{}/v1/users", gw.proxy_addr)).header("ApiKey", BOT_KEY).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let got = fake.requests().into_iter().rev().find(|r| !r.path_and_query.starts_with("/v1/auth/")).unwrap();
    assert_eq!(got.version, http::Version::HTTP_2, "HTTP/2 to the upstream by ALPN");
    assert!(fake.logins() == 1);
}

/// Without the CA, the upstream's certificate is not trusted: 502.
#[tokio::test]
async fn untrusted_upstream_certificate_is_502() {
    let pki = Pki::new("untrusted");
    let (cert, key) = pki.leaf("upstream", "localhost", false);
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let fake = FakePalette::start(FakePaletteConfig { tls: Some(Arc::new(tls)), ..standard_fake() }).await.unwrap();
    let gw = start_gateway(&fake.url(), "", &standard_rules()).await;
    let r =
        client().get(format!("http://{}/v1/users", gw.proxy_addr)).header("ApiKey", ADMIN_KEY).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(fake.requests().iter().all(|r| r.path_and_query.starts_with("/v1/auth/")));
}

/// mTLS beside Kubernetes ServiceAccount tokens: the certificate alone still identifies its
/// client, a token alone (over the same mTLS connection of a certificate naming no client)
/// identifies its own, and a token and a certificate naming different clients are refused.
#[tokio::test]
async fn mtls_and_service_account_tokens_work_side_by_side() {
    use crate::support::kube::{FakeKube, AUDIENCE};
    let pki = Pki::new("mtls-k8s");
    pki.leaf("server", "localhost", false);
    let ci = pki.leaf("ci", "ci.internal", true);
    let stranger = pki.leaf("stranger", "stranger.internal", true);
    let kube = FakeKube::start("mtls-k8s-kube").await;
    let fake = FakePalette::start(standard_fake()).await.unwrap();
    let rules = format!(
        "[server.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n{}\n\
         [auth.kubernetes]\nmode = \"token_review\"\naudiences = [\"{AUDIENCE}\"]\nca_file = \"{}\"\n\
         api_server = \"{}\"\ntoken_file = \"{}\"\n\
         [[clients]]\nname = \"reporting\"\nprojects = [\"*\"]\nservice_accounts = [\"reporting/report-bot\"]\n",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
        standard_rules().replacen("name = \"ci\"\n", "name = \"ci\"\ncert_names = [\"ci.internal\"]\n", 1),
        kube.ca_file,
        kube.url,
        kube.token_file,
    );
    let gw = start_gateway(&fake.url(), "", &rules).await;
    let url = |p: &str| format!("https://localhost:{}{p}", gw.proxy_addr.port());
    let token = kube.token("reporting", "report-bot");

    let as_ci = tls_client(&pki, Some(ci));
    assert_eq!(as_ci.get(url("/v1/users")).send().await.unwrap().status(), 200, "certificate alone");
    let r = as_ci.get(url("/v1/users")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 401, "a token of another client than the certificate's");
    let as_stranger = tls_client(&pki, Some(stranger));
    assert_eq!(as_stranger.get(url("/v1/users")).bearer_auth(&token).send().await.unwrap().status(), 200);
    assert_eq!(as_stranger.get(url("/v1/users")).send().await.unwrap().status(), 401);
}
