//! The pooled client to the one upstream: TLS roots, ALPN (HTTP/2 where offered), timeouts,
//! and the classification of failures into connect / timeout / other.

use std::time::Duration;

use http::{header, HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::UpstreamConfig;
use crate::dns::Resolver;

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
    client: Client<HttpsConnector<HttpConnector<Resolver>>, Body>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The `Host` header every request gets, for a plain `http` upstream (see [`host_header`]).
    host: Option<HeaderValue>,
    request_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").field("authority", &self.authority).finish_non_exhaustive()
    }
}

/// The roots an `https` upstream's certificate is verified against. webpki's roots are compiled
/// in, so a `FROM scratch` image (no /etc/ssl) verifies Palette's certificate; the system's roots
/// (none there) and `ca_file` add to them. An `http` upstream never uses them: reading the
/// system's roots (a few hundred files on Debian) was a third of the start-up time
/// (bench/idle.sh, startup), so it gets none.
fn trusted_roots(cfg: &UpstreamConfig) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    if cfg.scheme != http::uri::Scheme::HTTPS {
        return roots;
    }
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A system root rustls cannot use is skipped, as every other rustls client does.
        let _ = roots.add(cert);
    }
    for cert in &cfg.extra_roots {
        let _ = roots.add(cert.clone());
    }
    roots
}

impl UpstreamClient {
    /// Builds the client; trusted roots are the system's, webpki's and `ca_file`'s; names are
    /// resolved in pure Rust from `/etc/resolv.conf` (see `dns`).
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Self::with_resolver(cfg, Resolver::system(cfg.connect_timeout))
    }

    /// [`UpstreamClient::new`] with a given resolver (tests point it at a fake name server).
    pub(crate) fn with_resolver(cfg: &UpstreamConfig, resolver: Resolver) -> Self {
        let roots = trusted_roots(cfg);
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
        let mut http = HttpConnector::new_with_resolver(resolver);
        configure_tcp(&mut http, cfg.connect_timeout);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let (builder, host) = client_builder(&cfg.scheme, &cfg.authority);
        let client = builder.build(https);
        UpstreamClient {
            client,
            scheme: cfg.scheme.clone(),
            authority: cfg.authority.clone(),
            host,
            request_timeout: cfg.request_timeout,
        }
    }

    /// The absolute upstream URI for an origin-form path and query. Given as `Bytes` (a
    /// `String` or a `&'static str`), it is checked in place, not copied (issue 14).
    pub fn uri(&self, path_and_query: impl Into<bytes::Bytes>) -> Result<Uri, http::Error> {
        // From its parts, not through `Uri::builder`, which moves the parts through a
        // `Result` at each step (issue 14: 500 instructions a request).
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(path_and_query.into())?);
        Ok(Uri::from_parts(parts)?)
    }

    /// How long a call waits for the upstream's response headers.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The upstream's host (and port), for logs.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// Sends one request; waits for the response headers at most `request_timeout`. `Host` is
    /// the upstream's, whatever the request carried: it is set last, after every removal.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, UpstreamFailure> {
        if let Some(host) = &self.host {
            req.headers_mut().insert(header::HOST, host.clone());
        }
        match tokio::time::timeout(self.request_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamFailure::Timeout(self.request_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamFailure::Connect(chain(&e))),
            Ok(Err(e)) => Err(UpstreamFailure::Protocol(chain(&e))),
        }
    }
}

/// The `Host` header for requests to a plain `http` upstream, the value hyper-util's client
/// builds for each request (the host, and the port unless it is the scheme's default), built
/// once. `None` for `https`: ALPN may pick HTTP/2 there, where hyper-util sends `:authority`
/// and no `Host`, so the header is left to it.
pub fn host_header(scheme: &http::uri::Scheme, authority: &http::uri::Authority) -> Option<HeaderValue> {
    if *scheme != http::uri::Scheme::HTTP {
        return None;
    }
    let value = match authority.port_u16() {
        Some(port) if port != 80 => format!("{}:{port}", authority.host()),
        _ => authority.host().to_string(),
    };
    HeaderValue::from_str(&value).ok()
}

/// The TCP settings of upstream connections (shared with the benchmark's floor proxy): no
/// Nagle delay on small requests, TCP keep-alive probes, a connect deadline; `https://` URIs pass
/// to the TLS layer wrapped around this connector.
pub fn configure_tcp<R>(http: &mut HttpConnector<R>, connect_timeout: Duration) {
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
}

/// The upstream client's pool and timer settings for one upstream, and the `Host` header its
/// requests must then be given (see [`host_header`]): in one place so that the benchmark's floor
/// (`examples/floor_proxy.rs`) is built from exactly these and cannot pair them differently.
pub fn client_builder(
    scheme: &http::uri::Scheme,
    authority: &http::uri::Authority,
) -> (hyper_util::client::legacy::Builder, Option<HeaderValue>) {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_idle_timeout(Duration::from_secs(90))
        // Enough idle connections for a burst of concurrent requests (HTTP/2 clients multiplex
        // hundreds of streams onto HTTP/1.1 upstream connections) without closing and reopening.
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    let host = host_header(scheme, authority);
    if host.is_some() {
        // The caller sets `Host` itself: hyper-util would build it again for every request
        // (`format!` of host and port, an allocation: issue 14).
        builder.set_host(false);
    }
    (builder, host)
}

/// An error and its sources on one line (hyper's top-level messages alone say little).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, MapEnv};
    use std::net::Ipv4Addr;

    /// An HTTP server on a loopback port answering every request with 204, and its port.
    async fn http_server() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder().status(204).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap(),
                    )
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
            }
        });
        (port, task)
    }

    fn config(url: &str) -> crate::config::Config {
        let text = format!(
            "[upstream]\nurl = \"{url}\"\nconnect_timeout = \"1s\"\n[credentials.default]\napi_key_env = \"K\"\n"
        );
        load_str(&text, std::path::Path::new("."), &MapEnv::new().with("K", "k-1")).unwrap()
    }

    async fn get(client: &UpstreamClient) -> Result<Response<Incoming>, UpstreamFailure> {
        let req = Request::get(client.uri("/v1/x").unwrap()).body(crate::body::empty()).unwrap();
        client.send(req).await
    }

    /// The upstream's scheme and authority with the request's path and query, as sent; a
    /// target that is no origin-form path fails, naming why.
    #[tokio::test]
    async fn uris_are_the_upstreams_with_the_path_and_query() {
        let client = UpstreamClient::new(&config("https://api.example:8443").upstream);
        assert_eq!(client.uri("/v1/x?a=1&b").unwrap().to_string(), "https://api.example:8443/v1/x?a=1&b");
        assert_eq!(client.uri(String::from("/")).unwrap().to_string(), "https://api.example:8443/");
        assert!(client.uri("/v1/a b").is_err());
    }

    /// The `Host` hyper-util would have built: the port only when it is not the default.
    #[test]
    fn the_host_header_is_hyper_utils() {
        let host = |url: &str| {
            let uri: Uri = url.parse().unwrap();
            host_header(uri.scheme().unwrap(), uri.authority().unwrap())
        };
        assert_eq!(host("http://127.0.0.1:18380").unwrap(), "127.0.0.1:18380");
        assert_eq!(host("http://palette.test:80").unwrap(), "palette.test");
        assert_eq!(host("http://palette.test").unwrap(), "palette.test");
        assert_eq!(host("http://[::1]:8080").unwrap(), "[::1]:8080");
        assert_eq!(host("https://api.spectrocloud.com"), None);
    }

    /// Palette gets the upstream's `Host` (host and port), never the one the request carried.
    #[tokio::test]
    async fn the_upstream_gets_its_own_host() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let hosts: Vec<String> =
                        req.headers().get_all(header::HOST).iter().map(|v| v.to_str().unwrap().to_string()).collect();
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from(
                        hosts.join(","),
                    ))))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, svc));
            }
        });
        let client = UpstreamClient::new(&config(&format!("http://127.0.0.1:{port}")).upstream);
        for carried in [None, Some("evil.example"), Some("127.0.0.1:1")] {
            let mut req = Request::get(client.uri("/v1/x").unwrap()).body(crate::body::empty()).unwrap();
            if let Some(h) = carried {
                req.headers_mut().insert(header::HOST, HeaderValue::from_static(h));
            }
            let resp = client.send(req).await.unwrap();
            let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
            assert_eq!(body, format!("127.0.0.1:{port}"), "request carrying {carried:?}");
        }
        server.abort();
    }

    #[test]
    fn only_an_https_upstream_loads_trusted_roots() {
        assert!(trusted_roots(&config("http://palette.gateway.test").upstream).is_empty());
        let roots = trusted_roots(&config("https://palette.gateway.test").upstream);
        assert!(roots.len() >= webpki_roots::TLS_SERVER_ROOTS.len(), "webpki's roots at least: {}", roots.len());
    }

    /// The upstream host name is resolved by the pure-Rust resolver (a fake name server here)
    /// and the request reaches the address it answered.
    #[tokio::test]
    async fn upstream_names_are_resolved_without_getaddrinfo() {
        let (port, server) = http_server().await;
        let (resolver, dns) = crate::dns::tests::fake_dns(Some(Ipv4Addr::LOCALHOST), Duration::from_secs(1)).await;
        let cfg = config(&format!("http://palette.gateway.test:{port}"));
        let client = UpstreamClient::with_resolver(&cfg.upstream, resolver);
        assert_eq!(get(&client).await.unwrap().status(), 204);
        server.abort();
        dns.abort();
    }

    /// A name server that never answers is a connect failure within `connect_timeout`, and the
    /// message names DNS; `localhost` still works with DNS down.
    #[tokio::test]
    async fn silent_dns_is_a_connect_failure_and_localhost_needs_no_dns() {
        let (port, server) = http_server().await;
        let (resolver, dns) = crate::dns::tests::fake_dns(None, Duration::from_millis(300)).await;
        let cfg = config(&format!("http://palette.gateway.test:{port}"));
        let client = UpstreamClient::with_resolver(&cfg.upstream, resolver.clone());
        match get(&client).await {
            Err(UpstreamFailure::Connect(m)) => assert!(m.contains("DNS lookup of palette.gateway.test"), "{m}"),
            other => panic!("{other:?}"),
        }
        let cfg = config(&format!("http://localhost:{port}"));
        let client = UpstreamClient::with_resolver(&cfg.upstream, resolver);
        assert_eq!(get(&client).await.unwrap().status(), 204);
        server.abort();
        dns.abort();
    }
}
