//! Kubernetes ServiceAccount tokens as local credentials (`[auth.kubernetes]`): a tool pod sends
//! its projected token as `Authorization: Bearer <jwt>`, and this module says which
//! ServiceAccount (`namespace/name`) it is, by asking the API server (`review`: TokenReview,
//! cached) or by verifying the JWT against the issuer's key set (`jwks`). Process-lifetime
//! state (the review cache, the key set) is carried across reloads while the section is
//! unchanged; which client an identity is stays with the config snapshot.
//!
//! Tokens never leave this module except to the API server: no log line, error message or
//! metric label carries one; cache entries are keyed by the token's SHA-256.

mod api;
mod jwks;
mod review;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{KubernetesAuth, KubernetesMode};
use crate::metrics::Metrics;
use crate::runtime::SharedRuntime;

/// How often the key set is fetched again, unasked (`jwks` mode).
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Largest token considered (a projected token is about 1 KiB).
const MAX_TOKEN: usize = 16 * 1024;

/// A ServiceAccount: what a token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Identity {
    /// From `system:serviceaccount:NS:NAME`, the username Kubernetes gives a ServiceAccount.
    fn from_username(username: &str) -> Option<Identity> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (ns, name) = rest.split_once(':')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains(':'))
            .then(|| Identity { namespace: ns.to_string(), name: name.to_string() })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a token did not give an identity.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    /// The token is bad, expired, for another audience or issuer, or not a ServiceAccount's:
    /// the caller's fault (401). The message says why, never what the token is.
    #[error("{0}")]
    Refused(String),
    /// The API server or key set cannot be had now (503): not the caller's fault.
    #[error("{0}")]
    Unavailable(String),
}

/// Whether a bearer credential is shaped like a JWT (`eyJ….….…`: three base64url segments, the
/// header a JSON object, the signature possibly empty as in `alg: none`), and so goes to
/// Kubernetes auth rather than the local keys. Local keys never start with a JSON header.
pub fn looks_like_jwt(token: &str) -> bool {
    let b64 = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => {
            h.starts_with("eyJ") && !p.is_empty() && b64(h) && b64(p) && b64(s) && token.len() <= MAX_TOKEN
        }
        _ => false,
    }
}

/// What the payload says before anything is verified: used only to refuse early (a token past
/// its `exp`, or for none of our audiences) and to bound how long a review is cached, never to
/// accept.
#[derive(Debug, Default, Deserialize)]
struct Unverified {
    exp: Option<f64>,
    aud: Option<Audience>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Unverified {
    fn of(token: &str) -> Result<Unverified, KubeError> {
        let payload = token.split('.').nth(1).unwrap_or_default();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| KubeError::Refused("the token's payload is not base64url".into()))?;
        serde_json::from_slice(&bytes)
            .map_err(|_| KubeError::Refused("the token's payload is not a JSON claims set".into()))
    }

    /// Refuses a token that is already past `exp` (with `skew`) or names none of `audiences`.
    fn precheck(&self, audiences: &[String], now: f64, skew: f64) -> Result<(), KubeError> {
        if self.exp.is_some_and(|exp| exp + skew < now) {
            return Err(KubeError::Refused("the token has expired".into()));
        }
        let ours = |a: &String| audiences.contains(a);
        let matches = match &self.aud {
            Some(Audience::One(a)) => ours(a),
            Some(Audience::Many(list)) => list.iter().any(ours),
            None => false,
        };
        if !matches {
            return Err(KubeError::Refused(format!(
                "the token is not for this gateway's audience ({})",
                audiences.join(", ")
            )));
        }
        Ok(())
    }
}

/// Seconds since the epoch (JWT times are wall-clock).
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Checks ServiceAccount tokens, one way or the other.
pub struct Kubernetes {
    settings: KubernetesAuth,
    check: Check,
}

enum Check {
    Review(review::TokenReview),
    Jwks(jwks::Jwks),
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.check {
            Check::Review(_) => "token_review",
            Check::Jwks(_) => "jwks",
        };
        f.debug_struct("Kubernetes").field("mode", &mode).finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// The checker for `cfg`; `previous` (a reload) is kept, cache and key set and all, when its
    /// settings are the same.
    pub(crate) fn build(
        cfg: &KubernetesAuth,
        previous: Option<&Arc<Kubernetes>>,
        metrics: &Metrics,
    ) -> Arc<Kubernetes> {
        if let Some(p) = previous.filter(|p| &p.settings == cfg) {
            return p.clone();
        }
        let api = api::ApiClient::new(cfg);
        let check = match &cfg.mode {
            KubernetesMode::TokenReview { api_server } => {
                Check::Review(review::TokenReview::new(api, api_server, cfg, metrics))
            }
            KubernetesMode::Jwks { issuer, jwks_url } => {
                Check::Jwks(jwks::Jwks::new(api, issuer.clone(), jwks_url.clone(), cfg.audiences.clone()))
            }
        };
        Arc::new(Kubernetes { settings: cfg.clone(), check })
    }

    /// The ServiceAccount `token` proves; `peer` is the caller's address (token_review mode
    /// limits how many refused tokens one address gets reviewed).
    pub async fn authenticate(&self, token: &str, peer: IpAddr) -> Result<Identity, KubeError> {
        match &self.check {
            Check::Review(r) => r.authenticate(token, peer).await,
            Check::Jwks(j) => j.authenticate(token).await,
        }
    }

    /// Fetches the key set again (`jwks` mode; nothing otherwise).
    pub async fn refresh_keys(&self) {
        if let Check::Jwks(j) = &self.check {
            if let Err(e) = j.refresh().await {
                tracing::warn!(error = %e, "cannot fetch the Kubernetes key set; the previous one stays in use");
            }
        }
    }
}

/// Fetches the live runtime's key set at start and every [`JWKS_REFRESH`], until `cancel`.
pub async fn refresh_loop(runtime: SharedRuntime, cancel: CancellationToken) {
    loop {
        let kube = runtime.load().kubernetes.clone();
        if let Some(k) = kube {
            tokio::select! {
                () = k.refresh_keys() => {}
                () = cancel.cancelled() => return,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(JWKS_REFRESH) => {}
            () = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        for not in ["pgw_ci-local-key", "a.b.c", "eyJ.x", "eyJa.b.c.d", "eyJa..c", "eyJa.b+.c", ""] {
            assert!(!looks_like_jwt(not), "{not}");
        }
    }

    #[test]
    fn usernames() {
        let id = Identity::from_username("system:serviceaccount:ci:bot").unwrap();
        assert_eq!(id.to_string(), "ci/bot");
        for bad in ["system:serviceaccount:ci", "system:serviceaccount::bot", "admin", "system:serviceaccount:a:b:c"] {
            assert!(Identity::from_username(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn precheck_refuses_expired_and_foreign() {
        let ours = vec!["palette-gateway".to_string()];
        let u = |exp: f64, aud: &str| Unverified { exp: Some(exp), aud: Some(Audience::One(aud.into())) };
        assert!(u(1000.0, "palette-gateway").precheck(&ours, 900.0, 30.0).is_ok());
        assert!(u(1000.0, "palette-gateway").precheck(&ours, 1031.0, 30.0).is_err());
        assert!(u(1000.0, "vault").precheck(&ours, 900.0, 30.0).is_err());
        let many = Unverified { exp: None, aud: Some(Audience::Many(vec!["x".into(), "palette-gateway".into()])) };
        assert!(many.precheck(&ours, 0.0, 30.0).is_ok());
    }
}
