//! `[server]`: listeners, TLS, and the limits against slow, large or too many clients.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::limits::positive;
use crate::config::file::RawConfig;
use crate::config::problems::Problems;
use crate::config::{tls, Environment, ServerConfig, ServerLimits};

pub(super) fn server(raw: &RawConfig, base: &Path, env: &dyn Environment, p: &mut Problems) -> Option<ServerConfig> {
    let listen = socket_addr(&raw.server.listen, "server.listen", p);
    let admin_listen = socket_addr(&raw.server.admin_listen, "server.admin_listen", p);
    if let (Some(a), Some(b)) = (listen, admin_listen) {
        if a == b && a.port() != 0 {
            p.add("server.admin_listen", "must differ from server.listen");
        }
    }
    let tls = match &raw.server.tls {
        Some(t) => Some(tls::server_tls(t, base, env, p)?),
        None => None,
    };
    let s = &raw.server;
    let limits = ServerLimits {
        header_read_timeout: positive(
            s.header_read_timeout.unwrap_or(Duration::from_secs(10)),
            "server.header_read_timeout",
            p,
        ),
        idle_timeout: positive(s.idle_timeout.unwrap_or(Duration::from_secs(60)), "server.idle_timeout", p),
        request_body_timeout: positive(
            s.request_body_timeout.unwrap_or(Duration::from_secs(30)),
            "server.request_body_timeout",
            p,
        ),
        send_timeout: positive(s.send_timeout.unwrap_or(Duration::from_secs(30)), "server.send_timeout", p),
        max_request_body: s.max_request_body.unwrap_or(16 * 1024 * 1024),
        max_header_bytes: s.max_header_bytes.unwrap_or(64 * 1024),
        max_connections: s.max_connections.unwrap_or(10_000),
        max_inflight_requests: s.max_inflight_requests.unwrap_or(1024),
        shutdown_delay: s.shutdown_delay.unwrap_or(Duration::from_secs(5)),
        drain_timeout: s.drain_timeout.unwrap_or(Duration::from_secs(30)),
    };
    if limits.max_header_bytes < 8192 {
        p.add("server.max_header_bytes", "must be at least 8192 (hyper's smallest read buffer)");
    }
    for (field, v) in [
        ("server.max_connections", limits.max_connections),
        ("server.max_inflight_requests", limits.max_inflight_requests),
    ] {
        if v == 0 {
            p.add(field, "must be at least 1");
        }
    }
    Some(ServerConfig { listen: listen?, admin_listen: admin_listen?, tls, limits })
}

fn socket_addr(text: &str, field: &str, p: &mut Problems) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(field, format!("{text:?} is not an IP:port address (e.g. \"127.0.0.1:8080\")"));
            None
        }
    }
}
