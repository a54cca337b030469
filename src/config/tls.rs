//! TLS material from the config, built at load so that a bad certificate is a problem named by
//! its field (what `check` prints), never a start-up failure: the server's rustls config (with
//! client verification for mTLS) and the extra roots the upstream client trusts.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::file::RawServerTls;
use super::problems::Problems;
use super::{Environment, ServerTls};

fn pem_certs(text: &str, field: &str, p: &mut Problems) -> Option<Vec<CertificateDer<'static>>> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut text.as_bytes()).collect();
    match certs {
        Ok(c) if !c.is_empty() => Some(c),
        Ok(_) => {
            p.add(field, "no PEM certificate found");
            None
        }
        Err(e) => {
            p.add(field, format!("invalid PEM: {e}"));
            None
        }
    }
}

pub(super) fn server_tls(t: &RawServerTls, base: &Path, env: &dyn Environment, p: &mut Problems) -> Option<ServerTls> {
    let certs = p
        .read_file(env, base, &t.cert_file, "server.tls.cert_file")
        .and_then(|s| pem_certs(&s, "server.tls.cert_file", p));
    let key: Option<PrivateKeyDer<'static>> =
        p.read_file(env, base, &t.key_file, "server.tls.key_file").and_then(|s| {
            match rustls_pemfile::private_key(&mut s.as_bytes()) {
                Ok(Some(k)) => Some(k),
                Ok(None) => {
                    p.add("server.tls.key_file", "no PEM private key found");
                    None
                }
                Err(e) => {
                    p.add("server.tls.key_file", format!("invalid PEM: {e}"));
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
