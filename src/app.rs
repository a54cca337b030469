//! Wiring: binds the listeners, builds the runtime, owns every long-lived task (servers, token
//! refreshers, the reload watcher), reloads the config whole, and shuts down gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{self, Config, ConfigError, Environment, ServerLimits};
use crate::credentials::{Credentials, InvalidKey, TokenManager};
use crate::limit::upstream::UpstreamBudget;
use crate::limit::ClientLimits;
use crate::metrics::Metrics;
use crate::proxy::{Gateway, Runtime, SharedRuntime};
use crate::server::{ConnSettings, SettingsSource};
use crate::upstream::UpstreamClient;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { addr: SocketAddr, what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Credential(#[from] InvalidKey),
}

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{0} cannot change on reload (restart the gateway to move a listener)")]
    ListenerChanged(&'static str),
    #[error(transparent)]
    Credential(#[from] InvalidKey),
}

/// A token refresher task and what stops it.
struct TokenTask {
    manager: Arc<TokenManager>,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// A started gateway: its bound addresses and the tasks it owns.
pub struct RunningGateway {
    /// Where the proxy listens (the real port when the config said `:0`).
    pub proxy_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
    listeners: CancellationToken,
    admin_listener: CancellationToken,
    token_tasks: Mutex<Vec<TokenTask>>,
    servers: Vec<JoinHandle<()>>,
    admin_server: Option<JoinHandle<()>>,
}

impl RunningGateway {
    /// Binds, starts serving at once, and logs in token credentials in the background.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let proxy = bind(config.server.listen, "server.listen").await?;
        let admin = bind(config.server.admin_listen, "server.admin_listen").await?;
        let local =
            |l: &TcpListener, addr, what| l.local_addr().map_err(|source| StartError::Bind { addr, what, source });
        let proxy_addr = local(&proxy, config.server.listen, "server.listen")?;
        let admin_addr = local(&admin, config.server.admin_listen, "server.admin_listen")?;
        let metrics = Arc::new(Metrics::new());
        let upstream = UpstreamClient::new(&config.upstream);
        let limits = ClientLimits::build(&config, None);
        let budget = UpstreamBudget::build(&config.upstream.limits, None);
        let credentials = Credentials::build(&config, &upstream, None, &metrics, budget.auth_bucket())?;
        let config = Arc::new(config);
        metrics.config_last_reload_success.set(unix_now());
        let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(Runtime {
            config,
            credentials,
            upstream,
            limits,
            budget,
            key_cache: Default::default(),
        }));
        let draining = Arc::new(AtomicBool::new(false));
        let listeners = CancellationToken::new();
        let admin_listener = CancellationToken::new();

        let rt = runtime.clone();
        let proxy_settings: SettingsSource = Arc::new(move || {
            let rt = rt.load();
            ConnSettings {
                tls: rt.config.server.tls.as_ref().map(|t| t.config.clone()),
                limits: rt.config.server.limits.clone(),
                drain: rt.config.server.limits.drain_timeout,
            }
        });
        let rt = runtime.clone();
        let admin_settings: SettingsSource =
            // The admin listener drains quickly: probes and scrapes are short.
            Arc::new(move || ConnSettings {
                tls: None,
                limits: rt.load().config.server.limits.clone(),
                drain: Duration::from_secs(1),
            });
        let servers = vec![tokio::spawn(crate::server::serve(
            proxy,
            proxy_settings,
            {
                let gateway = Gateway::new(runtime.clone(), metrics.clone());
                Arc::new(move |req| {
                    let gateway = gateway.clone();
                    Box::pin(async move { gateway.handle(req).await })
                })
            },
            listeners.clone(),
        ))];
        let admin_server = Some(tokio::spawn(crate::server::serve(
            admin,
            admin_settings,
            {
                let admin = Admin::new(runtime.clone(), metrics.clone(), draining.clone());
                Arc::new(move |req| {
                    let resp = admin.answer(&req);
                    Box::pin(async move { resp })
                })
            },
            admin_listener.clone(),
        )));
        let gateway = RunningGateway {
            proxy_addr,
            admin_addr,
            runtime,
            metrics,
            draining,
            listeners,
            admin_listener,
            token_tasks: Mutex::new(Vec::new()),
            servers,
            admin_server,
        };
        gateway.sync_token_tasks();
        tracing::info!(%proxy_addr, %admin_addr, "palette-gateway listening");
        Ok(gateway)
    }

    /// The live runtime (config snapshot, credentials).
    pub fn runtime(&self) -> &SharedRuntime {
        &self.runtime
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts a refresher for every token manager of the live runtime that has none, and stops
    /// those whose manager is gone.
    fn sync_token_tasks(&self) {
        let rt = self.runtime.load();
        let live: Vec<Arc<TokenManager>> = rt.credentials.token_managers().cloned().collect();
        let mut tasks = self.token_tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| {
            let keep = live.iter().any(|m| Arc::ptr_eq(m, &t.manager));
            if !keep {
                t.cancel.cancel();
            }
            keep
        });
        for m in live {
            if !tasks.iter().any(|t| Arc::ptr_eq(&t.manager, &m)) {
                let cancel = CancellationToken::new();
                let handle = tokio::spawn(m.clone().run(cancel.clone()));
                tasks.push(TokenTask { manager: m, cancel, handle });
            }
        }
    }

    /// Loads the config at `path` and swaps it in whole; on any problem the old config keeps
    /// serving and the error says why. Counted in `palette_gateway_config_reloads_total`.
    pub fn reload(&self, path: &Path, env: &dyn Environment) -> Result<(), ReloadError> {
        let result = config::load(path, env).map_err(ReloadError::from).and_then(|cfg| self.apply(cfg));
        match &result {
            Ok(()) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_last_reload_success.set(unix_now());
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["error"]).inc();
                tracing::error!(path = %path.display(), error = %e, "config reload refused; the previous config keeps serving");
            }
        }
        result
    }

    /// Swaps in a validated config. Token caches survive for credentials whose settings (and
    /// upstream) did not change; rate-limit state survives for unchanged clients and prefixes.
    pub fn apply(&self, cfg: Config) -> Result<(), ReloadError> {
        let old = self.runtime.load_full();
        if cfg.server.listen != old.config.server.listen {
            return Err(ReloadError::ListenerChanged("server.listen"));
        }
        if cfg.server.admin_listen != old.config.server.admin_listen {
            return Err(ReloadError::ListenerChanged("server.admin_listen"));
        }
        if cfg.server.tls.is_some() != old.config.server.tls.is_some() {
            return Err(ReloadError::ListenerChanged("server.tls (on or off)"));
        }
        if cfg.server.limits.max_connections != old.config.server.limits.max_connections {
            tracing::warn!("server.max_connections takes effect at the next restart");
        }
        let same_upstream = same_upstream(&cfg, &old.config);
        let upstream = if same_upstream { old.upstream.clone() } else { UpstreamClient::new(&cfg.upstream) };
        let previous = same_upstream.then_some(&old.credentials);
        let limits = ClientLimits::build(&cfg, Some(&old.limits));
        let budget = UpstreamBudget::build(&cfg.upstream.limits, Some(&old.budget));
        let credentials = Credentials::build(&cfg, &upstream, previous, &self.metrics, budget.auth_bucket())?;
        self.runtime.store(Arc::new(Runtime {
            config: Arc::new(cfg),
            credentials,
            upstream,
            limits,
            budget,
            key_cache: Default::default(),
        }));
        self.sync_token_tasks();
        Ok(())
    }

    /// Stops at once: no new connections, in-flight requests get up to the drain timeout.
    pub async fn shutdown(mut self) {
        self.listeners.cancel();
        for s in self.servers.drain(..) {
            let _ = s.await;
        }
        self.stop_background().await;
    }

    /// The Kubernetes-friendly stop: `/readyz` turns 503 at once, the listener keeps serving for
    /// `shutdown_delay`, then stops accepting and drains up to `drain_timeout`. Returns early
    /// (abandoning the drain) when `hurry` fires.
    pub async fn graceful_shutdown(mut self, hurry: CancellationToken) {
        let limits: ServerLimits = self.runtime.load().config.server.limits.clone();
        self.draining.store(true, Ordering::SeqCst);
        tracing::info!(delay = ?limits.shutdown_delay, drain = ?limits.drain_timeout, "shutting down: not ready; serving until the delay ends");
        tokio::select! {
            _ = tokio::time::sleep(limits.shutdown_delay) => {}
            _ = hurry.cancelled() => return,
        }
        self.listeners.cancel();
        let servers: Vec<_> = self.servers.drain(..).collect();
        tokio::select! {
            _ = futures_util::future::join_all(servers) => {}
            _ = hurry.cancelled() => return,
        }
        tokio::select! {
            _ = self.stop_background() => {}
            _ = hurry.cancelled() => {}
        }
    }

    async fn stop_background(&mut self) {
        self.admin_listener.cancel();
        if let Some(a) = self.admin_server.take() {
            let _ = a.await;
        }
        let tasks: Vec<TokenTask> = self.token_tasks.lock().map(|mut t| t.drain(..).collect()).unwrap_or_default();
        for t in tasks {
            t.cancel.cancel();
            let _ = t.handle.await;
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        // Dropped without shutdown() (a test that ended early): stop everything at once.
        self.listeners.cancel();
        self.admin_listener.cancel();
        for s in &self.servers {
            s.abort();
        }
        if let Some(a) = &self.admin_server {
            a.abort();
        }
        if let Ok(tasks) = self.token_tasks.lock() {
            for t in tasks.iter() {
                t.cancel.cancel();
                t.handle.abort();
            }
        }
    }
}

fn same_upstream(a: &Config, b: &Config) -> bool {
    let (a, b) = (&a.upstream, &b.upstream);
    a.scheme == b.scheme
        && a.authority == b.authority
        && a.extra_roots == b.extra_roots
        && a.connect_timeout == b.connect_timeout
        && a.request_timeout == b.request_timeout
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
}

/// Runs the gateway from a config file until SIGTERM/SIGINT: reloads on SIGHUP and when the
/// file (or a secret file it names) changes; a second stop signal exits at once.
pub async fn run(path: PathBuf, cfg: Config, env: Arc<dyn Environment>) -> anyhow::Result<()> {
    // Signal handlers first: a SIGTERM that arrives as soon as the listener answers must drain,
    // not kill the process.
    let mut signals = StopSignals::new();
    let watched = cfg.watched_files(&path);
    let gateway = Arc::new(RunningGateway::start(cfg).await?);
    let stop_watch = CancellationToken::new();
    let watcher = crate::reload::spawn(gateway.clone(), path, env, watched, stop_watch.clone());
    signals.recv().await;
    let hurry = CancellationToken::new();
    let second = hurry.clone();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second stop signal: exiting now");
        second.cancel();
        // Whatever the shutdown is waiting for (a drain, the watcher, a token task), a second
        // signal ends the process now.
        std::process::exit(1);
    });
    stop_watch.cancel();
    tokio::select! {
        _ = watcher => {}
        _ = hurry.cancelled() => std::process::exit(1),
    }
    let gateway = match Arc::try_unwrap(gateway) {
        Ok(g) => g,
        Err(_) => anyhow::bail!("internal: the gateway is still shared at shutdown"),
    };
    gateway.graceful_shutdown(hurry.clone()).await;
    if hurry.is_cancelled() {
        std::process::exit(1);
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM and SIGINT, registered once so that no signal is lost between two waits.
pub struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Registers the handlers (from now on the signals no longer kill the process).
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Resolves on the next SIGTERM or SIGINT (including one that arrived since the last call).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let term = async {
                match &mut self.term {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            let int = async {
                match &mut self.int {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = term => {}
                _ = int => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for StopSignals {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    StopSignals::new().recv().await;
}
