//! A login credential's token: kept fresh by a background task, shared by every request, and
//! renewed single-flight when a request finds none (cold start, or after the upstream refused it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::palette_auth::{self, AuthCallError, IssuedToken};
use crate::config::{Secret, TokenSettings};
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

/// After a failed renewal, requests fail fast for this long instead of each trying again.
const FAIL_FAST_WINDOW: Duration = Duration::from_secs(1);

/// A token in use.
#[derive(Debug)]
pub struct Token {
    /// The raw token.
    pub value: Secret,
    /// `Authorization: <token>`, built once, marked sensitive.
    pub header: HeaderValue,
    /// When it stops being sent (a little before it expires).
    usable_until: Instant,
    /// When the background task renews it.
    refresh_at: Instant,
    /// Expiry as unix seconds (readiness and metrics).
    pub expires_unix: f64,
    /// Increases with every new token; a 401 names the generation it refutes.
    pub generation: u64,
}

impl Token {
    /// Whether it may still be sent.
    pub fn is_usable(&self) -> bool {
        Instant::now() < self.usable_until
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TokenUnavailable(pub String);

/// Owns one login credential's token.
pub struct TokenManager {
    name: Arc<str>,
    settings: TokenSettings,
    client: UpstreamClient,
    current: ArcSwapOption<Token>,
    /// Serializes logins/refreshes: waiters find the new token when they get the lock.
    renew: tokio::sync::Mutex<()>,
    /// Finished renewal attempts; lets a waiter tell that a renewal failed while it waited.
    attempts: AtomicU64,
    generation: AtomicU64,
    /// The last failed renewal's message and time.
    last_error: Mutex<Option<(String, Instant)>>,
    /// Wakes the background task when a token is dropped.
    dropped: Notify,
    logins: AtomicU64,
    refreshes: AtomicU64,
    metrics: Metrics,
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TokenManager {
    /// A manager with no token yet; [`TokenManager::run`] obtains one.
    pub fn new(name: &str, settings: TokenSettings, client: UpstreamClient, metrics: Metrics) -> Self {
        TokenManager {
            name: Arc::from(name),
            settings,
            client,
            current: ArcSwapOption::empty(),
            renew: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            last_error: Mutex::new(None),
            dropped: Notify::new(),
            logins: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            metrics,
        }
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The settings this manager was built with (a reload keeps the manager when they match).
    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The current usable token, if any, without waiting.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.current.load_full().filter(|t| t.is_usable())
    }

    /// The last renewal error, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.as_ref().map(|(m, _)| m.clone()))
    }

    /// Successful logins and refreshes so far.
    pub fn renewals(&self) -> (u64, u64) {
        (self.logins.load(Ordering::Relaxed), self.refreshes.load(Ordering::Relaxed))
    }

    /// A usable token: the current one (steady state, no waiting) or, when there is none, the
    /// result of one shared login.
    pub async fn get(&self) -> Result<Arc<Token>, TokenUnavailable> {
        if let Some(t) = self.current() {
            return Ok(t);
        }
        self.renew_shared(None).await
    }

    /// The upstream refused the token of `generation`: drop it (if still current) and get a
    /// fresh one, shared with every other request that saw the same refusal.
    pub async fn replace(&self, generation: u64) -> Result<Arc<Token>, TokenUnavailable> {
        self.invalidate(generation);
        self.renew_shared(Some(generation)).await
    }

    /// The upstream refused the token of `generation`: drop it if it is still current, so the
    /// next request (or the background task, woken now) gets a new one.
    pub fn invalidate(&self, generation: u64) {
        let current = self.current.load();
        if current.as_ref().is_some_and(|t| t.generation == generation) {
            self.current.compare_and_swap(&current, None);
            tracing::warn!(credential = %self.name, "upstream refused the token; logging in again");
            self.dropped.notify_one();
        }
    }

    async fn renew_shared(&self, refuted: Option<u64>) -> Result<Arc<Token>, TokenUnavailable> {
        let seen = self.attempts.load(Ordering::Acquire);
        let _guard = self.renew.lock().await;
        if let Some(t) = self.current().filter(|t| Some(t.generation) != refuted) {
            return Ok(t);
        }
        if self.attempts.load(Ordering::Acquire) != seen || self.failed_recently() {
            // A renewal failed while we waited, or just before: share its answer rather than
            // pile logins onto an upstream that is refusing them (the background task retries).
            return Err(TokenUnavailable(self.last_error().unwrap_or_else(|| "login failed".into())));
        }
        self.renew_locked(false).await
    }

    fn failed_recently(&self) -> bool {
        self.last_error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|(_, at)| at.elapsed() < FAIL_FAST_WINDOW))
            .unwrap_or(false)
    }

    /// Runs one renewal; the caller holds `renew`. `prefer_refresh` tries the refresh call first
    /// when the current token is still usable.
    async fn renew_locked(&self, prefer_refresh: bool) -> Result<Arc<Token>, TokenUnavailable> {
        let started = Instant::now();
        let result = match self.current().filter(|_| prefer_refresh) {
            Some(t) => match palette_auth::refresh(&self.client, &t.value).await {
                Ok(issued) => {
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    self.count("refresh", "ok");
                    tracing::debug!(credential = %self.name, "token refreshed");
                    Ok(issued)
                }
                Err(e) => {
                    self.count("refresh", "error");
                    tracing::warn!(credential = %self.name, error = %e, "token refresh failed; logging in again");
                    self.login().await
                }
            },
            None => self.login().await,
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok(issued) => {
                let token = self.install(issued, started);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                Ok(token)
            }
            Err(e) => {
                let msg = e.to_string();
                if let Ok(mut last) = self.last_error.lock() {
                    *last = Some((msg.clone(), Instant::now()));
                }
                Err(TokenUnavailable(msg))
            }
        }
    }

    fn count(&self, kind: &str, result: &str) {
        self.metrics.token_renewals.with_label_values(&[&self.name, kind, result]).inc();
    }

    async fn login(&self) -> Result<IssuedToken, AuthCallError> {
        let issued = palette_auth::login(&self.client, &self.settings).await;
        match &issued {
            Ok(_) => {
                self.logins.fetch_add(1, Ordering::Relaxed);
                self.count("login", "ok");
                tracing::info!(credential = %self.name, "logged in to Palette");
            }
            Err(e) => {
                self.count("login", "error");
                tracing::warn!(credential = %self.name, error = %e, "login failed");
            }
        }
        issued
    }

    /// Stores a new token; its expiry is the JWT's `exp` if present, else `started` + lifetime.
    fn install(&self, issued: IssuedToken, started: Instant) -> Arc<Token> {
        let now = SystemTime::now();
        let lifetime = issued
            .exp
            .and_then(|exp| exp.duration_since(now).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or_else(|| self.settings.token_lifetime.saturating_sub(started.elapsed()));
        let expires_at = Instant::now() + lifetime;
        // Refresh `refresh_before` ahead; a token shorter-lived than that (a tenant setting)
        // is refreshed at half its life instead.
        let lead = if self.settings.refresh_before < lifetime { self.settings.refresh_before } else { lifetime / 2 };
        // Stop sending a token slightly before it expires, so none arrives expired.
        let margin = (lifetime / 10).min(Duration::from_secs(5));
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // `palette_auth` only returns header-safe tokens, so this cannot fail in practice.
        let mut header = HeaderValue::from_str(issued.value.expose()).unwrap_or_else(|_| HeaderValue::from_static(""));
        header.set_sensitive(true);
        let expires_unix = (now + lifetime).duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let token = Arc::new(Token {
            value: issued.value,
            header,
            usable_until: expires_at - margin,
            refresh_at: expires_at - lead,
            expires_unix,
            generation,
        });
        self.current.store(Some(token.clone()));
        self.metrics.token_expiry.with_label_values(&[&self.name]).set(expires_unix);
        token
    }

    /// The background task: logs in at once, refreshes when `refresh_before` is left, logs in
    /// again when refresh fails, and backs off with jitter while the upstream refuses. Ends when
    /// `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let now = Instant::now();
            let wait = if failures > 0 {
                backoff(failures)
            } else {
                self.current.load_full().map_or(Duration::ZERO, |t| t.refresh_at.saturating_duration_since(now))
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.dropped.notified() => {}
                }
            }
            if cancel.is_cancelled() {
                return;
            }
            let outcome = {
                let _guard = self.renew.lock().await;
                match self.current.load_full() {
                    // Someone renewed while we slept, or the token is not due yet.
                    Some(t) if t.is_usable() && Instant::now() < t.refresh_at => Ok(()),
                    _ => self.renew_locked(true).await.map(|_| ()),
                }
            };
            failures = match outcome {
                Ok(()) => 0,
                Err(_) => failures.saturating_add(1),
            };
        }
    }
}

/// Jittered exponential backoff: ~0.5s, 1s, 2s … capped near 30s, ±50%.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1u32 << failures.min(6).saturating_sub(1))
        .min(Duration::from_secs(30));
    base.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(750));
        assert!(backoff(3) >= Duration::from_secs(1));
        for _ in 0..50 {
            assert!(backoff(30) <= Duration::from_secs(45));
        }
    }
}
