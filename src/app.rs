//! Wiring: binds the listeners, prepares the runtime, starts the token tasks and servers, and
//! stops them all. The one place that spawns long-lived tasks; [`RunningGateway`] owns them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::Config;
use crate::credentials::{Credentials, InvalidKey};
use crate::limit::upstream::UpstreamBudget;
use crate::limit::ClientLimits;
use crate::metrics::Metrics;
use crate::proxy::{Gateway, Runtime, SharedRuntime};
use crate::upstream::UpstreamClient;

/// How long in-flight requests may take to finish once shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Credential(#[from] InvalidKey),
}

/// A started gateway: its bound addresses and the tasks it owns.
pub struct RunningGateway {
    /// Where the proxy listens (the real port when the config said `:0`).
    pub proxy_addr: SocketAddr,
    /// Where `/healthz` and `/readyz` are served.
    pub admin_addr: SocketAddr,
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Binds, starts serving at once, and logs in token credentials in the background.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let proxy = bind(config.server.listen, "server.listen").await?;
        let admin = bind(config.server.admin_listen, "server.admin_listen").await?;
        let proxy_addr = proxy.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.listen,
            what: "server.listen",
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            addr: config.server.admin_listen,
            what: "server.admin_listen",
            source,
        })?;
        let metrics = Arc::new(Metrics::new());
        let upstream = UpstreamClient::new(&config.upstream);
        let credentials = Credentials::build(&config, &upstream, None, &metrics)?;
        let limits = ClientLimits::build(&config, None);
        let budget = UpstreamBudget::build(&config.upstream.limits, None);
        let tls = config.server.tls.as_ref().map(|t| t.config.clone());
        let config = Arc::new(config);
        metrics.config_last_reload_success.set(unix_now());
        let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(Runtime {
            config,
            credentials: credentials.clone(),
            upstream,
            limits,
            budget,
        }));
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        for manager in credentials.token_managers() {
            tasks.push(tokio::spawn(manager.clone().run(cancel.child_token())));
        }
        tasks.push(tokio::spawn(crate::server::serve(
            proxy,
            tls,
            Gateway::new(runtime.clone(), metrics.clone()),
            cancel.child_token(),
            DRAIN_TIMEOUT,
        )));
        tasks.push(tokio::spawn(crate::server::serve(
            admin,
            None,
            Admin::new(runtime.clone(), metrics.clone()),
            cancel.child_token(),
            Duration::from_secs(1),
        )));
        tracing::info!(%proxy_addr, %admin_addr, "palette-gateway listening");
        Ok(RunningGateway { proxy_addr, admin_addr, runtime, metrics, cancel, tasks })
    }

    /// The live runtime (config snapshot, credentials).
    pub fn runtime(&self) -> &SharedRuntime {
        &self.runtime
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain timeout), stops the
    /// token tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        // Dropped without shutdown() (a test that ended early): stop everything at once.
        self.cancel.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run_until_signal(config: Config) -> Result<(), StartError> {
    let gateway = RunningGateway::start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    gateway.shutdown().await;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
