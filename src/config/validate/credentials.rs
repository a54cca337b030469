//! `[credentials.NAME]`: the upstream credentials, API keys and logins, with their secrets resolved.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::limits::positive;
use super::valid_name;
use crate::config::file::RawCredential;
use crate::config::problems::Problems;
use crate::config::secret::resolve_secret;
use crate::config::{Credential, CredentialKind, Environment, Secret, TokenSettings};

/// An API key is sent as the `ApiKey` header: refused here, by the same test start-up applies,
/// so `check` fails exactly when the gateway would.
fn header_safe(key: Secret, field: &str, p: &mut Problems) -> Option<Secret> {
    let visible = key.expose().bytes().all(|b| b.is_ascii_graphic());
    if !visible || http::HeaderValue::from_str(key.expose()).is_err() {
        p.add(field, "the API key must be visible ASCII, without spaces (it is sent as the ApiKey header)");
        return None;
    }
    Some(key)
}

pub(super) fn credentials(
    raw: &BTreeMap<String, RawCredential>,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Vec<Credential> {
    let mut out = Vec::new();
    for (name, c) in raw {
        let field = format!("credentials.{name}");
        if !valid_name(name) {
            p.add(&field, "name must be 1-64 characters of letters, digits, '-', '_', '.'");
        }
        if c.api_key.is_some() {
            p.add(
                format!("{field}.api_key"),
                "a literal secret is not allowed in the config: use api_key_env or api_key_file",
            );
        }
        if c.password.is_some() {
            p.add(
                format!("{field}.password"),
                "a literal secret is not allowed in the config: use password_env or password_file",
            );
        }
        let is_key = c.api_key_env.is_some() || c.api_key_file.is_some() || c.api_key.is_some();
        let is_login = c.email.is_some()
            || c.email_env.is_some()
            || c.email_file.is_some()
            || c.password_env.is_some()
            || c.password_file.is_some()
            || c.password.is_some();
        let kind = match (is_key, is_login) {
            (true, true) => {
                p.add(
                    &field,
                    "is both an API key and a login: give api_key_env/api_key_file, or email + password, not both",
                );
                None
            }
            (false, false) => {
                p.add(&field, "needs api_key_env or api_key_file, or email (email_env, email_file) and password_env or password_file");
                None
            }
            (true, false) => {
                for (k, set) in [
                    ("org", c.org.is_some()),
                    ("token_lifetime", c.token_lifetime.is_some()),
                    ("refresh_before", c.refresh_before.is_some()),
                ] {
                    if set {
                        p.add(format!("{field}.{k}"), "only applies to a login (email + password) credential");
                    }
                }
                resolve_secret(
                    &format!("{field}.api_key"),
                    None,
                    c.api_key_env.as_deref(),
                    c.api_key_file.as_deref(),
                    base,
                    env,
                    p,
                )
                .and_then(|key| {
                    let source = if c.api_key_env.is_some() { "api_key_env" } else { "api_key_file" };
                    header_safe(key, &format!("{field}.{source}"), p)
                })
                .map(CredentialKind::ApiKey)
            }
            (false, true) => {
                let email = resolve_secret(
                    &format!("{field}.email"),
                    c.email.as_deref(),
                    c.email_env.as_deref(),
                    c.email_file.as_deref(),
                    base,
                    env,
                    p,
                );
                let password = resolve_secret(
                    &format!("{field}.password"),
                    None,
                    c.password_env.as_deref(),
                    c.password_file.as_deref(),
                    base,
                    env,
                    p,
                );
                if email.is_none() && c.email.is_none() && c.email_env.is_none() && c.email_file.is_none() {
                    p.add(format!("{field}.email"), "a login credential needs email, email_env or email_file");
                }
                if password.is_none() && c.password_env.is_none() && c.password_file.is_none() && c.password.is_none() {
                    p.add(format!("{field}.password_env"), "a login credential needs password_env or password_file");
                }
                let token_lifetime = positive(
                    c.token_lifetime.unwrap_or(Duration::from_secs(15 * 60)),
                    &format!("{field}.token_lifetime"),
                    p,
                );
                let refresh_before = c.refresh_before.unwrap_or(Duration::from_secs(3 * 60));
                if refresh_before >= token_lifetime {
                    p.add(
                        format!("{field}.refresh_before"),
                        format!("must be shorter than token_lifetime ({})", humantime::format_duration(token_lifetime)),
                    );
                }
                match (email, password) {
                    (Some(email), Some(password)) => Some(CredentialKind::Token(TokenSettings {
                        email,
                        password,
                        org: c.org.clone(),
                        token_lifetime,
                        refresh_before,
                    })),
                    _ => None,
                }
            }
        };
        if let Some(kind) = kind {
            out.push(Credential { name: name.clone(), kind });
        }
    }
    out
}
