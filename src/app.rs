//! Wiring: binds the listeners, builds the runtime, owns every long-lived task (servers, token
//! refreshers, the reload watcher and loop) through one task tracker and one root cancellation
//! token, reloads the config whole, and shuts down gracefully along one stop path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::Admin;
use crate::cluster::Cluster;
use crate::config::{self, Config, ConfigError, Environment, ServerLimits};
use crate::credentials::{InvalidKey, KeyCheck, TokenManager};
use crate::metrics::Metrics;
use crate::projects::Lookup;
use crate::proxy::Gateway;
use crate::runtime::{Runtime, SharedRuntime};
use crate::server::{ConnSettings, SettingsSource};
use crate::signals::{Hangup, StopSignals};
use crate::status::ReloadLog;
use crate::watcher::Trigger;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not bind its address.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Which listener (its config key, e.g. `server.listen`).
        what: &'static str,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A credential's Palette key cannot be sent as a header value.
    #[error(transparent)]
    Credential(#[from] InvalidKey),
}

/// Why a reload was refused (the old config keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new config file cannot be read, parsed or validated.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// A listener address changed (its config key); listeners are bound once, at start-up.
    #[error("{0} cannot change on reload (restart the gateway to move a listener)")]
    ListenerChanged(&'static str),
    /// A credential's Palette key cannot be sent as a header value.
    #[error(transparent)]
    Credential(#[from] InvalidKey),
}

/// Why [`run`] returned; `main` picks the exit code from it.
///
/// Little can fail for good once the gateway runs: TLS configs are built when a config loads
/// (a reload that cannot build one is refused), a short accept failure (EMFILE storms) backs
/// off and retries, and token refreshers retry forever. What remains is a listening socket
/// that fails every accept (`Fatal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// A stop signal: the gateway drained and stopped (exit 0).
    Signal,
    /// A second stop signal during the shutdown: returned at once, abandoning the drain
    /// (exit 1, and the process must not wait for what is still running).
    SecondSignal,
    /// The gateway cannot go on (a listening socket failed for good): it stopped at once,
    /// letting in-flight requests finish for up to `drain_timeout` (exit 2, with the reason).
    Fatal(String),
}

/// A token refresher and what stops it.
struct Refresher {
    manager: Arc<TokenManager>,
    cancel: CancellationToken,
}

/// What the running gateway shares with its reload loop: the live runtime, the metrics and the
/// owner of every background task.
struct Core {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    /// Every task the gateway starts (listeners, token refreshers, the watcher and the reload
    /// loop) runs on this tracker; each stops when its token (a child of the root) is cancelled.
    tasks: TaskTracker,
    /// The root token: cancelling it stops everything.
    root: CancellationToken,
    refreshers: Mutex<Vec<Refresher>>,
    /// Config loads and reloads, for the status page.
    reloads: Arc<ReloadLog>,
    /// The running API key checks (one per check; a finished one stays until its key goes).
    key_checks: Mutex<Vec<(Arc<KeyCheck>, CancellationToken)>>,
    /// The live cluster handle's heartbeat task and what stops it.
    heartbeat: Mutex<Option<(Cluster, CancellationToken)>>,
    /// The project name lookups' tasks, with what stops each.
    lookups: Mutex<Vec<(Arc<Lookup>, CancellationToken)>>,
    /// Why the gateway cannot go on (the first reason), once `failed` fires.
    fatal: Mutex<Option<String>>,
    /// Fires when a task fails for good; not a child of `root`, a stop does not fire it.
    failed: CancellationToken,
}

impl Core {
    /// The runtime built from `config`, fresh metrics, and no task yet.
    fn new(config: Config) -> Result<Self, InvalidKey> {
        config.log_warnings();
        let metrics = Arc::new(Metrics::new());
        let runtime: SharedRuntime = Arc::new(ArcSwap::from_pointee(Runtime::build(config, None, &metrics)?));
        metrics.config_last_reload_success.set(unix_now());
        Ok(Core {
            runtime,
            metrics,
            tasks: TaskTracker::new(),
            root: CancellationToken::new(),
            refreshers: Mutex::new(Vec::new()),
            key_checks: Mutex::new(Vec::new()),
            reloads: Arc::default(),
            heartbeat: Mutex::new(None),
            lookups: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            failed: CancellationToken::new(),
        })
    }

    /// Records why the gateway cannot go on (the first reason wins) and says so to [`run`].
    fn fail(&self, reason: String) {
        tracing::error!(reason = %reason, "the gateway cannot go on");
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(reason);
        self.failed.cancel();
    }

    /// Serves a listener ([`crate::server::serve`]); one that fails for good stops the gateway.
    async fn listener(
        self: Arc<Self>,
        what: String,
        listener: TcpListener,
        settings: SettingsSource,
        service: crate::server::HttpService,
        shutdown: CancellationToken,
    ) {
        if let Err(e) = crate::server::serve(listener, settings, service, shutdown).await {
            self.fail(format!("{what} failed: {e}"));
        }
    }

    /// Resolves with the reason once the gateway cannot go on.
    async fn failure(&self) -> String {
        self.failed.cancelled().await;
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }

    /// Starts a refresher for every token manager of the live runtime that has none, and stops
    /// those whose manager is gone.
    fn sync_token_tasks(&self) {
        let rt = self.runtime.load();
        let live: Vec<Arc<TokenManager>> = rt.credentials.token_managers().cloned().collect();
        let mut refreshers = self.refreshers.lock().unwrap_or_else(|p| p.into_inner());
        refreshers.retain(|t| {
            let keep = live.iter().any(|m| Arc::ptr_eq(m, &t.manager));
            if !keep {
                t.cancel.cancel();
            }
            keep
        });
        for m in live {
            if !refreshers.iter().any(|t| Arc::ptr_eq(&t.manager, &m)) {
                let cancel = self.root.child_token();
                self.tasks.spawn(m.clone().run(cancel.clone()));
                refreshers.push(Refresher { manager: m, cancel });
            }
        }
    }

    /// Starts the check of every API key of the live runtime that has none (a key new at start
    /// or changed by a reload), and stops those whose key is gone.
    fn sync_key_checks(&self) {
        let rt = self.runtime.load();
        let mut running = self.key_checks.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(check, cancel)| {
            let keep = rt.credentials.key_checks().any(|(c, _)| Arc::ptr_eq(c, check));
            if !keep {
                cancel.cancel();
            }
            keep
        });
        for (check, key) in rt.credentials.key_checks() {
            if !running.iter().any(|(c, _)| Arc::ptr_eq(c, check)) {
                let cancel = self.root.child_token();
                self.tasks.spawn(check.clone().run(rt.upstream.clone(), key.clone(), cancel.clone()));
                running.push((check.clone(), cancel));
            }
        }
    }

    /// Starts the task of every project name lookup of the live runtime that has none, and
    /// stops those whose lookup is gone.
    fn sync_lookup_tasks(&self) {
        let rt = self.runtime.load();
        let live: Vec<Arc<Lookup>> = rt.projects.lookups().cloned().collect();
        let mut running = self.lookups.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|(l, cancel)| {
            let keep = live.iter().any(|m| Arc::ptr_eq(m, l));
            if !keep {
                cancel.cancel();
            }
            keep
        });
        for l in live {
            if !running.iter().any(|(r, _)| Arc::ptr_eq(r, &l)) {
                let cancel = self.root.child_token();
                self.tasks.spawn(l.clone().run(cancel.clone()));
                running.push((l, cancel));
            }
        }
    }

    /// Starts the heartbeat of the live runtime's cluster handle if it has none yet, and
    /// stops the one of a handle a reload replaced or removed.
    fn sync_cluster_task(&self) {
        let live = self.runtime.load().cluster.clone();
        let mut task = self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((running, cancel)) = task.as_ref() {
            if live.as_ref().is_some_and(|l| l.same(running)) {
                return;
            }
            cancel.cancel();
            *task = None;
        }
        if let Some(cluster) = live {
            let cancel = self.root.child_token();
            self.tasks.spawn(cluster.clone().run(cancel.clone()));
            *task = Some((cluster, cancel));
        }
    }

    fn reload(&self, path: &Path, env: &dyn Environment) -> Result<(), ReloadError> {
        let result = config::load(path, env).map_err(ReloadError::from).and_then(|cfg| self.apply(cfg));
        match &result {
            Ok(()) => {
                self.metrics.config_reloads.with_label_values(&["ok"]).inc();
                self.metrics.config_last_reload_success.set(unix_now());
                self.reloads.succeeded();
                tracing::info!(path = %path.display(), "config reloaded");
            }
            Err(e) => {
                self.metrics.config_reloads.with_label_values(&["error"]).inc();
                self.reloads.failed(e.to_string());
                tracing::error!(path = %path.display(), error = %e, "config reload refused; the previous config keeps serving");
            }
        }
        result
    }

    /// Swaps in a validated config, built by [`Runtime::build`] on the live one (so token
    /// managers, budget buckets and limiter state that did not change carry over).
    fn apply(&self, cfg: Config) -> Result<(), ReloadError> {
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
        cfg.log_warnings();
        self.runtime.store(Arc::new(Runtime::build(cfg, Some(&old), &self.metrics)?));
        self.sync_token_tasks();
        self.sync_key_checks();
        self.sync_cluster_task();
        self.sync_lookup_tasks();
        Ok(())
    }
}

/// A started gateway: its bound addresses and the tasks it owns. Dropping it cancels every
/// task (listeners stop accepting and drain in the background); [`RunningGateway::shutdown`]
/// and [`RunningGateway::graceful_shutdown`] also wait for them.
pub struct RunningGateway {
    /// Where the proxy listens (the real port when the config said `:0`).
    pub proxy_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
    core: Arc<Core>,
    draining: Arc<AtomicBool>,
    /// Stops the proxy listener alone (it drains before the rest stops).
    proxy_listener: CancellationToken,
    proxy_server: Option<JoinHandle<()>>,
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
        let core = Arc::new(Core::new(config)?);
        let (runtime, metrics) = (core.runtime.clone(), core.metrics.clone());
        let draining = Arc::new(AtomicBool::new(false));
        let proxy_listener = core.root.child_token();

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
        let proxy_server = core.tasks.spawn(core.clone().listener(
            format!("the proxy listener ({proxy_addr})"),
            proxy,
            proxy_settings,
            {
                let gateway = Gateway::new(runtime.clone(), metrics.clone());
                Arc::new(move |req| Box::pin(gateway.handle(req)))
            },
            proxy_listener.clone(),
        ));
        core.tasks.spawn(core.clone().listener(
            format!("the admin listener ({admin_addr})"),
            admin,
            admin_settings,
            {
                let admin =
                    Admin::new(runtime.clone(), metrics.clone(), draining.clone()).with_reloads(core.reloads.clone());
                Arc::new(move |req| {
                    let resp = admin.answer(&req);
                    Box::pin(async move { resp })
                })
            },
            // The admin listener outlives the proxy's drain (`/readyz` says 503 meanwhile).
            core.root.child_token(),
        ));
        core.sync_token_tasks();
        core.sync_lookup_tasks();
        // The Kubernetes key set (jwks mode): fetched now and periodically; a reload's new key
        // set is fetched on its first token.
        core.tasks.spawn(crate::kubernetes::refresh_loop(runtime.clone(), core.root.child_token()));
        core.sync_key_checks();
        core.sync_cluster_task();
        tracing::info!(%proxy_addr, %admin_addr, "palette-gateway listening");
        Ok(RunningGateway { proxy_addr, admin_addr, core, draining, proxy_listener, proxy_server: Some(proxy_server) })
    }

    /// The live runtime (config snapshot, credentials).
    pub fn runtime(&self) -> &SharedRuntime {
        &self.core.runtime
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    /// Loads the config at `path` and swaps it in whole; on any problem the old config keeps
    /// serving and the error says why. Counted in `palette_gateway_config_reloads_total`.
    pub fn reload(&self, path: &Path, env: &dyn Environment) -> Result<(), ReloadError> {
        self.core.reload(path, env)
    }

    /// Stops at once: no new connections, in-flight requests get up to the drain timeout.
    pub async fn shutdown(self) {
        self.stop(None, &CancellationToken::new()).await;
    }

    /// The Kubernetes-friendly stop: `/readyz` turns 503 at once, the listener keeps serving for
    /// `shutdown_delay`, then stops accepting and drains up to `drain_timeout`. Returns early
    /// (abandoning the drain) when `hurry` fires.
    pub async fn graceful_shutdown(self, hurry: CancellationToken) {
        let delay = self.core.runtime.load().config.server.limits.shutdown_delay;
        self.stop(Some(delay), &hurry).await;
    }

    /// The one stop path. With a `delay`, `/readyz` turns 503 and the proxy listener serves on
    /// for that long; then the proxy listener stops accepting and drains, then every other
    /// task (the admin listener last among them) is cancelled and awaited. Returns `false` when
    /// `hurry` cut it short (the tasks are cancelled, not awaited).
    async fn stop(mut self, delay: Option<Duration>, hurry: &CancellationToken) -> bool {
        let steps = async {
            if let Some(delay) = delay {
                let limits: ServerLimits = self.core.runtime.load().config.server.limits.clone();
                self.draining.store(true, Ordering::SeqCst);
                tracing::info!(delay = ?delay, drain = ?limits.drain_timeout, "shutting down: not ready; serving until the delay ends");
                tokio::time::sleep(delay).await;
            }
            self.proxy_listener.cancel();
            if let Some(server) = self.proxy_server.take() {
                let _ = server.await;
            }
            self.core.root.cancel();
            self.core.tasks.close();
            self.core.tasks.wait().await;
        };
        tokio::select! {
            _ = steps => true,
            _ = hurry.cancelled() => false,
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        // Whether stopped or just dropped (a test that ended early): every task stops on this.
        self.core.root.cancel();
    }
}

/// Starts the reload loop on `gateway`'s tasks: the watcher reports SIGHUP and changes to
/// `watched` (the config file and the files it names), and the loop reloads `path` for each.
/// Ends (the watcher with it) when `stop` fires or the gateway stops.
pub fn spawn_reload(
    gateway: &RunningGateway,
    path: PathBuf,
    env: Arc<dyn Environment>,
    watched: Vec<PathBuf>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    // SIGHUP is registered now, not when the task first runs, so that none is missed.
    spawn_reload_with(gateway, path, env, watched, stop, Hangup::new())
}

/// [`spawn_reload`] with a SIGHUP handler registered earlier (by [`run`], before the listener
/// answers: a SIGHUP's default action would kill the process).
fn spawn_reload_with(
    gateway: &RunningGateway,
    path: PathBuf,
    env: Arc<dyn Environment>,
    watched: Vec<PathBuf>,
    stop: CancellationToken,
    hangup: Hangup,
) -> JoinHandle<()> {
    let core = gateway.core.clone();
    let token = core.root.child_token();
    let watcher_token = token.child_token();
    let (files_tx, files_rx) = watch::channel(watched);
    let (triggers_tx, triggers) = mpsc::channel(1);
    let watcher = core.tasks.spawn(crate::watcher::run(files_rx, triggers_tx, hangup, watcher_token.clone()));
    let tasks = core.tasks.clone();
    tasks.spawn(async move {
        tokio::select! {
            _ = reload_loop(&core, &path, env, triggers, files_tx, &token) => {}
            _ = stop.cancelled() => {}
        }
        watcher_token.cancel();
        let _ = watcher.await;
    })
}

/// Reloads `path` on each trigger, then tells the watcher which files the config now names.
async fn reload_loop(
    core: &Arc<Core>,
    path: &Path,
    env: Arc<dyn Environment>,
    mut triggers: mpsc::Receiver<Trigger>,
    files: watch::Sender<Vec<PathBuf>>,
    stop: &CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            trigger = triggers.recv() => if trigger.is_none() { return },
        }
        // Reading and validating files (and building TLS configs) blocks: keep it off the
        // threads that serve requests.
        let (c, p, e) = (core.clone(), path.to_path_buf(), env.clone());
        let _ = tokio::task::spawn_blocking(move || c.reload(&p, &*e)).await;
        // The new config may name other files (a new secret file); and the files were just
        // read, so their content is the new baseline.
        files.send_replace(core.runtime.load().config.watched_files(path));
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, what, source })
}

/// Runs the gateway from a config file until SIGTERM/SIGINT: reloads on SIGHUP and when the
/// file (or a secret file it names) changes; stops gracefully on the first stop signal, and
/// returns at once on a second one (the caller exits without waiting for the drain).
/// Returns [`Stopped::Fatal`] when the gateway cannot go on.
pub async fn run(path: PathBuf, cfg: Config, env: Arc<dyn Environment>) -> Result<Stopped, StartError> {
    // Signal handlers first: a SIGTERM that arrives as soon as the listener answers must drain,
    // and a SIGHUP must reload, not kill the process.
    let mut signals = StopSignals::new();
    let hangup = Hangup::new();
    let watched = cfg.watched_files(&path);
    let gateway = RunningGateway::start(cfg).await?;
    let stop_reload = CancellationToken::new();
    spawn_reload_with(&gateway, path, env, watched, stop_reload.clone(), hangup);
    Ok(serve_until_stopped(gateway, stop_reload, &mut signals).await)
}

/// Serves until a stop signal (a graceful shutdown) or a fatal failure (a shutdown without
/// `shutdown_delay`: nothing new can be served); a stop signal during either cuts it short.
async fn serve_until_stopped(
    gateway: RunningGateway,
    stop_reload: CancellationToken,
    signals: &mut StopSignals,
) -> Stopped {
    let core = gateway.core.clone();
    let fatal = tokio::select! {
        _ = signals.recv() => None,
        reason = core.failure() => Some(reason),
    };
    // No reload while shutting down.
    stop_reload.cancel();
    let shutdown = async {
        match fatal {
            None => {
                gateway.graceful_shutdown(CancellationToken::new()).await;
                tracing::info!("stopped");
                Stopped::Signal
            }
            Some(reason) => {
                gateway.shutdown().await;
                tracing::error!(reason = %reason, "stopped");
                Stopped::Fatal(reason)
            }
        }
    };
    tokio::select! {
        stopped = shutdown => stopped,
        _ = signals.recv() => {
            // Whatever the shutdown is waiting for (a drain, a token task), a second signal
            // ends it now: dropping the shutdown cancels every task.
            tracing::warn!("second stop signal: exiting now");
            Stopped::SecondSignal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo config on free ports; its upstream (the demo's fake Palette) is not running,
    /// so its login credential's refresher keeps retrying: a task that must stop on cancel.
    fn config() -> Config {
        let mut cfg = crate::demo::demo_config().unwrap();
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.admin_listen = "127.0.0.1:0".parse().unwrap();
        cfg
    }

    /// Dropping the gateway (no shutdown call) stops every task it started: listeners, the
    /// token refresher, the reload loop and its watcher.
    #[tokio::test]
    async fn dropping_the_gateway_stops_every_task() {
        let gateway = RunningGateway::start(config()).await.unwrap();
        let reload = spawn_reload(
            &gateway,
            PathBuf::from("x.toml"),
            Arc::new(crate::config::MapEnv::new()),
            vec![],
            CancellationToken::new(),
        );
        let core = gateway.core.clone();
        assert!(core.tasks.len() >= 4, "{}", core.tasks.len());
        drop(gateway);
        core.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), core.tasks.wait()).await.expect("every task stopped");
        assert!(reload.is_finished());
    }

    /// `shutdown` returns once every task has stopped; the proxy port no longer accepts.
    #[tokio::test]
    async fn shutdown_waits_for_every_task() {
        let gateway = RunningGateway::start(config()).await.unwrap();
        let (core, addr) = (gateway.core.clone(), gateway.proxy_addr);
        tokio::time::timeout(Duration::from_secs(5), gateway.shutdown()).await.expect("shutdown returns");
        assert!(core.tasks.is_empty());
        assert!(TcpListener::bind(addr).await.is_ok(), "the proxy port is free again");
    }

    /// A listener that fails for good stops the gateway without `shutdown_delay` (it serves
    /// nothing new): what `run` returns names the first reason, and every task has stopped.
    #[tokio::test]
    async fn a_fatal_failure_stops_the_gateway_with_its_reason() {
        let mut cfg = config();
        cfg.server.limits.shutdown_delay = Duration::from_secs(60);
        let gateway = RunningGateway::start(cfg).await.unwrap();
        let core = gateway.core.clone();
        core.fail("the proxy listener (127.0.0.1:1) failed: boom".into());
        core.fail("a later reason".into());
        let stopped = tokio::time::timeout(
            Duration::from_secs(5),
            serve_until_stopped(gateway, CancellationToken::new(), &mut StopSignals::never()),
        )
        .await
        .expect("stops at once");
        assert_eq!(stopped, Stopped::Fatal("the proxy listener (127.0.0.1:1) failed: boom".into()));
        assert!(core.tasks.is_empty(), "every task stopped");
    }

    /// A hurried graceful shutdown returns at once, even during a long `shutdown_delay`.
    #[tokio::test]
    async fn hurry_cuts_the_graceful_shutdown_short() {
        let mut cfg = config();
        cfg.server.limits.shutdown_delay = Duration::from_secs(60);
        let gateway = RunningGateway::start(cfg).await.unwrap();
        let hurry = CancellationToken::new();
        hurry.cancel();
        tokio::time::timeout(Duration::from_secs(2), gateway.graceful_shutdown(hurry)).await.expect("returns at once");
    }

    /// The reload loop alone: a [`Core`] without listeners, its config file in a temp dir.
    mod reload_loop {
        use super::*;
        use crate::config::MapEnv;

        const BASE: &str =
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n";

        struct Loop {
            core: Arc<Core>,
            path: PathBuf,
            triggers: mpsc::Sender<Trigger>,
            files: watch::Receiver<Vec<PathBuf>>,
            stop: CancellationToken,
            task: JoinHandle<()>,
            _dir: Dir,
        }

        impl Loop {
            fn start(name: &str) -> Self {
                let dir = std::env::temp_dir().join(format!("pg-app-{name}-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join("gateway.toml");
                std::fs::write(&path, BASE).unwrap();
                let env: Arc<dyn Environment> = Arc::new(MapEnv::new().with("PALETTE_API_KEY", "k-123"));
                let core = Arc::new(Core::new(config::load(&path, &*env).unwrap()).unwrap());
                let (triggers, triggers_rx) = mpsc::channel(1);
                let (files_tx, files) = watch::channel(Vec::new());
                let stop = CancellationToken::new();
                let task = tokio::spawn({
                    let (core, path, stop) = (core.clone(), path.clone(), stop.clone());
                    async move { reload_loop(&core, &path, env, triggers_rx, files_tx, &stop).await }
                });
                Loop { core, path, triggers, files, stop, task, _dir: Dir(dir) }
            }

            /// Writes the config file, triggers, and waits until the loop has handled it.
            async fn reload_with(&mut self, text: &str) {
                std::fs::write(&self.path, text).unwrap();
                self.files.mark_unchanged();
                self.triggers.send(Trigger::Changed).await.unwrap();
                tokio::time::timeout(Duration::from_secs(5), self.files.changed()).await.unwrap().unwrap();
            }

            fn reloads(&self, result: &str) -> u64 {
                self.core.metrics.config_reloads.with_label_values(&[result]).get()
            }
        }

        /// The loop's directory, removed on drop.
        struct Dir(PathBuf);

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }

        #[tokio::test]
        async fn an_invalid_config_keeps_the_old_runtime() {
            let mut l = Loop::start("invalid");
            let before = l.core.runtime.load_full();
            l.reload_with("[upstream]\nurl = 3\n").await;
            assert!(Arc::ptr_eq(&before, &l.core.runtime.load_full()), "the old runtime serves on");
            assert_eq!((l.reloads("error"), l.reloads("ok")), (1, 0));
            // The files were read all the same: the watcher's list is the live config's.
            assert_eq!(*l.files.borrow(), vec![l.path.clone()]);
        }

        #[tokio::test]
        async fn a_listener_change_keeps_the_old_runtime() {
            let mut l = Loop::start("listener");
            let before = l.core.runtime.load_full();
            l.reload_with(&format!("[server]\nlisten = \"127.0.0.1:8181\"\n{BASE}")).await;
            assert!(Arc::ptr_eq(&before, &l.core.runtime.load_full()));
            assert_eq!(l.reloads("error"), 1);
        }

        #[tokio::test]
        async fn a_valid_config_swaps_the_runtime() {
            let mut l = Loop::start("valid");
            let before = l.core.runtime.load_full();
            l.reload_with(&format!("{BASE}[upstream.limits]\nmax_wait = \"7s\"\n")).await;
            let after = l.core.runtime.load_full();
            assert!(!Arc::ptr_eq(&before, &after), "a new runtime");
            assert_eq!(after.config.upstream.limits.max_wait, Duration::from_secs(7));
            assert_eq!((l.reloads("error"), l.reloads("ok")), (0, 1));
            // An invalid one after it keeps the new one.
            l.reload_with("not toml [").await;
            assert!(Arc::ptr_eq(&after, &l.core.runtime.load_full()));
        }

        #[tokio::test]
        async fn the_loop_ends_on_stop_and_when_the_watcher_is_gone() {
            let Loop { stop, task, _dir, .. } = Loop::start("stop");
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();

            let Loop { triggers, task, _dir, .. } = Loop::start("gone");
            drop(triggers);
            tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        }
    }
}
