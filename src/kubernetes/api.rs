//! The client to the Kubernetes API server (TokenReview, OIDC discovery, JWKS): only the
//! cluster's CA is trusted, every call has one deadline for headers and body, answers are
//! capped, and the gateway's own token is re-read from its file on each call, since the kubelet
//! rotates it in place.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::KubernetesAuth;
use crate::upstream::chain;

/// Largest answer read from the API server (a TokenReview or a key set is a few KiB).
const MAX_ANSWER: usize = 1024 * 1024;
/// Largest token file read (a projected token is about 1 KiB).
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// A call that could not be made or answered usefully: the caller is not at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Unavailable(pub(crate) String);

/// The pooled HTTPS client to the API server.
pub(crate) struct ApiClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    token_file: Option<PathBuf>,
}

impl ApiClient {
    /// A client trusting only `cfg.roots`.
    pub(crate) fn new(cfg: &KubernetesAuth) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &cfg.roots {
            // Each was checked usable at config load.
            let _ = roots.add(cert.clone());
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots.clone()).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            });
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.timeout));
        // https only: config refuses other URLs, and the connector refuses plain http too.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        ApiClient { client, timeout: cfg.timeout, token_file: cfg.token_file.clone() }
    }

    /// The deadline of every call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `GET uri`, JSON back.
    pub(crate) async fn get(&self, uri: &Uri) -> Result<(StatusCode, Bytes), Unavailable> {
        self.call(Method::GET, uri, None).await
    }

    /// `POST uri` with a JSON body, JSON back.
    pub(crate) async fn post(&self, uri: &Uri, body: Vec<u8>) -> Result<(StatusCode, Bytes), Unavailable> {
        self.call(Method::POST, uri, Some(body)).await
    }

    async fn call(&self, method: Method, uri: &Uri, body: Option<Vec<u8>>) -> Result<(StatusCode, Bytes), Unavailable> {
        let bearer = self.own_token().await?;
        let mut req = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        let headers = req.headers_mut();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(mut value) = bearer {
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| Unavailable(format!("cannot reach {uri}: {}", chain(&e))))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| Unavailable(format!("the answer of {uri} broke off or is over 1 MiB: {e}")))?;
            Ok((status, body.to_bytes()))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                Err(Unavailable(format!("{uri} did not answer within {}", humantime::format_duration(self.timeout))))
            }
        }
    }

    /// `Bearer <the gateway's token>`, read now (the kubelet replaces the file as it rotates).
    async fn own_token(&self) -> Result<Option<HeaderValue>, Unavailable> {
        let Some(path) = &self.token_file else { return Ok(None) };
        let unreadable =
            |e: String| Unavailable(format!("cannot read the gateway's own token {}: {e}", path.display()));
        let file = tokio::fs::File::open(path).await.map_err(|e| unreadable(e.to_string()))?;
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::AsyncReadExt::take(file, MAX_TOKEN_FILE), &mut text)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(unreadable("the file is empty".into()));
        }
        HeaderValue::from_str(&format!("Bearer {token}")).map(Some).map_err(|_| unreadable("not a token".into()))
    }
}
