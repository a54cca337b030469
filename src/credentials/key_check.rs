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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An upstream answering the n-th request with `statuses[n]` (the last one thereafter),
    /// and the requests it saw.
    async fn upstream(statuses: &'static [u16]) -> (UpstreamClient, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let n = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let len = s.read(&mut buf).await.unwrap_or(0);
                record.lock().unwrap().push(String::from_utf8_lossy(&buf[..len]).into_owned());
                let i = n.fetch_add(1, Ordering::SeqCst).min(statuses.len() - 1);
                let answer =
                    format!("HTTP/1.1 {} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}", statuses[i]);
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let text = format!("[upstream]\nurl = \"http://{addr}\"\n[credentials.default]\napi_key_env = \"K\"\n");
        let env = crate::config::MapEnv::new().with("K", "k-1");
        let cfg = crate::config::load_str(&text, std::path::Path::new("."), &env).unwrap();
        (UpstreamClient::new(&cfg.upstream), seen)
    }

    async fn run(statuses: &'static [u16]) -> (Arc<KeyCheck>, Vec<String>) {
        let (client, seen) = upstream(statuses).await;
        let check = Arc::new(KeyCheck::new("default"));
        let key = HeaderValue::from_static("k-1");
        tokio::time::timeout(Duration::from_secs(10), check.clone().run(client, key, CancellationToken::new()))
            .await
            .expect("the check ends once Palette answers");
        let seen = seen.lock().unwrap().clone();
        (check, seen)
    }

    /// 403 (some Palettes and mocks answer it for a bad key) refuses the key, after one call
    /// to the check path with the key.
    #[tokio::test]
    async fn forbidden_refuses_the_key() {
        let (check, seen) = run(&[403]).await;
        assert!(matches!(check.state(), KeyState::Rejected(why) if why.contains("403")), "{:?}", check.state());
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("GET /v1/users/info HTTP/1.1\r\n"), "{}", seen[0]);
        assert!(seen[0].to_ascii_lowercase().contains("apikey: k-1\r\n"), "{}", seen[0]);
    }

    /// A 503 is no verdict: the check is retried (after its pause) until Palette answers.
    #[tokio::test]
    async fn an_outage_is_retried_until_palette_answers() {
        let (check, seen) = run(&[503, 200]).await;
        assert_eq!(check.state(), KeyState::Passed);
        assert_eq!(check.last_error(), None);
        assert_eq!(seen.len(), 2);
    }
}
