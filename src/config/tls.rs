//! TLS material from the config, built at load so that a bad certificate is a problem named by
//! its field (what `check` prints), never a start-up failure: the server's rustls config (with
//! client verification for mTLS) and the extra roots the upstream client trusts.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::file::RawServerTls;
use super::problems::Problems;
use super::{Environment, ServerTls};

/// Every certificate in a PEM text (other sections are skipped), at least one.
fn pem_certs(text: &str, field: &str, p: &mut Problems) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            p.add(field, "no PEM certificate found");
            None
        }
        Err(e) => {
            p.add(field, format!("invalid PEM: {}", pem_error(&e)));
            None
        }
    }
}

/// A PEM error in words: pki-types prints a missing end marker as a list of bytes.
fn pem_error(e: &pem::Error) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned();
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!("section end {:?} missing", text(end_marker)),
        pem::Error::IllegalSectionStart { line } => format!("malformed section start {:?}", text(line)),
        other => other.to_string(),
    }
}

pub(super) fn server_tls(t: &RawServerTls, base: &Path, env: &dyn Environment, p: &mut Problems) -> Option<ServerTls> {
    let certs = p
        .read_file(env, base, &t.cert_file, "server.tls.cert_file")
        .and_then(|s| pem_certs(&s, "server.tls.cert_file", p));
    let key: Option<PrivateKeyDer<'static>> =
        p.read_file(env, base, &t.key_file, "server.tls.key_file").and_then(|s| {
            match PrivateKeyDer::from_pem_slice(s.as_bytes()) {
                Ok(k) => Some(k),
                Err(pem::Error::NoItemsFound) => {
                    p.add("server.tls.key_file", "no PEM private key found");
                    None
                }
                Err(e) => {
                    p.add("server.tls.key_file", format!("invalid PEM: {}", pem_error(&e)));
                    None
                }
            }
        });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        match rustls::ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions() {
            Ok(b) => b,
            Err(e) => {
                p.add("server.tls", e.to_string());
                return None;
            }
        };
    let (builder, mtls) = match &t.client_ca_file {
        Some(ca) => {
            let cas = p
                .read_file(env, base, ca, "server.tls.client_ca_file")
                .and_then(|s| pem_certs(&s, "server.tls.client_ca_file", p))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in cas {
                if let Err(e) = roots.add(c) {
                    p.add("server.tls.client_ca_file", format!("unusable CA certificate: {e}"));
                }
            }
            match rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build() {
                Ok(v) => (builder.with_client_cert_verifier(v), true),
                Err(e) => {
                    p.add("server.tls.client_ca_file", e.to_string());
                    return None;
                }
            }
        }
        None => (builder.with_no_client_auth(), false),
    };
    let mut config = match builder.with_single_cert(certs?, key?) {
        Ok(c) => c,
        Err(e) => {
            p.add("server.tls", format!("certificate and key do not form a usable pair: {e}"));
            return None;
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Some(ServerTls { config: Arc::new(config), mtls })
}

/// `upstream.ca_file`: extra roots for the upstream client, each checked here so that one it
/// could not use is named rather than skipped silently there.
pub(super) fn upstream_roots(
    ca_file: Option<&Path>,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Vec<CertificateDer<'static>> {
    let extra_roots = match ca_file {
        Some(f) => p
            .read_file(env, base, f, "upstream.ca_file")
            .and_then(|s| pem_certs(&s, "upstream.ca_file", p))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    for cert in &extra_roots {
        if let Err(e) = rustls::RootCertStore::empty().add(cert.clone()) {
            p.add("upstream.ca_file", format!("unusable CA certificate: {e}"));
        }
    }
    extra_roots
}

/// The roots of a CA file that alone is trusted (`auth.kubernetes.ca_file`: the cluster's CA).
pub(super) fn ca_roots(
    ca_file: &Path,
    field: &str,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Vec<CertificateDer<'static>> {
    let roots = p.read_file(env, base, ca_file, field).and_then(|s| pem_certs(&s, field, p)).unwrap_or_default();
    for cert in &roots {
        if let Err(e) = rustls::RootCertStore::empty().add(cert.clone()) {
            p.add(field, format!("unusable CA certificate: {e}"));
        }
    }
    roots
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{load_str, MapEnv};

    const BASE: &str = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n";

    /// The problems of a config whose `server.tls` files (and `upstream.ca_file`) hold `cert`,
    /// `key` and `ca`.
    fn problems(name: &str, cert: &str, key: &str, ca: Option<&str>) -> Vec<String> {
        let dir = std::env::temp_dir().join(format!("pg-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let mut text = format!("[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\n{BASE}");
        if let Some(ca) = ca {
            std::fs::write(dir.join("ca.pem"), ca).unwrap();
            text =
                text.replace("url = \"http://127.0.0.1:1\"\n", "url = \"http://127.0.0.1:1\"\nca_file = \"ca.pem\"\n");
        }
        let p = match load_str(&text, &dir, &MapEnv::new().with("K", "k")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems(),
        };
        let _ = std::fs::remove_dir_all(&dir);
        p
    }

    const UNTERMINATED: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n";
    const BAD_BASE64_KEY: &str = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";

    #[test]
    fn bad_pem_is_named_by_its_field() {
        let p = problems("none", "no pem here\n", "no pem here\n", Some("nothing\n"));
        for want in [
            "server.tls.cert_file: no PEM certificate found",
            "server.tls.key_file: no PEM private key found",
            "upstream.ca_file: no PEM certificate found",
        ] {
            assert!(p.iter().any(|l| l == want), "{want}: {p:?}");
        }
        let p = problems("broken", UNTERMINATED, BAD_BASE64_KEY, Some(UNTERMINATED));
        for field in ["server.tls.cert_file", "server.tls.key_file", "upstream.ca_file"] {
            let want = format!("{field}: invalid PEM: ");
            assert!(p.iter().any(|l| l.starts_with(&want)), "{want}: {p:?}");
        }
        assert!(
            p.contains(&"server.tls.cert_file: invalid PEM: section end \"CERTIFICATE\" missing".to_string()),
            "{p:?}"
        );
        assert!(p.iter().any(|l| l.starts_with("server.tls.key_file: invalid PEM: base64")), "{p:?}");
        assert_eq!(p.len(), 3, "{p:?}");
    }

    #[test]
    fn a_config_without_tls_reads_no_pem() {
        assert!(load_str(BASE, Path::new("."), &MapEnv::new().with("K", "k")).is_ok());
    }
}
