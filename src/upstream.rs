//! The pooled client to the one upstream: TLS roots, ALPN (HTTP/2 where offered), timeouts,
//! and the classification of failures into connect / timeout / other.

use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::UpstreamConfig;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    /// TCP or TLS connection could not be made.
    #[error("cannot connect to upstream: {0}")]
    Connect(String),
    /// No response headers within `request_timeout`.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection broke or the answer was not HTTP.
    #[error("{0}")]
    Protocol(String),
}

/// A pooled, keep-alive client to the configured upstream.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    request_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").field("authority", &self.authority).finish_non_exhaustive()
    }
}

impl UpstreamClient {
    /// Builds the client; trusted roots are the system's, webpki's and `ca_file`'s.
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system root rustls cannot use is skipped, as every other rustls client does.
            let _ = roots.add(cert);
        }
        for cert in &cfg.extra_roots {
            let _ = roots.add(cert.clone());
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            // The ring provider supports the safe defaults; this branch is unreachable in practice
            // and still yields a working (TLS 1.3 only) config rather than a panic.
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Enough idle connections for a burst of concurrent requests (HTTP/2 clients multiplex
            // hundreds of streams onto HTTP/1.1 upstream connections) without closing and reopening.
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        UpstreamClient {
            client,
            scheme: cfg.scheme.clone(),
            authority: cfg.authority.clone(),
            request_timeout: cfg.request_timeout,
        }
    }

    /// The absolute upstream URI for an origin-form path and query.
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }

    /// How long a call waits for the upstream's response headers.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The upstream's host (and port), for logs.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// Sends one request; waits for the response headers at most `request_timeout`.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamFailure> {
        match tokio::time::timeout(self.request_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamFailure::Timeout(self.request_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamFailure::Connect(chain(&e))),
            Ok(Err(e)) => Err(UpstreamFailure::Protocol(chain(&e))),
        }
    }
}

/// An error and its sources on one line (hyper's top-level messages alone say little).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
