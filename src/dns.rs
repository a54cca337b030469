//! Name resolution for the upstream client, in pure Rust (hickory-resolver): the static release
//! binary runs in a `FROM scratch` image, where glibc's `getaddrinfo` would need NSS plugins that
//! are not there.
//!
//! The name servers, search domains and `ndots` come from `/etc/resolv.conf` (in Kubernetes the
//! kubelet writes it into every container); without one the resolver asks 127.0.0.1:53, as glibc
//! does. `/etc/hosts` is read when present. `localhost` (and `*.localhost`, RFC 6761) never reaches
//! DNS, and neither do IP literals (hyper-util parses those before it calls a resolver). Every
//! lookup is bounded by `upstream.connect_timeout`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use hyper_util::client::legacy::connect::dns::Name;

/// Where the system's resolver configuration lives.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Why a name could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No answer within the deadline.
    #[error("DNS lookup of {host} took longer than {}", humantime::format_duration(*.deadline))]
    Timeout {
        /// The name looked up.
        host: String,
        /// `upstream.connect_timeout`.
        deadline: Duration,
    },
    /// The name servers answered with an error, or none answered.
    #[error("DNS lookup of {host} failed: {reason}")]
    Lookup {
        /// The name looked up.
        host: String,
        /// The resolver's reason.
        reason: String,
    },
}

/// A cloneable resolver for hyper-util's `HttpConnector` (a `tower::Service<Name>`).
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    deadline: Duration,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("deadline", &self.deadline).finish_non_exhaustive()
    }
}

impl Resolver {
    /// The system's resolver: `/etc/resolv.conf` (read now: a reload reads it again), each lookup
    /// at most `deadline`.
    pub fn system(deadline: Duration) -> Self {
        let (config, opts) = system_config(Path::new(RESOLV_CONF));
        Self::with_config(config, opts, deadline)
    }

    /// A resolver asking the given name servers (tests, and the fallback).
    pub fn with_config(config: ResolverConfig, opts: ResolverOpts, deadline: Duration) -> Self {
        let mut builder = TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = opts;
        Resolver { inner: Arc::new(builder.build()), deadline }
    }

    /// The addresses of `host` (port 0: the connector sets the URL's port).
    pub async fn lookup(&self, host: &str) -> Result<Vec<SocketAddr>, DnsError> {
        if is_localhost(host) {
            return Ok(vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
            ]);
        }
        let lookup = tokio::time::timeout(self.deadline, self.inner.lookup_ip(host)).await;
        match lookup {
            Err(_) => Err(DnsError::Timeout { host: host.to_owned(), deadline: self.deadline }),
            Ok(Err(e)) => Err(DnsError::Lookup { host: host.to_owned(), reason: e.to_string() }),
            Ok(Ok(ips)) => Ok(ips.iter().map(|ip| SocketAddr::new(ip, 0)).collect()),
        }
    }
}

/// `localhost`, `localhost.` and names under it (RFC 6761: always the loopback address).
fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host.len() > ".localhost".len() && host[host.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
}

/// The resolver configuration in `path`, or glibc's default when it is missing or unreadable.
fn system_config(path: &Path) -> (ResolverConfig, ResolverOpts) {
    match std::fs::read_to_string(path).map(hickory_resolver::system_conf::parse_resolv_conf) {
        Ok(Ok((config, opts))) if !config.name_servers().is_empty() => (config, opts),
        other => {
            let why = match other {
                Err(e) => e.to_string(),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(_)) => "no nameserver line".to_owned(),
            };
            tracing::warn!(file = %path.display(), reason = %why, "no usable resolver configuration; asking 127.0.0.1:53");
            (loopback_config(), ResolverOpts::default())
        }
    }
}

/// glibc's choice without a resolv.conf: a name server on the loopback address.
fn loopback_config() -> ResolverConfig {
    let servers = NameServerConfigGroup::from_ips_clear(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], 53, true);
    ResolverConfig::from_parts(None, vec![], servers)
}

impl tower::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = DnsError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DnsError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DnsError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move { resolver.lookup(name.as_str()).await.map(Vec::into_iter) })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::{rdata::A, RData, Record};
    use tokio::net::UdpSocket;

    /// A DNS server on a loopback UDP port that answers every A query with `answer` (none: it
    /// never answers), and a resolver that asks only it.
    pub(crate) async fn fake_dns(
        answer: Option<Ipv4Addr>,
        deadline: Duration,
    ) -> (Resolver, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                let Some(ip) = answer else { continue };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let mut reply = Message::new();
                reply.set_id(query.id()).set_message_type(MessageType::Response).set_recursion_available(true);
                reply.set_response_code(ResponseCode::NoError);
                for q in query.queries() {
                    reply.add_query(q.clone());
                    if q.query_type() == hickory_resolver::proto::rr::RecordType::A {
                        reply.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(ip))));
                    }
                }
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        let servers = NameServerConfigGroup::from_ips_clear(&[IpAddr::V4(Ipv4Addr::LOCALHOST)], port, true);
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
        let resolver = Resolver::with_config(ResolverConfig::from_parts(None, vec![], servers), opts, deadline);
        (resolver, task)
    }

    #[test]
    fn localhost_names() {
        for h in ["localhost", "LOCALHOST", "localhost.", "api.localhost", "a.b.Localhost."] {
            assert!(is_localhost(h), "{h}");
        }
        for h in ["localhost.example", "notlocalhost", "xlocalhost", ".localhost", "localhostx", ""] {
            assert!(!is_localhost(h), "{h}");
        }
    }

    /// A name is answered by the configured name server, without getaddrinfo.
    #[tokio::test]
    async fn names_are_resolved_by_the_configured_server() {
        let (resolver, task) = fake_dns(Some(Ipv4Addr::new(127, 0, 0, 42)), Duration::from_secs(5)).await;
        let addrs = resolver.lookup("palette.gateway.test").await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::from(([127, 0, 0, 42], 0))]);
        task.abort();
    }

    /// A name server that never answers costs at most the deadline, and the error says so.
    #[tokio::test]
    async fn a_silent_server_times_out_within_the_deadline() {
        let (resolver, task) = fake_dns(None, Duration::from_millis(300)).await;
        let started = tokio::time::Instant::now();
        let e = resolver.lookup("palette.gateway.test").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(matches!(e, DnsError::Timeout { .. }), "{e}");
        assert_eq!(e.to_string(), "DNS lookup of palette.gateway.test took longer than 300ms");
        task.abort();
    }

    /// `localhost` answers even when DNS does not.
    #[tokio::test]
    async fn localhost_never_asks_dns() {
        let (resolver, task) = fake_dns(None, Duration::from_millis(300)).await;
        let addrs = resolver.lookup("localhost").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && addrs.len() == 2, "{addrs:?}");
        task.abort();
    }

    /// resolv.conf is read when present; without one, 127.0.0.1:53 as glibc does.
    #[test]
    fn resolv_conf_or_the_loopback_fallback() {
        let dir = std::env::temp_dir().join(format!("pg-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("resolv.conf");
        std::fs::write(&file, "search ns.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5 timeout:2\n")
            .unwrap();
        let (config, opts) = system_config(&file);
        assert_eq!(config.name_servers()[0].socket_addr, SocketAddr::from(([10, 96, 0, 10], 53)));
        assert_eq!(config.search().len(), 1);
        assert_eq!((opts.ndots, opts.timeout), (5, Duration::from_secs(2)));
        for missing in [dir.join("absent"), dir.clone()] {
            let (config, _) = system_config(&missing);
            assert_eq!(config.name_servers()[0].socket_addr, SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        std::fs::write(&file, "# nothing\n").unwrap();
        let (config, _) = system_config(&file);
        assert_eq!(config.name_servers()[0].socket_addr, SocketAddr::from(([127, 0, 0, 1], 53)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
