//! `[auth.kubernetes]` and the clients' `service_accounts`: which ServiceAccount tokens are
//! local credentials, how they are checked, and which client each identity is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::limits::positive;
use crate::config::file::{RawConfig, RawKubernetes};
use crate::config::problems::Problems;
use crate::config::{tls, Environment, KubernetesAuth, KubernetesMode};

const IN_POD_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
const IN_POD_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
const DEFAULT_API_SERVER: &str = "https://kubernetes.default.svc";
const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// `[auth.kubernetes]`, if present.
pub(super) fn kubernetes(
    raw: &RawConfig,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<KubernetesAuth> {
    let k = raw.auth.kubernetes.as_ref()?;
    let before = p.count();
    if k.audiences.is_empty() {
        p.add("auth.kubernetes.audiences", "must list at least one audience (a token for any other is refused)");
    }
    for (i, a) in k.audiences.iter().enumerate() {
        if a.trim().is_empty() || a.len() > 256 {
            p.add(format!("auth.kubernetes.audiences[{i}]"), "must be 1-256 characters");
        }
    }
    let cache_ttl = positive(k.cache_ttl.unwrap_or(Duration::from_secs(60)), "auth.kubernetes.cache_ttl", p);
    let timeout = positive(k.timeout.unwrap_or(Duration::from_secs(5)), "auth.kubernetes.timeout", p);
    let ca_file = k.ca_file.clone().unwrap_or_else(|| PathBuf::from(IN_POD_CA));
    let roots = tls::ca_roots(&ca_file, "auth.kubernetes.ca_file", base, env, p);
    let mode = match k.mode.as_str() {
        "token_review" => token_review(k, env, p),
        "jwks" => jwks(k, p),
        other => {
            p.add("auth.kubernetes.mode", format!("{other:?} is not a mode: use \"token_review\" or \"jwks\""));
            None
        }
    };
    let token_file = match (&k.token_file, &mode) {
        (Some(f), _) => Some(super::super::problems::resolve(base, f)),
        (None, Some(KubernetesMode::TokenReview { .. })) => Some(PathBuf::from(IN_POD_TOKEN)),
        (None, _) => None,
    };
    if p.count() != before {
        return None;
    }
    Some(KubernetesAuth { audiences: k.audiences.clone(), cache_ttl, timeout, roots, token_file, mode: mode? })
}

fn token_review(k: &RawKubernetes, env: &dyn Environment, p: &mut Problems) -> Option<KubernetesMode> {
    for (set, key) in [(k.issuer.is_some(), "issuer"), (k.jwks_url.is_some(), "jwks_url")] {
        if set {
            p.add(format!("auth.kubernetes.{key}"), "only used with mode = \"jwks\"");
        }
    }
    let text = match &k.api_server {
        Some(url) => url.clone(),
        None => match (env.var("KUBERNETES_SERVICE_HOST"), env.var("KUBERNETES_SERVICE_PORT")) {
            (Some(host), port) => {
                let host = if host.contains(':') { format!("[{host}]") } else { host };
                format!("https://{host}:{}", port.unwrap_or_else(|| "443".into()))
            }
            (None, _) => DEFAULT_API_SERVER.into(),
        },
    };
    let api_server = https_url(&text, "auth.kubernetes.api_server", p)?;
    Some(KubernetesMode::TokenReview { api_server })
}

fn jwks(k: &RawKubernetes, p: &mut Problems) -> Option<KubernetesMode> {
    if k.api_server.is_some() {
        p.add("auth.kubernetes.api_server", "only used with mode = \"token_review\"");
    }
    let issuer = k.issuer.clone().unwrap_or_else(|| DEFAULT_ISSUER.into());
    // The issuer is compared exactly; it is fetched from only when there is no jwks_url.
    let discovery = https_url(&issuer, "auth.kubernetes.issuer", p);
    let jwks_url = match &k.jwks_url {
        Some(u) => Some(https_url(u, "auth.kubernetes.jwks_url", p)?),
        None => {
            discovery?;
            None
        }
    };
    Some(KubernetesMode::Jwks { issuer, jwks_url })
}

/// An `https://` URL: a bearer token (the caller's or the gateway's) never crosses plain HTTP.
fn https_url(text: &str, field: &str, p: &mut Problems) -> Option<http::Uri> {
    match text.parse::<http::Uri>() {
        Ok(u) if u.scheme_str() == Some("https") && u.authority().is_some() => Some(u),
        Ok(_) => {
            p.add(field, format!("{text:?} must be an https:// URL"));
            None
        }
        Err(e) => {
            p.add(field, format!("{text:?} is not a URL: {e}"));
            None
        }
    }
}

/// Every client's `service_accounts`, as `namespace/name` or `namespace/*` → client index. Each
/// identity belongs to one client: an entry used twice, or a name that a namespace wildcard of
/// another client also covers, is refused.
pub(super) fn service_account_index(raw: &RawConfig, p: &mut Problems) -> HashMap<String, usize> {
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, c) in raw.clients.iter().enumerate() {
        if !c.service_accounts.is_empty() && raw.auth.kubernetes.is_none() {
            p.add(format!("clients[{i}].service_accounts"), "needs [auth.kubernetes] to be set");
        }
        for (k, entry) in c.service_accounts.iter().enumerate() {
            let field = format!("clients[{i}].service_accounts[{k}]");
            if let Err(m) = check_entry(entry) {
                p.add(field, m);
                continue;
            }
            match index.get(entry.as_str()) {
                Some(&j) if j != i => p.add(
                    field,
                    format!("{entry:?} already belongs to clients[{j}] (each identity belongs to one client)"),
                ),
                Some(_) => p.add(field, format!("{entry:?} is listed twice")),
                None => {
                    index.insert(entry.clone(), i);
                }
            }
        }
    }
    for (entry, &i) in &index {
        let Some((ns, name)) = entry.split_once('/') else { continue };
        if name == "*" {
            continue;
        }
        if let Some(&j) = index.get(&format!("{ns}/*")) {
            if j != i {
                p.add(
                    format!("clients[{i}].service_accounts"),
                    format!(
                        "{entry:?} is also covered by \"{ns}/*\" of clients[{j}] (each identity belongs to one client)"
                    ),
                );
            }
        }
    }
    index
}

/// `namespace/name` or `namespace/*`, each part as Kubernetes allows it.
fn check_entry(entry: &str) -> Result<(), String> {
    let Some((ns, name)) = entry.split_once('/') else {
        return Err(format!("{entry:?} must be \"namespace/name\" or \"namespace/*\""));
    };
    if !dns_label(ns) {
        return Err(format!("{ns:?} is not a namespace (1-63 lowercase letters, digits, '-')"));
    }
    if name != "*" && !dns_subdomain(name) {
        return Err(format!(
            "{name:?} is not a ServiceAccount name (1-253 lowercase letters, digits, '-', '.') nor \"*\""
        ));
    }
    Ok(())
}

fn dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_subdomain(s: &str) -> bool {
    (1..=253).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{base, problems};

    fn ca() -> String {
        let dir = std::env::temp_dir().join(format!("pg-kube-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".to_string()]).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.cert.pem()).unwrap();
        path.display().to_string()
    }

    #[test]
    fn each_identity_belongs_to_one_client() {
        let text = format!(
            "{}[auth.kubernetes]\nmode = \"token_review\"\naudiences = [\"palette-gateway\"]\nca_file = \"{}\"\n\
             [[clients]]\nname = \"a\"\nservice_accounts = [\"ci/bot\", \"ci/bot\"]\n\
             [[clients]]\nname = \"b\"\nservice_accounts = [\"ci/*\", \"Bad/x\", \"ops\", \"reporting/report-bot\"]\n\
             [[clients]]\nname = \"c\"\nservice_accounts = [\"reporting/report-bot\"]\n",
            base(),
            ca()
        );
        let p = problems(&text);
        let has = |prefix: &str, part: &str| p.iter().any(|l| l.starts_with(prefix) && l.contains(part));
        assert!(has("clients[0].service_accounts[1]:", "listed twice"), "{p:?}");
        assert!(has("clients[1].service_accounts[1]:", "not a namespace"), "{p:?}");
        assert!(has("clients[1].service_accounts[2]:", "must be \"namespace/name\""), "{p:?}");
        assert!(has("clients[2].service_accounts[0]:", "already belongs to clients[1]"), "{p:?}");
        assert!(has("clients[0].service_accounts:", "also covered by \"ci/*\""), "{p:?}");
        assert_eq!(p.len(), 5, "{p:?}");
    }

    #[test]
    fn section_fields_are_checked() {
        let text = format!(
            "{}[auth.kubernetes]\nmode = \"token_review\"\naudiences = []\ncache_ttl = \"0s\"\nca_file = \"{}\"\n\
             api_server = \"http://10.0.0.1\"\nissuer = \"https://x\"\n",
            base(),
            ca()
        );
        let p = problems(&text);
        for want in [
            "auth.kubernetes.audiences: must list",
            "auth.kubernetes.cache_ttl: must be greater",
            "auth.kubernetes.api_server: \"http://10.0.0.1\" must be an https",
            "auth.kubernetes.issuer: only used with mode = \"jwks\"",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "{want}: {p:?}");
        }
        let p = problems(&format!(
            "{}[auth.kubernetes]\nmode = \"oidc\"\naudiences = [\"a\"]\nca_file = \"{}\"\n",
            base(),
            ca()
        ));
        assert!(p.iter().any(|l| l.starts_with("auth.kubernetes.mode: \"oidc\" is not a mode")), "{p:?}");
        let p = problems(&format!("{}[[clients]]\nname = \"a\"\nservice_accounts = [\"ci/bot\"]\n", base()));
        assert_eq!(p, vec!["clients[0].service_accounts: needs [auth.kubernetes] to be set".to_string()]);
    }
}
