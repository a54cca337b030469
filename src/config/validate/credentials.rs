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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{base, env, problems, scratch};
    use crate::config::{load_str, MapEnv};

    #[test]
    fn literal_secrets_are_refused() {
        let p = problems("[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key = \"abc\"\n");
        assert!(p.iter().any(|l| l.starts_with("credentials.default.api_key: a literal secret")), "{p:?}");
        let p = problems(&format!("{}[credentials.ops]\nemail = \"a@b\"\npassword = \"x\"\n", base()));
        assert!(p.iter().any(|l| l.starts_with("credentials.ops.password: a literal secret")), "{p:?}");
    }

    #[test]
    fn missing_env_and_file_are_named() {
        let p = problems("[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"NOPE\"\n[credentials.f]\napi_key_file = \"/nonexistent/key\"\n");
        assert!(
            p.contains(&"credentials.default.api_key_env: environment variable NOPE is not set".to_string()),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.starts_with("credentials.f.api_key_file: cannot read /nonexistent/key")), "{p:?}");
    }

    #[test]
    fn secret_files_are_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("pg-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "  file-key\n").unwrap();
        let cfg = load_str(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_file = \"key\"\n",
            &dir,
            &env(),
        )
        .unwrap();
        assert_eq!(
            cfg.credentials[0].kind,
            crate::config::CredentialKind::ApiKey(crate::config::Secret::new("file-key"))
        );
    }

    #[test]
    fn refresh_before_must_be_shorter_than_lifetime() {
        let p = problems(&format!("{}[credentials.ops]\nemail = \"a@b\"\npassword_env = \"PALETTE_PASSWORD\"\ntoken_lifetime = \"1m\"\nrefresh_before = \"2m\"\n", base()));
        assert!(p.iter().any(|l| l.starts_with("credentials.ops.refresh_before:")), "{p:?}");
    }

    fn key_file_problems(dir: &Path) -> Vec<String> {
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_file = \"key\"\n";
        match load_str(text, dir, &env()) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        }
    }

    #[test]
    fn api_keys_with_inner_newline_nul_or_non_ascii_are_refused() {
        let dir = scratch("inner");
        for bad in ["k-1\nk-2", "k-1\0k-2", "k-1\rk", "k-\u{e9}"] {
            std::fs::write(dir.join("key"), format!("{bad}\n")).unwrap();
            let p = key_file_problems(&dir);
            assert!(p.len() == 1 && p[0].starts_with("credentials.default.api_key_file:"), "{bad:?}: {p:?}");
            let p = match load_str(&base(), Path::new("."), &MapEnv::new().with("PALETTE_API_KEY", bad)) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems(),
            };
            assert!(p.len() == 1 && p[0].starts_with("credentials.default.api_key_env:"), "{bad:?}: {p:?}");
        }
    }

    #[test]
    fn a_leading_bom_is_not_part_of_the_secret() {
        let dir = scratch("bom");
        std::fs::write(dir.join("key"), "\u{feff}file-key\r\n").unwrap();
        let cfg = load_str(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_file = \"key\"\n",
            &dir,
            &env(),
        )
        .unwrap();
        assert_eq!(
            cfg.credentials[0].kind,
            crate::config::CredentialKind::ApiKey(crate::config::Secret::new("file-key"))
        );
    }

    #[test]
    fn fifo_device_and_oversized_files_are_refused_without_hanging() {
        let dir = scratch("fifo");
        let fifo = dir.join("key");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
        if made {
            // Nobody ever writes the FIFO: a blocking open or read would hang this thread.
            let (tx, rx) = std::sync::mpsc::channel();
            let d = dir.clone();
            std::thread::spawn(move || {
                let _ = tx.send(key_file_problems(&d));
            });
            let p = rx.recv_timeout(std::time::Duration::from_secs(5)).expect("reading a FIFO secret hangs");
            assert!(p.len() == 1 && p[0].contains("not a regular file"), "{p:?}");
            std::fs::remove_file(&fifo).unwrap();
        }
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\nca_file = \"/dev/zero\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n";
        let p = problems(text);
        assert!(p.len() == 1 && p[0].starts_with("upstream.ca_file:") && p[0].contains("not a regular file"), "{p:?}");
        std::fs::write(&fifo, vec![b'k'; 2 * 1024 * 1024]).unwrap();
        let p = key_file_problems(&dir);
        assert!(p.len() == 1 && p[0].contains("larger than 1048576 bytes"), "{p:?}");
        std::fs::write(&fifo, vec![b'k'; 100 * 1024]).unwrap();
        let p = key_file_problems(&dir);
        assert!(p.len() == 1 && p[0].contains("more than 65536 bytes"), "{p:?}");
        let e = crate::config::load(&dir.join("missing.toml"), &env()).unwrap_err();
        assert!(e.to_string().contains("cannot read config file"), "{e}");
        let e = crate::config::load(&dir, &env()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
