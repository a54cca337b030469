//! Upstream credentials at run time: API keys as ready headers, login credentials as token
//! managers. Built from a config snapshot; token managers carry over to a new snapshot whose
//! settings for them did not change, so a reload causes no new login.

pub mod key_check;
pub(crate) mod palette_auth;
pub mod token;

use std::sync::Arc;

use http::HeaderValue;

use crate::config::{Config, CredentialKind, Secret};
use crate::limit::upstream::Bucket;
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;
pub use key_check::{KeyCheck, KeyState};
pub use token::{Token, TokenManager, TokenUnavailable};

/// One credential, ready to apply.
#[derive(Debug, Clone)]
pub(crate) enum UpstreamCredential {
    /// `ApiKey: <key>`.
    ApiKey {
        /// The prepared, sensitive header value.
        header: HeaderValue,
        /// The key (to scrub from echoed errors).
        secret: Secret,
        /// Its start-up check (carried over on reload while the key and upstream are the same).
        check: Arc<KeyCheck>,
    },
    /// `Authorization: <token>`.
    Token(Arc<TokenManager>),
}

/// All credentials of a config, indexed like [`Config::credentials`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Credentials {
    items: Vec<(Arc<str>, UpstreamCredential)>,
}

/// Why a credential could not be prepared.
#[derive(Debug, thiserror::Error)]
#[error("credentials.{0}: the API key is not a valid header value")]
pub struct InvalidKey(String);

impl Credentials {
    /// Prepares every credential of `cfg`; token managers of `previous` with identical settings
    /// are reused (token and all). Logins and refreshes are paced through `auth_bucket`, the
    /// budget's bucket for `/v1/auth` (when it has one).
    pub(crate) fn build(
        cfg: &Config,
        client: &UpstreamClient,
        previous: Option<&Credentials>,
        metrics: &Metrics,
        auth_bucket: Option<&Arc<Bucket>>,
    ) -> Result<Self, InvalidKey> {
        let mut items = Vec::with_capacity(cfg.credentials.len());
        for c in &cfg.credentials {
            let cred = match &c.kind {
                CredentialKind::ApiKey(secret) => {
                    let mut header = HeaderValue::from_str(secret.expose()).map_err(|_| InvalidKey(c.name.clone()))?;
                    header.set_sensitive(true);
                    let check = previous
                        .and_then(|p| p.key_check(&c.name, secret))
                        .unwrap_or_else(|| Arc::new(KeyCheck::new(&c.name)));
                    UpstreamCredential::ApiKey { header, secret: secret.clone(), check }
                }
                CredentialKind::Token(settings) => {
                    let reused = previous.and_then(|p| p.token_manager(&c.name)).filter(|m| m.settings() == settings);
                    let manager = reused.unwrap_or_else(|| {
                        Arc::new(TokenManager::new(&c.name, settings.clone(), client.clone(), metrics.clone()))
                    });
                    manager.set_auth_bucket(auth_bucket.cloned());
                    UpstreamCredential::Token(manager)
                }
            };
            items.push((Arc::from(c.name.as_str()), cred));
        }
        Ok(Credentials { items })
    }

    /// The credential at `index`.
    pub(crate) fn get(&self, index: usize) -> Option<&UpstreamCredential> {
        self.items.get(index).map(|(_, c)| c)
    }

    /// Every token manager with its name.
    pub(crate) fn token_managers(&self) -> impl Iterator<Item = &Arc<TokenManager>> {
        self.items.iter().filter_map(|(_, c)| match c {
            UpstreamCredential::Token(m) => Some(m),
            UpstreamCredential::ApiKey { .. } => None,
        })
    }

    /// Every API key's check with the header it sends.
    pub(crate) fn key_checks(&self) -> impl Iterator<Item = (&Arc<KeyCheck>, &HeaderValue)> {
        self.items.iter().filter_map(|(_, c)| match c {
            UpstreamCredential::ApiKey { check, header, .. } => Some((check, header)),
            UpstreamCredential::Token(_) => None,
        })
    }

    /// Paces every API key check through `bucket` (the budget's bucket of the check's path).
    pub(crate) fn set_key_check_bucket(&self, bucket: Option<&Arc<Bucket>>) {
        for (check, _) in self.key_checks() {
            check.set_bucket(bucket.cloned());
        }
    }

    /// The check of API key credential `name`, if it holds the same key.
    fn key_check(&self, name: &str, key: &Secret) -> Option<Arc<KeyCheck>> {
        self.items.iter().find(|(n, _)| &**n == name).and_then(|(_, c)| match c {
            UpstreamCredential::ApiKey { check, secret, .. } if secret.expose() == key.expose() => Some(check.clone()),
            _ => None,
        })
    }

    fn token_manager(&self, name: &str) -> Option<Arc<TokenManager>> {
        self.items.iter().find(|(n, _)| &**n == name).and_then(|(_, c)| match c {
            UpstreamCredential::Token(m) => Some(m.clone()),
            UpstreamCredential::ApiKey { .. } => None,
        })
    }
}
