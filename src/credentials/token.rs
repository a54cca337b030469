//! A login credential's token: kept fresh by a background task, shared by every request, and
//! renewed single-flight when a request finds none (cold start) or Palette refused it.
//!
//! What a 401 on a token means (the rule [`Token::worth_replacing`] encodes): Palette answers
//! 401 both for a dead token (revoked, rotated) and for an endpoint that refuses this identity.
//! A token that replaced a refused one less than [`FRESH_REPLACEMENT`] ago is known to be fresh,
//! so a 401 on it is the endpoint's answer: it passes through and costs no login. Any other
//! token is replaced once (single-flight, the old one keeps serving every other request until
//! the new one is installed, so one client's 401s never take the token away from the others).
//! Every login is paced: at least [`LOGIN_SPACING`] apart per credential, further apart after
//! failures, and through the `/v1/auth` budget bucket when the budget has one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::palette_auth::{self, AuthCallError, IssuedToken};
use crate::config::{Secret, TokenSettings};
use crate::limit::upstream::Bucket;
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

/// After a failed renewal, requests fail fast for this long instead of each trying again.
const FAIL_FAST_WINDOW: Duration = Duration::from_secs(1);
/// Logins of one credential start at least this far apart, whoever asks (Palette limits
/// logins; a login storm would lock every client of the credential out).
pub const LOGIN_SPACING: Duration = Duration::from_secs(1);
/// A token minted because Palette refused the previous one is trusted this long: a 401 on it
/// is that endpoint's answer, not a dead token.
pub const FRESH_REPLACEMENT: Duration = Duration::from_secs(3);
/// How far Palette's clock may be behind the gateway's: a JWT whose `exp` is further in the
/// past than this is refused as expired.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);
/// The budget's client index for the gateway's own login and refresh calls.
const GATEWAY_ITSELF: crate::config::ClientId = crate::config::ClientId(usize::MAX);

/// A token in use.
#[derive(Debug)]
pub struct Token {
    /// The raw token.
    pub value: Secret,
    /// `Authorization: <token>`, built once, marked sensitive.
    pub header: HeaderValue,
    /// When it stops being sent (a little before it expires).
    usable_until: Instant,
    /// When the background task renews it (always before `usable_until`).
    refresh_at: Instant,
    /// Expiry as unix seconds (readiness and metrics).
    pub expires_unix: f64,
    /// Increases with every new token; a 401 names the generation it refutes.
    pub generation: u64,
    /// When it was installed.
    minted: Instant,
    /// Minted to replace a token Palette refused.
    replacement: bool,
}

impl Token {
    /// How long ago it was installed (the last renewal).
    pub fn age(&self) -> Duration {
        self.minted.elapsed()
    }

    /// Whether it may still be sent.
    pub fn is_usable(&self) -> bool {
        Instant::now() < self.usable_until
    }

    /// Whether a 401 on this token may mean it is dead, so that a new login is worth it: not
    /// when it is itself a replacement minted less than [`FRESH_REPLACEMENT`] ago.
    pub fn worth_replacing(&self) -> bool {
        !(self.replacement && self.minted.elapsed() < FRESH_REPLACEMENT)
    }

    /// A token minted now, for tests of code that uses tokens (the exchange's replay layer).
    #[cfg(test)]
    pub(crate) fn for_test(value: &str, generation: u64, replacement: bool) -> Self {
        let now = Instant::now();
        let mut header = HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""));
        header.set_sensitive(true);
        let hour = Duration::from_secs(3600);
        Token {
            value: Secret::new(value),
            header,
            usable_until: now + hour,
            refresh_at: now + hour,
            expires_unix: 0.0,
            generation,
            minted: now,
            replacement,
        }
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TokenUnavailable(pub String);

/// When logins may start again.
#[derive(Debug, Default)]
struct Pacing {
    /// The earliest start of the next login.
    next_login: Option<Instant>,
    /// Failed logins in a row.
    failures: u32,
}

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
    /// The generation a request saw refused without replaying (0: none); the background task
    /// replaces it.
    refused: AtomicU64,
    /// Wakes the background task.
    wake: Notify,
    pacing: Mutex<Pacing>,
    /// The budget bucket of `/v1/auth` (none when the budget has no rule for it).
    auth_bucket: ArcSwapOption<Bucket>,
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
            refused: AtomicU64::new(0),
            wake: Notify::new(),
            pacing: Mutex::new(Pacing::default()),
            auth_bucket: ArcSwapOption::empty(),
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

    /// Paces logins and refreshes through `bucket` (the budget's `/v1/auth` bucket) too.
    pub fn set_auth_bucket(&self, bucket: Option<Arc<Bucket>>) {
        self.auth_bucket.store(bucket);
    }

    /// The current usable token, if any, without waiting.
    pub fn current(&self) -> Option<Arc<Token>> {
        self.current.load_full().filter(|t| t.is_usable())
    }

    /// The last renewal error, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.as_ref().map(|(m, _)| m.clone()))
    }

    /// How long ago the last renewal failed, while the last attempt failed.
    pub fn last_error_age(&self) -> Option<Duration> {
        self.last_error.lock().ok().and_then(|e| e.as_ref().map(|(_, at)| at.elapsed()))
    }

    /// Successful logins and refreshes so far.
    pub fn renewals(&self) -> (u64, u64) {
        (self.logins.load(Ordering::Relaxed), self.refreshes.load(Ordering::Relaxed))
    }

    /// A usable token: the current one (steady state, no waiting) or, when there is none, the
    /// result of one shared login, waited for at most `within`.
    pub async fn get(&self, within: Duration) -> Result<Arc<Token>, TokenUnavailable> {
        if let Some(t) = self.current() {
            return Ok(t);
        }
        self.bounded(within, self.renew_shared(None)).await
    }

    /// Palette refused `token` on a request that can be replayed: a new token, shared with
    /// every request that saw the same refusal, waited for at most `within`. The refused token
    /// keeps serving other requests until the new one is installed.
    pub async fn replace(&self, token: &Token, within: Duration) -> Result<Arc<Token>, TokenUnavailable> {
        tracing::warn!(credential = %self.name, "upstream refused the token; logging in again");
        self.bounded(within, self.renew_shared(Some(token.generation))).await
    }

    /// Palette refused `token` on a request that cannot be replayed: the background task
    /// replaces it (paced like every login); nobody loses the current token meanwhile.
    pub fn replace_soon(&self, token: &Token) {
        tracing::warn!(credential = %self.name, "upstream refused the token; logging in again in the background");
        self.refused.store(token.generation, Ordering::Release);
        self.wake.notify_one();
    }

    async fn bounded(
        &self,
        within: Duration,
        renewal: impl std::future::Future<Output = Result<Arc<Token>, TokenUnavailable>>,
    ) -> Result<Arc<Token>, TokenUnavailable> {
        match tokio::time::timeout(within, renewal).await {
            Ok(result) => result,
            Err(_) => Err(TokenUnavailable(format!(
                "no token within {}: {}",
                humantime::format_duration(within),
                self.last_error().unwrap_or_else(|| "the login to Palette has not finished".into())
            ))),
        }
    }

    async fn renew_shared(&self, refuted: Option<u64>) -> Result<Arc<Token>, TokenUnavailable> {
        let seen = self.attempts.load(Ordering::Acquire);
        if self.failed_recently() {
            // Backing off after failures: answer now instead of queueing behind the pause.
            return Err(TokenUnavailable(self.last_error().unwrap_or_else(|| "login failed".into())));
        }
        let _guard = self.renew.lock().await;
        if let Some(t) = self.current().filter(|t| Some(t.generation) != refuted) {
            return Ok(t);
        }
        if self.attempts.load(Ordering::Acquire) != seen || self.failed_recently() {
            // A renewal failed while we waited, or just before: share its answer rather than
            // pile logins onto an upstream that is refusing them (the background task retries).
            return Err(TokenUnavailable(self.last_error().unwrap_or_else(|| "login failed".into())));
        }
        self.renew_locked(false, refuted.is_some()).await
    }

    /// The last renewal failed a moment ago, or logins are backing off after failures.
    fn failed_recently(&self) -> bool {
        let failed_at = self.last_error.lock().ok().and_then(|e| e.as_ref().map(|(_, at)| *at));
        let Some(at) = failed_at else {
            return false;
        };
        let p = self.pacing();
        at.elapsed() < FAIL_FAST_WINDOW || (p.failures > 0 && p.next_login.is_some_and(|n| n > Instant::now()))
    }

    /// Runs one renewal; the caller holds `renew`. `prefer_refresh` tries the refresh call first
    /// when the current token is still usable; `replacement` marks the new token as minted for
    /// a refused one.
    async fn renew_locked(&self, prefer_refresh: bool, replacement: bool) -> Result<Arc<Token>, TokenUnavailable> {
        let result = match self.current().filter(|_| prefer_refresh) {
            Some(t) => match self.refresh(&t.value).await {
                Ok(issued) => Ok(issued),
                Err(e) => {
                    tracing::warn!(credential = %self.name, error = %e, "token refresh failed; logging in again");
                    self.login().await
                }
            },
            None => self.login().await,
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        match result {
            Ok((issued, lifetime)) => {
                let token = self.install(issued, lifetime, replacement);
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

    /// Waits until a login may start (spacing, backoff after failures), then for the
    /// `/v1/auth` budget.
    async fn pace(&self, call: &'static str) -> Result<(), AuthCallError> {
        if call == "login" {
            let next = self.pacing().next_login;
            if let Some(at) = next {
                tokio::time::sleep_until(at).await;
            }
            // Counted from the start, so a login abandoned mid-call still spaces the next.
            let mut p = self.pacing();
            p.next_login = Some(p.next_login.unwrap_or_else(Instant::now).max(Instant::now() + LOGIN_SPACING));
        }
        if let Some(bucket) = self.auth_bucket.load_full() {
            let bound = self.client.request_timeout();
            bucket.acquire(GATEWAY_ITSELF, bound).await.map_err(|_| AuthCallError::Busy(call, bound))?;
        }
        Ok(())
    }

    fn pacing(&self) -> std::sync::MutexGuard<'_, Pacing> {
        self.pacing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn refresh(&self, current: &Secret) -> Result<(IssuedToken, Duration), AuthCallError> {
        self.pace("refresh").await?;
        let started = Instant::now();
        let result =
            palette_auth::refresh(&self.client, current).await.and_then(|i| self.checked(i, started, "refresh"));
        match &result {
            Ok(_) => {
                self.refreshes.fetch_add(1, Ordering::Relaxed);
                self.count("refresh", "ok");
                tracing::debug!(credential = %self.name, "token refreshed");
            }
            Err(e) => self.failed("refresh", e),
        }
        result
    }

    async fn login(&self) -> Result<(IssuedToken, Duration), AuthCallError> {
        self.pace("login").await?;
        let started = Instant::now();
        let result =
            palette_auth::login(&self.client, &self.settings).await.and_then(|i| self.checked(i, started, "login"));
        let mut p = self.pacing();
        match &result {
            Ok(_) => {
                p.failures = 0;
                drop(p);
                self.logins.fetch_add(1, Ordering::Relaxed);
                self.count("login", "ok");
                tracing::info!(credential = %self.name, "logged in to Palette");
            }
            Err(e) => {
                p.failures = p.failures.saturating_add(1);
                let later = Instant::now() + backoff(p.failures).max(LOGIN_SPACING);
                p.next_login = Some(p.next_login.map_or(later, |n| n.max(later)));
                drop(p);
                self.failed("login", e);
            }
        }
        result
    }

    fn failed(&self, kind: &'static str, e: &AuthCallError) {
        self.count(kind, "error");
        if matches!(e, AuthCallError::Expired(..)) {
            self.metrics.token_rejected.with_label_values(&[&self.name, e.reason()]).inc();
        }
        tracing::warn!(credential = %self.name, error = %e, reason = e.reason(), "{kind} failed");
    }

    /// The issued token's lifetime from now, or why it cannot be used.
    fn checked(
        &self,
        issued: IssuedToken,
        started: Instant,
        call: &'static str,
    ) -> Result<(IssuedToken, Duration), AuthCallError> {
        let configured = self.settings.token_lifetime.saturating_sub(started.elapsed());
        match lifetime(issued.exp, SystemTime::now(), configured) {
            Ok(life) => Ok((issued, life)),
            Err(ago) => Err(AuthCallError::Expired(call, ago.as_secs())),
        }
    }

    /// Stores a new token; see [`lifetime`] and [`schedule`] for its expiry and renewal.
    fn install(&self, issued: IssuedToken, lifetime: Duration, replacement: bool) -> Arc<Token> {
        let now = Instant::now();
        let (usable, refresh) = schedule(lifetime, self.settings.refresh_before);
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        // `palette_auth` only returns header-safe tokens, so this cannot fail in practice.
        let mut header = HeaderValue::from_str(issued.value.expose()).unwrap_or_else(|_| HeaderValue::from_static(""));
        header.set_sensitive(true);
        let expires_unix =
            (SystemTime::now() + lifetime).duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let token = Arc::new(Token {
            value: issued.value,
            header,
            usable_until: now + usable,
            refresh_at: now + refresh,
            expires_unix,
            generation,
            minted: now,
            replacement,
        });
        self.current.store(Some(token.clone()));
        self.metrics.token_expiry.with_label_values(&[&self.name]).set(expires_unix);
        token
    }

    /// The background task: logs in at once, refreshes when `refresh_before` is left, logs in
    /// again when refresh fails or a request saw the token refused, and is paced like every
    /// login while the upstream refuses. Ends as soon as `cancel` fires, even mid-call.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let now = Instant::now();
            let refused = self.refused.load(Ordering::Acquire);
            let wait = match self.current.load_full() {
                // After failures, wait out the logins' backoff here, not holding `renew`.
                _ if failures > 0 => {
                    self.pacing().next_login.map_or(Duration::ZERO, |n| n.saturating_duration_since(now))
                }
                // A refused token is replaced at once.
                Some(t) if t.generation == refused => Duration::ZERO,
                Some(t) => t.refresh_at.saturating_duration_since(now),
                None => Duration::ZERO,
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => {}
                }
            }
            if cancel.is_cancelled() {
                return;
            }
            let renewal = async {
                let _guard = self.renew.lock().await;
                let refused = self.refused.swap(0, Ordering::AcqRel);
                match self.current.load_full() {
                    Some(t) if t.generation == refused && t.worth_replacing() => {
                        self.renew_locked(false, true).await.map(|_| ())
                    }
                    // Someone renewed while we slept, or the token is not due yet.
                    Some(t) if t.is_usable() && Instant::now() < t.refresh_at => Ok(()),
                    _ => self.renew_locked(true, false).await.map(|_| ()),
                }
            };
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = renewal => outcome,
            };
            failures = match outcome {
                Ok(()) => 0,
                Err(_) => failures.saturating_add(1),
            };
        }
    }
}

/// A token's lifetime from now: the JWT's `exp` if present, never longer than the configured
/// lifetime (`configured`, what is left of it since the login started: Palette's tenant setting
/// may be shorter than ours, and renewing early never hurts). `Err` holds how long ago `exp`
/// passed when that is more than [`CLOCK_SKEW`]. An `exp` less than that in the past is taken
/// as a clock difference: the token is given what is left of the skew allowance.
fn lifetime(exp: Option<SystemTime>, now: SystemTime, configured: Duration) -> Result<Duration, Duration> {
    let Some(exp) = exp else {
        return Ok(configured);
    };
    let left = match exp.duration_since(now) {
        Ok(left) => left,
        Err(e) if e.duration() >= CLOCK_SKEW => return Err(e.duration()),
        Err(e) => CLOCK_SKEW - e.duration(),
    };
    Ok(left.min(configured))
}

/// When a token of `lifetime` stops being sent and when it is renewed, counted from its
/// install: it stops being sent a margin before it expires (10 % of its life, at most 5 s), so
/// none arrives expired, and it is renewed `refresh_before` ahead (at half its life if it lives
/// shorter than that), and always at least another margin before it stops being sent, so that
/// no request ever waits for a login because `refresh_before` was set below the margin.
fn schedule(lifetime: Duration, refresh_before: Duration) -> (Duration, Duration) {
    let margin = (lifetime / 10).min(Duration::from_secs(5));
    let usable = lifetime - margin;
    let lead = if refresh_before < lifetime { refresh_before } else { lifetime / 2 };
    let refresh = (lifetime - lead).min(usable.saturating_sub(margin));
    (usable, refresh)
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

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn renewal_always_comes_before_the_token_stops_being_sent() {
        // token_lifetime 10s, refresh_before 500ms: below the 1 s "stop sending" margin.
        let (usable, refresh) = schedule(secs(10.0), secs(0.5));
        assert_eq!(usable, secs(9.0));
        assert_eq!(refresh, secs(8.0), "renewed a margin before it stops being sent");
        // The usual settings are unchanged: 15m / 3m.
        assert_eq!(schedule(secs(900.0), secs(180.0)), (secs(895.0), secs(720.0)));
        // A token living shorter than refresh_before: half its life.
        assert_eq!(schedule(secs(60.0), secs(180.0)), (secs(55.0), secs(30.0)));
        for (life, before) in [(0.1, 0.0), (1.0, 0.9), (3.0, 1.0), (10.0, 9.9), (10.0, 0.001), (1e5, 1.0)] {
            let (usable, refresh) = schedule(secs(life), secs(before));
            assert!(refresh < usable || usable.is_zero(), "{life}/{before}: {refresh:?} !< {usable:?}");
        }
    }

    #[test]
    fn an_exp_in_the_past_is_refused_beyond_the_skew() {
        let now = UNIX_EPOCH + secs(2e9);
        let fifteen = secs(900.0);
        assert_eq!(lifetime(Some(now - secs(3600.0)), now, fifteen), Err(secs(3600.0)));
        assert_eq!(lifetime(Some(now - CLOCK_SKEW), now, fifteen), Err(CLOCK_SKEW));
        // Within the skew: a clock difference, not an expired token.
        assert_eq!(lifetime(Some(now - secs(10.0)), now, fifteen), Ok(CLOCK_SKEW - secs(10.0)));
        assert_eq!(lifetime(Some(now + secs(600.0)), now, fifteen), Ok(secs(600.0)));
        // An exp far out never keeps a token past the configured lifetime.
        assert_eq!(lifetime(Some(now + secs(86400.0)), now, fifteen), Ok(fifteen));
        assert_eq!(lifetime(None, now, fifteen), Ok(fifteen));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) <= Duration::from_millis(750));
        assert!(backoff(3) >= Duration::from_secs(1));
        for _ in 0..50 {
            assert!(backoff(30) <= Duration::from_secs(45));
        }
    }
}
