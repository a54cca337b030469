//! The framework floor for the benchmark: the smallest proxy on the same stack as the gateway
//! (hyper 1 server, hyper-util pooled client, tokio current-thread, mimalloc), built from the
//! gateway's own hyper settings (`server::connection_builder` with the default `[server]`
//! limits, `upstream::client_builder` and `upstream::configure_tcp`), doing only the header
//! swap (`ApiKey`, `ProjectUid`) and none of the gateway's work. The gateway's distance to it is
//! what its own code costs; the floor's distance to HAProxy is what the stack costs.
//!
//! `cargo run --release --example floor_proxy -- 127.0.0.1:18088 http://127.0.0.1:18090 UPSTREAM-KEY p-123`

use std::convert::Infallible;

use http::{HeaderValue, Request, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioIo;
use palette_gateway::config::{load_str, MapEnv};
use palette_gateway::server::{connection_builder, Versions};
use palette_gateway::upstream::{client_builder, configure_tcp};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18088".into());
    let upstream: Uri = args.next().unwrap_or_else(|| "http://127.0.0.1:18090".into()).parse()?;
    let key = HeaderValue::from_str(&args.next().unwrap_or_else(|| "UPSTREAM-SECRET".into()))?;
    let project = HeaderValue::from_str(&args.next().unwrap_or_else(|| "p-123".into()))?;
    // The gateway's default `[server]` limits, validated by the gateway's own config loader.
    let minimal = format!("[upstream]\nurl = \"{upstream}\"\n[credentials.default]\napi_key_env = \"K\"\n");
    let config = load_str(&minimal, std::path::Path::new("."), &MapEnv::new().with("K", "unused"))?;
    let limits = config.server.limits.clone();
    let connect_timeout = config.upstream.connect_timeout;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        let mut http = HttpConnector::new();
        configure_tcp(&mut http, connect_timeout);
        // As the gateway: `Host` is built once and set on each request, not by hyper-util.
        let (Some(scheme), Some(authority)) = (upstream.scheme(), upstream.authority()) else {
            return Err(format!("the upstream {upstream} is not an absolute URI").into());
        };
        let (client_builder, host) = client_builder(scheme, authority);
        let client: Client<HttpConnector, Body> = client_builder.build(http);
        // Plaintext, as the gateway's plaintext listener: h2c by prior knowledge or HTTP/1.1.
        let builder = std::sync::Arc::new(connection_builder(&limits, Versions::Detect));
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (client, upstream, key, project) = (client.clone(), upstream.clone(), key.clone(), project.clone());
            let (builder, host) = (builder.clone(), host.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (client, upstream, key, project, host) =
                        (client.clone(), upstream.clone(), key.clone(), project.clone(), host.clone());
                    async move {
                        let (mut parts, body) = req.into_parts();
                        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        parts.uri = Uri::builder()
                            .scheme(upstream.scheme_str().unwrap_or("http"))
                            .authority(upstream.authority().map_or("127.0.0.1", |a| a.as_str()))
                            .path_and_query(pq)
                            .build()
                            .unwrap_or_default();
                        // As the gateway: the upstream hop is HTTP/1.1 (h2 only where TLS ALPN
                        // offers it), whatever the client spoke; hyper's client refuses an HTTP/2
                        // request on an HTTP/1.1 connection.
                        parts.version = http::Version::HTTP_11;
                        parts.headers.remove("host");
                        if let Some(host) = host {
                            parts.headers.insert(http::header::HOST, host);
                        }
                        parts.headers.remove("authorization");
                        parts.headers.insert("apikey", key);
                        parts.headers.insert("projectuid", project);
                        let resp = match client.request(Request::from_parts(parts, body.boxed_unsync())).await {
                            Ok(r) => r.map(|b| b.boxed_unsync()),
                            Err(_) => {
                                let mut r = http::Response::new(
                                    http_body_util::Empty::new().map_err(|n| match n {}).boxed_unsync(),
                                );
                                *r.status_mut() = http::StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}
