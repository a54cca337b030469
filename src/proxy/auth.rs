//! Local authentication: which configured client is calling, from its local key (`ApiKey` or
//! `Authorization: Bearer`), its verified client certificate, or the anonymous client.

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};

use crate::config::{ClientId, Config};
use crate::error::GatewayError;

/// `ApiKey`, the header Palette's SDK and Terraform provider send.
pub static API_KEY: HeaderName = HeaderName::from_static("apikey");

/// What the TLS layer verified about the connection's client certificate.
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity {
    /// DNS SANs and CN of the verified client certificate (empty without mTLS).
    pub cert_names: Vec<String>,
}

/// SHA-256 of a local key: what the config stores and the lookup uses.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// `sha256:<hex>` form of a key's hash, as written in the config.
pub fn key_hash_string(key: &str) -> String {
    format!("sha256:{}", hex::encode(hash_key(key)))
}

/// Keys already matched to a client, so that steady traffic skips the SHA-256. Only keys that
/// matched are kept (at most [`KeyCache::CAPACITY`]; past it a key is hashed each time), so
/// unknown keys cannot grow it; it lives in one runtime snapshot, so a reload that removes a key
/// forgets it. A matched key is the cache key, in memory only; `Debug` shows only the count.
///
/// A plain map under a read lock rather than moka: the entries are the configured clients' keys
/// (few, fixed for the snapshot), so nothing needs evicting, and moka's bookkeeping on every read
/// cost about 2 µs per request (compare.sh: 28.8-30.1 against 26.6-27.2 µs of CPU per request).
#[derive(Default)]
pub struct KeyCache {
    known: std::sync::RwLock<std::collections::HashMap<Box<str>, ClientId>>,
}

// By hand: a derived `Debug` would print the local keys.
impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.known.read().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("KeyCache").field("entries", &entries).finish()
    }
}

impl KeyCache {
    /// Most keys remembered.
    pub const CAPACITY: usize = 10_000;

    fn lookup(&self, cfg: &Config, key: &str) -> Option<ClientId> {
        if let Some(&client) = self.known.read().ok().as_ref().and_then(|m| m.get(key)) {
            return Some(client);
        }
        let client = cfg.client_by_key_hash(&hash_key(key))?;
        if let Ok(mut m) = self.known.write() {
            if m.len() < Self::CAPACITY {
                m.insert(key.into(), client);
            }
        }
        Some(client)
    }
}

/// Finds the calling client. Errors are 400 (ambiguous credentials) or 401.
pub fn identify(
    cfg: &Config,
    cache: &KeyCache,
    headers: &HeaderMap,
    peer: &PeerIdentity,
) -> Result<ClientId, GatewayError> {
    identify_presented(cfg, cache, headers, peer).map(|(client, _)| client)
}

/// [`identify`], with the local key the request presented (`None`: it presented none), for
/// hygiene to remove under any other name without reading the credential headers again.
pub(crate) fn identify_presented(
    cfg: &Config,
    cache: &KeyCache,
    headers: &HeaderMap,
    peer: &PeerIdentity,
) -> Result<(ClientId, Option<PresentedKey>), GatewayError> {
    let found = find_local_key(headers)?;
    let by_cert = cert_client(cfg, peer)?;
    let presented = found.as_ref().map(|f| f.presented());
    let client = match (found.map(|f| f.key), by_cert) {
        (Some(key), cert) => {
            let Some(client) = cache.lookup(cfg, key) else {
                return Err(GatewayError::UnknownCredential("the local key is not known to this gateway".into()));
            };
            if cert.is_some_and(|c| c != client) {
                return Err(GatewayError::UnknownCredential(
                    "the local key and the client certificate identify different clients".into(),
                ));
            }
            Ok(client)
        }
        (None, Some(client)) => Ok(client),
        (None, None) => cfg.anonymous_client.ok_or(GatewayError::MissingCredential),
    }?;
    Ok((client, presented))
}

/// The client a verified certificate's names identify. A certificate whose names map to two
/// different clients identifies neither: which one would win is an accident of SAN order.
pub(crate) fn cert_client(cfg: &Config, peer: &PeerIdentity) -> Result<Option<ClientId>, GatewayError> {
    let mut found: Option<ClientId> = None;
    for name in &peer.cert_names {
        match (found, cfg.client_by_cert_name(name)) {
            (Some(a), Some(b)) if a != b => {
                return Err(GatewayError::UnknownCredential(format!(
                    "the client certificate's names identify more than one client ({} and {}); \
                     a certificate must name exactly one",
                    cfg.client(a).name,
                    cfg.client(b).name
                )))
            }
            (None, Some(b)) => found = Some(b),
            _ => {}
        }
    }
    Ok(found)
}

/// The local key the request carries, if any.
pub(crate) fn local_key(headers: &HeaderMap) -> Result<Option<&str>, GatewayError> {
    Ok(find_local_key(headers)?.map(|f| f.key))
}

/// [`local_key`], and the same as a [`PresentedKey`] for hygiene, for a caller that does not
/// identify the client through [`identify_presented`] (a Kubernetes token, `explain`).
pub(crate) fn presented_key(headers: &HeaderMap) -> Result<Option<(&str, PresentedKey)>, GatewayError> {
    Ok(find_local_key(headers)?.map(|f| (f.key, f.presented())))
}

/// A local key as found: its text, and the header value it is in.
struct Found<'a> {
    key: &'a str,
    value: &'a HeaderValue,
    bearer: bool,
}

impl Found<'_> {
    fn presented(&self) -> PresentedKey {
        PresentedKey { value: self.value.clone(), bearer: self.bearer }
    }
}

fn find_local_key(headers: &HeaderMap) -> Result<Option<Found<'_>>, GatewayError> {
    let api_key = single(headers, &API_KEY, "ApiKey")?;
    let bearer = match single(headers, &header::AUTHORIZATION, "Authorization")? {
        Some((value, text)) => Some((value, bearer_token(text)?)),
        None => None,
    };
    match (api_key, bearer) {
        (Some(_), Some(_)) => {
            Err(GatewayError::BadRequest("send the local key in ApiKey or in Authorization, not both".into()))
        }
        (Some((value, key)), None) => Ok(Some(Found { key, value, bearer: false })),
        (None, Some((value, key))) => Ok(Some(Found { key, value, bearer: true })),
        (None, None) => Ok(None),
    }
}

/// The local key a request presented, kept as the header value it came in (a shared handle, not
/// a copy) so that it can be found again without a second lookup and check of the credential
/// headers (issue 14). `Debug` does not show it.
#[derive(Clone)]
pub(crate) struct PresentedKey {
    value: HeaderValue,
    /// In `Authorization: Bearer <key>`, not `ApiKey: <key>`.
    bearer: bool,
}

impl PresentedKey {
    /// The key's bytes: what [`local_key`] returned for the request. Its headers passed
    /// `to_str` (visible ASCII, spaces and tabs), where `trim_ascii` and `str::trim` agree, and
    /// a bearer's scheme ends at the first space, as in [`bearer_token`].
    pub(crate) fn as_bytes(&self) -> &[u8] {
        let v = self.value.as_bytes().trim_ascii();
        if self.bearer {
            v.splitn(2, |b| *b == b' ').nth(1).unwrap_or_default().trim_ascii()
        } else {
            v
        }
    }
}

impl std::fmt::Debug for PresentedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PresentedKey(..)")
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    shown: &str,
) -> Result<Option<(&'a HeaderValue, &'a str)>, GatewayError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::BadRequest(format!("more than one {shown} header")));
    }
    let text = first
        .to_str()
        .map_err(|_| GatewayError::UnknownCredential(format!("the {shown} header is not a valid local key")))?
        .trim();
    if text.is_empty() {
        return Err(GatewayError::UnknownCredential(format!("the {shown} header is empty")));
    }
    Ok(Some((first, text)))
}

fn bearer_token(value: &str) -> Result<&str, GatewayError> {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let token = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
        Ok(token)
    } else {
        Err(GatewayError::UnknownCredential(
            "Authorization must be \"Bearer <local key>\" (the gateway holds the Palette token)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, MapEnv};
    use std::path::Path;

    proptest::proptest! {
        /// What hygiene later looks for is, byte for byte, the key authentication read: any
        /// spacing, tabs, scheme case or stray words around it.
        #[test]
        fn the_presented_key_is_the_key_read(
            raw in "[ \t]{0,2}(Bearer|bearer|BEARER|Basic|)[ \t]{0,3}[a-z0-9. \t-]{0,12}",
            in_api_key: bool,
        ) {
            let mut h = HeaderMap::new();
            let Ok(value) = HeaderValue::from_str(&raw) else { return Ok(()) };
            h.insert(if in_api_key { API_KEY.clone() } else { header::AUTHORIZATION }, value);
            match (local_key(&h), presented_key(&h)) {
                (Ok(Some(key)), Ok(Some((same, p)))) => {
                    proptest::prop_assert_eq!(same, key);
                    proptest::prop_assert_eq!(p.as_bytes(), key.as_bytes());
                }
                (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
                (a, b) => proptest::prop_assert!(false, "local_key {:?} but presented_key {:?}", a, b.map(|p| p.map(|(_, p)| p.as_bytes().to_vec()))),
            }
        }
    }

    #[test]
    fn identify_hands_on_the_key_it_read() {
        let cfg = cfg("");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer   key-a "));
        let (client, key) = identify_presented(&cfg, &KeyCache::default(), &h, &PeerIdentity::default()).unwrap();
        assert_eq!(&*cfg.client(client).name, "a");
        assert_eq!(key.as_ref().map(PresentedKey::as_bytes), Some(&b"key-a"[..]));
        assert_eq!(format!("{key:?}"), "Some(PresentedKey(..))", "the key never reaches a Debug print");
    }

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n\
             [[clients]]\nname = \"a\"\nkeys = [\"{}\"]\n[[clients]]\nname = \"b\"\nkeys = [\"{}\"]\n{extra}",
            key_hash_string("key-a"),
            key_hash_string("key-b")
        );
        load_str(&text, Path::new("."), &MapEnv::new().with("K", "x")).unwrap()
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    #[test]
    fn hash_matches_known_vector() {
        assert_eq!(key_hash_string("abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn api_key_and_bearer_identify() {
        let c = cfg("");
        let none = PeerIdentity::default();
        assert_eq!(identify(&c, &KeyCache::default(), &h(&[("apikey", "key-a")]), &none).unwrap().index(), 0);
        assert_eq!(
            identify(&c, &KeyCache::default(), &h(&[("authorization", "Bearer key-b")]), &none).unwrap().index(),
            1
        );
        assert_eq!(
            identify(&c, &KeyCache::default(), &h(&[("authorization", "bearer key-b")]), &none).unwrap().index(),
            1
        );
    }

    #[test]
    fn only_matched_keys_are_cached_and_never_shown() {
        let c = cfg("");
        let cache = KeyCache::default();
        let none = PeerIdentity::default();
        for _ in 0..3 {
            assert_eq!(identify(&c, &cache, &h(&[("apikey", "key-a")]), &none).unwrap().index(), 0);
            assert!(identify(&c, &cache, &h(&[("apikey", "nope")]), &none).is_err());
        }
        let known = cache.known.read().unwrap();
        assert_eq!(known.len(), 1);
        assert_eq!(known.get("key-a"), Some(&ClientId(0)));
        drop(known);
        let shown = format!("{cache:?}");
        assert!(!shown.contains("key-a"), "{shown}");
    }

    #[test]
    fn unknown_missing_and_ambiguous() {
        let c = cfg("");
        let none = PeerIdentity::default();
        assert!(matches!(
            identify(&c, &KeyCache::default(), &h(&[("apikey", "nope")]), &none),
            Err(GatewayError::UnknownCredential(_))
        ));
        assert!(matches!(identify(&c, &KeyCache::default(), &h(&[]), &none), Err(GatewayError::MissingCredential)));
        assert!(matches!(
            identify(&c, &KeyCache::default(), &h(&[("apikey", "key-a"), ("authorization", "Bearer key-a")]), &none),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            identify(&c, &KeyCache::default(), &h(&[("apikey", "key-a"), ("apikey", "key-a")]), &none),
            Err(GatewayError::BadRequest(_))
        ));
        assert!(matches!(
            identify(&c, &KeyCache::default(), &h(&[("authorization", "Basic eDp5")]), &none),
            Err(GatewayError::UnknownCredential(_))
        ));
        assert!(matches!(
            identify(&c, &KeyCache::default(), &h(&[("authorization", "key-a")]), &none),
            Err(GatewayError::UnknownCredential(_))
        ));
    }

    #[test]
    fn a_certificate_naming_two_clients_is_refused() {
        let peer = |names: &[&str]| PeerIdentity { cert_names: names.iter().map(|n| n.to_string()).collect() };
        let with_certs = cfg_with_certs();
        let one = identify(&with_certs, &KeyCache::default(), &h(&[]), &peer(&["a.internal", "other"])).unwrap();
        assert_eq!(one.index(), 0);
        for names in [["a.internal", "b.internal"], ["b.internal", "a.internal"]] {
            match identify(&with_certs, &KeyCache::default(), &h(&[]), &peer(&names)) {
                Err(GatewayError::UnknownCredential(m)) => assert!(m.contains("more than one client"), "{m}"),
                other => panic!("{names:?}: {other:?}"),
            }
        }
    }

    /// Clients `a` and `b` identified by certificate names `a.internal` and `b.internal`.
    fn cfg_with_certs() -> Config {
        let dir = std::env::temp_dir().join(format!("pg-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), ca.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ca.key_pair.serialize_pem()).unwrap();
        let text = "[server.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"\nclient_ca_file = \"cert.pem\"\n\
             [upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n\
             [[clients]]\nname = \"a\"\ncert_names = [\"a.internal\"]\n[[clients]]\nname = \"b\"\ncert_names = [\"b.internal\"]\n";
        load_str(text, &dir, &MapEnv::new().with("K", "x")).unwrap()
    }

    #[test]
    fn anonymous_client_when_configured() {
        let c = cfg("[auth]\nanonymous_client = \"b\"\n");
        assert_eq!(identify(&c, &KeyCache::default(), &h(&[]), &PeerIdentity::default()).unwrap().index(), 1);
        // A wrong key is still refused: anonymous covers only "no credential".
        assert!(identify(&c, &KeyCache::default(), &h(&[("apikey", "nope")]), &PeerIdentity::default()).is_err());
    }
}
