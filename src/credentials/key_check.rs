//! The start-up check of an API key credential: one cheap authenticated call
//! ([`CHECK_PATH`], the current user) tells a key Palette refuses (401/403: not ready, named in
//! `/readyz`) from one it takes (`/startup` may answer 200). The check answers once: an outage
//! while checking is retried, paced, until Palette answers; an outage later is not looked for,
//! so it never flips readiness.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{header, HeaderValue, Method, Request, StatusCode};
use tokio_util::sync::CancellationToken;

use crate::body;
use crate::limit::upstream::Bucket;
use crate::upstream::UpstreamClient;

/// `GET /v1/users/info`: the calling user, small, and allowed to every key that can log in.
pub const CHECK_PATH: &str = "/v1/users/info";
/// The budget's client index for the gateway's own calls (as for logins).
const GATEWAY_ITSELF: crate::config::ClientId = crate::config::ClientId(usize::MAX);
/// Its answer is small; only the status matters, the body is read (bounded) and dropped.
const MAX_BODY: usize = 64 * 1024;
/// First and longest pause between attempts while Palette cannot answer.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Where a key's check stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Not answered yet (Palette not reached so far; `last_error` says why).
    Pending,
    /// Palette took the key.
    Passed,
    /// Palette refused the key (401 or 403): it will not work until the config changes.
    Rejected(String),
}

/// One API key credential's check.
#[derive(Debug)]
pub struct KeyCheck {
    name: Arc<str>,
    state: Mutex<(KeyState, Option<String>)>,
    bucket: ArcSwapOption<Bucket>,
}

impl KeyCheck {
    /// A check not yet run.
    pub fn new(name: &str) -> Self {
        KeyCheck { name: Arc::from(name), state: Mutex::new((KeyState::Pending, None)), bucket: ArcSwapOption::empty() }
    }

    /// Paces the check through `bucket` (the budget's bucket of [`CHECK_PATH`]).
    pub fn set_bucket(&self, bucket: Option<Arc<Bucket>>) {
        self.bucket.store(bucket);
    }

    /// The credential's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the check stands.
    pub fn state(&self) -> KeyState {
        self.lock().0.clone()
    }

    /// Why the last attempt could not reach an answer (none once answered).
    pub fn last_error(&self) -> Option<String> {
        self.lock().1.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (KeyState, Option<String>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, state: KeyState, error: Option<String>) {
        *self.lock() = (state, error);
    }

    /// The background task: checks the key until Palette answers (paced: 1 s doubling to
    /// 60 s between attempts), then ends. Ends at once when `cancel` fires.
    pub async fn run(self: Arc<Self>, client: UpstreamClient, key: HeaderValue, cancel: CancellationToken) {
        let mut pause = FIRST_RETRY;
        loop {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                a = self.attempt(&client, &key) => a,
            };
            match attempt {
                Ok(status) if status.is_success() => {
                    tracing::info!(credential = %self.name, "Palette accepted the API key");
                    return self.set(KeyState::Passed, None);
                }
                Ok(status) if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
                    let why = format!("Palette refused the API key ({} on GET {CHECK_PATH})", status.as_u16());
                    tracing::error!(credential = %self.name, status = status.as_u16(), "Palette refused the API key; not ready");
                    return self.set(KeyState::Rejected(why), None);
                }
                Ok(status) => self.retry_later(format!("GET {CHECK_PATH} answered {}", status.as_u16()), pause),
                Err(e) => self.retry_later(e, pause),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(MAX_RETRY);
        }
    }

    fn retry_later(&self, error: String, pause: Duration) {
        tracing::warn!(credential = %self.name, error = %error, retry_in = %humantime::format_duration(pause), "cannot check the API key yet");
        self.set(KeyState::Pending, Some(error));
    }

    /// One call, head and body within the upstream's `request_timeout`.
    async fn attempt(&self, client: &UpstreamClient, key: &HeaderValue) -> Result<StatusCode, String> {
        let within = client.request_timeout();
        if let Some(bucket) = self.bucket.load_full() {
            bucket
                .acquire(GATEWAY_ITSELF, within)
                .await
                .map_err(|_| format!("the budget of {} has no room", bucket.label()))?;
        }
        let uri = client.uri(CHECK_PATH).map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header("apikey", key.clone())
            .header(header::ACCEPT, "application/json")
            // A one-off call: its connection is not kept in the pool for the clients.
            .header(header::CONNECTION, "close")
            .body(body::empty())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = client.send(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read to the end so the connection goes back to the pool; the content is not used.
            let _ = body::collect_limited(resp.into_body(), MAX_BODY).await;
            Ok(status)
        };
        tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(within)))?
    }
}
