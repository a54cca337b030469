//! The process signals the gateway acts on: SIGTERM/SIGINT (stop) and SIGHUP (reload).

/// SIGTERM and SIGINT, registered once so that no signal is lost between two waits.
pub(crate) struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Registers the handlers (from now on the signals no longer kill the process).
    pub(crate) fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals { term: signal(SignalKind::terminate()).ok(), int: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Stop signals that never come (tests stop the gateway by other means).
    #[cfg(test)]
    pub(crate) fn never() -> Self {
        #[cfg(unix)]
        {
            StopSignals { term: None, int: None }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Resolves on the next SIGTERM or SIGINT (including one that arrived since the last call).
    pub(crate) async fn recv(&mut self) {
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

/// Resolves on SIGTERM or SIGINT (the demo's stop).
#[cfg(feature = "demo")]
pub(crate) async fn wait_for_signal() {
    StopSignals::new().recv().await;
}

/// SIGHUP, registered once (from then on it no longer kills the process).
#[cfg(unix)]
pub(crate) struct Hangup(Option<tokio::signal::unix::Signal>);
/// SIGHUP does not exist here: [`Hangup::recv`] never resolves.
#[cfg(not(unix))]
pub(crate) struct Hangup;

impl Hangup {
    /// Registers the handler.
    #[cfg(unix)]
    pub(crate) fn new() -> Self {
        Hangup(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok())
    }
    /// Nothing to register.
    #[cfg(not(unix))]
    pub(crate) fn new() -> Self {
        Hangup
    }

    /// A SIGHUP that never comes (tests drive the watcher by files alone).
    #[cfg(all(test, unix))]
    pub(crate) fn never() -> Self {
        Hangup(None)
    }
    /// A SIGHUP that never comes.
    #[cfg(all(test, not(unix)))]
    pub(crate) fn never() -> Self {
        Hangup
    }

    /// Resolves on the next SIGHUP.
    #[cfg(unix)]
    pub(crate) async fn recv(&mut self) {
        match &mut self.0 {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    /// Never resolves.
    #[cfg(not(unix))]
    pub(crate) async fn recv(&mut self) {
        std::future::pending().await
    }
}
